//! The host side: build L1's initramfs (`lab/build.sh`), export this host's root read-only
//! over virtio-fs (virtiofsd), boot L1 under QEMU TCG with emulated SVM, an emulated IOMMU and
//! the edu device, and collect what its console says until it powers off.
//!
//! Nothing outlives a run: virtiofsd and QEMU are children of the caller, killed (by the
//! handles this module spawned them with) and reaped on every exit path, and the run's working
//! directory (the virtiofsd socket, its log) is removed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::protocol::{parse_line, Check, Figure, L1End, Line, Vmm, SILENCE_LIMIT};

/// What can go wrong before L1 runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `lab/build.sh` failed.
    #[error("building L1's initramfs with {script} failed: {reason}; run it by hand to see why (the cloud kernel comes from scripts/setup.sh)")]
    Build {
        /// The script.
        script: PathBuf,
        /// Its stderr or the spawn error.
        reason: String,
    },
    /// A program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// virtiofsd never made its socket.
    #[error("virtiofsd did not create {socket} within 10 s (its log: {log})")]
    NoSocket {
        /// The socket it was to create.
        socket: PathBuf,
        /// What it logged.
        log: String,
    },
    /// The runner's path cannot go on a kernel command line.
    #[error("the runner path {0} has whitespace or a comma: it cannot go on L1's kernel command line; build into a target dir without them")]
    RunnerPath(PathBuf),
    /// The log filter cannot go on a kernel command line.
    #[error("the log filter {0:?} has whitespace: it cannot go on L1's kernel command line")]
    LogFilter(String),
    /// A program the lab needs is missing.
    #[error("{program} not found: {fix}")]
    Missing {
        /// The program.
        program: String,
        /// How to get it.
        fix: String,
    },
    /// An I/O error on the run's working files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// L1's kernel and initramfs, as `lab/build.sh` printed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Image {
    /// Debian's cloud kernel (`/boot/vmlinuz-<version>`).
    pub kernel: PathBuf,
    /// The cached initramfs.
    pub initrd: PathBuf,
    /// The kernel's release.
    pub kernel_version: String,
    /// The cache key of the initramfs.
    pub key: String,
}

/// `lab/build.sh`, next to this crate.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../build.sh")
}

/// Builds (or finds in the cache) L1's initramfs.
pub fn build_image() -> Result<L1Image, Error> {
    let script = build_script();
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Build {
            script: script.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Build {
            script,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_build_output(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| Error::Build {
        script,
        reason: format!(
            "its output lacks kernel=, initrd=, kernel_version= or key=: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    })
}

/// Reads `lab/build.sh`'s `key=value` lines.
pub fn parse_build_output(out: &str) -> Option<L1Image> {
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(L1Image {
        kernel: get("kernel")?.into(),
        initrd: get("initrd")?.into(),
        kernel_version: get("kernel_version")?,
        key: get("key")?,
    })
}

/// L1's memory in the density mode (MiB): N QEMU pods of ~110 MiB each beside L1's own.
pub const DENSITY_MEMORY_MIB: u32 = 6144;
/// L1's deadline in the density mode: 2N L2 boots, one at a time (13-20 s each under KVM in L1).
pub const DENSITY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The pod count of the density mode (`src/density.rs`), from the host's `KATA_LAB_DENSITY`
/// (whitespace dropped; the runner refuses a value that is not a count, naming the variable):
/// `None` when unset or empty.
pub fn density_pods() -> Option<String> {
    std::env::var("KATA_LAB_DENSITY")
        .ok()
        .map(|v| v.chars().filter(|c| !c.is_whitespace()).collect::<String>())
        .filter(|v| !v.is_empty())
}

/// How to run L1.
#[derive(Debug, Clone)]
pub struct Options {
    /// The test program L1 runs (a path on this host: L1 sees the host's root).
    pub runner: PathBuf,
    /// The VMMs it drives.
    pub vmms: Vec<Vmm>,
    /// L1's memory (MiB).
    pub memory_mib: u32,
    /// L1's vCPUs.
    pub cpus: u32,
    /// L1's CPU model (QEMU's `-cpu`): [`L1_CPU`], or the host's `KATA_LAB_CPU`.
    pub cpu: String,
    /// The whole run's deadline: L1 is killed when it passes.
    pub timeout: Duration,
    /// L1 is killed as frozen when no line of the runner's (`lab-...`; its heartbeat speaks
    /// every 30 s) comes for this long once it has started: [`SILENCE_LIMIT`]. Kernel lines do
    /// not count then (a locked-up L1 still prints its soft-lockup reports).
    pub silence_limit: Duration,
    /// Where to keep L1's whole console.
    pub console_log: Option<PathBuf>,
    /// Print the lab's own lines (`lab-...`) as they come.
    pub echo: bool,
    /// The runner's log filter in L1 (`KATA_LAB_LOG`, tracing's syntax; `warn` when unset).
    pub log: Option<String>,
    /// Only the crash row's cells of these steps (`all`, or `boot,exec`): the runner's
    /// `--crash-only`, from the host's `KATA_LAB_CRASH` (for working on the row; the other
    /// checks then never report).
    pub crash_only: Option<String>,
    /// VFIO cases alone (`lab.vfio=<names>`): the host's `KATA_LAB_VFIO` (`builtin`, `ctr` or
    /// QEMU's check names, comma-separated; the runner then runs no VMM set, the other checks
    /// never report, and it refuses a name it does not know), or a narrowed rerun's `ctr`.
    pub vfio: Option<String>,
}

impl Options {
    /// L1 with 2 GiB and 2 vCPUs, 20 minutes, echoing its lines.
    pub fn new(runner: impl Into<PathBuf>, vmms: &[Vmm]) -> Self {
        Options {
            runner: runner.into(),
            vmms: vmms.to_vec(),
            memory_mib: match density_pods() {
                Some(_) => DENSITY_MEMORY_MIB,
                None => 2048,
            },
            cpus: 2,
            cpu: std::env::var("KATA_LAB_CPU")
                .ok()
                .filter(|c| !c.trim().is_empty())
                .unwrap_or_else(|| L1_CPU.to_string()),
            timeout: Duration::from_secs(1200),
            silence_limit: SILENCE_LIMIT,
            console_log: None,
            echo: true,
            log: None,
            crash_only: std::env::var("KATA_LAB_CRASH")
                .ok()
                .filter(|c| !c.trim().is_empty()),
            vfio: std::env::var("KATA_LAB_VFIO")
                .ok()
                .filter(|c| !c.trim().is_empty()),
        }
    }
}

/// What one L1 run said and how long it took.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Every console line with the time it arrived (from QEMU's start).
    pub console: Vec<(Duration, String)>,
    /// The checks reported.
    pub checks: Vec<Check>,
    /// The figures reported.
    pub figures: Vec<Figure>,
    /// From QEMU's start to L1's `/init` (host wall time).
    pub l1_init: Option<Duration>,
    /// From QEMU's start to the runner's start in L1 (modules loaded, L1 checks done).
    pub runner_start: Option<Duration>,
    /// From QEMU's start to QEMU's exit (or the kill at the deadline).
    pub wall: Duration,
    /// L1 ran past the deadline, or went silent, and was killed.
    pub timed_out: bool,
    /// It was killed for silence: no console line for [`SILENCE_LIMIT`] once the runner had
    /// started (the runner's heartbeat stopped: L1 froze).
    pub froze: bool,
    /// QEMU's exit status (`None` when it was killed).
    pub qemu_status: Option<ExitStatus>,
    /// L1's `/init` said it finished (`lab-l1 done`) before powering off.
    pub l1_done: bool,
    /// The run's working directory (virtiofsd's socket and log), removed when the run ends: a
    /// leak check looks for processes naming it.
    pub work_dir: PathBuf,
}

impl Run {
    /// How the run ended.
    pub fn end(&self) -> L1End {
        match (self.l1_done, self.froze, self.timed_out) {
            (true, _, _) => L1End::Finished,
            (false, true, _) => L1End::Froze,
            (false, false, true) => L1End::Deadline,
            (false, false, false) => L1End::Reset,
        }
    }

    /// The last `n` console lines, for an error message.
    pub fn console_tail(&self, n: usize) -> String {
        let skip = self.console.len().saturating_sub(n);
        self.console[skip..]
            .iter()
            .map(|(t, l)| format!("{:7.1} {l}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the run loop waits for: the next console line, until the deadline or, once the
/// runner has started (its heartbeat speaks every 30 s), until the runner has been silent
/// for the limit.
#[derive(Debug, Clone, Copy)]
struct Wait {
    deadline: Instant,
    last_line: Instant,
    runner_started: bool,
    silence_limit: Duration,
}

impl Wait {
    /// How long to wait for a line from `now`.
    fn at_most(&self, now: Instant) -> Duration {
        let left = self.deadline.saturating_duration_since(now);
        match self.runner_started {
            true => left.min((self.last_line + self.silence_limit).saturating_duration_since(now)),
            false => left,
        }
    }

    /// Whether `line` shows L1 alive. Before the runner starts, any line; after, only the
    /// runner's own (`lab-...`, its heartbeat among them): a CI run of 2026-12-01 had both of
    /// L1's CPUs stuck in an L2's `KVM_RUN` from about 260 s on, the heartbeat gone, while L1's
    /// kernel kept printing its soft-lockup and RCU-stall reports every 30 s until the 2000 s
    /// deadline — a console that spoke, from a machine that had stopped.
    fn keeps_alive(runner_started: bool, line: &str) -> bool {
        !runner_started || line.contains("lab-")
    }

    /// Whether a wait that ran out at `now` ran out for silence (L1 froze), not the deadline.
    fn froze(&self, now: Instant) -> bool {
        self.runner_started && now < self.deadline
    }
}

/// virtiofsd: `$KATA_RS_CACHE/bin` (scripts/setup.sh installs it there), else `PATH`.
pub fn virtiofsd() -> Result<PathBuf, Error> {
    let cache = std::env::var_os("KATA_RS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/kata-rs".into());
    kata_hypervisor::kvm::find_program("virtiofsd", "", &[cache.join("bin")]).ok_or_else(|| {
        Error::Missing {
            program: "virtiofsd".into(),
            fix: "run scripts/setup.sh (cargo install virtiofsd)".into(),
        }
    })
}

/// L1's kernel command line.
pub fn kernel_cmdline(opts: &Options) -> Result<String, Error> {
    let runner = opts.runner.display().to_string();
    if runner.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(Error::RunnerPath(opts.runner.clone()));
    }
    let vmms: Vec<String> = opts
        .vmms
        .iter()
        .flat_map(|v| ["--vmm".to_string(), v.name().to_string()])
        .collect();
    let mut cmdline = format!(
        "console=ttyS0 panic=-1 intel_iommu=on loglevel=4 lab.runner={runner} lab.args={}",
        vmms.join(",")
    );
    if let Some(cells) = &opts.crash_only {
        let cells: String = cells.chars().filter(|c| !c.is_whitespace()).collect();
        cmdline.push_str(&format!(",--crash-only,{}", cells.replace(',', ":")));
    }
    // builtin-memory-hotplug alone (the host's KATA_LAB_MEM; src/mem_hotplug.rs).
    if std::env::var("KATA_LAB_MEM").is_ok_and(|v| !v.trim().is_empty()) {
        cmdline.push_str(" lab.mem");
    }
    // builtin-blk-hot alone (the host's KATA_LAB_BLK; src/blk_hot.rs).
    if std::env::var("KATA_LAB_BLK").is_ok_and(|v| !v.trim().is_empty()) {
        cmdline.push_str(" lab.blk");
    }
    // builtin-net-hot alone (the host's KATA_LAB_NET; src/net_hot.rs).
    if std::env::var("KATA_LAB_NET").is_ok_and(|v| !v.trim().is_empty()) {
        cmdline.push_str(" lab.net");
    }
    // qemu-template alone (the host's KATA_LAB_TEMPLATE; src/template.rs), or with
    // KATA_LAB_TEMPLATE=builtin builtin-template alone (src/builtin_template.rs).
    match std::env::var("KATA_LAB_TEMPLATE").map(|v| v.trim().to_string()) {
        Ok(v) if v == "builtin" => cmdline.push_str(" lab.template=builtin"),
        Ok(v) if !v.is_empty() => cmdline.push_str(" lab.template"),
        _ => {}
    }
    // The density figures alone (the host's KATA_LAB_DENSITY; src/density.rs).
    if let Some(pods) = density_pods() {
        cmdline.push_str(&format!(" lab.density={pods}"));
    }
    if let Some(log) = &opts.log {
        if log.is_empty() || log.contains(char::is_whitespace) {
            return Err(Error::LogFilter(log.clone()));
        }
        cmdline.push_str(&format!(" lab.log={log}"));
    }
    Ok(cmdline)
}

/// L1's CPU model: every feature TCG emulates, SVM among them (so L1 has KVM). Without SVM's
/// virtual GIF (`max,+svm,-vgif`, through `KATA_LAB_CPU`) L1 still panicked in QEMU's VFIO
/// cells (lab/README.md), so the model stays whole.
pub const L1_CPU: &str = "max,+svm";

/// QEMU's arguments for L1: TCG with SVM (so L1 has KVM), q35 with an emulated IOMMU first
/// (the edu device and every later PCI device sit behind it), guest memory in a shared memfd
/// (virtio-fs needs it), the host's root over vhost-user-fs, the serial console on stdout.
pub fn qemu_args(image: &L1Image, opts: &Options, socket: &Path) -> Result<Vec<String>, Error> {
    let m = opts.memory_mib;
    let args = [
        "-M",
        "q35",
        "-accel",
        "tcg",
        "-cpu",
        &opts.cpu,
        "-m",
        &format!("{m}M"),
        "-smp",
        &opts.cpus.to_string(),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-device",
        "intel-iommu",
        "-object",
        &format!("memory-backend-memfd,id=mem,size={m}M,share=on"),
        "-numa",
        "node,memdev=mem",
        "-chardev",
        &format!("socket,id=hostroot,path={}", socket.display()),
        "-device",
        "vhost-user-fs-pci,chardev=hostroot,tag=hostroot",
        "-device",
        "edu",
        // builtin-vfio-msix: a device whose driver needs MSI-X, bound to vfio-pci by L1's init.
        // Modern only (virtio-pci's MSI-X with vendor capabilities) and through the IOMMU
        // (iommu_platform: its DMA is translated like the edu's).
        "-device",
        "virtio-rng-pci,iommu_platform=on,disable-legacy=on",
        "-kernel",
        &image.kernel.display().to_string(),
        "-initrd",
        &image.initrd.display().to_string(),
        "-append",
        &format!(
            "{}{}",
            kernel_cmdline(opts)?,
            vfio_arg(opts.vfio.as_deref())
        ),
    ];
    Ok(args.iter().map(|a| a.to_string()).collect())
}

/// L1's ` lab.vfio=<names>` for the host's `KATA_LAB_VFIO` (commas become colons, the
/// kernel's command line keeps no whitespace in a value); empty when unset or blank.
fn vfio_arg(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.trim().is_empty() => format!(
            " lab.vfio={}",
            v.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .replace(',', ":")
        ),
        _ => String::new(),
    }
}

/// A child killed and reaped when dropped (by its handle: never a pid looked up by name).
/// Spawned with [`die_with_parent`], it also dies if the test process is killed outright.
struct Reaped(Child);

/// Makes `cmd`'s child get SIGKILL when the thread that spawned it ends: [`run`] spawns and
/// waits on the same thread, so a test process killed by a CI timeout leaves no L1 running.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl, which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots L1 and collects its console until it powers off or `opts.timeout` passes.
pub fn run(image: &L1Image, opts: &Options) -> Result<Run, Error> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    };
    let work = tempfile::Builder::new()
        .prefix("kata-lab.")
        .tempdir()
        .map_err(io("creating the run's directory"))?;
    let socket = work.path().join("hostroot.sock");
    let fs_log = work.path().join("virtiofsd.log");
    let args = qemu_args(image, opts, &socket)?;

    let program = virtiofsd()?;
    let log = std::fs::File::create(&fs_log).map_err(io("creating virtiofsd's log"))?;
    let _virtiofsd = Reaped(
        die_with_parent(&mut Command::new(&program))
            .arg(format!("--socket-path={}", socket.display()))
            .args([
                "--shared-dir=/",
                "--readonly",
                "--sandbox=namespace",
                "--seccomp=kill",
                "--cache=always",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.display().to_string(),
                source,
            })?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(Error::NoSocket {
                socket,
                log: std::fs::read_to_string(&fs_log).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut console_file = match &opts.console_log {
        Some(p) => Some(std::fs::File::create(p).map_err(io("creating the console log"))?),
        None => None,
    };
    let started = Instant::now();
    let mut qemu = Reaped(
        die_with_parent(&mut Command::new("qemu-system-x86_64"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: "qemu-system-x86_64".into(),
                source,
            })?,
    );
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        qemu.0
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        qemu.0
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|out| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut buf = Vec::new();
            while matches!(out.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);

    let mut run = Run {
        work_dir: work.path().to_path_buf(),
        ..Run::default()
    };
    let deadline = started + opts.timeout;
    let mut last_line = Instant::now();
    loop {
        let wait = Wait {
            deadline,
            last_line,
            runner_started: run.runner_start.is_some(),
            silence_limit: opts.silence_limit,
        };
        match rx.recv_timeout(wait.at_most(Instant::now())) {
            Ok(line) => {
                if Wait::keeps_alive(run.runner_start.is_some(), &line) {
                    last_line = Instant::now();
                }
                let t = started.elapsed();
                if let Some(f) = console_file.as_mut() {
                    let _ = writeln!(f, "{:7.1} {line}", t.as_secs_f64());
                }
                if opts.echo && line.contains("lab-") {
                    println!("  L1 {:6.1}s {line}", t.as_secs_f64());
                }
                if line.contains("lab-l1 init ") {
                    run.l1_init.get_or_insert(t);
                }
                if line.contains("lab-l1 runner start") {
                    run.runner_start.get_or_insert(t);
                }
                if line.contains("lab-l1 done") {
                    run.l1_done = true;
                }
                match parse_line(&line) {
                    Some(Line::Check(c)) => run.checks.push(c),
                    Some(Line::Figure(f)) => run.figures.push(f),
                    None => {}
                }
                run.console.push((t, line));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                run.timed_out = true;
                run.froze = wait.froze(Instant::now());
                let _ = qemu.0.kill();
                break;
            }
        }
    }
    run.qemu_status = qemu.0.wait().ok().filter(|_| !run.timed_out);
    run.wall = started.elapsed();
    drop(qemu);
    for r in readers {
        let _ = r.join();
    }
    drop(_virtiofsd);
    drop(work);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> L1Image {
        parse_build_output(
            "kernel=/boot/vmlinuz-6.1.0-57-cloud-amd64\ninitrd=/var/cache/kata-rs/lab/abc/l1-initrd.img\n\
             kernel_version=6.1.0-57-cloud-amd64\nkey=abc\n",
        )
        .unwrap()
    }

    #[test]
    fn silence_ends_the_wait_only_once_the_runner_beats() {
        let now = Instant::now();
        let w = Wait {
            deadline: now + Duration::from_secs(1000),
            last_line: now - Duration::from_secs(100),
            runner_started: false,
            silence_limit: Duration::from_secs(180),
        };
        // Before the runner: the deadline alone (L1's boot and module loads may be quiet).
        assert_eq!(w.at_most(now), Duration::from_secs(1000));
        assert!(!w.froze(now + Duration::from_secs(1000)));
        let w = Wait {
            runner_started: true,
            ..w
        };
        assert_eq!(w.at_most(now), Duration::from_secs(80));
        assert!(w.froze(now + Duration::from_secs(80)));
        // Silent past the limit already: no wait at all.
        assert_eq!(w.at_most(now + Duration::from_secs(500)), Duration::ZERO);
        // The deadline comes first: that is a deadline, not a freeze.
        let w = Wait {
            deadline: now + Duration::from_secs(10),
            ..w
        };
        assert_eq!(w.at_most(now), Duration::from_secs(10));
        assert!(!w.froze(now + Duration::from_secs(10)));
    }

    #[test]
    fn after_the_runner_starts_only_its_lines_keep_l1_alive() {
        let lockup =
            "[ 1828.678445] watchdog: BUG: soft lockup - CPU#0 stuck for 1572s! [kata-vcpu-0:354]";
        let rcu = "[ 1866.740195] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:";
        // L1's boot and module loads: every line counts (the silence limit is not armed yet).
        assert!(Wait::keeps_alive(false, lockup));
        assert!(Wait::keeps_alive(false, "Loading, please wait..."));
        // Once the runner beats, the kernel's reports of a stuck machine do not.
        assert!(!Wait::keeps_alive(true, lockup));
        assert!(!Wait::keeps_alive(true, rcu));
        assert!(Wait::keeps_alive(true, "lab-alive 270"));
        assert!(Wait::keeps_alive(true, "lab-check ok qemu-boot took 3.1s"));
        // A heartbeat that shares its line with a kernel message still counts.
        assert!(Wait::keeps_alive(
            true,
            "[  300.1] virtio_net: xlab-alive 300"
        ));
    }

    #[test]
    fn the_vfio_selection_goes_to_l1_without_commas_or_spaces() {
        assert_eq!(vfio_arg(None), "");
        assert_eq!(vfio_arg(Some(" ")), "");
        assert_eq!(vfio_arg(Some("builtin")), " lab.vfio=builtin");
        assert_eq!(
            vfio_arg(Some("ctr, vfio-mode-cold-bridge-port")),
            " lab.vfio=ctr:vfio-mode-cold-bridge-port"
        );
    }

    #[test]
    fn build_output_is_read_and_incomplete_output_refused() {
        let i = image();
        assert_eq!(i.kernel, Path::new("/boot/vmlinuz-6.1.0-57-cloud-amd64"));
        assert_eq!(i.key, "abc");
        assert_eq!(parse_build_output("kernel=/k\ninitrd=/i\nkey=k\n"), None);
    }

    #[test]
    fn l1_has_svm_an_iommu_before_the_edu_device_and_the_host_root() {
        let opts = Options::new("/t/debug/kata-lab", &[Vmm::Qemu]);
        let a = qemu_args(&image(), &opts, Path::new("/run/x/hostroot.sock"))
            .unwrap()
            .join(" ");
        assert!(
            a.contains("-M q35 -accel tcg -cpu max,+svm -m 2048M -smp 2"),
            "{a}"
        );
        let iommu = a.find("-device intel-iommu").expect("an IOMMU");
        let edu = a.find("-device edu").expect("the edu device");
        let fs = a.find("vhost-user-fs-pci").expect("the host root");
        assert!(iommu < edu && iommu < fs, "the IOMMU must come first: {a}");
        let rng = a
            .find("-device virtio-rng-pci,iommu_platform=on,disable-legacy=on")
            .expect("the MSI-X device, modern and behind the IOMMU");
        assert!(
            edu < rng,
            "added after the edu, which keeps its address: {a}"
        );
        assert!(
            a.contains("memory-backend-memfd,id=mem,size=2048M,share=on"),
            "{a}"
        );
        assert!(a.contains("path=/run/x/hostroot.sock"), "{a}");
        assert!(
            a.contains("intel_iommu=on") && a.contains("lab.runner=/t/debug/kata-lab"),
            "{a}"
        );
        assert!(a.contains("lab.args=--vmm,qemu"), "{a}");
    }

    #[test]
    fn a_child_dies_with_the_thread_that_spawned_it() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::thread::spawn(|| {
            die_with_parent(&mut Command::new("sleep"))
                .arg("30")
                .spawn()
                .unwrap()
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child outlived the thread that spawned it");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn the_log_filter_goes_on_the_command_line_if_it_can() {
        let mut opts = Options::new("/t/kata-lab", &[Vmm::Qemu]);
        assert!(!kernel_cmdline(&opts).unwrap().contains("lab.log"));
        opts.log = Some("kata_hypervisor=debug,info".into());
        assert!(kernel_cmdline(&opts)
            .unwrap()
            .ends_with(" lab.log=kata_hypervisor=debug,info"));
        opts.log = Some("a b".into());
        assert!(matches!(kernel_cmdline(&opts), Err(Error::LogFilter(_))));
    }

    #[test]
    fn the_crash_row_alone_goes_to_the_runner() {
        let mut opts = Options::new("/t/kata-lab", &[Vmm::Builtin]);
        opts.crash_only = None;
        assert!(!kernel_cmdline(&opts).unwrap().contains("--crash-only"));
        opts.crash_only = Some("boot, exec".into());
        assert!(kernel_cmdline(&opts)
            .unwrap()
            .contains(" lab.args=--vmm,builtin,--crash-only,boot:exec"));
    }

    #[test]
    fn a_runner_path_the_command_line_cannot_carry_is_refused() {
        for p in ["/t a/kata-lab", "/t,a/kata-lab"] {
            let opts = Options::new(p, &[Vmm::Qemu]);
            assert!(
                matches!(kernel_cmdline(&opts), Err(Error::RunnerPath(_))),
                "{p}"
            );
        }
    }
}
