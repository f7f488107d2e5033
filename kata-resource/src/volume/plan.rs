//! What one OCI mount of a container's spec becomes, decided from the mount alone (the host is
//! looked at later, when the volume is set up): Kata runtime-rs's order of checks.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;

use crate::{Error, Result};

/// The pod's shared memory, as containers name it.
pub(crate) const SHM_DESTINATION: &str = "/dev/shm";

/// The directory kubelet makes emptyDir volumes in (`.../volumes/kubernetes.io~empty-dir/<name>`).
pub(crate) const K8S_EMPTY_DIR: &str = "kubernetes.io~empty-dir";

/// Kata's mount type for a tmpfs volume made in the guest.
pub(crate) const EPHEMERAL_TYPE: &str = "ephemeral";

/// Kata's mount type for a directory made in the guest (a disk-backed emptyDir).
pub(crate) const LOCAL_TYPE: &str = "local";

/// Filesystems that live on a disk: a mount of one of these from an absolute host path is a
/// block volume (the path is a block device or a raw image file given to the VM).
pub(crate) const DISK_FILESYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "f2fs", "squashfs", "erofs", "iso9660",
];

/// Options of a block volume's mount that are not the disk filesystem's: `ro`/`rw` (given as
/// one `ro`) and propagation, which the bind in the container carries.
const BIND_ONLY_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "shared",
    "rshared",
    "unbindable",
    "runbindable",
];

/// The filesystem a bind of a host block device is mounted with in the guest (runtime-rs's
/// `DEFAULT_VOLUME_FS_TYPE`): a bind does not say.
pub(crate) const DEFAULT_BLOCK_FS_TYPE: &str = "ext4";

/// Host paths whose binds mean the guest's own (`/proc/...`, `/sys/...`): never shared.
const SYSTEM_PREFIXES: [&str; 2] = ["/proc", "/sys"];

/// What a mount becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Made by the agent in the guest as the spec says (tmpfs, proc, a bind of a guest path):
    /// passed on unchanged.
    GuestOnly,
    /// `/dev/shm`: a bind of the pod's shm, a guest tmpfs (`size`: the spec's tmpfs option;
    /// `None`: from the bind source's filesystem, or Kata's default).
    Shm {
        /// The source to size it from: a host bind source other than `/dev/shm`.
        size_from: Option<PathBuf>,
        /// A tmpfs `/dev/shm`'s own `size=` value.
        size_option: Option<String>,
    },
    /// A pod volume made in the guest: an emptyDir (or a mount Kata marks `ephemeral` or
    /// `local`). Whether it is a tmpfs or a directory depends on the host source's filesystem.
    EmptyDir {
        /// The host source (it must exist: its filesystem and group are read).
        source: PathBuf,
        /// The volume's name: the source's last component.
        name: String,
        /// Forced by the mount type: `ephemeral` (tmpfs) or `local` (directory).
        forced: Option<&'static str>,
    },
    /// A host file or directory bound into the guest through the shared directory.
    HostBind {
        /// The host source (absolute, `..`-free).
        source: PathBuf,
        /// `ro` in the options (the last of `ro`/`rw` wins).
        read_only: bool,
        /// `rbind`: the mounts under the source come along.
        recursive: bool,
    },
    /// A block volume: a host block device (a bind of one) or a raw image file (a mount of a
    /// disk filesystem from it), given to the VM as a disk and mounted by the agent.
    Block {
        /// The device or image file (absolute, `..`-free; checked when it is attached).
        source: PathBuf,
        /// The filesystem on it.
        fs_type: String,
        /// The guest mount's options (`ro` when read-only).
        options: Vec<String>,
        /// `ro` in the options (the last of `ro`/`rw` wins).
        read_only: bool,
    },
}

/// Whether `options` say read-only: the last of `ro`/`rw` wins.
fn read_only(options: &[String]) -> bool {
    options
        .iter()
        .rev()
        .find(|o| *o == "ro" || *o == "rw")
        .is_some_and(|o| o == "ro")
}

/// Whether the options ask for a bind (`bind`/`rbind`).
fn has_bind_option(options: &[String]) -> bool {
    options.iter().any(|o| o == "bind" || o == "rbind")
}

/// `path` without `.` components and trailing slashes; `None` if it is relative or has `..`.
fn clean_absolute(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => return None,
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Decides what mount `index` of a spec becomes.
pub(crate) fn classify(index: usize, m: &Mount) -> Result<Plan> {
    let typ = m.typ().as_deref().unwrap_or("");
    let options = m.options().clone().unwrap_or_default();
    let field = |name: &str| format!("mounts[{index}].{name}");
    let destination = clean_absolute(m.destination());
    let is_bind = typ == "bind" || has_bind_option(&options);
    let source = || -> Result<PathBuf> {
        let raw = m.source().clone().unwrap_or_default();
        clean_absolute(&raw).ok_or_else(|| Error::VolumeRefused {
            field: field("source"),
            path: raw.clone(),
            reason: "a bind needs an absolute host path without `..`".into(),
        })
    };

    if destination.as_deref() == Some(Path::new(SHM_DESTINATION)) && typ != EPHEMERAL_TYPE {
        let size_from = if is_bind {
            Some(source()?).filter(|s| s != Path::new(SHM_DESTINATION))
        } else {
            None
        };
        let size_option = options
            .iter()
            .find_map(|o| o.strip_prefix("size="))
            .map(str::to_owned);
        return Ok(Plan::Shm {
            size_from,
            size_option: size_option.filter(|_| !is_bind),
        });
    }
    let forced = match typ {
        EPHEMERAL_TYPE => Some(EPHEMERAL_TYPE),
        LOCAL_TYPE => Some(LOCAL_TYPE),
        _ => None,
    };
    if !is_bind && forced.is_none() {
        if DISK_FILESYSTEMS.contains(&typ) && m.source().as_deref().is_some_and(Path::is_absolute) {
            // An image file or block device of the host holding that filesystem.
            let ro = read_only(&options);
            return Ok(Plan::Block {
                source: source()?,
                fs_type: typ.to_owned(),
                options: options
                    .iter()
                    .filter(|o| !BIND_ONLY_OPTIONS.contains(&o.as_str()))
                    .cloned()
                    .chain(ro.then(|| "ro".to_owned()))
                    .collect(),
                read_only: ro,
            });
        }
        return Ok(Plan::GuestOnly);
    }
    let source = source()?;
    if SYSTEM_PREFIXES.iter().any(|p| source.starts_with(p)) {
        return Ok(Plan::GuestOnly);
    }
    let in_empty_dir = source
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == K8S_EMPTY_DIR);
    if forced.is_some() || in_empty_dir {
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        crate::container_id::check_name(&name).map_err(|why| Error::VolumeRefused {
            field: field("source"),
            path: source.clone(),
            reason: format!("its last component names the pod volume in the guest, and {why}"),
        })?;
        return Ok(Plan::EmptyDir {
            source,
            name,
            forced,
        });
    }
    // A device the container names under /dev is the guest's own (Kata: host devices do not
    // cross); a regular file there (a bound log, a config) is shared as any file.
    let under_dev = destination
        .as_deref()
        .is_some_and(|d| d.starts_with("/dev"));
    if under_dev && !source.is_file() {
        return Ok(Plan::GuestOnly);
    }
    let read_only = read_only(&options);
    // A bind of a host block device: the disk itself goes to the VM (runtime-rs's
    // `is_block_volume`), mounted with the default filesystem.
    let is_block_device = std::fs::metadata(&source)
        .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()));
    if is_block_device {
        return Ok(Plan::Block {
            source,
            fs_type: DEFAULT_BLOCK_FS_TYPE.to_owned(),
            options: read_only.then(|| "ro".to_owned()).into_iter().collect(),
            read_only,
        });
    }
    Ok(Plan::HostBind {
        source,
        read_only,
        recursive: options.iter().any(|o| o == "rbind"),
    })
}

/// The guest form of a block volume mounted at `guest_source`: a bind of it, read-only when
/// the volume is, with the spec's propagation and `nosuid`/`nodev`/`noexec` kept (a disk
/// filesystem's own options went to the guest's mount of the disk).
pub(crate) fn block_bind(m: &Mount, guest_source: &str, read_only: bool) -> Mount {
    let options: Vec<String> = std::iter::once("rbind".to_owned())
        .chain(read_only.then(|| "ro".to_owned()))
        .chain(
            m.options()
                .iter()
                .flatten()
                .filter(|o| {
                    matches!(
                        o.as_str(),
                        "nosuid"
                            | "nodev"
                            | "noexec"
                            | "private"
                            | "rprivate"
                            | "slave"
                            | "rslave"
                            | "shared"
                            | "rshared"
                    )
                })
                .cloned(),
        )
        .collect();
    let mut out = m.clone();
    out.set_typ(Some("bind".into()));
    out.set_source(Some(PathBuf::from(guest_source)));
    out.set_options(Some(options));
    out
}

/// The guest form of a bind the guest resolves at `guest_source`: the spec's options kept
/// (read-only, propagation), with a bind option if the spec had none.
pub(crate) fn guest_bind(m: &Mount, guest_source: &str) -> Mount {
    let mut options = m.options().clone().unwrap_or_default();
    if !has_bind_option(&options) {
        options.insert(0, "rbind".into());
    }
    let mut out = m.clone();
    out.set_typ(Some("bind".into()));
    out.set_source(Some(PathBuf::from(guest_source)));
    out.set_options(Some(options));
    out
}
