//! Tier 5: `containerd-shim-kata-v2` under a real containerd (Debian's 1.6) and `ctr`.
//!
//! The harness starts a private containerd (its own root, state, socket and config) whose
//! `PATH` starts with the directory of the shim binary cargo built, imports the busybox test
//! image (an OCI layout tarball) with `ctr image import`, and runs the cases in order under
//! `kata_testkit::harness`, each reported like libtest does. Cases that boot a VM append
//! `booted containerd_shim::<case>` to `$KATA_RS_VM_TEST_LOG`; the run ends with
//! `containerd tests: N passed, M failed; K booted a guest`. After the last case no QEMU,
//! vsock backend or shim process, rootfs mount, shim socket or `/run/kata` sandbox directory
//! of the run may remain (`leak_check`).
//!
//! Run one case: `cargo test -p kata-shim --test containerd_shim -- <filter>`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_testkit::containerd::{self, Containerd, ShimContainerd};
use kata_testkit::harness::{booted, Suite};
use kata_testkit::image as testimage;
use kata_testkit::leaks::cmdlines;

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-test";

/// `ctr run` arguments for the busybox test image under the kata runtime.
fn run_args<'a>(extra: &[&'a str], id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.push(testimage::IMAGE_NAME);
    a.push(id);
    a.extend_from_slice(cmd);
    a
}

/// What a run may leave behind, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leftovers {
    qemu: usize,
    vsock_backends: usize,
    virtiofsd: usize,
    shims: usize,
    kata_mounts: usize,
    shim_sockets: usize,
    sandbox_dirs: Vec<String>,
    /// The host cgroup directories under ctr's parent (`/<namespace>`), in any hierarchy.
    cgroups: Vec<PathBuf>,
}

fn leftovers(containerd_dir: &Path) -> Leftovers {
    let procs = cmdlines();
    let count = |needle: &str| procs.iter().filter(|(_, c)| c.contains(needle)).count();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let state = containerd_dir.join("state").display().to_string();
    // This suite's sandboxes only (ids `kt-*`): another program's sandbox on the machine (a
    // killed example left two mounts once and failed a CI run) is not this suite's leak.
    let kata_mounts = mountinfo
        .lines()
        .filter(|l| l.contains("/run/kata/kt-") || l.contains(&state))
        .count();
    let shim_sockets = std::fs::read_dir("/run/containerd/s")
        .map(|d| d.count())
        .unwrap_or(0);
    let mut sandbox_dirs: Vec<String> = std::fs::read_dir("/run/kata")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kt-"))
                .collect()
        })
        .unwrap_or_default();
    sandbox_dirs.sort();
    Leftovers {
        qemu: procs
            .iter()
            .filter(|(_, c)| c.contains("qemu-system") && c.contains("/run/kata/kt-"))
            .count(),
        vsock_backends: procs
            .iter()
            .filter(|(_, c)| c.contains("vhost-device-vsock") && c.contains("/run/kata/kt-"))
            .count(),
        virtiofsd: procs
            .iter()
            .filter(|(_, c)| c.contains("virtiofsd") && c.contains("/run/kata/kt-"))
            .count(),
        shims: count("containerd-shim-kata-v2"),
        kata_mounts,
        shim_sockets,
        sandbox_dirs,
        cgroups: kata_testkit::leaks::cgroup_dirs(NS),
    }
}

/// `ctr events` running in the background, its output in a file.
struct Events {
    child: Child,
    file: PathBuf,
}

impl Events {
    fn start(c: &Containerd, file: PathBuf) -> Result<Events> {
        let out = std::fs::File::create(&file)?;
        let child = c.command(&["events"]).stdout(out).spawn()?;
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Events { child, file })
    }

    /// The task topics published for `container_id`, in order, each with the process id
    /// (`id` or `exec_id` of the event; empty when it has none).
    fn task_topics(&self, container_id: &str) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let needle = format!("\"container_id\":\"{container_id}\"");
        text.lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| {
                let topic = l.split_whitespace().find(|w| w.starts_with("/tasks/"))?;
                let json: serde_json::Value =
                    serde_json::from_str(&l[l.find('{')?..]).unwrap_or_default();
                let id = json
                    .get("exec_id")
                    .or_else(|| json.get("id"))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                Some((topic.to_string(), id.to_string()))
            })
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The private containerd with the test image imported, and what was there before the cases.
struct Env {
    ctr: ShimContainerd,
    /// containerd's directory (its root, state, socket and log), also the cases' own.
    tmp: PathBuf,
    baseline: Leftovers,
}

fn case_run_rm_echo_output_and_exit_codes(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let out = c.ctr(&run_args(
        &["--rm"],
        "kt-echo",
        &["sh", "-c", "echo hello from kata-rs; echo to-err >&2"],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(0),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(stdout == "hello from kata-rs\n", "stdout {stdout:?}");
    ensure!(stderr.contains("to-err"), "stderr {stderr:?}");
    booted();
    let out = c.ctr(&run_args(&["--rm"], "kt-exit3", &["sh", "-c", "exit 3"]));
    ensure!(
        out.status.code() == Some(3),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    booted();
    Ok(())
}

fn case_detached_exec_ps_kill_delete(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let id = "kt-detached";
    let events = Events::start(c, env.tmp.join("events-detached.txt"))?;
    let r = (|| {
        c.ok(&run_args(&["-d"], id, &["sleep", "1000"]))?;
        booted();
        c.wait_status(id, "RUNNING", Duration::from_secs(10))?;
        let out = c.ok(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo exec-out; exit 0",
        ])?;
        ensure!(out == "exec-out\n", "exec stdout {out:?}");
        let out = c.ctr(&["task", "exec", "--exec-id", "e2", id, "sh", "-c", "exit 7"]);
        ensure!(out.status.code() == Some(7), "exec exit {:?}", out.status);
        let ps = c.ok(&["task", "ps", id])?;
        let pids: Vec<&str> = ps.lines().skip(1).collect();
        ensure!(!pids.is_empty(), "ctr task ps listed nothing: {ps:?}");
        let metrics = c.ctr(&["task", "metrics", id]);
        ensure!(
            metrics.status.success(),
            "metrics: {}",
            String::from_utf8_lossy(&metrics.stderr)
        );
        c.ok(&["task", "pause", id])?;
        c.wait_status(id, "PAUSED", Duration::from_secs(5))?;
        c.ok(&["task", "resume", id])?;
        c.wait_status(id, "RUNNING", Duration::from_secs(5))?;
        c.ok(&["task", "kill", "-s", "KILL", id])?;
        c.wait_status(id, "STOPPED", Duration::from_secs(10))?;
        c.ok(&["task", "delete", id])?;
        c.ok(&["container", "rm", id])?;
        // The events, in the contract's order (issue 5): create, start, exec added, exec
        // started, exit, paused, resumed, delete.
        let t0 = Instant::now();
        let (want, got) = loop {
            let got = events.task_topics(id);
            let topic = |(t, _): &(String, String)| t.trim_start_matches("/tasks/").to_string();
            let seq: Vec<String> = got
                .iter()
                .map(|e| format!("{} {}", topic(e), e.1))
                .collect();
            // Events without a process id (create, start, paused, resumed) show an empty one.
            let want: Vec<String> = [
                "create ",
                "start ",
                "exec-added e1",
                "exec-started e1",
                "exit e1",
                "exec-added e2",
                "exec-started e2",
                "exit e2",
                "paused ",
                "resumed ",
                &format!("exit {id}"),
                &format!("delete {id}"),
            ]
            .iter()
            .map(|w| w.to_string())
            .collect();
            // Exec deletes (`/tasks/delete e1`) may be forwarded too: not part of the order.
            let seq: Vec<String> = seq
                .into_iter()
                .filter(|e| !(e.starts_with("delete ") && e != &format!("delete {id}")))
                .collect();
            if seq == want || t0.elapsed() > Duration::from_secs(5) {
                break (want, seq);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        println!("    events for {id}: {got:?}");
        ensure!(
            got == want,
            "events out of order:\n got  {got:?}\n want {want:?}"
        );
        Ok(())
    })();
    if r.is_err() {
        c.force_remove(id);
    }
    drop(events);
    r
}

fn case_stdin_interactive_cat(env: &Env) -> Result<()> {
    use std::io::Write;
    let c = &env.ctr;
    let id = "kt-stdin";
    // `ctr run` (ctr 1.6 always attaches stdin; it has no `-i`) with stdin piped: nothing of
    // it may be lost to an early EOF, and the EOF (CloseIO) must reach `cat` so it ends.
    // The input is written once the task runs: ctr sends CloseIO only for an EOF it reads
    // after its task exists (an earlier EOF would hang `cat` under runc's shim too).
    let mut cmd = c.command(&run_args(&["--rm"], id, &["cat"]));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let input = "line one\nline two\n";
    let mut stdin = child.stdin.take().context("stdin")?;
    if let Err(e) = c.wait_status(id, "RUNNING", Duration::from_secs(30)) {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        c.force_remove(id);
        bail!("{e}; ctr: {}", String::from_utf8_lossy(&out.stderr));
    }
    booted();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let t0 = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            c.force_remove(id);
            bail!("ctr run cat did not end: stdin's EOF did not reach cat");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = writer.join();
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout == input, "cat echoed {stdout:?}, not {input:?}");
    Ok(())
}

fn case_tty(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )?;
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = c.command(&run_args(
        &["--rm", "-t"],
        "kt-tty",
        &["sh", "-c", "tty; stty size; exit 5"],
    ));
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    let mut child = cmd.spawn()?;
    // Read the master until ctr exits.
    let master = std::fs::File::from(pty.master);
    let fd = master.as_raw_fd();
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            c.force_remove("kt-tty");
            bail!("ctr run -t did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(cmd);
    let _ = fd;
    let out = reader.join().unwrap_or_default();
    ensure!(status.code() == Some(5), "exit {status:?}; output {out:?}");
    booted();
    // The agent gives the process a pty as its controlling terminal, bound at /dev/console.
    ensure!(
        out.contains("/dev/pts/") || out.contains("/dev/console"),
        "no terminal in the container: {out:?}"
    );
    ensure!(out.contains("33 101"), "window size not passed: {out:?}");
    Ok(())
}

fn case_pod_of_two_containers_in_one_vm(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let (pod, app) = ("kt-pod", "kt-pod-app");
    let before = leftovers(&env.tmp).qemu;
    let r = (|| {
        let sb_type = "io.kubernetes.cri.container-type=sandbox".to_string();
        let ct_type = "io.kubernetes.cri.container-type=container".to_string();
        let sb_id = format!("io.kubernetes.cri.sandbox-id={pod}");
        c.ok(&run_args(
            &["-d", "--annotation", &sb_type, "--annotation", &sb_id],
            pod,
            &["sleep", "1000"],
        ))?;
        booted();
        c.ok(&run_args(
            &["-d", "--annotation", &ct_type, "--annotation", &sb_id],
            app,
            &["sleep", "1000"],
        ))?;
        c.wait_status(app, "RUNNING", Duration::from_secs(10))?;
        let qemus = leftovers(&env.tmp).qemu - before;
        ensure!(qemus == 1, "{qemus} VMs for a pod of two containers");
        ensure!(
            c.task_pid(pod) == c.task_pid(app),
            "the two tasks report different VMM pids"
        );
        // Both run in the same guest: a file written in one's /proc-visible hostname differs,
        // but the kernel is the same boot.
        let a = c.ok(&[
            "task",
            "exec",
            "--exec-id",
            "b1",
            pod,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ])?;
        let b = c.ok(&[
            "task",
            "exec",
            "--exec-id",
            "b2",
            app,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ])?;
        ensure!(a == b, "different guest kernels: {a:?} vs {b:?}");
        for id in [app, pod] {
            c.ok(&["task", "kill", "-s", "KILL", id])?;
            c.wait_status(id, "STOPPED", Duration::from_secs(10))?;
            c.ok(&["task", "delete", id])?;
            c.ok(&["container", "rm", id])?;
        }
        Ok(())
    })();
    if r.is_err() {
        c.force_remove(app);
        c.force_remove(pod);
    }
    r
}

fn case_ttrpc_errors_not_found_and_already_exists(env: &Env) -> Result<()> {
    use containerd_shim::protos::shim::shim::{CreateTaskRequest, KillRequest, StateRequest};
    use containerd_shim::protos::shim_async::{Client, TaskClient};
    use containerd_shim::protos::ttrpc::{context, Code};
    let c = &env.ctr;
    let id = "kt-errors";
    let r = (|| {
        c.ok(&run_args(&["-d"], id, &["sleep", "1000"]))?;
        booted();
        let bundle = env
            .tmp
            .join("state/io.containerd.runtime.v2.task")
            .join(NS)
            .join(id);
        let address = std::fs::read_to_string(bundle.join("address"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let client = Client::connect(&address).await?;
            let task = TaskClient::new(client);
            let ctx = || context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
            let r = task
                .kill(
                    ctx(),
                    &KillRequest {
                        id: "nosuch".into(),
                        signal: 9,
                        ..Default::default()
                    },
                )
                .await;
            expect_code(r, Code::NOT_FOUND, "kill unknown")?;
            let r = task
                .state(
                    ctx(),
                    &StateRequest {
                        id: "nosuch".into(),
                        ..Default::default()
                    },
                )
                .await;
            expect_code(r, Code::NOT_FOUND, "state unknown")?;
            let r = task
                .create(
                    ctx(),
                    &CreateTaskRequest {
                        id: id.into(),
                        bundle: bundle.display().to_string(),
                        ..Default::default()
                    },
                )
                .await;
            expect_code(r, Code::ALREADY_EXISTS, "second create")?;
            exec_start_failures(&task, id).await?;
            concurrent_creates_of_one_id(&task, &bundle, &env.tmp).await?;
            Ok::<_, anyhow::Error>(())
        })?;
        c.ok(&["task", "kill", "-s", "KILL", id])?;
        c.wait_status(id, "STOPPED", Duration::from_secs(10))?;
        c.ok(&["task", "delete", id])?;
        c.ok(&["container", "rm", id])?;
        Ok(())
    })();
    if r.is_err() {
        c.force_remove(id);
    }
    r
}

type TaskClient = containerd_shim::protos::shim_async::TaskClient;

fn ttrpc_ctx() -> containerd_shim::protos::ttrpc::context::Context {
    containerd_shim::protos::ttrpc::context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

/// Fails naming `what` unless `r` is a ttRPC error with `code`.
fn expect_code<T>(
    r: std::result::Result<T, containerd_shim::protos::ttrpc::Error>,
    code: containerd_shim::protos::ttrpc::Code,
    what: &str,
) -> Result<()> {
    let got = rpc_error(r);
    ensure!(
        matches!(&got, Some((c, _)) if *c == code),
        "{what}: {got:?}"
    );
    Ok(())
}

/// The code and message of a failed ttRPC call.
fn rpc_error<T>(
    r: std::result::Result<T, containerd_shim::protos::ttrpc::Error>,
) -> Option<(containerd_shim::protos::ttrpc::Code, String)> {
    match r {
        Err(containerd_shim::protos::ttrpc::Error::RpcStatus(s)) => {
            Some((s.code(), s.message().to_string()))
        }
        _ => None,
    }
}

/// An exec whose Start fails keeps its spec (a retried Start fails the same way, not with
/// empty args); an exec whose stdio cannot be connected after it started is killed and its
/// exit recorded (Wait returns, State says stopped).
async fn exec_start_failures(task: &TaskClient, id: &str) -> Result<()> {
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::protobuf::MessageField;
    use containerd_shim::protos::shim::shim::{
        DeleteRequest, ExecProcessRequest, StartRequest, StateRequest, WaitRequest,
    };
    use containerd_shim::protos::types::task::Status;
    let spec = |args: &[&str]| {
        MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&serde_json::json!({
                "args": args, "cwd": "/", "env": ["PATH=/bin:/usr/bin"],
                "user": {"uid": 0, "gid": 0},
            }))
            .unwrap(),
            ..Default::default()
        })
    };
    let exec = |exec_id: &str, args: &[&str], stdout: &str| ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: spec(args),
        stdout: stdout.into(),
        ..Default::default()
    };
    let start = |exec_id: &str| StartRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let delete = |exec_id: &str| DeleteRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };

    task.exec(
        ttrpc_ctx(),
        &exec("x-missing", &["/nonexistent-binary"], ""),
    )
    .await?;
    for attempt in 1..=2 {
        let got = rpc_error(task.start(ttrpc_ctx(), &start("x-missing")).await);
        ensure!(
            matches!(&got, Some((_, m)) if m.contains("nonexistent-binary")),
            "Start #{attempt} of an exec of a missing binary: {got:?}"
        );
    }
    task.delete(ttrpc_ctx(), &delete("x-missing")).await?;

    task.exec(
        ttrpc_ctx(),
        &exec("x-badio", &["sleep", "100"], "http://bad"),
    )
    .await?;
    let got = rpc_error(task.start(ttrpc_ctx(), &start("x-badio")).await);
    ensure!(
        matches!(&got, Some((_, m)) if m.contains("http://bad")),
        "Start of an exec with a bad stdout: {got:?}"
    );
    let waited = task
        .wait(
            ttrpc_ctx(),
            &WaitRequest {
                id: id.into(),
                exec_id: "x-badio".into(),
                ..Default::default()
            },
        )
        .await
        .context("Wait of the exec whose stdio failed (its exit was never recorded)")?;
    ensure!(
        waited.exit_status == 128 + 9,
        "exit status {}",
        waited.exit_status
    );
    let state = task
        .state(
            ttrpc_ctx(),
            &StateRequest {
                id: id.into(),
                exec_id: "x-badio".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        state.status.enum_value() == Ok(Status::STOPPED),
        "state {:?}",
        state.status
    );
    task.delete(ttrpc_ctx(), &delete("x-badio")).await?;
    Ok(())
}

/// Whether something is mounted on `path`.
fn mounted(path: &Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

/// Two concurrent Creates of one id (a new container joining the running sandbox): one
/// creates it, the other answers AlreadyExists and leaves the winner's rootfs mounted.
async fn concurrent_creates_of_one_id(task: &TaskClient, bundle: &Path, tmp: &Path) -> Result<()> {
    use containerd_shim::protos::shim::shim::{CreateTaskRequest, DeleteRequest};
    use containerd_shim::protos::types::mount::Mount;
    let dup = "kt-dup";
    let dir = tmp.join("dup-bundle");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    cfg["root"]["path"] = serde_json::json!("rootfs");
    cfg["linux"]["cgroupsPath"] = serde_json::json!(format!("/{NS}/{dup}"));
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg)?)?;
    let req = CreateTaskRequest {
        id: dup.into(),
        bundle: dir.display().to_string(),
        rootfs: vec![Mount {
            type_: "bind".into(),
            source: bundle.join("rootfs").display().to_string(),
            options: vec!["rbind".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        task.create(ttrpc_ctx(), &req),
        task.create(ttrpc_ctx(), &req)
    );
    let ok = [a.is_ok(), b.is_ok()];
    let errs: Vec<_> = [a, b].into_iter().filter_map(rpc_error).collect();
    let still_mounted = mounted(&rootfs);
    let deleted = task
        .delete(
            ttrpc_ctx(),
            &DeleteRequest {
                id: dup.into(),
                ..Default::default()
            },
        )
        .await;
    ensure!(
        ok.iter().filter(|o| **o).count() == 1,
        "not exactly one Create succeeded: {ok:?} {errs:?}"
    );
    ensure!(
        matches!(
            errs.as_slice(),
            [(containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS, _)]
        ),
        "the other Create: {errs:?}"
    );
    ensure!(
        still_mounted,
        "the losing Create unmounted the winner's rootfs {}",
        rootfs.display()
    );
    deleted.context("deleting the created task")?;
    ensure!(!mounted(&rootfs), "rootfs still mounted after Delete");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn case_bad_config_and_missing_kernel_reach_ctr(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let before = leftovers(&env.tmp);
    for (name, toml, expect) in [
        (
            "kt-badcfg",
            "[hypervisor.qemu]\ndefault_memory = 8\n",
            "default_memory",
        ),
        (
            "kt-nokernel",
            "[hypervisor.qemu]\nkernel = \"/nonexistent/vmlinux\"\n",
            "/nonexistent/vmlinux",
        ),
    ] {
        let cfg = env.tmp.join(format!("{name}.toml"));
        std::fs::write(&cfg, toml)?;
        let cfg_s = cfg.display().to_string();
        let out = c.ctr(&run_args(
            &["--rm", "--runtime-config-path", &cfg_s],
            name,
            &["true"],
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{name}: ctr succeeded");
        println!("    {name}: ctr says: {}", err.trim());
        ensure!(
            err.contains(expect),
            "{name}: the error does not name {expect:?}: {err}"
        );
        let _ = c.ctr(&["container", "rm", name]);
    }
    // A configuration path that does not exist.
    let out = c.ctr(&run_args(
        &["--rm", "--runtime-config-path", "/nonexistent/kata.toml"],
        "kt-nocfg",
        &["true"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("/nonexistent/kata.toml"), "{err}");
    let _ = c.ctr(&["container", "rm", "kt-nocfg"]);
    std::thread::sleep(Duration::from_millis(500));
    let after = leftovers(&env.tmp);
    ensure!(
        after == before,
        "left behind: before {before:?}, after {after:?}"
    );
    Ok(())
}

fn case_shim_sigkill_then_delete_cleans_up(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let id = "kt-crash";
    c.ok(&run_args(&["-d"], id, &["sleep", "1000"]))?;
    c.wait_status(id, "RUNNING", Duration::from_secs(10))?;
    booted();
    let shim = cmdlines()
        .into_iter()
        .find(|(_, cmd)| {
            cmd.contains("containerd-shim-kata-v2") && cmd.contains(&format!("-id {id}"))
        })
        .map(|(pid, _)| pid)
        .context("no shim process for the task")?;
    let state = Path::new("/run/kata").join(id).join("state.json");
    ensure!(state.is_file(), "no {}", state.display());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // containerd notices the dead shim (and runs `containerd-shim-kata-v2 delete`); the user's
    // `ctr task delete` then finds the task gone or deletes it.
    std::thread::sleep(Duration::from_millis(500));
    let _ = c.ctr(&["task", "delete", "-f", id]);
    let _ = c.ctr(&["container", "rm", id]);
    let t0 = Instant::now();
    loop {
        let l = leftovers(&env.tmp);
        let vm_left = cmdlines()
            .iter()
            .any(|(_, cmd)| cmd.contains(&format!("/run/kata/{id}/")));
        if !vm_left && !Path::new("/run/kata").join(id).exists() && l.kata_mounts == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            bail!("after the shim was killed and the task deleted: {l:?}, VM left {vm_left}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Issue 9 row 10 under containerd: QEMU alone is killed. An attached `ctr run` of a
/// long-running container returns within 10 s, a `ctr run -d` task is STOPPED within 10 s,
/// and after `ctr task delete` no process, mount or sandbox directory of either is left.
fn case_qemu_killed_ends_the_task_and_leaves_nothing(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let qemu_of = |id: &str| {
        cmdlines()
            .into_iter()
            .find(|(_, cmd)| {
                cmd.contains("qemu-system") && cmd.contains(&format!("/run/kata/{id}/"))
            })
            .map(|(pid, _)| pid)
    };
    let kill_qemu = |id: &str| -> Result<Instant> {
        let pid = qemu_of(id).with_context(|| format!("no QEMU for {id}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        Ok(Instant::now())
    };
    let gone = |id: &str| -> Result<()> {
        let t0 = Instant::now();
        loop {
            let left = cmdlines()
                .into_iter()
                .filter(|(_, cmd)| cmd.contains(&format!("/run/kata/{id}/")))
                .collect::<Vec<_>>();
            let mounts = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains(&format!("/run/kata/{id}/")) || l.contains(&format!("/{id}/rootfs"))
                })
                .count();
            let dir = Path::new("/run/kata").join(id);
            if left.is_empty() && mounts == 0 && !dir.exists() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(15) {
                bail!(
                    "{id}: processes {left:?}, {mounts} mounts, dir exists {}",
                    dir.exists()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Attached: `ctr run` returns.
    let id = "kt-qemu-killed";
    let mut run = c
        .command(&run_args(&[], id, &["/bin/busybox", "sleep", "1000"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    c.wait_status(id, "RUNNING", Duration::from_secs(120))?;
    booted();
    let t0 = kill_qemu(id)?;
    let status = loop {
        if let Some(status) = run.try_wait()? {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = run.kill();
            let _ = run.wait();
            bail!("`ctr run` still waits 10 s after QEMU was killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "    ctr run returned {:.1?} after QEMU was killed: {status}",
        t0.elapsed()
    );
    // `ctr run` deleted the task when it returned.
    ensure!(c.task_status(id).is_none(), "{:?}", c.task_status(id));
    c.ok(&["container", "rm", id])?;
    gone(id)?;

    // Detached: the task stops, and `ctr task delete` leaves nothing.
    let id = "kt-qemu-killed-d";
    c.ok(&run_args(&["-d"], id, &["/bin/busybox", "sleep", "1000"]))?;
    c.wait_status(id, "RUNNING", Duration::from_secs(10))?;
    booted();
    let t0 = kill_qemu(id)?;
    c.wait_status(id, "STOPPED", Duration::from_secs(10))
        .context("the task is not STOPPED 10 s after QEMU was killed")?;
    println!(
        "    the -d task was STOPPED {:.1?} after QEMU was killed",
        t0.elapsed()
    );
    c.ok(&["task", "delete", id])?;
    c.ok(&["container", "rm", id])?;
    gone(id)
}

fn case_ten_sequential_runs_leave_nothing(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let before = leftovers(&env.tmp);
    for i in 0..10 {
        let id = format!("kt-seq-{i}");
        let out = c.ok(&run_args(&["--rm"], &id, &["echo", "run"]))?;
        ensure!(out == "run\n", "run {i}: {out:?}");
        booted();
    }
    let t0 = Instant::now();
    loop {
        let after = leftovers(&env.tmp);
        if after == before {
            println!("    leftovers after 10 runs: {after:?} (same as before)");
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(5) {
            bail!("left behind: before {before:?}, after {after:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn missing() -> Option<String> {
    containerd::missing(
        &["qemu-system-x86_64"],
        Some(&kata_hypervisor::GuestManifest::default_path()),
    )
}

/// A private containerd whose `PATH` starts with the shim's directory, with the busybox
/// test image imported.
fn setup() -> Result<Env> {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let ctr = ShimContainerd::start_with_busybox("kata-shim-ctd", &shim, NS)?;
    let tmp = ctr.dir().to_path_buf();
    let baseline = leftovers(&tmp);
    Ok(Env { ctr, tmp, baseline })
}

/// Issue 10 item 3 through containerd: `ctr run --mount type=bind,...` of a host directory:
/// read-only (`rbind:ro`) it is read and not written; read-write the container's write is
/// seen on the host.
fn case_bind_mounts_read_only_and_read_write(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let host = env.tmp.join("bind-volume");
    std::fs::create_dir_all(&host)?;
    std::fs::write(host.join("hello"), "from the host\n")?;
    let mount = |options: &str| {
        format!(
            "type=bind,src={},dst=/data,options={options}",
            host.display()
        )
    };
    let ro = mount("rbind:ro");
    let out = c.ctr(&run_args(
        &["--rm", "--mount", &ro],
        "kt-bind-ro",
        &["sh", "-c", "cat /data/hello; touch /data/new"],
    ));
    booted();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        stdout == "from the host\n",
        "the read-only bind was not read: {stdout:?} {stderr}"
    );
    ensure!(
        out.status.code() == Some(1) && stderr.contains("Read-only"),
        "a write to the read-only bind: {:?} {stderr}",
        out.status
    );
    ensure!(
        !host.join("new").exists(),
        "written through a read-only bind"
    );

    let rw = mount("rbind:rw");
    let out = c.ctr(&run_args(
        &["--rm", "--mount", &rw],
        "kt-bind-rw",
        &["sh", "-c", "echo from the guest > /data/out"],
    ));
    booted();
    ensure!(
        out.status.code() == Some(0),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        std::fs::read_to_string(host.join("out"))? == "from the guest\n",
        "the guest's write is not on the host"
    );
    Ok(())
}

/// The shim's address for task `id` (containerd's bundle keeps it).
fn shim_address(env: &Env, id: &str) -> Result<String> {
    let bundle = env
        .tmp
        .join("state/io.containerd.runtime.v2.task")
        .join(NS)
        .join(id);
    Ok(std::fs::read_to_string(bundle.join("address"))?)
}

/// Sends task `id` an Update with `resources` (runtime-spec `LinuxResources` as JSON) as
/// containerd's Tasks.Update does (a typeurl `Any` of the JSON): ctr 1.6 has no `task update`.
fn update_task(env: &Env, id: &str, resources: serde_json::Value) -> Result<()> {
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::protobuf::MessageField;
    use containerd_shim::protos::shim::shim::UpdateTaskRequest;
    use containerd_shim::protos::shim_async::Client;
    let address = shim_address(env, id)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let task = TaskClient::new(Client::connect(&address).await?);
        let req = UpdateTaskRequest {
            id: id.into(),
            resources: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources)?,
                ..Default::default()
            }),
            ..Default::default()
        };
        task.update(ttrpc_ctx(), &req)
            .await
            .map_err(|e| anyhow::anyhow!("Update of {id}: {e:?}"))?;
        Ok(())
    })
}

/// Issue 10 item 5 through containerd: an Update (containerd's Tasks.Update; ctr 1.6 has no
/// `task update`) changes a running container's memory limit (in the guest, through the
/// agent) and `ctr task metrics` reads the new one back; the VM runs in the host cgroup the
/// spec names (`/<namespace>/<id>` from ctr), which is gone after the delete.
fn case_task_update_memory_limit_and_metrics(env: &Env) -> Result<()> {
    use kata_testkit::leaks::{cgroup_dirs, cgroup_of};
    let c = &env.ctr;
    let id = "kt-update";
    let host_cgroup = format!("/{NS}/{id}");
    let limit = |metrics: &str| -> Option<u64> {
        metrics
            .lines()
            .find(|l| l.trim_start().starts_with("memory.limit_in_bytes"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let r = (|| {
        c.ok(&run_args(
            &["-d", "--memory-limit", "268435456"],
            id,
            &["sleep", "1000"],
        ))?;
        booted();
        c.wait_status(id, "RUNNING", Duration::from_secs(10))?;
        let before = c.ok(&["task", "metrics", id])?;
        ensure!(
            limit(&before) == Some(268_435_456),
            "limit at start: {before}"
        );
        update_task(
            env,
            id,
            serde_json::json!({ "memory": { "limit": 134_217_728 } }),
        )?;
        let after = c.ok(&["task", "metrics", id])?;
        ensure!(
            limit(&after) == Some(134_217_728),
            "limit after update: {after}"
        );
        // The VMM runs in the host cgroup the spec names (its vCPUs, by Kata's default).
        let dirs = cgroup_dirs(&host_cgroup);
        ensure!(!dirs.is_empty(), "no host cgroup {host_cgroup}");
        let procs = std::fs::read_to_string(
            std::path::Path::new("/sys/fs/cgroup/cpu")
                .join(host_cgroup.trim_start_matches('/'))
                .join("cgroup.procs"),
        )?;
        let vmm: u32 = procs
            .split_whitespace()
            .next()
            .context("no process in the sandbox's host cgroup")?
            .parse()?;
        let cmdline = std::fs::read_to_string(format!("/proc/{vmm}/cmdline"))?;
        ensure!(
            cmdline.contains("qemu"),
            "not the VMM in {host_cgroup}: {cmdline:?}"
        );
        ensure!(cgroup_of(vmm, "cpu").is_some());
        c.ok(&["task", "kill", "-s", "KILL", id])?;
        c.wait_status(id, "STOPPED", Duration::from_secs(10))?;
        c.ok(&["task", "delete", id])?;
        c.ok(&["container", "rm", id])?;
        let left = cgroup_dirs(&host_cgroup);
        ensure!(left.is_empty(), "host cgroup left: {left:?}");
        Ok(())
    })();
    if r.is_err() {
        c.force_remove(id);
    }
    r
}

/// Issue 16: while a task runs, its shim serves `shim-monitor.sock` in the sandbox's directory
/// (`GET /metrics`: Prometheus text with the VMM's and the guest's figures), `shim-ctl metrics`
/// prints the same, and the socket goes with the sandbox.
fn case_shim_monitor_socket_serves_metrics(env: &Env) -> Result<()> {
    let c = &env.ctr;
    let id = "kt-metrics";
    let socket = Path::new("/run/kata").join(id).join("shim-monitor.sock");
    let r = (|| {
        c.ok(&run_args(&["-d"], id, &["sleep", "1000"]))?;
        booted();
        c.wait_status(id, "RUNNING", Duration::from_secs(10))?;
        ensure!(socket.exists(), "no {}", socket.display());
        // Plain HTTP/1.1 over the unix socket, as a Prometheus scraper sends it.
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
        std::io::Write::write_all(
            &mut stream,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer")?;
        ensure!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        ensure!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        let lines = kata_sandbox::metrics::parse(body).map_err(|e| anyhow::anyhow!("{e}"))?;
        let has = |name: &str| {
            lines.iter().any(
                |l| matches!(l, kata_sandbox::metrics::Line::Sample { name: n, .. } if n == name),
            )
        };
        for name in [
            "kata_shim_resident_memory_bytes",
            "kata_hypervisor_cpu_seconds_total",
            "kata_guest_memory_used_bytes",
            "kata_guest_cpu_seconds_total",
            "kata_sandbox_boot_seconds",
        ] {
            ensure!(has(name), "no {name} in:\n{body}");
        }
        ensure!(body.contains("\nkata_guest_up 1\n"), "{body}");
        // shim-ctl reads the same socket.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shim-ctl"))
            .args(["metrics", id])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains("kata_guest_up 1"),
            "shim-ctl metrics: {:?} {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // A request that is not GET /metrics is refused.
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
        std::io::Write::write_all(&mut stream, b"DELETE /metrics HTTP/1.1\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        ensure!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        c.ok(&["task", "kill", "-s", "KILL", id])?;
        c.wait_status(id, "STOPPED", Duration::from_secs(10))?;
        c.ok(&["task", "delete", id])?;
        c.ok(&["container", "rm", id])?;
        ensure!(!socket.exists(), "{} is left", socket.display());
        Ok(())
    })();
    if r.is_err() {
        c.force_remove(id);
    }
    r
}

fn main() -> std::process::ExitCode {
    Suite::new("containerd_shim")
        .label("containerd tests")
        .requires(missing)
        .timeout(Duration::from_secs(600))
        .blocking_case(
            "run_rm_echo_output_and_exit_codes",
            case_run_rm_echo_output_and_exit_codes,
        )
        .blocking_case(
            "detached_exec_ps_kill_delete",
            case_detached_exec_ps_kill_delete,
        )
        .blocking_case("tty", case_tty)
        .blocking_case("stdin_interactive_cat", case_stdin_interactive_cat)
        .blocking_case(
            "pod_of_two_containers_in_one_vm",
            case_pod_of_two_containers_in_one_vm,
        )
        .blocking_case(
            "ttrpc_errors_not_found_and_already_exists",
            case_ttrpc_errors_not_found_and_already_exists,
        )
        .blocking_case(
            "bad_config_and_missing_kernel_reach_ctr",
            case_bad_config_and_missing_kernel_reach_ctr,
        )
        .blocking_case(
            "shim_sigkill_then_delete_cleans_up",
            case_shim_sigkill_then_delete_cleans_up,
        )
        .blocking_case(
            "qemu_killed_ends_the_task_and_leaves_nothing",
            case_qemu_killed_ends_the_task_and_leaves_nothing,
        )
        .blocking_case(
            "bind_mounts_read_only_and_read_write",
            case_bind_mounts_read_only_and_read_write,
        )
        .blocking_case(
            "task_update_memory_limit_and_metrics",
            case_task_update_memory_limit_and_metrics,
        )
        .blocking_case(
            "shim_monitor_socket_serves_metrics",
            case_shim_monitor_socket_serves_metrics,
        )
        .blocking_case(
            "ten_sequential_runs_leave_nothing",
            case_ten_sequential_runs_leave_nothing,
        )
        .leak_check(|env: &Env| {
            let end = leftovers(&env.tmp);
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
