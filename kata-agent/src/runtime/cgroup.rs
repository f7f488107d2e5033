//! Per-container cgroups on the guest's hierarchy (v2, or v1 per-controller mounts).
//!
//! Each container gets one cgroup (`linux.cgroupsPath`, or `kata-agent/<id>`) holding its init
//! and exec processes. `linux.resources` is written into it (memory, cpu, cpuset, pids, and v2's
//! `unified` map, and the device rules: [`super::devices`]), its files answer StatsContainer and
//! ListProcesses, and RemoveContainer kills
//! whatever is left in it and removes it. On v1 the cgroup is created under the agent's own
//! cgroup of each controller, so an agent that is itself confined (host tests) stays confined.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::devices::{self, DeviceRules};
use crate::error::{AgentError, Result};

/// The v1 controllers the agent places containers in.
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio",
];

/// The cgroup hierarchy of this system, as found in `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// A unified (v2) hierarchy mounted at `mount`.
    V2 {
        /// Where cgroup2 is mounted (`/sys/fs/cgroup`).
        mount: PathBuf,
    },
    /// v1 controllers, each on its own mount (combined mounts such as `cpu,cpuacct` share one).
    V1 {
        /// Controller name → its mount point.
        mounts: BTreeMap<String, PathBuf>,
        /// Controller name → the agent's own cgroup in it (from `/proc/self/cgroup`).
        own: BTreeMap<String, PathBuf>,
    },
}

impl Hierarchy {
    /// Detects the hierarchy of the calling process. `None` when no cgroup filesystem is mounted.
    pub fn detect() -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::parse(&mountinfo, &own)
    }

    /// Detects the hierarchy from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Option<Self> {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next();
            let super_opts = post.next().unwrap_or("");
            match fstype {
                "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(mount_point)),
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            v1.entry(opt.to_string())
                                .or_insert_with(|| PathBuf::from(mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        if !v1.is_empty() {
            let mut own = BTreeMap::new();
            for line in proc_cgroup.lines() {
                let mut f = line.splitn(3, ':');
                let (_, ctrls, path) = (f.next(), f.next(), f.next());
                let (Some(ctrls), Some(path)) = (ctrls, path) else {
                    continue;
                };
                for c in ctrls.split(',') {
                    own.insert(c.to_string(), PathBuf::from(path));
                }
            }
            return Some(Hierarchy::V1 { mounts: v1, own });
        }
        v2.map(|mount| Hierarchy::V2 { mount })
    }
}

/// The cgroup path (relative to the hierarchy) for a container.
///
/// `linux.cgroupsPath` when it is a plain path; systemd-style `slice:prefix:name` paths and an
/// absent path give `kata-agent/<container_id>`. `..` is refused.
pub fn container_cgroup_path(spec_path: Option<&Path>, container_id: &str) -> Result<PathBuf> {
    let fallback = PathBuf::from("kata-agent").join(container_id);
    let Some(p) = spec_path else {
        return Ok(fallback);
    };
    let s = p.to_string_lossy();
    if s.is_empty() || s.contains(':') {
        return Ok(fallback);
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(AgentError::invalid(
                    "linux.cgroupsPath",
                    format!("{} must not contain '..'", p.display()),
                ))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Ok(fallback);
    }
    Ok(rel)
}

/// Statistics read from a container's cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Memory in use, bytes.
    pub memory_usage: u64,
    /// Peak memory, bytes (0 when the kernel does not report it).
    pub memory_max_usage: u64,
    /// Memory limit, bytes (0 when unlimited).
    pub memory_limit: u64,
    /// Memory failure count (v1) or `max` events (v2).
    pub memory_failcnt: u64,
    /// The `memory.stat` key/value pairs.
    pub memory_stat: HashMap<String, u64>,
    /// Total CPU time, nanoseconds.
    pub cpu_total_ns: u64,
    /// CPU time in user mode, nanoseconds.
    pub cpu_user_ns: u64,
    /// CPU time in kernel mode, nanoseconds.
    pub cpu_system_ns: u64,
    /// CPU time per CPU, nanoseconds (v1 only).
    pub cpu_percpu_ns: Vec<u64>,
    /// Throttled periods / total periods / throttled time (ns).
    pub cpu_throttling: (u64, u64, u64),
    /// Number of tasks.
    pub pids_current: u64,
    /// Task limit (0 when unlimited).
    pub pids_limit: u64,
}

/// A container's cgroup: one directory (v2) or one per mounted controller (v1).
#[derive(Clone, Debug)]
pub struct Cgroup {
    v2: bool,
    /// controller name (or "" for v2) → directory. Several controllers may share a directory.
    dirs: BTreeMap<String, PathBuf>,
}

fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value)
        .map_err(|e| AgentError::io(format!("write {value:?} to {}", path.display()), e))
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Parses `key value` lines (`memory.stat`, `cpu.stat`).
fn read_kv(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000), as runc converts it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

impl Cgroup {
    /// Creates the cgroup `rel` in `hierarchy` and applies `resources` to it.
    pub fn create(
        hierarchy: &Hierarchy,
        rel: &Path,
        resources: Option<&LinuxResources>,
    ) -> Result<Self> {
        let cg = match hierarchy {
            Hierarchy::V2 { mount } => {
                enable_v2_controllers(mount, rel);
                let dir = mount.join(rel);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| AgentError::io(format!("create cgroup {}", dir.display()), e))?;
                Cgroup {
                    v2: true,
                    dirs: [(String::new(), dir)].into(),
                }
            }
            Hierarchy::V1 { mounts, own } => {
                let mut dirs = BTreeMap::new();
                for (ctrl, mount) in mounts {
                    let base = own
                        .get(ctrl)
                        .map(|p| p.strip_prefix("/").unwrap_or(p).to_path_buf())
                        .unwrap_or_default();
                    let dir = mount.join(base).join(rel);
                    if let Err(e) = std::fs::create_dir_all(&dir) {
                        // Created so far must not leak.
                        let partial = Cgroup { v2: false, dirs };
                        partial.remove_dirs();
                        return Err(AgentError::io(
                            format!("create cgroup {}", dir.display()),
                            e,
                        ));
                    }
                    if ctrl == "cpuset" {
                        init_v1_cpuset(mount, &dir);
                    }
                    dirs.insert(ctrl.clone(), dir);
                }
                Cgroup { v2: false, dirs }
            }
        };
        if let Some(res) = resources {
            if let Err(e) = cg.apply(res) {
                cg.remove_dirs();
                return Err(e);
            }
        }
        Ok(cg)
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        if self.v2 {
            self.dirs.values().next().map(PathBuf::as_path)
        } else {
            self.dirs.get(ctrl).map(PathBuf::as_path)
        }
    }

    /// The distinct directories of this cgroup.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.dirs.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    /// Writes `linux.resources` into the cgroup.
    pub fn apply(&self, res: &LinuxResources) -> Result<()> {
        let field = |f: &str| format!("linux.resources.{f}");
        let devices = res.devices().as_deref().unwrap_or_default();
        if let Some(rules) = DeviceRules::from_spec(devices, &field("devices"))? {
            match (self.v2, self.dir("devices")) {
                (true, Some(dir)) => devices::apply_v2(dir, &rules)?,
                (false, Some(dir)) => devices::apply_v1(dir, &rules)?,
                (_, None) => {
                    return Err(AgentError::invalid(
                        field("devices"),
                        "cannot be enforced: the guest has no devices cgroup controller",
                    ))
                }
            }
        }
        if let Some(mem) = res.memory() {
            if let Some(dir) = self.dir("memory") {
                if self.v2 {
                    if let Some(limit) = mem.limit() {
                        let v = if limit < 0 {
                            "max".to_string()
                        } else {
                            limit.to_string()
                        };
                        write_file(dir, "memory.max", &v)?;
                        if let Some(swap) = mem.swap() {
                            let v = if swap < 0 {
                                "max".to_string()
                            } else {
                                (swap - limit.max(0)).max(0).to_string()
                            };
                            if dir.join("memory.swap.max").exists() {
                                write_file(dir, "memory.swap.max", &v)?;
                            }
                        }
                    }
                    if let Some(r) = mem.reservation() {
                        write_file(dir, "memory.low", &r.max(0).to_string())?;
                    }
                } else {
                    if let Some(limit) = mem.limit() {
                        write_file(dir, "memory.limit_in_bytes", &limit.to_string())?;
                    }
                    if let (Some(swap), true) =
                        (mem.swap(), dir.join("memory.memsw.limit_in_bytes").exists())
                    {
                        write_file(dir, "memory.memsw.limit_in_bytes", &swap.to_string())?;
                    }
                    if let Some(r) = mem.reservation() {
                        write_file(dir, "memory.soft_limit_in_bytes", &r.to_string())?;
                    }
                    if let Some(s) = mem.swappiness() {
                        if s > 100 {
                            return Err(AgentError::invalid(
                                field("memory.swappiness"),
                                format!("{s} is above 100"),
                            ));
                        }
                        write_file(dir, "memory.swappiness", &s.to_string())?;
                    }
                }
            } else {
                tracing::warn!("memory controller unavailable: memory limits not applied");
            }
        }
        if let Some(cpu) = res.cpu() {
            if let Some(dir) = self.dir("cpu") {
                if self.v2 {
                    if let Some(shares) = cpu.shares() {
                        let w = shares_to_weight(shares);
                        if w > 0 {
                            write_file(dir, "cpu.weight", &w.to_string())?;
                        }
                    }
                    if cpu.quota().is_some() || cpu.period().is_some() {
                        let quota = match cpu.quota() {
                            Some(q) if q > 0 => q.to_string(),
                            _ => "max".to_string(),
                        };
                        let period = cpu.period().unwrap_or(100_000);
                        write_file(dir, "cpu.max", &format!("{quota} {period}"))?;
                    }
                } else {
                    if let Some(shares) = cpu.shares() {
                        write_file(dir, "cpu.shares", &shares.to_string())?;
                    }
                    if let Some(period) = cpu.period() {
                        write_file(dir, "cpu.cfs_period_us", &period.to_string())?;
                    }
                    if let Some(quota) = cpu.quota() {
                        write_file(dir, "cpu.cfs_quota_us", &quota.to_string())?;
                    }
                }
            }
            if let Some(dir) = self.dir("cpuset") {
                if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
                    write_file(dir, "cpuset.cpus", cpus)?;
                }
                if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
                    write_file(dir, "cpuset.mems", mems)?;
                }
            }
        }
        if let Some(pids) = res.pids() {
            if let Some(dir) = self.dir("pids") {
                let v = if pids.limit() > 0 {
                    pids.limit().to_string()
                } else {
                    "max".to_string()
                };
                write_file(dir, "pids.max", &v)?;
            }
        }
        if let Some(unified) = res.unified() {
            if !self.v2 {
                if !unified.is_empty() {
                    return Err(AgentError::invalid(
                        field("unified"),
                        "needs a cgroup v2 guest, this one has v1",
                    ));
                }
            } else if let Some(dir) = self.dir("") {
                for (k, v) in unified {
                    if k.contains('/') || k.starts_with('.') {
                        return Err(AgentError::invalid(
                            field(&format!("unified[{k:?}]")),
                            "is not a cgroup file name",
                        ));
                    }
                    write_file(dir, k, v)?;
                }
            }
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup (every controller).
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for dir in self.paths() {
            write_file(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The pids in the cgroup, as seen from the agent's pid namespace.
    pub fn pids(&self) -> Vec<i32> {
        let dir = self
            .dir("pids")
            .or_else(|| self.dir("memory"))
            .or_else(|| self.dirs.values().next().map(PathBuf::as_path));
        let Some(dir) = dir else {
            return Vec::new();
        };
        let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        // On v1 a task may have left the pids controller's view already; merge the others.
        if !self.v2 {
            for d in self.paths() {
                for p in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    if !pids.contains(&p) {
                        pids.push(p);
                    }
                }
            }
        }
        pids.sort_unstable();
        pids
    }

    /// Reads memory, CPU and pids statistics.
    pub fn stats(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        if let Some(dir) = self.dir("memory") {
            if self.v2 {
                s.memory_usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
                s.memory_max_usage = read_u64(&dir.join("memory.peak")).unwrap_or(0);
                s.memory_limit = read_u64(&dir.join("memory.max")).unwrap_or(0);
                s.memory_failcnt = read_kv(&dir.join("memory.events"))
                    .get("max")
                    .copied()
                    .unwrap_or(0);
            } else {
                s.memory_usage = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
                s.memory_max_usage = read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0);
                s.memory_limit = read_u64(&dir.join("memory.limit_in_bytes")).unwrap_or(0);
                s.memory_failcnt = read_u64(&dir.join("memory.failcnt")).unwrap_or(0);
            }
            s.memory_stat = read_kv(&dir.join("memory.stat"));
        }
        if self.v2 {
            if let Some(dir) = self.dir("cpu") {
                let st = read_kv(&dir.join("cpu.stat"));
                let us = |k: &str| st.get(k).copied().unwrap_or(0) * 1000;
                s.cpu_total_ns = us("usage_usec");
                s.cpu_user_ns = us("user_usec");
                s.cpu_system_ns = us("system_usec");
                s.cpu_throttling = (
                    st.get("nr_throttled").copied().unwrap_or(0),
                    st.get("nr_periods").copied().unwrap_or(0),
                    us("throttled_usec"),
                );
            }
        } else {
            if let Some(dir) = self.dir("cpuacct") {
                s.cpu_total_ns = read_u64(&dir.join("cpuacct.usage")).unwrap_or(0);
                s.cpu_percpu_ns = read_trimmed(&dir.join("cpuacct.usage_percpu"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // cpuacct.stat is in USER_HZ ticks.
                let st = read_kv(&dir.join("cpuacct.stat"));
                // SAFETY: sysconf has no memory-safety preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
                let ticks = |k: &str| st.get(k).copied().unwrap_or(0) * 1_000_000_000 / hz;
                s.cpu_user_ns = ticks("user");
                s.cpu_system_ns = ticks("system");
            }
            if let Some(dir) = self.dir("cpu") {
                let st = read_kv(&dir.join("cpu.stat"));
                s.cpu_throttling = (
                    st.get("nr_throttled").copied().unwrap_or(0),
                    st.get("nr_periods").copied().unwrap_or(0),
                    st.get("throttled_time").copied().unwrap_or(0),
                );
            }
        }
        if let Some(dir) = self.dir("pids") {
            s.pids_current = read_u64(&dir.join("pids.current")).unwrap_or(0);
            s.pids_limit = read_u64(&dir.join("pids.max")).unwrap_or(0);
        }
        s
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dir("memory") else {
            return 0;
        };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        read_kv(&dir.join(file))
            .get("oom_kill")
            .copied()
            .unwrap_or(0)
    }

    /// Freezes (pause) or thaws (resume) every process of the cgroup.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        if self.v2 {
            let dir = self
                .dir("")
                .ok_or_else(|| AgentError::FailedPrecondition("no cgroup".into()))?;
            write_file(dir, "cgroup.freeze", if frozen { "1" } else { "0" })
        } else {
            let dir = self.dir("freezer").ok_or_else(|| {
                AgentError::FailedPrecondition("the guest has no freezer cgroup controller".into())
            })?;
            write_file(
                dir,
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            )
        }
    }

    /// Kills every process left in the cgroup and waits (up to `timeout`) until it is empty.
    pub fn kill_all(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // A frozen (paused) task only dies once thawed.
            let _ = self.freeze(false);
            if Instant::now() >= deadline {
                tracing::warn!(?pids, "processes still in cgroup after SIGKILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills what is left and removes the cgroup directories.
    pub fn destroy(&self) -> Result<()> {
        self.kill_all(Duration::from_secs(5));
        self.remove_dirs_checked()
    }

    fn remove_dirs(&self) {
        let _ = self.remove_dirs_checked();
    }

    fn remove_dirs_checked(&self) -> Result<()> {
        let mut first_err = None;
        for dir in self.paths() {
            // rmdir can see EBUSY for a moment while the last task is being released.
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if tries < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        first_err.get_or_insert(AgentError::io(
                            format!("remove cgroup {}", dir.display()),
                            e,
                        ));
                        break;
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// On v2, enables the controllers the agent uses in every ancestor of `rel`.
fn enable_v2_controllers(mount: &Path, rel: &Path) {
    let available = read_trimmed(&mount.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["cpu", "cpuset", "memory", "pids", "io"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let mut dir = mount.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    // Every ancestor of the leaf (not the leaf itself) must delegate the controllers.
    for (i, c) in std::iter::once(None)
        .chain(comps.iter().map(Some))
        .enumerate()
    {
        if let Some(c) = c {
            dir.push(c);
            let _ = std::fs::create_dir_all(&dir);
        }
        if i == comps.len() {
            break;
        }
        for w in &wanted {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), w) {
                tracing::debug!(dir = %dir.display(), controller = %w, error = %e,
                    "cannot enable cgroup controller");
            }
        }
    }
}

/// A new v1 cpuset cgroup starts with empty `cpus`/`mems` and accepts no task: copy them down
/// from the nearest ancestor that has them.
fn init_v1_cpuset(mount: &Path, leaf: &Path) {
    let Ok(rel) = leaf.strip_prefix(mount) else {
        return;
    };
    let mut parent = mount.to_path_buf();
    for c in rel.components() {
        let dir = parent.join(c);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let cur = read_trimmed(&dir.join(file)).unwrap_or_default();
            if cur.is_empty() {
                if let Some(v) = read_trimmed(&parent.join(file)) {
                    let _ = std::fs::write(dir.join(file), v);
                }
            }
        }
        parent = dir;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTINFO: &str = "\
25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
28 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
29 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";

    #[test]
    fn detects_v1_controllers_and_own_paths() {
        let own = "4:memory:/confined\n3:cpu,cpuacct:/\n0::/\n";
        let h = Hierarchy::parse(V1_MOUNTINFO, own).unwrap();
        let Hierarchy::V1 { mounts, own } = h else {
            panic!("expected v1")
        };
        assert_eq!(mounts["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts["cpuacct"], mounts["cpu"]);
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(!mounts.contains_key("name=systemd"));
        assert_eq!(own["memory"], PathBuf::from("/confined"));
    }

    #[test]
    fn detects_v2() {
        let info = "30 1 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Hierarchy::parse(info, "0::/\n"),
            Some(Hierarchy::V2 {
                mount: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(Hierarchy::parse("", ""), None);
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(
            container_cgroup_path(None, "c1").unwrap(),
            PathBuf::from("kata-agent/c1")
        );
        assert_eq!(
            container_cgroup_path(Some(Path::new("/kubepods/pod1/c1")), "c1").unwrap(),
            PathBuf::from("kubepods/pod1/c1")
        );
        assert_eq!(
            container_cgroup_path(Some(Path::new("system.slice:kata:c1")), "c1").unwrap(),
            PathBuf::from("kata-agent/c1")
        );
        let err = container_cgroup_path(Some(Path::new("/a/../../etc")), "c1").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().starts_with("linux.cgroupsPath"));
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 0);
    }

    #[test]
    fn applies_resources_to_a_fake_v2_tree() {
        use oci_spec::runtime::{
            LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
        };
        let dir = tempfile::tempdir().unwrap();
        let h = Hierarchy::V2 {
            mount: dir.path().to_path_buf(),
        };
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(32i64).build().unwrap())
            .build()
            .unwrap();
        let cg = Cgroup::create(&h, Path::new("kata-agent/c1"), Some(&res)).unwrap();
        let leaf = dir.path().join("kata-agent/c1");
        let read = |f: &str| std::fs::read_to_string(leaf.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("pids.max"), "32");
        assert_eq!(cg.paths(), vec![leaf]);
    }
}
