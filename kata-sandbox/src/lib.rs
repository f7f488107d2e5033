//! # kata-sandbox
//!
//! Start a micro-VM sandbox and run OCI containers in it from any Rust program.
//!
//! ```no_run
//! use kata_sandbox::{ContainerSpec, Sandbox};
//!
//! # async fn demo() -> Result<(), kata_sandbox::Error> {
//! let sandbox = Sandbox::builder().vcpus(1).memory_mib(256).build().await?; // VM booted, agent connected
//! let out = sandbox
//!     .run(ContainerSpec::from_rootfs_dir("rootfs/").args(["uname", "-a"]))
//!     .await?;
//! println!("{} ({})", out.stdout_str(), out.status);
//! sandbox.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The kernel and initramfs default to the guest image `make guest` builds (its manifest is
//! read from `$KATA_RS_CACHE/guest/manifest.json`). Containers come from a rootfs directory,
//! an OCI image layout (directory or tarball), or an OCI bundle with containerd's rootfs
//! mounts; the rootfs reaches the guest over the sandbox's shared filesystem.
//!
//! How it is built (see the repository's `ARCHITECTURE.md`): a [`Sandbox`] keeps the container
//! table and `state.json` ([`persist`]); the work is done by its runtime handler
//! (`virt_container`: a VM from kata-hypervisor's backends, host resources owned by
//! kata-resource, the guest agent through kata-agent-client).
#![warn(missing_docs)]

pub mod boot_timings;
mod builder;
pub mod config;
mod container;
pub mod crash;
mod debug_console;
mod error;
mod handler;
mod image;
mod io;
#[cfg(feature = "linux")]
mod linux;
pub mod metrics;
pub mod persist;
pub mod pool;
mod sandbox;
mod spec;
pub mod telemetry;
mod virt;
#[cfg(feature = "wasm")]
mod wasm;

pub use builder::{SandboxBuilder, SandboxConfig, DEFAULT_AGENT_TIMEOUT, DEFAULT_ROOT_DIR};
pub use container::{Container, Output, Process, DEFAULT_OUTPUT_LIMIT};
pub use debug_console::{DebugConsole, DebugConsoleInput, DebugConsoleOutput};
pub use error::{Error, Result};
pub use handler::{HandlerState, NetworkChanges, OomEvents, RuntimeHandlerKind};
pub use io::{InputWriter, OutputReader};
pub use pool::SandboxPool;
/// Taking over a detached sandbox under a new id (kata-shim's VM cache).
pub use sandbox::handover;
pub use sandbox::{BootTimings, Sandbox};
pub use spec::{ContainerSpec, ProcessSpec, RootfsSource, DEFAULT_PATH};
pub use virt::resize::WorkloadSize;

/// How a process exited, its signals and a container's resource usage: the agent client's
/// types, which every runtime handler uses.
pub use kata_agent_client::{ContainerStats, ExitStatus, Signal};

/// A container's resource usage ([`ContainerStats`]) and its parts.
pub mod stats {
    pub use kata_agent_client::{
        BlkioEntry, BlkioStats, CgroupStats, ContainerStats, CpuStats, CpuThrottling, CpuUsage,
        HugetlbStats, MemoryData, MemoryStats, NetworkStats, PidsStats,
    };
}
/// The VMM choice and its `[hypervisor.*]` section, as [`SandboxBuilder`] takes them.
pub use kata_hypervisor::{HypervisorConfig, HypervisorType};
/// containerd's rootfs mounts, as [`ContainerSpec::from_bundle`] takes them.
pub use kata_resource::RootfsMount;
/// The OCI types in this crate's signatures.
pub use oci_spec;

/// Checks that `id` can name a sandbox or a container: ids become host path components, so
/// anything but `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}` (and `..`) is refused, naming the id.
pub fn validate_id(id: &str) -> Result<()> {
    kata_resource::validate_container_id(id).map_err(|e| Error::invalid("id", e.to_string()))
}

/// The `kata-linux-container` helper program's main (feature `linux`): the binary is only
/// this call. Not for other use.
#[cfg(feature = "linux")]
#[doc(hidden)]
pub fn linux_container_helper() -> i32 {
    linux::helper::main()
}

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
