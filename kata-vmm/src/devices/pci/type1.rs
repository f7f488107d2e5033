//! The registers of a type-1 (PCI-to-PCI bridge) header that kata-vmm's root ports, switch
//! ports and bridges share: command, bus numbers, the memory window, the interrupt line and
//! the bridge control, what each reads back and what a guest write may change. Each device
//! keeps its own identity, capabilities and slot.

use super::root_port::COMMAND_MEMORY;

/// Command register bits the guest may set: I/O, memory, bus master, parity, SERR, INTx off.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Bridge control bits kept: parity, SERR, ISA, VGA, secondary bus reset.
const BRIDGE_CONTROL_WRITABLE: u16 = 0x004f;

/// A type-1 header's common registers (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct Type1 {
    pub(crate) command: u16,
    pub(crate) line: u8,
    pub(crate) bridge_control: u16,
    pub(crate) primary: u8,
    pub(crate) secondary: u8,
    pub(crate) subordinate: u8,
    /// Memory base and limit registers (bits 15:4 are address bits 31:20).
    pub(crate) memory_base: u16,
    pub(crate) memory_limit: u16,
}

impl Type1 {
    /// Registers with memory decoding on (as firmware leaves a bridge whose window it
    /// programmed), on bus `primary`, secondary bus `secondary`, highest bus below
    /// `subordinate` (at least `secondary`), forwarding `window` (start, end exclusive,
    /// 1 MiB aligned below 4 GiB; any other window stays closed).
    pub(crate) fn new(primary: u8, secondary: u8, subordinate: u8, window: (u64, u64)) -> Self {
        let (memory_base, memory_limit) = match window {
            (s, e) if s < e && s % (1 << 20) == 0 && e % (1 << 20) == 0 && e <= 1 << 32 => {
                ((s >> 16) as u16 & 0xfff0, ((e - 1) >> 16) as u16 & 0xfff0)
            }
            _ => (0xfff0, 0),
        };
        Type1 {
            command: COMMAND_MEMORY,
            line: 0,
            bridge_control: 0,
            primary,
            secondary,
            subordinate: subordinate.max(secondary),
            memory_base,
            memory_limit,
        }
    }

    /// The memory window forwarded now (start, end exclusive), as the guest programmed it;
    /// `None` when memory decoding is off or the window is empty.
    pub(crate) fn window(&self) -> Option<(u64, u64)> {
        if self.command & COMMAND_MEMORY == 0 {
            return None;
        }
        let base = u64::from(self.memory_base & 0xfff0) << 16;
        let end = (u64::from(self.memory_limit & 0xfff0) << 16) + (1 << 20);
        (base < end).then_some((base, end))
    }

    /// Whether `[addr, addr + len)` falls inside the window forwarded now.
    pub(crate) fn forwards(&self, addr: u64, len: usize) -> bool {
        self.window().is_some_and(|(s, e)| {
            addr >= s && addr.checked_add(len as u64).is_some_and(|end| end <= e)
        })
    }

    /// Dword `reg` of the header when it is one these registers make (6: the bus numbers,
    /// 8: the memory window, 15: the line and the bridge control).
    pub(crate) fn read(&self, reg: usize) -> Option<u32> {
        match reg {
            6 => Some(
                u32::from(self.primary)
                    | u32::from(self.secondary) << 8
                    | u32::from(self.subordinate) << 16,
            ),
            8 => Some(u32::from(self.memory_base) | u32::from(self.memory_limit) << 16),
            15 => Some(u32::from(self.line) | u32::from(self.bridge_control) << 16),
            _ => None,
        }
    }

    /// A guest write to the dword at byte offset `dword`, merged into `v`; `written(lo, hi)`
    /// says whether bytes `[lo, hi)` of the dword were written. Returns whether the dword was
    /// one of these registers (read-only bits and bytes not written are kept).
    pub(crate) fn write(
        &mut self,
        dword: usize,
        v: u32,
        written: impl Fn(usize, usize) -> bool,
    ) -> bool {
        match dword {
            0x04 => {
                if written(0, 2) {
                    self.command = v as u16 & COMMAND_WRITABLE;
                }
            }
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
            _ => return false,
        }
        true
    }
}
