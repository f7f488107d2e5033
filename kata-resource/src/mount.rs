//! Mount plumbing: bind and overlay mounts, unmounting with a lazy fallback, and reading
//! `/proc/self/mountinfo` to find what is mounted under a directory.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{Error, Result};

/// Bind-mounts `source` on `target` as a private mount, read-only if asked.
///
/// Either the mount is fully set up or nothing is left mounted.
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
    let mut flags = vec![MsFlags::MS_PRIVATE];
    if read_only {
        // A bind mount ignores MS_RDONLY on creation; it takes a remount.
        flags.push(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY);
    }
    for flags in flags {
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

/// Mounts an overlay of `lower` (read-only) with `upper` and `work` on `target`.
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
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|errno| Error::Mount {
        what: format!("overlay of {}", lower.display()),
        target: target.to_owned(),
        errno,
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

    #[test]
    fn finds_proc() {
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        assert!(!is_mount_point(Path::new("/proc/self")).unwrap());
    }
}
