//! A virtio-blk request, parsed from a checked chain: the header, the data segments with the
//! direction the request type needs, and the status byte.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::{ID_BYTES, SECTOR_SIZE};
use crate::devices::virtio::chain::{ChainError, Segment};

/// `VIRTIO_BLK_T_IN`: read from the disk.
pub const T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write to the disk.
pub const T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`.
pub const T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`.
pub const T_DISCARD: u32 = 11;

/// Status: done.
pub const S_OK: u8 = 0;
/// Status: failed (a bad request, a disk error, a write to a read-only disk).
pub const S_IOERR: u8 = 1;
/// Status: this request type is not supported.
pub const S_UNSUPP: u8 = 2;

/// The request header (`struct virtio_blk_outhdr`) is 16 bytes.
const HEADER_LEN: u32 = 16;
/// A discard range (`struct virtio_blk_discard_write_zeroes`) is 16 bytes.
pub const DISCARD_RANGE_LEN: u32 = 16;
/// The most ranges one discard request may carry (advertised as `max_discard_seg`), so a
/// request cannot keep the device busy with millions of ranges.
pub const MAX_DISCARD_SEG: u32 = 1;

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read into the data segments.
    In,
    /// Write the data segments.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Write the disk's id into the data segment.
    GetId,
    /// Release the ranges listed in the data segments.
    Discard,
    /// Any other type: answered `S_UNSUPP`.
    Unsupported(u32),
}

/// A parsed request: every segment is in guest memory and has the right direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub kind: RequestKind,
    /// The first sector (In, Out).
    pub sector: u64,
    /// The data segments.
    pub data: Vec<Segment>,
    /// The total length of the data segments.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Where the status byte of `segments` is, if the chain has a place for one: the last
/// descriptor, writable, at least one byte.
pub fn status_address(segments: &[Segment]) -> Option<GuestAddress> {
    segments
        .last()
        .filter(|s| s.write_only && s.len >= 1 && segments.len() >= 2)
        .map(|s| s.addr)
}

/// Parses `segments` (header, data..., status).
pub fn parse<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
) -> Result<Request, ChainError> {
    let status = status_address(segments).ok_or(ChainError::Malformed(
        "the last descriptor is not a writable status byte",
    ))?;
    let header = segments[0];
    if header.write_only {
        return Err(ChainError::WrongDirection { index: 0 });
    }
    if header.len < HEADER_LEN {
        return Err(ChainError::TooShort {
            index: 0,
            len: header.len,
            need: HEADER_LEN,
        });
    }
    let kind: u32 = mem
        .read_obj(header.addr)
        .map_err(|_| ChainError::BadAddress {
            addr: header.addr.0,
            len: header.len,
        })?;
    let sector: u64 =
        mem.read_obj(header.addr.unchecked_add(8))
            .map_err(|_| ChainError::BadAddress {
                addr: header.addr.0,
                len: header.len,
            })?;
    let kind = match u32::from_le(kind) {
        T_IN => RequestKind::In,
        T_OUT => RequestKind::Out,
        T_FLUSH => RequestKind::Flush,
        T_GET_ID => RequestKind::GetId,
        T_DISCARD => RequestKind::Discard,
        other => RequestKind::Unsupported(other),
    };
    let data = segments[1..segments.len() - 1].to_vec();
    let data_len: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    let device_writes = match kind {
        RequestKind::In | RequestKind::GetId => true,
        RequestKind::Out | RequestKind::Discard => false,
        RequestKind::Flush | RequestKind::Unsupported(_) => {
            return Ok(Request {
                kind,
                sector: 0,
                data: Vec::new(),
                data_len: 0,
                status,
            })
        }
    };
    for (i, s) in data.iter().enumerate() {
        if s.write_only != device_writes {
            return Err(ChainError::WrongDirection { index: i + 1 });
        }
    }
    match kind {
        RequestKind::In | RequestKind::Out => {
            if data.is_empty() || !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(ChainError::Malformed(
                    "data is not a whole, non-zero number of sectors",
                ));
            }
        }
        RequestKind::GetId => {
            if data.len() != 1 || data[0].len < ID_BYTES as u32 {
                return Err(ChainError::Malformed("GET_ID needs one 20-byte buffer"));
            }
        }
        RequestKind::Discard => {
            if data.is_empty() || !data_len.is_multiple_of(u64::from(DISCARD_RANGE_LEN)) {
                return Err(ChainError::Malformed(
                    "discard data is not a whole number of 16-byte ranges",
                ));
            }
            if data_len > u64::from(DISCARD_RANGE_LEN * MAX_DISCARD_SEG) {
                return Err(ChainError::Malformed(
                    "more discard ranges than max_discard_seg",
                ));
            }
        }
        RequestKind::Flush | RequestKind::Unsupported(_) => {}
    }
    Ok(Request {
        kind,
        sector: u64::from_le(sector),
        data,
        data_len,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::test_memory;

    fn seg(addr: u64, len: u32, write_only: bool) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
            write_only,
        }
    }

    fn header(mem: &crate::memory::GuestMemory, at: u64, kind: u32, sector: u64) -> Segment {
        mem.write_obj(kind.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(at + 8)).unwrap();
        seg(at, 16, false)
    }

    #[test]
    fn a_read_is_parsed() {
        let mem = test_memory();
        let h = header(&mem, 0x1000, T_IN, 7);
        let r = parse(&mem, &[h, seg(0x2000, 1024, true), seg(0x3000, 1, true)]).unwrap();
        assert_eq!(r.kind, RequestKind::In);
        assert_eq!(r.sector, 7);
        assert_eq!(r.data_len, 1024);
        assert_eq!(r.status, GuestAddress(0x3000));
    }

    #[test]
    fn malformed_requests_are_refused() {
        let mem = test_memory();
        let h = header(&mem, 0x1000, T_IN, 0);
        let status = seg(0x3000, 1, true);
        // No status descriptor (or a read-only one, or a zero-length one).
        assert!(parse(&mem, &[h]).is_err());
        assert!(parse(&mem, &[h, seg(0x3000, 1, false)]).is_err());
        assert!(parse(&mem, &[h, seg(0x3000, 0, true)]).is_err());
        // A writable header, a short one, a zero-length one.
        assert_eq!(
            parse(&mem, &[seg(0x1000, 16, true), status]).unwrap_err(),
            ChainError::WrongDirection { index: 0 }
        );
        assert!(matches!(
            parse(&mem, &[seg(0x1000, 8, false), status]).unwrap_err(),
            ChainError::TooShort { .. }
        ));
        assert!(matches!(
            parse(&mem, &[seg(0x1000, 0, false), status]).unwrap_err(),
            ChainError::TooShort { .. }
        ));
        // A read whose buffer the device would have to read, and the other way round.
        assert_eq!(
            parse(&mem, &[h, seg(0x2000, 512, false), status]).unwrap_err(),
            ChainError::WrongDirection { index: 1 }
        );
        let w = header(&mem, 0x1100, T_OUT, 0);
        assert_eq!(
            parse(&mem, &[w, seg(0x2000, 512, true), status]).unwrap_err(),
            ChainError::WrongDirection { index: 1 }
        );
        // Partial sectors, no data at all.
        assert!(parse(&mem, &[h, seg(0x2000, 100, true), status]).is_err());
        assert!(parse(&mem, &[h, status]).is_err());
        // More discard ranges than advertised.
        let d = header(&mem, 0x1400, T_DISCARD, 0);
        assert!(parse(&mem, &[d, seg(0x2000, 32, false), status]).is_err());
        assert!(parse(&mem, &[d, seg(0x2000, 16, false), status]).is_ok());
        // GET_ID with a short buffer.
        let g = header(&mem, 0x1200, T_GET_ID, 0);
        assert!(parse(&mem, &[g, seg(0x2000, 8, true), status]).is_err());
        // An unknown type still parses, to be answered UNSUPP.
        let u = header(&mem, 0x1300, 99, 0);
        assert_eq!(
            parse(&mem, &[u, status]).unwrap().kind,
            RequestKind::Unsupported(99)
        );
    }
}
