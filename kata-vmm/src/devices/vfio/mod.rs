//! VFIO PCI passthrough, cold-plugged: a host PCI function bound to `vfio-pci` appears on the
//! VM's [`crate::devices::pci::PciBus`].
//!
//! - **Opening** ([`VfioSet::open`]): sysfs first ([`sysfs::viable_group`]: the group, every
//!   member on vfio-pci or the member is named), then the container (`/dev/vfio/vfio`, type1
//!   IOMMU; one per VM), the group (`/dev/vfio/<N>`, viable, added once however many of its
//!   functions the VM takes) and the device fd; all guest RAM is mapped for the device's DMA
//!   (`VFIO_IOMMU_MAP_DMA`, guest physical address = IOVA).
//! - **Configuration space** ([`VfioPci`]): read from the device's config region; the BARs are
//!   emulated (sizing, the guest-programmed address; the VMM places them first), the command
//!   register is forwarded, the expansion ROM is hidden and so is the capability list but for
//!   MSI, MSI-X and the vendor-specific capabilities (read-only; virtio's modern transport is
//!   described by them), relinked in the device's order (no PCIe or power management
//!   capability); other writes are dropped.
//! - **MSI** ([`msi`], [`irq`]): when the host's VFIO grants the function MSI vectors, its MSI
//!   capability is the only one the guest sees, emulated (control, address, data, mask);
//!   enabling it routes one GSI per vector to the guest's message (`KVM_SET_GSI_ROUTING`) and
//!   turns the device's MSI on with the GSIs' irqfds as its eventfds
//!   (`VFIO_DEVICE_SET_IRQS`): the device interrupts the guest with no VMM thread on the path.
//! - **MSI-X** ([`msix`], [`irq`]): when the host's VFIO grants MSI-X vectors, the capability
//!   and the vector table are emulated (at most [`msix::MSIX_MAX_VECTORS`] vectors shown):
//!   the table and the pending bit array, inside whatever BAR the device puts them, are
//!   answered here and never reach the device; enabling routes a GSI per vector and gives
//!   VFIO every vector's eventfd at once; masks hold interrupts back (see [`irq`]).
//! - **BARs**: memory BARs are trapped: a guest access is a KVM MMIO exit, answered by a
//!   `pread`/`pwrite` at the BAR's region of the device fd (edu's 1 MiB BAR0 needs no more).
//!   I/O-port BARs are not exposed (they read as unimplemented).
//! - **INTx** ([`irq`]): a function with an interrupt pin whose host grants INTx shows pin
//!   INTA#, wired to the IOAPIC pin the MP table names (no ACPI) for where the guest looks it
//!   up: its INTA# swizzled up to bus 0 through the ports and bridges above it
//!   ([`irq::intx_swizzle`] of its guest PCI path, cold- and hot-plugged alike), on the line
//!   [`irq::plan_intx`] gave that pin of that bus-0 slot (every port's INTA#, all four pins of
//!   a switch's or a bridge's slot); level-triggered through an irqfd with KVM's resample
//!   unmasking VFIO's line; off while MSI is on.
//! - **Behind a root port** ([`VfioConfig::behind_root_port`]): the function is device 0 of
//!   its own PCIe root port's secondary bus, its BARs placed in the port's
//!   [`ROOT_PORT_WINDOW`] (see [`crate::devices::pci::root_port`]).
//! - **Hot-plug** ([`hotplug`]): spare root ports made at boot take functions while the VM
//!   runs, through their slots' events and the guest's pciehp.
//! - **Not built**: mmapping BARs into KVM memory slots (every BAR access is an exit, the
//!   MSI-X table's too).

pub mod hotplug;
pub mod irq;
pub mod msi;
pub mod msix;
pub mod sysfs;
pub mod uapi;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vm_memory::{GuestMemory as _, GuestMemoryRegion, MemoryRegionAddress};

use crate::devices::pci::bridge::{Bridge, BridgeKind};
use crate::devices::pci::root_port::RootPort;
use crate::devices::pci::{BarAllocator, PciBus, PciDevice, SharedPciDevice};
use crate::error::{Error, Result};
use crate::memory::GuestMemory;
use irq::IrqWiring;
use msi::{MsiCap, MsiState};
use msix::{MsixCap, MsixState};
pub use uapi::RegionInfo;

/// A VFIO PCI function to pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioConfig {
    /// Its host PCI address (`0000:01:00.0`).
    pub bdf: String,
    /// Where sysfs is (`/sys`).
    pub sysfs: PathBuf,
    /// Where the VFIO nodes are (`/dev/vfio`).
    pub dev_vfio: PathBuf,
    /// Behind a PCIe root port of its own (the guest finds it at `<port>:00.0`, the port on
    /// the root bus) rather than on the root bus itself.
    pub behind_root_port: bool,
    /// Behind a downstream port of the VM's PCIe switch (the guest finds it at
    /// `<root port>/00/<downstream port>/00`); wins over `behind_root_port`.
    pub behind_switch: bool,
    /// In a slot of the VM's PCI-to-PCI bridge (the guest finds it at `<bridge>/<slot>`,
    /// slots from 1); wins over the others.
    pub behind_bridge: bool,
}

impl VfioConfig {
    /// The function at `bdf`, with the host's `/sys` and `/dev/vfio`.
    pub fn new(bdf: impl Into<String>) -> Self {
        VfioConfig {
            bdf: bdf.into(),
            sysfs: "/sys".into(),
            dev_vfio: "/dev/vfio".into(),
            behind_root_port: false,
            behind_switch: false,
            behind_bridge: false,
        }
    }

    /// The same function in a slot of the VM's PCI-to-PCI bridge (see
    /// [`VfioConfig::behind_bridge`]).
    pub fn behind_bridge(mut self) -> Self {
        self.behind_bridge = true;
        self
    }

    /// The same function behind a downstream port of the VM's switch (see
    /// [`VfioConfig::behind_switch`]).
    pub fn behind_switch(mut self) -> Self {
        self.behind_switch = true;
        self
    }

    /// The same function behind a root port of its own (see [`VfioConfig::behind_root_port`]).
    pub fn behind_root_port(mut self) -> Self {
        self.behind_root_port = true;
        self
    }
}

/// The memory window the VMM gives each root port (its function's BARs are placed in it).
pub const ROOT_PORT_WINDOW: u64 = 32 << 20;

/// The VFIO state of one VM: the container and its groups, which live as long as the devices.
#[derive(Debug, Default)]
pub struct VfioSet {
    container: Option<uapi::Container>,
    groups: BTreeMap<u32, File>,
    bars: BarAllocator,
    /// The functions opened, for their MSI wiring when the VM starts.
    devices: Vec<Arc<Mutex<VfioPci>>>,
    /// The bus-0 slots whose functions (cold- or hot-plugged, below ports and bridges) may
    /// raise INTx.
    intx_slots: Vec<irq::IntxSlot>,
    /// The MP table's PCI interrupt entries ([`irq::plan_intx`] of `intx_slots`), laid out
    /// at boot for what is plugged later too; [`VfioSet::check_lines`] moves them off the
    /// virtio-mmio lines.
    intx_plan: Mutex<Vec<crate::vstate::mptable::PciIntx>>,
}

impl VfioSet {
    /// Opens `c`'s function (its group and the container on first use), maps `mem` for its DMA
    /// once per VM, and places its BARs.
    pub fn open(&mut self, c: &VfioConfig, mem: &GuestMemory) -> Result<VfioPci> {
        let mut bars = std::mem::take(&mut self.bars);
        let d = self.open_in(c, mem, &mut bars);
        self.bars = bars;
        d
    }

    /// [`VfioSet::open`] with the BARs placed by `alloc` (a root port's window).
    pub fn open_in(
        &mut self,
        c: &VfioConfig,
        mem: &GuestMemory,
        alloc: &mut BarAllocator,
    ) -> Result<VfioPci> {
        let group = sysfs::viable_group(&c.sysfs, &c.bdf)?;
        let first = self.container.is_none();
        if first {
            self.container = Some(uapi::Container::open(&c.dev_vfio)?);
        }
        let Some(container) = self.container.as_mut() else {
            unreachable!("set above")
        };
        if let Entry::Vacant(e) = self.groups.entry(group) {
            let file = uapi::open_group(&c.dev_vfio, group)?;
            container.add_group(&file, &format!("VFIO group {group} (device {})", c.bdf))?;
            e.insert(file);
        }
        if first {
            for region in mem.iter() {
                let host = region
                    .get_host_address(MemoryRegionAddress(0))
                    .map_err(|e| Error::MemoryMap(e.to_string()))?;
                // SAFETY: the region is a live mapping of guest RAM owned by the VM, which
                // holds this set (and so the container) until after the RAM's last use: the
                // VM's resources drop the devices before the memory.
                unsafe { container.map_dma(region.start_addr().0, region.len(), host as u64)? };
            }
        }
        let Some(g) = self.groups.get(&group) else {
            unreachable!("inserted above")
        };
        let device = uapi::device_fd(g, &c.bdf)?;
        let config = uapi::region_info(&device, &c.bdf, uapi::VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut bars = [RegionInfo::default(); 6];
        for (i, b) in bars.iter_mut().enumerate() {
            *b = uapi::region_info(&device, &c.bdf, i as u32)?;
        }
        let msi_vectors = uapi::irq_count(&device, &c.bdf, uapi::VFIO_PCI_MSI_IRQ_INDEX)?;
        let msix_vectors = uapi::irq_count(&device, &c.bdf, uapi::VFIO_PCI_MSIX_IRQ_INDEX)?;
        let intx = uapi::irq_count(&device, &c.bdf, uapi::VFIO_PCI_INTX_IRQ_INDEX)?;
        let mut d = VfioPci::new(&c.bdf, Arc::new(device), config, bars, alloc)?;
        d.host_msi_vectors = msi_vectors;
        d.host_msix_vectors = msix_vectors;
        d.host_intx = intx > 0 && (d.raw_read(15) >> 8) & 0xff != 0;
        Ok(d)
    }

    /// Wires the MSI, MSI-X and INTx of every function whose host grants them (see [`irq`]) on the VM
    /// `vm`, before any vCPU runs; a function without MSI keeps its capability list hidden, one
    /// without INTx its pin 0.
    pub fn wire_irqs(&self, vm: &kvm_ioctls::VmFd, router: &Arc<irq::GsiRouter>) -> Result<()> {
        for d in &self.devices {
            let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            wire_one(&mut d, vm, router)?;
        }
        Ok(())
    }

    /// The MP table's PCI interrupt entries: every pin of every bus-0 slot a function, a
    /// port or a bridge is in that a function there may raise (see [`irq::plan_intx`]).
    pub fn intx_lines(&self) -> Vec<crate::vstate::mptable::PciIntx> {
        self.intx_plan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The IOAPIC pin of the INTx of a function at guest PCI path `path` (cold- or
    /// hot-plugged): its INTA# swizzled to bus 0 ([`irq::intx_swizzle`]) and looked up in the
    /// MP table's entries, as the guest does.
    pub(crate) fn intx_pin_at(&self, path: &[u8]) -> Option<u8> {
        let at = irq::intx_swizzle(path)?;
        irq::planned_pin(&self.intx_lines(), at)
    }

    /// Records bus-0 slot `slot` as one whose functions may raise INTx (`fanout`: a switch or
    /// a bridge is below it).
    fn add_intx_slot(&mut self, slot: u8, fanout: bool) {
        self.intx_slots.push(irq::IntxSlot { slot, fanout });
    }

    /// Lays the MP table's PCI lines out off `taken` (IOAPIC pins others use) and gives each
    /// function its pin by its place.
    fn plan_lines(&self, taken: &[u32]) {
        let plan = irq::plan_intx(&self.intx_slots, taken);
        for d in &self.devices {
            let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let pin = d
                .path
                .as_deref()
                .and_then(irq::intx_swizzle)
                .and_then(|at| irq::planned_pin(&plan, at));
            d.intx_pin = pin.filter(|_| d.host_intx);
        }
        *self
            .intx_plan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = plan;
    }

    /// Moves the PCI INTx lines off the virtio-mmio lines (`virtio_irqs`), before the MP table
    /// is written and the functions wired: a function's INTx then goes where the table says.
    /// Lines run short only past 19 pins' worth of slots and devices: they are shared then
    /// (see [`irq::plan_intx`]); with none left at all a function has MSI and MSI-X only, and
    /// a warning says so.
    pub fn check_lines(&self, virtio_irqs: impl IntoIterator<Item = u32>) -> Result<()> {
        let irqs: Vec<u32> = virtio_irqs.into_iter().collect();
        self.plan_lines(&irqs);
        if self.intx_lines().is_empty() && !self.intx_slots.is_empty() {
            tracing::warn!(
                virtio_lines = ?irqs,
                "VFIO: the virtio-mmio devices take every IOAPIC pin: passed-through functions \
                 have no INTx (MSI and MSI-X only)"
            );
        }
        Ok(())
    }
}

/// Wires function `d`'s MSI, MSI-X and INTx (what its host grants) on `vm`.
fn wire_one(d: &mut VfioPci, vm: &kvm_ioctls::VmFd, router: &Arc<irq::GsiRouter>) -> Result<()> {
    let msi = if d.msi_found.is_some() {
        d.host_msi_vectors
    } else {
        0
    };
    let msix = d
        .msix
        .as_ref()
        .map_or(0, |m| m.vectors().min(d.host_msix_vectors as usize));
    if msi == 0 && msix == 0 && d.intx_pin.is_none() {
        return Ok(());
    }
    let wiring = irq::wire(vm, router, d.device.clone(), &d.bdf, msi, msix, d.intx_pin)?;
    d.attach_irqs(Box::new(wiring));
    Ok(())
}

/// One emulated BAR.
#[derive(Debug, Clone, Copy)]
struct Bar {
    /// Where the BAR's region is in the device fd.
    region_offset: u64,
    /// Its size (a power of two).
    size: u64,
    /// The low flag bits of the register (memory type, prefetchable).
    flags: u32,
    /// The address the guest (or the VMM) programmed.
    addr: u64,
}

/// What a BAR register index holds.
#[derive(Debug, Clone, Copy)]
enum BarReg {
    /// The low dword of BAR `n`.
    Low(usize),
    /// The upper dword of the 64-bit BAR `n`.
    High(usize),
    /// Nothing (absent, I/O, or hidden).
    None,
}

/// A passed-through PCI function, as the guest sees it.
pub struct VfioPci {
    bdf: String,
    device: Arc<File>,
    config: RegionInfo,
    bars: [Option<Bar>; 6],
    regs: [BarReg; 6],
    /// The command register as the guest last wrote it: memory decoding (bit 1) gates the BARs.
    command: u16,
    /// The interrupt line register (scratch for the guest; no INTx is wired).
    line: u8,
    /// The device's MSI capability (offset, message control), if it has one.
    msi_found: Option<(usize, u16)>,
    /// The MSI vectors the host's VFIO grants (0: none).
    host_msi_vectors: u32,
    /// The IOAPIC pin of its INTx, when it has a pin and the host grants INTx.
    intx_pin: Option<u8>,
    /// Whether the host grants INTx and the device has an interrupt pin.
    host_intx: bool,
    /// Its slot on the bus.
    slot: Option<u8>,
    /// Its guest PCI path (device numbers from bus 0 down), whence its INTx's place in the MP
    /// table ([`irq::intx_swizzle`]).
    path: Option<Vec<u8>>,
    /// The emulated MSI capability, once wired ([`VfioPci::attach_irqs`]); hidden before.
    msi: Option<MsiCap>,
    /// What carries out the guest's MSI programming.
    wiring: Option<Box<dyn IrqWiring>>,
    /// The MSI state last carried out.
    msi_applied: MsiState,
    /// The device's capabilities, in list order: offset and id.
    caps: Vec<(usize, u8)>,
    /// The capabilities the guest sees, in list order (their offsets).
    chain: Vec<usize>,
    /// The MSI-X vectors the host's VFIO grants (0: none).
    host_msix_vectors: u32,
    /// The device's MSI-X capability and table, emulated: trapped from the start (the table
    /// never reaches the device), shown once wired ([`VfioPci::attach_irqs`]).
    msix: Option<MsixCap>,
    /// Whether the guest sees the MSI-X capability.
    msix_shown: bool,
    /// The MSI-X state last carried out.
    msix_applied: MsixState,
}

impl std::fmt::Debug for VfioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPci")
            .field("bdf", &self.bdf)
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

const COMMAND_MEMORY: u16 = 1 << 1;
/// The capability id of a vendor-specific capability (virtio's transport structures).
const VENDOR_CAP_ID: u8 = 0x09;

/// The capabilities of a configuration space whose dwords `read` returns, in list order:
/// offset and id. The walk starts at the pointer at 0x34 and stops at 48 steps, at an offset
/// outside 0x40..0x100 or one seen before (a looping or wild list ends it).
pub fn caps(read: impl Fn(usize) -> u32) -> Vec<(usize, u8)> {
    let mut out: Vec<(usize, u8)> = Vec::new();
    let mut at = (read(0x34 / 4) & 0xfc) as usize;
    for _ in 0..48 {
        if !(0x40..0x100).contains(&at) || out.iter().any(|(o, _)| *o == at) {
            break;
        }
        let head = read(at / 4);
        out.push((at, head as u8));
        at = ((head >> 8) & 0xfc) as usize;
    }
    out
}
/// Status register's "capabilities list" bit, in the dword at 0x04.
const STATUS_CAP_LIST: u32 = 1 << (16 + 4);

impl VfioPci {
    /// A function over `device` (the VFIO device fd, or a file standing in for it) whose
    /// config space is the `config` region and whose BARs are `bars`; its memory BARs are
    /// placed by `alloc`.
    pub fn new(
        bdf: &str,
        device: Arc<File>,
        config: RegionInfo,
        bars: [RegionInfo; 6],
        alloc: &mut BarAllocator,
    ) -> Result<VfioPci> {
        let who = || format!("VFIO device {bdf}");
        if config.size < 0x40 {
            return Err(Error::Device {
                device: who(),
                reason: format!(
                    "its config region is {} bytes, less than a header",
                    config.size
                ),
            });
        }
        let mut dev = VfioPci {
            bdf: bdf.to_string(),
            device,
            config,
            bars: [None; 6],
            regs: [BarReg::None; 6],
            command: 0,
            line: 0,
            msi_found: None,
            host_msi_vectors: 0,
            intx_pin: None,
            host_intx: false,
            slot: None,
            path: None,
            msi: None,
            wiring: None,
            msi_applied: MsiState::default(),
            caps: Vec::new(),
            chain: Vec::new(),
            host_msix_vectors: 0,
            msix: None,
            msix_shown: false,
            msix_applied: MsixState::default(),
        };
        let header = dev.raw_read(3) >> 16 & 0x7f;
        if header != 0 {
            return Err(Error::Device {
                device: who(),
                reason: format!(
                    "header type {header:#x}: only endpoints (type 0) pass through, not bridges"
                ),
            });
        }
        dev.command = dev.raw_read(1) as u16;
        let msix_found = if dev.raw_read(1) & STATUS_CAP_LIST != 0 {
            dev.msi_found = msi::find(|r| dev.raw_read(r));
            dev.caps = caps(|r| dev.raw_read(r));
            msix::find(|r| dev.raw_read(r))
        } else {
            None
        };
        let mut i = 0;
        while i < 6 {
            let raw = dev.raw_read(4 + i);
            let region = bars[i];
            if region.size == 0 {
                i += 1;
                continue;
            }
            if raw & 1 == 1 {
                tracing::warn!(
                    bdf,
                    bar = i,
                    "VFIO: an I/O-port BAR is not exposed to the guest"
                );
                i += 1;
                continue;
            }
            let wide = raw & 0b110 == 0b100;
            if !region.size.is_power_of_two() {
                return Err(Error::Device {
                    device: who(),
                    reason: format!("BAR{i} size {:#x} is not a power of two", region.size),
                });
            }
            let (free_start, free_end) = alloc.free();
            let addr = alloc.allocate(region.size).ok_or_else(|| Error::Device {
                device: who(),
                reason: format!(
                    "BAR{i} ({:#x} bytes) does not fit what is left of its 32-bit PCI window \
                     ({free_start:#x}..{free_end:#x}: the built-in VMM's, or the {} MiB of a \
                     root port); pass it through with [hypervisor.qemu]",
                    region.size,
                    ROOT_PORT_WINDOW >> 20
                ),
            })?;
            dev.bars[i] = Some(Bar {
                region_offset: region.offset,
                size: region.size,
                flags: raw & 0xf,
                addr,
            });
            dev.regs[i] = BarReg::Low(i);
            if wide && i + 1 < 6 {
                dev.regs[i + 1] = BarReg::High(i);
                i += 2;
            } else {
                i += 1;
            }
        }
        // The table is trapped however many vectors the host grants (u32::MAX: the device's
        // size); a table or array outside an exposed memory BAR hides the capability.
        dev.msix = msix_found
            .and_then(|(o, c, t, p)| MsixCap::new(o, c, t, p, u32::MAX))
            .filter(|m| {
                let fits = |r: msix::BarRange| dev.bars[r.bar].is_some_and(|b| r.fits(b.size));
                let ok = fits(m.table()) && fits(m.pba());
                if !ok {
                    tracing::warn!(
                        bdf,
                        "VFIO: the MSI-X table or pending bit array is outside a memory BAR: \
                         MSI-X hidden"
                    );
                }
                ok
            });
        dev.relink();
        Ok(dev)
    }

    /// Recomputes the capability list the guest sees: vendor-specific capabilities, and MSI
    /// and MSI-X when shown, in the device's order.
    fn relink(&mut self) {
        let msi = self.msi.as_ref().map(MsiCap::offset);
        let msix = self
            .msix
            .as_ref()
            .filter(|_| self.msix_shown)
            .map(MsixCap::offset);
        self.chain = self
            .caps
            .iter()
            .filter(|(at, id)| *id == VENDOR_CAP_ID || Some(*at) == msi || Some(*at) == msix)
            .map(|(at, _)| *at)
            .collect();
    }

    /// `value`, the dword `reg` as read, with its next pointer relinked when a shown
    /// capability starts there.
    fn link(&self, reg: usize, value: u32) -> u32 {
        match self.chain.iter().position(|&at| at == reg * 4) {
            Some(i) => {
                let next = self.chain.get(i + 1).copied().unwrap_or(0) as u32;
                (value & !0xff00) | next << 8
            }
            None => value,
        }
    }

    /// The host address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The guest physical address of each memory BAR, as now programmed.
    pub fn bar_addresses(&self) -> Vec<(usize, u64, u64)> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b.addr, b.size)))
            .collect()
    }

    /// Shows the guest the function's MSI capability and INTx pin, carried out by `wiring` (the
    /// capability only when the function has one, the pin only when `wiring` has INTx).
    pub fn attach_irqs(&mut self, wiring: Box<dyn IrqWiring>) {
        let vectors = u32::try_from(wiring.max_vectors()).unwrap_or(u32::MAX);
        self.msi = self
            .msi_found
            .and_then(|(offset, control)| MsiCap::new(offset, control, vectors));
        let msix_vectors = u32::try_from(wiring.max_msix_vectors()).unwrap_or(u32::MAX);
        if let Some(m) = self.msix.as_ref().filter(|_| msix_vectors > 0) {
            let (o, t, p) = (m.offset(), m.table(), m.pba());
            // The device's control and registers again, the size capped by the wiring.
            let control = (self.raw_read(o / 4) >> 16) as u16;
            let reg = |r: msix::BarRange| r.offset as u32 | r.bar as u32;
            if let Some(m) = MsixCap::new(o, control, reg(t), reg(p), msix_vectors) {
                self.msix = Some(m);
                self.msix_shown = true;
            }
        }
        if self.msi.is_some() || self.msix_shown || wiring.intx() {
            self.wiring = Some(wiring);
        }
        self.relink();
    }

    /// Carries out what the guest's last MSI-X write (capability or table) changed: MSI-X on
    /// or off, the routes, the vectors held or delivered. A host refusal is logged (the
    /// guest's driver sees no interrupt), never a panic.
    fn apply_msix(&mut self) {
        let (Some(cap), Some(w)) = (
            self.msix.as_ref().filter(|_| self.msix_shown),
            self.wiring.as_mut(),
        ) else {
            return;
        };
        let new = cap.state();
        if new == self.msix_applied {
            return;
        }
        let old = std::mem::replace(&mut self.msix_applied, new.clone());
        let bdf = &self.bdf;
        if !new.enabled {
            if let Err(e) = w.msix_trigger(&[]) {
                tracing::warn!(%bdf, error = %e, "VFIO: turning MSI-X off failed");
            }
            if let Err(e) = w.msix_route(&[]) {
                tracing::warn!(%bdf, error = %e, "VFIO: KVM_SET_GSI_ROUTING for MSI-X failed");
            }
            return;
        }
        // Routed before any vector may fire or a held interrupt is delivered.
        if new.routes != old.routes {
            if let Err(e) = w.msix_route(&new.routes) {
                tracing::warn!(%bdf, error = %e, "VFIO: KVM_SET_GSI_ROUTING for MSI-X failed");
            }
        }
        if !old.enabled {
            match w.msix_trigger(&new.masked) {
                Ok(()) => {
                    tracing::debug!(%bdf, vectors = new.masked.len(), "VFIO: MSI-X on")
                }
                Err(e) => tracing::warn!(
                    %bdf, vectors = new.masked.len(), error = %e, "VFIO: turning MSI-X on failed"
                ),
            }
            return;
        }
        let changed: Vec<usize> = (0..new.masked.len())
            .filter(|&i| old.masked.get(i) != new.masked.get(i))
            .collect();
        if let (Some(&first), Some(&last)) = (changed.first(), changed.last()) {
            if let Err(e) = w.msix_hold(first, &new.masked[first..=last]) {
                tracing::warn!(%bdf, first, last, error = %e, "VFIO: MSI-X (un)masking failed");
            }
        }
    }

    /// Whether the guest sees an interrupt pin (INTA#).
    fn shows_pin(&self) -> bool {
        self.wiring.as_ref().is_some_and(|w| w.intx())
    }

    /// Carries out what the guest's last MSI write changed: the routes, and the device's MSI
    /// on or off. A host refusal is logged (the guest's driver sees no interrupt), never a
    /// panic.
    fn apply_msi(&mut self) {
        let (Some(cap), Some(w)) = (&self.msi, self.wiring.as_mut()) else {
            return;
        };
        let new = cap.state();
        if new == self.msi_applied {
            return;
        }
        let old = std::mem::replace(&mut self.msi_applied, new.clone());
        let bdf = &self.bdf;
        let restart = old.enabled && (!new.enabled || old.vectors != new.vectors);
        if restart {
            if let Err(e) = w.trigger(0) {
                tracing::warn!(%bdf, error = %e, "VFIO: turning MSI off failed");
            }
        }
        if let Err(e) = w.route(&new.routes) {
            tracing::warn!(%bdf, error = %e, "VFIO: KVM_SET_GSI_ROUTING for MSI failed");
        }
        if new.enabled && (!old.enabled || restart) {
            match w.trigger(new.vectors) {
                Ok(()) => tracing::debug!(%bdf, vectors = new.vectors, "VFIO: MSI on"),
                Err(e) => {
                    tracing::warn!(%bdf, vectors = new.vectors, error = %e, "VFIO: turning MSI on failed")
                }
            }
        }
    }

    /// Dword `reg` of the device's own config space (all ones on a failed read).
    fn raw_read(&self, reg: usize) -> u32 {
        let mut b = [0xff; 4];
        let off = (reg * 4) as u64;
        if off + 4 <= self.config.size
            && self
                .device
                .read_exact_at(&mut b, self.config.offset + off)
                .is_err()
        {
            b = [0xff; 4];
        }
        u32::from_le_bytes(b)
    }

    fn raw_write(&self, offset: usize, data: &[u8]) {
        if let Err(e) = self
            .device
            .write_all_at(data, self.config.offset + offset as u64)
        {
            tracing::debug!(bdf = %self.bdf, offset, error = %e, "VFIO: config write failed");
        }
    }

    fn bar_read(&self, reg: BarReg) -> u32 {
        match reg {
            BarReg::Low(n) => self.bars[n].map_or(0, |b| {
                (b.addr as u32 & !(b.size.wrapping_sub(1) as u32) & !0xf) | b.flags
            }),
            BarReg::High(n) => self.bars[n].map_or(0, |b| {
                ((b.addr >> 32) as u32) & !((b.size.wrapping_sub(1) >> 32) as u32)
            }),
            BarReg::None => 0,
        }
    }

    fn bar_write(&mut self, reg: BarReg, value: u32) {
        match reg {
            BarReg::Low(n) => {
                if let Some(b) = self.bars[n].as_mut() {
                    let mask = !(b.size - 1) & 0xffff_fff0;
                    b.addr = (b.addr & !0xffff_ffff) | u64::from(value & mask as u32);
                }
            }
            BarReg::High(n) => {
                if let Some(b) = self.bars[n].as_mut() {
                    let mask = !((b.size - 1) >> 32) as u32;
                    b.addr = (b.addr & 0xffff_ffff) | (u64::from(value & mask) << 32);
                }
            }
            BarReg::None => {}
        }
    }

    /// The BAR decoding `[addr, addr+len)` with memory decoding on: its index, the offset in
    /// it and the offset in the device fd.
    fn decode(&self, addr: u64, len: usize) -> Option<(usize, u64, u64)> {
        if self.command & COMMAND_MEMORY == 0 {
            return None;
        }
        self.bars.iter().enumerate().find_map(|(i, b)| {
            let b = (*b)?;
            let off = addr.checked_sub(b.addr)?;
            (off.checked_add(len as u64)? <= b.size && b.addr != 0).then_some((
                i,
                off,
                b.region_offset + off,
            ))
        })
    }
}

impl PciDevice for VfioPci {
    fn config_read(&mut self, reg: usize) -> u32 {
        if let Some(m) = self.msi.as_ref().filter(|m| m.contains(reg * 4)) {
            return self.link(reg, m.read(reg * 4));
        }
        if let Some(m) = self
            .msix
            .as_ref()
            .filter(|m| self.msix_shown && m.contains(reg * 4))
        {
            return self.link(reg, m.read(reg * 4));
        }
        match reg {
            // Command and status: the device's, with a capability list only for what is shown.
            1 if !self.chain.is_empty() => self.raw_read(1) | STATUS_CAP_LIST,
            1 => self.raw_read(1) & !STATUS_CAP_LIST,
            // The capability pointer: the first shown, or none.
            13 => self.chain.first().map_or(0, |&at| at as u32),
            // Header type: one function here, whatever the host's.
            3 => self.raw_read(3) & !(0x80 << 16),
            4..=9 => self.bar_read(self.regs[reg - 4]),
            // Expansion ROM: hidden.
            12 => 0,
            // Interrupt pin: INTA# when INTx is wired, else 0; the line as the guest wrote it.
            15 => {
                (self.raw_read(15) & 0xffff_0000)
                    | u32::from(self.shows_pin()) << 8
                    | u32::from(self.line)
            }
            r if r < 64 => self.link(r, self.raw_read(r)),
            _ => 0xffff_ffff,
        }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let reg = offset / 4;
        let within = offset % 4;
        if data.is_empty() || within + data.len() > 4 {
            return;
        }
        if let Some(m) = self.msi.as_mut().filter(|m| m.contains(offset)) {
            m.write(offset, data);
            self.apply_msi();
            return;
        }
        if let Some(m) = self
            .msix
            .as_mut()
            .filter(|m| self.msix_shown && m.contains(offset))
        {
            m.write(offset, data);
            self.apply_msix();
            return;
        }
        match reg {
            1 => {
                // The command register (bytes 0-1) is forwarded; the status (2-3) is not.
                let mut cmd = self.command.to_le_bytes();
                for (i, b) in data.iter().enumerate() {
                    if let Some(c) = cmd.get_mut(within + i) {
                        *c = *b;
                    }
                }
                self.command = u16::from_le_bytes(cmd);
                if within < 2 {
                    let end = (within + data.len()).min(2);
                    self.raw_write(4 + within, &cmd[within..end]);
                }
            }
            4..=9 => {
                let r = self.regs[reg - 4];
                let mut v = self.bar_read(r).to_le_bytes();
                v[within..within + data.len()].copy_from_slice(data);
                self.bar_write(r, u32::from_le_bytes(v));
            }
            15 if within == 0 => self.line = data[0],
            _ => {
                tracing::debug!(bdf = %self.bdf, offset, len = data.len(), "VFIO: config write dropped")
            }
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let Some((bar, off, at)) = self.decode(addr, data.len()) else {
            return false;
        };
        if let Some(m) = &self.msix {
            // The pending bits, asked of the wiring only for a read of the array.
            let pending: Vec<bool> = match self.wiring.as_mut() {
                Some(w) if m.pba().overlaps(bar, off, data.len() as u64) => {
                    (0..m.vectors()).map(|v| w.msix_pending(v)).collect()
                }
                _ => Vec::new(),
            };
            let p = |v: usize| pending.get(v).copied().unwrap_or(false);
            if m.bar_read(bar, off, data, p) {
                return true;
            }
        }
        if self.device.read_exact_at(data, at).is_err() {
            data.fill(0xff);
        }
        true
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        let Some((bar, off, at)) = self.decode(addr, data.len()) else {
            return false;
        };
        if let Some(m) = self.msix.as_mut() {
            if m.bar_write(bar, off, data) {
                self.apply_msix();
                return true;
            }
        }
        if let Err(e) = self.device.write_all_at(data, at) {
            tracing::debug!(bdf = %self.bdf, addr, error = %e, "VFIO: BAR write failed");
        }
        true
    }
}

/// The PCI bus of a VM passing `devices` through, with `spare_ports` empty root ports for
/// hot-plug ([`hotplug`]) after them, and the VFIO state that must live as long (`None`
/// without devices or ports: the VM keeps `pci=off`). Every device is opened, checked and its
/// DMA mapped here, before the VM exists; an error closes whatever was opened.
pub fn build_bus(
    devices: &[VfioConfig],
    spare_ports: u8,
    mem: &GuestMemory,
) -> Result<Option<(PciBus, VfioSet)>> {
    build_hierarchy(devices, spare_ports, 0, 0, mem)
}

/// [`build_bus`] with a PCIe switch when any function is [`VfioConfig::behind_switch`] or
/// `spare_switch_ports` > 0: behind a root port in the slot after the others, its upstream
/// port, and one downstream port per such function (in their order) then the spare ones. The
/// buses are numbered depth first after the root ports' (root port `B`, internal bus `B+1`,
/// downstream port `i` `B+2+i`), and the windows nest: each downstream port has
/// [`ROOT_PORT_WINDOW`], the upstream port and its root port the span of them all.
///
/// With `spare_bridge_slots` > 0 the PCI bridge (made for them if no function is
/// [`VfioConfig::behind_bridge`]) gets that many more slots after the functions', and a
/// Standard Hot-Plug Controller for all of them (see `devices::pci::shpc`).
pub fn build_hierarchy(
    devices: &[VfioConfig],
    spare_ports: u8,
    spare_switch_ports: u8,
    spare_bridge_slots: u8,
    mem: &GuestMemory,
) -> Result<Option<(PciBus, VfioSet)>> {
    if devices.is_empty() && spare_ports == 0 && spare_switch_ports == 0 && spare_bridge_slots == 0
    {
        return Ok(None);
    }
    let mut set = VfioSet::default();
    let mut bus = PciBus::new();
    for c in devices {
        if devices.iter().filter(|o| o.bdf == c.bdf).count() > 1 {
            return Err(Error::Device {
                device: format!("VFIO device {}", c.bdf),
                reason: "given twice: pass each PCI function once".into(),
            });
        }
        let full = || Error::Device {
            device: format!("VFIO device {}", c.bdf),
            reason: format!(
                "the built-in VMM's PCI bus has {} slots for devices and root ports, and \
                 {:#x}..{:#x} for their memory ({} MiB a root port)",
                crate::devices::pci::PCI_SLOTS - 1,
                crate::devices::pci::PCI_MMIO_START,
                crate::devices::pci::PCI_MMIO_END,
                ROOT_PORT_WINDOW >> 20
            ),
        };
        if c.behind_switch || c.behind_bridge {
            continue;
        }
        if c.behind_root_port {
            let start = set.bars.allocate(ROOT_PORT_WINDOW).ok_or_else(full)?;
            let window = (start, start + ROOT_PORT_WINDOW);
            let mut alloc = BarAllocator::within(window.0, window.1);
            let d = Arc::new(Mutex::new(set.open_in(c, mem, &mut alloc)?));
            // The port's slot is the next one; its secondary bus the next free number.
            let slot = bus.next_slot().ok_or_else(full)?;
            let secondary = bus.root_ports().len() as u8 + 1;
            let port = Arc::new(Mutex::new(RootPort::new(slot, secondary, window)));
            port.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .cold_plug(d.clone());
            bus.add_root_port(port).ok_or_else(full)?;
            set.devices.push(d.clone());
            set.add_intx_slot(slot, false);
            let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // INTx: the guest swizzles the pin through the port to the port's slot (device
            // 0's INTA# is the port's INTA#); its line is laid out below (`plan_lines`).
            d.slot = Some(slot);
            d.path = Some(vec![slot, 0]);
            tracing::info!(
                bdf = %c.bdf, slot, secondary,
                "VFIO: cold-plugged at {secondary:02x}:00.0 behind root port 00:{slot:02x}.0"
            );
            continue;
        }
        let d = Arc::new(Mutex::new(set.open(c, mem)?));
        set.devices.push(d.clone());
        let slot = bus.add(d.clone()).ok_or_else(full)?;
        set.add_intx_slot(slot, false);
        let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        d.slot = Some(slot);
        d.path = Some(vec![slot]);
        tracing::info!(bdf = %c.bdf, slot, "VFIO: cold-plugged at 00:{slot:02x}.0");
    }
    for n in 0..spare_ports {
        let full = || Error::Device {
            device: format!("spare root port {}", n + 1),
            reason: format!(
                "the built-in VMM's PCI bus has {} slots for devices and root ports, and \
                 {:#x}..{:#x} for their memory ({} MiB a root port): lower pcie_root_port",
                crate::devices::pci::PCI_SLOTS - 1,
                crate::devices::pci::PCI_MMIO_START,
                crate::devices::pci::PCI_MMIO_END,
                ROOT_PORT_WINDOW >> 20
            ),
        };
        let start = set.bars.allocate(ROOT_PORT_WINDOW).ok_or_else(full)?;
        let slot = bus.next_slot().ok_or_else(full)?;
        let secondary = bus.root_ports().len() as u8 + 1;
        let port = RootPort::new(slot, secondary, (start, start + ROOT_PORT_WINDOW));
        bus.add_root_port(Arc::new(Mutex::new(port)))
            .ok_or_else(full)?;
        // INTx for what is plugged there later: the MP table is written at boot.
        set.add_intx_slot(slot, false);
        tracing::info!(
            slot,
            secondary,
            "VFIO: spare root port at 00:{slot:02x}.0 for hot-plug"
        );
    }
    let switched: Vec<&VfioConfig> = devices
        .iter()
        .filter(|c| c.behind_switch && !c.behind_bridge)
        .collect();
    if !switched.is_empty() || spare_switch_ports > 0 {
        add_switch(&mut bus, &mut set, &switched, spare_switch_ports, mem)?;
    }
    let bridged: Vec<&VfioConfig> = devices.iter().filter(|c| c.behind_bridge).collect();
    if !bridged.is_empty() || spare_bridge_slots > 0 {
        add_bridge(&mut bus, &mut set, &bridged, spare_bridge_slots, mem)?;
    }
    // Every bus-0 slot is known: the MP table's lines (moved off the virtio-mmio lines by
    // `check_lines` before the table is written).
    set.plan_lines(&[]);
    Ok(Some((bus, set)))
}

/// `n` windows of [`ROOT_PORT_WINDOW`] back to back from the VM's MMIO window, or `full()`.
fn contiguous_windows(
    set: &mut VfioSet,
    n: usize,
    full: impl Fn() -> Error,
) -> Result<Vec<(u64, u64)>> {
    let mut windows: Vec<(u64, u64)> = Vec::with_capacity(n);
    for _ in 0..n {
        let start = set.bars.allocate(ROOT_PORT_WINDOW).ok_or_else(&full)?;
        if windows.last().is_some_and(|&(_, end)| end != start) {
            return Err(full());
        }
        windows.push((start, start + ROOT_PORT_WINDOW));
    }
    Ok(windows)
}

/// Adds a PCI-to-PCI bridge to `bus` in its next slot with `bridged` in its slots 1, 2, ...
/// (each function's BARs in a [`ROOT_PORT_WINDOW`] of its own, the bridge's window their
/// span), its secondary bus the next after every bus a root port reaches.
fn add_bridge(
    bus: &mut PciBus,
    set: &mut VfioSet,
    bridged: &[&VfioConfig],
    spare: u8,
    mem: &GuestMemory,
) -> Result<()> {
    let n = bridged.len() + usize::from(spare);
    let full = || Error::Device {
        device: "PCI-to-PCI bridge".into(),
        reason: format!(
            "{n} slot(s) ({} function(s) cold-plugged with cold_plug_vfio = \"bridge-port\", \
             {spare} for hot_plug_vfio = \"bridge-port\") do not fit: the \
             built-in VMM places each in {} MiB of {:#x}..{:#x} ({} at most), beside the root \
             bus's {} slots; pass fewer devices",
            bridged.len(),
            ROOT_PORT_WINDOW >> 20,
            crate::devices::pci::PCI_MMIO_START,
            crate::devices::pci::PCI_MMIO_END,
            (crate::devices::pci::PCI_MMIO_END - crate::devices::pci::PCI_MMIO_START)
                / ROOT_PORT_WINDOW,
            crate::devices::pci::PCI_SLOTS - 1,
        ),
    };
    if n > 31 {
        return Err(full());
    }
    let slot = bus.next_slot().ok_or_else(full)?;
    let secondary = bus
        .root_ports()
        .iter()
        .map(|(_, p)| {
            p.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .buses()
                .1
        })
        .max()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(full)?;
    // The controller's registers (a page on bus 0) before the slots' windows.
    let shpc_bar = if spare > 0 {
        set.bars
            .allocate(crate::devices::pci::shpc::REGS_SIZE)
            .ok_or_else(full)?
    } else {
        0
    };
    let windows = contiguous_windows(set, n, full)?;
    let span = match (windows.first(), windows.last()) {
        (Some(f), Some(l)) => (f.0, l.1),
        _ => return Err(full()),
    };
    let mut children = Vec::with_capacity(n);
    for (i, (c, (start, end))) in bridged.iter().zip(&windows).enumerate() {
        let mut alloc = BarAllocator::within(*start, *end);
        let d = Arc::new(Mutex::new(set.open_in(c, mem, &mut alloc)?));
        set.devices.push(d.clone());
        let at = i as u8 + 1;
        {
            let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // INTx: slot `at`'s INTA# reaches the bridge's slot as INTA# + at
            // (`irq::intx_swizzle`), one of the four pins the MP table lists there.
            d.slot = Some(slot);
            d.path = Some(vec![slot, at]);
        }
        let d: SharedPciDevice = d;
        children.push((at, d));
        tracing::info!(
            bdf = %c.bdf, slot, bus = secondary,
            "VFIO: cold-plugged at {secondary:02x}:{at:02x}.0 behind PCI bridge 00:{slot:02x}.0"
        );
    }
    let bridge = Bridge::new(
        BridgeKind::PciBridge,
        0,
        secondary,
        secondary,
        span,
        children,
    );
    if spare == 0 {
        let at = bus.add(Arc::new(Mutex::new(bridge))).ok_or_else(full)?;
        set.add_intx_slot(at, true);
        return Ok(());
    }
    // Physical slot numbers past the root ports' and the switch's (1-31, 32-).
    let bridge = bridge.with_shpc(64, shpc_bar, windows);
    let slot = bus
        .add_shpc_bridge(Arc::new(Mutex::new(bridge)))
        .ok_or_else(full)?;
    set.add_intx_slot(slot, true);
    tracing::info!(
        slot,
        spare,
        "VFIO: PCI bridge 00:{slot:02x}.0 with {n} SHPC slot(s) for hot-plug"
    );
    Ok(())
}

/// The physical slot number of a switch's `n`-th downstream port: past the root ports'
/// (their slots on bus 0, 1-31), so every slot pciehp registers has a name of its own.
fn downstream_slot_number(n: usize) -> u8 {
    32u8.saturating_add(n as u8)
}

/// Adds the switch of [`build_hierarchy`] to `bus`: `switched` cold-plugged in its first
/// downstream ports, `spare` more empty.
fn add_switch(
    bus: &mut PciBus,
    set: &mut VfioSet,
    switched: &[&VfioConfig],
    spare: u8,
    mem: &GuestMemory,
) -> Result<()> {
    let n = switched.len() + usize::from(spare);
    let full = || Error::Device {
        device: "PCIe switch".into(),
        reason: format!(
            "{n} downstream port(s) ({} cold-plugged, pcie_switch_port = {spare}) do not fit: \
             the built-in VMM's PCI bus has {} slots and buses up to 255, and {:#x}..{:#x} for \
             the devices' memory ({} MiB a port); plug fewer devices or lower pcie_switch_port",
            switched.len(),
            crate::devices::pci::PCI_SLOTS - 1,
            crate::devices::pci::PCI_MMIO_START,
            crate::devices::pci::PCI_MMIO_END,
            ROOT_PORT_WINDOW >> 20
        ),
    };
    let slot = bus.next_slot().ok_or_else(full)?;
    // Buses: depth first after the root ports' (1..=root ports).
    let root_bus = u8::try_from(bus.root_ports().len() + 1).map_err(|_| full())?;
    let internal = root_bus.checked_add(1).ok_or_else(full)?;
    let last = u8::try_from(usize::from(internal) + n).map_err(|_| full())?;
    // Windows: one per downstream port, back to back, the switch's the span of them.
    let windows = contiguous_windows(set, n, full)?;
    let span = match (windows.first(), windows.last()) {
        (Some(f), Some(l)) => (f.0, l.1),
        _ => return Err(full()),
    };
    let mut ports = Vec::with_capacity(n);
    for (i, window) in windows.iter().enumerate() {
        let secondary = internal + 1 + i as u8;
        let port = RootPort::downstream(downstream_slot_number(i), internal, secondary, *window);
        ports.push((i as u8, Arc::new(Mutex::new(port))));
    }
    for (c, (i, port)) in switched.iter().zip(&ports) {
        let (start, end) = windows[usize::from(*i)];
        let mut alloc = BarAllocator::within(start, end);
        let d = Arc::new(Mutex::new(set.open_in(c, mem, &mut alloc)?));
        port.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cold_plug(d.clone());
        set.devices.push(d.clone());
        let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // INTx: device 0's INTA# behind downstream port i reaches the root port's slot as
        // INTA# + i (`irq::intx_swizzle`), one of the four pins the MP table lists there.
        d.slot = Some(slot);
        d.path = Some(vec![slot, 0, *i, 0]);
        tracing::info!(
            bdf = %c.bdf, slot, downstream = i, bus = internal + 1 + i,
            "VFIO: cold-plugged at {:02x}:00.0 behind switch port {internal:02x}:{i:02x}.0 \
             (root port 00:{slot:02x}.0)", internal + 1 + i
        );
    }
    let shared: Vec<_> = ports.iter().map(|(_, p)| p.clone()).collect();
    let upstream = crate::devices::pci::switch::upstream(root_bus, internal, last, span, &shared);
    let mut root = RootPort::new(slot, root_bus, span).with_subordinate(last);
    root.cold_plug(Arc::new(Mutex::new(upstream)));
    bus.add_switch(Arc::new(Mutex::new(root)), &ports)
        .ok_or_else(full)?;
    set.add_intx_slot(slot, true);
    tracing::info!(
        slot,
        downstream = n,
        spare,
        "VFIO: PCIe switch behind root port 00:{slot:02x}.0, buses {root_bus}..={last}"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
