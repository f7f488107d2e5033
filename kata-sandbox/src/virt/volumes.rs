//! A container's volumes in a `virt_container` sandbox: the OCI spec's mounts handed to
//! kata-resource ([`SandboxResources::add_volumes`]), which shares the host files and
//! directories and says what the guest makes; the spec the agent receives names the guest
//! paths, and the storages go with CreateContainer after the rootfs's. The shares are the
//! container's resources: released with it (and on a failed create) by the same
//! `remove_container` as its rootfs. Block volumes are hot-plugged here as the block rootfs
//! is ([`block::attach`]), their storages sent with the others; they are the container's
//! disks, unplugged with it.

use std::sync::{Arc, Mutex};

use kata_agent_client::Storage;
use kata_hypervisor::{BlockDevice, Hypervisor};
use kata_resource::{SandboxResources, VolumeOptions};
use oci_spec::runtime::Spec;

use super::{agent_storage, block, blocking};
use crate::builder::SandboxConfig;
use crate::error::{Error, Result};

/// How the sandbox makes volumes, from its `[runtime]` section.
#[derive(Clone, Debug, Default)]
pub(super) struct VolumeSettings {
    options: VolumeOptions,
}

impl VolumeSettings {
    /// `disable_guest_empty_dir` from `config`.
    pub(super) fn from_config(config: &SandboxConfig) -> Self {
        VolumeSettings {
            options: VolumeOptions::default()
                .disable_guest_empty_dir(config.runtime.disable_guest_empty_dir),
        }
    }
}

/// Sets up the volumes of container `container_id` (whose rootfs is set up) from `spec`'s
/// mounts: returns the spec with the mounts as the guest is to make them, and the storages
/// the agent mounts first. Block volumes are hot-plugged into `vm`, each pushed to
/// `attached` (the caller unplugs them if it fails later). On error the caller releases the
/// container (its shares and recorded disks) and unplugs `attached`.
pub(super) async fn set_up(
    resources: &Arc<Mutex<Option<SandboxResources>>>,
    settings: &VolumeSettings,
    vm: &Arc<dyn Hypervisor>,
    container_id: &str,
    mut spec: Spec,
    attached: &mut Vec<BlockDevice>,
) -> Result<(Spec, Vec<Storage>)> {
    let Some(mounts) = spec.mounts().clone().filter(|m| !m.is_empty()) else {
        return Ok((spec, Vec::new()));
    };
    let (resources, id, options) = (
        resources.clone(),
        container_id.to_owned(),
        settings.options.clone(),
    );
    let volumes = blocking("setting up a container's volumes", move || {
        let mut guard = resources.lock().unwrap();
        let r = guard.as_mut().ok_or(Error::ShutDown)?;
        Ok(r.add_volumes(&id, &mounts, &options)?)
    })
    .await?;
    let disk_storages = block::attach(vm, container_id, volumes.block_devices, attached).await?;
    spec.set_mounts(Some(volumes.mounts));
    Ok((
        spec,
        disk_storages
            .into_iter()
            .chain(volumes.storages.into_iter().map(agent_storage))
            .collect(),
    ))
}
