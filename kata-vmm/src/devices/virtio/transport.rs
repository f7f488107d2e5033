//! What the virtio transports (virtio-mmio, virtio-pci) decide alike: how a write of the device
//! status moves the device ([`status_step`]), and the queues a device is activated with
//! ([`activation_queues`]). Each transport keeps its own registers and carries the step out.

use virtio_queue::{Queue, QueueT};

use super::mmio::status;
use super::VIRTIO_F_VERSION_1;
use crate::memory::GuestMemory;

/// What the driver's write of `v` to the device status asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusStep {
    /// 0: reset the device.
    Reset,
    /// A write the device refuses: it needs a reset (the reason).
    Fail(&'static str),
    /// DRIVER_OK after FEATURES_OK: store `v`, then activate the device.
    Activate,
    /// Store this status (FEATURES_OK left out for a driver without VERSION_1).
    Set(u32),
}

/// The step for the driver writing `v` over status `old`, with `acked` features: bits are only
/// ever added (virtio 1.x 2.1.1) except by a reset; DRIVER_OK needs FEATURES_OK accepted by an
/// earlier write; FEATURES_OK does not stick without VERSION_1 (a legacy driver sees it refused).
pub(crate) fn status_step(old: u32, v: u32, acked: u64) -> StatusStep {
    if v == 0 {
        return StatusStep::Reset;
    }
    if v & old != old {
        return StatusStep::Fail("the driver cleared device status bits without a reset");
    }
    let new = v & !old;
    if new & status::DRIVER_OK != 0 {
        if old & status::FEATURES_OK == 0 {
            return StatusStep::Fail("DRIVER_OK before FEATURES_OK was accepted");
        }
        return StatusStep::Activate;
    }
    if new & status::FEATURES_OK != 0 && acked & VIRTIO_F_VERSION_1 == 0 {
        return StatusStep::Set(v & !status::FEATURES_OK);
    }
    StatusStep::Set(v)
}

/// The device's own copies of `queues` for its activation, or why it cannot be activated:
/// every queue enabled, none given a size it refused (`size_refused`), each valid in `mem`.
pub(crate) fn activation_queues(
    queues: &[Queue],
    size_refused: &[bool],
    mem: &GuestMemory,
) -> Result<Vec<Queue>, String> {
    if let Some(i) = queues.iter().position(|q| !q.ready()) {
        return Err(format!("queue {i} was not enabled"));
    }
    if let Some(i) = size_refused.iter().position(|r| *r) {
        return Err(format!("queue {i} was given a size it cannot take"));
    }
    if let Some(i) = queues.iter().position(|q| !q.is_valid(mem)) {
        return Err(format!("queue {i} has an invalid size or address"));
    }
    queues
        .iter()
        .map(|q| Queue::try_from(q.state()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("copying the queues: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_writes_move_the_device_as_virtio_says() {
        use status::*;
        let v1 = VIRTIO_F_VERSION_1;
        assert_eq!(status_step(15, 0, v1), StatusStep::Reset);
        assert!(matches!(
            status_step(ACKNOWLEDGE | DRIVER, ACKNOWLEDGE, v1),
            StatusStep::Fail(_)
        ));
        assert!(matches!(
            status_step(ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | DRIVER_OK, v1),
            StatusStep::Fail(_)
        ));
        let ready = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        assert_eq!(
            status_step(ready, ready | DRIVER_OK, v1),
            StatusStep::Activate
        );
        assert_eq!(
            status_step(ACKNOWLEDGE | DRIVER, ready, 0),
            StatusStep::Set(ACKNOWLEDGE | DRIVER),
            "a legacy driver's FEATURES_OK does not stick"
        );
        assert_eq!(
            status_step(ACKNOWLEDGE | DRIVER, ready, v1),
            StatusStep::Set(ready)
        );
    }
}
