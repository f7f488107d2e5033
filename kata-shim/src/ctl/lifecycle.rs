//! `shim-ctl create|start|exec|kill|delete|state`: a sandbox per container, from an OCI
//! bundle, without containerd.
//!
//! `create` boots a sandbox named after the container, creates the container in it and
//! [detaches](kata_sandbox::Sandbox::detach): the VM runs on after shim-ctl exits, its state in
//! `<root>/<id>/state.json`. Every later command [restores](kata_sandbox::Sandbox::restore) the
//! sandbox, does its one thing and detaches again; `delete` shuts it down. One command at a
//! time per sandbox: QEMU's monitor takes one client.

use std::path::{Path, PathBuf};

use kata_sandbox::{ContainerSpec, ProcessSpec, Sandbox, Signal};
use tokio::io::AsyncWriteExt;

use super::{Options, EXIT_FAILED, EXIT_OK};

/// The container metadata key set to `stopped` once shim-ctl saw its first process exit.
const STATUS: &str = "shim-ctl.status";
/// The container metadata key holding its bundle directory.
const BUNDLE: &str = "shim-ctl.bundle";

/// An error for the user: printed as `shim-ctl <command>: <message>`.
type Failure = String;

pub(super) fn root(options: &Options) -> PathBuf {
    options
        .root
        .clone()
        .unwrap_or_else(kata_shim::shim::root_dir)
}

/// Runs `f` on a fresh runtime; prints its error and maps it to [`EXIT_FAILED`].
pub(super) fn block_on<F>(command: &str, f: F) -> i32
where
    F: std::future::Future<Output = Result<i32, Failure>>,
{
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shim-ctl {command}: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shim-ctl {command}: {e}");
            EXIT_FAILED
        }
    }
}

/// Restores sandbox `id`, with an error that names the id and the root when there is none.
pub(super) async fn restore(root: &Path, id: &str) -> Result<Sandbox, Failure> {
    let dir = root.join(id);
    // An id that is not a plain name never names a sandbox (and must not reach outside root).
    if kata_sandbox::validate_id(id).is_err() || !dir.join("state.json").is_file() {
        return Err(format!(
            "no sandbox `{id}` in {} (create it first: shim-ctl create --bundle <DIR> {id})",
            root.display()
        ));
    }
    Sandbox::restore(&dir).await.map_err(|e| {
        format!(
            "cannot reconnect to sandbox `{id}`: {e} (if its VM is gone, `shim-ctl delete --force {id}` cleans it up)"
        )
    })
}

/// Detaches the sandbox again (the VM runs on).
pub(super) async fn detach(sandbox: Sandbox) -> Result<(), Failure> {
    sandbox
        .detach()
        .await
        .map_err(|e| format!("detaching the sandbox: {e}"))
}

/// `create`.
pub fn create(options: &Options, id: &str, bundle: &Path) -> i32 {
    block_on("create", create_inner(options, id, bundle))
}

async fn create_inner(options: &Options, id: &str, bundle: &Path) -> Result<i32, Failure> {
    let root = root(options);
    kata_sandbox::validate_id(id).map_err(|e| e.to_string())?;
    if root.join(id).exists() {
        return Err(format!(
            "sandbox `{id}` exists already in {}",
            root.display()
        ));
    }
    let bundle = bundle
        .canonicalize()
        .map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    let spec = kata_shim::bundle::load_spec(&bundle).map_err(|e| e.to_string())?;
    let mut annotations: Vec<(String, String)> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    annotations.sort();
    annotations.extend(options.annotations.iter().cloned());
    let network_namespace = kata_shim::bundle::network_namespace(&spec);
    let mut builder =
        kata_shim::runtime_options::sandbox_builder_from(options.config.as_deref(), annotations)
            .map_err(|e| e.to_string())?;
    if let Some(ns) = network_namespace {
        builder = builder.network_namespace(ns);
    }
    if let Some(h) = spec.hostname().clone() {
        builder = builder.hostname(h);
    }
    let cspec = ContainerSpec::from_bundle(&bundle, spec, Vec::new())
        .map_err(|e| format!("invalid bundle {}: {e}", bundle.display()))?
        .id(id)
        .terminal(false)
        .stdin(false)
        .metadata(BUNDLE, bundle.display().to_string());
    let sandbox = builder
        .id(id)
        .root_dir(&root)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let created = sandbox.create_container(cspec).await.map(drop);
    if let Err(e) = created {
        if let Err(se) = sandbox.shutdown().await {
            tracing::warn!(error = %se, "stopping the sandbox of a container that failed to create");
        }
        return Err(e.to_string());
    }
    detach(sandbox).await?;
    Ok(EXIT_OK)
}

/// Copies a process's output to ours until it ends.
async fn pump(
    reader: Option<kata_sandbox::OutputReader>,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) {
    if let Some(mut r) = reader {
        let _ = tokio::io::copy(&mut r, &mut to).await;
        let _ = to.flush().await;
    }
}

/// `start`.
pub fn start(options: &Options, id: &str, detach_after: bool) -> i32 {
    block_on("start", async {
        let sandbox = restore(&root(options), id).await?;
        let started = sandbox.state().containers.get(id).is_none_or(|c| c.started);
        if started {
            detach(sandbox).await?;
            return Err(format!("container `{id}` was started already"));
        }
        let result = async {
            let mut c = sandbox.container(id)?;
            let (out, err) = (c.stdout(), c.stderr());
            c.start().await?;
            if detach_after {
                return Ok(EXIT_OK);
            }
            let (_, _, status) = tokio::join!(
                pump(out, tokio::io::stdout()),
                pump(err, tokio::io::stderr()),
                c.wait()
            );
            let status = status?;
            sandbox.set_container_metadata(id, STATUS, "stopped")?;
            Ok::<_, kata_sandbox::Error>(status.to_shell_status())
        }
        .await;
        detach(sandbox).await?;
        result.map_err(|e| e.to_string())
    })
}

/// `exec`.
pub fn exec(options: &Options, id: &str, args: &[String]) -> i32 {
    block_on("exec", async {
        let sandbox = restore(&root(options), id).await?;
        let result = async {
            let c = sandbox.container(id)?;
            let mut p = c.exec(ProcessSpec::new(args.iter().cloned())).await?;
            let (out, err) = (p.stdout(), p.stderr());
            let (_, _, status) = tokio::join!(
                pump(out, tokio::io::stdout()),
                pump(err, tokio::io::stderr()),
                p.wait()
            );
            status.map(|s| s.to_shell_status())
        }
        .await;
        detach(sandbox).await?;
        result.map_err(|e| e.to_string())
    })
}

/// `kill`.
pub fn kill(options: &Options, id: &str, signal: i32) -> i32 {
    block_on("kill", async {
        let signal = Signal::try_from(signal).map_err(|e| e.to_string())?;
        let sandbox = restore(&root(options), id).await?;
        let result = async { sandbox.container(id)?.kill(signal).await }.await;
        detach(sandbox).await?;
        result.map_err(|e| e.to_string())?;
        Ok(EXIT_OK)
    })
}

/// `delete`: removes the container and shuts its sandbox down. A sandbox that cannot be
/// restored (its VM died) is cleaned up from its state with `--force`. An id that is not a
/// plain name (`../x`) is refused before anything is touched: `--force` cleans up only a
/// directory of the root.
pub fn delete(options: &Options, id: &str, force: bool) -> i32 {
    block_on("delete", async {
        kata_sandbox::validate_id(id).map_err(|e| e.to_string())?;
        let root = root(options);
        let dir = root.join(id);
        let sandbox = match restore(&root, id).await {
            Ok(s) => s,
            Err(e) if force && dir.exists() => {
                let report = kata_sandbox::persist::cleanup(&dir)
                    .map_err(|ce| format!("{e}; cleaning up: {ce}"))?;
                eprintln!(
                    "shim-ctl delete: sandbox `{id}` could not be reconnected; cleaned up (killed {:?})",
                    report.killed
                );
                return Ok(EXIT_OK);
            }
            Err(e) => return Err(e),
        };
        if !force && running(&sandbox, id).await {
            detach(sandbox).await?;
            return Err(format!(
                "container `{id}` is running: kill it first, or delete --force"
            ));
        }
        let deleted = sandbox.delete_container(id).await;
        let stopped = sandbox.shutdown().await;
        deleted.map_err(|e| e.to_string())?;
        stopped.map_err(|e| e.to_string())?;
        Ok(EXIT_OK)
    })
}

/// Whether the container's processes still run (started, and the agent lists a process).
async fn running(sandbox: &Sandbox, id: &str) -> bool {
    let started = sandbox
        .state()
        .containers
        .get(id)
        .is_some_and(|c| c.started && !c.metadata.contains_key(STATUS));
    started
        && sandbox
            .container_pids(id)
            .await
            .is_ok_and(|p| !p.is_empty())
}

/// `state`: `{"id", "status", "bundle", "sandbox_dir", "vmm_pids", "pids"}` on stdout.
pub fn state(options: &Options, id: &str) -> i32 {
    block_on("state", async {
        let sandbox = restore(&root(options), id).await?;
        let saved = sandbox.state();
        let meta = saved
            .containers
            .get(id)
            .map(|c| c.metadata.clone())
            .unwrap_or_default();
        let started = saved.containers.get(id).is_some_and(|c| c.started);
        let pids = sandbox.container_pids(id).await.unwrap_or_default();
        let status = match (started, meta.get(STATUS).map(String::as_str)) {
            (false, _) => "created",
            (true, Some(s)) => s,
            (true, None) if pids.is_empty() => "stopped",
            (true, None) => "running",
        };
        let out = serde_json::json!({
            "id": id,
            "status": status,
            "bundle": meta.get(BUNDLE),
            "sandbox_dir": saved.dir,
            "vmm_pids": sandbox.host_pids(),
            "pids": pids,
        });
        detach(sandbox).await?;
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        Ok(EXIT_OK)
    })
}

#[cfg(test)]
mod tests {
    /// Issue 9 row 15: `delete --force ../x` cleaned up `<root>/../x`, a directory outside the
    /// root (its processes killed, its mounts and state removed). It is refused, and the
    /// directory is left alone.
    #[test]
    fn delete_force_of_an_id_that_leaves_the_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("x");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("state.json"), "{}").unwrap();
        let (root_arg, absolute) = (root.display().to_string(), outside.display().to_string());
        for id in ["../x", absolute.as_str(), "a/b", ".."] {
            let code = super::super::main(["--root", &root_arg, "delete", "--force", id]);
            assert_eq!(code, super::EXIT_FAILED, "delete --force {id}");
        }
        assert!(
            outside.join("state.json").is_file(),
            "nothing outside the root is touched"
        );
    }
}
