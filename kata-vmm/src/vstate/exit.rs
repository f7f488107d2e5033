//! What a vCPU exit means: port I/O to the legacy devices, MMIO to the virtio-mmio windows,
//! and the exits that end the VM.

use kvm_ioctls::VcpuExit;

use crate::devices::legacy::LegacyBus;
use crate::devices::virtio::mmio::MmioBus;

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the vCPU again.
    Continue,
    /// Stop the VM.
    Stop(StopReason),
}

/// Why a VM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A triple fault or a reset request: the guest rebooted or powered off (`reboot=k`).
    Shutdown,
    /// KVM could not run the guest on (its internal error, an entry failure).
    Failed(String),
}

/// Handles one exit. Accesses to nothing are ignored (reads return all ones), as on a PC.
pub fn handle_exit(exit: VcpuExit<'_>, legacy: &mut LegacyBus, mmio: &MmioBus) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => legacy.pio_read(port, data),
        VcpuExit::IoOut(port, data) => legacy.pio_write(port, data),
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
        }
        VcpuExit::Hlt => {}
        VcpuExit::Shutdown | VcpuExit::SystemEvent(..) => {
            return ExitAction::Stop(StopReason::Shutdown)
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return ExitAction::Stop(StopReason::Failed(format!(
                "KVM_EXIT_FAIL_ENTRY on cpu {cpu}: hardware reason {reason:#x}"
            )))
        }
        VcpuExit::InternalError => {
            return ExitAction::Stop(StopReason::Failed("KVM_EXIT_INTERNAL_ERROR".into()))
        }
        other => tracing::debug!(exit = ?other, "vCPU exit ignored"),
    }
    ExitAction::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::{ConsoleSink, ExitEvent, SerialConsole, I8042};
    use crate::devices::EventFdTrigger;
    use crate::layout::{COM1_PORT, I8042_PORT};

    #[test]
    fn port_io_reaches_the_legacy_devices_and_shutdown_stops() {
        let sink = ConsoleSink::new(64);
        let exit = ExitEvent::new().unwrap();
        let mut legacy = LegacyBus {
            serial: SerialConsole::new(EventFdTrigger::new_nonblocking().unwrap(), sink.clone()),
            i8042: I8042::new(&exit).unwrap(),
        };
        let mmio = MmioBus::default();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(COM1_PORT, b"k"), &mut legacy, &mmio),
            ExitAction::Continue
        );
        assert_eq!(sink.contents(), b"k");
        handle_exit(VcpuExit::IoOut(I8042_PORT + 4, &[0xfe]), &mut legacy, &mmio);
        assert!(exit.is_signalled());
        let mut d = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut d), &mut legacy, &mmio);
        assert_eq!(d, [0xff; 4], "no device there");
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &mut legacy, &mmio),
            ExitAction::Stop(StopReason::Shutdown)
        );
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(0x80000021, 0), &mut legacy, &mmio),
            ExitAction::Stop(StopReason::Failed(_))
        ));
    }
}
