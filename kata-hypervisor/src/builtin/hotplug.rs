//! VFIO hot-plug on the built-in VMM: with `hot_plug_vfio = "root-port"` the VM is built with
//! `pcie_root_port` empty PCIe root ports after the cold-plugged functions' slots, and
//! [`Hypervisor::add_device`](crate::hypervisor::Hypervisor::add_device) puts a VFIO function
//! behind the first free one while the VM runs (kata-vmm's `devices::vfio::hotplug`: the slot
//! reports presence and raises the port's MSI, the guest's pciehp brings the function up).
//! The guest PCI path is `<port slot>/00`. With `hot_plug_vfio = "switch-port"` the VM has a
//! PCIe switch with `pcie_switch_port` empty downstream ports instead, plugged and released
//! the same way, and the path is `<switch's root port slot>/00/<downstream port>/00`. With
//! `"bridge-port"` a PCI bridge with SHPC slots: the path is `<bridge slot>/<slot>` (from 1),
//! the unplug waits for the guest's shpchp to disable the slot. Removing it presses the slot's attention button
//! and waits (at most [`UNPLUG_WAIT`]) for the guest to power the slot off; then the function
//! is closed and the port is free for the next device.
//!
//! The work runs on a blocking thread of the caller (opening the group and mapping guest RAM
//! for DMA on first use, waiting for the guest), never on a vCPU or device thread.

use std::time::Duration;

use kata_vmm::devices::vfio::hotplug::VfioHotplug;
use kata_vmm::vm::VfioConfig;

use crate::config::HypervisorConfig;
use crate::device::{GuestAddress, PciPath, PciePort, VfioDevice};
use crate::error::{Error, Result};

use super::NAME;

/// How long an unplug waits for the guest to release the slot: pciehp waits 5 s after the
/// attention button (the user's chance to cancel) before it unbinds the driver and powers the
/// slot off.
pub(super) const UNPLUG_WAIT: Duration = Duration::from_secs(20);

/// A function hot-plugged into a running VM.
#[derive(Debug, Clone)]
pub(super) struct HotPlugged {
    pub(super) device: VfioDevice,
    /// Its guest PCI path (the slot of each hop from the root bus).
    pub(super) path: Vec<u8>,
}

/// The spare root ports `c` asks for (`pcie_root_port` with `hot_plug_vfio = "root-port"`,
/// none otherwise).
pub(super) fn spare_ports(c: &HypervisorConfig) -> u8 {
    if c.hot_plug_vfio == PciePort::RootPort {
        u8::try_from(c.pcie_root_port).unwrap_or(u8::MAX)
    } else {
        0
    }
}

/// The guest PCI path `slots` of hot-plugged function `id`.
pub(super) fn guest_path(id: &str, slots: &[u8]) -> Result<GuestAddress> {
    let path = PciPath::new(slots.to_vec()).map_err(|e| Error::Unsupported {
        backend: NAME,
        what: format!("device {id}: {e}"),
    })?;
    Ok(GuestAddress::Pci { path })
}

fn invalid(v: &VfioDevice, e: impl std::fmt::Display) -> Error {
    Error::InvalidDevice {
        kind: "VFIO",
        id: format!("{} (host {})", v.id, v.bdf),
        reason: e.to_string(),
    }
}

/// Hot-plugs `v` through `handle` (the running VM's; `None` without spare root ports: the
/// refusal names the keys).
pub(super) async fn add(
    c: &HypervisorConfig,
    handle: Option<VfioHotplug>,
    plugged: HotVfio,
    v: &VfioDevice,
) -> Result<HotPlugged> {
    let Some(handle) = handle.filter(|_| c.hot_plug_vfio != PciePort::NoPort) else {
        return Err(super::vfio::hot_plug_refused(v));
    };
    if super::lock(&plugged).iter().any(|h| h.device.id == v.id) {
        return Err(duplicate(v));
    }
    if handle.free_ports() == 0 {
        let (capacity, key) = match c.hot_plug_vfio {
            PciePort::SwitchPort => (c.pcie_switch_port, "pcie_switch_port"),
            PciePort::BridgePort => (
                u32::from(super::vfio::BRIDGE_HOT_SLOTS),
                "the bridge's slots (fixed)",
            ),
            _ => (c.pcie_root_port, "pcie_root_port"),
        };
        return Err(Error::NoFreePort {
            device: v.id.clone(),
            port: c.hot_plug_vfio,
            capacity,
            hint: format!(
                "raise {key} in [hypervisor.dragonball] (the spare ports the VM is built \
                 with), or remove another container's device first"
            ),
        });
    }
    let config = VfioConfig::new(&v.bdf).behind_root_port();
    let device = v.clone();
    // Plugged and recorded on the blocking thread, under the list's lock from the duplicate
    // check to the record: a function whose add was dropped (its caller gone) while plugging
    // is still recorded, so `remove_device` finds and unplugs it.
    tokio::task::spawn_blocking(move || {
        let mut list = super::lock(&plugged);
        if list.iter().any(|h| h.device.id == device.id) {
            return Err(duplicate(&device));
        }
        let at = handle.plug(&config).map_err(|e| invalid(&device, e))?;
        let path = handle
            .guest_path(&config.bdf)
            .unwrap_or_else(|| vec![at.port_slot, 0]);
        let hot = HotPlugged { device, path };
        list.push(hot.clone());
        Ok(hot)
    })
    .await
    .map_err(|e| invalid(v, format!("the hot-plug task failed: {e}")))?
}

/// The refusal of a second VFIO device with `v`'s id.
fn duplicate(v: &VfioDevice) -> Error {
    invalid(
        v,
        format!(
            "a VFIO device with id {:?} is hot-plugged already: give each device its own id, or \
             remove that one first",
            v.id
        ),
    )
}

/// The VFIO functions hot-plugged into a running VM, shared with the plugs' blocking tasks.
pub(super) type HotVfio = std::sync::Arc<std::sync::Mutex<Vec<HotPlugged>>>;

/// Hot-unplugs `v` through `handle`, waiting up to `wait` for the guest to release it.
pub(super) async fn remove(handle: VfioHotplug, v: &VfioDevice, wait: Duration) -> Result<()> {
    let bdf = v.bdf.clone();
    tokio::task::spawn_blocking(move || handle.unplug(&bdf, wait))
        .await
        .map_err(|e| invalid(v, format!("the hot-unplug task failed: {e}")))?
        .map(|_| ())
        .map_err(|e| invalid(v, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HypervisorType;

    fn with(hot: PciePort, ports: u32) -> HypervisorConfig {
        HypervisorConfig {
            hot_plug_vfio: hot,
            pcie_root_port: ports,
            ..HypervisorConfig::defaults_for(HypervisorType::Dragonball)
        }
    }

    #[test]
    fn spare_ports_only_with_root_port_hot_plug() {
        assert_eq!(spare_ports(&with(PciePort::RootPort, 2)), 2);
        assert_eq!(spare_ports(&with(PciePort::NoPort, 2)), 0);
        assert_eq!(spare_ports(&with(PciePort::RootPort, 300)), u8::MAX);
    }

    #[test]
    fn a_hot_plugged_function_is_device_0_behind_its_port() {
        assert_eq!(guest_path("v", &[3, 0]).unwrap().to_string(), {
            let p: PciPath = "03/00".parse().unwrap();
            GuestAddress::Pci { path: p }.to_string()
        });
        assert_eq!(guest_path("v", &[1, 0, 2, 0]).unwrap().to_string(), {
            let p: PciPath = "01/00/02/00".parse().unwrap();
            GuestAddress::Pci { path: p }.to_string()
        });
        assert!(guest_path("v", &[40, 0]).is_err());
    }

    #[tokio::test]
    async fn a_hot_plug_before_the_vm_runs_says_so_and_remembers_nothing() {
        use crate::device::DeviceConfig;
        use crate::hypervisor::Hypervisor;
        let dir = tempfile::tempdir().unwrap();
        let b =
            super::super::Builtin::new("x", with(PciePort::RootPort, 1), &dir.path().join("vm"))
                .unwrap();
        let v = VfioDevice {
            id: "vfio-0".into(),
            bdf: "0000:00:03.0".into(),
        };
        let e = b
            .add_device(DeviceConfig::Vfio(v.clone()))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotRunning(_)), "{e}");
        assert!(b.device_address("vfio-0").await.is_err());
        assert!(b.remove_device(&DeviceConfig::Vfio(v)).await.is_err());
    }

    #[tokio::test]
    async fn without_spare_ports_the_refusal_names_the_keys() {
        let v = VfioDevice {
            id: "vfio-0".into(),
            bdf: "0000:00:03.0".into(),
        };
        let e = add(&with(PciePort::NoPort, 0), None, HotVfio::default(), &v)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vfio-0") && e.contains("hot_plug_vfio") && e.contains("pcie_root_port"),
            "{e}"
        );
    }
}
