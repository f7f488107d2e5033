//! Tier 3: `shim-ctl create|start|exec|kill|delete|state` as a process, against a busybox
//! bundle in a real guest, and its bad-input errors. Cases run under `kata_testkit::harness`
//! and filter by name (`cargo test -p kata-shim --test vm_shim_ctl -- <filter>`); each booting
//! case appends a `booted ...` line to `$KATA_RS_VM_TEST_LOG`. After each case nothing may be
//! left: no process naming the sandbox root, no mount under it, no sandbox directory.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_testkit::harness::{booted, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn root(&self) -> PathBuf {
        self.tmp.path().join("sandboxes")
    }

    /// A bundle whose config.json runs `args`, its rootfs a busybox rootfs inside it (a
    /// `root.path` outside the bundle is refused).
    fn bundle(&self, name: &str, args: &[&str]) -> Result<PathBuf> {
        let dir = self.tmp.path().join(format!("bundle-{name}"));
        std::fs::create_dir_all(&dir)?;
        kata_testkit::image::busybox_rootfs(&dir.join("rootfs"))?;
        let mut spec = oci_spec::runtime::Spec::default();
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        spec.set_root(Some(
            oci_spec::runtime::RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        ));
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
        Ok(dir)
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let root = self.root();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shim-ctl"));
        cmd.arg("--root")
            .arg(&root)
            .args(args)
            .env_remove("RUST_LOG");
        cmd.output().expect("running shim-ctl")
    }

    /// Runs shim-ctl and expects exit status `code`; returns (stdout, stderr).
    fn expect(&self, args: &[&str], code: i32) -> Result<(String, String)> {
        let o = self.ctl(args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        ensure!(
            o.status.code() == Some(code),
            "shim-ctl {args:?}: exit {:?}, want {code}\nstdout: {out}\nstderr: {err}",
            o.status.code()
        );
        Ok((out, err))
    }

    fn state(&self, id: &str) -> Result<serde_json::Value> {
        let (out, _) = self.expect(&["state", id], 0)?;
        serde_json::from_str(&out).with_context(|| format!("state is not JSON: {out}"))
    }

    /// Nothing of any sandbox is left: directories, mounts, processes.
    fn nothing_left(&self) -> Result<()> {
        let root = self.root();
        let dirs: Vec<_> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        ensure!(dirs.is_empty(), "sandbox directories left: {dirs:?}");
        let needle = root.display().to_string();
        let mounts = mounts_under(&root);
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
        let procs = processes_mentioning(&needle, "shim-ctl");
        ensure!(procs.is_empty(), "processes left: {procs:?}");
        Ok(())
    }
}

/// How long the lifecycle waits for what follows a command in the guest (the container's
/// first file, its exit after a kill). A liveness bound, not a speed target.
const SETTLE: Duration = Duration::from_secs(60);

/// create, state, start --detach, exec, kill, delete of one container.
fn case_lifecycle(env: &Env) -> Result<()> {
    let bundle = env.bundle(
        "life",
        &["sh", "-c", "echo started > /tmp/s; exec sleep 1000"],
    )?;
    let b = bundle.display().to_string();
    let t = Instant::now();
    env.expect(&["create", "--bundle", &b, "life"], 0)?;
    booted();
    println!("    create (boot) took {:.1?}", t.elapsed());
    let s = env.state("life")?;
    ensure!(s["status"] == "created", "after create: {s}");
    ensure!(s["bundle"] == b.as_str(), "bundle: {s}");
    let vmm = s["vmm_pids"].clone();
    ensure!(vmm.as_array().is_some_and(|a| !a.is_empty()), "{s}");
    let (_, err) = env.expect(&["create", "--bundle", &b, "life"], 1)?;
    ensure!(err.contains("exists already"), "second create: {err}");

    env.expect(&["start", "--detach", "life"], 0)?;
    let s = env.state("life")?;
    ensure!(s["status"] == "running", "after start: {s}");
    ensure!(s["pids"].as_array().is_some_and(|a| !a.is_empty()), "{s}");
    ensure!(s["vmm_pids"] == vmm, "same VM: {s}");
    let (_, err) = env.expect(&["start", "life"], 1)?;
    ensure!(err.contains("started already"), "second start: {err}");

    // The container runs on between commands: its file is there (once its shell ran; a
    // deadline, not a count of tries: each try is a shim-ctl process, slow on a loaded host).
    let (mut last, mut found) = (String::new(), false);
    let mut tries = 0;
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        tries += 1;
        let o = env.ctl(&["exec", "life", "cat", "/tmp/s"]);
        last = format!(
            "exit {:?}, stdout {:?}, stderr {:?}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        found = o.status.success() && o.stdout == b"started\n";
        if found {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        found,
        "exec cat /tmp/s, {tries} tries in {SETTLE:?}, the last: {last}"
    );
    let (out, err) = env.expect(
        &[
            "exec",
            "life",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 7",
        ],
        7,
    )?;
    ensure!(out == "to-out\n", "exec stdout {out:?}");
    ensure!(err.contains("to-err"), "exec stderr {err:?}");

    let (_, err) = env.expect(&["delete", "life"], 1)?;
    ensure!(
        err.contains("is running"),
        "delete of a running container: {err}"
    );
    env.expect(&["kill", "--signal", "KILL", "life"], 0)?;
    let mut state = serde_json::Value::Null;
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        state = env.state("life")?;
        if state["status"] == "stopped" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        state["status"] == "stopped",
        "not stopped {SETTLE:?} after kill: {state}"
    );
    env.expect(&["delete", "life"], 0)?;
    let (_, err) = env.expect(&["state", "life"], 1)?;
    ensure!(
        err.contains("no sandbox `life`"),
        "state after delete: {err}"
    );
    Ok(())
}

/// start without --detach prints the output and exits with the container's status.
fn case_start_attached(env: &Env) -> Result<()> {
    let bundle = env.bundle("att", &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    env.expect(
        &["create", "--bundle", &bundle.display().to_string(), "att"],
        0,
    )?;
    booted();
    let (out, err) = env.expect(&["start", "att"], 3)?;
    ensure!(out == "out\n", "start stdout {out:?}");
    ensure!(err.contains("err"), "start stderr {err:?}");
    let s = env.state("att")?;
    ensure!(s["status"] == "stopped", "after exit: {s}");
    env.expect(&["delete", "att"], 0)?;
    Ok(())
}

/// Errors name the problem; nothing is created.
fn case_bad_input(env: &Env) -> Result<()> {
    let (_, err) = env.expect(&["create", "--bundle", "/no/such/bundle", "x1"], 1)?;
    ensure!(err.contains("/no/such/bundle"), "missing bundle: {err}");

    let bad = env.tmp.path().join("bundle-bad");
    std::fs::create_dir_all(bad.join("rootfs"))?;
    let good = env.bundle("good", &["true"])?;
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("config.json"))?)?;
    json["process"]["args"] = serde_json::json!("true");
    std::fs::write(bad.join("config.json"), json.to_string())?;
    let (_, err) = env.expect(&["create", "--bundle", &bad.display().to_string(), "x2"], 1)?;
    ensure!(
        err.contains("config.json") && err.contains("process.args"),
        "invalid config.json: {err}"
    );

    let norootfs = env.tmp.path().join("bundle-norootfs");
    std::fs::create_dir_all(&norootfs)?;
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("config.json"))?)?;
    json["root"]["path"] = serde_json::json!("missing-rootfs");
    std::fs::write(norootfs.join("config.json"), json.to_string())?;
    let (_, err) = env.expect(
        &["create", "--bundle", &norootfs.display().to_string(), "x3"],
        1,
    )?;
    ensure!(err.contains("missing-rootfs"), "missing rootfs: {err}");

    for cmd in [
        vec!["start", "nope"],
        vec!["exec", "nope", "true"],
        vec!["kill", "nope"],
        vec!["delete", "nope"],
        vec!["state", "nope"],
        vec!["state", "../etc"],
    ] {
        let (_, err) = env.expect(&cmd, 1)?;
        ensure!(err.contains("no sandbox"), "{cmd:?}: {err}");
    }
    let (_, err) = env.expect(&["exec", "nope"], 2)?;
    ensure!(err.contains("a command to run"), "usage: {err}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_shim_ctl")
        .blocking_case("bad_input", case_bad_input)
        .blocking_case("lifecycle", case_lifecycle)
        .blocking_case("start_attached", case_start_attached)
        .check_each(Env::nothing_left)
        // Leave nothing behind a failed case either.
        .on_failure(|env: &Env| {
            for e in std::fs::read_dir(env.root())
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = kata_sandbox::persist::cleanup(&e.path());
            }
        })
        .run_with(async {
            Ok(Env {
                tmp: tempfile::tempdir()?,
            })
        })
}
