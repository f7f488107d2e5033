//! The host cgroups of a `linux_container` sandbox's containers: where each one goes, whether
//! the host has the controllers its spec asks for, and removing what is left.
//!
//! libcontainer (libcgroups, cgroupfs driver) makes a container's cgroup in every mounted
//! hierarchy (v1: one per controller; v2: the unified one) and removes it when the container
//! is deleted. It does not remove the ancestors it made: this module records them
//! ([`missing_ancestors`]) and removes them once empty ([`remove_empty`]). A container whose
//! spec has no `linux.cgroupsPath` goes to `kata_linux/<sandbox id>/<container id>`.
//!
//! A spec whose `linux.resources` needs a controller the host does not have mounted is
//! refused before anything is made, naming the field and the controller
//! ([`check_controllers`]): libcgroups would otherwise fail half-way through the create.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};

/// The parent of the containers' cgroups when their specs name none.
pub(super) const DEFAULT_PARENT: &str = "kata_linux";

/// Where the cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup (relative to each hierarchy's root) container `container_id` of sandbox
/// `sandbox_id` goes to: the spec's `linux.cgroupsPath` (cgroupfs form), or
/// `kata_linux/<sandbox id>/<container id>`.
pub(super) fn container_cgroup(
    sandbox_id: &str,
    container_id: &str,
    spec_path: Option<&Path>,
) -> Result<PathBuf> {
    let Some(path) = spec_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Path::new(DEFAULT_PARENT)
            .join(sandbox_id)
            .join(container_id));
    };
    let text = path.display().to_string();
    if text.contains(':') {
        return Err(Error::invalid(
            "linux.cgroupsPath",
            format!(
                "{text:?} is in the systemd driver's form (slice:prefix:name); the \
                 linux_container handler uses the cgroupfs driver: give a path such as \
                 /kata/{container_id}, or none"
            ),
        ));
    }
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            _ => {
                return Err(Error::invalid(
                    "linux.cgroupsPath",
                    format!("{text:?} leaves the cgroup hierarchy (`..`)"),
                ))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(Error::invalid(
            "linux.cgroupsPath",
            format!("{text:?} names the root cgroup; give a cgroup of the container's own"),
        ));
    }
    Ok(rel)
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hierarchies {
    /// The unified hierarchy alone (v2).
    unified: bool,
    /// The controllers mounted (v1: each hierarchy's; v2: the root's `cgroup.controllers`).
    controllers: BTreeSet<String>,
}

impl Hierarchies {
    /// This host's, from `/proc/self/mountinfo` (v1) or the root's `cgroup.controllers` (v2).
    pub(super) fn of_host() -> Hierarchies {
        let root = Path::new(CGROUP_ROOT);
        match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(text) => Hierarchies {
                unified: true,
                controllers: text.split_whitespace().map(str::to_string).collect(),
            },
            Err(_) => Hierarchies {
                unified: false,
                controllers: v1_controllers(
                    &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
                ),
            },
        }
    }

    /// The directories of cgroup `rel` in every hierarchy (existing or not).
    fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        if self.unified {
            return vec![root.join(rel)];
        }
        std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path().join(rel))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The v1 controllers mounted, from a mountinfo text (`cgroup` filesystems' super options).
fn v1_controllers(mountinfo: &str) -> BTreeSet<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .filter_map(|(_, fs)| {
            let mut parts = fs.split(' ');
            (parts.next()? == "cgroup").then_some(())?;
            let _source = parts.next()?;
            parts.next()
        })
        .flat_map(|opts| opts.split(',').map(str::to_string).collect::<Vec<_>>())
        // Super options that are not controllers: access, named hierarchies (`name=`), and
        // cgroup v1's own flags.
        .filter(|o| {
            !o.contains('=')
                && !matches!(
                    o.as_str(),
                    "rw" | "ro"
                        | "xattr"
                        | "noprefix"
                        | "clone_children"
                        | "cpuset_v2_mode"
                        | "favordynmods"
                        | "all"
                        | "none"
                )
        })
        .collect()
}

/// Refuses `resources` when it asks for a controller `host` lacks, naming the spec field, the
/// controller and what the host has.
pub(super) fn check_controllers(resources: &LinuxResources, host: &Hierarchies) -> Result<()> {
    let mut needs: Vec<(&str, &str)> = Vec::new();
    if resources.memory().is_some() {
        needs.push(("linux.resources.memory", "memory"));
    }
    if let Some(cpu) = resources.cpu() {
        if cpu.shares().is_some()
            || cpu.quota().is_some()
            || cpu.period().is_some()
            || cpu.realtime_runtime().is_some()
            || cpu.realtime_period().is_some()
        {
            needs.push(("linux.resources.cpu", "cpu"));
        }
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            needs.push(("linux.resources.cpu.cpus/mems", "cpuset"));
        }
    }
    if resources.pids().is_some() {
        needs.push(("linux.resources.pids", "pids"));
    }
    if resources.block_io().is_some() {
        needs.push((
            "linux.resources.blockIO",
            if host.unified { "io" } else { "blkio" },
        ));
    }
    if resources
        .hugepage_limits()
        .as_ref()
        .is_some_and(|h| !h.is_empty())
    {
        needs.push(("linux.resources.hugepageLimits", "hugetlb"));
    }
    if let Some(net) = resources.network() {
        if net.class_id().is_some() {
            needs.push(("linux.resources.network.classID", "net_cls"));
        }
        if net.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            needs.push(("linux.resources.network.priorities", "net_prio"));
        }
    }
    if !host.unified && resources.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        needs.push(("linux.resources.devices", "devices"));
    }
    match needs
        .into_iter()
        .find(|(_, c)| !host.controllers.contains(*c))
    {
        None => Ok(()),
        Some((field, controller)) => Err(Error::invalid(
            field,
            format!(
                "needs the host's `{controller}` cgroup controller, which this host does not \
                 have mounted (it has: {}); drop the setting, or run the container on a host \
                 with the controller ({} hierarchy)",
                host.controllers
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if host.unified {
                    "cgroup v2"
                } else {
                    "cgroup v1"
                },
            ),
        )),
    }
}

/// Whether cgroup `rel` exists in any hierarchy.
pub(super) fn exists(rel: &Path, host: &Hierarchies) -> bool {
    host.dirs(rel).iter().any(|d| d.exists())
}

/// The ancestors of `rel` (and `rel` itself), deepest first, that exist in none of the
/// hierarchies now: the ones a create will make.
pub(super) fn missing_ancestors(rel: &Path, host: &Hierarchies) -> Vec<PathBuf> {
    rel.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .filter(|a| host.dirs(a).iter().all(|d| !d.exists()))
        .map(Path::to_path_buf)
        .collect()
}

/// Removes each of `dirs` (relative cgroups, any order) that is empty in every hierarchy,
/// deepest first; answers those still there (a cgroup with children or processes).
pub(super) fn remove_empty(dirs: &BTreeSet<PathBuf>, host: &Hierarchies) -> BTreeSet<PathBuf> {
    let mut deepest_first: Vec<&PathBuf> = dirs.iter().collect();
    deepest_first.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let mut left = BTreeSet::new();
    for rel in deepest_first {
        for dir in host.dirs(rel) {
            // rmdir of a cgroup with processes or children fails (EBUSY): it is kept.
            let _ = std::fs::remove_dir(&dir);
        }
        if host.dirs(rel).iter().any(|d| d.exists()) {
            left.insert(rel.clone());
        }
    }
    left
}

/// Kills every process in cgroup `rel` (thawed first) and removes it (a container whose
/// helper is gone: the cleanup of a sandbox whose owner died).
pub(super) fn kill_and_remove(rel: &Path, host: &Hierarchies) {
    for dir in host.dirs(rel) {
        if !dir.exists() {
            continue;
        }
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
        for _ in 0..50 {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill with a pid read from the cgroup and SIGKILL.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    const MOUNTINFO: &str = "\
35 26 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
38 35 0:33 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
39 35 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 35 0:35 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
";

    #[test]
    fn v1_controllers_are_read_from_the_cgroup_mounts() {
        let c = v1_controllers(MOUNTINFO);
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            ["cpu", "memory", "net_cls", "net_prio"]
        );
    }

    #[test]
    fn a_controller_the_host_lacks_is_refused_naming_the_field() {
        let host = Hierarchies {
            unified: false,
            controllers: v1_controllers(MOUNTINFO),
        };
        let memory = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        check_controllers(&memory, &host).unwrap();
        let huge = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(1 << 21)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        let e = check_controllers(&huge, &host).unwrap_err().to_string();
        assert!(
            e.contains("linux.resources.hugepageLimits")
                && e.contains("`hugetlb`")
                && e.contains("cpu, memory"),
            "{e}"
        );
    }

    #[test]
    fn cgroup_paths_are_the_specs_or_kata_linux_and_never_leave_the_hierarchy() {
        assert_eq!(
            container_cgroup("sb", "c1", None).unwrap(),
            Path::new("kata_linux/sb/c1")
        );
        assert_eq!(
            container_cgroup("sb", "c1", Some(Path::new("/default/c1"))).unwrap(),
            Path::new("default/c1")
        );
        for bad in ["/a/../../etc", "system.slice:cri:c1", "/"] {
            let e = container_cgroup("sb", "c1", Some(Path::new(bad)))
                .unwrap_err()
                .to_string();
            assert!(e.contains("linux.cgroupsPath"), "{bad}: {e}");
        }
    }
}
