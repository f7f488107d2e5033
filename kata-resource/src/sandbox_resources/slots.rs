//! The slots of the sandbox's resource kinds, each filled by the module of this crate that
//! owns it: network, cgroups and devices per sandbox, volumes per container.
//! [`SandboxResources`](super::SandboxResources) sets each up, releases it, detaches, adopts
//! and cleans it up at the right moment, and its state is a field of
//! [`ResourcesState`](super::ResourcesState) (read back with `#[serde(default)]` so files
//! written before a slot was filled still load).
//!
//! Each owner follows the same contract: removed on drop; `detach` leaves it in place; `adopt`
//! takes it over from its state; `cleanup` removes what a crashed owner left, from its state
//! alone.

/// The sandbox's network on the host (the pod's network namespace, a tap joined to each of its
/// interfaces by tc filters): filled, owned by [`crate::network`].
pub(crate) use crate::network::NetworkSlot;
/// What persist records of the sandbox's network.
pub use crate::network::NetworkState;

/// The host cgroups of the VMM and its helpers: filled, owned by [`crate::cgroups`].
pub(crate) use crate::cgroups::CgroupsSlot;
/// What persist records of the sandbox's host cgroups.
pub use crate::cgroups::CgroupsState;

/// The disks given to the sandbox's containers: filled, owned by [`crate::rootfs::block`].
pub(crate) use crate::rootfs::block::DevicesSlot;
/// What persist records of the sandbox's devices.
pub use crate::rootfs::block::DevicesState;

/// A container's volumes (host binds through the shared directory; the guest-only ones need
/// nothing here): filled, owned by [`crate::volume`].
pub(crate) use crate::volume::VolumesSlot;
/// What persist records of a container's volumes.
pub use crate::volume::VolumesState;
