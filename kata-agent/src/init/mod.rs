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

/// What guest setup did, to log once logging works (it needs /proc and /dev first).
#[derive(Debug, Default)]
pub struct SetupReport {
    /// What was mounted or found mounted.
    pub done: Vec<String>,
    /// What failed.
    pub problems: Vec<String>,
}

impl SetupReport {
    /// Logs the report.
    pub fn log(&self) {
        for d in &self.done {
            tracing::info!("{d}");
        }
        for p in &self.problems {
            tracing::warn!("{p}");
        }
    }
}

fn mount_one(
    report: &mut SetupReport,
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> bool {
    if is_mount_point(target) {
        report
            .done
            .push(format!("{} already mounted", target.display()));
        return true;
    }
    if let Err(e) = std::fs::create_dir_all(target) {
        report.problems.push(format!(
            "cannot create mount point {}: {e}",
            target.display()
        ));
        return false;
    }
    let data = (!data.is_empty()).then_some(data);
    match nix::mount::mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => {
            report
                .done
                .push(format!("mounted {fstype} on {}", target.display()));
            true
        }
        Err(e) => {
            report.problems.push(format!(
                "mount {fstype} on {} failed: {e}",
                target.display()
            ));
            false
        }
    }
}

/// Mounts the guest's filesystems: /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and the
/// cgroup hierarchy (v2, or v1 per-controller mounts when the kernel has no cgroup2). Paths
/// already mounted are left alone.
pub fn mount_guest_filesystems() -> SetupReport {
    let mut report = SetupReport::default();
    for m in GUEST_MOUNTS {
        mount_one(
            &mut report,
            m.fstype,
            Path::new(m.target),
            m.fstype,
            m.flags,
            m.data,
        );
    }
    mount_cgroups(&mut report);
    report
}

fn mount_cgroups(report: &mut SetupReport) {
    let root = Path::new("/sys/fs/cgroup");
    if is_mount_point(root) {
        report.done.push("/sys/fs/cgroup already mounted".into());
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
            report,
            "cgroup2",
            root,
            "cgroup2",
            NOSUID_NODEV_NOEXEC | MsFlags::MS_RELATIME,
            "",
        )
    {
        return;
    }
    if !has("cgroup") {
        report
            .problems
            .push("the kernel has no cgroup filesystem".into());
        return;
    }
    if !mount_one(
        report,
        "tmpfs",
        root,
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        "mode=0755",
    ) {
        return;
    }
    // /proc/cgroups: subsys_name hierarchy num_cgroups enabled
    let controllers = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    for line in controllers.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 4 && f[3] == "1" {
            let target = root.join(f[0]);
            mount_one(
                report,
                "cgroup",
                &target,
                "cgroup",
                NOSUID_NODEV_NOEXEC,
                f[0],
            );
        }
    }
}

/// Makes sure fds 0-2 are open: the kernel gives init `/dev/console` on them when the initramfs
/// has one; when it has none they are closed, and are pointed at `/dev/console` (from devtmpfs)
/// or `/dev/null` here, so logs reach the console and no pipe or socket ever lands on fds 0-2.
pub fn console_stdio() {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFD only queries the descriptor flags.
    let closed: Vec<i32> = (0..3)
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0)
        .collect();
    if closed.is_empty() {
        return;
    }
    let open = |p: &str| std::fs::OpenOptions::new().read(true).write(true).open(p);
    if let Ok(f) = open("/dev/console").or_else(|_| open("/dev/null")) {
        for fd in closed {
            // SAFETY: dup2 onto a standard fd that is closed; `f` is open for the call.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

/// Brings up the loopback interface.
pub fn loopback_up() -> std::io::Result<()> {
    loopback::up()
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
