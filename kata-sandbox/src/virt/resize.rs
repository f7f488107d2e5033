//! The VM's size follows its containers' limits.
//!
//! Each container's `linux.resources` makes a demand ([`Demand`]): vCPUs from its CFS quota
//! (`ceil(quota / period)`), or the CPUs of its cpuset when no container of the sandbox has a
//! quota, and MiB from its memory limit. The VM is to have
//! `default_vcpus + the demands' vCPUs` (and at least one above the highest CPU a cpuset
//! names, so no pinned CPU is ever taken away; at most `default_maxvcpus`) and
//! `default_memory + the demands' MiB` — the sizes runtime-rs's resource manager computes.
//!
//! Dynamic sizing (the default): before `CreateContainer` the VM grows by hot-plug (memory
//! first, then vCPUs), and the agent onlines what came (`OnlineCPUMem`, waiting until the vCPUs
//! are online, so the container's cgroup is made with them); removing a container (or an
//! update that lowers a limit) recomputes the target from the containers left and unplugs the
//! vCPUs the others no longer need (on a backend without ACPI eject,
//! [`Capabilities::cpu_offline_by_agent`]: the built-in VMM, the agent first takes the CPUs
//! offline — kata-rs's `OfflineCPUs` extension — and only the vCPUs of CPUs the guest took
//! offline are taken back; an agent without the extension, Kata's, leaves the guest its vCPUs,
//! logged), and gives memory back where the backend can
//! ([`Capabilities::memory_shrink`]: a virtio-mem device, in the built-in VMM or QEMU with
//! `enable_virtio_mem`). The backend answers with the size the guest reached: memory the guest
//! could not offline (kernel allocations in a block) stays, is logged and counted in
//! [`SizingState`], never an error for the container's removal. With DIMMs (QEMU without
//! virtio-mem) memory is never shrunk; the next container's growth is measured against the
//! memory the VM has.
//!
//! `static_sandbox_resource_mgmt = true`: the VM is sized before boot from the workload
//! ([`WorkloadSize`]: containerd's sandbox sizing annotations, else the first container's
//! spec) and nothing is hot-plugged; a backend without hot-plug (the test backend) is sized
//! the same way, never grown.
//!
//! Bad input is refused before anything is plugged: a memory limit the VM cannot take names
//! `linux.resources.memory.limit` and the key that bounds it, a cpuset outside the VM's vCPUs
//! names `linux.resources.cpu.cpus`. A grow that fails midway unplugs the vCPUs it added; what
//! stays plugged (memory) is in [`SizingState`], saved in `state.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use kata_agent_client::{Agent, OnlineCpuMem};
use kata_hypervisor::{Capabilities, Hypervisor, HypervisorConfig};
use oci_spec::runtime::{LinuxResources, Spec};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// containerd's annotation saying what a spec starts (`sandbox` or `container`).
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd's pod sizing annotations (the pod's summed limits), on the sandbox's spec.
const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// What one container's limits ask of the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Demand {
    /// `ceil(quota / period)` (0 without a quota).
    pub vcpus: u32,
    /// The guest CPUs of its cpuset (`linux.resources.cpu.cpus`).
    pub cpuset: BTreeSet<u32>,
    /// Its memory limit in MiB, rounded up (0 without one).
    pub memory_mib: u32,
}

impl Demand {
    /// The demand of `resources`; a cpuset that does not parse is refused naming the field.
    pub(crate) fn of(resources: Option<&LinuxResources>) -> Result<Demand> {
        let Some(r) = resources else {
            return Ok(Demand::default());
        };
        let mut d = Demand::default();
        if let Some(cpu) = r.cpu() {
            d.vcpus = vcpus_of_quota(cpu.quota(), cpu.period());
            if let Some(set) = cpu.cpus().as_deref().filter(|s| !s.trim().is_empty()) {
                d.cpuset = parse_cpuset(set).map_err(|reason| Error::InvalidArgument {
                    field: "linux.resources.cpu.cpus".into(),
                    reason: format!("{set:?}: {reason}"),
                })?;
            }
        }
        if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
            d.memory_mib = mib_of_bytes(limit);
        }
        Ok(d)
    }

    /// The demand after an update with `resources`: a section the update leaves out (no
    /// `cpu`, no memory limit) keeps what `before` asked, as the guest keeps those limits.
    pub(crate) fn updated(before: Option<&Demand>, resources: &LinuxResources) -> Result<Demand> {
        let mut d = Demand::of(Some(resources))?;
        if let Some(old) = before {
            if resources.cpu().is_none() {
                d.vcpus = old.vcpus;
                d.cpuset = old.cpuset.clone();
            }
            if resources
                .memory()
                .as_ref()
                .and_then(|m| m.limit())
                .is_none()
            {
                d.memory_mib = old.memory_mib;
            }
        }
        Ok(d)
    }
}

/// `ceil(quota / period)`, 0 unless both are positive.
fn vcpus_of_quota(quota: Option<i64>, period: Option<u64>) -> u32 {
    match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => {
            (q as u64).div_ceil(p).min(u64::from(u32::MAX)) as u32
        }
        _ => 0,
    }
}

/// Bytes to MiB, rounded up; 0 for no limit (negative: unlimited).
fn mib_of_bytes(bytes: i64) -> u32 {
    if bytes <= 0 {
        return 0;
    }
    (bytes as u64).div_ceil(1 << 20).min(u64::from(u32::MAX)) as u32
}

/// Parses a cpuset list (`0-2,4`).
fn parse_cpuset(s: &str) -> std::result::Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    for part in s.split(',').map(str::trim) {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("{t:?} is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("the range {part:?} runs backwards"));
                }
                if b - a > 4096 {
                    return Err(format!("the range {part:?} is larger than any VM"));
                }
                set.extend(a..=b);
            }
            None => {
                set.insert(num(part)?);
            }
        }
    }
    Ok(set)
}

/// What the sizing asks of the guest, through the agent, before it takes vCPUs back (a trait:
/// the sizing's logic is tested with a fake guest).
#[async_trait]
pub(crate) trait GuestCpus: Sync {
    /// kata-rs's `OfflineCPUs`: the guest's online CPUs once it took CPUs offline until
    /// `nb_cpus` are online; `None` where the agent does not serve it (Kata's agent).
    async fn offline_cpus(&self, nb_cpus: u32) -> kata_agent_client::Result<Option<BTreeSet<u32>>>;

    /// `OnlineCPUMem` for CPUs only, without waiting: the guest onlines its offline CPUs
    /// until `nb_cpus` are online (after a shrink the backend did not finish).
    async fn online_cpus(&self, nb_cpus: u32) -> kata_agent_client::Result<()>;
}

#[async_trait]
impl GuestCpus for Agent {
    async fn offline_cpus(&self, nb_cpus: u32) -> kata_agent_client::Result<Option<BTreeSet<u32>>> {
        Agent::offline_cpus(self, nb_cpus).await
    }

    async fn online_cpus(&self, nb_cpus: u32) -> kata_agent_client::Result<()> {
        self.online_cpu_mem(OnlineCpuMem::cpus(nb_cpus)).await
    }
}

/// The vCPUs a VM of `current` vCPUs keeps when its guest, asked to keep `target` CPUs online,
/// answered `online`: the target, or more where the guest kept a higher CPU online (never
/// park a vCPU the guest runs: the VMM takes vCPUs back from the top), at most `current` (the
/// answer is the guest's word).
fn vcpus_kept(current: u32, target: u32, online: &BTreeSet<u32>) -> u32 {
    let highest = online.iter().next_back().map_or(0, |c| c.saturating_add(1));
    target.max(highest).min(current)
}

/// The size the VM is to have for a set of demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    vcpus: u32,
    memory_mib: u32,
}

/// The bounds and base of the sizing, from the `[hypervisor.*]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Base {
    vcpus: u32,
    max_vcpus: u32,
    memory_mib: u32,
}

impl Base {
    fn of(hv: &HypervisorConfig) -> Base {
        Base {
            vcpus: hv.default_vcpus.max(1),
            max_vcpus: hv.max_vcpus(),
            memory_mib: hv.default_memory,
        }
    }

    /// `default_vcpus + vCPUs asked` (the quotas' sum; without any quota, the CPUs of the
    /// cpusets), at least one above the highest CPU a cpuset names (a shrink never takes
    /// offline a CPU a container is pinned to), capped at `default_maxvcpus`; and
    /// `default_memory + the limits`.
    fn target<'a>(&self, demands: impl IntoIterator<Item = &'a Demand>) -> Target {
        let mut quota = 0u32;
        let mut cpuset = BTreeSet::new();
        let mut memory = 0u32;
        for d in demands {
            quota = quota.saturating_add(d.vcpus);
            cpuset.extend(d.cpuset.iter().copied());
            memory = memory.saturating_add(d.memory_mib);
        }
        let asked = if quota == 0 {
            cpuset.len() as u32
        } else {
            quota
        };
        let pinned = cpuset.last().map_or(0, |c| c.saturating_add(1));
        Target {
            vcpus: self
                .vcpus
                .saturating_add(asked)
                .max(pinned)
                .min(self.max_vcpus.max(self.vcpus)),
            memory_mib: self.memory_mib.saturating_add(memory),
        }
    }
}

/// What `state.json` keeps of the sizing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SizingState {
    /// Each container's demand, by id.
    #[serde(default)]
    pub containers: BTreeMap<String, Demand>,
    /// The VM's vCPUs now (0: never resized, the boot size).
    #[serde(default)]
    pub vcpus: u32,
    /// The VM's memory now in MiB (0: never resized, the boot size).
    #[serde(default)]
    pub memory_mib: u32,
}

/// The sizing of one sandbox's VM.
#[derive(Debug)]
pub(crate) struct Sizing {
    base: Base,
    /// Hot-plug CPUs / memory (dynamic sizing on a backend that can).
    cpu_hotplug: bool,
    memory_hotplug: bool,
    /// Give memory back when the containers need less (a backend that can take it back).
    memory_shrink: bool,
    /// Have the guest take CPUs offline through the agent before taking vCPUs back
    /// ([`Capabilities::cpu_offline_by_agent`]).
    offline_by_agent: bool,
    /// Cpusets name the VM's vCPUs (not so without a VM: the test backend's agent runs on the
    /// host's CPUs).
    check_cpusets: bool,
    state: Mutex<SizingState>,
    /// The last shrink the guest did not finish: `(MiB asked, MiB reached)`. The guest's driver
    /// keeps working on the request by itself, so a later trim to no smaller target from the
    /// same size does not ask (and wait) again; a growth clears it.
    short_shrink: Mutex<Option<(u32, u32)>>,
    /// Serialises grows and shrinks (each spans several awaits).
    op: tokio::sync::Mutex<()>,
}

impl Sizing {
    /// The sizing of a VM started from `hv`, as `state` left it (default: just booted).
    pub(crate) fn new(
        hv: &HypervisorConfig,
        caps: &Capabilities,
        static_sizing: bool,
        state: SizingState,
    ) -> Sizing {
        let base = Base::of(hv);
        let mut state = state;
        if state.vcpus == 0 {
            state.vcpus = base.vcpus;
        }
        if state.memory_mib == 0 {
            state.memory_mib = base.memory_mib;
        }
        Sizing {
            base,
            cpu_hotplug: !static_sizing && caps.cpu_hotplug,
            memory_hotplug: !static_sizing && caps.memory_hotplug,
            memory_shrink: !static_sizing && caps.memory_hotplug && caps.memory_shrink,
            offline_by_agent: caps.cpu_offline_by_agent,
            check_cpusets: !caps.guest_on_host,
            state: Mutex::new(state),
            short_shrink: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
        }
    }

    /// What `state.json` keeps.
    pub(crate) fn state(&self) -> SizingState {
        self.state.lock().unwrap().clone()
    }

    /// Grows the VM for container `id` with `resources` before it is created: checks the
    /// demand, hot-plugs memory then vCPUs, and has the agent online them. On error the
    /// container is not counted and the vCPUs this call added are unplugged again.
    pub(crate) async fn grow(
        &self,
        id: &str,
        resources: Option<&LinuxResources>,
        vm: &dyn Hypervisor,
        agent: &Agent,
    ) -> Result<()> {
        self.grow_for(id, Demand::of(resources)?, vm, agent).await
    }

    /// [`grow`](Self::grow) for a demand already computed (an update's).
    pub(crate) async fn grow_for(
        &self,
        id: &str,
        demand: Demand,
        vm: &dyn Hypervisor,
        agent: &Agent,
    ) -> Result<()> {
        let _op = self.op.lock().await;
        let (current, target) = {
            let st = self.state.lock().unwrap();
            let others = st
                .containers
                .iter()
                .filter(|(c, _)| *c != id)
                .map(|(_, d)| d);
            (
                Target {
                    vcpus: st.vcpus,
                    memory_mib: st.memory_mib,
                },
                self.base.target(others.chain(std::iter::once(&demand))),
            )
        };
        let vcpus_after = if self.cpu_hotplug {
            target.vcpus.max(current.vcpus)
        } else {
            current.vcpus
        };
        let outside = demand.cpuset.iter().find(|&&c| c >= vcpus_after);
        if let Some(&cpu) = outside.filter(|_| self.check_cpusets) {
            return Err(Error::InvalidArgument {
                field: "linux.resources.cpu.cpus".into(),
                reason: format!(
                    "container {id} asks for CPU {cpu}, outside the VM's vCPUs 0-{} \
                     (default_vcpus = {}, default_maxvcpus = {}{}); name guest CPUs below {vcpus_after}",
                    vcpus_after - 1,
                    self.base.vcpus,
                    self.base.max_vcpus,
                    if self.cpu_hotplug { "" } else { ", no vCPU hot-plug" },
                ),
            });
        }
        let mut grown = current;
        // What the backend cannot do (`Unsupported`) is skipped with a warning: the container
        // still gets its limits in the guest, in a VM that did not grow for them.
        if self.memory_hotplug && target.memory_mib > current.memory_mib {
            match vm.resize_memory(target.memory_mib).await {
                Ok(mib) => {
                    *self.short_shrink.lock().unwrap() = None;
                    grown.memory_mib = mib;
                    self.state.lock().unwrap().memory_mib = mib;
                }
                Err(e @ kata_hypervisor::Error::Unsupported { .. }) => {
                    tracing::warn!(container_id = id, error = %e, "the VM's memory does not grow for the container")
                }
                Err(e) => return Err(memory_error(id, &demand, e)),
            }
        }
        if self.cpu_hotplug && target.vcpus > current.vcpus {
            match vm.resize_vcpus(target.vcpus).await {
                Ok(n) => {
                    grown.vcpus = n;
                    self.state.lock().unwrap().vcpus = n;
                }
                Err(e @ kata_hypervisor::Error::Unsupported { .. }) => {
                    tracing::warn!(container_id = id, error = %e, "the VM's vCPUs do not grow for the container")
                }
                Err(e) => return Err(e.into()),
            }
        }
        if grown != current {
            let online = if grown.memory_mib > current.memory_mib {
                OnlineCpuMem::cpus_and_memory(grown.vcpus)
            } else {
                OnlineCpuMem::cpus(grown.vcpus)
            };
            if let Err(e) = agent.online_cpu_mem(online.wait(true)).await {
                if grown.vcpus > current.vcpus {
                    self.set_vcpus(vm, agent, current.vcpus).await;
                }
                return Err(e.into());
            }
            tracing::info!(
                container_id = id,
                vcpus = grown.vcpus,
                memory_mib = grown.memory_mib,
                "the VM grew for the container"
            );
        }
        self.state
            .lock()
            .unwrap()
            .containers
            .insert(id.to_string(), demand);
        Ok(())
    }

    /// Forgets container `id` (removed, or failed to create), unplugs the vCPUs the others do
    /// not need and gives back the memory they do not need (see [`trim`](Self::trim)).
    pub(crate) async fn shrink(
        &self,
        id: &str,
        vm: &dyn Hypervisor,
        guest: &dyn GuestCpus,
    ) -> Result<()> {
        self.state.lock().unwrap().containers.remove(id);
        self.trim(id, vm, guest).await
    }

    /// What container `id` counts for now (`None`: nothing).
    pub(crate) fn demand_of(&self, id: &str) -> Option<Demand> {
        self.state.lock().unwrap().containers.get(id).cloned()
    }

    /// Container `id` counts for `demand` again (an update the agent refused), or for nothing.
    pub(crate) fn restore(&self, id: &str, demand: Option<Demand>) {
        let mut st = self.state.lock().unwrap();
        match demand {
            Some(d) => st.containers.insert(id.to_string(), d),
            None => st.containers.remove(id),
        };
    }

    /// Shrinks the VM to what the counted containers need (after a removal, or an update that
    /// lowered a limit; `id` names the cause in the log): gives memory back where the backend
    /// can ([`Capabilities::memory_shrink`]), then unplugs the vCPUs no longer needed (see
    /// [`take_vcpus_back`](Self::take_vcpus_back)). Memory the guest keeps, or a backend error
    /// while shrinking memory, is logged and counted, not returned; the error is a vCPU
    /// unplug's.
    pub(crate) async fn trim(
        &self,
        id: &str,
        vm: &dyn Hypervisor,
        guest: &dyn GuestCpus,
    ) -> Result<()> {
        let _op = self.op.lock().await;
        let (current, target) = {
            let st = self.state.lock().unwrap();
            (
                Target {
                    vcpus: st.vcpus,
                    memory_mib: st.memory_mib,
                },
                self.base.target(st.containers.values()),
            )
        };
        let asked_before = *self.short_shrink.lock().unwrap();
        let give_back = memory_to_give_back(self.memory_shrink, current.memory_mib, target)
            .filter(|&mib| !already_asked(asked_before, current.memory_mib, mib));
        if let Some(mib) = give_back {
            match vm.resize_memory(mib).await {
                Ok(now) => {
                    self.state.lock().unwrap().memory_mib = now;
                    *self.short_shrink.lock().unwrap() = (now > mib).then_some((mib, now));
                    if now > mib {
                        tracing::info!(
                            container_id = id,
                            from_mib = current.memory_mib,
                            to_mib = now,
                            target_mib = mib,
                            kept_mib = now - mib,
                            "memory given back: the guest kept what it could not offline"
                        );
                    } else {
                        tracing::info!(
                            container_id = id,
                            from_mib = current.memory_mib,
                            to_mib = now,
                            "memory given back: the containers need less"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    container_id = id,
                    memory_mib = current.memory_mib,
                    target_mib = mib,
                    error = %e,
                    "the VM's memory is not shrunk; it keeps its size"
                ),
            }
        }
        if self.cpu_hotplug && target.vcpus < current.vcpus {
            let now = self
                .take_vcpus_back(id, vm, guest, current.vcpus, target.vcpus)
                .await?;
            self.state.lock().unwrap().vcpus = now;
            if now < current.vcpus {
                tracing::info!(
                    container_id = id,
                    vcpus = now,
                    "vCPUs unplugged: the containers need fewer"
                );
            }
        }
        Ok(())
    }

    /// Shrinks a VM of `current` vCPUs to `target`; returns its vCPUs now. Where the backend
    /// has no way to ask the guest ([`Capabilities::cpu_offline_by_agent`]) the agent takes
    /// the CPUs offline first and the backend takes back only the vCPUs above the CPUs the
    /// guest keeps online ([`vcpus_kept`]); an agent that does not serve that (Kata's) leaves
    /// the guest all `current` vCPUs, logged, as does an agent's error (returned). Where the
    /// backend then fails to take them back, the VM keeps `current` vCPUs and the guest is
    /// asked (best effort, logged) to online `current` CPUs again before the error returns.
    async fn take_vcpus_back(
        &self,
        id: &str,
        vm: &dyn Hypervisor,
        guest: &dyn GuestCpus,
        current: u32,
        target: u32,
    ) -> Result<u32> {
        let mut to = target;
        let mut offlined = false;
        if self.offline_by_agent {
            match guest.offline_cpus(target).await {
                Ok(Some(online)) => {
                    offlined = true;
                    to = vcpus_kept(current, target, &online);
                    if to > target {
                        tracing::warn!(
                            container_id = id,
                            target_vcpus = target,
                            online = ?online,
                            "the guest kept CPUs online above the target: their vCPUs stay"
                        );
                    }
                }
                Ok(None) => {
                    tracing::info!(
                        container_id = id,
                        vcpus = current,
                        target_vcpus = target,
                        "the agent does not serve OfflineCPUs (kata-rs's extension; Kata's \
                         agent): the guest keeps its vCPUs"
                    );
                    return Ok(current);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if to >= current {
            return Ok(current);
        }
        match vm.resize_vcpus(to).await {
            Ok(now) => Ok(now),
            Err(e) => {
                if offlined {
                    // The VM keeps its `current` vCPUs: the guest is to run them again, or
                    // it would idle on fewer CPUs than it has (a grow onlines only on growth).
                    if let Err(online_error) = guest.online_cpus(current).await {
                        tracing::warn!(
                            container_id = id,
                            vcpus = current,
                            error = %online_error,
                            "the guest's CPUs taken offline for a failed vCPU shrink are not \
                             online again"
                        );
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Resizes the vCPUs back after a failed grow; what it cannot undo stays counted.
    async fn set_vcpus(&self, vm: &dyn Hypervisor, guest: &dyn GuestCpus, vcpus: u32) {
        let current = self.state.lock().unwrap().vcpus;
        match self.take_vcpus_back("", vm, guest, current, vcpus).await {
            Ok(now) => self.state.lock().unwrap().vcpus = now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot unplug the vCPUs of a failed grow; they stay")
            }
        }
    }
}

/// The memory in MiB to shrink a VM of `current_mib` to for `target`, if it is to shrink: only
/// where the backend can take memory back (`can_shrink`), and never below the target (which
/// is never below `default_memory`).
fn memory_to_give_back(can_shrink: bool, current_mib: u32, target: Target) -> Option<u32> {
    (can_shrink && target.memory_mib < current_mib).then_some(target.memory_mib)
}

/// Whether a shrink to `mib` from `current_mib` was already asked and left to the guest: the
/// last unfinished shrink asked for no more than `mib` and the VM is still where it stopped.
fn already_asked(short_shrink: Option<(u32, u32)>, current_mib: u32, mib: u32) -> bool {
    short_shrink.is_some_and(|(asked, reached)| asked <= mib && reached == current_mib)
}

/// The error for a memory limit the VM cannot take: names the spec field, then why (the
/// backend's error names the key that bounds it).
fn memory_error(id: &str, demand: &Demand, e: kata_hypervisor::Error) -> Error {
    match e {
        e @ kata_hypervisor::Error::ResizeBeyond { .. } => Error::InvalidArgument {
            field: "linux.resources.memory.limit".into(),
            reason: format!(
                "container {id} asks for {} MiB more memory than the VM can take: {e}",
                demand.memory_mib
            ),
        },
        other => other.into(),
    }
}

/// The size a workload asks of a VM sized before boot (`static_sandbox_resource_mgmt`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSize {
    /// vCPUs (`ceil(quota / period)`).
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
}

impl WorkloadSize {
    /// The workload of the spec that starts a sandbox: for a pod's sandbox (containerd's
    /// `io.kubernetes.cri.container-type = sandbox`), the pod's limits containerd passes in
    /// `io.kubernetes.cri.sandbox-cpu-quota`/`-cpu-period`/`-memory`; else the spec's own
    /// `linux.resources` (a single container, as `ctr run` starts).
    pub fn of_spec(spec: &Spec) -> WorkloadSize {
        let annotations = spec.annotations().clone().unwrap_or_default();
        if annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
            let get = |k: &str| {
                annotations
                    .get(k)
                    .and_then(|v| v.trim().parse::<i64>().ok())
            };
            return WorkloadSize {
                vcpus: vcpus_of_quota(
                    get(CRI_SANDBOX_CPU_QUOTA),
                    get(CRI_SANDBOX_CPU_PERIOD).and_then(|p| u64::try_from(p).ok()),
                ),
                memory_mib: get(CRI_SANDBOX_MEMORY).map(mib_of_bytes).unwrap_or(0),
            };
        }
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let r = resources;
        WorkloadSize {
            vcpus: r
                .and_then(|r| r.cpu().as_ref())
                .map(|c| vcpus_of_quota(c.quota(), c.period()))
                .unwrap_or(0),
            memory_mib: r
                .and_then(|r| r.memory().as_ref())
                .and_then(|m| m.limit())
                .map(mib_of_bytes)
                .unwrap_or(0),
        }
    }

    /// Sizes `hv` for the workload: `default_vcpus` grows by its vCPUs (at most
    /// `default_maxvcpus`), `default_memory` by its memory (added, not replaced, as Kata does:
    /// the guest's own use stays covered).
    pub fn apply(&self, hv: &mut HypervisorConfig) {
        let base = Base::of(hv);
        hv.default_vcpus = base
            .vcpus
            .saturating_add(self.vcpus)
            .min(base.max_vcpus.max(base.vcpus));
        hv.default_memory = hv.default_memory.saturating_add(self.memory_mib);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, SpecBuilder,
    };

    fn resources(quota: Option<i64>, cpus: Option<&str>, memory: Option<i64>) -> LinuxResources {
        let mut cpu = LinuxCpuBuilder::default().period(100_000u64);
        if let Some(q) = quota {
            cpu = cpu.quota(q);
        }
        if let Some(c) = cpus {
            cpu = cpu.cpus(c);
        }
        let mut r = LinuxResourcesBuilder::default().cpu(cpu.build().unwrap());
        if let Some(m) = memory {
            r = r.memory(LinuxMemoryBuilder::default().limit(m).build().unwrap());
        }
        r.build().unwrap()
    }

    fn base() -> Base {
        Base {
            vcpus: 1,
            max_vcpus: 4,
            memory_mib: 256,
        }
    }

    #[test]
    fn a_demand_rounds_quota_and_memory_up() {
        let d = Demand::of(Some(&resources(Some(150_000), None, Some(64 << 20)))).unwrap();
        assert_eq!((d.vcpus, d.memory_mib), (2, 64));
        let d = Demand::of(Some(&resources(
            Some(200_000),
            Some("0-1,3"),
            Some((64 << 20) + 1),
        )))
        .unwrap();
        assert_eq!((d.vcpus, d.memory_mib), (2, 65));
        assert_eq!(d.cpuset, BTreeSet::from([0, 1, 3]));
        let d = Demand::of(Some(&resources(Some(-1), None, Some(-1)))).unwrap();
        assert_eq!(d, Demand::default(), "unlimited asks nothing");
        assert_eq!(Demand::of(None).unwrap(), Demand::default());
    }

    #[test]
    fn a_cpuset_that_does_not_parse_names_the_field() {
        for bad in ["a", "3-1", "0-", "0-100000"] {
            let e = Demand::of(Some(&resources(None, Some(bad), None)))
                .unwrap_err()
                .to_string();
            assert!(e.contains("linux.resources.cpu.cpus"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_target_adds_quotas_and_limits_to_the_defaults_capped_at_maxvcpus() {
        let two = Demand {
            vcpus: 2,
            memory_mib: 64,
            ..Default::default()
        };
        assert_eq!(
            base().target([&two]),
            Target {
                vcpus: 3,
                memory_mib: 320
            }
        );
        assert_eq!(
            base().target([&two, &two]).vcpus,
            4,
            "capped at default_maxvcpus"
        );
        assert_eq!(base().target([&two, &two]).memory_mib, 384);
        assert_eq!(
            base().target([]),
            Target {
                vcpus: 1,
                memory_mib: 256
            }
        );
    }

    #[test]
    fn cpusets_count_only_without_any_quota() {
        let pinned = Demand {
            cpuset: BTreeSet::from([0, 1]),
            ..Default::default()
        };
        let pinned2 = Demand {
            cpuset: BTreeSet::from([1, 2]),
            ..Default::default()
        };
        assert_eq!(
            base().target([&pinned, &pinned2]).vcpus,
            4,
            "1 + |{{0,1,2}}|"
        );
        let quota = Demand {
            vcpus: 1,
            ..Default::default()
        };
        assert_eq!(
            base().target([&pinned, &quota]).vcpus,
            2,
            "the quota decides"
        );
    }

    #[test]
    fn a_workload_comes_from_the_pods_annotations_or_the_containers_spec() {
        let pod = SpecBuilder::default()
            .annotations(std::collections::HashMap::from([
                (CRI_CONTAINER_TYPE.to_string(), "sandbox".to_string()),
                (CRI_SANDBOX_CPU_QUOTA.to_string(), "220000".to_string()),
                (CRI_SANDBOX_CPU_PERIOD.to_string(), "100000".to_string()),
                (CRI_SANDBOX_MEMORY.to_string(), (512i64 << 20).to_string()),
            ]))
            .build()
            .unwrap();
        assert_eq!(
            WorkloadSize::of_spec(&pod),
            WorkloadSize {
                vcpus: 3,
                memory_mib: 512
            }
        );
        let single = SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .resources(resources(Some(100_000), None, Some(128 << 20)))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(
            WorkloadSize::of_spec(&single),
            WorkloadSize {
                vcpus: 1,
                memory_mib: 128
            }
        );
        let mut hv = HypervisorConfig {
            default_vcpus: 1,
            default_maxvcpus: 2,
            default_memory: 256,
            ..Default::default()
        };
        WorkloadSize::of_spec(&pod).apply(&mut hv);
        assert_eq!((hv.default_vcpus, hv.default_memory), (2, 768));
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out() {
        let before =
            Demand::of(Some(&resources(Some(200_000), Some("0-1"), Some(64 << 20)))).unwrap();
        let memory_only = resources(None, None, Some(128 << 20));
        let mut memory_only = memory_only;
        memory_only.set_cpu(None);
        let d = Demand::updated(Some(&before), &memory_only).unwrap();
        assert_eq!((d.vcpus, d.memory_mib), (2, 128));
        assert_eq!(d.cpuset, before.cpuset);
        let cpu_only = {
            let mut r = resources(Some(100_000), None, None);
            r.set_memory(None);
            r
        };
        let d = Demand::updated(Some(&before), &cpu_only).unwrap();
        assert_eq!((d.vcpus, d.memory_mib), (1, 64));
        assert!(
            d.cpuset.is_empty(),
            "a cpu section without cpus clears the cpuset"
        );
        let d = Demand::updated(None, &cpu_only).unwrap();
        assert_eq!((d.vcpus, d.memory_mib), (1, 0));
    }

    #[test]
    fn static_sizing_grows_the_boot_size_and_dynamic_sizing_leaves_it() {
        let toml = |on: bool| {
            format!(
                "[hypervisor.qemu]\ndefault_vcpus = 1\ndefault_maxvcpus = 4\ndefault_memory = 256\n\
                 [runtime]\nstatic_sandbox_resource_mgmt = {on}\n"
            )
        };
        let workload = WorkloadSize {
            vcpus: 2,
            memory_mib: 128,
        };
        let built = |on: bool| {
            let config = crate::config::KataConfig::parse(&toml(on)).unwrap();
            crate::SandboxBuilder::from_kata_config(config)
                .unwrap()
                .workload(workload)
                .finish()
                .unwrap()
        };
        let c = built(true);
        assert_eq!(
            (c.hypervisor.default_vcpus, c.hypervisor.default_memory),
            (3, 384)
        );
        let c = built(false);
        assert_eq!(
            (c.hypervisor.default_vcpus, c.hypervisor.default_memory),
            (1, 256)
        );
    }

    #[test]
    fn a_restored_sizing_keeps_the_saved_size_and_demands() {
        let hv = HypervisorConfig {
            default_vcpus: 1,
            default_maxvcpus: 4,
            default_memory: 256,
            ..Default::default()
        };
        let caps = Capabilities {
            cpu_hotplug: true,
            memory_hotplug: true,
            ..Default::default()
        };
        let fresh = Sizing::new(&hv, &caps, false, SizingState::default()).state();
        assert_eq!((fresh.vcpus, fresh.memory_mib), (1, 256), "just booted");
        let saved = SizingState {
            containers: BTreeMap::from([(
                "c1".to_string(),
                Demand {
                    vcpus: 2,
                    memory_mib: 128,
                    ..Default::default()
                },
            )]),
            vcpus: 3,
            memory_mib: 384,
        };
        let json = serde_json::to_value(&saved).unwrap();
        let back: SizingState = serde_json::from_value(json).unwrap();
        let restored = Sizing::new(&hv, &caps, false, back);
        assert_eq!(restored.state(), saved);
        // A state written before sizing existed reads as "never resized".
        let old: SizingState = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(old, SizingState::default());
    }

    #[test]
    fn memory_is_given_back_only_down_to_the_target_and_where_the_backend_can() {
        let target = base().target([]);
        assert_eq!(memory_to_give_back(true, 512, target), Some(256));
        assert_eq!(memory_to_give_back(false, 512, target), None, "DIMMs");
        assert_eq!(
            memory_to_give_back(true, 256, target),
            None,
            "nothing to give"
        );
        let one = Demand {
            memory_mib: 128,
            ..Default::default()
        };
        assert_eq!(
            memory_to_give_back(true, 640, base().target([&one])),
            Some(384),
            "default_memory + what the remaining containers ask"
        );
        assert_eq!(memory_to_give_back(true, 300, base().target([&one])), None);
    }

    /// A fake backend for the sizing logic: it records the sizes asked and answers as a guest
    /// that cannot give back memory below `floor_mib` (or fails every resize with `fail`).
    struct FakeVm {
        caps: Capabilities,
        floor_mib: u32,
        fail: bool,
        /// Fail every vCPU resize (`fail` fails memory's).
        fail_vcpus: bool,
        memory_asked: Mutex<Vec<u32>>,
        vcpus_asked: Mutex<Vec<u32>>,
    }

    impl FakeVm {
        fn new(memory_shrink: bool, floor_mib: u32) -> FakeVm {
            FakeVm {
                caps: Capabilities {
                    cpu_hotplug: true,
                    memory_hotplug: true,
                    memory_shrink,
                    ..Default::default()
                },
                floor_mib,
                fail: false,
                fail_vcpus: false,
                memory_asked: Mutex::new(Vec::new()),
                vcpus_asked: Mutex::new(Vec::new()),
            }
        }

        fn fake_error() -> kata_hypervisor::Error {
            kata_hypervisor::Error::Unsupported {
                backend: "fake",
                what: "resizing (the fake was told to fail)".into(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Hypervisor for FakeVm {
        fn kind(&self) -> kata_hypervisor::HypervisorType {
            kata_hypervisor::HypervisorType::Qemu
        }
        async fn prepare(
            &self,
            _: Vec<kata_hypervisor::DeviceConfig>,
        ) -> kata_hypervisor::Result<()> {
            Ok(())
        }
        async fn start(&self) -> kata_hypervisor::Result<()> {
            Ok(())
        }
        async fn wait_ready(&self, _: std::time::Duration) -> kata_hypervisor::Result<()> {
            Ok(())
        }
        async fn stop(&self) -> kata_hypervisor::Result<()> {
            Ok(())
        }
        fn stop_now(&self) {}
        async fn pause(&self) -> kata_hypervisor::Result<()> {
            Ok(())
        }
        async fn resume(&self) -> kata_hypervisor::Result<()> {
            Ok(())
        }
        async fn add_device(
            &self,
            _: kata_hypervisor::DeviceConfig,
        ) -> kata_hypervisor::Result<kata_hypervisor::GuestAddress> {
            Err(FakeVm::fake_error())
        }
        async fn remove_device(
            &self,
            _: &kata_hypervisor::DeviceConfig,
        ) -> kata_hypervisor::Result<()> {
            Err(FakeVm::fake_error())
        }
        async fn resize_vcpus(&self, vcpus: u32) -> kata_hypervisor::Result<u32> {
            self.vcpus_asked.lock().unwrap().push(vcpus);
            if self.fail_vcpus {
                return Err(kata_hypervisor::Error::Timeout {
                    what: "the fake's vCPU resize".into(),
                    after: std::time::Duration::from_secs(1),
                });
            }
            Ok(vcpus)
        }
        async fn resize_memory(&self, mib: u32) -> kata_hypervisor::Result<u32> {
            self.memory_asked.lock().unwrap().push(mib);
            if self.fail {
                return Err(FakeVm::fake_error());
            }
            Ok(mib.max(self.floor_mib))
        }
        fn agent_address(&self) -> kata_hypervisor::Result<kata_hypervisor::VsockAddress> {
            Err(FakeVm::fake_error())
        }
        fn pids(&self) -> Vec<u32> {
            Vec::new()
        }
        fn capabilities(&self) -> Capabilities {
            self.caps.clone()
        }
        fn state(&self) -> kata_hypervisor::VmState {
            kata_hypervisor::VmState::Running
        }
        fn save_state(&self) -> kata_hypervisor::HypervisorState {
            kata_hypervisor::HypervisorState {
                backend: kata_hypervisor::HypervisorType::Qemu,
                vm_dir: std::path::PathBuf::new(),
                agent_address: None,
                backend_state: serde_json::Value::Null,
            }
        }
        fn console_tail(&self, _: usize) -> Vec<String> {
            Vec::new()
        }
        async fn wait_exit(&self) -> String {
            std::future::pending().await
        }
    }

    /// A fake guest behind the agent: answers `OfflineCPUs` as a guest that keeps CPUs
    /// `0..keep_below` online at least (`None`: an agent without the extension, Kata's;
    /// `fail`: an agent error), and records the counts asked.
    struct FakeGuest {
        served: bool,
        keep_below: u32,
        fail: bool,
        asked: Mutex<Vec<u32>>,
        /// The counts `OnlineCPUMem` was sent with.
        onlined: Mutex<Vec<u32>>,
    }

    impl FakeGuest {
        const fn new(served: bool, keep_below: u32) -> FakeGuest {
            FakeGuest {
                served,
                keep_below,
                fail: false,
                asked: Mutex::new(Vec::new()),
                onlined: Mutex::new(Vec::new()),
            }
        }
    }

    /// For the backends that do not need the guest asked (never called there).
    static NO_GUEST: FakeGuest = FakeGuest::new(false, 0);

    #[async_trait]
    impl GuestCpus for FakeGuest {
        async fn offline_cpus(
            &self,
            nb_cpus: u32,
        ) -> kata_agent_client::Result<Option<BTreeSet<u32>>> {
            self.asked.lock().unwrap().push(nb_cpus);
            if self.fail {
                return Err(kata_agent_client::Error::Timeout {
                    method: "OfflineCPUs",
                    timeout: std::time::Duration::from_secs(1),
                });
            }
            Ok(self
                .served
                .then(|| (0..nb_cpus.max(self.keep_below)).collect()))
        }

        async fn online_cpus(&self, nb_cpus: u32) -> kata_agent_client::Result<()> {
            self.onlined.lock().unwrap().push(nb_cpus);
            Ok(())
        }
    }

    /// A sizing grown for two containers (`c1`: 2 vCPUs and 128 MiB, `c2`: 256 MiB): the VM at
    /// 3 vCPUs and 640 MiB.
    fn grown_for_two(vm: &FakeVm) -> Sizing {
        let hv = HypervisorConfig {
            default_vcpus: 1,
            default_maxvcpus: 4,
            default_memory: 256,
            ..Default::default()
        };
        let demand = |vcpus, memory_mib| Demand {
            vcpus,
            memory_mib,
            ..Default::default()
        };
        Sizing::new(
            &hv,
            &vm.capabilities(),
            false,
            SizingState {
                containers: BTreeMap::from([
                    ("c1".to_string(), demand(2, 128)),
                    ("c2".to_string(), demand(0, 256)),
                ]),
                vcpus: 3,
                memory_mib: 640,
            },
        )
    }

    #[tokio::test]
    async fn a_container_leaving_shrinks_memory_where_the_backend_can_take_it_back() {
        let vm = FakeVm::new(true, 0);
        let sizing = grown_for_two(&vm);
        sizing.shrink("c2", &vm, &NO_GUEST).await.unwrap();
        assert_eq!(*vm.memory_asked.lock().unwrap(), [384]);
        assert!(
            vm.vcpus_asked.lock().unwrap().is_empty(),
            "c1 keeps its vCPUs"
        );
        assert_eq!((sizing.state().vcpus, sizing.state().memory_mib), (3, 384));
        sizing.shrink("c1", &vm, &NO_GUEST).await.unwrap();
        assert_eq!(*vm.memory_asked.lock().unwrap(), [384, 256]);
        assert_eq!(*vm.vcpus_asked.lock().unwrap(), [1]);
        let st = sizing.state();
        assert_eq!((st.vcpus, st.memory_mib), (1, 256));
        assert!(st.containers.is_empty());
        // Nothing left to give back: the backend is not asked again.
        sizing.trim("c1", &vm, &NO_GUEST).await.unwrap();
        assert_eq!(vm.memory_asked.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn dimms_are_kept_when_a_container_leaves() {
        let vm = FakeVm::new(false, 0);
        let sizing = grown_for_two(&vm);
        sizing.shrink("c1", &vm, &NO_GUEST).await.unwrap();
        assert!(vm.memory_asked.lock().unwrap().is_empty(), "never asked");
        assert_eq!(
            *vm.vcpus_asked.lock().unwrap(),
            [1],
            "vCPUs still unplugged"
        );
        assert_eq!(sizing.state().memory_mib, 640);
    }

    #[tokio::test]
    async fn static_sizing_never_shrinks() {
        let vm = FakeVm::new(true, 0);
        let hv = HypervisorConfig {
            default_memory: 640,
            ..Default::default()
        };
        let sizing = Sizing::new(&hv, &vm.capabilities(), true, SizingState::default());
        sizing.restore("c1", Some(Demand::default()));
        sizing.shrink("c1", &vm, &NO_GUEST).await.unwrap();
        assert!(vm.memory_asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_the_guest_keeps_is_counted_and_a_failed_shrink_is_no_error() {
        let vm = FakeVm::new(true, 500);
        let sizing = grown_for_two(&vm);
        sizing.shrink("c2", &vm, &NO_GUEST).await.unwrap();
        assert_eq!(*vm.memory_asked.lock().unwrap(), [384]);
        assert_eq!(sizing.state().memory_mib, 500, "what the guest reached");
        // The guest keeps working on it: the same target is not asked (and waited for) again.
        sizing.trim("c2", &vm, &NO_GUEST).await.unwrap();
        assert_eq!(vm.memory_asked.lock().unwrap().len(), 1, "not asked again");
        assert!(already_asked(Some((384, 500)), 500, 384));
        assert!(
            !already_asked(Some((384, 500)), 500, 256),
            "a smaller target"
        );
        assert!(!already_asked(Some((384, 500)), 520, 384), "the VM moved");
        assert!(!already_asked(None, 500, 384));
        // Saved and restored, the size reached stays the VM's.
        let json = serde_json::to_value(sizing.state()).unwrap();
        let back: SizingState = serde_json::from_value(json).unwrap();
        let restored = Sizing::new(
            &HypervisorConfig {
                default_vcpus: 1,
                default_maxvcpus: 4,
                default_memory: 256,
                ..Default::default()
            },
            &vm.capabilities(),
            false,
            back,
        );
        assert_eq!(restored.state(), sizing.state());
        let failing = FakeVm {
            fail: true,
            ..FakeVm::new(true, 0)
        };
        restored.shrink("c1", &failing, &NO_GUEST).await.unwrap();
        assert_eq!(*failing.memory_asked.lock().unwrap(), [256]);
        assert_eq!(
            restored.state().memory_mib,
            500,
            "a failed shrink keeps the size counted"
        );
        assert_eq!(*failing.vcpus_asked.lock().unwrap(), [1]);
    }

    /// The built-in VMM's way: the guest takes CPUs offline through the agent first.
    fn offline_first(vm: &mut FakeVm) {
        vm.caps.cpu_offline_by_agent = true;
    }

    #[tokio::test]
    async fn the_guest_takes_cpus_offline_before_the_backend_takes_vcpus_back() {
        let mut vm = FakeVm::new(true, 0);
        offline_first(&mut vm);
        let sizing = grown_for_two(&vm);
        let guest = FakeGuest::new(true, 0);
        sizing.shrink("c1", &vm, &guest).await.unwrap();
        assert_eq!(*guest.asked.lock().unwrap(), [1], "asked before the resize");
        assert_eq!(*vm.vcpus_asked.lock().unwrap(), [1]);
        assert_eq!(sizing.state().vcpus, 1);
        // Nothing to take back: the guest is not asked again.
        sizing.trim("c1", &vm, &guest).await.unwrap();
        assert_eq!(guest.asked.lock().unwrap().len(), 1);
        // QEMU's way (ACPI eject): the guest is never asked through the agent.
        let qemu = FakeVm::new(true, 0);
        let sizing = grown_for_two(&qemu);
        let guest = FakeGuest::new(true, 0);
        sizing.shrink("c1", &qemu, &guest).await.unwrap();
        assert!(guest.asked.lock().unwrap().is_empty());
        assert_eq!(*qemu.vcpus_asked.lock().unwrap(), [1]);
    }

    #[tokio::test]
    async fn an_agent_without_the_extension_leaves_the_guest_its_vcpus() {
        let mut vm = FakeVm::new(true, 0);
        offline_first(&mut vm);
        let sizing = grown_for_two(&vm);
        let kata_agent = FakeGuest::new(false, 0);
        sizing.shrink("c1", &vm, &kata_agent).await.unwrap();
        assert_eq!(*kata_agent.asked.lock().unwrap(), [1]);
        assert!(
            vm.vcpus_asked.lock().unwrap().is_empty(),
            "no vCPU taken from a guest that still has it online"
        );
        assert_eq!(sizing.state().vcpus, 3, "the VM keeps its 3 vCPUs");
        assert!(!sizing.state().containers.contains_key("c1"), "c1 is gone");
        // An agent error: the same, and the error is the trim's.
        let failing = FakeGuest {
            fail: true,
            ..FakeGuest::new(true, 0)
        };
        assert!(sizing.trim("c1", &vm, &failing).await.is_err());
        assert!(vm.vcpus_asked.lock().unwrap().is_empty());
        assert_eq!(sizing.state().vcpus, 3);
    }

    #[tokio::test]
    async fn only_the_vcpus_above_the_cpus_the_guest_keeps_are_taken_back() {
        let mut vm = FakeVm::new(true, 0);
        offline_first(&mut vm);
        let sizing = grown_for_two(&vm);
        // The guest could not take CPU 1 offline: only vCPU 2 goes.
        let stubborn = FakeGuest::new(true, 2);
        sizing.shrink("c1", &vm, &stubborn).await.unwrap();
        assert_eq!(*vm.vcpus_asked.lock().unwrap(), [2]);
        assert_eq!(sizing.state().vcpus, 2);
        // A guest's answer is bounded by the VM's vCPUs: never grows the VM.
        assert_eq!(vcpus_kept(3, 1, &BTreeSet::from([0, 4_000_000])), 3);
        assert_eq!(vcpus_kept(3, 1, &BTreeSet::from([0, u32::MAX])), 3);
        assert_eq!(vcpus_kept(3, 1, &BTreeSet::new()), 1);
        assert_eq!(vcpus_kept(3, 1, &BTreeSet::from([0])), 1);
    }

    #[test]
    fn the_target_keeps_every_cpu_a_cpuset_names_even_with_quotas() {
        let pinned_high = Demand {
            cpuset: BTreeSet::from([3]),
            ..Default::default()
        };
        let quota = Demand {
            vcpus: 1,
            ..Default::default()
        };
        assert_eq!(
            base().target([&pinned_high, &quota]).vcpus,
            4,
            "1 + a quota of 1 is 2, but CPU 3 is pinned: 4"
        );
        assert_eq!(
            base().target([&pinned_high]).vcpus,
            4,
            "1 + |{{3}}| is 2, but CPU 3 is pinned: 4"
        );
        let beyond = Demand {
            cpuset: BTreeSet::from([9]),
            ..Default::default()
        };
        assert_eq!(
            base().target([&beyond]).vcpus,
            4,
            "capped at default_maxvcpus"
        );
    }

    #[tokio::test]
    async fn a_shrink_never_takes_offline_a_cpu_a_remaining_container_is_pinned_to() {
        let mut vm = FakeVm::new(true, 0);
        offline_first(&mut vm);
        let sizing = grown_for_two(&vm);
        // c2 (no quota) is pinned to CPU 2; c1's 2 vCPUs go with it.
        sizing.restore(
            "c2",
            Some(Demand {
                cpuset: BTreeSet::from([2]),
                ..Default::default()
            }),
        );
        let guest = FakeGuest::new(true, 0);
        sizing.shrink("c1", &vm, &guest).await.unwrap();
        assert!(
            guest.asked.lock().unwrap().is_empty(),
            "3 vCPUs are the target: no CPU is taken offline"
        );
        assert!(vm.vcpus_asked.lock().unwrap().is_empty());
        assert_eq!(sizing.state().vcpus, 3);
    }

    #[tokio::test]
    async fn a_backend_that_fails_after_the_guest_took_cpus_offline_gets_them_online_again() {
        let mut vm = FakeVm {
            fail_vcpus: true,
            ..FakeVm::new(true, 0)
        };
        offline_first(&mut vm);
        let sizing = grown_for_two(&vm);
        let guest = FakeGuest::new(true, 0);
        assert!(sizing.shrink("c1", &vm, &guest).await.is_err());
        assert_eq!(*guest.asked.lock().unwrap(), [1]);
        assert_eq!(*vm.vcpus_asked.lock().unwrap(), [1]);
        assert_eq!(sizing.state().vcpus, 3, "the VM keeps its 3 vCPUs");
        assert_eq!(
            *guest.onlined.lock().unwrap(),
            [3],
            "and the guest runs all 3 again"
        );
        // Nothing was taken offline (QEMU's way, or an agent without the extension): the
        // guest is not asked to online anything.
        let qemu = FakeVm {
            fail_vcpus: true,
            ..FakeVm::new(true, 0)
        };
        let sizing = grown_for_two(&qemu);
        let guest = FakeGuest::new(true, 0);
        assert!(sizing.shrink("c1", &qemu, &guest).await.is_err());
        assert!(guest.onlined.lock().unwrap().is_empty());
    }
}
