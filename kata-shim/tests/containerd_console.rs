//! Tier 5, issue 16 through containerd (Debian's 1.6) and `ctr`: the debug console of a
//! sandbox a containerd shim runs (`shim-ctl console` through the shim's management socket),
//! its refusal naming `debug_console_enabled`, and the shim's log in containerd's own log as
//! logfmt lines carrying the sandbox's id.
//!
//! A private containerd (`kata_testkit::containerd`, its `PATH` starting with this build's
//! shim) with the busybox test image; sandbox ids `kc-*`. Cases that boot append `booted
//! containerd_console::<case>` to `$KATA_RS_VM_TEST_LOG`. After the cases no QEMU, shim
//! process or `/run/kata/kc-*` directory may remain.
//!
//! Run one case: `cargo test -p kata-shim --test containerd_console -- <filter>`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kata_testkit::containerd::Containerd;
use kata_testkit::harness::{booted, Suite};
use kata_testkit::image as testimage;
use kata_testkit::leaks::cmdlines;
use kata_testkit::missing_root_or_tools;

const RUNTIME: &str = "io.containerd.kata.v2";
const NS: &str = "kata-rs-console";

struct Env {
    ctr: Containerd,
    tmp: PathBuf,
    _work: tempfile::TempDir,
}

/// `ctr run -d` of `sleep 1000` as sandbox `id`, with `config` as the runtime's configuration.
fn run_detached(env: &Env, id: &str, config: Option<&str>) -> Result<()> {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    let path;
    if let Some(toml) = config {
        let p = env.tmp.join(format!("{id}.toml"));
        std::fs::write(&p, toml)?;
        path = p.display().to_string();
        args.extend(["--runtime-config-path", &path]);
    }
    args.extend([testimage::IMAGE_NAME, id, "sleep", "1000"]);
    env.ctr.ok(&args)?;
    booted();
    env.ctr.wait_status(id, "RUNNING", Duration::from_secs(10))
}

fn remove(env: &Env, id: &str) -> Result<()> {
    let c = &env.ctr;
    c.ok(&["task", "kill", "-s", "KILL", id])?;
    c.wait_status(id, "STOPPED", Duration::from_secs(10))?;
    c.ok(&["task", "delete", id])?;
    c.ok(&["container", "rm", id])?;
    Ok(())
}

/// `shim-ctl console <id>` with `input` on its stdin (a pipe), as an operator's script runs it.
fn shim_ctl_console(id: &str, input: &[u8]) -> Result<std::process::Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shim-ctl"))
        .args(["console", id])
        .env_remove("KATA_RS_ROOT_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(input)?;
    Ok(child.wait_with_output()?)
}

/// The pairs of one logfmt line (quoted values unescaped), as a log reader sees them.
fn logfmt_pairs(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                e => e,
                            });
                        }
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.insert(key.trim().to_string(), value);
        rest = next.trim_start();
    }
    out
}

/// With `[agent.kata] debug_console_enabled = true` (and the debug initrd, which has a shell),
/// `shim-ctl console` of a sandbox `ctr run` started opens a shell in the guest through the
/// sandbox's shim: `uname -r` answers the guest kernel's release (the one `ctr task exec`
/// sees), not the host's. The shim's lines in containerd's log are logfmt like containerd's
/// own, with the sandbox's id as a field.
fn case_console_runs_uname_in_the_guest(env: &Env) -> Result<()> {
    let id = "kc-console";
    let manifest = kata_hypervisor::GuestManifest::load_default()?;
    let initrd = manifest
        .initrd_debug
        .clone()
        .context("the guest manifest has no debug initrd (with a shell)")?;
    let config = format!(
        "[hypervisor.qemu]\ninitrd = \"{}\"\n[agent.kata]\ndebug_console_enabled = true\n",
        initrd.display()
    );
    let r = (|| {
        run_detached(env, id, Some(&config))?;
        let guest = env
            .ctr
            .ok(&["task", "exec", "--exec-id", "u", id, "uname", "-r"])?;
        let guest = guest.trim();
        let host = nix::sys::utsname::uname()?;
        let host = host.release().to_string_lossy();
        ensure!(
            !guest.is_empty() && guest != host,
            "guest {guest:?}, host {host:?}"
        );
        let out = shim_ctl_console(id, b"echo R=$(uname -r)=; exit\n")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "shim-ctl console: {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            stdout.contains(&format!("R={guest}=")),
            "the console did not run uname -r in the guest: {stdout:?}"
        );
        // The container runs on: the console was the guest's, not a restore of the sandbox.
        ensure!(env.ctr.task_status(id).as_deref() == Some("RUNNING"));

        // containerd's log: its own lines and the shim's, both logfmt.
        let log = env.ctr.log();
        let opened = log
            .lines()
            .find(|l| l.contains("debug console session opened"))
            .with_context(|| format!("no console line of the shim in containerd's log:\n{log}"))?;
        let pairs = logfmt_pairs(opened);
        ensure!(opened.starts_with("time=\""), "{opened}");
        for (key, want) in [
            ("level", "info"),
            ("msg", "debug console session opened"),
            ("sandbox", id),
            ("sandbox_id", id),
            ("namespace", NS),
            ("source", "kata_shim::monitor_console"),
        ] {
            ensure!(
                pairs.get(key).map(String::as_str) == Some(want),
                "{key} is not {want:?} in {opened}"
            );
        }
        let own = log
            .lines()
            .find(|l| l.contains("msg=\"starting containerd\""))
            .context("containerd's own first line")?;
        let own = logfmt_pairs(own);
        ensure!(
            own.contains_key("time") && own.get("level").map(String::as_str) == Some("info"),
            "{own:?}"
        );
        remove(env, id)
    })();
    if r.is_err() {
        env.ctr.force_remove(id);
    }
    r
}

/// A sandbox started without the key: `shim-ctl console` is refused naming it, and the
/// container is left as it was.
fn case_console_refused_when_disabled(env: &Env) -> Result<()> {
    let id = "kc-noconsole";
    let r = (|| {
        run_detached(env, id, None)?;
        let out = shim_ctl_console(id, b"uname -r\n")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "exit {:?}: {stderr}",
            out.status
        );
        ensure!(
            stderr.contains("debug_console_enabled = true") && stderr.contains(id),
            "the refusal does not name the key and the sandbox: {stderr}"
        );
        ensure!(env.ctr.task_status(id).as_deref() == Some("RUNNING"));
        remove(env, id)
    })();
    if r.is_err() {
        env.ctr.force_remove(id);
    }
    r
}

fn missing() -> Option<String> {
    if let Some(reason) = missing_root_or_tools(&["containerd", "ctr", "qemu-system-x86_64"]) {
        return Some(reason);
    }
    if !kata_hypervisor::GuestManifest::default_path().is_file() {
        return Some("no guest image (run `make guest`)".into());
    }
    None
}

fn setup() -> Result<Env> {
    let work = tempfile::Builder::new().prefix("kata-shim-con").tempdir()?;
    let tmp = work.path().to_path_buf();
    let image = testimage::busybox_image_tar(&tmp.join("busybox.tar"))?;
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"));
    let ctr = Containerd::start(&tmp, Some(NS), Some(shim.parent().unwrap()))?;
    ctr.ok(&["image", "import", image.path.to_str().unwrap()])?;
    Ok(Env {
        ctr,
        tmp,
        _work: work,
    })
}

/// This suite's processes and sandbox directories (ids `kc-*`).
fn leftovers() -> Vec<String> {
    let mut left: Vec<String> = cmdlines()
        .into_iter()
        .filter(|(_, c)| c.contains("/run/kata/kc-") || c.contains("-id kc-"))
        .map(|(pid, c)| format!("{pid} {c}"))
        .collect();
    left.extend(
        std::fs::read_dir(Path::new("/run/kata"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("kc-")),
    );
    left
}

fn main() -> std::process::ExitCode {
    Suite::new("containerd_console")
        .label("containerd console tests")
        .requires(missing)
        .timeout(Duration::from_secs(300))
        .blocking_case(
            "console_runs_uname_in_the_guest",
            case_console_runs_uname_in_the_guest,
        )
        .blocking_case(
            "console_refused_when_disabled",
            case_console_refused_when_disabled,
        )
        .check_each(|_: &Env| {
            // The shim exits shortly after containerd's Shutdown.
            let mut left = leftovers();
            for _ in 0..50 {
                if left.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                left = leftovers();
            }
            ensure!(left.is_empty(), "left behind: {left:?}");
            Ok(())
        })
        .diagnostics(|env: &Env| {
            let log = env.ctr.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let mut out = String::from("--- containerd log (last lines) ---");
            for l in tail.into_iter().rev() {
                out.push('\n');
                out.push_str(l);
            }
            out
        })
        .run_with(async { setup() })
}
