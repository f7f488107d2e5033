//! virtio-net over a host tap: the guest's NIC on the pod network.
//!
//! The tap is made by kata-resource in the pod's network namespace (Kata's `tcfilter` model)
//! and its open queue handed to the VMM as a descriptor: the device never opens a tap by name
//! and needs no access to that namespace. One queue pair (receive queue 0, transmit queue 1),
//! the MAC of the pod interface in the configuration space, no offloads: every frame is a
//! whole Ethernet frame behind the 12-byte virtio 1.x header, which the tap carries as its
//! vnet header (`IFF_VNET_HDR`, set to 12 bytes here).
//!
//! [`device`] runs the queues; [`frame`] checks what the guest queued (direction, length,
//! guest memory) before a byte is copied.

pub mod device;
pub mod frame;

pub use device::{Net, NetConfig};

/// The virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// The virtio 1.x net header (`struct virtio_net_hdr_v1`, `num_buffers` included).
pub const NET_HDR_LEN: usize = 12;
/// The largest frame the device moves: a 64 KiB packet, its Ethernet header and the net
/// header (no offloads are negotiated, so the guest sends at most its MTU; this bounds it).
pub const MAX_FRAME_LEN: usize = 65_562;
