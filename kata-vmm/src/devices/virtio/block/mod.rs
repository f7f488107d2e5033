//! virtio-blk: a raw disk image file or a host block device as the guest's block device,
//! read-only or not, with flush, discard and get-id.
//!
//! [`request`] parses what the guest queued into a checked [`request::Request`] before the
//! disk is touched; [`device`] runs requests against the file and answers every one it can
//! find a status byte for. No image format (qcow2) and no host page-cache bypass: the file is
//! read and written with ordinary syscalls.

pub mod device;
pub mod request;

pub use device::{Block, BlockConfig};

/// The virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// The sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// The most data segments one request may have (advertised as `seg_max`).
pub const SEG_MAX: u32 = 126;
/// The bytes of the id answered to GET_ID.
pub const ID_BYTES: usize = 20;
