//! Container root filesystems on the host.
//!
//! A container's rootfs is either a directory the caller already has, shared as it is, or an
//! OCI image unpacked by [`image`] (no containerd needed). Either way it reaches the guest
//! through [`crate::share_fs`].

pub mod image;
