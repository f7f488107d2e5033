//! `[runtime] enable_tracing` through containerd (issue 16 item 4): `ctr run` of a busybox
//! container with a configuration that turns tracing on; the shim's spans — its Task RPCs
//! (`task.Create`, `task.Start`, ..., `task.Shutdown`), the sandbox's boot phases and the agent
//! calls under them — reach an OTLP/HTTP receiver the test runs, `task.Create` naming the
//! sandbox. `task.Shutdown` arrives too: the shim sends its last spans when it exits.
//!
//! The sandbox runs on the test backend (`[hypervisor.host-agent]`: the real kata-agent on this
//! host, no VM): what is under test is the shim's export, in seconds. After the case no shim
//! process, mount or `/run/kata/kt-trace-*` directory may remain.
//!
//! Needs root, containerd and ctr, and the kata-agent binary of this build.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kata_testkit::containerd::{self, ShimContainerd, StartOptions};
use kata_testkit::harness::Suite;
use kata_testkit::leaks::cmdlines;

#[path = "../../kata-sandbox/tests/support/otlp.rs"]
mod otlp;

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-tracing";

/// The private containerd with busybox imported, and the OTLP receiver.
struct Env {
    ctr: ShimContainerd,
    receiver: otlp::Receiver,
    config: PathBuf,
}

/// Shim processes of our namespace, mounts of our sandboxes, our sandbox directories.
fn leftovers(containerd_dir: &Path) -> (usize, usize, Vec<String>) {
    let shims = cmdlines()
        .iter()
        .filter(|(_, c)| c.contains("containerd-shim-kata-v2") && c.contains(NS))
        .count();
    let state = containerd_dir.join("state").display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/run/kata/kt-trace") || l.contains(&state))
        .count();
    let dirs = std::fs::read_dir("/run/kata")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kt-trace"))
                .collect()
        })
        .unwrap_or_default();
    (shims, mounts, dirs)
}

fn case_a_container_start_is_traced_through_the_shim(env: &Env) -> Result<()> {
    let id = "kt-trace-run";
    let config = env.config.display().to_string();
    let out = env.ctr.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &config,
        kata_testkit::image::IMAGE_NAME,
        id,
        "echo",
        "traced",
    ]);
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "traced",
        "ctr run: {:?} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The shim exits after Shutdown and sends its last spans as it does.
    env.receiver
        .wait_for("task.Shutdown", Duration::from_secs(20))
        .context("task.Shutdown never arrived: the shim did not flush at exit")?;
    let spans = env.receiver.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no span {name} among {names:?}"))
    };
    let create = find("task.Create")?;
    ensure!(
        create.attributes.get("sandbox_id").map(String::as_str) == Some(id)
            && create.attributes.get("container_id").map(String::as_str) == Some(id),
        "task.Create: {create:?}"
    );
    for under_create in [
        "sandbox.start",
        "vm.start",
        "agent.CreateSandbox",
        "sandbox.create_container",
        "agent.CreateContainer",
    ] {
        let s = find(under_create)?;
        ensure!(
            otlp::ancestors(&spans, s)
                .iter()
                .any(|a| a.span_id == create.span_id),
            "{under_create} is not under task.Create"
        );
    }
    let start = find("task.Start")?;
    let start_call = find("agent.StartContainer")?;
    ensure!(
        otlp::ancestors(&spans, start_call)
            .iter()
            .any(|a| a.span_id == start.span_id),
        "agent.StartContainer is not under task.Start"
    );
    find("task.Delete")?;
    println!(
        "    {} spans from the shim ({} requests)",
        spans.len(),
        env.receiver.requests().len()
    );
    Ok(())
}

fn setup() -> Result<Env> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let agent = kata_testkit::agent_binary().map_err(anyhow::Error::msg)?;
    let ctr = ShimContainerd::start(
        "kata-shim-tracing",
        &shim,
        &StartOptions {
            namespace: Some(NS),
            ..StartOptions::default()
        },
    )?;
    ctr.import_busybox()?;
    let receiver = otlp::Receiver::start();
    let config = ctr.dir().join("tracing.toml");
    std::fs::write(
        &config,
        format!(
            "[hypervisor.host-agent]\npath = \"{}\"\n\n[runtime]\ninternetworking_model = \"none\"\n\
             enable_tracing = true\njaeger_endpoint = \"{}\"\n",
            agent.display(),
            receiver.url
        ),
    )?;
    Ok(Env {
        ctr,
        receiver,
        config,
    })
}

fn main() -> std::process::ExitCode {
    Suite::new("containerd_tracing")
        .label("containerd tracing tests")
        .requires(|| containerd::missing(&[], None))
        .timeout(Duration::from_secs(120))
        .blocking_case(
            "a_container_start_is_traced_through_the_shim",
            case_a_container_start_is_traced_through_the_shim,
        )
        .leak_check(|env: &Env| {
            std::thread::sleep(Duration::from_millis(300));
            let left = leftovers(env.ctr.dir());
            ensure!(
                left == (0, 0, Vec::new()),
                "left behind (shims, mounts, dirs): {left:?}"
            );
            Ok(())
        })
        .diagnostics(|env: &Env| env.ctr.log_tail(40))
        .run_with(async { setup() })
}
