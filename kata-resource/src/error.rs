//! The crate's error type: one enum, each variant naming the thing that failed.

use std::io;
use std::path::{Path, PathBuf};

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in kata-resource.
///
/// Every variant names what failed (a path, a container id, a blob digest, a layer entry), so
/// the message alone tells a user where to look.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sandbox spec's `linux.cgroupsPath` cannot name the sandbox's cgroup.
    #[error("linux.cgroupsPath {value:?} is refused: {reason}")]
    CgroupsPath {
        /// The refused value.
        value: String,
        /// Why, and what is allowed.
        reason: String,
    },

    /// A cgroup controller the sandbox needs is missing on the host.
    #[error(
        "the host's cgroup controller {controller} is missing under {} for the sandbox's \
         cgroup (linux.cgroupsPath): {reason}",
        root.display()
    )]
    CgroupController {
        /// The controller (`cpu`, `cpuset`, `memory`).
        controller: String,
        /// Where the cgroup filesystems were looked for.
        root: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// An operation on the sandbox's host cgroup failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Cgroup {
        /// What was being done, e.g. "move process 42 into".
        action: String,
        /// The cgroup directory or control file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The host refused a limit for the sandbox's cgroup.
    #[error(
        "the host refused {field} = {value:?} for the sandbox's cgroup ({}): {source}",
        file.display()
    )]
    CgroupLimit {
        /// The spec field the value comes from, e.g. `linux.resources.cpu.cpus`.
        field: String,
        /// The value written.
        value: String,
        /// The control file.
        file: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },

    /// A cpuset list (`0-3,6`) in a container's resources is malformed.
    #[error("{field} {value:?} is refused: {reason} (a list such as \"0-3,6\")")]
    CpusetList {
        /// The spec field, e.g. `linux.resources.cpu.cpus`.
        field: String,
        /// The refused value.
        value: String,
        /// Why.
        reason: String,
    },

    /// A filesystem operation on `path` failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A container id that cannot name a container (see [`crate::validate_container_id`]).
    #[error("invalid container id {id:?}: {reason}")]
    InvalidContainerId {
        /// The refused id.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A name that would become a host path component is refused (see [`crate::safe_child`]).
    #[error("{name:?} cannot name an entry of {}: {reason}", root.display())]
    InvalidPathComponent {
        /// The refused name.
        name: String,
        /// The directory it would have named an entry of.
        root: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A path given by a caller or a spec leaves the directory it must stay in (see
    /// [`crate::path_within`]).
    #[error("{field} {} is refused: {reason} (it must be inside {})", path.display(), root.display())]
    PathNotWithin {
        /// Which setting the path comes from, e.g. `root.path`.
        field: &'static str,
        /// The refused path.
        path: PathBuf,
        /// The directory it must be inside.
        root: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },

    /// `shared_fs` names a kind this crate cannot set up.
    #[error(
        "shared_fs = \"{shared_fs}\" is not supported by kata-resource \
         (supported: \"virtio-9p\", \"virtio-fs\", \"none\")"
    )]
    UnsupportedSharedFs {
        /// The configured kind, as Kata's configuration spells it.
        shared_fs: String,
    },

    /// A container rootfs needs the shared filesystem, and the sandbox has none.
    #[error(
        "the rootfs of container {container_id} cannot reach the guest: shared_fs = \"none\" \
         and block-device rootfs is not supported yet (set shared_fs to \"virtio-9p\" or \
         \"virtio-fs\")"
    )]
    NoSharedFs {
        /// The container.
        container_id: String,
    },

    /// A rootfs mount from containerd that this crate refuses to perform.
    #[error("rootfs mount `{fs_type}` of {mount_source:?} on {}: {reason}", target.display())]
    RootfsMountRefused {
        /// The mount's type (`overlay`, `bind`, ...).
        fs_type: String,
        /// The mount's source.
        mount_source: String,
        /// Where it was to be mounted.
        target: PathBuf,
        /// What is refused and what is supported.
        reason: String,
    },

    /// The sandbox's shared directory already exists, probably left by a sandbox that crashed.
    #[error(
        "share-fs directory {} already exists (left by an earlier sandbox? \
         ShareFs::remove_stale removes it)",
        path.display()
    )]
    ShareFsExists {
        /// The existing directory.
        path: PathBuf,
    },

    /// A block device or image file meant for the guest (a block rootfs or volume) cannot be
    /// used.
    #[error("{field} {}: {reason}", path.display())]
    BlockSource {
        /// Where it was named (`rootfs mount source`, `mounts[2].source`, ...).
        field: String,
        /// The device or file.
        path: PathBuf,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// The rootfs of this container is already shared in this sandbox.
    #[error("the rootfs of container {container_id} is already shared at {}", path.display())]
    RootfsAlreadyShared {
        /// The container.
        container_id: String,
        /// Where its rootfs is shared.
        path: PathBuf,
    },

    /// A shared directory or container rootfs to adopt (from a sandbox another process set
    /// up) is not there as expected.
    #[error("cannot adopt {}: {reason}", path.display())]
    NotAdoptable {
        /// The directory or mount point.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// The sandbox's virtiofsd (`shared_fs = "virtio-fs"`) could not be configured or
    /// started (see [`crate::share_fs::VirtiofsdError`]).
    #[error(transparent)]
    Virtiofsd(Box<crate::share_fs::VirtiofsdError>),

    /// The rootfs to share is not a directory.
    #[error("rootfs {} of container {container_id} is not a directory", path.display())]
    RootfsNotADirectory {
        /// The container.
        container_id: String,
        /// The rootfs given.
        path: PathBuf,
    },

    /// A path cannot be handed to overlayfs (its mount options are comma and colon separated).
    #[error("{} cannot be used in an overlay mount: it contains `,`, `:` or `\\`", path.display())]
    OverlayPath {
        /// The path.
        path: PathBuf,
    },

    /// mount(2) failed.
    #[error("cannot mount {what} on {}: {errno}", target.display())]
    Mount {
        /// What was mounted ("bind of /path", "overlay of /path").
        what: String,
        /// The mount point.
        target: PathBuf,
        /// The error mount(2) returned.
        #[source]
        errno: nix::Error,
    },

    /// umount2(2) failed, even lazily.
    #[error("cannot unmount {}: {errno}", target.display())]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The error umount2(2) returned.
        #[source]
        errno: nix::Error,
    },

    /// Mounts are still present under a directory this crate was about to remove.
    #[error("{} still has mounts under it, not removing it: {}", dir.display(), join_paths(mounts))]
    MountsRemain {
        /// The directory.
        dir: PathBuf,
        /// The mount points left.
        mounts: Vec<PathBuf>,
    },

    /// The path is neither an OCI image layout directory nor a tarball of one.
    #[error("{} is not an OCI image layout or a tarball of one: {reason}", path.display())]
    NotAnImageLayout {
        /// The path given.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },

    /// A blob the image refers to is not in the layout.
    #[error("image {}: blob {digest} is missing", image.display())]
    BlobMissing {
        /// The image layout or tarball.
        image: PathBuf,
        /// The missing blob.
        digest: String,
    },

    /// A blob's content does not hash to its digest.
    #[error("blob {digest}: content does not match its digest (it hashes to {actual})")]
    DigestMismatch {
        /// The digest the blob is referred to by.
        digest: String,
        /// The digest of what was read.
        actual: String,
    },

    /// A blob's size differs from its descriptor's.
    #[error("blob {digest}: {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// The size read.
        actual: u64,
    },

    /// A blob is larger than this crate reads into memory (manifests, indexes, configs).
    #[error("blob {digest}: {size} bytes is too large for a {what} (limit {limit})")]
    BlobTooLarge {
        /// The blob.
        digest: String,
        /// What the blob was expected to be.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// A digest whose algorithm this crate cannot verify.
    #[error("blob {digest}: unsupported digest algorithm (sha256 and sha512 are supported)")]
    UnsupportedDigest {
        /// The digest.
        digest: String,
    },

    /// A JSON document of the image (index, manifest, config) does not parse.
    #[error("image {}: invalid {what}: {source}", image.display())]
    InvalidJson {
        /// The image layout or tarball.
        image: PathBuf,
        /// Which document, e.g. "manifest sha256:...".
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// No manifest carries the requested reference name.
    #[error(
        "image {}: no manifest named {reference:?} (available: {})",
        image.display(),
        join_or_none(available)
    )]
    ImageRefNotFound {
        /// The image layout or tarball.
        image: PathBuf,
        /// The reference name asked for.
        reference: String,
        /// The manifests present.
        available: Vec<String>,
    },

    /// Several manifests and nothing to choose one: pass a reference name.
    #[error(
        "image {}: {} manifests and no reference name to choose one: {}",
        image.display(),
        candidates.len(),
        candidates.join(", ")
    )]
    AmbiguousManifest {
        /// The image layout or tarball.
        image: PathBuf,
        /// The manifests present.
        candidates: Vec<String>,
    },

    /// An image index has no manifest for the host's platform.
    #[error(
        "image {}: no manifest for platform {platform} (available: {})",
        image.display(),
        join_or_none(available)
    )]
    NoMatchingPlatform {
        /// The image layout or tarball.
        image: PathBuf,
        /// The platform wanted, e.g. "linux/amd64".
        platform: String,
        /// The manifests present.
        available: Vec<String>,
    },

    /// A descriptor's media type is not one this crate can use there.
    #[error("image {}: {what} {digest} has unsupported media type {media_type}", image.display())]
    UnsupportedMediaType {
        /// The image layout or tarball.
        image: PathBuf,
        /// The role of the blob ("manifest", "config", "layer").
        what: &'static str,
        /// The blob.
        digest: String,
        /// Its media type.
        media_type: String,
    },

    /// A layer entry was refused: path traversal, absolute path, symlink escape, bad whiteout.
    #[error("layer {layer}: refusing entry {entry:?}: {reason}")]
    UnsafeLayerEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's path in the layer tarball.
        entry: String,
        /// Why it was refused.
        reason: String,
    },

    /// Applying a layer entry failed.
    #[error("layer {layer}: entry {entry:?}: cannot {action}: {source}")]
    LayerEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's path in the layer tarball.
        entry: String,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A layer could not be read (corrupt tar or compression, truncated blob).
    #[error("layer {layer}: cannot read it: {source}")]
    LayerRead {
        /// The layer's digest.
        layer: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Unpacking an image went past one of its
    /// [`UnpackLimits`](crate::rootfs::image::UnpackLimits).
    #[error(
        "{subject}: {problem}; the limit is UnpackLimits::{limit} = {value} \
         (raise it with OciImage::open_with_limits if the image is trusted)"
    )]
    UnpackLimit {
        /// What went past the limit: "layer sha256:...", "image tarball /path".
        subject: String,
        /// By how much, in words.
        problem: String,
        /// The `UnpackLimits` field.
        limit: &'static str,
        /// Its value.
        value: String,
    },

    /// The image cache directory is not safe to keep rootfses in.
    #[error("image cache {}: {reason}", path.display())]
    UnsafeImageCache {
        /// The cache directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The directory to unpack into already exists.
    #[error("cannot unpack into {}: it already exists", path.display())]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },

    /// The pod's network namespace, as the OCI spec names it, does not exist.
    #[error(
        "linux.namespaces[network].path {} does not exist: the pod's network namespace (made \
         by CNI or the caller) must exist before the sandbox starts",
        path.display()
    )]
    NetnsNotFound {
        /// The path from the spec.
        path: PathBuf,
    },

    /// The path the OCI spec gives as the pod's network namespace is not one.
    #[error("linux.namespaces[network].path {} is not a network namespace: {reason}", path.display())]
    NotANetns {
        /// The path from the spec.
        path: PathBuf,
        /// What it is instead, or why it cannot be opened.
        reason: String,
    },

    /// A network setting this crate refuses, or a combination Kata does not allow.
    #[error("{key} = {value}: {reason}")]
    NetworkSetting {
        /// The configuration key, e.g. `internetworking_model`.
        key: &'static str,
        /// Its value, as the configuration spells it.
        value: String,
        /// What is wrong and what is supported.
        reason: String,
    },

    /// Setting up or tearing down the sandbox's network in the pod's namespace failed.
    #[error("network namespace {}: cannot {action}: {reason}", netns.display())]
    Network {
        /// The pod's network namespace.
        netns: PathBuf,
        /// What was being done, naming the interface or tap.
        action: String,
        /// The cause (a command's stderr, an errno) and, where known, the fix.
        reason: String,
    },

    /// Volumes were asked for a container that has no resources in this sandbox.
    #[error(
        "container {container_id} has no resources in this sandbox: add it (add_container) \
         before its volumes"
    )]
    UnknownContainer {
        /// The container.
        container_id: String,
    },

    /// A volume's host source does not exist (an OCI `mounts[i].source`).
    #[error(
        "{field} {} does not exist on the host: create it before the container, or fix the \
         mount's source",
        path.display()
    )]
    VolumeSourceNotFound {
        /// The spec field, e.g. `mounts[3].source`.
        field: String,
        /// The path from the spec.
        path: PathBuf,
    },

    /// A volume this crate refuses to share (an OCI mount, or a `sandbox_bind_mounts` entry).
    #[error("{field} {} is refused: {reason}", path.display())]
    VolumeRefused {
        /// The spec field or setting, e.g. `mounts[3].source`, `sandbox_bind_mounts[0]`.
        field: String,
        /// The path it names.
        path: PathBuf,
        /// Why, and what is accepted.
        reason: String,
    },

    /// A host program this crate needs is missing.
    #[error("{} not found: install Debian's {package} package", path.display())]
    MissingHostProgram {
        /// The program's path.
        path: PathBuf,
        /// The Debian package providing it.
        package: &'static str,
    },

    /// A host program this crate needs is there but cannot be used.
    #[error("{} cannot be used: {reason} (install Debian's {package} package)", path.display())]
    UnusableHostProgram {
        /// The program's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
        /// The Debian package providing a usable one.
        package: &'static str,
    },

    /// A host command failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or the spawn error.
        reason: String,
    },

    /// A VFIO device a container names cannot be passed through.
    #[error("VFIO device {}: {reason}", path.display())]
    Vfio {
        /// The node the spec names (`/dev/vfio/<group>`).
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A CDI device a container names by annotation cannot be resolved ([`crate::cdi`]).
    #[error("CDI device of {what}: {reason}")]
    Cdi {
        /// The annotation (and, once found, the device and its spec file).
        what: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Adds the action and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`Error::Io`] naming `action` and `path`.
    fn at(self, action: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        })
    }
}
