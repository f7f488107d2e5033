//! Links and their addresses: listing them, finding one by MAC address, name or index, and
//! the `RTM_SETLINK`/`RTM_*ADDR` changes `UpdateInterface` makes.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use kata_agent_client::api::{IpAddress, MacAddress};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::netlink_error;
use crate::error::{AgentError, Result};

/// A guest link as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    /// Its hardware address when it is an Ethernet one (six bytes).
    pub mac: Option<MacAddress>,
    pub mtu: u32,
    pub flags: LinkFlags,
    /// `IFLA_INFO_KIND` (`veth`, `dummy`, ...); empty for a plain device.
    pub kind: String,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            flags: m.header.flags,
            kind: String::new(),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(bytes) => {
                    link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddress)
                }
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(kind) = i {
                            link.kind = kind.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }

    pub fn noarp(&self) -> bool {
        self.flags.contains(LinkFlags::Noarp)
    }
}

impl std::fmt::Display for Link {
    /// `eth0 (02:42:0a:58:00:02)`, or the name alone.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mac {
            Some(mac) => write!(f, "{} ({mac})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How `UpdateInterface` and the other calls find a link.
#[derive(Clone, Copy, Debug)]
pub(super) enum LinkKey<'a> {
    Mac(MacAddress),
    Name(&'a str),
}

impl std::fmt::Display for LinkKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkKey::Mac(m) => write!(f, "MAC address {m}"),
            LinkKey::Name(n) => write!(f, "the name {n:?}"),
        }
    }
}

/// Every link of the namespace.
pub(super) async fn list(handle: &Handle) -> Result<Vec<Link>> {
    handle
        .link()
        .get()
        .execute()
        .map_ok(|m| Link::from_message(&m))
        .try_collect()
        .await
        .map_err(|e| netlink_error("list the network interfaces", e))
}

/// The link `key` names, if any, among `links`.
pub(super) fn find<'l>(links: &'l [Link], key: LinkKey<'_>) -> Option<&'l Link> {
    links.iter().find(|l| match key {
        LinkKey::Mac(m) => l.mac == Some(m),
        LinkKey::Name(n) => l.name == n,
    })
}

/// The links, as an error lists them: `lo, eth0 (02:..)`.
pub(super) fn describe(links: &[Link]) -> String {
    if links.is_empty() {
        return "none".into();
    }
    links
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The link `key` names, or [`AgentError::LinkNotFound`] listing the links there are.
pub(super) async fn get(handle: &Handle, key: LinkKey<'_>) -> Result<Link> {
    let links = list(handle).await?;
    find(&links, key)
        .cloned()
        .ok_or_else(|| AgentError::LinkNotFound {
            wanted: key.to_string(),
            present: describe(&links),
        })
}

/// A link name the kernel takes: 1 to 15 bytes, no '/', ':' or whitespace, not `.` or `..`.
pub(super) fn check_name(name: &str, field: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid(
            field,
            format!(
                "{name:?} is not an interface name (1-15 characters, none of '/', ':' or spaces)"
            ),
        ))
    }
}

/// Sets a link up or down.
pub(super) async fn set_up(handle: &Handle, link: &Link, up: bool) -> Result<()> {
    let msg = LinkUnspec::new_with_index(link.index);
    let msg = if up { msg.up() } else { msg.down() };
    handle.link().set(msg.build()).execute().await.map_err(|e| {
        netlink_error(
            format!("set interface {link} {}", if up { "up" } else { "down" }),
            e,
        )
    })
}

/// Renames a link (it must be down).
pub(super) async fn rename(handle: &Handle, link: &Link, name: &str) -> Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(link.index).name(name).build())
        .execute()
        .await
        .map_err(|e| netlink_error(format!("rename interface {link} to {name}"), e))
}

/// Sets the MTU (0: unchanged) and ARP, and brings the link up.
pub(super) async fn configure(handle: &Handle, link: &Link, mtu: u32, noarp: bool) -> Result<()> {
    let mut msg = LinkUnspec::new_with_index(link.index).arp(!noarp).up();
    if mtu != 0 {
        msg = msg.mtu(mtu);
    }
    handle.link().set(msg.build()).execute().await.map_err(|e| {
        let what = if mtu != 0 {
            format!("set MTU {mtu} and bring up interface {link}")
        } else {
            format!("bring up interface {link}")
        };
        netlink_error(what, e)
    })
}

/// One address of a link, with the message that deletes it.
#[derive(Clone, Debug)]
pub(super) struct LinkAddress {
    pub address: IpAddress,
    pub message: AddressMessage,
}

impl LinkAddress {
    /// An IPv6 link-local address, which the kernel gives every link and keeps.
    pub fn is_ipv6_link_local(&self) -> bool {
        matches!(self.address.address, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
    }
}

/// The addresses of link `index` (every link when `None`).
pub(super) async fn addresses(handle: &Handle, index: Option<u32>) -> Result<Vec<LinkAddress>> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let messages: Vec<AddressMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error("list the addresses", e))?;
    Ok(messages
        .into_iter()
        // The filter is applied in user space by rtnetlink; check anyway.
        .filter(|m| index.is_none_or(|i| m.header.index == i))
        .filter_map(|m| {
            // IFA_LOCAL is the address itself (IFA_ADDRESS the peer's on a point-to-point
            // link); IPv6 has only IFA_ADDRESS.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let ip = local.or(addr)?;
            let address = IpAddress::new(ip, m.header.prefix_len).ok()?;
            Some(LinkAddress {
                address,
                message: m,
            })
        })
        .collect())
}

/// Adds (or replaces) an address on a link.
pub(super) async fn add_address(handle: &Handle, link: &Link, address: &IpAddress) -> Result<()> {
    handle
        .address()
        .add(link.index, address.address, address.prefix_len)
        .replace()
        .execute()
        .await
        .map_err(|e| netlink_error(format!("add address {address} to interface {link}"), e))
}

/// Deletes an address from a link.
pub(super) async fn delete_address(
    handle: &Handle,
    link: &Link,
    address: &LinkAddress,
) -> Result<()> {
    handle
        .address()
        .del(address.message.clone())
        .execute()
        .await
        .map_err(|e| {
            netlink_error(
                format!("remove address {} from interface {link}", address.address),
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for ok in ["eth0", "net1", "a", "veth-0123456789"] {
            check_name(ok, "interface.name").unwrap();
        }
        for bad in ["", ".", "..", "eth/0", "eth 0", "a:b", "abcdefghijklmnop"] {
            let e = check_name(bad, "interface.name").unwrap_err().to_string();
            assert!(e.starts_with("interface.name "), "{bad}: {e}");
        }
    }

    #[test]
    fn links_are_found_and_described() {
        let mac: MacAddress = "02:00:00:00:00:09".parse().unwrap();
        let links = vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: None,
                mtu: 65536,
                flags: LinkFlags::Loopback,
                kind: String::new(),
            },
            Link {
                index: 7,
                name: "eth0".into(),
                mac: Some(mac),
                mtu: 1500,
                flags: LinkFlags::Up,
                kind: "veth".into(),
            },
        ];
        assert_eq!(find(&links, LinkKey::Mac(mac)).unwrap().index, 7);
        assert_eq!(find(&links, LinkKey::Name("lo")).unwrap().index, 1);
        assert!(find(&links, LinkKey::Name("eth1")).is_none());
        assert_eq!(describe(&links), "lo, eth0 (02:00:00:00:00:09)");
        assert!(links[1].is_up() && !links[0].is_up());
    }
}
