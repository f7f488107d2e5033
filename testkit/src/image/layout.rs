//! Writing OCI image layouts, deterministically (fixed mtimes and owners, sorted entries, no
//! hash maps in hashed documents): the busybox test image and the crafted images of
//! kata-resource's image tests (hostile archives, tampered and missing blobs, nested and
//! multi-platform indexes).
//!
//! ```
//! use kata_testkit::image::layout::{ImageSpec, IndexEntry, LayoutWriter, TarBuilder};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut layer = TarBuilder::new();
//! layer.dir("bin", 0o755, 0, 0).file("bin/hello", 0o755, 0, 0, b"#!/bin/sh\necho hi\n");
//! let mut writer = LayoutWriter::new();
//! let image = writer.add_image(&ImageSpec {
//!     layers: vec![layer.finish()],
//!     gzip: true,
//!     ..ImageSpec::default()
//! });
//! writer.add_index_entry(IndexEntry::new(&image.manifest, &[("org.opencontainers.image.ref.name", "v1")]));
//! let dir = tempfile::tempdir()?;
//! writer.write_tar(&dir.path().join("image.tar"), false)?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use flate2::{Compression, GzBuilder};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageManifestBuilder, MediaType,
    Os, RootFsBuilder,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

/// The mtime of every file the writers produce: 2020-01-01T00:00:00Z.
pub const FIXED_MTIME: u64 = 1_577_836_800;
/// The same instant for JSON documents.
const FIXED_CREATED: &str = "2020-01-01T00:00:00Z";

/// Builds a tar archive in memory with fixed mtimes.
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// A directory (`path/`) with this mode and owner.
    pub fn dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut header = header(EntryType::Directory, mode, uid, gid, 0);
        let path = format!("{}/", path.trim_end_matches('/'));
        self.builder
            .append_data(&mut header, path, io::empty())
            .expect("writing to memory");
        self
    }

    /// A regular file with this mode, owner and content.
    pub fn file(&mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Self {
        let mut header = header(EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .expect("writing to memory");
        self
    }

    /// A symbolic link at `path` to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = header(EntryType::Symlink, 0o777, 0, 0, 0);
        self.builder
            .append_link(&mut header, path, target)
            .expect("writing to memory");
        self
    }

    /// A hard link at `path` to `target`.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = header(EntryType::Link, 0o644, 0, 0, 0);
        self.builder
            .append_link(&mut header, path, target)
            .expect("writing to memory");
        self
    }

    /// An entry with exactly these name and link bytes, unchecked (for hostile archives).
    pub fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
        let mut header = header(kind, 0o644, 0, 0, data.len() as u64);
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        self.builder
            .append(&header, data)
            .expect("writing to memory");
        self
    }

    /// The archive's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("writing to memory")
    }
}

fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(FIXED_MTIME);
    header.set_size(size);
    header
}

/// Gzips `data` reproducibly (no name, mtime 0).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// What goes into an image besides its layers.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// Uncompressed layer tarballs, base first.
    pub layers: Vec<Vec<u8>>,
    /// Store the layers gzipped.
    pub gzip: bool,
    /// The config's `Cmd`.
    pub cmd: Vec<String>,
    /// The config's `Env` (`NAME=value`).
    pub env: Vec<String>,
    /// The config's `WorkingDir`.
    pub working_dir: Option<String>,
    /// `(os, architecture)`; the host's if `None`.
    pub platform: Option<(String, String)>,
}

/// The digests of an image added to a [`LayoutWriter`].
#[derive(Clone, Debug)]
pub struct AddedImage {
    /// The manifest's descriptor, with its platform, ready for an index.
    pub manifest: Descriptor,
    /// The image config's descriptor.
    pub config: Descriptor,
    /// The layers' descriptors, base first.
    pub layers: Vec<Descriptor>,
}

/// One `manifests` entry of index.json. A struct (not oci-spec's `Descriptor`, whose
/// annotations are a `HashMap`) so index.json is byte-for-byte reproducible.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// The manifest's (or nested index's) media type.
    pub media_type: String,
    /// Its digest, `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its annotations (e.g. `org.opencontainers.image.ref.name`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Its platform, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformEntry>,
}

/// The platform of an [`IndexEntry`].
#[derive(Clone, Debug, Serialize)]
pub struct PlatformEntry {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDocument<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: &'a [IndexEntry],
}

impl IndexEntry {
    /// An index entry for `desc` with the given annotations.
    pub fn new(desc: &Descriptor, annotations: &[(&str, &str)]) -> Self {
        IndexEntry {
            media_type: desc.media_type().to_string(),
            digest: desc.digest().to_string(),
            size: desc.size(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: desc.platform().as_ref().map(|p| PlatformEntry {
                architecture: p.architecture().to_string(),
                os: p.os().to_string(),
            }),
        }
    }
}

/// Collects blobs and index entries, then writes a layout directory or tarball.
#[derive(Default)]
pub struct LayoutWriter {
    /// By layout path, `blobs/sha256/<hex>`.
    blobs: BTreeMap<String, Vec<u8>>,
    index: Vec<IndexEntry>,
    /// Other top-level files (e.g. a docker-archive `manifest.json`).
    extra_files: BTreeMap<String, Vec<u8>>,
}

impl LayoutWriter {
    /// An empty layout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a blob; returns its descriptor.
    pub fn add_blob(&mut self, media_type: MediaType, data: Vec<u8>) -> Descriptor {
        let digest = sha256_digest(&data);
        let desc = Descriptor::new(
            media_type,
            data.len() as u64,
            digest
                .parse::<oci_spec::image::Digest>()
                .expect("valid digest"),
        );
        self.blobs.insert(blob_path(&digest), data);
        desc
    }

    /// Adds the layers, config and manifest of an image (not its index entry).
    pub fn add_image(&mut self, spec: &ImageSpec) -> AddedImage {
        let (os, arch) = spec.platform.clone().unwrap_or_else(|| {
            let (os, arch) = host_platform();
            (os.to_string(), arch.to_string())
        });
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in &spec.layers {
            diff_ids.push(sha256_digest(layer));
            layers.push(if spec.gzip {
                self.add_blob(MediaType::ImageLayerGzip, gzip(layer))
            } else {
                self.add_blob(MediaType::ImageLayer, layer.clone())
            });
        }
        let mut exec = ConfigBuilder::default();
        if !spec.cmd.is_empty() {
            exec = exec.cmd(spec.cmd.clone());
        }
        if !spec.env.is_empty() {
            exec = exec.env(spec.env.clone());
        }
        if let Some(dir) = &spec.working_dir {
            exec = exec.working_dir(dir.clone());
        }
        let config = ImageConfigurationBuilder::default()
            .created(FIXED_CREATED)
            .architecture(arch.as_str())
            .os(os.as_str())
            .config(exec.build().expect("valid config"))
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids)
                    .build()
                    .expect("valid rootfs"),
            )
            .build()
            .expect("valid image config");
        let config = self.add_blob(
            MediaType::ImageConfig,
            serde_json::to_vec(&config).expect("serializable"),
        );
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config.clone())
            .layers(layers.clone())
            .build()
            .expect("valid manifest");
        let mut manifest = self.add_blob(
            MediaType::ImageManifest,
            serde_json::to_vec(&manifest).expect("serializable"),
        );
        manifest.set_platform(Some(
            oci_spec::image::PlatformBuilder::default()
                .os(os.as_str())
                .architecture(arch.as_str())
                .build()
                .expect("valid platform"),
        ));
        AddedImage {
            manifest,
            config,
            layers,
        }
    }

    /// Adds a nested image index of `entries`; returns its descriptor.
    pub fn add_nested_index(&mut self, entries: &[IndexEntry]) -> Descriptor {
        let data = index_json(entries);
        self.add_blob(MediaType::ImageIndex, data)
    }

    /// Adds an entry to the top-level index.json.
    pub fn add_index_entry(&mut self, entry: IndexEntry) {
        self.index.push(entry);
    }

    /// Adds a top-level file besides the layout's own.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) {
        self.extra_files.insert(name.to_owned(), data);
    }

    /// The stored bytes of a blob, to tamper with in tests.
    pub fn blob_mut(&mut self, desc: &Descriptor) -> &mut Vec<u8> {
        self.blobs
            .get_mut(&blob_path(desc.digest().as_ref()))
            .expect("blob was added")
    }

    /// Removes a blob, for tests of missing blobs.
    pub fn remove_blob(&mut self, desc: &Descriptor) {
        self.blobs.remove(&blob_path(desc.digest().as_ref()));
    }

    /// Writes the layout as a directory (which must not exist yet).
    pub fn write_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)?;
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        for (name, data) in self.files() {
            fs::write(dir.join(name), data)?;
        }
        Ok(())
    }

    /// Writes the layout as a tarball, gzipped if asked.
    pub fn write_tar(&self, path: &Path, gzip_it: bool) -> io::Result<()> {
        let mut tar = TarBuilder::new();
        let mut dirs_done = false;
        for (name, data) in self.files() {
            if name.starts_with("blobs/") && !dirs_done {
                tar.dir("blobs", 0o755, 0, 0)
                    .dir("blobs/sha256", 0o755, 0, 0);
                dirs_done = true;
            }
            tar.file(&name, 0o644, 0, 0, &data);
        }
        let tar = tar.finish();
        fs::write(path, if gzip_it { gzip(&tar) } else { tar })
    }

    /// Every file of the layout in archive order: the layout files first, then blobs sorted.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut files = vec![
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_owned(), index_json(&self.index)),
        ];
        files.extend(self.extra_files.iter().map(|(n, d)| (n.clone(), d.clone())));
        files.extend(self.blobs.iter().map(|(n, d)| (n.clone(), d.clone())));
        files
    }
}

fn index_json(entries: &[IndexEntry]) -> Vec<u8> {
    serde_json::to_vec(&IndexDocument {
        schema_version: 2,
        media_type: "application/vnd.oci.image.index.v1+json",
        manifests: entries,
    })
    .expect("serializable")
}

/// `sha256:<hex>` → `blobs/sha256/<hex>`.
pub fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(data)
        .iter()
        .fold(String::from("sha256:"), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The OCI platform of this host, as kata-resource's image code names it (`kata_resource`'s
/// `host_platform`, repeated here: testkit does not depend on kata-resource).
pub fn host_platform() -> (Os, Arch) {
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
