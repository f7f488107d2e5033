//! Tier 6, Kubernetes without a cluster: containerd's own CRI plugin drives
//! `containerd-shim-kata-v2` as the kubelet would, with `runc` as the reference in the same run.
//!
//! The setup (`kata_testkit::cri::CriEnv`) makes a network namespace, starts a private
//! containerd in it (`nsenter --net=...`) with a CRI config naming two RuntimeClass handlers,
//! `runc` (`io.containerd.runc.v2`) and `kata` (`io.containerd.kata.v2`, the shim cargo built,
//! with a kata-rs configuration file through `options.ConfigPath`), CNI bridge networking on
//! 10.88.77.0/24 (Debian's `containernetworking-plugins`) and a locally built pause image as
//! `sandbox_image`; the busybox test image is imported into `k8s.io`. No packet leaves that
//! namespace.
//!
//! Each handler runs the same pod, through the CRI API only (`kata_testkit::cri::Client`):
//! RunPodSandbox; PodSandboxStatus (ready, an address on the test range); two containers
//! created and started (a busybox `httpd` and an idle one); ListContainers; ExecSync (stdout,
//! stderr, exit code); the second container reaches the first over `localhost`; the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` are the files CRI wrote; the pod's
//! address answers from the test's namespace; the containers' logs are in CRI's format
//! (`<RFC3339Nano> stdout F <line>`) at their `log_path`; StopContainer, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox; then nothing of the pod is left (process, QEMU,
//! virtiofsd, sandbox directory, mount, pod network namespace — with it its taps and tc
//! filters —, veth, address).
//!
//! The `kata-cache` handler runs the same pod from the VM cache: `kata-vm-cache` (started by
//! the setup with that handler's configuration, `[factory] vm_cache_number = 1`) keeps a VM
//! booted without network; the pod's shim takes it over and joins the pod's network namespace
//! (the NIC hot-plugged) and cgroups. Checked besides the pod's own checks: the cache counted
//! the hand-over, and the handed-over VM's directory is gone after RemovePodSandbox.
//!
//! Run one handler: `cargo test -p kata-shim --test cri -- kata`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_testkit::cri::env::{cri_pod_netns, CriEnv, CriOptions, Handler, CNI_BRIDGE};
use kata_testkit::cri::log as cri_log;
use kata_testkit::cri::proto::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, DNSConfig, ImageSpec,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
};
use kata_testkit::cri::Client;
use kata_testkit::harness::{booted, Suite};
use kata_testkit::leaks::{cmdlines, mounts_under};

/// The pods' range (host-local), inside the test's own network namespace only.
const SUBNET: &str = "10.88.77.0/24";
/// The nameserver the pods' resolv.conf names (nothing answers: only the file is checked).
const DNS_SERVER: &str = "10.88.77.53";
/// The DNS search domain of the pods.
const DNS_SEARCH: &str = "kata-rs.test";
/// The port the pod's httpd serves.
const PORT: u16 = 8080;
/// A kata-rs configuration for the `kata` handler: the QEMU backend with kata-rs's defaults
/// (the guest image `make guest` built).
const KATA_CONFIG: &str =
    "# kata-rs configuration for the CRI tests' `kata` handler.\n[hypervisor.qemu]\n";
/// A kata-rs configuration for the `kata-linux` handler (a RuntimeClass selecting the
/// `linux_container` runtime handler: the pod's containers on the host, no VM).
const LINUX_CONFIG: &str = "# kata-rs configuration for the CRI tests' `kata-linux` handler.\n\
     [hypervisor.qemu]\n[runtime]\nname = \"linux_container\"\n";

/// A kata-rs configuration for the `kata-wasm` handler (`wasm_container`: WASI modules).
const WASM_CONFIG: &str = "# kata-rs configuration for the CRI tests' `kata-wasm` handler.\n\
     [hypervisor.qemu]\n[runtime]\nname = \"wasm_container\"\n";
/// The wasm image CRI pulls nothing for: imported by the test, one layer with `/hello.wasm`.
const WASM_IMAGE: &str = "localhost/kata-rs/cri-wasm:latest";
/// Writes "hello from wasm" to stdout and "to-err" to stderr, then exits 0.
const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello from wasm\0a")
  (data (i32.const 200) "to-err\0a")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 1) (i32.const 100) (i32.const 16))
    (call $write (i32.const 2) (i32.const 200) (i32.const 7))))"#;

/// `kata-vm-cache` for the `kata-cache` handler: stopped (SIGTERM: its VMs shut down, its
/// endpoint removed) on drop.
struct VmCacheProc {
    child: std::process::Child,
    endpoint: PathBuf,
    log: PathBuf,
}

impl VmCacheProc {
    /// The cache's (ready, hand-overs), once it answers.
    async fn status(&self) -> Result<(usize, u64)> {
        use kata_shim::vm_cache::{ask, Answer, Request};
        match ask(&self.endpoint, &Request::Status, Duration::from_secs(5)).await? {
            Answer::Status {
                ready, handed_over, ..
            } => Ok((ready, handed_over)),
            other => bail!("the VM cache's status answered {other:?}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for VmCacheProc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t0 = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment and what was there before the cases.
struct Env {
    cri: CriEnv,
    vm_cache: VmCacheProc,
    baseline_pod_netns: Vec<String>,
    baseline_kata_dirs: Vec<String>,
    _work: tempfile::TempDir,
}

/// The ids of one pod, for the leak checks.
#[derive(Debug, Default, Clone)]
struct PodIds {
    pod: String,
    containers: Vec<String>,
}

/// Runs the pod under `handler` and checks that nothing of it is left.
async fn pod_case(env: Arc<Env>, handler: &'static str) -> Result<()> {
    let cri = env.cri.client().await?;
    let mut ids = PodIds::default();
    let r = pod_lifecycle(&env, &cri, handler, &mut ids).await;
    if r.is_err() && !ids.pod.is_empty() {
        // Take the pod down whatever happened, so the next case starts clean.
        let _ = cri.stop_pod_sandbox(&ids.pod).await;
        let _ = cri.remove_pod_sandbox(&ids.pod).await;
    }
    let left = wait_nothing_left(&env, &ids, Duration::from_secs(20)).await;
    match (r, left) {
        (Err(e), Err(left)) => Err(e.context(format!("and after cleanup: {left:#}"))),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), left) => left.context("after RemovePodSandbox"),
    }
}

fn sandbox_config(env: &Env, handler: &str) -> Result<PodSandboxConfig> {
    let log_dir = env.cri.dir.join("logs").join(handler);
    std::fs::create_dir_all(&log_dir)?;
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("kt-{handler}"),
            uid: format!("kt-{handler}-uid-{}", std::process::id()),
            namespace: "kata-rs-test".into(),
            attempt: 0,
            ..Default::default()
        })
        .into(),
        hostname: format!("kt-{handler}-pod"),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(DNSConfig {
            servers: vec![DNS_SERVER.into()],
            searches: vec![DNS_SEARCH.into()],
            options: vec!["ndots:2".into()],
            ..Default::default()
        })
        .into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                // As the kubelet's default: a network and IPC namespace per pod, a PID
                // namespace per container.
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::POD.into(),
                    pid: NamespaceMode::CONTAINER.into(),
                    ipc: NamespaceMode::POD.into(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
}

fn container_config(env: &Env, name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
            ..Default::default()
        })
        .into(),
        image: Some(ImageSpec {
            image: env.cri.busybox.name.clone(),
            ..Default::default()
        })
        .into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

async fn pod_lifecycle(env: &Env, cri: &Client, handler: &str, ids: &mut PodIds) -> Result<()> {
    let config = sandbox_config(env, handler)?;
    let t0 = Instant::now();
    ids.pod = cri
        .run_pod_sandbox(&config, handler)
        .await
        .with_context(|| format!("RunPodSandbox with runtime_handler {handler}"))?;
    let pod = ids.pod.clone();
    if matches!(handler, "kata" | "kata-cache") {
        booted();
    }
    println!(
        "    {handler}: RunPodSandbox {:.1?}: pod {}",
        t0.elapsed(),
        &pod[..12]
    );

    let status = cri
        .pod_sandbox_status(&pod)
        .await
        .context("PodSandboxStatus")?;
    ensure!(
        status.state.enum_value() == Ok(PodSandboxState::SANDBOX_READY),
        "pod state {:?}",
        status.state
    );
    ensure!(
        status.runtime_handler == handler,
        "runtime_handler {:?}",
        status.runtime_handler
    );
    let ip: Ipv4Addr = status
        .network
        .ip
        .parse()
        .with_context(|| format!("pod IP {:?}", status.network.ip))?;
    ensure!(
        ip.octets()[..3] == [10, 88, 77],
        "pod IP {ip} is not in {SUBNET}"
    );

    // Two containers: a server and a client.
    let server_script = format!(
        "echo server-out; echo server-err >&2; mkdir -p /tmp/www; \
         echo hello-from-{handler} > /tmp/www/index.html; exec httpd -f -p {PORT} -h /tmp/www"
    );
    let server_cfg = container_config(env, "server", &server_script);
    let client_cfg = container_config(env, "client", "echo client-up; exec sleep 100000");
    let server = cri
        .create_container(&pod, &server_cfg, &config)
        .await
        .context("CreateContainer server")?;
    ids.containers.push(server.clone());
    let client = cri
        .create_container(&pod, &client_cfg, &config)
        .await
        .context("CreateContainer client")?;
    ids.containers.push(client.clone());
    for (name, id) in [("server", &server), ("client", &client)] {
        cri.start_container(id)
            .await
            .with_context(|| format!("StartContainer {name}"))?;
    }
    for (name, id) in [("server", &server), ("client", &client)] {
        let s = cri
            .container_status(id)
            .await
            .with_context(|| format!("ContainerStatus {name}"))?;
        ensure!(
            s.state.enum_value() == Ok(ContainerState::CONTAINER_RUNNING),
            "{name} is {:?} ({} {})",
            s.state,
            s.reason,
            s.message
        );
    }
    let listed = cri
        .list_containers(ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await
        .context("ListContainers")?;
    let mut listed_ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    listed_ids.sort();
    let mut want = vec![server.as_str(), client.as_str()];
    want.sort();
    ensure!(listed_ids == want, "ListContainers: {listed_ids:?}");

    // ExecSync: stdout, stderr and the exit code.
    let r = cri
        .exec_sync(
            &server,
            &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 3"],
            30,
        )
        .await
        .context("ExecSync")?;
    ensure!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code)
            == (&b"exec-out\n"[..], &b"exec-err\n"[..], 3),
        "ExecSync: stdout {:?}, stderr {:?}, exit {}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
        r.exit_code
    );

    // The client reaches the server over localhost (the pod's one network namespace).
    let want_body = format!("hello-from-{handler}");
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {PORT}");
    let t0 = Instant::now();
    loop {
        let r = cri
            .exec_sync(&client, &["sh", "-c", &get], 10)
            .await
            .context("ExecSync nc localhost")?;
        let out = String::from_utf8_lossy(&r.stdout);
        if out.contains(&want_body) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!(
                "the client did not reach the server on localhost:{PORT}: exit {}, stdout {out:?}, stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // /etc/hosts, /etc/hostname and /etc/resolv.conf are the files CRI wrote for the pod.
    let cri_dir = env
        .cri
        .dir
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&pod);
    for file in ["hostname", "hosts", "resolv.conf"] {
        let host = std::fs::read_to_string(cri_dir.join(file))
            .with_context(|| format!("CRI's {file} of the pod"))?;
        let r = cri
            .exec_sync(&client, &["cat", &format!("/etc/{file}")], 10)
            .await
            .with_context(|| format!("ExecSync cat /etc/{file}"))?;
        let inside = String::from_utf8_lossy(&r.stdout);
        ensure!(
            r.exit_code == 0 && inside == host,
            "/etc/{file} in the pod (exit {}) is {inside:?}, CRI wrote {host:?}",
            r.exit_code
        );
    }
    let hostname = std::fs::read_to_string(cri_dir.join("hostname"))?;
    ensure!(
        hostname.trim() == config.hostname,
        "CRI's hostname file {hostname:?}"
    );
    let resolv = std::fs::read_to_string(cri_dir.join("resolv.conf"))?;
    for want in [
        format!("nameserver {DNS_SERVER}"),
        format!("search {DNS_SEARCH}"),
        "options ndots:2".to_string(),
    ] {
        ensure!(
            resolv.contains(&want),
            "resolv.conf {resolv:?} lacks {want}"
        );
    }
    let r = cri.exec_sync(&client, &["hostname"], 10).await?;
    ensure!(
        String::from_utf8_lossy(&r.stdout).trim() == config.hostname,
        "hostname in the pod: {:?}",
        String::from_utf8_lossy(&r.stdout)
    );

    // The pod's address answers from the test's network namespace (the CNI bridge's side).
    let reply = env
        .cri
        .tcp_request(
            SocketAddr::from((ip, PORT)),
            b"GET / HTTP/1.0\r\n\r\n",
            Duration::from_secs(10),
        )
        .with_context(|| format!("the pod at {ip}:{PORT} from the test's namespace"))?;
    let reply = String::from_utf8_lossy(&reply);
    ensure!(reply.contains(&want_body), "{ip}:{PORT} answered {reply:?}");

    // The containers' logs, in CRI's format, at log_directory/log_path.
    let log_dir = Path::new(&config.log_directory);
    check_log(
        &log_dir.join("server.log"),
        &[("stdout", "server-out"), ("stderr", "server-err")],
    )
    .await?;
    check_log(&log_dir.join("client.log"), &[("stdout", "client-up")]).await?;

    // Stop and remove the containers, then the pod.
    for (name, id) in [("client", &client), ("server", &server)] {
        cri.stop_container(id, 2)
            .await
            .with_context(|| format!("StopContainer {name}"))?;
        let s = cri.container_status(id).await?;
        ensure!(
            s.state.enum_value() == Ok(ContainerState::CONTAINER_EXITED),
            "{name} after StopContainer: {:?}",
            s.state
        );
        cri.remove_container(id)
            .await
            .with_context(|| format!("RemoveContainer {name}"))?;
    }
    let listed = cri
        .list_containers(ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await?;
    ensure!(listed.is_empty(), "containers left: {listed:?}");
    cri.stop_pod_sandbox(&pod).await.context("StopPodSandbox")?;
    let status = cri.pod_sandbox_status(&pod).await?;
    ensure!(
        status.state.enum_value() == Ok(PodSandboxState::SANDBOX_NOTREADY),
        "after StopPodSandbox: {:?}",
        status.state
    );
    cri.remove_pod_sandbox(&pod)
        .await
        .context("RemovePodSandbox")?;
    match cri.pod_sandbox_status(&pod).await {
        Err(e) if e.code() == Some(5) => {}
        other => bail!("PodSandboxStatus after RemovePodSandbox: {other:?}"),
    }
    Ok(())
}

/// Waits (10 s) until the log at `path` has each `(stream, text)` as a full CRI log line,
/// `<RFC3339Nano> <stream> F <text>`, and checks that every line is in CRI's format.
async fn check_log(path: &Path, want: &[(&str, &str)]) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut found = vec![false; want.len()];
        for line in text.lines() {
            let parsed = cri_log::parse_line(line)
                .with_context(|| format!("{}: not a CRI log line: {line:?}", path.display()))?;
            for (i, (stream, text)) in want.iter().enumerate() {
                if parsed.stream == *stream && !parsed.partial && parsed.text == *text {
                    found[i] = true;
                }
            }
        }
        if found.iter().all(|f| *f) {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("{}: want {want:?}, the log is {text:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What of the pod is still there: processes naming it or its containers (shims, QEMU,
/// virtiofsd, the vsock backend), its kata-rs sandbox directory, mounts naming it (rootfs,
/// `/dev/shm`, shared directories), its network namespace (with its veth end, taps and tc
/// filters), veths on the bridge's side, host-local addresses.
fn pod_leftovers(env: &Env, ids: &PodIds) -> Vec<String> {
    let mut left = Vec::new();
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // A pod that failed to start has no id: its sandbox directory is found by being new.
    let new_dirs: Vec<String> = kata_dirs()
        .into_iter()
        .filter(|d| !env.baseline_kata_dirs.contains(d))
        .collect();
    for dir in &new_dirs {
        left.push(format!("directory /run/kata/{dir}"));
    }
    let names: Vec<&str> = std::iter::once(ids.pod.as_str())
        .chain(ids.containers.iter().map(String::as_str))
        .chain(new_dirs.iter().map(String::as_str))
        .filter(|s| !s.is_empty())
        .collect();
    for (pid, cmd) in cmdlines() {
        if !cmd.contains(&me) && names.iter().any(|n| cmd.contains(n)) {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    left.extend(our_shims(env).into_iter().map(|s| format!("shim {s}")));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if names.iter().any(|n| line.contains(n)) {
            left.push(format!("mount {line}"));
        }
    }
    // containerd's bundles and CRI's directories of the pod and its containers.
    for name in &names {
        for dir in [
            env.cri
                .dir
                .join("state/io.containerd.runtime.v2.task/k8s.io")
                .join(name),
            env.cri
                .dir
                .join("root/io.containerd.grpc.v1.cri/sandboxes")
                .join(name),
            env.cri
                .dir
                .join("state/io.containerd.grpc.v1.cri/sandboxes")
                .join(name),
            env.cri
                .dir
                .join("root/io.containerd.grpc.v1.cri/containers")
                .join(name),
        ] {
            if dir.exists() {
                left.push(format!("directory {}", dir.display()));
            }
        }
    }
    let netns = cri_pod_netns();
    for ns in netns.iter().filter(|n| !env.baseline_pod_netns.contains(n)) {
        // With its links: the veth end and, under kata, the taps the tc filters join.
        let links = std::process::Command::new("ip")
            .args(["-n", ns, "-o", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let links: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(str::trim))
            .collect();
        left.push(format!(
            "pod network namespace /run/netns/{ns} (links {links:?})"
        ));
    }
    for link in env.cri.netns.links() {
        if link != "lo" && link != CNI_BRIDGE {
            left.push(format!("link {link} in {}", env.cri.netns.name()));
        }
    }
    for ip in env.cri.ipam_allocations() {
        left.push(format!("host-local address {ip}"));
    }
    left
}

async fn wait_nothing_left(env: &Env, ids: &PodIds, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let left = pod_leftovers(env, ids);
        if left.is_empty() {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("left behind after {timeout:?}:\n  {}", left.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The kata-rs sandbox directories of CRI pods, `/run/kata/<id>` (CRI's ids are 64 hex
/// digits; other tests' sandboxes, if any run meanwhile, are named otherwise).
fn kata_dirs() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/kata")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The shims of this run's containerd still running (their command line names its socket).
fn our_shims(env: &Env) -> Vec<String> {
    let socket = env.cri.containerd.socket().display().to_string();
    cmdlines()
        .into_iter()
        .filter(|(_, c)| c.contains("containerd-shim") && c.contains(&socket))
        .map(|(pid, c)| format!("{pid}: {c}"))
        .collect()
}

fn missing() -> Option<String> {
    if let Some(reason) = CriEnv::missing() {
        return Some(reason);
    }
    if let Some(reason) = kata_testkit::missing_root_or_tools(&["runc", "qemu-system-x86_64"]) {
        return Some(reason);
    }
    if !kata_hypervisor::GuestManifest::default_path().is_file() {
        return Some("no guest image (run `make guest`)".into());
    }
    None
}

async fn setup() -> Result<Env> {
    let work = tempfile::Builder::new().prefix("kata-shim-cri").tempdir()?;
    let dir = work.path().to_path_buf();
    let kata_config = dir.join("kata-rs.toml");
    std::fs::write(&kata_config, KATA_CONFIG)?;
    let linux_config = dir.join("kata-rs-linux.toml");
    std::fs::write(&linux_config, LINUX_CONFIG)?;
    let wasm_config = dir.join("kata-rs-wasm.toml");
    std::fs::write(&wasm_config, WASM_CONFIG)?;
    let cache_config = dir.join("kata-rs-cache.toml");
    let cache_endpoint = dir.join("vm-cache.sock");
    std::fs::write(
        &cache_config,
        format!(
            "# kata-rs configuration for the CRI tests' `kata-cache` handler.\n\
             [hypervisor.qemu]\n[factory]\nvm_cache_number = 1\nvm_cache_endpoint = \"{}\"\n",
            cache_endpoint.display()
        ),
    )?;
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let options = CriOptions {
        handlers: vec![
            Handler {
                name: "runc".into(),
                runtime_type: "io.containerd.runc.v2".into(),
                config_path: None,
            },
            Handler {
                name: "kata".into(),
                runtime_type: "io.containerd.kata.v2".into(),
                config_path: Some(kata_config),
            },
            Handler {
                name: "kata-linux".into(),
                runtime_type: "io.containerd.kata.v2".into(),
                config_path: Some(linux_config),
            },
            Handler {
                name: "kata-wasm".into(),
                runtime_type: "io.containerd.kata.v2".into(),
                config_path: Some(wasm_config),
            },
            Handler {
                name: "kata-cache".into(),
                runtime_type: "io.containerd.kata.v2".into(),
                config_path: Some(cache_config.clone()),
            },
        ],
        subnet: SUBNET.into(),
        path_first: shim.parent().map(Path::to_path_buf),
    };
    let baseline_pod_netns = cri_pod_netns();
    let baseline_kata_dirs = kata_dirs();
    let cri = CriEnv::start(
        &dir,
        &format!("kata-rs-cri-{}", std::process::id()),
        &options,
    )
    .await?;
    let client = cri.client().await?;
    let version = client.version().await?;
    println!(
        "    CRI: {} {} (API {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );
    // Both images are there for CRI, by the names the pods use.
    for image in [&cri.pause.name, &cri.busybox.name] {
        client
            .image_status(image)
            .await?
            .with_context(|| format!("CRI does not see the imported image {image}"))?;
    }
    let listed = client.list_images().await?;
    ensure!(listed.len() >= 2, "ListImages: {listed:?}");
    import_wasm_image(&cri, &dir)?;
    // The VM cache boots its VM while the other cases run; the shims' root is its root.
    let log = dir.join("vm-cache.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kata-vm-cache"))
        .arg("--config")
        .arg(&cache_config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("spawning kata-vm-cache")?;
    let vm_cache = VmCacheProc {
        child,
        endpoint: cache_endpoint,
        log,
    };
    Ok(Env {
        cri,
        vm_cache,
        baseline_pod_netns,
        baseline_kata_dirs,
        _work: work,
    })
}

/// The pod under the `kata-cache` handler: its VM from `kata-vm-cache`, the pod's network
/// and cgroups joined at the hand-over; all of [`pod_case`]'s checks, and the hand-over's.
async fn cached_pod_case(env: Arc<Env>) -> Result<()> {
    let cache = &env.vm_cache;
    let t0 = Instant::now();
    let handed_before = loop {
        match cache.status().await {
            Ok((ready, handed)) if ready >= 1 => break handed,
            _ if t0.elapsed() > Duration::from_secs(240) => {
                bail!("the VM cache did not fill:\n{}", cache.log())
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    pod_case(env.clone(), "kata-cache")
        .await
        .map_err(|e| e.context(format!("the VM cache's log:\n{}", cache.log())))?;
    let (_, handed) = cache.status().await?;
    ensure!(
        handed == handed_before + 1,
        "the pod did not run in a VM from the cache (hand-overs {handed_before} -> {handed})"
    );
    // The handed-over VM's directory (it keeps the cache's name) went with the pod.
    let log = cache.log();
    let dir = log
        .lines()
        .filter(|l| l.contains("VM handed over"))
        .filter_map(|l| l.split(kata_shim::vm_cache::ID_PREFIX).nth(1))
        .map(|rest| {
            let id: String = rest
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            format!("{}{id}", kata_shim::vm_cache::ID_PREFIX)
        })
        .next_back()
        .with_context(|| format!("no hand-over in the VM cache's log:\n{log}"))?;
    let path = Path::new("/run/kata").join(&dir);
    ensure!(
        !path.exists(),
        "the handed-over VM's directory {} is left",
        path.display()
    );
    Ok(())
}

/// Builds the wasm image (one layer: `/hello.wasm`) and imports it for CRI.
fn import_wasm_image(cri: &CriEnv, dir: &Path) -> Result<()> {
    use kata_testkit::image::layout::{ImageSpec as Layout, IndexEntry, LayoutWriter, TarBuilder};
    let mut layer = TarBuilder::new();
    layer.file("hello.wasm", 0o644, 0, 0, &wat::parse_str(HELLO_WAT)?);
    let mut writer = LayoutWriter::new();
    let added = writer.add_image(&Layout {
        layers: vec![layer.finish()],
        gzip: true,
        cmd: vec!["/hello.wasm".to_owned()],
        ..Layout::default()
    });
    writer.add_index_entry(IndexEntry::new(
        &added.manifest,
        &[
            ("io.containerd.image.name", WASM_IMAGE),
            ("org.opencontainers.image.ref.name", "latest"),
        ],
    ));
    let tar = dir.join("wasm-image.tar");
    writer.write_tar(&tar, false)?;
    cri.containerd
        .ok(&["image", "import", &tar.display().to_string()])?;
    Ok(())
}

/// A RuntimeClass selecting `wasm_container`: the pod's sandbox container is the handler's own
/// waiting module, its container a WASI module from an image; its output reaches CRI's log,
/// its exit code the container status; stop and remove leave nothing.
async fn wasm_pod_case(env: Arc<Env>) -> Result<()> {
    let cri = env.cri.client().await?;
    let mut ids = PodIds::default();
    let r = wasm_pod_lifecycle(&env, &cri, &mut ids).await;
    if r.is_err() && !ids.pod.is_empty() {
        let _ = cri.stop_pod_sandbox(&ids.pod).await;
        let _ = cri.remove_pod_sandbox(&ids.pod).await;
    }
    let left = wait_nothing_left(&env, &ids, Duration::from_secs(20)).await;
    match (r, left) {
        (Err(e), Err(left)) => Err(e.context(format!("and after cleanup: {left:#}"))),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), left) => left.context("after RemovePodSandbox"),
    }
}

async fn wasm_pod_lifecycle(env: &Env, cri: &Client, ids: &mut PodIds) -> Result<()> {
    let handler = "kata-wasm";
    let config = sandbox_config(env, handler)?;
    ids.pod = cri
        .run_pod_sandbox(&config, handler)
        .await
        .with_context(|| format!("RunPodSandbox with runtime_handler {handler}"))?;
    let pod = ids.pod.clone();
    let status = cri.pod_sandbox_status(&pod).await?;
    ensure!(
        status.state.enum_value() == Ok(PodSandboxState::SANDBOX_READY)
            && status.runtime_handler == handler,
        "pod {:?} under {:?}",
        status.state,
        status.runtime_handler
    );
    let cfg = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "hello".into(),
            attempt: 0,
            ..Default::default()
        })
        .into(),
        image: Some(ImageSpec {
            image: WASM_IMAGE.into(),
            ..Default::default()
        })
        .into(),
        log_path: "hello.log".into(),
        ..Default::default()
    };
    let id = cri
        .create_container(&pod, &cfg, &config)
        .await
        .context("CreateContainer hello (wasm)")?;
    ids.containers.push(id.clone());
    cri.start_container(&id).await.context("StartContainer")?;
    let t0 = Instant::now();
    let exited = loop {
        let s = cri.container_status(&id).await?;
        if s.state.enum_value() == Ok(ContainerState::CONTAINER_EXITED) {
            break s;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "the module did not exit within 30 s: {:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(exited.exit_code == 0, "exit code {}", exited.exit_code);
    let log_dir = env.cri.dir.join("logs").join(handler);
    check_log(
        &log_dir.join("hello.log"),
        &[("stdout", "hello from wasm"), ("stderr", "to-err")],
    )
    .await?;
    cri.remove_container(&id).await.context("RemoveContainer")?;
    cri.stop_pod_sandbox(&pod).await.context("StopPodSandbox")?;
    cri.remove_pod_sandbox(&pod)
        .await
        .context("RemovePodSandbox")?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    Suite::new("cri")
        .label("CRI tests")
        .requires(missing)
        .timeout(Duration::from_secs(600))
        .case("runc_pod_reference", |env| pod_case(env, "runc"))
        .case("kata_pod", |env| pod_case(env, "kata"))
        .case("kata_linux_pod", |env| pod_case(env, "kata-linux"))
        .case("kata_wasm_pod", wasm_pod_case)
        .case("kata_pod_from_the_vm_cache", cached_pod_case)
        .leak_check(|env: &Env| {
            let left = pod_leftovers(env, &PodIds::default());
            ensure!(left.is_empty(), "left: {left:?}");
            Ok(())
        })
        .diagnostics(|env: &Env| {
            let log = env.cri.containerd.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let mut out = String::from("--- containerd log (last lines) ---");
            for l in tail.into_iter().rev() {
                out.push('\n');
                out.push_str(l);
            }
            out
        })
        .teardown("teardown_leaves_nothing", |env: Env| async move {
            let netns = env.cri.netns.path().to_path_buf();
            let dir = env.cri.dir.clone();
            drop(env);
            ensure!(!netns.exists(), "{} is still there", netns.display());
            let mounts = mounts_under(&dir);
            ensure!(
                mounts.is_empty(),
                "mounts left under {}: {mounts:?}",
                dir.display()
            );
            Ok(())
        })
        .run_with(setup())
}
