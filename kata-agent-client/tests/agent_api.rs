//! The typed façade ([`Agent`]) over a real ttRPC connection, against an in-test agent.
//!
//! `ScriptedAgent` implements the protocol's server traits (feature `server`), records what
//! each call received and answers from a script. What is under test is the façade: that
//! Rust values go into the right protocol fields, answers come back as the right Rust
//! values, and the waiting calls and the OOM stream behave as documented. Agent behaviour
//! itself is tested against the real agent in kata-agent's `host_agent` tests.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kata_agent_client::protocol::agent as pb;
use kata_agent_client::protocol::empty::Empty;
use kata_agent_client::protocol::health;
use kata_agent_client::protocol::health::health_check_response::ServingStatus;
use kata_agent_client::server::{create_agent_service, create_health, AgentService, Health};
use kata_agent_client::ttrpc::{self, r#async::TtrpcContext};
use kata_agent_client::{
    spec, Agent, AgentAddress, Code, ConnectOptions, Device, Error, ExitStatus, FsGroup,
    FsGroupChangePolicy, KernelModule, OnlineCpuMem, OutputStream, SandboxSetup, Signal, Storage,
};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, ProcessBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use protobuf::MessageField;

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// One answer of the scripted `GetOOMEvent`.
enum OomStep {
    Event(&'static str),
    Fail(Code),
}

/// Output chunks still to be read, per (exec id, `"stdout"`/`"stderr"`); then the end of the
/// stream.
type Output = HashMap<(String, &'static str), VecDeque<Vec<u8>>>;

/// Records every request and answers from its script.
#[derive(Default)]
struct ScriptedAgent {
    not_serving: bool,
    requests: Mutex<Vec<String>>,
    create_sandbox: Mutex<Option<pb::CreateSandboxRequest>>,
    create_container: Mutex<Option<pb::CreateContainerRequest>>,
    remove: Mutex<Option<pb::RemoveContainerRequest>>,
    update: Mutex<Option<pb::UpdateContainerRequest>>,
    exec: Mutex<Option<pb::ExecProcessRequest>>,
    signals: Mutex<Vec<(String, String, u32)>>,
    online: Mutex<Option<pb::OnlineCPUMemRequest>>,
    guest_details: Mutex<Option<pb::GuestDetailsRequest>>,
    stdin: Mutex<Vec<u8>>,
    resize: Mutex<Option<(u32, u32)>>,
    /// Output still to be read.
    output: Mutex<Output>,
    /// `ListProcesses` answer.
    process_list: Mutex<Vec<u8>>,
    /// `GetOOMEvent` answers; when empty, the call blocks.
    oom: Mutex<VecDeque<OomStep>>,
    oom_calls: Mutex<usize>,
}

impl ScriptedAgent {
    fn record(&self, what: impl Into<String>) {
        self.requests.lock().unwrap().push(what.into());
    }

    fn recorded(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn read(
        &self,
        req: &pb::ReadStreamRequest,
        stream: &'static str,
    ) -> ttrpc::Result<pb::ReadStreamResponse> {
        let mut output = self.output.lock().unwrap();
        let chunks = output
            .get_mut(&(req.exec_id.clone(), stream))
            .ok_or_else(|| status(Code::NOT_FOUND, format!("no exec {}", req.exec_id)))?;
        match chunks.pop_front() {
            Some(chunk) => {
                let n = chunk.len().min(req.len as usize);
                if n < chunk.len() {
                    chunks.push_front(chunk[n..].to_vec());
                }
                let mut resp = pb::ReadStreamResponse::new();
                resp.data = chunk[..n].to_vec();
                Ok(resp)
            }
            // The end of a stream, the way Kata's agent (and kata-rs's) reports it.
            None => Err(status(Code::INTERNAL, "read meet eof")),
        }
    }
}

#[async_trait::async_trait]
impl AgentService for ScriptedAgent {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: pb::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        *self.create_sandbox.lock().unwrap() = Some(req);
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: pb::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("DestroySandbox");
        Ok(Empty::new())
    }

    async fn online_cpu_mem(
        &self,
        _: &TtrpcContext,
        req: pb::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        *self.online.lock().unwrap() = Some(req);
        Ok(Empty::new())
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        req: pb::GuestDetailsRequest,
    ) -> ttrpc::Result<pb::GuestDetailsResponse> {
        *self.guest_details.lock().unwrap() = Some(req);
        let mut details = pb::AgentDetails::new();
        details.version = "scripted-1".into();
        details.init_daemon = true;
        details.storage_handlers = vec!["9p".into(), "virtio-fs".into()];
        let mut resp = pb::GuestDetailsResponse::new();
        resp.mem_block_size_bytes = 128 << 20;
        resp.support_mem_hotplug_probe = true;
        resp.agent_details = MessageField::some(details);
        Ok(resp)
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: pb::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        *self.create_container.lock().unwrap() = Some(req);
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: pb::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.record(format!("StartContainer {}", req.container_id));
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: pb::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        if req.container_id == "ghost" {
            return Err(status(Code::NOT_FOUND, "container ghost not found"));
        }
        *self.remove.lock().unwrap() = Some(req);
        Ok(Empty::new())
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: pb::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.record(format!("PauseContainer {}", req.container_id));
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: pb::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.record(format!("ResumeContainer {}", req.container_id));
        Ok(Empty::new())
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        *self.update.lock().unwrap() = Some(req);
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: pb::StatsContainerRequest,
    ) -> ttrpc::Result<pb::StatsContainerResponse> {
        self.record(format!("StatsContainer {}", req.container_id));
        let mut cgroup = pb::CgroupStats::new();
        let mut cpu = pb::CpuStats::new();
        let mut usage = pb::CpuUsage::new();
        usage.total_usage = 5_000;
        usage.percpu_usage = vec![3_000, 2_000];
        cpu.cpu_usage = MessageField::some(usage);
        let mut throttling = pb::ThrottlingData::new();
        throttling.throttled_periods = 4;
        cpu.throttling_data = MessageField::some(throttling);
        cgroup.cpu_stats = MessageField::some(cpu);
        let mut memory = pb::MemoryStats::new();
        let mut mem_usage = pb::MemoryData::new();
        mem_usage.usage = 4096;
        mem_usage.limit = 8192;
        memory.usage = MessageField::some(mem_usage);
        memory.cache = 1024;
        cgroup.memory_stats = MessageField::some(memory);
        let mut pids = pb::PidsStats::new();
        pids.current = 3;
        pids.limit = 10;
        cgroup.pids_stats = MessageField::some(pids);
        let mut huge = pb::HugetlbStats::new();
        huge.usage = 2 << 20;
        cgroup.hugetlb_stats.insert("2MB".into(), huge);
        let mut blkio = pb::BlkioStats::new();
        let mut entry = pb::BlkioStatsEntry::new();
        entry.major = 254;
        entry.op = "Read".into();
        entry.value = 512;
        blkio.io_service_bytes_recursive.push(entry);
        cgroup.blkio_stats = MessageField::some(blkio);
        let mut net = pb::NetworkStats::new();
        net.name = "eth0".into();
        net.rx_bytes = 100;
        net.tx_bytes = 200;
        let mut resp = pb::StatsContainerResponse::new();
        resp.cgroup_stats = MessageField::some(cgroup);
        resp.network_stats.push(net);
        Ok(resp)
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: pb::ListProcessesRequest,
    ) -> ttrpc::Result<pb::ListProcessesResponse> {
        self.record(format!("ListProcesses {} {}", req.container_id, req.format));
        let mut resp = pb::ListProcessesResponse::new();
        resp.process_list = self.process_list.lock().unwrap().clone();
        Ok(resp)
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: pb::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        *self.exec.lock().unwrap() = Some(req);
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: pb::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.signals
            .lock()
            .unwrap()
            .push((req.container_id, req.exec_id, req.signal));
        Ok(Empty::new())
    }

    /// The answer depends on the exec id: see `wait_process_builds_exit_status_from_either_encoding`.
    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: pb::WaitProcessRequest,
    ) -> ttrpc::Result<pb::WaitProcessResponse> {
        let mut resp = pb::WaitProcessResponse::new();
        let (status, signal) = match req.exec_id.as_str() {
            // kata-rs agent: `exit 137`.
            "exit-137" => (137, Some(0)),
            // kata-rs agent: SIGKILL.
            "sigkill" => (137, Some(9)),
            // kata-rs agent: a real-time signal.
            "rt" => (128 + 40, Some(40)),
            // Kata's agent: no signal field.
            "kata-137" => (137, None),
            "kata-3" => (3, None),
            // kata-rs agent, nonsense signal.
            "bogus" => (200, Some(72)),
            "slow" => {
                tokio::time::sleep(Duration::from_millis(400)).await;
                (0, Some(0))
            }
            other => return Err(status(Code::NOT_FOUND, format!("no exec {other}"))),
        };
        resp.status = status;
        resp.signal = signal;
        Ok(resp)
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> ttrpc::Result<pb::ReadStreamResponse> {
        if req.exec_id == "silent" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        self.read(&req, "stdout")
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> ttrpc::Result<pb::ReadStreamResponse> {
        self.read(&req, "stderr")
    }

    /// Takes at most 4 bytes per call, so short writes show.
    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: pb::WriteStreamRequest,
    ) -> ttrpc::Result<pb::WriteStreamResponse> {
        let n = req.data.len().min(4);
        self.stdin.lock().unwrap().extend_from_slice(&req.data[..n]);
        let mut resp = pb::WriteStreamResponse::new();
        resp.len = n as u32;
        Ok(resp)
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: pb::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        self.record(format!("CloseStdin {} {}", req.container_id, req.exec_id));
        Ok(Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: pb::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        *self.resize.lock().unwrap() = Some((req.row, req.column));
        Ok(Empty::new())
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: pb::GetOOMEventRequest,
    ) -> ttrpc::Result<pb::OOMEvent> {
        *self.oom_calls.lock().unwrap() += 1;
        let step = self.oom.lock().unwrap().pop_front();
        match step {
            Some(OomStep::Event(id)) => {
                let mut event = pb::OOMEvent::new();
                event.container_id = id.into();
                Ok(event)
            }
            Some(OomStep::Fail(code)) => Err(status(code, "scripted failure")),
            None => std::future::pending().await,
        }
    }
}

#[async_trait::async_trait]
impl Health for ScriptedAgent {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut resp = health::HealthCheckResponse::new();
        resp.status = if self.not_serving {
            ServingStatus::NOT_SERVING
        } else {
            ServingStatus::SERVING
        }
        .into();
        Ok(resp)
    }

    async fn version(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        let mut resp = health::VersionCheckResponse::new();
        resp.agent_version = "scripted-1".into();
        resp.grpc_version = "0.0.1".into();
        Ok(resp)
    }
}

/// A scripted agent served on a unix socket in a temporary directory.
struct Harness {
    _dir: tempfile::TempDir,
    _server: ttrpc::r#async::Server,
    socket: PathBuf,
    mock: Arc<ScriptedAgent>,
}

impl Harness {
    async fn start(mock: ScriptedAgent) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mock = Arc::new(mock);
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", socket.display()))
            .expect("bind the scripted agent's socket")
            .register_service(create_agent_service(mock.clone()))
            .register_service(create_health(mock.clone()));
        server.start().await.expect("start the scripted agent");
        Harness {
            _dir: dir,
            _server: server,
            socket,
            mock,
        }
    }

    async fn agent(&self) -> Agent {
        Agent::connect(&AgentAddress::Unix(self.socket.clone()), options())
            .await
            .unwrap()
    }
}

fn options() -> ConnectOptions {
    ConnectOptions {
        dial_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(300),
        retry_interval: Duration::from_millis(20),
    }
}

fn spec(args: &[&str]) -> Spec {
    SpecBuilder::default()
        .hostname("box")
        .process(
            ProcessBuilder::default()
                .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
                .cwd("/")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn health_version_and_guest_details() {
    let h = Harness::start(ScriptedAgent::default()).await;
    let agent = h.agent().await;
    agent.check().await.unwrap();
    let version = agent.version().await.unwrap();
    assert_eq!(
        (&version.agent_version[..], &version.protocol_version[..]),
        ("scripted-1", "0.0.1")
    );
    let details = agent.guest_details().await.unwrap();
    assert_eq!(details.mem_block_size_bytes, 128 << 20);
    assert!(details.supports_mem_hotplug_probe);
    assert_eq!(details.agent.version, "scripted-1");
    assert!(details.agent.init_daemon);
    assert_eq!(details.agent.storage_handlers, ["9p", "virtio-fs"]);
    let asked = h.mock.guest_details.lock().unwrap().clone().unwrap();
    assert!(asked.mem_block_size && asked.mem_hotplug_probe);

    let sick = Harness::start(ScriptedAgent {
        not_serving: true,
        ..Default::default()
    })
    .await;
    let err = sick.agent().await.check().await.unwrap_err();
    assert!(
        matches!(&err, Error::NotServing { status } if status == "NOT_SERVING"),
        "{err:?}"
    );
}

#[tokio::test]
async fn sandbox_setup_destroy_and_online() {
    let h = Harness::start(ScriptedAgent::default()).await;
    let agent = h.agent().await;
    let setup = SandboxSetup::new("sb-1")
        .hostname("sb-1-host")
        .dns(["nameserver 10.0.0.1"])
        .storage(
            Storage::new("9p", "kataShared", "/run/kata-containers/shared/containers")
                .fstype("9p")
                .options(["trans=virtio", "version=9p2000.L"]),
        )
        .sandbox_pidns(true)
        .guest_hook_path("/usr/share/oci/hooks")
        .kernel_modules([KernelModule::new("vfio", ["enable_unsafe_noiommu_mode=1"])]);
    agent.create_sandbox(&setup).await.unwrap();
    let req = h.mock.create_sandbox.lock().unwrap().clone().unwrap();
    assert_eq!(
        (&req.sandbox_id[..], &req.hostname[..]),
        ("sb-1", "sb-1-host")
    );
    assert_eq!(req.dns, ["nameserver 10.0.0.1"]);
    assert!(req.sandbox_pidns);
    assert_eq!(req.guest_hook_path, "/usr/share/oci/hooks");
    assert_eq!(req.storages.len(), 1);
    let s = &req.storages[0];
    assert_eq!(
        (
            &s.driver[..],
            &s.source[..],
            &s.fstype[..],
            &s.mount_point[..]
        ),
        (
            "9p",
            "kataShared",
            "9p",
            "/run/kata-containers/shared/containers"
        )
    );
    assert_eq!(s.options, ["trans=virtio", "version=9p2000.L"]);
    assert_eq!(req.kernel_modules[0].name, "vfio");
    assert_eq!(
        req.kernel_modules[0].parameters,
        ["enable_unsafe_noiommu_mode=1"]
    );

    agent.online_cpu_mem(OnlineCpuMem::cpus(4)).await.unwrap();
    let online = h.mock.online.lock().unwrap().clone().unwrap();
    assert_eq!(
        (online.nb_cpus, online.cpu_only, online.wait),
        (4, true, false)
    );

    agent.destroy_sandbox().await.unwrap();
    assert_eq!(h.mock.recorded(), ["DestroySandbox"]);
}

#[tokio::test]
async fn container_lifecycle_calls_carry_typed_values() {
    let h = Harness::start(ScriptedAgent::default()).await;
    let agent = h.agent().await;

    // CreateContainer: spec and storages in their protocol fields; exec id = container id.
    let oci = spec(&["sleep", "60"]);
    let storages = [Storage::new("virtio-fs", "kataShared", "/run/c1/rootfs")
        .fstype("virtiofs")
        .fs_group(FsGroup {
            group_id: 1000,
            change_policy: FsGroupChangePolicy::OnRootMismatch,
        })];
    agent.create_container("c1", &oci, &storages).await.unwrap();
    let req = h.mock.create_container.lock().unwrap().take().unwrap();
    assert_eq!((&req.container_id[..], &req.exec_id[..]), ("c1", "c1"));
    // The spec arrives as `spec::to_grpc` encodes it (see the round trips in `spec`).
    assert_eq!(req.OCI.as_ref().unwrap(), &spec::to_grpc(&oci).unwrap());
    let back = spec::from_grpc(req.OCI.as_ref().unwrap()).unwrap();
    assert_eq!(
        (back.process(), back.hostname()),
        (oci.process(), oci.hostname())
    );
    assert_eq!(req.storages[0].driver, "virtio-fs");
    assert_eq!(req.storages[0].fs_group.group_id, 1000);
    assert!(req.devices.is_empty() && !req.sandbox_pidns);

    let devices = [Device::new("vdb", "blk", "/dev/vdb", "/dev/data")];
    agent
        .create_container_with(
            &kata_agent_client::ContainerSetup::new("c2", &oci)
                .devices(&devices)
                .sandbox_pidns(true),
        )
        .await
        .unwrap();
    let req = h.mock.create_container.lock().unwrap().take().unwrap();
    assert_eq!(req.container_id, "c2");
    assert_eq!(
        (
            &req.devices[0].type_[..],
            &req.devices[0].vm_path[..],
            &req.devices[0].container_path[..]
        ),
        ("blk", "/dev/vdb", "/dev/data")
    );
    assert!(req.sandbox_pidns);

    agent.start_container("c1").await.unwrap();
    agent.pause_container("c1").await.unwrap();
    agent.resume_container("c1").await.unwrap();
    assert_eq!(
        h.mock.recorded(),
        [
            "StartContainer c1",
            "PauseContainer c1",
            "ResumeContainer c1"
        ]
    );

    // UpdateContainer: the OCI resources arrive intact.
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    agent.update_container("c1", &resources).await.unwrap();
    let req = h.mock.update.lock().unwrap().take().unwrap();
    assert_eq!(req.container_id, "c1");
    assert_eq!(
        spec::resources_from_grpc(req.resources.as_ref().unwrap()).unwrap(),
        resources
    );

    // RemoveContainer: the wait in whole seconds, rounded up; None is "for ever" (0).
    agent
        .remove_container("c1", Some(Duration::from_millis(2500)))
        .await
        .unwrap();
    assert_eq!(h.mock.remove.lock().unwrap().take().unwrap().timeout, 3);
    agent.remove_container("c1", None).await.unwrap();
    assert_eq!(h.mock.remove.lock().unwrap().take().unwrap().timeout, 0);
    let err = agent
        .remove_container("ghost", Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn stats_and_pids() {
    let h = Harness::start(ScriptedAgent::default()).await;
    let agent = h.agent().await;
    let stats = agent.stats("c1").await.unwrap();
    let cpu = stats.cgroup.cpu.as_ref().unwrap();
    assert_eq!(cpu.usage.total_ns, 5_000);
    assert_eq!(cpu.usage.per_cpu_ns, [3_000, 2_000]);
    assert_eq!(cpu.throttling.throttled_periods, 4);
    let memory = stats.cgroup.memory.as_ref().unwrap();
    assert_eq!(
        (memory.usage.usage, memory.usage.limit, memory.cache),
        (4096, 8192, 1024)
    );
    let pids = stats.cgroup.pids.as_ref().unwrap();
    assert_eq!((pids.current, pids.limit), (3, 10));
    assert_eq!(stats.cgroup.hugetlb["2MB"].usage, 2 << 20);
    let read = &stats
        .cgroup
        .blkio
        .as_ref()
        .unwrap()
        .io_service_bytes_recursive[0];
    assert_eq!((read.major, &read.op[..], read.value), (254, "Read", 512));
    assert_eq!(stats.network.len(), 1);
    assert_eq!(
        (
            &stats.network[0].name[..],
            stats.network[0].rx_bytes,
            stats.network[0].tx_bytes
        ),
        ("eth0", 100, 200)
    );

    *h.mock.process_list.lock().unwrap() = b"[1, 42, 43]".to_vec();
    assert_eq!(agent.container_pids("c1").await.unwrap(), [1, 42, 43]);
    *h.mock.process_list.lock().unwrap() = b"PID CMD\n1 sh\n".to_vec();
    let err = agent.container_pids("c1").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadAnswer {
                method: "ListProcesses",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("c1") && err.to_string().contains("PID CMD"),
        "{err}"
    );
    assert_eq!(
        h.mock.recorded(),
        [
            "StatsContainer c1",
            "ListProcesses c1 json",
            "ListProcesses c1 json"
        ]
    );
}

#[tokio::test]
async fn exec_and_signal_processes() {
    let h = Harness::start(ScriptedAgent::default()).await;
    let agent = h.agent().await;
    let process = ProcessBuilder::default()
        .args(vec!["sh".to_string(), "-c".to_string(), "id".to_string()])
        .env(vec!["A=1".to_string()])
        .cwd("/tmp")
        .terminal(true)
        .user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(100u32)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    agent.exec_process("c1", "e1", &process).await.unwrap();
    let req = h.mock.exec.lock().unwrap().take().unwrap();
    assert_eq!((&req.container_id[..], &req.exec_id[..]), ("c1", "e1"));
    let wire = req.process.as_ref().unwrap();
    assert_eq!(wire.Args, ["sh", "-c", "id"]);
    assert_eq!(wire.Env, ["A=1"]);
    assert_eq!(wire.Cwd, "/tmp");
    assert!(wire.Terminal);
    assert_eq!((wire.User.UID, wire.User.GID), (1000, 100));

    agent
        .signal_process("c1", "e1", Signal::TERM)
        .await
        .unwrap();
    agent.signal_process("c1", "", Signal::KILL).await.unwrap();
    let rt = Signal::try_from(37).unwrap();
    agent.signal_process("c1", "c1", rt).await.unwrap();
    assert_eq!(
        *h.mock.signals.lock().unwrap(),
        [
            ("c1".to_string(), "e1".to_string(), 15),
            ("c1".to_string(), String::new(), 9),
            ("c1".to_string(), "c1".to_string(), 37),
        ]
    );
}

#[tokio::test]
async fn wait_process_builds_exit_status_from_either_encoding() {
    let h = Harness::start(ScriptedAgent::default()).await;
    let agent = h.agent().await;
    let wait = |exec: &'static str| {
        let agent = agent.clone();
        async move { agent.wait_process("c1", exec, None).await }
    };
    // The kata-rs agent says how the process ended: `exit 137` and SIGKILL differ.
    assert_eq!(wait("exit-137").await.unwrap(), ExitStatus::from_code(137));
    assert_eq!(
        wait("sigkill").await.unwrap(),
        ExitStatus::from_signal(Signal::KILL)
    );
    let rt = wait("rt").await.unwrap();
    assert_eq!((rt.signal(), rt.to_shell_status()), (Some(40), 168));
    // Kata's agent does not: 128 + n reads as signal n, anything else as a code.
    assert_eq!(wait("kata-137").await.unwrap().signal(), Some(9));
    assert_eq!(wait("kata-3").await.unwrap().code(), Some(3));
    // Nonsense and unknown execs are errors naming the call.
    let err = wait("bogus").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadAnswer {
                method: "WaitProcess",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(wait("nope").await.unwrap_err().is_not_found());

    // The deadline is the caller's: none waits past the request timeout (300 ms) ...
    assert!(agent
        .wait_process("c1", "slow", None)
        .await
        .unwrap()
        .success());
    // ... a short one times out.
    let err = agent
        .wait_process("c1", "slow", Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

#[tokio::test]
async fn standard_streams() {
    let h = Harness::start(ScriptedAgent::default()).await;
    {
        let mut output = h.mock.output.lock().unwrap();
        output.insert(
            ("e1".into(), "stdout"),
            VecDeque::from([b"hello ".to_vec(), b"world\n".to_vec()]),
        );
        output.insert(
            ("e1".into(), "stderr"),
            VecDeque::from([b"oops\n".to_vec()]),
        );
        output.insert(("silent".into(), "stdout"), VecDeque::new());
    }
    let agent = h.agent().await;

    // Chunks of at most max_len, then None at the end of the stream.
    let mut out = Vec::new();
    while let Some(chunk) = agent
        .read_output("c1", "e1", OutputStream::Stdout, 4, None)
        .await
        .unwrap()
    {
        assert!(chunk.len() <= 4, "{chunk:?}");
        out.extend(chunk);
    }
    assert_eq!(out, b"hello world\n");
    assert_eq!(
        agent
            .read_output("c1", "e1", OutputStream::Stderr, 1024, None)
            .await
            .unwrap(),
        Some(b"oops\n".to_vec())
    );
    assert_eq!(
        agent
            .read_output("c1", "e1", OutputStream::Stderr, 1024, None)
            .await
            .unwrap(),
        None
    );
    // Other errors stay errors; a read can time out.
    let err = agent
        .read_output("c1", "nope", OutputStream::Stdout, 1024, None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let started = Instant::now();
    let err = agent
        .read_output(
            "c1",
            "silent",
            OutputStream::Stdout,
            1024,
            Some(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(
        err.is_timeout() && started.elapsed() < Duration::from_secs(2),
        "{err:?}"
    );

    // Short writes are reported as such.
    assert_eq!(agent.write_stdin("c1", "e1", b"abcdefgh").await.unwrap(), 4);
    assert_eq!(agent.write_stdin("c1", "e1", b"efgh").await.unwrap(), 4);
    assert_eq!(*h.mock.stdin.lock().unwrap(), b"abcdefgh");
    agent.close_stdin("c1", "e1").await.unwrap();
    agent.tty_win_resize("c1", "e1", 24, 80).await.unwrap();
    assert_eq!(*h.mock.resize.lock().unwrap(), Some((24, 80)));
    assert_eq!(h.mock.recorded(), ["CloseStdin c1 e1"]);
}

/// Forwards one connection from `front` to `back` until the returned task is aborted, which
/// closes the connection from the client's point of view (the VM went away).
async fn proxy(front: &Path, back: PathBuf) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(front).unwrap();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut agent = tokio::net::UnixStream::connect(&back).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    })
}

async fn next_within(events: &mut kata_agent_client::OomEvents, limit: Duration) -> Option<String> {
    tokio::time::timeout(limit, events.next())
        .await
        .expect("the OOM stream neither yielded nor ended in time")
}

#[tokio::test]
async fn oom_events_survive_a_failure_and_end_when_the_connection_closes() {
    let h = Harness::start(ScriptedAgent {
        oom: Mutex::new(VecDeque::from([
            OomStep::Event("c1"),
            OomStep::Fail(Code::INTERNAL),
            OomStep::Fail(Code::UNAVAILABLE),
            OomStep::Event("c2"),
        ])),
        ..Default::default()
    })
    .await;
    let front = h._dir.path().join("front.sock");
    let link = proxy(&front, h.socket.clone()).await;
    let agent = Agent::connect(&AgentAddress::Unix(front), options())
        .await
        .unwrap();

    let mut events = agent.oom_events();
    let limit = Duration::from_secs(5);
    assert_eq!(next_within(&mut events, limit).await.as_deref(), Some("c1"));
    // Two failures in a row, then the next event: the stream goes on.
    assert_eq!(next_within(&mut events, limit).await.as_deref(), Some("c2"));
    assert_eq!(*h.mock.oom_calls.lock().unwrap(), 4);

    // The next call blocks in the agent; the connection then closes: the stream ends.
    let waiting = tokio::spawn(async move {
        let item = next_within(&mut events, limit).await;
        (item, events)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    link.abort();
    let (item, mut events) = waiting.await.unwrap();
    assert_eq!(item, None);
    // And stays ended, without asking the agent again.
    assert_eq!(next_within(&mut events, limit).await, None);
    assert_eq!(*h.mock.oom_calls.lock().unwrap(), 5);
}

#[tokio::test]
async fn oom_events_end_at_once_on_a_closed_connection_or_an_agent_without_them() {
    // Closed before the first poll.
    let h = Harness::start(ScriptedAgent::default()).await;
    let front = h._dir.path().join("front.sock");
    let link = proxy(&front, h.socket.clone()).await;
    let agent = Agent::connect(&AgentAddress::Unix(front), options())
        .await
        .unwrap();
    agent.check().await.unwrap();
    link.abort();
    let _ = link.await;
    let mut events = agent.oom_events();
    assert_eq!(next_within(&mut events, Duration::from_secs(5)).await, None);

    // An agent that does not offer the call (NOT_FOUND) ends the stream too.
    let h = Harness::start(ScriptedAgent {
        oom: Mutex::new(VecDeque::from([OomStep::Fail(Code::NOT_FOUND)])),
        ..Default::default()
    })
    .await;
    let mut events = h.agent().await.oom_events();
    assert_eq!(next_within(&mut events, Duration::from_secs(5)).await, None);
}

#[tokio::test]
async fn oom_events_implement_stream() {
    use futures_core::Stream;
    fn assert_stream<S: Stream<Item = String> + Send + Unpin>(_: &S) {}
    let h = Harness::start(ScriptedAgent {
        oom: Mutex::new(VecDeque::from([OomStep::Event("c9")])),
        ..Default::default()
    })
    .await;
    let mut events = h.agent().await.oom_events();
    assert_stream(&events);
    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut events).poll_next(cx));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .unwrap()
            .as_deref(),
        Some("c9")
    );
}
