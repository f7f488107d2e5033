//! The sandbox's shared filesystem, laid out as Kata lays it out.
//!
//! The host directory `<sandbox_dir>/shared/` is exported to the guest under the mount tag
//! [`MOUNT_TAG`] (`kataShared`), by QEMU's virtio-9p or by virtio-fs; the guest agent mounts it
//! at [`GUEST_SHARED_DIR`]. Each container's rootfs is mounted (bind or overlay) at
//! `<shared>/<container_id>/rootfs`, which the guest sees as
//! `/run/kata-containers/shared/containers/<container_id>/rootfs`.
//!
//! The kind is [`kata_hypervisor::SharedFs`] (Kata's `shared_fs` key): `virtio-9p` and
//! `virtio-fs` are set up here; `none` means the sandbox has no shared directory (see
//! [`crate::SandboxResources`]); other kinds are refused with [`Error::UnsupportedSharedFs`].
//!
//! For `virtio-fs`, [`ShareFs::with_config`] also starts the sandbox's virtiofsd
//! ([`virtiofsd`]: sandboxed, supervised, adopted after a restart, stopped on release), after
//! making the shared directory a shared mount of its own so the rootfs mounts made in it later
//! reach the daemon's private mount namespace.
//!
//! [`ShareFs`] owns the directory; [`SharedRootfs`] owns one container's mount. Ownership can
//! be handed to another process: [`ShareFs::detach`] and [`SharedRootfs::detach`] leave the
//! directory and mounts in place, [`ShareFs::adopt`] and [`ShareFs::adopt_rootfs`] take them
//! over again with the same release-on-drop duties. The hypervisor
//! side (turning the tag and path into QEMU arguments) belongs to `kata-hypervisor`; the guest
//! side (the mount the agent performs) is described by [`ShareFs::storage`].

mod rootfs;
pub(crate) use rootfs::unmount_stack;
pub mod virtiofsd;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kata_hypervisor::{HypervisorConfig, ShareFsDevice, SharedFs};

use crate::error::IoContext;
use crate::{mount, Error, GuestStorage, Result};

pub use rootfs::{RootfsMode, SharedRootfs};
pub use virtiofsd::{
    DaemonExit, Virtiofsd, VirtiofsdConfig, VirtiofsdError, VirtiofsdRestarter, VirtiofsdState,
};

/// How the sandbox's shared directory is exported: the kind and its settings (Kata's
/// `shared_fs`, `msize_9p` and the `virtio_fs_*` keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareFsConfig {
    /// `shared_fs`.
    pub kind: SharedFs,
    /// `msize_9p` (for `virtio-9p`).
    pub msize_9p: u32,
    /// How virtiofsd runs (for `virtio-fs`).
    pub virtiofsd: VirtiofsdConfig,
}

impl ShareFsConfig {
    /// `kind` with `msize_9p` and the default virtiofsd settings
    /// ([`VirtiofsdConfig::default`]).
    pub fn new(kind: SharedFs, msize_9p: u32) -> Self {
        ShareFsConfig {
            kind,
            msize_9p,
            virtiofsd: VirtiofsdConfig::default(),
        }
    }

    /// The settings of a `[hypervisor.*]` section. For `virtio-fs` the virtiofsd settings are
    /// checked ([`VirtiofsdConfig::from_hypervisor`]): what it cannot honour is refused,
    /// naming the key; for other kinds they are not used.
    pub fn from_hypervisor(hv: &HypervisorConfig) -> Result<Self> {
        let virtiofsd = if hv.shared_fs == SharedFs::VirtioFs {
            VirtiofsdConfig::from_hypervisor(hv)?
        } else {
            VirtiofsdConfig::default()
        };
        Ok(ShareFsConfig {
            kind: hv.shared_fs,
            msize_9p: hv.msize_9p,
            virtiofsd,
        })
    }
}

/// The mount tag under which the shared directory is exported to the guest.
pub const MOUNT_TAG: &str = "kataShared";

/// Where the guest agent mounts the shared directory.
pub const GUEST_SHARED_DIR: &str = "/run/kata-containers/shared/containers";

/// Kata's default 9p `msize` (the `msize_9p` configuration key).
pub const DEFAULT_MSIZE_9P: u32 = 8192;

/// The name of the shared directory inside the sandbox directory.
const SHARED_DIR_NAME: &str = "shared";

/// The name of the directory holding overlay upper and work dirs inside the sandbox directory.
/// It is not under `shared/`, so the guest never sees it.
const OVERLAY_DIR_NAME: &str = "rootfs-overlay";

/// The sandbox's shared directory, `<sandbox_dir>/shared/`.
///
/// Created by [`ShareFs::new`], removed (with everything mounted under it) when the `ShareFs`
/// and every [`SharedRootfs`] made from it are dropped.
///
/// ```no_run
/// use kata_hypervisor::SharedFs;
/// use kata_resource::share_fs::ShareFs;
///
/// # fn main() -> kata_resource::Result<()> {
/// let share_fs = ShareFs::new("/run/kata/sandbox-1", SharedFs::Virtio9p)?;
/// assert_eq!(share_fs.mount_tag(), "kataShared");
/// let storage = share_fs.storage(); // send this to the agent with CreateSandbox
/// assert_eq!(storage.fstype, "9p");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ShareFs {
    /// The virtiofsd serving the directory (`virtio-fs`); stopped before the directory goes.
    daemon: Option<Virtiofsd>,
    dirs: Arc<ShareFsDirs>,
    kind: SharedFs,
    msize_9p: u32,
}

impl ShareFs {
    /// Creates `<sandbox_dir>/shared/` (and `sandbox_dir` if missing).
    ///
    /// Fails with [`Error::UnsupportedSharedFs`] for a kind other than `virtio-9p` and
    /// `virtio-fs`, and with [`Error::ShareFsExists`] if the shared directory exists already:
    /// another sandbox uses it, or one crashed ([`ShareFs::remove_stale`] cleans up after it).
    pub fn new(sandbox_dir: impl AsRef<Path>, kind: SharedFs) -> Result<Self> {
        check_kind(kind)?;
        let sandbox_dir = sandbox_dir.as_ref();
        fs::create_dir_all(sandbox_dir).at("create directory", sandbox_dir)?;
        // Canonical, so paths compare equal to those in /proc/self/mountinfo.
        let sandbox_dir = sandbox_dir
            .canonicalize()
            .at("resolve directory", sandbox_dir)?;
        let shared = sandbox_dir.join(SHARED_DIR_NAME);
        // Root's only (issue 9 row 1): it holds every container's rootfs.
        match std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
            .create(&shared)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::ShareFsExists { path: shared });
            }
            Err(e) => return Err(e).at("create directory", &shared),
        }
        tracing::debug!(path = %shared.display(), %kind, "created share-fs directory");
        Ok(Self::owning(&sandbox_dir, kind))
    }

    /// Creates the shared directory as [`new`](Self::new) does and, for `virtio-fs`, starts
    /// its virtiofsd ([`start_daemon`](Self::start_daemon)). On error nothing is left.
    pub fn with_config(sandbox_dir: impl AsRef<Path>, config: &ShareFsConfig) -> Result<Self> {
        let mut share = ShareFs::new(sandbox_dir, config.kind)?.with_msize_9p(config.msize_9p);
        if config.kind == SharedFs::VirtioFs {
            // On error `share` is dropped: the directory (and its self-bind) go.
            share.start_daemon(&config.virtiofsd)?;
        }
        Ok(share)
    }

    /// Starts the virtiofsd that serves this `virtio-fs` share, with its socket and log in the
    /// sandbox directory. The shared directory is first made a shared mount (a bind of itself,
    /// `nosuid,nodev`), so rootfs mounts made under it later reach the daemon's mount
    /// namespace. On error the daemon is gone.
    pub fn start_daemon(&mut self, config: &VirtiofsdConfig) -> Result<()> {
        if self.kind != SharedFs::VirtioFs || self.daemon.is_some() {
            return Ok(());
        }
        virtiofsd::make_shared_mount(&self.dirs.shared)?;
        let sandbox_dir = self.sandbox_dir().to_owned();
        self.daemon = Some(Virtiofsd::start(&sandbox_dir, &self.dirs.shared, config)?);
        self.dirs.daemon_copies.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Takes over the virtiofsd a detached owner left for this `virtio-fs` share, as `state`
    /// records it (see [`Virtiofsd::adopt`]). A `virtio-fs` share without a recorded daemon
    /// is [`Error::NotAdoptable`]; other kinds have none.
    pub fn adopt_daemon(&mut self, state: Option<&VirtiofsdState>) -> Result<()> {
        if self.kind != SharedFs::VirtioFs {
            return Ok(());
        }
        let Some(state) = state else {
            return Err(Error::NotAdoptable {
                path: self.dirs.shared.clone(),
                reason: "the state records no virtiofsd for this virtio-fs share".into(),
            });
        };
        let sandbox_dir = self.sandbox_dir().to_owned();
        self.daemon = Some(Virtiofsd::adopt(&sandbox_dir, &self.dirs.shared, state)?);
        self.dirs.daemon_copies.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The virtiofsd serving the share (`virtio-fs` only): its pid for the host cgroup, its
    /// [exit](Virtiofsd::exit) for the liveness monitor.
    pub fn daemon(&self) -> Option<&Virtiofsd> {
        self.daemon.as_ref()
    }

    /// Restarts the share's virtiofsd on the same socket ([`Virtiofsd::restart`]): what a
    /// second boot of the VMM needs, since the daemon exits with the VMM it served. Does
    /// nothing for the kinds without a daemon.
    pub fn restart_daemon(&self) -> Result<()> {
        self.daemon.as_ref().map_or(Ok(()), Virtiofsd::restart)
    }

    /// A handle that restarts the share's virtiofsd from elsewhere (a hypervisor's reboot
    /// hook) without keeping it alive; `None` for the kinds without a daemon.
    pub fn daemon_restarter(&self) -> Option<VirtiofsdRestarter> {
        self.daemon.as_ref().map(Virtiofsd::restarter)
    }

    /// The device that exports the share to the VM: the tag, the directory, the kind and, for
    /// `virtio-fs`, the daemon's vhost-user socket.
    pub fn device(&self) -> ShareFsDevice {
        ShareFsDevice {
            mount_tag: MOUNT_TAG.to_owned(),
            host_path: self.dirs.shared.clone(),
            kind: self.kind,
            vhost_user_socket: self.daemon.as_ref().map(|d| d.socket().to_owned()),
        }
    }

    fn sandbox_dir(&self) -> &Path {
        self.dirs.shared.parent().unwrap_or(Path::new("/"))
    }

    fn owning(sandbox_dir: &Path, kind: SharedFs) -> Self {
        ShareFs {
            daemon: None,
            dirs: Arc::new(ShareFsDirs {
                shared: sandbox_dir.join(SHARED_DIR_NAME),
                overlay: sandbox_dir.join(OVERLAY_DIR_NAME),
                kept: AtomicBool::new(false),
                daemon_copies: AtomicBool::new(false),
            }),
            kind,
            msize_9p: DEFAULT_MSIZE_9P,
        }
    }

    /// Takes over the shared directory `<sandbox_dir>/shared/` that another `ShareFs` (in this
    /// process or one that exited) created and [detached](Self::detach): from now on this one
    /// removes it, with everything mounted under it, when it and its [`SharedRootfs`]es are
    /// dropped. Container rootfs mounts are taken over with [`adopt_rootfs`](Self::adopt_rootfs).
    ///
    /// Fails with [`Error::NotAdoptable`] if the directory does not exist, and with
    /// [`Error::UnsupportedSharedFs`] for a kind [`ShareFs::new`] refuses.
    pub fn adopt(sandbox_dir: impl AsRef<Path>, kind: SharedFs) -> Result<Self> {
        check_kind(kind)?;
        let sandbox_dir = sandbox_dir.as_ref();
        let not_there = |reason: &str| Error::NotAdoptable {
            path: sandbox_dir.join(SHARED_DIR_NAME),
            reason: reason.to_owned(),
        };
        let sandbox_dir = match sandbox_dir.canonicalize() {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_there("the sandbox directory does not exist"))
            }
            Err(e) => return Err(e).at("resolve directory", sandbox_dir),
        };
        if !sandbox_dir.join(SHARED_DIR_NAME).is_dir() {
            return Err(not_there("the shared directory does not exist"));
        }
        tracing::debug!(sandbox_dir = %sandbox_dir.display(), %kind, "adopted share-fs directory");
        Ok(Self::owning(&sandbox_dir, kind))
    }

    /// Takes over the rootfs mount of `container_id` (`<shared>/<container_id>/rootfs`, and in
    /// [`RootfsMode::Overlay`] its upper and work directories) that a detached
    /// [`SharedRootfs`] left: releasing or dropping the returned one unmounts and removes it.
    ///
    /// Fails with [`Error::NotAdoptable`] if the rootfs is not mounted there (or, for an
    /// overlay, its directory is missing); nothing is changed then.
    pub fn adopt_rootfs(&self, container_id: &str, mode: RootfsMode) -> Result<SharedRootfs> {
        SharedRootfs::adopt(Arc::clone(&self.dirs), container_id, mode)
    }

    /// Gives up ownership: the shared directory and every mount under it stay when this
    /// `ShareFs` and its [`SharedRootfs`]es are dropped (detach those too, or their own mounts
    /// are still released), for [`ShareFs::adopt`] to take over in this process or another.
    pub fn detach(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.detach();
        }
        self.dirs.kept.store(true, Ordering::SeqCst);
        tracing::debug!(path = %self.dirs.shared.display(), "share-fs directory detached");
    }

    /// Removes the shared directory (and the overlay directories) now, with everything still
    /// mounted under them, if no [`SharedRootfs`] made from this `ShareFs` is alive; otherwise
    /// the last of them does it when dropped, as it would without this call.
    pub fn release(mut self) -> Result<()> {
        // The daemon first: it serves the directory.
        let daemon = self.daemon.take().map_or(Ok(()), Virtiofsd::release);
        let dirs = std::mem::replace(&mut self.dirs, Arc::new(ShareFsDirs::kept()));
        daemon?;
        match Arc::try_unwrap(dirs) {
            Ok(dirs) => {
                // Done here, with its error returned, not again in the drop.
                dirs.kept.store(true, Ordering::SeqCst);
                dirs.remove()
            }
            Err(_still_shared) => Ok(()),
        }
    }

    /// Sets the 9p `msize` the guest mounts with (Kata's `msize_9p`, default 8192).
    pub fn with_msize_9p(mut self, msize: u32) -> Self {
        self.msize_9p = msize;
        self
    }

    /// Unmounts and removes what a crashed sandbox left in `sandbox_dir`: its virtiofsd (found
    /// by its command line, see [`virtiofsd::remove_stale`]) with its socket and log, the
    /// shared directory and the overlay directories. Does nothing if there is nothing to
    /// remove.
    pub fn remove_stale(sandbox_dir: impl AsRef<Path>) -> Result<()> {
        let sandbox_dir = sandbox_dir.as_ref();
        let sandbox_dir = match sandbox_dir.canonicalize() {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).at("resolve directory", sandbox_dir),
        };
        virtiofsd::remove_stale(&sandbox_dir, &sandbox_dir.join(SHARED_DIR_NAME));
        for dir in [SHARED_DIR_NAME, OVERLAY_DIR_NAME] {
            unmount_and_remove(&sandbox_dir.join(dir))?;
        }
        Ok(())
    }

    /// The shared directory on the host, `<sandbox_dir>/shared`: the path the hypervisor exports.
    pub fn host_path(&self) -> &Path {
        &self.dirs.shared
    }

    /// The mount tag the hypervisor exports the directory under, [`MOUNT_TAG`].
    pub fn mount_tag(&self) -> &'static str {
        MOUNT_TAG
    }

    /// Where the guest mounts the shared directory, [`GUEST_SHARED_DIR`].
    pub fn guest_mount_point(&self) -> &'static str {
        GUEST_SHARED_DIR
    }

    /// How the directory reaches the guest: `virtio-9p` or `virtio-fs`.
    pub fn kind(&self) -> SharedFs {
        self.kind
    }

    /// The 9p `msize` the guest mounts with.
    pub fn msize_9p(&self) -> u32 {
        self.msize_9p
    }

    /// The guest mount of the shared directory, as Kata's runtime sends it to the agent.
    pub fn storage(&self) -> GuestStorage {
        let (driver, fstype, options) = match self.kind {
            SharedFs::Virtio9p => (
                "9p",
                "9p",
                vec![
                    "trans=virtio,version=9p2000.L,cache=mmap".to_owned(),
                    "nodev".to_owned(),
                    format!("msize={}", self.msize_9p),
                ],
            ),
            // virtio-fs and inline-virtio-fs: the guest mounts virtiofs by tag either way.
            _ => ("virtio-fs", "virtiofs", Vec::new()),
        };
        GuestStorage {
            driver: driver.to_owned(),
            source: MOUNT_TAG.to_owned(),
            fstype: fstype.to_owned(),
            options,
            mount_point: GUEST_SHARED_DIR.to_owned(),
            driver_options: Vec::new(),
        }
    }

    /// Shares `source` as the rootfs of `container_id`, read-write: bind-mounts it at
    /// `<shared>/<container_id>/rootfs`. Writes in the container reach `source`.
    pub fn share_rootfs(&self, container_id: &str, source: &Path) -> Result<SharedRootfs> {
        self.share_rootfs_with(container_id, source, RootfsMode::ReadWrite)
    }

    /// Shares `source` as the rootfs of `container_id` in the given mode.
    ///
    /// The container id is validated first ([`crate::validate_container_id`]). On any error
    /// nothing is left behind: no mount, no directory.
    pub fn share_rootfs_with(
        &self,
        container_id: &str,
        source: &Path,
        mode: RootfsMode,
    ) -> Result<SharedRootfs> {
        SharedRootfs::new(Arc::clone(&self.dirs), container_id, source, mode)
    }
}

/// The directories a [`ShareFs`] created; shared with its [`SharedRootfs`]es so the last owner
/// removes them.
#[derive(Debug)]
struct ShareFsDirs {
    /// `<sandbox_dir>/shared`.
    shared: PathBuf,
    /// `<sandbox_dir>/rootfs-overlay`, created on the first overlay share.
    overlay: PathBuf,
    /// Set by [`ShareFs::detach`]: the directories outlive their owners.
    kept: AtomicBool,
    /// Set once a virtiofsd serves the directory: its mount namespace holds copies of the
    /// mounts made here, so they are detached on release (see `rootfs::unmount_stack`).
    daemon_copies: AtomicBool,
}

impl ShareFsDirs {
    /// A placeholder that owns nothing (what a released [`ShareFs`] is left with).
    fn kept() -> Self {
        ShareFsDirs {
            shared: PathBuf::new(),
            overlay: PathBuf::new(),
            kept: AtomicBool::new(true),
            daemon_copies: AtomicBool::new(false),
        }
    }

    /// Unmounts and removes both directories; the first error is returned after trying both.
    fn remove(&self) -> Result<()> {
        let mut first = Ok(());
        for dir in [&self.shared, &self.overlay] {
            if let Err(e) = unmount_and_remove(dir) {
                tracing::error!(dir = %dir.display(), "cannot remove share-fs directory: {e}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for ShareFsDirs {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::SeqCst) {
            let _logged = self.remove();
        }
    }
}

/// The kinds a [`ShareFs`] can be: `virtio-9p`, `virtio-fs` and `inline-virtio-fs` (served by
/// the built-in VMM itself: no daemon is started here).
fn check_kind(kind: SharedFs) -> Result<()> {
    match kind {
        // `inline-virtio-fs`: the VMM serves the directory itself (no daemon here).
        SharedFs::Virtio9p | SharedFs::VirtioFs | SharedFs::InlineVirtioFs => Ok(()),
        other => Err(Error::UnsupportedSharedFs {
            shared_fs: other.to_string(),
        }),
    }
}

/// Unmounts everything at or under `dir`, then removes it. If a mount remains, nothing is
/// removed: removing files through a mount would destroy its source.
fn unmount_and_remove(dir: &Path) -> Result<()> {
    let mounts = mount::mount_points_under(dir).at("read", Path::new("/proc/self/mountinfo"))?;
    for mount_point in &mounts {
        // The directory's own self-bind (virtio-fs) is expected; anything below is a leftover.
        if mount_point != dir {
            tracing::warn!(mount = %mount_point.display(), "unmounting a leftover share-fs mount");
        }
        if let Err(e) = mount::unmount(mount_point) {
            tracing::error!("{e}");
        }
    }
    if !mounts.is_empty() {
        let left = mount::mount_points_under(dir).at("read", Path::new("/proc/self/mountinfo"))?;
        if !left.is_empty() {
            return Err(Error::MountsRemain {
                dir: dir.to_owned(),
                mounts: left,
            });
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at("remove directory", dir),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
