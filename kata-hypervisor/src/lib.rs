//! kata-hypervisor (work in progress).
