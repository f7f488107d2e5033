//! Host integration tests: the real `kata-agent` binary on the host, in private mount, UTS and
//! IPC namespaces (`unshare`), serving on a unix socket; `kata_agent_client::AgentClient` drives
//! containers built from a busybox rootfs (Debian's busybox-static).
//!
//! Needs root (namespaces, mounts, cgroups). Each test starts its own agent, so they run in
//! parallel and one failure does not cascade.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kata_agent_client::protocol::agent::{
    CloseStdinRequest, CopyFileRequest, PauseContainerRequest, ResumeContainerRequest,
    UpdateContainerRequest,
};
use kata_agent_client::protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, ExecProcessRequest,
    GuestDetailsRequest, ListProcessesRequest, ReadStreamRequest, RemoveContainerRequest,
    SignalProcessRequest, StartContainerRequest, StatsContainerRequest, Storage,
    WaitProcessRequest, WriteStreamRequest,
};
use kata_agent_client::{spec, AgentAddress, AgentClient, Code, ConnectOptions, OutputStream};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use protobuf::MessageField;

const BUSYBOX: &str = "/bin/busybox";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the host agent tests need root (namespaces, mounts, cgroups)"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
}

/// A busybox rootfs: `/bin/<applet>` links, `/etc/passwd` with root and nobody (uid 1000).
fn build_rootfs(root: &Path) {
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/nobody",
    ] {
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
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:1000:1000:nobody:/home/nobody:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nnobody:x:1000:\nusers:x:100:nobody\n",
    )
    .unwrap();
}

/// One agent process with its own socket, rootfs and log.
struct Harness {
    dir: tempfile::TempDir,
    agent: Option<Child>,
    client: AgentClient,
    rootfs: PathBuf,
}

impl Harness {
    /// The agent in private mount, UTS and IPC namespaces, `--no-init`.
    async fn start() -> Self {
        Self::start_with(
            &["--mount", "--uts", "--ipc", "--propagation", "private"],
            &["--no-init"],
            None,
        )
        .await
    }

    async fn start_with(unshare: &[&str], agent_args: &[&str], dir_in: Option<&Path>) -> Self {
        require_root();
        let dir = match dir_in {
            Some(parent) => tempfile::tempdir_in(parent).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let rootfs = dir.path().join("rootfs");
        build_rootfs(&rootfs);
        let sock = dir.path().join("agent.sock");
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let agent = Command::new("unshare")
            .args(unshare)
            .arg(env!("CARGO_BIN_EXE_kata-agent"))
            .args(agent_args)
            .args(["--log", "debug", "--listen"])
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
        let client = match AgentClient::connect(&AgentAddress::Unix(sock), opts).await {
            Ok(client) => client,
            Err(e) => {
                // Leave no agent behind a failed start: forked into a PID namespace, it
                // outlives `unshare` unless it is killed itself.
                let mut agent = agent;
                for (pid, _) in children_of(agent.id() as i32) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = agent.kill();
                let _ = agent.wait();
                let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
                panic!("connect to the agent: {e:?}\nagent log:\n{log}");
            }
        };
        Harness {
            dir,
            agent: Some(agent),
            client,
            rootfs,
        }
    }

    fn pid(&self) -> i32 {
        self.agent.as_ref().unwrap().id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap()
    }

    /// Pids whose parent is the agent.
    fn agent_children(&self) -> Vec<i32> {
        children_of(self.pid())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }
}

/// (pid, state) of the processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().unwrap_or("0").parse().unwrap_or(0);
        if ppid == parent {
            out.push((pid, state));
        }
    }
    out
}

impl Harness {
    /// A spec for `args` in the busybox rootfs.
    fn spec(&self, args: &[&str]) -> Spec {
        let mut spec = Spec::default();
        spec.set_hostname(Some("kata-test".into()));
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

    async fn create_sandbox(&self) {
        let shared = self.dir.path().join("shared-src");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), "shared\n").unwrap();
        let mut storage = Storage::new();
        storage.driver = "bind".into();
        storage.source = shared.display().to_string();
        storage.mount_point = self.dir.path().join("shared").display().to_string();
        let mut req = CreateSandboxRequest::new();
        req.hostname = "sandbox-host".into();
        req.sandbox_id = "sb".into();
        req.storages = vec![storage];
        self.client
            .create_sandbox(&req)
            .await
            .expect("CreateSandbox");
    }

    async fn try_create(&self, id: &str, spec: &Spec) -> kata_agent_client::Result<()> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.exec_id = id.into();
        req.OCI = MessageField::some(spec::to_grpc(spec).unwrap());
        self.client.create_container(&req).await
    }

    async fn create(&self, id: &str, spec: &Spec) {
        if let Err(e) = self.try_create(id, spec).await {
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

    async fn read_all(&self, id: &str, exec_id: &str, stream: OutputStream) -> String {
        let mut req = ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.len = 4096;
        let mut out = Vec::new();
        while let Some(chunk) = tokio::time::timeout(
            Duration::from_secs(20),
            self.client.read_output(stream, &req),
        )
        .await
        .expect("read timed out")
        .expect("read")
        {
            out.extend(chunk);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn wait(&self, id: &str, exec_id: &str) -> i32 {
        let mut req = WaitProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.client
            .wait_process(&req, Some(Duration::from_secs(30)))
            .await
            .expect("WaitProcess")
            .status
    }

    async fn remove(&self, id: &str) {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        req.timeout = 10;
        self.client
            .remove_container(&req)
            .await
            .expect("RemoveContainer");
    }

    /// Creates, starts, reads both streams to their end, waits, removes.
    async fn run(&self, id: &str, spec: &Spec) -> (String, String, i32) {
        self.create(id, spec).await;
        self.start_container(id).await;
        let (out, err) = tokio::join!(
            self.read_all(id, id, OutputStream::Stdout),
            self.read_all(id, id, OutputStream::Stderr)
        );
        let status = self.wait(id, id).await;
        self.remove(id).await;
        (out, err, status)
    }

    async fn signal(&self, id: &str, exec_id: &str, signal: u32) {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.signal = signal;
        self.client
            .signal_process(&req)
            .await
            .expect("SignalProcess");
    }

    async fn exec(&self, id: &str, exec_id: &str, process: oci_spec::runtime::Process) {
        let mut holder = Spec::default();
        holder.set_process(Some(process));
        let wire = spec::to_grpc(&holder).unwrap();
        let mut req = ExecProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.process = wire.Process;
        if let Err(e) = self.client.exec_process(&req).await {
            panic!(
                "ExecProcess {id}/{exec_id}: {e}\nagent log:\n{}",
                self.log()
            );
        }
    }

    /// Stops the agent with SIGTERM and returns its exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut agent = self.agent.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(agent.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = agent.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

/// The cgroup directories a container would have (whether or not they exist).
fn cgroup_dirs(container_id: &str) -> Vec<PathBuf> {
    use kata_agent::runtime::cgroup::Hierarchy;
    let rel = Path::new("kata-agent").join(container_id);
    match Hierarchy::detect() {
        Some(Hierarchy::V2 { mount }) => vec![mount.join(rel)],
        Some(Hierarchy::V1 { mounts, own }) => mounts
            .iter()
            .map(|(ctrl, m)| {
                let base = own
                    .get(ctrl)
                    .map(|p| p.strip_prefix("/").unwrap_or(p).to_path_buf())
                    .unwrap_or_default();
                m.join(base).join(&rel)
            })
            .collect(),
        None => Vec::new(),
    }
}

fn rpc_code(e: &kata_agent_client::Error) -> Option<Code> {
    e.code()
}

#[tokio::test]
async fn echo_stdout_stderr_and_exit_codes() {
    let h = Harness::start().await;
    h.create_sandbox().await;

    let (out, err, status) = h.run("echo", &h.spec(&["echo", "hello from kata"])).await;
    assert_eq!(out, "hello from kata\n");
    assert_eq!(err, "");
    assert_eq!(status, 0);

    let spec = h.spec(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]);
    let (out, err, status) = h.run("exit3", &spec).await;
    assert_eq!(out, "to-out\n");
    assert_eq!(err, "to-err\n");
    assert_eq!(status, 3);

    // Output larger than a pipe buffer, written before anyone reads, is all there.
    let spec = h.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 4000 ]; do echo line-$i; i=$((i+1)); done",
    ]);
    let (out, _, status) = h.run("bulk", &spec).await;
    assert_eq!(status, 0);
    assert_eq!(out.lines().count(), 4000);
    assert_eq!(out.lines().last(), Some("line-3999"));
}

#[tokio::test]
async fn output_written_before_the_reader_attaches_is_kept() {
    let h = Harness::start().await;
    let spec = h.spec(&["sh", "-c", "echo early; echo late >&2"]);
    h.create("early", &spec).await;
    h.start_container("early").await;
    // The process exits before we read anything.
    assert_eq!(h.wait("early", "early").await, 0);
    assert_eq!(
        h.read_all("early", "early", OutputStream::Stdout).await,
        "early\n"
    );
    assert_eq!(
        h.read_all("early", "", OutputStream::Stderr).await,
        "late\n"
    );
    h.remove("early").await;
}

#[tokio::test]
async fn sigkill_reports_137() {
    let h = Harness::start().await;
    h.create("sleeper", &h.spec(&["sleep", "100"])).await;
    h.start_container("sleeper").await;
    h.signal("sleeper", "", 9).await;
    assert_eq!(h.wait("sleeper", "sleeper").await, 137);
    h.remove("sleeper").await;
}

#[tokio::test]
async fn stdin_through_cat() {
    let h = Harness::start().await;
    h.create("cat", &h.spec(&["cat"])).await;
    h.start_container("cat").await;
    let mut w = WriteStreamRequest::new();
    w.container_id = "cat".into();
    w.exec_id = "cat".into();
    w.data = b"ping\npong\n".to_vec();
    let resp = h.client.write_stdin(&w).await.expect("WriteStdin");
    assert_eq!(resp.len, 10);
    let mut c = CloseStdinRequest::new();
    c.container_id = "cat".into();
    c.exec_id = "cat".into();
    h.client.close_stdin(&c).await.expect("CloseStdin");
    assert_eq!(
        h.read_all("cat", "cat", OutputStream::Stdout).await,
        "ping\npong\n"
    );
    assert_eq!(h.wait("cat", "cat").await, 0);
    h.remove("cat").await;
}

#[tokio::test]
async fn env_cwd_user_and_hostname() {
    let h = Harness::start().await;
    let mut spec = h.spec(&[
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; id -G; hostname; echo $HOME",
    ]);
    let p = spec.process_mut().as_mut().unwrap();
    p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar baz".into()]));
    p.set_cwd("/tmp".into());
    p.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .additional_gids(vec![4242u32])
            .build()
            .unwrap(),
    );
    let (out, err, status) = h.run("ident", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "bar baz");
    assert_eq!(lines[1], "/tmp");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "1000");
    let groups: HashSet<&str> = lines[4].split_whitespace().collect();
    assert!(
        groups.contains("100") && groups.contains("4242"),
        "groups: {}",
        lines[4]
    );
    assert_eq!(lines[5], "kata-test");
    assert_eq!(lines[6], "/home/nobody");

    // A user named by name resolves through the container's /etc/passwd.
    let mut spec = h.spec(&["id", "-u"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_user(UserBuilder::default().username("nobody").build().unwrap());
    let (out, _, status) = h.run("byname", &spec).await;
    assert_eq!((out.as_str(), status), ("1000\n", 0));
}

#[tokio::test]
async fn readonly_rootfs_and_bind_mounts() {
    let h = Harness::start().await;
    h.create_sandbox().await;
    let shared = h.dir.path().join("shared");
    let mut spec = h.spec(&[
        "sh",
        "-c",
        "cat /data/hello.txt; touch /x && echo wrote-root; touch /data/y && echo wrote-data; touch /tmp/t && echo wrote-tmp",
    ]);
    spec.root_mut().as_mut().unwrap().set_readonly(Some(true));
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(&shared)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap(),
    );
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_string()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let (out, err, status) = h.run("ro", &spec).await;
    assert_eq!(out, "shared\nwrote-tmp\n", "stderr: {err}");
    assert!(err.contains("Read-only file system"), "stderr: {err}");
    assert_eq!(status, 0);
    assert!(!h.rootfs.join("x").exists());
}

#[tokio::test]
async fn exec_into_a_running_container() {
    let h = Harness::start().await;
    h.create("box", &h.spec(&["sleep", "100"])).await;
    h.start_container("box").await;

    let process = ProcessBuilder::default()
        .args(vec![
            "sh".into(),
            "-c".into(),
            "echo $X; pwd; id -u; hostname; cat /proc/1/cmdline | tr '\\0' ' '".into(),
        ])
        .env(vec!["PATH=/bin".to_string(), "X=exec-env".to_string()])
        .cwd("/etc")
        .user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(1000u32)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    h.exec("box", "e1", process.clone()).await;
    let out = h.read_all("box", "e1", OutputStream::Stdout).await;
    assert_eq!(h.wait("box", "e1").await, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        ["exec-env", "/etc", "1000", "kata-test"],
        "{out}"
    );
    assert_eq!(
        lines[4].trim(),
        "sleep 100",
        "the exec sees the container's pid 1"
    );

    // A second exec with an exit code, and exec ids are unique while alive.
    let sleeper = ProcessBuilder::default()
        .args(vec!["sleep".to_string(), "100".to_string()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    h.exec("box", "e2", sleeper.clone()).await;
    let mut dup = ExecProcessRequest::new();
    dup.container_id = "box".into();
    dup.exec_id = "e2".into();
    let mut holder = Spec::default();
    holder.set_process(Some(sleeper));
    dup.process = spec::to_grpc(&holder).unwrap().Process;
    let err = h.client.exec_process(&dup).await.unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::ALREADY_EXISTS), "{err}");
    assert!(err.message().unwrap().contains("e2"));

    // ListProcesses and StatsContainer see both processes.
    let mut lp = ListProcessesRequest::new();
    lp.container_id = "box".into();
    lp.format = "json".into();
    let list = h.client.list_processes(&lp).await.expect("ListProcesses");
    let pids: Vec<i32> = serde_json::from_slice(&list.process_list).unwrap();
    assert!(pids.len() >= 2, "{pids:?}");
    let mut st = StatsContainerRequest::new();
    st.container_id = "box".into();
    let stats = h.client.stats_container(&st).await.expect("StatsContainer");
    assert!(stats.cgroup_stats.pids_stats.current >= 2, "{stats:?}");

    h.signal("box", "e2", 9).await;
    assert_eq!(h.wait("box", "e2").await, 137);
    h.signal("box", "", 9).await;
    assert_eq!(h.wait("box", "box").await, 137);
    h.remove("box").await;
    for dir in cgroup_dirs("box") {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[tokio::test]
async fn terminal_process() {
    let h = Harness::start().await;
    let mut spec = h.spec(&["sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_terminal(Some(true));
    let (out, err, status) = h.run("tty", &spec).await;
    assert_eq!(out.trim_end(), "is-a-tty", "stderr: {err}");
    assert_eq!(err, "");
    assert_eq!(status, 0);
}

#[tokio::test]
async fn bad_input_is_rejected_and_leaves_nothing_behind() {
    let h = Harness::start().await;
    h.create_sandbox().await;
    let baseline = h.mountinfo();

    // Unknown ids.
    let mut start = StartContainerRequest::new();
    start.container_id = "ghost".into();
    // Kata's codes: INTERNAL for StartContainer, INVALID_ARGUMENT for the process calls.
    let err = h.client.start_container(&start).await.unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::INTERNAL));
    assert!(err.message().unwrap().contains("ghost"), "{err}");
    assert!(err.is_unknown_container(), "{err}");
    let mut wait = WaitProcessRequest::new();
    wait.container_id = "ghost".into();
    let err = h.client.wait_process(&wait, None).await.unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::INVALID_ARGUMENT));
    assert!(err.is_unknown_container(), "{err}");

    h.create("real", &h.spec(&["sleep", "100"])).await;
    let mut read = ReadStreamRequest::new();
    read.container_id = "real".into();
    read.exec_id = "no-such-exec".into();
    let err = h
        .client
        .read_output(OutputStream::Stdout, &read)
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::NOT_FOUND));
    assert!(err.message().unwrap().contains("no-such-exec"), "{err}");
    let mut sig = SignalProcessRequest::new();
    sig.container_id = "real".into();
    sig.exec_id = "nope".into();
    sig.signal = 9;
    assert_eq!(
        rpc_code(&h.client.signal_process(&sig).await.unwrap_err()),
        Some(Code::NOT_FOUND)
    );

    // Duplicate id.
    let err = h.try_create("real", &h.spec(&["true"])).await.unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::ALREADY_EXISTS));
    assert!(err.message().unwrap().contains("real"));

    // Invalid specs, each naming its field.
    let mut no_process = h.spec(&["true"]);
    no_process.set_process(None);
    let mut relative = h.spec(&["true"]);
    relative.set_root(Some(RootBuilder::default().path("rootfs").build().unwrap()));
    let mut bad_mount = h.spec(&["true"]);
    let mut mounts = bad_mount.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/weird")
            .typ("nosuchfs")
            .source("none")
            .build()
            .unwrap(),
    );
    let weird_index = mounts.len() - 1;
    bad_mount.set_mounts(Some(mounts));
    let mut ghost_user = h.spec(&["true"]);
    ghost_user
        .process_mut()
        .as_mut()
        .unwrap()
        .set_user(UserBuilder::default().username("ghost").build().unwrap());
    let cases: Vec<(&str, Spec, String)> = vec![
        ("bad-noproc", no_process, "process is missing".into()),
        ("bad-noargs", h.spec(&[]), "process.args is empty".into()),
        ("bad-relroot", relative, "root.path".into()),
        (
            "bad-mount",
            bad_mount,
            format!("mounts[{weird_index}].type"),
        ),
        ("bad-user", ghost_user, "process.user.username".into()),
        (
            "bad-exe",
            h.spec(&["no-such-binary"]),
            "process.args[0]".into(),
        ),
    ];
    for (id, spec, field) in cases {
        let err = h.try_create(id, &spec).await.unwrap_err();
        assert_eq!(rpc_code(&err), Some(Code::INVALID_ARGUMENT), "{id}: {err}");
        assert!(
            err.message().unwrap().starts_with(&field),
            "{id}: {:?} should name {field}",
            err.message()
        );
        for dir in cgroup_dirs(id) {
            assert!(!dir.exists(), "{id}: {} left behind", dir.display());
        }
        // The id is free again.
        let mut start = StartContainerRequest::new();
        start.container_id = id.into();
        assert_eq!(
            rpc_code(&h.client.start_container(&start).await.unwrap_err()),
            Some(Code::INTERNAL)
        );
    }
    // A failed container leaves no mount in the agent's namespace and no process.
    assert_eq!(
        h.mountinfo(),
        baseline,
        "mounts changed after failed creates"
    );
    let children = h.agent_children();
    assert_eq!(
        children.len(),
        1,
        "only the real container's init: {children:?}"
    );

    // A CopyFile with no destination is refused (INTERNAL, as Kata's agent) before anything is
    // made.
    let err = h
        .client
        .copy_file(&CopyFileRequest::new())
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::INTERNAL));
    assert!(err.message().unwrap().contains("CopyFile"));

    // Starting twice is refused; the agent is still healthy.
    h.start_container("real").await;
    start.container_id = "real".into();
    assert_eq!(
        rpc_code(&h.client.start_container(&start).await.unwrap_err()),
        Some(Code::FAILED_PRECONDITION)
    );
    assert!(h.client.check().await.is_ok());
    h.remove("real").await;
    assert!(h.agent_children().is_empty());
}

#[tokio::test]
async fn destroy_sandbox_then_clean_exit() {
    let mut h = Harness::start().await;
    h.create_sandbox().await;
    let shared = h.dir.path().join("shared");
    assert!(h.mountinfo().contains(&shared.display().to_string()));

    let details = h
        .client
        .get_guest_details(&{
            let mut r = GuestDetailsRequest::new();
            r.mem_block_size = true;
            r
        })
        .await
        .expect("GetGuestDetails");
    assert_eq!(details.agent_details.version, env!("CARGO_PKG_VERSION"));
    assert!(!details.agent_details.init_daemon);

    h.create("running", &h.spec(&["sleep", "100"])).await;
    h.start_container("running").await;
    h.create("created", &h.spec(&["sleep", "100"])).await;
    assert_eq!(h.agent_children().len(), 2);

    h.client
        .destroy_sandbox(&DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    for id in ["running", "created"] {
        let mut w = WaitProcessRequest::new();
        w.container_id = id.into();
        assert_eq!(
            rpc_code(&h.client.wait_process(&w, None).await.unwrap_err()),
            Some(Code::INVALID_ARGUMENT)
        );
        for dir in cgroup_dirs(id) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
    assert!(
        !h.mountinfo().contains(&shared.display().to_string()),
        "storage still mounted"
    );
    assert!(h.agent_children().is_empty());

    let status = h.stop();
    assert!(status.success(), "agent exited with {status}\n{}", h.log());
}

#[tokio::test]
async fn resources_go_into_the_container_cgroup() {
    let h = Harness::start().await;
    let mut spec = h.spec(&["sleep", "100"]);
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(16i64).build().unwrap())
        .cpu(LinuxCpuBuilder::default().shares(512u64).build().unwrap())
        .build()
        .unwrap();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(resources));
    h.create("limited", &spec).await;
    h.start_container("limited").await;

    let mut st = StatsContainerRequest::new();
    st.container_id = "limited".into();
    let stats = h.client.stats_container(&st).await.expect("StatsContainer");
    let cg = &stats.cgroup_stats;
    assert_eq!(cg.pids_stats.limit, 16);
    assert!(cg.pids_stats.current >= 1);
    assert_eq!(cg.memory_stats.usage.limit, 64 << 20);
    assert!(cg.memory_stats.usage.usage > 0);

    // UpdateContainer rewrites the limits.
    let mut upd = UpdateContainerRequest::new();
    upd.container_id = "limited".into();
    let new = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(32i64).build().unwrap())
        .build()
        .unwrap();
    upd.resources = MessageField::some(spec::resources_to_grpc(&new).unwrap());
    h.client
        .update_container(&upd)
        .await
        .expect("UpdateContainer");
    let stats = h.client.stats_container(&st).await.expect("StatsContainer");
    assert_eq!(stats.cgroup_stats.pids_stats.limit, 32);

    // Pause and resume through the freezer.
    let mut pause = PauseContainerRequest::new();
    pause.container_id = "limited".into();
    h.client
        .pause_container(&pause)
        .await
        .expect("PauseContainer");
    let mut resume = ResumeContainerRequest::new();
    resume.container_id = "limited".into();
    h.client
        .resume_container(&resume)
        .await
        .expect("ResumeContainer");

    h.signal("limited", "", 9).await;
    assert_eq!(h.wait("limited", "").await, 137);
    h.remove("limited").await;
    for dir in cgroup_dirs("limited") {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// The directories the agent mounts over when it runs as PID 1 (in its own mount namespace;
/// `GUEST_MOUNTS` in `kata-agent/src/init/mod.rs`): a test directory below one of them — its
/// socket, its rootfs — is hidden from the agent.
const INIT_MOUNT_TARGETS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];

/// A directory for the test directory of an agent running as PID 1, outside every directory
/// it mounts over: this build's `CARGO_TARGET_TMPDIR` when it is (the target dir may be under
/// `/tmp`), else `/var/tmp`. Paths are compared canonical (`/var/tmp` may be a link into
/// `/tmp`).
fn outside_init_mounts() -> PathBuf {
    let candidates = [
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        Path::new("/var/tmp"),
    ];
    candidates
        .iter()
        .filter_map(|dir| dir.canonicalize().ok())
        .find(|dir| !INIT_MOUNT_TARGETS.iter().any(|t| dir.starts_with(t)))
        .unwrap_or_else(|| {
            panic!(
                "no directory outside {INIT_MOUNT_TARGETS:?} among {candidates:?}: the agent as \
                 PID 1 would hide the test's socket and rootfs"
            )
        })
}

#[tokio::test]
async fn runs_as_pid1_of_a_pid_namespace() {
    // As PID 1 the agent mounts over /tmp, /run, /dev... in its private mount namespace: the
    // test directory (socket, rootfs, log) is made outside all of them, wherever the target
    // directory is.
    let parent = outside_init_mounts();
    let mut h = Harness::start_with(
        &[
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
        ],
        &[],
        Some(&parent),
    )
    .await;
    let details = h
        .client
        .get_guest_details(&GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");
    assert!(details.agent_details.init_daemon, "the agent is PID 1 here");
    h.create_sandbox().await;
    let (out, _, status) = h.run("pid1", &h.spec(&["echo", "from pid 1"])).await;
    assert_eq!((out.as_str(), status), ("from pid 1\n", 0));

    // `unshare --fork` is the parent: the agent is its only child.
    let agent = children_of(h.pid());
    assert_eq!(agent.len(), 1, "{agent:?}");
    let agent_pid = agent[0].0;
    let zombies: Vec<_> = children_of(agent_pid)
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "unreaped children: {zombies:?}");

    // PID 1 never exits on its own: on SIGTERM it cleans up and powers off, which in a pid
    // namespace ends it with SIGINT.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut unshare = h.agent.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = unshare.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not power off\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(libc::SIGINT),
        "{status}\n{}",
        h.log()
    );
    assert!(h.log().contains("kata-agent stopped"), "{}", h.log());
}

#[tokio::test]
async fn no_pivot_root_like_an_initramfs_guest() {
    // On an initramfs root pivot_root is refused and the agent enters containers with MS_MOVE +
    // chroot; --no-pivot takes that path on the host. An exec must land in the same root.
    let h = Harness::start_with(
        &["--mount", "--uts", "--ipc", "--propagation", "private"],
        &["--no-init", "--no-pivot"],
        None,
    )
    .await;
    let (out, _, status) = h.run("mv-echo", &h.spec(&["echo", "moved"])).await;
    assert_eq!((out.as_str(), status), ("moved\n", 0));

    h.create(
        "mv-box",
        &h.spec(&["sh", "-c", "echo marker > /tmp/m; exec sleep 100"]),
    )
    .await;
    h.start_container("mv-box").await;
    let cat = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            "while [ ! -e /tmp/m ]; do sleep 0.05; done; cat /tmp/m; cat /proc/1/cmdline | tr '\\0' ' '".to_string(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    h.exec("mv-box", "cat", cat).await;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        h.read_all("mv-box", "cat", OutputStream::Stdout),
    )
    .await
    .expect("the exec never saw the container's file");
    assert_eq!(out.trim_end(), "marker\nsleep 100");
    assert_eq!(h.wait("mv-box", "cat").await, 0);
    h.remove("mv-box").await;
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let h = Harness::start().await;
    let mut spec = h.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"]);
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(16i64 << 20)
                .swap(16i64 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(resources));
    let client = h.client.clone();
    let oom = tokio::spawn(async move {
        client
            .get_oom_event(
                &kata_agent_client::protocol::agent::GetOOMEventRequest::new(),
                Some(Duration::from_secs(20)),
            )
            .await
    });
    h.create("hog", &spec).await;
    h.start_container("hog").await;
    assert_eq!(h.wait("hog", "").await, 137, "dd should be OOM-killed");
    let event = oom.await.unwrap().expect("GetOOMEvent");
    assert_eq!(event.container_id, "hog");
    h.remove("hog").await;
}

#[tokio::test]
async fn a_read_that_times_out_loses_nothing() {
    let h = Harness::start().await;
    h.create("late", &h.spec(&["sh", "-c", "sleep 1; echo late"]))
        .await;
    h.start_container("late").await;
    let mut req = ReadStreamRequest::new();
    req.container_id = "late".into();
    req.exec_id = "late".into();
    req.len = 4096;
    let err = h
        .client
        .read_stdout(&req, Some(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(!err.is_eof(), "{err}");
    // The abandoned read must not have taken the output with it.
    assert_eq!(
        h.read_all("late", "late", OutputStream::Stdout).await,
        "late\n"
    );
    assert_eq!(h.wait("late", "late").await, 0);
    h.remove("late").await;
}

#[tokio::test]
async fn terminal_output_survives_the_process() {
    let h = Harness::start().await;
    let mut spec = h.spec(&["sh", "-c", "echo one; echo two"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_terminal(Some(true));
    h.create("tty-early", &spec).await;
    h.start_container("tty-early").await;
    assert_eq!(h.wait("tty-early", "").await, 0);
    let out = h.read_all("tty-early", "", OutputStream::Stdout).await;
    assert_eq!(out, "one\r\ntwo\r\n");
    h.remove("tty-early").await;
}

// --- Confinement inside the guest (issue 9): seccomp, capabilities, namespaces, sysctls, the
// devices cgroup, hostile rootfs files. ---

/// A seccomp rule for the wire spec.
fn seccomp_rule(
    names: &[&str],
    action: &str,
    errno_ret: Option<u32>,
) -> kata_agent_client::protocol::oci::LinuxSyscall {
    use kata_agent_client::protocol::oci::{linux_syscall::ErrnoRet, LinuxSyscall};
    let mut r = LinuxSyscall::new();
    r.Names = names.iter().map(|s| s.to_string()).collect();
    r.Action = action.to_string();
    r.ErrnoRet = errno_ret.map(ErrnoRet::Errnoret);
    r
}

/// A seccomp profile for the wire spec.
fn seccomp_profile(
    default_action: &str,
    rules: Vec<kata_agent_client::protocol::oci::LinuxSyscall>,
) -> kata_agent_client::protocol::oci::LinuxSeccomp {
    let mut s = kata_agent_client::protocol::oci::LinuxSeccomp::new();
    s.DefaultAction = default_action.to_string();
    s.Architectures = vec!["SCMP_ARCH_X86_64".into()];
    s.Syscalls = rules;
    s
}

impl Harness {
    /// CreateContainer with `seccomp` set on the wire (whatever `spec::to_grpc` carries).
    async fn try_create_with_seccomp(
        &self,
        id: &str,
        spec: &Spec,
        seccomp: kata_agent_client::protocol::oci::LinuxSeccomp,
    ) -> kata_agent_client::Result<()> {
        let mut wire = spec::to_grpc(spec).unwrap();
        wire.Linux.mut_or_insert_default().Seccomp = MessageField::some(seccomp);
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.exec_id = id.into();
        req.OCI = MessageField::some(wire);
        self.client.create_container(&req).await
    }

    /// Starts `id`, reads its output to the end, waits, removes it.
    async fn finish(&self, id: &str) -> (String, String, i32) {
        self.start_container(id).await;
        let (out, err) = tokio::join!(
            self.read_all(id, id, OutputStream::Stdout),
            self.read_all(id, id, OutputStream::Stderr)
        );
        let status = self.wait(id, id).await;
        self.remove(id).await;
        (out, err, status)
    }
}

#[tokio::test]
async fn seccomp_denies_syscalls_with_their_errno() {
    let h = Harness::start().await;
    let spec = h.spec(&[
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status; mkdir /tmp/denied; echo mkdir=$?; cd /tmp && \
         realpath .; echo realpath=$?; sleep 100",
    ]);
    let profile = seccomp_profile(
        "SCMP_ACT_ALLOW",
        vec![
            seccomp_rule(&["mkdir", "mkdirat"], "SCMP_ACT_ERRNO", None),
            seccomp_rule(&["getcwd"], "SCMP_ACT_ERRNO", Some(libc::ENOTSUP as u32)),
            seccomp_rule(&["no_such_syscall_name"], "SCMP_ACT_ERRNO", None),
        ],
    );
    if let Err(e) = h.try_create_with_seccomp("sec-deny", &spec, profile).await {
        panic!("CreateContainer: {e}\n{}", h.log());
    }
    h.start_container("sec-deny").await;
    // An exec'd process gets the container's profile too.
    let exec = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            "mkdir /tmp/by-exec; echo exec-mkdir=$?".to_string(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    h.exec("sec-deny", "e1", exec).await;
    let exec_out = h.read_all("sec-deny", "e1", OutputStream::Stdout).await;
    let exec_err = h.read_all("sec-deny", "e1", OutputStream::Stderr).await;
    assert_eq!(h.wait("sec-deny", "e1").await, 0);
    assert!(exec_out.contains("exec-mkdir=1"), "{exec_out}");
    assert!(exec_err.contains("Operation not permitted"), "{exec_err}");
    h.signal("sec-deny", "", 9).await;
    let (out, err) = tokio::join!(
        h.read_all("sec-deny", "sec-deny", OutputStream::Stdout),
        h.read_all("sec-deny", "sec-deny", OutputStream::Stderr)
    );
    h.wait("sec-deny", "sec-deny").await;
    h.remove("sec-deny").await;
    assert!(out.contains("Seccomp:\t2"), "filter mode: {out}");
    assert!(out.contains("mkdir=1"), "{out}");
    assert!(
        err.contains("Operation not permitted"),
        "mkdir fails with EPERM: {err}"
    );
    assert!(out.contains("realpath=1"), "getcwd fails: {out}");
    assert!(
        err.contains("Operation not supported"),
        "getcwd fails with errnoRet (ENOTSUP): {err}"
    );
}

#[tokio::test]
async fn seccomp_default_deny_with_an_allow_list_and_default_allow_profiles_run() {
    let h = Harness::start().await;
    // Everything this table knows is allowed except mkdir/mkdirat; the default answers EPERM.
    let allowed: Vec<&str> = kata_agent::runtime::seccomp::syscalls::X86_64
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !["mkdir", "mkdirat"].contains(n))
        .collect();
    let profile = seccomp_profile(
        "SCMP_ACT_ERRNO",
        vec![seccomp_rule(&allowed, "SCMP_ACT_ALLOW", None)],
    );
    let spec = h.spec(&["sh", "-c", "echo hello; mkdir /tmp/x; echo mkdir=$?"]);
    h.try_create_with_seccomp("sec-list", &spec, profile)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", h.log()));
    let (out, err, status) = h.finish("sec-list").await;
    assert_eq!(status, 0, "{out}{err}");
    assert!(
        out.starts_with("hello\n") && out.contains("mkdir=1"),
        "{out}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");

    let allow_all = seccomp_profile("SCMP_ACT_ALLOW", vec![]);
    let spec = h.spec(&[
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status; mkdir /tmp/y && echo made",
    ]);
    h.try_create_with_seccomp("sec-allow", &spec, allow_all)
        .await
        .unwrap();
    let (out, _, status) = h.finish("sec-allow").await;
    assert_eq!(status, 0);
    assert!(out.contains("made"), "{out}");
}

#[tokio::test]
async fn malformed_seccomp_profiles_are_refused_naming_the_field() {
    let h = Harness::start().await;
    let spec = h.spec(&["true"]);
    let cases = [
        (
            "sec-notify",
            seccomp_profile(
                "SCMP_ACT_ALLOW",
                vec![
                    seccomp_rule(&["read"], "SCMP_ACT_ERRNO", None),
                    seccomp_rule(&["write"], "SCMP_ACT_NOTIFY", None),
                ],
            ),
            "linux.seccomp.syscalls[1].action",
        ),
        (
            "sec-bogus",
            seccomp_profile(
                "SCMP_ACT_ALLOW",
                vec![seccomp_rule(&["read"], "SCMP_ACT_BOGUS", None)],
            ),
            "linux.seccomp.syscalls[0].action",
        ),
        (
            "sec-default",
            seccomp_profile("SCMP_ACT_SOMETIMES", vec![]),
            "linux.seccomp.defaultAction",
        ),
        (
            "sec-errno",
            seccomp_profile(
                "SCMP_ACT_ALLOW",
                vec![seccomp_rule(&["read"], "SCMP_ACT_KILL", Some(1))],
            ),
            "linux.seccomp.syscalls[0].errnoRet",
        ),
    ];
    for (id, profile, field) in cases {
        let err = h
            .try_create_with_seccomp(id, &spec, profile)
            .await
            .unwrap_err();
        assert_eq!(rpc_code(&err), Some(Code::INVALID_ARGUMENT), "{id}: {err}");
        assert!(
            err.message().unwrap().starts_with(field),
            "{id}: {:?} should name {field}",
            err.message()
        );
        for dir in cgroup_dirs(id) {
            assert!(!dir.exists(), "{id}: cgroup {} left behind", dir.display());
        }
    }
    assert!(h.agent_children().is_empty(), "no process left behind");
}

#[tokio::test]
async fn guest_details_tell_whether_seccomp_is_supported() {
    let h = Harness::start().await;
    let details = h
        .client
        .get_guest_details(&GuestDetailsRequest::new())
        .await
        .unwrap();
    assert_eq!(
        details.agent_details.supports_seccomp,
        Path::new("/proc/sys/kernel/seccomp").exists()
    );
}

#[tokio::test]
async fn a_spec_without_capabilities_gets_none() {
    let h = Harness::start().await;
    let mut spec = h.spec(&["grep", "^Cap", "/proc/self/status"]);
    spec.process_mut().as_mut().unwrap().set_capabilities(None);
    let (out, _, status) = h.run("nocaps", &spec).await;
    assert_eq!(status, 0);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{set}:\t0000000000000000")),
            "{set} must be empty: {out}"
        );
    }
    // With capabilities in the spec, exactly those.
    let spec = h.spec(&["grep", "^CapEff", "/proc/self/status"]);
    let (out, _, _) = h.run("defcaps", &spec).await;
    // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29): oci-spec's default.
    assert_eq!(out, "CapEff:\t0000000020000420\n");
}

#[tokio::test]
async fn user_and_time_namespaces_are_refused() {
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType};
    let h = Harness::start().await;
    for (id, typ) in [
        ("userns", LinuxNamespaceType::User),
        ("timens", LinuxNamespaceType::Time),
    ] {
        let mut spec = h.spec(&["true"]);
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(vec![
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Mount)
                        .build()
                        .unwrap(),
                    LinuxNamespaceBuilder::default().typ(typ).build().unwrap(),
                ])
                .build()
                .unwrap(),
        ));
        let err = h.try_create(id, &spec).await.unwrap_err();
        assert_eq!(rpc_code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
        let msg = err.message().unwrap();
        assert!(msg.starts_with("linux.namespaces[1]"), "{msg}");
        let named = format!(
            "linux.namespaces[{}]",
            if id == "userns" { "user" } else { "time" }
        );
        assert!(msg.contains(&named), "{msg}");
    }
}

#[tokio::test]
async fn only_namespaced_sysctls_are_accepted() {
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType};
    let h = Harness::start().await;
    let with = |id: &str, ns: &[LinuxNamespaceType], key: &str, value: &str| {
        let mut spec = h.spec(&["cat", &format!("/proc/sys/{}", key.replace('.', "/"))]);
        let _ = id;
        let mut namespaces = vec![LinuxNamespaceType::Mount];
        namespaces.extend_from_slice(ns);
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(
                    namespaces
                        .into_iter()
                        .map(|t| LinuxNamespaceBuilder::default().typ(t).build().unwrap())
                        .collect::<Vec<_>>(),
                )
                .sysctl(
                    [(key.to_string(), value.to_string())]
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                )
                .build()
                .unwrap(),
        ));
        spec
    };
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let spec = with(
        "core",
        &[LinuxNamespaceType::Ipc],
        "kernel.core_pattern",
        "|/tmp/pwn",
    );
    let err = h.try_create("sysctl-core", &spec).await.unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
    assert!(
        err.message()
            .unwrap()
            .starts_with("linux.sysctl.kernel.core_pattern"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );

    // net.* with the agent's (here: the host's) network namespace is refused.
    let spec = with(
        "net",
        &[LinuxNamespaceType::Network],
        "net.ipv4.ip_forward",
        "1",
    );
    let err = h.try_create("sysctl-net", &spec).await.unwrap_err();
    assert!(
        err.message()
            .unwrap()
            .starts_with("linux.sysctl.net.ipv4.ip_forward"),
        "{err}"
    );
    // An IPC sysctl needs the IPC namespace.
    let spec = with("shm", &[], "kernel.shmmni", "1234");
    let err = h.try_create("sysctl-shm0", &spec).await.unwrap_err();
    assert!(
        err.message()
            .unwrap()
            .starts_with("linux.sysctl.kernel.shmmni"),
        "{err}"
    );
    let spec = with("shm", &[LinuxNamespaceType::Ipc], "kernel.shmmni", "1234");
    let (out, err, status) = h.run("sysctl-shm", &spec).await;
    assert_eq!((out.as_str(), status), ("1234\n", 0), "{err}");
}

#[tokio::test]
async fn the_devices_cgroup_denies_what_the_spec_does_not_allow() {
    use oci_spec::runtime::{
        Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
        LinuxDeviceType,
    };
    let h = Harness::start().await;
    let run = |allow_tun: bool| {
        let mut spec = h.spec(&[
            "sh",
            "-c",
            "rm -f /tmp/tun; mknod /tmp/tun c 10 200 && echo made; \
             echo x > /dev/null && echo null-ok; cat /tmp/tun 2>&1; true",
        ]);
        let caps: oci_spec::runtime::Capabilities = [Capability::Mknod].into_iter().collect();
        spec.process_mut().as_mut().unwrap().set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()
                .unwrap(),
        ));
        let mut rules = vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap()];
        if allow_tun {
            rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(10i64)
                    .minor(200i64)
                    .access("rw")
                    .build()
                    .unwrap(),
            );
        }
        spec.set_linux(Some(
            LinuxBuilder::default()
                .resources(
                    LinuxResourcesBuilder::default()
                        .devices(rules)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        ));
        spec
    };
    let (out, err, status) = h.run("dev-deny", &run(false)).await;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains("made"),
        "mknod stays allowed (runc's defaults): {out}"
    );
    assert!(out.contains("null-ok"), "/dev/null stays allowed: {out}");
    assert!(
        out.contains("Operation not permitted"),
        "opening a device the rules do not allow fails with EPERM: {out}"
    );
    let (out, _, _) = h.run("dev-allow", &run(true)).await;
    assert!(
        out.contains("made") && !out.contains("Operation not permitted"),
        "{out}"
    );
}

#[tokio::test]
async fn a_fifo_at_etc_passwd_is_refused_and_the_agent_stays_responsive() {
    let h = Harness::start().await;
    let passwd = h.rootfs.join("etc/passwd");
    std::fs::remove_file(&passwd).unwrap();
    nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let spec = h.spec(&["true"]);
    let (created, check) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(20), h.try_create("fifo-passwd", &spec)),
        tokio::time::timeout(Duration::from_secs(5), h.client.check()),
    );
    check
        .expect("Check answers while the bad create runs")
        .expect("Check");
    let err = created
        .expect("CreateContainer must not hang on the FIFO")
        .unwrap_err();
    assert_eq!(rpc_code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
    let msg = err.message().unwrap();
    assert!(msg.starts_with("process.user"), "{msg}");
    assert!(msg.contains("/etc/passwd") && msg.contains("FIFO"), "{msg}");
    // And afterwards too.
    h.client
        .check()
        .await
        .expect("Check after the failed create");
}

#[tokio::test]
async fn a_paused_container_is_killed_and_removed() {
    let h = Harness::start().await;
    h.create("paused", &h.spec(&["sleep", "100"])).await;
    h.start_container("paused").await;
    let exec = ProcessBuilder::default()
        .args(vec!["sleep".to_string(), "100".to_string()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    h.exec("paused", "e1", exec).await;
    let mut pause = PauseContainerRequest::new();
    pause.container_id = "paused".into();
    h.client
        .pause_container(&pause)
        .await
        .expect("PauseContainer");
    // SIGKILL to a frozen container: it must die without a ResumeContainer.
    h.signal("paused", "", 9).await;
    let status = tokio::time::timeout(Duration::from_secs(10), h.wait("paused", "paused"))
        .await
        .expect("a frozen init killed with SIGKILL exits");
    assert_eq!(status, 137);
    let mut req = RemoveContainerRequest::new();
    req.container_id = "paused".into();
    req.timeout = 10;
    h.client
        .remove_container(&req)
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer of a paused container: {e}\n{}", h.log()));
    for dir in cgroup_dirs("paused") {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}

/// Guest network calls (through the typed `Agent`) on an agent in a network namespace of its own,
/// and the guest-side volume storages (`ephemeral`, `local`, binds of shared paths).
mod network_and_storages {
    use super::*;
    use kata_agent_client::api::{
        Agent, ArpNeighbor, FsGroup, FsGroupChangePolicy, Interface, MacAddress, Route, Storage,
    };

    const MAC: &str = "02:00:00:00:00:09";

    impl Harness {
        /// The agent in `unshare --net` (and private mount, UTS, IPC namespaces), `--no-init
        /// --own-network`, with a veth pair `veth9` (MAC [`MAC`]) / `peer9` made inside that
        /// namespace: nothing is created in the host's.
        async fn start_in_netns() -> Self {
            let h = Self::start_with(
                &[
                    "--net",
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--propagation",
                    "private",
                ],
                &["--no-init", "--own-network"],
                None,
            )
            .await;
            h.in_netns(&[
                "ip", "link", "add", "veth9", "address", MAC, "type", "veth", "peer", "name",
                "peer9",
            ]);
            h.in_netns(&["ip", "link", "set", "peer9", "up"]);
            h
        }

        /// The typed agent API on the harness's connection.
        fn agent(&self) -> Agent {
            Agent::from(self.client.clone())
        }

        /// Runs a command in the agent's network namespace; its stdout (panics on failure).
        fn in_netns(&self, args: &[&str]) -> String {
            let out = Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", self.pid()))
                .args(args)
                .output()
                .expect("run nsenter");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// Gives eth0 (found by MAC) 10.99.0.2/24.
        async fn eth0(&self) -> Interface {
            self.agent()
                .update_interface(
                    &Interface::new("eth0")
                        .hw_addr(MAC.parse().unwrap())
                        .address("10.99.0.2/24".parse().unwrap()),
                )
                .await
                .unwrap_or_else(|e| panic!("UpdateInterface: {e}\n{}", self.log()))
        }
    }

    fn host_has_link(name: &str) -> bool {
        Command::new("ip")
            .args(["link", "show", name])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    #[tokio::test]
    async fn update_interface_by_mac_sets_name_addresses_mtu_and_up() {
        let h = Harness::start_in_netns().await;
        let agent = h.agent();
        let mac: MacAddress = MAC.parse().unwrap();
        let got = agent
            .update_interface(
                &Interface::new("eth0")
                    .hw_addr(mac)
                    .mtu(1400)
                    .address("10.99.0.2/24".parse().unwrap())
                    .address("fd00:99::2/64".parse().unwrap()),
            )
            .await
            .unwrap_or_else(|e| panic!("UpdateInterface: {e}\n{}", h.log()));
        assert_eq!(
            (got.name.as_str(), got.hw_addr, got.mtu),
            ("eth0", Some(mac), 1400)
        );
        for a in ["10.99.0.2/24", "fd00:99::2/64"] {
            assert!(
                got.addresses.contains(&a.parse().unwrap()),
                "{a} in {got:?}"
            );
        }
        let link = h.in_netns(&["ip", "-o", "link", "show", "eth0"]);
        assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
        let addrs = h.in_netns(&["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addrs.contains("10.99.0.2/24") && addrs.contains("fd00:99::2/64"),
            "{addrs}"
        );

        // A container (in the pod's network namespace, the agent's) sees the same interface.
        let (out, err, status) = h
            .run(
                "ipaddr",
                &h.spec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]),
            )
            .await;
        assert_eq!(status, 0, "{err}");
        assert!(out.contains("inet 10.99.0.2/24"), "{out}");

        // Addresses are set, not added: a second call leaves only its own (and link-local).
        let got = agent
            .update_interface(
                &Interface::new("eth0")
                    .hw_addr(mac)
                    .address("10.99.0.3/24".parse().unwrap()),
            )
            .await
            .unwrap();
        let ours: Vec<String> = got
            .addresses
            .iter()
            .filter(|a| !a.to_string().starts_with("fe80:"))
            .map(ToString::to_string)
            .collect();
        assert_eq!(ours, vec!["10.99.0.3/24".to_string()]);
        assert_eq!(got.mtu, 1400, "mtu 0 keeps the link's");

        // ListInterfaces reports it; a MAC no link has is NOT_FOUND naming it and the links.
        let listed = agent.list_interfaces().await.unwrap();
        assert!(
            listed
                .iter()
                .any(|i| i.name == "eth0" && i.hw_addr == Some(mac)),
            "{listed:?}"
        );
        let err = agent
            .update_interface(&Interface::new("eth1").hw_addr("02:00:00:00:00:77".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
        let msg = err.message().unwrap();
        assert!(
            msg.contains("MAC address 02:00:00:00:00:77")
                && msg.contains("eth0 (02:00:00:00:00:09)"),
            "{msg}"
        );
        // Nothing of this exists in the host's namespace.
        assert!(!host_has_link("veth9") && !host_has_link("peer9"));
    }

    #[tokio::test]
    async fn a_rename_onto_a_taken_name_swaps_the_names() {
        let h = Harness::start_in_netns().await;
        // The guest probed the NICs the other way round: the host's eth0 is the guest's peer9.
        let got = h
            .agent()
            .update_interface(&Interface::new("peer9").hw_addr(MAC.parse().unwrap()))
            .await
            .unwrap_or_else(|e| panic!("UpdateInterface: {e}\n{}", h.log()));
        assert_eq!(got.name, "peer9");
        let links = h.in_netns(&["ip", "-o", "link", "show"]);
        assert!(links.contains(": peer9@veth9:"), "{links}");
        assert!(
            links.contains(": veth9@peer9:"),
            "the other link got the old name: {links}"
        );
        let peer = h.in_netns(&["ip", "-o", "link", "show", "peer9"]);
        assert!(
            peer.contains(MAC),
            "the link found by MAC has the name: {peer}"
        );
    }

    /// The IPv4 routes of a list. Comparisons of whole tables use them: the kernel adds the
    /// fe80::/64 route of a link that came up moments ago (peer9's) on its own time, between
    /// two calls.
    fn v4(routes: Vec<Route>) -> Vec<Route> {
        routes
            .into_iter()
            .filter(|r| r.family == kata_agent_client::api::IpFamily::V4)
            .collect()
    }

    #[tokio::test]
    async fn update_routes_then_list_routes_returns_them() {
        let h = Harness::start_in_netns().await;
        h.eth0().await;
        let agent = h.agent();
        let routes = vec![
            Route::link("10.99.0.0/24".parse().unwrap(), "eth0")
                .source("10.99.0.2".parse().unwrap()),
            Route::default_via("10.99.0.1".parse().unwrap(), "eth0"),
            Route::via(
                "10.100.0.0/16".parse().unwrap(),
                "10.99.0.254".parse().unwrap(),
                "eth0",
            ),
        ];
        let now = agent
            .update_routes(&routes)
            .await
            .unwrap_or_else(|e| panic!("UpdateRoutes: {e}\n{}", h.log()));
        for r in &routes {
            assert!(now.contains(r), "{r} missing from {now:?}");
        }
        assert_eq!(v4(agent.list_routes().await.unwrap()), v4(now.clone()));
        let table = h.in_netns(&["ip", "route"]);
        assert!(table.contains("default via 10.99.0.1 dev eth0"), "{table}");
        assert!(
            table.contains("10.100.0.0/16 via 10.99.0.254 dev eth0"),
            "{table}"
        );

        // Replaced, not added: the old default and 10.100/16 go, the subnet's route stays.
        let now = agent
            .update_routes(&[Route::default_via("10.99.0.254".parse().unwrap(), "eth0")])
            .await
            .unwrap_or_else(|e| panic!("UpdateRoutes: {e}\n{}", h.log()));
        let shown: Vec<String> = now
            .iter()
            .filter(|r| r.family == kata_agent_client::api::IpFamily::V4)
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            vec![
                "default via 10.99.0.254 dev eth0".to_string(),
                "10.99.0.0/24 dev eth0 scope link src 10.99.0.2".to_string(),
            ]
        );
    }

    #[tokio::test]
    async fn a_gateway_outside_every_subnet_is_refused_and_nothing_changes() {
        let h = Harness::start_in_netns().await;
        h.eth0().await;
        let agent = h.agent();
        let before = agent
            .update_routes(&[
                Route::default_via("10.99.0.1".parse().unwrap(), "eth0"),
                Route::via(
                    "10.101.0.0/16".parse().unwrap(),
                    "10.99.0.254".parse().unwrap(),
                    "eth0",
                ),
            ])
            .await
            .unwrap();

        let err = agent
            .update_routes(&[Route::default_via("10.200.0.1".parse().unwrap(), "eth0")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
        let msg = err.message().unwrap();
        assert!(
            msg.starts_with("routes[0].gateway 10.200.0.1 of route default via 10.200.0.1 dev eth0 is outside every subnet of eth0 (10.99.0.2/24"),
            "{msg}"
        );
        assert!(msg.contains("onlink"), "{msg}");
        assert_eq!(v4(agent.list_routes().await.unwrap()), v4(before.clone()));

        // The kernel refusing a route (a source address the guest does not have) after the
        // old routes were removed: they are put back.
        let err = agent
            .update_routes(&[
                Route::via(
                    "10.102.0.0/16".parse().unwrap(),
                    "10.99.0.254".parse().unwrap(),
                    "eth0",
                ),
                Route::default_via("10.99.0.1".parse().unwrap(), "eth0")
                    .source("10.50.0.9".parse().unwrap()),
            ])
            .await
            .unwrap_err();
        let msg = err.message().unwrap_or_default().to_string();
        assert!(
            msg.starts_with("add route default via 10.99.0.1 dev eth0 src 10.50.0.9: "),
            "{err}"
        );
        assert_eq!(
            v4(agent.list_routes().await.unwrap()),
            v4(before.clone()),
            "the old routes are back"
        );

        // The same gateway marked onlink is taken.
        let now = agent
            .update_routes(
                &[Route::default_via("10.200.0.1".parse().unwrap(), "eth0").onlink(true)],
            )
            .await
            .unwrap_or_else(|e| panic!("UpdateRoutes onlink: {e}\n{}", h.log()));
        assert!(
            now.iter()
                .any(|r| r.to_string() == "default via 10.200.0.1 dev eth0 onlink"),
            "{now:?}"
        );
        // A device the guest does not have, and host bits in a destination.
        let err = agent
            .update_routes(&[Route::link("10.7.0.0/16".parse().unwrap(), "eth7")])
            .await
            .unwrap_err();
        assert!(
            err.message()
                .unwrap()
                .starts_with("routes[0].device \"eth7\""),
            "{err}"
        );
        let err = agent
            .update_routes(&[Route::link("10.7.0.1/16".parse().unwrap(), "eth0")])
            .await
            .unwrap_err();
        assert!(
            err.message()
                .unwrap()
                .contains("has host bits set: the subnet is 10.7.0.0/16"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn arp_neighbors_show_in_ip_neigh() {
        let h = Harness::start_in_netns().await;
        h.eth0().await;
        let agent = h.agent();
        agent
            .add_arp_neighbors(&[
                ArpNeighbor::new(
                    "10.99.0.1".parse().unwrap(),
                    "ee:ee:ee:ee:ee:ee".parse().unwrap(),
                    "eth0",
                ),
                ArpNeighbor::new(
                    "fd00:99::1".parse().unwrap(),
                    "ee:ee:ee:ee:ee:01".parse().unwrap(),
                    "eth0",
                ),
            ])
            .await
            .unwrap_or_else(|e| panic!("AddARPNeighbors: {e}\n{}", h.log()));
        let neigh = h.in_netns(&["ip", "neigh", "show", "dev", "eth0"]);
        assert!(
            neigh.contains("10.99.0.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT"),
            "{neigh}"
        );
        assert!(
            neigh.contains("fd00:99::1 lladdr ee:ee:ee:ee:ee:01 PERMANENT"),
            "{neigh}"
        );
        let err = agent
            .add_arp_neighbors(&[ArpNeighbor::new(
                "10.99.0.7".parse().unwrap(),
                "ee:ee:ee:ee:ee:07".parse().unwrap(),
                "eth5",
            )])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT));
        assert!(
            err.message()
                .unwrap()
                .starts_with("neighbors[0].device \"eth5\""),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_agent_that_does_not_own_its_network_changes_nothing() {
        // No --net and no --own-network: the namespace is the host's.
        let h = Harness::start().await;
        let agent = h.agent();
        let err = agent
            .update_routes(&[Route::default_via("10.99.0.1".parse().unwrap(), "lo")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::FAILED_PRECONDITION), "{err}");
        assert!(err.message().unwrap().contains("--own-network"), "{err}");
        for r in [
            agent
                .update_interface(&Interface::new("lo").mtu(1280))
                .await
                .map(drop),
            agent
                .add_arp_neighbors(&[ArpNeighbor::new(
                    "10.99.0.1".parse().unwrap(),
                    MacAddress([2, 0, 0, 0, 0, 1]),
                    "lo",
                )])
                .await,
        ] {
            assert_eq!(r.unwrap_err().code(), Some(Code::FAILED_PRECONDITION));
        }
        // Reading is harmless.
        assert!(agent
            .list_interfaces()
            .await
            .unwrap()
            .iter()
            .any(|i| i.name == "lo"));
        agent.list_routes().await.unwrap();
    }

    fn mounted(h: &Harness, path: &Path) -> bool {
        kata_agent::mount::mount_points(&h.mountinfo())
            .iter()
            .any(|m| Path::new(m) == path)
    }

    fn mount_options(h: &Harness, path: &Path) -> String {
        h.mountinfo()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(&path.display().to_string()))
            .unwrap_or_default()
            .to_string()
    }

    fn bind(dest: &str, source: &Path, ro: bool) -> oci_spec::runtime::Mount {
        let mut options = vec!["rbind".to_string()];
        if ro {
            options.push("ro".into());
        }
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(source)
            .options(options)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn ephemeral_and_local_storages_live_with_their_last_user() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let h = Harness::start().await;
        let agent = h.agent();
        let sandbox_dir = h.dir.path().join("run/kata-containers/sandbox");
        let shm = sandbox_dir.join("shm");
        let eph = sandbox_dir.join("ephemeral/cache");
        let local = sandbox_dir.join("local/scratch");
        agent
            .create_sandbox(
                &kata_agent_client::api::SandboxSetup::new("sb").storage(
                    Storage::new("ephemeral", "shm", shm.display().to_string())
                        .fstype("tmpfs")
                        .options(["noexec", "nosuid", "nodev", "mode=1777", "size=1048576"]),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("CreateSandbox: {e}\n{}", h.log()));
        assert!(
            mount_options(&h, &shm).contains("size=1024k"),
            "{}",
            mount_options(&h, &shm)
        );

        let storages = [
            Storage::new("ephemeral", "tmpfs", eph.display().to_string())
                .fstype("tmpfs")
                .options(["size=2m"]),
            Storage::new("local", "local", local.display().to_string())
                .options(["mode=0770"])
                .fs_group(FsGroup {
                    group_id: 100,
                    change_policy: FsGroupChangePolicy::Always,
                }),
            // The sandbox's /dev/shm, also asked for by the container: shared.
            Storage::new("ephemeral", "shm", shm.display().to_string())
                .fstype("tmpfs")
                .options(["noexec", "nosuid", "nodev", "mode=1777", "size=1048576"]),
        ];
        let mut spec = h.spec(&[
            "sh",
            "-c",
            "echo in-tmpfs > /eph/f && echo on-disk > /loc/f && echo shm > /dev/shm/f && \
             df -k /eph | tail -1 && stat -c '%a %g' /loc",
        ]);
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(bind("/eph", &eph, false));
        mounts.push(bind("/loc", &local, false));
        mounts.push(bind("/dev/shm", &shm, false));
        spec.set_mounts(Some(mounts));
        for id in ["c1", "c2"] {
            agent
                .create_container(id, &spec, &storages)
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {id}: {e}\n{}", h.log()));
        }
        assert_eq!(
            std::fs::metadata(&local).unwrap().permissions().mode() & 0o7777,
            0o2770,
            "mode with set-group-ID"
        );
        assert_eq!(std::fs::metadata(&local).unwrap().gid(), 100);

        h.start_container("c1").await;
        let (out, err) = tokio::join!(
            h.read_all("c1", "c1", OutputStream::Stdout),
            h.read_all("c1", "c1", OutputStream::Stderr)
        );
        assert_eq!(h.wait("c1", "c1").await, 0, "{err}");
        let mut lines = out.lines();
        let df: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(df.get(1), Some(&"2048"), "a 2 MiB tmpfs: {out}");
        assert_eq!(lines.next(), Some("2770 100"), "{out}");
        assert!(mounted(&h, &eph), "the container's volume is mounted");
        // The local directory lives on the guest's disk (here the host's).
        assert_eq!(
            std::fs::read_to_string(local.join("f")).unwrap(),
            "on-disk\n"
        );

        // c2 still uses both volumes: removing c1 keeps them.
        h.remove("c1").await;
        assert!(mounted(&h, &eph) && local.join("f").exists());
        h.remove("c2").await;
        assert!(!mounted(&h, &eph), "unmounted with its last user");
        assert!(!eph.exists(), "its directory removed");
        assert!(
            !local.exists(),
            "the local volume removed with its last user"
        );
        // The sandbox's /dev/shm stays until the sandbox goes.
        assert!(mounted(&h, &shm));
        agent.destroy_sandbox().await.unwrap();
        assert!(
            !mounted(&h, &shm) && !sandbox_dir.exists(),
            "{}",
            h.mountinfo()
        );
    }

    #[tokio::test]
    async fn an_ephemeral_with_a_bad_size_is_refused_naming_it() {
        let h = Harness::start().await;
        let agent = h.agent();
        let good = h.dir.path().join("vols/good");
        let bad = h.dir.path().join("vols/bad");
        let storages = [
            Storage::new("ephemeral", "tmpfs", good.display().to_string()).options(["size=1m"]),
            Storage::new("ephemeral", "tmpfs", bad.display().to_string())
                .options(["mode=1777", "size=12XB"]),
        ];
        let spec = h.spec(&["true"]);
        let err = agent
            .create_container("badsize", &spec, &storages)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
        let msg = err.message().unwrap();
        assert!(
            msg.starts_with(&format!(
                "storages[1].options[1] \"size=12XB\" of the ephemeral storage at {}: is not a size",
                bad.display()
            )),
            "{msg}"
        );
        assert!(!mounted(&h, &good) && !good.exists() && !h.dir.path().join("vols").exists());
        // Nothing half-made: the id is free and the good storage works.
        agent
            .create_container("badsize", &spec, &storages[..1])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", h.log()));
        assert!(mounted(&h, &good));
        h.remove("badsize").await;
        assert!(!mounted(&h, &good) && !good.exists());
    }

    #[tokio::test]
    async fn binds_of_shared_files_and_directories_are_container_mounts() {
        // The sandbox's shared directory (over share-fs in a VM; a bind storage here) holds a
        // host file and a host directory, bind mounted by the host into the share.
        let h = Harness::start().await;
        h.create_sandbox().await;
        let src = h.dir.path().join("shared-src");
        std::fs::write(src.join("hosts"), "10.99.0.2 pod\n").unwrap();
        std::fs::create_dir_all(src.join("data")).unwrap();
        let shared = h.dir.path().join("shared");
        // A storage bind of a single file gets a file to be mounted on.
        let file_storage = h.dir.path().join("guest/c/resolv.conf");
        std::fs::write(src.join("resolv.conf"), "nameserver 10.99.0.1\n").unwrap();
        let storages = [Storage::new(
            "bind",
            src.join("resolv.conf").display().to_string(),
            file_storage.display().to_string(),
        )
        .options(["ro"])];
        let mut spec = h.spec(&[
            "sh",
            "-c",
            "cat /etc/hosts /etc/resolv.conf; echo x >> /etc/hosts || echo ro-file; \
             echo written > /data/new && echo rw-dir",
        ]);
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(bind("/etc/hosts", &shared.join("hosts"), true));
        mounts.push(bind("/etc/resolv.conf", &file_storage, true));
        mounts.push(bind("/data", &shared.join("data"), false));
        spec.set_mounts(Some(mounts));
        h.agent()
            .create_container("binds", &spec, &storages)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", h.log()));
        h.start_container("binds").await;
        let (out, err) = tokio::join!(
            h.read_all("binds", "binds", OutputStream::Stdout),
            h.read_all("binds", "binds", OutputStream::Stderr)
        );
        assert_eq!(h.wait("binds", "binds").await, 0, "{err}");
        assert_eq!(
            out, "10.99.0.2 pod\nnameserver 10.99.0.1\nro-file\nrw-dir\n",
            "stderr: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(src.join("hosts")).unwrap(),
            "10.99.0.2 pod\n"
        );
        assert_eq!(
            std::fs::read_to_string(src.join("data/new")).unwrap(),
            "written\n"
        );
        h.remove("binds").await;
        assert!(!file_storage.exists() && !h.dir.path().join("guest").exists());
    }
}

/// Issue 9 row 14: mount destinations and bind sources in trees the pod's containers write are
/// opened without leaving them (`runtime::path`), and mounted through the descriptor.
mod mount_targets {
    use super::*;
    use kata_agent_client::api::{Agent, Storage};
    use std::os::unix::fs::symlink;

    /// Creates, starts and waits for `id`; its stdout, stderr and status (not removed).
    async fn run_kept(
        h: &Harness,
        agent: &Agent,
        id: &str,
        spec: &Spec,
        storages: &[Storage],
    ) -> (String, String, i32) {
        agent
            .create_container(id, spec, storages)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {id}: {e}\n{}", h.log()));
        h.start_container(id).await;
        let (out, err) = tokio::join!(
            h.read_all(id, id, OutputStream::Stdout),
            h.read_all(id, id, OutputStream::Stderr)
        );
        (out, err, h.wait(id, id).await)
    }

    fn tmpfs(dest: &str) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(dest)
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_string()])
            .build()
            .unwrap()
    }

    fn bind(dest: &str, source: &Path) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn destinations_behind_symlinks_to_the_host_stay_in_the_rootfs() {
        let h = Harness::start().await;
        let host_dir = h.dir.path().join("hostdir");
        std::fs::create_dir(&host_dir).unwrap();
        std::fs::write(host_dir.join("marker"), "host\n").unwrap();
        // The image's links: to the host directory (absolute, and relative with more `..` than
        // the rootfs is deep) and to `/`.
        symlink(&host_dir, h.rootfs.join("abs")).unwrap();
        let up = "../".repeat(h.rootfs.components().count() + 2);
        let host_rel = host_dir.strip_prefix("/").unwrap();
        symlink(format!("{up}{}", host_rel.display()), h.rootfs.join("rel")).unwrap();
        symlink("/", h.rootfs.join("slash")).unwrap();
        let mut spec = h.spec(&[
            "sh",
            "-c",
            "echo a > /abs/m/f && echo b > /rel/n/f && echo c > /slash/tmp/o/f && ls /abs; \
             cat /abs/marker 2>/dev/null || echo no-marker; \
             awk '$5 ~ /\\/(m|n|o)$/ {print $5, $9}' /proc/self/mountinfo",
        ]);
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.extend([tmpfs("/abs/m"), tmpfs("/rel/n"), tmpfs("/slash/tmp/o")]);
        spec.set_mounts(Some(mounts));
        let (out, err, status) = h.run("links", &spec).await;
        assert_eq!(status, 0, "stderr: {err}");
        let inside = format!("/{}", host_rel.display());
        assert_eq!(
            out,
            format!("m\nn\nno-marker\n{inside}/m tmpfs\n{inside}/n tmpfs\n/tmp/o tmpfs\n"),
            "stderr: {err}"
        );
        let left: Vec<_> = std::fs::read_dir(&host_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["marker"], "the host directory is untouched");
        assert!(h.rootfs.join(host_rel).join("m").is_dir());
        assert!(!Path::new("/tmp/o").exists());

        // A destination that is the root itself is refused, naming the mount.
        let mut spec = h.spec(&["true"]);
        let mut mounts = spec.mounts().clone().unwrap();
        let index = mounts.len();
        mounts.push(tmpfs("/slash"));
        spec.set_mounts(Some(mounts));
        let err = h.try_create("onroot", &spec).await.unwrap_err();
        assert_eq!(rpc_code(&err), Some(Code::INVALID_ARGUMENT), "{err}");
        let msg = err.message().unwrap().to_string();
        assert!(
            msg.starts_with(&format!(
                "mounts[{index}].destination /slash resolves to the container's root directory"
            )),
            "{msg}"
        );
        assert!(h.agent_children().is_empty(), "nothing left running");
    }

    #[tokio::test]
    async fn a_bind_source_that_a_container_pointed_out_of_its_volume_is_refused() {
        let h = Harness::start().await;
        let agent = Agent::from(h.client.clone());
        let secret = h.dir.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("marker"), "host secret\n").unwrap();
        let vol = h.dir.path().join("run/sandbox/local/vol");
        let storages = [Storage::new("local", "local", vol.display().to_string())];

        // c1 has the volume and plants links in it: to its `/` (the guest's `/` for the agent)
        // and up through more `..` than the volume is deep, and one that stays inside.
        let mut spec = h.spec(&[
            "sh",
            "-c",
            "ln -s / /data/root && ln -s ../../../../../../../../../../.. /data/up && \
             mkdir /data/sub && echo in-volume > /data/sub/f && ln -s sub /data/ok",
        ]);
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source(&vol)
                .options(vec!["rbind".to_string()])
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        let (_, err, status) = run_kept(&h, &agent, "c1", &spec, &storages).await;
        assert_eq!(status, 0, "{err}");

        // Another container of the pod binds what the links name: refused, naming the mount.
        for (id, link) in [("c2", "root"), ("c3", "up")] {
            let source = vol.join(link);
            let mut spec = h.spec(&["cat", &format!("/mnt{}", secret.join("marker").display())]);
            let mut mounts = spec.mounts().clone().unwrap();
            let index = mounts.len();
            mounts.push(bind("/mnt", &source));
            spec.set_mounts(Some(mounts));
            let err = match agent.create_container(id, &spec, &storages).await {
                Err(e) => e,
                Ok(()) => {
                    h.start_container(id).await;
                    let out = h.read_all(id, id, OutputStream::Stdout).await;
                    panic!(
                        "{id} was created with the bind of {}: it reads {out:?}",
                        source.display()
                    );
                }
            };
            assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
            let msg = err.message().unwrap().to_string();
            assert!(
                msg.starts_with(&format!(
                    "mounts[{index}].source {} leaves {} (a tree the pod's containers write)",
                    source.display(),
                    vol.display()
                )),
                "{msg}"
            );
            assert!(h.agent_children().is_empty(), "nothing left running");
        }

        // A link that stays inside the volume is followed.
        let mut spec = h.spec(&["cat", "/mnt/f"]);
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(bind("/mnt", &vol.join("ok")));
        spec.set_mounts(Some(mounts));
        let (out, err, status) = run_kept(&h, &agent, "c4", &spec, &storages).await;
        assert_eq!((out.as_str(), status), ("in-volume\n", 0), "{err}");
        for id in ["c1", "c4"] {
            h.remove(id).await;
        }
        assert!(!vol.exists(), "the volume went with its last user");
    }
}
