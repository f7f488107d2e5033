//! What the QEMU backend saves of a running VM, inside [`HypervisorState::backend_state`]:
//! opaque to everyone above this crate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::HypervisorType;
use crate::device::{DeviceConfig, PciePort};
use crate::error::{Error, Result};
use crate::hypervisor::HypervisorState;
use crate::kvm::Accelerator;

/// The QEMU VM's own state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QemuState {
    /// The `qemu-system-*` process.
    pub qemu_pid: u32,
    /// The hybrid-vsock backend (vhost-device-vsock), when the host has no vhost-vsock.
    #[serde(default)]
    pub vsock_backend_pid: Option<u32>,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// The accelerator the VM runs with.
    #[serde(default)]
    pub accelerator: Option<Accelerator>,
    /// The devices cold-plugged at start (the PCIe port plan is derived from them).
    #[serde(default)]
    pub cold_plugged: Vec<DeviceConfig>,
    /// The block devices hot-plugged into the VM, for a later owner to detach.
    #[serde(default)]
    pub blocks: Vec<super::hotplug::AttachedBlock>,
    /// Which device holds which PCIe port (cold- and hot-plugged).
    #[serde(default)]
    pub ports: Vec<HeldPort>,
    /// The vCPUs and memory hot-plugged, and `maxmem` (so a restored VM knows its size).
    #[serde(default)]
    pub resize: super::resize::ResizeState,
    /// The unprivileged user a rootless QEMU runs as, and the claim holding its uid: cleanup
    /// after a crash releases it ([`super::rootless`]).
    #[serde(default)]
    pub rootless: Option<super::rootless::RootlessState>,
}

/// One PCIe port a device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPort {
    /// The device id.
    pub device: String,
    /// The kind of port.
    pub port: PciePort,
    /// Which port of its kind.
    pub index: u32,
}

impl QemuState {
    /// The pids: QEMU first, then its vsock backend.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.qemu_pid)
            .chain(self.vsock_backend_pid)
            .filter(|p| *p != 0)
            .collect()
    }

    /// Reads the QEMU state out of a saved [`HypervisorState`]: it must be QEMU's, and of a
    /// format that has it.
    pub fn from_saved(saved: &HypervisorState) -> Result<Self> {
        let bad = |reason: String| Error::BadState {
            backend: saved.backend,
            vm_dir: saved.vm_dir.clone(),
            reason,
        };
        if saved.backend != HypervisorType::Qemu {
            return Err(bad("the VM was not started by the QEMU backend".into()));
        }
        if saved.backend_state.is_null() {
            return Err(bad(
                "the state has no QEMU section (an older format): the VM can only be cleaned up"
                    .into(),
            ));
        }
        serde_json::from_value(saved.backend_state.clone()).map_err(|e| {
            bad(format!(
                "the QEMU section does not read ({e}); clean the VM up"
            ))
        })
    }

    /// The [`HypervisorState`] holding this.
    pub fn into_saved(
        self,
        vm_dir: &Path,
        agent_address: Option<crate::VsockAddress>,
    ) -> HypervisorState {
        HypervisorState {
            backend: HypervisorType::Qemu,
            vm_dir: vm_dir.to_path_buf(),
            agent_address,
            backend_state: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rootless: Option<super::super::rootless::RootlessState>) -> QemuState {
        QemuState {
            qemu_pid: 42,
            vsock_backend_pid: None,
            qmp_socket: "/run/kata/sb/vm/qmp.sock".into(),
            accelerator: None,
            cold_plugged: Vec::new(),
            blocks: Vec::new(),
            ports: Vec::new(),
            resize: Default::default(),
            rootless,
        }
    }

    #[test]
    fn the_rootless_user_is_saved_and_an_older_state_reads_without_one() {
        let user = super::super::rootless::RootlessState {
            uid: 1879048200,
            gid: 1879048200,
            claim: "/run/kata-rs-rootless/1879048200".into(),
        };
        let vm_dir = Path::new("/run/kata/sb/vm");
        let saved = state(Some(user.clone())).into_saved(vm_dir, None);
        assert_eq!(saved.backend_state["rootless"]["uid"], 1879048200);
        let back = QemuState::from_saved(&saved).unwrap();
        assert_eq!(back.rootless, Some(user));
        let mut older = state(None).into_saved(vm_dir, None);
        older
            .backend_state
            .as_object_mut()
            .unwrap()
            .remove("rootless");
        assert_eq!(QemuState::from_saved(&older).unwrap().rootless, None);
    }
}
