//! An in-process VMM's threads in the sandbox's host cgroups (the built-in VMM: its vCPU and
//! device threads are threads of this runtime's process, which has no VMM pid to move).
//!
//! - cgroup v1: each thread is placed alone through the controllers' `tasks` files, as
//!   runtime-rs places a VMM's vCPU threads: the vCPUs into the sandbox cgroup, the device
//!   threads there too with `sandbox_cgroup_only`, else into the overhead cgroup. The rest of
//!   the process stays where it was.
//! - cgroup v2: the kernel keeps every thread of a process in one domain; a thread can only
//!   move into a *threaded* cgroup whose domain is its process's own cgroup, so the sandbox's
//!   (a domain, with the memory controller) can never hold some of this process's threads.
//!   The whole process joins the sandbox cgroup instead, as runtime-rs puts its shim process
//!   in and as the QEMU backend's whole process joins on v2. One process can sit in one
//!   sandbox's cgroup at a time: a second in-process sandbox leaves it where the first put it
//!   (logged).
//!
//! On release the threads (v1) or the process (v2) go back to the cgroups the process was in
//! when they were moved (read from `/proc/self/cgroup`), not to the root cgroup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::hierarchy::{Cgroup, CgroupVersion, Hierarchy};
use crate::{Error, Result};

/// v2: which sandbox cgroup each process (pid) was moved into by this module.
static CLAIMS: Mutex<BTreeMap<u32, PathBuf>> = Mutex::new(BTreeMap::new());

fn claims() -> std::sync::MutexGuard<'static, BTreeMap<u32, PathBuf>> {
    CLAIMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What was moved, to put back on release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InProcess {
    /// The runtime's process.
    pub(crate) pid: u32,
    /// The process's cgroup in each base of the hierarchy (same order as its bases).
    pub(crate) home: Vec<PathBuf>,
    /// v1: the threads moved; v2: empty (the process moved).
    pub(crate) tids: Vec<u32>,
    /// v2: the sandbox cgroup directory the process was moved into (`None`: not moved).
    pub(crate) claimed: Option<PathBuf>,
}

/// The cgroup directory of the process in each base of `hier`, from its `/proc/<pid>/cgroup`
/// text (`0::/path` on v2, `N:controller,...:/path` on v1). A base the text does not name
/// is [`Error::Cgroup`] naming the file.
pub(crate) fn home_dirs(hier: &Hierarchy, proc_cgroup: &str) -> Result<Vec<PathBuf>> {
    let entries: Vec<(&str, &str)> = proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            Some((controllers, path))
        })
        .collect();
    hier.bases()
        .iter()
        .map(|(controller, base)| {
            let path = entries.iter().find_map(|(cs, p)| match hier.version() {
                CgroupVersion::V2 => cs.is_empty().then_some(*p),
                CgroupVersion::V1 => cs.split(',').any(|c| c == controller).then_some(*p),
            });
            let path = path.ok_or_else(|| Error::Cgroup {
                action: format!(
                    "find this process's {controller} cgroup (to put the built-in VMM's \
                     threads back later) in"
                ),
                path: PathBuf::from("/proc/self/cgroup"),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
            match path.trim_start_matches('/') {
                "" => Ok(base.clone()),
                rel => crate::path::checked_within(base, Path::new(rel), "/proc/self/cgroup"),
            }
        })
        .collect()
}

/// Moves the in-process VMM's threads in (see the module's text): `vcpus` into `sandbox`,
/// `devices` into `overhead` when there is one, else `sandbox`. `home` is where the process
/// is now ([`home_dirs`]).
pub(crate) fn move_in(
    hier: &Hierarchy,
    sandbox: &Cgroup,
    overhead: Option<&Cgroup>,
    pid: u32,
    home: Vec<PathBuf>,
    vcpus: &[u32],
    devices: &[u32],
) -> Result<InProcess> {
    let mut moved = InProcess {
        pid,
        home,
        tids: Vec::new(),
        claimed: None,
    };
    match hier.version() {
        CgroupVersion::V1 => {
            moved.tids.extend_from_slice(vcpus);
            moved.tids.extend_from_slice(devices);
            let placed = hier
                .add_threads(sandbox, vcpus)
                .and_then(|()| hier.add_threads(overhead.unwrap_or(sandbox), devices));
            if let Err(e) = placed {
                // Whatever moved goes back: a failed move leaves nothing in the sandbox's
                // cgroups.
                if let Err(back) = move_out(hier, &moved) {
                    tracing::error!(error = %back, "cannot put the built-in VMM's threads back");
                }
                return Err(e);
            }
            tracing::debug!(?vcpus, ?devices, cgroup = %sandbox.rel.display(), "the built-in VMM's threads are in the sandbox's cgroups");
        }
        CgroupVersion::V2 => {
            let dir = sandbox.dirs[0].1.clone();
            let mut claims = claims();
            if let Some(other) = claims.get(&pid).filter(|d| **d != dir) {
                tracing::warn!(
                    pid,
                    held_by = %other.display(),
                    cgroup = %dir.display(),
                    "cgroup v2 keeps a process's threads in one cgroup and this process already \
                     sits in another in-process sandbox's: this sandbox's vCPUs are counted there"
                );
                return Ok(moved);
            }
            hier.add_procs(sandbox, &[pid])?;
            claims.insert(pid, dir.clone());
            moved.claimed = Some(dir);
            tracing::debug!(pid, cgroup = %sandbox.rel.display(), "cgroup v2: the runtime's process (the built-in VMM's threads with it) is in the sandbox cgroup");
        }
    }
    Ok(moved)
}

/// Puts back what [`move_in`] moved: the threads (v1) or the process (v2) into `home`. A
/// thread that has ended is skipped.
pub(crate) fn move_out(hier: &Hierarchy, moved: &InProcess) -> Result<()> {
    let homes = moved.home.iter().map(|d| Cgroup {
        rel: PathBuf::new(),
        dirs: vec![(String::new(), d.clone())],
    });
    match hier.version() {
        CgroupVersion::V1 => {
            for home in homes {
                hier.add_threads(&home, &moved.tids)?;
            }
        }
        CgroupVersion::V2 => {
            let Some(dir) = &moved.claimed else {
                return Ok(());
            };
            let mut claims = claims();
            // Only while this process still sits where this sandbox put it.
            if claims.get(&moved.pid) == Some(dir) {
                for home in homes {
                    hier.add_procs(&home, &[moved.pid])?;
                }
                claims.remove(&moved.pid);
            }
        }
    }
    Ok(())
}
