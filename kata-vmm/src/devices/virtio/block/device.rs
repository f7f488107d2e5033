//! The virtio-blk device: its configuration space, and its one queue run against the disk.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Request, RequestKind, DISCARD_RANGE_LEN, S_IOERR, S_OK, S_UNSUPP};
use super::{ID_BYTES, SECTOR_SIZE, SEG_MAX, VIRTIO_ID_BLOCK};
use crate::devices::virtio::chain::{read_chain, ChainError};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};
use crate::event_loop::EventHandler;
use crate::memory::GuestMemory;

/// Feature: `seg_max` is valid.
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: the device is read-only.
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device takes FLUSH.
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: the device takes DISCARD.
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;

/// The queue size.
const QUEUE_SIZE: u16 = 256;
/// Header, data segments and the status byte.
const MAX_SEGMENTS: usize = SEG_MAX as usize + 2;
/// The most sectors one discard range may cover (advertised).
const MAX_DISCARD_SECTORS: u32 = u32::MAX / SECTOR_SIZE as u32;

/// How a disk is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image file or host block device.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
    /// The id answered to GET_ID (`/sys/block/vdX/serial`), at most 20 bytes; by default
    /// derived from the file's device and inode.
    pub id: Option<String>,
}

/// The disk behind the device.
#[derive(Debug)]
struct Disk {
    file: File,
    /// Size in bytes, rounded down to whole sectors.
    size: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

/// What a running device holds.
#[derive(Debug)]
struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-blk device over a raw image file or a host block device.
#[derive(Debug)]
pub struct Block {
    name: String,
    disk: Disk,
    features: u64,
    config: Vec<u8>,
    active: Option<Active>,
    /// Signalled when the driver notifies the queue (the ioeventfd KVM writes).
    notify: EventFd,
}

impl Block {
    /// Opens the disk; a missing or unreadable file is an error now, before the VM starts.
    pub fn new(config: &BlockConfig) -> Result<Block> {
        let name = format!("virtio-blk {}", config.path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| Error::DeviceIo {
                device: name.clone(),
                what: "opening the disk image".into(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| Error::DeviceIo {
            device: name.clone(),
            what: "reading the disk image's size".into(),
            source,
        })?;
        // A raw image file, or a host block device (a devmapper snapshot, a block volume):
        // its size is where a seek to its end lands.
        let len = if meta.is_file() {
            meta.len()
        } else if meta.file_type().is_block_device() {
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|source| Error::DeviceIo {
                    device: name.clone(),
                    what: "reading the block device's size".into(),
                    source,
                })?
        } else {
            return Err(Error::Device {
                device: name,
                reason: "neither a regular file nor a block device: give a raw image file or \
                         a host block device"
                    .into(),
            });
        };
        let size = len - len % SECTOR_SIZE;
        if size != len {
            tracing::warn!(device = %name, "disk size is not a multiple of 512: the tail is not visible to the guest");
        }
        let mut id = [0u8; ID_BYTES];
        let id_text = config
            .id
            .clone()
            .unwrap_or_else(|| format!("{:x}{:x}", meta.dev(), meta.ino()));
        let n = id_text.len().min(ID_BYTES);
        id[..n].copy_from_slice(&id_text.as_bytes()[..n]);

        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH;
        if config.read_only {
            features |= VIRTIO_BLK_F_RO;
        } else {
            features |= VIRTIO_BLK_F_DISCARD;
        }
        // struct virtio_blk_config, up to the discard fields.
        let mut cfg = vec![0u8; 48];
        cfg[0..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        cfg[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        cfg[40..44].copy_from_slice(&request::MAX_DISCARD_SEG.to_le_bytes());
        cfg[44..48].copy_from_slice(&1u32.to_le_bytes());
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
            device: name.clone(),
            what: "creating the notify eventfd".into(),
            source,
        })?;
        Ok(Block {
            notify,
            name,
            disk: Disk {
                file,
                size,
                read_only: config.read_only,
                id,
            },
            features,
            config: cfg,
            active: None,
        })
    }

    /// The eventfd a queue notification signals (to register as the window's ioeventfd).
    pub fn notify_evt(&self) -> &EventFd {
        &self.notify
    }

    /// The disk size in bytes the guest sees.
    pub fn disk_size(&self) -> u64 {
        self.disk.size
    }

    /// Runs every request on the queue; returns how many were taken off it.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mem = active.mem.clone();
        let mut done = 0;
        while let Some(chain) = active.queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            // Walked again if the chain cannot be read, to find its status byte.
            let again = chain.clone();
            let used = match read_chain(&mem, chain, MAX_SEGMENTS) {
                Ok(segments) => match request::parse(&mem, &segments) {
                    Ok(req) => self.disk.execute(&mem, &req),
                    Err(e) => answer_malformed(&self.name, &mem, &segments, &e),
                },
                Err(e) => answer_unreadable(&self.name, &mem, again, &e),
            };
            if let Err(e) = active.queue.add_used(&mem, head, used) {
                tracing::warn!(device = %self.name, error = %e, "cannot return a request to the guest");
            }
            done += 1;
        }
        if done > 0 && active.queue.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        done
    }
}

/// A chain that read fine but is not a valid request: IOERR if it has a status byte, else
/// dropped. Returns the used length.
fn answer_malformed(
    name: &str,
    mem: &GuestMemory,
    segments: &[crate::devices::virtio::chain::Segment],
    e: &ChainError,
) -> u32 {
    tracing::warn!(device = %name, error = %e, "malformed request");
    match request::status_address(segments) {
        Some(status) if mem.write_obj(S_IOERR, status).is_ok() => 1,
        _ => 0,
    }
}

/// A chain that could not be read (a buffer outside guest memory, too many descriptors):
/// IOERR if it ends in a writable status byte in guest memory, else dropped (a loop, a bad
/// index). Returns the used length.
fn answer_unreadable(
    name: &str,
    mem: &GuestMemory,
    chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    e: &ChainError,
) -> u32 {
    tracing::warn!(device = %name, error = %e, "unreadable request");
    // virtio-queue ends the walk after `queue size` descriptors.
    let (n, last) = chain.fold((0usize, None), |(n, _), d| (n + 1, Some(d)));
    match last {
        Some(d)
            if n >= 2
                && d.is_write_only()
                && !d.has_next()
                && d.len() >= 1
                && mem.write_obj(S_IOERR, d.addr()).is_ok() =>
        {
            1
        }
        _ => 0,
    }
}

/// The status of a discard whose hole punch failed with `e`: UNSUPP where the file cannot
/// punch holes (a host block device without discard support, a filesystem without hole
/// punching: DISCARD is offered before that can be known), else IOERR.
fn discard_failed(e: &std::io::Error) -> u8 {
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        S_UNSUPP
    } else {
        S_IOERR
    }
}

impl Disk {
    /// Runs `req`, writes its status, returns the used length.
    fn execute(&mut self, mem: &GuestMemory, req: &Request) -> u32 {
        let (status, written) = match self.run(mem, req) {
            Ok(written) => (S_OK, written),
            Err(status) => (status, 0),
        };
        if mem.write_obj(status, req.status).is_err() {
            return 0;
        }
        written.saturating_add(1)
    }

    /// The request's work; `Ok(bytes written into the guest)` or `Err(status)`.
    fn run(&mut self, mem: &GuestMemory, req: &Request) -> std::result::Result<u32, u8> {
        match req.kind {
            RequestKind::In => {
                let offset = self.check_range(req.sector, req.data_len)?;
                self.file
                    .seek(SeekFrom::Start(offset))
                    .map_err(|_| S_IOERR)?;
                for s in &req.data {
                    mem.read_exact_volatile_from(s.addr, &mut self.file, s.len as usize)
                        .map_err(|_| S_IOERR)?;
                }
                u32::try_from(req.data_len).map_err(|_| S_IOERR)
            }
            RequestKind::Out => {
                if self.read_only {
                    return Err(S_IOERR);
                }
                let offset = self.check_range(req.sector, req.data_len)?;
                self.file
                    .seek(SeekFrom::Start(offset))
                    .map_err(|_| S_IOERR)?;
                for s in &req.data {
                    mem.write_all_volatile_to(s.addr, &mut self.file, s.len as usize)
                        .map_err(|_| S_IOERR)?;
                }
                Ok(0)
            }
            RequestKind::Flush => {
                if !self.read_only {
                    self.file.sync_data().map_err(|_| S_IOERR)?;
                }
                Ok(0)
            }
            RequestKind::GetId => {
                mem.write_slice(&self.id, req.data[0].addr)
                    .map_err(|_| S_IOERR)?;
                Ok(ID_BYTES as u32)
            }
            RequestKind::Discard => {
                if self.read_only {
                    return Err(S_IOERR);
                }
                for s in &req.data {
                    for i in 0..(s.len / DISCARD_RANGE_LEN) {
                        let at = GuestAddress(s.addr.0 + u64::from(i * DISCARD_RANGE_LEN));
                        self.discard(mem, at)?;
                    }
                }
                Ok(0)
            }
            RequestKind::Unsupported(_) => Err(S_UNSUPP),
        }
    }

    /// One `struct virtio_blk_discard_write_zeroes` at `at`: punches a hole.
    fn discard(&mut self, mem: &GuestMemory, at: GuestAddress) -> std::result::Result<(), u8> {
        let sector: u64 = mem.read_obj(at).map_err(|_| S_IOERR)?;
        let sectors: u32 = mem.read_obj(GuestAddress(at.0 + 8)).map_err(|_| S_IOERR)?;
        let flags: u32 = mem.read_obj(GuestAddress(at.0 + 12)).map_err(|_| S_IOERR)?;
        if u32::from_le(flags) != 0 {
            // No flag is defined for discard.
            return Err(S_UNSUPP);
        }
        let len = u64::from(u32::from_le(sectors)) * SECTOR_SIZE;
        let offset = self.check_range(u64::from_le(sector), len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: fallocate on a descriptor this struct owns, with constant flags and a range
        // checked to lie inside the file; it touches no memory of this process.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(discard_failed(&std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `sector` and `len` bytes from it inside the disk: the byte offset, or IOERR.
    fn check_range(&self, sector: u64, len: u64) -> std::result::Result<u64, u8> {
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(S_IOERR)?;
        let end = offset.checked_add(len).ok_or(S_IOERR)?;
        if end > self.size {
            return Err(S_IOERR);
        }
        Ok(offset)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        _acked_features: u64,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        let queue = queues
            .pop()
            .filter(|_| queues.is_empty())
            .ok_or(ActivateError {
                device: "virtio-blk",
                reason: "exactly one queue is needed".into(),
            })?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process_queue();
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn watched(&self) -> Vec<(RawFd, u32)> {
        EventHandler::watched(self)
    }

    fn handle_event(&mut self, token: u32) {
        EventHandler::handle(self, token);
    }
}

impl EventHandler for Block {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![(self.notify.as_raw_fd(), 0)]
    }

    fn handle(&mut self, _token: u32) {
        let _ = self.notify.read();
        self.process_queue();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
