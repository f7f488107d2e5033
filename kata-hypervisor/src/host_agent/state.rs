//! What the test backend saves of a running agent, inside
//! [`HypervisorState::backend_state`](crate::HypervisorState::backend_state).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::share::Propagation;
use crate::config::HypervisorType;
use crate::error::{Error, Result};
use crate::hypervisor::HypervisorState;

/// The test backend's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAgentState {
    /// The `unshare` process (the agent's parent; its death kills the agent).
    pub unshare_pid: u32,
    /// The agent, PID 1 of its PID namespace.
    #[serde(default)]
    pub agent_pid: Option<u32>,
    /// The shared directory the agent sees at the guest path.
    #[serde(default)]
    pub shared_dir: Option<PathBuf>,
    /// What was done to the shared directory so mounts in it reach the agent.
    #[serde(default)]
    pub propagation: Propagation,
}

impl HostAgentState {
    /// The pids: `unshare`, then the agent.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.unshare_pid)
            .chain(self.agent_pid)
            .filter(|p| *p != 0)
            .collect()
    }

    /// Reads the test backend's state out of a saved [`HypervisorState`].
    pub fn from_saved(saved: &HypervisorState) -> Result<Self> {
        let bad = |reason: String| Error::BadState {
            backend: saved.backend,
            vm_dir: saved.vm_dir.clone(),
            reason,
        };
        if saved.backend != HypervisorType::HostAgent {
            return Err(bad("the VM was not started by the test backend".into()));
        }
        serde_json::from_value(saved.backend_state.clone())
            .map_err(|e| bad(format!("the test backend's section does not read ({e})")))
    }
}
