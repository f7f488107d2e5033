//! The boot GDT: a null descriptor, 64-bit code, data, and a TSS, as the Linux 64-bit boot
//! protocol expects them, and the `kvm_segment`s that describe them to KVM.

use kvm_bindings::kvm_segment;

/// GDT entry flags (access byte and flags nibble) of the 64-bit code segment.
pub const CODE_FLAGS: u16 = 0xa09b;
/// Of the data segment.
pub const DATA_FLAGS: u16 = 0xc093;
/// Of the TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// The boot GDT: null, code (selector 0x08), data (0x10), TSS (0x18).
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Encodes a GDT entry from its flags, base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The `kvm_segment` of GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bits = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0x0000_ffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bits(55, 1);
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: u16::from(index) * 8,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 0x3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g,
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_encode_as_the_boot_protocol_expects() {
        // The well-known values of a flat 64-bit code and data segment.
        assert_eq!(gdt_entry(CODE_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0, 0x1234_5678, 0xabcde), 0x120a_0034_5678_bcde);
    }

    #[test]
    fn segments_decode_their_entries() {
        let gdt = boot_gdt();
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.present),
            (8, 0xb, 1, 0, 1)
        );
        assert_eq!((cs.s, cs.g, cs.limit, cs.base), (1, 1, 0xffff_ffff, 0));
        let ds = segment_from_gdt(gdt[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (16, 3, 1, 0));
        let tss = segment_from_gdt(gdt[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s), (24, 0xb, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
