//! Tier 2: the sandbox's own logic — the container table, exec ids, metadata, `state.json`,
//! detach/restore, cleanup, bad input, leaks — on the test backend (`[hypervisor.host-agent]`:
//! no VM, the real `kata-agent` runs on this host in private namespaces and is reached over a
//! unix socket). What needs a real guest is in `vm_sandbox.rs`; this runs in seconds.
//!
//! Needs root (the agent makes namespaces, mounts and cgroups) and the kata-agent binary of
//! this build (`cargo test --workspace` builds it; see `kata_testkit::agent_binary`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_sandbox::persist::{self, SandboxState};
use kata_sandbox::{
    ContainerSpec, Error, ExitStatus, HypervisorConfig, HypervisorType, ProcessSpec, RootfsMount,
    Sandbox, SandboxBuilder, Signal,
};
use kata_testkit::leaks::{mounts_under, processes_mentioning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A sandbox root, a busybox rootfs and the agent binary for one test.
struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    agent: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root (namespaces, mounts)"
        );
        let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
        Fixture { tmp, rootfs, agent }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    fn builder(&self, id: &str) -> SandboxBuilder {
        let config = HypervisorConfig {
            path: self.agent.display().to_string(),
            ..HypervisorConfig::default()
        };
        Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(config)
            .id(id)
            .root_dir(self.root())
            .agent_timeout(Duration::from_secs(20))
    }

    async fn sandbox(&self, id: &str) -> Sandbox {
        self.builder(id).build().await.expect("sandbox starts")
    }

    fn spec(&self, args: &[&str]) -> ContainerSpec {
        ContainerSpec::from_rootfs_dir(&self.rootfs).args(args.iter().copied())
    }

    /// Nothing of sandbox `id` is left: no directory, no mount under the root, no process
    /// naming its directory.
    fn assert_nothing_left(&self, id: &str) {
        let dir = self.root().join(id);
        assert!(!dir.exists(), "{} is left", dir.display());
        let mounts = mounts_under(&self.root());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let procs = processes_mentioning(&dir.display().to_string(), "host_sandbox");
        assert!(procs.is_empty(), "processes left: {procs:?}");
    }
}

#[tokio::test]
async fn output_and_exit_statuses_tell_codes_from_signals() {
    let f = Fixture::new();
    let sb = f.sandbox("statuses").await;
    let out = sb
        .run(f.spec(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "to-out\n");
    assert_eq!(out.stderr_str(), "to-err\n");
    assert_eq!(out.status, ExitStatus::from_code(3));
    let out = sb.run(f.spec(&["sh", "-c", "exit 137"])).await.unwrap();
    assert_eq!(
        (out.status.code(), out.status.signal()),
        (Some(137), None),
        "exit 137 is an exit, not a kill"
    );
    let c = sb.create_container(f.spec(&["sleep", "60"])).await.unwrap();
    c.start().await.unwrap();
    c.kill(Signal::KILL).await.unwrap();
    let status = c.wait().await.unwrap();
    assert_eq!(
        (status.code(), status.signal()),
        (None, Some(9)),
        "{status}"
    );
    assert_eq!(status.to_shell_status(), 137);
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("statuses");
}

#[tokio::test]
async fn stdin_exec_and_operations_by_handle_and_by_id() {
    let f = Fixture::new();
    let sb = f.sandbox("ops").await;
    let mut cat = sb
        .create_container(f.spec(&["cat"]).id("cat").stdin(true))
        .await
        .unwrap();
    cat.start().await.unwrap();
    let mut stdin = cat.stdin().expect("stdin open");
    stdin.write_all(b"through the agent\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let out = cat.process().output().await.unwrap();
    assert_eq!(out.stdout_str(), "through the agent\n");
    assert!(out.status.success());
    cat.delete().await.unwrap();

    let c = sb
        .create_container(f.spec(&["sleep", "60"]).id("sleeper"))
        .await
        .unwrap();
    sb.start_container("sleeper").await.unwrap();
    let mut p = c
        .exec(ProcessSpec::new(["sh", "-c", "echo $((6*7))"]))
        .await
        .unwrap();
    assert_eq!(p.exec_id(), "exec-1");
    let out = p.output().await.unwrap();
    assert_eq!(out.stdout_str(), "42\n");
    let mut p2 = c.exec(ProcessSpec::new(["true"])).await.unwrap();
    assert_eq!(p2.exec_id(), "exec-2", "exec ids are not reused");
    assert!(p2.output().await.unwrap().status.success());

    assert!(!sb.container_pids("sleeper").await.unwrap().is_empty());
    assert!(!c.pids().await.unwrap().is_empty());
    let stats = sb.container_stats("sleeper").await.unwrap();
    assert!(
        stats.cgroup.pids.is_some() || stats.cgroup.memory.is_some(),
        "{stats:?}"
    );
    c.pause().await.unwrap();
    sb.resume_container("sleeper").await.unwrap();
    // An exec (not the container's PID 1, which ignores signals it has no handler for).
    let p3 = c.exec(ProcessSpec::new(["sleep", "60"])).await.unwrap();
    sb.signal_process("sleeper", p3.exec_id(), Signal::TERM)
        .await
        .unwrap();
    let status = sb.wait_process("sleeper", p3.exec_id()).await.unwrap();
    assert_eq!(status.signal(), Some(15), "{status}");
    sb.signal_process("sleeper", "sleeper", Signal::KILL)
        .await
        .unwrap();
    let status = sb.wait_process("sleeper", "sleeper").await.unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(matches!(
        sb.wait_process("sleeper", "exec-9").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        sb.container_stats("nope").await,
        Err(Error::NotFound { .. })
    ));
    sb.delete_container("sleeper").await.unwrap();
    assert!(sb.container_ids().is_empty());
    sb.shutdown().await.unwrap();
    sb.shutdown().await.unwrap(); // idempotent
    assert!(matches!(
        sb.create_container(f.spec(&["true"])).await,
        Err(Error::ShutDown)
    ));
    f.assert_nothing_left("ops");
}

#[tokio::test]
async fn metadata_and_state_are_persisted_and_a_restore_takes_over() {
    let f = Fixture::new();
    let sb = f.sandbox("handover").await;
    let dir = sb.dir().to_path_buf();
    let mut c = sb
        .create_container(
            f.spec(&["sh", "-c", "echo started; sleep 60"])
                .id("c1")
                .metadata("bundle", "/b/c1"),
        )
        .await
        .unwrap();
    let state = SandboxState::load(&dir).unwrap();
    assert_eq!(state.containers["c1"].metadata["bundle"], "/b/c1");
    assert!(!state.containers["c1"].started);
    drop(c.stdout());
    c.start().await.unwrap();
    assert!(SandboxState::load(&dir).unwrap().containers["c1"].started);
    sb.set_container_metadata("c1", "status", "seen").unwrap();
    let host_pids = sb.host_pids();
    assert!(
        !host_pids.is_empty(),
        "the test backend's agent is a host process"
    );
    drop(c);
    sb.detach().await.unwrap();
    // Detached: everything is still there.
    assert!(SandboxState::path(&dir).is_file());
    assert!(!mounts_under(&dir).is_empty());

    let sb = Sandbox::restore(&dir).await.unwrap();
    assert_eq!(sb.id(), "handover");
    assert_eq!(sb.host_pids(), host_pids, "the same agent process");
    assert_eq!(sb.container_ids(), ["c1"]);
    let meta = sb.container_metadata("c1").unwrap();
    assert_eq!(
        (meta["bundle"].as_str(), meta["status"].as_str()),
        ("/b/c1", "seen")
    );
    let c = sb.container("c1").unwrap();
    let mut p = c.exec(ProcessSpec::new(["echo", "after"])).await.unwrap();
    assert_eq!(p.output().await.unwrap().stdout_str(), "after\n");
    assert!(matches!(sb.container("nope"), Err(Error::NotFound { .. })));
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("handover");
}

#[tokio::test]
async fn a_sandbox_dropped_without_shutdown_is_stopped_at_once() {
    let f = Fixture::new();
    let sb = f.sandbox("dropped").await;
    let c = sb.create_container(f.spec(&["sleep", "60"])).await.unwrap();
    c.start().await.unwrap();
    let pids = sb.host_pids();
    drop(sb);
    for pid in pids {
        assert!(
            kata_hypervisor::process::is_gone(pid),
            "agent {pid} still runs"
        );
    }
    // The container handle outlives the sandbox; it only reports the sandbox is gone.
    assert!(matches!(c.wait().await, Err(Error::ShutDown)));
    f.assert_nothing_left("dropped");
}

#[tokio::test]
async fn bad_input_is_refused_by_name_and_leaves_nothing() {
    let f = Fixture::new();
    let e = f
        .builder("../escape")
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("id"), "{e}");
    let e = f
        .builder("memory")
        .memory_mib(8)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_memory"), "{e}");
    assert!(!f.root().join("memory").exists());

    let sb = f.sandbox("bad-input").await;
    let e = sb
        .create_container(ContainerSpec::from_rootfs_dir("/no/such/dir").args(["true"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("rootfs"), "{e}");
    let e = sb
        .create_container(f.spec(&["true"]).id("a/b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("container id"), "{e}");
    let e = sb
        .create_container(f.spec(&["true"]).cwd("relative"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("process.cwd"), "{e}");
    let first = sb
        .create_container(f.spec(&["true"]).id("dup"))
        .await
        .unwrap();
    assert!(matches!(
        sb.create_container(f.spec(&["true"]).id("dup")).await,
        Err(Error::AlreadyExists { .. })
    ));
    first.delete().await.unwrap();
    // A bundle whose root.path leaves it is refused before anything is mounted.
    let bundle = f.tmp.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut spec = oci_spec::runtime::Spec::default();
    let mut root = oci_spec::runtime::Root::default();
    root.set_path(PathBuf::from("/"));
    spec.set_root(Some(root));
    let e = ContainerSpec::from_bundle(&bundle, spec, Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("root.path"), "{e}");
    assert!(sb.container_ids().is_empty());
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("bad-input");
}

/// containerd's way: an overlay of the image's layers, handed over as mounts the runtime
/// makes on the bundle's rootfs directory; deleting the container takes them off.
#[tokio::test]
async fn a_bundle_with_containerd_mounts_is_mounted_and_unmounted_by_the_sandbox() {
    let f = Fixture::new();
    let bundle = f.tmp.path().join("bundle");
    let (upper, work) = (f.tmp.path().join("upper"), f.tmp.path().join("work"));
    for d in [&bundle, &upper, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    let overlay = RootfsMount::new(
        "overlay",
        "overlay",
        vec![
            format!("lowerdir={}", f.rootfs.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ],
    );
    let mut spec = oci_spec::runtime::Spec::default();
    let mut root = oci_spec::runtime::Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let sb = f.sandbox("bundle").await;
    let cspec = ContainerSpec::from_bundle(&bundle, spec, vec![overlay])
        .unwrap()
        .id("c1")
        .args(["sh", "-c", "echo written > /marker; cat /marker"]);
    let c = sb.create_container(cspec).await.unwrap();
    assert!(
        mounts_under(&bundle)
            .iter()
            .any(|m| Path::new(m) == bundle.join("rootfs")),
        "the sandbox mounted the bundle rootfs"
    );
    let out = c.output().await.unwrap();
    assert_eq!(out.stdout_str(), "written\n");
    assert!(
        upper.join("marker").is_file(),
        "writes land in the overlay's upper dir"
    );
    assert!(
        mounts_under(&bundle).is_empty(),
        "deleted: the bundle rootfs is unmounted"
    );
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("bundle");
}

/// A `state.json` in the format kata-rs 0.1 wrote (format 1, its structs field for field): it is
/// named as older, cannot be restored, and cleanup still removes the sandbox — its VMM found
/// by its command line naming the VM directory, its shared directory unmounted.
#[tokio::test]
async fn a_state_of_the_older_format_is_named_and_still_cleaned_up() {
    let f = Fixture::new();
    let dir = f.root().join("old-format");
    let vm_dir = dir.join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
    let status = std::process::Command::new("mount")
        .args(["--bind"])
        .arg(&f.rootfs)
        .arg(shared.join("c1/rootfs"))
        .status()
        .unwrap();
    assert!(status.success());
    let fixture =
        include_str!("fixtures/state-v1.json").replace("@DIR@", &dir.display().to_string());
    std::fs::write(SandboxState::path(&dir), fixture).unwrap();
    // Stands in for the QEMU of that sandbox: a process whose command line names the VM dir.
    let mut vmm = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 100 # {}/qmp.sock", vm_dir.display()))
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if !processes_mentioning(&vm_dir.display().to_string(), "host_sandbox").is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let e = Sandbox::restore(&dir).await.unwrap_err().to_string();
    assert!(e.contains("format version 1") && e.contains("older"), "{e}");
    let report = persist::cleanup(&dir).unwrap();
    assert!(report
        .state_error
        .as_ref()
        .is_some_and(|e| e.contains("older")));
    assert!(report.killed.contains(&vmm.id()), "{report:?}");
    assert!(report.removed, "{report:?}");
    let _ = vmm.wait();
    f.assert_nothing_left("old-format");
    // Idempotent.
    assert!(persist::cleanup(&dir).unwrap().removed);
}

#[tokio::test]
async fn a_truncated_state_is_a_clear_error() {
    let f = Fixture::new();
    let sb = f.sandbox("truncated").await;
    let dir = sb.dir().to_path_buf();
    let path = SandboxState::path(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let keep = bytes.clone();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = SandboxState::load(&dir).unwrap_err();
    assert!(matches!(e, Error::CorruptState { .. }), "{e}");
    assert!(e.to_string().contains("state.json"), "{e}");
    std::fs::write(&path, keep).unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("truncated");
}

#[tokio::test]
async fn oom_events_end_with_the_sandbox() {
    use futures_util::StreamExt;
    let f = Fixture::new();
    let sb = f.sandbox("oom").await;
    let mut events = sb.oom_events();
    let next = tokio::spawn(async move { events.next().await });
    sb.shutdown().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the stream ends when the sandbox does")
        .unwrap();
    assert_eq!(ended, None);
    f.assert_nothing_left("oom");
}

#[tokio::test]
async fn reading_and_writing_streams_concurrently_does_not_mix_containers() {
    let f = Fixture::new();
    let sb = std::sync::Arc::new(f.sandbox("concurrent").await);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (sb, spec) = (
            sb.clone(),
            f.spec(&["sh", "-c", &format!("echo job-{i}; exit {i}")]),
        );
        tasks.push(tokio::spawn(async move { sb.run(spec).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        assert_eq!(out.stdout_str(), format!("job-{i}\n"));
        assert_eq!(out.status.code(), Some(i as i32));
    }
    let mut c = sb
        .create_container(f.spec(&["sh", "-c", "head -c 300000 /dev/zero"]))
        .await
        .unwrap();
    let mut stdout = c.stdout().unwrap();
    c.start().await.unwrap();
    let mut buf = Vec::new();
    stdout.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf.len(), 300_000, "large output arrives whole");
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("concurrent");
}
