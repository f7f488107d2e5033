//! Building a container's root inside its new mount namespace: propagation, the rootfs bind,
//! the spec's mounts, `/dev`, `pivot_root`, sysctls, masked and read-only paths, and finally
//! the read-only rootfs remount.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};
use nix::unistd::{chdir, chroot, fchdir, pivot_root, sethostname};

use super::{ChildError, ChildResult};
use crate::mount::{mount_with, remount_bind, MountOptions};
use crate::runtime::config::{ContainerSetup, DeviceNode, MountKind, MountStep};
use crate::runtime::path::resolve_in_root;

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

    for (i, m) in cfg.mounts.iter().enumerate() {
        mount_step(rootfs, m).map_err(|e| match e.0.field {
            Some(_) => e,
            None => ChildError::field(format!("mounts[{i}]"), e.0.message),
        })?;
    }

    let old_umask = umask(Mode::empty());
    for d in &cfg.devices {
        create_device(rootfs, d)?;
    }
    umask(old_umask);
    if cfg.dev_symlinks {
        dev_symlinks(rootfs)?;
    }
    if terminal {
        bind_console(rootfs)?;
    }

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
    for p in &cfg.readonly_paths {
        readonly_path(p)?;
    }
    for p in &cfg.masked_paths {
        mask_path(p)?;
    }
    if cfg.readonly_rootfs {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(|e| ChildError::sys("remount / read-only", e))?;
    }
    Ok(())
}

fn mount_step(rootfs: &Path, m: &MountStep) -> ChildResult<()> {
    let dest = resolve_in_root(rootfs, &m.destination)
        .map_err(|e| ChildError::sys(format!("resolve {}", m.destination.display()), e))?;
    let opts = MountOptions::parse(&m.options);
    match &m.kind {
        MountKind::Bind { source } => {
            let meta = fs::metadata(source)
                .map_err(|e| ChildError::sys(format!("stat {}", source.display()), e))?;
            if meta.is_dir() {
                mkdir_all(&dest)?;
            } else {
                touch(&dest)?;
            }
            mount_with(Some(source), &dest, None, &opts).map_err(|e| ChildError::msg(e.to_string()))
        }
        MountKind::Filesystem { fstype, source } => {
            mkdir_all(&dest)?;
            let r = mount_with(Some(Path::new(source)), &dest, Some(fstype), &opts);
            match r {
                // sysfs cannot be mounted where the network namespace is not ours: bind it.
                Err(_) if fstype == "sysfs" => {
                    let bind = MountOptions::parse(&["rbind", "ro", "nosuid", "nodev", "noexec"]);
                    mount_with(Some(Path::new("/sys")), &dest, None, &bind)
                        .map_err(|e| ChildError::msg(e.to_string()))
                }
                r => r.map_err(|e| ChildError::msg(e.to_string())),
            }
        }
    }
}

fn mkdir_all(p: &Path) -> ChildResult<()> {
    fs::create_dir_all(p).map_err(|e| ChildError::sys(format!("mkdir {}", p.display()), e))
}

fn touch(p: &Path) -> ChildResult<()> {
    if let Some(parent) = p.parent() {
        mkdir_all(parent)?;
    }
    if p.exists() {
        return Ok(());
    }
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(drop)
        .map_err(|e| ChildError::sys(format!("create {}", p.display()), e))
}

fn create_device(rootfs: &Path, d: &DeviceNode) -> ChildResult<()> {
    let dest = resolve_in_root(rootfs, &d.path)
        .map_err(|e| ChildError::sys(format!("resolve {}", d.path.display()), e))?;
    if let Some(parent) = dest.parent() {
        mkdir_all(parent)?;
    }
    let _ = fs::remove_file(&dest);
    let kind = SFlag::from_bits_truncate(d.kind);
    match mknod(
        &dest,
        kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    ) {
        Ok(()) => {
            nix::unistd::chown(
                &dest,
                Some(nix::unistd::Uid::from_raw(d.uid)),
                Some(nix::unistd::Gid::from_raw(d.gid)),
            )
            .map_err(|e| ChildError::sys(format!("chown {}", dest.display()), e))?;
            Ok(())
        }
        // Without CAP_MKNOD (or on a filesystem that refuses nodes): bind the guest's node.
        Err(nix::Error::EPERM) if d.path.starts_with("/dev") => {
            touch(&dest)?;
            mount(
                Some(&d.path),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ChildError::sys(format!("bind {}", d.path.display()), e))
        }
        Err(e) => Err(ChildError::sys(format!("mknod {}", dest.display()), e)),
    }
}

fn dev_symlinks(rootfs: &Path) -> ChildResult<()> {
    let dev = resolve_in_root(rootfs, Path::new("/dev"))
        .map_err(|e| ChildError::sys("resolve /dev", e))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev.join(link);
        if link == "ptmx" {
            let _ = fs::remove_file(&path);
        }
        match symlink(target, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ChildError::sys(format!("symlink {}", path.display()), e)),
        }
    }
    Ok(())
}

/// Binds our terminal (the pty slave on fd 0) onto `/dev/console`, as runc does.
fn bind_console(rootfs: &Path) -> ChildResult<()> {
    let Ok(slave) = fs::read_link("/proc/self/fd/0") else {
        return Ok(());
    };
    let console = resolve_in_root(rootfs, Path::new("/dev/console"))
        .map_err(|e| ChildError::sys("resolve /dev/console", e))?;
    if !console.parent().is_some_and(Path::exists) {
        return Ok(());
    }
    touch(&console)?;
    fs::set_permissions(&console, fs::Permissions::from_mode(0o600)).ok();
    mount(
        Some(&slave),
        &console,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| ChildError::sys(format!("bind {} on /dev/console", slave.display()), e))
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

fn readonly_path(p: &Path) -> ChildResult<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(ChildError::sys(
                format!("bind readonly path {}", p.display()),
                e,
            ))
        }
    }
    remount_bind(p, MsFlags::MS_RDONLY | MsFlags::MS_REC)
        .map_err(|e| ChildError::sys(format!("remount {} read-only", p.display()), e))
}

fn mask_path(p: &Path) -> ChildResult<()> {
    let meta = match fs::metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let r = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    match r {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(ChildError::sys(format!("mask {}", p.display()), e)),
    }
}
