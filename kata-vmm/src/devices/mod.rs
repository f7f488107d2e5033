//! The devices of the built-in VMM: [`legacy`] port-I/O devices (serial console, i8042),
//! [`virtio`] devices on the virtio-mmio transport, and [`vfio`] passthrough on a [`pci`] bus.

pub mod legacy;
pub mod pci;
pub mod vfio;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// A level of an interrupt line or an event, raised by writing to an eventfd (an irqfd once
/// registered with KVM; read directly in tests).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `fd`.
    pub fn new(fd: EventFd) -> Self {
        EventFdTrigger(fd)
    }

    /// A new non-blocking eventfd.
    pub fn new_nonblocking() -> std::io::Result<Self> {
        EventFd::new(libc::EFD_NONBLOCK).map(EventFdTrigger)
    }

    /// The eventfd (to register as an irqfd, or to poll).
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }

    /// Raises the event.
    pub fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
