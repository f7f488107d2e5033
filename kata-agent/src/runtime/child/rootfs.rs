//! Building a container's root inside its new mount namespace: propagation, the rootfs bind,
//! the spec's mounts, `/dev`, `pivot_root`, sysctls, masked and read-only paths, and finally
//! the read-only rootfs remount.
//!
//! Every destination is resolved inside the rootfs by an `O_NOFOLLOW` walk that opens each
//! component ([`Root::resolve`]) and is mounted on through its descriptor ([`mount_on`]), so a
//! directory swapped for a symlink meanwhile (by another container writing the same tree)
//! cannot move the mount outside the rootfs; bind sources inside a tree the pod's containers
//! write are opened beneath it ([`Root::open_beneath`]).

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::{open, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, makedev, mknodat, umask, Mode, SFlag};
use nix::unistd::{
    chdir, chroot, fchdir, fchownat, pivot_root, sethostname, symlinkat, unlinkat, UnlinkatFlags,
};

use super::{ChildError, ChildResult};
use crate::error::AgentError;
use crate::mount::{attach, mount_on, remount_bind, settle, MountOptions};
use crate::runtime::config::{ContainerSetup, DeviceNode, MountKind, MountStep};
use crate::runtime::path::{fd_path, Create, InRoot, Root};

/// A new session, with stdin as the controlling terminal when there is one.
pub(super) fn prepare_session(terminal: bool) -> ChildResult<()> {
    nix::unistd::setsid().map_err(|e| ChildError::sys("setsid", e))?;
    if terminal {
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) and fd 0 is the pty
        // slave the agent gave us.
        let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        if r != 0 {
            return Err(ChildError::sys(
                "make the pty the controlling terminal",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Builds the container's root and moves into it.
pub(super) fn setup(cfg: &ContainerSetup, terminal: bool) -> ChildResult<()> {
    let rootfs = &cfg.rootfs;
    let propagation = MsFlags::from_bits_truncate(cfg.root_propagation);
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .map_err(|e| ChildError::sys(format!("make / {propagation:?}"), e))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| ChildError::sys(format!("bind rootfs {}", rootfs.display()), e))?;

    // Opened after the bind above, so that what is mounted through it lands in the new mount
    // (the one pivot_root enters), and before anything of the container's tree is walked.
    let root = Root::open(rootfs)
        .map_err(|e| ChildError::sys(format!("open rootfs {}", rootfs.display()), e))?;
    for m in &cfg.mounts {
        mount_step(&root, m)?;
    }

    let old_umask = umask(Mode::empty());
    for d in &cfg.devices {
        create_device(&root, d)?;
    }
    umask(old_umask);
    if cfg.dev_symlinks {
        dev_symlinks(&root)?;
    }
    if terminal {
        bind_console(&root)?;
    }
    drop(root);

    if let Some(h) = &cfg.hostname {
        sethostname(h).map_err(|e| ChildError::sys(format!("sethostname {h:?}"), e))?;
    }
    if let Some(d) = &cfg.domainname {
        let r = {
            // SAFETY: setdomainname reads `len` bytes from the pointer, which points into `d`.
            unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) }
        };
        if r != 0 {
            return Err(ChildError::sys(
                format!("setdomainname {d:?}"),
                std::io::Error::last_os_error(),
            ));
        }
    }

    enter_root(rootfs, cfg.no_pivot)?;
    if cfg.share_root {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| ChildError::sys("make / rshared", e))?;
    }

    for (key, (path, value)) in &cfg.sysctl {
        fs::write(path, value).map_err(|e| {
            ChildError::field(format!("linux.sysctl.{key}"), format!("cannot be set: {e}"))
        })?;
    }
    // The container's own root now: `/` of a walk is the rootfs.
    let root = Root::open(Path::new("/")).map_err(|e| ChildError::sys("open /", e))?;
    for p in &cfg.readonly_paths {
        readonly_path(&root, p)?;
    }
    for p in &cfg.masked_paths {
        mask_path(&root, p)?;
    }
    drop(root);
    if cfg.readonly_rootfs {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(|e| ChildError::sys("remount / read-only", e))?;
    }
    Ok(())
}

/// One of the spec's mounts. Errors name it: `mounts[3].source` or `mounts[3].destination`
/// when that cannot be opened inside its tree, `mounts[3]` when the mount itself fails.
fn mount_step(root: &Root, m: &MountStep) -> ChildResult<()> {
    let i = m.index;
    let opts = MountOptions::parse(&m.options);
    let destination = |create| {
        resolve_destination(root, &m.destination, create)
            .map_err(|message| ChildError::field(format!("mounts[{i}].destination"), message))
    };
    let mounted = match &m.kind {
        MountKind::Bind { source, within } => {
            let bad_source = |message| ChildError::field(format!("mounts[{i}].source"), message);
            let fd = open_bind_source(source, within.as_deref()).map_err(bad_source)?;
            let st = fstat(&fd)
                .map_err(|e| bad_source(format!("{} cannot be examined: {e}", source.display())))?;
            // A directory is mounted on a directory, anything else on a file.
            let dest = destination(if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                Create::Directory
            } else {
                Create::File
            })?;
            mount_on(root, &dest, Some(&fd_path(fd.as_fd())), None, &opts)
        }
        MountKind::Filesystem { fstype, source } => {
            let dest = destination(Create::Directory)?;
            match attach(&dest, Some(Path::new(source)), Some(fstype), &opts) {
                Ok(()) => settle(root, &dest, &opts),
                // sysfs cannot be mounted where the network namespace is not ours: bind it.
                Err(_) if fstype == "sysfs" => {
                    let bind = MountOptions::parse(&["rbind", "ro", "nosuid", "nodev", "noexec"]);
                    mount_on(root, &dest, Some(Path::new("/sys")), None, &bind)
                }
                Err(e) => Err(AgentError::sys(
                    format!(
                        "mount {source} on {} in {} (type {fstype}, options {:?})",
                        dest.rel().display(),
                        root.path().display(),
                        opts.data
                    ),
                    e,
                )),
            }
        }
    };
    mounted.map_err(|e| ChildError::field(format!("mounts[{i}]"), e.to_string()))
}

/// Opens a bind source `O_PATH`. One inside a tree the pod's containers write (`within`: a
/// volume, a rootfs) is opened beneath that tree, so a symlink planted there cannot make it name
/// something outside; any other is a guest path the agent was given and is opened as it is.
fn open_bind_source(source: &Path, within: Option<&Path>) -> Result<OwnedFd, String> {
    let plain = || {
        nix::fcntl::open(source, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| format!("{} cannot be opened: {e}", source.display()))
    };
    let Some(tree) = within else {
        return plain();
    };
    let rel = source.strip_prefix(tree).unwrap_or(source);
    if rel.as_os_str().is_empty() {
        // The tree itself (a volume's mount point, maybe a file): named by the agent.
        return plain();
    }
    let tree_root = Root::open(tree).map_err(|e| {
        format!(
            "{}: its volume {} cannot be opened: {e}",
            source.display(),
            tree.display()
        )
    })?;
    tree_root.open_beneath(rel).map_err(|e| {
        if e.raw_os_error() == Some(libc::EXDEV) {
            format!(
                "{} leaves {} (a tree the pod's containers write) through a symlink or '..' \
                 ({e}): a bind source inside a volume or rootfs must stay inside it",
                source.display(),
                tree.display()
            )
        } else {
            format!(
                "{} cannot be opened inside {}: {e}",
                source.display(),
                tree.display()
            )
        }
    })
}

/// Resolves a mount destination inside the rootfs, creating what is missing; the root itself
/// is refused (a mount there would replace the whole rootfs).
fn resolve_destination(root: &Root, dest: &Path, create: Create) -> Result<InRoot, String> {
    let found = root.resolve(dest, create).map_err(|e| {
        format!(
            "{} cannot be resolved inside the rootfs: {e}",
            dest.display()
        )
    })?;
    if found.is_root() {
        return Err(format!(
            "{} resolves to the container's root directory: a mount there would replace the \
             rootfs",
            dest.display()
        ));
    }
    Ok(found)
}

/// The directory a path inside the rootfs goes in (created when missing) and its name there.
fn parent_and_name<'a>(root: &Root, path: &'a Path) -> ChildResult<(InRoot, &'a std::ffi::OsStr)> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ChildError::msg(format!(
            "{} does not name a file",
            path.display()
        )));
    };
    let dir = root.resolve(parent, Create::Directory).map_err(|e| {
        ChildError::msg(format!(
            "{} cannot be resolved inside the rootfs: {e}",
            parent.display()
        ))
    })?;
    Ok((dir, name))
}

fn create_device(root: &Root, d: &DeviceNode) -> ChildResult<()> {
    let (dir, name) = parent_and_name(root, &d.path)?;
    let dir_fd = dir.fd();
    let _ = unlinkat(dir_fd, name, UnlinkatFlags::NoRemoveDir);
    let kind = SFlag::from_bits_truncate(d.kind);
    match mknodat(
        dir_fd,
        name,
        kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    ) {
        Ok(()) => fchownat(
            dir_fd,
            name,
            Some(nix::unistd::Uid::from_raw(d.uid)),
            Some(nix::unistd::Gid::from_raw(d.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ChildError::sys(format!("chown {}", d.path.display()), e)),
        // Without CAP_MKNOD (or on a filesystem that refuses nodes): bind the guest's node.
        Err(nix::Error::EPERM) if d.path.starts_with("/dev") => {
            let dest = resolve_destination(root, &d.path, Create::File).map_err(ChildError::msg)?;
            let bind = MountOptions::parse(&["bind"]);
            mount_on(root, &dest, Some(&d.path), None, &bind)
                .map_err(|e| ChildError::sys(format!("bind {}", d.path.display()), e))
        }
        Err(e) => Err(ChildError::sys(format!("mknod {}", d.path.display()), e)),
    }
}

fn dev_symlinks(root: &Root) -> ChildResult<()> {
    let dev = root
        .resolve(Path::new("/dev"), Create::Nothing)
        .map_err(|e| ChildError::sys("resolve /dev", e))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        if link == "ptmx" {
            let _ = unlinkat(dev.fd(), link, UnlinkatFlags::NoRemoveDir);
        }
        match symlinkat(target, dev.fd(), link) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(ChildError::sys(format!("symlink /dev/{link}"), e)),
        }
    }
    Ok(())
}

/// Binds our terminal (the pty slave on fd 0) onto `/dev/console`, as runc does.
fn bind_console(root: &Root) -> ChildResult<()> {
    // By its path in the agent's devpts: fd 0 itself was opened in the agent's mount namespace,
    // and a bind source must be in ours (the kernel refuses the magic link with EINVAL).
    let Ok(slave) = fs::read_link("/proc/thread-self/fd/0") else {
        return Ok(());
    };
    match root.resolve(Path::new("/dev"), Create::Nothing) {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(ChildError::sys("resolve /dev", e)),
    }
    let console = resolve_destination(root, Path::new("/dev/console"), Create::File)
        .map_err(ChildError::msg)?;
    std::fs::set_permissions(
        fd_path(console.fd()),
        std::fs::Permissions::from_mode(0o600),
    )
    .ok();
    let bind = MountOptions::parse(&["bind"]);
    mount_on(root, &console, Some(&slave), None, &bind).map_err(|e| {
        ChildError::sys(
            format!("bind the terminal {} on /dev/console", slave.display()),
            e,
        )
    })
}

/// `pivot_root` into `rootfs` and detach the old root; on the initramfs (where pivot_root is
/// refused) move the rootfs over `/` and chroot instead.
fn enter_root(rootfs: &Path, no_pivot: bool) -> ChildResult<()> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let old_root = open("/", flags, Mode::empty()).map_err(|e| ChildError::sys("open /", e))?;
    let new_root = open(rootfs, flags, Mode::empty())
        .map_err(|e| ChildError::sys(format!("open {}", rootfs.display()), e))?;
    fchdir(&new_root).map_err(|e| ChildError::sys("chdir rootfs", e))?;
    let pivoted = if no_pivot {
        Err(nix::Error::EINVAL)
    } else {
        pivot_root(".", ".")
    };
    match pivoted {
        Ok(()) => {
            // The old root is now stacked under the new one: detach it without propagating the
            // unmount to the agent's namespace.
            fchdir(&old_root).map_err(|e| ChildError::sys("chdir old root", e))?;
            mount(
                None::<&str>,
                ".",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| ChildError::sys("make old root rslave", e))?;
            umount2(".", MntFlags::MNT_DETACH)
                .map_err(|e| ChildError::sys("detach old root", e))?;
        }
        Err(nix::Error::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(|e| ChildError::sys("move rootfs over /", e))?;
            chroot(".").map_err(|e| ChildError::sys("chroot", e))?;
        }
        Err(e) => return Err(ChildError::sys("pivot_root", e)),
    }
    chdir("/").map_err(|e| ChildError::sys("chdir /", e))
}

/// Binds a path of the new root onto itself read-only (a missing path is skipped).
fn readonly_path(root: &Root, p: &Path) -> ChildResult<()> {
    let found = match root.resolve(p, Create::Nothing) {
        Ok(found) if !found.is_root() => found,
        Ok(_) => {
            return Err(ChildError::msg(
                "a read-only path cannot be / itself (use root.readonly)",
            ))
        }
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => {
            return Err(ChildError::sys(
                format!("resolve readonly path {}", p.display()),
                e,
            ))
        }
    };
    let opts = MountOptions::parse(&["rbind", "ro"]);
    mount_on(root, &found, Some(&fd_path(found.fd())), None, &opts)
        .map_err(|e| ChildError::sys(format!("bind readonly path {}", p.display()), e))
}

/// Covers a path of the new root: a read-only tmpfs on a directory, `/dev/null` on anything
/// else (a missing path is skipped).
fn mask_path(root: &Root, p: &Path) -> ChildResult<()> {
    let found = match root.resolve(p, Create::Nothing) {
        Ok(found) if !found.is_root() => found,
        Ok(_) => return Err(ChildError::msg("a masked path cannot be / itself")),
        Err(_) => return Ok(()),
    };
    let is_dir = fstat(found.fd()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
    let (source, fstype, opts) = if is_dir {
        ("tmpfs", Some("tmpfs"), MountOptions::parse(&["ro"]))
    } else {
        ("/dev/null", None, MountOptions::parse(&["bind"]))
    };
    match attach(&found, Some(Path::new(source)), fstype, &opts) {
        Ok(()) => settle(root, &found, &opts)
            .map_err(|e| ChildError::sys(format!("mask {}", p.display()), e)),
        // No /dev/null in a rootfs without a /dev mount: nothing to mask with, as before.
        Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(ChildError::sys(format!("mask {}", p.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::{hook, mount_points};
    use crate::runtime::path::fd_target;
    use nix::sched::{unshare, CloneFlags};
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// Runs `f` on a thread of its own in a private mount namespace: what it mounts is seen by
    /// that thread only and goes away with it.
    fn in_private_mount_ns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (a mount namespace, mounts)"
        );
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                // CLONE_NEWNS unshares this thread's fs_struct too: the other test threads
                // keep the host's namespace.
                unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("make / private");
                f()
            });
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Whether something is mounted at `path` in this thread's mount namespace.
    fn mounted_at(path: &Path) -> bool {
        let info = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        mount_points(&info).iter().any(|m| Path::new(m) == path)
    }

    fn tmpfs_at(index: usize, dest: &str) -> MountStep {
        MountStep {
            index,
            destination: dest.into(),
            kind: MountKind::Filesystem {
                fstype: "tmpfs".into(),
                source: "tmpfs".into(),
            },
            options: vec!["nosuid".into()],
        }
    }

    fn bind_at(
        index: usize,
        dest: &str,
        source: &Path,
        within: Option<&Path>,
        ro: bool,
    ) -> MountStep {
        let mut options = vec!["rbind".to_string()];
        if ro {
            options.push("ro".into());
        }
        MountStep {
            index,
            destination: dest.into(),
            kind: MountKind::Bind {
                source: source.to_path_buf(),
                within: within.map(Path::to_path_buf),
            },
            options,
        }
    }

    /// A rootfs with `/vol/sub`, and a directory outside it with `sub` too.
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(rootfs.join("vol/sub")).unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        (tmp, rootfs, outside)
    }

    /// What another container writing the same tree does: `/vol` moved away, and a symlink to
    /// a directory outside the rootfs put in its place.
    fn swap_vol_for_a_symlink(rootfs: &Path, outside: &Path) {
        fs::rename(rootfs.join("vol"), rootfs.join("vol.old")).unwrap();
        symlink(outside, rootfs.join("vol")).unwrap();
    }

    #[test]
    fn a_path_string_walked_again_by_mount_follows_a_swapped_in_symlink_out() {
        // The control for the test below: the swap really moves a mount made through the
        // resolved path string (what the agent did before) out of the rootfs.
        let (_tmp, rootfs, outside) = tree();
        in_private_mount_ns(|| {
            let root = Root::open(&rootfs).unwrap();
            let dest = root
                .resolve(Path::new("/vol/sub"), Create::Directory)
                .unwrap();
            let as_string = fd_target(dest.fd()).unwrap();
            assert_eq!(as_string, rootfs.join("vol/sub"));
            swap_vol_for_a_symlink(&rootfs, &outside);
            mount(
                Some("tmpfs"),
                &as_string,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            assert!(mounted_at(&outside.join("sub")), "the mount escaped");
        });
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_before_the_mount_keeps_the_mount_inside() {
        let (_tmp, rootfs, outside) = tree();
        in_private_mount_ns(|| {
            let root = Root::open(&rootfs).unwrap();
            let (r, o) = (rootfs.clone(), outside.clone());
            hook::set_before_attach(move || swap_vol_for_a_symlink(&r, &o));
            mount_step(&root, &tmpfs_at(3, "/vol/sub")).unwrap_or_else(|e| panic!("{e:?}"));
            assert!(
                fs::symlink_metadata(rootfs.join("vol"))
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "the hook ran"
            );
            assert!(!mounted_at(&outside.join("sub")), "the mount escaped");
            assert!(
                mounted_at(&rootfs.join("vol.old/sub")),
                "it is on the directory that was resolved"
            );
        });
    }

    type Job = Box<dyn FnOnce() + Send>;

    /// Another container writing the same tree: runs file operations on a thread that stays in
    /// the test's mount namespace, where the mounts under test are not (renaming a mount point
    /// is refused only in the namespace where it is one).
    fn neighbour() -> std::sync::mpsc::Sender<(Job, std::sync::mpsc::Sender<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<(Job, std::sync::mpsc::Sender<()>)>();
        std::thread::spawn(move || {
            for (job, done) in rx {
                job();
                let _ = done.send(());
            }
        });
        tx
    }

    #[test]
    fn a_destination_moved_after_the_mount_fails_the_step_before_its_flags() {
        // The bind lands on the resolved directory, which another container then renames and
        // replaces by an empty one: the read-only remount must not go to whatever is there now
        // (the rootfs's own mount).
        let (tmp, rootfs, _outside) = tree();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let other = neighbour();
        in_private_mount_ns(|| {
            let root = Root::open(&rootfs).unwrap();
            let sub = rootfs.join("vol/sub");
            let moved = rootfs.join("vol/sub.moved");
            hook::set_before_settle(move || {
                let (done, wait) = std::sync::mpsc::channel();
                let job: Job = Box::new(move || {
                    fs::rename(&sub, &moved).unwrap();
                    fs::create_dir(&sub).unwrap();
                });
                other.send((job, done)).unwrap();
                wait.recv().expect("the neighbour renamed the destination");
            });
            let err = mount_step(&root, &bind_at(4, "/vol/sub", &src, None, true)).unwrap_err();
            assert_eq!(err.0.field.as_deref(), Some("mounts[4]"));
            assert!(
                err.0.message.contains(&format!(
                    "the mount did not land on {}",
                    rootfs.join("vol/sub").display()
                )),
                "{}",
                err.0.message
            );
            assert!(
                mounted_at(&rootfs.join("vol/sub.moved")),
                "the bind moved with its directory"
            );
            let flags = nix::sys::statvfs::statvfs(&rootfs).unwrap().flags();
            assert!(
                !flags.contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
                "the rootfs's mount was not made read-only"
            );
        });
    }

    #[test]
    fn destinations_behind_symlinks_to_the_host_stay_in_the_rootfs() {
        let (_tmp, rootfs, outside) = tree();
        fs::write(outside.join("marker"), "host").unwrap();
        symlink(&outside, rootfs.join("abs")).unwrap();
        let up = "../".repeat(rootfs.components().count() + 2);
        symlink(
            format!("{up}{}", outside.strip_prefix("/").unwrap().display()),
            rootfs.join("rel"),
        )
        .unwrap();
        symlink("/", rootfs.join("slash")).unwrap();
        in_private_mount_ns(|| {
            let root = Root::open(&rootfs).unwrap();
            for (i, dest) in ["/abs/m", "/rel/n", "/slash/tmp/o"].into_iter().enumerate() {
                mount_step(&root, &tmpfs_at(i, dest)).unwrap_or_else(|e| panic!("{dest}: {e:?}"));
            }
            let inside = rootfs.join(outside.strip_prefix("/").unwrap());
            assert!(mounted_at(&inside.join("m")) && mounted_at(&inside.join("n")));
            assert!(mounted_at(&rootfs.join("tmp/o")));
            for name in ["m", "n"] {
                assert!(!mounted_at(&outside.join(name)));
            }
            assert!(!mounted_at(Path::new("/tmp/o")));
            // `/slash` is the root itself: refused, naming the mount.
            let err = mount_step(&root, &tmpfs_at(7, "/slash")).unwrap_err();
            assert_eq!(err.0.field.as_deref(), Some("mounts[7].destination"));
            assert!(
                err.0
                    .message
                    .starts_with("/slash resolves to the container's root directory"),
                "{}",
                err.0.message
            );
        });
        let left: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "nothing made outside the rootfs: {left:?}");
        assert!(!Path::new("/tmp/o").exists());
    }

    #[test]
    fn a_bind_source_that_leaves_its_volume_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        let vol = tmp.path().join("vol");
        fs::create_dir_all(&rootfs).unwrap();
        fs::create_dir_all(vol.join("data")).unwrap();
        fs::write(vol.join("data/f"), "in the volume").unwrap();
        symlink("data", vol.join("ok")).unwrap();
        symlink("/", vol.join("root")).unwrap();
        symlink("../".repeat(12), vol.join("up")).unwrap();
        in_private_mount_ns(|| {
            let root = Root::open(&rootfs).unwrap();
            let step = bind_at(0, "/mnt", &vol.join("ok"), Some(&vol), true);
            mount_step(&root, &step).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(
                fs::read_to_string(rootfs.join("mnt/f")).unwrap(),
                "in the volume"
            );
            for (i, name) in ["root", "up"].into_iter().enumerate() {
                let source = vol.join(name);
                let step = bind_at(i + 1, &format!("/m{i}"), &source, Some(&vol), false);
                let err = mount_step(&root, &step).unwrap_err();
                assert_eq!(
                    err.0.field,
                    Some(format!("mounts[{}].source", i + 1)),
                    "{}",
                    err.0.message
                );
                assert!(
                    err.0.message.starts_with(&format!(
                        "{} leaves {} (a tree the pod's containers write)",
                        source.display(),
                        vol.display()
                    )),
                    "{}",
                    err.0.message
                );
                assert!(!rootfs.join(format!("m{i}")).exists(), "nothing made");
            }
        });
    }
}
