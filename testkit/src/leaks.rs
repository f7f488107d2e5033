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

/// The mount points at or below `dir` (whole path components: `/a/sb` is not under `/a/s`),
/// from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mount_points(&text)
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// The mount points of a mountinfo text, unescaped (`\040` is a space, ...).
fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the sandbox helpers naming `dir` hold in mount namespaces of their own (virtiofsd with
/// `--sandbox=namespace`, whose root is the shared directory): every mount point there other
/// than that root, as `(pid, mount point as the helper sees it)`, one namespace once. The
/// host's mounts in the shared directory reach that namespace as copies; a copy the host's
/// release did not take out with it is a leak this process's mountinfo does not show.
pub fn helper_namespace_mounts(dir: &Path) -> Vec<(u32, String)> {
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for (pid, _) in helpers_naming(dir) {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if Some(&ns) == ours.as_ref() || seen.contains(&ns) {
            continue;
        }
        seen.push(ns);
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        out.extend(mount_points(&text).filter(|m| m != "/").map(|m| (pid, m)));
    }
    out
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

/// What is left of containerd sandbox `id` whose runtime keeps its directory under `root` and
/// whose shim program is `shim`, in containerd namespace `namespace` (the cgroup parent of
/// `ctr run`): processes naming the sandbox directory or the shim of `id`, mounts of the
/// directory or the container's rootfs, the directory, the host cgroups Kata's layout and
/// `ctr` give it, and containerd's task and container. One line per thing left; empty when
/// clean. The crash matrices (host and lab) add what they know more of.
pub fn sandbox_leftovers(
    c: &crate::containerd::Containerd,
    root: &Path,
    shim: &str,
    namespace: &str,
    id: &str,
) -> Vec<String> {
    let dir = format!("{}/{id}/", root.display());
    let mut left: Vec<String> = cmdlines()
        .into_iter()
        .filter(|(_, cmd)| {
            cmd.contains(&dir) || (cmd.contains(shim) && cmd.contains(&format!("-id {id}")))
        })
        .map(|(pid, cmd)| format!("process {pid}: {cmd}"))
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(
        mountinfo
            .lines()
            .filter(|l| l.contains(&dir) || l.contains(&format!("/{id}/rootfs")))
            .map(|l| format!("mount {l}")),
    );
    if Path::new(&dir).exists() {
        left.push(format!("directory {dir}"));
    }
    for rel in [
        format!("kata_sandboxed_pod/{id}"),
        format!("kata_overhead/{id}"),
        format!("{namespace}/{id}"),
    ] {
        left.extend(
            cgroup_dirs(&rel)
                .into_iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
    }
    for what in ["task", "container"] {
        if c.lists(what, id) {
            left.push(format!("containerd still lists {what} {id}"));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_unescaped_and_matched_by_component() {
        let info = "36 25 0:32 / /tmp/a\\040b rw - tmpfs t rw\n37 25 0:33 / /tmp/sb2 rw - x y rw\n";
        let points: Vec<String> = super::mount_points(info).collect();
        assert_eq!(points, ["/tmp/a b", "/tmp/sb2"]);
        assert!(!std::path::Path::new(&points[1]).starts_with("/tmp/sb"));
    }
}
