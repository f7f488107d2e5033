//! virtio-blk through its queue, over a mock driver's rings and a temporary image file.

use super::*;
use crate::devices::virtio::test_utils::{arb_table, test_memory, F_WRITE, MEM_SIZE, QUEUE_SIZE};
use crate::devices::EventFdTrigger;
use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

const F_NEXT: u16 = 1;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

struct Harness<'a> {
    mem: &'a GuestMemory,
    vq: MockSplitQueue<'a, GuestMemory>,
    dev: Block,
    next_desc: u16,
    used_seen: u16,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn image(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("disk.img");
    // 8 sectors, sector n filled with byte n.
    let data: Vec<u8> = (0..8u8).flat_map(|n| vec![n; 512]).collect();
    std::fs::write(&p, data).unwrap();
    p
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory, read_only: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir);
        let mut dev = Block::new(&BlockConfig {
            path: path.clone(),
            read_only,
            id: Some("kata-disk-0".into()),
        })
        .unwrap();
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
        dev.activate(mem.clone(), 0, vec![vq.create_queue().unwrap()], irq)
            .unwrap();
        Harness {
            mem,
            vq,
            dev,
            next_desc: 0,
            used_seen: 0,
            _dir: dir,
            path,
        }
    }

    /// Queues a chain of (addr, len, write_only), linked in order; returns its head.
    fn submit(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let last = i == descs.len() - 1;
                let mut flags = if w { F_WRITE } else { 0 };
                if !last {
                    flags |= F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, head + i as u16 + 1))
            })
            .collect();
        self.vq.add_desc_chains(&raw, head).unwrap();
        self.next_desc += descs.len() as u16;
        head
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind.to_le(), GuestAddress(HDR)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs the queue; returns the (id, len) of the one new used element.
    fn run_one(&mut self) -> (u32, u32) {
        assert_eq!(self.dev.process_queue(), 1);
        let used = self.vq.used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(idx, self.used_seen + 1);
        let elem = used + 4 + 8 * u64::from(self.used_seen);
        self.used_seen += 1;
        (
            self.mem.read_obj(GuestAddress(elem)).unwrap(),
            self.mem.read_obj(GuestAddress(elem + 4)).unwrap(),
        )
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

fn std_request(h: &mut Harness<'_>, kind: u32, sector: u64, len: u32, write: bool) -> (u32, u32) {
    h.header(kind, sector);
    let head = h.submit(&[(HDR, 16, false), (DATA, len, write), (STATUS, 1, true)]);
    let (id, used) = h.run_one();
    assert_eq!(id, u32::from(head));
    (id, used)
}

#[test]
fn missing_image_is_an_error_naming_it() {
    let e = Block::new(&BlockConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: true,
        id: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
    let e = Block::new(&BlockConfig {
        path: "/tmp".into(),
        read_only: true,
        id: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("raw image"), "{e}");
    // A character device is neither.
    let e = Block::new(&BlockConfig {
        path: "/dev/null".into(),
        read_only: true,
        id: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("nor a block device"), "{e}");
}

/// A loop device over `image`, detached on drop.
struct Loop(PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// A host block device (a loop device over the test image, as a devmapper snapshot or a block
/// volume would be) is a disk: its size from a seek to its end, its sectors read.
#[test]
fn a_host_block_device_is_a_disk() {
    // SAFETY: geteuid(2) has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a loop device needs root");
        return;
    }
    let mem = test_memory();
    let mut h = Harness::new(&mem, true);
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&h.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "losetup: {out:?}");
    let dev = Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let mut b = Block::new(&BlockConfig {
        path: dev.0.clone(),
        read_only: true,
        id: None,
    })
    .unwrap();
    assert_eq!(b.disk_size(), 8 * 512);
    let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
    b.activate(mem.clone(), 0, vec![h.vq.create_queue().unwrap()], irq)
        .unwrap();
    h.dev = b;
    let (_, used) = std_request(&mut h, request::T_IN, 3, 512, true);
    assert_eq!((h.status(), used), (S_OK, 513));
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got.iter().all(|b| *b == 3));
    drop(dev);
}

#[test]
fn config_space_and_features() {
    let mem = test_memory();
    let h = Harness::new(&mem, true);
    let mut cap = [0u8; 8];
    h.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    assert_ne!(h.dev.avail_features() & VIRTIO_BLK_F_RO, 0);
    assert_eq!(h.dev.avail_features() & VIRTIO_BLK_F_DISCARD, 0);
    let rw = Harness::new(&mem, false);
    assert_eq!(rw.dev.avail_features() & VIRTIO_BLK_F_RO, 0);
    assert_ne!(rw.dev.avail_features() & VIRTIO_BLK_F_DISCARD, 0);
}

#[test]
fn read_write_flush_get_id_discard() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, false);
    // Read sectors 2 and 3.
    let (_, used) = std_request(&mut h, request::T_IN, 2, 1024, true);
    assert_eq!((h.status(), used), (S_OK, 1025));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got[..512].iter().all(|b| *b == 2) && got[512..].iter().all(|b| *b == 3));
    // Write sector 5.
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let (_, used) = std_request(&mut h, request::T_OUT, 5, 512, false);
    assert_eq!((h.status(), used), (S_OK, 1));
    assert!(h.file()[5 * 512..6 * 512].iter().all(|b| *b == 0xab));
    // Flush.
    h.header(request::T_FLUSH, 0);
    h.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(h.run_one().1, 1);
    assert_eq!(h.status(), S_OK);
    // GET_ID.
    let (_, used) = std_request(&mut h, request::T_GET_ID, 0, 20, true);
    assert_eq!((h.status(), used), (S_OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"kata-disk-0");
    // Discard sectors 6..8.
    mem.write_obj(6u64.to_le(), GuestAddress(DATA)).unwrap();
    mem.write_obj(2u32.to_le(), GuestAddress(DATA + 8)).unwrap();
    mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
    let (_, used) = std_request(&mut h, request::T_DISCARD, 0, 16, false);
    assert_eq!((h.status(), used), (S_OK, 1));
    let file = h.file();
    assert_eq!(file.len(), 8 * 512, "discard keeps the size");
    assert!(file[6 * 512..].iter().all(|b| *b == 0));
    assert!(file[4 * 512..5 * 512].iter().all(|b| *b == 4));
}

#[test]
fn read_only_disk_refuses_writes_and_discards() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, true);
    let before = h.file();
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    std_request(&mut h, request::T_OUT, 0, 512, false);
    assert_eq!(h.status(), S_IOERR);
    mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
    mem.write_obj(1u32.to_le(), GuestAddress(DATA + 8)).unwrap();
    std_request(&mut h, request::T_DISCARD, 0, 16, false);
    assert_eq!(h.status(), S_IOERR);
    assert_eq!(h.file(), before);
    // Reads and flushes still work.
    std_request(&mut h, request::T_IN, 7, 512, true);
    assert_eq!(h.status(), S_OK);
}

#[test]
fn out_of_range_and_unsupported_requests_get_a_status() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, false);
    std_request(&mut h, request::T_IN, 7, 1024, true);
    assert_eq!(h.status(), S_IOERR, "past the end");
    std_request(&mut h, request::T_IN, u64::MAX / 2, 512, true);
    assert_eq!(h.status(), S_IOERR, "an overflowing sector");
    h.header(13, 0);
    h.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
    h.run_one();
    assert_eq!(h.status(), S_UNSUPP);
}

#[test]
fn malformed_chains_get_ioerr_or_are_dropped() {
    let mem = test_memory();
    let mut h = Harness::new(&mem, false);
    let before = h.file();
    // Wrong direction of the data: IOERR, nothing read into a buffer the device must not
    // write.
    h.header(request::T_IN, 0);
    h.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    assert_eq!(h.run_one().1, 1);
    assert_eq!(h.status(), S_IOERR);
    // A zero-length header.
    h.header(request::T_IN, 0);
    h.submit(&[(HDR, 0, false), (DATA, 512, true), (STATUS, 1, true)]);
    h.run_one();
    assert_eq!(h.status(), S_IOERR);
    // No writable status descriptor at the end: dropped, used length 0.
    h.header(request::T_OUT, 0);
    h.submit(&[(HDR, 16, false), (DATA, 512, false)]);
    assert_eq!(h.run_one().1, 0);
    // Only a header: dropped.
    h.submit(&[(HDR, 16, false)]);
    assert_eq!(h.run_one().1, 0);
    // A data buffer outside guest memory (memory the device was not given): IOERR, not a
    // read that "succeeds" with the buffer unfilled.
    h.header(request::T_IN, 0);
    h.submit(&[
        (HDR, 16, false),
        (MEM_SIZE - 256, 512, true),
        (STATUS, 1, true),
    ]);
    assert_eq!(h.run_one().1, 1);
    assert_eq!(h.status(), S_IOERR);
    // A write from outside guest memory: IOERR, the disk unchanged (checked at the end).
    h.header(request::T_OUT, 0);
    h.submit(&[
        (HDR, 16, false),
        (MEM_SIZE - 256, 512, false),
        (STATUS, 1, true),
    ]);
    assert_eq!(h.run_one().1, 1);
    assert_eq!(h.status(), S_IOERR);
    // The status byte itself outside guest memory: dropped.
    h.header(request::T_IN, 0);
    h.submit(&[(HDR, 16, false), (DATA, 512, true), (MEM_SIZE, 1, true)]);
    assert_eq!(h.run_one().1, 0);
    // Too long: more segments than seg_max: IOERR.
    h.header(request::T_IN, 0);
    let mut long = vec![(HDR, 16, false)];
    long.extend((0..(SEG_MAX as u64 + 1)).map(|i| (DATA + i * 512, 512u32, true)));
    long.push((STATUS, 1, true));
    h.submit(&long);
    assert_eq!(h.run_one().1, 1);
    assert_eq!(h.status(), S_IOERR);
    // A loop: the last descriptor points back at the head.
    h.header(request::T_OUT, 0);
    let head = h.next_desc;
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, head + 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, F_NEXT, head)),
    ];
    h.vq.add_desc_chains(&raw, head).unwrap();
    h.next_desc += 2;
    assert_eq!(h.run_one().1, 0);
    assert_eq!(h.file(), before, "no malformed request wrote the disk");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any descriptor table, any header: the device answers or drops, never panics, and a
    /// read-only disk is never written.
    #[test]
    fn any_chain_is_survived(table in arb_table(), kind in 0u32..16, sector in any::<u64>()) {
        let mem = test_memory();
        let mut h = Harness::new(&mem, true);
        let before = h.file();
        mem.write_obj(kind, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(sector, GuestAddress(0x10_0008)).unwrap();
        h.vq.add_desc_chains(&table, 0).unwrap();
        h.dev.process_queue();
        prop_assert_eq!(h.file(), before);
    }
}

#[test]
fn the_event_loop_runs_the_queue_on_notify() {
    use crate::event_loop::EventLoop;
    use std::sync::Mutex;
    let mem = test_memory();
    let mut h = Harness::new(&mem, true);
    h.header(request::T_IN, 1);
    h.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    let dev = std::mem::replace(
        &mut h.dev,
        Block::new(&BlockConfig {
            path: h.path.clone(),
            read_only: true,
            id: None,
        })
        .unwrap(),
    );
    let dev = Arc::new(Mutex::new(dev));
    let mut lp = EventLoop::new().unwrap();
    lp.add(dev.clone()).unwrap();
    assert_eq!(lp.run_once(0).unwrap(), 0, "nothing before the notify");
    dev.lock().unwrap().notify_evt().write(1).unwrap();
    assert_eq!(lp.run_once(1000).unwrap(), 1);
    assert_eq!(h.status(), S_OK);
    let mut got = [0u8; 4];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [1; 4]);
}

#[test]
fn a_disk_that_cannot_punch_holes_answers_discard_with_unsupp() {
    let no = std::io::Error::from_raw_os_error(libc::EOPNOTSUPP);
    assert_eq!(discard_failed(&no), S_UNSUPP);
    let io = std::io::Error::from_raw_os_error(libc::EIO);
    assert_eq!(discard_failed(&io), S_IOERR);
}
