//! Which firmware QEMU boots the guest kernel with when `firmware` is left empty.
//!
//! QEMU's default on q35 is SeaBIOS: it enumerates PCI, sizes and places every BAR, reserves
//! I/O and memory windows behind each PCIe root port (the `pcie-root-port` resource-reserve
//! capability: what lets a device hot-plugged there get address space), runs option ROMs and
//! then loads the kernel from fw_cfg. kata-rs always boots `-kernel` (never a disk's boot
//! sector), so a guest without ports needs none of that: qboot (`/usr/share/qemu/qboot.rom`,
//! shipped with Debian's QEMU) hands the kernel QEMU's own ACPI tables and jumps to it, and
//! Linux assigns the root bus's BARs itself. Under TCG a start costs 9% less CPU alone and 13%
//! less with 16 at once (2.1 -> 1.9 and 3.3 -> 2.9 CPU-s, `benches/density.rs` with
//! `KATA_RS_BENCH_FIRMWARE` for SeaBIOS).
//!
//! What qboot does not do, and so where it is never chosen: reserve windows behind PCIe ports
//! (any `pcie_root_port`, `pcie_switch_port`, or a bridge for VFIO: hot-plug onto them needs
//! SeaBIOS's reservation), place large device BARs (any VFIO function), run option ROMs,
//! measured or confidential boot (`confidential_guest`), or any machine other than q35. A
//! configured `firmware` always wins; `firmware = "/usr/share/seabios/bios-256k.bin"` keeps
//! SeaBIOS for a VM qboot would otherwise boot.

use std::path::{Path, PathBuf};

use crate::config::HypervisorConfig;
use crate::device::{DeviceConfig, PortPlan};

/// Where Debian's QEMU packages ship qboot.
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

/// The firmware of a VM: the configured one, qboot, or QEMU's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// `firmware` as configured (`-bios <path>`).
    Configured(PathBuf),
    /// qboot (`-bios <path>`), chosen because `firmware` is empty and the VM needs nothing
    /// only SeaBIOS does.
    Qboot(PathBuf),
    /// No `-bios`: QEMU's default (SeaBIOS on q35).
    VmmDefault,
}

impl Firmware {
    /// The `-bios` argument's value, if any.
    pub fn bios(&self) -> Option<&Path> {
        match self {
            Firmware::Configured(p) | Firmware::Qboot(p) => Some(p),
            Firmware::VmmDefault => None,
        }
    }
}

/// Whether this VM needs nothing qboot lacks: a q35 machine, not confidential, no PCIe ports
/// or bridge in `plan`, and no VFIO function among `devices`.
pub fn qboot_suffices(c: &HypervisorConfig, plan: &PortPlan, devices: &[DeviceConfig]) -> bool {
    let q35 = c.machine_type == "q35" || c.machine_type.starts_with("pc-q35-");
    q35 && !c.confidential_guest
        && plan.root_ports == 0
        && plan.switch_ports == 0
        && !plan.bridge
        && !devices
            .iter()
            .any(|d| matches!(d, DeviceConfig::Vfio(_) | DeviceConfig::VfioAp(_)))
}

/// The firmware for this VM, with qboot looked for at [`QBOOT_ROM`].
pub fn choose(c: &HypervisorConfig, plan: &PortPlan, devices: &[DeviceConfig]) -> Firmware {
    choose_with(c, plan, devices, Path::new(QBOOT_ROM))
}

/// [`choose`] with qboot looked for at `qboot` (testable on a fixture): the configured
/// `firmware` if set, else qboot when [`qboot_suffices`] and the file exists, else QEMU's
/// default.
pub fn choose_with(
    c: &HypervisorConfig,
    plan: &PortPlan,
    devices: &[DeviceConfig],
    qboot: &Path,
) -> Firmware {
    if !c.firmware.is_empty() {
        return Firmware::Configured(PathBuf::from(&c.firmware));
    }
    if qboot_suffices(c, plan, devices) && qboot.is_file() {
        return Firmware::Qboot(qboot.to_path_buf());
    }
    Firmware::VmmDefault
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::VfioDevice;

    fn plan(root_ports: u32, switch_ports: u32, bridge: bool) -> PortPlan {
        PortPlan {
            root_ports,
            switch_ports,
            bridge,
            cold_vfio: 0,
        }
    }

    fn rom() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qboot.rom");
        std::fs::write(&path, b"rom").unwrap();
        (dir, path)
    }

    #[test]
    fn a_plain_q35_vm_boots_qboot() {
        let (_d, qboot) = rom();
        let c = HypervisorConfig::default();
        assert_eq!(
            choose_with(&c, &plan(0, 0, false), &[], &qboot),
            Firmware::Qboot(qboot.clone())
        );
        let c = HypervisorConfig {
            machine_type: "pc-q35-7.2".into(),
            ..Default::default()
        };
        assert_eq!(
            choose_with(&c, &plan(0, 0, false), &[], &qboot),
            Firmware::Qboot(qboot)
        );
    }

    #[test]
    fn configured_firmware_always_wins() {
        let (_d, qboot) = rom();
        let c = HypervisorConfig {
            firmware: "/usr/share/seabios/bios-256k.bin".into(),
            ..Default::default()
        };
        let f = choose_with(&c, &plan(0, 0, false), &[], &qboot);
        assert_eq!(
            f.bios(),
            Some(Path::new("/usr/share/seabios/bios-256k.bin"))
        );
    }

    #[test]
    fn ports_vfio_confidential_or_other_machines_keep_seabios() {
        let (_d, qboot) = rom();
        let c = HypervisorConfig::default();
        for p in [plan(1, 0, false), plan(0, 2, false), plan(0, 0, true)] {
            assert_eq!(
                choose_with(&c, &p, &[], &qboot),
                Firmware::VmmDefault,
                "{p:?}"
            );
        }
        let vfio = DeviceConfig::Vfio(VfioDevice {
            id: "gpu0".into(),
            bdf: "0000:01:00.0".into(),
        });
        assert_eq!(
            choose_with(&c, &plan(0, 0, false), &[vfio], &qboot),
            Firmware::VmmDefault
        );
        let cc = HypervisorConfig {
            confidential_guest: true,
            ..Default::default()
        };
        assert_eq!(
            choose_with(&cc, &plan(0, 0, false), &[], &qboot),
            Firmware::VmmDefault
        );
        let microvm = HypervisorConfig {
            machine_type: "microvm".into(),
            ..Default::default()
        };
        assert_eq!(
            choose_with(&microvm, &plan(0, 0, false), &[], &qboot),
            Firmware::VmmDefault
        );
    }

    #[test]
    fn a_missing_qboot_falls_back_to_the_vmm_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = HypervisorConfig::default();
        assert_eq!(
            choose_with(&c, &plan(0, 0, false), &[], &dir.path().join("none.rom")),
            Firmware::VmmDefault
        );
        assert_eq!(Firmware::VmmDefault.bios(), None);
    }
}
