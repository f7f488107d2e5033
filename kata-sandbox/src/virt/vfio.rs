//! VFIO devices of a `virt_container` sandbox (issue 12): a container whose OCI spec names
//! `/dev/vfio/<group>` (or iommufd's `/dev/vfio/devices/vfio<N>`) in `linux.devices` gets the
//! group's PCI functions, found by `kata_resource::vfio`.
//!
//! - **Cold-plugged**: the groups the sandbox was built with
//!   ([`SandboxConfig::vfio_devices`](crate::SandboxConfig::vfio_devices)) go on the VM's
//!   command line when `cold_plug_vfio` names a port kind; a container naming one of them is
//!   told where the guest has it ([`Hypervisor::device_address`]); they stay with the VM.
//! - **Hot-plugged** otherwise: plugged when the container is created
//!   ([`Hypervisor::add_device`]), unplugged when it is removed (or fails to be created).
//!   Each one is recorded in kata-resource's devices slot as it is plugged
//!   ([`SandboxResources::record_container_vfio`]), so `state.json` keeps it: a restarted
//!   runtime that takes the sandbox over unplugs it when the container is removed, and cleanup
//!   without a live runtime finds it (it went back to the host with the VM).
//!
//! - **s390x VFIO-AP**: a group whose member is a mediated crypto matrix device
//!   (`kata_resource::vfio_ap`) goes to the VM as `vfio-ap` (on the command line when
//!   cold-plugged, `device_add` otherwise) and to the agent as `vfio-ap-cold` / `vfio-ap` with
//!   its queues (`card.domain`) as options.
//!
//! - **CDI**: devices named by `cdi.k8s.io/<key>` annotations (`vendor.com/class=name`) are
//!   resolved against the CDI spec files (`kata_resource::cdi`) to their VFIO nodes, then
//!   handled as if `linux.devices` named them.
//!
//! The spec's entry is taken out (the host's major and minor mean nothing in the guest); the
//! agent gets Kata's device (`vfio-pci`, `vfio-pci-gk` for `vfio_mode = "guest-kernel"`, with
//! options `"<host_bdf>=<guest_pci_path>"`), waits for the functions and, in `vfio` mode,
//! gives the container the guest's own `/dev/vfio` nodes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kata_agent_client::Device;
use kata_hypervisor::{DeviceConfig, GuestAddress, Hypervisor, PciePort};
use kata_resource::cdi::CdiRegistry;
use kata_resource::vfio::{VfioDiscovery, VfioGroup, VfioNode};
use kata_resource::vfio_ap::ApMatrixDevice;
use kata_resource::SandboxResources;
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use crate::SandboxConfig;

/// The VFIO devices of one sandbox: the cold-plugged groups and what each container holds.
#[derive(Debug, Default)]
pub(super) struct VfioDevices {
    /// `vfio_mode = "vfio"` (else `guest-kernel`).
    vfio_mode: bool,
    /// Groups cold-plugged at boot.
    cold: Vec<VfioGroup>,
    /// s390x VFIO-AP matrix devices cold-plugged at boot (`vfio-ap` on QEMU's command line).
    cold_ap: Vec<ApMatrixDevice>,
    /// Where sysfs is (`/sys`).
    discovery: VfioDiscovery,
    /// Where CDI spec files are (`/etc/cdi`, `/var/run/cdi`).
    cdi: CdiRegistry,
}

fn vfio_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(
        "linux.devices",
        format!("VFIO device {}: {e}", path.display()),
    )
}

impl VfioDevices {
    /// The sandbox's VFIO devices: with `cold_plug_vfio` naming a port kind, the groups of
    /// `config.vfio_devices` are discovered now (a bad group fails the start before any VM);
    /// with `no-port` they are hot-plugged for the containers that name them.
    pub(super) fn for_sandbox(config: &SandboxConfig) -> Result<Self> {
        let discovery = VfioDiscovery::default();
        let (mut cold, mut cold_ap) = (Vec::new(), Vec::new());
        if config.hypervisor.cold_plug_vfio != PciePort::NoPort {
            for p in &config.vfio_devices {
                match discovery.ap_device(p)? {
                    Some(ap) => cold_ap.push(ap),
                    None => cold.push(discovery.group(p)?),
                }
            }
        }
        Ok(VfioDevices {
            vfio_mode: config.runtime.vfio_mode == "vfio",
            cold,
            cold_ap,
            discovery,
            cdi: CdiRegistry::default(),
        })
    }

    /// The VFIO devices of a sandbox taken over from its saved state: the cold-plugged groups
    /// found again (a group that no longer checks out is left out, with a warning). What
    /// containers had hot-plugged is in the adopted resources' devices slot.
    pub(super) fn restored(config: &SandboxConfig) -> Self {
        Self::for_sandbox(config).unwrap_or_else(|e| {
            tracing::warn!(sandbox_id = %config.id, error = %e, "the sandbox's cold-plugged VFIO devices cannot be found again");
            VfioDevices {
                vfio_mode: config.runtime.vfio_mode == "vfio",
                ..Default::default()
            }
        })
    }

    /// The devices to cold-plug at boot.
    pub(super) fn boot_devices(&self) -> Vec<DeviceConfig> {
        self.cold
            .iter()
            .flat_map(|g| g.devices())
            .map(DeviceConfig::Vfio)
            .chain(
                self.cold_ap
                    .iter()
                    .map(|a| DeviceConfig::VfioAp(a.device())),
            )
            .collect()
    }

    /// Gives the container the VFIO-AP matrix device `dev` (hot-plugged unless `cold`):
    /// Kata's `vfio-ap` / `vfio-ap-cold` device with the queues (`card.domain`) as options.
    async fn attach_ap(
        &self,
        vm: &Arc<dyn Hypervisor>,
        resources: &Mutex<Option<SandboxResources>>,
        container_id: &str,
        dev: &ApMatrixDevice,
        cold: bool,
    ) -> Result<Device> {
        if !cold {
            let d = DeviceConfig::VfioAp(dev.device());
            vm.add_device(d.clone()).await?;
            record(resources, container_id, d);
        }
        tracing::info!(container_id, device = %dev.path.display(), mdev = %dev.uuid,
            apqns = ?dev.apqn_options(), cold, "VFIO-AP device given to the container");
        let kind = if cold { "vfio-ap-cold" } else { "vfio-ap" };
        Ok(Device::new(
            &dev.group,
            kind,
            "",
            dev.path.to_string_lossy().into_owned(),
        )
        .options(dev.apqn_options()))
    }

    /// The host VFIO nodes of the CDI devices `spec`'s annotations name (none without a
    /// `cdi.k8s.io/` annotation); an error names the annotation and the spec file.
    fn cdi_nodes(&self, spec: &Spec) -> Result<Vec<PathBuf>> {
        let annotations: std::collections::BTreeMap<String, String> = spec
            .annotations()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let devices = self.cdi.resolve(&annotations)?;
        for d in &devices {
            tracing::info!(annotation = %d.annotation, device = %d.name, spec = %d.spec_file.display(),
                nodes = ?d.vfio_nodes, "CDI device resolved");
        }
        Ok(devices.into_iter().flat_map(|d| d.vfio_nodes).collect())
    }

    fn device_type(&self) -> &'static str {
        if self.vfio_mode {
            "vfio-pci"
        } else {
            "vfio-pci-gk"
        }
    }

    /// Gives container `container_id` the VFIO devices its spec names (see the [module
    /// docs](self)): takes them out of `spec`'s `linux.devices`, hot-plugs those not
    /// cold-plugged (each recorded in `resources` as it is plugged), and returns the agent's
    /// devices. On error what this call plugged is unplugged again.
    pub(super) async fn attach(
        &self,
        vm: &Arc<dyn Hypervisor>,
        resources: &Mutex<Option<SandboxResources>>,
        container_id: &str,
        spec: &mut Spec,
    ) -> Result<Vec<Device>> {
        let mut paths: Vec<PathBuf> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
            .map(|d| d.path().clone())
            .filter(|p| VfioNode::parse(p).is_some())
            .collect();
        // CDI devices named by annotation (cdi.k8s.io/<key>), resolved to their VFIO nodes.
        for node in self.cdi_nodes(spec)? {
            if !paths.contains(&node) {
                paths.push(node);
            }
        }
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(linux) = spec.linux_mut().as_mut() {
            let rest: Vec<_> = linux
                .devices()
                .iter()
                .flatten()
                .filter(|d| VfioNode::parse(d.path()).is_none())
                .cloned()
                .collect();
            linux.set_devices(Some(rest).filter(|r| !r.is_empty()));
        }
        let result = self.attach_paths(vm, resources, container_id, &paths).await;
        if result.is_err() {
            self.detach_container(vm, resources, container_id).await;
        }
        result
    }

    async fn attach_paths(
        &self,
        vm: &Arc<dyn Hypervisor>,
        resources: &Mutex<Option<SandboxResources>>,
        container_id: &str,
        paths: &[PathBuf],
    ) -> Result<Vec<Device>> {
        let mut out = Vec::new();
        for path in paths {
            let cold_ap = self.cold_ap.iter().find(|a| &a.path == path);
            let ap = match cold_ap {
                Some(a) => Some(a.clone()),
                None => self.discovery.ap_device(path)?,
            };
            if let Some(ap) = ap {
                let cold = cold_ap.is_some();
                out.push(
                    self.attach_ap(vm, resources, container_id, &ap, cold)
                        .await?,
                );
                continue;
            }
            let cold = self.cold.iter().find(|g| &g.path == path);
            let group = match cold {
                Some(g) => g.clone(),
                None => self.discovery.group(path)?,
            };
            let mut options = Vec::new();
            for (f, dev) in group.functions.iter().zip(group.devices()) {
                let address = if cold.is_some() {
                    vm.device_address(&dev.id).await?
                } else {
                    let a = vm.add_device(DeviceConfig::Vfio(dev.clone())).await?;
                    record(resources, container_id, DeviceConfig::Vfio(dev.clone()));
                    a
                };
                let GuestAddress::Pci { path: guest } = &address else {
                    return Err(vfio_error(
                        path,
                        format!("the VM reports no PCI path for {} ({address})", f.bdf),
                    ));
                };
                tracing::info!(container_id, device = %path.display(), host = %f.bdf,
                    vendor = format!("{:04x}", f.vendor), id = format!("{:04x}", f.device),
                    guest_pci_path = %guest, cold = cold.is_some(), "VFIO function given to the container");
                options.push(format!("{}={guest}", f.bdf));
            }
            out.push(
                Device::new(
                    &group.group,
                    self.device_type(),
                    "",
                    path.to_string_lossy().into_owned(),
                )
                .options(options),
            );
        }
        Ok(out)
    }

    /// Hot-unplugs what container `container_id` holds (best effort: a failure is logged;
    /// the device goes with the VM at the latest).
    pub(super) async fn detach_container(
        &self,
        vm: &Arc<dyn Hypervisor>,
        resources: &Mutex<Option<SandboxResources>>,
        container_id: &str,
    ) {
        let held = resources
            .lock()
            .unwrap()
            .as_mut()
            .map(|r| r.take_container_vfio(container_id))
            .unwrap_or_default();
        detach(vm, container_id, &held).await;
    }
}

/// Records `device` as hot-plugged for `container_id` (resources gone: the sandbox is shutting
/// down, and the device goes with the VM).
fn record(resources: &Mutex<Option<SandboxResources>>, container_id: &str, device: DeviceConfig) {
    if let Some(r) = resources.lock().unwrap().as_mut() {
        r.record_container_vfio(container_id, device);
    }
}

async fn detach(vm: &Arc<dyn Hypervisor>, container_id: &str, devices: &[DeviceConfig]) {
    for d in devices.iter().rev() {
        match vm.remove_device(d).await {
            Ok(()) => {
                tracing::info!(container_id, device = %d.id(), kind = d.kind_name(), "VFIO device unplugged")
            }
            Err(e) => {
                tracing::warn!(container_id, device = %d.id(), kind = d.kind_name(), error = %e, "cannot unplug a container's VFIO device; it stays until the VM stops")
            }
        }
    }
}
