//! Boots a micro-VM sandbox, runs `uname -a` in a busybox container, prints the output and
//! the time each step took. Run with `make demo`.

use kata_examples::{busybox_rootfs, Steps};
use kata_sandbox::{ContainerSpec, Sandbox};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // KATA_RS_LOG (RUST_LOG syntax): the filter of every kata-rs host program.
        .with_env_filter(std::env::var("KATA_RS_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let mut steps = Steps::new();
    println!("kata-rs hello: a container in a micro-VM");
    let rootfs = busybox_rootfs()?;
    steps.done("busybox rootfs ready");

    let sandbox = Sandbox::builder().vcpus(1).memory_mib(256).build().await?;
    steps.done("VM booted, agent ready");
    let facts = sandbox.describe();

    let mut container = sandbox
        .create_container(ContainerSpec::from_rootfs_dir(&rootfs).args(["uname", "-a"]))
        .await?;
    steps.done("container created");
    container.start().await?;
    let out = container.process().output().await?;
    steps.done("container ran");
    container.delete().await?;
    steps.done("container deleted");
    sandbox.shutdown().await?;
    steps.done("VM shut down");

    println!("\n[container] {}", out.stdout_str().trim_end());
    if !out.stderr.is_empty() {
        println!("[container stderr] {}", out.stderr_str().trim_end());
    }
    println!(
        "{}; {}; total {:.3} s",
        out.status,
        facts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        steps.total().as_secs_f64()
    );
    anyhow::ensure!(out.status.success(), "uname exited with {}", out.status);
    Ok(())
}
