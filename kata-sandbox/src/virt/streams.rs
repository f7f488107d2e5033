//! A process's standard streams over the agent: one pump task per stream between the agent's
//! stream calls (`ReadStdout`/`ReadStderr`, `WriteStdin`/`CloseStdin`) and the caller's
//! in-memory pipe. A caller that drops a reader does not stall the process: its output is then
//! read and discarded.

use kata_agent_client::{Agent, OutputStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::handler::ProcessStreams;
use crate::io::{input_pipe, output_pipe, InputWriter, OutputReader};

/// The most read from the agent per call.
const CHUNK: u32 = 32 * 1024;

/// Output readers for a process (stderr too, unless it has a terminal).
pub(super) fn output(
    agent: &Agent,
    container_id: &str,
    exec_id: &str,
    terminal: bool,
) -> ProcessStreams {
    ProcessStreams {
        stdin: None,
        stdout: Some(pump_output(
            agent.clone(),
            OutputStream::Stdout,
            container_id,
            exec_id,
        )),
        stderr: (!terminal)
            .then(|| pump_output(agent.clone(), OutputStream::Stderr, container_id, exec_id)),
    }
}

/// Starts the pump of one output stream; returns the reader end.
fn pump_output(
    agent: Agent,
    stream: OutputStream,
    container_id: &str,
    exec_id: &str,
) -> OutputReader {
    let (reader, mut writer) = output_pipe();
    let (container_id, exec_id) = (container_id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        let mut reader_gone = false;
        loop {
            match agent
                .read_output(&container_id, &exec_id, stream, CHUNK, None)
                .await
            {
                Ok(Some(data)) => {
                    if !reader_gone && writer.write_all(&data).await.is_err() {
                        reader_gone = true;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%container_id, %exec_id, ?stream, error = %e, "output stream ended");
                    break;
                }
            }
        }
        let _ = writer.shutdown().await;
    });
    reader
}

/// Starts the stdin pump; returns the writer end. EOF on it closes the process's stdin.
pub(super) fn input(agent: Agent, container_id: &str, exec_id: &str) -> InputWriter {
    let (writer, mut reader) = input_pipe();
    let (container_id, exec_id) = (container_id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut sent = 0;
            while sent < n {
                match agent
                    .write_stdin(&container_id, &exec_id, &buf[sent..n])
                    .await
                {
                    Ok(0) => {
                        // The process no longer takes input: stop pumping.
                        tracing::debug!(%container_id, %exec_id, "stdin accepts nothing more");
                        return;
                    }
                    Ok(written) => sent += written,
                    Err(e) => {
                        tracing::debug!(%container_id, %exec_id, error = %e, "stdin stream ended");
                        return;
                    }
                }
            }
        }
        if let Err(e) = agent.close_stdin(&container_id, &exec_id).await {
            tracing::debug!(%container_id, %exec_id, error = %e, "closing stdin");
        }
    });
    writer
}
