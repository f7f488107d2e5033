//! OCI images without containerd.
//!
//! [`OciImage::open`] reads an [OCI image layout] directory (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`) or a tarball of one (`.tar`, optionally gzipped), picks a manifest and
//! reads the image config. [`OciImage::unpack`] applies the layers in order into a new
//! directory; [`ImageCache::rootfs`] does so once per manifest digest and reuses the result.
//!
//! Images are hostile input: the rootfs is written on the host, by root.
//! * Every blob used is verified against its descriptor's digest and size *before* it is used:
//!   small blobs in memory, layers while they are copied into a private scratch file that is
//!   then decompressed (`blobs.rs`). No blob is read past its descriptor's size, and small
//!   blobs are size-capped before they are read.
//! * Layers are unpacked with the image-spec's whiteout rules, refusing entries that would
//!   leave the rootfs, keeping modes, ownership, symlinks, hardlinks, FIFOs and `user.*`/ACL
//!   xattrs; device nodes, setuid/setgid bits and `security.*`/`trusted.*` xattrs are left
//!   out (`layer.rs` has the exact rules).
//! * Unpacking is bounded by [`UnpackLimits`]: bytes per layer and in total, entries and
//!   compression ratio (`limits.rs`).
//! * Unpacking always happens in a private (0700) staging directory that is renamed into
//!   place at the end, so a crash never leaves a half-unpacked rootfs under the final name;
//!   the [`ImageCache`] directory and its entries are 0700.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

mod blobs;
mod cache;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod layer;
mod limits;
mod staging;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{
    Arch, Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
    Platform, ANNOTATION_REF_NAME,
};
use serde::de::DeserializeOwned;

use blobs::BlobStore;
use limits::Budget;
pub(crate) use staging::StagingDir;

use crate::error::IoContext;
use crate::{Error, Result};

pub use cache::ImageCache;
pub use limits::UnpackLimits;

/// The annotation containerd puts the full image name in (`ctr image import` reads it).
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// Docker's manifest list media type, accepted like an OCI image index.
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's image manifest media type, accepted like an OCI image manifest.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's image config media type.
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's layer media types (gzipped tar).
const DOCKER_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
/// How deep image indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

/// An OCI image, opened from a layout directory or tarball, with its manifest chosen and its
/// config read. Cheap to clone.
///
/// ```no_run
/// use kata_resource::rootfs::image::OciImage;
///
/// # fn main() -> kata_resource::Result<()> {
/// let image = OciImage::open_ref("images/busybox.tar", "latest")?;
/// let config = image.config().config().clone().unwrap_or_default();
/// println!("{} runs {:?}", image.manifest_digest(), config.cmd());
/// image.unpack("/tmp/busybox-rootfs".as_ref())?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct OciImage {
    store: Arc<BlobStore>,
    manifest_digest: Digest,
    manifest: ImageManifest,
    config: ImageConfiguration,
    reference: Option<String>,
    limits: UnpackLimits,
}

impl OciImage {
    /// Opens the image at `path` (layout directory or tarball) and picks its manifest: the only
    /// one, or among several the one for this host's platform (`linux/amd64` on x86_64).
    /// Several images in one layout are an [`Error::AmbiguousManifest`]: use
    /// [`OciImage::open_ref`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_limits(path, None, UnpackLimits::default())
    }

    /// Opens the image at `path` and picks the manifest whose
    /// `org.opencontainers.image.ref.name` (or containerd's `io.containerd.image.name`)
    /// annotation is `reference`.
    pub fn open_ref(path: impl AsRef<Path>, reference: &str) -> Result<Self> {
        Self::open_with_limits(path, Some(reference), UnpackLimits::default())
    }

    /// Opens the image at `path` like [`OciImage::open`] (`reference: None`) or
    /// [`OciImage::open_ref`], with other [`UnpackLimits`] than the defaults: they bound
    /// reading a gzipped image tarball and every later unpack of this image.
    pub fn open_with_limits(
        path: impl AsRef<Path>,
        reference: Option<&str>,
        limits: UnpackLimits,
    ) -> Result<Self> {
        Self::open_inner(path.as_ref(), reference, limits)
    }

    fn open_inner(path: &Path, reference: Option<&str>, limits: UnpackLimits) -> Result<Self> {
        let opened = BlobStore::open(path, &limits)?;
        let store = opened.store;
        let index: ImageIndex = parse_json(&store, "index.json", &opened.index_json)?;
        let chosen = select_manifest(&store, index.manifests(), reference)?;
        let reference = reference
            .map(str::to_owned)
            .or_else(|| annotation(&chosen, ANNOTATION_REF_NAME).map(str::to_owned));
        let manifest_desc = resolve_to_manifest(&store, chosen, 0)?;

        let what = format!("manifest {}", manifest_desc.digest());
        let data = store.read_verified(&manifest_desc, "manifest")?;
        let manifest: ImageManifest = parse_json(&store, &what, &data)?;

        let config_desc = manifest.config();
        match config_desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(t) if t == DOCKER_CONFIG => {}
            other => return Err(unsupported(&store, "config", config_desc, other)),
        }
        for layer in manifest.layers() {
            check_layer_media_type(&store, layer)?;
        }
        let what = format!("config {}", config_desc.digest());
        let data = store.read_verified(config_desc, "config")?;
        let config: ImageConfiguration = parse_json(&store, &what, &data)?;

        tracing::debug!(
            image = %path.display(),
            manifest = %manifest_desc.digest(),
            layers = manifest.layers().len(),
            "opened OCI image"
        );
        Ok(OciImage {
            store: Arc::new(store),
            manifest_digest: manifest_desc.digest().clone(),
            manifest,
            config,
            reference,
            limits,
        })
    }

    /// The bounds on unpacking this image.
    pub fn unpack_limits(&self) -> &UnpackLimits {
        &self.limits
    }

    /// The layout directory or tarball the image was opened from.
    pub fn path(&self) -> &Path {
        self.store.image_path()
    }

    /// The digest of the chosen manifest: the image's identity, and the cache key.
    pub fn manifest_digest(&self) -> &Digest {
        &self.manifest_digest
    }

    /// The chosen manifest.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// The image config: `config().config()` holds Entrypoint, Cmd, Env, WorkingDir, User.
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }

    /// The reference name the manifest was chosen by, or its ref-name annotation.
    pub fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }

    /// Unpacks the layers into `dest`, which must not exist (its parent must). The rootfs is
    /// built in a private staging directory next to `dest` and renamed into place when
    /// complete; `dest` then has the mode the image gives its root (0755 if none).
    pub fn unpack(&self, dest: &Path) -> Result<()> {
        if dest.symlink_metadata().is_ok() {
            return Err(Error::DestinationExists {
                path: dest.to_owned(),
            });
        }
        let (parent, name) = match (dest.parent(), dest.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => {
                return Err(Error::DestinationExists {
                    path: dest.to_owned(),
                })
            }
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let staging = StagingDir::create(parent, &name.to_string_lossy())?;
        let rootfs = self.unpack_into_staging(&staging)?;
        std::fs::rename(&rootfs, dest).at("move the unpacked rootfs to", dest)?;
        drop(staging);
        Ok(())
    }

    /// Unpacks into `<staging>/rootfs` and removes the scratch space; returns the rootfs path.
    fn unpack_into_staging(&self, staging: &StagingDir) -> Result<PathBuf> {
        let rootfs = staging.path().join("rootfs");
        let scratch = staging.path().join("blobs");
        std::fs::create_dir(&rootfs).at("create directory", &rootfs)?;
        let layers = self.manifest.layers();
        for desc in layers {
            self.limits
                .check_layer_blob(desc.digest().as_ref(), desc.size())?;
        }
        let staged = self.store.stage_large_blobs(layers, &scratch)?;
        let mut budget = Budget::new(&self.limits);
        for desc in layers {
            let mut blob = self.store.verified_layer(desc, &staged, &scratch)?;
            tracing::debug!(layer = %desc.digest(), size = desc.size(), "applying layer");
            let digest = desc.digest().to_string();
            layer::apply_layer(&rootfs, &digest, &mut blob, desc.size(), &mut budget)?;
            blob.discard()?;
        }
        match std::fs::remove_dir_all(&scratch) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).at("remove directory", &scratch);
            }
            _ => {}
        }
        Ok(rootfs)
    }
}

/// This host's platform as OCI names it: `linux` and the GOARCH name of the CPU.
pub(crate) fn host_platform() -> (Os, Arch) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        "s390x" => Arch::s390x,
        "powerpc64" => Arch::PowerPC64le,
        "riscv64" => Arch::RISCV64,
        other => Arch::Other(other.to_owned()),
    };
    (Os::Linux, arch)
}

fn platform_matches(platform: &Platform) -> bool {
    let (os, arch) = host_platform();
    *platform.os() == os && *platform.architecture() == arch
}

fn platform_name() -> String {
    let (os, arch) = host_platform();
    format!("{os}/{arch}")
}

fn annotation<'a>(desc: &'a Descriptor, key: &str) -> Option<&'a str> {
    desc.annotations().as_ref()?.get(key).map(String::as_str)
}

/// `name@digest (os/arch)`, for error messages.
fn describe(desc: &Descriptor) -> String {
    let name = annotation(desc, ANNOTATION_REF_NAME)
        .or_else(|| annotation(desc, ANNOTATION_CONTAINERD_IMAGE_NAME));
    let mut out = match name {
        Some(name) => format!("{name}@{}", desc.digest()),
        None => desc.digest().to_string(),
    };
    if let Some(platform) = desc.platform() {
        out.push_str(&format!(" ({}/{})", platform.os(), platform.architecture()));
    }
    out
}

/// Picks one descriptor of an index: by reference name if given, then by platform.
fn select_manifest(
    store: &BlobStore,
    manifests: &[Descriptor],
    reference: Option<&str>,
) -> Result<Descriptor> {
    let image = || store.image_path().to_owned();
    let candidates: Vec<&Descriptor> = match reference {
        Some(reference) => {
            let named: Vec<_> = manifests
                .iter()
                .filter(|d| {
                    annotation(d, ANNOTATION_REF_NAME) == Some(reference)
                        || annotation(d, ANNOTATION_CONTAINERD_IMAGE_NAME) == Some(reference)
                })
                .collect();
            if named.is_empty() {
                return Err(Error::ImageRefNotFound {
                    image: image(),
                    reference: reference.to_owned(),
                    available: manifests.iter().map(describe).collect(),
                });
            }
            named
        }
        None => manifests.iter().collect(),
    };
    if let [only] = candidates.as_slice() {
        return Ok((*only).clone());
    }
    if candidates.is_empty() {
        return Err(Error::NotAnImageLayout {
            path: image(),
            reason: "index.json lists no manifests".to_owned(),
        });
    }
    let for_host: Vec<_> = candidates
        .iter()
        .filter(|d| d.platform().as_ref().is_some_and(platform_matches))
        .collect();
    match for_host.as_slice() {
        [only] => Ok((**only).clone()),
        [] if candidates.iter().any(|d| d.platform().is_some()) => Err(Error::NoMatchingPlatform {
            image: image(),
            platform: platform_name(),
            available: candidates.iter().map(|d| describe(d)).collect(),
        }),
        _ => Err(Error::AmbiguousManifest {
            image: image(),
            candidates: candidates.iter().map(|d| describe(d)).collect(),
        }),
    }
}

/// Follows (possibly nested) image indexes down to an image manifest for this host.
fn resolve_to_manifest(store: &BlobStore, desc: Descriptor, depth: usize) -> Result<Descriptor> {
    match desc.media_type() {
        MediaType::ImageManifest => Ok(desc),
        MediaType::Other(t) if t == DOCKER_MANIFEST => Ok(desc),
        MediaType::ImageIndex if depth < MAX_INDEX_DEPTH => resolve_index(store, &desc, depth),
        MediaType::Other(t) if t == DOCKER_MANIFEST_LIST && depth < MAX_INDEX_DEPTH => {
            resolve_index(store, &desc, depth)
        }
        other => Err(unsupported(store, "manifest", &desc, other)),
    }
}

fn resolve_index(store: &BlobStore, desc: &Descriptor, depth: usize) -> Result<Descriptor> {
    let what = format!("image index {}", desc.digest());
    let data = store.read_verified(desc, "image index")?;
    let index: ImageIndex = parse_json(store, &what, &data)?;
    let chosen = select_manifest(store, index.manifests(), None)?;
    resolve_to_manifest(store, chosen, depth + 1)
}

fn check_layer_media_type(store: &BlobStore, desc: &Descriptor) -> Result<()> {
    match desc.media_type() {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip => Ok(()),
        MediaType::Other(t) if DOCKER_LAYERS.contains(&t.as_str()) => Ok(()),
        other => Err(unsupported(store, "layer", desc, other)),
    }
}

fn unsupported(
    store: &BlobStore,
    what: &'static str,
    desc: &Descriptor,
    media: &MediaType,
) -> Error {
    Error::UnsupportedMediaType {
        image: store.image_path().to_owned(),
        what,
        digest: desc.digest().to_string(),
        media_type: media.to_string(),
    }
}

fn parse_json<T: DeserializeOwned>(store: &BlobStore, what: &str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|source| Error::InvalidJson {
        image: store.image_path().to_owned(),
        what: what.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
