//! A PCI Express switch: its upstream port (a [`Bridge`] of kind
//! [`BridgeKind::SwitchUpstream`], PCIe device/port type 5) sits as device 0 behind a root
//! port, and its secondary bus, the switch's internal bus, holds the switch's downstream ports
//! ([`RootPort::downstream`]) at devices 0, 1, ...
//!
//! The VMM presets the bus numbers (the internal bus, the highest bus below) and a window
//! holding every downstream port's (see `devices::vfio::build_hierarchy`).

use std::sync::{Arc, Mutex};

use super::bridge::{Bridge, BridgeKind};
use super::root_port::RootPort;
use super::SharedPciDevice;

pub use super::bridge::PCIE_OFFSET;

/// A downstream port shared with the bus (and the VM's hot-plug).
pub type SharedPort = Arc<Mutex<RootPort>>;

/// A switch's upstream port.
pub type SwitchUpstream = Bridge;

/// A switch's upstream port on bus `primary` whose internal bus is `secondary`, the highest
/// bus below it `subordinate`, forwarding `window` (start, end exclusive) to `ports` (devices
/// 0, 1, ... of the internal bus).
pub fn upstream(
    primary: u8,
    secondary: u8,
    subordinate: u8,
    window: (u64, u64),
    ports: &[SharedPort],
) -> SwitchUpstream {
    let children = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p: SharedPciDevice = p.clone();
            (i as u8, p)
        })
        .collect();
    Bridge::new(
        BridgeKind::SwitchUpstream,
        primary,
        secondary,
        subordinate,
        window,
        children,
    )
}

#[cfg(test)]
mod tests;
