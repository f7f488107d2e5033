//! VFIO devices a container names: from the OCI spec's `linux.devices` path to the host PCI
//! functions to pass through.
//!
//! A container asks for a device by its VFIO node: `/dev/vfio/<group>` (a whole IOMMU group,
//! the legacy container interface) or iommufd's `/dev/vfio/devices/vfio<N>` (one function).
//! [`VfioDiscovery`] reads sysfs (its root is configurable, so tests use fixture trees):
//! the group's members under `kernel/iommu_groups/<group>/devices`, each checked to be bound to
//! `vfio-pci` (a member bound elsewhere would make the group unusable: refused, naming the
//! member, its driver and the fix), with its BDF, vendor, device and class from
//! `bus/pci/devices/<bdf>`. What the VM gets is one [`VfioDevice`] per function.

use std::path::{Path, PathBuf};

use kata_hypervisor::VfioDevice;

use crate::error::{Error, Result};

/// The driver a passed-through function must be bound to on the host.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// How a container names a VFIO device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioNode {
    /// `/dev/vfio/<group>`: an IOMMU group.
    Group(String),
    /// `/dev/vfio/devices/vfio<N>`: one function through iommufd's cdev.
    Cdev(String),
}

impl VfioNode {
    /// What `path` names, if it is a VFIO node (`/dev/vfio/vfio`, the container node, is not a
    /// device).
    pub fn parse(path: &Path) -> Option<VfioNode> {
        let rest = path.strip_prefix("/dev/vfio").ok()?;
        let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
        match parts.as_slice() {
            [group] if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) => {
                Some(VfioNode::Group(group.to_string()))
            }
            ["devices", name]
                if name
                    .strip_prefix("vfio")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
            {
                Some(VfioNode::Cdev(name.to_string()))
            }
            _ => None,
        }
    }
}

/// One host PCI function of a VFIO device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address, `0000:00:02.0`.
    pub bdf: String,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// PCI class code (24 bits: class, subclass, programming interface).
    pub class: u32,
    /// Its IOMMU group.
    pub iommu_group: String,
}

impl PciFunction {
    /// The device to give the VM, with id `vfio-<group>-<n>` (`n`: its place in the group).
    pub fn device_config(&self, index: usize) -> VfioDevice {
        VfioDevice {
            id: format!("vfio-{}-{index}", self.iommu_group),
            bdf: self.bdf.clone(),
        }
    }
}

/// A VFIO device a container names: its node and the functions behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioGroup {
    /// The node the spec names (`/dev/vfio/2`).
    pub path: PathBuf,
    /// The IOMMU group.
    pub group: String,
    /// Its PCI functions, by BDF.
    pub functions: Vec<PciFunction>,
}

impl VfioGroup {
    /// The devices to give the VM, one per function.
    pub fn devices(&self) -> Vec<VfioDevice> {
        self.functions
            .iter()
            .enumerate()
            .map(|(i, f)| f.device_config(i))
            .collect()
    }
}

/// Finds VFIO devices in a sysfs tree (`/sys` on a host).
#[derive(Debug, Clone)]
pub struct VfioDiscovery {
    sysfs: PathBuf,
}

impl Default for VfioDiscovery {
    fn default() -> Self {
        VfioDiscovery::new("/sys")
    }
}

impl VfioDiscovery {
    /// Discovery in the sysfs tree at `sysfs` (a fixture tree in tests).
    pub fn new(sysfs: impl Into<PathBuf>) -> Self {
        VfioDiscovery {
            sysfs: sysfs.into(),
        }
    }

    /// The group `path` (`linux.devices[i].path`) names, its members checked. Errors name
    /// `path` and the cause: not a VFIO node, a group or device that does not exist, an
    /// empty group, a member not bound to `vfio-pci` (with the fix), unreadable ids.
    pub fn group(&self, path: &Path) -> Result<VfioGroup> {
        let err = |reason: String| Error::Vfio {
            path: path.to_path_buf(),
            reason,
        };
        let node = VfioNode::parse(path).ok_or_else(|| {
            err("not a VFIO device node (expected /dev/vfio/<group> or \
                 /dev/vfio/devices/vfio<N>)"
                .into())
        })?;
        let (group, bdfs) = match node {
            VfioNode::Group(group) => {
                let dir = self
                    .sysfs
                    .join("kernel/iommu_groups")
                    .join(&group)
                    .join("devices");
                let entries = std::fs::read_dir(&dir).map_err(|e| {
                    err(format!(
                        "IOMMU group {group} does not exist on this host ({}: {e}); is the \
                         IOMMU on (intel_iommu=on / amd_iommu=on)?",
                        dir.display()
                    ))
                })?;
                let mut bdfs: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                bdfs.sort();
                (group, bdfs)
            }
            VfioNode::Cdev(name) => {
                let link = self.sysfs.join("class/vfio-dev").join(&name).join("device");
                let target = std::fs::read_link(&link).map_err(|e| {
                    err(format!(
                        "no VFIO device {name} on this host ({}: {e})",
                        link.display()
                    ))
                })?;
                let bdf = file_name(&target);
                let group = self.group_of(&bdf).map_err(err)?;
                (group, vec![bdf])
            }
        };
        if bdfs.is_empty() {
            return Err(err(format!("IOMMU group {group} has no devices")));
        }
        let functions = bdfs
            .iter()
            .map(|bdf| self.function(bdf, &group))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(err)?;
        Ok(VfioGroup {
            path: path.to_path_buf(),
            group,
            functions,
        })
    }

    /// The sysfs root discovery reads.
    pub(crate) fn sysfs(&self) -> &Path {
        &self.sysfs
    }

    fn pci_dir(&self, bdf: &str) -> PathBuf {
        self.sysfs.join("bus/pci/devices").join(bdf)
    }

    fn group_of(&self, bdf: &str) -> std::result::Result<String, String> {
        let link = self.pci_dir(bdf).join("iommu_group");
        std::fs::read_link(&link)
            .map(|t| file_name(&t))
            .map_err(|e| {
                format!(
                    "PCI device {bdf} has no IOMMU group ({}: {e})",
                    link.display()
                )
            })
    }

    fn function(&self, bdf: &str, group: &str) -> std::result::Result<PciFunction, String> {
        let dir = self.pci_dir(bdf);
        let id = |name: &str| -> std::result::Result<u32, String> {
            let f = dir.join(name);
            let text = std::fs::read_to_string(&f)
                .map_err(|e| format!("PCI device {bdf}: cannot read {}: {e}", f.display()))?;
            let t = text.trim();
            u32::from_str_radix(t.trim_start_matches("0x"), 16)
                .map_err(|_| format!("PCI device {bdf}: {} holds {t:?}, not hex", f.display()))
        };
        let vendor = id("vendor")? as u16;
        let device = id("device")? as u16;
        let class = id("class")?;
        let driver = std::fs::read_link(dir.join("driver"))
            .ok()
            .map(|t| file_name(&t));
        if driver.as_deref() != Some(VFIO_PCI_DRIVER) {
            let now = match &driver {
                Some(d) => format!("bound to {d}"),
                None => "bound to no driver".into(),
            };
            return Err(format!(
                "PCI device {bdf} ({vendor:04x}:{device:04x}) of IOMMU group {group} is {now}, \
                 not {VFIO_PCI_DRIVER}; every device of a group must be: bind it with `echo \
                 {VFIO_PCI_DRIVER} > /sys/bus/pci/devices/{bdf}/driver_override` then `echo \
                 {bdf} > /sys/bus/pci/drivers_probe` (after unbinding it from its driver)"
            ));
        }
        Ok(PciFunction {
            bdf: bdf.to_string(),
            vendor,
            device,
            class,
            iommu_group: group.to_string(),
        })
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs fixture: PCI functions with ids, drivers and groups.
    struct Sysfs {
        dir: tempfile::TempDir,
    }

    impl Sysfs {
        fn new() -> Self {
            Sysfs {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn function(&self, bdf: &str, ids: (u16, u16, u32), driver: Option<&str>, group: &str) {
            let r = self.root();
            let real = r.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&real).unwrap();
            std::fs::write(real.join("vendor"), format!("{:#06x}\n", ids.0)).unwrap();
            std::fs::write(real.join("device"), format!("{:#06x}\n", ids.1)).unwrap();
            std::fs::write(real.join("class"), format!("{:#08x}\n", ids.2)).unwrap();
            if let Some(d) = driver {
                let drv = r.join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&drv).unwrap();
                symlink(&drv, real.join("driver")).unwrap();
            }
            let g = r.join("kernel/iommu_groups").join(group);
            std::fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&g, real.join("iommu_group")).unwrap();
            symlink(&real, g.join("devices").join(bdf)).unwrap();
            let bus = r.join("bus/pci/devices");
            std::fs::create_dir_all(&bus).unwrap();
            symlink(&real, bus.join(bdf)).unwrap();
        }

        fn cdev(&self, name: &str, bdf: &str) {
            let d = self.root().join("class/vfio-dev").join(name);
            std::fs::create_dir_all(&d).unwrap();
            symlink(
                self.root().join("devices/pci0000:00").join(bdf),
                d.join("device"),
            )
            .unwrap();
        }
    }

    const EDU: (u16, u16, u32) = (0x1234, 0x11e8, 0x00ff00);

    #[test]
    fn nodes_are_groups_or_iommufd_cdevs() {
        let p = |s: &str| VfioNode::parse(Path::new(s));
        assert_eq!(p("/dev/vfio/2"), Some(VfioNode::Group("2".into())));
        assert_eq!(
            p("/dev/vfio/devices/vfio0"),
            Some(VfioNode::Cdev("vfio0".into()))
        );
        for not in [
            "/dev/vfio/vfio",
            "/dev/vfio",
            "/dev/vfio/2/x",
            "/dev/vfio/devices/vfio",
            "/dev/vfio/devices/x1",
            "/dev/null",
            "/dev/vfio/../2",
        ] {
            assert_eq!(p(not), None, "{not}");
        }
    }

    #[test]
    fn a_group_bound_to_vfio_pci_yields_its_functions() {
        let s = Sysfs::new();
        s.function("0000:00:02.0", EDU, Some("vfio-pci"), "2");
        s.function(
            "0000:00:03.0",
            (0x8086, 0x10d3, 0x020000),
            Some("e1000e"),
            "3",
        );
        let g = VfioDiscovery::new(s.root())
            .group(Path::new("/dev/vfio/2"))
            .unwrap();
        assert_eq!(g.group, "2");
        assert_eq!(
            g.functions,
            vec![PciFunction {
                bdf: "0000:00:02.0".into(),
                vendor: 0x1234,
                device: 0x11e8,
                class: 0x00ff00,
                iommu_group: "2".into(),
            }]
        );
        assert_eq!(
            g.devices(),
            vec![VfioDevice {
                id: "vfio-2-0".into(),
                bdf: "0000:00:02.0".into()
            }]
        );
    }

    #[test]
    fn a_member_not_bound_to_vfio_pci_is_refused_naming_it_and_the_fix() {
        let s = Sysfs::new();
        s.function("0000:01:00.0", EDU, Some("vfio-pci"), "7");
        s.function(
            "0000:01:00.1",
            (0x10de, 0x0fb9, 0x040300),
            Some("snd_hda_intel"),
            "7",
        );
        let e = VfioDiscovery::new(s.root())
            .group(Path::new("/dev/vfio/7"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/vfio/7")
                && e.contains("0000:01:00.1")
                && e.contains("10de:0fb9")
                && e.contains("bound to snd_hda_intel")
                && e.contains("driver_override"),
            "{e}"
        );
        s.function("0000:02:00.0", EDU, None, "8");
        let e = VfioDiscovery::new(s.root())
            .group(Path::new("/dev/vfio/8"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bound to no driver"), "{e}");
    }

    #[test]
    fn a_missing_group_or_device_or_a_wrong_path_is_refused() {
        let s = Sysfs::new();
        let d = VfioDiscovery::new(s.root());
        let e = d.group(Path::new("/dev/vfio/9")).unwrap_err().to_string();
        assert!(
            e.contains("/dev/vfio/9") && e.contains("group 9 does not exist"),
            "{e}"
        );
        let e = d
            .group(Path::new("/dev/vfio/devices/vfio3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no VFIO device vfio3"), "{e}");
        let e = d.group(Path::new("/dev/sda")).unwrap_err().to_string();
        assert!(e.contains("not a VFIO device node"), "{e}");
    }

    #[test]
    fn an_iommufd_cdev_names_one_function_and_its_group() {
        let s = Sysfs::new();
        s.function("0000:00:02.0", EDU, Some("vfio-pci"), "2");
        s.cdev("vfio0", "0000:00:02.0");
        let g = VfioDiscovery::new(s.root())
            .group(Path::new("/dev/vfio/devices/vfio0"))
            .unwrap();
        assert_eq!(g.group, "2");
        assert_eq!(g.functions.len(), 1);
        assert_eq!(g.functions[0].bdf, "0000:00:02.0");
    }
}
