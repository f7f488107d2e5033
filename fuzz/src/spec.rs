//! OCI spec conversion (kata-agent-client `spec`): the runtime's `config.json` to the agent's
//! `grpc.Spec` and the agent's side back. What one conversion keeps, the next round must keep:
//! after one trip the wire form is a fixed point.

use kata_agent_client::protobuf::Message;
use kata_agent_client::protocol::oci as grpc;
use kata_agent_client::spec::{from_grpc as spec_from_grpc, to_grpc as spec_to_grpc};
use oci_spec::runtime::Spec;

/// A `config.json` (caller input): parsed, sent to the wire, read back, sent again.
pub fn from_json(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<Spec>(data) else {
        return;
    };
    let Ok(wire) = spec_to_grpc(&spec) else {
        return;
    };
    round_trip(&wire);
}

/// A wire `grpc.Spec` (what the agent receives): decoded, converted, and if it converts, the
/// result sent to the wire and back.
pub fn from_grpc(data: &[u8]) {
    let Ok(wire) = grpc::Spec::parse_from_bytes(data) else {
        return;
    };
    let Ok(spec) = spec_from_grpc(&wire) else {
        return;
    };
    let Ok(wire) = spec_to_grpc(&spec) else {
        return;
    };
    round_trip(&wire);
}

/// `wire` came out of `to_grpc`: it must read back, and read back to the same wire form.
fn round_trip(wire: &grpc::Spec) {
    let spec = spec_from_grpc(wire)
        .unwrap_or_else(|e| panic!("a spec to_grpc made does not read back: {e}\n{wire:?}"));
    let again = spec_to_grpc(&spec)
        .unwrap_or_else(|e| panic!("a spec from_grpc made does not convert: {e}\n{spec:?}"));
    assert_eq!(&again, wire, "the wire form changed on a second round trip");
}
