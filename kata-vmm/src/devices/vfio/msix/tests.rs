//! The MSI-X capability and table emulation, without a device.

use super::*;

/// QEMU's virtio-pci layout: 3 vectors (table size 2), the table at BAR1 offset 0, the
/// pending bit array at BAR1 offset 0x800.
fn virtio(host: u32) -> MsixCap {
    MsixCap::new(0x98, 2, 1, 0x801, host).unwrap()
}

fn write32(c: &mut MsixCap, bar: usize, off: u64, v: u32) -> bool {
    c.bar_write(bar, off, &v.to_le_bytes())
}

fn read32(c: &MsixCap, bar: usize, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(c.bar_read(bar, off, &mut b, |_| false), "{bar} {off:#x}");
    u32::from_le_bytes(b)
}

/// Programs vector `v` with `fee0_0000 | dest << 12` and `data`.
fn program(c: &mut MsixCap, v: u64, dest: u32, data: u32) {
    write32(c, 1, v * 16, 0xfee0_0000 | dest << 12);
    write32(c, 1, v * 16 + 4, 0);
    write32(c, 1, v * 16 + 8, data);
}

#[test]
fn the_capability_shows_the_device_s_table_and_the_size_granted() {
    let c = virtio(3);
    assert_eq!(c.read(0x98), 0x0002_0011, "id 0x11, next 0, size 3, off");
    assert_eq!(c.read(0x9c), 1, "table: BAR1 offset 0");
    assert_eq!(c.read(0xa0), 0x801, "PBA: BAR1 offset 0x800");
    assert_eq!(c.read(0xa4), 0);
    assert!(c.contains(0xa3) && !c.contains(0xa4) && !c.contains(0x97));
    assert_eq!(
        c.table(),
        BarRange {
            bar: 1,
            offset: 0,
            len: 48
        }
    );
    assert_eq!(
        c.pba(),
        BarRange {
            bar: 1,
            offset: 0x800,
            len: 8
        }
    );
    // The host grants 2: the guest sees 2, the whole table is still trapped.
    let c = virtio(2);
    assert_eq!(c.read(0x98) >> 16 & 0x7ff, 1);
    assert_eq!(c.vectors(), 2);
    assert_eq!(c.table().len, 48);
    // A 2048-vector table: capped, its array 256 bytes.
    let c = MsixCap::new(0x40, 0x7ff, 0x2000, 0x3, 4096).unwrap();
    assert_eq!(c.vectors(), MSIX_MAX_VECTORS);
    assert_eq!(c.table().len, 2048 * 16);
    assert_eq!(c.pba().len, 256);
    // Nothing granted, a misplaced capability, a BAR indicator past BAR5: none.
    assert!(MsixCap::new(0x98, 2, 1, 0x801, 0).is_none());
    assert!(MsixCap::new(0x9a, 2, 1, 0x801, 3).is_none());
    assert!(MsixCap::new(0x30, 2, 1, 0x801, 3).is_none());
    assert!(MsixCap::new(0xf8, 2, 1, 0x801, 3).is_none());
    assert!(MsixCap::new(0x98, 2, 6, 0x801, 3).is_none());
    assert!(MsixCap::new(0x98, 2, 1, 0x807, 3).is_none());
}

#[test]
fn enable_and_function_mask_are_the_only_writable_control_bits() {
    let mut c = virtio(3);
    assert_eq!(c.state(), MsixState::default());
    // Linux: enable with the function masked, in one 16-bit write of the control.
    c.write(0x9a, &0xc7ffu16.to_le_bytes());
    assert_eq!(c.read(0x98) >> 16, 0xc002, "size stays the device's");
    let s = c.state();
    assert!(s.enabled);
    assert_eq!(s.masked, [true; 3]);
    // The id or next pointer bytes alone leave the control; the table register is read-only.
    c.write(0x98, &[0xff]);
    c.write(0x99, &[0xff]);
    c.write(0x9c, &0xffff_ffffu32.to_le_bytes());
    c.write(0xa0, &[0]);
    assert_eq!(c.read(0x98), 0xc002_0011);
    assert_eq!(c.read(0x9c), 1);
    assert_eq!(c.read(0xa0), 0x801);
    // A byte write of the control's high byte: unmask the function.
    c.write(0x9b, &[0x80]);
    assert_eq!(c.read(0x98) >> 16, 0x8002);
    // Still masked: every vector starts masked in its vector control.
    assert_eq!(c.state().masked, [true; 3]);
    // A dword write with the control in its upper half.
    c.write(0x98, &0x0000_0011u32.to_le_bytes());
    assert_eq!(c.state(), MsixState::default());
    // Odd: across the dword, empty, out of the capability.
    c.write(0x9b, &[0x80, 0]);
    c.write(0x9a, &[]);
    c.write(0x40, &[0xff; 4]);
    assert_eq!(c.state(), MsixState::default());
}

#[test]
fn table_entries_read_back_and_route_unmasked_vectors() {
    let mut c = virtio(3);
    for v in 0..3u64 {
        assert_eq!(read32(&c, 1, v * 16 + 12), 1, "vector {v} starts masked");
    }
    program(&mut c, 0, 1, 0x41);
    program(&mut c, 1, 2, 0x51);
    // An address outside the interrupt window: a DMA write on hardware, never routed.
    write32(&mut c, 1, 0x20, 0x0010_0000);
    write32(&mut c, 1, 0x28, 0x61);
    assert_eq!(read32(&c, 1, 0), 0xfee0_1000);
    assert_eq!(read32(&c, 1, 8), 0x41);
    c.write(0x9a, &0x8000u16.to_le_bytes());
    // Unmask vector 1 only (vector control's reserved bits are dropped).
    write32(&mut c, 1, 0x1c, 0xffff_fffe);
    assert_eq!(read32(&c, 1, 0x1c), 0);
    let s = c.state();
    assert_eq!(s.masked, [true, false, true]);
    let m = |dest: u64, data| {
        Some(MsiMessage {
            address: 0xfee0_0000 | dest << 12,
            data,
        })
    };
    assert_eq!(s.routes, vec![m(1, 0x41), m(2, 0x51), None]);
    // The function mask masks all, the routes stay.
    c.write(0x9b, &[0xc0]);
    assert_eq!(c.state().masked, [true; 3]);
    assert_eq!(c.state().routes[1], m(2, 0x51));
    // A 64-bit write of the address, a high half outside the window.
    c.bar_write(1, 0x10, &0x1_fee0_0000u64.to_le_bytes());
    assert_eq!(c.state().routes[1], None);
    // Address bits 1:0 read 0.
    write32(&mut c, 1, 0, 0xfee0_0003);
    assert_eq!(read32(&c, 1, 0), 0xfee0_0000);
}

#[test]
fn odd_sized_misaligned_and_out_of_range_accesses() {
    let mut c = virtio(2);
    // Byte by byte, misaligned: data of vector 0 through a 2-byte write at 9 and a byte at 8.
    assert!(c.bar_write(1, 9, &[0x12, 0x34]));
    assert!(c.bar_write(1, 8, &[0x78]));
    assert_eq!(read32(&c, 1, 8), 0x0034_1278);
    let mut b = [0u8; 3];
    assert!(c.bar_read(1, 7, &mut b, |_| false));
    assert_eq!(b, [0, 0x78, 0x12]);
    // Straddling two entries: the end of vector 0's control, the start of vector 1's address.
    assert!(c.bar_write(1, 12, &[0, 0, 0, 0, 0x00, 0x10, 0xe0, 0xfe]));
    assert_eq!(read32(&c, 1, 12), 0, "vector 0 unmasked");
    assert_eq!(read32(&c, 1, 16), 0xfee0_1000);
    // Vector 2 exists on the device, not for the guest: reads 0, writes dropped.
    assert!(write32(&mut c, 1, 0x20, 0xfee0_0000));
    assert!(write32(&mut c, 1, 0x2c, 0));
    assert_eq!(read32(&c, 1, 0x20), 0);
    assert_eq!(read32(&c, 1, 0x2c), 0);
    // Straddling the table's end: the table's bytes emulated, the rest reads 0.
    let mut b = [0xaa; 8];
    assert!(c.bar_read(1, 0x2c, &mut b, |_| false));
    assert_eq!(b, [0; 8]);
    // Outside both, or another BAR: not the table's.
    let mut b = [0u8; 4];
    assert!(!c.bar_read(1, 0x30, &mut b, |_| false));
    assert!(!c.bar_read(0, 0, &mut b, |_| false));
    assert!(!c.bar_write(4, 0, &[1]));
    assert!(!c.bar_read(1, u64::MAX - 1, &mut b, |_| false));
    assert!(!c.bar_write(1, u64::MAX, &[1, 2]));
}

#[test]
fn the_pending_bit_array_reads_what_the_wiring_holds_and_ignores_writes() {
    let c = virtio(3);
    let mut b = [0u8; 8];
    assert!(c.bar_read(1, 0x800, &mut b, |v| v == 0 || v == 2));
    assert_eq!(u64::from_le_bytes(b), 0b101);
    // Past the vectors shown: 0 whatever the wiring says.
    let c = virtio(1);
    assert!(c.bar_read(1, 0x800, &mut b, |_| true));
    assert_eq!(u64::from_le_bytes(b), 0b1);
    let mut c = virtio(3);
    assert!(c.bar_write(1, 0x800, &[0xff; 8]), "trapped, dropped");
    let mut b = [0u8; 1];
    assert!(c.bar_read(1, 0x800, &mut b, |_| false));
    assert_eq!(b, [0]);
    // A byte past the array reads 0.
    let mut b = [0xff; 2];
    assert!(c.bar_read(1, 0x807, &mut b, |_| true));
    assert_eq!(b, [0, 0]);
}

#[test]
fn the_list_walk_finds_msix() {
    let mut cfg = [0u32; 64];
    cfg[0x34 / 4] = 0x84;
    cfg[0x84 / 4] = 0x0000_9809; // vendor, next 0x98
    cfg[0x98 / 4] = 0x0002_0011;
    cfg[0x9c / 4] = 1;
    cfg[0xa0 / 4] = 0x801;
    assert_eq!(find(|r| cfg[r]), Some((0x98, 2, 1, 0x801)));
    cfg[0x98 / 4] = 0x0002_8411; // a loop back
    assert_eq!(find(|r| cfg[r]), Some((0x98, 2, 1, 0x801)));
    cfg[0x84 / 4] = 0x0000_8409; // a loop onto itself, no MSI-X
    assert_eq!(find(|r| cfg[r]), None);
}

proptest::proptest! {
    #[test]
    fn guest_garbage_never_panics_and_keeps_the_read_only_parts(
        ops in proptest::collection::vec(
            (0usize..3, 0usize..6, 0u64..0x900, proptest::collection::vec(proptest::num::u8::ANY, 0..10)),
            0..60),
        control in proptest::num::u16::ANY,
        table in proptest::num::u32::ANY,
        pba in proptest::num::u32::ANY,
        host in 0u32..100,
    ) {
        let Some(mut c) = MsixCap::new(0x40, control, table, pba, host) else { return Ok(()) };
        for (kind, bar, off, data) in &ops {
            match kind {
                0 => c.write(0x40 + (*off as usize % 16), data),
                1 => { c.bar_write(*bar, *off, data); }
                _ => {
                    let mut buf = data.clone();
                    c.bar_read(*bar, *off, &mut buf, |_| true);
                }
            }
            let s = c.state();
            proptest::prop_assert!(s.masked.len() == s.routes.len());
            proptest::prop_assert!(!s.enabled || s.masked.len() == c.vectors());
            proptest::prop_assert!(c.vectors() >= 1 && c.vectors() <= MSIX_MAX_VECTORS);
            proptest::prop_assert_eq!(c.read(0x44), table);
            proptest::prop_assert_eq!(c.read(0x48), pba);
            proptest::prop_assert_eq!(c.read(0x40) >> 16 & 0x7ff, c.vectors() as u32 - 1);
            proptest::prop_assert!(s.routes.iter().flatten().all(MsiMessage::is_interrupt));
        }
    }
}
