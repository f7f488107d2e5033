//! Handing a running sandbox over: [`Sandbox::detach`] leaves it running with `state.json` in
//! place; [`Sandbox::restore`] takes it over again (in this process or another: a restarted
//! shim, the next `shim-ctl` command). Also the handles on containers and processes that
//! exist already.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BootTimings, ContainerEntry, Core, Life, Sandbox};
use crate::container::{Container, Process, DEFAULT_OUTPUT_LIMIT};
use crate::error::{Error, Result};
use crate::handler::{RuntimeHandler, RuntimeHandlerKind};
use crate::persist::SandboxState;

impl Sandbox {
    /// Leaves the sandbox running without this handle: its VM (or other runtime) runs on,
    /// its host resources stay in place and `state.json` stays, up to date.
    /// [`Sandbox::restore`] takes it over again, here or in another process. Container
    /// handles of this sandbox stop working.
    ///
    /// If the runtime cannot hand its sandbox over (an in-process VMM), the error is
    /// returned and the sandbox, dropped, is stopped as usual.
    pub async fn detach(self) -> Result<()> {
        let core = &self.core;
        core.alive()?;
        core.persist()?;
        // The monitor stops first: a VM handed over looks to it like a VM gone, and it must
        // not tear down what is being handed over.
        core.life.send_replace(Life::Closed);
        if let Err(e) = core.handler.detach().await {
            core.life.send_replace(Life::Alive);
            core.spawn_monitor();
            return Err(e);
        }
        // From here on nothing is written or released by this process.
        {
            let _guard = core.persist_lock.lock().unwrap();
            core.shut_down.store(true, Ordering::SeqCst);
        }
        core.containers.lock().unwrap().clear();
        tracing::info!(sandbox_id = %core.id(), dir = %core.dir.display(), "sandbox detached: it runs on");
        Ok(())
    }

    /// Takes over the sandbox whose directory is `dir` (`<root>/<sandbox-id>`) from its
    /// `state.json`: the runtime (for a VM: the VMM and its helpers, checked by pid and
    /// command line, and its host resources) is adopted and reconnected, and the container
    /// table rebuilt. The sandbox was [detached](Sandbox::detach), or its owner died.
    ///
    /// Errors: no `state.json` ([`Error::NotFound`]), an unreadable one or one of another
    /// format version ([`Error::CorruptState`]), a VM that is gone, a runtime that does not
    /// answer. On error nothing is stopped or removed: [`crate::persist::cleanup`] can still
    /// clean up.
    pub async fn restore(dir: impl AsRef<Path>) -> Result<Sandbox> {
        let dir = dir.as_ref();
        let state = SandboxState::load(dir)?;
        let handler: Arc<dyn RuntimeHandler> = match state.handler.kind {
            RuntimeHandlerKind::VirtContainer => Arc::new(
                crate::virt::VirtContainer::restore(&state.config, dir, &state.handler).await?,
            ),
            RuntimeHandlerKind::LinuxContainer => {
                return Err(Error::Unimplemented {
                    handler: RuntimeHandlerKind::LinuxContainer,
                    operation: "restore",
                    reason: "each container's helper process ended it with the process that \
                             started it; `persist::cleanup` removes what is left"
                        .into(),
                })
            }
            RuntimeHandlerKind::WasmContainer => {
                return Err(Error::Unimplemented {
                    handler: RuntimeHandlerKind::WasmContainer,
                    operation: "restore",
                    reason: "its modules ran in the process that started it and ended with it; \
                             `persist::cleanup` removes what is left"
                        .into(),
                })
            }
        };
        let containers: BTreeMap<String, ContainerEntry> = state
            .containers
            .iter()
            .map(|(id, c)| {
                let mut processes = c.processes.clone();
                processes.entry(id.clone()).or_default();
                (
                    id.clone(),
                    ContainerEntry {
                        processes,
                        metadata: c.metadata.clone(),
                        started: c.started,
                        created: true,
                        hooks: c.hooks.clone(),
                    },
                )
            })
            .collect();
        let core = Core::new(
            state.config.clone(),
            state.dir.clone(),
            handler,
            containers,
            BootTimings::default(),
        );
        core.persist_or_warn();
        tracing::info!(sandbox_id = %core.id(), containers = state.containers.len(), "sandbox restored");
        Ok(Sandbox { core })
    }

    /// A handle on an existing container (one created before a [`Sandbox::restore`], or
    /// whose [`Container`] handle is gone). Its first process's output streams are
    /// re-attached: what the runtime still holds is read from where the previous reader
    /// stopped. Its stdin is not re-attached (a dropped writer would close the process's
    /// stdin). Each call attaches new readers; two readers of one stream at a time split its
    /// output. Unknown id: [`Error::NotFound`].
    pub fn container(&self, id: &str) -> Result<Container> {
        let init = self.process(id, id)?;
        Ok(Container {
            id: id.to_string(),
            sandbox: self.core.clone(),
            init,
        })
    }

    /// A handle on an existing process of a container: the first process (`exec_id` = the
    /// container id) or an exec. Output streams are re-attached as with
    /// [`Sandbox::container`]; stdin is not. Unknown ids: [`Error::NotFound`].
    pub fn process(&self, container_id: &str, exec_id: &str) -> Result<Process> {
        let stdio = self.core.known_process(container_id, exec_id)?;
        let streams = self
            .core
            .handler
            .reattach_output(container_id, exec_id, stdio.terminal);
        Ok(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            sandbox: self.core.clone(),
            stdin: None,
            stdout: streams.stdout,
            stderr: streams.stderr,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        })
    }
}
