//! A container as the agent tracks it: its init process, its exec'd processes, its cgroup, and
//! the socket its blocked init waits on for StartContainer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixStream;

use super::cgroup::{Cgroup, CgroupStats};
use super::channel::{recv_async, send_async, FromHelper, ToHelper};
use super::process::Process;
use super::seccomp::SeccompProgram;
use crate::error::{AgentError, Result};

/// How long StartContainer waits for the init to report its exec.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Created: its init waits for StartContainer.
    Created,
    /// Its init runs the workload.
    Running,
    /// Its init exited.
    Stopped,
}

/// Exec ids that are reserved while their process is being launched, or launched.
type ExecTable = HashMap<String, Option<Arc<Process>>>;

/// One container of the sandbox.
#[derive(Debug)]
pub struct Container {
    /// The container id.
    pub id: String,
    /// Its rootfs in the agent's mount namespace.
    pub rootfs: PathBuf,
    init: Arc<Process>,
    execs: Mutex<ExecTable>,
    cgroup: Option<Cgroup>,
    start: tokio::sync::Mutex<Option<UnixStream>>,
    seccomp: Option<SeccompProgram>,
    termination_log: std::result::Result<PathBuf, String>,
    hook_state: crate::hooks::HookState,
}

impl Container {
    /// Assembles a created container (its init blocked before exec).
    pub fn new(
        id: &str,
        rootfs: PathBuf,
        init: Process,
        cgroup: Option<Cgroup>,
        start: UnixStream,
    ) -> Self {
        Container {
            id: id.to_string(),
            rootfs,
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            cgroup,
            start: tokio::sync::Mutex::new(Some(start)),
            seccomp: None,
            termination_log: Err("no termination log was recorded".into()),
            hook_state: crate::hooks::HookState::default(),
        }
    }

    /// Records what guest hooks are told about the container (its spec's OCI version and
    /// annotations); the id, init pid and bundle are the container's.
    pub fn with_hook_state(mut self, mut state: crate::hooks::HookState) -> Self {
        state.id = self.id.clone();
        state.pid = self.init.pid;
        state.bundle = self
            .rootfs
            .parent()
            .unwrap_or(&self.rootfs)
            .display()
            .to_string();
        self.hook_state = state;
        self
    }

    /// The container's OCI state for its guest hooks.
    pub fn hook_state(&self) -> &crate::hooks::HookState {
        &self.hook_state
    }

    /// Records where the container's termination log is in the guest (or why it has none):
    /// GetDiagnosticData reads it ([`crate::diagnostic`]).
    pub fn with_termination_log(mut self, log: std::result::Result<PathBuf, String>) -> Self {
        self.termination_log = log;
        self
    }

    /// Where the container's termination log is in the guest, or why it has none.
    pub fn termination_log(&self) -> &std::result::Result<PathBuf, String> {
        &self.termination_log
    }

    /// Records the container's compiled seccomp profile, which its exec'd processes get too.
    pub fn with_seccomp(mut self, seccomp: Option<SeccompProgram>) -> Self {
        self.seccomp = seccomp;
        self
    }

    /// The container's compiled seccomp profile.
    pub fn seccomp(&self) -> Option<&SeccompProgram> {
        self.seccomp.as_ref()
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, ExecTable> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container's status.
    pub fn status(&self) -> Status {
        if self.init.exit_code().is_some() {
            Status::Stopped
        } else if self.start.try_lock().map(|s| s.is_some()).unwrap_or(false) {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The init process.
    pub fn init(&self) -> &Arc<Process> {
        &self.init
    }

    /// The container's cgroup, if the guest has one.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// The process with `exec_id`: the init process for an empty id or the init's own exec id.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() || exec_id == self.init.exec_id {
            return Ok(Arc::clone(&self.init));
        }
        self.execs()
            .get(exec_id)
            .and_then(Clone::clone)
            .ok_or_else(|| AgentError::ExecNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Reserves `exec_id` for a process about to be launched.
    pub fn reserve_exec(&self, exec_id: &str) -> Result<()> {
        let mut execs = self.execs();
        if exec_id == self.init.exec_id || execs.contains_key(exec_id) {
            return Err(AgentError::ExecExists {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            });
        }
        execs.insert(exec_id.to_string(), None);
        Ok(())
    }

    /// Fills a reservation with the launched process, or drops it (`None`) when launching failed.
    pub fn complete_exec(&self, exec_id: &str, process: Option<Arc<Process>>) {
        let mut execs = self.execs();
        match process {
            Some(p) => {
                execs.insert(exec_id.to_string(), Some(p));
            }
            None => {
                execs.remove(exec_id);
            }
        }
    }

    /// Forgets exec'd processes the host is done with (waited, and both streams at their end).
    pub fn forget_finished_execs(&self) {
        self.execs()
            .retain(|_, p| p.as_ref().is_none_or(|p| !p.is_finished()));
    }

    /// Lets the init exec the workload.
    pub async fn start(&self) -> Result<()> {
        let mut slot = self.start.lock().await;
        let Some(mut sock) = slot.take() else {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is already started",
                self.id
            )));
        };
        if self.init.exit_code().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} exited before it was started",
                self.id
            )));
        }
        send_async(&mut sock, &ToHelper::Start)
            .await
            .map_err(|e| AgentError::io(format!("start container {}", self.id), e))?;
        let answer = tokio::time::timeout(START_TIMEOUT, recv_async::<_, FromHelper>(&mut sock))
            .await
            .map_err(|_| AgentError::Timeout {
                what: format!("container {} to exec its process", self.id),
                seconds: START_TIMEOUT.as_secs(),
            })?;
        match answer {
            // The socket is close-on-exec: end of stream means the exec succeeded.
            Ok(None) => Ok(()),
            Ok(Some(FromHelper::Error(e))) => Err(AgentError::ContainerSetup {
                container_id: self.id.clone(),
                message: e.to_string(),
            }),
            Ok(Some(other)) => Err(AgentError::ContainerSetup {
                container_id: self.id.clone(),
                message: format!("unexpected message from init: {other:?}"),
            }),
            Err(e) => Err(AgentError::io(format!("start container {}", self.id), e)),
        }
    }

    /// Signals the process `exec_id`. An empty exec id (or the init's) signals the init; for
    /// SIGKILL every process left in the container's cgroup is killed too.
    pub fn signal(&self, exec_id: &str, signal: i32) -> Result<()> {
        let process = self.process(exec_id)?;
        process.signal(signal)?;
        if Arc::ptr_eq(&process, &self.init) && signal == libc::SIGKILL {
            if let Some(cg) = &self.cgroup {
                for pid in cg.pids() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if signal == libc::SIGKILL {
            self.thaw();
        }
        Ok(())
    }

    /// Thaws a paused container so that a SIGKILL sent to it takes effect: a task frozen by the
    /// v1 freezer does not die until it is thawed (v2 lets fatal signals through, thawing is
    /// harmless there).
    fn thaw(&self) {
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.freeze(false) {
                tracing::debug!(container_id = %self.id, error = %e, "not thawed");
            }
        }
    }

    /// Kills every process of the container, waits for them (up to `timeout`, `None` for ever),
    /// and removes its cgroup.
    pub async fn destroy(&self, timeout: Option<Duration>) -> Result<()> {
        // A container that never started: its init waits on this socket; closing it makes the
        // init exit on its own, the SIGKILL below makes sure of it.
        self.start.lock().await.take();
        let execs: Vec<Arc<Process>> = self.execs().values().flatten().cloned().collect();
        for p in execs.iter().chain(std::iter::once(&self.init)) {
            p.signal(libc::SIGKILL)?;
        }
        self.thaw();
        let wait_all = async {
            self.init.wait().await;
            for p in &execs {
                p.wait().await;
            }
        };
        match timeout {
            Some(t) => {
                tokio::time::timeout(t, wait_all)
                    .await
                    .map_err(|_| AgentError::Timeout {
                        what: format!("the processes of container {} to exit", self.id),
                        seconds: t.as_secs(),
                    })?
            }
            None => wait_all.await,
        }
        if let Some(cg) = &self.cgroup {
            // Destroying polls the cgroup: keep it off the async workers.
            let cg = cg.clone();
            let paths = cg.paths();
            tokio::task::spawn_blocking(move || cg.destroy())
                .await
                .map_err(|e| AgentError::io("remove cgroup", std::io::Error::other(e)))?
                .inspect_err(|e| {
                    tracing::warn!(container_id = %self.id, ?paths, error = %e, "cgroup not removed")
                })?;
        }
        Ok(())
    }

    /// OOM kills in the container so far.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map(Cgroup::oom_kills).unwrap_or(0)
    }

    /// Pauses (`true`) or resumes (`false`) every process of the container.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        match &self.cgroup {
            Some(cg) => cg.freeze(frozen),
            None => Err(AgentError::FailedPrecondition(format!(
                "container {} has no cgroup to freeze",
                self.id
            ))),
        }
    }

    /// Cgroup statistics (all zero without a cgroup).
    pub fn stats(&self) -> CgroupStats {
        self.cgroup.as_ref().map(Cgroup::stats).unwrap_or_default()
    }

    /// The container's pids: its cgroup's, or its known processes without a cgroup.
    pub fn pids(&self) -> Vec<i32> {
        match &self.cgroup {
            Some(cg) => cg.pids(),
            None => std::iter::once(&self.init)
                .chain(self.execs().values().flatten())
                .filter(|p| p.exit_code().is_none())
                .map(|p| p.pid)
                .collect(),
        }
    }
}
