//! Tier 3: the VM cache with real guests. `kata-vm-cache` runs as its own process with
//! `[factory] vm_cache_number = 2`; the shim server runs as containerd's `start` runs it (as
//! tests/vm_shim_reconnect.rs does) and a pod — its sandbox container, then an app container
//! joining it — goes through Create, Start, Wait and Delete over ttRPC. Checked: the pod ran
//! in a VM from the cache (the cache's `status` counts one hand-over, its log names the VM,
//! the pod's directory is a `vmcache-` one), the guest was re-keyed (the app sees the pod's
//! hostname) and reseeded (the shim logs the agent's answer), the cache refills, and after
//! SIGTERM to the cache nothing is left (processes, mounts, sockets, directories). A second
//! pod has a network namespace (a veth pair as CNI leaves it) and a host cgroup of its own,
//! as every CRI pod has: it runs in a VM from the cache too, its app sees the pod's address
//! on a hot-plugged NIC, QEMU runs in the pod's cgroup, and after it no tap, filter or cgroup
//! is left. Then the same pod with the cache stopped boots a VM itself (logged). Prints the pod's Create time
//! from the cache and from a fresh boot, and their ratio (one run). Runs under
//! `kata_testkit::harness`; appends `booted ...` to `$KATA_RS_VM_TEST_LOG`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use containerd_shim::protos::shim::shim::{
    CreateTaskRequest, DeleteRequest, ShutdownRequest, StartRequest, WaitRequest,
};
use containerd_shim::protos::shim_async::{Client, TaskClient};
use containerd_shim::protos::ttrpc::context;
use kata_shim::vm_cache::{ask, Answer, Request, ID_PREFIX};
use kata_testkit::cri::env::NetNs;
use kata_testkit::harness::{booted, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

const NS: &str = "kata-rs-vm-cache";
const SELF: &str = "vm_vm_cache";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

struct Paths {
    tmp: PathBuf,
    root: PathBuf,
    config: PathBuf,
    endpoint: PathBuf,
    _work: tempfile::TempDir,
}

impl Paths {
    fn bundle(&self, id: &str) -> PathBuf {
        self.tmp.join("bundles").join(id)
    }
    fn socket(&self, id: &str) -> PathBuf {
        self.tmp.join(format!("shim-{id}.sock"))
    }
    fn cache_log(&self) -> PathBuf {
        self.tmp.join("cache.log")
    }
}

/// A bundle (busybox inside it) running `script`, its spec naming `hostname` if any.
fn bundle(
    p: &Paths,
    id: &str,
    script: &str,
    hostname: Option<&str>,
    annotations: &[(&str, &str)],
    pod: Option<&PodHost>,
) -> Result<PathBuf> {
    let dir = p.bundle(id);
    std::fs::create_dir_all(&dir)?;
    kata_testkit::image::busybox_rootfs(&dir.join("rootfs"))?;
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.set_hostname(hostname.map(str::to_string));
    spec.set_annotations(Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    ));
    spec.set_root(Some(
        oci_spec::runtime::RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()?,
    ));
    if let Some(pod) = pod {
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
        namespaces.push(
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(oci_spec::runtime::LinuxNamespaceType::Network)
                .path(pod.netns.path())
                .build()?,
        );
        linux.set_namespaces(Some(namespaces));
        linux.set_cgroups_path(Some(PathBuf::from(&pod.cgroups_path)));
        spec.set_linux(Some(linux));
    }
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(dir)
}

/// A pod's own host side, as the kubelet and CNI leave it: a network namespace whose `eth0`
/// (a veth, `POD_IP`, default route via its peer in a second namespace) the VM is to join,
/// and a `linux.cgroupsPath`.
struct PodHost {
    netns: NetNs,
    _peer: NetNs,
    cgroups_path: String,
}

const POD_IP: &str = "10.214.0.2";
const GATEWAY_IP: &str = "10.214.0.1";
/// The pod's cgroup parent (made by the runtime, removed with the pod).
const CGROUP_PARENT: &str = "kata-rs-vm-cache-test";

impl PodHost {
    fn new() -> Result<PodHost> {
        let pid = std::process::id();
        let netns = NetNs::add(&format!("kata-rs-vmcache-pod-{pid}"), true)?;
        let peer = NetNs::add(&format!("kata-rs-vmcache-peer-{pid}"), true)?;
        netns.exec(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "peer0",
                "netns",
                peer.name(),
            ],
        )?;
        netns.exec(
            "ip",
            &["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"],
        )?;
        netns.exec("ip", &["link", "set", "eth0", "up"])?;
        netns.exec("ip", &["route", "add", "default", "via", GATEWAY_IP])?;
        peer.exec(
            "ip",
            &["addr", "add", &format!("{GATEWAY_IP}/24"), "dev", "peer0"],
        )?;
        peer.exec("ip", &["link", "set", "peer0", "up"])?;
        Ok(PodHost {
            netns,
            _peer: peer,
            cgroups_path: format!("/{CGROUP_PARENT}/pod-net-{}", std::process::id()),
        })
    }

    /// Nothing of kata-rs left on the pod's side: no tap in its namespace, nothing on
    /// `eth0`'s ingress, no cgroup under the test's parent.
    fn nothing_left(&self) -> Result<()> {
        let links = self.netns.exec("ip", &["-details", "link", "show"])?;
        ensure!(
            !links.contains("tun "),
            "a tap is left in the pod's namespace:\n{links}"
        );
        let ingress = self
            .netns
            .exec("tc", &["filter", "show", "dev", "eth0", "ingress"])?;
        ensure!(
            ingress.trim().is_empty(),
            "left on eth0's ingress:\n{ingress}"
        );
        let mut cgroups = kata_testkit::leaks::cgroup_dirs(CGROUP_PARENT);
        cgroups.extend(kata_testkit::leaks::cgroup_dirs("kata_overhead/pod-net"));
        ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        Ok(())
    }
}

/// Starts the shim server of sandbox `id` as containerd's `start` would (its log in
/// `<bundle>/log`); returns once it listens.
fn start_shim(p: &Paths, id: &str) -> Result<Child> {
    let bundle = p.bundle(id);
    std::fs::write(bundle.join("log"), "")?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    cmd.args(["-namespace", NS, "-id", id, "-address"])
        .arg(p.tmp.join("containerd.sock"))
        .arg("-socket")
        .arg(format!("unix://{}", p.socket(id).display()))
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", p.tmp.join("containerd.sock.ttrpc"))
        .env("KATA_RS_ROOT_DIR", &p.root)
        .env("KATA_CONF_FILE", &p.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().context("spawning the shim server")?;
    let mut sink = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    ensure!(
        child.try_wait()?.is_none(),
        "the shim server exited at start"
    );
    Ok(child)
}

/// Starts `kata-vm-cache` with the test's configuration, its log in `cache.log`.
fn start_cache(p: &Paths) -> Result<Child> {
    let log = std::fs::File::create(p.cache_log())?;
    Command::new(env!("CARGO_BIN_EXE_kata-vm-cache"))
        .arg("--config")
        .arg(&p.config)
        .env("KATA_RS_ROOT_DIR", &p.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("spawning kata-vm-cache")
}

/// The cache's (ready, size, handed over), once it answers.
async fn status(p: &Paths) -> Result<(usize, usize, u64)> {
    match ask(&p.endpoint, &Request::Status, Duration::from_secs(5)).await? {
        Answer::Status {
            ready,
            size,
            handed_over,
        } => Ok((ready, size, handed_over)),
        other => bail!("status answered {other:?}"),
    }
}

/// Waits until the cache has `ready` VMs booted.
async fn wait_ready(p: &Paths, cache: &mut Child, ready: usize) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = cache.try_wait()? {
            bail!(
                "kata-vm-cache exited ({st}):\n{}",
                std::fs::read_to_string(p.cache_log()).unwrap_or_default()
            );
        }
        if let Ok((r, _, _)) = status(p).await {
            if r >= ready {
                return Ok(());
            }
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(240),
            "the cache did not fill:\n{}",
            std::fs::read_to_string(p.cache_log()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(120).as_nanos() as i64)
}

/// What a pod's run shows.
struct PodRun {
    /// The sandbox container's Create (the sandbox's start).
    create: Duration,
    /// The app's output.
    output: String,
    /// The shim's log.
    shim_log: String,
}

/// A pod as the kubelet makes it: the sandbox container (`true`, hostname `hostname`, the
/// host side of `pod` if any), then an app joining it that runs `hostname` (and with `pod`,
/// shows the guest's IPv4 addresses and routes); each Created, Started, Waited for (exit
/// 0); `running` checks the host while the pod is up; Deleted; then Shutdown, and the shim
/// server exits.
async fn run_pod(
    p: &Paths,
    id: &str,
    hostname: &str,
    pod: Option<&PodHost>,
    running: impl Fn() -> Result<()>,
) -> Result<PodRun> {
    let app = format!("{id}-app");
    bundle(
        p,
        id,
        "true",
        Some(hostname),
        &[(CONTAINER_TYPE, "sandbox")],
        pod,
    )?;
    let script = match pod {
        Some(_) => "hostname; ip -o -4 addr show; ip route show",
        None => "hostname",
    };
    bundle(
        p,
        &app,
        script,
        None,
        &[(CONTAINER_TYPE, "container"), (SANDBOX_ID, id)],
        None,
    )?;
    let mut server = start_shim(p, id)?;
    let c = Client::connect(&format!("unix://{}", p.socket(id).display()))
        .await
        .context("connecting to the shim")?;
    let task = TaskClient::new(c);
    let out = p.tmp.join(format!("{app}.out"));
    let mut create = Duration::ZERO;
    for cid in [id, app.as_str()] {
        let t = Instant::now();
        task.create(
            ctx(),
            &CreateTaskRequest {
                id: cid.into(),
                bundle: p.bundle(cid).display().to_string(),
                stdout: if cid == app {
                    format!("file://{}", out.display())
                } else {
                    String::new()
                },
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("Create {cid}"))?;
        if cid == id {
            create = t.elapsed();
            booted();
        }
        task.start(
            ctx(),
            &StartRequest {
                id: cid.into(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("Start {cid}"))?;
        let waited = task
            .wait(
                ctx(),
                &WaitRequest {
                    id: cid.into(),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("Wait {cid}"))?;
        ensure!(
            waited.exit_status == 0,
            "{cid} exited {}",
            waited.exit_status
        );
    }
    if let Err(e) = running() {
        let log = std::fs::read_to_string(p.bundle(id).join("log")).unwrap_or_default();
        return Err(e.context(format!("the shim's log:\n{log}")));
    }
    for cid in [app.as_str(), id] {
        task.delete(
            ctx(),
            &DeleteRequest {
                id: cid.into(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("Delete {cid}"))?;
    }
    let _ = task
        .shutdown(
            ctx(),
            &ShutdownRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await;
    let t0 = Instant::now();
    while server.try_wait()?.is_none() {
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "the shim did not exit on Shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(PodRun {
        create,
        output: std::fs::read_to_string(&out).unwrap_or_default(),
        shim_log: std::fs::read_to_string(p.bundle(id).join("log")).unwrap_or_default(),
    })
}

async fn scenario(p: &Paths) -> Result<()> {
    let mut cache = start_cache(p)?;
    let result = async {
        wait_ready(p, &mut cache, 2).await?;
        let (ready, size, handed) = status(p).await?;
        ensure!(
            (ready, size, handed) == (2, 2, 0),
            "status {:?}",
            (ready, size, handed)
        );
        let cached = run_pod(p, "pod-cached", "vm-cached-pod", None, || Ok(())).await?;
        // From the cache: one hand-over, logged by both sides.
        let (_, _, handed) = status(p).await?;
        ensure!(handed == 1, "hand-overs: {handed}");
        let cache_log = std::fs::read_to_string(p.cache_log())?;
        ensure!(
            cache_log
                .lines()
                .any(|l| l.contains("VM handed over") && l.contains(ID_PREFIX)),
            "the cache did not log a hand-over:\n{cache_log}"
        );
        ensure!(
            cached.shim_log.contains("sandbox taken from the VM cache"),
            "the shim did not take a VM from the cache:\n{}",
            cached.shim_log
        );
        // Re-keyed: the app, in the pod's UTS namespace, sees the pod's hostname.
        ensure!(
            cached.output == "vm-cached-pod\n",
            "the app saw hostname {:?} (not the pod's)\n{}",
            cached.output,
            cached.shim_log
        );
        // Reseeded: the agent answered ReseedRandomDev for the pod.
        ensure!(
            cached
                .shim_log
                .lines()
                .any(|l| l.contains("random pool reseeded") && l.contains("pod-cached")),
            "no reseed in the shim's log:\n{}",
            cached.shim_log
        );
        // The cache refills.
        wait_ready(p, &mut cache, 2).await?;
        // A pod with a network namespace and a host cgroup of its own, as CRI makes them.
        let host = PodHost::new()?;
        let in_pod_cgroup = || -> Result<()> {
            let dir = kata_shim::vm_cache::sandbox_dir(&p.root, "pod-net");
            ensure!(
                dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with(ID_PREFIX)),
                "pod-net's directory is not the cache's: {}",
                dir.display()
            );
            let qemu: Vec<(u32, String)> = processes_mentioning(&dir.display().to_string(), SELF)
                .into_iter()
                .filter(|(_, c)| c.contains("qemu-system"))
                .collect();
            ensure!(qemu.len() == 1, "QEMU of pod-net: {qemu:?}");
            // The pod's sandbox cgroup, or on cgroup v1 with `sandbox_cgroup_only = false`
            // (Kata's default) its overhead cgroup, as a fresh boot of the pod puts it.
            let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", qemu[0].0))?;
            let cpu = cgroup
                .lines()
                .find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "cpu")))
                .or_else(|| cgroup.lines().find(|l| l.starts_with("0::")))
                .unwrap_or_default();
            ensure!(
                cpu.ends_with(&host.cgroups_path) || cpu.ends_with(":/kata_overhead/pod-net"),
                "QEMU of pod-net is not in the pod's cgroups ({}):\n{cgroup}",
                host.cgroups_path
            );
            let cache_cgroups = kata_testkit::leaks::cgroup_dirs("kata_sandboxed_pod")
                .into_iter()
                .chain(kata_testkit::leaks::cgroup_dirs("kata_overhead"))
                .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
                .filter(|e| e.file_name().to_string_lossy().starts_with(ID_PREFIX))
                .map(|e| e.path())
                .collect::<Vec<_>>();
            ensure!(
                !cache_cgroups.iter().any(|c| dir.ends_with(c.file_name().unwrap_or_default())),
                "the cache's cgroups of pod-net's VM are left: {cache_cgroups:?}"
            );
            Ok(())
        };
        let net = run_pod(p, "pod-net", "vm-net-pod", Some(&host), in_pod_cgroup).await?;
        let (_, _, handed) = status(p).await?;
        ensure!(handed == 2, "hand-overs after the networked pod: {handed}");
        ensure!(
            net.shim_log.contains("sandbox taken from the VM cache"),
            "the networked pod did not take a VM from the cache:\n{}",
            net.shim_log
        );
        ensure!(
            net.output.contains(&format!("inet {POD_IP}/24"))
                && net.output.contains(&format!("default via {GATEWAY_IP}")),
            "the app did not see the pod's address and route:\n{}\n{}",
            net.output,
            net.shim_log
        );
        host.nothing_left()?;
        // The cache refills, then stops on SIGTERM leaving nothing.
        wait_ready(p, &mut cache, 2).await?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(cache.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = cache.try_wait()? {
                break st;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "the cache did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(st.success(), "kata-vm-cache exited {st}");
        nothing_left(p)?;

        // The cache down: the same pod boots its own VM.
        let fresh = run_pod(p, "pod-fresh", "vm-fresh-pod", None, || Ok(())).await?;
        ensure!(
            fresh.output == "vm-fresh-pod\n",
            "fresh: {:?}",
            fresh.output
        );
        ensure!(
            fresh.shim_log.contains("VM cache down"),
            "the fallback is not logged:\n{}",
            fresh.shim_log
        );
        let taken = logged_duration(&cached.shim_log, "sandbox taken from the VM cache", "took")?;
        let booted = logged_duration(&fresh.shim_log, "sandbox ready", "ready")?;
        println!(
            "    sandbox ready: from the cache {taken:.2?}, fresh boot {booted:.2?}: {:.3}x",
            taken.as_secs_f64() / booted.as_secs_f64()
        );
        println!(
            "    pod start (sandbox container's Create): from the cache {:.2?}, fresh boot {:.2?}: {:.3}x",
            cached.create,
            fresh.create,
            cached.create.as_secs_f64() / fresh.create.as_secs_f64()
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = cache.kill();
    }
    let _ = cache.wait();
    result
}

/// The duration in field `field` (Rust's `Debug` form: `1.2s`, `35.1ms`, `80µs`) of the
/// first line of `log` containing `msg`.
fn logged_duration(log: &str, msg: &str, field: &str) -> Result<Duration> {
    let line = log
        .lines()
        .find(|l| l.contains(msg))
        .with_context(|| format!("no {msg:?} line in the shim's log"))?;
    let key = format!(" {field}=");
    let at = line
        .find(&key)
        .with_context(|| format!("no {field} in {line}"))?;
    let value: String = line[at + key.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let value = value.trim_matches('"');
    let (number, scale) = if let Some(v) = value.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = value.strip_suffix("µs") {
        (v, 1e-6)
    } else if let Some(v) = value.strip_suffix("ns") {
        (v, 1e-9)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1.0)
    } else {
        bail!("{field}={value}: not a duration")
    };
    let n: f64 = number.parse().with_context(|| format!("{field}={value}"))?;
    Ok(Duration::from_secs_f64(n * scale))
}

/// The configuration (built-in guest, the cache on) and a listener standing in for
/// containerd's event socket.
fn prepare() -> Result<Paths> {
    let work = tempfile::tempdir()?;
    let tmp = work.path().to_path_buf();
    let p = Paths {
        root: tmp.join("sandboxes"),
        config: tmp.join("configuration.toml"),
        endpoint: tmp.join("cache.sock"),
        tmp,
        _work: work,
    };
    std::fs::write(
        &p.config,
        format!(
            "[hypervisor.qemu]\n\n[factory]\nvm_cache_number = 2\nvm_cache_endpoint = \"{}\"\n",
            p.endpoint.display()
        ),
    )?;
    let listener = std::os::unix::net::UnixListener::bind(p.tmp.join("containerd.sock.ttrpc"))?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    Ok(p)
}

/// Nothing of the run is left: no process naming the root, no sandbox directory, no mount,
/// no cache endpoint.
fn nothing_left(p: &Paths) -> Result<()> {
    let left = processes_mentioning(&p.root.display().to_string(), SELF);
    ensure!(left.is_empty(), "processes left: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(&p.root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(dirs.is_empty(), "sandbox directories left: {dirs:?}");
    let mounts = mounts_under(&p.root);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    ensure!(!p.endpoint.exists(), "the cache's endpoint is left");
    Ok(())
}

/// After a failure: the cache and shim servers killed, every sandbox cleaned up.
fn kill_and_clean_up(p: &Paths) {
    for (pid, _) in processes_mentioning(&p.tmp.display().to_string(), SELF) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    for e in std::fs::read_dir(&p.root).into_iter().flatten().flatten() {
        let _ = kata_sandbox::persist::cleanup(&e.path());
    }
    let _ = std::fs::remove_file(&p.endpoint);
}

fn main() -> std::process::ExitCode {
    Suite::new(SELF)
        .requires(|| (!nix::unistd::geteuid().is_root()).then(|| "needs root".to_string()))
        .timeout(Duration::from_secs(600))
        .case("pod_from_the_cache", |p: Arc<Paths>| async move {
            scenario(&p).await
        })
        .check_each(nothing_left)
        .on_failure(kill_and_clean_up)
        .run_with(async { prepare() })
}
