//! One container's rootfs in the shared directory: `<shared>/<container_id>/rootfs`, a bind
//! (or overlay) mount of the rootfs the caller gave, unmounted and removed on release or drop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{ShareFsDirs, GUEST_SHARED_DIR};
use crate::error::IoContext;
use crate::fail_point::{fail_point, Step};
use crate::{mount, safe_child, validate_container_id, Error, Result};

/// How a container's rootfs is mounted into the shared directory. Serialized as `read-write`,
/// `read-only` and `overlay` (a sandbox's persisted state records it, to adopt the mount later).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RootfsMode {
    /// A read-write bind mount: the container writes into the source directory.
    #[default]
    ReadWrite,
    /// A read-only bind mount.
    ReadOnly,
    /// An overlay with the source as its read-only lower layer and a per-container upper dir in
    /// the sandbox directory, dropped on release: the container can write, the source (say an
    /// image rootfs in a cache shared by several containers) stays untouched.
    Overlay,
}

/// A container rootfs mounted in the shared directory.
///
/// Made by [`ShareFs::share_rootfs`](super::ShareFs::share_rootfs). [`release`](Self::release)
/// unmounts it and removes its directories; dropping it does the same and logs failures. It
/// keeps the shared directory alive until then.
#[derive(Debug)]
pub struct SharedRootfs {
    container_id: String,
    /// `<shared>/<container_id>`.
    container_dir: PathBuf,
    /// `<shared>/<container_id>/rootfs`: the mount point.
    mount_point: PathBuf,
    /// `<sandbox_dir>/rootfs-overlay/<container_id>` in overlay mode.
    overlay_dir: Option<PathBuf>,
    guest_path: String,
    mode: RootfsMode,
    /// What has been set up so far, so teardown undoes exactly that.
    done: Progress,
    _dirs: Arc<ShareFsDirs>,
}

#[derive(Debug, Default)]
struct Progress {
    container_dir: bool,
    mount_point: bool,
    overlay_dir: bool,
    mounted: bool,
}

impl SharedRootfs {
    pub(super) fn new(
        dirs: Arc<ShareFsDirs>,
        container_id: &str,
        source: &Path,
        mode: RootfsMode,
    ) -> Result<Self> {
        validate_container_id(container_id)?;
        let meta = fs::metadata(source).at("read rootfs", source)?;
        if !meta.is_dir() {
            return Err(Error::RootfsNotADirectory {
                container_id: container_id.to_owned(),
                path: source.to_owned(),
            });
        }
        let container_dir = safe_child(&dirs.shared, container_id)?;
        let mut shared = SharedRootfs {
            container_id: container_id.to_owned(),
            mount_point: container_dir.join("rootfs"),
            container_dir,
            overlay_dir: None,
            guest_path: format!("{GUEST_SHARED_DIR}/{container_id}/rootfs"),
            mode,
            done: Progress::default(),
            _dirs: Arc::clone(&dirs),
        };
        // From here on, an early return drops `shared`, which undoes what `done` records.
        shared.set_up(&dirs, source)?;
        tracing::debug!(
            container_id,
            source = %source.display(),
            mount_point = %shared.mount_point.display(),
            ?mode,
            "shared container rootfs"
        );
        Ok(shared)
    }

    /// Takes over a rootfs mount a detached `SharedRootfs` left in place.
    pub(super) fn adopt(
        dirs: Arc<ShareFsDirs>,
        container_id: &str,
        mode: RootfsMode,
    ) -> Result<Self> {
        validate_container_id(container_id)?;
        let container_dir = safe_child(&dirs.shared, container_id)?;
        let mount_point = container_dir.join("rootfs");
        let mounted =
            mount::is_mount_point(&mount_point).at("read", Path::new("/proc/self/mountinfo"))?;
        if !mounted {
            return Err(Error::NotAdoptable {
                path: mount_point,
                reason: format!("the rootfs of container {container_id} is not mounted there"),
            });
        }
        let overlay_dir = match mode {
            RootfsMode::Overlay => {
                let dir = safe_child(&dirs.overlay, container_id)?;
                if !dir.is_dir() {
                    return Err(Error::NotAdoptable {
                        path: dir,
                        reason: format!(
                            "the overlay directory of container {container_id} does not exist"
                        ),
                    });
                }
                Some(dir)
            }
            RootfsMode::ReadWrite | RootfsMode::ReadOnly => None,
        };
        tracing::debug!(container_id, mount_point = %mount_point.display(), ?mode, "adopted container rootfs");
        Ok(SharedRootfs {
            container_id: container_id.to_owned(),
            container_dir,
            mount_point,
            done: Progress {
                container_dir: true,
                mount_point: true,
                overlay_dir: overlay_dir.is_some(),
                mounted: true,
            },
            overlay_dir,
            guest_path: format!("{GUEST_SHARED_DIR}/{container_id}/rootfs"),
            mode,
            _dirs: dirs,
        })
    }

    fn set_up(&mut self, dirs: &ShareFsDirs, source: &Path) -> Result<()> {
        fail_point(Step::ShareContainerDir)?;
        match fs::create_dir(&self.container_dir) {
            Ok(()) => self.done.container_dir = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::RootfsAlreadyShared {
                    container_id: self.container_id.clone(),
                    path: self.mount_point.clone(),
                });
            }
            Err(e) => return Err(e).at("create directory", &self.container_dir),
        }

        fail_point(Step::ShareMountPoint)?;
        fs::create_dir(&self.mount_point).at("create directory", &self.mount_point)?;
        self.done.mount_point = true;

        match self.mode {
            RootfsMode::ReadWrite | RootfsMode::ReadOnly => {
                fail_point(Step::ShareMount)?;
                let read_only = self.mode == RootfsMode::ReadOnly;
                staged_bind(
                    dirs,
                    &self.container_id,
                    source,
                    &self.mount_point,
                    read_only,
                )?;
                self.done.mounted = true;
            }
            RootfsMode::Overlay => {
                fail_point(Step::ShareOverlayDir)?;
                fs::create_dir_all(&dirs.overlay).at("create directory", &dirs.overlay)?;
                let overlay_dir = safe_child(&dirs.overlay, &self.container_id)?;
                fs::create_dir(&overlay_dir).at("create directory", &overlay_dir)?;
                self.done.overlay_dir = true;
                let (upper, work) = (overlay_dir.join("upper"), overlay_dir.join("work"));
                self.overlay_dir = Some(overlay_dir);
                for dir in [&upper, &work] {
                    fs::create_dir(dir).at("create directory", dir)?;
                }

                fail_point(Step::ShareMount)?;
                mount::overlay_mount(source, &upper, &work, &self.mount_point)?;
                self.done.mounted = true;
            }
        }
        fail_point(Step::ShareDone)
    }

    /// The container this rootfs belongs to.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The mount point on the host, `<sandbox_dir>/shared/<container_id>/rootfs`.
    pub fn host_path(&self) -> &Path {
        &self.mount_point
    }

    /// The rootfs as the guest sees it,
    /// `/run/kata-containers/shared/containers/<container_id>/rootfs`: the OCI spec's
    /// `root.path` for the agent.
    ///
    /// A string rather than a `Path`: it names a path in the guest, not on this host.
    pub fn guest_path(&self) -> &str {
        &self.guest_path
    }

    /// How the rootfs is mounted.
    pub fn mode(&self) -> RootfsMode {
        self.mode
    }

    /// The directory of the overlay's upper and work dirs,
    /// `<sandbox_dir>/rootfs-overlay/<container_id>`, in [`RootfsMode::Overlay`].
    pub fn overlay_dir(&self) -> Option<&Path> {
        self.overlay_dir.as_deref()
    }

    /// Unmounts the rootfs and removes its directories (and its overlay upper dir).
    pub fn release(mut self) -> Result<()> {
        self.tear_down()
    }

    /// [`release`](Self::release) in place: what fails stays recorded, so a later call (or the
    /// drop) tries again.
    pub(crate) fn release_in_place(&mut self) -> Result<()> {
        self.tear_down()
    }

    /// Gives up ownership: the mount and its directories stay, for
    /// [`ShareFs::adopt_rootfs`](super::ShareFs::adopt_rootfs) to take over later.
    pub fn detach(mut self) {
        self.done = Progress::default();
        tracing::debug!(container_id = %self.container_id, "container rootfs detached");
    }

    /// Undoes what `done` records, last step first. Stops at a failed unmount: removing
    /// directories under a live mount would remove the source's files. Whatever is stacked on
    /// the mount point (ours at the bottom) is unmounted.
    fn tear_down(&mut self) -> Result<()> {
        if self.done.mounted {
            unmount_stack(
                &self.mount_point,
                self._dirs.daemon_copies.load(Ordering::SeqCst),
            )?;
            self.done.mounted = false;
        }
        if self.done.mount_point {
            remove_dir_if_present(&self.mount_point)?;
            self.done.mount_point = false;
        }
        if self.done.container_dir {
            remove_dir_if_present(&self.container_dir)?;
            self.done.container_dir = false;
        }
        if self.done.overlay_dir {
            if let Some(dir) = &self.overlay_dir {
                match fs::remove_dir_all(dir) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(e).at("remove directory", dir);
                    }
                    _ => {}
                }
            }
            self.done.overlay_dir = false;
        }
        Ok(())
    }
}

impl Drop for SharedRootfs {
    fn drop(&mut self) {
        if let Err(e) = self.tear_down() {
            tracing::error!(
                container_id = %self.container_id,
                "cannot release the shared rootfs: {e}"
            );
        }
    }
}

/// Binds `source` on `mount_point` (in the shared directory) through a staging mount in
/// `<sandbox_dir>/volume-staging/rootfs-<container_id>` ([`mount::bind_mount_staged`]), so the
/// rootfs is `nosuid,nodev`, and read-only if asked, in every mount namespace it reaches from
/// the first moment: virtiofsd's namespace (the shared directory is a shared mount, so its
/// copy appears with ours) never sees a writable copy, as a bind remounted afterwards would
/// leave it. The staging mount point is removed whatever happens; a crash in between leaves
/// it to [`crate::volume::remove_staging`].
fn staged_bind(
    dirs: &ShareFsDirs,
    container_id: &str,
    source: &Path,
    mount_point: &Path,
    read_only: bool,
) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let sandbox_dir = dirs.shared.parent().unwrap_or(Path::new("/"));
    let staging_dir = safe_child(sandbox_dir, crate::volume::STAGING_DIR_NAME)?;
    match fs::DirBuilder::new().mode(0o700).create(&staging_dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(e).at("create directory", &staging_dir)
        }
        _ => {}
    }
    let staging = safe_child(&staging_dir, &format!("rootfs-{container_id}"))?;
    let made = fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .at("create directory", &staging)
        .and_then(|()| {
            let mounted = mount::bind_mount_staged(source, &staging, mount_point, read_only, false);
            if let Err(e) = fs::remove_dir(&staging) {
                tracing::warn!(staging = %staging.display(), "cannot remove a staging mount point: {e}");
            }
            mounted
        });
    // Removed when empty; a volume being set up keeps it.
    let _ = fs::remove_dir(&staging_dir);
    made
}

/// How many mounts stacked on one mount point are taken off before giving up.
const MAX_STACKED: usize = 16;

/// Unmounts everything stacked on `mount_point`, top first (none there is not an error).
///
/// `daemon_copies` (virtio-fs): virtiofsd's own mount namespace holds a slave copy of every
/// mount made in the shared directory (that is how a rootfs mounted after the daemon started
/// reaches it), and the daemon keeps descriptors open in that copy for what the guest has
/// looked up, until the guest forgets those inodes, which it does when its caches shrink, not
/// when a container goes. The kernel refuses to unmount a mount while any of its propagated
/// copies is busy (`EBUSY`), so there a plain unmount fails in the ordinary case, whatever the
/// order of the guest's and the host's unmounts. The mount is then detached (`MNT_DETACH`),
/// which takes it out of every namespace at once (the daemon's copy goes with ours) and frees
/// it when the daemon lets go; Kata's runtime detaches every shared mount the same way. That
/// is expected, so it is logged at debug level. Without a daemon (virtio-9p: QEMU serves the
/// share from our namespace) a busy mount is an anomaly and keeps its warning.
pub(crate) fn unmount_stack(mount_point: &Path, daemon_copies: bool) -> Result<()> {
    use nix::errno::Errno;
    use nix::mount::{umount2, MntFlags};
    if !daemon_copies {
        return mount::unmount_all(mount_point).map(drop);
    }
    let flags = MntFlags::UMOUNT_NOFOLLOW;
    let failed = |errno| Error::Unmount {
        target: mount_point.to_owned(),
        errno,
    };
    for _ in 0..MAX_STACKED {
        match umount2(mount_point, flags) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => {
                tracing::debug!(
                    target = %mount_point.display(),
                    "virtiofsd's copy of the mount is in use: detaching it"
                );
                umount2(mount_point, flags | MntFlags::MNT_DETACH).map_err(failed)?;
            }
            Err(errno) => return Err(failed(errno)),
        }
    }
    Err(Error::MountsRemain {
        dir: mount_point.to_owned(),
        mounts: vec![mount_point.to_owned()],
    })
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at("remove directory", dir),
        _ => Ok(()),
    }
}
