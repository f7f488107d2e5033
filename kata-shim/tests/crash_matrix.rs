//! Tier 5, the crash matrix (issue 14 item 2): {the shim, QEMU, vhost-device-vsock,
//! virtiofsd} × {boot before `state.json` exists, Create, Start, Exec, Delete, Shutdown},
//! each cell a `kill -9` of that process at that step under a real containerd, through
//! kata-sandbox's crash points (feature `crash-points`, which this package's tests turn on;
//! `KATA_RS_CRASH_AT=@<file>` in containerd's environment, inherited by every shim, and the
//! cell's `<step>:<victim>` written to the file, consumed as it fires).
//!
//! Each cell runs what a user would: `ctr run -d` (boot, Create, Start), `ctr task exec`,
//! `ctr task kill`, `ctr task delete` (Delete, then the shim's Shutdown), and after that the
//! user's cleanup (`ctr task delete -f`, `ctr container rm`). It checks that the crash point
//! fired, that no `ctr` call hangs (60 s each), that containerd heard of the crash (an error
//! or the task's exit, unless the victim died after containerd had its answer), and that after
//! the cleanup nothing of the cell is left: no process naming its sandbox, shim, mount,
//! sandbox directory, shim socket or host cgroup, and no task or container in containerd.
//! One output line per cell. The image-unpack step of the issue has no cell: the shim never
//! unpacks an image (containerd does; kata-rs's unpacker serves the Rust API).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_sandbox::crash::{CrashStep, Victim, CRASH_ENV};
use kata_testkit::containerd::{Containerd, StartOptions};
use kata_testkit::harness::{booted, Suite};
use kata_testkit::image as testimage;
use kata_testkit::leaks::{cgroup_dirs, cmdlines};
use kata_testkit::missing_root_or_tools;

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-crash";
/// The longest a `ctr` call may take before the cell fails as hung.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);

struct Env {
    ctr: Containerd,
    /// The file `KATA_RS_CRASH_AT` points at.
    crash_file: PathBuf,
    _work: tempfile::TempDir,
}

/// One `ctr` call, killed after [`CTR_TIMEOUT`]: (succeeded, stderr). A hang is an error.
fn ctr(c: &Containerd, args: &[&str]) -> Result<(bool, String)> {
    let mut cmd: Command = c.command(args);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let t0 = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if t0.elapsed() > CTR_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`ctr {}` hung for {CTR_TIMEOUT:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out: Output = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// What is left of sandbox `id`: processes naming its directory or shim, its mounts, its
/// directory, its host cgroups, containerd's task and container.
fn left_of(c: &Containerd, id: &str) -> Vec<String> {
    let dir = format!("/run/kata/{id}/");
    let mut left: Vec<String> = cmdlines()
        .into_iter()
        .filter(|(_, cmd)| {
            cmd.contains(&dir)
                || (cmd.contains("containerd-shim-kata-v2") && cmd.contains(&format!("-id {id}")))
        })
        .map(|(pid, cmd)| format!("process {pid}: {cmd}"))
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(
        mountinfo
            .lines()
            .filter(|l| l.contains(&dir) || l.contains(&format!("/{id}/rootfs")))
            .map(|l| format!("mount {l}")),
    );
    if Path::new(&dir).exists() {
        left.push(format!("directory {dir}"));
    }
    for rel in [
        format!("kata_sandboxed_pod/{id}"),
        format!("kata_overhead/{id}"),
        format!("{NS}/{id}"),
    ] {
        left.extend(
            cgroup_dirs(&rel)
                .into_iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
    }
    for (what, args) in [("task", ["task", "ls"]), ("container", ["container", "ls"])] {
        let listed = c.ctr(&args);
        if String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id))
        {
            left.push(format!("containerd still lists {what} {id}"));
        }
    }
    left
}

/// One cell: arm the crash point, run the user's sequence, clean up as a user, check.
fn cell(env: &Env, step: CrashStep, victim: Victim) -> Result<String> {
    let c = &env.ctr;
    let id = format!("kc-{}-{}", step.name(), victim.name());
    std::fs::write(
        &env.crash_file,
        format!("{}:{}", step.name(), victim.name()),
    )?;
    let mut said = Vec::new();
    let mut any_error = false;
    let mut note = |what: &str, (ok, err): (bool, String)| {
        any_error |= !ok;
        said.push(if ok {
            format!("{what} ok")
        } else {
            format!("{what} error ({})", err.lines().next().unwrap_or(""))
        });
        ok
    };
    let run = ctr(
        c,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            testimage::IMAGE_NAME,
            &id,
            "sleep",
            "1000",
        ],
    )?;
    let ran = note("run", run);
    if ran {
        booted();
        let exec = ctr(c, &["task", "exec", "--exec-id", "e1", &id, "true"])?;
        note("exec", exec);
    }
    let status_before_kill = c.task_status(&id);
    let stopped_by_crash = matches!(status_before_kill.as_deref(), Some("STOPPED") | None);
    let kill = ctr(c, &["task", "kill", "-s", "KILL", &id])?;
    if note("kill", kill) {
        let _ = c.wait_status(&id, "STOPPED", Duration::from_secs(15));
    }
    let delete = ctr(c, &["task", "delete", &id])?;
    note("delete", delete);
    // The user's cleanup after whatever happened.
    let _ = ctr(c, &["task", "delete", "-f", &id])?;
    let _ = ctr(c, &["container", "rm", &id])?;

    let fired = !env.crash_file.exists();
    let _ = std::fs::remove_file(&env.crash_file);
    ensure!(
        fired,
        "{id}: the crash point {step:?}:{victim:?} never fired ({said:?})"
    );
    // Cleanup may take a moment (containerd runs the shim's `delete` for a dead shim).
    let t0 = Instant::now();
    let left = loop {
        let left = left_of(c, &id);
        if left.is_empty() || t0.elapsed() > Duration::from_secs(20) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        left.is_empty(),
        "{id}: left after cleanup ({said:?}): {left:#?}"
    );
    // containerd must have heard of it: an error, or the task found dead before the kill —
    // except when the victim died after containerd had its answer (the shim during Shutdown,
    // after the task was deleted; a helper killed at Delete or Shutdown, when the VM was
    // going away anyway).
    let after_the_answer = matches!(step, CrashStep::Shutdown)
        || (matches!(step, CrashStep::Delete) && victim != Victim::Runtime);
    ensure!(
        any_error || stopped_by_crash || after_the_answer,
        "{id}: containerd never heard of the crash: {said:?}"
    );
    Ok(format!(
        "crash {:>8} x {:<9} {} -> clean in {:.1?}",
        step.name(),
        victim.name(),
        said.join(", "),
        t0.elapsed()
    ))
}

fn case_matrix(env: &Env) -> Result<()> {
    let mut failures = Vec::new();
    let mut cells = 0;
    for victim in Victim::ALL {
        for step in CrashStep::ALL {
            cells += 1;
            match cell(env, step, victim) {
                Ok(line) => println!("    {line}"),
                Err(e) => {
                    println!(
                        "    crash {} x {}: FAILED {e:#}",
                        step.name(),
                        victim.name()
                    );
                    failures.push(format!("{}:{}: {e:#}", step.name(), victim.name()));
                    // The next cell starts clean.
                    env.ctr
                        .force_remove(&format!("kc-{}-{}", step.name(), victim.name()));
                }
            }
        }
    }
    println!(
        "    crash matrix: {} of {cells} cells passed",
        cells - failures.len()
    );
    ensure!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

fn missing() -> Option<String> {
    if let Some(reason) = missing_root_or_tools(&["containerd", "ctr", "qemu-system-x86_64"]) {
        return Some(reason);
    }
    if !kata_hypervisor::GuestManifest::default_path().is_file() {
        return Some("no guest image (run `make guest`)".into());
    }
    None
}

fn setup() -> Result<Env> {
    let work = tempfile::Builder::new().prefix("kata-crash").tempdir()?;
    let tmp = work.path().to_path_buf();
    let image = testimage::busybox_image_tar(&tmp.join("busybox.tar"))?;
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let crash_file = tmp.join("crash-at");
    let crash_env = format!("@{}", crash_file.display());
    let ctr = Containerd::start_with(
        &tmp,
        &StartOptions {
            namespace: Some(NS),
            path_first: shim.parent(),
            env: &[(CRASH_ENV, &crash_env)],
            ..StartOptions::default()
        },
    )?;
    ctr.ok(&[
        "image",
        "import",
        image.path.to_str().context("image path")?,
    ])?;
    Ok(Env {
        ctr,
        crash_file,
        _work: work,
    })
}

fn main() -> std::process::ExitCode {
    Suite::new("crash_matrix")
        .label("crash matrix")
        .requires(missing)
        .timeout(Duration::from_secs(1500))
        .blocking_case("kill_9_at_every_step", case_matrix)
        .run_with(async { setup() })
}
