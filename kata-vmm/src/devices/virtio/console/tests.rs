//! virtio-console through a mock driver's rings over guest memory.

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{arb_table, test_memory, F_WRITE, MEM_SIZE, QUEUE_SIZE};
use crate::devices::EventFdTrigger;

const F_NEXT: u16 = 1;
const DATA: u64 = 0x10_0000;

struct Harness<'a> {
    mem: &'a GuestMemory,
    transmit: MockSplitQueue<'a, GuestMemory>,
    dev: Console,
    sink: ConsoleSink,
    irq: EventFd,
    next_desc: u16,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let sink = ConsoleSink::new(1 << 20);
        let mut dev = Console::new(sink.clone()).unwrap();
        let receive = MockSplitQueue::create(mem, GuestAddress(0x80_0000), QUEUE_SIZE);
        let transmit = MockSplitQueue::new(mem, QUEUE_SIZE);
        let line = EventFdTrigger::new_nonblocking().unwrap();
        let irq = line.eventfd().try_clone().unwrap();
        dev.activate(
            mem.clone(),
            VIRTIO_F_VERSION_1,
            vec![
                receive.create_queue().unwrap(),
                transmit.create_queue().unwrap(),
            ],
            Interrupt::new(line),
        )
        .unwrap();
        Harness {
            mem,
            transmit,
            dev,
            sink,
            irq,
            next_desc: 0,
        }
    }

    /// Queues a chain of (addr, len, write_only) on the transmit queue, linked in order.
    fn submit(&mut self, descs: &[(u64, u32, bool)]) {
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
        self.transmit.add_desc_chains(&raw, head).unwrap();
        self.next_desc += descs.len() as u16;
    }

    /// The used ring's index and the last used element's length.
    fn used(&self) -> (u16, u32) {
        let used = self.transmit.used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let slot = u64::from(idx.wrapping_sub(1) % QUEUE_SIZE);
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * slot + 4))
            .unwrap();
        (idx, len)
    }
}

#[test]
fn what_the_guest_prints_reaches_the_sink_and_its_buffers_come_back() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    mem.write_slice(b"kata-agent ", GuestAddress(DATA)).unwrap();
    mem.write_slice(b"serving\n", GuestAddress(DATA + 0x100))
        .unwrap();
    h.submit(&[(DATA, 11, false), (DATA + 0x100, 8, false)]);
    assert_eq!(h.dev.process_transmit(), 1);
    assert_eq!(h.sink.contents(), b"kata-agent serving\n");
    assert_eq!(h.used(), (1, 0), "returned with nothing written");
    assert_eq!(h.irq.read().unwrap(), 1, "the guest was interrupted");
    // A notification on the receive queue takes nothing (the console is output only).
    h.dev.queue_notify(RECEIVE_QUEUE as u16);
    assert_eq!(h.sink.contents().len(), 19);
}

#[test]
fn malformed_chains_are_returned_untaken_and_the_next_one_still_prints() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    mem.write_slice(b"secret", GuestAddress(DATA)).unwrap();
    // A device-writable buffer in a transmit chain.
    h.submit(&[(DATA, 6, false), (DATA + 0x100, 6, true)]);
    // A buffer running past guest memory.
    h.submit(&[(MEM_SIZE - 2, 6, false)]);
    mem.write_slice(b"ok\n", GuestAddress(DATA + 0x200))
        .unwrap();
    h.submit(&[(DATA + 0x200, 3, false)]);
    assert_eq!(h.dev.process_transmit(), 3);
    assert_eq!(h.sink.contents(), b"ok\n");
    assert_eq!(h.used(), (3, 0));
}

#[test]
fn one_chain_gives_at_most_max_chain_bytes() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    let big = vec![b'x'; MAX_CHAIN_BYTES + 100];
    mem.write_slice(&big, GuestAddress(DATA)).unwrap();
    h.submit(&[(DATA, big.len() as u32, false)]);
    h.dev.process_transmit();
    assert_eq!(h.sink.contents().len(), MAX_CHAIN_BYTES);
}

#[test]
fn a_driver_with_one_queue_is_refused_and_an_idle_device_takes_nothing() {
    let mem = test_memory();
    let mut dev = Console::new(ConsoleSink::new(64)).unwrap();
    assert_eq!(dev.process_transmit(), 0);
    let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let e = dev
        .activate(
            mem.clone(),
            VIRTIO_F_VERSION_1,
            vec![q.create_queue().unwrap()],
            Interrupt::new(EventFdTrigger::new_nonblocking().unwrap()),
        )
        .unwrap_err();
    assert!(e.reason.contains("1 given"), "{}", e.reason);
    assert_eq!(
        (dev.device_type(), dev.queue_max_sizes().len()),
        (VIRTIO_ID_CONSOLE, 2)
    );
    let mut cfg = [0xffu8; 16];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 16]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any descriptor table on the transmit queue: taken or dropped, never a panic, never more
    /// than MAX_CHAIN_BYTES per chain; a good chain afterwards still prints.
    #[test]
    fn any_chain_is_survived(table in arb_table()) {
        let mem = test_memory();
        let mut h = Harness::new(&mem);
        h.transmit.add_desc_chains(&table, 0).unwrap();
        let taken = h.dev.process_transmit();
        prop_assert!(h.sink.contents().len() <= taken * MAX_CHAIN_BYTES);
        let before = h.sink.contents().len();
        mem.write_slice(b"!", GuestAddress(DATA)).unwrap();
        h.next_desc = 20;
        h.submit(&[(DATA, 1, false)]);
        h.dev.process_transmit();
        prop_assert_eq!(h.sink.contents().len(), before + 1);
    }
}
