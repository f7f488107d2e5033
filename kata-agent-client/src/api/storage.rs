//! What the agent mounts ([`Storage`]) and the devices it looks for ([`Device`]) in the guest.
//!
//! Plain Rust values that the façade turns into the protocol's `grpc.Storage` and
//! `grpc.Device` when it sends `CreateSandbox` or `CreateContainer`.

use protobuf::{EnumOrUnknown, MessageField};

use crate::protocol::agent as pb;
use crate::protocol::types::FSGroupChangePolicy as PbPolicy;

/// A filesystem the agent mounts in the guest: the shared directory, a container rootfs, a
/// volume.
///
/// `driver` says how the storage reaches the guest and how the agent finds it (Kata's driver
/// names: `"9p"`, `"virtio-fs"`, `"blk"`, `"local"`, `"ephemeral"`, ...); `source` is then a
/// 9p or virtio-fs tag, a device or PCI path, ... and `mount_point` the guest path.
///
/// ```
/// use kata_agent_client::Storage;
///
/// let share = Storage::new("9p", "kataShared", "/run/kata-containers/shared/containers")
///     .fstype("9p")
///     .options(["trans=virtio", "version=9p2000.L", "msize=8192"]);
/// assert_eq!(share.options.len(), 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Storage {
    /// How the storage reaches the guest (`"9p"`, `"virtio-fs"`, `"blk"`, `"local"`, ...).
    pub driver: String,
    /// Options for the driver, not for mount(2).
    pub driver_options: Vec<String>,
    /// What to mount: a tag, a device or PCI path, ... depending on `driver`.
    pub source: String,
    /// The filesystem type for mount(2) (`"9p"`, `"virtiofs"`, `"ext4"`, ...).
    pub fstype: String,
    /// mount(2) options (`"ro"`, `"trans=virtio"`, ...).
    pub options: Vec<String>,
    /// Where to mount it in the guest (absolute).
    pub mount_point: String,
    /// Group ownership to apply to the mounted tree (Kubernetes `fsGroup`), if any.
    pub fs_group: Option<FsGroup>,
}

impl Storage {
    /// A storage of `driver` mounting `source` at `mount_point`; the rest empty.
    pub fn new(
        driver: impl Into<String>,
        source: impl Into<String>,
        mount_point: impl Into<String>,
    ) -> Self {
        Storage {
            driver: driver.into(),
            source: source.into(),
            mount_point: mount_point.into(),
            ..Storage::default()
        }
    }

    /// Sets the filesystem type.
    pub fn fstype(mut self, fstype: impl Into<String>) -> Self {
        self.fstype = fstype.into();
        self
    }

    /// Sets the mount options.
    pub fn options<I, S>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options = options.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the driver options.
    pub fn driver_options<I, S>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.driver_options = options.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the group ownership to apply.
    pub fn fs_group(mut self, fs_group: FsGroup) -> Self {
        self.fs_group = Some(fs_group);
        self
    }

    pub(crate) fn to_grpc(&self) -> pb::Storage {
        pb::Storage {
            driver: self.driver.clone(),
            driver_options: self.driver_options.clone(),
            source: self.source.clone(),
            fstype: self.fstype.clone(),
            options: self.options.clone(),
            mount_point: self.mount_point.clone(),
            fs_group: MessageField::from_option(self.fs_group.map(|g| pb::FSGroup {
                group_id: g.group_id,
                group_change_policy: EnumOrUnknown::new(match g.change_policy {
                    FsGroupChangePolicy::Always => PbPolicy::Always,
                    FsGroupChangePolicy::OnRootMismatch => PbPolicy::OnRootMismatch,
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// The storage a `grpc.Storage` describes (an unknown change policy reads as `Always`,
    /// the protocol's default).
    #[cfg(test)]
    pub(crate) fn from_grpc(s: &pb::Storage) -> Self {
        Storage {
            driver: s.driver.clone(),
            driver_options: s.driver_options.clone(),
            source: s.source.clone(),
            fstype: s.fstype.clone(),
            options: s.options.clone(),
            mount_point: s.mount_point.clone(),
            fs_group: s.fs_group.as_ref().map(|g| FsGroup {
                group_id: g.group_id,
                change_policy: match g.group_change_policy.enum_value() {
                    Ok(PbPolicy::OnRootMismatch) => FsGroupChangePolicy::OnRootMismatch,
                    _ => FsGroupChangePolicy::Always,
                },
            }),
        }
    }
}

/// Group ownership the agent applies to a mounted volume (Kubernetes `fsGroup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsGroup {
    /// The group id to give the files.
    pub group_id: u32,
    /// When to change ownership.
    pub change_policy: FsGroupChangePolicy,
}

/// When the agent changes a volume's group ownership.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsGroupChangePolicy {
    /// Every time the volume is mounted.
    #[default]
    Always,
    /// Only when the group of the volume's root differs.
    OnRootMismatch,
}

/// A device of the container's spec that the agent finds in the guest (for block devices and
/// VFIO functions), by how it was attached.
///
/// ```
/// use kata_agent_client::Device;
///
/// let disk = Device::new("vda", "blk", "/dev/vda", "/dev/xvda");
/// assert_eq!(disk.device_type, "blk");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Device {
    /// The host's id of the device.
    pub id: String,
    /// How it is attached: `"blk"`, `"vfio"`, `"scsi"`, `"mmioblk"`, ... (Kata's names).
    pub device_type: String,
    /// Where the guest sees it (a device path, or a PCI path such as `"02/01"`).
    pub vm_path: String,
    /// Where the container sees it.
    pub container_path: String,
    /// Driver-specific options.
    pub options: Vec<String>,
}

impl Device {
    /// A device of `device_type` found at `vm_path` in the guest, shown at `container_path`.
    pub fn new(
        id: impl Into<String>,
        device_type: impl Into<String>,
        vm_path: impl Into<String>,
        container_path: impl Into<String>,
    ) -> Self {
        Device {
            id: id.into(),
            device_type: device_type.into(),
            vm_path: vm_path.into(),
            container_path: container_path.into(),
            options: Vec::new(),
        }
    }

    /// Sets the options.
    pub fn options<I, S>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options = options.into_iter().map(Into::into).collect();
        self
    }

    pub(crate) fn to_grpc(&self) -> pb::Device {
        pb::Device {
            id: self.id.clone(),
            type_: self.device_type.clone(),
            vm_path: self.vm_path.clone(),
            container_path: self.container_path.clone(),
            options: self.options.clone(),
            ..Default::default()
        }
    }

    /// The device a `grpc.Device` describes.
    #[cfg(test)]
    pub(crate) fn from_grpc(d: &pb::Device) -> Self {
        Device {
            id: d.id.clone(),
            device_type: d.type_.clone(),
            vm_path: d.vm_path.clone(),
            container_path: d.container_path.clone(),
            options: d.options.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    #[test]
    fn storage_round_trips_through_the_wire_bytes() {
        let storages = [
            Storage::default(),
            Storage::new("9p", "kataShared", "/run/kata-containers/shared/containers")
                .fstype("9p")
                .options(["trans=virtio", "nodev"]),
            Storage::new("virtio-fs", "kataShared", "/run/kata-containers/shared")
                .fstype("virtiofs")
                .driver_options(["cache=auto"])
                .fs_group(FsGroup {
                    group_id: 1000,
                    change_policy: FsGroupChangePolicy::OnRootMismatch,
                }),
            Storage::new("blk", "/dev/vdb", "/data").fs_group(FsGroup {
                group_id: 0,
                change_policy: FsGroupChangePolicy::Always,
            }),
        ];
        for storage in storages {
            let bytes = storage.to_grpc().write_to_bytes().unwrap();
            let back = Storage::from_grpc(&pb::Storage::parse_from_bytes(&bytes).unwrap());
            assert_eq!(back, storage);
        }
    }

    #[test]
    fn storage_fields_land_in_the_protocol_fields() {
        let s = Storage::new("virtio-fs", "tag", "/mnt")
            .fstype("virtiofs")
            .options(["ro"])
            .driver_options(["x=1"])
            .to_grpc();
        assert_eq!(
            (
                &s.driver[..],
                &s.source[..],
                &s.mount_point[..],
                &s.fstype[..]
            ),
            ("virtio-fs", "tag", "/mnt", "virtiofs")
        );
        assert_eq!(
            (s.options, s.driver_options),
            (vec!["ro".to_string()], vec!["x=1".to_string()])
        );
        assert!(s.fs_group.is_none());
    }

    #[test]
    fn device_round_trips_through_the_wire_bytes() {
        for device in [
            Device::default(),
            Device::new("0000:01:00.0", "vfio-pci", "02/00", "/dev/vfio/12").options(["x"]),
        ] {
            let wire = device.to_grpc();
            assert_eq!(wire.type_, device.device_type);
            let bytes = wire.write_to_bytes().unwrap();
            let back = Device::from_grpc(&pb::Device::parse_from_bytes(&bytes).unwrap());
            assert_eq!(back, device);
        }
    }
}
