//! The virtio-mmio transport (virtio 1.x, register layout version 2): the registers a driver
//! reads and writes in a device's 4 KiB window, feature negotiation, queue setup, and the
//! `virtio_mmio.device=` fragment that announces the window on the kernel command line.
//!
//! The transport trusts nothing the driver writes: features it did not offer are dropped,
//! queue sizes are checked against the device's maximum, queue addresses against guest memory
//! when the driver sets DRIVER_OK; a driver that breaks the protocol gets DEVICE_NEEDS_RESET,
//! not a panic.

mod bus;

use std::sync::Arc;

use linux_loader::cmdline::Cmdline;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{Interrupt, VirtioDevice};
use crate::error::{Error, Result};
use crate::layout::{self, MMIO_WINDOW_SIZE};
use crate::memory::GuestMemory;

pub use bus::MmioBus;

/// "virt", little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// The register layout version of virtio 1.x.
const MMIO_VERSION: u32 = 2;
/// The vendor id reported (none assigned).
const VENDOR_ID: u32 = 0;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error the driver must reset it for.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Register offsets in the window.
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Where a device's window is and which interrupt it raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// The window's guest physical base.
    pub base: GuestAddress,
    /// The legacy IRQ (GSI) of the device.
    pub irq: u32,
}

impl MmioSlot {
    /// The `index`th slot: window [`layout::mmio_window`]`(index)`, IRQ 5 + index.
    pub fn nth(index: u32) -> Result<MmioSlot> {
        let irq = layout::FIRST_VIRTIO_IRQ + index;
        if irq > layout::LAST_VIRTIO_IRQ {
            return Err(Error::Device {
                device: format!("virtio-mmio slot {index}"),
                reason: format!(
                    "at most {} virtio-mmio devices fit the legacy IRQs",
                    layout::LAST_VIRTIO_IRQ - layout::FIRST_VIRTIO_IRQ + 1
                ),
            });
        }
        Ok(MmioSlot {
            base: GuestAddress(layout::mmio_window(index)),
            irq,
        })
    }

    /// The kernel command-line fragment that announces the device:
    /// `virtio_mmio.device=4K@0xd0000000:5`.
    pub fn cmdline_fragment(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base.0, self.irq)
    }

    /// Adds [`MmioSlot::cmdline_fragment`] to `cmdline`.
    pub fn add_to_cmdline(&self, cmdline: &mut Cmdline) -> Result<()> {
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW_SIZE, self.base, self.irq, None)
            .map_err(|e| Error::Cmdline(e.to_string()))
    }
}

/// One device behind its virtio-mmio window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    /// Per queue: the driver wrote a size the queue refused.
    size_refused: Vec<bool>,
    device_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
    /// The interrupt status a snapshot was saved with, raised again when the VM resumes.
    restored_interrupt: u32,
}

/// The event loop drives the device behind the window: the transport and the vCPUs share one
/// lock, so a register access and a queue run never interleave.
impl crate::event_loop::EventHandler for MmioTransport {
    fn watched(&self) -> Vec<(std::os::fd::RawFd, u32)> {
        self.device.watched()
    }

    fn handle(&mut self, token: u32) {
        self.device.handle_event(token);
    }
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.name())
            .field("status", &self.device_status)
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Puts `device` behind a window; `interrupt` is its line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| Error::Device {
                    device: device.name().to_string(),
                    reason: format!("queue size {max}: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            size_refused: vec![false; queues.len()],
            queues,
            device_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
            restored_interrupt: 0,
        })
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the device runs (the driver set DRIVER_OK and the device accepted its queues).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The transport's registers, its queues' configuration and the device's positions in
    /// them, for a snapshot; an error names the device that cannot be saved and why.
    pub fn snapshot_state(&self) -> Result<crate::snapshot::TransportState> {
        let refused = |reason: String| Error::Device {
            device: self.device.name().to_string(),
            reason: format!("cannot be saved in a snapshot: {reason}"),
        };
        if let Some(why) = self.device.snapshot_refusal() {
            return Err(refused(why));
        }
        let positions = self.device.queue_positions().ok_or_else(|| {
            refused("this device's state is not saved by the built-in VMM".into())
        })?;
        if self.activated && positions.len() != self.queues.len() {
            return Err(refused(format!(
                "{} queue positions for {} queues",
                positions.len(),
                self.queues.len()
            )));
        }
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (next_avail, next_used) = positions.get(i).copied().unwrap_or((0, 0));
                crate::snapshot::QueueSnapshot {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail,
                    next_used,
                    size_refused: self.size_refused[i],
                }
            })
            .collect();
        Ok(crate::snapshot::TransportState {
            device_type: self.device.device_type(),
            device_status: self.device_status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            queues,
        })
    }

    /// Puts a freshly made transport into the saved `state` (from [`Self::snapshot_state`]
    /// of the same kind of device): registers and queues, then the device is activated with
    /// the queues where it was. Nothing the snapshot file says is trusted: a device of
    /// another type, a queue count, size or address the device or memory refuses is an error.
    pub fn restore_snapshot(&mut self, state: &crate::snapshot::TransportState) -> Result<()> {
        let name = self.device.name();
        let bad = move |reason: String| Error::Device {
            device: name.to_string(),
            reason: format!("restoring from the snapshot: {reason}"),
        };
        if state.device_type != self.device.device_type() {
            return Err(bad(format!(
                "the snapshot has a device of type {} in this slot, the VM a {}: the device \
                 set differs",
                state.device_type,
                self.device.device_type()
            )));
        }
        if state.queues.len() != self.queues.len() {
            return Err(bad(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        if state.acked_features & !self.device.avail_features() != 0 {
            return Err(bad(format!(
                "acked features {:#x} the device does not offer",
                state.acked_features
            )));
        }
        for (i, (q, saved)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            let restored = Queue::try_from(virtio_queue::QueueState {
                max_size: q.max_size(),
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: false,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            })
            .map_err(|e| bad(format!("queue {i}: {e}")))?;
            *q = restored;
            self.size_refused[i] = saved.size_refused;
        }
        self.device_status = state.device_status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.config_generation = state.config_generation;
        self.interrupt.acknowledge(u32::MAX);
        if state.activated {
            let ready =
                super::transport::activation_queues(&self.queues, &self.size_refused, &self.mem)
                    .map_err(bad)?;
            self.device
                .activate(
                    self.mem.clone(),
                    self.acked_features,
                    ready,
                    self.interrupt.clone(),
                )
                .map_err(|e| bad(e.to_string()))?;
            self.activated = true;
        }
        self.restored_interrupt = state.interrupt_status;
        Ok(())
    }

    /// The restored VM is about to run: the interrupt status it was saved with is raised
    /// again (an interrupt the guest had not taken is not lost), the device is told
    /// ([`VirtioDevice::resumed`]) and, when activated, notified once on each queue: a
    /// `QUEUE_NOTIFY` the guest wrote after the saved VM's device thread had ended only set
    /// that VM's ioeventfd, and the restored device would otherwise never look at the buffers
    /// it announced.
    pub fn resumed(&mut self) {
        let pending = std::mem::take(&mut self.restored_interrupt);
        if pending & super::VIRTIO_MMIO_INT_VRING != 0 {
            self.interrupt.signal_used_queue();
        }
        if pending & super::VIRTIO_MMIO_INT_CONFIG != 0 {
            self.interrupt.signal_config_change();
        }
        if self.activated {
            self.device.resumed();
            for index in 0..self.queues.len() {
                if let Ok(index) = u16::try_from(index) {
                    self.device.queue_notify(index);
                }
            }
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Whether the driver may configure queues now (FEATURES_OK set, DRIVER_OK not yet).
    fn queue_setup_allowed(&self) -> bool {
        self.device_status & status::FEATURES_OK != 0 && self.device_status & status::DRIVER_OK == 0
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            // The common registers are 32-bit wide; other accesses read 0.
            data.fill(0);
            return;
        }
        let value = match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.device_status,
            // No shared memory region: its length and base read as all ones.
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.device_status & status::DRIVER != 0 {
                self.device.write_config(offset - reg::CONFIG, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let setup = self.queue_setup_allowed();
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.ack_features(v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if setup => {
                let sel = self.queue_sel as usize;
                if let Some(q) = self.queues.get_mut(sel) {
                    // A refused size (0, above the maximum, not a power of two) is
                    // remembered, so DRIVER_OK fails rather than run with the old size.
                    let ok = u16::try_from(v).is_ok_and(|size| q.try_set_size(size).is_ok());
                    self.size_refused[sel] = !ok;
                }
            }
            reg::QUEUE_READY if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW if setup => {
                self.set_queue_addr(|q, v| q.set_desc_table_address(Some(v), None), v)
            }
            reg::QUEUE_DESC_HIGH if setup => {
                self.set_queue_addr(|q, v| q.set_desc_table_address(None, Some(v)), v)
            }
            reg::QUEUE_AVAIL_LOW if setup => {
                self.set_queue_addr(|q, v| q.set_avail_ring_address(Some(v), None), v)
            }
            reg::QUEUE_AVAIL_HIGH if setup => {
                self.set_queue_addr(|q, v| q.set_avail_ring_address(None, Some(v)), v)
            }
            reg::QUEUE_USED_LOW if setup => {
                self.set_queue_addr(|q, v| q.set_used_ring_address(Some(v), None), v)
            }
            reg::QUEUE_USED_HIGH if setup => {
                self.set_queue_addr(|q, v| q.set_used_ring_address(None, Some(v)), v)
            }
            reg::QUEUE_NOTIFY => {
                if self.activated && (v as usize) < self.queues.len() {
                    self.device.queue_notify(v as u16);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(v),
            reg::STATUS => self.set_status(v),
            _ => tracing::trace!(offset, value = v, "virtio-mmio write ignored"),
        }
    }

    fn set_queue_addr(&mut self, set: impl FnOnce(&mut Queue, u32), v: u32) {
        if let Some(q) = self.selected_queue() {
            set(q, v);
        }
    }

    fn ack_features(&mut self, v: u32) {
        if self.device_status & status::DRIVER == 0 || self.device_status & status::FEATURES_OK != 0
        {
            return;
        }
        let offered = self.device.avail_features();
        let page = match self.driver_features_sel {
            0 => u64::from(v),
            1 => u64::from(v) << 32,
            _ => return,
        };
        let unoffered = page & !offered;
        if unoffered != 0 {
            tracing::debug!(
                device = self.device.name(),
                unoffered,
                "driver acked features that were not offered: dropped"
            );
        }
        let mask = if self.driver_features_sel == 0 {
            0xffff_ffffu64
        } else {
            0xffff_ffff << 32
        };
        self.acked_features = (self.acked_features & !mask) | (page & offered);
    }

    fn set_status(&mut self, v: u32) {
        use super::transport::{status_step, StatusStep};
        match status_step(self.device_status, v, self.acked_features) {
            StatusStep::Reset => self.reset(),
            StatusStep::Fail(why) => self.fail(why),
            StatusStep::Activate => {
                self.device_status = v;
                self.activate();
            }
            StatusStep::Set(s) => self.device_status = s,
        }
    }

    fn activate(&mut self) {
        // The device gets its own copies; the transport keeps answering the registers.
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
        self.device_status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.device_status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.size_refused.fill(false);
        self.interrupt.acknowledge(u32::MAX);
    }
}

#[cfg(test)]
mod tests;
