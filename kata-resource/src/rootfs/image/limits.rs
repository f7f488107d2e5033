//! How much an image may unpack to: [`UnpackLimits`], the running [`Budget`] of one unpack, and
//! the metered tar reading that enforces them while the bytes stream by.
//!
//! A tar stream is read through a [`Metered`] reader that fails the read that crosses its limit,
//! so a bomb stops after at most one buffer past the limit, before the bytes reach the disk. The
//! headers of each entry (including GNU long names and PAX records, which the `tar` crate reads
//! into memory) are bounded separately by [`MAX_ENTRY_HEADER_BYTES`].

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::{Error, Result};

/// The most bytes the headers of one tar entry may take: its 512-byte header plus GNU long
/// name/link and PAX records, which are held in memory. Real entries need a few KiB (PATH_MAX
/// is 4096, an xattr value at most 64 KiB).
pub(crate) const MAX_ENTRY_HEADER_BYTES: u64 = 1 << 20;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Bounds on unpacking an image, so a crafted image cannot fill the host's disk or memory.
///
/// Sizes count the decompressed tar stream of each layer, which bounds what is written to disk
/// (sparse entries are refused, hardlinks take no space, and the entry count bounds inodes).
/// A layer going past a limit stops the unpack at once with [`Error::UnpackLimit`], naming the
/// layer's digest, the limit and this struct's field to raise; nothing of the image is left.
///
/// The defaults fit ordinary images with room to spare and keep a hostile one to a known
/// footprint:
///
/// | field | default | why |
/// |---|---|---|
/// | `max_total_bytes` | 8 GiB | distro and language images unpack to well under 2 GiB; only ML/CUDA images come near |
/// | `max_layer_bytes` | 4 GiB | one layer past half the total is unusual; bounds a layer even when the total is raised |
/// | `max_entries` | 1 000 000 | a full distribution with toolchains has a few hundred thousand files |
/// | `max_ratio` | 100 | real layers compress 2–10:1 (text up to ~20:1); gzip's maximum is ~1000:1, a bomb's ratio |
/// | `ratio_floor_bytes` | 64 MiB | the ratio is only checked past this, so small, highly compressible layers are fine |
///
/// A layer whose blob (compressed) is larger than `max_layer_bytes` is refused before it is
/// read. Raise a limit for an image you trust:
///
/// ```no_run
/// use kata_resource::rootfs::image::{OciImage, UnpackLimits};
///
/// # fn main() -> kata_resource::Result<()> {
/// let mut limits = UnpackLimits::default();
/// limits.max_total_bytes = 32 << 30; // a CUDA image
/// limits.max_layer_bytes = 16 << 30;
/// let image = OciImage::open_with_limits("pytorch.tar", None, limits)?;
/// image.unpack("/tmp/pytorch-rootfs".as_ref())?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackLimits {
    /// The most bytes all layers of the image may decompress to, together.
    pub max_total_bytes: u64,
    /// The most bytes one layer may decompress to (and the largest layer blob read).
    pub max_layer_bytes: u64,
    /// The most tar entries all layers may have, together.
    pub max_entries: u64,
    /// The most a layer may decompress to, as a multiple of its blob's size...
    pub max_ratio: u64,
    /// ...once it has decompressed to more than this many bytes.
    pub ratio_floor_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 8 * GIB,
            max_layer_bytes: 4 * GIB,
            max_entries: 1_000_000,
            max_ratio: 100,
            ratio_floor_bytes: 64 * MIB,
        }
    }
}

impl UnpackLimits {
    /// The most a stream of `compressed` bytes may decompress to under the ratio limit.
    fn ratio_limit(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_ratio)
            .max(self.ratio_floor_bytes)
    }

    /// The bound on the stream of an image tarball of `compressed` bytes: the ratio limit if
    /// it is gzipped, none if not (its size is the file's).
    pub(crate) fn tarball_stream(&self, tarball: &str, compressed: u64, gzip: bool) -> StreamLimit {
        StreamLimit {
            limit: if gzip {
                self.ratio_limit(compressed)
            } else {
                u64::MAX
            },
            exceeded: Exceeded::Ratio {
                subject: format!("image tarball {tarball}"),
                compressed,
                ratio: self.max_ratio,
                floor: self.ratio_floor_bytes,
            },
        }
    }

    /// Refuses a layer blob larger than [`Self::max_layer_bytes`] before it is read.
    pub(crate) fn check_layer_blob(&self, layer: &str, size: u64) -> Result<()> {
        if size > self.max_layer_bytes {
            return Err(Error::UnpackLimit {
                subject: format!("layer {layer}"),
                problem: format!("its blob is {}", human(size)),
                limit: "max_layer_bytes",
                value: human(self.max_layer_bytes),
            });
        }
        Ok(())
    }
}

/// What one unpack has used of its [`UnpackLimits`], across layers.
#[derive(Debug)]
pub(crate) struct Budget<'a> {
    limits: &'a UnpackLimits,
    bytes: u64,
    entries: u64,
}

impl<'a> Budget<'a> {
    pub(crate) fn new(limits: &'a UnpackLimits) -> Self {
        Budget {
            limits,
            bytes: 0,
            entries: 0,
        }
    }

    /// The bound on the decompressed stream of `layer`, whose blob is `compressed` bytes: the
    /// tightest of the per-layer, remaining total and ratio limits.
    pub(crate) fn layer_stream(&self, layer: &str, compressed: u64) -> StreamLimit {
        let l = self.limits;
        let subject = format!("layer {layer}");
        let candidates = [
            (
                l.max_layer_bytes,
                Exceeded::Layer {
                    subject: subject.clone(),
                    limit: l.max_layer_bytes,
                },
            ),
            (
                l.max_total_bytes.saturating_sub(self.bytes),
                Exceeded::Total {
                    subject: subject.clone(),
                    limit: l.max_total_bytes,
                    before: self.bytes,
                },
            ),
            (
                l.ratio_limit(compressed),
                Exceeded::Ratio {
                    subject,
                    compressed,
                    ratio: l.max_ratio,
                    floor: l.ratio_floor_bytes,
                },
            ),
        ];
        let (limit, exceeded) = candidates
            .into_iter()
            .min_by_key(|(limit, _)| *limit)
            .expect("three candidates");
        StreamLimit { limit, exceeded }
    }

    /// Adds the decompressed size of a finished layer.
    pub(crate) fn add_bytes(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Counts one tar entry of `layer`.
    pub(crate) fn count_entry(&mut self, layer: &str) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::UnpackLimit {
                subject: format!("layer {layer}"),
                problem: format!(
                    "the image has more than {} entries",
                    self.limits.max_entries
                ),
                limit: "max_entries",
                value: self.limits.max_entries.to_string(),
            });
        }
        Ok(())
    }
}

/// A bound on a decompressed stream and the error to give when it is crossed.
#[derive(Clone, Debug)]
pub(crate) struct StreamLimit {
    limit: u64,
    exceeded: Exceeded,
}

/// Which limit a stream bound came from, with what its error needs.
#[derive(Clone, Debug)]
enum Exceeded {
    Layer {
        subject: String,
        limit: u64,
    },
    Total {
        subject: String,
        limit: u64,
        before: u64,
    },
    Ratio {
        subject: String,
        compressed: u64,
        ratio: u64,
        floor: u64,
    },
}

impl StreamLimit {
    /// The error for a stream that went past this limit.
    fn error(&self) -> Error {
        match &self.exceeded {
            Exceeded::Layer { subject, limit } => Error::UnpackLimit {
                subject: subject.clone(),
                problem: format!("it decompresses to more than {}", human(*limit)),
                limit: "max_layer_bytes",
                value: human(*limit),
            },
            Exceeded::Total {
                subject,
                limit,
                before,
            } => Error::UnpackLimit {
                subject: subject.clone(),
                problem: format!(
                    "the image decompresses to more than {} ({} before this layer)",
                    human(*limit),
                    human(*before)
                ),
                limit: "max_total_bytes",
                value: human(*limit),
            },
            Exceeded::Ratio {
                subject,
                compressed,
                ratio,
                floor,
            } => Error::UnpackLimit {
                subject: subject.clone(),
                problem: format!(
                    "{} decompress to more than {} (over {ratio}:1)",
                    human(*compressed),
                    human(compressed.saturating_mul(*ratio).max(*floor))
                ),
                limit: "max_ratio",
                value: format!(
                    "{ratio}, checked past ratio_floor_bytes = {}",
                    human(*floor)
                ),
            },
        }
    }
}

/// The shared counters of a [`Metered`] stream.
#[derive(Debug)]
struct Meter {
    limit: StreamLimit,
    read: Cell<u64>,
    /// Bytes read since [`Meter::start_headers`], while reading headers.
    headers: Cell<Option<u64>>,
    /// Which bound a read crossed.
    crossed: Cell<Option<Crossed>>,
}

#[derive(Clone, Copy, Debug)]
enum Crossed {
    Stream,
    Headers,
}

impl Meter {
    /// Bytes read so far.
    fn read(&self) -> u64 {
        self.read.get()
    }

    /// From now on, reads are an entry's headers, bounded by [`MAX_ENTRY_HEADER_BYTES`].
    fn start_headers(&self) {
        self.headers.set(Some(0));
    }

    fn end_headers(&self) {
        self.headers.set(None);
    }

    /// The limit error if a read went past a bound (a read error is then only its symptom),
    /// else `None`.
    fn crossed(&self) -> Option<StreamError> {
        match self.crossed.get()? {
            Crossed::Stream => Some(StreamError::Limit(self.limit.error())),
            Crossed::Headers => Some(StreamError::Headers),
        }
    }

    /// `e` explained: the limit it comes from, or the read error itself.
    fn explain(&self, e: io::Error) -> StreamError {
        self.crossed().unwrap_or(StreamError::Io(e))
    }

    fn count(&self, n: usize) -> io::Result<()> {
        let read = self.read.get().saturating_add(n as u64);
        self.read.set(read);
        if read > self.limit.limit {
            self.crossed.set(Some(Crossed::Stream));
            return Err(io::Error::other("decompressed stream over its limit"));
        }
        if let Some(headers) = self.headers.get() {
            let headers = headers.saturating_add(n as u64);
            self.headers.set(Some(headers));
            if headers > MAX_ENTRY_HEADER_BYTES {
                self.crossed.set(Some(Crossed::Headers));
                return Err(io::Error::other("entry headers over their limit"));
            }
        }
        Ok(())
    }
}

/// Why reading a metered tar stream stopped.
#[derive(Debug)]
enum StreamError {
    /// Past an [`UnpackLimits`] bound: the error says which.
    Limit(Error),
    /// An entry's headers were over [`MAX_ENTRY_HEADER_BYTES`].
    Headers,
    /// A read error (corrupt compression or tar, truncated blob).
    Io(io::Error),
}

impl StreamError {
    /// The crate error, with `read_error` making one of an I/O error (naming the stream).
    fn into_error(self, read_error: impl FnOnce(io::Error) -> Error) -> Error {
        match self {
            StreamError::Limit(e) => e,
            StreamError::Headers => read_error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "an entry's headers (GNU long names, PAX records) are over {}",
                    human(MAX_ENTRY_HEADER_BYTES)
                ),
            )),
            StreamError::Io(e) => read_error(e),
        }
    }
}

/// A reader that counts what it reads against a [`Meter`] and fails the read crossing a bound.
pub(crate) struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.meter.crossed.get().is_some() {
            return Err(io::Error::other("stream already over its limit"));
        }
        let n = self.inner.read(buf)?;
        self.meter.count(n)?;
        Ok(n)
    }
}

/// Calls `on_entry` for each entry of the tar stream `stream`, bounded by `limit`, with each
/// entry's headers bounded by [`MAX_ENTRY_HEADER_BYTES`]. What `on_entry` leaves of an entry's
/// data is read (and counted) before the next header. Errors reading the stream become
/// `read_error`'s, or the limit's error. Returns the bytes read.
pub(crate) fn for_each_entry<R: Read>(
    stream: R,
    limit: StreamLimit,
    read_error: impl Fn(io::Error) -> Error,
    mut on_entry: impl FnMut(&mut tar::Entry<'_, Metered<R>>) -> Result<()>,
) -> Result<u64> {
    let meter = Rc::new(Meter {
        limit,
        read: Cell::new(0),
        headers: Cell::new(None),
        crossed: Cell::new(None),
    });
    let mut archive = tar::Archive::new(Metered {
        inner: stream,
        meter: Rc::clone(&meter),
    });
    let fail = |e: io::Error| meter.explain(e).into_error(&read_error);
    let mut entries = archive.entries().map_err(fail)?;
    loop {
        meter.start_headers();
        let next = entries.next();
        meter.end_headers();
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(fail)?;
        let result = on_entry(&mut entry);
        if let Some(crossed) = meter.crossed() {
            // Whatever `on_entry` made of the failed read, the limit is the cause.
            return Err(crossed.into_error(&read_error));
        }
        result?;
        io::copy(&mut entry, &mut io::sink()).map_err(fail)?;
    }
    Ok(meter.read())
}

/// `n` bytes for messages: `8 GiB`, `64 MiB`, `12 KiB` when exact, else `N bytes`.
pub(crate) fn human(n: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightest_limit_binds_and_is_named() {
        let limits = UnpackLimits {
            max_total_bytes: 1000,
            max_layer_bytes: 600,
            max_entries: 10,
            max_ratio: 10,
            ratio_floor_bytes: 100,
        };
        let mut budget = Budget::new(&limits);
        assert_eq!(budget.layer_stream("l", 1000).limit, 600);
        assert!(budget
            .layer_stream("l", 1000)
            .error()
            .to_string()
            .contains("max_layer_bytes"));
        assert_eq!(budget.layer_stream("l", 5).limit, 100, "the floor");
        assert_eq!(budget.layer_stream("l", 20).limit, 200, "the ratio");
        let message = budget.layer_stream("l", 20).error().to_string();
        assert!(
            message.contains("max_ratio") && message.contains("10:1"),
            "{message}"
        );
        budget.add_bytes(700);
        assert_eq!(budget.layer_stream("l", 1000).limit, 300);
        let message = budget.layer_stream("l", 1000).error().to_string();
        assert!(message.contains("max_total_bytes"), "{message}");
        for _ in 0..10 {
            budget.count_entry("l").unwrap();
        }
        let message = budget.count_entry("l").unwrap_err().to_string();
        assert!(message.contains("max_entries"), "{message}");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(8 << 30), "8 GiB");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(3 << 10), "3 KiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
