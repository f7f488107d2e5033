//! virtio-balloon: the guest gives pages back to the host — the pages of an inflated balloon,
//! and with free page reporting (`VIRTIO_BALLOON_F_REPORTING`) the pages its allocator has
//! free — and reports its memory statistics.
//!
//! Every page the guest hands over is given back to the host at once ([`discard::discard`]:
//! punched out of the guest's memfd); deflating needs nothing (the device does not offer
//! `MUST_TELL_HOST`: the guest uses the pages again, reading zeros). The runtime sets the
//! balloon's target and reads what the guest did through a [`BalloonHandle`]. Every chain is
//! checked ([`read_chain`]): a page number outside guest memory, a buffer in the wrong
//! direction or an odd length is skipped and counted, never trusted.

pub mod discard;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::chain::{read_chain, Segment};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};
use crate::event_loop::EventHandler;
use crate::memory::GuestMemory;
use discard::{discard, PAGE_SIZE};

/// The virtio device id of a balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;
/// `VIRTIO_BALLOON_F_STATS_VQ`: a statistics queue.
pub const F_STATS_VQ: u64 = 1 << 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest deflates before it runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// `VIRTIO_BALLOON_F_REPORTING`: free page reporting.
pub const F_REPORTING: u64 = 1 << 5;
/// The inflate queue.
pub const INFLATE_QUEUE: u16 = 0;
/// The deflate queue.
pub const DEFLATE_QUEUE: u16 = 1;
/// The statistics queue.
pub const STATS_QUEUE: u16 = 2;
/// The free page reporting queue (with [`F_REPORTING`]).
pub const REPORTING_QUEUE: u16 = 3;
/// The most descriptors of one chain.
pub const MAX_SEGMENTS: usize = 256;
/// The most page numbers taken from one inflate or deflate chain (Linux sends 256).
pub const MAX_PFNS_PER_CHAIN: usize = 4096;
/// The most statistics kept from one buffer (Linux sends 10 or so).
pub const MAX_STATS: usize = 32;
const QUEUE_SIZE: u16 = 256;
/// `struct virtio_balloon_config`: num_pages, actual, free_page_hint_cmd_id, poison_val.
const CONFIG_LEN: usize = 16;
/// One statistic: le16 tag, le64 value, packed.
const STAT_LEN: usize = 10;
const MIB_PAGES: u64 = (1 << 20) / PAGE_SIZE;

/// What the balloon offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Free page reporting (`reclaim_guest_freed_memory`): the guest hands its free pages
    /// back.
    pub free_page_reporting: bool,
}

/// One statistic the guest reported (`VIRTIO_BALLOON_S_*` tag and its value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonStat {
    /// The tag (0 swap in, ..., 4 free memory, 5 total memory, ...).
    pub tag: u16,
    /// The value (bytes for the memory tags).
    pub value: u64,
}

/// What the balloon did, for the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Bytes of inflated pages given back to the host.
    pub inflated_bytes: u64,
    /// Bytes of free pages the guest reported and that were given back.
    pub reported_bytes: u64,
    /// Page numbers or ranges refused (outside guest memory, unaligned, a malformed chain).
    pub refused: u64,
}

#[derive(Debug, Default)]
struct State {
    target_pages: u32,
    actual_pages: u32,
    stats: Vec<BalloonStat>,
    counters: BalloonCounters,
    interrupt: Option<Arc<Interrupt>>,
}

#[derive(Debug)]
struct Common {
    state: Mutex<State>,
    /// Written by [`BalloonHandle::request_stats`]: the device returns the stats buffer.
    stats_request: EventFd,
}

impl Common {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The runtime's side of a balloon. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BalloonHandle(Arc<Common>);

impl BalloonHandle {
    /// Asks the guest to hold `mib` MiB in the balloon (to give them to the host); raises the
    /// config-change interrupt if the driver is up.
    pub fn set_target_mib(&self, mib: u32) {
        let pages = u32::try_from(u64::from(mib) * MIB_PAGES).unwrap_or(u32::MAX);
        let mut s = self.0.lock();
        if s.target_pages != pages {
            s.target_pages = pages;
            if let Some(i) = &s.interrupt {
                i.signal_config_change();
            }
        }
    }

    /// The balloon's target in MiB.
    pub fn target_mib(&self) -> u64 {
        u64::from(self.0.lock().target_pages) / MIB_PAGES
    }

    /// What the guest says the balloon holds, in MiB.
    pub fn actual_mib(&self) -> u64 {
        u64::from(self.0.lock().actual_pages) / MIB_PAGES
    }

    /// The last statistics the guest reported.
    pub fn stats(&self) -> Vec<BalloonStat> {
        self.0.lock().stats.clone()
    }

    /// Asks the guest for fresh statistics (they arrive in [`BalloonHandle::stats`]).
    pub fn request_stats(&self) {
        let _ = self.0.stats_request.write(1);
    }

    /// What the balloon gave back and refused so far.
    pub fn counters(&self) -> BalloonCounters {
        self.0.lock().counters
    }
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
    /// The head of the stats buffer the guest last sent, held until fresh stats are asked.
    stats_head: Option<u16>,
}

/// A virtio-balloon device.
pub struct Balloon {
    config: BalloonConfig,
    common: Arc<Common>,
    active: Option<Active>,
    notify: EventFd,
    queue_sizes: Vec<u16>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("config", &self.config)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

/// What one queue's chain asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

impl Balloon {
    /// A balloon with nothing in it.
    pub fn new(config: BalloonConfig) -> Result<Balloon> {
        let evt = |what: &str| {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
                device: "virtio-balloon".into(),
                what: format!("creating the {what} eventfd"),
                source,
            })
        };
        let queues = if config.free_page_reporting { 4 } else { 3 };
        Ok(Balloon {
            config,
            common: Arc::new(Common {
                state: Mutex::new(State::default()),
                stats_request: evt("stats request")?,
            }),
            active: None,
            notify: evt("notify")?,
            queue_sizes: vec![QUEUE_SIZE; queues],
        })
    }

    /// The runtime's handle.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle(self.common.clone())
    }

    /// The eventfd a queue notification signals (to register as the window's ioeventfd).
    pub fn notify_evt(&self) -> &EventFd {
        &self.notify
    }

    /// Takes every chain off every queue; returns how many.
    pub fn process_queues(&mut self) -> usize {
        let mut done = 0;
        for (index, kind) in [
            (INFLATE_QUEUE, Kind::Inflate),
            (DEFLATE_QUEUE, Kind::Deflate),
            (STATS_QUEUE, Kind::Stats),
            (REPORTING_QUEUE, Kind::Reporting),
        ] {
            done += self.process(index, kind);
        }
        done
    }

    fn process(&mut self, index: u16, kind: Kind) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(usize::from(index)) else {
            return 0;
        };
        let mut done = 0;
        let mut returned = 0;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            done += 1;
            let segments = match read_chain(&mem, chain, MAX_SEGMENTS) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, queue = index, "virtio-balloon: malformed chain");
                    self.common.lock().counters.refused += 1;
                    let _ = queue.add_used(&mem, head, 0);
                    returned += 1;
                    continue;
                }
            };
            match kind {
                Kind::Inflate => {
                    let freed = inflate(&mem, &segments, &self.common);
                    self.common.lock().counters.inflated_bytes += freed;
                }
                Kind::Deflate => {}
                Kind::Reporting => {
                    let freed = report(&mem, &segments, &self.common);
                    self.common.lock().counters.reported_bytes += freed;
                }
                Kind::Stats => {
                    let stats = read_stats(&mem, &segments);
                    self.common.lock().stats = stats;
                    // Held until fresh stats are asked; an older held buffer goes back.
                    if let Some(old) = active.stats_head.replace(head) {
                        let _ = queue.add_used(&mem, old, 0);
                        returned += 1;
                    }
                    continue;
                }
            }
            if let Err(e) = queue.add_used(&mem, head, 0) {
                tracing::warn!(error = %e, "virtio-balloon: cannot return a buffer");
            }
            returned += 1;
        }
        if returned > 0 && queue.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        done
    }

    /// Returns the held stats buffer, so the guest sends fresh statistics.
    fn return_stats(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(head) = active.stats_head.take() else {
            return;
        };
        let mem = active.mem.clone();
        if let Some(q) = active.queues.get_mut(usize::from(STATS_QUEUE)) {
            if q.add_used(&mem, head, 0).is_ok() && q.needs_notification(&mem).unwrap_or(true) {
                active.interrupt.signal_used_queue();
            }
        }
    }
}

/// Gives back the pages an inflate chain lists (le32 page numbers, device-readable); returns
/// the bytes given back.
fn inflate(mem: &GuestMemory, segments: &[Segment], common: &Common) -> u64 {
    let mut pfns = Vec::new();
    let mut refused = 0;
    for s in segments {
        if s.write_only || !s.len.is_multiple_of(4) {
            refused += 1;
            continue;
        }
        let n = (s.len as usize / 4).min(MAX_PFNS_PER_CHAIN.saturating_sub(pfns.len()));
        let mut raw = vec![0u8; n * 4];
        if mem.read_slice(&mut raw, s.addr).is_err() {
            refused += 1;
            continue;
        }
        pfns.extend(
            raw.chunks_exact(4)
                .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        );
    }
    pfns.sort_unstable();
    pfns.dedup();
    // Runs of consecutive pages, one call each.
    let mut freed = 0;
    let mut i = 0;
    while i < pfns.len() {
        let start = pfns[i];
        let mut end = start + 1;
        i += 1;
        while i < pfns.len() && pfns[i] == end {
            end += 1;
            i += 1;
        }
        let len = (end - start) * PAGE_SIZE;
        match discard(mem, GuestAddress(start * PAGE_SIZE), len) {
            Ok(()) => freed += len,
            Err(e) => {
                tracing::debug!(error = %e, "virtio-balloon: an inflated page is not given back");
                refused += 1;
            }
        }
    }
    common.lock().counters.refused += refused;
    freed
}

/// Gives back the free page ranges a reporting chain lists (device-writable buffers over the
/// pages themselves); returns the bytes given back.
fn report(mem: &GuestMemory, segments: &[Segment], common: &Common) -> u64 {
    let mut freed = 0;
    let mut refused = 0;
    for s in segments {
        if !s.write_only {
            refused += 1;
            continue;
        }
        match discard(mem, s.addr, u64::from(s.len)) {
            Ok(()) => freed += u64::from(s.len),
            Err(e) => {
                tracing::debug!(error = %e, "virtio-balloon: a reported range is not given back");
                refused += 1;
            }
        }
    }
    common.lock().counters.refused += refused;
    freed
}

/// The statistics of a stats chain (device-readable, packed 10-byte entries), at most
/// [`MAX_STATS`]; a trailing partial entry is ignored.
fn read_stats(mem: &GuestMemory, segments: &[Segment]) -> Vec<BalloonStat> {
    let mut bytes = Vec::new();
    for s in segments.iter().filter(|s| !s.write_only) {
        let n = (s.len as usize).min(MAX_STATS * STAT_LEN - bytes.len());
        let mut raw = vec![0u8; n];
        if mem.read_slice(&mut raw, s.addr).is_err() {
            break;
        }
        bytes.extend(raw);
    }
    bytes
        .chunks_exact(STAT_LEN)
        .map(|c| BalloonStat {
            tag: u16::from_le_bytes([c[0], c[1]]),
            value: u64::from_le_bytes([c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]]),
        })
        .collect()
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn name(&self) -> &'static str {
        "virtio-balloon"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        let reporting = if self.config.free_page_reporting {
            F_REPORTING
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM | reporting
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = self.common.lock();
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&s.target_pages.to_le_bytes());
        c[4..8].copy_from_slice(&s.actual_pages.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4, 32 bits) is the driver's to write.
        if offset == 4 {
            if let Ok(raw) = <[u8; 4]>::try_from(data) {
                self.common.lock().actual_pages = u32::from_le_bytes(raw);
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        let need = if acked_features & F_REPORTING != 0 {
            4
        } else {
            3
        };
        if acked_features & F_STATS_VQ == 0 || queues.len() != need {
            return Err(ActivateError {
                device: "virtio-balloon",
                reason: format!(
                    "the driver acked features {acked_features:#x} with {} queues: the device \
                     needs the statistics queue{}",
                    queues.len(),
                    if self.config.free_page_reporting {
                        " and free page reporting"
                    } else {
                        ""
                    }
                ),
            });
        }
        self.common.lock().interrupt = Some(interrupt.clone());
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
            stats_head: None,
        });
        self.process_queues();
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process_queues();
    }

    fn reset(&mut self) {
        self.active = None;
        let mut s = self.common.lock();
        s.interrupt = None;
        s.actual_pages = 0;
    }

    fn watched(&self) -> Vec<(RawFd, u32)> {
        EventHandler::watched(self)
    }

    fn handle_event(&mut self, token: u32) {
        EventHandler::handle(self, token);
    }
}

impl EventHandler for Balloon {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![
            (self.notify.as_raw_fd(), 0),
            (self.common.stats_request.as_raw_fd(), 1),
        ]
    }

    fn handle(&mut self, token: u32) {
        if token == 1 {
            let _ = self.common.stats_request.read();
            self.return_stats();
        } else {
            let _ = self.notify.read();
            self.process_queues();
        }
    }
}

#[cfg(test)]
mod tests;
