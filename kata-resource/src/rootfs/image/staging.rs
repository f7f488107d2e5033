//! Staging directories: where a rootfs is built before it is renamed to its final name, so a
//! crash leaves only a `.partial-*` directory, which the next run removes. They are created
//! 0700: a rootfs being built, and a cache entry renamed from one, is the unpacker's alone.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::IoContext;
use crate::Result;

/// The prefix of staging directory names.
const PREFIX: &str = ".partial-";

/// A directory removed (with its contents) on drop unless it was moved into place.
#[derive(Debug)]
pub(crate) struct StagingDir {
    path: PathBuf,
    moved: bool,
}

impl StagingDir {
    /// Creates `<parent>/.partial-<label>-<pid>-<n>` (mode 0700), unique in this process.
    pub(crate) fn create(parent: &Path, label: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{PREFIX}{label}-{}-{n}", std::process::id()));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .at("create staging directory", &path)?;
        Ok(StagingDir { path, moved: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staging directory to `dest`. Returns `false` (and removes the staging
    /// directory) if `dest` appeared meanwhile: another unpacker finished first.
    pub(crate) fn persist_as(mut self, dest: &Path) -> Result<bool> {
        match fs::rename(&self.path, dest) {
            Ok(()) => {
                self.moved = true;
                Ok(true)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => Ok(false),
            Err(e) => Err(e).at("move the staging directory to", dest),
        }
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.moved {
            return;
        }
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::error!(dir = %self.path.display(), "cannot remove staging directory: {e}");
            }
            _ => {}
        }
    }
}

/// Removes the staging directories in `dir` whose process is gone (a crash, a kill -9).
pub(crate) fn remove_stale(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).at("read directory", dir)?;
    for entry in entries {
        let entry = entry.at("read directory", dir)?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(staging_pid) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        tracing::info!(dir = %path.display(), "removing an unfinished unpack left by pid {pid}");
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).at("remove stale staging directory", &path);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The pid in `.partial-<label>-<pid>-<n>`.
fn staging_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _n: u64 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let staging = StagingDir::create(tmp.path(), "x").unwrap();
        let mode = fs::metadata(staging.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn staging_dirs_are_removed_unless_persisted() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = StagingDir::create(tmp.path(), "x").unwrap();
        let path = staging.path().to_owned();
        fs::write(path.join("f"), "x").unwrap();
        drop(staging);
        assert!(!path.exists());

        let staging = StagingDir::create(tmp.path(), "x").unwrap();
        assert!(staging.persist_as(&tmp.path().join("done")).unwrap());
        assert!(tmp.path().join("done").is_dir());

        let staging = StagingDir::create(tmp.path(), "x").unwrap();
        fs::write(staging.path().join("f"), "x").unwrap();
        let path = staging.path().to_owned();
        fs::write(tmp.path().join("done/g"), "x").unwrap();
        assert!(!staging.persist_as(&tmp.path().join("done")).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn stale_dirs_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22, so this pid cannot be alive.
        let dead = tmp.path().join(".partial-sha256-ab-99999999-0");
        let mine = StagingDir::create(tmp.path(), "sha256-ab").unwrap();
        let other = tmp.path().join("sha256-ab");
        for dir in [&dead, &other] {
            fs::create_dir(dir).unwrap();
        }
        remove_stale(tmp.path()).unwrap();
        assert!(!dead.exists());
        assert!(mine.path().exists());
        assert!(other.exists());
        assert_eq!(staging_pid(".partial-a-b-12-3"), Some(12));
        assert_eq!(staging_pid(".partial-12-3"), None);
    }
}
