//! The vsock device through its queues: a mock driver's rings, a real unix-socket client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{arb_table, test_memory, F_WRITE, QUEUE_SIZE};
use crate::devices::virtio::vsock::packet::{op, Header, HEADER_LEN, TYPE_STREAM};
use crate::devices::EventFdTrigger;

const F_NEXT: u16 = 1;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x40_0000;
const BUF: u32 = 4096;

/// A driver-side view of one queue: where the next descriptors go, which used entries were
/// seen.
struct Ring<'a> {
    vq: MockSplitQueue<'a, GuestMemory>,
    next_desc: u16,
    used_seen: u16,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemory, at: u64) -> Self {
        Ring {
            vq: MockSplitQueue::create(mem, GuestAddress(at), QUEUE_SIZE),
            next_desc: 0,
            used_seen: 0,
        }
    }

    fn submit(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() { F_NEXT } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    len,
                    flags | next,
                    head + i as u16 + 1,
                ))
            })
            .collect();
        self.vq.add_desc_chains(&raw, head).unwrap();
        self.next_desc += descs.len() as u16;
        head
    }

    /// New used entries: (descriptor id, length).
    fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u32, u32)> {
        let used = self.vq.used_addr().0;
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = used + 4 + 8 * u64::from(self.used_seen % QUEUE_SIZE);
            out.push((
                mem.read_obj(GuestAddress(e)).unwrap(),
                mem.read_obj(GuestAddress(e + 4)).unwrap(),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

struct Guest<'a> {
    mem: &'a GuestMemory,
    rx: Ring<'a>,
    tx: Ring<'a>,
    dev: Vsock,
    irq: Arc<Interrupt>,
    tx_slot: u64,
    _dir: tempfile::TempDir,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Vsock::new(&VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("kata.hvsock"),
        })
        .unwrap();
        let rx = Ring::new(mem, 0);
        let tx = Ring::new(mem, 0x1_0000);
        let ev = Ring::new(mem, 0x2_0000);
        let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
        let queues = vec![
            rx.vq.create_queue().unwrap(),
            tx.vq.create_queue().unwrap(),
            ev.vq.create_queue().unwrap(),
        ];
        dev.activate(mem.clone(), VIRTIO_F_VERSION_1, queues, irq.clone())
            .unwrap();
        let mut g = Guest {
            mem,
            rx,
            tx,
            dev,
            irq,
            tx_slot: 0,
            _dir: dir,
        };
        // Eight 4 KiB RX buffers, as the Linux driver posts them.
        for i in 0..8u64 {
            g.rx.submit(&[(RX_BUFS + i * u64::from(BUF), BUF, F_WRITE)]);
        }
        g
    }

    /// Queues a packet on TX: header and payload in separate descriptors.
    fn send(&mut self, h: Header, data: &[u8]) {
        let at = TX_BUFS + self.tx_slot * 0x1_0000;
        self.tx_slot = (self.tx_slot + 1) % 32;
        let mut h = h;
        h.len = data.len() as u32;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + 0x100))
            .unwrap();
        if data.is_empty() {
            self.tx.submit(&[(at, HEADER_LEN as u32, 0)]);
        } else {
            self.tx.submit(&[
                (at, HEADER_LEN as u32, 0),
                (at + 0x100, data.len() as u32, 0),
            ]);
        }
    }

    /// Packets the device put in RX buffers since the last call; each buffer is posted again.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.rx.take_used(self.mem) {
            let at = RX_BUFS + u64::from(id % 8) * u64::from(BUF);
            let mut head = [0u8; HEADER_LEN];
            self.mem.read_slice(&mut head, GuestAddress(at)).unwrap();
            let h = Header::from_bytes(&head);
            assert_eq!(len as usize, HEADER_LEN + h.len as usize);
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(at + HEADER_LEN as u64))
                .unwrap();
            out.push((h, data));
            self.rx.submit(&[(at, BUF, F_WRITE)]);
        }
        out
    }

    fn header(&self, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }
}

#[test]
fn invalid_cids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0u64, 1, 2, u64::from(u32::MAX)] {
        let e = Vsock::new(&VsockConfig {
            guest_cid: cid,
            uds_path: dir.path().join("s"),
        })
        .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }
    assert!(!dir.path().join("s").exists(), "nothing left behind");
}

#[test]
fn hybrid_connect_and_echo_through_the_queues() {
    let mem = test_memory();
    let mut g = Guest::new(&mem);
    let mut cfg = [0u8; 8];
    g.dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 3);

    let mut c = UnixStream::connect(g.dev.uds_path()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"CONNECT 1024\n").unwrap();
    assert!(g.dev.process(Instant::now()));
    assert_eq!(g.irq.line().eventfd().read().unwrap(), 1);
    let got = g.received();
    assert_eq!(got.len(), 1);
    let req = got[0].0;
    assert_eq!((req.op, req.dst_port, req.dst_cid), (op::REQUEST, 1024, 3));
    let local = req.src_port;

    g.send(g.header(local, op::RESPONSE), b"");
    g.dev.process(Instant::now());
    assert_eq!(g.tx.take_used(&mem).len(), 1);
    let mut ok = vec![0u8; format!("OK {local}\n").len()];
    c.read_exact(&mut ok).unwrap();
    assert_eq!(ok, format!("OK {local}\n").as_bytes());

    c.write_all(b"hello").unwrap();
    g.dev.process(Instant::now());
    let got = g.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].1.as_slice()), (op::RW, &b"hello"[..]));

    g.send(g.header(local, op::RW), b"world");
    g.dev.process(Instant::now());
    let mut w = [0u8; 5];
    c.read_exact(&mut w).unwrap();
    assert_eq!(&w, b"world");
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_device_goes_on() {
    let mem = test_memory();
    let mut g = Guest::new(&mem);
    let h = g.header(5555, op::RW);
    mem.write_slice(&h.to_bytes(), GuestAddress(TX_BUFS))
        .unwrap();
    // A writable header; a zero-length header; a short one; a bad address; a payload longer
    // than its buffer; a loop.
    g.tx.submit(&[(TX_BUFS, 44, F_WRITE)]);
    g.tx.submit(&[(TX_BUFS, 0, 0)]);
    g.tx.submit(&[(TX_BUFS, 20, 0)]);
    g.tx.submit(&[(u64::MAX - 100, 44, 0)]);
    let mut long = h;
    long.len = 1000;
    mem.write_slice(&long.to_bytes(), GuestAddress(TX_BUFS + 0x100))
        .unwrap();
    g.tx.submit(&[(TX_BUFS + 0x100, 44, 0), (TX_BUFS + 0x200, 10, 0)]);
    let head = g.tx.next_desc;
    g.tx.vq
        .add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                TX_BUFS, 44, F_NEXT, head,
            ))],
            head,
        )
        .unwrap();
    g.tx.next_desc += 1;
    g.dev.process(Instant::now());
    let used = g.tx.take_used(&mem);
    assert_eq!(used.len(), 6);
    assert!(used.iter().all(|(_, len)| *len == 0));
    assert!(
        g.received().is_empty(),
        "nothing answered to dropped packets"
    );
    // A readable RX buffer is dropped too, and a proper one still works after it.
    g.rx.submit(&[(RX_BUFS, BUF, 0)]);
    g.send(g.header(5555, op::RW), b"x");
    g.dev.process(Instant::now());
    let got = g.received();
    assert_eq!(got.len(), 1, "the stray RW is answered with one RST");
    assert_eq!(got[0].0.op, op::RST);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any TX descriptor table, any header bytes: the device drops or answers, never panics.
    #[test]
    fn any_tx_chain_is_survived(table in arb_table(), head in prop::collection::vec(any::<u8>(), HEADER_LEN)) {
        let mem = test_memory();
        let mut g = Guest::new(&mem);
        mem.write_slice(&head, GuestAddress(0x10_0000)).unwrap();
        g.tx.vq.add_desc_chains(&table, 0).unwrap();
        g.dev.process(Instant::now());
        g.received();
    }
}

/// The device in an event loop: a client's CONNECT wakes it through the muxer's sockets, a
/// queue notification through its eventfd, and a silent guest is timed out by its timer.
#[test]
fn the_event_loop_drives_connect_and_timeouts() {
    use crate::event_loop::EventLoop;
    use std::sync::Mutex;
    let mem = test_memory();
    // The harness' rings, with a device of the loop's own on them (the harness' device is
    // left idle).
    let mut g = Guest::new(&mem);
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Vsock::new(&VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("loop.hvsock"),
    })
    .unwrap();
    let queues = vec![
        g.rx.vq.create_queue().unwrap(),
        g.tx.vq.create_queue().unwrap(),
        Ring::new(&mem, 0x2_0000).vq.create_queue().unwrap(),
    ];
    dev.activate(mem.clone(), VIRTIO_F_VERSION_1, queues, g.irq.clone())
        .unwrap();
    let uds = dev.uds_path().to_owned();
    let dev = Arc::new(Mutex::new(dev));
    let mut lp = EventLoop::new().unwrap();
    lp.add(dev.clone()).unwrap();

    let mut c = UnixStream::connect(&uds).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"CONNECT 1024\n").unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < Duration::from_secs(5) {
        lp.run_once(100).unwrap();
        got = g.received();
    }
    assert_eq!(got.len(), 1, "the CONNECT woke the device");
    assert_eq!(got[0].0.op, op::REQUEST);
    // The guest never answers: the timer ends the connection after the CONNECT timeout.
    let start = Instant::now();
    let mut reset = false;
    while !reset && start.elapsed() < Duration::from_secs(5) {
        lp.run_once(100).unwrap();
        reset = g.received().iter().any(|(h, _)| h.op == op::RST);
    }
    assert!(reset, "the silent guest was sent a reset");
    let mut b = [0u8; 8];
    assert_eq!(c.read(&mut b).unwrap(), 0, "the client was closed");
}
