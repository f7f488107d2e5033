//! Conformance with Kata's agent: one case per RPC Kata's runtime calls in a container's life,
//! asserting what Kata's own agent answers (codes included), run against kata-rs's agent.
//!
//! The reference is Kata's agent (`src/agent/src/rpc.rs`, `storage/`, `sandbox.rs`) and its
//! protocol (`src/libs/protocols/protos/agent.proto`); `kata-agent/INTEROP.md` keeps the
//! table, RPC by RPC, with the differences that remain. Where kata-rs's agent still differs,
//! the case says so and asserts today's answer, so that the table cannot go stale.
//!
//! The agent is the real `kata-agent` binary on the host (see [`kata_testkit::agent_binary`]),
//! `--no-init`, in private mount, UTS, IPC and network namespaces (`unshare`), serving on a
//! unix socket; containers run from a busybox rootfs. Needs root and busybox-static.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kata_agent_client::protocol::agent::{
    AddARPNeighborsRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    ExecProcessRequest, GetMetricsRequest, GuestDetailsRequest, ListInterfacesRequest,
    ListRoutesRequest, OnlineCPUMemRequest, PauseContainerRequest, ReadStreamRequest,
    RemoveContainerRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, Storage, TtyWinResizeRequest, UpdateInterfaceRequest,
    UpdateRoutesRequest, WaitProcessRequest, WriteStreamRequest,
};
use kata_agent_client::ttrpc;
use kata_agent_client::{spec, AgentAddress, AgentClient, Code, ConnectOptions, OutputStream};
use oci_spec::runtime::{ProcessBuilder, RootBuilder, Spec};
use protobuf::MessageField;

const BUSYBOX: &str = "/bin/busybox";

/// Kata's storage drivers (kata-types `device.rs`, agent `storage/*_handler.rs`) that a
/// container's life under Kata's runtime can send and that kata-rs's agent must handle.
const KATA_DRIVERS: &[&str] = &[
    "blk",
    "mmioblk",
    "scsi",
    "nvdimm",
    "virtio-fs",
    "ephemeral",
    "local",
    "watchable-bind",
    "overlayfs",
];

/// The skip reason when this machine cannot run the suite (not root, no busybox, no agent).
fn unavailable() -> Option<String> {
    if let Some(why) = kata_testkit::missing_root_or_tools(&["unshare"]) {
        return Some(why);
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "{BUSYBOX} is missing: apt-get install busybox-static"
        ));
    }
    kata_testkit::agent_binary().err()
}

/// Skips the case (with the reason on stderr) when the suite cannot run here.
macro_rules! require_host_agent {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A busybox rootfs: `/bin/<applet>` links.
fn build_rootfs(root: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// One agent with its own socket, rootfs and log; stopped (SIGTERM, then SIGKILL) on drop.
struct HostAgent {
    dir: tempfile::TempDir,
    agent: Child,
    client: AgentClient,
    sock: PathBuf,
    rootfs: PathBuf,
}

impl HostAgent {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With `private_run`, the agent gets a tmpfs of its own on `/run` (in its mount namespace):
    /// guest paths such as `/run/kata-containers/shared/containers` can then be written without
    /// touching the host's `/run`. The test reads them through `/proc/<agent>/root`.
    async fn start_with(private_run: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        build_rootfs(&rootfs);
        let sock = dir.path().join("agent.sock");
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--propagation",
            "private",
        ]);
        if private_run {
            cmd.args([
                "sh",
                "-c",
                "mount -t tmpfs -o mode=0755 kata-conformance-run /run && exec \"$0\" \"$@\"",
            ]);
        }
        let agent = cmd
            .arg(kata_testkit::agent_binary().unwrap())
            .args(["--no-init", "--log", "debug", "--listen"])
            .arg(format!("unix://{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn unshare kata-agent");
        let opts = ConnectOptions {
            dial_timeout: Duration::from_secs(20),
            ..ConnectOptions::default()
        };
        let client = match AgentClient::connect(&AgentAddress::Unix(sock.clone()), opts).await {
            Ok(client) => client,
            Err(e) => {
                let mut agent = agent;
                let _ = agent.kill();
                let _ = agent.wait();
                let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
                panic!("connect to the agent: {e:?}\nagent log:\n{log}");
            }
        };
        HostAgent {
            dir,
            agent,
            client,
            sock,
            rootfs,
        }
    }

    /// A path as the agent sees it (its mount namespace), from the test.
    fn agent_view(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.agent.id()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// A guest path for a storage, inside this agent's directory.
    fn guest_path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// CreateSandbox as Kata's runtime-rs sends it (sandbox id, hostname, storages).
    async fn create_sandbox(&self, storages: Vec<Storage>) -> kata_agent_client::Result<()> {
        let mut req = CreateSandboxRequest::new();
        req.hostname = "kata-conformance".into();
        req.sandbox_id = "sb".into();
        req.storages = storages;
        self.client.create_sandbox(&req).await
    }

    /// A spec running `args` in the busybox rootfs.
    fn spec(&self, args: &[&str]) -> Spec {
        let mut spec = Spec::default();
        spec.set_root(Some(
            RootBuilder::default()
                .path(&self.rootfs)
                .readonly(false)
                .build()
                .unwrap(),
        ));
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .env(vec!["PATH=/bin".to_string()])
                .cwd("/")
                .build()
                .unwrap(),
        ));
        spec
    }

    /// CreateContainer as runtime-rs sends it: `exec_id` empty (the init process).
    async fn create_container(&self, id: &str, args: &[&str]) {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.OCI = MessageField::some(spec::to_grpc(&self.spec(args)).unwrap());
        if let Err(e) = self.client.create_container(&req).await {
            panic!("CreateContainer {id}: {e}\nagent log:\n{}", self.log());
        }
    }

    async fn start_container(&self, id: &str) {
        let mut req = StartContainerRequest::new();
        req.container_id = id.into();
        if let Err(e) = self.client.start_container(&req).await {
            panic!("StartContainer {id}: {e}\nagent log:\n{}", self.log());
        }
    }

    fn read_req(id: &str, exec_id: &str) -> ReadStreamRequest {
        let mut req = ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.len = 4096;
        req
    }

    /// ReadStdout/ReadStderr until Kata's end of stream: a successful answer with no data.
    /// Any error (kata-rs's old end-of-stream error included) fails the case.
    async fn read_to_kata_eof(&self, id: &str, exec_id: &str, stream: OutputStream) -> String {
        let req = Self::read_req(id, exec_id);
        let mut out = Vec::new();
        loop {
            let call = async {
                match stream {
                    OutputStream::Stdout => self.client.read_stdout(&req, None).await,
                    OutputStream::Stderr => self.client.read_stderr(&req, None).await,
                }
            };
            let resp = tokio::time::timeout(Duration::from_secs(20), call)
                .await
                .unwrap_or_else(|_| panic!("{stream:?} of {id}/{exec_id:?}: no end in 20 s"));
            match resp {
                Ok(r) if r.data.is_empty() => break,
                Ok(r) => out.extend(r.data),
                Err(e) => panic!(
                    "{stream:?} of {id}/{exec_id:?}: Kata's agent ends a stream with an empty \
                     answer; this one failed with {e}"
                ),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn wait(&self, id: &str, exec_id: &str) -> kata_agent_client::Result<i32> {
        let mut req = WaitProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.client
            .wait_process(&req, Some(Duration::from_secs(20)))
            .await
            .map(|r| r.status)
    }

    async fn remove(&self, id: &str) {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        req.timeout = 10;
        if let Err(e) = self.client.remove_container(&req).await {
            panic!("RemoveContainer {id}: {e}\nagent log:\n{}", self.log());
        }
    }

    async fn destroy(&self) {
        self.client
            .destroy_sandbox(&DestroySandboxRequest::new())
            .await
            .expect("DestroySandbox");
    }

    /// A call by method name over a bare ttRPC connection: for the RPCs of Kata's protocol
    /// that kata-rs's generated client does not have. The payload is an empty message.
    async fn raw_call(&self, method: &str) -> ttrpc::Result<ttrpc::Response> {
        let client =
            ttrpc::r#async::Client::connect(&format!("unix://{}", self.sock.display())).await?;
        let mut req = ttrpc::Request::new();
        req.service = "grpc.AgentService".into();
        req.method = method.into();
        req.timeout_nano = Duration::from_secs(10).as_nanos() as i64;
        client.request(req).await
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child; no memory is involved.
        unsafe { libc::kill(self.agent.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.agent.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

fn code(r: &kata_agent_client::Error) -> Option<Code> {
    r.code()
}

fn storage(driver: &str, source: &str, fstype: &str, mount_point: String) -> Storage {
    let mut s = Storage::new();
    s.driver = driver.into();
    s.source = source.into();
    s.fstype = fstype.into();
    s.mount_point = mount_point;
    s
}

/// Health: `Check` answers SERVING; `Version` names the agent's version and Kata's protocol
/// version (`API_VERSION`, 0.0.1).
#[tokio::test]
async fn health_check_and_version() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let check = a.client.check().await.expect("Check");
    assert_eq!(check.status.value(), 1, "Kata's agent answers SERVING (1)");
    let v = a.client.version().await.expect("Version");
    assert!(!v.agent_version.is_empty(), "{v:?}");
    assert_eq!(v.grpc_version, "0.0.1", "Kata's agent's API_VERSION");
}

/// CreateSandbox with the storages Kata's runtime sends for a pod: the pod's shm as an
/// `ephemeral` tmpfs and a `local` directory volume. Both are mounted / made; DestroySandbox
/// releases them.
#[tokio::test]
async fn create_sandbox_takes_kata_storages() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let shm = a.guest_path("sandbox/shm");
    let mut eph = storage("ephemeral", "shm", "tmpfs", shm.clone());
    eph.options = vec![
        "noexec".into(),
        "nosuid".into(),
        "nodev".into(),
        "mode=1777".into(),
        "size=65536k".into(),
    ];
    let local = a.guest_path("local/vol");
    let mut loc = storage("local", "local", "local", local.clone());
    loc.options = vec!["mode=0777".into()];
    if let Err(e) = a.create_sandbox(vec![eph, loc]).await {
        panic!(
            "CreateSandbox with Kata's storages: {e}\nagent log:\n{}",
            a.log()
        );
    }
    // `unshare` without `--fork` execs the agent: its pid is the agent's.
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", a.agent.id())).unwrap_or_default();
    assert!(
        mountinfo.contains(&format!("{shm} ")),
        "shm tmpfs not mounted:\n{mountinfo}"
    );
    assert!(
        Path::new(&local).is_dir(),
        "the local volume's directory is made"
    );
    a.destroy().await;
}

/// An unknown driver is refused as Kata's agent refuses it: `INTERNAL` "Failed to find the
/// storage handler X" (kata-rs's message also names the field and the drivers it has), and
/// leaves nothing behind.
#[tokio::test]
async fn create_sandbox_refuses_an_unknown_driver() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let mp = a.guest_path("floppy");
    let err = a
        .create_sandbox(vec![storage("floppy", "fd0", "vfat", mp.clone())])
        .await
        .expect_err("an unknown driver");
    assert!(
        err.to_string()
            .contains("Failed to find the storage handler floppy"),
        "{err}"
    );
    assert_eq!(code(&err), Some(Code::INTERNAL), "Kata's code: {err}");
    assert!(!Path::new(&mp).exists());
}

/// GetGuestDetails as runtime-rs asks for it (`mem_block_size`, `mem_hotplug_probe`): the
/// agent's details list every storage driver of Kata's that a container's life can send.
#[tokio::test]
async fn guest_details_list_kata_storage_drivers() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let mut req = GuestDetailsRequest::new();
    req.mem_block_size = true;
    req.mem_hotplug_probe = true;
    let resp = a
        .client
        .get_guest_details(&req)
        .await
        .expect("GetGuestDetails");
    let details = resp
        .agent_details
        .into_option()
        .expect("agent_details is set");
    assert!(!details.version.is_empty());
    for driver in KATA_DRIVERS {
        assert!(
            details.storage_handlers.iter().any(|h| h == driver),
            "{driver:?} missing from storage_handlers {:?}",
            details.storage_handlers
        );
    }
    if Path::new("/sys/devices/system/memory/block_size_bytes").exists() {
        assert!(resp.mem_block_size_bytes > 0, "asked for, so answered");
    }
}

/// The init process as runtime-rs addresses it: CreateContainer with `exec_id` "", and every
/// later call with `exec_id` "" (runtime-rs) or the container id (Kata's Go runtime). A
/// stream ends with an empty answer, not an error; WaitProcess gives the exit code.
#[tokio::test]
async fn init_process_by_empty_exec_id_and_streams_end_empty() {
    const CID: &str = "kc-init-process-by-empty-exec-id";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    a.create_container(CID, &["sh", "-c", "echo out; echo err >&2; exit 3"])
        .await;
    a.start_container(CID).await;
    let (out, err) = tokio::join!(
        a.read_to_kata_eof(CID, "", OutputStream::Stdout),
        a.read_to_kata_eof(CID, CID, OutputStream::Stderr)
    );
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(a.wait(CID, "").await.expect("WaitProcess"), 3);
    a.remove(CID).await;
    a.destroy().await;
}

/// WriteStdin with no data closes stdin (runtime-rs relies on it: it never calls
/// CloseStdin) and answers `len` 0.
#[tokio::test]
async fn write_stdin_with_no_data_closes_stdin() {
    const CID: &str = "kc-write-stdin-with-no-data-closes-stdin";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    a.create_container(CID, &["cat"]).await;
    a.start_container(CID).await;
    let mut w = WriteStreamRequest::new();
    w.container_id = CID.into();
    w.data = b"hello\n".to_vec();
    let resp = a.client.write_stdin(&w).await.expect("WriteStdin");
    assert_eq!(resp.len, 6);
    w.data.clear();
    let resp = a
        .client
        .write_stdin(&w)
        .await
        .expect("WriteStdin of nothing");
    assert_eq!(resp.len, 0);
    let out = a.read_to_kata_eof(CID, "", OutputStream::Stdout).await;
    assert_eq!(out, "hello\n");
    let status = tokio::time::timeout(Duration::from_secs(10), a.wait(CID, ""))
        .await
        .expect("cat saw the end of its stdin and exited")
        .expect("WaitProcess");
    assert_eq!(status, 0);
    a.remove(CID).await;
    a.destroy().await;
}

/// An exec: ExecProcess, its streams, WaitProcess; afterwards, and for an exec id never
/// launched, process calls answer `NOT_FOUND` (Kata: "Process not found: invalid exec id").
/// An unknown container is refused too.
#[tokio::test]
async fn exec_lifecycle_and_unknown_ids() {
    const CID: &str = "kc-exec-lifecycle-and-unknown-ids";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    a.create_container(CID, &["sleep", "30"]).await;
    a.start_container(CID).await;

    let err = a
        .client
        .read_stdout(&HostAgent::read_req(CID, "e1"), None)
        .await
        .expect_err("ReadStdout of an exec not launched yet");
    assert_eq!(code(&err), Some(Code::NOT_FOUND), "{err}");

    let mut holder = Spec::default();
    holder.set_process(Some(
        ProcessBuilder::default()
            .args(vec![
                "sh".to_string(),
                "-c".into(),
                "echo exec; exit 7".into(),
            ])
            .env(vec!["PATH=/bin".to_string()])
            .cwd("/")
            .build()
            .unwrap(),
    ));
    let mut req = ExecProcessRequest::new();
    req.container_id = CID.into();
    req.exec_id = "e1".into();
    req.process = spec::to_grpc(&holder).unwrap().Process;
    a.client.exec_process(&req).await.expect("ExecProcess");
    let out = a.read_to_kata_eof(CID, "e1", OutputStream::Stdout).await;
    assert_eq!(out, "exec\n");
    let _ = a.read_to_kata_eof(CID, "e1", OutputStream::Stderr).await;
    assert_eq!(a.wait(CID, "e1").await.expect("WaitProcess"), 7);
    let err = a.wait(CID, "e1").await.expect_err("a reaped exec is gone");
    assert_eq!(code(&err), Some(Code::NOT_FOUND), "{err}");

    // An unknown container: INVALID_ARGUMENT ("invalid container id") for the process
    // calls, as Kata's agent answers (every call: `unknown_container_codes_are_kata_s`).
    let err = a.wait("nope", "").await.expect_err("unknown container");
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
    assert!(err.is_unknown_container(), "{err}");

    // SignalProcess with exec_id "" and SIGKILL: every process of the container.
    let mut sig = SignalProcessRequest::new();
    sig.container_id = CID.into();
    sig.signal = libc::SIGKILL as u32;
    a.client.signal_process(&sig).await.expect("SignalProcess");
    assert_eq!(a.wait(CID, "").await.expect("WaitProcess"), 137);
    a.remove(CID).await;
    a.destroy().await;
}

/// StatsContainer, PauseContainer, ResumeContainer on a running container; TtyWinResize on a
/// process without a terminal is refused `UNAVAILABLE` "no tty", as Kata's agent refuses it.
#[tokio::test]
async fn stats_pause_resume_and_resize() {
    const CID: &str = "kc-stats-pause-resume-and-resize";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    a.create_container(CID, &["sleep", "30"]).await;
    a.start_container(CID).await;
    let mut stats = StatsContainerRequest::new();
    stats.container_id = CID.into();
    let s = a
        .client
        .stats_container(&stats)
        .await
        .expect("StatsContainer");
    assert!(s.cgroup_stats.is_some(), "cgroup stats are answered");
    let mut pause = PauseContainerRequest::new();
    pause.container_id = CID.into();
    a.client
        .pause_container(&pause)
        .await
        .expect("PauseContainer");
    let mut resume = ResumeContainerRequest::new();
    resume.container_id = CID.into();
    a.client
        .resume_container(&resume)
        .await
        .expect("ResumeContainer");
    let mut resize = TtyWinResizeRequest::new();
    resize.container_id = CID.into();
    resize.row = 24;
    resize.column = 80;
    let err = a.client.tty_win_resize(&resize).await.expect_err("no tty");
    assert_eq!(
        code(&err),
        Some(Code::UNAVAILABLE),
        "Kata's \"no tty\": {err}"
    );
    assert!(err.to_string().contains("no tty"), "{err}");
    let mut sig = SignalProcessRequest::new();
    sig.container_id = CID.into();
    sig.signal = libc::SIGKILL as u32;
    a.client.signal_process(&sig).await.expect("SignalProcess");
    a.wait(CID, "").await.expect("WaitProcess");
    a.remove(CID).await;
    a.destroy().await;
}

/// The network RPCs as runtime-rs calls them. Requests without their list are
/// `INVALID_ARGUMENT` as in Kata's agent; the guest's loopback is listed.
#[tokio::test]
async fn network_rpcs() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let ifaces = a
        .client
        .list_interfaces(&ListInterfacesRequest::new())
        .await
        .expect("ListInterfaces");
    assert!(
        ifaces.Interfaces.iter().any(|i| i.name == "lo"),
        "{ifaces:?}"
    );
    a.client
        .list_routes(&ListRoutesRequest::new())
        .await
        .expect("ListRoutes");
    let err = a
        .client
        .update_interface(&UpdateInterfaceRequest::new())
        .await
        .expect_err("UpdateInterface without an interface");
    assert_eq!(code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
    let err = a
        .client
        .update_routes(&UpdateRoutesRequest::new())
        .await
        .expect_err("UpdateRoutes without routes");
    assert_eq!(code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
    let err = a
        .client
        .add_arp_neighbors(&AddARPNeighborsRequest::new())
        .await
        .expect_err("AddARPNeighbors without neighbors");
    assert_eq!(code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
}

/// GetMetrics answers Prometheus text with Kata's metric families (`kata_agent_*`,
/// `kata_guest_*`); OnlineCPUMem is accepted.
#[tokio::test]
async fn metrics_and_online_cpu_mem() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let m = a
        .client
        .get_metrics(&GetMetricsRequest::new())
        .await
        .expect("GetMetrics");
    assert!(m.metrics.contains("kata_agent_"), "{}", m.metrics);
    assert!(m.metrics.contains("kata_guest_"), "{}", m.metrics);
    let mut online = OnlineCPUMemRequest::new();
    online.nb_cpus = 1;
    online.cpu_only = true;
    a.client
        .online_cpu_mem(&online)
        .await
        .expect("OnlineCPUMem");
}

/// The RPCs of Kata's protocol that kata-rs's agent does not serve answer at once as Kata's
/// agent does (see `kata-agent/INTEROP.md`): ResizeVolume `UNIMPLEMENTED` (Kata's own answer),
/// SetPolicy `NOT_FOUND` "/grpc.AgentService/SetPolicy is not supported" (what Kata's agent
/// built without `agent-policy`, its default, answers). This case fails when one gets
/// implemented, so the table is updated with it.
#[tokio::test]
async fn rpcs_kata_has_and_kata_rs_does_not_are_unimplemented() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let (c, msg) = status_of(a.raw_call("SetPolicy").await);
    assert_eq!(c, Code::NOT_FOUND, "{msg}");
    assert!(
        msg.starts_with("/grpc.AgentService/SetPolicy is not supported"),
        "{msg}"
    );
    for method in ["ResizeVolume"] {
        match a.raw_call(method).await {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), ttrpc::Code::UNIMPLEMENTED, "{method}: {s:?}");
                assert!(s.message().contains(method), "{method}: {s:?}");
            }
            other => panic!("{method}: expected UNIMPLEMENTED, got {other:?}"),
        }
    }
}

/// SignalProcess SIGTERM to a container's init that does not handle SIGTERM (PID 1 of its
/// namespace, which the kernel would spare) is delivered as SIGKILL, as Kata's agent does:
/// `sleep` ends at once (137) rather than after the runtime's grace period.
#[tokio::test]
async fn sigterm_to_an_init_without_a_handler_ends_it() {
    const CID: &str = "kc-sigterm-to-an-init-without-a-handler";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    a.create_container(CID, &["sleep", "300"]).await;
    a.start_container(CID).await;
    let mut sig = SignalProcessRequest::new();
    sig.container_id = CID.into();
    sig.signal = libc::SIGTERM as u32;
    a.client.signal_process(&sig).await.expect("SignalProcess");
    let status = tokio::time::timeout(Duration::from_secs(10), a.wait(CID, ""))
        .await
        .ok()
        .map(|r| r.expect("WaitProcess"));
    if status.is_none() {
        sig.signal = libc::SIGKILL as u32;
        let _ = a.client.signal_process(&sig).await;
        let _ = a.wait(CID, "").await;
    }
    a.remove(CID).await;
    a.destroy().await;
    assert_eq!(
        status,
        Some(137),
        "SIGTERM left an init without a handler running"
    );
}

/// `watchable-bind`, as runtime-rs sends it for a configmap with virtio-fs: the source in the
/// shared directory is mirrored into a tmpfs at the mount point (in the `watchable`
/// directory), the container bind mounts that, and an update of the source reaches the
/// container within a few seconds. RemoveContainer removes the copy and the tmpfs.
#[tokio::test]
async fn watchable_bind_mirrors_updates_into_the_container() {
    const CID: &str = "kc-watchable-bind-mirrors-updates";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    let shared = a.dir.path().join("shared");
    let source = shared.join("c1-cm");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("key"), "old\n").unwrap();
    let root = shared.join("watchable");
    std::fs::create_dir_all(&root).unwrap();
    let target = root.join("c1-cm");

    let mut spec = a.spec(&[
        "sh",
        "-c",
        "cat /etc/cfg/key; i=0; while [ $i -lt 50 ]; do \
         if [ \"$(cat /etc/cfg/key)\" = new ]; then echo updated; exit 0; fi; \
         sleep 0.2; i=$((i+1)); done; exit 1",
    ]);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/etc/cfg")
            .typ("bind")
            .source(&target)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let mut req = CreateContainerRequest::new();
    req.container_id = CID.into();
    req.OCI = MessageField::some(spec::to_grpc(&spec).unwrap());
    req.storages = vec![storage(
        "watchable-bind",
        &source.display().to_string(),
        "bind",
        target.display().to_string(),
    )];
    if let Err(e) = a.client.create_container(&req).await {
        panic!(
            "CreateContainer with a watchable-bind: {e}\nagent log:\n{}",
            a.log()
        );
    }
    a.start_container(CID).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(source.join("key"), "new\n").unwrap();
    let out = a.read_to_kata_eof(CID, "", OutputStream::Stdout).await;
    let status = a.wait(CID, "").await.expect("WaitProcess");
    a.remove(CID).await;
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", a.agent.id())).unwrap_or_default();
    a.destroy().await;
    assert_eq!((out.as_str(), status), ("old\nupdated\n", 0));
    assert!(
        !mountinfo.contains(&format!("{} ", root.display())),
        "the watchable tmpfs is unmounted with its last storage:\n{mountinfo}"
    );
    assert!(!target.exists(), "the copy is removed");
}

/// CreateSandbox's `kernel_modules` are loaded with modprobe as Kata's agent loads them, and a
/// module that cannot be loaded fails the request `INTERNAL` naming it (as Kata's). On the host
/// the agent only dry-runs modprobe. The sandbox can then be created without them.
#[tokio::test]
async fn create_sandbox_loads_kernel_modules() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb".into();
    let mut module = kata_agent_client::protocol::agent::KernelModule::new();
    module.name = "kata_rs_no_such_module".into();
    module.parameters = vec!["debug=1".into()];
    req.kernel_modules = vec![module];
    let err = a
        .client
        .create_sandbox(&req)
        .await
        .expect_err("a module that does not exist");
    assert!(
        err.to_string().contains("kata_rs_no_such_module"),
        "the error names the module: {err}"
    );
    assert_eq!(code(&err), Some(Code::INTERNAL), "Kata's code: {err}");
    a.create_sandbox(Vec::new())
        .await
        .expect("CreateSandbox without them");
    a.destroy().await;
}

/// An executable hook script at `dir/<stage>/<name>` that records its arguments and the
/// state it is given in `out/<stage>`.
fn hook_script(dir: &Path, stage: &str, name: &str, out: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(stage).join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let body = format!(
        "#!/bin/sh\necho \"${{0##*/}} $1\" > {0}/{stage}.tmp; cat >> {0}/{stage}.tmp; mv {0}/{stage}.tmp {0}/{stage}\n",
        out.display()
    );
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// CreateSandbox's `guest_hook_path`, as Kata's agent applies it: the executables in its
/// `prestart`, `poststart` and `poststop` directories run for every container, in the agent's
/// namespaces, with `argv` `[<name>, <stage>]` and the container's OCI state on stdin —
/// prestart at CreateContainer (`created`), poststart at StartContainer (`running`), poststop
/// at RemoveContainer (`stopped`). A hook that fails changes nothing (Kata only logs it); a
/// file without an execute bit is not a hook. The hooks are found after CreateSandbox's
/// storages are mounted, as Kata's agent finds them: here the hook directory is one (a bind
/// of the test's directory; under a Kata runtime, the shared directory).
#[tokio::test]
async fn guest_hooks_run_at_each_stage_of_a_container() {
    const CID: &str = "kc-guest-hooks-run-at-each-stage";
    require_host_agent!();
    let a = HostAgent::start().await;
    let hooks = a.dir.path().join("hooks-on-the-host");
    let out = a.dir.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    for stage in ["prestart", "poststart", "poststop"] {
        hook_script(&hooks, stage, "record", &out, 0o755);
    }
    hook_script(
        &hooks,
        "prestart",
        "not-a-hook",
        &a.dir.path().join("nowhere"),
        0o644,
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let failing = hooks.join("poststart/00-fails");
        std::fs::write(&failing, "#!/bin/sh\necho failing >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let hook_path = a.guest_path("hooks");
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb".into();
    req.storages = vec![storage(
        "bind",
        &hooks.display().to_string(),
        "",
        hook_path.clone(),
    )];
    req.guest_hook_path = hook_path;
    if let Err(e) = a.client.create_sandbox(&req).await {
        panic!(
            "CreateSandbox with guest_hook_path: {e}\nagent log:\n{}",
            a.log()
        );
    }
    let mut spec = a.spec(&["true"]);
    spec.set_annotations(Some(
        [("io.kata-rs.conformance".to_string(), "hooks".to_string())].into(),
    ));
    let mut creq = CreateContainerRequest::new();
    creq.container_id = CID.into();
    creq.OCI = MessageField::some(spec::to_grpc(&spec).unwrap());
    if let Err(e) = a.client.create_container(&creq).await {
        panic!("CreateContainer: {e}\nagent log:\n{}", a.log());
    }
    let prestart = std::fs::read_to_string(out.join("prestart"));
    let poststart_before_start = out.join("poststart").exists();
    a.start_container(CID).await;
    let poststart = std::fs::read_to_string(out.join("poststart"));
    a.wait(CID, "").await.expect("WaitProcess");
    a.remove(CID).await;
    let poststop = std::fs::read_to_string(out.join("poststop"));
    a.destroy().await;
    let log = a.log();
    let prestart = prestart.unwrap_or_else(|e| panic!("no prestart hook ran: {e}\n{log}"));
    assert!(prestart.starts_with("record prestart\n"), "{prestart}");
    let state: serde_json::Value =
        serde_json::from_str(prestart.lines().nth(1).unwrap_or_default()).unwrap();
    assert_eq!(state["id"], CID, "{state}");
    assert_eq!(state["status"], "created", "{state}");
    assert!(state["pid"].as_i64().unwrap_or(0) > 0, "{state}");
    assert_eq!(
        state["annotations"]["io.kata-rs.conformance"], "hooks",
        "{state}"
    );
    assert!(
        !poststart_before_start,
        "poststart ran before StartContainer"
    );
    let poststart = poststart.unwrap_or_else(|e| panic!("no poststart hook ran: {e}\n{log}"));
    assert!(poststart.starts_with("record poststart\n"), "{poststart}");
    assert!(poststart.contains("\"status\":\"running\""), "{poststart}");
    let poststop = poststop.unwrap_or_else(|e| panic!("no poststop hook ran: {e}\n{log}"));
    assert!(poststop.starts_with("record poststop\n"), "{poststop}");
    assert!(poststop.contains("\"status\":\"stopped\""), "{poststop}");
    assert!(
        !a.dir.path().join("nowhere").exists(),
        "a file without x ran"
    );
    assert!(
        log.contains("guest hook failed"),
        "the failing hook is logged:\n{log}"
    );
}

/// A storage marked `shared` (Kata's block-backed emptyDir) outlives the container that asked
/// for it: RemoveContainer keeps it, DestroySandbox releases it, as Kata's agent does.
#[tokio::test]
async fn a_shared_storage_is_kept_until_the_sandbox_ends() {
    const CID: &str = "kc-a-shared-storage-is-kept";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    let vol = a.guest_path("local/shared-vol");
    let mut st = storage("local", "local", "local", vol.clone());
    st.shared = true;
    let mut req = CreateContainerRequest::new();
    req.container_id = CID.into();
    req.OCI = MessageField::some(spec::to_grpc(&a.spec(&["true"])).unwrap());
    req.storages = vec![st];
    if let Err(e) = a.client.create_container(&req).await {
        panic!(
            "CreateContainer with a shared storage: {e}\nagent log:\n{}",
            a.log()
        );
    }
    a.start_container(CID).await;
    a.wait(CID, "").await.expect("WaitProcess");
    a.remove(CID).await;
    let kept = Path::new(&vol).is_dir();
    a.destroy().await;
    assert!(kept, "a shared storage was released with its container");
    assert!(!Path::new(&vol).exists(), "released with the sandbox");
}

/// GetVolumeStats of a volume's guest path: bytes, then inodes, of its filesystem (`statfs`),
/// the condition "OK", as Kata's agent answers; a path that does not exist is `INTERNAL`.
#[tokio::test]
async fn volume_stats_of_a_tmpfs_volume() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let vol = a.guest_path("sandbox/emptydir-mem");
    let mut eph = storage("ephemeral", "tmpfs", "tmpfs", vol.clone());
    eph.options = vec!["size=8m".into(), "nr_inodes=500".into()];
    a.create_sandbox(vec![eph]).await.expect("CreateSandbox");
    let mut req = kata_agent_client::protocol::agent::VolumeStatsRequest::new();
    req.volume_guest_path = vol.clone();
    let resp = a.client.get_volume_stats(&req).await;
    let mut missing = req.clone();
    missing.volume_guest_path = a.guest_path("no-such-volume");
    let err = a.client.get_volume_stats(&missing).await;
    a.destroy().await;
    let resp = resp.unwrap_or_else(|e| panic!("GetVolumeStats: {e}"));
    use kata_agent_client::protocol::agent::volume_usage::Unit;
    let units: Vec<_> = resp
        .usage
        .iter()
        .map(|u| u.unit.enum_value_or_default())
        .collect();
    assert_eq!(units, vec![Unit::BYTES, Unit::INODES]);
    let (bytes, inodes) = (&resp.usage[0], &resp.usage[1]);
    assert_eq!(bytes.total, 8 << 20);
    assert_eq!(bytes.used, bytes.total - bytes.available);
    assert_eq!(inodes.total, 500);
    let cond = resp
        .volume_condition
        .into_option()
        .expect("volume_condition");
    assert!(!cond.abnormal);
    assert_eq!(cond.message, "OK");
    let err = err.expect_err("a path that does not exist");
    assert_eq!(code(&err), Some(Code::INTERNAL), "Kata's code: {err}");
    assert!(err.to_string().contains("no-such-volume"), "{err}");
}

/// Kata's shared directory for containers, where CopyFile writes.
const SHARED: &str = "/run/kata-containers/shared/containers";

fn copy_req(
    path: &str,
    mode: u32,
    data: &[u8],
) -> kata_agent_client::protocol::agent::CopyFileRequest {
    let mut r = kata_agent_client::protocol::agent::CopyFileRequest::new();
    r.path = path.into();
    r.file_mode = mode;
    r.dir_mode = 0o750;
    r.file_size = data.len() as i64;
    r.data = data.to_vec();
    r.uid = -1;
    r.gid = -1;
    r
}

/// CopyFile as runtime-rs sends it without a shared filesystem (`shared_fs = "none"`): a
/// regular file in chunks at offsets (complete, with its mode and owner, only after the last),
/// a directory and a symlink chosen by `file_mode`'s type bits, the parent made with
/// `dir_mode`. A destination outside the shared directory is refused `INTERNAL`, as Kata's
/// agent refuses one outside its base; unlike Kata's, a `..` or a symlink the host planted
/// does not take a write out of it.
#[tokio::test]
async fn copy_file_writes_into_the_shared_directory_only() {
    require_host_agent!();
    let a = HostAgent::start_with(true).await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    let dest = format!("{SHARED}/sb-1234-hosts/etc/hosts");
    let mut first = copy_req(&dest, libc::S_IFREG | 0o640, b"127.0.0.1 ");
    first.file_size = 20;
    (first.uid, first.gid) = (1000, 1001);
    let mut second = first.clone();
    second.offset = 10;
    second.data = b"localhost\n".to_vec();
    if let Err(e) = a.client.copy_file(&first).await {
        panic!("CopyFile (first chunk): {e}\nagent log:\n{}", a.log());
    }
    assert!(
        !a.agent_view(&dest).exists(),
        "not complete after the first chunk"
    );
    a.client
        .copy_file(&second)
        .await
        .expect("CopyFile (last chunk)");
    let seen = a.agent_view(&dest);
    assert_eq!(std::fs::read(&seen).unwrap(), b"127.0.0.1 localhost\n");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&seen).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o640, 1000, 1001)
    );
    let parent = std::fs::metadata(seen.parent().unwrap()).unwrap();
    assert_eq!(
        parent.mode() & 0o7777,
        0o750,
        "the parent it made has dir_mode"
    );

    let dir = format!("{SHARED}/sb-1234-secret/..2026_11_30");
    a.client
        .copy_file(&copy_req(&dir, libc::S_IFDIR | 0o755, b""))
        .await
        .expect("CopyFile of a directory");
    assert!(a.agent_view(&dir).is_dir());
    let link = format!("{SHARED}/sb-1234-secret/..data");
    a.client
        .copy_file(&copy_req(&link, libc::S_IFLNK | 0o777, b"..2026_11_30"))
        .await
        .expect("CopyFile of a symlink");
    assert_eq!(
        std::fs::read_link(a.agent_view(&link)).unwrap(),
        Path::new("..2026_11_30")
    );

    // Outside: by name, by `..`, through a symlink the host planted.
    for bad in [
        "/run/kata-rs-outside/x".to_string(),
        format!("{SHARED}/../../../kata-rs-outside/y"),
    ] {
        let err = a
            .client
            .copy_file(&copy_req(&bad, libc::S_IFREG | 0o644, b"x"))
            .await
            .expect_err("outside the shared directory");
        assert_eq!(code(&err), Some(Code::INTERNAL), "Kata's code: {err}");
        assert!(err.to_string().contains("CopyFile"), "{err}");
    }
    let planted = format!("{SHARED}/planted");
    a.client
        .copy_file(&copy_req(
            &planted,
            libc::S_IFLNK | 0o777,
            b"/run/kata-rs-outside",
        ))
        .await
        .expect("a symlink pointing out is only text");
    a.client
        .copy_file(&copy_req(
            &format!("{planted}/z"),
            libc::S_IFREG | 0o644,
            b"x",
        ))
        .await
        .expect("written inside, where the link resolves within the directory");
    let outside = a.agent_view("/run/kata-rs-outside");
    let leaked = outside.exists();
    a.destroy().await;
    assert!(!leaked, "a write left the shared directory");
}

/// A `watchable-bind` source past Kata's limits (more than 16 files) is bind mounted instead
/// of copied, as Kata's agent does: the container sees every file, and RemoveContainer
/// unmounts it.
#[tokio::test]
async fn a_large_watchable_bind_is_bind_mounted() {
    const CID: &str = "kc-a-large-watchable-bind-is-bind-mounted";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    let shared = a.dir.path().join("shared");
    let source = shared.join("c1-big");
    std::fs::create_dir_all(&source).unwrap();
    for i in 0..20 {
        std::fs::write(source.join(format!("f{i}")), "x").unwrap();
    }
    let root = shared.join("watchable");
    std::fs::create_dir_all(&root).unwrap();
    let target = root.join("c1-big");
    let mut spec = a.spec(&["sh", "-c", "ls /etc/big | wc -l"]);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/etc/big")
            .typ("bind")
            .source(&target)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let mut req = CreateContainerRequest::new();
    req.container_id = CID.into();
    req.OCI = MessageField::some(spec::to_grpc(&spec).unwrap());
    req.storages = vec![storage(
        "watchable-bind",
        &source.display().to_string(),
        "bind",
        target.display().to_string(),
    )];
    if let Err(e) = a.client.create_container(&req).await {
        panic!(
            "CreateContainer with a large watchable-bind: {e}\nagent log:\n{}",
            a.log()
        );
    }
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", a.agent.id())).unwrap_or_default();
    a.start_container(CID).await;
    let out = a.read_to_kata_eof(CID, "", OutputStream::Stdout).await;
    a.wait(CID, "").await.expect("WaitProcess");
    a.remove(CID).await;
    let after =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", a.agent.id())).unwrap_or_default();
    a.destroy().await;
    assert_eq!(out.trim(), "20");
    assert!(
        mountinfo.contains(&format!("{} ", target.display())),
        "bind mounted, not copied:\n{mountinfo}"
    );
    assert!(
        !after.contains(&format!("{} ", target.display()))
            && !after.contains(&format!("{} ", root.display())),
        "unmounted with the container:\n{after}"
    );
}

/// The generated ttRPC client of `grpc.AgentService`, for the RPCs of Kata's protocol that
/// kata-rs's runtime does not call (no `AgentClient` method).
async fn service_client(
    a: &HostAgent,
) -> kata_agent_client::protocol::agent_ttrpc::AgentServiceClient {
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", a.sock.display()))
        .await
        .expect("connect to the agent");
    kata_agent_client::protocol::agent_ttrpc::AgentServiceClient::new(client)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

/// The code and message of a ttRPC error status.
fn status_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// A container id the sandbox does not have, in every call that names one: the codes Kata's
/// agent answers (`rpc.rs`): `INTERNAL` ("Invalid container id") for StartContainer,
/// RemoveContainer, ExecProcess, WriteStdin and a SignalProcess of the whole container (exec
/// id "" with SIGKILL); `INVALID_ARGUMENT` for the other process calls and for
/// UpdateContainer, StatsContainer, PauseContainer, ResumeContainer. kata-rs's client takes
/// each as "unknown container" (`is_unknown_container`).
#[tokio::test]
async fn unknown_container_codes_are_kata_s() {
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    let c = &a.client;
    let ghost = "kc-ghost";
    let mut start = StartContainerRequest::new();
    start.container_id = ghost.into();
    let mut remove = RemoveContainerRequest::new();
    remove.container_id = ghost.into();
    let mut exec = ExecProcessRequest::new();
    exec.container_id = ghost.into();
    exec.exec_id = "e1".into();
    let mut holder = Spec::default();
    holder.set_process(Some(
        ProcessBuilder::default()
            .args(vec!["true".to_string()])
            .cwd("/")
            .build()
            .unwrap(),
    ));
    exec.process = spec::to_grpc(&holder).unwrap().Process;
    let mut write = WriteStreamRequest::new();
    write.container_id = ghost.into();
    write.data = b"x".to_vec();
    let mut kill_all = SignalProcessRequest::new();
    kill_all.container_id = ghost.into();
    kill_all.signal = libc::SIGKILL as u32;
    let mut term = kill_all.clone();
    term.signal = libc::SIGTERM as u32;
    let mut stats = StatsContainerRequest::new();
    stats.container_id = ghost.into();
    let mut pause = PauseContainerRequest::new();
    pause.container_id = ghost.into();
    let mut resume = ResumeContainerRequest::new();
    resume.container_id = ghost.into();
    let mut resize = TtyWinResizeRequest::new();
    resize.container_id = ghost.into();
    let mut close = kata_agent_client::protocol::agent::CloseStdinRequest::new();
    close.container_id = ghost.into();
    let results: Vec<(&str, Code, kata_agent_client::Result<()>)> = vec![
        (
            "StartContainer",
            Code::INTERNAL,
            c.start_container(&start).await,
        ),
        (
            "RemoveContainer",
            Code::INTERNAL,
            c.remove_container(&remove).await,
        ),
        ("ExecProcess", Code::INTERNAL, c.exec_process(&exec).await),
        (
            "WriteStdin",
            Code::INTERNAL,
            c.write_stdin(&write).await.map(|_| ()),
        ),
        (
            "SignalProcess all",
            Code::INTERNAL,
            c.signal_process(&kill_all).await,
        ),
        (
            "SignalProcess",
            Code::INVALID_ARGUMENT,
            c.signal_process(&term).await,
        ),
        (
            "WaitProcess",
            Code::INVALID_ARGUMENT,
            a.wait(ghost, "").await.map(|_| ()),
        ),
        (
            "ReadStdout",
            Code::INVALID_ARGUMENT,
            c.read_stdout(&HostAgent::read_req(ghost, ""), None)
                .await
                .map(|_| ()),
        ),
        (
            "CloseStdin",
            Code::INVALID_ARGUMENT,
            c.close_stdin(&close).await,
        ),
        (
            "TtyWinResize",
            Code::INVALID_ARGUMENT,
            c.tty_win_resize(&resize).await,
        ),
        (
            "StatsContainer",
            Code::INVALID_ARGUMENT,
            c.stats_container(&stats).await.map(|_| ()),
        ),
        (
            "PauseContainer",
            Code::INVALID_ARGUMENT,
            c.pause_container(&pause).await,
        ),
        (
            "ResumeContainer",
            Code::INVALID_ARGUMENT,
            c.resume_container(&resume).await,
        ),
    ];
    a.destroy().await;
    for (method, want, got) in results {
        let err = got.expect_err(method);
        assert_eq!(code(&err), Some(want), "{method}: Kata's code: {err}");
        assert!(
            err.to_string().contains(ghost),
            "{method} names the id: {err}"
        );
        assert!(err.is_unknown_container(), "{method}: {err}");
    }
}

/// UpdateEphemeralMounts as Kata's runtime sends it when a memory-backed emptyDir is resized:
/// the `ephemeral` storage mounted again with `remount` and the new `size=` (GetVolumeStats
/// sees it); any other driver is `INTERNAL` ("Unsupported storage type for syncing mounts").
#[tokio::test]
async fn update_ephemeral_mounts_resizes_a_memory_volume() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let vol = a.guest_path("sandbox/emptydir-mem");
    let mut eph = storage("ephemeral", "tmpfs", "tmpfs", vol.clone());
    eph.options = vec!["size=8m".into()];
    a.create_sandbox(vec![eph.clone()])
        .await
        .expect("CreateSandbox");
    let svc = service_client(&a).await;
    let mut req = kata_agent_client::protocol::agent::UpdateEphemeralMountsRequest::new();
    eph.options = vec!["remount".into(), "size=16m".into()];
    req.storages = vec![eph];
    let updated = svc.update_ephemeral_mounts(ctx(), &req).await;
    let mut stats = kata_agent_client::protocol::agent::VolumeStatsRequest::new();
    stats.volume_guest_path = vol.clone();
    let after = a.client.get_volume_stats(&stats).await;
    req.storages[0].driver = "blk".into();
    let other = svc.update_ephemeral_mounts(ctx(), &req).await;
    a.destroy().await;
    if let Err(e) = updated {
        panic!("UpdateEphemeralMounts: {e:?}\nagent log:\n{}", a.log());
    }
    assert_eq!(after.expect("GetVolumeStats").usage[0].total, 16 << 20);
    let (c, msg) = status_of(other);
    assert_eq!(c, Code::INTERNAL, "{msg}");
    assert!(
        msg.contains("Unsupported storage type for syncing mounts blk"),
        "{msg}"
    );
}

/// SetIPTables / GetIPTables run the guest's iptables-restore / iptables-save, as Kata's agent
/// does: rules set are read back (in the agent's own network namespace). Where the tools are
/// missing (the kata-rs guest image), both are `INTERNAL` naming the tool, as in Kata's.
#[tokio::test]
async fn iptables_rules_are_set_and_read_back() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let svc = service_client(&a).await;
    let mut set = kata_agent_client::protocol::agent::SetIPTablesRequest::new();
    set.data = b"*filter\n:INPUT ACCEPT [0:0]\n:KATA-RS-CONFORMANCE - [0:0]\n-A INPUT -j KATA-RS-CONFORMANCE\nCOMMIT\n".to_vec();
    let set_result = svc.set_ip_tables(ctx(), &set).await;
    let get_result = svc
        .get_ip_tables(
            ctx(),
            &kata_agent_client::protocol::agent::GetIPTablesRequest::new(),
        )
        .await;
    let have = ["/usr/sbin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join("iptables-restore").exists());
    if have {
        if let Err(e) = set_result {
            panic!("SetIPTables: {e:?}\nagent log:\n{}", a.log());
        }
        let rules = String::from_utf8_lossy(&get_result.expect("GetIPTables").data).into_owned();
        assert!(rules.contains("-A INPUT -j KATA-RS-CONFORMANCE"), "{rules}");
    } else {
        let (c, msg) = status_of(set_result);
        assert_eq!(c, Code::INTERNAL, "{msg}");
        assert!(msg.contains("iptables-restore"), "{msg}");
    }
    // Rules that do not parse: INTERNAL with the tool's complaint.
    set.data = b"*filter\n-A NO-SUCH-CHAIN -j DROP\nCOMMIT\n".to_vec();
    let (c, msg) = status_of(svc.set_ip_tables(ctx(), &set).await);
    assert_eq!(c, Code::INTERNAL, "{msg}");
    assert!(msg.contains("iptables-restore"), "{msg}");
}

/// The guest-side calls whose work a host-tier agent does not do (it is not the guest's init)
/// still answer as Kata's agent: MemHotplugByProbe and RemoveStaleVirtiofsShareMounts succeed;
/// AddSwap without a PCI path and AddSwapPath of a missing file are `INTERNAL`;
/// MemAgentMemcgSet / MemAgentCompactSet are `INTERNAL` "mem-agent is disabled" (Kata's agent
/// with its memory agent off). GetGuestDetails lists `seccomp` in `extra_features` (x86_64).
#[tokio::test]
async fn guest_calls_answer_as_kata_s_agent() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let svc = service_client(&a).await;
    use kata_agent_client::protocol::agent as pb;
    let mut probe = pb::MemHotplugByProbeRequest::new();
    probe.memHotplugProbeAddr = vec![0x1_0000_0000];
    svc.mem_hotplug_by_probe(ctx(), &probe)
        .await
        .expect("MemHotplugByProbe");
    svc.remove_stale_virtiofs_share_mounts(
        ctx(),
        &pb::RemoveStaleVirtiofsShareMountsRequest::new(),
    )
    .await
    .expect("RemoveStaleVirtiofsShareMounts");
    let (c, msg) = status_of(svc.add_swap(ctx(), &pb::AddSwapRequest::new()).await);
    assert_eq!(c, Code::INTERNAL, "{msg}");
    assert!(msg.contains("PCIPath"), "{msg}");
    let mut swap = pb::AddSwapPathRequest::new();
    swap.path = a.guest_path("no-such-swapfile");
    let (c, msg) = status_of(svc.add_swap_path(ctx(), &swap).await);
    assert_eq!(c, Code::INTERNAL, "{msg}");
    assert!(msg.contains("no-such-swapfile"), "{msg}");
    let (c, msg) = status_of(
        svc.mem_agent_memcg_set(ctx(), &pb::MemAgentMemcgConfig::new())
            .await,
    );
    assert_eq!(
        (c, msg.contains("mem-agent is disabled")),
        (Code::INTERNAL, true),
        "{msg}"
    );
    let (c, msg) = status_of(
        svc.mem_agent_compact_set(ctx(), &pb::MemAgentCompactConfig::new())
            .await,
    );
    assert_eq!(
        (c, msg.contains("mem-agent is disabled")),
        (Code::INTERNAL, true),
        "{msg}"
    );
    let details = a
        .client
        .get_guest_details(&GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails")
        .agent_details
        .into_option()
        .expect("agent_details");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(details.extra_features, vec!["seccomp".to_string()]);
    }
}

/// GetDiagnosticData of `termination_log`: what the container wrote to the file Kubernetes
/// named (annotation `io.kubernetes.container.terminationMessagePath`), read at the source of
/// the spec's mount on it; another `log_type` is `INVALID_ARGUMENT`, an unknown container
/// `INTERNAL`, as Kata's agent answers.
#[tokio::test]
async fn diagnostic_data_is_the_termination_log() {
    const CID: &str = "kc-diagnostic-data-is-the-termination-log";
    require_host_agent!();
    let a = HostAgent::start().await;
    a.create_sandbox(Vec::new()).await.expect("CreateSandbox");
    let log = a.dir.path().join("c1-termination-log");
    std::fs::write(&log, "").unwrap();
    let mut spec = a.spec(&["sh", "-c", "echo 'last words' > /dev/termination-log"]);
    spec.set_annotations(Some(
        [(
            "io.kubernetes.container.terminationMessagePath".to_string(),
            "/dev/termination-log".to_string(),
        )]
        .into(),
    ));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/dev/termination-log")
            .typ("bind")
            .source(&log)
            .options(vec!["bind".to_string()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let mut req = CreateContainerRequest::new();
    req.container_id = CID.into();
    req.OCI = MessageField::some(spec::to_grpc(&spec).unwrap());
    if let Err(e) = a.client.create_container(&req).await {
        panic!("CreateContainer: {e}\nagent log:\n{}", a.log());
    }
    a.start_container(CID).await;
    let status = a.wait(CID, "").await.expect("WaitProcess");
    let svc = service_client(&a).await;
    let mut diag = kata_agent_client::protocol::agent::GetDiagnosticDataRequest::new();
    diag.container_id = CID.into();
    diag.log_type = "termination_log".into();
    let got = svc.get_diagnostic_data(ctx(), &diag).await;
    diag.log_type = "kubelet".into();
    let other = svc.get_diagnostic_data(ctx(), &diag).await;
    diag.log_type = "termination_log".into();
    diag.container_id = "kc-ghost".into();
    let ghost = svc.get_diagnostic_data(ctx(), &diag).await;
    a.remove(CID).await;
    a.destroy().await;
    assert_eq!(status, 0);
    match got {
        Ok(r) => assert_eq!(r.data, "last words\n"),
        Err(e) => panic!("GetDiagnosticData: {e:?}\nagent log:\n{}", a.log()),
    }
    let (c, msg) = status_of(other);
    assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("unsupported diagnostic log_type: kubelet"),
        "{msg}"
    );
    let (c, msg) = status_of(ghost);
    assert_eq!(c, Code::INTERNAL, "{msg}");
    assert!(msg.contains("kc-ghost"), "{msg}");
}

/// An `overlayfs` storage as runtime-rs sends one for a nydus rootfs: the layers as
/// `lowerdir=`, `upperdir=` and `workdir=` in the guest, the upper and work directories made
/// first as its `driver_options` ask (`io.katacontainers.volume.overlayfs.create_directory`).
/// The overlay is mounted (a file of the lower layer is seen through it); DestroySandbox
/// unmounts it. Kata's `io.katacontainers.fs-opt.overlay-rw` is refused naming it.
#[tokio::test]
async fn overlayfs_storage_mounts_the_layers() {
    require_host_agent!();
    let a = HostAgent::start().await;
    let lower = a.dir.path().join("layers/lower");
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::write(lower.join("from-the-image"), "layer\n").unwrap();
    let upper = a.guest_path("overlay/upper");
    let work = a.guest_path("overlay/work");
    let mp = a.guest_path("overlay/rootfs");
    let mut st = storage("overlayfs", "overlay", "overlay", mp.clone());
    st.options = vec![
        format!("lowerdir={}", lower.display()),
        format!("upperdir={upper}"),
        format!("workdir={work}"),
    ];
    st.driver_options = vec![
        format!("io.katacontainers.volume.overlayfs.create_directory={upper}"),
        format!("io.katacontainers.volume.overlayfs.create_directory={work}"),
    ];
    let mut rw = st.clone();
    rw.options
        .push("io.katacontainers.fs-opt.overlay-rw".into());
    let err = a
        .create_sandbox(vec![rw])
        .await
        .expect_err("overlay-rw is not made by this agent");
    assert!(err.to_string().contains("overlay-rw"), "{err}");
    if let Err(e) = a.create_sandbox(vec![st]).await {
        panic!(
            "CreateSandbox with an overlayfs storage: {e}\nagent log:\n{}",
            a.log()
        );
    }
    let seen = std::fs::read_to_string(a.agent_view(&format!("{mp}/from-the-image")));
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", a.agent.id())).unwrap_or_default();
    a.destroy().await;
    let after =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", a.agent.id())).unwrap_or_default();
    assert!(
        mountinfo.contains(&format!("{mp} ")) && mountinfo.contains(" - overlay "),
        "the overlay is mounted:\n{mountinfo}"
    );
    assert_eq!(seen.expect("the lower layer's file"), "layer\n");
    assert!(!after.contains(&format!("{mp} ")), "unmounted:\n{after}");
}
