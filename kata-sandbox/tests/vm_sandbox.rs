//! Tier 3: the public API against a real guest (QEMU, KVM where usable, else TCG).
//!
//! One sandbox is booted (the setup) and shared by the container cases; the boot cases boot
//! (or try to boot) their own. The cases run under `kata_testkit::harness` (filter:
//! `cargo test -p kata-sandbox --test vm_sandbox -- <case>`): after each one nothing of it may
//! stay shared or mounted, and after the run no QEMU or vsock backend process, socket or
//! sandbox directory may remain (the teardown, `shutdown_leaves_nothing`, checks that).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_sandbox::{ContainerSpec, ProcessSpec, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/agent_trace.rs"]
mod agent_trace;

/// What the cases share: the booted sandbox, a busybox rootfs, the sandboxes' root.
struct Env {
    sandbox: Sandbox,
    rootfs: PathBuf,
    root_dir: PathBuf,
    _work: tempfile::TempDir,
}

fn spec(env: &Env, args: &[&str]) -> ContainerSpec {
    ContainerSpec::from_rootfs_dir(&env.rootfs).args(args.iter().copied())
}

async fn run(env: &Env, args: &[&str]) -> Result<kata_sandbox::Output> {
    Ok(env.sandbox.run(spec(env, args)).await?)
}

async fn case_agent_health_and_details(env: Arc<Env>) -> Result<()> {
    // The sandbox says what runs it; the agent answered CreateSandbox, and answers a
    // container's pids.
    let facts = env.sandbox.describe();
    let fact = |k: &str| {
        facts
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    ensure!(
        fact("handler").as_deref() == Some("virt_container"),
        "{facts:?}"
    );
    ensure!(fact("hypervisor").as_deref() == Some("qemu"), "{facts:?}");
    ensure!(fact("accelerator").is_some(), "{facts:?}");
    ensure!(
        !env.sandbox.host_pids().is_empty(),
        "QEMU is a host process"
    );
    let c = env
        .sandbox
        .create_container(spec(&env, &["sleep", "30"]))
        .await?;
    c.start().await?;
    ensure!(!c.pids().await?.is_empty(), "no pids in the guest");
    c.kill(kata_sandbox::Signal::KILL).await?;
    c.wait().await?;
    c.delete().await?;
    Ok(())
}

async fn case_echo_stdout_stderr(env: Arc<Env>) -> Result<()> {
    let out = run(&env, &["sh", "-c", "echo to-out; echo to-err >&2"]).await?;
    ensure!(out.status.success(), "status {}", out.status);
    ensure!(
        out.stdout_str() == "to-out\n",
        "stdout {:?}",
        out.stdout_str()
    );
    ensure!(
        out.stderr_str() == "to-err\n",
        "stderr {:?}",
        out.stderr_str()
    );
    Ok(())
}

async fn case_exit_codes(env: Arc<Env>) -> Result<()> {
    ensure!(run(&env, &["true"]).await?.status.success());
    let out = run(&env, &["sh", "-c", "exit 3"]).await?;
    ensure!(out.status.code() == Some(3), "exit 3 gave {}", out.status);
    let c = env
        .sandbox
        .create_container(spec(&env, &["sleep", "100"]))
        .await?;
    c.start().await?;
    c.kill(kata_sandbox::Signal::KILL).await?;
    let status = c.wait().await?;
    c.delete().await?;
    ensure!(status.signal() == Some(9), "SIGKILL gave {status}");
    Ok(())
}

async fn case_stdin_through_cat(env: Arc<Env>) -> Result<()> {
    let mut c = env
        .sandbox
        .create_container(spec(&env, &["cat"]).stdin(true))
        .await?;
    let mut stdin = c.stdin().context("stdin")?;
    let mut stdout = c.stdout().context("stdout")?;
    c.start().await?;
    stdin.write_all(b"through the VM\n").await?;
    stdin.shutdown().await?;
    drop(stdin);
    let mut got = String::new();
    stdout.read_to_string(&mut got).await?;
    let status = c.wait().await?;
    c.delete().await?;
    ensure!(got == "through the VM\n", "cat echoed {got:?}");
    ensure!(status.success(), "cat status {status}");
    Ok(())
}

async fn case_exec_into_running(env: Arc<Env>) -> Result<()> {
    let c = env
        .sandbox
        .create_container(spec(&env, &["sh", "-c", "echo marker > /tmp/m; sleep 100"]))
        .await?;
    c.start().await?;
    let mut p = None;
    let mut last = None;
    for _ in 0..50 {
        let mut e = c.exec(ProcessSpec::new(["cat", "/tmp/m"])).await?;
        let out = e.output().await?;
        if out.status.success() {
            p = Some(out);
            break;
        }
        last = Some(out);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out =
        p.with_context(|| format!("exec never saw the file the container wrote: {last:?}"))?;
    ensure!(
        out.stdout_str() == "marker\n",
        "exec read {:?}",
        out.stdout_str()
    );
    let mut e = c.exec(ProcessSpec::new(["sh", "-c", "exit 5"])).await?;
    ensure!(e.output().await?.status.code() == Some(5));
    c.kill(kata_sandbox::Signal::KILL).await?;
    c.wait().await?;
    c.delete().await?;
    Ok(())
}

async fn case_two_containers(env: Arc<Env>) -> Result<()> {
    let a = env
        .sandbox
        .create_container(spec(&env, &["sleep", "100"]).id("two-a"))
        .await?;
    let b = env
        .sandbox
        .create_container(spec(&env, &["sleep", "100"]).id("two-b"))
        .await?;
    a.start().await?;
    b.start().await?;
    // Separate pid namespaces: each sees its own sleep as pid 1.
    let mut e = a.exec(ProcessSpec::new(["cat", "/proc/1/cmdline"])).await?;
    ensure!(e.output().await?.stdout_str().starts_with("sleep"));
    let dup = env
        .sandbox
        .create_container(spec(&env, &["true"]).id("two-a"))
        .await;
    ensure!(
        matches!(dup, Err(kata_sandbox::Error::AlreadyExists { .. })),
        "duplicate id accepted"
    );
    for c in [a, b] {
        c.kill(kata_sandbox::Signal::KILL).await?;
        ensure!(c.wait().await?.signal() == Some(9));
        c.delete().await?;
    }
    Ok(())
}

async fn case_env_cwd_uid(env: Arc<Env>) -> Result<()> {
    let out = env
        .sandbox
        .run(
            spec(
                &env,
                &["sh", "-c", "echo $GREETING; pwd; id -u; id -g; hostname"],
            )
            .env("GREETING", "hello")
            .cwd("/tmp")
            .user(1000, 1000)
            .hostname("kata-box"),
        )
        .await?;
    ensure!(
        out.status.success(),
        "status {} stderr {}",
        out.status,
        out.stderr_str()
    );
    ensure!(
        out.stdout_str() == "hello\n/tmp\n1000\n1000\nkata-box\n",
        "got {:?}",
        out.stdout_str()
    );
    Ok(())
}

async fn case_readonly_rootfs(env: Arc<Env>) -> Result<()> {
    let out = env
        .sandbox
        .run(spec(&env, &["touch", "/should-fail"]).readonly_rootfs(true))
        .await?;
    ensure!(
        !out.status.success(),
        "touch on a read-only rootfs succeeded"
    );
    ensure!(!env.rootfs.join("should-fail").exists());
    Ok(())
}

/// The spec's seccomp profile reaches the guest and is enforced there (issue 9 row 5), and a
/// spec without capabilities runs with none (row 6).
async fn case_seccomp_and_capabilities(env: Arc<Env>) -> Result<()> {
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
    }))?;
    let mut oci = oci_spec::runtime::Spec::default();
    let mut linux = oci.linux().clone().unwrap_or_default();
    linux.set_seccomp(Some(profile));
    oci.set_linux(Some(linux));
    let script = "mkdir /tmp/x 2>&1; echo rc=$?; grep CapEff /proc/self/status";
    let out = env
        .sandbox
        .run(ContainerSpec::from_oci(oci.clone(), &env.rootfs).args(["sh", "-c", script]))
        .await?;
    let text = out.stdout_str();
    ensure!(
        text.contains("Operation not permitted") && text.contains("rc=1"),
        "mkdir under a profile denying it: {text:?}"
    );
    // Without capabilities in the spec: none at all, as runc does.
    let mut process = oci.process().clone().unwrap_or_default();
    process.set_capabilities(None);
    oci.set_process(Some(process));
    let out = env
        .sandbox
        .run(ContainerSpec::from_oci(oci, &env.rootfs).args([
            "grep",
            "CapEff",
            "/proc/self/status",
        ]))
        .await?;
    ensure!(
        out.stdout_str().contains("0000000000000000"),
        "capabilities of a spec without any: {:?}",
        out.stdout_str()
    );
    Ok(())
}

async fn case_eight_concurrent(env: Arc<Env>) -> Result<()> {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let cmd = format!("echo job-{i}; exit {i}");
            run(&env, &["sh", "-c", &cmd]).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await??;
        ensure!(
            out.stdout_str() == format!("job-{i}\n"),
            "job {i}: {:?}",
            out.stdout_str()
        );
        ensure!(
            out.status.code() == Some(i as i32),
            "job {i}: status {}",
            out.status
        );
    }
    Ok(())
}

/// Pausing and resuming while agent calls are in flight: every call is answered after the
/// resume. (With the hybrid-vsock backend here, vhost-device-vsock, a request that reached it
/// while QEMU had its rings stopped ended its ring thread and every agent call after that
/// timed out, within a handful of cycles: a CI failure of vm_restore.)
async fn case_pause_resume_under_traffic(env: Arc<Env>) -> Result<()> {
    let c = Arc::new(
        env.sandbox
            .create_container(spec(&env, &["sleep", "1000"]).id("pause-traffic"))
            .await?,
    );
    c.start().await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answered = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::timeout(Duration::from_secs(20), c.pids())
                    .await
                    .with_context(|| format!("a call got no answer after {answered} answered"))??;
                answered += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            Ok::<_, anyhow::Error>(answered)
        })
    };
    for cycle in 0..30 {
        env.sandbox.pause().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        env.sandbox.resume().await?;
        let pids = tokio::time::timeout(Duration::from_secs(10), c.pids())
            .await
            .with_context(|| format!("no answer after resume, cycle {cycle}"))??;
        ensure!(pids.len() == 1, "cycle {cycle}: pids {pids:?}");
        ensure!(
            !traffic.is_finished(),
            "the traffic task ended: cycle {cycle}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answered = traffic.await??;
    ensure!(answered > 0, "no call was made beside the pauses");
    c.kill(kata_sandbox::Signal::KILL).await?;
    c.wait().await?;
    Arc::try_unwrap(c)
        .map_err(|_| anyhow::anyhow!("container still shared"))?
        .delete()
        .await?;
    Ok(())
}

async fn case_bad_container_input(env: Arc<Env>) -> Result<()> {
    let e = env
        .sandbox
        .run(spec(&env, &["true"]).cwd("relative"))
        .await
        .unwrap_err();
    ensure!(e.to_string().contains("process.cwd"), "{e}");
    let e = env
        .sandbox
        .run(ContainerSpec::from_rootfs_dir("/nonexistent/rootfs").args(["true"]))
        .await
        .unwrap_err();
    ensure!(e.to_string().contains("/nonexistent/rootfs"), "{e}");
    let e = env
        .sandbox
        .run(spec(&env, &["/no/such/binary"]))
        .await
        .unwrap_err();
    ensure!(e.to_string().contains("/no/such/binary"), "{e}");
    let e = env
        .sandbox
        .run(spec(&env, &["true"]).id("bad/id"))
        .await
        .unwrap_err();
    ensure!(e.to_string().contains("bad/id"), "{e}");
    // Nothing is left shared for the failed containers.
    let shared = env.sandbox.dir().join("shared");
    let left: Vec<_> = std::fs::read_dir(&shared)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(left.is_empty(), "left in {}: {left:?}", shared.display());
    Ok(())
}

/// Boots a sandbox expected to fail; checks the error text and that nothing is left.
async fn expect_boot_failure(
    root: &Path,
    name: &str,
    build: kata_sandbox::SandboxBuilder,
    want: &[&str],
) -> Result<()> {
    let id = format!("bad-{name}");
    let err = match build.id(&id).root_dir(root).build().await {
        Ok(sb) => {
            sb.shutdown().await?;
            bail!("{name}: booted, but should have failed");
        }
        Err(e) => e.to_string(),
    };
    for w in want {
        ensure!(
            err.contains(w),
            "{name}: error does not mention {w:?}:\n{err}"
        );
    }
    ensure!(!root.join(&id).exists(), "{name}: sandbox dir left behind");
    ensure!(
        processes_mentioning(&id, "vm_sandbox").is_empty(),
        "{name}: processes left: {:?}",
        processes_mentioning(&id, "vm_sandbox")
    );
    Ok(())
}

async fn bad_boots(root: PathBuf) -> Result<()> {
    use kata_sandbox::Sandbox as S;
    expect_boot_failure(&root, "vcpus", S::builder().vcpus(0), &["default_vcpus"]).await?;
    expect_boot_failure(
        &root,
        "memory",
        S::builder().memory_mib(32),
        &["default_memory"],
    )
    .await?;
    expect_boot_failure(
        &root,
        "maxvcpus",
        S::builder().vcpus(3).max_vcpus(2),
        &["default_maxvcpus"],
    )
    .await?;
    expect_boot_failure(
        &root,
        "kernel",
        S::builder().kernel("/nonexistent/bzImage"),
        &["/nonexistent/bzImage", "make guest"],
    )
    .await?;
    // A pod network namespace that does not exist: named, and nothing made.
    expect_boot_failure(
        &root,
        "netns",
        S::builder().network_namespace("/run/netns/kata-rs-no-such-namespace"),
        &[
            "/run/netns/kata-rs-no-such-namespace",
            "linux.namespaces[network].path",
            "does not exist",
        ],
    )
    .await?;
    let mut no_qemu = S::builder().config().clone();
    no_qemu.path = "/nonexistent/qemu-system-x86_64".into();
    expect_boot_failure(
        &root,
        "qemu",
        S::builder().hypervisor_config(no_qemu),
        &["qemu-system-x86"],
    )
    .await?;
    // A guest that panics (no init): the VM ends and the error carries its console.
    expect_boot_failure(
        &root,
        "panic",
        S::builder()
            .memory_mib(256)
            .kernel_params("rdinit=/nonexistent-init"),
        &["VM exited", "console"],
    )
    .await?;
    // A guest that boots but whose agent never answers (a shell as init): the error comes
    // after the agent timeout, and the VM is killed.
    let manifest = kata_hypervisor::GuestManifest::load_default()?;
    let debug = manifest
        .initrd_debug
        .context("the guest manifest has no debug initrd")?;
    expect_boot_failure(
        &root,
        "hang",
        S::builder()
            .memory_mib(256)
            .initrd(debug)
            .kernel_params("rdinit=/bin/sh")
            .agent_timeout(Duration::from_secs(20)),
        &["did not answer", "VM was stopped", "the VM was booted"],
    )
    .await?;
    Ok(())
}

/// No container directory under the sandbox's shared dir, no mount below the sandbox dir (the
/// share's own self-bind aside), no volume staging directory, and no copy of a container's
/// mount left in virtiofsd's mount namespace (its root is the shared directory).
fn no_container_leftovers(sandbox: &Sandbox) -> Result<()> {
    let shared = sandbox.dir().join("shared");
    let left: Vec<_> = std::fs::read_dir(&shared)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(left.is_empty(), "left in {}: {left:?}", shared.display());
    // The share's own self-bind (virtio-fs: a shared mount for virtiofsd) lives with it.
    let mounts: Vec<_> = mounts_under(sandbox.dir())
        .into_iter()
        .filter(|m| Path::new(m) != shared)
        .collect();
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let staging = sandbox.dir().join("volume-staging");
    ensure!(!staging.exists(), "{} left", staging.display());
    let in_daemon = kata_testkit::leaks::helper_namespace_mounts(sandbox.dir());
    ensure!(
        in_daemon.is_empty(),
        "mounts left in virtiofsd's namespace: {in_daemon:?}"
    );
    Ok(())
}

/// A sandbox dropped without shutdown() while a container handle still exists: its VM is
/// killed and its directory, mounts and helper processes are gone.
async fn case_drop_without_shutdown(env: Arc<Env>) -> Result<()> {
    let id = "drop-without-shutdown";
    let sandbox = Sandbox::builder()
        .id(id)
        .memory_mib(256)
        .root_dir(&env.root_dir)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let c = sandbox
        .create_container(ContainerSpec::from_rootfs_dir(&env.rootfs).args(["sleep", "100"]))
        .await?;
    c.start().await?;
    let dir = sandbox.dir().to_path_buf();
    ensure!(
        !processes_mentioning(id, "vm_sandbox").is_empty(),
        "no VM process found before the drop"
    );
    drop(sandbox);
    ensure!(
        processes_mentioning(id, "vm_sandbox").is_empty(),
        "processes left: {:?}",
        processes_mentioning(id, "vm_sandbox")
    );
    ensure!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    // The container handle outlives its sandbox: calls on it fail, they do not hang.
    let r = tokio::time::timeout(Duration::from_secs(40), c.wait()).await;
    ensure!(matches!(r, Ok(Err(_))), "wait on a dead sandbox: {r:?}");
    Ok(())
}

/// Issue 9 row 10 in a real VM: QEMU alone is killed while a container runs and its output
/// is read. Every waiter fails at once with the sandbox's death, the sandbox tears itself
/// down, and nothing of it is left (no process, mount or directory).
async fn case_qemu_killed_fails_every_waiter_and_leaves_nothing(env: Arc<Env>) -> Result<()> {
    let id = "qemu-killed";
    let sandbox = Arc::new(
        Sandbox::builder()
            .id(id)
            .memory_mib(256)
            .root_dir(&env.root_dir)
            .build()
            .await
            .context(NoGuest)?,
    );
    booted();
    let dir = sandbox.dir().to_path_buf();
    let mut c = sandbox
        .create_container(ContainerSpec::from_rootfs_dir(&env.rootfs).args([
            "/bin/busybox",
            "sh",
            "-c",
            "echo up; exec /bin/busybox sleep 600",
        ]))
        .await?;
    let mut stdout = c.stdout().context("stdout")?;
    c.start().await?;
    let mut up = [0u8; 3];
    stdout.read_exact(&mut up).await?;
    let exec = c
        .exec(ProcessSpec::new(["/bin/busybox", "sleep", "600"]))
        .await?;
    let waiter = {
        let (sandbox, cid) = (sandbox.clone(), c.id().to_string());
        tokio::spawn(async move { sandbox.wait_process(&cid, &cid).await })
    };
    let exec_waiter = tokio::spawn(async move { exec.wait().await });
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).await
    });
    let qemu = kata_testkit::leaks::cmdlines()
        .into_iter()
        .find(|(_, cmd)| cmd.contains("qemu-system") && cmd.contains(&dir.display().to_string()))
        .map(|(pid, _)| pid)
        .context("no QEMU process for the sandbox")?;
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let within = Duration::from_secs(10);
    let r = tokio::time::timeout(within, waiter)
        .await
        .context("the wait still hangs")??;
    ensure!(
        matches!(r, Err(kata_sandbox::Error::SandboxDead { .. })),
        "wait: {r:?}"
    );
    let r = tokio::time::timeout(within, exec_waiter)
        .await
        .context("the exec's wait still hangs")??;
    ensure!(
        matches!(r, Err(kata_sandbox::Error::SandboxDead { .. })),
        "exec wait: {r:?}"
    );
    let r = tokio::time::timeout(within, reader)
        .await
        .context("the stream still hangs")??;
    ensure!(r.is_err(), "the output ended without an error: {r:?}");
    let why = sandbox
        .death()
        .context("the sandbox does not say it died")?;
    ensure!(why.contains("VM exited"), "{why}");
    println!(
        "    every waiter failed {:.1?} after QEMU was killed: {why}",
        t0.elapsed()
    );
    torn_down(id, &dir, t0, Duration::from_secs(30)).await?;
    drop(c);
    sandbox.shutdown().await?;
    Ok(())
}

/// A network namespace this test made (`ip netns add`, a unique name), deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(role: &str) -> Result<TestNetns> {
        let name = format!("kata-rs-vm-{role}-{}", std::process::id());
        sh("ip", &["netns", "add", &name])?;
        Ok(TestNetns { name })
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> args...` (or `tc`), failing with its stderr.
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh(program, &all)
    }

    /// The names of the tun/tap devices in the namespace.
    fn taps(&self) -> Result<Vec<String>> {
        let links: serde_json::Value =
            serde_json::from_str(&self.run("ip", &["-json", "-details", "link", "show"])?)?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["linkinfo"]["info_kind"] == "tun")
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// What `tc` shows on `dev`'s ingress: qdiscs and filters.
    fn ingress(&self, dev: &str) -> Result<String> {
        Ok(self.run("tc", &["qdisc", "show", "dev", dev, "ingress"])?
            + &self.run("tc", &["filter", "show", "dev", dev, "ingress"])?)
    }

    /// Runs `f` in the namespace ([`in_netns`]).
    fn enter<T: Send>(&self, f: impl FnOnce() -> std::io::Result<T> + Send) -> Result<T> {
        in_netns(&self.path(), f)
    }
}

/// Runs `f` on a thread that has entered the network namespace at `ns`: sockets it makes live
/// there, whichever thread uses them later.
fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> std::io::Result<T> + Send) -> Result<T> {
    let file = std::fs::File::open(ns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {} panicked", ns.display()))?
            .with_context(|| format!("in network namespace {}", ns.display()))
    })
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(program).args(args).output()?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pod's side of the test network: `eth0` of a veth pair as CNI's bridge plugin leaves it
/// (address, MTU, default route via the gateway); the gateway is its peer, in a second
/// namespace standing for the bridge. Nothing is made in the host's namespace.
const POD_IP: &str = "10.213.0.2";
const GATEWAY_IP: &str = "10.213.0.1";
const POD_MTU: &str = "1400";

struct PodNetwork {
    pod: TestNetns,
    peer: TestNetns,
}

impl PodNetwork {
    fn new() -> Result<PodNetwork> {
        let net = PodNetwork {
            pod: TestNetns::new("pod")?,
            peer: TestNetns::new("peer")?,
        };
        let (pod, peer) = (&net.pod, &net.peer);
        pod.run(
            "ip",
            &[
                "link", "add", "eth0", "mtu", POD_MTU, "type", "veth", "peer", "name", "peer0",
                "mtu", POD_MTU, "netns", &peer.name,
            ],
        )?;
        pod.run(
            "ip",
            &["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"],
        )?;
        pod.run("ip", &["link", "set", "eth0", "up"])?;
        pod.run("ip", &["link", "set", "lo", "up"])?;
        pod.run("ip", &["route", "add", "default", "via", GATEWAY_IP])?;
        peer.run(
            "ip",
            &["addr", "add", &format!("{GATEWAY_IP}/24"), "dev", "peer0"],
        )?;
        peer.run("ip", &["link", "set", "peer0", "up"])?;
        peer.run("ip", &["link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// Nothing of kata-rs in the pod's namespace: no tap, no qdisc or filter on `eth0`'s
    /// ingress.
    fn nothing_left(&self) -> Result<()> {
        let taps = self.pod.taps()?;
        ensure!(
            taps.is_empty(),
            "taps left in the pod's namespace: {taps:?}"
        );
        let ingress = self.pod.ingress("eth0")?;
        ensure!(
            ingress.trim().is_empty(),
            "left on eth0's ingress:\n{ingress}"
        );
        Ok(())
    }
}

/// Connects from the peer's namespace to `addr` until it answers (the server in the guest
/// may not listen yet), within `within`.
fn connect_from(ns: &Path, addr: &str, within: Duration) -> Result<std::net::TcpStream> {
    let addr: std::net::SocketAddr = addr.parse()?;
    let t0 = Instant::now();
    loop {
        match in_netns(ns, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        }) {
            Ok(s) => return Ok(s),
            Err(e) if t0.elapsed() > within => return Err(e.context(format!("connect {addr}"))),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Accepts one connection on `listener` within `within`.
fn accept_within(
    listener: &std::net::TcpListener,
    within: Duration,
) -> Result<(std::net::TcpStream, std::net::SocketAddr)> {
    listener.set_nonblocking(true)?;
    let t0 = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, from)) => {
                s.set_nonblocking(false)?;
                return Ok((s, from));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t0.elapsed() < within => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// Bytes sent for a throughput figure.
const THROUGHPUT_BYTES: usize = 32 << 20;

/// Sends [`THROUGHPUT_BYTES`] on `stream`, shuts its sending side and reads the answer to the
/// end; returns the answer and MB/s.
fn send_and_time(mut stream: std::net::TcpStream) -> Result<(String, f64)> {
    use std::io::{Read, Write};
    let chunk = vec![0x5au8; 1 << 16];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < THROUGHPUT_BYTES {
        stream.write_all(&chunk)?;
        sent += chunk.len();
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let mbps = sent as f64 / 1e6 / t0.elapsed().as_secs_f64();
    Ok((answer, mbps))
}

/// The veth-only baseline: the peer sends to a receiver in the pod's namespace itself (no
/// VM, no tap, no tc), before the sandbox joins it.
fn veth_baseline(net: &PodNetwork) -> Result<f64> {
    let listener = net
        .pod
        .enter(|| std::net::TcpListener::bind(format!("{POD_IP}:0")))?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> Result<()> {
        use std::io::{Read, Write};
        let (mut s, _) = accept_within(&listener, Duration::from_secs(20))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => got += n,
            }
        }
        writeln!(s, "{got}")?;
        Ok(())
    });
    let (answer, mbps) = send_and_time(connect_from(
        &net.peer.path(),
        &addr.to_string(),
        Duration::from_secs(10),
    )?)?;
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(
        answer.trim() == THROUGHPUT_BYTES.to_string(),
        "baseline receiver got {answer:?}"
    );
    Ok(mbps)
}

/// Issue 10 item 4 end to end: a sandbox joined to a pod's network namespace (CNI's bridge
/// plugin's layout, made by the test) gives its containers the pod's interface, address, MTU
/// and routes, both directions of TCP work through the tap and the tc redirects, and nothing
/// is left in the pod's namespace afterwards — nor by a start that fails once the taps are
/// made.
async fn case_pod_network_end_to_end(env: Arc<Env>) -> Result<()> {
    if let Some(reason) = kata_testkit::missing_root_or_tools(&["ip", "tc"]) {
        bail!("the pod network case {reason}");
    }
    let net = PodNetwork::new()?;
    let baseline = veth_baseline(&net)?;
    let pod_mac = {
        let v: serde_json::Value =
            serde_json::from_str(&net.pod.run("ip", &["-json", "link", "show", "eth0"])?)?;
        v[0]["address"].as_str().context("eth0's MAC")?.to_owned()
    };

    // A start that fails after the taps were made (no kernel) removes them again.
    let e = Sandbox::builder()
        .id("pod-network-bad")
        .root_dir(&env.root_dir)
        .network_namespace(net.pod.path())
        .kernel("/nonexistent/bzImage")
        .build()
        .await
        .err()
        .context("a sandbox without a kernel started")?;
    ensure!(e.to_string().contains("/nonexistent/bzImage"), "{e}");
    net.nothing_left()
        .context("after a start that failed with the taps made")?;
    ensure!(!env.root_dir.join("pod-network-bad").exists());

    let id = "pod-network";
    let sandbox = Sandbox::builder()
        .id(id)
        .memory_mib(256)
        .root_dir(&env.root_dir)
        .network_namespace(net.pod.path())
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let checked = pod_network_checks(&env, &sandbox, &net, &pod_mac, baseline).await;
    let dir = sandbox.dir().to_path_buf();
    let shut = sandbox.shutdown().await;
    checked?;
    shut?;
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    let left = processes_mentioning(&dir.display().to_string(), "vm_sandbox");
    ensure!(left.is_empty(), "processes left: {left:?}");
    net.nothing_left().context("after shutdown")?;
    ensure!(
        sh("ip", &["link", "show", "tap0_kata"]).is_err(),
        "a tap in the host's namespace"
    );

    // network_queues = 2: a multi-queue tap, and a NIC with two queue pairs in a guest with
    // two vCPUs to use them. Then handed over and taken back, as by a restarted shim: the tap
    // stays (QEMU holds its queues), the new owner adopts it and removes it at shutdown.
    let sandbox = Sandbox::builder()
        .id("pod-network-mq")
        .root_dir(&env.root_dir)
        .hypervisor_config(kata_sandbox::HypervisorConfig {
            network_queues: 2,
            default_memory: 256,
            default_vcpus: 2,
            ..Sandbox::builder().config().clone()
        })
        .network_namespace(net.pod.path())
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let dir = sandbox.dir().to_path_buf();
    let checked = async {
        let tap = net
            .pod
            .run("ip", &["-details", "link", "show", "tap0_kata"])?;
        ensure!(
            tap.contains("multi_queue") && tap.contains("numqueues 2"),
            "the tap: {tap}"
        );
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args([
                "sh",
                "-c",
                "ls /sys/class/net/eth0/queues; ip addr show eth0",
            ]))
            .await?;
        let text = out.stdout_str();
        ensure!(
            text.contains("rx-1") && text.contains("tx-1") && text.contains(POD_IP),
            "two queue pairs and the pod's address:\n{text}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = checked {
        let _ = sandbox.shutdown().await;
        return Err(e);
    }
    sandbox.detach().await?;
    ensure!(
        net.pod.taps()? == ["tap0_kata"],
        "the tap went with the detach"
    );
    let sandbox = Sandbox::restore(&dir).await?;
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args(["ip", "addr", "show", "eth0"]))
        .await;
    let shut = sandbox.shutdown().await;
    let text = out?.stdout_str();
    shut?;
    ensure!(
        text.contains(&format!("inet {POD_IP}/24")),
        "after the restore:\n{text}"
    );
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    net.nothing_left()
        .context("after the restored sandbox's shutdown")?;
    Ok(())
}

/// Issue 10 item 4, NIC hot-plug: an interface added to the pod's namespace after boot (a
/// second veth, as a second CNI network would add) is joined by `rescan_network` (a tap and
/// tc filters of its own, a virtio-net NIC hot-plugged on a PCIe root port, the guest told its
/// address); the container sees it and a TCP connection over it works. Deleted again, a
/// rescan unplugs the NIC (the guest loses the link) and removes its tap. A rescan with
/// nothing new changes nothing; after shutdown no tap or filter is left.
async fn case_pod_network_hot_plug(env: Arc<Env>) -> Result<()> {
    if let Some(reason) = kata_testkit::missing_root_or_tools(&["ip", "tc"]) {
        bail!("the NIC hot-plug case {reason}");
    }
    const SECOND_IP: &str = "10.215.0.2";
    const SECOND_PEER_IP: &str = "10.215.0.1";
    let net = PodNetwork::new()?;
    // A NIC is hot-plugged on a free PCIe root port: the VM gets one.
    let sandbox = Sandbox::builder()
        .id("pod-network-hotplug")
        .root_dir(&env.root_dir)
        .hypervisor_config(kata_sandbox::HypervisorConfig {
            pcie_root_port: 1,
            default_memory: 256,
            ..Sandbox::builder().config().clone()
        })
        .network_namespace(net.pod.path())
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let dir = sandbox.dir().to_path_buf();
    let checked = async {
        let none = sandbox.rescan_network().await?;
        ensure!(
            none == kata_sandbox::NetworkChanges::default(),
            "a rescan with nothing new changed {none:?}"
        );
        net.pod.run(
            "ip",
            &[
                "link",
                "add",
                "eth1",
                "type",
                "veth",
                "peer",
                "name",
                "peer1",
                "netns",
                &net.peer.name,
            ],
        )?;
        net.pod.run(
            "ip",
            &["addr", "add", &format!("{SECOND_IP}/24"), "dev", "eth1"],
        )?;
        net.pod.run("ip", &["link", "set", "eth1", "up"])?;
        net.peer.run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{SECOND_PEER_IP}/24"),
                "dev",
                "peer1",
            ],
        )?;
        net.peer.run("ip", &["link", "set", "peer1", "up"])?;
        let changes = sandbox.rescan_network().await?;
        ensure!(
            changes.added == ["eth1"] && changes.removed.is_empty(),
            "the rescan: {changes:?}"
        );
        let mut taps = net.pod.taps()?;
        taps.sort();
        ensure!(taps == ["tap0_kata", "tap1_kata"], "taps: {taps:?}");
        let ingress = net.pod.ingress("eth1")?;
        ensure!(
            ingress.contains("mirred") && ingress.contains("tap1_kata"),
            "eth1's ingress:\n{ingress}"
        );
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args([
                "sh",
                "-c",
                "ip addr show eth1; ip route",
            ]))
            .await?;
        let text = out.stdout_str();
        ensure!(
            text.contains(&format!("inet {SECOND_IP}/24"))
                && text.contains("10.215.0.0/24 dev eth1"),
            "the container's second interface:\n{text}{}",
            out.stderr_str()
        );
        println!("    after the hot-plug:\n{}", text.trim_end());
        let c = sandbox
            .create_container(ContainerSpec::from_rootfs_dir(&env.rootfs).args([
                "nc",
                "-l",
                "-p",
                "8081",
                "-e",
                "echo",
                "hello-over-eth1",
            ]))
            .await?;
        c.start().await?;
        let peer = net.peer.path();
        let reply = tokio::task::spawn_blocking(move || -> Result<String> {
            use std::io::Read;
            let mut s = connect_from(&peer, &format!("{SECOND_IP}:8081"), Duration::from_secs(60))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut got = String::new();
            s.read_to_string(&mut got)?;
            Ok(got)
        })
        .await?;
        let status = c.wait().await?;
        c.delete().await?;
        ensure!(reply? == "hello-over-eth1\n", "the reply over eth1");
        ensure!(status.success(), "nc -l: {status}");

        // The interface goes (its veth deleted): the NIC is unplugged, its tap removed.
        net.pod.run("ip", &["link", "del", "eth1"])?;
        let changes = sandbox.rescan_network().await?;
        ensure!(
            changes.removed == ["eth1"] && changes.added.is_empty(),
            "the rescan after eth1 went: {changes:?}"
        );
        let taps = net.pod.taps()?;
        ensure!(taps == ["tap0_kata"], "taps after the unplug: {taps:?}");
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args(["ls", "/sys/class/net"]))
            .await?;
        let links = out.stdout_str();
        ensure!(
            !links.contains("eth1") && links.contains("eth0"),
            "the guest's links after the unplug: {links}"
        );
        Ok(())
    }
    .await;
    let shut = sandbox.shutdown().await;
    checked?;
    shut?;
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    net.nothing_left().context("after shutdown")?;
    Ok(())
}

async fn pod_network_checks(
    env: &Env,
    sandbox: &Sandbox,
    net: &PodNetwork,
    pod_mac: &str,
    baseline: f64,
) -> Result<()> {
    let spec =
        |args: &[&str]| ContainerSpec::from_rootfs_dir(&env.rootfs).args(args.iter().copied());

    // The host side: a tap in the pod's namespace, joined to eth0 both ways.
    let taps = net.pod.taps()?;
    ensure!(
        taps == ["tap0_kata"],
        "taps in the pod's namespace: {taps:?}"
    );
    let ingress = net.pod.ingress("eth0")?;
    ensure!(
        ingress.contains("ingress") && ingress.contains("mirred") && ingress.contains("tap0_kata"),
        "eth0's ingress:\n{ingress}"
    );

    // The container sees the pod's interface and routes.
    let out = sandbox
        .run(spec(&["sh", "-c", "ip addr show eth0; ip route"]))
        .await?;
    let text = out.stdout_str();
    ensure!(out.status.success(), "{text}{}", out.stderr_str());
    for want in [
        format!("mtu {POD_MTU}"),
        format!("inet {POD_IP}/24"),
        format!("link/ether {pod_mac}"),
        format!("default via {GATEWAY_IP} dev eth0"),
    ] {
        ensure!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    println!("    the container's network:\n{}", text.trim_end());

    // The container reaches a server on the pod's network (in the peer namespace).
    let listener = net
        .peer
        .enter(|| std::net::TcpListener::bind(format!("{GATEWAY_IP}:0")))?;
    let port = listener.local_addr()?.port();
    let server = tokio::task::spawn_blocking(move || -> Result<(String, std::net::SocketAddr)> {
        use std::io::Read;
        let (mut s, from) = accept_within(&listener, Duration::from_secs(60))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok((got, from))
    });
    let out = sandbox
        .run(spec(&[
            "sh",
            "-c",
            &format!("echo hello-from-the-pod | nc {GATEWAY_IP} {port}"),
        ]))
        .await?;
    ensure!(
        out.status.success(),
        "nc to the peer: {} {}",
        out.stdout_str(),
        out.stderr_str()
    );
    let (got, from) = server.await??;
    ensure!(got == "hello-from-the-pod\n", "the peer got {got:?}");
    ensure!(
        from.ip().to_string() == POD_IP,
        "the peer saw the connection from {from}"
    );

    // A server in the container is reachable from the pod's network at the pod's address.
    let c = sandbox
        .create_container(spec(&[
            "nc",
            "-l",
            "-p",
            "8080",
            "-e",
            "echo",
            "hello-from-the-container",
        ]))
        .await?;
    c.start().await?;
    let peer = net.peer.path();
    let reply = tokio::task::spawn_blocking(move || -> Result<String> {
        use std::io::Read;
        let mut s = connect_from(&peer, &format!("{POD_IP}:8080"), Duration::from_secs(60))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    })
    .await??;
    let status = c.wait().await?;
    c.delete().await?;
    ensure!(
        reply == "hello-from-the-container\n",
        "the peer read {reply:?}"
    );
    ensure!(status.success(), "nc -l: {status}");

    // Figures: peer -> container throughput over tap + tc (the guest counts what it got).
    let c = sandbox
        .create_container(spec(&["nc", "-l", "-p", "5001", "-e", "wc", "-c"]))
        .await?;
    c.start().await?;
    let peer = net.peer.path();
    let sent = tokio::task::spawn_blocking(move || -> Result<(String, f64)> {
        send_and_time(connect_from(
            &peer,
            &format!("{POD_IP}:5001"),
            Duration::from_secs(60),
        )?)
    })
    .await?;
    let status = c.wait().await?;
    c.delete().await?;
    let (answer, mbps) = sent?;
    ensure!(
        answer.trim() == THROUGHPUT_BYTES.to_string(),
        "the container counted {answer:?} bytes"
    );
    ensure!(status.success(), "nc -l -e wc: {status}");
    println!(
        "    TCP peer -> pod, {} MiB: veth only {baseline:.0} MB/s; tap + tc into the VM \
         {mbps:.1} MB/s ({:.1}% of it; {:?} guest, bounded by its CPU)",
        THROUGHPUT_BYTES >> 20,
        100.0 * mbps / baseline,
        sandbox
            .describe()
            .iter()
            .find(|(k, _)| *k == "accelerator")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    );
    Ok(())
}

/// A container whose rootfs is a block device: the busybox ext4 image given as containerd's
/// single `ext4` rootfs mount (as a devmapper snapshotter gives its device). It is hot-plugged
/// (virtio-scsi, the default `block_device_driver`), mounted by the agent and used as the
/// rootfs: its file reads, writes land in the image; with `ro` the disk and the mount are
/// read-only. After each delete the guest has no more disks than before and the host holds no
/// mount of it; a missing image is refused naming the field, leaving nothing.
async fn case_block_rootfs(env: Arc<Env>) -> Result<()> {
    use kata_testkit::image::ext4;
    let work = tempfile::tempdir()?;
    let image = work.path().join("rootfs.ext4");
    ext4::busybox_ext4(&image).context("the ext4 fixture")?;
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    let block_spec = |source: &Path, options: &[&str], args: &[&str]| -> Result<ContainerSpec> {
        let mut oci = oci_spec::runtime::Spec::default();
        oci.set_root(Some(
            oci_spec::runtime::RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        ));
        let mount = kata_sandbox::RootfsMount::new(
            "ext4",
            source.to_string_lossy(),
            options.iter().copied(),
        );
        Ok(ContainerSpec::from_bundle(&bundle, oci, vec![mount])?.args(args.iter().copied()))
    };
    let disks = || async {
        Ok::<_, anyhow::Error>(
            run(&env, &["ls", "/sys/block"])
                .await?
                .stdout_str()
                .to_string(),
        )
    };
    let before = disks().await?;

    let script = format!(
        "cat {}; echo on-disk > /written; cat /written; grep ' / ' /proc/mounts",
        ext4::MARKER_PATH
    );
    let out = env
        .sandbox
        .run(block_spec(&image, &[], &["sh", "-c", &script])?)
        .await?;
    ensure!(out.status.success(), "block rootfs: {out:?}");
    let text = out.stdout_str();
    ensure!(
        text.starts_with(&format!("{}on-disk\n", ext4::MARKER)),
        "the container did not read and write its disk: {text:?}"
    );
    ensure!(
        text.contains(" ext4 "),
        "the rootfs is not the ext4 disk: {text:?}"
    );
    ensure!(
        disks().await? == before,
        "a disk stayed in the guest after delete"
    );
    let written = std::process::Command::new("debugfs")
        .args(["-R", "cat /written"])
        .arg(&image)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&written.stdout) == "on-disk\n",
        "the write did not reach the image"
    );

    let out = env
        .sandbox
        .run(block_spec(
            &image,
            &["ro"],
            &["sh", "-c", &format!("cat {}; touch /x", ext4::MARKER_PATH)],
        )?)
        .await?;
    ensure!(
        !out.status.success() && out.stdout_str() == ext4::MARKER,
        "a read-only block rootfs: {out:?}"
    );
    ensure!(
        out.stderr_str().contains("Read-only"),
        "touch failed otherwise: {:?}",
        out.stderr_str()
    );
    ensure!(
        disks().await? == before,
        "a disk stayed in the guest after delete"
    );

    let missing = work.path().join("missing.ext4");
    let err = env
        .sandbox
        .run(block_spec(&missing, &[], &["true"])?)
        .await
        .expect_err("a missing image");
    let err = err.to_string();
    ensure!(
        err.contains("rootfs mount source") && err.contains("missing.ext4"),
        "{err}"
    );
    ensure!(
        disks().await? == before,
        "a disk was attached for a missing image"
    );
    ensure!(mounts_under(work.path()).is_empty(), "host mounts left");
    Ok(())
}

/// An OCI spec whose `linux.resources` has a CPU quota (`quota` per 100 ms), a cpuset and a
/// memory limit, each when given (the spec's other resources, its device rules, are kept).
fn limited(quota: Option<i64>, cpus: Option<&str>, memory: Option<i64>) -> oci_spec::runtime::Spec {
    let mut oci = oci_spec::runtime::Spec::default();
    let mut linux = oci.linux().clone().unwrap_or_default();
    let mut res = linux.resources().clone().unwrap_or_default();
    let mut cpu = oci_spec::runtime::LinuxCpu::default();
    cpu.set_period(Some(100_000));
    cpu.set_quota(quota);
    cpu.set_cpus(cpus.map(str::to_string));
    res.set_cpu(Some(cpu));
    if let Some(limit) = memory {
        let mut mem = oci_spec::runtime::LinuxMemory::default();
        mem.set_limit(Some(limit));
        res.set_memory(Some(mem));
    }
    linux.set_resources(Some(res));
    oci.set_linux(Some(linux));
    oci
}

/// The guest's CPUs as a container sees them: `nproc` (its affinity) and the online CPUs.
async fn cpus_seen(
    sb: &Sandbox,
    env: &Env,
    oci: Option<oci_spec::runtime::Spec>,
) -> Result<String> {
    let script = "nproc; grep -c ^processor /proc/cpuinfo";
    let spec = match oci {
        Some(oci) => ContainerSpec::from_oci(oci, &env.rootfs).args(["sh", "-c", script]),
        None => spec(env, &["sh", "-c", script]),
    };
    let out = sb.run(spec).await?;
    ensure!(out.status.success(), "{}: {}", out.status, out.stderr_str());
    Ok(out
        .stdout_str()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}

async fn case_cpu_quota_hot_plugs_vcpus(env: Arc<Env>) -> Result<()> {
    // A sandbox of its own: default_vcpus 1, default_maxvcpus 4.
    let sb = Sandbox::builder()
        .id("vm-sandbox-vcpus")
        .memory_mib(256)
        .vcpus(1)
        .max_vcpus(4)
        .root_dir(&env.root_dir)
        .build()
        .await?;
    let checked = cpu_quota_checks(&sb, &env).await;
    sb.shutdown().await?;
    checked?;
    // A fresh VM: QEMU before 8.2 under TCG plugs no vCPU after one was unplugged.
    let sb = Sandbox::builder()
        .id("vm-sandbox-update")
        .memory_mib(256)
        .vcpus(1)
        .max_vcpus(4)
        .root_dir(&env.root_dir)
        .build()
        .await?;
    let checked = Box::pin(update_resizes_checks(&sb, &env)).await;
    sb.shutdown().await?;
    checked
}

/// `ctr task update` on a running container resizes the VM: a raised quota plugs vCPUs, a
/// lowered one unplugs them, an update that leaves the CPU out keeps them, removal sheds them.
async fn update_resizes_checks(sb: &Sandbox, env: &Env) -> Result<()> {
    let resources = |spec: oci_spec::runtime::Spec| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .expect("limited() sets resources")
    };
    let c = sb.create_container(spec(env, &["sleep", "100"])).await?;
    c.start().await?;
    let checked = async {
        c.update(&resources(limited(Some(200_000), None, None)))
            .await?;
        let raised = cpus_seen(sb, env, None).await?;
        ensure!(
            raised == "3 3",
            "after an update to 2 CPUs of quota: {raised}"
        );
        c.update(&resources(limited(Some(100_000), None, None)))
            .await?;
        let lowered = cpus_seen(sb, env, None).await?;
        ensure!(
            lowered == "2 2",
            "after an update to 1 CPU of quota: {lowered}"
        );
        let mut memory_only = resources(limited(None, None, Some(128 << 20)));
        memory_only.set_cpu(None);
        c.update(&memory_only).await?;
        let kept = cpus_seen(sb, env, None).await?;
        ensure!(kept == "2 2", "after an update of memory only: {kept}");
        Ok(())
    }
    .await;
    c.kill(kata_sandbox::Signal::KILL).await?;
    c.wait().await?;
    c.delete().await?;
    checked?;
    let after = cpus_seen(sb, env, None).await?;
    ensure!(after == "1 1", "after the updated container: {after}");
    Ok(())
}

async fn cpu_quota_checks(sb: &Sandbox, env: &Env) -> Result<()> {
    let before = cpus_seen(sb, env, None).await?;
    ensure!(before == "1 1", "before: nproc, online CPUs = {before}");
    // 2 CPUs of quota: the VM grows to 1 + 2 vCPUs before the container is created.
    let t = Instant::now();
    let during = cpus_seen(sb, env, Some(limited(Some(200_000), None, None))).await?;
    ensure!(
        during == "3 3",
        "with 2 CPUs of quota: nproc, online CPUs = {during}"
    );
    println!("vCPU hot-plug and run: {:.1?}", t.elapsed());
    // Removing the container unplugged its vCPUs.
    let after = cpus_seen(sb, env, None).await?;
    ensure!(
        after == "1 1",
        "after the container: nproc, online CPUs = {after}"
    );
    // A cpuset outside the VM's vCPUs is refused naming the field; nothing is plugged.
    let e = sb
        .run(ContainerSpec::from_oci(limited(None, Some("7"), None), &env.rootfs).args(["true"]))
        .await
        .expect_err("CPU 7 of a VM of at most 2 vCPUs for it");
    let e = e.to_string();
    ensure!(
        e.contains("linux.resources.cpu.cpus") && e.contains("CPU 7"),
        "{e}"
    );
    let after = cpus_seen(sb, env, None).await?;
    ensure!(after == "1 1", "after a refused cpuset: {after}");
    // A memory limit after a vCPU unplug: QEMU before 8.2 under TCG would crash on the DIMM
    // (the backend does not plug it there); the container runs either way.
    let out = sb
        .run(
            ContainerSpec::from_oci(limited(None, None, Some(128 << 20)), &env.rootfs)
                .args(["true"]),
        )
        .await?;
    ensure!(
        out.status.success(),
        "after an unplug, a memory limit: {}",
        out.status
    );
    // A quota again after an unplug: QEMU before 8.2 under TCG would abort on the re-plug (the
    // backend does not plug then); the container runs either way, on 1 or 3 vCPUs.
    let again = cpus_seen(sb, env, Some(limited(Some(200_000), None, None))).await?;
    ensure!(
        again == "3 3" || again == "1 1",
        "a quota after an unplug: {again}"
    );
    ensure!(sb.death().is_none(), "the sandbox died: {:?}", sb.death());
    Ok(())
}

/// `static_sandbox_resource_mgmt = true`: the VM boots at its defaults plus the workload (1 + 2
/// vCPUs, 256 + 128 MiB), and a container with limits plugs nothing.
async fn case_static_sizing_boots_the_vm_at_the_workload_size(env: Arc<Env>) -> Result<()> {
    let id = "vm-sandbox-static";
    let sb = Sandbox::builder()
        .id(id)
        .memory_mib(256)
        .vcpus(1)
        .max_vcpus(4)
        .static_resources(true)
        .workload(kata_sandbox::WorkloadSize {
            vcpus: 2,
            memory_mib: 128,
        })
        .root_dir(&env.root_dir)
        .build()
        .await?;
    let checked = async {
        let at_boot = cpus_seen(&sb, &env, None).await?;
        ensure!(at_boot == "3 3", "at boot: nproc, online CPUs = {at_boot}");
        let mem = mem_total_kib_of(&sb, &env, None).await?;
        // MemTotal is the VM's memory less what the kernel keeps: between 256 and 384 MiB
        // means the workload's 128 MiB were added (a 256 MiB VM shows about 220 MiB).
        ensure!(
            mem > 300 * 1024 && mem <= 384 * 1024,
            "MemTotal {mem} KiB in a VM of 256 + 128 MiB"
        );
        // Limits inside the boot size: nothing is plugged.
        let limited_spec = limited(Some(200_000), None, Some(64 << 20));
        let during = cpus_seen(&sb, &env, Some(limited_spec.clone())).await?;
        ensure!(during == "3 3", "with 2 CPUs of quota: {during}");
        let mem_during = mem_total_kib_of(&sb, &env, Some(limited_spec)).await?;
        ensure!(
            mem_during == mem,
            "MemTotal {mem_during} KiB with a 64 MiB limit, {mem} KiB at boot"
        );
        ensure!(sb.death().is_none(), "the sandbox died: {:?}", sb.death());
        Ok(())
    }
    .await;
    sb.shutdown().await?;
    checked
}

/// The resident set of a process, in MiB (`VmRSS`: for QEMU, with the guest's memfd pages).
fn rss_mib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024)
}

/// `reclaim_guest_freed_memory`: memory a guest process touched and freed goes back to the
/// host (the balloon's free page reporting), so QEMU's resident set falls back. Without the
/// key QEMU keeps every page the guest ever touched.
async fn case_reclaim_guest_freed_memory_gives_memory_back(env: Arc<Env>) -> Result<()> {
    let id = "vm-sandbox-reclaim";
    let mut hv = Sandbox::builder().config().clone();
    hv.reclaim_guest_freed_memory = true;
    let sb = Sandbox::builder()
        .hypervisor_config(hv)
        .id(id)
        .memory_mib(512)
        .vcpus(1)
        .root_dir(&env.root_dir)
        .build()
        .await?;
    let checked = async {
        let dir = env.root_dir.join(id);
        let qemu = kata_testkit::leaks::cmdlines()
            .into_iter()
            .find(|(_, cmd)| {
                cmd.contains("qemu-system") && cmd.contains(&dir.display().to_string())
            })
            .map(|(pid, _)| pid)
            .context("no QEMU process for the sandbox")?;
        let cmd = std::fs::read(format!("/proc/{qemu}/cmdline"))?;
        ensure!(
            String::from_utf8_lossy(&cmd).contains("free-page-reporting=on"),
            "QEMU has no reporting balloon"
        );
        let before = rss_mib(qemu)?;
        // dd fills a 192 MiB buffer from /dev/zero and blocks writing it to a pipe nobody
        // reads: the guest holds 192 MiB until the container is killed.
        let c = sb
            .create_container(ContainerSpec::from_rootfs_dir(&env.rootfs).id("hog").args([
                "sh",
                "-c",
                "dd if=/dev/zero bs=192M count=1 | sleep 600",
            ]))
            .await?;
        c.start().await?;
        let poll = |what: &'static str, done: Box<dyn Fn(u64) -> bool + Send>| async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let now = rss_mib(qemu)?;
                if done(now) {
                    return Ok::<u64, anyhow::Error>(now);
                }
                if Instant::now() > deadline {
                    bail!("{what}: QEMU's RSS {now} MiB after 60 s ({before} MiB at boot)");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let held = poll(
            "the guest's 192 MiB never became resident",
            Box::new(move |now| now >= before + 128),
        )
        .await?;
        c.kill(kata_sandbox::Signal::KILL).await?;
        c.wait().await?;
        c.delete().await?;
        // Freed in the guest; reported in 2 MiB blocks every 2 s once enough have gathered.
        let after = poll(
            "QEMU kept the guest's freed memory",
            Box::new(move |now| now + 96 <= held),
        )
        .await?;
        println!("QEMU RSS: {before} MiB at boot, {held} MiB holding 192 MiB, {after} MiB after its release");
        Ok(())
    }
    .await;
    sb.shutdown().await?;
    checked
}

/// MemTotal in the guest, in KiB.
async fn mem_total_kib(env: &Env, oci: Option<oci_spec::runtime::Spec>) -> Result<u64> {
    mem_total_kib_of(&env.sandbox, env, oci).await
}

/// MemTotal in the guest of `sb`, in KiB.
async fn mem_total_kib_of(
    sb: &Sandbox,
    env: &Env,
    oci: Option<oci_spec::runtime::Spec>,
) -> Result<u64> {
    let args = ["grep", "MemTotal", "/proc/meminfo"];
    let spec = match oci {
        Some(oci) => ContainerSpec::from_oci(oci, &env.rootfs).args(args),
        None => spec(env, &args),
    };
    let out = sb.run(spec).await?;
    let text = out.stdout_str();
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("MemTotal in {text:?}"))
}

async fn case_memory_limit_hot_plugs_memory(env: Arc<Env>) -> Result<()> {
    // The VM's vsock is vhost-user here (hybrid vsock, no /dev/vhost-vsock): it maps guest
    // memory, so the DIMM must be shared memory; the agent answering over it after the
    // hot-plug (the container's output) shows it is.
    let before = mem_total_kib(&env, None).await?;
    let during = mem_total_kib(&env, Some(limited(None, None, Some(256 << 20)))).await?;
    ensure!(
        during >= before + 250 * 1024,
        "MemTotal {before} KiB grew to {during} KiB for a 256 MiB limit"
    );
    // Memory is never shrunk.
    let after = mem_total_kib(&env, None).await?;
    ensure!(
        after == during,
        "MemTotal after the container: {after} KiB, was {during} KiB"
    );
    // A limit beyond what the VM can take: refused naming the field and the bounding key.
    let e = env
        .sandbox
        .run(
            ContainerSpec::from_oci(limited(None, None, Some(1 << 50)), &env.rootfs).args(["true"]),
        )
        .await
        .expect_err("a 1 PiB limit")
        .to_string();
    ensure!(
        e.contains("linux.resources.memory.limit") && e.contains("default_maxmemory"),
        "{e}"
    );
    ensure!(
        mem_total_kib(&env, None).await? == after,
        "a refused limit plugs nothing"
    );
    Ok(())
}

async fn case_oom_killed_container(env: Arc<Env>) -> Result<()> {
    use futures_util::StreamExt;
    let mut oom = env.sandbox.oom_events();
    // dd's 128 MiB buffer, filled from /dev/zero, under a 64 MiB limit.
    let c = env
        .sandbox
        .create_container(
            ContainerSpec::from_oci(limited(None, None, Some(64 << 20)), &env.rootfs)
                .id("oom-64m")
                .args(["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]),
        )
        .await?;
    c.start().await?;
    let status = tokio::time::timeout(Duration::from_secs(60), c.wait())
        .await
        .context("the OOM kill within 60 s")??;
    ensure!(
        status.to_shell_status() == 137 && status.signal() == Some(9),
        "exit {status}"
    );
    let event = tokio::time::timeout(Duration::from_secs(30), oom.next())
        .await
        .context("an OOM event within 30 s")?;
    ensure!(event.as_deref() == Some("oom-64m"), "OOM event {event:?}");
    c.delete().await?;
    Ok(())
}

/// The first sample named `name` whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    use kata_sandbox::metrics::{parse, Line};
    let lines = parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    lines
        .iter()
        .find_map(|l| match l {
            Line::Sample {
                name: n,
                labels: have,
                value,
            } if n == name
                && labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v)) =>
            {
                Some(*value)
            }
            _ => None,
        })
        .with_context(|| format!("no {name} {labels:?} in the metrics:\n{text}"))
}

/// Issue 16: the sandbox's Prometheus text has the guest's figures (GetMetrics) and the VMM's,
/// and they move when a container fills 64 MiB of the guest's tmpfs.
async fn case_metrics_follow_a_container_allocating_memory(env: Arc<Env>) -> Result<()> {
    let qemu = env.sandbox.pid().to_string();
    let before = env.sandbox.metrics().await;
    ensure!(metric(&before, "kata_guest_up", &[])? == 1.0, "{before}");
    let used_before = metric(&before, "kata_guest_memory_used_bytes", &[])?;
    let cpu_before = metric(
        &before,
        "kata_hypervisor_cpu_seconds_total",
        &[("pid", &qemu)],
    )?;
    ensure!(
        metric(
            &before,
            "kata_hypervisor_resident_memory_bytes",
            &[("pid", &qemu)]
        )? > 0.0
    );
    ensure!(metric(&before, "kata_hypervisor_threads", &[("pid", &qemu)])? >= 2.0);
    metric(
        &before,
        "kata_guest_cpu_seconds_total",
        &[("cpu", "cpu0"), ("mode", "idle")],
    )?;
    metric(&before, "kata_guest_load", &[("period", "1m")])?;
    metric(&before, "kata_guest_disk_total", &[])
        .or_else(|_| metric(&before, "kata_guest_network_total", &[("interface", "lo")]))?;
    ensure!(
        metric(
            &before,
            "kata_sandbox_boot_seconds",
            &[("step", "agent_connected")]
        )? > 0.0
    );

    let c = env
        .sandbox
        .create_container(spec(
            &env,
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 && sleep 600",
            ],
        ))
        .await?;
    c.start().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (used, text) = loop {
        let text = env.sandbox.metrics().await;
        let used = metric(&text, "kata_guest_memory_used_bytes", &[])?;
        if used - used_before >= (48 << 20) as f64 || Instant::now() > deadline {
            break (used, text);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    c.kill(kata_sandbox::Signal::KILL).await?;
    c.wait().await?;
    c.delete().await?;
    ensure!(
        used - used_before >= (48 << 20) as f64,
        "guest memory in use went from {used_before} to {used} only"
    );
    let cpu = metric(
        &text,
        "kata_hypervisor_cpu_seconds_total",
        &[("pid", &qemu)],
    )?;
    ensure!(
        cpu > cpu_before,
        "the VMM's CPU time did not move: {cpu_before} -> {cpu}"
    );
    Ok(())
}

async fn case_bad_boot_inputs(env: Arc<Env>) -> Result<()> {
    bad_boots(env.root_dir.clone()).await
}

/// Builds the busybox rootfs and boots the shared sandbox.
/// Issue 10 item 5: the VMM runs in the sandbox's host cgroup while it runs, and the cgroup
/// is gone after stop. The shared sandbox has Kata's defaults (`kata_sandboxed_pod/<id>`,
/// `sandbox_cgroup_only = false`): QEMU in the overhead cgroup, its vCPU threads in the
/// sandbox cgroup. A sandbox of its own with the spec's path and `sandbox_cgroup_only = true`:
/// QEMU and its helpers all in that cgroup, and nothing of it after shutdown.
async fn case_host_cgroups(env: Arc<Env>) -> Result<()> {
    use kata_testkit::leaks::{cgroup_dirs, cgroup_of};
    let qemu = *env.sandbox.host_pids().first().context("no VMM pid")?;
    let overhead = cgroup_of(qemu, "memory");
    ensure!(
        overhead.as_deref() == Some("/kata_overhead/vm-sandbox-tests"),
        "QEMU's own cgroup: {overhead:?}"
    );
    let vcpus: Vec<u32> = std::fs::read_dir(format!("/proc/{qemu}/task"))?
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            comm.starts_with("CPU ")
                .then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect();
    ensure!(!vcpus.is_empty(), "no thread of QEMU is named `CPU n/...`");
    for tid in &vcpus {
        let cg = cgroup_of(*tid, "cpu");
        ensure!(
            cg.as_deref() == Some("/kata_sandboxed_pod/vm-sandbox-tests"),
            "vCPU thread {tid}'s cgroup: {cg:?}"
        );
    }

    let path = "/kata-rs-vm-test/vm-cgroups";
    let sandbox = Sandbox::builder()
        .id("vm-cgroups")
        .memory_mib(256)
        .root_dir(&env.root_dir)
        .cgroups_path(path)
        .sandbox_cgroup_only(true)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let pids = sandbox.host_pids();
    ensure!(!pids.is_empty(), "no VMM pid");
    for pid in &pids {
        for controller in ["memory", "cpu", "cpuset"] {
            let cg = cgroup_of(*pid, controller);
            ensure!(
                cg.as_deref() == Some(path),
                "pid {pid} in {controller}: {cg:?}"
            );
        }
    }
    ensure!(!cgroup_dirs(path).is_empty(), "no cgroup dir for {path}");
    sandbox.shutdown().await?;
    ensure!(
        cgroup_dirs(path).is_empty(),
        "left: {:?}",
        cgroup_dirs(path)
    );
    ensure!(
        cgroup_dirs("/kata-rs-vm-test").is_empty(),
        "the parent made for it is left: {:?}",
        cgroup_dirs("/kata-rs-vm-test")
    );
    Ok(())
}

/// A container of the shared sandbox with the default mounts and `extra` after them.
fn with_volumes(env: &Env, extra: Vec<oci_spec::runtime::Mount>, script: &str) -> ContainerSpec {
    let mut oci = oci_spec::runtime::Spec::default();
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    mounts.extend(extra);
    oci.set_mounts(Some(mounts));
    ContainerSpec::from_oci(oci, &env.rootfs).args(["sh", "-c", script])
}

fn volume(
    typ: &str,
    source: &Path,
    destination: &str,
    options: &[&str],
) -> oci_spec::runtime::Mount {
    let mut m = oci_spec::runtime::Mount::default();
    m.set_typ(Some(typ.into()));
    m.set_source(Some(source.to_path_buf()));
    m.set_destination(PathBuf::from(destination));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// Host volumes reach the guest through the shared directory: a read-only bind is read and
/// not written, a read-write bind's writes are seen on the host, a single file is bound, a
/// tmpfs volume works and `/dev/shm` is the pod's tmpfs of the spec's size (issue 10 item 3).
async fn case_volumes_reach_the_guest(env: Arc<Env>) -> Result<()> {
    let host = tempfile::tempdir()?;
    let (ro, rw, single) = (
        host.path().join("ro"),
        host.path().join("rw"),
        host.path().join("hosts"),
    );
    std::fs::create_dir(&ro)?;
    std::fs::create_dir(&rw)?;
    std::fs::write(ro.join("hello"), "read-only from the host\n")?;
    std::fs::write(&single, "10.0.0.1 pod\n")?;
    let script = "cat /ro/hello; \
                  (echo x > /ro/new) 2>/dev/null && echo WROTE-RO; \
                  echo from-the-guest > /rw/out; \
                  cat /etc/hosts; \
                  echo t > /scratch/t && cat /scratch/t; \
                  grep -E ' /(scratch|dev/shm) ' /proc/mounts";
    let out = env
        .sandbox
        .run(with_volumes(
            &env,
            vec![
                volume("bind", &ro, "/ro", &["rbind", "ro"]),
                volume("bind", &rw, "/rw", &["rbind", "rw"]),
                volume("bind", &single, "/etc/hosts", &["bind", "ro"]),
                volume("tmpfs", Path::new("tmpfs"), "/scratch", &["size=1m"]),
            ],
            script,
        ))
        .await?;
    let text = out.stdout_str();
    ensure!(
        out.status.success(),
        "{}: {text} {}",
        out.status,
        out.stderr_str()
    );
    ensure!(text.contains("read-only from the host\n"), "{text}");
    ensure!(
        !text.contains("WROTE-RO"),
        "a read-only bind was written: {text}"
    );
    ensure!(!ro.join("new").exists());
    ensure!(
        text.contains("10.0.0.1 pod\n"),
        "the single-file bind: {text}"
    );
    ensure!(text.contains("t\n"), "{text}");
    ensure!(
        text.lines().any(|l| l.contains(" /scratch tmpfs ")),
        "the tmpfs volume: {text}"
    );
    ensure!(
        text.lines()
            .any(|l| l.contains(" /dev/shm tmpfs ") && l.contains("size=65536k")),
        "/dev/shm is the pod's 64 MiB tmpfs: {text}"
    );
    ensure!(
        std::fs::read_to_string(rw.join("out"))? == "from-the-guest\n",
        "the guest's write is on the host"
    );
    Ok(())
}

/// A bind source that does not exist is refused naming `mounts[i].source` and the path, and
/// leaves nothing (the harness checks the shared directory and mounts after the case).
async fn case_volume_missing_source(env: Arc<Env>) -> Result<()> {
    let host = tempfile::tempdir()?;
    let missing = host.path().join("missing");
    let index = oci_spec::runtime::Spec::default()
        .mounts()
        .as_ref()
        .map_or(0, Vec::len);
    let err = match env
        .sandbox
        .create_container(with_volumes(
            &env,
            vec![volume("bind", &missing, "/data", &["rbind"])],
            "true",
        ))
        .await
    {
        Ok(_) => bail!("a container with a missing bind source was created"),
        Err(e) => e.to_string(),
    };
    let field = format!("mounts[{index}].source {}", missing.display());
    ensure!(
        err.contains(&field) && err.contains("does not exist"),
        "{err}"
    );
    ensure!(
        env.sandbox.container_ids().is_empty(),
        "the container is not kept"
    );
    Ok(())
}

/// The guest's block devices (`/sys/block`), as a container of `sandbox` lists them.
async fn guest_disks(sandbox: &Sandbox, rootfs: &Path) -> Result<String> {
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(rootfs).args(["ls", "/sys/block"]))
        .await?;
    ensure!(out.status.success(), "ls /sys/block: {out:?}");
    Ok(out.stdout_str().to_string())
}

/// A loop device over `image`, detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn over(image: &Path) -> Result<LoopDevice> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()?;
        ensure!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(LoopDevice(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        )))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// Block volumes (issue 10 item 3) in `sandbox`: an ext4 image mounted as a volume is read
/// and written (the write reaches the image), a read-only one refuses writes, a bind of a
/// host block device (a loop device over the image) is the disk; the disks go with their
/// containers (`/sys/block` as before); a missing image or a directory is refused naming
/// `mounts[i].source` and attaches nothing. Returns the disks the guest had while the first
/// container ran that it has not otherwise (its volume's).
async fn block_volume_checks(sandbox: &Sandbox, rootfs: &Path) -> Result<Vec<String>> {
    use kata_testkit::image::ext4;
    let work = tempfile::tempdir()?;
    let image = work.path().join("volume.ext4");
    ext4::busybox_ext4(&image).context("the ext4 fixture")?;
    let first = oci_spec::runtime::Spec::default()
        .mounts()
        .as_ref()
        .map_or(0, Vec::len);
    let with = |m: oci_spec::runtime::Mount, script: &str| {
        let mut oci = oci_spec::runtime::Spec::default();
        let mut mounts = oci.mounts().clone().unwrap_or_default();
        mounts.push(m);
        oci.set_mounts(Some(mounts));
        ContainerSpec::from_oci(oci, rootfs).args(["sh", "-c", script])
    };
    let before = guest_disks(sandbox, rootfs).await?;

    let marker = format!("/disk{}", ext4::MARKER_PATH);
    let out = sandbox
        .run(with(
            volume("ext4", &image, "/disk", &[]),
            &format!(
                "cat {marker}; echo on-volume > /disk/written; grep ' /disk ' /proc/mounts; \
                 ls /sys/block"
            ),
        ))
        .await?;
    let text = out.stdout_str();
    ensure!(out.status.success(), "rw block volume: {out:?}");
    ensure!(text.starts_with(ext4::MARKER), "the marker: {text:?}");
    ensure!(
        text.contains(" ext4 "),
        "/disk is not the ext4 disk: {text:?}"
    );
    let added: Vec<String> = text
        .lines()
        .filter(|l| !l.contains(' ') && !before.lines().any(|b| b == *l))
        .map(str::to_owned)
        .collect();
    ensure!(
        guest_disks(sandbox, rootfs).await? == before,
        "a disk stayed after delete"
    );
    let written = std::process::Command::new("debugfs")
        .args(["-R", "cat /written"])
        .arg(&image)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&written.stdout) == "on-volume\n",
        "the write did not reach the image"
    );

    let out = sandbox
        .run(with(
            volume("ext4", &image, "/disk", &["ro"]),
            &format!("cat {marker}; touch /disk/x"),
        ))
        .await?;
    ensure!(
        !out.status.success() && out.stdout_str() == ext4::MARKER,
        "a read-only block volume: {out:?}"
    );
    ensure!(
        out.stderr_str().contains("Read-only"),
        "{:?}",
        out.stderr_str()
    );
    ensure!(
        guest_disks(sandbox, rootfs).await? == before,
        "a disk stayed after delete"
    );

    let device = LoopDevice::over(&image)?;
    let out = sandbox
        .run(with(
            volume("bind", &device.0, "/dev-disk", &["rbind", "ro"]),
            "cat /dev-disk/written; touch /dev-disk/x",
        ))
        .await?;
    ensure!(
        !out.status.success() && out.stdout_str() == "on-volume\n",
        "a read-only bind of a host block device: {out:?}"
    );
    drop(device);
    ensure!(
        guest_disks(sandbox, rootfs).await? == before,
        "a disk stayed after delete"
    );

    let dir = work.path().join("dir");
    std::fs::create_dir(&dir)?;
    for (source, why) in [
        (work.path().join("missing.ext4"), "exist"),
        (dir, "neither a block device nor a regular file"),
    ] {
        let err = match sandbox
            .create_container(with(volume("ext4", &source, "/disk", &[]), "true"))
            .await
        {
            Ok(_) => bail!(
                "a container with block volume {} was created",
                source.display()
            ),
            Err(e) => e.to_string(),
        };
        let field = format!("mounts[{first}].source {}", source.display());
        ensure!(err.contains(&field) && err.contains(why), "{err}");
        ensure!(sandbox.container_ids().is_empty(), "the container is kept");
    }
    ensure!(
        guest_disks(sandbox, rootfs).await? == before,
        "a disk was attached for bad input"
    );
    ensure!(mounts_under(work.path()).is_empty(), "host mounts left");
    Ok(added)
}

/// Block volumes on the default `virtio-scsi` controller of the shared sandbox.
async fn case_block_volumes(env: Arc<Env>) -> Result<()> {
    let added = block_volume_checks(&env.sandbox, &env.rootfs).await?;
    ensure!(
        matches!(&added[..], [d] if d.starts_with("sd")),
        "the volume is not one SCSI disk: {added:?}"
    );
    Ok(())
}

/// `block_device_driver = "virtio-blk"` with PCIe root ports, through a guest: block volumes
/// hot-plugged as virtio-blk-pci on the ports and found by the agent at their PCI paths,
/// unplugged with their containers.
async fn case_virtio_blk_pci_volumes(env: Arc<Env>) -> Result<()> {
    let builder = Sandbox::builder()
        .id("vm-virtio-blk")
        .memory_mib(256)
        .root_dir(&env.root_dir);
    let mut hv = builder.config().clone();
    hv.block_device_driver = kata_hypervisor::config::BlockDeviceDriver::VirtioBlk;
    hv.pcie_root_port = 2;
    let sandbox = builder
        .hypervisor_config(hv)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let checked = block_volume_checks(&sandbox, &env.rootfs).await;
    sandbox.shutdown().await?;
    let added = checked?;
    ensure!(
        matches!(&added[..], [d] if d.starts_with("vd")),
        "the volume is not one virtio-blk disk: {added:?}"
    );
    Ok(())
}

/// The md5 of the busybox binary in the test rootfs, as the host reads it.
fn host_busybox_md5(env: &Env) -> Result<String> {
    let out = sh(
        "md5sum",
        &[&env.rootfs.join("bin/busybox").display().to_string()],
    )?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

/// Runs a container in `sb` that reads its rootfs: the filesystem type of `/` and the md5 of
/// its busybox, which must be the host's.
async fn rootfs_read_through_share(sb: &Sandbox, env: &Env, fstype: &str) -> Result<()> {
    let out = sb
        .run(
            ContainerSpec::from_rootfs_dir(&env.rootfs).args([
                "/bin/busybox",
                "sh",
                "-c",
                "/bin/busybox awk '$2 == \"/\" { print $3 }' /proc/mounts; /bin/busybox md5sum /bin/busybox",
            ]),
        )
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "exit {:?}: {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.lines().next() == Some(fstype),
        "the rootfs is not on {fstype}: {text}"
    );
    let md5 = host_busybox_md5(env)?;
    ensure!(
        text.contains(&md5),
        "the guest read other bytes than the host's ({md5}): {text}"
    );
    Ok(())
}

/// A sandbox `id` with `shared_fs` set, next to the shared one.
async fn sandbox_with_shared_fs(
    env: &Env,
    id: &str,
    shared_fs: kata_hypervisor::SharedFs,
    agent_timeout: Duration,
) -> Result<Sandbox> {
    let builder = Sandbox::builder()
        .id(id)
        .memory_mib(256)
        .root_dir(&env.root_dir)
        .agent_timeout(agent_timeout);
    let mut hv = builder.config().clone();
    hv.shared_fs = shared_fs;
    let sb = builder
        .hypervisor_config(hv)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    Ok(sb)
}

/// Shuts `sb` down and checks nothing of sandbox `id` is left: no QEMU, virtiofsd or vsock
/// backend, no mount, no directory (with the sockets in it).
async fn shut_down_leaving_nothing(sb: Sandbox, id: &str) -> Result<()> {
    let dir = sb.dir().to_path_buf();
    sb.shutdown().await?;
    let left = processes_mentioning(id, "vm_sandbox");
    ensure!(left.is_empty(), "processes left: {left:?}");
    ensure!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    Ok(())
}

/// `shared_fs = "virtio-9p"` stays an option: a container runs and reads its rootfs over 9p.
async fn case_virtio_9p_still_serves_a_rootfs(env: Arc<Env>) -> Result<()> {
    let id = "share-9p";
    let sb = sandbox_with_shared_fs(
        &env,
        id,
        kata_hypervisor::SharedFs::Virtio9p,
        Duration::from_secs(120),
    )
    .await?;
    ensure!(
        !sb.dir().join("virtiofsd.sock").exists()
            && processes_mentioning(id, "vm_sandbox")
                .iter()
                .all(|(_, cmd)| !cmd.contains("virtiofsd")),
        "a virtio-9p sandbox runs no virtiofsd"
    );
    let checked = rootfs_read_through_share(&sb, &env, "9p").await;
    shut_down_leaving_nothing(sb, id).await?;
    checked?;
    // The shared sandbox is on virtio-fs, the default.
    rootfs_read_through_share(&env.sandbox, &env, "virtiofs").await
}

/// QEMU's further boots (the stuck-vsock recovery, forced by the backend's fault hook: two
/// silent boots, so three in all, the most the backend tries) with virtio-fs: each QEMU's
/// virtiofsd exits with it, kata-resource starts a fresh one on the same socket before the next
/// QEMU, and the sandbox serves its rootfs; its teardown leaves nothing of any daemon.
async fn case_reboots_restart_virtiofsd(env: Arc<Env>) -> Result<()> {
    let id = "share-reboot";
    kata_hypervisor::qemu::fault::silence_boots(id, 2);
    let t0 = Instant::now();
    let sb = sandbox_with_shared_fs(
        &env,
        id,
        kata_hypervisor::SharedFs::VirtioFs,
        Duration::from_secs(240),
    )
    .await?;
    let log = std::fs::read_to_string(sb.dir().join("virtiofsd.log")).unwrap_or_default();
    let checks = async {
        let restarts = log.matches("restarted for a new VMM").count();
        ensure!(
            restarts == 2,
            "the VM was not booted 3 times, or virtiofsd was not restarted before each further \
             boot ({restarts} restarts): {log}"
        );
        println!("    booted 3 times in {:.1?}", t0.elapsed());
        // The third QEMU is in the sandbox's host cgroups as the first was, its vCPUs too.
        let dir = sb.dir().display().to_string();
        let qemu = kata_testkit::leaks::cmdlines()
            .into_iter()
            .find(|(_, cmd)| cmd.contains("qemu-system") && cmd.contains(&dir))
            .map(|(pid, _)| pid)
            .context("no QEMU for the sandbox")?;
        let cg = kata_testkit::leaks::cgroup_of(qemu, "memory");
        ensure!(
            cg.as_deref() == Some(&*format!("/kata_overhead/{id}")),
            "the third QEMU's cgroup: {cg:?}"
        );
        let vcpus: Vec<u32> = std::fs::read_dir(format!("/proc/{qemu}/task"))?
            .flatten()
            .filter_map(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                comm.starts_with("CPU ")
                    .then(|| t.file_name().to_str()?.parse().ok())?
            })
            .collect();
        ensure!(!vcpus.is_empty(), "no thread of QEMU is named `CPU n/...`");
        for tid in &vcpus {
            let cg = kata_testkit::leaks::cgroup_of(*tid, "cpu");
            ensure!(
                cg.as_deref() == Some(&*format!("/kata_sandboxed_pod/{id}")),
                "the third QEMU's vCPU thread {tid}'s cgroup: {cg:?}"
            );
        }
        rootfs_read_through_share(&sb, &env, "virtiofs").await
    }
    .await;
    shut_down_leaving_nothing(sb, id).await?;
    checks
}

/// virtiofsd killed while a container runs: the sandbox reports its death naming virtiofsd,
/// every waiter fails, and the teardown leaves no QEMU, virtiofsd, socket, mount or directory.
async fn case_virtiofsd_killed_kills_the_sandbox_and_leaves_nothing(env: Arc<Env>) -> Result<()> {
    let id = "virtiofsd-killed";
    let sandbox = Arc::new(
        sandbox_with_shared_fs(
            &env,
            id,
            kata_hypervisor::SharedFs::VirtioFs,
            Duration::from_secs(120),
        )
        .await?,
    );
    let dir = sandbox.dir().to_path_buf();
    let c = sandbox
        .create_container(ContainerSpec::from_rootfs_dir(&env.rootfs).args([
            "/bin/busybox",
            "sleep",
            "600",
        ]))
        .await?;
    c.start().await?;
    let waiter = {
        let (sandbox, cid) = (sandbox.clone(), c.id().to_string());
        tokio::spawn(async move { sandbox.wait_process(&cid, &cid).await })
    };
    let socket = format!("--socket-path={}", dir.join("virtiofsd.sock").display());
    let daemon = kata_testkit::leaks::cmdlines()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("virtiofsd") && cmd.contains(&socket))
        .map(|(pid, _)| pid)
        .min()
        .context("no virtiofsd for the sandbox")?;
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let r = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .context("the wait still hangs after virtiofsd died")??;
    ensure!(
        matches!(r, Err(kata_sandbox::Error::SandboxDead { .. })),
        "wait: {r:?}"
    );
    let why = sandbox
        .death()
        .context("the sandbox does not say it died")?;
    ensure!(
        why.contains("virtiofsd"),
        "the death does not name virtiofsd: {why}"
    );
    println!(
        "    the sandbox died {:.1?} after virtiofsd was killed: {}",
        t0.elapsed(),
        why.lines().next().unwrap_or_default()
    );
    torn_down(id, &dir, t0, Duration::from_secs(40)).await?;
    drop(c);
    sandbox.shutdown().await?;
    Ok(())
}

async fn setup() -> Result<Env> {
    let work = tempfile::tempdir()?;
    let root_dir = work.path().join("sandboxes");
    let rootfs = work.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).context("the busybox rootfs")?;
    let t = Instant::now();
    let sandbox = Sandbox::builder()
        .id("vm-sandbox-tests")
        .memory_mib(256)
        .root_dir(&root_dir)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    println!(
        "booted sandbox in {:.1?} ({:?}): {:?}",
        t.elapsed(),
        sandbox.describe(),
        sandbox.boot_timings()
    );
    Ok(Env {
        sandbox,
        rootfs,
        root_dir,
        _work: work,
    })
}

/// The shared sandbox shuts down and leaves nothing.
async fn shutdown_leaves_nothing(env: Env) -> Result<()> {
    let sandbox_dir = env.sandbox.dir().to_path_buf();
    env.sandbox.shutdown().await?;
    ensure!(
        !sandbox_dir.exists(),
        "sandbox dir {} left",
        sandbox_dir.display()
    );
    // By this run's directory: another run's sandbox of the same id is not this one's leak.
    let left = processes_mentioning(&env.root_dir.display().to_string(), "vm_sandbox");
    ensure!(left.is_empty(), "processes left after shutdown: {left:?}");
    let mounts = mounts_under(&env.root_dir);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    // The sandbox's host cgroups (Kata's default paths, sandbox_cgroup_only = false) are gone,
    // unless another run's sandbox of the same id holds them now.
    if processes_mentioning("vm-sandbox-tests", "vm_sandbox").is_empty() {
        for rel in [
            "kata_sandboxed_pod/vm-sandbox-tests",
            "kata_overhead/vm-sandbox-tests",
        ] {
            let left = kata_testkit::leaks::cgroup_dirs(rel);
            ensure!(left.is_empty(), "host cgroups left: {left:?}");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Before the harness's own subscriber: the agent log case reads the host's trace.
    agent_trace::install();
    Suite::new("vm_sandbox")
        .timeout(Duration::from_secs(120))
        .case("agent_health_and_details", case_agent_health_and_details)
        .case("echo_stdout_stderr", case_echo_stdout_stderr)
        .case("exit_codes_0_3_137", case_exit_codes)
        .case("stdin_through_cat", case_stdin_through_cat)
        .case("exec_into_running", case_exec_into_running)
        .case("two_containers", case_two_containers)
        .case("env_cwd_uid_hostname", case_env_cwd_uid)
        .case("readonly_rootfs", case_readonly_rootfs)
        .case("block_rootfs", case_block_rootfs)
        .case("seccomp_and_capabilities", case_seccomp_and_capabilities)
        .case("eight_concurrent_commands", case_eight_concurrent)
        .case(
            "pause_resume_under_traffic",
            case_pause_resume_under_traffic,
        )
        .case("bad_container_input", case_bad_container_input)
        .case(
            "agent_log_in_the_host_trace",
            case_agent_log_in_the_host_trace,
        )
        .case(
            "debug_console_refused_when_disabled",
            case_debug_console_refused_when_disabled,
        )
        .case_with_timeout(
            "debug_console_runs_uname_in_the_guest",
            Duration::from_secs(300),
            case_debug_console_runs_uname_in_the_guest,
        )
        .case("cpu_quota_hot_plugs_vcpus", case_cpu_quota_hot_plugs_vcpus)
        .case(
            "static_sizing_boots_the_vm_at_the_workload_size",
            case_static_sizing_boots_the_vm_at_the_workload_size,
        )
        .case(
            "memory_limit_hot_plugs_memory",
            case_memory_limit_hot_plugs_memory,
        )
        .case("oom_killed_container_exits_137", case_oom_killed_container)
        .case(
            "reclaim_guest_freed_memory_gives_memory_back",
            case_reclaim_guest_freed_memory_gives_memory_back,
        )
        .case(
            "metrics_follow_a_container_allocating_memory",
            case_metrics_follow_a_container_allocating_memory,
        )
        .case("volumes_reach_the_guest", case_volumes_reach_the_guest)
        .case("volume_missing_source", case_volume_missing_source)
        .case_with_timeout(
            "block_volumes",
            Duration::from_secs(300),
            case_block_volumes,
        )
        // These boot (or try to boot) sandboxes of their own next to the shared one.
        .case_with_timeout(
            "drop_without_shutdown",
            Duration::from_secs(300),
            case_drop_without_shutdown,
        )
        .case_with_timeout(
            "qemu_killed_fails_every_waiter_and_leaves_nothing",
            Duration::from_secs(300),
            case_qemu_killed_fails_every_waiter_and_leaves_nothing,
        )
        .case_with_timeout(
            "pod_network_end_to_end",
            Duration::from_secs(600),
            case_pod_network_end_to_end,
        )
        .case_with_timeout(
            "pod_network_hot_plug",
            Duration::from_secs(600),
            case_pod_network_hot_plug,
        )
        .case_with_timeout(
            "bad_boot_inputs",
            Duration::from_secs(600),
            case_bad_boot_inputs,
        )
        .case_with_timeout("host_cgroups", Duration::from_secs(300), case_host_cgroups)
        .case_with_timeout(
            "virtio_blk_pci_volumes",
            Duration::from_secs(600),
            case_virtio_blk_pci_volumes,
        )
        .case_with_timeout(
            "virtio_9p_still_serves_a_rootfs",
            Duration::from_secs(300),
            case_virtio_9p_still_serves_a_rootfs,
        )
        .case_with_timeout(
            "reboots_restart_virtiofsd",
            Duration::from_secs(400),
            case_reboots_restart_virtiofsd,
        )
        .case_with_timeout(
            "virtiofsd_killed_kills_the_sandbox_and_leaves_nothing",
            Duration::from_secs(300),
            case_virtiofsd_killed_kills_the_sandbox_and_leaves_nothing,
        )
        // Every case deletes what it creates: nothing may stay shared or mounted.
        .check_each(|env: &Env| no_container_leftovers(&env.sandbox))
        .teardown("shutdown_leaves_nothing", shutdown_leaves_nothing)
        .run_with(setup())
}

/// The agent's log reaches the host's trace: its boot line (logged before the host
/// connected) and a container's, as `kata_agent` events with the sandbox id.
async fn case_agent_log_in_the_host_trace(env: Arc<Env>) -> Result<()> {
    let id = env.sandbox.id();
    let limit = Duration::from_secs(20);
    agent_trace::wait_for(id, "kata-agent serving", 1, limit)
        .await
        .map_err(anyhow::Error::msg)?;
    let before = agent_trace::wait_for(id, "container created", 0, limit)
        .await
        .map_err(anyhow::Error::msg)?
        .len();
    run(&env, &["true"]).await?;
    agent_trace::wait_for(id, "container created", before + 1, limit)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The debug console is refused naming the key on a sandbox started without it.
async fn case_debug_console_refused_when_disabled(env: Arc<Env>) -> Result<()> {
    let e = env.sandbox.debug_console().await.unwrap_err();
    ensure!(
        e.to_string().contains("debug_console_enabled = true"),
        "{e}"
    );
    Ok(())
}

/// With `debug_console_enabled` (and an image with a shell: the debug initrd), the console
/// is a shell in the guest: `uname -r` answers the guest kernel's release.
async fn case_debug_console_runs_uname_in_the_guest(env: Arc<Env>) -> Result<()> {
    let manifest = kata_hypervisor::GuestManifest::load_default()?;
    let initrd = manifest
        .initrd_debug
        .clone()
        .context("the guest manifest has no debug initrd (with a shell)")?;
    let sb = Sandbox::builder()
        .id("vm-console")
        .memory_mib(256)
        .root_dir(&env.root_dir)
        .initrd(&initrd)
        .debug_console(true)
        .build()
        .await?;
    let result = async {
        let (mut output, mut input) = sb.debug_console().await?.split();
        input.resize(40, 120).await?;
        input
            .write(b"echo K=$(uname -r)=; stty size; exit\n")
            .await?;
        let mut text = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), output.read_to_end(&mut text))
            .await
            .context("the console's shell did not exit")??;
        let text = String::from_utf8_lossy(&text).into_owned();
        ensure!(
            text.contains(&format!("K={}", manifest.kernel_version)),
            "not the guest kernel {}: {text}",
            manifest.kernel_version
        );
        ensure!(text.contains("40 120"), "window size: {text}");
        Ok(())
    }
    .await;
    sb.shutdown().await?;
    result
}

/// Waits (until `limit` after `t0`) for a dead sandbox's teardown: its directory and every
/// process naming it gone, then no mount left under it.
async fn torn_down(id: &str, dir: &Path, t0: Instant, limit: Duration) -> Result<()> {
    while dir.exists() || !processes_mentioning(id, "vm_sandbox").is_empty() {
        if t0.elapsed() > limit {
            bail!(
                "not torn down: dir {} exists {}, processes {:?}, mounts {:?}",
                dir.display(),
                dir.exists(),
                processes_mentioning(id, "vm_sandbox"),
                mounts_under(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
    Ok(())
}
