//! The runtime-handler seam: how a sandbox runs its containers.
//!
//! A [`Sandbox`](crate::Sandbox) keeps what every kind of sandbox has — the table of containers
//! and their execs, the caller's metadata, `state.json` — and hands every operation on a
//! container to its [`RuntimeHandler`]. Kata names three handlers (`[runtime] name`):
//!
//! | handler | runs containers | here |
//! |---|---|---|
//! | `virt_container` | in a micro-VM, through the guest agent | `crate::virt::VirtContainer` |
//! | `linux_container` | on the host (libcontainer), no VM | `crate::linux::LinuxContainer`, cargo feature `linux` |
//! | `wasm_container` | WASI modules on the host (wasmtime) | `crate::wasm::WasmContainer`, cargo feature `wasm` |
//!
//! The handler is chosen by [`SandboxBuilder::runtime_handler`](crate::SandboxBuilder::runtime_handler)
//! or `[runtime] name` in the configuration (the shim's per runtime class: containerd's
//! runtime options name the configuration file). Above this trait nothing knows which one
//! runs. A handler this build was compiled without is refused naming the cargo feature.
//!
//! A new handler is one module next to `virt/` implementing this trait, one arm in
//! [`RuntimeHandlerKind`]'s start and restore, and its own [`HandlerState`]; neither the
//! [`Sandbox`](crate::Sandbox) nor the containerd shim changes.

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use futures_core::Stream;
use kata_agent_client::{ContainerStats, ExitStatus, Signal};
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{InputWriter, OutputReader};

/// The runtime handlers Kata names (`[runtime] name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RuntimeHandlerKind {
    /// Containers in a micro-VM, driven through the guest agent (Kata's default).
    #[default]
    VirtContainer,
    /// Containers on the host, without a VM, by libcontainer (cargo feature `linux`).
    LinuxContainer,
    /// WebAssembly (WASI preview 1) modules on the host, on wasmtime (cargo feature `wasm`).
    WasmContainer,
}

impl RuntimeHandlerKind {
    /// Kata's name for it (`virt_container`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeHandlerKind::VirtContainer => "virt_container",
            RuntimeHandlerKind::LinuxContainer => "linux_container",
            RuntimeHandlerKind::WasmContainer => "wasm_container",
        }
    }

    /// The handler `[runtime] name` selects. Unknown names and handlers this build does not
    /// have are errors naming the key and what is allowed (for a handler left out at build
    /// time, the cargo feature that brings it).
    pub fn from_runtime_name(name: &str) -> Result<Self> {
        let kind = match name {
            "" | "virt_container" => RuntimeHandlerKind::VirtContainer,
            "linux_container" => RuntimeHandlerKind::LinuxContainer,
            "wasm_container" => RuntimeHandlerKind::WasmContainer,
            other => {
                return Err(Error::invalid(
                    "runtime.name",
                    format!("\"{other}\": allowed virt_container, linux_container, wasm_container"),
                ))
            }
        };
        kind.check_built_in()?;
        Ok(kind)
    }

    /// `Ok` when this build has the handler; otherwise the error names what is missing: the
    /// cargo feature to build it with, or that it is not implemented yet.
    pub fn check_built_in(self) -> Result<()> {
        match self {
            RuntimeHandlerKind::VirtContainer => Ok(()),
            RuntimeHandlerKind::WasmContainer if cfg!(feature = "wasm") => Ok(()),
            RuntimeHandlerKind::WasmContainer => Err(Error::invalid(
                "runtime.name",
                "\"wasm_container\": this build has no wasm handler: build kata-sandbox with its \
                 cargo feature `wasm` (the shim: kata-shim's feature `wasm`)",
            )),
            RuntimeHandlerKind::LinuxContainer if cfg!(feature = "linux") => Ok(()),
            RuntimeHandlerKind::LinuxContainer => Err(Error::invalid(
                "runtime.name",
                "\"linux_container\": this build has no linux handler: build kata-sandbox with \
                 its cargo feature `linux` (the shim: kata-shim's feature `linux`)",
            )),
        }
    }
}

impl fmt::Display for RuntimeHandlerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a container's root filesystem comes from, once the sandbox has resolved it (an image
/// is unpacked by then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootfsInput {
    /// A host directory.
    Dir {
        /// The directory.
        path: PathBuf,
        /// Shared as it is (writes reach it), read-only, or through an overlay (an image's
        /// cached rootfs: writes go to a per-container upper directory).
        mode: RootfsMode,
    },
    /// An OCI bundle's rootfs (its spec's `root.path`, inside the bundle), with containerd's
    /// rootfs mounts to make there first.
    Bundle {
        /// The bundle directory.
        bundle: PathBuf,
        /// The spec's `root.path` (`None`: `rootfs`).
        root_path: Option<PathBuf>,
        /// containerd's mounts, bottom first (none: the directory is ready).
        mounts: Vec<kata_resource::RootfsMount>,
    },
}

impl RootfsInput {
    /// What kata-resource's `add_container` takes for it: the source, and how it is shared (a
    /// bundle's rootfs is read-write; the spec's `root.readonly` is applied later).
    pub(crate) fn into_source(self) -> (kata_resource::RootfsSource, RootfsMode) {
        match self {
            RootfsInput::Dir { path, mode } => (kata_resource::RootfsSource::Directory(path), mode),
            RootfsInput::Bundle {
                bundle,
                root_path,
                mounts,
            } => (
                kata_resource::RootfsSource::Bundle {
                    bundle,
                    root_path,
                    mounts,
                },
                RootfsMode::ReadWrite,
            ),
        }
    }
}

/// Runs blocking resource work off the async workers (every handler's host-side steps).
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io(what, std::io::Error::other(e)))?
}

/// The rootfs of a container a handler runs on the host (wasm, linux): made by `resources` as
/// a VM's would be, and where it is on the host. A block-device rootfs is a disk for a VM: it
/// is refused naming `handler`, and nothing of it is kept.
#[cfg(any(feature = "wasm", feature = "linux"))]
pub(crate) async fn host_rootfs(
    resources: &std::sync::Arc<std::sync::Mutex<Option<kata_resource::SandboxResources>>>,
    container_id: &str,
    rootfs: RootfsInput,
    handler: RuntimeHandlerKind,
) -> Result<PathBuf> {
    let (source, mode) = rootfs.into_source();
    let (resources, id) = (resources.clone(), container_id.to_string());
    blocking("setting up a container's rootfs", move || {
        let mut guard = resources.lock().unwrap();
        let r = guard.as_mut().ok_or(Error::ShutDown)?;
        r.add_container(&id, source, mode)?;
        match r.container_rootfs_host_path(&id) {
            Some(p) => Ok(p.to_path_buf()),
            None => {
                let _ = r.remove_container(&id);
                Err(Error::invalid(
                    "rootfs",
                    format!(
                        "a block-device rootfs needs a VM; the {handler} handler runs \
                         containers from a directory rootfs"
                    ),
                ))
            }
        }
    })
    .await
}

/// Builds a container's OCI spec once its `root.path` (as the runtime sees it) is known.
pub(crate) type SpecBuilder<'a> = dyn Fn(&str) -> Result<Spec> + Send + Sync + 'a;

pub(crate) use kata_resource::share_fs::RootfsMode;

/// How a process's standard streams are set up (kept in `state.json` as
/// [`ProcessState`](crate::persist::ProcessState)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StdioConfig {
    /// A terminal: stderr is merged into stdout.
    pub terminal: bool,
    /// Stdin stays open for the caller (otherwise it is closed at once).
    pub stdin: bool,
}

/// The caller's ends of a process's standard streams.
#[derive(Debug, Default)]
pub(crate) struct ProcessStreams {
    pub stdin: Option<InputWriter>,
    pub stdout: Option<OutputReader>,
    pub stderr: Option<OutputReader>,
}

/// Ids of containers OOM-killed in the sandbox, as they happen. Ends when the sandbox does.
pub type OomEvents = Pin<Box<dyn Stream<Item = String> + Send>>;

/// A handler's own part of `state.json`, opaque above it (the VM and host resources of a
/// `virt_container` sandbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerState {
    /// Which handler wrote it.
    pub kind: RuntimeHandlerKind,
    /// Its state, in its own format.
    pub(crate) state: serde_json::Value,
}

/// What [`Sandbox::rescan_network`](crate::Sandbox::rescan_network) changed: the pod
/// interfaces joined to the sandbox and those let go, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkChanges {
    /// Interfaces added to the namespace since boot (or the last rescan), now in the guest.
    pub added: Vec<String>,
    /// Interfaces gone from the namespace, whose NICs were unplugged and taps removed.
    pub removed: Vec<String>,
}

/// Runs the containers of one sandbox.
///
/// Ids are checked by the [`Sandbox`](crate::Sandbox) before they reach a handler (known
/// container, valid id); a handler still never builds a host path from one without going
/// through kata-resource's checked helpers.
#[async_trait]
pub(crate) trait RuntimeHandler: Send + Sync + fmt::Debug {
    /// Which handler this is.
    fn kind(&self) -> RuntimeHandlerKind;

    /// Creates a container (its first process is not started): makes its rootfs available,
    /// builds its spec with `spec` from `root.path` as the container runtime sees it, and
    /// creates it. On error nothing of it is left.
    async fn create_container(
        &self,
        container_id: &str,
        rootfs: RootfsInput,
        spec: &SpecBuilder<'_>,
    ) -> Result<()>;

    /// Starts the container's first process.
    async fn start_container(&self, container_id: &str) -> Result<()>;

    /// Starts another process in a running container.
    async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &OciProcess,
    ) -> Result<()>;

    /// Attaches the caller to a process's standard streams (new readers each call: output
    /// still buffered is read from where the previous reader stopped).
    async fn attach_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        stdio: StdioConfig,
    ) -> Result<ProcessStreams>;

    /// Attaches output readers only (a restored sandbox: stdin is not re-attached).
    fn reattach_output(&self, container_id: &str, exec_id: &str, terminal: bool) -> ProcessStreams;

    /// Sends a signal to a process.
    async fn signal_process(&self, container_id: &str, exec_id: &str, signal: Signal)
        -> Result<()>;

    /// Waits for a process to exit.
    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus>;

    /// Resizes a process's terminal.
    async fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()>;

    /// Pids of a container's processes (as its runtime sees them).
    async fn container_pids(&self, container_id: &str) -> Result<Vec<u32>>;

    /// A container's resource usage.
    async fn container_stats(&self, container_id: &str) -> Result<ContainerStats>;

    /// Freezes a container's processes.
    async fn pause_container(&self, container_id: &str) -> Result<()>;

    /// Thaws a paused container.
    async fn resume_container(&self, container_id: &str) -> Result<()>;

    /// Applies new resource limits to a container.
    async fn update_container(&self, container_id: &str, resources: &LinuxResources) -> Result<()>;

    /// Removes a container (its processes are killed) and releases what it holds on the host.
    /// The host side is released even when the runtime side fails; the first error is returned.
    async fn remove_container(&self, container_id: &str) -> Result<()>;

    /// Releases what [`create_container`](Self::create_container) set up on the host for a
    /// container whose create was abandoned half-way (the caller's future dropped).
    /// Synchronous: it runs in `Drop`. Nothing to release is not an error.
    fn release_container(&self, container_id: &str) -> Result<()>;

    /// Pauses the whole sandbox (a VM's vCPUs).
    async fn pause_sandbox(&self) -> Result<()>;

    /// Resumes a paused sandbox.
    async fn resume_sandbox(&self) -> Result<()>;

    /// OOM kills as they happen.
    fn oom_events(&self) -> OomEvents;

    /// Stops everything and releases every host resource. Idempotent.
    async fn shutdown(&self) -> Result<()>;

    /// Emergency stop without a runtime (`Drop`): everything is stopped and released before
    /// it returns (bounded waits).
    fn stop_now(&self, why: &str);

    /// Leaves the sandbox running without this handle, for [`restore`](crate::Sandbox::restore)
    /// to take it over (in this process or another).
    async fn detach(&self) -> Result<()>;

    /// Tells the guest of a sandbox taken over under a new id who it is now (the VM cache's
    /// hand-over, [`crate::sandbox::handover`]). A handler that cannot refuses it.
    async fn rekey(&self, _rekey: &crate::sandbox::handover::Rekey) -> Result<()> {
        Err(crate::Error::Unimplemented {
            handler: self.kind(),
            operation: "rekey",
            reason: "only a VM sandbox is handed over by the VM cache".into(),
        })
    }

    /// Joins the interfaces added to the pod's network namespace since boot to the sandbox
    /// (a VM: a tap each, hot-plugged as a NIC, the guest told its addresses and the routes)
    /// and lets go of those that are gone; says which. A handler without a pod network
    /// refuses it.
    async fn rescan_network(&self) -> Result<NetworkChanges> {
        Err(crate::Error::invalid(
            "network",
            format!(
                "the {} runtime handler cannot add interfaces after boot",
                self.kind()
            ),
        ))
    }

    /// The guest's own figures (`GetMetrics` for a VM), within `timeout`. A handler without
    /// a guest refuses it.
    async fn guest_metrics(
        &self,
        _timeout: std::time::Duration,
    ) -> Result<kata_agent_client::GuestMetrics> {
        Err(Error::Unimplemented {
            handler: self.kind(),
            operation: "guest metrics",
            reason: "it has no guest of its own".into(),
        })
    }

    /// The guest console's last `n` lines, oldest first (empty when there is none).
    fn console_tail(&self, _n: usize) -> Vec<String> {
        Vec::new()
    }

    /// A connection to the guest's debug console (see `crate::debug_console`). A handler
    /// without a guest refuses it.
    async fn debug_console(&self) -> Result<kata_agent_client::connect::GuestStream> {
        Err(Error::Unimplemented {
            handler: self.kind(),
            operation: "debug console",
            reason: "it has no guest of its own".into(),
        })
    }

    /// What `state.json` keeps of the handler.
    fn state(&self) -> HandlerState;

    /// The host processes that run the sandbox (for display and host cgroups; never killed
    /// by pid from above).
    fn host_pids(&self) -> Vec<u32>;

    /// Facts about the sandbox for display (`hypervisor`, `accelerator`, ...).
    fn describe(&self) -> Vec<(&'static str, String)>;

    /// Resolves when the sandbox's runtime has died on its own, with why (a VM that exited,
    /// an agent that failed its health checks); pending for as long as it is healthy. The
    /// [`Sandbox`](crate::Sandbox) polls it from its monitor until the sandbox is shut down,
    /// detached or dropped, then fails every waiter and tears the sandbox down. Once it has
    /// resolved, the handler's own waiters (output streams, stdin) end with an error too, and
    /// [`shutdown`](Self::shutdown) no longer asks the dead runtime for anything.
    async fn wait_dead(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_choose_a_handler_or_name_what_is_missing() {
        use RuntimeHandlerKind::*;
        for (name, kind) in [
            ("", VirtContainer),
            ("virt_container", VirtContainer),
            // The crate's tests build it with features `wasm` and `linux`.
            ("wasm_container", WasmContainer),
            ("linux_container", LinuxContainer),
        ] {
            assert_eq!(RuntimeHandlerKind::from_runtime_name(name).unwrap(), kind);
        }
        let e = RuntimeHandlerKind::from_runtime_name("runc")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"runc\"") && e.contains("wasm_container"),
            "{e}"
        );
    }
}
