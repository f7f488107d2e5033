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

/// Reads and parses `<bundle>/config.json`. A value of the wrong type is reported with the
/// field it is in (`config.json: field process.args: invalid type: ...`).
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let bad = |reason: String| Error::InvalidBundle {
        bundle: bundle.display().to_string(),
        reason,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read config.json: {e}")))?;
    // Syntax errors carry a line and column; type errors are located by field.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("config.json: {e}")))?;
    serde_json::from_value::<Spec>(value.clone()).map_err(|e| {
        let field = locate_bad_field(&value);
        let at = if field.is_empty() {
            String::new()
        } else {
            format!(" field {field}:")
        };
        bad(format!("config.json:{at} {e}"))
    })
}

/// The dotted path of the value that stops `value` from parsing as a [`Spec`]: the deepest
/// field whose replacement by the default spec's value (or, for fields the default has not,
/// whose removal) makes it parse, the fields it lacks being taken from the default spec too.
/// Empty when no single field is to blame.
fn locate_bad_field(value: &serde_json::Value) -> String {
    use serde_json::Value;
    let reference = serde_json::to_value(Spec::default()).unwrap_or_default();
    /// `value` with the objects along `path` completed by the reference's missing keys, and
    /// the last key either replaced by the reference's value or removed.
    fn trial(value: &Value, reference: Option<&Value>, path: &[String], key: &str) -> Value {
        let mut v = value.clone();
        if let (Some(o), Some(r)) = (v.as_object_mut(), reference.and_then(Value::as_object)) {
            for (k, rv) in r {
                o.entry(k.clone()).or_insert_with(|| rv.clone());
            }
        }
        let reference_child = |k: &str| reference.and_then(|r| r.get(k));
        match (path.split_first(), v.as_object_mut()) {
            (Some((first, rest)), Some(o)) => {
                if let Some(child) = o.get(first.as_str()) {
                    let t = trial(child, reference_child(first), rest, key);
                    o.insert(first.clone(), t);
                }
            }
            (None, Some(o)) => match reference_child(key) {
                Some(good) => {
                    o.insert(key.to_string(), good.clone());
                }
                None => {
                    o.remove(key);
                }
            },
            _ => {}
        }
        v
    }
    let mut path: Vec<String> = Vec::new();
    while path.len() < 8 {
        let mut here = value;
        for k in &path {
            here = &here[k.as_str()];
        }
        let Some(object) = here.as_object() else {
            break;
        };
        let culprit = object.keys().find(|k| {
            serde_json::from_value::<Spec>(trial(value, Some(&reference), &path, k)).is_ok()
        });
        match culprit {
            Some(k) => path.push(k.clone()),
            None => break,
        }
    }
    path.join(".")
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
    fn a_wrong_type_is_reported_with_its_field() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("config.json"),
            r#"{"ociVersion": "1.0.2", "process": {"cwd": "/", "args": "sh"}, "root": {"path": "rootfs"}}"#,
        )
        .unwrap();
        let e = load_spec(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("field process.args:"), "{e}");
        std::fs::write(
            tmp.path().join("config.json"),
            r#"{"ociVersion": "1.0.2", "hostname": 7}"#,
        )
        .unwrap();
        let e = load_spec(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("field hostname:"), "{e}");
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
