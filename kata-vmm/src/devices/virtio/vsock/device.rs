//! The virtio-vsock device: RX, TX and event queues, the guest's CID in the configuration
//! space, and the pump between the queues and the [`Muxer`].

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::packet;
use super::unix::Muxer;
use super::VIRTIO_ID_VSOCK;
use crate::devices::virtio::chain::read_chain;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};
use crate::event_loop::EventHandler;
use crate::memory::GuestMemory;

/// The queue size of every queue.
const QUEUE_SIZE: u16 = 256;
/// Queue indices.
const RXQ: usize = 0;
const TXQ: usize = 1;
/// The most descriptors of one packet's chain.
const MAX_SEGMENTS: usize = 32;
/// How often timeouts are checked.
const TIMER_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// How the vsock device is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (3 or more; `[hypervisor.*]` guests use 3).
    pub guest_cid: u64,
    /// The host's unix socket (must not exist; removed when the device is dropped).
    pub uds_path: PathBuf,
}

#[derive(Debug)]
struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

/// A virtio-vsock device with the hybrid unix-socket backend.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    /// Signalled when the driver notifies a queue (the ioeventfd KVM writes).
    notify: EventFd,
    /// Ticks while anything waits on a timeout (a CONNECT line, the guest's answer).
    timer: TimerFd,
}

impl Vsock {
    /// Checks the CID and binds the unix socket, before the VM starts.
    pub fn new(config: &VsockConfig) -> Result<Vsock> {
        let device = format!("virtio-vsock {}", config.uds_path.display());
        if config.guest_cid < 3 || config.guest_cid >= u64::from(u32::MAX) {
            return Err(Error::Device {
                device,
                reason: format!(
                    "guest CID {} is reserved: use 3 or more, below 2^32 - 1",
                    config.guest_cid
                ),
            });
        }
        let io_err = |what: &str| {
            let device = device.clone();
            let what = what.to_string();
            move |source| Error::DeviceIo {
                device,
                what,
                source,
            }
        };
        let notify =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("creating the notify eventfd"))?;
        let mut timer = TimerFd::new().map_err(|e| io_err("creating the timer")(e.into()))?;
        timer
            .reset(TIMER_TICK, Some(TIMER_TICK))
            .map_err(|e| io_err("arming the timer")(e.into()))?;
        Ok(Vsock {
            guest_cid: config.guest_cid,
            muxer: Muxer::new(&config.uds_path, config.guest_cid)?,
            active: None,
            notify,
            timer,
        })
    }

    /// The eventfd a queue notification signals (to register as the window's ioeventfd).
    pub fn notify_evt(&self) -> &EventFd {
        &self.notify
    }

    /// The host's unix socket.
    pub fn uds_path(&self) -> &std::path::Path {
        self.muxer.path()
    }

    /// Moves everything that can move: new clients and their CONNECT lines, the guest's TX
    /// packets to the clients, then packets for the guest into its RX buffers. Raises the
    /// interrupt if a used ring changed. Returns whether anything was done for the guest.
    pub fn process(&mut self, now: Instant) -> bool {
        self.muxer.poll_host(now);
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let tx = process_tx(active, &mut self.muxer);
        let rx = process_rx(active, &mut self.muxer, now);
        if tx || rx {
            active.interrupt.signal_used_queue();
        }
        tx || rx
    }
}

/// Takes every TX chain: a valid packet goes to the muxer, a malformed one is dropped.
fn process_tx(active: &mut Active, muxer: &mut Muxer) -> bool {
    let mem = &active.mem;
    let queue = &mut active.queues[TXQ];
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        match read_chain(mem, chain, MAX_SEGMENTS).and_then(|s| packet::read_tx(mem, &s)) {
            Ok(pkt) => muxer.send_pkt(pkt),
            Err(e) => tracing::warn!(error = %e, "vsock: dropping a malformed TX packet"),
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            tracing::warn!(error = %e, "vsock: cannot return a TX buffer");
        }
        used = true;
    }
    used
}

/// Fills RX buffers while the muxer has packets for the guest.
fn process_rx(active: &mut Active, muxer: &mut Muxer, now: Instant) -> bool {
    let mem = &active.mem;
    let queue = &mut active.queues[RXQ];
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let segments = read_chain(mem, chain, MAX_SEGMENTS);
        let len = match segments.and_then(|s| packet::rx_capacity(&s).map(|c| (s, c))) {
            Ok((segments, capacity)) => match muxer.recv_pkt(capacity, now) {
                Some(pkt) => match packet::write_rx(mem, &segments, &pkt) {
                    Ok(len) => len,
                    Err(e) => {
                        tracing::warn!(error = %e, "vsock: cannot write an RX packet: dropped");
                        0
                    }
                },
                None => {
                    // Nothing to send: the buffer stays with the device for later.
                    queue.go_to_previous_position();
                    break;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "vsock: dropping a malformed RX buffer");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            tracing::warn!(error = %e, "vsock: cannot return an RX buffer");
        }
        used = true;
    }
    used
}

/// The event queue's index.
const EVQ: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest drops every connection.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Puts one `struct virtio_vsock_event` (its id: a transport reset) into the guest's next
/// event buffer; false if the guest gave none (or a malformed one, returned empty).
fn send_transport_reset(active: &mut Active) -> bool {
    let mem = &active.mem;
    let queue = &mut active.queues[EVQ];
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        return false;
    };
    let head = chain.head_index();
    let event = EVENT_TRANSPORT_RESET.to_le_bytes();
    let written = match read_chain(mem, chain, MAX_SEGMENTS) {
        Ok(segments) => segments
            .iter()
            .find(|s| s.write_only && s.len >= event.len() as u32)
            .and_then(|s| vm_memory::Bytes::write_slice(mem, &event, s.addr).ok())
            .map_or(0, |()| event.len() as u32),
        Err(e) => {
            tracing::warn!(error = %e, "vsock: dropping a malformed event buffer");
            0
        }
    };
    if let Err(e) = queue.add_used(mem, head, written) {
        tracing::warn!(error = %e, "vsock: cannot return an event buffer");
    }
    written != 0
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        _acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError {
                device: "virtio-vsock",
                reason: format!("3 queues are needed, {} were given", queues.len()),
            });
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process(Instant::now());
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        Some(
            self.active
                .as_ref()
                .map(|a| super::super::snapshot_positions(&a.queues))
                .unwrap_or_default(),
        )
    }

    fn resumed(&mut self) {
        // A restored VM's host side starts with no connection: the guest drops the ones it
        // had (the snapshot's) on a transport reset (virtio 1.2, 5.10.6.7).
        if let Some(active) = self.active.as_mut() {
            if send_transport_reset(active) {
                active.interrupt.signal_used_queue();
            } else {
                tracing::warn!("vsock: no event buffer for the guest: transport reset not sent");
            }
        }
    }

    fn watched(&self) -> Vec<(RawFd, u32)> {
        EventHandler::watched(self)
    }

    fn handle_event(&mut self, token: u32) {
        EventHandler::handle(self, token);
    }
}

/// What woke the device.
mod token {
    pub const NOTIFY: u32 = 0;
    pub const SOCKETS: u32 = 1;
    pub const TIMER: u32 = 2;
}

impl EventHandler for Vsock {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![
            (self.notify.as_raw_fd(), token::NOTIFY),
            (self.muxer.epoll_fd(), token::SOCKETS),
            (self.timer.as_raw_fd(), token::TIMER),
        ]
    }

    fn handle(&mut self, token: u32) {
        match token {
            token::NOTIFY => {
                let _ = self.notify.read();
            }
            token::SOCKETS => self.muxer.drain_events(),
            token::TIMER => {
                let _ = self.timer.wait();
            }
            _ => return,
        }
        self.process(Instant::now());
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
