//! kata-agent: the kata-rs guest agent.
//!
//! It is PID 1 of the micro-VM's initramfs (or started by it): it mounts what a guest needs
//! ([`init`]), reaps every orphan ([`reaper`]), and serves Kata's agent API (`grpc.AgentService`,
//! `grpc.Health`) over ttRPC on vsock port 1024 ([`agent::serve`], [`service`]). Containers run
//! on the crate's own runtime ([`runtime`]): namespaces, `pivot_root` into the shared rootfs, the
//! OCI spec's mounts, cgroups, user, capabilities and rlimits, with the agent binary re-executed
//! as a single-threaded init helper for everything between fork and exec.
//!
//! The library is what the `kata-agent` binary runs; it is split out so every part is unit
//! testable. See the README for how it behaves as PID 1 and the semantics of each call.
//!
//! ```no_run
//! # async fn run() -> Result<(), kata_agent::error::AgentError> {
//! let config = kata_agent::config::AgentConfig::from_args(["--no-init", "--listen", "unix:///run/agent.sock"])
//!     .expect("valid flags");
//! kata_agent::agent::serve(&config, false).await?; // until SIGTERM
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod command;
pub mod config;
pub mod copy_file;
pub mod debug_console;
pub mod diagnostic;
pub mod error;
pub mod guest;
pub mod hooks;
pub mod init;
pub mod iptables;
pub mod kernel_modules;
pub mod logport;
pub mod mem_probe;
pub mod metrics;
pub mod mount;
pub mod network;
pub mod online;
pub mod pod_namespaces;
pub mod random;
pub mod reaper;
pub mod runtime;
pub mod sandbox;
pub mod service;
pub mod side_port;
pub mod storage;
pub mod swap;
pub mod vfio;
pub mod vfio_ap;
pub mod volume_stats;

/// Starts the side ports `config` asks for: the log stream ([`logport`]) and the debug
/// console ([`debug_console`]). They listen until the returned listeners are dropped; one
/// that cannot listen is logged and left out (the agent serves on without it).
pub fn side_ports(config: &config::AgentConfig) -> Vec<std::sync::Arc<side_port::PortListener>> {
    let mut out = Vec::new();
    let ports = [
        (
            config.log_vport,
            "log stream",
            logport::serve as fn(&str, u32) -> _,
        ),
        (
            config.debug_console_vport,
            "debug console",
            debug_console::serve,
        ),
    ];
    for (port, what, serve) in ports {
        let Some(port) = port else { continue };
        match serve(&config.listen, port) {
            Ok(l) => out.push(l),
            Err(e) => tracing::warn!(port, error = %e, "cannot serve the {what}"),
        }
    }
    out
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
