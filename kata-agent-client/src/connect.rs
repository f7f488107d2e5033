//! Dialing the agent: one transport per [`AgentAddress`] kind, the hybrid-vsock
//! handshake, and retries while the guest boots.
//!
//! A guest that is still booting shows up as "connection refused", a missing
//! socket file, a reset, or a hybrid-vsock backend that closes the stream
//! instead of answering `OK` (nobody listens on the guest port yet). All of
//! those are retried every [`ConnectOptions::retry_interval`] until
//! [`ConnectOptions::dial_timeout`] runs out. Errors that waiting cannot fix
//! (no AF_VSOCK support, permission denied, a backend answering something
//! other than `OK <n>`) end the dial at once.

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::r#async::transport::Socket;

use crate::address::AgentAddress;
use crate::error::{Error, Result};
use crate::gate::{Gated, WriteGate};

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

/// Longest line a hybrid-vsock backend may answer with (`OK 4294967295\n` is 14).
const MAX_HANDSHAKE_LINE: usize = 64;

/// How the client connects and how long calls may take.
///
/// The defaults follow Kata's `[agent.kata]` defaults: `dial_timeout` 45 s (a
/// guest under TCG takes a few seconds to start its agent), `request_timeout`
/// 30 s, and a short retry interval so the first answer is not delayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// How long a connect ([`Agent::connect`](crate::Agent::connect)) keeps
    /// trying before it gives up.
    pub dial_timeout: Duration,
    /// The deadline of every call that has no explicit timeout parameter.
    pub request_timeout: Duration,
    /// The pause between two connection attempts.
    pub retry_interval: Duration,
}

impl ConnectOptions {
    /// Kata's default dial timeout.
    pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(45);
    /// Kata's default request timeout.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default pause between connection attempts.
    pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(50);
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            dial_timeout: Self::DEFAULT_DIAL_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            retry_interval: Self::DEFAULT_RETRY_INTERVAL,
        }
    }
}

/// The longest one connection attempt (connect plus hybrid-vsock handshake) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Dials `addr` until it answers or `opts.dial_timeout` has passed. With a `gate`, every
/// write of the connection (the hybrid-vsock handshake too) waits while it is held.
pub(crate) async fn dial(
    addr: &AgentAddress,
    opts: &ConnectOptions,
    gate: Option<&WriteGate>,
) -> Result<Socket> {
    let start = Instant::now();
    let deadline = start + opts.dial_timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        // One attempt never gets the whole budget: a hybrid-vsock CONNECT sent before the
        // guest's vsock driver is up can stay unanswered for ever, so it is abandoned and
        // retried rather than waited on.
        let budget = remaining.min(ATTEMPT_TIMEOUT).max(Duration::from_millis(1));
        let attempt = tokio::time::timeout(budget, dial_once(addr, gate)).await;
        let err = match attempt {
            Ok(Ok(socket)) => {
                tracing::debug!(address = %addr, attempts, elapsed = ?start.elapsed(), "connected to the agent");
                return Ok(socket);
            }
            Ok(Err(err)) => err,
            Err(_) => Error::io(
                format!("dialing {addr}"),
                std::io::Error::new(ErrorKind::TimedOut, "no answer before the dial timeout"),
            ),
        };
        if !is_retryable(&err) {
            return Err(err);
        }
        let now = Instant::now();
        if now + opts.retry_interval >= deadline {
            return Err(Error::Connect {
                address: addr.to_string(),
                waited: now.duration_since(start),
                last_error: Box::new(err),
            });
        }
        tracing::trace!(address = %addr, attempts, error = %err, "agent not reachable yet, retrying");
        tokio::time::sleep(opts.retry_interval).await;
    }
}

/// A raw byte stream to a port of the guest beside the agent's ttRPC server (the agent's log
/// stream, the debug console), from [`dial_port`]. Its writes pass the sandbox's
/// [`WriteGate`].
pub struct GuestStream(Socket);

impl std::fmt::Debug for GuestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestStream")
    }
}

impl tokio::io::AsyncRead for GuestStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Dials `port` of the guest whose agent is at `agent` ([`AgentAddress::on_port`]), through
/// `gate` (every write, the hybrid-vsock `CONNECT` line too, waits while it is held), retrying
/// as [`ConnectOptions`] say. For the agent's side streams: its log (Kata's port 1025) and its
/// debug console (1026).
///
/// ```no_run
/// # async fn f(agent: kata_agent_client::AgentAddress, gate: kata_agent_client::WriteGate) -> kata_agent_client::Result<()> {
/// use kata_agent_client::{config::DEFAULT_AGENT_LOG_PORT, connect, ConnectOptions};
/// let log = connect::dial_port(&agent, DEFAULT_AGENT_LOG_PORT, &ConnectOptions::default(), &gate).await?;
/// # drop(log); Ok(()) }
/// ```
pub async fn dial_port(
    agent: &AgentAddress,
    port: u32,
    opts: &ConnectOptions,
    gate: &WriteGate,
) -> Result<GuestStream> {
    dial(&agent.on_port(port), opts, Some(gate))
        .await
        .map(GuestStream)
}

/// One connection attempt, with the handshake for hybrid vsock.
async fn dial_once(addr: &AgentAddress, gate: Option<&WriteGate>) -> Result<Socket> {
    let gate = gate.cloned();
    match addr {
        AgentAddress::Vsock { cid, port } => Socket::connect(format!("vsock://{cid}:{port}"))
            .await
            .map(|socket| Socket::new(Gated::new(socket, gate)))
            .map_err(|e| Error::io(format!("connecting to vsock cid {cid} port {port}"), e)),
        AgentAddress::Unix(path) => {
            let stream = connect_unix(path).await?;
            Ok(Socket::new(Gated::new(stream, gate)))
        }
        AgentAddress::HybridVsock { uds, port } => {
            let mut stream = Gated::new(connect_unix(uds).await?, gate);
            hybrid_handshake(&mut stream, uds, *port).await?;
            Ok(Socket::new(stream))
        }
    }
}

async fn connect_unix(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path)
        .await
        .map_err(|e| Error::io(format!("connecting to unix socket {}", path.display()), e))
}

/// Sends `CONNECT <port>\n` and reads the answer line, which must be `OK <n>\n`.
///
/// Reads one byte at a time so nothing after the newline is consumed: the rest
/// of the stream belongs to ttRPC.
async fn hybrid_handshake(stream: &mut Gated<UnixStream>, uds: &Path, port: u32) -> Result<()> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| Error::io(format!("sending CONNECT {port} on {}", uds.display()), e))?;

    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(|e| {
            Error::io(
                format!("reading the answer to CONNECT {port} on {}", uds.display()),
                e,
            )
        })?;
        if n == 0 {
            // The backend closed the stream: nothing listens on the guest
            // port yet (or there is no guest). Retryable.
            return Err(Error::io(
                format!(
                    "hybrid vsock backend {} closed the connection after CONNECT {port}{}",
                    uds.display(),
                    if line.is_empty() {
                        String::new()
                    } else {
                        format!(" (partial answer {:?})", String::from_utf8_lossy(&line))
                    }
                ),
                std::io::Error::from(ErrorKind::UnexpectedEof),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(handshake_error(uds, port, &line));
        }
    }

    let answer = String::from_utf8_lossy(&line);
    let answer = answer.trim_end_matches('\r');
    match answer.strip_prefix("OK ") {
        Some(n) if n.trim().parse::<u32>().is_ok() => Ok(()),
        _ => Err(handshake_error(uds, port, &line)),
    }
}

fn handshake_error(uds: &Path, port: u32, answer: &[u8]) -> Error {
    Error::Handshake {
        uds: uds.to_path_buf(),
        port,
        answer: String::from_utf8_lossy(answer).into_owned(),
    }
}

/// Whether waiting for the guest can make this error go away.
fn is_retryable(err: &Error) -> bool {
    match err {
        Error::Io { source, .. } => {
            if let Some(code) = source.raw_os_error() {
                // No AF_VSOCK in this kernel, or no vsock transport at all:
                // waiting will not help.
                if code == libc::EAFNOSUPPORT || code == libc::EPROTONOSUPPORT {
                    return false;
                }
            }
            !matches!(
                source.kind(),
                ErrorKind::PermissionDenied | ErrorKind::InvalidInput | ErrorKind::Unsupported
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booting_guest_errors_are_retryable() {
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::NotFound,
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
            ErrorKind::TimedOut,
        ] {
            assert!(is_retryable(&Error::io("x", kind.into())), "{kind:?}");
        }
    }

    #[test]
    fn permanent_errors_are_not_retryable() {
        assert!(!is_retryable(&Error::io(
            "x",
            ErrorKind::PermissionDenied.into()
        )));
        assert!(!is_retryable(&Error::io(
            "x",
            std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT)
        )));
        assert!(!is_retryable(&Error::Handshake {
            uds: "/x".into(),
            port: 1,
            answer: "NO".into()
        }));
    }

    #[test]
    fn defaults_are_kata_like() {
        let opts = ConnectOptions::default();
        assert_eq!(opts.dial_timeout, Duration::from_secs(45));
        assert_eq!(opts.request_timeout, Duration::from_secs(30));
        assert!(opts.retry_interval < Duration::from_secs(1));
    }
}
