//! Warm sandboxes (issue 15 item 2): how long a caller waits for a booted sandbox from a
//! [`SandboxPool`] against `Sandbox::builder().build()`, measured in this one run (medians of
//! `KATA_RS_POOL_ROUNDS`, default 5). Each round: a fresh build, then a take from a pool of 1
//! that was refilled in between (its boot is not on the caller's path). A container's first
//! command after either is timed too: a pooled sandbox is as ready as a fresh one.
//!
//! `cargo bench -p kata-benches --bench pool`; prints the medians and the ratio.

use std::time::{Duration, Instant};

use kata_benches::busybox_rootfs;
use kata_sandbox::{ContainerSpec, Sandbox, SandboxPool};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this binary too: one round.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("KATA_RS_POOL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rootfs = busybox_rootfs();
    let root = tempfile::tempdir().unwrap();
    let template = || Sandbox::builder().memory_mib(256).root_dir(root.path());
    rt.block_on(async {
        let pool = SandboxPool::new(template(), 1).expect("a pool of 1");
        let (mut fresh, mut taken, mut fresh_run, mut taken_run) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let sb = template().build().await.expect("a fresh sandbox");
            fresh.push(t.elapsed());
            fresh_run.push(run_echo(&sb, &rootfs).await);
            sb.shutdown().await.unwrap();

            pool.wait_filled().await.expect("the pool fills");
            let t = Instant::now();
            let sb = pool.take().await.unwrap();
            taken.push(t.elapsed());
            taken_run.push(run_echo(&sb, &rootfs).await);
            sb.shutdown().await.unwrap();
        }
        pool.shutdown().await.unwrap();
        let (f, p) = (median(&mut fresh), median(&mut taken));
        let (fr, pr) = (median(&mut fresh_run), median(&mut taken_run));
        println!("pool: sandbox ready to use, median of {rounds}: fresh build {f:.2?}, take from a pool {p:.2?}");
        println!("pool: first container after it: fresh {fr:.2?}, pooled {pr:.2?}");
        let ratio = p.as_secs_f64() / f.as_secs_f64().max(1e-9);
        println!("pool: take / fresh build = {ratio:.5} (target <= 0.1)");
    });
}

/// How long `echo ready` takes in `sb`, from create to exit.
async fn run_echo(sb: &Sandbox, rootfs: &std::path::Path) -> Duration {
    let spec = ContainerSpec::from_rootfs_dir(rootfs).args(["echo", "ready"]);
    let t = Instant::now();
    let out = sb.run(spec).await.expect("echo in the sandbox");
    assert_eq!(out.stdout_str(), "ready\n");
    t.elapsed()
}

/// The median of `v`.
fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
