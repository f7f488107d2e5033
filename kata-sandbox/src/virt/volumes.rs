//! A container's volumes in a `virt_container` sandbox: the OCI spec's mounts handed to
//! kata-resource ([`SandboxResources::add_volumes`]), which shares the host files and
//! directories and says what the guest makes; the spec the agent receives names the guest
//! paths, and the storages go with CreateContainer after the rootfs's. The shares are the
//! container's resources: released with it (and on a failed create) by the same
//! `remove_container` as its rootfs.

use std::sync::{Arc, Mutex};

use kata_agent_client::Storage;
use kata_resource::{SandboxResources, VolumeOptions};
use oci_spec::runtime::Spec;

use super::{agent_storage, blocking};
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
/// the agent mounts first. On error nothing of the volumes is left; the caller releases the
/// container.
pub(super) async fn set_up(
    resources: &Arc<Mutex<Option<SandboxResources>>>,
    settings: &VolumeSettings,
    container_id: &str,
    mut spec: Spec,
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
    spec.set_mounts(Some(volumes.mounts));
    Ok((
        spec,
        volumes.storages.into_iter().map(agent_storage).collect(),
    ))
}
