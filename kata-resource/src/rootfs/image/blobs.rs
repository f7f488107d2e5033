//! Where an image's blobs come from (a layout directory or a tarball of one) and how they are
//! verified: every byte read through [`VerifyingReader`] is hashed and counted against its
//! descriptor.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Component, Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use oci_spec::image::{Descriptor, Digest, DigestAlgorithm};
use sha2::{Digest as _, Sha256, Sha512};

use crate::error::IoContext;
use crate::{Error, Result};

/// JSON documents (index.json, manifests, configs) and, in a tarball, any blob up to this size
/// are read into memory.
pub(crate) const IN_MEMORY_LIMIT: u64 = 4 << 20;

/// The blobs of an OCI image layout.
#[derive(Debug)]
pub(crate) enum BlobStore {
    /// An image layout directory.
    Dir {
        /// The layout's root (where `oci-layout` is).
        root: PathBuf,
    },
    /// A tarball of an image layout, optionally gzipped. Small blobs were read while scanning
    /// it; large ones are extracted when needed.
    Tar {
        /// The tarball.
        path: PathBuf,
        /// Blobs read into memory, by their path in the layout (`blobs/sha256/<hex>`).
        small: HashMap<String, Vec<u8>>,
        /// Paths of the blobs too large for memory.
        large: HashMap<String, u64>,
    },
}

/// A layout's `index.json` and its blob store.
pub(crate) struct OpenedLayout {
    pub(crate) index_json: Vec<u8>,
    pub(crate) store: BlobStore,
}

impl BlobStore {
    /// Opens an image layout directory or tarball, checking its `oci-layout` marker.
    pub(crate) fn open(path: &Path) -> Result<OpenedLayout> {
        let meta = fs::metadata(path).at("open image", path)?;
        if meta.is_dir() {
            let oci_layout = read_capped(&path.join("oci-layout"), path)?;
            check_oci_layout(path, oci_layout)?;
            let index_json = read_capped(&path.join("index.json"), path)?;
            let index_json = index_json.ok_or_else(|| not_a_layout(path, "no index.json"))?;
            Ok(OpenedLayout {
                index_json,
                store: BlobStore::Dir {
                    root: path.to_owned(),
                },
            })
        } else {
            Self::scan_tarball(path)
        }
    }

    fn scan_tarball(path: &Path) -> Result<OpenedLayout> {
        let (mut oci_layout, mut index_json) = (None, None);
        let (mut small, mut large) = (HashMap::new(), HashMap::new());
        for_each_tar_file(path, |name, size, reader| {
            let wanted = name == "oci-layout" || name == "index.json" || is_blob_path(&name);
            if !wanted {
                return Ok(());
            }
            if size > IN_MEMORY_LIMIT {
                if is_blob_path(&name) {
                    large.insert(name, size);
                    return Ok(());
                }
                return Err(not_a_layout(path, &format!("{name} is {size} bytes")));
            }
            let mut data = Vec::with_capacity(size as usize);
            reader
                .read_to_end(&mut data)
                .at("read image tarball", path)?;
            match name.as_str() {
                "oci-layout" => oci_layout = Some(data),
                "index.json" => index_json = Some(data),
                _ => {
                    small.insert(name, data);
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
                small,
                large,
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

    /// Reads a (small) blob into memory and verifies it.
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
                let path = root.join(&rel);
                read_capped(&path, root)?.ok_or_else(|| self.missing(digest))?
            }
            BlobStore::Tar { small, large, .. } => match small.get(&rel) {
                Some(data) => data.clone(),
                None if large.contains_key(&rel) => {
                    return Err(Error::BlobTooLarge {
                        digest: digest.to_string(),
                        what,
                        size: large[&rel],
                        limit: IN_MEMORY_LIMIT,
                    });
                }
                None => return Err(self.missing(digest)),
            },
        };
        let mut reader = VerifyingReader::new(Cursor::new(&data), desc)?;
        io::copy(&mut reader, &mut io::sink()).expect("reading memory cannot fail");
        reader.finish()?;
        Ok(data)
    }

    /// Extracts the blobs of `descs` that a tarball holds but did not keep in memory into
    /// `scratch`, in one pass over the tarball. Returns where each went, by blob path.
    pub(crate) fn stage_large_blobs(
        &self,
        descs: &[Descriptor],
        scratch: &Path,
    ) -> Result<HashMap<String, PathBuf>> {
        let BlobStore::Tar { path, large, .. } = self else {
            return Ok(HashMap::new());
        };
        let mut wanted = HashMap::new();
        for desc in descs {
            let rel = blob_path(desc.digest())?;
            if large.contains_key(&rel) {
                wanted.insert(rel, scratch.join(desc.digest().digest()));
            }
        }
        if wanted.is_empty() {
            return Ok(wanted);
        }
        fs::create_dir_all(scratch).at("create directory", scratch)?;
        for_each_tar_file(path, |name, _, reader| {
            if let Some(dest) = wanted.get(&name) {
                let mut file = File::create(dest).at("create file", dest)?;
                io::copy(reader, &mut file).at("extract a blob to", dest)?;
            }
            Ok(())
        })?;
        Ok(wanted)
    }

    /// Opens a blob for streaming; `staged` is what [`Self::stage_large_blobs`] returned.
    pub(crate) fn open_blob<'a>(
        &'a self,
        desc: &Descriptor,
        staged: &HashMap<String, PathBuf>,
    ) -> Result<VerifyingReader<Box<dyn Read + 'a>>> {
        let rel = blob_path(desc.digest())?;
        let open = |path: &Path| -> Result<Box<dyn Read + 'a>> {
            match File::open(path) {
                Ok(file) => Ok(Box::new(file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.missing(desc.digest())),
                Err(e) => Err(e).at("open blob", path),
            }
        };
        let reader: Box<dyn Read + 'a> = match self {
            BlobStore::Dir { root } => open(&root.join(&rel))?,
            BlobStore::Tar { small, .. } => match (small.get(&rel), staged.get(&rel)) {
                (Some(data), _) => Box::new(Cursor::new(data.as_slice())),
                (None, Some(path)) => open(path)?,
                (None, None) => return Err(self.missing(desc.digest())),
            },
        };
        VerifyingReader::new(reader, desc)
    }

    fn missing(&self, digest: &Digest) -> Error {
        Error::BlobMissing {
            image: self.image_path().to_owned(),
            digest: digest.to_string(),
        }
    }
}

/// Calls `f(name, size, reader)` for each regular file of a (possibly gzipped) tarball, with
/// `name` normalized (no leading `./`).
fn for_each_tar_file(
    path: &Path,
    mut f: impl FnMut(String, u64, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).at("open image", path)?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().at("read image", path)?;
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(reader);
    let bad_tar = |e: io::Error| not_a_layout(path, &format!("not a readable tarball: {e}"));
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(name) = normalized_name(&entry.path_bytes()) else {
            continue;
        };
        let size = entry.size();
        f(name, size, &mut entry)?;
    }
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

/// Reads a layout file of at most [`IN_MEMORY_LIMIT`] bytes; `None` if it does not exist.
fn read_capped(path: &Path, image: &Path) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at("open", path),
    };
    let mut data = Vec::new();
    file.take(IN_MEMORY_LIMIT + 1)
        .read_to_end(&mut data)
        .at("read", path)?;
    if data.len() as u64 > IN_MEMORY_LIMIT {
        let name = path.strip_prefix(image).unwrap_or(path).display();
        return Err(not_a_layout(image, &format!("{name} is too large")));
    }
    Ok(Some(data))
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
#[cfg(any(test, feature = "test-image"))]
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Hashes and counts what is read through it; [`finish`](Self::finish) reads the rest and checks
/// size and digest against the descriptor.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    hasher: BlobHasher,
    read: u64,
    digest: String,
    size: u64,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, desc: &Descriptor) -> Result<Self> {
        Ok(VerifyingReader {
            inner,
            hasher: BlobHasher::new(desc.digest())?,
            read: 0,
            digest: desc.digest().to_string(),
            size: desc.size(),
        })
    }

    /// The digest being verified.
    pub(crate) fn digest(&self) -> &str {
        &self.digest
    }

    /// Reads whatever the consumer left, then checks size and digest.
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
