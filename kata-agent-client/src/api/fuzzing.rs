//! Entry points for kata-rs's fuzz targets (feature `fuzzing`; not an API): each agent reply
//! the typed [`Agent`](super::Agent) decodes, decoded from raw bytes the way the façade does.
//!
//! The first byte picks the reply (modulo the number of kinds); the rest is the protobuf
//! message as the agent would send it. What the façade does with it is done here by the same
//! functions, so a reply that panics here panics a runtime talking to a hostile agent.

use protobuf::Message;

use super::exit::ExitStatus;
use super::guest::{AgentVersion, GuestDetails};
use super::metrics::GuestMetrics;
use super::network::wire;
use super::stats::ContainerStats;
use crate::protocol::agent as pb;
use crate::protocol::health;

/// The reply kinds, in the order the first byte selects them.
pub const REPLY_KINDS: &[&str] = &[
    "WaitProcess",
    "StatsContainer",
    "GetGuestDetails",
    "Health.Version",
    "Health.Check",
    "ListRoutes",
    "ListInterfaces",
    "UpdateInterface",
    "ListProcesses",
    "ReadStdout",
    "WriteStdin",
    "GetOOMEvent",
    "GetMetrics",
];

/// Decodes `data` as one agent reply and converts it as the façade does; returns the kind
/// decoded and whether both the protobuf decode and the conversion succeeded.
pub fn decode_reply(data: &[u8]) -> (&'static str, bool) {
    let Some((&selector, bytes)) = data.split_first() else {
        return ("", false);
    };
    let kind = REPLY_KINDS[usize::from(selector) % REPLY_KINDS.len()];
    let ok = match kind {
        "WaitProcess" => decode(bytes, |r: pb::WaitProcessResponse| {
            ExitStatus::from_wait_response(r.status, r.signal).is_ok()
        }),
        "StatsContainer" => decode(bytes, |r: pb::StatsContainerResponse| {
            let _ = ContainerStats::from(&r);
            true
        }),
        "GetGuestDetails" => decode(bytes, |r: pb::GuestDetailsResponse| {
            let _ = GuestDetails::from(&r);
            true
        }),
        "Health.Version" => decode(bytes, |r: health::VersionCheckResponse| {
            let _ = AgentVersion::from(&r);
            true
        }),
        "Health.Check" => decode(bytes, |r: health::HealthCheckResponse| {
            r.status.enum_value().is_ok()
        }),
        "ListRoutes" => decode(bytes, |r: pb::Routes| {
            super::decode_routes("ListRoutes", &r).is_ok()
        }),
        "ListInterfaces" => decode(bytes, |r: pb::Interfaces| {
            r.Interfaces
                .iter()
                .all(|w| wire::interface_from_grpc(w, "Interfaces[]").is_ok())
        }),
        "UpdateInterface" => decode(bytes, |r: crate::protocol::types::Interface| {
            wire::interface_from_grpc(&r, "interface").is_ok()
        }),
        "ListProcesses" => decode(bytes, |r: pb::ListProcessesResponse| {
            serde_json::from_slice::<Vec<u32>>(&r.process_list).is_ok()
        }),
        "ReadStdout" => decode(bytes, |r: pb::ReadStreamResponse| !r.data.is_empty()),
        "WriteStdin" => decode(bytes, |r: pb::WriteStreamResponse| r.len > 0),
        "GetOOMEvent" => decode(bytes, |r: pb::OOMEvent| !r.container_id.is_empty()),
        _ => decode(bytes, |r: pb::Metrics| {
            let _ = GuestMetrics::from_guest_text(&r.metrics);
            true
        }),
    };
    (kind, ok)
}

fn decode<M: Message>(bytes: &[u8], convert: impl FnOnce(M) -> bool) -> bool {
    M::parse_from_bytes(bytes).map(convert).unwrap_or(false)
}
