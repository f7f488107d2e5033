//! The test backend (`[hypervisor.host-agent]`, cargo feature `test-backend`): a named fake
//! for tests of sandbox and shim logic. There is no VM: [`Hypervisor::start`] runs the real
//! `kata-agent` binary on this host, `--no-init`, listening on `<vm_dir>/agent.sock`, in
//! private mount, UTS, IPC and PID namespaces that give it what a guest would (see
//! [`namespace`]): the sandbox's shared directory appears at the guest path
//! `/run/kata-containers/shared/containers` and later mounts in it (container rootfs) reach
//! the agent, so the sandbox sends no shared-fs storage ([`Capabilities::guest_on_host`]).
//!
//! Nothing is created on the host outside the VM directory, except that the shared directory
//! may be made a shared mount while the agent runs (see `share`). Stop, stop-now, detach,
//! restore and cleanup work as QEMU's: the processes are pinned by pidfds and checked by their
//! command lines naming the VM directory.
//!
//! The agent binary: the section's `path` key, else `$KATA_RS_AGENT_BIN` (build it with
//! `cargo build -p kata-agent`). Needs root and util-linux's `unshare`.

pub mod namespace;
mod share;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::host::{check, CheckStatus, HostCheck};
use crate::config::{HypervisorConfig, HypervisorType, SettingUse, SharedFs};
use crate::console::tail_lines;
use crate::device::{DeviceConfig, VsockAddress};
use crate::error::{Error, Result};
use crate::hypervisor::{Capabilities, Hypervisor, HypervisorState, VmState};
use crate::kvm::find_program;
use crate::process::{Killer, Supervised};

pub use share::Propagation;
pub use state::HostAgentState;

/// The environment variable naming the agent binary when `path` is empty.
pub const AGENT_BIN_ENV: &str = "KATA_RS_AGENT_BIN";

const STOP_GRACE: Duration = Duration::from_secs(3);
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long start waits for `unshare` to have forked the agent.
const FORK_WAIT: Duration = Duration::from_secs(5);
const LOG_LINES_IN_ERRORS: usize = 20;

/// What the test backend can do: hand over, and every shared filesystem (nothing is exported:
/// the agent sees the directory itself).
pub fn capabilities() -> Capabilities {
    Capabilities {
        backend: Some(HypervisorType::HostAgent),
        block_hotplug: false,
        cpu_hotplug: false,
        cpu_offline_by_agent: false,
        memory_hotplug: false,
        memory_shrink: false,
        vfio: false,
        hybrid_vsock: false,
        shared_fs: vec![
            SharedFs::VirtioFs,
            SharedFs::InlineVirtioFs,
            SharedFs::VirtioFsNydus,
            SharedFs::Virtio9p,
            SharedFs::None,
        ],
        shared_fs_note: String::new(),
        hand_over: true,
        guest_on_host: true,
    }
}

/// The agent binary: `path`, else `$KATA_RS_AGENT_BIN`.
fn agent_binary(config: &HypervisorConfig) -> Result<PathBuf> {
    let (explicit, from) = if !config.path.is_empty() {
        (config.path.clone(), "`path` in [hypervisor.host-agent]")
    } else {
        (
            std::env::var(AGENT_BIN_ENV).unwrap_or_default(),
            "$KATA_RS_AGENT_BIN",
        )
    };
    if explicit.is_empty() {
        return Err(Error::MissingProgram {
            program: "kata-agent".into(),
            searched: format!(
                "`path` in [hypervisor.host-agent] and ${AGENT_BIN_ENV} (both unset)"
            ),
            install: format!(
                "cargo build -p kata-agent, then set `path` or ${AGENT_BIN_ENV} to the binary"
            ),
        });
    }
    let p = PathBuf::from(&explicit);
    if !p.is_file() {
        return Err(Error::MissingFile {
            what: "kata-agent binary",
            path: p,
            hint: format!("{from} names it; build it with `cargo build -p kata-agent`"),
        });
    }
    if p.starts_with("/run") {
        return Err(Error::InvalidConfig {
            key: "path",
            value: explicit,
            reason: "the agent gets a fresh /run: put its binary elsewhere".into(),
        });
    }
    Ok(p)
}

fn unshare_binary() -> Result<PathBuf> {
    find_program("unshare", "", &[]).ok_or_else(|| Error::MissingProgram {
        program: "unshare".into(),
        searched: "PATH".into(),
        install: "apt-get install util-linux".into(),
    })
}

/// How the test backend treats `key`: it runs no VM, so only the agent binary (`path`),
/// `shared_fs`, `enable_debug`, `kernel_params` (its `agent.*` words reach the agent) and
/// the loader's keys (annotations, `valid_*` globs) have an effect; everything else is inert.
pub(crate) fn setting_use(key: &str, _config: &HypervisorConfig) -> Option<SettingUse> {
    Some(match key {
        "path" | "shared_fs" | "enable_debug" | "enable_annotations" | "kernel_params" => {
            SettingUse::Acted
        }
        k if k.starts_with("valid_") => SettingUse::Acted,
        _ => SettingUse::Inert("the test backend runs no VM"),
    })
}

/// The test backend's host checks.
pub(crate) fn host_checks(config: &HypervisorConfig) -> Vec<HostCheck> {
    let mut out = vec![check(
        "hypervisor",
        CheckStatus::Ok,
        "host-agent: the test backend (no VM: the agent runs on this host in private namespaces)",
    )];
    let mut agent = match agent_binary(config) {
        Ok(p) => check("kata-agent", CheckStatus::Ok, p.display().to_string()),
        Err(e) => check("kata-agent", CheckStatus::Fail, e.to_string()),
    };
    agent.key = Some("path");
    out.push(agent);
    out.push(match unshare_binary() {
        Ok(p) => check("unshare", CheckStatus::Ok, p.display().to_string()),
        Err(e) => check("unshare", CheckStatus::Fail, e.to_string()),
    });
    out.push(if nix::unistd::geteuid().is_root() {
        check("root", CheckStatus::Ok, "namespaces and mounts can be made")
    } else {
        check(
            "root",
            CheckStatus::Fail,
            "the test backend makes namespaces and mounts: run as root",
        )
    });
    out
}

/// Kills what a test backend whose owner died left (`unshare` and the agent, each only if its
/// command line names `vm_dir`, and anything else naming it) and undoes what was done to the
/// shared directory. Returns the pids killed.
pub(crate) fn cleanup(saved: Option<&HypervisorState>, vm_dir: &Path) -> Vec<u32> {
    let state = saved.and_then(|s| HostAgentState::from_saved(s).ok());
    let candidates = state.as_ref().map(HostAgentState::pids).unwrap_or_default();
    let killed = crate::process::kill_processes_naming(vm_dir, &candidates, KILL_WAIT);
    if let Some(s) = &state {
        if let Some(dir) = &s.shared_dir {
            share::undo(dir, s.propagation);
        }
    }
    killed
}

/// The processes of a started agent.
#[derive(Default)]
struct Running {
    unshare: Option<Supervised>,
    agent: Option<Supervised>,
    propagation: Propagation,
}

/// The test backend: the real agent on this host, no VM. See the [module docs](self).
pub struct HostAgent {
    id: String,
    config: HypervisorConfig,
    vm_dir: PathBuf,
    shared_dir: Mutex<Option<PathBuf>>,
    state: Mutex<VmState>,
    running: tokio::sync::Mutex<Running>,
    pids: Mutex<Vec<u32>>,
    killers: Mutex<Vec<Killer>>,
    saved: Mutex<Option<HostAgentState>>,
    exit: Mutex<Option<tokio::sync::watch::Receiver<Option<String>>>>,
    last_log: Mutex<Vec<String>>,
    detached: AtomicBool,
}

impl std::fmt::Debug for HostAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAgent")
            .field("id", &self.id)
            .field("vm_dir", &self.vm_dir)
            .field("state", &self.state())
            .finish()
    }
}

/// The pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(") ")?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

impl HostAgent {
    /// A test-backend "VM" named `id` whose socket and log live in `vm_dir` (created at start,
    /// removed at stop).
    pub fn new(id: &str, config: HypervisorConfig, vm_dir: impl Into<PathBuf>) -> Result<Self> {
        config.validate_for(HypervisorType::HostAgent)?;
        Ok(HostAgent {
            id: id.to_string(),
            config,
            vm_dir: vm_dir.into(),
            shared_dir: Mutex::new(None),
            state: Mutex::new(VmState::New),
            running: tokio::sync::Mutex::new(Running::default()),
            pids: Mutex::new(Vec::new()),
            killers: Mutex::new(Vec::new()),
            saved: Mutex::new(None),
            exit: Mutex::new(None),
            last_log: Mutex::new(Vec::new()),
            detached: AtomicBool::new(false),
        })
    }

    /// Takes over an agent another handle started and detached, from its saved state: both
    /// processes must still run and name the VM directory on their command lines.
    pub async fn restore(
        id: &str,
        config: HypervisorConfig,
        saved: &HypervisorState,
    ) -> Result<Self> {
        let hs = HostAgentState::from_saved(saved)?;
        let vm = HostAgent::new(id, config, saved.vm_dir.clone())?;
        let unshare = Supervised::adopt("unshare", hs.unshare_pid, &saved.vm_dir)?;
        let agent = match hs.agent_pid {
            Some(pid) => match Supervised::adopt("kata-agent", pid, &saved.vm_dir) {
                Ok(a) => Some(a),
                Err(e) => {
                    unshare.detach();
                    return Err(e);
                }
            },
            None => None,
        };
        *vm.shared_dir.lock().unwrap() = hs.shared_dir.clone();
        {
            let mut run = vm.running.try_lock().expect("a new VM's lock is free");
            run.unshare = Some(unshare);
            run.agent = agent;
            run.propagation = hs.propagation;
            vm.publish(&run);
        }
        vm.set_state(VmState::Running);
        tracing::info!(sandbox_id = %id, pids = ?hs.pids(), "test backend's agent adopted");
        Ok(vm)
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.vm_dir.join("agent.sock")
    }

    /// The agent's log (its standard output and error).
    pub fn log(&self) -> PathBuf {
        self.vm_dir.join("agent.log")
    }

    fn set_state(&self, s: VmState) {
        *self.state.lock().unwrap() = s;
    }

    fn publish(&self, run: &Running) {
        let procs = [run.unshare.as_ref(), run.agent.as_ref()];
        *self.pids.lock().unwrap() = procs.iter().flatten().map(|p| p.pid()).collect();
        *self.killers.lock().unwrap() = procs.iter().flatten().map(|p| p.killer()).collect();
        *self.exit.lock().unwrap() = run.unshare.as_ref().map(Supervised::exit_watch);
        *self.saved.lock().unwrap() = run.unshare.as_ref().map(|u| HostAgentState {
            unshare_pid: u.pid(),
            agent_pid: run.agent.as_ref().map(Supervised::pid),
            shared_dir: self.shared_dir.lock().unwrap().clone(),
            propagation: run.propagation,
        });
    }

    async fn start_inner(&self, run: &mut Running) -> Result<()> {
        let agent_bin = agent_binary(&self.config)?;
        let unshare = unshare_binary()?;
        if !self.vm_dir.is_absolute() {
            return Err(Error::InvalidConfig {
                key: "vm_dir",
                value: self.vm_dir.display().to_string(),
                reason: "the test backend needs an absolute VM directory".into(),
            });
        }
        create_private_dir(&self.vm_dir)?;
        // The agent is given the directory as named (its command line is how its processes are
        // found again); the namespace plan needs where it really is.
        let vm_dir = &self.vm_dir;
        let real_vm_dir = self
            .vm_dir
            .canonicalize()
            .map_err(|e| Error::io(format!("resolving {}", self.vm_dir.display()), e))?;
        let shared = self.shared_dir.lock().unwrap().clone();
        let shared = match shared {
            Some(d) => Some(d.canonicalize().map_err(|e| {
                Error::io(format!("resolving shared directory {}", d.display()), e)
            })?),
            None => None,
        };
        if let Some(d) = &shared {
            run.propagation = share::make_shared(d)?;
        }
        let plan = namespace::Plan::new(&real_vm_dir, shared.as_deref())?;
        let log = std::fs::File::create(self.log())
            .map_err(|e| Error::io("creating the agent log", e))?;
        let level = if self.config.enable_debug {
            "debug"
        } else {
            "info"
        };
        let mut cmd = tokio::process::Command::new(&unshare);
        cmd.args(namespace::unshare_args(
            &agent_bin,
            &vm_dir.join("agent.sock"),
            level,
        ))
        .stdin(std::process::Stdio::null());
        // The agent reads its `agent.*` words (log port, debug console) as from a kernel
        // command line.
        if !self.config.kernel_params.trim().is_empty() {
            cmd.arg("--kernel-params")
                .arg(self.config.kernel_params.trim());
        }
        cmd.stdout(log.try_clone().map_err(|e| Error::io("agent log", e))?)
            .stderr(log);
        // SAFETY: `Plan::enter` only makes system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || plan.enter());
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {} (test backend)", unshare.display()), e))?;
        let parent = Supervised::new("unshare", child);
        let parent_pid = parent.pid();
        run.unshare = Some(parent);
        // The agent: unshare's child, once forked.
        let deadline = tokio::time::Instant::now() + FORK_WAIT;
        let agent_pid = loop {
            if let Some(how) = run.unshare.as_ref().and_then(Supervised::exited) {
                return Err(self.start_failed(how));
            }
            if let Some(&pid) = children_of(parent_pid).first() {
                let cmdline = crate::process::cmdline(pid).unwrap_or_default();
                if cmdline.contains(&vm_dir.display().to_string()) {
                    break pid;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(self.start_failed(format!("no agent process after {FORK_WAIT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        run.agent = Some(Supervised::adopt("kata-agent", agent_pid, vm_dir)?);
        tracing::info!(sandbox_id = %self.id, unshare = parent_pid, agent = agent_pid, agent_bin = %agent_bin.display(), "test backend: agent started on the host");
        Ok(())
    }

    fn start_failed(&self, how: String) -> Error {
        Error::StartFailed {
            vmm: "kata-agent (test backend)".into(),
            reason: how,
            console: tail_lines(&self.log(), LOG_LINES_IN_ERRORS),
        }
    }

    async fn cleanup(&self, run: &mut Running) {
        if let Some(mut u) = run.unshare.take() {
            // unshare dies of SIGTERM, and its death kills the agent (--kill-child).
            u.signal(nix::sys::signal::Signal::SIGTERM);
            let how = u.stop(STOP_GRACE).await;
            tracing::debug!(sandbox_id = %self.id, %how, "test backend's unshare stopped");
        }
        if let Some(mut a) = run.agent.take() {
            a.stop(STOP_GRACE).await;
        }
        self.undo_share(run.propagation);
        run.propagation = Propagation::AlreadyShared;
        self.remove_vm_dir();
        self.pids.lock().unwrap().clear();
        self.killers.lock().unwrap().clear();
        *self.saved.lock().unwrap() = None;
    }

    fn undo_share(&self, done: Propagation) {
        if let Some(d) = self.shared_dir.lock().unwrap().as_ref() {
            if let Ok(d) = d.canonicalize() {
                share::undo(&d, done);
            }
        }
    }

    fn remove_vm_dir(&self) {
        let tail = tail_lines(&self.log(), 50);
        if !tail.is_empty() {
            *self.last_log.lock().unwrap() = tail;
        }
        if self.vm_dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.vm_dir) {
                tracing::warn!(dir = %self.vm_dir.display(), error = %e, "cannot remove the test backend's directory");
            }
        }
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported {
            backend: "host-agent",
            what: format!("{what}: the test backend has no VM"),
        }
    }
}

#[async_trait]
impl Hypervisor for HostAgent {
    fn kind(&self) -> HypervisorType {
        HypervisorType::HostAgent
    }

    async fn prepare(&self, devices: Vec<DeviceConfig>) -> Result<()> {
        let state = self.state();
        if state != VmState::New && state != VmState::Prepared {
            return Err(Error::InvalidConfig {
                key: "devices",
                value: state.to_string(),
                reason: "devices can only be prepared before the VM starts".into(),
            });
        }
        let mut shared = None;
        for d in devices {
            match d {
                DeviceConfig::ShareFs(fs) if shared.is_none() => shared = Some(fs.host_path),
                DeviceConfig::ShareFs(_) => {
                    return Err(self.unsupported("a second shared directory"))
                }
                other => return Err(self.unsupported(&format!("{} devices", other.kind_name()))),
            }
        }
        *self.shared_dir.lock().unwrap() = shared;
        self.set_state(VmState::Prepared);
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        let mut run = self.running.lock().await;
        if run.unshare.is_some() {
            return Err(Error::InvalidConfig {
                key: "state",
                value: self.state().to_string(),
                reason: "the VM was already started".into(),
            });
        }
        if let Err(e) = self.start_inner(&mut run).await {
            self.cleanup(&mut run).await;
            self.set_state(VmState::Stopped(format!("start failed: {e}")));
            return Err(e);
        }
        self.publish(&run);
        self.set_state(VmState::Running);
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let address = self.agent_address()?;
        let answered = tokio::select! {
            r = crate::ready::wait_answering(&address, timeout) => r,
            how = self.wait_exit() => {
                return Err(Error::VmExited { how, console: self.console_tail(LOG_LINES_IN_ERRORS) });
            }
        };
        answered.map_err(|e| Error::AgentNotReady {
            after: timeout,
            detail: e.detail,
            console: self.console_tail(LOG_LINES_IN_ERRORS),
        })
    }

    async fn stop(&self) -> Result<()> {
        let mut run = self.running.lock().await;
        if self.detached.load(Ordering::SeqCst) {
            return Ok(());
        }
        let how = run.unshare.as_ref().and_then(Supervised::exited);
        self.cleanup(&mut run).await;
        self.set_state(VmState::Stopped(how.unwrap_or_else(|| "stopped".into())));
        Ok(())
    }

    fn stop_now(&self) {
        if self.detached.load(Ordering::SeqCst) {
            return;
        }
        let killers = std::mem::take(&mut *self.killers.lock().unwrap());
        Killer::kill_all(&killers, KILL_WAIT);
        let done = self
            .saved
            .lock()
            .unwrap()
            .take()
            .map(|s| s.propagation)
            .unwrap_or_default();
        self.undo_share(done);
        self.remove_vm_dir();
        self.pids.lock().unwrap().clear();
        self.set_state(VmState::Stopped("killed".into()));
    }

    async fn pause(&self) -> Result<()> {
        Err(self.unsupported("pausing vCPUs"))
    }

    async fn resume(&self) -> Result<()> {
        Err(self.unsupported("resuming vCPUs"))
    }

    async fn add_device(&self, device: DeviceConfig) -> Result<crate::device::GuestAddress> {
        Err(self.unsupported(&format!("hot-plugging {} devices", device.kind_name())))
    }

    async fn remove_device(&self, device: &DeviceConfig) -> Result<()> {
        Err(self.unsupported(&format!("hot-unplugging {} devices", device.kind_name())))
    }

    async fn resize_vcpus(&self, _vcpus: u32) -> Result<u32> {
        Err(self.unsupported("resizing vCPUs"))
    }

    async fn resize_memory(&self, _mib: u32) -> Result<u32> {
        Err(self.unsupported("resizing memory"))
    }

    fn agent_address(&self) -> Result<VsockAddress> {
        if self.saved.lock().unwrap().is_none() {
            return Err(Error::NotRunning(self.state().to_string()));
        }
        Ok(VsockAddress::Unix {
            path: self.socket(),
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.pids.lock().unwrap().clone()
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn state(&self) -> VmState {
        let s = self.state.lock().unwrap().clone();
        if s == VmState::Running {
            if let Some(rx) = self.exit.lock().unwrap().as_ref() {
                if let Some(how) = rx.borrow().clone() {
                    return VmState::Stopped(how);
                }
            }
        }
        s
    }

    fn save_state(&self) -> HypervisorState {
        HypervisorState {
            backend: HypervisorType::HostAgent,
            vm_dir: self.vm_dir.clone(),
            agent_address: self.agent_address().ok(),
            backend_state: self
                .saved
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or_default(),
        }
    }

    fn console_tail(&self, n: usize) -> Vec<String> {
        let live = tail_lines(&self.log(), n);
        if !live.is_empty() {
            return live;
        }
        let kept = self.last_log.lock().unwrap();
        kept[kept.len().saturating_sub(n)..].to_vec()
    }

    async fn wait_exit(&self) -> String {
        let rx = self.exit.lock().unwrap().clone();
        let Some(mut rx) = rx else {
            return "never started".into();
        };
        loop {
            if let Some(how) = rx.borrow().clone() {
                return how;
            }
            if rx.changed().await.is_err() {
                return "agent stopped".into();
            }
        }
    }

    async fn detach(&self) -> Result<()> {
        let mut run = self.running.lock().await;
        if self.detached.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.killers.lock().unwrap().clear();
        if let Some(u) = run.unshare.take() {
            u.detach();
        }
        if let Some(a) = run.agent.take() {
            a.detach();
        }
        *self.exit.lock().unwrap() = None;
        tracing::info!(sandbox_id = %self.id, pids = ?self.pids(), "test backend detached: the agent runs on");
        self.set_state(VmState::Stopped(
            "detached: the agent runs on without this handle".into(),
        ));
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| Error::io(format!("creating VM directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_agent_binary_says_how_to_get_one() {
        if std::env::var_os(AGENT_BIN_ENV).is_some() {
            return;
        }
        let e = agent_binary(&HypervisorConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cargo build -p kata-agent") && e.contains(AGENT_BIN_ENV),
            "{e}"
        );
        let e = agent_binary(&HypervisorConfig {
            path: "/nonexistent/kata-agent".into(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/nonexistent/kata-agent") && e.contains("path"),
            "{e}"
        );
    }

    #[test]
    fn every_shared_fs_is_accepted_and_the_guest_is_on_the_host() {
        let caps = capabilities();
        for fs in SharedFs::ALL {
            caps.check_shared_fs(*fs).unwrap();
        }
        assert!(caps.guest_on_host && caps.hand_over);
    }

    #[tokio::test]
    async fn devices_other_than_one_share_are_refused() {
        let vm = HostAgent::new("t", HypervisorConfig::default(), "/nonexistent/vm").unwrap();
        let e = vm
            .prepare(vec![DeviceConfig::Vfio(crate::VfioDevice {
                id: "v".into(),
                bdf: "0000:00:01.0".into(),
            })])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("VFIO") && e.contains("no VM"), "{e}");
        assert!(vm.agent_address().is_err(), "not started");
        let e = vm.pause().await.unwrap_err().to_string();
        assert!(e.contains("host-agent"), "{e}");
    }
}
