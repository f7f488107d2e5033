//! The switch as the guest's configuration cycles see it through the bus: the hierarchy's
//! routing (each device answers at its bus number, nothing outside every window), the bus
//! numbers and nested windows the VMM presets, and the refusals of a switch that does not fit.
//! Built by `build_hierarchy` with no VFIO function (spare ports only) and a stand-in card.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::pci::root_port::PCIE_OFFSET as PORT_PCIE;
use crate::devices::pci::PciDevice;
use crate::devices::pci::{PciBus, CONFIG_ADDRESS, CONFIG_DATA};
use crate::devices::vfio::{build_hierarchy, ROOT_PORT_WINDOW};
use crate::memory::GuestMemory;

fn mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// A function with one 4 KiB BAR at `bar` that answers 0xabcd_0000 | offset.
struct Card {
    bar: u64,
}

impl PciDevice for Card {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg == 0 {
            0x11e8_1234
        } else {
            0
        }
    }
    fn config_write(&mut self, _offset: usize, _data: &[u8]) {}
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        if !(self.bar..self.bar + 0x1000).contains(&addr) {
            return false;
        }
        let v = 0xabcd_0000u32 | (addr - self.bar) as u32;
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        true
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

fn bus_with(root: u8, switch: u8) -> PciBus {
    let Some((bus, _)) = build_hierarchy(&[], root, switch, 0, &mem()).unwrap() else {
        panic!("spare ports make a bus")
    };
    bus
}

/// A dword configuration read of `bus:slot.0` at byte `offset`, as the guest makes it.
fn cfg(bus: &mut PciBus, b: u8, slot: u8, offset: usize) -> u32 {
    let a = 0x8000_0000u32 | u32::from(b) << 16 | u32::from(slot) << 11 | (offset as u32 & 0xfc);
    bus.pio_write(CONFIG_ADDRESS, &a.to_le_bytes());
    let mut v = [0u8; 4];
    bus.pio_read(CONFIG_DATA, &mut v);
    u32::from_le_bytes(v)
}

fn cfg_write(bus: &mut PciBus, b: u8, slot: u8, offset: usize, v: u32) {
    let a = 0x8000_0000u32 | u32::from(b) << 16 | u32::from(slot) << 11 | (offset as u32 & 0xfc);
    bus.pio_write(CONFIG_ADDRESS, &a.to_le_bytes());
    bus.pio_write(CONFIG_DATA, &v.to_le_bytes());
}

/// The PCIe device/port type at a device's capability (at `cap`), which must be a PCI
/// Express capability (id 0x10: Linux stops at any other id).
fn port_type(bus: &mut PciBus, b: u8, slot: u8, cap: usize) -> u32 {
    let head = cfg(bus, b, slot, cap);
    assert_eq!(
        head & 0xff,
        0x10,
        "{b:02x}:{slot:02x}.0 capability at {cap:#x}"
    );
    (head >> 20) & 0xf
}

#[test]
fn configuration_cycles_reach_each_level_of_the_switch_at_its_bus_number() {
    let mut bus = bus_with(0, 3);
    // The switch's root port at 00:01.0: bus 1 below it, up to bus 5 (internal bus 2,
    // downstream ports' buses 3, 4, 5).
    assert_eq!(cfg(&mut bus, 0, 1, 0x18), 0x0005_0100);
    assert_eq!(port_type(&mut bus, 0, 1, PORT_PCIE), 4);
    // The upstream port is device 0 of bus 1, and alone there.
    assert_eq!(cfg(&mut bus, 1, 0, 0), 0x8232_104c);
    assert_eq!(cfg(&mut bus, 1, 0, 0x18), 0x0005_0201);
    assert_eq!(port_type(&mut bus, 1, 0, PCIE_OFFSET), 5);
    assert_eq!(cfg(&mut bus, 1, 1, 0), u32::MAX);
    // Three downstream ports on the internal bus, with slots.
    for i in 0..3u8 {
        assert_eq!(cfg(&mut bus, 2, i, 0), 0x8233_104c, "port {i}");
        assert_eq!(port_type(&mut bus, 2, i, PORT_PCIE), 6, "port {i}");
        let buses = cfg(&mut bus, 2, i, 0x18);
        assert_eq!(
            buses & 0xff_ffff,
            2 | u32::from(3 + i) << 8 | u32::from(3 + i) << 16
        );
        let slot_caps = cfg(&mut bus, 2, i, PORT_PCIE + 0x14);
        assert_eq!(
            slot_caps >> 19,
            32 + u32::from(i),
            "physical slot numbers apart"
        );
        assert_ne!(slot_caps & (1 << 6), 0, "hot-plug capable");
    }
    assert_eq!(cfg(&mut bus, 2, 3, 0), u32::MAX);
    // Empty downstream ports: nothing on their buses; nothing past the switch.
    for b in [3, 4, 5, 6, 0xff] {
        assert_eq!(cfg(&mut bus, b, 0, 0), u32::MAX, "bus {b}");
    }
    // A card in port 1 answers on bus 4, device 0 only.
    let port = bus.downstream_ports()[1].1.clone();
    assert_eq!(bus.downstream_ports()[1].0, vec![1, 0, 1, 0]);
    let card: SharedPciDevice = Arc::new(Mutex::new(Card { bar: 0 }));
    assert!(port.lock().unwrap().plug(card).is_ok());
    assert_eq!(cfg(&mut bus, 4, 0, 0), 0x11e8_1234);
    assert_eq!(cfg(&mut bus, 4, 1, 0), u32::MAX);
    assert_eq!(cfg(&mut bus, 3, 0, 0), u32::MAX);
    assert_eq!(cfg(&mut bus, 5, 0, 0), u32::MAX);
}

#[test]
fn routing_follows_the_bus_numbers_the_guest_programs() {
    let mut bus = bus_with(0, 2);
    let port = bus.downstream_ports()[0].1.clone();
    let card: SharedPciDevice = Arc::new(Mutex::new(Card { bar: 0 }));
    assert!(port.lock().unwrap().plug(card).is_ok());
    assert_eq!(cfg(&mut bus, 3, 0, 0), 0x11e8_1234);
    // The guest renumbers the downstream port's bus to 9 and widens every range above it.
    cfg_write(&mut bus, 0, 1, 0x18, 0x0009_0100);
    cfg_write(&mut bus, 1, 0, 0x18, 0x0009_0201);
    cfg_write(&mut bus, 2, 0, 0x18, 0x0009_0902);
    assert_eq!(cfg(&mut bus, 9, 0, 0), 0x11e8_1234);
    assert_eq!(cfg(&mut bus, 3, 0, 0), u32::MAX);
    // The upstream port's subordinate below 9: bus 9 is outside its range.
    cfg_write(&mut bus, 1, 0, 0x18, 0x0008_0201);
    assert_eq!(cfg(&mut bus, 9, 0, 0), u32::MAX);
}

#[test]
fn buses_follow_the_root_ports_and_the_windows_nest() {
    let mut bus = bus_with(2, 2);
    // Root ports 00:01.0 and 00:02.0 own buses 1 and 2; the switch's at 00:03.0 starts at 3.
    assert_eq!(cfg(&mut bus, 0, 1, 0x18) & 0xff_ffff, 0x01_0100);
    assert_eq!(cfg(&mut bus, 0, 2, 0x18) & 0xff_ffff, 0x02_0200);
    assert_eq!(cfg(&mut bus, 0, 3, 0x18) & 0xff_ffff, 0x06_0300);
    assert_eq!(cfg(&mut bus, 3, 0, 0x18) & 0xff_ffff, 0x06_0403);
    assert_eq!(cfg(&mut bus, 4, 0, 0x18) & 0xff_ffff, 0x05_0504);
    assert_eq!(cfg(&mut bus, 4, 1, 0x18) & 0xff_ffff, 0x06_0604);
    assert_eq!(bus.hotplug_ports().len(), 5, "3 root ports, 2 downstream");
    let window = |bus: &mut PciBus, b: u8, s: u8| {
        let v = cfg(bus, b, s, 0x20);
        (
            u64::from(v & 0xfff0) << 16,
            (u64::from(v >> 16 & 0xfff0) << 16) + (1 << 20),
        )
    };
    let root = window(&mut bus, 0, 3);
    assert_eq!(root, window(&mut bus, 3, 0), "upstream = its root port's");
    let (d0, d1) = (window(&mut bus, 4, 0), window(&mut bus, 4, 1));
    assert_eq!(
        (d0.1 - d0.0, d1.1 - d1.0),
        (ROOT_PORT_WINDOW, ROOT_PORT_WINDOW)
    );
    assert_eq!(
        (root.0, root.1),
        (d0.0, d1.1),
        "the span of the downstream ports'"
    );
    assert_eq!(d0.1, d1.0);
    let other = window(&mut bus, 0, 2);
    assert!(other.1 <= root.0, "apart from the other root ports'");
    // A card's BAR in port 1's window: reached through three bridges, only while each
    // forwards.
    let port = bus.downstream_ports()[1].1.clone();
    let card: SharedPciDevice = Arc::new(Mutex::new(Card { bar: d1.0 }));
    assert!(port.lock().unwrap().plug(card).is_ok());
    let mut v = [0u8; 4];
    assert!(bus.mmio_read(d1.0 + 8, &mut v));
    assert_eq!(u32::from_le_bytes(v), 0xabcd_0008);
    // Memory decoding off on the upstream port: nothing below answers.
    let cmd = cfg(&mut bus, 3, 0, 4) & 0xffff;
    cfg_write(&mut bus, 3, 0, 4, cmd & !2);
    assert!(!bus.mmio_read(d1.0 + 8, &mut v));
    cfg_write(&mut bus, 3, 0, 4, cmd);
    assert!(bus.mmio_read(d1.0 + 8, &mut v));
    // The upstream port's window shrunk to port 0's: port 1's BAR is outside.
    let w = (d0.0 >> 16) as u32 | (((d0.1 - 1) >> 16) as u32 & 0xfff0) << 16;
    cfg_write(&mut bus, 3, 0, 0x20, w);
    assert!(!bus.mmio_read(d1.0 + 8, &mut v));
}

#[test]
fn a_switch_that_does_not_fit_is_refused_naming_the_key() {
    // 15 windows of 32 MiB in the MMIO window: 16 downstream ports do not fit.
    let e = build_hierarchy(&[], 0, 16, 0, &mem())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pcie_switch_port") && e.contains("16"), "{e}");
    assert!(build_hierarchy(&[], 0, 15, 0, &mem()).is_ok());
    let e = build_hierarchy(&[], 3, 13, 0, &mem())
        .unwrap_err()
        .to_string();
    assert!(e.contains("switch"), "{e}");
}

#[test]
fn odd_accesses_to_the_upstream_port_are_dropped() {
    let mut up = upstream(1, 2, 4, (0xe000_0000, 0xe400_0000), &[]);
    let before: Vec<u32> = (0..64).map(|r| up.read(r)).collect();
    up.write(0x3, &[1, 2]);
    up.write(0x1000, &[1]);
    up.write(0x20, &[]);
    up.write(0x00, &[0xff, 0xff, 0xff, 0xff]);
    up.write(0x08, &[0xff, 0xff, 0xff, 0xff]);
    let after: Vec<u32> = (0..64).map(|r| up.read(r)).collect();
    assert_eq!(before, after);
    assert!(up.route(2, 0).is_none(), "no port 0");
    assert!(
        up.route(1, 0).is_none(),
        "its own primary bus is not below it"
    );
}
