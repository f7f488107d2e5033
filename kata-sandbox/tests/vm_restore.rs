//! Tier 3: handing a running sandbox over — `Sandbox::detach` leaves the VM, shares and
//! `state.json` in place, `Sandbox::restore` takes them over again (QEMU adopted by pid, QMP and
//! agent reconnected) — against a real guest. One boot; cases run under
//! `kata_testkit::harness` and filter by name
//! (`cargo test -p kata-sandbox --test vm_restore -- <filter>`). Nothing may be left after a
//! case: no process naming the sandbox, no mount, no directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_sandbox::{ContainerSpec, ProcessSpec, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};
use tokio::io::AsyncReadExt;

const ID: &str = "vm-restore-tests";

/// The sandboxes' root and a busybox rootfs.
struct Env {
    root: PathBuf,
    rootfs: PathBuf,
    _work: tempfile::TempDir,
}

/// Runs an exec to the end: (status, stdout).
async fn exec(c: &kata_sandbox::Container, args: &[&str]) -> Result<(i32, String, String)> {
    let mut p = c.exec(ProcessSpec::new(args.iter().copied())).await?;
    let exec_id = p.exec_id().to_string();
    let out = p.output().await?;
    Ok((out.status.to_shell_status(), out.stdout_str(), exec_id))
}

/// Boot, start a container, detach, restore, exec into the still-running container, detach
/// and restore once more, kill/wait/delete it, shut down: nothing left.
async fn round_trip(env: Arc<Env>) -> Result<()> {
    let (root, rootfs) = (env.root.as_path(), env.rootfs.as_path());
    let t = Instant::now();
    let sandbox = Sandbox::builder()
        .id(ID)
        .memory_mib(256)
        .root_dir(root)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    println!("booted in {:.1?}", t.elapsed());
    let dir = sandbox.dir().to_path_buf();
    let mut c = sandbox
        .create_container(ContainerSpec::from_rootfs_dir(rootfs).id("c1").args([
            "sh",
            "-c",
            "echo before; exec sleep 1000",
        ]))
        .await?;
    let mut stdout = c.stdout().context("stdout")?;
    c.start().await?;
    let mut first = [0u8; 7];
    stdout.read_exact(&mut first).await?;
    ensure!(&first == b"before\n", "first output {first:?}");
    let (status, out, exec_id) = exec(&c, &["echo", "one"]).await?;
    ensure!(
        status == 0 && out == "one\n",
        "exec before detach: {status} {out:?}"
    );
    ensure!(exec_id == "exec-1", "first exec id {exec_id}");
    let vmm_pids = sandbox.host_pids();
    drop((c, stdout));

    sandbox.detach().await?;
    ensure!(dir.join("state.json").is_file(), "state.json kept");
    for pid in &vmm_pids {
        ensure!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "VM process {pid} gone after detach"
        );
    }
    // The container's rootfs stays mounted (and, under virtio-fs, the share's own self-bind).
    let mounts = mounts_under(&dir);
    ensure!(
        mounts.iter().any(|m| m.ends_with("c1/rootfs")),
        "the rootfs mount stays: {mounts:?}"
    );

    let t = Instant::now();
    let sandbox = Sandbox::restore(&dir).await?;
    println!("restored in {:.1?}", t.elapsed());
    ensure!(sandbox.id() == ID, "id {}", sandbox.id());
    ensure!(
        sandbox.container_ids() == ["c1"],
        "{:?}",
        sandbox.container_ids()
    );
    ensure!(sandbox.host_pids() == vmm_pids, "same VMM");
    let c = sandbox.container("c1")?;
    let (status, out, exec_id) = exec(&c, &["sh", "-c", "echo restored; exit 5"]).await?;
    ensure!(
        status == 5 && out == "restored\n",
        "exec after restore: {status} {out:?}"
    );
    ensure!(exec_id == "exec-2", "exec ids continue: {exec_id}");
    ensure!(
        !sandbox.container_pids("c1").await?.is_empty(),
        "the container still runs"
    );
    ensure!(
        matches!(
            sandbox.container("nope"),
            Err(kata_sandbox::Error::NotFound { .. })
        ),
        "unknown container"
    );

    // Handed over twice: QMP and the agent accept the next owner too.
    drop(c);
    sandbox.detach().await?;
    let sandbox = Sandbox::restore(&dir).await?;
    sandbox.pause().await?;
    sandbox.resume().await?;
    let c = sandbox.container("c1")?;
    c.kill(kata_sandbox::Signal::KILL).await?;
    let status = c.wait().await?;
    ensure!(status.signal() == Some(9), "SIGKILL gave {status}");
    c.delete().await?;
    ensure!(sandbox.container_ids().is_empty());
    sandbox.shutdown().await?;
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    ensure!(
        mounts_under(root).is_empty(),
        "mounts left: {:?}",
        mounts_under(root)
    );
    for pid in vmm_pids {
        ensure!(
            kata_hypervisor::process::is_gone(pid),
            "VM process {pid} survived shutdown"
        );
    }
    Ok(())
}

/// Restore without a sandbox: clear errors, nothing created.
async fn bad_input(env: Arc<Env>) -> Result<()> {
    let dir = env.root.join("no-such-sandbox");
    let e = Sandbox::restore(&dir).await.unwrap_err();
    ensure!(
        matches!(e, kata_sandbox::Error::NotFound { .. }),
        "missing state: {e}"
    );
    ensure!(e.to_string().contains("state.json"), "{e}");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("state.json"), "{\"version\": 1, \"id\"")?;
    let e = Sandbox::restore(&dir).await.unwrap_err();
    ensure!(
        matches!(e, kata_sandbox::Error::CorruptState { .. }),
        "corrupt state: {e}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_restore")
        .timeout(Duration::from_secs(180))
        .case("restore_bad_input", bad_input)
        .case("detach_restore_exec_kill_delete", round_trip)
        .check_each(|_: &Env| {
            let left = processes_mentioning(ID, "vm_restore");
            ensure!(left.is_empty(), "processes left: {left:?}");
            Ok(())
        })
        // A failed case must not leave a VM behind.
        .on_failure(|env: &Env| {
            let _ = kata_sandbox::persist::cleanup(&env.root.join(ID));
        })
        .run_with(async {
            let work = tempfile::tempdir()?;
            let rootfs = work.path().join("rootfs");
            kata_testkit::image::busybox_rootfs(&rootfs).context("the busybox rootfs")?;
            Ok(Env {
                root: work.path().join("sandboxes"),
                rootfs,
                _work: work,
            })
        })
}
