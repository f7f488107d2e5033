//! Warm sandboxes: a `SandboxPool` keeps two micro-VMs booted, so a request gets a sandbox at
//! once and its container runs without waiting for a boot. Serves three "requests", each in a
//! sandbox of its own taken from the pool (the pool boots a replacement after each take), then
//! shuts everything down.
//!
//! `cargo run -p kata-examples --example pool` (as root, after `make guest`).

use std::time::Instant;

use kata_examples::busybox_rootfs;
use kata_sandbox::{ContainerSpec, Sandbox, SandboxPool};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("KATA_RS_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let rootfs = busybox_rootfs()?;
    let t = Instant::now();
    // The template every pooled sandbox is booted from; the pool gives each its own id.
    let pool = SandboxPool::new(Sandbox::builder().vcpus(1).memory_mib(256), 2)?;
    pool.wait_filled().await?;
    println!("pool of {} filled in {:.1?}", pool.size(), t.elapsed());

    for request in 1..=3 {
        let t = Instant::now();
        let sandbox = pool.take().await?;
        let taken = t.elapsed();
        let script = format!("echo request {request} in $(hostname)");
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&rootfs).args(["sh", "-c", &script]))
            .await?;
        println!(
            "{} (sandbox {} taken in {taken:.1?}, answered in {:.1?})",
            out.stdout_str().trim_end(),
            &sandbox.id()[..12],
            t.elapsed()
        );
        // A request's sandbox is its own: shut it down when done, never back into the pool.
        sandbox.shutdown().await?;
    }
    pool.shutdown().await?;
    Ok(())
}
