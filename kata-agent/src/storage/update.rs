//! Storage calls after the sandbox is up: UpdateEphemeralMounts and
//! RemoveStaleVirtiofsShareMounts, as Kata's agent serves them.
//!
//! - UpdateEphemeralMounts mounts each `ephemeral` storage again with the request's options
//!   (the runtime sends `remount` and a new `size=` when a pod's memory-backed emptyDir is
//!   resized): the mount point is made if missing, a storage without options is skipped, any
//!   other driver is `INTERNAL` ("Unsupported storage type for syncing mounts"). Unlike Kata's
//!   agent, every storage is checked (its mount point and options, as CreateSandbox checks an
//!   ephemeral storage) before the first is mounted.
//! - RemoveStaleVirtiofsShareMounts stats every mount below the shared directory of
//!   containers: virtiofsd drops what it caches for a path that no longer exists on the host
//!   once the guest looks it up again (what Kata's agent does after a runtime restart).

use std::path::Path;

use super::{plan, StorageSpec};
use crate::error::{AgentError, Result};
use crate::mount::{mount_with, MountOptions};

/// The guest's shared directory of containers, whose mounts RemoveStaleVirtiofsShareMounts
/// looks up.
pub const SHARED_CONTAINERS_DIR: &str = "/run/kata-containers/shared/containers/";

/// UpdateEphemeralMounts.
pub fn update_ephemeral_mounts(storages: &[StorageSpec]) -> Result<()> {
    let mut plans = Vec::with_capacity(storages.len());
    for (i, s) in storages.iter().enumerate() {
        if s.driver != "ephemeral" {
            return Err(AgentError::Failed {
                method: "UpdateEphemeralMounts",
                reason: format!(
                    "Unsupported storage type for syncing mounts {} (storages[{i}] at {}). Only \
                     ephemeral storage update is supported",
                    s.driver, s.mount_point
                ),
            });
        }
        plans.push((s, plan(s, &format!("storages[{i}]"))?));
    }
    for (s, p) in plans {
        std::fs::create_dir_all(&p.mount_point)
            .map_err(|e| AgentError::io(format!("create {}", p.mount_point.display()), e))?;
        if s.options.is_empty() {
            continue;
        }
        mount_with(
            p.source.as_deref(),
            &p.mount_point,
            p.fstype.as_deref(),
            &MountOptions::parse(&p.options),
        )?;
        tracing::info!(mount_point = %p.mount_point.display(), options = ?p.options, "ephemeral storage mounted again");
    }
    Ok(())
}

/// RemoveStaleVirtiofsShareMounts: looks up each mount point of `mountinfo` below
/// [`SHARED_CONTAINERS_DIR`]; answers how many it looked up.
pub fn touch_share_mounts(mountinfo: &str) -> usize {
    let mut n = 0;
    for mp in crate::mount::mount_points(mountinfo) {
        if !mp.starts_with(SHARED_CONTAINERS_DIR) {
            continue;
        }
        n += 1;
        match std::fs::metadata(Path::new(&mp)) {
            Ok(_) => tracing::debug!(mount_point = %mp, "share mount looked up"),
            Err(e) => tracing::info!(mount_point = %mp, error = %e, "share mount is stale"),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eph(mount_point: &str, options: &[&str]) -> StorageSpec {
        StorageSpec {
            driver: "ephemeral".into(),
            source: "tmpfs".into(),
            fstype: "tmpfs".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            mount_point: mount_point.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_ephemeral_storages_are_updated_and_all_are_checked_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut blk = eph(a.to_str().unwrap(), &[]);
        blk.driver = "blk".into();
        let err = update_ephemeral_mounts(&[blk]).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(
            err.to_string()
                .contains("Unsupported storage type for syncing mounts blk"),
            "{err}"
        );
        // The second is bad: the first is not made either.
        let err = update_ephemeral_mounts(&[
            eph(a.to_str().unwrap(), &[]),
            eph("relative", &["size=1m"]),
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("storages[1].mount_point"),
            "{err}"
        );
        assert!(!a.exists());
        // Without options: only the directory.
        update_ephemeral_mounts(&[eph(a.to_str().unwrap(), &[])]).unwrap();
        assert!(a.is_dir());
    }

    #[test]
    fn share_mounts_below_the_shared_directory_are_looked_up() {
        let info = "36 25 0:32 / /run/kata-containers/shared/containers/c1-rootfs rw - virtiofs kataShared rw\n\
                    37 25 0:33 / /run/kata-containers/shared/containers/gone\\040x rw - virtiofs kataShared rw\n\
                    38 25 0:34 / /proc rw - proc proc rw\n";
        assert_eq!(touch_share_mounts(info), 2);
    }
}
