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
//! | — | `agent.hotplug_timeout=<s>` | 20 s (Kata: 3 s): the wait for a hot-plugged disk or VFIO device |
//! | — | `agent.container_pipe_size=<bytes>` | the kernel's pipe size: containers' stdio pipes |
//! | — | `agent.launch_process_timeout=<s>` | 6 s; parsed, no effect (kata-rs launches no guest components) |
//! | — | `agent.cdi_timeout=<s>` | 100 s; parsed, no effect (kata-rs's agent does no CDI edits) |
//! | — | `agent.passfd_listener_port=<port>` | none; parsed, **not served** (logged loudly) |
//!
//! Bad values of the options Kata's agent parses strictly (a timeout or size that is not a
//! number, a negative pipe size) stop the agent at boot, as they stop Kata's (its configuration
//! fails to load); a timeout of 0 keeps the default, as in Kata's.

use std::time::Duration;

/// Kata's default port of the debug console.
pub const DEFAULT_DEBUG_CONSOLE_PORT: u32 = 1026;

/// How long a hot-plugged disk or VFIO device is waited for unless `agent.hotplug_timeout`
/// says otherwise (Kata's default is 3 s; kata-rs's guests under TCG need longer).
pub const DEFAULT_HOTPLUG_TIMEOUT: Duration = Duration::from_secs(20);

/// Kata's default `agent.launch_process_timeout`.
pub const DEFAULT_LAUNCH_PROCESS_TIMEOUT: Duration = Duration::from_secs(6);

/// Kata's default `agent.cdi_timeout`.
pub const DEFAULT_CDI_TIMEOUT: Duration = Duration::from_secs(100);

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
    /// The options that tune how containers are served (`agent.hotplug_timeout`, ...).
    pub tunables: Tunables,
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
            tunables: Tunables::default(),
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
            cfg.apply_kernel_cmdline(&words)
                .map_err(|e| format!("--kernel-params: {e}"))?;
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
    /// `agent.log_vport`, `agent.debug_console` and `agent.debug_console_vport` (a port that
    /// is not a number is ignored), and the [`Tunables`] (a bad value is the error, naming the
    /// option: the agent does not start, as Kata's does not).
    pub fn apply_kernel_cmdline(&mut self, cmdline: &str) -> Result<(), String> {
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
        self.tunables.apply(cmdline)
    }
}

/// The `agent.*` options that change how containers are served, parsed as Kata's agent parses
/// them (`src/agent/src/config.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// `agent.hotplug_timeout`: the wait for a hot-plugged disk or VFIO device.
    pub hotplug_timeout: Duration,
    /// `agent.container_pipe_size`: the size given to containers' stdio pipes; 0 leaves the
    /// kernel's.
    pub container_pipe_size: u32,
    /// `agent.launch_process_timeout`: Kata's wait for guest components it launches. Parsed;
    /// kata-rs's agent launches none.
    pub launch_process_timeout: Duration,
    /// `agent.cdi_timeout`: Kata's wait for CDI specifications. Parsed; kata-rs's agent does
    /// no CDI edits.
    pub cdi_timeout: Duration,
    /// `agent.passfd_listener_port`: the port runtime-rs's `use_passfd_io` hands stdio fds to.
    /// Parsed, not served: the agent logs that at start.
    pub passfd_listener_port: Option<u32>,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            hotplug_timeout: DEFAULT_HOTPLUG_TIMEOUT,
            container_pipe_size: 0,
            launch_process_timeout: DEFAULT_LAUNCH_PROCESS_TIMEOUT,
            cdi_timeout: DEFAULT_CDI_TIMEOUT,
            passfd_listener_port: None,
        }
    }
}

/// Seconds, as Kata parses its timeouts: a number, or the option is an error; 0 keeps `now`.
fn seconds(option: &str, value: &str, now: Duration) -> Result<Duration, String> {
    let n: u64 = value.parse().map_err(|_| {
        format!("{option}={value:?}: not a number of seconds (remove it or give e.g. {option}=10)")
    })?;
    Ok(if n > 0 { Duration::from_secs(n) } else { now })
}

impl Tunables {
    /// Reads the options out of a kernel command line; words it does not know are skipped.
    pub fn apply(&mut self, cmdline: &str) -> Result<(), String> {
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "agent.hotplug_timeout" => {
                    self.hotplug_timeout = seconds(key, value, self.hotplug_timeout)?;
                }
                "agent.launch_process_timeout" => {
                    self.launch_process_timeout = seconds(key, value, self.launch_process_timeout)?;
                }
                "agent.cdi_timeout" => {
                    self.cdi_timeout = seconds(key, value, self.cdi_timeout)?;
                }
                "agent.container_pipe_size" => {
                    let n: i32 = value.parse().map_err(|_| {
                        format!("{key}={value:?}: not a number of bytes (0: the kernel's size)")
                    })?;
                    self.container_pipe_size = u32::try_from(n).map_err(|_| {
                        format!("{key}={value:?}: a pipe size cannot be negative (0: the kernel's size)")
                    })?;
                }
                "agent.passfd_listener_port" => {
                    let n: u32 = value.parse().map_err(|_| {
                        format!("{key}={value:?}: not a port number (0: no passfd listener)")
                    })?;
                    self.passfd_listener_port = (n > 0).then_some(n);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Logs what the agent will not do of what was asked: the options parsed without effect.
    pub fn log_unserved(&self) {
        if let Some(port) = self.passfd_listener_port {
            tracing::error!(
                port,
                "agent.passfd_listener_port={port}: NOT SERVED: kata-rs's agent has no passfd \
                 I/O; containers' output goes through ReadStdout/ReadStderr only, so a runtime \
                 with use_passfd_io = true gets none: set use_passfd_io = false"
            );
        }
        if self.launch_process_timeout != DEFAULT_LAUNCH_PROCESS_TIMEOUT {
            tracing::warn!(
                "agent.launch_process_timeout has no effect: kata-rs's agent launches no guest \
                 components"
            );
        }
        if self.cdi_timeout != DEFAULT_CDI_TIMEOUT {
            tracing::warn!("agent.cdi_timeout has no effect: kata-rs's agent does no CDI edits");
        }
    }
}

static TUNABLES: std::sync::OnceLock<Tunables> = std::sync::OnceLock::new();

/// Makes `t` the agent's tunables (once, at start; later calls are ignored).
pub fn set_tunables(t: Tunables) {
    let _ = TUNABLES.set(t);
}

/// The agent's tunables: what [`set_tunables`] set, else the defaults.
pub fn tunables() -> &'static Tunables {
    TUNABLES.get_or_init(Tunables::default)
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
        )
        .unwrap();
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.listen, "vsock://-1:2048");
        assert_eq!((c.log_vport, c.debug_console_vport), (None, None));
    }

    #[test]
    fn log_port_and_debug_console_come_from_kata_kernel_params() {
        let mut c = AgentConfig::default();
        c.apply_kernel_cmdline("agent.log_vport=1025 agent.debug_console quiet")
            .unwrap();
        assert_eq!(
            (c.log_vport, c.debug_console_vport),
            (Some(1025), Some(1026))
        );
        let mut c = AgentConfig::default();
        c.apply_kernel_cmdline("agent.debug_console_vport=2000 agent.log_vport=x")
            .unwrap();
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

    #[test]
    fn tunables_are_read_as_kata_reads_them() {
        let d = Tunables::default();
        assert_eq!(d.hotplug_timeout, Duration::from_secs(20));
        let mut t = Tunables::default();
        t.apply(
            "quiet agent.hotplug_timeout=7 agent.container_pipe_size=1048576 \
             agent.launch_process_timeout=9 agent.cdi_timeout=50 agent.passfd_listener_port=1027",
        )
        .unwrap();
        assert_eq!(
            t,
            Tunables {
                hotplug_timeout: Duration::from_secs(7),
                container_pipe_size: 1 << 20,
                launch_process_timeout: Duration::from_secs(9),
                cdi_timeout: Duration::from_secs(50),
                passfd_listener_port: Some(1027),
            }
        );
        // 0 keeps the default (Kata's `> 0` guards); a port of 0 is no listener.
        let mut t = Tunables::default();
        t.apply("agent.hotplug_timeout=0 agent.cdi_timeout=0 agent.passfd_listener_port=0")
            .unwrap();
        assert_eq!(t, Tunables::default());
    }

    #[test]
    fn bad_tunables_stop_the_agent_naming_the_option() {
        for bad in [
            "agent.hotplug_timeout=3s",
            "agent.hotplug_timeout=-1",
            "agent.container_pipe_size=-4096",
            "agent.container_pipe_size=big",
            "agent.launch_process_timeout=x",
            "agent.cdi_timeout=",
            "agent.passfd_listener_port=-1",
        ] {
            let key = bad.split('=').next().unwrap();
            let err = Tunables::default().apply(bad).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
            let err = AgentConfig::from_args(["--kernel-params", bad]).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
