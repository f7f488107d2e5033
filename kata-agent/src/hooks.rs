//! Guest OCI hooks (CreateSandbox's `guest_hook_path`), run as Kata's agent runs them.
//!
//! Kata's agent looks in `<guest_hook_path>/prestart`, `/poststart` and `/poststop` for
//! executables (regular files with an execute bit; symlinks and other files are skipped) and
//! gives every container of the sandbox those hooks. Each runs in the agent's own namespaces —
//! in the guest, never on the host — with `argv` `[<file name>, <stage>]`, the container's OCI
//! state as JSON on its standard input, and 10 seconds to finish (then it is killed):
//! `prestart` once the container is created, before its process runs (CreateContainer);
//! `poststart` once it runs (StartContainer); `poststop` once it is removed
//! (RemoveContainer, DestroySandbox). As in Kata's agent, a hook that fails, times out or
//! cannot be run is logged and changes nothing else; so does a `guest_hook_path` without hooks.
//! The files are found once, at CreateSandbox once its storages are mounted (the directory may
//! be on one), in name order (Kata's: directory order).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::reaper::Reaper;

/// How long a hook may run (Kata's default hook timeout).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Created, before the process runs.
    Prestart,
    /// The process runs.
    Poststart,
    /// The container is removed.
    Poststop,
}

impl Stage {
    /// The stage's directory name and second argument.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }

    /// The container's OCI status when hooks of this stage run.
    fn status(self) -> &'static str {
        match self {
            Stage::Prestart => "created",
            Stage::Poststart => "running",
            Stage::Poststop => "stopped",
        }
    }
}

/// One hook: an executable and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// The executable, absolute.
    pub path: PathBuf,
    /// `argv`: the file's name, then the stage.
    pub args: Vec<String>,
}

/// The hooks found under a `guest_hook_path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestHooks {
    prestart: Vec<Hook>,
    poststart: Vec<Hook>,
    poststop: Vec<Hook>,
}

impl GuestHooks {
    /// The hooks under `dir` (`dir/prestart/*`, ...). A missing directory has none.
    pub fn find(dir: &Path) -> Self {
        GuestHooks {
            prestart: find_stage(dir, Stage::Prestart),
            poststart: find_stage(dir, Stage::Poststart),
            poststop: find_stage(dir, Stage::Poststop),
        }
    }

    /// The hooks of `stage`.
    pub fn stage(&self, stage: Stage) -> &[Hook] {
        match stage {
            Stage::Prestart => &self.prestart,
            Stage::Poststart => &self.poststart,
            Stage::Poststop => &self.poststop,
        }
    }

    /// No hook at all.
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty() && self.poststart.is_empty() && self.poststop.is_empty()
    }
}

fn find_stage(dir: &Path, stage: Stage) -> Vec<Hook> {
    let stage_dir = dir.join(stage.name());
    let entries = match std::fs::read_dir(&stage_dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(dir = %stage_dir.display(), error = %e, "no guest hooks");
            return Vec::new();
        }
    };
    let mut hooks: Vec<Hook> = entries
        .flatten()
        .filter(|e| {
            // DirEntry::metadata does not follow a symlink: a symlink is not a file here.
            e.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .map(|e| Hook {
            path: stage_dir.join(e.file_name()),
            args: vec![
                e.file_name().to_string_lossy().into_owned(),
                stage.name().to_string(),
            ],
        })
        .collect();
    hooks.sort_by(|a, b| a.path.cmp(&b.path));
    for h in &hooks {
        tracing::info!(stage = stage.name(), hook = %h.path.display(), "guest hook found");
    }
    hooks
}

/// What a hook is told about its container (the OCI runtime state).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HookState {
    /// The OCI version of the state.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// `created`, `running` or `stopped` (filled in from the stage).
    pub status: String,
    /// The container's init process (0 once it is gone).
    pub pid: i32,
    /// The container's bundle directory in the guest.
    pub bundle: String,
    /// The spec's annotations.
    pub annotations: HashMap<String, String>,
}

/// Runs the hooks of `stage` in order for the container `state` describes; each failure is
/// logged, none is returned (as Kata's agent).
pub async fn run(reaper: &Reaper, hooks: &[Hook], stage: Stage, state: &HookState) {
    if hooks.is_empty() {
        return;
    }
    let mut state = state.clone();
    state.status = stage.status().to_string();
    let json = serde_json::to_vec(&state).unwrap_or_default();
    for hook in hooks {
        match run_one(reaper, hook, &json, HOOK_TIMEOUT).await {
            Ok(()) => {
                tracing::info!(stage = stage.name(), hook = %hook.path.display(), container_id = %state.id, "guest hook ran")
            }
            Err(e) => {
                tracing::warn!(stage = stage.name(), hook = %hook.path.display(), container_id = %state.id, error = %e, "guest hook failed")
            }
        }
    }
}

/// Runs one hook with `stdin` as its input, within `timeout`.
pub async fn run_one(
    reaper: &Reaper,
    hook: &Hook,
    stdin: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let out = crate::command::run(
        reaper,
        &hook.path,
        hook.args.first().map(String::as_str),
        hook.args.get(1..).unwrap_or_default(),
        stdin,
        timeout,
    )
    .await?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if !out.stdout.is_empty() {
        tracing::info!(hook = %hook.path.display(), stdout = %text(&out.stdout), "guest hook output");
    }
    if out.status != 0 {
        return Err(format!(
            "{} exited with status {}: {}",
            hook.path.display(),
            out.status,
            text(&out.stderr)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, rel: &str, body: &str, mode: u32) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn executables_of_each_stage_are_found_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "prestart/20-b", "true", 0o755);
        script(dir.path(), "prestart/10-a", "true", 0o700);
        script(dir.path(), "prestart/not-executable", "true", 0o644);
        std::os::unix::fs::symlink(
            dir.path().join("prestart/10-a"),
            dir.path().join("prestart/00-link"),
        )
        .unwrap();
        script(dir.path(), "poststop/x", "true", 0o755);
        let hooks = GuestHooks::find(dir.path());
        let names: Vec<_> = hooks
            .stage(Stage::Prestart)
            .iter()
            .map(|h| h.args.clone())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["10-a".to_string(), "prestart".into()],
                vec!["20-b".to_string(), "prestart".into()]
            ]
        );
        assert!(hooks.stage(Stage::Poststart).is_empty());
        assert_eq!(hooks.stage(Stage::Poststop).len(), 1);
        assert!(GuestHooks::find(&dir.path().join("nothing")).is_empty());
    }
}
