//! GetVolumeStats: how full a volume's filesystem is, in bytes and in inodes, as Kata's agent
//! answers it (`statfs(2)` of the volume's guest path: total `f_blocks * f_bsize`, available
//! `f_bfree * f_bsize`, used the difference; inodes from `f_files` and `f_ffree`).
//!
//! The path is the host's to name (any guest path, as in Kata's agent); only sizes of the
//! filesystem under it are read, nothing is opened for reading or writing.

use std::path::Path;

use nix::sys::statfs::statfs;

use crate::error::{AgentError, Result};

/// A filesystem's usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeStats {
    /// Bytes in the filesystem.
    pub bytes_total: u64,
    /// Bytes free (`f_bfree`, as Kata's agent counts them).
    pub bytes_available: u64,
    /// Inodes in the filesystem.
    pub inodes_total: u64,
    /// Inodes free.
    pub inodes_available: u64,
}

impl VolumeStats {
    /// Bytes in use.
    pub fn bytes_used(&self) -> u64 {
        self.bytes_total.saturating_sub(self.bytes_available)
    }

    /// Inodes in use.
    pub fn inodes_used(&self) -> u64 {
        self.inodes_total.saturating_sub(self.inodes_available)
    }
}

/// The usage of the filesystem `path` is on. A path that does not exist is an `INTERNAL`
/// error naming it, as Kata's agent fails to open it.
pub fn volume_stats(path: &Path) -> Result<VolumeStats> {
    if path.as_os_str().is_empty() || !path.is_absolute() {
        return Err(AgentError::io(
            format!("GetVolumeStats {:?}", path.display().to_string()),
            std::io::Error::other("volume_guest_path must be an absolute guest path"),
        ));
    }
    let st = statfs(path)
        .map_err(|e| AgentError::sys(format!("GetVolumeStats: statfs {}", path.display()), e))?;
    let bsize = st.block_size() as u64;
    Ok(VolumeStats {
        bytes_total: (st.blocks() as u64).saturating_mul(bsize),
        bytes_available: (st.blocks_free() as u64).saturating_mul(bsize),
        inodes_total: st.files() as u64,
        inodes_available: st.files_free() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmpfs_of_a_known_size() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4m,nr_inodes=1000"),
        )
        .unwrap();
        std::fs::write(dir.path().join("f"), vec![0u8; 1 << 20]).unwrap();
        let st = volume_stats(dir.path());
        nix::mount::umount(dir.path()).unwrap();
        let st = st.unwrap();
        assert_eq!(st.bytes_total, 4 << 20);
        assert!(st.bytes_used() >= 1 << 20, "{st:?}");
        assert_eq!(st.inodes_total, 1000);
        assert!(st.inodes_used() >= 2, "the root and f: {st:?}");
    }

    #[test]
    fn a_missing_or_relative_path_is_an_error_naming_it() {
        let err = volume_stats(Path::new("/nonexistent/kata-rs-volume")).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(
            err.to_string().contains("/nonexistent/kata-rs-volume"),
            "{err}"
        );
        assert!(volume_stats(Path::new("rel")).is_err());
        assert!(volume_stats(Path::new("")).is_err());
    }
}
