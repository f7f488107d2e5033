//! Memory hot-plug and unplug through virtio-mem for the QEMU backend
//! (`enable_virtio_mem = true`).
//!
//! The VM starts with a `virtio-mem-pci` device ([`DEVICE_ID`]) over a region of its own: a
//! `memory-backend-memfd` with `share=on` and `reserve=off` (every vhost-user device, the vsock backend and
//! virtiofsd, maps guest memory, so the region must be shareable like boot memory) of
//! `maxmem - default_memory` MiB rounded down to the guest's 128 MiB memory blocks
//! ([`region_mib`]). Nothing is plugged at boot (`requested-size=0`). [`resize`] sets the
//! device's `requested-size` (`qom-set`) to what exceeds `default_memory` and polls its `size`
//! (`qom-get`), which the guest's `virtio_mem` driver moves block by block:
//!
//! - growing waits until `size` reaches the request ([`PLUG_WAIT`]), else it is an error
//!   naming what was plugged;
//! - shrinking waits until `size` reaches the request or stops moving for [`UNPLUG_STALL`] (the
//!   guest keeps blocks it cannot offline: kernel allocations in them), and answers with the
//!   size reached. That is why the backend says `Capabilities::memory_shrink` with the device.
//!
//! Unlike DIMMs, plugging and unplugging never changes the VM's memory map (the whole region is
//! mapped at start), so QEMU 7.2's TCG crash after a vCPU unplug
//! ([`super::resize::MemoryLimits::tcg_unplug_bug`]) does not apply. The device needs a PCI
//! machine with memory devices (`q35`, `pc`; not `microvm`) and a VM that is not a template's
//! clone; the settings refuse the rest naming the keys ([`refusal`]).

use std::time::Duration;

use serde_json::{json, Value};

use super::qmp::QmpClient;
use crate::config::HypervisorConfig;
use crate::error::{Error, Result};

/// The qdev id of the virtio-mem device.
pub const DEVICE_ID: &str = "vmem0";
/// The id of the memory backend of its region.
pub const BACKEND_ID: &str = "vmem0-mem";
/// The device's QOM path.
const QOM_PATH: &str = "/machine/peripheral/vmem0";
/// The guest's memory block: the region is a whole number of them so the guest can add all.
const MEMORY_BLOCK_MIB: u64 = super::resize::MEMORY_BLOCK_MIB as u64;
/// The device's block (QEMU's default on x86-64: the transparent huge page size).
pub const BLOCK_BYTES: u64 = 2 << 20;
/// How long a growth waits for the guest to plug what was asked.
pub const PLUG_WAIT: Duration = Duration::from_secs(60);
/// A shrink ends once the guest has given nothing back for this long (Linux's `virtio_mem`
/// retries a failed unplug only much later).
pub const UNPLUG_STALL: Duration = Duration::from_secs(5);
/// How often `size` is read while waiting.
const POLL: Duration = Duration::from_millis(100);

const MIB: u64 = 1 << 20;

/// The region's size in MiB for a VM of `maxmem = max_mib`: what is above `default_memory`,
/// rounded down to whole memory blocks (0: no room).
pub fn region_mib(config: &HypervisorConfig, max_mib: u64) -> u64 {
    let room = max_mib.saturating_sub(u64::from(config.default_memory));
    room / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB
}

/// Why `enable_virtio_mem = true` cannot be used with `config`, naming the keys (`None`: it
/// can). Checked with the other settings (`settings::setting_use`).
pub fn refusal(config: &HypervisorConfig) -> Option<&'static str> {
    if !pci_machine(&config.machine_type) {
        return Some(
            "virtio-mem-pci needs a PCI machine with memory devices: set machine_type = \
             \"q35\" (or \"pc\"), or enable_virtio_mem = false",
        );
    }
    if config.factory.enable_template {
        return Some(
            "a template's clone maps only the template's boot memory, not a virtio-mem region: \
             set factory.enable_template = false, or enable_virtio_mem = false",
        );
    }
    None
}

/// Whether QEMU's `machine_type` has a PCI bus and memory devices (`q35`, `pc` and their
/// versioned names).
fn pci_machine(machine_type: &str) -> bool {
    let m = machine_type.split(',').next().unwrap_or("").trim();
    m == "q35" || m == "pc" || m.starts_with("pc-q35-") || m.starts_with("pc-i440fx-")
}

/// The command line's arguments for the device over a region of `region_mib` MiB (none for
/// 0): its memfd backend (`share=on`, huge pages as configured, `reserve=off`: no swap or huge
/// pages are reserved for the whole region, only plugged blocks are ever touched) and the
/// device, nothing plugged. `enable_mem_prealloc` preallocates each block as it is plugged (the device's
/// `prealloc`), never the whole region.
pub fn args(config: &HypervisorConfig, region_mib: u64) -> Vec<String> {
    if !config.enable_virtio_mem || region_mib == 0 {
        return Vec::new();
    }
    let hugetlb = if config.enable_hugepages {
        ",hugetlb=on"
    } else {
        ""
    };
    let prealloc = if config.enable_mem_prealloc {
        ",prealloc=on"
    } else {
        ""
    };
    vec![
        "-object".into(),
        format!(
            "memory-backend-memfd,id={BACKEND_ID},size={region_mib}M,share=on,reserve=off{hugetlb}"
        ),
        "-device".into(),
        format!("virtio-mem-pci,id={DEVICE_ID},memdev={BACKEND_ID},requested-size=0{prealloc}"),
    ]
}

/// The bytes to ask the guest to plug for a VM of `mib` MiB: what exceeds `default_memory`,
/// rounded up to whole device blocks; beyond the region refused naming `default_maxmemory`.
pub fn requested_bytes(config: &HypervisorConfig, region_mib: u64, mib: u32) -> Result<u64> {
    let boot = u64::from(config.default_memory);
    let extra = u64::from(mib).saturating_sub(boot) * MIB;
    let bytes = extra.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    if bytes > region_mib * MIB {
        return Err(Error::ResizeBeyond {
            what: "memory",
            requested: format!("{mib} MiB"),
            key: "default_maxmemory",
            limit: format!(
                "{} MiB (default_memory + a virtio-mem region of {region_mib} MiB)",
                boot + region_mib
            ),
            fix: "raise default_maxmemory (0: the host's memory), or lower the container's \
                  memory limit"
                .into(),
        });
    }
    Ok(bytes)
}

/// How a wait on the device's `size` ends, given the sizes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Keep reading.
    Go,
    /// The request is met.
    Reached,
    /// The guest stopped giving memory back (a shrink).
    Stalled,
    /// Out of time.
    TimedOut,
}

/// Where a wait for `requested` bytes stands with `size` read now, `since_change` after the
/// size last moved and `elapsed` in all.
fn wait_state(
    grow: bool,
    requested: u64,
    size: u64,
    since_change: Duration,
    elapsed: Duration,
    wait: Duration,
) -> Wait {
    if (grow && size >= requested) || (!grow && size <= requested) {
        Wait::Reached
    } else if !grow && since_change >= UNPLUG_STALL {
        Wait::Stalled
    } else if elapsed >= wait {
        Wait::TimedOut
    } else {
        Wait::Go
    }
}

/// The device's plugged size in bytes.
pub async fn plugged_bytes(qmp: &QmpClient) -> Result<u64> {
    let v = qmp
        .execute(
            "qom-get",
            Some(json!({ "path": QOM_PATH, "property": "size" })),
        )
        .await?;
    number(&v, "size")
}

fn number(v: &Value, what: &str) -> Result<u64> {
    v.as_u64().ok_or_else(|| Error::InvalidDevice {
        kind: "virtio-mem",
        id: DEVICE_ID.into(),
        reason: format!("QEMU answered {v} for its {what}, not a number of bytes"),
    })
}

/// Sets the VM's memory to `mib` MiB through the virtio-mem device of a region of
/// `region_mib` MiB, waiting at most `wait`; returns the VM's memory in MiB now
/// (`default_memory` + what the guest has plugged). A growth the guest does not finish is an
/// error naming what it plugged; a shrink answers with what the guest kept.
pub async fn resize(
    qmp: &QmpClient,
    config: &HypervisorConfig,
    region_mib: u64,
    mib: u32,
    wait: Duration,
) -> Result<u32> {
    let boot = u64::from(config.default_memory);
    let requested = requested_bytes(config, region_mib, mib)?;
    let before = plugged_bytes(qmp).await?;
    let now_mib = |bytes: u64| u32::try_from(boot + bytes / MIB).unwrap_or(u32::MAX);
    if before == requested {
        return Ok(now_mib(before));
    }
    qmp.execute(
        "qom-set",
        Some(json!({ "path": QOM_PATH, "property": "requested-size", "value": requested })),
    )
    .await?;
    let grow = requested > before;
    let start = tokio::time::Instant::now();
    let (mut size, mut changed) = (before, start);
    loop {
        let read = plugged_bytes(qmp).await?;
        if read != size {
            size = read;
            changed = tokio::time::Instant::now();
        }
        match wait_state(
            grow,
            requested,
            size,
            changed.elapsed(),
            start.elapsed(),
            wait,
        ) {
            Wait::Go => tokio::time::sleep(POLL).await,
            _ => break,
        }
    }
    crate::virtio_mem::Outcome {
        boot_mib: config.default_memory,
        requested,
        before,
        reached: size,
        wait,
    }
    .judge("QEMU")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HypervisorConfig {
        HypervisorConfig {
            enable_virtio_mem: true,
            default_memory: 256,
            default_maxmemory: 1024,
            machine_type: "q35".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_region_is_the_room_above_boot_memory_in_whole_blocks() {
        assert_eq!(region_mib(&config(), 1024), 768);
        assert_eq!(region_mib(&config(), 1088), 768, "rounded down to 128 MiB");
        assert_eq!(region_mib(&config(), 300), 0, "no whole block of room");
        assert_eq!(region_mib(&config(), 100), 0);
    }

    #[test]
    fn the_device_is_a_shared_memfd_region_with_nothing_plugged() {
        assert_eq!(
            args(&config(), 768),
            [
                "-object",
                "memory-backend-memfd,id=vmem0-mem,size=768M,share=on,reserve=off",
                "-device",
                "virtio-mem-pci,id=vmem0,memdev=vmem0-mem,requested-size=0",
            ]
        );
        let c = HypervisorConfig {
            enable_hugepages: true,
            enable_mem_prealloc: true,
            ..config()
        };
        let a = args(&c, 768).join(" ");
        assert!(
            a.contains("size=768M,share=on,reserve=off,hugetlb=on "),
            "{a}"
        );
        assert!(
            a.ends_with("requested-size=0,prealloc=on"),
            "blocks preallocated as plugged, not the region: {a}"
        );
        let off = HypervisorConfig {
            enable_virtio_mem: false,
            ..config()
        };
        assert!(args(&off, 768).is_empty());
        assert!(args(&config(), 0).is_empty());
    }

    #[test]
    fn a_request_is_whole_blocks_above_boot_memory_within_the_region() {
        let c = config();
        assert_eq!(requested_bytes(&c, 768, 256).unwrap(), 0);
        assert_eq!(
            requested_bytes(&c, 768, 100).unwrap(),
            0,
            "never below boot"
        );
        assert_eq!(requested_bytes(&c, 768, 512).unwrap(), 256 << 20);
        assert_eq!(
            requested_bytes(&c, 768, 257).unwrap(),
            2 << 20,
            "rounded up"
        );
        assert_eq!(requested_bytes(&c, 768, 1024).unwrap(), 768 << 20);
        let e = requested_bytes(&c, 768, 1025).unwrap_err().to_string();
        assert!(
            e.contains("default_maxmemory") && e.contains("1024 MiB"),
            "{e}"
        );
    }

    #[test]
    fn a_growth_waits_for_the_request_and_a_shrink_until_the_guest_stops_giving() {
        let s = Duration::from_secs;
        let w = s(60);
        assert_eq!(wait_state(true, 100, 50, s(10), s(10), w), Wait::Go);
        assert_eq!(wait_state(true, 100, 100, s(0), s(1), w), Wait::Reached);
        assert_eq!(wait_state(true, 100, 50, s(60), s(60), w), Wait::TimedOut);
        assert_eq!(wait_state(false, 0, 50, s(1), s(2), w), Wait::Go);
        assert_eq!(wait_state(false, 0, 2, s(5), s(9), w), Wait::Stalled);
        assert_eq!(wait_state(false, 0, 0, s(0), s(3), w), Wait::Reached);
        assert_eq!(wait_state(false, 0, 50, s(1), s(61), w), Wait::TimedOut);
    }

    #[test]
    fn contradictions_are_refused_naming_the_keys() {
        assert_eq!(refusal(&config()), None);
        for ok in ["pc", "pc-q35-7.2", "pc-i440fx-7.2", "q35,accel=tcg"] {
            let c = HypervisorConfig {
                machine_type: ok.into(),
                ..config()
            };
            assert_eq!(refusal(&c), None, "{ok}");
        }
        let microvm = HypervisorConfig {
            machine_type: "microvm".into(),
            ..config()
        };
        assert!(refusal(&microvm).unwrap().contains("machine_type"));
        let mut template = config();
        template.factory.enable_template = true;
        assert!(refusal(&template)
            .unwrap()
            .contains("factory.enable_template"));
    }
}
