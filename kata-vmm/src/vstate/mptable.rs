//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI tables finds its
//! vCPUs, the IOAPIC and how the ISA IRQs reach it. Linux scans the last KiB of base memory
//! (639 KiB, [`MPTABLE_START`]) for the floating pointer; the configuration table follows it.
//!
//! With passed-through PCI functions ([`mptable_bytes_with_pci`]) the table also names PCI bus
//! 0 and, per bus-0 slot and interrupt pin (INTA# to INTD#), which IOAPIC pin it is
//! (level-triggered, active high): how a guest without ACPI finds a PCI function's INTx line
//! (`IO_APIC_get_PCI_irq_vector`, after swizzling a function's pin up to bus 0 through the
//! bridges above it: see `devices::vfio::irq::intx_swizzle` and `plan_intx`). Linux matches
//! the MP bus id against the PCI bus number, so PCI is bus 0 and ISA moves to bus 1 then; the
//! ISA entries of the pins PCI takes are left out. Without PCI the table is as before.
//!
//! Only the floating pointer must lie in the KiB Linux scans; the configuration table after
//! it may run past 640 KiB (guest memory up to 1 MiB, which the e820 map leaves out), as it
//! does with many vCPUs and many shared PCI lines.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::error::{Error, Result};
use crate::layout::EBDA_START;

/// Where the floating pointer is written: the start of the EBDA (639 KiB), which Linux scans.
pub const MPTABLE_START: u64 = EBDA_START;
/// The most vCPUs the built-in VMM lists (one 20-byte processor entry each; APIC ids are 8
/// bits). Only the floating pointer must lie in the KiB Linux scans: the table after it may
/// run past 640 KiB (see the module docs).
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
/// The ISA bus's id when PCI is bus 0.
const ISA_BUS_BESIDE_PCI: u8 = 1;
const PCI_BUS: u8 = 0;
/// An I/O interrupt entry's flags for PCI: level-triggered (`0b11 << 2`), active high (`0b01`).
const PCI_INT_FLAGS: u8 = 0x0d;
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
    mptable_bytes_with_pci(vcpus, base, &[])
}

/// One interrupt pin of a bus-0 slot, as the MP table tells it: the slot, the pin (INTA# to
/// INTD#) and the IOAPIC pin it raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIntx {
    /// The slot (device number) on bus 0.
    pub slot: u8,
    /// The interrupt pin: 0 = INTA#, 1 = INTB#, 2 = INTC#, 3 = INTD#.
    pub intx: u8,
    /// The IOAPIC pin (the GSI of KVM's default routing).
    pub pin: u8,
}

/// [`mptable_bytes`] with PCI bus 0 and an I/O interrupt entry per function of `pci` (none:
/// exactly [`mptable_bytes`]' table).
pub fn mptable_bytes_with_pci(vcpus: u8, base: u32, pci: &[PciIntx]) -> Result<Vec<u8>> {
    if let Some(bad) = pci
        .iter()
        .find(|p| p.pin >= IOAPIC_PINS || p.slot >= 32 || p.intx >= 4)
    {
        return Err(Error::Device {
            device: "MP table".into(),
            reason: format!(
                "PCI slot {} pin INT{}# on IOAPIC pin {}: slots are 0-31, pins INTA#-INTD#, \
                 IOAPIC pins 0-{}",
                bad.slot,
                char::from(b'A'.wrapping_add(bad.intx)),
                bad.pin,
                IOAPIC_PINS - 1
            ),
        });
    }
    let isa = if pci.is_empty() {
        ISA_BUS
    } else {
        ISA_BUS_BESIDE_PCI
    };
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
    let mut count = u16::from(vcpus) + 2;
    if !pci.is_empty() {
        entries.extend_from_slice(&[MP_BUS, PCI_BUS]);
        entries.extend_from_slice(b"PCI   ");
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, isa]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        if pci.iter().any(|p| p.pin == pin) {
            continue;
        }
        // ISA IRQ `pin` to IOAPIC pin `pin`, polarity and trigger as the bus says (edge, high).
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, isa, pin, ioapic_id, pin]);
        count += 1;
    }
    for p in pci {
        // Source bus IRQ: the slot in bits 2-6, the pin (INTA# = 0) in bits 0-1.
        entries.extend_from_slice(&[
            MP_INTSRC,
            MP_INT,
            PCI_INT_FLAGS,
            0,
            PCI_BUS,
            p.slot << 2 | p.intx,
            ioapic_id,
            p.pin,
        ]);
        count += 1;
    }
    // LINT0 as ExtINT (the PIC), LINT1 as NMI, on every LAPIC.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, isa, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, isa, 0, 0xff, 1]);
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
    write_mptable_with_pci(mem, vcpus, &[])
}

/// Writes [`mptable_bytes_with_pci`] at [`MPTABLE_START`].
pub fn write_mptable_with_pci<M: GuestMemory>(mem: &M, vcpus: u8, pci: &[PciIntx]) -> Result<()> {
    let bytes = mptable_bytes_with_pci(vcpus, MPTABLE_START as u32, pci)?;
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

    /// The table's entries after the header (processor entries are 20 bytes, the rest 8).
    fn entries(b: &[u8]) -> Vec<&[u8]> {
        let t = &b[16..];
        let mut at = 44;
        let mut out = Vec::new();
        while at < t.len() {
            let len = if t[at] == MP_PROCESSOR { 20 } else { 8 };
            out.push(&t[at..at + len]);
            at += len;
        }
        out
    }

    #[test]
    fn pci_functions_get_bus_0_and_a_level_triggered_pin_each() {
        let pci = [
            PciIntx {
                slot: 1,
                intx: 0,
                pin: 23,
            },
            PciIntx {
                slot: 2,
                intx: 0,
                pin: 22,
            },
        ];
        let b = mptable_bytes_with_pci(2, 0x9fc00, &pci).unwrap();
        let t = &b[16..];
        assert_eq!(sum(t), 0);
        let e = entries(&b);
        let count = u16::from_le_bytes([t[34], t[35]]) as usize;
        assert_eq!(count, e.len());
        let buses: Vec<_> = e
            .iter()
            .filter(|e| e[0] == MP_BUS)
            .map(|e| (e[1], &e[2..8]))
            .collect();
        assert_eq!(buses, [(0, &b"PCI   "[..]), (1, &b"ISA   "[..])]);
        let ints: Vec<_> = e.iter().filter(|e| e[0] == MP_INTSRC).collect();
        assert_eq!(ints.len(), 24, "22 ISA pins and 2 PCI ones");
        let pci_ints: Vec<_> = ints
            .iter()
            .filter(|e| e[4] == PCI_BUS)
            .map(|e| (e[2], e[5], e[7]))
            .collect();
        assert_eq!(pci_ints, [(0x0d, 1 << 2, 23), (0x0d, 2 << 2, 22)]);
        assert!(
            ints.iter()
                .filter(|e| e[4] == 1)
                .all(|e| e[7] != 23 && e[7] != 22),
            "no ISA entry on a PCI pin"
        );
        // The serial port's pin stays ISA IRQ 4; LINT entries name the ISA bus.
        assert!(ints.iter().any(|e| e[4] == 1 && e[5] == 4 && e[7] == 4));
        assert!(e.iter().filter(|e| e[0] == MP_LINTSRC).all(|e| e[4] == 1));
        let big = mptable_bytes_with_pci(MAX_VCPUS, 0, &pci).unwrap();
        assert!(big.len() <= 1024, "fits the KiB Linux scans: {}", big.len());
        // Without PCI: the table of before (ISA is bus 0, no PCI bus).
        let plain = mptable_bytes(2, 0x9fc00).unwrap();
        let buses: Vec<_> = entries(&plain)
            .into_iter()
            .filter(|e| e[0] == MP_BUS)
            .map(|e| e[1])
            .collect();
        assert_eq!(buses, [0]);
        // A pin or slot out of range.
        let at = |slot, intx, pin| [PciIntx { slot, intx, pin }];
        assert!(mptable_bytes_with_pci(1, 0, &at(1, 0, 24)).is_err());
        assert!(mptable_bytes_with_pci(1, 0, &at(32, 0, 20)).is_err());
        let e = mptable_bytes_with_pci(1, 0, &at(1, 4, 20)).unwrap_err();
        assert!(e.to_string().contains("INTE#"), "{e}");
    }

    #[test]
    fn every_pin_of_a_slot_has_its_entry_and_shared_lines_one_isa_gap() {
        // A bridge in slot 2: INTA# to INTD# on pins 22, 19, 18, 18 (the last two shared), a
        // root port in slot 1 on 23.
        let e = |slot, intx, pin| PciIntx { slot, intx, pin };
        let pci = [
            e(1, 0, 23),
            e(2, 0, 22),
            e(2, 1, 19),
            e(2, 2, 18),
            e(2, 3, 18),
        ];
        let b = mptable_bytes_with_pci(MAX_VCPUS, 0x9fc00, &pci).unwrap();
        let t = &b[16..];
        assert_eq!(sum(t), 0);
        let all = entries(&b);
        assert_eq!(u16::from_le_bytes([t[34], t[35]]) as usize, all.len());
        let pci_ints: Vec<_> = all
            .iter()
            .filter(|e| e[0] == MP_INTSRC && e[4] == PCI_BUS)
            .map(|e| (e[2], e[5], e[7]))
            .collect();
        // Source bus IRQ: slot << 2 | pin.
        assert_eq!(
            pci_ints,
            [
                (0x0d, 1 << 2, 23),
                (0x0d, 2 << 2, 22),
                (0x0d, 2 << 2 | 1, 19),
                (0x0d, 2 << 2 | 2, 18),
                (0x0d, 2 << 2 | 3, 18),
            ]
        );
        let isa: Vec<u8> = all
            .iter()
            .filter(|e| e[0] == MP_INTSRC && e[4] == ISA_BUS_BESIDE_PCI)
            .map(|e| e[7])
            .collect();
        assert_eq!(
            isa.len(),
            24 - 4,
            "one ISA entry left out per PCI line, shared or not"
        );
        assert!(isa.iter().all(|p| ![23, 22, 19, 18].contains(p)));
        // 16 + 44 header bytes, 32 processors, 2 buses, the IOAPIC, 25 interrupt entries, 2 LINT.
        assert_eq!(b.len(), 16 + 44 + 32 * 20 + 8 * (2 + 1 + 25 + 2));
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
