//! The `[agent.kata]` section of Kata's configuration file.
//!
//! Keys and defaults mirror Kata's runtime-rs (`enable_debug`,
//! `dial_timeout_ms`, `reconnect_timeout_ms`, `request_timeout_ms`,
//! `create_container_timeout`, `[agent.kata.mem_agent]`, ...). The Go
//! runtime's `dial_timeout` (seconds) is accepted too, because Kata's shipped
//! `configuration-*.toml` files still set it (to 45). The file loader lives in
//! kata-sandbox; this crate owns the section's shape, defaults and validation
//! ([`AgentConfig::validate`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::DEFAULT_AGENT_VSOCK_PORT;
use crate::api::KernelModule;
use crate::connect::ConnectOptions;

/// Kata's default port of the agent's log stream on vsock.
pub const DEFAULT_AGENT_LOG_PORT: u32 = 1025;

/// Kata's default deadline of `CreateContainer`, in seconds.
pub const DEFAULT_CREATE_CONTAINER_TIMEOUT_SECS: u64 = 30;

/// The agent section names Kata knows (`[agent.kata]`).
pub const AGENT_SECTION_NAMES: &[&str] = &["kata"];

/// `[agent.kata]`: how the runtime talks to the guest agent.
///
/// ```
/// use std::time::Duration;
/// use kata_agent_client::config::AgentConfig;
///
/// let cfg: AgentConfig = serde_json::from_str(r#"{ "dial_timeout": 45 }"#).unwrap();
/// assert_eq!(cfg.connect_options().dial_timeout, Duration::from_secs(45));
/// assert_eq!(cfg.server_port, 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// The agent logs debug messages.
    #[serde(rename = "enable_debug")]
    pub debug: bool,
    /// The agent emits trace spans.
    pub enable_tracing: bool,
    /// The guest offers a debug console.
    pub debug_console_enabled: bool,
    /// vsock port the agent's ttRPC server listens on.
    pub server_port: u32,
    /// vsock port of the agent's log stream.
    pub log_port: u32,
    /// runtime-rs: time of one dial attempt, in ms. kata-rs waits this long
    /// between two attempts (at least 10 ms).
    pub dial_timeout_ms: u32,
    /// runtime-rs: how long to keep dialing in total, in ms.
    pub reconnect_timeout_ms: u32,
    /// The deadline of an ordinary agent call, in ms.
    pub request_timeout_ms: u32,
    /// The deadline of a health check, in ms.
    pub health_check_request_timeout_ms: u32,
    /// The Go runtime's total dial time, in seconds. When set it is used
    /// instead of `reconnect_timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<u32>,
    /// Guest kernel modules to load: `"name param=value param2=value"`.
    pub kernel_modules: Vec<String>,
    /// Size of the container stdio pipes in the guest (0: the kernel default).
    pub container_pipe_size: u32,
    /// The deadline of `CreateContainer`, in seconds (the effective one is the smaller of this
    /// and the caller's own deadline). Default 30.
    pub create_container_timeout: u64,
    /// The deadline of calls to the guest's Confidential Data Hub, in ms. Default 50000.
    pub cdh_api_timeout_ms: u32,
    /// `[agent.kata.mem_agent]`: the guest memory agent.
    pub mem_agent: MemAgentConfig,
}

/// `[agent.kata.mem_agent]`: the guest memory agent (memcg aging and eviction, compaction).
///
/// Every key is optional: an absent key leaves the guest agent's own default, which is the
/// value named in each key's description.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemAgentConfig {
    /// Run the memory agent. Default false.
    pub mem_agent_enable: bool,
    /// Turn off memcg aging and eviction. Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_disable: Option<bool>,
    /// Allow swapping during eviction. Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_swap: Option<bool>,
    /// Highest swappiness the agent sets, 0..=200. Default 50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_swappiness_max: Option<u8>,
    /// Seconds between memcg passes. Default 600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_period_secs: Option<u64>,
    /// PSI stall percentage over a period above which a cgroup is skipped, 0..=100. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_period_psi_percent_limit: Option<u8>,
    /// PSI stall percentage during eviction above which it stops, 0..=100. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_eviction_psi_percent_limit: Option<u8>,
    /// Aging passes before a cgroup is evicted. Default 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_eviction_run_aging_count_min: Option<u64>,
    /// Turn off compaction. Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_disable: Option<bool>,
    /// Seconds between compaction passes. Default 600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_period_secs: Option<u64>,
    /// PSI stall percentage over a period above which compaction is skipped, 0..=100. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_period_psi_percent_limit: Option<u8>,
    /// PSI stall percentage during compaction above which it stops, 0..=100. Default 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_psi_percent_limit: Option<u8>,
    /// Longest compaction, in seconds. Default 180.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_sec_max: Option<i64>,
    /// Page order compaction works on. Default 9.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_order: Option<u8>,
    /// Pages of change that trigger another compaction. Default 1024.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_threshold: Option<u64>,
    /// Passes without compaction after which one is forced; absent means never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_force_times: Option<u64>,
}

/// A value of `[agent.kata]` that is out of range, with what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAgentConfig {
    /// The key (`server_port`, `mem_agent.memcg_swappiness_max`, ...).
    pub key: &'static str,
    /// The offending value, as text.
    pub value: String,
    /// What is allowed.
    pub reason: String,
}

impl fmt::Display for InvalidAgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.reason)
    }
}

impl std::error::Error for InvalidAgentConfig {}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            debug: false,
            enable_tracing: false,
            debug_console_enabled: false,
            server_port: DEFAULT_AGENT_VSOCK_PORT,
            log_port: DEFAULT_AGENT_LOG_PORT,
            dial_timeout_ms: 10,
            reconnect_timeout_ms: 3_000,
            request_timeout_ms: 30_000,
            health_check_request_timeout_ms: 90_000,
            dial_timeout: None,
            kernel_modules: Vec::new(),
            container_pipe_size: 0,
            create_container_timeout: DEFAULT_CREATE_CONTAINER_TIMEOUT_SECS,
            cdh_api_timeout_ms: 50_000,
            mem_agent: MemAgentConfig::default(),
        }
    }
}

impl AgentConfig {
    /// Checks ranges: ports are distinct and non-zero, deadlines are non-zero, kernel module
    /// lines name a module, mem-agent percentages are at most 100.
    pub fn validate(&self) -> Result<(), InvalidAgentConfig> {
        let bad = |key: &'static str, value: String, reason: &str| InvalidAgentConfig {
            key,
            value,
            reason: reason.to_string(),
        };
        for (key, port) in [
            ("server_port", self.server_port),
            ("log_port", self.log_port),
        ] {
            if port == 0 {
                return Err(bad(key, "0".into(), "a vsock port, 1..=4294967295"));
            }
        }
        if self.log_port == crate::debug_console::DEFAULT_DEBUG_CONSOLE_PORT {
            return Err(bad(
                "log_port",
                self.log_port.to_string(),
                "must differ from the debug console's port, 1026",
            ));
        }
        if self.server_port == self.log_port {
            return Err(bad(
                "log_port",
                self.log_port.to_string(),
                "must differ from server_port",
            ));
        }
        for (key, ms) in [
            ("dial_timeout_ms", self.dial_timeout_ms),
            ("reconnect_timeout_ms", self.reconnect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            (
                "health_check_request_timeout_ms",
                self.health_check_request_timeout_ms,
            ),
        ] {
            if ms == 0 {
                return Err(bad(
                    key,
                    "0".into(),
                    "a deadline in milliseconds, at least 1",
                ));
            }
        }
        if self.dial_timeout == Some(0) {
            return Err(bad(
                "dial_timeout",
                "0".into(),
                "a deadline in seconds, at least 1",
            ));
        }
        if self.create_container_timeout == 0 {
            return Err(bad(
                "create_container_timeout",
                "0".into(),
                "a deadline in seconds, at least 1 (Kata's default is 30)",
            ));
        }
        for line in &self.kernel_modules {
            let name = line.split_whitespace().next().unwrap_or_default();
            if !line.trim().is_empty()
                && !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(
                    "kernel_modules",
                    format!("{line:?}"),
                    "each entry is a module name (letters, digits, _ and -) then its parameters",
                ));
            }
        }
        let m = &self.mem_agent;
        if let Some(v) = m.memcg_swappiness_max.filter(|v| *v > 200) {
            return Err(bad(
                "mem_agent.memcg_swappiness_max",
                v.to_string(),
                "a swappiness, 0..=200",
            ));
        }
        for (key, pct) in [
            (
                "mem_agent.memcg_period_psi_percent_limit",
                m.memcg_period_psi_percent_limit,
            ),
            (
                "mem_agent.memcg_eviction_psi_percent_limit",
                m.memcg_eviction_psi_percent_limit,
            ),
            (
                "mem_agent.compact_period_psi_percent_limit",
                m.compact_period_psi_percent_limit,
            ),
            (
                "mem_agent.compact_psi_percent_limit",
                m.compact_psi_percent_limit,
            ),
        ] {
            if let Some(p) = pct.filter(|p| *p > 100) {
                return Err(bad(key, p.to_string(), "a percentage, 0..=100"));
            }
        }
        Ok(())
    }

    /// The client options this section asks for.
    pub fn connect_options(&self) -> ConnectOptions {
        let total = match self.dial_timeout {
            Some(secs) => Duration::from_secs(u64::from(secs)),
            None => Duration::from_millis(u64::from(self.reconnect_timeout_ms)),
        };
        ConnectOptions {
            dial_timeout: total,
            request_timeout: Duration::from_millis(u64::from(self.request_timeout_ms)),
            retry_interval: Duration::from_millis(u64::from(self.dial_timeout_ms.max(10))),
        }
    }

    /// The deadline of a health check.
    pub fn health_check_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.health_check_request_timeout_ms))
    }

    /// The deadline of `CreateContainer`.
    pub fn create_container_timeout(&self) -> Duration {
        Duration::from_secs(self.create_container_timeout)
    }

    /// Settings of this section kata-rs parses but does not act on, each as
    /// `[agent.kata] key = value: why` (`mem_agent.<key>` for the memory agent's table). Only
    /// values other than Kata's defaults are listed; the sandbox logs them and `shim-ctl
    /// check` prints them.
    ///
    /// ```
    /// use kata_agent_client::config::AgentConfig;
    ///
    /// let cfg = AgentConfig { container_pipe_size: 65536, ..Default::default() };
    /// assert_eq!(
    ///     cfg.inert_settings(),
    ///     ["[agent.kata] container_pipe_size = 65536: container stdio is copied through the agent's own pipes"]
    /// );
    /// ```
    pub fn inert_settings(&self) -> Vec<String> {
        let ours = flat_values(self);
        let defaults = flat_values(&AgentConfig::default());
        let mut keys: Vec<&String> = ours.keys().chain(defaults.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| ours.get(*k) != defaults.get(*k))
            .filter_map(|k| {
                let why = setting_effect(k)??;
                let value = ours
                    .get(k)
                    .map_or_else(|| "(absent)".to_string(), ToString::to_string);
                Some(format!("[agent.kata] {k} = {value}: {why}"))
            })
            .collect()
    }

    /// The guest kernel parameters this section asks for, as Kata's agent reads them:
    /// `agent.log=debug` with `enable_debug`, `agent.log_vport=<log_port>` (the agent streams
    /// its log there and the sandbox reads it), and `agent.debug_console
    /// agent.debug_console_vport=1026` with `debug_console_enabled`.
    ///
    /// ```
    /// use kata_agent_client::config::AgentConfig;
    ///
    /// assert_eq!(AgentConfig::default().guest_kernel_params(), "agent.log_vport=1025");
    /// let cfg = AgentConfig { debug: true, debug_console_enabled: true, ..Default::default() };
    /// assert_eq!(
    ///     cfg.guest_kernel_params(),
    ///     "agent.log=debug agent.log_vport=1025 agent.debug_console agent.debug_console_vport=1026"
    /// );
    /// ```
    pub fn guest_kernel_params(&self) -> String {
        let mut params = Vec::new();
        if self.debug {
            params.push("agent.log=debug".to_string());
        }
        params.push(format!("agent.log_vport={}", self.log_port));
        if self.debug_console_enabled {
            params.push("agent.debug_console".to_string());
            params.push(format!(
                "agent.debug_console_vport={}",
                crate::debug_console::DEFAULT_DEBUG_CONSOLE_PORT
            ));
        }
        params.join(" ")
    }

    /// `kernel_modules` as [`SandboxSetup::kernel_modules`](crate::SandboxSetup::kernel_modules)
    /// takes them: the first word is the module, the rest its parameters. Blank entries are
    /// skipped.
    pub fn kernel_modules(&self) -> Vec<KernelModule> {
        self.kernel_modules
            .iter()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?;
                Some(KernelModule::new(name, words))
            })
            .collect()
    }
}

/// The keys of `section` with their values, the memory agent's as `mem_agent.<key>` (absent
/// optional keys are left out).
fn flat_values(section: &AgentConfig) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(section) {
        for (key, value) in map {
            match value {
                serde_json::Value::Object(table) => {
                    for (sub, v) in table {
                        out.insert(format!("{key}.{sub}"), v);
                    }
                }
                v => {
                    out.insert(key, v);
                }
            }
        }
    }
    out
}

const NO_MEM_AGENT: &str = "the guest memory agent is not implemented";

/// What kata-rs does with a key of `[agent.kata]`: `Some(None)` acts on it, `Some(Some(why))`
/// parses it without effect, `None` is a key this table does not know. There is no
/// catch-all: a key added to the section must be classified here (a unit test asks about
/// every key).
fn setting_effect(key: &str) -> Option<Option<&'static str>> {
    Some(match key {
        // How the runtime dials and calls the agent (`connect_options`, health checks).
        "dial_timeout_ms"
        | "reconnect_timeout_ms"
        | "request_timeout_ms"
        | "dial_timeout"
        | "health_check_request_timeout_ms" => None,
        // The guest's kernel parameters (`guest_kernel_params`): the agent's log level, its
        // log stream's port (read by the sandbox), its debug console.
        "enable_debug" | "debug_console_enabled" | "log_port" => None,
        "enable_tracing" => {
            Some("the guest agent exports no spans (the runtime's are: [runtime] enable_tracing)")
        }
        "server_port" => Some("the agent listens on vsock port 1024, which the VMM backend dials"),
        "kernel_modules" => Some("guest kernel modules are not loaded yet"),
        "container_pipe_size" => Some("container stdio is copied through the agent's own pipes"),
        "create_container_timeout" => {
            Some("CreateContainer has the deadline of every call, request_timeout_ms")
        }
        "cdh_api_timeout_ms" => Some("there is no Confidential Data Hub in the guest"),
        "mem_agent.mem_agent_enable"
        | "mem_agent.memcg_disable"
        | "mem_agent.memcg_swap"
        | "mem_agent.memcg_swappiness_max"
        | "mem_agent.memcg_period_secs"
        | "mem_agent.memcg_period_psi_percent_limit"
        | "mem_agent.memcg_eviction_psi_percent_limit"
        | "mem_agent.memcg_eviction_run_aging_count_min"
        | "mem_agent.compact_disable"
        | "mem_agent.compact_period_secs"
        | "mem_agent.compact_period_psi_percent_limit"
        | "mem_agent.compact_psi_percent_limit"
        | "mem_agent.compact_sec_max"
        | "mem_agent.compact_order"
        | "mem_agent.compact_threshold"
        | "mem_agent.compact_force_times" => Some(NO_MEM_AGENT),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the section, optional ones set: written without `..Default::default()`,
    /// so a field added later does not compile until it is given here, and then must be
    /// classified.
    fn every_key_set() -> AgentConfig {
        AgentConfig {
            debug: true,
            enable_tracing: true,
            debug_console_enabled: true,
            server_port: 1,
            log_port: 2,
            dial_timeout_ms: 3,
            reconnect_timeout_ms: 4,
            request_timeout_ms: 5,
            health_check_request_timeout_ms: 6,
            dial_timeout: Some(7),
            kernel_modules: vec!["m".into()],
            container_pipe_size: 8,
            create_container_timeout: 9,
            cdh_api_timeout_ms: 10,
            mem_agent: MemAgentConfig {
                mem_agent_enable: true,
                memcg_disable: Some(true),
                memcg_swap: Some(true),
                memcg_swappiness_max: Some(1),
                memcg_period_secs: Some(1),
                memcg_period_psi_percent_limit: Some(1),
                memcg_eviction_psi_percent_limit: Some(1),
                memcg_eviction_run_aging_count_min: Some(1),
                compact_disable: Some(true),
                compact_period_secs: Some(1),
                compact_period_psi_percent_limit: Some(1),
                compact_psi_percent_limit: Some(1),
                compact_sec_max: Some(1),
                compact_order: Some(1),
                compact_threshold: Some(1),
                compact_force_times: Some(1),
            },
        }
    }

    #[test]
    fn every_key_is_classified() {
        let keys = flat_values(&every_key_set());
        assert_eq!(keys.len(), 30, "{:?}", keys.keys());
        let unknown: Vec<&String> = keys
            .keys()
            .filter(|k| setting_effect(k).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "[agent.kata] keys nobody classified: {unknown:?}"
        );
    }

    #[test]
    fn inert_settings_list_non_default_values_without_effect() {
        assert!(AgentConfig::default().inert_settings().is_empty());
        let inert = every_key_set().inert_settings();
        assert!(
            inert.contains(
                &"[agent.kata] kernel_modules = [\"m\"]: guest kernel modules are not loaded yet"
                    .to_string()
            ),
            "{inert:?}"
        );
        assert!(
            inert
                .iter()
                .any(|l| l.starts_with("[agent.kata] mem_agent.compact_force_times = 1: ")),
            "{inert:?}"
        );
        for acted in ["dial_timeout", "request_timeout_ms", "reconnect_timeout_ms"] {
            assert!(
                !inert.iter().any(|l| l.contains(&format!(" {acted} = "))),
                "{acted}: {inert:?}"
            );
        }
        assert_eq!(inert.len(), 30 - 8);
    }

    #[test]
    fn debug_console_and_agent_debug_take_effect() {
        let cfg = AgentConfig {
            debug: true,
            debug_console_enabled: true,
            log_port: 2000,
            ..Default::default()
        };
        assert!(
            cfg.inert_settings().is_empty(),
            "{:?}",
            cfg.inert_settings()
        );
        let params = cfg.guest_kernel_params();
        for word in [
            "agent.log=debug",
            "agent.log_vport=2000",
            "agent.debug_console",
            "agent.debug_console_vport=1026",
        ] {
            assert!(params.split(' ').any(|w| w == word), "{word}: {params}");
        }
        let cfg = AgentConfig {
            log_port: 1026,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("debug console"));
    }

    #[test]
    fn defaults_match_kata_runtime_rs() {
        let cfg: AgentConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, AgentConfig::default());
        assert_eq!((cfg.server_port, cfg.log_port), (1024, 1025));
        let opts = cfg.connect_options();
        assert_eq!(opts.dial_timeout, Duration::from_millis(3_000));
        assert_eq!(opts.request_timeout, Duration::from_secs(30));
        assert_eq!(cfg.health_check_timeout(), Duration::from_secs(90));
        assert_eq!(cfg.create_container_timeout(), Duration::from_secs(30));
        assert_eq!(cfg.mem_agent.compact_force_times, None);
        cfg.validate().unwrap();
    }

    #[test]
    fn validation_names_the_key() {
        let cfg = AgentConfig {
            log_port: 1024,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("log_port"));
        let cfg = AgentConfig {
            request_timeout_ms: 0,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("request_timeout_ms"));
        let mut cfg = AgentConfig::default();
        cfg.mem_agent.compact_psi_percent_limit = Some(150);
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.key, "mem_agent.compact_psi_percent_limit");
        let cfg = AgentConfig {
            kernel_modules: vec!["bad;name x=1".into()],
            ..Default::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn keys_are_katas() {
        let cfg: AgentConfig = serde_json::from_str(
            r#"{ "enable_debug": true, "request_timeout_ms": 5000, "reconnect_timeout_ms": 60000,
                 "kernel_modules": ["e1000e InterruptThrottleRate=3000 EEE=1", "  ", "i915"],
                 "some_key_we_do_not_know": 1 }"#,
        )
        .unwrap();
        assert!(cfg.debug);
        assert_eq!(cfg.connect_options().dial_timeout, Duration::from_secs(60));
        assert_eq!(
            cfg.connect_options().request_timeout,
            Duration::from_secs(5)
        );
        let modules = cfg.kernel_modules();
        assert_eq!(modules.len(), 2);
        assert_eq!(modules[0].name, "e1000e");
        assert_eq!(
            modules[0].parameters,
            ["InterruptThrottleRate=3000", "EEE=1"]
        );
        assert!(modules[1].parameters.is_empty());
    }
}
