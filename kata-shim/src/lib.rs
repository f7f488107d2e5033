//! # kata-shim
//!
//! `containerd-shim-kata-v2` and `shim-ctl`. Not implemented yet: this crate only reserves its
//! place in the workspace (see the README).
#![warn(missing_docs)]
