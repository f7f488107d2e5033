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
//!
//! The fifth row, {the shim while a built-in VM runs in it} × the same six steps, needs a real
//! KVM: it runs in the nested lab (`lab/runner/src/crash.rs`, checks `builtin-crash-<step>`),
//! under a containerd in L1, with these cells' checks and, since the VM dies with the shim's
//! process, a check that no process holds a KVM descriptor after the cleanup.
//!
//! One more fault, `enospc` (case `full_state_dir_at_every_step`): a second containerd whose
//! shims keep their sandboxes under a 16 MiB tmpfs (`$KATA_RS_ROOT_DIR`), filled at the step
//! (boot before `state.json`, Create, Start, Exec, Delete) and left full through the user's
//! cleanup. containerd must get an error naming `state.json` and "No space left on device"
//! (at the step, or at the next one that writes the state; Delete writes none that matters),
//! every `state.json` seen must parse (it is replaced by rename, never truncated), and nothing
//! may be left.
//!
//! One cell at a time: `KATA_RS_CRASH_CELLS=exec:qemu,boot:enospc` (a comma list of
//! `<step>:<victim>`) runs only those.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use kata_sandbox::crash::{CrashStep, Victim, CRASH_ENV, ENOSPC_FILL};
use kata_sandbox::persist::SandboxState;
use kata_testkit::containerd::{self, Containerd, ShimContainerd, StartOptions};
use kata_testkit::harness::{booted, Suite};
use kata_testkit::image as testimage;
use kata_testkit::leaks::sandbox_leftovers;

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-crash";
/// The longest a `ctr` call may take before the cell fails as hung.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);

struct Env {
    ctr: ShimContainerd,
    /// The file `KATA_RS_CRASH_AT` points at.
    crash_file: PathBuf,
    _crash_dir: tempfile::TempDir,
}

/// The state root of the kill cells' shims (the default).
const DEFAULT_ROOT: &str = "/run/kata";

/// One `ctr` call, killed after [`CTR_TIMEOUT`]: (succeeded, stderr). A hang is an error.
fn ctr(c: &Containerd, args: &[&str]) -> Result<(bool, String)> {
    c.ctr_within(args, CTR_TIMEOUT)
}

/// Whether `KATA_RS_CRASH_CELLS` (a comma list of `<step>:<victim>`) selects the cell; all
/// cells without it.
fn selected(step: CrashStep, victim: Victim) -> bool {
    let name = format!("{}:{}", step.name(), victim.name());
    match std::env::var("KATA_RS_CRASH_CELLS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|c| c.trim() == name),
        _ => true,
    }
}

/// What is left of sandbox `id` under the state root `root`
/// ([`kata_testkit::leaks::sandbox_leftovers`]).
fn left_of(c: &Containerd, root: &Path, id: &str) -> Vec<String> {
    sandbox_leftovers(c, root, "containerd-shim-kata-v2", NS, id)
}

/// `ctr run -d` of a `sleep 1000` container `id` under the kata runtime.
fn run_detached(id: &str) -> [&str; 8] {
    [
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        testimage::IMAGE_NAME,
        id,
        "sleep",
        "1000",
    ]
}

/// [`left_of`] once it is empty, or as it is after 20 s (cleanup may take a moment:
/// containerd runs the shim's `delete` for a dead shim).
fn left_after_cleanup(c: &Containerd, root: &Path, id: &str) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let left = left_of(c, root, id);
        if left.is_empty() || t0.elapsed() > Duration::from_secs(20) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let run = ctr(c, &run_detached(&id))?;
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
    let left = left_after_cleanup(c, Path::new(DEFAULT_ROOT), &id);
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
            if !selected(step, victim) {
                continue;
            }
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

/// A tmpfs of `size` on a temporary directory, unmounted (lazily) and removed on drop.
struct SmallTmpfs(tempfile::TempDir);

impl SmallTmpfs {
    fn mount(size: &str) -> Result<SmallTmpfs> {
        let dir = tempfile::Builder::new().prefix("kata-enospc").tempdir()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0711")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()?;
        ensure!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(SmallTmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Every `state.json` under `root/id` must parse, and no temporary may stay beside it.
fn check_state(root: &Path, id: &str, when: &str, torn: &mut Vec<String>) {
    let dir = root.join(id);
    if SandboxState::path(&dir).exists() {
        if let Err(e) = SandboxState::load(&dir) {
            if !matches!(e, kata_sandbox::Error::NotFound { .. }) {
                torn.push(format!("after {when}: {e}"));
            }
        }
    }
}

/// One ENOSPC cell: the state root fills at `step` and stays full through the user's
/// cleanup; then the space is freed.
fn enospc_cell(c: &Containerd, root: &Path, crash_file: &Path, step: CrashStep) -> Result<String> {
    let id = format!("kc-{}-enospc", step.name());
    std::fs::write(crash_file, format!("{}:enospc", step.name()))?;
    let fill = root.join(ENOSPC_FILL);
    let mut said = Vec::new();
    let mut errors = Vec::new();
    let mut torn = Vec::new();
    let mut call = |what: &str, args: &[&str], torn: &mut Vec<String>| -> Result<bool> {
        let (ok, err) = ctr(c, args)?;
        said.push(if ok {
            format!("{what} ok")
        } else {
            format!("{what} error")
        });
        if !ok {
            errors.push(format!("{what}: {err}"));
        }
        check_state(root, &id, what, torn);
        Ok(ok)
    };
    let ran = call("run", &run_detached(&id), &mut torn)?;
    if ran {
        booted();
        call(
            "exec",
            &["task", "exec", "--exec-id", "e1", &id, "true"],
            &mut torn,
        )?;
    }
    if call("kill", &["task", "kill", "-s", "KILL", &id], &mut torn)? {
        let _ = c.wait_status(&id, "STOPPED", Duration::from_secs(15));
    }
    call("delete", &["task", "delete", &id], &mut torn)?;
    // The user's cleanup, the disk still full.
    let _ = ctr(c, &["task", "delete", "-f", &id])?;
    let _ = ctr(c, &["container", "rm", &id])?;
    let fired = !crash_file.exists();
    let _ = std::fs::remove_file(crash_file);
    let t0 = Instant::now();
    let left = left_after_cleanup(c, root, &id);
    let was_full = fill.exists();
    let _ = std::fs::remove_file(&fill);
    ensure!(fired && was_full, "{id}: the fault never fired ({said:?})");
    ensure!(torn.is_empty(), "{id}: state.json unreadable: {torn:#?}");
    ensure!(
        left.is_empty(),
        "{id}: left after cleanup ({said:?}): {left:#?}"
    );
    // containerd must hear which file and why, except at Delete (which writes no state that
    // a cleanup needs: the container is gone either way).
    let told = errors
        .iter()
        .find(|e| e.contains("state.json") && e.contains("No space left on device"));
    ensure!(
        told.is_some() || step == CrashStep::Delete,
        "{id}: containerd never heard that state.json could not be written: {said:?} {errors:#?}"
    );
    Ok(format!(
        "crash {:>8} x {:<9} {}{} -> clean in {:.1?}",
        step.name(),
        Victim::Enospc.name(),
        said.join(", "),
        told.map(|e| format!(" [{}]", e.lines().next().unwrap_or("")))
            .unwrap_or_default(),
        t0.elapsed()
    ))
}

/// The ENOSPC cells, under a containerd of their own whose shims keep their state on a small
/// tmpfs.
fn case_full_state_dir(env: &Env) -> Result<()> {
    let fs = SmallTmpfs::mount("16m")?;
    let root = fs.path().to_path_buf();
    let crash_file = env.crash_file.with_file_name("crash-at-enospc");
    let crash_env = format!("@{}", crash_file.display());
    let root_env = root.display().to_string();
    let ctd = ShimContainerd::start(
        "kata-crash-enospc",
        &shim(),
        &StartOptions {
            namespace: Some(NS),
            env: &[
                (CRASH_ENV, &crash_env),
                (kata_shim::shim::ROOT_DIR_ENV, &root_env),
            ],
            ..StartOptions::default()
        },
    )?;
    ctd.import(&env.ctr.dir().join("busybox.tar"))?;
    let mut failures = Vec::new();
    let mut cells = 0;
    for step in [
        CrashStep::Boot,
        CrashStep::Create,
        CrashStep::Start,
        CrashStep::Exec,
        CrashStep::Delete,
    ] {
        if !selected(step, Victim::Enospc) {
            continue;
        }
        cells += 1;
        match enospc_cell(&ctd, &root, &crash_file, step) {
            Ok(line) => println!("    {line}"),
            Err(e) => {
                println!("    crash {} x enospc: FAILED {e:#}", step.name());
                failures.push(format!("{}:enospc: {e:#}", step.name()));
                let _ = std::fs::remove_file(root.join(ENOSPC_FILL));
                ctd.force_remove(&format!("kc-{}-enospc", step.name()));
            }
        }
    }
    println!(
        "    full state directory: {} of {cells} cells passed",
        cells - failures.len()
    );
    drop(ctd);
    ensure!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

fn missing() -> Option<String> {
    containerd::missing(
        &["qemu-system-x86_64"],
        Some(&kata_hypervisor::GuestManifest::default_path()),
    )
}

fn shim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"))
}

fn setup() -> Result<Env> {
    // The crash file's name is known before containerd starts: it is in containerd's env.
    let crash_dir = tempfile::Builder::new().prefix("kata-crash-at").tempdir()?;
    let crash_file = crash_dir.path().join("crash-at");
    let crash_env = format!("@{}", crash_file.display());
    let ctr = ShimContainerd::start(
        "kata-crash",
        &shim(),
        &StartOptions {
            namespace: Some(NS),
            env: &[(CRASH_ENV, &crash_env)],
            ..StartOptions::default()
        },
    )?;
    ctr.import_busybox()?;
    Ok(Env {
        ctr,
        crash_file,
        _crash_dir: crash_dir,
    })
}

fn main() -> std::process::ExitCode {
    Suite::new("crash_matrix")
        .label("crash matrix")
        .requires(missing)
        .timeout(Duration::from_secs(1500))
        .blocking_case("kill_9_at_every_step", case_matrix)
        .blocking_case("full_state_dir_at_every_step", case_full_state_dir)
        .run_with(async { setup() })
}
