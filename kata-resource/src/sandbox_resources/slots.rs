//! The slots of the resource kinds the next issues fill: network, cgroups and devices per
//! sandbox, volumes per container. The network's is filled ([`crate::network`]); each empty
//! one already sits where its owner will:
//! [`SandboxResources`](super::SandboxResources) sets it up, releases it, detaches, adopts and
//! cleans it up at the right moment, and its state is a field of
//! [`ResourcesState`](super::ResourcesState) (an empty object in `state.json` now, read back
//! with `#[serde(default)]` so files written before a slot existed still load).
//!
//! To fill one: replace its empty owner with one module of this crate that owns the resource
//! (removed on drop; `detach` leaves it in place; `adopt` takes it over from its state;
//! `cleanup` removes what a crashed owner left, from its state alone), and give its state the
//! fields that `adopt` and `cleanup` need.

use serde::{Deserialize, Serialize};

use crate::Result;

/// The sandbox's network on the host (the pod's network namespace, a tap joined to each of its
/// interfaces by tc filters): filled, owned by [`crate::network`].
pub(crate) use crate::network::NetworkSlot;
/// What persist records of the sandbox's network.
pub use crate::network::NetworkState;

/// The host cgroups of the VMM and its helpers: filled, owned by [`crate::cgroups`].
pub(crate) use crate::cgroups::CgroupsSlot;
/// What persist records of the sandbox's host cgroups.
pub use crate::cgroups::CgroupsState;

macro_rules! empty_slot {
    ($(#[$doc:meta])* $slot:ident, $(#[$state_doc:meta])* $state:ident) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub(crate) struct $slot {}

        $(#[$state_doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[non_exhaustive]
        pub struct $state {}

        impl $slot {
            /// What persist records of it.
            pub(crate) fn state(&self) -> $state {
                $state {}
            }

            /// Takes over what a detached owner left, as `state` records it.
            pub(crate) fn adopt(_state: &$state) -> Result<Self> {
                Ok($slot {})
            }

            /// Removes what a crashed owner left, as `state` records it.
            pub(crate) fn cleanup(_state: &$state) -> Result<()> {
                Ok(())
            }

            /// Releases it; what fails stays recorded for the next try.
            pub(crate) fn release_in_place(&mut self) -> Result<()> {
                Ok(())
            }

            /// Gives up ownership: everything stays for [`adopt`](Self::adopt).
            pub(crate) fn detach(self) {}
        }
    };
}

/// The disks given to the sandbox's containers: filled, owned by [`crate::rootfs::block`].
pub(crate) use crate::rootfs::block::DevicesSlot;
/// What persist records of the sandbox's devices.
pub use crate::rootfs::block::DevicesState;

empty_slot!(
    /// A container's volumes (bind mounts, ephemeral and block volumes): filled by the
    /// resources issue.
    VolumesSlot,
    /// What persist records of a container's volumes: nothing yet.
    VolumesState
);
