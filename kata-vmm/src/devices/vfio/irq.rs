//! How a passed-through function's MSI reaches the guest: one eventfd per vector, given to the
//! host device (`VFIO_DEVICE_SET_IRQS`, index MSI, trigger) and to KVM as the irqfd of a GSI
//! the VMM owns; the GSI's route (`KVM_SET_GSI_ROUTING`, type MSI) carries the address and
//! data the guest programmed. The device's interrupt never passes through a VMM thread.
//!
//! The irqfds are registered once, when the VM starts ([`wire`]), on GSIs with no route: an
//! interrupt there is dropped. Enabling MSI routes them and turns the device's MSI on;
//! disabling turns it off and drops the routes; the guest moving a vector (new address or
//! data) or masking it changes only the route.
//!
//! **MSI-X** the same way, a GSI and an irqfd per vector shown, with one more eventfd per
//! vector, `hold`, that no irqfd listens on: enabling MSI-X gives VFIO every vector at once
//! (`VFIO_PCI_MSIX_IRQ_INDEX`, `fire` for an unmasked vector, `hold` for a masked one), and
//! the guest masking or unmasking a vector (or the whole function) re-sets just the block of
//! vectors that changed. An interrupt of a masked vector is counted by `hold`, read as its
//! pending bit, and delivered once (`fire` written) when the guest unmasks the vector, as
//! PCI's MSI-X masking has it. A vector's route follows its table entry whether masked or not.
//!
//! **INTx** (a function with an interrupt pin, when the host's VFIO grants it): the function's
//! INTA# swizzled up to bus 0 through the bridges above it ([`intx_swizzle`]: a bus-0 slot
//! and pin) is the IOAPIC pin [`plan_intx`] gave that slot's pin (INTA# on 24 - slot, so 23
//! for slot 1 as [`intx_pin`], the other pins and lines taken by virtio-mmio on the next free
//! pins; the MP table tells the guest, level-triggered), an irqfd with a resample eventfd on
//! that GSI: VFIO
//! masks the line at each interrupt and KVM's resample (the guest's EOI) unmasks it. INTx is on
//! from the start and off while MSI is (VFIO takes one or the other, as a PCI function does).
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so [`GsiRouter`] owns it: KVM's defaults for
//! the in-kernel irqchip (GSIs 0-23 to the IOAPIC's pins, 0-15 also to the PICs: the serial
//! port's and the virtio-mmio devices' lines) and every MSI route, rewritten whole on each
//! change.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::msi::MsiMessage;
use super::uapi;
use crate::error::{Error, Result};
use crate::vstate::mptable::PciIntx;

/// The first GSI for MSI: 0-23 are the IOAPIC's pins.
pub const FIRST_MSI_GSI: u32 = 24;
/// The GSIs the VMM hands out for MSI (KVM allows 4096 routes; a VM's devices need far fewer).
pub const MSI_GSIS: u32 = 1024;

/// `KVM_SET_GSI_ROUTING`: `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`, the one KVM ioctl
/// besides `KVM_RUN` a vCPU thread makes (for the seccomp allow-list).
pub const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;

/// The IOAPIC pin of the INTA# of the function in PCI `slot` (1 to 31): 24 - slot, counting
/// down from the top pin so the virtio-mmio lines (5 up) and these meet last. What
/// [`plan_intx`] gives a bus-0 slot's INTA# when that pin is free.
pub fn intx_pin(slot: u8) -> Option<u8> {
    (1..=18).contains(&slot).then(|| 24 - slot)
}

/// The lowest IOAPIC pin a PCI INTx line may take: 0-4 are the timer, the keyboard, the PICs'
/// cascade and the serial ports.
pub const FIRST_INTX_PIN: u8 = 5;
/// The IOAPIC's highest pin.
pub const LAST_INTX_PIN: u8 = 23;

/// Where the INTA# of the function at guest PCI path `path` (device numbers from bus 0 down:
/// `[port slot, 0]`, `[root port slot, 0, downstream port, 0]`, `[bridge slot, bridge
/// slot's device]`, `[slot]`) reaches bus 0, as Linux looks it up without ACPI
/// (`pci_common_swizzle`, and `pirq_enable_irq`'s walk to the MP table): at each bridge
/// crossing pin' = ((pin - 1) + device) % 4 + 1, the device being the child's number on the
/// bridge's secondary bus (none of the VMM's ports offers ARI forwarding, so never 0 for
/// ARI). Returns the bus-0 slot and the pin there (0 = INTA# ... 3 = INTD#); `None` for an
/// empty path. A switch's downstream port `n` gives its function INTA# + n at the root port's
/// slot, a bridge's slot `s` INTA# + s at the bridge's.
pub fn intx_swizzle(path: &[u8]) -> Option<(u8, u8)> {
    let (&slot, below) = path.split_first()?;
    let pin = below.iter().fold(0u8, |pin, &d| (pin + d % 4) % 4);
    Some((slot, pin))
}

/// A bus-0 slot whose functions may raise INTx: a function or a PCIe root port (its device
/// 0 swizzles to INTA# only), or a slot with a fan-out below it (a switch's root port, a PCI
/// bridge: INTA# to INTD#).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntxSlot {
    /// The slot (device number) on bus 0.
    pub slot: u8,
    /// A switch or a bridge is below it: all four pins are reachable.
    pub fanout: bool,
}

/// The MP table's PCI interrupt entries for `slots`, each pin on an IOAPIC pin none of
/// `taken` (the virtio-mmio lines) is on: every slot's INTA# first (in slot order; pin
/// [`intx_pin`] of the slot when free, else the highest free), then INTB# to INTD# of each
/// fan-out slot on the highest free pins: distinct lines while they last (pins
/// [`FIRST_INTX_PIN`]-[`LAST_INTX_PIN`]). Past that a pin shares its slot's INTA# line, and
/// an INTA# with no line left shares the line of an earlier slot's INTA# (round robin):
/// level-triggered, active-high lines may be shared (KVM resamples one GSI for all its level
/// irqfds). With every pin taken, no entry at all (the functions have MSI and MSI-X only).
pub fn plan_intx(slots: &[IntxSlot], taken: &[u32]) -> Vec<PciIntx> {
    let mut sorted = slots.to_vec();
    sorted.sort_by_key(|s| s.slot);
    sorted.dedup_by_key(|s| s.slot);
    let mut free: Vec<u8> = (FIRST_INTX_PIN..=LAST_INTX_PIN)
        .rev()
        .filter(|p| !taken.contains(&u32::from(*p)))
        .collect();
    let mut take = |preferred: Option<u8>| -> Option<u8> {
        let at = preferred
            .and_then(|p| free.iter().position(|f| *f == p))
            .or((!free.is_empty()).then_some(0))?;
        Some(free.remove(at))
    };
    let mut out: Vec<PciIntx> = Vec::new();
    let mut distinct_inta: Vec<u8> = Vec::new();
    for (i, s) in sorted.iter().enumerate() {
        let pin = match take(intx_pin(s.slot)) {
            Some(p) => {
                distinct_inta.push(p);
                p
            }
            None if distinct_inta.is_empty() => return Vec::new(),
            None => distinct_inta[i % distinct_inta.len()],
        };
        out.push(PciIntx {
            slot: s.slot,
            intx: 0,
            pin,
        });
    }
    for s in sorted.iter().filter(|s| s.fanout) {
        let inta = out
            .iter()
            .find(|e| e.slot == s.slot)
            .map(|e| e.pin)
            .unwrap_or(LAST_INTX_PIN);
        for intx in 1..4 {
            let pin = take(None).unwrap_or(inta);
            out.push(PciIntx {
                slot: s.slot,
                intx,
                pin,
            });
        }
    }
    out.sort_by_key(|e| (e.slot, e.intx));
    out
}

/// The IOAPIC pin `plan` gives pin `intx` (0 = INTA#) of bus-0 slot `slot`.
pub fn planned_pin(plan: &[PciIntx], (slot, intx): (u8, u8)) -> Option<u8> {
    plan.iter()
        .find(|e| e.slot == slot && e.intx == intx)
        .map(|e| e.pin)
}

/// KVM's default routes for the in-kernel irqchip (`default_routing` in
/// `arch/x86/kvm/irq_comm.c`): GSI n to IOAPIC pin n (0-23), and GSIs 0-15 also to the PICs.
pub fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let entry = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut out = Vec::new();
    for gsi in 0..24 {
        out.push(entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            out.push(entry(gsi, pic, gsi % 8));
        }
    }
    out
}

/// The MSI route of `gsi` to `msg`.
pub fn msi_route(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.address as u32;
    e.u.msi.address_hi = (msg.address >> 32) as u32;
    e.u.msi.data = msg.data;
    e
}

/// The whole routing table: the irqchip's defaults, then `msi` by GSI.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut table = irqchip_routes();
    table.extend(msi.iter().map(|(&gsi, &m)| msi_route(gsi, m)));
    table
}

/// Where the routing table goes (KVM; a recorder in tests).
pub trait RouteSink: Send + Sync {
    /// Replaces the VM's whole routing table with `table`.
    fn set_routes(&self, table: &[kvm_irq_routing_entry]) -> std::io::Result<()>;
}

impl RouteSink for VmFd {
    fn set_routes(&self, table: &[kvm_irq_routing_entry]) -> std::io::Result<()> {
        let routing = KvmIrqRouting::from_entries(table)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
        self.set_gsi_routing(&routing).map_err(std::io::Error::from)
    }
}

#[derive(Debug, Default)]
struct RouterState {
    /// The next GSI to hand out.
    next: u32,
    /// The MSI routes now in KVM's table.
    msi: BTreeMap<u32, MsiMessage>,
    /// GSIs given back ([`GsiRouter::release`]: freed), handed out again before new ones.
    freed: Vec<u32>,
}

/// The VM's GSI routing table (see the module documentation), shared by its devices.
pub struct GsiRouter {
    sink: Arc<dyn RouteSink>,
    state: Mutex<RouterState>,
}

impl std::fmt::Debug for GsiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouter")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl GsiRouter {
    /// A router writing its table to `sink` (the VM's fd), with no MSI route yet.
    pub fn new(sink: Arc<dyn RouteSink>) -> Self {
        GsiRouter {
            sink,
            state: Mutex::new(RouterState {
                next: FIRST_MSI_GSI,
                msi: BTreeMap::new(),
                freed: Vec::new(),
            }),
        }
    }

    /// `n` GSIs of the VM's own, for MSI vectors; `None` when [`MSI_GSIS`] are used up.
    pub fn allocate(&self, n: usize) -> Option<Vec<u32>> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // The freed GSIs first, then new ones.
        let reused = n.min(s.freed.len());
        let end = s.next.checked_add(u32::try_from(n - reused).ok()?)?;
        if end > FIRST_MSI_GSI + MSI_GSIS {
            return None;
        }
        let mut gsis: Vec<u32> = s.freed.drain(..reused).collect();
        gsis.extend(s.next..end);
        s.next = end;
        Some(gsis)
    }

    /// Gives `gsis` back (freed: a later [`Self::allocate`] hands them out again), their
    /// routes dropped from the table first. A GSI this router did not hand out, or already
    /// freed, is ignored. If the table cannot be written nothing is freed (a GSI still routed
    /// is never handed out again).
    pub fn release(&self, gsis: &[u32]) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut own: Vec<u32> = gsis
            .iter()
            .copied()
            .filter(|g| (FIRST_MSI_GSI..s.next).contains(g) && !s.freed.contains(g))
            .collect();
        own.sort_unstable();
        own.dedup();
        let mut msi = s.msi.clone();
        for g in &own {
            msi.remove(g);
        }
        if msi != s.msi {
            self.sink.set_routes(&routing_table(&msi))?;
            s.msi = msi;
        }
        s.freed.extend(own);
        Ok(())
    }

    /// Routes each `(gsi, message)` (`None`: no route), then writes the table if it changed.
    /// A GSI this router did not hand out is ignored.
    pub fn set(&self, routes: &[(u32, Option<MsiMessage>)]) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut msi = s.msi.clone();
        for &(gsi, m) in routes {
            if !(FIRST_MSI_GSI..s.next).contains(&gsi) || s.freed.contains(&gsi) {
                continue;
            }
            match m {
                Some(m) => msi.insert(gsi, m),
                None => msi.remove(&gsi),
            };
        }
        if msi == s.msi {
            return Ok(());
        }
        self.sink.set_routes(&routing_table(&msi))?;
        s.msi = msi;
        Ok(())
    }
}

/// What a function's emulated MSI capability (and its INTx) asks of the host.
pub trait IrqWiring: Send {
    /// How many vectors the host can give (1 to 32).
    fn max_vectors(&self) -> usize;
    /// Routes vector `i` to `routes[i]` (`None`: dropped); vectors past the slice lose their
    /// routes.
    fn route(&mut self, routes: &[Option<MsiMessage>]) -> std::io::Result<()>;
    /// Turns the device's MSI on with `vectors` vectors (0: off; INTx, if wired, is on
    /// exactly while MSI is off).
    fn trigger(&mut self, vectors: usize) -> std::io::Result<()>;
    /// Whether the function's INTx is wired (its interrupt pin is shown).
    fn intx(&self) -> bool {
        false
    }
    /// How many MSI-X vectors the host can give (0: none, the capability stays hidden).
    fn max_msix_vectors(&self) -> usize {
        0
    }
    /// Routes MSI-X vector `i` to `routes[i]` (`None`: dropped); vectors past the slice lose
    /// their routes.
    fn msix_route(&mut self, _routes: &[Option<MsiMessage>]) -> std::io::Result<()> {
        Ok(())
    }
    /// Turns the device's MSI-X on with `held.len()` vectors, vector `i` held (masked: its
    /// interrupts kept back, not delivered) when `held[i]`; off when `held` is empty (INTx,
    /// if wired, is on exactly while neither MSI nor MSI-X is).
    fn msix_trigger(&mut self, _held: &[bool]) -> std::io::Result<()> {
        Ok(())
    }
    /// Vectors `first..first + held.len()` of the enabled MSI-X now held or delivered as
    /// `held` says; a vector released with an interrupt held back delivers it.
    fn msix_hold(&mut self, _first: usize, _held: &[bool]) -> std::io::Result<()> {
        Ok(())
    }
    /// Whether MSI-X vector `v` is held with an interrupt kept back (its pending bit).
    fn msix_pending(&mut self, _v: usize) -> bool {
        false
    }
}

/// One MSI-X vector: a GSI, the eventfd KVM's irqfd listens on (`fire`) and the eventfd
/// VFIO signals instead while the guest masks the vector (`hold`, no irqfd: its count is the
/// pending bit).
struct MsixVector {
    gsi: u32,
    fire: EventFd,
    hold: EventFd,
    /// VFIO signals `hold` (the guest masked the vector).
    held: bool,
    /// An interrupt was taken from `hold` and not yet delivered.
    pending: bool,
}

impl MsixVector {
    /// Moves what `hold` counted into `pending`.
    fn drain(&mut self) {
        if self.hold.read().is_ok_and(|n| n > 0) {
            self.pending = true;
        }
    }
}

/// A function's INTx: the trigger eventfd (KVM's irqfd on the pin's GSI) and the resample
/// eventfd (VFIO's unmask).
struct Intx {
    trigger: EventFd,
    resample: EventFd,
}

/// A VFIO function's interrupts through KVM: an eventfd and a GSI per MSI vector, the
/// eventfds registered as irqfds; its INTx line, if wired.
pub struct VfioIrqs {
    device: Arc<File>,
    router: Arc<GsiRouter>,
    /// `(gsi, eventfd)` per vector the host grants.
    vectors: Vec<(u32, EventFd)>,
    /// Per MSI-X vector shown.
    msix: Vec<MsixVector>,
    intx: Option<Intx>,
    /// Whether the device's MSI, its MSI-X, is on (INTx is on while neither is).
    msi_on: bool,
    msix_on: bool,
}

impl VfioIrqs {
    /// INTx on when neither MSI nor MSI-X is.
    fn intx_follow(&self) -> std::io::Result<()> {
        self.intx_on(!self.msi_on && !self.msix_on)
    }

    fn intx_on(&self, on: bool) -> std::io::Result<()> {
        match &self.intx {
            Some(i) => uapi::set_intx(
                &*self.device,
                on.then(|| (i.trigger.as_raw_fd(), i.resample.as_raw_fd())),
            ),
            None => Ok(()),
        }
    }
}

/// GSIs handed out for a wiring under way: given back when dropped (a failed wiring).
struct HeldGsis<'a> {
    router: &'a GsiRouter,
    gsis: Vec<u32>,
}

impl Drop for HeldGsis<'_> {
    fn drop(&mut self) {
        if !self.gsis.is_empty() {
            if let Err(e) = self.router.release(&self.gsis) {
                tracing::warn!(error = %e, "VFIO: giving back the GSIs of a failed wiring");
            }
        }
    }
}

/// A function's GSIs go back to the router when its wiring goes (an unplug, a failed plug,
/// the VM's end): its irqfds are closed first, then the routes dropped and the GSIs freed, so
/// a hot-plug/unplug cycle does not use up [`MSI_GSIS`].
impl Drop for VfioIrqs {
    fn drop(&mut self) {
        let mut gsis: Vec<u32> = self.vectors.iter().map(|(g, _)| *g).collect();
        gsis.extend(self.msix.iter().map(|v| v.gsi));
        self.vectors.clear();
        self.msix.clear();
        if let Err(e) = self.router.release(&gsis) {
            tracing::warn!(error = %e, "VFIO: giving back a function's GSIs");
        }
    }
}

impl std::fmt::Debug for VfioIrqs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioIrqs")
            .field(
                "gsis",
                &self.vectors.iter().map(|v| v.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl IrqWiring for VfioIrqs {
    fn max_vectors(&self) -> usize {
        self.vectors.len()
    }

    fn route(&mut self, routes: &[Option<MsiMessage>]) -> std::io::Result<()> {
        let all: Vec<_> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(i, (gsi, _))| (*gsi, routes.get(i).copied().flatten()))
            .collect();
        self.router.set(&all)
    }

    fn trigger(&mut self, vectors: usize) -> std::io::Result<()> {
        let fds: Vec<i32> = self
            .vectors
            .iter()
            .take(vectors)
            .map(|(_, e)| e.as_raw_fd())
            .collect();
        if fds.is_empty() {
            uapi::set_msi_trigger(&*self.device, &[])?;
            self.msi_on = false;
            self.intx_follow()
        } else {
            self.intx_on(false)?;
            uapi::set_msi_trigger(&*self.device, &fds)?;
            self.msi_on = true;
            Ok(())
        }
    }

    fn intx(&self) -> bool {
        self.intx.is_some()
    }

    fn max_msix_vectors(&self) -> usize {
        self.msix.len()
    }

    fn msix_route(&mut self, routes: &[Option<MsiMessage>]) -> std::io::Result<()> {
        let all: Vec<_> = self
            .msix
            .iter()
            .enumerate()
            .map(|(i, v)| (v.gsi, routes.get(i).copied().flatten()))
            .collect();
        self.router.set(&all)
    }

    fn msix_trigger(&mut self, held: &[bool]) -> std::io::Result<()> {
        if held.is_empty() {
            uapi::set_msix_trigger(&*self.device, 0, &[])?;
            self.msix_on = false;
            for v in &mut self.msix {
                v.drain();
                v.held = false;
                v.pending = false;
            }
            return self.intx_follow();
        }
        self.intx_on(false)?;
        let n = held.len().min(self.msix.len());
        for (v, &h) in self.msix.iter_mut().zip(held) {
            v.held = h;
            v.pending = false;
        }
        let fds: Vec<i32> = self.msix[..n]
            .iter()
            .map(|v| (if v.held { &v.hold } else { &v.fire }).as_raw_fd())
            .collect();
        uapi::set_msix_trigger(&*self.device, 0, &fds)?;
        self.msix_on = true;
        Ok(())
    }

    fn msix_hold(&mut self, first: usize, held: &[bool]) -> std::io::Result<()> {
        let Some(block) = self.msix.get_mut(first..first.saturating_add(held.len())) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let fds: Vec<i32> = block
            .iter()
            .zip(held)
            .map(|(v, &h)| (if h { &v.hold } else { &v.fire }).as_raw_fd())
            .collect();
        uapi::set_msix_trigger(&*self.device, first as u32, &fds)?;
        for (v, &h) in block.iter_mut().zip(held) {
            if v.held && !h {
                // VFIO now signals `fire`: what `hold` counted before is delivered once.
                v.drain();
                if std::mem::take(&mut v.pending) {
                    v.fire.write(1)?;
                }
            }
            v.held = h;
        }
        Ok(())
    }

    fn msix_pending(&mut self, v: usize) -> bool {
        self.msix.get_mut(v).is_some_and(|v| {
            if v.held {
                v.drain();
            }
            v.held && v.pending
        })
    }
}

/// Gives `device` (`bdf`, granting `host_vectors` MSI vectors) its wiring on `vm`: a GSI and
/// an eventfd per vector, each eventfd KVM's irqfd for its GSI (no route yet); with
/// `intx_pin`, its INTx on that IOAPIC pin (irqfd with resample) turned on. Called when the
/// VM starts, before any vCPU runs.
pub fn wire(
    vm: &VmFd,
    router: &Arc<GsiRouter>,
    device: Arc<File>,
    bdf: &str,
    host_vectors: u32,
    msix_vectors: usize,
    intx_pin: Option<u8>,
) -> Result<VfioIrqs> {
    let n = (host_vectors as usize).min(uapi::MSI_MAX_VECTORS);
    let m = msix_vectors.min(super::msix::MSIX_MAX_VECTORS);
    let no_gsi = |what: &str, n: usize| Error::Device {
        device: format!("VFIO device {bdf}"),
        reason: format!(
            "no GSI left for its {n} {what} vectors (the built-in VMM hands out {MSI_GSIS}); \
             pass fewer functions through"
        ),
    };
    let gsis = router.allocate(n).ok_or_else(|| no_gsi("MSI", n))?;
    // Given back if the wiring fails before the function's `VfioIrqs` (whose drop gives them
    // back) exists.
    let mut held = HeldGsis {
        router,
        gsis: gsis.clone(),
    };
    let msix_gsis = router.allocate(m).ok_or_else(|| no_gsi("MSI-X", m))?;
    held.gsis.extend(&msix_gsis);
    let mut vectors = Vec::with_capacity(n);
    for gsi in gsis {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
            device: format!("VFIO device {bdf}"),
            what: "creating an MSI vector's eventfd".into(),
            source,
        })?;
        vm.register_irqfd(&evt, gsi).map_err(|source| Error::Kvm {
            what: "KVM_IRQFD (a VFIO function's MSI vector)",
            source,
        })?;
        vectors.push((gsi, evt));
    }
    let mut msix = Vec::with_capacity(m);
    for gsi in msix_gsis {
        let evt = || {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
                device: format!("VFIO device {bdf}"),
                what: "creating an MSI-X vector's eventfds".into(),
                source,
            })
        };
        let (fire, hold) = (evt()?, evt()?);
        vm.register_irqfd(&fire, gsi).map_err(|source| Error::Kvm {
            what: "KVM_IRQFD (a VFIO function's MSI-X vector)",
            source,
        })?;
        msix.push(MsixVector {
            gsi,
            fire,
            hold,
            held: false,
            pending: false,
        });
    }
    let mut intx = None;
    if let Some(pin) = intx_pin {
        let evt = || {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
                device: format!("VFIO device {bdf}"),
                what: "creating its INTx eventfds".into(),
                source,
            })
        };
        let i = Intx {
            trigger: evt()?,
            resample: evt()?,
        };
        vm.register_irqfd_with_resample(&i.trigger, &i.resample, u32::from(pin))
            .map_err(|source| Error::Kvm {
                what: "KVM_IRQFD with resample (a VFIO function's INTx)",
                source,
            })?;
        intx = Some(i);
    }
    let w = VfioIrqs {
        device,
        router: router.clone(),
        vectors,
        msix,
        intx,
        msi_on: false,
        msix_on: false,
    };
    held.gsis.clear();
    w.intx_on(true).map_err(|source| Error::DeviceIo {
        device: format!("VFIO device {bdf}"),
        what: "VFIO_DEVICE_SET_IRQS (INTx on)".into(),
        source,
    })?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every table written.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Vec<kvm_irq_routing_entry>>>);

    impl RouteSink for Recorder {
        fn set_routes(&self, table: &[kvm_irq_routing_entry]) -> std::io::Result<()> {
            self.0.lock().unwrap().push(table.to_vec());
            Ok(())
        }
    }

    fn msi_of(table: &[kvm_irq_routing_entry]) -> Vec<(u32, u32, u32, u32)> {
        table
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_MSI)
            // SAFETY: an MSI entry's union holds `msi`.
            .map(|e| unsafe { (e.gsi, e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data) })
            .collect()
    }

    #[test]
    fn the_table_keeps_kvm_s_irqchip_defaults() {
        let t = irqchip_routes();
        assert_eq!(t.len(), 24 + 16, "24 IOAPIC pins, 16 PIC lines");
        // SAFETY: irqchip entries' unions hold `irqchip`.
        let chip = |e: &kvm_irq_routing_entry| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) };
        let serial: Vec<_> = t.iter().filter(|e| e.gsi == 4).map(chip).collect();
        assert_eq!(
            serial,
            [(KVM_IRQCHIP_IOAPIC, 4), (KVM_IRQCHIP_PIC_MASTER, 4)]
        );
        let ten: Vec<_> = t.iter().filter(|e| e.gsi == 10).map(chip).collect();
        assert_eq!(ten, [(KVM_IRQCHIP_IOAPIC, 10), (KVM_IRQCHIP_PIC_SLAVE, 2)]);
        let high: Vec<_> = t.iter().filter(|e| e.gsi == 23).map(chip).collect();
        assert_eq!(high, [(KVM_IRQCHIP_IOAPIC, 23)]);
        assert!(t.iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
    }

    #[test]
    fn routes_are_written_whole_only_when_they_change_and_only_for_own_gsis() {
        let rec = Arc::new(Recorder::default());
        let r = GsiRouter::new(rec.clone());
        let gsis = r.allocate(2).unwrap();
        assert_eq!(gsis, [24, 25]);
        let m = MsiMessage {
            address: 0x1_fee0_0000,
            data: 0x41,
        };
        r.set(&[(24, Some(m)), (25, None), (4, Some(m)), (30, Some(m))])
            .unwrap();
        r.set(&[(24, Some(m))]).unwrap();
        let tables = rec.0.lock().unwrap().clone();
        assert_eq!(tables.len(), 1, "an unchanged table is not written again");
        assert_eq!(tables[0].len(), 24 + 16 + 1, "the irqchip routes are kept");
        assert_eq!(msi_of(&tables[0]), [(24, 0xfee0_0000, 1, 0x41)]);
        r.set(&[(24, None)]).unwrap();
        assert!(msi_of(&rec.0.lock().unwrap()[1]).is_empty());
        assert!(r.allocate(MSI_GSIS as usize).is_none(), "past the range");
        assert_eq!(r.allocate(1).unwrap(), [26]);
    }

    #[test]
    fn a_dropped_wiring_gives_its_gsis_and_routes_back() {
        let (mut w, rec) = msix_wiring(3);
        let router = w.router.clone();
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        w.msix_route(&[Some(m), Some(m), None]).unwrap();
        assert_eq!(msi_of(rec.0.lock().unwrap().last().unwrap()).len(), 2);
        drop(w);
        assert!(
            msi_of(rec.0.lock().unwrap().last().unwrap()).is_empty(),
            "routes left for an unplugged function"
        );
        let mut again = router.allocate(3).unwrap();
        again.sort_unstable();
        assert_eq!(again, [24, 25, 26], "the GSIs are handed out again");
    }

    /// A wiring with `n` MSI-X vectors on GSIs from 24, over a file standing in for the device.
    fn msix_wiring(n: usize) -> (VfioIrqs, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let router = Arc::new(GsiRouter::new(rec.clone()));
        let gsis = router.allocate(n).unwrap();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let w = VfioIrqs {
            device: Arc::new(tempfile::tempfile().unwrap()),
            router,
            vectors: Vec::new(),
            msix: gsis
                .into_iter()
                .map(|gsi| MsixVector {
                    gsi,
                    fire: evt(),
                    hold: evt(),
                    held: false,
                    pending: false,
                })
                .collect(),
            intx: None,
            msi_on: false,
            msix_on: false,
        };
        (w, rec)
    }

    #[test]
    fn msix_routes_go_to_the_vectors_own_gsis() {
        let (mut w, rec) = msix_wiring(2);
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        w.msix_route(&[None, Some(m), Some(m)]).unwrap();
        assert_eq!(
            msi_of(&rec.0.lock().unwrap()[0]),
            [(25, 0xfee0_0000, 0, 0x41)],
            "vector 1 on GSI 25; a route past the vectors is ignored"
        );
        w.msix_route(&[]).unwrap();
        assert!(msi_of(&rec.0.lock().unwrap()[1]).is_empty());
    }

    #[test]
    fn a_held_vector_s_interrupt_is_its_pending_bit_until_released() {
        let (mut w, _rec) = msix_wiring(2);
        w.msix[0].held = true;
        assert!(!w.msix_pending(0), "held, nothing counted");
        // VFIO signals the hold eventfd of a masked vector.
        w.msix[0].hold.write(1).unwrap();
        w.msix[1].hold.write(1).unwrap();
        assert!(w.msix_pending(0));
        assert!(w.msix_pending(0), "the bit stays once drained");
        assert!(!w.msix_pending(1), "an unmasked vector has no pending bit");
        assert!(!w.msix_pending(9), "past the vectors");
        // Releasing asks VFIO first: on a device that refuses, nothing is delivered or lost.
        assert!(w.msix_hold(0, &[false]).is_err());
        assert!(w.msix[0].held && w.msix_pending(0));
        assert!(w.msix[0].fire.read().is_err(), "not delivered");
        assert!(w.msix_hold(1, &[false, false]).is_err(), "past the vectors");
    }

    #[test]
    fn a_failed_write_leaves_the_table_as_it_was() {
        struct Refuses;
        impl RouteSink for Refuses {
            fn set_routes(&self, _: &[kvm_irq_routing_entry]) -> std::io::Result<()> {
                Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            }
        }
        let r = GsiRouter::new(Arc::new(Refuses));
        r.allocate(1).unwrap();
        let m = MsiMessage::default();
        assert!(r.set(&[(24, Some(m))]).is_err());
        assert!(r.state.lock().unwrap().msi.is_empty());
    }

    #[test]
    fn freed_gsis_lose_their_routes_and_are_handed_out_again() {
        let rec = Arc::new(Recorder::default());
        let r = GsiRouter::new(rec.clone());
        assert_eq!(r.allocate(3).unwrap(), [24, 25, 26]);
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        r.set(&[(24, Some(m)), (25, Some(m)), (26, Some(m))])
            .unwrap();
        // 24 and 25 freed (a GSI never handed out, and a second release, ignored).
        r.release(&[25, 24, 900]).unwrap();
        r.release(&[24]).unwrap();
        let tables = rec.0.lock().unwrap().clone();
        assert_eq!(tables.len(), 2, "one write: the second release is ignored");
        assert_eq!(msi_of(&tables[1]), [(26, 0xfee0_0000, 0, 0x41)]);
        // A freed GSI takes no route until handed out again.
        r.set(&[(24, Some(m))]).unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        assert_eq!(r.allocate(3).unwrap(), [24, 25, 27], "freed ones first");
        // Plug and unplug forever: the range is never used up.
        for _ in 0..(2 * MSI_GSIS) {
            let g = r.allocate(2).unwrap();
            r.release(&g).unwrap();
        }
        assert_eq!(r.allocate(1).unwrap().len(), 1);
    }
}
