//! CDI (Container Device Interface) devices a container names by annotation, resolved to the
//! VFIO nodes [`crate::vfio`] discovers.
//!
//! containerd and CRI pass a container's CDI devices as annotations `cdi.k8s.io/<key>` whose
//! value lists fully qualified names, `vendor.com/class=name` (several separated by commas).
//! Each name is looked up in the CDI spec files (JSON or YAML, `*.json`, `*.yaml`, `*.yml`)
//! of the spec directories, `/etc/cdi` then `/var/run/cdi` (a later directory's definition of
//! a name wins, as CDI orders them; [`CdiRegistry::new`] takes others for tests). A device's
//! `containerEdits.deviceNodes` (and its spec's) must be VFIO nodes (`/dev/vfio/<group>`,
//! iommufd's `/dev/vfio/devices/vfio<N>`; `/dev/vfio/vfio`, the container node, is skipped):
//! those are what the VM can be given. Every other edit (environment, mounts, hooks, other
//! device nodes) is refused naming it, since nothing here would apply it.
//!
//! Errors name the annotation and the spec file: a malformed name, a name no spec defines
//! (with the files that did not parse, in case one of them meant to), a spec that does not
//! parse or breaks the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::vfio::VfioNode;

/// The annotation prefix that names CDI devices.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// Where CDI spec files are, lowest priority first.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// A CDI spec file, the fields this crate reads (others are accepted and ignored only where
/// they cannot change a container: see [`ContainerEdits`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<SpecDevice>,
    #[serde(default)]
    container_edits: Option<ContainerEdits>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecDevice {
    name: String,
    container_edits: ContainerEdits,
}

/// A device's (or a spec's) edits of the container: device nodes are taken; any other edit
/// present is refused when the device is used.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerEdits {
    #[serde(default)]
    device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    mounts: Vec<serde_json::Value>,
    #[serde(default)]
    hooks: Vec<serde_json::Value>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(default)]
    intel_rdt: Option<serde_json::Value>,
    #[serde(default)]
    net_devices: Vec<serde_json::Value>,
}

impl ContainerEdits {
    /// The first edit present that is not a device node, by its key.
    fn unsupported(&self) -> Option<&'static str> {
        [
            ("env", !self.env.is_empty()),
            ("mounts", !self.mounts.is_empty()),
            ("hooks", !self.hooks.is_empty()),
            ("additionalGids", !self.additional_gids.is_empty()),
            ("intelRdt", self.intel_rdt.is_some()),
            ("netDevices", !self.net_devices.is_empty()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(k, _)| k)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceNode {
    path: String,
    #[serde(default)]
    host_path: Option<String>,
}

/// One CDI device a container asked for, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiDevice {
    /// The annotation that named it (`cdi.k8s.io/gpu`).
    pub annotation: String,
    /// Its fully qualified name (`vendor.com/class=name`).
    pub name: String,
    /// The spec file that defines it.
    pub spec_file: PathBuf,
    /// The host VFIO nodes it stands for (for [`crate::vfio::VfioDiscovery::group`]).
    pub vfio_nodes: Vec<PathBuf>,
}

/// The CDI device names of `annotations` (those under [`ANNOTATION_PREFIX`]), with the
/// annotation naming each, in annotation order. A malformed name is refused naming the
/// annotation.
pub fn requested(annotations: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (key, value) in annotations {
        if !key.starts_with(ANNOTATION_PREFIX) {
            continue;
        }
        for name in value.split(',').map(str::trim) {
            if parse_name(name).is_none() {
                return Err(Error::Cdi {
                    what: format!("annotation {key}"),
                    reason: format!(
                        "{name:?} is not a CDI device name (vendor.com/class=name: a vendor \
                         domain, a class, a name of letters, digits, '_', '-', '.', ':')"
                    ),
                });
            }
            out.push((key.clone(), name.to_string()));
        }
    }
    Ok(out)
}

/// `(kind, name)` of a fully qualified name `vendor.com/class=name`.
fn parse_name(full: &str) -> Option<(&str, &str)> {
    let (kind, name) = full.split_once('=')?;
    valid_kind(kind).then_some(())?;
    let ok = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    ok.then_some((kind, name))
}

fn valid_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let word = |s: &str, extra: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    word(vendor, "_-.") && word(class, "_-")
}

/// The CDI spec directories to resolve names in.
#[derive(Debug, Clone)]
pub struct CdiRegistry {
    dirs: Vec<PathBuf>,
}

impl Default for CdiRegistry {
    fn default() -> Self {
        CdiRegistry::new(DEFAULT_SPEC_DIRS)
    }
}

/// A spec file read, or why it could not be.
struct Loaded {
    file: PathBuf,
    spec: std::result::Result<SpecFile, String>,
}

impl CdiRegistry {
    /// A registry of the spec files in `dirs`, lowest priority first (a missing directory
    /// holds none).
    pub fn new<P: Into<PathBuf>>(dirs: impl IntoIterator<Item = P>) -> Self {
        CdiRegistry {
            dirs: dirs.into_iter().map(Into::into).collect(),
        }
    }

    fn load(&self) -> Vec<Loaded> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    ) && p.is_file()
                })
                .collect();
            files.sort();
            for file in files {
                let spec = read_spec(&file);
                out.push(Loaded { file, spec });
            }
        }
        out
    }

    /// Resolves the CDI devices `annotations` name (see the [module docs](self)). No CDI
    /// annotation: nothing, and no spec file is read.
    pub fn resolve(&self, annotations: &BTreeMap<String, String>) -> Result<Vec<CdiDevice>> {
        let wanted = requested(annotations)?;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let loaded = self.load();
        wanted
            .into_iter()
            .map(|(annotation, full)| self.resolve_one(&loaded, annotation, full))
            .collect()
    }

    fn resolve_one(
        &self,
        loaded: &[Loaded],
        annotation: String,
        full: String,
    ) -> Result<CdiDevice> {
        let (kind, name) = parse_name(&full).expect("checked by requested");
        // The last definition wins (later directories have priority).
        let found = loaded.iter().rev().find_map(|l| {
            let spec = l.spec.as_ref().ok()?;
            (spec.kind == kind)
                .then(|| spec.devices.iter().find(|d| d.name == name))
                .flatten()
                .map(|d| (l, spec, d))
        });
        let Some((l, spec, device)) = found else {
            let broken: Vec<String> = loaded
                .iter()
                .filter_map(|l| {
                    l.spec
                        .as_ref()
                        .err()
                        .map(|e| format!("{} ({e})", l.file.display()))
                })
                .collect();
            let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
            let mut reason = format!(
                "no CDI spec in {} defines {full}; is the vendor's spec file installed?",
                dirs.join(", ")
            );
            if !broken.is_empty() {
                reason = format!(
                    "{reason} These spec files do not parse: {}",
                    broken.join("; ")
                );
            }
            return Err(Error::Cdi {
                what: format!("annotation {annotation}"),
                reason,
            });
        };
        let err = |reason: String| Error::Cdi {
            what: format!(
                "annotation {annotation} ({full}, CDI spec {})",
                l.file.display()
            ),
            reason,
        };
        let mut vfio_nodes = Vec::new();
        let edits = spec
            .container_edits
            .iter()
            .map(|e| ("containerEdits", e))
            .chain(std::iter::once((
                "devices[].containerEdits",
                &device.container_edits,
            )));
        for (field, e) in edits {
            if let Some(key) = e.unsupported() {
                return Err(err(format!(
                    "{field}.{key} is not supported: only VFIO device nodes can be given to a \
                     VM's container"
                )));
            }
            for n in &e.device_nodes {
                let host = PathBuf::from(n.host_path.as_deref().unwrap_or(&n.path));
                if host == Path::new("/dev/vfio/vfio") {
                    continue;
                }
                if VfioNode::parse(&host).is_none() {
                    return Err(err(format!(
                        "{field}.deviceNodes names {}, which is not a VFIO device node \
                         (/dev/vfio/<group> or /dev/vfio/devices/vfio<N>): only VFIO devices \
                         can be given to a VM",
                        host.display()
                    )));
                }
                if !vfio_nodes.contains(&host) {
                    vfio_nodes.push(host);
                }
            }
        }
        if vfio_nodes.is_empty() {
            return Err(err("it names no VFIO device node".into()));
        }
        Ok(CdiDevice {
            annotation,
            name: full,
            spec_file: l.file.clone(),
            vfio_nodes,
        })
    }
}

/// Reads and checks one spec file: JSON or YAML by its extension.
fn read_spec(file: &Path) -> std::result::Result<SpecFile, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let spec: SpecFile = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        serde_yaml::from_str(&text).map_err(|e| e.to_string())?
    };
    if spec.cdi_version.is_empty() {
        return Err("cdiVersion is empty".into());
    }
    if !valid_kind(&spec.kind) {
        return Err(format!("kind {:?} is not vendor.com/class", spec.kind));
    }
    for (i, d) in spec.devices.iter().enumerate() {
        if parse_name(&format!("{}={}", spec.kind, d.name)).is_none() {
            return Err(format!(
                "devices[{i}].name {:?} is not a CDI device name",
                d.name
            ));
        }
        for n in &d.container_edits.device_nodes {
            if !n.path.starts_with('/') {
                return Err(format!(
                    "devices[{i}].containerEdits.deviceNodes path {:?} is not absolute",
                    n.path
                ));
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const JSON: &str = r#"{
        "cdiVersion": "0.6.0",
        "kind": "example.com/fpga",
        "devices": [
            {"name": "edu0", "containerEdits": {"deviceNodes": [{"path": "/dev/vfio/7"}]}},
            {"name": "edu1", "containerEdits": {"deviceNodes": [
                {"path": "/dev/vfio/devices/vfio0", "hostPath": "/dev/vfio/devices/vfio3"}]}}
        ],
        "containerEdits": {"deviceNodes": [{"path": "/dev/vfio/vfio"}]}
    }"#;

    const YAML: &str = "cdiVersion: 0.5.0\nkind: vendor.io/nic\ndevices:\n  - name: vf-1\n    containerEdits:\n      deviceNodes:\n        - path: /dev/vfio/12\n";

    fn dirs() -> (tempfile::TempDir, CdiRegistry) {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc/cdi");
        let run = tmp.path().join("run/cdi");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(etc.join("fpga.json"), JSON).unwrap();
        std::fs::write(run.join("nic.yaml"), YAML).unwrap();
        let r = CdiRegistry::new([etc, run]);
        (tmp, r)
    }

    #[test]
    fn annotations_resolve_to_vfio_nodes_from_json_and_yaml_specs() {
        let (_tmp, r) = dirs();
        let got = r
            .resolve(&annotations(&[
                (
                    "cdi.k8s.io/fpga",
                    "example.com/fpga=edu0,example.com/fpga=edu1",
                ),
                ("cdi.k8s.io/net", "vendor.io/nic=vf-1"),
                ("io.kubernetes.cri.container-type", "container"),
            ]))
            .unwrap();
        let nodes: Vec<(&str, Vec<PathBuf>)> = got
            .iter()
            .map(|d| (d.name.as_str(), d.vfio_nodes.clone()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("example.com/fpga=edu0", vec![PathBuf::from("/dev/vfio/7")]),
                (
                    "example.com/fpga=edu1",
                    vec![PathBuf::from("/dev/vfio/devices/vfio3")]
                ),
                ("vendor.io/nic=vf-1", vec![PathBuf::from("/dev/vfio/12")]),
            ]
        );
        assert_eq!(got[0].annotation, "cdi.k8s.io/fpga");
        assert!(got[2].spec_file.ends_with("run/cdi/nic.yaml"));
        assert!(r.resolve(&BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn a_later_directory_overrides_an_earlier_one() {
        let (tmp, r) = dirs();
        std::fs::write(
            tmp.path().join("run/cdi/fpga-override.json"),
            JSON.replace("/dev/vfio/7", "/dev/vfio/8"),
        )
        .unwrap();
        let got = r
            .resolve(&annotations(&[("cdi.k8s.io/x", "example.com/fpga=edu0")]))
            .unwrap();
        assert_eq!(got[0].vfio_nodes, [PathBuf::from("/dev/vfio/8")]);
    }

    #[test]
    fn an_undefined_or_malformed_name_is_refused_naming_the_annotation() {
        let (_tmp, r) = dirs();
        let e = r
            .resolve(&annotations(&[("cdi.k8s.io/gpu", "nvidia.com/gpu=0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("annotation cdi.k8s.io/gpu")
                && e.contains("nvidia.com/gpu=0")
                && e.contains("etc/cdi"),
            "{e}"
        );
        for bad in ["nvidia.com/gpu", "gpu=0", "nvidia.com/gpu=", "a/b/c=d"] {
            let e = r
                .resolve(&annotations(&[("cdi.k8s.io/gpu", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("annotation cdi.k8s.io/gpu") && e.contains("not a CDI device name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_malformed_spec_is_named_with_the_annotation() {
        let (tmp, r) = dirs();
        let broken = tmp.path().join("run/cdi/gpu.json");
        std::fs::write(
            &broken,
            r#"{"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": [{"name": "0"}]}"#,
        )
        .unwrap();
        let e = r
            .resolve(&annotations(&[("cdi.k8s.io/gpu", "nvidia.com/gpu=0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("annotation cdi.k8s.io/gpu")
                && e.contains(&broken.display().to_string())
                && e.contains("containerEdits"),
            "{e}"
        );
        // The other specs still resolve.
        r.resolve(&annotations(&[("cdi.k8s.io/x", "example.com/fpga=edu0")]))
            .unwrap();
        std::fs::write(&broken, "cdiVersion: [").unwrap();
        std::fs::rename(&broken, broken.with_extension("yaml")).unwrap();
        let e = r
            .resolve(&annotations(&[("cdi.k8s.io/gpu", "nvidia.com/gpu=0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpu.yaml"), "{e}");
    }

    #[test]
    fn edits_a_vm_cannot_apply_are_refused_naming_them_and_the_file() {
        let (tmp, r) = dirs();
        let file = tmp.path().join("etc/cdi/gpu.yaml");
        std::fs::write(&file, "cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ndevices:\n  - name: '0'\n    containerEdits:\n      deviceNodes:\n        - path: /dev/nvidia0\n  - name: '1'\n    containerEdits:\n      env: [A=1]\n      deviceNodes:\n        - path: /dev/vfio/3\n").unwrap();
        let e = r
            .resolve(&annotations(&[("cdi.k8s.io/gpu", "nvidia.com/gpu=0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cdi.k8s.io/gpu")
                && e.contains(&file.display().to_string())
                && e.contains("/dev/nvidia0")
                && e.contains("not a VFIO device node"),
            "{e}"
        );
        let e = r
            .resolve(&annotations(&[("cdi.k8s.io/gpu", "nvidia.com/gpu=1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("containerEdits.env is not supported"), "{e}");
    }
}
