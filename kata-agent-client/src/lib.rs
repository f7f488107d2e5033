//! kata-agent-client: the kata-rs guest agent protocol and its ttRPC client.
//!
//! - [`Agent`] ([`api`]): the typed agent API the runtime uses. Rust types in, Rust types
//!   out: `oci_spec` specs and processes, [`Storage`], [`SandboxSetup`], [`ExitStatus`],
//!   [`Signal`], [`ContainerStats`], [`GuestDetails`], OOM kills as a stream
//!   ([`OomEvents`]).
//! - [`AgentAddress`] and [`ConnectOptions`]: where the agent is (AF_VSOCK, hybrid vsock or
//!   a unix socket) and how to reach it (retries while the guest boots, a deadline on every
//!   call).
//! - [`config`]: the `[agent.kata]` configuration section.
//!
//! # The protocol layer (feature `server`)
//! The generated protobuf messages and ttRPC stubs (wire-compatible with Kata Containers'
//! agent: `grpc.AgentService`, `grpc.Health`), the protobuf-level client under [`Agent`]
//! (`AgentClient`), the `oci_spec` ↔ `grpc.Spec` conversion (`spec`) and the server traits
//! the guest agent implements (`server`) are public only with feature `server`, which the
//! guest agent and protocol-level tests enable. Without it the crate's API is [`Agent`] and
//! its types: nothing above it builds or reads a protobuf message.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod address;
pub mod api;
#[cfg(feature = "server")]
pub mod client;
// Without `server` only the part the façade calls is used; the rest serves the agent.
#[cfg(not(feature = "server"))]
#[allow(dead_code)]
mod client;
pub mod config;
pub mod connect;
pub mod debug_console;
pub mod error;
pub mod gate;
#[cfg(feature = "server")]
pub mod protocol;
// Without `server` only the part the façade calls is used; the rest serves the agent.
#[cfg(not(feature = "server"))]
#[allow(dead_code)]
mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod spec;
// Without `server` only the part the façade calls is used; the rest serves the agent.
#[cfg(not(feature = "server"))]
#[allow(dead_code)]
mod spec;

pub use address::{AgentAddress, DEFAULT_AGENT_VSOCK_PORT};
pub use api::{
    Agent, AgentDetails, AgentVersion, BlkioEntry, BlkioStats, CgroupStats, ContainerSetup,
    ContainerStats, CpuStats, CpuThrottling, CpuUsage, Device, ExitStatus, FsGroup,
    FsGroupChangePolicy, GuestDetails, GuestMetrics, HugetlbStats, KernelModule, MemoryData,
    MemoryStats, NetworkStats, OnlineCpuMem, OomEvents, PidsStats, SandboxSetup, Signal, Storage,
};
#[cfg(feature = "server")]
pub use client::AgentClient;
pub use client::OutputStream;
pub use connect::ConnectOptions;
pub use error::{Code, Error, Result};
pub use gate::WriteGate;

/// The `protobuf` crate the generated messages are built on (same version).
#[cfg(feature = "server")]
pub use protobuf;
/// The `ttrpc` crate the client and server stubs are built on (same version).
#[cfg(feature = "server")]
pub use ttrpc;
