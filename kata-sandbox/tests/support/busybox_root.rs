//! The usual world of a VM suite: a busybox rootfs and an empty root for the sandboxes' state
//! directories, both in one temporary directory that goes when the suite ends.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// A busybox rootfs and a state root (`root`), under one temporary directory.
pub struct Env {
    /// Where the suite's sandboxes keep their state (`SandboxBuilder::root_dir`).
    pub root: PathBuf,
    /// An unpacked busybox rootfs for containers.
    pub rootfs: PathBuf,
    _work: tempfile::TempDir,
}

impl Env {
    /// Unpacks busybox and creates the (empty) state root.
    pub async fn setup() -> Result<Env> {
        let work = tempfile::tempdir()?;
        let rootfs = work.path().join("rootfs");
        kata_testkit::image::busybox_rootfs(&rootfs).context("the busybox rootfs")?;
        let root = work.path().join("sandboxes");
        std::fs::create_dir_all(&root)?;
        Ok(Env {
            root,
            rootfs,
            _work: work,
        })
    }

    /// Stops every sandbox with a state directory under `root` and removes what it left: the
    /// `on_failure` of a suite, so that a failed case leaves no VM behind.
    pub fn cleanup_all(&self) {
        if let Ok(dirs) = std::fs::read_dir(&self.root) {
            for d in dirs.flatten() {
                let _ = kata_sandbox::persist::cleanup(&d.path());
            }
        }
    }
}
