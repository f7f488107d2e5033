//! `linux_container`: containers run directly on the host by youki's libcontainer (cargo
//! feature `linux`), with the same API as a VM's.
//!
//! Not a VM: the container shares the host's kernel. What isolates it is what runc gives a
//! container, from its spec: namespaces (PID, mount, IPC, UTS, network — a new one, or the
//! pod's `network_namespace`; user only if the spec asks), its cgroup, `pivot_root` into the
//! rootfs, the spec's capabilities, `noNewPrivileges`, seccomp profile (libseccomp), masked and
//! read-only paths. For hosts without KVM or for trusted workloads.
//!
//! libcontainer forks its caller, so it never runs in this process: each container's first
//! process and each exec has a helper process of its own (`kata-linux-container`,
//! [`helper`]), spawned per process and spoken to over a socket ([`protocol`], [`process`]):
//! the helper creates the process with libcontainer, is its parent (it waits for it and
//! signals it by pid without a reuse race), and serves start, signal, pause, resume, stats,
//! update, pids and delete. A helper whose socket closes (this process gone) kills its
//! process and removes the container.
//!
//! The rootfs is made available on the host by kata-resource's [`SandboxResources`] as for the
//! other handlers (a bind or overlay under `<sandbox>/shared`, containerd's rootfs mounts made
//! on the host and taken off again); libcontainer pivots into it. Cgroups: [`cgroups`].
//!
//! Not supported, with a clear error: terminals (`process.terminal`), detaching and so
//! restoring (the helpers end their containers with their owner), OOM events (none are
//! reported). A block-device rootfs needs a VM.

mod cgroups;
pub mod helper;
mod process;
pub mod protocol;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kata_agent_client::{ContainerStats, ExitStatus, Signal};
use kata_hypervisor::SharedFs;
use kata_resource::{ResourcesState, SandboxResources};
use oci_spec::runtime::{
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Process as OciProcess, Spec,
};
use serde::{Deserialize, Serialize};

use crate::builder::SandboxConfig;
use crate::error::{Error, Result};
use crate::handler::blocking;
use crate::handler::{
    HandlerState, OomEvents, ProcessStreams, RootfsInput, RuntimeHandler, RuntimeHandlerKind,
    SpecBuilder, StdioConfig,
};
use crate::sandbox::BootTimings;
use cgroups::Hierarchies;
use process::HelperProcess;
use protocol::{Answer, Request};

/// The helper program's name.
pub const HELPER: &str = "kata-linux-container";

/// The environment variable that names the helper program (else: next to this program, then
/// `$PATH`).
pub const HELPER_ENV: &str = "KATA_RS_LINUX_HELPER";

/// The 9p `msize` the share is recorded with (nothing mounts it: the kind only selects a share
/// without a daemon).
const MSIZE: u32 = 8192;

/// What `state.json` keeps of a `linux_container` sandbox, for a cleanup after its owner died.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LinuxState {
    /// The rootfs mounts (`None` once released).
    resources: Option<ResourcesState>,
    /// Each container's cgroup (relative to the hierarchies' roots).
    containers: BTreeMap<String, PathBuf>,
    /// Cgroups made for the containers' cgroups (ancestors), removed once empty.
    made_cgroups: BTreeSet<PathBuf>,
}

/// One container: its first process, its execs, where it lives.
#[derive(Debug)]
struct LinuxTask {
    init: HelperProcess,
    execs: Mutex<BTreeMap<String, Arc<HelperProcess>>>,
    bundle: PathBuf,
}

/// A sandbox whose containers run on the host, each by libcontainer through a helper process.
pub(crate) struct LinuxContainer {
    id: String,
    /// libcontainer's state root (`<sandbox>/linux`).
    state_root: PathBuf,
    /// Where the containers' bundles (`config.json`, exec process files) are written.
    bundles: PathBuf,
    helper: PathBuf,
    /// The pod's network namespace, joined by containers that ask for a new one.
    netns: Option<PathBuf>,
    hierarchies: Hierarchies,
    resources: Arc<Mutex<Option<SandboxResources>>>,
    tasks: Mutex<BTreeMap<String, Arc<LinuxTask>>>,
    cgroups: Mutex<LinuxState>,
}

impl std::fmt::Debug for LinuxContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxContainer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The helper program: `$KATA_RS_LINUX_HELPER`, else next to this program (or one directory
/// up: a test binary in `deps/`), else on `$PATH`.
pub(crate) fn helper_program() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(HELPER_ENV) {
        return Ok(PathBuf::from(p));
    }
    let beside = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join(HELPER))
            .find(|p| p.is_file())
    });
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(HELPER))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        Error::invalid(
            "runtime.name",
            format!(
                "\"linux_container\" needs its helper program `{HELPER}`, which is not next to \
                 this program nor on $PATH: build it (`cargo build -p kata-sandbox --features \
                 linux --bin {HELPER}`) and install it beside the shim, or name it with \
                 ${HELPER_ENV}"
            ),
        )
    })
}

impl LinuxContainer {
    /// Starts the sandbox of `config` in `dir` (which exists): the host resources that hold
    /// the containers' rootfs, and libcontainer's state root.
    pub(crate) async fn start(
        config: &SandboxConfig,
        dir: &Path,
        t0: Instant,
    ) -> Result<(LinuxContainer, BootTimings)> {
        let helper = helper_program()?;
        let state_root = dir.join("linux");
        let bundles = dir.join("linux-bundles");
        for d in [&state_root, &bundles] {
            std::fs::create_dir(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let sandbox_dir = dir.to_path_buf();
        let resources = blocking("setting up the sandbox's host resources", move || {
            Ok(SandboxResources::new(
                &sandbox_dir,
                SharedFs::Virtio9p,
                MSIZE,
            )?)
        })
        .await?;
        let ready = t0.elapsed();
        Ok((
            LinuxContainer {
                id: config.id.clone(),
                state_root,
                bundles,
                helper,
                netns: config.network_namespace.clone(),
                hierarchies: Hierarchies::of_host(),
                resources: Arc::new(Mutex::new(Some(resources))),
                tasks: Mutex::new(BTreeMap::new()),
                cgroups: Mutex::new(LinuxState::default()),
            },
            BootTimings::without_vm(ready),
        ))
    }

    /// Cleans up after a `linux_container` sandbox whose owner died: the helpers killed their
    /// containers when it did; what is left in the containers' cgroups is killed, the cgroups,
    /// libcontainer's state and the rootfs mounts removed.
    pub(crate) fn cleanup(dir: &Path, saved: Option<&HandlerState>) -> Result<Vec<u32>> {
        let state = saved
            .and_then(|s| serde_json::from_value::<LinuxState>(s.state.clone()).ok())
            .unwrap_or_default();
        let host = Hierarchies::of_host();
        for rel in state.containers.values() {
            cgroups::kill_and_remove(rel, &host);
        }
        cgroups::remove_empty(&state.made_cgroups, &host);
        for d in ["linux", "linux-bundles"] {
            let _ = std::fs::remove_dir_all(dir.join(d));
        }
        SandboxResources::cleanup(dir, state.resources.as_ref())?;
        Ok(Vec::new())
    }

    fn task(&self, container_id: &str) -> Result<Arc<LinuxTask>> {
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

    /// Runs `f` on the process `exec_id` of `container_id` (the container's own when equal).
    async fn with_process<T>(
        &self,
        container_id: &str,
        exec_id: &str,
        f: impl AsyncFnOnce(&HelperProcess) -> T,
    ) -> Result<T> {
        let task = self.task(container_id)?;
        if exec_id == container_id {
            return Ok(f(&task.init).await);
        }
        let exec = task.execs.lock().unwrap().get(exec_id).cloned();
        match exec {
            Some(p) => Ok(f(&p).await),
            None => Err(Error::NotFound {
                kind: "exec",
                id: format!("{exec_id} in container {container_id}"),
            }),
        }
    }

    fn unimplemented(operation: &'static str, reason: &str) -> Error {
        Error::Unimplemented {
            handler: RuntimeHandlerKind::LinuxContainer,
            operation,
            reason: reason.to_string(),
        }
    }

    /// The spec as libcontainer gets it: the container's cgroup, the pod's network namespace.
    fn amend(&self, container_id: &str, spec: &mut Spec) -> Result<PathBuf> {
        if spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
        {
            return Err(Self::unimplemented(
                "terminal",
                "process.terminal: the linux_container handler has no terminals yet; run the \
                 process without one",
            ));
        }
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        let rel =
            cgroups::container_cgroup(&self.id, container_id, linux.cgroups_path().as_deref())?;
        if cgroups::exists(&rel, &self.hierarchies) {
            return Err(Error::invalid(
                "linux.cgroupsPath",
                format!(
                    "/{} exists already: a container gets a cgroup of its own (its processes \
                     are killed with it), give a new path or none",
                    rel.display()
                ),
            ));
        }
        if let Some(r) = linux.resources() {
            cgroups::check_controllers(r, &self.hierarchies)?;
        }
        linux.set_cgroups_path(Some(Path::new("/").join(&rel)));
        if let Some(netns) = &self.netns {
            let ns = linux.namespaces_mut().get_or_insert_with(Vec::new);
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network || n.path().is_some());
            if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network) {
                ns.push(
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Network)
                        .path(netns.clone())
                        .build()
                        .map_err(|e| Error::invalid("linux.namespaces", e.to_string()))?,
                );
            }
        }
        Ok(rel)
    }

    /// Removes a container: its execs and first process killed, its cgroup, state, bundle and
    /// rootfs gone. The first error is returned; the rest is still released.
    async fn remove(&self, container_id: &str) -> Result<()> {
        let task = self.tasks.lock().unwrap().remove(container_id);
        let mut first = None;
        if let Some(t) = task {
            let execs: Vec<Arc<HelperProcess>> = std::mem::take(&mut *t.execs.lock().unwrap())
                .into_values()
                .collect();
            for e in execs {
                if let Err(err) = e.delete().await {
                    first.get_or_insert(err);
                }
            }
            if let Err(err) = t.init.delete().await {
                first.get_or_insert(err);
            }
            let _ = std::fs::remove_dir_all(&t.bundle);
        }
        if let Err(err) = self.release_host(container_id) {
            first.get_or_insert(err);
        }
        first.map_or(Ok(()), Err)
    }

    /// Releases a container's cgroups left and rootfs (synchronous: also from `Drop`).
    fn release_host(&self, container_id: &str) -> Result<()> {
        {
            let mut st = self.cgroups.lock().unwrap();
            if let Some(rel) = st.containers.remove(container_id) {
                // Gone with the container normally; a helper that died leaves it.
                cgroups::kill_and_remove(&rel, &self.hierarchies);
            }
            st.made_cgroups = cgroups::remove_empty(&st.made_cgroups, &self.hierarchies);
        }
        if let Some(r) = self.resources.lock().unwrap().as_mut() {
            r.remove_container(container_id)?;
        }
        Ok(())
    }

    /// Ends every container without a runtime (bounded waits) and releases everything.
    fn stop_all_now(&self) {
        let tasks: Vec<(String, Arc<LinuxTask>)> = std::mem::take(&mut *self.tasks.lock().unwrap())
            .into_iter()
            .collect();
        // Dropping a helper's socket makes it kill its process and remove the container.
        let ids: Vec<String> = tasks.iter().map(|(id, _)| id.clone()).collect();
        drop(tasks);
        let deadline = Instant::now() + Duration::from_secs(5);
        for id in ids {
            let dir = self.state_root.join(&id);
            while dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = self.release_host(&id) {
                tracing::warn!(sandbox_id = %self.id, container_id = %id, error = %e, "releasing a container");
            }
        }
        self.release_sandbox();
    }

    /// Releases the sandbox's own host resources (the last step of shutdown).
    fn release_sandbox(&self) {
        {
            let mut st = self.cgroups.lock().unwrap();
            for rel in std::mem::take(&mut st.containers).values() {
                cgroups::kill_and_remove(rel, &self.hierarchies);
            }
            st.made_cgroups = cgroups::remove_empty(&st.made_cgroups, &self.hierarchies);
            if !st.made_cgroups.is_empty() {
                tracing::warn!(sandbox_id = %self.id, left = ?st.made_cgroups, "cgroups not removed (still in use)");
            }
        }
        let _ = std::fs::remove_dir_all(&self.bundles);
        let _ = std::fs::remove_dir_all(&self.state_root);
        if let Some(r) = self.resources.lock().unwrap().take() {
            if let Err(e) = r.release() {
                tracing::warn!(sandbox_id = %self.id, error = %e, "releasing the sandbox's host resources");
            }
        }
    }

    /// Creates the container once its rootfs is on the host at `host_root`.
    async fn create_on(
        &self,
        container_id: &str,
        host_root: &Path,
        spec: &SpecBuilder<'_>,
    ) -> Result<()> {
        let mut oci = spec(&host_root.display().to_string())?;
        let rel = self.amend(container_id, &mut oci)?;
        let bundle = kata_resource::safe_child(&self.bundles, container_id)?;
        std::fs::create_dir(&bundle)
            .map_err(|e| Error::io(format!("creating {}", bundle.display()), e))?;
        let mut made = cgroups::missing_ancestors(&rel, &self.hierarchies);
        let own = Path::new(cgroups::DEFAULT_PARENT).join(&self.id);
        if rel.starts_with(&own) {
            // The default parents are every sandbox's: the last one out removes them, whoever
            // made them.
            made.extend([own, PathBuf::from(cgroups::DEFAULT_PARENT)]);
        }
        {
            let mut st = self.cgroups.lock().unwrap();
            st.containers.insert(container_id.to_string(), rel.clone());
            st.made_cgroups.extend(made);
        }
        let created = async {
            oci.save(bundle.join("config.json"))
                .map_err(|e| Error::invalid("spec", format!("writing config.json: {e}")))?;
            HelperProcess::spawn(
                format!("container {container_id}"),
                &self.helper,
                &[
                    OsStr::new("init"),
                    self.state_root.as_os_str(),
                    OsStr::new(container_id),
                    bundle.as_os_str(),
                    rel.as_os_str(),
                ],
            )
            .await
        }
        .await;
        match created {
            Ok(init) => {
                self.tasks.lock().unwrap().insert(
                    container_id.to_string(),
                    Arc::new(LinuxTask {
                        init,
                        execs: Mutex::new(BTreeMap::new()),
                        bundle,
                    }),
                );
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }
}

#[async_trait]
impl RuntimeHandler for LinuxContainer {
    fn kind(&self) -> RuntimeHandlerKind {
        RuntimeHandlerKind::LinuxContainer
    }

    async fn create_container(
        &self,
        container_id: &str,
        rootfs: RootfsInput,
        spec: &SpecBuilder<'_>,
    ) -> Result<()> {
        let host_root: PathBuf =
            crate::handler::host_rootfs(&self.resources, container_id, rootfs, self.kind()).await?;
        match self.create_on(container_id, &host_root, spec).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(re) = self.release_host(container_id) {
                    tracing::warn!(sandbox_id = %self.id, container_id, error = %re, "releasing a container that failed to create");
                }
                Err(e)
            }
        }
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        self.task(container_id)?
            .init
            .request(&Request::Start)
            .await
            .map(|_| ())
    }

    async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &OciProcess,
    ) -> Result<()> {
        if process.terminal().unwrap_or(false) {
            return Err(Self::unimplemented(
                "terminal",
                "process.terminal: the linux_container handler has no terminals yet; run the \
                 process without one",
            ));
        }
        let task = self.task(container_id)?;
        if task.init.exited() {
            return Err(Error::invalid(
                "exec",
                format!("container {container_id} has exited: nothing to exec into"),
            ));
        }
        let file = kata_resource::safe_child(&task.bundle, &format!("exec-{exec_id}.json"))?;
        let json =
            serde_json::to_vec(process).map_err(|e| Error::invalid("process", e.to_string()))?;
        std::fs::write(&file, json)
            .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
        let rel = self
            .cgroups
            .lock()
            .unwrap()
            .containers
            .get(container_id)
            .cloned()
            .unwrap_or_default();
        let spawned = HelperProcess::spawn(
            format!("exec {exec_id} in container {container_id}"),
            &self.helper,
            &[
                OsStr::new("exec"),
                self.state_root.as_os_str(),
                OsStr::new(container_id),
                file.as_os_str(),
                rel.as_os_str(),
            ],
        )
        .await;
        let _ = std::fs::remove_file(&file);
        task.execs
            .lock()
            .unwrap()
            .insert(exec_id.to_string(), Arc::new(spawned?));
        Ok(())
    }

    async fn attach_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        stdio: StdioConfig,
    ) -> Result<ProcessStreams> {
        let mut streams = self
            .with_process(container_id, exec_id, async |p| p.take_streams())
            .await?;
        if !stdio.stdin {
            // Dropped: the process reads end of file.
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
        let Ok(task) = self.task(container_id) else {
            return ProcessStreams::default();
        };
        let mut s = if exec_id == container_id {
            task.init.take_streams()
        } else {
            match task.execs.lock().unwrap().get(exec_id) {
                Some(p) => p.take_streams(),
                None => ProcessStreams::default(),
            }
        };
        s.stdin = None;
        s
    }

    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: Signal,
    ) -> Result<()> {
        self.with_process(container_id, exec_id, async |p| p.signal(signal).await)
            .await?
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus> {
        self.with_process(container_id, exec_id, async |p| p.wait().await)
            .await
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
            "its processes have no terminal (process.terminal is refused)",
        ))
    }

    async fn container_pids(&self, container_id: &str) -> Result<Vec<u32>> {
        match self
            .task(container_id)?
            .init
            .request(&Request::Pids)
            .await?
        {
            Answer::Pids(p) => Ok(p),
            other => Err(Error::io(
                "reading a container's pids",
                std::io::Error::other(format!("unexpected answer {other:?}")),
            )),
        }
    }

    async fn container_stats(&self, container_id: &str) -> Result<ContainerStats> {
        match self
            .task(container_id)?
            .init
            .request(&Request::Stats)
            .await?
        {
            Answer::Stats(f) => Ok(stats(&f)),
            other => Err(Error::io(
                "reading a container's stats",
                std::io::Error::other(format!("unexpected answer {other:?}")),
            )),
        }
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        self.task(container_id)?
            .init
            .request(&Request::Pause)
            .await
            .map(|_| ())
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        self.task(container_id)?
            .init
            .request(&Request::Resume)
            .await
            .map(|_| ())
    }

    async fn update_container(&self, container_id: &str, resources: &LinuxResources) -> Result<()> {
        cgroups::check_controllers(resources, &self.hierarchies)?;
        self.task(container_id)?
            .init
            .request(&Request::Update {
                resources: Box::new(resources.clone()),
            })
            .await
            .map(|_| ())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        self.remove(container_id).await
    }

    fn release_container(&self, container_id: &str) -> Result<()> {
        let task = self.tasks.lock().unwrap().remove(container_id);
        if let Some(t) = task {
            let bundle = t.bundle.clone();
            // Its helper kills the process and removes the container when its socket closes.
            drop(t);
            let dir = self.state_root.join(container_id);
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir_all(bundle);
        }
        self.release_host(container_id)
    }

    async fn pause_sandbox(&self) -> Result<()> {
        let tasks: Vec<Arc<LinuxTask>> = self.tasks.lock().unwrap().values().cloned().collect();
        for t in tasks.iter().filter(|t| !t.init.exited()) {
            t.init.request(&Request::Pause).await?;
        }
        Ok(())
    }

    async fn resume_sandbox(&self) -> Result<()> {
        let tasks: Vec<Arc<LinuxTask>> = self.tasks.lock().unwrap().values().cloned().collect();
        for t in tasks.iter().filter(|t| !t.init.exited()) {
            t.init.request(&Request::Resume).await?;
        }
        Ok(())
    }

    fn oom_events(&self) -> OomEvents {
        // Not watched yet (memory.oom_control / memory.events): none are reported.
        Box::pin(NoEvents)
    }

    async fn shutdown(&self) -> Result<()> {
        let ids: Vec<String> = self.tasks.lock().unwrap().keys().cloned().collect();
        let mut first = None;
        for id in ids {
            if let Err(e) = self.remove(&id).await {
                first.get_or_insert(e);
            }
        }
        self.release_sandbox();
        first.map_or(Ok(()), Err)
    }

    fn stop_now(&self, why: &str) {
        tracing::warn!(sandbox_id = %self.id, "stopping the linux containers now: {why}");
        self.stop_all_now();
    }

    async fn detach(&self) -> Result<()> {
        Err(Self::unimplemented(
            "detach",
            "each container's helper process ends it when its owner goes: a linux_container \
             sandbox cannot be handed over",
        ))
    }

    fn state(&self) -> HandlerState {
        let mut state = self.cgroups.lock().unwrap().clone();
        state.resources = self.resources.lock().unwrap().as_ref().map(|r| r.state());
        HandlerState {
            kind: RuntimeHandlerKind::LinuxContainer,
            state: serde_json::to_value(state).unwrap_or_default(),
        }
    }

    fn host_pids(&self) -> Vec<u32> {
        self.tasks
            .lock()
            .unwrap()
            .values()
            .filter(|t| !t.init.exited())
            .map(|t| t.init.pid)
            .collect()
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("runtime", "libcontainer (youki) on the host: no VM".into()),
            ("helper", self.helper.display().to_string()),
        ]
    }

    async fn wait_dead(&self) -> String {
        // The containers run on this host, each owned by its helper: no runtime to lose.
        std::future::pending().await
    }
}

/// The protocol's cgroup figures as the crate's stats.
fn stats(f: &protocol::CgroupFigures) -> ContainerStats {
    let data = |d: &[u64; 4]| {
        let mut m = kata_agent_client::MemoryData::default();
        (m.usage, m.max_usage, m.failcnt, m.limit) = (d[0], d[1], d[2], d[3]);
        m
    };
    let mut cpu = kata_agent_client::CpuStats::default();
    cpu.usage.total_ns = f.cpu_total_ns;
    cpu.usage.user_ns = f.cpu_user_ns;
    cpu.usage.kernel_ns = f.cpu_kernel_ns;
    cpu.usage.per_cpu_ns = f.cpu_per_cpu_ns.clone();
    cpu.throttling.periods = f.cpu_throttling[0];
    cpu.throttling.throttled_periods = f.cpu_throttling[1];
    cpu.throttling.throttled_time_ns = f.cpu_throttling[2];
    let mut memory = kata_agent_client::MemoryStats::default();
    memory.usage = data(&f.memory);
    memory.swap = data(&f.memory_swap);
    memory.kernel = data(&f.memory_kernel);
    memory.cache = f.memory_cache;
    memory.use_hierarchy = f.memory_hierarchy;
    memory.stats = f.memory_stat.clone();
    let mut pids = kata_agent_client::PidsStats::default();
    (pids.current, pids.limit) = (f.pids[0], f.pids[1]);
    let mut s = ContainerStats::default();
    s.cgroup.cpu = Some(cpu);
    s.cgroup.memory = Some(memory);
    s.cgroup.pids = Some(pids);
    for (size, h) in &f.hugetlb {
        let mut e = kata_agent_client::HugetlbStats::default();
        (e.usage, e.max_usage, e.failcnt) = (h[0], h[1], h[2]);
        s.cgroup.hugetlb.insert(size.clone(), e);
    }
    s
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
