//! A VM assembled from the parts: [`VmBuilder`] checks the configuration and lays the guest
//! out (memory, kernel, initramfs, command line, MP table, devices) with no KVM at all, then
//! [`VmBuilder::start`] creates the KVM VM and runs it: one thread per vCPU (`kata-vcpu-N`)
//! and the event loop thread (`kata-vmm-events`).
//!
//! The VM ends when the guest resets (i8042, `reboot=k`) or triple-faults, when KVM fails, when
//! a vCPU or device thread panics (the panic is caught at the thread's edge and becomes the
//! VM's [`VmExit::Failed`], never the process's end) or when [`Vm::stop`] is called. Ending
//! joins every thread and closes every descriptor (KVM, devices, the vsock socket).
//!
//! ```no_run
//! use kata_vmm::vm::VmBuilder;
//! # fn main() -> kata_vmm::Result<()> {
//! let mut vm = VmBuilder::new("/var/cache/kata-rs/guest/current/vmlinuz")
//!     .initramfs("/var/cache/kata-rs/guest/current/initrd.img")
//!     .memory_mib(256)
//!     .cmdline("console=ttyS0 quiet")
//!     .vsock("/run/vm/kata.hvsock")
//!     .start()?;
//! let exit = vm.wait_exit(Some(std::time::Duration::from_secs(30)));
//! println!("{exit:?}: {}", String::from_utf8_lossy(&vm.console()));
//! vm.stop();
//! # Ok(())
//! # }
//! ```

mod confine;
mod namespace;
mod run;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use confine::{ThreadConfinement, ThreadKind};
pub use namespace::{Sandboxed, ThreadSandbox, DEVICE_CAPABILITIES};
pub use run::{ExitWatcher, Vm, VmExit, VmThreadIds, REVOKE_WAIT};

use crate::devices::legacy::{ConsoleSink, ExitEvent, LegacyBus, SerialConsole, I8042};
use crate::devices::pci::PciBus;
pub use crate::devices::vfio::VfioConfig;
use crate::devices::vfio::VfioSet;
pub use crate::devices::virtio::balloon::BalloonConfig;
use crate::devices::virtio::balloon::{Balloon, BalloonHandle};
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::fs::Fs;
pub use crate::devices::virtio::fs::FsConfig;
use crate::devices::virtio::mem::{Mem, MemConfig, MemHandle};
use crate::devices::virtio::mmio::{MmioSlot, MmioTransport};
use crate::devices::virtio::net::Net;
pub use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::{Vsock, VsockConfig};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::EventFdTrigger;
use crate::error::{Error, Result};
use crate::loader;
use crate::memory::GuestRam;
use crate::vstate::mptable::{self, MAX_VCPUS};
use crate::vstate::regs::{write_descriptor_tables, write_page_tables};
use vmm_sys_util::eventfd::EventFd;

/// What the VMM puts at the front of every command line: the i8042 reset ends the VM
/// (`reboot=k`), a panic reboots (and so ends it), no PCI bus is probed (unless VFIO functions
/// are passed through: then `pci=off` is left out), and the i8042 driver
/// does not probe what the VMM does not emulate.
pub const BASE_CMDLINE: &str =
    "reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The guest CID given to the vsock device.
pub const GUEST_CID: u64 = 3;

/// The console bytes kept by default (the last 64 KiB).
pub const DEFAULT_CONSOLE_CAPACITY: usize = 64 << 10;

/// Everything a VM is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// A name for logs and the memfd (`/proc/<pid>/maps`).
    pub name: String,
    /// vCPUs booted (1 to [`MAX_VCPUS`]).
    pub vcpus: u8,
    /// vCPUs the VM has in all (0: as many as `vcpus`). Those above `vcpus` are present and
    /// parked: listed in the MP table and created, each thread waiting outside `KVM_RUN` until
    /// [`Vm::grant_vcpus`] covers it, while the kernel boots only `vcpus` of them
    /// (`maxcpus=<vcpus>` on its command line); once granted, the guest brings one up by
    /// writing 1 to `/sys/devices/system/cpu/cpuN/online`. [`Vm::revoke_vcpus`] parks granted
    /// ones again (once the guest has taken them offline), and a later grant runs them again.
    pub max_vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The kernel: a bzImage or an ELF vmlinux.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initramfs: Option<PathBuf>,
    /// The kernel command line after [`BASE_CMDLINE`] (the virtio-mmio devices are appended).
    pub cmdline: String,
    /// Disks, in the order the guest sees them (`vda`, `vdb`, ...).
    pub block: Vec<BlockConfig>,
    /// The hybrid vsock's host unix socket (the guest is CID [`GUEST_CID`]).
    pub vsock_uds: Option<PathBuf>,
    /// Directories shared by inline virtio-fs.
    pub fs: Vec<FsConfig>,
    /// NICs on host taps (virtio-net), in the order the guest sees them (`eth0`, ...).
    pub net: Vec<NetConfig>,
    /// How many bytes of the serial console (and of the virtio console) are kept.
    pub console_capacity: usize,
    /// A virtio console (the guest's `hvc0`, for `console=hvc0`), written into a sink of its
    /// own ([`Vm::virtio_console`]).
    pub virtio_console: bool,
    /// Host PCI functions passed through (VFIO, cold-plugged on a PCI bus at `00:01.0`, ...).
    pub vfio: Vec<VfioConfig>,
    /// Empty PCIe root ports for VFIO, disk and NIC hot-plug (after the cold-plugged
    /// functions' slots); [`Vm::vfio_hotplug`] and [`Vm::virtio_hotplug`] plug into them.
    pub spare_root_ports: u8,
    /// Empty downstream ports of a PCIe switch for VFIO hot-plug (after those of the functions
    /// cold-plugged behind the switch); the switch exists when this or such a function does.
    pub spare_switch_ports: u8,
    /// Empty SHPC slots of a PCI-to-PCI bridge for VFIO hot-plug (after those of the functions
    /// cold-plugged on the bridge).
    pub spare_bridge_slots: u8,
    /// MiB of memory the guest can grow by through virtio-mem (0: no hotplug device).
    pub hotplug_memory_mib: u64,
    /// A virtio-balloon (last of the devices), with or without free page reporting.
    pub balloon: Option<BalloonConfig>,
}

/// Builds a [`VmConfig`] and starts the VM.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    config: VmConfig,
}

impl VmBuilder {
    /// A VM booting `kernel`, with one vCPU and 128 MiB.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmBuilder {
            config: VmConfig {
                name: "kata-vm".into(),
                vcpus: 1,
                max_vcpus: 0,
                memory_mib: 128,
                kernel: kernel.into(),
                initramfs: None,
                cmdline: "console=ttyS0".into(),
                block: Vec::new(),
                vsock_uds: None,
                fs: Vec::new(),
                net: Vec::new(),
                console_capacity: DEFAULT_CONSOLE_CAPACITY,
                virtio_console: false,
                vfio: Vec::new(),
                spare_root_ports: 0,
                spare_switch_ports: 0,
                spare_bridge_slots: 0,
                hotplug_memory_mib: 0,
                balloon: None,
            },
        }
    }

    /// From a whole configuration.
    pub fn from_config(config: VmConfig) -> Self {
        VmBuilder { config }
    }

    /// The name (logs, memfd).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The number of vCPUs.
    pub fn vcpus(mut self, vcpus: u8) -> Self {
        self.config.vcpus = vcpus;
        self
    }

    /// The vCPUs the VM has in all, `vcpus` of them booted and the others parked until the
    /// guest onlines them (0: none parked); see [`VmConfig::max_vcpus`].
    pub fn max_vcpus(mut self, max_vcpus: u8) -> Self {
        self.config.max_vcpus = max_vcpus;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.config.memory_mib = mib;
        self
    }

    /// The initramfs.
    pub fn initramfs(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.initramfs = Some(path.into());
        self
    }

    /// The kernel command line (after [`BASE_CMDLINE`]).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.config.cmdline = cmdline.into();
        self
    }

    /// Adds a disk.
    pub fn block(mut self, disk: BlockConfig) -> Self {
        self.config.block.push(disk);
        self
    }

    /// The hybrid vsock's unix socket.
    pub fn vsock(mut self, uds: impl Into<PathBuf>) -> Self {
        self.config.vsock_uds = Some(uds.into());
        self
    }

    /// Shares `dir` with the guest by inline virtio-fs under `tag`.
    pub fn fs(mut self, tag: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.config.fs.push(FsConfig {
            tag: tag.into(),
            shared_dir: dir.into(),
        });
        self
    }

    /// Adds a NIC on an open tap queue (virtio-net).
    pub fn net(mut self, nic: NetConfig) -> Self {
        self.config.net.push(nic);
        self
    }

    /// Adds a virtio console (the guest's `hvc0`); the command line chooses the console
    /// (`console=hvc0`).
    pub fn virtio_console(mut self, on: bool) -> Self {
        self.config.virtio_console = on;
        self
    }

    /// Passes the host PCI function `device` through (VFIO, cold-plugged: the guest finds it
    /// at `00:01.0` for the first, `00:02.0` for the next, ...).
    pub fn vfio(mut self, device: VfioConfig) -> Self {
        self.config.vfio.push(device);
        self
    }

    /// Gives the VM `n` empty PCIe root ports (hot-plug capable slots, after the cold-plugged
    /// functions) for VFIO hot-plug through [`Vm::vfio_hotplug`] and disk and NIC hot-plug
    /// through [`Vm::virtio_hotplug`].
    pub fn spare_root_ports(mut self, n: u8) -> Self {
        self.config.spare_root_ports = n;
        self
    }

    /// Gives the VM's PCIe switch `n` empty downstream ports (hot-plug capable slots, after
    /// those of the functions cold-plugged behind it) for VFIO hot-plug.
    pub fn spare_switch_ports(mut self, n: u8) -> Self {
        self.config.spare_switch_ports = n;
        self
    }

    /// Gives the VM a PCI-to-PCI bridge with `n` empty SHPC slots (after those of the
    /// functions cold-plugged on it) for VFIO hot-plug.
    pub fn spare_bridge_slots(mut self, n: u8) -> Self {
        self.config.spare_bridge_slots = n;
        self
    }

    /// Lets the guest grow by up to `mib` MiB through a virtio-mem device (its hotplug region
    /// is rounded up to whole 128 MiB memory blocks); [`Vm::memory_hotplug`] is its handle.
    pub fn hotplug_memory_mib(mut self, mib: u64) -> Self {
        self.config.hotplug_memory_mib = mib;
        self
    }

    /// Adds a virtio-balloon (the last device); [`Vm::balloon`] is its handle.
    pub fn balloon(mut self, balloon: BalloonConfig) -> Self {
        self.config.balloon = Some(balloon);
        self
    }

    /// How many console bytes are kept.
    pub fn console_capacity(mut self, bytes: usize) -> Self {
        self.config.console_capacity = bytes;
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Checks the configuration and lays the guest out, without KVM: every bad input (too
    /// little memory, a file that is no kernel, a missing disk, a vsock socket that cannot be
    /// bound) fails here, before a VM exists, and leaves nothing behind.
    pub fn prepare(self) -> Result<PreparedVm> {
        self.prepare_from(None)
    }

    /// Starts a VM from the snapshot in `dir` ([`crate::snapshot`], made by [`Vm::snapshot`]
    /// of a VM of this same configuration) instead of booting it: its memory is the snapshot's
    /// memory file mapped private, its vCPUs, chips and devices take the saved state, and its
    /// devices are its own (the vsock socket, the shared directories of this configuration).
    /// A configuration that differs from the snapshot's, or one a snapshot cannot hold, is
    /// refused naming the setting, before a VM exists and leaving nothing behind.
    pub fn restore(self, dir: &Path) -> Result<Vm> {
        let snapshot = crate::snapshot::Snapshot::read(dir)?;
        self.prepare_from(Some((dir, snapshot)))?.start()
    }

    /// [`VmBuilder::prepare`], or for [`VmBuilder::restore`] the same without the boot layout
    /// (the snapshot's memory already holds the running guest).
    fn prepare_from(
        self,
        snapshot: Option<(&Path, crate::snapshot::Snapshot)>,
    ) -> Result<PreparedVm> {
        let c = self.config;
        let snapshot_refusal = snapshot_refusal(&c);
        if let (Some((dir, _)), Some(why)) = (&snapshot, &snapshot_refusal) {
            return Err(Error::Device {
                device: format!("VM {} (restoring snapshot {})", c.name, dir.display()),
                reason: why.clone(),
            });
        }
        let snapshot_refusal =
            snapshot_refusal.or_else(|| crate::snapshot::restored_refusal(snapshot.is_some()));
        if c.vcpus == 0 || c.vcpus > MAX_VCPUS {
            return Err(Error::Device {
                device: format!("VM {}", c.name),
                reason: format!(
                    "{} vCPUs: the built-in VMM boots 1 to {MAX_VCPUS} (default_vcpus)",
                    c.vcpus
                ),
            });
        }
        let max_vcpus = parked_vcpus_max(&c)?;
        if c.hotplug_memory_mib > 0 && !c.vfio.is_empty() {
            return Err(Error::Device {
                device: format!("VM {}", c.name),
                reason: "memory hotplug (virtio-mem) with VFIO functions: plugged memory would \
                         not be mapped for the functions' DMA; set enable_virtio_mem = false or \
                         pass no VFIO device"
                    .into(),
            });
        }
        // Spare ports with virtio-mem: disks may take them; a VFIO hot-plug is refused at the
        // plug (`VfioHotplug::plug`), as its DMA would not cover memory plugged later.
        // A restored VM's memory is the snapshot's, mapped private; the kernel is not loaded.
        let (ram, boot) = match &snapshot {
            Some((dir, _)) => {
                let file = crate::snapshot::open_memory(dir, c.memory_mib << 20)?;
                (GuestRam::private_from_snapshot(file, c.memory_mib)?, None)
            }
            None => {
                let ram = GuestRam::with_hotplug(&c.name, c.memory_mib, c.hotplug_memory_mib)?;
                let kernel = loader::load_kernel(ram.memory(), &c.kernel)?;
                let initrd = c
                    .initramfs
                    .as_deref()
                    .map(|p| loader::load_initrd(ram.memory(), &kernel, p))
                    .transpose()?;
                (ram, Some((kernel, initrd)))
            }
        };
        let mem = ram.memory();
        // VFIO functions on a PCI bus (opened and DMA-mapped now, before any socket is bound);
        // the guest probes PCI then.
        let pci = crate::devices::vfio::build_hierarchy(
            &c.vfio,
            c.spare_root_ports,
            c.spare_switch_ports,
            c.spare_bridge_slots,
            mem,
        )?;

        // Devices: disks first (vda...), then shares, NICs (eth0...), vsock; each in the next slot.
        // The queue-notify eventfd is duplicated: KVM signals the same eventfd the device reads.
        let mut devices: Vec<(MmioSlot, Box<dyn VirtioDevice>, EventFd)> = Vec::new();
        for disk in &c.block {
            let slot = MmioSlot::nth(devices.len() as u32)?;
            let dev = Block::new(disk)?;
            let notify = dup_notify(dev.notify_evt())?;
            devices.push((slot, Box::new(dev), notify));
        }
        for share in &c.fs {
            let slot = MmioSlot::nth(devices.len() as u32)?;
            let dev = Fs::new(share)?;
            let notify = dup_notify(dev.notify_evt())?;
            devices.push((slot, Box::new(dev), notify));
        }
        for nic in &c.net {
            let slot = MmioSlot::nth(devices.len() as u32)?;
            let dev = Net::new(nic)?;
            let notify = dup_notify(dev.notify_evt())?;
            devices.push((slot, Box::new(dev), notify));
        }
        if let Some(uds) = &c.vsock_uds {
            let slot = MmioSlot::nth(devices.len() as u32)?;
            let dev = Vsock::new(&VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: uds.clone(),
            })?;
            let notify = dup_notify(dev.notify_evt())?;
            devices.push((slot, Box::new(dev), notify));
        }
        // The virtio console last: the other devices keep their windows with or without it.
        let hvc = if c.virtio_console {
            let sink = ConsoleSink::new(c.console_capacity);
            let slot = MmioSlot::nth(devices.len() as u32)?;
            let dev = Console::new(sink.clone())?;
            let notify = dup_notify(dev.notify_evt())?;
            devices.push((slot, Box::new(dev), notify));
            Some(sink)
        } else {
            None
        };
        // The hotplug device after everything else: the other windows do not move.
        let hotplug = match ram.hotplug() {
            Some(region) => {
                let slot = MmioSlot::nth(devices.len() as u32)?;
                let backing = ram.memfd().try_clone().map_err(|source| Error::Memory {
                    what: "duplicating the memfd for virtio-mem",
                    source,
                })?;
                let dev = Mem::new(MemConfig {
                    addr: region.addr,
                    size: region.size,
                    backing: Some((backing, region.file_offset)),
                })?;
                let handle = dev.handle();
                let notify = dup_notify(dev.notify_evt())?;
                devices.push((slot, Box::new(dev), notify));
                Some(handle)
            }
            None => None,
        };
        // The balloon last of all.
        let balloon = match c.balloon {
            Some(config) => {
                let slot = MmioSlot::nth(devices.len() as u32)?;
                let dev = Balloon::new(config)?;
                let handle = dev.handle();
                let notify = dup_notify(dev.notify_evt())?;
                devices.push((slot, Box::new(dev), notify));
                Some(handle)
            }
            None => None,
        };

        let base = if pci.is_some() {
            BASE_CMDLINE.replace(" pci=off", "")
        } else {
            BASE_CMDLINE.to_string()
        };
        let mut cmdline = loader::cmdline(&base)?;
        // Parked vCPUs: the kernel boots `vcpus` of the MP table's processors, and the others
        // stay present and offline until the guest onlines them.
        if max_vcpus > c.vcpus {
            cmdline
                .insert_str(format!("maxcpus={}", c.vcpus))
                .map_err(|e| Error::Cmdline(e.to_string()))?;
        }
        if !c.cmdline.is_empty() {
            cmdline
                .insert_str(&c.cmdline)
                .map_err(|e| Error::Cmdline(e.to_string()))?;
        }
        for (slot, _, _) in &devices {
            slot.add_to_cmdline(&mut cmdline)?;
        }
        let cmdline_text = cmdline
            .as_cstring()
            .map_err(|e| Error::Cmdline(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        // What a snapshot of this VM records, and what a snapshot restored into it must match.
        let snapshot_config = crate::snapshot::SnapshotConfig {
            vcpus: c.vcpus,
            max_vcpus,
            memory_mib: c.memory_mib,
            kernel: c.kernel.clone(),
            initramfs: c.initramfs.clone(),
            cmdline: cmdline_text.clone(),
            devices: devices.iter().map(|d| d.1.device_type()).collect(),
        };
        if let Some((dir, saved)) = &snapshot {
            if let Some(why) = snapshot_config.difference(&saved.config) {
                return Err(Error::Device {
                    device: format!("VM {} (restoring snapshot {})", c.name, dir.display()),
                    reason: format!("{why}: make the snapshot again for this configuration"),
                });
            }
        }
        let entry = match &boot {
            Some((kernel, initrd)) => {
                loader::write_boot_params(mem, kernel, &cmdline, initrd.as_ref())?;
                write_descriptor_tables(mem)?;
                write_page_tables(mem)?;
                kernel.entry
            }
            None => vm_memory::GuestAddress(0),
        };
        // VFIO INTx: the PCI lines are planned off the virtio-mmio lines (moved, not refused)
        // before the MP table names each slot's pins.
        let intx = match &pci {
            Some((_, set)) => {
                set.check_lines(devices.iter().map(|d| d.0.irq))?;
                set.intx_lines()
            }
            None => Vec::new(),
        };
        if boot.is_some() {
            mptable::write_mptable_with_pci(mem, max_vcpus, &intx)?;
        }

        let console = ConsoleSink::new(c.console_capacity);
        let exit_evt = ExitEvent::new().map_err(io_err("the VM exit eventfd"))?;
        let serial_irq =
            EventFdTrigger::new_nonblocking().map_err(io_err("the serial port's irq eventfd"))?;
        let serial_irq_fd = serial_irq
            .eventfd()
            .try_clone()
            .map_err(io_err("the serial port's irq eventfd"))?;
        let legacy = LegacyBus {
            serial: match &snapshot {
                Some((_, saved)) => {
                    SerialConsole::from_snapshot(&saved.serial, serial_irq, console.clone())?
                }
                None => SerialConsole::new(serial_irq, console.clone()),
            },
            i8042: I8042::new(&exit_evt).map_err(io_err("the i8042's reset eventfd"))?,
        };

        let mut transports = Vec::new();
        for (slot, device, notify) in devices {
            let line = EventFdTrigger::new_nonblocking()
                .map_err(io_err("a virtio device's irq eventfd"))?;
            let irq_fd = line
                .eventfd()
                .try_clone()
                .map_err(io_err("a virtio device's irq eventfd"))?;
            // Devices see plugged memory too: the guest may hand them buffers there.
            let mut transport =
                MmioTransport::new(device, ram.all_memory().clone(), Interrupt::new(line))?;
            if let Some((_, saved)) = &snapshot {
                // `check` made the saved devices as many as ours, and the config their types.
                transport.restore_snapshot(&saved.devices[transports.len()])?;
            }
            transports.push(PreparedDevice {
                slot,
                irq_fd,
                notify,
                transport: Arc::new(Mutex::new(transport)),
            });
        }

        Ok(PreparedVm {
            name: c.name,
            vcpus: c.vcpus,
            max_vcpus,
            ram,
            entry,
            cmdline: cmdline_text,
            snapshot_config,
            snapshot_refusal,
            restore: snapshot.map(|(_, s)| (s.vm, s.vcpus)),
            console,
            hvc,
            exit_evt,
            serial_irq_fd,
            legacy,
            devices: transports,
            vsock_uds: c.vsock_uds,
            pci: pci.map(|(bus, set)| (Arc::new(Mutex::new(bus)), set)),
            spare_root_ports: c.spare_root_ports,
            spare_switch_ports: c.spare_switch_ports,
            spare_bridge_slots: c.spare_bridge_slots,
            hotplug,
            balloon,
        })
    }

    /// [`VmBuilder::prepare`], then [`PreparedVm::start`].
    pub fn start(self) -> Result<Vm> {
        self.prepare()?.start()
    }
}

/// A device behind its window, with the descriptors KVM is to be given.
pub(crate) struct PreparedDevice {
    pub(crate) slot: MmioSlot,
    /// Registered as the irqfd of `slot.irq`.
    pub(crate) irq_fd: vmm_sys_util::eventfd::EventFd,
    /// The device's queue-notify eventfd (a duplicate), registered as the ioeventfd of the
    /// window's QueueNotify register.
    pub(crate) notify: EventFd,
    pub(crate) transport: Arc<Mutex<MmioTransport>>,
}

/// A guest laid out in memory with its devices, not running: [`PreparedVm::start`] makes it a
/// KVM VM.
pub struct PreparedVm {
    pub(crate) name: String,
    pub(crate) vcpus: u8,
    /// The vCPUs created, `vcpus` booted and the rest parked (at least `vcpus`).
    pub(crate) max_vcpus: u8,
    pub(crate) ram: GuestRam,
    pub(crate) entry: vm_memory::GuestAddress,
    pub(crate) cmdline: String,
    pub(crate) console: ConsoleSink,
    pub(crate) hvc: Option<ConsoleSink>,
    pub(crate) exit_evt: ExitEvent,
    pub(crate) serial_irq_fd: vmm_sys_util::eventfd::EventFd,
    pub(crate) legacy: LegacyBus,
    pub(crate) devices: Vec<PreparedDevice>,
    pub(crate) vsock_uds: Option<PathBuf>,
    /// The PCI bus of the VFIO functions, with their container and groups.
    pub(crate) pci: Option<(Arc<Mutex<PciBus>>, VfioSet)>,
    /// How many of the bus's root ports are spare (for VFIO hot-plug).
    pub(crate) spare_root_ports: u8,
    /// How many of the switch's downstream ports are spare (for VFIO hot-plug).
    pub(crate) spare_switch_ports: u8,
    /// How many of the PCI bridge's SHPC slots are spare (for VFIO hot-plug).
    pub(crate) spare_bridge_slots: u8,
    /// The virtio-mem device's handle, when the VM can grow.
    pub(crate) hotplug: Option<MemHandle>,
    /// The balloon's handle, when the VM has one.
    pub(crate) balloon: Option<BalloonHandle>,
    /// What a snapshot of this VM records ([`crate::snapshot::SnapshotConfig`]).
    pub(crate) snapshot_config: crate::snapshot::SnapshotConfig,
    /// Why this VM cannot be saved in a snapshot (a setting it has), if it cannot.
    pub(crate) snapshot_refusal: Option<String>,
    /// The saved chips and vCPUs of a VM restored from a snapshot, put into KVM by `start`.
    pub(crate) restore: Option<(crate::snapshot::VmState, Vec<crate::snapshot::VcpuState>)>,
}

impl std::fmt::Debug for PreparedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedVm")
            .field("name", &self.name)
            .field("vcpus", &self.vcpus)
            .field("max_vcpus", &self.max_vcpus)
            .field("cmdline", &self.cmdline)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl PreparedVm {
    /// The kernel command line as written into guest memory.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The vsock's host socket, if any.
    pub fn vsock_uds(&self) -> Option<&Path> {
        self.vsock_uds.as_deref()
    }

    /// The guest entry point.
    pub fn entry(&self) -> u64 {
        self.entry.0
    }

    /// The virtio-mem device's handle, when the VM can grow.
    pub fn memory_hotplug(&self) -> Option<MemHandle> {
        self.hotplug.clone()
    }

    /// The balloon's handle, when the VM has one.
    pub fn balloon(&self) -> Option<BalloonHandle> {
        self.balloon.clone()
    }

    /// Creates the KVM VM and starts the vCPU and event loop threads.
    pub fn start(self) -> Result<Vm> {
        run::start(self)
    }
}

/// Why a VM of `c` cannot be saved in (or restored from) a snapshot, naming the setting; `None`
/// if it can (the devices say more when it is saved: [`MmioTransport::snapshot_state`]).
fn snapshot_refusal(c: &VmConfig) -> Option<String> {
    let why = if !c.vfio.is_empty() {
        "VFIO functions at boot (a host device's state cannot be saved): pass them after the \
         restore, or set enable_template = false"
    } else if c.spare_root_ports + c.spare_switch_ports + c.spare_bridge_slots > 0 {
        "PCI ports (pcie_root_port, hot-plug ports: the snapshot saves no PCI bus): set them to \
         0 or enable_template = false"
    } else if !c.net.is_empty() {
        "NICs at boot (every restored VM would have the snapshot's MAC, and a snapshot holds no \
         PCI port to hot-plug one into): run the templated sandbox without a pod network \
         (internetworking_model = \"none\"), or set enable_template = false"
    } else if !c.block.is_empty() {
        "disks at boot (their state is not saved): set disable_block_device_use = true, or \
         enable_template = false"
    } else if c.hotplug_memory_mib > 0 {
        "memory hot-plug (virtio-mem, enable_virtio_mem / default_maxmemory): set \
         enable_virtio_mem = false"
    } else if c.balloon.is_some() {
        "the balloon (reclaim_guest_freed_memory: its page reporting would punch holes into the \
         shared memory file): set reclaim_guest_freed_memory = false"
    } else {
        return None;
    };
    Some(format!("a snapshot cannot hold {why}"))
}

/// The vCPUs a VM of `c` has in all: `max_vcpus` (0: `vcpus`); fewer than `vcpus` or more than
/// the MP table lists is refused naming `default_maxvcpus`.
fn parked_vcpus_max(c: &VmConfig) -> Result<u8> {
    match c.max_vcpus {
        0 => Ok(c.vcpus),
        max if max < c.vcpus || max > MAX_VCPUS => Err(Error::Device {
            device: format!("VM {}", c.name),
            reason: format!(
                "{max} vCPUs in all with {} booted: the built-in VMM has {} to {MAX_VCPUS} \
                 (default_maxvcpus, at least default_vcpus)",
                c.vcpus, c.vcpus
            ),
        }),
        max => Ok(max),
    }
}

fn dup_notify(evt: &EventFd) -> Result<EventFd> {
    evt.try_clone()
        .map_err(io_err("duplicating a queue-notify eventfd"))
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::DeviceIo {
        device: "VM".into(),
        what: what.into(),
        source,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod snapshot_refusal_tests {
    use super::*;

    #[test]
    fn the_nic_and_disk_refusals_name_the_keys_to_set() {
        let base = VmBuilder::new("/k").config;
        assert_eq!(snapshot_refusal(&base), None);
        let mut nic = base.clone();
        nic.net.push(crate::devices::virtio::net::NetConfig {
            name: "tap0".into(),
            tap: Arc::new(std::fs::File::open("/dev/null").unwrap().into()),
            mac: [2, 0, 0, 0, 0, 1],
        });
        let why = snapshot_refusal(&nic).unwrap();
        assert!(
            why.contains("without a pod network")
                && why.contains("internetworking_model")
                && why.contains("enable_template = false")
                && !why.contains("hot-plug them"),
            "{why}"
        );
        let mut disk = base;
        disk.block.push(crate::devices::virtio::block::BlockConfig {
            path: "/disk.img".into(),
            read_only: false,
            id: None,
        });
        let why = snapshot_refusal(&disk).unwrap();
        assert!(why.contains("disable_block_device_use"), "{why}");
    }
}
