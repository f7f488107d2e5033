//! How the built-in backend treats each key of `[hypervisor.dragonball]`: what it acts on, what
//! it refuses (security and confidentiality settings it cannot honour, a guest image it cannot
//! boot) and what it parses with no effect (listed as warnings when the value is not the
//! default).

use crate::config::{BlockDeviceDriver, HypervisorConfig, SettingUse};

use SettingUse::{Acted, Inert, Refused};

const NOT_BUILT: &str = "not implemented by the built-in VMM yet";
const NO_HOTPLUG: &str =
    "the built-in VMM grows memory through virtio-mem (enable_virtio_mem, default_maxmemory) \
     only: no DIMM hot-plug";
const CONFIDENTIAL: &str =
    "the built-in VMM runs no confidential guests; use [hypervisor.qemu] with a TEE-capable \
     build when that lands";

/// The use of `key` (every key of the section is classified; `None` never happens for a key
/// of [`HypervisorConfig`]).
pub(crate) fn setting_use(key: &str, c: &HypervisorConfig) -> Option<SettingUse> {
    Some(match key {
        // Guest boot and size.
        "kernel" | "initrd" | "kernel_params" | "default_vcpus" | "default_memory" => Acted,
        "image" => Refused(
            "the built-in VMM boots a kernel and an initramfs only; leave image empty and set \
             initrd",
        ),
        "kernel_verity_params" => Refused(
            "dm-verity of the guest image is not implemented: leave kernel_verity_params empty",
        ),
        // Memory hot-plug through virtio-mem, up to default_maxmemory.
        "enable_virtio_mem" => Acted,
        "default_maxmemory" if c.enable_virtio_mem => Acted,
        "default_maxmemory" => Inert(
            "the built-in VMM grows memory only through virtio-mem: set enable_virtio_mem = true",
        ),
        // vCPUs above default_vcpus are created parked, up to default_maxvcpus.
        "default_maxvcpus" => Acted,
        "memory_slots" | "memory_offset" => Inert(NO_HOTPLUG),
        // A virtio-balloon with free page reporting.
        "reclaim_guest_freed_memory" => Acted,
        // No VMM binary: it runs in this process.
        "path" | "ctlpath" => Inert("the built-in VMM runs inside the runtime: no binary"),
        "jailer_path" | "valid_jailer_paths" => Refused(
            "the built-in VMM has no jailer; leave jailer_path and valid_jailer_paths empty",
        ),
        // Shared filesystem: capabilities() refuses any but `none`.
        "shared_fs" => Acted,
        // Disks given at boot are virtio-blk on virtio-mmio; virtio-blk-pci hot-plugs disks
        // onto the spare root ports (blk_hotplug).
        "block_device_driver" => match c.block_device_driver {
            BlockDeviceDriver::VirtioBlkMmio
            | BlockDeviceDriver::VirtioMmio
            | BlockDeviceDriver::VirtioBlkPci
            | BlockDeviceDriver::VirtioBlk => Acted,
            _ => Inert(
                "the built-in VMM attaches disks as virtio-blk (virtio-mmio at boot, \
                 block_device_driver = \"virtio-blk-pci\" to hot-plug them onto pcie_root_port \
                 spare ports); this value is not implemented",
            ),
        },
        "disable_block_device_use" => Acted,
        // The loader's keys and debug.
        "enable_annotations" | "enable_debug" => Acted,
        k if k.starts_with("valid_") => Acted,
        // Security and confidentiality.
        "rootless" => Refused(
            "the built-in VMM runs in the runtime's process, as the runtime's user; rootless \
             VMs are not implemented",
        ),
        "confidential_guest"
        | "sev_snp_guest"
        | "snp_id_block"
        | "snp_id_auth"
        | "snp_guest_policy"
        | "tdx_quote_generation_service_socket_port"
        | "initdata" => Refused(CONFIDENTIAL),
        "guest_hook_path" => {
            Refused("nothing runs OCI hooks in the guest yet; leave guest_hook_path empty")
        }
        "selinux_label" => Refused(
            "the built-in VMM's threads are not labelled with SELinux; leave selinux_label empty",
        ),
        "disable_guest_selinux" => {
            Refused("the guest has no SELinux policy to enforce; keep disable_guest_selinux = true")
        }
        // The pod network: virtio-net on the tap's one queue, in this process.
        "network_queues" => {
            Refused("the built-in VMM's virtio-net has one queue pair; set network_queues = 1")
        }
        "disable_vhost_net" => Inert("the built-in VMM's virtio-net runs in this process"),
        // VFIO: cold-plug onto the VMM's PCI root bus; the rest refused in `vfio::check_ports`.
        "cold_plug_vfio" | "hot_plug_vfio" => Acted,
        // Spare root ports, one pool for VFIO hot-plug (`hot_plug_vfio = "root-port"`), disks
        // (`block_device_driver = "virtio-blk-pci"`) and NICs (net_hotplug: any VM, for the
        // interfaces added to the pod after boot); no switch (refused in `vfio::check_ports`).
        "pcie_root_port" => Acted,
        "pcie_switch_port" => Acted,
        "disable_seccomp" | "seccomp_sandbox" => Inert(
            "the built-in VMM's vCPU and device threads always confine themselves with seccomp",
        ),
        // VM templating: kata-vmm's snapshot and restore (builtin::template).
        "factory.enable_template" | "factory.template_path" => Acted,
        // QEMU's TCG translation buffer (kata-rs's own key): nothing to bound here.
        "tcg_tb_size" => {
            Inert("QEMU's TCG translation buffer; the built-in VMM runs its guests under KVM only")
        }
        _ => Inert(NOT_BUILT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HypervisorType;

    #[test]
    fn every_key_is_classified_and_defaults_warn_of_nothing() {
        let kind = HypervisorType::Dragonball;
        let c = HypervisorConfig::defaults_for(kind);
        for key in c.values().keys() {
            assert!(setting_use(key, &c).is_some(), "{key}");
        }
        assert!(
            c.inert_settings(kind).is_empty(),
            "{:?}",
            c.inert_settings(kind)
        );
        c.check_refused(kind).unwrap();
    }

    #[test]
    fn an_image_and_a_confidential_guest_are_refused_and_unbuilt_keys_warned() {
        let kind = HypervisorType::Dragonball;
        let image = HypervisorConfig {
            image: "/img".into(),
            ..HypervisorConfig::defaults_for(kind)
        };
        let e = image.check_refused(kind).unwrap_err().to_string();
        assert!(e.contains("image") && e.contains("initramfs only"), "{e}");
        let cc = HypervisorConfig {
            confidential_guest: true,
            ..HypervisorConfig::defaults_for(kind)
        };
        assert!(cc.check_refused(kind).is_err());
        let hp = HypervisorConfig {
            memory_slots: 3,
            ..HypervisorConfig::defaults_for(kind)
        };
        let vfio = HypervisorConfig {
            cold_plug_vfio: crate::device::PciePort::RootPort,
            ..HypervisorConfig::defaults_for(kind)
        };
        assert!(
            vfio.inert_settings(kind).is_empty(),
            "cold_plug_vfio is acted on: {:?}",
            vfio.inert_settings(kind)
        );
        let inert = hp.inert_settings(kind);
        assert!(
            inert
                .iter()
                .any(|l| l.contains("memory_slots") && l.contains("hot-plug")),
            "{inert:?}"
        );
    }
}
