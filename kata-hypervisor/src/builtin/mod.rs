//! The built-in backend (`[hypervisor.dragonball]`, cargo feature `builtin`): the VM runs inside
//! this process on [`kata_vmm`] — no VMM process, nothing to kill by pid. [`Hypervisor::stop`]
//! and [`Hypervisor::stop_now`] end the VM's vCPU and device threads and join them.
//!
//! What it does today: boots the configured (or `make guest`'s) kernel and initramfs with
//! `default_vcpus` and `default_memory`, `kernel_params` appended; cold-plugs the block devices
//! given to [`Hypervisor::prepare`] as virtio-blk (virtio-mmio); serves the agent over hybrid
//! vsock on `<vm_dir>/kata.hvsock` (the agent client's `CONNECT`/`OK`); serves the share
//! itself with inline virtio-fs (`shared_fs = "inline-virtio-fs"`, Kata's default for this
//! section: fuse-backend-rs' passthrough filesystem in this process, no virtiofsd); takes the
//! pod network as virtio-net NICs on the taps kata-resource made (their open queues); puts its
//! vCPU and device threads in the sandbox's host cgroup ([`Hypervisor::in_process_threads`]);
//! gives the guest a virtio console (`console=hvc0`, the agent's stdio) beside the serial port,
//! and [`Hypervisor::console_tail`] reads it; cold-plugs VFIO PCI functions, each behind a PCIe
//! root port of its own with `cold_plug_vfio = "root-port"` (the first at guest path `01/00`)
//! or on the VMM's PCI root bus (`01`) ([`Hypervisor::device_address`] tells the agent), see
//! `kata_vmm::devices::vfio`.
//! With `hot_plug_vfio = "root-port"` it has `pcie_root_port` spare root ports and hot-plugs
//! VFIO functions into them while the VM runs ([`Hypervisor::add_device`], guest path
//! `0n/00`; [`Hypervisor::remove_device`] waits for the guest's pciehp to release the slot),
//! see `hotplug`.
//! With `enable_virtio_mem = true` the VM grows (and shrinks) its memory through a virtio-mem
//! device up to `default_maxmemory` ([`Hypervisor::resize_memory`], see `resize`). With
//! `reclaim_guest_freed_memory = true` it has a virtio-balloon with free page reporting: the
//! pages the guest frees go back to the host.
//! vCPUs grow up to `default_maxvcpus` without ACPI: the VM starts with that many, the ones
//! above `default_vcpus` parked until the guest onlines them ([`Hypervisor::resize_vcpus`],
//! see `resize`); taken back once the guest has taken them offline (the agent's `OfflineCPUs`,
//! a kata-rs extension kata-sandbox calls first), which parks them again.
//! With `[factory] enable_template` sandboxes start restored from a template VM saved by
//! kata-vmm's snapshot instead of booting (see `template`).
//! With `block_device_driver = "virtio-blk-pci"` and `pcie_root_port` it hot-plugs disks as
//! virtio-blk on virtio-pci into the same spare root ports (see `blk_hotplug`); with
//! `pcie_root_port` it hot-plugs NICs (interfaces added to the pod after boot) as virtio-net
//! on virtio-pci into them too (see `net_hotplug`).
//! What it does not: hot-plug of other devices (and of VFIO without spare ports: refused
//! naming the device and the keys), VFIO MSI-X (MSI and INTx work), pause, hand-over to another process. It refuses to start where [`crate::kvm::probe_builtin_vmm`] says this host's KVM
//! cannot run it, with the probe's reason.

mod blk_hotplug;
mod hotplug;
mod net_hotplug;
mod resize;
mod settings;
mod template;
mod vfio;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use kata_vmm::devices::legacy::ConsoleSink;
use kata_vmm::devices::virtio::block::BlockConfig;
use kata_vmm::devices::virtio::net::device::parse_mac;
use kata_vmm::devices::virtio::net::NetConfig;
use kata_vmm::vm::{BalloonConfig, ExitWatcher, Vm, VmBuilder};

use crate::backend::host::{check, CheckStatus, HostCheck, HostProbe};
use crate::config::{GuestManifest, HypervisorConfig, HypervisorType, SharedFs};
use crate::console::printable_lines;
use crate::device::{DeviceConfig, GuestAddress, NetDevice, VfioDevice, VsockAddress};
use crate::error::{Error, Result};
use crate::hypervisor::{Capabilities, Hypervisor, HypervisorState, VmState};
use crate::kvm::Accelerator;

pub(crate) use settings::setting_use;

/// The agent's vsock port.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The hybrid vsock socket's name in the VM directory.
pub const VSOCK_SOCKET: &str = "kata.hvsock";
/// The kernel parameters the backend passes before `kernel_params` (the VMM adds its own
/// `reboot=k panic=1 pci=off` and the virtio-mmio devices). The kernel prints on both consoles
/// and `/dev/console` (the agent's stdio, its log lines) is the last, `hvc0`: the virtio
/// console, whose output costs no VM exit per byte; the serial port keeps the boot's first
/// lines in case the virtio console never comes up.
pub const BASE_KERNEL_PARAMS: &str = "console=ttyS0 console=hvc0 tsc=reliable no_timer_check \
rcupdate.rcu_expedited=1 cryptomgr.notests net.ifnames=0";
const NAME: &str = "dragonball";
const LOG_LINES_IN_ERRORS: usize = 20;
/// The most guest console lines logged at agent-ready with `enable_debug`.
const CONSOLE_LINES_LOGGED: usize = 400;

/// What the built-in backend can do with `config`: memory hot-plug, and giving memory back,
/// when it gives the VM a virtio-mem device (`enable_virtio_mem`, `default_maxmemory` above
/// `default_memory`); vCPU growth when it has parked vCPUs (`default_maxvcpus` above
/// `default_vcpus`, see `resize::max_vcpus`).
pub fn capabilities(config: &HypervisorConfig) -> Capabilities {
    let virtio_mem = resize::hotplug_mib(config, resize::host_memory_mib()) > 0;
    let parked_vcpus = resize::max_vcpus(config, crate::config::host_cpus()) > config.default_vcpus;
    Capabilities {
        backend: Some(HypervisorType::Dragonball),
        // Disks hot-plugged as virtio-blk-pci onto spare root ports (blk_hotplug).
        block_hotplug: blk_hotplug::enabled(config),
        cpu_hotplug: parked_vcpus,
        // No ACPI eject: the guest takes the CPUs offline through the agent, then
        // resize_vcpus parks their vCPUs (resize).
        cpu_offline_by_agent: parked_vcpus,
        memory_hotplug: virtio_mem,
        memory_shrink: virtio_mem,
        vfio: true,
        hybrid_vsock: true,
        shared_fs: vec![SharedFs::InlineVirtioFs, SharedFs::None],
        shared_fs_note: "the built-in VMM serves the share itself (inline virtio-fs, no \
                         virtiofsd); for virtio-fs with a virtiofsd use [hypervisor.qemu]"
            .into(),
        hand_over: false,
        guest_on_host: false,
    }
}

/// The built-in backend's host checks: the KVM probe and the guest image.
pub(crate) fn host_checks(config: &HypervisorConfig, probe: &HostProbe) -> Vec<HostCheck> {
    let kvm = crate::kvm::probe_builtin_vmm();
    vec![
        check(
            "hypervisor",
            CheckStatus::Ok,
            "dragonball: the built-in VMM (kata-vmm, in this process)",
        ),
        check(
            "built-in VMM",
            if kvm.usable {
                CheckStatus::Ok
            } else {
                CheckStatus::Fail
            },
            kvm.reason,
        ),
        crate::backend::host::guest_image(config, probe),
    ]
}

/// A VM of the built-in VMM.
pub struct Builtin {
    id: String,
    config: HypervisorConfig,
    vm_dir: PathBuf,
    disks: Mutex<Vec<BlockConfig>>,
    nics: Mutex<Vec<NetConfig>>,
    /// VFIO functions hot-plugged into spare root or switch ports, with their guest paths.
    hot_vfio: hotplug::HotVfio,
    /// Disks hot-plugged into spare root ports, with their ports' slots (blk_hotplug).
    hot_disks: blk_hotplug::HotDisks,
    /// NICs hot-plugged into spare root ports, with their ports' slots (net_hotplug).
    hot_nics: net_hotplug::HotNics,
    /// Cold-plugged VFIO functions, in slot order (`00:01.0`, ...).
    vfio: Mutex<Vec<VfioDevice>>,
    shares: Mutex<Vec<(String, PathBuf)>>,
    vm: Mutex<Option<Vm>>,
    watcher: Mutex<Option<ExitWatcher>>,
    console: Mutex<Option<ConsoleSink>>,
    /// The virtio console's (`hvc0`): the guest's console once its driver is up.
    hvc: Mutex<Option<ConsoleSink>>,
    /// The vCPUs granted to the running VM (booted and parked: `resize::resize_vcpus`).
    vcpus: Mutex<Option<resize::VcpuGrant>>,
    state: Mutex<VmState>,
}

impl std::fmt::Debug for Builtin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builtin")
            .field("id", &self.id)
            .field("vm_dir", &self.vm_dir)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Builtin {
    /// A VM named `id` whose socket lives in `vm_dir`. Refuses settings it cannot honour.
    pub fn new(id: &str, config: HypervisorConfig, vm_dir: &Path) -> Result<Builtin> {
        config.check_refused(HypervisorType::Dragonball)?;
        capabilities(&config).check_shared_fs(config.shared_fs)?;
        vfio::check_ports(&config)?;
        if config.default_vcpus == 0 || config.default_vcpus > 32 {
            return Err(Error::InvalidConfig {
                key: "default_vcpus",
                value: config.default_vcpus.to_string(),
                reason: "the built-in VMM boots 1 to 32 vCPUs".into(),
            });
        }
        resize::check_max_vcpus(&config)?;
        // VM templating (`enable_template`): what a snapshot cannot hold is refused now.
        template::check_config(&config)?;
        Ok(Builtin {
            id: id.to_string(),
            config,
            vm_dir: vm_dir.to_path_buf(),
            disks: Mutex::new(Vec::new()),
            nics: Mutex::new(Vec::new()),
            hot_vfio: hotplug::HotVfio::default(),
            vfio: Mutex::new(Vec::new()),
            hot_disks: blk_hotplug::HotDisks::default(),
            hot_nics: net_hotplug::HotNics::default(),
            shares: Mutex::new(Vec::new()),
            vm: Mutex::new(None),
            watcher: Mutex::new(None),
            console: Mutex::new(None),
            hvc: Mutex::new(None),
            vcpus: Mutex::new(None),
            state: Mutex::new(VmState::New),
        })
    }

    fn uds(&self) -> PathBuf {
        self.vm_dir.join(VSOCK_SOCKET)
    }

    /// The kernel and initramfs: the configuration, else the guest manifest.
    fn guest_files(&self) -> Result<(PathBuf, Option<PathBuf>)> {
        let c = &self.config;
        let manifest = if c.kernel.is_empty() || c.initrd.is_empty() {
            Some(GuestManifest::load_default()?)
        } else {
            None
        };
        let pick = |configured: &str, from: fn(&GuestManifest) -> PathBuf| {
            if configured.is_empty() {
                manifest.as_ref().map(from).unwrap_or_default()
            } else {
                PathBuf::from(configured)
            }
        };
        let kernel = pick(&c.kernel, |m| m.kernel.clone());
        let initrd = pick(&c.initrd, |m| m.initrd.clone());
        for (what, p) in [("guest kernel", &kernel), ("guest initrd", &initrd)] {
            if !p.is_file() {
                return Err(Error::MissingFile {
                    what,
                    path: p.clone(),
                    hint: format!(
                        "{}; or fix the path in [hypervisor.dragonball]",
                        crate::config::guest_image_hint()
                    ),
                });
            }
        }
        Ok((kernel, Some(initrd)))
    }

    /// The kernel command line after the VMM's own parameters.
    pub fn kernel_cmdline(config: &HypervisorConfig) -> String {
        let mut s = String::from(BASE_KERNEL_PARAMS);
        if !config.enable_debug {
            s.push_str(" quiet");
        }
        if !config.kernel_params.trim().is_empty() {
            s.push(' ');
            s.push_str(config.kernel_params.trim());
        }
        s
    }

    fn builder(&self) -> Result<VmBuilder> {
        self.builder_with(self.uds(), lock(&self.shares).clone())
    }

    /// [`Builtin::builder`] with the vsock on `uds` and these shares (the template VM's own:
    /// see `template`).
    fn builder_with(&self, uds: PathBuf, shares: Vec<(String, PathBuf)>) -> Result<VmBuilder> {
        let (kernel, initrd) = self.guest_files()?;
        let mut b = VmBuilder::new(kernel)
            .name(format!("kata-{}", self.id))
            .vcpus(self.config.default_vcpus as u8)
            .max_vcpus(resize::max_vcpus(&self.config, crate::config::host_cpus()) as u8)
            .memory_mib(u64::from(self.config.default_memory))
            .cmdline(Self::kernel_cmdline(&self.config))
            .vsock(uds)
            .virtio_console(true)
            .hotplug_memory_mib(resize::hotplug_mib(&self.config, resize::host_memory_mib()));
        if let Some(i) = initrd {
            b = b.initramfs(i);
        }
        if self.config.reclaim_guest_freed_memory {
            b = b.balloon(BalloonConfig {
                free_page_reporting: true,
            });
        }
        for d in lock(&self.disks).iter() {
            b = b.block(d.clone());
        }
        for (tag, dir) in shares {
            b = b.fs(tag, dir);
        }
        for nic in lock(&self.nics).iter() {
            b = b.net(nic.clone());
        }
        for v in lock(&self.vfio).iter() {
            b = b.vfio(vfio::vmm_config(&self.config, v));
        }
        b = b.spare_root_ports(hotplug::spare_ports(&self.config));
        b = b.spare_switch_ports(vfio::spare_switch_ports(&self.config));
        b = b.spare_bridge_slots(vfio::spare_bridge_slots(&self.config));
        Ok(b)
    }

    fn set_state(&self, s: VmState) {
        *lock(&self.state) = s;
    }

    fn remove_vm_dir(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.vm_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.vm_dir.display(), error = %e, "removing the VM directory");
            }
        }
    }

    /// Ends the VM's threads (joined) and removes its directory.
    fn end(&self) -> Option<String> {
        let vm = lock(&self.vm).take();
        let how = vm.map(|mut vm| vm.stop().to_string());
        self.remove_vm_dir();
        how
    }

    fn stopped(&self, how: Option<String>) {
        *lock(&self.vcpus) = None;
        self.set_state(VmState::Stopped(how.unwrap_or_else(|| "stopped".into())));
    }
}

#[async_trait]
impl Hypervisor for Builtin {
    fn kind(&self) -> HypervisorType {
        HypervisorType::Dragonball
    }

    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, devices: Vec<DeviceConfig>) -> Result<()> {
        if self.config.factory.enable_template {
            template::check_devices(&devices)?;
        }
        let mut disks = Vec::new();
        let mut nics = Vec::new();
        let mut shares = Vec::new();
        let mut functions = Vec::new();
        for d in devices {
            match d {
                DeviceConfig::Block(b) => disks.push(BlockConfig {
                    path: b.path.clone(),
                    read_only: b.read_only,
                    id: Some(b.id.chars().take(20).collect()),
                }),
                DeviceConfig::Net(n) => nics.push(net_config(&n)?),
                DeviceConfig::Vfio(v) => functions.push(v),
                DeviceConfig::ShareFs(s) if s.kind == SharedFs::InlineVirtioFs => {
                    shares.push((s.mount_tag.clone(), s.host_path.clone()))
                }
                DeviceConfig::ShareFs(s) => {
                    return Err(Error::Unsupported {
                        backend: NAME,
                        what: format!(
                            "the shared filesystem {} ({}): the built-in VMM serves only \
                             inline-virtio-fs (set shared_fs = \"inline-virtio-fs\") or use \
                             [hypervisor.qemu]",
                            s.mount_tag, s.kind
                        ),
                    })
                }
                other => {
                    return Err(Error::Unsupported {
                        backend: NAME,
                        what: format!(
                            "device {} (block devices, NICs, shares and VFIO PCI functions are \
                             built in: no VFIO-AP)",
                            other.id()
                        ),
                    })
                }
            }
        }
        *lock(&self.disks) = disks;
        *lock(&self.nics) = nics;
        *lock(&self.shares) = shares;
        *lock(&self.vfio) = functions;
        self.set_state(VmState::Prepared);
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        let probe = crate::kvm::probe_builtin_vmm();
        if !probe.usable {
            return Err(Error::StartFailed {
                vmm: "the built-in VMM".into(),
                reason: probe.reason,
                console: Vec::new(),
            });
        }
        // Spare root ports for disk and NIC hot-plug too (blk_hotplug, net_hotplug: one pool
        // with VFIO's).
        let builder = self
            .builder()?
            .spare_root_ports(blk_hotplug::spare_ports(&self.config));
        std::fs::create_dir_all(&self.vm_dir)
            .map_err(|e| Error::io(format!("creating {}", self.vm_dir.display()), e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.vm_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("restricting {}", self.vm_dir.display()), e))?;
        }
        // With enable_template the VM is a clone: restored from the template (made first if
        // there is none), under the template's shared lock until the restore is done.
        let template = if self.config.factory.enable_template {
            let ours = match template::BuiltinManifest::of(self) {
                Ok(ours) => ours,
                Err(e) => {
                    self.remove_vm_dir();
                    return Err(e);
                }
            };
            match template::ensure(self, &ours).await {
                Ok(t) => Some(t),
                Err(e) => {
                    self.remove_vm_dir();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let from = template.as_ref().map(|(dir, _)| dir.path().to_path_buf());
        let restored_from = from.clone();
        let started = tokio::task::spawn_blocking(move || match from {
            Some(dir) => builder.restore(&dir),
            None => builder.start(),
        })
        .await
        .map_err(|e| Error::StartFailed {
            vmm: "the built-in VMM".into(),
            reason: format!("the start task failed: {e}"),
            console: Vec::new(),
        })?;
        let vm = match started {
            Ok(vm) => vm,
            Err(e) => {
                self.remove_vm_dir();
                // A template kata-vmm refuses (damaged, of another configuration) is the
                // template_path's to fix.
                let reason = match restored_from {
                    Some(dir) if template::refuses_template(&e) => {
                        return Err(template::refused_template(&dir, &e));
                    }
                    Some(dir) => template::restore_failed(&dir, &e),
                    None => e.to_string(),
                };
                return Err(Error::StartFailed {
                    vmm: "the built-in VMM".into(),
                    reason,
                    console: Vec::new(),
                });
            }
        };
        *lock(&self.watcher) = Some(vm.exit_watcher());
        *lock(&self.console) = Some(vm.console_sink());
        *lock(&self.hvc) = vm.virtio_console();
        *lock(&self.vcpus) = Some(resize::VcpuGrant::new(
            self.config.default_vcpus,
            vm.thread_ids().vcpus.len() as u32,
        ));
        *lock(&self.vm) = Some(vm);
        self.set_state(VmState::Running);
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let address = self.agent_address()?;
        let answered = tokio::select! {
            r = crate::ready::wait_answering(&address, timeout) => r,
            how = self.wait_exit() => {
                return Err(Error::VmExited { how, console: self.console_tail(LOG_LINES_IN_ERRORS) });
            }
        };
        let answered = answered.map_err(|e| Error::AgentNotReady {
            after: timeout,
            detail: e.detail,
            console: self.console_tail(LOG_LINES_IN_ERRORS),
        });
        // With `enable_debug` the guest's boot log (kernel timestamps included) is logged once
        // the agent answers, as QEMU's console lines are: the console is a ring in memory,
        // not a stream, so it comes in one go.
        if answered.is_ok() && self.config.enable_debug {
            for line in self.console_tail(CONSOLE_LINES_LOGGED) {
                tracing::debug!(sandbox_id = %self.id, "console: {line}");
            }
        }
        answered
    }

    async fn stop(&self) -> Result<()> {
        // Joining the threads blocks (briefly): off the async worker.
        let vm = lock(&self.vm).take();
        let how = match vm {
            Some(mut vm) => tokio::task::spawn_blocking(move || vm.stop().to_string())
                .await
                .ok(),
            None => None,
        };
        self.remove_vm_dir();
        self.stopped(how);
        Ok(())
    }

    fn stop_now(&self) {
        let how = self.end();
        self.stopped(how);
    }

    async fn pause(&self) -> Result<()> {
        Err(Error::Unsupported {
            backend: NAME,
            what: "pausing the VM".into(),
        })
    }

    async fn resume(&self) -> Result<()> {
        Err(Error::Unsupported {
            backend: NAME,
            what: "resuming the VM".into(),
        })
    }

    async fn add_device(&self, device: DeviceConfig) -> Result<GuestAddress> {
        // Spare root ports made for disks alone (blk_hotplug) do not turn VFIO hot-plug on.
        if let (DeviceConfig::Vfio(v), crate::device::PciePort::NoPort) =
            (&device, self.config.hot_plug_vfio)
        {
            return Err(vfio::hot_plug_refused(v));
        }
        if let DeviceConfig::Vfio(v) = &device {
            let handle = lock(&self.vm).as_ref().and_then(|vm| vm.vfio_hotplug());
            if handle.is_none()
                && (hotplug::spare_ports(&self.config) > 0
                    || self.config.hot_plug_vfio == crate::device::PciePort::SwitchPort
                    || self.config.hot_plug_vfio == crate::device::PciePort::BridgePort)
            {
                return Err(Error::NotRunning(self.state().to_string()));
            }
            // Recorded in hot_vfio by the plug's own task (even if this call is dropped).
            let plugged = hotplug::add(&self.config, handle, self.hot_vfio.clone(), v).await?;
            return hotplug::guest_path(&v.id, &plugged.path);
        }
        if let DeviceConfig::Block(d) = &device {
            // A disk: virtio-blk-pci onto a spare root port (blk_hotplug).
            if let Some(e) = blk_hotplug::refusal(&self.config, d) {
                return Err(e);
            }
            let handle = lock(&self.vm).as_ref().and_then(|vm| vm.virtio_hotplug());
            let Some(handle) = handle else {
                return Err(Error::NotRunning(self.state().to_string()));
            };
            // Recorded in hot_disks by the plug's own task (even if this call is dropped).
            let plugged = blk_hotplug::add(&self.config, handle, self.hot_disks.clone(), d).await?;
            return blk_hotplug::guest_path(&d.id, plugged.port_slot);
        }
        if let DeviceConfig::Net(n) = &device {
            // A NIC: virtio-net-pci onto a spare root port (net_hotplug).
            if let Some(e) = net_hotplug::refusal(&self.config, n) {
                return Err(e);
            }
            let handle = lock(&self.vm).as_ref().and_then(|vm| vm.virtio_hotplug());
            let Some(handle) = handle else {
                return Err(Error::NotRunning(self.state().to_string()));
            };
            // Recorded in hot_nics by the plug's own task (even if this call is dropped).
            let plugged = net_hotplug::add(&self.config, handle, self.hot_nics.clone(), n).await?;
            return blk_hotplug::guest_path(&n.id, plugged.port_slot);
        }
        Err(Error::Unsupported {
            backend: NAME,
            what: format!("hot-plugging device {}", device.id()),
        })
    }

    async fn remove_device(&self, device: &DeviceConfig) -> Result<()> {
        if let DeviceConfig::Block(d) = device {
            // A hot-plugged disk (blk_hotplug): its port is free again once the guest let go.
            let slot = lock(&self.hot_disks)
                .iter()
                .find(|h| h.device.id == d.id)
                .map(|h| h.port_slot);
            let handle = lock(&self.vm).as_ref().and_then(|vm| vm.virtio_hotplug());
            if let (Some(slot), Some(handle)) = (slot, handle) {
                blk_hotplug::remove(handle, d, slot, hotplug::UNPLUG_WAIT).await?;
                lock(&self.hot_disks).retain(|h| h.device.id != d.id);
                return Ok(());
            }
        }
        if let DeviceConfig::Net(n) = device {
            // A hot-plugged NIC (net_hotplug): the VMM's tap descriptor closed, the port free.
            let slot = lock(&self.hot_nics)
                .iter()
                .find(|h| h.device.id == n.id)
                .map(|h| h.port_slot);
            let handle = lock(&self.vm).as_ref().and_then(|vm| vm.virtio_hotplug());
            if let (Some(slot), Some(handle)) = (slot, handle) {
                blk_hotplug::remove(handle, n, slot, hotplug::UNPLUG_WAIT).await?;
                lock(&self.hot_nics).retain(|h| h.device.id != n.id);
                return Ok(());
            }
        }
        if let DeviceConfig::Vfio(v) = device {
            let hot = lock(&self.hot_vfio).iter().any(|h| h.device.id == v.id);
            let handle = lock(&self.vm).as_ref().and_then(|vm| vm.vfio_hotplug());
            if let (true, Some(handle)) = (hot, handle) {
                hotplug::remove(handle, v, hotplug::UNPLUG_WAIT).await?;
                lock(&self.hot_vfio).retain(|h| h.device.id != v.id);
                return Ok(());
            }
        }
        Err(Error::Unsupported {
            backend: NAME,
            what: format!("hot-unplugging device {}", device.id()),
        })
    }

    async fn device_address(&self, id: &str) -> Result<GuestAddress> {
        // A hot-plugged disk (blk_hotplug).
        if let Some(address) = blk_hotplug::address(&lock(&self.hot_disks), id) {
            return address;
        }
        // A hot-plugged NIC (net_hotplug).
        if let Some(address) = blk_hotplug::address(&lock(&self.hot_nics), id) {
            return address;
        }
        let hot = lock(&self.hot_vfio)
            .iter()
            .find(|h| h.device.id == id)
            .map(|h| h.path.clone());
        if let Some(path) = hot {
            return hotplug::guest_path(id, &path);
        }
        vfio::address(&self.config, &lock(&self.vfio), id)
    }

    async fn resize_vcpus(&self, vcpus: u32) -> Result<u32> {
        let (before, granted) = match lock(&self.vcpus).as_mut() {
            Some(grant) => (grant.granted, resize::resize_vcpus(grant, vcpus)?),
            None if vcpus <= self.config.default_vcpus => return Ok(self.config.default_vcpus),
            None => return Err(Error::NotRunning(self.state().to_string())),
        };
        let n = u8::try_from(granted).unwrap_or(u8::MAX);
        if let Some(vm) = lock(&self.vm).as_ref() {
            if granted < before {
                // Taken back: the vCPUs above the grant park (the guest took their CPUs
                // offline first, asked by kata-sandbox through the agent). One slow to
                // leave KVM_RUN parks when it next exits: the grant stands.
                if let Err(e) = vm.revoke_vcpus(n) {
                    tracing::warn!(error = %e, "built-in VMM: a revoked vCPU parks late");
                }
            } else {
                // The parked vCPUs granted may now run: the guest can online them (the
                // agent's OnlineCPUMem that follows), and no others.
                vm.grant_vcpus(n);
            }
        }
        Ok(granted)
    }

    async fn resize_memory(&self, mib: u32) -> Result<u32> {
        let handle = match lock(&self.vm).as_ref() {
            Some(vm) => vm.memory_hotplug(),
            None if mib <= self.config.default_memory => return Ok(self.config.default_memory),
            None => return Err(Error::NotRunning(self.state().to_string())),
        };
        resize::resize_memory(handle, &self.config, mib, resize::PLUG_WAIT).await
    }

    fn agent_address(&self) -> Result<VsockAddress> {
        Ok(VsockAddress::HybridVsock {
            uds: self.uds(),
            port: AGENT_VSOCK_PORT,
        })
    }

    fn pids(&self) -> Vec<u32> {
        // In-process: no VMM process of its own, and the runtime's own pid must never be put
        // in (or killed with) a sandbox's cgroup.
        Vec::new()
    }

    fn in_process_threads(&self) -> (Vec<u32>, Vec<u32>) {
        lock(&self.vm)
            .as_ref()
            .map(|vm| {
                let ids = vm.thread_ids();
                (ids.vcpus, ids.devices)
            })
            .unwrap_or_default()
    }

    fn accelerator(&self) -> Option<Accelerator> {
        Some(Accelerator::Kvm)
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(&self.config)
    }

    fn state(&self) -> VmState {
        lock(&self.state).clone()
    }

    fn save_state(&self) -> HypervisorState {
        HypervisorState {
            backend: HypervisorType::Dragonball,
            vm_dir: self.vm_dir.clone(),
            agent_address: self.agent_address().ok(),
            backend_state: serde_json::json!({ "in_process": true, "pid": std::process::id() }),
        }
    }

    fn console_tail(&self, n: usize) -> Vec<String> {
        // The virtio console once the guest wrote on it (it has the kernel's log from the start,
        // replayed when `hvc0` registers, and the agent's lines), else the serial port's.
        let hvc = lock(&self.hvc)
            .as_ref()
            .map(|c| c.contents())
            .filter(|bytes| !bytes.is_empty());
        let bytes = hvc.or_else(|| lock(&self.console).as_ref().map(|c| c.contents()));
        bytes.map(|b| printable_lines(&b, n)).unwrap_or_default()
    }

    async fn wait_exit(&self) -> String {
        let watcher = lock(&self.watcher).clone();
        match watcher {
            Some(w) => tokio::task::spawn_blocking(move || w.wait(None))
                .await
                .ok()
                .flatten()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "the VM's exit could not be awaited".into()),
            None => std::future::pending().await,
        }
    }
}

/// A pod NIC as the VMM takes it: the tap's one open queue (kata-resource made the tap in the
/// pod's namespace; this process holds its queue) and the MAC. A NIC without an open queue
/// (the VMM cannot open a tap in another namespace by name), with several, or with a MAC that
/// does not parse is refused naming it.
fn net_config(n: &NetDevice) -> Result<NetConfig> {
    let refuse = |why: String| Error::Unsupported {
        backend: NAME,
        what: format!("NIC {} (tap {}): {why}", n.id, n.tap_name),
    };
    let tap = match n.tap_fds.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(refuse(
                "no open tap queue was handed over: the built-in VMM takes the tap's                  descriptor from kata-resource and never opens a tap by name"
                    .into(),
            ))
        }
        many => {
            return Err(refuse(format!(
                "{} tap queues: the built-in VMM's virtio-net has one queue pair; set                  network_queues = 1",
                many.len()
            )))
        }
    };
    let mac = parse_mac(&n.mac)
        .ok_or_else(|| refuse(format!("the MAC {:?} is not aa:bb:cc:dd:ee:ff", n.mac)))?;
    Ok(NetConfig {
        name: n.tap_name.clone(),
        tap,
        mac,
    })
}

/// An in-process VM ends with the process that ran it: there is nothing to take over.
pub(crate) fn restore_refused(saved: &HypervisorState) -> Error {
    Error::BadState {
        backend: HypervisorType::Dragonball,
        vm_dir: saved.vm_dir.clone(),
        reason: "the built-in VMM ran inside the runtime that started it and ended with it; \
                 nothing is left to take over: clean it up"
            .into(),
    }
}

#[cfg(test)]
mod tests;
