//! A process's standard streams over the agent: one pump task per stream between the agent's
//! stream calls (`ReadStdout`/`ReadStderr`, `WriteStdin`/`CloseStdin`) and the caller's
//! in-memory pipe. A caller that drops a reader does not stall the process: its output is then
//! read and discarded.
//!
//! The pumps end with the sandbox: once it has died (the `dead` watch of [`super::VirtContainer`]
//! is set) or the connection to the agent is lost, an output stream ends with an error after
//! what was already read (never with a silent end of file), and stdin stops.

use kata_agent_client::{Agent, OutputStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::handler::ProcessStreams;
use crate::io::{input_pipe, output_pipe, InputWriter, OutputReader};

/// The most read from the agent per call.
const CHUNK: u32 = 32 * 1024;

/// Why the sandbox died, once it has (`None` while it lives).
pub(super) type Death = watch::Receiver<Option<String>>;

/// Output readers for a process (stderr too, unless it has a terminal).
pub(super) fn output(
    agent: &Agent,
    dead: &Death,
    container_id: &str,
    exec_id: &str,
    terminal: bool,
) -> ProcessStreams {
    let pump = |stream| pump_output(agent.clone(), dead.clone(), stream, container_id, exec_id);
    ProcessStreams {
        stdin: None,
        stdout: Some(pump(OutputStream::Stdout)),
        stderr: (!terminal).then(|| pump(OutputStream::Stderr)),
    }
}

/// Resolves once the sandbox has died, with why.
async fn died(dead: &mut Death) -> String {
    match dead.wait_for(Option::is_some).await {
        Ok(why) => why.clone().unwrap_or_default(),
        // The handler is gone: so is the sandbox.
        Err(_) => "the sandbox is gone".into(),
    }
}

/// Starts the pump of one output stream; returns the reader end.
fn pump_output(
    agent: Agent,
    mut dead: Death,
    stream: OutputStream,
    container_id: &str,
    exec_id: &str,
) -> OutputReader {
    let (reader, mut writer, broken) = output_pipe();
    let (container_id, exec_id) = (container_id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        let mut reader_gone = false;
        loop {
            let read = tokio::select! {
                r = agent.read_output(&container_id, &exec_id, stream, CHUNK, None) => r,
                why = died(&mut dead) => {
                    broken.set(format!("the sandbox died: {why}"));
                    break;
                }
            };
            match read {
                Ok(Some(data)) => {
                    if !reader_gone && writer.write_all(&data).await.is_err() {
                        reader_gone = true;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // A process the agent no longer knows has ended; a lost connection (or a
                    // dead sandbox) has lost output.
                    if e.is_connection_closed() || dead.borrow().is_some() {
                        broken.set(format!("the connection to the agent was lost: {e}"));
                    }
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
pub(super) fn input(
    agent: Agent,
    mut dead: Death,
    container_id: &str,
    exec_id: &str,
) -> InputWriter {
    let (writer, mut reader) = input_pipe();
    let (container_id, exec_id) = (container_id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        let pump = async {
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
        };
        tokio::select! {
            () = pump => {}
            why = died(&mut dead) => {
                tracing::debug!(%container_id, %exec_id, %why, "stdin stream ended: the sandbox died");
            }
        }
    });
    writer
}
