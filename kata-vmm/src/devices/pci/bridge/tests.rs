//! The PCI-to-PCI bridge on the root bus as the guest's configuration cycles and memory
//! accesses see it, and the refusal of more functions than its slots or windows hold.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::pci::{PciBus, CONFIG_ADDRESS, CONFIG_DATA};
use crate::devices::vfio::{build_hierarchy, VfioConfig};

/// A function with a 4 KiB BAR at `bar` answering `id` at register 0 and `id | offset` there.
struct Card {
    id: u32,
    bar: u64,
}

impl PciDevice for Card {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg == 0 {
            self.id
        } else {
            0
        }
    }
    fn config_write(&mut self, _offset: usize, _data: &[u8]) {}
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        if !(self.bar..self.bar + 0x1000).contains(&addr) {
            return false;
        }
        let v = self.id | (addr - self.bar) as u32;
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        true
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

fn card(id: u32, bar: u64) -> SharedPciDevice {
    Arc::new(Mutex::new(Card { id, bar }))
}

fn cfg(bus: &mut PciBus, b: u8, slot: u8, offset: usize, write: Option<u32>) -> u32 {
    let a = 0x8000_0000u32 | u32::from(b) << 16 | u32::from(slot) << 11 | (offset as u32 & 0xfc);
    bus.pio_write(CONFIG_ADDRESS, &a.to_le_bytes());
    if let Some(v) = write {
        bus.pio_write(CONFIG_DATA, &v.to_le_bytes());
        return 0;
    }
    let mut v = [0u8; 4];
    bus.pio_read(CONFIG_DATA, &mut v);
    u32::from_le_bytes(v)
}

const W: (u64, u64) = (0xe000_0000, 0xe400_0000);

fn bus_with_bridge() -> PciBus {
    let mut bus = PciBus::new();
    let bridge = Bridge::new(
        BridgeKind::PciBridge,
        0,
        1,
        1,
        W,
        vec![
            (1, card(0x11e8_0000, 0xe000_0000)),
            (2, card(0x22e8_0000, 0xe200_0000)),
        ],
    );
    assert_eq!(bus.add(Arc::new(Mutex::new(bridge))), Some(1));
    bus
}

#[test]
fn linux_finds_a_conventional_pci_bridge_with_functions_at_slots_1_and_up() {
    let mut bus = bus_with_bridge();
    assert_eq!(cfg(&mut bus, 0, 1, 0, None), 0x0001_1b36);
    assert_eq!(
        cfg(&mut bus, 0, 1, 8, None) >> 16,
        0x0604,
        "PCI-to-PCI class"
    );
    assert_eq!(
        cfg(&mut bus, 0, 1, 0xc, None) >> 16 & 0x7f,
        1,
        "header type 1"
    );
    assert_eq!(
        cfg(&mut bus, 0, 1, 4, None) >> 16 & 0x10,
        0,
        "no capability list"
    );
    assert_eq!(cfg(&mut bus, 0, 1, 0x34, None), 0);
    assert_eq!(cfg(&mut bus, 0, 1, 0x18, None) & 0xff_ffff, 0x01_0100);
    // Its secondary bus: slot 0 empty, the functions at 1 and 2, nothing after.
    assert_eq!(cfg(&mut bus, 1, 0, 0, None), u32::MAX);
    assert_eq!(cfg(&mut bus, 1, 1, 0, None), 0x11e8_0000);
    assert_eq!(cfg(&mut bus, 1, 2, 0, None), 0x22e8_0000);
    assert_eq!(cfg(&mut bus, 1, 3, 0, None), u32::MAX);
    assert_eq!(cfg(&mut bus, 2, 1, 0, None), u32::MAX, "no bus below");
    // Its window forwards both BARs, and nothing once memory decoding is off.
    let mut v = [0u8; 4];
    assert!(bus.mmio_read(0xe200_0010, &mut v));
    assert_eq!(u32::from_le_bytes(v), 0x22e8_0010);
    assert!(!bus.mmio_read(0xe400_0000, &mut v), "past the window");
    cfg(&mut bus, 0, 1, 4, Some(0));
    assert!(!bus.mmio_read(0xe200_0010, &mut v));
}

#[test]
fn the_bridge_keeps_no_pcie_registers_and_moves_its_functions_with_its_bus_number() {
    let mut bus = bus_with_bridge();
    let before: Vec<u32> = (0..64).map(|r| cfg(&mut bus, 0, 1, r * 4, None)).collect();
    for off in (0x40..0x100).step_by(4) {
        cfg(&mut bus, 0, 1, off, Some(u32::MAX));
    }
    let after: Vec<u32> = (0..64).map(|r| cfg(&mut bus, 0, 1, r * 4, None)).collect();
    assert_eq!(before, after);
    cfg(&mut bus, 0, 1, 0x18, Some(0x0005_0500));
    assert_eq!(cfg(&mut bus, 5, 1, 0, None), 0x11e8_0000);
    assert_eq!(cfg(&mut bus, 1, 1, 0, None), u32::MAX);
}

#[test]
fn slots_are_taken_and_freed_one_function_each() {
    let mut b = Bridge::new(BridgeKind::PciBridge, 0, 1, 1, W, Vec::new());
    assert!(b.put(1, card(1, 0)).is_ok());
    assert!(b.put(1, card(2, 0)).is_err(), "slot 1 is taken");
    assert!(b.is_occupied(1) && !b.is_occupied(2));
    assert!(b.take(1).is_some());
    assert!(b.take(1).is_none());
    assert!(b.route(1, 1).is_none());
}

#[test]
fn more_functions_than_its_slots_or_windows_are_refused_before_any_is_opened() {
    let mem: crate::memory::GuestMemory =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let configs = |n: usize| -> Vec<VfioConfig> {
        (0..n)
            .map(|i| {
                let mut c = VfioConfig::new(format!("0000:00:{:02x}.0", i + 1)).behind_bridge();
                c.sysfs = "/nonexistent".into();
                c
            })
            .collect()
    };
    for n in [16, 32] {
        let e = build_hierarchy(&configs(n), 0, 0, 0, &mem)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bridge-port") && e.contains(&format!("{n} function(s) cold-plugged")),
            "{e}"
        );
    }
    // One that fits gets as far as opening the function (which this host does not have).
    let e = build_hierarchy(&configs(1), 0, 0, 0, &mem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0000:00:01.0"), "{e}");
}
