//! A PCI Express switch's upstream port: a type-1 header (PCIe device/port type 5) that sits
//! as device 0 behind a root port and whose secondary bus, the switch's internal bus, holds
//! the switch's downstream ports ([`RootPort::downstream`]) at devices 0, 1, ...
//!
//! As on the root port, the bus numbers and the memory window (1 MiB granular) are the
//! guest's to program; the VMM presets them (the internal bus, the highest bus below, a window
//! holding every downstream port's) and routing follows what the registers say now: a
//! configuration cycle for the internal bus reaches the downstream port in that slot, one for
//! a bus further down is passed to the downstream ports, and a memory access inside the window
//! (with memory decoding on) is offered to them. The upstream port has no slot, no interrupt
//! and no I/O or prefetchable window. Every access width and offset is accepted; nothing
//! panics.

use std::sync::{Arc, Mutex};

use super::root_port::{RootPort, COMMAND_MEMORY};
use super::{PciDevice, SharedPciDevice};

/// Texas Instruments' XIO3130 upstream port (what QEMU's `x3130-upstream` reports).
const VENDOR_DEVICE: u32 = 0x8232_104c;
/// Class 0x06 (bridge), subclass 0x04 (PCI-to-PCI), revision 0.
const CLASS: u32 = 0x0604_0000;
/// The PCI Express capability's offset (the only capability).
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
/// Command register bits the guest may set: I/O, memory, bus master, parity, SERR, INTx off.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status: capabilities list.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Bridge control bits kept: parity, SERR, ISA, VGA, secondary bus reset.
const BRIDGE_CONTROL_WRITABLE: u16 = 0x004f;

/// A downstream port shared with the bus (and the VM's hot-plug).
pub type SharedPort = Arc<Mutex<RootPort>>;

/// A switch's upstream port and its downstream ports.
pub struct SwitchUpstream {
    command: u16,
    line: u8,
    bridge_control: u16,
    primary: u8,
    secondary: u8,
    subordinate: u8,
    memory_base: u16,
    memory_limit: u16,
    device_control: u16,
    link_control: u16,
    device_control2: u16,
    link_control2: u16,
    /// The downstream ports by device number on the internal bus.
    ports: Vec<SharedPort>,
}

impl std::fmt::Debug for SwitchUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchUpstream")
            .field("buses", &(self.primary, self.secondary, self.subordinate))
            .field("window", &self.window())
            .field("ports", &self.ports.len())
            .finish()
    }
}

impl SwitchUpstream {
    /// An upstream port on bus `primary` whose internal bus is `secondary`, the highest bus
    /// below it `subordinate`, forwarding `window` (start, end exclusive, 1 MiB aligned; an
    /// empty or unaligned one stays closed) to `ports` (devices 0, 1, ... of the internal
    /// bus).
    pub fn new(
        primary: u8,
        secondary: u8,
        subordinate: u8,
        window: (u64, u64),
        ports: Vec<SharedPort>,
    ) -> Self {
        let (base, limit) = match window {
            (s, e) if s < e && s % (1 << 20) == 0 && e % (1 << 20) == 0 && e <= 1 << 32 => {
                ((s >> 16) as u16 & 0xfff0, ((e - 1) >> 16) as u16 & 0xfff0)
            }
            _ => (0xfff0, 0),
        };
        SwitchUpstream {
            command: COMMAND_MEMORY,
            line: 0,
            bridge_control: 0,
            primary,
            secondary,
            subordinate: subordinate.max(secondary),
            memory_base: base,
            memory_limit: limit,
            device_control: 0,
            link_control: 0,
            device_control2: 0,
            link_control2: 1,
            ports,
        }
    }

    /// Its secondary (internal) and subordinate bus numbers, as the guest last programmed
    /// them.
    pub fn buses(&self) -> (u8, u8) {
        (self.secondary, self.subordinate)
    }

    /// The memory window it forwards now (start, end exclusive), `None` when closed or memory
    /// decoding is off.
    pub fn window(&self) -> Option<(u64, u64)> {
        if self.command & COMMAND_MEMORY == 0 {
            return None;
        }
        let base = u64::from(self.memory_base & 0xfff0) << 16;
        let end = (u64::from(self.memory_limit & 0xfff0) << 16) + (1 << 20);
        (base < end).then_some((base, end))
    }

    /// The downstream ports, by device number.
    pub fn ports(&self) -> &[SharedPort] {
        &self.ports
    }

    fn pcie_read(&self, at: usize) -> u32 {
        match at {
            0x00 => u32::from(PCIE_CAPS) << 16,
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
        if (PCIE_OFFSET..PCIE_OFFSET + PCIE_LEN).contains(&off) {
            return self.pcie_read(off - PCIE_OFFSET);
        }
        match reg {
            0 => VENDOR_DEVICE,
            1 => u32::from(self.command) | u32::from(STATUS_CAP_LIST) << 16,
            2 => CLASS,
            // Header type 1, one function.
            3 => 0x0001_0000,
            6 => {
                u32::from(self.primary)
                    | u32::from(self.secondary) << 8
                    | u32::from(self.subordinate) << 16
            }
            8 => u32::from(self.memory_base) | u32::from(self.memory_limit) << 16,
            13 => PCIE_OFFSET as u32,
            15 => u32::from(self.line) | u32::from(self.bridge_control) << 16,
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
        let dword = offset - within;
        let mut v = self.read(dword / 4).to_le_bytes();
        v[within..within + data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(v);
        let written = |lo: usize, hi: usize| within < hi && within + data.len() > lo;
        match dword {
            0x04 if written(0, 2) => self.command = v as u16 & COMMAND_WRITABLE,
            0x18 => {
                if written(0, 1) {
                    self.primary = v as u8;
                }
                if written(1, 2) {
                    self.secondary = (v >> 8) as u8;
                }
                if written(2, 3) {
                    self.subordinate = (v >> 16) as u8;
                }
            }
            0x20 => {
                if written(0, 2) {
                    self.memory_base = v as u16 & 0xfff0;
                }
                if written(2, 4) {
                    self.memory_limit = (v >> 16) as u16 & 0xfff0;
                }
            }
            0x3c => {
                if written(0, 1) {
                    self.line = v as u8;
                }
                if written(2, 4) {
                    self.bridge_control = (v >> 16) as u16 & BRIDGE_CONTROL_WRITABLE;
                }
            }
            d if d == PCIE_OFFSET + 0x08 && written(0, 2) => self.device_control = v as u16,
            d if d == PCIE_OFFSET + 0x10 && written(0, 2) => self.link_control = v as u16 & 0x0fff,
            d if d == PCIE_OFFSET + 0x28 && written(0, 2) => self.device_control2 = v as u16,
            d if d == PCIE_OFFSET + 0x30 && written(0, 2) => self.link_control2 = v as u16,
            _ => {}
        }
    }

    fn forwards(&self, addr: u64, len: usize) -> bool {
        self.window().is_some_and(|(s, e)| {
            addr >= s && addr.checked_add(len as u64).is_some_and(|end| end <= e)
        })
    }
}

impl PciDevice for SwitchUpstream {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.read(reg)
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.write(offset, data)
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        self.forwards(addr, data.len())
            && self
                .ports
                .iter()
                .any(|p| lock_port(p).mmio_read(addr, data))
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        self.forwards(addr, data.len())
            && self
                .ports
                .iter()
                .any(|p| lock_port(p).mmio_write(addr, data))
    }
    fn route(&mut self, bus: u8, slot: u8) -> Option<SharedPciDevice> {
        if bus == self.secondary {
            let port: SharedPciDevice = self.ports.get(usize::from(slot))?.clone();
            return Some(port);
        }
        if bus > self.secondary && bus <= self.subordinate {
            return self
                .ports
                .iter()
                .find_map(|p| PciDevice::route(&mut *lock_port(p), bus, slot));
        }
        None
    }
}

fn lock_port(p: &SharedPort) -> std::sync::MutexGuard<'_, RootPort> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
