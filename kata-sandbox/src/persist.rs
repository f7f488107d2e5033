//! persist: a sandbox's state on disk, `<root>/<sandbox-id>/state.json`.
//!
//! The file says what a sandbox left on the host so that a process that did not start it can
//! find it again ([`crate::Sandbox::restore`]) or clean up after it ([`cleanup`]): the
//! configuration it runs with, its runtime handler's own state (for a VM: the hypervisor's
//! state, opaque to this crate, and the host resources — shared directory, rootfs mounts), and
//! its containers (their processes' stream setup, whether they were started, the caller's
//! metadata).
//!
//! It is rewritten on every state change, atomically: a temporary file in the same directory is
//! written, fsync'ed and renamed over `state.json`, then the directory is fsync'ed. A reader
//! never sees a truncated file. A truncated or corrupt file, or one written in another format
//! version ([`STATE_VERSION`]), is an [`Error::CorruptState`] naming the file and the reason;
//! [`cleanup`] still removes what it can find without it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::builder::SandboxConfig;
use crate::error::{Error, Result};
use crate::handler::{HandlerState, RuntimeHandlerKind, StdioConfig};
pub use crate::sandbox::hooks::HostHooks;

/// The state file's name inside the sandbox directory.
pub const STATE_FILE: &str = "state.json";

/// The format version written in [`SandboxState::version`]. Version 1 (kata-rs 0.1) kept a
/// QEMU-shaped hypervisor state and the rootfs mounts per container; a sandbox of that format
/// cannot be restored by this build, only cleaned up.
pub const STATE_VERSION: u32 = 2;

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The sandbox id.
    pub id: String,
    /// The sandbox directory (`<root>/<id>`).
    pub dir: PathBuf,
    /// The configuration the sandbox runs with.
    pub config: SandboxConfig,
    /// The runtime handler's own state (opaque).
    pub handler: HandlerState,
    /// The containers, by id.
    pub containers: BTreeMap<String, ContainerState>,
}

/// One container of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContainerState {
    /// Its processes by exec id (the first process under the container id): how their
    /// streams were set up, to re-attach them on restore.
    pub processes: BTreeMap<String, ProcessState>,
    /// The caller's metadata ([`crate::ContainerSpec::metadata`]).
    pub metadata: BTreeMap<String, String>,
    /// Its first process was started.
    pub started: bool,
    /// Its host OCI hooks still to run (poststart, poststop), if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HostHooks>,
}

impl ContainerState {
    /// The ids of the processes started in it besides the first.
    pub fn exec_ids<'a>(&'a self, container_id: &'a str) -> impl Iterator<Item = &'a str> {
        self.processes
            .keys()
            .map(String::as_str)
            .filter(move |e| *e != container_id)
    }
}

/// How one process's standard streams were set up.
pub type ProcessState = StdioConfig;

impl SandboxState {
    /// The state file of the sandbox directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads `<dir>/state.json`. A missing file is [`Error::NotFound`]; a truncated or corrupt
    /// one, or one of another format version, is [`Error::CorruptState`].
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
        let corrupt = |reason: String| Error::CorruptState {
            path: path.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            Some(v) => {
                let who = if v < u64::from(STATE_VERSION) {
                    "an older"
                } else {
                    "a newer"
                };
                return Err(corrupt(format!(
                    "format version {v}, written by {who} kata-rs (this build reads version {STATE_VERSION}): the sandbox cannot be taken over; `persist::cleanup` (containerd: `ctr task delete`, shim-ctl: `delete --force`) still removes it"
                )));
            }
            None => return Err(corrupt("no format version".into())),
        }
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
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
    // The error names the file being replaced (and the temporary written for it): a full
    // state directory must say which file it could not write.
    let ctx = |what: &str| {
        format!(
            "{what} {}, the new {} (which is left as it was)",
            tmp.display(),
            path.display()
        )
    };
    let result = (|| {
        // Root's only, whatever the umask: it names the sandbox's processes and mounts.
        let mut f = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            0o600,
        )
        .open(&tmp)
        .map_err(|e| Error::io(ctx("creating"), e))?;
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
#[non_exhaustive]
pub struct CleanupReport {
    /// The state as read, if it could be read.
    pub state: Option<SandboxState>,
    /// Why the state could not be read (corrupt, or another format version), if it could not.
    pub state_error: Option<String>,
    /// The host processes that were killed.
    pub killed: Vec<u32>,
    /// Whether the sandbox directory is gone.
    pub removed: bool,
}

/// Cleans up after a sandbox whose owner died: stops what its runtime left (for a VM: the VMM
/// and helper processes, found from the state and, without one, by their command line naming
/// the sandbox's VM directory — a pid is only killed when its command line names that
/// directory), unmounts and removes its host resources, removes the sandbox directory.
///
/// Works from `state.json` when it is readable and, best effort, without it (corrupt, or
/// written by another kata-rs version). Idempotent: a missing directory is a successful no-op.
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
            tracing::warn!(dir = %dir.display(), error = %e, "sandbox state unusable; cleaning up without it");
            report.state_error = Some(e.to_string());
        }
    }
    let kind = report
        .state
        .as_ref()
        .map(|s| s.handler.kind)
        .unwrap_or_default();
    report.killed = match kind {
        RuntimeHandlerKind::VirtContainer => {
            crate::virt::VirtContainer::cleanup(dir, report.state.as_ref().map(|s| &s.handler))?
        }
        #[cfg(feature = "wasm")]
        RuntimeHandlerKind::WasmContainer => {
            crate::wasm::WasmContainer::cleanup(dir, report.state.as_ref().map(|s| &s.handler))?
        }
        #[cfg(feature = "linux")]
        RuntimeHandlerKind::LinuxContainer => {
            crate::linux::LinuxContainer::cleanup(dir, report.state.as_ref().map(|s| &s.handler))?
        }
        // A handler whose cargo feature is off.
        #[allow(unreachable_patterns)]
        other => {
            return Err(Error::invalid(
                "state.json handler",
                format!("{other} sandboxes cannot be cleaned up by this build"),
            ))
        }
    };
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

    /// A small tmpfs of its own (root only): `None` when this process may not mount.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(size: &str) -> Option<SmallFs> {
            let dir = tempfile::tempdir().ok()?;
            nix::mount::mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(format!("size={size},mode=0700").as_str()),
            )
            .ok()?;
            Some(SmallFs(dir))
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_full_filesystem_keeps_the_old_state_and_names_the_file() {
        let Some(fs) = SmallFs::mount("64k") else {
            assert!(
                !nix::unistd::geteuid().is_root(),
                "root could not mount a tmpfs"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        };
        let path = fs.0.path().join(STATE_FILE);
        write_atomically(&path, b"{\"version\": 2, \"old\": true}").unwrap();
        // Fill the rest, then try to replace the file with something larger than what is left.
        let mut filler = std::fs::File::create(fs.0.path().join("filler")).unwrap();
        while filler.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
        drop(filler);
        let big = vec![b' '; 32 << 10];
        let e = write_atomically(&path, &big)
            .expect_err("no space left")
            .to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("No space left on device"),
            "the error names neither the state file nor the cause: {e}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"version\": 2, \"old\": true}",
            "the old state is not intact"
        );
        let names: Vec<String> = std::fs::read_dir(fs.0.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains(".tmp-")),
            "a temporary is left: {names:?}"
        );
    }
}
