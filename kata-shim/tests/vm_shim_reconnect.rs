//! Tier 3: a shim server restarted while its sandbox runs reconnects to it from `state.json`.
//!
//! containerd 1.6 never restarts a shim (on shim death it runs `delete`, which cleans the
//! sandbox up, and removes the bundle), so this test plays containerd's part itself: it runs
//! the shim server as containerd's `start` does (bundle directory as cwd, `-socket`, a
//! listener standing in for containerd's event socket), drives the Task service over ttRPC,
//! SIGKILLs the server with a container running, starts it again and checks that the new
//! server serves the same task in the same VM: State, Pids, Kill, Wait (137), Delete,
//! Shutdown; then that nothing is left. Runs under `kata_testkit::harness`; appends
//! `booted ...` to `$KATA_RS_VM_TEST_LOG`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use containerd_shim::protos::shim::shim::{
    CreateTaskRequest, DeleteRequest, KillRequest, PidsRequest, ShutdownRequest, StartRequest,
    StateRequest, WaitRequest,
};
use containerd_shim::protos::shim_async::{Client, TaskClient};
use containerd_shim::protos::ttrpc::context;
use containerd_shim::protos::types::task::Status;
use kata_testkit::harness::{booted, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

const NS: &str = "kata-rs-reconnect";
const ID: &str = "kt-reconnect";

struct Paths {
    tmp: PathBuf,
    bundle: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    _work: tempfile::TempDir,
}

/// Starts the shim server as containerd's `start` would; returns once it listens.
fn start_server(p: &Paths) -> Result<Child> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    cmd.args(["-namespace", NS, "-id", ID, "-address"])
        .arg(p.tmp.join("containerd.sock"))
        .arg("-socket")
        .arg(format!("unix://{}", p.socket.display()))
        .current_dir(&p.bundle)
        .env("TTRPC_ADDRESS", p.tmp.join("containerd.sock.ttrpc"))
        .env("KATA_RS_ROOT_DIR", &p.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().context("spawning the shim server")?;
    // The server closes its stdout once it listens.
    let mut sink = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    ensure!(
        child.try_wait()?.is_none(),
        "the shim server exited at start"
    );
    Ok(child)
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

async fn client(p: &Paths) -> Result<TaskClient> {
    let c = Client::connect(&format!("unix://{}", p.socket.display()))
        .await
        .context("connecting to the shim")?;
    Ok(TaskClient::new(c))
}

async fn scenario(p: &Paths) -> Result<()> {
    let mut server = start_server(p)?;
    let task = client(p).await?;
    let created = task
        .create(
            ctx(),
            &CreateTaskRequest {
                id: ID.into(),
                bundle: p.bundle.display().to_string(),
                ..Default::default()
            },
        )
        .await
        .context("Create")?;
    booted();
    let vmm = created.pid;
    ensure!(vmm > 0, "no VMM pid");
    task.start(
        ctx(),
        &StartRequest {
            id: ID.into(),
            ..Default::default()
        },
    )
    .await
    .context("Start")?;
    drop(task);

    // The shim dies; its VM does not.
    server.kill()?;
    server.wait()?;
    ensure!(
        Path::new(&format!("/proc/{vmm}")).exists(),
        "the VM died with its shim"
    );

    let t = Instant::now();
    let mut server = start_server(p)?;
    println!("    restarted shim serving in {:.1?}", t.elapsed());
    let task = client(p).await?;
    let state = task
        .state(
            ctx(),
            &StateRequest {
                id: ID.into(),
                ..Default::default()
            },
        )
        .await
        .context("State after restart")?;
    ensure!(
        state.status.enum_value_or_default() == Status::RUNNING,
        "status after restart: {:?}",
        state.status
    );
    ensure!(state.pid == vmm, "VMM pid {} != {vmm}", state.pid);
    ensure!(
        state.bundle == p.bundle.display().to_string(),
        "bundle {}",
        state.bundle
    );
    let pids = task
        .pids(
            ctx(),
            &PidsRequest {
                id: ID.into(),
                ..Default::default()
            },
        )
        .await
        .context("Pids")?;
    ensure!(!pids.processes.is_empty(), "no process in the container");
    task.kill(
        ctx(),
        &KillRequest {
            id: ID.into(),
            signal: 9,
            ..Default::default()
        },
    )
    .await
    .context("Kill")?;
    let waited = task
        .wait(
            ctx(),
            &WaitRequest {
                id: ID.into(),
                ..Default::default()
            },
        )
        .await
        .context("Wait")?;
    ensure!(waited.exit_status == 137, "exit {}", waited.exit_status);
    task.delete(
        ctx(),
        &DeleteRequest {
            id: ID.into(),
            ..Default::default()
        },
    )
    .await
    .context("Delete")?;
    let _ = task
        .shutdown(
            ctx(),
            &ShutdownRequest {
                id: ID.into(),
                ..Default::default()
            },
        )
        .await;
    let t0 = Instant::now();
    while server.try_wait()?.is_none() {
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "the shim did not exit on Shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The bundle (a busybox rootfs inside it, `sleep 1000`) and a listener standing in for
/// containerd's event socket.
fn prepare() -> Result<Paths> {
    let work = tempfile::tempdir()?;
    let tmp = work.path().to_path_buf();
    let p = Paths {
        bundle: tmp.join("bundle"),
        root: tmp.join("sandboxes"),
        socket: tmp.join("shim.sock"),
        tmp,
        _work: work,
    };
    // The rootfs inside the bundle: a root.path outside it is refused.
    std::fs::create_dir_all(&p.bundle)?;
    kata_testkit::image::busybox_rootfs(&p.bundle.join("rootfs"))?;
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(vec!["sleep".into(), "1000".into()]));
    spec.set_process(Some(process));
    spec.set_root(Some(
        oci_spec::runtime::RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()?,
    ));
    std::fs::write(p.bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    // Stands in for containerd's event socket: events queue in the shim, unanswered.
    let listener = std::os::unix::net::UnixListener::bind(p.tmp.join("containerd.sock.ttrpc"))?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    Ok(p)
}

/// Nothing of the run is left: no process naming the root, no sandbox directory, no mount.
fn nothing_left(p: &Paths) -> Result<()> {
    let left = processes_mentioning(&p.root.display().to_string(), "vm_shim_reconnect");
    ensure!(left.is_empty(), "processes left: {left:?}");
    ensure!(!p.root.join(ID).exists(), "sandbox directory left");
    let mounts = mounts_under(&p.root);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}

/// After a failure: the shim servers killed, the sandbox cleaned up from its state.
fn kill_and_clean_up(p: &Paths) {
    for (pid, _) in processes_mentioning(&p.socket.display().to_string(), "vm_shim_reconnect") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = kata_sandbox::persist::cleanup(&p.root.join(ID));
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_shim_reconnect")
        .requires(|| (!nix::unistd::geteuid().is_root()).then(|| "needs root".to_string()))
        .timeout(Duration::from_secs(180))
        .case("restarted_shim_reconnects", |p: Arc<Paths>| async move {
            scenario(&p).await
        })
        .check_each(nothing_left)
        .on_failure(kill_and_clean_up)
        .run_with(async { prepare() })
}
