//! The MSI-X capability of a passed-through function and its vector table, emulated: the
//! guest reads and writes the capability's control word, the table's entries and the pending
//! bit array here, never on the device; [`MsixCap::state`] says which vectors are on, which
//! masked and where each goes, and [`super::VfioPci`] carries it out through its
//! [`super::irq::IrqWiring`].
//!
//! Capability (PCI Local Bus 3.0, 6.8.2), 12 bytes at its offset:
//!
//! | offset | register |
//! | --- | --- |
//! | 0x00 | id 0x11, next, message control (table size - 1 in bits 10:0, function mask bit 14, enable bit 15) |
//! | 0x04 | table offset (bits 31:3) and BAR indicator (2:0) |
//! | 0x08 | pending bit array offset and BAR indicator |
//!
//! Table entry (16 bytes each): message address low, high, message data, vector control (bit 0:
//! masked; every vector starts masked). Pending bit array: one bit per vector, in qwords.
//!
//! The table size the guest sees is the device's capped by what the host's VFIO grants and by
//! [`MSIX_MAX_VECTORS`]; the whole of the device's table (and its pending bit array) is
//! trapped whatever the size shown, entries past it reading 0 and ignoring writes. The table
//! and array offsets are the device's (the guest finds them in its BARs where they are).

use super::msi::MsiMessage;

/// The capability id of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// The most vectors one function is given (KVM routes are a shared budget; a virtio device
/// needs queues + 1, an NVMe drive one per vCPU + 1).
pub const MSIX_MAX_VECTORS: usize = 64;

const CONTROL_SIZE_MASK: u16 = 0x7ff;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const CONTROL_ENABLE: u16 = 1 << 15;
const ENTRY_SIZE: u64 = 16;
const VECTOR_MASKED: u32 = 1;

/// Where a structure (the table, the pending bit array) is: a BAR and a range in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRange {
    /// The BAR (0-5).
    pub bar: usize,
    /// Its offset in the BAR.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl BarRange {
    /// Whether `[offset, offset + len)` of BAR `bar` overlaps it.
    pub fn overlaps(&self, bar: usize, offset: u64, len: u64) -> bool {
        bar == self.bar
            && offset < self.offset.saturating_add(self.len)
            && offset.saturating_add(len) > self.offset
    }

    /// Whether it lies in a BAR of `size` bytes.
    pub fn fits(&self, size: u64) -> bool {
        self.offset
            .checked_add(self.len)
            .is_some_and(|end| end <= size)
    }
}

/// One vector's table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            address: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

impl Entry {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: [u8; 16]) -> Entry {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Entry {
            // The address is dword aligned: bits 1:0 read 0.
            address: (u64::from(word(4)) << 32) | u64::from(word(0) & !3),
            data: word(8),
            // Bits 31:1 are reserved.
            control: word(12) & VECTOR_MASKED,
        }
    }
}

/// What the guest has programmed, as the host must carry it out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MsixState {
    /// MSI-X enable.
    pub enabled: bool,
    /// Per vector (all the table's, when enabled): masked by its vector control or by the
    /// function mask.
    pub masked: Vec<bool>,
    /// Per vector: where it goes once unmasked (`None`: an address outside the interrupt
    /// window). A masked vector keeps its route: masking holds its interrupts before they
    /// reach KVM ([`super::irq::IrqWiring::msix_hold`]).
    pub routes: Vec<Option<MsiMessage>>,
}

/// The emulated MSI-X capability and table of one function.
#[derive(Debug, Clone)]
pub struct MsixCap {
    /// Its offset in the configuration space (dword aligned, 0x40..0x100).
    offset: usize,
    /// The table's BAR indicator and offset register, as the device has it.
    table_reg: u32,
    /// The pending bit array's, as the device has it.
    pba_reg: u32,
    /// The device's table and pending bit array (trapped whole).
    table: BarRange,
    pba: BarRange,
    /// The guest-writable control bits: enable, function mask.
    control: u16,
    /// The vectors shown (the table size the guest reads).
    entries: Vec<Entry>,
}

impl MsixCap {
    /// The capability at `offset` whose message control, table and pending-bit-array
    /// registers the device reports as `control`, `table_reg`, `pba_reg`, with at most
    /// `host_vectors` vectors (what the host's VFIO grants). `None` when the host grants none,
    /// the capability would not fit the configuration space or a BAR indicator is not a BAR.
    pub fn new(
        offset: usize,
        control: u16,
        table_reg: u32,
        pba_reg: u32,
        host_vectors: u32,
    ) -> Option<MsixCap> {
        if host_vectors == 0 || offset < 0x40 || !offset.is_multiple_of(4) || offset + 12 > 0x100 {
            return None;
        }
        let device_size = u64::from(control & CONTROL_SIZE_MASK) + 1;
        let range = |reg: u32, len: u64| {
            let bar = (reg & 7) as usize;
            (bar < 6).then_some(BarRange {
                bar,
                offset: u64::from(reg & !7),
                len,
            })
        };
        let table = range(table_reg, device_size * ENTRY_SIZE)?;
        let pba = range(pba_reg, device_size.div_ceil(64) * 8)?;
        let shown = (device_size as usize)
            .min(host_vectors as usize)
            .min(MSIX_MAX_VECTORS);
        Some(MsixCap {
            offset,
            table_reg,
            pba_reg,
            table,
            pba,
            control: 0,
            entries: vec![Entry::default(); shown],
        })
    }

    /// Its offset in the configuration space.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The vectors shown to the guest.
    pub fn vectors(&self) -> usize {
        self.entries.len()
    }

    /// Where the device's vector table is (trapped whole).
    pub fn table(&self) -> BarRange {
        self.table
    }

    /// Where the device's pending bit array is (trapped whole).
    pub fn pba(&self) -> BarRange {
        self.pba
    }

    /// Whether configuration byte `offset` is in the capability.
    pub fn contains(&self, offset: usize) -> bool {
        (self.offset..self.offset + 12).contains(&offset)
    }

    /// The message control register as the guest reads it.
    fn control(&self) -> u16 {
        (self.entries.len() as u16 - 1) & CONTROL_SIZE_MASK | self.control
    }

    /// The dword at configuration byte `offset` (inside the capability; its low bits are
    /// ignored). The next pointer reads 0: the caller links the list.
    pub fn read(&self, offset: usize) -> u32 {
        match offset.wrapping_sub(self.offset) & !3 {
            0 => u32::from(MSIX_CAP_ID) | u32::from(self.control()) << 16,
            4 => self.table_reg,
            8 => self.pba_reg,
            _ => 0,
        }
    }

    /// A guest write of `data` (1 to 4 bytes within one dword) at configuration byte `offset`:
    /// only the control word's enable and function mask change; anything else is dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(at) = offset.checked_sub(self.offset) else {
            return;
        };
        let within = at % 4;
        if data.is_empty() || within + data.len() > 4 || at >= 4 {
            return;
        }
        // The control is bytes 2-3 of the first dword; a write must reach them.
        if within + data.len() <= 2 {
            return;
        }
        let mut v = self.read(self.offset).to_le_bytes();
        v[within..within + data.len()].copy_from_slice(data);
        let c = u16::from_le_bytes([v[2], v[3]]);
        self.control = c & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    }

    /// A guest read of `data.len()` bytes at `offset` in BAR `bar`, when it overlaps the table
    /// or the pending bit array (else `false`, untouched). Bytes of the table past the vectors
    /// shown, and bytes outside both, read 0; `pending(v)` says whether vector `v`'s pending
    /// bit is set.
    pub fn bar_read(
        &self,
        bar: usize,
        offset: u64,
        data: &mut [u8],
        pending: impl Fn(usize) -> bool,
    ) -> bool {
        let len = data.len() as u64;
        if self.table.overlaps(bar, offset, len) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset
                    .checked_add(i as u64)
                    .and_then(|o| o.checked_sub(self.table.offset))
                    .filter(|o| *o < self.table.len)
                    .and_then(|o| {
                        let e = self.entries.get((o / ENTRY_SIZE) as usize)?;
                        Some(e.bytes()[(o % ENTRY_SIZE) as usize])
                    })
                    .unwrap_or(0);
            }
            return true;
        }
        if self.pba.overlaps(bar, offset, len) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset
                    .checked_add(i as u64)
                    .and_then(|o| o.checked_sub(self.pba.offset))
                    .filter(|o| *o < self.pba.len)
                    .map_or(0, |o| {
                        (0..8).fold(0u8, |acc, bit| {
                            let v = (o * 8 + bit) as usize;
                            acc | (u8::from(v < self.entries.len() && pending(v)) << bit)
                        })
                    });
            }
            return true;
        }
        false
    }

    /// A guest write of `data` at `offset` in BAR `bar`, when it overlaps the table or the
    /// pending bit array (else `false`): the table's bytes change (past the vectors shown:
    /// dropped); the pending bit array is read-only.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        let len = data.len() as u64;
        if self.table.overlaps(bar, offset, len) {
            for (i, b) in data.iter().enumerate() {
                let Some(o) = offset
                    .checked_add(i as u64)
                    .and_then(|o| o.checked_sub(self.table.offset))
                    .filter(|o| *o < self.table.len)
                else {
                    continue;
                };
                if let Some(e) = self.entries.get_mut((o / ENTRY_SIZE) as usize) {
                    let mut bytes = e.bytes();
                    bytes[(o % ENTRY_SIZE) as usize] = *b;
                    *e = Entry::from_bytes(bytes);
                }
            }
            return true;
        }
        self.pba.overlaps(bar, offset, len)
    }

    /// What the guest has programmed: enable, each vector's mask and where it goes.
    pub fn state(&self) -> MsixState {
        if self.control & CONTROL_ENABLE == 0 {
            return MsixState::default();
        }
        let all = self.control & CONTROL_FUNCTION_MASK != 0;
        let masked: Vec<bool> = self
            .entries
            .iter()
            .map(|e| all || e.control & VECTOR_MASKED != 0)
            .collect();
        let routes = self
            .entries
            .iter()
            .map(|e| {
                let msg = MsiMessage {
                    address: e.address,
                    data: e.data,
                };
                msg.is_interrupt().then_some(msg)
            })
            .collect();
        MsixState {
            enabled: true,
            masked,
            routes,
        }
    }
}

/// Finds the MSI-X capability in a configuration space whose dwords `read` returns (the
/// same bounded walk as [`super::msi::find`]). Returns its offset, message control, and table
/// and pending-bit-array registers.
pub fn find(read: impl Fn(usize) -> u32) -> Option<(usize, u16, u32, u32)> {
    let at = super::caps(&read)
        .into_iter()
        .find(|(_, id)| *id == MSIX_CAP_ID)?
        .0;
    Some((
        at,
        (read(at / 4) >> 16) as u16,
        read(at / 4 + 1),
        read(at / 4 + 2),
    ))
}

#[cfg(test)]
mod tests;
