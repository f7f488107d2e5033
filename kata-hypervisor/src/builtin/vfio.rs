//! VFIO with the built-in VMM: cold-plug only, on the VMM's own PCI root bus.
//!
//! The VMM has one conventional PCI bus and no ports: the functions given at boot sit at
//! `00:01.0`, `00:02.0`, ... in the order the sandbox gave them, so the guest PCI path of the
//! n-th is `0n`. `cold_plug_vfio = "root-port"` (or `no-port` with no device) is accepted;
//! switch and bridge ports and any `hot_plug_vfio` are refused naming the key, and a hot-plug
//! into a running VM is refused naming the device. The functions' interrupts are kata-vmm's
//! (`kata_vmm::devices::vfio::irq`): MSI and MSI-X through KVM MSI routes (MSI-X's table
//! emulated and trapped in its BAR), INTx on the IOAPIC pin the MP table names.

use crate::config::HypervisorConfig;
use crate::device::{GuestAddress, PciPath, PciePort, VfioDevice};
use crate::error::{Error, Result};

use super::NAME;

/// Refuses the port settings the built-in VMM cannot honour.
pub(super) fn check_ports(c: &HypervisorConfig) -> Result<()> {
    if matches!(
        c.cold_plug_vfio,
        PciePort::SwitchPort | PciePort::BridgePort
    ) {
        return Err(Error::InvalidConfig {
            key: "cold_plug_vfio",
            value: c.cold_plug_vfio.to_string(),
            reason: "the built-in VMM has one PCI root bus and no switch or bridge: set \
                     cold_plug_vfio = \"root-port\" (the device goes on the root bus), or use \
                     [hypervisor.qemu]"
                .into(),
        });
    }
    if c.hot_plug_vfio != PciePort::NoPort {
        return Err(Error::InvalidConfig {
            key: "hot_plug_vfio",
            value: c.hot_plug_vfio.to_string(),
            reason: "the built-in VMM cannot hot-plug VFIO devices: set hot_plug_vfio = \
                     \"no-port\" and cold_plug_vfio = \"root-port\", or use [hypervisor.qemu]"
                .into(),
        });
    }
    Ok(())
}

/// Where the guest finds cold-plugged function `id`: slot `index + 1` of the root bus.
pub(super) fn address(functions: &[VfioDevice], id: &str) -> Result<GuestAddress> {
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
    let path = PciPath::new(vec![slot]).map_err(|e| Error::Unsupported {
        backend: NAME,
        what: format!("device {id}: {e}"),
    })?;
    Ok(GuestAddress::Pci { path })
}

/// The error for a VFIO hot-plug into a running built-in VM.
pub(super) fn hot_plug_refused(v: &VfioDevice) -> Error {
    Error::Unsupported {
        backend: NAME,
        what: format!(
            "hot-plugging VFIO device {} (host {}) into a running VM: the built-in VMM \
             cold-plugs VFIO only. Give the device to the sandbox when it is created with \
             cold_plug_vfio = \"root-port\", or use [hypervisor.qemu] to hot-plug it",
            v.id, v.bdf
        ),
    }
}
