//! A running container process as the agent sees it: its pid, its exit status, its streams.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;
use tokio::sync::Mutex;

use super::stdio::{self, InputStream, OutputStream, ParentStdio};
use crate::error::{AgentError, Result};
use crate::reaper::{ExitCode, ExitWatch};

/// Which output stream to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// stdout (the terminal, with a pty).
    Stdout,
    /// stderr (nothing, with a pty).
    Stderr,
}

/// A container's init process or an exec'd process.
#[derive(Debug)]
pub struct Process {
    /// The container it belongs to.
    pub container_id: String,
    /// Its exec id (the CreateContainer exec id for the init process).
    pub exec_id: String,
    /// Its pid in the agent's pid namespace.
    pub pid: i32,
    exit: ExitWatch,
    stdin: Mutex<Option<InputStream>>,
    stdout: Mutex<Option<OutputStream>>,
    stderr: Mutex<Option<OutputStream>>,
    tty: Option<OwnedFd>,
    stdout_done: AtomicBool,
    stderr_done: AtomicBool,
    waited: AtomicBool,
}

impl Process {
    /// A process record for `pid` with its stdio.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        pid: i32,
        exit: ExitWatch,
        stdio: ParentStdio,
    ) -> Self {
        let has_stderr = stdio.stderr.is_some();
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            exit,
            stdin: Mutex::new(stdio.stdin),
            stdout: Mutex::new(stdio.stdout),
            stderr: Mutex::new(stdio.stderr),
            tty: stdio.tty,
            stdout_done: AtomicBool::new(false),
            stderr_done: AtomicBool::new(!has_stderr),
            waited: AtomicBool::new(false),
        }
    }

    /// The exit code if the process has exited.
    pub fn exit_code(&self) -> Option<ExitCode> {
        self.exit.try_get()
    }

    /// Waits for the process to exit; returns its shell-style exit status.
    pub async fn wait(&self) -> ExitCode {
        let code = self.exit.wait().await;
        self.waited.store(true, Ordering::SeqCst);
        code
    }

    /// Whether someone waited for it and both output streams reached their end: nothing more
    /// can be asked of this process.
    pub fn is_finished(&self) -> bool {
        self.waited.load(Ordering::SeqCst)
            && self.stdout_done.load(Ordering::SeqCst)
            && self.stderr_done.load(Ordering::SeqCst)
    }

    /// Sends `signal` to the process. A process that already exited is not an error.
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.exit_code().is_some() {
            return Ok(());
        }
        // Raw numbers rather than nix's `Signal`, which has no real-time signals
        // (SIGRTMIN+3 is systemd's stop signal).
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::kill(self.pid, signal) };
        match nix::Error::result(rc) {
            Ok(_) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(AgentError::sys(
                format!(
                    "send {} to process {} (exec {}) of container {}",
                    signal_name(signal),
                    self.pid,
                    self.exec_id,
                    self.container_id
                ),
                e,
            )),
        }
    }

    /// Reads up to `len` bytes of output as soon as some is available. `None` is the end of the
    /// stream: every writer closed it *and* the process exited.
    pub async fn read(&self, stream: Stream, len: usize) -> Result<Option<Vec<u8>>> {
        let (lock, done) = match stream {
            Stream::Stdout => (&self.stdout, &self.stdout_done),
            Stream::Stderr => (&self.stderr, &self.stderr_done),
        };
        let mut guard = lock.lock().await;
        if let Some(out) = guard.as_ref() {
            let data = out.read(len).await.map_err(|e| {
                AgentError::io(
                    format!(
                        "read {stream:?} of exec {} in container {}",
                        self.exec_id, self.container_id
                    ),
                    e,
                )
            })?;
            if !data.is_empty() {
                return Ok(Some(data));
            }
            *guard = None;
        }
        drop(guard);
        // End of stream once the process is gone too, so its exit status is known when the host
        // sees the end.
        self.exit.wait().await;
        done.store(true, Ordering::SeqCst);
        Ok(None)
    }

    /// Writes `data` to the process's stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize> {
        let guard = self.stdin.lock().await;
        let Some(stdin) = guard.as_ref() else {
            return Err(AgentError::FailedPrecondition(format!(
                "stdin of exec {} in container {} is closed",
                self.exec_id, self.container_id
            )));
        };
        stdin.write_all(data).await.map_err(|e| {
            AgentError::io(
                format!(
                    "write stdin of exec {} in container {}",
                    self.exec_id, self.container_id
                ),
                e,
            )
        })
    }

    /// Closes stdin (the process reads end of file). With a terminal, sends the EOF character
    /// instead: closing the master would hang up the terminal.
    pub async fn close_stdin(&self) -> Result<()> {
        let mut guard = self.stdin.lock().await;
        if self.tty.is_some() {
            if let Some(stdin) = guard.as_ref() {
                let _ = stdin.write_all(&[0x04]).await;
            }
        } else {
            *guard = None;
        }
        Ok(())
    }

    /// Resizes the terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let Some(tty) = &self.tty else {
            return Err(AgentError::NoTerminal {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            });
        };
        stdio::resize(tty, rows, cols)
            .map_err(|e| AgentError::io(format!("resize terminal of exec {}", self.exec_id), e))
    }
}

/// A signal's name (`SIGTERM`), or `signal N` for real-time ones.
pub fn signal_name(signal: i32) -> String {
    Signal::try_from(signal)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}
