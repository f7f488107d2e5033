//! s390x VFIO-AP devices a container names: a mediated crypto matrix device under
//! `<sysfs>/devices/vfio_ap/matrix/<uuid>`, with the AP queues (APQNs: adapter x domain) the
//! host assigned to it.
//!
//! A container names it as any VFIO device, by its IOMMU group node `/dev/vfio/<group>`: the
//! group's member is the mdev (`kernel/iommu_groups/<group>/devices/<uuid>` leads to
//! `devices/vfio_ap/matrix/<uuid>`), not a PCI function. [`VfioDiscovery::ap_device`] tells
//! the two apart (`None`: not AP, the PCI discovery applies) and reads the queues from the
//! mdev's `matrix` attribute (one `<card>.<domain>` per line, hex). A matrix device with no
//! complete queue (adapters without domains or the reverse) is refused naming what to assign.
//! The sysfs root is [`VfioDiscovery`]'s, so tests use fixture trees.

use std::path::{Path, PathBuf};

use kata_hypervisor::VfioApDevice;

use crate::error::{Error, Result};
use crate::vfio::{VfioDiscovery, VfioNode};

/// Where the vfio_ap driver puts its mediated devices, under the sysfs root.
pub const MATRIX_DIR: &str = "devices/vfio_ap/matrix";

/// An AP queue: adapter (card) and usage domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Apqn {
    /// The adapter number.
    pub card: u8,
    /// The domain number.
    pub domain: u16,
}

impl Apqn {
    /// Parses one line of a matrix device's `matrix` attribute, `"0a.0001"`. A line naming
    /// only an adapter (`"0a."`) or only a domain (`".0001"`) is not a queue: `None`.
    pub fn parse(s: &str) -> Option<Apqn> {
        let (card, domain) = s.trim().split_once('.')?;
        if card.is_empty() || domain.is_empty() {
            return None;
        }
        Some(Apqn {
            card: u8::from_str_radix(card, 16).ok()?,
            domain: u16::from_str_radix(domain, 16).ok()?,
        })
    }
}

impl std::fmt::Display for Apqn {
    /// `card.domain` as Kata's agent takes it: `0a.0001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}.{:04x}", self.card, self.domain)
    }
}

/// A VFIO-AP matrix device a container names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApMatrixDevice {
    /// The node the spec names (`/dev/vfio/0`).
    pub path: PathBuf,
    /// Its IOMMU group.
    pub group: String,
    /// The mdev's UUID.
    pub uuid: String,
    /// The mdev's directory: QEMU's `sysfsdev` (under the real `/sys` on a host).
    pub sysfsdev: PathBuf,
    /// Its queues, sorted.
    pub apqns: Vec<Apqn>,
}

impl ApMatrixDevice {
    /// The device to give the VM, with id `vfio-ap-<group>`.
    pub fn device(&self) -> VfioApDevice {
        VfioApDevice {
            id: format!("vfio-ap-{}", self.group),
            sysfsdev: self.sysfsdev.clone(),
        }
    }

    /// The agent's options: one `card.domain` per queue.
    pub fn apqn_options(&self) -> Vec<String> {
        self.apqns.iter().map(Apqn::to_string).collect()
    }
}

impl VfioDiscovery {
    /// The VFIO-AP matrix device `path` (`linux.devices[i].path`) names, or `None` when it is
    /// not one (a PCI group, iommufd's cdev, not a VFIO node, a group that does not exist:
    /// [`group`](Self::group) reports those). Errors name `path` and the cause.
    pub fn ap_device(&self, path: &Path) -> Result<Option<ApMatrixDevice>> {
        let Some(VfioNode::Group(group)) = VfioNode::parse(path) else {
            return Ok(None);
        };
        let members = self
            .sysfs()
            .join("kernel/iommu_groups")
            .join(&group)
            .join("devices");
        let Ok(entries) = std::fs::read_dir(&members) else {
            return Ok(None);
        };
        let matrix = self.sysfs().join(MATRIX_DIR);
        let matrix = matrix.canonicalize().unwrap_or(matrix);
        let mut found = None;
        for e in entries.flatten() {
            let Ok(target) = e.path().canonicalize() else {
                continue;
            };
            if target.parent() == Some(matrix.as_path()) {
                found = Some(e.file_name().to_string_lossy().into_owned());
                break;
            }
        }
        let Some(uuid) = found else {
            return Ok(None);
        };
        self.ap_matrix(&uuid)
            .map(|(sysfsdev, apqns)| {
                Some(ApMatrixDevice {
                    path: path.to_path_buf(),
                    group,
                    uuid,
                    sysfsdev,
                    apqns,
                })
            })
            .map_err(|reason| Error::Vfio {
                path: path.to_path_buf(),
                reason,
            })
    }

    /// The directory and queues of matrix device `uuid`.
    fn ap_matrix(&self, uuid: &str) -> std::result::Result<(PathBuf, Vec<Apqn>), String> {
        let dir = self.sysfs().join(MATRIX_DIR).join(uuid);
        let file = dir.join("matrix");
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "VFIO-AP matrix device {uuid}: cannot read {}: {e}",
                file.display()
            )
        })?;
        let mut apqns: Vec<Apqn> = text.lines().filter_map(Apqn::parse).collect();
        apqns.sort();
        apqns.dedup();
        if apqns.is_empty() {
            return Err(format!(
                "VFIO-AP matrix device {uuid} has no AP queue ({} lists {:?}): assign both \
                 adapters and domains to it (`echo 0x<card> > {dir}/assign_adapter`, `echo \
                 0x<domain> > {dir}/assign_domain`)",
                file.display(),
                text.trim(),
                dir = dir.display()
            ));
        }
        Ok((dir, apqns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const UUID: &str = "4b0a6a4c-1b8e-4d5d-b4a4-52d8b3c5e9a1";

    /// A sysfs fixture with one matrix mdev in IOMMU group `group` listing `matrix`.
    fn sysfs_with_matrix(root: &Path, group: &str, matrix: &str) {
        let mdev = root.join(MATRIX_DIR).join(UUID);
        std::fs::create_dir_all(&mdev).unwrap();
        std::fs::write(mdev.join("matrix"), matrix).unwrap();
        let g = root.join("kernel/iommu_groups").join(group);
        std::fs::create_dir_all(g.join("devices")).unwrap();
        symlink(&g, mdev.join("iommu_group")).unwrap();
        symlink(&mdev, g.join("devices").join(UUID)).unwrap();
    }

    #[test]
    fn a_matrix_mdev_yields_its_queues_and_the_vms_device() {
        let tmp = tempfile::tempdir().unwrap();
        sysfs_with_matrix(tmp.path(), "0", "0a.0002\n05.0004\n0a.0001\n");
        let d = VfioDiscovery::new(tmp.path())
            .ap_device(Path::new("/dev/vfio/0"))
            .unwrap()
            .unwrap();
        assert_eq!((d.group.as_str(), d.uuid.as_str()), ("0", UUID));
        assert_eq!(d.apqn_options(), ["05.0004", "0a.0001", "0a.0002"]);
        let vm = d.device();
        assert_eq!(vm.id, "vfio-ap-0");
        assert_eq!(vm.sysfsdev, tmp.path().join(MATRIX_DIR).join(UUID));
    }

    #[test]
    fn a_pci_group_or_other_node_is_not_ap() {
        let tmp = tempfile::tempdir().unwrap();
        sysfs_with_matrix(tmp.path(), "0", "0a.0001\n");
        let pci = tmp.path().join("devices/pci0000:00/0000:00:02.0");
        std::fs::create_dir_all(&pci).unwrap();
        let g = tmp.path().join("kernel/iommu_groups/2/devices");
        std::fs::create_dir_all(&g).unwrap();
        symlink(&pci, g.join("0000:00:02.0")).unwrap();
        let d = VfioDiscovery::new(tmp.path());
        for p in [
            "/dev/vfio/2",
            "/dev/vfio/9",
            "/dev/vfio/devices/vfio0",
            "/dev/sda",
        ] {
            assert_eq!(d.ap_device(Path::new(p)).unwrap(), None, "{p}");
        }
    }

    #[test]
    fn a_matrix_without_a_complete_queue_is_refused_naming_what_to_assign() {
        let tmp = tempfile::tempdir().unwrap();
        // Adapters only, then a domain only: no queue.
        sysfs_with_matrix(tmp.path(), "0", "0a.\n.0001\n");
        let e = VfioDiscovery::new(tmp.path())
            .ap_device(Path::new("/dev/vfio/0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/vfio/0")
                && e.contains(UUID)
                && e.contains("no AP queue")
                && e.contains("assign_domain"),
            "{e}"
        );
    }
}
