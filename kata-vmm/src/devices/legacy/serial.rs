//! COM1 on vm-superio's 16550A model, writing into a bounded console sink.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::devices::EventFdTrigger;

/// The guest's console output: the last `capacity` bytes, shared between the serial port and
/// whoever reads it (the backend's `console_tail`). Older bytes are dropped, so a chatty guest
/// cannot grow the VMM's memory.
#[derive(Debug, Clone)]
pub struct ConsoleSink {
    inner: Arc<Mutex<SinkState>>,
}

#[derive(Debug)]
struct SinkState {
    buf: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
}

impl ConsoleSink {
    /// A sink keeping the last `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        ConsoleSink {
            inner: Arc::new(Mutex::new(SinkState {
                buf: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity,
                dropped: 0,
            })),
        }
    }

    /// The bytes kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.buf.iter().copied().collect()
    }

    /// How many bytes were dropped because the sink was full.
    pub fn dropped(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let cap = s.capacity;
        let data_kept = &data[data.len().saturating_sub(cap)..];
        let overflow = (s.buf.len() + data_kept.len()).saturating_sub(cap);
        let drop_old = overflow.min(s.buf.len());
        s.buf.drain(..drop_old);
        s.dropped += (overflow + data.len() - data_kept.len()) as u64;
        s.buf.extend(data_kept);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM1: the 16550A registers, its interrupt line, the console sink.
#[derive(Debug)]
pub struct SerialConsole {
    serial: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
}

impl SerialConsole {
    /// A serial port raising `irq` and writing to `sink`.
    pub fn new(irq: EventFdTrigger, sink: ConsoleSink) -> Self {
        SerialConsole {
            serial: Serial::new(irq, sink),
        }
    }

    /// A serial port raising `irq` and writing to `sink`, with the registers (and unread
    /// input) of a snapshot's; more input than the FIFO holds is refused.
    pub fn from_snapshot(
        state: &crate::snapshot::SerialSnapshot,
        irq: EventFdTrigger,
        sink: ConsoleSink,
    ) -> crate::Result<Self> {
        let state = vm_superio::serial::SerialState::from(state);
        let serial =
            Serial::from_state(&state, irq, NoEvents, sink).map_err(|e| crate::Error::Device {
                device: "serial port (snapshot)".into(),
                reason: format!("the saved registers are refused: {e:?}"),
            })?;
        Ok(SerialConsole { serial })
    }

    /// The registers and unread input, for a snapshot.
    pub fn snapshot_state(&self) -> crate::snapshot::SerialSnapshot {
        self.serial.state().into()
    }

    /// A guest read of the register at `offset` (0 to 7).
    pub fn read(&mut self, offset: u8) -> u8 {
        self.serial.read(offset)
    }

    /// A guest write of the register at `offset`. A failed interrupt or sink write is logged:
    /// the guest cannot be told, and its console must not stop the VM.
    pub fn write(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.serial.write(offset, value) {
            tracing::debug!(error = ?e, "serial write failed");
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fit the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(input).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_keeps_the_last_bytes_and_counts_the_dropped() {
        let mut sink = ConsoleSink::new(8);
        sink.write_all(b"0123456").unwrap();
        sink.write_all(b"789").unwrap();
        assert_eq!(sink.contents(), b"23456789");
        assert_eq!(sink.dropped(), 2);
        sink.write_all(b"abcdefghijkl").unwrap();
        assert_eq!(sink.contents(), b"efghijkl");
        assert_eq!(sink.dropped(), 14);
    }

    #[test]
    fn guest_output_reaches_the_sink_and_input_raises_the_irq() {
        let sink = ConsoleSink::new(1024);
        let irq = EventFdTrigger::new_nonblocking().unwrap();
        let irq_fd = irq.eventfd().try_clone().unwrap();
        let mut com1 = SerialConsole::new(irq, sink.clone());
        for b in b"Linux version 6.1\n" {
            com1.write(0, *b);
        }
        assert_eq!(sink.contents(), b"Linux version 6.1\n");
        // Enable the "received data available" interrupt (IER bit 0), then send input.
        com1.write(1, 0x01);
        assert_eq!(com1.enqueue_input(b"x"), 1);
        assert_eq!(irq_fd.read().unwrap(), 1);
        assert_eq!(com1.read(0), b'x');
    }
}
