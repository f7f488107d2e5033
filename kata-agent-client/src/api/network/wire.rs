//! The network types on the wire: [`Interface`], [`Route`] and [`ArpNeighbor`] to and from
//! the protocol's `types.Interface`, `types.Route` and `types.ARPNeighbor`.
//!
//! Public with feature `server`: the guest agent decodes requests with the same functions the
//! façade decodes answers with. Decoding fails with [`Error::InvalidNetwork`](crate::Error::InvalidNetwork) naming the field
//! as a path under `field` (`interface.IPAddresses[1].mask`) and what was wrong.
//!
//! How Kata's fields map:
//! - an address's `mask` is its prefix length in decimal (empty: a host address); its
//!   `family` is derived from the address (Kata's own agent has reported it inverted);
//! - a route's `dest` is CIDR, empty (or `default`, `0.0.0.0`, `::`) for the default route;
//!   its `source` is the preferred source address (an `/n` suffix is accepted and ignored);
//!   its `family` counts only when the route has no address to derive it from; of `flags`
//!   only `RTNH_F_ONLINK` is kept;
//! - an interface's `raw_flags` carries `IFF_NOARP` only; `mtu` must fit in 32 bits;
//! - a neighbour's `state` 0 means permanent (Kata's convention).

use std::net::IpAddr;

use protobuf::{EnumOrUnknown, MessageField};

use super::{
    invalid, ArpNeighbor, Interface, IpAddress, IpFamily, MacAddress, NeighborState, Route,
    RouteScope, IFF_NOARP, RTNH_F_ONLINK,
};
use crate::error::Result;
use crate::protocol::types as pb;

fn family_to_grpc(f: IpFamily) -> EnumOrUnknown<pb::IPFamily> {
    EnumOrUnknown::new(match f {
        IpFamily::V4 => pb::IPFamily::v4,
        IpFamily::V6 => pb::IPFamily::v6,
    })
}

fn family_from_grpc(f: EnumOrUnknown<pb::IPFamily>, field: &str) -> Result<IpFamily> {
    match f.enum_value() {
        Ok(pb::IPFamily::v4) => Ok(IpFamily::V4),
        Ok(pb::IPFamily::v6) => Ok(IpFamily::V6),
        Err(n) => Err(invalid(
            field,
            format!("{n} is not an address family (0: v4, 1: v6)"),
        )),
    }
}

fn ip(value: &str, field: &str) -> Result<IpAddr> {
    value
        .parse()
        .map_err(|_| invalid(field, format!("{value:?} is not an IPv4 or IPv6 address")))
}

fn mac(value: &str, field: &str) -> Result<Option<MacAddress>> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        invalid(
            field,
            format!("{value:?} is not a MAC address (six hex bytes separated by ':')"),
        )
    })
}

/// An [`IpAddress`] as the protocol's `types.IPAddress`.
pub fn ip_address_to_grpc(a: &IpAddress) -> pb::IPAddress {
    pb::IPAddress {
        family: family_to_grpc(a.family()),
        address: a.address.to_string(),
        mask: a.prefix_len.to_string(),
        ..Default::default()
    }
}

/// A `types.IPAddress` as an [`IpAddress`].
pub fn ip_address_from_grpc(a: &pb::IPAddress, field: &str) -> Result<IpAddress> {
    let address = ip(&a.address, &format!("{field}.address"))?;
    if a.mask.is_empty() {
        return Ok(IpAddress::host(address));
    }
    let family = IpFamily::of(&address);
    a.mask
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= family.max_prefix_len())
        .map(|prefix_len| IpAddress {
            address,
            prefix_len,
        })
        .ok_or_else(|| {
            invalid(
                format!("{field}.mask"),
                format!(
                    "{:?} is not a prefix length of an {family} address ({address}): expected 0-{}",
                    a.mask,
                    family.max_prefix_len()
                ),
            )
        })
}

/// An [`Interface`] as the protocol's `types.Interface`.
pub fn interface_to_grpc(i: &Interface) -> pb::Interface {
    pb::Interface {
        device: i.device.clone(),
        name: i.name.clone(),
        IPAddresses: i.addresses.iter().map(ip_address_to_grpc).collect(),
        mtu: u64::from(i.mtu),
        hwAddr: i.hw_addr.map(|m| m.to_string()).unwrap_or_default(),
        devicePath: i.pci_path.clone().unwrap_or_default(),
        type_: i.link_type.clone(),
        raw_flags: if i.noarp { IFF_NOARP } else { 0 },
        ..Default::default()
    }
}

/// A `types.Interface` as an [`Interface`] (`field` names it in errors: `interface`).
pub fn interface_from_grpc(i: &pb::Interface, field: &str) -> Result<Interface> {
    let mtu = u32::try_from(i.mtu).map_err(|_| {
        invalid(
            format!("{field}.mtu"),
            format!("{} is larger than any MTU (at most {})", i.mtu, u32::MAX),
        )
    })?;
    Ok(Interface {
        name: i.name.clone(),
        device: i.device.clone(),
        hw_addr: mac(&i.hwAddr, &format!("{field}.hwAddr"))?,
        mtu,
        addresses: i
            .IPAddresses
            .iter()
            .enumerate()
            .map(|(n, a)| ip_address_from_grpc(a, &format!("{field}.IPAddresses[{n}]")))
            .collect::<Result<_>>()?,
        link_type: i.type_.clone(),
        pci_path: (!i.devicePath.is_empty()).then(|| i.devicePath.clone()),
        noarp: i.raw_flags & IFF_NOARP != 0,
    })
}

/// A [`Route`] as the protocol's `types.Route`.
pub fn route_to_grpc(r: &Route) -> pb::Route {
    pb::Route {
        dest: r.destination.map(|d| d.to_string()).unwrap_or_default(),
        gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: r.device.clone(),
        source: r.source.map(|s| s.to_string()).unwrap_or_default(),
        scope: u32::from(u8::from(r.scope)),
        family: family_to_grpc(r.family),
        flags: if r.onlink { RTNH_F_ONLINK } else { 0 },
        ..Default::default()
    }
}

/// A `types.Route` as a [`Route`] (`field` names it in errors: `routes[2]`).
pub fn route_from_grpc(r: &pb::Route, field: &str) -> Result<Route> {
    let destination = match r.dest.as_str() {
        "" | "default" | "0.0.0.0" | "::" => None,
        d => {
            let parsed: IpAddress = d.parse().map_err(|_| {
                invalid(
                    format!("{field}.dest"),
                    format!("{d:?} is not a subnet in CIDR form (10.0.0.0/24), nor empty for the default route"),
                )
            })?;
            (!parsed.is_default()).then_some(parsed)
        }
    };
    let gateway = match r.gateway.as_str() {
        "" => None,
        g => Some(ip(g, &format!("{field}.gateway"))?),
    };
    let source = match r.source.as_str() {
        "" => None,
        s => Some(ip(
            s.split_once('/').map_or(s, |(a, _)| a),
            &format!("{field}.source"),
        )?),
    };
    let scope = u8::try_from(r.scope).map_err(|_| {
        invalid(
            format!("{field}.scope"),
            format!("{} is not a route scope (0-255)", r.scope),
        )
    })?;
    // The family is the addresses'; the wire's field counts only when there is none.
    let family = match destination.map(|d| d.address).or(gateway).or(source) {
        Some(a) => IpFamily::of(&a),
        None => family_from_grpc(r.family, &format!("{field}.family"))?,
    };
    let route = Route {
        destination,
        gateway,
        device: r.device.clone(),
        source,
        scope: RouteScope::from(scope),
        family,
        onlink: r.flags & RTNH_F_ONLINK != 0,
    };
    route.check_family(field)?;
    Ok(route)
}

/// An [`ArpNeighbor`] as the protocol's `types.ARPNeighbor`.
pub fn neighbor_to_grpc(n: &ArpNeighbor) -> pb::ARPNeighbor {
    pb::ARPNeighbor {
        toIPAddress: MessageField::some(pb::IPAddress {
            family: family_to_grpc(IpFamily::of(&n.address)),
            address: n.address.to_string(),
            ..Default::default()
        }),
        device: n.device.clone(),
        lladdr: n.lladdr.map(|m| m.to_string()).unwrap_or_default(),
        state: i32::from(u16::from(n.state)),
        flags: i32::from(n.flags),
        ..Default::default()
    }
}

/// A `types.ARPNeighbor` as an [`ArpNeighbor`] (`field` names it in errors: `neighbors[0]`).
pub fn neighbor_from_grpc(n: &pb::ARPNeighbor, field: &str) -> Result<ArpNeighbor> {
    let address = match n.toIPAddress.as_ref() {
        Some(a) if !a.address.is_empty() => {
            ip(&a.address, &format!("{field}.toIPAddress.address"))?
        }
        _ => {
            return Err(invalid(
                format!("{field}.toIPAddress"),
                "is missing: a neighbour entry needs the IP address it resolves",
            ))
        }
    };
    let state = match n.state {
        0 => NeighborState::Permanent,
        s => NeighborState::from(u16::try_from(s).map_err(|_| {
            invalid(
                format!("{field}.state"),
                format!("{s} is not a neighbour state (NUD_* bits, 0-65535)"),
            )
        })?),
    };
    let flags = u8::try_from(n.flags).map_err(|_| {
        invalid(
            format!("{field}.flags"),
            format!("{} is not a set of NTF_* flags (0-255)", n.flags),
        )
    })?;
    Ok(ArpNeighbor {
        address,
        device: n.device.clone(),
        lladdr: mac(&n.lladdr, &format!("{field}.lladdr"))?,
        state,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use protobuf::Message;

    fn bytes_round_trip<M: Message>(m: &M) -> M {
        M::parse_from_bytes(&m.write_to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn interfaces_round_trip_through_the_wire_bytes() {
        let interfaces = [
            Interface::default(),
            Interface::new("eth0")
                .hw_addr("02:42:0a:58:00:02".parse().unwrap())
                .mtu(1450)
                .address("10.88.0.2/16".parse().unwrap())
                .address("fd00::2/64".parse().unwrap())
                .link_type("veth")
                .pci_path("02/00")
                .noarp(true),
            Interface::new("net1").device("eth1").mtu(9000),
        ];
        for i in interfaces {
            let wire = bytes_round_trip(&interface_to_grpc(&i));
            assert_eq!(interface_from_grpc(&wire, "interface").unwrap(), i);
        }
    }

    #[test]
    fn interface_fields_land_in_kata_fields() {
        let w = interface_to_grpc(
            &Interface::new("eth0")
                .hw_addr("02:42:0A:58:00:02".parse().unwrap())
                .mtu(1500)
                .address("fd00::2/64".parse().unwrap())
                .noarp(true),
        );
        assert_eq!(
            (&w.name[..], &w.hwAddr[..], w.mtu, w.raw_flags),
            ("eth0", "02:42:0a:58:00:02", 1500, 0x80)
        );
        let a = &w.IPAddresses[0];
        assert_eq!((&a.address[..], &a.mask[..]), ("fd00::2", "64"));
        assert_eq!(a.family.enum_value(), Ok(pb::IPFamily::v6));
    }

    #[test]
    fn kata_peculiarities_decode() {
        // Kata's agent has reported IPv6 addresses with family v4; the address decides.
        let w = pb::Interface {
            name: "eth0".into(),
            IPAddresses: vec![pb::IPAddress {
                family: EnumOrUnknown::new(pb::IPFamily::v4),
                address: "fe80::1".into(),
                mask: "64".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let i = interface_from_grpc(&w, "interface").unwrap();
        assert_eq!(i.addresses[0].family(), IpFamily::V6);
        // An address without a mask is a host address.
        let a = pb::IPAddress {
            address: "10.0.0.1".into(),
            ..Default::default()
        };
        assert_eq!(ip_address_from_grpc(&a, "a").unwrap().prefix_len, 32);
        // "0.0.0.0" as a destination, a source with a prefix, unknown flags.
        let r = pb::Route {
            dest: "0.0.0.0".into(),
            gateway: "10.0.0.1".into(),
            source: "10.0.0.2/32".into(),
            device: "eth0".into(),
            flags: 0x4 | 0x10,
            ..Default::default()
        };
        let r = route_from_grpc(&r, "routes[0]").unwrap();
        assert_eq!(
            r.to_string(),
            "default via 10.0.0.1 dev eth0 src 10.0.0.2 onlink"
        );
        // A neighbour of state 0 is permanent.
        let n = pb::ARPNeighbor {
            toIPAddress: MessageField::some(pb::IPAddress {
                address: "169.254.1.1".into(),
                ..Default::default()
            }),
            device: "eth0".into(),
            ..Default::default()
        };
        let n = neighbor_from_grpc(&n, "neighbors[0]").unwrap();
        assert_eq!((n.state, n.lladdr), (NeighborState::Permanent, None));
    }

    #[test]
    fn routes_round_trip_through_the_wire_bytes() {
        let routes = [
            Route::default_via("10.0.0.1".parse().unwrap(), "eth0"),
            Route::default_via("fd00::1".parse().unwrap(), "eth0").onlink(true),
            Route::link("10.0.0.0/24".parse().unwrap(), "eth0").source("10.0.0.2".parse().unwrap()),
            Route::via(
                "192.168.0.0/16".parse().unwrap(),
                "10.0.0.254".parse().unwrap(),
                "eth1",
            )
            .scope(RouteScope::Other(7)),
            Route::default().family(IpFamily::V6),
            Route {
                device: "eth0".into(),
                scope: RouteScope::Link,
                ..Route::default()
            },
        ];
        for r in routes {
            let wire = bytes_round_trip(&route_to_grpc(&r));
            assert_eq!(route_from_grpc(&wire, "routes[0]").unwrap(), r, "{r}");
        }
    }

    #[test]
    fn neighbours_round_trip_through_the_wire_bytes() {
        let neighbors = [
            ArpNeighbor::new(
                "169.254.1.1".parse().unwrap(),
                "ee:ee:ee:ee:ee:ee".parse().unwrap(),
                "eth0",
            ),
            ArpNeighbor::new(
                "fd00::1".parse().unwrap(),
                "02:00:00:00:00:01".parse().unwrap(),
                "eth1",
            )
            .state(NeighborState::Reachable)
            .flags(0x80),
            ArpNeighbor::new("10.0.0.9".parse().unwrap(), MacAddress([0; 6]), "eth0")
                .state(NeighborState::Other(0x20)),
        ];
        for n in neighbors {
            let wire = bytes_round_trip(&neighbor_to_grpc(&n));
            assert_eq!(neighbor_from_grpc(&wire, "neighbors[0]").unwrap(), n);
        }
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        match r.unwrap_err() {
            e @ Error::InvalidNetwork { .. } => e.to_string(),
            other => panic!("not InvalidNetwork: {other}"),
        }
    }

    #[test]
    fn bad_wire_values_name_the_field_and_the_value() {
        let mut w = interface_to_grpc(&Interface::new("eth0"));
        w.hwAddr = "02:00".into();
        assert_eq!(
            err_text(interface_from_grpc(&w, "interface")),
            "interface.hwAddr \"02:00\" is not a MAC address (six hex bytes separated by ':')"
        );
        let mut w =
            interface_to_grpc(&Interface::new("eth0").address("10.0.0.2/24".parse().unwrap()));
        w.IPAddresses[0].mask = "255.255.255.0".into();
        let e = err_text(interface_from_grpc(&w, "interface"));
        assert!(e.starts_with("interface.IPAddresses[0].mask \"255.255.255.0\" is not a prefix length of an IPv4 address (10.0.0.2): expected 0-32"), "{e}");
        w.IPAddresses[0].mask = "24".into();
        w.IPAddresses[0].address = "10.0.0".into();
        assert!(err_text(interface_from_grpc(&w, "interface"))
            .starts_with("interface.IPAddresses[0].address \"10.0.0\""));
        let mut w = interface_to_grpc(&Interface::new("eth0"));
        w.mtu = 1 << 40;
        assert!(err_text(interface_from_grpc(&w, "interface")).starts_with("interface.mtu "));

        let mut r = route_to_grpc(&Route::default_via("10.0.0.1".parse().unwrap(), "eth0"));
        r.gateway = "fd00::1x".into();
        assert!(err_text(route_from_grpc(&r, "routes[3]"))
            .starts_with("routes[3].gateway \"fd00::1x\""));
        r.gateway = "fd00::1".into();
        r.dest = "10.1.0.0/16".into();
        assert!(err_text(route_from_grpc(&r, "routes[3]"))
            .starts_with("routes[3].gateway fd00::1 is an IPv6 address in an IPv4 route"));
        r.dest = "10.1.0.0/40".into();
        assert!(err_text(route_from_grpc(&r, "routes[3]"))
            .starts_with("routes[3].dest \"10.1.0.0/40\""));
        r.dest = String::new();
        r.scope = 256;
        assert!(err_text(route_from_grpc(&r, "routes[3]")).starts_with("routes[3].scope 256"));

        let n = pb::ARPNeighbor::default();
        assert!(err_text(neighbor_from_grpc(&n, "neighbors[1]"))
            .starts_with("neighbors[1].toIPAddress is missing"));
        let mut n = neighbor_to_grpc(&ArpNeighbor::new(
            "10.0.0.1".parse().unwrap(),
            MacAddress([2, 0, 0, 0, 0, 1]),
            "eth0",
        ));
        n.flags = 300;
        assert!(
            err_text(neighbor_from_grpc(&n, "neighbors[1]")).starts_with("neighbors[1].flags 300")
        );
        n.flags = 0;
        n.state = -1;
        assert!(
            err_text(neighbor_from_grpc(&n, "neighbors[1]")).starts_with("neighbors[1].state -1")
        );
    }
}
