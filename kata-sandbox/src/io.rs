//! Standard streams of container processes as tokio `AsyncRead` / `AsyncWrite`.
//!
//! Each stream is a pump task between the agent's stream calls and one end of an in-memory
//! pipe (`tokio::io::duplex`). The pipe's buffer gives back-pressure: a caller that reads
//! slowly slows the agent reads, not memory. A caller that drops a reader does not stall the
//! process: its output is then read and discarded.

use std::pin::Pin;
use std::task::{Context, Poll};

use kata_agent_client::protocol::agent::{
    CloseStdinRequest, ReadStreamRequest, WriteStreamRequest,
};
use kata_agent_client::{AgentClient, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

const CHUNK: u32 = 32 * 1024;
const PIPE: usize = 64 * 1024;

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

/// Starts the pump of one output stream; returns the reader end.
pub(crate) fn output(
    agent: AgentClient,
    stream: OutputStream,
    container_id: &str,
    exec_id: &str,
) -> OutputReader {
    let (reader, mut writer) = tokio::io::duplex(PIPE);
    let req = ReadStreamRequest {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        len: CHUNK,
        ..Default::default()
    };
    tokio::spawn(async move {
        let mut reader_gone = false;
        loop {
            match agent.read_output(stream, &req).await {
                Ok(Some(data)) => {
                    if !reader_gone && writer.write_all(&data).await.is_err() {
                        reader_gone = true;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(container_id = %req.container_id, exec_id = %req.exec_id, ?stream, error = %e, "output stream ended");
                    break;
                }
            }
        }
        let _ = writer.shutdown().await;
    });
    OutputReader { pipe: reader }
}

/// Starts the stdin pump; returns the writer end. EOF on it closes the process's stdin.
pub(crate) fn input(agent: AgentClient, container_id: &str, exec_id: &str) -> InputWriter {
    let (writer, mut reader) = tokio::io::duplex(PIPE);
    let container_id = container_id.to_string();
    let exec_id = exec_id.to_string();
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut sent = 0;
            while sent < n {
                let req = WriteStreamRequest {
                    container_id: container_id.clone(),
                    exec_id: exec_id.clone(),
                    data: buf[sent..n].to_vec(),
                    ..Default::default()
                };
                match agent.write_stdin(&req).await {
                    Ok(resp) if resp.len > 0 => sent += resp.len as usize,
                    Ok(_) => {
                        // The process no longer takes input: stop pumping.
                        tracing::debug!(%container_id, %exec_id, "stdin accepts nothing more");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%container_id, %exec_id, error = %e, "stdin stream ended");
                        return;
                    }
                }
            }
        }
        let req = CloseStdinRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            ..Default::default()
        };
        if let Err(e) = agent.close_stdin(&req).await {
            tracing::debug!(%container_id, %exec_id, error = %e, "closing stdin");
        }
    });
    InputWriter { pipe: writer }
}
