//! The virtio-net device: its configuration space (the MAC), its receive queue fed from the
//! tap and its transmit queue drained into it.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::frame::{self, MAX_SEGMENTS};
use super::{MAX_FRAME_LEN, NET_HDR_LEN, VIRTIO_ID_NET};
use crate::devices::virtio::chain::read_chain;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};
use crate::event_loop::EventHandler;
use crate::memory::GuestMemory;

/// Feature: the configuration space holds the MAC.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The queue size of both queues.
const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// `TUNSETVNETHDRSZ` (`_IOW('T', 216, int)`).
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// How a NIC is attached: an open tap queue and the guest's MAC.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A name for logs and errors (the tap's name).
    pub name: String,
    /// The tap's open queue (`/dev/net/tun` attached with `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR`); shared with its owner, which keeps the tap alive.
    pub tap: Arc<OwnedFd>,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

impl PartialEq for NetConfig {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.mac == other.mac && Arc::ptr_eq(&self.tap, &other.tap)
    }
}

impl Eq for NetConfig {}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// What a running device holds.
#[derive(Debug)]
struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
}

/// Counters (for tests and logs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Frames from the tap dropped (no room in the guest's buffer, or a malformed chain).
    pub rx_dropped: u64,
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Chains from the guest dropped (malformed, or the tap refused the frame).
    pub tx_dropped: u64,
}

/// A virtio-net device over an open tap queue.
#[derive(Debug)]
pub struct Net {
    name: String,
    tap: File,
    /// The tap, edge-triggered: readable once per arrival, so a guest with no receive
    /// buffers does not make the event loop spin.
    tap_epoll: Epoll,
    config: Vec<u8>,
    active: Option<Active>,
    /// A frame read from the tap that waits for a receive buffer.
    pending: Option<Vec<u8>>,
    buf: Vec<u8>,
    counters: NetCounters,
    /// Signalled when the driver notifies a queue (the ioeventfd KVM writes).
    notify: EventFd,
}

impl Net {
    /// The device on `config`'s tap: its vnet header is set to the 12 bytes of virtio 1.x; a
    /// descriptor that is not a tap queue is an error naming it, before the VM starts.
    pub fn new(config: &NetConfig) -> Result<Net> {
        let device = format!("virtio-net {}", config.name);
        let size: libc::c_int = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `size` is and which outlives the call;
        // the descriptor is open (owned by `config.tap`).
        let rc = unsafe { libc::ioctl(config.tap.as_raw_fd(), TUNSETVNETHDRSZ as _, &size) };
        if rc != 0 {
            return Err(Error::DeviceIo {
                device,
                what: "setting the tap's vnet header size (TUNSETVNETHDRSZ): is the descriptor \
                       a tap queue opened with IFF_VNET_HDR?"
                    .into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Net::over(&config.name, &config.tap, config.mac)
    }

    /// The device over any packet descriptor (a tap queue whose header size is set; a
    /// datagram socket in tests).
    pub(crate) fn over(name: &str, fd: &OwnedFd, mac: [u8; 6]) -> Result<Net> {
        let device = format!("virtio-net {name}");
        let io = |what: &str| {
            let device = device.clone();
            let what = what.to_string();
            move |source| Error::DeviceIo {
                device,
                what,
                source,
            }
        };
        let tap = File::from(
            fd.try_clone()
                .map_err(io("duplicating the tap descriptor"))?,
        );
        // SAFETY: F_GETFL/F_SETFL on a descriptor `tap` owns; no memory is passed.
        let rc = unsafe {
            let flags = libc::fcntl(tap.as_raw_fd(), libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(tap.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(io("making the tap non-blocking")(
                std::io::Error::last_os_error(),
            ));
        }
        let tap_epoll = Epoll::new().map_err(io("creating the tap's epoll"))?;
        tap_epoll
            .ctl(
                ControlOperation::Add,
                tap.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0),
            )
            .map_err(io("watching the tap"))?;
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating the notify eventfd"))?;
        // struct virtio_net_config: mac[6], status (not offered: VIRTIO_NET_F_STATUS).
        let mut config = vec![0u8; 8];
        config[..6].copy_from_slice(&mac);
        Ok(Net {
            name: device,
            tap,
            tap_epoll,
            config,
            active: None,
            pending: None,
            buf: vec![0u8; MAX_FRAME_LEN],
            counters: NetCounters::default(),
            notify,
        })
    }

    /// The eventfd a queue notification signals (to register as the window's ioeventfd).
    pub fn notify_evt(&self) -> &EventFd {
        &self.notify
    }

    /// The frame counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Frames from the tap into the guest's receive buffers while both last; a frame with no
    /// buffer waits (the driver's next notification resumes). Returns the frames delivered.
    pub fn process_rx(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mem = active.mem.clone();
        let mut done = 0;
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => match self.tap.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => self.buf[..n].to_vec(),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(device = %self.name, error = %e, "reading the tap");
                        break;
                    }
                },
            };
            if frame.len() < NET_HDR_LEN {
                self.counters.rx_dropped += 1;
                continue;
            }
            let Some(chain) = active.rx.pop_descriptor_chain(&mem) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let written = read_chain(&mem, chain, MAX_SEGMENTS).and_then(|segments| {
                let room = frame::rx_buffer(&segments)?;
                if room < frame.len() {
                    return Err(crate::devices::virtio::chain::ChainError::Malformed(
                        "receive buffer smaller than the frame",
                    ));
                }
                let mut frame = frame;
                // num_buffers: one buffer per frame (VIRTIO_NET_F_MRG_RXBUF is not offered).
                frame[10..12].copy_from_slice(&1u16.to_le_bytes());
                frame::write_rx(&mem, &segments, &frame)
            });
            let used = match written {
                Ok(n) => {
                    self.counters.rx_frames += 1;
                    done += 1;
                    n
                }
                Err(e) => {
                    tracing::warn!(device = %self.name, error = %e, "dropping a frame for the guest");
                    self.counters.rx_dropped += 1;
                    0
                }
            };
            if let Err(e) = active.rx.add_used(&mem, head, used) {
                tracing::warn!(device = %self.name, error = %e, "cannot return a receive buffer");
            }
        }
        if done > 0 && active.rx.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        done
    }

    /// Every frame the guest queued, to the tap; a malformed chain or a frame the tap refuses
    /// is dropped (as a full NIC queue drops). Returns the chains taken off the queue.
    pub fn process_tx(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mem = active.mem.clone();
        let mut done = 0;
        while let Some(chain) = active.tx.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let sent = read_chain(&mem, chain, MAX_SEGMENTS)
                .and_then(|segments| frame::tx_frame(&mem, &segments))
                .map_err(|e| e.to_string())
                .and_then(|f| self.tap.write(&f).map_err(|e| format!("tap: {e}")));
            match sent {
                Ok(_) => self.counters.tx_frames += 1,
                Err(e) => {
                    tracing::debug!(device = %self.name, error = %e, "dropping a frame from the guest");
                    self.counters.tx_dropped += 1;
                }
            }
            if let Err(e) = active.tx.add_used(&mem, head, 0) {
                tracing::warn!(device = %self.name, error = %e, "cannot return a sent frame");
            }
            done += 1;
        }
        if done > 0 && active.tx.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        done
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        _acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        let [rx, tx]: [Queue; 2] = queues.try_into().map_err(|q: Vec<Queue>| ActivateError {
            device: "virtio-net",
            reason: format!(
                "a receive and a transmit queue are needed, {} given",
                q.len()
            ),
        })?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        // Frames that arrived before the driver was ready.
        self.process_rx();
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process_tx();
        self.process_rx();
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
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
    pub const TAP: u32 = 1;
}

impl EventHandler for Net {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![
            (self.notify.as_raw_fd(), token::NOTIFY),
            (self.tap_epoll.as_raw_fd(), token::TAP),
        ]
    }

    fn handle(&mut self, token: u32) {
        match token {
            token::NOTIFY => {
                let _ = self.notify.read();
                self.process_tx();
                self.process_rx();
            }
            token::TAP => {
                // Consumes the edge; the tap is then read until it would block.
                let mut events = [EpollEvent::default(); 4];
                let _ = self.tap_epoll.wait(0, &mut events);
                self.process_rx();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
