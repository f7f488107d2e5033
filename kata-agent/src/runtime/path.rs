//! Opening paths inside a container's rootfs (or a volume) without escaping it, race-free.
//!
//! A rootfs comes from the host and is untrusted, and once volumes exist other containers of the
//! pod write into the same trees while a container is being set up: `/etc/passwd` or a mount
//! destination may be a symlink pointing at `/` or `../../..`, and a directory may be swapped for
//! such a symlink at any moment. Resolving a path to a *string* and handing the string to
//! `mount(2)` or `open(2)` lets the kernel walk it a second time, after the swap.
//!
//! So nothing here returns a path to walk again. [`Root::resolve`] walks a path one component
//! at a time, each opened `O_PATH | O_NOFOLLOW` relative to the directory before it, and follows
//! symlinks itself, inside the root: an absolute target restarts at the root, `..` stops at it
//! (the kernel's `RESOLVE_IN_ROOT`, which is how the container itself will see the path after
//! `pivot_root`). Magic links (`/proc/<pid>/root`, `/proc/self/fd/<n>`) are read as plain text
//! and resolved inside the root like any symlink, never jumped through. Missing directories (and
//! a missing last file) are created on the way with `mkdirat`/`openat(O_CREAT | O_EXCL)`, each
//! then opened `O_NOFOLLOW` again, so a symlink planted in between is followed inside the root
//! too. The result is an open file descriptor ([`InRoot`]): `mount(2)` is given
//! `/proc/thread-self/fd/<n>`, which the kernel resolves to that very inode, whatever happened to
//! the path since.
//!
//! Why a walk and not `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` for destinations (the
//! flags it would take: `IN_ROOT` for the container's view of absolute links and `..`,
//! `NO_MAGICLINKS` because `IN_ROOT` does not promise to refuse them, and not `NO_XDEV`, which
//! would refuse `/dev/pts` below the `/dev` tmpfs or a mount inside a volume): `openat2` cannot
//! create the missing directories, so it would need this walk beside it anyway (runc's
//! securejoin pairs the two), and one walk gives one behaviour on every kernel, dangling
//! symlinks included (created inside the root, as runc does).
//!
//! A bind source in a volume is opened with [`Root::open_beneath`]: `openat2(2)` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so a symlink that leaves the volume (or an absolute
//! one) is an error, not something to reinterpret. Nothing is created there, so the kernel's
//! resolution is all that is needed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

/// How many symlinks one resolution may follow (the kernel's own limit, `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// How often a component may vanish between its creation and its opening before the resolution
/// gives up (something keeps removing it).
const MAX_CREATE_RACES: usize = 16;

/// How often `openat2` may answer `EAGAIN` (a rename or mount raced its `..` checks) before
/// [`Root::open_beneath`] gives up (something keeps renaming the tree).
const MAX_OPENAT2_RETRIES: usize = 64;

/// What [`Root::resolve`] makes of a path that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing component is an error.
    Nothing,
    /// Missing directories, the last one included.
    Directory,
    /// Missing directories, and the last component as an empty regular file.
    File,
}

/// A directory opened as the root of resolutions: a container's rootfs or a volume.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// A path that could not be resolved inside a root.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {source}", at = .at.display())]
pub struct ResolveError {
    /// The component that failed, as a path inside the root (`/etc/passwd`).
    pub at: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl ResolveError {
    fn new(at: PathBuf, source: impl Into<io::Error>) -> Self {
        ResolveError {
            at,
            source: source.into(),
        }
    }

    /// Whether the failure is a missing component.
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

/// A file or directory reached inside a [`Root`]: its `O_PATH` descriptor, and the directory
/// and name it was found under (to open what is mounted on it afterwards).
#[derive(Debug)]
pub struct InRoot {
    fd: OwnedFd,
    /// `None` when the path resolved to the root itself.
    parent: Option<(OwnedFd, OsString)>,
    /// Where it is, inside the root, symlinks resolved (`/run/resolv.conf`).
    rel: PathBuf,
}

fn o_path() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The path under which the kernel resolves `fd` to exactly its file (a magic link):
/// what `mount(2)` is given instead of a path that could be walked differently.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/thread-self/fd/{}", fd.as_raw_fd()))
}

/// The components of `path` that matter for a walk: names and `..` (`.` and `/` dropped).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// `/a/b` from the names of the directories walked through.
fn display_path<'a>(names: impl Iterator<Item = &'a OsStr>) -> PathBuf {
    let mut p = PathBuf::from("/");
    for n in names {
        p.push(n);
    }
    p
}

impl Root {
    /// Opens `path` (a directory the agent names: a rootfs or a storage's mount point) as a
    /// root. Symlinks in `path` itself are followed: it is the agent's, not the container's.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path the root was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves `path` as if the root were `/` (absolute symlinks restart at the root, `..`
    /// stops at it), creating what is missing as `create` says, and opens what it names.
    /// Every component is opened relative to the one before it without following symlinks;
    /// symlinks are read and followed here, inside the root, at most `MAX_SYMLINKS` of them.
    pub fn resolve(&self, path: &Path, create: Create) -> Result<InRoot, ResolveError> {
        // What is still to walk, last component first (`pop` gives the next one).
        let mut pending: Vec<OsString> = components(path);
        pending.reverse();
        // The directories walked through below the root, with their names.
        let mut walked: Vec<(OwnedFd, OsString)> = Vec::new();
        let mut followed = 0;
        // `Some(n)`: this component was just created (or found created), n times in a row.
        let mut creating: Option<usize> = None;
        while let Some(name) = pending.pop() {
            if name == ".." {
                walked.pop();
                continue;
            }
            let dir = walked.last().map_or(self.fd.as_fd(), |(fd, _)| fd.as_fd());
            let here = || display_path(walked.iter().map(|(_, n)| n.as_os_str()).chain([&*name]));
            let last = pending.is_empty();
            let fd = match openat(dir, name.as_os_str(), o_path(), Mode::empty()) {
                Ok(fd) => {
                    creating = None;
                    fd
                }
                Err(Errno::ENOENT) if create != Create::Nothing => {
                    let attempts = creating.map_or(1, |n| n + 1);
                    if attempts > MAX_CREATE_RACES {
                        return Err(ResolveError::new(
                            here(),
                            io::Error::other("kept disappearing while it was being created"),
                        ));
                    }
                    creating = Some(attempts);
                    let made = if last && create == Create::File {
                        openat(
                            dir,
                            name.as_os_str(),
                            OFlag::O_CREAT
                                | OFlag::O_EXCL
                                | OFlag::O_NOFOLLOW
                                | OFlag::O_RDONLY
                                | OFlag::O_CLOEXEC,
                            Mode::from_bits_truncate(0o644),
                        )
                        .map(drop)
                    } else {
                        mkdirat(dir, name.as_os_str(), Mode::from_bits_truncate(0o755))
                    };
                    match made {
                        // Created, or created by someone else meanwhile (maybe as a symlink):
                        // either way it is opened again, without following it, on the next turn.
                        Ok(()) | Err(Errno::EEXIST) => {
                            pending.push(name);
                            continue;
                        }
                        Err(e) => return Err(ResolveError::new(here(), e)),
                    }
                }
                Err(e) => return Err(ResolveError::new(here(), e)),
            };
            let stat = fstat(&fd).map_err(|e| ResolveError::new(here(), e))?;
            let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
            if kind == SFlag::S_IFLNK {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(ResolveError::new(here(), Errno::ELOOP));
                }
                let target =
                    readlinkat(&fd, OsStr::new("")).map_err(|e| ResolveError::new(here(), e))?;
                if target.is_empty() {
                    return Err(ResolveError::new(here(), Errno::ENOENT));
                }
                let target = Path::new(&target);
                if target.is_absolute() {
                    walked.clear();
                }
                pending.extend(components(target).into_iter().rev());
                continue;
            }
            if !last && kind != SFlag::S_IFDIR {
                return Err(ResolveError::new(here(), Errno::ENOTDIR));
            }
            walked.push((fd, name));
        }
        let rel = display_path(walked.iter().map(|(_, n)| n.as_os_str()));
        let Some((fd, name)) = walked.pop() else {
            let fd = self
                .fd
                .try_clone()
                .map_err(|e| ResolveError::new(rel.clone(), e))?;
            return Ok(InRoot {
                fd,
                parent: None,
                rel,
            });
        };
        let parent = match walked.pop() {
            Some((p, _)) => p,
            None => self
                .fd
                .try_clone()
                .map_err(|e| ResolveError::new(rel.clone(), e))?,
        };
        Ok(InRoot {
            fd,
            parent: Some((parent, name)),
            rel,
        })
    }

    /// Opens `rel` (relative to the root; `/` or empty: the root itself) `O_PATH`, following
    /// symlinks only while they stay beneath the root: `openat2(2)` with `RESOLVE_BENEATH`
    /// (an absolute symlink or a `..` above the root is `EXDEV`) and `RESOLVE_NO_MAGICLINKS`
    /// (no `/proc` jumps, whatever `RESOLVE_BENEATH` implies in a given kernel). Crossing mount
    /// points below the root is allowed: only the agent mounts in its namespace, and storages
    /// nest (a volume inside the shared directory).
    pub fn open_beneath(&self, rel: &Path) -> io::Result<OwnedFd> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut tries = 0;
        loop {
            match openat2(self.fd.as_fd(), rel, how) {
                // A rename or mount somewhere during the walk: the kernel asks to retry.
                Err(Errno::EAGAIN) if tries < MAX_OPENAT2_RETRIES => tries += 1,
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

impl InRoot {
    /// Its `O_PATH` descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where it is inside the root, symlinks resolved (`/` for the root).
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// Whether the path resolved to the root itself.
    pub fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    /// The directory it was found in and its name there (`None` for the root).
    pub fn parent(&self) -> Option<(BorrowedFd<'_>, &OsStr)> {
        self.parent
            .as_ref()
            .map(|(fd, name)| (fd.as_fd(), name.as_os_str()))
    }

    /// Opens its name in its directory again, without following a symlink: after something was
    /// mounted on it, this is the mount's root (the old descriptor still names the inode
    /// underneath). `None` for the root.
    pub fn reopen(&self) -> Option<io::Result<OwnedFd>> {
        let (dir, name) = self.parent()?;
        Some(openat(dir, name, o_path(), Mode::empty()).map_err(io::Error::from))
    }

    /// Opens it (not the root) with `flags` added to `O_NOFOLLOW | O_CLOEXEC`, from its
    /// directory: a symlink swapped in since the resolution is `ELOOP`, never followed.
    pub fn open_as(&self, flags: OFlag) -> io::Result<OwnedFd> {
        let (dir, name) = self
            .parent()
            .ok_or_else(|| io::Error::from(Errno::EISDIR))?;
        openat(
            dir,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
    }
}

/// `d_path` of a descriptor, as `/proc` shows it: where the file is now, in the caller's mount
/// namespace and root.
pub fn fd_target(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(fd_path(fd))
}

/// The mount id of the mount a descriptor is on (`mnt_id:` of `/proc/thread-self/fdinfo/<n>`).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/thread-self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no mnt_id in fdinfo"))
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
/// inside the root, opened non-blocking from the directory it was found in without following a
/// last-moment symlink, and only if it is a regular file of at most `cap` bytes. A FIFO planted
/// at `/etc/passwd` is an error at once, never a read that blocks the agent.
pub fn read_file_in_root(root: &Path, path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let root = Root::open(root).map_err(ReadError::Io)?;
    let found = match root.resolve(path, Create::Nothing) {
        Ok(found) => found,
        Err(e) if e.is_not_found() => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Io(io::Error::other(e))),
    };
    if found.is_root() {
        return Err(ReadError::NotRegular("directory"));
    }
    let file = match found.open_as(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY) {
        Ok(fd) => std::fs::File::from(fd),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Where `found` is on the host (`d_path` of its descriptor).
    fn host_path(found: &InRoot) -> PathBuf {
        fd_target(found.fd()).unwrap()
    }

    fn root(dir: &tempfile::TempDir) -> Root {
        Root::open(dir.path()).unwrap()
    }

    #[test]
    fn plain_paths_are_walked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/c")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let found = root(&dir)
            .resolve(Path::new("/a/b/../c"), Create::Nothing)
            .unwrap();
        assert_eq!(host_path(&found), dir.path().join("a/c"));
        assert_eq!(found.rel(), Path::new("/a/c"));
        let (_, name) = found.parent().unwrap();
        assert_eq!(name, "c");
    }

    #[test]
    fn dotdot_is_clamped_at_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "").unwrap();
        let found = root(&dir)
            .resolve(Path::new("../../../etc/passwd"), Create::Nothing)
            .unwrap();
        assert_eq!(host_path(&found), dir.path().join("etc/passwd"));
        let top = root(&dir)
            .resolve(Path::new("/.."), Create::Nothing)
            .unwrap();
        assert!(top.is_root());
        assert_eq!(host_path(&top), dir.path());
    }

    #[test]
    fn absolute_symlinks_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("shadow"), "").unwrap();
        symlink("/", dir.path().join("etc/escape")).unwrap();
        symlink("/etc/escape/../../../shadow", dir.path().join("etc/passwd")).unwrap();
        let found = root(&dir)
            .resolve(Path::new("/etc/passwd"), Create::Nothing)
            .unwrap();
        assert_eq!(host_path(&found), dir.path().join("shadow"));
        assert_eq!(found.rel(), Path::new("/shadow"));
    }

    #[test]
    fn relative_symlinks_resolve_from_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp/x")).unwrap();
        symlink("usr/bin", dir.path().join("bin")).unwrap();
        symlink("../../../../tmp", dir.path().join("usr/bin/t")).unwrap();
        let found = root(&dir)
            .resolve(Path::new("/bin/t/x"), Create::Nothing)
            .unwrap();
        assert_eq!(host_path(&found), dir.path().join("tmp/x"));
    }

    #[test]
    fn missing_components_are_created_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // Absolute and relative links to a directory outside, and to `/`.
        symlink(outside.path(), dir.path().join("abs")).unwrap();
        let up = "../".repeat(outside.path().components().count() + 4);
        symlink(
            format!("{up}{}", outside.path().display()),
            dir.path().join("rel"),
        )
        .unwrap();
        symlink("/", dir.path().join("slash")).unwrap();
        let r = root(&dir);
        for (dest, create) in [
            ("/abs/d/e", Create::Directory),
            ("/rel/d/f", Create::File),
            ("/slash/sub/g", Create::Directory),
        ] {
            let found = r.resolve(Path::new(dest), create).unwrap();
            let at = host_path(&found);
            assert!(
                at.starts_with(dir.path()),
                "{dest} resolved to {}",
                at.display()
            );
        }
        assert!(dir
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("d/f")
            .is_file());
        assert!(dir.path().join("sub/g").is_dir());
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing is created outside the root"
        );
    }

    #[test]
    fn deep_missing_paths_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let deep: PathBuf = (0..40).map(|i| format!("d{i}")).collect();
        let found = root(&dir)
            .resolve(&Path::new("/").join(&deep), Create::File)
            .unwrap();
        assert!(dir.path().join(&deep).is_file());
        assert_eq!(found.rel(), Path::new("/").join(&deep));
    }

    #[test]
    fn a_dangling_symlink_is_created_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/nonexistent/x", dir.path().join("data")).unwrap();
        let found = root(&dir)
            .resolve(Path::new("/data"), Create::Directory)
            .unwrap();
        assert_eq!(host_path(&found), dir.path().join("nonexistent/x"));
        assert!(!Path::new("/nonexistent").exists());
    }

    #[test]
    fn missing_without_create_and_files_in_the_way_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let r = root(&dir);
        let err = r
            .resolve(Path::new("/no/such"), Create::Nothing)
            .unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(err.at, Path::new("/no"));
        let err = r
            .resolve(Path::new("/file/below"), Create::Directory)
            .unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(err.to_string(), "/file: Not a directory (os error 20)");
    }

    #[test]
    fn magic_links_are_resolved_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        // What `/proc/self/root` reads as from here: `/`. Resolved inside the root, it is the
        // root, not the host's `/`.
        symlink("/proc/self/root", dir.path().join("me")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        symlink("/", dir.path().join("proc/self/root")).unwrap();
        let found = root(&dir)
            .resolve(Path::new("/me"), Create::Nothing)
            .unwrap();
        assert_eq!(host_path(&found), dir.path());
    }

    #[test]
    fn open_beneath_refuses_what_leaves_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/in")).unwrap();
        symlink("in", dir.path().join("sub/ok")).unwrap();
        symlink("/etc", dir.path().join("abs")).unwrap();
        symlink("../../../../../../etc", dir.path().join("sub/up")).unwrap();
        let r = root(&dir);
        let fd = r.open_beneath(Path::new("/sub/ok")).unwrap();
        assert_eq!(fd_target(fd.as_fd()).unwrap(), dir.path().join("sub/in"));
        let fd = r.open_beneath(Path::new("")).unwrap();
        assert_eq!(fd_target(fd.as_fd()).unwrap(), dir.path());
        for bad in ["/abs", "abs/passwd", "sub/up", "../etc"] {
            let err = r.open_beneath(Path::new(bad)).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{bad}: {err}");
        }
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
        assert!(matches!(
            read("/", 1024),
            Err(ReadError::NotRegular("directory"))
        ));
    }

    #[test]
    fn reads_through_symlinks_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "host\n").unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        symlink(outside.path().join("passwd"), dir.path().join("etc/passwd")).unwrap();
        assert!(matches!(
            read_file_in_root(dir.path(), Path::new("/etc/passwd"), 1024),
            Err(ReadError::Missing)
        ));
    }

    #[test]
    fn symlink_loops_fail() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = root(&dir)
            .resolve(Path::new("/a"), Create::Directory)
            .unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ELOOP));
    }
}
