//! Host-side resources of a kata-rs sandbox.
//!
//! A sandbox needs things on the host before and while its micro-VM runs. This crate owns them,
//! and removes everything it creates on every exit path (explicit release, drop, error):
//!
//! - [`share_fs`]: the sandbox's shared directory (`<sandbox_dir>/shared/`), exported to the
//!   guest under the mount tag `kataShared` over virtio-9p or virtio-fs, and the container
//!   rootfs bind (or overlay) mounts inside it.
//! - [`rootfs::image`]: OCI images without containerd: open an OCI image layout directory or
//!   tarball, verify every blob, unpack the layers (whiteouts included, path traversal refused)
//!   into a cache keyed by manifest digest.
//! - `testimage` (feature `test-image`): a busybox rootfs and OCI image built from Debian's
//!   `busybox-static`, for tests and examples.
//!
//! Everything here is synchronous and may block on disk I/O; async callers run it with
//! `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use kata_resource::rootfs::image::{ImageCache, OciImage};
//! use kata_resource::share_fs::{ShareFs, ShareFsKind};
//!
//! # fn main() -> kata_resource::Result<()> {
//! let image = OciImage::open("busybox.tar")?;
//! let rootfs = ImageCache::new("/var/cache/kata-rs/images")?.rootfs(&image)?;
//!
//! let share_fs = ShareFs::new("/run/kata/sandbox-1", ShareFsKind::Virtio9p)?;
//! let shared = share_fs.share_rootfs("container-1", &rootfs)?;
//! assert_eq!(
//!     shared.guest_path(),
//!     "/run/kata-containers/shared/containers/container-1/rootfs"
//! );
//! shared.release()?; // or drop it
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod container_id;
mod error;
#[cfg(any(test, feature = "test-image"))]
mod layout_writer;
mod mount;
pub mod rootfs;
pub mod share_fs;
#[cfg(feature = "test-image")]
pub mod testimage;

pub use container_id::validate_container_id;
pub use error::{Error, Result};

/// The README's example, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
