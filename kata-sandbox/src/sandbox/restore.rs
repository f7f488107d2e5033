//! Handing a running sandbox over: [`Sandbox::detach`] leaves the VM, the shares and
//! `state.json` in place; [`Sandbox::restore`] takes them over again (in this process or
//! another: a restarted shim, the next `shim-ctl` command) and reconnects to the agent.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_agent_client::{AgentClient, ConnectOptions, OutputStream};
use kata_hypervisor::Hypervisor;
use kata_resource::share_fs::{RootfsMode, ShareFs, SharedRootfs};

use super::{agent_address, BootTimings, ContainerEntry, Inner, Sandbox};
use crate::container::{Container, Process};
use crate::error::{Error, Result};
use crate::io;
use crate::persist::{ProcessState, SandboxState};

/// How long a restore waits for the agent of a VM that is already up.
const RESTORE_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Leaves the sandbox running without this handle: the VM and its helper processes run
    /// on, the shared directory and container rootfs mounts stay mounted and `state.json`
    /// stays, up to date. [`Sandbox::restore`] takes it over again, here or in another
    /// process. Container handles of this sandbox stop working (their calls may still reach
    /// the agent, but nothing is recorded).
    ///
    /// If the hypervisor cannot hand its VM over ([`kata_hypervisor::Error::Unsupported`]),
    /// the error is returned and the sandbox, dropped, is killed as usual.
    pub async fn detach(self) -> Result<()> {
        let inner = &self.inner;
        if inner.shut_down.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        inner.persist()?;
        inner.vm.detach().await?;
        // From here on nothing is written or released by this process.
        {
            let _guard = inner.persist_lock.lock().unwrap();
            inner.shut_down.store(true, Ordering::SeqCst);
        }
        let entries: Vec<_> = inner.containers.lock().unwrap().drain().collect();
        for (_, e) in entries {
            if let Some(r) = e.rootfs {
                r.detach();
            }
        }
        if let Some(share) = inner.share.lock().unwrap().take() {
            share.detach();
        }
        tracing::info!(sandbox_id = %inner.id, dir = %inner.dir.display(), "sandbox detached: its VM runs on");
        Ok(())
    }

    /// Takes over the sandbox whose directory is `dir` (`<root>/<sandbox-id>`) from its
    /// `state.json`: adopts the running VM (through its backend: an external VMM's processes
    /// are checked by pid and command line), the shared directory and every container's rootfs
    /// mount, reconnects to the agent and rebuilds the container table. The sandbox was
    /// [detached](Sandbox::detach), or its owner died.
    ///
    /// Errors: no `state.json` ([`Error::NotFound`]), an unreadable one
    /// ([`Error::CorruptState`]), a VM that is gone or a pid that is not its VMM any more
    /// ([`kata_hypervisor::Error::Adopt`]), an agent that does not answer. On error nothing
    /// is killed or removed: [`crate::persist::cleanup`] can still clean up.
    pub async fn restore(dir: impl AsRef<Path>) -> Result<Sandbox> {
        Inner::restore(dir.as_ref()).await
    }

    /// A handle on an existing container (one created before a [`Sandbox::restore`], whose
    /// [`Container`] handle is gone). Its first process's output streams are re-attached:
    /// what the agent still holds is read from where the previous reader stopped. Its stdin
    /// is not re-attached (a dropped writer would close the process's stdin).
    ///
    /// Each call attaches new readers; two readers of one stream at a time split its output.
    /// Unknown id: [`Error::NotFound`].
    pub fn container(&self, id: &str) -> Result<Container> {
        let init = self.process(id, id)?;
        Ok(Container {
            id: id.to_string(),
            sandbox: self.inner.clone(),
            init,
        })
    }

    /// A handle on an existing process of a container: the first process (`exec_id` = the
    /// container id) or one started by [`Container::exec`]. Output streams are re-attached
    /// as with [`Sandbox::container`]; stdin is not. Unknown ids: [`Error::NotFound`].
    pub fn process(&self, container_id: &str, exec_id: &str) -> Result<Process> {
        let state = {
            let c = self.inner.containers.lock().unwrap();
            let entry = c.get(container_id).ok_or_else(|| Error::NotFound {
                kind: "container",
                id: container_id.to_string(),
            })?;
            if exec_id != container_id && !entry.exec_ids.iter().any(|e| e == exec_id) {
                return Err(Error::NotFound {
                    kind: "exec",
                    id: format!("{exec_id} in container {container_id}"),
                });
            }
            entry.processes.get(exec_id).copied().unwrap_or_default()
        };
        let agent = &self.inner.agent;
        Ok(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            agent: agent.clone(),
            stdin: None,
            stdout: Some(io::output(
                agent.clone(),
                OutputStream::Stdout,
                container_id,
                exec_id,
            )),
            stderr: (!state.terminal)
                .then(|| io::output(agent.clone(), OutputStream::Stderr, container_id, exec_id)),
        })
    }

    /// The ids of the sandbox's containers.
    pub fn container_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .containers
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

/// What a restore has taken over so far; on error it is all handed back untouched.
#[derive(Default)]
struct Adopted {
    vm: Option<Arc<dyn Hypervisor>>,
    share: Option<ShareFs>,
    rootfs: Vec<SharedRootfs>,
}

impl Adopted {
    async fn give_back(self) {
        for r in self.rootfs {
            r.detach();
        }
        if let Some(s) = self.share {
            s.detach();
        }
        if let Some(vm) = self.vm {
            if let Err(e) = vm.detach().await {
                tracing::warn!(error = %e, "handing the VM back after a failed restore");
            }
        }
    }
}

impl Inner {
    pub(crate) async fn restore(dir: &Path) -> Result<Sandbox> {
        let state = SandboxState::load(dir)?;
        let unrestorable = |reason: &str| Error::CorruptState {
            path: SandboxState::path(dir),
            reason: format!("cannot restore the sandbox: {reason}"),
        };
        let config = state
            .config
            .clone()
            .ok_or_else(|| unrestorable("no configuration recorded (an older format)"))?;
        let saved_vm = state
            .hypervisor
            .clone()
            .ok_or_else(|| unrestorable("no VM recorded"))?;
        let mut adopted = Adopted::default();
        match Self::adopt(&state, &saved_vm, &config, &mut adopted).await {
            Ok(agent) => {
                let vm = adopted.vm.take().expect("adopted");
                let share = adopted.share.take();
                let mut rootfs: HashMap<String, SharedRootfs> = adopted
                    .rootfs
                    .drain(..)
                    .map(|r| (r.container_id().to_string(), r))
                    .collect();
                let containers = state
                    .containers
                    .iter()
                    .map(|(id, c)| {
                        let execs = c
                            .execs
                            .iter()
                            .filter_map(|e| e.strip_prefix("exec-")?.parse::<u64>().ok())
                            .max()
                            .unwrap_or(0);
                        let mut processes: BTreeMap<String, ProcessState> = c.processes.clone();
                        processes.entry(id.clone()).or_default();
                        (
                            id.clone(),
                            ContainerEntry {
                                rootfs: rootfs.remove(id),
                                execs,
                                exec_ids: c.execs.clone(),
                                metadata: c.metadata.clone(),
                                processes,
                            },
                        )
                    })
                    .collect();
                let inner = Arc::new(Inner {
                    id: state.id.clone(),
                    dir: state.dir.clone(),
                    vm,
                    agent,
                    share: Mutex::new(share),
                    containers: Mutex::new(containers),
                    image_cache: config.image_cache.clone(),
                    shut_down: AtomicBool::new(false),
                    timings: BootTimings::default(),
                    saved_config: config,
                    persist_lock: Mutex::new(()),
                });
                inner.persist_or_warn();
                tracing::info!(sandbox_id = %inner.id, containers = state.containers.len(), "sandbox restored");
                Ok(Sandbox { inner })
            }
            Err(e) => {
                adopted.give_back().await;
                Err(e)
            }
        }
    }

    async fn adopt(
        state: &SandboxState,
        saved_vm: &kata_hypervisor::HypervisorState,
        config: &crate::persist::SandboxConfigState,
        adopted: &mut Adopted,
    ) -> Result<AgentClient> {
        let vm: Arc<dyn Hypervisor> =
            kata_hypervisor::backend::restore(&state.id, config.hypervisor.clone(), saved_vm)
                .await?;
        adopted.vm = Some(vm.clone());
        let share = ShareFs::adopt(&state.dir, config.shared_fs)?.with_msize_9p(config.msize_9p);
        for (id, c) in &state.containers {
            if c.rootfs.is_none() {
                continue;
            }
            let mode = c.rootfs_mode.unwrap_or(RootfsMode::ReadWrite);
            adopted.rootfs.push(share.adopt_rootfs(id, mode)?);
        }
        adopted.share = Some(share);
        let opts = ConnectOptions {
            dial_timeout: Duration::from_millis(config.agent_dial_timeout_ms)
                .min(RESTORE_DIAL_TIMEOUT),
            request_timeout: Duration::from_millis(config.agent_request_timeout_ms),
            ..ConnectOptions::default()
        };
        let address = agent_address(vm.agent_address()?);
        let agent = tokio::select! {
            r = AgentClient::connect(&address, opts) => r?,
            how = vm.wait_exit() => {
                return Err(Error::VmExited { how, console: vm.console_tail(20) });
            }
        };
        // The connection answers only once the agent does.
        agent.check().await?;
        Ok(agent)
    }
}
