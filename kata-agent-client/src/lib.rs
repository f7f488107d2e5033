//! kata-agent-client: the kata-rs guest agent protocol and its ttRPC client.
//!
//! - [`protocol`]: the generated messages and ttRPC stubs of the agent API,
//!   wire-compatible with Kata Containers' agent (`grpc.AgentService`,
//!   `grpc.Health`).
//! - [`AgentClient`]: an async client over AF_VSOCK, hybrid vsock or a unix
//!   socket ([`AgentAddress`]), with retries while the guest boots
//!   ([`ConnectOptions`]) and a deadline on every call.
//! - [`spec`]: conversion between `oci_spec::runtime::Spec` and the
//!   protocol's `grpc.Spec`.
//! - [`config`]: the `[agent.kata]` configuration section.
//! - `server` (feature `server`): the traits the guest agent implements.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod address;
pub mod client;
pub mod config;
pub mod connect;
pub mod error;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod spec;

pub use address::{AgentAddress, DEFAULT_AGENT_VSOCK_PORT};
pub use client::{AgentClient, OutputStream};
pub use connect::ConnectOptions;
pub use error::{Code, Error, Result};

/// The `protobuf` crate the generated messages are built on (same version).
pub use protobuf;
/// The `ttrpc` crate the client and server stubs are built on (same version).
pub use ttrpc;
