//! OCI hooks of a container's spec, run on the host as runc runs them.
//!
//! | hook | where | when | a failure |
//! |---|---|---|---|
//! | `prestart` (deprecated), then `createRuntime` | the host (the runtime's namespaces) | after the container exists in the sandbox (rootfs mounted, created by the runtime) and before `create` returns | fails the create; the container is removed |
//! | `createContainer`, `startContainer` | the container's namespaces, which are in the guest | — | refused when the spec is given: the guest agent does not run hooks |
//! | `poststart` | the host | after the first process started | logged; the start succeeds |
//! | `poststop` | the host | after the container is deleted (or its sandbox shut down) | logged |
//!
//! Each hook gets the container's [OCI state](https://github.com/opencontainers/runtime-spec/blob/main/runtime.md#state)
//! as JSON on its stdin — `pid` is the sandbox's host process (the VMM), as Kata gives it,
//! since the container's own processes are in the guest — runs with only its own `env`, and is
//! killed (with everything it started) when its `timeout` passes: Kata's 10 s when the spec
//! gives none, where runc would wait for ever. Its stdout and stderr are logged (the first
//! 64 KiB of each); stderr's tail is quoted in a failure.
//!
//! The hooks never reach the guest: the spec the agent receives has none (host paths mean
//! nothing there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::{Hook, Hooks, Spec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// How long a hook without a `timeout` may run (Kata's default).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// What is kept of a hook's stdout and stderr.
const HOOK_OUTPUT_CAP: usize = 64 * 1024;

/// How much of a failed hook's stderr its error quotes.
const STDERR_IN_ERROR: usize = 2048;

/// The OCI status a hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookStatus {
    /// `creating` (prestart, createRuntime).
    Creating,
    /// `running` (poststart).
    Running,
    /// `stopped` (poststop).
    Stopped,
}

impl HookStatus {
    fn as_str(self) -> &'static str {
        match self {
            HookStatus::Creating => "creating",
            HookStatus::Running => "running",
            HookStatus::Stopped => "stopped",
        }
    }
}

/// The host-side hooks of a container still to come after its create (`poststart`,
/// `poststop`) and what their OCI state says; `state.json` keeps them, so a restored sandbox
/// (a restarted shim, the next `shim-ctl` command) still runs them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostHooks {
    /// The spec's `ociVersion`.
    pub oci_version: String,
    /// The bundle directory (a container without one: its rootfs directory).
    pub bundle: PathBuf,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// `hooks.poststart`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<Hook>,
    /// `hooks.poststop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<Hook>,
}

/// The hooks of one container: those run at create, and those kept for later.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerHooks {
    /// `prestart` then `createRuntime`, each with its spec path.
    pub create: Vec<(String, Hook)>,
    /// The later ones (`None`: there are none).
    pub later: Option<HostHooks>,
}

/// Reads and checks the hooks of `spec` before anything of the container exists: the kinds that
/// run in the container's namespaces are refused (naming `hooks.<kind>`), every hook's path
/// must be absolute, its timeout positive, its env `KEY=VALUE`.
pub(crate) fn plan(spec: Option<&Spec>, bundle: &Path) -> Result<ContainerHooks> {
    let Some(spec) = spec else {
        return Ok(ContainerHooks::default());
    };
    let Some(hooks) = spec.hooks() else {
        return Ok(ContainerHooks::default());
    };
    for (kind, list) in [
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(Error::Hook {
                kind: format!("hooks.{kind}"),
                reason: "these hooks run in the container's namespaces, which are in the guest, and the kata-rs guest agent does not run hooks: remove them (prestart, createRuntime, poststart and poststop run on the host)".into(),
            });
        }
    }
    let named = |kind: &str, list: &Option<Vec<Hook>>| -> Result<Vec<(String, Hook)>> {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, h)| {
                let name = format!("hooks.{kind}[{i}]");
                check(&name, h)?;
                Ok((name, h.clone()))
            })
            .collect()
    };
    let mut create = named("prestart", prestart(hooks))?;
    create.extend(named("createRuntime", hooks.create_runtime())?);
    let poststart: Vec<Hook> = named("poststart", hooks.poststart())?
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    let poststop: Vec<Hook> = named("poststop", hooks.poststop())?
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    let later = (!poststart.is_empty() || !poststop.is_empty()).then(|| HostHooks {
        oci_version: spec.version().clone(),
        bundle: bundle.to_path_buf(),
        annotations: annotations(spec),
        poststart,
        poststop,
    });
    Ok(ContainerHooks { create, later })
}

/// `hooks.prestart` (deprecated by the spec, still used: Docker's and NVIDIA's hooks).
#[allow(deprecated)]
fn prestart(hooks: &Hooks) -> &Option<Vec<Hook>> {
    hooks.prestart()
}

fn annotations(spec: &Spec) -> BTreeMap<String, String> {
    spec.annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn check(name: &str, hook: &Hook) -> Result<()> {
    let bad = |reason: String| Error::Hook {
        kind: name.to_string(),
        reason,
    };
    if !hook.path().is_absolute() {
        return Err(bad(format!(
            "path {} is not absolute (the OCI spec requires an absolute path)",
            hook.path().display()
        )));
    }
    if let Some(t) = hook.timeout() {
        if t <= 0 {
            return Err(bad(format!(
                "timeout {t}: must be a positive number of seconds"
            )));
        }
    }
    for e in hook.env().iter().flatten() {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(bad(format!("env entry `{e}` is not KEY=VALUE")));
        }
    }
    Ok(())
}

/// The OCI state JSON a hook reads on its stdin.
pub(crate) fn state_json(
    container_id: &str,
    status: HookStatus,
    pid: u32,
    oci_version: &str,
    bundle: &Path,
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let state = serde_json::json!({
        "ociVersion": oci_version,
        "id": container_id,
        "status": status.as_str(),
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    });
    serde_json::to_vec(&state).unwrap_or_default()
}

/// Runs `hooks` in order, stopping at the first failure (its error names it).
pub(crate) async fn run_all(hooks: &[(String, Hook)], state: &[u8]) -> Result<()> {
    for (name, hook) in hooks {
        run(name, hook, state).await?;
    }
    Ok(())
}

/// Runs `hooks` in order; a failure is logged and the next one still runs (poststart,
/// poststop).
pub(crate) async fn run_all_logged(kind: &str, hooks: &[Hook], state: &[u8], container_id: &str) {
    for (i, hook) in hooks.iter().enumerate() {
        if let Err(e) = run(&format!("hooks.{kind}[{i}]"), hook, state).await {
            tracing::warn!(container_id, error = %e, "a {kind} hook failed; the container's lifecycle goes on (OCI runtime spec)");
        }
    }
}

/// Runs one hook with `state` on its stdin, within its timeout.
async fn run(name: &str, hook: &Hook, state: &[u8]) -> Result<()> {
    let fail = |reason: String| Error::Hook {
        kind: name.to_string(),
        reason: format!("{}: {reason}", hook.path().display()),
    };
    let timeout = match hook.timeout() {
        Some(t) if t > 0 => Duration::from_secs(t as u64),
        _ => DEFAULT_HOOK_TIMEOUT,
    };
    let mut cmd = tokio::process::Command::new(hook.path());
    if let Some(args) = hook.args().as_ref().filter(|a| !a.is_empty()) {
        cmd.arg0(&args[0]).args(&args[1..]);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let pgid = child.id();
    let (mut stdin, stdout, stderr) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let finished = async {
        if let Some(mut i) = stdin.take() {
            // A hook that does not read its state is not an error.
            let _ = i.write_all(state).await;
        }
        let (out, err, status) =
            tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(timeout, finished).await {
        Ok(done) => done,
        Err(_) => {
            if let Some(pgid) = pgid.and_then(|p| libc::pid_t::try_from(p).ok()) {
                // SAFETY: killpg takes two integers and touches no memory; the group is the
                // hook's own (it was started as its leader and has not been waited for yet,
                // so the id cannot have been reused).
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            return Err(fail(format!(
                "did not finish within {timeout:?}: killed{}",
                match hook.timeout() {
                    Some(_) => "",
                    None => " (the spec gives it no timeout: kata-rs allows Kata's default)",
                }
            )));
        }
    };
    let status = status.map_err(|e| fail(format!("waiting for it: {e}")))?;
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    tracing::info!(hook = name, path = %hook.path().display(), %status, stdout = %out.trim_end(), stderr = %err.trim_end(), "OCI hook ran");
    if status.success() {
        return Ok(());
    }
    let err = err.trim();
    let mut start = err.len().saturating_sub(STDERR_IN_ERROR);
    while !err.is_char_boundary(start) {
        start += 1;
    }
    let tail = &err[start..];
    Err(fail(format!(
        "{status}{}{tail}",
        if tail.is_empty() { "" } else { ": " }
    )))
}

/// Reads a hook's output to its end, keeping the first [`HOOK_OUTPUT_CAP`] bytes.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = HOOK_OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(path: &str, args: &[&str], timeout: Option<i64>) -> Hook {
        let mut h = Hook::default();
        h.set_path(PathBuf::from(path));
        h.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        h.set_timeout(timeout);
        h
    }

    fn spec_with(hooks: Hooks) -> Spec {
        let mut s = Spec::default();
        s.set_hooks(Some(hooks));
        s
    }

    #[test]
    fn hooks_that_run_in_the_container_are_refused_by_name() {
        let mut hooks = Hooks::default();
        hooks.set_start_container(Some(vec![hook("/bin/true", &[], None)]));
        let e = plan(Some(&spec_with(hooks)), Path::new("/b")).unwrap_err();
        assert!(e.to_string().contains("hooks.startContainer"), "{e}");
        let mut hooks = Hooks::default();
        hooks.set_create_container(Some(vec![hook("/bin/true", &[], None)]));
        let e = plan(Some(&spec_with(hooks)), Path::new("/b")).unwrap_err();
        assert!(e.to_string().contains("hooks.createContainer"), "{e}");
        // Empty lists are no hooks.
        let mut hooks = Hooks::default();
        hooks.set_create_container(Some(vec![]));
        assert!(plan(Some(&spec_with(hooks)), Path::new("/b")).is_ok());
    }

    #[test]
    fn bad_hooks_are_named_and_the_order_is_prestart_then_create_runtime() {
        let mut hooks = Hooks::default();
        hooks.set_poststop(Some(vec![hook("relative/hook", &[], None)]));
        let e = plan(Some(&spec_with(hooks)), Path::new("/b")).unwrap_err();
        assert!(e.to_string().contains("hooks.poststop[0]"), "{e}");
        let mut hooks = Hooks::default();
        hooks.set_create_runtime(Some(vec![hook("/bin/true", &[], Some(0))]));
        let e = plan(Some(&spec_with(hooks)), Path::new("/b")).unwrap_err();
        assert!(
            e.to_string().contains("hooks.createRuntime[0]") && e.to_string().contains("timeout"),
            "{e}"
        );

        let mut hooks = Hooks::default();
        hooks.set_create_runtime(Some(vec![hook("/bin/b", &[], None)]));
        #[allow(deprecated)]
        hooks.set_prestart(Some(vec![hook("/bin/a", &[], None)]));
        hooks.set_poststop(Some(vec![hook("/bin/c", &[], None)]));
        let planned = plan(Some(&spec_with(hooks)), Path::new("/b")).unwrap();
        let names: Vec<&str> = planned.create.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["hooks.prestart[0]", "hooks.createRuntime[0]"]);
        let later = planned.later.unwrap();
        assert_eq!(later.poststop.len(), 1);
        assert!(later.poststart.is_empty());
    }

    #[tokio::test]
    async fn a_hook_reads_the_state_and_only_its_env_and_fails_with_its_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let state = state_json(
            "c1",
            HookStatus::Creating,
            42,
            "1.0.2",
            Path::new("/b"),
            &BTreeMap::new(),
        );
        let mut h = hook(
            "/bin/sh",
            &[
                "sh",
                "-c",
                &format!(
                    "cat > {}; echo \"$A:$HOME\" >> {}",
                    out.display(),
                    out.display()
                ),
            ],
            Some(5),
        );
        h.set_env(Some(vec!["A=1".into()]));
        run("hooks.prestart[0]", &h, &state).await.unwrap();
        let written = std::fs::read_to_string(&out).unwrap();
        let (json, env) = written.rsplit_once('}').unwrap();
        let v: serde_json::Value = serde_json::from_str(&format!("{json}}}")).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["status"].as_str(), v["pid"].as_u64()),
            (Some("c1"), Some("creating"), Some(42))
        );
        assert_eq!(env.trim(), "1:", "only the hook's own env");

        let h = hook(
            "/bin/sh",
            &["sh", "-c", "echo no GPU here >&2; exit 3"],
            Some(5),
        );
        let e = run("hooks.createRuntime[1]", &h, &state)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hooks.createRuntime[1]")
                && e.contains("exit status: 3")
                && e.contains("no GPU here"),
            "{e}"
        );

        let h = hook("/no/such/hook", &[], None);
        let e = run("hooks.poststop[0]", &h, &state)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/no/such/hook") && e.contains("cannot run it"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let h = hook(
            "/bin/sh",
            &[
                "sh",
                "-c",
                &format!("sleep 100 & echo $! > {}; wait", pidfile.display()),
            ],
            Some(1),
        );
        let t0 = std::time::Instant::now();
        let e = run("hooks.prestart[0]", &h, b"{}")
            .await
            .unwrap_err()
            .to_string();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(e.contains("did not finish within 1s"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "the hook's child {pid} still runs");
    }
}
