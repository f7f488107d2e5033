//! Disk hot-plug on the built-in VMM: with `block_device_driver = "virtio-blk-pci"` (or Kata's
//! Go name `virtio-blk`) the VM is built with `pcie_root_port` spare PCIe root ports — the
//! pool VFIO hot-plug (`hot_plug_vfio = "root-port"`) takes from too — and
//! [`Hypervisor::add_device`](crate::hypervisor::Hypervisor::add_device) puts a disk (a raw
//! image file) behind the first free one as virtio-blk on virtio-pci while the VM runs
//! (kata-vmm's `devices::virtio::pci::hotplug`; the guest's pciehp brings it up and the agent's
//! `virtio-blk-pci` storage driver waits for its PCI path, `<port slot>/00`). Removing it
//! presses the slot's attention button and waits (at most [`super::hotplug::UNPLUG_WAIT`]) for
//! the guest to power the slot off; then the disk is closed and the port is free.
//! Disks given before boot stay virtio-blk on virtio-mmio.
//!
//! The work (opening the image, waiting for the guest) runs on a blocking thread of the
//! caller, never on a vCPU or device thread.
//!
//! What every virtio device hot-plugged onto the spare root ports shares, disks here and NICs
//! (`net_hotplug`), is here once: the list of the devices plugged ([`Hot`], [`HotList`]), the
//! plug on a blocking task that records the device there ([`plug_and_record`]), the unplug
//! ([`remove`]) and the guest path ([`guest_path`], [`address`]); a kind says how it is named
//! ([`HotKind`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_vmm::devices::virtio::block::BlockConfig;
use kata_vmm::devices::virtio::pci::hotplug::{HotDevice, VirtioHotplug};

use crate::config::{BlockDeviceDriver, HypervisorConfig};
use crate::device::{BlockDevice, GuestAddress, PciPath, PciePort};
use crate::error::{Error, Result};

/// A virtio device (a disk, a NIC) hot-plugged into a running VM.
#[derive(Debug, Clone)]
pub(super) struct Hot<D> {
    pub(super) device: D,
    /// Its root port's slot on the root bus.
    pub(super) port_slot: u8,
}

/// The devices of one kind hot-plugged into the running VM, shared with the blocking tasks
/// that record them.
pub(super) type HotList<D> = Arc<Mutex<Vec<Hot<D>>>>;

/// A disk hot-plugged into a running VM.
pub(super) type HotDisk = Hot<BlockDevice>;

/// The disks hot-plugged into the running VM.
pub(super) type HotDisks = HotList<BlockDevice>;

/// How a kind of hot-plugged device is named in errors.
pub(super) trait HotKind: Clone + Send + 'static {
    /// Its id (unique among the devices of its kind).
    fn id(&self) -> &str;
    /// The error naming it, with `why`.
    fn invalid(&self, why: String) -> Error;
    /// The refusal of a second device with its id.
    fn duplicate(&self) -> Error;
}

impl HotKind for BlockDevice {
    fn id(&self) -> &str {
        &self.id
    }

    fn invalid(&self, why: String) -> Error {
        invalid(self, why)
    }

    fn duplicate(&self) -> Error {
        duplicate(self)
    }
}

/// Whether `c` asks for disks on virtio-pci (`block_device_driver`).
pub(super) fn pci_disks(c: &HypervisorConfig) -> bool {
    matches!(
        c.block_device_driver,
        BlockDeviceDriver::VirtioBlkPci | BlockDeviceDriver::VirtioBlk
    )
}

/// The spare root ports the VM is built with: `pcie_root_port`, one pool for VFIO hot-plug
/// (`hot_plug_vfio = "root-port"`), disk hot-plug (`block_device_driver = "virtio-blk-pci"`)
/// and NIC hot-plug (`net_hotplug`: any, an interface added to the pod after boot).
pub(super) fn spare_ports(c: &HypervisorConfig) -> u8 {
    u8::try_from(c.pcie_root_port).unwrap_or(u8::MAX)
}

/// Whether disks can be hot-plugged with `c`.
pub(super) fn enabled(c: &HypervisorConfig) -> bool {
    pci_disks(c) && c.pcie_root_port > 0 && !c.disable_block_device_use
}

/// The guest PCI path of the device behind the root port in `port_slot`: `<slot>/00`.
pub(super) fn guest_path(id: &str, port_slot: u8) -> Result<GuestAddress> {
    let path = PciPath::new(vec![port_slot, 0]).map_err(|e| Error::Unsupported {
        backend: super::NAME,
        what: format!("device {id}: {e}"),
    })?;
    Ok(GuestAddress::Pci { path })
}

/// The guest PCI path of the hot-plugged device `id` among `list`, if it is one.
pub(super) fn address<D: HotKind>(list: &[Hot<D>], id: &str) -> Option<Result<GuestAddress>> {
    list.iter()
        .find(|h| h.device.id() == id)
        .map(|h| guest_path(id, h.port_slot))
}

fn invalid(d: &BlockDevice, e: impl std::fmt::Display) -> Error {
    Error::InvalidDevice {
        kind: "block",
        id: format!("{} ({})", d.id, d.path.display()),
        reason: e.to_string(),
    }
}

/// Why a disk cannot be hot-plugged with `c` (the keys to set), or `None` when it can.
pub(super) fn refusal(c: &HypervisorConfig, d: &BlockDevice) -> Option<Error> {
    if enabled(c) {
        return None;
    }
    let why = if !pci_disks(c) {
        format!(
            "the built-in VMM hot-plugs disks only as virtio-blk on PCI: set block_device_driver \
             = \"virtio-blk-pci\" (now \"{}\") and pcie_root_port >= 1 in [hypervisor.dragonball]",
            c.block_device_driver
        )
    } else if c.disable_block_device_use {
        "disable_block_device_use = true in [hypervisor.dragonball]".to_string()
    } else {
        "pcie_root_port = 0: set pcie_root_port >= 1 in [hypervisor.dragonball] (the spare \
         root ports disks are hot-plugged into)"
            .to_string()
    };
    Some(invalid(d, why))
}

/// The refusal of a second disk with `d`'s id.
fn duplicate(d: &BlockDevice) -> Error {
    invalid(
        d,
        format!(
            "a disk with id {:?} is hot-plugged already: give each disk its own id, or remove \
             that one first",
            d.id
        ),
    )
}

/// Hot-plugs `d` through `handle` (the running VM's) and records it in `disks`.
pub(super) async fn add(
    c: &HypervisorConfig,
    handle: VirtioHotplug,
    disks: HotDisks,
    d: &BlockDevice,
) -> Result<HotDisk> {
    if super::lock(&disks).iter().any(|h| h.device.id == d.id) {
        return Err(duplicate(d));
    }
    if handle.free_ports() == 0 {
        return Err(Error::NoFreePort {
            device: d.id.clone(),
            port: PciePort::RootPort,
            capacity: c.pcie_root_port,
            hint: "raise pcie_root_port in [hypervisor.dragonball] (the spare root ports the \
                   VM is built with, shared by disks and VFIO), or remove another container's \
                   device first"
                .into(),
        });
    }
    let config = BlockConfig {
        path: d.path.clone(),
        read_only: d.read_only,
        id: Some(d.id.chars().take(20).collect()),
    };
    let disk = HotDevice::Block(config);
    plug_and_record(disks, d, move || handle.plug(&disk).map(|p| p.port_slot)).await
}

/// Runs `plug` (the device's port slot, or why not) on a blocking thread and records the
/// device in `list` there, under the list's lock from the duplicate check to the record: a
/// second device with the same id is refused, and a device whose add was dropped (its caller
/// gone) while plugging is still recorded, so `remove_device` finds and unplugs it.
pub(super) async fn plug_and_record<D, F, E>(list: HotList<D>, d: &D, plug: F) -> Result<Hot<D>>
where
    D: HotKind,
    F: FnOnce() -> std::result::Result<u8, E> + Send + 'static,
    E: std::fmt::Display,
{
    let device = d.clone();
    tokio::task::spawn_blocking(move || {
        let mut list = super::lock(&list);
        if list.iter().any(|h| h.device.id() == device.id()) {
            return Err(device.duplicate());
        }
        let port_slot = plug().map_err(|e| device.invalid(e.to_string()))?;
        let hot = Hot { device, port_slot };
        list.push(hot.clone());
        Ok(hot)
    })
    .await
    .map_err(|e| d.invalid(format!("the hot-plug task failed: {e}")))?
}

/// Hot-unplugs the device `d` in `port_slot` through `handle`, waiting up to `wait` for the
/// guest to release it.
pub(super) async fn remove<D: HotKind>(
    handle: VirtioHotplug,
    d: &D,
    port_slot: u8,
    wait: Duration,
) -> Result<()> {
    tokio::task::spawn_blocking(move || handle.unplug(port_slot, wait))
        .await
        .map_err(|e| d.invalid(format!("the hot-unplug task failed: {e}")))?
        .map_err(|e| d.invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HypervisorType;

    fn with(driver: BlockDeviceDriver, ports: u32) -> HypervisorConfig {
        HypervisorConfig {
            block_device_driver: driver,
            pcie_root_port: ports,
            ..HypervisorConfig::defaults_for(HypervisorType::Dragonball)
        }
    }

    fn disk() -> BlockDevice {
        BlockDevice {
            id: "blk-0".into(),
            path: "/var/lib/disk.img".into(),
            read_only: false,
        }
    }

    #[test]
    fn virtio_blk_pci_with_root_ports_hot_plugs_and_shares_the_ports() {
        let c = with(BlockDeviceDriver::VirtioBlkPci, 2);
        assert!(enabled(&c) && refusal(&c, &disk()).is_none());
        assert_eq!(spare_ports(&c), 2);
        assert!(enabled(&with(BlockDeviceDriver::VirtioBlk, 1)));
        // The default (virtio-mmio): no disk hot-plug; the spare ports are there for NICs.
        let mmio = with(BlockDeviceDriver::VirtioBlkMmio, 2);
        assert!(!enabled(&mmio));
        assert_eq!(spare_ports(&mmio), 2);
        assert_eq!(spare_ports(&with(BlockDeviceDriver::VirtioBlkMmio, 0)), 0);
    }

    #[tokio::test]
    async fn a_duplicate_id_is_refused_naming_it_and_the_first_disk_kept() {
        let disks = HotDisks::default();
        let a = plug_and_record(disks.clone(), &disk(), || Ok::<u8, String>(1)).await;
        assert_eq!(a.unwrap().port_slot, 1);
        let other = BlockDevice {
            path: "/var/lib/other.img".into(),
            ..disk()
        };
        let plugged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = plugged.clone();
        let e = plug_and_record(disks.clone(), &other, move || {
            p.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<u8, String>(2)
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"blk-0\"") && e.contains("already"), "{e}");
        assert!(
            !plugged.load(std::sync::atomic::Ordering::SeqCst),
            "nothing plugged"
        );
        let kept = disks.lock().unwrap().clone();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].device.path, disk().path);
        // A failed plug records nothing.
        let e = plug_and_record(HotDisks::default(), &disk(), || Err("no port"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no port"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plug_whose_add_is_dropped_is_still_recorded() {
        let disks = HotDisks::default();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let d = disk();
        let add = plug_and_record(disks.clone(), &d, move || {
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            Ok::<u8, String>(3)
        });
        // The caller gives up while the disk is being plugged.
        let dropped = tokio::time::timeout(Duration::from_millis(50), add).await;
        assert!(dropped.is_err(), "the add was still plugging");
        started_rx.recv().unwrap();
        go_tx.send(()).unwrap();
        for _ in 0..200 {
            if !disks.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let kept = disks.lock().unwrap().clone();
        assert_eq!(kept.len(), 1, "recorded, so remove_device can unplug it");
        assert_eq!(
            (kept[0].device.id.as_str(), kept[0].port_slot),
            ("blk-0", 3)
        );
    }

    #[test]
    fn refusals_name_the_keys_to_set() {
        let d = disk();
        let e = refusal(&with(BlockDeviceDriver::VirtioBlkMmio, 1), &d)
            .unwrap()
            .to_string();
        assert!(
            e.contains("blk-0")
                && e.contains("block_device_driver")
                && e.contains("virtio-blk-mmio"),
            "{e}"
        );
        let e = refusal(&with(BlockDeviceDriver::VirtioBlkPci, 0), &d)
            .unwrap()
            .to_string();
        assert!(e.contains("pcie_root_port"), "{e}");
        let off = HypervisorConfig {
            disable_block_device_use: true,
            ..with(BlockDeviceDriver::VirtioBlkPci, 1)
        };
        let e = refusal(&off, &d).unwrap().to_string();
        assert!(e.contains("disable_block_device_use"), "{e}");
    }
}
