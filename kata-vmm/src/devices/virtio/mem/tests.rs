//! virtio-mem through a mock driver's queue over guest memory, with a file as the region's
//! backing (no KVM).

use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::request::*;
use super::*;
use crate::devices::virtio::test_utils::{arb_table, test_memory, F_WRITE, MEM_SIZE, QUEUE_SIZE};
use crate::devices::EventFdTrigger;

const F_NEXT: u16 = 1;
/// The region: 256 MiB at 1 GiB (outside the 16 MiB test RAM: the device never maps it).
const REGION: u64 = 1 << 30;
const REGION_SIZE: u64 = 256 << 20;
/// Where requests and responses are written in test RAM.
const REQ: u64 = 0x10_0000;
const RESP: u64 = 0x20_0000;

struct Harness<'a> {
    mem: &'a GuestMemory,
    queue: MockSplitQueue<'a, GuestMemory>,
    dev: Mem,
    handle: MemHandle,
    backing: File,
    irq: EventFd,
    interrupt: Arc<Interrupt>,
    next_desc: u16,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let backing = tempfile::tempfile().unwrap();
        backing.set_len(REGION_SIZE).unwrap();
        let mut dev = Mem::new(MemConfig {
            addr: REGION,
            size: REGION_SIZE,
            backing: Some((backing.try_clone().unwrap(), 0)),
        })
        .unwrap();
        let handle = dev.handle();
        let queue = MockSplitQueue::new(mem, QUEUE_SIZE);
        let line = EventFdTrigger::new_nonblocking().unwrap();
        let irq = line.eventfd().try_clone().unwrap();
        let interrupt = Interrupt::new(line);
        dev.activate(
            mem.clone(),
            VIRTIO_F_VERSION_1,
            vec![queue.create_queue().unwrap()],
            interrupt.clone(),
        )
        .unwrap();
        Harness {
            mem,
            queue,
            dev,
            handle,
            backing,
            irq,
            interrupt,
            next_desc: 0,
        }
    }

    /// Queues a chain of (addr, len, write_only), linked in order.
    fn submit(&mut self, descs: &[(u64, u32, bool)]) {
        // Every chain is answered before the next is queued: the table is reused from 0.
        if usize::from(self.next_desc) + descs.len() > usize::from(QUEUE_SIZE) {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, head + i as u16 + 1))
            })
            .collect();
        self.queue.add_desc_chains(&raw, head).unwrap();
        self.next_desc += descs.len() as u16;
    }

    /// Sends one request and returns (response type, state) and the used length.
    fn request(&mut self, kind: u16, addr: u64, nb_blocks: u16) -> (u16, u16, u32) {
        let mut raw = [0u8; REQ_LEN as usize];
        raw[0..2].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&addr.to_le_bytes());
        raw[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(REQ)).unwrap();
        self.mem
            .write_slice(&[0xff; RESP_LEN as usize], GuestAddress(RESP))
            .unwrap();
        self.submit(&[(REQ, REQ_LEN, false), (RESP, RESP_LEN, true)]);
        assert_eq!(self.dev.process_queue(), 1);
        let (resp, state) = self.response();
        (resp, state, self.used_len())
    }

    fn response(&self) -> (u16, u16) {
        let resp: u16 = self.mem.read_obj(GuestAddress(RESP)).unwrap();
        let state: u16 = self.mem.read_obj(GuestAddress(RESP + 8)).unwrap();
        (resp, state)
    }

    fn used_len(&self) -> u32 {
        let used = self.queue.used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let slot = u64::from(idx.wrapping_sub(1) % QUEUE_SIZE);
        self.mem
            .read_obj(GuestAddress(used + 4 + 8 * slot + 4))
            .unwrap()
    }

    fn config_u64(&self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_config(offset, &mut b);
        u64::from_le_bytes(b)
    }
}

#[test]
fn the_config_space_describes_the_region_and_follows_the_sizes() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    assert_eq!(h.config_u64(0), BLOCK_SIZE);
    assert_eq!(h.config_u64(16), REGION);
    assert_eq!(h.config_u64(24), REGION_SIZE);
    assert_eq!(h.config_u64(32), REGION_SIZE, "usable region");
    assert_eq!(h.config_u64(40), 0, "plugged");
    assert_eq!(h.config_u64(48), 0, "requested");
    // 32-bit reads, as virtio-mmio's driver makes them, see the halves.
    h.handle.set_requested_size(4 * BLOCK_SIZE).unwrap();
    let mut lo = [0u8; 4];
    h.dev.read_config(48, &mut lo);
    assert_eq!(u32::from_le_bytes(lo), (4 * BLOCK_SIZE) as u32);
    assert_eq!(h.request(REQ_PLUG, REGION, 2).0, RESP_ACK);
    assert_eq!(h.config_u64(40), 2 * BLOCK_SIZE);
}

#[test]
fn a_new_requested_size_interrupts_the_driver_with_a_config_change() {
    let mem = test_memory();
    let h = Harness::new(&mem);
    h.handle.set_requested_size(8 * BLOCK_SIZE).unwrap();
    assert_eq!(h.irq.read().unwrap(), 1);
    assert_ne!(
        h.interrupt.status() & crate::devices::virtio::VIRTIO_MMIO_INT_CONFIG,
        0
    );
    // The same size again changes nothing and raises nothing.
    h.handle.set_requested_size(8 * BLOCK_SIZE).unwrap();
    assert!(h.irq.read().is_err(), "no second interrupt");
    // Not a block multiple, or past the region: refused, the request unchanged.
    let e = h.handle.set_requested_size(BLOCK_SIZE + 1).unwrap_err();
    assert!(e.to_string().contains("virtio-mem"), "{e}");
    let e = h
        .handle
        .set_requested_size(REGION_SIZE + BLOCK_SIZE)
        .unwrap_err();
    assert!(e.to_string().contains("default_maxmemory"), "{e}");
    assert_eq!(h.handle.requested_size(), 8 * BLOCK_SIZE);
}

#[test]
fn plugs_are_acked_up_to_the_requested_size_and_nacked_beyond() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    assert_eq!(
        h.request(REQ_PLUG, REGION, 1).0,
        RESP_NACK,
        "nothing requested"
    );
    h.handle.set_requested_size(3 * BLOCK_SIZE).unwrap();
    assert_eq!(h.request(REQ_PLUG, REGION, 2), (RESP_ACK, 0, RESP_LEN));
    assert_eq!(h.request(REQ_PLUG, REGION + 2 * BLOCK_SIZE, 2).0, RESP_NACK);
    assert_eq!(h.request(REQ_PLUG, REGION + 2 * BLOCK_SIZE, 1).0, RESP_ACK);
    assert_eq!(h.handle.plugged_size(), 3 * BLOCK_SIZE);
    // Plugging a plugged block is a driver error.
    h.handle.set_requested_size(10 * BLOCK_SIZE).unwrap();
    assert_eq!(h.request(REQ_PLUG, REGION + BLOCK_SIZE, 2).0, RESP_ERROR);
    assert_eq!(h.handle.plugged_size(), 3 * BLOCK_SIZE);
}

#[test]
fn bad_ranges_get_an_error_and_change_nothing() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.handle.set_requested_size(REGION_SIZE).unwrap();
    let blocks = (REGION_SIZE / BLOCK_SIZE) as u16;
    for (addr, nb) in [
        (REGION, 0),                                // no block
        (REGION + 4096, 1),                         // unaligned
        (REGION - BLOCK_SIZE, 1),                   // before the region
        (REGION + REGION_SIZE, 1),                  // after it
        (REGION + BLOCK_SIZE, blocks),              // runs past its end
        (u64::MAX - BLOCK_SIZE + 1, u16::MAX),      // wraps
        (REGION.wrapping_sub(REGION_SIZE * 64), 1), // far below
        (0, 1),                                     // RAM, not the region
    ] {
        for kind in [REQ_PLUG, REQ_UNPLUG, REQ_STATE] {
            assert_eq!(
                h.request(kind, addr, nb).0,
                RESP_ERROR,
                "type {kind} at {addr:#x} x{nb}"
            );
        }
    }
    assert_eq!(h.request(9, REGION, 1).0, RESP_ERROR, "unknown type");
    assert_eq!(h.handle.plugged_size(), 0);
    // The whole region at once is fine.
    assert_eq!(h.request(REQ_PLUG, REGION, blocks).0, RESP_ACK);
    assert_eq!(h.handle.plugged_size(), REGION_SIZE);
}

#[test]
fn unplugged_blocks_are_punched_out_of_the_backing_and_state_reports_them() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.handle.set_requested_size(4 * BLOCK_SIZE).unwrap();
    assert_eq!(h.request(REQ_PLUG, REGION, 4).0, RESP_ACK);
    // The guest writes into blocks 1 and 3 (through the memfd, as its mapping would).
    let page = vec![0x5a; 4096];
    h.backing.write_all_at(&page, BLOCK_SIZE).unwrap();
    h.backing.write_all_at(&page, 3 * BLOCK_SIZE).unwrap();
    h.backing.sync_all().unwrap();
    let allocated = h.backing.metadata().unwrap().blocks();
    assert!(allocated > 0);
    assert_eq!(
        h.request(REQ_STATE, REGION, 4),
        (RESP_ACK, STATE_PLUGGED, RESP_LEN)
    );
    assert_eq!(h.request(REQ_UNPLUG, REGION + BLOCK_SIZE, 1).0, RESP_ACK);
    let mut back = vec![0u8; 4096];
    h.backing.read_exact_at(&mut back, BLOCK_SIZE).unwrap();
    assert!(back.iter().all(|b| *b == 0), "block 1 reads zeros");
    h.backing.read_exact_at(&mut back, 3 * BLOCK_SIZE).unwrap();
    assert_eq!(back, page, "block 3 is still plugged and kept");
    assert!(
        h.backing.metadata().unwrap().blocks() < allocated,
        "pages given back"
    );
    assert_eq!(h.request(REQ_STATE, REGION, 4).1, STATE_MIXED);
    assert_eq!(
        h.request(REQ_STATE, REGION + BLOCK_SIZE, 1).1,
        STATE_UNPLUGGED
    );
    // Unplugging an unplugged block is a driver error.
    assert_eq!(h.request(REQ_UNPLUG, REGION, 2).0, RESP_ERROR);
    assert_eq!(h.handle.plugged_size(), 3 * BLOCK_SIZE);
    // UNPLUG_ALL empties the region and the backing.
    assert_eq!(h.request(REQ_UNPLUG_ALL, 0, 0).0, RESP_ACK);
    assert_eq!(h.handle.plugged_size(), 0);
    h.backing.read_exact_at(&mut back, 3 * BLOCK_SIZE).unwrap();
    assert!(back.iter().all(|b| *b == 0));
    assert_eq!(h.request(REQ_STATE, REGION, 4).1, STATE_UNPLUGGED);
}

#[test]
fn the_handle_waits_for_the_guest_to_plug() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.handle.set_requested_size(2 * BLOCK_SIZE).unwrap();
    let handle = h.handle.clone();
    let waiter = std::thread::spawn(move || {
        handle.wait_plugged(Duration::from_secs(10), |p| p >= 2 * BLOCK_SIZE)
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.request(REQ_PLUG, REGION, 2).0, RESP_ACK);
    assert_eq!(waiter.join().unwrap(), 2 * BLOCK_SIZE);
    // A guest that never answers: the wait ends at its bound with what is plugged.
    let t = Instant::now();
    let p = h
        .handle
        .wait_plugged(Duration::from_millis(100), |p| p >= 4 * BLOCK_SIZE);
    assert_eq!(p, 2 * BLOCK_SIZE);
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[test]
fn a_shrink_wait_ends_once_the_guest_stops_giving_back() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.handle.set_requested_size(4 * BLOCK_SIZE).unwrap();
    assert_eq!(h.request(REQ_PLUG, REGION, 4).0, RESP_ACK);
    h.handle.set_requested_size(0).unwrap();
    let handle = h.handle.clone();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let p = handle.wait_settled(Duration::from_secs(30), Duration::from_millis(300), |p| {
            p == 0
        });
        (p, t.elapsed())
    });
    // The guest gives two blocks back, one at a time, then no more.
    for b in 0..2 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            h.request(REQ_UNPLUG, REGION + b * BLOCK_SIZE, 1).0,
            RESP_ACK
        );
    }
    let (plugged, took) = waiter.join().unwrap();
    assert_eq!(plugged, 2 * BLOCK_SIZE);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}: the wait ends a stall after the last change, not at the timeout"
    );
    // Reached at once: no wait.
    let t = Instant::now();
    assert_eq!(
        h.handle
            .wait_settled(Duration::from_secs(30), Duration::from_secs(10), |p| p
                <= 2 * BLOCK_SIZE),
        2 * BLOCK_SIZE
    );
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn malformed_chains_change_nothing_and_get_an_error_where_they_can() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.handle.set_requested_size(4 * BLOCK_SIZE).unwrap();
    let mut plug = [0u8; REQ_LEN as usize];
    plug[8..16].copy_from_slice(&REGION.to_le_bytes());
    plug[16..18].copy_from_slice(&1u16.to_le_bytes());
    mem.write_slice(&plug, GuestAddress(REQ)).unwrap();
    // No response buffer: nothing to answer in, returned with 0 bytes.
    h.submit(&[(REQ, REQ_LEN, false)]);
    // The response buffer too short.
    h.submit(&[(REQ, REQ_LEN, false), (RESP, RESP_LEN - 1, true)]);
    assert_eq!(h.dev.process_queue(), 2);
    assert_eq!(h.used_len(), 0);
    // A short request, a device-writable request, three buffers: answered ERROR.
    for chain in [
        vec![(REQ, REQ_LEN - 1, false), (RESP, RESP_LEN, true)],
        vec![(REQ, REQ_LEN, true), (RESP, RESP_LEN, true)],
        vec![
            (REQ, 8, false),
            (REQ + 8, 16, false),
            (RESP, RESP_LEN, true),
        ],
    ] {
        h.submit(&chain);
        assert_eq!(h.dev.process_queue(), 1);
        assert_eq!(h.response().0, RESP_ERROR, "{chain:?}");
        assert_eq!(h.used_len(), RESP_LEN);
    }
    // A request outside guest memory.
    h.submit(&[(MEM_SIZE - 8, REQ_LEN, false), (RESP, RESP_LEN, true)]);
    assert_eq!(h.dev.process_queue(), 1);
    assert_eq!(h.handle.plugged_size(), 0, "no chain plugged anything");
    // The next proper request still works.
    assert_eq!(h.request(REQ_PLUG, REGION, 1).0, RESP_ACK);
}

#[test]
fn regions_that_break_the_layout_are_refused() {
    for (addr, size) in [
        (REGION, 0),
        (REGION, REGION_ALIGN + BLOCK_SIZE),
        (REGION + BLOCK_SIZE, REGION_ALIGN),
        (
            u64::MAX - REGION_ALIGN + 1 - REGION_ALIGN + 1,
            REGION_ALIGN * 2,
        ),
    ] {
        let e = Mem::new(MemConfig {
            addr,
            size,
            backing: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("virtio-mem"), "{e}");
    }
}

#[test]
fn a_reset_keeps_the_blocks_and_stops_config_interrupts() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.handle.set_requested_size(2 * BLOCK_SIZE).unwrap();
    let _ = h.irq.read();
    assert_eq!(h.request(REQ_PLUG, REGION, 2).0, RESP_ACK);
    h.dev.reset();
    assert_eq!(h.dev.process_queue(), 0, "an idle device takes nothing");
    assert_eq!(h.handle.plugged_size(), 2 * BLOCK_SIZE);
    let _ = h.irq.read();
    h.handle.set_requested_size(0).unwrap();
    assert!(h.irq.read().is_err(), "no driver to interrupt");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever descriptor table the guest builds, the device answers, never panics, and never
    /// plugs beyond the requested size.
    #[test]
    fn any_descriptor_table_is_answered_safely(table in arb_table(), fill in any::<u8>()) {
        let mem = test_memory();
        let mut h = Harness::new(&mem);
        h.handle.set_requested_size(8 * BLOCK_SIZE).unwrap();
        mem.write_slice(&[fill; 0x1000], GuestAddress(0x10_0000)).unwrap();
        if h.queue.build_multiple_desc_chains(&table).is_ok() {
            h.dev.process_queue();
        }
        prop_assert!(h.handle.plugged_size() <= 8 * BLOCK_SIZE);
    }

    /// Any sequence of requests with any fields keeps the plugged size within the requested
    /// size and equal to what STATE reports block by block.
    #[test]
    fn any_request_sequence_keeps_the_map_consistent(
        reqs in prop::collection::vec(
            (0u16..5, prop_oneof![
                (0u64..160).prop_map(|b| REGION + b * BLOCK_SIZE),
                (0u64..(REGION_SIZE * 2)).prop_map(|o| REGION - REGION_SIZE / 2 + o),
                any::<u64>(),
            ], prop_oneof![0u16..8, any::<u16>()]),
            1..24,
        ),
        requested_blocks in 0u64..128,
    ) {
        let mem = test_memory();
        let mut h = Harness::new(&mem);
        h.handle.set_requested_size(requested_blocks * BLOCK_SIZE).unwrap();
        for (kind, addr, nb) in reqs {
            let (resp, _, _) = h.request(kind, addr, nb);
            prop_assert!(resp == RESP_ACK || resp == RESP_NACK || resp == RESP_ERROR);
            prop_assert!(h.handle.plugged_size() <= requested_blocks * BLOCK_SIZE);
        }
        let mut plugged = 0;
        for b in 0..(REGION_SIZE / BLOCK_SIZE) {
            let (resp, state, _) = h.request(REQ_STATE, REGION + b * BLOCK_SIZE, 1);
            prop_assert_eq!(resp, RESP_ACK);
            if state == STATE_PLUGGED {
                plugged += BLOCK_SIZE;
            }
        }
        prop_assert_eq!(plugged, h.handle.plugged_size());
    }
}
