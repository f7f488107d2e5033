//! The ttRPC services: `grpc.AgentService` and `grpc.Health` on top of the [`Sandbox`], and
//! kata-rs's extension `kata_rs.GuestService` ([`guest_ext`]).
//!
//! Each method turns its request into the agent's own types ([`convert`]), runs under a span
//! carrying `container_id`/`exec_id`, and maps failures to ttRPC statuses
//! ([`AgentError::code`]). Methods of the protocol this agent does not implement answer
//! `UNIMPLEMENTED` naming the method.

pub mod codes;
pub mod convert;
pub mod guest_ext;
pub mod signals;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kata_agent_client::protocol::{agent, empty::Empty, health, types};
use kata_agent_client::server::{async_trait, AgentService, Health};
use kata_agent_client::ttrpc::{self, r#async::TtrpcContext};
use tracing::Instrument;

use crate::error::{AgentError, Result};
use crate::runtime::process::Stream;
use crate::sandbox::{Sandbox, SandboxConfig};

/// The agent's version, as reported by Version and GetGuestDetails.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol version reported by Version: Kata's agent's `API_VERSION`, as kata-rs speaks
/// its protocol.
pub const PROTOCOL_VERSION: &str = "0.0.1";

/// Default and largest chunk a ReadStdout/ReadStderr returns.
const DEFAULT_READ_LEN: usize = 32 * 1024;
const MAX_READ_LEN: usize = 1024 * 1024;

/// `grpc.AgentService` and `grpc.Health`.
#[derive(Debug, Clone)]
pub struct AgentServer {
    sandbox: Arc<Sandbox>,
}

impl AgentServer {
    /// Services on `sandbox`.
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        AgentServer { sandbox }
    }

    /// The ttRPC service table (AgentService, Health, and kata-rs's GuestService) to register
    /// on a server.
    pub fn services(&self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        let mut services = kata_agent_client::server::create_agent_service(Arc::new(self.clone()));
        services.extend(kata_agent_client::server::create_health(Arc::new(
            self.clone(),
        )));
        // kata-rs's extension (`guest_ext`): not in Kata's protocol.
        services.extend(kata_agent_client::server::create_guest_service(Arc::new(
            self.clone(),
        )));
        services
    }

    /// ReadStdout / ReadStderr: the next chunk of one output stream, as a handled request.
    async fn read_stream(
        &self,
        method: &'static str,
        req: agent::ReadStreamRequest,
        stream: Stream,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let (cid, eid) = (req.container_id.clone(), req.exec_id.clone());
        let sb = Arc::clone(&self.sandbox);
        handle(method, OnCancel::Abort, cid, eid, async move {
            let mut resp = agent::ReadStreamResponse::new();
            resp.data = read(&sb, req, stream).await?;
            Ok(resp)
        })
        .await
    }
}

/// Reads the next chunk of a process's output. The end of the stream is an empty chunk, as
/// Kata's agent answers it (Kata's runtime takes an empty answer for the end of the stream;
/// kata-rs's client takes either that or the `read meet eof` error older agents sent).
async fn read(sandbox: &Sandbox, req: agent::ReadStreamRequest, stream: Stream) -> Result<Vec<u8>> {
    let c = sandbox.container(&req.container_id)?;
    let p = c.process(&req.exec_id)?;
    let len = match req.len as usize {
        0 => DEFAULT_READ_LEN,
        n => n.min(MAX_READ_LEN),
    };
    match p.read(stream, len).await? {
        Some(data) => Ok(data),
        None => {
            c.forget_finished_execs();
            tracing::debug!(?stream, "end of stream");
            Ok(Vec::new())
        }
    }
}

/// What happens to a request's task when the caller stops waiting (ttRPC drops the handler's
/// future when the request's deadline passes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnCancel {
    /// Finish anyway: a CreateContainer that has forked its init completes or cleans up.
    Finish,
    /// Abort: long polls (reads, waits, OOM events) must not consume what nobody will receive.
    Abort,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a handler as its own task, under a span naming the method and ids, logging failures.
/// A panic in the task is answered with `INTERNAL` instead of taking the agent down.
async fn handle<T: Send + 'static>(
    method: &'static str,
    on_cancel: OnCancel,
    container_id: impl Into<String>,
    exec_id: impl Into<String>,
    f: impl Future<Output = Result<T>> + Send + 'static,
) -> ttrpc::Result<T> {
    let (container_id, exec_id) = (container_id.into(), exec_id.into());
    let span = tracing::info_span!("rpc", method, container_id = %container_id, exec_id = %exec_id);
    let task = tokio::spawn(
        async move {
            tracing::debug!("request");
            let result = f.await;
            match &result {
                Ok(_) => {}
                Err(e @ AgentError::Eof { .. }) => tracing::debug!(error = %e, "end of stream"),
                Err(e) => {
                    tracing::warn!(error = %e, code = ?codes::code(method, e), "request failed")
                }
            }
            result
        }
        .instrument(span),
    );
    let _guard = (on_cancel == OnCancel::Abort).then(|| AbortOnDrop(task.abort_handle()));
    match task.await {
        Ok(result) => result.map_err(|e| codes::status(method, &e)),
        Err(e) => {
            tracing::error!(method, error = %e, "request handler panicked");
            Err(AgentError::Internal(format!("{method} failed: {e}")).into())
        }
    }
}

/// A signal number from the wire: 1 up to SIGRTMAX, real-time signals included.
fn parse_signal(n: u32) -> Result<i32> {
    i32::try_from(n)
        .ok()
        .filter(|n| (1..=libc::SIGRTMAX()).contains(n))
        .ok_or_else(|| {
            AgentError::invalid(
                "signal",
                format!("{n} is not a signal number (1-{})", libc::SIGRTMAX()),
            )
        })
}

/// GetGuestDetails' `extra_features`: the features of Kata's agent this one has — `seccomp`
/// where it has a syscall table; never `agent-policy` (SetPolicy is not served).
fn extra_features() -> Vec<String> {
    let mut features = Vec::new();
    if cfg!(target_arch = "x86_64") {
        features.push("seccomp".to_string());
    }
    features
}

/// MemAgentMemcgSet / MemAgentCompactSet: Kata's agent without its memory agent started
/// answers `INTERNAL` "mem-agent is disabled"; this agent has none.
fn mem_agent_disabled(method: &'static str) -> AgentError {
    AgentError::Failed {
        method,
        reason: "mem-agent is disabled (kata-agent runs no memory agent)".into(),
    }
}

fn read_mem_block_size() -> u64 {
    std::fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

#[async_trait]
impl AgentService for AgentServer {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("CreateSandbox", OnCancel::Finish, "", "", async move {
            // Before the storages, as Kata's agent loads them.
            crate::kernel_modules::load(&convert::kernel_modules(&req), sb.owns_guest())?;
            let cfg = SandboxConfig {
                id: req.sandbox_id.clone(),
                hostname: req.hostname.clone(),
                dns: req.dns.clone(),
                storages: req.storages.iter().map(convert::storage).collect(),
            };
            sb.create(&cfg)?;
            // After the storages, as Kata's agent finds them (a hook directory may be on one); what
            // cannot be read is only logged.
            if !req.guest_hook_path.is_empty() {
                let hooks =
                    crate::hooks::GuestHooks::find(std::path::Path::new(&req.guest_hook_path));
                if hooks.is_empty() {
                    tracing::warn!(guest_hook_path = %req.guest_hook_path, "no guest hooks there");
                }
                sb.set_guest_hooks(hooks);
            }
            Ok(Empty::new())
        })
        .await
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("DestroySandbox", OnCancel::Finish, "", "", async move {
            let states: Vec<_> = sb
                .container_ids()
                .iter()
                .filter_map(|id| sb.container(id).ok())
                .map(|c| c.hook_state().clone())
                .collect();
            let destroyed = sb.destroy().await;
            for state in &states {
                sb.run_guest_hooks(crate::hooks::Stage::Poststop, state)
                    .await;
            }
            sb.set_guest_hooks(crate::hooks::GuestHooks::default());
            destroyed?;
            Ok(Empty::new())
        })
        .await
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let exec_id = if req.exec_id.is_empty() {
            req.container_id.clone()
        } else {
            req.exec_id.clone()
        };
        let sb = Arc::clone(&self.sandbox);
        handle(
            "CreateContainer",
            OnCancel::Finish,
            req.container_id.clone(),
            exec_id.clone(),
            async move {
                let mut spec = convert::container_spec(&req)?;
                // VFIO functions the host plugged: waited for, bound as vfio_mode says.
                crate::vfio::prepare(&req.devices, &mut spec).await?;
                let storages: Vec<_> = req.storages.iter().map(convert::storage).collect();
                sb.create_container(
                    &req.container_id,
                    &exec_id,
                    &storages,
                    &spec,
                    req.sandbox_pidns,
                )
                .await?;
                tracing::info!("container created");
                let state = sb.container(&req.container_id)?.hook_state().clone();
                sb.run_guest_hooks(crate::hooks::Stage::Prestart, &state)
                    .await;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "StartContainer",
            OnCancel::Finish,
            req.container_id.clone(),
            "",
            async move {
                let c = sb.container(&req.container_id)?;
                c.start().await?;
                tracing::info!("container started");
                sb.run_guest_hooks(crate::hooks::Stage::Poststart, c.hook_state())
                    .await;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "RemoveContainer",
            OnCancel::Finish,
            req.container_id.clone(),
            "",
            async move {
                let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout.into()));
                let state = sb.container(&req.container_id)?.hook_state().clone();
                sb.remove_container(&req.container_id, timeout).await?;
                tracing::info!("container removed");
                sb.run_guest_hooks(crate::hooks::Stage::Poststop, &state)
                    .await;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "ExecProcess",
            OnCancel::Finish,
            req.container_id.clone(),
            req.exec_id.clone(),
            async move {
                let process = convert::exec_process(&req)?;
                sb.exec(&req.container_id, &req.exec_id, &process).await?;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        // Every process of the container (exec id "" and SIGKILL), as Kata's agent reads it.
        let all = req.exec_id.is_empty() && req.signal == libc::SIGKILL as u32;
        handle(
            if all {
                codes::SIGNAL_ALL
            } else {
                "SignalProcess"
            },
            OnCancel::Finish,
            req.container_id.clone(),
            req.exec_id.clone(),
            async move {
                let c = sb.container(&req.container_id)?;
                let mut signal = parse_signal(req.signal)?;
                let p = c.process(&req.exec_id)?;
                if Arc::ptr_eq(&p, c.init()) {
                    signal = signals::effective_signal(
                        signal,
                        true,
                        signals::proc_status(p.pid).as_deref(),
                    );
                }
                c.signal(&req.exec_id, signal)?;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "WaitProcess",
            OnCancel::Abort,
            req.container_id.clone(),
            req.exec_id.clone(),
            async move {
                let c = sb.container(&req.container_id)?;
                let p = c.process(&req.exec_id)?;
                let exit = p.wait().await;
                c.forget_finished_execs();
                tracing::info!(status = exit.status, signal = ?exit.signal, "process exited");
                let mut resp = agent::WaitProcessResponse::new();
                resp.status = exit.status;
                // kata-rs extension: always sent (0: it exited), so the host need not guess
                // whether 128 + n was a kill.
                resp.signal = Some(exit.signal.unwrap_or(0));
                Ok(resp)
            },
        )
        .await
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListProcessesRequest,
    ) -> ttrpc::Result<agent::ListProcessesResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "ListProcesses",
            OnCancel::Finish,
            req.container_id.clone(),
            "",
            async move {
                let pids = sb.container(&req.container_id)?.pids();
                let mut resp = agent::ListProcessesResponse::new();
                resp.process_list = convert::process_list(&pids, &req.format)?;
                Ok(resp)
            },
        )
        .await
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "UpdateContainer",
            OnCancel::Finish,
            req.container_id.clone(),
            "",
            async move {
                let c = sb.container(&req.container_id)?;
                if let (Some(res), Some(cg)) = (req.resources.as_ref(), c.cgroup()) {
                    let res = kata_agent_client::spec::resources_from_grpc(res)
                        .map_err(|e| AgentError::invalid("resources", e.to_string()))?;
                    cg.apply(&res)?;
                }
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> ttrpc::Result<agent::StatsContainerResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "StatsContainer",
            OnCancel::Finish,
            req.container_id.clone(),
            "",
            async move {
                let c = sb.container(&req.container_id)?;
                Ok(convert::stats(&c.stats()))
            },
        )
        .await
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "PauseContainer",
            OnCancel::Finish,
            req.container_id.clone(),
            "",
            async move {
                sb.container(&req.container_id)?.freeze(true)?;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "ResumeContainer",
            OnCancel::Finish,
            req.container_id.clone(),
            "",
            async move {
                sb.container(&req.container_id)?.freeze(false)?;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> ttrpc::Result<agent::WriteStreamResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "WriteStdin",
            OnCancel::Abort,
            req.container_id.clone(),
            req.exec_id.clone(),
            async move {
                let p = sb.process(&req.container_id, &req.exec_id)?;
                // No data is the end of stdin, as in Kata's agent: Kata's runtime closes a
                // process's stdin this way and never calls CloseStdin.
                let n = if req.data.is_empty() {
                    p.close_stdin().await?;
                    0
                } else {
                    p.write_stdin(&req.data).await?
                };
                let mut resp = agent::WriteStreamResponse::new();
                resp.len = u32::try_from(n).unwrap_or(u32::MAX);
                Ok(resp)
            },
        )
        .await
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read_stream("ReadStdout", req, Stream::Stdout).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read_stream("ReadStderr", req, Stream::Stderr).await
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "CloseStdin",
            OnCancel::Finish,
            req.container_id.clone(),
            req.exec_id.clone(),
            async move {
                sb.process(&req.container_id, &req.exec_id)?
                    .close_stdin()
                    .await?;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle(
            "TtyWinResize",
            OnCancel::Finish,
            req.container_id.clone(),
            req.exec_id.clone(),
            async move {
                let rows = u16::try_from(req.row)
                    .map_err(|_| AgentError::invalid("row", format!("{} is too large", req.row)))?;
                let cols = u16::try_from(req.column).map_err(|_| {
                    AgentError::invalid("column", format!("{} is too large", req.column))
                })?;
                sb.process(&req.container_id, &req.exec_id)?
                    .resize(rows, cols)?;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle("GetGuestDetails", OnCancel::Finish, "", "", async move {
            let mut details = agent::AgentDetails::new();
            details.version = AGENT_VERSION.to_string();
            details.init_daemon = sb.owns_guest();
            details.storage_handlers = crate::storage::DRIVERS
                .iter()
                .map(|s| s.to_string())
                .collect();
            details.supports_seccomp = crate::runtime::seccomp::supported();
            // Kata's agent lists its build features here (`agent-policy`, `seccomp`).
            details.extra_features = extra_features();
            let mut resp = agent::GuestDetailsResponse::new();
            if req.mem_block_size {
                resp.mem_block_size_bytes = read_mem_block_size();
            }
            if req.mem_hotplug_probe {
                resp.support_mem_hotplug_probe =
                    std::path::Path::new("/sys/devices/system/memory/probe").exists();
            }
            resp.agent_details = Some(details).into();
            Ok(resp)
        })
        .await
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<types::Interface> {
        let sb = Arc::clone(&self.sandbox);
        handle("UpdateInterface", OnCancel::Finish, "", "", async move {
            let want = convert::interface(&req)?;
            let got = sb.network().update_interface(&want).await?;
            Ok(convert::interface_to_grpc(&got))
        })
        .await
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        let sb = Arc::clone(&self.sandbox);
        handle("UpdateRoutes", OnCancel::Finish, "", "", async move {
            let routes = convert::routes(&req)?;
            let now = sb.network().update_routes(&routes).await?;
            Ok(convert::routes_to_grpc(&now))
        })
        .await
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListInterfacesRequest,
    ) -> ttrpc::Result<agent::Interfaces> {
        let sb = Arc::clone(&self.sandbox);
        handle("ListInterfaces", OnCancel::Abort, "", "", async move {
            let list = sb.network().list_interfaces().await?;
            Ok(agent::Interfaces {
                Interfaces: list.iter().map(convert::interface_to_grpc).collect(),
                ..Default::default()
            })
        })
        .await
    }

    async fn list_routes(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        let sb = Arc::clone(&self.sandbox);
        handle("ListRoutes", OnCancel::Abort, "", "", async move {
            Ok(convert::routes_to_grpc(&sb.network().list_routes().await?))
        })
        .await
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("AddARPNeighbors", OnCancel::Finish, "", "", async move {
            let neighbors = convert::neighbors(&req)?;
            sb.network().add_arp_neighbors(&neighbors).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("OnlineCPUMem", OnCancel::Finish, "", "", async move {
            if sb.owns_guest() {
                let what = crate::online::OnlineRequest {
                    wait: req.wait,
                    nb_cpus: req.nb_cpus,
                    cpu_only: req.cpu_only,
                };
                crate::online::online_cpu_mem(sb, what).await?;
            } else {
                tracing::debug!("not the guest's init: CPUs and memory left alone");
            }
            Ok(Empty::new())
        })
        .await
    }

    async fn reseed_random_dev(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> ttrpc::Result<Empty> {
        let owns_guest = self.sandbox.owns_guest();
        handle("ReseedRandomDev", OnCancel::Finish, "", "", async move {
            crate::random::reseed(&req.data, owns_guest)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("SetGuestDateTime", OnCancel::Finish, "", "", async move {
            if sb.owns_guest() {
                crate::guest::set_time(req.Sec, req.Usec)?;
            } else {
                tracing::debug!("not the guest's init: clock left alone");
            }
            Ok(Empty::new())
        })
        .await
    }

    async fn copy_file(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CopyFileRequest,
    ) -> ttrpc::Result<Empty> {
        handle("CopyFile", OnCancel::Finish, "", "", async move {
            let req = convert::copy_request(req);
            tokio::task::spawn_blocking(move || {
                crate::copy_file::copy_file(
                    std::path::Path::new(crate::copy_file::SHARED_CONTAINERS_DIR),
                    &req,
                )
            })
            .await
            .map_err(|e| AgentError::Internal(format!("CopyFile: {e}")))??;
            Ok(Empty::new())
        })
        .await
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
        let sb = Arc::clone(&self.sandbox);
        handle("GetOOMEvent", OnCancel::Abort, "", "", async move {
            let mut event = agent::OOMEvent::new();
            event.container_id = sb.next_oom_event().await;
            tracing::info!(container_id = %event.container_id, "OOM kill");
            Ok(event)
        })
        .await
    }

    async fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        req: agent::VolumeStatsRequest,
    ) -> ttrpc::Result<agent::VolumeStatsResponse> {
        handle("GetVolumeStats", OnCancel::Abort, "", "", async move {
            let path = std::path::PathBuf::from(&req.volume_guest_path);
            let st = tokio::task::spawn_blocking(move || crate::volume_stats::volume_stats(&path))
                .await
                .map_err(|e| AgentError::Internal(format!("GetVolumeStats: {e}")))??;
            Ok(convert::volume_stats(&st))
        })
        .await
    }

    async fn update_ephemeral_mounts(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateEphemeralMountsRequest,
    ) -> ttrpc::Result<Empty> {
        handle(
            "UpdateEphemeralMounts",
            OnCancel::Finish,
            "",
            "",
            async move {
                let storages: Vec<_> = req.storages.iter().map(convert::storage).collect();
                crate::storage::update::update_ephemeral_mounts(&storages)?;
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> ttrpc::Result<Empty> {
        handle(
            "RemoveStaleVirtiofsShareMounts",
            OnCancel::Finish,
            "",
            "",
            async move {
                let info = std::fs::read_to_string("/proc/self/mountinfo")
                    .map_err(|e| AgentError::io("read /proc/self/mountinfo", e))?;
                let n = tokio::task::spawn_blocking(move || {
                    crate::storage::update::touch_share_mounts(&info)
                })
                .await
                .map_err(|e| {
                    AgentError::Internal(format!("RemoveStaleVirtiofsShareMounts: {e}"))
                })?;
                tracing::info!(mounts = n, "share mounts looked up");
                Ok(Empty::new())
            },
        )
        .await
    }

    async fn get_diagnostic_data(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetDiagnosticDataRequest,
    ) -> ttrpc::Result<agent::GetDiagnosticDataResponse> {
        let sb = Arc::clone(&self.sandbox);
        let cid = req.container_id.clone();
        handle("GetDiagnosticData", OnCancel::Abort, cid, "", async move {
            // Kata's agent: INTERNAL "Invalid container id: <id>".
            let c = sb
                .container(&req.container_id)
                .map_err(|e| AgentError::Failed {
                    method: "GetDiagnosticData",
                    reason: e.to_string(),
                })?;
            let data = tokio::task::spawn_blocking(move || {
                crate::diagnostic::read(&req.log_type, &c.id, c.termination_log())
            })
            .await
            .map_err(|e| AgentError::Internal(format!("GetDiagnosticData: {e}")))??;
            let mut resp = agent::GetDiagnosticDataResponse::new();
            resp.data = data;
            Ok(resp)
        })
        .await
    }

    async fn get_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetIPTablesRequest,
    ) -> ttrpc::Result<agent::GetIPTablesResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle("GetIPTables", OnCancel::Finish, "", "", async move {
            let data = crate::iptables::save(sb.runtime().reaper(), req.is_ipv6).await?;
            let mut resp = agent::GetIPTablesResponse::new();
            resp.data = data;
            Ok(resp)
        })
        .await
    }

    async fn set_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetIPTablesRequest,
    ) -> ttrpc::Result<agent::SetIPTablesResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle("SetIPTables", OnCancel::Finish, "", "", async move {
            let data =
                crate::iptables::restore(sb.runtime().reaper(), req.is_ipv6, &req.data).await?;
            let mut resp = agent::SetIPTablesResponse::new();
            resp.data = data;
            Ok(resp)
        })
        .await
    }

    async fn mem_agent_memcg_set(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::MemAgentMemcgConfig,
    ) -> ttrpc::Result<Empty> {
        handle("MemAgentMemcgSet", OnCancel::Finish, "", "", async move {
            Err::<Empty, _>(mem_agent_disabled("MemAgentMemcgSet"))
        })
        .await
    }

    async fn mem_agent_compact_set(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::MemAgentCompactConfig,
    ) -> ttrpc::Result<Empty> {
        handle("MemAgentCompactSet", OnCancel::Finish, "", "", async move {
            Err::<Empty, _>(mem_agent_disabled("MemAgentCompactSet"))
        })
        .await
    }

    async fn mem_hotplug_by_probe(
        &self,
        _ctx: &TtrpcContext,
        req: agent::MemHotplugByProbeRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("MemHotplugByProbe", OnCancel::Finish, "", "", async move {
            crate::mem_probe::hotplug_by_probe(&req.memHotplugProbeAddr, sb.owns_guest())?;
            Ok(Empty::new())
        })
        .await
    }

    async fn add_swap(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddSwapRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("AddSwap", OnCancel::Finish, "", "", async move {
            crate::swap::add_swap(&req.PCIPath, sb.owns_guest()).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn add_swap_path(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddSwapPathRequest,
    ) -> ttrpc::Result<Empty> {
        let sb = Arc::clone(&self.sandbox);
        handle("AddSwapPath", OnCancel::Finish, "", "", async move {
            let owns = sb.owns_guest();
            tokio::task::spawn_blocking(move || crate::swap::add_swap_path(&req.path, owns))
                .await
                .map_err(|e| AgentError::Internal(format!("AddSwapPath: {e}")))??;
            Ok(Empty::new())
        })
        .await
    }

    async fn set_policy(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::SetPolicyRequest,
    ) -> ttrpc::Result<Empty> {
        // Kata's agent built without `agent-policy` (its default) answers with the generated
        // default: NOT_FOUND "/grpc.AgentService/SetPolicy is not supported".
        tracing::warn!(
            method = "SetPolicy",
            "refused: kata-agent enforces no agent policy"
        );
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            "/grpc.AgentService/SetPolicy is not supported: kata-agent enforces no agent policy \
             (as Kata's agent built without agent-policy); configure the runtime without one",
        )))
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetMetricsRequest,
    ) -> ttrpc::Result<agent::Metrics> {
        handle("GetMetrics", OnCancel::Abort, "", "", async move {
            let text = tokio::task::spawn_blocking(crate::metrics::collect)
                .await
                .map_err(|e| AgentError::Internal(format!("collecting metrics: {e}")))?;
            let mut resp = agent::Metrics::new();
            resp.metrics = text;
            Ok(resp)
        })
        .await
    }
}

#[async_trait]
impl Health for AgentServer {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut resp = health::HealthCheckResponse::new();
        resp.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(resp)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        let mut resp = health::VersionCheckResponse::new();
        resp.grpc_version = PROTOCOL_VERSION.to_string();
        resp.agent_version = AGENT_VERSION.to_string();
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_validated() {
        assert_eq!(parse_signal(9).unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal(15).unwrap(), libc::SIGTERM);
        let rt = libc::SIGRTMIN() + 3;
        assert_eq!(
            parse_signal(rt as u32).unwrap(),
            rt,
            "real-time signals are accepted"
        );
        let err = parse_signal(999).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().starts_with("signal "));
        assert!(parse_signal(0).is_err());
    }
}
