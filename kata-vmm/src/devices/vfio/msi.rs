//! The MSI capability of a passed-through function, emulated: the guest reads and writes its
//! control, address, data and (with per-vector masking) mask registers here, never on the
//! device; what it means for the host (which vectors are on, where each one is delivered) is
//! computed by [`MsiCap::state`] and acted on by [`super::VfioPci`] through its
//! [`super::irq::IrqWiring`].
//!
//! Layout (PCI Local Bus 3.0, 6.8.1), at the capability's offset:
//!
//! | offset | 32-bit address | 64-bit address |
//! | --- | --- | --- |
//! | 0x00 | id 0x05, next, message control | same |
//! | 0x04 | message address | message address (low) |
//! | 0x08 | message data | message address (high) |
//! | 0x0c | mask bits (per-vector masking) | message data |
//! | 0x10 | pending bits (per-vector masking) | mask bits |
//! | 0x14 | | pending bits |
//!
//! The read-only bits (64-bit capable, per-vector masking capable, multiple message capable)
//! are the device's, the latter capped by what the host's VFIO grants; the next pointer reads
//! 0 (MSI is the only capability the guest is shown); pending bits read 0 (an interrupt that
//! arrives while its vector is masked is dropped, not held).

/// The capability id of MSI.
pub const MSI_CAP_ID: u8 = 0x05;

const CONTROL_ENABLE: u16 = 1;
const CONTROL_MMC_SHIFT: u16 = 1;
const CONTROL_MME_SHIFT: u16 = 4;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

/// Where an MSI is delivered: the message the device would write (address and data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// The message address (`0xfee0_0000` and the destination on x86).
    pub address: u64,
    /// The message data (vector and delivery mode on x86).
    pub data: u32,
}

impl MsiMessage {
    /// Whether the address is in x86's interrupt window (`0xfee0_0000..0xfef0_0000`): a
    /// message anywhere else would be a DMA write on real hardware, and is not routed.
    pub fn is_interrupt(&self) -> bool {
        self.address >> 20 == 0xfee
    }
}

/// What the guest has programmed, as the host must carry it out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MsiState {
    /// MSI enable.
    pub enabled: bool,
    /// The vectors the guest enabled (1, 2, 4, ... 32; meaningful when enabled).
    pub vectors: usize,
    /// Where each vector goes (`None`: masked, or an address outside the interrupt window).
    pub routes: Vec<Option<MsiMessage>>,
}

/// The emulated MSI capability of one function.
#[derive(Debug, Clone)]
pub struct MsiCap {
    /// Its offset in the configuration space (dword aligned, 0x40..0x100).
    offset: usize,
    /// The read-only control bits: 64-bit, per-vector masking, multiple message capable.
    fixed: u16,
    /// `log2` of the vectors the guest may enable.
    mmc: u16,
    /// The guest-writable control bits: enable, multiple message enable.
    control: u16,
    address: u64,
    data: u16,
    mask: u32,
}

impl MsiCap {
    /// The capability at `offset` whose message control the device reports as `control`,
    /// with at most `host_vectors` vectors (what the host's VFIO grants, 1 to 32). `None`
    /// when the host grants none or the capability would not fit the configuration space.
    pub fn new(offset: usize, control: u16, host_vectors: u32) -> Option<MsiCap> {
        if host_vectors == 0 || offset < 0x40 || !offset.is_multiple_of(4) {
            return None;
        }
        let fixed = control & (CONTROL_64BIT | CONTROL_PER_VECTOR_MASK);
        let device_mmc = (control >> CONTROL_MMC_SHIFT) & 0b111;
        // log2 of the largest power of two not above what the host grants, capped at 32.
        let host_mmc = (31 - host_vectors.min(32).leading_zeros()) as u16;
        let cap = MsiCap {
            offset,
            fixed,
            mmc: device_mmc.min(host_mmc).min(5),
            control: 0,
            address: 0,
            data: 0,
            mask: 0,
        };
        (offset + cap.len() <= 0x100).then_some(cap)
    }

    /// Its offset in the configuration space.
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn is_64(&self) -> bool {
        self.fixed & CONTROL_64BIT != 0
    }

    fn masking(&self) -> bool {
        self.fixed & CONTROL_PER_VECTOR_MASK != 0
    }

    /// Its length in bytes (10 to 24, rounded to dwords).
    pub fn len(&self) -> usize {
        match (self.is_64(), self.masking()) {
            (false, false) => 12,
            (true, false) => 16,
            (false, true) => 20,
            (true, true) => 24,
        }
    }

    /// Whether the capability has no registers (never: for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether configuration byte `offset` is in the capability.
    pub fn contains(&self, offset: usize) -> bool {
        (self.offset..self.offset + self.len()).contains(&offset)
    }

    fn data_offset(&self) -> usize {
        if self.is_64() {
            0x0c
        } else {
            0x08
        }
    }

    fn mask_offset(&self) -> Option<usize> {
        self.masking().then(|| self.data_offset() + 4)
    }

    /// The message control register as the guest reads it.
    fn control(&self) -> u16 {
        self.fixed | (self.mmc << CONTROL_MMC_SHIFT) | self.control
    }

    /// The dword at configuration byte `offset` (dword aligned, inside the capability).
    pub fn read(&self, offset: usize) -> u32 {
        let at = offset.wrapping_sub(self.offset) & !3;
        match at {
            0 => u32::from(MSI_CAP_ID) | u32::from(self.control()) << 16,
            4 => self.address as u32,
            8 if self.is_64() => (self.address >> 32) as u32,
            a if a == self.data_offset() => u32::from(self.data),
            a if Some(a) == self.mask_offset() => self.mask,
            _ => 0,
        }
    }

    /// A guest write of `data` (1 to 4 bytes within one dword) at configuration byte `offset`
    /// (inside the capability); read-only bits keep their values, anything odd is dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(at) = offset.checked_sub(self.offset) else {
            return;
        };
        let within = at % 4;
        if data.is_empty() || within + data.len() > 4 || at >= self.len() {
            return;
        }
        let dword = at - within;
        let mut v = self.read(offset & !3).to_le_bytes();
        v[within..within + data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(v);
        // Only the bytes written change (a byte write to the id leaves the control alone).
        let written = |lo: usize, hi: usize| within < hi && within + data.len() > lo;
        match dword {
            0 if written(2, 4) => {
                let c = (v >> 16) as u16;
                let mme = ((c >> CONTROL_MME_SHIFT) & 0b111).min(self.mmc);
                self.control = (c & CONTROL_ENABLE) | (mme << CONTROL_MME_SHIFT);
            }
            4 => self.address = (self.address & !0xffff_ffff) | u64::from(v & !3),
            8 if self.is_64() => self.address = (self.address & 0xffff_ffff) | (u64::from(v) << 32),
            d if d == self.data_offset() && written(0, 2) => self.data = v as u16,
            d if Some(d) == self.mask_offset() => self.mask = v,
            _ => {}
        }
    }

    /// What the guest has programmed: enable, the vectors enabled, where each goes.
    pub fn state(&self) -> MsiState {
        let enabled = self.control & CONTROL_ENABLE != 0;
        if !enabled {
            return MsiState::default();
        }
        let vectors = 1usize << ((self.control >> CONTROL_MME_SHIFT) & 0b111);
        let routes = (0..vectors)
            .map(|v| {
                if self.masking() && self.mask & (1 << v) != 0 {
                    return None;
                }
                // Multiple messages: the vector number is in the data's low bits.
                let low = (vectors - 1) as u32;
                let msg = MsiMessage {
                    address: self.address,
                    data: (u32::from(self.data) & !low) | v as u32,
                };
                msg.is_interrupt().then_some(msg)
            })
            .collect();
        MsiState {
            enabled,
            vectors,
            routes,
        }
    }

    /// Back to reset: disabled, nothing programmed (the function's reset).
    pub fn reset(&mut self) {
        self.control = 0;
        self.address = 0;
        self.data = 0;
        self.mask = 0;
    }
}

/// Finds the MSI capability in a configuration space whose dwords `read` returns: walks the
/// list from the pointer at 0x34 (at most 48 steps, offsets 0x40..0x100: a looping or wild
/// list ends the walk). Returns its offset and message control.
pub fn find(read: impl Fn(usize) -> u32) -> Option<(usize, u16)> {
    let mut at = (read(0x34 / 4) & 0xfc) as usize;
    for _ in 0..48 {
        if !(0x40..0x100).contains(&at) {
            return None;
        }
        let head = read(at / 4);
        if head as u8 == MSI_CAP_ID {
            return Some((at, (head >> 16) as u16));
        }
        at = ((head >> 8) & 0xfc) as usize;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// edu's capability: 64-bit, one vector, no masking (QEMU's `msi_init(.., 1, true, false)`).
    fn edu() -> MsiCap {
        MsiCap::new(0x40, CONTROL_64BIT, 1).unwrap()
    }

    fn write32(c: &mut MsiCap, off: usize, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    #[test]
    fn the_header_shows_msi_alone_with_the_device_s_read_only_bits() {
        let c = edu();
        assert_eq!(c.read(0x40), 0x0080_0005, "id 5, next 0, 64-bit, 1 vector");
        assert_eq!(c.len(), 16);
        assert!(c.contains(0x4c) && !c.contains(0x50) && !c.contains(0x3f));
        // Multiple message capable: the device says 8, the host grants 2.
        let c = MsiCap::new(0x50, 3 << CONTROL_MMC_SHIFT | CONTROL_PER_VECTOR_MASK, 2).unwrap();
        assert_eq!(
            c.read(0x50) >> 16,
            u32::from(1 << CONTROL_MMC_SHIFT | CONTROL_PER_VECTOR_MASK)
        );
        assert_eq!(c.len(), 20);
        // Nothing granted, a misplaced or overflowing capability: none.
        assert!(MsiCap::new(0x40, 0, 0).is_none());
        assert!(MsiCap::new(0x42, 0, 1).is_none());
        assert!(MsiCap::new(0x20, 0, 1).is_none());
        assert!(MsiCap::new(0xf0, CONTROL_64BIT | CONTROL_PER_VECTOR_MASK, 1).is_none());
    }

    #[test]
    fn enabling_routes_the_programmed_message_and_disabling_drops_it() {
        let mut c = edu();
        assert_eq!(c.state(), MsiState::default());
        write32(&mut c, 0x44, 0xfee0_1003);
        write32(&mut c, 0x48, 0);
        write32(&mut c, 0x4c, 0xdead_0041);
        assert!(!c.state().enabled, "programmed, not yet enabled");
        // The enable bit by a 16-bit write of the control, as Linux does it.
        c.write(0x42, &1u16.to_le_bytes());
        let s = c.state();
        assert!(s.enabled);
        assert_eq!(s.vectors, 1);
        assert_eq!(
            s.routes,
            vec![Some(MsiMessage {
                address: 0xfee0_1000,
                data: 0x41
            })],
            "address bits 1:0 and the data's upper half are not the guest's"
        );
        assert_eq!(c.read(0x40) >> 16 & 1, 1);
        // A byte write to the id or the next pointer leaves the control alone.
        c.write(0x40, &[0xff]);
        c.write(0x41, &[0xff]);
        assert!(c.state().enabled);
        assert_eq!(c.read(0x40) & 0xffff, 0x0005);
        // Moving the vector while enabled: a new route.
        c.write(0x4c, &0x42u16.to_le_bytes());
        assert_eq!(c.state().routes[0].unwrap().data, 0x42);
        c.write(0x42, &0u16.to_le_bytes());
        assert_eq!(c.state(), MsiState::default());
    }

    #[test]
    fn multiple_messages_are_capped_and_carry_the_vector_in_the_data() {
        let mut c = MsiCap::new(0x40, 5 << CONTROL_MMC_SHIFT, 4).unwrap();
        write32(&mut c, 0x44, 0xfee0_0000);
        write32(&mut c, 0x48, 0x30);
        // The guest asks for 32 (MME 5): it gets the 4 granted.
        c.write(0x42, &(1u16 | 5 << CONTROL_MME_SHIFT).to_le_bytes());
        let s = c.state();
        assert_eq!(s.vectors, 4);
        let data: Vec<u32> = s.routes.iter().map(|r| r.unwrap().data).collect();
        assert_eq!(data, [0x30, 0x31, 0x32, 0x33]);
        assert_eq!(c.read(0x40) >> 16 >> CONTROL_MME_SHIFT & 7, 2);
    }

    #[test]
    fn a_masked_vector_or_a_message_outside_the_interrupt_window_is_not_routed() {
        let mut c = MsiCap::new(0x40, CONTROL_PER_VECTOR_MASK | 1 << CONTROL_MMC_SHIFT, 2).unwrap();
        write32(&mut c, 0x44, 0xfee0_0000);
        write32(&mut c, 0x48, 0x50);
        write32(&mut c, 0x4c, 0b01);
        c.write(0x42, &(1u16 | 1 << CONTROL_MME_SHIFT).to_le_bytes());
        let s = c.state();
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.routes[0], None, "masked");
        assert_eq!(s.routes[1].unwrap().data, 0x51);
        assert_eq!(c.read(0x4c), 1);
        assert_eq!(c.read(0x50), 0, "pending reads 0");
        // An address in RAM: a DMA write on hardware, no route here.
        write32(&mut c, 0x44, 0x0010_0000);
        assert_eq!(c.state().routes, vec![None, None]);
        // 64-bit: a high address half outside the window too.
        let mut c = edu();
        write32(&mut c, 0x44, 0xfee0_0000);
        write32(&mut c, 0x48, 1);
        c.write(0x42, &[1]);
        assert_eq!(c.state().routes, vec![None]);
        write32(&mut c, 0x48, 0);
        assert!(c.state().routes[0].is_some());
    }

    #[test]
    fn the_list_walk_finds_msi_and_survives_loops_and_wild_pointers() {
        let mut cfg = [0u32; 64];
        cfg[0x34 / 4] = 0x40;
        cfg[0x40 / 4] = 0x0000_5001; // PM, next 0x50
        cfg[0x50 / 4] = 0x0080_0005; // MSI
        assert_eq!(find(|r| cfg[r]), Some((0x50, 0x80)));
        cfg[0x40 / 4] = 0x0000_4001; // a loop onto itself
        assert_eq!(find(|r| cfg[r]), None);
        cfg[0x40 / 4] = 0x0000_1001; // into the header
        assert_eq!(find(|r| cfg[r]), None);
        cfg[0x34 / 4] = 0xff;
        assert_eq!(find(|r| cfg.get(r).copied().unwrap_or(!0)), None);
    }

    proptest::proptest! {
        #[test]
        fn garbage_writes_never_panic_and_keep_the_read_only_bits(
            writes in proptest::collection::vec((0usize..0x120, proptest::collection::vec(proptest::num::u8::ANY, 0..6)), 0..40),
            control in proptest::num::u16::ANY,
            host in 0u32..40,
        ) {
            let Some(mut c) = MsiCap::new(0x40, control, host) else { return Ok(()) };
            let fixed = c.read(0x40) >> 16 & u32::from(c.fixed | 0b1110);
            for (off, data) in &writes {
                c.write(*off, data);
                let s = c.state();
                proptest::prop_assert!(s.vectors <= 32 && s.routes.len() == s.vectors);
                proptest::prop_assert!(s.vectors <= host.max(1) as usize);
                proptest::prop_assert_eq!(c.read(0x40) >> 16 & u32::from(c.fixed | 0b1110), fixed);
                for r in 0..0x100 / 4 {
                    let _ = c.read(r * 4);
                }
            }
        }
    }
}
