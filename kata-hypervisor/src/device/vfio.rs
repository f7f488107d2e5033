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
