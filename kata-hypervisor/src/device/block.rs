//! Block devices: a host file or block device given to the guest as a disk.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A block device backed by a host file or block device. How it is attached (virtio-blk,
/// virtio-scsi, ...) is the VM's `block_device_driver`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// A unique id for this VM (used as the QEMU drive/device id).
    pub id: String,
    /// Host path of the image file or block device.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}
