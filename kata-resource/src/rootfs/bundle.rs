//! An OCI bundle's rootfs: its spec's `root.path`, checked to stay inside the bundle, with
//! containerd's rootfs mounts ([`RootfsMount`]) mounted on it and taken off again.
//!
//! [`bundle_rootfs_path`] is the lexical check (no `..`, an absolute `root.path` only inside the
//! bundle). [`BundleRootfs`] then resolves symlinks and checks again before it mounts anything,
//! so neither `root.path = "/"` nor a `rootfs` symlink to `/` gets the host root mounted over or
//! shared. It owns the mounts it made: released on [`release`](BundleRootfs::release_in_place)
//! or drop (everything stacked on the mount point, lazily when busy), left in place by
//! [`detach`](BundleRootfs::detach) for [`adopt`](BundleRootfs::adopt).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::RootfsMount;
use crate::error::IoContext;
use crate::fail_point::{fail_point, Step};
use crate::path::{checked_absolute, checked_within};
use crate::{mount, Error, Result};

/// The `root.path` OCI's default bundle layout uses, and the one a spec without `root` gets.
pub const DEFAULT_ROOT_PATH: &str = "rootfs";

/// The rootfs directory of the OCI bundle `bundle`: its spec's `root.path` (`None`:
/// [`DEFAULT_ROOT_PATH`]), relative to the bundle or absolute, and strictly inside the bundle.
///
/// A lexical check (see [`crate::path_within`]); the error names `root.path`.
///
/// ```
/// use std::path::Path;
/// use kata_resource::rootfs::bundle_rootfs_path;
///
/// let bundle = Path::new("/run/containerd/io.containerd.runtime.v2.task/default/c1");
/// assert_eq!(bundle_rootfs_path(bundle, None)?, bundle.join("rootfs"));
/// let err = bundle_rootfs_path(bundle, Some(Path::new("/"))).unwrap_err();
/// assert!(err.to_string().starts_with("root.path / is refused"));
/// # Ok::<(), kata_resource::Error>(())
/// ```
pub fn bundle_rootfs_path(bundle: &Path, root_path: Option<&Path>) -> Result<PathBuf> {
    let bundle = checked_absolute(bundle, "bundle")?;
    let root_path = root_path.unwrap_or(Path::new(DEFAULT_ROOT_PATH));
    checked_within(&bundle, root_path, "root.path")
}

/// The rootfs of one bundle, with the containerd mounts this crate made on it.
#[derive(Debug)]
pub(crate) struct BundleRootfs {
    /// The bundle, canonical.
    bundle: PathBuf,
    /// The rootfs directory, canonical, inside `bundle`.
    target: PathBuf,
    /// What was (or is to be) mounted on `target`, bottom first.
    mounts: Vec<RootfsMount>,
    /// Our mounts are on `target`: released on drop.
    mounted: bool,
    /// `target` was created here: removed on release.
    created_target: bool,
}

impl BundleRootfs {
    /// Resolves the rootfs of `bundle` (see [`bundle_rootfs_path`]) and mounts `mounts` on it
    /// in order (none: the directory is used as it is). On error nothing is left mounted and a
    /// mount point created here is removed again.
    pub(crate) fn mount(
        bundle: &Path,
        root_path: Option<&Path>,
        mounts: Vec<RootfsMount>,
    ) -> Result<Self> {
        let lexical = bundle_rootfs_path(bundle, root_path)?;
        let bundle = bundle.canonicalize().at("resolve bundle", bundle)?;
        let calls = mounts
            .iter()
            .map(|m| m.to_call(&lexical))
            .collect::<Result<Vec<_>>>()?;
        let mut rootfs = BundleRootfs {
            target: lexical.clone(),
            bundle,
            mounts,
            mounted: false,
            created_target: false,
        };
        // From here on an early return drops `rootfs`, which undoes what it records.
        if !rootfs.mounts.is_empty() && !lexical.exists() {
            fail_point(Step::BundleTarget)?;
            // Only the last component, in a parent resolved and checked first: the parent is
            // the bundle's business, and must not lead out of it.
            let (Some(parent), Some(name)) = (lexical.parent(), lexical.file_name()) else {
                return Err(Error::PathNotWithin {
                    field: "root.path",
                    path: lexical,
                    root: rootfs.bundle.clone(),
                    reason: "it has no parent directory",
                });
            };
            let parent = parent.canonicalize().at("resolve directory", parent)?;
            if !parent.starts_with(&rootfs.bundle) {
                return Err(Error::PathNotWithin {
                    field: "root.path",
                    path: lexical,
                    root: rootfs.bundle.clone(),
                    reason: "its parent resolves (through a symlink) outside the bundle",
                });
            }
            let create = parent.join(name);
            fs::create_dir(&create).at("create rootfs mount point", &create)?;
            rootfs.target = create;
            rootfs.created_target = true;
        }
        rootfs.target = rootfs.resolve(&rootfs.target.clone())?;
        for (i, call) in calls.iter().enumerate() {
            fail_point(Step::BundleMount(i))?;
            if let Err(e) = call.mount_on(&rootfs.target) {
                for _ in 0..i {
                    if let Err(e) = mount::unmount(&rootfs.target) {
                        tracing::error!("cannot undo a rootfs mount: {e}");
                    }
                }
                return Err(e);
            }
            rootfs.mounted = true;
        }
        fail_point(Step::BundleDone)?;
        tracing::debug!(
            target = %rootfs.target.display(),
            mounts = rootfs.mounts.len(),
            "bundle rootfs ready"
        );
        Ok(rootfs)
    }

    /// `lexical` with symlinks resolved, refused unless it is a directory strictly inside the
    /// bundle.
    fn resolve(&self, lexical: &Path) -> Result<PathBuf> {
        let refuse = |reason: &'static str| Error::PathNotWithin {
            field: "root.path",
            path: lexical.to_owned(),
            root: self.bundle.clone(),
            reason,
        };
        let target = lexical.canonicalize().at("resolve rootfs", lexical)?;
        if target == self.bundle || !target.starts_with(&self.bundle) {
            return Err(refuse("it resolves (through a symlink) outside the bundle"));
        }
        if !target.is_dir() {
            return Err(refuse("it is not a directory"));
        }
        Ok(target)
    }

    /// Takes over the rootfs of `bundle` at `target` with `mounts` on it, as a detached
    /// `BundleRootfs` recorded them. Fails with [`Error::NotAdoptable`] if the mounts are not
    /// there; nothing is changed then.
    pub(crate) fn adopt(bundle: &Path, target: &Path, mounts: &[RootfsMount]) -> Result<Self> {
        let target = checked_within(&checked_absolute(bundle, "bundle")?, target, "root.path")?;
        let mounted = !mounts.is_empty();
        if mounted
            && !mount::is_mount_point(&target).at("read", Path::new("/proc/self/mountinfo"))?
        {
            return Err(Error::NotAdoptable {
                path: target,
                reason: "the bundle rootfs is not mounted there".into(),
            });
        }
        Ok(BundleRootfs {
            bundle: bundle.to_owned(),
            target,
            mounts: mounts.to_vec(),
            mounted,
            created_target: false,
        })
    }

    /// Unmounts what a crashed owner recorded: everything stacked on `target` if `mounts` is
    /// not empty, `target` is inside `bundle` and is a mount point. Returns how many mounts
    /// were taken off.
    pub(crate) fn cleanup(bundle: &Path, target: &Path, mounts: &[RootfsMount]) -> Result<usize> {
        let target = checked_within(&checked_absolute(bundle, "bundle")?, target, "root.path")?;
        if mounts.is_empty() {
            return Ok(0);
        }
        match mount::is_mount_point(&target) {
            Ok(true) => mount::unmount_all(&target),
            Ok(false) => Ok(0),
            Err(e) => Err(e).at("read", Path::new("/proc/self/mountinfo")),
        }
    }

    /// The bundle, canonical.
    pub(crate) fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// The rootfs directory: what is shared with the guest.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// containerd's mounts on the target.
    pub(crate) fn mounts(&self) -> &[RootfsMount] {
        &self.mounts
    }

    /// Unmounts everything stacked on the target and removes a mount point created here. What
    /// fails stays recorded for the next try (or the drop).
    pub(crate) fn release_in_place(&mut self) -> Result<()> {
        if self.mounted {
            mount::unmount_all(&self.target)?;
            self.mounted = false;
        }
        if self.created_target {
            match fs::remove_dir(&self.target) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).at("remove rootfs mount point", &self.target);
                }
                _ => self.created_target = false,
            }
        }
        Ok(())
    }

    /// Gives up ownership: the mounts stay, for [`adopt`](Self::adopt).
    pub(crate) fn detach(mut self) {
        self.mounted = false;
        self.created_target = false;
    }
}

impl Drop for BundleRootfs {
    fn drop(&mut self) {
        if let Err(e) = self.release_in_place() {
            tracing::error!(target = %self.target.display(), "cannot release the bundle rootfs: {e}");
        }
    }
}
