//! Disk and NIC hot-plug without KVM: the spare ports `build_bus` makes, irqfds recorded instead of
//! registered, the guest's side of the slot played by writing the port's slot control.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::kvm_irq_routing_entry;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::pci::root_port::{PCIE_OFFSET, SLOT_CONTROL_PCC};
use crate::devices::vfio::irq::RouteSink;

struct NoRoutes;

impl RouteSink for NoRoutes {
    fn set_routes(&self, _table: &[kvm_irq_routing_entry]) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records the irqfds asked for; refuses them while `.1` is set.
#[derive(Default)]
struct Irqfds(Mutex<Vec<u32>>, std::sync::atomic::AtomicBool);

impl IrqfdSink for Irqfds {
    fn register(&self, _fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.0.lock().unwrap().push(gsi);
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// Whether this process has `path` open.
fn is_open(path: &std::path::Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| l == path)
}

struct Rig {
    hp: VirtioHotplug,
    bus: Arc<Mutex<PciBus>>,
    irqfds: Arc<Irqfds>,
    serve: Arc<Mutex<RunTimeDevices>>,
    dir: tempfile::TempDir,
}

fn rig(ports: u8) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let (bus, _set) = crate::devices::vfio::build_bus(&[], ports, &mem)
        .unwrap()
        .unwrap();
    let bus = Arc::new(Mutex::new(bus));
    let irqfds = Arc::new(Irqfds::default());
    let serve = Arc::new(Mutex::new(RunTimeDevices::new().unwrap()));
    let router = Arc::new(GsiRouter::new(Arc::new(NoRoutes)));
    let hp = VirtioHotplug::new(bus.clone(), mem, irqfds.clone(), router, serve.clone());
    Rig {
        hp,
        bus,
        irqfds,
        serve,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn disk_config(r: &Rig, name: &str) -> BlockConfig {
    let path = r.dir.path().join(name);
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    BlockConfig {
        path,
        read_only: true,
        id: None,
    }
}

fn disk(r: &Rig, name: &str) -> HotDevice {
    HotDevice::Block(disk_config(r, name))
}

fn port(r: &Rig, slot: u8) -> Arc<Mutex<RootPort>> {
    lock(&r.bus)
        .root_ports()
        .iter()
        .find(|(s, _)| *s == slot)
        .unwrap()
        .1
        .clone()
}

/// The guest's pciehp turned the slot's power off.
fn guest_powers_off(p: &Mutex<RootPort>) {
    lock(p).write(PCIE_OFFSET + 0x18, &SLOT_CONTROL_PCC.to_le_bytes());
}

#[test]
fn a_disk_is_plugged_in_a_free_port_served_and_its_port_reused_after_unplug() {
    let r = rig(1);
    let at = r.hp.plug(&disk(&r, "a.img")).unwrap();
    assert_eq!((at.port_slot, at.secondary), (1, 1));
    assert_eq!(r.hp.free_ports(), 0);
    assert_eq!(r.hp.plugged(), vec![1]);
    assert_eq!(r.irqfds.0.lock().unwrap().len(), 2, "two vectors wired");
    assert_eq!(lock(&r.serve).len(), 1, "served on the device thread");
    // The function in the slot is the virtio-blk one, its BAR in the port's window.
    let p = port(&r, 1);
    let child = lock(&p).child().cloned().unwrap();
    assert_eq!(lock(&child).config_read(0), 0x1042_1af4);
    let bar = u64::from(lock(&child).config_read(4));
    let (start, end) = lock(&p).preset_window();
    assert!(
        bar >= start && bar + BAR_SIZE <= end,
        "{bar:#x} in {start:#x}..{end:#x}"
    );
    // No second port: refused naming pcie_root_port, nothing served.
    let e = r.hp.plug(&disk(&r, "b.img")).unwrap_err().to_string();
    assert!(e.contains("pcie_root_port") && e.contains("b.img"), "{e}");
    assert_eq!(lock(&r.serve).len(), 1);
    // Unplug: the guest released the slot; the port is free and reused.
    guest_powers_off(&p);
    r.hp.unplug(1, Duration::from_secs(1)).unwrap();
    assert_eq!(r.hp.free_ports(), 1);
    assert!(r.hp.plugged().is_empty());
    assert!(lock(&r.serve).is_empty());
    let at = r.hp.plug(&disk(&r, "b.img")).unwrap();
    assert_eq!(at.port_slot, 1);
}

#[test]
fn a_missing_disk_file_is_an_error_naming_it_and_plugs_nothing() {
    let r = rig(1);
    let c = BlockConfig {
        path: r.dir.path().join("nope.img"),
        read_only: false,
        id: None,
    };
    let e = r.hp.plug(&HotDevice::Block(c)).unwrap_err().to_string();
    assert!(e.contains("nope.img"), "{e}");
    assert_eq!(r.hp.free_ports(), 1);
    assert!(r.irqfds.0.lock().unwrap().is_empty());
    assert!(lock(&r.serve).is_empty());
}

#[test]
fn a_guest_that_keeps_the_disk_times_out_and_the_disk_stays() {
    let r = rig(1);
    r.hp.plug(&disk(&r, "a.img")).unwrap();
    let p = port(&r, 1);
    // Powered and in use, and 200 ms is no time for pciehp's 5 s after the attention button:
    // not pressed, the disk kept.
    lock(&p).write(PCIE_OFFSET + 0x18, &0u16.to_le_bytes());
    let e =
        r.hp.unplug(1, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("a.img") && e.contains("not pressed") && e.contains("at least 8s"),
        "{e}"
    );
    assert_eq!(r.hp.plugged(), vec![1]);
    assert_eq!(lock(&r.serve).len(), 1);
    // Unplugging a port with no disk names it.
    let e =
        r.hp.unplug(5, Duration::from_millis(10))
            .unwrap_err()
            .to_string();
    assert!(e.contains("00:05.0"), "{e}");
}

#[test]
fn a_vfio_port_taken_is_not_given_to_a_disk() {
    let r = rig(2);
    // Port 1 taken by another device (the pool is shared).
    struct Card;
    impl crate::devices::pci::PciDevice for Card {
        fn config_read(&mut self, _reg: usize) -> u32 {
            0x11e8_1234
        }
        fn config_write(&mut self, _offset: usize, _data: &[u8]) {}
        fn mmio_read(&mut self, _addr: u64, _data: &mut [u8]) -> bool {
            false
        }
        fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
            false
        }
    }
    assert!(lock(&port(&r, 1)).plug(Arc::new(Mutex::new(Card))).is_ok());
    let at = r.hp.plug(&disk(&r, "a.img")).unwrap();
    assert_eq!(at.port_slot, 2);
}

#[test]
fn a_disk_s_gsis_and_file_are_given_back_on_unplug_and_on_a_failed_plug() {
    use std::sync::atomic::Ordering::SeqCst;
    let r = rig(1);
    let c = disk_config(&r, "a.img");
    let d = HotDevice::Block(c.clone());
    // KVM refuses the first irqfd: nothing plugged, the GSIs and the file given back.
    r.irqfds.1.store(true, SeqCst);
    let e = r.hp.plug(&d).unwrap_err().to_string();
    assert!(e.contains("KVM_IRQFD"), "{e}");
    assert_eq!(r.hp.free_ports(), 1);
    assert!(!is_open(&c.path), "the image is closed");
    r.irqfds.1.store(false, SeqCst);
    let p = port(&r, 1);
    for _ in 0..3 {
        r.hp.plug(&d).unwrap();
        assert!(is_open(&c.path));
        guest_powers_off(&p);
        r.hp.unplug(1, Duration::from_secs(1)).unwrap();
        assert!(!is_open(&c.path), "the image is closed after the unplug");
    }
    // The same two GSIs every time: a VM plugs and unplugs without running out.
    assert_eq!(*r.irqfds.0.lock().unwrap(), [24, 24, 25, 24, 25, 24, 25]);
}

#[test]
fn concurrent_plugs_take_different_ports() {
    for _ in 0..20 {
        let r = rig(2);
        let (a, b) = (disk(&r, "a.img"), disk(&r, "b.img"));
        let go = std::sync::Barrier::new(2);
        let (pa, pb) = std::thread::scope(|s| {
            let ta = s.spawn(|| {
                go.wait();
                r.hp.plug(&a)
            });
            let tb = s.spawn(|| {
                go.wait();
                r.hp.plug(&b)
            });
            (ta.join().unwrap(), tb.join().unwrap())
        });
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_ne!(pa.port_slot, pb.port_slot);
        assert_eq!(r.hp.free_ports(), 0);
    }
}

/// How many of this process's descriptors are open on what `fd` is open on (a socket's
/// inode: the test's own end counts once).
fn opened(fd: &std::os::fd::OwnedFd) -> usize {
    use std::os::fd::AsRawFd;
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| *l == target)
        .count()
}

/// A NIC on one end of a datagram socket pair standing in for the tap (a tap queue reads and
/// writes a frame per datagram; only its vnet header ioctl is skipped: `Net::over`).
struct Nic {
    tap: Arc<std::os::fd::OwnedFd>,
    peer: std::os::unix::net::UnixDatagram,
}

fn nic() -> Nic {
    let (tap, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    Nic {
        tap: Arc::new(tap.into()),
        peer,
    }
}

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x09];

/// Plugs `n` as the hot-plug of a NIC does, the device built by `Net::over`.
fn plug_nic(r: &Rig, n: &Nic) -> Result<Plugged> {
    r.hp.plug_with("virtio-net tap1_kata", &|| {
        let net = Net::over("tap1_kata", &n.tap, MAC)?;
        let notify = dup_notify(net.notify_evt(), "virtio-net tap1_kata")?;
        Ok((Box::new(net) as Box<dyn VirtioDevice>, notify))
    })
}

#[test]
fn a_nic_is_plugged_served_and_unplugged_its_tap_closed_and_its_port_reused() {
    let r = rig(1);
    let n = nic();
    assert_eq!(opened(&n.tap), 1);
    let at = plug_nic(&r, &n).unwrap();
    assert_eq!((at.port_slot, at.secondary), (1, 1));
    assert_eq!(r.hp.plugged(), vec![1]);
    assert_eq!(opened(&n.tap), 2, "the device holds a duplicate of the tap");
    // A modern virtio-net function (1af4:1041), three vectors (two queues and the config).
    let p = port(&r, 1);
    let child = lock(&p).child().cloned().unwrap();
    assert_eq!(lock(&child).config_read(0), 0x1041_1af4);
    drop(child);
    assert_eq!(r.irqfds.0.lock().unwrap().len(), 3);
    // The tap is watched by the run-time loop: a frame arriving wakes the device thread.
    assert_eq!(lock(&r.serve).len(), 1);
    n.peer.send(&[0u8; 60]).unwrap();
    assert_eq!(lock(&r.serve).run_once(), 1, "the tap's arrival served");
    // One pool: no port left for a disk either, refused naming pcie_root_port.
    let e = r.hp.plug(&disk(&r, "a.img")).unwrap_err().to_string();
    assert!(e.contains("pcie_root_port") && e.contains("a.img"), "{e}");
    // Unplugged once the guest released the slot: not served, its tap duplicate closed.
    guest_powers_off(&p);
    r.hp.unplug(1, Duration::from_secs(1)).unwrap();
    assert!(lock(&r.serve).is_empty());
    assert_eq!(opened(&n.tap), 1, "the device's tap descriptor is closed");
    n.peer.send(&[0u8; 60]).unwrap();
    assert_eq!(lock(&r.serve).run_once(), 0, "no longer watched");
    // The port and the three GSIs are reused by the next NIC.
    let m = nic();
    assert_eq!(plug_nic(&r, &m).unwrap().port_slot, 1);
    assert_eq!(*r.irqfds.0.lock().unwrap(), [24, 25, 26, 24, 25, 26]);
}

#[test]
fn a_nic_the_guest_keeps_times_out_naming_its_tap_and_stays_plugged() {
    let r = rig(1);
    let n = nic();
    plug_nic(&r, &n).unwrap();
    let p = port(&r, 1);
    lock(&p).write(PCIE_OFFSET + 0x18, &0u16.to_le_bytes());
    let e =
        r.hp.unplug(1, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("tap1_kata") && e.contains("not pressed") && e.contains("at least 8s"),
        "{e}"
    );
    assert_eq!(r.hp.plugged(), vec![1]);
    assert_eq!(opened(&n.tap), 2, "still the guest's");
}

#[test]
fn a_descriptor_that_is_not_a_tap_is_refused_naming_it_and_plugs_nothing() {
    let r = rig(1);
    let n = nic();
    let e =
        r.hp.plug(&HotDevice::Net(NetConfig {
            name: "tap9_kata".into(),
            tap: n.tap.clone(),
            mac: MAC,
        }))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tap9_kata") && e.contains("TUNSETVNETHDRSZ"),
        "{e}"
    );
    assert_eq!(r.hp.free_ports(), 1);
    assert!(r.irqfds.0.lock().unwrap().is_empty());
    assert!(lock(&r.serve).is_empty());
    assert_eq!(opened(&n.tap), 1, "nothing kept of the descriptor");
}
