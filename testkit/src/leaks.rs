//! Leak checks: which processes name something, what is mounted under a path.

use std::path::Path;

/// The live processes (zombies left out) with their command lines, arguments joined by spaces.
pub fn cmdlines() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| {
                    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    if stat.contains(") Z") {
                        return None;
                    }
                    Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The live processes whose command line contains `needle` but not `except` (the name of the
/// test binary, so that it does not find itself), with their pids and command lines.
pub fn processes_mentioning(needle: &str, except: &str) -> Vec<(u32, String)> {
    cmdlines()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(needle) && !cmdline.contains(except))
        .collect()
}

/// The helper processes kata-rs runs for a sandbox besides the VMM, by program name: a leak
/// check looks for each of them naming the sandbox's directory.
pub const SANDBOX_HELPERS: &[&str] = &["virtiofsd", "vhost-device-vsock"];

/// The live helper processes ([`SANDBOX_HELPERS`]) whose command line names `dir`.
pub fn helpers_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    cmdlines()
        .into_iter()
        .filter(|(_, cmdline)| {
            let program = cmdline.split(' ').next().unwrap_or_default();
            SANDBOX_HELPERS
                .iter()
                .any(|h| Path::new(program).file_name() == Some(std::ffi::OsStr::new(h)))
                && cmdline.contains(&needle)
        })
        .collect()
}

/// The mount points at or below `dir` (by prefix of the path text), from
/// `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// The host cgroup directories named `rel` (a path relative to a hierarchy root, such as
/// `kata_sandboxed_pod/<id>` or `default/<id>`) that exist under `/sys/fs/cgroup`: in each v1
/// controller's hierarchy and in the unified one. A sandbox that is gone leaves none.
pub fn cgroup_dirs(rel: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = rel.trim_start_matches('/');
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join(rel))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    let unified = root.join(rel);
    if unified.is_dir() {
        found.push(unified);
    }
    found
}

/// The cgroup of process `pid` in the v1 hierarchy of `controller` (`memory`), as
/// `/proc/<pid>/cgroup` names it (`/kata_sandboxed_pod/<id>`); `None` if it has none.
pub fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
}
