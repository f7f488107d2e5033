//! The pod's network in the guest: what kata-resource found in the pod's network namespace
//! (and gave the VM as taps) is told to the agent — interfaces first (each found by the MAC the
//! VM's NIC has), then ARP neighbours, then routes, as Kata's runtime does.

use kata_agent_client::api::network::{
    ArpNeighbor, Interface, IpAddress, IpFamily, MacAddress, NeighborState, Route, RouteScope,
};
use std::sync::{Arc, Mutex};

use kata_agent_client::Agent;
use kata_hypervisor::{GuestAddress, Hypervisor};
use kata_resource::network::{self as host, PodNetwork};
use kata_resource::SandboxResources;

use crate::error::{Error, Result};
use crate::NetworkChanges;

/// Sends the pod's network to the guest. Nothing to send without a network.
pub(super) async fn configure_guest(agent: &Agent, net: &PodNetwork) -> Result<()> {
    for i in &net.interfaces {
        agent.update_interface(&interface(i)?).await?;
    }
    let neighbors = net
        .neighbors
        .iter()
        .map(neighbor)
        .collect::<Result<Vec<_>>>()?;
    if !neighbors.is_empty() {
        agent.add_arp_neighbors(&neighbors).await?;
    }
    let routes = net.routes.iter().map(route).collect::<Result<Vec<_>>>()?;
    if !routes.is_empty() {
        agent.update_routes(&routes).await?;
    }
    Ok(())
}

/// Joins the interfaces added to the pod's namespace since boot: a tap each (kata-resource),
/// hot-plugged as a NIC, the guest told each interface (with the NIC's PCI path, so the agent
/// waits for it to appear), then the new interfaces' neighbours and the pod's routes as found
/// now. First, the NICs of interfaces gone from the namespace are unplugged and their taps
/// removed. A NIC that cannot be plugged fails the rescan; its tap stays recorded and goes
/// with the others at shutdown.
pub(super) async fn rescan(
    vm: &Arc<dyn Hypervisor>,
    agent: &Agent,
    resources: &Arc<Mutex<Option<SandboxResources>>>,
) -> Result<NetworkChanges> {
    let owner = resources.clone();
    let found = blocking_resources(owner, |r| Ok(r.rescan_network()?)).await?;
    apply(vm, agent, resources, found).await
}

/// Joins a running VM booted without network (one handed over by the VM cache) to the pod's
/// network `config` names: a tap per interface (kata-resource), each hot-plugged as a NIC and
/// told to the guest, then the neighbours and routes — as a rescan adds interfaces new since
/// boot. Without a namespace in `config`, nothing. A NIC that cannot be plugged fails the
/// join; the taps stay recorded and go with the sandbox.
pub(super) async fn join(
    vm: &Arc<dyn Hypervisor>,
    agent: &Agent,
    resources: &Arc<Mutex<Option<SandboxResources>>>,
    config: &kata_resource::network::NetworkConfig,
) -> Result<NetworkChanges> {
    let config = config.clone();
    let found =
        blocking_resources(resources.clone(), move |r| Ok(r.join_network(&config)?)).await?;
    apply(vm, agent, resources, found).await
}

/// Applies what kata-resource joined or found gone: NICs of gone interfaces unplugged and
/// their taps removed, new NICs hot-plugged and the guest told of each, then the new
/// interfaces' neighbours and the pod's routes.
async fn apply(
    vm: &Arc<dyn Hypervisor>,
    agent: &Agent,
    resources: &Arc<Mutex<Option<SandboxResources>>>,
    found: kata_resource::network::Rescanned,
) -> Result<NetworkChanges> {
    let mut changes = NetworkChanges::default();
    for (name, device) in found.removed {
        vm.remove_device(&device).await?;
        let id = device.id().to_owned();
        blocking_resources(
            resources.clone(),
            move |r| Ok(r.forget_network_device(&id)?),
        )
        .await?;
        changes.removed.push(name);
    }
    for (device, i) in found.devices.into_iter().zip(&found.interfaces) {
        let address = vm.add_device(device).await?;
        let mut guest = interface(i)?;
        if let GuestAddress::Pci { path } = address {
            guest = guest.pci_path(path.to_string());
        }
        agent.update_interface(&guest).await?;
        changes.added.push(i.name.clone());
    }
    if changes.added.is_empty() {
        return Ok(changes);
    }
    let neighbors = found
        .network
        .neighbors
        .iter()
        .filter(|n| changes.added.contains(&n.device))
        .map(neighbor)
        .collect::<Result<Vec<_>>>()?;
    if !neighbors.is_empty() {
        agent.add_arp_neighbors(&neighbors).await?;
    }
    let routes = found
        .network
        .routes
        .iter()
        .map(route)
        .collect::<Result<Vec<_>>>()?;
    agent.update_routes(&routes).await?;
    Ok(changes)
}

/// Runs `f` on the sandbox's host resources, off the async worker.
pub(super) async fn blocking_resources<T: Send + 'static>(
    resources: Arc<Mutex<Option<SandboxResources>>>,
    f: impl FnOnce(&mut SandboxResources) -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || {
        let mut guard = resources.lock().unwrap();
        let r = guard.as_mut().ok_or_else(|| {
            Error::invalid("network", "the sandbox's host resources are released")
        })?;
        f(r)
    })
    .await
    .map_err(|e| Error::invalid("network", format!("the network rescan panicked: {e}")))?
}

fn bad(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid("pod network", format!("{what}: {reason}"))
}

fn mac(device: &str, text: &str) -> Result<MacAddress> {
    text.parse()
        .map_err(|e| bad(&format!("{device}'s MAC {text}"), e))
}

fn address(device: &str, p: &host::IpPrefix) -> Result<IpAddress> {
    IpAddress::new(p.address, p.prefix_len).map_err(|e| {
        bad(
            &format!("{device}'s address {}/{}", p.address, p.prefix_len),
            e,
        )
    })
}

fn family(f: host::IpFamily) -> IpFamily {
    match f {
        host::IpFamily::V4 => IpFamily::V4,
        host::IpFamily::V6 => IpFamily::V6,
    }
}

/// The guest interface: the pod interface's name, MAC (the VM's NIC has it), MTU and
/// addresses.
fn interface(i: &host::Interface) -> Result<Interface> {
    let addresses = i
        .addresses
        .iter()
        .map(|p| address(&i.name, p))
        .collect::<Result<Vec<_>>>()?;
    Ok(Interface::new(&i.name)
        .device(&i.name)
        .hw_addr(mac(&i.name, &i.mac)?)
        .mtu(i.mtu)
        .addresses(addresses)
        .link_type(&i.kind)
        .noarp(i.noarp))
}

fn route(r: &host::Route) -> Result<Route> {
    let mut out = Route::default()
        .family(family(r.family))
        .scope(RouteScope::from(r.scope))
        .onlink(r.onlink);
    out.destination = r
        .destination
        .as_ref()
        .map(|d| address(&r.device, d))
        .transpose()?;
    out.gateway = r.gateway;
    out.device = r.device.clone();
    out.source = r.source;
    Ok(out)
}

fn neighbor(n: &host::ArpNeighbor) -> Result<ArpNeighbor> {
    Ok(ArpNeighbor::new(n.ip, mac(&n.device, &n.mac)?, &n.device)
        .state(NeighborState::from(n.state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn the_pod_network_becomes_the_agents_types() {
        let prefix = |a: &str, l| host::IpPrefix {
            address: a.parse::<IpAddr>().unwrap(),
            prefix_len: l,
        };
        let mut i = host::Interface {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            mtu: 1450,
            addresses: vec![prefix("10.88.0.2", 16)],
            kind: String::new(),
            noarp: false,
        };
        let g = interface(&i).unwrap();
        assert_eq!(g.name, "eth0");
        assert_eq!(g.mtu, 1450);
        assert_eq!(g.addresses[0].to_string(), "10.88.0.2/16");
        i.mac = "not-a-mac".into();
        let e = interface(&i).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("not-a-mac"), "{e}");

        let mut r = host::Route {
            destination: None,
            gateway: Some("10.88.0.1".parse().unwrap()),
            source: None,
            device: "eth0".into(),
            scope: 0,
            family: host::IpFamily::V4,
            onlink: false,
        };
        let g = route(&r).unwrap();
        assert_eq!(g.destination, None, "a default route");
        assert_eq!(g.gateway, r.gateway);
        r.destination = Some(prefix("10.90.0.0", 16));
        assert_eq!(
            route(&r).unwrap().destination.unwrap().to_string(),
            "10.90.0.0/16"
        );
        // A host bit set is the agent's to refuse; a prefix longer than the family's is ours.
        r.destination = Some(prefix("10.90.0.0", 33));
        let e = route(&r).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("10.90.0.0/33"), "{e}");

        let mut n = host::ArpNeighbor {
            device: "eth0".into(),
            ip: "10.88.0.1".parse().unwrap(),
            mac: "02:42:ac:11:00:01".into(),
            state: 0x80,
        };
        let g = neighbor(&n).unwrap();
        assert_eq!(g.to_string(), "10.88.0.1 lladdr 02:42:ac:11:00:01 dev eth0");
        assert_eq!(g.state, NeighborState::Permanent);
        n.mac = "02:42".into();
        let e = neighbor(&n).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("02:42"), "{e}");
    }
}
