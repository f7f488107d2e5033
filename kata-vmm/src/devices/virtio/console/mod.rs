//! virtio-console: the guest's `hvc0` (`console=hvc0`), its output kept in a bounded console
//! sink — the same ring the serial port writes, a second one — instead of one VM exit per byte
//! through the 16550A.
//!
//! One port, no multiport and no size feature: queue 0 (receive) takes the driver's buffers
//! for input, which the VMM never fills (the console is output only, as the runtime reads it);
//! queue 1 (transmit) carries what the guest prints. Each transmit chain is checked at the edge
//! ([`crate::devices::virtio::chain::read_chain`]: bounded, inside guest memory); a chain with a
//! device-writable descriptor, a loop or too many descriptors is returned with nothing taken,
//! and at most [`MAX_CHAIN_BYTES`] of one chain are kept (the sink keeps the last bytes only),
//! so the guest cannot make the VMM hold more than the sink's capacity.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::ConsoleSink;
use crate::devices::virtio::chain::read_chain;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};
use crate::event_loop::EventHandler;
use crate::memory::GuestMemory;

/// The virtio device id of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// The receive queue (host to guest: never filled).
pub const RECEIVE_QUEUE: usize = 0;
/// The transmit queue (guest to host: the console output).
pub const TRANSMIT_QUEUE: usize = 1;
/// The most descriptors of one transmit chain.
pub const MAX_SEGMENTS: usize = 64;
/// The most bytes taken from one transmit chain; the rest is dropped (and counted by the sink).
pub const MAX_CHAIN_BYTES: usize = 64 << 10;
const QUEUE_SIZE: u16 = 256;
/// `struct virtio_console_config`: cols, rows (le16), max_nr_ports, emerg_wr (le32); only
/// read when a feature the device does not offer is acked, all zero.
const CONFIG_LEN: usize = 12;

struct Active {
    mem: GuestMemory,
    transmit: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio console writing the guest's output into a [`ConsoleSink`].
pub struct Console {
    sink: ConsoleSink,
    active: Option<Active>,
    /// Held, never read: the driver's receive buffers wait in it.
    receive: Option<Queue>,
    notify: EventFd,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console writing into `sink`.
    pub fn new(sink: ConsoleSink) -> Result<Console> {
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
            device: "virtio-console".into(),
            what: "creating the notify eventfd".into(),
            source,
        })?;
        Ok(Console {
            sink,
            active: None,
            receive: None,
            notify,
        })
    }

    /// The eventfd a queue notification signals (to register as the window's ioeventfd).
    pub fn notify_evt(&self) -> &EventFd {
        &self.notify
    }

    /// Takes every chain off the transmit queue into the sink; returns how many.
    pub fn process_transmit(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mem = active.mem.clone();
        let mut done = 0;
        while let Some(chain) = active.transmit.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            match read_chain(&mem, chain, MAX_SEGMENTS) {
                Ok(segments) if segments.iter().all(|s| !s.write_only) => {
                    let mut left = MAX_CHAIN_BYTES;
                    for s in segments {
                        let n = (s.len as usize).min(left);
                        let mut buf = vec![0u8; n];
                        if mem.read_slice(&mut buf, s.addr).is_err() {
                            tracing::warn!(
                                "virtio-console: a transmit buffer outside guest memory"
                            );
                            break;
                        }
                        let _ = self.sink.write_all(&buf);
                        left -= n;
                        if left == 0 {
                            break;
                        }
                    }
                }
                Ok(_) => tracing::warn!(
                    "virtio-console: dropping a transmit chain with a device-writable buffer"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-console: dropping a malformed transmit chain")
                }
            }
            // Nothing is written into a transmit buffer: the used length is 0.
            if let Err(e) = active.transmit.add_used(&mem, head, 0) {
                tracing::warn!(error = %e, "virtio-console: cannot return a buffer to the guest");
            }
            done += 1;
        }
        if done > 0 && active.transmit.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        done
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn name(&self) -> &'static str {
        "virtio-console"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[0u8; CONFIG_LEN], offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        _acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        let [receive, transmit]: [Queue; 2] =
            queues.try_into().map_err(|q: Vec<Queue>| ActivateError {
                device: "virtio-console",
                reason: format!(
                    "a receive and a transmit queue are needed, {} given",
                    q.len()
                ),
            })?;
        self.receive = Some(receive);
        self.active = Some(Active {
            mem,
            transmit,
            interrupt,
        });
        // What the guest queued before the driver said DRIVER_OK.
        self.process_transmit();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if usize::from(index) == TRANSMIT_QUEUE {
            self.process_transmit();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.receive = None;
    }

    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        // Queue order: receive, transmit.
        Some(match (&self.receive, &self.active) {
            (Some(rx), Some(a)) => super::snapshot_positions([rx, &a.transmit]),
            _ => Vec::new(),
        })
    }

    fn watched(&self) -> Vec<(RawFd, u32)> {
        EventHandler::watched(self)
    }

    fn handle_event(&mut self, token: u32) {
        EventHandler::handle(self, token);
    }
}

impl EventHandler for Console {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![(self.notify.as_raw_fd(), 0)]
    }

    fn handle(&mut self, _token: u32) {
        let _ = self.notify.read();
        self.process_transmit();
    }
}

#[cfg(test)]
mod tests;
