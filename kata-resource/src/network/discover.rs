//! Discovery: what the pod's network namespace holds, as the guest is to be given it.
//!
//! Read with iproute2's JSON output (`ip -json -details addr show`, `ip -json route show`
//! for IPv4 and IPv6, `ip -json neigh show`) in the namespace. What is kept follows Kata:
//! - interfaces: every Ethernet link but loopback, tun/tap devices (kata-rs's own taps among
//!   them) and bridges, with at least one address (an interface without one is a tunnel's base
//!   device or not set up yet);
//! - addresses: all but loopback and IPv6 link-local ones (the guest kernel makes the same
//!   `fe80::` address itself from the same MAC);
//! - routes: the main table's unicast routes through a kept interface, but those the kernel
//!   made for an address (`proto kernel`), which the guest's kernel makes again; multipath
//!   routes are not carried (logged);
//! - neighbours: those on a kept interface with a link-layer address (so not `FAILED` or
//!   `INCOMPLETE` ones), static (`PERMANENT`) entries such as Calico's gateway among them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::iproute2::ip_json;
use crate::{Error, Result};

/// The pod's network as the guest is to see it: the interfaces to give it NICs for, and the
/// routes and ARP neighbours to set up once they are there. kata-sandbox converts these to the
/// agent's `Interface`, `Route` and `ARPNeighbor` (UpdateInterface, UpdateRoutes,
/// AddARPNeighbors).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The interfaces, in the order of their index in the pod's namespace.
    pub interfaces: Vec<Interface>,
    /// The routes through them.
    pub routes: Vec<Route>,
    /// The ARP (and NDP) neighbours on them.
    pub neighbors: Vec<ArpNeighbor>,
}

impl PodNetwork {
    /// Whether there is nothing to give the guest.
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }
}

/// One network interface, in the guest's terms: the guest NIC gets this name, MAC, MTU and
/// these addresses, which are those of the pod's interface (the veth that CNI put in the
/// namespace, which keeps them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The name in the pod's namespace, and the name the guest gives its NIC (`eth0`).
    pub name: String,
    /// The MAC address (`aa:bb:cc:dd:ee:ff`, lower case): the guest NIC's. The agent finds the
    /// NIC by it.
    pub mac: String,
    /// The MTU.
    pub mtu: u32,
    /// The addresses with their prefix lengths.
    pub addresses: Vec<IpPrefix>,
    /// The link kind in the pod's namespace (`veth`, `macvlan`, `ipvlan`, `vlan`; empty for a
    /// device without one), Kata's `Interface.type`.
    pub kind: String,
    /// Whether the interface does not use ARP (`IFF_NOARP`, Kata's `Interface.raw_flags`).
    pub noarp: bool,
}

/// An IP address with a prefix length: `10.88.0.2/16`, `fd00::2/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpPrefix {
    /// The address.
    pub address: IpAddr,
    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
}

impl IpPrefix {
    /// A host prefix (`/32` or `/128`) for `address`.
    pub fn host(address: IpAddr) -> Self {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        IpPrefix {
            address,
            prefix_len,
        }
    }

    /// The address family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.address)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl FromStr for IpPrefix {
    type Err = String;

    /// `a.b.c.d/n`, `x::y/n`, or a bare address (a host prefix).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let Some((address, len)) = s.split_once('/') else {
            return IpAddr::from_str(s)
                .map(IpPrefix::host)
                .map_err(|e| format!("{s:?}: {e}"));
        };
        let address = IpAddr::from_str(address).map_err(|e| format!("{s:?}: {e}"))?;
        let max = IpPrefix::host(address).prefix_len;
        match len.parse::<u8>() {
            Ok(prefix_len) if prefix_len <= max => Ok(IpPrefix {
                address,
                prefix_len,
            }),
            _ => Err(format!("{s:?}: the prefix length must be 0..={max}")),
        }
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `address`.
    pub fn of(address: &IpAddr) -> Self {
        if address.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// A route, in the guest's terms (the device is the guest NIC's name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination (`None`: the default route).
    pub destination: Option<IpPrefix>,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// The preferred source address (`src`), if any.
    pub source: Option<IpAddr>,
    /// The interface (its name).
    pub device: String,
    /// The scope (`RT_SCOPE_*`: 0 universe, 253 link, 254 host).
    pub scope: u8,
    /// The address family.
    pub family: IpFamily,
    /// Whether the gateway is reachable on the link without a covering route (`onlink`,
    /// `RTNH_F_ONLINK`), as Calico's `default via 169.254.1.1 dev eth0 onlink`.
    pub onlink: bool,
}

/// A neighbour entry (ARP for IPv4, NDP for IPv6), in the guest's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpNeighbor {
    /// The interface (its name).
    pub device: String,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its link-layer address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// The state bits (`NUD_*`: 0x80 permanent, 0x02 reachable, 0x04 stale, ...).
    pub state: u16,
}

/// Reads the network of the namespace the calling thread is in, `netns` naming it for
/// messages.
pub(crate) fn discover_here(netns: &Path) -> Result<(PodNetwork, Vec<Link>)> {
    let links: Vec<RawLink> = ip_json(
        netns,
        "list the interfaces and addresses",
        &["-details", "addr", "show"],
    )?;
    let v4: Vec<RawRoute> = ip_json(netns, "list the IPv4 routes", &["-4", "route", "show"])?;
    let v6: Vec<RawRoute> = ip_json(netns, "list the IPv6 routes", &["-6", "route", "show"])?;
    let routes = (v4.into_iter().map(|r| (IpFamily::V4, r)))
        .chain(v6.into_iter().map(|r| (IpFamily::V6, r)))
        .collect();
    let neighbors: Vec<RawNeighbor> = ip_json(netns, "list the neighbours", &["neigh", "show"])?;
    build(netns, links, routes, neighbors)
}

/// A link of the namespace as found, whether it is kept or not: names in use (a tap must not
/// take one) and each kept interface's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    /// Whether it is one of [`PodNetwork::interfaces`].
    pub kept: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawLink {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    linkinfo: Option<RawLinkInfo>,
    #[serde(default)]
    addr_info: Vec<RawAddress>,
}

#[derive(Debug, Deserialize)]
struct RawLinkInfo {
    #[serde(default)]
    info_kind: String,
}

#[derive(Debug, Deserialize)]
struct RawAddress {
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: Option<u8>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRoute {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    protocol: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<serde_json::Value>,
    #[serde(default)]
    prefsrc: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    table: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawNeighbor {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// Link kinds carried to the guest (empty: a device with no kind, such as a physical NIC).
const KINDS: &[&str] = &["veth", "macvlan", "ipvlan", "vlan", ""];

fn build(
    netns: &Path,
    links: Vec<RawLink>,
    routes: Vec<(IpFamily, RawRoute)>,
    neighbors: Vec<RawNeighbor>,
) -> Result<(PodNetwork, Vec<Link>)> {
    let bad = |what: String| Error::Network {
        netns: netns.to_owned(),
        action: "read its interfaces".into(),
        reason: what,
    };
    let mut net = PodNetwork::default();
    let mut all = Vec::new();
    let mut sorted = links;
    sorted.sort_by_key(|l| l.ifindex);
    for link in sorted {
        let kind = link
            .linkinfo
            .as_ref()
            .map(|i| i.info_kind.clone())
            .unwrap_or_default();
        let mut kept = false;
        if link.flags.iter().any(|f| f == "LOOPBACK") || link.link_type != "ether" {
            // Loopback, tunnels, and other links that are not Ethernet.
        } else if !KINDS.contains(&kind.as_str()) {
            tracing::debug!(netns = %netns.display(), interface = %link.ifname, %kind, "not carried to the guest: link kind");
        } else {
            let mut addresses = Vec::new();
            for a in &link.addr_info {
                let (Some(local), Some(len)) = (&a.local, a.prefixlen) else {
                    continue;
                };
                let prefix: IpPrefix = format!("{local}/{len}")
                    .parse()
                    .map_err(|e| bad(format!("interface {}: address {e}", link.ifname)))?;
                if prefix.address.is_loopback() || is_ipv6_link_local(&prefix.address) {
                    continue;
                }
                addresses.push(prefix);
            }
            if addresses.is_empty() {
                tracing::debug!(netns = %netns.display(), interface = %link.ifname, "not carried to the guest: no address");
            } else {
                let mac = link.address.to_ascii_lowercase();
                if !is_mac(&mac) {
                    return Err(bad(format!(
                        "interface {} has no Ethernet address ({:?})",
                        link.ifname, link.address
                    )));
                }
                kept = true;
                net.interfaces.push(Interface {
                    name: link.ifname.clone(),
                    mac,
                    mtu: link.mtu,
                    addresses,
                    kind,
                    noarp: link.flags.iter().any(|f| f == "NOARP"),
                });
            }
        }
        all.push(Link {
            index: link.ifindex,
            name: link.ifname,
            kept,
        });
    }
    let kept: BTreeSet<&str> = net.interfaces.iter().map(|i| i.name.as_str()).collect();

    for (family, r) in routes {
        let Some(dev) = r.dev.as_deref().filter(|d| kept.contains(d)) else {
            if r.dev.is_none() {
                tracing::info!(netns = %netns.display(), dst = %r.dst, "route not carried to the guest: no single device (multipath?)");
            }
            continue;
        };
        let unicast = r.kind.as_deref().is_none_or(|k| k == "unicast");
        let main = r.table.as_ref().is_none_or(|t| t == "main" || t == 254);
        let by_kernel = r.protocol.as_ref().is_some_and(|p| p == "kernel" || p == 2);
        if !unicast || !main || by_kernel {
            continue;
        }
        let destination = match r.dst.as_str() {
            "default" => None,
            dst => Some(
                dst.parse::<IpPrefix>()
                    .map_err(|e| bad(format!("route destination {e}")))?,
            ),
        };
        let gateway = r
            .gateway
            .as_deref()
            .map(IpAddr::from_str)
            .transpose()
            .map_err(|e| bad(format!("route to {}: gateway: {e}", r.dst)))?;
        let source = r
            .prefsrc
            .as_deref()
            .map(IpAddr::from_str)
            .transpose()
            .map_err(|e| bad(format!("route to {}: source: {e}", r.dst)))?;
        net.routes.push(Route {
            destination,
            gateway,
            source,
            device: dev.to_owned(),
            scope: scope_number(r.scope.as_ref()),
            family,
            onlink: r.flags.iter().any(|f| f == "onlink"),
        });
    }

    for n in neighbors {
        let (Some(dev), Some(mac)) = (n.dev.as_deref(), n.lladdr.as_deref()) else {
            continue;
        };
        if !kept.contains(dev) {
            continue;
        }
        let state = n.state.iter().map(|s| nud_bit(s)).fold(0, |a, b| a | b);
        if state & (NUD_FAILED | NUD_INCOMPLETE) != 0 {
            continue;
        }
        let ip = IpAddr::from_str(&n.dst).map_err(|e| bad(format!("neighbour {}: {e}", n.dst)))?;
        net.neighbors.push(ArpNeighbor {
            device: dev.to_owned(),
            ip,
            mac: mac.to_ascii_lowercase(),
            state,
        });
    }
    Ok((net, all))
}

fn is_ipv6_link_local(address: &IpAddr) -> bool {
    matches!(address, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Whether `s` is a MAC address as iproute2 prints it (`aa:bb:cc:dd:ee:ff`, not all zero).
pub(crate) fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && s != "00:00:00:00:00:00"
}

fn scope_number(scope: Option<&serde_json::Value>) -> u8 {
    match scope {
        None => 0,
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().and_then(|n| u8::try_from(n).ok()).unwrap_or(0)
        }
        Some(serde_json::Value::String(s)) => match s.as_str() {
            "global" | "universe" => 0,
            "site" => 200,
            "link" => 253,
            "host" => 254,
            "nowhere" => 255,
            other => other.parse().unwrap_or(0),
        },
        Some(_) => 0,
    }
}

const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;

fn nud_bit(state: &str) -> u16 {
    match state {
        "INCOMPLETE" => NUD_INCOMPLETE,
        "REACHABLE" => 0x02,
        "STALE" => 0x04,
        "DELAY" => 0x08,
        "PROBE" => 0x10,
        "FAILED" => NUD_FAILED,
        "NOARP" => 0x40,
        "PERMANENT" => 0x80,
        _ => 0,
    }
}

#[cfg(test)]
pub(crate) fn build_from_json(
    links: &str,
    routes_v4: &str,
    routes_v6: &str,
    neighbors: &str,
) -> Result<(PodNetwork, Vec<Link>)> {
    let routes = |family, json| {
        serde_json::from_str::<Vec<RawRoute>>(json)
            .unwrap()
            .into_iter()
            .map(move |r| (family, r))
    };
    build(
        Path::new("/run/netns/test"),
        serde_json::from_str(links).unwrap(),
        routes(IpFamily::V4, routes_v4)
            .chain(routes(IpFamily::V6, routes_v6))
            .collect(),
        serde_json::from_str(neighbors).unwrap(),
    )
}
