//! Standard streams of container processes as tokio `AsyncRead` / `AsyncWrite`.
//!
//! Each stream is one end of an in-memory pipe (`tokio::io::duplex`); the runtime handler
//! fills or drains the other end (for a VM, a pump task over the agent's stream calls). The
//! pipe's buffer gives back-pressure: a caller that reads slowly slows the pump, not memory.
//!
//! An output stream ends in one of two ways: end of file (the process closed it: everything
//! it wrote has been read), or an error once what was buffered is read (the stream broke: the
//! sandbox died, or the connection to its runtime was lost), so a reader never mistakes lost
//! output for the end of it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// A process's stdout or stderr.
#[derive(Debug)]
pub struct OutputReader {
    pipe: DuplexStream,
    broken: StreamBreak,
}

impl AsyncRead for OutputReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.pipe).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of the pipe: the end of the output, unless the stream broke.
                match this.broken.reason() {
                    Some(why) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        format!("the output stream broke before its end: {why}"),
                    ))),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
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

/// Why an output stream broke, set by the handler's pump before it closes its end; the reader
/// then ends with an error instead of end of file.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamBreak(Arc<Mutex<Option<String>>>);

impl StreamBreak {
    /// Marks the stream broken (the first reason is kept).
    pub(crate) fn set(&self, why: impl Into<String>) {
        let mut r = self.0.lock().unwrap();
        if r.is_none() {
            *r = Some(why.into());
        }
    }

    fn reason(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A new output stream: the caller's reader, the writer end a handler's pump fills (its
/// shutdown is the reader's EOF) and the handle that marks the stream broken.
pub(crate) fn output_pipe() -> (OutputReader, DuplexStream, StreamBreak) {
    let (reader, writer) = tokio::io::duplex(PIPE);
    let broken = StreamBreak::default();
    (
        OutputReader {
            pipe: reader,
            broken: broken.clone(),
        },
        writer,
        broken,
    )
}

/// A new input stream: the caller's writer and the reader end a handler's pump drains (EOF
/// when the caller shuts the writer down or drops it).
pub(crate) fn input_pipe() -> (InputWriter, DuplexStream) {
    let (writer, reader) = tokio::io::duplex(PIPE);
    (InputWriter { pipe: writer }, reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_broken_stream_ends_in_an_error_after_its_data_an_ended_one_in_eof() {
        let (mut reader, mut writer, broken) = output_pipe();
        writer.write_all(b"kept").await.unwrap();
        broken.set("the sandbox died");
        writer.shutdown().await.unwrap();
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"kept", "what was buffered is still read");
        let e = reader.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        assert!(e.to_string().contains("the sandbox died"), "{e}");

        let (mut reader, mut writer, _) = output_pipe();
        writer.write_all(b"all").await.unwrap();
        drop(writer);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"all");
    }
}
