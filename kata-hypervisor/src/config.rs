//! The `[hypervisor.<name>]` section of Kata's configuration file.
//!
//! Field names are Kata's TOML keys (a serde `rename` where Rust spells them differently), and
//! defaults are Kata's, so a file written for Kata's runtime-rs deserialises into
//! [`HypervisorConfig`] unchanged. What happens to a section, in order:
//!
//! 1. [`HypervisorType::from_section`] maps the table name (`qemu`, `dragonball`, `clh`,
//!    `firecracker`, `remote`) to a VMM; [`HypervisorType::section_defaults`] are the keys whose
//!    default differs per VMM (a loader puts them under the file's table). Keys whose values
//!    Kata fixes to a set of words are typed enums ([`SharedFs`], [`BlockDeviceDriver`], ...):
//!    a value outside the set is refused while the table is read, naming the key, the value
//!    and what is allowed.
//! 2. [`HypervisorConfig::adjust`] applies Kata's documented load-time rules (0 vCPUs means 1,
//!    more vCPUs than the host has means all of them, empty enum keys take their default, ...).
//! 3. [`HypervisorConfig::validate_for`] checks ranges, enum values and incompatible
//!    combinations without touching the disk; [`HypervisorConfig::check_host_paths`] checks the
//!    paths the section's features need.
//!
//! 4. What the backend does with each key ([`SettingUse`]): acted on, refused until it is
//!    implemented ([`HypervisorConfig::check_refused`]), or parsed without effect
//!    ([`HypervisorConfig::inert_settings`]).
//!
//! The confidential-computing keys (`confidential_guest`, `sev_snp_guest`, `snp_*`,
//! `tdx_quote_generation_service_socket_port`, machine `s390-ccw-virtio` for IBM SE) are parsed
//! and validated, and refused by the QEMU backend: it cannot start a confidential guest yet.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::device::PciePort;
use crate::error::{Error, Result};

mod kinds;
mod settings;
mod validate;

pub use kinds::{
    BlockDeviceAio, BlockDeviceDriver, HugepageType, RootfsType, SharedFs, VirtioFsCache,
    VmRootfsDriver,
};
pub use settings::SettingUse;
pub(crate) use validate::is_s390_machine;
pub use validate::{HostPathProblem, LOG_LEVELS};

/// Smallest guest memory kata-rs accepts, in MiB (Kata's minimum for every VMM).
pub const MIN_MEMORY_MIB: u32 = 64;

/// Kata's default guest memory, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 2048;

/// Kata's default number of memory hot-plug slots.
pub const DEFAULT_MEMORY_SLOTS: u32 = 10;

/// Most PCI bridges Kata creates (larger `default_bridges` are lowered to this).
pub const MAX_BRIDGES: u32 = 5;

/// Most virtio-net queue pairs Kata accepts (larger `network_queues` are lowered to this).
pub const MAX_NETWORK_QUEUES: u32 = 256;

/// Kata's default VM template directory (`factory.template_path`).
pub const DEFAULT_TEMPLATE_PATH: &str = "/run/vc/vm/template";

/// Kata's default socket of the remote hypervisor service (cloud-api-adaptor).
pub const DEFAULT_REMOTE_HYPERVISOR_SOCKET: &str = "/run/peerpod/hypervisor.sock";

/// Kata's default time to wait for a remote VM, in seconds.
pub const DEFAULT_REMOTE_HYPERVISOR_TIMEOUT: i32 = 600;

/// SEV-SNP's default guest policy (QEMU's, used by Kata when none is configured).
pub const DEFAULT_SNP_GUEST_POLICY: u32 = 0x30000;

/// Kata's default vsock port of the TDX Quote Generation Service.
pub const DEFAULT_TDX_QGS_PORT: u32 = 4050;

/// QEMU's seccomp sandbox when `seccomp_sandbox` is empty: on, with every group of system
/// calls QEMU can deny denied (obsolete calls, `set*uid`/`set*gid`, `fork`/`execve`,
/// affinity and scheduler changes). Kata ships this off (its example leaves out
/// `elevateprivileges=deny`, which breaks QEMU's `-daemonize`; kata-rs never daemonizes QEMU).
pub const DEFAULT_SECCOMP_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The default `rootless_uid_range`: 65536 ids at the start of the range systemd leaves unused
/// (1879048192, 0x70000000: above systemd-nspawn's container ranges, below 2^31).
pub const DEFAULT_ROOTLESS_UID_RANGE: &str = "1879048192-1879113727";

/// The default `tcg_tb_size`, in MiB: the translation buffer of a QEMU running its guest under
/// TCG (software emulation). QEMU 7.2's own (`tb-size` unset) is an eighth of the host's memory
/// up to 1 GiB, filled as code is translated and never given back: 39-42 MiB resident per idle
/// busybox guest after boot. 16 MiB holds it at 16 with the same `build()` time (median of 7
/// interleaved boots 2260 vs 2215 ms); 8 MiB cost 18% more (`benches/density.rs`, 2026-12-01).
/// Applied only to a VM whose vCPUs cannot be hot-plugged (`qemu::cmdline::tcg_accel`).
pub const DEFAULT_TCG_TB_SIZE_MIB: u32 = 16;

/// The largest `tcg_tb_size` QEMU takes on an x86-64 host, in MiB (a larger one it lowers to
/// this without a word).
pub const MAX_TCG_TB_SIZE_MIB: u32 = 2048;

/// The VMM a `[hypervisor.<name>]` table configures.
///
/// Which of them kata-rs can run in this build is [`crate::backend`]'s business: a type without
/// a backend is parsed and validated, and refused with an error naming what is missing when a
/// VM is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HypervisorType {
    /// QEMU (`[hypervisor.qemu]`).
    Qemu,
    /// The built-in VMM, Kata's Dragonball (`[hypervisor.dragonball]`).
    Dragonball,
    /// Cloud Hypervisor (`[hypervisor.clh]`, also `[hypervisor.cloud-hypervisor]`).
    CloudHypervisor,
    /// Firecracker (`[hypervisor.firecracker]`).
    Firecracker,
    /// A VM created by a remote service, e.g. peer pods (`[hypervisor.remote]`).
    Remote,
    /// The test backend (`[hypervisor.host-agent]`, cargo feature `test-backend`): a fake for
    /// tests of sandbox and shim logic. There is no VM: the real kata-agent runs on this host
    /// in private namespaces (see [`crate::host_agent`]). Not a Kata section.
    #[cfg(feature = "test-backend")]
    HostAgent,
}

impl HypervisorType {
    /// Every type, in the order they are listed to users.
    pub const ALL: &'static [HypervisorType] = &[
        HypervisorType::Dragonball,
        HypervisorType::Qemu,
        HypervisorType::CloudHypervisor,
        HypervisorType::Firecracker,
        HypervisorType::Remote,
        #[cfg(feature = "test-backend")]
        HypervisorType::HostAgent,
    ];

    /// The type a section name selects (`qemu`, `dragonball`, `clh` or `cloud-hypervisor`,
    /// `firecracker`, `remote`; `host-agent` with the `test-backend` feature), or `None` for a
    /// name kata-rs does not know.
    pub fn from_section(name: &str) -> Option<Self> {
        match name {
            "qemu" => Some(HypervisorType::Qemu),
            "dragonball" => Some(HypervisorType::Dragonball),
            "clh" | "cloud-hypervisor" => Some(HypervisorType::CloudHypervisor),
            "firecracker" => Some(HypervisorType::Firecracker),
            "remote" => Some(HypervisorType::Remote),
            #[cfg(feature = "test-backend")]
            "host-agent" => Some(HypervisorType::HostAgent),
            _ => None,
        }
    }

    /// The section names accepted, for error messages.
    pub fn section_names() -> &'static str {
        if cfg!(feature = "test-backend") {
            "dragonball, qemu, clh (or cloud-hypervisor), firecracker, remote, host-agent (test backend)"
        } else {
            "dragonball, qemu, clh (or cloud-hypervisor), firecracker, remote"
        }
    }

    /// The canonical section name.
    pub fn section_name(self) -> &'static str {
        match self {
            HypervisorType::Qemu => "qemu",
            HypervisorType::Dragonball => "dragonball",
            HypervisorType::CloudHypervisor => "clh",
            HypervisorType::Firecracker => "firecracker",
            HypervisorType::Remote => "remote",
            #[cfg(feature = "test-backend")]
            HypervisorType::HostAgent => "host-agent",
        }
    }

    /// Most vCPUs the VMM supports (Kata's limits; the built-in VMM's MP table lists 32).
    pub fn max_vcpus(self) -> u32 {
        match self {
            HypervisorType::Firecracker | HypervisorType::Dragonball => 32,
            _ => 256,
        }
    }

    /// The most PCIe root ports (`pcie_root_port`) a VM of this VMM can have, where kata-rs
    /// knows a limit: 15 for the built-in VMM (its PCI MMIO window, kata-vmm's
    /// `0xe000_0000..0xfec0_0000`, holds 15 root-port windows of 32 MiB, the spare ports for
    /// VFIO, disk and NIC hot-plug alike), 16 for QEMU (Kata's `maxPCIeRootPort`: a root port
    /// takes a slot of bus 0 and 4 KiB of the 64 KiB I/O port space). `None` where no limit
    /// is known. [`HypervisorConfig::check_root_ports`] refuses more.
    pub const fn max_pcie_root_ports(self) -> Option<u32> {
        match self {
            HypervisorType::Dragonball => Some(15),
            HypervisorType::Qemu => Some(16),
            _ => None,
        }
    }

    /// The most PCIe switch downstream ports (`pcie_switch_port`, plus one per VFIO device
    /// cold-plugged on a switch port) a VM of this VMM can have, where kata-rs knows a limit:
    /// 16 for QEMU (Kata's `maxPCIeSwitchPort`). The built-in VMM's ports share its MMIO
    /// window with the root ports and are checked by its own rules; `None` there and where no
    /// limit is known.
    pub const fn max_pcie_switch_ports(self) -> Option<u32> {
        match self {
            HypervisorType::Qemu => Some(16),
            _ => None,
        }
    }

    /// Keys whose default differs from [`HypervisorConfig::default`] for this VMM, as
    /// `(key, value)` pairs (every one a string). A loader puts the file's table over these, so
    /// a key the file leaves out gets the VMM's default: Firecracker and the built-in VMM attach
    /// block devices over virtio-mmio, the built-in VMM serves virtio-fs itself, Cloud
    /// Hypervisor has no virtio-9p (so it keeps Kata's virtio-fs), Firecracker and remote VMs
    /// share no filesystem.
    pub fn section_defaults(self) -> &'static [(&'static str, &'static str)] {
        match self {
            HypervisorType::Qemu => &[],
            HypervisorType::Dragonball => &[
                ("shared_fs", "inline-virtio-fs"),
                ("block_device_driver", "virtio-blk-mmio"),
                ("vm_rootfs_driver", "virtio-blk-mmio"),
            ],
            HypervisorType::CloudHypervisor => &[
                ("shared_fs", "virtio-fs"),
                ("block_device_driver", "virtio-blk-pci"),
            ],
            HypervisorType::Firecracker => &[
                ("shared_fs", "none"),
                ("block_device_driver", "virtio-blk-mmio"),
                ("vm_rootfs_driver", "virtio-blk-mmio"),
            ],
            HypervisorType::Remote => &[("shared_fs", "none")],
            #[cfg(feature = "test-backend")]
            HypervisorType::HostAgent => &[],
        }
    }
}

impl Default for HypervisorType {
    /// QEMU: the backend kata-rs boots today.
    fn default() -> Self {
        HypervisorType::Qemu
    }
}

impl fmt::Display for HypervisorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.section_name())
    }
}

/// `[hypervisor.<name>.factory]`: VM templating (runtime-rs' place for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HypervisorFactory {
    /// Create VMs by cloning a template VM (needs `initrd`, not `image`). Default false.
    pub enable_template: bool,
    /// Where the template VM is kept. Default `/run/vc/vm/template`.
    pub template_path: String,
}

impl Default for HypervisorFactory {
    fn default() -> Self {
        HypervisorFactory {
            enable_template: false,
            template_path: DEFAULT_TEMPLATE_PATH.to_string(),
        }
    }
}

/// One `[hypervisor.<name>]` table.
///
/// The keys of every VMM live in one struct, as in Kata; keys a VMM does not use are ignored by
/// it. Keys are grouped below as Kata's documentation groups them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HypervisorConfig {
    // --- the VMM binary ---------------------------------------------------------------------
    /// Path of the VMM binary (`qemu-system-x86_64` for QEMU). Empty: found on `PATH`.
    pub path: String,
    /// Glob patterns (glob(3)) an annotation's `path` must match. Empty: annotations rejected.
    pub valid_hypervisor_paths: Vec<String>,
    /// The VMM's control binary (Dragonball/Cloud Hypervisor). Empty: none.
    pub ctlpath: String,
    /// Glob patterns an annotation's `ctlpath` must match.
    pub valid_ctlpaths: Vec<String>,
    /// Firecracker's jailer. Empty: Firecracker runs unjailed. Must be empty for other VMMs.
    pub jailer_path: String,
    /// Glob patterns an annotation's `jailer_path` must match.
    pub valid_jailer_paths: Vec<String>,
    /// Do not adapt to running nested inside another VM. Default false.
    pub disable_nesting_checks: bool,

    // --- guest boot ---------------------------------------------------------------------------
    /// Guest kernel. Empty: the guest manifest's kernel (`make guest`).
    pub kernel: String,
    /// Guest initramfs. Empty (and no `image`): the guest manifest's initrd. Exclusive with
    /// `image`.
    pub initrd: String,
    /// Guest root disk image. Exclusive with `initrd`.
    pub image: String,
    /// Filesystem of `image`: `ext4` (default), `xfs`, `erofs`.
    pub rootfs_type: RootfsType,
    /// How `image` is attached: `virtio-blk-pci` (default), `virtio-blk-mmio`, `virtio-blk-ccw`,
    /// `virtio-pmem`, `virtio-scsi`.
    pub vm_rootfs_driver: VmRootfsDriver,
    /// Extra kernel command-line parameters, appended after kata-rs' own (so they win).
    pub kernel_params: String,
    /// dm-verity parameters of the root image (`root_hash=...,salt=...,...`). Empty: none.
    pub kernel_verity_params: String,
    /// Firmware image (empty: the VMM's default).
    pub firmware: String,
    /// Firmware variables volume (OVMF/TDVF `*_VARS.fd`). Empty: none.
    pub firmware_volume: String,
    /// Extra flash images (QEMU `-pflash`).
    pub pflashes: Vec<String>,

    // --- machine ------------------------------------------------------------------------------
    /// QEMU machine type (`q35` on x86_64, `s390-ccw-virtio` on s390x, `virt` on aarch64).
    pub machine_type: String,
    /// Extra QEMU machine options (comma separated).
    pub machine_accelerators: String,
    /// Host entropy source for virtio-rng. Default `/dev/urandom`.
    pub entropy_source: String,
    /// Glob patterns an annotation's `entropy_source` must match.
    pub valid_entropy_sources: Vec<String>,

    // --- vCPUs --------------------------------------------------------------------------------
    /// CPU features for the guest CPU model (comma separated, e.g. `pmu=off`).
    pub cpu_features: String,
    /// vCPUs at boot. Kata's rules: 0 means 1, a negative number or more than the host has
    /// means all host CPUs; a fraction is rounded up.
    #[serde(deserialize_with = "deserialize_vcpus")]
    pub default_vcpus: u32,
    /// Upper bound for vCPU hot-plug; 0 (or more than the host has) means the host's CPUs.
    pub default_maxvcpus: u32,
    /// vCPUs added to the workload's request when `static_sandbox_resource_mgmt` sizes the VM.
    pub overhead_vcpus: f32,

    // --- memory -------------------------------------------------------------------------------
    /// Guest memory at boot, in MiB. Default 2048.
    pub default_memory: u32,
    /// Upper bound for memory hot-plug in MiB; 0 means the host's memory.
    pub default_maxmemory: u32,
    /// Memory (MiB) added to the workload's request when the VM is sized statically.
    pub overhead_memory: u32,
    /// Memory hot-plug slots. Default 10.
    pub memory_slots: u32,
    /// Memory hot-plug headroom beyond the host's memory, in MiB (for NVDIMM devices).
    pub memory_offset: u64,
    /// Grow guest memory with virtio-mem instead of DIMMs. Default false.
    pub enable_virtio_mem: bool,
    /// Pre-allocate guest memory. Default false.
    pub enable_mem_prealloc: bool,
    /// Back guest memory with huge pages. Default false.
    pub enable_hugepages: bool,
    /// Kind of huge pages: `hugetlbfs` (default) or `thp`.
    pub hugepage_type: HugepageType,
    /// Directory for file-backed guest memory. Empty: anonymous memory.
    pub file_mem_backend: String,
    /// Glob patterns an annotation's `file_mem_backend` must match.
    pub valid_file_mem_backends: Vec<String>,
    /// Give the guest a swap device. Default false.
    pub enable_guest_swap: bool,
    /// Where the swap file is created in the guest. Default `/run/kata-containers/swap`.
    pub guest_swap_path: String,
    /// Swap size as a percentage of guest memory. Default 100.
    pub guest_swap_size_percent: u64,
    /// Seconds to wait before creating the guest swap. Default 60.
    pub guest_swap_create_threshold_secs: u64,
    /// Let the balloon device report freed guest pages to the host. Default false.
    pub reclaim_guest_freed_memory: bool,
    /// kata-rs only, QEMU under TCG (no KVM): the size in MiB of QEMU's translation buffer
    /// (`-accel tcg,tb-size=`), where it keeps the host code it translated from the guest's.
    /// Pages of it stay resident once written, so it bounds that part of QEMU's memory; a
    /// buffer too small for what the guest runs is flushed and the code translated again.
    /// 0: QEMU's own size (an eighth of the host's memory, at most 1 GiB). Ignored with KVM.
    /// Default [`DEFAULT_TCG_TB_SIZE_MIB`]; at most [`MAX_TCG_TB_SIZE_MIB`].
    pub tcg_tb_size: u32,

    // --- block devices ------------------------------------------------------------------------
    /// Block device driver: `virtio-scsi` (default), `virtio-blk` / `virtio-blk-pci`,
    /// `virtio-blk-ccw`, `virtio-blk-mmio` (`virtio-mmio`), `virtio-pmem`, `nvdimm`. An empty
    /// value means `virtio-blk-pci`.
    pub block_device_driver: BlockDeviceDriver,
    /// QEMU's I/O engine for block devices: `io_uring` (default), `native`, `threads`.
    pub block_device_aio: BlockDeviceAio,
    /// Do not use block devices for the container rootfs. Default false.
    pub disable_block_device_use: bool,
    /// Set the cache options below on block devices. Default false.
    pub block_device_cache_set: bool,
    /// Open block devices with O_DIRECT. Default false.
    pub block_device_cache_direct: bool,
    /// Ignore flush requests of block devices. Default false.
    pub block_device_cache_noflush: bool,
    /// Logical sector size reported to the guest: 0 (VMM default) or a power of 2 in 512..=65536.
    pub block_device_logical_sector_size: u32,
    /// Physical sector size reported to the guest: 0 or a power of 2 in 512..=65536.
    pub block_device_physical_sector_size: u32,
    /// Do not attach the guest image as an NVDIMM. Default false.
    pub disable_image_nvdimm: bool,
    /// Use IO threads for block devices. Default false.
    pub enable_iothreads: bool,
    /// Independent IO threads for hot-plugged virtio-blk-pci devices. Default 0.
    pub indep_iothreads: u32,
    /// Use vhost-user block devices. Default false.
    pub enable_vhost_user_store: bool,
    /// Base directory of vhost-user block sockets and device nodes (when enabled).
    pub vhost_user_store_path: String,
    /// Glob patterns an annotation's `vhost_user_store_path` must match.
    pub valid_vhost_user_store_paths: Vec<String>,
    /// Seconds before QEMU reconnects a lost vhost-user socket; 0 disables. Default 0.
    pub vhost_user_reconnect_timeout_sec: u32,
    /// Block device bandwidth limit in bits/s; 0 is unlimited.
    pub disk_rate_limiter_bw_max_rate: u64,
    /// Initial bandwidth burst in bits; 0 is none.
    pub disk_rate_limiter_bw_one_time_burst: u64,
    /// Block device operation limit in ops/s; 0 is unlimited.
    pub disk_rate_limiter_ops_max_rate: u64,
    /// Initial operations burst; 0 is none.
    pub disk_rate_limiter_ops_one_time_burst: u64,
    /// virtio-blk queue size. Default 128.
    pub queue_size: u32,
    /// virtio-blk queues. Default 1.
    pub num_queues: u32,

    // --- shared filesystem --------------------------------------------------------------------
    /// Shared filesystem: `virtio-fs`, `inline-virtio-fs` (built-in VMM), `virtio-fs-nydus`,
    /// `virtio-9p` or `none`. Default `virtio-fs`, as Kata's.
    pub shared_fs: SharedFs,
    /// Path of the virtio-fs daemon (virtiofsd) when `shared_fs = "virtio-fs"`; empty:
    /// [`HypervisorConfig::virtio_fs_daemon_path`], the one `scripts/setup.sh` installs.
    pub virtio_fs_daemon: String,
    /// Glob patterns an annotation's `virtio_fs_daemon` must match.
    pub valid_virtio_fs_daemon_paths: Vec<String>,
    /// Extra arguments for the virtio-fs daemon.
    pub virtio_fs_extra_args: Vec<String>,
    /// virtio-fs cache mode: `never` (default), `metadata`, `auto`, `always` (`none`, deprecated,
    /// becomes `never`).
    pub virtio_fs_cache: VirtioFsCache,
    /// DAX window size in MiB (0 disables DAX).
    pub virtio_fs_cache_size: u32,
    /// virtio-fs virtqueue size. Default 1024.
    pub virtio_fs_queue_size: u32,
    /// Use a DAX window (a non-zero `virtio_fs_cache_size` turns it on). Default false.
    pub virtio_fs_is_dax: bool,
    /// 9p `msize` (largest message) in bytes, 4096..=1048576. Default 8192.
    pub msize_9p: u32,

    // --- devices and PCIe topology ------------------------------------------------------------
    /// PCI bridges for hot-plug; more than 5 is lowered to 5. Default 1.
    pub default_bridges: u32,
    /// Hot-plug VFIO devices on the root bus instead of a bridge. Default false.
    pub hotplug_vfio_on_root_bus: bool,
    /// Where VFIO devices are cold-plugged before boot: `no-port` (default: none cold-plugged),
    /// `root-port`, `bridge-port` or `switch-port`.
    pub cold_plug_vfio: PciePort,
    /// Where VFIO devices are hot-plugged after boot: `no-port` (default: on the root bus),
    /// `root-port`, `bridge-port` or `switch-port`.
    pub hot_plug_vfio: PciePort,
    /// Number of PCIe root ports to create for hot-plug. Devices cold-plugged on `root-port`
    /// get their own ports in addition. Default 0.
    pub pcie_root_port: u32,
    /// Number of PCIe switch downstream ports to create. Default 0. Exclusive with
    /// `pcie_root_port`.
    pub pcie_switch_port: u32,
    /// Give the guest a vIOMMU. Default false.
    pub enable_iommu: bool,
    /// Set `iommu_platform=on` on virtio devices. Default false.
    pub enable_iommu_platform: bool,

    // --- network ------------------------------------------------------------------------------
    /// Disable vhost-net for network devices. Default false.
    pub disable_vhost_net: bool,
    /// Inbound network bandwidth limit in bits/s; 0 is unlimited.
    pub rx_rate_limiter_max_rate: u64,
    /// Outbound network bandwidth limit in bits/s; 0 is unlimited.
    pub tx_rate_limiter_max_rate: u64,
    /// virtio-net queue pairs, 1..=256. Default 1.
    pub network_queues: u32,

    // --- security -----------------------------------------------------------------------------
    /// Run the VMM as an unprivileged per-sandbox user. Default false. The QEMU backend runs
    /// QEMU as a uid of `rootless_uid_range` in a mount namespace of its own (`qemu/rootless.rs`);
    /// the built-in VMM refuses `true`.
    pub rootless: bool,
    /// kata-rs only: the uids (`FIRST-LAST`) a rootless QEMU runs as, one per sandbox, with no
    /// `/etc/passwd` entry. Default `1879048192-1879113727`.
    pub rootless_uid_range: String,
    /// Turn off the VMM's own seccomp filter (Cloud Hypervisor, Firecracker, Dragonball).
    pub disable_seccomp: bool,
    /// QEMU's seccomp sandbox (`-sandbox`): `on` or `off`, then QEMU's sub-options
    /// (`obsolete`, `elevateprivileges`, `spawn`, `resourcecontrol`). Empty (Kata's default,
    /// which leaves QEMU unconfined): kata-rs' default, [`DEFAULT_SECCOMP_SANDBOX`], every
    /// sub-option denied. `off` turns the filter off. See [`HypervisorConfig::qemu_sandbox`].
    #[serde(alias = "seccompsandbox")]
    pub seccomp_sandbox: String,
    /// Run a confidential guest (TDX, SEV/SEV-SNP or IBM SE, as the host offers). Default false.
    pub confidential_guest: bool,
    /// On AMD, prefer SEV-SNP to SEV. Needs `confidential_guest`. Default false.
    pub sev_snp_guest: bool,
    /// SEV-SNP ID block: 96 bytes, base64. Set together with `snp_id_auth`.
    pub snp_id_block: String,
    /// SEV-SNP ID authentication structure: 4096 bytes, base64.
    pub snp_id_auth: String,
    /// SEV-SNP guest policy (bit 17 must be set). Default 0x30000.
    pub snp_guest_policy: u32,
    /// vsock port of the TDX Quote Generation Service; 0 uses its unix socket. Default 4050.
    pub tdx_quote_generation_service_socket_port: u32,
    /// Initdata given to a confidential guest (encoded policies and configuration).
    pub initdata: String,
    /// Directory of OCI hooks inside the guest. Empty: none.
    pub guest_hook_path: String,
    /// SELinux label of the VMM process. Empty: none.
    pub selinux_label: String,
    /// Do not apply SELinux to the VMM process. Default false.
    pub disable_selinux: bool,
    /// Do not apply SELinux to container processes in the guest. Default true.
    pub disable_guest_selinux: bool,
    /// Annotations (`io.katacontainers.config.hypervisor.*` suffixes, regular expressions)
    /// that pods may set. Default: none.
    pub enable_annotations: Vec<String>,

    // --- debug --------------------------------------------------------------------------------
    /// Give the VMM's and the guest kernel's debug output to the log. Default false.
    pub enable_debug: bool,
    /// VMM log level: `trace`, `debug`, `info` (default), `warn`, `error`, `critical`.
    pub log_level: String,
    /// Extra QEMU monitor when debugging: `""` (default: none), `hmp`, `qmp`, `qmp-pretty`.
    #[serde(alias = "dbg_monitor_socket")]
    pub extra_monitor_socket: String,
    /// Where a panicked guest's memory is dumped. Empty: no dump.
    pub guest_memory_dump_path: String,
    /// Dump with paging information (for gdb). Default false.
    pub guest_memory_dump_paging: bool,
    /// Use a legacy serial port for the guest console. Default false.
    pub use_legacy_serial: bool,

    // --- remote hypervisor --------------------------------------------------------------------
    /// Socket of the service that creates remote VMs. Default `/run/peerpod/hypervisor.sock`.
    pub remote_hypervisor_socket: String,
    /// Seconds to wait for a remote VM. Default 600.
    pub remote_hypervisor_timeout: i32,
    /// GPUs a remote VM needs. Default 0.
    pub default_gpus: u32,
    /// GPU model a remote VM needs (e.g. `h100`).
    pub default_gpu_model: String,

    // --- VM factory ---------------------------------------------------------------------------
    /// `[hypervisor.<name>.factory]`: VM templating.
    pub factory: HypervisorFactory,
    /// Host path of a container image's prefetch list (nydus). Empty: none.
    pub prefetch_list_path: String,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            valid_hypervisor_paths: Vec::new(),
            ctlpath: String::new(),
            valid_ctlpaths: Vec::new(),
            jailer_path: String::new(),
            valid_jailer_paths: Vec::new(),
            disable_nesting_checks: false,
            kernel: String::new(),
            initrd: String::new(),
            image: String::new(),
            rootfs_type: RootfsType::Ext4,
            vm_rootfs_driver: VmRootfsDriver::VirtioBlkPci,
            kernel_params: String::new(),
            kernel_verity_params: String::new(),
            firmware: String::new(),
            firmware_volume: String::new(),
            pflashes: Vec::new(),
            machine_type: default_machine_type().to_string(),
            machine_accelerators: String::new(),
            entropy_source: "/dev/urandom".to_string(),
            valid_entropy_sources: Vec::new(),
            cpu_features: String::new(),
            default_vcpus: 1,
            default_maxvcpus: 0,
            overhead_vcpus: 0.0,
            default_memory: DEFAULT_MEMORY_MIB,
            default_maxmemory: 0,
            overhead_memory: 0,
            memory_slots: DEFAULT_MEMORY_SLOTS,
            memory_offset: 0,
            enable_virtio_mem: false,
            enable_mem_prealloc: false,
            enable_hugepages: false,
            hugepage_type: HugepageType::Hugetlbfs,
            file_mem_backend: String::new(),
            valid_file_mem_backends: Vec::new(),
            enable_guest_swap: false,
            guest_swap_path: "/run/kata-containers/swap".to_string(),
            guest_swap_size_percent: 100,
            guest_swap_create_threshold_secs: 60,
            reclaim_guest_freed_memory: false,
            tcg_tb_size: DEFAULT_TCG_TB_SIZE_MIB,
            block_device_driver: BlockDeviceDriver::VirtioScsi,
            block_device_aio: BlockDeviceAio::IoUring,
            disable_block_device_use: false,
            block_device_cache_set: false,
            block_device_cache_direct: false,
            block_device_cache_noflush: false,
            block_device_logical_sector_size: 0,
            block_device_physical_sector_size: 0,
            disable_image_nvdimm: false,
            enable_iothreads: false,
            indep_iothreads: 0,
            enable_vhost_user_store: false,
            vhost_user_store_path: "/var/run/kata-containers/vhost-user".to_string(),
            valid_vhost_user_store_paths: Vec::new(),
            vhost_user_reconnect_timeout_sec: 0,
            disk_rate_limiter_bw_max_rate: 0,
            disk_rate_limiter_bw_one_time_burst: 0,
            disk_rate_limiter_ops_max_rate: 0,
            disk_rate_limiter_ops_one_time_burst: 0,
            queue_size: 128,
            num_queues: 1,
            shared_fs: SharedFs::VirtioFs,
            virtio_fs_daemon: String::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
            virtio_fs_extra_args: Vec::new(),
            virtio_fs_cache: VirtioFsCache::Never,
            virtio_fs_cache_size: 0,
            virtio_fs_queue_size: 1024,
            virtio_fs_is_dax: false,
            msize_9p: 8192,
            default_bridges: 1,
            hotplug_vfio_on_root_bus: false,
            cold_plug_vfio: PciePort::NoPort,
            hot_plug_vfio: PciePort::NoPort,
            pcie_root_port: 0,
            pcie_switch_port: 0,
            enable_iommu: false,
            enable_iommu_platform: false,
            disable_vhost_net: false,
            rx_rate_limiter_max_rate: 0,
            tx_rate_limiter_max_rate: 0,
            network_queues: 1,
            rootless: false,
            rootless_uid_range: crate::config::DEFAULT_ROOTLESS_UID_RANGE.into(),
            disable_seccomp: false,
            seccomp_sandbox: String::new(),
            confidential_guest: false,
            sev_snp_guest: false,
            snp_id_block: String::new(),
            snp_id_auth: String::new(),
            snp_guest_policy: DEFAULT_SNP_GUEST_POLICY,
            tdx_quote_generation_service_socket_port: DEFAULT_TDX_QGS_PORT,
            initdata: String::new(),
            guest_hook_path: String::new(),
            selinux_label: String::new(),
            disable_selinux: false,
            disable_guest_selinux: true,
            enable_annotations: Vec::new(),
            enable_debug: false,
            log_level: "info".to_string(),
            extra_monitor_socket: String::new(),
            guest_memory_dump_path: String::new(),
            guest_memory_dump_paging: false,
            use_legacy_serial: false,
            remote_hypervisor_socket: DEFAULT_REMOTE_HYPERVISOR_SOCKET.to_string(),
            remote_hypervisor_timeout: DEFAULT_REMOTE_HYPERVISOR_TIMEOUT,
            default_gpus: 0,
            default_gpu_model: String::new(),
            factory: HypervisorFactory::default(),
            prefetch_list_path: String::new(),
        }
    }
}

/// The machine type Kata uses by default on this architecture.
pub fn default_machine_type() -> &'static str {
    if cfg!(target_arch = "s390x") {
        "s390-ccw-virtio"
    } else if cfg!(target_arch = "aarch64") {
        "virt"
    } else {
        "q35"
    }
}

/// The number of CPUs this process may run on (what Kata calls the host's CPUs).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Accepts Kata's `default_vcpus` forms: an integer, a float (rounded up), or a negative number
/// (all host CPUs).
fn deserialize_vcpus<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    struct Vcpus;
    impl serde::de::Visitor<'_> for Vcpus {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a vCPU count (a number; negative means all host CPUs)")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<u32, E> {
            if v < 0 {
                Ok(host_cpus())
            } else {
                u32::try_from(v).map_err(|_| E::custom(format!("{v} vCPUs is out of range")))
            }
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom(format!("{v} vCPUs is out of range")))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<u32, E> {
            if !v.is_finite() {
                Err(E::custom(format!("{v} is not a vCPU count")))
            } else if v < 0.0 {
                Ok(host_cpus())
            } else if v.ceil() > f64::from(u32::MAX) {
                Err(E::custom(format!("{v} vCPUs is out of range")))
            } else {
                Ok(v.ceil() as u32)
            }
        }
    }
    d.deserialize_any(Vcpus)
}

impl HypervisorConfig {
    /// The effective maximum vCPU count (`default_maxvcpus`, or the host's CPUs when 0).
    pub fn max_vcpus(&self) -> u32 {
        if self.default_maxvcpus == 0 {
            host_cpus().max(self.default_vcpus)
        } else {
            self.default_maxvcpus
        }
    }

    /// Applies Kata's load-time rules, as Kata's configuration files document them:
    ///
    /// * `default_vcpus`: 0 becomes 1; more than the host's CPUs (or than the VMM supports)
    ///   becomes that many.
    /// * `default_maxvcpus`: 0 or more than the host's CPUs (or than the VMM supports) becomes
    ///   that many.
    /// * `default_memory` 0 becomes 2048, `memory_slots` 0 becomes 10.
    /// * `default_bridges` above 5 becomes 5; `network_queues` is kept in 1..=256.
    /// * Empty keys take their default (`machine_type`, `entropy_source`, `log_level`, ...).
    ///   Empty values of the typed keys (`shared_fs`, `block_device_driver`, ...) are turned
    ///   into their default while the file is read (see [`SharedFs`] and its siblings).
    /// * The deprecated `virtio_fs_cache = "none"` becomes `never`.
    /// * A non-zero `virtio_fs_cache_size` turns DAX on; DAX with size 0 gets 1024 MiB.
    /// * Spaces around commas in `cpu_features` and `machine_accelerators` are removed.
    ///
    /// Returns notes on what was changed, for the log.
    pub fn adjust(&mut self, kind: HypervisorType) -> Vec<String> {
        let mut notes = Vec::new();
        // The host's CPUs, but no more than the VMM supports (Kata's "or the maximum number
        // of vCPUs supported" rule). A remote VM is not limited by this host.
        let limit = host_cpus().min(kind.max_vcpus());
        if self.default_vcpus == 0 {
            self.default_vcpus = 1;
        }
        if kind != HypervisorType::Remote {
            if self.default_vcpus > limit {
                notes.push(format!(
                    "default_vcpus = {} is more than the {limit} CPUs available: using {limit}",
                    self.default_vcpus
                ));
                self.default_vcpus = limit;
            }
            if self.default_maxvcpus == 0 || self.default_maxvcpus > limit {
                self.default_maxvcpus = limit;
            }
        }
        if self.default_memory == 0 {
            self.default_memory = DEFAULT_MEMORY_MIB;
        }
        if self.memory_slots == 0 {
            self.memory_slots = DEFAULT_MEMORY_SLOTS;
        }
        if self.default_bridges > MAX_BRIDGES {
            notes.push(format!(
                "default_bridges = {} is more than {MAX_BRIDGES}: using {MAX_BRIDGES}",
                self.default_bridges
            ));
            self.default_bridges = MAX_BRIDGES;
        }
        self.network_queues = self.network_queues.clamp(1, MAX_NETWORK_QUEUES);
        if self.queue_size == 0 {
            self.queue_size = 128;
        }
        if self.num_queues == 0 {
            self.num_queues = 1;
        }
        let fill = |field: &mut String, default: &str| {
            if field.trim().is_empty() {
                *field = default.to_string();
            }
        };
        fill(&mut self.machine_type, default_machine_type());
        fill(&mut self.entropy_source, "/dev/urandom");
        fill(&mut self.log_level, "info");
        fill(&mut self.factory.template_path, DEFAULT_TEMPLATE_PATH);
        fill(
            &mut self.remote_hypervisor_socket,
            DEFAULT_REMOTE_HYPERVISOR_SOCKET,
        );
        if self.remote_hypervisor_timeout == 0 {
            self.remote_hypervisor_timeout = DEFAULT_REMOTE_HYPERVISOR_TIMEOUT;
        }
        if self.virtio_fs_cache == VirtioFsCache::None {
            notes.push(
                "virtio_fs_cache = \"none\" is deprecated since Kata 2.5: using \"never\"".into(),
            );
            self.virtio_fs_cache = VirtioFsCache::Never;
        }
        if self.virtio_fs_cache_size != 0 {
            self.virtio_fs_is_dax = true;
        } else if self.virtio_fs_is_dax {
            self.virtio_fs_cache_size = 1024;
        }
        let tidy = |s: &mut String| {
            *s = s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(",");
        };
        tidy(&mut self.cpu_features);
        tidy(&mut self.machine_accelerators);
        notes
    }
}

/// The QEMU binary for this architecture (`qemu-system-x86_64` on x86_64).
pub fn qemu_binary_name() -> &'static str {
    if cfg!(target_arch = "s390x") {
        "qemu-system-s390x"
    } else if cfg!(target_arch = "aarch64") {
        "qemu-system-aarch64"
    } else {
        "qemu-system-x86_64"
    }
}

/// Paths of the default guest image, read from the manifest `make guest` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestManifest {
    /// The guest kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs with the agent as `/init`.
    pub initrd: PathBuf,
    /// The debug initramfs (agent plus busybox).
    #[serde(default)]
    pub initrd_debug: Option<PathBuf>,
    /// Kata's rootfs image layout with the agent as `/sbin/init` (`guest/image.sh`), for the
    /// `image` key; absent in manifests written before it existed.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// The kernel version string.
    #[serde(default)]
    pub kernel_version: String,
}

impl HypervisorConfig {
    /// The virtio-fs daemon to run: `virtio_fs_daemon`, or when it is empty the Rust
    /// virtiofsd `scripts/setup.sh` installs, `$KATA_RS_CACHE/bin/virtiofsd`.
    pub fn virtio_fs_daemon_path(&self) -> PathBuf {
        if self.virtio_fs_daemon.is_empty() {
            cache_dir().join("bin").join("virtiofsd")
        } else {
            PathBuf::from(&self.virtio_fs_daemon)
        }
    }
}

/// The one command that builds the default guest image into the cache for a program that
/// depends on kata-rs from crates.io (no checkout of its repository): the repository's
/// `make setup guest` (Debian 12 or Ubuntu; Rust installed; a few minutes, once).
pub const BUILD_GUEST_COMMAND: &str = "git clone --depth 1 https://github.com/kata-rs/kata-rs /tmp/kata-rs && sudo env \"PATH=$PATH\" make -C /tmp/kata-rs setup guest";

/// How to get the default guest image, for errors that find none: `make guest` in a
/// checkout, else [`BUILD_GUEST_COMMAND`].
pub fn guest_image_hint() -> String {
    format!(
        "build the guest image with `make guest` in a kata-rs checkout, or from anywhere with `{BUILD_GUEST_COMMAND}`"
    )
}

/// kata-rs' cache directory: `$KATA_RS_CACHE`, default `/var/cache/kata-rs`. It holds the
/// guest image and its manifest (`guest/`), helper binaries (`bin/`) and unpacked images.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KATA_RS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kata-rs"))
}

impl GuestManifest {
    /// Where the manifest is: `$KATA_RS_GUEST_MANIFEST`, else
    /// `$KATA_RS_CACHE/guest/manifest.json` (cache default `/var/cache/kata-rs`).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("KATA_RS_GUEST_MANIFEST") {
            return PathBuf::from(p);
        }
        cache_dir().join("guest").join("manifest.json")
    }

    /// Reads the manifest at [`GuestManifest::default_path`].
    pub fn load_default() -> Result<Self> {
        Self::load(&Self::default_path())
    }

    /// Reads a manifest file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    what: "guest image manifest",
                    path: path.to_path_buf(),
                    hint: guest_image_hint(),
                }
            } else {
                Error::io(format!("reading {}", path.display()), e)
            }
        })?;
        serde_json::from_str(&text).map_err(|e| Error::InvalidConfig {
            key: "guest manifest",
            value: path.display().to_string(),
            reason: format!("not a valid manifest ({e}); {}", guest_image_hint()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_katas() {
        let c = HypervisorConfig::default();
        assert_eq!(c.default_vcpus, 1);
        assert_eq!(c.default_memory, 2048);
        assert_eq!(c.memory_slots, 10);
        assert_eq!(c.shared_fs, SharedFs::VirtioFs);
        assert_eq!(c.cold_plug_vfio, PciePort::NoPort);
        assert_eq!(c.snp_guest_policy, 0x30000);
        assert_eq!(c.tdx_quote_generation_service_socket_port, 4050);
        assert!(c.disable_guest_selinux);
        c.validate().unwrap();
        for &kind in HypervisorType::ALL {
            let mut c = HypervisorConfig::default();
            for (k, v) in kind.section_defaults() {
                match *k {
                    "shared_fs" => c.shared_fs = v.parse().unwrap(),
                    "block_device_driver" => c.block_device_driver = v.parse().unwrap(),
                    "vm_rootfs_driver" => c.vm_rootfs_driver = v.parse().unwrap(),
                    other => panic!("unexpected per-VMM default {other}"),
                }
            }
            c.adjust(kind);
            c.validate_for(kind)
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }

    #[test]
    fn section_names() {
        assert_eq!(
            HypervisorType::from_section("cloud-hypervisor"),
            Some(HypervisorType::CloudHypervisor)
        );
        assert_eq!(
            HypervisorType::from_section("clh"),
            Some(HypervisorType::CloudHypervisor)
        );
        assert_eq!(HypervisorType::from_section("vmware"), None);
    }

    #[test]
    fn adjust_follows_katas_documented_rules() {
        let mut c = HypervisorConfig {
            default_vcpus: 0,
            default_maxvcpus: 0,
            default_memory: 0,
            default_bridges: 9,
            virtio_fs_cache: VirtioFsCache::None,
            cpu_features: " pmu=off , vmx=off".into(),
            ..Default::default()
        };
        let notes = c.adjust(HypervisorType::Qemu);
        assert_eq!(c.default_vcpus, 1);
        assert_eq!(c.default_maxvcpus, host_cpus());
        assert_eq!(c.default_memory, 2048);
        assert_eq!(c.default_bridges, 5);
        assert_eq!(c.virtio_fs_cache, VirtioFsCache::Never);
        assert_eq!(c.cpu_features, "pmu=off,vmx=off");
        assert!(notes.iter().any(|n| n.contains("deprecated")), "{notes:?}");
        let mut c = HypervisorConfig {
            default_vcpus: 10_000,
            ..Default::default()
        };
        c.adjust(HypervisorType::Qemu);
        assert_eq!(c.default_vcpus, host_cpus());
    }

    #[test]
    fn vcpus_accept_katas_number_forms() {
        #[derive(Deserialize)]
        struct W {
            #[serde(deserialize_with = "deserialize_vcpus")]
            v: u32,
        }
        let v = |text: &str| serde_json::from_str::<W>(text).map(|w| w.v);
        assert_eq!(v(r#"{"v": 2}"#).unwrap(), 2);
        assert_eq!(v(r#"{"v": 1.5}"#).unwrap(), 2);
        assert_eq!(v(r#"{"v": -1}"#).unwrap(), host_cpus());
        assert!(v(r#"{"v": "two"}"#).is_err());
    }

    #[test]
    fn missing_manifest_says_make_guest() {
        let e =
            GuestManifest::load(std::path::Path::new("/nonexistent/manifest.json")).unwrap_err();
        assert!(e.to_string().contains("make guest"), "{e}");
        // A crates.io user, without a checkout, is given the one command.
        assert!(e.to_string().contains(BUILD_GUEST_COMMAND), "{e}");
    }
}
