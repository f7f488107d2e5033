//! The VM and its vCPUs on KVM: the x86_64 boot state (GDT, identity page tables, registers,
//! FPU, MSRs, LAPIC LINT pins, CPUID) and the dispatch of a vCPU exit to the devices.
//!
//! **Never run on a real KVM yet.** This host's KVM is paravirtual (PVM) and cannot run an
//! ordinary guest; the code is exercised in the nested lab (issue 11, part 4). What the unit
//! tests cover is what needs no KVM: the tables written into guest memory, the register
//! values, the CPUID filtering, the exit dispatch. [`vm`] and [`vcpu::configure`] only
//! compile here.

pub mod cpuid;
pub mod exit;
pub mod gdt;
pub mod mptable;
pub mod regs;
pub mod vcpu;
pub mod vm;
