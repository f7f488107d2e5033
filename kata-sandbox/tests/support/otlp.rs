//! A tiny OTLP/HTTP traces receiver for tests: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, answered `200`; the spans are kept for the test to read.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One received span (not every test reads every field).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct SeenSpan {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    pub service: String,
}

/// What the receiver got: spans, and each request's path and `authorization` header.
#[derive(Debug, Default)]
pub struct Received {
    pub spans: Vec<SeenSpan>,
    pub requests: Vec<(String, Option<String>)>,
}

/// The receiver: serves until the test ends (its thread is detached).
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port).
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &shared);
            }
        });
        Receiver { url, received }
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<SeenSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// The requests received so far (path, authorization).
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.received.lock().unwrap().requests.clone()
    }

    /// Waits up to `limit` for a span named `name`.
    pub fn wait_for(&self, name: &str, limit: Duration) -> Option<SeenSpan> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| s.name == name) {
                return Some(s);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(mut stream: TcpStream, received: &Mutex<Received>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_string();
    let mut length = 0;
    let mut authorization = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let request = ExportTraceServiceRequest::decode(&body[..]);
    {
        let mut r = received.lock().unwrap();
        r.requests.push((path, authorization));
        if let Ok(request) = &request {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| text(&v.value))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        r.spans.push(SeenSpan {
                            name: s.name.clone(),
                            trace_id: s.trace_id.clone(),
                            span_id: s.span_id.clone(),
                            parent_span_id: s.parent_span_id.clone(),
                            attributes: s
                                .attributes
                                .iter()
                                .map(|kv| {
                                    (
                                        kv.key.clone(),
                                        kv.value
                                            .as_ref()
                                            .map(|v| text(&v.value))
                                            .unwrap_or_default(),
                                    )
                                })
                                .collect(),
                            service: service.clone(),
                        });
                    }
                }
            }
        }
    }
    let status = if request.is_ok() {
        "200 OK"
    } else {
        "400 Bad Request"
    };
    stream.write_all(
        format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn text(v: &Option<Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The ancestors of `span` among `spans` (parent first).
pub fn ancestors<'a>(spans: &'a [SeenSpan], span: &SeenSpan) -> Vec<&'a SeenSpan> {
    let mut out = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        match spans.iter().find(|s| s.span_id == parent) {
            Some(p) => {
                out.push(p);
                parent = p.parent_span_id.clone();
            }
            None => break,
        }
    }
    out
}
