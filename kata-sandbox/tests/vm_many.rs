//! Tier 3, many at once (issue 14 item 4): N sandboxes booted concurrently (N = 8 unless
//! `KATA_RS_MANY` says otherwise), each running containers, then torn down concurrently; and a
//! soak that loops create/run/shutdown with leak accounting per iteration — the runtime
//! process's fds and RSS, processes naming the run's directory, mounts under it, bytes under
//! it. In `make test` the soak is short (`KATA_RS_SOAK_ITERATIONS`, default 3); `make soak
//! DURATION=<seconds>` runs it for that long instead (`KATA_RS_SOAK_SECS`) and prints the
//! figures the README quotes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_sandbox::{ContainerSpec, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::{cgroup_dirs, mounts_under, processes_mentioning};

/// A run's sandboxes' root and a busybox rootfs.
#[path = "support/busybox_root.rs"]
mod busybox_root;
use busybox_root::Env;

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

/// This process's open file descriptors.
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// This process's resident set, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes of the regular files under `dir` (what a run leaves on its state filesystem).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// What a sandbox of this run may leave behind: processes naming the run's directory, mounts
/// under it, the sandbox's directory, its host cgroups.
fn leftovers(env: &Env, ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let root = env.root.display().to_string();
    for (pid, cmd) in processes_mentioning(&root, "vm_many") {
        left.push(format!("process {pid}: {cmd}"));
    }
    for m in mounts_under(&env.root) {
        left.push(format!("mount {m}"));
    }
    for id in ids {
        let dir = env.root.join(id);
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
        for rel in [
            format!("kata_sandboxed_pod/{id}"),
            format!("kata_overhead/{id}"),
        ] {
            for d in cgroup_dirs(&rel) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
    }
    left
}

/// Boots one sandbox, runs two containers in it (one after the other, the second beside an
/// exec), and shuts it down. Checks each output.
async fn one_sandbox(env: &Env, id: &str, n: u64) -> Result<Duration> {
    let t = Instant::now();
    let sandbox = Sandbox::builder()
        .id(id)
        .vcpus(1)
        .memory_mib(256)
        .root_dir(&env.root)
        .build()
        .await
        .context(NoGuest)
        .with_context(|| format!("booting {id}"))?;
    booted();
    let booted_in = t.elapsed();
    let result = async {
        let code = (n % 4) as i32;
        let script = format!("echo {id}; exit {code}");
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args(["sh", "-c", &script]))
            .await?;
        ensure!(
            out.stdout_str() == format!("{id}\n") && out.status.code() == Some(code),
            "{id}: {:?} {}",
            out.stdout_str(),
            out.status
        );
        let c = sandbox
            .create_container(
                ContainerSpec::from_rootfs_dir(&env.rootfs)
                    .id("second")
                    .args(["sleep", "100"]),
            )
            .await?;
        c.start().await?;
        let mut e = c
            .exec(kata_sandbox::ProcessSpec::new(["cat", "/proc/1/cmdline"]))
            .await?;
        let seen = e.output().await?;
        ensure!(
            seen.stdout_str().starts_with("sleep"),
            "{id}: exec saw {:?}",
            seen.stdout_str()
        );
        c.kill(kata_sandbox::Signal::KILL).await?;
        c.wait().await?;
        c.delete().await?;
        Ok(())
    }
    .await;
    // Shut down whatever the containers did.
    let down = sandbox.shutdown().await;
    result?;
    down.with_context(|| format!("shutting {id} down"))?;
    Ok(booted_in)
}

/// N sandboxes at once: every one boots, runs its containers and is torn down; nothing is
/// left and the runtime process holds no more descriptors than before.
async fn case_many_at_once(env: Arc<Env>) -> Result<()> {
    let n = env_number("KATA_RS_MANY", 8)?;
    ensure!(n > 0, "KATA_RS_MANY=0: nothing to run");
    let fds_before = fds();
    let t = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("many-{i}")).collect();
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (env, id) = (env.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            one_sandbox(&env, &id, i as u64).await
        }));
    }
    let mut boots = Vec::new();
    let mut failures = Vec::new();
    for (id, task) in ids.iter().zip(tasks) {
        match task.await? {
            Ok(b) => boots.push(b),
            Err(e) => failures.push(format!("{id}: {e:#}")),
        }
    }
    let total = t.elapsed();
    boots.sort();
    if let (Some(first), Some(last)) = (boots.first(), boots.last()) {
        println!(
            "{n} sandboxes at once: all done in {:.1?}; boot to agent ready {:.1?} (fastest) .. {:.1?} (slowest)",
            total, first, last
        );
    }
    ensure!(
        failures.is_empty(),
        "{} of {n} failed: {failures:#?}",
        failures.len()
    );
    let left = leftovers(&env, &ids);
    ensure!(left.is_empty(), "left after {n} sandboxes: {left:#?}");
    let fds_after = fds();
    ensure!(
        fds_after <= fds_before,
        "the runtime process holds {fds_after} fds after {n} sandboxes, {fds_before} before"
    );
    Ok(())
}

/// Create/run/shutdown in a loop, one sandbox at a time, with leak accounting per iteration.
/// After the first iteration (which may open what stays open: a tracing file, a runtime
/// thread) the fds of this process must not grow, and nothing may be left between iterations.
async fn case_soak(env: Arc<Env>) -> Result<()> {
    let secs = env_number("KATA_RS_SOAK_SECS", 0)?;
    let iterations = env_number("KATA_RS_SOAK_ITERATIONS", 3)?;
    let until = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
    let id = "soak".to_string();
    let t = Instant::now();
    let (mut first_fds, mut first_rss) = (None, 0u64);
    let mut max_rss = 0u64;
    let mut i = 0u64;
    loop {
        let done = match until {
            Some(u) => Instant::now() >= u && i > 0,
            None => i >= iterations,
        };
        if done {
            break;
        }
        let boot = one_sandbox(&env, &id, i).await?;
        let (f, rss) = (fds(), rss_kib());
        let left = leftovers(&env, std::slice::from_ref(&id));
        let bytes = bytes_under(&env.root);
        println!(
            "soak {i}: boot {:.2}s fds {f} rss {rss} KiB bytes-under-root {bytes} leftovers {}",
            boot.as_secs_f64(),
            left.len()
        );
        ensure!(left.is_empty(), "iteration {i} left: {left:#?}");
        ensure!(
            bytes == 0,
            "iteration {i} left {bytes} bytes under {}",
            env.root.display()
        );
        match first_fds {
            None => (first_fds, first_rss) = (Some(f), rss),
            Some(f0) => ensure!(
                f <= f0,
                "fds grew from {f0} (iteration 0) to {f} (iteration {i})"
            ),
        }
        max_rss = max_rss.max(rss);
        i += 1;
    }
    println!(
        "soak: {i} iterations in {:.0?}; fds steady at {}; runtime RSS {first_rss} KiB after the first, {} KiB at most, {} KiB at the end",
        t.elapsed(),
        first_fds.unwrap_or(0),
        max_rss,
        rss_kib()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_many")
        .timeout(Duration::from_secs(600))
        .case("many_sandboxes_at_once", case_many_at_once)
        .case_with_timeout(
            "soak_create_run_shutdown",
            // `make soak DURATION=...` sets the length; the harness timeout follows it.
            Duration::from_secs(
                600 + std::env::var("KATA_RS_SOAK_SECS")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
            ),
            case_soak,
        )
        // A failed case must not leave VMs behind.
        .on_failure(Env::cleanup_all)
        .run_with(Env::setup())
}
