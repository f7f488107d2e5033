//! The Go runtime's top-level `[factory]` table: VM templating and the VM cache.
//!
//! runtime-rs keeps templating in `[hypervisor.<name>.factory]`
//! ([`kata_hypervisor::config::HypervisorFactory`]); Kata's QEMU files still carry this table,
//! so it is read too. kata-rs creates every VM from scratch today: the keys are parsed and
//! validated, and turning templating on only changes how fast a VM could start.

use serde::{Deserialize, Serialize};

use super::ConfigIssue;

/// Kata's default socket of the VM cache server.
pub const DEFAULT_VM_CACHE_ENDPOINT: &str = "/var/run/kata-containers/cache.sock";

/// The `[factory]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FactoryConfig {
    /// Create VMs by cloning a template VM (needs `initrd`, not `image`). Default false.
    pub enable_template: bool,
    /// Where the template VM is kept. Default `/run/vc/vm/template`.
    pub template_path: String,
    /// VMs kept booted in advance by the VM cache; 0 (default) turns the cache off.
    pub vm_cache_number: u32,
    /// Socket of the VM cache server. Default `/var/run/kata-containers/cache.sock`.
    pub vm_cache_endpoint: String,
}

impl Default for FactoryConfig {
    fn default() -> Self {
        FactoryConfig {
            enable_template: false,
            template_path: kata_hypervisor::config::DEFAULT_TEMPLATE_PATH.into(),
            vm_cache_number: 0,
            vm_cache_endpoint: DEFAULT_VM_CACHE_ENDPOINT.into(),
        }
    }
}

impl FactoryConfig {
    /// Checks the values: paths are absolute when their feature is on.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        if self.enable_template && !self.template_path.starts_with('/') {
            return Err(ConfigIssue::new(
                "factory",
                "template_path",
                format!(
                    "template_path = \"{}\": an absolute directory is needed when enable_template = true",
                    self.template_path
                ),
            ));
        }
        if self.vm_cache_number > 0 && !self.vm_cache_endpoint.starts_with('/') {
            return Err(ConfigIssue::new(
                "factory",
                "vm_cache_endpoint",
                format!(
                    "vm_cache_endpoint = \"{}\": an absolute socket path is needed when vm_cache_number > 0",
                    self.vm_cache_endpoint
                ),
            ));
        }
        Ok(())
    }
}
