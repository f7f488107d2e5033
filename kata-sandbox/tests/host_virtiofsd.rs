//! Tier 2: the sandbox's virtiofsd (`shared_fs = "virtio-fs"`, the default) on the test
//! backend: it runs for the sandbox, its death is the sandbox's death (every waiter fails
//! naming it) and the teardown leaves no process, socket, mount or directory. No VM: the agent
//! runs on this host, virtiofsd is real (the one `scripts/setup.sh` installs).

use std::path::PathBuf;
use std::time::Duration;

use kata_hypervisor::SharedFs;
use kata_sandbox::{Error, HypervisorConfig, HypervisorType, Sandbox};
use kata_testkit::leaks::{helpers_naming, mounts_under, processes_mentioning};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtiofsd_that_dies_ends_the_sandbox_naming_it_and_nothing_is_left() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the test backend needs root"
    );
    let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let root: PathBuf = tmp.path().join("run");
    let config = HypervisorConfig {
        path: agent.display().to_string(),
        ..HypervisorConfig::default()
    };
    assert_eq!(config.shared_fs, SharedFs::VirtioFs, "the default");
    let sb = std::sync::Arc::new(
        Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(config)
            .id("vfsd-dies")
            .root_dir(&root)
            .agent_timeout(Duration::from_secs(20))
            .build()
            .await
            .expect("sandbox starts"),
    );
    let dir = sb.dir().to_path_buf();
    let daemons = helpers_naming(&dir);
    assert_eq!(
        daemons.len(),
        2,
        "virtiofsd and its sandboxed child: {daemons:?}"
    );
    let c = sb
        .create_container(
            kata_sandbox::ContainerSpec::from_rootfs_dir(&rootfs)
                .args(["sleep", "600"])
                .id("c1"),
        )
        .await
        .unwrap();
    c.start().await.unwrap();
    let waiter = {
        let sb = sb.clone();
        tokio::spawn(async move { sb.wait_process("c1", "c1").await })
    };
    let died = sb.on_death();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sb.death().is_none());

    let first = daemons.iter().map(|(pid, _)| *pid).min().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let within = Duration::from_secs(5);
    let e = tokio::time::timeout(within, waiter)
        .await
        .expect("the wait fails at once")
        .unwrap();
    assert!(matches!(e, Err(Error::SandboxDead { .. })), "{e:?}");
    let why = tokio::time::timeout(within, died)
        .await
        .unwrap()
        .expect("a death, not a shutdown");
    assert!(
        why.contains("virtiofsd") && why.contains("shared filesystem") && why.contains("SIGKILL"),
        "{why}"
    );
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()).await,
        "{} is left: {:?}, mounts {:?}, processes {:?}",
        dir.display(),
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
        mounts_under(&root),
        helpers_naming(&dir)
    );
    assert!(helpers_naming(&dir).is_empty());
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    let procs = processes_mentioning(&dir.display().to_string(), "host_virtiofsd");
    assert!(procs.is_empty(), "processes left: {procs:?}");
    sb.shutdown()
        .await
        .expect("shutting a dead sandbox down succeeds");
}
