//! Network interfaces: a host tap device given to the guest as a virtio-net NIC.
//!
//! The tap usually lives in the pod's network namespace, made there by kata-resource (Kata's
//! `tcfilter` model), while the VMM runs in the host's: it cannot open the tap by name, so the
//! device carries the tap's open queues ([`NetDevice::tap_fds`]) for the VMM to inherit (QEMU:
//! `-netdev tap,fd=N`, or `fds=N:M` with several queues).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A network interface backed by a host tap device.
///
/// Two devices are equal when their fields are and they share the same open tap queues (the
/// same `Arc`s, not merely the same fd numbers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetDevice {
    /// A unique id for this VM.
    pub id: String,
    /// The host tap device name (in [`netns`](Self::netns)).
    pub tap_name: String,
    /// The guest MAC address (`aa:bb:cc:dd:ee:ff`): in the `tcfilter` model, the MAC of the
    /// pod interface the tap is joined to, so traffic leaves the VM with the address the pod's
    /// network expects.
    pub mac: String,
    /// The network namespace the tap lives in, as a path (`None`: the VMM's own). For messages
    /// and for a VMM that runs in that namespace; a VMM elsewhere uses
    /// [`tap_fds`](Self::tap_fds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Queue pairs of the virtio-net device (`network_queues`): 1, or as many as the tap has
    /// queues (`IFF_MULTI_QUEUE`).
    #[serde(default = "one_queue")]
    pub queues: u32,
    /// The tap's open queues, one per queue pair (`/dev/net/tun` files attached to the tap,
    /// close-on-exec: a VMM that inherits them must have that flag cleared in its child). Empty
    /// when the VMM opens the tap by name, and for a device read back from saved state: open
    /// files are never persisted, and a restored VM already holds its own.
    ///
    /// The owner that made the tap keeps these open too, until it releases or detaches it.
    #[serde(skip)]
    pub tap_fds: Vec<Arc<OwnedFd>>,
}

fn one_queue() -> u32 {
    1
}

impl NetDevice {
    /// The raw numbers of [`tap_fds`](Self::tap_fds), in queue order, for a VMM's command line.
    pub fn raw_tap_fds(&self) -> Vec<RawFd> {
        self.tap_fds.iter().map(|fd| fd.as_raw_fd()).collect()
    }
}

impl PartialEq for NetDevice {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.tap_name == other.tap_name
            && self.mac == other.mac
            && self.netns == other.netns
            && self.queues == other.queues
            && self.tap_fds.len() == other.tap_fds.len()
            && self
                .tap_fds
                .iter()
                .zip(&other.tap_fds)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for NetDevice {}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(tap_fds: Vec<Arc<OwnedFd>>) -> NetDevice {
        NetDevice {
            id: "net0".into(),
            tap_name: "tap0_kata".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: Some("/run/netns/pod".into()),
            queues: tap_fds.len().max(1) as u32,
            tap_fds,
        }
    }

    #[test]
    fn fds_are_not_serialised_and_compare_by_identity() {
        let fd: Arc<OwnedFd> = Arc::new(std::fs::File::open("/dev/null").unwrap().into());
        let with_fd = device(vec![fd.clone()]);
        assert_eq!(with_fd, with_fd.clone());
        let other: Arc<OwnedFd> = Arc::new(std::fs::File::open("/dev/null").unwrap().into());
        assert_ne!(with_fd, device(vec![other]));
        assert_eq!(with_fd.raw_tap_fds(), vec![fd.as_raw_fd()]);

        let json = serde_json::to_string(&with_fd).unwrap();
        assert!(!json.contains("tap_fds"), "{json}");
        let back: NetDevice = serde_json::from_str(&json).unwrap();
        assert!(back.tap_fds.is_empty());
        assert_eq!(back, device(vec![]));
    }

    #[test]
    fn older_state_without_the_new_fields_still_loads() {
        let back: NetDevice =
            serde_json::from_str(r#"{"id":"n","tap_name":"t","mac":"02:00:00:00:00:02"}"#).unwrap();
        assert_eq!((back.queues, back.netns), (1, None));
    }
}
