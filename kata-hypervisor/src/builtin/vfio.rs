//! VFIO with the built-in VMM: cold-plug behind PCIe root ports or on the root bus; hot-plug
//! onto spare root ports is `hotplug`'s.
//!
//! With `cold_plug_vfio = "root-port"` each function given at boot gets a PCIe root port of
//! its own (kata-vmm's `devices::pci::root_port`, a hot-plug capable slot), the ports at
//! `00:01.0`, `00:02.0`, ... in the order the sandbox gave the functions and each function
//! device 0 of its port's bus: the guest PCI path of the n-th is `0n/00`. With `no-port` they
//! sit on the root bus itself (`0n`). With `switch-port` they sit behind one PCIe switch (its
//! root port at `00:01.0`, its upstream port device 0 below, one downstream port per function
//! on the switch's internal bus, then `pcie_switch_port` spare ones): the n-th (from 0) is at
//! `01/00/<n>/00`, as QEMU's `x3130-upstream` and `xio3130-downstream` put it. With
//! `bridge-port` they sit in slots 1, 2, ... of a conventional PCI-to-PCI bridge at `00:01.0`
//! (`01/<n+1>`, as QEMU's bridge slots; INTx too: the MP table names every pin of the
//! bridge's slot). With `hot_plug_vfio = "root-port"` (and `cold_plug_vfio
//! = "no-port"`) the VM gets `pcie_root_port` spare root ports for hot-plug (see `hotplug`),
//! with `hot_plug_vfio = "switch-port"` a switch with `pcie_switch_port` empty downstream
//! ports, with `"bridge-port"` a PCI bridge with [`BRIDGE_HOT_SLOTS`] SHPC slots; the
//! refusals name the key, and so is a hot-plug into a VM without
//! spare ports (naming the device and the keys). The functions' interrupts are kata-vmm's
//! (`kata_vmm::devices::vfio::irq`): MSI and MSI-X through KVM MSI routes (MSI-X's table
//! emulated and trapped in its BAR), INTx on the IOAPIC pin the MP table names for its INTA#
//! swizzled up to bus 0 (behind any port, switch downstream port or bridge slot).

use crate::config::{HypervisorConfig, HypervisorType};
use crate::device::{GuestAddress, PciPath, PciePort, VfioDevice};
use crate::error::{Error, Result};

use kata_vmm::vm::VfioConfig;

use super::NAME;

/// The most spare ports (root or switch downstream): the MMIO window
/// (`0xe000_0000..0xfec0_0000`) holds 15 windows of 32 MiB, some of which cold-plugged
/// functions may take (then the VM's start says so). The one limit config validation has.
const MAX_SPARE_PORTS: u32 = match HypervisorType::Dragonball.max_pcie_root_ports() {
    Some(n) => n,
    None => 0,
};

/// Refuses the port settings the built-in VMM cannot honour.
pub(super) fn check_ports(c: &HypervisorConfig) -> Result<()> {
    // The same check as config validation's (`pcie_root_port` for any `hot_plug_vfio`).
    c.check_root_ports(HypervisorType::Dragonball)?;
    let grows =
        c.enable_virtio_mem && (c.default_maxmemory == 0 || c.default_maxmemory > c.default_memory);
    if grows && c.hot_plug_vfio != PciePort::NoPort {
        // A hot-plugged function's DMA maps the memory there is at the plug: memory
        // virtio-mem plugs later would not be reachable by it. Disks may still take the
        // spare ports (`block_device_driver = "virtio-blk-pci"`).
        return Err(Error::InvalidConfig {
            key: "hot_plug_vfio",
            value: c.hot_plug_vfio.to_string(),
            reason: "VFIO hot-plug with memory hot-plug (enable_virtio_mem): memory plugged \
                     later would not be mapped for the function's DMA; set \
                     hot_plug_vfio = \"no-port\" or enable_virtio_mem = false"
                .into(),
        });
    }
    if c.cold_plug_vfio == PciePort::SwitchPort && c.pcie_root_port > 0 {
        return Err(Error::InvalidConfig {
            key: "pcie_root_port",
            value: c.pcie_root_port.to_string(),
            reason: "cold_plug_vfio = \"switch-port\" puts the devices behind a switch (its \
                     own root port included): leave pcie_root_port at 0"
                .into(),
        });
    }
    if c.cold_plug_vfio == PciePort::BridgePort && c.pcie_root_port > 0 {
        // Spare root ports (for disks) would come first on the root bus and move the bridge
        // off slot 1, where the guest paths `01/<slot>` put it.
        return Err(Error::InvalidConfig {
            key: "pcie_root_port",
            value: c.pcie_root_port.to_string(),
            reason: "cold_plug_vfio = \"bridge-port\" puts the devices behind the PCI bridge at \
                     slot 1 of the root bus: leave pcie_root_port at 0"
                .into(),
        });
    }
    if c.cold_plug_vfio == PciePort::SwitchPort && c.pcie_switch_port > MAX_SPARE_PORTS {
        return Err(Error::InvalidConfig {
            key: "pcie_switch_port",
            value: c.pcie_switch_port.to_string(),
            reason: format!(
                "the built-in VMM's MMIO window holds {MAX_SPARE_PORTS} ports (32 MiB each), \
                 the switch's downstream ports included: lower pcie_switch_port"
            ),
        });
    }
    match c.hot_plug_vfio {
        PciePort::NoPort => {}
        PciePort::RootPort if c.cold_plug_vfio != PciePort::NoPort => {
            return Err(Error::InvalidConfig {
                key: "hot_plug_vfio",
                value: c.hot_plug_vfio.to_string(),
                reason: format!(
                    "cold_plug_vfio (\"{}\") and hot_plug_vfio cannot both be enabled; set one \
                     to no-port",
                    c.cold_plug_vfio
                ),
            })
        }
        PciePort::RootPort if c.pcie_root_port == 0 => {
            return Err(Error::InvalidConfig {
                key: "pcie_root_port",
                value: c.pcie_root_port.to_string(),
                reason: "hot_plug_vfio = \"root-port\" needs spare root ports to plug into: \
                         set pcie_root_port to the most VFIO functions plugged at once"
                    .into(),
            })
        }
        PciePort::RootPort => {}
        PciePort::SwitchPort if c.cold_plug_vfio != PciePort::NoPort => {
            return Err(Error::InvalidConfig {
                key: "hot_plug_vfio",
                value: c.hot_plug_vfio.to_string(),
                reason: format!(
                    "cold_plug_vfio (\"{}\") and hot_plug_vfio cannot both be enabled; set one \
                     to no-port",
                    c.cold_plug_vfio
                ),
            })
        }
        PciePort::SwitchPort if c.pcie_switch_port == 0 || c.pcie_switch_port > MAX_SPARE_PORTS => {
            return Err(Error::InvalidConfig {
                key: "pcie_switch_port",
                value: c.pcie_switch_port.to_string(),
                reason: format!(
                    "hot_plug_vfio = \"switch-port\" needs 1 to {MAX_SPARE_PORTS} spare \
                     downstream ports (32 MiB of the built-in VMM's MMIO window each): set \
                     pcie_switch_port to the most VFIO functions plugged at once"
                ),
            })
        }
        PciePort::SwitchPort if c.pcie_root_port > 0 => {
            return Err(Error::InvalidConfig {
                key: "pcie_root_port",
                value: c.pcie_root_port.to_string(),
                reason: "hot_plug_vfio = \"switch-port\" plugs into the switch's downstream \
                         ports (pcie_switch_port): leave pcie_root_port at 0"
                    .into(),
            })
        }
        PciePort::SwitchPort => {}
        PciePort::BridgePort if c.cold_plug_vfio != PciePort::NoPort => {
            return Err(Error::InvalidConfig {
                key: "hot_plug_vfio",
                value: c.hot_plug_vfio.to_string(),
                reason: format!(
                    "cold_plug_vfio (\"{}\") and hot_plug_vfio cannot both be enabled; set one \
                     to no-port",
                    c.cold_plug_vfio
                ),
            })
        }
        PciePort::BridgePort if c.pcie_root_port > 0 => {
            return Err(Error::InvalidConfig {
                key: "pcie_root_port",
                value: c.pcie_root_port.to_string(),
                reason: "hot_plug_vfio = \"bridge-port\" plugs into the PCI bridge's slots: \
                         leave pcie_root_port at 0"
                    .into(),
            })
        }
        PciePort::BridgePort => {}
    }
    if c.pcie_switch_port > 0
        && c.cold_plug_vfio != PciePort::SwitchPort
        && c.hot_plug_vfio != PciePort::SwitchPort
    {
        return Err(Error::InvalidConfig {
            key: "pcie_switch_port",
            value: c.pcie_switch_port.to_string(),
            reason: "the built-in VMM makes a PCIe switch only for cold_plug_vfio or \
                     hot_plug_vfio = \"switch-port\": set one, or leave pcie_switch_port at 0 \
                     (spare root ports are pcie_root_port)"
                .into(),
        });
    }
    Ok(())
}

/// The VMM's view of cold-plugged function `v`: behind a root port of its own with
/// `cold_plug_vfio = "root-port"`, behind the switch with `"switch-port"`.
pub(super) fn vmm_config(c: &HypervisorConfig, v: &VfioDevice) -> VfioConfig {
    let f = VfioConfig::new(&v.bdf);
    match c.cold_plug_vfio {
        PciePort::RootPort => f.behind_root_port(),
        PciePort::SwitchPort => f.behind_switch(),
        PciePort::BridgePort => f.behind_bridge(),
        PciePort::NoPort => f,
    }
}

/// The SHPC slots the built-in VMM's PCI bridge gets for `hot_plug_vfio = "bridge-port"`
/// (Kata's bridge has 31; each slot takes 32 MiB of the MMIO window, which holds 15).
pub(super) const BRIDGE_HOT_SLOTS: u8 = 8;

/// The SHPC slots of the VM's bridge (`BRIDGE_HOT_SLOTS` with `hot_plug_vfio =
/// "bridge-port"`, none otherwise).
pub(super) fn spare_bridge_slots(c: &HypervisorConfig) -> u8 {
    if c.hot_plug_vfio == PciePort::BridgePort {
        BRIDGE_HOT_SLOTS
    } else {
        0
    }
}

/// The empty downstream ports the VM's switch gets (`pcie_switch_port` with
/// `cold_plug_vfio` or `hot_plug_vfio = "switch-port"`, none otherwise).
pub(super) fn spare_switch_ports(c: &HypervisorConfig) -> u8 {
    if c.cold_plug_vfio == PciePort::SwitchPort || c.hot_plug_vfio == PciePort::SwitchPort {
        u8::try_from(c.pcie_switch_port).unwrap_or(u8::MAX)
    } else {
        0
    }
}

/// Where the guest finds cold-plugged function `id`: slot `index + 1` of the root bus, or
/// device 0 behind the root port there with `cold_plug_vfio = "root-port"`, or device 0
/// behind downstream port `index` of the switch (whose root port is slot 1: the only device
/// on the root bus) with `"switch-port"`, or in slot `index + 1` of the PCI-to-PCI bridge at
/// slot 1 with `"bridge-port"`.
pub(super) fn address(
    c: &HypervisorConfig,
    functions: &[VfioDevice],
    id: &str,
) -> Result<GuestAddress> {
    let index = functions
        .iter()
        .position(|f| f.id == id)
        .ok_or_else(|| Error::Unsupported {
            backend: NAME,
            what: format!(
                "telling where the guest finds device {id}: it was not cold-plugged into this \
                 VM (the built-in VMM passes VFIO functions given at boot only)"
            ),
        })?;
    let slot = u8::try_from(index + 1).unwrap_or(u8::MAX);
    let slots = match c.cold_plug_vfio {
        PciePort::RootPort => vec![slot, 0],
        PciePort::SwitchPort => vec![1, 0, slot - 1, 0],
        // The bridge is the root bus's only device; its slots from 1.
        PciePort::BridgePort => vec![1, slot],
        _ => vec![slot],
    };
    let path = PciPath::new(slots).map_err(|e| Error::Unsupported {
        backend: NAME,
        what: format!("device {id}: {e}"),
    })?;
    Ok(GuestAddress::Pci { path })
}

/// The error for a VFIO hot-plug into a running built-in VM without spare root ports.
pub(super) fn hot_plug_refused(v: &VfioDevice) -> Error {
    Error::Unsupported {
        backend: NAME,
        what: format!(
            "hot-plugging VFIO device {} (host {}) into a running VM: with hot_plug_vfio = \
             \"no-port\" the built-in VMM cold-plugs VFIO only. Set hot_plug_vfio = \
             \"root-port\" and pcie_root_port = <spare ports> (or \"switch-port\" and \
             pcie_switch_port), give the device to the sandbox \
             when it is created with cold_plug_vfio = \"root-port\", or use [hypervisor.qemu]",
            v.id, v.bdf
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HypervisorType;

    fn functions() -> Vec<VfioDevice> {
        ["0000:00:03.0", "0000:00:04.0"]
            .iter()
            .enumerate()
            .map(|(i, bdf)| VfioDevice {
                id: format!("vfio-{i}"),
                bdf: bdf.to_string(),
            })
            .collect()
    }

    fn with(cold: PciePort) -> HypervisorConfig {
        HypervisorConfig {
            cold_plug_vfio: cold,
            ..HypervisorConfig::defaults_for(HypervisorType::Dragonball)
        }
    }

    #[test]
    fn root_port_puts_each_function_behind_a_port_no_port_on_the_root_bus() {
        let f = functions();
        let root = with(PciePort::RootPort);
        assert_eq!(
            address(&root, &f, "vfio-1").unwrap().to_string(),
            GuestAddress::Pci {
                path: "02/00".parse().unwrap()
            }
            .to_string()
        );
        assert!(vmm_config(&root, &f[0]).behind_root_port);
        let none = with(PciePort::NoPort);
        assert_eq!(
            address(&none, &f, "vfio-0").unwrap().to_string(),
            GuestAddress::Pci {
                path: "01".parse().unwrap()
            }
            .to_string()
        );
        assert!(!vmm_config(&none, &f[0]).behind_root_port);
    }

    #[test]
    fn switch_port_puts_each_function_behind_a_downstream_port_of_one_switch() {
        let f = functions();
        let c = with(PciePort::SwitchPort);
        for (id, path) in [("vfio-0", "01/00/00/00"), ("vfio-1", "01/00/01/00")] {
            assert_eq!(
                address(&c, &f, id).unwrap().to_string(),
                GuestAddress::Pci {
                    path: path.parse().unwrap()
                }
                .to_string()
            );
        }
        assert!(vmm_config(&c, &f[1]).behind_switch);
        assert!(!vmm_config(&c, &f[1]).behind_root_port);
        assert_eq!(spare_switch_ports(&c), 0);
        let spare = HypervisorConfig {
            pcie_switch_port: 2,
            ..c
        };
        assert_eq!(spare_switch_ports(&spare), 2);
        check_ports(&spare).unwrap();
        assert_eq!(spare_switch_ports(&with(PciePort::RootPort)), 0);
    }

    #[test]
    fn vfio_hot_plug_with_virtio_mem_is_refused_naming_both_keys() {
        let hot = HypervisorConfig {
            cold_plug_vfio: PciePort::NoPort,
            hot_plug_vfio: PciePort::RootPort,
            pcie_root_port: 1,
            default_memory: 256,
            default_maxmemory: 1024,
            ..with(PciePort::NoPort)
        };
        check_ports(&hot).unwrap();
        let growing = HypervisorConfig {
            enable_virtio_mem: true,
            ..hot.clone()
        };
        let e = check_ports(&growing).unwrap_err().to_string();
        assert!(
            e.contains("hot_plug_vfio") && e.contains("enable_virtio_mem"),
            "{e}"
        );
        // Nothing to grow by: no virtio-mem device, nothing refused.
        let fixed = HypervisorConfig {
            default_maxmemory: 256,
            ..growing.clone()
        };
        check_ports(&fixed).unwrap();
        // Disks alone on the spare ports go with virtio-mem.
        let disks = HypervisorConfig {
            hot_plug_vfio: PciePort::NoPort,
            ..growing
        };
        check_ports(&disks).unwrap();
    }

    #[test]
    fn more_spare_root_ports_than_the_mmio_window_holds_are_refused_without_vfio_hot_plug_too() {
        // Disks and NICs take the spare root ports with hot_plug_vfio = "no-port": the limit
        // is config validation's, refused when the VM is made, not at its start.
        for hot in [PciePort::NoPort, PciePort::RootPort] {
            let c = |n| HypervisorConfig {
                hot_plug_vfio: hot,
                pcie_root_port: n,
                ..Default::default()
            };
            check_ports(&c(MAX_SPARE_PORTS)).unwrap();
            let e = check_ports(&c(MAX_SPARE_PORTS + 1))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("pcie_root_port") && e.contains("at most 15"),
                "{hot}: {e}"
            );
        }
    }

    #[test]
    fn bridge_port_puts_each_function_in_a_slot_of_the_bridge_from_1() {
        let f = functions();
        let c = with(PciePort::BridgePort);
        for (id, path) in [("vfio-0", "01/01"), ("vfio-1", "01/02")] {
            assert_eq!(
                address(&c, &f, id).unwrap().to_string(),
                GuestAddress::Pci {
                    path: path.parse().unwrap()
                }
                .to_string()
            );
        }
        let v = vmm_config(&c, &f[0]);
        assert!(v.behind_bridge && !v.behind_switch && !v.behind_root_port);
        check_ports(&c).unwrap();
        // Spare root ports (disks) would move the bridge off slot 1.
        let with_ports = HypervisorConfig {
            pcie_root_port: 2,
            ..c.clone()
        };
        assert!(check_ports(&with_ports)
            .unwrap_err()
            .to_string()
            .contains("pcie_root_port"));
        let hot = HypervisorConfig {
            cold_plug_vfio: PciePort::NoPort,
            hot_plug_vfio: PciePort::BridgePort,
            ..c.clone()
        };
        check_ports(&hot).unwrap();
        assert_eq!(spare_bridge_slots(&hot), BRIDGE_HOT_SLOTS);
        assert_eq!(spare_bridge_slots(&c), 0);
        let both = HypervisorConfig {
            cold_plug_vfio: PciePort::BridgePort,
            ..hot.clone()
        };
        assert!(check_ports(&both)
            .unwrap_err()
            .to_string()
            .contains("hot_plug_vfio"));
        let root = HypervisorConfig {
            pcie_root_port: 1,
            ..hot
        };
        assert!(check_ports(&root)
            .unwrap_err()
            .to_string()
            .contains("pcie_root_port"));
    }
}
