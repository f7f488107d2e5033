//! Looking into a running sandbox: the guest console's last lines ([`Sandbox::console_tail`])
//! and the debug console, a root shell in the guest ([`Sandbox::debug_console`]).
//!
//! The debug console is off unless the sandbox was started with `[agent.kata]
//! debug_console_enabled = true`: the guest agent then listens on vsock port 1026 and runs
//! `/bin/sh` on a pty in the guest (not in a container) per connection. It is reached only
//! from the host, over the sandbox's vsock, through its write gate (nothing reaches a paused
//! VM). The wire protocol is kata-agent-client's `debug_console` module.

use std::pin::Pin;
use std::task::{Context, Poll};

use kata_agent_client::connect::GuestStream;
use kata_agent_client::debug_console::ConsoleFrame;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// A debug console session: a shell on a pty in the guest. Split it into its output and its
/// input with [`DebugConsole::split`]; the shell is hung up when both are dropped.
#[derive(Debug)]
pub struct DebugConsole {
    stream: GuestStream,
}

/// The shell's terminal output (raw bytes, as a terminal shows them).
#[derive(Debug)]
pub struct DebugConsoleOutput {
    inner: ReadHalf<GuestStream>,
}

/// What is typed at the shell, and the terminal's size.
#[derive(Debug)]
pub struct DebugConsoleInput {
    inner: WriteHalf<GuestStream>,
}

impl DebugConsole {
    pub(crate) fn new(stream: GuestStream) -> Self {
        DebugConsole { stream }
    }

    /// The output and the input, to be used from two tasks.
    pub fn split(self) -> (DebugConsoleOutput, DebugConsoleInput) {
        let (r, w) = tokio::io::split(self.stream);
        (
            DebugConsoleOutput { inner: r },
            DebugConsoleInput { inner: w },
        )
    }
}

impl AsyncRead for DebugConsoleOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl DebugConsoleInput {
    /// Sends typed bytes to the shell's terminal.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.send(&ConsoleFrame::encode_data(bytes)).await
    }

    /// Tells the shell's terminal its new size.
    pub async fn resize(&mut self, rows: u16, columns: u16) -> Result<()> {
        self.send(&ConsoleFrame::encode_resize(rows, columns)).await
    }

    /// Ends the session: the shell is hung up.
    pub async fn close(mut self) -> Result<()> {
        self.inner
            .shutdown()
            .await
            .map_err(|e| Error::io("closing the debug console", e))
    }

    async fn send(&mut self, wire: &[u8]) -> Result<()> {
        self.inner
            .write_all(wire)
            .await
            .map_err(|e| Error::io("writing to the debug console", e))
    }
}

impl Sandbox {
    /// The guest console's last `n` lines (the VMM's console ring: the guest kernel's and the
    /// agent's output), oldest first. Empty when the runtime keeps none.
    pub fn console_tail(&self, n: usize) -> Vec<String> {
        self.core.handler.console_tail(n)
    }

    /// Opens the debug console: a root shell in the guest (not in a container).
    ///
    /// Refused with [`Error::DebugConsoleDisabled`] unless the sandbox was started with
    /// `[agent.kata] debug_console_enabled = true`
    /// ([`SandboxBuilder::debug_console`](crate::SandboxBuilder::debug_console)), or when the
    /// guest does not answer on the console's port.
    pub async fn debug_console(&self) -> Result<DebugConsole> {
        self.core.alive()?;
        if !self.core.config.agent.debug_console_enabled {
            return Err(Error::DebugConsoleDisabled {
                sandbox_id: self.id().to_string(),
                detail: "it was started without it".into(),
            });
        }
        let stream = self.core.handler.debug_console().await?;
        Ok(DebugConsole::new(stream))
    }
}
