//! kata-sandbox (work in progress).
