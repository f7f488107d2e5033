//! Tier 2: VFIO devices a container or sandbox names that cannot be passed through are refused
//! naming the device and the cause, and leave nothing — on the test backend (the real
//! kata-agent on this host, no VM). The real device is proven in the nested lab
//! (`lab/runner/src/vfio.rs`: L1's edu device cold- and hot-plugged into L2).
//!
//! Needs root (the agent makes namespaces, mounts and cgroups) and the kata-agent binary of
//! this build (see `kata_testkit::agent_binary`).

use std::path::PathBuf;
use std::time::Duration;

use kata_hypervisor::PciePort;
use kata_sandbox::oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType, Spec};
use kata_sandbox::{ContainerSpec, HypervisorConfig, HypervisorType, Sandbox, SandboxBuilder};
use kata_testkit::leaks::mounts_under;

/// An IOMMU group no host has.
const NO_GROUP: &str = "/dev/vfio/4242";

struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    agent: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root"
        );
        let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
        Fixture { tmp, rootfs, agent }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    fn builder(&self, id: &str, cold_plug: PciePort) -> SandboxBuilder {
        let config = HypervisorConfig {
            path: self.agent.display().to_string(),
            cold_plug_vfio: cold_plug,
            ..HypervisorConfig::default()
        };
        Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(config)
            .id(id)
            .root_dir(self.root())
            .agent_timeout(Duration::from_secs(20))
    }
}

fn spec_with_device(path: &str) -> Spec {
    let mut spec = Spec::default();
    let dev = LinuxDeviceBuilder::default()
        .path(path)
        .typ(LinuxDeviceType::C)
        .major(0i64)
        .minor(0i64)
        .build()
        .unwrap();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_devices(Some(vec![dev]));
    spec
}

#[tokio::test]
async fn a_container_naming_a_missing_group_is_refused_and_the_sandbox_goes_on() {
    let f = Fixture::new();
    let sb = f
        .builder("vfio-missing", PciePort::NoPort)
        .build()
        .await
        .expect("sandbox starts");
    let spec = ContainerSpec::from_oci(spec_with_device(NO_GROUP), &f.rootfs).args(["true"]);
    let e = sb.run(spec).await.unwrap_err().to_string();
    assert!(
        e.contains(NO_GROUP) && e.contains("IOMMU group 4242 does not exist"),
        "{e}"
    );
    assert!(sb.container_ids().is_empty(), "no container is left");
    // The sandbox goes on: a container without the device runs.
    let out = sb
        .run(ContainerSpec::from_rootfs_dir(&f.rootfs).args(["echo", "ok"]))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "ok\n");
    sb.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sandbox_built_with_a_missing_group_does_not_start_and_leaves_nothing() {
    let f = Fixture::new();
    let e = f
        .builder("vfio-cold-missing", PciePort::RootPort)
        .vfio_device(NO_GROUP)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(NO_GROUP) && e.contains("does not exist"), "{e}");
    assert!(!f.root().join("vfio-cold-missing").exists());
    assert!(mounts_under(&f.root()).is_empty());
}

#[tokio::test]
async fn a_container_naming_an_undefined_cdi_device_is_refused_naming_the_annotation() {
    let f = Fixture::new();
    let sb = f
        .builder("vfio-cdi-missing", PciePort::NoPort)
        .build()
        .await
        .expect("sandbox starts");
    let mut spec = Spec::default();
    spec.set_annotations(Some(
        [(
            "cdi.k8s.io/kata-rs-test".to_string(),
            "kata-rs.test/none=absent".to_string(),
        )]
        .into(),
    ));
    let spec = ContainerSpec::from_oci(spec, &f.rootfs).args(["true"]);
    let e = sb.run(spec).await.unwrap_err().to_string();
    assert!(
        e.contains("annotation cdi.k8s.io/kata-rs-test")
            && e.contains("kata-rs.test/none=absent")
            && e.contains("/etc/cdi"),
        "{e}"
    );
    assert!(sb.container_ids().is_empty(), "no container is left");
    sb.shutdown().await.unwrap();
}
