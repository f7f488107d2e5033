//! A type-1 device with devices on its secondary bus: a PCI Express switch's upstream port
//! ([`BridgeKind::SwitchUpstream`], see [`super::switch`]) or a conventional PCI-to-PCI bridge
//! ([`BridgeKind::PciBridge`]: on the root bus, functions in slots 1-31 of its secondary bus,
//! what QEMU's `pci-bridge` and Kata's `bridge-port` give the guest).
//!
//! As on the root port, the bus numbers and the memory window (1 MiB granular) are the
//! guest's to program; the VMM presets them and routing follows what the registers say now:
//! a configuration cycle for the secondary bus reaches the device in that slot, one for a bus
//! further down is passed to the children, and a memory access inside the window (with memory
//! decoding on) is offered to them. No I/O or prefetchable window. Every access width and
//! offset is accepted; nothing panics.
//!
//! A PCI bridge made [`Bridge::with_shpc`] has hot-plug slots: a Standard Hot-Plug Controller
//! ([`super::shpc`]) whose capability is at `0x40` and whose working registers are its BAR0
//! (a 32-bit memory BAR of a page, on the primary bus), and a one-vector MSI capability at
//! `0x48` it raises on the rising edge of the controller's interrupt. The VMM's side of a
//! hot-plug is [`Bridge::plug_slot`], [`Bridge::press_slot`], [`Bridge::slot_disabled`] and
//! [`Bridge::unplug_slot`].

use super::root_port::{MsiSignal, COMMAND_MEMORY};
use super::shpc::Shpc;
use super::type1::Type1;
use super::{lock, PciDevice, SharedPciDevice};
use crate::devices::vfio::msi::MsiCap;

/// The SHPC capability's offset (8 bytes).
pub const SHPC_OFFSET: usize = 0x40;
/// The MSI capability's offset on a bridge with an SHPC.
pub const SHPC_MSI_OFFSET: usize = 0x48;

/// Texas Instruments' XIO3130 upstream port (what QEMU's `x3130-upstream` reports).
const VENDOR_DEVICE_UPSTREAM: u32 = 0x8232_104c;
/// Red Hat's id of QEMU's `pci-bridge` (a PCI-to-PCI bridge Linux binds with no quirk).
const VENDOR_DEVICE_PCI_BRIDGE: u32 = 0x0001_1b36;
/// Class 0x06 (bridge), subclass 0x04 (PCI-to-PCI), revision 0.
const CLASS: u32 = 0x0604_0000;
/// The PCI Express capability's offset (a switch upstream port's only capability).
pub const PCIE_OFFSET: usize = 0x40;
/// The PCI Express capability's length (version 2).
const PCIE_LEN: usize = 0x3c;
/// PCIe capabilities: version 2, device/port type 5 (switch upstream port), no slot.
const PCIE_CAPS: u16 = 2 | (5 << 4);
/// Device capabilities: 128-byte payload, role-based error reporting.
const DEVICE_CAPS: u32 = 1 << 15;
/// Link capabilities: 2.5 GT/s, x1.
const LINK_CAPS: u32 = 1 | (1 << 4);
/// Link status: 2.5 GT/s, x1.
const LINK_STATUS: u16 = 1 | (1 << 4);
/// Status: capabilities list.
const STATUS_CAP_LIST: u16 = 1 << 4;

/// What a [`Bridge`] is to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    /// A PCI Express switch's upstream port (104c:8232, PCIe type 5): its children are the
    /// switch's downstream ports.
    SwitchUpstream,
    /// A conventional PCI-to-PCI bridge (1b36:0001, no PCI Express capability): its children
    /// are functions in slots 1-31 of its secondary bus.
    PciBridge,
}

/// A type-1 device and the devices on its secondary bus.
pub struct Bridge {
    kind: BridgeKind,
    /// The type-1 header's bus numbers, window, command, line and bridge control.
    regs: Type1,
    device_control: u16,
    link_control: u16,
    device_control2: u16,
    link_control2: u16,
    /// The devices on the secondary bus, by device number.
    children: Vec<(u8, SharedPciDevice)>,
    /// The hot-plug controller, its MSI, BAR0 and the windows of its slots (by slot index).
    hotplug: Option<Box<Hotplug>>,
}

/// A bridge's SHPC and what goes with it.
struct Hotplug {
    shpc: Shpc,
    msi: MsiCap,
    bar0: u32,
    windows: Vec<(u64, u64)>,
    asserted: bool,
    signal: Option<MsiSignal>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("kind", &self.kind)
            .field(
                "buses",
                &(
                    self.regs.primary,
                    self.regs.secondary,
                    self.regs.subordinate,
                ),
            )
            .field("window", &self.window())
            .field(
                "children",
                &self.children.iter().map(|c| c.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Bridge {
    /// A bridge of `kind` on bus `primary` whose secondary bus is `secondary`, the highest
    /// bus below it `subordinate`, forwarding `window` (start, end exclusive, 1 MiB aligned;
    /// an empty or unaligned one stays closed) to `children` (by device number on the
    /// secondary bus).
    pub fn new(
        kind: BridgeKind,
        primary: u8,
        secondary: u8,
        subordinate: u8,
        window: (u64, u64),
        children: Vec<(u8, SharedPciDevice)>,
    ) -> Self {
        Bridge {
            kind,
            regs: Type1::new(primary, secondary, subordinate, window),
            device_control: 0,
            link_control: 0,
            device_control2: 0,
            link_control2: 1,
            children,
            hotplug: None,
        }
    }

    /// The same bridge with an SHPC of `windows.len()` slots (devices 1, 2, ...; the first's
    /// physical slot number `first_number`), the i-th slot's function placed in `windows[i]`,
    /// its registers at `bar0` (a page, 4 KiB aligned, below 4 GiB). Slots that already hold a
    /// function are enabled (cold-plugged). Only for a [`BridgeKind::PciBridge`].
    pub fn with_shpc(mut self, first_number: u16, bar0: u64, windows: Vec<(u64, u64)>) -> Self {
        if self.kind != BridgeKind::PciBridge || windows.is_empty() {
            return self;
        }
        let mut shpc = Shpc::new(windows.len() as u8, first_number);
        for (slot, _) in &self.children {
            shpc.cold_plug(*slot);
        }
        let Some(msi) = MsiCap::new(SHPC_MSI_OFFSET, 1 << 7, 1) else {
            unreachable!("a one-vector 64-bit MSI capability fits at 0x48")
        };
        self.hotplug = Some(Box::new(Hotplug {
            shpc,
            msi,
            bar0: bar0 as u32 & !0xfff,
            windows,
            asserted: false,
            signal: None,
        }));
        self
    }

    /// Where the bridge raises its MSI (the VM's message injection); nothing without an SHPC.
    pub fn set_signal(&mut self, signal: MsiSignal) {
        if let Some(h) = &mut self.hotplug {
            h.signal = Some(signal);
        }
    }

    /// Whether it has hot-plug slots.
    pub fn has_shpc(&self) -> bool {
        self.hotplug.is_some()
    }

    /// The first hot-plug slot with no function: its device number and its window.
    pub fn free_slot(&self) -> Option<(u8, (u64, u64))> {
        let h = self.hotplug.as_ref()?;
        h.windows
            .iter()
            .enumerate()
            .map(|(i, w)| (i as u8 + 1, *w))
            .find(|(d, _)| !self.is_occupied(*d))
    }

    /// How many hot-plug slots have no function.
    pub fn free_slots(&self) -> usize {
        self.hotplug.as_ref().map_or(0, |h| {
            (1..=h.shpc.slots())
                .filter(|d| !self.is_occupied(*d))
                .count()
        })
    }

    /// Puts `device` in the empty hot-plug slot `slot` at runtime: presence changed and the
    /// attention button pressed, the MSI if enabled. Gives it back if the slot is taken or
    /// not a hot-plug slot.
    pub fn plug_slot(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), SharedPciDevice> {
        let ok = self
            .hotplug
            .as_ref()
            .is_some_and(|h| h.shpc.state(slot).is_some());
        if !ok || self.is_occupied(slot) {
            return Err(device);
        }
        self.children.push((slot, device));
        if let Some(h) = &mut self.hotplug {
            h.shpc.insert(slot);
        }
        self.update_interrupt();
        Ok(())
    }

    /// Presses the attention button of `slot`: the guest's request to release its function.
    pub fn press_slot(&mut self, slot: u8) {
        if let Some(h) = &mut self.hotplug {
            h.shpc.press_button(slot);
        }
        self.update_interrupt();
    }

    /// Whether the guest would act on a press of `slot`'s button now ([`Shpc::is_settled`]:
    /// its power indicator not blinking, no event waiting); false without an SHPC.
    ///
    /// [`Shpc::is_settled`]: super::shpc::Shpc::is_settled
    pub fn slot_settled(&self, slot: u8) -> bool {
        self.hotplug
            .as_ref()
            .is_some_and(|h| h.shpc.is_settled(slot))
    }

    /// Whether the guest has disabled occupied slot `slot` (its function may be taken out).
    pub fn slot_disabled(&self, slot: u8) -> bool {
        self.is_occupied(slot)
            && self
                .hotplug
                .as_ref()
                .is_some_and(|h| h.shpc.is_disabled(slot))
    }

    /// Takes the function out of hot-plug slot `slot`: empty, presence changed.
    pub fn unplug_slot(&mut self, slot: u8) -> Option<SharedPciDevice> {
        self.hotplug.as_ref()?.shpc.state(slot)?;
        let child = self.take(slot)?;
        if let Some(h) = &mut self.hotplug {
            h.shpc.remove(slot);
        }
        self.update_interrupt();
        Some(child)
    }

    /// Raises the MSI on the rising edge of the controller's interrupt.
    fn update_interrupt(&mut self) {
        let Some(h) = &mut self.hotplug else {
            return;
        };
        let now = h.shpc.interrupt_pending();
        let rising = now && !h.asserted;
        h.asserted = now;
        if !rising {
            return;
        }
        let state = h.msi.state();
        match (state.routes.first().copied().flatten(), &h.signal) {
            (Some(msg), Some(signal)) if state.enabled => signal(msg),
            _ => tracing::debug!("PCI bridge: SHPC event with MSI off"),
        }
    }

    fn bar0_holds(&self, addr: u64, len: usize) -> Option<u64> {
        let h = self.hotplug.as_ref()?;
        if self.regs.command & COMMAND_MEMORY == 0 || h.bar0 == 0 {
            return None;
        }
        let base = u64::from(h.bar0);
        let off = addr.checked_sub(base)?;
        (off + len as u64 <= super::shpc::REGS_SIZE).then_some(off)
    }

    /// Its secondary (internal) and subordinate bus numbers, as the guest last programmed
    /// them.
    pub fn buses(&self) -> (u8, u8) {
        (self.regs.secondary, self.regs.subordinate)
    }

    /// The memory window it forwards now (start, end exclusive), `None` when closed or memory
    /// decoding is off.
    pub fn window(&self) -> Option<(u64, u64)> {
        self.regs.window()
    }

    /// What it is.
    pub fn kind(&self) -> BridgeKind {
        self.kind
    }

    /// The devices on its secondary bus, by device number.
    pub fn children(&self) -> &[(u8, SharedPciDevice)] {
        &self.children
    }

    /// Whether `slot` of the secondary bus holds a device.
    pub fn is_occupied(&self, slot: u8) -> bool {
        self.children.iter().any(|(s, _)| *s == slot)
    }

    /// Puts `device` in `slot` of its secondary bus; gives it back when the slot is taken.
    pub fn put(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), SharedPciDevice> {
        if self.is_occupied(slot) {
            return Err(device);
        }
        self.children.push((slot, device));
        Ok(())
    }

    /// Takes the device out of `slot`.
    pub fn take(&mut self, slot: u8) -> Option<SharedPciDevice> {
        let at = self.children.iter().position(|(s, _)| *s == slot)?;
        Some(self.children.remove(at).1)
    }

    fn has_pcie(&self) -> bool {
        self.kind == BridgeKind::SwitchUpstream
    }

    fn pcie_read(&self, at: usize) -> u32 {
        match at {
            // The PCI Express capability (id 0x10), the last in the list.
            0x00 => 0x10 | u32::from(PCIE_CAPS) << 16,
            0x04 => DEVICE_CAPS,
            0x08 => u32::from(self.device_control),
            0x0c => LINK_CAPS,
            0x10 => u32::from(self.link_control) | u32::from(LINK_STATUS) << 16,
            0x28 => u32::from(self.device_control2),
            0x30 => u32::from(self.link_control2),
            _ => 0,
        }
    }

    /// The 32-bit configuration register `reg` (dword index; past the space reads as 0s).
    pub fn read(&self, reg: usize) -> u32 {
        let off = reg.wrapping_mul(4);
        if self.has_pcie() && (PCIE_OFFSET..PCIE_OFFSET + PCIE_LEN).contains(&off) {
            return self.pcie_read(off - PCIE_OFFSET);
        }
        if let Some(h) = &self.hotplug {
            if (SHPC_OFFSET..SHPC_OFFSET + 8).contains(&off) {
                return h
                    .shpc
                    .cap_read((off - SHPC_OFFSET) / 4, SHPC_MSI_OFFSET as u8);
            }
            if h.msi.contains(off) {
                return h.msi.read(off);
            }
            match reg {
                1 => return u32::from(self.regs.command) | u32::from(STATUS_CAP_LIST) << 16,
                4 => return h.bar0,
                13 => return SHPC_OFFSET as u32,
                _ => {}
            }
        }
        if let Some(v) = self.regs.read(reg) {
            return v;
        }
        match reg {
            0 if self.kind == BridgeKind::PciBridge => VENDOR_DEVICE_PCI_BRIDGE,
            0 => VENDOR_DEVICE_UPSTREAM,
            1 if !self.has_pcie() => u32::from(self.regs.command),
            1 => u32::from(self.regs.command) | u32::from(STATUS_CAP_LIST) << 16,
            2 => CLASS,
            // Header type 1, one function.
            3 => 0x0001_0000,
            13 if self.has_pcie() => PCIE_OFFSET as u32,
            _ => 0,
        }
    }

    /// A guest write of `data` (1 to 4 bytes within one dword) at byte `offset`; read-only
    /// bits keep their values and anything odd is dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let within = offset % 4;
        if data.is_empty() || within + data.len() > 4 || offset >= 0x1000 {
            return;
        }
        if let Some(h) = &mut self.hotplug {
            if (SHPC_OFFSET..SHPC_OFFSET + 8).contains(&offset) {
                h.shpc.cap_write((offset - SHPC_OFFSET) / 4, within, data);
                self.update_interrupt();
                return;
            }
            if h.msi.contains(offset) {
                h.msi.write(offset, data);
                return;
            }
            if offset - within == 0x10 {
                let mut v = h.bar0.to_le_bytes();
                v[within..within + data.len()].copy_from_slice(data);
                h.bar0 = u32::from_le_bytes(v) & !0xfff;
                return;
            }
        }
        let dword = offset - within;
        let mut v = self.read(dword / 4).to_le_bytes();
        v[within..within + data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(v);
        let written = |lo: usize, hi: usize| within < hi && within + data.len() > lo;
        if self.regs.write(dword, v, written) {
            return;
        }
        match dword {
            _ if !self.has_pcie() => {}
            d if d == PCIE_OFFSET + 0x08 && written(0, 2) => self.device_control = v as u16,
            d if d == PCIE_OFFSET + 0x10 && written(0, 2) => self.link_control = v as u16 & 0x0fff,
            d if d == PCIE_OFFSET + 0x28 && written(0, 2) => self.device_control2 = v as u16,
            d if d == PCIE_OFFSET + 0x30 && written(0, 2) => self.link_control2 = v as u16,
            _ => {}
        }
    }
}

impl PciDevice for Bridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.read(reg)
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.write(offset, data)
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        if let (Some(off), Some(h)) = (self.bar0_holds(addr, data.len()), &self.hotplug) {
            h.shpc.read(off, data);
            return true;
        }
        self.regs.forwards(addr, data.len())
            && self
                .children
                .iter()
                .any(|(_, c)| lock(c).mmio_read(addr, data))
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        if let Some(off) = self.bar0_holds(addr, data.len()) {
            if let Some(h) = &mut self.hotplug {
                h.shpc.write(off, data);
            }
            self.update_interrupt();
            return true;
        }
        self.regs.forwards(addr, data.len())
            && self
                .children
                .iter()
                .any(|(_, c)| lock(c).mmio_write(addr, data))
    }
    fn route(&mut self, bus: u8, slot: u8) -> Option<SharedPciDevice> {
        if bus == self.regs.secondary {
            return self
                .children
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, c)| c.clone());
        }
        if bus > self.regs.secondary && bus <= self.regs.subordinate {
            return self
                .children
                .iter()
                .find_map(|(_, c)| lock(c).route(bus, slot));
        }
        None
    }
}

#[cfg(test)]
mod tests;
