//! virtio-balloon through mock drivers' queues over memfd-backed guest RAM (no KVM).

use std::os::unix::fs::{FileExt, MetadataExt};

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::devices::virtio::test_utils::{arb_table, F_WRITE, QUEUE_SIZE};
use crate::devices::virtio::VIRTIO_MMIO_INT_CONFIG;
use crate::devices::EventFdTrigger;
use crate::memory::GuestRam;

const F_NEXT: u16 = 1;
/// Where each queue's rings are (64 KiB apart).
const RINGS: u64 = 0x1_0000;
/// Page-number lists and stats buffers.
const LISTS: u64 = 0x80_0000;
/// The pages the guest gives back.
const PAGES: u64 = 0x100_0000;
/// The memfd blocks (512 bytes) the driver's side may touch while a test measures: the page of
/// a page-number list and a used ring's page, 4 pages at most.
const BOOKKEEPING: u64 = 4 * PAGE_SIZE / 512;

struct Harness<'a> {
    ram: &'a GuestRam,
    queues: Vec<MockSplitQueue<'a, GuestMemory>>,
    dev: Balloon,
    handle: BalloonHandle,
    irq: EventFd,
    interrupt: Arc<Interrupt>,
    next: Vec<u16>,
}

impl<'a> Harness<'a> {
    fn new(ram: &'a GuestRam, reporting: bool) -> Self {
        let mem = ram.memory();
        let mut dev = Balloon::new(BalloonConfig {
            free_page_reporting: reporting,
        })
        .unwrap();
        let handle = dev.handle();
        let n = dev.queue_max_sizes().len();
        let queues: Vec<_> = (0..n)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(RINGS * (i as u64 + 1)), QUEUE_SIZE))
            .collect();
        let line = EventFdTrigger::new_nonblocking().unwrap();
        let irq = line.eventfd().try_clone().unwrap();
        let interrupt = Interrupt::new(line);
        let features = dev.avail_features();
        dev.activate(
            mem.clone(),
            features,
            queues.iter().map(|q| q.create_queue().unwrap()).collect(),
            interrupt.clone(),
        )
        .unwrap();
        Harness {
            ram,
            queues,
            dev,
            handle,
            irq,
            interrupt,
            next: vec![0; n],
        }
    }

    fn mem(&self) -> &GuestMemory {
        self.ram.memory()
    }

    /// Queues a chain of (addr, len, write_only) on queue `q`.
    fn submit(&mut self, q: u16, descs: &[(u64, u32, bool)]) {
        let q = usize::from(q);
        if usize::from(self.next[q]) + descs.len() > usize::from(QUEUE_SIZE) {
            self.next[q] = 0;
        }
        let head = self.next[q];
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
        self.queues[q].add_desc_chains(&raw, head).unwrap();
        self.next[q] += descs.len() as u16;
    }

    /// Queue `q`'s used index.
    fn used_idx(&self, q: u16) -> u16 {
        let used = self.queues[usize::from(q)].used_addr().0;
        self.mem().read_obj(GuestAddress(used + 2)).unwrap()
    }

    /// Inflates the pages `pfns` (one list in one descriptor).
    fn inflate(&mut self, pfns: &[u32]) {
        let raw: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem().write_slice(&raw, GuestAddress(LISTS)).unwrap();
        self.submit(INFLATE_QUEUE, &[(LISTS, raw.len() as u32, false)]);
        self.dev.process_queues();
    }

    fn memfd_blocks(&self) -> u64 {
        self.ram.memfd().metadata().unwrap().blocks()
    }

    /// Fills `pages` pages from `PAGES` (so the memfd holds them).
    fn touch(&self, pages: u64) {
        let data = vec![0xa5u8; (pages * PAGE_SIZE) as usize];
        self.mem().write_slice(&data, GuestAddress(PAGES)).unwrap();
    }
}

fn pfn(addr: u64) -> u32 {
    (addr / PAGE_SIZE) as u32
}

#[test]
fn the_target_is_in_the_config_space_and_the_driver_writes_actual() {
    let ram = GuestRam::new("balloon", 64).unwrap();
    let mut h = Harness::new(&ram, true);
    h.handle.set_target_mib(16);
    assert_eq!(h.irq.read().unwrap(), 1);
    assert_ne!(h.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    let mut word = [0u8; 4];
    h.dev.read_config(0, &mut word);
    assert_eq!(u32::from_le_bytes(word), 16 * 256, "num_pages");
    h.dev.write_config(4, &(8u32 * 256).to_le_bytes());
    assert_eq!(h.handle.actual_mib(), 8);
    // num_pages is not the driver's to write; odd widths are ignored.
    h.dev.write_config(0, &0u32.to_le_bytes());
    h.dev.write_config(4, &[1, 2]);
    assert_eq!((h.handle.target_mib(), h.handle.actual_mib()), (16, 8));
    h.handle.set_target_mib(16);
    assert!(h.irq.read().is_err(), "no change, no interrupt");
}

#[test]
fn inflated_pages_are_punched_out_of_the_memfd() {
    let ram = GuestRam::new("balloon", 64).unwrap();
    let mut h = Harness::new(&ram, false);
    h.touch(512);
    let full = h.memfd_blocks();
    // 256 pages (1 MiB) in two runs, listed out of order and with a duplicate.
    let mut pfns: Vec<u32> = (0..128).map(|i| pfn(PAGES) + i).collect();
    pfns.extend((256..384).rev().map(|i| pfn(PAGES) + i));
    pfns.push(pfn(PAGES));
    h.inflate(&pfns);
    assert_eq!(h.used_idx(INFLATE_QUEUE), 1);
    assert_eq!(h.handle.counters().inflated_bytes, 256 * PAGE_SIZE);
    assert!(
        h.memfd_blocks() <= full - 256 * PAGE_SIZE / 512 + BOOKKEEPING,
        "pages given back: {} of {full} blocks left",
        h.memfd_blocks()
    );
    let mut page = [0u8; 16];
    h.ram.memfd().read_exact_at(&mut page, PAGES).unwrap();
    assert_eq!(page, [0; 16]);
    h.ram
        .memfd()
        .read_exact_at(&mut page, PAGES + 128 * PAGE_SIZE)
        .unwrap();
    assert_eq!(page, [0xa5; 16], "a page not listed is kept");
    // Deflating takes nothing back from the host: the buffer is just returned.
    h.submit(DEFLATE_QUEUE, &[(LISTS, 4, false)]);
    h.dev.process_queues();
    assert_eq!(h.used_idx(DEFLATE_QUEUE), 1);
}

#[test]
fn bad_page_numbers_and_buffers_are_refused_and_counted() {
    let ram = GuestRam::new("balloon", 64).unwrap();
    let mut h = Harness::new(&ram, false);
    // Past guest memory, and the very last page number.
    h.inflate(&[pfn(64 << 20), u32::MAX]);
    assert_eq!(h.handle.counters().inflated_bytes, 0);
    assert_eq!(h.handle.counters().refused, 2);
    // A device-writable list, and a list of 6 bytes.
    h.submit(INFLATE_QUEUE, &[(LISTS, 8, true)]);
    h.submit(INFLATE_QUEUE, &[(LISTS, 6, false)]);
    // A buffer outside guest memory: the chain is malformed.
    h.submit(INFLATE_QUEUE, &[((64 << 20) - 2, 8, false)]);
    h.dev.process_queues();
    assert_eq!(h.used_idx(INFLATE_QUEUE), 4, "every chain went back");
    assert_eq!(h.handle.counters().refused, 5);
    assert_eq!(h.handle.counters().inflated_bytes, 0);
}

#[test]
fn reported_free_pages_are_given_back_and_bad_ranges_refused() {
    let ram = GuestRam::new("balloon", 64).unwrap();
    let mut h = Harness::new(&ram, true);
    h.touch(1024);
    let full = h.memfd_blocks();
    // Two 2 MiB free ranges, as Linux reports them (device-writable, over the pages).
    h.submit(
        REPORTING_QUEUE,
        &[(PAGES, 2 << 20, true), (PAGES + (2 << 20), 2 << 20, true)],
    );
    h.dev.process_queues();
    assert_eq!(h.used_idx(REPORTING_QUEUE), 1);
    assert_eq!(h.handle.counters().reported_bytes, 4 << 20);
    assert!(
        h.memfd_blocks() <= full - (4 << 20) / 512 + BOOKKEEPING,
        "pages given back: {} of {full} blocks left",
        h.memfd_blocks()
    );
    // Device-readable, unaligned: refused, nothing given back.
    h.submit(REPORTING_QUEUE, &[(PAGES, 4096, false)]);
    h.submit(REPORTING_QUEUE, &[(PAGES + 100, 4096, true)]);
    h.dev.process_queues();
    assert_eq!(h.handle.counters().refused, 2);
    assert_eq!(h.handle.counters().reported_bytes, 4 << 20);
}

#[test]
fn stats_are_read_and_the_buffer_goes_back_when_fresh_ones_are_asked() {
    let ram = GuestRam::new("balloon", 64).unwrap();
    let mut h = Harness::new(&ram, true);
    let mut raw = Vec::new();
    for (tag, value) in [(4u16, 100u64 << 20), (5, 64 << 20)] {
        raw.extend(tag.to_le_bytes());
        raw.extend(value.to_le_bytes());
    }
    raw.extend([9, 9, 9]); // a partial entry: ignored
    h.mem().write_slice(&raw, GuestAddress(LISTS)).unwrap();
    h.submit(STATS_QUEUE, &[(LISTS, raw.len() as u32, false)]);
    h.dev.process_queues();
    assert_eq!(
        h.handle.stats(),
        vec![
            BalloonStat {
                tag: 4,
                value: 100 << 20
            },
            BalloonStat {
                tag: 5,
                value: 64 << 20
            }
        ]
    );
    assert_eq!(
        h.used_idx(STATS_QUEUE),
        0,
        "held until fresh stats are asked"
    );
    h.handle.request_stats();
    EventHandler::handle(&mut h.dev, 1);
    assert_eq!(h.used_idx(STATS_QUEUE), 1);
    EventHandler::handle(&mut h.dev, 1);
    assert_eq!(h.used_idx(STATS_QUEUE), 1, "nothing held, nothing returned");
}

#[test]
fn a_driver_without_the_stats_queue_is_refused() {
    let ram = GuestRam::new("balloon", 64).unwrap();
    let mem = ram.memory();
    let mut dev = Balloon::new(BalloonConfig::default()).unwrap();
    assert_eq!(dev.avail_features() & F_REPORTING, 0);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let q = MockSplitQueue::new(mem, QUEUE_SIZE);
    let e = dev
        .activate(
            mem.clone(),
            VIRTIO_F_VERSION_1,
            vec![q.create_queue().unwrap(), q.create_queue().unwrap()],
            Interrupt::new(EventFdTrigger::new_nonblocking().unwrap()),
        )
        .unwrap_err();
    assert!(e.to_string().contains("statistics queue"), "{e}");
    assert_eq!(dev.process_queues(), 0);
}

#[test]
fn discard_refuses_what_is_not_whole_pages_of_one_region_and_drops_anonymous_pages() {
    let mem = crate::devices::virtio::test_utils::test_memory();
    mem.write_slice(&[7u8; 4096], GuestAddress(0x1000)).unwrap();
    discard(&mem, GuestAddress(0x1000), 4096).unwrap();
    let mut b = [1u8; 8];
    mem.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
    assert_eq!(
        b, [0; 8],
        "anonymous memory reads zeros after MADV_DONTNEED"
    );
    for (addr, len) in [(0x1001, 4096), (0x1000, 100), (0x1000, 0)] {
        assert!(matches!(
            discard(&mem, GuestAddress(addr), len),
            Err(discard::DiscardError::Unaligned { .. })
        ));
    }
    let size = crate::devices::virtio::test_utils::MEM_SIZE;
    for (addr, len) in [(size, 4096), (size - 4096, 8192), (u64::MAX - 4095, 4096)] {
        assert!(matches!(
            discard(&mem, GuestAddress(addr), len),
            Err(discard::DiscardError::Outside { .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Whatever descriptor table the guest builds on any queue, the device returns, never
    /// panics, and never gives back pages outside guest memory.
    #[test]
    fn any_descriptor_table_on_any_queue_is_handled_safely(
        table in arb_table(),
        queue in 0u16..4,
        fill in any::<u8>(),
    ) {
        let ram = GuestRam::new("balloon-prop", 64).unwrap();
        let mut h = Harness::new(&ram, true);
        h.mem().write_slice(&[fill; 0x1000], GuestAddress(0x10_0000)).unwrap();
        if h.queues[usize::from(queue)].build_multiple_desc_chains(&table).is_ok() {
            h.dev.process_queues();
        }
        let c = h.handle.counters();
        prop_assert!(c.inflated_bytes + c.reported_bytes <= 64 << 20);
    }
}
