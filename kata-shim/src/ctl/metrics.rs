//! `shim-ctl metrics <sandbox>`: the sandbox's figures from its shim's management socket
//! (`<root>/<sandbox>/shim-monitor.sock`, [`kata_shim::monitor`]), printed as Prometheus text.

use std::path::Path;

use super::{Options, EXIT_FAILED, EXIT_OK};

/// Prints `GET /metrics` of sandbox `id`'s management socket.
pub fn run(options: &Options, id: &str) -> i32 {
    let root = options
        .root
        .clone()
        .unwrap_or_else(kata_shim::shim::root_dir);
    match fetch(&root, id) {
        Ok(text) => {
            print!("{text}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("shim-ctl metrics: {e}");
            EXIT_FAILED
        }
    }
}

fn fetch(root: &Path, id: &str) -> Result<String, String> {
    // An id that is not a plain name never names a sandbox (and must not reach outside root).
    kata_sandbox::validate_id(id).map_err(|e| e.to_string())?;
    let dir = root.join(id);
    let socket = kata_shim::monitor::socket_path(&dir);
    if !socket.exists() {
        return Err(if dir.is_dir() {
            format!(
                "sandbox `{id}` in {} has no management socket ({}): only a sandbox a running containerd shim serves has one",
                root.display(),
                socket.display()
            )
        } else {
            format!(
                "no sandbox `{id}` in {} (another state root? --root, or $KATA_RS_ROOT_DIR)",
                root.display()
            )
        });
    }
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(kata_shim::monitor::fetch_metrics(&socket))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ids_and_missing_sandboxes_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = fetch(d.path(), "../etc").unwrap_err();
        assert!(e.contains("id"), "{e}");
        let e = fetch(d.path(), "nope").unwrap_err();
        assert!(e.starts_with("no sandbox `nope` in "), "{e}");
        std::fs::create_dir(d.path().join("detached")).unwrap();
        let e = fetch(d.path(), "detached").unwrap_err();
        assert!(e.contains("has no management socket"), "{e}");
    }
}
