//! `kata_rs.GuestService`: kata-rs's extension beside `grpc.AgentService`, not in Kata's
//! protocol (`kata-agent-client/proto/kata_rs.proto`). Kata's agent does not serve it; kata-rs's
//! runtime takes that answer as "not served" and goes on without it.
//!
//! - `OfflineCPUs { nb_cpus }`: takes the guest's highest-numbered online CPUs offline, never
//!   CPU 0, until `nb_cpus` are online, and answers the online CPUs ([`crate::online`]). The
//!   runtime calls it before the built-in VMM takes the vCPUs back (a VMM without ACPI has no
//!   eject to ask the guest with). Only as the guest's init: an agent on a host (the test
//!   backend) refuses it rather than take the host's CPUs offline.

use std::sync::Arc;

use kata_agent_client::protocol::kata_rs;
use kata_agent_client::server::{async_trait, GuestService};
use kata_agent_client::ttrpc::{self, r#async::TtrpcContext};

use super::{handle, AgentServer, OnCancel};
use crate::error::AgentError;

#[async_trait]
impl GuestService for AgentServer {
    async fn offline_cp_us(
        &self,
        _ctx: &TtrpcContext,
        req: kata_rs::OfflineCPUsRequest,
    ) -> ttrpc::Result<kata_rs::OfflineCPUsResponse> {
        let sb = Arc::clone(&self.sandbox);
        handle("OfflineCPUs", OnCancel::Finish, "", "", async move {
            if !sb.owns_guest() {
                return Err(AgentError::FailedPrecondition(
                    "OfflineCPUs: this agent is not the guest's init; the CPUs it runs on \
                     are the host's and are left alone"
                        .into(),
                ));
            }
            let online = crate::online::offline_cpus(req.nb_cpus).await?;
            Ok(kata_rs::OfflineCPUsResponse {
                online: online.into_iter().collect(),
                ..Default::default()
            })
        })
        .await
    }
}
