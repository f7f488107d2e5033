//! SandboxResources tests. Most mount for real, so they need root (they skip with a message
//! without it); every mount check looks only under the test's own temp dir.

use std::fs;
use std::path::{Path, PathBuf};

use kata_hypervisor::{Capabilities, DeviceConfig, ShareFsDevice, SharedFs};

use super::*;
use crate::fail_point::{fail_at, Step};
use crate::mount;

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

/// A temp dir with a rootfs directory (`source/`), a bundle (`bundle/`, its `rootfs/` made
/// if asked) and containerd-style overlay snapshots (`snapshots/`).
struct Fixture {
    _tmp: tempfile::TempDir,
    /// The temp dir, canonical (as mountinfo shows it).
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("source/etc")).unwrap();
        fs::write(root.join("source/etc/hostname"), "box\n").unwrap();
        fs::create_dir_all(root.join("bundle")).unwrap();
        Fixture { _tmp: tmp, root }
    }

    fn sandbox_dir(&self) -> PathBuf {
        self.root.join("sandbox")
    }

    fn source(&self) -> PathBuf {
        self.root.join("source")
    }

    fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }

    fn resources(&self) -> SandboxResources {
        SandboxResources::new(self.sandbox_dir(), SharedFs::Virtio9p, 65536).unwrap()
    }

    /// containerd's overlay mount of two lower snapshots (files `a` and `b`) and an upper one.
    fn overlay_mounts(&self) -> Vec<RootfsMount> {
        let s = self.root.join("snapshots");
        for (n, file) in [(1, "a"), (2, "b")] {
            fs::create_dir_all(s.join(format!("{n}/fs"))).unwrap();
            fs::write(s.join(format!("{n}/fs/{file}")), file).unwrap();
        }
        for dir in ["3/fs", "3/work"] {
            fs::create_dir_all(s.join(dir)).unwrap();
        }
        let p = |rel: &str| s.join(rel).display().to_string();
        vec![RootfsMount::new(
            "overlay",
            "overlay",
            [
                "index=off".to_owned(),
                format!("lowerdir={}:{}", p("2/fs"), p("1/fs")),
                format!("upperdir={}", p("3/fs")),
                format!("workdir={}", p("3/work")),
            ],
        )]
    }

    fn bundle_source(&self, mounts: Vec<RootfsMount>) -> RootfsSource {
        RootfsSource::Bundle {
            bundle: self.bundle(),
            root_path: None,
            mounts,
        }
    }

    /// Every mount under the temp dir, from /proc/self/mountinfo, sorted.
    fn mounts(&self) -> Vec<PathBuf> {
        let mut m = mount::mount_points_under(&self.root).unwrap();
        m.sort();
        m
    }

    /// The entries of a directory, sorted (empty if it does not exist).
    fn entries(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

impl Drop for Fixture {
    /// Whatever a failed test left mounted under its temp dir goes, so the temp dir can.
    fn drop(&mut self) {
        for mount_point in mount::mount_points_under(&self.root).unwrap_or_default() {
            let _ = mount::unmount_all(&mount_point);
        }
    }
}

fn assert_nosuid_nodev(path: &Path) {
    let options = mount::mount_options(path).unwrap().expect("a mount point");
    for flag in ["nosuid", "nodev"] {
        assert!(
            options.split(',').any(|o| o == flag),
            "{}: {options}",
            path.display()
        );
    }
}

#[test]
fn two_containers_yield_devices_storages_and_release_separately() {
    require_root!();
    let fx = Fixture::new();
    fs::create_dir(fx.bundle().join("rootfs")).unwrap();
    let mut r = fx.resources();
    let shared = fx.sandbox_dir().join("shared");
    assert_eq!(r.sandbox_dir(), fx.sandbox_dir());
    assert_eq!(r.shared_fs(), SharedFs::Virtio9p);
    assert_eq!(
        r.devices(),
        vec![DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: "kataShared".into(),
            host_path: shared.clone(),
            kind: SharedFs::Virtio9p,
            vhost_user_socket: None,
        })]
    );
    let storages = r.sandbox_storages(&Capabilities::default());
    assert_eq!(storages.len(), 1);
    assert_eq!(storages[0].driver, "9p");
    assert_eq!(storages[0].source, "kataShared");
    assert_eq!(
        storages[0].mount_point,
        "/run/kata-containers/shared/containers"
    );
    assert!(storages[0].options.contains(&"msize=65536".to_owned()));

    let c1 = r
        .add_container(
            "c1",
            RootfsSource::Directory(fx.source()),
            RootfsMode::ReadWrite,
        )
        .unwrap();
    assert_eq!(
        c1,
        ContainerGuestResources {
            rootfs_path: "/run/kata-containers/shared/containers/c1/rootfs".into(),
            storages: Vec::new(),
            block_devices: Vec::new(),
        }
    );
    let overlay = fx.overlay_mounts();
    let c2 = r
        .add_container(
            "c2",
            fx.bundle_source(overlay.clone()),
            RootfsMode::ReadWrite,
        )
        .unwrap();
    assert_eq!(
        c2.rootfs_path,
        "/run/kata-containers/shared/containers/c2/rootfs"
    );
    assert!(r.contains_container("c1") && r.contains_container("c2"));

    let (c1_mount, c2_mount, target) = (
        shared.join("c1/rootfs"),
        shared.join("c2/rootfs"),
        fx.bundle().join("rootfs"),
    );
    assert_eq!(fx.mounts(), {
        let mut m = vec![c1_mount.clone(), c2_mount.clone(), target.clone()];
        m.sort();
        m
    });
    for m in fx.mounts() {
        assert_nosuid_nodev(&m);
    }
    // The overlay is what the guest sees: both layers, writes going to the upper snapshot.
    assert_eq!(fs::read_to_string(c2_mount.join("a")).unwrap(), "a");
    assert_eq!(fs::read_to_string(c2_mount.join("b")).unwrap(), "b");
    fs::write(c2_mount.join("new"), "x").unwrap();
    assert!(fx.root.join("snapshots/3/fs/new").exists());
    assert_eq!(
        fs::read_to_string(c1_mount.join("etc/hostname")).unwrap(),
        "box\n"
    );

    // What persist writes, through JSON and back.
    let state = r.state();
    assert_eq!(state.shared_fs, SharedFs::Virtio9p);
    assert_eq!(state.msize_9p, 65536);
    assert_eq!(state.shared_dir.as_deref(), Some(shared.as_path()));
    assert_eq!(
        state.containers["c1"].rootfs.source,
        RootfsSourceState::Directory { path: fx.source() }
    );
    assert_eq!(
        state.containers["c2"].rootfs.source,
        RootfsSourceState::Bundle {
            bundle: fx.bundle(),
            target: target.clone(),
            mounts: overlay,
        }
    );
    assert_eq!(state.containers["c2"].rootfs.mount_point, c2_mount);
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.contains(r#""kind":"bundle""#), "{json}");
    assert!(json.contains(r#""shared_fs":"virtio-9p""#), "{json}");
    assert_eq!(
        serde_json::from_str::<ResourcesState>(&json).unwrap(),
        state
    );

    // Removing c2 takes off its mounts only; the bundle's own rootfs dir stays.
    assert!(r.remove_container("c2").unwrap());
    assert_eq!(fx.mounts(), vec![c1_mount.clone()]);
    assert!(target.is_dir() && !shared.join("c2").exists());
    assert!(!r.remove_container("c2").unwrap(), "already gone");
    assert!(!r.state().containers.contains_key("c2"));

    r.release().unwrap();
    assert!(fx.mounts().is_empty());
    assert!(fx.entries(&fx.sandbox_dir()).is_empty());
    assert!(fx.source().join("etc/hostname").is_file());
}

#[test]
fn a_guest_on_the_host_gets_no_share_storage() {
    let fx = Fixture::new();
    let r = SandboxResources::new(fx.sandbox_dir(), SharedFs::Virtio9p, 8192).unwrap();
    let on_host = Capabilities {
        guest_on_host: true,
        ..Capabilities::default()
    };
    assert!(r.sandbox_storages(&on_host).is_empty());
    // The directory still has to reach the agent: the device stays.
    assert_eq!(r.devices().len(), 1);
    assert_eq!(r.sandbox_storages(&Capabilities::default()).len(), 1);
}

#[test]
fn containerd_bind_mounts_are_read_only_when_asked() {
    require_root!();
    let fx = Fixture::new();
    let mut r = fx.resources();
    // The native snapshotter's form: a read-only recursive bind of the snapshot.
    let mounts = vec![RootfsMount::new(
        "bind",
        fx.source().display().to_string(),
        ["rbind", "ro"],
    )];
    r.add_container("c1", fx.bundle_source(mounts), RootfsMode::ReadWrite)
        .unwrap();
    let target = fx.bundle().join("rootfs");
    assert_nosuid_nodev(&target);
    let err = fs::write(target.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(target.join("etc/hostname").is_file());
    drop(r);
    assert!(fx.mounts().is_empty());
    assert!(!target.exists(), "the mount point made here is removed");
}

#[test]
fn a_long_lowerdir_list_is_mounted_from_its_common_directory() {
    require_root!();
    let fx = Fixture::new();
    let snapshots = fx.root.join(format!("snapshots-{}", "x".repeat(80)));
    let lowers: Vec<PathBuf> = (1..=60)
        .map(|i| snapshots.join(format!("{i}/fs")))
        .collect();
    for (i, dir) in lowers.iter().enumerate() {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(format!("f{i}")), "").unwrap();
    }
    for dir in ["99/fs", "99/work"] {
        fs::create_dir_all(snapshots.join(dir)).unwrap();
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    assert!(lowerdir.len() > 4096, "the test needs a list over a page");
    let mounts = vec![RootfsMount::new(
        "overlay",
        "overlay",
        [
            format!("lowerdir={lowerdir}"),
            format!("upperdir={}", snapshots.join("99/fs").display()),
            format!("workdir={}", snapshots.join("99/work").display()),
        ],
    )];
    let cwd = std::env::current_dir().unwrap();
    let mut r = fx.resources();
    r.add_container("c1", fx.bundle_source(mounts), RootfsMode::ReadWrite)
        .unwrap();
    assert_eq!(std::env::current_dir().unwrap(), cwd, "the process's cwd");
    let rootfs = fx.sandbox_dir().join("shared/c1/rootfs");
    assert!(rootfs.join("f0").exists() && rootfs.join("f59").exists());
    r.release().unwrap();
    assert!(fx.mounts().is_empty());
}

#[test]
fn detach_adopt_release_leaves_nothing() {
    require_root!();
    let fx = Fixture::new();
    let mut r = fx.resources();
    r.add_container(
        "c1",
        RootfsSource::Directory(fx.source()),
        RootfsMode::Overlay,
    )
    .unwrap();
    r.add_container(
        "c2",
        fx.bundle_source(fx.overlay_mounts()),
        RootfsMode::ReadOnly,
    )
    .unwrap();
    let before = fx.mounts();
    assert_eq!(before.len(), 3);
    let state = r.detach();
    assert_eq!(fx.mounts(), before, "detach leaves every mount");
    let state: ResourcesState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();

    // Adopted, detached again, adopted again: still all there.
    let adopted = SandboxResources::adopt(fx.sandbox_dir(), &state).unwrap();
    assert_eq!(adopted.state(), state);
    assert_eq!(adopted.devices().len(), 1);
    let state = adopted.detach();
    assert_eq!(fx.mounts(), before);
    let mut adopted = SandboxResources::adopt(fx.sandbox_dir(), &state).unwrap();

    // The adopted owner releases per container, then the rest.
    assert!(adopted.remove_container("c1").unwrap());
    assert!(!fx.sandbox_dir().join("rootfs-overlay/c1").exists());
    assert_eq!(fx.mounts().len(), 2);
    adopted.release().unwrap();
    assert!(fx.mounts().is_empty());
    assert!(
        fx.entries(&fx.sandbox_dir()).is_empty(),
        "no directory left"
    );
    // The bundle's rootfs dir was made for the mount: it goes with it only for the first
    // owner (an adopted one does not know who made it), so it may stay, empty.
    assert!(fx.entries(&fx.bundle().join("rootfs")).is_empty());
}

#[test]
fn a_failed_adoption_hands_everything_back() {
    require_root!();
    let fx = Fixture::new();
    let mut r = fx.resources();
    r.add_container(
        "c1",
        RootfsSource::Directory(fx.source()),
        RootfsMode::ReadWrite,
    )
    .unwrap();
    r.add_container(
        "c2",
        fx.bundle_source(fx.overlay_mounts()),
        RootfsMode::ReadWrite,
    )
    .unwrap();
    let state = r.detach();
    let before = fx.mounts();

    // A container recorded but not mounted ("c0" sorts first, "zz" last).
    for ghost in ["c0", "zz"] {
        let mut bad = state.clone();
        let mut saved = bad.containers["c1"].clone();
        saved.rootfs.mount_point = fx.sandbox_dir().join(format!("shared/{ghost}/rootfs"));
        bad.containers.insert(ghost.into(), saved);
        let err = SandboxResources::adopt(fx.sandbox_dir(), &bad).unwrap_err();
        assert!(matches!(err, Error::NotAdoptable { .. }), "{err}");
        assert!(err.to_string().contains(ghost), "{err}");
        assert_eq!(fx.mounts(), before);
    }
    // A bundle rootfs no longer mounted.
    let mut bad = state.clone();
    if let RootfsSourceState::Bundle { target, .. } =
        &mut bad.containers.get_mut("c2").unwrap().rootfs.source
    {
        *target = fx.bundle().join("elsewhere");
    }
    let err = SandboxResources::adopt(fx.sandbox_dir(), &bad).unwrap_err();
    assert!(err.to_string().contains("not mounted"), "{err}");
    assert_eq!(fx.mounts(), before);
    // A shared directory recorded elsewhere.
    let mut bad = state.clone();
    bad.shared_dir = Some(fx.root.join("other"));
    let err = SandboxResources::adopt(fx.sandbox_dir(), &bad).unwrap_err();
    assert!(matches!(err, Error::NotAdoptable { .. }), "{err}");
    // A failure after the containers.
    fail_at(Some(Step::AdoptSlots));
    let result = SandboxResources::adopt(fx.sandbox_dir(), &state);
    fail_at(None);
    assert!(result.unwrap_err().to_string().contains("injected"));
    assert_eq!(fx.mounts(), before);
    assert!(fx
        .sandbox_dir()
        .join("shared/c1/rootfs/etc/hostname")
        .is_file());
    // No sandbox directory at all.
    let err = SandboxResources::adopt(fx.root.join("missing"), &state).unwrap_err();
    assert!(matches!(err, Error::NotAdoptable { .. }), "{err}");

    SandboxResources::adopt(fx.sandbox_dir(), &state)
        .unwrap()
        .release()
        .unwrap();
    assert!(fx.mounts().is_empty());
}

#[test]
fn cleanup_from_a_state_removes_what_it_records() {
    require_root!();
    let fx = Fixture::new();
    let mut r = fx.resources();
    r.add_container(
        "c1",
        RootfsSource::Directory(fx.source()),
        RootfsMode::Overlay,
    )
    .unwrap();
    r.add_container(
        "c2",
        fx.bundle_source(fx.overlay_mounts()),
        RootfsMode::ReadWrite,
    )
    .unwrap();
    // A crash: the owner is gone without releasing anything.
    let state = r.state();
    std::mem::forget(r);
    assert_eq!(fx.mounts().len(), 3);
    // A new owner cannot start over it...
    let err = SandboxResources::new(fx.sandbox_dir(), SharedFs::Virtio9p, 8192).unwrap_err();
    assert!(matches!(err, Error::ShareFsExists { .. }), "{err}");

    // ...until cleanup.
    SandboxResources::cleanup(fx.sandbox_dir(), Some(&state)).unwrap();
    assert!(fx.mounts().is_empty());
    assert!(fx.entries(&fx.sandbox_dir()).is_empty());
    assert!(
        fx.source().join("etc/hostname").is_file(),
        "sources untouched"
    );
    assert!(fx.root.join("snapshots/1/fs/a").is_file());
    // Twice is fine, and so is a sandbox dir that is gone.
    SandboxResources::cleanup(fx.sandbox_dir(), Some(&state)).unwrap();
    SandboxResources::cleanup(fx.root.join("missing"), Some(&state)).unwrap();
    drop(fx.resources());
}

#[test]
fn cleanup_without_a_state_never_touches_a_bundle_rootfs() {
    require_root!();
    let fx = Fixture::new();
    let mut r = fx.resources();
    r.add_container(
        "c1",
        fx.bundle_source(fx.overlay_mounts()),
        RootfsMode::ReadWrite,
    )
    .unwrap();
    let state = r.detach();
    let target = fx.bundle().join("rootfs");

    SandboxResources::cleanup(fx.sandbox_dir(), None).unwrap();
    assert_eq!(
        fx.mounts(),
        vec![target.clone()],
        "only the unrecorded bundle rootfs is left"
    );
    assert!(fx.entries(&fx.sandbox_dir()).is_empty());

    // A state whose bundle rootfs lies outside its bundle is refused; nothing is unmounted.
    let mut bad = state.clone();
    if let RootfsSourceState::Bundle { bundle, .. } =
        &mut bad.containers.get_mut("c1").unwrap().rootfs.source
    {
        *bundle = fx.root.join("other-bundle");
    }
    let err = SandboxResources::cleanup(fx.sandbox_dir(), Some(&bad)).unwrap_err();
    assert!(matches!(err, Error::PathNotWithin { .. }), "{err}");
    assert_eq!(fx.mounts(), vec![target.clone()]);

    SandboxResources::cleanup(fx.sandbox_dir(), Some(&state)).unwrap();
    assert!(fx.mounts().is_empty());
}

#[test]
fn a_failure_at_any_step_leaves_nothing_of_the_container() {
    require_root!();
    let fx = Fixture::new();
    let mut r = fx.resources();
    r.add_container(
        "c0",
        RootfsSource::Directory(fx.source()),
        RootfsMode::ReadWrite,
    )
    .unwrap();
    let before = fx.mounts();
    let state = r.state();
    let steps = [
        (RootfsMode::ReadWrite, Step::BundleTarget),
        (RootfsMode::ReadWrite, Step::BundleMount(0)),
        (RootfsMode::ReadWrite, Step::BundleDone),
        (RootfsMode::ReadWrite, Step::ShareContainerDir),
        (RootfsMode::ReadWrite, Step::ShareMountPoint),
        (RootfsMode::ReadWrite, Step::ShareMount),
        (RootfsMode::ReadWrite, Step::ShareDone),
        (RootfsMode::ReadWrite, Step::ContainerDone),
        (RootfsMode::Overlay, Step::ShareOverlayDir),
        (RootfsMode::Overlay, Step::ShareMount),
        (RootfsMode::Overlay, Step::ContainerDone),
    ];
    let check = |r: &SandboxResources, what: &str| {
        assert_eq!(fx.mounts(), before, "{what}: a mount leaked");
        assert!(
            !fx.bundle().join("rootfs").exists(),
            "{what}: the mount point leaked"
        );
        assert_eq!(
            fx.entries(&fx.sandbox_dir().join("shared")),
            ["c0"],
            "{what}"
        );
        assert!(
            fx.entries(&fx.sandbox_dir().join("rootfs-overlay"))
                .is_empty(),
            "{what}"
        );
        assert_eq!(r.state(), state, "{what}");
    };
    for (mode, step) in steps {
        fail_at(Some(step));
        let result = r.add_container("c1", fx.bundle_source(fx.overlay_mounts()), mode);
        fail_at(None);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("injected"), "{step:?}: {err}");
        check(&r, &format!("{mode:?} {step:?}"));
    }

    // Real failures: a missing lower dir; a second mount failing after a first succeeded.
    let missing = fx.root.join("no-such-lower").display().to_string();
    let bad = RootfsMount::new("overlay", "overlay", [format!("lowerdir={missing}")]);
    let err = r
        .add_container(
            "c1",
            fx.bundle_source(vec![bad.clone()]),
            RootfsMode::ReadWrite,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Mount { .. }), "{err}");
    check(&r, "a failing overlay");
    let good = RootfsMount::new("bind", fx.source().display().to_string(), ["rbind"]);
    let err = r
        .add_container(
            "c1",
            fx.bundle_source(vec![good, bad]),
            RootfsMode::ReadWrite,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Mount { .. }), "{err}");
    check(&r, "a failing second mount");

    // And then it works.
    r.add_container(
        "c1",
        fx.bundle_source(fx.overlay_mounts()),
        RootfsMode::Overlay,
    )
    .unwrap();
    // Adding it twice keeps the first.
    let err = r
        .add_container(
            "c1",
            RootfsSource::Directory(fx.source()),
            RootfsMode::ReadWrite,
        )
        .unwrap_err();
    assert!(matches!(err, Error::RootfsAlreadyShared { .. }), "{err}");
    assert_eq!(fx.mounts().len(), 3);
}

#[test]
fn unsafe_paths_and_ids_are_refused_naming_the_field() {
    // Needs no mount: every case is refused before anything is mounted.
    let fx = Fixture::new();
    let mut r = SandboxResources::new(fx.sandbox_dir(), SharedFs::Virtio9p, 8192).unwrap();
    let refused = |r: &mut SandboxResources, id: &str, source: RootfsSource| {
        r.add_container(id, source, RootfsMode::ReadWrite)
            .unwrap_err()
    };
    let bundle_with = |root_path: &str| RootfsSource::Bundle {
        bundle: fx.bundle(),
        root_path: Some(root_path.into()),
        mounts: fx.overlay_mounts(),
    };
    let outside = fx.root.join("source").display().to_string();
    for (root_path, why) in [
        ("/", "outside"),
        ("../x", "`..`"),
        ("rootfs/../../x", "`..`"),
        (outside.as_str(), "outside"),
        (".", "directory itself"),
    ] {
        let err = refused(&mut r, "c1", bundle_with(root_path));
        let text = err.to_string();
        assert!(
            matches!(
                err,
                Error::PathNotWithin {
                    field: "root.path",
                    ..
                }
            ),
            "{root_path}: {text}"
        );
        assert!(text.starts_with("root.path "), "{text}");
        assert!(text.contains(why), "{root_path}: {text}");
    }
    // A rootfs symlink, or a parent symlink, leading out of the bundle.
    std::os::unix::fs::symlink(fx.source(), fx.bundle().join("rootfs")).unwrap();
    let err = refused(&mut r, "c1", fx.bundle_source(fx.overlay_mounts()));
    assert!(err.to_string().contains("through a symlink"), "{err}");
    std::os::unix::fs::symlink(fx.root.join("source"), fx.bundle().join("up")).unwrap();
    let err = refused(&mut r, "c1", bundle_with("up/newdir"));
    assert!(err.to_string().contains("through a symlink"), "{err}");
    assert!(!fx.source().join("newdir").exists(), "nothing made outside");
    // The bundle must be absolute.
    let err = refused(
        &mut r,
        "c1",
        RootfsSource::Bundle {
            bundle: "relative".into(),
            root_path: None,
            mounts: Vec::new(),
        },
    );
    assert!(
        err.to_string().starts_with("bundle relative is refused"),
        "{err}"
    );
    // A directory rootfs must be absolute.
    let err = refused(&mut r, "c1", RootfsSource::Directory("source".into()));
    assert!(
        err.to_string().starts_with("rootfs source is refused"),
        "{err}"
    );
    // Ids that would leave the shared directory.
    for id in ["a/b", "../x", "", ".."] {
        let err = refused(&mut r, id, RootfsSource::Directory(fx.source()));
        assert!(
            matches!(&err, Error::InvalidContainerId { id: got, .. } if got == id),
            "{id:?}: {err}"
        );
        assert!(err.to_string().starts_with("invalid container id"), "{err}");
        let err = r.remove_container(id).unwrap_err();
        assert!(matches!(err, Error::InvalidContainerId { .. }), "{err}");
    }
    assert!(fx.entries(&fx.sandbox_dir().join("shared")).is_empty());
    assert!(fx.mounts().is_empty());
}

#[test]
fn no_share_and_unsupported_kinds() {
    let fx = Fixture::new();
    let kind = SharedFs::VirtioFsNydus;
    let err = SandboxResources::new(fx.sandbox_dir(), kind, 8192).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::UnsupportedSharedFs { .. }), "{text}");
    assert!(text.contains(&format!("shared_fs = \"{kind}\"")), "{text}");
    assert!(text.contains("\"none\""), "{text}");

    let mut r = SandboxResources::new(fx.sandbox_dir(), SharedFs::None, 8192).unwrap();
    assert!(r.devices().is_empty());
    assert!(r.sandbox_storages(&Capabilities::default()).is_empty());
    assert!(r.share_fs().is_none());
    let err = r
        .add_container(
            "c1",
            RootfsSource::Directory(fx.source()),
            RootfsMode::ReadWrite,
        )
        .unwrap_err();
    assert!(matches!(err, Error::NoSharedFs { .. }), "{err}");
    assert!(err.to_string().contains("container c1"), "{err}");
    let state = r.detach();
    assert_eq!(state.shared_fs, SharedFs::None);
    assert_eq!(state.shared_dir, None);
    assert!(fx.entries(&fx.sandbox_dir()).is_empty());
    let r = SandboxResources::adopt(fx.sandbox_dir(), &state).unwrap();
    assert_eq!(r.state(), state);
    r.release().unwrap();
    SandboxResources::cleanup(fx.sandbox_dir(), Some(&state)).unwrap();

    // virtio-fs: the same layout, its own storage.
    let r = SandboxResources::new(fx.sandbox_dir(), SharedFs::VirtioFs, 8192).unwrap();
    let storages = r.sandbox_storages(&Capabilities::default());
    assert_eq!(
        (storages[0].driver.as_str(), storages[0].fstype.as_str()),
        ("virtio-fs", "virtiofs")
    );
}

#[test]
fn a_state_file_of_an_older_owner_still_loads() {
    // Slots added later are read back with their defaults.
    let json = r#"{
        "shared_fs": "virtio-9p",
        "msize_9p": 8192,
        "shared_dir": "/run/kata/sb/shared",
        "containers": {
            "c1": {"rootfs": {
                "source": {"kind": "directory", "path": "/images/busybox"},
                "mode": "overlay",
                "mount_point": "/run/kata/sb/shared/c1/rootfs",
                "guest_path": "/run/kata-containers/shared/containers/c1/rootfs"
            }}
        }
    }"#;
    let state: ResourcesState = serde_json::from_str(json).unwrap();
    assert_eq!(state.containers["c1"].rootfs.mode, RootfsMode::Overlay);
    assert_eq!(state.containers["c1"].rootfs.overlay_dir, None);
    assert_eq!(state.network, NetworkState::default());
}

#[test]
fn the_owner_can_live_behind_a_mutex_in_an_async_runtime() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SandboxResources>();
    send_sync::<ResourcesState>();
}

#[test]
fn hot_plugged_vfio_devices_are_kept_in_the_state_for_the_next_owner() {
    let fx = Fixture::new();
    let mut r = SandboxResources::new(fx.sandbox_dir(), SharedFs::None, 8192).unwrap();
    let edu = DeviceConfig::Vfio(kata_hypervisor::VfioDevice {
        id: "vfio-2-0".into(),
        bdf: "0000:00:02.0".into(),
    });
    r.record_container_vfio("c1", edu.clone());
    // What state.json keeps, written and read back.
    let state: ResourcesState =
        serde_json::from_str(&serde_json::to_string(&r.detach()).unwrap()).unwrap();
    assert_eq!(state.devices.vfio["c1"], vec![edu.clone()]);

    // A restarted runtime knows it: removing the container unplugs it once.
    let mut adopted = SandboxResources::adopt(fx.sandbox_dir(), &state).unwrap();
    assert_eq!(adopted.take_container_vfio("c1"), vec![edu.clone()]);
    assert!(adopted.take_container_vfio("c1").is_empty());
    assert!(adopted.state().devices.vfio.is_empty());
    // Removing the container forgets what it held.
    adopted.record_container_vfio("c2", edu);
    adopted.remove_container("c2").unwrap();
    assert!(adopted.state().devices.vfio.is_empty());
    adopted.release().unwrap();

    // Cleanup without a live runtime: the device went with the VM; the state is accepted.
    SandboxResources::cleanup(fx.sandbox_dir(), Some(&state)).unwrap();
    // A state written before the field existed still loads, with none.
    let mut older = serde_json::to_value(&state).unwrap();
    older["devices"].as_object_mut().unwrap().remove("vfio");
    let older: ResourcesState = serde_json::from_value(older).unwrap();
    assert!(older.devices.vfio.is_empty());
}
