//! # kata-vmm
//!
//! The built-in virtual machine monitor of kata-rs, on the rust-vmm crates: guest memory
//! ([`memory`]), the kernel loader ([`loader`]), the legacy devices ([`devices::legacy`]: the
//! serial console and the i8042 reset line) and virtio-mmio devices ([`devices::virtio`]:
//! block and vsock with a hybrid unix-socket backend), driven by an [`event_loop`].
//!
//! Every device works on any [`vm_memory::GuestMemory`], so it is tested over a
//! [`vm_memory::GuestMemoryMmap`] with no VM at all. What the guest hands a device (descriptor
//! chains, request headers, packet headers) is parsed into checked types at the edge; a
//! malformed chain makes the device report an error or drop the request, never panic.
//!
//! What does not exist yet: the vCPU run loop and its threads ([`vstate`] sets a VM and its
//! vCPUs up on kvm-ioctls, but that has never run: the development host's KVM is
//! paravirtual), the VM assembled from these parts (the devices' eventfds registered with KVM
//! as irqfds and ioeventfds), net, inline virtio-fs, and the kata-hypervisor
//! backend that uses this crate. See the README.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod devices;
pub mod error;
pub mod event_loop;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod vm;
pub mod vstate;

pub use error::{Error, Result};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
