//! Port-I/O devices every x86 guest expects: the COM1 serial port (the guest console) and the
//! i8042 controller, whose reset command ends the VM.
//!
//! Both are vm-superio's register models; this module wires them to the console sink and to
//! the VM's exit event, and routes port accesses to them ([`LegacyBus`]).

mod i8042;
mod serial;

pub use i8042::{ExitEvent, I8042};
pub use serial::{ConsoleSink, SerialConsole};

use crate::layout::{COM1_PORT, I8042_PORT};

/// The legacy devices on their ports.
#[derive(Debug)]
pub struct LegacyBus {
    /// COM1.
    pub serial: SerialConsole,
    /// The i8042 controller (ports 0x60 and 0x64).
    pub i8042: I8042,
}

impl LegacyBus {
    /// Handles a guest read of `data.len()` bytes at `port`; unknown ports read as all ones.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return;
        };
        if let Some(offset) = port.checked_sub(COM1_PORT).filter(|o| *o < 8) {
            *first = self.serial.read(offset as u8);
        } else if let Some(offset) = port.checked_sub(I8042_PORT).filter(|o| *o < 8) {
            *first = self.i8042.read(offset as u8);
        }
    }

    /// Handles a guest write at `port`; writes to unknown ports are ignored.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if let Some(offset) = port.checked_sub(COM1_PORT).filter(|o| *o < 8) {
            self.serial.write(offset as u8, value);
        } else if let Some(offset) = port.checked_sub(I8042_PORT).filter(|o| *o < 8) {
            self.i8042.write(offset as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::EventFdTrigger;

    #[test]
    fn ports_route_to_serial_and_i8042() {
        let sink = ConsoleSink::new(64);
        let exit = ExitEvent::new().unwrap();
        let mut bus = LegacyBus {
            serial: SerialConsole::new(EventFdTrigger::new_nonblocking().unwrap(), sink.clone()),
            i8042: I8042::new(&exit).unwrap(),
        };
        for b in b"hi\n" {
            bus.pio_write(COM1_PORT, &[*b]);
        }
        assert_eq!(sink.contents(), b"hi\n");
        let mut d = [0u8; 1];
        bus.pio_read(0x2f8, &mut d);
        assert_eq!(d, [0xff]);
        bus.pio_write(0x1234, &[]);
        assert!(!exit.is_signalled());
        bus.pio_write(I8042_PORT + 4, &[0xfe]);
        assert!(exit.is_signalled());
    }
}
