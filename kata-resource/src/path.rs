//! The checked path helpers: every host path this crate builds from an id, an annotation or a
//! spec goes through [`safe_child`] (one name below a directory) or [`path_within`] (a path that
//! must stay inside a directory, such as a bundle's `root.path`).
//!
//! Both are lexical: they look at the components, refuse `..` and never resolve a path
//! against the filesystem except to refuse an existing symlink where [`safe_child`] would
//! build its result. Code that then opens or mounts the path resolves it and checks again
//! where a symlink could lead it out (see `rootfs::bundle`).

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::container_id::check_name;
use crate::error::IoContext;
use crate::{Error, Result};

/// `root/name`, where `name` must be one ordinary path component: the rule of
/// [`validate_container_id`](crate::validate_container_id) (`[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`,
/// no `..`), so the result is a direct child of `root` and never `root` itself.
///
/// `root` must be absolute. An existing `root/name` that is a symlink is refused, so the
/// result does not lead out of `root` through a link someone else planted.
///
/// ```
/// use std::path::Path;
/// use kata_resource::safe_child;
///
/// let dir = safe_child(Path::new("/run/kata"), "sandbox-1")?;
/// assert_eq!(dir, Path::new("/run/kata/sandbox-1"));
/// assert!(safe_child(Path::new("/run/kata"), "../etc").is_err());
/// assert!(safe_child(Path::new("/run/kata"), "a/b").is_err());
/// # Ok::<(), kata_resource::Error>(())
/// ```
pub fn safe_child(root: &Path, name: &str) -> Result<PathBuf> {
    let refuse = |reason: &'static str| Error::InvalidPathComponent {
        name: name.to_owned(),
        root: root.to_owned(),
        reason,
    };
    if !root.is_absolute() {
        return Err(refuse("the directory is not an absolute path"));
    }
    check_name(name).map_err(refuse)?;
    let child = root.join(name);
    match child.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => Err(refuse("it exists and is a symlink")),
        Ok(_) => Ok(child),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(child),
        Err(e) => Err(e).at("inspect", &child),
    }
}

/// Checks that `candidate` names a path strictly inside `root` and returns it normalised.
///
/// A relative `candidate` is taken relative to `root`. `root` must be absolute; neither may
/// contain `..`; `.` components and repeated slashes are dropped. `root` itself is not inside
/// `root`. This is a lexical check: a symlink inside `root` can still point elsewhere, so a
/// caller that follows the path resolves it and checks again.
///
/// ```
/// use std::path::Path;
/// use kata_resource::path_within;
///
/// let bundle = Path::new("/run/containerd/bundle/c1");
/// assert_eq!(path_within(bundle, Path::new("rootfs"))?, bundle.join("rootfs"));
/// assert_eq!(path_within(bundle, &bundle.join("./rootfs"))?, bundle.join("rootfs"));
/// assert!(path_within(bundle, Path::new("/")).is_err());
/// assert!(path_within(bundle, Path::new("../x")).is_err());
/// # Ok::<(), kata_resource::Error>(())
/// ```
pub fn path_within(root: &Path, candidate: &Path) -> Result<PathBuf> {
    checked_within(root, candidate, "path")
}

/// [`path_within`], with the error naming `field` (e.g. `root.path`) as the path's origin.
pub(crate) fn checked_within(
    root: &Path,
    candidate: &Path,
    field: &'static str,
) -> Result<PathBuf> {
    let refuse = |reason: &'static str| Error::PathNotWithin {
        field,
        path: candidate.to_owned(),
        root: root.to_owned(),
        reason,
    };
    let root = normalise(root).ok_or_else(|| refuse("the directory contains `..`"))?;
    if !root.is_absolute() {
        return Err(refuse("the directory is not an absolute path"));
    }
    if candidate.as_os_str().is_empty() {
        return Err(refuse("it is empty"));
    }
    let path = normalise(&root.join(candidate)).ok_or_else(|| refuse("it contains `..`"))?;
    if path == root {
        return Err(refuse("it is the directory itself"));
    }
    if !path.starts_with(&root) {
        return Err(refuse("it is outside the directory"));
    }
    Ok(path)
}

/// `path` normalised; refused, naming `field`, unless it is absolute and has no `..`.
pub(crate) fn checked_absolute(path: &Path, field: &'static str) -> Result<PathBuf> {
    let refuse = |reason: &'static str| Error::PathNotWithin {
        field,
        path: path.to_owned(),
        root: PathBuf::from("/"),
        reason,
    };
    if !path.is_absolute() {
        return Err(refuse("it is not an absolute path"));
    }
    normalise(path).ok_or_else(|| refuse("it contains `..`"))
}

/// Opens the regular file `path` names inside the directory `root` for reading, resolving
/// it as a process whose root is `root` would: `path` (absolute or relative) is taken from
/// `root`, and `..` and symlinks, absolute ones included, never lead out of `root` (the
/// kernel's `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`). Anything but a regular file
/// (a directory, device, fifo or socket) is refused without being read.
///
/// ```no_run
/// use std::path::Path;
/// use kata_resource::open_in_root;
///
/// // `/app.wasm` of a container's rootfs, even if it is a symlink to `/etc/shadow`.
/// let file = open_in_root(Path::new("/run/kata/sb/shared/c1/rootfs"), Path::new("/app.wasm"))?;
/// # let _ = file;
/// # Ok::<(), kata_resource::Error>(())
/// ```
pub fn open_in_root(root: &Path, path: &Path) -> Result<std::fs::File> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::AsFd;
    let shown = root.join(path.strip_prefix("/").unwrap_or(path));
    let dir = std::fs::File::open(root).at("open directory", root)?;
    // Non-blocking so a fifo planted at `path` cannot hang the open; cleared by the check.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(dir.as_fd(), path, how)
        .map_err(io::Error::from)
        .at("open", &shown)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().at("inspect", &shown)?;
    if !meta.is_file() {
        return Err(io::Error::other("it is not a regular file")).at("open", &shown);
    }
    Ok(file)
}

/// `path` without `.` components; `None` if it has a `..`.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => return None,
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_in_root_keeps_symlinks_and_dotdot_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("secret"), b"root").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", root.path().join("rel")).unwrap();
        let read = |p: &str| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut open_in_root(root.path(), Path::new(p))?, &mut s)
                .unwrap();
            Ok::<_, Error>(s)
        };
        assert_eq!(read("/secret").unwrap(), "root");
        assert_eq!(read("../../secret").unwrap(), "root");
        assert_eq!(read("rel").unwrap(), "root");
        // An absolute symlink is resolved in the root: the host file is never reached.
        let e = read("abs").unwrap_err().to_string();
        assert!(e.contains("No such file"), "{e}");
        let e = read("/").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read("/missing").unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn safe_child_accepts_one_ordinary_name() {
        let root = Path::new("/run/kata");
        assert_eq!(safe_child(root, "sb-1.x_y").unwrap(), root.join("sb-1.x_y"));
    }

    #[test]
    fn safe_child_refuses_names_that_leave_the_directory() {
        let root = Path::new("/run/kata");
        for name in [
            "", ".", "..", "../x", "a/b", "/abs", "a..b", ".hidden", "a\0b",
        ] {
            let err = safe_child(root, name).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPathComponent { name: n, .. } if n == name),
                "{name:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
        let err = safe_child(Path::new("relative"), "a").unwrap_err();
        assert!(err.to_string().contains("not an absolute path"), "{err}");
    }

    #[test]
    fn safe_child_refuses_a_planted_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("link")).unwrap();
        let err = safe_child(tmp.path(), "link").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        std::fs::create_dir(tmp.path().join("dir")).unwrap();
        assert_eq!(
            safe_child(tmp.path(), "dir").unwrap(),
            tmp.path().join("dir")
        );
    }

    #[test]
    fn path_within_normalises_and_refuses_escapes() {
        let root = Path::new("/b/c1");
        let ok = |p: &str| path_within(root, Path::new(p)).unwrap();
        assert_eq!(ok("rootfs"), Path::new("/b/c1/rootfs"));
        assert_eq!(ok("./rootfs/"), Path::new("/b/c1/rootfs"));
        assert_eq!(ok("/b/c1//x/./y"), Path::new("/b/c1/x/y"));
        for (bad, why) in [
            ("/", "outside"),
            ("/b", "outside"),
            ("/b/c10/rootfs", "outside"),
            ("../x", "`..`"),
            ("rootfs/../../x", "`..`"),
            ("/b/c1/../c1/x", "`..`"),
            ("", "empty"),
            (".", "directory itself"),
            ("/b/c1", "directory itself"),
        ] {
            let err = path_within(root, Path::new(bad)).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::PathNotWithin { .. }), "{bad:?}: {err}");
            assert!(text.contains(why), "{bad:?}: {text}");
        }
        let err = path_within(Path::new("rel"), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("not an absolute path"), "{err}");
        let err = checked_within(root, Path::new("/"), "root.path").unwrap_err();
        assert!(
            err.to_string().starts_with("root.path / is refused"),
            "{err}"
        );
    }
}
