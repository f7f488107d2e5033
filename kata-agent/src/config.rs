//! The agent's configuration: command-line flags, then (as the guest's init) the kernel command
//! line's `agent.*` options, the way Kata's agent reads them.
//!
//! | flag | cmdline | default |
//! |---|---|---|
//! | `--listen <addr>` | `agent.server_addr=<addr>` | `vsock://-1:1024` |
//! | `--log <level>` | `agent.log=<level>` | `info` |
//! | `--init` / `--no-init` | — | init when PID 1 |
//! | `--no-pivot` | — | `pivot_root` (falls back to `MS_MOVE` + `chroot` on an initramfs) |
//! | `--own-network` | — | the network is changed only as the guest's init |
//! | — | `agent.log_vport=<port>` | no log stream (Kata's runtime passes 1025) |
//! | — | `agent.debug_console` | no debug console |
//! | — | `agent.debug_console_vport=<port>` | 1026 |
//! | `--kernel-params <words>` | — | these words read as the kernel command line (an agent on the host) |

/// Kata's default port of the debug console.
pub const DEFAULT_DEBUG_CONSOLE_PORT: u32 = 1026;

/// Kata's default: any CID, port 1024.
pub const DEFAULT_LISTEN: &str = "vsock://-1:1024";

/// Whether to do PID 1's guest setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InitMode {
    /// When PID 1.
    #[default]
    Auto,
    /// Always (`--init`).
    Force,
    /// Never (`--no-init`, host tests).
    Skip,
}

/// How the agent runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// ttRPC listen address: `vsock://<cid>:<port>` or `unix://<path>`.
    pub listen: String,
    /// Log filter (`info`, `debug`, or a `tracing` directive list).
    pub log_level: String,
    /// PID 1 setup.
    pub init: InitMode,
    /// Enter containers with `MS_MOVE` + `chroot` instead of `pivot_root` (`--no-pivot`).
    pub no_pivot: bool,
    /// The agent's network namespace is its own even though it is not the guest's init
    /// (`--own-network`, for an agent started in `unshare --net`): UpdateInterface,
    /// UpdateRoutes and AddARPNeighbors may change it, and it is the pod's.
    pub own_network: bool,
    /// The port of the log stream (`agent.log_vport`): the agent's log lines go to the host
    /// that connects there ([`crate::logport`]). `None`: the console only.
    pub log_vport: Option<u32>,
    /// The port of the debug console (`agent.debug_console`, `agent.debug_console_vport`):
    /// a root shell per connection ([`crate::debug_console`]). `None`: no console.
    pub debug_console_vport: Option<u32>,
    listen_from_flag: bool,
    log_from_flag: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: DEFAULT_LISTEN.to_string(),
            log_level: "info".to_string(),
            init: InitMode::Auto,
            no_pivot: false,
            own_network: false,
            log_vport: None,
            debug_console_vport: None,
            listen_from_flag: false,
            log_from_flag: false,
        }
    }
}

/// The usage text.
pub const USAGE: &str =
    "usage: kata-agent [--listen vsock://-1:1024|unix:///path] [--log LEVEL] [--init|--no-init] [--no-pivot] [--own-network] [--kernel-params 'agent.x=y ...']";

impl AgentConfig {
    /// Parses command-line arguments (without the program name).
    pub fn from_args<I, S>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut cfg = AgentConfig::default();
        let mut args = args.into_iter().map(Into::into);
        let mut kernel_params = None;
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--listen" => {
                    cfg.listen = value("--listen")?;
                    cfg.listen_from_flag = true;
                }
                "--log" | "--log-level" => {
                    cfg.log_level = value("--log")?;
                    cfg.log_from_flag = true;
                }
                "--init" => cfg.init = InitMode::Force,
                "--no-init" => cfg.init = InitMode::Skip,
                "--no-pivot" => cfg.no_pivot = true,
                "--own-network" => cfg.own_network = true,
                "--kernel-params" => kernel_params = Some(value("--kernel-params")?),
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if let Some(words) = kernel_params {
            cfg.apply_kernel_cmdline(&words);
        }
        if !(cfg.listen.starts_with("vsock://") || cfg.listen.starts_with("unix://")) {
            return Err(format!(
                "--listen {:?}: expected vsock://<cid>:<port> or unix://<path>",
                cfg.listen
            ));
        }
        Ok(cfg)
    }

    /// Whether to do PID 1's setup, given whether this process is PID 1.
    pub fn runs_as_init(&self, is_pid1: bool) -> bool {
        match self.init {
            InitMode::Auto => is_pid1,
            InitMode::Force => true,
            InitMode::Skip => false,
        }
    }

    /// Applies the kernel command line's `agent.log`, `agent.server_addr` (flags win),
    /// `agent.log_vport`, `agent.debug_console` and `agent.debug_console_vport`. A port that
    /// is not a number is ignored (logged once logging works, by the caller's report).
    pub fn apply_kernel_cmdline(&mut self, cmdline: &str) {
        let mut console = false;
        let mut console_port = DEFAULT_DEBUG_CONSOLE_PORT;
        for word in cmdline.split_whitespace() {
            if word == "agent.debug_console" {
                console = true;
            } else if let Some(p) = word.strip_prefix("agent.debug_console_vport=") {
                console_port = p.parse().unwrap_or(console_port);
            } else if let Some(p) = word.strip_prefix("agent.log_vport=") {
                self.log_vport = p.parse().ok().filter(|p| *p != 0);
            }
        }
        if console {
            self.debug_console_vport = Some(console_port);
        }
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("agent.log=") {
                if !self.log_from_flag {
                    self.log_level = v.to_string();
                }
            } else if let Some(v) = word.strip_prefix("agent.server_addr=") {
                if !self.listen_from_flag {
                    self.listen = v.to_string();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_kata_vsock_port() {
        let c = AgentConfig::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(c.listen, "vsock://-1:1024");
        assert!(c.runs_as_init(true));
        assert!(!c.runs_as_init(false));
    }

    #[test]
    fn parses_flags() {
        let c =
            AgentConfig::from_args(["--no-init", "--listen", "unix:///tmp/a.sock", "--log=debug"])
                .unwrap();
        assert_eq!(c.listen, "unix:///tmp/a.sock");
        assert_eq!(c.log_level, "debug");
        assert!(!c.runs_as_init(true));
        assert!(!c.own_network);
        assert!(
            AgentConfig::from_args(["--own-network"])
                .unwrap()
                .own_network
        );
        assert!(AgentConfig::from_args(["--listen"]).is_err());
        assert!(AgentConfig::from_args(["--bogus"]).is_err());
        assert!(AgentConfig::from_args(["--listen", "tcp://1.2.3.4:1"]).is_err());
    }

    #[test]
    fn kernel_cmdline_fills_what_flags_did_not_set() {
        let mut c = AgentConfig::from_args(["--log", "warn"]).unwrap();
        c.apply_kernel_cmdline(
            "console=ttyS0 agent.log=debug agent.server_addr=vsock://-1:2048 quiet",
        );
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.listen, "vsock://-1:2048");
        assert_eq!((c.log_vport, c.debug_console_vport), (None, None));
    }

    #[test]
    fn log_port_and_debug_console_come_from_kata_kernel_params() {
        let mut c = AgentConfig::default();
        c.apply_kernel_cmdline("agent.log_vport=1025 agent.debug_console quiet");
        assert_eq!(
            (c.log_vport, c.debug_console_vport),
            (Some(1025), Some(1026))
        );
        let mut c = AgentConfig::default();
        c.apply_kernel_cmdline("agent.debug_console_vport=2000 agent.log_vport=x");
        assert_eq!((c.log_vport, c.debug_console_vport), (None, None));
        let c = AgentConfig::from_args([
            "--log",
            "warn",
            "--kernel-params",
            "agent.log=debug agent.debug_console agent.debug_console_vport=2000",
        ])
        .unwrap();
        assert_eq!(
            (c.log_level.as_str(), c.debug_console_vport),
            ("warn", Some(2000))
        );
    }
}
