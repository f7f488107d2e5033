//! The emulated configuration space and BARs over a fake device: a temp file whose first 256
//! bytes are the config region and whose BAR regions follow.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::pci::{PciBus, PCI_MMIO_START};

const BAR0_OFFSET: u64 = 0x10_0000;
const BAR0_SIZE: u64 = 0x10_0000;
const BAR2_OFFSET: u64 = 0x20_0000;
const BAR2_SIZE: u64 = 0x4000;

/// An edu-like function: 1234:11e8, header type 0x80 (multi-function), a capability list at
/// 0x40, interrupt pin A; BAR0 32-bit memory (1 MiB), BAR2/3 a 64-bit prefetchable BAR
/// (16 KiB), BAR4 an I/O BAR (32 bytes).
fn fake() -> (tempfile::NamedTempFile, [RegionInfo; 6], RegionInfo) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut cfg = [0u8; 256];
    cfg[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
    cfg[4..8].copy_from_slice(&0x0010_0000u32.to_le_bytes()); // status: capability list
    cfg[8..12].copy_from_slice(&0x00ff_0010u32.to_le_bytes());
    cfg[14] = 0x80;
    cfg[0x10..0x14].copy_from_slice(&0u32.to_le_bytes());
    cfg[0x18..0x1c].copy_from_slice(&0xcu32.to_le_bytes());
    cfg[0x20..0x24].copy_from_slice(&1u32.to_le_bytes());
    cfg[0x30..0x34].copy_from_slice(&0xfffe_0000u32.to_le_bytes());
    cfg[0x34] = 0x40;
    cfg[0x3d] = 1;
    f.as_file().write_all_at(&cfg, 0).unwrap();
    f.as_file().set_len(BAR2_OFFSET + BAR2_SIZE).unwrap();
    f.as_file()
        .write_all_at(&0x0100_00edu32.to_le_bytes(), BAR0_OFFSET)
        .unwrap();
    let mut bars = [RegionInfo::default(); 6];
    bars[0] = RegionInfo {
        offset: BAR0_OFFSET,
        size: BAR0_SIZE,
    };
    bars[2] = RegionInfo {
        offset: BAR2_OFFSET,
        size: BAR2_SIZE,
    };
    bars[4] = RegionInfo {
        offset: 0x30_0000,
        size: 0x20,
    };
    let config = RegionInfo {
        offset: 0,
        size: 256,
    };
    (f, bars, config)
}

fn device(f: &tempfile::NamedTempFile, bars: [RegionInfo; 6], config: RegionInfo) -> VfioPci {
    let file = Arc::new(f.reopen().unwrap());
    VfioPci::new(
        "0000:00:03.0",
        file,
        config,
        bars,
        &mut BarAllocator::default(),
    )
    .unwrap()
}

#[test]
fn the_header_passes_through_with_capabilities_rom_and_interrupts_hidden() {
    let (f, bars, config) = fake();
    let mut d = device(&f, bars, config);
    assert_eq!(d.config_read(0), 0x11e8_1234);
    assert_eq!(
        d.config_read(1) & STATUS_CAP_LIST,
        0,
        "capability list hidden"
    );
    assert_eq!(d.config_read(3) >> 16 & 0xff, 0, "single function");
    assert_eq!(d.config_read(12), 0, "no expansion ROM");
    assert_eq!(d.config_read(13), 0, "no capability pointer");
    assert_eq!(d.config_read(15) >> 8 & 0xff, 0, "no interrupt pin");
    d.config_write(0x3c, &[11]);
    assert_eq!(
        d.config_read(15) & 0xff,
        11,
        "the line is scratch for the guest"
    );
    assert_eq!(d.config_read(64), 0xffff_ffff, "past the header");
}

#[test]
fn bars_are_placed_sized_and_programmed() {
    let (f, bars, config) = fake();
    let mut d = device(&f, bars, config);
    // Placed by the VMM: BAR0 at the window's start, BAR2 after it, naturally aligned.
    assert_eq!(d.config_read(4), PCI_MMIO_START as u32);
    let bar2 = d.config_read(6);
    assert_eq!(bar2 & 0xf, 0xc, "64-bit prefetchable flags kept");
    assert_eq!(u64::from(bar2 & !0xf) % BAR2_SIZE, 0);
    assert_eq!(d.config_read(7), 0, "upper half below 4 GiB");
    assert_eq!(d.config_read(8), 0, "the I/O BAR is not exposed");
    // Sizing: all ones reads back the size mask with the flags.
    d.config_write(0x10, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(d.config_read(4), !(BAR0_SIZE as u32 - 1));
    d.config_write(0x18, &0xffff_ffffu32.to_le_bytes());
    d.config_write(0x1c, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(d.config_read(6), !(BAR2_SIZE as u32 - 1) | 0xc);
    assert_eq!(d.config_read(7), 0xffff_ffff);
    d.config_write(0x20, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(d.config_read(8), 0);
    // Programming: the guest's address, low bits masked; a byte write merges.
    d.config_write(0x10, &0xe120_0123u32.to_le_bytes());
    assert_eq!(d.config_read(4), 0xe120_0000);
    d.config_write(0x13, &[0xe3]);
    assert_eq!(d.config_read(4), 0xe320_0000);
    d.config_write(0x1c, &1u32.to_le_bytes());
    d.config_write(0x18, &0x4000u32.to_le_bytes());
    assert_eq!(d.bar_addresses()[1].1, 0x1_0000_4000);
    // Nothing reached the device's own BAR registers.
    let mut raw = [0u8; 4];
    f.as_file().read_exact_at(&mut raw, 0x10).unwrap();
    assert_eq!(raw, [0; 4]);
}

#[test]
fn bar_accesses_reach_the_region_only_with_memory_decoding_on() {
    let (f, bars, config) = fake();
    let mut d = device(&f, bars, config);
    let bar0 = PCI_MMIO_START;
    let mut id = [0u8; 4];
    assert!(!d.mmio_read(bar0, &mut id), "decoding off");
    // The command register is forwarded to the device.
    d.config_write(4, &[0x06]);
    let mut cmd = [0u8; 2];
    f.as_file().read_exact_at(&mut cmd, 4).unwrap();
    assert_eq!(cmd, [0x06, 0]);
    assert!(d.mmio_read(bar0, &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x0100_00ed);
    assert!(d.mmio_write(bar0 + 8, &5u32.to_le_bytes()));
    let mut v = [0u8; 4];
    f.as_file().read_exact_at(&mut v, BAR0_OFFSET + 8).unwrap();
    assert_eq!(u32::from_le_bytes(v), 5);
    // Past the BAR's end, or straddling it: not this device's.
    // (BAR2 sits right after BAR0.)
    assert!(!d.mmio_read(bar0 + BAR0_SIZE + BAR2_SIZE, &mut id));
    assert!(!d.mmio_read(bar0 + BAR0_SIZE - 2, &mut id));
    // Moved by the guest: the old address is free, the new one decodes.
    d.config_write(0x10, &0xe800_0000u32.to_le_bytes());
    assert!(!d.mmio_read(bar0, &mut id));
    assert!(d.mmio_read(0xe800_0000, &mut id));
}

#[test]
fn on_the_bus_the_guest_finds_the_bridge_and_the_device() {
    let (f, bars, config) = fake();
    let d = device(&f, bars, config);
    let mut bus = PciBus::new();
    assert_eq!(bus.add(Arc::new(Mutex::new(d))), Some(1));
    let read = |bus: &mut PciBus, slot: u32, reg: u32| {
        bus.pio_write(0xcf8, &(0x8000_0000 | slot << 11 | reg << 2).to_le_bytes());
        let mut d = [0u8; 4];
        bus.pio_read(0xcfc, &mut d);
        u32::from_le_bytes(d)
    };
    assert_eq!(read(&mut bus, 0, 2) >> 16, 0x0600, "host bridge class");
    assert_eq!(read(&mut bus, 1, 0), 0x11e8_1234);
    assert_eq!(read(&mut bus, 2, 0), 0xffff_ffff, "empty slot");
    // Enable memory decoding through the bus (a 16-bit write), then a BAR read.
    bus.pio_write(0xcf8, &(0x8000_0000u32 | 1 << 11 | 4).to_le_bytes());
    bus.pio_write(0xcfc, &2u16.to_le_bytes());
    let mut id = [0u8; 4];
    assert!(bus.mmio_read(PCI_MMIO_START, &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x0100_00ed);
    assert!(!bus.mmio_read(0xd000_0000, &mut id));
}

#[test]
fn behind_a_root_port_the_function_is_01_00_with_its_bars_in_the_ports_window() {
    use crate::devices::pci::root_port::RootPort;
    let (f, bars, config) = fake();
    let window = (0xe200_0000, 0xe200_0000 + ROOT_PORT_WINDOW);
    let mut alloc = BarAllocator::within(window.0, window.1);
    let d = VfioPci::new(
        "0000:00:03.0",
        Arc::new(f.reopen().unwrap()),
        config,
        bars,
        &mut alloc,
    )
    .unwrap();
    let mut bus = PciBus::new();
    let port = Arc::new(Mutex::new(RootPort::new(1, 1, window)));
    port.lock().unwrap().cold_plug(Arc::new(Mutex::new(d)));
    assert_eq!(bus.add_root_port(port), Some(1));
    let read = |bus: &mut PciBus, b: u32, slot: u32, reg: u32| {
        bus.pio_write(
            0xcf8,
            &(0x8000_0000 | b << 16 | slot << 11 | reg << 2).to_le_bytes(),
        );
        let mut d = [0u8; 4];
        bus.pio_read(0xcfc, &mut d);
        u32::from_le_bytes(d)
    };
    assert_eq!(read(&mut bus, 0, 1, 2) >> 16, 0x0604, "the port");
    assert_eq!(
        read(&mut bus, 1, 0, 0),
        0x11e8_1234,
        "the function at 01:00.0"
    );
    assert_eq!(read(&mut bus, 0, 2, 0), 0xffff_ffff);
    let bar0 = read(&mut bus, 1, 0, 4) & !0xf;
    assert_eq!(u64::from(bar0), window.0, "BAR0 first in the window");
    // Memory decoding on at the function: the BAR answers through the port's window.
    bus.pio_write(0xcf8, &(0x8001_0000u32 | 4).to_le_bytes());
    bus.pio_write(0xcfc, &2u16.to_le_bytes());
    let mut id = [0u8; 4];
    assert!(bus.mmio_read(window.0, &mut id));
    assert_eq!(u32::from_le_bytes(id), 0x0100_00ed);
    // A BAR bigger than the window is refused naming the window.
    let mut huge = bars;
    huge[0].size = ROOT_PORT_WINDOW * 2;
    let e = VfioPci::new(
        "0000:00:03.0",
        Arc::new(f.reopen().unwrap()),
        config,
        huge,
        &mut BarAllocator::within(window.0, window.1),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("BAR0") && e.contains("0xe2000000..0xe4000000"),
        "{e}"
    );
}

#[test]
fn bridges_tiny_config_regions_and_oversized_bars_are_refused() {
    let (f, bars, config) = fake();
    let file = Arc::new(f.reopen().unwrap());
    let e = VfioPci::new(
        "0000:00:03.0",
        file.clone(),
        RegionInfo {
            offset: 0,
            size: 16,
        },
        bars,
        &mut BarAllocator::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("0000:00:03.0") && e.contains("header"), "{e}");
    let mut huge = bars;
    huge[0].size = 1 << 30;
    let e = VfioPci::new(
        "0000:00:03.0",
        file.clone(),
        config,
        huge,
        &mut BarAllocator::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("BAR0") && e.contains("[hypervisor.qemu]"), "{e}");
    f.as_file().write_all_at(&[0x01], 14).unwrap();
    let e = VfioPci::new(
        "0000:00:03.0",
        file,
        config,
        bars,
        &mut BarAllocator::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bridges"), "{e}");
}

#[test]
fn a_vm_given_an_unusable_function_fails_before_anything_is_bound() {
    let dir = std::path::PathBuf::from(
        std::env::var("KATA_RS_GUEST_DIR")
            .unwrap_or_else(|_| "/var/cache/kata-rs/guest/current".into()),
    );
    let kernel = dir.join("vmlinuz");
    if !kernel.exists() {
        eprintln!("SKIPPED: no guest kernel in {} (make guest)", dir.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let s = group_with_a_member_on_a_host_driver(t.path());
    let sock = t.path().join("vsock.uds");
    let e = crate::vm::VmBuilder::new(&kernel)
        .memory_mib(128)
        .vsock(&sock)
        .vfio(VfioConfig {
            bdf: "0000:00:03.0".into(),
            sysfs: s.clone(),
            dev_vfio: t.path().join("dev-vfio"),
            behind_root_port: false,
            behind_switch: false,
            behind_bridge: false,
        })
        .prepare()
        .unwrap_err()
        .to_string();
    assert!(e.contains("0000:00:04.0") && e.contains("e1000e"), "{e}");
    assert!(
        !sock.exists(),
        "the vsock socket was bound before the refusal"
    );
    // All members on vfio-pci: sysfs passes, the missing container is named.
    std::fs::remove_file(s.join("devices/0000:00:04.0/driver")).unwrap();
    std::os::unix::fs::symlink(
        s.join("bus/pci/drivers/vfio-pci"),
        s.join("devices/0000:00:04.0/driver"),
    )
    .unwrap();
    let e = crate::vm::VmBuilder::new(&kernel)
        .memory_mib(128)
        .vfio(VfioConfig {
            bdf: "0000:00:03.0".into(),
            sysfs: s,
            dev_vfio: t.path().join("dev-vfio"),
            behind_root_port: false,
            behind_switch: false,
            behind_bridge: false,
        })
        .prepare()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("VFIO container") && e.contains("dev-vfio/vfio"),
        "{e}"
    );
}

/// What the fake wiring was asked, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Route(Vec<Option<msi::MsiMessage>>),
    Trigger(usize),
    MsixRoute(Vec<Option<msi::MsiMessage>>),
    MsixTrigger(Vec<bool>),
    MsixHold(usize, Vec<bool>),
}

#[derive(Clone, Default)]
struct FakeWiring(Arc<Mutex<Vec<Call>>>, usize, bool, usize);

impl IrqWiring for FakeWiring {
    fn max_vectors(&self) -> usize {
        self.1
    }
    fn route(&mut self, routes: &[Option<msi::MsiMessage>]) -> std::io::Result<()> {
        self.0.lock().unwrap().push(Call::Route(routes.to_vec()));
        Ok(())
    }
    fn trigger(&mut self, vectors: usize) -> std::io::Result<()> {
        self.0.lock().unwrap().push(Call::Trigger(vectors));
        Ok(())
    }
    fn intx(&self) -> bool {
        self.2
    }
    fn max_msix_vectors(&self) -> usize {
        self.3
    }
    fn msix_route(&mut self, routes: &[Option<msi::MsiMessage>]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(Call::MsixRoute(routes.to_vec()));
        Ok(())
    }
    fn msix_trigger(&mut self, held: &[bool]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(Call::MsixTrigger(held.to_vec()));
        Ok(())
    }
    fn msix_hold(&mut self, first: usize, held: &[bool]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(Call::MsixHold(first, held.to_vec()));
        Ok(())
    }
    /// Vector 1 has an interrupt held back.
    fn msix_pending(&mut self, v: usize) -> bool {
        v == 1
    }
}

/// The fake function with a PM capability at 0x40 and edu's MSI (64-bit, 1 vector) at 0x50.
fn with_msi() -> (tempfile::NamedTempFile, VfioPci, FakeWiring) {
    let (f, bars, config) = fake();
    f.as_file()
        .write_all_at(&0x0003_5001u32.to_le_bytes(), 0x40)
        .unwrap();
    f.as_file()
        .write_all_at(&0x0080_0005u32.to_le_bytes(), 0x50)
        .unwrap();
    let d = device(&f, bars, config);
    let w = FakeWiring(Arc::default(), 1, false, 0);
    (f, d, w)
}

#[test]
fn without_wiring_msi_stays_hidden() {
    let (_f, mut d, _w) = with_msi();
    assert_eq!(d.config_read(1) & STATUS_CAP_LIST, 0);
    assert_eq!(d.config_read(13), 0);
    // A write where the capability is reaches nothing.
    d.config_write(0x52, &[1]);
    assert_eq!(d.config_read(0x50 / 4), 0x0080_0005, "raw, unlinked");
}

#[test]
fn msi_alone_is_shown_and_enable_routes_then_triggers_and_disable_tears_down() {
    let (f, mut d, w) = with_msi();
    d.attach_irqs(Box::new(w.clone()));
    assert_ne!(d.config_read(1) & STATUS_CAP_LIST, 0, "a capability list");
    assert_eq!(d.config_read(13), 0x50, "pointing at MSI, PM skipped");
    assert_eq!(d.config_read(0x50 / 4), 0x0080_0005, "next pointer 0");
    // Linux's sequence: address, data, then the enable bit.
    d.config_write(0x54, &0xfee0_0000u32.to_le_bytes());
    d.config_write(0x58, &0u32.to_le_bytes());
    d.config_write(0x5c, &0x0041u16.to_le_bytes());
    assert!(w.0.lock().unwrap().is_empty(), "nothing before the enable");
    d.config_write(0x52, &1u16.to_le_bytes());
    let msg = msi::MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };
    assert_eq!(
        *w.0.lock().unwrap(),
        [Call::Route(vec![Some(msg)]), Call::Trigger(1)],
        "routed before the device may fire"
    );
    // A new vector while enabled: the route only.
    d.config_write(0x5c, &0x0042u16.to_le_bytes());
    let moved = msi::MsiMessage { data: 0x42, ..msg };
    assert_eq!(w.0.lock().unwrap()[2], Call::Route(vec![Some(moved)]));
    // The same value again: nothing.
    d.config_write(0x5c, &0x0042u16.to_le_bytes());
    assert_eq!(w.0.lock().unwrap().len(), 3);
    d.config_write(0x52, &0u16.to_le_bytes());
    assert_eq!(
        w.0.lock().unwrap()[3..],
        [Call::Trigger(0), Call::Route(vec![])]
    );
    // None of it reached the device's own capability.
    let mut raw = [0u8; 16];
    f.as_file().read_exact_at(&mut raw, 0x50).unwrap();
    assert_eq!(
        u32::from_le_bytes(raw[0..4].try_into().unwrap()),
        0x0080_0005
    );
    assert_eq!(&raw[4..], &[0; 12]);
}

#[test]
fn a_function_without_msi_or_a_capability_list_ignores_the_wiring() {
    let (f, bars, config) = fake();
    // Status says no capability list: the pointer is not followed.
    f.as_file().write_all_at(&0u32.to_le_bytes(), 4).unwrap();
    f.as_file()
        .write_all_at(&0x0080_0005u32.to_le_bytes(), 0x40)
        .unwrap();
    let mut d = device(&f, bars, config);
    d.attach_irqs(Box::new(FakeWiring(Arc::default(), 1, false, 0)));
    assert_eq!(d.config_read(13), 0);
    assert_eq!(d.config_read(1) & STATUS_CAP_LIST, 0);
}

proptest::proptest! {
    #[test]
    fn guest_garbage_in_config_space_never_panics(
        writes in proptest::collection::vec(
            (0usize..0x110, proptest::collection::vec(proptest::num::u8::ANY, 0..6)), 0..60),
    ) {
        let (_f, mut d, w) = with_msi();
        d.attach_irqs(Box::new(w.clone()));
        for (off, data) in &writes {
            d.config_write(*off, data);
            for r in 0..70 {
                let _ = d.config_read(r);
            }
        }
        // Whatever happened, every trigger asked for 0 or 1 vector and the routes fit.
        for c in w.0.lock().unwrap().iter() {
            match c {
                Call::Trigger(n) => proptest::prop_assert!(*n <= 1),
                Call::Route(r) => proptest::prop_assert!(r.len() <= 1),
                Call::MsixRoute(_) | Call::MsixTrigger(_) | Call::MsixHold(..) => {
                    proptest::prop_assert!(false, "no MSI-X here: {c:?}")
                }
            }
        }
    }
}

#[test]
fn intx_shows_pin_inta_only_when_wired() {
    let (_f, mut d, _w) = with_msi();
    assert_eq!(d.config_read(15) >> 8 & 0xff, 0);
    d.attach_irqs(Box::new(FakeWiring(Arc::default(), 1, true, 0)));
    assert_eq!(d.config_read(15) >> 8 & 0xff, 1, "INTA#");
    d.config_write(0x3c, &[23]);
    assert_eq!(d.config_read(15) & 0xffff, 0x0117);
    // INTx alone (no MSI granted): the pin, and no capability list.
    let (_f, mut d, _w) = with_msi();
    d.attach_irqs(Box::new(FakeWiring(Arc::default(), 0, true, 0)));
    assert_eq!(d.config_read(15) >> 8 & 0xff, 1);
    assert_eq!(d.config_read(13), 0);
    assert_eq!(d.config_read(1) & STATUS_CAP_LIST, 0);
}

#[test]
fn intx_pins_count_down_from_the_top() {
    assert_eq!(irq::intx_pin(1), Some(23));
    assert_eq!(irq::intx_pin(2), Some(22));
    assert_eq!(irq::intx_pin(18), Some(6));
    assert_eq!(irq::intx_pin(0), None, "the host bridge");
    assert_eq!(
        irq::intx_pin(19),
        None,
        "would meet the serial port and virtio lines"
    );
}

/// Linux's `pci_common_swizzle`, written as the kernel has it (pins 1-based, one bridge
/// crossing at a time from the function up), for the swizzle to be checked against.
fn linux_swizzle(path: &[u8]) -> (u8, u8) {
    let mut pin = 1u8; // INTA#
    for &slot in path[1..].iter().rev() {
        pin = ((pin - 1) + slot) % 4 + 1;
    }
    (path[0], pin - 1)
}

#[test]
fn the_swizzle_is_linux_s_for_root_ports_switch_ports_and_bridge_slots() {
    // A function on bus 0 and behind root ports: its own INTA#.
    assert_eq!(irq::intx_swizzle(&[3]), Some((3, 0)));
    for slot in 1..=8 {
        assert_eq!(irq::intx_swizzle(&[slot, 0]), Some((slot, 0)));
    }
    // Behind the switch (root port in slot 3): downstream port n gives INTA# + n.
    let want = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 0), (5, 1)];
    for (n, pin) in want {
        assert_eq!(irq::intx_swizzle(&[3, 0, n, 0]), Some((3, pin)), "port {n}");
    }
    // In the bridge's slots 1..8 (bridge in slot 4): INTB#, INTC#, INTD#, INTA#, ...
    let want = [1, 2, 3, 0, 1, 2, 3, 0];
    for (s, pin) in (1..=8).zip(want) {
        assert_eq!(irq::intx_swizzle(&[4, s]), Some((4, pin)), "slot {s}");
    }
    // And as Linux computes it, for every place of those hierarchies (and deeper ones).
    for path in [
        vec![1, 0],
        vec![2, 0, 3, 0],
        vec![2, 0, 31, 0],
        vec![5, 7],
        vec![5, 30],
        vec![1, 2, 3, 4],
    ] {
        assert_eq!(
            irq::intx_swizzle(&path),
            Some(linux_swizzle(&path)),
            "{path:?}"
        );
    }
    assert_eq!(irq::intx_swizzle(&[]), None);
}

#[test]
fn the_plan_gives_each_port_its_inta_and_fanouts_four_distinct_lines_off_virtio_lines() {
    use crate::vstate::mptable::PciIntx;
    let slot = |slot, fanout| irq::IntxSlot { slot, fanout };
    // Two root ports, a switch in slot 3, a bridge in slot 4; virtio-mmio on 5-9.
    let slots = [slot(1, false), slot(2, false), slot(3, true), slot(4, true)];
    let plan = irq::plan_intx(&slots, &[5, 6, 7, 8, 9]);
    let e = |slot, intx, pin| PciIntx { slot, intx, pin };
    assert_eq!(
        plan,
        [
            e(1, 0, 23),
            e(2, 0, 22),
            e(3, 0, 21),
            e(3, 1, 19),
            e(3, 2, 18),
            e(3, 3, 17),
            e(4, 0, 20),
            e(4, 1, 16),
            e(4, 2, 15),
            e(4, 3, 14),
        ],
        "INTA# as today (24 - slot), then the fan-outs' pins below"
    );
    assert_eq!(irq::planned_pin(&plan, (3, 2)), Some(18));
    assert_eq!(irq::planned_pin(&plan, (1, 1)), None, "a root port's INTB#");
    // A virtio line on 22: slot 2's INTA# moves to the highest free pin, nothing on 22.
    let plan = irq::plan_intx(&slots, &[5, 22]);
    assert!(plan.iter().all(|e| e.pin != 22 && e.pin != 5 && e.pin >= 5));
    assert_eq!(irq::planned_pin(&plan, (2, 0)), Some(21));
    let mut pins: Vec<u8> = plan.iter().map(|e| e.pin).collect();
    pins.sort_unstable();
    pins.dedup();
    assert_eq!(pins.len(), 10, "still distinct: {plan:?}");
    // Six fan-outs need 24 lines: 19 pins are all used, the rest share their slot's INTA#.
    let many: Vec<_> = (1..=6).map(|s| slot(s, true)).collect();
    let plan = irq::plan_intx(&many, &[]);
    assert_eq!(plan.len(), 24, "every pin of every slot has its entry");
    let mut pins: Vec<u8> = plan.iter().map(|e| e.pin).collect();
    pins.sort_unstable();
    pins.dedup();
    assert_eq!(pins, (5..=23).collect::<Vec<u8>>());
    for e in &plan {
        let inta = irq::planned_pin(&plan, (e.slot, 0)).unwrap();
        let shared = plan.iter().filter(|o| o.pin == e.pin).count() > 1;
        assert!(
            !shared || e.pin == inta,
            "a shared line is its slot's INTA#: {e:?}"
        );
    }
    // More slots than pins: the INTA# lines are shared too, round robin; every pin has one.
    let crowd: Vec<_> = (1..=25).map(|s| slot(s, false)).collect();
    let plan = irq::plan_intx(&crowd, &[]);
    assert_eq!(plan.len(), 25);
    assert!(plan.iter().all(|e| (5..=23).contains(&e.pin)));
    // Every pin taken by virtio lines: no INTx at all (MSI and MSI-X only).
    assert!(irq::plan_intx(&slots, &(5..=23).collect::<Vec<_>>()).is_empty());
}

#[test]
fn a_function_s_intx_goes_where_the_plan_puts_its_place_and_follows_a_virtio_line() {
    use crate::vstate::mptable::PciIntx;
    let (_f, mut d, _w) = with_msi();
    d.host_intx = true;
    d.path = Some(vec![1, 0]);
    let (_g, mut bridged, _v) = with_msi();
    bridged.host_intx = true;
    bridged.path = Some(vec![2, 1]);
    let (_h, mut no_intx, _x) = with_msi();
    no_intx.path = Some(vec![2, 2]);
    let devices: Vec<_> = [d, bridged, no_intx]
        .into_iter()
        .map(|d| Arc::new(Mutex::new(d)))
        .collect();
    let mut set = VfioSet {
        devices: devices.clone(),
        ..Default::default()
    };
    set.add_intx_slot(1, false);
    set.add_intx_slot(2, true);
    set.plan_lines(&[]);
    let pin = |i: usize| devices[i].lock().unwrap().intx_pin;
    assert_eq!(pin(0), Some(23), "the root port's INTA#");
    // The bridge's slot 1: INTB# of bus-0 slot 2, the first line below the INTA#s.
    assert_eq!(pin(1), Some(21));
    assert_eq!(set.intx_pin_at(&[2, 1]), Some(21));
    assert_eq!(pin(2), None, "the host grants no INTx");
    assert!(set.intx_lines().contains(&PciIntx {
        slot: 2,
        intx: 1,
        pin: 21
    }));
    // A virtio-mmio line on 23 and 21: no refusal, the lines move and the functions too.
    set.check_lines([23, 21]).unwrap();
    assert_eq!(pin(0), Some(22));
    assert_eq!(pin(1), Some(19));
    assert!(set.intx_lines().iter().all(|e| e.pin != 23 && e.pin != 21));
}

/// A virtio-like function: a vendor-specific capability at 0x40 (next 0x50), power
/// management at 0x50 (next 0x60), MSI-X at 0x60 with 3 vectors, its table at BAR2 offset 0
/// and its pending bit array at BAR2 offset 0x800; the device's own table bytes are 0xee.
fn with_msix() -> (tempfile::NamedTempFile, VfioPci) {
    let (f, bars, config) = fake();
    let w = |v: u32, at: u64| f.as_file().write_all_at(&v.to_le_bytes(), at).unwrap();
    w(0x1001_5009, 0x40);
    w(0x0003_6001, 0x50);
    w(0x0002_0011, 0x60);
    w(2, 0x64);
    w(0x802, 0x68);
    f.as_file()
        .write_all_at(&[0xee; 0x30], BAR2_OFFSET)
        .unwrap();
    let d = device(&f, bars, config);
    (f, d)
}

/// BAR2's guest address with memory decoding on.
fn bar2(d: &mut VfioPci) -> u64 {
    d.config_write(4, &[0x02]);
    d.bar_addresses()[1].1
}

#[test]
fn the_msix_table_is_trapped_before_and_after_wiring_and_vendor_capabilities_are_shown() {
    let (f, mut d) = with_msix();
    // Unwired: the vendor capability alone, unlinked from what follows it.
    assert_ne!(d.config_read(1) & STATUS_CAP_LIST, 0);
    assert_eq!(d.config_read(13), 0x40);
    assert_eq!(d.config_read(0x40 / 4), 0x1001_0009, "next 0");
    assert_eq!(d.config_read(0x60 / 4), 0x0002_0011, "raw, unlinked");
    let t = bar2(&mut d);
    let mut b = [0u8; 4];
    assert!(d.mmio_read(t, &mut b));
    assert_eq!(b, [0; 4], "the device's table is never read");
    assert!(d.mmio_write(t + 0xc, &0u32.to_le_bytes()));
    let mut raw = [0u8; 0x30];
    f.as_file().read_exact_at(&mut raw, BAR2_OFFSET).unwrap();
    assert_eq!(raw, [0xee; 0x30], "nor written");
    // Past the table and the array: the device's BAR as before.
    assert!(d.mmio_write(t + 0x100, &7u32.to_le_bytes()));
    f.as_file()
        .read_exact_at(&mut b, BAR2_OFFSET + 0x100)
        .unwrap();
    assert_eq!(u32::from_le_bytes(b), 7);
    // Wired with 2 vectors: vendor -> MSI-X, power management skipped; the size is 2.
    let w = FakeWiring(Arc::default(), 0, false, 2);
    d.attach_irqs(Box::new(w.clone()));
    assert_eq!(d.config_read(13), 0x40);
    assert_eq!(d.config_read(0x40 / 4), 0x1001_6009);
    assert_eq!(d.config_read(0x60 / 4), 0x0001_0011);
    assert_eq!(d.config_read(0x64 / 4), 2);
    assert_eq!(d.config_read(0x68 / 4), 0x802);
    assert!(w.0.lock().unwrap().is_empty());
}

#[test]
fn linux_s_msix_sequence_enables_routes_unmasks_and_tears_down() {
    let (f, mut d) = with_msix();
    let w = FakeWiring(Arc::default(), 0, false, 2);
    d.attach_irqs(Box::new(w.clone()));
    let t = bar2(&mut d);
    let calls = || w.0.lock().unwrap().clone();
    // Enable with the function masked (msix_capability_init), all vectors held.
    d.config_write(0x62, &0xc001u16.to_le_bytes());
    assert_eq!(
        calls(),
        [
            Call::MsixRoute(vec![None, None]),
            Call::MsixTrigger(vec![true, true])
        ]
    );
    // Program both vectors: the routes follow, nothing is delivered yet.
    for (v, data) in [(0u64, 0x41u32), (1, 0x51)] {
        d.mmio_write(t + v * 16, &0xfee0_0000u32.to_le_bytes());
        d.mmio_write(t + v * 16 + 4, &0u32.to_le_bytes());
        d.mmio_write(t + v * 16 + 8, &data.to_le_bytes());
    }
    let msg = |data| {
        Some(msi::MsiMessage {
            address: 0xfee0_0000,
            data,
        })
    };
    assert_eq!(
        calls().last(),
        Some(&Call::MsixRoute(vec![msg(0x41), msg(0x51)]))
    );
    let n = calls().len();
    // The function unmasked, the vectors still masked: nothing.
    d.config_write(0x63, &[0x80]);
    assert_eq!(calls().len(), n);
    // request_irq of vector 1, then vector 0: each its own block.
    d.mmio_write(t + 0x1c, &0u32.to_le_bytes());
    d.mmio_write(t + 0xc, &0u32.to_le_bytes());
    assert_eq!(
        calls()[n..],
        [
            Call::MsixHold(1, vec![false]),
            Call::MsixHold(0, vec![false])
        ]
    );
    // The pending bit array asks the wiring.
    let mut pba = [0u8; 8];
    assert!(d.mmio_read(t + 0x800, &mut pba));
    assert_eq!(u64::from_le_bytes(pba), 0b10);
    // The function mask holds both in one block; disabling turns MSI-X off and unroutes.
    d.config_write(0x63, &[0xc0]);
    assert_eq!(calls()[n + 2], Call::MsixHold(0, vec![true, true]));
    d.config_write(0x60, &0x0000_0011u32.to_le_bytes());
    assert_eq!(
        calls()[n + 3..],
        [Call::MsixTrigger(vec![]), Call::MsixRoute(vec![])]
    );
    // None of it reached the device's table.
    let mut raw = [0u8; 0x30];
    f.as_file().read_exact_at(&mut raw, BAR2_OFFSET).unwrap();
    assert_eq!(raw, [0xee; 0x30]);
}

#[test]
fn a_table_outside_its_bar_hides_msix() {
    let (f, bars, config) = fake();
    let w = |v: u32, at: u64| f.as_file().write_all_at(&v.to_le_bytes(), at).unwrap();
    w(0x0002_0011, 0x40);
    // The table at BAR2 offset 0x3ff8: 48 bytes do not fit its 16 KiB.
    w(0x3ffa, 0x44);
    w(0x802, 0x48);
    let mut d = device(&f, bars, config);
    d.attach_irqs(Box::new(FakeWiring(Arc::default(), 0, false, 2)));
    assert_eq!(d.config_read(13), 0);
    // In the I/O BAR (BAR4, not exposed): hidden too.
    w(0x4, 0x44);
    let mut d = device(&f, bars, config);
    d.attach_irqs(Box::new(FakeWiring(Arc::default(), 0, false, 2)));
    assert_eq!(d.config_read(13), 0);
}

proptest::proptest! {
    #[test]
    fn guest_garbage_in_config_space_and_the_msix_bar_never_panics(
        ops in proptest::collection::vec(
            (proptest::bool::ANY, 0u64..0x1000, proptest::collection::vec(proptest::num::u8::ANY, 0..9)),
            0..60),
    ) {
        let (_f, mut d) = with_msix();
        let w = FakeWiring(Arc::default(), 0, false, 2);
        d.attach_irqs(Box::new(w.clone()));
        let t = bar2(&mut d);
        for (config, off, data) in &ops {
            if *config {
                d.config_write(0x5c + (*off as usize % 0x20), data);
            } else if off % 2 == 0 {
                d.mmio_write(t + off, data);
            } else {
                let mut buf = data.clone();
                d.mmio_read(t + off, &mut buf);
            }
            for r in 0..70 {
                let _ = d.config_read(r);
            }
        }
        for c in w.0.lock().unwrap().iter() {
            match c {
                Call::MsixTrigger(h) => proptest::prop_assert!(h.is_empty() || h.len() == 2),
                Call::MsixRoute(r) => proptest::prop_assert!(r.len() <= 2),
                Call::MsixHold(first, h) => proptest::prop_assert!(!h.is_empty() && first + h.len() <= 2),
                c => proptest::prop_assert!(false, "no MSI here: {c:?}"),
            }
        }
    }
}

/// A fixture sysfs tree under `root/sys` (returned): `0000:00:03.0` on `vfio-pci` in IOMMU
/// group 4 with `0000:00:04.0`, a member still on a host driver (`e1000e`).
pub(in crate::devices::vfio) fn group_with_a_member_on_a_host_driver(
    root: &std::path::Path,
) -> std::path::PathBuf {
    let s = root.join("sys");
    let g = s.join("kernel/iommu_groups/4/devices");
    std::fs::create_dir_all(&g).unwrap();
    for (bdf, drv) in [("0000:00:03.0", "vfio-pci"), ("0000:00:04.0", "e1000e")] {
        let d = s.join("devices").join(bdf);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(s.join("kernel/iommu_groups/4"), d.join("iommu_group")).unwrap();
        let dd = s.join("bus/pci/drivers").join(drv);
        std::fs::create_dir_all(&dd).unwrap();
        std::os::unix::fs::symlink(&dd, d.join("driver")).unwrap();
        std::fs::create_dir_all(s.join("bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(&d, s.join("bus/pci/devices").join(bdf)).unwrap();
        std::os::unix::fs::symlink(&d, g.join(bdf)).unwrap();
    }
    s
}
