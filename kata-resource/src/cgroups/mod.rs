//! The sandbox's cgroups on the host: where the VMM and its helpers run, the `cgroups` slot of
//! [`SandboxResources`](crate::SandboxResources).
//!
//! The sandbox cgroup is the one the sandbox spec's `linux.cgroupsPath` names (cgroupfs form
//! or the systemd driver's `slice:prefix:name`, see `path.rs`; without one Kata's
//! `kata_sandboxed_pod/<sandbox id>`), on cgroup v1 (a directory per controller under
//! `/sys/fs/cgroup`) or v2 (unified), made with the ancestors it lacks. The container runtime
//! (the kubelet's pod cgroup) puts the pod's limits on its parent. Then, as Kata's
//! `sandbox_cgroup_only` says (runtime-rs's semantics):
//!
//! - `true`: the VMM and every helper (vsock backend, virtiofsd) run in the sandbox cgroup, so
//!   all the pod's host overhead counts against the pod's limits;
//! - `false` (Kata's default): an unconstrained overhead cgroup (v1 `kata_overhead/<id>`, v2
//!   `<base>/overhead`) holds the VMM and its helpers, and only the vCPUs are constrained in
//!   the sandbox cgroup (v2 `<base>/sandbox`): on v1 the VMM's vCPU threads alone (found by
//!   the names QEMU gives them with `-name ...,debug-threads=on`), on v2 — or when no thread
//!   is named — the whole VMM process, as runtime-rs does.
//!
//! The sandbox cgroup is constrained by the union of the containers' cpusets
//! (`linux.resources.cpu.cpus`, `.mems`), as runtime-rs does; the containers' CPU quota and
//! memory limits are applied by the agent inside the VM, not copied onto the host cgroup that
//! holds the VMM (whose guest RAM alone exceeds a container's limit; the pod's cgroup, the
//! parent, limits the whole).
//!
//! Removed on release (processes still in it are moved to the root cgroup first, ancestors
//! this owner made are removed once empty), kept by `detach`, taken over by `adopt`, removed
//! from its state by `cleanup`. Every path is built through the crate's checked path helper:
//! a `cgroupsPath` with `..` or leaving the hierarchy is refused naming `linux.cgroupsPath`.

mod cpuset;
mod hierarchy;
mod in_process;
mod path;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

pub use hierarchy::CgroupVersion;
pub use state::{CgroupsState, ContainerCpuset};

use crate::{Error, Result};
use hierarchy::{Cgroup, Fs, Hierarchy};

/// Where the host's cgroup filesystems are mounted.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What the sandbox's host cgroups are made from.
///
/// ```
/// use kata_resource::cgroups::CgroupsConfig;
///
/// let config = CgroupsConfig::new("sb-1")
///     .cgroups_path("kubepods-burstable-pod1.slice:cri-containerd:sb-1")
///     .sandbox_cgroup_only(true);
/// assert_eq!(config.root, std::path::Path::new("/sys/fs/cgroup"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgroupsConfig {
    /// The sandbox id (the default path and the v1 overhead cgroup are named after it).
    pub sandbox_id: String,
    /// The sandbox spec's `linux.cgroupsPath` (`None`: `kata_sandboxed_pod/<sandbox id>`).
    pub cgroups_path: Option<String>,
    /// `[runtime] sandbox_cgroup_only`.
    pub sandbox_cgroup_only: bool,
    /// Where the cgroup filesystems are mounted ([`DEFAULT_CGROUP_ROOT`]).
    pub root: PathBuf,
}

impl CgroupsConfig {
    /// The defaults for sandbox `sandbox_id`: Kata's path, `sandbox_cgroup_only = false`,
    /// `/sys/fs/cgroup`.
    pub fn new(sandbox_id: impl Into<String>) -> Self {
        CgroupsConfig {
            sandbox_id: sandbox_id.into(),
            cgroups_path: None,
            sandbox_cgroup_only: false,
            root: PathBuf::from(DEFAULT_CGROUP_ROOT),
        }
    }

    /// Sets the spec's `linux.cgroupsPath`.
    pub fn cgroups_path(mut self, path: impl Into<String>) -> Self {
        self.cgroups_path = Some(path.into());
        self
    }

    /// Sets `[runtime] sandbox_cgroup_only`.
    pub fn sandbox_cgroup_only(mut self, only: bool) -> Self {
        self.sandbox_cgroup_only = only;
        self
    }

    /// Sets where the cgroup filesystems are mounted.
    pub fn root(mut self, root: impl AsRef<Path>) -> Self {
        self.root = root.as_ref().to_owned();
        self
    }
}

/// The sandbox's host cgroups: none, or the sandbox cgroup (and the overhead one) this slot
/// made. Removed on release and on drop; `detach` leaves them.
#[derive(Debug, Default)]
pub(crate) struct CgroupsSlot {
    active: Option<Active>,
}

#[derive(Debug)]
struct Active {
    hier: Hierarchy,
    sandbox_cgroup_only: bool,
    sandbox: Cgroup,
    overhead: Option<Cgroup>,
    /// Every directory made, parents first.
    made: Vec<PathBuf>,
    vmm_pid: Option<u32>,
    containers: BTreeMap<String, ContainerCpuset>,
    /// An in-process VMM's threads moved in (`in_process.rs`), to put back on release.
    in_process: Vec<in_process::InProcess>,
}

impl CgroupsSlot {
    /// Makes the sandbox's cgroups from `config`; see
    /// [`SandboxResources::set_up_cgroups`](crate::SandboxResources::set_up_cgroups). On
    /// error nothing is left: no directory.
    pub(crate) fn set_up(&mut self, config: &CgroupsConfig) -> Result<()> {
        self.set_up_on(config, Fs::Kernel)
    }

    fn set_up_on(&mut self, config: &CgroupsConfig, fs: Fs) -> Result<()> {
        if let Some(a) = &self.active {
            return Err(Error::CgroupsPath {
                value: a.sandbox.rel.display().to_string(),
                reason: "the sandbox's cgroups are set up already".into(),
            });
        }
        let base = path::sandbox_base(config.cgroups_path.as_deref(), &config.sandbox_id)?;
        crate::validate_container_id(&config.sandbox_id)?;
        let hier = Hierarchy::detect(&config.root, fs)?;
        let v2 = hier.version() == CgroupVersion::V2;
        let (sandbox_rel, overhead_rel) = path::layout(&base, &config.sandbox_id, v2);
        let sandbox = hier.cgroup(&sandbox_rel)?;
        let overhead = match config.sandbox_cgroup_only {
            true => None,
            false => Some(hier.cgroup(&overhead_rel)?),
        };
        let mut made = Vec::new();
        let created = hier
            .create(&sandbox, &mut made)
            .and_then(|()| match &overhead {
                Some(o) => hier.create(o, &mut made),
                None => Ok(()),
            });
        if let Err(e) = created {
            undo(&hier, &made);
            return Err(e);
        }
        tracing::info!(
            cgroup = %sandbox_rel.display(),
            version = ?hier.version(),
            sandbox_cgroup_only = config.sandbox_cgroup_only,
            "the sandbox's host cgroups are made"
        );
        self.active = Some(Active {
            hier,
            sandbox_cgroup_only: config.sandbox_cgroup_only,
            sandbox,
            overhead,
            made,
            vmm_pid: None,
            containers: BTreeMap::new(),
            in_process: Vec::new(),
        });
        Ok(())
    }

    /// Moves the VMM (`pids[0]`) and its helpers (the rest) in; see
    /// [`SandboxResources::add_vmm_pids`](crate::SandboxResources::add_vmm_pids).
    pub(crate) fn add_vmm_pids(&mut self, pids: &[u32]) -> Result<()> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        match &a.overhead {
            None => a.hier.add_procs(&a.sandbox, pids)?,
            Some(overhead) => a.hier.add_procs(overhead, pids)?,
        }
        // A VMM booted once more (QEMU's second boot) replaces the one that is gone.
        if a.vmm_pid
            .is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            a.vmm_pid = pids.first().copied();
        }
        a.constrain_vcpus()
    }

    /// Moves the sandbox into the cgroups of `config` (a running VM taken over by a pod): makes
    /// them, moves the VMM and its helpers (`pids`) in, then removes the cgroups it ran in.
    /// On error the VMM stays in its old cgroups and nothing new is left. A VMM in this
    /// process (threads moved in one by one) is refused: it is never handed over.
    pub(crate) fn move_to(&mut self, config: &CgroupsConfig, pids: &[u32]) -> Result<()> {
        self.move_to_on(config, pids, Fs::Kernel)
    }

    fn move_to_on(&mut self, config: &CgroupsConfig, pids: &[u32], fs: Fs) -> Result<()> {
        if self
            .active
            .as_ref()
            .is_some_and(|a| !a.in_process.is_empty())
        {
            return Err(Error::CgroupsPath {
                value: config.cgroups_path.clone().unwrap_or_default(),
                reason: "the sandbox's VMM runs in this process: its threads cannot move to \
                         another sandbox's cgroups"
                    .into(),
            });
        }
        let mut old = CgroupsSlot::default();
        old.active = self.active.take();
        if let Err(e) = self.set_up_on(config, fs) {
            self.active = old.active.take();
            return Err(e);
        }
        if let Err(e) = self.add_vmm_pids(pids) {
            if let Err(back) = old.add_vmm_pids(pids) {
                tracing::error!("cannot move the VMM back into its cgroups: {back}");
            }
            if let Err(undo) = self.release_in_place() {
                tracing::error!("cannot remove the cgroups the VMM did not move into: {undo}");
            }
            self.active = old.active.take();
            return Err(e);
        }
        let old_made = old
            .active
            .as_ref()
            .map(|a| a.made.clone())
            .unwrap_or_default();
        if let Some(a) = &old.active {
            tracing::info!(from = %a.sandbox.rel.display(), "the VMM moved to the pod's cgroups");
        }
        // Dropping `old` would try once more and log; say it here, with the cause.
        if let Err(e) = old.release_in_place() {
            tracing::warn!("cannot remove the cgroups the VMM ran in before: {e}");
        }
        // Ancestors the old cgroups made that the new ones share (`kata_overhead`) stayed,
        // not empty: they are the new cgroups' to remove now.
        if let Some(a) = &mut self.active {
            let leaves: Vec<PathBuf> = a
                .sandbox
                .dirs
                .iter()
                .chain(a.overhead.iter().flat_map(|o| &o.dirs))
                .map(|(_, d)| d.clone())
                .collect();
            let shared: Vec<PathBuf> = old_made
                .into_iter()
                .filter(|d| d.is_dir() && !a.made.contains(d))
                .filter(|d| leaves.iter().any(|l| l.starts_with(d)))
                .collect();
            a.made.splice(0..0, shared);
        }
        Ok(())
    }

    /// Moves an in-process VMM's threads in (this process's `vcpus` and device threads); see
    /// [`SandboxResources::add_vmm_threads`](crate::SandboxResources::add_vmm_threads).
    pub(crate) fn add_vmm_threads(&mut self, vcpus: &[u32], devices: &[u32]) -> Result<()> {
        let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| Error::Cgroup {
            action: "read this process's cgroups from".into(),
            path: PathBuf::from("/proc/self/cgroup"),
            source: e,
        })?;
        self.add_vmm_threads_of(std::process::id(), &text, vcpus, devices)
    }

    /// [`add_vmm_threads`](Self::add_vmm_threads) for process `pid` whose
    /// `/proc/<pid>/cgroup` reads `proc_cgroup`.
    fn add_vmm_threads_of(
        &mut self,
        pid: u32,
        proc_cgroup: &str,
        vcpus: &[u32],
        devices: &[u32],
    ) -> Result<()> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        let home = in_process::home_dirs(&a.hier, proc_cgroup)?;
        let moved = in_process::move_in(
            &a.hier,
            &a.sandbox,
            a.overhead.as_ref(),
            pid,
            home,
            vcpus,
            devices,
        )?;
        a.in_process.push(moved);
        Ok(())
    }

    /// Records container `id`'s cpuset and constrains the sandbox cgroup to the union; see
    /// [`SandboxResources::update_container_cgroups`](crate::SandboxResources::update_container_cgroups).
    pub(crate) fn update_container(
        &mut self,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<()> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        let normal = |v: Option<&String>, field: &str| -> Result<String> {
            Ok(cpuset::format(&cpuset::parse(
                v.map_or("", String::as_str),
                field,
            )?))
        };
        let new = ContainerCpuset {
            cpus: normal(
                cpu.and_then(|c| c.cpus().as_ref()),
                "linux.resources.cpu.cpus",
            )?,
            mems: normal(
                cpu.and_then(|c| c.mems().as_ref()),
                "linux.resources.cpu.mems",
            )?,
        };
        let old = a.containers.insert(id.to_owned(), new.clone());
        if old.as_ref() == Some(&new) {
            return a.constrain_vcpus();
        }
        if let Err(e) = a.apply_cpusets() {
            match old {
                Some(old) => a.containers.insert(id.to_owned(), old),
                None => a.containers.remove(id),
            };
            if let Err(undo) = a.apply_cpusets() {
                tracing::error!(
                    container_id = id,
                    "cannot put the sandbox cgroup's cpuset back: {undo}"
                );
            }
            return Err(e);
        }
        a.constrain_vcpus()
    }

    /// Forgets container `id`'s cpuset and widens the sandbox cgroup again.
    pub(crate) fn remove_container(&mut self, id: &str) -> Result<()> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        match a.containers.remove(id) {
            Some(c) if c != ContainerCpuset::default() => a.apply_cpusets(),
            _ => Ok(()),
        }
    }

    /// What persist records of it.
    pub(crate) fn state(&self) -> CgroupsState {
        let Some(a) = &self.active else {
            return CgroupsState::default();
        };
        CgroupsState {
            root: Some(a.hier.root().to_owned()),
            version: Some(a.hier.version()),
            sandbox: a.sandbox.rel.clone(),
            overhead: a.overhead.as_ref().map(|o| o.rel.clone()),
            sandbox_cgroup_only: a.sandbox_cgroup_only,
            made: a.made.clone(),
            vmm_pid: a.vmm_pid,
            containers: a.containers.clone(),
        }
    }

    /// Takes over what a detached owner left, as `state` records it: the hierarchy must be
    /// the same version and the sandbox (and overhead) cgroup still there. Changes nothing.
    pub(crate) fn adopt(state: &CgroupsState) -> Result<Self> {
        Self::adopt_on(state, Fs::Kernel)
    }

    fn adopt_on(state: &CgroupsState, fs: Fs) -> Result<Self> {
        let Some((hier, sandbox, overhead)) = recorded(state, fs)? else {
            return Ok(CgroupsSlot::default());
        };
        for (_, dir) in sandbox
            .dirs
            .iter()
            .chain(overhead.iter().flat_map(|o| &o.dirs))
        {
            if !dir.is_dir() {
                return Err(Error::NotAdoptable {
                    path: dir.clone(),
                    reason: "the sandbox's cgroup is gone".into(),
                });
            }
        }
        Ok(CgroupsSlot {
            active: Some(Active {
                hier,
                sandbox_cgroup_only: state.sandbox_cgroup_only,
                sandbox,
                overhead,
                made: state.made.clone(),
                vmm_pid: state.vmm_pid,
                containers: state.containers.clone(),
                in_process: Vec::new(),
            }),
        })
    }

    /// Removes what a crashed owner left, as `state` records it: the overhead and sandbox
    /// cgroups (which must be empty: the VMM was stopped first) and the ancestors it made,
    /// when empty. Processes are never moved here: a cgroup that still has some fails naming
    /// it.
    pub(crate) fn cleanup(state: &CgroupsState) -> Result<()> {
        Self::cleanup_on(state, Fs::Kernel)
    }

    fn cleanup_on(state: &CgroupsState, fs: Fs) -> Result<()> {
        let Some((hier, sandbox, overhead)) = recorded(state, fs)? else {
            return Ok(());
        };
        let mut first = Ok(());
        for cgroup in overhead.iter().chain([&sandbox]) {
            for (_, dir) in &cgroup.dirs {
                if let Err(e) = hier.rmdir(dir) {
                    let e = Error::Cgroup {
                        action: "remove the cgroup a crashed owner left".into(),
                        path: dir.clone(),
                        source: e,
                    };
                    tracing::error!("{e}");
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        remove_ancestors(&hier, &state.made, &sandbox, overhead.as_ref());
        first
    }

    /// Releases it: processes still in the cgroups moved to the root cgroup, the cgroups and
    /// the ancestors made (when empty) removed. What fails stays recorded for the next try.
    pub(crate) fn release_in_place(&mut self) -> Result<()> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        // An in-process VMM's threads (or, on v2, this process) back where they came from
        // first: the removal below would move them to the root cgroup.
        while let Some(moved) = a.in_process.last() {
            in_process::move_out(&a.hier, moved)?;
            a.in_process.pop();
        }
        let a = &*a;
        if let Some(o) = &a.overhead {
            a.hier.remove(o)?;
        }
        a.hier.remove(&a.sandbox)?;
        remove_ancestors(&a.hier, &a.made, &a.sandbox, a.overhead.as_ref());
        tracing::debug!(cgroup = %a.sandbox.rel.display(), "the sandbox's host cgroups are removed");
        self.active = None;
        Ok(())
    }

    /// Gives up ownership: the cgroups stay for [`adopt`](Self::adopt).
    pub(crate) fn detach(mut self) {
        self.active = None;
    }
}

impl Drop for CgroupsSlot {
    fn drop(&mut self) {
        if let Err(e) = self.release_in_place() {
            tracing::error!("cannot remove the sandbox's host cgroups: {e}");
        }
    }
}

impl Active {
    /// The union of the containers' cpusets, written into the sandbox cgroup (an empty union
    /// gives it its parent's CPUs and nodes back).
    fn apply_cpusets(&self) -> Result<()> {
        let mut cpus = cpuset::IdSet::new();
        let mut mems = cpuset::IdSet::new();
        for c in self.containers.values() {
            cpus.extend(cpuset::parse(&c.cpus, "linux.resources.cpu.cpus")?);
            mems.extend(cpuset::parse(&c.mems, "linux.resources.cpu.mems")?);
        }
        self.hier.set_cpuset(
            &self.sandbox,
            "cpuset.cpus",
            &cpuset::format(&cpus),
            "linux.resources.cpu.cpus",
        )?;
        self.hier.set_cpuset(
            &self.sandbox,
            "cpuset.mems",
            &cpuset::format(&mems),
            "linux.resources.cpu.mems",
        )
    }

    /// `sandbox_cgroup_only = false`: the VMM's vCPUs into the sandbox cgroup (again: vCPUs
    /// plugged since start up in the overhead cgroup, where the VMM's other threads are).
    fn constrain_vcpus(&self) -> Result<()> {
        let (Some(_), Some(vmm)) = (&self.overhead, self.vmm_pid) else {
            return Ok(());
        };
        let threads = match self.hier.version() {
            CgroupVersion::V1 => vcpu_threads(vmm),
            CgroupVersion::V2 => Vec::new(),
        };
        if threads.is_empty() {
            self.hier.add_procs(&self.sandbox, &[vmm])
        } else {
            tracing::debug!(vmm, ?threads, "vCPU threads into the sandbox cgroup");
            self.hier.add_threads(&self.sandbox, &threads)
        }
    }
}

/// The vCPU threads of process `pid`: those QEMU names `CPU <n>/<accel>` (or `ALL CPUs/TCG`,
/// single-threaded TCG) with `-name ...,debug-threads=on`. Empty when there are none.
fn vcpu_threads(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let comm = comm.trim_end();
            ((comm.starts_with("CPU ") || comm.starts_with("ALL CPUs")) && comm.contains('/'))
                .then_some(tid)
        })
        .collect();
    tids.sort_unstable();
    tids
}

/// The hierarchy and cgroups `state` records (`None`: it records none), each checked as
/// [`CgroupsSlot::set_up`] checks them, and every recorded directory inside the root.
fn recorded(state: &CgroupsState, fs: Fs) -> Result<Option<(Hierarchy, Cgroup, Option<Cgroup>)>> {
    let Some(root) = &state.root else {
        return Ok(None);
    };
    let hier = Hierarchy::detect(root, fs)?;
    if state.version.is_some_and(|v| v != hier.version()) {
        return Err(Error::NotAdoptable {
            path: root.clone(),
            reason: format!(
                "the state records cgroup {:?}, the host has {:?}",
                state.version,
                hier.version()
            ),
        });
    }
    let sandbox = hier.cgroup(&state.sandbox)?;
    let overhead = state
        .overhead
        .as_deref()
        .map(|o| hier.cgroup(o))
        .transpose()?;
    for dir in &state.made {
        crate::path::checked_within(root, dir, path::FIELD)?;
    }
    Ok(Some((hier, sandbox, overhead)))
}

/// Removes the ancestors in `made` that are neither cgroup, deepest first, when empty (another
/// sandbox may share them: a busy one stays).
fn remove_ancestors(
    hier: &Hierarchy,
    made: &[PathBuf],
    sandbox: &Cgroup,
    overhead: Option<&Cgroup>,
) {
    let leaves: Vec<&PathBuf> = sandbox
        .dirs
        .iter()
        .chain(overhead.iter().flat_map(|o| &o.dirs))
        .map(|(_, d)| d)
        .collect();
    for dir in made.iter().rev().filter(|d| !leaves.contains(d)) {
        match hier.rmdir_once(dir) {
            Ok(()) => {}
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EBUSY))
                    || e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot remove a cgroup ancestor this sandbox made: {e}")
            }
        }
    }
}

/// Removes what a failed set-up made, deepest first.
fn undo(hier: &Hierarchy, made: &[PathBuf]) {
    for dir in made.iter().rev() {
        if let Err(e) = hier.rmdir(dir) {
            tracing::error!(dir = %dir.display(), "cannot remove a cgroup after a failed set-up: {e}");
        }
    }
}
