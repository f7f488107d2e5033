//! Tier 3: `[runtime] enable_tracing` against a real guest (issue 16 item 4): a sandbox built
//! through the embedder API with [`SandboxBuilder::tracing`] boots, runs a container and shuts
//! down; the spans of its boot phases and of the container's start arrive at an OTLP/HTTP
//! receiver this test runs, each naming the sandbox. The case's boot is recorded as `booted`
//! (or `no-guest`) in `$KATA_RS_VM_TEST_LOG`, as the other VM tests do.
//!
//! [`SandboxBuilder::tracing`]: kata_sandbox::SandboxBuilder::tracing

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kata_sandbox::{ContainerSpec, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};

#[path = "support/otlp.rs"]
mod otlp;

/// A busybox rootfs and the sandboxes' root.
#[path = "support/busybox_root.rs"]
mod busybox_root;
use busybox_root::Env;

async fn case_container_start_spans_reach_the_receiver(env: Arc<Env>) -> Result<()> {
    let receiver = otlp::Receiver::start();
    let id = "vm-traced";
    let sandbox = Sandbox::builder()
        .id(id)
        .memory_mib(256)
        .root_dir(&env.root)
        .tracing(Some(&receiver.url))
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let result = async {
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args(["uname", "-r"]))
            .await?;
        ensure!(out.status.success(), "uname: {:?}", out.status);
        Ok(())
    }
    .await;
    sandbox.shutdown().await?;
    result?;
    receiver
        .wait_for("sandbox.shutdown", Duration::from_secs(5))
        .context("shutdown() did not flush the spans")?;
    let spans = receiver.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no span {name} among {names:?}"))
    };
    let start = find("sandbox.start")?;
    ensure!(
        start.attributes.get("sandbox_id").map(String::as_str) == Some(id),
        "sandbox.start: {start:?}"
    );
    ensure!(start.service == "kata-rs", "service.name: {start:?}");
    for phase in [
        "sandbox.host_resources",
        "vm.prepare",
        "vm.start",
        "vm.wait_ready",
        "agent.connect",
        "agent.CreateSandbox",
    ] {
        let s = find(phase)?;
        ensure!(s.trace_id == start.trace_id, "{phase}: another trace");
        ensure!(
            otlp::ancestors(&spans, s)
                .iter()
                .any(|a| a.span_id == start.span_id),
            "{phase} is not under sandbox.start"
        );
    }
    let boot = find("vm.wait_ready")?;
    ensure!(
        boot.attributes.get("sandbox_id").map(String::as_str) == Some(id),
        "vm.wait_ready: {boot:?}"
    );
    let create = find("agent.CreateContainer")?;
    let step = otlp::ancestors(&spans, create)
        .into_iter()
        .find(|a| a.name == "sandbox.create_container")
        .context("agent.CreateContainer is not under sandbox.create_container")?;
    ensure!(
        step.attributes.get("sandbox_id").map(String::as_str) == Some(id),
        "sandbox.create_container: {step:?}"
    );
    find("agent.StartContainer")?;
    println!(
        "    {} spans received from a traced sandbox ({} requests)",
        spans.len(),
        receiver.requests().len()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    // As an embedder with its own logging does: the export layer composed beside the log
    // layer, whose filter is its own (the harness's `RUST_LOG`, default `warn`).
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(filter),
        )
        .with(kata_sandbox::telemetry::layer())
        .init();
    Suite::new("vm_tracing")
        .timeout(Duration::from_secs(600))
        .case(
            "container_start_spans_reach_the_receiver",
            case_container_start_spans_reach_the_receiver,
        )
        // A failed case must not leave its VM behind.
        .on_failure(Env::cleanup_all)
        .run_with(Env::setup())
}
