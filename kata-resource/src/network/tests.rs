//! Unit tests of the parts that need no namespace: the model, the spec's path, what discovery
//! keeps from iproute2's output, the state's round trip. The host tier (root, real namespaces,
//! a packet across) is `tests/pod_network.rs`.

use std::net::IpAddr;
use std::path::PathBuf;

use super::discover::build_from_json;
use super::*;

/// `ip -json -details addr show` in a namespace as CNI's bridge plugin leaves it (trimmed),
/// with a tap, a bridge, a tunnel base device and an unconfigured veth besides.
const LINKS: &str = r#"[
 {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"link_type":"loopback",
  "address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
 {"ifindex":4,"ifname":"tap0_kata","flags":["BROADCAST","UP"],"mtu":1500,"link_type":"ether",
  "address":"aa:aa:aa:aa:aa:aa","linkinfo":{"info_kind":"tun"},"addr_info":[{"family":"inet","local":"10.1.0.9","prefixlen":24}]},
 {"ifindex":2,"link_index":9,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,
  "link_type":"ether","address":"EA:4B:DE:DC:5B:41","linkinfo":{"info_kind":"veth"},"addr_info":[
   {"family":"inet","local":"10.88.0.2","prefixlen":16,"scope":"global","label":"eth0"},
   {"family":"inet6","local":"fd00:88::2","prefixlen":64,"scope":"global","tentative":true},
   {"family":"inet6","local":"fe80::e84b:deff:fedc:5b41","prefixlen":64,"scope":"link"}]},
 {"ifindex":3,"ifname":"tunl0","flags":["NOARP"],"mtu":1480,"link_type":"ipip","address":"0.0.0.0",
  "linkinfo":{"info_kind":"ipip"},"addr_info":[]},
 {"ifindex":5,"ifname":"br0","flags":["BROADCAST"],"mtu":1500,"link_type":"ether",
  "address":"02:00:00:00:00:05","linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":"10.2.0.1","prefixlen":24}]},
 {"ifindex":6,"ifname":"eth1","flags":["BROADCAST","NOARP","UP"],"mtu":9000,"link_type":"ether",
  "address":"02:00:00:00:00:06","linkinfo":{"info_kind":"veth"},"addr_info":[]}
]"#;

const ROUTES_V4: &str = r#"[
 {"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]},
 {"dst":"10.98.0.0/16","gateway":"10.88.0.1","dev":"eth0","flags":["onlink"]},
 {"dst":"10.88.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.0.2","flags":[]},
 {"dst":"169.254.1.1","dev":"eth0","scope":"link","flags":[]},
 {"type":"blackhole","dst":"10.99.0.0/24","flags":[]},
 {"dst":"10.1.0.0/24","dev":"tap0_kata","flags":[]},
 {"dst":"10.3.0.0/24","flags":[],"nexthops":[{"gateway":"10.88.0.1","dev":"eth0"}]}
]"#;

const ROUTES_V6: &str = r#"[
 {"dst":"fd00:88::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
 {"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
 {"dst":"default","gateway":"fd00:88::1","dev":"eth0","metric":1024,"flags":[],"pref":"medium"}
]"#;

const NEIGHBORS: &str = r#"[
 {"dst":"10.88.0.1","dev":"eth0","lladdr":"02:00:00:00:00:01","state":["PERMANENT"]},
 {"dst":"10.88.0.7","dev":"eth0","lladdr":"02:00:00:00:00:07","state":["STALE"]},
 {"dst":"10.88.0.8","dev":"eth0","state":["FAILED"]},
 {"dst":"10.88.0.9","dev":"eth0","lladdr":"02:00:00:00:00:09","state":["INCOMPLETE"]},
 {"dst":"10.1.0.1","dev":"tap0_kata","lladdr":"02:00:00:00:00:11","state":["REACHABLE"]},
 {"dst":"fd00:88::1","dev":"eth0","lladdr":"02:00:00:00:00:01","router":null,"state":["REACHABLE"]}
]"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn prefix(s: &str) -> IpPrefix {
    s.parse().unwrap()
}

#[test]
fn discovery_keeps_the_pods_interfaces_with_their_addresses() {
    let (net, links) = build_from_json(LINKS, ROUTES_V4, ROUTES_V6, NEIGHBORS).unwrap();
    assert_eq!(
        net.interfaces,
        vec![Interface {
            name: "eth0".into(),
            mac: "ea:4b:de:dc:5b:41".into(),
            mtu: 1450,
            // Loopback and IPv6 link-local addresses are not carried.
            addresses: vec![prefix("10.88.0.2/16"), prefix("fd00:88::2/64")],
            kind: "veth".into(),
            noarp: false,
        }],
        "lo, the tap, the tunnel, the bridge and the unconfigured eth1 are left out"
    );
    // Every link is listed, so that a new tap does not take a name in use.
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo", "eth0", "tunl0", "tap0_kata", "br0", "eth1"]);
    assert_eq!(
        links
            .iter()
            .filter(|l| l.kept)
            .map(|l| l.index)
            .collect::<Vec<_>>(),
        [2]
    );
}

#[test]
fn discovery_keeps_the_routes_the_guest_kernel_does_not_make() {
    let (net, _) = build_from_json(LINKS, ROUTES_V4, ROUTES_V6, NEIGHBORS).unwrap();
    let route = |destination: Option<&str>, gateway: Option<&str>, scope, family, onlink| Route {
        destination: destination.map(prefix),
        gateway: gateway.map(ip),
        source: None,
        device: "eth0".into(),
        scope,
        family,
        onlink,
    };
    assert_eq!(
        net.routes,
        vec![
            route(None, Some("10.88.0.1"), 0, IpFamily::V4, false),
            route(
                Some("10.98.0.0/16"),
                Some("10.88.0.1"),
                0,
                IpFamily::V4,
                true
            ),
            route(Some("169.254.1.1/32"), None, 253, IpFamily::V4, false),
            route(None, Some("fd00:88::1"), 0, IpFamily::V6, false),
        ],
        "proto kernel, blackhole, multipath and the tap's routes are left out"
    );
}

#[test]
fn discovery_keeps_neighbours_with_a_link_layer_address() {
    let (net, _) = build_from_json(LINKS, ROUTES_V4, ROUTES_V6, NEIGHBORS).unwrap();
    let n = |ip_s: &str, mac: &str, state| ArpNeighbor {
        device: "eth0".into(),
        ip: ip(ip_s),
        mac: mac.into(),
        state,
    };
    assert_eq!(
        net.neighbors,
        vec![
            n("10.88.0.1", "02:00:00:00:00:01", 0x80),
            n("10.88.0.7", "02:00:00:00:00:07", 0x04),
            n("fd00:88::1", "02:00:00:00:00:01", 0x02),
        ]
    );
}

#[test]
fn an_interface_without_a_mac_is_an_error_naming_it() {
    let links = r#"[{"ifindex":2,"ifname":"eth0","flags":[],"mtu":1500,"link_type":"ether",
        "address":"","linkinfo":{"info_kind":"veth"},
        "addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24}]}]"#;
    let e = build_from_json(links, "[]", "[]", "[]").unwrap_err();
    assert!(e.to_string().contains("eth0"), "{e}");
}

#[test]
fn prefixes_parse_and_print() {
    assert_eq!(prefix("10.0.0.1").prefix_len, 32);
    assert_eq!(prefix("fd00::1").prefix_len, 128);
    assert_eq!(prefix("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert!("10.0.0.0/33".parse::<IpPrefix>().is_err());
    assert!("fd00::/129".parse::<IpPrefix>().is_err());
    assert!("eth0/24".parse::<IpPrefix>().is_err());
}

#[test]
fn models_parse_as_kata_spells_them() {
    for (s, m) in [
        ("tcfilter", InternetworkingModel::TcFilter),
        ("macvtap", InternetworkingModel::MacVtap),
        ("none", InternetworkingModel::None),
        ("l3forwarding", InternetworkingModel::L3Forwarding),
        ("", InternetworkingModel::TcFilter),
    ] {
        assert_eq!(s.parse::<InternetworkingModel>().unwrap(), m);
        if !s.is_empty() {
            assert_eq!(m.to_string(), s);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{s}\""));
        }
    }
    let e = "bridged".parse::<InternetworkingModel>().unwrap_err();
    assert!(e.to_string().contains("internetworking_model"), "{e}");
}

fn set_up(config: NetworkConfig) -> Result<NetworkSlot> {
    let mut slot = NetworkSlot::default();
    slot.set_up(&config)?;
    Ok(slot)
}

#[test]
fn macvtap_and_l3forwarding_are_refused_naming_the_key() {
    for model in [
        InternetworkingModel::MacVtap,
        InternetworkingModel::L3Forwarding,
    ] {
        let e = set_up(NetworkConfig {
            netns_path: Some("/run/netns/anything".into()),
            model,
            ..Default::default()
        })
        .unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("internetworking_model") && message.contains(model.as_str()),
            "{message}"
        );
        assert!(message.contains("\"tcfilter\", \"none\""), "{message}");
    }
}

#[test]
fn disable_new_netns_works_only_with_none_and_then_gives_no_network() {
    let e = set_up(NetworkConfig {
        netns_path: Some("/run/netns/anything".into()),
        disable_new_netns: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("disable_new_netns"), "{e}");

    // The path is not even looked at (it does not exist).
    let slot = set_up(NetworkConfig {
        netns_path: Some("/nonexistent/kata-rs/netns".into()),
        model: InternetworkingModel::None,
        disable_new_netns: true,
        ..Default::default()
    })
    .unwrap();
    assert!(slot.devices().is_empty() && slot.guest().is_empty());
    assert_eq!(slot.state(), NetworkState::default());
}

#[test]
fn no_namespace_or_model_none_gives_no_network() {
    for config in [
        NetworkConfig::default(),
        NetworkConfig {
            netns_path: Some("/nonexistent/kata-rs/netns".into()),
            model: InternetworkingModel::None,
            ..Default::default()
        },
    ] {
        let slot = set_up(config).unwrap();
        assert!(slot.devices().is_empty() && slot.guest().is_empty());
    }
}

#[test]
fn a_namespace_that_does_not_exist_names_the_spec_field() {
    let e = set_up(NetworkConfig {
        netns_path: Some("/nonexistent/kata-rs/netns".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::NetnsNotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("linux.namespaces[network].path"),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/kata-rs/netns"), "{e}");
}

#[test]
fn the_spec_names_the_namespace_by_its_network_entry() {
    let spec = |namespaces: &str| -> oci_spec::runtime::Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":{namespaces}}}}}"#
        ))
        .unwrap()
    };
    let with = spec(r#"[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]"#);
    assert_eq!(
        NetworkConfig::netns_path_of(&with),
        Some(PathBuf::from("/var/run/netns/cni-1"))
    );
    // A network entry without a path asks for a new, empty namespace: no network.
    assert_eq!(
        NetworkConfig::netns_path_of(&spec(r#"[{"type":"network"}]"#)),
        None
    );
    assert_eq!(
        NetworkConfig::netns_path_of(&spec(r#"[{"type":"pid"}]"#)),
        None
    );
}

#[test]
fn the_state_round_trips_and_old_files_load() {
    let (guest, _) = build_from_json(LINKS, ROUTES_V4, ROUTES_V6, NEIGHBORS).unwrap();
    let state = NetworkState {
        netns: Some("/var/run/netns/cni-1".into()),
        netns_inode: 4026532999,
        model: InternetworkingModel::TcFilter,
        endpoints: vec![EndpointState {
            device_id: "net0".into(),
            interface: "eth0".into(),
            tap: "tap0_kata".into(),
            queues: 2,
            mac: "ea:4b:de:dc:5b:41".into(),
        }],
        guest,
    };
    let json = serde_json::to_string_pretty(&state).unwrap();
    let back: NetworkState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    assert!(
        json.contains("\"tcfilter\"") && json.contains("fd00:88::2"),
        "{json}"
    );

    // The empty slot's state (`{}`) from before this slot was filled.
    let old: NetworkState = serde_json::from_str("{}").unwrap();
    assert_eq!(old, NetworkState::default());
    assert_eq!(
        serde_json::to_string(&old)
            .unwrap()
            .matches("netns\"")
            .count(),
        0
    );

    // A slot without network adopts from, and cleans up after, the empty state.
    assert!(NetworkSlot::adopt(&old).unwrap().devices().is_empty());
    NetworkSlot::cleanup(&old).unwrap();
}

#[test]
fn cleanup_of_a_namespace_that_is_gone_is_nothing_to_do() {
    let state = NetworkState {
        netns: Some("/nonexistent/kata-rs/netns".into()),
        netns_inode: 1,
        endpoints: vec![EndpointState {
            device_id: "net0".into(),
            interface: "eth0".into(),
            tap: "tap0_kata".into(),
            queues: 1,
            mac: "02:00:00:00:00:01".into(),
        }],
        ..Default::default()
    };
    NetworkSlot::cleanup(&state).unwrap();
    let e = NetworkSlot::adopt(&state).unwrap_err();
    assert!(matches!(e, Error::NotAdoptable { .. }), "{e}");
}
