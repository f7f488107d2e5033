//! The agent protocol's generated types and ttRPC stubs.
//!
//! Generated at build time from `proto/*.proto` (see `build.rs`). Message and
//! field names are the protocol's own, so some fields keep CamelCase names
//! (`Spec::Process`, `CreateContainerRequest::OCI`) exactly as in Kata's crates.
//!
//! - [`agent`]: requests and responses of `grpc.AgentService`.
//! - [`oci`]: the `grpc.Spec` tree (the OCI runtime spec on the wire).
//! - [`types`]: network types (`types.Interface`, `types.Route`, ...).
//! - [`health`]: requests and responses of `grpc.Health`.
//! - [`kata_rs`]: requests and responses of `kata_rs.GuestService`, kata-rs's extension
//!   (not in Kata's protocol: see `proto/kata_rs.proto`).
//! - [`agent_ttrpc`], [`health_ttrpc`], [`kata_rs_ttrpc`]: async ttRPC clients, server traits
//!   and their `create_*` registration functions.

macro_rules! generated_module {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        #[allow(
            missing_docs,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            unused_imports,
            unused_results,
            unused_mut,
            dead_code,
            trivial_casts,
            unknown_lints,
            clippy::all,
            clippy::pedantic,
            rustdoc::all
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/protocol/", $file));
        }
    };
}

generated_module!(
    /// Messages of `agent.proto` (package `grpc`).
    agent,
    "agent.rs"
);
generated_module!(
    /// Messages of `oci.proto` (package `grpc`): the OCI spec as the agent receives it.
    oci,
    "oci.rs"
);
generated_module!(
    /// Messages of `types.proto` (package `types`): guest network configuration.
    types,
    "types.rs"
);
generated_module!(
    /// Messages of `health.proto` (package `grpc`).
    health,
    "health.rs"
);
generated_module!(
    /// Messages of `kata_rs.proto` (package `kata_rs`): kata-rs's extension service.
    kata_rs,
    "kata_rs.rs"
);
generated_module!(
    /// ttRPC client, server trait and `create_guest_service` for `kata_rs.GuestService`.
    kata_rs_ttrpc,
    "kata_rs_ttrpc.rs"
);
generated_module!(
    /// ttRPC client, server trait and `create_agent_service` for `grpc.AgentService`.
    agent_ttrpc,
    "agent_ttrpc.rs"
);
generated_module!(
    /// ttRPC client, server trait and `create_health` for `grpc.Health`.
    health_ttrpc,
    "health_ttrpc.rs"
);

/// `google.protobuf.Empty`, the answer of most AgentService methods.
///
/// The generated ttRPC stubs name it `super::empty::Empty`; it is rust-protobuf's
/// well-known type.
pub mod empty {
    pub use protobuf::well_known_types::empty::Empty;
}
