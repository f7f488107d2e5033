//! A small blocking HTTP/1.1 client for the OTLP exporter: one `POST` per export over a new
//! TCP connection (`Connection: close`), plain `http://` only. The SDK's batch processor runs
//! exports on its own thread, so blocking I/O is what it expects; no async runtime, TLS stack
//! or connection pool is pulled in.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// The largest response read (a collector answers with a small protobuf or JSON message).
const MAX_RESPONSE: u64 = 1024 * 1024;

/// The exporter's HTTP client: each request within `timeout` (connect, send, receive).
#[derive(Debug, Clone, Copy)]
pub(super) struct StdHttpClient {
    timeout: Duration,
}

impl StdHttpClient {
    /// A client whose requests take at most `timeout` each.
    pub(super) fn new(timeout: Duration) -> Self {
        StdHttpClient { timeout }
    }

    fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let deadline = Instant::now() + self.timeout;
        let uri = request.uri().clone();
        if uri.scheme_str() != Some("http") {
            return Err(format!("{uri}: only http:// endpoints are supported").into());
        }
        let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let addrs: Vec<_> = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{uri}: resolving {host}: {e}"))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1))) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(format!("{addr}: {e}")),
            }
        }
        let mut stream = stream.ok_or_else(|| {
            format!(
                "{uri}: connecting: {}",
                last.unwrap_or_else(|| "no address".into())
            )
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        stream.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\ncontent-length: {}\r\n",
            request.method(),
            request.body().len()
        );
        for (name, value) in request.headers() {
            let name = name.as_str();
            if matches!(name, "host" | "connection" | "content-length") {
                continue;
            }
            let value = value
                .to_str()
                .map_err(|_| format!("header {name}: not ASCII"))?;
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(request.body())?;
        stream.flush()?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(|e| format!("{uri}: reading the response: {e}"))?;
        parse_response(&raw).map_err(|e| format!("{uri}: {e}").into())
    }
}

#[async_trait::async_trait]
impl HttpClient for StdHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send(request)
    }
}

/// An HTTP/1.1 response read to the end of the connection: status, headers, body (by
/// `content-length`, chunked, or up to the end).
fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no complete header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the response header is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut builder = Response::builder().status(status);
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
        builder = builder.header(name, value);
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) => rest.get(..n).ok_or("the response body is short")?.to_vec(),
            None => rest.to_vec(),
        }
    };
    builder
        .body(Bytes::from(body))
        .map_err(|e| format!("the response: {e}"))
}

/// The body of a chunked transfer encoding.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line is cut")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "a bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("a chunk is cut")?);
        rest = rest.get(size + 2..).ok_or("a chunk is cut")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_by_length_chunked_and_to_the_end() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokXX").unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (200, &b"ok"[..]));
        let r = parse_response(
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.body().as_ref()),
            (400, &b"abcde"[..])
        );
        let r = parse_response(b"HTTP/1.0 503 x\r\n\r\nall").unwrap();
        assert_eq!(r.body().as_ref(), b"all");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn a_post_reaches_a_server_with_its_headers_and_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"body") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let req = Request::post(format!("http://{addr}/v1/traces"))
            .header("authorization", "Basic eA==")
            .body(Bytes::from_static(b"body"))
            .unwrap();
        let r = StdHttpClient::new(Duration::from_secs(5))
            .send(req)
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let got = server.join().unwrap();
        assert!(got.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{got}");
        assert!(got.contains("authorization: Basic eA==\r\n"), "{got}");
        assert!(got.contains("content-length: 4\r\n"), "{got}");
        // A closed port is an error naming the endpoint.
        let req = Request::post(format!("http://{addr}/v1/traces"))
            .body(Bytes::new())
            .unwrap();
        let e = StdHttpClient::new(Duration::from_secs(2))
            .send(req)
            .unwrap_err();
        assert!(e.to_string().contains("/v1/traces"), "{e}");
    }
}
