//! Container rootfs (and volumes) on block devices, given to the guest as disks instead of
//! through the shared directory.
//!
//! A bundle rootfs whose containerd mounts are a single mount of a filesystem (`ext4`, `xfs`,
//! ...) from a host block device (what devmapper-style snapshotters hand over) or from a raw
//! image file (an embedder's `RootfsMount::new("ext4", "/images/app.ext4", ["ro"])`) is a
//! [`BlockSource`]: nothing is mounted on the host (its kernel never parses the filesystem);
//! the VM gets the disk ([`BlockAttachment::device`], hot-plugged by the caller, read-only when
//! the mount says `ro`) and the agent mounts it with the mount's type and options
//! ([`BlockAttachment::storage_at`], a `blk` storage at Kata's PCI path or a `scsi` storage at
//! the disk's SCSI address) at `/run/kata-containers/<id>/rootfs`, the OCI spec's `root.path`.
//!
//! `DevicesSlot` records which disks each container holds, so they are hot-unplugged with
//! it (by the caller, who owns the VM) and a restarted runtime finds them in the state.
//! `disable_block_device_use` (the caller's `DevicesSlot::set_enabled`) keeps every rootfs
//! on the shared directory: such a mount is then refused as before, since this crate never
//! mounts a block filesystem on the host.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use kata_hypervisor::{BlockDevice, DeviceConfig, GuestAddress};
use serde::{Deserialize, Serialize};

use super::RootfsMount;
use crate::{Error, GuestStorage, Result};

/// The guest directory block rootfs are mounted under: `<this>/<id>/rootfs` (Kata's layout).
pub const GUEST_BLOCK_ROOTFS_DIR: &str = "/run/kata-containers";

/// Mount types that are never a block filesystem.
const NOT_BLOCK: &[&str] = &["bind", "rbind", "overlay", "tmpfs", "proc", "sysfs", "none"];

/// A host block device or raw image file holding a filesystem, to be given to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSource {
    /// The block device or image file (absolute).
    pub path: PathBuf,
    /// The filesystem on it (`ext4`, `xfs`, ...), for the guest's mount.
    pub fs_type: String,
    /// The guest's mount options (`ro` when read-only; `rw` and `loop` dropped).
    pub options: Vec<String>,
    /// Attach the disk read-only (and mount it so).
    pub read_only: bool,
}

impl BlockSource {
    /// Checks `path` (`field` names where it came from in errors): it must exist and be a block
    /// device or a regular file; `fs_type` must be a filesystem name. `options` are a mount's
    /// (`ro` makes it read-only).
    pub fn new(field: &str, path: &Path, fs_type: &str, options: &[String]) -> Result<Self> {
        let bad = |reason: String| Error::BlockSource {
            field: field.to_owned(),
            path: path.to_owned(),
            reason,
        };
        if !path.is_absolute() {
            return Err(bad("it must be an absolute path".into()));
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| bad(format!("it cannot be used ({e}); does it exist?")))?;
        let t = meta.file_type();
        if !t.is_block_device() && !t.is_file() {
            return Err(bad(
                "it is neither a block device nor a regular file (a raw filesystem image)".into(),
            ));
        }
        if fs_type.is_empty()
            || !fs_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(bad(format!(
                "its filesystem type {fs_type:?} is not a filesystem name (ext4, xfs, ...)"
            )));
        }
        let read_only = options.iter().any(|o| o == "ro");
        let mut guest: Vec<String> = options
            .iter()
            .filter(|o| !matches!(o.as_str(), "ro" | "rw" | "loop" | ""))
            .cloned()
            .collect();
        if read_only {
            guest.insert(0, "ro".into());
        }
        Ok(BlockSource {
            path: path.to_owned(),
            fs_type: fs_type.to_owned(),
            options: guest,
            read_only,
        })
    }

    /// The block rootfs among `mounts` when `devices` uses block devices
    /// ([`from_rootfs_mounts`](Self::from_rootfs_mounts)); `None` when it does not.
    pub(crate) fn for_rootfs(
        mounts: &[RootfsMount],
        devices: &DevicesSlot,
    ) -> Result<Option<Self>> {
        if !devices.enabled() {
            return Ok(None);
        }
        Self::from_rootfs_mounts(mounts)
    }

    /// The block rootfs among containerd's rootfs mounts: exactly one mount of a filesystem
    /// type whose source is a block device or a regular file. `None` when the mounts are
    /// anything else (overlay, bind, several mounts): those go through the shared directory.
    /// A single filesystem mount whose source is not usable is an error naming it.
    pub fn from_rootfs_mounts(mounts: &[RootfsMount]) -> Result<Option<Self>> {
        let [m] = mounts else {
            return Ok(None);
        };
        if NOT_BLOCK.contains(&m.fs_type.as_str())
            || m.options.iter().any(|o| o == "bind" || o == "rbind")
            || !m.source.starts_with('/')
        {
            return Ok(None);
        }
        BlockSource::new(
            "rootfs mount source",
            Path::new(&m.source),
            &m.fs_type,
            &m.options,
        )
        .map(Some)
    }
}

/// A disk the caller hot-plugs for a container, and the storage the agent mounts it from
/// once the VM says where the guest finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockAttachment {
    /// The disk to hot-plug (`Hypervisor::add_device`).
    pub device: BlockDevice,
    /// The filesystem type.
    pub fs_type: String,
    /// The guest's mount options.
    pub options: Vec<String>,
    /// Where the guest mounts it.
    pub mount_point: String,
}

impl BlockAttachment {
    /// The storage for CreateContainer once the disk is at `address`: driver `blk` with Kata's
    /// PCI path, or `scsi` with `<target>:<lun>`. An address the agent cannot find a disk by is
    /// an error naming the device.
    pub fn storage_at(&self, address: &GuestAddress) -> Result<GuestStorage> {
        let driver = match address {
            GuestAddress::Pci { .. } => "blk",
            GuestAddress::Scsi { .. } => "scsi",
            other => {
                return Err(Error::BlockSource {
                    field: format!("block device {}", self.device.id),
                    path: self.device.path.clone(),
                    reason: format!(
                        "the VM attached it at {other}, which the agent cannot find a disk by"
                    ),
                })
            }
        };
        Ok(GuestStorage {
            driver: driver.into(),
            source: address.to_string(),
            fstype: self.fs_type.clone(),
            options: self.options.clone(),
            mount_point: self.mount_point.clone(),
            driver_options: Vec::new(),
        })
    }
}

/// The guest path of container `id`'s block rootfs (`id` checked by the caller).
pub fn guest_rootfs_path(id: &str) -> String {
    format!("{GUEST_BLOCK_ROOTFS_DIR}/{id}/rootfs")
}

/// What persist records of the disks given to the sandbox's containers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DevicesState {
    /// The block devices each container holds, by container id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub block: BTreeMap<String, Vec<BlockDevice>>,
    /// The VFIO devices (PCI functions, s390x AP matrix devices) hot-plugged for each
    /// container, by container id (a restored runtime unplugs them when the container is
    /// removed; the cold-plugged ones stay with the VM).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vfio: BTreeMap<String, Vec<DeviceConfig>>,
}

/// The disks given to the sandbox's containers (see the [module docs](self)). Nothing of it
/// lives on the host: the VM holds the disks, and unplugging them is the caller's (who owns
/// the VM); a stopped VM holds none.
#[derive(Debug, Default)]
pub(crate) struct DevicesSlot {
    /// Whether block devices are used (`disable_block_device_use = false` and a backend that
    /// hot-plugs them).
    enabled: bool,
    block: BTreeMap<String, Vec<BlockDevice>>,
    /// VFIO devices hot-plugged per container ([`crate::vfio`]).
    vfio: BTreeMap<String, Vec<DeviceConfig>>,
}

impl DevicesSlot {
    /// Uses block devices for block rootfs and volumes, or not.
    pub(crate) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// Whether block devices are used.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// A new disk for container `id` from `source`, mounted at `mount_point` in the guest:
    /// recorded here, with a VM-unique device id (`blk<n>`, the lowest free).
    pub(crate) fn attach(
        &mut self,
        id: &str,
        source: BlockSource,
        mount_point: String,
    ) -> BlockAttachment {
        let used: Vec<&str> = self
            .block
            .values()
            .flatten()
            .map(|d| d.id.as_str())
            .collect();
        let n = (0..)
            .find(|n| !used.contains(&format!("blk{n}").as_str()))
            .unwrap_or_default();
        let device = BlockDevice {
            id: format!("blk{n}"),
            path: source.path,
            read_only: source.read_only,
        };
        self.block
            .entry(id.to_owned())
            .or_default()
            .push(device.clone());
        BlockAttachment {
            device,
            fs_type: source.fs_type,
            options: source.options,
            mount_point,
        }
    }

    /// The disks container `id` holds.
    pub(crate) fn container_devices(&self, id: &str) -> Vec<BlockDevice> {
        self.block.get(id).cloned().unwrap_or_default()
    }

    /// Forgets container `id`'s disks and VFIO devices (unplugged by the caller, or going
    /// with the VM); returns the disks.
    pub(crate) fn remove_container(&mut self, id: &str) -> Vec<BlockDevice> {
        self.vfio.remove(id);
        self.block.remove(id).unwrap_or_default()
    }

    /// Records VFIO device `device` as hot-plugged for container `id`.
    pub(crate) fn record_vfio(&mut self, id: &str, device: DeviceConfig) {
        self.vfio.entry(id.to_owned()).or_default().push(device);
    }

    /// The VFIO devices hot-plugged for container `id`, forgotten here (the caller unplugs
    /// them).
    pub(crate) fn take_vfio(&mut self, id: &str) -> Vec<DeviceConfig> {
        self.vfio.remove(id).unwrap_or_default()
    }

    /// What persist records of it.
    pub(crate) fn state(&self) -> DevicesState {
        DevicesState {
            block: self.block.clone(),
            vfio: self.vfio.clone(),
        }
    }

    /// Takes over what a detached owner left, as `state` records it. Whether block devices
    /// are used is the caller's to set again.
    pub(crate) fn adopt(state: &DevicesState) -> Result<Self> {
        Ok(DevicesSlot {
            enabled: false,
            block: state.block.clone(),
            vfio: state.vfio.clone(),
        })
    }

    /// Nothing on the host to remove: the disks went with the VM, and a hot-plugged VFIO
    /// device went back to the host when the VM's process that held its group was killed (it
    /// stays bound to `vfio-pci`, as it was before the sandbox).
    pub(crate) fn cleanup(state: &DevicesState) -> Result<()> {
        for (container_id, devices) in &state.vfio {
            for d in devices {
                tracing::info!(container_id, device = %d.id(), "VFIO device released with the VM");
            }
        }
        Ok(())
    }

    /// Forgets every disk and VFIO device (the VM is stopped or going).
    pub(crate) fn release_in_place(&mut self) -> Result<()> {
        self.block.clear();
        self.vfio.clear();
        Ok(())
    }

    /// Gives up ownership: the state keeps the record for [`adopt`](Self::adopt).
    pub(crate) fn detach(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_hypervisor::PciPath;

    fn image(dir: &Path) -> PathBuf {
        let p = dir.join("rootfs.ext4");
        std::fs::write(&p, b"").unwrap();
        p
    }

    #[test]
    fn one_filesystem_mount_of_a_file_or_block_device_is_a_block_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let img = image(tmp.path());
        let src = img.to_str().unwrap();
        let b = BlockSource::from_rootfs_mounts(&[RootfsMount::new("ext4", src, ["ro"])])
            .unwrap()
            .unwrap();
        assert!(b.read_only);
        assert_eq!(
            (b.fs_type.as_str(), b.options.clone()),
            ("ext4", vec!["ro".to_string()])
        );
        let b =
            BlockSource::from_rootfs_mounts(&[RootfsMount::new("ext4", src, ["rw", "noatime"])])
                .unwrap()
                .unwrap();
        assert!(!b.read_only);
        assert_eq!(b.options, vec!["noatime"]);

        // Not block: overlay, bind, two mounts, a relative source.
        for mounts in [
            vec![RootfsMount::new("overlay", "overlay", ["lowerdir=/a"])],
            vec![RootfsMount::new("bind", src, ["rbind"])],
            vec![RootfsMount::new("none", src, ["rbind"])],
            vec![
                RootfsMount::new("ext4", src, Vec::<String>::new()),
                RootfsMount::new("ext4", src, Vec::<String>::new()),
            ],
            vec![RootfsMount::new(
                "ext4",
                "rootfs.ext4",
                Vec::<String>::new(),
            )],
        ] {
            assert_eq!(
                BlockSource::from_rootfs_mounts(&mounts).unwrap(),
                None,
                "{mounts:?}"
            );
        }
    }

    #[test]
    fn bad_sources_are_errors_naming_the_field_and_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing.ext4");
        let e = BlockSource::from_rootfs_mounts(&[RootfsMount::new(
            "ext4",
            missing.to_str().unwrap(),
            Vec::<String>::new(),
        )])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rootfs mount source") && e.contains("missing.ext4") && e.contains("exist"),
            "{e}"
        );
        let e = BlockSource::new("volume source", tmp.path(), "ext4", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("volume source") && e.contains("neither"), "{e}");
        let img = image(tmp.path());
        let e = BlockSource::new("volume source", &img, "ext4,x", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("filesystem type"), "{e}");
    }

    #[test]
    fn storages_follow_the_address_and_ids_are_reused_after_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let img = image(tmp.path());
        let source = BlockSource::new("f", &img, "ext4", &["ro".into()]).unwrap();
        let mut slot = DevicesSlot::default();
        let a = slot.attach("c1", source.clone(), guest_rootfs_path("c1"));
        let b = slot.attach("c2", source.clone(), guest_rootfs_path("c2"));
        assert_eq!(
            (a.device.id.as_str(), b.device.id.as_str()),
            ("blk0", "blk1")
        );
        assert!(a.device.read_only);

        let pci = GuestAddress::Pci {
            path: "02/00".parse::<PciPath>().unwrap(),
        };
        let s = a.storage_at(&pci).unwrap();
        assert_eq!(
            (s.driver.as_str(), s.source.as_str(), s.fstype.as_str()),
            ("blk", "02/00", "ext4")
        );
        assert_eq!(s.mount_point, "/run/kata-containers/c1/rootfs");
        assert_eq!(s.options, vec!["ro"]);
        let s = a
            .storage_at(&GuestAddress::Scsi { target: 0, lun: 1 })
            .unwrap();
        assert_eq!((s.driver.as_str(), s.source.as_str()), ("scsi", "0:1"));
        assert!(a.storage_at(&GuestAddress::Unaddressed).is_err());

        let saved = slot.state();
        assert_eq!(saved.block["c1"], vec![a.device.clone()]);
        assert_eq!(slot.remove_container("c1"), vec![a.device.clone()]);
        let c = slot.attach("c3", source, guest_rootfs_path("c3"));
        assert_eq!(c.device.id, "blk0", "the lowest free id");
        let adopted = DevicesSlot::adopt(&saved).unwrap();
        assert_eq!(adopted.container_devices("c2"), vec![b.device]);
        let json = serde_json::to_value(DevicesState::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({}),
            "an empty slot stays an empty object"
        );
    }
}
