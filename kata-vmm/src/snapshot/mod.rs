//! Snapshots of a built-in VM (VM templating, Kata's `[factory] enable_template`): a running
//! VM is saved into a directory ([`crate::vm::Vm::snapshot`]) and new VMs start from it
//! ([`crate::vm::VmBuilder::restore`]) instead of booting.
//!
//! **What is saved.** [`STATE_FILE`] ([`Snapshot`], JSON) holds every vCPU's state
//! ([`VcpuState`]: registers, XSAVE, XCRs, debug registers, LAPIC, the MSRs of KVM's index
//! list, pending events, MP state — parked vCPUs too), the in-kernel PICs, IOAPIC, PIT and
//! KVM clock ([`VmState`]), the serial port's registers, and per virtio-mmio window the
//! transport's registers, queue configuration and the device's positions in its queues
//! ([`TransportState`]). [`MEMORY_FILE`] holds guest RAM, sparse (pages of zeros are holes).
//! [`SnapshotConfig`] records what the VM was made from; a restore with anything else (memory
//! size, vCPUs, kernel, initramfs, command line, device set) is refused naming it.
//!
//! **How it is saved.** The vCPUs are kicked out of `KVM_RUN`, finish the I/O of their last
//! exit (`immediate_exit`) and wait; the device thread is ended; then each vCPU thread saves
//! its own vCPU, the VM's chips, devices and memory are saved, and the VM is gone: a snapshot
//! ends the VM it saves (a template is not resumed).
//!
//! **A restored VM** maps [`MEMORY_FILE`] private (`MAP_PRIVATE`): every VM restored from one
//! snapshot shares its unwritten pages through the page cache, and a page a VM writes becomes
//! its own. Its devices are new (its own vsock socket, its own shared directory) and take the
//! saved queue state: the vsock device tells the guest its connections are gone (a
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue) and starts with none on the host
//! side; inline virtio-fs starts a fresh passthrough backend over the new VM's own directory,
//! which is sound only if the guest never used the share before the snapshot (no FUSE_INIT):
//! a snapshot of a VM whose guest did is refused.
//!
//! **Refused** (naming the setting): VFIO functions or PCI ports (`pci`), NICs, disks, memory
//! hot-plug (virtio-mem) and the balloon (its page reporting would punch holes into the shared
//! memory file); every device whose state this module does not save
//! ([`crate::devices::virtio::VirtioDevice::queue_positions`]).
//!
//! The guest wakes with the snapshot's random pool and clock: the runtime gives it fresh
//! entropy and the time (kata-sandbox does for a VM from a template).

pub mod vcpu;

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::vstate::vm::VmState;
pub use vcpu::VcpuState;

/// The snapshot's state, in its directory.
pub const STATE_FILE: &str = "state";
/// The snapshot's guest memory, in its directory.
pub const MEMORY_FILE: &str = "memory";
/// The format of [`STATE_FILE`]; another is refused.
pub const FORMAT: u32 = 1;
/// The version of kata-vmm (its `CARGO_PKG_VERSION`): what a runtime records of the VMM
/// build that saved a snapshot (a snapshot is read only by the build that wrote it).
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The page size the memory file is written in (pages of zeros are left as holes).
const PAGE: usize = 4096;

/// One virtio queue of a saved transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver enabled it.
    pub ready: bool,
    /// The descriptor table's guest address.
    pub desc_table: u64,
    /// The available ring's guest address.
    pub avail_ring: u64,
    /// The used ring's guest address.
    pub used_ring: u64,
    /// The device's next available-ring entry.
    pub next_avail: u16,
    /// The device's next used-ring entry.
    pub next_used: u16,
    /// The driver wrote a size the queue refused.
    pub size_refused: bool,
}

/// One virtio-mmio window: the transport's registers and its queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The virtio device id (a restore into another kind of device is refused).
    pub device_type: u32,
    /// The device status register.
    pub device_status: u32,
    /// The device features page selected.
    pub device_features_sel: u32,
    /// The driver features page selected.
    pub driver_features_sel: u32,
    /// The features the driver acknowledged.
    pub acked_features: u64,
    /// The queue selected.
    pub queue_sel: u32,
    /// The configuration generation.
    pub config_generation: u32,
    /// Whether the device was running (DRIVER_OK accepted).
    pub activated: bool,
    /// The interrupt status the driver had not acknowledged (raised again on resume).
    pub interrupt_status: u32,
    /// The queues, in order.
    pub queues: Vec<QueueSnapshot>,
}

/// The serial port's registers (vm-superio's `SerialState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes the guest had not read.
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialSnapshot {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for vm_superio::serial::SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// What a snapshot was made from: a VM restored from it must be made from the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotConfig {
    /// vCPUs booted (`default_vcpus`).
    pub vcpus: u8,
    /// vCPUs in all, booted and parked (`default_maxvcpus`).
    pub max_vcpus: u8,
    /// Guest RAM in MiB (`default_memory`).
    pub memory_mib: u64,
    /// The kernel (`kernel`).
    pub kernel: PathBuf,
    /// The initramfs (`initrd`).
    pub initramfs: Option<PathBuf>,
    /// The whole kernel command line, device windows included (`kernel_params`).
    pub cmdline: String,
    /// The virtio device ids in window order (the device set).
    pub devices: Vec<u32>,
}

impl SnapshotConfig {
    /// How `self` (a VM to restore) differs from `saved` (the snapshot's), naming the
    /// setting; `None` if it does not.
    pub fn difference(&self, saved: &SnapshotConfig) -> Option<String> {
        let path = |p: &Path| p.display().to_string();
        let pairs: [(&str, String, String); 7] = [
            (
                "default_memory",
                format!("{} MiB", self.memory_mib),
                format!("{} MiB", saved.memory_mib),
            ),
            (
                "default_vcpus",
                self.vcpus.to_string(),
                saved.vcpus.to_string(),
            ),
            (
                "default_maxvcpus",
                self.max_vcpus.to_string(),
                saved.max_vcpus.to_string(),
            ),
            ("kernel", path(&self.kernel), path(&saved.kernel)),
            (
                "initrd",
                format!("{:?}", self.initramfs),
                format!("{:?}", saved.initramfs),
            ),
            (
                "the device set (virtio device ids)",
                format!("{:?}", self.devices),
                format!("{:?}", saved.devices),
            ),
            (
                "kernel_params (the whole command line)",
                format!("{:?}", self.cmdline),
                format!("{:?}", saved.cmdline),
            ),
        ];
        pairs
            .into_iter()
            .find(|(_, ours, theirs)| ours != theirs)
            .map(|(key, ours, theirs)| {
                format!("{key}: the VM has {ours}, the snapshot was made with {theirs}")
            })
    }
}

/// Everything of a VM but its memory ([`STATE_FILE`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`FORMAT`].
    pub format: u32,
    /// What the VM was made from.
    pub config: SnapshotConfig,
    /// The in-kernel chips and clock.
    pub vm: VmState,
    /// Every vCPU, booted and parked, in index order.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// The virtio-mmio windows, in slot order.
    pub devices: Vec<TransportState>,
}

fn io_err(dir: &Path, what: &str) -> impl Fn(std::io::Error) -> Error {
    let device = format!("snapshot {}", dir.display());
    let what = what.to_string();
    move |source| Error::DeviceIo {
        device: device.clone(),
        what: what.clone(),
        source,
    }
}

fn refused(dir: &Path, reason: String) -> Error {
    Error::Device {
        device: format!("snapshot {}", dir.display()),
        reason,
    }
}

impl Snapshot {
    /// Checks what a snapshot file says about itself before anything uses it: the format,
    /// one vCPU state per vCPU in index order, one device state per device.
    pub fn check(&self, dir: &Path) -> Result<()> {
        if self.format != FORMAT {
            return Err(refused(
                dir,
                format!(
                    "format {} (this VMM reads {FORMAT}): remove the directory to make it again",
                    self.format
                ),
            ));
        }
        let ids: Vec<u8> = self.vcpus.iter().map(|v| v.id).collect();
        let want: Vec<u8> = (0..self.config.max_vcpus).collect();
        if ids != want {
            return Err(refused(
                dir,
                format!(
                    "vCPU states {ids:?} for {} vCPUs: the state file is damaged",
                    self.config.max_vcpus
                ),
            ));
        }
        let types: Vec<u32> = self.devices.iter().map(|d| d.device_type).collect();
        if types != self.config.devices {
            return Err(refused(
                dir,
                format!(
                    "device states {types:?} for devices {:?}: the state file is damaged",
                    self.config.devices
                ),
            ));
        }
        Ok(())
    }

    /// Writes the snapshot into `dir`: the first `memory_size` bytes of `memfd` (guest RAM)
    /// as [`MEMORY_FILE`], pages of zeros left as holes, and `self` as [`STATE_FILE`];
    /// returns the bytes of memory written (the pages the guest had touched).
    ///
    /// A stale [`STATE_FILE`] is removed first, so an old state never pairs with new memory.
    /// Both files are written as `<name>.partial` (created new, mode 0600, synced), then the
    /// memory is renamed into place and the state last: a directory holding a [`STATE_FILE`]
    /// holds the memory written with it. On an error both partial files are removed and no
    /// file is left under the final names but a memory file without a state (which a restore
    /// refuses: it reads the state first).
    pub fn write(&self, dir: &Path, memfd: &File, memory_size: u64) -> Result<u64> {
        self.check(dir)?;
        remove_if_there(&dir.join(STATE_FILE), dir)?;
        let memory_tmp = partial(dir, MEMORY_FILE);
        let state_tmp = partial(dir, STATE_FILE);
        let result = (|| {
            let written = write_memory(memfd, memory_size, &memory_tmp, dir)?;
            let json = serde_json::to_vec(self)
                .map_err(|e| refused(dir, format!("encoding the state: {e}")))?;
            let out = create_partial(&state_tmp, dir)?;
            (&out)
                .write_all(&json)
                .and_then(|()| out.sync_all())
                .map_err(io_err(dir, "writing the state file"))?;
            std::fs::rename(&memory_tmp, dir.join(MEMORY_FILE))
                .map_err(io_err(dir, "naming the memory file"))?;
            std::fs::rename(&state_tmp, dir.join(STATE_FILE))
                .map_err(io_err(dir, "naming the state file"))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir, "syncing the snapshot directory"))?;
            Ok(written)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&memory_tmp);
            let _ = std::fs::remove_file(&state_tmp);
        }
        result
    }

    /// Reads and checks ([`Snapshot::check`]) `dir`'s [`STATE_FILE`].
    pub fn read(dir: &Path) -> Result<Snapshot> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io_err(dir, "reading the state file"))?;
        let s: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
            refused(
                dir,
                format!("{} is not a snapshot state: {e}", path.display()),
            )
        })?;
        s.check(dir)?;
        Ok(s)
    }
}

/// `dir`'s partial file for `name` (see [`Snapshot::write`]).
fn partial(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.partial"))
}

/// Removes `path` if it is there.
fn remove_if_there(path: &Path, dir: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(
            dir,
            &format!("removing the stale {}", path.display()),
        )(e)),
        _ => Ok(()),
    }
}

/// Creates the partial file `path` new, mode 0600 (one a crash left is removed first).
fn create_partial(path: &Path, dir: &Path) -> Result<File> {
    remove_if_there(path, dir)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(dir, &format!("creating {}", path.display())))
}

/// Copies the first `size` bytes of `memfd` (guest RAM) into the new file `path`, leaving
/// pages of zeros as holes, and syncs it; returns the bytes written.
fn write_memory(memfd: &File, size: u64, path: &Path, dir: &Path) -> Result<u64> {
    let out = create_partial(path, dir)?;
    out.set_len(size)
        .map_err(io_err(dir, "sizing the memory file"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut at = 0u64;
    while at < size {
        let n = usize::try_from((size - at).min(buf.len() as u64)).unwrap_or(buf.len());
        memfd
            .read_exact_at(&mut buf[..n], at)
            .map_err(io_err(dir, "reading guest memory"))?;
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            if page.iter().any(|b| *b != 0) {
                out.write_all_at(page, at + (i * PAGE) as u64)
                    .map_err(io_err(dir, "writing the memory file"))?;
                written += page.len() as u64;
            }
        }
        at += n as u64;
    }
    out.sync_all()
        .map_err(io_err(dir, "syncing the memory file"))?;
    Ok(written)
}

/// Opens `dir`'s [`MEMORY_FILE`] for a VM of `size` bytes of RAM (read only: a restored VM
/// maps it private and never writes it).
pub fn open_memory(dir: &Path, size: u64) -> Result<File> {
    let file = File::open(dir.join(MEMORY_FILE)).map_err(io_err(dir, "opening the memory file"))?;
    let len = file
        .metadata()
        .map_err(io_err(dir, "reading the memory file's size"))?
        .len();
    if len != size {
        return Err(refused(
            dir,
            format!("the memory file has {len} bytes, the VM {size}: the snapshot is damaged"),
        ));
    }
    Ok(file)
}

/// Why a VM restored from a snapshot (`restored`) cannot be saved again: its guest RAM is the
/// snapshot's memory file mapped private, so a snapshot of it would write the template's
/// pages, not the ones this VM changed, beside this VM's state.
pub(crate) fn restored_refusal(restored: bool) -> Option<String> {
    restored.then(|| {
        "a VM restored from a snapshot cannot be saved again (its memory is the snapshot's \
         file mapped private, whose pages are not the ones it changed): save a VM booted \
         fresh"
            .to_string()
    })
}

#[cfg(test)]
mod tests;
