//! Containers and processes running in a sandbox: handles that reach the sandbox's runtime
//! handler, whatever it is (a VM's agent, or the host).

use std::collections::BTreeMap;
use std::sync::Arc;

use kata_agent_client::{ContainerStats, ExitStatus, Signal};
use oci_spec::runtime::LinuxResources;
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::io::{InputWriter, OutputReader};
use crate::sandbox::Core;

/// What [`Process::output`] collects of each of stdout and stderr unless the spec says
/// otherwise ([`ProcessSpec::output_limit`](crate::ProcessSpec::output_limit)): 16 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 << 20;

/// What a finished process left: its exit status and everything it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it exited: a code, or the signal that killed it.
    pub status: ExitStatus,
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
    pub(crate) sandbox: Arc<Core>,
    pub(crate) stdin: Option<InputWriter>,
    pub(crate) stdout: Option<OutputReader>,
    pub(crate) stderr: Option<OutputReader>,
    /// The most [`Process::output`] collects per stream.
    pub(crate) output_limit: usize,
}

impl Process {
    /// The container it runs in.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

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

    /// Waits for the process to exit.
    ///
    /// As with Kata's agent, an exec's status can be collected once: the agent forgets the
    /// exec after answering (a container's first process stays until the container is deleted).
    pub async fn wait(&self) -> Result<ExitStatus> {
        self.sandbox
            .wait_process(&self.container_id, &self.exec_id)
            .await
    }

    /// Sends a signal to the process.
    pub async fn kill(&self, signal: Signal) -> Result<()> {
        self.sandbox
            .signal_process(&self.container_id, &self.exec_id, signal)
            .await
    }

    /// Resizes the process's terminal.
    pub async fn resize_tty(&self, rows: u32, columns: u32) -> Result<()> {
        self.sandbox
            .resize_tty(&self.container_id, &self.exec_id, rows, columns)
            .await
    }

    /// Collects stdout and stderr to the end and waits for the exit status.
    /// The output readers must not have been taken.
    ///
    /// At most the spec's output limit ([`DEFAULT_OUTPUT_LIMIT`] unless
    /// [`ProcessSpec::output_limit`](crate::ProcessSpec::output_limit) says otherwise) is
    /// collected of each stream: a process that writes more is killed (`SIGKILL`) and this
    /// fails with [`Error::OutputTooLarge`] naming the stream, so memory stays bounded
    /// whatever the process writes.
    pub async fn output(&mut self) -> Result<Output> {
        let limit = self.output_limit;
        let (out, err) = (self.stdout.take(), self.stderr.take());
        let this = &*self;
        let collect = |r: Option<OutputReader>, stream: &'static str| async move {
            let mut buf = Vec::new();
            let Some(r) = r else {
                return Ok(buf);
            };
            r.take(limit as u64 + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| Error::io(format!("reading the {stream} of {}", this.exec_id), e))?;
            if buf.len() > limit {
                // The reader is dropped: the rest is discarded, and the process killed so the
                // wait below ends.
                if let Err(e) = this.kill(Signal::KILL).await {
                    tracing::warn!(container_id = %this.container_id, exec_id = %this.exec_id, error = %e, "killing a process past its output limit");
                }
                return Err(Error::OutputTooLarge {
                    stream,
                    exec_id: this.exec_id.clone(),
                    limit,
                });
            }
            Ok::<_, Error>(buf)
        };
        let (stdout, stderr, status) =
            tokio::join!(collect(out, "stdout"), collect(err, "stderr"), this.wait());
        // A broken stream is reported as what broke it (the sandbox died, ...), an overflow
        // before the kill it caused.
        let (stdout, stderr) = match (stdout, stderr) {
            (Err(e @ Error::OutputTooLarge { .. }), _)
            | (_, Err(e @ Error::OutputTooLarge { .. })) => return Err(e),
            other => other,
        };
        Ok(Output {
            status: status?,
            stdout: stdout?,
            stderr: stderr?,
        })
    }
}

/// A container in a sandbox. Created by [`crate::Sandbox::create_container`]; its first
/// process runs once [`Container::start`] is called. Every operation is also available on the
/// [`Sandbox`](crate::Sandbox) by container id.
#[derive(Debug)]
pub struct Container {
    pub(crate) id: String,
    pub(crate) sandbox: Arc<Core>,
    pub(crate) init: Process,
}

impl Container {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the first process.
    pub async fn start(&self) -> Result<()> {
        self.sandbox.start_container(&self.id).await
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

    /// Waits for the first process.
    pub async fn wait(&self) -> Result<ExitStatus> {
        self.init.wait().await
    }

    /// Sends a signal to the first process.
    pub async fn kill(&self, signal: Signal) -> Result<()> {
        self.init.kill(signal).await
    }

    /// Resizes the first process's terminal.
    pub async fn resize_tty(&self, rows: u32, columns: u32) -> Result<()> {
        self.init.resize_tty(rows, columns).await
    }

    /// Starts another process in the running container.
    pub async fn exec(&self, process: crate::ProcessSpec) -> Result<Process> {
        self.sandbox.exec(&self.sandbox, &self.id, process).await
    }

    /// Freezes every process of the container.
    pub async fn pause(&self) -> Result<()> {
        self.sandbox.pause_container(&self.id).await
    }

    /// Thaws a paused container.
    pub async fn resume(&self) -> Result<()> {
        self.sandbox.resume_container(&self.id).await
    }

    /// The container's resource usage.
    pub async fn stats(&self) -> Result<ContainerStats> {
        self.sandbox.container_stats(&self.id).await
    }

    /// Changes the container's resource limits (CPU, memory, pids).
    pub async fn update(&self, resources: &LinuxResources) -> Result<()> {
        self.sandbox.update_container(&self.id, resources).await
    }

    /// The pids of the container's processes, as its runtime sees them (in the guest for a VM).
    pub async fn pids(&self) -> Result<Vec<u32>> {
        self.sandbox.container_pids(&self.id).await
    }

    /// The metadata given with [`ContainerSpec::metadata`](crate::ContainerSpec::metadata).
    pub fn metadata(&self) -> Result<BTreeMap<String, String>> {
        self.sandbox.container_metadata(&self.id)
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

    /// Removes the container (killing its processes if they still run) and releases what it
    /// holds on the host.
    pub async fn delete(self) -> Result<()> {
        self.sandbox.delete_container(&self.id).await
    }
}
