//! A module's standard streams: the same in-memory pipes as every handler's
//! ([`crate::io`]), their far ends given to WASI as stdin, stdout and stderr.
//!
//! The module's ends stop at a kill: a module blocked reading stdin reads end of file, one
//! blocked writing to a full pipe (a caller that does not read) gets a broken pipe, so the
//! kill reaches it even inside a host call, where epoch interruption cannot.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::watch;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};

use crate::handler::ProcessStreams;
use crate::io::{input_pipe, output_pipe, PIPE};

/// A module's end of one stream, which ends once the module is killed.
struct Killable {
    pipe: DuplexStream,
    /// Resolves at the kill (a `Mutex` only to make it `Sync`, as WASI wants its streams).
    killed: Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Killable {
    fn new(pipe: DuplexStream, mut on_kill: watch::Receiver<bool>) -> Killable {
        Killable {
            pipe,
            killed: Mutex::new(Box::pin(async move {
                let _ = on_kill.wait_for(|k| *k).await;
            })),
        }
    }

    fn is_killed(&self, cx: &mut Context<'_>) -> bool {
        self.killed.lock().unwrap().as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_killed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}

/// The module's ends of its streams, as WASI takes them.
pub(super) struct ModuleStdio {
    pub(super) stdin: AsyncStdinStream,
    pub(super) stdout: Arc<AsyncStdoutStream>,
    /// The same stream as `stdout` with a terminal.
    pub(super) stderr: Arc<AsyncStdoutStream>,
}

/// New streams for a module: the caller's ends (stdin always open here: the handler closes it
/// at attach time when the process has none) and the module's. With `terminal`, stderr is
/// merged into stdout, as a terminal does.
pub(super) fn pipes(
    terminal: bool,
    on_kill: &watch::Receiver<bool>,
) -> (ProcessStreams, ModuleStdio) {
    let (stdin_writer, stdin_reader) = input_pipe();
    let (stdout_reader, stdout_writer, _) = output_pipe();
    let stdout = Arc::new(AsyncStdoutStream::new(
        PIPE,
        Killable::new(stdout_writer, on_kill.clone()),
    ));
    let (stderr_reader, stderr) = if terminal {
        (None, stdout.clone())
    } else {
        let (reader, writer, _) = output_pipe();
        let stream = AsyncStdoutStream::new(PIPE, Killable::new(writer, on_kill.clone()));
        (Some(reader), Arc::new(stream))
    };
    let caller = ProcessStreams {
        stdin: Some(stdin_writer),
        stdout: Some(stdout_reader),
        stderr: stderr_reader,
    };
    let module = ModuleStdio {
        stdin: AsyncStdinStream::new(Killable::new(stdin_reader, on_kill.clone())),
        stdout,
        stderr,
    };
    (caller, module)
}

/// Writes `message` to a module's stderr after its call ended (why it trapped).
pub(super) fn write_after_exit(stderr: &AsyncStdoutStream, message: &str) {
    use tokio::io::AsyncWriteExt;
    use wasmtime_wasi::cli::StdoutStream;
    let mut w = Pin::from(stderr.async_stream());
    let line = format!("{message}\n");
    wasmtime_wasi::runtime::in_tokio(async move {
        let _ = w.write_all(line.as_bytes()).await;
        // WASI's stream only starts a flush and answers; the stream's worker, which writes to
        // the pipe, is aborted when the stream is dropped. A second flush first waits until
        // the stream is ready again, that is until the first one is done: the line is in the
        // pipe before the stream ends. (Without it the line was lost now and then: the trap
        // test failed in a CI run with an empty stderr.)
        let _ = w.flush().await;
        let _ = w.flush().await;
    });
}
