//! The SHPC as Linux's shpchp drives it, through a PCI bridge on a bus: its probe (the
//! capability's indirect reads, BAR0, the masks), a hot-plug (insert and button, the MSI, the
//! interrupt handler's reads and write-backs, the power and enable commands), a release
//! (button, disable command) and the commands it refuses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::pci::bridge::{Bridge, BridgeKind, SHPC_MSI_OFFSET, SHPC_OFFSET};
use crate::devices::pci::{PciBus, PciDevice, SharedPciDevice, CONFIG_ADDRESS, CONFIG_DATA};

/// A function that is nothing but present.
struct Card;

impl PciDevice for Card {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg == 0 {
            0x11e8_1234
        } else {
            0
        }
    }
    fn config_write(&mut self, _offset: usize, _data: &[u8]) {}
    fn mmio_read(&mut self, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

const BAR: u64 = 0xe000_0000;

fn cfg(bus: &Mutex<PciBus>, b: u8, slot: u8, offset: usize, write: Option<(u32, usize)>) -> u32 {
    let a = 0x8000_0000u32 | u32::from(b) << 16 | u32::from(slot) << 11 | (offset as u32 & 0xfc);
    let mut g = bus.lock().unwrap();
    g.pio_write(CONFIG_ADDRESS, &a.to_le_bytes());
    if let Some((v, len)) = write {
        g.pio_write(CONFIG_DATA + (offset % 4) as u16, &v.to_le_bytes()[..len]);
        return 0;
    }
    let mut v = [0u8; 4];
    g.pio_read(CONFIG_DATA, &mut v);
    u32::from_le_bytes(v)
}

fn readl(bus: &Mutex<PciBus>, reg: u64) -> u32 {
    let mut v = [0u8; 4];
    assert!(bus.lock().unwrap().mmio_read(BAR + reg, &mut v), "{reg:#x}");
    u32::from_le_bytes(v)
}

fn readw(bus: &Mutex<PciBus>, reg: u64) -> u16 {
    let mut v = [0u8; 2];
    assert!(bus.lock().unwrap().mmio_read(BAR + reg, &mut v));
    u16::from_le_bytes(v)
}

fn writel(bus: &Mutex<PciBus>, reg: u64, v: u32) {
    assert!(bus.lock().unwrap().mmio_write(BAR + reg, &v.to_le_bytes()));
}

fn writew(bus: &Mutex<PciBus>, reg: u64, v: u16) {
    assert!(bus.lock().unwrap().mmio_write(BAR + reg, &v.to_le_bytes()));
}

/// A bus with a bridge at 00:01.0 holding 2 SHPC slots, and the MSIs it raised.
fn setup() -> (Arc<Mutex<PciBus>>, Arc<Mutex<Bridge>>, Arc<AtomicUsize>) {
    let windows = vec![(0xe200_0000, 0xe400_0000), (0xe400_0000, 0xe600_0000)];
    let bridge = Bridge::new(
        BridgeKind::PciBridge,
        0,
        1,
        1,
        (0xe200_0000, 0xe600_0000),
        Vec::new(),
    )
    .with_shpc(64, BAR, windows);
    let bridge = Arc::new(Mutex::new(bridge));
    let msis = Arc::new(AtomicUsize::new(0));
    let m = msis.clone();
    bridge.lock().unwrap().set_signal(Box::new(move |_| {
        m.fetch_add(1, Ordering::SeqCst);
    }));
    let mut bus = PciBus::new();
    assert_eq!(bus.add_shpc_bridge(bridge.clone()), Some(1));
    (Arc::new(Mutex::new(bus)), bridge, msis)
}

/// shpchp's probe: capability, indirect reads, BAR0, masks, MSI on, every event unmasked.
fn probe(bus: &Mutex<PciBus>) {
    assert_ne!(cfg(bus, 0, 1, 4, None) >> 16 & 0x10, 0, "capability list");
    assert_eq!(cfg(bus, 0, 1, 0x34, None), SHPC_OFFSET as u32);
    let cap = cfg(bus, 0, 1, SHPC_OFFSET, None);
    assert_eq!(cap & 0xff, u32::from(CAP_ID));
    assert_eq!(cap >> 8 & 0xff, SHPC_MSI_OFFSET as u32, "next: the MSI");
    assert_eq!(cfg(bus, 0, 1, SHPC_MSI_OFFSET, None) & 0xff, 0x05);
    // Indirect: base offset (0), slot configuration (3).
    cfg(bus, 0, 1, SHPC_OFFSET + 2, Some((0, 1)));
    assert_eq!(cfg(bus, 0, 1, SHPC_OFFSET + 4, None), 0);
    cfg(bus, 0, 1, SHPC_OFFSET + 2, Some((3, 1)));
    let config = cfg(bus, 0, 1, SHPC_OFFSET + 4, None);
    assert_eq!(config & 0x1f, 2, "two slots");
    assert_eq!(config >> 8 & 0x1f, 1, "first device 1");
    assert_eq!(config >> 16 & 0x7ff, 64, "physical slot number");
    assert_ne!(config & 1 << 29, 0, "numbered upwards");
    // BAR0: sizing reads a page, the preset address back.
    assert_eq!(cfg(bus, 0, 1, 0x10, None), BAR as u32);
    cfg(bus, 0, 1, 0x10, Some((u32::MAX, 4)));
    assert_eq!(cfg(bus, 0, 1, 0x10, None), 0xffff_f000);
    cfg(bus, 0, 1, 0x10, Some((BAR as u32, 4)));
    assert_eq!(readl(bus, 0x0c), config, "the same registers through BAR0");
    assert_eq!(readl(bus, 0x04) & 0x1f, 2, "33 MHz slots");
    assert_eq!(readl(bus, 0x10) >> 24, 1, "programming interface 1");
    // Mask everything, then MSI on, then unmask the slots' events and the global/command.
    let serr = readl(bus, 0x20) | 0xf;
    writel(bus, 0x20, serr);
    for i in 0..2 {
        let r = readl(bus, 0x24 + 4 * i) | 0x7f << 24;
        writel(bus, 0x24 + 4 * i, r);
    }
    cfg(bus, 0, 1, SHPC_MSI_OFFSET + 4, Some((0xfee0_0000, 4)));
    cfg(bus, 0, 1, SHPC_MSI_OFFSET + 0xc, Some((0x41, 4)));
    let control = cfg(bus, 0, 1, SHPC_MSI_OFFSET, None);
    cfg(bus, 0, 1, SHPC_MSI_OFFSET, Some((control | 1 << 16, 4)));
    for i in 0..2 {
        let r = readl(bus, 0x24 + 4 * i) & !(0x1f << 24);
        writel(bus, 0x24 + 4 * i, r);
    }
    let serr = readl(bus, 0x20) & !(GLOBAL_INTR_MASK | COMMAND_INTR_MASK);
    writel(bus, 0x20, serr);
}

/// shpchp's interrupt handler: locator, global mask, each pending slot's events written back
/// (cleared), the command detected cleared, global unmask. Returns the locator and the
/// events it saw.
fn isr(bus: &Mutex<PciBus>) -> (u32, Vec<u32>) {
    let loc = readl(bus, 0x18);
    let serr = readl(bus, 0x20);
    writel(bus, 0x20, serr | GLOBAL_INTR_MASK);
    if loc & 1 != 0 {
        let serr = readl(bus, 0x20);
        writel(bus, 0x20, serr & !0xfffc_0000);
    }
    let mut seen = Vec::new();
    for i in 0..2u64 {
        if loc & 1 << (i + 1) == 0 {
            continue;
        }
        let r = readl(bus, 0x24 + 4 * i);
        seen.push(r >> 16 & 0x1f);
        writel(bus, 0x24 + 4 * i, r & !((1 << 15) | (7 << 21)));
    }
    let serr = readl(bus, 0x20);
    writel(bus, 0x20, serr & !(GLOBAL_INTR_MASK | 0xfffc_0000));
    (loc, seen)
}

/// One command as shpc_write_cmd sends it; its status.
fn command(bus: &Mutex<PciBus>, slot_index: u8, code: u8) -> u16 {
    assert_eq!(readw(bus, 0x16) & 1, 0, "busy before the command");
    writew(bus, 0x14, u16::from(slot_index + 1) << 8 | u16::from(code));
    assert_eq!(readw(bus, 0x16) & 1, 0, "completes at once");
    readw(bus, 0x16) & 0xf
}

#[test]
fn a_hot_plug_and_a_release_run_as_shpchp_drives_them() {
    let (bus, bridge, msis) = setup();
    probe(&bus);
    assert_eq!(msis.load(Ordering::SeqCst), 0, "no event yet");
    let slot0 = readl(&bus, 0x24);
    assert_eq!(slot0 & 3, u32::from(STATE_DISABLED));
    assert_eq!(slot0 >> 10 & 3, 3, "empty");
    assert_eq!(slot0 & 1 << 8, 0, "MRL closed");
    assert_ne!(slot0 & 1 << 6, 0, "no power fault");
    // Plug into slot 1 (device 1): presence and button, one MSI.
    let card: SharedPciDevice = Arc::new(Mutex::new(Card));
    assert!(bridge.lock().unwrap().plug_slot(1, card).is_ok());
    assert_eq!(msis.load(Ordering::SeqCst), 1);
    assert_ne!(cfg(&bus, 0, 1, SHPC_OFFSET, None) >> 24, 0, "pending byte");
    assert!(
        !bridge.lock().unwrap().slot_settled(1),
        "events the guest has not taken"
    );
    let (loc, seen) = isr(&bus);
    assert_eq!(loc, 1 << 1, "slot 0 pending");
    assert_eq!(
        seen,
        vec![u32::from(EVENT_PRESENCE | EVENT_BUTTON)],
        "presence and button"
    );
    assert_eq!(readl(&bus, 0x18), 0, "cleared by the write-back");
    assert_eq!(readl(&bus, 0x24) >> 10 & 3, 2, "present");
    // Its 5 s later: power, speed (33 MHz), enable with blinking power, then power on.
    let before = msis.load(Ordering::SeqCst);
    assert_eq!(command(&bus, 0, 0x01), 0);
    assert_eq!(readl(&bus, 0x24) & 3, u32::from(STATE_POWER_ONLY));
    assert_eq!(
        msis.load(Ordering::SeqCst),
        before + 1,
        "command completion"
    );
    isr(&bus);
    assert_eq!(command(&bus, 0, 0x40), 0, "33 MHz conventional");
    isr(&bus);
    assert_eq!(command(&bus, 0, 0x02 | 0x08 | 0x30), 0);
    isr(&bus);
    let r = readl(&bus, 0x24);
    assert_eq!(
        (r & 3, r >> 2 & 3, r >> 4 & 3),
        (2, 2, 3),
        "enabled, blink, off"
    );
    assert_eq!(cfg(&bus, 1, 1, 0, None), 0x11e8_1234, "the card at 01:01.0");
    assert!(!bridge.lock().unwrap().slot_disabled(1));
    assert!(
        !bridge.lock().unwrap().slot_settled(1),
        "blinking: a press now would be ignored"
    );
    // The driver bound: shpchp turns the power indicator on, and the slot has settled.
    assert_eq!(command(&bus, 0, 0x04), 0);
    isr(&bus);
    assert_eq!(readl(&bus, 0x24) >> 2 & 3, 1, "power indicator on");
    assert!(bridge.lock().unwrap().slot_settled(1));
    assert!(!bridge.lock().unwrap().slot_settled(9), "no such slot");
    // Release: the button; shpchp's 5 s, then disable, power off, attention on.
    let before = msis.load(Ordering::SeqCst);
    bridge.lock().unwrap().press_slot(1);
    assert_eq!(msis.load(Ordering::SeqCst), before + 1);
    let (_, seen) = isr(&bus);
    assert_eq!(seen, vec![u32::from(EVENT_BUTTON)]);
    assert_eq!(command(&bus, 0, 0x03 | 0x0c | 0x10), 0);
    isr(&bus);
    assert!(bridge.lock().unwrap().slot_disabled(1));
    assert!(bridge.lock().unwrap().unplug_slot(1).is_some());
    assert_eq!(cfg(&bus, 1, 1, 0, None), u32::MAX, "gone");
    let (_, seen) = isr(&bus);
    assert_eq!(seen, vec![u32::from(EVENT_PRESENCE)]);
    assert_eq!(readl(&bus, 0x24) >> 10 & 3, 3, "empty again");
    assert_eq!(bridge.lock().unwrap().free_slot().map(|s| s.0), Some(1));
}

#[test]
fn bad_commands_and_masked_events_are_answered_without_an_interrupt() {
    let (bus, bridge, msis) = setup();
    probe(&bus);
    // A slot it does not have, a speed it does not run, a reserved code.
    assert_eq!(command(&bus, 5, 0x02), STATUS_INVALID_COMMAND);
    assert_eq!(command(&bus, 0, 0x41), STATUS_INVALID_SPEED);
    assert_eq!(command(&bus, 0, 0x60), STATUS_INVALID_COMMAND);
    isr(&bus);
    // Every event masked: presence latched, no interrupt.
    let r = readl(&bus, 0x24);
    writel(&bus, 0x24, r | 0x1f << 24);
    let before = msis.load(Ordering::SeqCst);
    let card: SharedPciDevice = Arc::new(Mutex::new(Card));
    assert!(bridge.lock().unwrap().plug_slot(1, card).is_ok());
    assert_eq!(msis.load(Ordering::SeqCst), before);
    assert_eq!(readl(&bus, 0x18), 0);
    assert_ne!(readl(&bus, 0x24) >> 16 & 0x1f, 0, "latched all the same");
    // Slot 1 is taken; slot 3 does not exist; a slot only a hot-plug slot takes.
    let card: SharedPciDevice = Arc::new(Mutex::new(Card));
    assert!(bridge.lock().unwrap().plug_slot(1, card.clone()).is_err());
    assert!(bridge.lock().unwrap().plug_slot(3, card).is_err());
    // Odd accesses: past the registers, unaligned spans.
    let mut v = [0u8; 4];
    assert!(bus.lock().unwrap().mmio_read(BAR + 0xff0, &mut v));
    assert_eq!(v, [0; 4]);
    let mut shpc = Shpc::new(2, 64);
    shpc.write(0x15, &[1, 2, 3, 4]);
    shpc.write(0x14, &[]);
    assert_eq!(shpc.read_dword(5), 0, "no command ran");
}
