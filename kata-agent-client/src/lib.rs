//! kata-agent-client: the kata-rs guest agent protocol and its ttRPC client.
#![warn(missing_docs)]

pub mod protocol;
#[cfg(feature = "server")]
pub mod server;

/// The `protobuf` crate the generated messages are built on (same version).
pub use protobuf;
/// The `ttrpc` crate the client and server stubs are built on (same version).
pub use ttrpc;
