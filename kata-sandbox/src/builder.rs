//! [`SandboxBuilder`]: the options of a sandbox before it starts, and [`SandboxConfig`], the
//! one validated configuration it produces.
//!
//! Everything a sandbox is started from — the embedder's builder calls or a Kata
//! configuration file with its drop-ins and pod annotations — ends in one [`SandboxConfig`]:
//! the active `[hypervisor.*]` section, `[agent.kata]`, `[runtime]`, the sandbox id and the
//! host directories. The sandbox starts from it, and `state.json` keeps it, so a restored
//! sandbox runs with exactly what it was built with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_agent_client::config::AgentConfig;
use kata_hypervisor::{HypervisorConfig, HypervisorType};
use kata_resource::network::NetworkConfig;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigLoader, KataConfig, LoadedConfig, RuntimeConfig};
use crate::error::{Error, Result};
use crate::handler::RuntimeHandlerKind;
use crate::sandbox::Sandbox;

/// How [`SandboxBuilder::from_kata_config`] names a configuration that came from no file.
const CONFIG_LABEL: &str = "configuration";

/// Where sandbox directories go by default (`/run/kata/<sandbox-id>`, as Kata's persist does).
pub const DEFAULT_ROOT_DIR: &str = "/run/kata";

/// How long the builder waits for the guest agent unless told otherwise. Kata's own default
/// (3 s) is too short for a guest under software emulation.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(45);

/// A validated sandbox configuration: what a sandbox is started from and what `state.json`
/// keeps of it. Made by [`SandboxBuilder::finish`] (or [`SandboxBuilder::build`], which
/// starts it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxConfig {
    /// The sandbox id (a valid container id: it names the sandbox directory).
    pub id: String,
    /// The runtime handler (`[runtime] name`).
    pub handler: RuntimeHandlerKind,
    /// The VMM (the active `[hypervisor.*]` section's type).
    pub hypervisor_type: HypervisorType,
    /// The active `[hypervisor.*]` section.
    pub hypervisor: HypervisorConfig,
    /// `[agent.kata]`.
    pub agent: AgentConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// Where sandbox directories are created (`<root_dir>/<id>`).
    pub root_dir: PathBuf,
    /// Where unpacked OCI images are cached.
    pub image_cache: PathBuf,
    /// The pod's network namespace (CNI's, `/run/netns/<name>`; a container runtime takes it
    /// from the OCI spec's `linux.namespaces[network].path`). With `internetworking_model =
    /// "tcfilter"` each of its interfaces gets a tap joined to it and a NIC in the VM, which
    /// the guest configures with the interface's MAC, MTU, addresses, routes and neighbours.
    /// `None`: the VM has no network but `lo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_namespace: Option<PathBuf>,
    /// The sandbox's cgroup on the host, as the sandbox spec's `linux.cgroupsPath` names it
    /// (cgroupfs `/kubepods/.../<id>` or systemd `slice:prefix:name`). `None`: Kata's
    /// `kata_sandboxed_pod/<id>`. The VMM and its helpers run there as `[runtime]
    /// sandbox_cgroup_only` says (see `kata_resource::cgroups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    /// The VFIO devices the sandbox is created with (`/dev/vfio/<group>`, the sandbox
    /// container's `linux.devices`): cold-plugged at boot when `cold_plug_vfio` names a port
    /// kind, else hot-plugged for each container that names them (see `virt/vfio.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vfio_devices: Vec<PathBuf>,
    /// The pod's hostname (the sandbox spec's `hostname`; the kubelet's pod hostname), which
    /// the guest's shared UTS namespace holds and every container of the pod without a
    /// hostname of its own sees. `None`: the first 12 characters of the sandbox id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl SandboxConfig {
    /// What kata-resource sets the sandbox's network up from: the pod's namespace,
    /// `[runtime] internetworking_model` and `disable_new_netns`, `[hypervisor.*]
    /// network_queues`.
    pub(crate) fn network_config(&self) -> Result<NetworkConfig> {
        Ok(NetworkConfig {
            netns_path: self.network_namespace.clone(),
            model: self.runtime.internetworking_model.parse()?,
            queues: self.hypervisor.network_queues,
            disable_new_netns: self.runtime.disable_new_netns,
        })
    }

    /// What kata-resource makes the sandbox's host cgroups from: the spec's
    /// `linux.cgroupsPath` and `[runtime] sandbox_cgroup_only`.
    pub(crate) fn cgroups_config(&self) -> kata_resource::cgroups::CgroupsConfig {
        let config = kata_resource::cgroups::CgroupsConfig::new(&self.id)
            .sandbox_cgroup_only(self.runtime.sandbox_cgroup_only);
        match &self.cgroups_path {
            Some(path) => config.cgroups_path(path),
            None => config,
        }
    }

    /// The sandbox directory, `<root_dir>/<id>`.
    pub fn dir(&self) -> PathBuf {
        // The id was validated as one plain path component when the config was made.
        self.root_dir.join(&self.id)
    }

    /// Settings this build parses but does not act on, each as `[section] key = value: why`:
    /// `[runtime]`, the active `[hypervisor.*]` section (as its backend classifies it) and
    /// `[agent.kata]`. A sandbox logs them as warnings when it starts (`shim-ctl check` lists
    /// them). Only values that differ from Kata's defaults are listed.
    pub fn inert_settings(&self) -> Vec<String> {
        let d = RuntimeConfig::default();
        let r = &self.runtime;
        let mut out = Vec::new();
        let mut inert = |key: &str, differs: bool, value: String, why: &str| {
            if differs {
                out.push(format!("[runtime] {key} = {value}: {why}"));
            }
        };
        const NO_CGROUPS: &str = "kata-rs does not pin vCPUs yet";
        inert(
            "enable_vcpus_pinning",
            r.enable_vcpus_pinning,
            "true".into(),
            NO_CGROUPS,
        );
        inert(
            "enable_pprof",
            r.enable_pprof,
            "true".into(),
            "there is no profiling endpoint",
        );
        inert(
            "emptydir_mode",
            r.emptydir_mode != d.emptydir_mode,
            format!("\"{}\"", r.emptydir_mode),
            "block-backed emptyDirs are not implemented yet: emptyDirs are made in the guest",
        );
        inert(
            "keep_abnormal",
            r.keep_abnormal,
            "true".into(),
            "a failed sandbox is always cleaned up",
        );
        inert(
            "shared_mounts",
            !r.shared_mounts.is_empty(),
            format!("{} entries", r.shared_mounts.len()),
            "mounts shared between containers are not implemented yet",
        );
        inert(
            "use_passfd_io",
            r.use_passfd_io,
            "true".into(),
            "stdio is always copied through the agent",
        );
        inert(
            "pod_resource_api_sock",
            !r.pod_resource_api_sock.is_empty(),
            format!("\"{}\"", r.pod_resource_api_sock),
            "devices are not implemented yet",
        );
        inert(
            "guest_selinux_label",
            !r.guest_selinux_label.is_empty(),
            format!("\"{}\"", r.guest_selinux_label),
            "the guest has no SELinux",
        );
        inert(
            "experimental",
            !r.experimental.is_empty(),
            format!("{:?}", r.experimental),
            "kata-rs has no experimental features",
        );
        out.extend(self.hypervisor.inert_settings(self.hypervisor_type));
        out.extend(self.agent.inert_settings());
        out
    }
}

/// Options for a sandbox; [`SandboxBuilder::build`] starts it.
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    id: Option<String>,
    hypervisor_type: HypervisorType,
    hypervisor: HypervisorConfig,
    agent: AgentConfig,
    runtime: RuntimeConfig,
    root_dir: PathBuf,
    image_cache: PathBuf,
    network_namespace: Option<PathBuf>,
    cgroups_path: Option<String>,
    vfio_devices: Vec<PathBuf>,
    hostname: Option<String>,
    workload: Option<crate::WorkloadSize>,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SandboxBuilder {
    /// Kata's defaults for the default VMM (`kata_hypervisor::kvm::default_hypervisor`: the
    /// built-in VMM where it is built and KVM passes its probe, else QEMU), with the agent given
    /// [`DEFAULT_AGENT_TIMEOUT`] to answer.
    pub fn new() -> Self {
        let agent = AgentConfig {
            dial_timeout: Some(DEFAULT_AGENT_TIMEOUT.as_secs() as u32),
            ..AgentConfig::default()
        };
        // The built-in VMM where this build has it and KVM passes its probe, else QEMU.
        let default_vmm = kata_hypervisor::kvm::default_hypervisor().kind;
        SandboxBuilder {
            id: None,
            hypervisor_type: default_vmm,
            hypervisor: kata_hypervisor::kvm::DefaultHypervisor::section(default_vmm),
            agent,
            runtime: RuntimeConfig::default(),
            root_dir: PathBuf::from(DEFAULT_ROOT_DIR),
            image_cache: kata_hypervisor::config::cache_dir().join("images"),
            network_namespace: None,
            cgroups_path: None,
            vfio_devices: Vec::new(),
            hostname: None,
            workload: None,
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
        // Only a VM needs the hypervisor section's binaries and images on this host.
        let vm = matches!(
            RuntimeHandlerKind::from_runtime_name(&loaded.config.runtime.name),
            Ok(RuntimeHandlerKind::VirtContainer)
        );
        if let Some(e) = loaded.check_host_paths().into_iter().next().filter(|_| vm) {
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
    /// `[hypervisor.*]` section, `[agent.kata]` (when the configuration has that table; the
    /// builder's agent timeout otherwise) and `[runtime]`.
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
        RuntimeHandlerKind::from_runtime_name(&config.runtime.name)
            .map_err(|e| err(format!("[runtime] {e}")))?;
        let mut b = Self::new();
        b.hypervisor_type = kind;
        b.hypervisor = hv.clone();
        config.factory.apply_to(&mut b.hypervisor);
        if !config.agent.is_empty() {
            b.agent = config.active_agent();
        }
        b.runtime = config.runtime.clone();
        Ok(b)
    }

    /// Whether [`id`](Self::id) was set (a pool's template must leave it to the pool).
    pub(crate) fn has_id(&self) -> bool {
        self.id.is_some()
    }

    /// Sets the sandbox id (default: random).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Chooses the VMM; its `[hypervisor.*]` section keeps the values set so far (a section
    /// still at the previous VMM's defaults takes the new VMM's).
    pub fn hypervisor(mut self, kind: HypervisorType) -> Self {
        // A section still at the previous VMM's defaults takes the new one's.
        use kata_hypervisor::kvm::DefaultHypervisor;
        if self.hypervisor == DefaultHypervisor::section(self.hypervisor_type) {
            self.hypervisor = DefaultHypervisor::section(kind);
        }
        self.hypervisor_type = kind;
        self
    }

    /// vCPUs at boot (`default_vcpus`).
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.hypervisor.default_vcpus = vcpus;
        self
    }

    /// Upper bound for vCPUs (`default_maxvcpus`).
    pub fn max_vcpus(mut self, vcpus: u32) -> Self {
        self.hypervisor.default_maxvcpus = vcpus;
        self
    }

    /// Guest memory in MiB (`default_memory`).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.hypervisor.default_memory = mib;
        self
    }

    /// Guest kernel (default: the guest manifest's, from `make guest`).
    pub fn kernel(mut self, path: impl AsRef<Path>) -> Self {
        self.hypervisor.kernel = path.as_ref().display().to_string();
        self
    }

    /// Guest initramfs (default: the guest manifest's).
    pub fn initrd(mut self, path: impl AsRef<Path>) -> Self {
        self.hypervisor.initrd = path.as_ref().display().to_string();
        self
    }

    /// Extra kernel parameters (appended to `kernel_params`).
    pub fn kernel_params(mut self, params: &str) -> Self {
        if !self.hypervisor.kernel_params.is_empty() {
            self.hypervisor.kernel_params.push(' ');
        }
        self.hypervisor.kernel_params.push_str(params);
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

    /// Joins the VM to the pod's network namespace at `path` (CNI's `/run/netns/<name>`, an
    /// absolute path; see [`SandboxConfig::network_namespace`]). Needs root, iproute2's `ip`
    /// and `tc`, and a backend with a VM: the test backend refuses it. A path that does not
    /// exist fails the start naming it, and leaves nothing.
    ///
    /// ```
    /// let config = kata_sandbox::Sandbox::builder()
    ///     .network_namespace("/run/netns/cni-1234")
    ///     .finish()?;
    /// assert_eq!(config.network_namespace.as_deref(), Some("/run/netns/cni-1234".as_ref()));
    /// # Ok::<(), kata_sandbox::Error>(())
    /// ```
    pub fn network_namespace(mut self, path: impl AsRef<Path>) -> Self {
        self.network_namespace = Some(path.as_ref().to_path_buf());
        self
    }

    /// Puts the VM in the host cgroup `path` names: the sandbox spec's `linux.cgroupsPath`
    /// (see [`SandboxConfig::cgroups_path`]). A path with `..` or that leaves the cgroup
    /// hierarchy fails the start naming `linux.cgroupsPath`, and leaves nothing.
    ///
    /// ```
    /// let config = kata_sandbox::Sandbox::builder()
    ///     .cgroups_path("/kubepods/burstable/pod1/sb-1")
    ///     .finish()?;
    /// assert_eq!(config.cgroups_path.as_deref(), Some("/kubepods/burstable/pod1/sb-1"));
    /// # Ok::<(), kata_sandbox::Error>(())
    /// ```
    pub fn cgroups_path(mut self, path: impl Into<String>) -> Self {
        self.cgroups_path = Some(path.into());
        self
    }

    /// A VFIO device the sandbox is created with (see [`SandboxConfig::vfio_devices`]):
    /// `/dev/vfio/<group>` or `/dev/vfio/devices/vfio<N>`.
    ///
    /// ```
    /// let config = kata_sandbox::Sandbox::builder().vfio_device("/dev/vfio/2").finish()?;
    /// assert_eq!(config.vfio_devices, [std::path::PathBuf::from("/dev/vfio/2")]);
    /// # Ok::<(), kata_sandbox::Error>(())
    /// ```
    pub fn vfio_device(mut self, path: impl AsRef<Path>) -> Self {
        self.vfio_devices.push(path.as_ref().to_path_buf());
        self
    }

    /// The pod's hostname (see [`SandboxConfig::hostname`]): the sandbox spec's `hostname`.
    /// Empty is none; one longer than 64 bytes fails [`finish`](Self::finish) naming
    /// `hostname`.
    ///
    /// ```
    /// let config = kata_sandbox::Sandbox::builder().hostname("web-0").finish()?;
    /// assert_eq!(config.hostname.as_deref(), Some("web-0"));
    /// # Ok::<(), kata_sandbox::Error>(())
    /// ```
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into()).filter(|h: &String| !h.is_empty());
        self
    }

    /// The workload the sandbox starts for ([`crate::WorkloadSize::of_spec`]). With
    /// `static_sandbox_resource_mgmt = true` the VM is sized for it before boot
    /// (`default_vcpus` and `default_memory` grow by it) and never hot-plugged; otherwise it
    /// is not used (the VM grows as containers come).
    pub fn workload(mut self, workload: crate::WorkloadSize) -> Self {
        self.workload = Some(workload);
        self
    }

    /// The runtime handler that runs the containers (`[runtime] name`; default
    /// `virt_container`). A handler this build lacks fails [`finish`](Self::finish) naming the
    /// cargo feature that brings it.
    ///
    /// ```
    /// use kata_sandbox::{RuntimeHandlerKind, Sandbox};
    ///
    /// let built = Sandbox::builder()
    ///     .runtime_handler(RuntimeHandlerKind::WasmContainer)
    ///     .finish();
    /// match built {
    ///     Ok(config) => assert_eq!(config.handler, RuntimeHandlerKind::WasmContainer),
    ///     Err(e) => assert!(e.to_string().contains("feature `wasm`"), "{e}"),
    /// }
    /// # Ok::<(), kata_sandbox::Error>(())
    /// ```
    pub fn runtime_handler(mut self, kind: RuntimeHandlerKind) -> Self {
        self.runtime.name = kind.as_str().to_string();
        self
    }

    /// Sets `[runtime] static_sandbox_resource_mgmt`: `true` sizes the VM before boot for the
    /// [`workload`](Self::workload) (added to `default_vcpus` and `default_memory`) and never
    /// hot-plugs vCPUs or memory; `false` (the default) grows the VM as containers with limits
    /// come. A confidential guest needs `true`.
    pub fn static_resources(mut self, on: bool) -> Self {
        self.runtime.static_sandbox_resource_mgmt = on;
        self
    }

    /// Sets `[runtime] sandbox_cgroup_only`: `true` runs the VMM and its helpers in the
    /// sandbox's host cgroup; `false` (Kata's default) only its vCPUs, the rest in an
    /// unconstrained overhead cgroup (see `kata_resource::cgroups`).
    pub fn sandbox_cgroup_only(mut self, only: bool) -> Self {
        self.runtime.sandbox_cgroup_only = only;
        self
    }

    /// How long to wait for the guest agent after the VM starts (default
    /// [`DEFAULT_AGENT_TIMEOUT`]), rounded up to whole seconds (`[agent.kata] dial_timeout`).
    pub fn agent_timeout(mut self, timeout: Duration) -> Self {
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        self.agent.dial_timeout = Some(secs.min(u64::from(u32::MAX)) as u32);
        self
    }

    /// Offers a debug console, a root shell in the guest reached with
    /// [`Sandbox::debug_console`] (`[agent.kata] debug_console_enabled`; default off).
    pub fn debug_console(mut self, enabled: bool) -> Self {
        self.agent.debug_console_enabled = enabled;
        self
    }

    /// The guest agent logs at debug level (`[agent.kata] enable_debug`; default off). Its
    /// lines reach the host's trace as target `kata_agent`.
    pub fn agent_debug(mut self, enabled: bool) -> Self {
        self.agent.debug = enabled;
        self
    }

    /// Exports the sandbox's spans over OTLP/HTTP to `endpoint` (`[runtime] enable_tracing`
    /// and `jaeger_endpoint`; `None`: the `OTEL_EXPORTER_OTLP_*` variables, else
    /// `http://localhost:4318/v1/traces`). Needs the cargo feature `otel`; see
    /// [`crate::telemetry`].
    pub fn tracing(mut self, endpoint: Option<&str>) -> Self {
        self.runtime.enable_tracing = true;
        self.runtime.jaeger_endpoint = endpoint.unwrap_or_default().to_string();
        self
    }

    /// Replaces the whole `[hypervisor.*]` section.
    pub fn hypervisor_config(mut self, config: HypervisorConfig) -> Self {
        self.hypervisor = config;
        self
    }

    /// The `[hypervisor.*]` section as set so far.
    pub fn config(&self) -> &HypervisorConfig {
        &self.hypervisor
    }

    /// The backend chosen so far (the configuration's `[hypervisor.*]` section, or the
    /// default hypervisor).
    pub fn hypervisor_type(&self) -> HypervisorType {
        self.hypervisor_type
    }

    /// Checks every value and returns the configuration a sandbox starts from; nothing is
    /// started or created. Errors name the key (Kata's name), the value and what is allowed.
    pub fn finish(mut self) -> Result<SandboxConfig> {
        if self.runtime.static_sandbox_resource_mgmt {
            if let Some(w) = self.workload.take() {
                w.apply(&mut self.hypervisor);
            }
        }
        let id = self.id.unwrap_or_else(crate::sandbox::random_id);
        kata_resource::validate_container_id(&id)
            .map_err(|e| Error::invalid("id", e.to_string()))?;
        let handler = RuntimeHandlerKind::from_runtime_name(&self.runtime.name)?;
        self.hypervisor.validate_for(self.hypervisor_type)?;
        crate::config::FactoryConfig::default()
            .check_backend(self.hypervisor_type, &self.hypervisor)
            .map_err(|e| Error::invalid("factory.enable_template", e.to_string()))?;
        self.agent.validate().map_err(|e| {
            Error::invalid(
                format!("agent.kata.{}", e.key),
                format!("{} ({})", e.value, e.reason),
            )
        })?;
        // enable_tracing: refused without the feature `otel`, its endpoint checked with it.
        crate::telemetry::check(&self.runtime)?;
        let caps = kata_hypervisor::backend::capabilities(self.hypervisor_type, &self.hypervisor)?;
        if !caps.supports_shared_fs(self.hypervisor.shared_fs) {
            return Err(Error::invalid(
                "shared_fs",
                format!(
                    "\"{}\" is not supported by the {} backend of this build",
                    self.hypervisor.shared_fs, self.hypervisor_type
                ),
            ));
        }
        if let Some(ns) = &self.network_namespace {
            if !ns.is_absolute() {
                return Err(Error::invalid(
                    "network_namespace",
                    format!(
                        "{} is not an absolute path (the pod's network namespace, such as \
                         /run/netns/<name>)",
                        ns.display()
                    ),
                ));
            }
            // Without a VM there is no NIC to give the pod's interfaces to: refused rather
            // than a sandbox that silently has no network.
            if caps.guest_on_host && self.runtime.internetworking_model != "none" {
                return Err(Error::invalid(
                    "network_namespace",
                    format!(
                        "{}: the {} backend runs the agent on this host, with no VM to give \
                         the pod's network to; use a backend with a VM, or \
                         internetworking_model = \"none\" to start without network",
                        ns.display(),
                        self.hypervisor_type
                    ),
                ));
            }
        }
        if let Some(h) = &self.hostname {
            if h.len() > 64 || h.contains('\0') {
                return Err(Error::invalid(
                    "hostname",
                    format!(
                        "{h:?} is not a hostname the guest can take (at most 64 bytes, no NUL)"
                    ),
                ));
            }
        }
        Ok(SandboxConfig {
            id,
            handler,
            hypervisor_type: self.hypervisor_type,
            hypervisor: self.hypervisor,
            agent: self.agent,
            runtime: self.runtime,
            root_dir: self.root_dir,
            image_cache: self.image_cache,
            network_namespace: self.network_namespace,
            cgroups_path: self.cgroups_path,
            vfio_devices: self.vfio_devices,
            hostname: self.hostname,
        })
    }

    /// Checks the values ([`finish`](Self::finish) without keeping the result).
    pub fn validate(&self) -> Result<()> {
        self.clone().finish().map(|_| ())
    }

    /// Starts the sandbox (for `virt_container`: boots the VM and waits for its agent).
    pub async fn build(self) -> Result<Sandbox> {
        let t = std::time::Instant::now();
        let config = self.finish()?;
        crate::boot_timings::with_validation(t.elapsed(), Sandbox::start(config)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_resource::network::InternetworkingModel;

    #[test]
    fn the_default_vmm_follows_the_probe_and_a_chosen_vmm_gets_its_own_defaults() {
        use kata_hypervisor::config::SharedFs;
        let b = SandboxBuilder::new();
        assert_eq!(
            b.hypervisor_type,
            kata_hypervisor::kvm::default_hypervisor().kind
        );
        // An untouched section follows the VMM chosen: the built-in VMM's own share.
        let b = b.hypervisor(HypervisorType::Dragonball);
        assert_eq!(b.config().shared_fs, SharedFs::InlineVirtioFs);
        let b = b.hypervisor(HypervisorType::Qemu);
        assert_eq!(b.config(), &HypervisorConfig::default());
        // A section set by the caller keeps what was set.
        let b = SandboxBuilder::new()
            .hypervisor(HypervisorType::Qemu)
            .vcpus(2)
            .hypervisor(HypervisorType::Dragonball);
        assert_eq!(
            (b.config().default_vcpus, b.config().shared_fs),
            (2, SharedFs::VirtioFs)
        );
    }

    #[test]
    fn vfio_mode_takes_effect_and_is_not_listed_as_inert() {
        let mut b = SandboxBuilder::new();
        b.runtime.vfio_mode = "vfio".into();
        let inert = b.finish().unwrap().inert_settings();
        assert!(!inert.iter().any(|s| s.contains("vfio_mode")), "{inert:?}");
    }

    #[test]
    fn the_network_settings_take_effect_and_are_not_listed_as_inert() {
        let mut b = SandboxBuilder::new().network_namespace("/run/netns/pod");
        b.runtime.internetworking_model = "none".into();
        b.runtime.disable_new_netns = true;
        b.hypervisor.network_queues = 2;
        let config = b.finish().unwrap();
        let inert = config.inert_settings();
        assert!(
            !inert
                .iter()
                .any(|s| s.contains("internetworking_model") || s.contains("disable_new_netns")),
            "{inert:?}"
        );
        let net = config.network_config().unwrap();
        assert_eq!(
            net,
            NetworkConfig {
                netns_path: Some("/run/netns/pod".into()),
                model: InternetworkingModel::None,
                queues: 2,
                disable_new_netns: true,
            }
        );
        let config = SandboxBuilder::new().finish().unwrap();
        assert_eq!(config.network_namespace, None);
        let net = config.network_config().unwrap();
        assert_eq!(
            (net.netns_path, net.model),
            (None, InternetworkingModel::TcFilter)
        );
    }

    #[test]
    fn the_network_namespace_is_kept_in_the_state_and_older_states_read_without_it() {
        let config = SandboxBuilder::new()
            .id("net")
            .network_namespace("/run/netns/pod")
            .finish()
            .unwrap();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["network_namespace"], "/run/netns/pod");
        let back: SandboxConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, config);
        let mut older = json;
        older.as_object_mut().unwrap().remove("network_namespace");
        let back: SandboxConfig = serde_json::from_value(older).unwrap();
        assert_eq!(back.network_namespace, None);
    }

    #[test]
    fn a_relative_network_namespace_is_refused_naming_the_field() {
        let e = SandboxBuilder::new()
            .network_namespace("run/netns/pod")
            .finish()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("network_namespace") && e.contains("run/netns/pod"),
            "{e}"
        );
    }

    #[test]
    fn the_handler_comes_from_the_builder_or_the_configuration_and_only_a_vm_needs_its_files() {
        let config = SandboxBuilder::new()
            .runtime_handler(RuntimeHandlerKind::WasmContainer)
            .finish()
            .unwrap();
        assert_eq!(config.handler, RuntimeHandlerKind::WasmContainer);
        assert_eq!(config.runtime.name, "wasm_container");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("configuration.toml");
        let toml = |name: &str| {
            format!(
                "[hypervisor.qemu]\nkernel = \"/nonexistent/vmlinux\"\n\n[runtime]\nname = \"{name}\"\n"
            )
        };
        std::fs::write(&file, toml("wasm_container")).unwrap();
        let config = SandboxBuilder::from_config_file(&file)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(config.handler, RuntimeHandlerKind::WasmContainer);
        std::fs::write(&file, toml("virt_container")).unwrap();
        let e = SandboxBuilder::from_config_file(&file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/vmlinux"), "{e}");
    }

    #[test]
    fn the_test_backend_refuses_a_network_it_cannot_give_a_guest() {
        let e = SandboxBuilder::new()
            .hypervisor(HypervisorType::HostAgent)
            .network_namespace("/run/netns/pod")
            .finish()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("network_namespace") && e.contains("/run/netns/pod") && e.contains("no VM"),
            "{e}"
        );
        // Without a network model the namespace is not looked at: nothing to refuse.
        let mut b = SandboxBuilder::new()
            .hypervisor(HypervisorType::HostAgent)
            .network_namespace("/run/netns/pod");
        b.runtime.internetworking_model = "none".into();
        b.finish().unwrap();
    }
}
