//! Loading a Kata configuration file (`configuration-*.toml`).
//!
//! This is the part of Kata's format that a sandbox needs today: the `[hypervisor.<name>]`
//! table (kata-hypervisor's [`HypervisorConfig`]), `[agent.kata]` (kata-agent-client's
//! [`AgentConfig`]) and `[runtime]`. Keys this
//! version does not know are ignored, so files from newer Kata versions still load.

use std::collections::BTreeMap;
use std::path::Path;

pub use kata_agent_client::config::AgentConfig;
use kata_hypervisor::HypervisorConfig;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Runtime name (`virt_container`, `linux_container`, `wasm_container`).
    pub name: String,
    /// Which `[hypervisor.*]` table to use when several are present.
    pub hypervisor_name: String,
    /// Which `[agent.*]` table to use.
    pub agent_name: String,
    /// Log at debug level on the host.
    pub enable_debug: bool,
}

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct KataConfig {
    /// `[hypervisor.<name>]` tables.
    pub hypervisor: BTreeMap<String, HypervisorConfig>,
    /// `[agent.<name>]` tables.
    pub agent: BTreeMap<String, AgentConfig>,
    /// The `[runtime]` table.
    pub runtime: RuntimeConfig,
}

impl KataConfig {
    /// Reads and parses a file; syntax errors carry the line and column.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Config {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            err(format!(
                "not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        if text.trim().is_empty() {
            return Err(err(
                "the file is empty; it needs at least a [hypervisor.<name>] table".into(),
            ));
        }
        Self::parse(&text).map_err(err)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The hypervisor table to use: the one `[runtime] hypervisor_name` names, else the only
    /// one. Its values are validated.
    pub fn hypervisor_section(&self, path: &Path) -> Result<(String, HypervisorConfig)> {
        let err = |reason: String| Error::Config {
            path: path.display().to_string(),
            reason,
        };
        let (name, hv) =
            if !self.runtime.hypervisor_name.is_empty() {
                let n = &self.runtime.hypervisor_name;
                let hv = self.hypervisor.get(n).ok_or_else(|| {
                    err(format!(
                    "[runtime] hypervisor_name = \"{n}\" but there is no [hypervisor.{n}] table"
                ))
                })?;
                (n.clone(), hv.clone())
            } else {
                let mut it = self.hypervisor.iter();
                match (it.next(), it.next()) {
                    (Some((n, hv)), None) => (n.clone(), hv.clone()),
                    (None, _) => return Err(err("no [hypervisor.<name>] table".into())),
                    (Some(_), Some(_)) => return Err(err(
                        "several [hypervisor.*] tables; choose one with [runtime] hypervisor_name"
                            .into(),
                    )),
                }
            };
        hv.validate()
            .map_err(|e| err(format!("[hypervisor.{name}] {e}")))?;
        Ok((name, hv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_keys_land_in_the_types() {
        let c = KataConfig::parse(
            r#"
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
kernel = "/k/vmlinux"
machine_type = "q35"
default_vcpus = 2
default_maxvcpus = 4
default_memory = 512
shared_fs = "virtio-9p"
cold_plug_vfio = "root-port"
pcie_root_port = 2
some_future_key = true

[agent.kata]
dial_timeout = 30

[runtime]
name = "virt_container"
"#,
        )
        .unwrap();
        let (name, hv) = c.hypervisor_section(Path::new("x.toml")).unwrap();
        assert_eq!(name, "qemu");
        assert_eq!(hv.default_vcpus, 2);
        assert_eq!(hv.default_memory, 512);
        assert_eq!(hv.cold_plug_vfio, kata_hypervisor::PciePort::RootPort);
        assert_eq!(c.agent["kata"].dial_timeout, Some(30));
        assert_eq!(c.agent["kata"].connect_options().dial_timeout.as_secs(), 30);
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = KataConfig::parse("[hypervisor.qemu]\ndefault_vcpus = = 2\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_values_name_the_table_and_key() {
        let c = KataConfig::parse("[hypervisor.qemu]\ndefault_memory = 8\n").unwrap();
        let e = c
            .hypervisor_section(Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.toml") && e.contains("default_memory"), "{e}");
    }
}
