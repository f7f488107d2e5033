//! `sandbox_bind_mounts` (`[runtime]`, Kata's key): host paths shared with the guest for the
//! whole sandbox, not with its containers (for guest services), at
//! `<shared>/sandbox-mounts/<base name>`, which the guest sees at
//! `/run/kata-containers/shared/containers/sandbox-mounts/<base name>`.
//!
//! An entry is `path`, `path:ro` (read-only, the default) or `path:rw` (runtime-rs's
//! extension). Each path is checked as a volume source is (it must exist, be a file or a
//! directory, and not be a symlink leading out of its directory); two entries with one base
//! name are refused, naming the key.

use std::path::{Path, PathBuf};

use super::host_bind::{check_source, SharedVolume};
use super::{ShareDirs, VolumesSlot, STAGING_DIR_NAME};
use crate::container_id::check_name;
use crate::error::IoContext;
use crate::share_fs::GUEST_SHARED_DIR;
use crate::{safe_child, Error, Result};

/// The directory of the sandbox's bind mounts in the shared directory (Kata's
/// `SANDBOX_BIND_MOUNTS_DIR`).
pub const SANDBOX_MOUNTS_DIR: &str = "sandbox-mounts";

/// One `sandbox_bind_mounts` entry: its host path and whether it is read-only.
pub fn parse_entry(entry: &str) -> (&str, bool) {
    if let Some(path) = entry.strip_suffix(":rw") {
        (path, false)
    } else {
        (entry.strip_suffix(":ro").unwrap_or(entry), true)
    }
}

/// `<shared>/sandbox-mounts`.
pub(crate) fn host_dir(shared: &Path) -> Result<PathBuf> {
    safe_child(shared, SANDBOX_MOUNTS_DIR)
}

/// Shares every entry of `entries`. On error nothing is left (no mount, no mount point).
pub(crate) fn set_up(dirs: ShareDirs<'_>, entries: &[String]) -> Result<VolumesSlot> {
    let mut slot = VolumesSlot::default();
    if entries.is_empty() {
        return Ok(slot);
    }
    let Some(shared) = dirs.shared else {
        return Err(crate::Error::VolumeRefused {
            field: "sandbox_bind_mounts".into(),
            path: entries[0].clone().into(),
            reason: "shared_fs = \"none\": there is no shared directory to put it in".into(),
        });
    };
    let dir = host_dir(shared)?;
    std::fs::create_dir_all(&dir).at("create directory", &dir)?;
    let guest_dir = format!("{GUEST_SHARED_DIR}/{SANDBOX_MOUNTS_DIR}");
    let staging = safe_child(dirs.sandbox, STAGING_DIR_NAME)?;
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("sandbox_bind_mounts[{i}]");
        let (path, read_only) = parse_entry(entry);
        let path = Path::new(path);
        let refuse = |reason: String| Error::VolumeRefused {
            field: field.clone(),
            path: path.to_owned(),
            reason,
        };
        if !path.is_absolute() {
            return Err(refuse("it is not an absolute host path".into()));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        check_name(name).map_err(|why| {
            refuse(format!(
                "its base name names it in the guest ({SANDBOX_MOUNTS_DIR}/<name>), and {why}"
            ))
        })?;
        if slot.shares.iter().any(|s| s.state().name == name) {
            return Err(refuse(format!(
                "another entry has the base name {name:?}: each is shared as \
                 {SANDBOX_MOUNTS_DIR}/<base name>"
            )));
        }
        let checked = check_source(&field, path)?;
        let share = SharedVolume::share(
            (&dir, &guest_dir),
            &staging,
            name,
            &checked,
            read_only,
            true,
        )?;
        slot.shares.push(share);
    }
    tracing::debug!(entries = entries.len(), "sandbox_bind_mounts shared");
    Ok(slot)
}
