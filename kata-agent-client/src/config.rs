//! The `[agent.kata]` section of Kata's configuration file.
//!
//! Keys and defaults mirror Kata's runtime-rs (`enable_debug`,
//! `dial_timeout_ms`, `reconnect_timeout_ms`, `request_timeout_ms`, ...). The
//! Go runtime's `dial_timeout` (seconds) is accepted too, because Kata's
//! shipped `configuration-*.toml` files still set it (to 45). The file loader
//! lives in kata-sandbox; this crate owns the section's shape and meaning.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::DEFAULT_AGENT_VSOCK_PORT;
use crate::connect::ConnectOptions;
use crate::protocol::agent::KernelModule;

/// Kata's default port of the agent's log stream on vsock.
pub const DEFAULT_AGENT_LOG_PORT: u32 = 1025;

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
}

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
        }
    }
}

impl AgentConfig {
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

    /// `kernel_modules` as the `CreateSandbox` request carries them: the first
    /// word is the module, the rest its parameters. Blank entries are skipped.
    pub fn kernel_modules(&self) -> Vec<KernelModule> {
        self.kernel_modules
            .iter()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?;
                let mut module = KernelModule::new();
                module.name = name.to_string();
                module.parameters = words.map(str::to_string).collect();
                Some(module)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_kata_runtime_rs() {
        let cfg: AgentConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, AgentConfig::default());
        assert_eq!((cfg.server_port, cfg.log_port), (1024, 1025));
        let opts = cfg.connect_options();
        assert_eq!(opts.dial_timeout, Duration::from_millis(3_000));
        assert_eq!(opts.request_timeout, Duration::from_secs(30));
        assert_eq!(cfg.health_check_timeout(), Duration::from_secs(90));
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
