//! The Go runtime's top-level `[factory]` table: VM templating and the VM cache.
//!
//! runtime-rs keeps templating in `[hypervisor.<name>.factory]`
//! ([`kata_hypervisor::config::HypervisorFactory`]); Kata's QEMU files still carry this table,
//! so it is read too. `vm_cache_number` and `vm_cache_endpoint` are served by kata-shim's
//! `kata-vm-cache` (VMs booted ahead, handed to the shim over the endpoint). VM templating
//! is not implemented: `enable_template = true` is refused, naming the key.

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
        if self.enable_template {
            return Err(ConfigIssue::new(
                "factory",
                "enable_template",
                "enable_template = true: VM templating is not implemented by kata-rs; set it \
                 false (vm_cache_number > 0 with kata-vm-cache keeps VMs booted ahead instead)",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_template_is_refused_naming_it_and_the_cache_needs_an_absolute_endpoint() {
        let f = FactoryConfig {
            enable_template: true,
            ..Default::default()
        };
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("enable_template"), "{e}");
        let f = FactoryConfig {
            vm_cache_number: 2,
            vm_cache_endpoint: "cache.sock".into(),
            ..Default::default()
        };
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("vm_cache_endpoint"), "{e}");
        let f = FactoryConfig {
            vm_cache_number: 2,
            ..Default::default()
        };
        assert!(f.validate().is_ok());
    }
}
