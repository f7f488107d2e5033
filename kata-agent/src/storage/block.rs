//! Block storages named by where the VM put the disk: a `blk` storage whose source is Kata's
//! PCI path (`"02/00"`: the slot of each bridge or port from the root bus, then the
//! device's), a `scsi` storage whose source is `"<target>:<lun>"` on the VM's virtio-scsi
//! controller. A source that is already a `/dev` path is used as it is (`mmioblk`, `nvdimm`
//! and any of them).
//!
//! [`resolve_devices`] turns those sources into the disk's `/dev` node before the storage is
//! planned and mounted: the device is found under sysfs (`/sys/devices/pci0000:00/...` for a
//! PCI path, `/sys/bus/scsi/devices/<host>:0:<target>:<lun>` for SCSI, after asking every SCSI
//! host to scan that address) and waited for, polling, for at most `agent.hotplug_timeout`
//! (20 s by default; a hot-plugged disk appears a moment after the host's `device_add`). The mount itself is the
//! common storage path: the storage's `fstype` and options (`ro` honoured).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::StorageSpec;
use crate::error::{AgentError, Result};

/// How often sysfs is looked at while waiting.
const POLL: Duration = Duration::from_millis(50);

/// The drivers whose source is a PCI path (or a `/dev` path).
const PCI_DRIVERS: &[&str] = &["blk"];

/// Where a block storage's disk is, as its source says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DiskAddress {
    /// Already a device node.
    Dev(PathBuf),
    /// A PCI path: slots from the root bus.
    Pci(Vec<u8>),
    /// A SCSI disk: target and LUN.
    Scsi(u32, u32),
}

fn parse_pci_path(s: &str) -> Option<Vec<u8>> {
    let slots = s
        .split('/')
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
                .filter(|v| *v < 32)
        })
        .collect::<Option<Vec<_>>>()?;
    (!slots.is_empty()).then_some(slots)
}

fn parse_scsi(s: &str) -> Option<(u32, u32)> {
    let (t, l) = s.split_once(':')?;
    Some((t.parse().ok()?, l.parse().ok()?))
}

/// Checks a block storage's source for its driver (`field` names the storage).
pub(super) fn address(driver: &str, source: &str, field: &str) -> Result<DiskAddress> {
    if source.starts_with("/dev/") {
        return Ok(DiskAddress::Dev(PathBuf::from(source)));
    }
    let parsed = if PCI_DRIVERS.contains(&driver) {
        parse_pci_path(source).map(DiskAddress::Pci)
    } else if driver == "scsi" {
        parse_scsi(source).map(|(t, l)| DiskAddress::Scsi(t, l))
    } else {
        None
    };
    parsed.ok_or_else(|| {
        let form = match driver {
            "scsi" => "a SCSI address \"<target>:<lun>\"",
            d if PCI_DRIVERS.contains(&d) => "a PCI path such as \"02/00\"",
            _ => "nothing else",
        };
        AgentError::invalid(
            format!("{field}.source"),
            format!(
                "must be a device path under /dev or {form} for driver {driver:?}, got {source:?}"
            ),
        )
    })
}

/// The block device name (`vda`, `sdb`) under a device's sysfs directory: a `block/<name>`
/// entry directly in it (SCSI) or one level down (`virtio<n>/block/<name>`).
fn block_name_under(dir: &Path) -> Option<String> {
    let first = |d: PathBuf| -> Option<String> {
        std::fs::read_dir(d)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .min()
    };
    if let Some(n) = first(dir.join("block")) {
        return Some(n);
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        .find_map(|e| first(e.path().join("block")))
}

/// The sysfs directory of the PCI device at `slots` below `sysfs` (`/sys`), if it exists now:
/// from the root complex `devices/pci0000:00`, each bridge's secondary bus is read from its
/// `pci_bus/` entry.
fn pci_device_dir(sysfs: &Path, slots: &[u8]) -> Option<PathBuf> {
    let mut dir = sysfs.join("devices/pci0000:00");
    let mut bus = "0000:00".to_string();
    for (i, slot) in slots.iter().enumerate() {
        dir = dir.join(format!("{bus}:{slot:02x}.0"));
        if !dir.is_dir() {
            return None;
        }
        if i + 1 < slots.len() {
            bus = std::fs::read_dir(dir.join("pci_bus"))
                .ok()?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .min()?;
        }
    }
    Some(dir)
}

/// The SCSI disk `target:lun` on any host, if it exists now.
fn scsi_device_dir(sysfs: &Path, target: u32, lun: u32) -> Option<PathBuf> {
    let suffix = format!(":0:{target}:{lun}");
    std::fs::read_dir(sysfs.join("bus/scsi/devices"))
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| e.path())
}

/// Asks every SCSI host to scan `target:lun` (channel 0). Best effort: virtio-scsi reports a
/// hot-plugged disk by itself too.
fn scsi_scan(sysfs: &Path, target: u32, lun: u32) {
    let Ok(hosts) = std::fs::read_dir(sysfs.join("class/scsi_host")) else {
        return;
    };
    for h in hosts.flatten() {
        if let Err(e) = std::fs::write(h.path().join("scan"), format!("0 {target} {lun}")) {
            tracing::debug!(host = %h.path().display(), error = %e, "SCSI scan");
        }
    }
}

/// The `/dev` node of the disk at `address`, if it is there now (sysfs under `sysfs`, device
/// nodes under `dev`).
pub(super) fn find_now(sysfs: &Path, dev: &Path, address: &DiskAddress) -> Option<PathBuf> {
    let dir = match address {
        DiskAddress::Dev(p) => return p.exists().then(|| p.clone()),
        DiskAddress::Pci(slots) => pci_device_dir(sysfs, slots)?,
        DiskAddress::Scsi(t, l) => scsi_device_dir(sysfs, *t, *l)?,
    };
    let node = dev.join(block_name_under(&dir)?);
    // The node appears while the kernel is still adding the disk, which cannot be opened
    // (ENXIO) until it is live: a disk is found once it opens.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&node)
        .is_ok()
        .then_some(node)
}

/// Waits (bounded by `wait`) until the disk at `address` has its `/dev` node.
pub(super) async fn wait_for(
    sysfs: &Path,
    dev: &Path,
    address: &DiskAddress,
    wait: Duration,
    what: &str,
) -> Result<PathBuf> {
    if let DiskAddress::Scsi(t, l) = address {
        scsi_scan(sysfs, *t, *l);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(node) = find_now(sysfs, dev, address) {
            return Ok(node);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: format!(
                    "{what}: no disk appeared at {address:?} (was it hot-plugged, and on the bus \
                     the host said?)"
                ),
                seconds: wait.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded by `wait`) until a virtio-fs device is bound to the guest's `virtiofs`
/// driver (`<sysfs>/bus/virtio/drivers/virtiofs/virtio*`). A clone of a VM template gets its
/// share hot-plugged after the restore, a moment before `CreateSandbox`: its mount must not
/// race the guest's probe. Linux binds the device before the driver registers its tag, and
/// 6.1 shows no tag in sysfs, so any bound device ends this wait (`tag` names the share in the
/// error) and the mount itself retries a tag not yet known (`storage::mount`).
pub(super) async fn wait_virtiofs(
    sysfs: &Path,
    tag: &str,
    wait: Duration,
    what: &str,
) -> Result<()> {
    let driver = sysfs.join("bus/virtio/drivers/virtiofs");
    let bound = || {
        std::fs::read_dir(&driver).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        })
    };
    let deadline = tokio::time::Instant::now() + wait;
    while !bound() {
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: format!(
                    "{what}: no virtio-fs device with the tag {tag:?} (none is bound to the \
                     virtiofs driver in {}; was the share plugged, and has the guest kernel \
                     CONFIG_VIRTIO_FS?)",
                    driver.display()
                ),
                seconds: wait.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// The storages with each block source that names a PCI path or SCSI address replaced by the
/// disk's `/dev` node, waiting for hot-plugged disks to appear (`agent.hotplug_timeout`, 20 s by default). Other
/// storages are returned as they are; for a `virtio-fs` storage a virtio-fs device is waited
/// for (`wait_virtiofs`, the same bound).
pub async fn resolve_devices(specs: &[StorageSpec]) -> Result<Vec<StorageSpec>> {
    let mut out = specs.to_vec();
    for (i, s) in out.iter_mut().enumerate() {
        if s.driver == "virtio-fs" {
            let what = format!("storages[{i}] (virtio-fs for {})", s.mount_point);
            let wait = crate::config::tunables().hotplug_timeout;
            wait_virtiofs(Path::new("/sys"), &s.source, wait, &what).await?;
            continue;
        }
        if !PCI_DRIVERS.contains(&s.driver.as_str()) && s.driver != "scsi" {
            continue;
        }
        let field = format!("storages[{i}]");
        let address = address(&s.driver, &s.source, &field)?;
        if matches!(address, DiskAddress::Dev(_)) {
            continue;
        }
        let what = format!(
            "{field} ({} {:?} for {})",
            s.driver, s.source, s.mount_point
        );
        let node = wait_for(
            Path::new("/sys"),
            Path::new("/dev"),
            &address,
            crate::config::tunables().hotplug_timeout,
            &what,
        )
        .await?;
        tracing::info!(driver = %s.driver, source = %s.source, device = %node.display(), "block storage's disk found");
        s.source = node.to_string_lossy().into_owned();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_virtiofs_mount_waits_for_a_bound_device_and_a_timeout_names_the_tag() {
        let sys = tempfile::tempdir().unwrap();
        let driver = sys.path().join("bus/virtio/drivers/virtiofs");
        std::fs::create_dir_all(&driver).unwrap();
        let wait = Duration::from_millis(300);
        let e = wait_virtiofs(sys.path(), "kataShared", wait, "storages[0]")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"kataShared\"") && e.contains("storages[0]"),
            "{e}"
        );
        // Bound a moment later (the hot-plug): the wait returns.
        let bind = driver.join("virtio3");
        let plug = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::create_dir(bind).unwrap();
        });
        wait_virtiofs(
            sys.path(),
            "kataShared",
            Duration::from_secs(5),
            "storages[0]",
        )
        .await
        .unwrap();
        plug.await.unwrap();
    }

    #[test]
    fn sources_are_checked_for_their_driver() {
        assert_eq!(
            address("blk", "02/00", "s").unwrap(),
            DiskAddress::Pci(vec![2, 0])
        );
        assert_eq!(
            address("mmioblk", "/dev/vdb", "s").unwrap(),
            DiskAddress::Dev("/dev/vdb".into())
        );
        assert_eq!(
            address("scsi", "0:3", "s").unwrap(),
            DiskAddress::Scsi(0, 3)
        );
        for (driver, bad) in [
            ("blk", "2/0"),
            ("blk", "0:1"),
            ("blk", "20/00"),
            ("scsi", "02/00"),
            ("scsi", "a:b"),
            ("nvdimm", "02/00"),
        ] {
            let e = address(driver, bad, "storages[1]").unwrap_err().to_string();
            assert!(e.starts_with("storages[1].source"), "{driver} {bad}: {e}");
        }
    }

    /// A fake sysfs: a root port in slot 3 whose secondary bus 0000:01 holds a virtio-blk disk
    /// `vdb` in slot 0; a SCSI disk `sda` at 0:0:0:2 on host0.
    fn fake_sysfs(root: &Path) {
        let port = root.join("sys/devices/pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(port.join("pci_bus/0000:01")).unwrap();
        std::fs::create_dir_all(port.join("0000:01:00.0/virtio2/block/vdb")).unwrap();
        let scsi = root.join("sys/bus/scsi/devices/0:0:0:2/block/sda");
        std::fs::create_dir_all(scsi).unwrap();
        std::fs::create_dir_all(root.join("sys/class/scsi_host/host0")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
    }

    #[test]
    fn pci_paths_and_scsi_addresses_lead_to_the_device_node() {
        let tmp = tempfile::tempdir().unwrap();
        fake_sysfs(tmp.path());
        let (sys, dev) = (tmp.path().join("sys"), tmp.path().join("dev"));
        // The sysfs entries exist but the nodes do not yet: not found.
        assert_eq!(find_now(&sys, &dev, &DiskAddress::Pci(vec![3, 0])), None);
        std::fs::write(dev.join("vdb"), "").unwrap();
        std::fs::write(dev.join("sda"), "").unwrap();
        assert_eq!(
            find_now(&sys, &dev, &DiskAddress::Pci(vec![3, 0])),
            Some(dev.join("vdb"))
        );
        assert_eq!(
            find_now(&sys, &dev, &DiskAddress::Scsi(0, 2)),
            Some(dev.join("sda"))
        );
        assert_eq!(find_now(&sys, &dev, &DiskAddress::Pci(vec![4, 0])), None);
        assert_eq!(find_now(&sys, &dev, &DiskAddress::Scsi(0, 3)), None);
    }

    #[tokio::test]
    async fn a_disk_that_appears_late_is_waited_for_and_one_that_never_does_fails() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("dev")).unwrap();
        let (sys, dev) = (tmp.path().join("sys"), tmp.path().join("dev"));
        let late = {
            let root = tmp.path().to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                fake_sysfs(&root);
                std::fs::write(root.join("dev/vdb"), "").unwrap();
            })
        };
        let found = wait_for(
            &sys,
            &dev,
            &DiskAddress::Pci(vec![3, 0]),
            Duration::from_secs(10),
            "s",
        )
        .await
        .unwrap();
        assert_eq!(found, dev.join("vdb"));
        late.await.unwrap();
        let t0 = std::time::Instant::now();
        let e = wait_for(
            &sys,
            &dev,
            &DiskAddress::Pci(vec![9, 0]),
            Duration::from_millis(300),
            "storages[0] (blk \"09/00\")",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("storages[0]") && e.contains("no disk"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "bounded");
        // The scan request reached the fake host.
        scsi_scan(&sys, 0, 2);
        let scan = std::fs::read_to_string(sys.join("class/scsi_host/host0/scan")).unwrap();
        assert_eq!(scan, "0 0 2");
    }
}
