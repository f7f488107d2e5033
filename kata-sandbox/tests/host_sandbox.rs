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

/// The network settings take effect (they were inert before the pod network was wired): a
/// model kata-rs does not build is refused naming its key, and a network namespace is refused
/// on the test backend, which has no VM to give it to; `none` starts without looking at it.
/// Nothing is left by a refusal.
#[tokio::test]
async fn network_settings_take_effect_and_a_network_namespace_needs_a_vm() {
    let f = Fixture::new();
    let with_runtime = |id: &str, runtime: &str| {
        let mut config = kata_sandbox::config::KataConfig::parse(&format!(
            "[hypervisor.host-agent]\npath = \"{}\"\n[runtime]\n{runtime}\n",
            f.agent.display()
        ))
        .unwrap();
        config.adjust();
        SandboxBuilder::from_kata_config(config)
            .unwrap()
            .id(id)
            .root_dir(f.root())
            .agent_timeout(Duration::from_secs(20))
    };
    let e = with_runtime("macvtap", "internetworking_model = \"macvtap\"")
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("internetworking_model") && e.contains("macvtap") && e.contains("tcfilter"),
        "{e}"
    );
    f.assert_nothing_left("macvtap");

    let e = f
        .builder("netns")
        .network_namespace("/run/netns/kata-rs-no-vm")
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("network_namespace")
            && e.contains("/run/netns/kata-rs-no-vm")
            && e.contains("no VM"),
        "{e}"
    );
    f.assert_nothing_left("netns");

    let sb = with_runtime(
        "no-network",
        "internetworking_model = \"none\"\ndisable_new_netns = true",
    )
    .network_namespace("/run/netns/kata-rs-not-looked-at")
    .build()
    .await
    .unwrap();
    assert!(sb.run(f.spec(&["true"])).await.unwrap().status.success());
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("no-network");
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

/// The agent's process (the test backend's "VM"): the last of the sandbox's host pids
/// (`unshare`, then the agent it forked).
fn agent_pid(sb: &Sandbox) -> nix::unistd::Pid {
    let pids = sb.host_pids();
    nix::unistd::Pid::from_raw(*pids.last().expect("the agent's pid") as i32)
}

/// Waits up to `within` for `cond`.
async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// Issue 9 row 10: the "VM" dies (the test backend's agent is killed, as QEMU would be): every
/// waiter — a container's wait, an exec's wait, an output stream, OOM events — gets an error
/// at once, the sandbox reports itself dead, and it tears itself down, leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_vm_dies_every_waiter_fails_and_the_sandbox_is_torn_down() {
    use futures_util::StreamExt;
    let f = Fixture::new();
    let sb = std::sync::Arc::new(f.sandbox("vm-dies").await);
    let dir = sb.dir().to_path_buf();
    let mut c = sb
        .create_container(f.spec(&["sh", "-c", "echo up; sleep 600"]).id("dies-c1"))
        .await
        .unwrap();
    let mut stdout = c.stdout().unwrap();
    c.start().await.unwrap();
    let mut up = [0u8; 3];
    stdout.read_exact(&mut up).await.unwrap();
    assert_eq!(&up, b"up\n");
    let exec = c.exec(ProcessSpec::new(["sleep", "600"])).await.unwrap();
    let _created = sb
        .create_container(f.spec(&["true"]).id("never-started"))
        .await
        .unwrap();
    let waiter = {
        let sb = sb.clone();
        tokio::spawn(async move { sb.wait_process("dies-c1", "dies-c1").await })
    };
    let exec_waiter = tokio::spawn(async move { exec.wait().await });
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).await
    });
    let mut oom = sb.oom_events();
    let oom = tokio::spawn(async move { oom.next().await });
    let died = sb.on_death();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the container runs");
    assert!(sb.death().is_none());

    let t0 = std::time::Instant::now();
    nix::sys::signal::kill(agent_pid(&sb), nix::sys::signal::Signal::SIGKILL).unwrap();
    let within = Duration::from_secs(5);
    let e = tokio::time::timeout(within, waiter)
        .await
        .expect("the wait fails at once")
        .unwrap();
    assert!(matches!(e, Err(Error::SandboxDead { .. })), "{e:?}");
    let e = tokio::time::timeout(within, exec_waiter)
        .await
        .expect("the exec's wait fails at once")
        .unwrap();
    assert!(matches!(e, Err(Error::SandboxDead { .. })), "{e:?}");
    let e = tokio::time::timeout(within, reader)
        .await
        .expect("the stream ends at once")
        .unwrap();
    let e = e.expect_err("a dead sandbox's output ends in an error, not end of file");
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    let ended = tokio::time::timeout(within, oom)
        .await
        .expect("OOM events end")
        .unwrap();
    assert_eq!(ended, None);
    let why = tokio::time::timeout(within, died)
        .await
        .unwrap()
        .expect("a death, not a shutdown");
    assert!(why.contains("VM exited"), "{why}");
    assert_eq!(sb.death().as_deref(), Some(why.as_str()));
    assert!(t0.elapsed() < within, "{:?}", t0.elapsed());
    // Every later call says so, naming why.
    let e = sb.container_pids("dies-c1").await.unwrap_err();
    assert!(
        matches!(&e, Error::SandboxDead { reason } if *reason == why),
        "{e}"
    );
    let e = sb.create_container(f.spec(&["true"])).await.unwrap_err();
    assert!(matches!(e, Error::SandboxDead { .. }), "{e}");
    // It tears itself down: no one has to call shutdown for the host to be clean.
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()).await,
        "{} is left",
        dir.display()
    );
    f.assert_nothing_left("vm-dies");
    sb.shutdown()
        .await
        .expect("shutting a dead sandbox down succeeds");
}

/// Issue 9 row 10: a wedged agent (stopped with SIGSTOP: its socket stays open, nothing answers)
/// fails its health checks and the sandbox is declared dead within the bound
/// (3 checks × (3 s + `health_check_request_timeout_ms`)), then torn down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_agent_fails_its_health_checks_and_the_sandbox_dies_within_the_bound() {
    let f = Fixture::new();
    let mut config = f.builder("wedged").finish().unwrap();
    config.agent.health_check_request_timeout_ms = 500;
    let sb = Sandbox::start(config).await.unwrap();
    let c = sb
        .create_container(f.spec(&["sleep", "600"]).id("wedged-c1"))
        .await
        .unwrap();
    c.start().await.unwrap();
    // Healthy for longer than two check intervals: no false alarm.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(sb.death().is_none(), "{:?}", sb.death());

    let agent = agent_pid(&sb);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t0 = std::time::Instant::now();
    let bound = (Duration::from_secs(3) + Duration::from_millis(500)) * 3;
    let e = tokio::time::timeout(bound + Duration::from_secs(5), c.wait())
        .await
        .expect("the wait ends once the health checks fail")
        .unwrap_err();
    let took = t0.elapsed();
    let Error::SandboxDead { reason } = &e else {
        panic!("{e}")
    };
    assert!(reason.contains("health check"), "{reason}");
    assert!(
        took <= bound + Duration::from_secs(2),
        "declared dead after {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(15), || !f
            .root()
            .join("wedged")
            .exists())
        .await,
        "the dead sandbox is torn down"
    );
    f.assert_nothing_left("wedged");
    drop(c);
    sb.shutdown().await.unwrap();
}

/// Issue 9 row 15: `output()` collects at most a limit per stream; past it the process is
/// killed and the error names the stream (before, 17 MiB were collected in memory).
#[tokio::test]
async fn output_is_bounded_and_a_process_past_the_limit_is_killed() {
    let f = Fixture::new();
    let sb = f.sandbox("output-limit").await;
    let t0 = std::time::Instant::now();
    let e = sb
        .run(f.spec(&["sh", "-c", "head -c 17825792 /dev/zero; sleep 600"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::OutputTooLarge { stream: "stdout", limit, .. } if *limit == kata_sandbox::DEFAULT_OUTPUT_LIMIT),
        "{e}"
    );
    assert!(e.to_string().contains("output_limit"), "{e}");
    let e = sb
        .run(
            f.spec(&["sh", "-c", "head -c 5000 /dev/zero >&2; sleep 600"])
                .output_limit(4096),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutputTooLarge {
                stream: "stderr",
                limit: 4096,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the processes were killed, not waited for"
    );
    let out = sb
        .run(
            f.spec(&["sh", "-c", "head -c 4096 /dev/zero"])
                .output_limit(4096),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 4096, "exactly the limit is fine");
    assert!(sb.container_ids().is_empty(), "each container was deleted");
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("output-limit");
}

/// A hook that appends `<name> <state JSON>` to `log` (and fails with `fail` if set).
fn logging_hook(log: &Path, name: &str, fail: Option<&str>) -> oci_spec::runtime::Hook {
    let script = match fail {
        Some(msg) => format!("echo {msg} >&2; exit 3"),
        None => format!("echo \"{name} $(cat)\" >> {}", log.display()),
    };
    let mut h = oci_spec::runtime::Hook::default();
    h.set_path(PathBuf::from("/bin/sh"));
    h.set_args(Some(vec!["sh".into(), "-c".into(), script]));
    h.set_timeout(Some(10));
    h
}

/// The hook lines of `log`: (name, state).
fn hook_log(log: &Path) -> Vec<(String, serde_json::Value)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (name, json) = l.split_once(' ').unwrap();
            (name.to_string(), serde_json::from_str(json).unwrap())
        })
        .collect()
}

/// Issue 9 row 16: the host-side OCI hooks run on the host, in the lifecycle's order, with
/// the state on stdin; poststop survives a hand-over; a failing createRuntime hook fails the
/// create and leaves nothing; hooks that must run in the container are refused by name.
#[tokio::test]
async fn oci_hooks_run_on_the_host_in_order_and_failures_follow_the_spec() {
    let f = Fixture::new();
    let log = f.tmp.path().join("hooks.log");
    let sb = f.sandbox("hooks").await;
    let dir = sb.dir().to_path_buf();
    let mut hooks = oci_spec::runtime::Hooks::default();
    #[allow(deprecated)]
    hooks.set_prestart(Some(vec![logging_hook(&log, "prestart", None)]));
    hooks.set_create_runtime(Some(vec![logging_hook(&log, "createRuntime", None)]));
    hooks.set_poststart(Some(vec![
        logging_hook(&log, "poststart", Some("not fatal")),
        logging_hook(&log, "poststart", None),
    ]));
    hooks.set_poststop(Some(vec![logging_hook(&log, "poststop", None)]));
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hooks(Some(hooks.clone()));
    spec.set_annotations(Some([("a".to_string(), "b".to_string())].into()));
    let c = sb
        .create_container(
            ContainerSpec::from_oci(spec.clone(), &f.rootfs)
                .id("hooks-c1")
                .args(["sleep", "600"]),
        )
        .await
        .unwrap();
    let names = |log: &Path| -> Vec<String> { hook_log(log).into_iter().map(|(n, _)| n).collect() };
    assert_eq!(
        names(&log),
        ["prestart", "createRuntime"],
        "run at create, in order"
    );
    let (_, state) = &hook_log(&log)[0];
    assert_eq!(state["id"], "hooks-c1");
    assert_eq!(state["status"], "creating");
    assert_eq!(state["pid"], sb.pid());
    assert_eq!(state["annotations"]["a"], "b");
    c.start()
        .await
        .expect("a failing poststart hook does not fail the start");
    assert_eq!(names(&log), ["prestart", "createRuntime", "poststart"]);
    assert_eq!(hook_log(&log)[2].1["status"], "running");
    let saved = kata_sandbox::persist::SandboxState::load(&dir).unwrap();
    assert_eq!(
        saved.containers["hooks-c1"]
            .hooks
            .as_ref()
            .map(|h| h.poststop.len()),
        Some(1),
        "state.json keeps the hooks still to run"
    );
    drop(c);
    // Handed over (a restarted shim, the next shim-ctl command): poststop still runs.
    sb.detach().await.unwrap();
    let sb = Sandbox::restore(&dir).await.unwrap();
    sb.signal_process("hooks-c1", "hooks-c1", Signal::KILL)
        .await
        .unwrap();
    sb.wait_process("hooks-c1", "hooks-c1").await.unwrap();
    sb.delete_container("hooks-c1").await.unwrap();
    assert_eq!(
        names(&log),
        ["prestart", "createRuntime", "poststart", "poststop"]
    );
    assert_eq!(hook_log(&log)[3].1["status"], "stopped");

    // A failing createRuntime hook fails the create, naming it, and leaves nothing.
    let mut failing = oci_spec::runtime::Hooks::default();
    failing.set_create_runtime(Some(vec![logging_hook(&log, "x", Some("no GPU here"))]));
    spec.set_hooks(Some(failing));
    let e = sb
        .create_container(
            ContainerSpec::from_oci(spec.clone(), &f.rootfs)
                .id("hooks-c2")
                .args(["true"]),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hooks.createRuntime[0]") && e.contains("no GPU here"),
        "{e}"
    );
    assert!(sb.container_ids().is_empty());
    assert!(
        mounts_under(&dir.join("shared"))
            .iter()
            .all(|m| !m.contains("hooks-c2")),
        "the failed container's rootfs is released"
    );
    // Hooks that run in the container's namespaces (the guest) are refused before anything.
    let mut guest_side = oci_spec::runtime::Hooks::default();
    guest_side.set_start_container(Some(vec![logging_hook(&log, "s", None)]));
    spec.set_hooks(Some(guest_side));
    let e = sb
        .create_container(
            ContainerSpec::from_oci(spec, &f.rootfs)
                .id("hooks-c3")
                .args(["true"]),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("hooks.startContainer"), "{e}");
    assert_eq!(
        names(&log).len(),
        4,
        "no hook ran for the refused containers"
    );
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("hooks");
}

/// The options of each mount at or below `dir` (mount point, per-mount options), from
/// `/proc/self/mountinfo`.
fn mount_options_under(dir: &Path) -> Vec<(String, String)> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let (point, options) = (fields.get(4)?, fields.get(5)?);
            point
                .starts_with(&prefix)
                .then(|| (point.to_string(), options.to_string()))
        })
        .collect()
}

/// The VMM's helpers go into the sandbox's host cgroups with it: virtiofsd (the one kata-rs
/// started and its sandboxed child) lands in the overhead cgroup (`sandbox_cgroup_only` off).
#[tokio::test]
async fn virtiofsd_joins_the_sandboxs_host_cgroup() {
    let f = Fixture::new();
    let sb = f.sandbox("cg-helpers").await;
    let daemons: Vec<u32> = kata_testkit::leaks::helpers_naming(sb.dir())
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("virtiofsd"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!daemons.is_empty(), "a virtiofsd serves the sandbox");
    for pid in daemons {
        assert_eq!(
            kata_testkit::leaks::cgroup_of(pid, "cpu").as_deref(),
            Some("/kata_overhead/cg-helpers"),
            "virtiofsd {pid}"
        );
    }
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("cg-helpers");
}

/// Issue 9 row 1, mechanically: the sandbox's state directory, its shared directory and its
/// `state.json` are private to root, and every mount kata-rs makes under the sandbox directory
/// is `nosuid,nodev` (a bundle with containerd's overlay, and a plain directory rootfs).
#[tokio::test]
async fn the_sandbox_directory_is_private_and_every_mount_in_it_is_nosuid_nodev() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let sb = f.sandbox("private").await;
    let dir = sb.dir().to_path_buf();
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
    let _a = sb
        .create_container(
            ContainerSpec::from_bundle(&bundle, spec, vec![overlay])
                .unwrap()
                .id("from-bundle")
                .args(["sleep", "600"]),
        )
        .await
        .unwrap();
    let _b = sb
        .create_container(f.spec(&["sleep", "600"]).id("from-dir"))
        .await
        .unwrap();
    for p in [dir.clone(), dir.join("shared"), SandboxState::path(&dir)] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is {:o}: readable by others",
            p.display(),
            mode & 0o777
        );
    }
    let mounts = mount_options_under(&dir);
    assert!(mounts.len() >= 2, "the two rootfs are mounted: {mounts:?}");
    for (point, options) in &mounts {
        let opts: Vec<&str> = options.split(',').collect();
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"nodev"),
            "{point} is mounted {options}"
        );
    }
    let bundle_mounts = mount_options_under(&bundle);
    assert!(!bundle_mounts.is_empty());
    for (point, options) in &bundle_mounts {
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{point} is mounted {options}"
        );
    }
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("private");
}
