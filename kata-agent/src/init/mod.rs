//! The agent as the guest's PID 1: the filesystems a guest needs, the loopback interface, the
//! console as stdio.
//!
//! Every step is idempotent (an already mounted path is left alone), so the agent also works
//! under a small `/init` script that did part of this, and failures are logged, not fatal: a
//! guest without `/dev/shm` still runs containers.

mod loopback;

use std::path::Path;

use nix::mount::MsFlags;

use crate::mount::is_mount_point;

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

struct GuestMount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

const GUEST_MOUNTS: &[GuestMount] = &[
    GuestMount {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    GuestMount {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    GuestMount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    GuestMount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    GuestMount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    GuestMount {
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    GuestMount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
];

fn mount_one(source: &str, target: &Path, fstype: &str, flags: MsFlags, data: &str) -> bool {
    if is_mount_point(target) {
        tracing::debug!(target = %target.display(), "already mounted");
        return true;
    }
    if let Err(e) = std::fs::create_dir_all(target) {
        tracing::warn!(target = %target.display(), error = %e, "cannot create mount point");
        return false;
    }
    let data = (!data.is_empty()).then_some(data);
    match nix::mount::mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => true,
        Err(e) => {
            tracing::warn!(target = %target.display(), fstype, error = %e, "mount failed");
            false
        }
    }
}

/// Mounts the guest's filesystems: /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and the
/// cgroup hierarchy (v2, or v1 per-controller mounts when the kernel has no cgroup2).
pub fn mount_guest_filesystems() {
    for m in GUEST_MOUNTS {
        mount_one(m.fstype, Path::new(m.target), m.fstype, m.flags, m.data);
    }
    mount_cgroups();
}

fn mount_cgroups() {
    let root = Path::new("/sys/fs/cgroup");
    if is_mount_point(root) {
        return;
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has = |fs: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
    };
    if has("cgroup2")
        && mount_one(
            "cgroup2",
            root,
            "cgroup2",
            NOSUID_NODEV_NOEXEC | MsFlags::MS_RELATIME,
            "",
        )
    {
        tracing::info!("cgroup v2 mounted on /sys/fs/cgroup");
        return;
    }
    if !has("cgroup") {
        tracing::warn!("the kernel has no cgroup filesystem");
        return;
    }
    if !mount_one("tmpfs", root, "tmpfs", NOSUID_NODEV_NOEXEC, "mode=0755") {
        return;
    }
    // /proc/cgroups: subsys_name hierarchy num_cgroups enabled
    let controllers = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    for line in controllers.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 4 && f[3] == "1" {
            let target = root.join(f[0]);
            mount_one("cgroup", &target, "cgroup", NOSUID_NODEV_NOEXEC, f[0]);
        }
    }
    tracing::info!("cgroup v1 controllers mounted under /sys/fs/cgroup");
}

/// Points fds 0-2 at `/dev/console` (or `/dev/null` when there is none), so that logs reach the
/// console and no fd below 3 is ever handed out for something else.
pub fn console_stdio() {
    use std::os::fd::AsRawFd;
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .or_else(|_| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
        });
    if let Ok(f) = console {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds; `f` is open for the duration of the call.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

/// Everything PID 1 does before serving: filesystems, console, loopback.
pub fn setup_guest() {
    mount_guest_filesystems();
    console_stdio();
    if let Err(e) = loopback::up() {
        tracing::warn!(error = %e, "cannot bring up lo");
    }
}

/// Makes this process the reaper of orphaned descendants (PID 1 is one by nature).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Powers the guest off (PID 1 must never exit: the kernel would panic).
pub fn power_off() -> ! {
    nix::unistd::sync();
    // SAFETY: reboot(2) with RB_POWER_OFF takes no pointers.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    // If that was refused, stay: exiting would panic the kernel.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
