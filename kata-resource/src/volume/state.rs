//! What persist records of a container's volumes: the host shares it holds (the guest-only
//! volumes need nothing on the host).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What persist records of a container's volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VolumesState {
    /// The host files and directories shared into the guest, in the order they were made.
    #[serde(default)]
    pub shares: Vec<SharedVolumeState>,
}

/// One host file or directory shared into the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SharedVolumeState {
    /// Its name in the shared directory, `<container_id>-<hex>-<base name>`.
    pub name: String,
    /// The mount point, `<sandbox_dir>/shared/<name>`.
    pub host_path: PathBuf,
    /// Where the guest sees it, `/run/kata-containers/shared/containers/<name>`.
    pub guest_path: String,
    /// The host source, symlinks resolved.
    pub source: PathBuf,
    /// Shared read-only.
    pub read_only: bool,
    /// A directory (else a file).
    pub directory: bool,
}
