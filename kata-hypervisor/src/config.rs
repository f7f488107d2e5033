//! The `[hypervisor.<name>]` section of Kata's configuration file.
//!
//! Field names are Kata's TOML keys, and defaults are Kata's, so a file written for Kata's
//! runtime-rs deserialises into [`HypervisorConfig`] unchanged. Validation that needs no I/O is
//! [`HypervisorConfig::validate`]; checks of paths on disk happen when a backend prepares a VM.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::PciePort;
use crate::error::{Error, Result};

/// Smallest guest memory kata-rs accepts, in MiB.
pub const MIN_MEMORY_MIB: u32 = 64;

/// Kata's default guest memory, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 2048;

/// One `[hypervisor.<name>]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HypervisorConfig {
    /// Path of the VMM binary (`qemu-system-x86_64` for QEMU). Empty: found on `PATH`.
    pub path: String,
    /// Guest kernel. Empty: the guest manifest's kernel (`make guest`).
    pub kernel: String,
    /// Guest initramfs. Empty: the guest manifest's initrd. Exclusive with `image`.
    pub initrd: String,
    /// Guest root disk image. Exclusive with `initrd`.
    pub image: String,
    /// QEMU machine type (`q35` on x86_64, `s390-ccw-virtio` on s390x).
    pub machine_type: String,
    /// Extra QEMU machine accelerator options (comma separated).
    pub machine_accelerators: String,
    /// Extra kernel command-line parameters, appended after kata-rs' own.
    pub kernel_params: String,
    /// Firmware image (empty: the VMM's default).
    pub firmware: String,
    /// vCPUs at boot.
    pub default_vcpus: u32,
    /// Upper bound for vCPU hot-plug; 0 means the host's CPU count.
    pub default_maxvcpus: u32,
    /// Guest memory at boot, in MiB.
    pub default_memory: u32,
    /// Memory hot-plug slots.
    pub memory_slots: u32,
    /// Memory hot-plug headroom beyond the host's memory, in MiB.
    pub memory_offset: u64,
    /// Block device driver: `virtio-blk`, `virtio-scsi`, `virtio-blk-ccw`, `virtio-mmio`, `nvdimm`.
    pub block_device_driver: String,
    /// Do not use block devices for the container rootfs.
    pub disable_block_device_use: bool,
    /// Shared filesystem: `virtio-fs`, `virtio-9p`, `inline-virtio-fs` or `none`.
    pub shared_fs: String,
    /// Path of the virtio-fs daemon (virtiofsd).
    pub virtio_fs_daemon: String,
    /// virtio-fs cache mode: `never`, `metadata` (`auto`), `always`.
    pub virtio_fs_cache: String,
    /// DAX window size for virtio-fs, in MiB (0 disables DAX).
    pub virtio_fs_cache_size: u32,
    /// Extra arguments for the virtio-fs daemon.
    pub virtio_fs_extra_args: Vec<String>,
    /// 9p `msize` (maximum message size) in bytes.
    pub msize_9p: u32,
    /// Use IO threads for block devices.
    pub enable_iothreads: bool,
    /// Pre-allocate guest memory.
    pub enable_mem_prealloc: bool,
    /// Back guest memory with huge pages.
    pub enable_hugepages: bool,
    /// Give the VMM's debug output to the log.
    pub enable_debug: bool,
    /// Where VFIO devices are cold-plugged before boot: `no-port` (none cold-plugged),
    /// `root-port`, `bridge-port` or `switch-port`.
    pub cold_plug_vfio: PciePort,
    /// Where VFIO devices are hot-plugged after boot: `no-port` (on the root bus),
    /// `root-port`, `bridge-port` or `switch-port`.
    pub hot_plug_vfio: PciePort,
    /// Number of PCIe root ports to create (for hot-plug, and at least one per cold-plugged
    /// device on `root-port`).
    pub pcie_root_port: u32,
    /// Number of PCIe switch downstream ports to create.
    pub pcie_switch_port: u32,
    /// Disable vhost-net for network devices.
    pub disable_vhost_net: bool,
    /// Host entropy source for virtio-rng.
    pub entropy_source: String,
    /// Allowed values for `path` when set through annotations.
    pub valid_hypervisor_paths: Vec<String>,
    /// Allowed values for `virtio_fs_daemon` when set through annotations.
    pub valid_virtio_fs_daemon_paths: Vec<String>,
    /// Annotations (`io.katacontainers.config.hypervisor.*` suffixes) that pods may set.
    pub enable_annotations: Vec<String>,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            kernel: String::new(),
            initrd: String::new(),
            image: String::new(),
            machine_type: default_machine_type().to_string(),
            machine_accelerators: String::new(),
            kernel_params: String::new(),
            firmware: String::new(),
            default_vcpus: 1,
            default_maxvcpus: 0,
            default_memory: DEFAULT_MEMORY_MIB,
            memory_slots: 10,
            memory_offset: 0,
            block_device_driver: "virtio-scsi".to_string(),
            disable_block_device_use: false,
            shared_fs: "virtio-fs".to_string(),
            virtio_fs_daemon: String::new(),
            virtio_fs_cache: "never".to_string(),
            virtio_fs_cache_size: 0,
            virtio_fs_extra_args: Vec::new(),
            msize_9p: 8192,
            enable_iothreads: false,
            enable_mem_prealloc: false,
            enable_hugepages: false,
            enable_debug: false,
            cold_plug_vfio: PciePort::NoPort,
            hot_plug_vfio: PciePort::NoPort,
            pcie_root_port: 0,
            pcie_switch_port: 0,
            disable_vhost_net: false,
            entropy_source: "/dev/urandom".to_string(),
            valid_hypervisor_paths: Vec::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
            enable_annotations: Vec::new(),
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

/// The shared filesystem kind a VM exports to its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SharedFs {
    /// virtio-fs through an external daemon (virtiofsd).
    VirtioFs,
    /// virtio-fs served inside the VMM (the built-in VMM only).
    InlineVirtioFs,
    /// QEMU's built-in virtio-9p.
    Virtio9p,
    /// No shared filesystem (block devices only).
    None,
}

impl HypervisorConfig {
    /// The effective maximum vCPU count (`default_maxvcpus`, or the host's CPUs when 0).
    pub fn max_vcpus(&self) -> u32 {
        if self.default_maxvcpus == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .max(self.default_vcpus)
        } else {
            self.default_maxvcpus
        }
    }

    /// Parses `shared_fs`.
    pub fn shared_fs_kind(&self) -> Result<SharedFs> {
        match self.shared_fs.as_str() {
            "virtio-fs" => Ok(SharedFs::VirtioFs),
            "inline-virtio-fs" => Ok(SharedFs::InlineVirtioFs),
            "virtio-9p" => Ok(SharedFs::Virtio9p),
            "none" | "" => Ok(SharedFs::None),
            other => Err(Error::InvalidConfig {
                key: "shared_fs",
                value: other.to_string(),
                reason: "allowed: virtio-fs, inline-virtio-fs, virtio-9p, none".into(),
            }),
        }
    }

    /// Checks the values that need no I/O: ranges and enum values.
    pub fn validate(&self) -> Result<()> {
        if self.default_vcpus == 0 {
            return Err(Error::InvalidConfig {
                key: "default_vcpus",
                value: "0".into(),
                reason: "a VM needs at least 1 vCPU".into(),
            });
        }
        if self.default_maxvcpus != 0 && self.default_vcpus > self.default_maxvcpus {
            return Err(Error::InvalidConfig {
                key: "default_vcpus",
                value: self.default_vcpus.to_string(),
                reason: format!(
                    "more than default_maxvcpus ({}); raise default_maxvcpus or lower default_vcpus",
                    self.default_maxvcpus
                ),
            });
        }
        if self.default_memory < MIN_MEMORY_MIB {
            return Err(Error::InvalidConfig {
                key: "default_memory",
                value: self.default_memory.to_string(),
                reason: format!("at least {MIN_MEMORY_MIB} MiB are needed to boot the guest"),
            });
        }
        if !self.initrd.is_empty() && !self.image.is_empty() {
            return Err(Error::InvalidConfig {
                key: "initrd",
                value: self.initrd.clone(),
                reason: "initrd and image are exclusive; set only one".into(),
            });
        }
        match self.block_device_driver.as_str() {
            "virtio-blk" | "virtio-scsi" | "virtio-blk-ccw" | "virtio-mmio" | "nvdimm" => {}
            other => {
                return Err(Error::InvalidConfig {
                    key: "block_device_driver",
                    value: other.to_string(),
                    reason: "allowed: virtio-blk, virtio-scsi, virtio-blk-ccw, virtio-mmio, nvdimm"
                        .into(),
                })
            }
        }
        self.shared_fs_kind()?;
        if self.cold_plug_vfio != PciePort::NoPort && self.hot_plug_vfio != PciePort::NoPort {
            return Err(Error::InvalidConfig {
                key: "cold_plug_vfio",
                value: self.cold_plug_vfio.to_string(),
                reason:
                    "cold_plug_vfio and hot_plug_vfio cannot both be enabled; set one to no-port"
                        .into(),
            });
        }
        Ok(())
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
    /// The kernel version string.
    #[serde(default)]
    pub kernel_version: String,
}

impl GuestManifest {
    /// Where the manifest is: `$KATA_RS_GUEST_MANIFEST`, else
    /// `$KATA_RS_CACHE/guest/manifest.json` (cache default `/var/cache/kata-rs`).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("KATA_RS_GUEST_MANIFEST") {
            return PathBuf::from(p);
        }
        let cache = std::env::var_os("KATA_RS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/kata-rs"));
        cache.join("guest").join("manifest.json")
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
                    hint: "run `make guest` to build the guest kernel and initramfs".into(),
                }
            } else {
                Error::io(format!("reading {}", path.display()), e)
            }
        })?;
        serde_json::from_str(&text).map_err(|e| Error::InvalidConfig {
            key: "guest manifest",
            value: path.display().to_string(),
            reason: format!("not a valid manifest ({e}); rebuild it with `make guest`"),
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
        assert_eq!(c.shared_fs, "virtio-fs");
        assert_eq!(c.cold_plug_vfio, PciePort::NoPort);
        c.validate().unwrap();
    }

    #[test]
    fn validation_names_the_key() {
        let c = HypervisorConfig {
            default_vcpus: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("default_vcpus"));
        let c = HypervisorConfig {
            default_vcpus: 4,
            default_maxvcpus: 2,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("default_maxvcpus"));
        let c = HypervisorConfig {
            default_memory: 32,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("default_memory"));
        let c = HypervisorConfig {
            shared_fs: "nfs".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("shared_fs"));
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::RootPort,
            hot_plug_vfio: PciePort::SwitchPort,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cold_plug_vfio"));
    }

    #[test]
    fn missing_manifest_says_make_guest() {
        let e =
            GuestManifest::load(std::path::Path::new("/nonexistent/manifest.json")).unwrap_err();
        assert!(e.to_string().contains("make guest"), "{e}");
    }
}
