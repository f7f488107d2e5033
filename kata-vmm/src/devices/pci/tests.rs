//! Configuration mechanism #1 decoding: good accesses reach the devices, bad or odd ones read
//! as all ones and write nothing, and none panics.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

/// A device that records config writes and answers reads with its register index.
#[derive(Default)]
struct Probe {
    writes: Vec<(usize, Vec<u8>)>,
}

impl PciDevice for Probe {
    fn config_read(&mut self, reg: usize) -> u32 {
        0xab00_0000 | reg as u32
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
    fn mmio_read(&mut self, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

fn address(slot: u32, function: u32, reg: u32) -> [u8; 4] {
    (0x8000_0000 | slot << 11 | function << 8 | reg << 2).to_le_bytes()
}

#[test]
fn the_address_register_reads_back_and_the_host_bridge_answers() {
    let mut bus = PciBus::new();
    // What pci_check_type1 does: a byte to 0xCFB first, then the dword check.
    bus.pio_write(0xcfb, &[1]);
    bus.pio_write(0xcf8, &0x8000_0000u32.to_le_bytes());
    let mut a = [0u8; 4];
    bus.pio_read(0xcf8, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
    let mut v = [0u8; 2];
    bus.pio_read(0xcfc, &mut v);
    assert_eq!(u16::from_le_bytes(v), 0x8086);
    bus.pio_write(0xcf8, &address(0, 0, 2));
    let mut class = [0u8; 2];
    bus.pio_read(0xcfe, &mut class);
    assert_eq!(u16::from_le_bytes(class), 0x0600);
}

#[test]
fn sub_dword_accesses_pick_their_bytes_and_writes_land_at_their_offset() {
    let mut bus = PciBus::new();
    let probe = Arc::new(Mutex::new(Probe::default()));
    assert_eq!(bus.add(probe.clone()), Some(1));
    bus.pio_write(0xcf8, &address(1, 0, 5));
    let mut b = [0u8; 1];
    bus.pio_read(0xcfc, &mut b);
    assert_eq!(b, [5]);
    bus.pio_read(0xcff, &mut b);
    assert_eq!(b, [0xab]);
    bus.pio_write(0xcfe, &[1, 2]);
    assert_eq!(probe.lock().unwrap().writes, vec![(22, vec![1, 2])]);
}

#[test]
fn absent_functions_disabled_addresses_and_odd_widths_read_all_ones() {
    let mut bus = PciBus::new();
    let probe = Arc::new(Mutex::new(Probe::default()));
    bus.add(probe.clone());
    for a in [
        address(1, 1, 0),               // function 1
        address(9, 0, 0),               // empty slot
        (0x8001_0800u32).to_le_bytes(), // bus 1
        (0x0000_0800u32).to_le_bytes(), // enable bit clear
    ] {
        bus.pio_write(0xcf8, &a);
        let mut v = [0u8; 4];
        bus.pio_read(0xcfc, &mut v);
        assert_eq!(v, [0xff; 4], "{a:x?}");
        bus.pio_write(0xcfc, &[0; 4]);
    }
    bus.pio_write(0xcf8, &address(1, 0, 0));
    let mut v = [0u8; 4];
    bus.pio_read(0xcfe, &mut v); // 4 bytes from offset 2: past the window
    assert_eq!(v, [0xff; 4]);
    bus.pio_write(0xcfd, &[0; 4]);
    bus.pio_write(0xcf8, &[0x12, 0x34]); // a 16-bit write to the address: ignored
    let mut a = [0u8; 4];
    bus.pio_read(0xcf8, &mut a);
    assert_eq!(a, address(1, 0, 0));
    assert!(probe.lock().unwrap().writes.is_empty());
}

#[test]
fn the_bus_is_full_at_32_slots_and_bars_fit_the_window() {
    let mut bus = PciBus::new();
    for slot in 1..32 {
        assert_eq!(bus.add(Arc::new(Mutex::new(Probe::default()))), Some(slot));
    }
    assert_eq!(bus.add(Arc::new(Mutex::new(Probe::default()))), None);
    let mut a = BarAllocator::default();
    assert_eq!(a.allocate(0x100), Some(PCI_MMIO_START));
    assert_eq!(a.allocate(0x10_0000), Some(PCI_MMIO_START + 0x10_0000));
    assert_eq!(a.allocate(3), None, "not a power of two");
    assert_eq!(a.allocate(0), None);
    assert_eq!(a.allocate(1 << 30), None, "larger than the window");
}

proptest! {
    #[test]
    fn no_access_panics(ops in proptest::collection::vec((0u16..0x10, 0usize..9, any::<u32>(), any::<bool>()), 0..64)) {
        let mut bus = PciBus::new();
        bus.add(Arc::new(Mutex::new(Probe::default())));
        for (port, len, value, write) in ops {
            let port = 0xcf6 + port;
            let mut data = value.to_le_bytes().repeat(3);
            data.truncate(len);
            if PciBus::handles_port(port) {
                if write {
                    bus.pio_write(port, &data);
                } else {
                    bus.pio_read(port, &mut data);
                }
            }
        }
    }
}
