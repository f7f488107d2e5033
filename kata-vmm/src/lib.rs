//! # kata-vmm
//!
//! The built-in KVM virtual machine monitor of kata-rs. Not implemented yet: this crate only
//! reserves its place in the workspace (see the README).
#![warn(missing_docs)]
