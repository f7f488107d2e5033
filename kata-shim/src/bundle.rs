//! The OCI bundle containerd hands the shim: `config.json`, the CRI annotations that group
//! containers into one sandbox (VM), and the rootfs mounts.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// CRI annotation: `sandbox` for a pod's first (pause) container, `container` for the others.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the id of the pod sandbox a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Where a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// It boots its own sandbox, whose id is the container's (a single `ctr run`, or a pod's
    /// sandbox container).
    NewSandbox,
    /// It joins the running sandbox with this id (a pod's later containers).
    Join(String),
}

impl Placement {
    /// The placement the annotations give (`id` is the container's id).
    pub fn of(spec: &Spec, id: &str) -> Placement {
        let ann = spec.annotations().clone().unwrap_or_default();
        match (
            ann.get(CONTAINER_TYPE).map(String::as_str),
            ann.get(SANDBOX_ID),
        ) {
            (Some("container"), Some(sb)) if !sb.is_empty() && sb != id => {
                Placement::Join(sb.clone())
            }
            _ => Placement::NewSandbox,
        }
    }

    /// The sandbox id for container `id`.
    pub fn sandbox_id<'a>(&'a self, id: &'a str) -> &'a str {
        match self {
            Placement::NewSandbox => id,
            Placement::Join(sb) => sb,
        }
    }
}

/// Reads and parses `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let bad = |reason: String| Error::InvalidBundle {
        bundle: bundle.display().to_string(),
        reason,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read config.json: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad(format!("config.json: {e}")))
}

/// The rootfs directory of a bundle: `root.path` of the spec, relative to the bundle.
pub fn rootfs_dir(bundle: &Path, spec: &Spec) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

/// A mount containerd asks for (snapshotter output: an overlay or a bind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// Filesystem type (`overlay`, `bind`, ...).
    pub fs_type: String,
    /// Source.
    pub source: String,
    /// Options (`lowerdir=...`, `rbind`, `ro`, ...).
    pub options: Vec<String>,
}

/// Mounts `mounts` on `target` in order. Returns whether anything was mounted; on error,
/// what was mounted is unmounted again.
pub fn mount_rootfs(mounts: &[RootfsMount], target: &Path) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(target).map_err(|e| Error::Rootfs {
        target: target.display().to_string(),
        reason: format!("creating the mount point: {e}"),
    })?;
    for (i, m) in mounts.iter().enumerate() {
        let r = containerd_shim::mount::mount_rootfs(
            Some(m.fs_type.as_str()),
            Some(m.source.as_str()),
            &m.options,
            target,
        );
        if let Err(e) = r {
            for _ in 0..i {
                let _ = unmount_rootfs(target);
            }
            return Err(Error::Rootfs {
                target: target.display().to_string(),
                reason: format!("mounting {} {}: {e}", m.fs_type, m.source),
            });
        }
    }
    Ok(true)
}

/// Unmounts everything mounted on `target` (lazily if busy). A target that is not mounted is
/// not an error.
pub fn unmount_rootfs(target: &Path) -> Result<()> {
    use nix::mount::{umount2, MntFlags};
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH).map_err(|e| Error::Rootfs {
                    target: target.display().to_string(),
                    reason: format!("unmounting: {e}"),
                })?;
            }
            Err(e) => {
                return Err(Error::Rootfs {
                    target: target.display().to_string(),
                    reason: format!("unmounting: {e}"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(ann: &[(&str, &str)]) -> Spec {
        let mut s = Spec::default();
        s.set_annotations(Some(
            ann.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        s
    }

    #[test]
    fn cri_annotations_choose_the_sandbox() {
        assert_eq!(Placement::of(&Spec::default(), "a"), Placement::NewSandbox);
        let s = spec_with(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "a")]);
        assert_eq!(Placement::of(&s, "a"), Placement::NewSandbox);
        let s = spec_with(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod")]);
        let p = Placement::of(&s, "c");
        assert_eq!(p, Placement::Join("pod".into()));
        assert_eq!(p.sandbox_id("c"), "pod");
    }

    #[test]
    fn invalid_config_json_names_the_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), "{\"ociVersion\": 3").unwrap();
        let e = load_spec(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains(&tmp.path().display().to_string()),
            "{e}"
        );
        let e = load_spec(&tmp.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
