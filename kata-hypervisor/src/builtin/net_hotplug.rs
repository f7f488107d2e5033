//! NIC hot-plug on the built-in VMM: with `pcie_root_port` spare PCIe root ports (the pool
//! VFIO and disk hot-plug take from too),
//! [`Hypervisor::add_device`](crate::hypervisor::Hypervisor::add_device) of a NIC — the tap of
//! an interface added to the pod's network namespace after boot (kata-sandbox's
//! `rescan_network`) — puts virtio-net on virtio-pci, on the tap's open queue, behind the first
//! free port while the VM runs (kata-vmm's `devices::virtio::pci::hotplug`, the disks' handle).
//! The guest PCI path is `<port slot>/00`; the sandbox gives it to the agent with the
//! interface, and the agent waits for the NIC there. Removing it presses the slot's attention
//! button and waits (at most [`super::hotplug::UNPLUG_WAIT`]) for the guest to power the slot
//! off; then the VMM's duplicate of the tap queue is closed (the tap itself is kata-resource's,
//! removed after) and the port is free. NICs given before boot stay virtio-net on virtio-mmio.
//!
//! The list of plugged NICs, the plug on a blocking task and the unplug are the disks'
//! (`blk_hotplug`'s [`HotList`], [`plug_and_record`], [`remove`](super::blk_hotplug::remove)).

use kata_vmm::devices::virtio::pci::hotplug::{HotDevice, VirtioHotplug};

use super::blk_hotplug::{plug_and_record, Hot, HotKind, HotList};
use crate::config::HypervisorConfig;
use crate::device::{NetDevice, PciePort};
use crate::error::{Error, Result};

/// The NICs hot-plugged into the running VM, with their ports' slots.
pub(super) type HotNics = HotList<NetDevice>;

impl HotKind for NetDevice {
    fn id(&self) -> &str {
        &self.id
    }

    fn invalid(&self, why: String) -> Error {
        Error::InvalidDevice {
            kind: "network",
            id: format!("{} (tap {})", self.id, self.tap_name),
            reason: why,
        }
    }

    fn duplicate(&self) -> Error {
        self.invalid(format!(
            "a NIC with id {:?} is hot-plugged already: give each NIC its own id, or remove that \
             one first",
            self.id
        ))
    }
}

/// Why a NIC cannot be hot-plugged with `c` (the key to set), or `None` when it can.
pub(super) fn refusal(c: &HypervisorConfig, n: &NetDevice) -> Option<Error> {
    (c.pcie_root_port == 0).then(|| {
        n.invalid(
            "pcie_root_port = 0: the built-in VMM hot-plugs NICs as virtio-net on PCI onto spare \
             root ports; set pcie_root_port >= 1 in [hypervisor.dragonball]"
                .into(),
        )
    })
}

/// Hot-plugs `n` through `handle` (the running VM's) and records it in `nics`.
pub(super) async fn add(
    c: &HypervisorConfig,
    handle: VirtioHotplug,
    nics: HotNics,
    n: &NetDevice,
) -> Result<Hot<NetDevice>> {
    if super::lock(&nics).iter().any(|h| h.device.id == n.id) {
        return Err(n.duplicate());
    }
    // The tap's one open queue and the MAC, as the cold path takes them.
    let config = super::net_config(n)?;
    if handle.free_ports() == 0 {
        return Err(Error::NoFreePort {
            device: n.id.clone(),
            port: PciePort::RootPort,
            capacity: c.pcie_root_port,
            hint: "raise pcie_root_port in [hypervisor.dragonball] (the spare root ports the \
                   VM is built with, shared by NICs, disks and VFIO), or remove another device \
                   first"
                .into(),
        });
    }
    let nic = HotDevice::Net(config);
    plug_and_record(nics, n, move || handle.plug(&nic).map(|p| p.port_slot)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HypervisorType;
    use crate::device::GuestAddress;

    fn nic(id: &str) -> NetDevice {
        NetDevice {
            id: id.into(),
            tap_name: format!("tap_{id}"),
            mac: "02:42:ac:11:00:05".into(),
            netns: None,
            queues: 1,
            tap_fds: Vec::new(),
        }
    }

    #[test]
    fn without_root_ports_a_nic_is_refused_naming_pcie_root_port() {
        let c = HypervisorConfig::defaults_for(HypervisorType::Dragonball);
        let e = refusal(&c, &nic("eth1")).unwrap().to_string();
        assert!(
            e.contains("eth1") && e.contains("tap_eth1") && e.contains("pcie_root_port"),
            "{e}"
        );
        let c = HypervisorConfig {
            pcie_root_port: 1,
            ..c
        };
        assert!(refusal(&c, &nic("eth1")).is_none());
    }

    #[tokio::test]
    async fn a_duplicate_nic_id_is_refused_and_the_first_kept() {
        let nics = HotNics::default();
        let first = plug_and_record(nics.clone(), &nic("eth1"), || Ok::<u8, String>(2)).await;
        assert_eq!(first.unwrap().port_slot, 2);
        let again = NetDevice {
            tap_name: "tap_other".into(),
            ..nic("eth1")
        };
        let e = plug_and_record(
            nics.clone(),
            &again,
            || -> std::result::Result<u8, String> { panic!("a duplicate must not be plugged") },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"eth1\"") && e.contains("already"), "{e}");
        let kept = nics.lock().unwrap().clone();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].device.tap_name, "tap_eth1");
        // device_address answers the NIC's guest path, behind its port.
        let at = super::super::blk_hotplug::address(&kept, "eth1");
        match at.unwrap().unwrap() {
            GuestAddress::Pci { path } => assert_eq!(path.to_string(), "02/00"),
            other => panic!("{other:?}"),
        }
        assert!(super::super::blk_hotplug::address(&kept, "eth2").is_none());
    }

    #[tokio::test]
    async fn add_device_of_a_nic_is_refused_without_ports_and_not_running_before_boot() {
        use crate::device::DeviceConfig;
        use crate::hypervisor::Hypervisor;
        let dir = tempfile::tempdir().unwrap();
        let c = HypervisorConfig::defaults_for(HypervisorType::Dragonball);
        let eth = DeviceConfig::Net(nic("eth1"));
        let b = super::super::Builtin::new("x", c.clone(), &dir.path().join("vm")).unwrap();
        let e = b.add_device(eth.clone()).await.unwrap_err().to_string();
        assert!(e.contains("eth1") && e.contains("pcie_root_port"), "{e}");
        // With ports but no VM yet: not running, nothing remembered.
        let ports = HypervisorConfig {
            pcie_root_port: 1,
            ..c
        };
        assert!(ports
            .inert_settings(HypervisorType::Dragonball)
            .iter()
            .all(|l| !l.contains("pcie_root_port")));
        assert_eq!(super::super::blk_hotplug::spare_ports(&ports), 1);
        let b = super::super::Builtin::new("x", ports, &dir.path().join("vm")).unwrap();
        let e = b.add_device(eth.clone()).await.unwrap_err();
        assert!(matches!(e, Error::NotRunning(_)), "{e}");
        assert!(b.device_address("eth1").await.is_err());
        assert!(b.remove_device(&eth).await.is_err());
    }
}
