//! The i8042 controller: the guest's `reboot` (with `reboot=k`) writes the CPU reset command,
//! which ends the VM through its [`ExitEvent`].
//!
//! Only the reset line is emulated, so the guest's i8042 driver must find no controller, and
//! find it fast. vm-superio's device reads 0 on every port: a status of 0 (output buffer
//! empty) lets Linux's controller check pass, and its next step, reading the control register,
//! then polls the status port 10 000 times for an answer that never comes ("Can't read CTR
//! while initializing i8042"): 2.9 s of a nested L2's boot in the lab, every poll a VM exit.
//! So the status port reads [`STATUS_NO_CONTROLLER`]: the output buffer always full (Linux's
//! flush gives up after 16 bytes and the driver reports "No controller found" at once) and the
//! input buffer always empty (the `reboot=k` path's wait for it passes at the first read).

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

/// The status register's port offset (0x64).
const STATUS_OFFSET: u8 = 4;
/// Status bit 0: the output buffer holds a byte for the guest.
const STATUS_OBF: u8 = 1 << 0;
/// Status bit 1: the input buffer holds a byte the controller has not taken (never set).
#[cfg(test)]
const STATUS_IBF: u8 = 1 << 1;
/// The status the guest reads: output buffer full, input buffer empty.
pub const STATUS_NO_CONTROLLER: u8 = STATUS_OBF;

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

    /// A guest read at `offset` from port 0x60: the status port reads
    /// `STATUS_NO_CONTROLLER`, the data port 0.
    pub fn read(&mut self, offset: u8) -> u8 {
        match offset {
            STATUS_OFFSET => STATUS_NO_CONTROLLER,
            _ => self.device.read(offset),
        }
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

    /// Linux's `i8042_flush()` (drivers/input/serio/i8042.c): reads data while the status says
    /// the output buffer is full, at most `I8042_BUFFER_SIZE` (16) bytes, then gives up with
    /// an error, which makes `i8042_controller_check()` report no controller. Returns the
    /// port reads it made and whether it failed.
    fn linux_flush(i8042: &mut I8042) -> (usize, bool) {
        let mut reads = 0;
        let mut count = 0;
        loop {
            reads += 1;
            if i8042.read(STATUS_OFFSET) & STATUS_OBF == 0 {
                return (reads, false);
            }
            if count >= 16 {
                return (reads, true);
            }
            count += 1;
            reads += 1;
            i8042.read(0);
        }
    }

    /// The `reboot=k` path's `kb_wait()` (arch/x86/kernel/reboot.c): polls the status until
    /// the input buffer is empty, at most 0x10000 times. Returns the reads it made.
    fn linux_kb_wait(i8042: &mut I8042) -> usize {
        (1..=0x10000)
            .find(|_| i8042.read(STATUS_OFFSET) & STATUS_IBF == 0)
            .unwrap_or(0x10000)
    }

    #[test]
    fn the_guest_finds_no_controller_at_once_and_still_resets() {
        let exit = ExitEvent::new().unwrap();
        let mut i8042 = I8042::new(&exit).unwrap();
        // Before, the status read 0: the flush passed and the driver went on to poll 10 000
        // times for a control register that never came.
        let (reads, no_controller) = linux_flush(&mut i8042);
        assert!(
            no_controller,
            "Linux's i8042 driver must find no controller"
        );
        assert!(reads <= 40, "{reads} port reads to find no controller");
        assert_eq!(linux_kb_wait(&mut i8042), 1, "reboot=k must not wait");
        i8042.write(STATUS_OFFSET, 0xfe);
        assert!(exit.is_signalled());
    }
}
