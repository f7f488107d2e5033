//! The root port's configuration space without KVM: what Linux reads to find a hot-plug
//! capable slot, the bus numbers and window routing, the slot's events, and writes of any
//! width anywhere leaving the read-only registers as they were.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::devices::pci::{PciBus, PciDevice};

/// The config writes a probe saw.
type Writes = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

/// A function that answers reads with its register index and decodes one page at `bar`.
struct Probe {
    bar: u64,
    writes: Writes,
}

impl PciDevice for Probe {
    fn config_read(&mut self, reg: usize) -> u32 {
        0xab00_0000 | reg as u32
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        if let Ok(mut w) = self.writes.lock() {
            w.push((offset, data.to_vec()));
        }
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let hit = (self.bar..self.bar + 0x1000).contains(&addr);
        if hit {
            data.fill(0x5a);
        }
        hit
    }
    fn mmio_write(&mut self, addr: u64, _data: &[u8]) -> bool {
        (self.bar..self.bar + 0x1000).contains(&addr)
    }
}

fn probe(bar: u64) -> (SharedPciDevice, Writes) {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let d: SharedPciDevice = Arc::new(Mutex::new(Probe {
        bar,
        writes: writes.clone(),
    }));
    (d, writes)
}

const WINDOW: (u64, u64) = (0xe000_0000, 0xe200_0000);

fn port() -> RootPort {
    RootPort::new(1, 1, WINDOW)
}

fn w32(p: &mut RootPort, offset: usize, v: u32) {
    p.write(offset, &v.to_le_bytes());
}

fn w16(p: &mut RootPort, offset: usize, v: u16) {
    p.write(offset, &v.to_le_bytes());
}

fn slot_status(p: &RootPort) -> u16 {
    (p.read((PCIE_OFFSET + 0x18) / 4) >> 16) as u16
}

fn link_active(p: &RootPort) -> bool {
    p.read((PCIE_OFFSET + 0x10) / 4) >> 16 & u32::from(LINK_STATUS_DLLLA) != 0
}

/// Enables the port's MSI (address, data, enable) and the slot's interrupts, as pciehp does.
fn guest_enables_interrupts(p: &mut RootPort) {
    w32(p, MSI_OFFSET + 4, 0xfee0_0000);
    w32(p, MSI_OFFSET + 8, 0);
    w16(p, MSI_OFFSET + 0xc, 0x41);
    w16(p, MSI_OFFSET + 2, 1);
    let control = SLOT_CONTROL_ABPE | SLOT_CONTROL_PDCE | SLOT_CONTROL_HPIE | SLOT_CONTROL_DLLSCE;
    let keep_power = p.read((PCIE_OFFSET + 0x18) / 4) as u16 & SLOT_CONTROL_PCC;
    w16(p, PCIE_OFFSET + 0x18, control | keep_power);
}

fn counting(p: &mut RootPort) -> Arc<Mutex<Vec<MsiMessage>>> {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let s = sent.clone();
    p.set_signal(Box::new(move |m| {
        if let Ok(mut s) = s.lock() {
            s.push(m);
        }
    }));
    sent
}

#[test]
fn linux_finds_a_pcie_root_port_with_a_hot_plug_capable_slot() {
    let p = port();
    assert_eq!(p.read(0), 0x000c_1b36);
    assert_eq!(p.read(2) >> 8, 0x06_04_00, "a PCI-to-PCI bridge");
    assert_eq!(p.read(3) >> 16 & 0x7f, 1, "header type 1");
    assert_ne!(p.read(1) >> 16 & u32::from(STATUS_CAP_LIST), 0);
    // The list: MSI at 0x40, then PCIe at 0x60, then the end.
    assert_eq!(p.read(13) & 0xfc, MSI_OFFSET as u32);
    let msi = p.read(MSI_OFFSET / 4);
    assert_eq!(msi & 0xff, 0x05);
    assert_eq!(msi >> 8 & 0xff, PCIE_OFFSET as u32);
    assert_ne!(msi >> 16 & (1 << 7), 0, "64-bit MSI");
    let pcie = p.read(PCIE_OFFSET / 4);
    assert_eq!(pcie & 0xff, 0x10);
    assert_eq!(pcie >> 8 & 0xff, 0, "the last capability");
    let caps = (pcie >> 16) as u16;
    assert_eq!(caps & 0xf, 2, "version 2");
    assert_eq!(caps >> 4 & 0xf, 4, "root port");
    assert_ne!(caps & (1 << 8), 0, "slot implemented");
    let slot_caps = p.read((PCIE_OFFSET + 0x14) / 4);
    assert_ne!(slot_caps & (1 << 6), 0, "hot-plug capable");
    assert_ne!(slot_caps & (1 << 1), 0, "power controller");
    assert_ne!(slot_caps & 1, 0, "attention button");
    assert_eq!(slot_caps >> 19, 1, "physical slot number");
    let link_caps = p.read((PCIE_OFFSET + 0xc) / 4);
    assert_ne!(link_caps & (1 << 20), 0, "DLL link active reporting");
    // Empty and powered off: no presence, no link.
    assert_eq!(slot_status(&p) & SLOT_STATUS_PDS, 0);
    assert!(!link_active(&p));
    // The bus numbers and window the VMM preset.
    assert_eq!(p.read(6) & 0xff_ffff, 0x01_01_00);
    assert_eq!(p.read(8), 0xe1f0_e000);
    assert_eq!(p.window(), Some(WINDOW));
    // No I/O or prefetchable window: their registers keep nothing.
    let mut q = port();
    w32(&mut q, 0x1c, 0xffff_ffff);
    w32(&mut q, 0x24, 0xffff_ffff);
    w32(&mut q, 0x28, 0xffff_ffff);
    assert_eq!(q.read(7) & 0xffff, 0);
    assert_eq!(q.read(9), 0);
    assert_eq!(q.read(10), 0);
}

#[test]
fn configuration_cycles_for_the_secondary_bus_reach_the_function_in_the_slot() {
    let mut bus = PciBus::new();
    let port = Arc::new(Mutex::new(port()));
    assert_eq!(bus.add_root_port(port.clone()), Some(1));
    let (child, writes) = probe(0xe000_0000);
    port.lock().unwrap().cold_plug(child);
    let read = |bus: &mut PciBus, b: u32, d: u32, reg: u32| {
        bus.pio_write(
            0xcf8,
            &(0x8000_0000 | b << 16 | d << 11 | reg << 2).to_le_bytes(),
        );
        let mut v = [0u8; 4];
        bus.pio_read(0xcfc, &mut v);
        u32::from_le_bytes(v)
    };
    // The port itself on bus 0, the function at 01:00.0 and nothing else below the port.
    assert_eq!(read(&mut bus, 0, 1, 0), 0x000c_1b36);
    assert_eq!(read(&mut bus, 1, 0, 3), 0xab00_0003);
    assert_eq!(
        read(&mut bus, 1, 1, 0),
        0xffff_ffff,
        "only device 0 below a port"
    );
    assert_eq!(read(&mut bus, 2, 0, 0), 0xffff_ffff, "no bus 2");
    bus.pio_write(0xcf8, &(0x8001_0000u32 | 4 << 2).to_le_bytes());
    bus.pio_write(0xcfe, &[0x12]);
    assert_eq!(writes.lock().unwrap().as_slice(), &[(0x12, vec![0x12])]);
    // The guest renumbers the secondary bus: the function follows.
    bus.pio_write(0xcf8, &(0x8000_0000u32 | 1 << 11 | 6 << 2).to_le_bytes());
    bus.pio_write(0xcfd, &[5]);
    assert_eq!(read(&mut bus, 1, 0, 0), 0xffff_ffff);
    assert_eq!(read(&mut bus, 5, 0, 3), 0xab00_0003);
}

#[test]
fn the_window_forwards_the_functions_bars_only_while_open_and_decoding() {
    let mut bus = PciBus::new();
    let port = Arc::new(Mutex::new(port()));
    bus.add_root_port(port.clone());
    let (child, _) = probe(0xe000_0000);
    port.lock().unwrap().cold_plug(child);
    let mut d = [0u8; 4];
    assert!(bus.mmio_read(0xe000_0000, &mut d));
    assert_eq!(d, [0x5a; 4]);
    assert!(bus.mmio_write(0xe000_0ffc, &[0; 4]));
    assert!(!bus.mmio_read(0xe200_0000, &mut d), "past the window");
    // Memory decoding off at the port: nothing reaches the function.
    port.lock().unwrap().write(4, &[0]);
    assert!(!bus.mmio_read(0xe000_0000, &mut d));
    port.lock().unwrap().write(4, &[COMMAND_MEMORY as u8]);
    // The guest moves the window away from the BAR (base above limit closes it).
    w32(&mut port.lock().unwrap(), 0x20, 0xe100_e100);
    assert!(!bus.mmio_read(0xe000_0000, &mut d));
    w32(&mut port.lock().unwrap(), 0x20, 0x0000_fff0);
    assert_eq!(port.lock().unwrap().window(), None);
    assert!(!bus.mmio_read(0xe000_0000, &mut d));
}

#[test]
fn a_hot_plug_raises_presence_and_the_ports_msi_once_per_new_event() {
    let mut p = port();
    let sent = counting(&mut p);
    guest_enables_interrupts(&mut p);
    assert!(sent.lock().unwrap().is_empty());
    let (child, _) = probe(0xe000_0000);
    assert!(p.plug(child).is_ok());
    let s = slot_status(&p);
    assert_ne!(s & SLOT_STATUS_PDS, 0);
    assert_ne!(s & SLOT_STATUS_PDC, 0);
    assert_ne!(
        s & SLOT_STATUS_ABP,
        0,
        "the button, as QEMU and a user press it"
    );
    assert!(!link_active(&p), "no link until the guest powers the slot");
    assert_eq!(
        sent.lock().unwrap().as_slice(),
        &[MsiMessage {
            address: 0xfee0_0000,
            data: 0x41
        }]
    );
    // A second plug into the occupied slot is refused, the device given back.
    let (other, _) = probe(0xe010_0000);
    assert!(p.plug(other).is_err());
    // pciehp powers the slot on: the link comes up and says so, but the presence event is
    // still pending, so no new message until the guest clears it.
    let control = p.read((PCIE_OFFSET + 0x18) / 4) as u16;
    w16(&mut p, PCIE_OFFSET + 0x18, control & !SLOT_CONTROL_PCC);
    assert!(link_active(&p));
    assert_ne!(slot_status(&p) & SLOT_STATUS_DLLSC, 0);
    assert_eq!(sent.lock().unwrap().len(), 1);
    // Clearing by writing 1s (only the bits written), then a new event: a new message.
    w16(
        &mut p,
        PCIE_OFFSET + 0x1a,
        SLOT_STATUS_PDC | SLOT_STATUS_DLLSC | SLOT_STATUS_ABP | SLOT_STATUS_PDS,
    );
    assert_eq!(
        slot_status(&p),
        SLOT_STATUS_PDS,
        "presence state is read-only"
    );
    p.press_attention();
    assert_eq!(sent.lock().unwrap().len(), 2);
    assert_ne!(slot_status(&p) & SLOT_STATUS_ABP, 0);
    // The guest's answer to the button: power off; the VMM sees it and takes the function.
    assert!(!p.powered_off());
    let control = p.read((PCIE_OFFSET + 0x18) / 4) as u16;
    w16(&mut p, PCIE_OFFSET + 0x18, control | SLOT_CONTROL_PCC);
    assert!(p.powered_off());
    assert!(!link_active(&p));
    w16(&mut p, PCIE_OFFSET + 0x1a, SLOT_STATUS_EVENTS);
    assert!(p.unplug().is_some());
    assert_eq!(slot_status(&p) & SLOT_STATUS_PDS, 0);
    assert!(!p.is_occupied());
    assert_eq!(
        sent.lock().unwrap().len(),
        3,
        "the presence change is an event"
    );
    assert!(p.unplug().is_none());
}

#[test]
fn the_slot_settles_when_its_events_are_taken_and_its_power_indicator_stops_blinking() {
    let mut p = port();
    guest_enables_interrupts(&mut p);
    assert!(p.settled(), "empty, nothing pending");
    let (child, _) = probe(0xe000_0000);
    assert!(p.plug(child).is_ok());
    assert!(!p.settled(), "presence and button pending");
    let control = p.read((PCIE_OFFSET + 0x18) / 4) as u16 & !SLOT_CONTROL_PIC;
    w16(&mut p, PCIE_OFFSET + 0x1a, SLOT_STATUS_EVENTS);
    assert!(p.settled(), "taken, the indicator never programmed");
    w16(&mut p, PCIE_OFFSET + 0x18, control | PIC_BLINK);
    assert!(!p.settled(), "blinking: pciehp ignores a press");
    w16(
        &mut p,
        PCIE_OFFSET + 0x18,
        control & !SLOT_CONTROL_PCC | PIC_BLINK,
    );
    w16(&mut p, PCIE_OFFSET + 0x1a, SLOT_STATUS_EVENTS);
    assert!(!p.settled(), "powered, still blinking");
    w16(
        &mut p,
        PCIE_OFFSET + 0x18,
        control & !SLOT_CONTROL_PCC | PIC_ON,
    );
    assert!(p.settled());
    w16(&mut p, PCIE_OFFSET + 0x18, control | PIC_OFF);
    w16(&mut p, PCIE_OFFSET + 0x1a, SLOT_STATUS_EVENTS);
    assert!(p.settled(), "off and not blinking");
    // Events pending with the hot-plug interrupt off do not wait for a guest.
    p.press_attention();
    w16(
        &mut p,
        PCIE_OFFSET + 0x18,
        control & !SLOT_CONTROL_HPIE | PIC_ON,
    );
    assert!(p.settled());
}

#[test]
fn events_stay_silent_while_the_hot_plug_interrupt_or_msi_is_off() {
    let mut p = port();
    let sent = counting(&mut p);
    // Slot events enabled, HPIE off.
    w16(
        &mut p,
        PCIE_OFFSET + 0x18,
        SLOT_CONTROL_PDCE | SLOT_CONTROL_PCC,
    );
    let (child, _) = probe(0xe000_0000);
    assert!(p.plug(child).is_ok());
    assert!(sent.lock().unwrap().is_empty());
    // HPIE on with the event pending but MSI disabled: the edge passes, nothing is sent.
    w16(
        &mut p,
        PCIE_OFFSET + 0x18,
        SLOT_CONTROL_PDCE | SLOT_CONTROL_HPIE | SLOT_CONTROL_PCC,
    );
    assert!(sent.lock().unwrap().is_empty());
}

#[test]
fn a_cold_plugged_function_is_present_powered_and_linked_without_an_event() {
    let mut p = port();
    let sent = counting(&mut p);
    let (child, _) = probe(0xe000_0000);
    p.cold_plug(child);
    guest_enables_interrupts(&mut p);
    assert_eq!(slot_status(&p), SLOT_STATUS_PDS);
    assert!(link_active(&p));
    assert!(!p.powered_off());
    assert!(sent.lock().unwrap().is_empty());
}

#[test]
fn a_bad_window_is_left_closed() {
    for w in [
        (0xe000_0000, 0xe000_0000),
        (0xe000_1000, 0xe020_0000),
        (0x1_0000_0000, 0x1_0010_0000),
    ] {
        assert_eq!(RootPort::new(1, 1, w).window(), None, "{w:x?}");
    }
}

proptest! {
    /// Writes of any width at any offset never panic, and the identity, the header type, the
    /// capability list and the slot's capabilities read the same afterwards.
    #[test]
    fn any_write_leaves_the_read_only_registers(
        writes in proptest::collection::vec((0usize..0x1100, proptest::collection::vec(any::<u8>(), 0..6)), 0..64)
    ) {
        let mut p = port();
        let before: Vec<u32> = [0usize, 2, 3, 13].iter().map(|&r| p.read(r)).collect();
        let caps = (p.read(PCIE_OFFSET / 4), p.read((PCIE_OFFSET + 0x14) / 4), p.read((PCIE_OFFSET + 0xc) / 4));
        for (offset, data) in &writes {
            p.write(*offset, data);
            let _ = p.read(offset / 4);
        }
        for r in 0..0x500 {
            let _ = p.read(r);
        }
        let after: Vec<u32> = [0usize, 2, 3, 13].iter().map(|&r| p.read(r)).collect();
        prop_assert_eq!(before, after);
        prop_assert_eq!(caps, (p.read(PCIE_OFFSET / 4), p.read((PCIE_OFFSET + 0x14) / 4), p.read((PCIE_OFFSET + 0xc) / 4)));
        prop_assert_eq!(p.read(MSI_OFFSET / 4) >> 8 & 0xff, PCIE_OFFSET as u32);
    }
}
