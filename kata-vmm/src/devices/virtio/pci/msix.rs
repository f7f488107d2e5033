//! The MSI-X vectors of a virtio-pci function: the table and pending bit array the guest
//! programs ([`MsixCap`], the same emulation as a passed-through function's), the vector the
//! driver gave the configuration change and each queue, and one eventfd per vector, each the
//! irqfd of a GSI of the VM's [`GsiRouter`] (the routing VFIO uses: no second table).
//!
//! The routes follow the table whenever the guest writes it (a vCPU thread, which may set KVM's
//! routing); an interrupt only writes a vector's eventfd (the device thread, which may not). A
//! masked vector's interrupt sets its pending bit and is delivered when the guest unmasks it.
//! Without MSI-X enabled nothing is delivered: the function has no INTx pin (the MP table,
//! written at boot, names none for a hot-plugged function), only the ISR status the driver
//! can poll.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::vfio::irq::GsiRouter;
use crate::devices::vfio::msix::{MsixCap, MsixState};
use crate::devices::virtio::VIRTIO_MMIO_INT_CONFIG;

/// The vector number meaning "no vector" (virtio 1.x 4.1.4.3).
pub const NO_VECTOR: u16 = 0xffff;

/// Where a function's vectors go: a GSI of `router` per vector, and the eventfd registered as
/// that GSI's irqfd. Dropped (the device unplugged, or a plug failing), it closes the eventfds
/// and gives the GSIs back ([`GsiRouter::release`]).
#[derive(Debug)]
pub struct MsixWiring {
    /// The VM's routing table.
    pub router: Arc<GsiRouter>,
    /// One GSI per vector.
    pub gsis: Vec<u32>,
    /// One eventfd per vector (the GSI's irqfd in a running VM).
    pub fds: Vec<EventFd>,
}

impl Drop for MsixWiring {
    /// Closes the eventfds (KVM drops their irqfds) and gives the GSIs back to the router.
    fn drop(&mut self) {
        self.fds.clear();
        if let Err(e) = self.router.release(&self.gsis) {
            tracing::warn!(gsis = ?self.gsis, error = %e, "virtio-pci: releasing MSI-X GSIs");
        }
    }
}

/// The function's MSI-X state (shared by the transport and its [`crate::devices::virtio::Interrupt`]).
#[derive(Debug)]
pub struct Vectors {
    pub(super) cap: MsixCap,
    wiring: MsixWiring,
    pending: Vec<bool>,
    /// The driver's vector for configuration changes.
    pub(super) config_vector: u16,
    /// The driver's vector per queue.
    pub(super) queue_vectors: Vec<u16>,
    /// The state last carried out (routes set, masks).
    applied: MsixState,
}

impl Vectors {
    /// The vectors of a function with `queues` queues: `cap` (the capability and table),
    /// `wiring` one GSI and eventfd per vector of `cap`.
    pub(super) fn new(cap: MsixCap, wiring: MsixWiring, queues: usize) -> Self {
        let n = cap.vectors();
        Vectors {
            cap,
            wiring,
            pending: vec![false; n],
            config_vector: NO_VECTOR,
            queue_vectors: vec![NO_VECTOR; queues],
            applied: MsixState::default(),
        }
    }

    /// `v` if the table has it, else [`NO_VECTOR`] (what the driver reads back: a refusal).
    pub(super) fn checked(&self, v: u16) -> u16 {
        if usize::from(v) < self.cap.vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Whether vector `v`'s pending bit is set.
    pub(super) fn pending(&self, v: usize) -> bool {
        self.pending.get(v).copied().unwrap_or(false)
    }

    /// Forgets the driver's vectors and pending interrupts (a device reset).
    pub(super) fn reset(&mut self) {
        self.config_vector = NO_VECTOR;
        self.queue_vectors.fill(NO_VECTOR);
        self.pending.fill(false);
    }

    /// Carries out what the guest's last write to the capability or the table changed: the
    /// routes, and the interrupts held by a mask now lifted.
    pub(super) fn apply(&mut self) {
        let new = self.cap.state();
        if new == self.applied {
            return;
        }
        if new.routes != self.applied.routes || new.enabled != self.applied.enabled {
            let routes: Vec<_> = self
                .wiring
                .gsis
                .iter()
                .enumerate()
                .map(|(i, &gsi)| (gsi, new.routes.get(i).copied().flatten()))
                .collect();
            if let Err(e) = self.wiring.router.set(&routes) {
                tracing::warn!(error = %e, "virtio-pci: KVM_SET_GSI_ROUTING for MSI-X failed");
            }
        }
        self.applied = new;
        if !self.applied.enabled {
            return;
        }
        for v in 0..self.pending.len() {
            if self.pending[v] && !self.applied.masked.get(v).copied().unwrap_or(true) {
                self.pending[v] = false;
                self.write(v);
            }
        }
    }

    /// Raises the interrupt of kind `bit` (a used ring: every queue's vector, each once; a
    /// configuration change: its vector).
    pub(super) fn signal(&mut self, bit: u32) {
        let mut vectors: Vec<u16> = if bit & VIRTIO_MMIO_INT_CONFIG != 0 {
            vec![self.config_vector]
        } else {
            self.queue_vectors.clone()
        };
        vectors.sort_unstable();
        vectors.dedup();
        for v in vectors {
            self.fire(usize::from(v));
        }
    }

    fn fire(&mut self, v: usize) {
        if !self.applied.enabled || v >= self.pending.len() {
            return;
        }
        if self.applied.masked.get(v).copied().unwrap_or(true) {
            self.pending[v] = true;
            return;
        }
        self.write(v);
    }

    fn write(&self, v: usize) {
        if let Some(fd) = self.wiring.fds.get(v) {
            if let Err(e) = fd.write(1) {
                tracing::warn!(vector = v, error = %e, "virtio-pci: signalling an MSI-X vector");
            }
        }
    }
}
