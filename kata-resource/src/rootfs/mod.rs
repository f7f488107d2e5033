//! Container root filesystems on the host.
//!
//! A container's rootfs is a directory the caller already has, shared as it is; an OCI
//! bundle's rootfs ([`bundle_rootfs_path`]) with containerd's mounts ([`RootfsMount`]), which
//! this crate mounts itself; or an OCI image unpacked by [`image`] (no containerd needed).
//! Either way it reaches the guest through [`crate::share_fs`], owned by
//! [`crate::SandboxResources`].

pub mod block;
mod bundle;
pub mod image;
mod mounts;

pub(crate) use bundle::BundleRootfs;
pub use bundle::{bundle_rootfs_path, DEFAULT_ROOT_PATH};
pub use mounts::RootfsMount;
