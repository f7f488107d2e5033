//! kata-vmm's guest-facing edge: descriptor chains of a split virtqueue whose descriptor table,
//! available ring and buffers are the fuzzer's bytes, read as the vsock (TX and RX) and block
//! devices read them.

use kata_vmm::devices::virtio::block::request;
use kata_vmm::devices::virtio::chain::read_chain;
use kata_vmm::devices::virtio::vsock::packet;
use kata_vmm::memory::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

/// The guest memory: 1 MiB, the input copied to its start.
const MEM_SIZE: usize = 1 << 20;
/// The queue's size: a 256-byte descriptor table at 0.
const QUEUE_SIZE: u16 = 16;
/// Where the available ring is (the input's bytes 0x100..).
const AVAIL: u64 = 0x100;
/// Where the used ring is (past any input the fuzzer makes by default).
const USED: u64 = 0x8_0000;
/// The most chains taken per input (the ring's index is the guest's and can be anything).
const MAX_CHAINS: usize = 64;
/// The devices' bound on a chain's length.
const MAX_SEGMENTS: usize = 64;

/// The input as guest memory holding a queue; every chain on it read as each device reads it.
pub fn queue(data: &[u8]) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let len = data.len().min(USED as usize);
    mem.write_slice(&data[..len], GuestAddress(0))
        .expect("the input fits");
    let mut queue = Queue::new(QUEUE_SIZE).expect("a queue");
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        return;
    }
    for _ in 0..MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let Ok(segments) = read_chain(&mem, chain, MAX_SEGMENTS) else {
            let _ = queue.add_used(&mem, head, 0);
            continue;
        };
        for s in &segments {
            assert!(
                mem.check_range(s.addr, s.len as usize) || s.len == 0,
                "a checked segment {s:?} is outside guest memory"
            );
        }
        let _ = packet::read_tx(&mem, &segments);
        if let Ok(capacity) = packet::rx_capacity(&segments) {
            let payload = vec![0x5a; capacity.min(packet::MAX_PAYLOAD)];
            let pkt = packet::Packet {
                header: packet::Header::from_bytes(&[0; packet::HEADER_LEN]),
                data: payload,
            };
            let _ = packet::write_rx(&mem, &segments, &pkt);
        }
        if let Ok(req) = request::parse(&mem, &segments) {
            assert!(req.data.len() + 2 == segments.len() || req.data.is_empty());
        }
        let _ = queue.add_used(&mem, head, 0);
    }
}
