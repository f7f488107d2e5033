//! `overlayfs` storages: an overlay the runtime describes, as Kata's agent mounts it (runtime-rs
//! sends one for a nydus rootfs: the image's layers as `lowerdir=`, a writable `upperdir=` and
//! `workdir=` in the guest).
//!
//! The options go to the overlay mount as they are, after checks: a `lowerdir=` is required;
//! every directory named (`lowerdir=` — colon-separated — `upperdir=`, `workdir=`) is an
//! absolute guest path without `.` or `..` components. `driver_options`
//! `io.katacontainers.volume.overlayfs.create_directory=<dir>` name directories made before the
//! mount (Kata's: the upper and work directories). The filesystem type is `overlay`.
//! Kata's `io.katacontainers.fs-opt.overlay-rw` (an upper and work directory the agent makes
//! per container) is refused naming it: this agent does not make them.

use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

/// The `driver_options` key naming a directory to make before the mount.
pub const CREATE_DIR: &str = "io.katacontainers.volume.overlayfs.create_directory";

/// Kata's option asking the agent for a per-container upper and work directory.
const OVERLAY_RW: &str = "io.katacontainers.fs-opt.overlay-rw";

/// A checked overlay storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Overlay {
    /// The mount's options.
    pub options: Vec<String>,
    /// Directories to make before mounting.
    pub create: Vec<PathBuf>,
}

fn clean_absolute(p: &str) -> bool {
    let p = Path::new(p);
    p.is_absolute()
        && p.components().count() > 1
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Checks an overlay storage's `options` and `driver_options`; `field` names it.
pub(super) fn check(options: &[String], driver_options: &[String], field: &str) -> Result<Overlay> {
    let mut lower = false;
    for (j, opt) in options.iter().enumerate() {
        let bad = |why: String| {
            AgentError::invalid(format!("{field}.options[{j}]"), format!("{opt:?}: {why}"))
        };
        if opt == OVERLAY_RW {
            return Err(bad(
                "kata-agent makes no per-container upper and work directory: give upperdir= \
                 and workdir= in the guest instead"
                    .into(),
            ));
        }
        let Some((key, value)) = opt.split_once('=') else {
            continue;
        };
        let dirs: Vec<&str> = match key {
            "lowerdir" => {
                lower = true;
                value.split(':').collect()
            }
            "upperdir" | "workdir" => vec![value],
            _ => continue,
        };
        if let Some(d) = dirs.iter().find(|d| !clean_absolute(d)) {
            return Err(bad(format!(
                "{d:?} is not an absolute guest path without '.' or '..' components"
            )));
        }
    }
    if !lower {
        return Err(AgentError::invalid(
            format!("{field}.options"),
            "an overlayfs storage needs lowerdir= (its layers)",
        ));
    }
    let mut create = Vec::new();
    for (j, opt) in driver_options.iter().enumerate() {
        if let Some(dir) = opt
            .strip_prefix(CREATE_DIR)
            .and_then(|r| r.strip_prefix('='))
        {
            if !clean_absolute(dir) {
                return Err(AgentError::invalid(
                    format!("{field}.driver_options[{j}]"),
                    format!("{dir:?} is not an absolute guest path without '.' or '..' components"),
                ));
            }
            create.push(PathBuf::from(dir));
        }
    }
    Ok(Overlay {
        options: options.to_vec(),
        create,
    })
}

/// Makes the directories `driver_options` asked for.
pub(super) fn create_dirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d)
            .map_err(|e| AgentError::io(format!("create overlay directory {}", d.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn layers_and_directories_are_checked() {
        let o = check(
            &opts(&["lowerdir=/a:/b", "upperdir=/u", "workdir=/w", "index=off"]),
            &opts(&[&format!("{CREATE_DIR}=/u"), "other=x"]),
            "s",
        )
        .unwrap();
        assert_eq!(o.create, vec![PathBuf::from("/u")]);
        assert_eq!(o.options.len(), 4);
        for (bad, field) in [
            (opts(&["upperdir=/u"]), "s.options"),
            (opts(&["lowerdir=/a:rel"]), "s.options[0]"),
            (opts(&["lowerdir=/a", "workdir=/w/../x"]), "s.options[1]"),
            (opts(&["lowerdir=/a", OVERLAY_RW]), "s.options[1]"),
        ] {
            let err = check(&bad, &[], "s").unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
            assert!(err.to_string().starts_with(field), "{bad:?}: {err}");
        }
        let err = check(
            &opts(&["lowerdir=/a"]),
            &opts(&[&format!("{CREATE_DIR}=x")]),
            "s",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("s.driver_options[0]"), "{err}");
    }
}
