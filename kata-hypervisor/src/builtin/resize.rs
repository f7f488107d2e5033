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
//! vCPUs are not hot-plugged: the VMM describes its CPUs with an MP table, without ACPI, so the
//! guest has no way to be told of a new one ([`vcpus_refused`]).

use std::time::Duration;

use kata_vmm::devices::virtio::mem::{MemHandle, BLOCK_SIZE};

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

/// Why vCPUs are not hot-plugged into a built-in VM of `vcpus`.
pub fn vcpus_refused(vcpus: u32) -> Error {
    Error::Unsupported {
        backend: "dragonball",
        what: format!(
            "growing the VM to {vcpus} vCPUs (the built-in VMM has no ACPI, so no CPU \
             hot-plug: set default_vcpus to what the pod needs)"
        ),
    }
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
