//! `watchable-bind` storages: a small host directory (a Kubernetes configmap, secret or
//! projected volume) mirrored into a tmpfs, and mirrored again when it changes.
//!
//! Kata's runtime sends this driver for such volumes when the shared directory is virtio-fs,
//! on which the guest gets no inotify events: a container watching its configmap would never
//! see an update. The agent copies the source (a directory, or a file, in the shared
//! directory) to the mount point, which lies directly in a `watchable` directory the agent
//! mounts a tmpfs on, and looks for changes every [`INTERVAL`]: new and modified entries are
//! copied (files rewritten in place, so a container's bind of a single file sees the new
//! content), removed ones deleted. A source of more than [`MAX_ENTRIES`] files or
//! [`MAX_BYTES`] bytes is bind mounted instead (it is then no longer copied), as Kata's agent
//! does.
//!
//! Kata's agent takes the tmpfs root only at its fixed guest paths
//! (`/run/kata-containers/shared/containers[/passthrough]/watchable`); this agent takes any
//! directory named `watchable`, which must exist (the runtime makes it in the shared
//! directory).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{umount2, MntFlags};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{AgentError, Result};
use crate::mount::{mount_with, MountOptions};

/// How often sources are looked at for changes (Kata's agent: 2 s).
pub const INTERVAL: Duration = Duration::from_secs(2);

/// The most files (and symlinks) a mirrored source may hold (Kata's agent: 16).
pub const MAX_ENTRIES: usize = 16;

/// The most bytes a mirrored source may hold (Kata's agent: 1 MiB).
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The name the tmpfs root's directory must have.
const ROOT_NAME: &str = "watchable";

/// Checks a `watchable-bind` storage: an absolute source, a mount point directly in a
/// directory named `watchable`. Returns that directory (the tmpfs root).
pub(super) fn check(source: &str, mount_point: &Path, field: &str) -> Result<PathBuf> {
    if !Path::new(source).is_absolute() {
        return Err(AgentError::invalid(
            format!("{field}.source"),
            format!("must be an absolute guest path for a watchable-bind, got {source:?}"),
        ));
    }
    match mount_point.parent() {
        Some(root) if root.file_name().is_some_and(|n| n == ROOT_NAME) => Ok(root.to_path_buf()),
        _ => Err(AgentError::invalid(
            format!("{field}.mount_point"),
            format!(
                "{} is not directly in a directory named {ROOT_NAME:?}, which a watchable-bind's \
                 tmpfs is mounted on",
                mount_point.display()
            ),
        )),
    }
}

/// What one entry of a source looked like at the last scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    modified: SystemTime,
    dir: bool,
}

/// One mirrored source.
#[derive(Debug)]
struct Mirror {
    source: PathBuf,
    target: PathBuf,
    /// The source's entries, by path relative to it (`""`: the source itself).
    seen: HashMap<PathBuf, Seen>,
    /// Too large to mirror: bind mounted instead.
    bound: bool,
    released: bool,
}

/// Why a source is not mirrored.
#[derive(Debug)]
enum ScanError {
    TooLarge(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for ScanError {
    fn from(e: std::io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Lists the entries of `source` (not following symlinks), checking the limits.
fn scan(source: &Path) -> std::result::Result<HashMap<PathBuf, Seen>, ScanError> {
    let mut out = HashMap::new();
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = under(source, &rel);
        let meta = std::fs::symlink_metadata(&path)?;
        let dir = meta.is_dir();
        if dir {
            for entry in std::fs::read_dir(&path)? {
                stack.push(rel.join(entry?.file_name()));
            }
        } else {
            files += 1;
            bytes += meta.len();
            if files > MAX_ENTRIES || bytes > MAX_BYTES {
                return Err(ScanError::TooLarge(format!(
                    "more than {MAX_ENTRIES} files or {MAX_BYTES} bytes"
                )));
            }
        }
        out.insert(
            rel,
            Seen {
                modified: meta.modified()?,
                dir,
            },
        );
    }
    Ok(out)
}

/// Opens directory `rel` below `base` (empty: `base` itself) one component at a time, never
/// following a symlink: a container that can write in its copy cannot make the agent write
/// or delete outside it by planting a link.
fn open_dir_nofollow(base: &Path, rel: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut fd = nix::fcntl::open(base, flags, Mode::empty())?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(std::io::Error::other(format!(
                "{} is not a plain relative path",
                rel.display()
            )));
        };
        fd = openat(fd.as_fd(), name, flags, Mode::empty())?;
    }
    Ok(fd)
}

/// Where an entry of the copy is: its directory (opened without following links) and its
/// name. `rel` empty: the copy itself, in the tmpfs root.
fn place(target: &Path, rel: &Path) -> std::io::Result<(OwnedFd, OsString)> {
    let (base, parent, name) = if rel.as_os_str().is_empty() {
        (
            target.parent().unwrap_or(Path::new("/")),
            Path::new(""),
            target.file_name(),
        )
    } else {
        (
            target,
            rel.parent().unwrap_or(Path::new("")),
            rel.file_name(),
        )
    };
    let name = name
        .ok_or_else(|| std::io::Error::other(format!("{} has no name", rel.display())))?
        .to_os_string();
    Ok((open_dir_nofollow(base, parent)?, name))
}

/// Copies one entry from `from` to its place in the copy: a directory made, a file rewritten
/// in place (a bind of it sees the new content), a symlink made again; owner and mode as the
/// source's. Nothing is followed on the copy's side.
fn copy_entry(from: &Path, target: &Path, rel: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let (dir, name) = place(target, rel)?;
    let (uid, gid) = (
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
    );
    let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
    if meta.file_type().is_symlink() {
        match unlinkat(dir.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        symlinkat(&std::fs::read_link(from)?, dir.as_fd(), name.as_os_str())?;
        fchownat(
            dir.as_fd(),
            name.as_os_str(),
            uid,
            gid,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        return Ok(());
    }
    if meta.is_dir() {
        match mkdirat(dir.as_fd(), name.as_os_str(), mode) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let made = openat(
            dir.as_fd(),
            name.as_os_str(),
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )?;
        fchmod(made.as_fd(), mode)?;
        fchown(made.as_fd(), uid, gid)?;
        return Ok(());
    }
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)?;
    let dst = openat(
        dir.as_fd(),
        name.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        mode,
    )?;
    let mut dst = std::fs::File::from(dst);
    std::io::copy(&mut src, &mut dst)?;
    fchmod(dst.as_fd(), mode)?;
    fchown(dst.as_fd(), uid, gid)?;
    Ok(())
}

/// Removes an entry (a directory with its contents) from the copy, following no link.
fn remove_entry(target: &Path, rel: &Path) -> std::io::Result<()> {
    let (dir, name) = place(target, rel)?;
    match unlinkat(dir.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => {
            // The directory is pinned by its descriptor: no link in the path is followed,
            // and `remove_dir_all` does not follow links inside it.
            let pinned = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
            std::fs::remove_dir_all(pinned.join(&name))
        }
        Err(e) => Err(e.into()),
    }
}

/// `base` joined with `rel`, `base` itself for the empty path (a join would add a `/`, which
/// a file source refuses).
fn under(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

impl Mirror {
    fn target_of(&self, rel: &Path) -> PathBuf {
        under(&self.target, rel)
    }

    /// Brings the target up to date; a source grown too large is bind mounted instead.
    fn sync(&mut self) -> Result<()> {
        if self.bound || self.released {
            return Ok(());
        }
        let now = match scan(&self.source) {
            Ok(now) => now,
            Err(ScanError::TooLarge(why)) => return self.bind_instead(&why),
            Err(ScanError::Io(e)) => {
                return Err(AgentError::io(format!("scan {}", self.source.display()), e))
            }
        };
        for (rel, old) in &self.seen {
            if now.get(rel).map(|n| n.dir) != Some(old.dir) {
                if let Err(e) = remove_entry(&self.target, rel) {
                    tracing::warn!(entry = %self.target_of(rel).display(), error = %e,
                        "watchable storage: entry not removed");
                }
            }
        }
        // Parents before children: shorter relative paths first.
        let mut changed: Vec<(&PathBuf, &Seen)> = now
            .iter()
            .filter(|(rel, n)| self.seen.get(*rel) != Some(*n))
            .collect();
        changed.sort_by_key(|(rel, _)| rel.components().count());
        for (rel, _) in changed {
            let from = under(&self.source, rel);
            if let Err(e) = copy_entry(&from, &self.target, rel) {
                return Err(AgentError::io(
                    format!(
                        "mirror {} to {}",
                        from.display(),
                        self.target_of(rel).display()
                    ),
                    e,
                ));
            }
        }
        self.seen = now;
        Ok(())
    }

    /// Replaces the copy by a bind mount of the source.
    fn bind_instead(&mut self, why: &str) -> Result<()> {
        tracing::info!(source = %self.source.display(), target = %self.target.display(), why,
            "watchable storage too large to mirror: bind mounted instead");
        let file = !self.source.is_dir();
        let _ =
            std::fs::remove_dir_all(&self.target).or_else(|_| std::fs::remove_file(&self.target));
        let made = if file {
            std::fs::File::create(&self.target).map(drop)
        } else {
            std::fs::create_dir(&self.target)
        };
        made.map_err(|e| AgentError::io(format!("create {}", self.target.display()), e))?;
        mount_with(
            Some(&self.source),
            &self.target,
            None,
            &MountOptions::parse(&["rbind"]),
        )?;
        self.bound = true;
        self.seen.clear();
        Ok(())
    }

    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        if self.bound {
            let _ = umount2(&self.target, MntFlags::MNT_DETACH);
        }
        let _ =
            std::fs::remove_dir_all(&self.target).or_else(|_| std::fs::remove_file(&self.target));
    }
}

/// The mirrors and their tmpfs roots, shared with the polling thread.
#[derive(Debug, Default)]
struct Registry {
    mirrors: Vec<Weak<Mutex<Mirror>>>,
    /// Mounted tmpfs roots, with their number of storages.
    roots: HashMap<PathBuf, usize>,
    polling: bool,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    // A poisoned lock only means a panic elsewhere while it was held: the data stays usable.
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn lock(m: &Mutex<Mirror>) -> MutexGuard<'_, Mirror> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Syncs every live mirror every [`INTERVAL`], for the agent's life (one thread).
fn start_polling(reg: &mut Registry) {
    if reg.polling {
        return;
    }
    reg.polling = true;
    let spawned = std::thread::Builder::new()
        .name("watchable-storages".into())
        .spawn(|| loop {
            std::thread::sleep(INTERVAL);
            let live: Vec<Arc<Mutex<Mirror>>> = {
                let mut reg = registry();
                reg.mirrors.retain(|w| w.strong_count() > 0);
                reg.mirrors.iter().filter_map(Weak::upgrade).collect()
            };
            for m in live {
                let mut m = lock(&m);
                if let Err(e) = m.sync() {
                    tracing::warn!(source = %m.source.display(), error = %e,
                        "watchable storage not brought up to date");
                }
            }
        });
    if let Err(e) = spawned {
        reg.polling = false;
        tracing::error!(error = %e, "cannot start the watchable storages' thread");
    }
}

/// A mirrored storage: [`Watch::release`] stops mirroring and removes the copy (and the tmpfs
/// root with its last storage).
#[derive(Debug)]
pub(super) struct Watch {
    mirror: Arc<Mutex<Mirror>>,
    root: PathBuf,
}

impl Watch {
    /// Stops mirroring, removes the copy; unmounts the tmpfs root after its last storage.
    pub(super) fn release(&self) {
        let mut m = lock(&self.mirror);
        if m.released {
            return;
        }
        m.release();
        drop(m);
        let mut reg = registry();
        if let Some(n) = reg.roots.get_mut(&self.root) {
            *n -= 1;
            if *n == 0 {
                reg.roots.remove(&self.root);
                if let Err(e) = umount2(&self.root, MntFlags::MNT_DETACH) {
                    tracing::warn!(root = %self.root.display(), error = %e,
                        "watchable tmpfs not unmounted");
                }
            }
        }
    }
}

/// Mounts the tmpfs root if it is not yet, counting one more storage on it.
fn take_root(reg: &mut Registry, root: &Path, field: &str) -> Result<()> {
    if let Some(n) = reg.roots.get_mut(root) {
        *n += 1;
        return Ok(());
    }
    if !root.is_dir() {
        return Err(AgentError::invalid(
            format!("{field}.mount_point"),
            format!(
                "the watchable directory {} does not exist in the guest (the runtime makes it \
                 in the shared directory)",
                root.display()
            ),
        ));
    }
    mount_with(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        &MountOptions::parse(&["nosuid", "nodev", "mode=0755"]),
    )?;
    reg.roots.insert(root.to_path_buf(), 1);
    Ok(())
}

/// Mirrors `source` to `target` (in the tmpfs root `root`, mounted here if it is not yet) and
/// keeps mirroring it; on failure, leaves nothing behind.
pub(super) fn start(source: &Path, target: &Path, root: &Path, field: &str) -> Result<Watch> {
    let mut reg = registry();
    take_root(&mut reg, root, field)?;
    let mut mirror = Mirror {
        source: source.to_path_buf(),
        target: target.to_path_buf(),
        seen: HashMap::new(),
        bound: false,
        released: false,
    };
    let first = if source.exists() {
        mirror.sync()
    } else {
        Err(AgentError::invalid(
            format!("{field}.source"),
            format!("{} does not exist in the guest", source.display()),
        ))
    };
    let watch = Watch {
        mirror: Arc::new(Mutex::new(mirror)),
        root: root.to_path_buf(),
    };
    if let Err(e) = first {
        drop(reg);
        watch.release();
        return Err(e);
    }
    reg.mirrors.push(Arc::downgrade(&watch.mirror));
    start_polling(&mut reg);
    Ok(watch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_must_lie_in_a_watchable_directory() {
        let mp = Path::new("/run/kata-containers/shared/containers/watchable/c1-cm");
        assert_eq!(
            check("/run/kata-containers/shared/containers/c1-cm", mp, "s").unwrap(),
            Path::new("/run/kata-containers/shared/containers/watchable")
        );
        let err = check("/src", Path::new("/run/elsewhere/c1-cm"), "storages[0]")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("storages[0].mount_point"), "{err}");
        let err = check("relative", mp, "storages[0]")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("storages[0].source"), "{err}");
    }

    fn mirror(source: &Path, target: &Path) -> Mirror {
        Mirror {
            source: source.into(),
            target: target.into(),
            seen: HashMap::new(),
            bound: false,
            released: false,
        }
    }

    #[test]
    fn changes_are_mirrored_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), "1").unwrap();
        std::fs::write(src.join("sub/b"), "2").unwrap();
        std::os::unix::fs::symlink("a", src.join("link")).unwrap();
        let mut m = mirror(&src, &dst);
        m.sync().unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("a")
        );
        let inode = std::fs::metadata(dst.join("a")).unwrap().ino();

        // A change (a later mtime), a new file, a removed directory.
        std::fs::write(src.join("a"), "changed").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(src.join("a"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::write(src.join("c"), "3").unwrap();
        std::fs::remove_dir_all(src.join("sub")).unwrap();
        m.sync().unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("a")).unwrap(), "changed");
        assert_eq!(
            std::fs::metadata(dst.join("a")).unwrap().ino(),
            inode,
            "rewritten in place: a bind of the file sees it"
        );
        assert_eq!(std::fs::read_to_string(dst.join("c")).unwrap(), "3");
        assert!(!dst.join("sub").exists());

        m.release();
        assert!(!dst.exists());
    }

    #[test]
    fn links_planted_in_the_copy_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst, outside) = (
            dir.path().join("src"),
            dir.path().join("dst"),
            dir.path().join("outside"),
        );
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(src.join("sub/x"), "1").unwrap();
        std::fs::write(outside.join("x"), "keep").unwrap();
        let mut m = mirror(&src, &dst);
        m.sync().unwrap();
        // A writer of the copy swaps `sub` for a link to a directory outside it.
        std::fs::remove_dir_all(dst.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, dst.join("sub")).unwrap();
        std::fs::write(src.join("sub/x"), "changed").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(src.join("sub/x"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(m.sync().is_err(), "the link is refused, not followed");
        std::fs::remove_dir_all(src.join("sub")).unwrap();
        let _ = m.sync();
        assert_eq!(
            std::fs::read_to_string(outside.join("x")).unwrap(),
            "keep",
            "nothing outside the copy is written or removed"
        );
    }

    #[test]
    fn a_single_file_source_is_mirrored_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("token"), dir.path().join("copy"));
        std::fs::write(&src, "secret").unwrap();
        let mut m = mirror(&src, &dst);
        m.sync().unwrap();
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "secret");
        m.release();
        assert!(!dst.exists());
    }

    #[test]
    fn a_source_past_the_limits_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..=MAX_ENTRIES {
            std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
        }
        assert!(matches!(scan(dir.path()), Err(ScanError::TooLarge(_))));
        let big = tempfile::tempdir().unwrap();
        std::fs::write(big.path().join("big"), vec![0u8; MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(scan(big.path()), Err(ScanError::TooLarge(_))));
    }
}
