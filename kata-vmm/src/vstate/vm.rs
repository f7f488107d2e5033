//! The KVM VM: the in-kernel interrupt controllers and PIT, guest memory registered as memory
//! slots, irqfds and ioeventfds (only compiled here: see the module above).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use vm_memory::{GuestMemory as _, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::memory::GuestMemory;

/// Where KVM puts the TSS (three pages below the identity map page, below 4 GiB).
const TSS_ADDRESS: usize = 0xfffb_d000;
/// KVM's identity map page for real mode on Intel.
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The in-kernel devices of a VM a snapshot saves: the two PICs, the IOAPIC, the PIT and the
/// KVM clock.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// The master PIC (`KVM_IRQCHIP_PIC_MASTER`).
    pub pic_master: kvm_irqchip,
    /// The slave PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The PIT's channels and flags.
    pub pit: kvm_pit_state2,
    /// The KVM clock (kvmclock's system time).
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

/// A VM with its memory registered.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    /// Shared with the VFIO functions' MSI routing (`devices::vfio::irq`).
    fd: std::sync::Arc<VmFd>,
    /// Kept so the mappings KVM was given outlive the VM.
    memory: Option<GuestMemory>,
}

impl Vm {
    /// Creates a VM with an in-kernel IOAPIC, PIC and PIT.
    pub fn new() -> Result<Vm> {
        let kvm_err = |what| move |source| Error::Kvm { what, source };
        let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        Ok(Vm {
            kvm,
            fd: std::sync::Arc::new(fd),
            memory: None,
        })
    }

    /// The KVM system handle (for CPUID).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM's fd (to create vCPUs).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM's fd, shared (the GSI routing table's owner writes it from the vCPU threads).
    pub fn shared_fd(&self) -> std::sync::Arc<VmFd> {
        self.fd.clone()
    }

    /// Registers every region of `memory` as a memory slot.
    pub fn register_memory(&mut self, memory: &GuestMemory) -> Result<()> {
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| Error::MemoryMap(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live mapping of `region.len()` bytes owned by
            // `memory`; a clone of `memory` is kept in `self` so the mapping outlives the VM
            // that KVM lets write to it.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| Error::Kvm {
                what: "KVM_SET_USER_MEMORY_REGION",
                source,
            })?;
        }
        self.memory = Some(memory.clone());
        Ok(())
    }

    /// Routes `irq` (an eventfd a device raises) to GSI `gsi`.
    pub fn register_irqfd(&self, irq: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(irq, gsi)
            .map_err(|source| Error::Kvm {
                what: "KVM_IRQFD",
                source,
            })
    }

    /// Signals `notify` when the guest writes the queue-notify register of the virtio-mmio
    /// window at `base`.
    pub fn register_queue_notify(&self, notify: &EventFd, base: u64) -> Result<()> {
        const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
        self.fd
            .register_ioevent(
                notify,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                NoDatamatch,
            )
            .map_err(|source| Error::Kvm {
                what: "KVM_IOEVENTFD",
                source,
            })
    }

    /// Reads the in-kernel devices' state for a snapshot (the vCPUs must be out of
    /// `KVM_RUN`: paused or ended).
    pub fn save_state(&self) -> Result<VmState> {
        let kvm_err = |what| move |source| Error::Kvm { what, source };
        let chip = |id| -> Result<kvm_irqchip> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut c)
                .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
            Ok(c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts a new VM's in-kernel devices into a snapshot's `state`, before its vCPUs run. The
    /// chips' ids come from the slots, not the file; the clock goes on from where it was
    /// saved (no flags: KVM takes none but `KVM_CLOCK_TSC_STABLE`-free data here).
    pub fn restore_state(&self, state: &VmState) -> Result<()> {
        let kvm_err = |what| move |source| Error::Kvm { what, source };
        for (id, saved) in [
            (KVM_IRQCHIP_PIC_MASTER, &state.pic_master),
            (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave),
            (KVM_IRQCHIP_IOAPIC, &state.ioapic),
        ] {
            let mut c = *saved;
            c.chip_id = id;
            self.fd
                .set_irqchip(&c)
                .map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(kvm_err("KVM_SET_PIT2"))?;
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))
    }
}
