//! `wasm_container`: WebAssembly modules (WASI preview 1) run on wasmtime in this process
//! (cargo feature `wasm`).
//!
//! A container's process is the module its spec's `process.args[0]` names: a file in the
//! container's rootfs, opened with kata-resource's [`open_in_root`](kata_resource::open_in_root)
//! (symlinks and `..` never lead out of the rootfs). The module gets `process.args` as its
//! arguments, `process.env`, the rootfs as its preopened directory `/` (read-only with
//! `root.readonly`) and its stdio through the same [`Process`](crate::Process) streams as a
//! VM's containers; its exit status is `proc_exit`'s code (0 when `_start` returns; a trap is
//! `SIGABRT`, written to its stderr).
//!
//! The rootfs is made available on the host by kata-resource's [`SandboxResources`] as for a
//! VM (a bind or overlay under `<sandbox>/shared`, containerd's rootfs mounts made and taken
//! off again), so bad input and a crashed owner leave nothing either.
//!
//! Each module runs on a thread of its own, never on the caller's async runtime; kill, pause,
//! the CPU quota and the memory limit are applied through wasmtime's epoch interruption and
//! its `ResourceLimiter` ([`control`]). `pause`/`resume` are implemented: the module's thread
//! waits at its next epoch deadline (a module blocked in a host call, such as reading stdin,
//! is paused once it returns to WebAssembly). Not supported, with a clear error: `exec` (a
//! WASI preview 1 module is one process: [`Error::Unimplemented`]), terminals' resize,
//! detaching (the modules run in this process and cannot be handed over), and so restoring.

mod control;
mod stdio;
mod task;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use kata_agent_client::{ContainerStats, ExitStatus, Signal};
use kata_hypervisor::SharedFs;
use kata_resource::{ResourcesState, SandboxResources};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};
use serde::{Deserialize, Serialize};

use crate::builder::SandboxConfig;
use crate::error::{Error, Result};
use crate::handler::blocking;
use crate::handler::{
    HandlerState, OomEvents, ProcessStreams, RootfsInput, RuntimeHandler, RuntimeHandlerKind,
    SpecBuilder, StdioConfig,
};
use crate::sandbox::BootTimings;
use control::Ticker;
use task::WasmTask;

/// The 9p `msize` the share is recorded with (no guest mounts it: the kind only selects a
/// share without a daemon).
const MSIZE: u32 = 8192;

/// What `state.json` keeps of a `wasm_container` sandbox: its host resources, for cleanup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WasmState {
    /// The rootfs mounts (`None` once released).
    resources: Option<ResourcesState>,
}

/// A sandbox whose containers are WebAssembly modules run in this process.
pub(crate) struct WasmContainer {
    id: String,
    engine: wasmtime::Engine,
    /// Advances the engine's epoch while a module runs; stopped with the handler.
    ticker: Ticker,
    /// `None` once released.
    resources: Arc<Mutex<Option<SandboxResources>>>,
    tasks: Mutex<BTreeMap<String, Arc<WasmTask>>>,
    /// The whole sandbox is paused.
    paused: AtomicBool,
}

impl std::fmt::Debug for WasmContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmContainer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Runs `f` on a new thread (not on the async workers, and outside any tokio runtime: WASI's
/// stream tasks then run on wasmtime-wasi's own runtime, whoever the caller is).
async fn on_thread<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wasm-prepare".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| Error::io(what, e))?;
    rx.await
        .map_err(|_| Error::io(what, std::io::Error::other("the thread panicked")))?
}

/// The engine of a sandbox: Cranelift, with epoch interruption for kill, pause and quota.
fn engine() -> Result<wasmtime::Engine> {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    wasmtime::Engine::new(&config).map_err(|e| {
        Error::io(
            "creating the wasmtime engine",
            std::io::Error::other(format!("{e:#}")),
        )
    })
}

impl WasmContainer {
    /// Starts the sandbox of `config` in `dir` (which exists): the engine, its epoch ticker and
    /// the host resources that hold the containers' rootfs.
    pub(crate) async fn start(
        config: &SandboxConfig,
        dir: &Path,
        t0: Instant,
    ) -> Result<(WasmContainer, BootTimings)> {
        let sandbox_dir = dir.to_path_buf();
        let resources = blocking("setting up the sandbox's host resources", move || {
            Ok(SandboxResources::new(
                &sandbox_dir,
                SharedFs::Virtio9p,
                MSIZE,
            )?)
        })
        .await?;
        let engine = engine()?;
        let ticker = Ticker::start(engine.clone(), &config.id)
            .map_err(|e| Error::io("starting the wasm epoch ticker", e))?;
        let ready = t0.elapsed();
        Ok((
            WasmContainer {
                id: config.id.clone(),
                engine,
                ticker,
                resources: Arc::new(Mutex::new(Some(resources))),
                tasks: Mutex::new(BTreeMap::new()),
                paused: AtomicBool::new(false),
            },
            BootTimings::without_vm(ready),
        ))
    }

    /// Cleans up after a `wasm_container` sandbox whose owner died: its modules died with it;
    /// the rootfs mounts are released from the saved state (or found without one).
    pub(crate) fn cleanup(dir: &Path, saved: Option<&HandlerState>) -> Result<Vec<u32>> {
        let state = saved.and_then(|s| serde_json::from_value::<WasmState>(s.state.clone()).ok());
        SandboxResources::cleanup(dir, state.as_ref().and_then(|s| s.resources.as_ref()))?;
        Ok(Vec::new())
    }

    /// The task of `container_id`.
    fn task(&self, container_id: &str) -> Result<Arc<WasmTask>> {
        self.tasks
            .lock()
            .unwrap()
            .get(container_id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "container",
                id: container_id.to_string(),
            })
    }

    /// `exec_id` must be the container's own process: a module has no other.
    fn only_process(&self, container_id: &str, exec_id: &str) -> Result<Arc<WasmTask>> {
        if exec_id != container_id {
            return Err(Error::NotFound {
                kind: "exec",
                id: format!("{exec_id} in container {container_id}"),
            });
        }
        self.task(container_id)
    }

    /// Releases a container's rootfs (off the async worker).
    async fn release(&self, container_id: &str) -> Result<()> {
        let (resources, id) = (self.resources.clone(), container_id.to_string());
        blocking("releasing a container's rootfs", move || {
            release_rootfs(&resources, &id)
        })
        .await
    }

    /// Stops every module and joins its thread (blocking, bounded by a tick each).
    fn stop_all(&self) {
        let tasks: Vec<Arc<WasmTask>> = std::mem::take(&mut *self.tasks.lock().unwrap())
            .into_values()
            .collect();
        for t in &tasks {
            t.control.kill(Signal::KILL);
        }
        for t in tasks {
            t.stop();
        }
    }

    fn unimplemented(operation: &'static str, reason: &str) -> Error {
        Error::Unimplemented {
            handler: RuntimeHandlerKind::WasmContainer,
            operation,
            reason: reason.to_string(),
        }
    }
}

/// Releases what container `id` holds on the host (nothing once everything is released).
fn release_rootfs(resources: &Mutex<Option<SandboxResources>>, id: &str) -> Result<()> {
    if let Some(r) = resources.lock().unwrap().as_mut() {
        r.remove_container(id)?;
    }
    Ok(())
}

/// Releases every host resource; later calls do nothing.
fn release_all(resources: &Mutex<Option<SandboxResources>>) -> Result<()> {
    match resources.lock().unwrap().take() {
        Some(r) => Ok(r.release()?),
        None => Ok(()),
    }
}

#[async_trait]
impl RuntimeHandler for WasmContainer {
    fn kind(&self) -> RuntimeHandlerKind {
        RuntimeHandlerKind::WasmContainer
    }

    async fn create_container(
        &self,
        container_id: &str,
        rootfs: RootfsInput,
        spec: &SpecBuilder<'_>,
    ) -> Result<()> {
        let host_root: PathBuf =
            crate::handler::host_rootfs(&self.resources, container_id, rootfs, self.kind()).await?;
        let prepared = async {
            let oci = spec(&host_root.display().to_string())?;
            let (engine, root) = (self.engine.clone(), host_root.clone());
            let paused = self.paused.load(Ordering::SeqCst);
            // A start function runs at instantiation: the ticker runs meanwhile.
            let _ticking = self.ticker.ticking();
            on_thread("preparing a wasm module", move || {
                task::prepare(&engine, &root, &oci, paused)
            })
            .await
        }
        .await;
        match prepared {
            Ok((task, streams)) => {
                task.set_streams(streams);
                self.tasks
                    .lock()
                    .unwrap()
                    .insert(container_id.to_string(), Arc::new(task));
                Ok(())
            }
            Err(e) => {
                if let Err(re) = self.release(container_id).await {
                    tracing::warn!(sandbox_id = %self.id, container_id, error = %re, "releasing the rootfs of a container that failed to create");
                }
                Err(e)
            }
        }
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        self.task(container_id)?.start(container_id, &self.ticker)
    }

    async fn exec_process(
        &self,
        _container_id: &str,
        _exec_id: &str,
        _process: &OciProcess,
    ) -> Result<()> {
        Err(Self::unimplemented(
            "exec",
            "a WASI preview 1 module is a single process: nothing can be started beside it",
        ))
    }

    async fn attach_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        stdio: StdioConfig,
    ) -> Result<ProcessStreams> {
        let mut streams = self.only_process(container_id, exec_id)?.take_streams();
        if !stdio.stdin {
            // Dropped: the module reads end of file.
            streams.stdin = None;
        }
        Ok(streams)
    }

    fn reattach_output(
        &self,
        container_id: &str,
        exec_id: &str,
        _terminal: bool,
    ) -> ProcessStreams {
        // The streams go to the first attach only: what was read is not kept.
        match self.only_process(container_id, exec_id) {
            Ok(t) => {
                let mut s = t.take_streams();
                s.stdin = None;
                s
            }
            Err(_) => ProcessStreams::default(),
        }
    }

    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: Signal,
    ) -> Result<()> {
        self.only_process(container_id, exec_id)?.signal(signal);
        Ok(())
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus> {
        Ok(self.only_process(container_id, exec_id)?.wait().await)
    }

    async fn resize_tty(
        &self,
        _container_id: &str,
        _exec_id: &str,
        _rows: u32,
        _columns: u32,
    ) -> Result<()> {
        Err(Self::unimplemented(
            "resize_tty",
            "a module has no terminal (WASI preview 1 has no terminal size)",
        ))
    }

    async fn container_pids(&self, container_id: &str) -> Result<Vec<u32>> {
        // A module is a thread of this process, not a process of its own.
        self.task(container_id)?;
        Ok(Vec::new())
    }

    async fn container_stats(&self, container_id: &str) -> Result<ContainerStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let t = self.task(container_id)?;
        let mut usage = kata_agent_client::MemoryData::default();
        usage.usage = t.memory.current.load(Relaxed);
        usage.max_usage = t.memory.max.load(Relaxed);
        usage.failcnt = t.memory.failcnt.load(Relaxed);
        usage.limit = t.memory.limit.load(Relaxed);
        let mut memory = kata_agent_client::MemoryStats::default();
        memory.usage = usage;
        let mut cpu = kata_agent_client::CpuStats::default();
        cpu.usage.total_ns = t.control.cpu_used_ns();
        cpu.usage.user_ns = cpu.usage.total_ns;
        let mut pids = kata_agent_client::PidsStats::default();
        pids.current = u64::from(t.running());
        let mut stats = ContainerStats::default();
        stats.cgroup.memory = Some(memory);
        stats.cgroup.cpu = Some(cpu);
        stats.cgroup.pids = Some(pids);
        Ok(stats)
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        self.task(container_id)?.control.set_paused(true);
        Ok(())
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        self.task(container_id)?.control.set_paused(false);
        Ok(())
    }

    async fn update_container(&self, container_id: &str, resources: &LinuxResources) -> Result<()> {
        let t = self.task(container_id)?;
        if let Some(m) = resources.memory() {
            t.memory.set_limit(m.limit());
        }
        if let Some(c) = resources.cpu() {
            t.control
                .set_cpu(control::CpuBudget::from_spec(c.quota(), c.period()));
        }
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        let task = self.tasks.lock().unwrap().remove(container_id);
        if let Some(t) = task {
            blocking("stopping a wasm module", move || {
                t.stop();
                Ok(())
            })
            .await?;
        }
        self.release(container_id).await
    }

    fn release_container(&self, container_id: &str) -> Result<()> {
        if let Some(t) = self.tasks.lock().unwrap().remove(container_id) {
            t.stop();
        }
        release_rootfs(&self.resources, container_id)
    }

    async fn pause_sandbox(&self) -> Result<()> {
        self.paused.store(true, Ordering::SeqCst);
        for t in self.tasks.lock().unwrap().values() {
            t.control.set_sandbox_paused(true);
        }
        Ok(())
    }

    async fn resume_sandbox(&self) -> Result<()> {
        self.paused.store(false, Ordering::SeqCst);
        for t in self.tasks.lock().unwrap().values() {
            t.control.set_sandbox_paused(false);
        }
        Ok(())
    }

    fn oom_events(&self) -> OomEvents {
        // A module past its memory limit gets -1 from memory.grow: nothing is OOM-killed.
        // (The sandbox ends the stream when it ends.)
        Box::pin(NoEvents)
    }

    async fn shutdown(&self) -> Result<()> {
        let this_tasks: Vec<Arc<WasmTask>> = std::mem::take(&mut *self.tasks.lock().unwrap())
            .into_values()
            .collect();
        blocking("stopping the wasm modules", move || {
            for t in &this_tasks {
                t.control.kill(Signal::KILL);
            }
            for t in this_tasks {
                t.stop();
            }
            Ok(())
        })
        .await?;
        let resources = self.resources.clone();
        blocking("releasing the sandbox's host resources", move || {
            release_all(&resources)
        })
        .await
    }

    fn stop_now(&self, why: &str) {
        tracing::warn!(sandbox_id = %self.id, "stopping the wasm modules now: {why}");
        self.stop_all();
        if let Err(e) = release_all(&self.resources) {
            tracing::warn!(sandbox_id = %self.id, error = %e, "releasing the sandbox's host resources");
        }
    }

    async fn detach(&self) -> Result<()> {
        Err(Self::unimplemented(
            "detach",
            "the modules run in this process and stop with it: a wasm_container sandbox \
             cannot be handed over",
        ))
    }

    fn state(&self) -> HandlerState {
        let resources = self.resources.lock().unwrap().as_ref().map(|r| r.state());
        HandlerState {
            kind: RuntimeHandlerKind::WasmContainer,
            state: serde_json::to_value(WasmState { resources }).unwrap_or_default(),
        }
    }

    fn host_pids(&self) -> Vec<u32> {
        Vec::new()
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("runtime", "wasmtime (in this process)".into()),
            ("wasi", "preview 1".into()),
        ]
    }

    async fn wait_dead(&self) -> String {
        // The modules run in this process: the sandbox dies only with it.
        std::future::pending().await
    }
}

/// No OOM events, ever.
struct NoEvents;

impl futures_core::Stream for NoEvents {
    type Item = String;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<String>> {
        std::task::Poll::Pending
    }
}
