//! Tier 5, issue 12 item 7: VFIO devices of the container that creates a sandbox, through the
//! real shim under a real containerd (Debian's 1.6) and `ctr`.
//!
//! This host has no VFIO device (the real device is proven in the lab: lab/runner/src/vfio.rs),
//! so this suite proves the refusal path: a container whose `cdi.k8s.io/<key>` annotation
//! names a CDI device that no spec file defines is refused naming the annotation and the
//! device, *before* any VM is booted (the shim resolves the devices a sandbox is created with
//! first: `kata_shim::vfio`), and nothing is left behind (no QEMU, shim, mount, sandbox
//! directory).
//!
//! Run: `cargo test -p kata-shim --test containerd_vfio` (root, containerd and ctr on `PATH`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Result};
use kata_testkit::containerd::{self, ShimContainerd, ShimLeftovers};
use kata_testkit::harness::Suite;
use kata_testkit::image as testimage;
use kata_testkit::leaks::cmdlines;

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-vfio";
/// The ids of this suite's containers (and sandboxes) start with it.
const PREFIX: &str = "kv-";
/// A CDI device no spec file on this host defines.
const UNDEFINED: &str = "kata-rs.test/vfio=nonexistent";

struct Env {
    ctr: ShimContainerd,
    baseline: (ShimLeftovers, usize),
}

/// This suite's leftovers, and the QEMU processes whose command line names its sandboxes.
fn leftovers(c: &ShimContainerd) -> (ShimLeftovers, usize) {
    let qemu = cmdlines()
        .iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system") && cmd.contains(&format!("/{PREFIX}")))
        .count();
    (c.leftovers(PREFIX), qemu)
}

/// `ctr run --rm` of `id` with the CDI annotation `cdi.k8s.io/gpu=<UNDEFINED>` (and a
/// configuration file, if given): whether it succeeded, and what ctr said.
fn run_with_undefined_cdi(env: &Env, id: &str, config: Option<&Path>) -> Result<(bool, String)> {
    let annotation = format!("cdi.k8s.io/gpu={UNDEFINED}");
    let mut args = vec![
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
    ];
    let config_s = config.map(|p| p.display().to_string());
    if let Some(cfg) = &config_s {
        args.extend(["--runtime-config-path", cfg.as_str()]);
    }
    args.extend([testimage::IMAGE_NAME, id, "true"]);
    let out = env.ctr.ctr_within(&args, Duration::from_secs(120));
    let _ = env.ctr.ctr(&["container", "rm", id]);
    out
}

fn refused_naming_the_device(what: &str, ok: bool, err: &str) -> Result<()> {
    println!("    {what}: ctr says: {err}");
    ensure!(!ok, "{what}: ctr run succeeded");
    ensure!(
        err.contains("cdi.k8s.io/gpu") && err.contains(UNDEFINED),
        "{what}: the error names neither the annotation cdi.k8s.io/gpu nor {UNDEFINED}: {err}"
    );
    Ok(())
}

/// The devices a sandbox is created with are resolved before the VM: with a configuration
/// whose kernel does not exist, the refusal names the CDI device, not the kernel (before the
/// shim resolved them first, the sandbox's boot failed on the kernel, and a good kernel booted
/// a VM only to refuse the container afterwards).
fn case_undefined_cdi_device_refused_before_any_vm(env: &Env) -> Result<()> {
    let cfg = env.ctr.dir().join("nokernel.toml");
    std::fs::write(
        &cfg,
        "[hypervisor.qemu]\nkernel = \"/nonexistent/vmlinux\"\n",
    )?;
    let (ok, err) = run_with_undefined_cdi(env, "kv-before-vm", Some(&cfg))?;
    refused_naming_the_device("kernel /nonexistent/vmlinux", ok, &err)?;
    ensure!(
        !err.contains("/nonexistent/vmlinux"),
        "the sandbox's boot was tried before the CDI device was resolved: {err}"
    );
    Ok(())
}

/// With the default configuration (the real guest) the same refusal, and nothing left: no
/// QEMU, no shim, no mount, no sandbox directory.
fn case_undefined_cdi_device_leaves_nothing(env: &Env) -> Result<()> {
    let (ok, err) = run_with_undefined_cdi(env, "kv-default", None)?;
    refused_naming_the_device("default configuration", ok, &err)?;
    std::thread::sleep(Duration::from_millis(500));
    let now = leftovers(&env.ctr);
    ensure!(
        now == env.baseline,
        "left behind: before {:?}, after {now:?}",
        env.baseline
    );
    Ok(())
}

fn setup() -> Result<Env> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let ctr = ShimContainerd::start_with_busybox("kata-shim-vfio", &shim, NS)?;
    let baseline = leftovers(&ctr);
    Ok(Env { ctr, baseline })
}

fn main() -> std::process::ExitCode {
    Suite::new("containerd_vfio")
        .label("containerd VFIO tests")
        .requires(|| containerd::missing(&[], None))
        .timeout(Duration::from_secs(300))
        .blocking_case(
            "undefined_cdi_device_refused_before_any_vm",
            case_undefined_cdi_device_refused_before_any_vm,
        )
        .blocking_case(
            "undefined_cdi_device_leaves_nothing",
            case_undefined_cdi_device_leaves_nothing,
        )
        .leak_check(|env: &Env| {
            let end = leftovers(&env.ctr);
            ensure!(
                end == env.baseline,
                "before {:?}, after {end:?}",
                env.baseline
            );
            Ok(())
        })
        .diagnostics(|env: &Env| env.ctr.log_tail(40))
        .run_with(async { setup() })
}
