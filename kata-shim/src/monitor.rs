//! The shim's management socket: `shim-monitor.sock` in the sandbox's directory, HTTP/1.1 over
//! a unix socket, as Kata's shim serves it. `GET /metrics` answers the sandbox's figures in
//! Prometheus text ([`kata_sandbox::Sandbox::metrics`]); it is what `shim-ctl metrics` and a
//! `kata-monitor`-style aggregator read. `GET /console` with an upgrade opens the guest's debug
//! console ([`crate::monitor_console`]; `shim-ctl console`).
//!
//! A deliberately small HTTP server: one request per connection (`Connection: close`), the
//! request head bounded ([`MAX_HEAD`]) and read within [`HEAD_TIMEOUT`], `GET` and `HEAD` only.
//! The socket is the shim's user's (the shim's umask), holds no reference to the sandbox
//! (a shut-down sandbox is never kept alive by a scrape) and is removed when the sandbox ends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use kata_sandbox::Sandbox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The socket's name in the sandbox's directory (Kata's).
pub const MONITOR_SOCKET: &str = "shim-monitor.sock";

/// The longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of a sandbox's management socket.
pub fn socket_path(sandbox_dir: &Path) -> PathBuf {
    sandbox_dir.join(MONITOR_SOCKET)
}

/// Serves `sandbox`'s management socket until the sandbox ends (shut down, died, detached or
/// dropped); the socket is removed then. A socket that cannot be made is logged, not fatal:
/// the sandbox runs without it.
pub fn serve(sandbox: &Arc<Sandbox>) {
    let path = socket_path(sandbox.dir());
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(sandbox_id = %sandbox.id(), path = %path.display(), error = %e, "no management socket (metrics)");
            return;
        }
    };
    tracing::debug!(sandbox_id = %sandbox.id(), path = %path.display(), "management socket");
    let ended = sandbox.on_death();
    let weak = Arc::downgrade(sandbox);
    tokio::spawn(async move {
        tokio::select! {
            _ = accept_loop(listener, weak) => {}
            _ = ended => {}
        }
        let _ = std::fs::remove_file(&path);
    });
}

async fn accept_loop(listener: UnixListener, sandbox: Weak<Sandbox>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, sandbox).await {
                tracing::debug!(error = %e, "management socket request");
            }
        });
    }
}

/// A request the socket understood, or the status it answers instead.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET` (`head_only: false`) or `HEAD` of a path.
    Get {
        /// The path, without a query string.
        path: String,
        /// `HEAD`: the answer has no body.
        head_only: bool,
    },
    /// Answered with this status and reason at once.
    Refused(u16, &'static str),
}

/// Reads a request head: the request line, then headers up to the empty line. `head` is what
/// was read (at most [`MAX_HEAD`] bytes); `complete` says whether the empty line was seen.
pub fn parse_head(head: &[u8], complete: bool) -> Request {
    if !complete {
        return Request::Refused(431, "Request Header Fields Too Large");
    }
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Refused(400, "Bad Request");
    };
    let line = text.lines().next().unwrap_or("");
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Request::Refused(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::Refused(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    match method {
        "GET" => Request::Get {
            path,
            head_only: false,
        },
        "HEAD" => Request::Get {
            path,
            head_only: true,
        },
        _ => Request::Refused(405, "Method Not Allowed"),
    }
}

/// Reads the head from `stream`: up to the empty line, at most [`MAX_HEAD`] bytes. Returns
/// the head, whether it was complete, and what was read after it (a client's first bytes of
/// an upgraded connection).
async fn read_head(stream: &mut UnixStream) -> std::io::Result<(Vec<u8>, bool, Vec<u8>)> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some((end, after)) = find_end(&head) {
            let rest = head.split_off(after);
            head.truncate(end);
            return Ok((head, true, rest));
        }
        if head.len() >= MAX_HEAD {
            return Ok((head, false, Vec::new()));
        }
        let room = (MAX_HEAD - head.len()).min(buf.len());
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            return Ok((head, false, Vec::new()));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// Where the head ends and where what follows it starts.
fn find_end(head: &[u8]) -> Option<(usize, usize)> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            head.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })
}

async fn answer(mut stream: UnixStream, sandbox: Weak<Sandbox>) -> std::io::Result<()> {
    let (request, head, rest) =
        match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
            Ok(Ok((head, complete, rest))) => (parse_head(&head, complete), head, rest),
            Ok(Err(e)) => return Err(e),
            Err(_) => (
                Request::Refused(408, "Request Timeout"),
                Vec::new(),
                Vec::new(),
            ),
        };
    // `GET /console`: the debug console, on a connection upgraded to it (monitor_console).
    if matches!(&request, Request::Get { path, head_only: false } if path == crate::monitor_console::PATH)
    {
        return crate::monitor_console::answer(stream, &head, rest, sandbox).await;
    }
    let (status, reason, content_type, body, head_only) = match request {
        Request::Refused(status, reason) => {
            (status, reason, "text/plain", format!("{reason}\n"), false)
        }
        Request::Get { path, head_only } if path == "/metrics" => match sandbox.upgrade() {
            Some(sandbox) => {
                let text = sandbox.metrics().await;
                drop(sandbox);
                (
                    200,
                    "OK",
                    kata_sandbox::metrics::CONTENT_TYPE,
                    text,
                    head_only,
                )
            }
            None => (
                503,
                "Service Unavailable",
                "text/plain",
                "the sandbox has ended\n".into(),
                head_only,
            ),
        },
        Request::Get { head_only, .. } => (
            404,
            "Not Found",
            "text/plain",
            "not found: this socket serves /metrics and /console\n".into(),
            head_only,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// `GET /metrics` from the management socket at `path`: the body of a 200 answer, or an error
/// naming the socket and what went wrong. For `shim-ctl metrics` and aggregators.
pub async fn fetch_metrics(path: &Path) -> std::io::Result<String> {
    let err = |what: String| std::io::Error::other(format!("{}: {what}", path.display()));
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| err(format!("cannot connect ({e}): is the sandbox running?")))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: kata-rs\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        (&mut stream).take(64 << 20).read_to_end(&mut answer),
    )
    .await
    .map_err(|_| err("no answer within 30 s".into()))??;
    let answer =
        String::from_utf8(answer).map_err(|_| err("an answer that is not UTF-8".into()))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("an answer that is not HTTP".into()))?;
    let status = head.lines().next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        return Err(err(format!("answered {status:?}: {}", body.trim())));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let get = |h: &str| parse_head(h.as_bytes(), true);
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x"),
            Request::Get {
                path: "/metrics".into(),
                head_only: false
            }
        );
        assert_eq!(
            get("HEAD /metrics?x=1 HTTP/1.0"),
            Request::Get {
                path: "/metrics".into(),
                head_only: true
            }
        );
        assert_eq!(
            get("POST /metrics HTTP/1.1"),
            Request::Refused(405, "Method Not Allowed")
        );
        assert_eq!(
            get("GET metrics HTTP/1.1"),
            Request::Refused(400, "Bad Request")
        );
        assert_eq!(get("GET /metrics"), Request::Refused(400, "Bad Request"));
        assert_eq!(
            get("GET /a b HTTP/1.1"),
            Request::Refused(400, "Bad Request")
        );
        assert_eq!(
            get("GET /metrics SPDY/3"),
            Request::Refused(400, "Bad Request")
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nX: aaaa", false),
            Request::Refused(431, "Request Header Fields Too Large")
        );
        assert_eq!(
            parse_head(b"\xff\xfe", true),
            Request::Refused(400, "Bad Request")
        );
    }

    #[tokio::test]
    async fn an_endless_head_is_cut_at_the_bound() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            for _ in 0..1000 {
                if a.write_all(line).await.is_err() {
                    break;
                }
            }
        });
        let (head, complete, _) = read_head(&mut b).await.unwrap();
        assert!(!complete);
        assert!(head.len() <= MAX_HEAD);
        drop(b);
        let _ = writer.await;
    }
}
