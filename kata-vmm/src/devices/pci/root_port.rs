//! An emulated PCI Express root port: a type-1 header on the root bus with a hot-plug capable
//! slot, whose secondary bus holds at most one function (device 0, as below any PCIe port).
//!
//! - **Header**: the bus numbers (primary, secondary, subordinate) and the memory window
//!   (memory base and limit, 1 MiB granular) are the guest's to program; the VMM presets them
//!   as firmware would (the secondary bus, the window it placed the function's BARs in) and
//!   the bus routes by what the registers say now. No I/O or prefetchable window (their
//!   registers read 0 and keep nothing, which tells Linux the port has none).
//! - **MSI** at `0x40`: one vector, 64-bit, the port's hot-plug interrupt.
//! - **PCI Express capability** at `0x60` (version 2, root port, slot implemented): the link
//!   reports data link layer active (capable, active while a function is present and the slot
//!   powered); the slot has an attention button, a power controller, attention and power
//!   indicators, is hot-plug capable and completes commands at once (no command completed
//!   events: "no command completed support"). Slot status: presence detect state, presence
//!   detect changed, data link layer state changed, attention button pressed (write 1 to
//!   clear).
//! - **Events**: [`RootPort::plug`] puts a function in the slot (presence changed and the
//!   attention button pressed, link up once powered), [`RootPort::press_attention`] asks the guest to release it; the guest
//!   turning the slot's power off (the power controller control bit) is what
//!   [`RootPort::powered_off`] reports, and [`RootPort::unplug`] takes the function out;
//!   [`RootPort::settled`] says whether the guest would act on a press now (its power
//!   indicator not blinking, no event waiting for it). A
//!   status bit newly set while its event and hot-plug interrupts are enabled raises the
//!   port's MSI once (through the signal the VM gives [`RootPort::set_signal`]), as the PCIe
//!   specification's edge for MSI.
//!
//! The same port serves as a PCIe switch's downstream port ([`RootPort::downstream`]: device
//! type 6, on the switch's internal bus, with the same slot and events), and a root port may
//! hold a switch's upstream port rather than a function ([`RootPort::with_subordinate`] gives
//! it the bus range below).
//!
//! Every access width and offset is accepted: a register the port does not have reads 0, a
//! write to it is dropped, and nothing panics.

use crate::devices::vfio::msi::{MsiCap, MsiMessage};

use super::type1::Type1;
use super::{lock, PciDevice, SharedPciDevice};

/// Red Hat's vendor id and the id of QEMU's generic PCIe root port, which Linux binds its
/// port services (pciehp) to with no quirk.
const VENDOR_DEVICE: u32 = 0x000c_1b36;
/// Class 0x06 (bridge), subclass 0x04 (PCI-to-PCI), revision 0.
const CLASS: u32 = 0x0604_0000;
/// The MSI capability's offset.
pub const MSI_OFFSET: usize = 0x40;
/// The PCI Express capability's offset.
pub const PCIE_OFFSET: usize = 0x60;
/// The PCI Express capability's length (version 2).
const PCIE_LEN: usize = 0x3c;

/// Command: memory space decoding (the window is forwarded only with it).
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Status: capabilities list.
const STATUS_CAP_LIST: u16 = 1 << 4;

/// PCIe capabilities: version 2, device/port type 4 (root port), slot implemented.
const PCIE_CAPS: u16 = 2 | (4 << 4) | (1 << 8);
/// PCIe capabilities of a switch's downstream port: device/port type 6.
const PCIE_CAPS_DOWNSTREAM: u16 = 2 | (6 << 4) | (1 << 8);
/// Texas Instruments' XIO3130 downstream port (what QEMU's `xio3130-downstream` reports).
const VENDOR_DEVICE_DOWNSTREAM: u32 = 0x8233_104c;
/// Device capabilities: 128-byte payload, role-based error reporting.
const DEVICE_CAPS: u32 = 1 << 15;
/// Link capabilities: 2.5 GT/s, x1, data link layer link active reporting capable.
const LINK_CAPS: u32 = 1 | (1 << 4) | (1 << 20);
/// Link status: 2.5 GT/s, x1.
const LINK_STATUS: u16 = 1 | (1 << 4);
/// Link status: data link layer link active.
const LINK_STATUS_DLLLA: u16 = 1 << 13;
/// Slot capabilities: attention button, power controller, attention and power indicators,
/// hot-plug capable, no command completed support (the physical slot number is added).
const SLOT_CAPS: u32 = 1 | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 18);
/// Slot control bits the guest may set: button, presence and link events, the indicators,
/// power controller control, the hot-plug interrupt (everything but command completed
/// events, bit 4, and the electromechanical interlock, bit 11).
const SLOT_CONTROL_WRITABLE: u16 = 0x17ef;
/// Slot control: attention button pressed enable.
const SLOT_CONTROL_ABPE: u16 = 1;
/// Slot control: presence detect changed enable.
const SLOT_CONTROL_PDCE: u16 = 1 << 3;
/// Slot control: hot-plug interrupt enable.
const SLOT_CONTROL_HPIE: u16 = 1 << 5;
/// Slot control: power controller control (1: power off).
pub const SLOT_CONTROL_PCC: u16 = 1 << 10;
/// Slot control: the power indicator control field (bits 8-9).
pub const SLOT_CONTROL_PIC: u16 = 3 << 8;
/// Slot control: power indicator on.
pub const PIC_ON: u16 = 1 << 8;
/// Slot control: power indicator blinking (the slot is being powered on or off).
pub const PIC_BLINK: u16 = 2 << 8;
/// Slot control: power indicator off.
pub const PIC_OFF: u16 = 3 << 8;
/// Slot control: data link layer state changed enable.
const SLOT_CONTROL_DLLSCE: u16 = 1 << 12;
/// Slot status: attention button pressed.
pub const SLOT_STATUS_ABP: u16 = 1;
/// Slot status: presence detect changed.
pub const SLOT_STATUS_PDC: u16 = 1 << 3;
/// Slot status: presence detect state.
pub const SLOT_STATUS_PDS: u16 = 1 << 6;
/// Slot status: data link layer state changed.
pub const SLOT_STATUS_DLLSC: u16 = 1 << 8;
/// The slot status bits the guest clears by writing 1 (the events this port raises).
const SLOT_STATUS_EVENTS: u16 = SLOT_STATUS_ABP | SLOT_STATUS_PDC | SLOT_STATUS_DLLSC;
/// Link capabilities 2: 2.5 GT/s supported.
const LINK_CAPS2: u32 = 1 << 1;

/// How the port raises its MSI: the message the guest programmed.
pub type MsiSignal = Box<dyn Fn(MsiMessage) + Send>;

/// One root port: its registers and the function in its slot.
pub struct RootPort {
    /// Its physical slot number (what pciehp names the slot), 1 and up.
    slot_number: u8,
    /// A switch's downstream port rather than a root port.
    downstream: bool,
    /// The type-1 header's bus numbers, window, command, line and bridge control.
    regs: Type1,
    msi: MsiCap,
    device_control: u16,
    link_control: u16,
    slot_control: u16,
    slot_status: u16,
    device_control2: u16,
    link_control2: u16,
    child: Option<SharedPciDevice>,
    /// The window the VMM gave the port (start, end exclusive).
    preset: (u64, u64),
    /// Whether the port's interrupt condition was asserted after the last change.
    asserted: bool,
    signal: Option<MsiSignal>,
}

impl std::fmt::Debug for RootPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPort")
            .field("slot_number", &self.slot_number)
            .field("secondary", &self.regs.secondary)
            .field("window", &self.window())
            .field("slot_control", &format_args!("{:#x}", self.slot_control))
            .field("slot_status", &format_args!("{:#x}", self.slot_status))
            .field("occupied", &self.child.is_some())
            .finish()
    }
}

impl RootPort {
    /// An empty, powered-off port with physical slot number `slot_number` whose secondary
    /// (and subordinate) bus is `secondary` and whose memory window is `window` (start and
    /// end exclusive, 1 MiB aligned; an empty or unaligned window leaves the window closed).
    pub fn new(slot_number: u8, secondary: u8, window: (u64, u64)) -> RootPort {
        let Some(msi) = MsiCap::new(MSI_OFFSET, 1 << 7, 1) else {
            unreachable!("a one-vector 64-bit MSI capability fits at 0x40")
        };
        RootPort {
            slot_number,
            downstream: false,
            // Memory decoding on, as firmware leaves a port whose window it programmed.
            regs: Type1::new(0, secondary, secondary, window),
            msi,
            device_control: 0,
            link_control: 0,
            slot_control: SLOT_CONTROL_PCC,
            slot_status: 0,
            device_control2: 0,
            link_control2: 1,
            child: None,
            preset: window,
            asserted: false,
            signal: None,
        }
    }

    /// A switch's downstream port, otherwise as [`RootPort::new`]: on bus `primary` (the
    /// switch's internal bus).
    pub fn downstream(slot_number: u8, primary: u8, secondary: u8, window: (u64, u64)) -> Self {
        let mut p = RootPort::new(slot_number, secondary, window);
        p.downstream = true;
        p.regs.primary = primary;
        p
    }

    /// The same port with `subordinate` as its highest bus: a switch is below it.
    pub fn with_subordinate(mut self, subordinate: u8) -> Self {
        self.regs.subordinate = subordinate.max(self.regs.secondary);
        self
    }

    /// Whether it is a switch's downstream port.
    pub fn is_downstream(&self) -> bool {
        self.downstream
    }

    /// Its physical slot number.
    pub fn slot_number(&self) -> u8 {
        self.slot_number
    }

    /// Where the port raises its MSI (the VM's message injection).
    pub fn set_signal(&mut self, signal: MsiSignal) {
        self.signal = Some(signal);
    }

    /// Its secondary and subordinate bus numbers, as the guest last programmed them.
    pub fn buses(&self) -> (u8, u8) {
        (self.regs.secondary, self.regs.subordinate)
    }

    /// The memory window it forwards now (start, end exclusive), `None` when closed or
    /// memory decoding is off.
    pub fn window(&self) -> Option<(u64, u64)> {
        self.regs.window()
    }

    /// The window the VMM gave the port when it made it (start, end exclusive), whatever the
    /// guest programmed since: where a hot-plugged function's BARs are first placed.
    pub fn preset_window(&self) -> (u64, u64) {
        self.preset
    }

    /// The function in its slot.
    pub fn child(&self) -> Option<&SharedPciDevice> {
        self.child.as_ref()
    }

    /// Whether a function is in its slot.
    pub fn is_occupied(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the slot is powered (the guest has not turned the power controller off).
    pub fn is_powered(&self) -> bool {
        self.slot_control & SLOT_CONTROL_PCC == 0
    }

    /// Whether the guest has turned off the power of an occupied slot: the function may be
    /// taken out ([`RootPort::unplug`]).
    pub fn powered_off(&self) -> bool {
        self.is_occupied() && !self.is_powered()
    }

    /// Puts `device` in the slot as present at boot (cold-plug): presence and link up, no
    /// event, the slot powered.
    pub fn cold_plug(&mut self, device: SharedPciDevice) {
        self.child = Some(device);
        self.slot_control &= !SLOT_CONTROL_PCC;
        self.slot_status |= SLOT_STATUS_PDS;
    }

    /// Puts `device` in the empty slot at runtime: presence detected and changed and the
    /// attention button pressed (as a user does after inserting a card: Linux's pciehp enables
    /// no presence event on a slot with a button, only the button's and the link's, and it
    /// brings the slot up on the presence change it then reads), and the link changes once the
    /// guest powers the slot; the port's interrupt if enabled. Gives the device back when the
    /// slot is occupied.
    pub fn plug(&mut self, device: SharedPciDevice) -> Result<(), SharedPciDevice> {
        if self.child.is_some() {
            return Err(device);
        }
        self.child = Some(device);
        self.slot_status |= SLOT_STATUS_PDS | SLOT_STATUS_PDC | SLOT_STATUS_ABP;
        if self.is_powered() {
            self.slot_status |= SLOT_STATUS_DLLSC;
        }
        self.update_interrupt();
        Ok(())
    }

    /// Whether the guest is done with the slot for now, so an attention button press is
    /// acted on: no event it enabled is waiting for it, and the power indicator it
    /// programmed is not blinking. pciehp blinks the indicator from a button press to the end
    /// of the power-on or power-off it starts, and ignores (powering on or off) or takes as a
    /// cancel (within its 5 s) a press meanwhile. A guest that never programmed the indicator
    /// (reads 0) or enabled no event interrupt is settled. One read can be true between the
    /// guest's interrupt handler clearing the events and its worker blinking the indicator:
    /// the unplug ([`crate::devices::vfio::hotplug::release`]) asks for two polls in a row.
    pub fn settled(&self) -> bool {
        let pending = self.slot_control & SLOT_CONTROL_HPIE != 0
            && self.slot_status & self.enabled_events() != 0;
        !pending && self.slot_control & SLOT_CONTROL_PIC != PIC_BLINK
    }

    /// Presses the slot's attention button: the guest's request to release the function.
    pub fn press_attention(&mut self) {
        self.slot_status |= SLOT_STATUS_ABP;
        self.update_interrupt();
    }

    /// Takes the function out of the slot: presence and link down, both changes flagged.
    pub fn unplug(&mut self) -> Option<SharedPciDevice> {
        let child = self.child.take()?;
        let link_was_up = self.is_powered();
        self.slot_status &= !SLOT_STATUS_PDS;
        self.slot_status |= SLOT_STATUS_PDC;
        if link_was_up {
            self.slot_status |= SLOT_STATUS_DLLSC;
        }
        self.update_interrupt();
        Some(child)
    }

    fn link_active(&self) -> bool {
        self.is_occupied() && self.is_powered()
    }

    /// The events whose interrupts the guest enabled.
    fn enabled_events(&self) -> u16 {
        let c = self.slot_control;
        let mut e = 0;
        if c & SLOT_CONTROL_ABPE != 0 {
            e |= SLOT_STATUS_ABP;
        }
        if c & SLOT_CONTROL_PDCE != 0 {
            e |= SLOT_STATUS_PDC;
        }
        if c & SLOT_CONTROL_DLLSCE != 0 {
            e |= SLOT_STATUS_DLLSC;
        }
        e
    }

    /// Raises the MSI on the rising edge of "an enabled event is pending".
    fn update_interrupt(&mut self) {
        let now = self.slot_control & SLOT_CONTROL_HPIE != 0
            && self.slot_status & self.enabled_events() != 0;
        let rising = now && !self.asserted;
        self.asserted = now;
        if !rising {
            return;
        }
        let state = self.msi.state();
        match (state.routes.first().copied().flatten(), &self.signal) {
            (Some(msg), Some(signal)) if state.enabled => signal(msg),
            _ => tracing::debug!(
                slot = self.slot_number,
                "root port: hot-plug event with MSI off (the guest polls or has not bound pciehp)"
            ),
        }
    }

    fn pcie_read(&self, at: usize) -> u32 {
        match at {
            0x00 => {
                let caps = if self.downstream {
                    PCIE_CAPS_DOWNSTREAM
                } else {
                    PCIE_CAPS
                };
                0x10 | u32::from(caps) << 16
            }
            0x04 => DEVICE_CAPS,
            0x08 => u32::from(self.device_control),
            0x0c => LINK_CAPS | u32::from(self.slot_number) << 24,
            0x10 => {
                let status = LINK_STATUS
                    | if self.link_active() {
                        LINK_STATUS_DLLLA
                    } else {
                        0
                    };
                u32::from(self.link_control) | u32::from(status) << 16
            }
            0x14 => SLOT_CAPS | u32::from(self.slot_number) << 19,
            0x18 => u32::from(self.slot_control) | u32::from(self.slot_status) << 16,
            0x28 => u32::from(self.device_control2),
            0x2c => LINK_CAPS2,
            0x30 => u32::from(self.link_control2),
            _ => 0,
        }
    }

    fn pcie_write(&mut self, at: usize, v: u32, written: impl Fn(usize, usize) -> bool) {
        match at {
            0x08 if written(0, 2) => self.device_control = v as u16,
            0x10 if written(0, 2) => self.link_control = v as u16 & 0x0fff,
            0x18 => {
                if written(2, 4) {
                    // Write 1 to clear: only bits set in the bytes written.
                    let clear = (v >> 16) as u16 & SLOT_STATUS_EVENTS;
                    self.slot_status &= !clear;
                }
                if written(0, 2) {
                    let was_powered = self.is_powered();
                    self.slot_control = v as u16 & SLOT_CONTROL_WRITABLE;
                    // Powering an occupied slot brings its link up.
                    if !was_powered && self.is_powered() && self.is_occupied() {
                        self.slot_status |= SLOT_STATUS_DLLSC;
                    }
                    if was_powered && !self.is_powered() && self.is_occupied() {
                        self.slot_status |= SLOT_STATUS_DLLSC;
                    }
                }
                self.update_interrupt();
            }
            0x28 if written(0, 2) => self.device_control2 = v as u16,
            0x30 if written(0, 2) => self.link_control2 = v as u16,
            _ => {}
        }
    }

    /// The 32-bit configuration register `reg` (dword index; past the space reads as 0s).
    pub fn read(&self, reg: usize) -> u32 {
        let off = reg.wrapping_mul(4);
        if off == MSI_OFFSET {
            // The capability's next pointer is the port's: the PCI Express capability.
            return self.msi.read(off) & !0xff00 | (PCIE_OFFSET as u32) << 8;
        }
        if self.msi.contains(off) {
            return self.msi.read(off);
        }
        if (PCIE_OFFSET..PCIE_OFFSET + PCIE_LEN).contains(&off) {
            return self.pcie_read(off - PCIE_OFFSET);
        }
        if let Some(v) = self.regs.read(reg) {
            return v;
        }
        match reg {
            0 if self.downstream => VENDOR_DEVICE_DOWNSTREAM,
            0 => VENDOR_DEVICE,
            1 => u32::from(self.regs.command) | u32::from(STATUS_CAP_LIST) << 16,
            2 => CLASS,
            // Header type 1, one function.
            3 => 0x0001_0000,
            13 => MSI_OFFSET as u32,
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
        if self.msi.contains(offset) {
            // The next pointer is this port's, not the capability's: only the control and
            // message registers are the guest's.
            self.msi.write(offset, data);
            return;
        }
        let dword = offset - within;
        let mut v = self.read(dword / 4).to_le_bytes();
        v[within..within + data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(v);
        let written = |lo: usize, hi: usize| within < hi && within + data.len() > lo;
        if (PCIE_OFFSET..PCIE_OFFSET + PCIE_LEN).contains(&dword) {
            self.pcie_write(dword - PCIE_OFFSET, v, written);
            return;
        }
        self.regs.write(dword, v, written);
    }

    /// A read at `addr` forwarded to the function if the window holds it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match (self.regs.forwards(addr, data.len()), &self.child) {
            (true, Some(c)) => lock(c).mmio_read(addr, data),
            _ => false,
        }
    }

    /// A write at `addr` forwarded to the function if the window holds it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match (self.regs.forwards(addr, data.len()), &self.child) {
            (true, Some(c)) => lock(c).mmio_write(addr, data),
            _ => false,
        }
    }
}

impl PciDevice for RootPort {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.read(reg)
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.write(offset, data)
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        RootPort::mmio_read(self, addr, data)
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        RootPort::mmio_write(self, addr, data)
    }
    fn route(&mut self, bus: u8, slot: u8) -> Option<SharedPciDevice> {
        let child = self.child.as_ref()?;
        if bus == self.regs.secondary {
            // Below a port only device 0 exists (a PCIe link has one device).
            return (slot == 0).then(|| child.clone());
        }
        if bus > self.regs.secondary && bus <= self.regs.subordinate {
            return lock(child).route(bus, slot);
        }
        None
    }
}

#[cfg(test)]
mod tests;
