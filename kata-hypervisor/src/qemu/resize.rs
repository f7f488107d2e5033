//! vCPU and memory hot-plug for the QEMU backend
//! ([`Hypervisor::resize_vcpus`](crate::Hypervisor::resize_vcpus),
//! [`Hypervisor::resize_memory`](crate::Hypervisor::resize_memory)).
//!
//! vCPUs: QEMU starts with `-smp <default_vcpus>,maxcpus=<default_maxvcpus>`, one vCPU per
//! socket, so every slot above the boot vCPUs can be filled and emptied on its own.
//! `query-hotpluggable-cpus` lists the slots; growing `device_add`s the free ones in topology
//! order (the slot's driver and its `socket-id`/`core-id`/`thread-id` as QEMU reports them),
//! shrinking `device_del`s the vCPUs this module plugged, newest first, each awaited until the
//! guest has ejected it (`DEVICE_DELETED`). The boot vCPUs are never removed. The guest sees
//! new vCPUs offline; its agent onlines them (`OnlineCPUMem`).
//!
//! Memory: `-m <default_memory>M,slots=<memory_slots>,maxmem=...` leaves room for DIMMs. Growing
//! adds one `pc-dimm` per call, its size the shortfall rounded up to the guest's 128 MiB memory
//! block, backed like boot memory by a `memory-backend-memfd` with `share=on`: every vhost-user
//! device (the vsock backend, virtio-fs) maps guest memory, so a DIMM they could not map would
//! break them. The guest kernel onlines hot-added memory itself
//! (`CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE`).
//!
//! **DIMMs are never taken back.** A smaller size than the current one is answered with the
//! current size: taking a DIMM back needs the guest to migrate every page off it first, which
//! Linux refuses for kernel allocations and which Kata does not do with DIMMs either. A
//! container removed leaves the VM's memory as it was; the sandbox's next growth is measured
//! against it (`Capabilities::memory_shrink` is false).
//!
//! With `enable_virtio_mem = true` memory goes through a virtio-mem device instead, both ways
//! ([`super::virtio_mem`]): no DIMM is plugged, a smaller size asks the guest to unplug and is
//! answered with the size it reached, and the backend says `memory_shrink`.
//!
//! What was plugged is kept in [`ResizeState`], saved with the VM's state so a restored
//! sandbox knows its size; each call first reconciles it with what QEMU reports, so a plug or
//! unplug that completed after an error, or under a previous owner, is counted.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map};

use super::qmp::{HotpluggableCpu, QmpClient};
use crate::config::HypervisorConfig;
use crate::error::{Error, Result};

/// The guest's memory block (x86-64 Linux, below 64 GiB of memory): DIMMs are sized in
/// multiples of it so the guest can online all of each.
pub const MEMORY_BLOCK_MIB: u32 = 128;

/// How long an unplug waits for the guest to eject the vCPU (TCG guests are slow to answer
/// the ACPI eject request).
pub const UNPLUG_WAIT: Duration = Duration::from_secs(30);

/// The qdev ids this module gives hot-plugged vCPUs start with this.
const CPU_ID_PREFIX: &str = "kata-vcpu";
/// The qdev ids of hot-plugged DIMMs start with this; their memory backends are `mem-<id>`.
const DIMM_ID_PREFIX: &str = "kata-dimm";

/// What was hot-plugged into the VM, kept in the saved QEMU state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeState {
    /// `maxmem` as the VM was started with, in MiB (0: unknown, an older state; the
    /// configuration's is used).
    #[serde(default)]
    pub max_memory_mib: u64,
    /// The qdev ids of the vCPUs plugged above the boot ones, in the order they were plugged.
    #[serde(default)]
    pub cpus: Vec<String>,
    /// The DIMMs plugged, in order.
    #[serde(default)]
    pub dimms: Vec<Dimm>,
    /// How many vCPUs were unplugged in the VM's life (see [`MemoryLimits::tcg_unplug_bug`]).
    #[serde(default)]
    pub cpus_unplugged: u32,
}

/// One hot-plugged DIMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimm {
    /// The `pc-dimm`'s qdev id; its memory backend is `mem-<id>`.
    pub id: String,
    /// Its size in MiB.
    pub mib: u32,
}

impl ResizeState {
    /// The state of a VM just started with `maxmem = max_memory_mib`.
    pub fn booted(max_memory_mib: u64) -> Self {
        ResizeState {
            max_memory_mib,
            ..Default::default()
        }
    }

    /// MiB of memory hot-plugged so far.
    pub fn plugged_mib(&self) -> u64 {
        self.dimms.iter().map(|d| u64::from(d.mib)).sum()
    }
}

/// `maxmem` in MiB as the command line sets it (`default_maxmemory`, 0 meaning the host's
/// memory and never above it, plus `memory_offset`, and always above `default_memory`).
pub fn max_memory_mib(config: &HypervisorConfig, host_memory_mib: u64) -> u64 {
    let ceiling = match config.default_maxmemory {
        0 => host_memory_mib,
        max => u64::from(max).min(host_memory_mib),
    };
    (ceiling + config.memory_offset).max(u64::from(config.default_memory) + 1)
}

/// The bounds of vCPU hot-plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuLimits {
    /// vCPUs at boot (`default_vcpus`): never unplugged.
    pub boot: u32,
    /// `maxcpus` (`default_maxvcpus`, resolved).
    pub max: u32,
    /// QEMU aborts when a vCPU is hot-plugged after one was unplugged, under TCG before QEMU
    /// 8.2 (the same stale address space as [`MemoryLimits::tcg_unplug_bug`]; seen here: a
    /// container raising its quota after another's vCPUs were unplugged killed the VM with
    /// SIGABRT). Then no vCPU is hot-plugged once one was unplugged.
    pub tcg_unplug_bug: bool,
}

impl VcpuLimits {
    /// The limits the configuration starts a VM with.
    pub fn for_config(config: &HypervisorConfig) -> Self {
        VcpuLimits {
            boot: config.default_vcpus.max(1),
            max: config.max_vcpus(),
            tcg_unplug_bug: false,
        }
    }
}

/// The bounds of memory hot-plug and how DIMMs are backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Memory at boot in MiB (`default_memory`).
    pub boot_mib: u32,
    /// `maxmem` in MiB.
    pub max_mib: u64,
    /// DIMM slots (`memory_slots`).
    pub slots: u32,
    /// Back DIMMs with huge pages (`enable_hugepages`).
    pub hugepages: bool,
    /// Pre-allocate DIMMs (`enable_mem_prealloc`).
    pub prealloc: bool,
    /// QEMU crashes if memory is hot-plugged after a vCPU was unplugged: under TCG before
    /// QEMU 8.2, an unplugged vCPU's address space stays registered for memory map changes
    /// and the next one frees it twice (QEMU 8.2 destroys a vCPU's address spaces on
    /// unplug). KVM is not affected. Then memory is not hot-plugged once a vCPU was
    /// unplugged ([`tcg_unplug_bug`]).
    pub tcg_unplug_bug: bool,
}

/// Whether QEMU `version` (`major.minor.micro`) under TCG has the bug
/// [`MemoryLimits::tcg_unplug_bug`] describes.
pub fn tcg_unplug_bug(tcg: bool, version: &str) -> bool {
    let mut v = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    tcg && (major, minor) < (8, 2)
}

impl MemoryLimits {
    /// The limits of a VM started from `config` with `maxmem = max_mib`.
    pub fn new(config: &HypervisorConfig, max_mib: u64) -> Self {
        MemoryLimits {
            boot_mib: config.default_memory,
            max_mib,
            slots: config.memory_slots,
            hugepages: config.enable_hugepages,
            prealloc: config.enable_mem_prealloc,
            tcg_unplug_bug: false,
        }
    }
}

/// Sets the number of vCPUs to `target` (never below the boot vCPUs); returns how many the VM
/// has now. `state.cpus` says what is plugged on every exit path; on an error while growing,
/// the vCPUs this call added are unplugged again (best effort).
pub async fn resize_vcpus(
    qmp: &QmpClient,
    state: &mut ResizeState,
    limits: VcpuLimits,
    target: u32,
) -> Result<u32> {
    if target > limits.max {
        return Err(Error::ResizeBeyond {
            what: "vCPUs",
            requested: target.to_string(),
            key: "default_maxvcpus",
            limit: limits.max.to_string(),
            fix: "raise default_maxvcpus (it sets QEMU's -smp maxcpus)".into(),
        });
    }
    let target = target.max(limits.boot);
    let slots = qmp.query_hotpluggable_cpus().await?;
    reconcile_cpus(state, &slots);
    let plugged = slots.iter().filter(|s| s.qom_path.is_some()).count() as u32;
    let now = if target > plugged {
        if limits.tcg_unplug_bug && state.cpus_unplugged > 0 {
            return Err(Error::Unsupported {
                backend: "qemu",
                what: format!(
                    "hot-plugging a vCPU after one was unplugged with this QEMU under TCG (QEMU \
                     before 8.2 keeps the unplugged vCPU's address space and aborts); the VM \
                     keeps {plugged} vCPUs (use KVM or QEMU 8.2 or later)"
                ),
            });
        }
        let free = free_slots(&slots, (target - plugged) as usize);
        if free.len() < (target - plugged) as usize {
            return Err(Error::ResizeBeyond {
                what: "vCPUs",
                requested: target.to_string(),
                key: "default_maxvcpus",
                limit: plugged.saturating_add(free.len() as u32).to_string(),
                fix: "QEMU has no free vCPU slot left; raise default_maxvcpus".into(),
            });
        }
        let mut added = Vec::new();
        for slot in free {
            let id = cpu_id(slot);
            if let Err(e) = qmp.device_add(&slot.driver, &id, slot.props.clone()).await {
                rollback_cpus(qmp, state, &added).await;
                return Err(e);
            }
            state.cpus.push(id.clone());
            added.push(id);
        }
        tracing::info!(from = plugged, to = target, added = ?added, "vCPUs hot-plugged");
        plugged + added.len() as u32
    } else if target < plugged {
        let mut removed = Vec::new();
        while (plugged - removed.len() as u32) > target {
            let Some(id) = state.cpus.last().cloned() else {
                break;
            };
            unplug_cpu(qmp, &id, UNPLUG_WAIT).await?;
            state.cpus.pop();
            state.cpus_unplugged += 1;
            removed.push(id);
        }
        tracing::info!(from = plugged, to = target, removed = ?removed, "vCPUs hot-unplugged");
        plugged - removed.len() as u32
    } else {
        plugged
    };
    Ok(now)
}

/// The first `n` free slots in topology order.
fn free_slots(slots: &[HotpluggableCpu], n: usize) -> Vec<&HotpluggableCpu> {
    let mut free: Vec<&HotpluggableCpu> = slots.iter().filter(|s| s.qom_path.is_none()).collect();
    free.sort_by_key(|s| s.position());
    free.truncate(n);
    free
}

/// The qdev id of the vCPU in `slot`.
fn cpu_id(slot: &HotpluggableCpu) -> String {
    let (socket, die, core, thread) = slot.position();
    format!("{CPU_ID_PREFIX}-{socket}-{die}-{core}-{thread}")
}

/// Keeps in `state.cpus` exactly our vCPUs that QEMU reports plugged (in their plug order),
/// adding ours it reports that the state missed.
fn reconcile_cpus(state: &mut ResizeState, slots: &[HotpluggableCpu]) {
    let plugged: Vec<&str> = slots
        .iter()
        .filter_map(HotpluggableCpu::qdev_id)
        .filter(|id| id.starts_with(CPU_ID_PREFIX))
        .collect();
    state.cpus.retain(|id| plugged.contains(&id.as_str()));
    let mut missed: Vec<&HotpluggableCpu> = slots
        .iter()
        .filter(|s| {
            s.qdev_id().is_some_and(|id| {
                id.starts_with(CPU_ID_PREFIX) && !state.cpus.iter().any(|c| c == id)
            })
        })
        .collect();
    missed.sort_by_key(|s| s.position());
    state.cpus.extend(
        missed
            .iter()
            .filter_map(|s| s.qdev_id())
            .map(str::to_string),
    );
}

/// `device_del` of our vCPU `id`, then waits (at most `wait`) until QEMU no longer lists it
/// plugged. The guest ejects it (ACPI) after offlining it; QEMU 7.2 then sends
/// `DEVICE_DELETED` only for the vCPU's `lapic` child, without the vCPU's id, so the slot
/// is read back instead, on every event and every 100 ms.
async fn unplug_cpu(qmp: &QmpClient, id: &str, wait: Duration) -> Result<()> {
    let mut events = qmp.events();
    qmp.execute("device_del", Some(json!({ "id": id }))).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let plugged = qmp
            .query_hotpluggable_cpus()
            .await?
            .iter()
            .any(|s| s.qdev_id() == Some(id));
        if !plugged {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("the guest to eject vCPU {id} (it may have refused to offline it)"),
                after: wait,
            });
        }
        let tick = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
        let _ = tokio::time::timeout_at(tick, events.recv()).await;
    }
}

/// Unplugs the vCPUs a failed grow added; what cannot be unplugged stays in `state`.
async fn rollback_cpus(qmp: &QmpClient, state: &mut ResizeState, added: &[String]) {
    for id in added.iter().rev() {
        match unplug_cpu(qmp, id, UNPLUG_WAIT).await {
            Ok(()) => {
                state.cpus.retain(|c| c != id);
                state.cpus_unplugged += 1;
            }
            Err(e) => {
                tracing::warn!(vcpu = %id, error = %e, "cannot unplug a vCPU of a failed resize; it stays plugged")
            }
        }
    }
}

/// Grows guest memory to at least `target_mib` with one DIMM; a smaller or equal target
/// changes nothing (memory is never shrunk). Returns the VM's memory in MiB now.
pub async fn resize_memory(
    qmp: &QmpClient,
    state: &mut ResizeState,
    limits: &MemoryLimits,
    target_mib: u32,
) -> Result<u32> {
    reconcile_dimms(qmp, state).await?;
    let current = u64::from(limits.boot_mib) + state.plugged_mib();
    let Some(plan) = plan_dimm(limits, state, current, u64::from(target_mib))? else {
        tracing::debug!(
            current_mib = current,
            target_mib,
            "memory is not shrunk: the VM keeps its memory"
        );
        return Ok(current as u32);
    };
    let backend = format!("mem-{}", plan.id);
    let mut props = Map::new();
    props.insert("size".into(), json!(u64::from(plan.mib) << 20));
    props.insert("share".into(), json!(true));
    if limits.hugepages {
        props.insert("hugetlb".into(), json!(true));
    }
    if limits.prealloc {
        props.insert("prealloc".into(), json!(true));
    }
    qmp.object_add("memory-backend-memfd", &backend, props)
        .await?;
    let mut dimm = Map::new();
    dimm.insert("memdev".into(), json!(backend));
    if let Err(e) = qmp.device_add("pc-dimm", &plan.id, dimm).await {
        if let Err(de) = qmp.object_del(&backend).await {
            tracing::warn!(backend = %backend, error = %de, "cannot remove the memory backend of a DIMM QEMU refused");
        }
        return Err(e);
    }
    let now = current + u64::from(plan.mib);
    tracing::info!(dimm = %plan.id, dimm_mib = plan.mib, from_mib = current, to_mib = now, "memory hot-plugged");
    state.dimms.push(plan);
    Ok(now as u32)
}

/// The DIMM that grows `current` MiB to at least `target`: `None` if nothing is to grow, an
/// error naming the bounding key if it does not fit.
fn plan_dimm(
    limits: &MemoryLimits,
    state: &ResizeState,
    current: u64,
    target: u64,
) -> Result<Option<Dimm>> {
    if target <= current {
        return Ok(None);
    }
    if limits.tcg_unplug_bug && state.cpus_unplugged > 0 {
        return Err(Error::Unsupported {
            backend: "qemu",
            what: format!(
                "hot-plugging memory after a vCPU was unplugged with this QEMU under TCG (QEMU \
                 before 8.2 frees the unplugged vCPU's address space twice and crashes); the VM \
                 keeps {current} MiB (use KVM or QEMU 8.2 or later)"
            ),
        });
    }
    let block = u64::from(MEMORY_BLOCK_MIB);
    let add = (target - current).div_ceil(block) * block;
    if state.dimms.len() as u64 >= u64::from(limits.slots) {
        return Err(Error::ResizeBeyond {
            what: "memory",
            requested: format!("{target} MiB"),
            key: "memory_slots",
            limit: format!("{} DIMMs, all in use", limits.slots),
            fix: "raise memory_slots".into(),
        });
    }
    if current + add > limits.max_mib {
        return Err(Error::ResizeBeyond {
            what: "memory",
            requested: format!(
                "{} MiB ({target} MiB rounded up to whole {block} MiB blocks)",
                current + add
            ),
            key: "default_maxmemory",
            limit: format!("{} MiB", limits.max_mib),
            fix: "raise default_maxmemory (0: the host's memory), or lower the request".into(),
        });
    }
    let index = (0..)
        .find(|i| {
            let id = format!("{DIMM_ID_PREFIX}{i}");
            !state.dimms.iter().any(|d| d.id == id)
        })
        .unwrap_or(0);
    Ok(Some(Dimm {
        id: format!("{DIMM_ID_PREFIX}{index}"),
        mib: add as u32,
    }))
}

/// Replaces `state.dimms` by our DIMMs as QEMU reports them.
async fn reconcile_dimms(qmp: &QmpClient, state: &mut ResizeState) -> Result<()> {
    let devices = qmp.query_memory_devices().await?;
    let ours: Vec<Dimm> = devices
        .iter()
        .filter(|d| d.kind == "dimm" && d.id.starts_with(DIMM_ID_PREFIX))
        .map(|d| Dimm {
            id: d.id.clone(),
            mib: (d.size >> 20) as u32,
        })
        .collect();
    if ours != state.dimms {
        tracing::debug!(saved = ?state.dimms, qemu = ?ours, "DIMMs reconciled with QEMU");
        state.dimms = ours;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(socket: u64, plugged: Option<&str>) -> HotpluggableCpu {
        let mut props = Map::new();
        for (k, v) in [
            ("socket-id", socket),
            ("core-id", 0),
            ("thread-id", 0),
            ("node-id", 0),
        ] {
            props.insert(k.into(), json!(v));
        }
        HotpluggableCpu {
            driver: "max-x86_64-cpu".into(),
            props,
            qom_path: plugged.map(str::to_string),
        }
    }

    #[test]
    fn free_slots_go_in_topology_order_and_ids_name_the_slot() {
        // QEMU lists the slots highest first.
        let slots = [
            slot(3, None),
            slot(2, None),
            slot(1, None),
            slot(0, Some("/machine/unattached/device[0]")),
        ];
        let free = free_slots(&slots, 2);
        assert_eq!(
            free.iter().map(|s| s.position().0).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(cpu_id(free[0]), "kata-vcpu-1-0-0-0");
    }

    #[test]
    fn reconcile_keeps_our_plugged_vcpus_in_plug_order() {
        let slots = [
            slot(3, Some("/machine/peripheral/kata-vcpu-3-0-0-0")),
            slot(2, None),
            slot(1, Some("/machine/peripheral/kata-vcpu-1-0-0-0")),
            slot(0, Some("/machine/unattached/device[0]")),
        ];
        let mut st = ResizeState {
            cpus: vec!["kata-vcpu-2-0-0-0".into(), "kata-vcpu-1-0-0-0".into()],
            ..Default::default()
        };
        reconcile_cpus(&mut st, &slots);
        // cpu 2 was unplugged meanwhile; cpu 3 plugged without the state knowing.
        assert_eq!(st.cpus, ["kata-vcpu-1-0-0-0", "kata-vcpu-3-0-0-0"]);
    }

    fn limits() -> MemoryLimits {
        MemoryLimits {
            boot_mib: 256,
            max_mib: 1024,
            slots: 2,
            hugepages: false,
            prealloc: false,
            tcg_unplug_bug: false,
        }
    }

    #[test]
    fn a_dimm_rounds_the_shortfall_up_to_whole_blocks() {
        let st = ResizeState::default();
        assert_eq!(
            plan_dimm(&limits(), &st, 256, 256).unwrap(),
            None,
            "nothing to grow"
        );
        assert_eq!(
            plan_dimm(&limits(), &st, 256, 100).unwrap(),
            None,
            "never shrunk"
        );
        let d = plan_dimm(&limits(), &st, 256, 256 + 64).unwrap().unwrap();
        assert_eq!((d.id.as_str(), d.mib), ("kata-dimm0", 128));
        let d = plan_dimm(&limits(), &st, 256, 256 + 129).unwrap().unwrap();
        assert_eq!(d.mib, 256);
    }

    #[test]
    fn a_dimm_beyond_maxmem_or_the_slots_names_the_key() {
        let st = ResizeState::default();
        let e = plan_dimm(&limits(), &st, 256, 2048)
            .unwrap_err()
            .to_string();
        assert!(e.contains("default_maxmemory bounds it at 1024 MiB"), "{e}");
        let full = ResizeState {
            dimms: vec![
                Dimm {
                    id: "kata-dimm0".into(),
                    mib: 128,
                },
                Dimm {
                    id: "kata-dimm1".into(),
                    mib: 128,
                },
            ],
            ..Default::default()
        };
        let e = plan_dimm(&limits(), &full, 512, 640)
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory_slots bounds it at 2 DIMMs"), "{e}");
    }

    #[test]
    fn memory_is_not_hot_plugged_after_a_vcpu_unplug_where_qemu_would_crash() {
        let st = ResizeState {
            cpus_unplugged: 1,
            ..Default::default()
        };
        let buggy = MemoryLimits {
            tcg_unplug_bug: true,
            ..limits()
        };
        let e = plan_dimm(&buggy, &st, 256, 384).unwrap_err().to_string();
        assert!(
            e.contains("after a vCPU was unplugged") && e.contains("keeps 256 MiB"),
            "{e}"
        );
        assert_eq!(
            plan_dimm(&buggy, &st, 256, 200).unwrap(),
            None,
            "nothing to grow: no error"
        );
        assert!(plan_dimm(&buggy, &ResizeState::default(), 256, 384)
            .unwrap()
            .is_some());
        assert!(
            plan_dimm(&limits(), &st, 256, 384).unwrap().is_some(),
            "KVM"
        );
    }

    #[test]
    fn the_tcg_unplug_bug_is_qemu_before_8_2_under_tcg() {
        assert!(tcg_unplug_bug(true, "7.2.22"));
        assert!(tcg_unplug_bug(true, "8.1.0"));
        assert!(!tcg_unplug_bug(true, "8.2.0"));
        assert!(!tcg_unplug_bug(true, "10.0.2"));
        assert!(!tcg_unplug_bug(false, "7.2.22"), "KVM is not affected");
    }

    #[test]
    fn the_next_dimm_takes_the_first_free_id() {
        let st = ResizeState {
            dimms: vec![Dimm {
                id: "kata-dimm1".into(),
                mib: 128,
            }],
            ..Default::default()
        };
        let d = plan_dimm(&limits(), &st, 384, 400).unwrap().unwrap();
        assert_eq!(d.id, "kata-dimm0");
    }

    #[test]
    fn maxmem_matches_the_command_line() {
        let c = HypervisorConfig {
            default_memory: 512,
            default_maxmemory: 1024,
            memory_offset: 64,
            ..Default::default()
        };
        assert_eq!(max_memory_mib(&c, 4096), 1088);
        assert_eq!(max_memory_mib(&c, 512), 576, "the host bounds it");
        assert_eq!(
            max_memory_mib(&c, 256),
            513,
            "above boot memory on any host"
        );
        let c = HypervisorConfig {
            default_maxmemory: 0,
            ..c
        };
        assert_eq!(max_memory_mib(&c, 4096), 4160);
    }
}
