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

/// Why a file of the rootfs could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// It does not exist.
    Missing,
    /// It is a FIFO, a device, a socket, a directory or (raced in) a symlink.
    NotRegular(&'static str),
    /// It is larger than the cap.
    TooLarge(u64),
    /// Another I/O error.
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => f.write_str("does not exist"),
            ReadError::NotRegular(kind) => write!(f, "is a {kind}, not a regular file"),
            ReadError::TooLarge(cap) => write!(f, "is larger than {cap} bytes"),
            ReadError::Io(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "FIFO",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        _ => "special file",
    }
}

/// Reads the file at `path` inside `root` the way an untrusted image must be read: resolved
/// inside the root, opened non-blocking without following a last-moment symlink, and only if it
/// is a regular file of at most `cap` bytes. A FIFO planted at `/etc/passwd` is an error at
/// once, never a read that blocks the agent.
pub fn read_file_in_root(root: &Path, path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let full = resolve_in_root(root, path).map_err(ReadError::Io)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(&full);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ReadError::NotRegular("symlink"))
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.mode())));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge(cap));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut data)
        .map_err(ReadError::Io)?;
    if data.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(data)
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
    fn reads_only_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let read = |p: &str, cap| read_file_in_root(dir.path(), Path::new(p), cap);
        assert_eq!(read("/etc/passwd", 1024).unwrap().len(), 26);
        assert!(matches!(
            read("/etc/passwd", 10),
            Err(ReadError::TooLarge(10))
        ));
        assert!(matches!(read("/etc/group", 1024), Err(ReadError::Missing)));
        nix::unistd::mkfifo(
            &dir.path().join("etc/group"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        // Would block for ever with a plain open: no writer ever comes.
        let err = read("/etc/group", 1024).unwrap_err();
        assert_eq!(err.to_string(), "is a FIFO, not a regular file");
        assert!(matches!(
            read("/etc", 1024),
            Err(ReadError::NotRegular("directory"))
        ));
    }

    #[test]
    fn symlink_loops_fail() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        assert!(resolve_in_root(dir.path(), Path::new("/a")).is_err());
    }
}
