//! [`SandboxResources`]: the one owner of everything a sandbox and its containers hold on the
//! host.
//!
//! What it owns, and which module does the work:
//! - the shared filesystem ([`crate::share_fs`]): `<sandbox_dir>/shared`, which the VM exports
//!   as the device [`SandboxResources::devices`] yields and the guest mounts from the storage
//!   [`SandboxResources::sandbox_storages`] yields;
//! - each container's rootfs: a host directory, or an OCI bundle's rootfs with containerd's
//!   mounts, which it mounts itself ([`crate::rootfs`]), bind (or overlay) mounted into the
//!   shared directory;
//! - the slots the next resource kinds fill: network, cgroups and devices per sandbox, volumes
//!   per container (`slots.rs`, empty today).
//!
//! Its lifecycle is one unit: made for a sandbox directory, containers added and removed,
//! released on [`release`](SandboxResources::release) or drop. For a restarted runtime:
//! [`state`](SandboxResources::state) is what persist writes, [`detach`](SandboxResources::detach)
//! leaves everything in place, [`adopt`](SandboxResources::adopt) takes it over, and
//! [`cleanup`](SandboxResources::cleanup) removes what a crashed owner left.
//!
//! A new resource kind goes in three places: one module of this crate that owns it (set up,
//! released on drop, detach/adopt, cleanup from its state), a slot field here (per sandbox, or
//! in `ContainerResources` per container) that the lifecycle methods below call, and its state
//! in [`ResourcesState`] (or [`ContainerResourcesState`]).

mod slots;
mod state;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kata_hypervisor::{Capabilities, DeviceConfig, SharedFs};

use crate::error::IoContext;
use crate::fail_point::{fail_point, Step};
use crate::path::checked_absolute;
use crate::rootfs::{BundleRootfs, RootfsMount};
use crate::share_fs::{RootfsMode, ShareFs, ShareFsConfig, SharedRootfs};
use crate::{validate_container_id, Error, GuestStorage, Result};

use slots::{CgroupsSlot, DevicesSlot, NetworkSlot, VolumesSlot};
pub use state::{
    CgroupsState, ContainerResourcesState, DevicesState, NetworkState, ResourcesState,
    RootfsSourceState, RootfsState, VolumesState,
};

/// Where a container's rootfs comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootfsSource {
    /// A host directory (absolute), shared as it is: an unpacked image, a directory the caller
    /// made.
    Directory(PathBuf),
    /// An OCI bundle's rootfs: the spec's `root.path` resolved inside the bundle (an absolute
    /// `root.path` is accepted only inside the bundle, and a symlink may not lead out of it),
    /// with containerd's rootfs mounts (`CreateTaskRequest.rootfs`) mounted there first. No
    /// mounts: the directory is used as it is.
    Bundle {
        /// The bundle directory (absolute).
        bundle: PathBuf,
        /// The spec's `root.path` (`None`: `rootfs`).
        root_path: Option<PathBuf>,
        /// containerd's rootfs mounts, bottom first.
        mounts: Vec<RootfsMount>,
    },
}

/// What the guest needs to know of a container's resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerGuestResources {
    /// The rootfs as the guest sees it: the OCI spec's `root.path` for the agent,
    /// `/run/kata-containers/shared/containers/<id>/rootfs`.
    pub rootfs_path: String,
    /// What the agent mounts for the container before creating it (none for a rootfs in the
    /// shared directory).
    pub storages: Vec<GuestStorage>,
    /// Disks to hot-plug for the container (a block rootfs), each with the storage the agent
    /// mounts once the VM says where the guest finds it
    /// ([`BlockAttachment::storage_at`](crate::rootfs::block::BlockAttachment::storage_at)).
    pub block_devices: Vec<crate::rootfs::block::BlockAttachment>,
}

/// Everything a sandbox and its containers hold on the host: the shared filesystem
/// ([`crate::share_fs`]), each container's rootfs (a directory, or a bundle's with
/// containerd's mounts: [`crate::rootfs`]), and the slots of the resource kinds to come
/// (network, cgroups and devices per sandbox, volumes per container, empty today). Dropping
/// it releases everything; errors are logged.
///
/// A new resource kind goes in three places: one module of this crate that owns it (set up,
/// released on drop, detach/adopt, cleanup from its state), a slot field here (or per
/// container) that the lifecycle methods call, and its state in [`ResourcesState`] (or
/// [`ContainerResourcesState`]).
///
/// Everything is synchronous and may block on mounts and disk I/O.
///
/// ```no_run
/// use kata_hypervisor::{Capabilities, SharedFs};
/// use kata_resource::{RootfsMode, RootfsSource, SandboxResources};
///
/// # fn main() -> kata_resource::Result<()> {
/// let mut resources = SandboxResources::new("/run/kata/sb-1", SharedFs::Virtio9p, 8192)?;
/// let devices = resources.devices(); // cold-plug these into the VM
/// let storages = resources.sandbox_storages(&Capabilities::default()); // CreateSandbox
/// let c1 = resources.add_container(
///     "c1",
///     RootfsSource::Directory("/var/lib/images/busybox".into()),
///     RootfsMode::Overlay,
/// )?;
/// assert_eq!(c1.rootfs_path, "/run/kata-containers/shared/containers/c1/rootfs");
/// let saved = resources.state(); // persist it
/// resources.remove_container("c1")?;
/// resources.release()?;
/// # let _ = (devices, storages, saved);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SandboxResources {
    /// Canonical.
    sandbox_dir: PathBuf,
    shared_fs: SharedFs,
    msize_9p: u32,
    /// `None` for `shared_fs = "none"` (and once released).
    share: Option<ShareFs>,
    containers: BTreeMap<String, ContainerResources>,
    network: NetworkSlot,
    cgroups: CgroupsSlot,
    devices: DevicesSlot,
    /// `sandbox_bind_mounts` ([`crate::volume::sandbox_mounts`]).
    sandbox_mounts: VolumesSlot,
}

/// One container's resources. Released in field order: volumes, the shared rootfs, then what
/// it was made from (the bundle mounts under it).
#[derive(Debug)]
struct ContainerResources {
    volumes: VolumesSlot,
    /// `None` for a block rootfs: the disk is the VM's, recorded in the devices slot.
    shared: Option<SharedRootfs>,
    origin: Origin,
}

/// What a container's shared rootfs was made from.
#[derive(Debug)]
enum Origin {
    /// A host directory: nothing to release but the share.
    Directory(PathBuf),
    /// A bundle's rootfs with the mounts made on it.
    Bundle(BundleRootfs),
    /// A block device or image given to the VM as a disk ([`crate::rootfs::block`]): nothing
    /// of it is on the host.
    Block(PathBuf),
}

impl SandboxResources {
    /// Sets up the resources of the sandbox whose directory is `sandbox_dir` (created if
    /// missing; kept on release: it is the caller's): the shared directory
    /// `<sandbox_dir>/shared` for `virtio-9p` (guest mount `msize=msize_9p`) and `virtio-fs`,
    /// nothing for `none`.
    ///
    /// Fails with [`Error::UnsupportedSharedFs`] for any other kind, and with
    /// [`Error::ShareFsExists`] if the shared directory exists already (a crashed owner's:
    /// [`cleanup`](Self::cleanup) removes it).
    pub fn new(sandbox_dir: impl AsRef<Path>, shared_fs: SharedFs, msize_9p: u32) -> Result<Self> {
        Self::with_share_fs(sandbox_dir, &ShareFsConfig::new(shared_fs, msize_9p))
    }

    /// [`new`](Self::new) with the share's settings from the configuration
    /// ([`ShareFsConfig::from_hypervisor`]): for `virtio-fs`, the sandbox's virtiofsd
    /// ([`crate::share_fs::virtiofsd`]) is started here and stopped on release.
    pub fn with_share_fs(sandbox_dir: impl AsRef<Path>, config: &ShareFsConfig) -> Result<Self> {
        let (shared_fs, msize_9p) = (config.kind, config.msize_9p);
        if !matches!(
            shared_fs,
            SharedFs::Virtio9p | SharedFs::VirtioFs | SharedFs::InlineVirtioFs | SharedFs::None
        ) {
            return Err(Error::UnsupportedSharedFs {
                shared_fs: shared_fs.to_string(),
            });
        }
        let sandbox_dir = sandbox_dir.as_ref();
        fs::create_dir_all(sandbox_dir).at("create directory", sandbox_dir)?;
        // Canonical, so paths compare equal to those in /proc/self/mountinfo.
        let sandbox_dir = sandbox_dir
            .canonicalize()
            .at("resolve directory", sandbox_dir)?;
        let share = match shared_fs {
            SharedFs::None => None,
            _ => Some(ShareFs::with_config(&sandbox_dir, config)?),
        };
        tracing::debug!(sandbox_dir = %sandbox_dir.display(), %shared_fs, "sandbox resources set up");
        Ok(SandboxResources {
            sandbox_dir,
            shared_fs,
            msize_9p,
            share,
            containers: BTreeMap::new(),
            network: NetworkSlot::default(),
            cgroups: CgroupsSlot::default(),
            devices: DevicesSlot::default(),
            sandbox_mounts: VolumesSlot::default(),
        })
    }

    /// The sandbox directory (canonical).
    pub fn sandbox_dir(&self) -> &Path {
        &self.sandbox_dir
    }

    /// How the shared directory reaches the guest.
    pub fn shared_fs(&self) -> SharedFs {
        self.shared_fs
    }

    /// The shared filesystem, unless the sandbox has none.
    pub fn share_fs(&self) -> Option<&ShareFs> {
        self.share.as_ref()
    }

    /// The devices to cold-plug into the VM: the shared directory's, then the network's NICs
    /// (each a tap in the pod's namespace, with its open queues for the VMM).
    pub fn devices(&self) -> Vec<DeviceConfig> {
        self.share
            .iter()
            .map(|share| DeviceConfig::ShareFs(share.device()))
            .chain(self.network.devices())
            .collect()
    }

    /// Sets up the sandbox's network from `config` (see [`crate::network`]): with
    /// `internetworking_model = "tcfilter"` and a namespace path, a tap in the pod's
    /// namespace for each of its interfaces, joined to it by tc redirect filters both ways; the
    /// NICs then come with [`devices`](Self::devices) and what the guest is told with
    /// [`guest_network`](Self::guest_network). No path, `none` or `disable_new_netns`: no
    /// network. `macvtap` and `l3forwarding` are refused ([`Error::NetworkSetting`]), a path
    /// that does not exist is [`Error::NetnsNotFound`]. Call it before the VM is made.
    ///
    /// On error nothing of the network is left (no tap, qdisc or filter); the namespace itself
    /// is never changed otherwise, nor removed.
    pub fn set_up_network(&mut self, config: &crate::network::NetworkConfig) -> Result<()> {
        self.network.set_up(config)
    }

    /// Makes the sandbox's host cgroups from `config` ([`crate::cgroups`]): the sandbox cgroup
    /// the spec's `linux.cgroupsPath` names (and, with `sandbox_cgroup_only = false`, the
    /// overhead cgroup), with the ancestors it lacks. Call it before the VM starts, then
    /// [`add_vmm_pids`](Self::add_vmm_pids). A path with `..` or leaving the hierarchy, or a
    /// controller the host lacks, fails naming it and leaves nothing.
    pub fn set_up_cgroups(&mut self, config: &crate::cgroups::CgroupsConfig) -> Result<()> {
        self.cgroups.set_up(config)
    }

    /// Moves the VMM (`pids[0]`) and its helpers (the rest: vsock backend, virtiofsd) into
    /// the sandbox's host cgroups as `sandbox_cgroup_only` says. Nothing without cgroups.
    pub fn add_vmm_pids(&mut self, pids: &[u32]) -> Result<()> {
        let all = self.with_helpers(pids);
        self.cgroups.add_vmm_pids(&all)
    }

    /// `pids` and the share's daemon (and its sandboxed child): a helper of the VMM too; a
    /// daemon restarted for a second boot is found again on the next call.
    fn with_helpers(&self, pids: &[u32]) -> Vec<u32> {
        let mut all = pids.to_vec();
        if let Some(daemon) = self.share_fs().and_then(|s| s.daemon()) {
            all.extend(daemon.pids().into_iter().filter(|p| !pids.contains(p)));
        }
        all
    }

    /// Moves a running sandbox (a VM handed over to a pod) into the host cgroups `config`
    /// names: they are made, the VMM (`pids[0]`), its helpers and the share's daemon move in,
    /// and the cgroups the VMM ran in are removed. On error the VMM stays where it was and
    /// nothing new is left. Without cgroups before, it is [`set_up_cgroups`](
    /// Self::set_up_cgroups) and [`add_vmm_pids`](Self::add_vmm_pids).
    pub fn move_cgroups(
        &mut self,
        config: &crate::cgroups::CgroupsConfig,
        pids: &[u32],
    ) -> Result<()> {
        let all = self.with_helpers(pids);
        self.cgroups.move_to(config, &all)
    }

    /// Joins a running sandbox (a VM handed over to a pod, booted without network) to the
    /// pod's network `config` names, as [`set_up_network`](Self::set_up_network) does at
    /// boot, and returns every NIC to hot-plug and what the guest is to be told ([`Rescanned`](
    /// crate::network::Rescanned), nothing removed). A sandbox with a network already is
    /// refused; on error nothing of the network is left.
    pub fn join_network(
        &mut self,
        config: &crate::network::NetworkConfig,
    ) -> Result<crate::network::Rescanned> {
        self.network.join_running(config)
    }

    /// Moves an in-process VMM's threads (the built-in VMM's `vcpus` and `devices` threads,
    /// threads of this process) into the sandbox's host cgroups: on cgroup v1 each thread
    /// alone (vCPUs into the sandbox cgroup, device threads into the overhead one unless
    /// `sandbox_cgroup_only`), on v2, where a process's threads share one cgroup, this whole
    /// process into the sandbox cgroup. Put back on release. Nothing without cgroups.
    pub fn add_vmm_threads(&mut self, vcpus: &[u32], devices: &[u32]) -> Result<()> {
        self.cgroups.add_vmm_threads(vcpus, devices)
    }

    /// Records container `id`'s `linux.resources` (created or updated) for the host: the
    /// sandbox cgroup is constrained to the union of the containers' cpusets, and vCPUs plugged
    /// since are moved in. A cpuset the host refuses fails naming the field and changes
    /// nothing.
    pub fn update_container_cgroups(
        &mut self,
        id: &str,
        resources: Option<&oci_spec::runtime::LinuxResources>,
    ) -> Result<()> {
        self.cgroups.update_container(id, resources)
    }

    /// Joins interfaces added to the pod's network namespace since set-up to taps of their
    /// own (see [`crate::network`]) and returns the NICs to hot-plug and what the guest is to
    /// be told, and the NICs of interfaces that are gone ([`Rescanned`](
    /// crate::network::Rescanned)); nothing new: empty. On error
    /// nothing new is left.
    pub fn rescan_network(&mut self) -> Result<crate::network::Rescanned> {
        self.network.rescan()
    }

    /// Removes NIC `device_id`'s tap (and its interface's filters, if the interface is still
    /// there), once the VM has let the NIC go: one a rescan listed as
    /// [`removed`](crate::network::Rescanned::removed).
    pub fn forget_network_device(&mut self, device_id: &str) -> Result<()> {
        self.network.forget(device_id)
    }

    /// What the guest is to be told of the pod's network: the interfaces (for
    /// UpdateInterface), routes (UpdateRoutes) and ARP neighbours (AddARPNeighbors). Empty
    /// without network.
    pub fn guest_network(&self) -> &crate::network::PodNetwork {
        self.network.guest()
    }

    /// The storages to send with CreateSandbox: the shared directory's guest mount, unless the
    /// backend runs the agent on this host (`caps.guest_on_host`), where the directory is
    /// already visible at the guest path without a mount.
    pub fn sandbox_storages(&self, caps: &Capabilities) -> Vec<GuestStorage> {
        if caps.guest_on_host {
            return Vec::new();
        }
        self.share.iter().map(ShareFs::storage).collect()
    }

    /// Sets up the resources of container `id`: its rootfs from `source`, mounted into the
    /// shared directory in `mode`. Returns what the guest needs: the rootfs path for the OCI
    /// spec and the storages to send with CreateContainer.
    ///
    /// The id is checked first ([`validate_container_id`]); a [`RootfsSource::Directory`]
    /// must be absolute, a bundle's `root.path` inside the bundle. On any error nothing of the
    /// container is left: no mount (the bundle's included), no directory.
    pub fn add_container(
        &mut self,
        id: &str,
        source: RootfsSource,
        mode: RootfsMode,
    ) -> Result<ContainerGuestResources> {
        validate_container_id(id)?;
        if let Some(c) = self.containers.get(id) {
            return Err(Error::RootfsAlreadyShared {
                container_id: id.to_owned(),
                path: c
                    .shared
                    .as_ref()
                    .map_or(c.origin.path(), |s| s.host_path())
                    .to_owned(),
            });
        }
        if let RootfsSource::Bundle { mounts, .. } = &source {
            if let Some(block) =
                crate::rootfs::block::BlockSource::for_rootfs(mounts, &self.devices)?
            {
                return Ok(self.add_block_container(id, block));
            }
        }
        let Some(share) = &self.share else {
            return Err(Error::NoSharedFs {
                container_id: id.to_owned(),
            });
        };
        let origin = match source {
            RootfsSource::Directory(dir) => Origin::Directory(checked_absolute(&dir, "rootfs")?),
            RootfsSource::Bundle {
                bundle,
                root_path,
                mounts,
            } => Origin::Bundle(BundleRootfs::mount(&bundle, root_path.as_deref(), mounts)?),
        };
        // On error `origin` is dropped here, which unmounts what it mounted.
        let shared = share.share_rootfs_with(id, origin.path(), mode)?;
        let guest = ContainerGuestResources {
            rootfs_path: shared.guest_path().to_owned(),
            storages: Vec::new(),
            block_devices: Vec::new(),
        };
        let container = ContainerResources {
            volumes: VolumesSlot::default(),
            shared: Some(shared),
            origin,
        };
        fail_point(Step::ContainerDone)?;
        self.containers.insert(id.to_owned(), container);
        tracing::debug!(container_id = id, rootfs = %guest.rootfs_path, "container resources set up");
        Ok(guest)
    }

    /// Sets up the volumes of container `id` (added before) from its spec's `mounts`
    /// ([`crate::volume`]): host files and directories are bound into the shared directory,
    /// the pod's `/dev/shm` and emptyDirs become guest storages, the rest is passed on.
    /// Returns the mounts as the guest is to make them and the storages to send with
    /// CreateContainer. The shares are the container's: released with it. Block volumes (a
    /// bind of a host block device, a disk filesystem mounted from an image file) are recorded
    /// in the devices slot as the container's disks and returned in `block_devices` for the
    /// caller to hot-plug (and unplug with the container).
    ///
    /// Bad input is refused naming `mounts[i].source` ([`Error::VolumeSourceNotFound`],
    /// [`Error::VolumeRefused`], [`Error::BlockSource`]); on any error nothing this call made
    /// is left, and no disk is recorded.
    pub fn add_volumes(
        &mut self,
        id: &str,
        mounts: &[oci_spec::runtime::Mount],
        options: &crate::VolumeOptions,
    ) -> Result<crate::ContainerVolumes> {
        let Some(container) = self.containers.get_mut(id) else {
            return Err(Error::UnknownContainer {
                container_id: id.to_owned(),
            });
        };
        // Without a shared directory (`shared_fs = "none"`) host binds are refused; block and
        // guest volumes need none.
        let dirs = crate::volume::ShareDirs {
            shared: self.share.as_ref().map(ShareFs::host_path),
            sandbox: &self.sandbox_dir,
        };
        let (mut volumes, blocks) =
            container
                .volumes
                .add(dirs, id, mounts, options, self.devices.enabled())?;
        volumes.block_devices = blocks
            .into_iter()
            .map(|b| self.devices.attach(id, b.source, b.mount_point))
            .collect();
        Ok(volumes)
    }

    /// Shares `sandbox_bind_mounts` (`[runtime]`: `path[:ro|:rw]`, read-only by default) with
    /// the guest at `/run/kata-containers/shared/containers/sandbox-mounts/<base name>`
    /// ([`crate::volume::sandbox_mounts`]); released with the sandbox. An entry that does not
    /// exist, is not a file or directory, or repeats a base name is refused naming
    /// `sandbox_bind_mounts[i]`; on error nothing of them is left. Needs the shared directory.
    pub fn set_up_sandbox_bind_mounts(&mut self, entries: &[String]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let Some(share) = &self.share else {
            return Err(Error::VolumeRefused {
                field: "sandbox_bind_mounts".into(),
                path: PathBuf::from(&entries[0]),
                reason: "shared_fs = \"none\": there is no shared directory to put it in".into(),
            });
        };
        let dirs = crate::volume::ShareDirs {
            shared: Some(share.host_path()),
            sandbox: &self.sandbox_dir,
        };
        let mut mounts = crate::volume::sandbox_mounts::set_up(dirs, entries)?;
        std::mem::swap(&mut self.sandbox_mounts, &mut mounts);
        // What was there before goes (a second call replaces the first).
        mounts.release_in_place()
    }

    /// Container `id` with a block rootfs ([`crate::rootfs::block`]): the disk is recorded
    /// and returned for the caller to hot-plug; nothing is mounted on the host.
    fn add_block_container(
        &mut self,
        id: &str,
        block: crate::rootfs::block::BlockSource,
    ) -> ContainerGuestResources {
        let rootfs_path = crate::rootfs::block::guest_rootfs_path(id);
        let origin = Origin::Block(block.path.clone());
        let attachment = self.devices.attach(id, block, rootfs_path.clone());
        self.containers.insert(
            id.to_owned(),
            ContainerResources {
                volumes: VolumesSlot::default(),
                shared: None,
                origin,
            },
        );
        tracing::debug!(container_id = id, rootfs = %rootfs_path, device = %attachment.device.id, "container block rootfs recorded");
        ContainerGuestResources {
            rootfs_path,
            storages: Vec::new(),
            block_devices: vec![attachment],
        }
    }

    /// Uses block devices for block rootfs (and volumes): on when the VM hot-plugs them and
    /// `disable_block_device_use` is false. Off (the default), a rootfs on a block device is
    /// refused as any host mount of a block filesystem is.
    pub fn use_block_devices(&mut self, on: bool) {
        self.devices.set_enabled(on);
    }

    /// The disks container `id` holds, to hot-unplug before
    /// [`remove_container`](Self::remove_container).
    pub fn container_block_devices(&self, id: &str) -> Vec<kata_hypervisor::BlockDevice> {
        self.devices.container_devices(id)
    }

    /// Records VFIO device `device` as hot-plugged for container `id`, so that
    /// [`state`](Self::state) keeps it: a runtime that [adopts](Self::adopt) the sandbox
    /// unplugs it when the container is removed ([`take_container_vfio`](Self::take_container_vfio)).
    pub fn record_container_vfio(&mut self, id: &str, device: DeviceConfig) {
        self.devices.record_vfio(id, device);
    }

    /// The VFIO devices hot-plugged for container `id`, to unplug; forgotten here.
    pub fn take_container_vfio(&mut self, id: &str) -> Vec<DeviceConfig> {
        self.devices.take_vfio(id)
    }

    /// Where container `id`'s rootfs is on the host: its mount in the shared directory (what
    /// a runtime handler that runs the container on the host uses as its root). `None` for an
    /// unknown container or a block rootfs (a disk of the VM).
    pub fn container_rootfs_host_path(&self, id: &str) -> Option<&Path> {
        self.containers
            .get(id)?
            .shared
            .as_ref()
            .map(|s| s.host_path())
    }

    /// Whether container `id` has resources here.
    pub fn contains_container(&self, id: &str) -> bool {
        self.containers.contains_key(id)
    }

    /// Releases exactly what container `id` holds (its volumes, its rootfs mount in the shared
    /// directory, the bundle mounts made for it). Returns whether it had anything here.
    ///
    /// On error what could not be released stays recorded (in [`state`](Self::state)) for a
    /// later call, [`release`](Self::release) or drop to try again.
    pub fn remove_container(&mut self, id: &str) -> Result<bool> {
        validate_container_id(id)?;
        // Its disks were unplugged by the caller (or go with the VM).
        self.devices.remove_container(id);
        let Some(container) = self.containers.get_mut(id) else {
            return Ok(false);
        };
        container.release_in_place()?;
        self.containers.remove(id);
        if let Err(e) = self.cgroups.remove_container(id) {
            tracing::warn!(
                container_id = id,
                "cannot widen the sandbox cgroup's cpuset again: {e}"
            );
        }
        tracing::debug!(container_id = id, "container resources released");
        Ok(true)
    }

    /// What persist writes: enough for [`adopt`](Self::adopt) and [`cleanup`](Self::cleanup).
    pub fn state(&self) -> ResourcesState {
        ResourcesState {
            shared_fs: self.shared_fs,
            msize_9p: self.msize_9p,
            shared_dir: self.share.as_ref().map(|s| s.host_path().to_owned()),
            virtiofsd: self
                .share
                .as_ref()
                .and_then(|s| s.daemon())
                .map(|d| d.state()),
            containers: self
                .containers
                .iter()
                .map(|(id, c)| (id.clone(), c.state()))
                .collect(),
            network: self.network.state(),
            cgroups: self.cgroups.state(),
            devices: self.devices.state(),
            sandbox_bind_mounts: self.sandbox_mounts.state(),
        }
    }

    /// Gives up ownership: every mount and directory stays, for [`adopt`](Self::adopt) in
    /// this process or another. Returns the state to adopt from (the same as
    /// [`state`](Self::state) just before).
    pub fn detach(mut self) -> ResourcesState {
        let state = self.state();
        for (_, container) in std::mem::take(&mut self.containers) {
            container.detach();
        }
        std::mem::take(&mut self.network).detach();
        std::mem::take(&mut self.cgroups).detach();
        std::mem::take(&mut self.devices).detach();
        std::mem::take(&mut self.sandbox_mounts).detach();
        if let Some(share) = self.share.take() {
            share.detach();
        }
        tracing::debug!(sandbox_dir = %self.sandbox_dir.display(), "sandbox resources detached");
        state
    }

    /// Takes over the resources a [detached](Self::detach) owner left in `sandbox_dir`, as
    /// `state` records them: from now on this one releases them.
    ///
    /// Every recorded mount must be there (else [`Error::NotAdoptable`]) and every recorded
    /// path under the sandbox directory must be where this crate puts it. On error everything
    /// is left as it was, for another try or [`cleanup`](Self::cleanup).
    pub fn adopt(sandbox_dir: impl AsRef<Path>, state: &ResourcesState) -> Result<Self> {
        let given = sandbox_dir.as_ref();
        let sandbox_dir = given.canonicalize().map_err(|e| Error::NotAdoptable {
            path: given.to_owned(),
            reason: format!("the sandbox directory cannot be resolved: {e}"),
        })?;
        let mut adopted = SandboxResources {
            sandbox_dir,
            shared_fs: state.shared_fs,
            msize_9p: state.msize_9p,
            share: None,
            containers: BTreeMap::new(),
            network: NetworkSlot::default(),
            cgroups: CgroupsSlot::default(),
            devices: DevicesSlot::default(),
            sandbox_mounts: VolumesSlot::default(),
        };
        match adopted.adopt_parts(state) {
            Ok(()) => {
                tracing::debug!(
                    sandbox_dir = %adopted.sandbox_dir.display(),
                    containers = adopted.containers.len(),
                    "sandbox resources adopted"
                );
                Ok(adopted)
            }
            Err(e) => {
                // Hand everything back untouched.
                adopted.detach();
                Err(e)
            }
        }
    }

    /// The body of [`adopt`](Self::adopt): what it takes over is put in `self` at once, so
    /// detaching `self` hands it back on error.
    fn adopt_parts(&mut self, state: &ResourcesState) -> Result<()> {
        let not_adoptable = |path: &Path, reason: String| Error::NotAdoptable {
            path: path.to_owned(),
            reason,
        };
        match state.shared_fs {
            SharedFs::None => {
                if let Some(id) = state.containers.keys().next() {
                    return Err(not_adoptable(
                        &self.sandbox_dir,
                        format!("container {id} is recorded in a sandbox without a share"),
                    ));
                }
            }
            kind => {
                let share = ShareFs::adopt(&self.sandbox_dir, kind)?.with_msize_9p(state.msize_9p);
                let share = self.share.insert(share);
                if state.shared_dir.as_deref() != Some(share.host_path()) {
                    return Err(not_adoptable(
                        share.host_path(),
                        format!(
                            "the state records the shared directory as {:?}",
                            state.shared_dir
                        ),
                    ));
                }
                share.adopt_daemon(state.virtiofsd.as_ref())?;
            }
        }
        let Some(share) = &self.share else {
            return self.adopt_slots(state);
        };
        self.sandbox_mounts = VolumesSlot::adopt(
            &crate::volume::sandbox_mounts::host_dir(share.host_path())?,
            &state.sandbox_bind_mounts,
        )?;
        for (id, saved) in &state.containers {
            validate_container_id(id)?;
            let rootfs = &saved.rootfs;
            if let RootfsSourceState::Block { path } = &rootfs.source {
                let volumes = VolumesSlot::adopt(share.host_path(), &saved.volumes)?;
                let origin = Origin::Block(path.clone());
                self.containers.insert(
                    id.clone(),
                    ContainerResources {
                        volumes,
                        shared: None,
                        origin,
                    },
                );
                continue;
            }
            let shared = share.adopt_rootfs(id, rootfs.mode)?;
            if shared.host_path() != rootfs.mount_point {
                shared.detach();
                return Err(not_adoptable(
                    &rootfs.mount_point,
                    format!("container {id}'s rootfs is not mounted where this crate puts it"),
                ));
            }
            let origin = match &rootfs.source {
                RootfsSourceState::Directory { path } => Origin::Directory(path.clone()),
                RootfsSourceState::Block { path } => Origin::Block(path.clone()),
                RootfsSourceState::Bundle {
                    bundle,
                    target,
                    mounts,
                } => match BundleRootfs::adopt(bundle, target, mounts) {
                    Ok(b) => Origin::Bundle(b),
                    Err(e) => {
                        shared.detach();
                        return Err(e);
                    }
                },
            };
            let volumes = match VolumesSlot::adopt(share.host_path(), &saved.volumes) {
                Ok(v) => v,
                Err(e) => {
                    shared.detach();
                    origin.detach();
                    return Err(e);
                }
            };
            self.containers.insert(
                id.clone(),
                ContainerResources {
                    volumes,
                    shared: Some(shared),
                    origin,
                },
            );
        }
        self.adopt_slots(state)
    }

    fn adopt_slots(&mut self, state: &ResourcesState) -> Result<()> {
        fail_point(Step::AdoptSlots)?;
        self.network = NetworkSlot::adopt(&state.network)?;
        self.cgroups = CgroupsSlot::adopt(&state.cgroups)?;
        self.devices = DevicesSlot::adopt(&state.devices)?;
        Ok(())
    }

    /// Removes what a crashed owner of the sandbox `sandbox_dir` left: everything mounted
    /// under its shared and overlay directories and those directories
    /// ([`ShareFs::remove_stale`]), and, if its `state` was saved, the slots' resources and the
    /// bundle rootfs mounts it records. Never unmounts anything else: no path outside the
    /// sandbox directory but a recorded bundle rootfs (inside its recorded bundle).
    ///
    /// Keeps going after an error and returns the first one. The sandbox directory itself
    /// stays (it is the caller's).
    pub fn cleanup(sandbox_dir: impl AsRef<Path>, state: Option<&ResourcesState>) -> Result<()> {
        let sandbox_dir = sandbox_dir.as_ref();
        // Without the owner's state (it died before writing one), the record made before the
        // VM started names what lies outside the sandbox directory: cgroups, taps.
        let early = match state {
            Some(_) => None,
            None => read_early_record(sandbox_dir),
        };
        let state = state.or(early.as_ref());
        let mut first: Result<()> = Ok(());
        let mut note = |what: &str, result: Result<()>| {
            if let Err(e) = result {
                tracing::error!(sandbox_dir = %sandbox_dir.display(), "cleanup of {what}: {e}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        };
        note("the shared directory", ShareFs::remove_stale(sandbox_dir));
        note("volume staging", crate::volume::remove_staging(sandbox_dir));
        if let Some(state) = state {
            for (id, saved) in &state.containers {
                note("volumes", VolumesSlot::cleanup(&saved.volumes));
                if let RootfsSourceState::Bundle {
                    bundle,
                    target,
                    mounts,
                } = &saved.rootfs.source
                {
                    let unmounted = BundleRootfs::cleanup(bundle, target, mounts);
                    if let Ok(n @ 1..) = unmounted {
                        tracing::info!(container_id = %id, target = %target.display(), mounts = n, "unmounted a bundle rootfs left by a crashed owner");
                    }
                    note("a bundle rootfs", unmounted.map(drop));
                }
            }
            note("devices", DevicesSlot::cleanup(&state.devices));
            note("cgroups", CgroupsSlot::cleanup(&state.cgroups));
            note("network", NetworkSlot::cleanup(&state.network));
        }
        remove_early_record(sandbox_dir);
        first
    }

    /// Writes what is set up so far to `<sandbox dir>/resources.json` (private, replaced
    /// atomically), for [`cleanup`](Self::cleanup) to find if the owner dies before it has a
    /// state of its own (`state.json`): the host cgroups and taps are outside the sandbox
    /// directory. Call it after the host side is set up and before the VM starts; it is removed
    /// when the resources are released or cleaned up.
    pub fn record_early(&self) -> Result<()> {
        let path = self.sandbox_dir.join(EARLY_RECORD);
        let tmp = self.sandbox_dir.join(format!(".{EARLY_RECORD}.tmp"));
        let json = serde_json::to_vec(&self.state()).map_err(|e| Error::Io {
            action: "serialising the early resources record",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| Error::Io {
            action: "writing the early resources record",
            path,
            source,
        })
    }

    /// Releases everything: each container's resources, the slots, then the shared directory.
    /// Keeps going after an error and returns the first one (what failed was retried and
    /// logged once more on the way).
    pub fn release(mut self) -> Result<()> {
        self.release_all()
    }

    fn release_all(&mut self) -> Result<()> {
        let mut first: Result<()> = Ok(());
        let mut note = |result: Result<()>| {
            if let Err(e) = result {
                tracing::error!("cannot release a sandbox resource: {e}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        };
        for (_, mut container) in std::mem::take(&mut self.containers) {
            note(container.release_in_place());
        }
        note(self.devices.release_in_place());
        note(self.sandbox_mounts.release_in_place());
        note(self.cgroups.release_in_place());
        note(self.network.release_in_place());
        if let Some(share) = self.share.take() {
            note(share.release());
        }
        remove_early_record(&self.sandbox_dir);
        first
    }
}

/// The file [`SandboxResources::record_early`] writes in the sandbox directory.
const EARLY_RECORD: &str = "resources.json";

/// The early record of `sandbox_dir`, if there is a readable one (a corrupt one is logged and
/// ignored: cleanup then goes on with what the directory itself shows).
fn read_early_record(sandbox_dir: &Path) -> Option<ResourcesState> {
    let path = sandbox_dir.join(EARLY_RECORD);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "early resources record unusable; ignored");
            None
        }
    }
}

fn remove_early_record(sandbox_dir: &Path) {
    for name in [EARLY_RECORD.to_string(), format!(".{EARLY_RECORD}.tmp")] {
        let _ = std::fs::remove_file(sandbox_dir.join(name));
    }
}

impl Drop for SandboxResources {
    fn drop(&mut self) {
        // Errors are logged by release_all.
        let _logged = self.release_all();
    }
}

impl ContainerResources {
    fn state(&self) -> ContainerResourcesState {
        ContainerResourcesState {
            rootfs: match &self.shared {
                Some(shared) => RootfsState {
                    source: self.origin.state(),
                    mode: shared.mode(),
                    mount_point: shared.host_path().to_owned(),
                    guest_path: shared.guest_path().to_owned(),
                    overlay_dir: shared.overlay_dir().map(Path::to_owned),
                },
                // A block rootfs: nothing mounted on the host.
                None => RootfsState {
                    source: self.origin.state(),
                    mode: RootfsMode::ReadWrite,
                    mount_point: PathBuf::new(),
                    guest_path: String::new(),
                    overlay_dir: None,
                },
            },
            volumes: self.volumes.state(),
        }
    }

    /// Releases in order (volumes, the shared rootfs, the bundle mounts), keeping going after
    /// an error; what failed stays recorded for the next try.
    fn release_in_place(&mut self) -> Result<()> {
        let volumes = self.volumes.release_in_place();
        let shared = self
            .shared
            .as_mut()
            .map_or(Ok(()), SharedRootfs::release_in_place);
        let origin = self.origin.release_in_place();
        volumes.and(shared).and(origin)
    }

    fn detach(self) {
        self.volumes.detach();
        if let Some(shared) = self.shared {
            shared.detach();
        }
        self.origin.detach();
    }
}

impl Origin {
    /// The directory that is shared.
    fn path(&self) -> &Path {
        match self {
            Origin::Directory(dir) | Origin::Block(dir) => dir,
            Origin::Bundle(b) => b.target(),
        }
    }

    fn state(&self) -> RootfsSourceState {
        match self {
            Origin::Directory(dir) => RootfsSourceState::Directory { path: dir.clone() },
            Origin::Bundle(b) => RootfsSourceState::Bundle {
                bundle: b.bundle().to_owned(),
                target: b.target().to_owned(),
                mounts: b.mounts().to_vec(),
            },
            Origin::Block(path) => RootfsSourceState::Block { path: path.clone() },
        }
    }

    fn release_in_place(&mut self) -> Result<()> {
        match self {
            Origin::Directory(_) | Origin::Block(_) => Ok(()),
            Origin::Bundle(b) => b.release_in_place(),
        }
    }

    fn detach(self) {
        if let Origin::Bundle(b) = self {
            b.detach();
        }
    }
}

#[cfg(test)]
mod tests;
