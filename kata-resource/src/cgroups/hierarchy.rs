//! The host's cgroup filesystems under one root (`/sys/fs/cgroup`, or a fixture laid out
//! like it): v1 (a directory per controller) or v2 (one unified hierarchy), what controllers
//! it has, and the few operations the sandbox needs: make a cgroup (and the ancestors it
//! lacks), move processes and threads in, write a cpuset, move everything out, remove it.
//!
//! Why not cgroups-rs's `Cgroup` for this: its v1 hierarchy is read from
//! `/proc/self/mountinfo` and its v2 root and controller list are fixed at `/sys/fs/cgroup`,
//! so it cannot be pointed at a fixture; it makes missing ancestors with `create_dir_all` and
//! never removes them; and it only logs a cpuset it could not initialise. These operations
//! are plain file writes, so this crate does them itself, on any root, with errors that name
//! the file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::path::checked_within;
use crate::{Error, Result};

use super::path::FIELD;

/// The controllers every sandbox cgroup needs (both versions).
pub(crate) const REQUIRED: [&str; 3] = ["cpu", "cpuset", "memory"];

/// Controllers joined too where the host has them.
const OPTIONAL: [&str; 2] = ["cpuacct", "pids"];

/// The cgroup version of a hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// cgroup v1: a directory per controller under the root.
    V1,
    /// cgroup v2: one unified hierarchy at the root.
    V2,
}

/// How cgroup directories are made and removed. The kernel populates a new cgroup's control
/// files and removes them with the directory; a fixture (tests only) is a plain directory
/// tree, so it emulates both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fs {
    /// The kernel's cgroupfs.
    Kernel,
    /// A temp dir laid out like cgroupfs (tests).
    #[cfg(test)]
    Fixture,
}

/// The cgroup filesystems under one root.
#[derive(Clone, Debug)]
pub(crate) struct Hierarchy {
    root: PathBuf,
    version: CgroupVersion,
    /// v1: the distinct controller directories (`<root>/cpu`, ...), each with its
    /// controller name; v2: the root alone, named `unified`.
    bases: Vec<(String, PathBuf)>,
    /// v2: the controllers to enable down to the sandbox's cgroups.
    v2_controllers: Vec<String>,
    fs: Fs,
}

/// One cgroup: the same relative path in each base of a hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cgroup {
    /// Relative to each base.
    pub(crate) rel: PathBuf,
    /// `(controller, absolute dir)`; one entry on v2.
    pub(crate) dirs: Vec<(String, PathBuf)>,
}

impl Hierarchy {
    /// Reads what `root` holds: v2 if `<root>/cgroup.controllers` exists, else v1 with a
    /// directory per controller. A controller of [`REQUIRED`] that is not there is
    /// [`Error::CgroupController`].
    pub(crate) fn detect(root: &Path, fs: Fs) -> Result<Hierarchy> {
        let root = crate::path::checked_absolute(root, "cgroup root")?;
        let missing = |controller: &str, reason: String| Error::CgroupController {
            controller: controller.to_owned(),
            root: root.clone(),
            reason,
        };
        let controllers_file = root.join("cgroup.controllers");
        if controllers_file.is_file() {
            let available = read_words(&controllers_file)?;
            for c in REQUIRED {
                if !available.iter().any(|a| a == c) {
                    return Err(missing(
                        c,
                        format!(
                            "cgroup v2: it is not in {} ({:?})",
                            controllers_file.display(),
                            available.join(" ")
                        ),
                    ));
                }
            }
            let v2_controllers = REQUIRED
                .iter()
                .chain(OPTIONAL.iter().filter(|c| **c != "cpuacct"))
                .filter(|c| available.iter().any(|a| a == *c))
                .map(|c| c.to_string())
                .collect();
            return Ok(Hierarchy {
                bases: vec![("unified".into(), root.clone())],
                root,
                version: CgroupVersion::V2,
                v2_controllers,
                fs,
            });
        }
        let mut bases: Vec<(String, PathBuf)> = Vec::new();
        for c in REQUIRED.iter().chain(OPTIONAL.iter()) {
            let dir = root.join(c);
            if !dir.join("cgroup.procs").is_file() {
                if REQUIRED.contains(c) {
                    return Err(missing(
                        c,
                        format!(
                            "cgroup v1: no hierarchy is mounted at {} (and {} is not a cgroup v2 \
                             root)",
                            dir.display(),
                            root.display()
                        ),
                    ));
                }
                continue;
            }
            // `cpu` and `cpuacct` are often one hierarchy (`cpu,cpuacct`) with two links.
            let real = dir.canonicalize().map_err(|e| Error::Cgroup {
                action: "resolve the controller directory".into(),
                path: dir.clone(),
                source: e,
            })?;
            if !bases
                .iter()
                .any(|(_, d)| d.canonicalize().ok().as_ref() == Some(&real))
            {
                bases.push((c.to_string(), dir));
            }
        }
        Ok(Hierarchy {
            root,
            version: CgroupVersion::V1,
            bases,
            v2_controllers: Vec::new(),
            fs,
        })
    }

    /// The root it was read from.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `(controller, base directory)`: a directory per controller on v1, the root on v2.
    pub(crate) fn bases(&self) -> &[(String, PathBuf)] {
        &self.bases
    }

    /// Its version.
    pub(crate) fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup at `rel` in every base, each checked to stay inside its base.
    pub(crate) fn cgroup(&self, rel: &Path) -> Result<Cgroup> {
        let dirs = self
            .bases
            .iter()
            .map(|(c, base)| Ok((c.clone(), checked_within(base, rel, FIELD)?)))
            .collect::<Result<_>>()?;
        Ok(Cgroup {
            rel: rel.to_owned(),
            dirs,
        })
    }

    /// Makes `cgroup` and the ancestors it lacks; the directories made are appended to
    /// `made` (parents first). On v1 a new cpuset gets its parent's CPUs and memory nodes;
    /// on v2 the controllers are enabled in each ancestor's `cgroup.subtree_control`. On error
    /// what was made stays in `made` for the caller to remove.
    pub(crate) fn create(&self, cgroup: &Cgroup, made: &mut Vec<PathBuf>) -> Result<()> {
        for ((controller, _), (_, base)) in cgroup.dirs.iter().zip(&self.bases) {
            let mut current = base.clone();
            for component in cgroup.rel.components() {
                if self.version == CgroupVersion::V2 {
                    self.enable_controllers(&current)?;
                }
                current.push(component);
                match self.mkdir(&current) {
                    Ok(()) => made.push(current.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::Cgroup {
                            action: "create the cgroup".into(),
                            path: current,
                            source: e,
                        })
                    }
                }
                if controller == "cpuset" {
                    init_cpuset(&current)?;
                }
            }
        }
        Ok(())
    }

    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)?;
        match self.fs {
            Fs::Kernel => Ok(()),
            #[cfg(test)]
            Fs::Fixture => fixture::populate(self, dir),
        }
    }

    /// v2: enables the controllers the sandbox needs for the children of `dir`.
    fn enable_controllers(&self, dir: &Path) -> Result<()> {
        let available = read_words(&dir.join("cgroup.controllers"))?;
        let enabled = read_words(&dir.join("cgroup.subtree_control"))?;
        let wanted: Vec<&String> = self
            .v2_controllers
            .iter()
            .filter(|c| available.contains(c) && !enabled.contains(c))
            .collect();
        for c in REQUIRED {
            if !available.iter().any(|a| a == c) {
                return Err(Error::CgroupController {
                    controller: c.to_owned(),
                    root: self.root.clone(),
                    reason: format!(
                        "cgroup v2: it is not available in {} (the parent does not delegate it)",
                        dir.display()
                    ),
                });
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let value = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let file = dir.join("cgroup.subtree_control");
        write_file(&file, &value).map_err(|e| Error::Cgroup {
            action: format!("enable the controllers {value:?} in"),
            path: file.clone(),
            source: e,
        })?;
        #[cfg(test)]
        if self.fs == Fs::Fixture {
            fixture::record_subtree_control(dir, &enabled, &wanted);
        }
        Ok(())
    }

    /// Moves the processes `pids` (every thread of each) into `cgroup`. A process that is
    /// gone is skipped.
    pub(crate) fn add_procs(&self, cgroup: &Cgroup, pids: &[u32]) -> Result<()> {
        for (_, dir) in &cgroup.dirs {
            for pid in pids {
                self.move_in(&dir.join("cgroup.procs"), *pid, "process")?;
            }
        }
        Ok(())
    }

    /// v1: moves the threads `tids` (alone, not their processes) into `cgroup`.
    pub(crate) fn add_threads(&self, cgroup: &Cgroup, tids: &[u32]) -> Result<()> {
        for (_, dir) in &cgroup.dirs {
            for tid in tids {
                self.move_in(&dir.join("tasks"), *tid, "thread")?;
            }
        }
        Ok(())
    }

    fn move_in(&self, file: &Path, id: u32, what: &str) -> Result<()> {
        let written = match self.fs {
            Fs::Kernel => write_file(file, &id.to_string()),
            #[cfg(test)]
            Fs::Fixture => {
                let base = self
                    .bases
                    .iter()
                    .map(|(_, b)| b)
                    .find(|b| file.starts_with(b))
                    .unwrap_or(&self.root);
                fixture::move_pid(base, file, id)
            }
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                tracing::debug!(id, file = %file.display(), "the {what} is gone: not moved");
                Ok(())
            }
            Err(e) => Err(Error::Cgroup {
                action: format!("move {what} {id} into"),
                path: file.to_owned(),
                source: e,
            }),
        }
    }

    /// Writes `value` into the cpuset file `name` (`cpuset.cpus`, `cpuset.mems`) of `cgroup`;
    /// an empty `value` puts back the parent's (v1) or inherits it (v2). A value the host
    /// refuses is [`Error::CgroupLimit`], naming `field`.
    pub(crate) fn set_cpuset(
        &self,
        cgroup: &Cgroup,
        name: &str,
        value: &str,
        field: &str,
    ) -> Result<()> {
        let Some((_, dir)) = cgroup
            .dirs
            .iter()
            .find(|(c, _)| c == "cpuset" || self.version == CgroupVersion::V2)
        else {
            return Ok(());
        };
        let file = dir.join(name);
        let value = match (value.is_empty(), self.version) {
            (true, CgroupVersion::V1) => parent_value(dir, name)?,
            _ => value.to_owned(),
        };
        write_file(&file, &value).map_err(|e| Error::CgroupLimit {
            field: field.to_owned(),
            value: value.clone(),
            file: file.clone(),
            source: e,
        })
    }

    /// Moves every process of `cgroup` to the root of its hierarchy, then removes its
    /// directories (retried while the kernel still counts exiting tasks). A directory already
    /// gone is fine.
    pub(crate) fn remove(&self, cgroup: &Cgroup) -> Result<()> {
        for ((_, dir), (_, base)) in cgroup.dirs.iter().zip(&self.bases) {
            if dir.exists() {
                self.remove_tree(dir, base, 0)?;
            }
        }
        Ok(())
    }

    /// Removes `dir` and the cgroups below it (a VMM's or an agent's own sub-cgroups; at
    /// most 16 levels, deepest first), moving their processes to `base` first.
    fn remove_tree(&self, dir: &Path, base: &Path, depth: usize) -> Result<()> {
        if depth < 16 {
            let children: Vec<PathBuf> = fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            for child in children {
                self.remove_tree(&child, base, depth + 1)?;
            }
        }
        for pid in read_words(&dir.join("cgroup.procs")).unwrap_or_default() {
            if let Ok(pid) = pid.parse::<u32>() {
                tracing::warn!(pid, cgroup = %dir.display(), "a process is still in the sandbox's cgroup: moved to the root cgroup");
                self.move_in(&base.join("cgroup.procs"), pid, "process")?;
            }
        }
        self.rmdir(dir).map_err(|e| Error::Cgroup {
            action: "remove the cgroup".into(),
            path: dir.to_owned(),
            source: e,
        })
    }

    /// Removes an empty cgroup directory, retrying a few times on `EBUSY` (the kernel still
    /// counting tasks that exit) as runc does; gone already is fine.
    pub(crate) fn rmdir(&self, dir: &Path) -> io::Result<()> {
        self.rmdir_tries(dir, 5)
    }

    /// [`rmdir`](Self::rmdir) once: for an ancestor that other cgroups may still use.
    pub(crate) fn rmdir_once(&self, dir: &Path) -> io::Result<()> {
        self.rmdir_tries(dir, 0)
    }

    fn rmdir_tries(&self, dir: &Path, retries: u32) -> io::Result<()> {
        let mut delay = Duration::from_millis(10);
        for attempt in 0.. {
            let removed = match self.fs {
                Fs::Kernel => fs::remove_dir(dir),
                #[cfg(test)]
                Fs::Fixture => fixture::rmdir(dir),
            };
            match removed {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < retries => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }
}

/// Writes `value` to a control file that exists (never creates one), in one write.
pub(crate) fn write_file(file: &Path, value: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)?;
    f.write_all(value.as_bytes())
}

/// The whitespace-separated words of a control file.
pub(crate) fn read_words(file: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(file).map_err(|e| Error::Cgroup {
        action: "read".into(),
        path: file.to_owned(),
        source: e,
    })?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// The parent's value of the cpuset file `name`.
fn parent_value(dir: &Path, name: &str) -> Result<String> {
    let parent = dir.parent().unwrap_or(dir).join(name);
    fs::read_to_string(&parent)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::Cgroup {
            action: "read".into(),
            path: parent,
            source: e,
        })
}

/// v1: a new cpuset has no CPUs and no memory nodes, and no process may join it until it has:
/// it gets its parent's.
fn init_cpuset(dir: &Path) -> Result<()> {
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(name);
        let current = fs::read_to_string(&file).unwrap_or_default();
        if current.trim().is_empty() {
            let value = parent_value(dir, name)?;
            write_file(&file, &value).map_err(|e| Error::Cgroup {
                action: format!("initialise the cpuset with its parent's {value:?}"),
                path: file.clone(),
                source: e,
            })?;
        }
    }
    Ok(())
}

/// Test fixtures: a temp dir laid out like cgroupfs, and the kernel's part emulated (a new
/// cgroup's control files, `rmdir` of a directory holding only them).
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    /// Lays out `root` like a v1 host (`v2 = false`: a directory per controller among
    /// `controllers`) or a v2 one (`cgroup.controllers` listing `controllers`).
    pub(crate) fn lay_out(root: &Path, v2: bool, controllers: &[&str]) {
        if v2 {
            fs::write(root.join("cgroup.controllers"), controllers.join(" ")).unwrap();
            fs::write(root.join("cgroup.subtree_control"), "").unwrap();
            fs::write(root.join("cgroup.procs"), "").unwrap();
            fs::write(root.join("cpuset.cpus"), "").unwrap();
            fs::write(root.join("cpuset.mems"), "").unwrap();
            return;
        }
        for c in controllers {
            let dir = root.join(c);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.procs"), "").unwrap();
            fs::write(dir.join("tasks"), "").unwrap();
            if *c == "cpuset" {
                fs::write(dir.join("cpuset.cpus"), "0-3\n").unwrap();
                fs::write(dir.join("cpuset.mems"), "0\n").unwrap();
            }
        }
    }

    /// What the kernel puts in a new cgroup.
    pub(super) fn populate(h: &Hierarchy, dir: &Path) -> io::Result<()> {
        let mut files = vec!["cgroup.procs"];
        match h.version {
            CgroupVersion::V1 => {
                files.push("tasks");
                if dir.starts_with(h.root.join("cpuset")) {
                    files.extend(["cpuset.cpus", "cpuset.mems"]);
                }
            }
            CgroupVersion::V2 => {
                files.extend(["cgroup.subtree_control", "cpuset.cpus", "cpuset.mems"]);
                let parent = dir.parent().expect("a cgroup has a parent");
                let delegated = fs::read_to_string(parent.join("cgroup.subtree_control"))?;
                fs::write(dir.join("cgroup.controllers"), delegated)?;
            }
        }
        for f in files {
            fs::write(dir.join(f), "")?;
        }
        Ok(())
    }

    /// The kernel's move of a process (`cgroup.procs`) or thread (`tasks`): listed in `file`
    /// and in no other file of that name in its hierarchy, `base`. Refused (`ENOENT`) if `file` is not
    /// there, like a write to a control file the kernel did not make.
    pub(super) fn move_pid(base: &Path, file: &Path, id: u32) -> io::Result<()> {
        let name = file.file_name().expect("a control file");
        // Refused like a write to a control file the kernel did not make.
        fs::metadata(file)?;
        fn walk(dir: &Path, name: &std::ffi::OsStr, id: u32) -> io::Result<()> {
            for entry in fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    walk(&path, name, id)?;
                } else if path.file_name() == Some(name) {
                    let kept: Vec<String> = fs::read_to_string(&path)?
                        .lines()
                        .filter(|l| *l != id.to_string())
                        .map(|l| format!("{l}\n"))
                        .collect();
                    fs::write(&path, kept.concat())?;
                }
            }
            Ok(())
        }
        walk(base, name, id)?;
        let mut now = fs::read_to_string(file)?;
        now.push_str(&format!("{id}\n"));
        fs::write(file, now)
    }

    /// `cgroup.subtree_control` as the kernel shows it after `+c` writes: the union.
    pub(super) fn record_subtree_control(dir: &Path, before: &[String], added: &[&String]) {
        let mut all: Vec<String> = before.to_vec();
        all.extend(added.iter().map(|s| s.to_string()));
        fs::write(dir.join("cgroup.subtree_control"), all.join(" ")).unwrap();
    }

    /// The kernel's `rmdir` of a cgroup: `EBUSY` while it has processes, `ENOTEMPTY` while it
    /// has child cgroups; its control files go with it.
    pub(super) fn rmdir(dir: &Path) -> io::Result<()> {
        if !dir.exists() {
            return Err(io::ErrorKind::NotFound.into());
        }
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
            }
        }
        fs::remove_dir_all(dir)
    }
}
