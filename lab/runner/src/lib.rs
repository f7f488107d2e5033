//! The nested lab (`lab/README.md`): kata-rs's KVM-dependent checks, run where KVM works.
//!
//! This host's `/dev/kvm` is paravirtual and cannot run an ordinary guest, so the lab boots an
//! L1 Linux (Debian's cloud kernel) under QEMU TCG with emulated SVM, in which KVM works. L1
//! reads this host's root read-only over virtio-fs and runs the `kata-lab` binary from it,
//! which boots L2 sandboxes through kata-sandbox and prints one line per check on the serial
//! console. The host side ([`l1`], used by `tests/lab.rs`) collects the lines and fails on any
//! failed or missing check ([`protocol`]).
//!
//! Unpublished: a test crate of this workspace.

#![warn(missing_docs)]

pub mod l1;
pub mod overhead;
pub mod protocol;

pub use protocol::{expected_checks, verdict, Check, Figure, Line, Verdict, Vmm};
