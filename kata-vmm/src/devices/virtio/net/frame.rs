//! A net queue's chains, checked: a receive buffer is all device-writable, a frame to send is
//! all device-readable and at least a net header long; neither past [`MAX_SEGMENTS`] or
//! [`super::MAX_FRAME_LEN`].

use vm_memory::Bytes;

use super::{MAX_FRAME_LEN, NET_HDR_LEN};
use crate::devices::virtio::chain::{ChainError, Segment};
use crate::memory::GuestMemory;

/// The most descriptors a net chain may have (Linux uses at most `MAX_SKB_FRAGS + 2`).
pub const MAX_SEGMENTS: usize = 64;

/// A receive chain's writable bytes, in order: where a frame from the tap goes.
pub fn rx_buffer(segments: &[Segment]) -> Result<usize, ChainError> {
    let mut len = 0usize;
    for (index, s) in segments.iter().enumerate() {
        if !s.write_only {
            return Err(ChainError::WrongDirection { index });
        }
        len = len.saturating_add(s.len as usize);
    }
    if len < NET_HDR_LEN {
        return Err(ChainError::TooShort {
            index: 0,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            need: NET_HDR_LEN as u32,
        });
    }
    Ok(len)
}

/// The frame a transmit chain holds (net header first), read out of guest memory.
pub fn tx_frame(mem: &GuestMemory, segments: &[Segment]) -> Result<Vec<u8>, ChainError> {
    let mut len = 0usize;
    for (index, s) in segments.iter().enumerate() {
        if s.write_only {
            return Err(ChainError::WrongDirection { index });
        }
        len = len.saturating_add(s.len as usize);
    }
    if len < NET_HDR_LEN {
        return Err(ChainError::TooShort {
            index: 0,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            need: NET_HDR_LEN as u32,
        });
    }
    if len > MAX_FRAME_LEN {
        return Err(ChainError::Malformed("frame longer than 65562 bytes"));
    }
    let mut frame = vec![0u8; len];
    let mut at = 0;
    for s in segments {
        let n = s.len as usize;
        mem.read_slice(&mut frame[at..at + n], s.addr)
            .map_err(|_| ChainError::BadAddress {
                addr: s.addr.0,
                len: s.len,
            })?;
        at += n;
    }
    Ok(frame)
}

/// Writes `frame` across the receive chain's `segments` (checked by [`rx_buffer`] to hold
/// it); returns the bytes written.
pub fn write_rx(mem: &GuestMemory, segments: &[Segment], frame: &[u8]) -> Result<u32, ChainError> {
    let mut left = frame;
    for s in segments {
        if left.is_empty() {
            break;
        }
        let n = left.len().min(s.len as usize);
        mem.write_slice(&left[..n], s.addr)
            .map_err(|_| ChainError::BadAddress {
                addr: s.addr.0,
                len: s.len,
            })?;
        left = &left[n..];
    }
    if !left.is_empty() {
        return Err(ChainError::Malformed(
            "receive buffer smaller than the frame",
        ));
    }
    Ok(u32::try_from(frame.len()).unwrap_or(u32::MAX))
}
