//! Shared helpers for the kata-rs examples: a busybox rootfs to run, and step timing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A busybox rootfs directory (built once from Debian's busybox-static, then reused).
pub fn busybox_rootfs() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("examples").join("busybox-rootfs");
    if !dir.join("bin").join("busybox").exists() {
        std::fs::create_dir_all(cache_dir().join("examples"))?;
        kata_testkit::image::busybox_rootfs(&dir)?;
    }
    Ok(dir)
}

/// A busybox OCI image layout tarball (built once, then reused).
pub fn busybox_image() -> anyhow::Result<PathBuf> {
    let path = cache_dir().join("examples").join("busybox-oci.tar");
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap_or(&path))?;
        kata_testkit::image::busybox_image_tar(&path)?;
    }
    Ok(path)
}

use kata_hypervisor::config::cache_dir;

/// Prints how long each step took.
#[derive(Debug)]
pub struct Steps {
    start: Instant,
    last: Instant,
}

impl Default for Steps {
    fn default() -> Self {
        Self::new()
    }
}

impl Steps {
    /// Starts the clock.
    pub fn new() -> Self {
        let now = Instant::now();
        Steps {
            start: now,
            last: now,
        }
    }

    /// Prints the step's name and its duration; returns the duration.
    pub fn done(&mut self, step: &str) -> Duration {
        let d = self.last.elapsed();
        self.last = Instant::now();
        println!("  {step:<28} {:>8.3} s", d.as_secs_f64());
        d
    }

    /// Time since [`Steps::new`].
    pub fn total(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The top-level README's code, compiled as a doc test.
#[doc = include_str!("../README.md")]
#[doc(hidden)]
pub mod readme {}
