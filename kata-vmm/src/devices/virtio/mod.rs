//! Virtio devices on the virtio-mmio transport ([`mmio`]): [`block`], [`net`], [`vsock`],
//! [`fs`] (inline virtio-fs), [`mem`] (virtio-mem memory hot-plug) and [`balloon`].
//!
//! A device implements [`VirtioDevice`]: its id, features, configuration space and queues; the
//! transport negotiates features and sets the queues up, then activates it. Queues are
//! virtio-queue's split queues; every chain the guest hands a device goes through
//! [`chain::read_chain`], which turns it into checked [`chain::Segment`]s or a
//! [`chain::ChainError`] — a device never follows a guest pointer it has not checked.

pub mod balloon;
pub mod block;
pub mod chain;
pub mod console;
pub mod fs;
pub mod mem;
pub mod mmio;
pub mod net;
pub mod pci;
pub(crate) mod transport;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;

use crate::devices::EventFdTrigger;
use crate::memory::GuestMemory;

/// Feature bit: the device conforms to virtio 1.x (required by this transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Bit of the interrupt status register: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Bit of the interrupt status register: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Delivers a virtio interrupt by its kind (the [`VIRTIO_MMIO_INT_VRING`] or
/// [`VIRTIO_MMIO_INT_CONFIG`] bit) instead of the one line: the virtio-pci transport's MSI-X
/// vectors ([`pci`]).
pub type VectorSignal = Box<dyn Fn(u32) + Send + Sync>;

/// A device's interrupt: the status register the driver reads and acknowledges, and the line
/// (an eventfd, registered as an irqfd with KVM) or, on virtio-pci, the MSI-X vectors.
pub struct Interrupt {
    status: AtomicU32,
    line: EventFdTrigger,
    /// The MSI-X vectors (virtio-pci): raised instead of `line`.
    vectors: Option<VectorSignal>,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status)
            .field("line", &self.line)
            .field("vectors", &self.vectors.is_some())
            .finish()
    }
}

impl Interrupt {
    /// An interrupt raising `line`.
    pub fn new(line: EventFdTrigger) -> Arc<Self> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            line,
            vectors: None,
        })
    }

    /// An interrupt whose kinds `vectors` delivers (virtio-pci's MSI-X); `line` is kept for
    /// [`Interrupt::line`] but not raised.
    pub fn with_vectors(line: EventFdTrigger, vectors: VectorSignal) -> Arc<Self> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            line,
            vectors: Some(vectors),
        })
    }

    /// Tells the driver that a used ring changed.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Some(vectors) = &self.vectors {
            vectors(bit);
            return;
        }
        if let Err(e) = self.line.trigger() {
            tracing::warn!(error = %e, "cannot raise a virtio interrupt");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledges the bits of `ack`.
    pub fn acknowledge(&self, ack: u32) {
        self.status.fetch_and(!ack, Ordering::SeqCst);
    }

    /// The line (to register as an irqfd, or to read in tests).
    pub fn line(&self) -> &EventFdTrigger {
        &self.line
    }
}

/// Why a device refused to be activated (the transport then asks the driver for a reset).
#[derive(Debug, thiserror::Error)]
#[error("activating virtio device {device}: {reason}")]
pub struct ActivateError {
    /// The device.
    pub device: &'static str,
    /// Why.
    pub reason: String,
}

/// What a virtio device is to the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (2 block, 19 vsock).
    fn device_type(&self) -> u32;
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;
    /// The largest size of each of its queues (the number of queues is its length).
    fn queue_max_sizes(&self) -> &[u16];
    /// The features it offers ([`VIRTIO_F_VERSION_1`] included).
    fn avail_features(&self) -> u64;
    /// Reads its configuration space at `offset` into `data` (bytes past the end read 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to its configuration space (ignored by default: read-only).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the negotiated features and the driver's queues.
    fn activate(
        &mut self,
        mem: GuestMemory,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (an ioeventfd in a running VM).
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: it drops its queues and may be activated again.
    fn reset(&mut self);
    /// The descriptors the event loop watches for it (its queue-notify eventfd, host
    /// sockets, timers), each with a token of its choosing; none by default.
    fn watched(&self) -> Vec<(std::os::fd::RawFd, u32)> {
        Vec::new()
    }
    /// One of [`VirtioDevice::watched`]'s descriptors is readable.
    fn handle_event(&mut self, _token: u32) {}
    /// For a snapshot ([`crate::snapshot`]): where the running device is in each of its
    /// queues, `(next_avail, next_used)` in queue order (empty when it is not activated);
    /// `None` (the default): this device cannot be saved, and a snapshot refuses the VM.
    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        None
    }
    /// For a snapshot: why this device cannot be saved in its present state (`None`: it can).
    fn snapshot_refusal(&self) -> Option<String> {
        None
    }
    /// The VM was restored from a snapshot and is about to run again: the device tells the
    /// guest what changed under it (vsock: the host's connections are gone). Nothing by
    /// default.
    fn resumed(&mut self) {}
}

/// The `(next_avail, next_used)` of each of `queues`, for [`VirtioDevice::queue_positions`].
pub(crate) fn snapshot_positions<'a>(
    queues: impl IntoIterator<Item = &'a Queue>,
) -> Vec<(u16, u16)> {
    use virtio_queue::QueueT;
    queues
        .into_iter()
        .map(|q| (q.next_avail(), q.next_used()))
        .collect()
}

/// Copies `config` (a device's configuration space) at `offset` into `data`; out of range
/// bytes read 0.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset < config.len() {
        let n = data.len().min(config.len() - offset);
        data[..n].copy_from_slice(&config[offset..offset + n]);
    }
}

#[cfg(test)]
pub(crate) mod test_utils;
