//! Routes of the main table: listing them as [`Route`]s, building the messages that add them,
//! and the checks `UpdateRoutes` makes before it changes anything.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use kata_agent_client::api::{IpAddress, IpFamily, Route, RouteScope};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
    RouteScope as NlScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::link::Link;
use super::netlink_error;
use crate::error::Result;

/// A route of the main table as netlink reports it.
#[derive(Clone, Debug)]
pub(super) struct ListedRoute {
    pub route: Route,
    /// The message that deletes it (and adds it back).
    pub message: RouteMessage,
    /// Made by the kernel for an address (`proto kernel`): `UpdateRoutes` keeps it.
    pub kernel: bool,
    /// Its output interface's index.
    pub oif: u32,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// The unicast routes of the main table, IPv4 then IPv6. Multipath routes (no single output
/// interface) are left out.
pub(super) async fn list(handle: &Handle, links: &[Link]) -> Result<Vec<ListedRoute>> {
    // One dump at a time: netlink answers EBUSY to a second concurrent dump.
    let mut messages: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error("list the IPv4 routes", e))?;
    let v6: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error("list the IPv6 routes", e))?;
    messages.extend(v6);
    Ok(messages
        .into_iter()
        .filter_map(|m| from_message(m, links))
        .collect())
}

/// A route message of the main table as a [`ListedRoute`] (`None` for other tables, kinds,
/// multipath routes).
fn from_message(m: RouteMessage, links: &[Link]) -> Option<ListedRoute> {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || m.header.kind != RouteType::Unicast {
        return None;
    }
    let family = match m.header.address_family {
        AddressFamily::Inet => IpFamily::V4,
        AddressFamily::Inet6 => IpFamily::V6,
        _ => return None,
    };
    let mut route = Route::default().family(family);
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                route.destination = ip_of(d)
                    .and_then(|ip| IpAddress::new(ip, m.header.destination_prefix_length).ok())
                    .filter(|d| !d.is_default());
            }
            RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => route.source = ip_of(s),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let oif = oif?;
    route.device = links
        .iter()
        .find(|l| l.index == oif)
        .map(|l| l.name.clone())
        .unwrap_or_default();
    route.scope = RouteScope::from(u8::from(m.header.scope));
    route.onlink = m.header.flags.contains(RouteFlags::Onlink);
    Some(ListedRoute {
        route,
        kernel: m.header.protocol == RouteProtocol::Kernel,
        oif,
        message: m,
    })
}

/// The message that adds `route` out of interface `oif` to the main table (`proto boot`, as
/// Kata's agent and `ip route add` do).
pub(super) fn to_message(route: &Route, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match route.family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = NlScope::from(u8::from(route.scope));
    m.header.kind = RouteType::Unicast;
    if route.onlink {
        m.header.flags.insert(RouteFlags::Onlink);
    }
    if let Some(d) = &route.destination {
        m.header.destination_prefix_length = d.prefix_len;
        m.attributes
            .push(RouteAttribute::Destination(route_address(d.address)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    if let Some(g) = route.gateway {
        m.attributes.push(RouteAttribute::Gateway(route_address(g)));
    }
    if let Some(s) = route.source {
        m.attributes
            .push(RouteAttribute::PrefSource(route_address(s)));
    }
    m
}

/// A dumped route's message, fit to be added back (the cache information is the kernel's).
pub(super) fn re_add_message(m: &RouteMessage) -> RouteMessage {
    let mut m = m.clone();
    m.attributes
        .retain(|a| !matches!(a, RouteAttribute::CacheInfo(_)));
    m
}

/// What identifies a route in the kernel's table: family, destination, gateway and output
/// interface (source and scope are attributes a replace changes).
pub(super) fn same_key(a: &Route, a_oif: u32, b: &Route, b_oif: u32) -> bool {
    a.family == b.family
        && a.destination.map(|d| d.network()) == b.destination.map(|d| d.network())
        && a.gateway == b.gateway
        && a_oif == b_oif
}

/// Whether a gateway is reachable on the link: it is in one of `subnets` (the device's
/// addresses and the link routes it will have), it is an IPv6 link-local address, or the
/// route says `onlink`.
pub(super) fn gateway_on_link(route: &Route, subnets: &[IpAddress]) -> bool {
    let Some(gw) = route.gateway else {
        return true;
    };
    route.onlink
        || matches!(gw, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
        || subnets.iter().any(|s| s.contains(&gw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::LinkFlags;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            flags: LinkFlags::Up,
            kind: String::new(),
        }
    }

    #[test]
    fn routes_become_messages_and_back() {
        let links = [link(1, "lo"), link(7, "eth0")];
        let routes = [
            Route::default_via("10.0.0.1".parse().unwrap(), "eth0"),
            Route::link("10.0.0.0/24".parse().unwrap(), "eth0").source("10.0.0.2".parse().unwrap()),
            Route::via(
                "fd01::/64".parse().unwrap(),
                "fd00::1".parse().unwrap(),
                "eth0",
            )
            .onlink(true),
        ];
        for r in routes {
            let m = to_message(&r, 7);
            assert_eq!(m.header.protocol, RouteProtocol::Boot);
            let listed = from_message(m, &links).expect("main table, unicast");
            assert_eq!(listed.route, r);
            assert_eq!(listed.oif, 7);
            assert!(!listed.kernel);
        }
    }

    #[test]
    fn other_tables_kinds_and_multipath_are_not_listed() {
        let links = [link(7, "eth0")];
        let mut m = to_message(&Route::link("10.0.0.0/24".parse().unwrap(), "eth0"), 7);
        m.header.table = 255;
        assert!(from_message(m.clone(), &links).is_none(), "local table");
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Broadcast;
        assert!(from_message(m.clone(), &links).is_none(), "broadcast");
        m.header.kind = RouteType::Unicast;
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        assert!(
            from_message(m, &links).is_none(),
            "no single output interface"
        );
    }

    #[test]
    fn gateways_must_be_on_the_link() {
        let subnets: Vec<IpAddress> = vec!["10.0.0.2/24".parse().unwrap()];
        let ok = Route::default_via("10.0.0.1".parse().unwrap(), "eth0");
        assert!(gateway_on_link(&ok, &subnets));
        let far = Route::default_via("10.9.9.1".parse().unwrap(), "eth0");
        assert!(!gateway_on_link(&far, &subnets));
        assert!(gateway_on_link(&far.clone().onlink(true), &subnets));
        let ll = Route::default_via("fe80::1".parse().unwrap(), "eth0");
        assert!(gateway_on_link(&ll, &[]));
        assert!(gateway_on_link(
            &Route::link("10.1.0.0/16".parse().unwrap(), "eth0"),
            &[]
        ));
    }

    #[test]
    fn route_keys_ignore_source_and_scope() {
        let a = Route::link("10.0.0.0/24".parse().unwrap(), "eth0");
        let b = a
            .clone()
            .source("10.0.0.2".parse().unwrap())
            .scope(RouteScope::Universe);
        assert!(same_key(&a, 3, &b, 3));
        assert!(!same_key(&a, 3, &b, 4));
        let c = Route::default_via("10.0.0.1".parse().unwrap(), "eth0");
        assert!(!same_key(&a, 3, &c, 3));
    }
}
