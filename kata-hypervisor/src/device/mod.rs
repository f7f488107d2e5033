//! The device model: what a VM can be given, before boot (cold-plug) or after (hot-plug).
//!
//! Devices are described here independently of any backend, one file per kind; each backend
//! turns a [`DeviceConfig`] into its own form (QEMU arguments or QMP `device_add`, a built-in
//! VMM call). [`topology`] plans the PCIe ports a VM gets and hands them out to devices.

mod address;
mod block;
mod net;
mod share_fs;
pub mod topology;
mod vfio;
mod vsock;

use serde::{Deserialize, Serialize};

pub use address::{GuestAddress, PciPath};
pub use block::BlockDevice;
pub use net::NetDevice;
pub use share_fs::ShareFsDevice;
pub use topology::{PciePort, PortAllocator, PortPlan, PortSlot};
pub use vfio::{VfioApDevice, VfioDevice};
pub use vsock::VsockAddress;

/// A device given to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeviceConfig {
    /// A block device.
    Block(BlockDevice),
    /// A network interface.
    Net(NetDevice),
    /// A shared directory.
    ShareFs(ShareFsDevice),
    /// A VFIO PCI device.
    Vfio(VfioDevice),
    /// An s390x VFIO-AP mediated device (no PCI port).
    VfioAp(VfioApDevice),
}

impl DeviceConfig {
    /// The device's id within its VM.
    pub fn id(&self) -> &str {
        match self {
            DeviceConfig::Block(b) => &b.id,
            DeviceConfig::Net(n) => &n.id,
            DeviceConfig::ShareFs(s) => &s.mount_tag,
            DeviceConfig::Vfio(v) => &v.id,
            DeviceConfig::VfioAp(a) => &a.id,
        }
    }

    /// What kind of device this is, in words (`block`, `network`, ...), for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            DeviceConfig::Block(_) => "block",
            DeviceConfig::Net(_) => "network",
            DeviceConfig::ShareFs(_) => "shared filesystem",
            DeviceConfig::Vfio(_) => "VFIO",
            DeviceConfig::VfioAp(_) => "VFIO-AP",
        }
    }
}
