//! [`ResourcesState`]: what persist writes of a sandbox's host resources, enough for
//! [`SandboxResources::adopt`](super::SandboxResources::adopt) to take them over and for
//! [`SandboxResources::cleanup`](super::SandboxResources::cleanup) to remove them after a crash.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kata_hypervisor::SharedFs;
use serde::{Deserialize, Serialize};

pub use super::slots::{CgroupsState, DevicesState, NetworkState, VolumesState};
use crate::rootfs::RootfsMount;
use crate::share_fs::RootfsMode;

/// The host resources of a sandbox, as persist records them.
///
/// Paths under the sandbox directory are recorded as they were (canonical) and checked
/// against the sandbox directory on adoption; cleanup derives them from the sandbox directory
/// and uses the recorded ones only for what lies outside it (a bundle's rootfs mounts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesState {
    /// How the shared directory reaches the guest (`none`: there is none).
    pub shared_fs: SharedFs,
    /// The 9p `msize` the guest mounts the share with.
    pub msize_9p: u32,
    /// The shared directory, `<sandbox_dir>/shared`, when there is one.
    pub shared_dir: Option<PathBuf>,
    /// The virtiofsd serving the share (`virtio-fs`).
    #[serde(default)]
    pub virtiofsd: Option<crate::share_fs::VirtiofsdState>,
    /// Each container's resources, by container id.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerResourcesState>,
    /// The sandbox's network (slot, empty today).
    #[serde(default)]
    pub network: NetworkState,
    /// The sandbox's host cgroups (slot, empty today).
    #[serde(default)]
    pub cgroups: CgroupsState,
    /// The sandbox's devices (slot, empty today).
    #[serde(default)]
    pub devices: DevicesState,
    /// `sandbox_bind_mounts`: host paths shared with the guest for the whole sandbox.
    #[serde(default)]
    pub sandbox_bind_mounts: VolumesState,
}

/// One container's host resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerResourcesState {
    /// Its rootfs.
    pub rootfs: RootfsState,
    /// Its volumes (slot, empty today).
    #[serde(default)]
    pub volumes: VolumesState,
}

/// A container's rootfs: where it comes from and where it is mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsState {
    /// What was shared.
    pub source: RootfsSourceState,
    /// How it is mounted into the shared directory.
    pub mode: RootfsMode,
    /// The mount point in the shared directory, `<sandbox_dir>/shared/<id>/rootfs`.
    pub mount_point: PathBuf,
    /// Where the guest sees it: the OCI spec's `root.path` for the agent.
    pub guest_path: String,
    /// The overlay's upper and work dirs, `<sandbox_dir>/rootfs-overlay/<id>`, in overlay mode.
    #[serde(default)]
    pub overlay_dir: Option<PathBuf>,
}

/// What a container's rootfs was made from. Serialized with a `kind` of `directory` or
/// `bundle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RootfsSourceState {
    /// A host directory, shared as it is (nothing of it is unmounted but the share).
    Directory {
        /// The directory.
        path: PathBuf,
    },
    /// An OCI bundle's rootfs, with containerd's mounts this crate made on it.
    Bundle {
        /// The bundle (canonical).
        bundle: PathBuf,
        /// The rootfs directory inside it (canonical): the mount point of `mounts`.
        target: PathBuf,
        /// containerd's mounts made on `target`, bottom first (none: nothing to unmount).
        mounts: Vec<RootfsMount>,
    },
    /// A block device or image file given to the VM as a disk (the devices slot records
    /// the disk); nothing of it is mounted on the host.
    Block {
        /// The block device or image file.
        path: PathBuf,
    },
}
