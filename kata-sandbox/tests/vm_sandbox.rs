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
        &["did not answer", "VM was stopped", "booted twice"],
    )
    .await?;
    Ok(())
}

/// No container directory under the sandbox's shared dir, and no mount below the sandbox dir.
fn no_container_leftovers(sandbox: &Sandbox) -> Result<()> {
    let shared = sandbox.dir().join("shared");
    let left: Vec<_> = std::fs::read_dir(&shared)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(left.is_empty(), "left in {}: {left:?}", shared.display());
    let mounts = mounts_under(sandbox.dir());
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
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
    while dir.exists() || !processes_mentioning(id, "vm_sandbox").is_empty() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "not torn down: dir {} exists {}, processes {:?}, mounts {:?}",
                dir.display(),
                dir.exists(),
                processes_mentioning(id, "vm_sandbox"),
                mounts_under(&dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    drop(c);
    sandbox.shutdown().await?;
    Ok(())
}

async fn case_bad_boot_inputs(env: Arc<Env>) -> Result<()> {
    bad_boots(env.root_dir.clone()).await
}

/// Builds the busybox rootfs and boots the shared sandbox.
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
    let left = processes_mentioning("vm-sandbox-tests", "vm_sandbox");
    ensure!(left.is_empty(), "processes left after shutdown: {left:?}");
    let mounts = mounts_under(&env.root_dir);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}

fn main() -> std::process::ExitCode {
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
        .case("seccomp_and_capabilities", case_seccomp_and_capabilities)
        .case("eight_concurrent_commands", case_eight_concurrent)
        .case("bad_container_input", case_bad_container_input)
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
            "bad_boot_inputs",
            Duration::from_secs(600),
            case_bad_boot_inputs,
        )
        // Every case deletes what it creates: nothing may stay shared or mounted.
        .check_each(|env: &Env| no_container_leftovers(&env.sandbox))
        .teardown("shutdown_leaves_nothing", shutdown_leaves_nothing)
        .run_with(setup())
}
