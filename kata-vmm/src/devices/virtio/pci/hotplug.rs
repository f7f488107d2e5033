//! Hot-plug of a virtio device — a disk (virtio-blk on a raw image file or a host block
//! device) or a NIC (virtio-net on a tap) — onto a spare PCIe root port while the VM runs,
//! behind the virtio-pci transport; the ports are the ones VFIO hot-plug uses
//! ([`crate::devices::vfio::hotplug`]): one pool, the first free port is taken. One handle,
//! [`VirtioHotplug`], plugs every kind: what differs is only how the device is opened
//! ([`HotDevice`]).
//!
//! - **Plug** ([`VirtioHotplug::plug`]): the device is opened on the caller's thread (the
//!   image file, or the tap queue handed over as the cold path gets it: the VMM's threads
//!   are confined and could not), a free port is chosen, the function's BAR placed in the
//!   port's window, its MSI-X vectors given GSIs and irqfds, the device joined to the VM's
//!   run-time devices ([`super::serve`]) and put in the slot behind a [`Doorbell`] (a queue
//!   notification does not wait for the device thread), and the port's slot reports presence
//!   and raises the port's MSI: the guest's pciehp brings the device up. Any error leaves the
//!   port empty and the file or tap descriptor closed. Plugs run one at a time; a port a VFIO
//!   hot-plug took meanwhile makes the plug try the next free one.
//! - **Unplug** ([`VirtioHotplug::unplug`]): the slot's attention button, a bounded wait for
//!   the guest to power the slot off ([`release`]: an error naming the device and slot, the
//!   device left plugged, on a timeout), then the device is reset, no longer served and
//!   closed (its image file, or its duplicate of the tap queue); the port is free for the
//!   next device.
//!
//! The GSIs a device used (its queues + 1 of the VM's [`irq::MSI_GSIS`], shared with VFIO)
//! are given back when it is unplugged or its plug fails, with its eventfds closed
//! ([`MsixWiring`]'s drop).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::doorbell::Doorbell;
use super::msix::MsixWiring;
use super::serve::RunTimeDevices;
use super::{vectors_for, VirtioPci, BAR_SIZE};
use crate::devices::pci::root_port::RootPort;
use crate::devices::pci::{BarAllocator, PciBus, SharedPciDevice};
use crate::devices::vfio::hotplug::{free_port, release, Plugged};
use crate::devices::vfio::irq::{self, GsiRouter};
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::VirtioDevice;
use crate::error::{Error, Result};
use crate::event_loop::EventHandler;
use crate::memory::GuestMemory;

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a vector's eventfd as the irqfd of its GSI (KVM in a running VM).
pub trait IrqfdSink: Send + Sync {
    /// `KVM_IRQFD` of `fd` on `gsi`.
    fn register(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()>;
}

impl IrqfdSink for VmFd {
    fn register(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.register_irqfd(fd, gsi).map_err(std::io::Error::from)
    }
}

/// A device to hot-plug: what [`VirtioHotplug::plug`] opens on the caller's thread.
#[derive(Debug, Clone)]
pub enum HotDevice {
    /// A disk: virtio-blk on the image file or block device (opened by the plug).
    Block(BlockConfig),
    /// A NIC: virtio-net on the tap queue handed over (its vnet header set by the plug; the
    /// device holds a duplicate of the descriptor, closed on unplug).
    Net(NetConfig),
}

impl HotDevice {
    /// How logs and errors name it.
    fn describe(&self) -> String {
        match self {
            HotDevice::Block(c) => format!("virtio-blk {}", c.path.display()),
            HotDevice::Net(c) => format!("virtio-net {}", c.name),
        }
    }

    /// The device, opened here (the caller's thread).
    fn open(&self) -> Result<Opened> {
        match self {
            HotDevice::Block(c) => {
                let block = Block::new(c)?;
                let notify = dup_notify(block.notify_evt(), &self.describe())?;
                Ok((Box::new(block), notify))
            }
            HotDevice::Net(c) => {
                let net = Net::new(c)?;
                let notify = dup_notify(net.notify_evt(), &self.describe())?;
                Ok((Box::new(net), notify))
            }
        }
    }
}

/// An opened device and a duplicate of the eventfd it watches for queue notifications.
pub(crate) type Opened = (Box<dyn VirtioDevice>, EventFd);

/// A duplicate of `what`'s notify eventfd `fd`.
pub(crate) fn dup_notify(fd: &EventFd, what: &str) -> Result<EventFd> {
    fd.try_clone().map_err(|source| Error::DeviceIo {
        device: what.to_string(),
        what: "duplicating its notify eventfd".into(),
        source,
    })
}

/// A device in a port's slot.
struct InSlot {
    /// How logs and errors name it ([`HotDevice::describe`]).
    what: String,
    port: Arc<Mutex<RootPort>>,
    port_slot: u8,
    device: Arc<Mutex<VirtioPci>>,
    served: usize,
}

/// The VM's virtio hot-plug, disks and NICs (see the module documentation). Cloned handles
/// share the state.
#[derive(Clone)]
pub struct VirtioHotplug {
    bus: Arc<Mutex<PciBus>>,
    mem: GuestMemory,
    irqfds: Arc<dyn IrqfdSink>,
    router: Arc<GsiRouter>,
    serve: Arc<Mutex<RunTimeDevices>>,
    plugged: Arc<Mutex<Vec<InSlot>>>,
    /// Held by a plug from choosing its port to recording it.
    plugging: Arc<Mutex<()>>,
}

impl std::fmt::Debug for VirtioHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioHotplug")
            .field("free_ports", &self.free_ports())
            .field(
                "plugged",
                &lock(&self.plugged)
                    .iter()
                    .map(|p| (p.port_slot, p.what.clone()))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The error for a plug with every port taken.
fn no_port(what: &str, ports: usize) -> Error {
    Error::Device {
        device: what.to_string(),
        reason: format!(
            "no free PCIe root port to hot-plug it into: the VM has {ports} root port(s), all \
             taken; raise pcie_root_port (the spare root ports made at boot) or unplug a device \
             first"
        ),
    }
}

impl VirtioHotplug {
    /// The handle of a VM whose bus is `bus` (its root ports the pool), memory `mem` (all of
    /// it: RAM and the virtio-mem region, where the guest may put a device's buffers),
    /// vectors routed by `router` with irqfds registered through `irqfds`, hot-plugged
    /// devices served by `serve`.
    pub fn new(
        bus: Arc<Mutex<PciBus>>,
        mem: GuestMemory,
        irqfds: Arc<dyn IrqfdSink>,
        router: Arc<GsiRouter>,
        serve: Arc<Mutex<RunTimeDevices>>,
    ) -> Self {
        VirtioHotplug {
            bus,
            mem,
            irqfds,
            router,
            serve,
            plugged: Arc::new(Mutex::new(Vec::new())),
            plugging: Arc::new(Mutex::new(())),
        }
    }

    /// Makes this handle's plugs take `lock`, shared with the VM's VFIO hot-plug
    /// (`VfioHotplug::with_port_lock`): a virtio device and a function never choose a port
    /// at once.
    pub(crate) fn with_port_lock(mut self, lock: Arc<Mutex<()>>) -> Self {
        self.plugging = lock;
        self
    }

    /// The root ports with an empty slot (shared with VFIO hot-plug).
    pub fn free_ports(&self) -> usize {
        lock(&self.bus)
            .root_ports()
            .iter()
            .filter(|(_, p)| !lock(p).is_occupied())
            .count()
    }

    /// Hot-plugs `d` (a disk or a NIC) into the first free root port (see the module
    /// documentation); returns where the guest finds it (function 0 of the port's secondary
    /// bus). Returns as soon as the slot reported it.
    pub fn plug(&self, d: &HotDevice) -> Result<Plugged> {
        self.plug_with(&d.describe(), &|| d.open())
    }

    /// [`Self::plug`] of the device `open` opens (again for each port tried), named `what`.
    pub(crate) fn plug_with(
        &self,
        what: &str,
        open: &dyn Fn() -> Result<Opened>,
    ) -> Result<Plugged> {
        // One plug at a time: two would choose the same free port.
        let _plugging = lock(&self.plugging);
        // With the port lock shared (`with_port_lock`) no VFIO hot-plug takes the chosen port
        // meanwhile; a handle without it tries the next free one (each round one port fewer
        // is free, so this ends).
        loop {
            if let Some(plugged) = self.try_plug(open, what)? {
                return Ok(plugged);
            }
        }
    }

    /// One attempt of [`Self::plug`]: `None` if the port chosen was taken meanwhile (nothing
    /// left behind).
    fn try_plug(&self, open: &dyn Fn() -> Result<Opened>, name: &str) -> Result<Option<Plugged>> {
        let what = format!("{name} (hot-plug)");
        // Opened here, first: a missing file or a bad tap plugs nothing.
        let (device, notify) = open()?;
        // The function's, and the doorbell's (a notify that does not wait for the device).
        let bell = dup_notify(&notify, &what)?;
        let queues = device.queue_max_sizes().len();
        let (port_slot, port) = {
            let bus = lock(&self.bus);
            free_port(&bus).ok_or_else(|| no_port(&what, bus.root_ports().len()))?
        };
        let (secondary, window) = {
            let p = lock(&port);
            (p.buses().0, p.window().unwrap_or_else(|| p.preset_window()))
        };
        let bar = BarAllocator::within(window.0, window.1)
            .allocate(BAR_SIZE)
            .ok_or_else(|| Error::Device {
                device: what.clone(),
                reason: format!(
                    "its {BAR_SIZE:#x}-byte BAR does not fit root port 00:{port_slot:02x}.0's \
                     window {:#x}..{:#x}",
                    window.0, window.1
                ),
            })?;
        let wiring = self.wire(&what, vectors_for(queues))?;
        let device = Arc::new(Mutex::new(VirtioPci::new(
            device,
            self.mem.clone(),
            bar,
            wiring,
            Some(notify),
        )?));
        let watched = EventHandler::watched(&*lock(&device));
        let served = lock(&self.serve)
            .add(device.clone(), &watched)
            .map_err(|source| Error::DeviceIo {
                device: what.clone(),
                what: "serving it on the device thread".into(),
                source,
            })?;
        let shared: SharedPciDevice =
            Arc::new(Mutex::new(Doorbell::new(device.clone(), bell, queues)));
        if lock(&port).plug(shared).is_err() {
            // Taken meanwhile (a VFIO hot-plug chose the same port): the device, its file or
            // tap descriptor and GSIs are dropped; the caller tries the next free port.
            lock(&self.serve).remove(served);
            return Ok(None);
        }
        tracing::info!(
            device = %what, slot = port_slot, secondary,
            "virtio-pci: hot-plugged at {secondary:02x}:00.0 behind root port 00:{port_slot:02x}.0"
        );
        lock(&self.plugged).push(InSlot {
            what: name.to_string(),
            port,
            port_slot,
            device,
            served,
        });
        Ok(Some(Plugged {
            port_slot,
            secondary,
        }))
    }

    /// `n` vectors: GSIs of the router and eventfds registered as their irqfds.
    fn wire(&self, what: &str, n: usize) -> Result<MsixWiring> {
        let gsis = self.router.allocate(n).ok_or_else(|| Error::Device {
            device: what.to_string(),
            reason: format!(
                "no GSI left for its {n} MSI-X vectors (the built-in VMM hands out {})",
                irq::MSI_GSIS
            ),
        })?;
        // Built first: an error below drops it, and the GSIs go back.
        let mut wiring = MsixWiring {
            router: self.router.clone(),
            gsis,
            fds: Vec::with_capacity(n),
        };
        for i in 0..n {
            let gsi = wiring.gsis[i];
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
                device: what.to_string(),
                what: "creating an MSI-X eventfd".into(),
                source,
            })?;
            self.irqfds
                .register(&fd, gsi)
                .map_err(|source| Error::DeviceIo {
                    device: what.to_string(),
                    what: format!("KVM_IRQFD of an MSI-X vector (GSI {gsi})"),
                    source,
                })?;
            wiring.fds.push(fd);
        }
        Ok(wiring)
    }

    /// Hot-unplugs the device in root port `port_slot`, waiting up to `timeout` for the guest
    /// to release it (see the module documentation).
    pub fn unplug(&self, port_slot: u8, timeout: Duration) -> Result<()> {
        let (port, device, served, what) = lock(&self.plugged)
            .iter()
            .find(|p| p.port_slot == port_slot)
            .map(|p| (p.port.clone(), p.device.clone(), p.served, p.what.clone()))
            .ok_or_else(|| Error::Device {
                device: format!("root port 00:{port_slot:02x}.0"),
                reason: "no virtio device was hot-plugged there".into(),
            })?;
        release(
            &port,
            &format!("{what} (root port 00:{port_slot:02x}.0)"),
            timeout,
        )?;
        lock(&self.serve).remove(served);
        lock(&device).shut_down();
        lock(&self.plugged).retain(|p| !Arc::ptr_eq(&p.device, &device));
        // The last reference: the image file or tap descriptor and the eventfds close (KVM
        // drops the irqfds).
        drop(device);
        tracing::info!(device = %what, slot = port_slot, "virtio-pci: hot-unplugged; root port free");
        Ok(())
    }

    /// The root port slots of the devices plugged now.
    pub fn plugged(&self) -> Vec<u8> {
        lock(&self.plugged).iter().map(|p| p.port_slot).collect()
    }
}

#[cfg(test)]
mod tests;
