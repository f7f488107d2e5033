//! Storages: filesystems the host asks the agent to mount in the guest (CreateSandbox and
//! CreateContainer `storages`): the shared directory over virtio-fs or 9p, block devices, empty
//! directories and tmpfs volumes.

use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::error::{AgentError, Result};
use crate::mount::{mount_with, MountOptions};

/// The drivers this agent handles, as named in `Storage.driver`.
pub const DRIVERS: &[&str] = &[
    "9p",
    "virtio-fs",
    "blk",
    "virtio-blk",
    "virtio-blk-pci",
    "virtio-blk-mmio",
    "scsi",
    "nvdimm",
    "local",
    "ephemeral",
    "bind",
];

/// One storage request (the protocol's `Storage`, transport-neutral).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageSpec {
    /// How it reaches the guest: `9p`, `virtio-fs`, `blk`, `local`, `ephemeral`, `bind`.
    pub driver: String,
    /// A mount tag, a device path or a guest path, depending on the driver.
    pub source: String,
    /// Filesystem type (`9p`, `virtiofs`, `ext4`, ...); defaults from the driver.
    pub fstype: String,
    /// Mount options.
    pub options: Vec<String>,
    /// Where to mount it in the guest (absolute).
    pub mount_point: String,
}

/// The mount call a storage turns into.
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
}

fn with_default(options: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    if !options.iter().any(|o| o.starts_with(&prefix)) {
        options.push(format!("{prefix}{value}"));
    }
}

/// Validates a storage (`field` names it in errors, e.g. `storages[0]`) and plans its mount.
pub fn plan(s: &StorageSpec, field: &str) -> Result<StoragePlan> {
    let mount_point = PathBuf::from(&s.mount_point);
    if !mount_point.is_absolute() {
        return Err(AgentError::invalid(
            format!("{field}.mount_point"),
            format!("must be an absolute path, got {:?}", s.mount_point),
        ));
    }
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
        "blk" | "virtio-blk" | "virtio-blk-pci" | "virtio-blk-mmio" | "scsi" | "nvdimm" => {
            if !s.source.starts_with("/dev/") {
                return Err(AgentError::invalid(
                    format!("{field}.source"),
                    format!(
                        "must be a device path under /dev for driver {:?}, got {:?}",
                        s.driver, s.source
                    ),
                ));
            }
            if s.fstype.is_empty() {
                return Err(AgentError::invalid(format!("{field}.fstype"), "is empty"));
            }
            (Some(PathBuf::from(&s.source)), fstype(""))
        }
        "local" => (None, None),
        "ephemeral" => (Some(PathBuf::from("tmpfs")), fstype("tmpfs")),
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
            return Err(AgentError::invalid(
                format!("{field}.driver"),
                format!("{other:?} is not one of {DRIVERS:?}"),
            ))
        }
    };
    Ok(StoragePlan {
        source,
        fstype,
        options,
        mount_point,
    })
}

/// A storage the agent mounted (or created); unmounted on [`MountedStorage::unmount`].
#[derive(Debug)]
pub struct MountedStorage {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    mounted: bool,
}

impl MountedStorage {
    /// Unmounts the storage (lazily if it is busy).
    pub fn unmount(&self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        match umount2(&self.mount_point, MntFlags::empty()) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
            Err(nix::Error::EBUSY) => umount2(&self.mount_point, MntFlags::MNT_DETACH)
                .map_err(|e| AgentError::sys(format!("unmount {}", self.mount_point.display()), e)),
            Err(e) => Err(AgentError::sys(
                format!("unmount {}", self.mount_point.display()),
                e,
            )),
        }
    }
}

/// Mounts a storage.
pub fn mount(s: &StorageSpec, field: &str) -> Result<MountedStorage> {
    let p = plan(s, field)?;
    std::fs::create_dir_all(&p.mount_point)
        .map_err(|e| AgentError::io(format!("create {}", p.mount_point.display()), e))?;
    let Some(source) = &p.source else {
        return Ok(MountedStorage {
            mount_point: p.mount_point,
            mounted: false,
        });
    };
    let opts = MountOptions::parse(&p.options);
    mount_with(Some(source), &p.mount_point, p.fstype.as_deref(), &opts)?;
    tracing::info!(driver = %s.driver, source = %s.source, mount_point = %s.mount_point,
        "storage mounted");
    Ok(MountedStorage {
        mount_point: p.mount_point,
        mounted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = plan(&spec("blk", "02/00"), "storages[1]").unwrap_err();
        assert!(err.to_string().starts_with("storages[1].source"), "{err}");
        let err = plan(&spec("blk", "/dev/vdb"), "storages[1]").unwrap_err();
        assert!(err.to_string().starts_with("storages[1].fstype"), "{err}");
        let mut s = spec("blk", "/dev/vdb");
        s.fstype = "ext4".into();
        assert_eq!(plan(&s, "s").unwrap().fstype.as_deref(), Some("ext4"));
    }

    #[test]
    fn unknown_driver_and_relative_mount_point() {
        let err = plan(&spec("floppy", "x"), "storages[2]").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().starts_with("storages[2].driver"));
        let mut s = spec("virtio-fs", "tag");
        s.mount_point = "relative".into();
        assert!(plan(&s, "s")
            .unwrap_err()
            .to_string()
            .starts_with("s.mount_point"));
    }

    #[test]
    fn bind_adds_rbind() {
        let p = plan(&spec("bind", "/tmp"), "s").unwrap();
        assert_eq!(p.options, vec!["rbind"]);
        assert_eq!(p.fstype, None);
    }
}
