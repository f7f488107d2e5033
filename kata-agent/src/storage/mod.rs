//! Storages: filesystems the host asks the agent to make in the guest (CreateSandbox and
//! CreateContainer `storages`): the shared directory over virtio-fs or 9p, block devices,
//! bind mounts of guest paths, tmpfs volumes (`ephemeral`) and directories (`local`).
//!
//! A storage is keyed by its mount point and reference counted as in Kata's agent
//! ([`StorageTable`]): a second request for the same mount point (the sandbox's and a
//! container's, or two containers') shares the first; the storage is unmounted and the
//! directories the agent made for it removed with its last user (a `local` directory with its
//! contents). A request's storages are all checked before the first is mounted, and a failure
//! releases what the request had taken.

mod block;
mod ephemeral;
mod local;
mod overlay;
mod table;
pub mod update;
mod watchable;

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::error::{AgentError, Result};
use crate::mount::{mount_with, MountOptions};

pub use block::resolve_devices;
pub use table::StorageTable;

/// The drivers this agent handles, as named in `Storage.driver` (and listed in
/// GetGuestDetails' `storage_handlers`).
///
/// Kata's names first (its agent's storage handlers): `blk` (virtio-blk on PCI, source a PCI
/// path), `mmioblk` (virtio-blk on MMIO, source the `/dev` node), `scsi`, `nvdimm`,
/// `virtio-fs`, `local`, `ephemeral`, `watchable-bind` (`watchable`), `overlayfs` (an overlay
/// the runtime describes, `overlay`). Then two kata-rs
/// extensions that Kata's agent refuses:
/// `9p` (sent only when the runtime is configured with `shared_fs = "virtio-9p"`, which Kata
/// has removed) and `bind` (a bind mount of a guest path: the host-tier tests' stand-in for
/// the shared directory; no runtime sends it). See `kata-agent/INTEROP.md`.
pub const DRIVERS: &[&str] = &[
    "blk",
    "mmioblk",
    "scsi",
    "nvdimm",
    "virtio-fs",
    "local",
    "ephemeral",
    "watchable-bind",
    "overlayfs",
    "9p",
    "bind",
];

/// Block driver names kata-rs's agent once took that are not Kata's, with Kata's name to use.
const FORMER_BLOCK_ALIASES: &[(&str, &str)] = &[
    ("virtio-blk", "blk"),
    ("virtio-blk-pci", "blk"),
    ("virtio-blk-mmio", "mmioblk"),
];

/// One storage request (the protocol's `Storage`, transport-neutral).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageSpec {
    /// How it reaches the guest: one of [`DRIVERS`].
    pub driver: String,
    /// A mount tag, a device path or a guest path, depending on the driver.
    pub source: String,
    /// Filesystem type (`9p`, `virtiofs`, `ext4`, ...); defaults from the driver.
    pub fstype: String,
    /// Mount options (for `local`: the directory's `mode=` and `fsgid=`).
    pub options: Vec<String>,
    /// Where to mount it in the guest (absolute).
    pub mount_point: String,
    /// The group to own the volume's root (Kubernetes fsGroup): `ephemeral` and `local` only.
    pub fs_group: Option<u32>,
    /// Options for the driver (`overlayfs`: Kata's `...overlayfs.create_directory=<dir>`).
    pub driver_options: Vec<String>,
    /// Kata's `shared`: the storage outlives the containers that use it and is released when
    /// the sandbox ends (DestroySandbox), as Kata's agent keeps a block-backed emptyDir.
    pub shared: bool,
}

/// What a storage turns into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoragePlan {
    /// Source argument of mount(2) (`None`: just a directory, nothing to mount).
    pub source: Option<PathBuf>,
    /// Filesystem type (`None` for a bind mount).
    pub fstype: Option<String>,
    /// Options, with the driver's defaults added.
    pub options: Vec<String>,
    /// Mount point.
    pub mount_point: PathBuf,
    /// The group to give the root after mounting (set-group-ID), for `ephemeral`/`local`.
    pub gid: Option<u32>,
    /// The mode to give the root after mounting, for `local`.
    pub mode: Option<u32>,
}

fn with_default(options: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    if !options.iter().any(|o| o.starts_with(&prefix)) {
        options.push(format!("{prefix}{value}"));
    }
}

/// A mount point: absolute, not `/`, no `.` or `..` component.
fn check_mount_point(s: &StorageSpec, field: &str) -> Result<PathBuf> {
    let p = PathBuf::from(&s.mount_point);
    let clean = p.is_absolute()
        && p.components().count() > 1
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !clean {
        return Err(AgentError::invalid(
            format!("{field}.mount_point"),
            format!(
                "must be an absolute path below / without '.' or '..' components, got {:?}",
                s.mount_point
            ),
        ));
    }
    Ok(p)
}

/// Validates a storage (`field` names it in errors, e.g. `storages[0]`) and plans its mount.
pub fn plan(s: &StorageSpec, field: &str) -> Result<StoragePlan> {
    let mount_point = check_mount_point(s, field)?;
    let mut options = s.options.clone();
    let fstype = |default: &str| {
        Some(if s.fstype.is_empty() {
            default.to_string()
        } else {
            s.fstype.clone()
        })
    };
    let need_source = || -> Result<()> {
        if s.source.is_empty() {
            return Err(AgentError::invalid(format!("{field}.source"), "is empty"));
        }
        Ok(())
    };
    if s.fs_group.is_some() && !matches!(s.driver.as_str(), "ephemeral" | "local") {
        return Err(AgentError::invalid(
            format!("{field}.fs_group"),
            format!(
                "is applied to ephemeral and local storages only in this agent, not to a {:?} \
                 storage (at {})",
                s.driver, s.mount_point
            ),
        ));
    }
    let (mut gid, mut mode) = (None, None);
    let (source, fstype) = match s.driver.as_str() {
        "9p" => {
            need_source()?;
            with_default(&mut options, "trans", "virtio");
            with_default(&mut options, "version", "9p2000.L");
            (Some(PathBuf::from(&s.source)), fstype("9p"))
        }
        "virtio-fs" => {
            need_source()?;
            (Some(PathBuf::from(&s.source)), fstype("virtiofs"))
        }
        "blk" | "mmioblk" | "scsi" | "nvdimm" => {
            // A PCI path or SCSI address is turned into the /dev node by
            // `resolve_devices` before the mount.
            block::address(&s.driver, &s.source, field)?;
            if s.fstype.is_empty() {
                return Err(AgentError::invalid(format!("{field}.fstype"), "is empty"));
            }
            (Some(PathBuf::from(&s.source)), fstype(""))
        }
        "overlayfs" => {
            if !s.fstype.is_empty() && s.fstype != "overlay" {
                return Err(AgentError::invalid(
                    format!("{field}.fstype"),
                    format!("{:?}: an overlayfs storage is an overlay", s.fstype),
                ));
            }
            options = overlay::check(&s.options, &s.driver_options, field)?.options;
            let source = if s.source.is_empty() {
                "overlay"
            } else {
                &s.source
            };
            (Some(PathBuf::from(source)), Some("overlay".to_string()))
        }
        "local" => {
            let dir = local::check(&s.options, field, &s.mount_point)?;
            gid = s.fs_group.or(dir.fsgid);
            mode = dir.mode;
            options.clear();
            (None, None)
        }
        "ephemeral" => {
            if !s.fstype.is_empty() && s.fstype != "tmpfs" {
                return Err(AgentError::invalid(
                    format!("{field}.fstype"),
                    format!(
                        "{:?}: an ephemeral storage (at {}) is a tmpfs in this agent",
                        s.fstype, s.mount_point
                    ),
                ));
            }
            let tmpfs = ephemeral::check(&s.options, field, &s.mount_point)?;
            gid = s.fs_group.or(tmpfs.fsgid);
            options = tmpfs.options;
            let source = if s.source.is_empty() {
                "tmpfs"
            } else {
                &s.source
            };
            (Some(PathBuf::from(source)), Some("tmpfs".to_string()))
        }
        "watchable-bind" => {
            watchable::check(&s.source, &mount_point, field)?;
            options.clear();
            (Some(PathBuf::from(&s.source)), None)
        }
        "bind" => {
            if !Path::new(&s.source).is_absolute() {
                return Err(AgentError::invalid(
                    format!("{field}.source"),
                    format!("must be an absolute path for a bind, got {:?}", s.source),
                ));
            }
            if !options.iter().any(|o| o == "bind" || o == "rbind") {
                options.push("rbind".into());
            }
            (Some(PathBuf::from(&s.source)), None)
        }
        other => {
            let hint = FORMER_BLOCK_ALIASES
                .iter()
                .find(|(alias, _)| *alias == other)
                .map(|(_, kata)| format!(" (Kata's agent names this driver {kata:?})"))
                .unwrap_or_default();
            return Err(AgentError::UnknownStorageDriver {
                field: field.to_string(),
                driver: other.to_string(),
                known: format!("{DRIVERS:?}"),
                hint,
            });
        }
    };
    Ok(StoragePlan {
        source,
        fstype,
        options,
        mount_point,
        gid,
        mode,
    })
}

/// A storage the agent mounted (or made): released with [`MountedStorage::release`].
#[derive(Debug)]
pub struct MountedStorage {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The driver, for messages.
    driver: String,
    mounted: bool,
    /// What the agent created for it, outermost first: directories, or the file a bind of a
    /// file is mounted on (the last).
    created: Vec<PathBuf>,
    /// The mount point is the volume itself (`local`): its contents go with it.
    owns_contents: bool,
    /// A `watchable-bind` storage's mirror.
    watch: Option<watchable::Watch>,
}

/// Creates `path` (a directory, or an empty file when `file`) and the missing directories
/// above it; returns what it created, outermost first. On failure, removes what it created.
fn create_path(path: &Path, file: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    missing.reverse();
    let mut created = Vec::new();
    for (i, m) in missing.iter().enumerate() {
        let last = i + 1 == missing.len();
        let r = if last && file {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m)
                .map(drop)
        } else {
            std::fs::create_dir(m)
        };
        match r {
            Ok(()) => created.push(m.clone()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_created(&created, false);
                return Err(e);
            }
        }
    }
    Ok(created)
}

/// Removes what [`create_path`] created, innermost first: empty directories only, except the
/// innermost when `with_contents`.
fn remove_created(created: &[PathBuf], with_contents: bool) {
    for (i, p) in created.iter().enumerate().rev() {
        let innermost = i + 1 == created.len();
        let r = if p.is_file() {
            std::fs::remove_file(p)
        } else if innermost && with_contents {
            if has_mounts_below(p) {
                tracing::warn!(path = %p.display(), "a mount is still below the volume: its contents are kept");
                return;
            }
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_dir(p)
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // A directory another storage also uses is not empty: it stays.
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => return,
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "storage directory not removed");
                return;
            }
        }
    }
}

/// Whether something is mounted at or below `dir` (in the agent's mount namespace).
fn has_mounts_below(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    crate::mount::mount_points(&info)
        .iter()
        .any(|m| Path::new(m).starts_with(dir))
}

impl MountedStorage {
    /// Unmounts the storage (lazily if it is busy) and removes what the agent created for it.
    pub fn release(&self) -> Result<()> {
        if let Some(watch) = &self.watch {
            watch.release();
            tracing::info!(driver = %self.driver, mount_point = %self.mount_point.display(),
                "storage released");
            return Ok(());
        }
        if self.mounted {
            match umount2(&self.mount_point, MntFlags::empty()) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(nix::Error::EBUSY) => umount2(&self.mount_point, MntFlags::MNT_DETACH)
                    .map_err(|e| {
                        AgentError::sys(format!("unmount {}", self.mount_point.display()), e)
                    })?,
                Err(e) => {
                    return Err(AgentError::sys(
                        format!("unmount {}", self.mount_point.display()),
                        e,
                    ))
                }
            }
        }
        remove_created(&self.created, self.owns_contents);
        tracing::info!(driver = %self.driver, mount_point = %self.mount_point.display(),
            "storage released");
        Ok(())
    }
}

/// How long a virtio-fs mount is retried while the guest's driver does not know its tag yet.
/// `block::wait_virtiofs` waits until a virtio-fs device is bound to the driver, but Linux binds
/// it (`driver_sysfs_add`) before `virtio_fs_probe` registers the tag, and 6.1 shows no tag in
/// sysfs: a share hot-plugged a moment before (a template's clone) can still be unknown here,
/// which the mount answers with EINVAL ("tag not found") or ENOENT.
const VIRTIOFS_TAG_RETRY: std::time::Duration = std::time::Duration::from_secs(3);
const POLL_TAG: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs `mount` until it succeeds, fails otherwise than with EINVAL or ENOENT, or `bound` has
/// passed (then its last error is returned).
fn retry_unknown_tag(
    mut mount: impl FnMut() -> Result<()>,
    bound: std::time::Duration,
    poll: std::time::Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        match mount() {
            Err(AgentError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOENT))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(poll)
            }
            other => return other,
        }
    }
}

/// Mounts (or makes) a storage; on failure leaves nothing behind.
pub fn mount(s: &StorageSpec, field: &str) -> Result<MountedStorage> {
    let p = plan(s, field)?;
    if s.driver == "watchable-bind" {
        let source = PathBuf::from(&s.source);
        let root = watchable::check(&s.source, &p.mount_point, field)?;
        let watch = watchable::start(&source, &p.mount_point, &root, field)?;
        tracing::info!(driver = %s.driver, source = %s.source, mount_point = %s.mount_point,
            "storage mirrored");
        return Ok(MountedStorage {
            mount_point: p.mount_point,
            driver: s.driver.clone(),
            mounted: false,
            created: Vec::new(),
            owns_contents: false,
            watch: Some(watch),
        });
    }
    // A bind of a file is mounted on a file.
    let file = p.fstype.is_none()
        && p.source
            .as_deref()
            .is_some_and(|src| src.exists() && !src.is_dir());
    if s.driver == "overlayfs" {
        overlay::create_dirs(&overlay::check(&s.options, &s.driver_options, field)?.create)?;
    }
    let created = create_path(&p.mount_point, file)
        .map_err(|e| AgentError::io(format!("create {}", p.mount_point.display()), e))?;
    let what = format!("{field} ({} at {})", s.driver, s.mount_point);
    let result = (|| {
        if let Some(source) = &p.source {
            let opts = MountOptions::parse(&p.options);
            let once = || mount_with(Some(source), &p.mount_point, p.fstype.as_deref(), &opts);
            if s.driver == "virtio-fs" {
                retry_unknown_tag(once, VIRTIOFS_TAG_RETRY, POLL_TAG)?;
            } else {
                once()?;
            }
        }
        if let Err(e) = local::apply_owner_and_mode(&p.mount_point, p.gid, p.mode, &what) {
            if p.source.is_some() {
                let _ = umount2(&p.mount_point, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
        Ok(())
    })();
    if let Err(e) = result {
        remove_created(&created, false);
        return Err(e);
    }
    tracing::info!(driver = %s.driver, source = %s.source, mount_point = %s.mount_point,
        "storage mounted");
    Ok(MountedStorage {
        mount_point: p.mount_point,
        driver: s.driver.clone(),
        mounted: p.source.is_some(),
        // A local directory that existed is the host's to keep; one the agent made goes.
        owns_contents: s.driver == "local" && !created.is_empty(),
        created,
        watch: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(e: i32) -> AgentError {
        AgentError::sys("mount kataShared", nix::Error::from_raw(e))
    }

    #[test]
    fn a_virtiofs_tag_not_known_yet_is_retried_and_other_errors_are_not() {
        let short = std::time::Duration::from_millis(1);
        // The tag is registered on the third try: the mount succeeds.
        let mut tries = 0;
        let r = retry_unknown_tag(
            || {
                tries += 1;
                if tries < 3 {
                    Err(errno(libc::EINVAL))
                } else {
                    Ok(())
                }
            },
            std::time::Duration::from_secs(5),
            short,
        );
        assert!(r.is_ok() && tries == 3, "{r:?} after {tries}");
        // Another error is returned at once.
        let mut tries = 0;
        let r = retry_unknown_tag(
            || {
                tries += 1;
                Err(errno(libc::EPERM))
            },
            std::time::Duration::from_secs(5),
            short,
        );
        assert!(r.is_err() && tries == 1, "{r:?} after {tries}");
        // A tag that never comes: the last error, once the bound has passed.
        let mut tries = 0;
        let r = retry_unknown_tag(
            || {
                tries += 1;
                Err(errno(libc::ENOENT))
            },
            std::time::Duration::from_millis(30),
            short,
        );
        let e = r.unwrap_err().to_string();
        assert!(tries > 1 && e.contains("kataShared"), "{e} after {tries}");
    }

    fn spec(driver: &str, source: &str) -> StorageSpec {
        StorageSpec {
            driver: driver.into(),
            source: source.into(),
            mount_point: "/run/kata-containers/shared/containers".into(),
            ..Default::default()
        }
    }

    #[test]
    fn nine_p_gets_virtio_transport() {
        let mut s = spec("9p", "kataShared");
        s.options = vec!["cache=mmap".into(), "version=9p2000.u".into()];
        let p = plan(&s, "storages[0]").unwrap();
        assert_eq!(p.fstype.as_deref(), Some("9p"));
        assert_eq!(p.source, Some(PathBuf::from("kataShared")));
        assert_eq!(
            p.options,
            vec!["cache=mmap", "version=9p2000.u", "trans=virtio"]
        );
    }

    #[test]
    fn virtio_fs_uses_the_tag() {
        let p = plan(&spec("virtio-fs", "kataShared"), "storages[0]").unwrap();
        assert_eq!(p.fstype.as_deref(), Some("virtiofs"));
    }

    #[test]
    fn block_needs_a_device_path_and_fstype() {
        let err = plan(&spec("blk", "02:00"), "storages[1]").unwrap_err();
        assert!(err.to_string().starts_with("storages[1].source"), "{err}");
        let mut pci = spec("blk", "02/00");
        pci.fstype = "ext4".into();
        assert_eq!(
            plan(&pci, "s").unwrap().source,
            Some(PathBuf::from("02/00"))
        );
        let err = plan(&spec("blk", "/dev/vdb"), "storages[1]").unwrap_err();
        assert!(err.to_string().starts_with("storages[1].fstype"), "{err}");
        let mut s = spec("blk", "/dev/vdb");
        s.fstype = "ext4".into();
        assert_eq!(plan(&s, "s").unwrap().fstype.as_deref(), Some("ext4"));
    }

    #[test]
    fn unknown_driver_and_bad_mount_points() {
        let err = plan(&spec("floppy", "x"), "storages[2]").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL, "Kata's code: {err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("Failed to find the storage handler floppy")
                && msg.contains("storages[2].driver"),
            "{msg}"
        );
        for bad in ["relative", "/", "/run/../etc", "/run/x/..", ""] {
            let mut s = spec("virtio-fs", "tag");
            s.mount_point = bad.into();
            assert!(
                plan(&s, "s")
                    .unwrap_err()
                    .to_string()
                    .starts_with("s.mount_point"),
                "{bad}"
            );
        }
    }

    #[test]
    fn kata_block_names_are_taken_and_former_aliases_refused_naming_kata_s() {
        let mut s = spec("mmioblk", "/dev/vdc");
        s.fstype = "ext4".into();
        assert_eq!(
            plan(&s, "s").unwrap().source,
            Some(PathBuf::from("/dev/vdc"))
        );
        for (alias, kata) in FORMER_BLOCK_ALIASES {
            s.driver = (*alias).into();
            let err = plan(&s, "storages[0]").unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INTERNAL, "Kata's code: {err}");
            let err = err.to_string();
            assert!(
                err.starts_with(&format!("Failed to find the storage handler {alias}"))
                    && err.contains("storages[0].driver")
                    && err.contains(&format!("Kata's agent names this driver {kata:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn bind_adds_rbind() {
        let p = plan(&spec("bind", "/tmp"), "s").unwrap();
        assert_eq!(p.options, vec!["rbind"]);
        assert_eq!(p.fstype, None);
    }

    #[test]
    fn ephemeral_is_a_checked_tmpfs() {
        let mut s = spec("ephemeral", "shm");
        s.options = vec!["mode=1777".into(), "size=65536k".into(), "fsgid=5".into()];
        let p = plan(&s, "storages[0]").unwrap();
        assert_eq!(p.fstype.as_deref(), Some("tmpfs"));
        assert_eq!(p.source, Some(PathBuf::from("shm")));
        assert_eq!(
            p.options,
            vec!["nosuid", "nodev", "mode=1777", "size=65536k"]
        );
        assert_eq!(p.gid, Some(5));
        s.fstype = "hugetlbfs".into();
        assert!(plan(&s, "storages[0]")
            .unwrap_err()
            .to_string()
            .starts_with("storages[0].fstype \"hugetlbfs\""));
        s.fstype.clear();
        s.options = vec!["size=lots".into()];
        assert!(plan(&s, "storages[0]")
            .unwrap_err()
            .to_string()
            .starts_with("storages[0].options[0] \"size=lots\" of the ephemeral storage"));
    }

    #[test]
    fn local_is_a_directory_and_fs_group_wins_over_fsgid() {
        let mut s = spec("local", "local");
        s.options = vec!["mode=0777".into(), "fsgid=10".into()];
        s.fs_group = Some(20);
        let p = plan(&s, "storages[0]").unwrap();
        assert_eq!((p.source, p.fstype), (None, None));
        assert_eq!((p.mode, p.gid), (Some(0o777), Some(20)));
        assert!(p.options.is_empty());
    }

    #[test]
    fn fs_group_elsewhere_is_refused() {
        let mut s = spec("virtio-fs", "kataShared");
        s.fs_group = Some(1000);
        let err = plan(&s, "storages[1]").unwrap_err().to_string();
        assert!(
            err.starts_with("storages[1].fs_group is applied to ephemeral and local"),
            "{err}"
        );
    }

    #[test]
    fn create_path_reports_and_removes_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("a/b/c");
        let created = create_path(&leaf, false).unwrap();
        assert_eq!(
            created,
            vec![dir.path().join("a"), dir.path().join("a/b"), leaf.clone()]
        );
        std::fs::write(leaf.join("data"), "x").unwrap();
        remove_created(&created, true);
        assert!(
            !dir.path().join("a").exists(),
            "contents and parents removed"
        );

        let file = dir.path().join("d/hosts");
        let created = create_path(&file, true).unwrap();
        assert!(file.is_file());
        remove_created(&created, false);
        assert!(!dir.path().join("d").exists());

        // A directory that another storage keeps busy stays.
        let created = create_path(&dir.path().join("e/f"), false).unwrap();
        std::fs::write(dir.path().join("e/other"), "x").unwrap();
        remove_created(&created, false);
        assert!(dir.path().join("e/other").exists() && !dir.path().join("e/f").exists());
    }
}
