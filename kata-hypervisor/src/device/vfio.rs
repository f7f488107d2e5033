//! VFIO devices: a host PCI function passed through to the guest. Where it is plugged (a root
//! port, a switch port, a bridge slot) is the VM's [`PortAllocator`](super::PortAllocator)'s
//! business.

use serde::{Deserialize, Serialize};

/// A host PCI function passed through with VFIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioDevice {
    /// A unique id for this VM.
    pub id: String,
    /// The PCI address, `0000:01:00.0`.
    pub bdf: String,
}

/// An s390x VFIO-AP mediated device (a crypto matrix: adapters x domains) passed through to
/// the guest. It has no PCI port: QEMU takes it as `vfio-ap,sysfsdev=<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioApDevice {
    /// A unique id for this VM.
    pub id: String,
    /// The mediated device, `/sys/devices/vfio_ap/matrix/<uuid>`.
    pub sysfsdev: std::path::PathBuf,
}
