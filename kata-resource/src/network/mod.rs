//! The sandbox's network on the host: the pod's network namespace (CNI's, named by the OCI
//! spec's `linux.namespaces[network].path`) joined to the VM, as Kata's `tcfilter` model does.
//!
//! For each interface of the namespace ([`discover`]) a tap device is made in that namespace
//! and joined to the interface by tc redirect filters both ways; the taps' open queues go to
//! the VMM, which runs in the host's namespace, as [`NetDevice`](kata_hypervisor::NetDevice)s
//! to cold-plug, and the guest is given the interface's MAC, addresses, routes and neighbours
//! ([`PodNetwork`]). The namespace itself is never changed but for those taps and filters, and
//! never removed: it is CNI's.
//!
//! [`SandboxResources`](crate::SandboxResources) owns it (its `network` slot): set up by
//! [`set_up_network`](crate::SandboxResources::set_up_network), recorded in
//! [`NetworkState`], released with the sandbox (taps deleted, the interfaces' ingress qdiscs
//! and filters removed), handed over on detach/adopt, and cleaned up from its state after a
//! crash.
//!
//! The work is done with iproute2 (`ip -json` to read the namespace, `ip link` and `tc` to
//! change it; Debian's `iproute2`), and the taps with `TUNSETIFF` on `/dev/net/tun`, from a
//! thread that has entered the namespace. Kata's runtime-rs runs `tc` the same way; the
//! commands keep the exact Kata filters readable (`tc -n <ns> filter show dev eth0 ingress`)
//! where hand-built netlink tc messages (u32 selectors, mirred actions) would be the riskiest
//! code here, and JSON output reads the namespace without a new dependency.

mod discover;
mod iproute2;
mod netns;
mod slot;
mod state;
mod tap;
mod tc;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use discover::{ArpNeighbor, Interface, IpFamily, IpPrefix, PodNetwork, Route};
pub(crate) use slot::NetworkSlot;
pub use slot::Rescanned;
pub use state::{EndpointState, NetworkState};

use crate::{Error, Result};

/// How the VM joins the pod's network: Kata's `[runtime] internetworking_model`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum InternetworkingModel {
    /// A tap per interface, joined to it by tc redirect filters (Kata's default). Built.
    #[default]
    #[serde(rename = "tcfilter")]
    TcFilter,
    /// A macvtap per interface. Refused: not built yet.
    #[serde(rename = "macvtap")]
    MacVtap,
    /// No network for the VM. Built.
    None,
    /// Kata's experimental layer-3 forwarding. Refused: not built.
    #[serde(rename = "l3forwarding")]
    L3Forwarding,
}

impl InternetworkingModel {
    /// As Kata's configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            InternetworkingModel::TcFilter => "tcfilter",
            InternetworkingModel::MacVtap => "macvtap",
            InternetworkingModel::None => "none",
            InternetworkingModel::L3Forwarding => "l3forwarding",
        }
    }
}

impl fmt::Display for InternetworkingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InternetworkingModel {
    type Err = Error;

    /// Kata's names: `tcfilter`, `macvtap`, `none`, `l3forwarding` (an empty value is Kata's
    /// default, `tcfilter`).
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "tcfilter" | "" => InternetworkingModel::TcFilter,
            "macvtap" => InternetworkingModel::MacVtap,
            "none" => InternetworkingModel::None,
            "l3forwarding" => InternetworkingModel::L3Forwarding,
            other => {
                return Err(Error::NetworkSetting {
                    key: "internetworking_model",
                    value: format!("{other:?}"),
                    reason: "Kata's models are \"tcfilter\", \"macvtap\", \"none\" and \
                             \"l3forwarding\""
                        .into(),
                })
            }
        })
    }
}

/// What the sandbox's network is made from.
///
/// ```
/// use kata_resource::network::{InternetworkingModel, NetworkConfig};
///
/// let spec: oci_spec::runtime::Spec = serde_json::from_str(
///     r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [
///         {"type": "network", "path": "/var/run/netns/cni-1234"}]}}"#,
/// ).unwrap();
/// let config = NetworkConfig {
///     netns_path: NetworkConfig::netns_path_of(&spec),
///     model: "tcfilter".parse()?,
///     queues: 1,
///     disable_new_netns: false,
/// };
/// assert_eq!(config.netns_path.as_deref(), Some("/var/run/netns/cni-1234".as_ref()));
/// assert_eq!(config.model, InternetworkingModel::TcFilter);
/// # Ok::<(), kata_resource::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The pod's network namespace: the OCI spec's `linux.namespaces[network].path`
    /// ([`netns_path_of`](Self::netns_path_of)). `None`: the VM has no network, as with a
    /// plain `ctr run`.
    pub netns_path: Option<PathBuf>,
    /// `[runtime] internetworking_model`.
    pub model: InternetworkingModel,
    /// `[hypervisor.*] network_queues`: the queues of each tap (and virtio-net queue pairs);
    /// 0 counts as 1.
    pub queues: u32,
    /// `[runtime] disable_new_netns`: as in Kata's runtime-rs, the VM then gets no network
    /// from the pod's namespace, which is not even looked at (kata-rs never makes a namespace
    /// for the VMM, which stays in the host's). Kata allows it only with `internetworking_model
    /// = "none"`; any other model is refused.
    pub disable_new_netns: bool,
}

impl NetworkConfig {
    /// The pod's network namespace named by `spec`: the path of its `linux.namespaces` entry
    /// of type `network`. `None` when there is no such entry or its path is empty (a new,
    /// empty namespace: the VM is one already, and gets no network).
    pub fn netns_path_of(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
        spec.linux()
            .as_ref()?
            .namespaces()
            .as_ref()?
            .iter()
            .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
            .path()
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
    }
}

/// Reads what the network namespace at `netns_path` holds, as the guest would be given it:
/// its interfaces (loopback and unconfigured ones left out) with MAC, MTU and addresses, the
/// routes through them and their neighbours. Changes nothing. Needs `CAP_SYS_ADMIN` (to enter
/// the namespace) and iproute2's `ip`.
///
/// A path that does not exist is [`Error::NetnsNotFound`] naming
/// `linux.namespaces[network].path`.
pub fn discover(netns_path: &Path) -> Result<PodNetwork> {
    let ns = netns::NetNs::open(netns_path)?;
    ns.run(|| discover::discover_here(netns_path).map(|(net, _)| net))
}

#[cfg(test)]
mod tests;
