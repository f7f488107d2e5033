//! [`Sandbox`]: one micro-VM with its agent, and the containers in it.

mod restore;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kata_agent_client::protocol::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    ExecProcessRequest, ListProcessesRequest, PauseContainerRequest, RemoveContainerRequest,
    ResumeContainerRequest, StatsContainerRequest, StatsContainerResponse, Storage,
    UpdateContainerRequest,
};
use kata_agent_client::{AgentAddress, AgentClient, ConnectOptions, OutputStream};
use kata_hypervisor::SharedFs;
use kata_hypervisor::{DeviceConfig, Hypervisor, ShareFsDevice, VsockAddress};
use kata_resource::share_fs::{RootfsMode, ShareFs, SharedRootfs};
use oci_spec::runtime::Process as OciProcess;

use crate::builder::SandboxBuilder;
use crate::container::{Container, Output, Process};
use crate::error::{Error, Result};
use crate::io;
use crate::persist::{
    ContainerState, ProcessState, ResourceState, SandboxConfigState, SandboxState,
};
use crate::spec::{ContainerSpec, ProcessSpec, RootfsSource};

/// Time taken by each step of [`SandboxBuilder::build`], for callers that report start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootTimings {
    /// Until the hypervisor's start returned (the VMM runs the guest).
    pub vm_started: Duration,
    /// Until the agent answered (the guest has booted).
    pub agent_connected: Duration,
    /// Until `CreateSandbox` returned (the sandbox is ready).
    pub ready: Duration,
}

pub(crate) struct ContainerEntry {
    rootfs: Option<SharedRootfs>,
    execs: u64,
    exec_ids: Vec<String>,
    metadata: BTreeMap<String, String>,
    processes: BTreeMap<String, ProcessState>,
}

/// The state shared by a [`Sandbox`] and its [`Container`]s.
pub(crate) struct Inner {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    pub(crate) vm: Arc<dyn Hypervisor>,
    pub(crate) agent: AgentClient,
    share: Mutex<Option<ShareFs>>,
    containers: Mutex<HashMap<String, ContainerEntry>>,
    image_cache: PathBuf,
    shut_down: AtomicBool,
    timings: BootTimings,
    /// What `state.json` keeps of the configuration, for [`Sandbox::restore`].
    saved_config: SandboxConfigState,
    /// Serialises `state.json` writes.
    persist_lock: Mutex<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("vm", &self.vm.name())
            .finish_non_exhaustive()
    }
}

/// A micro-VM running the kata-rs agent, ready to run containers.
///
/// Build one with [`Sandbox::builder`]; end it with [`Sandbox::shutdown`]. A sandbox dropped
/// without `shutdown` kills its VM, removes what it created and logs a warning.
#[derive(Debug)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Sandbox {
    /// A builder with Kata's defaults.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::new()
    }

    /// A builder configured from a Kata configuration file (`[hypervisor.qemu]`,
    /// `[agent.kata]`, `[runtime]`).
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<SandboxBuilder> {
        SandboxBuilder::from_config_file(path)
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The sandbox directory on the host (`<root>/<id>`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The hypervisor running the VM.
    pub fn hypervisor(&self) -> &Arc<dyn Hypervisor> {
        &self.inner.vm
    }

    /// The agent client (for calls this API does not wrap).
    pub fn agent(&self) -> &AgentClient {
        &self.inner.agent
    }

    /// How long each start-up step took.
    pub fn boot_timings(&self) -> BootTimings {
        self.inner.timings
    }

    /// Creates a container (its rootfs shared into the guest, its process not yet started).
    pub async fn create_container(&self, spec: ContainerSpec) -> Result<Container> {
        self.inner.create_container(&self.inner, spec).await
    }

    /// Runs a container to completion and returns its output; the container is deleted.
    pub async fn run(&self, spec: ContainerSpec) -> Result<Output> {
        self.create_container(spec).await?.output().await
    }

    /// The state `persist` keeps in `<dir>/state.json`, rewritten atomically on every change
    /// (see [`crate::persist`]).
    pub fn state(&self) -> SandboxState {
        self.inner.state()
    }

    /// Attaches a key and value to a container, kept in `state.json` with it (a containerd
    /// shim keeps its bundle path and task status there).
    pub fn set_container_metadata(&self, container_id: &str, key: &str, value: &str) -> Result<()> {
        self.inner.set_metadata(container_id, key, value)
    }

    /// Removes a container by id (its processes are killed) and releases its rootfs: for
    /// callers that keep ids rather than [`Container`] handles. Unknown id: [`Error::NotFound`].
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        self.inner.known(id)?;
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
            timeout: 10,
            ..Default::default()
        };
        let removed = self.inner.agent.remove_container(&req).await;
        let released = self.inner.release_container(id);
        removed?;
        released
    }

    /// The pids (in the guest) of a container's processes.
    pub async fn container_pids(&self, id: &str) -> Result<Vec<u32>> {
        self.inner.known(id)?;
        let req = ListProcessesRequest {
            container_id: id.to_string(),
            format: "json".into(),
            ..Default::default()
        };
        let resp = self.inner.agent.list_processes(&req).await?;
        serde_json::from_slice(&resp.process_list).map_err(|e| {
            Error::io(
                format!("decoding the process list of container {id}"),
                std::io::Error::other(e),
            )
        })
    }

    /// Freezes every process of a container.
    pub async fn pause_container(&self, id: &str) -> Result<()> {
        self.inner.known(id)?;
        let req = PauseContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        Ok(self.inner.agent.pause_container(&req).await?)
    }

    /// Thaws a paused container.
    pub async fn resume_container(&self, id: &str) -> Result<()> {
        self.inner.known(id)?;
        let req = ResumeContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        Ok(self.inner.agent.resume_container(&req).await?)
    }

    /// A container's cgroup statistics, as the agent reports them.
    pub async fn container_stats(&self, id: &str) -> Result<StatsContainerResponse> {
        self.inner.known(id)?;
        let req = StatsContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        Ok(self.inner.agent.stats_container(&req).await?)
    }

    /// Changes a container's resources (CPU, memory, pids limits).
    pub async fn update_container(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        self.inner.known(id)?;
        let req = UpdateContainerRequest {
            container_id: id.to_string(),
            resources: protobuf::MessageField::some(kata_agent_client::spec::resources_to_grpc(
                resources,
            )?),
            ..Default::default()
        };
        Ok(self.inner.agent.update_container(&req).await?)
    }

    /// Stops the VM and removes everything the sandbox created: the agent is asked to remove
    /// every container (DestroySandbox), then the VM is stopped and the containers' rootfs
    /// and the sandbox directory are released on the host. Idempotent; it takes `&self` so a
    /// sandbox shared between tasks (`Arc<Sandbox>`) can be shut down by any of them. Later
    /// calls on the sandbox or its containers fail.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let req = DestroySandboxRequest::default();
        match tokio::time::timeout(Duration::from_secs(5), inner.agent.destroy_sandbox(&req)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(sandbox_id = %inner.id, error = %e, "DestroySandbox failed; stopping the VM anyway")
            }
            Err(_) => {
                tracing::warn!(sandbox_id = %inner.id, "DestroySandbox did not answer in 5 s; stopping the VM anyway")
            }
        }
        let stopped = inner.vm.stop().await;
        inner.release_all();
        stopped?;
        tracing::info!(sandbox_id = %inner.id, "sandbox shut down");
        Ok(())
    }
}

impl Inner {
    /// Boots a sandbox from a finished builder.
    pub(crate) async fn boot(b: SandboxBuilder) -> Result<Sandbox> {
        let t0 = Instant::now();
        b.validate()?;
        let id = b.id.clone().unwrap_or_else(random_id);
        kata_resource::validate_container_id(&id)
            .map_err(|e| Error::invalid("id", e.to_string()))?;
        let dir = b.root_dir.join(&id);
        if dir.exists() {
            return Err(Error::AlreadyExists {
                kind: "sandbox",
                id,
            });
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating sandbox directory {}", dir.display()), e))?;
        let mut guard = DirGuard(Some(dir.clone()));

        let config = b.config.clone();
        let kind = match config.shared_fs.as_str() {
            "virtio-9p" => SharedFs::Virtio9p,
            "virtio-fs" => SharedFs::VirtioFs,
            other => {
                return Err(Error::invalid(
                    "shared_fs",
                    format!(
                    "`{other}`: kata-sandbox needs a shared filesystem (virtio-9p or virtio-fs)"
                ),
                ))
            }
        };
        let msize_9p = config.msize_9p.max(8192);
        let saved_config = SandboxConfigState {
            hypervisor: config.clone(),
            shared_fs: kind,
            msize_9p,
            image_cache: b.image_cache.clone(),
            agent_request_timeout_ms: b.agent_options.request_timeout.as_millis() as u64,
            agent_dial_timeout_ms: b.agent_options.dial_timeout.as_millis() as u64,
        };
        let share = ShareFs::new(&dir, kind)?.with_msize_9p(msize_9p);
        let device = DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: share.mount_tag().to_string(),
            host_path: share.host_path().to_path_buf(),
            kind,
        });
        // Prepare, start, wait until the agent's port answers (the backend does what that
        // takes, e.g. a fresh boot when its vsock backend is stuck), connect the agent:
        // `dial_timeout` in all.
        let total = b.agent_options.dial_timeout;
        let vm = kata_hypervisor::backend::create(b.hypervisor, &id, config, &dir.join("vm"))?;
        vm.prepare(vec![device]).await?;
        vm.start().await?;
        let vm_started = t0.elapsed();
        if let Err(e) = vm.wait_ready(total.saturating_sub(t0.elapsed())).await {
            let _ = vm.stop().await;
            return Err(match e {
                kata_hypervisor::Error::AgentNotReady {
                    detail, console, ..
                } => Error::AgentTimeout {
                    after: total,
                    detail,
                    console,
                },
                kata_hypervisor::Error::VmExited { how, console } => {
                    Error::VmExited { how, console }
                }
                other => other.into(),
            });
        }
        let mut opts = b.agent_options;
        opts.dial_timeout = total
            .saturating_sub(t0.elapsed())
            .max(Duration::from_secs(1));
        let agent = match Self::connect_agent(&vm, &opts, &share, &id).await {
            Ok(a) => a,
            Err(e) => {
                let _ = vm.stop().await;
                return Err(e);
            }
        };
        let agent_connected = t0.elapsed();
        guard.0 = None;
        let inner = Arc::new(Inner {
            id: id.clone(),
            dir,
            vm,
            agent,
            share: Mutex::new(Some(share)),
            containers: Mutex::new(HashMap::new()),
            image_cache: b.image_cache.clone(),
            shut_down: AtomicBool::new(false),
            timings: BootTimings {
                vm_started,
                agent_connected,
                ready: t0.elapsed(),
            },
            saved_config,
            persist_lock: Mutex::new(()),
        });
        tracing::info!(sandbox_id = %id, ready = ?inner.timings.ready, "sandbox ready");
        let sandbox = Sandbox { inner };
        // Dropping the sandbox on error kills the VM: a sandbox nobody could find is not kept.
        sandbox.inner.persist()?;
        Ok(sandbox)
    }

    /// Connects to the agent while watching the VM: a VM that exits (guest panic) or an agent
    /// that does not answer in time ends the boot with the console's last lines.
    async fn connect_agent(
        vm: &Arc<dyn Hypervisor>,
        opts: &ConnectOptions,
        share: &ShareFs,
        id: &str,
    ) -> Result<AgentClient> {
        let address = agent_address(vm.agent_address()?);
        let connect = AgentClient::connect(&address, *opts);
        let agent = tokio::select! {
            r = connect => match r {
                Ok(a) => a,
                Err(e) => {
                    return Err(Error::AgentTimeout {
                        after: opts.dial_timeout,
                        detail: e.to_string(),
                        console: vm.console_tail(20),
                    })
                }
            },
            how = vm.wait_exit() => {
                return Err(Error::VmExited { how, console: vm.console_tail(20) });
            }
        };
        let s = share.storage();
        let storage = Storage {
            driver: s.driver,
            source: s.source,
            fstype: s.fstype,
            options: s.options,
            mount_point: s.mount_point,
            ..Default::default()
        };
        let req = CreateSandboxRequest {
            hostname: id.chars().take(12).collect(),
            storages: vec![storage],
            sandbox_id: id.to_string(),
            ..Default::default()
        };
        agent.create_sandbox(&req).await?;
        Ok(agent)
    }

    async fn create_container(&self, this: &Arc<Inner>, spec: ContainerSpec) -> Result<Container> {
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
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
            c.insert(
                id.clone(),
                ContainerEntry {
                    rootfs: None,
                    execs: 0,
                    exec_ids: Vec::new(),
                    metadata: BTreeMap::new(),
                    processes: BTreeMap::new(),
                },
            );
        }
        // Released on error, and also if this future is dropped half-way (a caller's timeout):
        // the id and the shared rootfs must not stay reserved until shutdown.
        let mut reservation = Reservation {
            inner: self,
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
        this: &Arc<Inner>,
        id: &str,
        mut spec: ContainerSpec,
    ) -> Result<Container> {
        // An unpacked image is a shared cache: containers write to an overlay on top of it.
        let (rootfs_dir, image_process, mode) = match spec.rootfs.clone() {
            RootfsSource::Dir(d) => {
                if !d.is_dir() {
                    return Err(Error::invalid(
                        "rootfs",
                        format!("{} is not a directory", d.display()),
                    ));
                }
                (d, None, RootfsMode::ReadWrite)
            }
            RootfsSource::Image { path, reference } => {
                let cache = self.image_cache.clone();
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
                (dir, Some(process.oci), RootfsMode::Overlay)
            }
        };
        let shared = {
            let share = self.share.lock().unwrap();
            let share = share.as_ref().ok_or(Error::ShutDown)?;
            share.share_rootfs_with(id, &rootfs_dir, mode)?
        };
        let guest_root = shared.guest_path().to_string();
        if let Some(e) = self.containers.lock().unwrap().get_mut(id) {
            e.rootfs = Some(shared);
        }
        let terminal = spec.process.terminal;
        let stdin = spec.process.stdin;
        if let Some(e) = self.containers.lock().unwrap().get_mut(id) {
            e.processes
                .insert(id.to_string(), ProcessState { terminal, stdin });
        }
        let oci = spec.to_oci(id, &guest_root, image_process)?;
        let req = CreateContainerRequest {
            container_id: id.to_string(),
            exec_id: id.to_string(),
            OCI: protobuf::MessageField::some(kata_agent_client::spec::to_grpc(&oci)?),
            ..Default::default()
        };
        self.agent.create_container(&req).await?;
        // The first process is addressed by the exec id given at creation (Kata also accepts "").
        let init = match self.process_handle(id, id, terminal, stdin).await {
            Ok(p) => p,
            Err(e) => {
                // The guest has the container: remove it there too (the caller releases the
                // host side).
                let rm = RemoveContainerRequest {
                    container_id: id.to_string(),
                    timeout: 10,
                    ..Default::default()
                };
                if let Err(re) = self.agent.remove_container(&rm).await {
                    tracing::warn!(sandbox_id = %self.id, container_id = %id, error = %re, "removing a container whose streams failed");
                }
                return Err(e);
            }
        };
        self.persist_or_warn();
        tracing::debug!(sandbox_id = %self.id, container_id = %id, "container created");
        Ok(Container {
            id: id.to_string(),
            sandbox: this.clone(),
            init,
        })
    }

    /// Attaches the standard streams of a process.
    async fn process_handle(
        &self,
        container_id: &str,
        exec_id: &str,
        terminal: bool,
        stdin: bool,
    ) -> Result<Process> {
        let stdin = if stdin {
            Some(io::input(self.agent.clone(), container_id, exec_id))
        } else {
            let req = CloseStdinRequest {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            };
            self.agent.close_stdin(&req).await?;
            None
        };
        Ok(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            agent: self.agent.clone(),
            stdin,
            stdout: Some(io::output(
                self.agent.clone(),
                OutputStream::Stdout,
                container_id,
                exec_id,
            )),
            stderr: (!terminal).then(|| {
                io::output(
                    self.agent.clone(),
                    OutputStream::Stderr,
                    container_id,
                    exec_id,
                )
            }),
        })
    }

    pub(crate) async fn exec(&self, container_id: &str, process: ProcessSpec) -> Result<Process> {
        let exec_id = {
            let mut c = self.containers.lock().unwrap();
            let entry = c.get_mut(container_id).ok_or_else(|| Error::NotFound {
                kind: "container",
                id: container_id.to_string(),
            })?;
            entry.execs += 1;
            let exec_id = format!("exec-{}", entry.execs);
            entry.exec_ids.push(exec_id.clone());
            entry.processes.insert(
                exec_id.clone(),
                ProcessState {
                    terminal: process.terminal,
                    stdin: process.stdin,
                },
            );
            exec_id
        };
        self.persist_or_warn();
        let oci = process.to_oci(OciProcess::default())?;
        // The protocol converts whole specs; the process is taken from one.
        let mut carrier = oci_spec::runtime::Spec::default();
        carrier.set_process(Some(oci));
        let grpc = kata_agent_client::spec::to_grpc(&carrier)?;
        let req = ExecProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.clone(),
            process: grpc.Process,
            ..Default::default()
        };
        if let Err(e) = self.agent.exec_process(&req).await {
            if let Some(entry) = self.containers.lock().unwrap().get_mut(container_id) {
                entry.exec_ids.retain(|id| id != &exec_id);
                entry.processes.remove(&exec_id);
            }
            self.persist_or_warn();
            return Err(e.into());
        }
        self.process_handle(container_id, &exec_id, process.terminal, process.stdin)
            .await
    }

    /// Forgets a container and releases its rootfs on the host.
    pub(crate) fn release_container(&self, id: &str) -> Result<()> {
        let entry = self.containers.lock().unwrap().remove(id);
        if let Some(rootfs) = entry.and_then(|e| e.rootfs) {
            rootfs.release()?;
        }
        self.persist_or_warn();
        Ok(())
    }

    /// The state `persist` writes, derived from the live sandbox.
    pub(crate) fn state(&self) -> SandboxState {
        let containers = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    ContainerState {
                        rootfs: e.rootfs.as_ref().map(|r| r.host_path().to_path_buf()),
                        execs: e.exec_ids.clone(),
                        metadata: e.metadata.clone(),
                        rootfs_mode: e.rootfs.as_ref().map(|r| r.mode()),
                        processes: e.processes.clone(),
                    },
                )
            })
            .collect();
        SandboxState {
            version: crate::persist::STATE_VERSION,
            id: self.id.clone(),
            dir: self.dir.clone(),
            hypervisor: Some(self.vm.save_state()),
            resources: ResourceState {
                shared_dir: self
                    .share
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|s| s.host_path().to_path_buf()),
            },
            containers,
            config: Some(self.saved_config.clone()),
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
            tracing::warn!(sandbox_id = %self.id, error = %e, "cannot write the sandbox state");
        }
    }

    /// `Ok` if a container with this id exists, else [`Error::NotFound`].
    pub(crate) fn known(&self, id: &str) -> Result<()> {
        if self.containers.lock().unwrap().contains_key(id) {
            Ok(())
        } else {
            Err(Error::NotFound {
                kind: "container",
                id: id.to_string(),
            })
        }
    }

    /// Attaches caller metadata to a container and persists it.
    pub(crate) fn set_metadata(&self, container_id: &str, key: &str, value: &str) -> Result<()> {
        {
            let mut c = self.containers.lock().unwrap();
            let entry = c.get_mut(container_id).ok_or_else(|| Error::NotFound {
                kind: "container",
                id: container_id.to_string(),
            })?;
            entry.metadata.insert(key.to_string(), value.to_string());
        }
        self.persist()
    }

    /// Releases every container rootfs and the shared directory, then the sandbox directory.
    fn release_all(&self) {
        let entries: Vec<_> = self.containers.lock().unwrap().drain().collect();
        for (id, e) in entries {
            if let Some(r) = e.rootfs {
                if let Err(err) = r.release() {
                    tracing::warn!(sandbox_id = %self.id, container_id = %id, error = %err, "releasing rootfs");
                }
            }
        }
        drop(self.share.lock().unwrap().take());
        let _ = std::fs::remove_dir_all(self.dir.join("vm"));
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

impl Drop for Sandbox {
    /// The owner handle is gone without [`Sandbox::shutdown`]: kill the VM and release what
    /// the sandbox holds on the host, even while [`Container`] handles still exist.
    fn drop(&mut self) {
        self.inner.kill_now("dropped without shutdown()");
    }
}

impl Inner {
    /// Emergency stop, callable without a runtime: the hypervisor stops the VM at once (and
    /// waits, bounded, until it is gone so no mount is still busy), then the host side is
    /// released.
    fn kill_now(&self, why: &str) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(sandbox_id = %self.id, "sandbox {why}: killing its VM");
        // The backend's own "stop now": bounded, and done when it returns, so no mount is busy.
        self.vm.stop_now();
        self.release_all();
    }
}

/// A container id reserved while its creation runs; released on drop unless disarmed.
struct Reservation<'a> {
    inner: &'a Inner,
    id: Option<String>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if let Err(e) = self.inner.release_container(&id) {
                tracing::warn!(sandbox_id = %self.inner.id, container_id = %id, error = %e, "releasing the rootfs of a container that failed to create");
            }
        }
    }
}

/// Removes a directory on drop unless disarmed (start-up error paths).
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d.join("vm"));
            let _ = std::fs::remove_file(SandboxState::path(&d));
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// The agent client's form of the address the hypervisor reports (the crates may not share the
/// type: kata-hypervisor and kata-agent-client do not depend on each other).
pub(crate) fn agent_address(a: VsockAddress) -> AgentAddress {
    match a {
        VsockAddress::Vsock { cid, port } => AgentAddress::Vsock { cid, port },
        VsockAddress::HybridVsock { uds, port } => AgentAddress::HybridVsock { uds, port },
        VsockAddress::Unix { path } => AgentAddress::Unix(path),
    }
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
