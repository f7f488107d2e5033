//! Where an image's blobs come from (a layout directory or a tarball of one) and how they are
//! verified before use: every byte read through [`VerifyingReader`] is hashed and counted
//! against its descriptor, and nothing reads a blob past its descriptor's size.
//!
//! Small blobs (index, manifests, configs: at most [`IN_MEMORY_LIMIT`]) are read into memory
//! and verified there before they are parsed. A layer is verified while it is copied into a
//! private scratch file (from a layout directory, or out of a tarball), and only that verified
//! copy is decompressed, so the decompressor and the tar parser never see an unverified byte
//! and nobody can change the blob between the check and the use. The copy costs the layer's
//! compressed size in disk space, freed once the layer is applied.
//!
//! Files of a layout directory are opened without following a symlink and must be regular
//! files (a FIFO would block the open forever). A tarball scan holds at most
//! [`TARBALL_MEMORY_BUDGET`] of blobs in memory; other small blobs are read again from the
//! tarball when needed. A gzipped tarball's stream is bounded by the image's
//! [`UnpackLimits`] ratio, and its entries by their count.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use oci_spec::image::{Descriptor, Digest, DigestAlgorithm};
use sha2::{Digest as _, Sha256, Sha512};

use super::limits::{for_each_entry, human, UnpackLimits};
use crate::error::IoContext;
use crate::{Error, Result};

/// JSON documents (index.json, manifests, configs) and, in a tarball, any blob up to this size
/// are read into memory. containerd caps manifests at the same 4 MiB.
pub(crate) const IN_MEMORY_LIMIT: u64 = 4 << 20;

/// How many bytes of blobs a tarball scan keeps in memory, all together.
pub(crate) const TARBALL_MEMORY_BUDGET: u64 = 64 << 20;

/// The blobs of an OCI image layout.
#[derive(Debug)]
pub(crate) enum BlobStore {
    /// An image layout directory.
    Dir {
        /// The layout's root (where `oci-layout` is).
        root: PathBuf,
    },
    /// A tarball of an image layout, optionally gzipped. Small blobs were kept while scanning
    /// it, up to [`TARBALL_MEMORY_BUDGET`]; the others are read from it when needed.
    Tar {
        /// The tarball.
        path: PathBuf,
        /// The bounds on reading it.
        limits: UnpackLimits,
        /// The size of every blob, by its path in the layout (`blobs/sha256/<hex>`).
        sizes: HashMap<String, u64>,
        /// The blobs kept in memory, by path.
        memory: HashMap<String, Vec<u8>>,
    },
}

/// A layout's `index.json` and its blob store.
pub(crate) struct OpenedLayout {
    pub(crate) index_json: Vec<u8>,
    pub(crate) store: BlobStore,
}

/// A layer blob whose digest and size have been checked, ready to be decompressed.
pub(crate) enum VerifiedBlob<'a> {
    /// Kept in memory by the tarball scan.
    Memory(Cursor<&'a [u8]>),
    /// A private copy in the scratch directory, removed by [`VerifiedBlob::discard`].
    File {
        /// The copy, read from its start.
        file: File,
        /// Where it is.
        path: PathBuf,
    },
}

impl VerifiedBlob<'_> {
    /// Removes the scratch copy, if any.
    pub(crate) fn discard(self) -> Result<()> {
        match self {
            VerifiedBlob::Memory(_) => Ok(()),
            VerifiedBlob::File { file, path } => {
                drop(file);
                fs::remove_file(&path).at("remove", &path)
            }
        }
    }
}

impl Read for VerifiedBlob<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            VerifiedBlob::Memory(cursor) => cursor.read(buf),
            VerifiedBlob::File { file, .. } => file.read(buf),
        }
    }
}

impl BlobStore {
    /// Opens an image layout directory or tarball, checking its `oci-layout` marker.
    pub(crate) fn open(path: &Path, limits: &UnpackLimits) -> Result<OpenedLayout> {
        let meta = fs::metadata(path).at("open image", path)?;
        if meta.is_dir() {
            let oci_layout = read_layout_file(path, "oci-layout")?;
            check_oci_layout(path, oci_layout)?;
            let index_json = read_layout_file(path, "index.json")?;
            let index_json = index_json.ok_or_else(|| not_a_layout(path, "no index.json"))?;
            Ok(OpenedLayout {
                index_json,
                store: BlobStore::Dir {
                    root: path.to_owned(),
                },
            })
        } else {
            Self::scan_tarball(path, limits)
        }
    }

    fn scan_tarball(path: &Path, limits: &UnpackLimits) -> Result<OpenedLayout> {
        let (mut oci_layout, mut index_json) = (None, None);
        let (mut sizes, mut memory) = (HashMap::new(), HashMap::<String, Vec<u8>>::new());
        let mut held = 0;
        for_each_tar_file(path, limits, |name, size, reader| {
            let document = name == "oci-layout" || name == "index.json";
            if document && size > IN_MEMORY_LIMIT {
                return Err(not_a_layout(path, &format!("{name} is {size} bytes")));
            }
            if !document && !is_blob_path(&name) {
                return Ok(());
            }
            if !document {
                if let Some(old) = memory.remove(&name) {
                    held -= old.len() as u64;
                }
                sizes.insert(name.clone(), size);
                if size > IN_MEMORY_LIMIT || held + size > TARBALL_MEMORY_BUDGET {
                    return Ok(());
                }
                held += size;
            }
            let data = read_entry(path, reader, size)?;
            match name.as_str() {
                "oci-layout" => oci_layout = Some(data),
                "index.json" => index_json = Some(data),
                _ => {
                    memory.insert(name, data);
                }
            }
            Ok(())
        })?;
        check_oci_layout(path, oci_layout)?;
        let index_json = index_json
            .ok_or_else(|| not_a_layout(path, "no index.json at the top of the tarball"))?;
        Ok(OpenedLayout {
            index_json,
            store: BlobStore::Tar {
                path: path.to_owned(),
                limits: limits.clone(),
                sizes,
                memory,
            },
        })
    }

    /// The image layout or tarball, for error messages.
    pub(crate) fn image_path(&self) -> &Path {
        match self {
            BlobStore::Dir { root } => root,
            BlobStore::Tar { path, .. } => path,
        }
    }

    /// Reads a small blob into memory (never more than its descriptor's size, at most
    /// [`IN_MEMORY_LIMIT`]) and verifies it.
    pub(crate) fn read_verified(&self, desc: &Descriptor, what: &'static str) -> Result<Vec<u8>> {
        let digest = desc.digest();
        if desc.size() > IN_MEMORY_LIMIT {
            return Err(Error::BlobTooLarge {
                digest: digest.to_string(),
                what,
                size: desc.size(),
                limit: IN_MEMORY_LIMIT,
            });
        }
        let rel = blob_path(digest)?;
        let data = match self {
            BlobStore::Dir { root } => {
                let (file, len) =
                    open_layout_file(root, &rel)?.ok_or_else(|| self.missing(digest))?;
                check_size(desc, len)?;
                read_entry(root, &mut file.take(desc.size()), desc.size())?
            }
            BlobStore::Tar { sizes, memory, .. } => {
                let len = *sizes.get(&rel).ok_or_else(|| self.missing(digest))?;
                check_size(desc, len)?;
                match memory.get(&rel) {
                    Some(data) => data.clone(),
                    None => self.reread_tar_blob(&rel, desc)?,
                }
            }
        };
        verify_bytes(&data, desc)?;
        Ok(data)
    }

    /// A small blob the tarball scan did not keep: one more pass over the tarball.
    fn reread_tar_blob(&self, rel: &str, desc: &Descriptor) -> Result<Vec<u8>> {
        let BlobStore::Tar { path, limits, .. } = self else {
            unreachable!("only tarballs are scanned");
        };
        let mut found = None;
        for_each_tar_file(path, limits, |name, size, reader| {
            if found.is_none() && name == rel && size == desc.size() {
                found = Some(read_entry(path, reader, size)?);
            }
            Ok(())
        })?;
        found.ok_or_else(|| self.missing(desc.digest()))
    }

    /// Copies the layer blobs of `descs` that a tarball holds but did not keep in memory into
    /// `scratch`, in one pass over the tarball, verifying each as it is copied. Returns where
    /// each went, by blob path.
    pub(crate) fn stage_large_blobs(
        &self,
        descs: &[Descriptor],
        scratch: &Path,
    ) -> Result<HashMap<String, PathBuf>> {
        let BlobStore::Tar {
            path,
            limits,
            sizes,
            memory,
        } = self
        else {
            return Ok(HashMap::new());
        };
        let mut wanted = HashMap::new();
        for desc in descs {
            let rel = blob_path(desc.digest())?;
            if memory.contains_key(&rel) {
                continue;
            }
            let len = *sizes.get(&rel).ok_or_else(|| self.missing(desc.digest()))?;
            check_size(desc, len)?;
            wanted.insert(rel, (desc, scratch.join(desc.digest().digest()), false));
        }
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        fs::create_dir_all(scratch).at("create directory", scratch)?;
        for_each_tar_file(path, limits, |name, _, reader| {
            if let Some((desc, dest, done)) = wanted.get_mut(&name) {
                if !*done {
                    copy_verified(reader, desc, dest)?;
                    *done = true;
                }
            }
            Ok(())
        })?;
        let mut staged = HashMap::new();
        for (rel, (desc, dest, done)) in wanted {
            if !done {
                return Err(self.missing(desc.digest()));
            }
            staged.insert(rel, dest);
        }
        Ok(staged)
    }

    /// The verified layer blob of `desc`: in memory, staged by [`Self::stage_large_blobs`]
    /// (`staged`), or copied from the layout directory into `scratch` and verified now.
    pub(crate) fn verified_layer<'a>(
        &'a self,
        desc: &Descriptor,
        staged: &HashMap<String, PathBuf>,
        scratch: &Path,
    ) -> Result<VerifiedBlob<'a>> {
        let rel = blob_path(desc.digest())?;
        let path = match self {
            BlobStore::Dir { root } => {
                let (file, len) =
                    open_layout_file(root, &rel)?.ok_or_else(|| self.missing(desc.digest()))?;
                check_size(desc, len)?;
                fs::create_dir_all(scratch).at("create directory", scratch)?;
                let dest = scratch.join(desc.digest().digest());
                copy_verified(&mut { file }, desc, &dest)?;
                dest
            }
            BlobStore::Tar { memory, .. } => {
                if let Some(data) = memory.get(&rel) {
                    verify_bytes(data, desc)?;
                    return Ok(VerifiedBlob::Memory(Cursor::new(data)));
                }
                staged
                    .get(&rel)
                    .ok_or_else(|| self.missing(desc.digest()))?
                    .clone()
            }
        };
        let file = File::open(&path).at("open", &path)?;
        Ok(VerifiedBlob::File { file, path })
    }

    fn missing(&self, digest: &Digest) -> Error {
        Error::BlobMissing {
            image: self.image_path().to_owned(),
            digest: digest.to_string(),
        }
    }
}

/// A size mismatch between a blob and its descriptor, found before reading it.
fn check_size(desc: &Descriptor, len: u64) -> Result<()> {
    if len != desc.size() {
        return Err(Error::SizeMismatch {
            digest: desc.digest().to_string(),
            expected: desc.size(),
            actual: len,
        });
    }
    Ok(())
}

/// Verifies a blob held in memory.
fn verify_bytes(data: &[u8], desc: &Descriptor) -> Result<()> {
    let mut reader = VerifyingReader::new(data, desc)?;
    io::copy(&mut reader, &mut io::sink()).expect("reading memory cannot fail");
    reader.finish()
}

/// Copies the blob of `desc` from `from` into a new private file `dest`, verifying it; `dest`
/// is removed if it does not verify.
fn copy_verified(from: &mut dyn Read, desc: &Descriptor, dest: &Path) -> Result<()> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .at("create file", dest)?;
        let mut reader = VerifyingReader::new(from, desc)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::LayerRead {
                        layer: desc.digest().to_string(),
                        source,
                    })
                }
            };
            file.write_all(&buf[..n]).at("write a blob to", dest)?;
        }
        reader.finish()?;
        file.flush().at("write a blob to", dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

/// Reads an entry of `size` bytes (at most [`IN_MEMORY_LIMIT`], checked by the caller).
fn read_entry(image: &Path, reader: &mut dyn Read, size: u64) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(size.min(IN_MEMORY_LIMIT) as usize);
    reader
        .take(size)
        .read_to_end(&mut data)
        .at("read image", image)?;
    Ok(data)
}

/// Calls `f(name, size, reader)` for each regular file of a (possibly gzipped) tarball, with
/// `name` normalized (no leading `./`). A gzipped tarball's stream is bounded by the ratio of
/// `limits`, and the number of entries by its `max_entries`.
fn for_each_tar_file(
    path: &Path,
    limits: &UnpackLimits,
    mut f: impl FnMut(String, u64, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let (file, len) =
        open_regular(path, path)?.ok_or_else(|| not_a_layout(path, "it does not exist"))?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().at("read image", path)?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let limit = limits.tarball_stream(&path.display().to_string(), len, gzip);
    let bad_tar = |e: io::Error| not_a_layout(path, &format!("not a readable tarball: {e}"));
    let mut entries = 0u64;
    for_each_entry(stream, limit, bad_tar, |entry| {
        entries += 1;
        if entries > limits.max_entries {
            return Err(Error::UnpackLimit {
                subject: format!("image tarball {}", path.display()),
                problem: format!("it has more than {} entries", limits.max_entries),
                limit: "max_entries",
                value: limits.max_entries.to_string(),
            });
        }
        if !entry.header().entry_type().is_file() {
            return Ok(());
        }
        let Some(name) = normalized_name(&entry.path_bytes()) else {
            return Ok(());
        };
        let size = entry.size();
        f(name, size, entry)
    })?;
    Ok(())
}

/// `./blobs/sha256/x` → `blobs/sha256/x`; `None` for anything that is not a plain relative path.
fn normalized_name(raw: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(raw).ok()?;
    let mut parts = Vec::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

fn is_blob_path(name: &str) -> bool {
    name.starts_with("blobs/") && name.matches('/').count() == 2
}

/// `blobs/<algorithm>/<encoded>` for a digest this crate can verify.
pub(crate) fn blob_path(digest: &Digest) -> Result<String> {
    match digest.algorithm() {
        DigestAlgorithm::Sha256 | DigestAlgorithm::Sha512 => {
            Ok(format!("blobs/{}/{}", digest.algorithm(), digest.digest()))
        }
        _ => Err(Error::UnsupportedDigest {
            digest: digest.to_string(),
        }),
    }
}

/// Opens `path` for reading if it is a regular file, without following a symlink at its end
/// and without blocking on a FIFO; returns it and its size, or `None` if it does not exist.
/// `image` names the layout in errors.
fn open_regular(image: &Path, path: &Path) -> Result<Option<(File, u64)>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_a_layout(
                image,
                &format!("{} is a symlink", path.display()),
            ));
        }
        Err(e) => return Err(e).at("open", path),
    };
    let meta = file.metadata().at("inspect", path)?;
    if !meta.is_file() {
        return Err(not_a_layout(
            image,
            &format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(Some((file, meta.len())))
}

/// Opens `<root>/<rel>` of a layout directory (see [`open_regular`]).
fn open_layout_file(root: &Path, rel: &str) -> Result<Option<(File, u64)>> {
    open_regular(root, &root.join(rel))
}

/// Reads a layout file of at most [`IN_MEMORY_LIMIT`] bytes; `None` if it does not exist.
fn read_layout_file(root: &Path, rel: &str) -> Result<Option<Vec<u8>>> {
    let Some((mut file, len)) = open_layout_file(root, rel)? else {
        return Ok(None);
    };
    if len > IN_MEMORY_LIMIT {
        return Err(not_a_layout(
            root,
            &format!("{rel} is {}, over {}", human(len), human(IN_MEMORY_LIMIT)),
        ));
    }
    read_entry(root, &mut file, len).map(Some)
}

fn check_oci_layout(image: &Path, oci_layout: Option<Vec<u8>>) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct OciLayout {
        #[serde(rename = "imageLayoutVersion")]
        image_layout_version: String,
    }
    let data = oci_layout.ok_or_else(|| not_a_layout(image, "no oci-layout file"))?;
    let layout: OciLayout = serde_json::from_slice(&data).map_err(|source| Error::InvalidJson {
        image: image.to_owned(),
        what: "oci-layout".to_owned(),
        source,
    })?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(not_a_layout(
            image,
            &format!(
                "unsupported imageLayoutVersion {}",
                layout.image_layout_version
            ),
        ));
    }
    Ok(())
}

fn not_a_layout(path: &Path, reason: &str) -> Error {
    Error::NotAnImageLayout {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A hash of one of the algorithms blobs may be addressed by.
enum BlobHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl BlobHasher {
    fn new(digest: &Digest) -> Result<Self> {
        match digest.algorithm() {
            DigestAlgorithm::Sha256 => Ok(BlobHasher::Sha256(Sha256::new())),
            DigestAlgorithm::Sha512 => Ok(BlobHasher::Sha512(Sha512::new())),
            _ => Err(Error::UnsupportedDigest {
                digest: digest.to_string(),
            }),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            BlobHasher::Sha256(h) => h.update(data),
            BlobHasher::Sha512(h) => h.update(data),
        }
    }

    /// `<algorithm>:<hex>`.
    fn finish(self) -> String {
        match self {
            BlobHasher::Sha256(h) => format!("sha256:{}", hex(&h.finalize())),
            BlobHasher::Sha512(h) => format!("sha512:{}", hex(&h.finalize())),
        }
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// `sha256:<hex>` of `data`.
#[cfg(test)]
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Hashes and counts what is read through it, never reading more than one byte past the
/// descriptor's size (enough to tell the blob is longer); [`finish`](Self::finish) reads the
/// rest and checks size and digest against the descriptor.
pub(crate) struct VerifyingReader<R> {
    inner: io::Take<R>,
    hasher: BlobHasher,
    read: u64,
    digest: String,
    size: u64,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, desc: &Descriptor) -> Result<Self> {
        Ok(VerifyingReader {
            inner: inner.take(desc.size().saturating_add(1)),
            hasher: BlobHasher::new(desc.digest())?,
            read: 0,
            digest: desc.digest().to_string(),
            size: desc.size(),
        })
    }

    /// Reads whatever the consumer left (up to one byte past the size), then checks size and
    /// digest. A longer blob's `actual` size is the descriptor's plus one: it was not read on.
    pub(crate) fn finish(mut self) -> Result<()> {
        io::copy(&mut self, &mut io::sink()).map_err(|source| Error::LayerRead {
            layer: self.digest.clone(),
            source,
        })?;
        if self.read != self.size {
            return Err(Error::SizeMismatch {
                digest: self.digest,
                expected: self.size,
                actual: self.read,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                digest: self.digest,
                actual,
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;

    fn descriptor(data: &[u8]) -> Descriptor {
        let digest: Digest = sha256_digest(data).parse().unwrap();
        Descriptor::new(MediaType::ImageLayer, data.len() as u64, digest)
    }

    #[test]
    fn verifying_reader_accepts_matching_content() {
        let desc = descriptor(b"hello");
        let mut reader = VerifyingReader::new(&b"hello"[..], &desc).unwrap();
        let mut first = [0u8; 2];
        reader.read_exact(&mut first).unwrap();
        reader.finish().unwrap(); // reads the rest itself
    }

    #[test]
    fn verifying_reader_names_the_digest_on_mismatch() {
        let desc = descriptor(b"hello");
        let err = VerifyingReader::new(&b"hellO"[..], &desc)
            .unwrap()
            .finish()
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&sha256_digest(b"hello")), "{err}");

        let err = VerifyingReader::new(&b"hello!"[..], &desc)
            .unwrap()
            .finish()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 5,
                    actual: 6,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn verifying_reader_stops_one_byte_past_the_descriptor() {
        /// A blob that never ends, and fails if read far.
        struct Endless(u64);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0 += buf.len() as u64;
                if self.0 > 1 << 20 {
                    return Err(io::Error::other("read on past the descriptor"));
                }
                buf.fill(b'x');
                Ok(buf.len())
            }
        }
        let desc = descriptor(b"hello");
        let err = VerifyingReader::new(Endless(0), &desc)
            .unwrap()
            .finish()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 5,
                    actual: 6,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn sha512_is_supported_other_algorithms_are_refused() {
        let data = b"x";
        let digest: Digest = format!("sha512:{}", hex(&Sha512::digest(data)))
            .parse()
            .unwrap();
        let desc = Descriptor::new(MediaType::ImageLayer, 1, digest);
        VerifyingReader::new(&data[..], &desc)
            .unwrap()
            .finish()
            .unwrap();

        let digest: Digest = "md5:0cc175b9c0f1b6a831c399e269772661".parse().unwrap();
        let err = blob_path(&digest).unwrap_err();
        assert!(matches!(err, Error::UnsupportedDigest { .. }), "{err}");
    }

    #[test]
    fn tar_names_are_normalized() {
        assert_eq!(
            normalized_name(b"./index.json").as_deref(),
            Some("index.json")
        );
        assert_eq!(
            normalized_name(b"blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalized_name(b"../index.json"), None);
        assert_eq!(normalized_name(b"/index.json"), None);
        assert!(is_blob_path("blobs/sha256/ab"));
        assert!(!is_blob_path("blobs/sha256/ab/c"));
    }
}
