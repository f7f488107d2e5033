//! Transport tests: a driver's register sequence against a recording device.

use std::sync::Mutex;

use super::*;
use crate::devices::virtio::test_utils::*;
use crate::devices::virtio::ActivateError;
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::devices::EventFdTrigger;

#[derive(Default)]
struct Record {
    activated: Option<(u64, usize)>,
    notified: Vec<u16>,
    resets: usize,
}

struct Dummy(Arc<Mutex<Record>>);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn name(&self) -> &'static str {
        "dummy"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 0b101
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(b"abcdefgh", offset, data);
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        acked: u64,
        queues: Vec<Queue>,
        _irq: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        self.0.lock().unwrap().activated = Some((acked, queues.len()));
        Ok(())
    }
    fn queue_notify(&mut self, index: u16) {
        self.0.lock().unwrap().notified.push(index);
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
}

fn transport() -> (MmioTransport, Arc<Mutex<Record>>, GuestMemory) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let mem = test_memory();
    let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
    let t = MmioTransport::new(Box::new(Dummy(rec.clone())), mem.clone(), irq).unwrap();
    (t, rec, mem)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// The Linux driver's sequence up to FEATURES_OK, acking `features`.
fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, features as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

/// Sets queue `sel` up at `base` (descriptor table, avail ring, used ring of QUEUE_SIZE).
fn set_up_queue(t: &mut MmioTransport, sel: u32, base: u64) {
    w(t, reg::QUEUE_SEL, sel);
    w(t, reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
    w(t, reg::QUEUE_DESC_LOW, base as u32);
    w(t, reg::QUEUE_DESC_HIGH, 0);
    w(t, reg::QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
    w(t, reg::QUEUE_AVAIL_HIGH, 0);
    w(t, reg::QUEUE_USED_LOW, (base + 0x2000) as u32);
    w(t, reg::QUEUE_USED_HIGH, 0);
    w(t, reg::QUEUE_READY, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_registers() {
    let (mut t, _, _) = transport();
    assert_eq!(r(&mut t, reg::MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, reg::VERSION), 2);
    assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0b101);
    w(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    w(&mut t, reg::QUEUE_SEL, 7);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
    // No shared memory regions (Linux checks for a length of all ones).
    assert_eq!(r(&mut t, reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(r(&mut t, reg::SHM_LEN_LOW + 4), u32::MAX);
    let mut cfg = [0u8; 4];
    t.read(reg::CONFIG + 6, &mut cfg);
    assert_eq!(&cfg, b"gh\0\0");
    // A 2-byte access to a common register reads 0 and a 1-byte write is ignored.
    let mut two = [0xffu8; 2];
    t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    t.write(reg::STATUS, &[1]);
    assert_eq!(t.device_status(), 0);
}

#[test]
fn full_negotiation_activates_and_notifies() {
    let (mut t, rec, _) = transport();
    // Bit 1 was not offered: it is dropped.
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b111);
    assert_eq!(t.acked_features(), VIRTIO_F_VERSION_1 | 0b101);
    set_up_queue(&mut t, 0, 0x10_0000);
    set_up_queue(&mut t, 1, 0x20_0000);
    w(&mut t, reg::QUEUE_NOTIFY, 0);
    assert!(
        rec.lock().unwrap().notified.is_empty(),
        "no notify before DRIVER_OK"
    );
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_activated());
    assert_eq!(t.device_status(), ALL_OK);
    assert_eq!(
        rec.lock().unwrap().activated,
        Some((VIRTIO_F_VERSION_1 | 0b101, 2))
    );
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    w(&mut t, reg::QUEUE_NOTIFY, 9);
    assert_eq!(rec.lock().unwrap().notified, vec![1]);
    // Queue registers are frozen after DRIVER_OK.
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    // Reset.
    w(&mut t, reg::STATUS, 0);
    assert_eq!(rec.lock().unwrap().resets, 1);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.acked_features(), 0);
}

#[test]
fn a_resumed_transport_notifies_each_queue_once_only_when_activated() {
    let (mut t, rec, _) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut t, 0, 0x10_0000);
    set_up_queue(&mut t, 1, 0x20_0000);
    // Not activated yet: a resume has no queue to kick.
    t.resumed();
    assert!(rec.lock().unwrap().notified.is_empty());
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_activated());
    // Activated: a notify lost between the saved VM's device thread and its vCPUs is made up.
    t.resumed();
    assert_eq!(rec.lock().unwrap().notified, vec![0, 1]);
}

#[test]
fn a_legacy_driver_does_not_get_features_ok() {
    let (mut t, _, _) = transport();
    negotiate(&mut t, 0b1);
    assert_eq!(t.device_status() & status::FEATURES_OK, 0);
    // And cannot set queues up or activate.
    set_up_queue(&mut t, 0, 0x10_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn features_cannot_change_after_features_ok() {
    let (mut t, _, _) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w(&mut t, reg::DRIVER_FEATURES, 0b101);
    assert_eq!(t.acked_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn bad_queues_need_a_reset_not_a_panic() {
    // A queue outside guest memory.
    let (mut t, rec, _) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut t, 0, 0x10_0000);
    set_up_queue(&mut t, 1, MEM_SIZE - 0x1000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
    assert!(rec.lock().unwrap().activated.is_none());
    // A size that is not a power of two, and one above the maximum.
    for size in [3u32, u32::from(QUEUE_SIZE) * 2, 0x1_0000 + 256] {
        let (mut t, _, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        set_up_queue(&mut t, 0, 0x10_0000);
        set_up_queue(&mut t, 1, 0x20_0000);
        w(&mut t, reg::QUEUE_NUM, size);
        w(&mut t, reg::STATUS, ALL_OK);
        assert!(!t.is_activated(), "size {size}");
    }
    // A queue never made ready.
    let (mut t, _, _) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut t, 0, 0x10_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(!t.is_activated());
    // Clearing status bits without a reset.
    let (mut t, _, _) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _, _) = transport();
    t.interrupt.signal_used_queue();
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 1);
    assert_eq!(t.interrupt.line().eventfd().read().unwrap(), 1);
    w(&mut t, reg::INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn slots_and_their_cmdline_fragment() {
    let s = MmioSlot::nth(0).unwrap();
    assert_eq!(s.cmdline_fragment(), "virtio_mmio.device=4K@0xd0000000:5");
    let s2 = MmioSlot::nth(2).unwrap();
    assert_eq!(s2.cmdline_fragment(), "virtio_mmio.device=4K@0xd0002000:7");
    let mut c = crate::loader::cmdline("console=ttyS0").unwrap();
    s.add_to_cmdline(&mut c).unwrap();
    s2.add_to_cmdline(&mut c).unwrap();
    assert_eq!(
        c.as_cstring().unwrap().to_str().unwrap(),
        "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0002000:7"
    );
    assert!(MmioSlot::nth(18).is_ok());
    let e = MmioSlot::nth(19).unwrap_err();
    assert!(e.to_string().contains("at most 19"), "{e}");
}

proptest::proptest! {
    /// Any sequence of register writes leaves the transport answering, never panicking.
    #[test]
    fn any_register_writes_are_survived(
        ops in proptest::collection::vec((0u64..0x120, proptest::prelude::any::<u32>(), 0usize..6), 0..64)
    ) {
        let (mut t, _, _) = transport();
        for (off, v, len) in ops {
            let bytes = v.to_le_bytes();
            let len = len.min(4);
            t.write(off & !3, &bytes[..len]);
            let mut d = [0u8; 4];
            t.read(off, &mut d[..len]);
        }
    }
}

#[test]
fn the_bus_routes_by_window() {
    let (t, _, _) = transport();
    let mut bus = MmioBus::default();
    let slot = MmioSlot::nth(1).unwrap();
    bus.insert(slot, Arc::new(std::sync::Mutex::new(t)));
    let mut d = [0u8; 4];
    assert!(bus.read(slot.base.0, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x7472_6976);
    assert!(bus.read(slot.base.0 + reg::DEVICE_ID, &mut d));
    assert_eq!(u32::from_le_bytes(d), 42);
    assert!(!bus.read(slot.base.0 - 4, &mut d), "below the window");
    assert!(!bus.read(slot.base.0 + MMIO_WINDOW_SIZE, &mut d), "past it");
    assert!(bus.write(slot.base.0 + reg::STATUS, &1u32.to_le_bytes()));
    assert!(!bus.write(0, &[0; 4]));
}

/// A vsock transport on `mem` over a new socket in `dir`.
fn vsock_transport(mem: &GuestMemory, dir: &std::path::Path, name: &str) -> MmioTransport {
    let dev =
        crate::devices::virtio::vsock::Vsock::new(&crate::devices::virtio::vsock::VsockConfig {
            guest_cid: 3,
            uds_path: dir.join(name),
        })
        .unwrap();
    let irq = Interrupt::new(EventFdTrigger::new_nonblocking().unwrap());
    MmioTransport::new(Box::new(dev), mem.clone(), irq).unwrap()
}

#[test]
fn a_snapshot_restores_the_registers_and_queues_and_a_vsock_resets_the_guests_connections() {
    use vm_memory::{Bytes, GuestAddress};
    let mem = test_memory();
    let dir = tempfile::tempdir().unwrap();
    let mut t = vsock_transport(&mem, dir.path(), "template.sock");
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    for q in 0..3 {
        set_up_queue(&mut t, q, 0x10_0000 * (u64::from(q) + 1));
    }
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(t.is_activated());
    // The guest gives the event queue (2, at 0x30_0000) one 8-byte buffer.
    let evq = 0x30_0000u64;
    mem.write_obj(0x50_0000u64, GuestAddress(evq)).unwrap();
    mem.write_obj(8u32, GuestAddress(evq + 8)).unwrap();
    mem.write_obj(F_WRITE, GuestAddress(evq + 12)).unwrap();
    mem.write_obj(0xffff_ffffu32, GuestAddress(0x50_0000))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(evq + 0x1000 + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(evq + 0x1000 + 2)).unwrap();
    let saved = t.snapshot_state().unwrap();
    assert_eq!(saved.device_type, 19);
    assert!(saved.activated);
    assert_eq!(saved.queues.len(), 3);
    assert_eq!(saved.queues[2].avail_ring, evq + 0x1000);
    drop(t);

    // A new VM's device over its own socket takes the state; nothing is sent until resumed.
    let mut clone = vsock_transport(&mem, dir.path(), "clone.sock");
    clone.restore_snapshot(&saved).unwrap();
    assert!(clone.is_activated());
    assert_eq!(clone.device_status(), ALL_OK);
    assert_eq!(clone.snapshot_state().unwrap(), saved);
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(evq + 0x2000 + 2)).unwrap(),
        0
    );
    clone.resumed();
    // One used event buffer holding VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (0), 4 bytes long.
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(evq + 0x2000 + 2)).unwrap(),
        1
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(evq + 0x2000 + 8)).unwrap(),
        4
    );
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x50_0000)).unwrap(), 0);
    assert_eq!(
        r(&mut clone, reg::INTERRUPT_STATUS) & 1,
        1,
        "the guest is told"
    );
    let after = clone.snapshot_state().unwrap();
    assert_eq!(
        (after.queues[2].next_avail, after.queues[2].next_used),
        (1, 1)
    );
}

#[test]
fn a_snapshot_is_refused_into_another_device_or_for_a_device_it_does_not_save() {
    let mem = test_memory();
    let dir = tempfile::tempdir().unwrap();
    let mut v = vsock_transport(&mem, dir.path(), "v.sock");
    let saved = v.snapshot_state().unwrap();
    assert!(!saved.activated);
    // The dummy device saves nothing: refused, naming it.
    let (dummy, _, _) = transport();
    let e = dummy.snapshot_state().unwrap_err().to_string();
    assert!(e.contains("dummy") && e.contains("not saved"), "{e}");
    // A vsock state into the dummy's slot: another device type.
    let (mut dummy, _, _) = transport();
    let e = dummy.restore_snapshot(&saved).unwrap_err().to_string();
    assert!(e.contains("device set differs"), "{e}");
    // Hostile file: a queue size the queue refuses, features never offered.
    let mut bad = saved.clone();
    bad.queues[0].size = 3;
    bad.queues[0].ready = true;
    assert!(v.restore_snapshot(&bad).is_err());
    let mut bad = saved.clone();
    bad.acked_features = 1 << 60;
    let e = v.restore_snapshot(&bad).unwrap_err().to_string();
    assert!(e.contains("does not offer"), "{e}");
    let mut bad = saved;
    bad.queues.pop();
    assert!(v.restore_snapshot(&bad).is_err());
}
