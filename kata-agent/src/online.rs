//! OnlineCPUMem: brings hot-plugged vCPUs and memory online, then lets the containers'
//! cpusets follow.
//!
//! The request's fields, as Kata's protocol defines them:
//! - `nb_cpus`: how many CPUs are to be online in all (0: leave the CPUs alone). Offline CPUs
//!   are onlined, lowest number first, until that many are; the kernel may still be adding
//!   the hot-plugged ones, so this retries for a bounded time ([`ONLINE_WAIT`]).
//! - `cpu_only`: leave memory alone; otherwise every offline memory block is onlined (the
//!   kata-rs guest kernel onlines hot-added memory itself, `MEMORY_HOTPLUG_DEFAULT_ONLINE`;
//!   this covers kernels that do not).
//! - `wait`: answer once everything is online (or the bound has passed, as an error);
//!   without it the work goes on in the background and the call answers at once.
//!
//! OfflineCPUs (kata-rs's extension `kata_rs.GuestService`, not in Kata's protocol: see
//! `service::guest_ext`) goes the other way: [`offline_cpus`] takes the highest-numbered
//! online CPUs offline, never CPU 0 (nor any CPU without an `online` file), until `nb_cpus`
//! are online, and answers the online CPUs. It stops at the first CPU the kernel refuses to
//! take offline (the CPUs below it would free nothing for the host, which takes vCPUs back
//! from the top): the answer then lists more than asked. It does not look at cpusets: the
//! kernel removes an offline CPU from the effective CPUs (v2: `cpuset.cpus` keeps it, effective
//! again once online) and from every cpuset (v1: for good, a cpuset left empty has its tasks
//! moved to its parent; onlining again widens only the cpusets without their own CPUs, as
//! below). So the runtime never asks to take offline a CPU a container's cpuset names (its
//! vCPU target is above the highest such CPU).
//!
//! Cpusets: on cgroup v2 a container's cgroup without its own `cpuset.cpus` follows the online
//! CPUs by itself. On v1 a cpuset cgroup keeps the CPUs it was created with, so every
//! container's cpuset and its ancestors up to the agent's own are widened to the online CPUs —
//! except where a container set its own (`linux.resources.cpu.cpus`), which is left as it is
//! (as Kata's agent does).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};
use crate::runtime::cgroup::Hierarchy;
use crate::sandbox::Sandbox;

/// How long onlining waits for hot-plugged CPUs to appear and come online (Kata: 100 tries,
/// 50 ms apart).
pub const ONLINE_WAIT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(50);

const SYS_CPU: &str = "/sys/devices/system/cpu";
const SYS_MEMORY: &str = "/sys/devices/system/memory";

/// What OnlineCPUMem is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnlineRequest {
    /// Answer only once done.
    pub wait: bool,
    /// CPUs to be online in all (0: none asked).
    pub nb_cpus: u32,
    /// Leave memory alone.
    pub cpu_only: bool,
}

/// Serves OnlineCPUMem on the guest the agent is init of.
pub async fn online_cpu_mem(sandbox: Arc<Sandbox>, req: OnlineRequest) -> Result<()> {
    let work = async move {
        let sys = SysPaths::guest();
        let done = tokio::task::spawn_blocking(move || online_blocking(&sys, req))
            .await
            .map_err(|e| AgentError::io("onlining CPUs", std::io::Error::other(e)))??;
        if req.nb_cpus > 0 {
            follow_cpusets(&sandbox, &done);
        }
        Ok::<_, AgentError>(())
    };
    if req.wait {
        return work.await;
    }
    tokio::spawn(async move {
        if let Err(e) = work.await {
            tracing::warn!(error = %e, "onlining CPUs and memory in the background");
        }
    });
    Ok(())
}

/// Serves OfflineCPUs on the guest the agent is init of: takes CPUs offline until `nb_cpus`
/// (at least 1) are online; returns the online CPUs.
pub async fn offline_cpus(nb_cpus: u32) -> Result<BTreeSet<u32>> {
    if nb_cpus == 0 {
        return Err(AgentError::invalid(
            "nb_cpus",
            "0: CPU 0 always stays online; ask for at least 1",
        ));
    }
    let dir = SysPaths::guest().cpu;
    tokio::task::spawn_blocking(move || offline_cpus_in(&dir, nb_cpus as usize))
        .await
        .map_err(|e| AgentError::io("taking CPUs offline", std::io::Error::other(e)))
}

/// Takes the highest online CPUs under `dir` offline until `want` are online, stopping at the
/// first the kernel refuses; returns the online ones.
fn offline_cpus_in(dir: &Path, want: usize) -> BTreeSet<u32> {
    let all = cpus(dir);
    let mut online: BTreeSet<u32> = all.iter().filter(|c| c.1).map(|c| c.0).collect();
    for (n, _) in all.iter().rev().filter(|c| c.1) {
        if online.len() <= want {
            break;
        }
        let file = dir.join(format!("cpu{n}")).join("online");
        if !file.exists() {
            // The boot CPU (no `online` file): it never goes offline, nor do the ones below.
            break;
        }
        match std::fs::write(&file, "0") {
            Ok(()) => {
                online.remove(n);
                tracing::info!(cpu = n, "CPU taken offline");
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "the kernel keeps the CPU online");
                break;
            }
        }
    }
    online
}

/// Where the guest's CPUs and memory blocks are (a test uses a fake tree).
#[derive(Debug, Clone)]
struct SysPaths {
    cpu: PathBuf,
    memory: PathBuf,
}

impl SysPaths {
    fn guest() -> Self {
        SysPaths {
            cpu: SYS_CPU.into(),
            memory: SYS_MEMORY.into(),
        }
    }
}

/// Onlines what `req` asks, retrying within [`ONLINE_WAIT`]; returns the online CPUs.
fn online_blocking(sys: &SysPaths, req: OnlineRequest) -> Result<BTreeSet<u32>> {
    let deadline = Instant::now() + ONLINE_WAIT;
    loop {
        if !req.cpu_only {
            online_memory(&sys.memory);
        }
        let online = online_cpus(&sys.cpu, req.nb_cpus as usize);
        if online.len() >= req.nb_cpus as usize {
            return Ok(online);
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: format!(
                    "{} CPUs to come online ({} are: {})",
                    req.nb_cpus,
                    online.len(),
                    cpu_list(&online)
                ),
                seconds: ONLINE_WAIT.as_secs(),
            });
        }
        std::thread::sleep(RETRY);
    }
}

/// The CPUs under `dir` (`cpuN` directories) and whether each is online (a CPU without an
/// `online` file, the boot CPU, always is).
fn cpus(dir: &Path) -> Vec<(u32, bool)> {
    let mut v: Vec<(u32, bool)> = numbered(dir, "cpu")
        .into_iter()
        .map(|(n, path)| {
            let online = std::fs::read_to_string(path.join("online"))
                .map(|s| s.trim() == "1")
                .unwrap_or(true);
            (n, online)
        })
        .collect();
    v.sort();
    v
}

/// Onlines offline CPUs, lowest first, until `want` are online; returns the online ones.
fn online_cpus(dir: &Path, want: usize) -> BTreeSet<u32> {
    let all = cpus(dir);
    let mut online: BTreeSet<u32> = all.iter().filter(|c| c.1).map(|c| c.0).collect();
    for (n, _) in all.iter().filter(|c| !c.1) {
        if online.len() >= want {
            break;
        }
        let file = dir.join(format!("cpu{n}")).join("online");
        match std::fs::write(&file, "1") {
            Ok(()) => {
                online.insert(*n);
            }
            Err(e) => {
                tracing::debug!(file = %file.display(), error = %e, "cannot online a CPU yet")
            }
        }
    }
    online
}

/// Onlines every offline memory block under `dir`.
fn online_memory(dir: &Path) {
    for (_, block) in numbered(dir, "memory") {
        let state = block.join("state");
        if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "offline") {
            if let Err(e) = std::fs::write(&state, "online") {
                tracing::debug!(file = %state.display(), error = %e, "cannot online a memory block");
            }
        }
    }
}

/// `<dir>/<prefix>N` entries as `(N, path)`.
fn numbered(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix)?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

/// A CPU set in the kernel's list format (`0-2,5`).
fn cpu_list(cpus: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = cpus.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Widens the v1 cpusets of every container (and their ancestors) to the online CPUs.
fn follow_cpusets(sandbox: &Sandbox, online: &BTreeSet<u32>) {
    let Some(Hierarchy::V1 { mounts, .. }) = Hierarchy::detect() else {
        return;
    };
    let Some(mount) = mounts.get("cpuset") else {
        return;
    };
    let mut leaves = Vec::new();
    for id in sandbox.container_ids() {
        let Ok(c) = sandbox.container(&id) else {
            continue;
        };
        if let Some(cg) = c.cgroup() {
            leaves.extend(cg.paths().into_iter().filter(|p| p.starts_with(mount)));
        }
    }
    widen_cpusets(mount, &leaves, &cpu_list(online));
}

fn read_cpus(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cpuset.cpus"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Writes `cpus` into `cpuset.cpus` of every cgroup from below `mount` down to each leaf, top
/// first (a child's CPUs must lie within its parent's). A leaf whose CPUs differ from its
/// parent's before any write chose its own and is left as it is. (A leaf that chose exactly
/// its parent's CPUs cannot be told from one that inherited them: it is widened too.)
fn widen_cpusets(mount: &Path, leaves: &[PathBuf], cpus: &str) {
    let own: Vec<bool> = leaves
        .iter()
        .map(|l| l.parent().is_some_and(|p| read_cpus(l) != read_cpus(p)))
        .collect();
    for (leaf, own) in leaves.iter().zip(own) {
        let Ok(rel) = leaf.strip_prefix(mount) else {
            continue;
        };
        let mut dir = mount.to_path_buf();
        for c in rel.components() {
            dir.push(c);
            if (own && &dir == leaf) || read_cpus(&dir) == cpus {
                continue;
            }
            if let Err(e) = std::fs::write(dir.join("cpuset.cpus"), cpus) {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot widen the cpuset to the online CPUs");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_cpus(dir: &Path, online: &[bool]) {
        for (n, on) in online.iter().enumerate() {
            let d = dir.join(format!("cpu{n}"));
            std::fs::create_dir_all(&d).unwrap();
            if n > 0 {
                std::fs::write(d.join("online"), if *on { "1" } else { "0" }).unwrap();
            }
        }
        std::fs::create_dir_all(dir.join("cpufreq")).unwrap();
    }

    fn is_online(dir: &Path, n: u32) -> bool {
        std::fs::read_to_string(dir.join(format!("cpu{n}/online")))
            .map(|s| s.trim() == "1")
            .unwrap_or(true)
    }

    #[test]
    fn onlines_the_lowest_offline_cpus_until_nb_cpus_are_online() {
        let t = tempfile::tempdir().unwrap();
        fake_cpus(t.path(), &[true, false, false, false]);
        let online = online_cpus(t.path(), 3);
        assert_eq!(online, BTreeSet::from([0, 1, 2]));
        assert!(!is_online(t.path(), 3), "only as many as asked");
        assert_eq!(online_cpus(t.path(), 0), BTreeSet::from([0, 1, 2]));
    }

    #[test]
    fn a_count_that_never_comes_is_a_bounded_timeout_and_memory_blocks_go_online() {
        let t = tempfile::tempdir().unwrap();
        let sys = SysPaths {
            cpu: t.path().join("cpu"),
            memory: t.path().join("memory"),
        };
        fake_cpus(&sys.cpu, &[true, false]);
        for (n, state) in [(0, "online"), (1, "offline")] {
            let d = sys.memory.join(format!("memory{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("state"), state).unwrap();
        }
        let req = OnlineRequest {
            wait: true,
            nb_cpus: 2,
            cpu_only: false,
        };
        assert_eq!(online_blocking(&sys, req).unwrap(), BTreeSet::from([0, 1]));
        let state = std::fs::read_to_string(sys.memory.join("memory1/state")).unwrap();
        assert_eq!(state, "online");

        let t0 = Instant::now();
        let e = online_blocking(&sys, OnlineRequest { nb_cpus: 3, ..req }).unwrap_err();
        assert!(t0.elapsed() >= ONLINE_WAIT && t0.elapsed() < ONLINE_WAIT * 2);
        assert!(
            e.to_string().contains("3 CPUs to come online (2 are: 0-1)"),
            "{e}"
        );
    }

    #[test]
    fn offlines_the_highest_online_cpus_until_nb_cpus_are_online_never_cpu0() {
        let t = tempfile::tempdir().unwrap();
        fake_cpus(t.path(), &[true, true, false, true]);
        assert_eq!(offline_cpus_in(t.path(), 3), BTreeSet::from([0, 1, 3]));
        assert_eq!(offline_cpus_in(t.path(), 2), BTreeSet::from([0, 1]));
        assert!(!is_online(t.path(), 3), "the highest first");
        assert!(is_online(t.path(), 1));
        assert_eq!(offline_cpus_in(t.path(), 1), BTreeSet::from([0]));
        assert!(!is_online(t.path(), 1));
        // CPU 0 has no `online` file: it stays, whatever is asked.
        assert_eq!(offline_cpus_in(t.path(), 0), BTreeSet::from([0]));
        // Onlining again works on what was taken offline.
        assert_eq!(online_cpus(t.path(), 2), BTreeSet::from([0, 1]));
    }

    #[test]
    fn a_cpu_the_kernel_keeps_ends_the_offlining_and_is_in_the_answer() {
        let t = tempfile::tempdir().unwrap();
        fake_cpus(t.path(), &[true, true, true]);
        // CPU 2's `online` is a directory here: the write fails as a refusal would.
        let online = t.path().join("cpu2/online");
        std::fs::remove_file(&online).unwrap();
        std::fs::create_dir(&online).unwrap();
        assert_eq!(offline_cpus_in(t.path(), 1), BTreeSet::from([0, 1, 2]));
        assert!(
            is_online(t.path(), 1),
            "nothing below a refused CPU is taken"
        );
    }

    #[tokio::test]
    async fn a_count_of_zero_is_refused_naming_the_field() {
        let e = offline_cpus(0).await.unwrap_err().to_string();
        assert!(e.contains("nb_cpus"), "{e}");
    }

    #[test]
    fn cpu_lists_use_ranges() {
        assert_eq!(cpu_list(&BTreeSet::from([0, 1, 2, 5, 7, 8])), "0-2,5,7-8");
        assert_eq!(cpu_list(&BTreeSet::from([0])), "0");
        assert_eq!(cpu_list(&BTreeSet::new()), "");
    }

    #[test]
    fn inherited_cpusets_widen_and_chosen_ones_stay() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path();
        let set = |rel: &str, cpus: &str| {
            let d = mount.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpuset.cpus"), cpus).unwrap();
        };
        let get = |rel: &str| std::fs::read_to_string(mount.join(rel).join("cpuset.cpus")).unwrap();
        // The root follows the online CPUs by itself; the others were copied at creation.
        set("", "0-2");
        set("kata-agent", "0");
        set("kata-agent/a", "0");
        set("kata-agent/pinned", "0");
        set("kata-agent/own", "1");
        let leaves = ["kata-agent/a", "kata-agent/pinned", "kata-agent/own"].map(|l| mount.join(l));
        widen_cpusets(mount, &leaves, "0-2");
        assert_eq!(get("kata-agent"), "0-2");
        assert_eq!(get("kata-agent/a"), "0-2");
        assert_eq!(get("kata-agent/pinned"), "0-2", "inherited: widened");
        assert_eq!(get("kata-agent/own"), "1", "a cpuset of its own stays");
    }
}
