//! kata-agent-client: the kata-rs guest agent protocol and its ttRPC client.
//!
//! - [`Agent`] ([`api`]): the typed agent API the runtime uses. Rust types in, Rust types
//!   out: `oci_spec` specs and processes, [`Storage`], [`SandboxSetup`], [`ExitStatus`],
//!   [`Signal`], [`ContainerStats`], [`GuestDetails`], OOM kills as a stream
//!   ([`OomEvents`]).
//! - [`AgentClient`]: the protocol-level async client under [`Agent`], over AF_VSOCK, hybrid
//!   vsock or a unix socket ([`AgentAddress`]), with retries while the guest boots
//!   ([`ConnectOptions`]) and a deadline on every call.
//! - [`protocol`]: the generated messages and ttRPC stubs of the agent API,
//!   wire-compatible with Kata Containers' agent (`grpc.AgentService`, `grpc.Health`).
//! - [`spec`]: conversion between `oci_spec::runtime::Spec` and the protocol's `grpc.Spec`.
//! - [`config`]: the `[agent.kata]` configuration section.
//! - `server` (feature `server`): the traits the guest agent implements.
//!
//! # Where the public API is going
//! The runtime is moving from [`AgentClient`] (generated protobuf requests in and out) to
//! [`Agent`]. Once kata-sandbox and kata-shim call only [`Agent`], the protocol layer goes
//! private: [`protocol`], [`spec`], [`AgentClient`]'s protobuf-typed methods and
//! [`Agent::client`] are public only with feature `server` (which the guest agent and the
//! agent's own host tests enable), and crate-private otherwise. What stays public without
//! features is [`Agent`] and its types, [`AgentAddress`], [`ConnectOptions`], [`config`],
//! [`Error`]/[`Code`] and [`OutputStream`].
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod address;
pub mod api;
pub mod client;
pub mod config;
pub mod connect;
pub mod error;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod spec;

pub use address::{AgentAddress, DEFAULT_AGENT_VSOCK_PORT};
pub use api::{
    Agent, AgentDetails, AgentVersion, BlkioEntry, BlkioStats, CgroupStats, ContainerSetup,
    ContainerStats, CpuStats, CpuThrottling, CpuUsage, Device, ExitStatus, FsGroup,
    FsGroupChangePolicy, GuestDetails, HugetlbStats, KernelModule, MemoryData, MemoryStats,
    NetworkStats, OnlineCpuMem, OomEvents, PidsStats, SandboxSetup, Signal, Storage,
};
pub use client::{AgentClient, OutputStream};
pub use connect::ConnectOptions;
pub use error::{Code, Error, Result};

/// The `protobuf` crate the generated messages are built on (same version).
pub use protobuf;
/// The `ttrpc` crate the client and server stubs are built on (same version).
pub use ttrpc;
