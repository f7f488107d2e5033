//! What `CreateSandbox` and `CreateContainer` carry besides ids: [`SandboxSetup`],
//! [`ContainerSetup`], [`KernelModule`].

use oci_spec::runtime::Spec;

use super::storage::{Device, Storage};
use crate::error::Result;
use crate::protocol::agent as pb;

/// The sandbox-wide setup the agent applies before the first container (`CreateSandbox`).
///
/// ```
/// use kata_agent_client::{SandboxSetup, Storage};
///
/// let setup = SandboxSetup::new("3f1c9a")
///     .hostname("web")
///     .storage(Storage::new("9p", "kataShared", "/run/kata-containers/shared/containers"))
///     .dns(["nameserver 10.0.0.1"]);
/// assert_eq!(setup.sandbox_id, "3f1c9a");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxSetup {
    /// The sandbox id (the agent names its logs and its pause process after it).
    pub sandbox_id: String,
    /// The guest hostname; empty leaves the guest's.
    pub hostname: String,
    /// `resolv.conf` lines for the guest.
    pub dns: Vec<String>,
    /// Filesystems to mount for the whole sandbox (the shared directory).
    pub storages: Vec<Storage>,
    /// Start a pause process whose pid namespace the containers share.
    pub sandbox_pidns: bool,
    /// Directory of OCI hooks inside the guest; empty for none.
    pub guest_hook_path: String,
    /// Kernel modules to load first.
    pub kernel_modules: Vec<KernelModule>,
}

impl SandboxSetup {
    /// The setup of sandbox `sandbox_id`; everything else empty.
    pub fn new(sandbox_id: impl Into<String>) -> Self {
        SandboxSetup {
            sandbox_id: sandbox_id.into(),
            ..SandboxSetup::default()
        }
    }

    /// Sets the guest hostname.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// Sets the `resolv.conf` lines.
    pub fn dns<I, S>(mut self, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dns = lines.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a storage to mount.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storages.push(storage);
        self
    }

    /// Adds storages to mount.
    pub fn storages(mut self, storages: impl IntoIterator<Item = Storage>) -> Self {
        self.storages.extend(storages);
        self
    }

    /// Sets whether the containers share the sandbox's pid namespace.
    pub fn sandbox_pidns(mut self, shared: bool) -> Self {
        self.sandbox_pidns = shared;
        self
    }

    /// Sets the guest directory of OCI hooks.
    pub fn guest_hook_path(mut self, path: impl Into<String>) -> Self {
        self.guest_hook_path = path.into();
        self
    }

    /// Sets the kernel modules to load.
    pub fn kernel_modules(mut self, modules: impl IntoIterator<Item = KernelModule>) -> Self {
        self.kernel_modules = modules.into_iter().collect();
        self
    }

    pub(crate) fn to_grpc(&self) -> pb::CreateSandboxRequest {
        pb::CreateSandboxRequest {
            hostname: self.hostname.clone(),
            dns: self.dns.clone(),
            storages: self.storages.iter().map(Storage::to_grpc).collect(),
            sandbox_pidns: self.sandbox_pidns,
            sandbox_id: self.sandbox_id.clone(),
            guest_hook_path: self.guest_hook_path.clone(),
            kernel_modules: self
                .kernel_modules
                .iter()
                .map(KernelModule::to_grpc)
                .collect(),
            ..Default::default()
        }
    }

    /// The setup a `CreateSandboxRequest` describes.
    #[cfg(test)]
    pub(crate) fn from_grpc(req: &pb::CreateSandboxRequest) -> Self {
        SandboxSetup {
            sandbox_id: req.sandbox_id.clone(),
            hostname: req.hostname.clone(),
            dns: req.dns.clone(),
            storages: req.storages.iter().map(Storage::from_grpc).collect(),
            sandbox_pidns: req.sandbox_pidns,
            guest_hook_path: req.guest_hook_path.clone(),
            kernel_modules: req
                .kernel_modules
                .iter()
                .map(|m| KernelModule {
                    name: m.name.clone(),
                    parameters: m.parameters.clone(),
                })
                .collect(),
        }
    }
}

/// A kernel module the agent loads (`modprobe name parameters...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelModule {
    /// The module name.
    pub name: String,
    /// `key=value` parameters.
    pub parameters: Vec<String>,
}

impl KernelModule {
    /// Module `name` with `parameters`.
    pub fn new<I, S>(name: impl Into<String>, parameters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        KernelModule {
            name: name.into(),
            parameters: parameters.into_iter().map(Into::into).collect(),
        }
    }

    fn to_grpc(&self) -> pb::KernelModule {
        pb::KernelModule {
            name: self.name.clone(),
            parameters: self.parameters.clone(),
            ..Default::default()
        }
    }
}

/// Everything `CreateContainer` carries: the container id, its OCI spec, the storages to
/// mount and the devices to find first.
///
/// [`Agent::create_container`](crate::Agent::create_container) covers the common case (id,
/// spec, storages); this is for the rest.
///
/// ```
/// use kata_agent_client::{ContainerSetup, Device};
///
/// let spec = oci_spec::runtime::Spec::default();
/// let devices = [Device::new("vdb", "blk", "/dev/vdb", "/dev/data")];
/// let setup = ContainerSetup::new("c1", &spec).devices(&devices).sandbox_pidns(true);
/// assert_eq!(setup.id(), "c1");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ContainerSetup<'a> {
    id: &'a str,
    spec: &'a Spec,
    storages: &'a [Storage],
    devices: &'a [Device],
    sandbox_pidns: bool,
}

impl<'a> ContainerSetup<'a> {
    /// Container `id` with `spec`, no storages and no devices.
    pub fn new(id: &'a str, spec: &'a Spec) -> Self {
        ContainerSetup {
            id,
            spec,
            storages: &[],
            devices: &[],
            sandbox_pidns: false,
        }
    }

    /// The container id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// Sets the storages the agent mounts before the container starts (its rootfs, volumes).
    pub fn storages(mut self, storages: &'a [Storage]) -> Self {
        self.storages = storages;
        self
    }

    /// Sets the devices the agent waits for and fixes up in the spec.
    pub fn devices(mut self, devices: &'a [Device]) -> Self {
        self.devices = devices;
        self
    }

    /// Sets whether the container joins the sandbox's pid namespace.
    pub fn sandbox_pidns(mut self, shared: bool) -> Self {
        self.sandbox_pidns = shared;
        self
    }

    /// The request; the container's first process gets the container id as its exec id.
    pub(crate) fn to_grpc(self) -> Result<pb::CreateContainerRequest> {
        Ok(pb::CreateContainerRequest {
            container_id: self.id.to_string(),
            exec_id: self.id.to_string(),
            devices: self.devices.iter().map(Device::to_grpc).collect(),
            storages: self.storages.iter().map(Storage::to_grpc).collect(),
            OCI: protobuf::MessageField::some(crate::spec::to_grpc(self.spec)?),
            sandbox_pidns: self.sandbox_pidns,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::storage::{FsGroup, FsGroupChangePolicy};
    use oci_spec::runtime::{ProcessBuilder, RootBuilder, SpecBuilder};
    use protobuf::Message;

    #[test]
    fn sandbox_setup_round_trips_through_the_wire_bytes() {
        let setup = SandboxSetup::new("sb-1")
            .hostname("web")
            .dns(["nameserver 10.0.0.1", "search example.com"])
            .storage(Storage::new("9p", "kataShared", "/run/kata-containers/shared").fstype("9p"))
            .storages([Storage::new("blk", "/dev/vdb", "/data").fs_group(FsGroup {
                group_id: 7,
                change_policy: FsGroupChangePolicy::OnRootMismatch,
            })])
            .sandbox_pidns(true)
            .guest_hook_path("/usr/share/oci/hooks")
            .kernel_modules([KernelModule::new("e1000e", ["InterruptThrottleRate=3000"])]);
        let bytes = setup.to_grpc().write_to_bytes().unwrap();
        let wire = pb::CreateSandboxRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!((&wire.sandbox_id[..], &wire.hostname[..]), ("sb-1", "web"));
        assert_eq!(
            wire.kernel_modules[0].parameters,
            ["InterruptThrottleRate=3000"]
        );
        assert_eq!(SandboxSetup::from_grpc(&wire), setup);
        assert_eq!(
            SandboxSetup::from_grpc(&SandboxSetup::new("x").to_grpc()),
            SandboxSetup::new("x")
        );
    }

    #[test]
    fn container_setup_carries_spec_storages_and_devices() {
        let spec = SpecBuilder::default()
            .hostname("c1-host")
            .root(
                RootBuilder::default()
                    .path("/run/c1/rootfs")
                    .build()
                    .unwrap(),
            )
            .process(
                ProcessBuilder::default()
                    .args(vec!["echo".to_string(), "hi".to_string()])
                    .cwd("/")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let storages = [Storage::new("virtio-fs", "tag", "/run/c1").fstype("virtiofs")];
        let devices = [Device::new("vdb", "blk", "/dev/vdb", "/dev/data")];
        let req = ContainerSetup::new("c1", &spec)
            .storages(&storages)
            .devices(&devices)
            .sandbox_pidns(true)
            .to_grpc()
            .unwrap();
        let req =
            pb::CreateContainerRequest::parse_from_bytes(&req.write_to_bytes().unwrap()).unwrap();
        assert_eq!((&req.container_id[..], &req.exec_id[..]), ("c1", "c1"));
        assert!(req.sandbox_pidns);
        assert_eq!(Storage::from_grpc(&req.storages[0]), storages[0]);
        assert_eq!(Device::from_grpc(&req.devices[0]), devices[0]);
        let back = crate::spec::from_grpc(req.OCI.as_ref().unwrap()).unwrap();
        assert_eq!(back.hostname().as_deref(), Some("c1-host"));
        assert_eq!(
            back.process().as_ref().unwrap().args().as_deref(),
            Some(&["echo".to_string(), "hi".to_string()][..])
        );
        assert_eq!(
            back.root().as_ref().unwrap().path(),
            std::path::Path::new("/run/c1/rootfs")
        );

        let bare = ContainerSetup::new("c2", &spec).to_grpc().unwrap();
        assert!(bare.storages.is_empty() && bare.devices.is_empty() && !bare.sandbox_pidns);
    }
}
