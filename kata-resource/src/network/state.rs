//! [`NetworkState`]: what persist records of the sandbox's network, enough to adopt it and to
//! remove its taps and filters after a crash. Open tap queues are never recorded: a restored
//! VM holds its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{InternetworkingModel, PodNetwork};

/// The sandbox's network, as persist records it. The default (no namespace) is a sandbox
/// without network, and what `state.json` files written before the slot was filled read as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetworkState {
    /// The pod's network namespace (`None`: the sandbox has no network here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The namespace's inode when it was set up: a path that names another namespace now is
    /// left alone.
    #[serde(default)]
    pub netns_inode: u64,
    /// The model it was set up with.
    #[serde(default)]
    pub model: InternetworkingModel,
    /// Each interface joined to a tap.
    #[serde(default)]
    pub endpoints: Vec<EndpointState>,
    /// What the guest was given.
    #[serde(default)]
    pub guest: PodNetwork,
}

/// One interface of the pod's namespace joined to a tap by tc filters (the ingress qdiscs on
/// both, with a redirect each way).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    /// The VM's device id of its NIC (`net0`).
    pub device_id: String,
    /// The pod's interface (`eth0`), whose ingress qdisc this crate added.
    pub interface: String,
    /// The tap this crate made in the namespace (`tap0_kata`).
    pub tap: String,
    /// The tap's queues.
    pub queues: u32,
    /// The guest NIC's MAC (the interface's).
    pub mac: String,
}
