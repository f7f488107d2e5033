//! A fake agent that misbehaves on purpose: a ttRPC server on a unix socket that speaks the
//! agent protocol's framing and answers each method as the test says, including in ways the
//! real kata-agent never would (garbage, oversized frames, silence, a cut connection, floods).
//! It is how the runtime is tested against a hostile guest: a compromised guest owns the other
//! end of the agent connection and can send anything.
//!
//! Methods without a [`Fault`] get a well-formed answer: `Health.Check` says SERVING, every
//! other method an empty message (valid protobuf for every reply type: zeros and empties).
//! It works at the frame level (10-byte header: length, stream id, type, flags, big-endian)
//! so that it can break the framing itself.
//!
//! ```no_run
//! # async fn demo() {
//! use kata_testkit::fake_agent::{FakeAgent, Fault};
//!
//! let fake = FakeAgent::start([("WaitProcess", Fault::NeverAnswer)]).unwrap();
//! let _address = fake.socket(); // dial it as `AgentAddress::Unix`
//! # }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use ttrpc::proto::{Code, Request, Response, Status};

const HEADER_LEN: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
/// The largest request the fake reads (requests come from the runtime, which is trusted).
const MAX_REQUEST: usize = 4 << 20;

/// How the fake answers one method.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Writes these bytes instead of a frame: the framing itself is broken.
    RawBytes(Vec<u8>),
    /// A well-framed response whose payload is not a ttRPC `Response`.
    GarbageFrame(Vec<u8>),
    /// A ttRPC `Response` with status OK whose payload is not the method's reply message.
    GarbageReply(Vec<u8>),
    /// A response frame announcing (and then sending) this many bytes: more than ttRPC's
    /// 4 MiB bound.
    Oversized(usize),
    /// Never answers (the connection stays open, other methods are answered).
    NeverAnswer,
    /// Sends the header and half the payload of a reply, then closes the connection.
    CloseMidReply,
    /// Answers with a reply carrying this many bytes in field 1 (`ReadStreamResponse.data`,
    /// `OOMEvent.container_id`, ...), at once, every time: output or events for ever.
    Flood(usize),
    /// Answers normally, and from the first request on also sends responses for stream ids
    /// nobody asked about, as fast as it can, until the connection closes.
    UnsolicitedFlood,
}

/// A running fake agent; stops (and removes its socket) when dropped.
#[derive(Debug)]
pub struct FakeAgent {
    _dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes_sent: AtomicU64,
}

impl FakeAgent {
    /// Starts serving on a fresh socket, answering each named method (the ttRPC method name:
    /// `WaitProcess`, `ReadStdout`, `Check`, ...) with its fault. Must run in a tokio runtime.
    pub fn start<'a>(faults: impl IntoIterator<Item = (&'a str, Fault)>) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut fake = Self::start_at(&dir.path().join("fake-agent.sock"), faults)?;
        fake._dir = Some(dir);
        Ok(fake)
    }

    /// [`start`](Self::start) on the socket `socket` (which must not exist): where a runtime
    /// expects its agent, e.g. the test backend's `<vm_dir>/agent.sock` when the fake runs as
    /// that backend's agent program.
    pub fn start_at<'a>(
        socket: &Path,
        faults: impl IntoIterator<Item = (&'a str, Fault)>,
    ) -> std::io::Result<Self> {
        let faults: Arc<HashMap<String, Fault>> = Arc::new(
            faults
                .into_iter()
                .map(|(m, f)| (m.to_string(), f))
                .collect(),
        );
        let socket = socket.to_path_buf();
        let listener = UnixListener::bind(&socket)?;
        let counters = Arc::new(Counters::default());
        let task_counters = counters.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, faults.clone(), task_counters.clone()));
            }
        });
        Ok(FakeAgent {
            _dir: None,
            socket,
            counters,
            task,
        })
    }

    /// The socket to dial (`AgentAddress::Unix`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// How many requests it has read.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// How many bytes it has written.
    pub fn bytes_sent(&self) -> u64 {
        self.counters.bytes_sent.load(Ordering::Relaxed)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Writer = Arc<Mutex<OwnedWriteHalf>>;

/// One connection: reads requests and answers each in its own task (so a request never
/// answered does not hold up the others).
async fn serve(stream: UnixStream, faults: Arc<HashMap<String, Fault>>, counters: Arc<Counters>) {
    let (mut read, write) = stream.into_split();
    let writer: Writer = Arc::new(Mutex::new(write));
    let mut answers = tokio::task::JoinSet::new();
    let mut flooding = false;
    loop {
        let mut header = [0u8; HEADER_LEN];
        if read.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
        let stream_id = u32::from_be_bytes(header[4..8].try_into().unwrap());
        if len > MAX_REQUEST || header[8] != TYPE_REQUEST {
            break;
        }
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            break;
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(request) = Request::parse_from_bytes(&payload) else {
            break;
        };
        let fault = faults.get(&request.method).cloned();
        if matches!(fault, Some(Fault::UnsolicitedFlood)) && !flooding {
            flooding = true;
            answers.spawn(unsolicited(writer.clone(), counters.clone()));
        }
        answers.spawn(answer(
            writer.clone(),
            counters.clone(),
            stream_id,
            request.method,
            fault,
        ));
    }
}

/// Answers one request.
async fn answer(
    writer: Writer,
    counters: Arc<Counters>,
    stream_id: u32,
    method: String,
    fault: Option<Fault>,
) {
    let bytes = match fault {
        None | Some(Fault::UnsolicitedFlood) => response_frame(stream_id, &default_reply(&method)),
        Some(Fault::RawBytes(bytes)) => bytes,
        Some(Fault::GarbageFrame(garbage)) => frame(stream_id, &garbage),
        Some(Fault::GarbageReply(garbage)) => response_frame(stream_id, &garbage),
        Some(Fault::Oversized(len)) => {
            let mut out = header(stream_id, len);
            out.resize(HEADER_LEN + len, 0);
            out
        }
        Some(Fault::NeverAnswer) => return std::future::pending().await,
        Some(Fault::CloseMidReply) => {
            let whole = response_frame(stream_id, &field1(&[b'x'; 64]));
            let mut w = writer.lock().await;
            let _ = w.write_all(&whole[..whole.len() / 2]).await;
            let _ = w.shutdown().await;
            return;
        }
        Some(Fault::Flood(len)) => response_frame(stream_id, &field1(&vec![b'a'; len])),
    };
    let mut w = writer.lock().await;
    if w.write_all(&bytes).await.is_ok() {
        counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
}

/// Responses to stream ids nobody asked about (even ids: the client uses odd ones), until the
/// connection closes.
async fn unsolicited(writer: Writer, counters: Arc<Counters>) {
    let mut stream_id: u32 = 2;
    loop {
        let bytes = response_frame(stream_id, &field1(&[b'u'; 1024]));
        {
            let mut w = writer.lock().await;
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
        counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        stream_id = stream_id.wrapping_add(2);
        if stream_id.is_multiple_of(256) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A well-behaved agent's reply: `Health.Check` SERVING, anything else an empty message.
fn default_reply(method: &str) -> Vec<u8> {
    match method {
        // HealthCheckResponse { status: SERVING (1) }
        "Check" => vec![0x08, 0x01],
        _ => Vec::new(),
    }
}

/// A message whose field 1 is `bytes` (length-delimited).
fn field1(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0a];
    let mut n = bytes.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
    out
}

fn header(stream_id: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(TYPE_RESPONSE);
    out.push(0);
    out
}

fn frame(stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = header(stream_id, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A response frame: status OK and `reply` as the payload.
fn response_frame(stream_id: u32, reply: &[u8]) -> Vec<u8> {
    let mut status = Status::new();
    status.code = Code::OK.into();
    let mut response = Response::new();
    response.status = Some(status).into();
    response.payload = reply.to_vec();
    frame(
        stream_id,
        &response.write_to_bytes().expect("a ttRPC response encodes"),
    )
}
