//! Network interfaces: a host tap device given to the guest as a virtio-net NIC.

use serde::{Deserialize, Serialize};

/// A network interface backed by a host tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    /// A unique id for this VM.
    pub id: String,
    /// The host tap device name.
    pub tap_name: String,
    /// The guest MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
}
