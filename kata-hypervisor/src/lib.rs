//! # kata-hypervisor
//!
//! The hypervisor layer of kata-rs: the [`Hypervisor`] trait that every VMM backend implements,
//! the [`backend`] boundary that makes, takes over and cleans up a VM for any
//! [`HypervisorType`], the device model ([`DeviceConfig`], the PCIe topology in
//! [`device::topology`]), the `[hypervisor.<name>]` configuration section
//! ([`HypervisorConfig`]) and the backends.
//!
//! Backends are cargo features: `qemu` (default) drives an external QEMU over QMP;
//! `test-backend` adds `host_agent`, a test fake that runs the real agent on this host
//! without a VM. Nothing outside this crate names a backend: callers go through [`backend`]
//! and consult [`Capabilities`].
//!
//! ```no_run
//! use kata_hypervisor::{backend, HypervisorConfig, HypervisorType};
//!
//! # async fn run() -> Result<(), kata_hypervisor::Error> {
//! let config = HypervisorConfig { default_memory: 256, ..Default::default() };
//! let vm = backend::create(HypervisorType::Qemu, "demo", config, "/run/kata-rs/demo/vm".as_ref())?;
//! vm.prepare(vec![]).await?;          // devices to cold-plug
//! vm.start().await?;                  // kernel + initrd from the guest manifest (`make guest`)
//! vm.wait_ready(std::time::Duration::from_secs(45)).await?; // the agent's port answers
//! println!("agent at {}", vm.agent_address()?);
//! vm.stop().await?;                   // nothing left behind
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "builtin")]
pub mod builtin;
pub mod config;
pub mod console;
pub mod device;
pub mod error;
#[cfg(feature = "test-backend")]
pub mod host_agent;
pub mod hypervisor;
pub mod kvm;
pub mod process;
#[cfg(feature = "qemu")]
pub mod qemu;
#[cfg(any(feature = "qemu", feature = "test-backend", feature = "builtin"))]
mod ready;
#[cfg(any(feature = "qemu", feature = "builtin"))]
pub mod template;
#[cfg(any(feature = "qemu", feature = "builtin"))]
mod virtio_mem;

pub use config::{GuestManifest, HypervisorConfig, HypervisorType, SharedFs};
pub use device::{
    BlockDevice, DeviceConfig, GuestAddress, NetDevice, PciPath, PciePort, ShareFsDevice,
    VfioApDevice, VfioDevice, VsockAddress,
};
pub use error::{Error, Result};
pub use hypervisor::{Capabilities, Hypervisor, HypervisorState, StartMarks, VmState};
pub use kvm::{probe_kvm, Accelerator, KvmProbe};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
