//! A vCPU's state through KVM: saved on its own thread once it is out of `KVM_RUN` (its
//! pending I/O completed), and put into a new vCPU before that one first runs.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The ioctl numbers [`save`] makes.
#[allow(non_snake_case)]
mod nr {
    use kvm_bindings::{
        kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs,
        kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
    };
    use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
}

/// The ioctls a vCPU thread makes to save its own vCPU for a snapshot ([`save`]): only reads
/// of its state, on the vCPU thread's seccomp allow-list (`vm/confine.rs`).
pub(crate) fn save_ioctls() -> [u64; 9] {
    [
        nr::KVM_GET_REGS(),
        nr::KVM_GET_SREGS(),
        nr::KVM_GET_MSRS(),
        nr::KVM_GET_LAPIC(),
        nr::KVM_GET_MP_STATE(),
        nr::KVM_GET_VCPU_EVENTS(),
        nr::KVM_GET_DEBUGREGS(),
        nr::KVM_GET_XSAVE(),
        nr::KVM_GET_XCRS(),
    ]
    .map(u64::from)
}

/// How many MSRs one `KVM_GET_MSRS`/`KVM_SET_MSRS` carries.
const MSR_CHUNK: usize = 64;

/// Everything of one vCPU a snapshot keeps.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// Its index (the APIC id).
    pub id: u8,
    /// The multiprocessing state (running, halted, waiting for INIT/SIPI: a parked vCPU).
    pub mp_state: kvm_mp_state,
    /// The general registers.
    pub regs: kvm_regs,
    /// The segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// The FPU, SSE and AVX state (XSAVE area).
    pub xsave: kvm_xsave,
    /// The extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// The debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR of KVM's index list that the vCPU could read, in that order.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("id", &self.id)
            .field("mp_state", &self.mp_state.mp_state)
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// The MSRs a snapshot saves: KVM's own list of the MSRs it saves and restores.
pub fn msr_index_list(kvm: &Kvm) -> Result<Vec<u32>> {
    kvm.get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .map_err(|source| Error::Kvm {
            what: "KVM_GET_MSR_INDEX_LIST",
            source,
        })
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn msr_err(id: u8, reason: String) -> Error {
    Error::Device {
        device: format!("vCPU {id}"),
        reason,
    }
}

/// Reads the MSRs of `indexes` that `vcpu` has: `KVM_GET_MSRS` stops at the first MSR it
/// cannot read (one the vCPU's CPUID does not give it), which is left out and the read goes on
/// after it.
fn get_msrs(vcpu: &VcpuFd, id: u8, indexes: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    read_in_chunks(indexes, |chunk| {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| msr_err(id, format!("building the MSR list: {e:?}")))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        Ok(msrs.as_slice()[..read.min(chunk.len())].to_vec())
    })
}

/// Reads `indexes` [`MSR_CHUNK`] at a time with `read`, which answers the entries it read:
/// the chunk's first ones, stopping before the first it could not read. A chunk read in full
/// goes on with the next index; a short read skips the one index it stopped at.
fn read_in_chunks<T>(
    indexes: &[u32],
    mut read: impl FnMut(&[u32]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(indexes.len());
    let mut rest = indexes;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let mut got = read(chunk)?;
        got.truncate(chunk.len());
        let read = got.len();
        out.extend(got);
        // A short read stopped at the MSR at `read`, which could not be read: skipped.
        let advance = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[advance..];
    }
    Ok(out)
}

/// Saves `vcpu` (index `id`). It must be out of `KVM_RUN` with no I/O pending (see
/// [`complete_pending_io`]).
pub fn save(vcpu: &VcpuFd, id: u8, msr_indexes: &[u32]) -> Result<VcpuState> {
    Ok(VcpuState {
        id,
        mp_state: vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
        regs: vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
        debugregs: vcpu
            .get_debug_regs()
            .map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?,
        msrs: get_msrs(vcpu, id, msr_indexes)?,
        events: vcpu
            .get_vcpu_events()
            .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Lets KVM finish the I/O of the vCPU's last exit (an MMIO read's value, a port write's
/// instruction skip) without running the guest: `KVM_RUN` with `immediate_exit` set returns
/// at once (`EINTR`) after completing it. Without this a saved vCPU would replay the access.
pub fn complete_pending_io(vcpu: &mut VcpuFd) {
    vcpu.set_kvm_immediate_exit(1);
    match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => {}
        Err(e) => tracing::warn!(error = %e, "completing a vCPU's pending I/O"),
        Ok(_) => tracing::warn!("a vCPU ran with immediate_exit set"),
    }
    vcpu.set_kvm_immediate_exit(0);
}

/// Puts `state` into a new `vcpu` (already given its CPUID by `vstate::vcpu::configure`),
/// in the order KVM needs: the MP state, registers, XSAVE, XCRs, debug registers, the LAPIC,
/// the MSRs and last the pending events. An MSR KVM does not take fails the restore, naming it.
pub fn restore(vcpu: &VcpuFd, state: &VcpuState) -> Result<()> {
    let id = state.id;
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs)
        .map_err(kvm_err("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (4 KiB region) and KVM reads no more than
    // that with KVM_SET_XSAVE; the area was saved by KVM_GET_XSAVE on a vCPU of the same
    // host configuration (the snapshot's manifest), so it needs no larger XSAVE area.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs)
        .map_err(kvm_err("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(kvm_err("KVM_SET_LAPIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk)
            .map_err(|e| msr_err(id, format!("building the MSR list: {e:?}")))?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if set != chunk.len() {
            return Err(msr_err(
                id,
                format!(
                    "KVM refused MSR {:#x} of the snapshot (set {set} of {}): the snapshot was \
                     made on another host or KVM",
                    chunk[set].index,
                    chunk.len()
                ),
            ));
        }
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    /// A fake `KVM_GET_MSRS` (no KVM): reads a chunk's indices up to the first in `unreadable`.
    fn fake_read(unreadable: &[u32]) -> impl FnMut(&[u32]) -> Result<Vec<u32>> + '_ {
        move |chunk| {
            Ok(chunk
                .iter()
                .copied()
                .take_while(|i| !unreadable.contains(i))
                .collect())
        }
    }

    #[test]
    fn every_readable_msr_of_more_than_one_chunk_is_read() {
        let indexes: Vec<u32> = (0..200).collect();
        // All readable: 64 + 64 + 64 + 8, the 65th (index 64) and 129th included.
        let all = read_in_chunks(&indexes, fake_read(&[])).unwrap();
        assert_eq!(all, indexes);
        // Unreadable ones (one at a chunk's end, one at the next chunk's start) are left out,
        // nothing else.
        let unreadable = [3, 63, 64, 130, 199];
        let got = read_in_chunks(&indexes, fake_read(&unreadable)).unwrap();
        let want: Vec<u32> = indexes
            .iter()
            .copied()
            .filter(|i| !unreadable.contains(i))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_read_error_is_the_error() {
        let indexes: Vec<u32> = (0..70).collect();
        let mut calls = 0;
        let r = read_in_chunks(&indexes, |_| -> Result<Vec<u32>> {
            calls += 1;
            Err(msr_err(0, "fake".into()))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
