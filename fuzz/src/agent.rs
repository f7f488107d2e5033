//! What the guest sends the runtime (kata-agent-client): the hybrid-vsock backend's answer to
//! `CONNECT`, and the agent's replies as the typed `Agent` decodes them.

use kata_agent_client::api::fuzzing::decode_reply;
use kata_agent_client::connect::fuzzing::hybrid_handshake;

/// The backend's answer: accepted only as `OK <u32>` (a `\r` before the newline allowed), and
/// then exactly the answer line is consumed.
pub fn handshake(data: &[u8]) {
    let result = crate::runtime().block_on(hybrid_handshake(data));
    let Ok(rest) = result else {
        return;
    };
    let newline = data
        .iter()
        .position(|b| *b == b'\n')
        .expect("an accepted answer has a newline");
    let line = String::from_utf8_lossy(&data[..newline]);
    let line = line.trim_end_matches('\r');
    let port = line
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("accepted {line:?}, which is not `OK <n>`"));
    assert!(
        port.trim().parse::<u32>().is_ok(),
        "accepted {line:?}, whose port is not a number"
    );
    let cut = (newline + 1).min(data.len().min(16 << 10));
    assert_eq!(
        rest,
        &data[cut..data.len().min(16 << 10)],
        "the handshake read past its line"
    );
}

/// One agent reply (first byte: which), decoded and converted.
pub fn reply(data: &[u8]) {
    let _ = decode_reply(data);
}
