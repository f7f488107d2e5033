//! kata-shim (work in progress).
