//! Transport tests over `GuestMemoryMmap`, without KVM: the header and capabilities Linux's
//! virtio_pci looks for, feature negotiation and queue setup through the common
//! configuration, a virtio-blk read through the transport, MSI-X vector choice, masking and
//! pending bits (the vectors' eventfds read directly, the routes recorded), and a hostile
//! driver's writes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_irq_routing_entry;
use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::msix::{MsixWiring, NO_VECTOR};
use super::*;
use crate::devices::vfio::irq::{GsiRouter, RouteSink};
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::test_utils::{test_memory, QUEUE_SIZE};
use crate::devices::virtio::VIRTIO_F_VERSION_1;

const BAR: u64 = 0xe000_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[derive(Default)]
struct Recorder(Mutex<Vec<Vec<kvm_irq_routing_entry>>>);

impl RouteSink for Recorder {
    fn set_routes(&self, table: &[kvm_irq_routing_entry]) -> std::io::Result<()> {
        self.0.lock().unwrap().push(table.to_vec());
        Ok(())
    }
}

struct Rig {
    t: VirtioPci,
    mem: GuestMemory,
    routes: Arc<Recorder>,
    /// The vectors' eventfds (duplicates of the transport's).
    fds: Vec<EventFd>,
    /// The device's notify eventfd (a duplicate; the transport writes it only when built
    /// with `rig_watched`).
    notify: EventFd,
    _dir: tempfile::TempDir,
}

fn image(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("disk.img");
    // 8 sectors, sector n filled with byte n + 1.
    let data: Vec<u8> = (0..8u8).flat_map(|n| vec![n + 1; 512]).collect();
    std::fs::write(&p, data).unwrap();
    p
}

fn rig_with(read_only: bool) -> Rig {
    rig_opts(read_only, false)
}

/// A rig whose notifications write the device's notify eventfd (as on the device thread).
fn rig_watched() -> Rig {
    rig_opts(false, true)
}

fn rig_opts(read_only: bool, watched: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let block = Block::new(&BlockConfig {
        path: image(&dir),
        read_only,
        id: None,
    })
    .unwrap();
    let notify = block.notify_evt().try_clone().unwrap();
    let given = watched.then(|| notify.try_clone().unwrap());
    let mem = test_memory();
    let routes = Arc::new(Recorder::default());
    let router = Arc::new(GsiRouter::new(routes.clone()));
    let n = vectors_for(1);
    let gsis = router.allocate(n).unwrap();
    let fds: Vec<EventFd> = (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let dups = fds.iter().map(|f| f.try_clone().unwrap()).collect();
    let wiring = MsixWiring { router, gsis, fds };
    let mut t = VirtioPci::new(Box::new(block), mem.clone(), BAR, wiring, given).unwrap();
    // The guest's enumeration turned memory decoding on.
    t.config_write(4, &(cfg::COMMAND_MEMORY | 4).to_le_bytes());
    Rig {
        t,
        mem,
        routes,
        fds: dups,
        notify,
        _dir: dir,
    }
}

fn rig() -> Rig {
    rig_with(false)
}

fn rd(t: &mut VirtioPci, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    assert!(t.mmio_read(BAR + off, &mut b[..len]));
    u64::from_le_bytes(b)
}

fn wr(t: &mut VirtioPci, off: u64, len: usize, v: u64) {
    assert!(t.mmio_write(BAR + off, &v.to_le_bytes()[..len]));
}

fn status(t: &mut VirtioPci) -> u8 {
    rd(t, common::DEVICE_STATUS, 1) as u8
}

fn set_status(t: &mut VirtioPci, s: u32) {
    wr(t, common::DEVICE_STATUS, 1, u64::from(s));
}

/// Linux's vp_finalize_features path up to FEATURES_OK, acking `features`.
fn negotiate(t: &mut VirtioPci, features: u64) {
    set_status(t, status::ACKNOWLEDGE);
    set_status(t, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, common::DRIVER_FEATURE_SELECT, 4, 0);
    wr(t, common::DRIVER_FEATURE, 4, features & 0xffff_ffff);
    wr(t, common::DRIVER_FEATURE_SELECT, 4, 1);
    wr(t, common::DRIVER_FEATURE, 4, features >> 32);
    set_status(
        t,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

/// The queue at the mock driver's rings, 64-bit fields written as two halves (as Linux does).
fn set_up_queue(t: &mut VirtioPci, vq: &MockSplitQueue<'_, GuestMemory>, vector: u16) {
    wr(t, common::QUEUE_SELECT, 2, 0);
    wr(t, common::QUEUE_SIZE, 2, u64::from(QUEUE_SIZE));
    for (field, addr) in [
        (common::QUEUE_DESC, vq.desc_table_addr().0),
        (common::QUEUE_DRIVER, vq.avail_addr().0),
        (common::QUEUE_DEVICE, vq.used_addr().0),
    ] {
        wr(t, field, 4, addr & 0xffff_ffff);
        wr(t, field + 4, 4, addr >> 32);
    }
    wr(t, common::QUEUE_MSIX_VECTOR, 2, u64::from(vector));
    wr(t, common::QUEUE_ENABLE, 2, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

/// Writes MSI-X table entry `v`: address, data, mask.
fn program_vector(t: &mut VirtioPci, v: u64, data: u32, masked: bool) {
    let e = bar::MSIX_TABLE + v * 16;
    wr(t, e, 4, 0xfee0_0000);
    wr(t, e + 4, 4, 0);
    wr(t, e + 8, 4, u64::from(data));
    wr(t, e + 12, 4, u64::from(masked));
}

/// Turns MSI-X on in the capability (function mask as `mask_all`).
fn msix_enable(t: &mut VirtioPci, mask_all: bool) {
    let control: u16 = (1 << 15) | if mask_all { 1 << 14 } else { 0 };
    t.config_write(cfg::CAP_MSIX + 2, &control.to_le_bytes());
}

fn fired(fd: &EventFd) -> bool {
    fd.read().is_ok()
}

#[test]
fn the_header_and_capabilities_are_what_virtio_pci_looks_for() {
    let mut r = rig();
    let t = &mut r.t;
    assert_eq!(
        t.config_read(0),
        0x1042_1af4,
        "vendor 0x1af4, device 0x1040 + 2"
    );
    assert_eq!(t.config_read(2), 0x0100_0001, "storage class, revision 1");
    assert_eq!(t.config_read(3) >> 16 & 0x7f, 0, "a type-0 header");
    assert_eq!(t.config_read(15) >> 8 & 0xff, 0, "no interrupt pin");
    assert_ne!(t.config_read(1) & cfg::STATUS_CAP_LIST, 0);
    let space: Vec<u32> = (0..64).map(|reg| t.config_read(reg)).collect();
    let caps = crate::devices::vfio::caps(|reg| space[reg]);
    let ids: Vec<u8> = caps.iter().map(|c| c.1).collect();
    assert_eq!(
        ids,
        vec![9, 9, 9, 9, 0x11],
        "four virtio structures, then MSI-X"
    );
    let types: Vec<u32> = caps[..4]
        .iter()
        .map(|(at, _)| t.config_read(at / 4) >> 24)
        .collect();
    assert_eq!(types, vec![1, 3, 4, 2], "common, ISR, device, notify");
    // The notify capability: BAR 0 at 0x3000, multiplier 4.
    let n = cfg::CAP_NOTIFY / 4;
    assert_eq!(t.config_read(n + 1) & 0xff, 0);
    assert_eq!(t.config_read(n + 2), bar::NOTIFY as u32);
    assert_eq!(t.config_read(n + 4), bar::NOTIFY_MULTIPLIER);
    let (_, control, table, pba) = crate::devices::vfio::msix::find(|reg| space[reg]).unwrap();
    assert_eq!(control & 0x7ff, 1, "2 vectors: configuration and the queue");
    assert_eq!((table, pba), (bar::MSIX_TABLE as u32, bar::MSIX_PBA as u32));
    // BAR sizing: all ones written, the size read back; a garbage address keeps alignment.
    t.config_write(0x10, &u32::MAX.to_le_bytes());
    assert_eq!(t.config_read(4), !(BAR_SIZE as u32 - 1));
    t.config_write(0x10, &0xe123_4567u32.to_le_bytes());
    assert_eq!(t.bar_addr(), 0xe123_0000);
    t.config_write(0x10, &(BAR as u32).to_le_bytes());
    assert_eq!(t.bar_addr(), BAR);
}

#[test]
fn features_are_negotiated_through_the_common_configuration() {
    let mut r = rig();
    let t = &mut r.t;
    wr(t, common::DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(rd(t, common::DEVICE_FEATURE, 4), 1, "VERSION_1");
    assert_eq!(rd(t, common::NUM_QUEUES, 2), 1);
    // Acking a feature not offered (bit 0) drops it.
    negotiate(t, VIRTIO_F_VERSION_1 | 1 | (1 << 9));
    assert_eq!(t.acked_features(), VIRTIO_F_VERSION_1 | (1 << 9));
    assert_ne!(u32::from(status(t)) & status::FEATURES_OK, 0);
    // A legacy driver (no VERSION_1): FEATURES_OK does not stick.
    set_status(t, 0);
    assert_eq!(status(t), 0, "reset reads back 0");
    negotiate(t, 1 << 9);
    assert_eq!(u32::from(status(t)) & status::FEATURES_OK, 0);
}

/// A read of sector 3 through the queue: the data, the status, the used ring and the
/// queue's vector.
#[test]
fn a_block_read_goes_through_the_pci_transport_and_its_vector() {
    let mut r = rig();
    let mem = r.mem.clone();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    negotiate(&mut r.t, VIRTIO_F_VERSION_1);
    wr(&mut r.t, common::CONFIG_MSIX_VECTOR, 2, 0);
    set_up_queue(&mut r.t, &vq, 1);
    assert_eq!(
        rd(&mut r.t, common::QUEUE_MSIX_VECTOR, 2),
        1,
        "vector 1 taken"
    );
    set_status(&mut r.t, ALL_OK);
    assert!(r.t.is_activated(), "status {:#x}", status(&mut r.t));
    // The capacity in the device configuration: 8 sectors.
    assert_eq!(rd(&mut r.t, bar::DEVICE, 8), 8);
    program_vector(&mut r.t, 0, 0x40, false);
    program_vector(&mut r.t, 1, 0x41, false);
    msix_enable(&mut r.t, false);
    let last = r.routes.0.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.iter()
            .any(|e| e.type_ == kvm_bindings::KVM_IRQ_ROUTING_MSI
            // SAFETY: an MSI entry's union member is `msi`.
            && unsafe { e.u.msi.data } == 0x41),
        "vector 1 routed"
    );

    mem.write_obj(0u32, GuestAddress(HDR)).unwrap(); // IN
    mem.write_obj(3u64, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let chain = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, F_NEXT | F_WRITE, 2)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE, 0)),
    ];
    vq.add_desc_chains(&chain, 0).unwrap();
    wr(&mut r.t, bar::NOTIFY, 2, 0);
    let mut data = [0u8; 512];
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert!(data.iter().all(|b| *b == 4), "sector 3 holds 4s");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0, "S_OK");
    let used_idx: u16 = mem.read_obj(GuestAddress(vq.used_addr().0 + 2)).unwrap();
    assert_eq!(used_idx, 1);
    assert!(fired(&r.fds[1]), "the queue's vector");
    assert!(!fired(&r.fds[0]), "not the configuration's");
    // The ISR says a used ring changed, once.
    assert_eq!(rd(&mut r.t, bar::ISR, 1), 1);
    assert_eq!(rd(&mut r.t, bar::ISR, 1), 0, "reading cleared it");
}

#[test]
fn a_masked_vector_is_pending_and_delivered_when_unmasked() {
    let mut r = rig();
    let mem = r.mem.clone();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    negotiate(&mut r.t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut r.t, &vq, 1);
    set_status(&mut r.t, ALL_OK);
    program_vector(&mut r.t, 1, 0x41, true);
    msix_enable(&mut r.t, false);
    r.t.interrupt.signal_used_queue();
    assert!(!fired(&r.fds[1]), "masked: held");
    assert_eq!(
        rd(&mut r.t, bar::MSIX_PBA, 8),
        0b10,
        "pending bit of vector 1"
    );
    // Unmasked: delivered once, the pending bit clear.
    wr(&mut r.t, bar::MSIX_TABLE + 16 + 12, 4, 0);
    assert!(fired(&r.fds[1]));
    assert_eq!(rd(&mut r.t, bar::MSIX_PBA, 8), 0);
    // The function mask holds every vector the same way.
    msix_enable(&mut r.t, true);
    r.t.interrupt.signal_used_queue();
    assert!(!fired(&r.fds[1]));
    msix_enable(&mut r.t, false);
    assert!(fired(&r.fds[1]));
    // MSI-X off: nothing is delivered (no INTx pin), the ISR still says why.
    r.t.config_write(cfg::CAP_MSIX + 2, &0u16.to_le_bytes());
    r.t.interrupt.signal_used_queue();
    assert!(!fired(&r.fds[1]) && !fired(&r.fds[0]));
    assert_eq!(rd(&mut r.t, bar::ISR, 1), 1);
}

#[test]
fn a_configuration_change_uses_the_configuration_vector() {
    let mut r = rig();
    negotiate(&mut r.t, VIRTIO_F_VERSION_1);
    wr(&mut r.t, common::CONFIG_MSIX_VECTOR, 2, 0);
    program_vector(&mut r.t, 0, 0x40, false);
    program_vector(&mut r.t, 1, 0x41, false);
    msix_enable(&mut r.t, false);
    r.t.interrupt.signal_config_change();
    assert!(fired(&r.fds[0]) && !fired(&r.fds[1]));
    // No vector chosen for it: nothing fires.
    wr(
        &mut r.t,
        common::CONFIG_MSIX_VECTOR,
        2,
        u64::from(NO_VECTOR),
    );
    r.t.interrupt.signal_config_change();
    assert!(!fired(&r.fds[0]) && !fired(&r.fds[1]));
}

#[test]
fn a_hostile_driver_gets_refusals_not_a_panic() {
    let mut r = rig();
    let mem = r.mem.clone();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    // A vector past the table reads back as none (Linux then gives up MSI-X for it).
    wr(&mut r.t, common::CONFIG_MSIX_VECTOR, 2, 7);
    assert_eq!(
        rd(&mut r.t, common::CONFIG_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    negotiate(&mut r.t, VIRTIO_F_VERSION_1);
    // A queue that does not exist: its fields read 0, writes go nowhere.
    wr(&mut r.t, common::QUEUE_SELECT, 2, 9);
    assert_eq!(rd(&mut r.t, common::QUEUE_SIZE, 2), 0);
    wr(&mut r.t, common::QUEUE_SIZE, 2, 16);
    wr(&mut r.t, common::QUEUE_MSIX_VECTOR, 2, 1);
    assert_eq!(rd(&mut r.t, common::QUEUE_MSIX_VECTOR, 2), 0);
    // A size that is not a power of two, then DRIVER_OK: refused, needs a reset.
    set_up_queue(&mut r.t, &vq, 1);
    wr(&mut r.t, common::QUEUE_SIZE, 2, 100);
    set_status(&mut r.t, ALL_OK);
    assert!(!r.t.is_activated());
    assert_ne!(u32::from(status(&mut r.t)) & status::DEVICE_NEEDS_RESET, 0);
    // A ring outside guest memory: refused the same way.
    set_status(&mut r.t, 0);
    negotiate(&mut r.t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut r.t, &vq, 1);
    wr(&mut r.t, common::QUEUE_DESC + 4, 4, 0x10);
    set_status(&mut r.t, ALL_OK);
    assert!(!r.t.is_activated());
    // A notify for a queue that does not exist: claimed, and ignored.
    wr(&mut r.t, bar::NOTIFY + 4 * 7, 2, 7);
    // MSI-X table entries past the table: read 0, writes dropped.
    wr(&mut r.t, bar::MSIX_TABLE + 16 * 40, 4, 0xfee0_0000);
    assert_eq!(rd(&mut r.t, bar::MSIX_TABLE + 16 * 40, 4), 0);
    // Outside the BAR, or with memory decoding off: not this function's.
    let mut b = [0u8; 4];
    assert!(!r.t.mmio_read(BAR + BAR_SIZE, &mut b));
    r.t.config_write(4, &0u16.to_le_bytes());
    assert!(!r.t.mmio_read(BAR, &mut b));
    assert!(!r.t.mmio_write(BAR + bar::NOTIFY, &[0, 0]));
}

#[test]
fn a_notify_wakes_the_device_only_for_its_queue_once_running() {
    let mut r = rig_watched();
    let mem = r.mem.clone();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    // Before activation: ignored.
    wr(&mut r.t, bar::NOTIFY, 2, 0);
    assert!(r.notify.read().is_err(), "not woken before DRIVER_OK");
    negotiate(&mut r.t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut r.t, &vq, 1);
    set_status(&mut r.t, ALL_OK);
    assert!(r.t.is_activated());
    // A queue that does not exist: ignored.
    wr(&mut r.t, bar::NOTIFY + 4 * 7, 2, 7);
    assert!(r.notify.read().is_err(), "not woken for queue 7");
    wr(&mut r.t, bar::NOTIFY, 2, 0);
    assert_eq!(r.notify.read().unwrap(), 1, "woken for queue 0");
}

/// The doorbell in front of the function: a notify returns while another thread holds the
/// function (the device thread running its queues), and follows the BAR.
#[test]
fn a_notify_through_the_doorbell_does_not_wait_for_the_busy_function() {
    use super::doorbell::Doorbell;
    let r = rig();
    let notify = r.notify.try_clone().unwrap();
    let function = Arc::new(Mutex::new(r.t));
    let mut bell = Doorbell::new(function.clone(), notify.try_clone().unwrap(), 1);
    let busy = function.lock().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let ringer = std::thread::spawn(move || {
        assert!(bell.mmio_write(BAR + bar::NOTIFY, &0u16.to_le_bytes()));
        assert!(bell.mmio_write(BAR + bar::NOTIFY + 4 * 7, &7u16.to_le_bytes()));
        done_tx.send(()).unwrap();
        bell
    });
    done_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the notify waited for the function's lock");
    assert_eq!(
        notify.read().unwrap(),
        1,
        "rung once: queue 7 does not exist"
    );
    drop(busy);
    let mut bell = ringer.join().unwrap();
    // The BAR moved: the old address is not the function's any more, the new one rings.
    let moved = BAR + 2 * BAR_SIZE;
    bell.config_write(16, &(moved as u32).to_le_bytes());
    assert!(!bell.mmio_write(BAR + bar::NOTIFY, &0u16.to_le_bytes()));
    assert!(bell.mmio_write(moved + bar::NOTIFY, &0u16.to_le_bytes()));
    assert_eq!(notify.read().unwrap(), 1);
    // Memory decoding off: nothing claimed.
    bell.config_write(4, &0u16.to_le_bytes());
    assert!(!bell.mmio_write(moved + bar::NOTIFY, &0u16.to_le_bytes()));
    assert!(notify.read().is_err());
    // Everything else goes to the function.
    bell.config_write(4, &cfg::COMMAND_MEMORY.to_le_bytes());
    let mut b = [0u8; 4];
    assert!(bell.mmio_read(moved + common::DEVICE_FEATURE, &mut b));
    assert_eq!(bell.config_read(0), 0x1042_1af4);
}

#[test]
fn a_disk_opened_read_only_offers_ro() {
    let mut r = rig_with(true);
    wr(&mut r.t, common::DEVICE_FEATURE_SELECT, 4, 0);
    assert_ne!(
        rd(&mut r.t, common::DEVICE_FEATURE, 4) & (1 << 5),
        0,
        "VIRTIO_BLK_F_RO"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of BAR and configuration writes and reads, at any offset and width, is
    /// survived.
    #[test]
    fn any_access_sequence_is_survived(
        ops in prop::collection::vec(
            (any::<bool>(), any::<bool>(), 0u64..0x9000, 1usize..=8, any::<u64>()),
            1..64,
        )
    ) {
        let mut r = rig();
        for (config, write, off, len, v) in ops {
            let bytes = v.to_le_bytes();
            if config {
                let off = (off % 0x110) as usize;
                if write {
                    r.t.config_write(off, &bytes[..len.min(4)]);
                } else {
                    let _ = r.t.config_read(off / 4);
                }
            } else if write {
                let _ = r.t.mmio_write(BAR + off, &bytes[..len]);
            } else {
                let mut b = [0u8; 8];
                let _ = r.t.mmio_read(BAR + off, &mut b[..len]);
            }
        }
    }
}
