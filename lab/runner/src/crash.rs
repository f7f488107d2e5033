//! The crash matrix's last row (issue 14): {the shim while a built-in VM runs in it} × {boot
//! before `state.json` exists, Create, Start, Exec, Delete, Shutdown}, in L1 where KVM works.
//!
//! A private containerd (`kata_testkit::containerd`: the host's `containerd` and `ctr`, its
//! root and state on L1's tmpfs, the default overlayfs snapshotter) runs kata-rs's shim as
//! runtime `io.containerd.katalab.v2`: `containerd-shim-katalab-v2`, built beside this runner
//! with the built-in VMM and, under `cargo test`, kata-sandbox's crash points. Its
//! configuration is `config/configuration-dragonball.toml` as shipped but for a 256 MiB guest;
//! its sandboxes go under [`STATE_ROOT`]. Each cell is one check, `builtin-crash-<step>`: as
//! the host's `kata-shim/tests/crash_matrix.rs` does, it writes `<step>:runtime` into the file
//! `KATA_RS_CRASH_AT=@<file>` names, runs what a user would (`ctr run -d`, `ctr task exec`,
//! `ctr task kill`, `ctr task delete`, then `ctr task delete -f` and `ctr container rm`), and
//! checks that the crash point fired (the shim `kill -9`ed itself, its VM with it), that no
//! `ctr` call hung, that containerd heard of it (an error or the task's exit, unless the shim
//! died after containerd had its answer), and that nothing is left: no process naming the
//! sandbox or its shim, no mount, no sandbox directory, no shim socket, no host cgroup, no task
//! or container in containerd, and no file descriptor of `/dev/kvm`, a KVM VM or a vCPU in any
//! process. While the cell runs a sampler watches the shim's descriptors: the detail says how
//! many KVM descriptors its process held (the VM ran in it) before it died with them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_lab::protocol::{check_line, BUILTIN_CRASH_CHECKS};
use kata_sandbox::crash::{CrashStep, CRASH_ENV};
use kata_testkit::containerd::{Containerd, ShimContainerd, StartOptions};
use kata_testkit::leaks::{cmdlines, sandbox_leftovers};

/// The shim's program name, beside this runner.
pub const SHIM: &str = "containerd-shim-katalab-v2";
/// The runtime name containerd resolves to [`SHIM`] on its `PATH`.
pub(crate) const RUNTIME: &str = "io.containerd.katalab.v2";
/// `ctr`'s namespace (and the name of the shims' cgroup parent under containerd).
const NS: &str = "kata-lab-crash";
/// Where the shims keep their sandboxes (`KATA_RS_ROOT_DIR`; L1's tmpfs on `/run`).
pub const STATE_ROOT: &str = "/run/kata-lab-crash";
/// Where containerd's shims put their sockets (containerd-shim's `SOCKET_ROOT`).
pub(crate) const SHIM_SOCKETS: &str = "/run/containerd/s";
/// The longest a `ctr` call may take before the cell fails as hung (an L2 boot under nested
/// SVM takes 10-30 s).
pub(crate) const CTR_TIMEOUT: Duration = Duration::from_secs(150);
/// The guest's memory in the crash row's sandboxes (the shipped file says 2048).
const GUEST_MIB: u32 = 256;

/// The check a step's cell reports (without the `builtin-` prefix).
pub fn check_name(step: CrashStep) -> String {
    format!("crash-{}", step.name())
}

/// The steps named by `--crash-only`'s list (`boot:exec`), or every step for `all`.
pub fn parse_cells(list: &str) -> Result<Vec<CrashStep>> {
    if list == "all" {
        return Ok(CrashStep::ALL.to_vec());
    }
    list.split([':', ','])
        .filter(|s| !s.is_empty())
        .map(|s| {
            CrashStep::ALL
                .into_iter()
                .find(|c| c.name() == s)
                .with_context(|| {
                    format!(
                        "unknown crash step {s:?}: the steps are {}",
                        CrashStep::ALL.map(|c| c.name()).join(", ")
                    )
                })
        })
        .collect()
}

/// The steps of `--crash-only <steps|all>` among the runner's arguments (checked by its
/// argument parser), if it is there: the runner then runs only the crash row's cells of those
/// steps (the host's `KATA_LAB_CRASH`, for working on the row: a full lab run takes minutes
/// more).
pub fn crash_only(args: impl IntoIterator<Item = String>) -> Option<Vec<CrashStep>> {
    let mut args = args.into_iter();
    args.find(|a| a == "--crash-only")?;
    parse_cells(&args.next()?).ok()
}

/// The crash row's environment: the containerd, the crash file, the configuration.
struct Env {
    ctr: ShimContainerd,
    crash_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// The shipped `configuration-dragonball.toml` with a [`GUEST_MIB`] guest, written into `dir`.
fn config_file(dir: &Path) -> Result<PathBuf> {
    let shipped = crate::default_vmm::dragonball_toml()?;
    let text = std::fs::read_to_string(&shipped)
        .with_context(|| format!("reading {}", shipped.display()))?;
    const SHIPPED_MEMORY: &str = "\ndefault_memory = 2048\n";
    ensure!(
        text.contains(SHIPPED_MEMORY),
        "configuration-dragonball.toml no longer says {SHIPPED_MEMORY:?}: update the lab's crash row"
    );
    let file = dir.join("configuration-dragonball.toml");
    std::fs::write(
        &file,
        text.replacen(
            SHIPPED_MEMORY,
            &format!("\ndefault_memory = {GUEST_MIB}\n"),
            1,
        ),
    )
    .with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

fn setup() -> Result<Env> {
    let dir = tempfile::Builder::new()
        .prefix("kata-lab-crash")
        .tempdir()?;
    let crash_file = dir.path().join("crash-at");
    let crash_env = format!("@{}", crash_file.display());
    let ctr = lab_containerd(dir.path(), NS, &Ok, &[(CRASH_ENV, &crash_env)])?;
    Ok(Env {
        ctr,
        crash_file,
        _dir: dir,
    })
}

/// A containerd in L1 (namespace `ns`) running the lab's shim ([`SHIM`], as [`RUNTIME`]) on
/// the shipped `configuration-dragonball.toml` with a [`GUEST_MIB`] guest and `edit` applied
/// to its text (written into `dir`, which must outlive containerd), sandboxes under
/// [`STATE_ROOT`], `env` added to the shim's environment, the busybox image imported. The
/// crash row's, and the containerd VFIO case's (`src/vfio_ctr.rs`).
pub(crate) fn lab_containerd(
    dir: &Path,
    ns: &str,
    edit: &dyn Fn(String) -> Result<String>,
    env: &[(&str, &str)],
) -> Result<ShimContainerd> {
    let shim = std::env::current_exe()
        .context("the runner's own path")?
        .with_file_name(SHIM);
    ensure!(
        shim.is_file(),
        "no {} beside the runner: build it with `cargo test -p kata-lab --no-run` (the lab's \
         crate builds it with the crash points)",
        shim.display()
    );
    let config = config_file(dir)?;
    std::fs::write(&config, edit(std::fs::read_to_string(&config)?)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let config = config.display().to_string();
    let mut env = env.to_vec();
    env.push((kata_sandbox::config::KATA_CONF_FILE, &config));
    env.push((kata_shim::shim::ROOT_DIR_ENV, STATE_ROOT));
    let ctr = ShimContainerd::start(
        "kata-lab-containerd",
        &shim,
        &StartOptions {
            namespace: Some(ns),
            env: &env,
            ..StartOptions::default()
        },
    )
    .context("starting containerd in L1")?;
    ctr.import_busybox()
        .context("importing the busybox image into L1's containerd")?;
    Ok(ctr)
}

/// The descriptors of process `pid` that are KVM's: `/dev/kvm`, a VM (`anon_inode:kvm-vm`), a
/// vCPU (`anon_inode:kvm-vcpu:N`).
fn kvm_fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| is_kvm(l))
        .collect()
}

/// Whether a descriptor's link names KVM.
fn is_kvm(link: &str) -> bool {
    link == "/dev/kvm" || link.starts_with("anon_inode:kvm-")
}

/// Every KVM descriptor of every process, as `<pid> <link>`.
pub(crate) fn all_kvm_fds() -> BTreeSet<String> {
    cmdlines()
        .into_iter()
        .flat_map(|(pid, _)| kvm_fds(pid).into_iter().map(move |l| format!("{pid} {l}")))
        .collect()
}

/// The live shim processes of sandbox `id` (their command line names the shim and `-id <id>`).
fn shim_pids(id: &str) -> Vec<u32> {
    cmdlines()
        .into_iter()
        .filter(|(_, c)| c.contains(SHIM) && c.contains(&format!("-id {id}")))
        .map(|(pid, _)| pid)
        .collect()
}

/// What the sampler saw of the shim's KVM descriptors: the most at one time, and in which pid.
#[derive(Default, Debug)]
struct Seen {
    pid: u32,
    fds: Vec<String>,
}

/// Watches sandbox `id`'s shim every 100 ms until dropped, keeping the largest set of KVM
/// descriptors it held.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(id: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, k, id) = (stop.clone(), seen.clone(), id.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for pid in shim_pids(&id) {
                    let fds = kvm_fds(pid);
                    let mut seen = k.lock().expect("the sampler's lock");
                    if fds.len() > seen.fds.len() {
                        *seen = Seen { pid, fds };
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops it and says what it saw.
    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().expect("the sampler's lock"))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The entries of the shim socket directory.
pub(crate) fn shim_sockets() -> BTreeSet<String> {
    std::fs::read_dir(SHIM_SOCKETS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What is left of sandbox `id`: processes naming its directory or shim, its mounts, its
/// directory, shim sockets and KVM descriptors not there before the cell, its host cgroups,
/// containerd's task and container.
fn left_of(
    c: &Containerd,
    id: &str,
    sockets_before: &BTreeSet<String>,
    kvm_before: &BTreeSet<String>,
) -> Vec<String> {
    let mut left = sandbox_leftovers(c, Path::new(STATE_ROOT), SHIM, NS, id);
    left.extend(
        shim_sockets()
            .difference(sockets_before)
            .map(|s| format!("shim socket {SHIM_SOCKETS}/{s}")),
    );
    left.extend(
        all_kvm_fds()
            .difference(kvm_before)
            .map(|f| format!("KVM descriptor of process {f}")),
    );
    left
}

/// One cell: arm the crash point, run the user's sequence, clean up as a user, check.
fn cell(env: &Env, step: CrashStep) -> Result<String> {
    let c = &env.ctr;
    let id = format!("lc-{}", step.name());
    let sockets_before = shim_sockets();
    let kvm_before = all_kvm_fds();
    std::fs::write(&env.crash_file, format!("{}:runtime", step.name()))?;
    let ctr = |args: &[&str]| c.ctr_within(args, CTR_TIMEOUT);
    let sampler = Sampler::start(&id);
    let mut said = Vec::new();
    let mut any_error = false;
    let mut note = |what: &str, (ok, err): (bool, String)| {
        any_error |= !ok;
        said.push(if ok {
            format!("{what} ok")
        } else {
            format!("{what} error ({})", err.lines().next().unwrap_or(""))
        });
        ok
    };
    let run = ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        kata_testkit::image::IMAGE_NAME,
        &id,
        "sleep",
        "1000",
    ])?;
    if note("run", run) {
        let exec = ctr(&["task", "exec", "--exec-id", "e1", &id, "true"])?;
        note("exec", exec);
    }
    let status_before_kill = c.task_status(&id);
    let stopped_by_crash = matches!(status_before_kill.as_deref(), Some("STOPPED") | None);
    let kill = ctr(&["task", "kill", "-s", "KILL", &id])?;
    if note("kill", kill) {
        let _ = c.wait_status(&id, "STOPPED", Duration::from_secs(30));
    }
    let delete = ctr(&["task", "delete", &id])?;
    note("delete", delete);
    // The user's cleanup after whatever happened.
    let _ = ctr(&["task", "delete", "-f", &id])?;
    let _ = ctr(&["container", "rm", &id])?;
    let seen = sampler.finish();

    let fired = !env.crash_file.exists();
    let _ = std::fs::remove_file(&env.crash_file);
    ensure!(
        fired,
        "the crash point {}:runtime never fired ({said:?}): is {SHIM} built with kata-sandbox's \
         crash-points (`cargo test -p kata-lab` builds it so)?",
        step.name()
    );
    // Cleanup may take a moment (containerd runs the shim's `delete` for a dead shim).
    let t0 = Instant::now();
    let left = loop {
        let left = left_of(c, &id, &sockets_before, &kvm_before);
        if left.is_empty() || t0.elapsed() > Duration::from_secs(20) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        left.is_empty(),
        "left after cleanup ({said:?}): {left:?}; {}",
        c.log_tail(8)
    );
    // containerd must have heard of it (as the host's matrix: the shim killed at Shutdown
    // dies after containerd had its answer).
    ensure!(
        any_error || stopped_by_crash || step == CrashStep::Shutdown,
        "containerd never heard of the crash: {said:?}"
    );
    // The VM ran in the shim's process: the sampler saw its KVM descriptors there (a shim
    // killed at Boot may die before a 100 ms sample; the other steps come after a boot).
    ensure!(
        step == CrashStep::Boot || seen.fds.iter().any(|f| f == "anon_inode:kvm-vm"),
        "no KVM VM descriptor was seen in the shim's process ({seen:?}): did the VM run in it?"
    );
    let vm = if seen.fds.is_empty() {
        "the shim died before a sample".to_string()
    } else {
        format!(
            "shim pid {} held {} KVM descriptors ({})",
            seen.pid,
            seen.fds.len(),
            summarize(&seen.fds)
        )
    };
    Ok(format!(
        "{}; {vm}; clean in {:.1?}: no process, mount, sandbox directory, shim socket, cgroup, \
         task, container or KVM descriptor left",
        said.join(", "),
        t0.elapsed()
    ))
}

/// `/dev/kvm`, `kvm-vm`, `kvm-vcpu:0` ... counted by kind.
fn summarize(fds: &[String]) -> String {
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for f in fds {
        let kind = f.trim_start_matches("anon_inode:").to_string();
        let kind = match kind.split_once(':') {
            Some((k, _)) => k.to_string(),
            None => kind,
        };
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the crash row's cells (`steps`), one `builtin-crash-<step>` line each; returns (ran,
/// passed).
pub fn run(steps: &[CrashStep]) -> (usize, usize) {
    let report = |step: CrashStep, result: Result<String>| {
        let name = format!("builtin-{}", check_name(step));
        debug_assert!(BUILTIN_CRASH_CHECKS.contains(&check_name(step).as_str()));
        let ok = result.is_ok();
        println!(
            "{}",
            check_line(&name, &result.map_err(|e| format!("{e:#}")))
        );
        ok
    };
    let t = Instant::now();
    let env = match setup() {
        Ok(env) => env,
        Err(e) => {
            for step in steps {
                report(*step, Err(anyhow::anyhow!("not run: {e:#}")));
            }
            return (steps.len(), 0);
        }
    };
    println!(
        "kata-lab: crash row: containerd up, image imported in {:.1?}",
        t.elapsed()
    );
    let mut passed = 0;
    for step in steps {
        let t = Instant::now();
        let result = cell(&env, *step).map(|d| format!("{d} (cell {:.1?})", t.elapsed()));
        if result.is_err() {
            // The next cell starts clean.
            env.ctr.force_remove(&format!("lc-{}", step.name()));
        }
        passed += usize::from(report(*step, result));
    }
    drop(env);
    (steps.len(), passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_a_listed_check() {
        let names: Vec<String> = CrashStep::ALL.into_iter().map(check_name).collect();
        assert_eq!(names, BUILTIN_CRASH_CHECKS);
    }

    #[test]
    fn cells_from_the_command_line() {
        assert_eq!(parse_cells("all").unwrap(), CrashStep::ALL.to_vec());
        assert_eq!(
            parse_cells("boot:exec").unwrap(),
            vec![CrashStep::Boot, CrashStep::Exec]
        );
        let e = parse_cells("boot:unpack").unwrap_err().to_string();
        assert!(e.contains("\"unpack\"") && e.contains("shutdown"), "{e}");
    }

    #[test]
    fn crash_only_is_found_among_the_arguments() {
        let args = |a: &[&str]| crash_only(a.iter().map(|s| s.to_string()));
        assert_eq!(
            args(&["--vmm", "builtin", "--crash-only", "exec"]),
            Some(vec![CrashStep::Exec])
        );
        assert_eq!(args(&["--vmm", "builtin"]), None);
        assert_eq!(args(&["--crash-only"]), None);
    }

    #[test]
    fn kvm_descriptors_are_told_apart() {
        for l in ["/dev/kvm", "anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0"] {
            assert!(is_kvm(l), "{l}");
        }
        for l in ["/dev/null", "anon_inode:[eventfd]", "/tmp/kvm-notes"] {
            assert!(!is_kvm(l), "{l}");
        }
        let fds: Vec<String> = ["/dev/kvm", "anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(summarize(&fds), "1 /dev/kvm, 1 kvm-vm, 1 kvm-vcpu");
    }

    #[test]
    fn an_open_kvm_descriptor_is_found_and_gone_once_closed() {
        // Where there is a /dev/kvm to open (this host's is paravirtual, L1's real).
        let Ok(kvm) = std::fs::File::open("/dev/kvm") else {
            return;
        };
        let me = format!("{} /dev/kvm", std::process::id());
        assert!(all_kvm_fds().contains(&me), "{:?}", all_kvm_fds());
        assert!(kvm_fds(std::process::id()).contains(&"/dev/kvm".to_string()));
        drop(kvm);
        assert!(!all_kvm_fds().contains(&me));
    }

    #[test]
    fn the_shipped_configuration_gets_a_small_guest() {
        let dir = tempfile::tempdir().unwrap();
        let file = config_file(dir.path()).unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains(&format!("\ndefault_memory = {GUEST_MIB}\n")));
        assert!(!text.contains("\ndefault_memory = 2048\n"));
    }
}
