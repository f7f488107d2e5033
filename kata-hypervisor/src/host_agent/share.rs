//! Making mounts made in the shared directory later (container rootfs) reach the agent.
//!
//! The agent's mount namespace is a slave of the host's: a mount event reaches it when it
//! happens in a *shared* mount of the host. On a host whose `/` is shared (systemd's default)
//! nothing is to be done. Where it is private (containers, this CI), the shared directory is
//! made a shared mount while the agent runs: a bind of itself with shared propagation (or, if
//! it is a mount point already, that mount turned shared). Stopping undoes it when nothing is
//! mounted below any more; otherwise the share's owner removes it with the directory.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What was done to the shared directory so mounts in it reach the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Propagation {
    /// Nothing: its mount was shared already.
    #[default]
    AlreadyShared,
    /// It was bound onto itself and that mount made shared.
    SelfBind,
    /// It was a mount point of its own, made shared.
    MadeShared,
}

/// One line of `/proc/self/mountinfo`, as far as needed here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountLine {
    mount_point: PathBuf,
    shared: bool,
}

fn unescape(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
                .ok_or(())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse(mountinfo: &str) -> Vec<MountLine> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let mount_point = PathBuf::from(unescape(fields.get(4)?));
            let sep = fields.iter().position(|f| *f == "-")?;
            let shared = fields[6..sep].iter().any(|f| f.starts_with("shared:"));
            Some(MountLine {
                mount_point,
                shared,
            })
        })
        .collect()
}

fn mounts() -> Result<Vec<MountLine>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    Ok(parse(&text))
}

/// Makes `dir` (absolute, canonical) part of a shared mount, as the [module docs](self) say.
/// Refuses a directory that is not in a shared mount and has mounts below it already: a bind
/// of it would hide them.
pub(crate) fn make_shared(dir: &Path) -> Result<Propagation> {
    let all = mounts()?;
    let Some(containing) = all
        .iter()
        .filter(|m| dir.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
    else {
        return Ok(Propagation::AlreadyShared);
    };
    if containing.shared {
        return Ok(Propagation::AlreadyShared);
    }
    let failed = |what: &str, e: nix::errno::Errno| {
        Error::io(
            format!("{what} {} for the test backend's agent", dir.display()),
            std::io::Error::from(e),
        )
    };
    if containing.mount_point == dir {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| failed("making the mount at", e))?;
        return Ok(Propagation::MadeShared);
    }
    if all
        .iter()
        .any(|m| m.mount_point.starts_with(dir) && m.mount_point != dir)
    {
        return Err(Error::InvalidConfig {
            key: "shared directory",
            value: dir.display().to_string(),
            reason:
                "it already has mounts below it: start the test backend before anything is shared"
                    .into(),
        });
    }
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| failed("binding", e))?;
    // Like every mount kata-rs makes: nosuid,nodev (issue 9 row 1).
    if let Err(e) = mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    ) {
        let _ = umount2(dir, MntFlags::UMOUNT_NOFOLLOW);
        return Err(failed("making nosuid,nodev the bind of", e));
    }
    if let Err(e) = mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    ) {
        let _ = umount2(dir, MntFlags::UMOUNT_NOFOLLOW);
        return Err(failed("sharing the bind of", e));
    }
    Ok(Propagation::SelfBind)
}

/// Undoes [`make_shared`]: the bind is unmounted unless something is mounted below it (then the
/// share's owner removes it with the directory); a mount made shared is made private again.
pub(crate) fn undo(dir: &Path, done: Propagation) {
    match done {
        Propagation::AlreadyShared => {}
        Propagation::MadeShared => {
            let _ = mount(
                None::<&str>,
                dir,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            );
        }
        Propagation::SelfBind => match umount2(dir, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                tracing::debug!(dir = %dir.display(), "shared directory still has mounts: its bind stays for the share's owner to remove");
                let _ = mount(
                    None::<&str>,
                    dir,
                    None::<&str>,
                    MsFlags::MS_PRIVATE,
                    None::<&str>,
                );
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount the shared directory's bind")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_say_where_and_whether_shared() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:30 / /run/with\\040space rw master:4 - tmpfs tmpfs rw\n\
                    31 22 0:31 /x /srv/b rw - ext4 /dev/vdb rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert!(m[0].shared);
        assert_eq!(m[1].mount_point, PathBuf::from("/run/with space"));
        assert!(!m[1].shared && !m[2].shared);
    }
}
