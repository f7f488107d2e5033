//! virtio-net through its queues, over mock driver rings and a datagram socket pair standing
//! in for the tap (one datagram per frame, as a tap queue reads and writes).

use std::os::unix::net::UnixDatagram;

use super::*;
use crate::devices::virtio::test_utils::{arb_table, test_memory, F_WRITE, QUEUE_SIZE};
use crate::devices::EventFdTrigger;
use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const F_NEXT: u16 = 1;
const TX_RING: u64 = 0x1_0000;
const BUF: u64 = 0x10_0000;
const BUF2: u64 = 0x20_0000;
const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

struct Harness<'a> {
    mem: &'a GuestMemory,
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
    dev: Net,
    /// The tap's other end: what the pod network sees.
    peer: UnixDatagram,
    irq: Arc<Interrupt>,
    next: [u16; 2],
    used_seen: [u16; 2],
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let (tap, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut dev = Net::over("tap0_kata", &OwnedFd::from(tap), MAC).unwrap();
        let rx = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
        let tx = MockSplitQueue::create(mem, GuestAddress(TX_RING), QUEUE_SIZE);
        let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
        dev.activate(
            mem.clone(),
            0,
            vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            irq.clone(),
        )
        .unwrap();
        Harness {
            mem,
            rx,
            tx,
            dev,
            peer,
            irq,
            next: [0; 2],
            used_seen: [0; 2],
        }
    }

    fn vq(&self, q: usize) -> &MockSplitQueue<'a, GuestMemory> {
        if q == RX_QUEUE {
            &self.rx
        } else {
            &self.tx
        }
    }

    /// Queues a chain of (addr, len, write_only) on queue `q`; returns its head.
    fn submit(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next[q];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                if i != descs.len() - 1 {
                    flags |= F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, head + i as u16 + 1))
            })
            .collect();
        self.vq(q).add_desc_chains(&raw, head).unwrap();
        self.next[q] += descs.len() as u16;
        head
    }

    /// The used elements (id, len) added to queue `q` since the last call.
    fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let used = self.vq(q).used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] < idx {
            let elem = used + 4 + 8 * u64::from(self.used_seen[q] % QUEUE_SIZE);
            out.push((
                self.mem.read_obj(GuestAddress(elem)).unwrap(),
                self.mem.read_obj(GuestAddress(elem + 4)).unwrap(),
            ));
            self.used_seen[q] += 1;
        }
        out
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// What the device wrote to the tap, frame by frame.
    fn sent(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.peer.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }
}

/// A frame as the tap carries it: a zero net header, then `payload`.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

#[test]
fn the_mac_is_in_the_config_space_and_offered() {
    let mem = test_memory();
    let h = Harness::new(&mem);
    let mut mac = [0u8; 6];
    h.dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    assert_eq!(
        h.dev.avail_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    );
    assert_eq!(
        h.dev.queue_max_sizes().len(),
        2,
        "one receive, one transmit queue"
    );
    assert_eq!(h.dev.device_type(), 1);
    assert_eq!(parse_mac("02:42:ac:11:00:02"), Some(MAC));
    for bad in [
        "02:42:ac:11:00",
        "02:42:ac:11:00:02:03",
        "zz:42:ac:11:00:02",
        "2:42:ac:11:00:02",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
}

#[test]
fn a_frame_the_guest_queues_reaches_the_tap_whole() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    let payload: Vec<u8> = (0..100u8).collect();
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&payload, GuestAddress(BUF2)).unwrap();
    // The header and the frame in two descriptors, as Linux queues them.
    let head = h.submit(
        TX_QUEUE,
        &[(BUF, NET_HDR_LEN as u32, false), (BUF2, 100, false)],
    );
    assert_eq!(h.dev.process_tx(), 1);
    assert_eq!(h.sent(), vec![framed(&payload)]);
    assert_eq!(h.used(TX_QUEUE), vec![(u32::from(head), 0)]);
    assert_eq!(h.irq.status() & 1, 1, "the driver is told");
    assert_eq!(h.dev.counters().tx_frames, 1);
}

#[test]
fn a_frame_from_the_tap_fills_a_receive_buffer_with_one_buffer_counted() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    let head = h.submit(RX_QUEUE, &[(BUF, 1526, true)]);
    let payload = b"an ethernet frame from the pod network".to_vec();
    h.peer.send(&framed(&payload)).unwrap();
    // The tap's arrival wakes the device through its edge-triggered epoll.
    h.dev.handle(token::TAP);
    let frame = framed(&payload);
    assert_eq!(
        h.used(RX_QUEUE),
        vec![(u32::from(head), frame.len() as u32)]
    );
    let got = h.read(BUF, frame.len());
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[NET_HDR_LEN..], &payload[..]);
    // The edge is consumed: the event loop is not woken again for the same frame.
    let mut events = [EpollEvent::default(); 1];
    assert_eq!(h.dev.tap_epoll.wait(0, &mut events).unwrap(), 0);
}

#[test]
fn a_frame_with_no_receive_buffer_waits_for_the_driver() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.peer.send(&framed(b"first")).unwrap();
    h.peer.send(&framed(b"second")).unwrap();
    assert_eq!(h.dev.process_rx(), 0, "no buffer yet");
    assert!(h.dev.pending.is_some(), "kept, not dropped");
    let a = h.submit(RX_QUEUE, &[(BUF, 64, true)]);
    let b = h.submit(RX_QUEUE, &[(BUF2, 64, true)]);
    // The driver's notification after it refilled the queue resumes.
    h.dev.notify.write(1).unwrap();
    h.dev.handle(token::NOTIFY);
    assert_eq!(
        h.used(RX_QUEUE),
        vec![(u32::from(a), 17), (u32::from(b), 18)],
        "both, in order"
    );
    assert_eq!(&h.read(BUF + 12, 5), b"first");
    assert_eq!(&h.read(BUF2 + 12, 6), b"second");
    assert_eq!(h.dev.counters().rx_dropped, 0);
}

#[test]
fn malformed_chains_are_dropped_and_answered_never_followed() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    // Transmit: a buffer the device would write, a chain shorter than a header, a frame past
    // guest memory. None reaches the tap; each is returned.
    h.submit(TX_QUEUE, &[(BUF, 64, true)]);
    h.submit(TX_QUEUE, &[(BUF, 4, false)]);
    h.submit(TX_QUEUE, &[(u64::MAX - 8, 64, false)]);
    assert_eq!(h.dev.process_tx(), 3);
    assert!(h.sent().is_empty());
    assert_eq!(h.used(TX_QUEUE).len(), 3);
    assert_eq!(h.dev.counters().tx_dropped, 3);

    // Receive: a read-only buffer and one too small for the frame: the frames are dropped
    // with used length 0, the next good buffer gets the next frame.
    h.submit(RX_QUEUE, &[(BUF, 1526, false)]);
    h.submit(RX_QUEUE, &[(BUF, 16, true)]);
    let good = h.submit(RX_QUEUE, &[(BUF2, 1526, true)]);
    for p in [&b"dropped one"[..], b"dropped two", b"delivered"] {
        h.peer.send(&framed(p)).unwrap();
    }
    h.dev.process_rx();
    let used = h.used(RX_QUEUE);
    assert_eq!(used.len(), 3);
    assert_eq!((used[0].1, used[1].1), (0, 0));
    assert_eq!(used[2], (u32::from(good), 21));
    assert_eq!(&h.read(BUF2 + 12, 9), b"delivered");
    assert_eq!(h.dev.counters().rx_dropped, 2);
}

#[test]
fn a_descriptor_that_is_not_a_tap_is_refused_naming_the_ioctl() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let e = Net::new(&NetConfig {
        name: "tap9_kata".into(),
        tap: Arc::new(OwnedFd::from(a)),
        mac: MAC,
    })
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("TUNSETVNETHDRSZ") && text.contains("tap9_kata"),
        "{text}"
    );
}

#[test]
fn activation_needs_both_queues_and_reset_forgets_a_waiting_frame() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.peer.send(&framed(b"x")).unwrap();
    h.dev.process_rx();
    assert!(h.dev.pending.is_some());
    h.dev.reset();
    assert!(h.dev.pending.is_none());
    let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
    let e = h
        .dev
        .activate(mem.clone(), 0, vec![h.rx.create_queue().unwrap()], irq)
        .unwrap_err();
    assert!(e.reason.contains("1 given"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any descriptor table on either queue: the device answers or drops, never panics, and
    /// never hands the tap more than a frame's worth.
    #[test]
    fn any_chain_on_either_queue_is_survived(rx in arb_table(), tx in arb_table(), len in 0usize..2000) {
        let mem = test_memory();
        let mut h = Harness::new(&mem);
        h.rx.add_desc_chains(&rx, 0).unwrap();
        h.tx.add_desc_chains(&tx, 0).unwrap();
        let _ = h.peer.send(&vec![7u8; len]);
        h.dev.process_tx();
        h.dev.process_rx();
        for f in h.sent() {
            prop_assert!(f.len() >= NET_HDR_LEN && f.len() <= MAX_FRAME_LEN);
        }
    }
}
