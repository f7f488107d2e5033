//! Tier 5 without a VM: `containerd-shim-kata-v2` runs containers directly on the host when
//! the configuration containerd's runtime options name says `[runtime] name =
//! "linux_container"` (kata-sandbox's feature `linux`: libcontainer, through the
//! `kata-linux-container` helper next to the shim; the shim does not know which handler runs).
//!
//! A private containerd (as in `containerd_shim.rs`) imports the busybox test image; `ctr run
//! --runtime-config-path <linux.toml>` runs it: output and exit codes come back through
//! containerd, an exec runs beside the first process, a kill ends it. After the cases no shim
//! process, rootfs mount, `/run/kata/kt-linux-*` directory or cgroup of the namespace may
//! remain.
//!
//! Run one case: `cargo test -p kata-shim --test containerd_linux -- <filter>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Result};
use kata_testkit::containerd::{self, ShimContainerd, ShimLeftovers, StartOptions};
use kata_testkit::harness::Suite;
use kata_testkit::image::IMAGE_NAME;

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-linux";

/// The private containerd with the busybox image imported.
struct Env {
    ctr: ShimContainerd,
    config: PathBuf,
}

/// What a run may leave: shim processes, mounts of kata sandboxes, our sandbox directories.
fn leftovers(containerd_dir: &Path) -> ShimLeftovers {
    ShimLeftovers::now(
        "containerd-shim-kata-v2",
        NS,
        containerd_dir,
        Path::new("/run/kata"),
        "kt-linux",
    )
}

/// `ctr run` (with `flags`) of the busybox image as `id` running `args`, under the linux
/// configuration.
fn run(env: &Env, flags: &[&str], id: &str, args: &[&str]) -> std::process::Output {
    let config = env.config.display().to_string();
    let mut a = vec!["run"];
    a.extend_from_slice(flags);
    a.extend_from_slice(&[
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &config,
        IMAGE_NAME,
        id,
    ]);
    a.extend_from_slice(args);
    env.ctr.ctr(&a)
}

fn case_output_and_exit_codes_come_back(env: &Env) -> Result<()> {
    let out = run(
        env,
        &["--rm"],
        "kt-linux-hello",
        &[
            "sh",
            "-c",
            "echo hello from pid $$; echo to-err >&2; ls /sys/class/net; exit 3",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.code() == Some(3),
        "exit {:?}: {stderr}",
        out.status
    );
    // PID 1 of its own PID namespace, in a network namespace of its own (only `lo`: ctr gives
    // no network).
    ensure!(stdout == "hello from pid 1\nlo\n", "stdout {stdout:?}");
    ensure!(stderr.contains("to-err"), "stderr {stderr:?}");
    Ok(())
}

fn case_exec_and_kill_through_ctr(env: &Env) -> Result<()> {
    let id = "kt-linux-sleeper";
    let out = run(env, &["-d"], id, &["sleep", "1000"]);
    ensure!(
        out.status.success(),
        "ctr run -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ctr
        .wait_status(id, "RUNNING", Duration::from_secs(20))?;
    let exec = env.ctr.ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "echo",
        "from an exec",
    ])?;
    ensure!(exec == "from an exec\n", "exec stdout {exec:?}");
    env.ctr.ok(&["task", "kill", "-s", "KILL", id])?;
    env.ctr
        .wait_status(id, "STOPPED", Duration::from_secs(20))?;
    env.ctr.ok(&["task", "delete", id])?;
    env.ctr.ok(&["container", "rm", id])?;
    Ok(())
}

fn setup() -> Result<Env> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let ctr = ShimContainerd::start(
        "kata-shim-linux",
        &shim,
        &StartOptions {
            namespace: Some(NS),
            ..StartOptions::default()
        },
    )?;
    ctr.import_busybox()?;
    // The VM settings are not used by this handler (their host paths are not checked).
    let config = ctr.dir().join("linux.toml");
    std::fs::write(
        &config,
        "[hypervisor.qemu]\n\n[runtime]\nname = \"linux_container\"\n",
    )?;
    Ok(Env { ctr, config })
}

/// The helper the shim runs (`kata-sandbox`'s binary, built beside the shim by a workspace
/// build).
fn missing_helper() -> Option<String> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let helper = shim.with_file_name("kata-linux-container");
    (!helper.is_file()).then(|| {
        format!(
            "{} is missing: run `cargo build -p kata-sandbox --features linux --bin \
             kata-linux-container`",
            helper.display()
        )
    })
}

fn main() -> std::process::ExitCode {
    Suite::new("containerd_linux")
        .label("containerd linux tests")
        .requires(|| containerd::missing(&[], None))
        .requires(missing_helper)
        .timeout(Duration::from_secs(120))
        .blocking_case(
            "output_and_exit_codes_come_back",
            case_output_and_exit_codes_come_back,
        )
        .blocking_case("exec_and_kill_through_ctr", case_exec_and_kill_through_ctr)
        .leak_check(|env: &Env| {
            std::thread::sleep(Duration::from_millis(300));
            let left = leftovers(env.ctr.dir());
            ensure!(left.is_empty(), "left behind: {left:?}");
            let cgroups = kata_testkit::leaks::cgroup_dirs(NS);
            ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
            Ok(())
        })
        .diagnostics(|env: &Env| env.ctr.log_tail(40))
        .run_with(async { setup() })
}
