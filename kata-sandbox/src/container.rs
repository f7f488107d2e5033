//! Containers and processes running in a sandbox.

use kata_agent_client::protocol::agent::{
    RemoveContainerRequest, SignalProcessRequest, StartContainerRequest, TtyWinResizeRequest,
    WaitProcessRequest,
};
use kata_agent_client::AgentClient;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::io::{InputWriter, OutputReader};
use crate::sandbox::Inner;

/// What a finished process left: its exit status and everything it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status as a shell reports it: the exit code, or 128 + the signal number.
    pub status: i32,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr (empty with a terminal: it is merged into stdout).
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A process in a container: the container's first process or one started by
/// [`Container::exec`].
#[derive(Debug)]
pub struct Process {
    pub(crate) container_id: String,
    pub(crate) exec_id: String,
    pub(crate) agent: AgentClient,
    pub(crate) stdin: Option<InputWriter>,
    pub(crate) stdout: Option<OutputReader>,
    pub(crate) stderr: Option<OutputReader>,
}

impl Process {
    /// The exec id (for a container's first process, the container id).
    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    /// Takes the stdin writer (only if the process was created with stdin open).
    pub fn stdin(&mut self) -> Option<InputWriter> {
        self.stdin.take()
    }

    /// Takes the stdout reader.
    pub fn stdout(&mut self) -> Option<OutputReader> {
        self.stdout.take()
    }

    /// Takes the stderr reader (`None` with a terminal).
    pub fn stderr(&mut self) -> Option<OutputReader> {
        self.stderr.take()
    }

    /// Waits for the process to exit; returns its status (code, or 128 + signal).
    ///
    /// As with Kata's agent, an exec's status can be collected once: the agent forgets the
    /// exec after answering (a container's first process stays until the container is deleted).
    pub async fn wait(&self) -> Result<i32> {
        let req = WaitProcessRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            ..Default::default()
        };
        Ok(self.agent.wait_process(&req, None).await?.status)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the process.
    pub async fn kill(&self, signal: i32) -> Result<()> {
        if signal <= 0 || signal > 64 {
            return Err(Error::invalid(
                "signal",
                format!("{signal} is not a signal number (1-64)"),
            ));
        }
        let req = SignalProcessRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            signal: signal as u32,
            ..Default::default()
        };
        self.agent.signal_process(&req).await?;
        Ok(())
    }

    /// Resizes the process's terminal.
    pub async fn resize_tty(&self, rows: u32, columns: u32) -> Result<()> {
        let req = TtyWinResizeRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            row: rows,
            column: columns,
            ..Default::default()
        };
        self.agent.tty_win_resize(&req).await?;
        Ok(())
    }

    /// Collects stdout and stderr to the end and waits for the exit status.
    /// The output readers must not have been taken.
    pub async fn output(&mut self) -> Result<Output> {
        let mut out = self.stdout.take();
        let mut err = self.stderr.take();
        let read_all = |r: Option<OutputReader>| async move {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                r.read_to_end(&mut buf)
                    .await
                    .map_err(|e| Error::io("reading process output", e))?;
            }
            Ok::<_, Error>(buf)
        };
        let (stdout, stderr, status) =
            tokio::join!(read_all(out.take()), read_all(err.take()), self.wait());
        Ok(Output {
            status: status?,
            stdout: stdout?,
            stderr: stderr?,
        })
    }
}

/// A container in a sandbox. Created by [`crate::Sandbox::create_container`]; its first
/// process runs once [`Container::start`] is called.
#[derive(Debug)]
pub struct Container {
    pub(crate) id: String,
    pub(crate) sandbox: Arc<Inner>,
    pub(crate) init: Process,
}

impl Container {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the first process.
    pub async fn start(&self) -> Result<()> {
        let req = StartContainerRequest {
            container_id: self.id.clone(),
            ..Default::default()
        };
        self.sandbox.agent.start_container(&req).await?;
        Ok(())
    }

    /// The first process (for its streams, `wait` and `kill`).
    pub fn process(&mut self) -> &mut Process {
        &mut self.init
    }

    /// Takes the first process's stdin writer (if created with stdin open).
    pub fn stdin(&mut self) -> Option<InputWriter> {
        self.init.stdin()
    }

    /// Takes the first process's stdout reader.
    pub fn stdout(&mut self) -> Option<OutputReader> {
        self.init.stdout()
    }

    /// Takes the first process's stderr reader.
    pub fn stderr(&mut self) -> Option<OutputReader> {
        self.init.stderr()
    }

    /// Waits for the first process; returns its status (code, or 128 + signal).
    pub async fn wait(&self) -> Result<i32> {
        self.init.wait().await
    }

    /// Sends a signal to the first process.
    pub async fn kill(&self, signal: i32) -> Result<()> {
        self.init.kill(signal).await
    }

    /// Resizes the first process's terminal.
    pub async fn resize_tty(&self, rows: u32, columns: u32) -> Result<()> {
        self.init.resize_tty(rows, columns).await
    }

    /// Starts another process in the running container.
    pub async fn exec(&self, process: crate::ProcessSpec) -> Result<Process> {
        self.sandbox.exec(&self.id, process).await
    }

    /// Starts the container, collects its output to the end, waits for it and deletes it.
    pub async fn output(mut self) -> Result<Output> {
        if let Err(e) = self.start().await {
            if let Err(de) = self.delete().await {
                tracing::warn!(error = %de, "deleting a container that failed to start");
            }
            return Err(e);
        }
        let out = self.init.output().await;
        let deleted = self.delete().await;
        let out = out?;
        deleted?;
        Ok(out)
    }

    /// Removes the container (killing its processes if they still run) and releases its
    /// rootfs on the host.
    pub async fn delete(self) -> Result<()> {
        let req = RemoveContainerRequest {
            container_id: self.id.clone(),
            timeout: 10,
            ..Default::default()
        };
        let removed = self.sandbox.agent.remove_container(&req).await;
        let released = self.sandbox.release_container(&self.id);
        removed?;
        released
    }
}
