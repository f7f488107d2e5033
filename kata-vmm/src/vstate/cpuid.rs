//! CPUID for a vCPU: KVM's supported entries, with the vCPU's APIC ids and the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 EBX: initial APIC id in bits 31..24, logical processor count in 23..16.
const LEAF1_EBX_KEEP: u32 = 0x0000_ffff;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: more than one logical processor.
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Adjusts KVM's supported CPUID entries for vCPU `id` of `count`.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    for e in entries {
        match e.function {
            1 => {
                e.ebx = (e.ebx & LEAF1_EBX_KEEP) | (u32::from(count) << 16) | (u32::from(id) << 24);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Extended topology: the x2APIC id.
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_ids_and_hypervisor_bit() {
        let mut entries = vec![
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_1234,
                edx: LEAF1_EDX_HTT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                edx: 77,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0,
                ebx: 0x756e_6547,
                ..Default::default()
            },
        ];
        filter_cpuid(&mut entries, 2, 1);
        assert_eq!(entries[0].ebx, 0x0201_1234);
        assert_ne!(entries[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(entries[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!(entries[1].edx, 2);
        assert_eq!(entries[2].ebx, 0x756e_6547, "other leaves untouched");
    }
}
