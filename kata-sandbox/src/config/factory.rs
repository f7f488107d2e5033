//! The Go runtime's top-level `[factory]` table: VM templating and the VM cache.
//!
//! runtime-rs keeps templating in `[hypervisor.<name>.factory]`
//! ([`kata_hypervisor::config::HypervisorFactory`]); Kata's QEMU files still carry this table,
//! so it is read too (copied into the active hypervisor's table by [`FactoryConfig::apply_to`]).
//! `vm_cache_number` and `vm_cache_endpoint` are served by kata-shim's `kata-vm-cache` (VMs
//! booted ahead, handed to the shim over the endpoint). VM templating (`enable_template`) is
//! done by the QEMU backend (kata-hypervisor's `qemu::template`: sandboxes start as clones of
//! a saved VM) and the built-in VMM's (`builtin::template`: restores of kata-vmm's snapshot);
//! with any other hypervisor it is refused, naming the key ([`FactoryConfig::check_backend`]).

use kata_hypervisor::config::{HypervisorConfig, HypervisorType};
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

impl FactoryConfig {
    /// Copies the templating keys into the active hypervisor's table (runtime-rs' place,
    /// which the backend reads) when `enable_template` is set here.
    pub fn apply_to(&self, hv: &mut HypervisorConfig) {
        if self.enable_template {
            hv.factory.enable_template = true;
            hv.factory.template_path = self.template_path.clone();
        }
    }

    /// Refuses templating (here or in `hv`'s factory table) with a hypervisor that cannot
    /// template (all but QEMU and the built-in VMM), naming the key.
    pub fn check_backend(
        &self,
        kind: HypervisorType,
        hv: &HypervisorConfig,
    ) -> Result<(), ConfigIssue> {
        let templates = matches!(kind, HypervisorType::Qemu | HypervisorType::Dragonball);
        if (self.enable_template || hv.factory.enable_template) && !templates {
            return Err(ConfigIssue::new(
                "factory",
                "enable_template",
                format!(
                    "enable_template = true: VM templating is implemented for QEMU and the \
                     built-in VMM only, not for [hypervisor.{}]; set it false (vm_cache_number > 0 with kata-vm-cache \
                     keeps VMs booted ahead instead)",
                    kind.section_name()
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
    fn enable_template_is_refused_but_for_qemu_and_the_builtin_vmm_and_an_absolute_cache() {
        let f = FactoryConfig {
            enable_template: true,
            ..Default::default()
        };
        assert!(f.validate().is_ok());
        let hv = HypervisorConfig::default();
        assert!(f.check_backend(HypervisorType::Qemu, &hv).is_ok());
        assert!(f.check_backend(HypervisorType::Dragonball, &hv).is_ok());
        let e = f
            .check_backend(HypervisorType::CloudHypervisor, &hv)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("enable_template") && e.contains("built-in VMM only"),
            "{e}"
        );
        let mut copied = HypervisorConfig::default();
        f.apply_to(&mut copied);
        assert!(copied.factory.enable_template);
        assert_eq!(copied.factory.template_path, f.template_path);
        let mut runtime_rs = HypervisorConfig::default();
        runtime_rs.factory.enable_template = true;
        let off = FactoryConfig::default();
        assert!(off
            .check_backend(HypervisorType::CloudHypervisor, &runtime_rs)
            .is_err());
        let f = FactoryConfig {
            enable_template: true,
            template_path: "template".into(),
            ..Default::default()
        };
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("template_path"), "{e}");
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
