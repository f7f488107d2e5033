//! One virtiofsd per sandbox: the daemon that serves the shared directory over virtio-fs.
//!
//! [`Virtiofsd::start`] runs the Rust virtiofsd (crates.io's `virtiofsd`, which
//! `scripts/setup.sh` installs into `$KATA_RS_CACHE/bin`) on `<sandbox>/shared`, listening on
//! the vhost-user socket `<sandbox>/virtiofsd.sock` that QEMU's `vhost-user-fs-pci` connects
//! to. It always runs sandboxed: `--sandbox=namespace` (its own mount, PID and network
//! namespaces, the shared directory as its root), `--seccomp=kill` and without the
//! capabilities to make device nodes or set file capabilities (`--modcaps=-mknod:-setfcap`);
//! `virtio_fs_extra_args` may tune it but never turn any of that off ([`VirtiofsdConfig::from_hypervisor`] refuses such
//! arguments, naming the key). Its output goes to `<sandbox>/virtiofsd.log`, which errors
//! quote.
//!
//! The daemon is supervised through a pidfd without a tokio runtime (the resources API is
//! synchronous): [`Virtiofsd::exit`] yields a [`DaemonExit`] that resolves when it dies, which
//! kata-sandbox's liveness monitor turns into a sandbox error. [`Virtiofsd::state`],
//! [`Virtiofsd::detach`] and [`Virtiofsd::adopt`] hand it over to a restarted runtime (pid
//! plus an identity check of its command line); [`Virtiofsd::release`] (or drop) kills it with
//! its sandboxed child and removes the socket and the log; [`remove_stale`] does the same for a
//! crashed owner, from the command line alone.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kata_hypervisor::config::VirtioFsCache;
use kata_hypervisor::process::{cmdline, describe, is_gone, Pidfd};
use kata_hypervisor::HypervisorConfig;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Error, Result};

/// The vhost-user socket's name inside the sandbox directory.
pub const SOCKET_NAME: &str = "virtiofsd.sock";

/// The daemon's log file inside the sandbox directory.
pub const LOG_NAME: &str = "virtiofsd.log";

/// The pid (lock) file virtiofsd writes next to its socket.
const PID_FILE_NAME: &str = "virtiofsd.sock.pid";

/// The line virtiofsd logs once its sandbox is set up and it waits for the VMM.
const READY_LINE: &str = "Waiting for vhost-user socket connection";

/// How long the daemon may take to get ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a killed daemon may take to be gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Log lines quoted in errors.
const LOG_LINES: usize = 10;

/// The longest path a unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why virtiofsd could not be configured, started or adopted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VirtiofsdError {
    /// A `virtio_fs_*` setting this virtiofsd cannot honour.
    #[error("{key} = {value} is refused: {reason}")]
    Setting {
        /// The configuration key.
        key: &'static str,
        /// The refused value, as the configuration spells it.
        value: String,
        /// Why, and what to use instead.
        reason: String,
    },

    /// The daemon binary is not there.
    #[error(
        "virtiofsd {} (virtio_fs_daemon) is not an executable file: run scripts/setup.sh, which \
         installs the Rust virtiofsd into $KATA_RS_CACHE/bin, or set virtio_fs_daemon",
        path.display()
    )]
    DaemonMissing {
        /// The daemon's path.
        path: PathBuf,
    },

    /// The vhost-user socket path does not fit a unix socket address.
    #[error(
        "the virtiofsd socket {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter sandbox \
         directory",
        path.display()
    )]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
    },

    /// The daemon could not be executed.
    #[error("cannot run virtiofsd {} (virtio_fs_daemon): {source}", path.display())]
    Spawn {
        /// The daemon's path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// The daemon exited before it was ready.
    #[error(
        "virtiofsd {} (virtio_fs_daemon) exited while starting ({how}); its log {}:\n{tail}",
        path.display(), log.display()
    )]
    DiedAtStart {
        /// The daemon's path.
        path: PathBuf,
        /// How it exited.
        how: String,
        /// Its log file (removed with the sandbox's virtiofsd).
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },

    /// The daemon ran but never got ready.
    #[error(
        "virtiofsd {} (virtio_fs_daemon) did not get ready within {after:?} (socket {}): \
         killed; its log:\n{tail}",
        path.display(), socket.display()
    )]
    NotReady {
        /// The daemon's path.
        path: PathBuf,
        /// The socket it should have listened on.
        socket: PathBuf,
        /// How long it was given.
        after: Duration,
        /// The log's last lines.
        tail: String,
    },
}

impl From<VirtiofsdError> for Error {
    fn from(e: VirtiofsdError) -> Self {
        Error::Virtiofsd(Box::new(e))
    }
}

/// How virtiofsd is run: Kata's `virtio_fs_daemon`, `virtio_fs_cache` and
/// `virtio_fs_extra_args`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtiofsdConfig {
    /// The daemon (`virtio_fs_daemon`; empty there: [`default_daemon`]).
    pub daemon: PathBuf,
    /// The cache mode (`virtio_fs_cache`).
    pub cache: VirtioFsCache,
    /// Extra arguments (`virtio_fs_extra_args`), checked by [`check_extra_args`].
    pub extra_args: Vec<String>,
}

impl Default for VirtiofsdConfig {
    /// The daemon from the cache, `--cache=never`, no extra arguments.
    fn default() -> Self {
        VirtiofsdConfig {
            daemon: default_daemon(),
            cache: VirtioFsCache::Never,
            extra_args: Vec::new(),
        }
    }
}

/// The virtiofsd `scripts/setup.sh` installs: `$KATA_RS_CACHE/bin/virtiofsd`.
pub fn default_daemon() -> PathBuf {
    kata_hypervisor::config::cache_dir()
        .join("bin")
        .join("virtiofsd")
}

impl VirtiofsdConfig {
    /// The daemon's settings from a `[hypervisor.*]` section. Refuses, naming the key, what
    /// this virtiofsd and QEMU cannot honour: a DAX window (`virtio_fs_cache_size`: neither
    /// QEMU 7.2's `vhost-user-fs-pci` nor the Rust virtiofsd has one) and extra arguments that
    /// would undo the daemon's sandbox or seccomp filter or that kata-rs sets itself.
    pub fn from_hypervisor(hv: &HypervisorConfig) -> Result<Self, VirtiofsdError> {
        if hv.virtio_fs_cache_size != 0 || hv.virtio_fs_is_dax {
            return Err(VirtiofsdError::Setting {
                key: "virtio_fs_cache_size",
                value: hv.virtio_fs_cache_size.to_string(),
                reason: "a DAX window is not supported: QEMU 7.2's vhost-user-fs-pci has no \
                         cache-size and the Rust virtiofsd serves no DAX mappings; set \
                         virtio_fs_cache_size = 0 and virtio_fs_is_dax = false"
                    .into(),
            });
        }
        let daemon = if hv.virtio_fs_daemon.is_empty() {
            default_daemon()
        } else {
            PathBuf::from(&hv.virtio_fs_daemon)
        };
        let config = VirtiofsdConfig {
            daemon,
            cache: hv.virtio_fs_cache,
            extra_args: hv.virtio_fs_extra_args.clone(),
        };
        config.check()?;
        Ok(config)
    }

    /// Checks the cache mode and the extra arguments.
    pub fn check(&self) -> Result<(), VirtiofsdError> {
        cache_arg(self.cache)?;
        check_extra_args(&self.extra_args)
    }

    /// The daemon's arguments for `socket` and `shared_dir`: kata-rs' own (socket, shared
    /// directory, sandbox, seccomp, cache) first, then the extra ones.
    pub fn args(&self, socket: &Path, shared_dir: &Path) -> Result<Vec<OsString>, VirtiofsdError> {
        self.check()?;
        let mut args: Vec<OsString> = vec![
            join("--socket-path=", socket),
            join("--shared-dir=", shared_dir),
            "--sandbox=namespace".into(),
            "--seccomp=kill".into(),
            // As QEMU's 9p is confined: the guest leaves no device node and no file capability
            // in the host's share (xattrs are off as well).
            DROPPED_CAPS.into(),
            format!("--cache={}", cache_arg(self.cache)?).into(),
        ];
        args.extend(self.extra_args.iter().map(OsString::from));
        Ok(args)
    }
}

fn join(flag: &str, path: &Path) -> OsString {
    let mut s = OsString::from(flag);
    s.push(path.as_os_str());
    s
}

/// Kata's `virtio_fs_cache` values as this virtiofsd's `--cache`: `never`, `metadata`,
/// `auto`, `always` map one to one; the deprecated `none` is `never` (as Kata reads it).
pub fn cache_arg(cache: VirtioFsCache) -> Result<&'static str, VirtiofsdError> {
    Ok(match cache {
        VirtioFsCache::Never | VirtioFsCache::None => "never",
        VirtioFsCache::Metadata => "metadata",
        VirtioFsCache::Auto => "auto",
        VirtioFsCache::Always => "always",
        #[allow(unreachable_patterns)]
        other => {
            return Err(VirtiofsdError::Setting {
                key: "virtio_fs_cache",
                value: format!("\"{other}\""),
                reason: "allowed: never, metadata, auto, always".into(),
            })
        }
    })
}

/// The capabilities the served daemon gives up (of its default set): creating device nodes
/// and setting file capabilities.
const DROPPED_CAPS: &str = "--modcaps=-mknod:-setfcap";

/// Options virtiofsd takes that need a value (`--name=value` or `--name value`).
const WITH_VALUE: &[&str] = &[
    "thread-pool-size",
    "xattrmap",
    "inode-file-handles",
    "log-level",
    "rlimit-nofile",
];

/// Options whose value is optional (`--name` or `--name=value`, never `--name value`).
const OPTIONAL_VALUE: &[&str] = &["posix-acl", "security-label"];

/// Flags without a value.
const FLAGS: &[&str] = &[
    "xattr",
    "readonly",
    "announce-submounts",
    "no-announce-submounts",
    "allow-mmap",
    "no-readdirplus",
    "writeback",
    "allow-direct-io",
    "killpriv-v2",
    "no-killpriv-v2",
    "preserve-noatime",
];

/// Why an option virtiofsd knows is not accepted from `virtio_fs_extra_args`.
fn refused_option(name: &str) -> Option<&'static str> {
    Some(match name {
        "sandbox" => "it would change or turn off the daemon's namespace sandbox",
        "seccomp" => "it would weaken or turn off the daemon's seccomp filter",
        "modcaps" => "it would give the sandboxed daemon capabilities kata-rs drops",
        "socket-path" | "socket" | "fd" | "socket-group" | "shared-dir" | "tag" => {
            "kata-rs sets the socket and the shared directory itself"
        }
        "cache" => "the cache mode is set with virtio_fs_cache",
        "syslog" => "kata-rs reads the daemon's log from <sandbox>/virtiofsd.log",
        "print-capabilities" | "help" | "version" => "it makes the daemon exit at once",
        "migration-mode"
        | "migration-on-error"
        | "migration-verify-handles"
        | "migration-confirm-paths" => "kata-rs does not migrate VMs",
        _ => return None,
    })
}

/// Checks `virtio_fs_extra_args`: only options that tune the daemon (thread pool, xattrs,
/// ACLs, submounts, caching details, logging at `info` or above) are accepted; whatever
/// would undo its sandbox or seccomp filter, or replace what kata-rs sets, is refused with
/// the reason, naming the key.
pub fn check_extra_args(args: &[String]) -> Result<(), VirtiofsdError> {
    let refuse = |arg: &str, reason: String| VirtiofsdError::Setting {
        key: "virtio_fs_extra_args",
        value: format!("{args:?}"),
        reason: format!("{arg:?}: {reason}"),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let Some(long) = arg.strip_prefix("--") else {
            return Err(refuse(
                arg,
                if arg.starts_with("-o") || arg == "-d" || arg == "-f" {
                    "the legacy short options can turn the sandbox off; use the long options".into()
                } else {
                    "not an option (each entry is one --option or --option=value)".into()
                },
            ));
        };
        let (name, value) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (long, None),
        };
        if let Some(reason) = refused_option(name) {
            return Err(refuse(arg, reason.into()));
        }
        let value = if WITH_VALUE.contains(&name) {
            match value {
                Some(v) => v.to_owned(),
                None => {
                    i += 1;
                    match args.get(i) {
                        Some(v) if !v.starts_with("--") => v.clone(),
                        _ => return Err(refuse(arg, "needs a value".into())),
                    }
                }
            }
        } else if OPTIONAL_VALUE.contains(&name) {
            value.unwrap_or_default().to_owned()
        } else if FLAGS.contains(&name) {
            if value.is_some() {
                return Err(refuse(arg, "takes no value".into()));
            }
            String::new()
        } else {
            let mut known: Vec<&str> = WITH_VALUE
                .iter()
                .chain(OPTIONAL_VALUE)
                .chain(FLAGS)
                .copied()
                .collect();
            known.sort_unstable();
            return Err(refuse(
                arg,
                format!(
                    "not an option kata-rs passes to virtiofsd (allowed: --{})",
                    known.join(", --")
                ),
            ));
        };
        match name {
            "thread-pool-size" | "rlimit-nofile" if value.parse::<u64>().is_err() => {
                return Err(refuse(arg, "needs a number".into()));
            }
            // The readiness line is logged at `info`.
            "log-level" if !matches!(value.as_str(), "info" | "debug" | "trace") => {
                return Err(refuse(
                    arg,
                    "info, debug or trace: kata-rs waits for the daemon's info line".into(),
                ));
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// What persist records of a sandbox's virtiofsd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtiofsdState {
    /// The daemon's process (the one kata-rs started; its sandboxed child is found from it).
    pub pid: u32,
    /// The daemon binary, `argv[0]` of its command line.
    pub daemon: PathBuf,
    /// The vhost-user socket, `<sandbox>/virtiofsd.sock`.
    pub socket: PathBuf,
}

/// Resolves when the daemon exits: how it ended, with its log's last lines.
///
/// It follows the sandbox's daemon across [restarts](Virtiofsd::restart): a deliberate stop
/// (restart, release) is not an exit; the death of whichever daemon runs is.
#[derive(Debug, Clone)]
pub struct DaemonExit {
    rx: watch::Receiver<Option<(u32, String)>>,
    log: PathBuf,
}

impl DaemonExit {
    /// How the daemon exited, if it has.
    pub fn exited(&self) -> Option<String> {
        self.rx
            .borrow()
            .clone()
            .map(|(pid, how)| self.describe(pid, &how))
    }

    /// Waits until the daemon exits; returns a sentence for the sandbox's error.
    pub async fn wait(mut self) -> String {
        loop {
            if let Some((pid, how)) = self.rx.borrow().clone() {
                return self.describe(pid, &how);
            }
            if self.rx.changed().await.is_err() {
                // The supervisor is gone without a word: the owner released it.
                return std::future::pending().await;
            }
        }
    }

    fn describe(&self, pid: u32, how: &str) -> String {
        format!(
            "virtiofsd (pid {pid}), which serves the shared filesystem, exited ({how}); its log {}:\n{}",
            self.log.display(),
            log_tail(&self.log)
        )
    }
}

/// A running virtiofsd, killed (with its sandboxed child) when released or dropped, unless
/// detached. It can be [restarted](Self::restart) on the same socket (a second VMM boot).
#[derive(Debug)]
pub struct Virtiofsd {
    inner: Arc<Inner>,
}

/// What stays the same across restarts.
#[derive(Debug)]
struct Inner {
    daemon: PathBuf,
    shared_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// The settings it was started with (`None`: adopted, cannot be restarted).
    config: Option<VirtiofsdConfig>,
    /// The exit of the running daemon, for every [`DaemonExit`].
    exit: watch::Sender<Option<(u32, String)>>,
    proc: Mutex<Proc>,
}

/// The running process.
#[derive(Debug)]
struct Proc {
    pid: u32,
    /// `None` in the placeholder before a process runs.
    pidfd: Option<Arc<Pidfd>>,
    /// Set before a deliberate kill, so its waiter does not report an exit.
    stopping: Arc<AtomicBool>,
    /// Set by [`Virtiofsd::detach`] and once released: nothing is done on drop, no restart.
    done: bool,
}

/// Hands a [`Virtiofsd`]'s restart to whoever boots the VMM again (a backend's reboot hook):
/// it does not keep the daemon alive, and restarting a released one is refused.
#[derive(Clone, Debug)]
pub struct VirtiofsdRestarter {
    inner: Weak<Inner>,
    socket: PathBuf,
}

impl VirtiofsdRestarter {
    /// [`Virtiofsd::restart`]s the daemon, if it has not been released.
    pub fn restart(&self) -> Result<()> {
        match self.inner.upgrade() {
            Some(inner) => inner.restart(),
            None => Err(Error::Io {
                action: "restart virtiofsd (it was released with its sandbox) on",
                path: self.socket.clone(),
                source: io::Error::from(io::ErrorKind::NotFound),
            }),
        }
    }
}

impl Virtiofsd {
    /// Starts virtiofsd on `shared_dir`, its socket and log in `sandbox_dir`, and waits until
    /// it is ready (its sandbox set up, listening). On error nothing is left: no process,
    /// socket or log.
    pub fn start(sandbox_dir: &Path, shared_dir: &Path, config: &VirtiofsdConfig) -> Result<Self> {
        let socket = sandbox_dir.join(SOCKET_NAME);
        let log = sandbox_dir.join(LOG_NAME);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VirtiofsdError::SocketPathTooLong { path: socket }.into());
        }
        let inner = Arc::new(Inner {
            daemon: config.daemon.clone(),
            shared_dir: shared_dir.to_owned(),
            socket,
            log,
            config: Some(config.clone()),
            exit: watch::channel(None).0,
            // Replaced below once the process runs.
            proc: Mutex::new(Proc::none()),
        });
        let proc = inner.spawn(config, false)?;
        *inner.proc.lock().unwrap() = proc;
        Ok(Virtiofsd { inner })
    }

    /// Takes over the daemon a [detached](Self::detach) owner left, as `state` records it,
    /// after checking it is that daemon: its socket is `<sandbox_dir>/virtiofsd.sock`, and the
    /// process `state.pid` (pinned with a pidfd first) runs `state.daemon` on that socket and
    /// `shared_dir`. A recycled pid or a dead daemon is [`Error::NotAdoptable`]; nothing is
    /// changed then. An adopted daemon cannot be [restarted](Self::restart) (its settings are
    /// not recorded): a restarted runtime takes over a VM that has booted.
    pub fn adopt(sandbox_dir: &Path, shared_dir: &Path, state: &VirtiofsdState) -> Result<Self> {
        let not_adoptable = |reason: String| Error::NotAdoptable {
            path: state.socket.clone(),
            reason,
        };
        let socket = sandbox_dir.join(SOCKET_NAME);
        if state.socket != socket {
            return Err(not_adoptable(format!(
                "the state records the virtiofsd socket where kata-rs does not put it (expected {})",
                socket.display()
            )));
        }
        let pidfd = Pidfd::open(state.pid).map_err(|e| {
            not_adoptable(format!("virtiofsd pid {} cannot be pinned: {e}", state.pid))
        })?;
        if is_gone(state.pid) {
            return Err(not_adoptable(format!(
                "virtiofsd pid {} has exited",
                state.pid
            )));
        }
        let line = cmdline(state.pid).unwrap_or_default();
        if !is_our_daemon(&line, Some(&state.daemon), &socket, shared_dir) {
            return Err(not_adoptable(format!(
                "pid {} is not this sandbox's virtiofsd (the pid was reused?): {}",
                state.pid,
                line.chars().take(200).collect::<String>()
            )));
        }
        let inner = Arc::new(Inner {
            daemon: state.daemon.clone(),
            shared_dir: shared_dir.to_owned(),
            socket: socket.clone(),
            log: sandbox_dir.join(LOG_NAME),
            config: None,
            exit: watch::channel(None).0,
            proc: Mutex::new(Proc::none()),
        });
        let pidfd = Arc::new(pidfd);
        let stopping = Arc::new(AtomicBool::new(false));
        let waited = Arc::clone(&pidfd);
        let (weak, flag, pid) = (Arc::downgrade(&inner), Arc::clone(&stopping), state.pid);
        std::thread::Builder::new()
            .name(format!("virtiofsd-{pid}"))
            .spawn(move || {
                while !waited.wait_gone(Duration::from_secs(3600)) {}
                tracing::debug!(pid, "adopted virtiofsd exited");
                report_exit(&weak, &flag, pid, "exited".into());
            })
            .map_err(|e| {
                not_adoptable(format!("cannot start the thread that waits for it: {e}"))
            })?;
        *inner.proc.lock().unwrap() = Proc {
            pid,
            pidfd: Some(pidfd),
            stopping,
            done: false,
        };
        tracing::debug!(pid, socket = %socket.display(), "virtiofsd adopted");
        Ok(Virtiofsd { inner })
    }

    /// The daemon's process id (the one kata-rs started): for the sandbox's host cgroup.
    pub fn pid(&self) -> u32 {
        self.inner.proc.lock().unwrap().pid
    }

    /// The daemon's processes: the one kata-rs started and its sandboxed child.
    pub fn pids(&self) -> Vec<u32> {
        let pid = self.pid();
        let mut pids = vec![pid];
        pids.extend(descendants(pid));
        pids
    }

    /// The vhost-user socket, for the VMM.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The daemon's log file.
    pub fn log(&self) -> &Path {
        &self.inner.log
    }

    /// Resolves when the daemon exits (whichever runs: it follows restarts).
    pub fn exit(&self) -> DaemonExit {
        DaemonExit {
            rx: self.inner.exit.subscribe(),
            log: self.inner.log.clone(),
        }
    }

    /// What persist records of it.
    pub fn state(&self) -> VirtiofsdState {
        VirtiofsdState {
            pid: self.pid(),
            daemon: self.inner.daemon.clone(),
            socket: self.inner.socket.clone(),
        }
    }

    /// Stops the daemon and starts a fresh one with the same settings on the same socket and
    /// shared directory, and waits until it is ready: what a second boot of the VMM needs,
    /// since virtiofsd serves one VMM connection and exits when it ends. Neither the stop nor
    /// the old daemon's own exit when its VMM went away is reported by [`DaemonExit`] once the
    /// new daemon runs (a restart belongs before the sandbox's liveness is watched: a
    /// [`DaemonExit::wait`] that already resolved stays resolved); the new daemon's death is.
    /// The log is kept (appended to).
    ///
    /// Fails for an [adopted](Self::adopt), detached or released daemon, and when the new
    /// one does not start (its error names virtiofsd and quotes its log); no daemon runs then.
    pub fn restart(&self) -> Result<()> {
        self.inner.restart()
    }

    /// A handle that restarts this daemon from elsewhere (a reboot hook), without keeping it
    /// alive.
    pub fn restarter(&self) -> VirtiofsdRestarter {
        VirtiofsdRestarter {
            inner: Arc::downgrade(&self.inner),
            socket: self.inner.socket.clone(),
        }
    }

    /// Gives up ownership: the daemon runs on with its socket and log, for
    /// [`adopt`](Self::adopt).
    pub fn detach(self) {
        let mut proc = self.inner.proc.lock().unwrap();
        proc.done = true;
        tracing::debug!(pid = proc.pid, "virtiofsd detached");
    }

    /// Kills the daemon (and its sandboxed child), waits until they are gone, and removes the
    /// socket and the log.
    pub fn release(self) -> Result<()> {
        self.inner.stop(true);
        Ok(())
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.inner.stop(true);
    }
}

impl Proc {
    /// A placeholder before the process runs: already done.
    fn none() -> Self {
        Proc {
            pid: 0,
            pidfd: None,
            stopping: Arc::new(AtomicBool::new(true)),
            done: true,
        }
    }

    /// Kills the process and its sandboxed child (its waiter reports nothing) and waits until
    /// they are gone.
    fn kill(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let Some(pidfd) = &self.pidfd else {
            return;
        };
        // Children are looked up only while the daemon lives: once it has exited (its VMM went
        // away before a restart) its pid may be reaped and reused by an unrelated process.
        let family: Vec<Pidfd> = if pidfd.wait_gone(Duration::ZERO) {
            Vec::new()
        } else {
            descendants(self.pid)
                .into_iter()
                .filter_map(|pid| Pidfd::open(pid).ok())
                .collect()
        };
        let _ = pidfd.send_signal(Signal::SIGKILL);
        for child in &family {
            let _ = child.send_signal(Signal::SIGKILL);
        }
        if !pidfd.wait_gone(STOP_TIMEOUT) {
            tracing::warn!(pid = self.pid, "virtiofsd still there after SIGKILL");
        }
        for child in &family {
            child.wait_gone(STOP_TIMEOUT);
        }
    }
}

/// Sends a daemon's exit to the [`DaemonExit`]s, unless it was stopped on purpose or its owner
/// is gone. Under the process lock, so a restart or a release either sees the exit reported
/// before it or has marked the process as stopped on purpose.
fn report_exit(inner: &Weak<Inner>, stopping: &AtomicBool, pid: u32, how: String) {
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let _proc = inner.proc.lock().unwrap_or_else(|e| e.into_inner());
    if !stopping.load(Ordering::SeqCst) {
        inner.exit.send_replace(Some((pid, how)));
    }
}

impl Inner {
    /// Runs the daemon with `config` and waits until it is ready. The log is truncated, or
    /// appended to (`append`, a restart). On error nothing is left but the log when appended.
    fn spawn(self: &Arc<Self>, config: &VirtiofsdConfig, append: bool) -> Result<Proc> {
        let args = config.args(&self.socket, &self.shared_dir)?;
        let executable = fs::metadata(&config.daemon)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !executable {
            return Err(VirtiofsdError::DaemonMissing {
                path: config.daemon.clone(),
            }
            .into());
        }
        if fs::symlink_metadata(&self.socket).is_ok() {
            return Err(Error::Io {
                action: "create the virtiofsd socket (it exists: another daemon serves this sandbox, or a crashed one left it)",
                path: self.socket.clone(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        let log = &self.log;
        let log_file = fs::OpenOptions::new()
            .create(true)
            .truncate(!append)
            .append(append)
            .write(true)
            .mode(0o600)
            .open(log)
            .map_err(|source| Error::Io {
                action: "create",
                path: log.clone(),
                source,
            })?;
        // Readiness is read from what this daemon logs, after the earlier ones' lines.
        let log_from = log_file.metadata().map(|m| m.len()).unwrap_or(0);
        let forget_log = || {
            if !append {
                remove_file(log);
            }
        };
        let stderr = log_file.try_clone().map_err(|source| Error::Io {
            action: "duplicate the descriptor of",
            path: log.clone(),
            source,
        });
        let spawned = stderr.and_then(|stderr| {
            Command::new(&config.daemon)
                .args(&args)
                // virtiofsd's RUST_LOG overrides --log-level: a caller's RUST_LOG=warn would
                // hide the info line its readiness is read from.
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(stderr)
                .spawn()
                .map_err(|source| {
                    VirtiofsdError::Spawn {
                        path: config.daemon.clone(),
                        source,
                    }
                    .into()
                })
        });
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                forget_log();
                return Err(e);
            }
        };
        let pid = child.id();
        // Our child, not reaped before the waiter below does it: the pid is still its own.
        let pidfd = match Pidfd::open(pid) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                forget_log();
                return Err(Error::Io {
                    action: "pin the virtiofsd process (pidfd_open) of",
                    path: config.daemon.clone(),
                    source: e,
                });
            }
        };
        let stopping = Arc::new(AtomicBool::new(false));
        // The waiter's own view of this process's exit, for the readiness wait.
        let (tx, this_exit) = watch::channel(None::<String>);
        let (weak, flag) = (Arc::downgrade(self), Arc::clone(&stopping));
        let spawned = std::thread::Builder::new()
            .name(format!("virtiofsd-{pid}"))
            .spawn(move || {
                let how = match child.wait() {
                    Ok(status) => describe(status),
                    Err(e) => format!("wait failed: {e}"),
                };
                tracing::debug!(pid, %how, "virtiofsd exited");
                let _ = tx.send(Some(how.clone()));
                report_exit(&weak, &flag, pid, how);
            });
        let proc = Proc {
            pid,
            pidfd: Some(pidfd),
            stopping,
            done: false,
        };
        let failed = |proc: Proc, e: Error| {
            proc.kill();
            remove_runtime_files(&self.socket);
            forget_log();
            Err(e)
        };
        if let Err(e) = spawned {
            // Without its waiter the child would stay a zombie: kill and leave it to init.
            let e = Error::Io {
                action: "start the thread that waits for virtiofsd",
                path: config.daemon.clone(),
                source: e,
            };
            return failed(proc, e);
        }
        match self.wait_ready(&this_exit, log_from) {
            Ok(()) => {
                tracing::debug!(pid, socket = %self.socket.display(), "virtiofsd ready");
                Ok(proc)
            }
            Err(e) => failed(proc, e),
        }
    }

    /// Waits until the daemon logs (after `log_from`) that it waits for the VMM, with its
    /// socket there.
    fn wait_ready(&self, exit: &watch::Receiver<Option<String>>, log_from: u64) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if let Some(how) = exit.borrow().clone() {
                return Err(VirtiofsdError::DiedAtStart {
                    path: self.daemon.clone(),
                    how,
                    log: self.log.clone(),
                    tail: log_tail(&self.log),
                }
                .into());
            }
            let listening =
                fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket());
            if listening && read_log_from(&self.log, log_from).contains(READY_LINE) {
                return Ok(());
            }
            if t0.elapsed() >= START_TIMEOUT {
                return Err(VirtiofsdError::NotReady {
                    path: self.daemon.clone(),
                    socket: self.socket.clone(),
                    after: START_TIMEOUT,
                    tail: log_tail(&self.log),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// See [`Virtiofsd::restart`].
    fn restart(self: &Arc<Self>) -> Result<()> {
        let mut proc = self.proc.lock().unwrap();
        let refused = |why: &'static str| Error::Io {
            action: why,
            path: self.socket.clone(),
            source: io::Error::from(io::ErrorKind::Unsupported),
        };
        if proc.done {
            return Err(refused(
                "restart virtiofsd (it was released or handed to another owner) on",
            ));
        }
        let Some(config) = self.config.clone() else {
            return Err(refused(
                "restart an adopted virtiofsd (its settings are not recorded) on",
            ));
        };
        let old = proc.pid;
        proc.kill();
        remove_runtime_files(&self.socket);
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| {
                io::Write::write_all(
                    &mut f,
                    format!("--- kata-rs: virtiofsd (pid {old}) restarted for a new VMM ---\n")
                        .as_bytes(),
                )
            });
        match self.spawn(&config, true) {
            Ok(new) => {
                tracing::info!(old, new = new.pid, socket = %self.socket.display(), "virtiofsd restarted for a second boot of the VMM");
                *proc = new;
                // The old daemon's own exit (its VMM went away) belongs to the old VMM: the
                // sandbox lives on with the new one.
                self.exit.send_replace(None);
                Ok(())
            }
            Err(e) => {
                // No daemon runs: the sandbox cannot use its share, and says so.
                *proc = Proc::none();
                proc.done = false;
                self.exit.send_replace(Some((
                    old,
                    "killed for a restart, and the new one did not start".into(),
                )));
                Err(e)
            }
        }
    }

    /// Kills the daemon unless done (detached, released); with `files`, removes its socket,
    /// pid file and log.
    fn stop(&self, files: bool) {
        let mut proc = self.proc.lock().unwrap();
        if std::mem::replace(&mut proc.done, true) {
            return;
        }
        proc.kill();
        if files {
            remove_runtime_files(&self.socket);
            remove_file(&self.log);
        }
        tracing::debug!(pid = proc.pid, "virtiofsd stopped");
    }
}

/// Kills what a crashed owner left of the virtiofsd of `sandbox_dir` (found by its command
/// line: the socket `<sandbox_dir>/virtiofsd.sock` and the shared directory `shared_dir`),
/// and removes its socket and log. Returns the pids killed.
pub fn remove_stale(sandbox_dir: &Path, shared_dir: &Path) -> Vec<u32> {
    let socket = sandbox_dir.join(SOCKET_NAME);
    let me = std::process::id();
    let pids: Vec<u32> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != me)
                .collect()
        })
        .unwrap_or_default();
    let mut pinned = Vec::new();
    for pid in pids {
        let Ok(fd) = Pidfd::open(pid) else { continue };
        // Checked after pinning, so the process killed is the one checked.
        if is_gone(pid)
            || !cmdline(pid).is_some_and(|l| is_our_daemon(&l, None, &socket, shared_dir))
        {
            continue;
        }
        if fd.send_signal(Signal::SIGKILL).is_ok() {
            pinned.push((pid, fd));
        }
    }
    for (_, fd) in &pinned {
        fd.wait_gone(STOP_TIMEOUT);
    }
    remove_files(sandbox_dir);
    let killed: Vec<u32> = pinned.into_iter().map(|(pid, _)| pid).collect();
    if !killed.is_empty() {
        tracing::info!(?killed, sandbox_dir = %sandbox_dir.display(), "killed a virtiofsd left by a crashed owner");
    }
    killed
}

/// Makes `dir` (absolute, canonical) a shared mount of its own, `nosuid,nodev`: a bind of
/// itself unless it is a mount point already. virtiofsd's namespace sandbox makes its copy of
/// the host's mounts a slave, so mounts made under `dir` later (container rootfs) reach it
/// only from a shared mount; where `/` is private (containers, CI) it would serve empty
/// rootfs directories otherwise. The self-bind goes with the directory.
pub(crate) fn make_shared_mount(dir: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let at = |action: &'static str, e: nix::errno::Errno| Error::Io {
        action,
        path: dir.to_owned(),
        source: io::Error::from(e),
    };
    let is_mount = crate::mount::is_mount_point(dir).map_err(|source| Error::Io {
        action: "read /proc/self/mountinfo for",
        path: dir.to_owned(),
        source,
    })?;
    if !is_mount {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| at("bind-mount onto itself", e))?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| at("remount nosuid,nodev", e))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|e| at("make a shared mount of", e))
}

/// Whether a command line (arguments joined by spaces) is the virtiofsd kata-rs starts on
/// `socket` and `shared_dir` (run from `daemon`, when known).
fn is_our_daemon(line: &str, daemon: Option<&Path>, socket: &Path, shared_dir: &Path) -> bool {
    let mut words = line.split(' ');
    let argv0_ok = match daemon {
        Some(d) => words.next() == Some(&*d.to_string_lossy()),
        None => true,
    };
    let socket_arg = format!("--socket-path={}", socket.display());
    let shared_arg = format!("--shared-dir={}", shared_dir.display());
    let words: Vec<&str> = line.split(' ').collect();
    argv0_ok && words.contains(&socket_arg.as_str()) && words.contains(&shared_arg.as_str())
}

/// The descendants of `pid` (children first), from `/proc/<pid>/task/*/children`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if !found.contains(&child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

/// Removes the daemon's files from the sandbox directory: socket, pid file, log.
fn remove_files(sandbox_dir: &Path) {
    for name in [SOCKET_NAME, PID_FILE_NAME, LOG_NAME] {
        remove_file(&sandbox_dir.join(name));
    }
}

/// Removes what a daemon leaves next to its log: its socket and pid file.
fn remove_runtime_files(socket: &Path) {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    for name in [SOCKET_NAME, PID_FILE_NAME] {
        remove_file(&dir.join(name));
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove: {e}");
        }
    }
}

/// The log's text (its last 64 KiB at most).
fn read_log(log: &Path) -> String {
    read_log_from(log, 0)
}

/// The log's text from byte `from` on (its last 64 KiB at most).
fn read_log_from(log: &Path, from: u64) -> String {
    let Ok(mut f) = fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024).max(from)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The log's last lines, indented, for an error.
fn log_tail(log: &Path) -> String {
    let text = read_log(log);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_LINES)..];
    if tail.is_empty() {
        return "  (empty)".into();
    }
    tail.iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_daemon_always_runs_sandboxed_with_the_cache_mode_mapped() {
        let config = VirtiofsdConfig {
            daemon: "/opt/virtiofsd".into(),
            cache: VirtioFsCache::Auto,
            extra_args: strings(&["--thread-pool-size=4", "--announce-submounts"]),
        };
        let args = config
            .args(
                Path::new("/run/sb/virtiofsd.sock"),
                Path::new("/run/sb/shared"),
            )
            .unwrap();
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--socket-path=/run/sb/virtiofsd.sock",
                "--shared-dir=/run/sb/shared",
                "--sandbox=namespace",
                "--seccomp=kill",
                "--modcaps=-mknod:-setfcap",
                "--cache=auto",
                "--thread-pool-size=4",
                "--announce-submounts"
            ]
        );
        for (kata, ours) in [
            (VirtioFsCache::Never, "never"),
            (VirtioFsCache::Metadata, "metadata"),
            (VirtioFsCache::Auto, "auto"),
            (VirtioFsCache::Always, "always"),
            (VirtioFsCache::None, "never"),
        ] {
            assert_eq!(cache_arg(kata).unwrap(), ours);
        }
    }

    #[test]
    fn extra_args_that_undo_the_sandbox_or_seccomp_are_refused_naming_the_key() {
        for bad in [
            &["--sandbox=none"][..],
            &["--sandbox", "chroot"],
            &["--seccomp=none"],
            &["--modcaps=+sys_admin"],
            &["-o", "sandbox=none"],
            &["-osandbox=none"],
            &["--socket-path=/tmp/x"],
            &["--shared-dir=/"],
            &["--fd=3"],
            &["--cache=always"],
            &["--syslog"],
            &["--log-level=error"],
            &["--thread-pool-size=many"],
            &["--thread-pool-size"],
            &["--frobnicate"],
            &["--xattr=yes"],
        ] {
            let e = check_extra_args(&strings(bad)).unwrap_err().to_string();
            assert!(e.starts_with("virtio_fs_extra_args = "), "{bad:?}: {e}");
        }
        let e = check_extra_args(&strings(&["--sandbox=none"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sandbox"), "{e}");
        let e = check_extra_args(&strings(&["--seccomp=log"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("seccomp filter"), "{e}");
        // Kata's own defaults and the usual tuning pass.
        check_extra_args(&strings(&[
            "--thread-pool-size=1",
            "--announce-submounts",
            "--xattr",
            "--posix-acl",
            "--log-level",
            "debug",
            "--inode-file-handles=never",
            "--allow-mmap",
        ]))
        .unwrap();
    }

    #[test]
    fn the_settings_come_from_the_hypervisor_section_and_dax_is_refused() {
        let hv = HypervisorConfig {
            virtio_fs_daemon: "/opt/kata/libexec/virtiofsd".into(),
            virtio_fs_cache: VirtioFsCache::Metadata,
            virtio_fs_extra_args: strings(&["--thread-pool-size=1"]),
            ..HypervisorConfig::default()
        };
        let c = VirtiofsdConfig::from_hypervisor(&hv).unwrap();
        assert_eq!(c.daemon, Path::new("/opt/kata/libexec/virtiofsd"));
        assert_eq!(c.cache, VirtioFsCache::Metadata);
        // An empty daemon path is the cache's.
        let c = VirtiofsdConfig::from_hypervisor(&HypervisorConfig::default()).unwrap();
        assert_eq!(c.daemon, default_daemon());
        assert!(c.daemon.ends_with("bin/virtiofsd"));

        let dax = HypervisorConfig {
            virtio_fs_cache_size: 1024,
            ..HypervisorConfig::default()
        };
        let e = VirtiofsdConfig::from_hypervisor(&dax)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("virtio_fs_cache_size = 1024") && e.contains("DAX"),
            "{e}"
        );
        let sandbox_off = HypervisorConfig {
            virtio_fs_extra_args: strings(&["--sandbox=none"]),
            ..HypervisorConfig::default()
        };
        assert!(VirtiofsdConfig::from_hypervisor(&sandbox_off).is_err());
    }

    #[test]
    fn only_our_daemon_is_recognised_by_its_command_line() {
        let socket = Path::new("/run/sb/virtiofsd.sock");
        let shared = Path::new("/run/sb/shared");
        let line = "/c/bin/virtiofsd --socket-path=/run/sb/virtiofsd.sock --shared-dir=/run/sb/shared --sandbox=namespace";
        assert!(is_our_daemon(
            line,
            Some(Path::new("/c/bin/virtiofsd")),
            socket,
            shared
        ));
        assert!(is_our_daemon(line, None, socket, shared));
        assert!(!is_our_daemon(
            line,
            Some(Path::new("/other/virtiofsd")),
            socket,
            shared
        ));
        // Another sandbox's daemon whose paths start the same.
        let other =
            "/c/bin/virtiofsd --socket-path=/run/sb/virtiofsd.sock2 --shared-dir=/run/sb/shared2";
        assert!(!is_our_daemon(other, None, socket, shared));
        // QEMU names the socket, never the shared directory as virtiofsd's option.
        let qemu =
            "qemu-system-x86_64 -chardev socket,id=char-kataShared,path=/run/sb/virtiofsd.sock";
        assert!(!is_our_daemon(qemu, None, socket, shared));
    }

    #[test]
    fn a_missing_daemon_is_named_with_its_key_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        let config = VirtiofsdConfig {
            daemon: tmp.path().join("no-such-virtiofsd"),
            ..VirtiofsdConfig::default()
        };
        let e = Virtiofsd::start(tmp.path(), &shared, &config)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("virtio_fs_daemon") && e.contains("setup.sh"),
            "{e}"
        );
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("shared")]);
    }
}
