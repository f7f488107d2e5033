//! virtio-vsock with a hybrid backend: the guest's vsock ports are reached from the host
//! through one unix socket, with Firecracker's `CONNECT <port>\n` / `OK <host port>\n`
//! handshake and then a plain byte stream. That is what `kata-agent-client` dials
//! (`AgentAddress::HybridVsock`), and it needs neither `/dev/vhost-vsock` nor a
//! vhost-device-vsock process.
//!
//! [`packet`] parses the guest's packets at the edge; [`unix`] is the muxer that owns the host
//! sockets and the connection states; [`device`] moves packets between the queues and the
//! muxer. Not yet: connections the guest opens to the host (answered with a reset), the event
//! queue (transport reset on snapshot restore).

pub mod device;
pub mod packet;
pub mod unix;

pub use device::{Vsock, VsockConfig};

/// The virtio device id of a vsock device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// The host's CID, the destination of everything the guest sends to the host.
pub const VSOCK_HOST_CID: u64 = 2;
