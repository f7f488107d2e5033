//! Share-fs tests. They mount, so they need root (and skip with a message without it).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::*;
use crate::fail_point::{fail_at, Step};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
    };
}

/// A sandbox dir and a rootfs source with one file, in a fresh temp dir.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        fs::create_dir_all(source.join("etc")).unwrap();
        fs::write(source.join("etc/hostname"), "box\n").unwrap();
        Fixture { tmp }
    }

    fn sandbox_dir(&self) -> PathBuf {
        self.tmp.path().join("sandbox")
    }

    fn source(&self) -> PathBuf {
        self.tmp.path().join("source")
    }

    fn share_fs(&self) -> ShareFs {
        ShareFs::new(self.sandbox_dir(), SharedFs::Virtio9p).unwrap()
    }

    /// Every mount under the temp dir (canonical), from /proc/self/mountinfo.
    fn mounts(&self) -> Vec<PathBuf> {
        mount::mount_points_under(&self.tmp.path().canonicalize().unwrap()).unwrap()
    }
}

#[test]
fn layout_and_storage_match_kata() {
    let fx = Fixture::new();
    let share_fs = fx.share_fs().with_msize_9p(512 * 1024);
    let sandbox = fx.sandbox_dir().canonicalize().unwrap();
    assert_eq!(share_fs.host_path(), sandbox.join("shared"));
    assert!(share_fs.host_path().is_dir());
    assert_eq!(share_fs.mount_tag(), "kataShared");
    assert_eq!(
        share_fs.guest_mount_point(),
        "/run/kata-containers/shared/containers"
    );
    assert_eq!(
        share_fs.storage(),
        GuestStorage {
            driver: "9p".into(),
            source: "kataShared".into(),
            fstype: "9p".into(),
            options: vec![
                "trans=virtio,version=9p2000.L,cache=mmap".into(),
                "nodev".into(),
                "msize=524288".into()
            ],
            mount_point: "/run/kata-containers/shared/containers".into(),
            driver_options: Vec::new(),
        }
    );
    drop(share_fs);
    assert!(!sandbox.join("shared").exists());
    assert!(sandbox.exists(), "the sandbox dir is not ours to remove");

    let share_fs = ShareFs::new(fx.sandbox_dir(), SharedFs::VirtioFs).unwrap();
    let storage = share_fs.storage();
    assert_eq!(
        (storage.driver.as_str(), storage.fstype.as_str()),
        ("virtio-fs", "virtiofs")
    );
    assert!(storage.options.is_empty());
}

#[test]
fn an_inline_virtio_fs_share_has_no_daemon_and_mounts_as_virtiofs() {
    let fx = Fixture::new();
    let share = ShareFs::new(fx.sandbox_dir(), SharedFs::InlineVirtioFs).unwrap();
    let dev = share.device();
    assert_eq!(dev.kind, SharedFs::InlineVirtioFs);
    assert_eq!(
        dev.vhost_user_socket, None,
        "the VMM serves it: no virtiofsd"
    );
    let storage = share.storage();
    assert_eq!(
        (storage.driver.as_str(), storage.fstype.as_str()),
        ("virtio-fs", "virtiofs")
    );
}

#[test]
fn only_9p_virtio_fs_and_inline_virtio_fs_are_set_up() {
    let fx = Fixture::new();
    for kind in [SharedFs::None, SharedFs::VirtioFsNydus] {
        let err = ShareFs::new(fx.sandbox_dir(), kind).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::UnsupportedSharedFs { .. }), "{text}");
        assert!(
            text.contains(&format!("shared_fs = \"{kind}\"")) && text.contains("virtio-9p"),
            "{text}"
        );
        let err = ShareFs::adopt(fx.sandbox_dir(), kind).unwrap_err();
        assert!(matches!(err, Error::UnsupportedSharedFs { .. }), "{err}");
    }
    assert!(!fx.sandbox_dir().join("shared").exists());
}

#[test]
fn existing_shared_dir_is_refused_then_removed_by_remove_stale() {
    require_root!();
    let fx = Fixture::new();
    // A crashed sandbox: its shared dir with a live mount in it.
    let share_fs = fx.share_fs();
    let shared = share_fs.share_rootfs("c1", &fx.source()).unwrap();
    std::mem::forget(shared);
    std::mem::forget(share_fs);
    assert_eq!(fx.mounts().len(), 1);

    let err = ShareFs::new(fx.sandbox_dir(), SharedFs::Virtio9p).unwrap_err();
    assert!(matches!(err, Error::ShareFsExists { .. }), "{err}");
    assert!(err.to_string().contains("/sandbox/shared"), "{err}");

    ShareFs::remove_stale(fx.sandbox_dir()).unwrap();
    assert!(fx.mounts().is_empty());
    assert!(!fx.sandbox_dir().join("shared").exists());
    assert!(
        fx.source().join("etc/hostname").exists(),
        "source untouched"
    );
    ShareFs::remove_stale(fx.tmp.path().join("never-created")).unwrap();
    drop(fx.share_fs());
}

#[test]
fn read_write_rootfs_is_bind_mounted_and_released() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let rootfs = share_fs.share_rootfs("c1", &fx.source()).unwrap();

    let mount_point = share_fs.host_path().join("c1/rootfs");
    assert_eq!(rootfs.host_path(), mount_point);
    assert_eq!(
        rootfs.guest_path(),
        "/run/kata-containers/shared/containers/c1/rootfs"
    );
    assert_eq!(rootfs.container_id(), "c1");
    assert_eq!(fx.mounts(), vec![mount_point.clone()]);
    assert_eq!(
        fs::read_to_string(mount_point.join("etc/hostname")).unwrap(),
        "box\n"
    );
    fs::write(mount_point.join("written"), "x").unwrap();
    assert!(
        fx.source().join("written").exists(),
        "writes reach the source"
    );

    rootfs.release().unwrap();
    assert!(fx.mounts().is_empty());
    assert!(!share_fs.host_path().join("c1").exists());
    assert!(fx.source().join("etc/hostname").exists());
}

#[test]
fn read_only_rootfs_refuses_writes() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let rootfs = share_fs
        .share_rootfs_with("c1", &fx.source(), RootfsMode::ReadOnly)
        .unwrap();
    let err = fs::write(rootfs.host_path().join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    drop(rootfs);
    assert!(fx.mounts().is_empty());
}

#[test]
fn overlay_rootfs_keeps_the_source_untouched() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let a = share_fs
        .share_rootfs_with("a", &fx.source(), RootfsMode::Overlay)
        .unwrap();
    let b = share_fs
        .share_rootfs_with("b", &fx.source(), RootfsMode::Overlay)
        .unwrap();
    fs::write(a.host_path().join("etc/hostname"), "changed\n").unwrap();
    fs::write(a.host_path().join("new"), "x").unwrap();
    assert_eq!(
        fs::read_to_string(fx.source().join("etc/hostname")).unwrap(),
        "box\n"
    );
    assert_eq!(
        fs::read_to_string(b.host_path().join("etc/hostname")).unwrap(),
        "box\n"
    );
    assert!(!fx.source().join("new").exists());
    let overlay_dir = fx.sandbox_dir().join("rootfs-overlay/a");
    assert!(overlay_dir.join("upper/new").exists());

    a.release().unwrap();
    assert!(!overlay_dir.exists());
    assert_eq!(fx.mounts().len(), 1);
    drop(b);
    drop(share_fs);
    assert!(fx.mounts().is_empty());
    assert!(!fx.sandbox_dir().join("rootfs-overlay").exists());
    assert!(!fx.sandbox_dir().join("shared").exists());
}

#[test]
fn shared_dir_outlives_share_fs_until_rootfs_released() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let rootfs = share_fs.share_rootfs("c1", &fx.source()).unwrap();
    let shared = share_fs.host_path().to_owned();
    drop(share_fs);
    assert!(rootfs.host_path().join("etc/hostname").exists());
    drop(rootfs);
    assert!(fx.mounts().is_empty());
    assert!(!shared.exists());
}

#[test]
fn sharing_a_container_twice_fails_and_keeps_the_first() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let first = share_fs.share_rootfs("c1", &fx.source()).unwrap();
    let err = share_fs.share_rootfs("c1", &fx.source()).unwrap_err();
    assert!(
        matches!(&err, Error::RootfsAlreadyShared { container_id, .. } if container_id == "c1"),
        "{err}"
    );
    assert_eq!(fx.mounts(), vec![first.host_path().to_owned()]);
    assert!(first.host_path().join("etc/hostname").exists());
}

#[test]
fn bad_input_is_refused_before_anything_is_created() {
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    for id in ["../x", "a/b", "", ".hidden"] {
        let err = share_fs.share_rootfs(id, &fx.source()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidContainerId { .. }),
            "{id}: {err}"
        );
    }
    let file = fx.source().join("etc/hostname");
    let err = share_fs.share_rootfs("c1", &file).unwrap_err();
    assert!(matches!(err, Error::RootfsNotADirectory { .. }), "{err}");
    let missing = fx.tmp.path().join("missing");
    let err = share_fs.share_rootfs("c1", &missing).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(fs::read_dir(share_fs.host_path()).unwrap().count(), 0);
}

#[test]
fn no_leak_when_any_step_fails() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let steps = [
        (RootfsMode::ReadWrite, Step::ShareContainerDir),
        (RootfsMode::ReadWrite, Step::ShareMountPoint),
        (RootfsMode::ReadWrite, Step::ShareMount),
        (RootfsMode::ReadWrite, Step::ShareDone),
        (RootfsMode::ReadOnly, Step::ShareDone),
        (RootfsMode::Overlay, Step::ShareOverlayDir),
        (RootfsMode::Overlay, Step::ShareMount),
        (RootfsMode::Overlay, Step::ShareDone),
    ];
    for (mode, step) in steps {
        fail_at(Some(step));
        let result = share_fs.share_rootfs_with("c1", &fx.source(), mode);
        fail_at(None);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(fx.mounts().is_empty(), "{mode:?} {step:?}: mount leaked");
        assert!(
            !share_fs.host_path().join("c1").exists(),
            "{mode:?} {step:?}: directory leaked"
        );
        assert!(
            !fx.sandbox_dir().join("rootfs-overlay/c1").exists(),
            "{mode:?} {step:?}: overlay directory leaked"
        );
    }
    // And it still works afterwards.
    share_fs.share_rootfs("c1", &fx.source()).unwrap();
}

#[test]
fn a_failing_mount_leaves_nothing() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    // A lower dir overlayfs cannot be given: its mount options are comma separated.
    let odd = fx.tmp.path().join("a,b");
    fs::create_dir(&odd).unwrap();
    let err = share_fs
        .share_rootfs_with("c1", &odd, RootfsMode::Overlay)
        .unwrap_err();
    assert!(matches!(err, Error::OverlayPath { .. }), "{err}");
    assert!(!share_fs.host_path().join("c1").exists());
    assert!(fx.mounts().is_empty());
}

#[test]
fn release_never_deletes_through_a_live_mount() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let rootfs = share_fs.share_rootfs("c1", &fx.source()).unwrap();
    // Something else mounts on top of our mount point: unmounting ours unmounts theirs first
    // (the top one), and the source must survive whatever happens.
    let extra = tempfile::tempdir().unwrap();
    fs::set_permissions(extra.path(), fs::Permissions::from_mode(0o755)).unwrap();
    mount::bind_mount(extra.path(), rootfs.host_path(), false).unwrap();
    drop(rootfs);
    drop(share_fs);
    assert!(fx.source().join("etc/hostname").exists());
    assert!(fx.mounts().is_empty(), "{:?}", fx.mounts());
    assert!(!fx.sandbox_dir().join("shared").exists());
}

#[test]
fn detached_shares_are_adopted_and_released_without_leaks() {
    require_root!();
    let fx = Fixture::new();
    let share_fs = fx.share_fs();
    let rw = share_fs.share_rootfs("c1", &fx.source()).unwrap();
    let ov = share_fs
        .share_rootfs_with("c2", &fx.source(), RootfsMode::Overlay)
        .unwrap();
    let shared_dir = share_fs.host_path().to_path_buf();
    rw.detach();
    ov.detach();
    share_fs.detach();
    // Everything stays for the next owner.
    assert_eq!(fx.mounts().len(), 2);
    assert!(shared_dir.join("c1/rootfs/etc/hostname").is_file());

    let adopted = ShareFs::adopt(fx.sandbox_dir(), SharedFs::Virtio9p).unwrap();
    assert_eq!(adopted.host_path(), shared_dir);
    let e = adopted
        .adopt_rootfs("c3", RootfsMode::ReadWrite)
        .unwrap_err();
    assert!(matches!(e, Error::NotAdoptable { .. }), "{e}");
    assert!(e.to_string().contains("c3"), "{e}");
    let e = adopted
        .adopt_rootfs("../x", RootfsMode::ReadWrite)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidContainerId { .. }), "{e}");
    let c1 = adopted.adopt_rootfs("c1", RootfsMode::ReadWrite).unwrap();
    assert_eq!(
        c1.guest_path(),
        "/run/kata-containers/shared/containers/c1/rootfs"
    );
    let c2 = adopted.adopt_rootfs("c2", RootfsMode::Overlay).unwrap();
    c1.release().unwrap();
    assert_eq!(fx.mounts().len(), 1);
    assert!(!shared_dir.join("c1").exists());
    // The last owner removes the rest (c2's mount and overlay, the shared dir).
    drop(adopted);
    assert!(shared_dir.exists(), "c2 still holds the shared directory");
    drop(c2);
    assert!(fx.mounts().is_empty());
    assert!(!shared_dir.exists());
    assert!(!fx.sandbox_dir().join("rootfs-overlay/c2").exists());
    assert!(
        fx.source().join("etc/hostname").is_file(),
        "source untouched"
    );

    // Nothing to adopt.
    let e = ShareFs::adopt(fx.sandbox_dir(), SharedFs::Virtio9p).unwrap_err();
    assert!(matches!(e, Error::NotAdoptable { .. }), "{e}");
    let e = ShareFs::adopt(fx.tmp.path().join("none"), SharedFs::Virtio9p).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}
