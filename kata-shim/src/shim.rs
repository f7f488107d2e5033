//! [`KataShim`]: the shim v2 binary protocol on the `containerd-shim` crate.
//!
//! - `start` (run by containerd in the bundle directory): picks the sandbox the container
//!   belongs to (CRI annotations; a plain `ctr run` is its own sandbox), returns the address of
//!   that sandbox's shim if it already serves, else starts the server process and returns its
//!   socket once it listens. One shim process per sandbox.
//! - `delete` (after a shim died): cleans up the sandbox from its `state.json` — VMM and
//!   helpers killed, mounts and directories removed — and unmounts the bundle's rootfs.
//! - serving: the Task service ([`crate::TaskService`]) until containerd shuts it down. A
//!   server that starts while its sandbox still runs (a restarted shim) takes it over from
//!   `state.json` ([`crate::TaskService::reconnect`]).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio as ProcessStdio;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api::DeleteResponse, Config, ExitSignal, Flags, Shim, StartOpts};

use crate::bundle::{self, Placement};
use crate::process::timestamp;
use crate::service::TaskService;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.kata.v2";

/// Environment variable: the root of sandbox directories (default `/run/kata`).
pub const ROOT_DIR_ENV: &str = "KATA_RS_ROOT_DIR";

/// The shim's options for the `containerd-shim` crate: the shim installs its own `tracing`
/// logger, and reaps no children itself (the VMM and its helpers are waited on by their
/// supervisors; a blanket `waitpid(-1)` would take their exit statuses).
pub fn config() -> Config {
    Config {
        no_setup_logger: true,
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// The file mode creation mask the shim runs with: everything it creates (its socket and
/// `address` file, sandbox state, what the VMM and its helpers create as its children) is
/// its user's (root's) only.
pub const UMASK: u32 = 0o077;

/// Sets [`UMASK`] for the whole process; the binary's first call, before any thread or child
/// exists. Returns the previous mask.
pub fn set_private_umask() -> u32 {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK)).bits()
}

/// The root directory of sandbox directories: `$KATA_RS_ROOT_DIR`, else the name set's
/// (`/run/kata`, or `/run/kata-rs` under kata-rs' own names: [`crate::names`]).
pub fn root_dir() -> PathBuf {
    std::env::var_os(ROOT_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::names::NameSet::current().root_dir())
}

/// The shim: one per sandbox.
pub struct KataShim {
    id: String,
    namespace: String,
    address: String,
    exit: Arc<ExitSignal>,
}

/// Logs to containerd's `log` fifo in the bundle directory (serving mode) or to stderr
/// (`start`, `delete`: containerd shows it when they fail), in logfmt as containerd's own
/// lines ([`crate::logfmt`]): a server's lines carry `sandbox=<id>`, `start`'s and `delete`'s
/// `id=<container id>`, all `namespace` and `pid`.
fn init_logging(flags: &Flags) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let default = if flags.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("KATA_RS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let serving = flags.action.is_empty();
    let fixed = crate::logfmt::Logfmt::new()
        .field(if serving { "sandbox" } else { "id" }, &flags.id)
        .field("namespace", &flags.namespace)
        .field("pid", std::process::id());
    let fifo = serving
        .then(|| std::fs::OpenOptions::new().write(true).open("log").ok())
        .flatten();
    // The log's filter is the log layer's own: the trace export (`enable_tracing`, feature
    // `otel`) sees kata-rs's INFO spans whatever KATA_RS_LOG says.
    use tracing_subscriber::Layer as _;
    let registry = tracing_subscriber::registry().with(crate::telemetry::layer());
    let _ = match fifo {
        Some(f) => registry
            .with(crate::logfmt::layer(fixed, std::sync::Mutex::new(f)).with_filter(filter))
            .try_init(),
        None => registry
            .with(crate::logfmt::layer(fixed, std::io::stderr).with_filter(filter))
            .try_init(),
    };
}

fn other(msg: impl std::fmt::Display) -> containerd_shim::Error {
    containerd_shim::Error::Other(msg.to_string())
}

/// Whether a shim answers on `address` (`unix://` path).
fn socket_answers(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// The sandbox id of container `id` from the bundle in `dir` (its own id when the bundle
/// cannot be read).
fn sandbox_id_of(dir: &Path, id: &str) -> String {
    match bundle::load_spec(dir).map(|spec| Placement::of(&spec, id)) {
        Ok(Ok(placement)) => placement.sandbox_id(id).to_string(),
        _ => id.to_string(),
    }
}

impl KataShim {
    /// Starts the serving process for `address` and waits until it listens.
    fn spawn_server(opts: &StartOpts, address: &str) -> containerd_shim::Result<()> {
        let exe = std::env::current_exe().map_err(|e| other(format!("current_exe: {e}")))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "-namespace",
            &opts.namespace,
            "-id",
            &opts.id,
            "-address",
            &opts.address,
            "-socket",
            address,
        ]);
        if opts.debug {
            cmd.arg("-debug");
        }
        // Its stderr goes to an unlinked file (read only if it fails at start): a pipe would
        // break once `start` exits, and the server's stdout becomes its stderr once it serves.
        let stderr = start_stderr_file();
        cmd.stdin(ProcessStdio::null())
            .stdout(ProcessStdio::piped())
            .stderr(match &stderr {
                Some(f) => f
                    .try_clone()
                    .map(ProcessStdio::from)
                    .unwrap_or_else(|_| ProcessStdio::null()),
                None => ProcessStdio::null(),
            })
            // Its own process group: signals to containerd's group do not reach the sandbox.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| other(format!("spawning the shim: {e}")))?;
        wait_listening(child, stderr, address, SERVER_START_TIMEOUT)
    }
}

/// How long a shim server that closed its stdout may take to answer on its socket or exit.
const SERVER_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An unlinked file in the temporary directory for a server's stderr.
fn start_stderr_file() -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o600)
        .open(std::env::temp_dir())
        .ok()
}

/// Waits until the server `child` listens on `address`: it closes its stdout once it listens
/// (or exits on failure). A server that dies at start can close stdout before it is a zombie,
/// so the socket is checked too; if it does not answer, the child is waited (killed after
/// `timeout`) and the error has its status and what it wrote to `stderr`.
fn wait_listening(
    mut child: std::process::Child,
    stderr: Option<std::fs::File>,
    address: &str,
    timeout: std::time::Duration,
) -> containerd_shim::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut sink = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if socket_answers(address) {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => break status.to_string(),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let s = child.wait().map(|s| s.to_string()).unwrap_or_default();
                break format!("it did not answer on {address} within {timeout:?}: killed ({s})");
            }
            Err(e) => break format!("waiting for it: {e}"),
        }
    };
    let mut text = String::new();
    if let Some(mut f) = stderr {
        if f.seek(SeekFrom::Start(0)).is_ok() {
            let _ = f.take(16 * 1024).read_to_string(&mut text);
        }
    }
    let text = text.trim();
    Err(other(format!(
        "the shim server exited at start: {status}{}{text}",
        if text.is_empty() { "" } else { ": " }
    )))
}

#[async_trait]
impl Shim for KataShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        init_logging(args);
        crate::telemetry::set_sandbox_id(&args.id);
        KataShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let bundle = std::env::current_dir().map_err(|e| other(format!("bundle dir: {e}")))?;
        let grouping = sandbox_id_of(&bundle, &opts.id);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        if !(grouping != opts.id && socket_answers(&address)) {
            Self::spawn_server(&opts, &address)?;
        }
        std::fs::write(bundle.join("address"), &address)
            .map_err(|e| other(format!("writing the address file: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| other(format!("bundle dir: {e}")))?;
        let sandbox_id = sandbox_id_of(&bundle, &self.id);
        let address = containerd_shim::socket_address(&self.address, &self.namespace, &sandbox_id);
        if socket_answers(&address) {
            tracing::info!(container_id = %self.id, %sandbox_id, "the sandbox's shim still serves: leaving the sandbox alone");
        } else {
            let dir = crate::vm_cache::sandbox_dir(&root_dir(), &sandbox_id);
            // The dead shim's own file in the sandbox directory (the crash matrix found it
            // keeping the directory after every kill of the shim).
            let _ = std::fs::remove_file(dir.join(crate::monitor::MONITOR_SOCKET));
            match kata_sandbox::persist::cleanup(&dir) {
                Ok(r) => {
                    tracing::info!(%sandbox_id, killed = ?r.killed, removed = r.removed, state_error = ?r.state_error, "cleaned up after a dead shim")
                }
                Err(e) => {
                    tracing::warn!(%sandbox_id, error = %e, "cleanup after a dead shim was incomplete")
                }
            }
            let path = address.strip_prefix("unix://").unwrap_or(&address);
            let _ = std::fs::remove_file(path);
        }
        // The rootfs mounts the sandbox made are recorded in its state and removed by the
        // cleanup above; containerd unmounts `<bundle>/rootfs` itself when it deletes the
        // bundle (a shim that died between mounting and recording). Nothing else is
        // unmounted here: never a path the spec names.
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(timestamp(
                std::time::SystemTime::now(),
            )),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let service = TaskService::new(
            &self.namespace,
            Some(publisher),
            self.exit.clone(),
            root_dir(),
        );
        // A shim restarted while its sandbox runs takes it over instead of failing.
        match service.reconnect(&self.id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sandbox_id = %self.id, tasks = n, "serving a restored sandbox"),
            Err(e) => {
                tracing::warn!(sandbox_id = %self.id, error = %e, "a sandbox state exists but cannot be restored; `delete` cleans it up")
            }
        }
        service
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sh(script: &str, stderr: Option<&std::fs::File>) -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .stdout(ProcessStdio::piped())
            .stderr(match stderr {
                Some(f) => ProcessStdio::from(f.try_clone().unwrap()),
                None => ProcessStdio::null(),
            })
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_server_that_closes_stdout_then_dies_is_reported_with_its_status_and_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let address = format!("unix://{}", tmp.path().join("s.sock").display());
        // stdout closed well before it exits: `try_wait` right after EOF says "running".
        let stderr = start_stderr_file();
        let child = sh(
            "exec >&-; echo 'listen: address in use' >&2; sleep 0.3; exit 3",
            stderr.as_ref(),
        );
        let e = wait_listening(child, stderr, &address, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("listen: address in use"), "{e}");
        // One that never listens nor exits is killed after the timeout.
        let child = sh("exec >&-; sleep 100", None);
        let e = wait_listening(child, None, &address, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed"), "{e}");
    }

    #[test]
    fn the_umask_makes_what_the_shim_creates_private() {
        let before = set_private_umask();
        let tmp = tempfile::tempdir().unwrap();
        let (f, d) = (tmp.path().join("f"), tmp.path().join("d"));
        std::fs::write(&f, b"x").unwrap();
        std::fs::create_dir(&d).unwrap();
        let restored = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(before));
        assert_eq!(restored.bits(), UMASK);
        use std::os::unix::fs::PermissionsExt;
        for p in [&f, &d] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }
    }

    #[test]
    fn a_server_that_listens_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let child = sh("exec >&-; sleep 0.5", None);
        wait_listening(
            child,
            None,
            &format!("unix://{}", path.display()),
            Duration::from_secs(5),
        )
        .unwrap();
    }
}
