//! [`NetworkSlot`]: the owner of the sandbox's network on the host, the `network` slot of
//! [`SandboxResources`](crate::SandboxResources).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kata_hypervisor::{DeviceConfig, NetDevice};

use super::discover::{self, Link};
use super::netns::{NetNs, NetnsId};
use super::{
    tap, tc, EndpointState, InternetworkingModel, NetworkConfig, NetworkState, PodNetwork,
};
use crate::{Error, Result};

/// The sandbox's network: nothing, or the pod's namespace with a tap joined to each of its
/// interfaces. Removes its taps and filters on release and on drop; `detach` leaves them.
#[derive(Debug, Default)]
pub(crate) struct NetworkSlot {
    joined: Option<Joined>,
}

/// The pod's namespace and what this slot made in it.
#[derive(Debug)]
struct Joined {
    netns: NetnsId,
    model: InternetworkingModel,
    endpoints: Vec<Endpoint>,
    guest: PodNetwork,
}

/// One interface joined to a tap.
#[derive(Debug)]
struct Endpoint {
    device_id: String,
    interface: String,
    tap: String,
    queues: u32,
    mac: String,
    /// The tap's open queues, for the VMM: empty once adopted.
    fds: Vec<Arc<OwnedFd>>,
}

/// What a guest without network is told.
static NO_NETWORK: PodNetwork = PodNetwork {
    interfaces: Vec::new(),
    routes: Vec::new(),
    neighbors: Vec::new(),
};

impl NetworkSlot {
    /// Sets up the network `config` describes; see
    /// [`SandboxResources::set_up_network`](crate::SandboxResources::set_up_network). On
    /// error nothing is left: no tap, no qdisc, no filter.
    pub(crate) fn set_up(&mut self, config: &NetworkConfig) -> Result<()> {
        if let Some(joined) = &self.joined {
            return Err(Error::Network {
                netns: joined.netns.path.clone(),
                action: "set up the sandbox's network".into(),
                reason: "it is set up already (release the sandbox's resources first)".into(),
            });
        }
        let model = config.model;
        if config.disable_new_netns {
            if model != InternetworkingModel::None {
                return Err(Error::NetworkSetting {
                    key: "disable_new_netns",
                    value: "true".into(),
                    reason: format!(
                        "it works only with internetworking_model = \"none\" (it is \"{model}\")"
                    ),
                });
            }
            tracing::info!("disable_new_netns: the VM gets no network from the pod's namespace");
            return Ok(());
        }
        match model {
            InternetworkingModel::TcFilter => {}
            InternetworkingModel::None => {
                tracing::info!("internetworking_model = \"none\": the VM gets no network");
                return Ok(());
            }
            InternetworkingModel::MacVtap | InternetworkingModel::L3Forwarding => {
                return Err(Error::NetworkSetting {
                    key: "internetworking_model",
                    value: format!("\"{model}\""),
                    reason: "not supported by kata-rs yet (supported: \"tcfilter\", \"none\")"
                        .into(),
                })
            }
        }
        let Some(path) = &config.netns_path else {
            tracing::debug!("no network namespace in the spec: the VM gets no network");
            return Ok(());
        };
        let ns = NetNs::open(path)?;
        let queues = config.queues.max(1);
        let (guest, endpoints) = ns.run(|| join_all(ns.path(), queues))?;
        tracing::info!(
            netns = %path.display(),
            interfaces = endpoints.len(),
            queues,
            "pod network joined to the VM's taps (tcfilter)"
        );
        self.joined = Some(Joined {
            netns: ns.id().clone(),
            model,
            endpoints,
            guest,
        });
        Ok(())
    }

    /// [`set_up`](Self::set_up) for a VM that runs already: every NIC is to be hot-plugged,
    /// listed as a [`rescan`](Self::rescan) lists the new ones.
    pub(crate) fn join_running(&mut self, config: &NetworkConfig) -> Result<Rescanned> {
        self.set_up(config)?;
        let mut joining = Rescanned {
            devices: Vec::new(),
            interfaces: Vec::new(),
            removed: Vec::new(),
            network: PodNetwork::default(),
        };
        let Some(joined) = &self.joined else {
            return Ok(joining);
        };
        for e in &joined.endpoints {
            if let Some(i) = joined
                .guest
                .interfaces
                .iter()
                .find(|i| i.name == e.interface)
            {
                joining.devices.push(e.device(&joined.netns.path));
                joining.interfaces.push(i.clone());
            }
        }
        joining.network = joined.guest.clone();
        Ok(joining)
    }

    /// The NICs to cold-plug: one per tap, with its open queues (none once adopted).
    pub(crate) fn devices(&self) -> Vec<DeviceConfig> {
        let Some(joined) = &self.joined else {
            return Vec::new();
        };
        joined
            .endpoints
            .iter()
            .map(|e| e.device(&joined.netns.path))
            .collect()
    }

    /// Joins the interfaces that appeared in the pod's namespace since it was set up (or last
    /// rescanned) to taps of their own, as at set-up, and returns them: the NICs to hot-plug
    /// (in the order of [`Rescanned::interfaces`]) and what the guest is to be told, and the
    /// NICs of interfaces that are gone (still recorded until [`forget`](Self::forget)). The
    /// guest's view ([`guest`](Self::guest)) becomes the namespace's as found now. Nothing
    /// new: empty. Without a joined namespace: [`Error::Network`]. On error nothing new is
    /// left (no tap, qdisc or filter).
    pub(crate) fn rescan(&mut self) -> Result<Rescanned> {
        let Some(joined) = &mut self.joined else {
            return Err(Error::Network {
                netns: PathBuf::new(),
                action: "rescan the sandbox's network".into(),
                reason: "the sandbox has no pod network namespace joined (none in its spec, \
                         internetworking_model = \"none\", or disable_new_netns)"
                    .into(),
            });
        };
        let Some(ns) = NetNs::reopen(&joined.netns)? else {
            return Err(Error::Network {
                netns: joined.netns.path.clone(),
                action: "rescan the sandbox's network".into(),
                reason: "the namespace is gone, or its path names another one now".into(),
            });
        };
        let queues = joined.endpoints.first().map_or(1, |e| e.queues);
        let known: Vec<String> = joined
            .endpoints
            .iter()
            .map(|e| e.interface.clone())
            .collect();
        let used: Vec<String> = joined
            .endpoints
            .iter()
            .map(|e| e.device_id.clone())
            .collect();
        let (guest, added) = ns.run(|| join_new(ns.path(), &known, &used, queues))?;
        // Interfaces gone from the namespace: their NICs to unplug, then `forget`.
        let removed = joined
            .endpoints
            .iter()
            .filter(|e| !guest.interfaces.iter().any(|i| i.name == e.interface))
            .map(|e| (e.interface.clone(), e.device(&joined.netns.path)))
            .collect();
        let interfaces: Vec<super::Interface> = added
            .iter()
            .filter_map(|e| guest.interfaces.iter().find(|i| i.name == e.interface))
            .cloned()
            .collect();
        let devices = added.iter().map(|e| e.device(&joined.netns.path)).collect();
        tracing::info!(netns = %joined.netns.path.display(), added = added.len(), "pod network rescanned");
        joined.endpoints.extend(added);
        joined.guest = guest.clone();
        Ok(Rescanned {
            devices,
            interfaces,
            removed,
            network: guest,
        })
    }

    /// Removes the endpoint of NIC `device_id` (one [`Rescanned::removed`] named, once the VM
    /// has let it go): its tap and, if its interface is still there, the interface's ingress
    /// qdisc and filter; this process's queues are closed. An unknown id is
    /// [`Error::Network`] naming it. What fails stays recorded for release to retry.
    pub(crate) fn forget(&mut self, device_id: &str) -> Result<()> {
        let Some(joined) = &mut self.joined else {
            return Err(Error::Network {
                netns: PathBuf::new(),
                action: format!("remove NIC {device_id}"),
                reason: "the sandbox has no pod network".into(),
            });
        };
        let Some(at) = joined
            .endpoints
            .iter()
            .position(|e| e.device_id == device_id)
        else {
            return Err(Error::Network {
                netns: joined.netns.path.clone(),
                action: format!("remove NIC {device_id}"),
                reason: "no such NIC was joined".into(),
            });
        };
        let e = &joined.endpoints[at];
        let pair = [(e.interface.clone(), e.tap.clone())];
        if let Some(ns) = NetNs::reopen(&joined.netns)? {
            if let Some((_, err)) = ns.run(|| Ok(tear_down(ns.path(), &pair)))?.pop() {
                return Err(err);
            }
        }
        joined.endpoints.remove(at);
        Ok(())
    }

    /// What the guest is to be told: interfaces, routes, neighbours (empty without network).
    pub(crate) fn guest(&self) -> &PodNetwork {
        self.joined.as_ref().map_or(&NO_NETWORK, |j| &j.guest)
    }

    /// What persist records of it.
    pub(crate) fn state(&self) -> NetworkState {
        let Some(joined) = &self.joined else {
            return NetworkState::default();
        };
        NetworkState {
            netns: Some(joined.netns.path.clone()),
            netns_inode: joined.netns.inode,
            model: joined.model,
            endpoints: joined.endpoints.iter().map(Endpoint::state).collect(),
            guest: joined.guest.clone(),
        }
    }

    /// Takes over what a detached owner left, as `state` records it: the namespace must still
    /// be there at its path, and every recorded tap in it (a tap whose VMM exited is gone).
    /// Changes nothing; on error nothing is taken over.
    pub(crate) fn adopt(state: &NetworkState) -> Result<Self> {
        let Some(id) = recorded_netns(state) else {
            return Ok(NetworkSlot::default());
        };
        let not_adoptable = |reason: String| Error::NotAdoptable {
            path: id.path.clone(),
            reason,
        };
        let Some(ns) = NetNs::reopen(&id)? else {
            return Err(not_adoptable(
                "the pod's network namespace is gone, or its path names another one now".into(),
            ));
        };
        let missing = ns.run(|| {
            let mut missing = Vec::new();
            for e in &state.endpoints {
                if !tap::is_tap(ns.path(), &e.tap)? {
                    missing.push(format!("{} (of {})", e.tap, e.interface));
                }
            }
            Ok(missing)
        })?;
        if !missing.is_empty() {
            return Err(not_adoptable(format!(
                "tap {} is gone (the VM that held it has exited?)",
                missing.join(", ")
            )));
        }
        Ok(NetworkSlot {
            joined: Some(Joined {
                netns: id,
                model: state.model,
                endpoints: state
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        device_id: e.device_id.clone(),
                        interface: e.interface.clone(),
                        tap: e.tap.clone(),
                        queues: e.queues,
                        mac: e.mac.clone(),
                        fds: Vec::new(),
                    })
                    .collect(),
                guest: state.guest.clone(),
            }),
        })
    }

    /// Removes what a crashed owner left, as `state` records it: each recorded interface's
    /// ingress qdisc (with its filter) and each recorded tap, if the namespace is still there
    /// at its path. Keeps going after an error and returns the first.
    pub(crate) fn cleanup(state: &NetworkState) -> Result<()> {
        let Some(id) = recorded_netns(state) else {
            return Ok(());
        };
        let Some(ns) = NetNs::reopen(&id)? else {
            tracing::debug!(netns = %id.path.display(), "network cleanup: the namespace is gone, and its taps and filters with it");
            return Ok(());
        };
        let pairs: Vec<(String, String)> = state
            .endpoints
            .iter()
            .map(|e| (e.interface.clone(), e.tap.clone()))
            .collect();
        let failed = ns.run(|| Ok(tear_down(ns.path(), &pairs)))?;
        match failed.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Releases it: the interfaces' qdiscs and the taps removed, the open queues closed. What
    /// fails stays recorded for the next try.
    pub(crate) fn release_in_place(&mut self) -> Result<()> {
        let Some(joined) = &mut self.joined else {
            return Ok(());
        };
        let Some(ns) = NetNs::reopen(&joined.netns)? else {
            tracing::debug!(netns = %joined.netns.path.display(), "network release: the namespace is gone, and its taps and filters with it");
            self.joined = None;
            return Ok(());
        };
        let pairs: Vec<(String, String)> = joined
            .endpoints
            .iter()
            .map(|e| (e.interface.clone(), e.tap.clone()))
            .collect();
        let failed = ns.run(|| Ok(tear_down(ns.path(), &pairs)))?;
        let mut first = None;
        let failed_taps: Vec<String> = failed
            .into_iter()
            .map(|(tap, e)| {
                first.get_or_insert(e);
                tap
            })
            .collect();
        joined.endpoints.retain(|e| failed_taps.contains(&e.tap));
        match first {
            Some(e) => Err(e),
            None => {
                tracing::debug!(netns = %joined.netns.path.display(), "sandbox network released");
                self.joined = None;
                Ok(())
            }
        }
    }

    /// Gives up ownership: taps and filters stay for [`adopt`](Self::adopt); this process's
    /// open queues are closed (the VMM holds its own).
    pub(crate) fn detach(mut self) {
        self.joined = None;
    }
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        if let Err(e) = self.release_in_place() {
            tracing::error!("cannot release the sandbox's network: {e}");
        }
    }
}

/// What a `NetworkSlot::rescan` joined.
#[derive(Debug)]
pub struct Rescanned {
    /// The NICs to hot-plug, one per new interface, with their taps' open queues.
    pub devices: Vec<DeviceConfig>,
    /// The new interfaces, in the order of [`devices`](Self::devices).
    pub interfaces: Vec<super::Interface>,
    /// The NICs whose interface is gone from the namespace, with the interface's name: to
    /// unplug, then to forget ([`SandboxResources::forget_network_device`](
    /// crate::SandboxResources::forget_network_device)), which removes their taps.
    pub removed: Vec<(String, DeviceConfig)>,
    /// The whole pod network as found now: every interface, route and neighbour.
    pub network: PodNetwork,
}

impl Endpoint {
    /// The NIC that gives this endpoint's tap to the VM.
    fn device(&self, netns: &Path) -> DeviceConfig {
        DeviceConfig::Net(NetDevice {
            id: self.device_id.clone(),
            tap_name: self.tap.clone(),
            mac: self.mac.clone(),
            netns: Some(netns.to_path_buf()),
            queues: self.queues,
            tap_fds: self.fds.clone(),
        })
    }

    fn state(&self) -> EndpointState {
        EndpointState {
            device_id: self.device_id.clone(),
            interface: self.interface.clone(),
            tap: self.tap.clone(),
            queues: self.queues,
            mac: self.mac.clone(),
        }
    }
}

fn recorded_netns(state: &NetworkState) -> Option<NetnsId> {
    state.netns.as_ref().map(|path: &PathBuf| NetnsId {
        path: path.clone(),
        inode: state.netns_inode,
    })
}

/// In the namespace (calling thread): discovers the pod's network and joins a tap to each of
/// its interfaces. On error, undoes what it did and returns the error.
fn join_all(netns: &Path, queues: u32) -> Result<(PodNetwork, Vec<Endpoint>)> {
    let (guest, links) = discover::discover_here(netns)?;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (index, interface) in guest.interfaces.iter().enumerate() {
        match join_one(
            netns,
            &links,
            index,
            &interface.name,
            &interface.mac,
            interface.mtu,
            queues,
        ) {
            Ok(e) => endpoints.push(e),
            Err(e) => {
                let done: Vec<(String, String)> = endpoints
                    .iter()
                    .map(|e| (e.interface.clone(), e.tap.clone()))
                    .collect();
                for (tap, undo) in tear_down(netns, &done) {
                    tracing::error!(netns = %netns.display(), %tap, "cannot undo a partial network setup: {undo}");
                }
                return Err(e);
            }
        }
    }
    // The guest is told of the interfaces that got a tap: all of them.
    Ok((guest, endpoints))
}

/// In the namespace (calling thread): discovers the pod's network and joins a tap to each
/// interface not in `known`, with device ids not in `used`. On error, undoes what it did.
fn join_new(
    netns: &Path,
    known: &[String],
    used: &[String],
    queues: u32,
) -> Result<(PodNetwork, Vec<Endpoint>)> {
    let (guest, links) = discover::discover_here(netns)?;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut next = 0;
    for interface in guest.interfaces.iter().filter(|i| !known.contains(&i.name)) {
        while used.contains(&format!("net{next}")) {
            next += 1;
        }
        match join_one(
            netns,
            &links,
            next,
            &interface.name,
            &interface.mac,
            interface.mtu,
            queues,
        ) {
            Ok(e) => endpoints.push(e),
            Err(e) => {
                let done: Vec<(String, String)> = endpoints
                    .iter()
                    .map(|e| (e.interface.clone(), e.tap.clone()))
                    .collect();
                for (tap, undo) in tear_down(netns, &done) {
                    tracing::error!(netns = %netns.display(), %tap, "cannot undo a partial network rescan: {undo}");
                }
                return Err(e);
            }
        }
        next += 1;
    }
    Ok((guest, endpoints))
}

/// Makes a tap for interface `name` (the `index`th) and joins them; on error removes the tap.
fn join_one(
    netns: &Path,
    links: &[Link],
    index: usize,
    name: &str,
    mac: &str,
    mtu: u32,
    queues: u32,
) -> Result<Endpoint> {
    let tap_name = (index..)
        .map(|n| format!("tap{n}_kata"))
        .find(|t| !links.iter().any(|l| &l.name == t))
        .expect("an unbounded range has a free name");
    let fds = tap::create(netns, &tap_name, queues)?;
    let joined = tap::set_up(netns, &tap_name, mtu).and_then(|()| tc::join(netns, name, &tap_name));
    if let Err(e) = joined {
        // The tap's own qdisc and filter go with it.
        if let Err(undo) = tap::delete(netns, &tap_name) {
            tracing::error!(netns = %netns.display(), tap = %tap_name, "cannot remove a tap after a failed setup: {undo}");
        }
        return Err(e);
    }
    tracing::debug!(netns = %netns.display(), interface = name, tap = %tap_name, queues, "interface joined to its tap");
    Ok(Endpoint {
        device_id: format!("net{index}"),
        interface: name.to_owned(),
        tap: tap_name,
        queues,
        mac: mac.to_owned(),
        fds: fds.into_iter().map(Arc::new).collect(),
    })
}

/// In the namespace (calling thread): removes each `(interface, tap)` pair's ingress qdisc on
/// the interface, then the tap. Returns the taps of the pairs that failed, with their errors.
fn tear_down(netns: &Path, pairs: &[(String, String)]) -> Vec<(String, Error)> {
    let mut failed = Vec::new();
    for (interface, tap_name) in pairs {
        // Both, whatever the first gives.
        let unjoined = tc::unjoin(netns, interface).map(drop);
        let deleted = tap::delete(netns, tap_name).map(drop);
        let result = unjoined.and(deleted);
        if let Err(e) = result {
            tracing::error!(netns = %netns.display(), %interface, tap = %tap_name, "cannot remove a tap and its filters: {e}");
            failed.push((tap_name.clone(), e));
        }
    }
    failed
}
