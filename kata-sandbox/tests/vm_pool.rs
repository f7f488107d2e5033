//! Tier 3, warm sandboxes (issue 15 item 2): a [`SandboxPool`] of real guests. A taken
//! sandbox runs containers like a fresh one, has its own id, VM and guest entropy; the pool
//! refills after a take; a pooled sandbox whose VM died while it waited is skipped; an empty
//! pool boots on demand; shutdown leaves nothing. Take-versus-boot figures are printed by the
//! `pool` bench, not asserted here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kata_sandbox::{ContainerSpec, Sandbox, SandboxPool};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

#[path = "support/busybox_root.rs"]
mod busybox_root;
use busybox_root::Env;

fn template(env: &Env) -> kata_sandbox::SandboxBuilder {
    Sandbox::builder()
        .vcpus(1)
        .memory_mib(256)
        .root_dir(&env.root)
}

async fn run_in(sb: &Sandbox, env: &Env, script: &str) -> Result<String> {
    let out = sb
        .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args(["sh", "-c", script]))
        .await?;
    ensure!(
        out.status.success(),
        "{script}: {} {}",
        out.status,
        out.stderr_str()
    );
    Ok(out.stdout_str().trim().to_string())
}

/// Nothing of the run is left: no process naming its directory, no mount under it, no
/// sandbox directory.
fn nothing_left(env: &Env) -> Result<()> {
    let procs = processes_mentioning(&env.root.display().to_string(), "vm_pool");
    ensure!(procs.is_empty(), "processes left: {procs:?}");
    let mounts = mounts_under(&env.root);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let dirs: Vec<_> = std::fs::read_dir(&env.root)?
        .flatten()
        .map(|d| d.path())
        .collect();
    ensure!(dirs.is_empty(), "sandbox directories left: {dirs:?}");
    Ok(())
}

async fn case_taken_sandboxes_are_fresh_and_the_pool_refills(env: Arc<Env>) -> Result<()> {
    let pool = SandboxPool::new(template(&env), 2)?;
    pool.wait_filled().await.context(NoGuest)?;
    booted();
    ensure!(pool.ready() == 2, "filled: {} ready", pool.ready());
    let checked = async {
        let a = pool.take().await?;
        let b = pool.take().await?;
        ensure!(
            a.id() != b.id(),
            "two taken sandboxes share the id {}",
            a.id()
        );
        ensure!(a.pid() != b.pid(), "two taken sandboxes share a VMM");
        // Their guests are separate boots: separate kernels' boot ids and entropy.
        let read = "cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1";
        let (sa, sb) = (run_in(&a, &env, read).await?, run_in(&b, &env, read).await?);
        ensure!(
            sa != sb,
            "two pooled guests read the same boot id and random bytes: {sa}"
        );
        ensure!(run_in(&a, &env, "echo hi").await? == "hi");
        // The pool boots replacements for both.
        tokio::time::timeout(Duration::from_secs(300), pool.wait_filled())
            .await
            .context("the pool did not refill in 300 s")??;
        ensure!(pool.ready() == 2, "refilled: {} ready", pool.ready());
        a.shutdown().await?;
        b.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    pool.shutdown().await?;
    checked?;
    nothing_left(&env)
}

async fn case_a_dead_pooled_sandbox_is_skipped(env: Arc<Env>) -> Result<()> {
    let pool = SandboxPool::new(template(&env), 1)?;
    pool.wait_filled().await.context(NoGuest)?;
    booted();
    // The pooled sandbox's VMM, found by the sandbox directory its command line names.
    let dirs: Vec<PathBuf> = std::fs::read_dir(&env.root)?
        .flatten()
        .map(|d| d.path())
        .collect();
    ensure!(dirs.len() == 1, "one pooled sandbox: {dirs:?}");
    let id = dirs[0].file_name().unwrap().to_string_lossy().to_string();
    let vmm: Vec<u32> = processes_mentioning(&dirs[0].display().to_string(), "vm_pool")
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu"))
        .map(|(pid, _)| pid)
        .collect();
    ensure!(vmm.len() == 1, "the pooled sandbox's QEMU: {vmm:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // Its death is noticed (the VM's exit), then a take skips it.
    let t0 = std::time::Instant::now();
    while !std::fs::read_dir(&env.root)?
        .flatten()
        .all(|d| d.file_name() != id.as_str())
        && t0.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = pool.take().await?;
    let checked = async {
        ensure!(
            taken.id() != id,
            "the dead pooled sandbox {id} was handed out"
        );
        ensure!(taken.death().is_none(), "taken: {:?}", taken.death());
        ensure!(run_in(&taken, &env, "echo alive").await? == "alive");
        Ok(())
    }
    .await;
    taken.shutdown().await?;
    pool.shutdown().await?;
    checked?;
    nothing_left(&env)
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_pool")
        .timeout(Duration::from_secs(600))
        .case(
            "taken_sandboxes_are_fresh_and_the_pool_refills",
            case_taken_sandboxes_are_fresh_and_the_pool_refills,
        )
        .case(
            "a_dead_pooled_sandbox_is_skipped",
            case_a_dead_pooled_sandbox_is_skipped,
        )
        .on_failure(Env::cleanup_all)
        .run_with(Env::setup())
}
