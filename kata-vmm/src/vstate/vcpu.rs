//! Setting a vCPU up for the 64-bit boot protocol through KVM (only compiled here: see the
//! module above).

use kvm_bindings::{Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::GuestAddress;

use super::cpuid::filter_cpuid;
use super::regs::{boot_fpu, boot_msrs, boot_regs, boot_sregs, set_lint};
use crate::error::{Error, Result};

/// Sets vCPU `id` of `count` up: CPUID, MSRs, and for the boot vCPU (id 0) the registers that
/// start the kernel at `entry`; every vCPU gets the FPU reset state and its LAPIC LINT pins.
pub fn configure(kvm: &Kvm, vcpu: &VcpuFd, id: u8, count: u8, entry: GuestAddress) -> Result<()> {
    let kvm_err = |what| move |source| Error::Kvm { what, source };
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    filter_cpuid(cpuid.as_mut_slice(), id, count);
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let msrs = Msrs::from_entries(&boot_msrs()).map_err(|_| Error::Device {
        device: format!("vCPU {id}"),
        reason: "too many boot MSRs".into(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != msrs.as_slice().len() {
        return Err(Error::Device {
            device: format!("vCPU {id}"),
            reason: format!("KVM took {set} of {} boot MSRs", msrs.as_slice().len()),
        });
    }
    if id == 0 {
        vcpu.set_regs(&boot_regs(entry))
            .map_err(kvm_err("KVM_SET_REGS"))?;
        let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        boot_sregs(&mut sregs);
        vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    }
    vcpu.set_fpu(&boot_fpu()).map_err(kvm_err("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))
}
