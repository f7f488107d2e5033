//! persist: a sandbox's state on disk, `<root>/<sandbox-id>/state.json`.
//!
//! The file says what a sandbox left on the host — its VMM and helper processes (pids,
//! sockets), its shared directory, each container's rootfs mount and exec ids, and metadata the
//! caller attached to containers (the containerd shim keeps its bundle paths and task states
//! there) — so that a process that did not build the sandbox can find it again
//! ([`crate::Sandbox::restore`]) or clean up after it ([`cleanup`]).
//!
//! It is rewritten on every state change, atomically: a temporary file in the same directory is
//! written, fsync'ed and renamed over `state.json`, then the directory is fsync'ed. A reader
//! never sees a truncated file; a truncated or corrupt file from elsewhere is a
//! [`Error::CorruptState`] naming the file and the parse error, and [`cleanup`] still removes
//! what it can find without it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kata_hypervisor::SharedFs;
use kata_hypervisor::{HypervisorConfig, HypervisorState};
use kata_resource::share_fs::RootfsMode;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The state file's name inside the sandbox directory.
pub const STATE_FILE: &str = "state.json";

/// The format version written in [`SandboxState::version`].
pub const STATE_VERSION: u32 = 1;

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The sandbox id.
    pub id: String,
    /// The sandbox directory (`<root>/<id>`).
    pub dir: PathBuf,
    /// The VM: backend, pids of the VMM and its helpers, sockets, agent address. `None` until
    /// the VM has started.
    pub hypervisor: Option<HypervisorState>,
    /// Host resources of the sandbox.
    pub resources: ResourceState,
    /// The containers, by id.
    pub containers: BTreeMap<String, ContainerState>,
    /// What [`crate::Sandbox::restore`] needs to take the sandbox over: the hypervisor
    /// section it was built with, its shared filesystem and agent timeouts. `None` in files
    /// written before it existed (such a sandbox can be cleaned up, not restored).
    #[serde(default)]
    pub config: Option<SandboxConfigState>,
}

/// The configuration a sandbox was built with, as far as a process taking it over needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxConfigState {
    /// The `[hypervisor.*]` section the VM runs with.
    pub hypervisor: HypervisorConfig,
    /// How the shared directory reaches the guest.
    pub shared_fs: SharedFs,
    /// The 9p `msize` the guest mounted it with.
    pub msize_9p: u32,
    /// Where unpacked OCI images are cached.
    pub image_cache: PathBuf,
    /// The agent's request deadline, in milliseconds.
    pub agent_request_timeout_ms: u64,
    /// The agent's dial timeout, in milliseconds.
    pub agent_dial_timeout_ms: u64,
}

/// Host resources of a sandbox (what must be unmounted and removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceState {
    /// The shared directory exported to the guest (`<dir>/shared`).
    pub shared_dir: Option<PathBuf>,
}

/// One container of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Where its rootfs is mounted on the host (in the shared directory), once shared.
    pub rootfs: Option<PathBuf>,
    /// The agent's ids of the processes started in it besides the first.
    pub execs: Vec<String>,
    /// What the caller attached ([`crate::Sandbox::set_container_metadata`]).
    pub metadata: BTreeMap<String, String>,
    /// How the rootfs is mounted (to adopt the mount on restore).
    #[serde(default)]
    pub rootfs_mode: Option<RootfsMode>,
    /// The container's processes by exec id (the first process under the container id):
    /// how their streams were set up, to re-attach them on restore.
    #[serde(default)]
    pub processes: BTreeMap<String, ProcessState>,
}

/// How one process's standard streams were set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// It has a terminal (stderr is merged into stdout).
    pub terminal: bool,
    /// Its stdin was left open.
    pub stdin: bool,
}

impl SandboxState {
    /// The state file of the sandbox directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads `<dir>/state.json`. A missing file is [`Error::NotFound`]; a truncated or corrupt
    /// one is [`Error::CorruptState`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    kind: "sandbox state",
                    id: path.display().to_string(),
                })
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let state: SandboxState =
            serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if state.version != STATE_VERSION {
            return Err(Error::CorruptState {
                path,
                reason: format!(
                    "format version {} (this build reads version {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    /// Writes `<dir>/state.json` atomically (temporary file, fsync, rename, fsync of the
    /// directory).
    pub fn store(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::io("encoding the sandbox state", std::io::Error::other(e)))?;
        write_atomically(&Self::path(&self.dir), &bytes)
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new content, never a part.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(ctx("creating"), e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io(ctx("writing"), e))?;
        f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// What [`cleanup`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanupReport {
    /// The state as read, if it could be read.
    pub state: Option<SandboxState>,
    /// Why the state could not be read, if it could not.
    pub state_error: Option<String>,
    /// The processes that were killed.
    pub killed: Vec<u32>,
    /// Whether the sandbox directory is gone.
    pub removed: bool,
}

/// Cleans up after a sandbox whose owner died: kills its VMM and helper processes, unmounts
/// and removes its shared directory and container rootfs mounts, removes the sandbox directory.
///
/// Works from `state.json` when it is readable and, best effort, without it: the VM's backend
/// ([`kata_hypervisor::backend::cleanup`]) also finds processes by their command line naming
/// the sandbox's VM directory, and kills a pid from the state only when its command line names
/// that directory, so a recycled pid is never hit. Idempotent: a missing directory is a
/// successful no-op.
pub fn cleanup(dir: &Path) -> Result<CleanupReport> {
    let mut report = CleanupReport::default();
    if !dir.exists() {
        report.removed = true;
        return Ok(report);
    }
    match SandboxState::load(dir) {
        Ok(s) => report.state = Some(s),
        Err(Error::NotFound { .. }) => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "sandbox state unreadable; cleaning up without it");
            report.state_error = Some(e.to_string());
        }
    }
    let vm_dir = report
        .state
        .as_ref()
        .and_then(|s| s.hypervisor.as_ref().map(|h| h.vm_dir.clone()))
        // A state file names its VM directory; one outside the sandbox dir is not ours to
        // delete (a corrupt or edited file), so the default place is used instead.
        .filter(|d| d.starts_with(dir) && !d.components().any(|c| c.as_os_str() == ".."))
        .unwrap_or_else(|| dir.join("vm"));
    // The backend kills what it left running (from its saved state, or by the VM directory
    // on command lines) and removes the VM directory.
    let saved_vm = report.state.as_ref().and_then(|s| s.hypervisor.as_ref());
    report.killed = kata_hypervisor::backend::cleanup(saved_vm, &vm_dir)?.killed;
    kata_resource::share_fs::ShareFs::remove_stale(dir)?;
    let _ = std::fs::remove_file(SandboxState::path(dir));
    remove_temporaries(dir);
    match std::fs::remove_dir(dir) {
        Ok(()) => report.removed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.removed = true,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "sandbox directory not removed");
        }
    }
    Ok(report)
}

fn remove_temporaries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name
                .to_string_lossy()
                .starts_with(&format!(".{STATE_FILE}.tmp-"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> SandboxState {
        let mut containers = BTreeMap::new();
        containers.insert(
            "c1".to_string(),
            ContainerState {
                rootfs: Some(dir.join("shared/c1/rootfs")),
                execs: vec!["exec-1".into()],
                metadata: [("bundle".to_string(), "/b".to_string())].into(),
                rootfs_mode: Some(RootfsMode::Overlay),
                processes: [(
                    "c1".to_string(),
                    ProcessState {
                        terminal: true,
                        stdin: false,
                    },
                )]
                .into(),
            },
        );
        SandboxState {
            version: STATE_VERSION,
            id: "sb".into(),
            dir: dir.to_path_buf(),
            hypervisor: None,
            resources: ResourceState {
                shared_dir: Some(dir.join("shared")),
            },
            containers,
            config: Some(SandboxConfigState {
                hypervisor: HypervisorConfig::default(),
                shared_fs: SharedFs::Virtio9p,
                msize_9p: 8192,
                image_cache: "/var/cache/kata-rs/images".into(),
                agent_request_timeout_ms: 30_000,
                agent_dial_timeout_ms: 45_000,
            }),
        }
    }

    #[test]
    fn a_state_without_the_later_fields_still_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "version": STATE_VERSION, "id": "sb", "dir": tmp.path(), "hypervisor": null,
            "resources": {"shared_dir": null},
            "containers": {"c1": {"rootfs": null, "execs": [], "metadata": {}}},
        });
        std::fs::write(SandboxState::path(tmp.path()), old.to_string()).unwrap();
        let s = SandboxState::load(tmp.path()).unwrap();
        assert_eq!(s.config, None);
        assert_eq!(s.containers["c1"].rootfs_mode, None);
    }

    #[test]
    fn state_round_trips_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let s = sample(tmp.path());
        s.store().unwrap();
        assert_eq!(SandboxState::load(tmp.path()).unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![STATE_FILE.to_string()]);
    }

    #[test]
    fn truncated_state_is_a_clear_error_and_cleanup_still_works() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        std::fs::create_dir_all(dir.join("vm")).unwrap();
        let s = sample(&dir);
        let bytes = serde_json::to_vec(&s).unwrap();
        std::fs::write(SandboxState::path(&dir), &bytes[..bytes.len() / 2]).unwrap();
        let e = SandboxState::load(&dir).unwrap_err();
        assert!(matches!(e, Error::CorruptState { .. }), "{e}");
        assert!(e.to_string().contains("state.json"), "{e}");
        // A process that names the VM directory (as a VMM does) is found without the state.
        let vm_dir = dir.join("vm");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 100 # {}/qmp.sock", vm_dir.display()))
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if kata_hypervisor::process::processes_naming(&vm_dir).contains(&child.id()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let report = cleanup(&dir).unwrap();
        assert!(report.state_error.is_some());
        assert!(report.killed.contains(&child.id()), "{report:?}");
        assert!(report.removed && !dir.exists());
        let _ = child.wait();
        // Idempotent.
        assert!(cleanup(&dir).unwrap().removed);
    }

    #[test]
    fn a_recycled_pid_is_not_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        std::fs::create_dir_all(&dir).unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let mut s = sample(&dir);
        s.hypervisor = Some(HypervisorState {
            backend: kata_hypervisor::HypervisorType::default(),
            vm_dir: dir.join("vm"),
            agent_address: None,
            // Without the backend's own state only what names the VM directory is killed (the
            // backend's tests cover pids from a state that do not name it).
            backend_state: serde_json::Value::Null,
        });
        s.store().unwrap();
        let report = cleanup(&dir).unwrap();
        assert!(report.killed.is_empty(), "{report:?}");
        assert!(other.try_wait().unwrap().is_none());
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
