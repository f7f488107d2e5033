//! Resolving paths inside a container's rootfs without escaping it.
//!
//! A rootfs comes from the host and is untrusted: `/etc/passwd` or a mount destination may be a
//! symlink pointing at `/` or `../../..`. [`resolve_in_root`] resolves such a path the way the
//! kernel would if `root` were `/` (symlinks followed relative to `root`, `..` clamped at
//! `root`), so the result always lies under `root`.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow (the kernel's own limit is 40).
const MAX_SYMLINKS: usize = 255;

/// Resolves `path` as if `root` were the filesystem root. Components that do not exist are
/// appended as they are; a symlink loop ends the resolution with an error.
pub fn resolve_in_root(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    // The part of the path still to resolve, as a stack of components (last = next).
    let mut pending: Vec<PathBuf> = Vec::new();
    push_components(&mut pending, path);
    let mut resolved = PathBuf::new(); // relative to root
    let mut followed = 0;
    while let Some(next) = pending.pop() {
        let name = next.as_os_str();
        if name == OsStr::new("..") {
            resolved.pop();
            continue;
        }
        if name == OsStr::new(".") || name.is_empty() {
            continue;
        }
        let candidate = resolved.join(name);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("too many symlinks resolving {}", path.display()),
                    ));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut pending, &target);
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Pushes the components of `path` onto `stack` so that the first component is popped first.
fn push_components(stack: &mut Vec<PathBuf>, path: &Path) {
    let comps: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect();
    stack.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_paths_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let r = resolve_in_root(dir.path(), Path::new("/a/b/../c")).unwrap();
        assert_eq!(r, dir.path().join("a/c"));
    }

    #[test]
    fn dotdot_is_clamped_at_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = resolve_in_root(dir.path(), Path::new("../../../etc/passwd")).unwrap();
        assert_eq!(r, dir.path().join("etc/passwd"));
    }

    #[test]
    fn absolute_symlinks_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        symlink("/", dir.path().join("etc/escape")).unwrap();
        symlink("/etc/escape/../../../shadow", dir.path().join("etc/passwd")).unwrap();
        let r = resolve_in_root(dir.path(), Path::new("/etc/passwd")).unwrap();
        assert_eq!(r, dir.path().join("shadow"));
    }

    #[test]
    fn relative_symlinks_resolve_from_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        symlink("usr/bin", dir.path().join("bin")).unwrap();
        symlink("../../../../tmp", dir.path().join("usr/bin/t")).unwrap();
        let r = resolve_in_root(dir.path(), Path::new("/bin/t/x")).unwrap();
        assert_eq!(r, dir.path().join("tmp/x"));
    }

    #[test]
    fn symlink_loops_fail() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        assert!(resolve_in_root(dir.path(), Path::new("/a")).is_err());
    }
}
