//! The virtio-pci transport (modern, virtio 1.x): any [`VirtioDevice`] as a PCI function, so
//! the guest can find it by PCI enumeration — the way a device is hot-plugged behind a PCIe root
//! port ([`hotplug`]), which stock Linux cannot do with virtio-mmio.
//!
//! The function (type-0 header, vendor `0x1af4`, device `0x1040` + the virtio type, revision 1,
//! no INTx pin) has one 32-bit memory BAR ([`BAR_SIZE`]) holding every structure, each announced
//! by a vendor-specific capability (virtio 1.x 4.1.4):
//!
//! | BAR offset | structure |
//! | --- | --- |
//! | `0x0000` | common configuration (features, status, queue setup, MSI-X vectors) |
//! | `0x1000` | ISR status (read clears) |
//! | `0x2000` | device configuration |
//! | `0x3000` | notifications (queue `n` at `n * 4`) |
//! | `0x4000` | MSI-X table ([`msix`]), pending bit array at `0x5000` |
//!
//! A notification trapped at the notify structure wakes the device: its own eventfd (the one
//! the event loop watches for it) when given one, else [`VirtioDevice::queue_notify`] on the
//! calling thread; a function served on the device thread sits behind a [`doorbell`] that
//! rings the eventfd without waiting for the function. Interrupts go through the MSI-X vectors the driver chose (one for
//! configuration changes, one per queue), each an irqfd.
//!
//! Nothing the driver writes is trusted: a feature not offered is dropped, a queue size or a
//! queue address that is not valid fails DRIVER_OK (DEVICE_NEEDS_RESET), a vector past the
//! table reads back as "no vector", a notify for a queue that does not exist and a write to a
//! read-only field are ignored, a BAR write keeps the BAR's size and alignment.

pub mod doorbell;
pub mod hotplug;
pub mod msix;
pub mod serve;

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use self::msix::{MsixWiring, Vectors, NO_VECTOR};
use super::mmio::status;
use super::{Interrupt, VirtioDevice};
use crate::devices::pci::PciDevice;
use crate::devices::vfio::msix::MsixCap;
use crate::devices::EventFdTrigger;
use crate::error::{Error, Result};
use crate::memory::GuestMemory;

/// The PCI vendor id of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// The PCI device id of a modern virtio device of type 0 (add the type).
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// The size of the function's one memory BAR.
pub const BAR_SIZE: u64 = 0x8000;

/// Offsets of the structures in the BAR.
pub mod bar {
    /// The common configuration.
    pub const COMMON: u64 = 0x0000;
    /// The ISR status.
    pub const ISR: u64 = 0x1000;
    /// The device configuration.
    pub const DEVICE: u64 = 0x2000;
    /// The notifications.
    pub const NOTIFY: u64 = 0x3000;
    /// The MSI-X table.
    pub const MSIX_TABLE: u64 = 0x4000;
    /// The MSI-X pending bit array.
    pub const MSIX_PBA: u64 = 0x5000;
    /// The length each structure is announced with.
    pub const REGION: u64 = 0x1000;
    /// The notify offset multiplier: queue `n` is notified at `NOTIFY + n * 4`.
    pub const NOTIFY_MULTIPLIER: u32 = 4;
}

/// Offsets in the common configuration (virtio 1.x 4.1.4.3).
pub mod common {
    /// Selects the 32 feature bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// The device's features (read-only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// Selects the 32 feature bits `DRIVER_FEATURE` takes.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// The driver's features.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// The MSI-X vector of configuration changes (16 bits).
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// The number of queues (16 bits, read-only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// The device status (8 bits).
    pub const DEVICE_STATUS: u64 = 0x14;
    /// The configuration generation (8 bits, read-only).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// Selects the queue the following fields are about (16 bits).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// The queue's size (16 bits).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// The queue's MSI-X vector (16 bits).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// Whether the queue is enabled (16 bits).
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// The queue's notify offset (16 bits, read-only).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// The descriptor table's address (64 bits).
    pub const QUEUE_DESC: u64 = 0x20;
    /// The driver (available) ring's address (64 bits).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// The device (used) ring's address (64 bits).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// The end of the structure.
    pub const END: u64 = 0x38;
}

/// The configuration space's layout: capabilities and the MSI-X capability.
mod cfg {
    pub const CAP_COMMON: usize = 0x40;
    pub const CAP_ISR: usize = 0x50;
    pub const CAP_DEVICE: usize = 0x60;
    pub const CAP_NOTIFY: usize = 0x70;
    pub const CAP_MSIX: usize = 0x84;
    /// Vendor-specific capability id.
    pub const VENDOR_CAP: u32 = 0x09;
    /// virtio_pci_cap cfg_type values.
    pub const TYPE_COMMON: u32 = 1;
    pub const TYPE_NOTIFY: u32 = 2;
    pub const TYPE_ISR: u32 = 3;
    pub const TYPE_DEVICE: u32 = 4;
    /// Status register: capability list.
    pub const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
    /// Command register: memory space decoding.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
}

/// The PCI class code (base, sub, interface) of a virtio device type.
pub fn class_of(device_type: u32) -> u32 {
    match device_type {
        // Network controller, Ethernet.
        1 => 0x02_00_00,
        // Mass storage, SCSI (what virtio-blk reports).
        2 => 0x01_00_00,
        // Communication, other (console).
        3 => 0x07_80_00,
        // Unclassified, other.
        _ => 0xff_00_00,
    }
}

/// One virtio device as a PCI function (see the module documentation).
pub struct VirtioPci {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    vectors: Arc<Mutex<Vectors>>,
    /// Written by a trapped notification when the device watches it.
    notify: Option<EventFd>,
    queues: Vec<Queue>,
    /// Per queue: the driver wrote a size the queue refused.
    size_refused: Vec<bool>,
    device_status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    acked_features: u64,
    queue_select: u16,
    config_generation: u8,
    activated: bool,
    /// The BAR's guest address (a multiple of [`BAR_SIZE`]).
    bar_addr: u64,
    command: u16,
    /// The interrupt line register (scratch for the guest).
    line: u8,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("device", &self.device.name())
            .field("status", &self.device_status)
            .field("bar", &format_args!("{:#x}", self.bar_addr))
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The MSI-X vectors a device with `queues` queues gets: one per queue and one for
/// configuration changes, at least 2 (so Linux's virtio_pci takes MSI-X).
pub fn vectors_for(queues: usize) -> usize {
    (queues + 1).max(2)
}

impl VirtioPci {
    /// `device` as a PCI function whose BAR is at `bar_addr` (a multiple of [`BAR_SIZE`]),
    /// interrupting through `wiring` (one GSI and eventfd per vector:
    /// [`vectors_for`] of its queues); a trapped notification writes `notify` (the device's
    /// watched eventfd) when given.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        bar_addr: u64,
        wiring: MsixWiring,
        notify: Option<EventFd>,
    ) -> Result<Self> {
        let who = || format!("{} (virtio-pci)", device.name());
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| Error::Device {
                    device: who(),
                    reason: format!("queue size {max}: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if !bar_addr.is_multiple_of(BAR_SIZE) {
            return Err(Error::Device {
                device: who(),
                reason: format!("BAR address {bar_addr:#x} is not aligned to {BAR_SIZE:#x}"),
            });
        }
        let n = vectors_for(queues.len());
        if wiring.gsis.len() != n || wiring.fds.len() != n {
            return Err(Error::Device {
                device: who(),
                reason: format!(
                    "{n} MSI-X vectors need {n} GSIs and eventfds, given {} and {}",
                    wiring.gsis.len(),
                    wiring.fds.len()
                ),
            });
        }
        let control = (n - 1) as u16;
        let cap = MsixCap::new(
            cfg::CAP_MSIX,
            control,
            bar::MSIX_TABLE as u32,
            bar::MSIX_PBA as u32,
            u32::MAX,
        )
        .ok_or_else(|| Error::Device {
            device: who(),
            reason: "building its MSI-X capability".into(),
        })?;
        let vectors = Arc::new(Mutex::new(Vectors::new(cap, wiring, queues.len())));
        let line = EventFdTrigger::new_nonblocking().map_err(|source| Error::DeviceIo {
            device: who(),
            what: "creating its interrupt eventfd".into(),
            source,
        })?;
        let signal = vectors.clone();
        let interrupt =
            Interrupt::with_vectors(line, Box::new(move |bit| lock(&signal).signal(bit)));
        Ok(VirtioPci {
            device,
            mem,
            interrupt,
            vectors,
            notify,
            size_refused: vec![false; queues.len()],
            queues,
            device_status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            acked_features: 0,
            queue_select: 0,
            config_generation: 0,
            activated: false,
            bar_addr,
            command: 0,
            line: 0,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// The BAR's guest address, as now programmed.
    pub fn bar_addr(&self) -> u64 {
        self.bar_addr
    }

    /// The notify structure's guest address, while the function decodes memory at its BAR.
    pub fn notify_window(&self) -> Option<u64> {
        (self.command & cfg::COMMAND_MEMORY != 0 && self.bar_addr != 0)
            .then(|| self.bar_addr + bar::NOTIFY)
    }

    /// The device status.
    pub fn device_status(&self) -> u8 {
        self.device_status
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the device runs (the driver set DRIVER_OK and the device took its queues).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The header and capability dword `reg`.
    fn header(&self, reg: usize) -> u32 {
        let t = self.device.device_type();
        let vcap = |next: usize, ty: u32, len: u32| {
            cfg::VENDOR_CAP | (next as u32) << 8 | len << 16 | ty << 24
        };
        // Dwords of a virtio_pci_cap: head, bar/id/padding (bar 0), offset, length.
        let region = |at: usize, next: usize, ty: u32, offset: u64, len: u32| match reg - at / 4 {
            0 => vcap(next, ty, len),
            1 => 0,
            2 => offset as u32,
            _ => bar::REGION as u32,
        };
        match reg {
            0 => u32::from(VIRTIO_PCI_VENDOR) | u32::from(VIRTIO_PCI_DEVICE_BASE + t as u16) << 16,
            1 => u32::from(self.command) | cfg::STATUS_CAP_LIST,
            // Revision 1 (modern only), the class.
            2 => 1 | class_of(t) << 8,
            4 => self.bar_addr as u32,
            // Subsystem: virtio's vendor, id 0x1100 (any non-transitional value).
            11 => u32::from(VIRTIO_PCI_VENDOR) | 0x1100 << 16,
            13 => cfg::CAP_COMMON as u32,
            // No interrupt pin; the line as the guest wrote it.
            15 => u32::from(self.line),
            0x10..=0x13 => region(
                cfg::CAP_COMMON,
                cfg::CAP_ISR,
                cfg::TYPE_COMMON,
                bar::COMMON,
                16,
            ),
            0x14..=0x17 => region(cfg::CAP_ISR, cfg::CAP_DEVICE, cfg::TYPE_ISR, bar::ISR, 16),
            0x18..=0x1b => region(
                cfg::CAP_DEVICE,
                cfg::CAP_NOTIFY,
                cfg::TYPE_DEVICE,
                bar::DEVICE,
                16,
            ),
            0x1c..=0x1f => region(
                cfg::CAP_NOTIFY,
                cfg::CAP_MSIX,
                cfg::TYPE_NOTIFY,
                bar::NOTIFY,
                20,
            ),
            0x20 => bar::NOTIFY_MULTIPLIER,
            _ => 0,
        }
    }

    /// The BAR offset `[addr, addr + len)` falls at, with memory decoding on.
    fn decode(&self, addr: u64, len: usize) -> Option<u64> {
        if self.command & cfg::COMMAND_MEMORY == 0 || self.bar_addr == 0 {
            return None;
        }
        let off = addr.checked_sub(self.bar_addr)?;
        (off.checked_add(len as u64)? <= BAR_SIZE).then_some(off)
    }

    /// A read of `data.len()` bytes at `off` in the BAR.
    pub fn bar_read(&mut self, off: u64, data: &mut [u8]) {
        data.fill(0);
        {
            let v = lock(&self.vectors);
            if v.cap.bar_read(0, off, data, |i| v.pending(i)) {
                return;
            }
        }
        match off {
            o if o < bar::ISR => self.common_read(o, data),
            // Reading the ISR clears it (virtio 1.x 4.1.4.5).
            bar::ISR => {
                let s = self.interrupt.status();
                self.interrupt.acknowledge(s);
                data[0] = s as u8;
            }
            o if o < bar::DEVICE => {}
            o if o < bar::NOTIFY => self.device.read_config(o - bar::DEVICE, data),
            _ => {}
        }
    }

    /// A write of `data` at `off` in the BAR.
    pub fn bar_write(&mut self, off: u64, data: &[u8]) {
        {
            let mut v = lock(&self.vectors);
            if v.cap.bar_write(0, off, data) {
                v.apply();
                return;
            }
        }
        match off {
            o if o < bar::ISR => self.common_write(o, data),
            o if o < bar::DEVICE => {}
            o if o < bar::NOTIFY && self.device_status & status::DRIVER as u8 != 0 => {
                self.device.write_config(o - bar::DEVICE, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            o if o < bar::NOTIFY => {}
            o if o < bar::NOTIFY + bar::REGION => {
                let q = (o - bar::NOTIFY) / u64::from(bar::NOTIFY_MULTIPLIER);
                self.notify(q);
            }
            _ => {}
        }
    }

    fn notify(&mut self, q: u64) {
        if !self.activated || q >= self.queues.len() as u64 {
            tracing::trace!(queue = q, "virtio-pci: notify ignored");
            return;
        }
        match &self.notify {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::warn!(device = self.device.name(), error = %e, "virtio-pci: waking the device");
                }
            }
            None => self.device.queue_notify(q as u16),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The common configuration as bytes (read-only fields as the device has them).
    fn common_bytes(&self) -> [u8; common::END as usize] {
        let mut b = [0u8; common::END as usize];
        let put = |b: &mut [u8], at: u64, bytes: &[u8]| {
            b[at as usize..at as usize + bytes.len()].copy_from_slice(bytes)
        };
        let features = self.device.avail_features();
        let shown = match self.device_feature_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        put(
            &mut b,
            common::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(&mut b, common::DEVICE_FEATURE, &shown.to_le_bytes());
        put(
            &mut b,
            common::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        let acked = match self.driver_feature_select {
            0 => self.acked_features as u32,
            1 => (self.acked_features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, common::DRIVER_FEATURE, &acked.to_le_bytes());
        let (config_vector, queue_vector) = {
            let v = lock(&self.vectors);
            let qv = v
                .queue_vectors
                .get(usize::from(self.queue_select))
                .copied()
                .unwrap_or(NO_VECTOR);
            (v.config_vector, qv)
        };
        put(
            &mut b,
            common::CONFIG_MSIX_VECTOR,
            &config_vector.to_le_bytes(),
        );
        put(
            &mut b,
            common::NUM_QUEUES,
            &(self.queues.len() as u16).to_le_bytes(),
        );
        b[common::DEVICE_STATUS as usize] = self.device_status;
        b[common::CONFIG_GENERATION as usize] = self.config_generation;
        put(
            &mut b,
            common::QUEUE_SELECT,
            &self.queue_select.to_le_bytes(),
        );
        if let Some(q) = self.selected_queue() {
            put(&mut b, common::QUEUE_SIZE, &q.size().to_le_bytes());
            put(
                &mut b,
                common::QUEUE_MSIX_VECTOR,
                &queue_vector.to_le_bytes(),
            );
            put(
                &mut b,
                common::QUEUE_ENABLE,
                &u16::from(q.ready()).to_le_bytes(),
            );
            put(
                &mut b,
                common::QUEUE_NOTIFY_OFF,
                &self.queue_select.to_le_bytes(),
            );
            put(&mut b, common::QUEUE_DESC, &q.desc_table().to_le_bytes());
            put(&mut b, common::QUEUE_DRIVER, &q.avail_ring().to_le_bytes());
            put(&mut b, common::QUEUE_DEVICE, &q.used_ring().to_le_bytes());
        }
        b
    }

    fn common_read(&self, off: u64, data: &mut [u8]) {
        let b = self.common_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = off
                .checked_add(i as u64)
                .and_then(|o| b.get(o as usize).copied())
                .unwrap_or(0);
        }
    }

    /// Whether the driver may configure queues now (FEATURES_OK set, DRIVER_OK not yet).
    fn queue_setup_allowed(&self) -> bool {
        let s = u32::from(self.device_status);
        s & status::FEATURES_OK != 0 && s & status::DRIVER_OK == 0
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        let n = data.len().min(8);
        raw[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(raw);
        let setup = self.queue_setup_allowed();
        let sel = usize::from(self.queue_select);
        match (off, data.len()) {
            (common::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (common::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (common::DRIVER_FEATURE, 4) => self.ack_features(v as u32),
            (common::CONFIG_MSIX_VECTOR, 2) => {
                let mut vs = lock(&self.vectors);
                vs.config_vector = vs.checked(v as u16);
            }
            (common::DEVICE_STATUS, 1) => self.set_status(v as u8),
            (common::QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (common::QUEUE_SIZE, 2) if setup => {
                if let Some(q) = self.queues.get_mut(sel) {
                    // A refused size is remembered: DRIVER_OK fails rather than run with the
                    // old size.
                    self.size_refused[sel] = q.try_set_size(v as u16).is_err();
                }
            }
            (common::QUEUE_MSIX_VECTOR, 2) => {
                let mut vs = lock(&self.vectors);
                let checked = vs.checked(v as u16);
                if let Some(q) = vs.queue_vectors.get_mut(sel) {
                    *q = checked;
                }
            }
            (common::QUEUE_ENABLE, 2) if setup => {
                // Only enabling is defined (4.1.4.3.2: a driver never writes 0).
                if let Some(q) = self.queues.get_mut(sel) {
                    if v == 1 {
                        q.set_ready(true);
                    }
                }
            }
            (o @ common::QUEUE_DESC..common::END, 4 | 8) if setup && o % 4 == 0 => {
                self.set_queue_addr(o, data.len(), v)
            }
            _ => tracing::trace!(
                offset = off,
                len = data.len(),
                "virtio-pci: common write ignored"
            ),
        }
    }

    /// A write of the low or high half (or both) of a queue address field.
    fn set_queue_addr(&mut self, off: u64, len: usize, v: u64) {
        let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        let field = off - (off - common::QUEUE_DESC) % 8;
        let high = off % 8 == 4;
        let (lo, hi) = match (len, high) {
            (8, _) => (Some(v as u32), Some((v >> 32) as u32)),
            (_, false) => (Some(v as u32), None),
            (_, true) => (None, Some(v as u32)),
        };
        match field {
            common::QUEUE_DESC => q.set_desc_table_address(lo, hi),
            common::QUEUE_DRIVER => q.set_avail_ring_address(lo, hi),
            _ => q.set_used_ring_address(lo, hi),
        }
    }

    fn ack_features(&mut self, v: u32) {
        let s = u32::from(self.device_status);
        if s & status::DRIVER == 0 || s & status::FEATURES_OK != 0 {
            return;
        }
        let offered = self.device.avail_features();
        let (page, mask) = match self.driver_feature_select {
            0 => (u64::from(v), 0xffff_ffffu64),
            1 => (u64::from(v) << 32, 0xffff_ffffu64 << 32),
            _ => return,
        };
        if page & !offered != 0 {
            tracing::debug!(
                device = self.device.name(),
                unoffered = page & !offered,
                "driver acked features that were not offered: dropped"
            );
        }
        self.acked_features = (self.acked_features & !mask) | (page & offered);
    }

    fn set_status(&mut self, v: u8) {
        use super::transport::{status_step, StatusStep};
        let old = u32::from(self.device_status);
        match status_step(old, u32::from(v), self.acked_features) {
            StatusStep::Reset => self.reset(),
            StatusStep::Fail(why) => self.fail(why),
            StatusStep::Activate => {
                self.device_status = v;
                self.activate();
            }
            // A subset of `v`'s bits: still a byte.
            StatusStep::Set(s) => self.device_status = s as u8,
        }
    }

    fn activate(&mut self) {
        let ready = match super::transport::activation_queues(
            &self.queues,
            &self.size_refused,
            &self.mem,
        ) {
            Ok(ready) => ready,
            Err(why) => {
                self.fail(&why);
                return;
            }
        };
        match self.device.activate(
            self.mem.clone(),
            self.acked_features,
            ready,
            self.interrupt.clone(),
        ) {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn fail(&mut self, why: &str) {
        tracing::warn!(
            device = self.device.name(),
            "{why}: the device needs a reset"
        );
        self.device_status |= status::DEVICE_NEEDS_RESET as u8;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.device_status = 0;
        self.acked_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.size_refused.fill(false);
        self.interrupt.acknowledge(u32::MAX);
        lock(&self.vectors).reset();
    }

    /// Takes the device down for good (an unplug): resets it, so it drops its queues and
    /// guest memory.
    pub fn shut_down(&mut self) {
        self.reset();
        self.command = 0;
    }
}

impl PciDevice for VirtioPci {
    fn config_read(&mut self, reg: usize) -> u32 {
        let at = reg * 4;
        let v = lock(&self.vectors);
        if v.cap.contains(at) {
            // The last capability: its next pointer reads 0.
            return v.cap.read(at);
        }
        drop(v);
        if reg < 64 {
            self.header(reg)
        } else {
            0xffff_ffff
        }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let (reg, within) = (offset / 4, offset % 4);
        if data.is_empty() || within + data.len() > 4 {
            return;
        }
        {
            let mut v = lock(&self.vectors);
            if v.cap.contains(offset) {
                v.cap.write(offset, data);
                v.apply();
                return;
            }
        }
        match reg {
            1 if within < 2 => {
                let mut cmd = self.command.to_le_bytes();
                for (i, b) in data.iter().enumerate() {
                    if let Some(c) = cmd.get_mut(within + i) {
                        *c = *b;
                    }
                }
                self.command = u16::from_le_bytes(cmd);
            }
            4 => {
                let mut v = (self.bar_addr as u32).to_le_bytes();
                v[within..within + data.len()].copy_from_slice(data);
                // Size and type bits read 0: sizing (all ones written) reads the size back.
                let mask = !(BAR_SIZE as u32 - 1);
                self.bar_addr = u64::from(u32::from_le_bytes(v) & mask);
            }
            15 if within == 0 => self.line = data[0],
            _ => tracing::trace!(offset, len = data.len(), "virtio-pci: config write dropped"),
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.decode(addr, data.len()) {
            Some(off) => {
                self.bar_read(off, data);
                true
            }
            None => false,
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.decode(addr, data.len()) {
            Some(off) => {
                self.bar_write(off, data);
                true
            }
            None => false,
        }
    }
}

/// The event loop serves the device's own descriptors (its notify eventfd, host sockets).
impl crate::event_loop::EventHandler for VirtioPci {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        self.device.watched()
    }

    fn handle(&mut self, token: u32) {
        self.device.handle_event(token);
    }
}

#[cfg(test)]
mod tests;
