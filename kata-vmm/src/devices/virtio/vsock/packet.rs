//! vsock packets: the 44-byte header and the payload, read from the guest's TX chains and
//! written into its RX buffers. Everything is checked here, before the muxer sees it.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::devices::virtio::chain::{ChainError, Segment};

/// The size of `struct virtio_vsock_hdr`.
pub const HEADER_LEN: usize = 44;
/// The largest payload one packet may carry (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type supported.
pub const TYPE_STREAM: u16 = 1;

/// The operations of the vsock protocol.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// The peer will not send (flag 2) or receive (flag 1) any more.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's credit changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `struct virtio_vsock_hdr`, decoded (little endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN's directions).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// How many bytes the sender has consumed from this connection.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet: its header and its payload (`header.len` bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packet {
    /// The header.
    pub header: Header,
    /// The payload.
    pub data: Vec<u8>,
}

/// Reads a packet the guest queued on TX: the header in the first readable bytes, the payload
/// right after it (in the same descriptor or the next ones).
pub fn read_tx<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
) -> Result<Packet, ChainError> {
    if let Some(index) = segments.iter().position(|s| s.write_only) {
        return Err(ChainError::WrongDirection { index });
    }
    let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
    if total < HEADER_LEN as u64 {
        return Err(ChainError::TooShort {
            index: 0,
            len: total as u32,
            need: HEADER_LEN as u32,
        });
    }
    let mut head = [0u8; HEADER_LEN];
    gather(mem, segments, 0, &mut head)?;
    let header = Header::from_bytes(&head);
    let len = header.len as usize;
    if len > MAX_PAYLOAD {
        return Err(ChainError::Malformed("payload longer than 64 KiB"));
    }
    if (HEADER_LEN + len) as u64 > total {
        return Err(ChainError::Malformed("payload longer than the buffers"));
    }
    let mut data = vec![0u8; len];
    gather(mem, segments, HEADER_LEN, &mut data)?;
    Ok(Packet { header, data })
}

/// The payload room of an RX chain (all of it writable, at least a header long).
pub fn rx_capacity(segments: &[Segment]) -> Result<usize, ChainError> {
    if let Some(index) = segments.iter().position(|s| !s.write_only) {
        return Err(ChainError::WrongDirection { index });
    }
    let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
    if total < HEADER_LEN as u64 {
        return Err(ChainError::TooShort {
            index: 0,
            len: total as u32,
            need: HEADER_LEN as u32,
        });
    }
    Ok((total as usize - HEADER_LEN).min(MAX_PAYLOAD))
}

/// Writes `pkt` into an RX chain whose room [`rx_capacity`] measured; returns the used length.
pub fn write_rx<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    pkt: &Packet,
) -> Result<u32, ChainError> {
    let mut header = pkt.header;
    header.len = pkt.data.len() as u32;
    scatter(mem, segments, 0, &header.to_bytes())?;
    scatter(mem, segments, HEADER_LEN, &pkt.data)?;
    Ok((HEADER_LEN + pkt.data.len()) as u32)
}

/// Copies bytes from the chain's byte stream at `offset` into `out`.
fn gather<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    mut offset: usize,
    out: &mut [u8],
) -> Result<(), ChainError> {
    let mut done = 0;
    for s in segments {
        if done == out.len() {
            break;
        }
        let len = s.len as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(out.len() - done);
        mem.read_slice(
            &mut out[done..done + n],
            GuestAddress(s.addr.0 + offset as u64),
        )
        .map_err(|_| ChainError::BadAddress {
            addr: s.addr.0,
            len: s.len,
        })?;
        done += n;
        offset = 0;
    }
    if done < out.len() {
        return Err(ChainError::Malformed(
            "the chain is shorter than its contents",
        ));
    }
    Ok(())
}

/// Copies `data` into the chain's byte stream at `offset`.
fn scatter<M: GuestMemory + ?Sized>(
    mem: &M,
    segments: &[Segment],
    mut offset: usize,
    data: &[u8],
) -> Result<(), ChainError> {
    let mut done = 0;
    for s in segments {
        if done == data.len() {
            break;
        }
        let len = s.len as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(data.len() - done);
        mem.write_slice(
            &data[done..done + n],
            GuestAddress(s.addr.0 + offset as u64),
        )
        .map_err(|_| ChainError::BadAddress {
            addr: s.addr.0,
            len: s.len,
        })?;
        done += n;
        offset = 0;
    }
    if done < data.len() {
        return Err(ChainError::Malformed(
            "the buffers are shorter than the packet",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::test_memory;
    use proptest::prelude::*;

    fn seg(addr: u64, len: u32, write_only: bool) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
            write_only,
        }
    }

    fn rw_header(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 5000,
            len,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 262_144,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = rw_header(5);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn tx_with_separate_and_joint_payload() {
        let mem = test_memory();
        mem.write_slice(&rw_header(5).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let p = read_tx(&mem, &[seg(0x1000, 44, false), seg(0x2000, 5, false)]).unwrap();
        assert_eq!(p.data, b"hello");
        // Header and payload in one descriptor.
        mem.write_slice(b"hello", GuestAddress(0x1000 + 44))
            .unwrap();
        let p = read_tx(&mem, &[seg(0x1000, 49, false)]).unwrap();
        assert_eq!(p.header, rw_header(5));
        assert_eq!(p.data, b"hello");
    }

    #[test]
    fn malformed_tx_is_refused() {
        let mem = test_memory();
        mem.write_slice(&rw_header(5).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        // Writable, short, zero-length header; payload longer than the buffers; a huge len.
        assert!(matches!(
            read_tx(&mem, &[seg(0x1000, 49, true)]),
            Err(ChainError::WrongDirection { index: 0 })
        ));
        assert!(matches!(
            read_tx(&mem, &[seg(0x1000, 20, false)]),
            Err(ChainError::TooShort { .. })
        ));
        assert!(matches!(
            read_tx(&mem, &[seg(0x1000, 0, false)]),
            Err(ChainError::TooShort { .. })
        ));
        assert!(matches!(
            read_tx(&mem, &[seg(0x1000, 44, false), seg(0x2000, 2, false)]),
            Err(ChainError::Malformed(_))
        ));
        mem.write_slice(&rw_header(1 << 20).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert!(matches!(
            read_tx(
                &mem,
                &[seg(0x1000, 44, false), seg(0x2000, 0xffff_0000, false)]
            ),
            Err(ChainError::Malformed(_))
        ));
    }

    #[test]
    fn rx_scatters_across_buffers() {
        let mem = test_memory();
        let segs = [seg(0x1000, 30, true), seg(0x2000, 100, true)];
        assert_eq!(rx_capacity(&segs).unwrap(), 86);
        let pkt = Packet {
            header: rw_header(0),
            data: b"0123456789".to_vec(),
        };
        assert_eq!(write_rx(&mem, &segs, &pkt).unwrap(), 54);
        let mut head = [0u8; 44];
        mem.read_slice(&mut head[..30], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut head[30..], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(Header::from_bytes(&head), rw_header(10));
        let mut body = [0u8; 10];
        mem.read_slice(&mut body, GuestAddress(0x2000 + 14))
            .unwrap();
        assert_eq!(&body, b"0123456789");
        assert!(rx_capacity(&[seg(0x1000, 43, true)]).is_err());
        assert!(rx_capacity(&[seg(0x1000, 100, false)]).is_err());
    }

    proptest! {
        /// Any segments and any header bytes: read_tx returns, and a packet it accepts is
        /// never longer than the chain or than 64 KiB.
        #[test]
        fn read_tx_never_panics(
            segs in prop::collection::vec((0u64..0x101_0000, 0u32..0x2_0000, any::<bool>()), 1..6),
            head in prop::collection::vec(any::<u8>(), HEADER_LEN),
        ) {
            let mem = test_memory();
            mem.write_slice(&head, GuestAddress(0x1000)).unwrap();
            let segs: Vec<Segment> = segs.into_iter().map(|(a, l, w)| seg(a, l, w)).collect();
            if let Ok(p) = read_tx(&mem, &segs) {
                prop_assert!(p.data.len() <= MAX_PAYLOAD);
                let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
                prop_assert!((HEADER_LEN + p.data.len()) as u64 <= total);
            }
        }
    }
}
