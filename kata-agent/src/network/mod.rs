//! The guest's network over rtnetlink: `UpdateInterface`, `UpdateRoutes`, `ListInterfaces`,
//! `ListRoutes` and `AddARPNeighbors`, with Kata's semantics.
//!
//! The requests arrive as `kata_agent_client`'s plain types ([`Interface`], [`Route`],
//! [`ArpNeighbor`]), decoded at the edge. Every change is checked before the first netlink
//! request (names, devices, subnets, gateways), so bad input changes nothing; `UpdateRoutes`
//! also puts the old routes back when the kernel refuses a new one. Changes are serialized.
//!
//! The agent changes only a network it owns: as the guest's init, or when started with
//! `--own-network` in a network namespace of its own (the host tests). Elsewhere the changing
//! calls are refused, so a test agent never rewrites the host's routes; listing works always.

mod link;
mod route;

use std::time::{Duration, Instant};

use kata_agent_client::api::{ArpNeighbor, Interface, IpAddress, IpFamily, Route};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::Handle;
use tokio::sync::{Mutex, OnceCell};

use crate::error::{AgentError, Result};
use link::{Link, LinkKey};

/// How long `UpdateInterface` waits for a hot-plugged device's link to appear.
const HOTPLUG_WAIT: Duration = Duration::from_secs(10);

/// A netlink failure as an [`AgentError`]: the kernel's errno, with what was being done.
fn netlink_error(what: impl Into<String>, e: rtnetlink::Error) -> AgentError {
    let source = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    AgentError::io(what, source)
}

/// Whether the guest has IPv6 (not disabled by sysctl, as Kata's agent checks).
fn ipv6_enabled() -> bool {
    ["all", "default"].iter().any(|c| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{c}/disable_ipv6"))
            .is_ok_and(|s| s.trim() == "0")
    })
}

/// The guest network, reached over one rtnetlink connection made on first use.
#[derive(Debug)]
pub struct Network {
    owned: bool,
    handle: OnceCell<Handle>,
    changes: Mutex<()>,
}

impl Network {
    /// The network of the agent's namespace; `owned`: the agent may change it.
    pub fn new(owned: bool) -> Self {
        Network {
            owned,
            handle: OnceCell::new(),
            changes: Mutex::new(()),
        }
    }

    /// Whether the agent may change this network.
    pub fn owned(&self) -> bool {
        self.owned
    }

    async fn handle(&self) -> Result<&Handle> {
        self.handle
            .get_or_try_init(|| async {
                let (connection, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| AgentError::io("open a netlink route socket", e))?;
                tokio::spawn(connection);
                Ok(handle)
            })
            .await
    }

    fn check_owned(&self, method: &str) -> Result<()> {
        if self.owned {
            return Ok(());
        }
        Err(AgentError::FailedPrecondition(format!(
            "{method}: this agent is not the guest's init and does not own its network \
             namespace, so it leaves the network alone (it would be the host's); start it \
             with --own-network inside a network namespace of its own"
        )))
    }

    /// `ListInterfaces`: every link with its addresses.
    pub async fn list_interfaces(&self) -> Result<Vec<Interface>> {
        let handle = self.handle().await?;
        let links = link::list(handle).await?;
        let addresses = link::addresses(handle, None).await?;
        Ok(links
            .iter()
            .map(|l| {
                let mut i = Interface::new(l.name.clone())
                    .device(l.name.clone())
                    .mtu(l.mtu)
                    .link_type(l.kind.clone())
                    .noarp(l.noarp())
                    .addresses(
                        addresses
                            .iter()
                            .filter(|a| a.message.header.index == l.index)
                            .map(|a| a.address),
                    );
                i.hw_addr = l.mac;
                i
            })
            .collect())
    }

    /// `ListRoutes`: the main table's unicast routes.
    pub async fn list_routes(&self) -> Result<Vec<Route>> {
        let handle = self.handle().await?;
        let links = link::list(handle).await?;
        Ok(route::list(handle, &links)
            .await?
            .into_iter()
            .map(|r| r.route)
            .collect())
    }

    /// `UpdateInterface`: finds the link (by MAC address, else device name, else name) and
    /// gives it `want`'s name, MTU, addresses and ARP setting, up. Returns the interface as
    /// the guest then has it.
    pub async fn update_interface(&self, want: &Interface) -> Result<Interface> {
        self.check_owned("UpdateInterface")?;
        let key = match (&want.hw_addr, want.device.as_str(), want.name.as_str()) {
            (Some(mac), _, _) => LinkKey::Mac(*mac),
            (None, device, _) if !device.is_empty() => LinkKey::Name(device),
            (None, _, name) if !name.is_empty() => LinkKey::Name(name),
            _ => {
                return Err(AgentError::invalid(
                    "interface",
                    "names no link: give its hwAddr (MAC address), device or name",
                ))
            }
        };
        if !want.name.is_empty() {
            link::check_name(&want.name, "interface.name")?;
        }
        let _serial = self.changes.lock().await;
        let handle = self.handle().await?;
        let found = self
            .wait_for_link(handle, key, want.pci_path.is_some())
            .await?;
        let ipv6 = ipv6_enabled();
        let wanted: Vec<IpAddress> = want
            .addresses
            .iter()
            .copied()
            .filter(|a| {
                let keep = ipv6 || a.family() == IpFamily::V4;
                if !keep {
                    tracing::warn!(interface = %found, address = %a,
                        "IPv6 is disabled in the guest: address left out");
                }
                keep
            })
            .collect();

        // Rename first: the kernel renames only a link that is down.
        let mut current = found.clone();
        if !want.name.is_empty() && want.name != found.name {
            self.rename(handle, &found, &want.name).await?;
            current.name = want.name.clone();
        }

        // The addresses: exactly `wanted` (IPv6 link-local ones are the kernel's).
        let present = link::addresses(handle, Some(current.index)).await?;
        for old in &present {
            if !old.is_ipv6_link_local() && !wanted.contains(&old.address) {
                link::delete_address(handle, &current, old).await?;
            }
        }
        for a in &wanted {
            link::add_address(handle, &current, a).await?;
        }
        link::configure(handle, &current, want.mtu, want.noarp).await?;
        tracing::info!(interface = %current, mtu = want.mtu, addresses = wanted.len(),
            "interface updated");
        self.interface_by_index(handle, current.index).await
    }

    /// The link `key` names; with `hotplugged`, waits [`HOTPLUG_WAIT`] for it to appear.
    async fn wait_for_link(
        &self,
        handle: &Handle,
        key: LinkKey<'_>,
        hotplugged: bool,
    ) -> Result<Link> {
        let deadline = Instant::now() + HOTPLUG_WAIT;
        loop {
            match link::get(handle, key).await {
                Err(AgentError::LinkNotFound { .. }) if hotplugged && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Renames `link` to `name`; a link already called `name` gets `link`'s old name (a swap,
    /// as when the guest probed two NICs in the other order).
    async fn rename(&self, handle: &Handle, link: &Link, name: &str) -> Result<()> {
        let links = link::list(handle).await?;
        let other = link::find(&links, LinkKey::Name(name))
            .filter(|o| o.index != link.index)
            .cloned();
        if let Some(o) = &other {
            if o.is_up() {
                link::set_up(handle, o, false).await?;
            }
            let parked = format!("krs-tmp{}", o.index);
            link::rename(handle, o, &parked).await?;
        }
        if link.is_up() {
            link::set_up(handle, link, false).await?;
        }
        link::rename(handle, link, name).await?;
        if let Some(o) = &other {
            let parked = Link {
                name: format!("krs-tmp{}", o.index),
                ..o.clone()
            };
            link::rename(handle, &parked, &link.name).await?;
            if o.is_up() {
                link::set_up(handle, &parked, true).await?;
            }
        }
        Ok(())
    }

    async fn interface_by_index(&self, handle: &Handle, index: u32) -> Result<Interface> {
        let links = link::list(handle).await?;
        let l =
            links
                .iter()
                .find(|l| l.index == index)
                .ok_or_else(|| AgentError::LinkNotFound {
                    wanted: format!("index {index}"),
                    present: link::describe(&links),
                })?;
        let addresses = link::addresses(handle, Some(index)).await?;
        let mut i = Interface::new(l.name.clone())
            .device(l.name.clone())
            .mtu(l.mtu)
            .link_type(l.kind.clone())
            .noarp(l.noarp())
            .addresses(addresses.iter().map(|a| a.address));
        i.hw_addr = l.mac;
        Ok(i)
    }

    /// `UpdateRoutes`: makes `routes` the guest's routes (kernel-made and loopback routes
    /// stay) and returns the routes afterwards. Everything is checked first; when the kernel
    /// refuses a route, the routes added are removed and the old ones put back.
    pub async fn update_routes(&self, routes: &[Route]) -> Result<Vec<Route>> {
        self.check_owned("UpdateRoutes")?;
        let _serial = self.changes.lock().await;
        let handle = self.handle().await?;
        let links = link::list(handle).await?;
        let addresses = link::addresses(handle, None).await?;
        let ipv6 = ipv6_enabled();

        // Check every route and resolve its device.
        let mut wanted: Vec<(usize, Route, u32)> = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            r.check_family(&field)
                .map_err(|e| AgentError::invalid(field.clone(), e.to_string()))?;
            if r.family == IpFamily::V6 && !ipv6 {
                tracing::warn!(route = %r, "IPv6 is disabled in the guest: route left out");
                continue;
            }
            if r.device.is_empty() {
                return Err(AgentError::invalid(
                    format!("{field}.device"),
                    format!("is empty: route {r} must name the interface it goes out of"),
                ));
            }
            let dev = link::find(&links, LinkKey::Name(&r.device)).ok_or_else(|| {
                AgentError::invalid(
                    format!("{field}.device"),
                    format!(
                        "{:?} of route {r} is not an interface of the guest (it has: {}); \
                         configure the interface first (UpdateInterface)",
                        r.device,
                        link::describe(&links)
                    ),
                )
            })?;
            if let Some(d) = &r.destination {
                if d.network() != *d {
                    return Err(AgentError::invalid(
                        format!("{field}.dest"),
                        format!(
                            "{d} of route {r} has host bits set: the subnet is {}",
                            d.network()
                        ),
                    ));
                }
            }
            wanted.push((i, r.clone(), dev.index));
        }
        for (i, r, oif) in &wanted {
            let mut subnets: Vec<IpAddress> = addresses
                .iter()
                .filter(|a| a.message.header.index == *oif)
                .map(|a| a.address)
                .collect();
            subnets.extend(
                wanted
                    .iter()
                    .filter(|(_, w, o)| o == oif && w.gateway.is_none())
                    .filter_map(|(_, w, _)| w.destination),
            );
            if !route::gateway_on_link(r, &subnets) {
                let held = subnets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(AgentError::invalid(
                    format!("routes[{i}].gateway"),
                    format!(
                        "{} of route {r} is outside every subnet of {} ({}): give {} an \
                         address in the gateway's subnet (UpdateInterface), add a route to \
                         that subnet on {} before it, or mark the route onlink",
                        r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        r.device,
                        if held.is_empty() {
                            "it has none"
                        } else {
                            &held
                        },
                        r.device,
                        r.device
                    ),
                ));
            }
        }
        // Routes on the link first: the gateways of the others are in them.
        wanted.sort_by_key(|(_, r, _)| r.gateway.is_some());

        let lo: Vec<u32> = links
            .iter()
            .filter(|l| {
                l.flags
                    .contains(rtnetlink::packet_route::link::LinkFlags::Loopback)
            })
            .map(|l| l.index)
            .collect();
        let mut stale: Vec<route::ListedRoute> = route::list(handle, &links)
            .await?
            .into_iter()
            .filter(|old| !old.kernel && !lo.contains(&old.oif))
            // The route to an address's own subnet is the kernel's even once a request has
            // replaced it (same key): without it the subnet, and every gateway in it, is
            // unreachable.
            .filter(|old| {
                !(old.route.gateway.is_none()
                    && addresses.iter().any(|a| {
                        a.message.header.index == old.oif
                            && old.route.destination == Some(a.address.network())
                    }))
            })
            .filter(|old| {
                !wanted
                    .iter()
                    .any(|(_, w, oif)| route::same_key(&old.route, old.oif, w, *oif))
            })
            .collect();
        // Gateway routes go before the link routes they depend on.
        stale.sort_by_key(|old| old.route.gateway.is_none());

        let mut removed = Vec::new();
        let mut added = Vec::new();
        let mut result = Ok(());
        for old in &stale {
            match handle.route().del(old.message.clone()).execute().await {
                Ok(()) => removed.push(old),
                Err(e) => {
                    result = Err(netlink_error(format!("remove route {}", old.route), e));
                    break;
                }
            }
        }
        if result.is_ok() {
            for (i, r, oif) in &wanted {
                let message = route::to_message(r, *oif);
                match handle
                    .route()
                    .add(message.clone())
                    .replace()
                    .execute()
                    .await
                {
                    Ok(()) => added.push(message),
                    Err(e) => {
                        let unreachable = matches!(&e, rtnetlink::Error::NetlinkError(m)
                            if m.raw_code().abs() == libc::ENETUNREACH);
                        result = Err(if unreachable {
                            AgentError::invalid(
                                format!("routes[{i}].gateway"),
                                format!(
                                    "the kernel finds no subnet on {} holding the gateway of \
                                     route {r} (network unreachable): add the subnet's \
                                     address or route first, or mark the route onlink",
                                    r.device
                                ),
                            )
                        } else {
                            netlink_error(format!("add route {r}"), e)
                        });
                        break;
                    }
                }
            }
        }
        if let Err(e) = result {
            // Put the table back as it was.
            for m in added.into_iter().rev() {
                if let Err(undo) = handle.route().del(m).execute().await {
                    tracing::warn!(error = %undo, "a route added before the failure was not removed");
                }
            }
            for old in removed.iter().rev() {
                if let Err(undo) = handle
                    .route()
                    .add(route::re_add_message(&old.message))
                    .replace()
                    .execute()
                    .await
                {
                    tracing::warn!(route = %old.route, error = %undo, "an old route was not restored");
                }
            }
            return Err(e);
        }
        tracing::info!(
            routes = wanted.len(),
            removed = removed.len(),
            "routes updated"
        );
        Ok(route::list(handle, &links)
            .await?
            .into_iter()
            .map(|r| r.route)
            .collect())
    }

    /// `AddARPNeighbors`: adds (or replaces) static neighbour entries, after checking that
    /// every device exists.
    pub async fn add_arp_neighbors(&self, neighbors: &[ArpNeighbor]) -> Result<()> {
        self.check_owned("AddARPNeighbors")?;
        let _serial = self.changes.lock().await;
        let handle = self.handle().await?;
        let links = link::list(handle).await?;
        let mut resolved = Vec::new();
        for (i, n) in neighbors.iter().enumerate() {
            let dev = link::find(&links, LinkKey::Name(&n.device)).ok_or_else(|| {
                AgentError::invalid(
                    format!("neighbors[{i}].device"),
                    format!(
                        "{:?} of neighbour {n} is not an interface of the guest (it has: {})",
                        n.device,
                        link::describe(&links)
                    ),
                )
            })?;
            resolved.push((n, dev.index));
        }
        for (n, index) in resolved {
            let mut req = handle
                .neighbours()
                .add(index, n.address)
                .state(NeighbourState::from(u16::from(n.state)))
                .flags(NeighbourFlags::from_bits_retain(n.flags));
            if let Some(mac) = &n.lladdr {
                req = req.link_layer_address(&mac.octets());
            }
            req.replace()
                .execute()
                .await
                .map_err(|e| netlink_error(format!("add neighbour {n}"), e))?;
        }
        tracing::info!(neighbors = neighbors.len(), "ARP neighbours added");
        Ok(())
    }
}
