//! Shared helpers for the kata-rs benchmarks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use kata_hypervisor::config::cache_dir;

/// A busybox rootfs for the benchmarks (built once).
pub fn busybox_rootfs() -> PathBuf {
    let dir = cache_dir().join("bench").join("busybox-rootfs");
    if !dir.join("bin").join("busybox").exists() {
        std::fs::create_dir_all(cache_dir().join("bench")).expect("bench cache dir");
        kata_testkit::image::busybox_rootfs(&dir).expect("busybox rootfs");
    }
    dir
}

/// Writes an OCI bundle for runc whose process runs `args` in `rootfs`.
pub fn runc_bundle(dir: &Path, rootfs: &Path, args: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let status = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other("runc spec failed"));
    }
    let path = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(args);
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["root"]["readonly"] = true.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)
}

/// Runs `runc run` of a bundle once and checks it succeeded.
pub fn runc_run(bundle: &Path, id: &str) {
    let out = std::process::Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runc runs");
    assert!(
        out.status.success(),
        "runc run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Median of `n` timings of `f`.
pub fn median<F: FnMut()>(n: usize, mut f: F) -> Duration {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}
