//! The i8042 controller: the guest's `reboot` (with `reboot=k`) writes the CPU reset command,
//! which ends the VM through its [`ExitEvent`].

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::EventFdTrigger;

/// The VM's exit event: the run loop polls it and stops every vCPU when it fires.
#[derive(Debug)]
pub struct ExitEvent(EventFd);

impl ExitEvent {
    /// A new, unsignalled exit event.
    pub fn new() -> std::io::Result<Self> {
        EventFd::new(libc::EFD_NONBLOCK).map(ExitEvent)
    }

    /// Signals the end of the VM.
    pub fn signal(&self) -> std::io::Result<()> {
        self.0.write(1)
    }

    /// Whether the event was signalled since the last check (consumes the signal).
    pub fn is_signalled(&self) -> bool {
        self.0.read().is_ok()
    }

    /// The eventfd, for the event loop.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

/// The i8042 controller with its reset line wired to the VM's exit event.
#[derive(Debug)]
pub struct I8042 {
    device: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// An i8042 whose CPU reset command signals `exit`.
    pub fn new(exit: &ExitEvent) -> std::io::Result<Self> {
        Ok(I8042 {
            device: I8042Device::new(EventFdTrigger::new(exit.0.try_clone()?)),
        })
    }

    /// A guest read at `offset` from port 0x60.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.device.read(offset)
    }

    /// A guest write at `offset` from port 0x60; `0xfe` at 0x64 resets the CPU, ending the VM.
    pub fn write(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.device.write(offset, value) {
            tracing::warn!(error = %e, "i8042 reset could not signal the exit event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_exit_and_other_writes_do_not() {
        let exit = ExitEvent::new().unwrap();
        let mut i8042 = I8042::new(&exit).unwrap();
        i8042.write(0, 0xfe);
        i8042.write(4, 0xad);
        assert!(!exit.is_signalled());
        i8042.write(4, 0xfe);
        assert!(exit.is_signalled());
        assert!(!exit.is_signalled(), "the signal is consumed once");
        assert_eq!(i8042.read(0), 0);
    }
}
