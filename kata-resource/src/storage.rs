//! What the guest agent is asked to mount: [`GuestStorage`], the plain form of the agent
//! protocol's `Storage` message.

use serde::{Deserialize, Serialize};

/// One mount the guest agent performs (the agent protocol's `Storage`), as a plain struct so
/// this crate does not depend on the protocol; `kata-sandbox` converts it.
///
/// ```
/// use kata_resource::GuestStorage;
///
/// let storage = GuestStorage {
///     driver: "9p".into(),
///     source: "kataShared".into(),
///     fstype: "9p".into(),
///     options: vec!["trans=virtio,version=9p2000.L,cache=mmap".into()],
///     mount_point: "/run/kata-containers/shared/containers".into(),
///     driver_options: Vec::new(),
/// };
/// assert_eq!(storage.driver, "9p");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStorage {
    /// The agent's storage driver: `"9p"`, `"virtio-fs"`, ...
    pub driver: String,
    /// The mount source: a mount tag, a device, a path.
    pub source: String,
    /// The filesystem type for mount(2): `"9p"`, `"virtiofs"`, ...
    pub fstype: String,
    /// Mount options, one per element.
    pub options: Vec<String>,
    /// Where the guest mounts it.
    pub mount_point: String,
    /// Options for the driver rather than for mount(2), one per element.
    pub driver_options: Vec<String>,
}
