//! Memory hot-plug for the built-in VMM: with `enable_virtio_mem = true` the VM gets a
//! virtio-mem device over a region of `default_maxmemory - default_memory` MiB
//! ([`hotplug_mib`]); [`resize_memory`] sets the size the guest is asked to plug and waits,
//! bounded by [`PLUG_WAIT`], for its `virtio_mem` driver to plug (or unplug) it.
//!
//! Memory goes both ways: a smaller size asks the guest to unplug, and the answer is the size
//! it reached (it keeps blocks it cannot offline, e.g. holding kernel allocations). So the
//! backend says [`Capabilities::memory_shrink`](crate::Capabilities::memory_shrink) with the
//! device, and kata-sandbox gives memory back when a container leaves.
//!
//! vCPUs: the VMM describes its CPUs with an MP table, without ACPI, so nothing can tell the
//! guest of a new one. Instead a VM has [`max_vcpus`] vCPUs from the start, `default_vcpus` of
//! them booted (`maxcpus=` on the kernel's command line) and the others **parked**: present in
//! the MP table, each thread blocked outside `KVM_RUN` (no host CPU used) until a resize grants
//! it (`kata_vmm::vm::Vm::grant_vcpus`) and the guest onlines it (`echo 1 >
//! /sys/devices/system/cpu/cpuN/online`: INIT/SIPI to that vCPU).
//! [`resize_vcpus`] grows by granting up to `default_maxvcpus` of them; the agent's
//! `OnlineCPUMem`, which kata-sandbox sends after the resize, brings them up.
//!
//! It shrinks the other way round, never below `default_vcpus`: kata-sandbox first has the
//! guest take the CPUs offline through the agent (kata-rs's `kata_rs.GuestService/OfflineCPUs`
//! extension: [`Capabilities::cpu_offline_by_agent`](crate::Capabilities::cpu_offline_by_agent)),
//! then [`resize_vcpus`] to fewer revokes the grant (`kata_vmm::vm::Vm::revoke_vcpus`): each
//! vCPU above it is kicked out of `KVM_RUN` and parked again. The host enforces that whatever
//! the guest does: a guest that onlines a parked vCPU by itself gets a CPU that fails to boot
//! (its INIT/SIPI stays pending until a grant), and the next grow grants it again. Where the
//! agent does not serve the extension (Kata's agent) kata-sandbox does not shrink: the guest
//! keeps the vCPUs it was granted, logged. The host's bound on the granted vCPUs' time is the
//! sandbox's cgroup, which the vCPU threads are in.

use std::time::Duration;

use kata_vmm::devices::virtio::mem::{MemHandle, BLOCK_SIZE};
use kata_vmm::vstate::mptable::MAX_VCPUS as MPTABLE_MAX_VCPUS;

use crate::config::HypervisorConfig;
use crate::error::{Error, Result};

/// How long a resize waits for the guest to plug (or unplug) what was asked.
pub const PLUG_WAIT: Duration = Duration::from_secs(60);
/// A shrink ends once the guest has given nothing back for this long (Linux's `virtio_mem`
/// retries a failed unplug only after about 50 s).
pub const UNPLUG_STALL: Duration = Duration::from_secs(5);

const MIB: u64 = 1 << 20;

/// MiB the VM can grow by: `default_maxmemory` (0: the host's memory) minus `default_memory`
/// with `enable_virtio_mem`, else 0 (no virtio-mem device).
pub fn hotplug_mib(config: &HypervisorConfig, host_memory_mib: u64) -> u64 {
    if !config.enable_virtio_mem {
        return 0;
    }
    let max = match config.default_maxmemory {
        0 => host_memory_mib,
        max => u64::from(max),
    };
    max.saturating_sub(u64::from(config.default_memory))
}

/// The host's memory in MiB (`MemTotal`), 4 GiB if it cannot be read.
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4096, |kb| kb / 1024)
}

/// The bytes to ask the guest to plug for a VM of `mib` MiB: what exceeds `default_memory`,
/// rounded up to whole blocks; beyond the region refused naming `default_maxmemory`.
pub fn plug_target(config: &HypervisorConfig, region_size: u64, mib: u32) -> Result<u64> {
    let boot = u64::from(config.default_memory);
    let extra = u64::from(mib).saturating_sub(boot) * MIB;
    let bytes = extra.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    let max_mib = boot + hotplug_limit_mib(config, region_size);
    if bytes > region_size || boot + bytes / MIB > max_mib {
        return Err(Error::ResizeBeyond {
            what: "memory",
            requested: format!("{mib} MiB"),
            key: "default_maxmemory",
            limit: format!("{max_mib} MiB"),
            fix: "raise default_maxmemory (0: the host's memory), or lower the container's \
                  memory limit"
                .into(),
        });
    }
    Ok(bytes)
}

/// The most MiB that may be plugged: the configured difference (the region is that rounded up
/// to whole 128 MiB memory blocks, which is not the user's to use).
fn hotplug_limit_mib(config: &HypervisorConfig, region_size: u64) -> u64 {
    match config.default_maxmemory {
        0 => region_size / MIB,
        max => u64::from(max)
            .saturating_sub(u64::from(config.default_memory))
            .min(region_size / MIB),
    }
}

/// Sets the VM's memory to `mib` MiB through its virtio-mem device: asks the guest to plug (or
/// unplug) the difference to `default_memory` and waits for it. Growing that the guest has not
/// finished within [`PLUG_WAIT`] is an error naming the device and what was plugged; shrinking
/// returns what the guest gave back once it gives no more for [`UNPLUG_STALL`] (it may keep
/// memory it cannot offline). Returns the VM's
/// memory in MiB now.
pub async fn resize_memory(
    handle: Option<MemHandle>,
    config: &HypervisorConfig,
    mib: u32,
    wait: Duration,
) -> Result<u32> {
    let boot = config.default_memory;
    let Some(handle) = handle else {
        if mib <= boot {
            return Ok(boot);
        }
        return Err(Error::Unsupported {
            backend: "dragonball",
            what: format!(
                "growing the VM's memory to {mib} MiB: the VM has no virtio-mem device (set \
                 enable_virtio_mem = true and default_maxmemory above default_memory = {boot})"
            ),
        });
    };
    let target = plug_target(config, handle.region_size(), mib)?;
    let before = handle.plugged_size();
    handle
        .set_requested_size(target)
        .map_err(|e| Error::InvalidDevice {
            kind: "virtio-mem",
            id: "memory hot-plug".into(),
            reason: e.to_string(),
        })?;
    let grow = target > before;
    let h = handle.clone();
    let plugged = tokio::task::spawn_blocking(move || {
        if grow {
            h.wait_plugged(wait, |p| p >= target)
        } else {
            h.wait_settled(wait, UNPLUG_STALL, |p| p <= target)
        }
    })
    .await
    .map_err(|e| Error::Timeout {
        what: format!("the virtio-mem wait task ({e})"),
        after: wait,
    })?;
    crate::virtio_mem::Outcome {
        boot_mib: boot,
        requested: target,
        before,
        reached: plugged,
        wait,
    }
    .judge("built-in VMM")
}

/// The most vCPUs a built-in VM has (the processors its MP table lists).
pub const MAX_VCPUS: u32 = MPTABLE_MAX_VCPUS as u32;

/// The vCPUs a built-in VM of `config` has in all, booted and parked, on a host of `host_cpus`
/// CPUs (Kata's rule): `default_maxvcpus`, where 0 or more than the host's CPUs means the
/// host's CPUs, at most [`MAX_VCPUS`] (KVM allows more: `KVM_CAP_MAX_VCPUS` is checked when the
/// VM starts), never fewer than `default_vcpus`.
pub fn max_vcpus(config: &HypervisorConfig, host_cpus: u32) -> u32 {
    let host = host_cpus.max(1);
    let max = match config.default_maxvcpus {
        0 => host,
        m => m.min(host),
    };
    max.min(MAX_VCPUS).max(config.default_vcpus)
}

/// Refuses a `default_maxvcpus` below `default_vcpus` (0 is the host's CPUs), naming the key.
pub fn check_max_vcpus(config: &HypervisorConfig) -> Result<()> {
    let (boot, max) = (config.default_vcpus, config.default_maxvcpus);
    if max != 0 && max < boot {
        return Err(Error::InvalidConfig {
            key: "default_maxvcpus",
            value: max.to_string(),
            reason: format!(
                "fewer than default_vcpus = {boot}: set default_maxvcpus to at least \
                 default_vcpus (0: the host's CPUs, at most {MAX_VCPUS})"
            ),
        });
    }
    Ok(())
}

/// The vCPUs granted to a running VM: the booted ones, and the parked ones a resize gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuGrant {
    /// `default_vcpus`.
    pub boot: u32,
    /// [`max_vcpus`]: the vCPUs the VM was created with.
    pub max: u32,
    /// The vCPUs the guest may have online now (the answer of the last resize).
    pub granted: u32,
}

impl VcpuGrant {
    /// A VM just booted: `boot` of `max` granted.
    pub fn new(boot: u32, max: u32) -> Self {
        VcpuGrant {
            boot,
            max,
            granted: boot,
        }
    }
}

/// Sets a running VM's vCPUs to `vcpus` (never fewer than `default_vcpus`), returning how
/// many it has now: the grant the backend then gives the VMM. Growing (up to
/// `default_maxvcpus`: beyond it an error naming the key) grants parked vCPUs, which exist
/// since the VM started: the guest onlines them when the agent's `OnlineCPUMem` asks it to.
/// Shrinking takes the grant back: the caller has had the guest take those CPUs offline first
/// (the agent's `OfflineCPUs`), and the VMM parks their vCPUs.
pub fn resize_vcpus(grant: &mut VcpuGrant, vcpus: u32) -> Result<u32> {
    if vcpus > grant.max {
        return Err(Error::ResizeBeyond {
            what: "vCPUs",
            requested: vcpus.to_string(),
            key: "default_maxvcpus",
            limit: grant.max.to_string(),
            fix: format!(
                "raise default_maxvcpus (the built-in VMM creates that many vCPUs at boot, \
                 parked; 0 means the host's CPUs, at most {MAX_VCPUS}), or lower the \
                 container's CPU limit"
            ),
        });
    }
    let target = vcpus.max(grant.boot);
    if target < grant.granted {
        tracing::info!(
            asked = vcpus,
            from = grant.granted,
            to = target,
            "built-in VMM: vCPUs taken back (the guest took them offline); their threads park"
        );
    }
    grant.granted = target;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(virtio_mem: bool, max: u32) -> HypervisorConfig {
        HypervisorConfig {
            enable_virtio_mem: virtio_mem,
            default_memory: 512,
            default_maxmemory: max,
            ..HypervisorConfig::defaults_for(crate::HypervisorType::Dragonball)
        }
    }

    #[test]
    fn memory_is_given_back_only_with_a_virtio_mem_device() {
        let caps = super::super::capabilities(&config(true, 2048));
        assert!(caps.memory_hotplug && caps.memory_shrink);
        let caps = super::super::capabilities(&config(false, 2048));
        assert!(!caps.memory_hotplug && !caps.memory_shrink, "no device");
        let caps = super::super::capabilities(&config(true, 512));
        assert!(!caps.memory_shrink, "no room: no device");
    }

    fn vcpus(boot: u32, max: u32) -> HypervisorConfig {
        HypervisorConfig {
            default_vcpus: boot,
            default_maxvcpus: max,
            ..HypervisorConfig::defaults_for(crate::HypervisorType::Dragonball)
        }
    }

    #[test]
    fn max_vcpus_is_clamped_like_katas_and_to_the_mp_table() {
        assert_eq!(max_vcpus(&vcpus(1, 2), 4), 2);
        assert_eq!(max_vcpus(&vcpus(1, 0), 4), 4, "0: the host's CPUs");
        assert_eq!(
            max_vcpus(&vcpus(1, 8), 4),
            4,
            "more than the host's: the host's"
        );
        assert_eq!(max_vcpus(&vcpus(1, 0), 64), MAX_VCPUS, "the MP table's 32");
        assert_eq!(max_vcpus(&vcpus(1, 40), 64), MAX_VCPUS);
        assert_eq!(max_vcpus(&vcpus(3, 0), 2), 3, "never below default_vcpus");
        assert_eq!(max_vcpus(&vcpus(1, 1), 4), 1, "no parked vCPU");
        check_max_vcpus(&vcpus(2, 0)).unwrap();
        check_max_vcpus(&vcpus(2, 2)).unwrap();
        let e = check_max_vcpus(&vcpus(2, 1)).unwrap_err().to_string();
        assert!(
            e.contains("default_maxvcpus") && e.contains("default_vcpus = 2"),
            "{e}"
        );
    }

    #[test]
    fn vcpus_grow_up_to_the_max_and_shrink_to_the_boot_vcpus() {
        let mut g = VcpuGrant::new(1, 3);
        assert_eq!(resize_vcpus(&mut g, 2).unwrap(), 2);
        assert_eq!(resize_vcpus(&mut g, 3).unwrap(), 3);
        // Fewer: the grant is taken back (the VMM parks the vCPUs above it).
        assert_eq!(resize_vcpus(&mut g, 2).unwrap(), 2);
        assert_eq!(g.granted, 2);
        let e = resize_vcpus(&mut g, 4).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ResizeBeyond {
                    key: "default_maxvcpus",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("at 3"), "{e}");
        assert_eq!(g.granted, 2, "a refused resize changes nothing");
        assert_eq!(resize_vcpus(&mut g, 1).unwrap(), 1);
        // Never below the boot vCPUs.
        let mut g = VcpuGrant::new(2, 3);
        assert_eq!(resize_vcpus(&mut g, 3).unwrap(), 3);
        assert_eq!(resize_vcpus(&mut g, 0).unwrap(), 2);
        assert_eq!(resize_vcpus(&mut g, 1).unwrap(), 2);
        assert_eq!(g.granted, 2);
    }

    #[test]
    fn the_guest_is_asked_to_offline_cpus_where_vcpus_are_parked() {
        let caps = super::super::capabilities(&vcpus(1, 2));
        assert!(caps.cpu_hotplug && caps.cpu_offline_by_agent || crate::config::host_cpus() < 2);
        let caps = super::super::capabilities(&vcpus(1, 1));
        assert!(
            !caps.cpu_hotplug && !caps.cpu_offline_by_agent,
            "nothing parked"
        );
    }

    #[test]
    fn a_shrink_target_is_whole_blocks_above_boot_memory() {
        let c = config(true, 2048);
        let region = 1536 << 20;
        assert_eq!(plug_target(&c, region, 512).unwrap(), 0, "back to boot");
        assert_eq!(plug_target(&c, region, 300).unwrap(), 0, "never below boot");
        let t = plug_target(&c, region, 512 + 256).unwrap();
        assert_eq!(t, 256 << 20);
        assert_eq!(t % BLOCK_SIZE, 0);
    }
}
