//! Entry point for kata-rs's fuzz targets (feature `fuzzing`; not an API): one layer applied
//! from raw bytes, as an image's verified layer blob would be.

use std::path::Path;

use super::layer::apply_layer;
use super::limits::Budget;
use super::UnpackLimits;
use crate::Result;

/// Limits small enough that a fuzzer's input cannot fill the disk.
pub fn limits() -> UnpackLimits {
    UnpackLimits {
        max_total_bytes: 16 << 20,
        max_layer_bytes: 16 << 20,
        max_entries: 4096,
        max_ratio: 100,
        ratio_floor_bytes: 1 << 20,
    }
}

/// Applies `blob` (a tar changeset, gzipped or not) to the rootfs at `root` within
/// [`limits`].
pub fn apply_layer_bytes(root: &Path, blob: &[u8]) -> Result<()> {
    let limits = limits();
    let mut budget = Budget::new(&limits);
    apply_layer(root, "fuzz", blob, blob.len() as u64, &mut budget)
}
