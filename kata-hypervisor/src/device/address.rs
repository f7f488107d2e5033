//! Where the guest finds a hot-plugged device: [`GuestAddress`], returned by
//! [`Hypervisor::add_device`](crate::Hypervisor::add_device) and passed on to the agent (a
//! `blk` storage's source is a [`PciPath`], a `scsi` storage's a SCSI address).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PCI device's path from the root bus, as Kata writes it: the slot of each bridge or port
/// on the way, then the device's slot, two hex digits each, joined by `/` (`"02/00"`: the
/// device in slot 0 behind the port in slot 2 of the root bus). Function 0 throughout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PciPath(Vec<u8>);

/// Slots a PCI bus has (0..=31).
const PCI_SLOTS: u8 = 32;

impl PciPath {
    /// A path from its slots, root bus first. Errors: no slot, or a slot above 31.
    pub fn new(slots: Vec<u8>) -> std::result::Result<Self, String> {
        if slots.is_empty() {
            return Err("a PCI path has at least one slot".into());
        }
        if let Some(s) = slots.iter().find(|s| **s >= PCI_SLOTS) {
            return Err(format!("PCI slot {s:#04x} is above 0x1f"));
        }
        Ok(PciPath(slots))
    }

    /// The slots, root bus first.
    pub fn slots(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{s:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for PciPath {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let slots = s
            .split('/')
            .map(|p| {
                if p.len() != 2 {
                    return Err(format!(
                        "PCI path {s:?}: each slot is two hex digits, got {p:?}"
                    ));
                }
                u8::from_str_radix(p, 16)
                    .map_err(|_| format!("PCI path {s:?}: {p:?} is not hexadecimal"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        PciPath::new(slots).map_err(|e| format!("PCI path {s:?}: {e}"))
    }
}

impl TryFrom<String> for PciPath {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PciPath> for String {
    fn from(p: PciPath) -> String {
        p.to_string()
    }
}

/// Where the guest finds a device the VM was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum GuestAddress {
    /// A PCI device (virtio-blk-pci, VFIO) at this path.
    Pci {
        /// The path from the root bus.
        path: PciPath,
    },
    /// A SCSI disk on the VM's virtio-scsi controller: target (`scsi-id`) and LUN. The agent's
    /// `scsi` storage source is `"<target>:<lun>"`.
    Scsi {
        /// The SCSI target id.
        target: u32,
        /// The logical unit.
        lun: u32,
    },
    /// Nothing to tell: the guest finds the device by other means (a mount tag, a MAC).
    Unaddressed,
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestAddress::Pci { path } => write!(f, "{path}"),
            GuestAddress::Scsi { target, lun } => write!(f, "{target}:{lun}"),
            GuestAddress::Unaddressed => f.write_str("unaddressed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_paths_read_and_write_kata_form() {
        let p: PciPath = "02/00".parse().unwrap();
        assert_eq!(p.slots(), &[2, 0]);
        assert_eq!(p.to_string(), "02/00");
        assert_eq!("1f".parse::<PciPath>().unwrap().slots(), &[0x1f]);
        for bad in ["", "2/00", "02/", "20", "zz/00", "02//00", "002"] {
            assert!(bad.parse::<PciPath>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&GuestAddress::Pci { path: p.clone() }).unwrap();
        assert_eq!(json, r#"{"kind":"pci","path":"02/00"}"#);
        let back: GuestAddress = serde_json::from_str(&json).unwrap();
        assert_eq!(back, GuestAddress::Pci { path: p });
        assert!(serde_json::from_str::<GuestAddress>(r#"{"kind":"pci","path":"40"}"#).is_err());
    }

    #[test]
    fn scsi_addresses_display_as_the_agent_reads_them() {
        let a = GuestAddress::Scsi { target: 0, lun: 3 };
        assert_eq!(a.to_string(), "0:3");
    }
}
