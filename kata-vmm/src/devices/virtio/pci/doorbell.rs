//! What the PCI bus holds of a virtio-pci function served on the device thread: a
//! [`Doorbell`] in front of the [`VirtioPci`]. The device thread holds the function's lock for
//! a whole run of its queues (up to a queue's worth of requests, an `fdatasync` among them),
//! and a vCPU's MMIO exit holds the bus while it waits for the function: one disk's batch
//! would stall every vCPU's device exits. A queue notification needs nothing of the
//! function's state but where its notify structure is, so the doorbell writes the device's
//! notify eventfd itself, without the function's lock; everything else goes to the function.
//! The notify structure's address is read back from the function after every configuration
//! write (the BAR and memory decoding are only changed there), under the doorbell's own lock.

use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use super::{bar, VirtioPci};
use crate::devices::pci::PciDevice;

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`VirtioPci`] whose queue notifications do not wait for it (see the module
/// documentation).
pub struct Doorbell {
    function: Arc<Mutex<VirtioPci>>,
    notify: EventFd,
    queues: u64,
    /// The notify structure's guest address while memory decoding is on.
    window: Option<u64>,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("queues", &self.queues)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Doorbell {
    /// The doorbell of `function` with `queues` queues, ringing `notify` (the eventfd the
    /// device thread watches for the device).
    pub fn new(function: Arc<Mutex<VirtioPci>>, notify: EventFd, queues: usize) -> Self {
        let window = lock(&function).notify_window();
        Doorbell {
            function,
            notify,
            queues: queues as u64,
            window,
        }
    }
}

impl PciDevice for Doorbell {
    fn config_read(&mut self, reg: usize) -> u32 {
        lock(&self.function).config_read(reg)
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let mut f = lock(&self.function);
        f.config_write(offset, data);
        self.window = f.notify_window();
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        lock(&self.function).mmio_read(addr, data)
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        let off = self.window.and_then(|w| addr.checked_sub(w));
        if let Some(off) = off.filter(|o| o.saturating_add(data.len() as u64) <= bar::REGION) {
            // A notification: a queue past the device's is ignored, as the function does.
            if off / u64::from(bar::NOTIFY_MULTIPLIER) < self.queues {
                if let Err(e) = self.notify.write(1) {
                    tracing::warn!(error = %e, "virtio-pci: waking the device");
                }
            }
            return true;
        }
        lock(&self.function).mmio_write(addr, data)
    }
}
