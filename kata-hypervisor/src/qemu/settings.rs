//! What the QEMU backend does with each key of `[hypervisor.qemu]`, checked key by key against
//! the command line ([`super::cmdline`]) and the backend: acted on, refused until it is
//! implemented, or parsed without effect (see [`crate::config::SettingUse`]). There is no
//! catch-all arm: a key added to the section must be classified here.

use crate::config::{BlockDeviceDriver, HypervisorConfig, SettingUse, SharedFs, VmRootfsDriver};

use SettingUse::{Acted, Inert, Refused};

const ROOTLESS_9P: &str = "serving the virtio-9p share from a rootless QEMU is not \
implemented: QEMU would serve the containers' root-owned files as its unprivileged user; use \
shared_fs = \"virtio-fs\" (virtiofsd serves the share) or set rootless = false";

const CONFIDENTIAL: &str = "the QEMU backend cannot start a confidential guest yet (no TDX, \
SEV-SNP or Secure Execution support): it would boot an ordinary VM; remove the confidential \
settings";

const NO_VIRTIO_FS: &str = "the QEMU backend serves virtio-9p, not virtio-fs";
const STATIC_SIZING: &str =
    "the VM is sized from default_vcpus and default_memory (no static sandbox sizing yet)";
const NO_SWAP: &str = "guest swap is not implemented";
const NO_VHOST_USER_BLOCK: &str = "vhost-user block devices are not implemented";
const NO_DISK_LIMIT: &str = "block devices have no rate limiter";
const REMOTE_ONLY: &str = "a key of the remote hypervisor";
const NO_DUMP: &str = "a panicked guest's memory is not dumped";

/// How the QEMU backend treats `key` with the values of `c`; `None` for a key it does not
/// know.
pub(crate) fn setting_use(key: &str, c: &HypervisorConfig) -> Option<SettingUse> {
    Some(match key {
        // The VMM binary. The `valid_*` globs are the loader's (annotations).
        "path" | "valid_hypervisor_paths" | "valid_ctlpaths" => Acted,
        "ctlpath" => Inert("QEMU has no control binary"),
        "jailer_path" | "valid_jailer_paths" => {
            Refused("QEMU has no jailer; leave jailer_path and valid_jailer_paths empty")
        }
        "disable_nesting_checks" => Inert("kata-rs makes no nesting adjustments"),

        // Guest boot.
        "kernel" | "initrd" | "image" | "rootfs_type" | "kernel_params" | "firmware" => Acted,
        // `image.rs`: virtio-pmem when asked, else an NVDIMM or virtio-blk-pci.
        "vm_rootfs_driver" => match c.vm_rootfs_driver {
            VmRootfsDriver::VirtioPmem | VmRootfsDriver::VirtioBlkPci => Acted,
            _ => Inert(
                "the guest image is an NVDIMM, virtio-pmem (vm_rootfs_driver = \"virtio-pmem\") \
                 or virtio-blk-pci (disable_image_nvdimm = true)",
            ),
        },
        "kernel_verity_params" => Refused(
            "dm-verity of the guest image is not implemented yet: the image would boot \
             unverified; leave kernel_verity_params empty",
        ),
        "firmware_volume" => Inert("no firmware volume (-pflash) is attached yet"),
        "pflashes" => Inert("no -pflash images are attached yet"),

        // Machine and vCPUs.
        "machine_type" | "machine_accelerators" | "entropy_source" | "valid_entropy_sources" => {
            Acted
        }
        "cpu_features" | "default_vcpus" | "default_maxvcpus" => Acted,
        "overhead_vcpus" | "overhead_memory" => Inert(STATIC_SIZING),

        // Memory.
        "default_memory" | "default_maxmemory" | "memory_slots" | "memory_offset" => Acted,
        "enable_mem_prealloc" | "enable_hugepages" | "valid_file_mem_backends" => Acted,
        // `virtio_mem.rs`: a virtio-mem-pci device; refused where it cannot work.
        "enable_virtio_mem" => match super::virtio_mem::refusal(c) {
            Some(why) => Refused(why),
            None => Acted,
        },
        "hugepage_type" => Inert("enable_hugepages always uses hugetlbfs pages"),
        "file_mem_backend" => Inert("guest memory is always memfd-backed"),
        "enable_guest_swap"
        | "guest_swap_path"
        | "guest_swap_size_percent"
        | "guest_swap_create_threshold_secs" => Inert(NO_SWAP),
        "reclaim_guest_freed_memory" => Acted,
        // `cmdline.rs`: `-accel tcg,tb-size=` (a guest under KVM has no translation buffer).
        "tcg_tb_size" => Acted,

        // Block devices.
        "block_device_driver" => match c.block_device_driver {
            BlockDeviceDriver::VirtioScsi
            | BlockDeviceDriver::VirtioBlk
            | BlockDeviceDriver::VirtioBlkPci => Acted,
            _ => Inert("block devices are attached as virtio-scsi or virtio-blk-pci only"),
        },
        // Hot-plugged block devices (`hotplug.rs`): a block rootfs or volume is refused
        // when disabled; the cache keys set the file node's `cache`.
        "block_device_aio" | "disable_block_device_use" => Acted,
        "block_device_cache_set" | "block_device_cache_direct" | "block_device_cache_noflush" => {
            Acted
        }
        "block_device_logical_sector_size" | "block_device_physical_sector_size" => {
            Inert("block devices get QEMU's default sector sizes")
        }
        // `image.rs`: an NVDIMM with DAX on q35/pc, else (or when set) virtio-blk-pci.
        "disable_image_nvdimm" => Acted,
        "enable_iothreads" | "indep_iothreads" => Inert("the QEMU backend creates no IO threads"),
        "enable_vhost_user_store"
        | "vhost_user_store_path"
        | "vhost_user_reconnect_timeout_sec" => Inert(NO_VHOST_USER_BLOCK),
        "valid_vhost_user_store_paths" => Acted,
        "disk_rate_limiter_bw_max_rate"
        | "disk_rate_limiter_bw_one_time_burst"
        | "disk_rate_limiter_ops_max_rate"
        | "disk_rate_limiter_ops_one_time_burst" => Inert(NO_DISK_LIMIT),
        "queue_size" | "num_queues" => Inert("virtio-blk devices get QEMU's default queues"),

        // The shared filesystem. `msize_9p` is the guest's mount option (kata-resource).
        "shared_fs" | "msize_9p" | "valid_virtio_fs_daemon_paths" => Acted,
        "virtio_fs_daemon"
        | "virtio_fs_extra_args"
        | "virtio_fs_cache"
        | "virtio_fs_cache_size"
        | "virtio_fs_queue_size"
        | "virtio_fs_is_dax" => Inert(NO_VIRTIO_FS),

        // Devices and PCIe topology.
        "cold_plug_vfio" | "hot_plug_vfio" | "pcie_root_port" | "pcie_switch_port" => Acted,
        "default_bridges" => Inert("a PCI bridge is created only for bridge-port VFIO devices"),
        "hotplug_vfio_on_root_bus" => Inert("where VFIO devices are hot-plugged is hot_plug_vfio"),
        "enable_iommu" => Inert("the VM has no vIOMMU"),
        "enable_iommu_platform" => Inert("virtio devices are created without iommu_platform"),

        // Network.
        // vhost=on when not disabled and the host has /dev/vhost-net; a tap queue and a
        // virtio-net queue pair per network_queues.
        "disable_vhost_net" | "network_queues" => Acted,
        "rx_rate_limiter_max_rate" | "tx_rate_limiter_max_rate" => {
            Inert("network devices have no rate limiter")
        }

        // Security.
        "seccomp_sandbox" | "enable_annotations" => Acted,
        // `rootless.rs`: QEMU as a uid of the range, in its own mount namespace.
        "rootless" => match c.shared_fs {
            SharedFs::Virtio9p => Refused(ROOTLESS_9P),
            _ => Acted,
        },
        "rootless_uid_range" if c.rootless => Acted,
        "rootless_uid_range" => Inert("QEMU runs as root: rootless = false"),
        "disable_seccomp" => Inert("QEMU's syscall filter is set by seccomp_sandbox"),
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
        "selinux_label" => {
            Refused("the VMM process is not labelled with SELinux yet; leave selinux_label empty")
        }
        "disable_selinux" => Inert("no SELinux label is applied to the VMM"),
        "disable_guest_selinux" => {
            Refused("the guest has no SELinux policy to enforce; keep disable_guest_selinux = true")
        }

        // Debug.
        "enable_debug" => Acted,
        "log_level" => Inert("QEMU gets no log level"),
        "extra_monitor_socket" => Inert("no extra monitor socket is created"),
        "guest_memory_dump_path" | "guest_memory_dump_paging" => Inert(NO_DUMP),
        "use_legacy_serial" => Inert("the guest console is always the serial port ttyS0"),

        // Other VMMs' keys.
        "remote_hypervisor_socket"
        | "remote_hypervisor_timeout"
        | "default_gpus"
        | "default_gpu_model" => Inert(REMOTE_ONLY),
        // `template.rs`: clones of a saved VM (kernel vhost-vsock and virtio-9p or no share).
        "factory.enable_template" | "factory.template_path" => Acted,
        "prefetch_list_path" => Inert("nydus image prefetch is not implemented"),
        _ => return None,
    })
}
