//! virtio-mem: memory hot-plug in blocks of a region above guest RAM, on virtio-mmio.
//!
//! The region is part of the guest's memfd (so unplugged pages cost the host nothing) and
//! registered with KVM from the start; the e820 map does not show it, so the guest only uses
//! what its `virtio_mem` driver plugs. The runtime sets the requested size through a
//! [`MemHandle`] (a config-change interrupt tells the driver), the driver sends PLUG/UNPLUG
//! requests on the one queue, and unplugged blocks go back to the host (`fallocate`
//! `PUNCH_HOLE` on the memfd). Every request is checked ([`state::BlockMap::range`]): a bad one
//! is answered `VIRTIO_MEM_RESP_ERROR`, never trusted. Unplugged blocks stay mapped (the device
//! does not offer `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`): a guest touching them reads zeros.

pub mod request;
pub mod state;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::chain::read_chain;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};
use crate::event_loop::EventHandler;
use crate::memory::GuestMemory;
use request::{parse, write_response, Request};
use state::{BlockMap, BlockState};

/// The virtio device id of a memory device.
pub const VIRTIO_ID_MEM: u32 = 24;
/// The block size: 2 MiB, the guest's pageblock (Linux's sub-block mode plugs 2 MiB pieces of
/// its 128 MiB memory blocks).
pub const BLOCK_SIZE: u64 = 2 << 20;
/// The region's alignment and size unit: Linux's x86-64 memory block (128 MiB), so every
/// memory block of the region can be added.
pub const REGION_ALIGN: u64 = 128 << 20;
const QUEUE_SIZE: u16 = 128;
/// A request chain is one request and one response buffer; a few more are read so that a
/// driver splitting them still gets an error answer, a longer chain is dropped.
const MAX_SEGMENTS: usize = 4;
/// `struct virtio_mem_config` is 56 bytes.
const CONFIG_LEN: usize = 56;

/// Where the hot-plug region is and what backs it.
#[derive(Debug)]
pub struct MemConfig {
    /// The region's guest physical address ([`REGION_ALIGN`]-aligned).
    pub addr: u64,
    /// Its size ([`REGION_ALIGN`] multiple).
    pub size: u64,
    /// The memfd holding it, and the region's offset in it: unplugged blocks are punched out.
    /// `None` keeps unplugged pages (tests).
    pub backing: Option<(File, u64)>,
}

/// What the device and its [`MemHandle`]s share.
#[derive(Debug)]
struct Shared {
    map: BlockMap,
    region_addr: u64,
    region_size: u64,
    requested: u64,
    /// Set once the driver activated the device: config changes are signalled on it.
    interrupt: Option<Arc<Interrupt>>,
}

#[derive(Debug)]
struct Common {
    shared: Mutex<Shared>,
    /// Signalled whenever the plugged size changes.
    changed: Condvar,
}

impl Common {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The runtime's side of a virtio-mem device: sets the size the guest is asked to plug and
/// reads (or waits for) what it plugged. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemHandle(Arc<Common>);

impl MemHandle {
    /// The region's size in bytes: the most that can be plugged.
    pub fn region_size(&self) -> u64 {
        self.0.lock().region_size
    }

    /// The size the guest is asked to plug, in bytes.
    pub fn requested_size(&self) -> u64 {
        self.0.lock().requested
    }

    /// The size the guest has plugged, in bytes.
    pub fn plugged_size(&self) -> u64 {
        self.0.lock().map.plugged_size()
    }

    /// Asks the guest to plug (or unplug down to) `bytes`, a multiple of [`BLOCK_SIZE`] within
    /// the region; raises the config-change interrupt if the driver is up.
    pub fn set_requested_size(&self, bytes: u64) -> Result<()> {
        let mut s = self.0.lock();
        if !bytes.is_multiple_of(BLOCK_SIZE) || bytes > s.region_size {
            return Err(Error::Device {
                device: "virtio-mem".into(),
                reason: format!(
                    "cannot request {bytes:#x} bytes: a multiple of {BLOCK_SIZE:#x} up to the \
                     region's {:#x} is needed (raise default_maxmemory for a larger region)",
                    s.region_size
                ),
            });
        }
        if s.requested != bytes {
            s.requested = bytes;
            if let Some(i) = &s.interrupt {
                i.signal_config_change();
            }
        }
        Ok(())
    }

    /// Blocks until the plugged size satisfies `done`, or `timeout` passes, or it has not
    /// changed for `stall` (a guest that gave what it could: Linux retries a failed unplug only
    /// after tens of seconds); returns the plugged size then.
    pub fn wait_settled(
        &self,
        timeout: Duration,
        stall: Duration,
        done: impl Fn(u64) -> bool,
    ) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = self.plugged_size();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if done(last) || left.is_zero() {
                return last;
            }
            let now = self.wait_plugged(left.min(stall), |p| p != last || done(p));
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Blocks until the plugged size satisfies `done`, or `timeout` passes; returns the plugged
    /// size then.
    pub fn wait_plugged(&self, timeout: Duration, done: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut s = self.0.lock();
        loop {
            let plugged = s.map.plugged_size();
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return plugged;
            };
            if done(plugged) {
                return plugged;
            }
            s = self
                .0
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-mem device over one hot-plug region.
pub struct Mem {
    sync: Arc<Common>,
    backing: Option<(File, u64)>,
    active: Option<Active>,
    notify: EventFd,
}

impl std::fmt::Debug for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mem")
            .field("shared", &self.sync.lock())
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Mem {
    /// A device over `config`'s region, nothing plugged, nothing requested. Refuses a region
    /// that is not [`REGION_ALIGN`]-aligned and sized, or empty.
    pub fn new(config: MemConfig) -> Result<Mem> {
        let bad = |reason: String| Error::Device {
            device: "virtio-mem".into(),
            reason,
        };
        if config.size == 0
            || !config.size.is_multiple_of(REGION_ALIGN)
            || !config.addr.is_multiple_of(REGION_ALIGN)
        {
            return Err(bad(format!(
                "the hot-plug region {:#x}+{:#x} is not a non-empty multiple of {REGION_ALIGN:#x} \
                 at an address aligned to it",
                config.addr, config.size
            )));
        }
        config
            .addr
            .checked_add(config.size)
            .ok_or_else(|| bad("the hot-plug region wraps the address space".into()))?;
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
            device: "virtio-mem".into(),
            what: "creating the notify eventfd".into(),
            source,
        })?;
        Ok(Mem {
            sync: Arc::new(Common {
                shared: Mutex::new(Shared {
                    map: BlockMap::new(config.addr, config.size, BLOCK_SIZE),
                    region_addr: config.addr,
                    region_size: config.size,
                    requested: 0,
                    interrupt: None,
                }),
                changed: Condvar::new(),
            }),
            backing: config.backing,
            active: None,
            notify,
        })
    }

    /// The runtime's handle.
    pub fn handle(&self) -> MemHandle {
        MemHandle(self.sync.clone())
    }

    /// The eventfd a queue notification signals (to register as the window's ioeventfd).
    pub fn notify_evt(&self) -> &EventFd {
        &self.notify
    }

    /// Answers every request on the queue; returns how many chains were taken.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mem = active.mem.clone();
        let mut done = 0;
        while let Some(chain) = active.queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let parsed = read_chain(&mem, chain, MAX_SEGMENTS)
                .map_err(|e| (e, None))
                .and_then(|segments| parse(&mem, &segments));
            let used = match parsed {
                Ok(req) => {
                    let (kind, state) = answer(&self.sync, self.backing.as_ref(), req.request);
                    match write_response(&mem, req.response, kind, state) {
                        Ok(()) => request::RESP_LEN,
                        Err(e) => {
                            tracing::warn!(error = %e, "virtio-mem: cannot write a response");
                            0
                        }
                    }
                }
                Err((e, response)) => {
                    tracing::warn!(error = %e, "virtio-mem: malformed request");
                    match response
                        .map(|at| write_response(&mem, at, request::RESP_ERROR, 0).is_ok())
                    {
                        Some(true) => request::RESP_LEN,
                        _ => 0,
                    }
                }
            };
            if let Err(e) = active.queue.add_used(&mem, head, used) {
                tracing::warn!(error = %e, "virtio-mem: cannot return a buffer to the guest");
            }
            done += 1;
        }
        if done > 0 && active.queue.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        done
    }
}

/// The response type (and state, for STATE) to `req`, applying it.
fn answer(sync: &Common, backing: Option<&(File, u64)>, req: Request) -> (u16, u16) {
    use request::*;
    let mut s = sync.lock();
    let reply = match req {
        Request::Plug { addr, nb_blocks } => match s.map.range(addr, nb_blocks) {
            Err(e) => refuse("plug", e),
            Ok(blocks) if s.map.state(blocks.clone()) != BlockState::Unplugged => {
                tracing::warn!(addr, nb_blocks, "virtio-mem: plug of plugged blocks");
                (RESP_ERROR, 0)
            }
            Ok(blocks) => {
                let (_, len) = s.map.bytes(blocks.clone());
                if s.map.plugged_size() + len > s.requested {
                    (RESP_NACK, 0)
                } else {
                    s.map.set(blocks, true);
                    (RESP_ACK, 0)
                }
            }
        },
        Request::Unplug { addr, nb_blocks } => match s.map.range(addr, nb_blocks) {
            Err(e) => refuse("unplug", e),
            Ok(blocks) if s.map.state(blocks.clone()) != BlockState::Plugged => {
                tracing::warn!(addr, nb_blocks, "virtio-mem: unplug of unplugged blocks");
                (RESP_ERROR, 0)
            }
            Ok(blocks) => {
                let (addr, len) = s.map.bytes(blocks.clone());
                s.map.set(blocks, false);
                discard(backing, s.region_addr, addr, len);
                (RESP_ACK, 0)
            }
        },
        Request::UnplugAll => {
            let region = s.region_addr;
            for (addr, len) in s.map.unplug_all() {
                discard(backing, region, addr, len);
            }
            (RESP_ACK, 0)
        }
        Request::State { addr, nb_blocks } => match s.map.range(addr, nb_blocks) {
            Err(e) => refuse("state", e),
            Ok(blocks) => {
                let state = match s.map.state(blocks) {
                    BlockState::Plugged => STATE_PLUGGED,
                    BlockState::Unplugged => STATE_UNPLUGGED,
                    BlockState::Mixed => STATE_MIXED,
                };
                (RESP_ACK, state)
            }
        },
        Request::Unknown(kind) => {
            tracing::warn!(kind, "virtio-mem: unknown request type");
            (RESP_ERROR, 0)
        }
    };
    drop(s);
    sync.changed.notify_all();
    reply
}

fn refuse(what: &str, e: state::RangeError) -> (u16, u16) {
    tracing::warn!(request = what, error = %e, "virtio-mem: request refused");
    (request::RESP_ERROR, 0)
}

/// Gives `len` bytes at guest address `addr` back to the host: punches them out of the memfd
/// (the guest's mapping then reads zeros).
fn discard(backing: Option<&(File, u64)>, region_addr: u64, addr: u64, len: u64) {
    let Some((file, base)) = backing else {
        return;
    };
    let offset = base + (addr - region_addr);
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: fallocate on a descriptor this device owns, with integer arguments; it touches
    // no memory of this process (the mapping of the punched range reads zeros afterwards).
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), addr, len, "virtio-mem: cannot give unplugged memory back to the host");
    }
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }

    fn name(&self) -> &'static str {
        "virtio-mem"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = self.sync.lock();
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        // node_id 0 and padding: bytes 8..16.
        c[16..24].copy_from_slice(&s.region_addr.to_le_bytes());
        c[24..32].copy_from_slice(&s.region_size.to_le_bytes());
        c[32..40].copy_from_slice(&s.region_size.to_le_bytes());
        c[40..48].copy_from_slice(&s.map.plugged_size().to_le_bytes());
        c[48..56].copy_from_slice(&s.requested.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        _acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        let [queue]: [Queue; 1] = queues.try_into().map_err(|q: Vec<Queue>| ActivateError {
            device: "virtio-mem",
            reason: format!("one request queue is needed, {} given", q.len()),
        })?;
        self.sync.lock().interrupt = Some(interrupt.clone());
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        self.process_queue();
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process_queue();
    }

    fn reset(&mut self) {
        // The blocks keep their state across a reset (the next driver unplugs them all).
        self.active = None;
        self.sync.lock().interrupt = None;
    }

    fn watched(&self) -> Vec<(RawFd, u32)> {
        EventHandler::watched(self)
    }

    fn handle_event(&mut self, token: u32) {
        EventHandler::handle(self, token);
    }
}

impl EventHandler for Mem {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![(self.notify.as_raw_fd(), 0)]
    }

    fn handle(&mut self, _token: u32) {
        let _ = self.notify.read();
        self.process_queue();
    }
}

#[cfg(test)]
mod tests;
