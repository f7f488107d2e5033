//! The OCI bundle containerd hands the shim: `config.json` and the CRI annotations that group
//! containers into one sandbox (VM). The rootfs mounts go to kata-sandbox
//! ([`kata_sandbox::ContainerSpec::from_bundle`]), which mounts and unmounts them.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

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
    /// The placement the annotations give (`id` is the container's id). A sandbox id that
    /// is not a valid id (it names a directory under the state root: `../x` must never reach
    /// a path) is refused, naming the annotation.
    pub fn of(spec: &Spec, id: &str) -> Result<Placement> {
        let ann = spec.annotations().clone().unwrap_or_default();
        match (
            ann.get(CONTAINER_TYPE).map(String::as_str),
            ann.get(SANDBOX_ID),
        ) {
            (Some("container"), Some(sb)) if !sb.is_empty() && sb != id => {
                kata_sandbox::validate_id(sb).map_err(|reason| Error::InvalidArgument {
                    field: "annotation io.kubernetes.cri.sandbox-id",
                    reason: format!("`{sb}`: {reason}"),
                })?;
                Ok(Placement::Join(sb.clone()))
            }
            _ => Ok(Placement::NewSandbox),
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

/// The pod's network namespace, for the sandbox a container starts: the path of its spec's
/// `linux.namespaces` entry of type `network`. CRI's sandbox (pause) container names the
/// namespace CNI set up (`/var/run/netns/cni-...`), and the VM gets its interfaces. `None`
/// when the entry has no path — a new, empty namespace, as containerd gives a plain `ctr run`
/// (only `lo` would be in it: the VM, which is one already, gets no network) — or when there
/// is no entry (the host's network, which a VM cannot share: no network either).
pub fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
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
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize::<_, Spec>(de).map_err(|e| {
        let field = e.path().to_string();
        if field.is_empty() || field == "." {
            bad(format!("config.json: {}", e.inner()))
        } else {
            bad(format!("config.json: field {field}: {}", e.inner()))
        }
    })
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
        assert_eq!(
            Placement::of(&Spec::default(), "a").unwrap(),
            Placement::NewSandbox
        );
        let s = spec_with(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "a")]);
        assert_eq!(Placement::of(&s, "a").unwrap(), Placement::NewSandbox);
        let s = spec_with(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod")]);
        let p = Placement::of(&s, "c").unwrap();
        assert_eq!(p, Placement::Join("pod".into()));
        assert_eq!(p.sandbox_id("c"), "pod");
    }

    #[test]
    fn a_sandbox_id_that_is_not_a_plain_name_is_refused() {
        for bad in ["../../srv/app", "a/b", ".", ".."] {
            let s = spec_with(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, bad)]);
            let e = Placement::of(&s, "c").unwrap_err().to_string();
            assert!(e.contains("io.kubernetes.cri.sandbox-id"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_network_namespace_is_the_specs_path_if_it_names_one() {
        let spec = |json: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion": "1.0.2", "linux": {{"namespaces": {json}}}}}"#
            ))
            .unwrap()
        };
        // CRI's pause container: the namespace CNI set up.
        let cri = spec(r#"[{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]"#);
        assert_eq!(
            network_namespace(&cri),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        // `ctr run`: a new namespace (no path); `ctr run --net-host`: no entry at all.
        let ctr = spec(r#"[{"type": "pid"}, {"type": "network"}, {"type": "mount"}]"#);
        assert_eq!(network_namespace(&ctr), None);
        let empty = spec(r#"[{"type": "network", "path": ""}]"#);
        assert_eq!(network_namespace(&empty), None);
        let host = spec(r#"[{"type": "pid"}]"#);
        assert_eq!(network_namespace(&host), None);
        assert_eq!(network_namespace(&Spec::default()), None);
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
