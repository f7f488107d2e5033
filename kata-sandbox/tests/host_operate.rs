//! Tier 2, operating a sandbox (issue 16): the agent's log re-emitted in the host's trace with
//! the sandbox id (and again after a restore), and the debug console (a shell beside the
//! agent; refused when not enabled), on the test backend (`[hypervisor.host-agent]`: the real
//! `kata-agent` on this host, its side ports beside its unix socket).
//!
//! Needs root and the kata-agent binary of this build (see `kata_testkit::agent_binary`).

use std::path::PathBuf;
use std::time::Duration;

use kata_sandbox::{
    ContainerSpec, Error, HypervisorConfig, HypervisorType, Sandbox, SandboxBuilder,
};
use tokio::io::AsyncReadExt;
#[path = "support/agent_trace.rs"]
mod agent_trace;

/// Waits until sandbox `id` re-emitted `count` agent lines containing `needle`.
async fn wait_for_agent_line(id: &str, needle: &str, count: usize) -> Vec<agent_trace::Seen> {
    agent_trace::wait_for(id, needle, count, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    agent: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root"
        );
        agent_trace::install();
        let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
        Fixture { tmp, rootfs, agent }
    }

    fn builder(&self, id: &str) -> SandboxBuilder {
        Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(HypervisorConfig {
                path: self.agent.display().to_string(),
                ..HypervisorConfig::default()
            })
            .id(id)
            .root_dir(self.tmp.path().join("run"))
            .agent_timeout(Duration::from_secs(20))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_log_lines_reach_the_host_trace_with_the_sandbox_id_and_again_after_restore() {
    let f = Fixture::new();
    let sb = f.builder("oplog").build().await.expect("sandbox starts");
    // Logged at boot, before the host connected: kept by the agent and sent first.
    let boot = wait_for_agent_line("oplog", "kata-agent serving", 1).await;
    assert_eq!(boot[0].1, tracing::Level::INFO);
    sb.run(ContainerSpec::from_rootfs_dir(&f.rootfs).args(["true"]))
        .await
        .unwrap();
    wait_for_agent_line("oplog", "container created", 1).await;

    // A restored sandbox reads the log again.
    let dir = sb.dir().to_path_buf();
    sb.detach().await.unwrap();
    let sb = Sandbox::restore(&dir).await.unwrap();
    sb.run(ContainerSpec::from_rootfs_dir(&f.rootfs).args(["true"]))
        .await
        .unwrap();
    wait_for_agent_line("oplog", "container created", 2).await;
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_console_is_a_shell_beside_the_agent_with_a_window_size() {
    let f = Fixture::new();
    let sb = f
        .builder("opconsole")
        .debug_console(true)
        .build()
        .await
        .expect("sandbox starts");
    let (mut output, mut input) = sb.debug_console().await.unwrap().split();
    input.resize(33, 101).await.unwrap();
    input
        .write(b"echo K=$(uname -r)=; stty size; exit\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), output.read_to_end(&mut text))
        .await
        .expect("the shell exits")
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    // The test backend's guest kernel is this host's.
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_str().unwrap();
    assert!(text.contains(&format!("K={release}=")), "{text}");
    assert!(text.contains("33 101"), "{text}");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_console_is_refused_naming_the_key_when_not_enabled() {
    let f = Fixture::new();
    let sb = f
        .builder("opnoconsole")
        .build()
        .await
        .expect("sandbox starts");
    let e = sb.debug_console().await.unwrap_err();
    assert!(matches!(e, Error::DebugConsoleDisabled { .. }), "{e:?}");
    assert!(
        e.to_string().contains("debug_console_enabled = true"),
        "{e}"
    );
    // The agent does not listen either: only the log port is beside its socket.
    let vm = sb.dir().join("vm");
    assert!(vm.join("agent.sock.1025").exists());
    assert!(!vm.join("agent.sock.1026").exists());
    sb.shutdown().await.unwrap();
}
