//! The PCIe topology of a VM: which ports it gets ([`PortPlan`]) and which device holds which
//! port ([`PortAllocator`]).
//!
//! Kata's keys decide the plan: `cold_plug_vfio` (devices plugged before boot take a port of
//! that kind each), `hot_plug_vfio` (the kind devices plugged later go to), and the number of
//! spare ports, `pcie_root_port` and `pcie_switch_port`. The allocator is owned by the VM: it
//! gives the cold-plugged devices the first ports of their kind, hands out the lowest free port
//! on every hot-plug, and takes a port back when its device is unplugged, so a port freed by an
//! unplug is used again. Backends turn a [`PortSlot`] into their own form (QEMU: `bus=rp0`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DeviceConfig;
use crate::config::{HypervisorConfig, HypervisorType};
use crate::error::{Error, Result};

/// Where a PCIe device is attached: Kata's `cold_plug_vfio` / `hot_plug_vfio` values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PciePort {
    /// No port: not cold-plugged (for `cold_plug_vfio`), or plugged on the root bus.
    #[default]
    NoPort,
    /// A PCIe root port per device.
    RootPort,
    /// A PCI-to-PCI bridge.
    BridgePort,
    /// A downstream port of a PCIe switch.
    SwitchPort,
}

impl fmt::Display for PciePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PciePort::NoPort => "no-port",
            PciePort::RootPort => "root-port",
            PciePort::BridgePort => "bridge-port",
            PciePort::SwitchPort => "switch-port",
        })
    }
}

impl FromStr for PciePort {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "no-port" => Ok(PciePort::NoPort),
            "root-port" => Ok(PciePort::RootPort),
            "bridge-port" => Ok(PciePort::BridgePort),
            "switch-port" => Ok(PciePort::SwitchPort),
            other => Err(format!(
                "unknown PCIe port `{other}`: allowed no-port, root-port, bridge-port, switch-port"
            )),
        }
    }
}

/// Device slots a PCI bridge offers (slot 0 is not used for devices).
pub const BRIDGE_SLOTS: u32 = 31;

/// The PCIe ports of a VM: the cold-plugged VFIO devices take the first ports of their kind,
/// the ports configured for hot-plug (`pcie_root_port`, `pcie_switch_port`) come after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPlan {
    /// Root ports `rp0..`.
    pub root_ports: u32,
    /// Switch downstream ports `swdp0..` (behind one upstream port on root port `rp-sw0`).
    pub switch_ports: u32,
    /// Whether a PCIe-to-PCI bridge `pci-bridge0` exists.
    pub bridge: bool,
    /// How many VFIO devices are cold-plugged (on ports of `cold_plug_vfio`'s kind).
    pub cold_vfio: u32,
}

impl PortPlan {
    /// The plan for this configuration and these cold-plugged devices.
    pub fn new(c: &HypervisorConfig, devices: &[DeviceConfig]) -> Self {
        if crate::config::is_s390_machine(&c.machine_type) {
            // s390-ccw-virtio has no PCIe: AP devices need no port.
            return PortPlan {
                root_ports: 0,
                switch_ports: 0,
                bridge: false,
                cold_vfio: 0,
            };
        }
        let vfio = devices
            .iter()
            .filter(|d| matches!(d, DeviceConfig::Vfio(_)))
            .count() as u32;
        let cold_vfio = if c.cold_plug_vfio == PciePort::NoPort {
            0
        } else {
            vfio
        };
        let cold_on = |p: PciePort| if c.cold_plug_vfio == p { cold_vfio } else { 0 };
        let uses = |p: PciePort| c.cold_plug_vfio == p || c.hot_plug_vfio == p;
        PortPlan {
            root_ports: cold_on(PciePort::RootPort) + c.pcie_root_port,
            switch_ports: if uses(PciePort::SwitchPort) {
                cold_on(PciePort::SwitchPort) + c.pcie_switch_port
            } else {
                0
            },
            bridge: uses(PciePort::BridgePort),
            cold_vfio,
        }
    }

    /// Refuses a plan with more root ports or switch downstream ports than `kind` gives a VM
    /// ([`HypervisorType::max_pcie_root_ports`], [`HypervisorType::max_pcie_switch_ports`]).
    /// Validation checks the spare ports alone; the plan adds a port per cold-plugged VFIO
    /// device, which only the devices of a start know. Spare ports alone over the limit (a
    /// configuration that skipped validation) get validation's own error
    /// ([`HypervisorConfig::check_root_ports`]); past it the error names `cold_plug_vfio`,
    /// the counts and the fix.
    pub fn check_limits(&self, c: &HypervisorConfig, kind: HypervisorType) -> Result<()> {
        c.check_root_ports(kind)?;
        for (port, planned, spare_key, spare, max) in [
            (
                PciePort::RootPort,
                self.root_ports,
                "pcie_root_port",
                c.pcie_root_port,
                kind.max_pcie_root_ports(),
            ),
            (
                PciePort::SwitchPort,
                self.switch_ports,
                "pcie_switch_port",
                c.pcie_switch_port,
                kind.max_pcie_switch_ports(),
            ),
        ] {
            let Some(max) = max else { continue };
            if planned <= max {
                continue;
            }
            // The spares are within the limit (checked above): cold-plugged devices pushed it.
            let cold = planned - spare;
            let fix = match max.checked_sub(cold) {
                Some(left) if left > 0 || spare > 0 => {
                    format!("set {spare_key} to at most {left}, or cold-plug fewer devices")
                }
                _ => format!("cold-plug at most {max} devices on {port}s"),
            };
            return Err(Error::InvalidConfig {
                key: "cold_plug_vfio",
                value: c.cold_plug_vfio.to_string(),
                reason: format!(
                    "{cold} VFIO devices cold-plugged on {port}s and {spare_key} = {spare} \
                     spare ones need {planned} {port}s; {kind} takes at most {max}: {fix}"
                ),
            });
        }
        Ok(())
    }

    /// How many devices ports of this kind can hold (`None` for [`PciePort::NoPort`]: devices
    /// go on the root bus, which needs no port).
    pub fn capacity(&self, port: PciePort) -> Option<u32> {
        match port {
            PciePort::NoPort => None,
            PciePort::RootPort => Some(self.root_ports),
            PciePort::SwitchPort => Some(self.switch_ports),
            PciePort::BridgePort => Some(if self.bridge { BRIDGE_SLOTS } else { 0 }),
        }
    }

    /// The `index`-th slot of this kind, if the plan has it.
    pub fn slot(&self, port: PciePort, index: u32) -> Option<PortSlot> {
        if index >= self.capacity(port)? {
            return None;
        }
        let (bus, addr) = match port {
            PciePort::NoPort => return None,
            PciePort::RootPort => (format!("rp{index}"), None),
            PciePort::SwitchPort => (format!("swdp{index}"), None),
            PciePort::BridgePort => ("pci-bridge0".to_string(), Some(index + 1)),
        };
        Some(PortSlot {
            port,
            index,
            bus,
            addr,
        })
    }
}

/// The place one device holds: a port (its bus id) and, on a bridge, the slot on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSlot {
    /// The kind of port.
    pub port: PciePort,
    /// Which port of its kind (0 for the first).
    pub index: u32,
    /// The id of the bus the device goes on (`rp0`, `swdp1`, `pci-bridge0`).
    pub bus: String,
    /// The device's slot on the bus, when it has to be given (on a bridge: 1..=31).
    pub addr: Option<u32>,
}

/// Who holds which port of one VM. Owned by the VM; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct PortAllocator {
    plan: PortPlan,
    /// Device id by (kind, index).
    held: BTreeMap<(PciePort, u32), String>,
}

impl PortAllocator {
    /// An allocator for `plan` with every port free.
    pub fn new(plan: PortPlan) -> Self {
        PortAllocator {
            plan,
            held: BTreeMap::new(),
        }
    }

    /// The allocator of a VM about to start: the plan for `config` and the cold-plugged
    /// `devices`, the VFIO ones already holding the first ports of `cold_plug_vfio`'s kind (in
    /// their order). With `cold_plug_vfio = "no-port"` nothing is cold-plugged: those devices
    /// are hot-plugged after boot.
    pub fn for_vm(config: &HypervisorConfig, devices: &[DeviceConfig]) -> Result<Self> {
        let mut ports = PortAllocator::new(PortPlan::new(config, devices));
        if config.cold_plug_vfio != PciePort::NoPort
            && !crate::config::is_s390_machine(&config.machine_type)
        {
            for d in devices {
                if let DeviceConfig::Vfio(v) = d {
                    ports.allocate(config.cold_plug_vfio, &v.id)?;
                }
            }
        }
        Ok(ports)
    }

    /// The plan the ports come from.
    pub fn plan(&self) -> &PortPlan {
        &self.plan
    }

    /// Gives `device` the lowest free port of kind `port`. [`PciePort::NoPort`] needs none:
    /// `Ok(None)`, the device goes on the root bus. Errors: every port of the kind is held
    /// ([`Error::NoFreePort`], naming the key that adds ports), or `device` holds one already.
    pub fn allocate(&mut self, port: PciePort, device: &str) -> Result<Option<PortSlot>> {
        let Some(capacity) = self.plan.capacity(port) else {
            return Ok(None);
        };
        if let Some(slot) = self.slot_of(device) {
            return Err(Error::InvalidConfig {
                key: "device id",
                value: device.to_string(),
                reason: format!(
                    "the id already holds {} {} (bus {}); device ids must be unique in a VM",
                    slot.port, slot.index, slot.bus
                ),
            });
        }
        let free = (0..capacity).find(|i| !self.held.contains_key(&(port, *i)));
        let Some(index) = free else {
            return Err(Error::NoFreePort {
                device: device.to_string(),
                port,
                capacity,
                hint: match port {
                    PciePort::RootPort => "raise pcie_root_port".into(),
                    PciePort::SwitchPort => "raise pcie_switch_port".into(),
                    _ => format!("a bridge has {BRIDGE_SLOTS} slots; unplug a device first"),
                },
            });
        };
        self.held.insert((port, index), device.to_string());
        Ok(self.plan.slot(port, index))
    }

    /// Takes back the port `device` holds (after its unplug); returns it, or `None` if the
    /// device held none (it was on the root bus, or unknown).
    pub fn free(&mut self, device: &str) -> Option<PortSlot> {
        let key = self
            .held
            .iter()
            .find(|(_, d)| d.as_str() == device)
            .map(|(k, _)| *k)?;
        self.held.remove(&key);
        self.plan.slot(key.0, key.1)
    }

    /// The port `device` holds.
    pub fn slot_of(&self, device: &str) -> Option<PortSlot> {
        self.held
            .iter()
            .find(|(_, d)| d.as_str() == device)
            .and_then(|((port, index), _)| self.plan.slot(*port, *index))
    }

    /// How many ports of kind `port` are held.
    pub fn held(&self, port: PciePort) -> usize {
        self.held.keys().filter(|(p, _)| *p == port).count()
    }

    /// Every holding: (device, kind, index), for a saved state.
    pub fn holdings(&self) -> Vec<(String, PciePort, u32)> {
        self.held
            .iter()
            .map(|((port, index), device)| (device.clone(), *port, *index))
            .collect()
    }

    /// Records that `device` holds the `index`-th port of kind `port` (a VM taken over from a
    /// saved state). The port must exist in the plan and be free.
    pub fn hold(&mut self, port: PciePort, index: u32, device: &str) -> Result<()> {
        if self.plan.slot(port, index).is_none() {
            return Err(Error::InvalidConfig {
                key: "ports",
                value: format!("{port} {index}"),
                reason: format!("the VM's port plan has no such port (held by `{device}`)"),
            });
        }
        if let Some(other) = self.held.get(&(port, index)) {
            return Err(Error::InvalidConfig {
                key: "ports",
                value: format!("{port} {index}"),
                reason: format!("held by both `{other}` and `{device}`"),
            });
        }
        self.held.insert((port, index), device.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::VfioDevice;

    fn vfio(n: usize) -> Vec<DeviceConfig> {
        (0..n)
            .map(|i| {
                DeviceConfig::Vfio(VfioDevice {
                    id: format!("vfio{i}"),
                    bdf: format!("0000:0{i}:00.0"),
                })
            })
            .collect()
    }

    #[test]
    fn pcie_port_round_trips_kata_values() {
        for s in ["no-port", "root-port", "bridge-port", "switch-port"] {
            let p: PciePort = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert!("root"
            .parse::<PciePort>()
            .unwrap_err()
            .contains("root-port"));
    }

    #[test]
    fn cold_plugged_devices_and_spare_ports_together_stay_within_qemus_limits() {
        let qemu = HypervisorType::Qemu;
        let c = |cold, root, switch| HypervisorConfig {
            cold_plug_vfio: cold,
            pcie_root_port: root,
            pcie_switch_port: switch,
            ..Default::default()
        };
        let check = |c: &HypervisorConfig, n: usize| {
            PortPlan::new(c, &vfio(n))
                .check_limits(c, qemu)
                .map_err(|e| e.to_string())
        };
        // At the limit: 4 cold + 12 spare root ports, 16 cold switch ports.
        check(&c(PciePort::RootPort, 12, 0), 4).unwrap();
        check(&c(PciePort::SwitchPort, 0, 0), 16).unwrap();
        // Each valid alone (validation passes 16 spares), too many together.
        let e = check(&c(PciePort::RootPort, 14, 0), 4).unwrap_err();
        assert!(
            e.contains("cold_plug_vfio")
                && e.contains("4 VFIO devices")
                && e.contains("18 root-ports")
                && e.contains("set pcie_root_port to at most 12"),
            "{e}"
        );
        let e = check(&c(PciePort::SwitchPort, 0, 10), 8).unwrap_err();
        assert!(
            e.contains("cold_plug_vfio") && e.contains("set pcie_switch_port to at most 8"),
            "{e}"
        );
        // More cold-plugged devices than ports, no spares: fewer devices is the only fix.
        let e = check(&c(PciePort::RootPort, 0, 0), 17).unwrap_err();
        assert!(
            e.contains("cold-plug at most 16 devices on root-ports"),
            "{e}"
        );
        // Spare ports alone over the limit (a configuration that skipped validation).
        let e = check(&c(PciePort::NoPort, 17, 0), 0).unwrap_err();
        assert!(
            e.contains("pcie_root_port") && e.contains("at most 16"),
            "{e}"
        );
        // No limit known for the other VMMs.
        let many = c(PciePort::RootPort, 20, 0);
        PortPlan::new(&many, &vfio(20))
            .check_limits(&many, HypervisorType::CloudHypervisor)
            .unwrap();
    }

    #[test]
    fn cold_plugged_devices_take_the_first_ports_and_hot_plug_gets_the_next() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::RootPort,
            pcie_root_port: 2,
            ..Default::default()
        };
        let mut ports = PortAllocator::for_vm(&c, &vfio(2)).unwrap();
        assert_eq!(ports.plan().root_ports, 4, "2 cold + 2 spare");
        assert_eq!(ports.slot_of("vfio0").unwrap().bus, "rp0");
        assert_eq!(ports.slot_of("vfio1").unwrap().bus, "rp1");
        let hot = ports.allocate(PciePort::RootPort, "hot0").unwrap().unwrap();
        assert_eq!((hot.bus.as_str(), hot.addr), ("rp2", None));
        assert_eq!(ports.held(PciePort::RootPort), 3);
    }

    #[test]
    fn allocation_exhausts_with_an_error_naming_the_key() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::RootPort,
            pcie_root_port: 1,
            ..Default::default()
        };
        let mut ports = PortAllocator::for_vm(&c, &[]).unwrap();
        ports.allocate(PciePort::RootPort, "a").unwrap().unwrap();
        let e = ports
            .allocate(PciePort::RootPort, "b")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`b`") && e.contains("root-port") && e.contains("pcie_root_port"),
            "{e}"
        );
        // A switch that was never planned has no port at all.
        let e = ports
            .allocate(PciePort::SwitchPort, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pcie_switch_port"), "{e}");
    }

    #[test]
    fn a_freed_port_is_used_again() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::SwitchPort,
            pcie_switch_port: 2,
            ..Default::default()
        };
        let mut ports = PortAllocator::for_vm(&c, &[]).unwrap();
        assert_eq!(
            ports
                .allocate(PciePort::SwitchPort, "a")
                .unwrap()
                .unwrap()
                .bus,
            "swdp0"
        );
        assert_eq!(
            ports
                .allocate(PciePort::SwitchPort, "b")
                .unwrap()
                .unwrap()
                .bus,
            "swdp1"
        );
        assert!(ports.allocate(PciePort::SwitchPort, "c").is_err());
        let freed = ports.free("a").unwrap();
        assert_eq!(freed.bus, "swdp0");
        assert_eq!(ports.free("a"), None, "freed once");
        assert_eq!(
            ports
                .allocate(PciePort::SwitchPort, "c")
                .unwrap()
                .unwrap()
                .bus,
            "swdp0",
            "the lowest free port, the one just freed"
        );
        assert_eq!(ports.slot_of("b").unwrap().bus, "swdp1");
    }

    #[test]
    fn holdings_round_trip_for_a_taken_over_vm() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::RootPort,
            pcie_root_port: 2,
            ..Default::default()
        };
        let mut ports = PortAllocator::for_vm(&c, &[]).unwrap();
        ports.allocate(PciePort::RootPort, "a").unwrap();
        ports.allocate(PciePort::RootPort, "b").unwrap();
        ports.free("a");
        let mut again = PortAllocator::for_vm(&c, &[]).unwrap();
        for (device, port, index) in ports.holdings() {
            again.hold(port, index, &device).unwrap();
        }
        assert_eq!(again.slot_of("b").unwrap().bus, "rp1");
        assert_eq!(
            again
                .allocate(PciePort::RootPort, "c")
                .unwrap()
                .unwrap()
                .bus,
            "rp0"
        );
        assert!(again.hold(PciePort::RootPort, 1, "d").is_err(), "taken");
        assert!(
            again.hold(PciePort::RootPort, 7, "d").is_err(),
            "no such port"
        );
    }

    #[test]
    fn bridge_slots_have_addresses_and_no_port_needs_none() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::BridgePort,
            ..Default::default()
        };
        let mut ports = PortAllocator::for_vm(&c, &vfio(1)).unwrap();
        let s = ports.slot_of("vfio0").unwrap();
        assert_eq!((s.bus.as_str(), s.addr), ("pci-bridge0", Some(1)));
        assert_eq!(ports.allocate(PciePort::NoPort, "x").unwrap(), None);
        assert_eq!(ports.free("x"), None);
        let e = ports
            .allocate(PciePort::BridgePort, "vfio0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unique"), "{e}");
    }

    #[test]
    fn s390_plans_no_pcie_ports_for_cold_plugged_devices() {
        let c = HypervisorConfig {
            machine_type: "s390-ccw-virtio".into(),
            cold_plug_vfio: PciePort::RootPort,
            ..Default::default()
        };
        let ports = PortAllocator::for_vm(&c, &vfio(1)).unwrap();
        assert_eq!(ports.plan().root_ports, 0);
        assert_eq!(ports.slot_of("vfio0"), None);
    }

    #[test]
    fn no_port_cold_plugs_nothing() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::RootPort,
            pcie_root_port: 3,
            ..Default::default()
        };
        let ports = PortAllocator::for_vm(&c, &vfio(1)).unwrap();
        assert_eq!(ports.plan().cold_vfio, 0);
        assert_eq!(ports.plan().root_ports, 3);
        assert_eq!(ports.slot_of("vfio0"), None);
    }
}
