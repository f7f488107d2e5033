//! VFIO hot-plug onto the spare PCIe root ports a VM was built with
//! ([`crate::vm::VmBuilder::spare_root_ports`]), or the spare downstream ports of its PCIe
//! switch ([`crate::vm::VmBuilder::spare_switch_ports`]), while the VM runs. A downstream
//! port's slot is a root port's ([`RootPort::downstream`]): the same plug and release. With
//! neither free, a free SHPC slot of the VM's PCI-to-PCI bridge
//! ([`crate::vm::VmBuilder::spare_bridge_slots`]): the card inserted and its button pressed
//! ([`Bridge::plug_slot`]), released by the button and the guest's disable command.
//!
//! - **Plug** ([`VfioHotplug::plug`]): the first root port with an empty slot is chosen; the
//!   function is opened as at boot ([`VfioSet::open_in`]: sysfs first, so a function whose
//!   group is not all on `vfio-pci` is refused before anything is opened; the container and
//!   its DMA mapping of guest RAM on first use), its BARs placed in the port's window, its MSI
//!   and MSI-X wired ([`irq::wire`]), and its INTx too, on the line the MP table declared at
//!   boot for its INTA# swizzled up to bus 0 (a root port's slot's INTA#, INTA# + n at the
//!   switch's slot for downstream port n, INTA# + s at the bridge's slot for SHPC slot s:
//!   `VfioSet::intx_pin_at`); then the port's slot reports presence
//!   ([`RootPort::plug`]) and
//!   raises the port's MSI, and the guest's pciehp powers the slot, scans the bus below and
//!   assigns the BARs.
//! - **Unplug** ([`VfioHotplug::unplug`]): once the slot has settled (on two polls in a row,
//!   the power indicator the guest programmed not blinking, no event waiting for the guest:
//!   pciehp and shpchp ignore a press while they power a slot on or off, and cancel on one
//!   within their 5 s) with [`PRESS_RESERVE`] of the timeout still left (the guest acts on a
//!   press 5 s later: pressed later, it would drop the function after the VMM gave up and
//!   kept it) the slot's attention button is pressed (else an error naming the slot, nothing
//!   pressed, the function kept); pciehp
//!   waits its 5 s, unbinds the driver and turns the slot's power off; once it has (bounded
//!   wait, an error naming the slot otherwise, the function left plugged) the function is
//!   taken out ([`RootPort::unplug`]) and closed (its device descriptor, with its interrupts),
//!   and the port is free for the next plug. The container and groups stay open for the VM's
//!   life (a group opened once is reused).
//! - **Interrupts of the ports** (`wire_port_msi`): each port's MSI is a GSI of the VM's
//!   [`GsiRouter`] with an irqfd: raising it routes the GSI to the message the guest programmed
//!   (`KVM_SET_GSI_ROUTING`, allowed to the vCPU threads) and writes the eventfd, from
//!   whichever thread changed the slot (the caller's for a plug, a vCPU's for a guest write).
//!
//! Locks are taken in one order, the bus before a port before a function, and none is held
//! while waiting for the guest: the vCPU threads keep answering configuration cycles (the bus
//! lock, then the port's) while a plug or an unplug is in progress.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::irq::{self, GsiRouter};
use super::{VfioConfig, VfioPci, VfioSet};
use crate::devices::pci::bridge::Bridge;
use crate::devices::pci::root_port::RootPort;
use crate::devices::pci::{BarAllocator, PciBus};
use crate::error::{Error, Result};
use crate::memory::GuestMemory;

/// How often [`VfioHotplug::unplug`] looks at the slot while the guest releases it.
const POLL: Duration = Duration::from_millis(50);

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A root port shared with the bus.
type SharedPort = Arc<Mutex<RootPort>>;

/// Where a hot-plugged function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plugged {
    /// Its root port's slot on the root bus (the first element of the guest PCI path).
    pub port_slot: u8,
    /// The port's secondary bus, where the function is device 0.
    pub secondary: u8,
}

/// A function in a port's slot.
struct InSlot {
    bdf: String,
    port: Holder,
    port_slot: u8,
    /// Its guest PCI path (`[port slot, 0]`, through a switch `[root port slot, 0,
    /// downstream port, 0]`, or in a bridge's SHPC slot `[bridge slot, device]`).
    path: Vec<u8>,
    device: Arc<Mutex<VfioPci>>,
}

/// The VM's VFIO hot-plug: its PCI bus (with the spare root ports), its VFIO container, its
/// memory (for the DMA mapping) and its interrupt routing. Cloned handles share the state.
#[derive(Clone)]
pub struct VfioHotplug {
    bus: Arc<Mutex<PciBus>>,
    set: Arc<Mutex<VfioSet>>,
    /// Declared after `set`: the mapping outlives the container's DMA mapping of it.
    mem: GuestMemory,
    vm: Arc<VmFd>,
    router: Arc<GsiRouter>,
    plugged: Arc<Mutex<Vec<InSlot>>>,
    /// The VM has a virtio-mem region: memory plugged there later would not be mapped for a
    /// function's DMA, so a VFIO hot-plug is refused (a disk may still take a spare port).
    memory_hotplug: bool,
    /// Held by each plug and unplug from start to end: two unplugs of one function, or an
    /// unplug racing a plug onto the port it frees, never act on the same slot at once.
    ops: Arc<Mutex<()>>,
}

/// A VFIO hot-plug into a VM with a virtio-mem region is refused: the function's DMA maps the
/// memory there is at the plug, and memory plugged later would not be reachable by it.
pub(crate) fn refuse_with_memory_hotplug(memory_hotplug: bool, c: &VfioConfig) -> Result<()> {
    if !memory_hotplug {
        return Ok(());
    }
    Err(Error::Device {
        device: format!("VFIO function {}", c.bdf),
        reason: "hot-plugged into a VM with memory hotplug (virtio-mem): memory plugged later \
                 would not be mapped for the function's DMA; set enable_virtio_mem = false, or \
                 hot-plug no VFIO device"
            .into(),
    })
}

impl std::fmt::Debug for VfioHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioHotplug")
            .field("free_ports", &self.free_ports())
            .field(
                "plugged",
                &lock(&self.plugged)
                    .iter()
                    .map(|p| p.bdf.clone())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The first root port of `bus` whose slot is empty, with its slot on the root bus.
pub fn free_port(bus: &PciBus) -> Option<(u8, Arc<Mutex<RootPort>>)> {
    bus.root_ports()
        .iter()
        .find(|(_, p)| !lock(p).is_occupied())
        .map(|(s, p)| (*s, p.clone()))
}

/// The first port of `bus` with an empty slot for a VFIO function: a root port, else a
/// switch's downstream port; with the port's slot on the root bus (the switch's root port's
/// for a downstream port) and the guest PCI path of the function it would hold.
pub fn free_hotplug_port(bus: &PciBus) -> Option<(u8, Vec<u8>, Arc<Mutex<RootPort>>)> {
    if let Some((slot, port)) = free_port(bus) {
        return Some((slot, vec![slot, 0], port));
    }
    bus.downstream_ports()
        .iter()
        .find(|(_, p)| !lock(p).is_occupied())
        .map(|(path, p)| (path[0], path.clone(), p.clone()))
}

/// The error for a plug with every port taken.
fn no_port(bdf: &str, ports: usize) -> Error {
    Error::Device {
        device: format!("VFIO device {bdf}"),
        reason: format!(
            "no free PCIe port or bridge slot to hot-plug it into: the VM has {ports} hot-plug \
             port(s) (root ports and switch downstream ports) and its bridge's SHPC slots, all \
             taken; raise pcie_root_port or pcie_switch_port (the spare ports made at boot) or \
             unplug a device first"
        ),
    }
}

/// What holds a hot-plugged function: a port's slot, or a slot (device number) of a PCI
/// bridge's SHPC.
#[derive(Clone)]
pub(crate) enum Holder {
    /// A root port or a switch's downstream port.
    Port(SharedPort),
    /// A PCI bridge and the device number of the slot.
    Bridge(Arc<Mutex<Bridge>>, u8),
}

/// A free SHPC slot: the bridge's slot on bus 0, the bridge, the slot's device number and its
/// window.
pub type BridgeSlot = (u8, Arc<Mutex<Bridge>>, u8, (u64, u64));

/// The first bridge of `bus` with a free SHPC slot: the bridge's slot on bus 0, the bridge,
/// the slot's device number and its window.
pub fn free_bridge_slot(bus: &PciBus) -> Option<BridgeSlot> {
    bus.shpc_bridges().iter().find_map(|(s, b)| {
        let (device, window) = lock(b).free_slot()?;
        Some((*s, b.clone(), device, window))
    })
}

/// What [`plug_into`] gives back: where the function is, its guest PCI path, what holds it
/// and the function.
pub(crate) type InPort = (Plugged, Vec<u8>, Holder, Arc<Mutex<VfioPci>>);

/// Puts the function `c` into the first free port of `bus` ([`free_hotplug_port`]): opened
/// through `set` (DMA
/// mapping `mem` on the container's first use), its BARs in the port's window, `wire` given
/// it before the slot reports it. Any error leaves the port empty and the function closed.
pub(crate) fn plug_into(
    bus: &Mutex<PciBus>,
    set: &Mutex<VfioSet>,
    mem: &GuestMemory,
    c: &VfioConfig,
    wire: impl FnOnce(&mut VfioPci) -> Result<()>,
) -> Result<InPort> {
    let mut set = lock(set);
    if set
        .devices
        .iter()
        .any(|d| lock(d).bdf.eq_ignore_ascii_case(&c.bdf))
    {
        return Err(Error::Device {
            device: format!("VFIO device {}", c.bdf),
            reason: "already passed through to this VM: pass each PCI function once".into(),
        });
    }
    let (port_slot, path, port, secondary, window) = {
        let bus = lock(bus);
        if let Some((slot, path, port)) = free_hotplug_port(&bus) {
            let (secondary, window) = {
                let p = lock(&port);
                (p.buses().0, p.window().unwrap_or_else(|| p.preset_window()))
            };
            (slot, path, Holder::Port(port), secondary, window)
        } else if let Some((slot, bridge, device, window)) = free_bridge_slot(&bus) {
            let secondary = lock(&bridge).buses().0;
            let holder = Holder::Bridge(bridge, device);
            (slot, vec![slot, device], holder, secondary, window)
        } else {
            let n = bus.hotplug_ports().len();
            return Err(no_port(&c.bdf, n));
        }
    };
    let mut alloc = BarAllocator::within(window.0, window.1);
    let mut d = set.open_in(c, mem, &mut alloc)?;
    d.slot = Some(port_slot);
    // INTx on the line the MP table (written at boot) gives its pin swizzled to bus 0, as
    // for a cold-plugged function in the same place.
    d.intx_pin = set.intx_pin_at(&path).filter(|_| d.host_intx);
    d.path = Some(path.clone());
    wire(&mut d)?;
    let d = Arc::new(Mutex::new(d));
    let plugged = match &port {
        Holder::Port(p) => lock(p).plug(d.clone()).is_ok(),
        Holder::Bridge(b, device) => lock(b).plug_slot(*device, d.clone()).is_ok(),
    };
    if !plugged {
        // Only this function's caller plugs (the set's lock is held, and the VM's port lock
        // keeps disk plugs out: `with_port_lock`): never taken meanwhile.
        return Err(no_port(&c.bdf, 0));
    }
    set.devices.push(d.clone());
    Ok((
        Plugged {
            port_slot,
            secondary,
        },
        path,
        port,
        d,
    ))
}

/// Asks the guest to release the function in `port` (its attention button) and waits for the
/// guest to turn the slot's power off, then takes the function out (an empty port is left as
/// it is, a port whose slot the guest powered off already is emptied without a press). The
/// button is pressed only once the slot has settled ([`RootPort::settled`] on two polls in a
/// row: a press while pciehp powers the slot on or off is ignored or cancels, and the unplug
/// would time out), and only while the rest of `timeout` still covers [`PRESS_RESERVE`] (the
/// guest acts on a press 5 s later): a slot that settles later is left unpressed, an error.
/// On a timeout the function stays in the slot.
pub fn release(port: &Mutex<RootPort>, what: &str, timeout: Duration) -> Result<()> {
    release_reserving(port, what, timeout, PRESS_RESERVE)
}

/// [`release`] pressing the button only while `reserve` of `timeout` is left.
fn release_reserving(
    port: &Mutex<RootPort>,
    what: &str,
    timeout: Duration,
    reserve: Duration,
) -> Result<()> {
    let t = Instant::now();
    let press = settle(what, timeout, reserve, "pciehp", || {
        let p = lock(port);
        match (p.is_occupied(), p.settled(), p.powered_off()) {
            (false, ..) => Slot::Empty,
            (true, true, true) => Slot::Off,
            (true, true, false) => Slot::Settled,
            (true, false, _) => Slot::Busy,
        }
    })?;
    {
        let mut p = lock(port);
        if !p.is_occupied() {
            return Ok(());
        }
        if press && !p.powered_off() {
            p.press_attention();
        }
    }
    let left = timeout.saturating_sub(t.elapsed());
    wait_released(what, left, "power its slot off", "pciehp", || {
        let mut p = lock(port);
        let off = p.powered_off();
        if off {
            p.unplug();
        }
        off
    })
}

/// The time an unplug keeps for the guest after pressing the button: pciehp and shpchp act
/// on a press after 5 s (a press within them cancels), then unbind the driver and power the
/// slot off. A button pressed with less of the unplug's timeout left would be acted on after
/// the VMM gave up and kept the function: the guest would drop a function the VMM still has.
pub const PRESS_RESERVE: Duration = Duration::from_secs(5 + 3);

/// A slot as [`settle`] sees it on one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Empty: nothing to release.
    Empty,
    /// Settled with its power off (the guest released it already): no press is needed.
    Off,
    /// Settled and powered: the guest would act on a press now.
    Settled,
    /// The guest is powering it on or off, or has an event to take.
    Busy,
}

/// Polls `slot` until the guest would act on a press ([`Slot::Settled`] on two polls in a
/// row: the guest's interrupt handler takes a slot's events before its worker blinks the
/// indicator, and one poll in between reads settled) — `Ok(true)`, press — or no press is
/// needed ([`Slot::Empty`] once, [`Slot::Off`] on two polls in a row: a slot just plugged is
/// off until the guest's worker powers it) — `Ok(false)`. Pressing is allowed only while
/// `reserve` of `timeout` is left: past that the error names `what`, says the button was not
/// pressed, and the guest driver (`driver`) that keeps the slot in transition (or, for a
/// `timeout` shorter than `reserve`, says so).
fn settle(
    what: &str,
    timeout: Duration,
    reserve: Duration,
    driver: &str,
    mut slot: impl FnMut() -> Slot,
) -> Result<bool> {
    let t = Instant::now();
    let mut last = Slot::Busy;
    loop {
        let now = slot();
        if now == Slot::Empty || (last, now) == (Slot::Off, Slot::Off) {
            return Ok(false);
        }
        let left = timeout.saturating_sub(t.elapsed());
        // An Off slot needs no press: it may still be confirmed while the time lasts.
        if (left < reserve && now != Slot::Off) || left.is_zero() {
            let reason = if timeout < reserve {
                format!(
                    "the unplug timeout {timeout:?} is shorter than the {reserve:?} the guest's \
                     {driver} needs after the attention button (its 5 s delay, then the \
                     release), so it was not pressed; it stays plugged: give the removal at \
                     least {reserve:?}"
                )
            } else {
                format!(
                    "its slot did not settle within {:?} of the {timeout:?} timeout: the \
                     guest's {driver} kept it powering on or off (power indicator blinking) \
                     or did not take its last event, and a button pressed then is ignored, \
                     while one pressed later would be acted on after the timeout, so it was \
                     not pressed; it stays plugged: retry the removal or stop the VM",
                    timeout - reserve
                )
            };
            return Err(Error::Device {
                device: what.to_string(),
                reason,
            });
        }
        if (last, now) == (Slot::Settled, Slot::Settled) {
            return Ok(true);
        }
        last = now;
        std::thread::sleep(POLL);
    }
}

/// Polls `released` (which takes the function out once the guest let it go) until it does,
/// or `timeout` has passed since the attention button: then the error names `what`, what the
/// guest did not do (`act`) and the guest driver that should have (`driver`).
fn wait_released(
    what: &str,
    timeout: Duration,
    act: &str,
    driver: &str,
    mut released: impl FnMut() -> bool,
) -> Result<()> {
    let t = Instant::now();
    loop {
        if released() {
            return Ok(());
        }
        if t.elapsed() >= timeout {
            return Err(Error::Device {
                device: what.to_string(),
                reason: format!(
                    "the guest did not {act} within {timeout:?} of the attention button \
                     ({driver} not bound, or the device still in use); it stays plugged: retry \
                     the removal or stop the VM"
                ),
            });
        }
        std::thread::sleep(POLL);
    }
}

impl VfioHotplug {
    pub(crate) fn new(
        bus: Arc<Mutex<PciBus>>,
        set: Arc<Mutex<VfioSet>>,
        mem: GuestMemory,
        vm: Arc<VmFd>,
        router: Arc<GsiRouter>,
    ) -> Self {
        VfioHotplug {
            bus,
            set,
            mem,
            vm,
            router,
            plugged: Arc::new(Mutex::new(Vec::new())),
            memory_hotplug: false,
            ops: Arc::new(Mutex::new(())),
        }
    }

    /// Makes this handle's plugs and unplugs take `lock`, shared with the VM's disk hot-plug:
    /// a function and a disk never choose a port at once.
    pub(crate) fn with_port_lock(mut self, lock: Arc<Mutex<()>>) -> Self {
        self.ops = lock;
        self
    }

    /// Marks the VM as having a virtio-mem region: [`VfioHotplug::plug`] then refuses.
    pub(crate) fn with_memory_hotplug(mut self, yes: bool) -> Self {
        self.memory_hotplug = yes;
        self
    }

    /// The hot-plug ports (root ports, switch downstream ports) with an empty slot, and the
    /// PCI bridges' free SHPC slots.
    pub fn free_ports(&self) -> usize {
        let bus = lock(&self.bus);
        let ports = bus
            .hotplug_ports()
            .iter()
            .filter(|p| !lock(p).is_occupied())
            .count();
        ports
            + bus
                .shpc_bridges()
                .iter()
                .map(|(_, b)| lock(b).free_slots())
                .sum::<usize>()
    }

    /// The guest PCI path of the hot-plugged function at host address `bdf`.
    pub fn guest_path(&self, bdf: &str) -> Option<Vec<u8>> {
        lock(&self.plugged)
            .iter()
            .find(|p| p.bdf.eq_ignore_ascii_case(bdf))
            .map(|p| p.path.clone())
    }

    /// Hot-plugs the function `c` into the first free root port (see the module
    /// documentation); returns where the guest finds it. Returns as soon as the slot reported
    /// it: the guest's pciehp then brings it up.
    pub fn plug(&self, c: &VfioConfig) -> Result<Plugged> {
        refuse_with_memory_hotplug(self.memory_hotplug, c)?;
        let _op = lock(&self.ops);
        let (vm, router) = (&self.vm, &self.router);
        let (at, path, port, device) = plug_into(&self.bus, &self.set, &self.mem, c, |d| {
            super::wire_one(d, vm, router)
        })?;
        tracing::info!(
            bdf = %c.bdf, slot = at.port_slot, secondary = at.secondary,
            "VFIO: hot-plugged on bus {:02x} (guest PCI path {path:02x?})",
            at.secondary
        );
        lock(&self.plugged).push(InSlot {
            bdf: c.bdf.clone(),
            port,
            port_slot: at.port_slot,
            path,
            device,
        });
        Ok(at)
    }

    /// Hot-unplugs the function at host address `bdf` (see the module documentation),
    /// waiting up to `timeout` for the guest to release it; returns its port's slot, free
    /// again.
    pub fn unplug(&self, bdf: &str, timeout: Duration) -> Result<u8> {
        let _op = lock(&self.ops);
        let (port, port_slot, path, device) = lock(&self.plugged)
            .iter()
            .find(|p| p.bdf.eq_ignore_ascii_case(bdf))
            .map(|p| {
                (
                    p.port.clone(),
                    p.port_slot,
                    p.path.clone(),
                    p.device.clone(),
                )
            })
            .ok_or_else(|| Error::Device {
                device: format!("VFIO device {bdf}"),
                reason: "not hot-plugged into this VM".into(),
            })?;
        let what = format!("VFIO device {bdf} (slot of guest PCI path {path:02x?})");
        match &port {
            Holder::Port(p) => release(p, &what, timeout)?,
            Holder::Bridge(b, device) => release_bridge_slot(b, *device, &what, timeout)?,
        }
        lock(&self.plugged).retain(|p| !Arc::ptr_eq(&p.device, &device));
        lock(&self.set).devices.retain(|d| !Arc::ptr_eq(d, &device));
        // The last reference: the device descriptor (and its interrupts' eventfds) close.
        drop(device);
        tracing::info!(
            bdf,
            slot = port_slot,
            "VFIO: hot-unplugged; its slot is free"
        );
        Ok(port_slot)
    }
}

/// Asks the guest to release the function in SHPC slot `device` of `bridge` (its attention
/// button) and waits for the guest to disable the slot, then takes the function out. As
/// [`release`], the button is pressed once the slot has settled ([`Bridge::slot_settled`] on
/// two polls in a row: shpchp ignores a press while it enables or disables the slot and
/// cancels on one within its 5 s), and only while [`PRESS_RESERVE`] of `timeout` is left. On
/// a timeout the function stays in the slot.
pub fn release_bridge_slot(
    bridge: &Mutex<Bridge>,
    device: u8,
    what: &str,
    timeout: Duration,
) -> Result<()> {
    release_bridge_slot_reserving(bridge, device, what, timeout, PRESS_RESERVE)
}

/// [`release_bridge_slot`] pressing the button only while `reserve` of `timeout` is left.
fn release_bridge_slot_reserving(
    bridge: &Mutex<Bridge>,
    device: u8,
    what: &str,
    timeout: Duration,
    reserve: Duration,
) -> Result<()> {
    let t = Instant::now();
    let press = settle(what, timeout, reserve, "shpchp", || {
        let b = lock(bridge);
        match (
            b.is_occupied(device),
            b.slot_settled(device),
            b.slot_disabled(device),
        ) {
            (false, ..) => Slot::Empty,
            (true, true, true) => Slot::Off,
            (true, true, false) => Slot::Settled,
            (true, false, _) => Slot::Busy,
        }
    })?;
    {
        let mut b = lock(bridge);
        if !b.is_occupied(device) {
            return Ok(());
        }
        if press && !b.slot_disabled(device) {
            b.press_slot(device);
        }
    }
    let left = timeout.saturating_sub(t.elapsed());
    wait_released(what, left, "disable its SHPC slot", "shpchp", || {
        let mut b = lock(bridge);
        let off = b.slot_disabled(device);
        if off {
            b.unplug_slot(device);
        }
        off
    })
}

/// Gives every PCI bridge of `bus` with an SHPC its MSI (as [`wire_port_msi`]).
pub(crate) fn wire_bridges_msi(
    bus: &Mutex<PciBus>,
    vm: &VmFd,
    router: &Arc<GsiRouter>,
) -> Result<()> {
    let bridges: Vec<_> = lock(bus)
        .shpc_bridges()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    for b in bridges {
        let signal = msi_signal("PCI bridge (SHPC)", vm, router)?;
        lock(&b).set_signal(signal);
    }
    Ok(())
}

/// Gives `port` its MSI: a GSI of `router` with an irqfd on `vm`; raising it routes the GSI to
/// the guest's message and signals the irqfd.
pub(crate) fn wire_port_msi(port: &mut RootPort, vm: &VmFd, router: &Arc<GsiRouter>) -> Result<()> {
    port.set_signal(msi_signal("PCIe root port", vm, router)?);
    Ok(())
}

/// A one-vector MSI for `what`: a GSI of `router` with an irqfd on `vm`, routed to the
/// guest's message when raised.
fn msi_signal(
    what: &str,
    vm: &VmFd,
    router: &Arc<GsiRouter>,
) -> Result<crate::devices::pci::root_port::MsiSignal> {
    let gsi = router
        .allocate(1)
        .and_then(|g| g.first().copied())
        .ok_or_else(|| Error::Device {
            device: what.to_string(),
            reason: format!(
                "no GSI left for its hot-plug interrupt (the built-in VMM hands out {})",
                irq::MSI_GSIS
            ),
        })?;
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
        device: what.to_string(),
        what: "creating its MSI eventfd".into(),
        source,
    })?;
    vm.register_irqfd(&evt, gsi).map_err(|source| Error::Kvm {
        what: "KVM_IRQFD (a hot-plug controller's MSI)",
        source,
    })?;
    let router = router.clone();
    Ok(Box::new(move |msg| {
        if let Err(e) = router.set(&[(gsi, Some(msg))]) {
            tracing::warn!(gsi, error = %e, "hot-plug controller: routing its MSI");
            return;
        }
        if let Err(e) = evt.write(1) {
            tracing::warn!(gsi, error = %e, "hot-plug controller: signalling its MSI");
        }
    }))
}

#[cfg(test)]
mod tests;
