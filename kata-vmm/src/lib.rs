//! # kata-vmm
//!
//! The built-in virtual machine monitor of kata-rs, on the rust-vmm crates: guest memory
//! ([`memory`]), the kernel loader ([`loader`]), the legacy devices ([`devices::legacy`]: the
//! serial console and the i8042 reset line), virtio-mmio devices ([`devices::virtio`]:
//! block, net, console, vsock with a hybrid unix-socket backend, inline virtio-fs, virtio-mem
//! memory hot-plug, balloon) driven by an [`event_loop`], and a PCI root bus
//! ([`devices::pci`]) for VFIO passthrough ([`devices::vfio`], with MSI and INTx); [`vm`]
//! assembles them into a KVM VM whose vCPU and device threads confine themselves with seccomp.
//!
//! Every device works on any [`vm_memory::GuestMemory`], so it is tested over a
//! [`vm_memory::GuestMemoryMmap`] with no VM at all. What the guest hands a device (descriptor
//! chains, request headers, packet headers) is parsed into checked types at the edge; a
//! malformed chain makes the device report an error or drop the request, never panic.
//!
//! The development host's KVM is paravirtual and cannot run a guest: the VM is proven in the
//! nested lab (`lab/`), where every check of the built-in set passes. A running VM can be
//! saved into a [`snapshot`] (which ends it) and new VMs started from it (VM templating). Not
//! built yet: CPU hot-plug by ACPI, pause. See the README.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod devices;
pub mod error;
pub mod event_loop;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod snapshot;
pub mod vm;
pub mod vstate;

pub use error::{Error, Result};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
