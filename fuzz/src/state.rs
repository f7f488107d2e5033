//! Saved state read back by a restarted runtime: `state.json` (kata-sandbox `persist`), the
//! QEMU backend's section of it (kata-hypervisor) and the resources' (kata-resource). A file
//! on the host, but one a crash can truncate and a restarted shim must not trip on.
//!
//! Only reading is fuzzed: cleaning up from a state acts on the pids and paths it names.

use kata_hypervisor::qemu::QemuState;
use kata_hypervisor::HypervisorState;
use kata_resource::ResourcesState;
use kata_sandbox::persist::SandboxState;

/// `data` as `<dir>/state.json` loaded, and as each section on its own.
pub fn state_json(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(SandboxState::path(dir.path()), data).expect("writing state.json");
    if let Ok(state) = SandboxState::load(dir.path()) {
        // What loads stores and loads again the same.
        let text = serde_json::to_vec(&state).expect("a loaded state serializes");
        std::fs::write(SandboxState::path(dir.path()), text).expect("writing state.json");
        let again = SandboxState::load(dir.path()).expect("a stored state loads again");
        assert_eq!(again, state, "state.json changed on a round trip");
    }
    if let Ok(saved) = serde_json::from_slice::<HypervisorState>(data) {
        let _ = QemuState::from_saved(&saved).map(|q| q.pids());
    }
    let _ = serde_json::from_slice::<ResourcesState>(data);
}
