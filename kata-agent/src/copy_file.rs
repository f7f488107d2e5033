//! CopyFile: the host writes a file, a directory or a symlink into the guest's shared
//! directory, in chunks (what runtimes do without a shared filesystem, `shared_fs = "none"`).
//!
//! Kata's agent's semantics, read from its `rpc.rs` (`do_copy_file`): the destination is an
//! absolute path below the shared directory; a missing parent is created and given `dir_mode`;
//! `file_mode`'s type bits choose a directory (made, then `file_mode` and owner applied), a
//! symlink (`data` is its target; an old symlink there is replaced; owner applied) or a regular
//! file; a regular file's chunks are written at `offset` into a temporary file next to it, and
//! once that file is `file_size` long it gets `file_mode` and its owner and is renamed over the
//! destination. A uid or gid of -1 leaves it unchanged (`chown(2)`'s own convention).
//!
//! The host is not trusted with the guest's files outside that directory: every path goes
//! through [`Root::resolve`] (symlinks followed inside the shared directory, `..` stopped at
//! it), and the last component is only ever touched relative to its opened parent, never
//! following a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). A symlink the host planted earlier
//! therefore cannot take a later write out of the directory, and a fifo or device planted as the
//! temporary file is refused unopened for writing. Kata's agent checks only that the path
//! *string* starts with `/run/kata-containers` and then follows whatever symlinks it finds.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{AgentError, Result};
use crate::runtime::path::{Create, Root};

/// The guest directory CopyFile writes below: Kata's shared directory for containers
/// (runtime-rs's `KATA_GUEST_SHARE_DIR`, the Go runtime's `kataGuestSharedDir()`).
pub const SHARED_CONTAINERS_DIR: &str = "/run/kata-containers/shared/containers";

/// The largest chunk one request may carry (ttRPC caps a message at 4 MiB anyway).
const MAX_CHUNK: usize = 4 << 20;

/// One CopyFile request, converted at the edge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyRequest {
    /// Absolute destination in the guest.
    pub path: String,
    /// The whole file's size: the write that makes the temporary file this long completes it.
    pub file_size: i64,
    /// `st_mode` of the source: type bits (`S_IFDIR`, `S_IFLNK`, else a regular file) and
    /// permission bits.
    pub file_mode: u32,
    /// Permission bits for a parent directory this request creates.
    pub dir_mode: u32,
    /// Owner; -1 leaves it.
    pub uid: i32,
    /// Group; -1 leaves it.
    pub gid: i32,
    /// Where this chunk goes in the file.
    pub offset: i64,
    /// The chunk (a symlink's target for a symlink).
    pub data: Vec<u8>,
}

/// What a request makes, from `file_mode`'s type bits (Kata tests `S_IFDIR`, then `S_IFLNK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Directory,
    Symlink,
    Regular,
}

fn kind(file_mode: u32) -> Kind {
    let bits = file_mode & SFlag::S_IFMT.bits();
    if bits & SFlag::S_IFDIR.bits() == SFlag::S_IFDIR.bits() {
        Kind::Directory
    } else if bits & SFlag::S_IFLNK.bits() == SFlag::S_IFLNK.bits() {
        Kind::Symlink
    } else {
        Kind::Regular
    }
}

fn refused(path: &str, reason: impl Into<String>) -> AgentError {
    AgentError::CopyFileRefused {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn failed(path: &str, step: &str, e: impl Into<io::Error>) -> AgentError {
    AgentError::io(format!("CopyFile {path:?}: {step}"), e.into())
}

/// The parent (inside `base`) and the name of `path`, checked: absolute, below `base`, no `..`,
/// not `base` itself.
fn split(base: &Path, path: &str) -> Result<(PathBuf, OsString)> {
    let p = Path::new(path);
    let rel = p.strip_prefix(base).map_err(|_| {
        refused(
            path,
            format!(
                "is not below {}: CopyFile writes only into the shared directory",
                base.display()
            ),
        )
    })?;
    let mut names: Vec<&OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            _ => return Err(refused(path, "holds a \"..\" component")),
        }
    }
    let Some(name) = names.pop() else {
        return Err(refused(
            path,
            "names the shared directory itself, not a file in it",
        ));
    };
    Ok((names.iter().collect(), name.to_os_string()))
}

fn ids(uid: i32, gid: i32) -> (Option<Uid>, Option<Gid>) {
    (
        (uid != -1).then(|| Uid::from_raw(uid as u32)),
        (gid != -1).then(|| Gid::from_raw(gid as u32)),
    )
}

fn perm(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode & 0o7777)
}

/// Applies one CopyFile request below `base` (the agent passes [`SHARED_CONTAINERS_DIR`]).
/// `Ok` also for a chunk that leaves the file incomplete.
pub fn copy_file(base: &Path, req: &CopyRequest) -> Result<()> {
    let path = req.path.as_str();
    let (parent_rel, name) = split(base, path)?;
    if req.data.len() > MAX_CHUNK {
        return Err(refused(
            path,
            format!("a chunk of {} bytes is over 4 MiB", req.data.len()),
        ));
    }
    let kind = kind(req.file_mode);
    // Checked before anything is made: bad input leaves nothing behind.
    let chunk = match kind {
        Kind::Regular => Some(chunk_range(req)?),
        Kind::Symlink if req.data.is_empty() => {
            return Err(refused(path, "a symlink needs its target in data"))
        }
        _ => None,
    };
    std::fs::create_dir_all(base).map_err(|e| failed(path, "create the shared directory", e))?;
    let root = Root::open(base).map_err(|e| failed(path, "open the shared directory", e))?;
    let parent = match root.resolve(&parent_rel, Create::Nothing) {
        Ok(p) => p,
        Err(e) if e.is_not_found() => {
            let made = root
                .resolve(&parent_rel, Create::Directory)
                .map_err(|e| failed(path, "create its parent directory", e.source))?;
            // Kata gives `dir_mode` to the parent it had to create.
            let dir = open_dir(made.fd(), path)?;
            fchmod(&dir, perm(req.dir_mode)).map_err(|e| failed(path, "chmod its parent", e))?;
            made
        }
        Err(e) => return Err(failed(path, "open its parent directory", e.source)),
    };
    let dir = open_dir(parent.fd(), path)?;
    let (uid, gid) = ids(req.uid, req.gid);
    match kind {
        Kind::Directory => {
            match mkdirat(&dir, name.as_os_str(), perm(req.file_mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(failed(path, "mkdir", e)),
            }
            let fd = openat(
                &dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| failed(path, "open the directory (not a directory?)", e))?;
            fchmod(&fd, perm(req.file_mode)).map_err(|e| failed(path, "chmod", e))?;
            fchown(&fd, uid, gid).map_err(|e| failed(path, "chown", e))?;
        }
        Kind::Symlink => {
            if let Ok(st) = fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK {
                    // A secret's `..data` link is re-pointed on every update.
                    unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| failed(path, "remove the old symlink", e))?;
                }
            }
            let target = OsStr::from_bytes(&req.data);
            symlinkat(target, &dir, name.as_os_str()).map_err(|e| failed(path, "symlink", e))?;
            fchownat(
                &dir,
                name.as_os_str(),
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| failed(path, "chown the symlink", e))?;
        }
        Kind::Regular => {
            let (offset, size) = chunk.unwrap_or_default();
            write_chunk(&dir, &name, req, offset, size, (uid, gid))?
        }
    }
    Ok(())
}

fn open_dir(fd: BorrowedFd<'_>, path: &str) -> Result<OwnedFd> {
    // Re-open the `O_PATH` descriptor as a real one: `fchmod`/`*at` need it.
    openat(
        fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed(path, "open its parent directory (not a directory?)", e))
}

/// A regular file's chunk: its offset and the file's size, checked.
fn chunk_range(req: &CopyRequest) -> Result<(u64, u64)> {
    let path = req.path.as_str();
    let offset = u64::try_from(req.offset)
        .map_err(|_| refused(path, format!("offset {} is negative", req.offset)))?;
    let size = u64::try_from(req.file_size)
        .map_err(|_| refused(path, format!("file_size {} is negative", req.file_size)))?;
    let end = offset.saturating_add(req.data.len() as u64);
    if end > size {
        return Err(refused(
            path,
            format!("a chunk ending at {end} is past file_size {size}"),
        ));
    }
    Ok((offset, size))
}

/// A regular file's chunk: written into `<name>.tmp`, renamed over `<name>` once complete.
fn write_chunk(
    dir: &OwnedFd,
    name: &OsStr,
    req: &CopyRequest,
    offset: u64,
    size: u64,
    (uid, gid): (Option<Uid>, Option<Gid>),
) -> Result<()> {
    let path = req.path.as_str();
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    // O_NOFOLLOW: a planted symlink is ELOOP; O_NONBLOCK: a planted fifo does not block the
    // open (it is refused below, by its type).
    let file = openat(
        dir.as_fd(),
        tmp.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| failed(path, "open its temporary file", e))?;
    let st = fstat(&file).map_err(|e| failed(path, "stat its temporary file", e))?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(refused(path, "its temporary file is not a regular file"));
    }
    let file = std::fs::File::from(file);
    std::os::unix::fs::FileExt::write_all_at(&file, &req.data, offset)
        .map_err(|e| failed(path, "write", e))?;
    let now = file
        .metadata()
        .map_err(|e| failed(path, "stat its temporary file", e))?
        .len();
    if now != size {
        return Ok(());
    }
    fchmod(&file, perm(req.file_mode)).map_err(|e| failed(path, "chmod", e))?;
    fchown(&file, uid, gid).map_err(|e| failed(path, "chown", e))?;
    renameat(dir, tmp.as_os_str(), dir, name).map_err(|e| failed(path, "rename into place", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn req(path: &Path, mode: u32, data: &[u8]) -> CopyRequest {
        CopyRequest {
            path: path.display().to_string(),
            file_size: data.len() as i64,
            file_mode: mode,
            dir_mode: 0o750,
            uid: -1,
            gid: -1,
            offset: 0,
            data: data.to_vec(),
        }
    }

    #[test]
    fn a_file_in_chunks_appears_complete_with_its_mode() {
        let base = tempfile::tempdir().unwrap();
        let dest = base.path().join("c1-vol/sub/hosts");
        let mut r = req(&dest, SFlag::S_IFREG.bits() | 0o640, b"12345");
        r.file_size = 10;
        copy_file(base.path(), &r).unwrap();
        assert!(!dest.exists(), "incomplete: still the temporary file");
        r.offset = 5;
        r.data = b"67890".to_vec();
        copy_file(base.path(), &r).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"1234567890");
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        let parent = std::fs::metadata(dest.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o7777, 0o750, "dir_mode");
        assert!(!base.path().join("c1-vol/sub/hosts.tmp").exists());
    }

    #[test]
    fn directories_and_symlinks_by_file_mode() {
        let base = tempfile::tempdir().unwrap();
        let d = base.path().join("cm/..2026");
        copy_file(base.path(), &req(&d, SFlag::S_IFDIR.bits() | 0o755, b"")).unwrap();
        assert!(d.is_dir());
        let link = base.path().join("cm/..data");
        copy_file(
            base.path(),
            &req(&link, SFlag::S_IFLNK.bits() | 0o777, b"..2026"),
        )
        .unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("..2026"));
        // Re-pointed, as a secret's update does.
        copy_file(
            base.path(),
            &req(&link, SFlag::S_IFLNK.bits() | 0o777, b"..2027"),
        )
        .unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("..2027"));
    }

    #[test]
    fn owner_is_applied() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let dest = base.path().join("f");
        let mut r = req(&dest, 0o644, b"x");
        (r.uid, r.gid) = (1234, 5678);
        copy_file(base.path(), &r).unwrap();
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    }

    #[test]
    fn nothing_is_written_outside_the_shared_directory() {
        let top = tempfile::tempdir().unwrap();
        let base = top.path().join("shared");
        let outside = top.path().join("outside");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let elsewhere = top.path().join("etc-passwd");
        // Outside by name, or by `..`.
        for bad in [elsewhere.clone(), base.join("../etc-passwd"), base.clone()] {
            let err = copy_file(&base, &req(&bad, 0o644, b"pwned")).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INTERNAL, "{err}");
            assert!(err.to_string().contains("CopyFile"), "{err}");
        }
        assert!(!elsewhere.exists());
        // A symlink the host planted (CopyFile makes them) pointing out, absolute or relative:
        // followed inside the shared directory, never out of it.
        for (link, target) in [("abs", outside.to_str().unwrap()), ("rel", "../outside")] {
            let l = base.join(link);
            copy_file(
                &base,
                &req(&l, SFlag::S_IFLNK.bits() | 0o777, target.as_bytes()),
            )
            .unwrap();
            copy_file(&base, &req(&l.join("file"), 0o644, b"pwned")).unwrap();
            // The final component being the link: replaced by a file, the target untouched.
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "outside untouched"
        );
        // A symlink planted as the temporary file is not followed.
        let victim = outside.join("victim");
        std::fs::write(&victim, "safe").unwrap();
        std::os::unix::fs::symlink(&victim, base.join("x.tmp")).unwrap();
        let mut r = req(&base.join("x"), 0o644, b"pwned");
        r.file_size = 10;
        assert!(copy_file(&base, &r).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "safe");
        // A fifo planted as the temporary file is refused without blocking (no reader: the
        // non-blocking open is ENXIO; with one it would be refused by its type).
        nix::unistd::mkfifo(&base.join("y.tmp"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = copy_file(&base, &req(&base.join("y"), 0o644, b"z")).unwrap_err();
        assert!(err.to_string().contains("temporary file"), "{err}");
        assert!(!base.join("y").exists());
    }

    #[test]
    fn bad_offsets_and_sizes_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dest = base.path().join("f");
        let mut r = req(&dest, 0o644, b"abc");
        r.offset = -1;
        assert!(copy_file(base.path(), &r).is_err());
        r.offset = 2;
        assert!(copy_file(base.path(), &r)
            .unwrap_err()
            .to_string()
            .contains("past file_size"));
        assert!(!dest.exists() && !base.path().join("f.tmp").exists());
    }
}
