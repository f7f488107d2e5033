//! The server side of the agent protocol, for the guest agent (feature `server`).
//!
//! The agent implements [`AgentService`] and [`Health`] (every method has a
//! default body that answers ttRPC `NOT_FOUND`, so an agent implements only
//! what it supports), turns them into ttRPC services with
//! [`create_agent_service`] and [`create_health`], and registers both on a
//! `ttrpc::r#async::Server`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kata_agent_client::protocol::health;
//! use kata_agent_client::server::{create_health, Health};
//! use kata_agent_client::ttrpc::{self, r#async::TtrpcContext};
//!
//! struct Agent;
//!
//! #[kata_agent_client::server::async_trait]
//! impl Health for Agent {
//!     async fn check(
//!         &self,
//!         _ctx: &TtrpcContext,
//!         _req: health::CheckRequest,
//!     ) -> ttrpc::Result<health::HealthCheckResponse> {
//!         let mut resp = health::HealthCheckResponse::new();
//!         resp.status = health::health_check_response::ServingStatus::SERVING.into();
//!         Ok(resp)
//!     }
//! }
//!
//! # async fn serve() -> ttrpc::Result<()> {
//! let mut server = ttrpc::r#async::Server::new()
//!     .bind("vsock://-1:1024")?
//!     .register_service(create_health(Arc::new(Agent)));
//! server.start().await?;
//! # Ok(())
//! # }
//! ```

pub use crate::protocol::agent_ttrpc::{create_agent_service, AgentService};
pub use crate::protocol::health_ttrpc::{create_health, Health};
/// kata-rs's extension service `kata_rs.GuestService` (not in Kata's protocol): an agent that
/// serves it registers it beside the two above.
pub use crate::protocol::kata_rs_ttrpc::{create_guest_service, GuestService};
/// The attribute macro the service traits are declared with; implement them
/// under `#[async_trait]`.
pub use async_trait::async_trait;
