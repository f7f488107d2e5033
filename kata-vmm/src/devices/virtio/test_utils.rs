//! Test helpers: guest memory, a driver-side queue (virtio-queue's mock) and descriptor
//! strategies for the property tests.

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use crate::memory::GuestMemory;

/// The test guest's memory size.
pub const MEM_SIZE: u64 = 16 << 20;
/// The queue size of the test queues.
pub const QUEUE_SIZE: u16 = 256;
/// Flag of a descriptor the device writes.
pub const F_WRITE: u16 = 2;

/// 16 MiB of anonymous guest memory at 0.
pub fn test_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A driver-side queue of [`QUEUE_SIZE`] at address 0.
pub fn mock_queue(mem: &GuestMemory) -> MockSplitQueue<'_, GuestMemory> {
    MockSplitQueue::new(mem, QUEUE_SIZE)
}

/// A descriptor; `build_desc_chain` sets the NEXT flags and indices.
pub fn desc(addr: u64, len: u32, write_only: bool) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        if write_only { F_WRITE } else { 0 },
        0,
    ))
}

/// Any descriptor: addresses near data, near the end of memory or anywhere; any flags
/// (NEXT, WRITE, INDIRECT); any `next`.
pub fn arb_desc() -> impl Strategy<Value = RawDescriptor> {
    let addr = prop_oneof![
        0x10_0000u64..0x20_0000,
        (MEM_SIZE - 0x1000)..(MEM_SIZE + 0x1000),
        any::<u64>(),
    ];
    let len = prop_oneof![0u32..64, 0u32..0x2_0000, any::<u32>()];
    (addr, len, 0u16..8, 0u16..(QUEUE_SIZE + 8))
        .prop_map(|(a, l, f, n)| RawDescriptor::from(SplitDescriptor::new(a, l, f, n)))
}

/// A descriptor table of 1 to 12 arbitrary descriptors.
pub fn arb_table() -> impl Strategy<Value = Vec<RawDescriptor>> {
    prop::collection::vec(arb_desc(), 1..12)
}
