//! Host integration (tier 2) tests of the client's transports, against
//! in-process stand-ins.
//!
//! `MockAgent` is a tiny ttRPC server with canned answers, and
//! `FakeHybridVsockBackend` plays a VMM's hybrid-vsock unix socket. They are
//! mocks on purpose: what is under test is the client's transport (dialing,
//! the `CONNECT`/`OK` handshake, retries, deadlines, error mapping), not agent
//! behaviour, which the kata-agent crate tests against the real agent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kata_agent_client::protocol::agent::{
    CreateContainerRequest, ListRoutesRequest, ReadStreamRequest, ReadStreamResponse,
    RemoveContainerRequest, StartContainerRequest, WaitProcessRequest, WaitProcessResponse,
};
use kata_agent_client::protocol::empty::Empty;
use kata_agent_client::protocol::health::health_check_response::ServingStatus;
use kata_agent_client::protocol::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use kata_agent_client::protocol::{agent_ttrpc, health_ttrpc};
use kata_agent_client::ttrpc::{self, r#async::TtrpcContext};
use kata_agent_client::{AgentAddress, AgentClient, Code, ConnectOptions, Error, OutputStream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Canned-answer agent: only what the transport tests need.
#[derive(Default)]
struct MockAgent {
    created: Mutex<Vec<String>>,
    reads: AtomicUsize,
}

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for MockAgent {
    async fn create_container(
        &self,
        ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        // Echoes the deadline the client gave the agent (the ttRPC context's timeout_nano).
        if req.container_id == "deadline-probe" {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("timeout_nano={}", ctx.timeout_nano),
            ));
        }
        let mut created = self.created.lock().unwrap();
        if created.contains(&req.container_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.container_id),
            ));
        }
        created.push(req.container_id);
        Ok(Empty::new())
    }

    /// Slow on purpose: the request-timeout test calls it.
    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        _req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(status(
            Code::NOT_FOUND,
            format!("container {} not found", req.container_id),
        ))
    }

    /// Exits after 400 ms with status 3: longer than the test request timeout.
    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        _req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut resp = WaitProcessResponse::new();
        resp.status = 3;
        Ok(resp)
    }

    /// "hello\n", then end of stream the way Kata's agent reports it.
    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        _req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        if self.reads.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut resp = ReadStreamResponse::new();
            resp.data = b"hello\n".to_vec();
            Ok(resp)
        } else {
            Err(status(Code::INTERNAL, "read meet eof"))
        }
    }
}

struct MockHealth;

#[async_trait::async_trait]
impl health_ttrpc::Health for MockHealth {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        let mut resp = HealthCheckResponse::new();
        resp.status = ServingStatus::SERVING.into();
        Ok(resp)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        let mut resp = VersionCheckResponse::new();
        resp.agent_version = "mock-0.1".into();
        resp.grpc_version = "0.0.1".into();
        Ok(resp)
    }
}

/// Starts the mock agent on a unix socket; keep the server alive while used.
async fn start_mock_agent(socket: &Path) -> ttrpc::r#async::Server {
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .expect("bind mock agent socket")
        .register_service(agent_ttrpc::create_agent_service(Arc::new(
            MockAgent::default(),
        )))
        .register_service(health_ttrpc::create_health(Arc::new(MockHealth)));
    server.start().await.expect("start mock agent");
    server
}

/// How the fake hybrid-vsock backend answers `CONNECT <port>`.
#[derive(Clone, Copy)]
enum BackendBehaviour {
    /// Close the first `n` connections without answering (guest not
    /// listening yet), then answer `OK <port>` and forward to the agent.
    CloseFirst(usize),
    /// Answer garbage.
    Garbage,
}

/// Plays a VMM's hybrid-vsock unix socket: reads `CONNECT <port>\n`, answers,
/// then forwards the stream to the agent's unix socket as the VMM forwards
/// it to the guest.
fn spawn_fake_hybrid_vsock_backend(
    uds: PathBuf,
    agent_socket: PathBuf,
    behaviour: BackendBehaviour,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let listener = UnixListener::bind(&uds).expect("bind fake backend socket");
    let task = tokio::spawn(async move {
        let mut accepted = 0usize;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted += 1;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                continue;
            }
            seen.lock().unwrap().push(line.clone());
            let mut stream = reader.into_inner();
            match behaviour {
                BackendBehaviour::CloseFirst(n) if accepted <= n => drop(stream),
                BackendBehaviour::CloseFirst(_) => {
                    let port = line.trim().strip_prefix("CONNECT ").unwrap_or("0");
                    stream
                        .write_all(format!("OK {port}\n").as_bytes())
                        .await
                        .unwrap();
                    let agent_socket = agent_socket.clone();
                    tokio::spawn(async move {
                        let mut guest = UnixStream::connect(&agent_socket).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut guest).await;
                    });
                }
                BackendBehaviour::Garbage => {
                    stream
                        .write_all(b"HTTP/1.1 400 Bad Request\n")
                        .await
                        .unwrap();
                }
            }
        }
    });
    (task, requests)
}

fn quick_options() -> ConnectOptions {
    ConnectOptions {
        dial_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(300),
        retry_interval: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn unix_round_trip_health_and_agent_calls() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _server = start_mock_agent(&sock).await;

    let addr = AgentAddress::Unix(sock.clone());
    let agent = AgentClient::connect(&addr, quick_options()).await.unwrap();

    let health = agent.check().await.unwrap();
    assert_eq!(health.status.enum_value(), Ok(ServingStatus::SERVING));
    assert_eq!(agent.version().await.unwrap().agent_version, "mock-0.1");

    let mut create = CreateContainerRequest::new();
    create.container_id = "c1".into();
    agent.create_container(&create).await.unwrap();
    let dup = agent.create_container(&create).await.unwrap_err();
    assert!(dup.is_already_exists(), "{dup}");
    assert!(dup.to_string().contains("CreateContainer") && dup.to_string().contains("c1"));

    let mut remove = RemoveContainerRequest::new();
    remove.container_id = "nope".into();
    let err = agent.remove_container(&remove).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.code(), Some(Code::NOT_FOUND));
    assert!(err.message().unwrap().contains("nope"));

    // A method the mock does not implement: the generated default answers NOT_FOUND.
    let err = agent
        .list_routes(&ListRoutesRequest::new())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Output until end of stream, Kata-style EOF error mapped to None.
    let read = ReadStreamRequest::new();
    let first = agent
        .read_output(OutputStream::Stdout, &read)
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some(&b"hello\n"[..]));
    assert_eq!(
        agent
            .read_output(OutputStream::Stdout, &read)
            .await
            .unwrap(),
        None
    );
    let eof = agent.read_stdout(&read, None).await.unwrap_err();
    assert!(eof.is_eof(), "{eof}");
}

/// A call that acts keeps its deadline on the host: the agent, whose clock cannot be trusted in
/// an emulated guest under load, is given none. Given the caller's deadline, a guest agent
/// answered DEADLINE_EXCEEDED to a 30 s CreateContainer after a few seconds of host time.
/// (Waiting calls share theirs: kata-agent's host_agent `a_read_that_times_out_loses_nothing`.)
#[tokio::test]
async fn an_acting_call_gives_the_agent_no_deadline_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _server = start_mock_agent(&sock).await;
    let agent = AgentClient::connect(&AgentAddress::Unix(sock), quick_options())
        .await
        .unwrap();

    let mut create = CreateContainerRequest::new();
    create.container_id = "deadline-probe".into();
    let err = agent.create_container(&create).await.unwrap_err();
    let message = err.message().unwrap().to_string();
    let nanos: i64 = message
        .strip_prefix("timeout_nano=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("mock's answer: {message}"));
    assert_eq!(nanos, 0, "the agent was given a deadline of {nanos} ns");
}

#[tokio::test]
async fn calls_time_out_except_the_waiting_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _server = start_mock_agent(&sock).await;
    let agent = AgentClient::connect(&AgentAddress::Unix(sock), quick_options())
        .await
        .unwrap();

    // StartContainer takes 3 s; the request timeout is 300 ms.
    let started = Instant::now();
    let err = agent
        .start_container(&StartContainerRequest::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { method: "StartContainer", timeout } if timeout == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("StartContainer") && err.to_string().contains("300ms"));

    // WaitProcess takes 400 ms, longer than the request timeout: with no
    // timeout it waits; with a short explicit one it times out.
    let wait = WaitProcessRequest::new();
    assert_eq!(agent.wait_process(&wait, None).await.unwrap().status, 3);
    let err = agent
        .wait_process(&wait, Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    // The connection is still usable after timeouts.
    agent.check().await.unwrap();
}

#[tokio::test]
async fn clones_call_concurrently_over_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _server = start_mock_agent(&sock).await;
    let agent = AgentClient::connect(&AgentAddress::Unix(sock), quick_options())
        .await
        .unwrap();

    // Ten 400 ms waits in parallel finish in about 400 ms, not 4 s.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let agent = agent.clone();
        tasks.spawn(async move {
            agent
                .wait_process(&WaitProcessRequest::new(), None)
                .await
                .map(|r| r.status)
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap(), 3);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn hybrid_vsock_handshake_then_ttrpc_on_the_same_stream() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let uds = dir.path().join("vsock.uds");
    let _server = start_mock_agent(&agent_sock).await;
    // The first two CONNECTs find no listener in the "guest": the client retries.
    let (_backend, requests) =
        spawn_fake_hybrid_vsock_backend(uds.clone(), agent_sock, BackendBehaviour::CloseFirst(2));

    let addr: AgentAddress = format!("hvsock://{}:1024", uds.display()).parse().unwrap();
    let agent = AgentClient::connect(&addr, quick_options()).await.unwrap();
    assert_eq!(agent.version().await.unwrap().agent_version, "mock-0.1");
    assert_eq!(
        *requests.lock().unwrap(),
        vec!["CONNECT 1024\n".to_string(); 3]
    );
}

#[tokio::test]
async fn hybrid_vsock_waits_for_the_backend_socket_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let uds = dir.path().join("vsock.uds");
    let _server = start_mock_agent(&agent_sock).await;

    let addr = AgentAddress::HybridVsock {
        uds: uds.clone(),
        port: 1024,
    };
    let connecting =
        tokio::spawn(async move { AgentClient::connect(&addr, quick_options()).await });
    // The VMM creates its socket a little later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_backend, _) =
        spawn_fake_hybrid_vsock_backend(uds, agent_sock, BackendBehaviour::CloseFirst(0));
    let agent = connecting.await.unwrap().unwrap();
    agent.check().await.unwrap();
}

#[tokio::test]
async fn hybrid_vsock_garbage_answer_is_a_clear_handshake_error() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.uds");
    let (_backend, _) = spawn_fake_hybrid_vsock_backend(
        uds.clone(),
        dir.path().join("unused.sock"),
        BackendBehaviour::Garbage,
    );

    let started = Instant::now();
    let addr = AgentAddress::HybridVsock {
        uds: uds.clone(),
        port: 1024,
    };
    let err = AgentClient::connect(&addr, quick_options())
        .await
        .unwrap_err();
    // Not retried until the dial timeout: a wrong answer will not fix itself.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match &err {
        Error::Handshake {
            uds: u,
            port,
            answer,
        } => {
            assert_eq!(u, &uds);
            assert_eq!(*port, 1024);
            assert_eq!(answer, "HTTP/1.1 400 Bad Request");
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("HTTP/1.1 400 Bad Request") && text.contains("vsock.uds"),
        "{text}"
    );
}

#[tokio::test]
async fn dial_timeout_names_the_address_the_wait_and_the_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("never.sock");
    let addr = AgentAddress::Unix(missing.clone());
    let opts = ConnectOptions {
        dial_timeout: Duration::from_millis(300),
        ..quick_options()
    };
    let started = Instant::now();
    let err = AgentClient::connect(&addr, opts).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    match &err {
        Error::Connect {
            address,
            waited,
            last_error,
        } => {
            assert_eq!(address, &format!("unix://{}", missing.display()));
            assert!(*waited >= Duration::from_millis(250));
            assert!(matches!(**last_error, Error::Io { .. }), "{last_error:?}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("never.sock") && text.contains("No such file"),
        "{text}"
    );
}

#[tokio::test]
async fn vsock_without_a_guest_fails_within_the_dial_timeout() {
    // No guest has CID 3 here (and maybe no vsock at all): whatever the
    // kernel says, the client must give up within its dial timeout.
    let addr: AgentAddress = "vsock://3:1024".parse().unwrap();
    let opts = ConnectOptions {
        dial_timeout: Duration::from_millis(300),
        ..quick_options()
    };
    let started = Instant::now();
    let err = AgentClient::connect(&addr, opts).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    eprintln!("vsock dial error here: {err}");
    assert!(err.to_string().contains("vsock"), "{err}");
}
