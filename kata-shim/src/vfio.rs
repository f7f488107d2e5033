//! The VFIO devices a sandbox is created with (issue 12 item 7): which devices of a Create go
//! to the [`SandboxBuilder`](kata_sandbox::SandboxBuilder), to be cold-plugged at boot.
//!
//! A container that creates the sandbox ([`Placement::NewSandbox`]: a single `ctr run`, or a
//! pod's sandbox container, whose spec carries the pod's annotations when containerd passes
//! them) has its VFIO devices resolved *before* the VM exists: the `linux.devices` entries
//! naming `/dev/vfio/<group>` or `/dev/vfio/devices/vfio<N>` (not `/dev/vfio/vfio`, the
//! container node) and the nodes of the CDI devices its `cdi.k8s.io/<key>` annotations name.
//! They go to the builder, which cold-plugs them when `cold_plug_vfio` names a port kind
//! (else the sandbox hot-plugs them for the container, as any other). A CDI name no spec file
//! defines, or a malformed one, refuses the Create naming the annotation before any VM boots:
//! nothing is left behind.
//!
//! A container that joins a running sandbox ([`Placement::Join`]) gives the builder nothing:
//! its devices are hot-plugged when it is created and unplugged when it is deleted (kata-sandbox's
//! `virt/vfio.rs`), unless the sandbox was cold-plugged with the same group.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kata_resource::cdi::CdiRegistry;
use kata_resource::vfio::VfioNode;
use oci_spec::runtime::Spec;

use crate::bundle::Placement;
use crate::error::{Error, Result};

/// How a device a Create names reaches the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plug {
    /// With the sandbox: given to the builder, cold-plugged at boot when `cold_plug_vfio`
    /// names a port kind.
    WithSandbox,
    /// With the container: hot-plugged at its create, unplugged at its delete.
    WithContainer,
}

impl Plug {
    /// The decision for a container placed at `placement`.
    pub fn of(placement: &Placement) -> Plug {
        match placement {
            Placement::NewSandbox => Plug::WithSandbox,
            Placement::Join(_) => Plug::WithContainer,
        }
    }
}

/// The VFIO nodes `spec` names: its `linux.devices` VFIO entries, then the nodes of the CDI
/// devices its annotations name (resolved in `cdi`), each once. A CDI annotation that cannot
/// be resolved is refused naming it.
pub fn nodes(spec: &Spec, cdi: &CdiRegistry) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    let listed = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .map(|d| d.path().clone())
        .filter(|p| VfioNode::parse(p).is_some());
    let annotations: BTreeMap<String, String> = spec
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let resolved = cdi
        .resolve(&annotations)
        .map_err(|e| Error::InvalidArgument {
            field: "annotation cdi.k8s.io",
            reason: e.to_string(),
        })?;
    for node in listed.chain(resolved.into_iter().flat_map(|d| d.vfio_nodes)) {
        if !out.contains(&node) {
            out.push(node);
        }
    }
    Ok(out)
}

/// The VFIO devices the sandbox is built with for a Create at `placement` (see the [module
/// docs](self)): all of `spec`'s ([`nodes`]) for a new sandbox, none for a joining container.
pub fn sandbox_devices(
    placement: &Placement,
    spec: &Spec,
    cdi: &CdiRegistry,
) -> Result<Vec<PathBuf>> {
    match Plug::of(placement) {
        Plug::WithSandbox => nodes(spec, cdi),
        Plug::WithContainer => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType};

    const CDI_SPEC: &str = r#"{
        "cdiVersion": "0.6.0",
        "kind": "example.com/nic",
        "devices": [
            {"name": "vf0", "containerEdits": {"deviceNodes": [
                {"path": "/dev/vfio/vfio"}, {"path": "/dev/vfio/12"}]}},
            {"name": "vf1", "containerEdits": {"deviceNodes": [{"path": "/dev/vfio/13"}]}}
        ]
    }"#;

    fn spec(devices: &[&str], annotations: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        let list = devices
            .iter()
            .map(|p| {
                LinuxDeviceBuilder::default()
                    .path(*p)
                    .typ(LinuxDeviceType::C)
                    .major(240i64)
                    .minor(0i64)
                    .build()
                    .unwrap()
            })
            .collect();
        spec.linux_mut().as_mut().unwrap().set_devices(Some(list));
        spec.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        spec
    }

    fn registry() -> (tempfile::TempDir, CdiRegistry) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nic.json"), CDI_SPEC).unwrap();
        let reg = CdiRegistry::new([dir.path()]);
        (dir, reg)
    }

    #[test]
    fn a_new_sandbox_takes_its_container_s_devices_a_joining_container_is_hot_plugged() {
        assert_eq!(Plug::of(&Placement::NewSandbox), Plug::WithSandbox);
        assert_eq!(
            Plug::of(&Placement::Join("pod".into())),
            Plug::WithContainer
        );
        let (_dir, cdi) = registry();
        let s = spec(
            &["/dev/vfio/vfio", "/dev/vfio/12", "/dev/null"],
            &[("cdi.k8s.io/nic", "example.com/nic=vf0,example.com/nic=vf1")],
        );
        assert_eq!(
            sandbox_devices(&Placement::NewSandbox, &s, &cdi).unwrap(),
            [PathBuf::from("/dev/vfio/12"), PathBuf::from("/dev/vfio/13")],
            "linux.devices' group, then the CDI devices' (12 once; no /dev/vfio/vfio)"
        );
        assert!(sandbox_devices(&Placement::Join("pod".into()), &s, &cdi)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn cdi_devices_alone_go_with_a_new_sandbox() {
        let (_dir, cdi) = registry();
        let s = spec(&[], &[("cdi.k8s.io/vf", "example.com/nic=vf1")]);
        assert_eq!(
            sandbox_devices(&Placement::NewSandbox, &s, &cdi).unwrap(),
            [PathBuf::from("/dev/vfio/13")]
        );
        assert!(nodes(&spec(&["/dev/null"], &[]), &cdi).unwrap().is_empty());
    }

    #[test]
    fn an_undefined_cdi_device_is_refused_naming_the_annotation() {
        let (_dir, cdi) = registry();
        let s = spec(&[], &[("cdi.k8s.io/gpu", "example.com/nic=vf9")]);
        let e = sandbox_devices(&Placement::NewSandbox, &s, &cdi)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cdi.k8s.io/gpu") && e.contains("example.com/nic=vf9"),
            "{e}"
        );
        assert_eq!(
            Error::InvalidArgument {
                field: "x",
                reason: String::new()
            }
            .code(),
            sandbox_devices(&Placement::NewSandbox, &s, &cdi)
                .unwrap_err()
                .code()
        );
    }
}
