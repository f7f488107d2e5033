//! Fault injection for tests of the QEMU backend's second boot (feature `test-backend`).
//!
//! The hybrid-vsock backend gets stuck in about one boot of twenty under load, which
//! [`Hypervisor::wait_ready`](crate::Hypervisor::wait_ready) recovers from by booting the VM once
//! more. A test cannot wait for that fault, so it arms one here: [`silence_first_boot`] makes the
//! named VM's first boot count as silent once its agent has answered (so the first QEMU has
//! really run the guest, with its vhost-user daemons connected), and the backend takes the very
//! path it takes for a stuck backend. Without the feature nothing can arm it and
//! [`take_silent_boot`] is always false.

#[cfg(feature = "test-backend")]
use std::collections::HashSet;
#[cfg(feature = "test-backend")]
use std::sync::Mutex;

#[cfg(feature = "test-backend")]
static SILENT_FIRST_BOOT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Makes the first boot of the VM of sandbox `id` count as silent once, forcing the second
/// boot. For tests only.
#[cfg(feature = "test-backend")]
pub fn silence_first_boot(id: &str) {
    SILENT_FIRST_BOOT
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(id.to_owned());
}

/// Whether a test armed [`silence_first_boot`] for `id`; disarms it.
pub(crate) fn take_silent_boot(id: &str) -> bool {
    #[cfg(feature = "test-backend")]
    {
        SILENT_FIRST_BOOT
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|ids| ids.remove(id))
    }
    #[cfg(not(feature = "test-backend"))]
    {
        let _ = id;
        false
    }
}

#[cfg(all(test, feature = "test-backend"))]
mod tests {
    use super::*;

    #[test]
    fn an_armed_fault_fires_once_and_only_for_its_vm() {
        silence_first_boot("fault-a");
        assert!(!take_silent_boot("fault-b"));
        assert!(take_silent_boot("fault-a"));
        assert!(!take_silent_boot("fault-a"));
    }
}
