//! [`SandboxBuilder`]: the options of a sandbox before it boots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_agent_client::ConnectOptions;
use kata_hypervisor::HypervisorConfig;

use crate::config::{ConfigLoader, HypervisorType, KataConfig, LoadedConfig};
use crate::error::{Error, Result};
use crate::sandbox::{Inner, Sandbox};

/// How [`SandboxBuilder::from_kata_config`] names a configuration that came from no file.
const CONFIG_LABEL: &str = "configuration";

/// Where sandbox directories go by default (`/run/kata/<sandbox-id>`, as Kata's persist does).
pub const DEFAULT_ROOT_DIR: &str = "/run/kata";

/// The VMM that runs the sandbox: kata-hypervisor's type, whose backend
/// [`kata_hypervisor::backend`] makes (the default is the one kata-rs boots today).
pub type HypervisorKind = HypervisorType;

/// Options for a sandbox; [`SandboxBuilder::build`] boots it.
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    pub(crate) id: Option<String>,
    pub(crate) hypervisor: HypervisorKind,
    pub(crate) config: HypervisorConfig,
    pub(crate) agent_options: ConnectOptions,
    pub(crate) root_dir: PathBuf,
    pub(crate) image_cache: PathBuf,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SandboxBuilder {
    /// [`HypervisorConfig::default`]: Kata's defaults, except the shared filesystem (virtio-9p,
    /// which needs no daemon; see [`kata_hypervisor::SharedFs`]).
    pub fn new() -> Self {
        let cache = kata_hypervisor::config::cache_dir();
        SandboxBuilder {
            id: None,
            hypervisor: HypervisorKind::default(),
            config: HypervisorConfig::default(),
            agent_options: ConnectOptions::default(),
            root_dir: PathBuf::from(DEFAULT_ROOT_DIR),
            image_cache: cache.join("images"),
        }
    }

    /// Builder from a Kata configuration file, loaded as Kata loads it: the `config.d/*.toml`
    /// drop-ins next to it are merged, the values are adjusted and validated, and the host
    /// paths the active `[hypervisor.*]` section needs must exist. Errors name the file, the
    /// key, the value and what is allowed.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self> {
        let loaded = ConfigLoader::new().path(path.as_ref()).load()?;
        Self::from_loaded_config(&loaded)
    }

    /// Builder from a configuration [`ConfigLoader`] loaded (with its drop-ins and pod
    /// annotations); the host paths its active hypervisor section needs must exist.
    pub fn from_loaded_config(loaded: &LoadedConfig) -> Result<Self> {
        if let Some(e) = loaded.check_host_paths().into_iter().next() {
            return Err(e);
        }
        Self::from_kata_config(loaded.config.clone()).map_err(|e| match e {
            Error::Config { path, reason } if path == CONFIG_LABEL => Error::Config {
                path: loaded.source.path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Builder from an already loaded configuration (no file access): the active
    /// `[hypervisor.*]` section, validated for its VMM, and `[agent.kata]`'s timeouts when the
    /// configuration has that table.
    pub fn from_kata_config(config: KataConfig) -> Result<Self> {
        let err = |reason: String| Error::Config {
            path: CONFIG_LABEL.into(),
            reason,
        };
        let (name, kind, hv) = config
            .active_hypervisor()
            .map_err(|issue| err(issue.to_string()))?;
        hv.validate_for(kind)
            .map_err(|e| err(format!("[hypervisor.{name}] {e}")))?;
        // A type without a backend in this build is refused here, before anything starts.
        kata_hypervisor::backend::capabilities(kind, hv).map_err(|e| err(e.to_string()))?;
        let mut b = Self::new();
        b.hypervisor = kind;
        b.config = hv.clone();
        // Without an [agent.kata] table the builder's own timeouts stay (Kata's 3 s default
        // is too short for a guest under TCG).
        if !config.agent.is_empty() {
            b.agent_options = config.active_agent().connect_options();
        }
        Ok(b)
    }

    /// Sets the sandbox id (default: random).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Chooses the VMM.
    pub fn hypervisor(mut self, kind: HypervisorKind) -> Self {
        self.hypervisor = kind;
        self
    }

    /// vCPUs at boot (`default_vcpus`).
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.config.default_vcpus = vcpus;
        self
    }

    /// Upper bound for vCPUs (`default_maxvcpus`).
    pub fn max_vcpus(mut self, vcpus: u32) -> Self {
        self.config.default_maxvcpus = vcpus;
        self
    }

    /// Guest memory in MiB (`default_memory`).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.config.default_memory = mib;
        self
    }

    /// Guest kernel (default: the guest manifest's, from `make guest`).
    pub fn kernel(mut self, path: impl AsRef<Path>) -> Self {
        self.config.kernel = path.as_ref().display().to_string();
        self
    }

    /// Guest initramfs (default: the guest manifest's).
    pub fn initrd(mut self, path: impl AsRef<Path>) -> Self {
        self.config.initrd = path.as_ref().display().to_string();
        self
    }

    /// Extra kernel parameters (appended to `kernel_params`).
    pub fn kernel_params(mut self, params: &str) -> Self {
        if !self.config.kernel_params.is_empty() {
            self.config.kernel_params.push(' ');
        }
        self.config.kernel_params.push_str(params);
        self
    }

    /// Where sandbox directories are created (default `/run/kata`).
    pub fn root_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.root_dir = dir.as_ref().to_path_buf();
        self
    }

    /// Where unpacked OCI images are cached.
    pub fn image_cache(mut self, dir: impl AsRef<Path>) -> Self {
        self.image_cache = dir.as_ref().to_path_buf();
        self
    }

    /// How long to wait for the guest agent after the VM starts (default 45 s).
    pub fn agent_timeout(mut self, timeout: Duration) -> Self {
        self.agent_options.dial_timeout = timeout;
        self
    }

    /// Replaces the whole `[hypervisor.*]` section.
    pub fn hypervisor_config(mut self, config: HypervisorConfig) -> Self {
        self.config = config;
        self
    }

    /// The effective hypervisor section.
    pub fn config(&self) -> &HypervisorConfig {
        &self.config
    }

    /// Checks the values; nothing is started when they are wrong.
    pub fn validate(&self) -> Result<()> {
        let c = &self.config;
        if c.default_vcpus == 0 {
            return Err(Error::invalid("vcpus", "0: a VM needs at least 1 vCPU"));
        }
        if c.default_maxvcpus != 0 && c.default_vcpus > c.default_maxvcpus {
            return Err(Error::invalid(
                "vcpus",
                format!(
                    "{} is more than max_vcpus (default_maxvcpus = {})",
                    c.default_vcpus, c.default_maxvcpus
                ),
            ));
        }
        if c.default_memory < kata_hypervisor::config::MIN_MEMORY_MIB {
            return Err(Error::invalid(
                "memory_mib",
                format!(
                    "{} MiB is under the {} MiB the guest needs",
                    c.default_memory,
                    kata_hypervisor::config::MIN_MEMORY_MIB
                ),
            ));
        }
        if self.agent_options.dial_timeout.is_zero() {
            return Err(Error::invalid(
                "agent_timeout",
                "0: give the guest time to boot",
            ));
        }
        c.validate()?;
        // Refused here, before a directory or process exists, rather than at VM start.
        kata_hypervisor::backend::capabilities(self.hypervisor, c)?.check_shared_fs(c.shared_fs)?;
        Ok(())
    }

    /// Boots the VM and waits for its agent.
    pub async fn build(self) -> Result<Sandbox> {
        Inner::boot(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_before_anything_starts() {
        let e = SandboxBuilder::new()
            .vcpus(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("vcpus"), "{e}");
        let e = SandboxBuilder::new()
            .memory_mib(32)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory_mib"), "{e}");
        let mut c = SandboxBuilder::new().config().clone();
        c.shared_fs = kata_hypervisor::SharedFs::VirtioFs;
        let e = SandboxBuilder::new()
            .hypervisor_config(c)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("shared_fs") && e.contains("virtio-9p"), "{e}");
        let e = SandboxBuilder::new()
            .vcpus(4)
            .max_vcpus(2)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_vcpus"), "{e}");
        SandboxBuilder::new()
            .vcpus(1)
            .memory_mib(256)
            .validate()
            .unwrap();
    }
}
