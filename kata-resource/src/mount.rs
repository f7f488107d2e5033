//! Mount plumbing, the one place this crate mounts and unmounts: bind, overlay and
//! containerd-described mounts (always `nosuid,nodev`), unmounting one mount or everything
//! stacked on a mount point (lazily when busy), and reading `/proc/self/mountinfo` to find what
//! is mounted under a directory.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{Error, Result};

/// Flags every mount this crate makes carries: a file reached through one of our mounts never
/// runs setuid on the host and a device node there never opens a host device.
pub(crate) const HOST_MOUNT_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// How many mounts [`unmount_all`] takes off one mount point before it gives up.
const MAX_STACKED: usize = 256;

/// Bind-mounts `source` on `target` as a private, `nosuid,nodev` mount, read-only if asked.
/// Tests only: a bind remounted afterwards reaches the target's peers writable and without the
/// flags; shares use [`bind_mount_staged`].
///
/// Either the mount is fully set up or nothing is left mounted.
#[cfg(test)]
pub(crate) fn bind_mount(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    let what = || format!("bind of {}", source.display());
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| Error::Mount {
        what: what(),
        target: target.to_owned(),
        errno,
    })?;

    // Private: our mounts and unmounts stay in this mount namespace's view of the sandbox dir.
    // A bind mount ignores per-mount flags on creation; they take a remount.
    let mut remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | HOST_MOUNT_FLAGS;
    if read_only {
        remount |= MsFlags::MS_RDONLY;
    }
    for flags in [MsFlags::MS_PRIVATE, remount] {
        if let Err(errno) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            if let Err(e) = unmount(target) {
                tracing::error!(target = %target.display(), "cannot undo a failed mount: {e}");
            }
            return Err(Error::Mount {
                what: what(),
                target: target.to_owned(),
                errno,
            });
        }
    }
    Ok(())
}

/// Bind-mounts `source` on `target` so that the mount is `nosuid,nodev` (and read-only if
/// asked) from the moment it appears, in every mount namespace it propagates to: `source` is
/// first bound on `staging` (a slave of `source`'s peer group: host mount events under it still
/// arrive, nothing goes back), remounted there with the flags, then bound from there on
/// `target`, which copies the flags; `staging` is unmounted. A plain bind-then-remount would
/// leave the peers of `target` (virtiofsd's or a host agent's namespace) with a writable copy.
/// `recursive`: the mounts under `source` come along (`rbind`; they keep their own flags).
///
/// Either `target` is mounted and `staging` unmounted, or nothing is left mounted.
pub(crate) fn bind_mount_staged(
    source: &Path,
    staging: &Path,
    target: &Path,
    read_only: bool,
    recursive: bool,
) -> Result<()> {
    let what = || format!("bind of {}", source.display());
    let failed = |at: &Path, errno| Error::Mount {
        what: what(),
        target: at.to_owned(),
        errno,
    };
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount(
        Some(source),
        staging,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .map_err(|errno| failed(staging, errno))?;
    let mut remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | HOST_MOUNT_FLAGS;
    if read_only {
        remount |= MsFlags::MS_RDONLY;
    }
    let staged = [MsFlags::MS_SLAVE | rec, remount]
        .into_iter()
        .try_for_each(|flags| mount(None::<&str>, staging, None::<&str>, flags, None::<&str>))
        .map_err(|errno| failed(staging, errno))
        .and_then(|()| {
            mount(
                Some(staging),
                target,
                None::<&str>,
                MsFlags::MS_BIND | rec,
                None::<&str>,
            )
            .map_err(|errno| failed(target, errno))
        });
    // The staging mount goes whatever happened; detached, so its submounts go with it.
    let unstaged = umount2(staging, MntFlags::UMOUNT_NOFOLLOW | MntFlags::MNT_DETACH);
    match (staged, unstaged) {
        (Ok(()), Ok(())) => {}
        // `target` is the last step: it is not mounted.
        (Err(e), unstaged) => {
            if let Err(errno) = unstaged {
                tracing::error!(staging = %staging.display(), "cannot unmount a staging mount: {errno}");
            }
            return Err(e);
        }
        (Ok(()), Err(errno)) => {
            if let Err(undo) = unmount_all(target) {
                tracing::error!(target = %target.display(), "cannot undo a mount: {undo}");
            }
            return Err(Error::Unmount {
                target: staging.to_owned(),
                errno,
            });
        }
    }
    Ok(())
}

/// Mounts an overlay of `lower` (read-only) with `upper` and `work` on `target`, `nosuid,nodev`.
pub(crate) fn overlay_mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<()> {
    for path in [lower, upper, work] {
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.iter().any(|b| matches!(b, b',' | b':' | b'\\')) {
            return Err(Error::OverlayPath {
                path: path.to_owned(),
            });
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        HOST_MOUNT_FLAGS,
        Some(options.as_str()),
    )
    .map_err(|errno| Error::Mount {
        what: format!("overlay of {}", lower.display()),
        target: target.to_owned(),
        errno,
    })
}

/// One mount(2) call as a mount description asks for it (see `rootfs::mount_options`):
/// `flags` (without propagation), `data`, then the propagation change and the read-only
/// remount of a bind, all with [`HOST_MOUNT_FLAGS`]. `cwd`, if given, is the directory
/// relative overlay `lowerdir`s are resolved from.
///
/// Either everything is done or nothing is left mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountCall {
    /// What is mounted, for errors ("overlay of ...", "bind of ...").
    pub what: String,
    /// mount(2)'s source.
    pub source: String,
    /// mount(2)'s filesystem type.
    pub fs_type: String,
    /// mount(2)'s flags, without propagation flags.
    pub flags: MsFlags,
    /// The propagation change made after the mount (empty: none).
    pub propagation: MsFlags,
    /// mount(2)'s data: the comma-separated options the filesystem parses.
    pub data: Option<String>,
    /// The directory relative overlay `lowerdir`s are resolved from.
    pub cwd: Option<PathBuf>,
}

impl MountCall {
    /// Performs the call on `target`.
    pub(crate) fn mount_on(&self, target: &Path) -> Result<()> {
        let failed = |errno| Error::Mount {
            what: self.what.clone(),
            target: target.to_owned(),
            errno,
        };
        let flags = self.flags | HOST_MOUNT_FLAGS;
        let first = || {
            mount(
                Some(self.source.as_str()),
                target,
                Some(self.fs_type.as_str()),
                flags,
                self.data.as_deref(),
            )
        };
        match &self.cwd {
            None => first(),
            Some(dir) => in_directory(dir, first),
        }
        .map_err(failed)?;

        let bind = flags.contains(MsFlags::MS_BIND);
        let mut follow_ups = Vec::new();
        if !self.propagation.is_empty() {
            follow_ups.push(self.propagation);
        }
        if bind {
            // A bind mount ignores per-mount flags on creation; they take a remount.
            follow_ups.push(
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | HOST_MOUNT_FLAGS
                    | (flags & MsFlags::MS_RDONLY),
            );
        }
        for flags in follow_ups {
            if let Err(errno) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                if let Err(e) = unmount(target) {
                    tracing::error!(target = %target.display(), "cannot undo a failed mount: {e}");
                }
                return Err(failed(errno));
            }
        }
        Ok(())
    }
}

/// Runs `f` on a thread of its own whose working directory is `dir`, without touching the
/// working directory of the process: the thread unshares its filesystem attributes first
/// (containerd changes directory the same way to shorten long overlay `lowerdir` lists).
fn in_directory(dir: &Path, f: impl FnOnce() -> nix::Result<()> + Send) -> nix::Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::unistd::chdir(dir)?;
                f()
            })
            .join()
            .unwrap_or(Err(Errno::EIO))
    })
}

/// Unmounts `target` (never following a symlink); a busy mount is detached lazily with a warning.
pub(crate) fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => {
            tracing::warn!(
                target = %target.display(),
                "mount is busy, detaching it lazily"
            );
            umount2(target, MntFlags::UMOUNT_NOFOLLOW | MntFlags::MNT_DETACH).map_err(|errno| {
                Error::Unmount {
                    target: target.to_owned(),
                    errno,
                }
            })
        }
        Err(errno) => Err(Error::Unmount {
            target: target.to_owned(),
            errno,
        }),
    }
}

/// Unmounts everything stacked on `target`, top first, each lazily when busy; a `target` that
/// is not a mount point (or does not exist) is not an error. Returns how many were unmounted.
pub(crate) fn unmount_all(target: &Path) -> Result<usize> {
    for count in 0..MAX_STACKED {
        match unmount(target) {
            Ok(()) => {}
            Err(Error::Unmount {
                errno: Errno::EINVAL | Errno::ENOENT,
                ..
            }) => return Ok(count),
            Err(e) => return Err(e),
        }
    }
    Err(Error::MountsRemain {
        dir: target.to_owned(),
        mounts: vec![target.to_owned()],
    })
}

/// The mount points at or under `dir` (which must be absolute and canonical, as mountinfo's are),
/// deepest first, so they can be unmounted in that order.
pub(crate) fn mount_points_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = mountinfo
        .split(|&b| b == b'\n')
        .filter_map(mount_point_of_line)
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Whether `path` (absolute, canonical) is a mount point.
pub(crate) fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mount_points_under(path)?.iter().any(|p| p == path))
}

/// The per-mount options (`rw,nosuid,nodev,...`) of the top mount at `path` (absolute,
/// canonical), if it is a mount point.
#[cfg(test)]
pub(crate) fn mount_options(path: &Path) -> io::Result<Option<String>> {
    let mountinfo = std::fs::read("/proc/self/mountinfo")?;
    Ok(mountinfo
        .split(|&b| b == b'\n')
        .rfind(|line| mount_point_of_line(line).as_deref() == Some(path))
        .and_then(|line| line.split(|&b| b == b' ').nth(5))
        .map(|options| String::from_utf8_lossy(options).into_owned()))
}

/// The mount point (5th field) of one mountinfo line, unescaped.
fn mount_point_of_line(line: &[u8]) -> Option<PathBuf> {
    let field = line.split(|&b| b == b' ').nth(4)?;
    Some(PathBuf::from(OsString::from_vec(unescape_octal(field))))
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in mountinfo.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).and_then(|digits| {
            if field[i] != b'\\' || !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                return None;
            }
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            u8::try_from(value).ok()
        });
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines_with_escapes() {
        let line =
            b"36 35 98:0 /mnt1 /mnt/with\\040space\\134x rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(
            mount_point_of_line(line),
            Some(PathBuf::from("/mnt/with space\\x"))
        );
        assert_eq!(mount_point_of_line(b"short line"), None);
        assert_eq!(unescape_octal(b"a\\01"), b"a\\01");
        assert_eq!(unescape_octal(b"\\011\\012"), b"\t\n");
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn unmount_all_takes_off_stacked_and_busy_mounts() {
        if !is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let tmp_path = tmp.path().canonicalize().unwrap();
        let (a, b, target) = (tmp_path.join("a"), tmp_path.join("b"), tmp_path.join("t"));
        for dir in [&a, &b, &target] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(b.join("file"), "b").unwrap();
        assert_eq!(unmount_all(&target).unwrap(), 0, "nothing mounted yet");
        assert_eq!(unmount_all(&tmp_path.join("missing")).unwrap(), 0);
        // Whatever fails below, the test's mounts go.
        struct Unmount(PathBuf, PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = unmount_all(&self.0);
                let _ = unmount_all(&self.1);
            }
        }
        let _guard = Unmount(target.clone(), a.clone());
        bind_mount(&a, &target, false).unwrap();
        bind_mount(&b, &target, true).unwrap();
        let stacked = |path: &Path| {
            std::fs::read("/proc/self/mountinfo")
                .unwrap()
                .split(|&b| b == b'\n')
                .filter(|line| mount_point_of_line(line).as_deref() == Some(path))
                .count()
        };
        assert_eq!(stacked(&target), 2);
        let options = mount_options(&target).unwrap().unwrap();
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(options.split(',').any(|o| o == flag), "{flag}: {options}");
        }
        // An open file makes the top mount busy: it is detached lazily.
        let busy = std::fs::File::open(target.join("file")).unwrap();
        assert_eq!(unmount_all(&target).unwrap(), 2);
        assert_eq!(stacked(&target), 0);
        assert!(mount_points_under(&tmp_path).unwrap().is_empty());
        drop(busy);
        // A symlink is never followed.
        std::os::unix::fs::symlink(&a, tmp_path.join("link")).unwrap();
        bind_mount(&b, &a, false).unwrap();
        assert_eq!(unmount_all(&tmp_path.join("link")).unwrap(), 0);
        assert_eq!(unmount_all(&a).unwrap(), 1);
    }

    #[test]
    fn finds_proc() {
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        assert!(!is_mount_point(Path::new("/proc/self")).unwrap());
    }
}
