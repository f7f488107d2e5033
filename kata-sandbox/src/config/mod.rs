//! Kata's configuration file format (`configuration.toml`), loaded as Kata loads it.
//!
//! A [`KataConfig`] is the whole file: `[hypervisor.<name>]` tables (kata-hypervisor's
//! [`HypervisorConfig`]), `[agent.kata]` (kata-agent-client's [`AgentConfig`]), `[runtime]`
//! ([`RuntimeConfig`]) and the Go runtime's top-level `[factory]` ([`FactoryConfig`]).
//! [`ConfigLoader`] finds and loads one the way Kata does:
//!
//! 1. **Which file**: an explicit path (the containerd runtime options' `config_path`), else
//!    `$KATA_CONF_FILE`, else the first that exists of [`DEFAULT_SEARCH_PATHS`].
//! 2. **Drop-ins**: every `config.d/*.toml` next to that file, in lexical order, deep-merged
//!    over it (a later file's key wins; tables merge key by key; arrays are replaced).
//! 3. **Annotations**: `io.katacontainers.config.hypervisor.<key>` pod annotations for keys
//!    the hypervisor's `enable_annotations` allows, path values checked against the matching
//!    `valid_*_paths` glob list; Kata's fixed set of agent and runtime annotations.
//! 4. **Adjust**: Kata's documented load-time rules ([`HypervisorConfig::adjust`],
//!    [`RuntimeConfig::adjust`]).
//! 5. **Validate**: ranges, enum values, incompatible combinations. An error names the file
//!    (or drop-in, or annotation) responsible, the key, the value and what is allowed.
//!    Host paths the active configuration needs are checked separately
//!    ([`LoadedConfig::check_host_paths`]), so a file can be validated on any machine.
//!
//! Keys this version does not know are logged as warnings (with the file that has them), not
//! refused, so files from newer Kata versions still load.
//!
//! ```no_run
//! use kata_sandbox::config::ConfigLoader;
//!
//! # fn demo() -> Result<(), kata_sandbox::Error> {
//! let loaded = ConfigLoader::new()
//!     .path("/etc/kata-containers/runtime-rs/configuration.toml")
//!     .annotation("io.katacontainers.config.hypervisor.default_memory", "512")
//!     .load()?;
//! let (name, _kind, hv) = loaded.config.active_hypervisor().map_err(|e| loaded.error(e))?;
//! println!("[hypervisor.{name}] default_memory = {}", hv.default_memory);
//! print!("{}", loaded.effective_toml());
//! # Ok(()) }
//! ```

mod annotations;
mod factory;
mod host;
mod loader;
mod merge;
mod path_pattern;
mod runtime;
mod unknown_keys;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub use kata_agent_client::config::{AgentConfig, MemAgentConfig, AGENT_SECTION_NAMES};
pub use kata_hypervisor::config::{HypervisorConfig, HypervisorType};
/// Whether the built-in VMM can run on this host (for `shim-ctl check`).
pub use kata_hypervisor::kvm::{
    default_hypervisor, probe_builtin_vmm, BuiltinVmmProbe, DefaultHypervisor,
};
use serde::{Deserialize, Serialize};

pub use annotations::{IgnoredAnnotation, ANNOTATION_PREFIX};
pub use factory::FactoryConfig;
pub use host::{check_host, CheckStatus, HostCheck, HostProbe};
pub use loader::{
    ConfigLoader, ConfigSource, LoadedConfig, SourceKind, DEFAULT_SEARCH_PATHS, DROP_IN_DIR,
    KATA_CONF_FILE,
};
pub use path_pattern::path_matches;
pub use runtime::{RuntimeConfig, SharedMount};

use crate::error::{Error, Result};

/// One thing wrong with a configuration: where (`[section] key`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The table: `hypervisor.qemu`, `agent.kata`, `runtime`, `factory`, or empty for the file.
    pub section: String,
    /// The key within the table (may be dotted: `factory.enable_template`), or empty.
    pub key: String,
    /// What is wrong and what is allowed, starting with `key = value` where there is a value.
    pub message: String,
}

impl ConfigIssue {
    pub(crate) fn new(
        section: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigIssue {
            section: section.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The dotted path of the key (`hypervisor.qemu.default_memory`).
    pub fn key_path(&self) -> String {
        match (self.section.is_empty(), self.key.is_empty()) {
            (true, _) => self.key.clone(),
            (false, true) => self.section.clone(),
            (false, false) => format!("{}.{}", self.section, self.key),
        }
    }

    fn from_hypervisor(name: &str, e: kata_hypervisor::Error) -> Self {
        match e {
            kata_hypervisor::Error::InvalidConfig { key, value, reason } => ConfigIssue::new(
                format!("hypervisor.{name}"),
                key,
                format!("{key} = {value}: {reason}"),
            ),
            other => ConfigIssue::new(format!("hypervisor.{name}"), "", other.to_string()),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.section.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "[{}] {}", self.section, self.message)
        }
    }
}

/// A whole configuration file (after drop-ins and annotations, when it came from
/// [`ConfigLoader`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KataConfig {
    /// `[hypervisor.<name>]` tables, by section name.
    pub hypervisor: BTreeMap<String, HypervisorConfig>,
    /// `[agent.<name>]` tables (Kata has one agent: `kata`).
    pub agent: BTreeMap<String, AgentConfig>,
    /// The `[runtime]` table.
    pub runtime: RuntimeConfig,
    /// The Go runtime's top-level `[factory]` table (VM templating and VM cache).
    pub factory: FactoryConfig,
}

impl KataConfig {
    /// Loads a file as [`ConfigLoader`] does with an explicit path (drop-ins next to it are
    /// merged), then adjusts and validates it.
    pub fn load(path: &Path) -> Result<Self> {
        Ok(ConfigLoader::new().path(path).load()?.config)
    }

    /// Parses one file's text: syntax and types are checked (errors carry the line and column),
    /// hypervisor and agent section names must be known. Nothing is adjusted or validated.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        toml::from_str::<KataConfig>(text).map_err(|e| e.to_string())?;
        Self::from_value(&value)
    }

    /// Builds the typed configuration from a parsed (possibly merged) TOML tree. Each
    /// hypervisor table is read over its VMM's defaults
    /// ([`HypervisorType::section_defaults`]).
    pub fn from_value(value: &toml::Value) -> std::result::Result<Self, String> {
        let mut root = value
            .as_table()
            .cloned()
            .ok_or_else(|| "the document is not a TOML table".to_string())?;
        if let Some(hv) = root.get_mut("hypervisor") {
            let hv = hv.as_table_mut().ok_or_else(|| {
                "`hypervisor` must hold [hypervisor.<name>] tables, not a value".to_string()
            })?;
            for (name, table) in hv.iter_mut() {
                let kind = HypervisorType::from_section(name).ok_or_else(|| {
                    format!(
                        "[hypervisor.{name}]: unknown hypervisor `{name}`; the sections Kata knows are {}",
                        HypervisorType::section_names()
                    )
                })?;
                if !table.is_table() {
                    return Err(format!("`hypervisor.{name}` must be a table"));
                }
                let mut with_defaults = toml::Value::Table(
                    kind.section_defaults()
                        .iter()
                        .map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string())))
                        .collect(),
                );
                merge::merge(&mut with_defaults, table, "", &mut merge::Origins::new());
                *table = with_defaults;
            }
        }
        if let Some(agents) = root.get("agent") {
            let agents = agents.as_table().ok_or_else(|| {
                "`agent` must hold [agent.<name>] tables, not a value".to_string()
            })?;
            for name in agents.keys() {
                if !AGENT_SECTION_NAMES.contains(&name.as_str()) {
                    return Err(format!(
                        "[agent.{name}]: unknown agent `{name}`; the agent sections Kata knows are {}",
                        AGENT_SECTION_NAMES.join(", ")
                    ));
                }
            }
        }
        toml::Value::Table(root)
            .try_into::<KataConfig>()
            .map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Applies Kata's load-time rules to every section; returns notes for the log.
    pub fn adjust(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for (name, hv) in self.hypervisor.iter_mut() {
            if let Some(kind) = HypervisorType::from_section(name) {
                notes.extend(
                    hv.adjust(kind)
                        .into_iter()
                        .map(|n| format!("[hypervisor.{name}] {n}")),
                );
            }
        }
        if self.runtime.hypervisor_name.is_empty() && self.hypervisor.len() == 1 {
            if let Some(name) = self.hypervisor.keys().next() {
                self.runtime.hypervisor_name = name.clone();
            }
        }
        self.runtime.adjust();
        notes
    }

    /// The active hypervisor: the table `[runtime] hypervisor_name` names, else the only one.
    pub fn active_hypervisor(
        &self,
    ) -> std::result::Result<(&str, HypervisorType, &HypervisorConfig), ConfigIssue> {
        let name = &self.runtime.hypervisor_name;
        let (name, hv) = if !name.is_empty() {
            let (name, hv) = self.hypervisor.get_key_value(name).ok_or_else(|| {
                ConfigIssue::new(
                    "runtime",
                    "hypervisor_name",
                    format!(
                        "hypervisor_name = \"{name}\": there is no [hypervisor.{name}] table (tables: {})",
                        self.table_names()
                    ),
                )
            })?;
            (name.as_str(), hv)
        } else {
            let mut it = self.hypervisor.iter();
            match (it.next(), it.next()) {
                (Some((n, hv)), None) => (n.as_str(), hv),
                (None, _) => {
                    return Err(ConfigIssue::new(
                        "",
                        "hypervisor",
                        format!(
                            "no [hypervisor.<name>] table; add one of: {}",
                            HypervisorType::section_names()
                        ),
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigIssue::new(
                        "runtime",
                        "hypervisor_name",
                        format!(
                        "several hypervisor tables ({}); choose one with [runtime] hypervisor_name",
                        self.table_names()
                    ),
                    ))
                }
            }
        };
        let kind = HypervisorType::from_section(name).ok_or_else(|| {
            ConfigIssue::new(
                format!("hypervisor.{name}"),
                "",
                format!(
                    "unknown hypervisor `{name}`; the sections Kata knows are {}",
                    HypervisorType::section_names()
                ),
            )
        })?;
        Ok((name, kind, hv))
    }

    /// The active agent section (`[agent.<agent_name>]`, Kata's defaults when absent).
    pub fn active_agent(&self) -> AgentConfig {
        let name = if self.runtime.agent_name.is_empty() {
            "kata"
        } else {
            self.runtime.agent_name.as_str()
        };
        self.agent.get(name).cloned().unwrap_or_default()
    }

    fn table_names(&self) -> String {
        self.hypervisor
            .keys()
            .map(|n| format!("[hypervisor.{n}]"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks every section without touching the disk: ranges, enum values, incompatible
    /// combinations within and across sections.
    pub fn validate(&self) -> std::result::Result<(), ConfigIssue> {
        let (_, active_kind, active) = self.active_hypervisor()?;
        for (name, hv) in &self.hypervisor {
            let kind = HypervisorType::from_section(name).ok_or_else(|| {
                ConfigIssue::new(format!("hypervisor.{name}"), "", "unknown hypervisor")
            })?;
            hv.validate_for(kind)
                .map_err(|e| ConfigIssue::from_hypervisor(name, e))?;
            for pattern in &hv.enable_annotations {
                annotations::compile_allow_pattern(pattern).map_err(|reason| {
                    ConfigIssue::new(
                        format!("hypervisor.{name}"),
                        "enable_annotations",
                        format!("enable_annotations = [.. \"{pattern}\" ..]: {reason}"),
                    )
                })?;
            }
        }
        let agent_name = if self.runtime.agent_name.is_empty() {
            "kata"
        } else {
            &self.runtime.agent_name
        };
        if !AGENT_SECTION_NAMES.contains(&agent_name) {
            return Err(ConfigIssue::new(
                "runtime",
                "agent_name",
                format!(
                    "agent_name = \"{agent_name}\": allowed: {}",
                    AGENT_SECTION_NAMES.join(", ")
                ),
            ));
        }
        for (name, agent) in &self.agent {
            agent
                .validate()
                .map_err(|e| ConfigIssue::new(format!("agent.{name}"), e.key, e.to_string()))?;
        }
        self.runtime.validate()?;
        self.factory.validate()?;
        // Combinations across sections.
        let rt = &self.runtime;
        if active.confidential_guest && !rt.static_sandbox_resource_mgmt {
            return Err(ConfigIssue::new(
                "runtime",
                "static_sandbox_resource_mgmt",
                "static_sandbox_resource_mgmt = false: a confidential guest cannot hot-plug CPUs or memory, so the VM must be sized before boot; set it to true",
            ));
        }
        if active_kind == HypervisorType::Remote && rt.internetworking_model != "none" {
            return Err(ConfigIssue::new(
                "runtime",
                "internetworking_model",
                format!(
                    "internetworking_model = \"{}\": the remote hypervisor brings its own network; set \"none\"",
                    rt.internetworking_model
                ),
            ));
        }
        self.factory.check_backend(active_kind, active)?;
        if self.factory.enable_template && !active.image.is_empty() {
            return Err(ConfigIssue::new(
                "factory",
                "enable_template",
                "enable_template = true: VM templating needs initrd; it does not work with image",
            ));
        }
        Ok(())
    }

    /// Checks the host paths the active configuration needs (see
    /// [`HypervisorConfig::check_host_paths`]) and `[runtime] sandbox_bind_mounts`.
    pub fn check_host_paths(&self) -> Vec<(ConfigIssue, Error)> {
        let mut problems = Vec::new();
        if let Ok((name, kind, hv)) = self.active_hypervisor() {
            for p in hv.check_host_paths(kind) {
                let issue = ConfigIssue::new(
                    format!("hypervisor.{name}"),
                    p.key,
                    format!("{}: {}", p.key, p.error),
                );
                problems.push((issue, Error::Hypervisor(p.error)));
            }
        }
        for bind in &self.runtime.sandbox_bind_mounts {
            let host = runtime::bind_mount_path(bind);
            if !Path::new(host).exists() {
                let issue = ConfigIssue::new(
                    "runtime",
                    "sandbox_bind_mounts",
                    format!("sandbox_bind_mounts: {host} does not exist"),
                );
                problems.push((
                    issue,
                    Error::io(
                        format!("sandbox bind mount {host}"),
                        std::io::ErrorKind::NotFound.into(),
                    ),
                ));
            }
        }
        problems
    }

    /// The configuration as TOML, every key written out (the effective values).
    pub fn to_toml(&self) -> String {
        // Through `toml::Value`, whose tables put plain values before sub-tables.
        match toml::Value::try_from(self) {
            Ok(v) => toml::to_string(&v).unwrap_or_else(|e| format!("# cannot render: {e}\n")),
            Err(e) => format!("# cannot render: {e}\n"),
        }
    }

    /// The hypervisor table to use (see [`KataConfig::active_hypervisor`]), validated for its
    /// VMM. `path` names the file in errors.
    pub fn hypervisor_section(&self, path: &Path) -> Result<(String, HypervisorConfig)> {
        let err = |issue: ConfigIssue| Error::Config {
            path: path.display().to_string(),
            reason: issue.to_string(),
        };
        let (name, kind, hv) = self.active_hypervisor().map_err(err)?;
        hv.validate_for(kind)
            .map_err(|e| err(ConfigIssue::from_hypervisor(name, e)))?;
        Ok((name.to_string(), hv.clone()))
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
        let e = KataConfig::parse("[hypervisor.qemu]\ndefault_memory = \"lots\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("default_memory"), "{e}");
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

    #[test]
    fn per_vmm_defaults_apply_to_keys_left_out() {
        let c = KataConfig::parse("[hypervisor.firecracker]\n[hypervisor.dragonball]\n").unwrap();
        use kata_hypervisor::config::{BlockDeviceDriver, SharedFs};
        assert_eq!(c.hypervisor["firecracker"].shared_fs, SharedFs::None);
        assert_eq!(
            c.hypervisor["firecracker"].block_device_driver,
            BlockDeviceDriver::VirtioBlkMmio
        );
        assert_eq!(
            c.hypervisor["dragonball"].shared_fs,
            SharedFs::InlineVirtioFs
        );
        let c = KataConfig::parse("[hypervisor.firecracker]\nshared_fs = \"virtio-fs\"\n").unwrap();
        assert_eq!(c.hypervisor["firecracker"].shared_fs, SharedFs::VirtioFs);
    }

    #[test]
    fn unknown_sections_are_refused_by_name() {
        let e = KataConfig::parse("[hypervisor.vmware]\n").unwrap_err();
        assert!(e.contains("hypervisor.vmware") && e.contains("qemu"), "{e}");
        let e = KataConfig::parse("[agent.other]\n").unwrap_err();
        assert!(e.contains("agent.other") && e.contains("kata"), "{e}");
    }

    #[test]
    fn to_toml_round_trips() {
        let mut c = KataConfig::parse(
            "[hypervisor.qemu]\ndefault_memory = 512\n[agent.kata]\n[agent.kata.mem_agent]\nmemcg_swap = true\n",
        )
        .unwrap();
        c.adjust();
        let text = c.to_toml();
        let again = KataConfig::parse(&text).unwrap();
        assert_eq!(again, c, "{text}");
    }
}
