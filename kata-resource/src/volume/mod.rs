//! A container's volumes: what each OCI mount of its spec becomes for the guest, as Kata
//! runtime-rs decides it (`crates/resource/src/volume/`), and the host side of it.
//!
//! For each mount, in order:
//! - **`/dev/shm`** (a bind of the pod's shm, or a tmpfs): the pod's shm, one guest tmpfs at
//!   [`GUEST_SHM_DIR`] shared by the pod's containers (an `ephemeral` storage, `noexec,nosuid,
//!   nodev,mode=1777`), sized in bytes from the bind source's filesystem (containerd's CRI makes
//!   a tmpfs per pod), a tmpfs mount's own `size=`, or Kata's default of 64 MiB; the mount
//!   becomes a bind of it. Where a spec names `/dev/shm` more than once (CRI's pause container:
//!   containerd's default tmpfs, then the bind of the pod's shm), the bind wins (else the last)
//!   and the others are dropped, so every container of the pod asks for the same storage.
//! - **emptyDir** (a bind whose source is in a `kubernetes.io~empty-dir` directory, or a mount
//!   Kata marks `ephemeral`/`local`): made in the guest, shared by the pod's containers by name.
//!   A source on a tmpfs (medium Memory) becomes an `ephemeral` tmpfs at
//!   `/run/kata-containers/sandbox/ephemeral/<name>`; a disk-backed one a `local` directory at
//!   `/run/kata-containers/sandbox/local/<name>` (the Go runtime puts it in the first
//!   container's rootfs), or, with `disable_guest_empty_dir`, a host bind as below. A source
//!   group other than root is passed on as `fsgid=` (Kubernetes fsGroup).
//! - **a host bind** of a file or directory: checked ([`Error::VolumeSourceNotFound`], and
//!   [`Error::VolumeRefused`] for a symlink leading out of its directory, a device node, a
//!   socket or a fifo), bound at `<shared>/<container_id>-<16 hex>-<base name of the
//!   destination>` (`nosuid,nodev`, read-only for `ro`, a slave of the source so host mounts
//!   under it still arrive and nothing goes back; `rbind` brings the mounts under it), and the
//!   mount's source rewritten to `/run/kata-containers/shared/containers/<name>`. Its options
//!   stay as the spec gave them: the agent mounts it read-only for `ro` and applies the
//!   propagation (`rprivate`, `rslave`, `rshared`) in the container. Binds of `/proc/...`,
//!   `/sys/...` and of a non-file under a `/dev` destination mean the guest's own and are not
//!   shared.
//! - **anything else** (tmpfs, proc, sysfs, devpts, mqueue, cgroup): made by the agent in the
//!   guest; passed on unchanged.
//!
//! The host shares are the container's ([`SandboxResources::add_volumes`](crate::SandboxResources::add_volumes)):
//! released with it (unmounted, names removed), recorded in its state, adopted and cleaned up
//! with the other resources. The guest-only volumes are the agent's: it reference-counts
//! storages by mount point and removes them with their last container.
//!
//! [`sandbox_mounts`]: `sandbox_bind_mounts`, host paths shared read-only with the guest.

mod host_bind;
mod name;
mod plan;
pub mod sandbox_mounts;
mod state;

use std::collections::BTreeSet;
use std::path::Path;

use oci_spec::runtime::Mount;

use crate::error::IoContext;
use crate::share_fs::GUEST_SHARED_DIR;
use crate::{Error, GuestStorage, Result};

use host_bind::SharedVolume;
use plan::{block_bind, classify, guest_bind, Plan, EPHEMERAL_TYPE, LOCAL_TYPE};

use crate::rootfs::block::{BlockAttachment, BlockSource};

pub(crate) use host_bind::STAGING_DIR_NAME;
pub use state::{SharedVolumeState, VolumesState};

/// Where the guest keeps the pod's own storages (Kata's `kata_guest_sandbox_dir`).
pub const GUEST_SANDBOX_DIR: &str = "/run/kata-containers/sandbox";

/// Where the guest mounts the pod's shm.
pub const GUEST_SHM_DIR: &str = "/run/kata-containers/sandbox/shm";

/// Where the guest makes tmpfs emptyDir volumes.
pub const GUEST_EPHEMERAL_DIR: &str = "/run/kata-containers/sandbox/ephemeral";

/// Where the guest makes disk-backed emptyDir volumes.
pub const GUEST_LOCAL_DIR: &str = "/run/kata-containers/sandbox/local";

/// Where the guest mounts block volumes: `<this>/<container_id>-<16 hex>-<base name of the
/// destination>` (Kata's `kata_guest_sandbox_dir/storage`).
pub const GUEST_BLOCK_VOLUME_DIR: &str = "/run/kata-containers/sandbox/storage";

/// Kata's shm size when nothing says otherwise: 64 MiB.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// How volumes are made, from `[runtime]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeOptions {
    /// `disable_guest_empty_dir`: disk-backed emptyDirs are host directories shared with the
    /// guest rather than directories made in it.
    pub disable_guest_empty_dir: bool,
}

impl VolumeOptions {
    /// Sets `disable_guest_empty_dir`.
    pub fn disable_guest_empty_dir(mut self, disable: bool) -> Self {
        self.disable_guest_empty_dir = disable;
        self
    }
}

/// What the guest needs of a container's volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerVolumes {
    /// The spec's mounts as the guest is to make them, in the spec's order.
    pub mounts: Vec<Mount>,
    /// What the agent mounts first (send with CreateContainer, after the rootfs's).
    pub storages: Vec<GuestStorage>,
    /// Block volumes: disks to hot-plug for the container, each with the storage the agent
    /// mounts once the VM says where the guest finds it
    /// ([`BlockAttachment::storage_at`]); the spec's mount binds its mount point.
    pub block_devices: Vec<BlockAttachment>,
}

/// A block volume decided by [`VolumesSlot::add`]: the disk and where the guest mounts it,
/// recorded in the devices slot by the caller once every volume is set up.
#[derive(Debug)]
pub(crate) struct PendingBlock {
    /// The checked device or image file.
    pub source: BlockSource,
    /// Its guest mount point, under [`GUEST_BLOCK_VOLUME_DIR`].
    pub mount_point: String,
}

/// The size of a tmpfs `size=` value in bytes (`65536k`, `64m`, `67108864`; tmpfs's suffixes
/// k, m, g, t, p, e in either case). `None` for a percentage of memory or anything else that is
/// not a plain size, which is passed on as written.
fn tmpfs_size_bytes(value: &str) -> Option<u64> {
    let (digits, shift) = match value.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return None,
            };
            (&value[..i], shift)
        }
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Which of a spec's `/dev/shm` mounts (by index) makes the pod's shm: a spec can name it more
/// than once (containerd's CRI gives the pause container its default tmpfs, then the bind of
/// the pod's shm). The bind of the pod's shm wins over a tmpfs, as in the container, where it
/// is mounted over it; among equals the last, which shadows the others. Every container of a
/// pod then asks for the same storage (the bind's source is the same pod shm for all).
fn shm_mount_index(mounts: &[Mount]) -> Option<usize> {
    let shm: Vec<(usize, bool)> = mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match classify(i, m) {
            Ok(Plan::Shm { size_from, .. }) => Some((i, size_from.is_some())),
            _ => None,
        })
        .collect();
    shm.iter()
        .rev()
        .find(|(_, bind)| *bind)
        .or(shm.last())
        .map(|(i, _)| *i)
}

/// The pod's shm: an `ephemeral` tmpfs of `size` (bytes, or a tmpfs size that is not a plain
/// one, e.g. `50%`).
fn shm_storage(size: &str) -> GuestStorage {
    GuestStorage {
        driver: EPHEMERAL_TYPE.into(),
        source: "shm".into(),
        fstype: "tmpfs".into(),
        options: ["noexec", "nosuid", "nodev", "mode=1777"]
            .into_iter()
            .map(String::from)
            .chain([format!("size={size}")])
            .collect(),
        mount_point: GUEST_SHM_DIR.into(),
        driver_options: Vec::new(),
    }
}

/// The container's `/dev/shm`: a bind of the pod's, with the spec's flags.
fn shm_mount(m: &Mount) -> Mount {
    let flags = m
        .options()
        .iter()
        .flatten()
        .filter(|o| matches!(o.as_str(), "ro" | "nosuid" | "nodev" | "noexec"))
        .cloned();
    let mut out = guest_bind(m, GUEST_SHM_DIR);
    out.set_options(Some(
        std::iter::once("rbind".to_owned()).chain(flags).collect(),
    ));
    out
}

/// The size of the filesystem holding `source` (named `field`), in bytes.
fn filesystem_size(field: &str, source: &Path) -> Result<u64> {
    let fs = statfs_of(field, source)?;
    Ok((fs.blocks() as u64).saturating_mul(fs.block_size() as u64))
}

fn statfs_of(field: &str, source: &Path) -> Result<nix::sys::statfs::Statfs> {
    nix::sys::statfs::statfs(source).map_err(|errno| match errno {
        nix::errno::Errno::ENOENT => Error::VolumeSourceNotFound {
            field: field.to_owned(),
            path: source.to_owned(),
        },
        errno => Error::Io {
            action: "read the filesystem of",
            path: source.to_owned(),
            source: errno.into(),
        },
    })
}

/// The storage of a pod volume made in the guest from `source`: `ephemeral` (tmpfs) or
/// `local` (directory), with the source's group as `fsgid=` unless it is root's.
fn guest_volume_storage(
    field: &str,
    kind: &str,
    source: &Path,
    name: &str,
) -> Result<GuestStorage> {
    use std::os::unix::fs::MetadataExt;
    let gid = match source.metadata() {
        Ok(m) => m.gid(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::VolumeSourceNotFound {
                field: field.to_owned(),
                path: source.to_owned(),
            })
        }
        Err(e) => {
            return Err(Error::Io {
                action: "inspect",
                path: source.to_owned(),
                source: e,
            })
        }
    };
    let mut options = Vec::new();
    let (dir, fstype) = if kind == LOCAL_TYPE {
        options.push("mode=0777".to_owned());
        (GUEST_LOCAL_DIR, LOCAL_TYPE)
    } else {
        (GUEST_EPHEMERAL_DIR, "tmpfs")
    };
    if gid != 0 {
        options.push(format!("fsgid={gid}"));
    }
    Ok(GuestStorage {
        driver: kind.to_owned(),
        source: if kind == LOCAL_TYPE {
            LOCAL_TYPE
        } else {
            "tmpfs"
        }
        .to_owned(),
        fstype: fstype.to_owned(),
        options,
        mount_point: format!("{dir}/{name}"),
        driver_options: Vec::new(),
    })
}

/// Where a container's host shares are made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShareDirs<'a> {
    /// `<sandbox_dir>/shared`; `None` with `shared_fs = "none"` (host binds are refused).
    pub shared: Option<&'a Path>,
    /// `<sandbox_dir>` (its staging directory is made there).
    pub sandbox: &'a Path,
}

/// A container's volumes on the host: the shares it holds. Released in reverse order of
/// creation, on release or drop.
#[derive(Debug, Default)]
pub(crate) struct VolumesSlot {
    shares: Vec<SharedVolume>,
}

impl VolumesSlot {
    /// Sets up the volumes of `mounts` (the spec of container `container_id`) and returns what
    /// the guest needs, with the block volumes for the caller to record (`block_devices`
    /// left empty): refused when `block_enabled` is off. On error what this call made is
    /// released.
    pub(crate) fn add(
        &mut self,
        dirs: ShareDirs<'_>,
        container_id: &str,
        mounts: &[Mount],
        options: &VolumeOptions,
        block_enabled: bool,
    ) -> Result<(ContainerVolumes, Vec<PendingBlock>)> {
        let staging = crate::safe_child(dirs.sandbox, STAGING_DIR_NAME)?;
        // Dropped on error: released.
        let mut made: Vec<SharedVolume> = Vec::new();
        let mut out = ContainerVolumes {
            mounts: Vec::with_capacity(mounts.len()),
            storages: Vec::new(),
            block_devices: Vec::new(),
        };
        let mut blocks = Vec::new();
        let mut storage_points = BTreeSet::new();
        let shm_index = shm_mount_index(mounts);
        let mut add_storage = |out: &mut ContainerVolumes, s: GuestStorage| {
            if storage_points.insert(s.mount_point.clone()) {
                out.storages.push(s);
            }
        };
        for (i, m) in mounts.iter().enumerate() {
            let field = format!("mounts[{i}].source");
            let host_bind = |source: &Path, read_only, recursive| -> Result<SharedVolume> {
                let shared = dirs.shared.ok_or_else(|| Error::VolumeRefused {
                    field: field.clone(),
                    path: source.to_owned(),
                    reason: "shared_fs = \"none\": there is no shared directory to bind a host \
                             path through (a disk image or block device can be a block volume)"
                        .into(),
                })?;
                let checked = host_bind::check_source(&field, source)?;
                let name = name::share_name(container_id, m.destination())?;
                SharedVolume::share(
                    (shared, GUEST_SHARED_DIR),
                    &staging,
                    &name,
                    &checked,
                    read_only,
                    recursive,
                )
            };
            match classify(i, m)? {
                Plan::GuestOnly => out.mounts.push(m.clone()),
                // Shadowed by the pod's shm mount that wins: not asked for at all.
                Plan::Shm { .. } if shm_index != Some(i) => {}
                Plan::Shm {
                    size_from,
                    size_option,
                } => {
                    // In bytes, however it was written: every container asks for it identically.
                    let size = match (size_from, size_option) {
                        (Some(source), _) => filesystem_size(&field, &source)?.to_string(),
                        (None, Some(size)) => {
                            tmpfs_size_bytes(&size).map_or(size, |bytes| bytes.to_string())
                        }
                        (None, None) => DEFAULT_SHM_SIZE.to_string(),
                    };
                    add_storage(&mut out, shm_storage(&size));
                    out.mounts.push(shm_mount(m));
                }
                Plan::EmptyDir {
                    source,
                    name,
                    forced,
                } => {
                    let kind = match forced {
                        Some(kind) => kind,
                        None => {
                            let fs = statfs_of(&field, &source)?;
                            if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
                                EPHEMERAL_TYPE
                            } else if options.disable_guest_empty_dir {
                                let share = host_bind(&source, false, true)?;
                                out.mounts.push(guest_bind(m, share.guest_path()));
                                made.push(share);
                                continue;
                            } else {
                                LOCAL_TYPE
                            }
                        }
                    };
                    let storage = guest_volume_storage(&field, kind, &source, &name)?;
                    out.mounts.push(guest_bind(m, &storage.mount_point));
                    add_storage(&mut out, storage);
                }
                Plan::HostBind {
                    source,
                    read_only,
                    recursive,
                } => {
                    let share = host_bind(&source, read_only, recursive)?;
                    out.mounts.push(guest_bind(m, share.guest_path()));
                    made.push(share);
                }
                Plan::Block {
                    source,
                    fs_type,
                    options,
                    read_only,
                } => {
                    let source = BlockSource::new(&field, &source, &fs_type, &options)?;
                    if !block_enabled {
                        return Err(Error::VolumeRefused {
                            field,
                            path: source.path,
                            reason: "it is a block volume (a block device or a disk image), \
                                     and this sandbox gives no disks to its VM: the \
                                     hypervisor cannot hot-plug them or \
                                     disable_block_device_use is set"
                                .into(),
                        });
                    }
                    let name = name::share_name(container_id, m.destination())?;
                    let mount_point = format!("{GUEST_BLOCK_VOLUME_DIR}/{name}");
                    out.mounts.push(block_bind(m, &mount_point, read_only));
                    blocks.push(PendingBlock {
                        source,
                        mount_point,
                    });
                }
            }
        }
        if !made.is_empty() {
            tracing::debug!(
                container_id,
                shares = made.len(),
                storages = out.storages.len(),
                "container volumes set up"
            );
        }
        self.shares.extend(made);
        Ok((out, blocks))
    }

    /// What persist records of it.
    pub(crate) fn state(&self) -> VolumesState {
        VolumesState {
            shares: self.shares.iter().map(|s| s.state().clone()).collect(),
        }
    }

    /// Takes over what a detached owner left, as `state` records it: every share must be
    /// mounted where this crate puts it in `shared_dir`. On error nothing is released.
    pub(crate) fn adopt(shared_dir: &Path, state: &VolumesState) -> Result<Self> {
        let mut shares = Vec::with_capacity(state.shares.len());
        for saved in &state.shares {
            match SharedVolume::adopt(shared_dir, saved) {
                Ok(s) => shares.push(s),
                Err(e) => {
                    shares.into_iter().for_each(SharedVolume::detach);
                    return Err(e);
                }
            }
        }
        Ok(VolumesSlot { shares })
    }

    /// Removes what a crashed owner left, as `state` records it: nothing of its own, since
    /// every share lies in the shared directory, which [`crate::share_fs::ShareFs::remove_stale`]
    /// unmounts and removes (see [`remove_staging`] for a set-up cut short).
    pub(crate) fn cleanup(_state: &VolumesState) -> Result<()> {
        Ok(())
    }

    /// Releases every share, last first; what fails stays recorded for the next try.
    pub(crate) fn release_in_place(&mut self) -> Result<()> {
        while let Some(share) = self.shares.last_mut() {
            share.release_in_place()?;
            self.shares.pop();
        }
        Ok(())
    }

    /// Gives up ownership: every share stays for [`adopt`](Self::adopt).
    pub(crate) fn detach(self) {
        self.shares.into_iter().for_each(SharedVolume::detach);
    }
}

/// Unmounts and removes what a set-up cut short by a crash left in `<sandbox_dir>/volume-staging`.
pub(crate) fn remove_staging(sandbox_dir: &Path) -> Result<()> {
    let Ok(sandbox_dir) = sandbox_dir.canonicalize() else {
        return Ok(());
    };
    let staging = crate::safe_child(&sandbox_dir, STAGING_DIR_NAME)?;
    let mountinfo = Path::new("/proc/self/mountinfo");
    for mount_point in crate::mount::mount_points_under(&staging).at("read", mountinfo)? {
        tracing::warn!(mount = %mount_point.display(), "unmounting a leftover volume staging mount");
        crate::mount::unmount_all(&mount_point)?;
    }
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).at("remove directory", &staging)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
