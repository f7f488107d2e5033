//! Tier 2: the test backend with the real kata-agent on this host. Needs root, `unshare` and
//! the agent binary (`cargo build -p kata-agent`; found at `$KATA_RS_AGENT_BIN`,
//! `$CARGO_TARGET_DIR/debug/kata-agent` or next to this test's `deps/` directory).
//!
//! Each case starts the agent through `kata_hypervisor::backend`, checks it answers a ttRPC
//! health check on its unix socket and sees mounts made later in the shared directory, ends it
//! one way (stop, stop_now, cleanup after a detach), and checks nothing is left: no process, no
//! mount, no VM directory.
#![cfg(feature = "test-backend")]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kata_hypervisor::{
    backend, DeviceConfig, Hypervisor, HypervisorConfig, HypervisorType, ShareFsDevice, SharedFs,
    VmState, VsockAddress,
};

/// The kata-agent binary, or a loud failure saying how to build it.
fn agent_binary() -> PathBuf {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("KATA_RS_AGENT_BIN") {
        tried.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        tried.push(PathBuf::from(dir).join("debug/kata-agent"));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/host_agent-<hash> -> target/debug/kata-agent
        if let Some(debug) = exe.parent().and_then(Path::parent) {
            tried.push(debug.join("kata-agent"));
        }
    }
    tried.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "THE KATA-AGENT BINARY IS MISSING (looked at {tried:?}): build it with `cargo build -p kata-agent`, or set KATA_RS_AGENT_BIN"
        )
    })
}

/// A sandbox-like directory under /run (where kata-rs puts sandboxes), with `shared/`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root (namespaces, mounts)"
        );
        let dir = tempfile::Builder::new()
            .prefix("kata-rs-host-agent-")
            .tempdir_in("/run")
            .unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        Fixture { dir }
    }

    fn vm_dir(&self) -> PathBuf {
        self.dir.path().join("vm")
    }

    fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    async fn start(&self) -> Arc<dyn Hypervisor> {
        let config = HypervisorConfig {
            path: agent_binary().display().to_string(),
            ..Default::default()
        };
        let vm = backend::create(HypervisorType::HostAgent, "ha", config, &self.vm_dir()).unwrap();
        vm.prepare(vec![DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: "kataShared".into(),
            host_path: self.shared(),
            kind: SharedFs::Virtio9p,
            vhost_user_socket: None,
        })])
        .await
        .unwrap();
        vm.start().await.unwrap();
        vm.wait_ready(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("the agent did not come up: {e}"));
        vm
    }

    /// Nothing of the agent is left: its processes, mounts under the fixture, the VM dir.
    fn assert_nothing_left(&self, pids: &[u32]) {
        for pid in pids {
            assert!(
                kata_hypervisor::process::wait_gone(*pid, Duration::from_secs(5)),
                "process {pid} is still there"
            );
        }
        let prefix = self.dir.path().display().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
            .map(str::to_string)
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        assert!(!self.vm_dir().exists(), "the VM directory is left");
        assert!(
            kata_hypervisor::process::processes_naming(&self.vm_dir()).is_empty(),
            "processes naming the VM directory are left"
        );
    }
}

/// One ttRPC request frame for `grpc.Health/Check` with an empty `CheckRequest`.
fn health_check_frame() -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![tag, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }
    // ttrpc.Request { service = 1, method = 2, payload = 3 }
    let mut request = field(0x0a, b"grpc.Health");
    request.extend(field(0x12, b"Check"));
    request.extend(field(0x1a, b""));
    // Header: payload length, stream id (odd: the client's), type 1 (request), flags 0.
    let mut frame = (request.len() as u32).to_be_bytes().to_vec();
    frame.extend(1u32.to_be_bytes());
    frame.extend([1u8, 0u8]);
    frame.extend(request);
    frame
}

/// Asks the agent behind `socket` for its health over plain ttRPC; returns the response's
/// payload (a `HealthCheckResponse`).
fn health_check(socket: &Path) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&health_check_frame()).unwrap();
    let mut header = [0u8; 10];
    s.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    assert_eq!(
        u32::from_be_bytes(header[4..8].try_into().unwrap()),
        1,
        "stream id"
    );
    assert_eq!(header[8], 2, "a response frame");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    // ttrpc.Response { status = 1 (absent or code 0), payload = 2 }
    let mut i = 0;
    let mut payload = Vec::new();
    while i < body.len() {
        let (tag, n) = (body[i], body[i + 1] as usize);
        let value = &body[i + 2..i + 2 + n];
        match tag {
            // Status { code = 1 }: absent or 0 is OK.
            0x0a => assert!(
                value.first() != Some(&0x08) || value.get(1) == Some(&0),
                "the agent answered an error status: {value:?}"
            ),
            0x12 => payload = value.to_vec(),
            _ => {}
        }
        i += 2 + n;
    }
    payload
}

/// `/proc/<pid>/mountinfo` of the agent shows `guest_path`.
fn agent_sees_mount(agent: u32, guest_path: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{agent}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(guest_path))
}

#[tokio::test]
async fn the_agent_answers_sees_later_mounts_and_stop_leaves_nothing() {
    let fx = Fixture::new();
    let vm = fx.start().await;
    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "unshare and the agent: {pids:?}");
    let VsockAddress::Unix { path } = vm.agent_address().unwrap() else {
        panic!("the test backend's agent is on a unix socket")
    };
    assert_eq!(path, fx.vm_dir().join("agent.sock"));
    // SERVING (HealthCheckResponse.status = 1).
    assert_eq!(health_check(&path), vec![0x08, 0x01]);
    let caps = vm.capabilities();
    assert!(caps.guest_on_host && caps.hand_over);

    // A mount made in the shared directory after start reaches the agent at the guest path.
    let c1 = fx.shared().join("c1");
    std::fs::create_dir(&c1).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &c1,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let guest = "/run/kata-containers/shared/containers/c1";
    let mut seen = false;
    for _ in 0..100 {
        seen = agent_sees_mount(pids[1], guest);
        if seen {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::mount::umount(&c1).unwrap();
    assert!(seen, "the agent does not see {guest}");
    // Nothing of the agent's namespace shows on the host.
    assert!(!Path::new("/run/kata-containers").exists());

    vm.stop().await.unwrap();
    assert!(matches!(vm.state(), VmState::Stopped(_)));
    fx.assert_nothing_left(&pids);
}

#[tokio::test]
async fn stop_now_kills_the_agent_without_a_runtime() {
    let fx = Fixture::new();
    let vm = fx.start().await;
    let pids = vm.pids();
    // A process in the agent's PID namespace (as a container's would be) dies with it.
    let mut member = std::process::Command::new("nsenter")
        .args(["--target", &pids[1].to_string(), "--pid", "--mount", "--"])
        .args(["sleep", "987654"])
        .spawn()
        .unwrap();
    let find = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                kata_hypervisor::process::cmdline(*p)
                    .is_some_and(|c| c.trim_end() == "sleep 987654")
            })
            .collect()
    };
    let mut inside = Vec::new();
    for _ in 0..200 {
        inside = find();
        if !inside.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        inside.len(),
        1,
        "the process in the agent's namespace: {inside:?}"
    );
    let vm2 = vm.clone();
    std::thread::spawn(move || vm2.stop_now()).join().unwrap();
    for pid in &pids {
        assert!(
            kata_hypervisor::process::is_gone(*pid),
            "{pid} survived stop_now"
        );
    }
    assert!(
        kata_hypervisor::process::wait_gone(inside[0], Duration::from_secs(5)),
        "a process of the agent's PID namespace survived it"
    );
    let _ = member.wait();
    fx.assert_nothing_left(&pids);
    vm.stop().await.unwrap();
}

#[tokio::test]
async fn a_detached_agent_is_restored_and_cleaned_up_after_its_owner() {
    let fx = Fixture::new();
    let vm = fx.start().await;
    let pids = vm.pids();
    let saved = vm.save_state();
    assert_eq!(saved.backend, HypervisorType::HostAgent);
    vm.detach().await.unwrap();
    vm.stop_now();
    vm.stop().await.unwrap();
    drop(vm);
    for pid in &pids {
        assert!(
            !kata_hypervisor::process::is_gone(*pid),
            "detach keeps {pid}"
        );
    }

    // Taken over again, the agent still answers; handed back.
    let config = HypervisorConfig {
        path: agent_binary().display().to_string(),
        ..Default::default()
    };
    let again = backend::restore("ha", config, &saved).await.unwrap();
    assert_eq!(again.pids(), pids);
    again.wait_ready(Duration::from_secs(5)).await.unwrap();
    again.detach().await.unwrap();

    // The owner died: cleanup from the state kills both and removes the directory.
    let report = backend::cleanup(Some(&saved), &fx.vm_dir()).unwrap();
    assert!(report.killed.contains(&pids[0]), "{report:?}");
    assert!(report.vm_dir_removed);
    fx.assert_nothing_left(&pids);
}
