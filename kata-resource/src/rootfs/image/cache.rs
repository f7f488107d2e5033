//! The unpacked-image cache: one rootfs per manifest digest, `<cache_dir>/<alg>-<hex>/rootfs`.
//!
//! The rootfses hold the image's files with the image's owners (root among them), so the cache
//! directory and its entries are 0700 and owned by the unpacker: no other host user reaches
//! a file in them, whatever its mode.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::staging::{self, StagingDir};
use super::OciImage;
use crate::error::IoContext;
use crate::Result;

/// A directory of unpacked image rootfses keyed by manifest digest, so an image is unpacked
/// once and later runs start at once.
///
/// An entry appears only when complete (it is unpacked in a staging directory and renamed),
/// so its presence means it is whole; unfinished staging directories of dead processes are
/// removed by [`ImageCache::new`]. Containers must not write into a cached rootfs: share it
/// with [`RootfsMode::Overlay`](crate::share_fs::RootfsMode::Overlay) or read-only.
///
/// The cache directory is created 0700; an existing one owned by this process's user is
/// tightened to 0700 (with its entries), one owned by another user is refused with
/// [`Error::UnsafeImageCache`](crate::Error::UnsafeImageCache).
///
/// ```no_run
/// use kata_resource::rootfs::image::{ImageCache, OciImage};
///
/// # fn main() -> kata_resource::Result<()> {
/// let cache = ImageCache::new(ImageCache::DEFAULT_DIR)?;
/// let image = OciImage::open("busybox.tar")?;
/// let rootfs = cache.rootfs(&image)?; // unpacks the first time only
/// assert!(rootfs.join("bin").is_dir());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ImageCache {
    dir: PathBuf,
}

impl ImageCache {
    /// A default location for the cache.
    pub const DEFAULT_DIR: &'static str = "/var/cache/kata-rs/images";

    /// Opens (creating it, 0700, if needed) the cache in `dir`, making it and its entries
    /// private and removing what crashed unpacks left.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).at("create directory", parent)?;
        }
        match DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(e).at("create directory", &dir);
            }
            _ => {}
        }
        make_private(&dir)?;
        staging::remove_stale(&dir)?;
        Ok(ImageCache { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the rootfs of `image` is (or would be) cached.
    pub fn rootfs_path(&self, image: &OciImage) -> PathBuf {
        self.entry_path(image).join("rootfs")
    }

    /// The cached rootfs of `image`, if it has been unpacked.
    pub fn get(&self, image: &OciImage) -> Option<PathBuf> {
        let rootfs = self.rootfs_path(image);
        rootfs.is_dir().then_some(rootfs)
    }

    /// The rootfs of `image`, unpacking it first if it is not cached yet.
    pub fn rootfs(&self, image: &OciImage) -> Result<PathBuf> {
        if let Some(rootfs) = self.get(image) {
            tracing::debug!(rootfs = %rootfs.display(), "image rootfs cached");
            return Ok(rootfs);
        }
        let entry = self.entry_path(image);
        let started = std::time::Instant::now();
        let staging = StagingDir::create(&self.dir, &entry_name(image))?;
        image.unpack_into_staging(&staging)?;
        if !staging.persist_as(&entry)? {
            tracing::debug!(entry = %entry.display(), "another unpacker finished first");
        }
        tracing::info!(
            image = %image.path().display(),
            manifest = %image.manifest_digest(),
            elapsed = ?started.elapsed(),
            "unpacked image into the cache"
        );
        Ok(self.rootfs_path(image))
    }

    /// Removes the cached rootfs of `image` (if any). No container may be using it.
    pub fn remove(&self, image: &OciImage) -> Result<()> {
        let entry = self.entry_path(image);
        // Rename first, so a half-removed entry never looks complete.
        let doomed = StagingDir::create(&self.dir, &entry_name(image))?;
        let target = doomed.path().join("old");
        match fs::rename(&entry, &target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at("remove cached rootfs", &entry),
            Ok(()) => fs::remove_dir_all(doomed.path()).at("remove cached rootfs", &entry),
        }
    }

    fn entry_path(&self, image: &OciImage) -> PathBuf {
        self.dir.join(entry_name(image))
    }
}

/// Checks the cache directory is ours and makes it and its entries 0700.
fn make_private(dir: &Path) -> Result<()> {
    let unsafe_cache = |reason: String| crate::Error::UnsafeImageCache {
        path: dir.to_owned(),
        reason,
    };
    let meta = fs::metadata(dir).at("inspect", dir)?;
    if !meta.is_dir() {
        return Err(unsafe_cache("not a directory".to_owned()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_cache(format!(
            "owned by uid {}, not by this process's uid {me}: that user could change the \
             rootfses containers run from; chown it to uid {me} or choose another directory",
            meta.uid()
        )));
    }
    tighten(dir, meta.mode())?;
    for entry in fs::read_dir(dir).at("read directory", dir)? {
        let entry = entry.at("read directory", dir)?;
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).at("inspect", &path),
        };
        if meta.is_dir() {
            tighten(&path, meta.mode())?;
        }
    }
    Ok(())
}

/// Sets `dir` to 0700 if group or others have any access.
fn tighten(dir: &Path, mode: u32) -> Result<()> {
    if mode & 0o077 != 0 {
        tracing::info!(
            dir = %dir.display(),
            mode = format_args!("{:o}", mode & 0o7777),
            "making an image cache directory private (0700)"
        );
        fs::set_permissions(dir, Permissions::from_mode(0o700)).at("set the mode of", dir)?;
    }
    Ok(())
}

/// `sha256-<hex>`: the digest without a `:`, which some tools dislike in paths.
fn entry_name(image: &OciImage) -> String {
    let digest = image.manifest_digest();
    format!("{}-{}", digest.algorithm(), digest.digest())
}
