//! kata-vmm (work in progress).
