//! One host file or directory shared into the guest: checked, bound at `<shared>/<name>`
//! (staged so it is `nosuid,nodev` and read-only if asked from the moment any namespace sees
//! it), unmounted and removed on release or drop.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::{mount, safe_child, Error, Result};

use super::state::SharedVolumeState;

/// The directory of staging mounts inside the sandbox directory (never under `shared/`, so the
/// guest never sees it); empty but for a volume being set up.
pub(crate) const STAGING_DIR_NAME: &str = "volume-staging";

/// A host source, checked and pinned by an `O_PATH` descriptor: what was checked is what is
/// mounted.
#[derive(Debug)]
pub(crate) struct CheckedSource {
    /// The source with every symlink resolved.
    pub path: PathBuf,
    /// Pins it.
    fd: fs::File,
    /// A directory (else a regular file).
    pub directory: bool,
}

impl CheckedSource {
    /// `/proc/self/fd/<n>`: the pinned source, for mount(2).
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Checks a bind source named by `field` (`mounts[i].source`): it must exist, be a directory or
/// a regular file, and if it is a symlink, lead to something inside its own directory.
pub(crate) fn check_source(field: &str, source: &Path) -> Result<CheckedSource> {
    let refuse = |reason: String| Error::VolumeRefused {
        field: field.to_owned(),
        path: source.to_owned(),
        reason,
    };
    let meta = match source.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::VolumeSourceNotFound {
                field: field.to_owned(),
                path: source.to_owned(),
            })
        }
        Err(e) => return Err(e).at("inspect", source),
    };
    let resolved = match source.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(refuse("it is a symlink to nothing".into()))
        }
        Err(e) => return Err(e).at("resolve", source),
    };
    if meta.file_type().is_symlink() {
        let dir = source
            .parent()
            .map(Path::canonicalize)
            .transpose()
            .at("resolve", source)?
            .unwrap_or_else(|| PathBuf::from("/"));
        if !resolved.starts_with(&dir) {
            return Err(refuse(format!(
                "it is a symlink leading out of its directory {} (to {}): name the target \
                 itself if it is meant to be shared",
                dir.display(),
                resolved.display()
            )));
        }
    }
    let fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&resolved)
        .at("open", &resolved)?;
    let kind = fd.metadata().at("inspect", &resolved)?.file_type();
    let what = if kind.is_block_device() || kind.is_char_device() {
        Some("a device node")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_fifo() {
        Some("a fifo")
    } else if kind.is_symlink() {
        Some("a symlink (it changed while it was checked)")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(refuse(format!(
            "it is {what}: only files and directories are shared with the guest (a device \
             reaches a container through linux.devices)"
        )));
    }
    // The descriptor must name what was resolved (a rename in between is refused).
    let pinned =
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).at("inspect", &resolved)?;
    if pinned != resolved {
        return Err(refuse(format!(
            "it changed while it was checked ({} is now {})",
            resolved.display(),
            pinned.display()
        )));
    }
    Ok(CheckedSource {
        path: resolved,
        fd,
        directory: kind.is_dir(),
    })
}

/// Creates an empty mount point: a directory, or a file for a file bind. `AlreadyExists` is an
/// error: nothing of someone else's is reused.
fn create_mount_point(path: &Path, directory: bool) -> Result<()> {
    if directory {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .at("create directory", path)
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(drop)
            .at("create file", path)
    }
}

fn remove_mount_point(path: &Path) -> Result<()> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at("remove", path),
        _ => Ok(()),
    }
}

/// A host file or directory bound at `<shared>/<name>`; the guest sees it at
/// `/run/kata-containers/shared/containers/<name>`.
#[derive(Debug)]
pub(crate) struct SharedVolume {
    state: SharedVolumeState,
    /// The mount point exists (ours to remove).
    created: bool,
    /// Mounted (ours to unmount).
    mounted: bool,
}

impl SharedVolume {
    /// Shares `source` as `name` in `shared_dir` (which the guest sees as `guest_dir`), through
    /// a staging mount in `staging_dir`. On error nothing is left: no mount, no mount point.
    pub(crate) fn share(
        (shared_dir, guest_dir): (&Path, &str),
        staging_dir: &Path,
        name: &str,
        source: &CheckedSource,
        read_only: bool,
        recursive: bool,
    ) -> Result<SharedVolume> {
        let target = safe_child(shared_dir, name)?;
        let mut volume = SharedVolume {
            state: SharedVolumeState {
                name: name.to_owned(),
                host_path: target.clone(),
                guest_path: format!("{guest_dir}/{name}"),
                source: source.path.clone(),
                read_only,
                directory: source.directory,
            },
            created: false,
            mounted: false,
        };
        create_mount_point(&target, source.directory)?;
        volume.created = true;
        match fs::DirBuilder::new().mode(0o700).create(staging_dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(e).at("create directory", staging_dir)
            }
            _ => {}
        }
        let staging = safe_child(staging_dir, name)?;
        create_mount_point(&staging, source.directory)?;
        let mounted =
            mount::bind_mount_staged(&source.proc_path(), &staging, &target, read_only, recursive);
        if let Err(e) = remove_mount_point(&staging) {
            tracing::warn!(staging = %staging.display(), "cannot remove a staging mount point: {e}");
        }
        // Removed when empty; another volume being set up keeps it.
        let _ = fs::remove_dir(staging_dir);
        mounted?;
        volume.mounted = true;
        tracing::debug!(
            source = %source.path.display(),
            host_path = %target.display(),
            read_only,
            "volume shared"
        );
        Ok(volume)
    }

    /// Takes over a share a detached owner left, as `state` records it: it must be mounted at
    /// `<shared_dir>/<name>`.
    pub(crate) fn adopt(shared_dir: &Path, state: &SharedVolumeState) -> Result<SharedVolume> {
        let not_adoptable = |reason: &str| Error::NotAdoptable {
            path: state.host_path.clone(),
            reason: reason.to_owned(),
        };
        let expected = safe_child(shared_dir, &state.name)?;
        if expected != state.host_path {
            return Err(not_adoptable(
                "the volume is not recorded where this crate puts it",
            ));
        }
        let mounted =
            mount::is_mount_point(&expected).at("read", Path::new("/proc/self/mountinfo"))?;
        if !mounted {
            return Err(not_adoptable("the volume is not mounted"));
        }
        Ok(SharedVolume {
            state: state.clone(),
            created: true,
            mounted: true,
        })
    }

    /// What persist records of it.
    pub(crate) fn state(&self) -> &SharedVolumeState {
        &self.state
    }

    /// Where the guest sees it.
    pub(crate) fn guest_path(&self) -> &str {
        &self.state.guest_path
    }

    /// Unmounts it and removes its mount point; what fails stays recorded for the next try.
    pub(crate) fn release_in_place(&mut self) -> Result<()> {
        if self.mounted {
            // A share virtiofsd has looked into stays busy in its namespace until the guest
            // forgets the inodes: detached then, quietly, as a rootfs is (see unmount_stack).
            crate::share_fs::unmount_stack(&self.state.host_path, true)?;
            self.mounted = false;
        }
        if self.created {
            remove_mount_point(&self.state.host_path)?;
            self.created = false;
        }
        Ok(())
    }

    /// Gives up ownership: the mount stays for [`adopt`](Self::adopt).
    pub(crate) fn detach(mut self) {
        self.mounted = false;
        self.created = false;
    }
}

impl Drop for SharedVolume {
    fn drop(&mut self) {
        if let Err(e) = self.release_in_place() {
            tracing::error!(host_path = %self.state.host_path.display(), "cannot release a volume: {e}");
        }
    }
}
