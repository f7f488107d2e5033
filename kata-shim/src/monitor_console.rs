//! The debug console through the shim's management socket ([`crate::monitor`]): how
//! `shim-ctl console` reaches the guest shell of a sandbox a containerd shim runs (the shim
//! holds the VM and its agent connections; a second process must not restore the sandbox).
//!
//! The client asks for an upgrade, as HTTP/1.1 does for WebSocket:
//!
//! ```text
//! GET /console HTTP/1.1
//! Connection: Upgrade
//! Upgrade: kata-debug-console
//! ```
//!
//! The shim opens the sandbox's console ([`kata_sandbox::Sandbox::debug_console`], which
//! dials the guest through the sandbox's write gate) and answers `101 Switching Protocols`;
//! from then on the connection carries the console: guest → client the shell's terminal
//! output, raw; client → guest console frames (kata-agent-client's `debug_console` wire
//! format: data and window sizes), which the shim decodes at this edge and sends on; a
//! malformed frame ends the session. Refusals are ordinary answers with a text body: `403`
//! when the sandbox was started without `[agent.kata] debug_console_enabled` (the body names
//! the key), `426` without the upgrade headers, `502` when the guest does not answer, `503`
//! when the sandbox has ended. A session holds the console's connection, never the sandbox.

use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use kata_agent_client::debug_console::{ConsoleFrame, FrameDecoder};
use kata_sandbox::{DebugConsoleInput, Sandbox};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The path the console is asked for on the management socket.
pub const PATH: &str = "/console";

/// The `Upgrade` protocol name.
pub const PROTOCOL: &str = "kata-debug-console";

/// How long the shim's answer to a console request may take (opening the console dials the
/// guest, which has its own timeout).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest answer head a client reads.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Whether request head `head` asks for the console protocol (`Connection: Upgrade` and
/// `Upgrade: kata-debug-console`, names and values case-insensitive).
pub fn asks_for_upgrade(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut connection = false;
    let mut upgrade = false;
    for line in text.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let mut values = value.split(',').map(str::trim);
        if name.eq_ignore_ascii_case("connection") {
            connection |= values.any(|v| v.eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= values.any(|v| v.eq_ignore_ascii_case(PROTOCOL));
        }
    }
    connection && upgrade
}

/// Answers a `GET /console` on the management socket (request head `head`, `early` what the
/// client sent after it without waiting for the answer): refuses it, or upgrades the
/// connection and relays the console until either side ends.
pub async fn answer(
    mut stream: UnixStream,
    head: &[u8],
    early: Vec<u8>,
    sandbox: Weak<Sandbox>,
) -> std::io::Result<()> {
    if !asks_for_upgrade(head) {
        return refuse(
            &mut stream,
            426,
            "Upgrade Required",
            &format!("the console needs `Connection: Upgrade` and `Upgrade: {PROTOCOL}`"),
        )
        .await;
    }
    let Some(sb) = sandbox.upgrade() else {
        return refuse(
            &mut stream,
            503,
            "Service Unavailable",
            "the sandbox has ended",
        )
        .await;
    };
    let sandbox_id = sb.id().to_string();
    let opened = sb.debug_console().await;
    drop(sb);
    let console = match opened {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(sandbox_id = %sandbox_id, error = %e, "debug console refused");
            let (status, reason) = match e {
                kata_sandbox::Error::DebugConsoleDisabled { .. } => (403, "Forbidden"),
                kata_sandbox::Error::ShutDown | kata_sandbox::Error::SandboxDead { .. } => {
                    (503, "Service Unavailable")
                }
                _ => (502, "Bad Gateway"),
            };
            return refuse(&mut stream, status, reason, &e.to_string()).await;
        }
    };
    stream
        .write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    tracing::info!(sandbox_id = %sandbox_id, "debug console session opened");
    let (mut output, input) = console.split();
    let (mut from_client, mut to_client) = stream.into_split();
    let shown = tokio::io::copy(&mut output, &mut to_client);
    let typed = relay_frames(early, &mut from_client, input);
    let ended = tokio::select! {
        r = shown => r.map(|_| "the shell exited".to_string()).unwrap_or_else(|e| format!("writing to the client: {e}")),
        r = typed => r.err().unwrap_or_else(|| "the client hung up".into()),
    };
    tracing::info!(sandbox_id = %sandbox_id, ended = %ended, "debug console session ended");
    let _ = to_client.shutdown().await;
    Ok(())
}

/// Decodes the client's console frames and sends them to the guest; ends with the client's
/// end of stream (the shell is hung up) or the first malformed frame.
async fn relay_frames(
    early: Vec<u8>,
    from_client: &mut (impl AsyncRead + Unpin),
    mut input: DebugConsoleInput,
) -> Result<(), String> {
    let mut decoder = FrameDecoder::default();
    let mut bytes = early;
    let mut buf = [0u8; 8192];
    loop {
        for frame in decoder.push(&bytes).map_err(|e| e.to_string())? {
            match frame {
                ConsoleFrame::Data(data) => input.write(&data).await,
                ConsoleFrame::Resize { rows, columns } => input.resize(rows, columns).await,
            }
            .map_err(|e| e.to_string())?;
        }
        let n = from_client
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the client: {e}"))?;
        if n == 0 {
            return input.close().await.map_err(|e| e.to_string());
        }
        bytes.clear();
        bytes.extend_from_slice(&buf[..n]);
    }
}

async fn refuse(
    stream: &mut UnixStream,
    status: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let body = format!("{body}\n");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// A console session through a management socket: the client's side.
#[derive(Debug)]
pub struct ConsoleSession {
    /// The shell's terminal output, raw.
    pub output: OwnedReadHalf,
    /// What is typed, and the window size.
    pub input: ConsoleInput,
}

/// The typing side of a [`ConsoleSession`]: encodes console frames.
#[derive(Debug)]
pub struct ConsoleInput {
    inner: OwnedWriteHalf,
}

impl ConsoleInput {
    /// Sends typed bytes to the shell's terminal.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner
            .write_all(&ConsoleFrame::encode_data(bytes))
            .await
    }

    /// Tells the shell's terminal its new size.
    pub async fn resize(&mut self, rows: u16, columns: u16) -> std::io::Result<()> {
        self.inner
            .write_all(&ConsoleFrame::encode_resize(rows, columns))
            .await
    }

    /// Ends the session: the shell is hung up.
    pub async fn close(mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }
}

/// Opens the debug console of the sandbox whose management socket is `socket`. A refusal is
/// an error carrying the shim's text (for a sandbox without the console, naming
/// `debug_console_enabled`).
pub async fn open(socket: &Path) -> std::io::Result<ConsoleSession> {
    let err = |what: String| std::io::Error::other(format!("{}: {what}", socket.display()));
    let mut stream = UnixStream::connect(socket).await.map_err(|e| {
        err(format!(
            "cannot connect ({e}): is the sandbox's shim running?"
        ))
    })?;
    stream
        .write_all(
            format!(
                "GET {PATH} HTTP/1.1\r\nHost: kata-rs\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let head = tokio::time::timeout(ANSWER_TIMEOUT, read_answer_head(&mut stream))
        .await
        .map_err(|_| err(format!("no answer within {ANSWER_TIMEOUT:?}")))??;
    let status = head.lines().next().unwrap_or("").to_string();
    if status.split(' ').nth(1) != Some("101") {
        let mut body = String::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            (&mut stream).take(64 * 1024).read_to_string(&mut body),
        )
        .await;
        let body = body.trim();
        return Err(std::io::Error::other(if body.is_empty() {
            format!("{}: the shim answered {status:?}", socket.display())
        } else {
            body.to_string()
        }));
    }
    let (output, inner) = stream.into_split();
    Ok(ConsoleSession {
        output,
        input: ConsoleInput { inner },
    })
}

/// Reads an answer's head byte by byte (what follows a `101` is the console's output).
async fn read_answer_head(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER_HEAD || stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other(format!(
                "the shim's answer is not HTTP: {:?}",
                String::from_utf8_lossy(&head)
            )));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_needs_both_headers() {
        let h = |s: &str| asks_for_upgrade(s.as_bytes());
        assert!(h(
            "GET /console HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: kata-debug-console"
        ));
        assert!(h("GET /console HTTP/1.1\r\nconnection: keep-alive, upgrade\r\nUPGRADE: Kata-Debug-Console"));
        assert!(!h("GET /console HTTP/1.1\r\nUpgrade: kata-debug-console"));
        assert!(!h(
            "GET /console HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket"
        ));
        assert!(!h("GET /console HTTP/1.1"));
    }

    #[tokio::test]
    async fn a_refusal_reaches_the_client_as_its_text() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(asks_for_upgrade(&buf[..n]));
            refuse(
                &mut s,
                403,
                "Forbidden",
                "no console: debug_console_enabled",
            )
            .await
            .unwrap();
        });
        let e = open(&path).await.unwrap_err().to_string();
        assert_eq!(e, "no console: debug_console_enabled");
        server.await.unwrap();
    }
}
