//! The `[runtime]` table: which hypervisor and agent sections to use, networking, cgroups,
//! sizing and the runtime's own debugging.

use serde::{Deserialize, Serialize};

use super::ConfigIssue;

/// Runtime handlers Kata knows (`name`).
const RUNTIME_NAMES: &[&str] = &["virt_container", "linux_container", "wasm_container"];

/// Network models Kata knows (`internetworking_model`).
const NETWORK_MODELS: &[&str] = &["tcfilter", "macvtap", "none", "l3forwarding"];

/// Kata's default directory of directly attachable network configs (`dan_conf`).
pub const DEFAULT_DAN_CONF: &str = "/run/kata-containers/dans";

/// Kata's default vsock port of the fd-passthrough I/O listener.
pub const DEFAULT_PASSFD_LISTENER_PORT: u32 = 1027;

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Runtime handler: `virt_container` (default), `linux_container`, `wasm_container`.
    pub name: String,
    /// Which `[hypervisor.*]` table to use; empty means the only one.
    pub hypervisor_name: String,
    /// Which `[agent.*]` table to use. Default `kata`.
    pub agent_name: String,
    /// Log at debug level on the host. Default false.
    pub enable_debug: bool,
    /// Host log level: `trace`, `debug`, `info` (default), `warn`, `error`, `critical`.
    pub log_level: String,
    /// Experimental features to turn on (e.g. `force_guest_pull`). Default none.
    pub experimental: Vec<String>,
    /// How the VM joins the pod network: `tcfilter` (default), `macvtap`, `none`,
    /// `l3forwarding` (experimental, IPv4 only).
    pub internetworking_model: String,
    /// Keep the VMM in the host network namespace (needs `internetworking_model = "none"`).
    /// Default false.
    pub disable_new_netns: bool,
    /// Host paths bind-mounted read-only into the sandbox's shared directory (`path[:ro|:rw]`).
    pub sandbox_bind_mounts: Vec<String>,
    /// Put every sandbox process in one cgroup and create no per-container host cgroups.
    /// Default false.
    pub sandbox_cgroup_only: bool,
    /// Pin each vCPU thread to one host CPU when their numbers match. Default false.
    pub enable_vcpus_pinning: bool,
    /// Emit OpenTelemetry traces. Default false.
    pub enable_tracing: bool,
    /// Jaeger collector URL. Empty: `http://localhost:14268/api/traces`.
    pub jaeger_endpoint: String,
    /// Jaeger user, for basic auth.
    pub jaeger_user: String,
    /// Jaeger password, for basic auth.
    pub jaeger_password: String,
    /// Serve pprof-style profiling through kata-monitor. Default false.
    pub enable_pprof: bool,
    /// Size the VM from the pod's resources before boot and never resize it. Default false.
    pub static_sandbox_resource_mgmt: bool,
    /// Do not apply container seccomp profiles in the guest. Default false: kata-rs's agent
    /// applies the spec's profile as runc does (a deliberate deviation from Kata, whose
    /// default is true).
    pub disable_guest_seccomp: bool,
    /// How emptyDir volumes are provided: `shared-fs` (default), `block-encrypted`,
    /// `block-plain`.
    pub emptydir_mode: String,
    /// Create emptyDir volumes on the host and share them (the Go runtime's switch). Default
    /// false.
    pub disable_guest_empty_dir: bool,
    /// How VFIO devices appear in containers: `guest-kernel` (default: as the guest driver
    /// exposes them) or `vfio` (as `/dev/vfio/<group>`, like runc).
    pub vfio_mode: String,
    /// Keep a failed sandbox for debugging: no cleanup, no exit on failed health checks.
    /// Default false.
    pub keep_abnormal: bool,
    /// Directory of directly attachable network configs. Default `/run/kata-containers/dans`.
    pub dan_conf: String,
    /// Mounts shared between containers of the pod (`[[runtime.shared_mounts]]`).
    pub shared_mounts: Vec<SharedMount>,
    /// Pass the container's stdio file descriptors to the VMM instead of copying. Default
    /// false.
    pub use_passfd_io: bool,
    /// vsock port of the fd-passthrough listener. Default 1027.
    pub passfd_listener_port: u32,
    /// Kubelet PodResources socket, for cold-plugging devices the kubelet assigned. Empty: off.
    pub pod_resource_api_sock: String,
    /// SELinux label for container processes in the guest (`user:role:type`). Empty: the
    /// default `container_t`.
    pub guest_selinux_label: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            name: "virt_container".into(),
            hypervisor_name: String::new(),
            agent_name: "kata".into(),
            enable_debug: false,
            log_level: "info".into(),
            experimental: Vec::new(),
            internetworking_model: "tcfilter".into(),
            disable_new_netns: false,
            sandbox_bind_mounts: Vec::new(),
            sandbox_cgroup_only: false,
            enable_vcpus_pinning: false,
            enable_tracing: false,
            jaeger_endpoint: String::new(),
            jaeger_user: String::new(),
            jaeger_password: String::new(),
            enable_pprof: false,
            static_sandbox_resource_mgmt: false,
            disable_guest_seccomp: false,
            emptydir_mode: "shared-fs".into(),
            disable_guest_empty_dir: false,
            vfio_mode: "guest-kernel".into(),
            keep_abnormal: false,
            dan_conf: DEFAULT_DAN_CONF.into(),
            shared_mounts: Vec::new(),
            use_passfd_io: false,
            passfd_listener_port: DEFAULT_PASSFD_LISTENER_PORT,
            pod_resource_api_sock: String::new(),
            guest_selinux_label: String::new(),
        }
    }
}

/// `[[runtime.shared_mounts]]`: a directory of one container mounted into another.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedMount {
    /// Names the pair of mount points.
    pub name: String,
    /// The container the directory comes from.
    pub src_ctr: String,
    /// The directory in the source container (absolute, no `..`).
    pub src_path: String,
    /// The container it is mounted into.
    pub dst_ctr: String,
    /// Where it is mounted in the destination container (absolute, no `..`).
    pub dst_path: String,
}

/// The host path of a `sandbox_bind_mounts` entry (without its `:ro`/`:rw` suffix).
pub(crate) fn bind_mount_path(entry: &str) -> &str {
    entry
        .strip_suffix(":ro")
        .or_else(|| entry.strip_suffix(":rw"))
        .unwrap_or(entry)
}

fn issue(key: &str, message: String) -> ConfigIssue {
    ConfigIssue::new("runtime", key, message)
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigIssue> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(issue(
            key,
            format!("{key} = \"{value}\": allowed: {}", allowed.join(", ")),
        ))
    }
}

impl RuntimeConfig {
    /// Kata's load-time rules: empty enum keys take their defaults.
    pub fn adjust(&mut self) {
        let fill = |field: &mut String, default: &str| {
            if field.trim().is_empty() {
                *field = default.to_string();
            }
        };
        fill(&mut self.name, "virt_container");
        fill(&mut self.agent_name, "kata");
        fill(&mut self.log_level, "info");
        fill(&mut self.internetworking_model, "tcfilter");
        fill(&mut self.emptydir_mode, "shared-fs");
        fill(&mut self.vfio_mode, "guest-kernel");
        fill(&mut self.dan_conf, DEFAULT_DAN_CONF);
        if self.passfd_listener_port == 0 {
            self.passfd_listener_port = DEFAULT_PASSFD_LISTENER_PORT;
        }
    }

    /// Checks enum values and the combinations Kata documents.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        one_of("name", &self.name, RUNTIME_NAMES)?;
        one_of(
            "log_level",
            &self.log_level,
            kata_hypervisor::config::LOG_LEVELS,
        )?;
        one_of(
            "internetworking_model",
            &self.internetworking_model,
            NETWORK_MODELS,
        )?;
        one_of("vfio_mode", &self.vfio_mode, &["guest-kernel", "vfio"])?;
        one_of(
            "emptydir_mode",
            &self.emptydir_mode,
            &["shared-fs", "block-encrypted", "block-plain"],
        )?;
        if self.disable_new_netns && self.internetworking_model != "none" {
            return Err(issue(
                "disable_new_netns",
                format!(
                    "disable_new_netns = true works only with internetworking_model = \"none\" (it is \"{}\")",
                    self.internetworking_model
                ),
            ));
        }
        for bind in &self.sandbox_bind_mounts {
            let path = bind_mount_path(bind);
            if !path.starts_with('/') {
                return Err(issue(
                    "sandbox_bind_mounts",
                    format!("sandbox_bind_mounts: \"{bind}\" is not an absolute host path"),
                ));
            }
        }
        static MOUNT_PATH: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let re = MOUNT_PATH.get_or_init(|| {
            regex::Regex::new(r"^(/[-\w.]+)+/?$").expect("a valid regular expression")
        });
        let path_ok = |p: &str| re.is_match(p) && !p.split('/').any(|part| part == "..");
        for m in &self.shared_mounts {
            for (field, value) in [
                ("name", &m.name),
                ("src_ctr", &m.src_ctr),
                ("src_path", &m.src_path),
                ("dst_ctr", &m.dst_ctr),
                ("dst_path", &m.dst_path),
            ] {
                if value.is_empty() {
                    return Err(issue(
                        "shared_mounts",
                        format!("shared_mounts `{}`: {field} is required", m.name),
                    ));
                }
            }
            for (field, value) in [("src_path", &m.src_path), ("dst_path", &m.dst_path)] {
                if !path_ok(value) {
                    return Err(issue(
                        "shared_mounts",
                        format!(
                            "shared_mounts `{}`: {field} = \"{value}\": an absolute path of letters, digits, -, _ and ., without `..`",
                            m.name
                        ),
                    ));
                }
            }
        }
        if self.passfd_listener_port == 0 && self.use_passfd_io {
            return Err(issue(
                "passfd_listener_port",
                "passfd_listener_port = 0: a vsock port is needed when use_passfd_io = true".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_katas_but_guest_seccomp() {
        let r = RuntimeConfig::default();
        assert_eq!(r.internetworking_model, "tcfilter");
        assert!(
            !r.disable_guest_seccomp,
            "kata-rs applies seccomp in the guest by default (Kata does not)"
        );
        assert_eq!(r.vfio_mode, "guest-kernel");
        r.validate().unwrap();
    }

    #[test]
    fn enums_and_combinations() {
        let r = RuntimeConfig {
            internetworking_model: "bridged".into(),
            ..Default::default()
        };
        let e = r.validate().unwrap_err().to_string();
        assert!(
            e.contains("internetworking_model") && e.contains("tcfilter"),
            "{e}"
        );
        let r = RuntimeConfig {
            disable_new_netns: true,
            ..Default::default()
        };
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("internetworking_model = \"none\""));
        let r = RuntimeConfig {
            vfio_mode: "guest_kernel".into(),
            ..Default::default()
        };
        assert!(r.validate().is_err());
    }

    #[test]
    fn shared_mount_paths() {
        let good = SharedMount {
            name: "m".into(),
            src_ctr: "a".into(),
            src_path: "/mnt/storage".into(),
            dst_ctr: "b".into(),
            dst_path: "/mnt/storage/".into(),
        };
        let r = RuntimeConfig {
            shared_mounts: vec![good.clone()],
            ..Default::default()
        };
        r.validate().unwrap();
        for bad in ["/../mnt", "mnt/x", "/mnt/x|ls", "/mnt//x"] {
            let r = RuntimeConfig {
                shared_mounts: vec![SharedMount {
                    src_path: bad.into(),
                    ..good.clone()
                }],
                ..Default::default()
            };
            assert!(r.validate().is_err(), "{bad}");
        }
    }
}
