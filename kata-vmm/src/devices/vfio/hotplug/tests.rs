//! Hot-plug without KVM or a host device: the spare ports [`super::super::build_bus`] makes,
//! the choice of a free port and its reuse, the slot's plug and release sequence as pciehp
//! drives it (a guest thread writing the slot control register through the bus), and the
//! refusals that leave nothing behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::pci::root_port::{
    PCIE_OFFSET, SLOT_CONTROL_PCC, SLOT_STATUS_ABP, SLOT_STATUS_DLLSC, SLOT_STATUS_PDC,
    SLOT_STATUS_PDS,
};
use crate::devices::pci::{PciDevice, CONFIG_ADDRESS, CONFIG_DATA};
use crate::devices::vfio::msi::MsiMessage;
use crate::devices::vfio::tests::group_with_a_member_on_a_host_driver;

/// The press reserve of the tests whose fake guest answers the button within milliseconds
/// (pciehp and shpchp wait 5 s: [`PRESS_RESERVE`]).
const RESERVE: Duration = Duration::from_secs(1);

fn mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// A function that is nothing but present.
struct Card;

impl PciDevice for Card {
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

fn card() -> crate::devices::pci::SharedPciDevice {
    Arc::new(Mutex::new(Card))
}

/// The bus with `n` spare ports and no function.
fn spare_bus(n: u8) -> PciBus {
    let Some((bus, set)) = super::super::build_bus(&[], n, &mem()).unwrap() else {
        panic!("spare ports make a bus")
    };
    assert!(set.container.is_none(), "no VFIO opened for empty ports");
    bus
}

/// A configuration cycle of 4 bytes at `reg`'s byte offset of `00:slot.0`, as the guest makes.
fn cfg_addr(slot: u8, offset: usize) -> [u8; 4] {
    (0x8000_0000u32 | u32::from(slot) << 11 | (offset as u32 & 0xfc)).to_le_bytes()
}

fn guest_read(bus: &Mutex<PciBus>, slot: u8, offset: usize) -> u32 {
    let mut b = lock(bus);
    b.pio_write(CONFIG_ADDRESS, &cfg_addr(slot, offset));
    let mut v = [0u8; 4];
    b.pio_read(CONFIG_DATA, &mut v);
    u32::from_le_bytes(v)
}

fn guest_write(bus: &Mutex<PciBus>, slot: u8, offset: usize, value: u32) {
    let mut b = lock(bus);
    b.pio_write(CONFIG_ADDRESS, &cfg_addr(slot, offset));
    b.pio_write(CONFIG_DATA, &value.to_le_bytes());
}

/// Slot control as Linux's pciehp sets it for a slot with an attention button
/// (`pcie_enable_notification`): attention button and link events and the hot-plug interrupt,
/// but no presence event (with a button, presence alone does not interrupt); power as `on`
/// says.
fn pciehp_control(on: bool) -> u32 {
    let c = 1 | (1 << 5) | (1 << 12);
    if on {
        c
    } else {
        c | u32::from(SLOT_CONTROL_PCC)
    }
}

/// The guest's MSI programming of the port at `slot` (enable, 64-bit address, data).
fn enable_msi(bus: &Mutex<PciBus>, slot: u8) {
    guest_write(bus, slot, 0x44, 0xfee0_0000);
    guest_write(bus, slot, 0x48, 0);
    guest_write(bus, slot, 0x4c, 0x41);
    let control = guest_read(bus, slot, 0x40);
    guest_write(bus, slot, 0x40, control | 1 << 16);
}

#[test]
fn spare_ports_are_empty_hot_plug_slots_with_their_own_buses_and_windows() {
    let bus = spare_bus(2);
    let ports = bus.root_ports();
    assert_eq!(ports.len(), 2);
    let (a, b) = (lock(&ports[0].1), lock(&ports[1].1));
    assert_eq!((ports[0].0, ports[1].0), (1, 2));
    assert_eq!((a.buses().0, b.buses().0), (1, 2));
    assert!(!a.is_occupied() && !b.is_occupied() && !a.is_powered());
    let (wa, wb) = (a.preset_window(), b.preset_window());
    assert_eq!(wa.1 - wa.0, super::super::ROOT_PORT_WINDOW);
    assert!(wa.1 <= wb.0, "windows overlap: {wa:x?} {wb:x?}");
    assert!(super::super::build_bus(&[], 0, &mem()).unwrap().is_none());
}

#[test]
fn too_many_spare_ports_are_refused_naming_pcie_root_port() {
    let e = super::super::build_bus(&[], 40, &mem())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pcie_root_port"), "{e}");
}

#[test]
fn the_first_free_port_is_taken_and_freed_ports_are_reused() {
    let bus = spare_bus(2);
    let (slot, first) = free_port(&bus).unwrap();
    assert_eq!(slot, 1);
    assert!(lock(&first).plug(card()).is_ok());
    let (slot, second) = free_port(&bus).unwrap();
    assert_eq!(slot, 2);
    assert!(lock(&second).plug(card()).is_ok());
    assert!(free_port(&bus).is_none());
    // The guest released the first (powered it off): taken out, free again.
    lock(&first).write(PCIE_OFFSET + 0x18, &(SLOT_CONTROL_PCC).to_le_bytes());
    release(&first, "card", Duration::from_secs(1)).unwrap();
    assert_eq!(free_port(&bus).map(|p| p.0), Some(1));
}

#[test]
fn a_plug_and_a_release_run_the_slot_sequence_pciehp_expects() {
    let bus = Arc::new(Mutex::new(spare_bus(1)));
    let port = lock(&bus).root_ports()[0].1.clone();
    let signalled = Arc::new(AtomicUsize::new(0));
    let s = signalled.clone();
    let last = Arc::new(Mutex::new(None::<MsiMessage>));
    let l = last.clone();
    lock(&port).set_signal(Box::new(move |m| {
        s.fetch_add(1, Ordering::SeqCst);
        *lock(&l) = Some(m);
    }));
    // pciehp binds: MSI on, every event enabled, the empty slot's power off.
    enable_msi(&bus, 1);
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_control(false));
    assert_eq!(signalled.load(Ordering::SeqCst), 0);
    // Plug: presence detected and changed, one MSI with the guest's message.
    assert!(lock(&port).plug(card()).is_ok());
    let status = guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16;
    let plugged = SLOT_STATUS_PDS | SLOT_STATUS_PDC | SLOT_STATUS_ABP;
    assert_eq!(status as u16 & plugged, plugged);
    assert_eq!(signalled.load(Ordering::SeqCst), 1);
    assert_eq!(lock(&last).map(|m| m.data), Some(0x41));
    // Its interrupt handler clears what it read; its thread powers the slot: the link comes
    // up (one more MSI), the function answers at 01:00.0.
    guest_write(
        &bus,
        1,
        PCIE_OFFSET + 0x18,
        pciehp_control(false) | u32::from(SLOT_STATUS_PDC | SLOT_STATUS_ABP) << 16,
    );
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_control(true));
    assert_eq!(
        guest_read(&bus, 1, PCIE_OFFSET + 0x10) >> 16 & 1 << 13,
        1 << 13
    );
    assert_eq!(signalled.load(Ordering::SeqCst), 2);
    // Its interrupt handler acknowledges the link change the power brought.
    let status = guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16;
    assert_eq!(status as u16 & SLOT_STATUS_DLLSC, SLOT_STATUS_DLLSC);
    guest_write(
        &bus,
        1,
        PCIE_OFFSET + 0x18,
        pciehp_control(true) | u32::from(SLOT_STATUS_DLLSC) << 16,
    );
    {
        let mut b = lock(&bus);
        b.pio_write(CONFIG_ADDRESS, &(0x8001_0000u32).to_le_bytes());
        let mut v = [0u8; 4];
        b.pio_read(CONFIG_DATA, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x11e8_1234);
    }
    // Release: the attention button (one more MSI); the guest's pciehp powers the slot off
    // while `release` waits; then the function is out and the port free.
    let guest = {
        let (bus, port) = (bus.clone(), port.clone());
        std::thread::spawn(move || {
            for _ in 0..200 {
                let status = guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16;
                if status as u16 & SLOT_STATUS_ABP != 0 {
                    guest_write(
                        &bus,
                        1,
                        PCIE_OFFSET + 0x18,
                        pciehp_control(false) | u32::from(SLOT_STATUS_ABP) << 16,
                    );
                    return true;
                }
                let _ = &port;
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    };
    release_reserving(&port, "card", Duration::from_secs(5), RESERVE).unwrap();
    assert!(
        guest.join().unwrap(),
        "the guest never saw the attention button"
    );
    assert_eq!(
        signalled.load(Ordering::SeqCst),
        3,
        "plug, link up and attention button"
    );
    assert!(!lock(&port).is_occupied());
    let status = guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16;
    assert_eq!(
        status as u16 & SLOT_STATUS_PDS,
        0,
        "presence still reported"
    );
    assert!(free_port(&lock(&bus)).is_some());
}

#[test]
fn a_guest_that_never_releases_the_slot_times_out_and_keeps_the_function() {
    let bus = spare_bus(1);
    let port = bus.root_ports()[0].1.clone();
    assert!(lock(&port).plug(card()).is_ok());
    // Powered and in use: nobody answers the button.
    lock(&port).write(PCIE_OFFSET + 0x18, &0u16.to_le_bytes());
    let e = release_reserving(
        &port,
        "VFIO device 0000:00:03.0",
        Duration::from_millis(200),
        Duration::from_millis(100),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("0000:00:03.0") && e.contains("did not power its slot off"),
        "{e}"
    );
    assert!(lock(&port).is_occupied());
}

/// The slot control pciehp writes with the power indicator `pic` and events `clear` taken
/// (write 1 to clear) in the same cycle.
fn pciehp_with(on: bool, pic: u16, clear: u16) -> u32 {
    pciehp_control(on) | u32::from(pic) | u32::from(clear) << 16
}

#[test]
fn the_button_waits_for_the_slot_to_settle_and_is_never_pressed_while_it_blinks() {
    use crate::devices::pci::root_port::{PIC_BLINK, PIC_ON};
    let bus = Arc::new(Mutex::new(spare_bus(1)));
    let port = lock(&bus).root_ports()[0].1.clone();
    enable_msi(&bus, 1);
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_control(false));
    assert!(lock(&port).plug(card()).is_ok());
    assert!(!lock(&port).settled(), "presence and button not taken yet");
    // The guest, as pciehp: takes the events and blinks (the button's 5 s, then the power-on
    // and the driver's probe), powers the slot, and only then turns the indicator on; then
    // answers the release's button by powering the slot off.
    let guest = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let pressed = || guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16 & 1 != 0;
            std::thread::sleep(Duration::from_millis(150));
            let plugged = SLOT_STATUS_PDC | SLOT_STATUS_ABP;
            guest_write(
                &bus,
                1,
                PCIE_OFFSET + 0x18,
                pciehp_with(false, PIC_BLINK, plugged),
            );
            std::thread::sleep(Duration::from_millis(150));
            guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_with(true, PIC_BLINK, 0));
            guest_write(
                &bus,
                1,
                PCIE_OFFSET + 0x18,
                pciehp_with(true, PIC_BLINK, SLOT_STATUS_DLLSC),
            );
            std::thread::sleep(Duration::from_millis(300));
            let early = pressed();
            guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_with(true, PIC_ON, 0));
            for _ in 0..300 {
                if pressed() {
                    let off = pciehp_with(false, PIC_BLINK, SLOT_STATUS_ABP);
                    guest_write(&bus, 1, PCIE_OFFSET + 0x18, off);
                    return (early, true);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (early, false)
        })
    };
    // Asked for at once: before, the slot's power (off until the guest's thread powers it)
    // made this a removal at once, and a press while blinking was lost.
    let t = std::time::Instant::now();
    release_reserving(&port, "card", Duration::from_secs(10), RESERVE).unwrap();
    let (early, seen) = guest.join().unwrap();
    assert!(!early, "pressed while the guest was powering the slot on");
    assert!(seen, "never pressed once settled");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert!(!lock(&port).is_occupied());
}

#[test]
fn a_slot_that_never_settles_is_not_pressed_and_keeps_the_function() {
    use crate::devices::pci::root_port::PIC_BLINK;
    let bus = spare_bus(1);
    let port = bus.root_ports()[0].1.clone();
    let bus = Mutex::new(bus);
    enable_msi(&bus, 1);
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_control(false));
    assert!(lock(&port).plug(card()).is_ok());
    // Powered, the events taken, and the indicator blinking for ever.
    let all = SLOT_STATUS_PDC | SLOT_STATUS_ABP | SLOT_STATUS_DLLSC;
    guest_write(
        &bus,
        1,
        PCIE_OFFSET + 0x18,
        pciehp_with(true, PIC_BLINK, all),
    );
    let e = release_reserving(
        &port,
        "VFIO device 0000:00:03.0",
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("0000:00:03.0")
            && e.contains("did not settle")
            && e.contains("blinking")
            && e.contains("not pressed"),
        "{e}"
    );
    let status = guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16;
    assert_eq!(status as u16 & SLOT_STATUS_ABP, 0, "no button press");
    assert!(lock(&port).is_occupied());
}

/// Working register `index` of the SHPC of `bridge` written with `data` at byte `within`,
/// as shpchp reaches it through the capability (DWORD select, then the selected DWORD).
fn shpc_write(bridge: &Mutex<Bridge>, index: u8, within: usize, data: &[u8]) {
    use crate::devices::pci::bridge::SHPC_OFFSET;
    let mut b = lock(bridge);
    b.write(SHPC_OFFSET + 2, &[index]);
    b.write(SHPC_OFFSET + 4 + within, data);
}

/// The SHPC's slot 1 register (working register 9) of `bridge`.
fn shpc_slot1(bridge: &Mutex<Bridge>) -> u32 {
    use crate::devices::pci::bridge::SHPC_OFFSET;
    let mut b = lock(bridge);
    b.write(SHPC_OFFSET + 2, &[9]);
    b.read((SHPC_OFFSET + 4) / 4)
}

#[test]
fn an_shpc_slot_is_pressed_only_once_its_power_indicator_stops_blinking() {
    let Some((bus, _)) = super::super::build_hierarchy(&[], 0, 0, 2, &mem()).unwrap() else {
        panic!("spare bridge slots make a bus")
    };
    let bridge = bus.shpc_bridges()[0].1.clone();
    assert!(lock(&bridge).plug_slot(1, card()).is_ok());
    // shpchp took the presence and button events, enabled the slot and blinks (its 5 s and
    // the enable): a press now would be ignored or cancel the add.
    shpc_write(&bridge, 9, 2, &[0x1f]);
    shpc_write(&bridge, 5, 0, &[0x02 | 0x08, 1]);
    assert_eq!(shpc_slot1(&bridge) & 0xf, 2 | 2 << 2, "enabled, blinking");
    let e = release_bridge_slot_reserving(
        &bridge,
        1,
        "VFIO device 0000:00:03.0",
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("0000:00:03.0") && e.contains("shpchp") && e.contains("not pressed"),
        "{e}"
    );
    assert_eq!(shpc_slot1(&bridge) >> 16 & 0x1f, 0, "no button latched");
    assert!(lock(&bridge).is_occupied(1));
    // The guest turns the indicator on later and answers the button by disabling the slot.
    let guest = {
        let bridge = bridge.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let early = shpc_slot1(&bridge) >> 16 & 4 != 0;
            shpc_write(&bridge, 5, 0, &[0x04, 1]);
            for _ in 0..300 {
                if shpc_slot1(&bridge) >> 16 & 4 != 0 {
                    shpc_write(&bridge, 9, 2, &[0x1f]);
                    shpc_write(&bridge, 5, 0, &[0x03 | 0x0c, 1]);
                    return (early, true);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (early, false)
        })
    };
    release_bridge_slot_reserving(&bridge, 1, "card", Duration::from_secs(10), RESERVE).unwrap();
    let (early, seen) = guest.join().unwrap();
    assert!(!early, "pressed while blinking");
    assert!(seen, "never pressed once settled");
    assert!(!lock(&bridge).is_occupied(1));
}

#[test]
fn no_free_port_is_an_error_naming_pcie_root_port() {
    let bus = Mutex::new(PciBus::new());
    let set = Mutex::new(VfioSet::default());
    let Err(e) = plug_into(&bus, &set, &mem(), &VfioConfig::new("0000:00:03.0"), |_| {
        Ok(())
    }) else {
        panic!("plugged with no port")
    };
    let e = e.to_string();
    assert!(
        e.contains("pcie_root_port") && e.contains("0000:00:03.0"),
        "{e}"
    );
}

#[test]
fn a_function_not_on_vfio_pci_is_refused_and_leaves_the_port_empty() {
    let t = tempfile::tempdir().unwrap();
    let s = group_with_a_member_on_a_host_driver(t.path());
    let bus = Mutex::new(spare_bus(1));
    let set = Mutex::new(VfioSet::default());
    let c = VfioConfig {
        bdf: "0000:00:03.0".into(),
        sysfs: s,
        dev_vfio: t.path().join("dev-vfio"),
        behind_root_port: true,
        behind_switch: false,
        behind_bridge: false,
    };
    let wired = AtomicUsize::new(0);
    let Err(e) = plug_into(&bus, &set, &mem(), &c, |_| {
        wired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }) else {
        panic!("plugged a function whose group is not on vfio-pci")
    };
    let e = e.to_string();
    assert!(e.contains("0000:00:04.0") && e.contains("e1000e"), "{e}");
    assert_eq!(wired.load(Ordering::SeqCst), 0);
    let set = lock(&set);
    assert!(set.container.is_none() && set.groups.is_empty() && set.devices.is_empty());
    assert!(free_port(&lock(&bus)).is_some(), "the port was taken");
}

#[test]
fn spare_ports_go_with_memory_hotplug_and_a_vfio_plug_is_refused() {
    // The VM is not refused for its spare ports (disks may take them): what fails here is the
    // missing kernel.
    let t = tempfile::tempdir().unwrap();
    let e = crate::vm::VmBuilder::new(t.path().join("no-kernel"))
        .hotplug_memory_mib(128)
        .spare_root_ports(1)
        .prepare()
        .unwrap_err()
        .to_string();
    assert!(
        !e.contains("enable_virtio_mem") && e.contains("no-kernel"),
        "{e}"
    );
    // A VFIO function is: its DMA would not cover memory plugged later.
    let c = VfioConfig::new("0000:00:03.0").behind_root_port();
    let e = refuse_with_memory_hotplug(true, &c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("0000:00:03.0") && e.contains("enable_virtio_mem"),
        "{e}"
    );
    refuse_with_memory_hotplug(false, &c).unwrap();
}

/// A configuration cycle at `b:slot.0`, byte `offset`, as the guest makes it below a bridge.
fn cfg_at(bus: &Mutex<PciBus>, b: u8, slot: u8, offset: usize, write: Option<u32>) -> u32 {
    let a = 0x8000_0000u32 | u32::from(b) << 16 | u32::from(slot) << 11 | (offset as u32 & 0xfc);
    let mut g = lock(bus);
    g.pio_write(CONFIG_ADDRESS, &a.to_le_bytes());
    if let Some(v) = write {
        g.pio_write(CONFIG_DATA, &v.to_le_bytes());
        return 0;
    }
    let mut v = [0u8; 4];
    g.pio_read(CONFIG_DATA, &mut v);
    u32::from_le_bytes(v)
}

#[test]
fn spare_switch_ports_take_functions_with_the_root_ports_slot_sequence_and_are_reused() {
    let Some((bus, _)) = super::super::build_hierarchy(&[], 0, 2, 0, &mem()).unwrap() else {
        panic!("spare switch ports make a bus")
    };
    assert!(free_port(&bus).is_none(), "the switch's root port is taken");
    let bus = Arc::new(Mutex::new(bus));
    let (slot, path, first) = free_hotplug_port(&lock(&bus)).unwrap();
    assert_eq!((slot, path.as_slice()), (1, &[1u8, 0, 0, 0][..]));
    // pciehp binds to downstream port 0 (02:00.0): every event but presence, power off.
    cfg_at(&bus, 2, 0, PCIE_OFFSET + 0x18, Some(pciehp_control(false)));
    let signalled = Arc::new(AtomicUsize::new(0));
    let s = signalled.clone();
    lock(&first).set_signal(Box::new(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
    }));
    cfg_at(&bus, 2, 0, 0x44, Some(0xfee0_0000));
    let control = cfg_at(&bus, 2, 0, 0x40, None);
    cfg_at(&bus, 2, 0, 0x40, Some(control | 1 << 16));
    assert!(lock(&first).plug(card()).is_ok());
    assert_eq!(signalled.load(Ordering::SeqCst), 1, "presence and button");
    let status = (cfg_at(&bus, 2, 0, PCIE_OFFSET + 0x18, None) >> 16) as u16;
    assert_eq!(status & SLOT_STATUS_PDS, SLOT_STATUS_PDS);
    // Powered by the guest (its events taken): the card answers at 03:00.0; the next free
    // port is port 1.
    cfg_at(
        &bus,
        2,
        0,
        PCIE_OFFSET + 0x18,
        Some(pciehp_control(true) | 0x1ff << 16),
    );
    cfg_at(
        &bus,
        2,
        0,
        PCIE_OFFSET + 0x18,
        Some(pciehp_control(true) | 0x1ff << 16),
    );
    assert_eq!(cfg_at(&bus, 3, 0, 0, None), 0x11e8_1234);
    let (_, path, second) = free_hotplug_port(&lock(&bus)).unwrap();
    assert_eq!(path, vec![1, 0, 1, 0]);
    assert!(lock(&second).plug(card()).is_ok());
    assert!(free_hotplug_port(&lock(&bus)).is_none());
    // Release port 0: the guest answers the button by powering the slot off.
    let guest = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let status = cfg_at(&bus, 2, 0, PCIE_OFFSET + 0x18, None) >> 16;
                if status as u16 & SLOT_STATUS_ABP != 0 {
                    let v = pciehp_control(false) | u32::from(SLOT_STATUS_ABP) << 16;
                    cfg_at(&bus, 2, 0, PCIE_OFFSET + 0x18, Some(v));
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    };
    release_reserving(&first, "card", Duration::from_secs(5), RESERVE).unwrap();
    assert!(guest.join().unwrap(), "the guest never saw the button");
    assert_eq!(cfg_at(&bus, 3, 0, 0, None), u32::MAX, "gone from bus 3");
    assert_eq!(cfg_at(&bus, 4, 0, 0, None), 0x11e8_1234, "port 1's stays");
    let (_, path, _) = free_hotplug_port(&lock(&bus)).unwrap();
    assert_eq!(path, vec![1, 0, 0, 0], "the freed port is reused");
}

#[test]
fn spare_ports_and_slots_have_their_lines_at_boot_and_a_virtio_line_moves_one() {
    use crate::vstate::mptable::PciIntx;
    let e = |slot, intx, pin| PciIntx { slot, intx, pin };
    let Some((_, set)) = super::super::build_bus(&[], 2, &mem()).unwrap() else {
        panic!("spare ports make a bus")
    };
    assert_eq!(set.intx_lines(), vec![e(1, 0, 23), e(2, 0, 22)]);
    assert_eq!(set.intx_pin_at(&[2, 0]), Some(22));
    // A virtio-mmio line on pin 22: not an error, the port's line moves below.
    set.check_lines([5, 22]).unwrap();
    assert_eq!(set.intx_lines(), vec![e(1, 0, 23), e(2, 0, 21)]);
    assert_eq!(set.intx_pin_at(&[2, 0]), Some(21));
    // A switch (slot 1) with 2 spare downstream ports and a bridge (slot 2) with 3 SHPC
    // slots: every pin of both slots, so port 1 and the bridge's slots 1-3 have a line.
    let Some((_, set)) = super::super::build_hierarchy(&[], 0, 2, 3, &mem()).unwrap() else {
        panic!("spare switch ports make a bus")
    };
    let lines = set.intx_lines();
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(set.intx_pin_at(&[1, 0, 0, 0]), Some(23));
    assert_eq!(set.intx_pin_at(&[2, 0]), Some(22), "bridge INTA#");
    assert_eq!(
        set.intx_pin_at(&[1, 0, 1, 0]),
        Some(21),
        "port 1: INTB# of slot 1"
    );
    assert_eq!(
        set.intx_pin_at(&[2, 1]),
        Some(18),
        "SHPC slot 1: INTB# of slot 2"
    );
    assert_eq!(
        set.intx_pin_at(&[2, 3]),
        Some(16),
        "SHPC slot 3: INTD# of slot 2"
    );
}

#[test]
fn a_slot_that_settles_too_late_to_release_in_time_is_not_pressed() {
    use crate::devices::pci::root_port::{PIC_BLINK, PIC_ON};
    let bus = Arc::new(Mutex::new(spare_bus(1)));
    let port = lock(&bus).root_ports()[0].1.clone();
    enable_msi(&bus, 1);
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_control(false));
    assert!(lock(&port).plug(card()).is_ok());
    let all = SLOT_STATUS_PDC | SLOT_STATUS_ABP | SLOT_STATUS_DLLSC;
    guest_write(
        &bus,
        1,
        PCIE_OFFSET + 0x18,
        pciehp_with(true, PIC_BLINK, all),
    );
    // The guest turns the indicator on 700 ms into a 1 s unplug that keeps 600 ms for the
    // guest after a press: pressed then, pciehp would act on it after the unplug gave up.
    let guest = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_with(true, PIC_ON, 0));
        })
    };
    let e = release_reserving(
        &port,
        "VFIO device 0000:00:03.0",
        Duration::from_secs(1),
        Duration::from_millis(600),
    )
    .unwrap_err()
    .to_string();
    guest.join().unwrap();
    assert!(
        e.contains("0000:00:03.0") && e.contains("did not settle") && e.contains("not pressed"),
        "{e}"
    );
    let status = guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16;
    assert_eq!(status as u16 & SLOT_STATUS_ABP, 0, "no button press");
    assert!(lock(&port).is_occupied());
}

#[test]
fn an_unplug_timeout_shorter_than_the_guests_button_delay_presses_nothing() {
    let bus = spare_bus(1);
    let port = bus.root_ports()[0].1.clone();
    let bus = Mutex::new(bus);
    enable_msi(&bus, 1);
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_control(false));
    assert!(lock(&port).plug(card()).is_ok());
    let all = SLOT_STATUS_PDC | SLOT_STATUS_ABP | SLOT_STATUS_DLLSC;
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_with(true, 0, all));
    // The link change the power brought, taken.
    guest_write(&bus, 1, PCIE_OFFSET + 0x18, pciehp_with(true, 0, all));
    assert!(
        lock(&port).settled(),
        "powered, events taken, indicator unset"
    );
    let e = release(&port, "VFIO device 0000:00:03.0", Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("0000:00:03.0") && e.contains("not pressed") && e.contains("at least 8s"),
        "{e}"
    );
    let status = guest_read(&bus, 1, PCIE_OFFSET + 0x18) >> 16;
    assert_eq!(status as u16 & SLOT_STATUS_ABP, 0, "no button press");
    assert!(lock(&port).is_occupied());
}

#[test]
fn the_button_needs_the_slot_settled_on_two_polls_in_a_row() {
    // Settled once between the guest's handler taking the events and its worker blinking:
    // not enough. Then settled twice: pressed, after five polls.
    let seen = [
        Slot::Busy,
        Slot::Settled,
        Slot::Busy,
        Slot::Settled,
        Slot::Settled,
    ];
    let mut polls = 0;
    let press = settle("card", Duration::from_secs(5), RESERVE, "pciehp", || {
        polls += 1;
        seen[polls - 1]
    })
    .unwrap();
    assert!(press);
    assert_eq!(polls, 5);
    // A slot read off once, right after a plug, before the guest's worker powers it: not
    // taken for released; off twice is.
    let seen = [Slot::Off, Slot::Busy, Slot::Off, Slot::Off];
    let mut polls = 0;
    let press = settle("card", Duration::from_secs(5), RESERVE, "pciehp", || {
        polls += 1;
        seen[polls - 1]
    })
    .unwrap();
    assert!(!press);
    assert_eq!(polls, 4);
    // An empty slot needs nothing.
    assert!(!settle("card", Duration::ZERO, RESERVE, "pciehp", || Slot::Empty).unwrap());
}
