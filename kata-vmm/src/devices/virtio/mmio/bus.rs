//! The virtio-mmio windows of a VM: which transport answers a guest physical address.

use std::sync::{Arc, Mutex, PoisonError};

use super::{MmioSlot, MmioTransport};
use crate::layout::MMIO_WINDOW_SIZE;

/// The transports by window.
#[derive(Debug, Default)]
pub struct MmioBus {
    windows: Vec<(MmioSlot, Arc<Mutex<MmioTransport>>)>,
}

impl MmioBus {
    /// Puts `transport` behind `slot`'s window.
    pub fn insert(&mut self, slot: MmioSlot, transport: Arc<Mutex<MmioTransport>>) {
        self.windows.push((slot, transport));
    }

    /// The transports in the order they were put in (slot order), for a snapshot.
    pub fn transports(&self) -> impl Iterator<Item = &Arc<Mutex<MmioTransport>>> {
        self.windows.iter().map(|(_, t)| t)
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<MmioTransport>>)> {
        self.windows.iter().find_map(|(slot, t)| {
            let offset = addr.checked_sub(slot.base.0)?;
            (offset < MMIO_WINDOW_SIZE).then_some((offset, t))
        })
    }

    /// A guest read at `addr`; false when no window is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, t)) => {
                t.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// A guest write at `addr`; false when no window is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, t)) => {
                t.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}
