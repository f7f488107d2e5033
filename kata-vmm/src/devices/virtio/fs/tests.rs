//! virtio-fs through a mock driver's rings over guest memory: FUSE requests answered from the
//! shared directory, malformed chains dropped without a panic.

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{
    arb_table, test_memory, F_WRITE, QUEUE_SIZE as TEST_QUEUE,
};
use crate::devices::EventFdTrigger;

const F_NEXT: u16 = 1;
const REQ: u64 = 0x10_0000;
const OUT: u64 = 0x20_0000;
const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
const FUSE_MKNOD: u32 = 8;
const FUSE_MKDIR: u32 = 9;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;

struct Harness<'a> {
    mem: &'a GuestMemory,
    request_q: MockSplitQueue<'a, GuestMemory>,
    dev: Fs,
    next_desc: u16,
    /// The uid and gid of the guest's process in each request's header.
    creds: [u32; 2],
    /// The shared directory (taken out by a test whose thread cannot remove it).
    _dir: Option<tempfile::TempDir>,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), b"hi").unwrap();
        let mut dev = Fs::new(&FsConfig {
            tag: "kataShared".into(),
            shared_dir: dir.path().into(),
        })
        .unwrap();
        let hiprio = MockSplitQueue::create(mem, GuestAddress(0x80_0000), TEST_QUEUE);
        let request_q = MockSplitQueue::new(mem, TEST_QUEUE);
        let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
        dev.activate(
            mem.clone(),
            VIRTIO_F_VERSION_1,
            vec![
                hiprio.create_queue().unwrap(),
                request_q.create_queue().unwrap(),
            ],
            irq,
        )
        .unwrap();
        Harness {
            mem,
            request_q,
            dev,
            next_desc: 0,
            creds: [0, 0],
            _dir: Some(dir),
        }
    }

    /// Sends one FUSE request (header + `body`) with a 4 KiB answer buffer; returns the used
    /// length, the answer's error and its unique.
    fn request(&mut self, opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> (u32, i32, u64) {
        let mut msg = Vec::new();
        msg.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        msg.extend_from_slice(&opcode.to_le_bytes());
        msg.extend_from_slice(&unique.to_le_bytes());
        msg.extend_from_slice(&nodeid.to_le_bytes());
        msg.extend_from_slice(&self.creds[0].to_le_bytes());
        msg.extend_from_slice(&self.creds[1].to_le_bytes());
        msg.extend_from_slice(&[0; 8]); // pid, extlen + padding
        msg.extend_from_slice(body);
        self.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
        let head = self.next_desc;
        let raw = [
            RawDescriptor::from(SplitDescriptor::new(
                REQ,
                msg.len() as u32,
                F_NEXT,
                head + 1,
            )),
            RawDescriptor::from(SplitDescriptor::new(OUT, 4096, F_WRITE, 0)),
        ];
        self.request_q.add_desc_chains(&raw, head).unwrap();
        self.next_desc += 2;
        assert_eq!(self.dev.process(), 1);
        let used = self.request_q.used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let slot = u64::from(idx.wrapping_sub(1) % TEST_QUEUE);
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * slot + 4))
            .unwrap();
        let error: i32 = self.mem.read_obj(GuestAddress(OUT + 4)).unwrap();
        let unique: u64 = self.mem.read_obj(GuestAddress(OUT + 8)).unwrap();
        (len, error, unique)
    }

    fn init(&mut self) {
        let mut body = Vec::new();
        for v in [7u32, 31, 0x2_0000, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let (len, error, unique) = self.request(FUSE_INIT, 1, 0, &body);
        assert_eq!((error, unique), (0, 1));
        assert!(len > 16, "INIT answered with its body: {len}");
    }

    /// LOOKUP `hello` (unique 2), OPEN it read-only (3) and READ its first 2 bytes (4): the
    /// lookup's and the open's errors, and the read's error, used length and data.
    fn read_hello(&mut self) -> (i32, i32, (i32, u32, [u8; 2])) {
        let (_, lookup, _) = self.request(FUSE_LOOKUP, 2, 1, b"hello\0");
        let node: u64 = self.mem.read_obj(GuestAddress(OUT + 16)).unwrap();
        let (_, open, _) = self.request(FUSE_OPEN, 3, node, &le(&[libc::O_RDONLY as u32, 0]));
        let fh: u64 = self.mem.read_obj(GuestAddress(OUT + 16)).unwrap();
        let mut read_in = fh.to_le_bytes().to_vec();
        read_in.extend_from_slice(&0u64.to_le_bytes());
        read_in.extend_from_slice(&le(&[2, 0, 0, 0, 0, 0]));
        let (len, read, _) = self.request(FUSE_READ, 4, node, &read_in);
        let mut data = [0u8; 2];
        self.mem
            .read_slice(&mut data, GuestAddress(OUT + 16))
            .unwrap();
        (lookup, open, (read, len, data))
    }
}

#[test]
fn a_file_of_the_shared_directory_is_found_and_a_missing_one_is_not() {
    let mem = test_memory();
    let mut h = Harness::new(&mem);
    h.init();
    let (len, error, unique) = h.request(FUSE_LOOKUP, 2, 1, b"hello\0");
    assert_eq!((error, unique), (0, 2), "used {len}");
    let (_, error, _) = h.request(FUSE_LOOKUP, 3, 1, b"missing\0");
    assert_eq!(error, -libc::ENOENT);
    // `..` of the shared directory is the shared directory: the guest cannot walk out.
    let (_, error, _) = h.request(FUSE_LOOKUP, 4, 1, b"..\0");
    let nodeid: u64 = h.mem.read_obj(GuestAddress(OUT + 16)).unwrap();
    assert_eq!((error, nodeid), (0, 1));
    let (_, error, _) = h.request(FUSE_LOOKUP, 5, 1, b"../etc\0");
    assert_eq!(error, -libc::EINVAL, "a name with a slash");
}

fn le(fields: &[u32]) -> Vec<u8> {
    fields.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The device serves the guest's file system requests on the device thread's seccomp
/// allow-list (`vm/confine.rs`): lookups, open and read, mkdir and a fifo pass, while a device
/// node or a set-user-ID file the guest asks for is refused with EPERM and never made.
#[test]
fn requests_are_served_under_the_device_threads_allow_list() {
    use crate::vm::{ThreadConfinement, ThreadKind};
    let confinement = ThreadConfinement::new().unwrap();
    // Set up unconfined (as `VmBuilder::prepare` does), served confined.
    let answers = std::thread::spawn(move || {
        let mem = test_memory();
        let mut h = Harness::new(&mem);
        confinement
            .apply_to_this_thread(ThreadKind::Device)
            .unwrap();
        h.init();
        let (lookup, open, (read, len, data)) = h.read_hello();
        let mut mkdir_in = le(&[0o755, 0]);
        mkdir_in.extend_from_slice(b"dir\0");
        let (_, mkdir, _) = h.request(FUSE_MKDIR, 5, 1, &mkdir_in);
        let mknod = |h: &mut Harness, unique, mode: u32, rdev: u32, name: &[u8]| {
            let mut body = le(&[mode, rdev, 0, 0]);
            body.extend_from_slice(name);
            h.request(FUSE_MKNOD, unique, 1, &body).1
        };
        let fifo = mknod(&mut h, 6, libc::S_IFIFO | 0o600, 0, b"fifo\0");
        let chr = mknod(&mut h, 7, libc::S_IFCHR | 0o666, 0x103, b"null\0");
        let suid = mknod(
            &mut h,
            8,
            libc::S_IFREG | libc::S_ISUID | 0o755,
            0,
            b"suid\0",
        );
        let d = h._dir.as_ref().unwrap().path();
        let made = [d.join("dir").is_dir(), d.join("fifo").exists()];
        let refused = [d.join("null").exists(), d.join("suid").exists()];
        (
            lookup,
            open,
            (read, len, data),
            mkdir,
            fifo,
            chr,
            suid,
            made,
            refused,
        )
    })
    .join()
    .unwrap();
    let (lookup, open, read, mkdir, fifo, chr, suid, made, refused) = answers;
    assert_eq!((lookup, open, mkdir, fifo), (0, 0, 0, 0));
    assert_eq!(read, (0, 18, *b"hi"), "READ: error, used length, data");
    assert_eq!((chr, suid), (-libc::EPERM, -libc::EPERM));
    assert_eq!(made, [true, true], "the directory and the fifo");
    assert_eq!(
        refused,
        [false, false],
        "the device node and the set-user-ID file"
    );
}

/// The device serves the guest in the device thread's whole confinement (`vm/namespace.rs`:
/// an empty root, its own namespaces, six capabilities; then the filter), as root: through the
/// share's handle opened before it reads a file and, acting for the guest's user 1000, makes a
/// directory and a fifo that user owns (`SETUID`, `SETGID` kept).
#[test]
fn requests_are_served_in_the_device_threads_sandbox() {
    use crate::vm::{Sandboxed, ThreadConfinement, ThreadKind};
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid(2) has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the namespace sandbox needs root");
        return;
    }
    let confinement = ThreadConfinement::new().unwrap();
    let answers = std::thread::spawn(move || {
        let mem = test_memory();
        // Set up unconfined (as `VmBuilder::prepare` does), served confined.
        let mut h = Harness::new(&mem);
        let sandboxed = confinement.confine_this_thread(ThreadKind::Device).unwrap();
        let etc = std::fs::metadata("/etc").is_ok();
        h.init();
        let (lookup, open, (read, _, data)) = h.read_hello();
        h.creds = [1000, 1000];
        let mut mkdir_in = le(&[0o755, 0]);
        mkdir_in.extend_from_slice(b"dir\0");
        let (_, mkdir, _) = h.request(FUSE_MKDIR, 5, 1, &mkdir_in);
        let mut mknod_in = le(&[libc::S_IFIFO | 0o600, 0, 0, 0]);
        mknod_in.extend_from_slice(b"fifo\0");
        let (_, fifo, _) = h.request(FUSE_MKNOD, 6, 1, &mknod_in);
        // Removed by this thread, whose root holds no such path.
        let dir = h._dir.take().unwrap();
        (dir, (sandboxed, etc, lookup, open, read, data, mkdir, fifo))
    })
    .join()
    .unwrap();
    let (dir, (sandboxed, etc, lookup, open, read, data, mkdir, fifo)) = answers;
    assert_eq!(sandboxed, Sandboxed::Yes);
    assert!(
        !etc,
        "the host's /etc must be out of the device thread's reach"
    );
    assert_eq!((lookup, open, read, &data), (0, 0, 0, b"hi"));
    assert_eq!((mkdir, fifo), (0, 0));
    let d = dir.path();
    for made in [d.join("dir"), d.join("fifo")] {
        let m = std::fs::metadata(&made).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{}", made.display());
    }
}

/// Making the device leaves the caller's umask as it was (fuse-backend-rs' import sets 0, which
/// on the runtime's thread would be the whole process's).
#[test]
fn making_the_device_keeps_the_callers_umask() {
    let umask = std::thread::spawn(|| {
        // This thread's umask alone (the other tests' threads keep the process's).
        // SAFETY: unshare(2) with a flag only, on this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_FS) }, 0);
        // SAFETY: umask(2) swaps this thread's mask.
        unsafe { libc::umask(0o027) };
        let dir = tempfile::tempdir().unwrap();
        let _fs = Fs::new(&FsConfig {
            tag: "kataShared".into(),
            shared_dir: dir.path().into(),
        })
        .unwrap();
        // SAFETY: as above; read back by setting it again.
        unsafe { libc::umask(0o027) }
    })
    .join()
    .unwrap();
    assert_eq!(umask, 0o027);
}

#[test]
fn the_configuration_space_carries_the_tag_and_one_request_queue() {
    let mem = test_memory();
    let h = Harness::new(&mem);
    let mut tag = [0u8; TAG_LEN];
    h.dev.read_config(0, &mut tag);
    assert_eq!(&tag[..10], b"kataShared");
    assert!(tag[10..].iter().all(|b| *b == 0));
    let mut n = [0u8; 4];
    h.dev.read_config(TAG_LEN as u64, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1);
}

#[test]
fn bad_configuration_is_refused_before_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let e = Fs::new(&FsConfig {
        tag: "x".repeat(TAG_LEN + 1),
        shared_dir: dir.path().into(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("mount tag"), "{e}");
    let e = Fs::new(&FsConfig {
        tag: "kataShared".into(),
        shared_dir: dir.path().join("nope"),
    })
    .unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any descriptor table with any request bytes: answered or dropped, never a panic, and
    /// the device still serves a good request afterwards.
    #[test]
    fn any_chain_is_survived(table in arb_table(), head in prop::collection::vec(any::<u8>(), 48)) {
        let mem = test_memory();
        let mut h = Harness::new(&mem);
        mem.write_slice(&head, GuestAddress(0x10_0000)).unwrap();
        h.request_q.add_desc_chains(&table, 0).unwrap();
        h.dev.process();
        h.next_desc = 16;
        h.init();
    }
}
