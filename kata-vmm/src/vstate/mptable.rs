//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI tables finds its
//! vCPUs, the IOAPIC and how the ISA IRQs reach it. Linux scans the last KiB of base memory
//! (639 KiB, [`MPTABLE_START`]) for the floating pointer; the configuration table follows it.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::error::{Error, Result};
use crate::layout::EBDA_START;

/// Where the floating pointer is written: the start of the EBDA (639 KiB), which Linux scans.
pub const MPTABLE_START: u64 = EBDA_START;
/// The most vCPUs whose table fits the KiB Linux scans and the 8-bit APIC ids.
pub const MAX_VCPUS: u8 = 32;
/// The LAPIC's base address.
const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// The IOAPIC's base address.
const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// The IOAPIC's pins (KVM's in-kernel IOAPIC has 24).
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_BUS: u8 = 0;
/// Entry types.
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
/// Interrupt types.
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Processor flags.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;

/// The bytes of the MP floating pointer and configuration table for `vcpus` vCPUs; the
/// configuration table is expected right after the 16-byte floating pointer at `base`.
pub fn mptable_bytes(vcpus: u8, base: u32) -> Result<Vec<u8>> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::Device {
            device: "MP table".into(),
            reason: format!("{vcpus} vCPUs: the built-in VMM boots 1 to {MAX_VCPUS}"),
        });
    }
    let ioapic_id = vcpus + 1;
    let mut entries = Vec::new();
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        // Signature (family 6), feature flags (FPU, APIC), reserved.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[MP_BUS, ISA_BUS]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    let mut count = u16::from(vcpus) + 2;
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ `pin` to IOAPIC pin `pin`, polarity and trigger as the bus says (edge, high).
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, ISA_BUS, pin, ioapic_id, pin]);
        count += 1;
    }
    // LINT0 as ExtINT (the PIC), LINT1 as NMI, on every LAPIC.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, ISA_BUS, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, ISA_BUS, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"KATA-RS ");
    table.extend_from_slice(b"BUILTIN-VMM ");
    table.extend_from_slice(&[0; 4]); // OEM table pointer
    table.extend_from_slice(&[0; 2]); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(base + 16).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes long, revision 1.4, features
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table for `vcpus` vCPUs at [`MPTABLE_START`].
pub fn write_mptable<M: GuestMemory>(mem: &M, vcpus: u8) -> Result<()> {
    let bytes = mptable_bytes(vcpus, MPTABLE_START as u32)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| Error::BootSetup {
            what: "the MP table",
            reason: e.to_string(),
        })
}

/// The byte that makes `bytes` sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemory as Mem;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_check_out() {
        for vcpus in [1u8, 2, MAX_VCPUS] {
            let b = mptable_bytes(vcpus, 0x9fc00).unwrap();
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0, "floating pointer checksum");
            assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 0x9fc10);
            let t = &b[16..];
            assert_eq!(&t[..4], b"PCMP");
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0, "table checksum");
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(count, u16::from(vcpus) + 2 + 24 + 2);
            // Processor entries first, the boot processor flagged.
            assert_eq!((t[44], t[45], t[47]), (MP_PROCESSOR, 0, 3));
            assert!(b.len() <= 1024, "fits the KiB Linux scans: {}", b.len());
        }
    }

    #[test]
    fn vcpu_counts_outside_the_range_are_refused() {
        assert!(mptable_bytes(0, 0).is_err());
        let e = mptable_bytes(MAX_VCPUS + 1, 0).unwrap_err();
        assert!(e.to_string().contains("1 to 32"), "{e}");
    }

    #[test]
    fn written_where_linux_scans() {
        let m = Mem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_mptable(&m, 2).unwrap();
        let mut sig = [0u8; 4];
        m.read_slice(&mut sig, GuestAddress(639 * 1024)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
