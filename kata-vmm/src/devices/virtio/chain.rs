//! Descriptor chains checked at the edge: what the guest hands a device, turned into
//! [`Segment`]s that are known to lie in guest memory, or a [`ChainError`].
//!
//! virtio-queue already stops a chain after `queue size` descriptors and at an out-of-range
//! index; this module tells those cases from a chain that ended properly (a loop or a bad
//! `next` leaves the last descriptor with its NEXT flag set), bounds the number of segments,
//! and checks every address range against guest memory.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemory};

/// One descriptor of a chain, checked: `[addr, addr + len)` is guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its first byte.
    pub addr: GuestAddress,
    /// Its length.
    pub len: u32,
    /// Whether the device writes it (else the device reads it).
    pub write_only: bool,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No descriptor could be read at the head index.
    #[error("empty descriptor chain")]
    Empty,
    /// The chain did not end: a loop, a `next` index past the queue, or a bad indirect table.
    #[error("descriptor chain does not end (a loop or an index out of range)")]
    Unterminated,
    /// More descriptors than the device accepts.
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(usize),
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x}+{len} is outside guest memory")]
    BadAddress {
        /// The address.
        addr: u64,
        /// The length.
        len: u32,
    },
    /// A descriptor the device must read is writable, or the other way round.
    #[error("descriptor {index} has the wrong direction")]
    WrongDirection {
        /// Its position in the chain.
        index: usize,
    },
    /// A header or status descriptor is shorter than the structure it must hold.
    #[error("descriptor {index} is {len} bytes, at least {need} are needed")]
    TooShort {
        /// Its position in the chain.
        index: usize,
        /// Its length.
        len: u32,
        /// The least length.
        need: u32,
    },
    /// The device-specific layout does not hold (the reason says which).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// Reads a whole chain (a [`DescriptorChain`](virtio_queue::DescriptorChain), or any descriptors in chain order) into
/// checked segments, at most `max_segments`.
pub fn read_chain<M, I>(mem: &M, chain: I, max_segments: usize) -> Result<Vec<Segment>, ChainError>
where
    M: GuestMemory + ?Sized,
    I: IntoIterator<Item = Descriptor>,
{
    let mut segments = Vec::new();
    let mut last_has_next = false;
    for desc in chain {
        if segments.len() == max_segments {
            return Err(ChainError::TooLong(max_segments));
        }
        last_has_next = desc.has_next();
        segments.push(check_segment(
            mem,
            desc.addr(),
            desc.len(),
            desc.is_write_only(),
        )?);
    }
    if segments.is_empty() {
        return Err(ChainError::Empty);
    }
    if last_has_next {
        return Err(ChainError::Unterminated);
    }
    Ok(segments)
}

/// Checks one descriptor's range against guest memory.
fn check_segment<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u32,
    write_only: bool,
) -> Result<Segment, ChainError> {
    // A zero-length descriptor is in range anywhere the address itself is.
    let in_range = if len == 0 {
        mem.address_in_range(addr)
    } else {
        mem.check_range(addr, len as usize)
    };
    if !in_range {
        return Err(ChainError::BadAddress { addr: addr.0, len });
    }
    Ok(Segment {
        addr,
        len,
        write_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use proptest::prelude::*;
    use virtio_queue::desc::RawDescriptor;

    #[test]
    fn a_proper_chain_is_read() {
        let mem = test_memory();
        let vq = mock_queue(&mem);
        let chain = vq
            .build_desc_chain(&[desc(0x10_0000, 16, false), desc(0x10_1000, 1, true)])
            .unwrap();
        let segs = read_chain(&mem, chain, 8).unwrap();
        assert_eq!(segs.len(), 2);
        assert!(!segs[0].write_only && segs[1].write_only);
    }

    #[test]
    fn a_loop_is_unterminated() {
        let mem = test_memory();
        let vq = mock_queue(&mem);
        // 0 -> 1 -> 0 -> ...
        let d0 = RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
            0x10_0000, 16, 1, 1,
        ));
        let d1 = RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
            0x10_1000, 16, 1, 0,
        ));
        let chain = vq.build_multiple_desc_chains(&[d0, d1]).unwrap();
        assert_eq!(
            read_chain(&mem, chain, 1024).unwrap_err(),
            ChainError::Unterminated
        );
    }

    #[test]
    fn a_next_past_the_queue_is_unterminated() {
        let mem = test_memory();
        let vq = mock_queue(&mem);
        let d0 = RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
            0x10_0000, 16, 1, 300,
        ));
        let chain = vq.build_multiple_desc_chains(&[d0]).unwrap();
        assert_eq!(
            read_chain(&mem, chain, 1024).unwrap_err(),
            ChainError::Unterminated
        );
    }

    #[test]
    fn a_bad_address_is_refused() {
        let mem = test_memory();
        let vq = mock_queue(&mem);
        let chain = vq
            .build_desc_chain(&[desc(MEM_SIZE - 8, 16, false)])
            .unwrap();
        assert!(matches!(
            read_chain(&mem, chain, 8).unwrap_err(),
            ChainError::BadAddress { .. }
        ));
        let chain = vq
            .build_desc_chain(&[desc(u64::MAX - 4, 16, false)])
            .unwrap();
        assert!(matches!(
            read_chain(&mem, chain, 8).unwrap_err(),
            ChainError::BadAddress { .. }
        ));
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let mem = test_memory();
        let vq = mock_queue(&mem);
        let descs: Vec<_> = (0..10)
            .map(|i| desc(0x10_0000 + i * 64, 64, false))
            .collect();
        let chain = vq.build_desc_chain(&descs).unwrap();
        assert_eq!(
            read_chain(&mem, chain, 4).unwrap_err(),
            ChainError::TooLong(4)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the descriptor table holds, reading a chain returns, never panics, and
        /// every segment it returns lies in guest memory.
        #[test]
        fn any_descriptor_table_is_read_safely(table in arb_table()) {
            let mem = test_memory();
            let vq = mock_queue(&mem);
            if let Ok(chain) = vq.build_multiple_desc_chains(&table) {
                if let Ok(segs) = read_chain(&mem, chain, 64) {
                    for s in segs {
                        prop_assert!(mem.check_range(s.addr, s.len as usize) || s.len == 0);
                    }
                }
            }
        }
    }
}
