//! Host-side resources of a kata-rs sandbox.
//!
//! A sandbox needs things on the host before and while its micro-VM runs. One owner,
//! [`SandboxResources`], holds them all for a sandbox and its containers, yields the devices
//! to attach and the guest storages to send, and removes everything it created on every exit
//! path (explicit release, drop, error); it detaches, adopts and cleans up as one unit for a
//! restarted runtime. The modules doing the work:
//!
//! - [`share_fs`]: the sandbox's shared directory (`<sandbox_dir>/shared/`), exported to the
//!   guest under the mount tag `kataShared` over virtio-9p or virtio-fs, and the container
//!   rootfs bind (or overlay) mounts inside it.
//! - [`volume`]: a container's OCI mounts for the guest: host files and directories bound
//!   through the shared directory, the pod's `/dev/shm` and emptyDirs made in the guest,
//!   `sandbox_bind_mounts`.
//! - [`rootfs`]: where a container rootfs comes from: an OCI bundle's `root.path` (checked to
//!   stay inside the bundle) with containerd's rootfs mounts, which this crate mounts, or
//!   [`rootfs::image`]: OCI images without containerd, verified and unpacked (whiteouts
//!   included, path traversal refused) into a cache keyed by manifest digest.
//! - [`cgroups`]: the sandbox's cgroup on the host (from the spec's `linux.cgroupsPath`, v1
//!   or v2), where the VMM and its helpers run as `sandbox_cgroup_only` says.
//! - [`safe_child`] and [`path_within`]: the checked path helpers every path built from an id,
//!   an annotation or a spec goes through.
//!
//! Every host mount this crate makes is `nosuid,nodev`. Everything here is synchronous and may
//! block on disk I/O; async callers run it with `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use kata_hypervisor::{Capabilities, SharedFs};
//! use kata_resource::rootfs::image::{ImageCache, OciImage};
//! use kata_resource::{RootfsMode, RootfsSource, SandboxResources};
//!
//! # fn main() -> kata_resource::Result<()> {
//! let image = OciImage::open("busybox.tar")?;
//! let rootfs = ImageCache::new("/var/cache/kata-rs/images")?.rootfs(&image)?;
//!
//! let mut resources = SandboxResources::new("/run/kata/sandbox-1", SharedFs::Virtio9p, 8192)?;
//! let _cold_plug = resources.devices();
//! let _create_sandbox = resources.sandbox_storages(&Capabilities::default());
//! let c1 = resources.add_container("container-1", RootfsSource::Directory(rootfs), RootfsMode::Overlay)?;
//! assert_eq!(
//!     c1.rootfs_path,
//!     "/run/kata-containers/shared/containers/container-1/rootfs"
//! );
//! resources.release()?; // or drop it
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod cdi;
pub mod cgroups;
mod container_id;
mod error;
mod fail_point;
mod mount;
pub mod network;
mod path;
pub mod rootfs;
mod sandbox_resources;
pub mod share_fs;
mod storage;
pub mod vfio;
pub mod vfio_ap;
pub mod volume;

pub use container_id::validate_container_id;
pub use error::{Error, Result};
pub use path::{open_in_root, path_within, safe_child};
pub use rootfs::RootfsMount;
pub use sandbox_resources::{
    CgroupsState, ContainerGuestResources, ContainerResourcesState, DevicesState, NetworkState,
    ResourcesState, RootfsSource, RootfsSourceState, RootfsState, SandboxResources, VolumesState,
};
pub use share_fs::{RootfsMode, ShareFsConfig};
pub use storage::GuestStorage;
pub use volume::{ContainerVolumes, VolumeOptions};

/// The README's example, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
