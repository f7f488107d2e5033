//! Standard streams of container processes as tokio `AsyncRead` / `AsyncWrite`.
//!
//! Each stream is one end of an in-memory pipe (`tokio::io::duplex`); the runtime handler
//! fills or drains the other end (for a VM, a pump task over the agent's stream calls). The
//! pipe's buffer gives back-pressure: a caller that reads slowly slows the pump, not memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// A process's stdout or stderr.
#[derive(Debug)]
pub struct OutputReader {
    pipe: DuplexStream,
}

impl AsyncRead for OutputReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

/// A process's stdin. Shut it down (`AsyncWriteExt::shutdown`) or drop it to send EOF.
#[derive(Debug)]
pub struct InputWriter {
    pipe: DuplexStream,
}

impl AsyncWrite for InputWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}

/// The size of the in-memory pipe behind each stream.
pub(crate) const PIPE: usize = 64 * 1024;

/// A new output stream: the caller's reader and the writer end a handler's pump fills (its
/// shutdown is the reader's EOF).
pub(crate) fn output_pipe() -> (OutputReader, DuplexStream) {
    let (reader, writer) = tokio::io::duplex(PIPE);
    (OutputReader { pipe: reader }, writer)
}

/// A new input stream: the caller's writer and the reader end a handler's pump drains (EOF
/// when the caller shuts the writer down or drops it).
pub(crate) fn input_pipe() -> (InputWriter, DuplexStream) {
    let (writer, reader) = tokio::io::duplex(PIPE);
    (InputWriter { pipe: writer }, reader)
}
