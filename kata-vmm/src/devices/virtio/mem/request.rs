//! A virtio-mem request, parsed from a checked chain: `struct virtio_mem_req` (24 bytes, the
//! driver's) in the first segment and room for `struct virtio_mem_resp` (10 bytes) in the
//! last, which the device writes.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::devices::virtio::chain::{ChainError, Segment};

/// `VIRTIO_MEM_REQ_PLUG`.
pub const REQ_PLUG: u16 = 0;
/// `VIRTIO_MEM_REQ_UNPLUG`.
pub const REQ_UNPLUG: u16 = 1;
/// `VIRTIO_MEM_REQ_UNPLUG_ALL`.
pub const REQ_UNPLUG_ALL: u16 = 2;
/// `VIRTIO_MEM_REQ_STATE`.
pub const REQ_STATE: u16 = 3;

/// `VIRTIO_MEM_RESP_ACK`.
pub const RESP_ACK: u16 = 0;
/// `VIRTIO_MEM_RESP_NACK`: a valid request the device declines now (plugging beyond the
/// requested size).
pub const RESP_NACK: u16 = 1;
/// `VIRTIO_MEM_RESP_BUSY` (never sent: the device is never busy).
pub const RESP_BUSY: u16 = 2;
/// `VIRTIO_MEM_RESP_ERROR`: a request that breaks the rules (a bad range, plugging plugged
/// blocks, an unknown type).
pub const RESP_ERROR: u16 = 3;

/// `VIRTIO_MEM_STATE_PLUGGED`.
pub const STATE_PLUGGED: u16 = 0;
/// `VIRTIO_MEM_STATE_UNPLUGGED`.
pub const STATE_UNPLUGGED: u16 = 1;
/// `VIRTIO_MEM_STATE_MIXED`.
pub const STATE_MIXED: u16 = 2;

/// The request's length.
pub const REQ_LEN: u32 = 24;
/// The response's length.
pub const RESP_LEN: u32 = 10;

/// What the driver asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Plug `nb_blocks` blocks at `addr`.
    Plug {
        /// The first block's guest address.
        addr: u64,
        /// How many blocks.
        nb_blocks: u16,
    },
    /// Unplug `nb_blocks` blocks at `addr`.
    Unplug {
        /// The first block's guest address.
        addr: u64,
        /// How many blocks.
        nb_blocks: u16,
    },
    /// Unplug every block.
    UnplugAll,
    /// Tell whether `nb_blocks` blocks at `addr` are plugged.
    State {
        /// The first block's guest address.
        addr: u64,
        /// How many blocks.
        nb_blocks: u16,
    },
    /// A type this device does not know: answered [`RESP_ERROR`].
    Unknown(u16),
}

impl Request {
    /// Decodes the 24 bytes of `struct virtio_mem_req`.
    pub fn decode(raw: &[u8; REQ_LEN as usize]) -> Request {
        let kind = u16::from_le_bytes([raw[0], raw[1]]);
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[8..16]);
        let addr = u64::from_le_bytes(a);
        let nb_blocks = u16::from_le_bytes([raw[16], raw[17]]);
        match kind {
            REQ_PLUG => Request::Plug { addr, nb_blocks },
            REQ_UNPLUG => Request::Unplug { addr, nb_blocks },
            REQ_UNPLUG_ALL => Request::UnplugAll,
            REQ_STATE => Request::State { addr, nb_blocks },
            other => Request::Unknown(other),
        }
    }
}

/// A request read from a chain, with where its response goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The request.
    pub request: Request,
    /// The device-writable segment the response is written to.
    pub response: GuestAddress,
}

/// Reads a request from `segments` (already checked to lie in guest memory): a
/// driver-readable first segment of at least [`REQ_LEN`] bytes and a device-writable last
/// segment of at least [`RESP_LEN`] bytes. `Err` with the response segment, if there is one,
/// so the device can still answer [`RESP_ERROR`].
pub fn parse<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
) -> Result<ParsedRequest, (ChainError, Option<GuestAddress>)> {
    let last = segments.last().ok_or((ChainError::Empty, None))?;
    let response = (last.write_only && last.len >= RESP_LEN).then_some(last.addr);
    if !last.write_only {
        return Err((
            ChainError::WrongDirection {
                index: segments.len() - 1,
            },
            None,
        ));
    }
    if last.len < RESP_LEN {
        return Err((
            ChainError::TooShort {
                index: segments.len() - 1,
                len: last.len,
                need: RESP_LEN,
            },
            None,
        ));
    }
    if segments.len() != 2 {
        return Err((
            ChainError::Malformed("a virtio-mem request is one request and one response buffer"),
            response,
        ));
    }
    let head = segments[0];
    if head.write_only {
        return Err((ChainError::WrongDirection { index: 0 }, response));
    }
    if head.len < REQ_LEN {
        return Err((
            ChainError::TooShort {
                index: 0,
                len: head.len,
                need: REQ_LEN,
            },
            response,
        ));
    }
    let mut raw = [0u8; REQ_LEN as usize];
    mem.read_slice(&mut raw, head.addr).map_err(|_| {
        (
            ChainError::BadAddress {
                addr: head.addr.0,
                len: head.len,
            },
            response,
        )
    })?;
    Ok(ParsedRequest {
        request: Request::decode(&raw),
        response: last.addr,
    })
}

/// Writes `struct virtio_mem_resp` (`type`, then `state` for a STATE request) at `at`.
pub fn write_response<M: GuestMemory + ?Sized>(
    mem: &M,
    at: GuestAddress,
    kind: u16,
    state: u16,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut raw = [0u8; RESP_LEN as usize];
    raw[0..2].copy_from_slice(&kind.to_le_bytes());
    raw[8..10].copy_from_slice(&state.to_le_bytes());
    mem.write_slice(&raw, at)
}
