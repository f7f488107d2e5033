//! [`AgentClient`]: the async ttRPC client of the guest agent.
//!
//! One method per protocol method, named in snake_case, taking the generated
//! request type by reference. Every call carries a deadline (the ttRPC context
//! timeout is not sent: the host keeps the deadline, see [`AgentClient`]) of
//! [`ConnectOptions::request_timeout`], except the calls that wait for the
//! guest by design — [`AgentClient::wait_process`], [`AgentClient::read_stdout`],
//! [`AgentClient::read_stderr`] and [`AgentClient::get_oom_event`] — which take
//! an explicit `Option<Duration>` (`None` waits for ever).
//!
//! The client is `Clone`; clones share one connection, and calls from many
//! tasks run concurrently over it (ttRPC multiplexes them by stream id).

use std::future::Future;
use std::time::Duration;

use crate::address::AgentAddress;
use crate::connect::{dial, ConnectOptions};
use crate::error::{Error, Result};
use crate::protocol::agent::{
    AddARPNeighborsRequest, CloseStdinRequest, CopyFileRequest, CreateContainerRequest,
    CreateSandboxRequest, DestroySandboxRequest, ExecProcessRequest, GetMetricsRequest,
    GetOOMEventRequest, GuestDetailsRequest, GuestDetailsResponse, Interfaces,
    ListInterfacesRequest, ListProcessesRequest, ListProcessesResponse, ListRoutesRequest, Metrics,
    OOMEvent, OnlineCPUMemRequest, PauseContainerRequest, ReadStreamRequest, ReadStreamResponse,
    RemoveContainerRequest, ReseedRandomDevRequest, ResumeContainerRequest, Routes,
    SetGuestDateTimeRequest, SignalProcessRequest, StartContainerRequest, StatsContainerRequest,
    StatsContainerResponse, TtyWinResizeRequest, UpdateContainerRequest, UpdateInterfaceRequest,
    UpdateRoutesRequest, VolumeStatsRequest, VolumeStatsResponse, WaitProcessRequest,
    WaitProcessResponse, WriteStreamRequest, WriteStreamResponse,
};
use crate::protocol::agent_ttrpc::AgentServiceClient;
use crate::protocol::health::{CheckRequest, HealthCheckResponse, VersionCheckResponse};
use crate::protocol::health_ttrpc::HealthClient;
use crate::protocol::kata_rs::{OfflineCPUsRequest, OfflineCPUsResponse};
use crate::protocol::kata_rs_ttrpc::GuestServiceClient;
use crate::protocol::types::Interface;

/// Extra time the host waits past a waiting call's deadline for the agent's own
/// `DEADLINE_EXCEEDED` answer before it gives up locally.
const LOCAL_DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// Which output stream of a process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// The process's standard output (`ReadStdout`).
    Stdout,
    /// The process's standard error (`ReadStderr`).
    Stderr,
}

/// An async client of the guest agent (`grpc.AgentService` and `grpc.Health`).
///
/// ```no_run
/// use kata_agent_client::{AgentAddress, AgentClient, ConnectOptions};
///
/// # async fn demo() -> Result<(), kata_agent_client::Error> {
/// let addr: AgentAddress = "vsock://3:1024".parse()?;
/// let agent = AgentClient::connect(&addr, ConnectOptions::default()).await?;
/// let version = agent.version().await?;
/// println!("agent {}", version.agent_version);
/// # Ok(())
/// # }
/// ```
///
/// # Deadlines
/// A call that acts (creates, starts, signals, ...) has its deadline kept by the
/// host alone (a tokio timer); its ttRPC context carries none (`timeout_nano` 0).
/// The agent would enforce one with the guest's clock, and cut the work half
/// done when that clock leaps: with eight emulated guests booting at once, an
/// agent answered `DEADLINE_EXCEEDED` to a 30 s `CreateContainer` (and again
/// with 120 s) after a few seconds of host time.
///
/// A call that only waits (`ReadStdout`, `ReadStderr`, `WaitProcess`,
/// `GetOOMEvent`) with a deadline shares it with the agent as well, so that
/// the agent stops waiting when the caller does: a read the caller gave up on
/// must not go on in the guest and take output nobody receives. The host waits
/// 100 ms longer for the agent's own `DEADLINE_EXCEEDED`;
/// a guest clock that leaps only ends such a wait early, which the caller
/// sees as a timeout and may retry.
#[derive(Clone)]
pub struct AgentClient {
    agent: AgentServiceClient,
    health: HealthClient,
    /// kata-rs's extension service (`kata_rs.GuestService`), on the same connection.
    guest: GuestServiceClient,
    address: AgentAddress,
    request_timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("address", &self.address)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Generates a method with the default request timeout.
macro_rules! unary_call {
    ($(#[$doc:meta])* $name:ident, $method:literal, $req:ty => ()) => {
        $(#[$doc])*
        pub async fn $name(&self, req: &$req) -> Result<()> {
            self.call($method, Some(self.request_timeout), |ctx| self.agent.$name(ctx, req))
                .await
                .map(|_empty| ())
        }
    };
    ($(#[$doc:meta])* $name:ident, $method:literal, $req:ty => $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, req: &$req) -> Result<$resp> {
            self.call($method, Some(self.request_timeout), |ctx| self.agent.$name(ctx, req))
                .await
        }
    };
}

impl AgentClient {
    /// Connects to the agent at `addr`, retrying while the guest boots.
    ///
    /// Connection refused, a missing socket file, a reset, or a hybrid-vsock
    /// backend that closes the stream are retried every
    /// `opts.retry_interval` until `opts.dial_timeout`; then
    /// [`Error::Connect`] names the address, how long it waited and the last
    /// error. A hybrid-vsock backend that answers anything but `OK <n>` fails
    /// at once with [`Error::Handshake`].
    ///
    /// Must be called inside a tokio runtime: the connection's reader runs as
    /// a spawned task.
    pub async fn connect(addr: &AgentAddress, opts: ConnectOptions) -> Result<Self> {
        Self::connect_gated(addr, opts, None).await
    }

    /// [`connect`](Self::connect) with every write of the connection passing `gate`: while
    /// it is held, requests wait in the client (see [`WriteGate`](crate::WriteGate)).
    pub async fn connect_with_gate(
        addr: &AgentAddress,
        opts: ConnectOptions,
        gate: &crate::WriteGate,
    ) -> Result<Self> {
        Self::connect_gated(addr, opts, Some(gate)).await
    }

    async fn connect_gated(
        addr: &AgentAddress,
        opts: ConnectOptions,
        gate: Option<&crate::WriteGate>,
    ) -> Result<Self> {
        let socket = dial(addr, &opts, gate).await?;
        let client = ttrpc::r#async::Client::new(socket);
        Ok(AgentClient {
            agent: AgentServiceClient::new(client.clone()),
            guest: GuestServiceClient::new(client.clone()),
            health: HealthClient::new(client),
            address: addr.clone(),
            request_timeout: opts.request_timeout,
        })
    }

    /// The address this client is connected to.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// The deadline of calls without an explicit timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A clone of this client (same connection) with another request timeout.
    pub fn with_request_timeout(&self, request_timeout: Duration) -> Self {
        AgentClient {
            request_timeout,
            ..self.clone()
        }
    }

    /// Runs one call that acts, with an optional deadline kept by the host (see
    /// Deadlines on [`AgentClient`]), and maps its error.
    async fn call<'a, T, F, Fut>(
        &'a self,
        method: &'static str,
        timeout: Option<Duration>,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>> + 'a,
    {
        self.call_with(method, timeout, false, call).await
    }

    /// Runs one call; `shared`: the call only waits, and its deadline is shared with the
    /// agent (see Deadlines on [`AgentClient`]).
    async fn call_with<'a, T, F, Fut>(
        &'a self,
        method: &'static str,
        timeout: Option<Duration>,
        shared: bool,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>> + 'a,
    {
        tracing::trace!(method, address = %self.address, ?timeout, "agent call");
        // One span per call, exported as `agent.<Method>` (`otel.name`) with `[runtime]
        // enable_tracing`; a child of the caller's span (the sandbox's, the shim's RPC).
        let span = tracing::info_span!("agent.call", otel.name = %format_args!("agent.{method}"), rpc.method = method);
        let result = tracing::Instrument::instrument(
            async {
                match timeout {
                    Some(timeout) if shared => {
                        let fut = call(ttrpc::context::with_duration(timeout));
                        tokio::time::timeout(timeout + LOCAL_DEADLINE_GRACE, fut)
                            .await
                            .map_err(|_| Error::Timeout { method, timeout })
                    }
                    Some(timeout) => {
                        // The host's alone: see Deadlines on [`AgentClient`].
                        let fut = call(ttrpc::context::Context::default());
                        tokio::time::timeout(timeout, fut)
                            .await
                            .map_err(|_| Error::Timeout { method, timeout })
                    }
                    None => Ok(call(ttrpc::context::Context::default()).await),
                }
            },
            span,
        )
        .await?;
        result.map_err(|err| {
            let err = Error::from_ttrpc(method, timeout, err);
            tracing::debug!(method, address = %self.address, error = %err, "agent call failed");
            err
        })
    }

    // --- grpc.Health ---

    /// `Health.Check`: whether the agent serves requests.
    pub async fn check(&self) -> Result<HealthCheckResponse> {
        let req = CheckRequest::new();
        self.call("Check", Some(self.request_timeout), |ctx| {
            self.health.check(ctx, &req)
        })
        .await
    }

    /// `Health.Version`: the agent's version and protocol version.
    pub async fn version(&self) -> Result<VersionCheckResponse> {
        let req = CheckRequest::new();
        self.call("Version", Some(self.request_timeout), |ctx| {
            self.health.version(ctx, &req)
        })
        .await
    }

    // --- kata_rs.GuestService (kata-rs's extension, not in Kata's protocol) ---

    /// `kata_rs.GuestService/OfflineCPUs`: takes guest CPUs offline until `nb_cpus` are
    /// online. Kata's agent does not serve it: see [`Error::is_unserved`].
    pub async fn offline_cpus(&self, req: &OfflineCPUsRequest) -> Result<OfflineCPUsResponse> {
        self.call("OfflineCPUs", Some(self.request_timeout), |ctx| {
            self.guest.offline_cp_us(ctx, req)
        })
        .await
    }

    // --- sandbox and guest ---

    unary_call!(
        /// `CreateSandbox`: sets up the sandbox (hostname, DNS, shared storages)
        /// before the first container.
        create_sandbox, "CreateSandbox", CreateSandboxRequest => ()
    );
    unary_call!(
        /// `DestroySandbox`: tears the sandbox down; the guest may power off after.
        destroy_sandbox, "DestroySandbox", DestroySandboxRequest => ()
    );
    unary_call!(
        /// `OnlineCPUMem`: onlines hot-plugged vCPUs and memory.
        online_cpu_mem, "OnlineCPUMem", OnlineCPUMemRequest => ()
    );
    unary_call!(
        /// `ReseedRandomDev`: adds host entropy to the guest's random pool.
        reseed_random_dev, "ReseedRandomDev", ReseedRandomDevRequest => ()
    );
    unary_call!(
        /// `GetGuestDetails`: the agent's version and capabilities, the memory
        /// block size.
        get_guest_details, "GetGuestDetails", GuestDetailsRequest => GuestDetailsResponse
    );
    unary_call!(
        /// `SetGuestDateTime`: sets the guest clock (after a restore).
        set_guest_date_time, "SetGuestDateTime", SetGuestDateTimeRequest => ()
    );
    unary_call!(
        /// `CopyFile`: writes (a chunk of) a file under the guest's `/run`.
        copy_file, "CopyFile", CopyFileRequest => ()
    );
    unary_call!(
        /// `GetMetrics`: the guest's figures as Prometheus text.
        get_metrics, "GetMetrics", GetMetricsRequest => Metrics
    );
    unary_call!(
        /// `GetVolumeStats`: bytes and inodes of a volume's filesystem in the guest.
        get_volume_stats, "GetVolumeStats", VolumeStatsRequest => VolumeStatsResponse
    );

    /// `GetOOMEvent`: blocks until a container of the sandbox is OOM-killed.
    ///
    /// `timeout: None` waits for ever.
    pub async fn get_oom_event(
        &self,
        req: &GetOOMEventRequest,
        timeout: Option<Duration>,
    ) -> Result<OOMEvent> {
        self.call_with("GetOOMEvent", timeout, true, |ctx| {
            self.agent.get_oom_event(ctx, req)
        })
        .await
    }

    // --- containers ---

    unary_call!(
        /// `CreateContainer`: prepares a container (storages, devices, spec)
        /// without starting its process.
        create_container, "CreateContainer", CreateContainerRequest => ()
    );
    unary_call!(
        /// `StartContainer`: starts the container's first process.
        start_container, "StartContainer", StartContainerRequest => ()
    );

    /// `RemoveContainer`: kills the container's processes and frees it.
    ///
    /// The agent may wait up to `req.timeout` seconds for the processes to
    /// die (0: for ever), so the call's deadline is that wait plus the
    /// request timeout; with `req.timeout == 0` the call has no deadline.
    pub async fn remove_container(&self, req: &RemoveContainerRequest) -> Result<()> {
        let timeout = match req.timeout {
            0 => None,
            secs => Some(Duration::from_secs(u64::from(secs)) + self.request_timeout),
        };
        self.call("RemoveContainer", timeout, |ctx| {
            self.agent.remove_container(ctx, req)
        })
        .await
        .map(|_empty| ())
    }

    unary_call!(
        /// `PauseContainer`: freezes every process of the container.
        pause_container, "PauseContainer", PauseContainerRequest => ()
    );
    unary_call!(
        /// `ResumeContainer`: thaws a paused container.
        resume_container, "ResumeContainer", ResumeContainerRequest => ()
    );
    unary_call!(
        /// `UpdateContainer`: applies new cgroup limits.
        update_container, "UpdateContainer", UpdateContainerRequest => ()
    );
    unary_call!(
        /// `StatsContainer`: cgroup and network statistics of a container.
        stats_container, "StatsContainer", StatsContainerRequest => StatsContainerResponse
    );
    unary_call!(
        /// `ListProcesses`: the container's processes, as a `ps` table or JSON pids.
        list_processes, "ListProcesses", ListProcessesRequest => ListProcessesResponse
    );

    // --- processes ---

    unary_call!(
        /// `ExecProcess`: starts another process in a running container.
        exec_process, "ExecProcess", ExecProcessRequest => ()
    );
    unary_call!(
        /// `SignalProcess`: sends a signal (an empty `exec_id` means the
        /// container's first process; SIGKILL then also kills the rest of its cgroup).
        signal_process, "SignalProcess", SignalProcessRequest => ()
    );

    /// `WaitProcess`: blocks until the process exits, then returns its status.
    ///
    /// `timeout: None` waits for ever (a container may run for days).
    pub async fn wait_process(
        &self,
        req: &WaitProcessRequest,
        timeout: Option<Duration>,
    ) -> Result<WaitProcessResponse> {
        self.call_with("WaitProcess", timeout, true, |ctx| {
            self.agent.wait_process(ctx, req)
        })
        .await
    }

    // --- standard streams ---

    unary_call!(
        /// `WriteStdin`: writes to the process's stdin; returns how much was written.
        write_stdin, "WriteStdin", WriteStreamRequest => WriteStreamResponse
    );
    unary_call!(
        /// `CloseStdin`: closes the process's stdin (the process sees EOF).
        close_stdin, "CloseStdin", CloseStdinRequest => ()
    );
    unary_call!(
        /// `TtyWinResize`: resizes the process's terminal.
        tty_win_resize, "TtyWinResize", TtyWinResizeRequest => ()
    );

    /// `ReadStdout`: the next chunk (at most `req.len` bytes) of the process's
    /// stdout; blocks until there is output.
    ///
    /// `timeout: None` waits for ever. At the end of the stream the agent
    /// answers with an error for which [`Error::is_eof`] is true (see
    /// [`AgentClient::read_output`], which turns that into `None`).
    pub async fn read_stdout(
        &self,
        req: &ReadStreamRequest,
        timeout: Option<Duration>,
    ) -> Result<ReadStreamResponse> {
        self.call_with("ReadStdout", timeout, true, |ctx| {
            self.agent.read_stdout(ctx, req)
        })
        .await
    }

    /// `ReadStderr`: as [`AgentClient::read_stdout`], for stderr.
    pub async fn read_stderr(
        &self,
        req: &ReadStreamRequest,
        timeout: Option<Duration>,
    ) -> Result<ReadStreamResponse> {
        self.call_with("ReadStderr", timeout, true, |ctx| {
            self.agent.read_stderr(ctx, req)
        })
        .await
    }

    /// Reads the next chunk of a process's output, waiting as long as needed.
    ///
    /// Returns `Ok(None)` at the end of the stream: when the agent answers
    /// with its end-of-stream error ([`Error::is_eof`]) or with an empty
    /// chunk. Other errors (such as an unknown exec id, `NOT_FOUND`) are
    /// returned as they are.
    pub async fn read_output(
        &self,
        stream: OutputStream,
        req: &ReadStreamRequest,
    ) -> Result<Option<Vec<u8>>> {
        let result = match stream {
            OutputStream::Stdout => self.read_stdout(req, None).await,
            OutputStream::Stderr => self.read_stderr(req, None).await,
        };
        match result {
            Ok(resp) if resp.data.is_empty() => Ok(None),
            Ok(resp) => Ok(Some(resp.data)),
            Err(err) if err.is_eof() => Ok(None),
            Err(err) => Err(err),
        }
    }

    // --- network ---

    unary_call!(
        /// `UpdateInterface`: configures a guest interface; returns it as applied.
        update_interface, "UpdateInterface", UpdateInterfaceRequest => Interface
    );
    unary_call!(
        /// `UpdateRoutes`: replaces the guest routes; returns them as applied.
        update_routes, "UpdateRoutes", UpdateRoutesRequest => Routes
    );
    unary_call!(
        /// `ListInterfaces`: the guest's interfaces.
        list_interfaces, "ListInterfaces", ListInterfacesRequest => Interfaces
    );
    unary_call!(
        /// `ListRoutes`: the guest's routes.
        list_routes, "ListRoutes", ListRoutesRequest => Routes
    );
    unary_call!(
        /// `AddARPNeighbors`: adds static neighbour entries.
        add_arp_neighbors, "AddARPNeighbors", AddARPNeighborsRequest => ()
    );
}
