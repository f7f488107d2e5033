//! kata-rs's extension service `kata_rs.GuestService` through the typed client: an agent that
//! serves it (kata-rs's), and one that does not (Kata's agent, which has only
//! `grpc.AgentService` and `grpc.Health`): there `Agent::offline_cpus` answers `None`, the
//! runtime's cue that the guest keeps its CPUs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_agent_client::protocol::{health, kata_rs};
use kata_agent_client::server::{async_trait, create_guest_service, create_health};
use kata_agent_client::server::{GuestService, Health};
use kata_agent_client::ttrpc::{self, r#async::TtrpcContext};
use kata_agent_client::{Agent, AgentAddress, Code, ConnectOptions};

/// A guest of four CPUs, all online; records the counts asked.
#[derive(Default)]
struct Guest {
    asked: Mutex<Vec<u32>>,
}

#[async_trait]
impl GuestService for Guest {
    async fn offline_cp_us(
        &self,
        _ctx: &TtrpcContext,
        req: kata_rs::OfflineCPUsRequest,
    ) -> ttrpc::Result<kata_rs::OfflineCPUsResponse> {
        self.asked.lock().unwrap().push(req.nb_cpus);
        if req.nb_cpus == 0 {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                "nb_cpus 0: at least CPU 0 stays online",
            )));
        }
        Ok(kata_rs::OfflineCPUsResponse {
            online: (0..req.nb_cpus.min(4)).collect(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl Health for Guest {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut resp = health::HealthCheckResponse::new();
        resp.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(resp)
    }
}

async fn serve(
    with_extension: bool,
) -> (tempfile::TempDir, ttrpc::r#async::Server, Agent, Arc<Guest>) {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("agent.sock");
    let guest = Arc::new(Guest::default());
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .unwrap()
        .register_service(create_health(guest.clone()));
    if with_extension {
        server = server.register_service(create_guest_service(guest.clone()));
    }
    server.start().await.unwrap();
    let opts = ConnectOptions {
        dial_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
        retry_interval: Duration::from_millis(20),
    };
    let agent = Agent::connect(&AgentAddress::Unix(socket), opts)
        .await
        .unwrap();
    (dir, server, agent, guest)
}

#[tokio::test]
async fn an_agent_with_the_extension_answers_the_cpus_left_online() {
    let (_dir, _server, agent, guest) = serve(true).await;
    let online = agent.offline_cpus(2).await.unwrap();
    assert_eq!(online, Some([0, 1].into()));
    assert_eq!(*guest.asked.lock().unwrap(), [2]);
    // A refusal of the served call is an error, not "unserved".
    let e = agent.offline_cpus(0).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::INVALID_ARGUMENT), "{e}");
    assert!(!e.is_unserved(), "{e}");
}

#[tokio::test]
async fn an_agent_without_it_answers_none_and_the_connection_goes_on() {
    let (_dir, _server, agent, guest) = serve(false).await;
    assert_eq!(agent.offline_cpus(1).await.unwrap(), None);
    assert!(guest.asked.lock().unwrap().is_empty());
    agent.check().await.expect("the connection still serves");
}
