//! Tier 2: the sandbox's virtiofsd for real (the Rust virtiofsd `scripts/setup.sh` installs
//! into the cache), against a temporary sandbox directory, no VM: started sandboxed, its death
//! observed, released, detached and adopted, cleaned up after a crash, and bad daemons refused
//! with nothing left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_hypervisor::{DeviceConfig, SharedFs};
use kata_resource::share_fs::{virtiofsd, VirtiofsdConfig};
use kata_resource::{RootfsMode, RootfsSource, SandboxResources, ShareFsConfig};
use kata_testkit::leaks::{helpers_naming, mounts_under};

fn daemon() -> PathBuf {
    let d = virtiofsd::default_daemon();
    assert!(
        d.is_file(),
        "{} is missing: run scripts/setup.sh (it installs the Rust virtiofsd)",
        d.display()
    );
    d
}

fn virtio_fs() -> ShareFsConfig {
    let mut c = ShareFsConfig::new(SharedFs::VirtioFs, 8192);
    c.virtiofsd = VirtiofsdConfig {
        daemon: daemon(),
        extra_args: vec!["--thread-pool-size=1".into()],
        ..VirtiofsdConfig::default()
    };
    c
}

/// Waits until `f` holds (up to 5 s).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(5), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_nothing_left(sandbox: &Path) {
    eventually("no virtiofsd left", || helpers_naming(sandbox).is_empty());
    assert!(
        mounts_under(sandbox).is_empty(),
        "{:?}",
        mounts_under(sandbox)
    );
    // The sandbox directory is the caller's; everything in it is ours.
    let left: Vec<_> = std::fs::read_dir(sandbox)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the sandbox directory: {left:?}");
}

fn kill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn virtiofsd_serves_later_rootfs_mounts_from_its_sandbox_and_release_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let image = tmp.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("hello"), "from the host").unwrap();

    let mut r = SandboxResources::with_share_fs(&sandbox, &virtio_fs()).unwrap();
    let sandbox = sandbox.canonicalize().unwrap();
    let d = r.share_fs().unwrap().daemon().unwrap();
    let (pid, socket) = (d.pid(), d.socket().to_owned());
    assert_eq!(socket, sandbox.join("virtiofsd.sock"));
    let [DeviceConfig::ShareFs(dev)] = &r.devices()[..] else {
        panic!("{:?}", r.devices())
    };
    assert_eq!(dev.vhost_user_socket.as_deref(), Some(socket.as_path()));
    assert_eq!(dev.kind, SharedFs::VirtioFs);

    // The daemon runs sandboxed: its child is in other mount, PID and network namespaces,
    // with the shared directory as its root, under a seccomp filter.
    let pids = d.pids();
    assert_eq!(
        pids.len(),
        2,
        "the daemon and its sandboxed child: {pids:?}"
    );
    let served = pids[1];
    for ns in ["mnt", "pid", "net"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{served}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "{ns} namespace");
    }
    let status = std::fs::read_to_string(format!("/proc/{served}/status")).unwrap();
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // No device nodes, no file capabilities from the guest: CAP_MKNOD and CAP_SETFCAP dropped.
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(cap_eff & (1 << 27 | 1 << 31), 0, "CapEff {cap_eff:#x}");
    assert_ne!(cap_eff & 1, 0, "CAP_CHOWN kept: {cap_eff:#x}");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("--sandbox=namespace") && cmdline.contains("--seccomp=kill"));

    // A rootfs mounted after the daemon started reaches it (the share is a shared mount).
    r.add_container(
        "c1",
        RootfsSource::Directory(image.clone()),
        RootfsMode::ReadOnly,
    )
    .unwrap();
    let seen = std::fs::read_to_string(format!("/proc/{served}/root/c1/rootfs/hello"))
        .expect("the rootfs mount propagates into the daemon's mount namespace");
    assert_eq!(seen, "from the host");

    assert_eq!(r.state().virtiofsd.unwrap().pid, pid);
    r.release().unwrap();
    assert_nothing_left(&sandbox);
    assert!(
        image.join("hello").exists(),
        "the rootfs source is untouched"
    );
}

#[test]
fn the_callers_rust_log_does_not_reach_the_daemon() {
    // virtiofsd reads RUST_LOG over --log-level: with `warn` inherited it never logged the
    // line its readiness is read from, and every start failed after 10 s (found in the lab).
    std::env::set_var("RUST_LOG", "warn");
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let r = SandboxResources::with_share_fs(&sandbox, &virtio_fs())
        .expect("virtiofsd gets ready with RUST_LOG=warn in the caller's environment");
    let sandbox = sandbox.canonicalize().unwrap();
    drop(r);
    assert_nothing_left(&sandbox);
}

#[test]
fn a_killed_virtiofsd_is_observed_and_release_still_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let r = SandboxResources::with_share_fs(&sandbox, &virtio_fs()).unwrap();
    let sandbox = sandbox.canonicalize().unwrap();
    let exit = r.share_fs().unwrap().daemon().unwrap().exit();
    assert_eq!(exit.exited(), None);
    kill(r.share_fs().unwrap().daemon().unwrap().pid());
    eventually("the death is seen", || exit.exited().is_some());
    let why = exit.exited().unwrap();
    assert!(
        why.contains("virtiofsd") && why.contains("SIGKILL") && why.contains("shared filesystem"),
        "{why}"
    );
    drop(r);
    assert_nothing_left(&sandbox);
}

#[test]
fn a_detached_virtiofsd_is_adopted_checked_and_cleaned_up_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let r = SandboxResources::with_share_fs(&sandbox, &virtio_fs()).unwrap();
    let sandbox = sandbox.canonicalize().unwrap();
    let pid = r.share_fs().unwrap().daemon().unwrap().pid();
    let state = r.detach();
    assert_eq!(helpers_naming(&sandbox).len(), 2, "still running");

    // A pid that is not this sandbox's virtiofsd is refused, and nothing changes.
    let mut wrong = state.clone();
    wrong.virtiofsd.as_mut().unwrap().pid = std::process::id();
    let e = SandboxResources::adopt(&sandbox, &wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not this sandbox's virtiofsd"), "{e}");
    assert_eq!(helpers_naming(&sandbox).len(), 2);

    let adopted = SandboxResources::adopt(&sandbox, &state).unwrap();
    let d = adopted.share_fs().unwrap().daemon().unwrap();
    assert_eq!(d.pid(), pid);
    let exit = d.exit();
    // Detached again, then the owner "crashes": cleanup finds it by its command line alone.
    let state = adopted.detach();
    assert_eq!(
        exit.exited(),
        None,
        "a detached daemon is not reported dead"
    );
    SandboxResources::cleanup(&sandbox, None).unwrap();
    assert_nothing_left(&sandbox);
    // Adopting what is gone is refused.
    std::fs::create_dir(sandbox.join("shared")).unwrap();
    let e = SandboxResources::adopt(&sandbox, &state)
        .unwrap_err()
        .to_string();
    assert!(e.contains("virtiofsd pid"), "{e}");
    std::fs::remove_dir(sandbox.join("shared")).unwrap();
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_daemon_that_is_missing_dies_at_start_or_never_gets_ready_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let with = |daemon: PathBuf| {
        let mut c = virtio_fs();
        c.virtiofsd.daemon = daemon;
        c
    };

    let e = SandboxResources::with_share_fs(&sandbox, &with(bin.join("nope")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("virtio_fs_daemon") && e.contains("setup.sh"),
        "{e}"
    );
    assert_nothing_left(&sandbox);

    let dies = script(&bin, "dies", "echo 'cannot sandbox: boom' >&2; exit 3");
    let e = SandboxResources::with_share_fs(&sandbox, &with(dies))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("virtio_fs_daemon") && e.contains("exit code 3") && e.contains("boom"),
        "{e}"
    );
    assert_nothing_left(&sandbox);

    let mute = script(&bin, "mute", "exec sleep 60");
    let e = SandboxResources::with_share_fs(&sandbox, &with(mute))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("did not get ready") && e.contains("killed"),
        "{e}"
    );
    assert_nothing_left(&sandbox);
    assert!(
        kata_testkit::leaks::processes_mentioning(&bin.display().to_string(), "virtiofsd-")
            .is_empty(),
        "the mute daemon is killed"
    );

    // Settings the daemon cannot honour are refused before anything is made.
    let dax = kata_hypervisor::HypervisorConfig {
        virtio_fs_cache_size: 512,
        ..Default::default()
    };
    let e = ShareFsConfig::from_hypervisor(&dax)
        .unwrap_err()
        .to_string();
    assert!(e.contains("virtio_fs_cache_size"), "{e}");
    let off = kata_hypervisor::HypervisorConfig {
        virtio_fs_extra_args: vec!["--seccomp=none".into()],
        ..Default::default()
    };
    let e = ShareFsConfig::from_hypervisor(&off)
        .unwrap_err()
        .to_string();
    assert!(e.contains("virtio_fs_extra_args"), "{e}");
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn virtiofsd_restarts_on_its_socket_for_a_second_vmm_and_stays_supervised() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let image = tmp.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("hello"), "from the host").unwrap();
    let mut r = SandboxResources::with_share_fs(&sandbox, &virtio_fs()).unwrap();
    let sandbox = sandbox.canonicalize().unwrap();
    let share = r.share_fs().unwrap();
    let (old, socket) = {
        let d = share.daemon().unwrap();
        (d.pid(), d.socket().to_owned())
    };
    // Armed before the restart, as a monitor would be: it follows the daemon that runs.
    let exit = share.daemon().unwrap().exit();
    let restarter = share.daemon_restarter().unwrap();

    // A VMM connects and goes away (QEMU killed for a second boot): virtiofsd serves one
    // connection and exits after it, so the next VMM would find no socket.
    drop(std::os::unix::net::UnixStream::connect(&socket).unwrap());
    eventually("the daemon exits with its VMM", || gone(old));

    restarter.restart().unwrap();
    let d = r.share_fs().unwrap().daemon().unwrap();
    let new = d.pid();
    assert_ne!(new, old);
    assert!(gone(old));
    assert_eq!(d.socket(), socket, "the VMM's device keeps its socket");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &std::fs::symlink_metadata(&socket).unwrap().file_type()
    ));
    assert_eq!(d.pids().len(), 2, "sandboxed again: {:?}", d.pids());
    assert_eq!(
        exit.exited(),
        None,
        "neither the old daemon's exit nor its restart is the sandbox's death"
    );
    assert_eq!(r.state().virtiofsd.unwrap().pid, new, "persisted");
    let log = std::fs::read_to_string(d.log()).unwrap();
    assert!(
        log.contains(&format!("virtiofsd (pid {old}) restarted")),
        "{log}"
    );

    // The new daemon serves rootfs mounts made after it started, like the first.
    r.add_container("c1", RootfsSource::Directory(image), RootfsMode::ReadOnly)
        .unwrap();
    let served = r.share_fs().unwrap().daemon().unwrap().pids()[1];
    let seen = std::fs::read_to_string(format!("/proc/{served}/root/c1/rootfs/hello")).unwrap();
    assert_eq!(seen, "from the host");

    // Its death is the sandbox's, seen by the monitor armed before the restart.
    kill(new);
    eventually("the new daemon's death is seen", || exit.exited().is_some());
    let why = exit.exited().unwrap();
    assert!(why.contains(&format!("virtiofsd (pid {new})")), "{why}");

    r.release().unwrap();
    assert_nothing_left(&sandbox);
    // A released daemon is not brought back.
    let e = restarter.restart().unwrap_err().to_string();
    assert!(e.contains("restart virtiofsd"), "{e}");
    assert_nothing_left(&sandbox);
}

#[test]
fn a_restart_whose_new_daemon_fails_leaves_no_daemon_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // The real daemon the first time, then one that dies at start.
    let wrapper = script(
        &bin,
        "virtiofsd",
        &format!(
            "if [ -e {flag} ]; then echo 'second start: boom' >&2; exit 4; fi\ntouch {flag}\nexec {real} \"$@\"",
            flag = bin.join("started").display(),
            real = daemon().display()
        ),
    );
    let mut c = virtio_fs();
    c.virtiofsd.daemon = wrapper;
    let r = SandboxResources::with_share_fs(&sandbox, &c).unwrap();
    let sandbox = sandbox.canonicalize().unwrap();
    let d = r.share_fs().unwrap().daemon().unwrap();
    let exit = d.exit();
    let e = r
        .share_fs()
        .unwrap()
        .restart_daemon()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("virtio_fs_daemon") && e.contains("exit code 4") && e.contains("boom"),
        "{e}"
    );
    assert!(
        helpers_naming(&sandbox).is_empty(),
        "{:?}",
        helpers_naming(&sandbox)
    );
    let why = exit.exited().expect("no daemon serves the share: reported");
    assert!(why.contains("did not start"), "{why}");
    drop(r);
    assert_nothing_left(&sandbox);
}

/// A `tracing` writer into a shared buffer, to see what a call logs.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn removing_a_rootfs_virtiofsd_holds_is_quiet_and_takes_it_out_of_the_daemons_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let image = tmp.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("hello"), "from the host").unwrap();
    let mut r = SandboxResources::with_share_fs(&sandbox, &virtio_fs()).unwrap();
    let sandbox = sandbox.canonicalize().unwrap();
    r.add_container(
        "c1",
        RootfsSource::Directory(image.clone()),
        RootfsMode::ReadOnly,
    )
    .unwrap();
    let served = r.share_fs().unwrap().daemon().unwrap().pids()[1];
    // A descriptor open in the daemon's copy of the mount, as virtiofsd holds one for each
    // inode the guest looked up: a plain umount of ours is refused (EBUSY) while it is open.
    let held = std::fs::File::open(format!("/proc/{served}/root/c1/rootfs/hello")).unwrap();
    let in_daemon_ns = || {
        std::fs::read_to_string(format!("/proc/{served}/mountinfo"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("/c1/rootfs"))
            .count()
    };
    assert_eq!(in_daemon_ns(), 1);

    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let removed = tracing::subscriber::with_default(subscriber, || r.remove_container("c1"));
    assert!(removed.unwrap());
    assert_eq!(logs.text(), "", "removal logged at info or above");
    assert_eq!(in_daemon_ns(), 0, "the daemon's copy goes with ours");
    assert!(
        mounts_under(&sandbox).iter().all(|m| !m.contains("c1")),
        "{:?}",
        mounts_under(&sandbox)
    );
    assert!(!sandbox.join("shared/c1").exists());
    // The open file still reads: the detached mount lives until the daemon lets go.
    drop(held);
    r.release().unwrap();
    assert_nothing_left(&sandbox);
    assert_eq!(
        std::fs::read_to_string(image.join("hello")).unwrap(),
        "from the host"
    );
}

/// The mount options virtiofsd's sandboxed child sees at `/<path>` (its root is the shared
/// directory), from its mountinfo.
fn daemon_mount_options(served: u32, path: &str) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{served}/mountinfo")).unwrap();
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .rfind(|f| f.len() > 5 && f[4] == path)
        .map(|f| f[5].to_owned())
}

#[test]
fn a_read_only_rootfs_is_read_only_and_nosuid_in_the_daemons_namespace_too() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let image = tmp.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("hello"), "from the host").unwrap();
    let mut r = SandboxResources::with_share_fs(&sandbox, &virtio_fs()).unwrap();
    let sandbox = sandbox.canonicalize().unwrap();
    let served = r.share_fs().unwrap().daemon().unwrap().pids()[1];

    for (id, mode) in [("ro", RootfsMode::ReadOnly), ("rw", RootfsMode::ReadWrite)] {
        r.add_container(id, RootfsSource::Directory(image.clone()), mode)
            .unwrap();
        let opts = daemon_mount_options(served, &format!("/{id}/rootfs"))
            .expect("the rootfs mount reaches the daemon's namespace");
        let opts: Vec<&str> = opts.split(',').collect();
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{id}: {opts:?}"
        );
        assert_eq!(
            opts[0],
            if mode == RootfsMode::ReadOnly {
                "ro"
            } else {
                "rw"
            },
            "{id}: the daemon's copy of the mount"
        );
        // Writing through the daemon's view: refused for the read-only rootfs.
        let through = format!("/proc/{served}/root/{id}/rootfs/written");
        let wrote = std::fs::write(&through, "x");
        match mode {
            RootfsMode::ReadOnly => assert_eq!(
                wrote.unwrap_err().raw_os_error(),
                Some(nix::libc::EROFS),
                "a writable copy of a read-only rootfs in the daemon's namespace"
            ),
            _ => {
                wrote.unwrap();
                std::fs::remove_file(image.join("written")).unwrap();
            }
        }
        // No staging mount or directory stays.
        assert!(!sandbox.join("volume-staging").exists());
    }
    assert!(!image.join("written").exists());
    // The leak check sees the daemon's copies, and a removed container takes its copy along.
    let in_daemon = || -> Vec<String> {
        kata_testkit::leaks::helper_namespace_mounts(&sandbox)
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    };
    assert_eq!(in_daemon(), ["/ro/rootfs", "/rw/rootfs"]);
    r.remove_container("ro").unwrap();
    assert_eq!(in_daemon(), ["/rw/rootfs"]);
    r.release().unwrap();
    assert_nothing_left(&sandbox);
}
