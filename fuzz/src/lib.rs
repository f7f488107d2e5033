//! The bodies of kata-rs's fuzz targets: one per parser of input that comes from a guest, an
//! image or a caller. Each is a plain `fn(&[u8])` that must never panic, hang or leave anything
//! behind, whatever the bytes; where the parser has a property stronger than "does not crash"
//! (a conversion that round-trips, a handshake that reads exactly one line), the body asserts
//! it.
//!
//! Two drivers run them:
//! - `tests/replay.rs` (stable Rust, in `make test`): every file of `corpus/<target>/` and
//!   `regressions/<target>/` through its target, bounded in time;
//! - `libfuzzer/` (its own workspace, `make fuzz`): cargo-fuzz's libFuzzer entry points, one
//!   binary per target, built with coverage instrumentation into their own target dir.
//!
//! A crash found by the fuzzer goes into `regressions/<target>/` with the fix.

#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod image;
pub mod qmp;
pub mod spec;
pub mod state;
pub mod vmm;

/// One fuzz target: its name (the corpus folder and the libFuzzer binary) and its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The name: `corpus/<name>/`, `regressions/<name>/`, `libfuzzer/fuzz_targets/<name>.rs`.
    pub name: &'static str,
    /// What it parses.
    pub what: &'static str,
    /// The body.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "image_layer",
        what: "kata-resource: one image layer (tar, gzipped or not) applied to a rootfs",
        run: image::layer,
    },
    Target {
        name: "image_layout",
        what: "kata-resource: an OCI image tarball opened (blob scan, index, manifest, config) and unpacked",
        run: image::layout,
    },
    Target {
        name: "spec_json",
        what: "kata-agent-client: an OCI spec (config.json) to the wire and back",
        run: spec::from_json,
    },
    Target {
        name: "spec_grpc",
        what: "kata-agent-client: a wire grpc.Spec (protobuf) to an OCI spec and back",
        run: spec::from_grpc,
    },
    Target {
        name: "annotations",
        what: "kata-sandbox: io.katacontainers.config.* annotations over a configuration",
        run: config::annotations,
    },
    Target {
        name: "config_toml",
        what: "kata-sandbox: a configuration file and its config.d drop-ins",
        run: config::toml_files,
    },
    Target {
        name: "path_globs",
        what: "kata-sandbox: the valid_*_paths globs",
        run: config::path_globs,
    },
    Target {
        name: "state_json",
        what: "kata-sandbox state.json, kata-hypervisor's QEMU state and kata-resource's state",
        run: state::state_json,
    },
    Target {
        name: "qmp_reply",
        what: "kata-hypervisor: QMP greeting, replies and events from a QEMU",
        run: qmp::replies,
    },
    Target {
        name: "hybrid_handshake",
        what: "kata-agent-client: the hybrid-vsock backend's answer to CONNECT",
        run: agent::handshake,
    },
    Target {
        name: "agent_reply",
        what: "kata-agent-client: a reply of the agent (protobuf) decoded by the typed Agent",
        run: agent::reply,
    },
    Target {
        name: "vmm_queue",
        what: "kata-vmm: a virtqueue's descriptor chains and the vsock and block requests in them",
        run: vmm::queue,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A current-thread tokio runtime with IO and time, for the bodies that drive async code.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
