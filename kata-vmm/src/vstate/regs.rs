//! The boot vCPU's state for the Linux 64-bit boot protocol: long mode with an identity map of
//! the first GiB, `rip` at the kernel's 64-bit entry, `rsi` at the zero page.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{boot_gdt, segment_from_gdt};
use crate::error::{Error, Result};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// Present, writable.
const PTE_PRESENT_RW: u64 = 0x03;
/// Present, writable, 2 MiB page.
const PDE_HUGE: u64 = 0x83;

/// Writes the boot GDT and an empty IDT.
pub fn write_descriptor_tables<M: GuestMemory>(mem: &M) -> Result<()> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| boot_err("the GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| boot_err("the IDT", e))
}

/// Writes the identity map of the first GiB (PML4 → PDPTE → 512 PDEs of 2 MiB).
pub fn write_page_tables<M: GuestMemory>(mem: &M) -> Result<()> {
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(|e| boot_err("the PML4", e))?;
    mem.write_obj(PDE_START | PTE_PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(|e| boot_err("the PDPTE", e))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | PDE_HUGE, GuestAddress(PDE_START + i * 8))
            .map_err(|e| boot_err("the PDE", e))?;
    }
    Ok(())
}

/// The segment, table and control registers of long mode over [`write_page_tables`].
pub fn boot_sregs(sregs: &mut kvm_sregs) {
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// The general registers: `rip` at `entry`, the boot stack, `rsi` at the zero page.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// The FPU at its reset state (control word 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The MSRs the boot vCPU starts with: syscall MSRs cleared, fast strings on, MTRRs enabled
/// with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// The LAPIC's LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as a PC wires them.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_EXTINT: u32 = 0x7;
    const APIC_MODE_NMI: u32 = 0x4;
    let set_mode = |lapic: &mut kvm_lapic_state, reg: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = lapic.regs[reg + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, byte) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *byte as _;
        }
    };
    set_mode(lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(lapic, APIC_LVT1, APIC_MODE_NMI);
}

fn boot_err(what: &'static str, e: vm_memory::GuestMemoryError) -> Error {
    Error::BootSetup {
        what,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemory as Mem;

    fn mem() -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let m = mem();
        write_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, 0xb003);
        let first: u64 = m.read_obj(GuestAddress(PDE_START)).unwrap();
        let last: u64 = m.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!((first, last), (0x83, (511 << 21) | 0x83));
    }

    #[test]
    fn tables_that_do_not_fit_are_an_error() {
        let tiny = Mem::from_ranges(&[(GuestAddress(0), 0x8000)]).unwrap();
        assert!(write_page_tables(&tiny).is_err());
        write_descriptor_tables(&tiny).unwrap();
        let code: u64 = tiny.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn sregs_enter_long_mode() {
        let mut s = kvm_sregs::default();
        boot_sregs(&mut s);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cr3, s.cs.selector, s.ds.selector, s.cs.l),
            (PML4_START, 8, 16, 1)
        );
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
    }

    #[test]
    fn regs_fpu_msrs_lint() {
        let r = boot_regs(GuestAddress(0x100200));
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100200, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
        assert_eq!((boot_fpu().fcw, boot_fpu().mxcsr), (0x37f, 0x1f80));
        let msrs = boot_msrs();
        assert!(msrs.iter().any(|m| m.index == 0x2ff && m.data == 0x806));
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[0x351] = 0x07; // garbage in the delivery-mode bits is replaced
        set_lint(&mut lapic);
        assert_eq!(lapic.regs[0x351] as u8, 0x07);
        assert_eq!(lapic.regs[0x361] as u8, 0x04);
    }
}
