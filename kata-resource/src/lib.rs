//! kata-resource (work in progress).
