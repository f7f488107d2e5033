use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::plan::{classify, Plan};
use super::*;
use crate::mount::{is_mount_point, mount_options, mount_points_under};

fn mount(typ: &str, source: &str, destination: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .typ(typ)
        .source(source)
        .destination(destination)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

#[test]
fn each_mount_is_classified_as_kata_does() {
    let plan = |m: &Mount| classify(3, m).unwrap();
    // Guest-only filesystems pass through.
    for m in [
        mount("proc", "proc", "/proc", &[]),
        mount("tmpfs", "tmpfs", "/tmp", &["size=1m"]),
        mount("devpts", "devpts", "/dev/pts", &[]),
        mount("bind", "/proc/sys", "/host-sys", &["rbind"]),
        mount("bind", "/sys/fs/cgroup", "/sys/fs/cgroup", &["rbind"]),
        mount("bind", "/dev/fuse", "/dev/fuse", &["bind"]),
    ] {
        assert_eq!(plan(&m), Plan::GuestOnly, "{m:?}");
    }
    // The pod's shm, as a bind (sized from the source) or a tmpfs (its own size).
    assert_eq!(
        plan(&mount("bind", "/run/pod/shm", "/dev/shm", &["rbind", "ro"])),
        Plan::Shm {
            size_from: Some("/run/pod/shm".into()),
            size_option: None
        }
    );
    assert_eq!(
        plan(&mount("bind", "/dev/shm", "/dev/shm/", &["rbind"])),
        Plan::Shm {
            size_from: None,
            size_option: None
        },
        "host IPC: Kata's default size"
    );
    assert_eq!(
        plan(&mount(
            "tmpfs",
            "shm",
            "/dev/shm",
            &["nosuid", "size=65536k"]
        )),
        Plan::Shm {
            size_from: None,
            size_option: Some("65536k".into())
        }
    );
    // emptyDirs by their kubelet directory, or by Kata's types.
    let empty = "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache";
    assert_eq!(
        plan(&mount("bind", empty, "/cache", &["rbind"])),
        Plan::EmptyDir {
            source: empty.into(),
            name: "cache".into(),
            forced: None
        }
    );
    assert!(matches!(
        plan(&mount("ephemeral", "/x/scratch", "/scratch", &[])),
        Plan::EmptyDir {
            forced: Some("ephemeral"),
            ..
        }
    ));
    // Host binds: read-only is the last of ro/rw, rbind is recursive.
    assert_eq!(
        plan(&mount("bind", "/data/./x/", "/x", &["ro", "rw", "rbind"])),
        Plan::HostBind {
            source: "/data/x".into(),
            read_only: false,
            recursive: true
        }
    );
    assert_eq!(
        plan(&mount("none", "/etc/hosts", "/etc/hosts", &["bind", "ro"])),
        Plan::HostBind {
            source: "/etc/hosts".into(),
            read_only: true,
            recursive: false
        }
    );
}

#[test]
fn bad_sources_are_refused_naming_the_field() {
    for (m, why) in [
        (mount("bind", "relative/x", "/x", &["rbind"]), "absolute"),
        (mount("bind", "/a/../etc", "/x", &["rbind"]), "`..`"),
        (mount("bind", "", "/x", &["rbind"]), "absolute"),
        (
            mount("bind", "/v/kubernetes.io~empty-dir/a b", "/x", &["rbind"]),
            "guest",
        ),
    ] {
        let err = classify(2, &m).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("mounts[2].source "), "{text}");
        assert!(text.contains(why), "{why}: {text}");
    }
}

#[test]
fn guest_binds_keep_the_spec_options() {
    let m = mount("none", "/h", "/x", &["ro", "rslave"]);
    let g = guest_bind(&m, "/run/kata-containers/shared/containers/n");
    assert_eq!(g.typ().as_deref(), Some("bind"));
    assert_eq!(
        g.source().as_deref(),
        Some(Path::new("/run/kata-containers/shared/containers/n"))
    );
    assert_eq!(
        g.options().clone().unwrap(),
        ["rbind", "ro", "rslave"].map(String::from)
    );
    let shm = shm_mount(&mount(
        "tmpfs",
        "shm",
        "/dev/shm",
        &["nosuid", "mode=1777", "size=1k"],
    ));
    assert_eq!(
        shm.options().clone().unwrap(),
        ["rbind", "nosuid"].map(String::from)
    );
    assert_eq!(shm.source().as_deref(), Some(Path::new(GUEST_SHM_DIR)));
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A sandbox directory with its shared directory, canonical.
struct Dirs {
    _tmp: tempfile::TempDir,
    sandbox: PathBuf,
    shared: PathBuf,
    host: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (sandbox, host) = (root.join("sb"), root.join("host"));
        let shared = sandbox.join("shared");
        for d in [&sandbox, &shared, &host] {
            std::fs::create_dir(d).unwrap();
        }
        Dirs {
            _tmp: tmp,
            sandbox,
            shared,
            host,
        }
    }

    fn share_dirs(&self) -> ShareDirs<'_> {
        ShareDirs {
            shared: Some(&self.shared),
            sandbox: &self.sandbox,
        }
    }

    /// Nothing under the shared directory but what `keep` names, and no staging.
    fn assert_empty(&self) {
        assert!(mount_points_under(&self.sandbox).unwrap().is_empty());
        let left: Vec<_> = std::fs::read_dir(&self.shared).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!self.sandbox.join(STAGING_DIR_NAME).exists());
    }
}

#[test]
fn host_binds_are_shared_read_only_or_writable_and_released() {
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let d = Dirs::new();
    let (dir, file) = (d.host.join("data"), d.host.join("hosts"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("in"), "host").unwrap();
    std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
    let mounts = [
        mount("bind", dir.to_str().unwrap(), "/ro", &["rbind", "ro"]),
        mount("bind", dir.to_str().unwrap(), "/rw", &["rbind", "rw"]),
        mount("bind", file.to_str().unwrap(), "/etc/hosts", &["bind"]),
        mount("tmpfs", "tmpfs", "/tmp", &["size=1m"]),
    ];
    let mut slot = VolumesSlot::default();
    let out = slot
        .add(
            d.share_dirs(),
            "c1",
            &mounts,
            &VolumeOptions::default(),
            false,
        )
        .unwrap()
        .0;
    assert!(out.storages.is_empty());
    assert_eq!(out.mounts[3], mounts[3], "tmpfs passed through");
    let state = slot.state();
    assert_eq!(state.shares.len(), 3);
    for (share, m) in state.shares.iter().zip(&out.mounts) {
        assert!(share.name.starts_with("c1-"), "{}", share.name);
        assert_eq!(share.host_path, d.shared.join(&share.name));
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new(&share.guest_path)),
            "the spec names the guest path"
        );
        assert!(share
            .guest_path
            .starts_with("/run/kata-containers/shared/containers/c1-"));
        assert!(is_mount_point(&share.host_path).unwrap());
        let opts = mount_options(&share.host_path).unwrap().unwrap();
        for flag in ["nosuid", "nodev"] {
            assert!(opts.split(',').any(|o| o == flag), "{opts}");
        }
        assert_eq!(
            opts.split(',').next(),
            Some(if share.read_only { "ro" } else { "rw" }),
            "{}: {opts}",
            share.name
        );
    }
    assert!(state.shares[0].read_only && !state.shares[1].read_only);
    assert!(state.shares[0].name.ends_with("-ro"));
    assert!(!state.shares[2].directory);
    let (ro, rw, hosts) = (
        &state.shares[0].host_path,
        &state.shares[1].host_path,
        &state.shares[2].host_path,
    );
    assert_eq!(std::fs::read_to_string(ro.join("in")).unwrap(), "host");
    assert!(std::fs::write(ro.join("new"), "x").is_err(), "read-only");
    std::fs::write(rw.join("new"), "from the guest").unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("new")).unwrap(),
        "from the guest"
    );
    assert_eq!(
        std::fs::read_to_string(hosts).unwrap(),
        "127.0.0.1 localhost\n"
    );
    // Adopted from its state, then released: nothing left, the sources untouched.
    let detached = std::mem::take(&mut slot);
    detached.detach();
    assert!(is_mount_point(ro).unwrap(), "detach leaves the mounts");
    let mut adopted = VolumesSlot::adopt(&d.shared, &state).unwrap();
    assert_eq!(adopted.state(), state);
    adopted.release_in_place().unwrap();
    d.assert_empty();
    assert!(dir.join("in").exists() && file.exists());
    let err = VolumesSlot::adopt(&d.shared, &state).unwrap_err();
    assert!(err.to_string().contains("not mounted"), "{err}");
}

#[test]
fn bad_host_sources_are_refused_and_leave_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let d = Dirs::new();
    let good = d.host.join("good");
    std::fs::create_dir(&good).unwrap();
    let outside = d.sandbox.join("secret");
    std::fs::write(&outside, "s").unwrap();
    let links = d.host.join("links");
    std::fs::create_dir(&links).unwrap();
    std::os::unix::fs::symlink(&outside, links.join("escape")).unwrap();
    std::os::unix::fs::symlink("nowhere", links.join("dangling")).unwrap();
    std::fs::write(links.join("target"), "t").unwrap();
    std::os::unix::fs::symlink("target", links.join("inside")).unwrap();
    let socket = d.host.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fifo = d.host.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let missing = d.host.join("missing");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    for (bad, why) in [
        (s(&missing), "does not exist"),
        (s(&links.join("escape")), "symlink leading out"),
        (s(&links.join("dangling")), "symlink"),
        (s(&socket), "a socket"),
        (s(&fifo), "a fifo"),
        ("/dev/null".to_owned(), "a device node"),
    ] {
        let mounts = [
            mount("bind", &s(&good), "/good", &["rbind"]),
            mount("bind", &bad, "/x", &["rbind", "ro"]),
        ];
        let mut slot = VolumesSlot::default();
        let err = slot
            .add(
                d.share_dirs(),
                "c1",
                &mounts,
                &VolumeOptions::default(),
                false,
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("mounts[1].source {bad}")),
            "{bad}: {text}"
        );
        assert!(text.contains(why), "{why}: {text}");
        assert!(slot.state().shares.is_empty());
        d.assert_empty();
    }
    // A symlink to a file in its own directory is shared (resolved).
    let mut slot = VolumesSlot::default();
    let out = slot
        .add(
            d.share_dirs(),
            "c1",
            &[mount("bind", &s(&links.join("inside")), "/t", &["bind"])],
            &VolumeOptions::default(),
            false,
        )
        .unwrap()
        .0;
    assert_eq!(slot.state().shares[0].source, links.join("target"));
    assert_eq!(out.mounts.len(), 1);
    slot.release_in_place().unwrap();
    d.assert_empty();
}

#[test]
fn shm_and_empty_dirs_become_guest_storages() {
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let d = Dirs::new();
    // A pod shm as containerd's CRI makes it: a 4 MiB tmpfs.
    let shm = d.host.join("shm");
    std::fs::create_dir(&shm).unwrap();
    nix::mount::mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=4m"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = crate::mount::unmount_all(&self.0);
        }
    }
    let _shm = Unmount(shm.clone());
    let volumes = d.host.join("volumes").join(plan::K8S_EMPTY_DIR);
    std::fs::create_dir_all(volumes.join("disk")).unwrap();
    std::os::unix::fs::chown(volumes.join("disk"), None, Some(1234)).unwrap();
    let memory = volumes.join("memory");
    std::fs::create_dir(&memory).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &memory,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _memory = Unmount(memory.clone());
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let mounts = [
        mount("bind", &s(&shm), "/dev/shm", &["rbind", "ro"]),
        mount("bind", &s(&volumes.join("disk")), "/disk", &["rbind"]),
        mount("bind", &s(&memory), "/memory", &["rbind", "rprivate"]),
        mount("bind", &s(&memory), "/memory-again", &["rbind"]),
    ];
    let mut slot = VolumesSlot::default();
    let out = slot
        .add(
            d.share_dirs(),
            "c1",
            &mounts,
            &VolumeOptions::default(),
            false,
        )
        .unwrap()
        .0;
    assert!(
        slot.state().shares.is_empty(),
        "nothing shared from the host"
    );
    let points: Vec<_> = out
        .storages
        .iter()
        .map(|s| s.mount_point.as_str())
        .collect();
    assert_eq!(
        points,
        [
            GUEST_SHM_DIR,
            "/run/kata-containers/sandbox/local/disk",
            "/run/kata-containers/sandbox/ephemeral/memory"
        ],
        "one storage per guest volume"
    );
    assert_eq!(out.storages[0].driver, "ephemeral");
    assert!(
        out.storages[0]
            .options
            .contains(&format!("size={}", 4 << 20)),
        "{:?}",
        out.storages[0].options
    );
    assert_eq!(out.storages[1].driver, "local");
    assert_eq!(out.storages[1].options, ["mode=0777", "fsgid=1234"]);
    assert_eq!(out.storages[2].driver, "ephemeral");
    assert_eq!(out.storages[2].fstype, "tmpfs");
    assert_eq!(
        out.mounts[2].options().clone().unwrap(),
        ["rbind", "rprivate"]
    );
    assert_eq!(
        out.mounts[3].source().as_deref(),
        Some(Path::new("/run/kata-containers/sandbox/ephemeral/memory"))
    );
    // disable_guest_empty_dir: a disk emptyDir is a host bind.
    let out = slot
        .add(
            d.share_dirs(),
            "c2",
            &mounts[1..2],
            &VolumeOptions::default().disable_guest_empty_dir(true),
            false,
        )
        .unwrap()
        .0;
    assert!(out.storages.is_empty());
    assert_eq!(slot.state().shares.len(), 1);
    // A missing shm source is refused naming it.
    let err = slot
        .add(
            d.share_dirs(),
            "c3",
            &[mount(
                "bind",
                &s(&d.host.join("gone")),
                "/dev/shm",
                &["rbind"],
            )],
            &VolumeOptions::default(),
            false,
        )
        .unwrap_err();
    assert!(
        err.to_string().starts_with("mounts[0].source ")
            && err.to_string().contains("does not exist"),
        "{err}"
    );
    slot.release_in_place().unwrap();
    d.assert_empty();
}

#[test]
fn sandbox_bind_mounts_are_shared_read_only_by_default() {
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let d = Dirs::new();
    let (a, b) = (d.host.join("a"), d.host.join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let entries = [a.display().to_string(), format!("{}:rw", b.display())];
    let mut slot = sandbox_mounts::set_up(d.share_dirs(), &entries).unwrap();
    let state = slot.state();
    let dir = d.shared.join(sandbox_mounts::SANDBOX_MOUNTS_DIR);
    assert_eq!(state.shares[0].host_path, dir.join("a"));
    assert_eq!(
        state.shares[0].guest_path,
        "/run/kata-containers/shared/containers/sandbox-mounts/a"
    );
    assert!(std::fs::write(dir.join("a/x"), "x").is_err(), "read-only");
    std::fs::write(dir.join("b/x"), "x").unwrap();
    slot.release_in_place().unwrap();
    assert!(mount_points_under(&d.sandbox).unwrap().is_empty());
    // Refusals name the key and leave nothing mounted.
    for (entries, why) in [
        (
            vec![
                a.display().to_string(),
                format!("{}/../a", d.host.join("x").display()),
            ],
            "base name",
        ),
        (vec![a.display().to_string(), "relative".into()], "absolute"),
        (
            vec![
                a.display().to_string(),
                d.host.join("nope").display().to_string(),
            ],
            "does not exist",
        ),
    ] {
        let err = sandbox_mounts::set_up(d.share_dirs(), &entries).unwrap_err();
        assert!(
            err.to_string().starts_with("sandbox_bind_mounts[1] "),
            "{err}"
        );
        assert!(err.to_string().contains(why), "{why}: {err}");
        assert!(mount_points_under(&d.sandbox).unwrap().is_empty());
    }
}

#[test]
fn block_devices_and_disk_images_are_block_volumes() {
    let plan = |m: &Mount| classify(1, m).unwrap();
    // A disk filesystem mounted from a host path: the path is an image file or a device.
    assert_eq!(
        plan(&mount(
            "ext4",
            "/images/data.ext4",
            "/data",
            &["rw", "noatime", "ro"]
        )),
        Plan::Block {
            source: PathBuf::from("/images/data.ext4"),
            fs_type: "ext4".into(),
            options: vec!["noatime".into(), "ro".into()],
            read_only: true,
        }
    );
    // ... but not one whose source the guest names (no host path).
    assert_eq!(plan(&mount("ext4", "data", "/data", &[])), Plan::GuestOnly);
    assert_eq!(
        plan(&mount("bind", "/images/data.ext4", "/data", &["rbind"])),
        Plan::HostBind {
            source: PathBuf::from("/images/data.ext4"),
            read_only: false,
            recursive: true,
        },
        "a bind of an image file is the file itself"
    );
    if !is_root() {
        eprintln!("skipped the block-device half: needs root to mknod");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("disk");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::S_IRUSR,
        nix::sys::stat::makedev(7, 200),
    )
    .unwrap();
    let s = dev.to_str().unwrap();
    assert_eq!(
        plan(&mount("bind", s, "/data", &["rbind", "ro"])),
        Plan::Block {
            source: dev.clone(),
            fs_type: "ext4".into(),
            options: vec!["ro".into()],
            read_only: true,
        },
        "a bind of a block device: the disk, with runtime-rs's default filesystem"
    );
    assert_eq!(
        plan(&mount("bind", s, "/dev/xvda", &["bind"])),
        Plan::GuestOnly,
        "a device under /dev is the guest's own"
    );
}

#[test]
fn block_volumes_are_bound_from_their_guest_mount_point_or_refused() {
    let d = Dirs::new();
    let image = d.host.join("data.ext4");
    std::fs::write(&image, b"").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let mounts = [
        mount("tmpfs", "tmpfs", "/tmp", &[]),
        mount("ext4", &s(&image), "/data", &["ro", "rslave", "noatime"]),
    ];
    let mut slot = VolumesSlot::default();
    let (out, blocks) = slot
        .add(
            d.share_dirs(),
            "c1",
            &mounts,
            &VolumeOptions::default(),
            true,
        )
        .unwrap();
    assert!(out.storages.is_empty() && out.block_devices.is_empty());
    let [b] = &blocks[..] else {
        panic!("{blocks:?}")
    };
    assert!(b.source.read_only);
    assert_eq!(b.source.path, image);
    assert_eq!(b.source.options, ["ro", "noatime"].map(String::from));
    assert!(
        b.mount_point
            .starts_with("/run/kata-containers/sandbox/storage/c1-")
            && b.mount_point.ends_with("-data"),
        "{}",
        b.mount_point
    );
    let m = &out.mounts[1];
    assert_eq!(m.typ().as_deref(), Some("bind"));
    assert_eq!(m.source().as_deref(), Some(Path::new(&b.mount_point)));
    assert_eq!(
        m.options().clone().unwrap(),
        ["rbind", "ro", "rslave"].map(String::from)
    );
    assert!(slot.state().shares.is_empty(), "nothing on the host");

    // Bad input names the field; nothing is left, and nothing is returned to attach.
    let dir = d.host.join("dir");
    std::fs::create_dir(&dir).unwrap();
    for (source, enabled, why) in [
        (s(&d.host.join("missing.ext4")), true, "exist"),
        (s(&dir), true, "neither a block device nor a regular file"),
        (s(&image), false, "gives no disks to its VM"),
    ] {
        let mounts = [
            mount("ext4", &s(&image), "/ok", &[]),
            mount("ext4", &source, "/data", &[]),
        ];
        let err = slot
            .add(
                d.share_dirs(),
                "c2",
                &mounts,
                &VolumeOptions::default(),
                enabled,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "mounts[{}].source {source}",
                if enabled { 1 } else { 0 }
            )),
            "{err}"
        );
        assert!(err.contains(why), "{why}: {err}");
    }
    assert!(slot.state().shares.is_empty());
    d.assert_empty();
}

#[test]
fn tmpfs_sizes_are_read_in_bytes() {
    assert_eq!(tmpfs_size_bytes("65536k"), Some(64 << 20));
    assert_eq!(tmpfs_size_bytes("64M"), Some(64 << 20));
    assert_eq!(tmpfs_size_bytes("67108864"), Some(64 << 20));
    assert_eq!(tmpfs_size_bytes("1g"), Some(1 << 30));
    for odd in ["50%", "", "k", "12q", "1.5m", "-1", "99999999999999999999e"] {
        assert_eq!(tmpfs_size_bytes(odd), None, "{odd:?}");
    }
}

/// containerd's CRI: the pause container has the default `/dev/shm` tmpfs (`size=65536k`) and
/// then the bind of the pod's shm (a 64 MiB tmpfs); an app container has only the bind. Both
/// must ask for the pod's shm identically, or the agent refuses the second.
#[test]
fn the_pause_and_app_containers_ask_for_the_pods_shm_identically() {
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let d = Dirs::new();
    let shm = d.host.join("shm");
    std::fs::create_dir(&shm).unwrap();
    nix::mount::mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=65536k"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = crate::mount::unmount_all(&self.0);
        }
    }
    let _shm = Unmount(shm.clone());
    let shm_src = shm.to_str().unwrap();
    let default_tmpfs = mount(
        "tmpfs",
        "shm",
        "/dev/shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    );
    let pod_bind = mount("bind", shm_src, "/dev/shm", &["rbind", "ro", "nosuid"]);
    let add = |id: &str, mounts: &[Mount]| {
        let mut slot = VolumesSlot::default();
        let out = slot
            .add(d.share_dirs(), id, mounts, &VolumeOptions::default(), false)
            .unwrap()
            .0;
        slot.release_in_place().unwrap();
        out
    };
    let pause = add("pause", &[default_tmpfs.clone(), pod_bind.clone()]);
    let app = add("app", std::slice::from_ref(&pod_bind));
    assert_eq!(
        pause.storages, app.storages,
        "the pod's shm asked for twice"
    );
    assert_eq!(pause.storages.len(), 1);
    assert!(
        pause.storages[0]
            .options
            .contains(&format!("size={}", 64u64 << 20)),
        "{:?}",
        pause.storages[0].options
    );
    // One /dev/shm in the container: the bind of the pod's, with the bind's flags.
    assert_eq!(pause.mounts, app.mounts);
    assert_eq!(
        pause.mounts[0].options().clone().unwrap(),
        ["rbind", "ro", "nosuid"]
    );
    // A tmpfs alone is the pod's shm, its size in bytes.
    let alone = add("solo", &[default_tmpfs]);
    assert_eq!(alone.storages, app.storages);
    d.assert_empty();
}

#[test]
fn block_volumes_are_the_containers_disks_in_the_devices_slot() {
    if !is_root() {
        eprintln!("skipped: needs root to mount the shared directory");
        return;
    }
    use kata_hypervisor::SharedFs;
    let tmp = tempfile::tempdir().unwrap();
    let (sandbox, rootfs) = (tmp.path().join("sb"), tmp.path().join("rootfs"));
    std::fs::create_dir(&rootfs).unwrap();
    let image = tmp.path().join("data.ext4");
    std::fs::write(&image, b"").unwrap();
    let mut r = crate::SandboxResources::new(&sandbox, SharedFs::Virtio9p, 8192).unwrap();
    let add = |r: &mut crate::SandboxResources, id: &str| {
        r.add_container(
            id,
            crate::RootfsSource::Directory(rootfs.clone()),
            crate::RootfsMode::ReadOnly,
        )
        .unwrap();
        r.add_volumes(
            id,
            &[mount("ext4", image.to_str().unwrap(), "/data", &["ro"])],
            &VolumeOptions::default(),
        )
    };
    // Block devices off (the default): refused, nothing recorded.
    let err = add(&mut r, "c1").unwrap_err().to_string();
    assert!(
        err.starts_with("mounts[0].source ") && err.contains("no disks"),
        "{err}"
    );
    assert!(r.container_block_devices("c1").is_empty());
    r.remove_container("c1").unwrap();

    r.use_block_devices(true);
    let out = add(&mut r, "c1").unwrap();
    let [a] = &out.block_devices[..] else {
        panic!("{out:?}")
    };
    assert!(a.device.read_only);
    assert_eq!(a.device.path, image);
    assert_eq!(r.container_block_devices("c1"), vec![a.device.clone()]);
    assert_eq!(r.state().devices.block["c1"], vec![a.device.clone()]);
    assert_eq!(
        out.mounts[0].source().as_deref(),
        Some(Path::new(&a.mount_point))
    );
    r.remove_container("c1").unwrap();
    assert!(r.container_block_devices("c1").is_empty());
    assert!(r.state().devices.block.is_empty());
    r.release().unwrap();
}

#[test]
fn without_a_shared_directory_block_and_guest_volumes_work_and_host_binds_are_refused() {
    use kata_hypervisor::SharedFs;
    let tmp = tempfile::tempdir().unwrap();
    let (sandbox, bundle) = (tmp.path().join("sb"), tmp.path().join("bundle"));
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let (rootfs_image, volume_image) = (tmp.path().join("root.ext4"), tmp.path().join("v.ext4"));
    std::fs::write(&rootfs_image, b"").unwrap();
    std::fs::write(&volume_image, b"").unwrap();
    let mut r = crate::SandboxResources::new(&sandbox, SharedFs::None, 8192).unwrap();
    r.use_block_devices(true);
    r.add_container(
        "c1",
        crate::RootfsSource::Bundle {
            bundle: bundle.clone(),
            root_path: None,
            mounts: vec![crate::RootfsMount::new(
                "ext4",
                rootfs_image.to_str().unwrap(),
                Vec::<String>::new(),
            )],
        },
        crate::RootfsMode::ReadWrite,
    )
    .unwrap();
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let volumes = [
        mount("tmpfs", "tmpfs", "/tmp", &[]),
        mount("ext4", volume_image.to_str().unwrap(), "/data", &[]),
    ];
    let out = r
        .add_volumes("c1", &volumes, &VolumeOptions::default())
        .unwrap();
    assert_eq!(out.block_devices.len(), 1);
    assert_eq!(
        r.container_block_devices("c1").len(),
        2,
        "the rootfs and the volume"
    );
    let err = r
        .add_volumes(
            "c1",
            &[mount("bind", host.to_str().unwrap(), "/h", &["rbind"])],
            &VolumeOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("mounts[0].source ") && err.contains("shared_fs"),
        "{err}"
    );
    r.remove_container("c1").unwrap();
    assert!(r.container_block_devices("c1").is_empty());
    r.release().unwrap();
}
