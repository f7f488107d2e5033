//! What sysfs says about a PCI function before the VMM opens it: its IOMMU group, and that
//! every member of the group is bound to `vfio-pci` (a member left on a host driver makes the
//! group unusable, and the kernel's "not viable" does not say which one).

use std::path::Path;

use crate::error::{Error, Result};

/// The drivers a group member may be bound to besides none at all (a PCI bridge in the group
/// has no driver to bind; `pcieport` is the kernel's own port driver).
const ALLOWED_DRIVERS: &[&str] = &["vfio-pci", "pcieport"];

fn refuse(bdf: &str, reason: String) -> Error {
    Error::Device {
        device: format!("VFIO device {bdf}"),
        reason,
    }
}

/// Whether `bdf` is a full PCI address (`0000:01:00.0`).
fn is_bdf(bdf: &str) -> bool {
    let b = bdf.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// The IOMMU group of `bdf` under `sysfs` (`/sys`), every member checked bound to vfio-pci.
pub fn viable_group(sysfs: &Path, bdf: &str) -> Result<u32> {
    if !is_bdf(bdf) {
        return Err(refuse(
            bdf,
            "not a PCI address: give it as domain:bus:slot.function, e.g. 0000:01:00.0".into(),
        ));
    }
    let dev = sysfs.join("bus/pci/devices").join(bdf);
    if !dev.exists() {
        return Err(refuse(
            bdf,
            format!("no such PCI function ({} does not exist)", dev.display()),
        ));
    }
    let link = std::fs::read_link(dev.join("iommu_group")).map_err(|e| {
        refuse(
            bdf,
            format!(
                "it has no IOMMU group ({e}): turn the host's IOMMU on (intel_iommu=on or \
                 amd_iommu) and load vfio-pci"
            ),
        )
    })?;
    let group: u32 = link
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            refuse(
                bdf,
                format!("its iommu_group link {} names no group", link.display()),
            )
        })?;
    let members = sysfs.join(format!("kernel/iommu_groups/{group}/devices"));
    let entries = std::fs::read_dir(&members).map_err(|e| {
        refuse(
            bdf,
            format!(
                "cannot list IOMMU group {group} ({}): {e}",
                members.display()
            ),
        )
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for member in names {
        let driver = std::fs::read_link(members.join(&member).join("driver"))
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        match driver.as_deref() {
            Some(d) if ALLOWED_DRIVERS.contains(&d) => {}
            None if member != bdf => {}
            other => {
                return Err(refuse(
                    bdf,
                    format!(
                        "IOMMU group {group} member {member} is bound to {}, not vfio-pci: bind \
                         every device of the group to vfio-pci (echo {member} > \
                         /sys/bus/pci/devices/{member}/driver/unbind; echo vfio-pci > \
                         /sys/bus/pci/devices/{member}/driver_override; echo {member} > \
                         /sys/bus/pci/drivers_probe)",
                        other.unwrap_or("no driver")
                    ),
                ))
            }
        }
    }
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fixture sysfs: group 7 with `members` (bdf, driver), the devices linked into it.
    fn tree(members: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        let g = s.join("kernel/iommu_groups/7/devices");
        std::fs::create_dir_all(&g).unwrap();
        for (bdf, driver) in members {
            let d = s.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            symlink(s.join("kernel/iommu_groups/7"), d.join("iommu_group")).unwrap();
            if let Some(drv) = driver {
                let dd = s.join("bus/pci/drivers").join(drv);
                std::fs::create_dir_all(&dd).unwrap();
                symlink(&dd, d.join("driver")).unwrap();
            }
            std::fs::create_dir_all(s.join("bus/pci/devices")).unwrap();
            symlink(&d, s.join("bus/pci/devices").join(bdf)).unwrap();
            symlink(&d, g.join(bdf)).unwrap();
        }
        t
    }

    #[test]
    fn a_group_all_on_vfio_pci_is_viable() {
        let t = tree(&[
            ("0000:01:00.0", Some("vfio-pci")),
            ("0000:01:00.1", Some("vfio-pci")),
            ("0000:00:1c.0", Some("pcieport")),
        ]);
        assert_eq!(viable_group(t.path(), "0000:01:00.0").unwrap(), 7);
    }

    #[test]
    fn a_member_on_a_host_driver_is_named() {
        let t = tree(&[
            ("0000:01:00.0", Some("vfio-pci")),
            ("0000:01:00.1", Some("snd_hda_intel")),
        ]);
        let e = viable_group(t.path(), "0000:01:00.0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0000:01:00.1") && e.contains("snd_hda_intel") && e.contains("vfio-pci"),
            "{e}"
        );
    }

    #[test]
    fn the_device_itself_unbound_is_refused() {
        let t = tree(&[("0000:01:00.0", None)]);
        let e = viable_group(t.path(), "0000:01:00.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no driver"), "{e}");
    }

    #[test]
    fn missing_functions_groups_and_bad_addresses_are_refused() {
        let t = tree(&[("0000:01:00.0", Some("vfio-pci"))]);
        let e = viable_group(t.path(), "0000:02:00.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such PCI function"), "{e}");
        for bad in ["01:00.0", "0000:01:00.0/../x", "", "zzzz:01:00.0"] {
            let e = viable_group(t.path(), bad).unwrap_err().to_string();
            assert!(e.contains("not a PCI address"), "{bad}: {e}");
        }
        std::fs::remove_file(t.path().join("devices/pci0000:00/0000:01:00.0/iommu_group")).unwrap();
        let e = viable_group(t.path(), "0000:01:00.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no IOMMU group"), "{e}");
    }
}
