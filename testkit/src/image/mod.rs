//! Test images built from Debian's `busybox-static`, for the tests, examples and benches of
//! kata-rs (the published crates do not carry them).
//!
//! [`busybox_rootfs`] writes a rootfs directory: `/bin/busybox`, a symlink in `/bin` for every
//! applet `busybox --list` prints, `/etc/passwd` and `/etc/group` with `root` (0) and `user`
//! (1000:1000), and the usual empty directories. [`busybox_image_tar`] writes the same tree as
//! an OCI image layout tarball (one gzipped layer, `Cmd ["sh"]`, a `PATH`), which
//! kata-resource's `OciImage::open` and containerd's `ctr image import` both accept (named
//! [`IMAGE_NAME`]). Everything is reproducible: fixed mtimes and owners, sorted entries, so the
//! manifest digest depends only on the busybox binary. [`layout`] writes the OCI image layouts
//! (and crafted, hostile ones for kata-resource's tests).
//!
//! ```no_run
//! use kata_testkit::image;
//!
//! # fn main() -> Result<(), image::Error> {
//! image::busybox_rootfs("/tmp/busybox-rootfs".as_ref())?;
//! let image = image::busybox_image_tar("/tmp/busybox.tar".as_ref())?;
//! println!("{} is {}", image.name, image.manifest_digest);
//! # Ok(())
//! # }
//! ```

pub mod ext4;
pub mod layout;
pub mod pause;

use std::fs::{self, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use oci_spec::image::ANNOTATION_REF_NAME;
use serde::Serialize;

use layout::{blob_path, ImageSpec, IndexEntry, LayoutWriter, TarBuilder, FIXED_MTIME};

/// The annotation containerd puts the full image name in (`ctr image import` reads it).
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// Where Debian's `busybox-static` installs busybox.
pub const BUSYBOX_PATH: &str = "/bin/busybox";
/// The Debian package providing a static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The image's full name (the `io.containerd.image.name` annotation; `ctr` lists it so).
pub const IMAGE_NAME: &str = "localhost/kata-rs/busybox:latest";
/// The image's `org.opencontainers.image.ref.name` annotation.
pub const IMAGE_REF_NAME: &str = "latest";
/// The image's `PATH`.
pub const IMAGE_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The uid and gid of the unprivileged `user` account of the rootfs.
pub const USER_ID: u32 = 1000;

/// Why a test image could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The destination exists already.
    #[error("{}: exists already: remove it or choose another path", path.display())]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
    /// Busybox is not installed.
    #[error("{}: not found: install Debian's {package} (apt-get install {package})", path.display())]
    MissingBusybox {
        /// Where it was looked for.
        path: PathBuf,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// Busybox is there but cannot be used in an empty rootfs.
    #[error("{}: {reason}: install Debian's {package} (a static busybox)", path.display())]
    UnusableBusybox {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
        /// The Debian package providing a usable one.
        package: &'static str,
    },
    /// A command failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its error or exit status and stderr.
        reason: String,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was done (`create directory`, `write`, ...).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The result of the image builders.
pub type Result<T> = std::result::Result<T, Error>;

/// Names the action and path of an I/O error.
trait IoContext<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        })
    }
}

/// A test image written by [`busybox_image_tar`] or [`busybox_image_layout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestImage {
    /// The tarball or layout directory.
    pub path: PathBuf,
    /// Its full name, [`IMAGE_NAME`].
    pub name: String,
    /// Its ref-name annotation, [`IMAGE_REF_NAME`].
    pub ref_name: String,
    /// The manifest digest, `sha256:<hex>`.
    pub manifest_digest: String,
}

/// Writes the busybox rootfs at `dest`, which must not exist (its parent must). Built in a
/// staging directory and renamed into place.
pub fn busybox_rootfs(dest: &Path) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        return Err(Error::DestinationExists {
            path: dest.to_owned(),
        });
    }
    let entries = busybox_tree()?;
    let staging = staging_next_to(dest)?;
    let root = staging.path().join("rootfs");
    fs::create_dir(&root).at("create directory", &root)?;
    for entry in &entries {
        entry.write_under(&root)?;
    }
    // Directory mtimes last: creating their entries changed them.
    for entry in entries.iter().filter(|e| matches!(e.node, Node::Dir)) {
        set_mtime(&root.join(&entry.path))?;
    }
    set_mtime(&root)?;
    fs::rename(&root, dest).at("move the rootfs to", dest)?;
    Ok(())
}

/// Writes the busybox image as an OCI image layout tarball (uncompressed) at `dest`, replacing
/// any file there. Also carries a docker-archive `manifest.json`, so `docker load` takes it.
pub fn busybox_image_tar(dest: &Path) -> Result<TestImage> {
    let (writer, image) = busybox_layout(dest)?;
    let staging = staging_next_to(dest)?;
    let tmp = staging.path().join("image.tar");
    writer.write_tar(&tmp, false).at("write", &tmp)?;
    fs::rename(&tmp, dest).at("write", dest)?;
    Ok(image)
}

/// Writes the busybox image as an OCI image layout directory at `dest`, which must not exist.
pub fn busybox_image_layout(dest: &Path) -> Result<TestImage> {
    if dest.symlink_metadata().is_ok() {
        return Err(Error::DestinationExists {
            path: dest.to_owned(),
        });
    }
    let (writer, image) = busybox_layout(dest)?;
    let staging = staging_next_to(dest)?;
    let tmp = staging.path().join("layout");
    writer.write_dir(&tmp).at("write", &tmp)?;
    fs::rename(&tmp, dest).at("write", dest)?;
    Ok(image)
}

fn busybox_layout(dest: &Path) -> Result<(LayoutWriter, TestImage)> {
    let mut layer = TarBuilder::new();
    for entry in busybox_tree()? {
        let path = entry.path.as_str();
        let (uid, gid) = (u64::from(entry.uid), u64::from(entry.gid));
        match &entry.node {
            Node::Dir => layer.dir(path, entry.mode, uid, gid),
            Node::File(data) => layer.file(path, entry.mode, uid, gid, data),
            Node::Symlink(target) => layer.symlink(path, target),
        };
    }
    let mut writer = LayoutWriter::new();
    let added = writer.add_image(&ImageSpec {
        layers: vec![layer.finish()],
        gzip: true,
        cmd: vec!["sh".to_owned()],
        env: vec![IMAGE_PATH_ENV.to_owned()],
        ..ImageSpec::default()
    });
    writer.add_index_entry(IndexEntry::new(
        &added.manifest,
        &[
            (ANNOTATION_CONTAINERD_IMAGE_NAME, IMAGE_NAME),
            (ANNOTATION_REF_NAME, IMAGE_REF_NAME),
        ],
    ));

    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct DockerManifest {
        config: String,
        repo_tags: Vec<String>,
        layers: Vec<String>,
    }
    let blob = |d: &oci_spec::image::Descriptor| blob_path(d.digest().as_ref());
    let docker = [DockerManifest {
        config: blob(&added.config),
        repo_tags: vec![IMAGE_NAME.to_owned()],
        layers: added.layers.iter().map(blob).collect(),
    }];
    writer.add_file(
        "manifest.json",
        serde_json::to_vec(&docker).expect("serializable"),
    );
    let image = TestImage {
        path: dest.to_owned(),
        name: IMAGE_NAME.to_owned(),
        ref_name: IMAGE_REF_NAME.to_owned(),
        manifest_digest: added.manifest.digest().to_string(),
    };
    Ok((writer, image))
}

/// A private (0700) directory next to `dest`, removed on drop: what is built there is
/// renamed into place, so `dest` never holds half an image.
fn staging_next_to(dest: &Path) -> Result<tempfile::TempDir> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let label = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{label}.staging-"))
        .tempdir_in(parent)
        .at("create a staging directory in", parent)
}

/// One node of the test rootfs.
#[derive(Debug)]
struct FsEntry {
    /// Relative to the rootfs root.
    path: String,
    node: Node,
    mode: u32,
    uid: u32,
    gid: u32,
}

#[derive(Debug)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

impl FsEntry {
    fn new(path: &str, node: Node, mode: u32) -> Self {
        FsEntry {
            path: path.to_owned(),
            node,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn write_under(&self, root: &Path) -> Result<()> {
        let path = root.join(&self.path);
        match &self.node {
            Node::Dir => fs::create_dir(&path).at("create directory", &path)?,
            Node::File(data) => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .at("create file", &path)?;
                file.write_all(data).at("write", &path)?;
            }
            Node::Symlink(target) => {
                std::os::unix::fs::symlink(target, &path).at("create symlink", &path)?;
            }
        }
        std::os::unix::fs::lchown(&path, Some(self.uid), Some(self.gid)).at("chown", &path)?;
        if !matches!(self.node, Node::Symlink(_)) {
            fs::set_permissions(&path, Permissions::from_mode(self.mode)).at("chmod", &path)?;
        }
        set_mtime(&path)
    }
}

/// The whole test rootfs, sorted by path (parents before children).
fn busybox_tree() -> Result<Vec<FsEntry>> {
    let busybox = read_static_busybox()?;
    let mut entries = vec![
        FsEntry::new("bin", Node::Dir, 0o755),
        FsEntry::new("bin/busybox", Node::File(busybox), 0o755),
        FsEntry::new("dev", Node::Dir, 0o755),
        FsEntry::new("etc", Node::Dir, 0o755),
        FsEntry::new(
            "etc/group",
            Node::File(b"root:x:0:\nuser:x:1000:\n".to_vec()),
            0o644,
        ),
        FsEntry::new(
            "etc/passwd",
            Node::File(
                b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
                    .to_vec(),
            ),
            0o644,
        ),
        FsEntry::new("home", Node::Dir, 0o755),
        FsEntry {
            uid: USER_ID,
            gid: USER_ID,
            ..FsEntry::new("home/user", Node::Dir, 0o755)
        },
        FsEntry::new("proc", Node::Dir, 0o555),
        FsEntry::new("root", Node::Dir, 0o700),
        FsEntry::new("run", Node::Dir, 0o755),
        FsEntry::new("sys", Node::Dir, 0o555),
        FsEntry::new("tmp", Node::Dir, 0o1777),
        FsEntry::new("var", Node::Dir, 0o755),
    ];
    for applet in busybox_applets()? {
        entries.push(FsEntry::new(
            &format!("bin/{applet}"),
            Node::Symlink("busybox".to_owned()),
            0o777,
        ));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// Reads `/bin/busybox`, checking that it is statically linked (it runs in an empty rootfs).
fn read_static_busybox() -> Result<Vec<u8>> {
    let path = Path::new(BUSYBOX_PATH);
    let mut data = Vec::new();
    match fs::File::open(path) {
        Ok(mut file) => file.read_to_end(&mut data).at("read", path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingBusybox {
                path: path.to_owned(),
                package: BUSYBOX_PACKAGE,
            });
        }
        Err(e) => return Err(e).at("open", path),
    };
    let unusable = |reason| Error::UnusableBusybox {
        path: path.to_owned(),
        reason,
        package: BUSYBOX_PACKAGE,
    };
    match elf_has_interpreter(&data) {
        None => Err(unusable("not a 64-bit little-endian ELF executable")),
        Some(true) => Err(unusable("it is dynamically linked")),
        Some(false) => Ok(data),
    }
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header (is dynamically
/// linked); `None` if it is not such a file.
fn elf_has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?) as usize;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// The applet names `busybox --list` prints, sorted, without `busybox` itself.
fn busybox_applets() -> Result<Vec<String>> {
    let command = format!("{BUSYBOX_PATH} --list");
    let output = Command::new(BUSYBOX_PATH)
        .arg("--list")
        .output()
        .map_err(|e| Error::Command {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            command,
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/') && *a != "." && *a != "..")
        .map(str::to_owned)
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

fn set_mtime(path: &Path) -> Result<()> {
    let time = TimeSpec::new(FIXED_MTIME as libc::time_t, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
    .at("set mtime of", path)
}

#[cfg(test)]
mod tests;
