//! The typed agent API: [`Agent`], Rust types in and Rust types out.
//!
//! [`Agent`] is what the runtime calls: containers from an `oci_spec` [`Spec`], processes from
//! an `oci_spec` [`Process`], exit statuses as [`ExitStatus`], signals as [`Signal`],
//! statistics as [`ContainerStats`], OOM kills as a [`Stream`](futures_core::Stream)
//! ([`OomEvents`]). It builds the protocol's requests itself; no generated protobuf type
//! appears in its signatures. Deadlines are the connection's ([`ConnectOptions`]): the
//! request timeout on every call, except the calls that wait by design
//! ([`Agent::wait_process`], [`Agent::read_output`], [`Agent::remove_container`],
//! [`Agent::oom_events`]), which say theirs.
//!
//! - [`exit`] has [`ExitStatus`], [`Signal`];
//! - [`stats`] has [`ContainerStats`] and its parts;
//! - [`storage`] has [`Storage`], [`FsGroup`], [`Device`];
//! - [`setup`] has [`SandboxSetup`], [`ContainerSetup`], [`KernelModule`];
//! - [`guest`] has [`AgentVersion`], [`GuestDetails`], [`OnlineCpuMem`] (and the answer of
//!   kata-rs's `OfflineCPUs` extension, [`Agent::offline_cpus`]);
//! - [`network`] has [`Interface`], [`IpAddress`], [`MacAddress`], [`Route`],
//!   [`ArpNeighbor`];
//! - [`oom`] has [`OomEvents`];
//! - [`metrics`] has [`GuestMetrics`] and Prometheus text.

pub mod exit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guest;
pub mod metrics;
pub mod network;
pub mod oom;
pub mod setup;
pub mod stats;
pub mod storage;

use std::collections::BTreeSet;
use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Process, Spec};

use crate::address::AgentAddress;
use crate::client::{AgentClient, OutputStream};
use crate::connect::ConnectOptions;
use crate::error::{Error, Result};
use crate::protocol::agent as pb;
use crate::protocol::health::health_check_response::ServingStatus;

pub use exit::{ExitStatus, Signal};
pub use guest::{AgentDetails, AgentVersion, GuestDetails, OnlineCpuMem};
pub use metrics::GuestMetrics;
pub use network::{
    ArpNeighbor, Interface, IpAddress, IpFamily, MacAddress, NeighborState, Route, RouteScope,
};
pub use oom::OomEvents;
pub use setup::{ContainerSetup, KernelModule, SandboxSetup};
pub use stats::{
    BlkioEntry, BlkioStats, CgroupStats, ContainerStats, CpuStats, CpuThrottling, CpuUsage,
    HugetlbStats, MemoryData, MemoryStats, NetworkStats, PidsStats,
};
pub use storage::{Device, FsGroup, FsGroupChangePolicy, Storage};

/// The guest agent, typed: one method per thing the runtime asks of it.
///
/// `Clone`; clones share one connection, and calls from many tasks run concurrently over it.
/// Container and exec ids are the runtime's own; a container's first process has the
/// container id as its exec id (an empty exec id also names it).
///
/// ```no_run
/// use std::time::Duration;
/// use kata_agent_client::{Agent, AgentAddress, ConnectOptions, Signal};
///
/// # async fn demo(spec: oci_spec::runtime::Spec) -> Result<(), kata_agent_client::Error> {
/// let addr: AgentAddress = "vsock://3:1024".parse()?;
/// let agent = Agent::connect(&addr, ConnectOptions::default()).await?;
/// agent.create_container("c1", &spec, &[]).await?;
/// agent.start_container("c1").await?;
/// agent.signal_process("c1", "c1", Signal::TERM).await?;
/// let status = agent.wait_process("c1", "c1", Some(Duration::from_secs(10))).await?;
/// println!("c1 ended: {status}");
/// agent.remove_container("c1", Some(Duration::from_secs(10))).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Agent {
    client: AgentClient,
}

#[cfg(feature = "server")]
impl From<AgentClient> for Agent {
    fn from(client: AgentClient) -> Self {
        Agent { client }
    }
}

impl Agent {
    /// Connects to the agent at `addr`, retrying while the guest boots (until
    /// [`ConnectOptions::dial_timeout`]).
    pub async fn connect(addr: &AgentAddress, opts: ConnectOptions) -> Result<Self> {
        AgentClient::connect(addr, opts)
            .await
            .map(|client| Agent { client })
    }

    /// [`connect`](Self::connect) with the connection's writes passing `gate`: a VM's owner
    /// holds it while the VM is paused, so nothing reaches a vsock backend whose rings are
    /// stopped (see [`WriteGate`](crate::WriteGate)).
    pub async fn connect_with_gate(
        addr: &AgentAddress,
        opts: ConnectOptions,
        gate: &crate::WriteGate,
    ) -> Result<Self> {
        AgentClient::connect_with_gate(addr, opts, gate)
            .await
            .map(|client| Agent { client })
    }

    /// The protocol-level client underneath (same connection), for protocol-level tests
    /// (feature `server`).
    #[cfg(feature = "server")]
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The address this agent is reached at.
    pub fn address(&self) -> &AgentAddress {
        self.client.address()
    }

    /// The deadline of calls without an explicit timeout.
    pub fn request_timeout(&self) -> Duration {
        self.client.request_timeout()
    }

    /// A clone (same connection) with another request timeout.
    pub fn with_request_timeout(&self, request_timeout: Duration) -> Self {
        Agent {
            client: self.client.with_request_timeout(request_timeout),
        }
    }

    // --- health and guest ---

    /// `Health.Check`: succeeds when the agent serves requests; [`Error::NotServing`] when
    /// it answers but does not.
    pub async fn check(&self) -> Result<()> {
        let resp = self.client.check().await?;
        match resp.status.enum_value() {
            Ok(ServingStatus::SERVING) => Ok(()),
            Ok(other) => Err(Error::NotServing {
                status: format!("{other:?}"),
            }),
            Err(n) => Err(Error::NotServing {
                status: format!("unknown status {n}"),
            }),
        }
    }

    /// `Health.Version`: the agent's and the protocol's versions.
    pub async fn version(&self) -> Result<AgentVersion> {
        Ok(AgentVersion::from(&self.client.version().await?))
    }

    /// `GetGuestDetails`: the agent's capabilities and the guest's memory hot-plug facts
    /// (memory block size and probe interface are always asked for).
    pub async fn guest_details(&self) -> Result<GuestDetails> {
        let req = pb::GuestDetailsRequest {
            mem_block_size: true,
            mem_hotplug_probe: true,
            ..Default::default()
        };
        Ok(GuestDetails::from(
            &self.client.get_guest_details(&req).await?,
        ))
    }

    /// `GetMetrics`: the guest's figures (memory, CPU, load, network, block), checked at the
    /// edge: only well-formed lines of the guest's own families are kept ([`GuestMetrics`]).
    pub async fn get_metrics(&self) -> Result<GuestMetrics> {
        let resp = self
            .client
            .get_metrics(&pb::GetMetricsRequest::new())
            .await?;
        Ok(GuestMetrics::from_guest_text(&resp.metrics))
    }

    // --- sandbox ---

    /// `CreateSandbox`: hostname, DNS, shared storages, ... before the first container.
    pub async fn create_sandbox(&self, setup: &SandboxSetup) -> Result<()> {
        self.client.create_sandbox(&setup.to_grpc()).await
    }

    /// `DestroySandbox`: the agent removes every container; the guest may power off after.
    pub async fn destroy_sandbox(&self) -> Result<()> {
        self.client
            .destroy_sandbox(&pb::DestroySandboxRequest::new())
            .await
    }

    /// `ReseedRandomDev`: mixes `entropy` (host randomness) into the guest's random pool, so
    /// that a VM booted ahead of need (the VM cache) does not share its pool's history.
    pub async fn reseed_random_dev(&self, entropy: &[u8]) -> Result<()> {
        let mut req = pb::ReseedRandomDevRequest::new();
        req.data = entropy.to_vec();
        self.client.reseed_random_dev(&req).await
    }

    /// `SetGuestDateTime`: sets the guest's clock to `time` (a VM restored from a template
    /// wakes with the template's clock).
    pub async fn set_guest_date_time(&self, time: std::time::SystemTime) -> Result<()> {
        let since = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut req = pb::SetGuestDateTimeRequest::new();
        req.Sec = since.as_secs() as i64;
        req.Usec = i64::from(since.subsec_micros());
        self.client.set_guest_date_time(&req).await
    }

    /// `OnlineCPUMem`: onlines hot-plugged vCPUs (and memory).
    pub async fn online_cpu_mem(&self, what: OnlineCpuMem) -> Result<()> {
        self.client.online_cpu_mem(&what.to_grpc()).await
    }

    /// `kata_rs.GuestService/OfflineCPUs`, kata-rs's extension (not in Kata's protocol):
    /// asks the guest to take its highest-numbered CPUs offline (never CPU 0) until `nb_cpus`
    /// are online, before the VMM takes their vCPUs back. Returns the CPUs online after it
    /// (more than `nb_cpus` where the guest could not take one offline), or `None` where the
    /// agent does not serve the extension (Kata's agent, [`Error::is_unserved`]): the guest
    /// then keeps its CPUs online.
    pub async fn offline_cpus(&self, nb_cpus: u32) -> Result<Option<BTreeSet<u32>>> {
        let req = crate::protocol::kata_rs::OfflineCPUsRequest {
            nb_cpus,
            ..Default::default()
        };
        match self.client.offline_cpus(&req).await {
            Ok(resp) => Ok(Some(guest::online_of(&resp))),
            Err(e) if e.is_unserved() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ids of containers the guest OOM-kills, as a stream that ends when the connection
    /// closes (see [`OomEvents`]). Each call makes an independent stream.
    pub fn oom_events(&self) -> OomEvents {
        OomEvents::new(self.client.clone())
    }

    // --- network ---

    /// `UpdateInterface`: configures the guest link found by `interface`'s MAC address (or
    /// its device name, then its name): its name, MTU, addresses (they become its only ones,
    /// IPv6 link-local aside), up. Returns the interface as the guest has it afterwards.
    ///
    /// With a [`pci_path`](Interface::pci_path) (a hot-plugged device) the agent waits a few
    /// seconds for the link to appear; the request timeout should leave room for that.
    pub async fn update_interface(&self, interface: &Interface) -> Result<Interface> {
        let req = pb::UpdateInterfaceRequest {
            interface: protobuf::MessageField::some(network::wire::interface_to_grpc(interface)),
            ..Default::default()
        };
        let resp = self.client.update_interface(&req).await?;
        network::wire::interface_from_grpc(&resp, "interface").map_err(|e| Error::BadAnswer {
            method: "UpdateInterface",
            reason: e.to_string(),
        })
    }

    /// `UpdateRoutes`: makes `routes` the guest's routes (of the main table: the ones the
    /// kernel made for the interfaces' addresses and those of `lo` stay) and returns the
    /// guest's routes afterwards. Routes without a gateway are added first. On failure the
    /// guest keeps the routes it had; a gateway that no subnet of its device holds (and that
    /// is not `onlink`) is refused naming the route.
    pub async fn update_routes(&self, routes: &[Route]) -> Result<Vec<Route>> {
        let req = pb::UpdateRoutesRequest {
            routes: protobuf::MessageField::some(pb::Routes {
                Routes: routes.iter().map(network::wire::route_to_grpc).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = self.client.update_routes(&req).await?;
        decode_routes("UpdateRoutes", &resp)
    }

    /// `ListInterfaces`: the guest's links with their addresses.
    pub async fn list_interfaces(&self) -> Result<Vec<Interface>> {
        let resp = self
            .client
            .list_interfaces(&pb::ListInterfacesRequest::new())
            .await?;
        resp.Interfaces
            .iter()
            .enumerate()
            .map(|(i, w)| network::wire::interface_from_grpc(w, &format!("Interfaces[{i}]")))
            .collect::<Result<_>>()
            .map_err(|e| Error::BadAnswer {
                method: "ListInterfaces",
                reason: e.to_string(),
            })
    }

    /// `ListRoutes`: the guest's routes (main table, unicast).
    pub async fn list_routes(&self) -> Result<Vec<Route>> {
        let resp = self
            .client
            .list_routes(&pb::ListRoutesRequest::new())
            .await?;
        decode_routes("ListRoutes", &resp)
    }

    /// `AddARPNeighbors`: adds (or replaces) static neighbour entries.
    pub async fn add_arp_neighbors(&self, neighbors: &[ArpNeighbor]) -> Result<()> {
        let req = pb::AddARPNeighborsRequest {
            neighbors: protobuf::MessageField::some(pb::ARPNeighbors {
                ARPNeighbors: neighbors
                    .iter()
                    .map(network::wire::neighbor_to_grpc)
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.client.add_arp_neighbors(&req).await
    }

    // --- containers ---

    /// `CreateContainer`: prepares container `id` from `spec`, mounting `storages` first;
    /// its first process (exec id = `id`) starts with [`Agent::start_container`].
    pub async fn create_container(
        &self,
        id: &str,
        spec: &Spec,
        storages: &[Storage],
    ) -> Result<()> {
        self.create_container_with(&ContainerSetup::new(id, spec).storages(storages))
            .await
    }

    /// `CreateContainer` with everything it can carry (devices, the sandbox pid namespace).
    pub async fn create_container_with(&self, setup: &ContainerSetup<'_>) -> Result<()> {
        self.client.create_container(&setup.to_grpc()?).await
    }

    /// `StartContainer`: starts the container's first process.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let req = pb::StartContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.client.start_container(&req).await
    }

    /// `RemoveContainer`: kills the container's processes, waits for them and frees the
    /// container.
    ///
    /// The agent waits up to `wait` for the processes to die (whole seconds, rounded up;
    /// `None` waits for ever), and the call's deadline is that wait plus the request
    /// timeout (none with `None`).
    pub async fn remove_container(&self, id: &str, wait: Option<Duration>) -> Result<()> {
        let req = pb::RemoveContainerRequest {
            container_id: id.to_string(),
            timeout: wait.map_or(0, whole_seconds_at_least_one),
            ..Default::default()
        };
        self.client.remove_container(&req).await
    }

    /// `PauseContainer`: freezes every process of the container.
    pub async fn pause_container(&self, id: &str) -> Result<()> {
        let req = pb::PauseContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.client.pause_container(&req).await
    }

    /// `ResumeContainer`: thaws a paused container.
    pub async fn resume_container(&self, id: &str) -> Result<()> {
        let req = pb::ResumeContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.client.resume_container(&req).await
    }

    /// `UpdateContainer`: applies new cgroup limits.
    pub async fn update_container(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let req = pb::UpdateContainerRequest {
            container_id: id.to_string(),
            resources: protobuf::MessageField::some(crate::spec::resources_to_grpc(resources)?),
            ..Default::default()
        };
        self.client.update_container(&req).await
    }

    /// `StatsContainer`: the container's cgroup and the guest's network counters.
    pub async fn stats(&self, id: &str) -> Result<ContainerStats> {
        let req = pb::StatsContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        Ok(ContainerStats::from(
            &self.client.stats_container(&req).await?,
        ))
    }

    /// The pids (in the guest) of the container's processes.
    ///
    /// Asked with `ListProcesses` in JSON form today (Kata's current protocol no longer has
    /// that call; this method is where another way goes).
    pub async fn container_pids(&self, id: &str) -> Result<Vec<u32>> {
        let req = pb::ListProcessesRequest {
            container_id: id.to_string(),
            format: "json".into(),
            ..Default::default()
        };
        let resp = self.client.list_processes(&req).await?;
        serde_json::from_slice(&resp.process_list).map_err(|e| Error::BadAnswer {
            method: "ListProcesses",
            reason: format!(
                "the process list of container {id} is not a JSON array of pids ({e}): {:?}",
                String::from_utf8_lossy(&resp.process_list)
            ),
        })
    }

    // --- processes ---

    /// `ExecProcess`: starts `process` as exec `exec_id` in running container
    /// `container_id`.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &Process,
    ) -> Result<()> {
        let req = pb::ExecProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            process: protobuf::MessageField::some(crate::spec::process_to_grpc(process)?),
            ..Default::default()
        };
        self.client.exec_process(&req).await
    }

    /// `SignalProcess`: sends `signal` to a process. An empty `exec_id` names the container's
    /// first process; SIGKILL to it also kills the rest of the container's cgroup.
    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: Signal,
    ) -> Result<()> {
        let req = pb::SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal: signal.number() as u32,
            ..Default::default()
        };
        self.client.signal_process(&req).await
    }

    /// `WaitProcess`: waits until the process ends and returns how.
    ///
    /// `timeout: None` waits for ever (a container may run for days). Against Kata's own
    /// agent, which does not send the terminating signal, a status of 128 + n reads as a
    /// kill by signal n (see [`ExitStatus::from_shell_status`]). An exec's status can be
    /// collected once: the agent forgets the exec after answering.
    pub async fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
        timeout: Option<Duration>,
    ) -> Result<ExitStatus> {
        let req = pb::WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let resp = self.client.wait_process(&req, timeout).await?;
        ExitStatus::from_wait_response(resp.status, resp.signal)
    }

    // --- standard streams ---

    /// `ReadStdout`/`ReadStderr`: the next chunk (at most `max_len` bytes) of a process's
    /// output, once there is some; `Ok(None)` at the end of the stream.
    ///
    /// `timeout: None` waits for ever. A read that times out loses nothing: the agent keeps
    /// the output for the next read.
    pub async fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        stream: OutputStream,
        max_len: u32,
        timeout: Option<Duration>,
    ) -> Result<Option<Vec<u8>>> {
        let req = pb::ReadStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            len: max_len,
            ..Default::default()
        };
        let result = match stream {
            OutputStream::Stdout => self.client.read_stdout(&req, timeout).await,
            OutputStream::Stderr => self.client.read_stderr(&req, timeout).await,
        };
        match result {
            Ok(resp) if resp.data.is_empty() => Ok(None),
            Ok(resp) => Ok(Some(resp.data)),
            Err(err) if err.is_eof() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `WriteStdin`: writes `data` to the process's stdin; returns how many bytes the agent
    /// took (0: the process takes no more input).
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize> {
        let req = pb::WriteStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            data: data.to_vec(),
            ..Default::default()
        };
        let taken = self.client.write_stdin(&req).await?.len as usize;
        // A guest that claims more than it was sent would make the caller skip input.
        if taken > data.len() {
            return Err(Error::BadAnswer {
                method: "WriteStdin",
                reason: format!(
                    "the agent took {taken} bytes of a {}-byte write",
                    data.len()
                ),
            });
        }
        Ok(taken)
    }

    /// `CloseStdin`: closes the process's stdin (it reads end of file).
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let req = pb::CloseStdinRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.client.close_stdin(&req).await
    }

    /// `TtyWinResize`: resizes the process's terminal.
    pub async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()> {
        let req = pb::TtyWinResizeRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            row: rows,
            column: columns,
            ..Default::default()
        };
        self.client.tty_win_resize(&req).await
    }
}

/// The routes of an answer, each decoded (an undecodable one is [`Error::BadAnswer`]).
fn decode_routes(method: &'static str, resp: &pb::Routes) -> Result<Vec<Route>> {
    resp.Routes
        .iter()
        .enumerate()
        .map(|(i, w)| network::wire::route_from_grpc(w, &format!("Routes[{i}]")))
        .collect::<Result<_>>()
        .map_err(|e| Error::BadAnswer {
            method,
            reason: e.to_string(),
        })
}

/// `RemoveContainer`'s wait in the protocol's unit: whole seconds, rounded up, at least one
/// (0 would mean "for ever"), saturating.
fn whole_seconds_at_least_one(wait: Duration) -> u32 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_wait_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds_at_least_one(Duration::ZERO), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_secs(10)), 10);
        assert_eq!(
            whole_seconds_at_least_one(Duration::from_millis(10_001)),
            11
        );
        assert_eq!(whole_seconds_at_least_one(Duration::MAX), u32::MAX);
    }
}
