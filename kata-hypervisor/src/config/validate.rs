//! Validation of a `[hypervisor.<name>]` table: ranges, enum values and incompatible
//! combinations (no I/O), and the host paths the table's features need.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{
    qemu_binary_name, BlockDeviceDriver, HypervisorConfig, HypervisorType, SharedFs,
    VmRootfsDriver, MIN_MEMORY_MIB,
};
use crate::device::PciePort;
use crate::error::{Error, Result};

/// Log levels Kata accepts.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "critical"];

/// QEMU machine types kata-rs knows (a `-<version>` suffix is allowed on versioned ones).
const QEMU_MACHINES: &[&str] = &["q35", "pc", "microvm", "virt", "s390-ccw-virtio", "pseries"];

/// QEMU's `-sandbox` sub-options and the values each takes (QEMU 7.2, `qemu-system-* -help`).
const QEMU_SANDBOX_OPTIONS: &[(&str, &[&str])] = &[
    ("obsolete", &["allow", "deny"]),
    ("elevateprivileges", &["allow", "deny", "children"]),
    ("spawn", &["allow", "deny"]),
    ("resourcecontrol", &["allow", "deny"]),
];

pub(super) fn invalid(
    key: &'static str,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidConfig {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn one_of(key: &'static str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("\"{value}\""),
            format!("allowed: {}", allowed.join(", ")),
        ))
    }
}

/// Whether `machine` is s390x's `s390-ccw-virtio` (no PCIe: VFIO-AP devices need no port).
pub(crate) fn is_s390_machine(machine: &str) -> bool {
    machine == "s390-ccw-virtio" || machine.starts_with("s390-ccw-virtio-")
}

fn is_q35_machine(machine: &str) -> bool {
    machine == "q35" || machine.starts_with("pc-q35-")
}

/// Decoded length of standard base64 text, or `None` when it is not base64.
fn base64_len(text: &str) -> Option<usize> {
    let t: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if t.is_empty() || !t.len().is_multiple_of(4) {
        return None;
    }
    let pad = t.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &t[..t.len() - pad];
    if !body
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
    {
        return None;
    }
    Some(t.len() / 4 * 3 - pad)
}

/// A path a section names (or needs) that is not on this host.
#[derive(Debug)]
pub struct HostPathProblem {
    /// The key that names the path (`kernel`, `virtio_fs_daemon`, ...).
    pub key: &'static str,
    /// What is missing, with the path.
    pub error: Error,
}

impl HypervisorConfig {
    /// The argument of QEMU's `-sandbox` for `seccomp_sandbox`, checked: `None` when it is
    /// `off`; [`DEFAULT_SECCOMP_SANDBOX`](super::DEFAULT_SECCOMP_SANDBOX) when it is empty.
    ///
    /// The value must start with `on` or `off` (QEMU reads sub-options without `on` as a
    /// sandbox that is off, so they would be ignored), followed by QEMU's sub-options, each
    /// once, with one of its values: `obsolete=allow|deny`,
    /// `elevateprivileges=allow|deny|children`, `spawn=allow|deny`,
    /// `resourcecontrol=allow|deny`. `off` takes no sub-options.
    ///
    /// ```
    /// use kata_hypervisor::HypervisorConfig;
    ///
    /// let c = HypervisorConfig { seccomp_sandbox: "on,spawn=deny".into(), ..Default::default() };
    /// assert_eq!(c.qemu_sandbox().unwrap().as_deref(), Some("on,spawn=deny"));
    /// let off = HypervisorConfig { seccomp_sandbox: "off".into(), ..Default::default() };
    /// assert_eq!(off.qemu_sandbox().unwrap(), None);
    /// ```
    pub fn qemu_sandbox(&self) -> Result<Option<String>> {
        let value = self.seccomp_sandbox.trim();
        if value.is_empty() {
            return Ok(Some(super::DEFAULT_SECCOMP_SANDBOX.to_string()));
        }
        let bad = |why: String| invalid("seccomp_sandbox", format!("\"{value}\""), why);
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        let on = match items[0] {
            "on" | "enable=on" => true,
            "off" | "enable=off" => false,
            other => {
                return Err(bad(format!(
                    "starts with `{other}`: the value starts with `on` or `off` (QEMU would leave a sandbox without `on` off)"
                )))
            }
        };
        if !on {
            return if items.len() == 1 {
                Ok(None)
            } else {
                Err(bad(
                    "`off` takes no sub-options; remove them, or start with `on`".into(),
                ))
            };
        }
        let allowed = || {
            QEMU_SANDBOX_OPTIONS
                .iter()
                .map(|(k, vs)| format!("{k}={}", vs.join("|")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut seen: Vec<&str> = Vec::new();
        for item in &items[1..] {
            let Some((key, val)) = item.split_once('=') else {
                return Err(bad(format!(
                    "`{item}` is not key=value; QEMU's sub-options are {}",
                    allowed()
                )));
            };
            let Some((_, values)) = QEMU_SANDBOX_OPTIONS.iter().find(|(k, _)| *k == key) else {
                return Err(bad(format!(
                    "`{key}` is not a sub-option of QEMU's -sandbox; allowed: {}",
                    allowed()
                )));
            };
            if !values.contains(&val) {
                return Err(bad(format!(
                    "`{key}={val}`: {key} takes {}",
                    values.join(", ")
                )));
            }
            if seen.contains(&key) {
                return Err(bad(format!("`{key}` is given twice")));
            }
            seen.push(key);
        }
        Ok(Some(items.join(",")))
    }

    /// Checks the values that need no I/O and hold for every VMM: ranges, enum values and
    /// incompatible combinations. [`HypervisorConfig::validate_for`] adds the VMM's own rules.
    pub fn validate(&self) -> Result<()> {
        self.validate_cpu_and_memory(256)?;
        self.validate_boot()?;
        self.validate_block()?;
        self.validate_shared_fs()?;
        self.validate_devices()?;
        self.validate_confidential()?;
        one_of("log_level", &self.log_level, LOG_LEVELS)?;
        one_of(
            "extra_monitor_socket",
            &self.extra_monitor_socket,
            &["", "hmp", "qmp", "qmp-pretty"],
        )?;
        Ok(())
    }

    /// [`HypervisorConfig::validate`] plus the rules of one VMM (QEMU has no jailer and no
    /// virtio-mmio block devices, Firecracker has no PCI and no shared filesystem, ...).
    pub fn validate_for(&self, kind: HypervisorType) -> Result<()> {
        self.validate_cpu_and_memory(kind.max_vcpus())?;
        self.validate()?;
        self.check_root_ports(kind)?;
        let fs = self.shared_fs;
        match kind {
            HypervisorType::Qemu => {
                self.qemu_sandbox()?;
                if !self.jailer_path.is_empty() {
                    return Err(invalid(
                        "jailer_path",
                        format!("\"{}\"", self.jailer_path),
                        "QEMU has no jailer; leave jailer_path empty",
                    ));
                }
                if !self.valid_jailer_paths.is_empty() {
                    return Err(invalid(
                        "valid_jailer_paths",
                        format!("{:?}", self.valid_jailer_paths),
                        "QEMU has no jailer; leave valid_jailer_paths empty",
                    ));
                }
                if !self.disable_block_device_use && self.block_device_driver.is_mmio() {
                    return Err(invalid(
                        "block_device_driver",
                        format!("\"{}\"", self.block_device_driver),
                        "QEMU does not support virtio-mmio block devices; use virtio-blk-pci or virtio-scsi",
                    ));
                }
                if fs == SharedFs::InlineVirtioFs {
                    return Err(invalid(
                        "shared_fs",
                        "\"inline-virtio-fs\"",
                        "inline-virtio-fs is served by the built-in VMM only; QEMU uses virtio-fs or virtio-9p",
                    ));
                }
                let known = QEMU_MACHINES.iter().any(|m| {
                    self.machine_type == *m
                        || self.machine_type.starts_with(&format!("{m}-"))
                        || (*m == "q35" && self.machine_type.starts_with("pc-q35-"))
                        || (*m == "pc" && self.machine_type.starts_with("pc-i440fx-"))
                });
                if !known {
                    return Err(invalid(
                        "machine_type",
                        format!("\"{}\"", self.machine_type),
                        format!(
                            "allowed: {} (a version suffix such as pc-q35-7.2 is fine)",
                            QEMU_MACHINES.join(", ")
                        ),
                    ));
                }
            }
            HypervisorType::Dragonball | HypervisorType::CloudHypervisor => {
                if fs == SharedFs::Virtio9p {
                    return Err(invalid(
                        "shared_fs",
                        "\"virtio-9p\"",
                        format!("{kind} has no virtio-9p; use virtio-fs or none"),
                    ));
                }
                if kind == HypervisorType::CloudHypervisor && fs == SharedFs::InlineVirtioFs {
                    return Err(invalid(
                        "shared_fs",
                        "\"inline-virtio-fs\"",
                        "inline-virtio-fs is served by the built-in VMM only; Cloud Hypervisor uses virtio-fs",
                    ));
                }
                if kind == HypervisorType::CloudHypervisor
                    && self.vm_rootfs_driver == VmRootfsDriver::VirtioPmem
                {
                    return Err(invalid(
                        "vm_rootfs_driver",
                        "\"virtio-pmem\"",
                        "Cloud Hypervisor does not support virtio-pmem for the guest image; use virtio-blk-pci",
                    ));
                }
            }
            HypervisorType::Firecracker => {
                if !matches!(fs, SharedFs::None) {
                    return Err(invalid(
                        "shared_fs",
                        format!("\"{}\"", self.shared_fs),
                        "Firecracker has no shared filesystem device; set shared_fs = \"none\"",
                    ));
                }
                if self.cold_plug_vfio != PciePort::NoPort || self.hot_plug_vfio != PciePort::NoPort
                {
                    return Err(invalid(
                        "cold_plug_vfio",
                        if self.cold_plug_vfio == PciePort::NoPort {
                            self.hot_plug_vfio
                        } else {
                            self.cold_plug_vfio
                        },
                        "Firecracker has no PCI bus; VFIO ports must be no-port",
                    ));
                }
            }
            HypervisorType::Remote => {
                if self.remote_hypervisor_timeout < 0 {
                    return Err(invalid(
                        "remote_hypervisor_timeout",
                        self.remote_hypervisor_timeout,
                        "a number of seconds, at least 1",
                    ));
                }
            }
            #[cfg(feature = "test-backend")]
            HypervisorType::HostAgent => {}
        }
        Ok(())
    }

    /// Refuses more `pcie_root_port` than `kind` gives a VM
    /// ([`HypervisorType::max_pcie_root_ports`]), naming the key, the limit and the fix,
    /// whatever `hot_plug_vfio` is (the spare root ports serve disk and NIC hot-plug too).
    /// [`HypervisorConfig::validate_for`] checks it, and the built-in VMM again when a VM is
    /// made from a configuration that was not validated.
    /// The same holds for `pcie_switch_port` against
    /// [`HypervisorType::max_pcie_switch_ports`].
    pub fn check_root_ports(&self, kind: HypervisorType) -> Result<()> {
        if let Some(max) = kind.max_pcie_switch_ports() {
            if self.pcie_switch_port > max {
                return Err(invalid(
                    "pcie_switch_port",
                    self.pcie_switch_port,
                    format!(
                        "{kind} takes at most {max} PCIe switch downstream ports (Kata's limit): \
                         set pcie_switch_port to at most {max}"
                    ),
                ));
            }
        }
        let Some(max) = kind.max_pcie_root_ports() else {
            return Ok(());
        };
        if self.pcie_root_port <= max {
            return Ok(());
        }
        let why = match kind {
            HypervisorType::Dragonball => {
                format!("the built-in VMM's PCI MMIO window holds {max} root ports (32 MiB each)")
            }
            _ => format!(
                "{kind} takes at most {max} PCIe root ports (Kata's limit: 4 KiB of the I/O \
                 port space and a slot of bus 0 each)"
            ),
        };
        Err(invalid(
            "pcie_root_port",
            self.pcie_root_port,
            format!(
                "{why}, for VFIO, disk and NIC hot-plug alike: set pcie_root_port to at most {max}"
            ),
        ))
    }

    fn validate_cpu_and_memory(&self, max_vcpus: u32) -> Result<()> {
        if self.default_vcpus == 0 {
            return Err(invalid("default_vcpus", 0, "a VM needs at least 1 vCPU"));
        }
        if self.default_vcpus > max_vcpus {
            return Err(invalid(
                "default_vcpus",
                self.default_vcpus,
                format!("at most {max_vcpus} vCPUs"),
            ));
        }
        if self.default_maxvcpus > max_vcpus {
            return Err(invalid(
                "default_maxvcpus",
                self.default_maxvcpus,
                format!("at most {max_vcpus} vCPUs (0 means the host's CPUs)"),
            ));
        }
        if self.default_maxvcpus != 0 && self.default_vcpus > self.default_maxvcpus {
            return Err(invalid(
                "default_vcpus",
                self.default_vcpus,
                format!(
                    "more than default_maxvcpus ({}); raise default_maxvcpus or lower default_vcpus",
                    self.default_maxvcpus
                ),
            ));
        }
        if !(0.0..=f32::from(u16::MAX)).contains(&self.overhead_vcpus) {
            return Err(invalid(
                "overhead_vcpus",
                self.overhead_vcpus,
                "a non-negative number of vCPUs",
            ));
        }
        if self.default_memory < MIN_MEMORY_MIB {
            return Err(invalid(
                "default_memory",
                self.default_memory,
                format!("at least {MIN_MEMORY_MIB} MiB are needed to boot the guest"),
            ));
        }
        if self.default_maxmemory != 0 && self.default_memory > self.default_maxmemory {
            return Err(invalid(
                "default_memory",
                self.default_memory,
                format!(
                    "more than default_maxmemory ({} MiB); raise default_maxmemory (0 means the host's memory)",
                    self.default_maxmemory
                ),
            ));
        }
        if self.memory_slots == 0 {
            return Err(invalid(
                "memory_slots",
                0,
                "at least 1 (Kata's default is 10)",
            ));
        }
        if self.enable_guest_swap && !(1..=100).contains(&self.guest_swap_size_percent) {
            return Err(invalid(
                "guest_swap_size_percent",
                self.guest_swap_size_percent,
                "a percentage of guest memory, 1..=100",
            ));
        }
        if self.tcg_tb_size > super::MAX_TCG_TB_SIZE_MIB {
            return Err(invalid(
                "tcg_tb_size",
                self.tcg_tb_size,
                format!(
                    "MiB of QEMU's TCG translation buffer, 1..={} (0: QEMU's own size)",
                    super::MAX_TCG_TB_SIZE_MIB
                ),
            ));
        }
        Ok(())
    }

    fn validate_boot(&self) -> Result<()> {
        if !self.initrd.is_empty() && !self.image.is_empty() {
            return Err(invalid(
                "initrd",
                format!("\"{}\"", self.initrd),
                format!(
                    "initrd and image (\"{}\") are exclusive; set only one",
                    self.image
                ),
            ));
        }
        if !self.kernel_verity_params.trim().is_empty() {
            let mut keys = Vec::new();
            for field in self.kernel_verity_params.split(',').map(str::trim) {
                if field.is_empty() {
                    continue;
                }
                match field.split_once('=') {
                    Some((k, _)) if !k.is_empty() => keys.push(k.to_string()),
                    _ => {
                        return Err(invalid(
                            "kernel_verity_params",
                            format!("\"{}\"", self.kernel_verity_params),
                            format!("`{field}` is not key=value"),
                        ))
                    }
                }
            }
            for needed in [
                "root_hash",
                "salt",
                "data_blocks",
                "data_block_size",
                "hash_block_size",
            ] {
                if !keys.iter().any(|k| k == needed) {
                    return Err(invalid(
                        "kernel_verity_params",
                        format!("\"{}\"", self.kernel_verity_params),
                        format!("missing {needed}; needed: root_hash, salt, data_blocks, data_block_size, hash_block_size"),
                    ));
                }
            }
        }
        if self.factory.enable_template && !self.image.is_empty() {
            return Err(invalid(
                "factory.enable_template",
                "true",
                "VM templating needs initrd; it does not work with image",
            ));
        }
        Ok(())
    }

    fn validate_block(&self) -> Result<()> {
        for (key, size) in [
            (
                "block_device_logical_sector_size",
                self.block_device_logical_sector_size,
            ),
            (
                "block_device_physical_sector_size",
                self.block_device_physical_sector_size,
            ),
        ] {
            if size != 0 && (!(512..=65536).contains(&size) || !size.is_power_of_two()) {
                return Err(invalid(
                    key,
                    size,
                    "0 (the VMM's default) or a power of 2 from 512 to 65536",
                ));
            }
        }
        let (l, p) = (
            self.block_device_logical_sector_size,
            self.block_device_physical_sector_size,
        );
        if l != 0 && p != 0 && l > p {
            return Err(invalid(
                "block_device_logical_sector_size",
                l,
                format!("must not be larger than block_device_physical_sector_size ({p})"),
            ));
        }
        if self.indep_iothreads > 0 && !self.enable_iothreads {
            return Err(invalid(
                "indep_iothreads",
                self.indep_iothreads,
                "needs enable_iothreads = true",
            ));
        }
        Ok(())
    }

    fn validate_shared_fs(&self) -> Result<()> {
        match self.shared_fs {
            SharedFs::VirtioFs | SharedFs::InlineVirtioFs | SharedFs::VirtioFsNydus => {
                if self.virtio_fs_is_dax && self.virtio_fs_cache_size == 0 {
                    return Err(invalid(
                        "virtio_fs_cache_size",
                        0,
                        "virtio_fs_is_dax = true needs a DAX window size in MiB",
                    ));
                }
                if self.virtio_fs_queue_size == 0 || !self.virtio_fs_queue_size.is_power_of_two() {
                    return Err(invalid(
                        "virtio_fs_queue_size",
                        self.virtio_fs_queue_size,
                        "a power of 2 (Kata's default is 1024)",
                    ));
                }
            }
            SharedFs::Virtio9p => {
                if !(4096..=1_048_576).contains(&self.msize_9p) {
                    return Err(invalid(
                        "msize_9p",
                        self.msize_9p,
                        "from 4096 to 1048576 bytes (Kata's default is 8192)",
                    ));
                }
            }
            SharedFs::None => {}
        }
        Ok(())
    }

    fn validate_devices(&self) -> Result<()> {
        if self.cold_plug_vfio != PciePort::NoPort && self.hot_plug_vfio != PciePort::NoPort {
            return Err(invalid(
                "cold_plug_vfio",
                self.cold_plug_vfio,
                format!(
                    "cold_plug_vfio and hot_plug_vfio (\"{}\") cannot both be enabled; set one to no-port",
                    self.hot_plug_vfio
                ),
            ));
        }
        if self.pcie_root_port > 0 && self.pcie_switch_port > 0 {
            return Err(invalid(
                "pcie_root_port",
                self.pcie_root_port,
                format!(
                    "pcie_root_port and pcie_switch_port ({}) cannot both be set; choose one kind of port",
                    self.pcie_switch_port
                ),
            ));
        }
        let s390 = is_s390_machine(&self.machine_type);
        if !s390 {
            for (port, count, key) in [
                (PciePort::RootPort, self.pcie_root_port, "pcie_root_port"),
                (
                    PciePort::SwitchPort,
                    self.pcie_switch_port,
                    "pcie_switch_port",
                ),
            ] {
                if self.hot_plug_vfio == port && count == 0 {
                    return Err(invalid(
                        "hot_plug_vfio",
                        port,
                        format!(
                            "hot-plugging onto {port}s needs spare ports; set {key} to the \
                             number of devices to hot-plug"
                        ),
                    ));
                }
            }
        }
        if s390 {
            // An AP device has no PCI port: `cold_plug_vfio` other than no-port only says
            // "cold-plug" (vfio-ap on the command line), as upstream's SE file has it.
            if self.cold_plug_vfio != PciePort::NoPort && self.cold_plug_vfio != PciePort::RootPort
            {
                return Err(invalid(
                    "cold_plug_vfio",
                    self.cold_plug_vfio,
                    "s390-ccw-virtio has no PCIe ports: VFIO-AP devices are cold-plugged with \
                     root-port (on the command line, no port) or hot-plugged with no-port",
                ));
            }
            if self.hot_plug_vfio != PciePort::NoPort {
                return Err(invalid(
                    "hot_plug_vfio",
                    self.hot_plug_vfio,
                    "s390-ccw-virtio has no PCIe ports (VFIO-AP devices need none); use no-port",
                ));
            }
            if self.pcie_root_port > 0 || self.pcie_switch_port > 0 {
                return Err(invalid(
                    "pcie_root_port",
                    self.pcie_root_port.max(self.pcie_switch_port),
                    "s390-ccw-virtio has no PCIe ports; leave pcie_root_port and pcie_switch_port at 0",
                ));
            }
            let ccw = "s390-ccw-virtio attaches virtio devices over CCW: use virtio-blk-ccw (or virtio-scsi)";
            if !self.vm_rootfs_driver.fits_s390() {
                return Err(invalid(
                    "vm_rootfs_driver",
                    format!("\"{}\"", self.vm_rootfs_driver),
                    ccw,
                ));
            }
            let block = self.block_device_driver;
            let block_fits = block.is_ccw() || block == BlockDeviceDriver::VirtioScsi;
            if !(self.disable_block_device_use || block_fits) {
                return Err(invalid("block_device_driver", format!("\"{block}\""), ccw));
            }
        }
        Ok(())
    }

    fn validate_confidential(&self) -> Result<()> {
        if self.sev_snp_guest && !self.confidential_guest {
            return Err(invalid(
                "sev_snp_guest",
                "true",
                "needs confidential_guest = true",
            ));
        }
        let snp_set = !self.snp_id_block.is_empty() || !self.snp_id_auth.is_empty();
        if snp_set && !self.sev_snp_guest {
            return Err(invalid(
                "snp_id_block",
                format!("\"{}\"", self.snp_id_block),
                "snp_id_block and snp_id_auth are for SEV-SNP guests: set sev_snp_guest = true",
            ));
        }
        if snp_set {
            for (key, text) in [
                ("snp_id_block", &self.snp_id_block),
                ("snp_id_auth", &self.snp_id_auth),
            ] {
                if text.is_empty() {
                    return Err(invalid(
                        key,
                        "\"\"",
                        "snp_id_block and snp_id_auth are set together; both are needed",
                    ));
                }
            }
            for (key, text, len) in [
                ("snp_id_block", &self.snp_id_block, 96),
                ("snp_id_auth", &self.snp_id_auth, 4096),
            ] {
                match base64_len(text) {
                    Some(n) if n == len => {}
                    Some(n) => {
                        return Err(invalid(
                            key,
                            format!("<{n} bytes of base64>"),
                            format!("must decode to exactly {len} bytes"),
                        ))
                    }
                    None => {
                        return Err(invalid(
                            key,
                            format!("\"{text}\""),
                            format!("not base64 (standard alphabet); {len} bytes are expected"),
                        ))
                    }
                }
            }
        }
        if self.sev_snp_guest && self.snp_guest_policy & (1 << 17) == 0 {
            return Err(invalid(
                "snp_guest_policy",
                format!("{:#x}", self.snp_guest_policy),
                "bit 17 of an SEV-SNP policy is reserved and must be 1 (QEMU's default is 0x30000)",
            ));
        }
        if !self.confidential_guest {
            return Ok(());
        }
        if !is_q35_machine(&self.machine_type) && !is_s390_machine(&self.machine_type) {
            return Err(invalid(
                "machine_type",
                format!("\"{}\"", self.machine_type),
                "confidential guests need q35 (TDX, SEV-SNP) or s390-ccw-virtio (IBM SE)",
            ));
        }
        if self.block_device_driver == BlockDeviceDriver::Nvdimm {
            return Err(invalid(
                "block_device_driver",
                "\"nvdimm\"",
                "NVDIMM devices do not work with confidential_guest = true",
            ));
        }
        if self.vm_rootfs_driver == VmRootfsDriver::VirtioBlkMmio {
            return Err(invalid(
                "vm_rootfs_driver",
                "\"virtio-blk-mmio\"",
                "virtio-mmio is not hardened for confidential guests; use virtio-blk-pci",
            ));
        }
        if self.enable_virtio_mem {
            return Err(invalid(
                "enable_virtio_mem",
                "true",
                "confidential guests cannot hot-plug memory",
            ));
        }
        if self.sev_snp_guest && is_s390_machine(&self.machine_type) {
            return Err(invalid(
                "sev_snp_guest",
                "true",
                "SEV-SNP is an AMD x86 feature; s390-ccw-virtio runs IBM SE guests",
            ));
        }
        Ok(())
    }

    /// Checks the host paths this section's features need: those set must exist (`path`,
    /// `kernel`, `initrd`, `image`, `firmware`, `firmware_volume`, `pflashes`, `ctlpath`,
    /// `jailer_path`, `entropy_source`, `file_mem_backend`), `virtio_fs_daemon` must exist
    /// when the shared filesystem is virtio-fs, `vhost_user_store_path` when vhost-user block
    /// devices are on, and QEMU must be found when `path` is empty. Returns every problem.
    pub fn check_host_paths(&self, kind: HypervisorType) -> Vec<HostPathProblem> {
        let mut problems = Vec::new();
        let mut must_exist = |key: &'static str, value: &str, what: &'static str| {
            if !value.is_empty() && !Path::new(value).exists() {
                problems.push(HostPathProblem {
                    key,
                    error: Error::MissingFile {
                        what,
                        path: PathBuf::from(value),
                        hint: format!("`{key}` names it; fix the path or clear the key"),
                    },
                });
            }
        };
        if kind == HypervisorType::Remote {
            must_exist(
                "remote_hypervisor_socket",
                &self.remote_hypervisor_socket,
                "remote hypervisor socket",
            );
            return problems;
        }
        must_exist("path", &self.path, "hypervisor binary");
        must_exist("ctlpath", &self.ctlpath, "hypervisor control binary");
        must_exist("jailer_path", &self.jailer_path, "jailer");
        must_exist("kernel", &self.kernel, "guest kernel");
        must_exist("initrd", &self.initrd, "guest initrd");
        must_exist("image", &self.image, "guest image");
        must_exist("firmware", &self.firmware, "firmware");
        must_exist("firmware_volume", &self.firmware_volume, "firmware volume");
        for flash in &self.pflashes {
            must_exist("pflashes", flash, "flash image");
        }
        must_exist("entropy_source", &self.entropy_source, "entropy source");
        must_exist(
            "file_mem_backend",
            &self.file_mem_backend,
            "memory backend directory",
        );
        if self.enable_vhost_user_store {
            must_exist(
                "vhost_user_store_path",
                &self.vhost_user_store_path,
                "vhost-user store directory",
            );
        }
        if self.shared_fs.needs_daemon() {
            let daemon = self.virtio_fs_daemon_path();
            if self.virtio_fs_daemon.is_empty() && !daemon.is_file() {
                problems.push(HostPathProblem {
                    key: "virtio_fs_daemon",
                    error: Error::MissingFile {
                        what: "virtio-fs daemon",
                        path: daemon,
                        hint: format!(
                            "shared_fs = \"{}\" runs virtiofsd: `scripts/setup.sh` installs it there, or set virtio_fs_daemon",
                            self.shared_fs
                        ),
                    },
                });
            } else {
                must_exist(
                    "virtio_fs_daemon",
                    &self.virtio_fs_daemon,
                    "virtio-fs daemon",
                );
            }
        }
        if kind == HypervisorType::Qemu
            && self.path.is_empty()
            && crate::kvm::find_program(qemu_binary_name(), "", &[]).is_none()
        {
            problems.push(HostPathProblem {
                key: "path",
                error: Error::MissingProgram {
                    program: qemu_binary_name().into(),
                    searched: "PATH (`path` is empty)".into(),
                    install: "apt-get install qemu-system-x86, or set `path`".into(),
                },
            });
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(c: &HypervisorConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn tcg_tb_size_is_refused_above_what_qemu_takes() {
        use crate::config::{DEFAULT_TCG_TB_SIZE_MIB, MAX_TCG_TB_SIZE_MIB};
        for ok in [0, 1, DEFAULT_TCG_TB_SIZE_MIB, MAX_TCG_TB_SIZE_MIB] {
            HypervisorConfig {
                tcg_tb_size: ok,
                ..Default::default()
            }
            .validate()
            .unwrap_or_else(|e| panic!("tcg_tb_size = {ok}: {e}"));
        }
        let c = HypervisorConfig {
            tcg_tb_size: MAX_TCG_TB_SIZE_MIB + 1,
            ..Default::default()
        };
        let m = msg(&c);
        assert!(
            m.contains("tcg_tb_size") && m.contains("2049") && m.contains("1..=2048"),
            "{m}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let c = HypervisorConfig {
            default_vcpus: 0,
            ..Default::default()
        };
        assert!(msg(&c).contains("default_vcpus"));
        let c = HypervisorConfig {
            default_vcpus: 4,
            default_maxvcpus: 2,
            ..Default::default()
        };
        assert!(msg(&c).contains("default_maxvcpus"));
        let c = HypervisorConfig {
            default_memory: 32,
            ..Default::default()
        };
        assert!(msg(&c).contains("default_memory"));
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::RootPort,
            hot_plug_vfio: PciePort::SwitchPort,
            ..Default::default()
        };
        assert!(msg(&c).contains("cold_plug_vfio"));
        let c = HypervisorConfig {
            pcie_root_port: 2,
            pcie_switch_port: 2,
            ..Default::default()
        };
        assert!(msg(&c).contains("pcie_switch_port"));
        for (port, key) in [
            (PciePort::RootPort, "pcie_root_port"),
            (PciePort::SwitchPort, "pcie_switch_port"),
        ] {
            let c = HypervisorConfig {
                hot_plug_vfio: port,
                ..Default::default()
            };
            let m = msg(&c);
            assert!(m.contains("hot_plug_vfio") && m.contains(key), "{m}");
        }
        HypervisorConfig {
            hot_plug_vfio: PciePort::RootPort,
            pcie_root_port: 1,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let c = HypervisorConfig {
            block_device_logical_sector_size: 1000,
            ..Default::default()
        };
        assert!(msg(&c).contains("power of 2"));
    }

    #[test]
    fn confidential_rules() {
        let snp = HypervisorConfig {
            sev_snp_guest: true,
            ..Default::default()
        };
        assert!(msg(&snp).contains("confidential_guest"));
        let cc = HypervisorConfig {
            confidential_guest: true,
            sev_snp_guest: true,
            snp_guest_policy: 0x10000,
            ..Default::default()
        };
        assert!(msg(&cc).contains("bit 17"));
        let cc = HypervisorConfig {
            confidential_guest: true,
            sev_snp_guest: true,
            snp_id_block: "AAAA".into(),
            ..Default::default()
        };
        assert!(msg(&cc).contains("snp_id_auth"));
        let block = "A".repeat(128);
        let auth = "A".repeat(4096 / 3 * 4 + 4);
        let auth = format!("{}==", &auth[..auth.len() - 2]);
        assert_eq!(base64_len(&block), Some(96));
        assert_eq!(base64_len(&auth), Some(4096));
        let cc = HypervisorConfig {
            confidential_guest: true,
            sev_snp_guest: true,
            snp_id_block: block,
            snp_id_auth: auth,
            ..Default::default()
        };
        cc.validate().unwrap();
        let se = HypervisorConfig {
            confidential_guest: true,
            machine_type: "s390-ccw-virtio".into(),
            vm_rootfs_driver: VmRootfsDriver::VirtioBlkCcw,
            block_device_driver: BlockDeviceDriver::VirtioBlkCcw,
            ..Default::default()
        };
        se.validate_for(HypervisorType::Qemu).unwrap();
        // Upstream's SE file: cold-plug (vfio-ap on the command line) says root-port.
        let se_cold = HypervisorConfig {
            cold_plug_vfio: PciePort::RootPort,
            ..se.clone()
        };
        se_cold.validate_for(HypervisorType::Qemu).unwrap();
        let se_switch = HypervisorConfig {
            cold_plug_vfio: PciePort::SwitchPort,
            ..se.clone()
        };
        assert!(msg(&se_switch).contains("no PCIe ports"));
        let se_hot = HypervisorConfig {
            hot_plug_vfio: PciePort::RootPort,
            ..se.clone()
        };
        assert!(msg(&se_hot).contains("hot_plug_vfio"));
        let mmio = HypervisorConfig {
            confidential_guest: true,
            vm_rootfs_driver: VmRootfsDriver::VirtioBlkMmio,
            ..Default::default()
        };
        assert!(msg(&mmio).contains("not hardened"));
    }

    #[test]
    fn pcie_root_port_is_refused_above_the_vmms_limit_whatever_hot_plug_vfio() {
        for (kind, max) in [(HypervisorType::Dragonball, 15), (HypervisorType::Qemu, 16)] {
            assert_eq!(kind.max_pcie_root_ports(), Some(max));
            for hot in [PciePort::NoPort, PciePort::RootPort] {
                // Disks hot-plugged onto the spare ports (virtio-blk-pci), or VFIO functions.
                let with = |n| HypervisorConfig {
                    pcie_root_port: n,
                    hot_plug_vfio: hot,
                    block_device_driver: BlockDeviceDriver::VirtioBlkPci,
                    ..Default::default()
                };
                with(max)
                    .validate_for(kind)
                    .unwrap_or_else(|e| panic!("{kind}/{hot}/{max}: {e}"));
                let e = with(max + 1).validate_for(kind).unwrap_err().to_string();
                assert!(
                    e.contains("pcie_root_port")
                        && e.contains(&(max + 1).to_string())
                        && e.contains(&format!("set pcie_root_port to at most {max}")),
                    "{kind}/{hot}: {e}"
                );
            }
        }
        // No limit known for the other VMMs: not this check's to refuse.
        let many = HypervisorConfig {
            pcie_root_port: 100,
            ..Default::default()
        };
        many.check_root_ports(HypervisorType::CloudHypervisor)
            .unwrap();
    }

    #[test]
    fn pcie_switch_port_is_refused_above_qemus_limit() {
        for hot in [PciePort::NoPort, PciePort::SwitchPort] {
            let with = |n| HypervisorConfig {
                pcie_switch_port: n,
                hot_plug_vfio: hot,
                ..Default::default()
            };
            with(16)
                .validate_for(HypervisorType::Qemu)
                .unwrap_or_else(|e| panic!("{hot}/16: {e}"));
            let e = with(17)
                .validate_for(HypervisorType::Qemu)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("pcie_switch_port")
                    && e.contains("17")
                    && e.contains("set pcie_switch_port to at most 16"),
                "{hot}: {e}"
            );
        }
        assert_eq!(HypervisorType::Dragonball.max_pcie_switch_ports(), None);
    }

    /// The built-in VMM's limit is what kata-vmm's PCI bus takes: that many spare root ports
    /// are built, one more is refused when the VM starts.
    #[cfg(feature = "builtin")]
    #[test]
    fn the_builtin_vmms_root_port_limit_is_kata_vmms_bus() {
        let max = HypervisorType::Dragonball.max_pcie_root_ports().unwrap();
        let max = u8::try_from(max).unwrap();
        let ram = kata_vmm::memory::GuestRam::new("root-ports", 64).unwrap();
        assert!(kata_vmm::devices::vfio::build_bus(&[], max, ram.memory())
            .unwrap()
            .is_some());
        match kata_vmm::devices::vfio::build_bus(&[], max + 1, ram.memory()) {
            Ok(_) => panic!("{} spare root ports were built", max + 1),
            Err(e) => assert!(e.to_string().contains("pcie_root_port"), "{e}"),
        }
    }

    #[test]
    fn per_vmm_rules() {
        let c = HypervisorConfig {
            jailer_path: "/usr/bin/jailer".into(),
            ..Default::default()
        };
        let e = c
            .validate_for(HypervisorType::Qemu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("jailer_path"), "{e}");
        let c = HypervisorConfig {
            shared_fs: SharedFs::Virtio9p,
            ..Default::default()
        };
        let e = c
            .validate_for(HypervisorType::CloudHypervisor)
            .unwrap_err()
            .to_string();
        assert!(e.contains("virtio-9p"), "{e}");
        let c = HypervisorConfig {
            machine_type: "pc-q35-7.2".into(),
            ..Default::default()
        };
        c.validate_for(HypervisorType::Qemu).unwrap();
        let c = HypervisorConfig {
            machine_type: "q36".into(),
            ..Default::default()
        };
        let e = c
            .validate_for(HypervisorType::Qemu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("machine_type") && e.contains("q35"), "{e}");
    }

    #[test]
    fn seccomp_sandbox_takes_only_qemus_sub_options() {
        let sandbox = |v: &str| {
            HypervisorConfig {
                seccomp_sandbox: v.into(),
                ..Default::default()
            }
            .qemu_sandbox()
        };
        assert_eq!(
            sandbox("").unwrap().as_deref(),
            Some(super::super::DEFAULT_SECCOMP_SANDBOX),
            "empty means kata-rs' default: on"
        );
        assert_eq!(
            sandbox(" on, obsolete=deny ,elevateprivileges=children")
                .unwrap()
                .as_deref(),
            Some("on,obsolete=deny,elevateprivileges=children")
        );
        assert_eq!(sandbox("off").unwrap(), None);
        assert_eq!(sandbox("enable=on").unwrap().as_deref(), Some("enable=on"));
        for (value, needle) in [
            ("obsolete=deny", "starts with `obsolete=deny`"),
            ("on,spawn=maybe", "spawn takes allow, deny"),
            ("on,network=deny", "`network` is not a sub-option"),
            ("on,spawn", "not key=value"),
            ("on,spawn=deny,spawn=allow", "given twice"),
            ("off,spawn=deny", "`off` takes no sub-options"),
            ("on,,spawn=deny", "not key=value"),
        ] {
            let e = sandbox(value).unwrap_err().to_string();
            assert!(
                e.contains("seccomp_sandbox") && e.contains(needle),
                "{value}: {e}"
            );
        }
        // Only QEMU reads the key.
        let c = HypervisorConfig {
            seccomp_sandbox: "on,bogus=1".into(),
            ..Default::default()
        };
        assert!(c.validate_for(HypervisorType::Qemu).is_err());
        c.validate_for(HypervisorType::Remote).unwrap();
    }

    #[test]
    fn host_paths_are_checked_only_for_features_in_use() {
        let c = HypervisorConfig {
            path: "/nonexistent/qemu".into(),
            shared_fs: SharedFs::Virtio9p,
            virtio_fs_daemon: "/nonexistent/virtiofsd".into(),
            ..Default::default()
        };
        let problems = c.check_host_paths(HypervisorType::Qemu);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "path");
        assert!(problems[0].error.to_string().contains("/nonexistent/qemu"));
        let c = HypervisorConfig {
            shared_fs: SharedFs::VirtioFs,
            virtio_fs_daemon: "/nonexistent/virtiofsd".into(),
            path: "/bin/sh".into(),
            ..Default::default()
        };
        let problems = c.check_host_paths(HypervisorType::Qemu);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "virtio_fs_daemon");
    }
}
