//! Fault injection for tests of the QEMU backend's further boots (feature `test-backend`).
//!
//! The hybrid-vsock backend gets stuck in about one boot of twenty under load, which
//! [`Hypervisor::wait_ready`](crate::Hypervisor::wait_ready) recovers from by booting the VM once
//! more (up to twice). A test cannot wait for that fault, so it arms one here:
//! `silence_boots` makes the named VM's first `n` boots count as silent once its agent has
//! answered (so each QEMU has really run the guest, with its vhost-user daemons connected), and
//! the backend takes the very path it takes for a stuck backend. Without the feature nothing can
//! arm it and `take_silent_boot` is always false.

#[cfg(feature = "test-backend")]
use std::collections::HashMap;
#[cfg(feature = "test-backend")]
use std::sync::Mutex;

#[cfg(feature = "test-backend")]
static SILENT_BOOTS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// Makes the first `n` boots of the VM of sandbox `id` count as silent, forcing `n` further
/// boots (the backend boots at most three times: `n` above 2 makes the wait fail). For tests
/// only.
#[cfg(feature = "test-backend")]
pub fn silence_boots(id: &str, n: u32) {
    SILENT_BOOTS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id.to_owned(), n);
}

/// Whether a test armed [`silence_boots`] for `id` and a silent boot is left; uses one.
pub(crate) fn take_silent_boot(id: &str) -> bool {
    #[cfg(feature = "test-backend")]
    {
        let mut armed = SILENT_BOOTS.lock().unwrap();
        let Some(left) = armed.as_mut().and_then(|ids| ids.get_mut(id)) else {
            return false;
        };
        *left -= 1;
        if *left == 0 {
            armed.as_mut().map(|ids| ids.remove(id));
        }
        true
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
    fn an_armed_fault_fires_as_often_as_asked_and_only_for_its_vm() {
        silence_boots("fault-a", 2);
        assert!(!take_silent_boot("fault-b"));
        assert!(take_silent_boot("fault-a"));
        assert!(take_silent_boot("fault-a"));
        assert!(!take_silent_boot("fault-a"));
    }
}
