//! # kata-sandbox
//!
//! Boot a micro-VM sandbox and run OCI containers in it from any Rust program.
//!
//! ```no_run
//! use kata_sandbox::{ContainerSpec, Sandbox};
//!
//! # async fn demo() -> Result<(), kata_sandbox::Error> {
//! let sandbox = Sandbox::builder().vcpus(1).memory_mib(256).build().await?; // VM booted, agent connected
//! let out = sandbox
//!     .run(ContainerSpec::from_rootfs_dir("rootfs/").args(["uname", "-a"]))
//!     .await?;
//! println!("{}", out.stdout_str());
//! sandbox.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The kernel and initramfs default to the guest image `make guest` builds (its manifest is
//! read from `$KATA_RS_CACHE/guest/manifest.json`). Containers come from a rootfs directory or
//! an OCI image layout (directory or tarball), shared into the guest over virtio-9p.
#![warn(missing_docs)]

mod builder;
pub mod config;
mod container;
mod error;
mod image;
mod io;
pub mod persist;
mod sandbox;
mod spec;

pub use builder::{HypervisorKind, SandboxBuilder, DEFAULT_ROOT_DIR};
pub use container::{Container, Output, Process};
pub use error::{Error, Result};
pub use io::{InputWriter, OutputReader};
pub use sandbox::{BootTimings, Sandbox};
pub use spec::{ContainerSpec, ProcessSpec, RootfsSource, DEFAULT_PATH};

pub use kata_agent_client as agent_client;
pub use kata_hypervisor as hypervisor;

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
