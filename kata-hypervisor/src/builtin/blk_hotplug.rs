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

use std::time::Duration;

use kata_vmm::devices::virtio::block::BlockConfig;
use kata_vmm::devices::virtio::pci::hotplug::BlockHotplug;

use crate::config::{BlockDeviceDriver, HypervisorConfig};
use crate::device::{BlockDevice, GuestAddress, PciPath, PciePort};
use crate::error::{Error, Result};

/// A disk hot-plugged into a running VM.
#[derive(Debug, Clone)]
pub(super) struct HotDisk {
    pub(super) device: BlockDevice,
    /// Its root port's slot on the root bus.
    pub(super) port_slot: u8,
}

/// Whether `c` asks for disks on virtio-pci (`block_device_driver`).
pub(super) fn pci_disks(c: &HypervisorConfig) -> bool {
    matches!(
        c.block_device_driver,
        BlockDeviceDriver::VirtioBlkPci | BlockDeviceDriver::VirtioBlk
    )
}

/// The spare root ports the VM is built with: `pcie_root_port` for VFIO hot-plug
/// (`hot_plug_vfio = "root-port"`) or for disk hot-plug (`block_device_driver =
/// "virtio-blk-pci"`), one pool for both.
pub(super) fn spare_ports(c: &HypervisorConfig) -> u8 {
    let vfio = super::hotplug::spare_ports(c);
    if pci_disks(c) {
        vfio.max(u8::try_from(c.pcie_root_port).unwrap_or(u8::MAX))
    } else {
        vfio
    }
}

/// Whether disks can be hot-plugged with `c`.
pub(super) fn enabled(c: &HypervisorConfig) -> bool {
    pci_disks(c) && c.pcie_root_port > 0 && !c.disable_block_device_use
}

/// The guest PCI path of the disk behind the root port in `port_slot`: `<slot>/00`.
pub(super) fn guest_path(id: &str, port_slot: u8) -> Result<GuestAddress> {
    let path = PciPath::new(vec![port_slot, 0]).map_err(|e| Error::Unsupported {
        backend: super::NAME,
        what: format!("device {id}: {e}"),
    })?;
    Ok(GuestAddress::Pci { path })
}

/// The guest PCI path of the hot-plugged disk `id` among `disks`, if it is one.
pub(super) fn address(disks: &[HotDisk], id: &str) -> Option<Result<GuestAddress>> {
    disks
        .iter()
        .find(|h| h.device.id == id)
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

/// Hot-plugs `d` through `handle` (the running VM's).
pub(super) async fn add(
    c: &HypervisorConfig,
    handle: BlockHotplug,
    d: &BlockDevice,
) -> Result<HotDisk> {
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
    let plugged = tokio::task::spawn_blocking(move || handle.plug(&config))
        .await
        .map_err(|e| invalid(d, format!("the hot-plug task failed: {e}")))?
        .map_err(|e| invalid(d, e))?;
    Ok(HotDisk {
        device: d.clone(),
        port_slot: plugged.port_slot,
    })
}

/// Hot-unplugs the disk in `port_slot` through `handle`, waiting up to `wait` for the guest
/// to release it.
pub(super) async fn remove(
    handle: BlockHotplug,
    d: &BlockDevice,
    port_slot: u8,
    wait: Duration,
) -> Result<()> {
    tokio::task::spawn_blocking(move || handle.unplug(port_slot, wait))
        .await
        .map_err(|e| invalid(d, format!("the hot-unplug task failed: {e}")))?
        .map_err(|e| invalid(d, e))
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
        // The default (virtio-mmio): no disk hot-plug, no spare ports for it.
        let mmio = with(BlockDeviceDriver::VirtioBlkMmio, 2);
        assert!(!enabled(&mmio));
        assert_eq!(spare_ports(&mmio), 0);
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
