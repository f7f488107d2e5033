//! # kata-hypervisor
//!
//! The hypervisor layer of kata-rs: the [`Hypervisor`] trait that every VMM backend implements,
//! the device model ([`DeviceConfig`], the PCIe port topology of [`PciePort`]), the
//! `[hypervisor.<name>]` configuration section ([`HypervisorConfig`]) and the backends.
//!
//! Backends are cargo features: `qemu` (default) drives an external QEMU over QMP.
//!
//! ```no_run
//! use kata_hypervisor::{Hypervisor, HypervisorConfig, qemu::Qemu};
//!
//! # async fn run() -> Result<(), kata_hypervisor::Error> {
//! let config = HypervisorConfig { default_memory: 256, shared_fs: "virtio-9p".into(), ..Default::default() };
//! let vm = Qemu::new("demo", config, "/run/kata-rs/demo/vm")?;
//! vm.prepare(vec![]).await?;          // devices to cold-plug
//! vm.start().await?;                  // kernel + initrd from the guest manifest (`make guest`)
//! println!("agent at {}", vm.agent_address()?);
//! vm.stop().await?;                   // nothing left behind
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod console;
pub mod device;
pub mod error;
pub mod hypervisor;
pub mod kvm;
pub mod process;
#[cfg(feature = "qemu")]
pub mod qemu;

pub use config::{GuestManifest, HypervisorConfig, SharedFs};
pub use device::{
    BlockDevice, DeviceConfig, NetDevice, PciePort, ShareFsDevice, ShareFsKind, VfioDevice,
    VsockAddress,
};
pub use error::{Error, Result};
pub use hypervisor::{Capabilities, Hypervisor, HypervisorState, VmState};
pub use kvm::{probe_kvm, Accelerator, KvmProbe};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
