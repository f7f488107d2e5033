//! The QEMU backend: an external `qemu-system-*` process driven over QMP.
//!
//! Start-up: resolve the guest files, choose KVM or TCG, start the vsock backend if the host has
//! no `/dev/vhost-vsock`, launch QEMU with everything cold-plugged, then connect QMP. Every step
//! that fails undoes the ones before it, so a failed start leaves no process, socket or directory.
//! NICs are taps in the pod's network namespace that QEMU, in the host's, could not open by
//! name: it inherits their open queues under the numbers its command line gives
//! (`-netdev tap,fds=`, see [`confine::inherit_across_exec`]).
//!
//! Readiness ([`Hypervisor::wait_ready`]): the agent's port is dialled until it answers; with
//! hybrid vsock, a VM whose agent stays silent for a third of the time while it runs is booted
//! once more (rust-vmm's vhost-device-vsock was seen to stop answering every `CONNECT` for good
//! in about 1 boot of 20 on a loaded 2-core host, with the agent serving in the guest; a fresh
//! VM and backend recover from that).
//!
//! Hand-over: [`Hypervisor::detach`] leaves QEMU and its vsock backend running, and
//! [`Qemu::restore`] adopts them again from the saved [`QemuState`] (pids checked against their
//! command lines and pinned with pidfds, QMP and the console reconnected), in this process or
//! another. [`crate::backend::cleanup`] kills what an owner that died left, with or without its state.
//!
//! Confinement: QEMU runs under its seccomp sandbox (`seccomp_sandbox`, on by default) and,
//! from before it is executed, without the capabilities and system calls that would let the
//! guest leave setuid files, file capabilities or device nodes on the host through the 9p
//! share ([`confine`]); the guest console is a socket read into a bounded [`ConsoleRing`] that outlives the
//! VM (so a dead VM's console still reaches the error). With `rootless = true` QEMU runs as an
//! unprivileged uid of its own in a mount namespace of its own, handed its sockets as
//! descriptors ([`rootless`]). Settings the backend does not implement and must not ignore
//! (`confidential_guest`, `guest_hook_path`, ...) are refused when the VM is made; see
//! `settings.rs` for every key.

mod busy;
pub mod cmdline;
pub mod confine;
pub mod fault;
pub mod firmware;
mod host;
pub mod hotplug;
pub mod image;
pub mod qmp;
pub mod resize;
pub mod rootless;
mod settings;
mod state;
pub mod template;
pub mod vfio_ap;
pub mod virtio_mem;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{GuestManifest, HypervisorConfig, HypervisorType, SharedFs};
use crate::console::{wait_drained, ConsoleReader, ConsoleRing, CONSOLE_RING_BYTES};
use crate::device::{DeviceConfig, GuestAddress, PciePort, PortAllocator, PortPlan, VsockAddress};
use crate::error::{Error, Result};
use crate::hypervisor::{Capabilities, Hypervisor, HypervisorState, VmState};
use crate::kvm::{choose_accelerator, find_program, Accelerator};
use crate::process::{Killer, Supervised};
use cmdline::{QemuLaunch, VsockDevice};
use qmp::QmpClient;

pub(crate) use host::host_checks;
pub(crate) use settings::setting_use;
pub use state::{HeldPort, QemuState};

/// The vsock port the agent listens on (Kata's default).
pub const AGENT_VSOCK_PORT: u32 = 1024;

const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer QEMU may take to answer QMP per cold-plugged VFIO device: it maps (pins)
/// all guest memory for the device's DMA before its monitor runs (in the nested lab, over 10 s).
const COLD_VFIO_QMP_WAIT: Duration = Duration::from_secs(60);
/// How long start waits for the guest to start its vsock device before giving up waiting.
const VSOCK_START_WAIT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(3);
/// With a vhost-user vsock backend (vhost-device-vsock), the time given to its threads on
/// either side of a pause: before `stop`, to take the last bytes the agent's connections
/// wrote; after `cont`, to apply the ring setup QEMU sent without waiting for it. A host
/// write that reaches vhost-device-vsock 0.3 while its rings are stopped ends its ring thread
/// and with it every vsock connection of the VM; the sandbox holds the agent's writes during
/// the pause (kata-agent-client's `WriteGate`), and these margins cover the edges.
const VHOST_USER_SETTLE: Duration = Duration::from_millis(20);
/// How long [`Hypervisor::stop_now`] and [`cleanup`] wait for a killed process to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long an exited VM's console is given to be read to its end before its tail is taken.
const CONSOLE_DRAIN: Duration = Duration::from_secs(1);
/// Console lines an error carries.
const CONSOLE_LINES_IN_ERRORS: usize = 20;
/// How many times `wait_ready` boots a VM whose hybrid-vsock backend relays nothing: the
/// first boot and up to two more, each after a third of the agent timeout if the guest then
/// idles (`busy`: a guest still working or waiting for a CPU is waited on, not rebooted).
const MAX_BOOTS: u32 = 3;

static TCG_WARNED: AtomicBool = AtomicBool::new(false);

/// What the QEMU backend can do (any configuration; [`capabilities_for`] narrows it to one).
pub fn capabilities() -> Capabilities {
    Capabilities {
        backend: Some(HypervisorType::Qemu),
        block_hotplug: true,
        cpu_hotplug: true,
        cpu_offline_by_agent: false,
        memory_hotplug: true,
        memory_shrink: false,
        vfio: true,
        hybrid_vsock: !Path::new("/dev/vhost-vsock").exists(),
        shared_fs: vec![SharedFs::VirtioFs, SharedFs::Virtio9p, SharedFs::None],
        shared_fs_note: "virtio-fs-nydus and inline-virtio-fs are not served by QEMU in kata-rs; use \"virtio-fs\" (virtiofsd, the default) or \"virtio-9p\"".into(),
        hand_over: true,
        guest_on_host: false,
    }
}

/// What the QEMU backend can do with `config`: [`capabilities`], and memory given back
/// (`memory_shrink`) with a virtio-mem device (`enable_virtio_mem`, [`virtio_mem`]).
pub fn capabilities_for(config: &HypervisorConfig) -> Capabilities {
    Capabilities {
        memory_shrink: config.enable_virtio_mem,
        ..capabilities()
    }
}

/// Kills what a QEMU VM whose owner died left: QEMU and its vsock backend from the saved state
/// (each only if its command line names `vm_dir`) and any other process naming `vm_dir` (found
/// without a readable state too). Returns the pids killed.
pub(crate) fn cleanup(saved: Option<&QemuState>, vm_dir: &Path) -> Vec<u32> {
    let candidates = saved.map(QemuState::pids).unwrap_or_default();
    let killed = crate::process::kill_processes_naming(vm_dir, &candidates, KILL_WAIT);
    release_uids_left(saved, vm_dir);
    killed
}

/// Releases the uid a rootless QEMU of `vm_dir` ran as, once its processes are killed: the
/// state's, and any claim naming `vm_dir` (a crash before the state was written).
pub(crate) fn release_uids_left(saved: Option<&QemuState>, vm_dir: &Path) {
    if let Some(user) = saved.and_then(|s| s.rootless.as_ref()) {
        if let Err(e) = rootless::release(user, vm_dir) {
            tracing::warn!(vm_dir = %vm_dir.display(), error = %e, "a crashed QEMU's uid is not released");
        }
    }
    rootless::release_naming(Path::new(rootless::CLAIMS_DIR), vm_dir);
}

/// Running processes and connections of a started VM.
#[derive(Default)]
struct Running {
    qemu: Option<Supervised>,
    vsock_backend: Option<Supervised>,
    /// The task reading the guest console into the VM's ring.
    console: Option<ConsoleReader>,
    qmp: Option<Arc<QmpClient>>,
    agent: Option<VsockAddress>,
    accelerator: Option<Accelerator>,
    /// The VM's PCIe ports: who holds which.
    ports: Option<PortAllocator>,
    /// The devices cold-plugged at start.
    cold_plugged: Vec<DeviceConfig>,
    /// The block devices hot-plugged since ([`hotplug`]).
    blocks: Vec<hotplug::AttachedBlock>,
    /// The vCPUs and memory hot-plugged since ([`resize`]).
    resize: resize::ResizeState,
}

/// A VM run by QEMU.
pub struct Qemu {
    id: String,
    config: HypervisorConfig,
    vm_dir: PathBuf,
    devices: Mutex<Vec<DeviceConfig>>,
    state: Mutex<VmState>,
    running: tokio::sync::Mutex<Running>,
    /// Mirrors of `running` readable without awaiting its lock.
    pids: Mutex<Vec<u32>>,
    killers: Mutex<Vec<Killer>>,
    saved: Mutex<Option<QemuState>>,
    qmp: Mutex<Option<Arc<QmpClient>>>,
    exit: Mutex<Option<tokio::sync::watch::Receiver<Option<String>>>>,
    /// The guest console's last bytes; kept after the VM stops.
    console: Arc<ConsoleRing>,
    /// Turns true once the console of an exited QEMU is read to its end.
    console_done: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    agent: Mutex<Option<VsockAddress>>,
    accelerator: Mutex<Option<Accelerator>>,
    /// Set by `detach`: the VM belongs to someone else now; `stop` leaves it alone.
    detached: AtomicBool,
    /// Run before a second boot (`set_reboot_hook`): the caller's vhost-user daemons restarted.
    reboot_hook: Mutex<Option<crate::hypervisor::RebootHook>>,
    /// The uid a rootless QEMU runs as, claimed at start, released once QEMU is gone.
    rootless: Mutex<Option<rootless::RootlessState>>,
    /// When the last start's vsock backend was ready (none with vhost-vsock) and QEMU answered
    /// on QMP, for boot timings.
    start_marks: Mutex<crate::hypervisor::StartMarks>,
    /// VM templating: an ordinary VM, the template being made, or a clone ([`template`]).
    role: template::Role,
}

impl std::fmt::Debug for Qemu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qemu")
            .field("id", &self.id)
            .field("vm_dir", &self.vm_dir)
            .field("state", &self.state())
            .finish()
    }
}

impl Drop for Qemu {
    /// A handle dropped without `stop`: its QEMU is killed (as its supervision would kill it)
    /// before a rootless QEMU's uid is released, so the uid is never left claimed.
    fn drop(&mut self) {
        if self.detached.load(Ordering::SeqCst) || self.rootless.lock().unwrap().is_none() {
            return;
        }
        let killers = std::mem::take(&mut *self.killers.lock().unwrap());
        Killer::kill_all(&killers, KILL_WAIT);
        self.release_rootless();
    }
}

impl Qemu {
    /// A QEMU VM named `id` whose sockets and console log live in `vm_dir` (created at start,
    /// removed at stop). Checks the configuration values; files are checked at start.
    pub fn new(id: &str, config: HypervisorConfig, vm_dir: impl Into<PathBuf>) -> Result<Self> {
        config.validate_for(HypervisorType::Qemu)?;
        config.check_refused(HypervisorType::Qemu)?;
        rootless::check_config(&config)?;
        capabilities().check_shared_fs(config.shared_fs)?;
        template::check_config(&config)?;
        Ok(Qemu {
            role: template::Role::for_config(&config),
            id: id.to_string(),
            config,
            vm_dir: vm_dir.into(),
            devices: Mutex::new(Vec::new()),
            state: Mutex::new(VmState::New),
            running: tokio::sync::Mutex::new(Running::default()),
            pids: Mutex::new(Vec::new()),
            killers: Mutex::new(Vec::new()),
            saved: Mutex::new(None),
            qmp: Mutex::new(None),
            exit: Mutex::new(None),
            console: ConsoleRing::new(CONSOLE_RING_BYTES),
            console_done: Mutex::new(None),
            agent: Mutex::new(None),
            accelerator: Mutex::new(None),
            detached: AtomicBool::new(false),
            reboot_hook: Mutex::new(None),
            rootless: Mutex::new(None),
            start_marks: Mutex::new(Default::default()),
        })
    }

    /// Takes over a QEMU VM that another handle started and [detached](Hypervisor::detach)
    /// (a restarted runtime reconnecting to its sandbox), from the state it saved.
    ///
    /// The QEMU and vsock backend pids must still run and name the saved VM directory on their
    /// command lines (a pid reused by another program is refused, never adopted); they are
    /// pinned with pidfds, so [`Hypervisor::wait_exit`] sees their exit and
    /// [`Hypervisor::stop`] kills exactly them (and removes the VM directory). QMP is
    /// reconnected and the state (running or paused) read from it. On error nothing is
    /// killed or removed: the caller may still clean up from the saved state.
    pub async fn restore(
        id: &str,
        config: HypervisorConfig,
        saved: &HypervisorState,
    ) -> Result<Self> {
        let qs = QemuState::from_saved(saved)?;
        let agent = saved.agent_address.clone().ok_or_else(|| Error::Adopt {
            what: "qemu".into(),
            pid: qs.qemu_pid,
            reason: "the saved state has no agent address".into(),
        })?;
        let vm = Qemu::new(id, config, saved.vm_dir.clone())?;
        let mut ports = PortAllocator::new(PortPlan::new(&vm.config, &qs.cold_plugged));
        for h in &qs.ports {
            ports.hold(h.port, h.index, &h.device)?;
        }
        let mut adopted: Vec<Supervised> = Vec::new();
        let result = async {
            adopted.push(Supervised::adopt("qemu", qs.qemu_pid, &saved.vm_dir)?);
            if let Some(pid) = qs.vsock_backend_pid {
                adopted.push(Supervised::adopt("vhost-device-vsock", pid, &saved.vm_dir)?);
            }
            // QEMU's monitor serves one client at a time: a greeting that does not come means
            // another process holds it.
            let qmp = QmpClient::connect(&qs.qmp_socket, QMP_TIMEOUT)
                .await
                .map_err(|e| Error::Adopt {
                    what: "qemu".into(),
                    pid: qs.qemu_pid,
                    reason: format!(
                        "its QMP monitor {} did not take us ({e}); is another process connected to it?",
                        qs.qmp_socket.display()
                    ),
                })?;
            let status = qmp.query_status().await?;
            Ok::<_, Error>((qmp, status))
        }
        .await;
        let console = match &result {
            Ok((qmp, _)) => {
                let console = vm.connect_console();
                if console.is_some() {
                    vm.wait_console_attached(qmp).await;
                }
                console
            }
            Err(_) => None,
        };
        let (qmp, status) = match result {
            Ok(r) => r,
            Err(e) => {
                // Leave the processes as they were found.
                adopted.into_iter().for_each(Supervised::detach);
                return Err(e);
            }
        };
        let mut processes = adopted.into_iter();
        let qemu = processes.next();
        let backend = processes.next();
        let qmp = Arc::new(qmp);
        {
            let mut run = vm.running.try_lock().expect("a new VM's lock is free");
            run.qemu = qemu;
            run.vsock_backend = backend;
            run.console = console;
            run.qmp = Some(qmp.clone());
            run.agent = Some(agent);
            run.accelerator = qs.accelerator;
            run.ports = Some(ports);
            run.cold_plugged = qs.cold_plugged.clone();
            run.blocks = qs.blocks.clone();
            run.resize = qs.resize.clone();
            *vm.rootless.lock().unwrap() = qs.rootless.clone();
            vm.publish(&run);
        }
        vm.set_state(if status == "paused" {
            VmState::Paused
        } else {
            VmState::Running
        });
        tracing::info!(sandbox_id = %id, pids = ?qs.pids(), %status, qemu_version = qmp.qemu_version(), "QEMU adopted");
        Ok(vm)
    }

    /// The VM directory.
    pub fn vm_dir(&self) -> &Path {
        &self.vm_dir
    }

    /// The socket QEMU serves the guest's serial console on.
    pub fn console_socket(&self) -> PathBuf {
        self.vm_dir.join("console.sock")
    }

    /// The guest console's last bytes (kept after the VM stops).
    pub fn console(&self) -> &Arc<ConsoleRing> {
        &self.console
    }

    /// Connects a reader to the console of an adopted QEMU, if it serves one (a VM started by
    /// an older kata-rs has a console file instead, left as it is).
    fn connect_console(&self) -> Option<ConsoleReader> {
        let socket = self.console_socket();
        if !socket.exists() {
            tracing::warn!(sandbox_id = %self.id, socket = %socket.display(), "the adopted VM has no console socket; its console is not read");
            return None;
        }
        match ConsoleReader::connect(&socket, self.console.clone(), self.console_log_as()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(sandbox_id = %self.id, socket = %socket.display(), error = %e, "cannot connect to the adopted VM's console; it is not read");
                None
            }
        }
    }

    /// Waits (bounded) until QEMU has accepted the console reader's connection, so what the
    /// guest writes next is not dropped (QEMU drops console output while no reader is
    /// attached).
    async fn wait_console_attached(&self, qmp: &QmpClient) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let Ok(serde_json::Value::Array(chardevs)) = qmp.execute("query-chardev", None).await
            else {
                return;
            };
            let attached = chardevs.iter().any(|c| {
                c["label"] == "console0"
                    && c["filename"]
                        .as_str()
                        .is_some_and(|f| !f.starts_with("disconnected:"))
            });
            if attached {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(sandbox_id = %self.id, "QEMU has not taken the console connection; early output may be lost");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The sandbox id console lines are logged under (`enable_debug`), or `None`.
    fn console_log_as(&self) -> Option<String> {
        self.config.enable_debug.then(|| self.id.clone())
    }

    /// Waits (bounded) until the console of an exited QEMU is read to its end, so its last
    /// words (a panic) are in the ring.
    async fn drain_console(&self) {
        let done = self.console_done.lock().unwrap().clone();
        if let Some(done) = done {
            wait_drained(done, CONSOLE_DRAIN).await;
        }
    }

    /// The QMP client, once started.
    pub fn qmp(&self) -> Option<Arc<QmpClient>> {
        self.qmp.lock().unwrap().clone()
    }

    fn set_state(&self, s: VmState) {
        *self.state.lock().unwrap() = s;
    }

    /// The agent is reached through vhost-device-vsock (hybrid vsock), not vhost-vsock.
    fn vhost_user_vsock(&self) -> bool {
        matches!(
            *self.agent.lock().unwrap(),
            Some(VsockAddress::HybridVsock { .. })
        )
    }

    fn qmp_or_err(&self) -> Result<Arc<QmpClient>> {
        self.qmp()
            .ok_or_else(|| Error::NotRunning(self.state().to_string()))
    }

    /// Copies what `run` holds into the mirrors readable without its lock (pids, killers,
    /// QMP, agent address, accelerator, the state `save_state` writes).
    fn publish(&self, run: &Running) {
        let procs = [run.qemu.as_ref(), run.vsock_backend.as_ref()];
        *self.pids.lock().unwrap() = procs.iter().flatten().map(|p| p.pid()).collect();
        *self.killers.lock().unwrap() = procs.iter().flatten().map(|p| p.killer()).collect();
        *self.exit.lock().unwrap() = run.qemu.as_ref().map(Supervised::exit_watch);
        *self.console_done.lock().unwrap() = run.console.as_ref().map(ConsoleReader::done_watch);
        *self.qmp.lock().unwrap() = run.qmp.clone();
        *self.agent.lock().unwrap() = run.agent.clone();
        *self.accelerator.lock().unwrap() = run.accelerator;
        *self.saved.lock().unwrap() = run.qemu.as_ref().map(|q| QemuState {
            qemu_pid: q.pid(),
            vsock_backend_pid: run.vsock_backend.as_ref().map(Supervised::pid),
            qmp_socket: self.vm_dir.join("qmp.sock"),
            accelerator: run.accelerator,
            cold_plugged: run.cold_plugged.clone(),
            blocks: run.blocks.clone(),
            resize: run.resize.clone(),
            rootless: self.rootless.lock().unwrap().clone(),
            ports: run
                .ports
                .as_ref()
                .map(|p| {
                    p.holdings()
                        .into_iter()
                        .map(|(device, port, index)| HeldPort {
                            device,
                            port,
                            index,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    }

    /// Resolves kernel and initrd/image: the configuration, else the guest manifest. An image
    /// is checked ([`image::GuestImage::probe`]) before anything starts.
    fn guest_files(&self) -> Result<(PathBuf, Option<PathBuf>, Option<image::GuestImage>)> {
        let c = &self.config;
        let need_manifest = c.kernel.is_empty() || (c.initrd.is_empty() && c.image.is_empty());
        let manifest = if need_manifest {
            Some(GuestManifest::load_default()?)
        } else {
            None
        };
        let kernel = if c.kernel.is_empty() {
            manifest
                .as_ref()
                .map(|m| m.kernel.clone())
                .unwrap_or_default()
        } else {
            PathBuf::from(&c.kernel)
        };
        let (initrd, image) = if !c.image.is_empty() {
            (None, Some(PathBuf::from(&c.image)))
        } else if !c.initrd.is_empty() {
            (Some(PathBuf::from(&c.initrd)), None)
        } else {
            (manifest.as_ref().map(|m| m.initrd.clone()), None)
        };
        let check = |what: &'static str, p: &Path| {
            if p.is_file() {
                Ok(())
            } else {
                Err(Error::MissingFile {
                    what,
                    path: p.to_path_buf(),
                    hint: format!(
                        "{}; or fix the path in the configuration",
                        crate::config::guest_image_hint()
                    ),
                })
            }
        };
        check("guest kernel", &kernel)?;
        if let Some(i) = &initrd {
            check("guest initrd", i)?;
        }
        let image = match image {
            Some(i) => Some(image::GuestImage::probe(&i, c)?),
            None => None,
        };
        Ok((kernel, initrd, image))
    }

    fn qemu_binary(&self) -> Result<PathBuf> {
        let name = crate::config::qemu_binary_name();
        find_program(name, &self.config.path, &[]).ok_or_else(|| Error::MissingProgram {
            program: if self.config.path.is_empty() {
                name.to_string()
            } else {
                self.config.path.clone()
            },
            searched: if self.config.path.is_empty() {
                "PATH".into()
            } else {
                "the configured `path`".into()
            },
            install: "apt-get install qemu-system-x86".into(),
        })
    }

    /// Starts the vsock backend when the host has no vhost-vsock; returns the device to give
    /// QEMU and the agent's address.
    async fn start_vsock(&self, run: &mut Running) -> Result<(VsockDevice, VsockAddress)> {
        if Path::new("/dev/vhost-vsock").exists() {
            let cid = 3 + (std::process::id() ^ (nanos() as u32)) % (u32::MAX - 16);
            return Ok((
                VsockDevice::VhostVsock { cid },
                VsockAddress::Vsock {
                    cid,
                    port: AGENT_VSOCK_PORT,
                },
            ));
        }
        let extra = [crate::config::cache_dir().join("bin")];
        let explicit = std::env::var("KATA_RS_VHOST_USER_VSOCK").unwrap_or_default();
        let bin = find_program("vhost-device-vsock", &explicit, &extra).ok_or_else(|| {
            Error::MissingProgram {
                program: "vhost-device-vsock".into(),
                searched: format!("PATH and {}", extra[0].display()),
                install: "make setup (cargo install vhost-device-vsock); needed because this host has no /dev/vhost-vsock".into(),
            }
        })?;
        let socket = self.vm_dir.join("vhost-vsock.sock");
        let uds = self.vm_dir.join("vsock.uds");
        let log = std::fs::File::create(self.vm_dir.join("vhost-device-vsock.log"))
            .map_err(|e| Error::io("creating the vsock backend log", e))?;
        let child = tokio::process::Command::new(&bin)
            .arg("--guest-cid")
            .arg("3")
            .arg("--socket")
            .arg(&socket)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| Error::io("vsock backend log", e))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", bin.display()), e))?;
        let backend = Supervised::new("vhost-device-vsock", child);
        // The backend creates its vhost-user socket when it is ready for QEMU.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(how) = backend.exited() {
                let log = std::fs::read_to_string(self.vm_dir.join("vhost-device-vsock.log"))
                    .unwrap_or_default();
                return Err(Error::StartFailed {
                    vmm: "vhost-device-vsock".into(),
                    reason: format!("{how}: {}", log.trim()),
                    console: Vec::new(),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("vhost-device-vsock to create {}", socket.display()),
                    after: Duration::from_secs(10),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        run.vsock_backend = Some(backend);
        Ok((
            VsockDevice::VhostUser { socket },
            VsockAddress::HybridVsock {
                uds,
                port: AGENT_VSOCK_PORT,
            },
        ))
    }

    async fn start_inner(&self, run: &mut Running) -> Result<()> {
        // The ports first: too many for QEMU is the configuration's error, before anything
        // is claimed or started.
        let devices = self.devices.lock().unwrap().clone();
        let ports = PortAllocator::for_vm(&self.config, &devices)?;
        ports
            .plan()
            .check_limits(&self.config, HypervisorType::Qemu)?;
        let (kernel, initrd, image) = self.guest_files()?;
        let image_path = image.as_ref().map(|i| i.path.as_path());
        let user = self.claim_rootless(&kernel, initrd.as_deref(), image_path)?;
        let qemu = self.qemu_binary()?;
        let qmp_wait = QMP_TIMEOUT + COLD_VFIO_QMP_WAIT * ports.plan().cold_vfio;
        create_private_dir(&self.vm_dir)?;

        let (accelerator, why) = choose_accelerator();
        if accelerator == Accelerator::Tcg && !TCG_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(reason = %why, "KVM cannot run this guest here; using QEMU TCG software emulation (slow)");
        }
        run.accelerator = Some(accelerator);

        let (vsock, agent) = self.start_vsock(run).await?;
        run.agent = Some(agent);
        let template = match self.role {
            template::Role::None => None,
            _ => Some(template::check_start(&vsock, &devices)),
        }
        .transpose()?;
        let template = match (self.role, template) {
            (template::Role::Clone, Some(())) => {
                let m = template::TemplateManifest::new(
                    &self.config,
                    &kernel,
                    initrd.as_deref(),
                    accelerator,
                    &qemu,
                    &devices,
                );
                Some(template::ensure(self, &m, &devices).await?)
            }
            _ => None,
        };
        // Templated with virtio-fs: the share is no boot device; a clone gets it hot-plugged
        // after the restore, and maps its own copy of the template's memory, shared.
        let share_port =
            self.role != template::Role::None && template::share_hotplugged(&self.config);
        let (devices, hotplug_shares) = if share_port {
            template::split_shares(devices)
        } else {
            (devices, Vec::new())
        };
        let clone_memory = match (&template, share_port) {
            (Some((dir, _lock)), true) => {
                let t0 = std::time::Instant::now();
                // Up to the template's whole touched memory: off the async workers.
                let from = dir.clone();
                let (memory, copied) =
                    tokio::task::spawn_blocking(move || template::CloneMemory::copy_from(&from))
                        .await
                        .map_err(|e| {
                            Error::io(
                                "copying the template's memory for the clone",
                                std::io::Error::other(e.to_string()),
                            )
                        })??;
                tracing::debug!(sandbox_id = %self.id, mib = copied >> 20, took = ?t0.elapsed(), "template memory copied for the clone's virtio-fs");
                Some(memory)
            }
            _ => None,
        };
        let helpers_ready = run.vsock_backend.is_some().then(std::time::Instant::now);
        *self.start_marks.lock().unwrap() = crate::hypervisor::StartMarks::new(helpers_ready, None);

        let qmp_socket = self.vm_dir.join("qmp.sock");
        let console_socket = self.console_socket();
        let vhost_net = cmdline::vhost_net_usable(&self.config);
        // Rootless: the sockets as descriptors, the devices as private nodes.
        let (handed, unprivileged) = match &user {
            Some(user) => {
                let (handed, launch) = rootless_launch(
                    user,
                    &self.vm_dir,
                    [&qmp_socket, &console_socket],
                    &vsock,
                    &devices,
                    accelerator,
                    vhost_net,
                )?;
                (Some(handed), Some(launch))
            }
            None => (None, None),
        };
        let launch = QemuLaunch {
            config: &self.config,
            name: &self.id,
            accelerator,
            kernel: &kernel,
            initrd: initrd.as_deref(),
            image: image.as_ref(),
            qmp_socket: &qmp_socket,
            console_socket: &console_socket,
            vsock,
            devices: &devices,
            ports: &ports,
            host_memory_mib: host_memory_mib(),
            vhost_net,
            handed: handed.as_ref(),
        };
        let mut args = cmdline::build_args(&launch)?;
        let template_dir = Path::new(&self.config.factory.template_path);
        let clone_memory_path = clone_memory.as_ref().map(template::CloneMemory::path);
        template::adjust_args(
            self.role,
            template_dir,
            clone_memory_path.as_deref(),
            share_port,
            &mut args,
        )?;
        run.resize = resize::ResizeState::booted(resize::max_memory_mib(
            &self.config,
            launch.host_memory_mib,
        ));
        run.ports = Some(ports);
        run.cold_plugged = devices;
        tracing::debug!(sandbox_id = %self.id, qemu = %qemu.display(), args = %args.join(" "), "starting QEMU");
        let log_path = self.vm_dir.join("qemu.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| Error::io("creating qemu.log", e))?;
        let confinement = confine::VmmConfinement::new()?;
        // The NICs' tap queues, which the command line names by number (kept open by the
        // devices, which `self.devices` holds, until QEMU has them).
        let mut tap_fds: Vec<std::os::fd::RawFd> = run
            .cold_plugged
            .iter()
            .filter_map(|d| match d {
                DeviceConfig::Net(n) => Some(n.raw_tap_fds()),
                _ => None,
            })
            .flatten()
            .collect();
        tap_fds.extend(handed.iter().flat_map(|h| h.raw_fds()));
        // A virtio-fs clone's memory, which QEMU maps by its descriptor's number.
        tap_fds.extend(clone_memory.as_ref().map(template::CloneMemory::raw_fd));
        let mut command = tokio::process::Command::new(&qemu);
        command
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::io("qemu.log", e))?)
            .stderr(log);
        // SAFETY: between fork and exec the closure only makes syscalls (fcntl on the tap
        // queues and handed sockets; unshare, mount, mknod, chown, set*id for a rootless
        // QEMU; prctl, seccomp) on data built before the fork; it allocates nothing and takes
        // no lock.
        unsafe {
            command.pre_exec(move || {
                confine::inherit_across_exec(&tap_fds)?;
                if let Some(u) = &unprivileged {
                    u.enter_namespace()?;
                }
                confinement.apply()?;
                if let Some(u) = &unprivileged {
                    u.drop_privileges()?;
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("starting {} confined", qemu.display()), e))?;
        // QEMU holds the handed sockets (and a clone's memory) now; ours close.
        drop(handed);
        drop(clone_memory);
        let proc = Supervised::new("qemu", child);
        let failed = |how: String| Error::StartFailed {
            vmm: "qemu".into(),
            reason: format!(
                "{how}: {}",
                crate::console::tail_lines(&log_path, CONSOLE_LINES_IN_ERRORS).join("\n")
            ),
            console: self.console_tail(CONSOLE_LINES_IN_ERRORS),
        };
        // QEMU creates the console socket first and waits until it is read (`wait=on`).
        let deadline = tokio::time::Instant::now() + QMP_TIMEOUT;
        let console = loop {
            if let Some(how) = proc.exited() {
                run.qemu = Some(proc);
                return Err(failed(how));
            }
            if console_socket.exists() {
                match ConsoleReader::connect(
                    &console_socket,
                    self.console.clone(),
                    self.console_log_as(),
                ) {
                    Ok(r) => break r,
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        run.qemu = Some(proc);
                        return Err(failed(format!("cannot read the console: {e}")));
                    }
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() > deadline {
                run.qemu = Some(proc);
                return Err(failed("no console socket".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        run.console = Some(console);
        *self.console_done.lock().unwrap() = run.console.as_ref().map(ConsoleReader::done_watch);
        // Then the QMP socket, before it runs the guest.
        let qmp = loop {
            if let Some(how) = proc.exited() {
                run.qemu = Some(proc);
                self.drain_console().await;
                return Err(failed(how));
            }
            if qmp_socket.exists() {
                match QmpClient::connect(&qmp_socket, qmp_wait).await {
                    Ok(q) => break q,
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        run.qemu = Some(proc);
                        return Err(failed(e.to_string()));
                    }
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() > deadline {
                run.qemu = Some(proc);
                return Err(failed("no QMP socket".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tracing::info!(sandbox_id = %self.id, qemu_version = qmp.qemu_version(), pid = proc.pid(), ?accelerator, "QEMU started");
        run.qemu = Some(proc);
        run.qmp = Some(Arc::new(qmp));
        if let (Some((dir, _lock)), Some(qmp)) = (&template, &run.qmp) {
            template::load(qmp, dir, &self.vm_dir.join("incoming.sock")).await?;
            for fs in &hotplug_shares {
                template::attach_share(qmp, &self.config, fs).await?;
            }
        }
        self.start_marks.lock().unwrap().vmm_running = Some(std::time::Instant::now());
        Ok(())
    }

    /// Starts the VM with `run` locked: QEMU, the deferred hot-plugs, the wait for the vsock
    /// device. On error everything started is stopped again.
    async fn start_locked(&self, run: &mut Running) -> Result<()> {
        let result = match self.start_inner(run).await {
            Ok(()) => match self.hotplug_deferred(run).await {
                Ok(()) => self.wait_vsock_started(run).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.cleanup(run).await;
            self.set_state(VmState::Stopped(format!("start failed: {e}")));
            return Err(e);
        }
        self.publish(run);
        self.set_state(VmState::Running);
        Ok(())
    }

    async fn cleanup(&self, run: &mut Running) {
        if let Some(q) = run.qmp.take() {
            if run.qemu.as_ref().is_some_and(|p| p.exited().is_none()) {
                let _ = tokio::time::timeout(Duration::from_secs(2), q.quit()).await;
            }
        }
        *self.qmp.lock().unwrap() = None;
        if let Some(mut p) = run.qemu.take() {
            let how = p.stop(STOP_GRACE).await;
            tracing::debug!(sandbox_id = %self.id, %how, "QEMU stopped");
        }
        if let Some(console) = run.console.take() {
            // QEMU is gone: the reader gets the rest of the console, then the end of it.
            wait_drained(console.done_watch(), CONSOLE_DRAIN).await;
        }
        if let Some(mut b) = run.vsock_backend.take() {
            b.signal(nix::sys::signal::Signal::SIGTERM);
            b.stop(Duration::from_secs(1)).await;
        }
        run.ports = None;
        self.release_rootless();
        self.remove_vm_dir();
        self.pids.lock().unwrap().clear();
        self.killers.lock().unwrap().clear();
        *self.saved.lock().unwrap() = None;
    }

    /// With `rootless`: claims QEMU's uid (kept across a second boot's start) after checking
    /// that it can read the guest files it opens by path.
    fn claim_rootless(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        image: Option<&Path>,
    ) -> Result<Option<rootless::RootlessState>> {
        if !self.config.rootless {
            return Ok(None);
        }
        rootless::check_readable_by_others("guest kernel", kernel)?;
        for (what, file) in [("guest initrd", initrd), ("guest image", image)] {
            if let Some(file) = file {
                rootless::check_readable_by_others(what, file)?;
            }
        }
        let mut held = self.rootless.lock().unwrap();
        if held.is_none() {
            let user = rootless::claim(&self.config, &self.vm_dir, &self.id)?;
            tracing::info!(sandbox_id = %self.id, uid = user.uid, claim = %user.claim.display(), "QEMU runs rootless");
            *held = Some(user);
        }
        Ok(held.clone())
    }

    /// Releases a rootless QEMU's uid once QEMU is gone (a uid some process still runs as stays
    /// claimed, with a warning).
    fn release_rootless(&self) {
        let user = self.rootless.lock().unwrap().take();
        if let Some(user) = user {
            if let Err(e) = rootless::release(&user, &self.vm_dir) {
                tracing::warn!(sandbox_id = %self.id, error = %e, "QEMU's uid is not released");
            }
        }
    }

    /// A rootless QEMU opens no host file or device by path: block devices and VFIO are
    /// refused, naming `rootless`.
    fn check_rootless_device(&self, device: &DeviceConfig) -> Result<()> {
        let what = match device {
            DeviceConfig::Block(b) => format!("the block device {} ({})", b.id, b.path.display()),
            DeviceConfig::Vfio(v) => format!("the VFIO device {} ({})", v.id, v.bdf),
            DeviceConfig::VfioAp(a) => {
                format!("the VFIO-AP device {} ({})", a.id, a.sysfsdev.display())
            }
            _ => return Ok(()),
        };
        if !self.config.rootless {
            return Ok(());
        }
        Err(Error::Unsupported {
            backend: "qemu",
            what: format!(
                "{what} with rootless = true: QEMU would open it by path as its unprivileged \
                 user (not implemented yet); set rootless = false, or use a shared rootfs \
                 (disable_block_device_use = true)"
            ),
        })
    }

    /// Removes the VM directory (the console ring stays, for errors after it is gone).
    fn remove_vm_dir(&self) {
        if self.vm_dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.vm_dir) {
                tracing::warn!(dir = %self.vm_dir.display(), error = %e, "cannot remove VM directory");
            }
        }
    }

    /// Waits until the guest's driver has started the vsock device.
    ///
    /// vhost-device-vsock (the hybrid-vsock backend) was seen to stop answering every `CONNECT`
    /// in a few boots of a hundred under load, with the agent serving in the guest. Dialling
    /// only once the device runs was the first remedy tried; it did not remove the fault, which
    /// [`Hypervisor::wait_ready`] recovers from by booting once more. The wait stays because a
    /// dial before the device exists can only fail. Best effort: if QEMU cannot say (the query is
    /// experimental), or the device is not up within [`VSOCK_START_WAIT`], start goes on and the
    /// dial decides. A VM that exits meanwhile (guest panic) fails the start with its console.
    async fn wait_vsock_started(&self, run: &Running) -> Result<()> {
        let (Some(qmp), Some(qemu)) = (run.qmp.as_ref(), run.qemu.as_ref()) else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + VSOCK_START_WAIT;
        loop {
            if let Some(how) = qemu.exited() {
                self.drain_console().await;
                return Err(Error::StartFailed {
                    vmm: "qemu".into(),
                    reason: format!("the VM exited during boot ({how})"),
                    console: self.console_tail(CONSOLE_LINES_IN_ERRORS),
                });
            }
            match qmp
                .virtio_started("/machine/peripheral/vsock0/virtio-backend")
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(sandbox_id = %self.id, error = %e, "cannot query the vsock device; dialling the agent without waiting");
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(sandbox_id = %self.id, after = ?VSOCK_START_WAIT, "the guest has not started its vsock device yet; dialling the agent anyway");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Hot-plugs the VFIO devices that `cold_plug_vfio = "no-port"` left for after boot.
    async fn hotplug_deferred(&self, run: &mut Running) -> Result<()> {
        if self.config.cold_plug_vfio != PciePort::NoPort {
            return Ok(());
        }
        let vfio: Vec<DeviceConfig> = self
            .devices
            .lock()
            .unwrap()
            .iter()
            .filter(|d| matches!(d, DeviceConfig::Vfio(_) | DeviceConfig::VfioAp(_)))
            .cloned()
            .collect();
        for d in vfio {
            self.hotplug(run, d).await?;
        }
        Ok(())
    }

    async fn hotplug(&self, run: &mut Running, device: DeviceConfig) -> Result<GuestAddress> {
        self.check_rootless_device(&device)?;
        let qmp = run
            .qmp
            .clone()
            .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
        match device {
            DeviceConfig::Vfio(v) => {
                let ports = run
                    .ports
                    .as_mut()
                    .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
                hotplug::attach_vfio(&qmp, &self.config, ports, &v).await
            }
            DeviceConfig::VfioAp(a) => vfio_ap::attach(&qmp, &self.config, &a).await,
            DeviceConfig::Block(b) => {
                let ports = run
                    .ports
                    .as_mut()
                    .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
                hotplug::attach(&qmp, &self.config, ports, &mut run.blocks, b).await
            }
            DeviceConfig::Net(n) => {
                let ports = run
                    .ports
                    .as_mut()
                    .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
                hotplug::attach_net(&qmp, &self.config, ports, &n).await
            }
            other => Err(Error::Unsupported {
                backend: "qemu",
                what: format!("hot-plugging {} devices yet", other.kind_name()),
            }),
        }
    }

    /// Boots the VM once more: stops QEMU and its vsock backend and starts fresh ones with the
    /// same devices.
    async fn reboot_fresh(&self) -> Result<()> {
        let mut run = self.running.lock().await;
        if self.detached.load(Ordering::SeqCst) {
            return Err(Error::NotRunning(self.state().to_string()));
        }
        self.cleanup(&mut run).await;
        self.console
            .push(b"\n--- kata-rs: the VM is booted once more ---\n");
        // The old QEMU is gone, and with it the vhost-user daemons that served it (virtiofsd
        // exits when its VMM disconnects): the caller starts fresh ones on the same sockets.
        let hook = self.reboot_hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            let restarted = tokio::task::spawn_blocking(move || hook())
                .await
                .unwrap_or_else(|e| Err(format!("the reboot hook panicked: {e}")));
            if let Err(reason) = restarted {
                self.set_state(VmState::Stopped("not booted again".into()));
                return Err(Error::StartFailed {
                    vmm: "qemu".into(),
                    reason: format!(
                        "before booting the VM once more (its vsock backend was stuck): {reason}"
                    ),
                    console: self.console_tail(CONSOLE_LINES_IN_ERRORS),
                });
            }
        }
        self.start_locked(&mut run).await
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    fn kind(&self) -> HypervisorType {
        HypervisorType::Qemu
    }

    fn start_marks(&self) -> crate::hypervisor::StartMarks {
        *self.start_marks.lock().unwrap()
    }

    async fn prepare(&self, devices: Vec<DeviceConfig>) -> Result<()> {
        let state = self.state();
        if state != VmState::New && state != VmState::Prepared {
            return Err(Error::InvalidConfig {
                key: "devices",
                value: state.to_string(),
                reason: "devices can only be prepared before the VM starts".into(),
            });
        }
        let caps = capabilities();
        for d in &devices {
            if let DeviceConfig::ShareFs(fs) = d {
                caps.check_shared_fs(fs.kind)?;
            }
            self.check_rootless_device(d)?;
        }
        *self.devices.lock().unwrap() = devices;
        self.set_state(VmState::Prepared);
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        let mut run = self.running.lock().await;
        if run.qemu.is_some() {
            return Err(Error::InvalidConfig {
                key: "state",
                value: self.state().to_string(),
                reason: "the VM was already started".into(),
            });
        }
        self.start_locked(&mut run).await
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let t0 = tokio::time::Instant::now();
        let mut boots = 1u32;
        loop {
            let address = self.agent_address()?;
            // Only the hybrid-vsock backend is known to get stuck: only it boots once more. A
            // fresh backend can get stuck again (seen once in CI under load: the second boot's
            // agent listened and no connection was relayed for 240 s), so up to
            // MAX_BOOTS boots, each with a third of the timeout while another may follow.
            let may_reboot =
                boots < MAX_BOOTS && matches!(address, VsockAddress::HybridVsock { .. });
            let remaining = timeout.saturating_sub(t0.elapsed());
            let budget = if may_reboot {
                (timeout / 3).min(remaining)
            } else {
                remaining
            }
            .max(Duration::from_secs(1));
            let answered = tokio::select! {
                r = crate::ready::wait_answering(&address, budget) => r,
                how = self.wait_exit() => {
                    return Err(Error::VmExited { how, console: self.console_tail(CONSOLE_LINES_IN_ERRORS) });
                }
            };
            let answered = match answered {
                // A test's fault: this boot's agent counts as silent (forces another boot).
                Ok(()) if may_reboot && fault::take_silent_boot(&self.id) => {
                    Err(crate::ready::NotAnswering {
                        detail: "silent by a test's fault injection".into(),
                        permanent: false,
                    })
                }
                other => other,
            };
            let silent = match answered {
                Ok(()) => {
                    tracing::debug!(sandbox_id = %self.id, waited = ?t0.elapsed(), boots, "the agent's port answers");
                    return Ok(());
                }
                Err(e) => e,
            };
            if may_reboot && !silent.permanent && t0.elapsed() + Duration::from_secs(5) < timeout {
                // Only a guest that idles gains from a fresh boot (a stuck backend); one that
                // runs or waits for a CPU is still booting on a loaded host: wait on.
                let qemu = self.pids().first().copied();
                if let Some(pid) = qemu {
                    if busy::watch(pid).await == Some(false) {
                        tracing::info!(sandbox_id = %self.id, waited = ?t0.elapsed(), boots, detail = %silent.detail, "the agent has not answered yet; the guest is still working or waiting for a CPU, so it is not booted again");
                        continue;
                    }
                }
                tracing::warn!(sandbox_id = %self.id, waited = ?t0.elapsed(), boots, detail = %silent.detail, "the agent has not answered though the VM runs; booting the VM once more (the vsock backend may be stuck)");
                self.reboot_fresh().await?;
                boots += 1;
                continue;
            }
            return Err(Error::AgentNotReady {
                after: timeout,
                detail: if boots > 1 {
                    format!("{}; the VM was booted {boots} times", silent.detail)
                } else {
                    silent.detail
                },
                console: self.console_tail(CONSOLE_LINES_IN_ERRORS),
            });
        }
    }

    fn set_reboot_hook(&self, hook: crate::hypervisor::RebootHook) {
        *self.reboot_hook.lock().unwrap() = Some(hook);
    }

    async fn stop(&self) -> Result<()> {
        let mut run = self.running.lock().await;
        if self.detached.load(Ordering::SeqCst) {
            return Ok(());
        }
        let how = run.qemu.as_ref().and_then(Supervised::exited);
        self.cleanup(&mut run).await;
        self.set_state(VmState::Stopped(how.unwrap_or_else(|| "stopped".into())));
        Ok(())
    }

    fn stop_now(&self) {
        if self.detached.load(Ordering::SeqCst) {
            return;
        }
        let killers = std::mem::take(&mut *self.killers.lock().unwrap());
        Killer::kill_all(&killers, KILL_WAIT);
        *self.qmp.lock().unwrap() = None;
        self.release_rootless();
        self.remove_vm_dir();
        self.pids.lock().unwrap().clear();
        *self.saved.lock().unwrap() = None;
        if !killers.is_empty() {
            tracing::debug!(sandbox_id = %self.id, pids = ?killers.iter().map(Killer::pid).collect::<Vec<_>>(), "QEMU killed");
        }
        self.set_state(VmState::Stopped("killed".into()));
    }

    async fn pause(&self) -> Result<()> {
        let qmp = self.qmp_or_err()?;
        if self.vhost_user_vsock() {
            // What the agent's connections wrote last reaches the backend's ring thread
            // before QEMU stops the rings (see VHOST_USER_SETTLE).
            tokio::time::sleep(VHOST_USER_SETTLE).await;
        }
        qmp.stop().await?;
        self.set_state(VmState::Paused);
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.qmp_or_err()?.cont().await?;
        if self.vhost_user_vsock() {
            // QEMU answers `cont` once it has sent the ring setup, not once the backend has
            // applied it: host traffic before that is fatal to the backend's ring thread.
            tokio::time::sleep(VHOST_USER_SETTLE).await;
        }
        self.set_state(VmState::Running);
        Ok(())
    }

    async fn add_device(&self, device: DeviceConfig) -> Result<GuestAddress> {
        let mut run = self.running.lock().await;
        let r = self.hotplug(&mut run, device).await;
        self.publish(&run);
        r
    }

    async fn device_address(&self, id: &str) -> Result<GuestAddress> {
        hotplug::pci_address(&*self.qmp_or_err()?, id).await
    }

    async fn remove_device(&self, device: &DeviceConfig) -> Result<()> {
        match device {
            DeviceConfig::Vfio(v) => {
                let qmp = self.qmp_or_err()?;
                let mut run = self.running.lock().await;
                let ports = run
                    .ports
                    .as_mut()
                    .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
                let r = hotplug::detach_vfio(&qmp, ports, &v.id).await;
                self.publish(&run);
                r
            }
            DeviceConfig::VfioAp(a) => vfio_ap::detach(&*self.qmp_or_err()?, &a.id).await,
            DeviceConfig::Block(b) => {
                let qmp = self.qmp_or_err()?;
                let mut run = self.running.lock().await;
                let run = &mut *run;
                let ports = run
                    .ports
                    .as_mut()
                    .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
                let r = hotplug::detach(&qmp, ports, &mut run.blocks, &b.id).await;
                self.publish(run);
                r
            }
            DeviceConfig::Net(n) => {
                let qmp = self.qmp_or_err()?;
                let mut run = self.running.lock().await;
                let ports = run
                    .ports
                    .as_mut()
                    .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
                let r = hotplug::detach_net(&qmp, ports, &n.id).await;
                self.publish(&run);
                r
            }
            other => Err(Error::Unsupported {
                backend: "qemu",
                what: format!("hot-unplugging {} devices yet", other.kind_name()),
            }),
        }
    }

    async fn resize_vcpus(&self, vcpus: u32) -> Result<u32> {
        let mut run = self.running.lock().await;
        let qmp = run
            .qmp
            .clone()
            .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
        let limits = resize::VcpuLimits {
            tcg_unplug_bug: resize::tcg_unplug_bug(
                run.accelerator == Some(Accelerator::Tcg),
                qmp.qemu_version(),
            ),
            ..resize::VcpuLimits::for_config(&self.config)
        };
        let r = resize::resize_vcpus(&qmp, &mut run.resize, limits, vcpus).await;
        self.publish(&run);
        r
    }

    async fn resize_memory(&self, mib: u32) -> Result<u32> {
        let mut run = self.running.lock().await;
        let qmp = run
            .qmp
            .clone()
            .ok_or_else(|| Error::NotRunning(self.state().to_string()))?;
        let max = match run.resize.max_memory_mib {
            0 => resize::max_memory_mib(&self.config, host_memory_mib()),
            max => max,
        };
        if self.config.enable_virtio_mem {
            let region = virtio_mem::region_mib(&self.config, max);
            let r = virtio_mem::resize(&qmp, &self.config, region, mib, virtio_mem::PLUG_WAIT);
            return r.await;
        }
        let limits = resize::MemoryLimits {
            tcg_unplug_bug: resize::tcg_unplug_bug(
                run.accelerator == Some(Accelerator::Tcg),
                qmp.qemu_version(),
            ),
            ..resize::MemoryLimits::new(&self.config, max)
        };
        let r = resize::resize_memory(&qmp, &mut run.resize, &limits, mib).await;
        self.publish(&run);
        r
    }

    fn agent_address(&self) -> Result<VsockAddress> {
        self.agent
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::NotRunning(self.state().to_string()))
    }

    fn pids(&self) -> Vec<u32> {
        self.pids.lock().unwrap().clone()
    }

    fn accelerator(&self) -> Option<Accelerator> {
        *self.accelerator.lock().unwrap()
    }

    fn capabilities(&self) -> Capabilities {
        capabilities_for(&self.config)
    }

    fn state(&self) -> VmState {
        let s = self.state.lock().unwrap().clone();
        if matches!(s, VmState::Running | VmState::Paused) {
            if let Some(rx) = self.exit.lock().unwrap().as_ref() {
                if let Some(how) = rx.borrow().clone() {
                    return VmState::Stopped(how);
                }
            }
        }
        s
    }

    fn save_state(&self) -> HypervisorState {
        let agent = self.agent.lock().unwrap().clone();
        match self.saved.lock().unwrap().clone() {
            Some(qs) => qs.into_saved(&self.vm_dir, agent),
            None => HypervisorState {
                backend: HypervisorType::Qemu,
                vm_dir: self.vm_dir.clone(),
                agent_address: agent,
                backend_state: serde_json::Value::Null,
            },
        }
    }

    fn console_tail(&self, n: usize) -> Vec<String> {
        self.console.tail_lines(n)
    }

    async fn detach(&self) -> Result<()> {
        let mut run = self.running.lock().await;
        if self.detached.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Dropping the QMP connection frees QEMU's monitor for the next owner.
        run.qmp = None;
        // The uid stays claimed: the next owner's state names it.
        *self.rootless.lock().unwrap() = None;
        *self.qmp.lock().unwrap() = None;
        self.killers.lock().unwrap().clear();
        if let Some(p) = run.qemu.take() {
            p.detach();
        }
        if let Some(b) = run.vsock_backend.take() {
            b.detach();
        }
        // Closing the console connection frees it for the next owner; QEMU drops what the
        // guest writes meanwhile.
        run.console = None;
        *self.console_done.lock().unwrap() = None;
        *self.exit.lock().unwrap() = None;
        tracing::info!(sandbox_id = %self.id, pids = ?self.pids(), "QEMU detached: it runs on");
        self.set_state(VmState::Stopped(
            "detached: the VM runs on without this handle".into(),
        ));
        Ok(())
    }

    async fn wait_exit(&self) -> String {
        let rx = self.exit.lock().unwrap().clone();
        let Some(mut rx) = rx else {
            return "never started".into();
        };
        let how = loop {
            if let Some(how) = rx.borrow().clone() {
                break how;
            }
            if rx.changed().await.is_err() {
                break "VM stopped".into();
            }
        };
        // Whoever reports the end reads the console next: let its last lines arrive.
        self.drain_console().await;
        how
    }
}

/// What a rootless QEMU is handed and how its child drops to `user`: the `listen` sockets
/// bound, the vhost-user sockets (vsock backend, virtiofsd) connected; private nodes for the
/// devices QEMU opens itself — `/dev/kvm` when the detected accelerator is KVM, vhost-net when
/// NICs use it, vhost-vsock when the guest's vsock is the kernel's.
fn rootless_launch(
    user: &rootless::RootlessState,
    vm_dir: &Path,
    listen: [&Path; 2],
    vsock: &VsockDevice,
    devices: &[DeviceConfig],
    accelerator: Accelerator,
    vhost_net: bool,
) -> Result<(rootless::HandedFds, rootless::RootlessLaunch)> {
    let mut connect: Vec<&Path> = Vec::new();
    let mut nodes: Vec<&Path> = Vec::new();
    match vsock {
        VsockDevice::VhostUser { socket } => connect.push(socket),
        VsockDevice::VhostVsock { .. } => nodes.push(Path::new("/dev/vhost-vsock")),
    }
    for d in devices {
        if let DeviceConfig::ShareFs(fs) = d {
            if let Some(socket) = &fs.vhost_user_socket {
                connect.push(socket);
            }
        }
    }
    if accelerator == Accelerator::Kvm {
        nodes.push(Path::new("/dev/kvm"));
    }
    if vhost_net {
        nodes.push(Path::new(cmdline::VHOST_NET_DEVICE));
    }
    let handed = rootless::HandedFds::open(vm_dir, &listen, &connect)?;
    let launch = rootless::RootlessLaunch::new(user, vm_dir, &nodes)?;
    Ok((handed, launch))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| Error::io(format!("creating VM directory {}", dir.display()), e))
}

fn host_memory_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(4096)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
