//! A container's disks in a `virt_container` sandbox: the block rootfs kata-resource records
//! ([`BlockAttachment`]) hot-plugged into the VM before CreateContainer, each turned into the
//! agent storage that names where the guest finds it (Kata's PCI path or the SCSI address the
//! VM reports), and hot-unplugged when the container is removed, before its host resources
//! are released.

use std::sync::{Arc, Mutex};

use kata_agent_client::Storage;
use kata_hypervisor::{BlockDevice, Capabilities, DeviceConfig, Hypervisor, HypervisorConfig};
use kata_resource::rootfs::block::BlockAttachment;
use kata_resource::SandboxResources;

use super::agent_storage;
use crate::error::Result;

/// Whether the sandbox gives block rootfs and volumes to the VM as disks: the backend
/// hot-plugs them and `disable_block_device_use` is off.
pub(super) fn in_use(caps: &Capabilities, hv: &HypervisorConfig) -> bool {
    caps.block_hotplug && !hv.disable_block_device_use
}

/// Hot-plugs `attachments` for container `container_id`; returns their storages. Each disk
/// attached is pushed to `attached` as it is, so a caller that fails later unplugs them
/// ([`detach`]); on error here the disks this call attached are unplugged already.
pub(super) async fn attach(
    vm: &Arc<dyn Hypervisor>,
    container_id: &str,
    attachments: Vec<BlockAttachment>,
    attached: &mut Vec<BlockDevice>,
) -> Result<Vec<Storage>> {
    let first = attached.len();
    let mut storages = Vec::with_capacity(attachments.len());
    for a in attachments {
        let result = async {
            let address = vm.add_device(DeviceConfig::Block(a.device.clone())).await?;
            attached.push(a.device.clone());
            tracing::info!(container_id, device = %a.device.id, path = %a.device.path.display(), %address, "container disk attached");
            Ok::<_, crate::error::Error>(a.storage_at(&address)?)
        }
        .await;
        match result {
            Ok(s) => storages.push(agent_storage(s)),
            Err(e) => {
                let mine = attached.split_off(first);
                detach(vm, container_id, &mine).await;
                return Err(e);
            }
        }
    }
    Ok(storages)
}

/// Hot-unplugs `devices` of container `container_id` (best effort: a failure is logged, the
/// disk goes with the VM at the latest).
pub(super) async fn detach(vm: &Arc<dyn Hypervisor>, container_id: &str, devices: &[BlockDevice]) {
    for d in devices.iter().rev() {
        match vm.remove_device(&DeviceConfig::Block(d.clone())).await {
            Ok(()) => {
                tracing::info!(container_id, device = %d.id, "container disk detached")
            }
            Err(e) => {
                tracing::warn!(container_id, device = %d.id, error = %e, "cannot detach a container's disk; it stays until the VM stops")
            }
        }
    }
}

/// Hot-unplugs every disk container `container_id` holds (as kata-resource records it).
pub(super) async fn detach_container(
    vm: &Arc<dyn Hypervisor>,
    resources: &Mutex<Option<SandboxResources>>,
    container_id: &str,
) {
    let devices = resources
        .lock()
        .unwrap()
        .as_ref()
        .map(|r| r.container_block_devices(container_id))
        .unwrap_or_default();
    detach(vm, container_id, &devices).await;
}
