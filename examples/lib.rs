//! Shared helpers for the kata-rs examples.
