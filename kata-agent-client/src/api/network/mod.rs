//! The guest's network as the runtime describes it to the agent: [`Interface`]s with their
//! [`IpAddress`]es, [`Route`]s and static [`ArpNeighbor`]s.
//!
//! Plain Rust values: addresses are [`std::net::IpAddr`] (with a prefix length where a
//! subnet is meant), hardware addresses are [`MacAddress`]. The façade turns them into the
//! protocol's `types.Interface`, `types.Route` and `types.ARPNeighbor` (Kata's wire format) for
//! `UpdateInterface`, `UpdateRoutes`, `AddARPNeighbors`, and decodes the agent's answers back
//! (`wire`, public with feature `server`, is where both directions live).
//!
//! ```
//! use kata_agent_client::api::{Interface, IpAddress, Route};
//!
//! let eth0 = Interface::new("eth0")
//!     .hw_addr("02:42:0a:58:00:02".parse()?)
//!     .mtu(1450)
//!     .address("10.88.0.2/16".parse()?);
//! let routes = [
//!     Route::link("10.88.0.0/16".parse()?, "eth0").source("10.88.0.2".parse()?),
//!     Route::default_via("10.88.0.1".parse()?, "eth0"),
//! ];
//! assert_eq!(routes[1].to_string(), "default via 10.88.0.1 dev eth0");
//! assert_eq!(eth0.addresses[0], IpAddress::new("10.88.0.2".parse()?, 16)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "server")]
pub mod wire;
// Without `server` only the part the façade calls is used.
#[cfg(not(feature = "server"))]
#[allow(dead_code)]
pub(crate) mod wire;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::{Error, Result};

/// `IFF_NOARP`: the link resolves no neighbours (the protocol's `raw_flags` bit).
pub(crate) const IFF_NOARP: u32 = 0x80;
/// `RTNH_F_ONLINK`: the gateway is on the link even outside its subnets (`Route.flags`).
pub(crate) const RTNH_F_ONLINK: u32 = 0x4;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidNetwork {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// IPv4.
    #[default]
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `address`.
    pub fn of(address: &IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The longest prefix of the family: 32 or 128.
    pub fn max_prefix_len(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// An IP address with the prefix length of its subnet: `10.88.0.2/16`, `fd00::2/64`.
///
/// Written and parsed in CIDR form; an address without `/n` is a host (`/32`, `/128`).
/// The family is the address's ([`IpAddress::family`]).
///
/// ```
/// use kata_agent_client::api::{IpAddress, IpFamily};
///
/// let a: IpAddress = "10.88.0.2/16".parse()?;
/// assert_eq!((a.prefix_len, a.family()), (16, IpFamily::V4));
/// assert_eq!(a.network().to_string(), "10.88.0.0/16");
/// assert!(a.contains(&"10.88.200.1".parse()?));
/// assert!("10.0.0.1/33".parse::<IpAddress>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpAddress {
    /// The address.
    pub address: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

impl IpAddress {
    /// `address/prefix_len`; [`Error::InvalidNetwork`] when the prefix is longer than the
    /// family allows.
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<Self> {
        let max = IpFamily::of(&address).max_prefix_len();
        if prefix_len > max {
            return Err(invalid(
                format!("prefix of {address}"),
                format!(
                    "{prefix_len} is longer than an {} address (0-{max})",
                    IpFamily::of(&address)
                ),
            ));
        }
        Ok(IpAddress {
            address,
            prefix_len,
        })
    }

    /// A host address: the family's longest prefix.
    pub fn host(address: IpAddr) -> Self {
        IpAddress {
            address,
            prefix_len: IpFamily::of(&address).max_prefix_len(),
        }
    }

    /// The address's family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.address)
    }

    /// The subnet: the address with its host bits cleared.
    pub fn network(&self) -> IpAddress {
        IpAddress {
            address: masked(self.address, self.prefix_len),
            prefix_len: self.prefix_len,
        }
    }

    /// Whether `ip` is in this subnet.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self.family()
            && masked(*ip, self.prefix_len) == masked(self.address, self.prefix_len)
    }

    /// Whether this is a default route's destination (`0.0.0.0/0`, `::/0`).
    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }
}

/// `ip` with all but its first `prefix_len` bits cleared.
fn masked(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

impl FromStr for IpAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let address: IpAddr = addr.parse().map_err(|_| {
            invalid(
                "IP address",
                format!("{s:?} is not an IPv4 or IPv6 address (with an optional /prefix)"),
            )
        })?;
        match prefix {
            None => Ok(IpAddress::host(address)),
            Some(p) => {
                let prefix_len = p.parse::<u8>().map_err(|_| {
                    invalid(
                        "IP address",
                        format!("{s:?}: the prefix length {p:?} is not a number"),
                    )
                })?;
                IpAddress::new(address, prefix_len)
            }
        }
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// An Ethernet hardware address, written `02:42:0a:58:00:02` (lower case; parsing takes
/// either case).
///
/// ```
/// use kata_agent_client::api::MacAddress;
///
/// let mac: MacAddress = "02:42:0A:58:00:02".parse()?;
/// assert_eq!(mac.to_string(), "02:42:0a:58:00:02");
/// assert!("02:42:0a:58:00".parse::<MacAddress>().is_err());
/// # Ok::<(), kata_agent_client::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            invalid(
                "MAC address",
                format!("{s:?} is not six hex bytes separated by ':' (e.g. 02:42:0a:58:00:02)"),
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddress(out))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A guest network interface: how `UpdateInterface` configures it, or how `ListInterfaces`
/// found it.
///
/// The agent finds the guest link by [`hw_addr`](Interface::hw_addr) when it is set (the
/// virtio-net device's MAC, the reliable key), otherwise by [`device`](Interface::device) and
/// then by [`name`](Interface::name); it renames it to `name`, sets `mtu` (0 keeps the current
/// one), makes `addresses` its only addresses (IPv6 link-local ones stay, the kernel owns
/// them) and brings it up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Interface {
    /// The name the interface gets in the guest (`eth0`); empty keeps the current name.
    pub name: String,
    /// The name the guest kernel gave the device, when it is known and no MAC is given.
    pub device: String,
    /// The hardware address the link is found by.
    pub hw_addr: Option<MacAddress>,
    /// The MTU; 0 keeps the link's.
    pub mtu: u32,
    /// Its IP addresses, each with the prefix of its subnet.
    pub addresses: Vec<IpAddress>,
    /// The link kind as netlink names it (`veth`, `tap`, ...; empty for a plain device such
    /// as virtio-net). Informational.
    pub link_type: String,
    /// The PCI path the device was hot-plugged at (`02/00`): the agent waits for a link with
    /// the MAC address to appear before it gives up.
    pub pci_path: Option<String>,
    /// The link resolves no neighbours (`IFF_NOARP`).
    pub noarp: bool,
}

impl Interface {
    /// An interface to be named `name`, with nothing else set.
    pub fn new(name: impl Into<String>) -> Self {
        Interface {
            name: name.into(),
            ..Interface::default()
        }
    }

    /// Sets the MAC address the link is found by.
    pub fn hw_addr(mut self, mac: MacAddress) -> Self {
        self.hw_addr = Some(mac);
        self
    }

    /// Sets the guest kernel's name of the device (found by it when no MAC is given).
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Adds an address.
    pub fn address(mut self, address: IpAddress) -> Self {
        self.addresses.push(address);
        self
    }

    /// Sets the addresses.
    pub fn addresses(mut self, addresses: impl IntoIterator<Item = IpAddress>) -> Self {
        self.addresses = addresses.into_iter().collect();
        self
    }

    /// Sets the link kind.
    pub fn link_type(mut self, link_type: impl Into<String>) -> Self {
        self.link_type = link_type.into();
        self
    }

    /// Sets the PCI path of a hot-plugged device.
    pub fn pci_path(mut self, pci_path: impl Into<String>) -> Self {
        self.pci_path = Some(pci_path.into());
        self
    }

    /// Sets whether the link resolves no neighbours.
    pub fn noarp(mut self, noarp: bool) -> Self {
        self.noarp = noarp;
        self
    }
}

impl fmt::Display for Interface {
    /// `eth0 (02:42:0a:58:00:02)`: how errors name an interface.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            &self.device
        } else {
            &self.name
        };
        match (name.is_empty(), &self.hw_addr) {
            (false, Some(mac)) => write!(f, "{name} ({mac})"),
            (false, None) => f.write_str(name),
            (true, Some(mac)) => write!(f, "the interface with MAC {mac}"),
            (true, None) => f.write_str("an interface with neither name nor MAC address"),
        }
    }
}

/// The scope of a route (`RT_SCOPE_*`): how far its destination is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RouteScope {
    /// Anywhere (routes through a gateway, the default).
    #[default]
    Universe,
    /// Inside the site (IPv6).
    Site,
    /// On the link: directly reachable (a subnet's route).
    Link,
    /// This host.
    Host,
    /// No destination.
    Nowhere,
    /// Another value.
    Other(u8),
}

impl From<u8> for RouteScope {
    fn from(v: u8) -> Self {
        match v {
            0 => RouteScope::Universe,
            200 => RouteScope::Site,
            253 => RouteScope::Link,
            254 => RouteScope::Host,
            255 => RouteScope::Nowhere,
            other => RouteScope::Other(other),
        }
    }
}

impl From<RouteScope> for u8 {
    fn from(s: RouteScope) -> u8 {
        match s {
            RouteScope::Universe => 0,
            RouteScope::Site => 200,
            RouteScope::Link => 253,
            RouteScope::Host => 254,
            RouteScope::Nowhere => 255,
            RouteScope::Other(v) => v,
        }
    }
}

impl fmt::Display for RouteScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteScope::Universe => f.write_str("global"),
            RouteScope::Site => f.write_str("site"),
            RouteScope::Link => f.write_str("link"),
            RouteScope::Host => f.write_str("host"),
            RouteScope::Nowhere => f.write_str("nowhere"),
            RouteScope::Other(v) => write!(f, "{v}"),
        }
    }
}

/// A route of the guest's main routing table.
///
/// Displays as `ip route` prints it: `default via 10.88.0.1 dev eth0`,
/// `10.88.0.0/16 dev eth0 scope link src 10.88.0.2`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Route {
    /// The destination subnet; `None` is the default route.
    pub destination: Option<IpAddress>,
    /// The next hop; `None` for a destination on the link.
    pub gateway: Option<IpAddr>,
    /// The interface the route goes out of (its guest name).
    pub device: String,
    /// The preferred source address (`src`).
    pub source: Option<IpAddr>,
    /// The scope.
    pub scope: RouteScope,
    /// The family. [`Route::default_via`], [`Route::link`] and [`Route::via`] set it from
    /// their addresses; it must agree with every address of the route.
    pub family: IpFamily,
    /// The gateway is on the link even if no subnet of the device holds it.
    pub onlink: bool,
}

impl Route {
    /// `default via <gateway> dev <device>`.
    pub fn default_via(gateway: IpAddr, device: impl Into<String>) -> Self {
        Route {
            gateway: Some(gateway),
            device: device.into(),
            family: IpFamily::of(&gateway),
            ..Route::default()
        }
    }

    /// `<destination> dev <device> scope link`: a subnet on the link.
    pub fn link(destination: IpAddress, device: impl Into<String>) -> Self {
        Route {
            destination: Some(destination),
            device: device.into(),
            scope: RouteScope::Link,
            family: destination.family(),
            ..Route::default()
        }
    }

    /// `<destination> via <gateway> dev <device>`.
    pub fn via(destination: IpAddress, gateway: IpAddr, device: impl Into<String>) -> Self {
        Route {
            destination: Some(destination),
            gateway: Some(gateway),
            device: device.into(),
            family: destination.family(),
            ..Route::default()
        }
    }

    /// Sets the preferred source address.
    pub fn source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the family (for a default route without a gateway).
    pub fn family(mut self, family: IpFamily) -> Self {
        self.family = family;
        self
    }

    /// Marks the gateway as on the link.
    pub fn onlink(mut self, onlink: bool) -> Self {
        self.onlink = onlink;
        self
    }

    /// Checks that every address of the route is of its family (`field` names the route in
    /// the error).
    pub fn check_family(&self, field: &str) -> Result<()> {
        let addresses = [
            ("dest", self.destination.map(|d| d.address)),
            ("gateway", self.gateway),
            ("source", self.source),
        ];
        for (name, address) in addresses {
            if let Some(a) = address {
                if IpFamily::of(&a) != self.family {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        format!(
                            "{a} is an {} address in an {} route ({self})",
                            IpFamily::of(&a),
                            self.family
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            None => f.write_str("default")?,
            Some(d) => write!(f, "{d}")?,
        }
        if let Some(g) = &self.gateway {
            write!(f, " via {g}")?;
        }
        if !self.device.is_empty() {
            write!(f, " dev {}", self.device)?;
        }
        if self.scope != RouteScope::Universe {
            write!(f, " scope {}", self.scope)?;
        }
        if let Some(s) = &self.source {
            write!(f, " src {s}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// The state of a neighbour entry (`NUD_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NeighborState {
    /// Static: never probed nor expired (`NUD_PERMANENT`), what `AddARPNeighbors` is for.
    #[default]
    Permanent,
    /// Confirmed reachable (`NUD_REACHABLE`).
    Reachable,
    /// Valid but unconfirmed (`NUD_STALE`).
    Stale,
    /// Needs no resolution (`NUD_NOARP`).
    NoArp,
    /// Another `NUD_*` bit set.
    Other(u16),
}

impl From<u16> for NeighborState {
    fn from(v: u16) -> Self {
        match v {
            0x80 => NeighborState::Permanent,
            0x02 => NeighborState::Reachable,
            0x04 => NeighborState::Stale,
            0x40 => NeighborState::NoArp,
            other => NeighborState::Other(other),
        }
    }
}

impl From<NeighborState> for u16 {
    fn from(s: NeighborState) -> u16 {
        match s {
            NeighborState::Permanent => 0x80,
            NeighborState::Reachable => 0x02,
            NeighborState::Stale => 0x04,
            NeighborState::NoArp => 0x40,
            NeighborState::Other(v) => v,
        }
    }
}

/// A static ARP (IPv4) or NDP (IPv6) neighbour entry: some CNI plugins route a pod through a
/// gateway that answers no ARP (Calico's `169.254.1.1`) and install one.
///
/// ```
/// use kata_agent_client::api::ArpNeighbor;
///
/// let gw = ArpNeighbor::new("169.254.1.1".parse()?, "ee:ee:ee:ee:ee:ee".parse()?, "eth0");
/// assert_eq!(gw.to_string(), "169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ArpNeighbor {
    /// The neighbour's IP address.
    pub address: IpAddr,
    /// The interface it is on (its guest name).
    pub device: String,
    /// Its link-layer address.
    pub lladdr: Option<MacAddress>,
    /// The entry's state.
    pub state: NeighborState,
    /// `NTF_*` flags (`NTF_ROUTER` = 0x80, `NTF_PROXY` = 0x08, ...).
    pub flags: u8,
}

impl ArpNeighbor {
    /// A permanent entry: `address` is at `lladdr` on `device`.
    pub fn new(address: IpAddr, lladdr: MacAddress, device: impl Into<String>) -> Self {
        ArpNeighbor {
            address,
            device: device.into(),
            lladdr: Some(lladdr),
            state: NeighborState::Permanent,
            flags: 0,
        }
    }

    /// Sets the state.
    pub fn state(mut self, state: NeighborState) -> Self {
        self.state = state;
        self
    }

    /// Sets the `NTF_*` flags.
    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }
}

impl fmt::Display for ArpNeighbor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address)?;
        if let Some(l) = &self.lladdr {
            write!(f, " lladdr {l}")?;
        }
        write!(f, " dev {}", self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_parse_print_and_mask() {
        let a: IpAddress = "10.88.3.7/16".parse().unwrap();
        assert_eq!(a.to_string(), "10.88.3.7/16");
        assert_eq!(a.network().to_string(), "10.88.0.0/16");
        assert!(a.contains(&"10.88.255.1".parse().unwrap()));
        assert!(!a.contains(&"10.89.0.1".parse().unwrap()));
        assert!(!a.contains(&"::1".parse().unwrap()));
        let h: IpAddress = "fd00::2".parse().unwrap();
        assert_eq!((h.prefix_len, h.family()), (128, IpFamily::V6));
        let v6: IpAddress = "fd00:1:2:3::9/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00:1:2:3::/64");
        let all: IpAddress = "0.0.0.0/0".parse().unwrap();
        assert!(all.is_default() && all.contains(&"1.2.3.4".parse().unwrap()));
        for bad in [
            "10.0.0.1/33",
            "fd00::1/129",
            "10.0.0/24",
            "x",
            "10.0.0.1/",
            "10.0.0.1/a",
        ] {
            let err = bad.parse::<IpAddress>().unwrap_err();
            assert!(matches!(err, Error::InvalidNetwork { .. }), "{bad}: {err}");
        }
        let err = "10.0.0.1/33".parse::<IpAddress>().unwrap_err().to_string();
        assert!(
            err.contains("33 is longer than an IPv4 address (0-32)"),
            "{err}"
        );
    }

    #[test]
    fn mac_addresses_parse_and_print() {
        let m: MacAddress = "02:42:AC:11:00:2".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert_eq!(m.octets(), [2, 0x42, 0xac, 0x11, 0, 2]);
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "02:42:ac:11:00:zz",
            "0242:ac:11:00:02:03",
        ] {
            let err = bad.parse::<MacAddress>().unwrap_err().to_string();
            assert!(err.starts_with("MAC address"), "{bad}: {err}");
        }
    }

    #[test]
    fn routes_display_like_ip_route() {
        let gw = Route::default_via("10.0.0.1".parse().unwrap(), "eth0");
        assert_eq!(gw.to_string(), "default via 10.0.0.1 dev eth0");
        assert_eq!(gw.family, IpFamily::V4);
        let link =
            Route::link("10.0.0.0/24".parse().unwrap(), "eth0").source("10.0.0.2".parse().unwrap());
        assert_eq!(
            link.to_string(),
            "10.0.0.0/24 dev eth0 scope link src 10.0.0.2"
        );
        let v6 = Route::via(
            "fd01::/64".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            "eth1",
        )
        .onlink(true);
        assert_eq!(v6.to_string(), "fd01::/64 via fd00::1 dev eth1 onlink");
        assert_eq!(v6.family, IpFamily::V6);
    }

    #[test]
    fn a_route_mixing_families_is_refused_naming_the_address() {
        let mut r = Route::default_via("10.0.0.1".parse().unwrap(), "eth0");
        r.check_family("routes[0]").unwrap();
        r.source = Some("fd00::2".parse().unwrap());
        let err = r.check_family("routes[0]").unwrap_err().to_string();
        assert!(
            err.starts_with("routes[0].source fd00::2 is an IPv6 address in an IPv4 route"),
            "{err}"
        );
    }

    #[test]
    fn scopes_and_states_round_trip_through_their_numbers() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(RouteScope::from(v)), v);
        }
        assert_eq!(RouteScope::from(253), RouteScope::Link);
        for v in [0u16, 1, 2, 4, 0x40, 0x80, 0x100] {
            assert_eq!(u16::from(NeighborState::from(v)), v);
        }
        assert_eq!(NeighborState::default(), NeighborState::Permanent);
    }

    #[test]
    fn interfaces_and_neighbours_name_themselves() {
        let i = Interface::new("eth0").hw_addr("02:00:00:00:00:01".parse().unwrap());
        assert_eq!(i.to_string(), "eth0 (02:00:00:00:00:01)");
        assert_eq!(Interface::new("").device("ens3").to_string(), "ens3");
        let n = ArpNeighbor::new(
            "fd00::1".parse().unwrap(),
            "02:00:00:00:00:01".parse().unwrap(),
            "eth0",
        );
        assert_eq!(n.to_string(), "fd00::1 lladdr 02:00:00:00:00:01 dev eth0");
    }
}
