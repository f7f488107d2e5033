//! Tier 3: `[hypervisor.qemu] rootless = true` against a real guest (QEMU, KVM where usable,
//! else TCG). Each case boots (or tries to boot) its own sandbox under `kata_testkit::harness`
//! (filter: `cargo test -p kata-sandbox --test vm_rootless -- <case>`).
//!
//! A rootless QEMU runs as a uid of `rootless_uid_range`, with no capability, `no_new_privs`
//! and its own mount namespace; the share is virtio-fs (virtiofsd's socket handed to QEMU
//! connected), so every container here also reads its rootfs through it. After a shutdown, or
//! a crash cleaned up without its state, nothing of that uid is left: no process, no claim, no
//! file under the sandboxes' root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kata_hypervisor::qemu::rootless::{pids_of_uid, status_ids, CLAIMS_DIR};
use kata_sandbox::{ContainerSpec, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

/// A busybox rootfs and the sandboxes' root.
struct Env {
    rootfs: PathBuf,
    root_dir: PathBuf,
    _work: tempfile::TempDir,
}

/// A builder for a rootless sandbox `id` (virtio-fs, the default share).
fn rootless(env: &Env, id: &str, range: Option<&str>) -> kata_sandbox::SandboxBuilder {
    let builder = Sandbox::builder()
        .id(id)
        .memory_mib(256)
        .root_dir(&env.root_dir);
    let mut hv = builder.config().clone();
    hv.rootless = true;
    if let Some(range) = range {
        hv.rootless_uid_range = range.into();
    }
    builder.hypervisor_config(hv)
}

/// The QEMU process of a sandbox (its host pids hold virtiofsd and the vsock backend too).
fn qemu_pid(sandbox: &Sandbox) -> Result<u32> {
    sandbox
        .host_pids()
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"))
        })
        .context("no qemu-system process among the sandbox's host pids")
}

/// The value of a `/proc/<pid>/status` field.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Files under `dir` owned by `uid` (symlinks not followed).
fn owned_by(dir: &Path, uid: u32) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.uid() == uid || meta.gid() == uid {
                found.push(e.path());
            }
            if meta.is_dir() {
                todo.push(e.path());
            }
        }
    }
    found
}

/// Nothing of uid `uid` or sandbox `id` is left: process, claim, file, mount, directory.
fn nothing_left(env: &Env, id: &str, uid: u32, dir: &Path) -> Result<()> {
    let pids = pids_of_uid(uid);
    ensure!(
        pids.is_empty(),
        "processes still run as uid {uid}: {pids:?}"
    );
    let claim = Path::new(CLAIMS_DIR).join(uid.to_string());
    ensure!(!claim.exists(), "the uid claim {} is left", claim.display());
    for root in [env.root_dir.as_path(), Path::new("/run/kata")] {
        let files = owned_by(root, uid);
        ensure!(files.is_empty(), "files of uid {uid} left: {files:?}");
    }
    let left = processes_mentioning(id, "vm_rootless");
    ensure!(left.is_empty(), "processes left: {left:?}");
    ensure!(
        mounts_under(dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    Ok(())
}

/// A rootless sandbox boots on virtio-fs, runs a container whose output is read; QEMU has a
/// non-zero uid and gid, no capability, no supplementary group, `no_new_privs`, a seccomp
/// filter and a mount namespace of its own; `/dev/kvm` there is its own when KVM runs it. The
/// shutdown leaves nothing.
async fn case_rootless_runs_a_container_unprivileged(env: Arc<Env>) -> Result<()> {
    let id = "rootless-run";
    let sandbox = rootless(&env, id, None).build().await.context(NoGuest)?;
    booted();
    let dir = sandbox.dir().to_path_buf();
    let checked = async {
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args([
                "sh",
                "-c",
                "echo hello-from-rootless; md5sum /bin/busybox",
            ]))
            .await?;
        ensure!(out.status.success(), "status {}: {out:?}", out.status);
        ensure!(
            out.stdout_str().starts_with("hello-from-rootless\n"),
            "stdout {:?}",
            out.stdout_str()
        );
        let pid = qemu_pid(&sandbox)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let uids = status_ids(&status, "Uid:").unwrap_or_default();
        let gids = status_ids(&status, "Gid:").unwrap_or_default();
        ensure!(
            uids.len() == 4 && uids.iter().all(|u| *u == uids[0] && *u != 0),
            "QEMU's uids: {uids:?}"
        );
        ensure!(
            gids.len() == 4 && gids.iter().all(|g| *g != 0),
            "QEMU's gids: {gids:?}"
        );
        for (name, want) in [
            ("CapEff:", "0000000000000000"),
            ("CapPrm:", "0000000000000000"),
            ("CapBnd:", "0000000000000000"),
            ("NoNewPrivs:", "1"),
            ("Seccomp:", "2"),
            ("Groups:", ""),
        ] {
            ensure!(
                field(&status, name) == want,
                "QEMU's {name} is {:?}, not {want:?}",
                field(&status, name)
            );
        }
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
        ensure!(
            ns(&pid.to_string()) != ns("self"),
            "QEMU shares the host's mount namespace"
        );
        let uid = uids[0];
        let claim = Path::new(CLAIMS_DIR).join(uid.to_string());
        ensure!(
            claim.exists(),
            "no claim {} for QEMU's uid",
            claim.display()
        );
        let accel = sandbox
            .describe()
            .into_iter()
            .find(|(k, _)| *k == "accelerator")
            .map(|(_, v)| v)
            .unwrap_or_default();
        if accel.to_lowercase().contains("kvm") {
            use std::os::unix::fs::MetadataExt;
            let kvm = std::fs::metadata(format!("/proc/{pid}/root/dev/kvm"))?;
            ensure!(kvm.uid() == uid, "QEMU's /dev/kvm is not its own");
        } else {
            println!("accelerator {accel:?}: QEMU's /dev/kvm is not needed (TCG)");
        }
        let host_kvm = Path::new("/dev/kvm");
        if host_kvm.exists() {
            use std::os::unix::fs::MetadataExt;
            ensure!(
                std::fs::metadata(host_kvm)?.uid() == 0,
                "the host's /dev/kvm changed owner"
            );
        }
        println!("QEMU {pid} runs as uid {uid} ({accel})");
        Ok(uid)
    }
    .await;
    sandbox.shutdown().await?;
    let uid = checked?;
    nothing_left(&env, id, uid, &dir)
}

/// A shim crash: the sandbox is detached (its VM runs on) and its state removed; cleanup
/// without a state kills QEMU, found by the VM directory its command line names, and releases
/// its uid by the claim naming that directory.
async fn case_cleanup_without_state_releases_the_uid(env: Arc<Env>) -> Result<()> {
    let id = "rootless-crash";
    let sandbox = rootless(&env, id, None).build().await.context(NoGuest)?;
    booted();
    let dir = sandbox.dir().to_path_buf();
    let pid = qemu_pid(&sandbox)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status_ids(&status, "Uid:").unwrap_or_default()[0];
    sandbox.detach().await?;
    ensure!(
        !pids_of_uid(uid).is_empty(),
        "the detached QEMU does not run as uid {uid}"
    );
    std::fs::remove_file(dir.join("state.json"))?;
    let report = kata_sandbox::persist::cleanup(&dir)?;
    ensure!(report.killed.contains(&pid), "QEMU not killed: {report:?}");
    nothing_left(&env, id, uid, &dir)
}

/// `r` is an error containing each of `want`, and nothing of sandbox `id` exists.
async fn expect_refused(
    env: &Env,
    id: &str,
    r: kata_sandbox::Result<Sandbox>,
    want: &[&str],
) -> Result<()> {
    let e = match r {
        Ok(sb) => {
            sb.shutdown().await?;
            bail!("{id}: the sandbox started");
        }
        Err(e) => e.to_string(),
    };
    for w in want {
        ensure!(e.contains(w), "{id}: `{w}` not in: {e}");
    }
    let dir = env.root_dir.join(id);
    ensure!(!dir.exists(), "{id}: {} left", dir.display());
    let left = processes_mentioning(id, "vm_rootless");
    ensure!(left.is_empty(), "{id}: processes left: {left:?}");
    Ok(())
}

/// Bad input: an invalid or exhausted uid range, or rootless with the 9p share, is refused
/// naming the key; nothing is started or left.
async fn case_bad_rootless_input_leaves_nothing(env: Arc<Env>) -> Result<()> {
    let invalid = rootless(&env, "rootless-invalid", Some("10-5"))
        .build()
        .await;
    expect_refused(
        &env,
        "rootless-invalid",
        invalid,
        &["rootless_uid_range", "10-5"],
    )
    .await?;

    // One uid, claimed by someone else: exhausted.
    let uid = 1879113701u32;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(CLAIMS_DIR)?;
    }
    let claim = Path::new(CLAIMS_DIR).join(uid.to_string());
    std::fs::write(&claim, "/nonexistent/other-vm\n")?;
    let range = format!("{uid}-{uid}");
    let exhausted = rootless(&env, "rootless-exhausted", Some(&range))
        .build()
        .await;
    let checked = expect_refused(
        &env,
        "rootless-exhausted",
        exhausted,
        &["rootless_uid_range", "in use"],
    )
    .await;
    let still_ours = std::fs::read_to_string(&claim).unwrap_or_default();
    std::fs::remove_file(&claim)?;
    checked?;
    ensure!(
        still_ours == "/nonexistent/other-vm\n",
        "another VM's claim was touched: {still_ours:?}"
    );

    let builder = rootless(&env, "rootless-9p", None);
    let mut hv = builder.config().clone();
    hv.shared_fs = kata_hypervisor::SharedFs::Virtio9p;
    let nine_p = builder.hypervisor_config(hv).build().await;
    expect_refused(&env, "rootless-9p", nine_p, &["rootless", "virtio-9p"]).await
}

async fn setup() -> Result<Env> {
    let work = tempfile::tempdir()?;
    let root_dir = work.path().join("sandboxes");
    let rootfs = work.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).context("the busybox rootfs")?;
    Ok(Env {
        rootfs,
        root_dir,
        _work: work,
    })
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_rootless")
        .timeout(Duration::from_secs(300))
        .case(
            "rootless_runs_a_container_unprivileged",
            case_rootless_runs_a_container_unprivileged,
        )
        .case(
            "cleanup_without_state_releases_the_uid",
            case_cleanup_without_state_releases_the_uid,
        )
        .case(
            "bad_rootless_input_leaves_nothing",
            case_bad_rootless_input_leaves_nothing,
        )
        .run_with(setup())
}
