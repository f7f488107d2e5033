//! [`Sandbox`]: one sandbox and the containers in it, whatever runs them.
//!
//! The sandbox keeps the container table (ids, execs, stream setup, the caller's metadata) and
//! `state.json`; every operation on a container goes to its [`RuntimeHandler`]
//! (`virt_container`: a micro-VM through its agent). [`Container`] and [`Process`] handles hold
//! the sandbox's core, so every operation is available on a handle and by id alike.
//!
//! Liveness: a monitor task waits on the handler's [`RuntimeHandler::wait_dead`]. When the
//! sandbox dies on its own (its VM exited, its agent stopped answering), every call in flight
//! and every later one fails with [`Error::SandboxDead`], and the sandbox is torn down (its
//! runtime stopped, every host resource released, its directory removed) without waiting for
//! the owner. OCI hooks of a container's spec run on the host ([`hooks`]).

pub mod handover;
pub(crate) mod hooks;
mod restore;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use kata_agent_client::{ContainerStats, ExitStatus, Signal};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};
use tokio::sync::watch;

use crate::builder::{SandboxBuilder, SandboxConfig};
use crate::container::{Container, Output, Process, DEFAULT_OUTPUT_LIMIT};
use crate::error::{Error, Result};
use crate::handler::{
    OomEvents, RootfsInput, RootfsMode, RuntimeHandler, RuntimeHandlerKind, StdioConfig,
};
use crate::persist::{ContainerState, SandboxState};
use crate::spec::{ContainerSpec, ProcessSpec, RootfsSource};
use hooks::{HookStatus, HostHooks};

pub use crate::boot_timings::BootTimings;

/// One container of the sandbox, as the sandbox tracks it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerEntry {
    /// Every process by exec id (the first process under the container id): how its streams
    /// were set up.
    pub processes: BTreeMap<String, StdioConfig>,
    /// The caller's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Its first process was started.
    pub started: bool,
    /// Created in the runtime (not only reserved).
    pub created: bool,
    /// Its host hooks still to run (poststart, poststop).
    pub hooks: Option<HostHooks>,
}

impl ContainerEntry {
    /// The next free `exec-<n>` id.
    fn next_exec_id(&self) -> String {
        let n = self
            .processes
            .keys()
            .filter_map(|e| e.strip_prefix("exec-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        format!("exec-{}", n + 1)
    }
}

/// How long a call that lost its connection to the runtime waits for the monitor to report
/// the sandbox's death (the usual cause) before it returns the connection error itself.
const DEATH_GRACE: Duration = Duration::from_secs(2);

/// Whether a sandbox runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Life {
    /// It runs.
    Alive,
    /// It died on its own, for this reason; it is being (or has been) torn down.
    Dead(String),
    /// It was shut down, detached or dropped by its owner.
    Closed,
}

/// What a [`Sandbox`] and its [`Container`] and [`Process`] handles share.
pub(crate) struct Core {
    pub(crate) config: SandboxConfig,
    pub(crate) dir: PathBuf,
    pub(crate) handler: Arc<dyn RuntimeHandler>,
    pub(crate) containers: Mutex<BTreeMap<String, ContainerEntry>>,
    pub(crate) shut_down: AtomicBool,
    pub(crate) timings: BootTimings,
    /// Serialises `state.json` writes (and the shut-down flag against them).
    pub(crate) persist_lock: Mutex<()>,
    /// Alive, dead (why) or closed: every waiter watches it.
    pub(crate) life: watch::Sender<Life>,
    /// Held while the sandbox is torn down; `true` once it has been.
    pub(crate) torn_down: tokio::sync::Mutex<bool>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.config.id)
            .field("dir", &self.dir)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

/// A sandbox, ready to run containers.
///
/// Start one with [`Sandbox::builder`]; end it with [`Sandbox::shutdown`]. A sandbox dropped
/// without `shutdown` stops at once (its VM killed, everything it created removed) and logs a
/// warning.
#[derive(Debug)]
pub struct Sandbox {
    pub(crate) core: Arc<Core>,
}

impl Sandbox {
    /// A builder with Kata's defaults.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::new()
    }

    /// Starts a sandbox from a finished configuration ([`SandboxBuilder::finish`]). On error
    /// nothing is left: no process, mount or directory.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox> {
        // enable_tracing: the exporter runs before the first span (crate::telemetry).
        crate::telemetry::activate(&config)?;
        let span = tracing::info_span!("sandbox.start", sandbox_id = %config.id);
        tracing::Instrument::instrument(Self::start_in_span(config), span).await
    }

    async fn start_in_span(config: SandboxConfig) -> Result<Sandbox> {
        let t0 = Instant::now();
        for setting in config.inert_settings() {
            tracing::warn!(sandbox_id = %config.id, "{setting}: the setting has no effect in this kata-rs build");
        }
        let dir = config.dir();
        if dir.exists() {
            return Err(Error::AlreadyExists {
                kind: "sandbox",
                id: config.id.clone(),
            });
        }
        create_private_dir(&dir)?;
        let mut guard = DirGuard(Some(dir.clone()));
        let (handler, timings) = match config.handler {
            RuntimeHandlerKind::VirtContainer => {
                let (h, timings) = crate::virt::VirtContainer::start(&config, &dir, t0).await?;
                (Arc::new(h) as Arc<dyn RuntimeHandler>, timings)
            }
            #[cfg(feature = "wasm")]
            RuntimeHandlerKind::WasmContainer => {
                let (h, timings) = crate::wasm::WasmContainer::start(&config, &dir, t0).await?;
                (Arc::new(h) as Arc<dyn RuntimeHandler>, timings)
            }
            #[cfg(feature = "linux")]
            RuntimeHandlerKind::LinuxContainer => {
                let (h, timings) = crate::linux::LinuxContainer::start(&config, &dir, t0).await?;
                (Arc::new(h) as Arc<dyn RuntimeHandler>, timings)
            }
            // A handler whose cargo feature is off.
            #[allow(unreachable_patterns)]
            other => {
                other.check_built_in()?;
                return Err(Error::invalid(
                    "runtime.name",
                    format!("{other} is not built in"),
                ));
            }
        };
        guard.0 = None;
        let sandbox = Sandbox {
            core: Core::new(config, dir, handler, BTreeMap::new(), timings),
        };
        tracing::info!(sandbox_id = %sandbox.id(), ready = ?timings.ready, "sandbox ready");
        crate::crash::crash_point(crate::crash::CrashStep::Boot, Some(sandbox.dir()));
        // Dropping the sandbox on error stops it: a sandbox nobody could find is not kept.
        sandbox.core.persist()?;
        Ok(sandbox)
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.core.config.id
    }

    /// The sandbox directory on the host (`<root>/<id>`).
    pub fn dir(&self) -> &Path {
        &self.core.dir
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SandboxConfig {
        &self.core.config
    }

    /// How long each start-up step took (zero for a restored sandbox).
    pub fn boot_timings(&self) -> BootTimings {
        self.core.timings
    }

    /// The host processes that run the sandbox (the VMM and its helpers for a VM), for
    /// display and host cgroups. Empty when the VMM runs inside this process.
    pub fn host_pids(&self) -> Vec<u32> {
        self.core.handler.host_pids()
    }

    /// The host pid containerd shows as a task's pid (as Kata does: the VMM's; this process's
    /// own when the sandbox has no process of its own).
    pub fn pid(&self) -> u32 {
        self.host_pids()
            .first()
            .copied()
            .unwrap_or_else(std::process::id)
    }

    /// Facts for display: `handler`, `hypervisor`, `accelerator`, ...
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut facts = vec![("handler", self.core.handler.kind().to_string())];
        facts.extend(self.core.handler.describe());
        facts
    }

    /// Creates a container (its rootfs made available, its process not yet started).
    #[tracing::instrument(name = "sandbox.create_container", skip_all, fields(sandbox_id = %self.id(), container_id = spec.id.as_deref().unwrap_or("")))]
    pub async fn create_container(&self, spec: ContainerSpec) -> Result<Container> {
        // Boxed: the creation's future is tens of KiB, and a caller's future holding it by
        // value (several awaits deep) outgrew a 2 MiB tokio worker stack in debug builds.
        Box::pin(self.core.create_container(&self.core, spec)).await
    }

    /// Runs a container to completion and returns its output; the container is deleted.
    pub async fn run(&self, spec: ContainerSpec) -> Result<Output> {
        self.create_container(spec).await?.output().await
    }

    /// The state `persist` keeps in `<dir>/state.json`, rewritten atomically on every change
    /// (see [`crate::persist`]).
    pub fn state(&self) -> SandboxState {
        self.core.state()
    }

    /// The ids of the sandbox's containers.
    pub fn container_ids(&self) -> Vec<String> {
        self.core
            .containers
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// A container's metadata (given with [`ContainerSpec::metadata`]).
    pub fn container_metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        self.core.container_metadata(id)
    }

    /// Sets one metadata key of a container after it was created (persisted at once). Give
    /// what is known at creation with [`ContainerSpec::metadata`] instead: it is written
    /// with the container, in one `state.json` write.
    pub fn set_container_metadata(&self, id: &str, key: &str, value: &str) -> Result<()> {
        self.core.entry(id)?;
        if let Some(e) = self.core.containers.lock().unwrap().get_mut(id) {
            e.metadata.insert(key.to_string(), value.to_string());
        }
        self.core.persist()
    }

    /// Starts a container's first process.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.core.start_container(id).await
    }

    /// Sends a signal to a process (`exec_id` = the container id for its first process).
    pub async fn signal_process(&self, id: &str, exec_id: &str, signal: Signal) -> Result<()> {
        self.core.signal_process(id, exec_id, signal).await
    }

    /// Waits for a process (`exec_id` = the container id for its first process).
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        self.core.wait_process(id, exec_id).await
    }

    /// Removes a container (its processes are killed) and releases what it holds on the host.
    /// Unknown id: [`Error::NotFound`].
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        self.core.delete_container(id).await
    }

    /// The pids of a container's processes, as its runtime sees them.
    pub async fn container_pids(&self, id: &str) -> Result<Vec<u32>> {
        self.core.container_pids(id).await
    }

    /// Freezes every process of a container.
    pub async fn pause_container(&self, id: &str) -> Result<()> {
        self.core.pause_container(id).await
    }

    /// Thaws a paused container.
    pub async fn resume_container(&self, id: &str) -> Result<()> {
        self.core.resume_container(id).await
    }

    /// A container's resource usage.
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        self.core.container_stats(id).await
    }

    /// Changes a container's resource limits (CPU, memory, pids).
    pub async fn update_container(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.core.update_container(id, resources).await
    }

    /// Pauses the whole sandbox (a VM's vCPUs stop).
    pub async fn pause(&self) -> Result<()> {
        self.core.alive()?;
        self.core.guarded(self.core.handler.pause_sandbox()).await
    }

    /// Joins interfaces added to the pod's network namespace since the sandbox started (a
    /// CNI plugin run again, a second network attached): each gets a tap joined to it by tc
    /// filters, hot-plugged into the VM as a NIC, and the guest is told its addresses and the
    /// pod's routes and neighbours. Interfaces gone from the namespace have their NICs
    /// unplugged (`device_del`, the guest's release) and their taps removed. Says which were
    /// added and removed. A sandbox without a pod network namespace refuses it, naming
    /// `network`.
    pub async fn rescan_network(&self) -> Result<crate::NetworkChanges> {
        self.core.alive()?;
        let added = self.core.guarded(self.core.handler.rescan_network()).await;
        self.core.persist_or_warn();
        added
    }

    /// Resumes a paused sandbox.
    pub async fn resume(&self) -> Result<()> {
        self.core.alive()?;
        self.core.guarded(self.core.handler.resume_sandbox()).await
    }

    /// Ids of containers OOM-killed, as it happens; the stream ends with the sandbox (shut
    /// down, detached, dropped or dead).
    pub fn oom_events(&self) -> OomEvents {
        let mut life = self.core.life.subscribe();
        let ended: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let _ = life.wait_for(|l| *l != Life::Alive).await;
        });
        Box::pin(UntilEnded {
            events: Some(self.core.handler.oom_events()),
            ended,
        })
    }

    /// Why the sandbox died, if it did: its VM exited or its agent failed its health checks
    /// (see the crate's README). A dead sandbox has been, or is being, torn down; every call on
    /// it fails with [`Error::SandboxDead`].
    pub fn death(&self) -> Option<String> {
        match &*self.core.life.borrow() {
            Life::Dead(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Resolves with why the sandbox died when it does (see [`Sandbox::death`]), or with
    /// `None` once it is shut down, detached or dropped instead. It holds no reference to the
    /// sandbox: a task may await it without keeping the sandbox alive.
    pub fn on_death(&self) -> impl Future<Output = Option<String>> + Send + 'static {
        let mut life = self.core.life.subscribe();
        async move {
            match life.wait_for(|l| *l != Life::Alive).await {
                Ok(l) => match &*l {
                    Life::Dead(why) => Some(why.clone()),
                    _ => None,
                },
                Err(_) => None,
            }
        }
    }

    /// Stops the sandbox and removes everything it created: its containers, the VM, every
    /// mount and the sandbox directory. Idempotent; it takes `&self` so a sandbox shared
    /// between tasks (`Arc<Sandbox>`) can be shut down by any of them. Later calls on the
    /// sandbox or its containers fail with [`Error::ShutDown`].
    ///
    /// A sandbox that died is torn down by itself; `shutdown` then waits for that to finish
    /// and succeeds.
    pub async fn shutdown(&self) -> Result<()> {
        let core = &self.core;
        {
            let _guard = core.persist_lock.lock().unwrap();
            core.shut_down.store(true, Ordering::SeqCst);
            core.life.send_if_modified(|l| {
                let alive = *l == Life::Alive;
                if alive {
                    *l = Life::Closed;
                }
                alive
            });
        }
        let span = tracing::info_span!("sandbox.shutdown", sandbox_id = %core.config.id);
        let result = tracing::Instrument::instrument(core.tear_down(), span).await;
        // enable_tracing: this sandbox's spans are sent before shutdown returns.
        crate::telemetry::flush().await;
        result
    }
}

impl Drop for Sandbox {
    /// The owner handle is gone without [`Sandbox::shutdown`]: stop at once and release what
    /// the sandbox holds on the host, even while [`Container`] handles still exist.
    fn drop(&mut self) {
        let core = &self.core;
        {
            let _guard = core.persist_lock.lock().unwrap();
            if core.shut_down.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        core.life.send_replace(Life::Closed);
        tracing::warn!(sandbox_id = %core.config.id, "sandbox dropped without shutdown(): stopping it now");
        core.handler.stop_now("dropped without shutdown()");
        core.containers.lock().unwrap().clear();
        core.remove_dir();
    }
}

/// OOM events that end when the sandbox does.
struct UntilEnded {
    events: Option<OomEvents>,
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Stream for UntilEnded {
    type Item = String;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        if self.ended.as_mut().poll(cx).is_ready() {
            self.events = None;
        }
        match self.events.as_mut() {
            Some(events) => {
                let next = events.as_mut().poll_next(cx);
                if let Poll::Ready(None) = next {
                    self.events = None;
                }
                next
            }
            None => Poll::Ready(None),
        }
    }
}

impl Core {
    /// The core of a sandbox that runs (started or restored), with its monitor started.
    pub(crate) fn new(
        config: SandboxConfig,
        dir: PathBuf,
        handler: Arc<dyn RuntimeHandler>,
        containers: BTreeMap<String, ContainerEntry>,
        timings: BootTimings,
    ) -> Arc<Core> {
        let core = Arc::new(Core {
            dir,
            handler,
            containers: Mutex::new(containers),
            shut_down: AtomicBool::new(false),
            timings,
            persist_lock: Mutex::new(()),
            config,
            life: watch::channel(Life::Alive).0,
            torn_down: tokio::sync::Mutex::new(false),
        });
        core.spawn_monitor();
        core
    }

    pub(crate) fn id(&self) -> &str {
        &self.config.id
    }

    /// Watches the handler for the sandbox's death until its owner closes it.
    pub(crate) fn spawn_monitor(self: &Arc<Self>) {
        let handler = self.handler.clone();
        let core = Arc::downgrade(self);
        let mut life = self.life.subscribe();
        tokio::spawn(async move {
            let why = tokio::select! {
                biased;
                _ = life.wait_for(|l| *l != Life::Alive) => return,
                why = handler.wait_dead() => why,
            };
            drop(handler);
            if let Some(core) = core.upgrade() {
                core.died(why).await;
            }
        });
    }

    /// The sandbox died on its own: every waiter fails, and it is torn down.
    async fn died(&self, why: String) {
        {
            let _guard = self.persist_lock.lock().unwrap();
            if self.shut_down.swap(true, Ordering::SeqCst) {
                // Its owner is already shutting it down, detaching or dropping it.
                return;
            }
            self.life.send_replace(Life::Dead(why.clone()));
        }
        tracing::error!(sandbox_id = %self.id(), reason = %why, "the sandbox died: failing its waiters and tearing it down");
        if let Err(e) = self.tear_down().await {
            tracing::warn!(sandbox_id = %self.id(), error = %e, "tearing down a dead sandbox");
        }
    }

    /// Stops the runtime, runs what is left of the containers' poststop hooks, releases
    /// everything and removes the directory; once (later calls wait for the first).
    async fn tear_down(&self) -> Result<()> {
        let mut done = self.torn_down.lock().await;
        if *done {
            return Ok(());
        }
        *done = true;
        let stopped = self.handler.shutdown().await;
        let left: Vec<(String, ContainerEntry)> =
            std::mem::take(&mut *self.containers.lock().unwrap())
                .into_iter()
                .filter(|(_, e)| e.created)
                .collect();
        for (id, entry) in left {
            self.run_poststop(&id, entry.hooks.as_ref()).await;
        }
        self.remove_dir();
        stopped?;
        tracing::info!(sandbox_id = %self.id(), "sandbox shut down");
        Ok(())
    }

    /// `Ok` while the sandbox runs.
    pub(crate) fn alive(&self) -> Result<()> {
        if let Life::Dead(reason) = &*self.life.borrow() {
            return Err(Error::SandboxDead {
                reason: reason.clone(),
            });
        }
        if self.shut_down.load(Ordering::SeqCst) {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Runs a call to the handler unless the sandbox dies or is closed first: then the call is
    /// abandoned and its caller gets [`Error::SandboxDead`] (or [`Error::ShutDown`]) at once.
    ///
    /// A call that fails because the connection to the runtime closed is usually the first
    /// sign of a death the monitor is about to report (the agent's socket closes as the VM
    /// dies): the monitor is given [`DEATH_GRACE`] to say so, so the caller learns why.
    async fn guarded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        let mut life = self.life.subscribe();
        let r = tokio::select! {
            r = call => r,
            _ = life.wait_for(|l| *l != Life::Alive) => {
                return Err(self.alive().err().unwrap_or(Error::ShutDown))
            }
        };
        let e = match r {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let connection_lost = matches!(&e, Error::Agent(a) if a.is_connection_closed());
        if connection_lost {
            let _ = tokio::time::timeout(DEATH_GRACE, life.wait_for(|l| *l != Life::Alive)).await;
        }
        Err(match self.alive() {
            Err(ended) => ended,
            Ok(()) => e,
        })
    }

    /// The host pid hooks are told: the sandbox's (the VMM's), else this process's.
    fn hook_pid(&self) -> u32 {
        self.handler
            .host_pids()
            .first()
            .copied()
            .unwrap_or_else(std::process::id)
    }

    async fn run_poststop(&self, id: &str, hooks: Option<&HostHooks>) {
        let Some(h) = hooks.filter(|h| !h.poststop.is_empty()) else {
            return;
        };
        let state = hooks::state_json(
            id,
            HookStatus::Stopped,
            self.hook_pid(),
            &h.oci_version,
            &h.bundle,
            &h.annotations,
        );
        hooks::run_all_logged("poststop", &h.poststop, &state, id).await;
    }

    /// The entry of a container, or [`Error::NotFound`] (also for a container whose create
    /// has not finished).
    fn entry(&self, id: &str) -> Result<ContainerEntry> {
        self.alive()?;
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .filter(|e| e.created)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "container",
                id: id.to_string(),
            })
    }

    /// Checks that `exec_id` is a process of container `id`.
    fn known_process(&self, id: &str, exec_id: &str) -> Result<StdioConfig> {
        let entry = self.entry(id)?;
        entry
            .processes
            .get(exec_id)
            .copied()
            .ok_or_else(|| Error::NotFound {
                kind: "exec",
                id: format!("{exec_id} in container {id}"),
            })
    }

    async fn create_container(&self, this: &Arc<Core>, spec: ContainerSpec) -> Result<Container> {
        self.alive()?;
        let id = spec.id.clone().unwrap_or_else(random_id);
        kata_resource::validate_container_id(&id)
            .map_err(|e| Error::invalid("container id", e.to_string()))?;
        {
            let mut c = self.containers.lock().unwrap();
            if c.contains_key(&id) {
                return Err(Error::AlreadyExists {
                    kind: "container",
                    id,
                });
            }
            c.insert(id.clone(), ContainerEntry::default());
        }
        // Released on error, and also if this future is dropped half-way (a caller's timeout):
        // the id and the rootfs must not stay reserved until shutdown.
        let mut reservation = Reservation {
            core: self,
            id: Some(id.clone()),
        };
        let created = self.create_container_inner(this, &id, spec).await;
        if created.is_ok() {
            reservation.id = None;
        }
        created
    }

    async fn create_container_inner(
        &self,
        this: &Arc<Core>,
        id: &str,
        mut spec: ContainerSpec,
    ) -> Result<Container> {
        // Hooks are checked before anything of the container exists.
        let hook_bundle = match &spec.rootfs {
            RootfsSource::Bundle { bundle, .. } => bundle.clone(),
            RootfsSource::Dir(d) => d.clone(),
            RootfsSource::Image { path, .. } => path.clone(),
        };
        let planned = hooks::plan(spec.oci.as_ref(), &hook_bundle)?;
        let (rootfs, image_process) = match spec.rootfs.clone() {
            RootfsSource::Dir(d) => {
                if !d.is_dir() {
                    return Err(Error::invalid(
                        "rootfs",
                        format!("{} is not a directory", d.display()),
                    ));
                }
                (
                    RootfsInput::Dir {
                        path: d,
                        mode: RootfsMode::ReadWrite,
                    },
                    None,
                )
            }
            RootfsSource::Bundle { bundle, mounts } => {
                let root_path = spec
                    .oci
                    .as_ref()
                    .and_then(|s| s.root().as_ref())
                    .map(|r| r.path().clone());
                (
                    RootfsInput::Bundle {
                        bundle,
                        root_path,
                        mounts,
                    },
                    None,
                )
            }
            RootfsSource::Image { path, reference } => {
                let cache = self.config.image_cache.clone();
                let (dir, process) = tokio::task::spawn_blocking(move || {
                    crate::image::unpack(&path, reference.as_deref(), &cache)
                })
                .await
                .map_err(|e| Error::io("unpacking image", std::io::Error::other(e)))??;
                if !spec.process.args.is_empty() {
                    // Docker semantics: arguments replace the image's Cmd, not its Entrypoint.
                    let mut args = process.entrypoint.clone();
                    args.append(&mut spec.process.args);
                    spec.process.args = args;
                }
                // An unpacked image is a shared cache: containers write to an overlay on it.
                (
                    RootfsInput::Dir {
                        path: dir,
                        mode: RootfsMode::Overlay,
                    },
                    Some(process.oci),
                )
            }
        };
        let stdio = StdioConfig {
            terminal: spec.process.terminal,
            stdin: spec.process.stdin,
        };
        let runtime = &self.config.runtime;
        let build = |guest_root: &str| spec.to_oci(id, guest_root, image_process.clone(), runtime);
        self.guarded(self.handler.create_container(id, rootfs, &build))
            .await?;
        let ready = async {
            if !planned.create.is_empty() {
                let oci_version = spec.oci.as_ref().map(|s| s.version().clone());
                let annotations = spec
                    .oci
                    .as_ref()
                    .and_then(|s| s.annotations().clone())
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let state = hooks::state_json(
                    id,
                    HookStatus::Creating,
                    self.hook_pid(),
                    oci_version.as_deref().unwrap_or_default(),
                    &hook_bundle,
                    &annotations,
                );
                self.guarded(hooks::run_all(&planned.create, &state))
                    .await?;
            }
            self.guarded(self.handler.attach_stdio(id, id, stdio)).await
        };
        let streams = match ready.await {
            Ok(s) => s,
            Err(e) => {
                // The runtime has the container: remove it there too (this also releases
                // the host side).
                if let Err(re) = self.handler.remove_container(id).await {
                    tracing::warn!(sandbox_id = %self.id(), container_id = %id, error = %re, "removing a container whose hooks or streams failed");
                }
                return Err(e);
            }
        };
        if let Some(e) = self.containers.lock().unwrap().get_mut(id) {
            e.processes.insert(id.to_string(), stdio);
            e.metadata = spec.metadata.clone();
            e.created = true;
            e.hooks = planned.later;
        }
        if let Err(e) = self.persist() {
            // A container `state.json` does not name would be missed by a cleanup after a
            // crash: it is removed again and Create fails (a full state directory).
            if let Err(re) = self.handler.remove_container(id).await {
                tracing::warn!(sandbox_id = %self.id(), container_id = %id, error = %re, "removing a container whose state could not be written");
            }
            return Err(e);
        }
        tracing::debug!(sandbox_id = %self.id(), container_id = %id, "container created");
        Ok(Container {
            id: id.to_string(),
            sandbox: this.clone(),
            init: Process {
                container_id: id.to_string(),
                exec_id: id.to_string(),
                sandbox: this.clone(),
                stdin: streams.stdin,
                stdout: streams.stdout,
                stderr: streams.stderr,
                output_limit: spec.process.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
            },
        })
    }

    #[tracing::instrument(name = "sandbox.start_container", skip_all, fields(sandbox_id = %self.config.id, container_id = id))]
    pub(crate) async fn start_container(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        self.guarded(self.handler.start_container(id)).await?;
        if let Some(h) = entry.hooks.as_ref().filter(|h| !h.poststart.is_empty()) {
            let state = hooks::state_json(
                id,
                HookStatus::Running,
                self.hook_pid(),
                &h.oci_version,
                &h.bundle,
                &h.annotations,
            );
            hooks::run_all_logged("poststart", &h.poststart, &state, id).await;
        }
        let changed = match self.containers.lock().unwrap().get_mut(id) {
            Some(e) if !e.started => {
                e.started = true;
                true
            }
            _ => false,
        };
        if changed {
            // Kata's answer: the start stands, and its caller hears that it is not recorded.
            self.persist()?;
        }
        Ok(())
    }

    pub(crate) async fn exec(
        &self,
        this: &Arc<Core>,
        container_id: &str,
        process: ProcessSpec,
    ) -> Result<Process> {
        self.entry(container_id)?;
        let stdio = StdioConfig {
            terminal: process.terminal,
            stdin: process.stdin,
        };
        let exec_id = {
            let mut c = self.containers.lock().unwrap();
            let entry = c.get_mut(container_id).ok_or_else(|| Error::NotFound {
                kind: "container",
                id: container_id.to_string(),
            })?;
            let exec_id = entry.next_exec_id();
            entry.processes.insert(exec_id.clone(), stdio);
            exec_id
        };
        let oci = process.to_oci(OciProcess::default());
        let started = async {
            let oci = oci?;
            self.handler
                .exec_process(container_id, &exec_id, &oci)
                .await?;
            self.handler
                .attach_stdio(container_id, &exec_id, stdio)
                .await
        };
        let started = self.guarded(started).await;
        let started = match started {
            Ok(streams) => match self.persist() {
                Ok(()) => Ok(streams),
                Err(e) => {
                    // Not recorded, so not kept: nobody gets a handle to wait for it. Killed
                    // and reaped, so the runtime forgets it and its exec id is free again.
                    let _ = self
                        .handler
                        .signal_process(container_id, &exec_id, Signal::KILL)
                        .await;
                    let reaped = self.handler.wait_process(container_id, &exec_id);
                    let _ = tokio::time::timeout(Duration::from_secs(5), reaped).await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        match started {
            Ok(streams) => Ok(Process {
                container_id: container_id.to_string(),
                exec_id,
                sandbox: this.clone(),
                stdin: streams.stdin,
                stdout: streams.stdout,
                stderr: streams.stderr,
                output_limit: process.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
            }),
            Err(e) => {
                if let Some(entry) = self.containers.lock().unwrap().get_mut(container_id) {
                    entry.processes.remove(&exec_id);
                }
                Err(e)
            }
        }
    }

    pub(crate) async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: Signal,
    ) -> Result<()> {
        self.known_process(id, exec_id)?;
        self.guarded(self.handler.signal_process(id, exec_id, signal))
            .await
    }

    pub(crate) async fn wait_process(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        self.known_process(id, exec_id)?;
        self.guarded(self.handler.wait_process(id, exec_id)).await
    }

    pub(crate) async fn resize_tty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()> {
        self.known_process(id, exec_id)?;
        self.guarded(self.handler.resize_tty(id, exec_id, rows, columns))
            .await
    }

    pub(crate) async fn container_pids(&self, id: &str) -> Result<Vec<u32>> {
        self.entry(id)?;
        self.guarded(self.handler.container_pids(id)).await
    }

    pub(crate) async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        self.entry(id)?;
        self.guarded(self.handler.container_stats(id)).await
    }

    pub(crate) async fn pause_container(&self, id: &str) -> Result<()> {
        self.entry(id)?;
        self.guarded(self.handler.pause_container(id)).await
    }

    pub(crate) async fn resume_container(&self, id: &str) -> Result<()> {
        self.entry(id)?;
        self.guarded(self.handler.resume_container(id)).await
    }

    pub(crate) async fn update_container(&self, id: &str, r: &LinuxResources) -> Result<()> {
        self.entry(id)?;
        self.guarded(self.handler.update_container(id, r)).await
    }

    pub(crate) fn container_metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.entry(id)?.metadata)
    }

    pub(crate) async fn delete_container(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let removed = self.guarded(self.handler.remove_container(id)).await;
        self.containers.lock().unwrap().remove(id);
        self.persist_or_warn();
        self.run_poststop(id, entry.hooks.as_ref()).await;
        removed
    }

    /// The state `persist` writes, derived from the live sandbox.
    pub(crate) fn state(&self) -> SandboxState {
        let containers = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.created)
            .map(|(id, e)| {
                (
                    id.clone(),
                    ContainerState {
                        processes: e.processes.clone(),
                        metadata: e.metadata.clone(),
                        started: e.started,
                        hooks: e.hooks.clone(),
                    },
                )
            })
            .collect();
        SandboxState {
            version: crate::persist::STATE_VERSION,
            id: self.config.id.clone(),
            dir: self.dir.clone(),
            config: self.config.clone(),
            handler: self.handler.state(),
            containers,
        }
    }

    /// Writes `state.json` (atomically) unless the sandbox is shut down.
    pub(crate) fn persist(&self) -> Result<()> {
        let _guard = self.persist_lock.lock().unwrap();
        if self.shut_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.state().store()
    }

    pub(crate) fn persist_or_warn(&self) {
        if let Err(e) = self.persist() {
            tracing::warn!(sandbox_id = %self.id(), error = %e, "cannot write the sandbox state");
        }
    }

    /// Removes `state.json` and the (then empty) sandbox directory.
    fn remove_dir(&self) {
        {
            let _guard = self.persist_lock.lock().unwrap();
            let _ = std::fs::remove_file(SandboxState::path(&self.dir));
        }
        // Non-recursive on purpose: if anything is still mounted below, it must not be deleted
        // through the mount.
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove sandbox directory");
            }
        }
    }
}

/// A container id reserved while its creation runs; released on drop unless disarmed.
struct Reservation<'a> {
    core: &'a Core,
    id: Option<String>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let created = self
                .core
                .containers
                .lock()
                .unwrap()
                .remove(&id)
                .is_some_and(|e| e.created);
            if created {
                return;
            }
            if let Err(e) = self.core.handler.release_container(&id) {
                tracing::warn!(sandbox_id = %self.core.id(), container_id = %id, error = %e, "releasing a container that failed to create");
            }
        }
    }
}

/// Removes a sandbox directory on drop unless disarmed (start-up error paths). The handler
/// has removed what it made inside by then.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_file(SandboxState::path(&d));
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Creates the sandbox directory, readable by root only.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating sandbox directory {}", dir.display()), e))
}

/// A random 128-bit id in hex, like container ids elsewhere.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
