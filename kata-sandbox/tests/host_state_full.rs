//! Tier 2: a full state directory (issue 14 item 2, the ENOSPC fault) on the test backend. The
//! sandbox root is a small tmpfs, filled after the sandbox is up: a container that cannot be
//! recorded in `state.json` is not kept (Create fails and removes it), Start and Exec fail
//! naming `state.json` and the cause, the `state.json` on disk stays whole and readable, and
//! once space is back everything works and shutdown leaves nothing.
//!
//! Needs root (tmpfs, the backend's namespaces).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_sandbox::persist::SandboxState;
use kata_sandbox::{ContainerSpec, HypervisorConfig, HypervisorType, ProcessSpec, Sandbox, Signal};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

/// A tmpfs on a temporary directory, unmounted on drop.
struct SmallTmpfs(tempfile::TempDir);

impl SmallTmpfs {
    fn mount(size: &str) -> SmallTmpfs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0711").as_str()),
        )
        .expect("mount a tmpfs (needs root)");
        SmallTmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `<root>/filler` until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            while f.write(&buf).is_ok_and(|n| n > 0) {}
        }
        filler
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn says_state_json_and_enospc(e: &kata_sandbox::Error, dir: &Path) -> bool {
    let s = e.to_string();
    s.contains(&SandboxState::path(dir).display().to_string())
        && s.contains("No space left on device")
}

#[tokio::test]
async fn a_full_state_directory_fails_create_start_and_exec_and_keeps_state_json_whole() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the test backend needs root (namespaces, mounts)"
    );
    let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let fs = SmallTmpfs::mount("8m");
    let root = fs.path().join("run");
    let sb = Sandbox::builder()
        .hypervisor(HypervisorType::HostAgent)
        .hypervisor_config(HypervisorConfig {
            path: agent.display().to_string(),
            ..HypervisorConfig::default()
        })
        .id("full")
        .root_dir(&root)
        .agent_timeout(Duration::from_secs(20))
        .build()
        .await
        .expect("sandbox starts");
    let dir = sb.dir().to_path_buf();
    let spec = |id: &str, args: &[&str]| {
        ContainerSpec::from_rootfs_dir(&rootfs)
            .id(id)
            .args(args.iter().copied())
    };
    let kept = sb
        .create_container(spec("kept", &["sleep", "600"]))
        .await
        .unwrap();
    let started = sb
        .create_container(spec("later", &["sleep", "600"]))
        .await
        .unwrap();

    let filler = fs.fill();
    // Create: not recorded, so not kept.
    let e = sb
        .create_container(spec("lost", &["true"]))
        .await
        .expect_err("a container was created with no room for state.json");
    assert!(says_state_json_and_enospc(&e, &dir), "create: {e}");
    assert!(
        !sb.container_ids().contains(&"lost".to_string()),
        "the unrecorded container is kept: {:?}",
        sb.container_ids()
    );
    // Start: the start stands (as Kata's), its caller hears it is not recorded.
    let e = started.start().await.expect_err("start recorded nothing");
    assert!(says_state_json_and_enospc(&e, &dir), "start: {e}");
    // Exec: not recorded, not kept.
    kept.start()
        .await
        .expect_err("start recorded nothing (kept)");
    let e = kept
        .exec(ProcessSpec::new(["sleep", "600"]))
        .await
        .expect_err("an exec was kept with no room for state.json");
    assert!(says_state_json_and_enospc(&e, &dir), "exec: {e}");
    // What is on disk is whole: the state as it was before the disk filled.
    let on_disk = SandboxState::load(&dir).expect("state.json readable");
    let ids: Vec<&String> = on_disk.containers.keys().collect();
    assert_eq!(ids, ["kept", "later"], "{on_disk:?}");
    assert!(on_disk.containers.values().all(|c| !c.started));
    let temporaries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");

    // Space is back: the next change is recorded.
    std::fs::remove_file(filler).unwrap();
    let mut p = kept.exec(ProcessSpec::new(["true"])).await.unwrap();
    assert!(p.output().await.unwrap().status.success());
    let on_disk = SandboxState::load(&dir).unwrap();
    assert!(on_disk.containers["kept"].started, "{on_disk:?}");
    started.kill(Signal::KILL).await.unwrap();
    kept.kill(Signal::KILL).await.unwrap();
    sb.shutdown().await.unwrap();
    assert!(!dir.exists(), "{} is left", dir.display());
    let mounts = mounts_under(&root);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let procs = processes_mentioning(&format!("{}/", dir.display()), "host_state_full");
    assert!(procs.is_empty(), "processes left: {procs:?}");
}
