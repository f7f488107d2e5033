//! Shared directories: a host directory the guest mounts by tag (virtio-9p, served by the VMM,
//! or virtio-fs, served by a vhost-user daemon whose socket the device names).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::SharedFs;

/// A directory of the host shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFsDevice {
    /// The mount tag the guest mounts it by (Kata: `kataShared`).
    pub mount_tag: String,
    /// The host directory.
    pub host_path: PathBuf,
    /// How it reaches the guest (the configuration's `shared_fs`). Which kinds a backend
    /// serves is in its [`Capabilities`](crate::Capabilities).
    pub kind: SharedFs,
    /// The vhost-user socket of the daemon that serves it (`virtio-fs`: the sandbox's
    /// virtiofsd, which kata-resource runs); `None` for kinds the VMM serves itself.
    #[serde(default)]
    pub vhost_user_socket: Option<PathBuf>,
}
