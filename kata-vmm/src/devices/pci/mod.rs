//! A conventional PCI root bus reached by configuration mechanism #1 (ports `0xCF8`-`0xCFF`),
//! with a host bridge at `00:00.0` and the devices at `00:01.0`, `00:02.0`, ...
//!
//! The VMM has no ACPI and no MMCONFIG: the guest kernel finds the bus by direct probing
//! (`pci_direct_probe`: the address register reads back what was written, and a host bridge
//! answers at `00:00.0`), then scans bus 0. Each device's memory BARs are placed by the VMM in
//! the [`PCI_MMIO_START`]..[`PCI_MMIO_END`] window before boot, so the kernel claims them as
//! they are; a guest that reprograms a BAR moves it (its accesses follow the register).
//!
//! PCI Express root ports ([`root_port`]) may sit on bus 0 too: configuration cycles for a
//! port's secondary bus reach the function in its slot (device 0 only), and its memory window
//! forwards that function's BARs, which the VMM placed inside it.
//!
//! Below a root port the hierarchy may go on: a PCIe switch ([`switch`]: an upstream port on
//! the root port's secondary bus, its downstream ports on the switch's internal bus, each with
//! a slot like a root port's). A conventional PCI-to-PCI bridge ([`bridge`]) may sit on bus 0,
//! functions in the slots of its secondary bus. One routing serves every level: a type-1 device
//! ([`PciDevice::route`]) answers a configuration cycle for its secondary bus with the device
//! in that slot, and passes one for a bus in (secondary, subordinate] to its children; the VMM
//! numbers the buses depth first when it builds the hierarchy, so no two bridges claim a bus,
//! and nests the memory windows, so each bridge's window holds its children's BARs.
//!
//! Only function 0 of each slot exists; every other address reads as all ones, and a bad or
//! odd access (a width the port does not take, a disabled address, a register past the header)
//! is answered as on a PC, never a panic.

use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::VcpuExit;

pub mod bridge;
pub mod root_port;
pub mod shpc;
pub mod switch;
mod type1;

use root_port::RootPort;

/// The address register of configuration mechanism #1.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// The data window (4 bytes) of configuration mechanism #1.
pub const CONFIG_DATA: u16 = 0xcfc;
/// The start of the window where the VMM places the devices' memory BARs (above the
/// virtio-mmio windows at `0xd000_0000`).
pub const PCI_MMIO_START: u64 = 0xe000_0000;
/// The end of that window (the IOAPIC's page is next).
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
/// The slots a bus has; slot 0 is the host bridge.
pub const PCI_SLOTS: u8 = 32;

/// A function on the bus: its configuration space and what its BARs decode.
pub trait PciDevice: Send {
    /// The 32-bit configuration register `reg` (dword index, 0..64).
    fn config_read(&mut self, reg: usize) -> u32;
    /// A guest write of `data` (1, 2 or 4 bytes, within one dword) at byte `offset` of the
    /// configuration space.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// A guest read at `addr` if one of the device's BARs decodes it (else false).
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool;
    /// A guest write at `addr` if one of the device's BARs decodes it (else false).
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool;
    /// For a bridge (a type-1 header): the device at `slot` of bus `bus` when `bus` is its
    /// secondary bus, or what its children route for a bus in (secondary, subordinate], as
    /// the guest programmed the bus numbers. `None` for anything else, and for every
    /// function that is not a bridge.
    fn route(&mut self, bus: u8, slot: u8) -> Option<SharedPciDevice> {
        let _ = (bus, slot);
        None
    }
}

/// The host bridge at `00:00.0`: what `pci_sanity_check` looks for (class 0x0600).
#[derive(Debug, Default)]
struct HostBridge;

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        match reg {
            // Intel, a host bridge device id the kernel has no quirk for.
            0 => 0x0d57_8086,
            // Class 0x06 (bridge), subclass 0x00 (host), revision 0.
            2 => 0x0600_0000,
            _ => 0,
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

/// A device on the bus, shared by the vCPU threads.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Bus 0: the address register and the devices by slot.
pub struct PciBus {
    address: u32,
    /// `(slot, device)`, slot 0 the host bridge.
    devices: Vec<(u8, SharedPciDevice)>,
    /// The root ports among the devices, by slot.
    ports: Vec<(u8, Arc<Mutex<RootPort>>)>,
    /// The switches' downstream ports, with the guest PCI path of the function in each
    /// one's slot (`[root port slot, 0, downstream port slot, 0]`).
    downstream: Vec<(Vec<u8>, Arc<Mutex<RootPort>>)>,
    /// The PCI bridges with hot-plug slots (an SHPC), by slot.
    shpc_bridges: Vec<(u8, Arc<Mutex<bridge::Bridge>>)>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("address", &format_args!("{:#x}", self.address))
            .field(
                "slots",
                &self.devices.iter().map(|d| d.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for PciBus {
    fn default() -> Self {
        PciBus::new()
    }
}

fn lock(d: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PciBus {
    /// A bus with only the host bridge.
    pub fn new() -> Self {
        let bridge: SharedPciDevice = Arc::new(Mutex::new(HostBridge));
        PciBus {
            address: 0,
            devices: vec![(0, bridge)],
            ports: Vec::new(),
            downstream: Vec::new(),
            shpc_bridges: Vec::new(),
        }
    }

    /// The slot [`PciBus::add`] would give next, `None` when the bus is full.
    pub fn next_slot(&self) -> Option<u8> {
        let slot = self.devices.len() as u8;
        (slot < PCI_SLOTS).then_some(slot)
    }

    /// Puts a root port in the next free slot (its physical slot number the slot, its
    /// secondary bus given by the caller); returns the slot, or `None` when the bus is full.
    pub fn add_root_port(&mut self, port: Arc<Mutex<RootPort>>) -> Option<u8> {
        let slot = self.add(port.clone())?;
        self.ports.push((slot, port));
        Some(slot)
    }

    /// The root ports, with their slots on bus 0.
    pub fn root_ports(&self) -> &[(u8, Arc<Mutex<RootPort>>)] {
        &self.ports
    }

    /// Puts a switch in the next free slot: `port` (a root port whose function is the
    /// switch's upstream port) and `downstream`, the switch's downstream ports; returns the
    /// root port's slot, or `None` when the bus is full.
    pub fn add_switch(
        &mut self,
        port: Arc<Mutex<RootPort>>,
        downstream: &[(u8, Arc<Mutex<RootPort>>)],
    ) -> Option<u8> {
        let slot = self.add_root_port(port)?;
        for (d, p) in downstream {
            self.downstream.push((vec![slot, 0, *d, 0], p.clone()));
        }
        Some(slot)
    }

    /// Puts a PCI bridge with hot-plug slots in the next free slot; returns the slot, or
    /// `None` when the bus is full.
    pub fn add_shpc_bridge(&mut self, bridge: Arc<Mutex<bridge::Bridge>>) -> Option<u8> {
        let slot = self.add(bridge.clone())?;
        self.shpc_bridges.push((slot, bridge));
        Some(slot)
    }

    /// The PCI bridges with hot-plug slots, with their slots on bus 0.
    pub fn shpc_bridges(&self) -> &[(u8, Arc<Mutex<bridge::Bridge>>)] {
        &self.shpc_bridges
    }

    /// The switches' downstream ports, each with the guest PCI path of the function in its
    /// slot.
    pub fn downstream_ports(&self) -> &[(Vec<u8>, Arc<Mutex<RootPort>>)] {
        &self.downstream
    }

    /// Every port with a hot-plug slot: the root ports and the switches' downstream ports.
    pub fn hotplug_ports(&self) -> Vec<Arc<Mutex<RootPort>>> {
        self.ports
            .iter()
            .map(|(_, p)| p.clone())
            .chain(self.downstream.iter().map(|(_, p)| p.clone()))
            .collect()
    }

    /// Puts `device` in the next free slot; returns the slot, or `None` when the bus is full.
    pub fn add(&mut self, device: SharedPciDevice) -> Option<u8> {
        let slot = self.devices.len() as u8;
        if slot >= PCI_SLOTS {
            return None;
        }
        self.devices.push((slot, device));
        Some(slot)
    }

    /// Whether `port` is one of the bus's ports.
    pub fn handles_port(port: u16) -> bool {
        (CONFIG_ADDRESS..CONFIG_DATA + 4).contains(&port)
    }

    /// The device the address register selects, and the dword it names.
    fn selected(&self) -> Option<(SharedPciDevice, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (a >> 16) & 0xff;
        let slot = ((a >> 11) & 0x1f) as u8;
        let function = (a >> 8) & 0x7;
        let reg = ((a & 0xfc) >> 2) as usize;
        if function != 0 {
            return None;
        }
        if bus != 0 {
            // The bridge on bus 0 whose bus range holds `bus` routes it (one at most claims
            // it: the VMM numbered them apart).
            return self
                .devices
                .iter()
                .find_map(|(_, d)| lock(d).route(bus as u8, slot))
                .map(|d| (d, reg));
        }
        self.devices
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, d)| (d.clone(), reg))
    }

    /// A guest read at `port` (one of [`PciBus::handles_port`]'s); nothing there reads as all
    /// ones.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if port == CONFIG_ADDRESS && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        let Some(offset) = port.checked_sub(CONFIG_DATA).map(usize::from) else {
            return;
        };
        if offset + data.len() > 4 {
            return;
        }
        if let Some((d, reg)) = self.selected() {
            let value = lock(&d).config_read(reg).to_le_bytes();
            data.copy_from_slice(&value[offset..offset + data.len()]);
        }
    }

    /// A guest write at `port`; writes that mean nothing are dropped.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        if port == CONFIG_ADDRESS {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(bytes);
            }
            return;
        }
        let Some(offset) = port.checked_sub(CONFIG_DATA).map(usize::from) else {
            return;
        };
        if offset + data.len() > 4 || data.is_empty() || offset >= 4 {
            return;
        }
        if let Some((d, reg)) = self.selected() {
            lock(&d).config_write(reg * 4 + offset, data);
        }
    }

    /// A guest read at `addr`: false when no BAR decodes it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.devices
            .iter()
            .any(|(_, d)| lock(d).mmio_read(addr, data))
    }

    /// A guest write at `addr`: false when no BAR decodes it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.devices
            .iter()
            .any(|(_, d)| lock(d).mmio_write(addr, data))
    }
}

/// Places BARs in a window ([`PCI_MMIO_START`]..[`PCI_MMIO_END`] by default, or a root port's),
/// each naturally aligned.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator {
            next: PCI_MMIO_START,
            end: PCI_MMIO_END,
        }
    }
}

impl BarAllocator {
    /// An allocator over `start..end` (a root port's window).
    pub fn within(start: u64, end: u64) -> Self {
        BarAllocator { next: start, end }
    }

    /// The part of the window not yet given out (start, end exclusive).
    pub fn free(&self) -> (u64, u64) {
        (self.next, self.end)
    }

    /// The address for a BAR of `size` bytes (a power of two), or `None` when the window is
    /// full.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        let align = size.max(0x1000);
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

/// Answers a vCPU exit that is the bus's (its ports, a BAR it decodes); gives any other exit
/// back for the legacy and virtio-mmio devices.
pub fn handle_exit<'a>(bus: &Mutex<PciBus>, exit: VcpuExit<'a>) -> Option<VcpuExit<'a>> {
    let mut bus = bus.lock().unwrap_or_else(PoisonError::into_inner);
    match exit {
        VcpuExit::IoIn(port, data) if PciBus::handles_port(port) => {
            bus.pio_read(port, data);
            None
        }
        VcpuExit::IoOut(port, data) if PciBus::handles_port(port) => {
            bus.pio_write(port, data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if bus.mmio_read(addr, &mut *data) {
                None
            } else {
                Some(VcpuExit::MmioRead(addr, data))
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if bus.mmio_write(addr, data) {
                None
            } else {
                Some(VcpuExit::MmioWrite(addr, data))
            }
        }
        other => Some(other),
    }
}

#[cfg(test)]
mod tests;
