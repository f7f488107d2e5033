//! Shared helpers for the kata-rs benchmarks.
