//! `kata-agent`: the guest agent binary. See the crate README.

use std::process::ExitCode;

use kata_agent::config::AgentConfig;
use kata_agent::runtime::{child, CONTAINER_INIT_ARG};

fn main() -> ExitCode {
    // The container init helper must run before anything starts a thread.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(CONTAINER_INIT_ARG)) {
        child::main();
    }
    let mut config = match AgentConfig::from_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let as_init = config.runs_as_init(kata_agent::init::is_pid1());
    let mut report = None;
    let mut cmdline_error = None;
    if as_init {
        report = Some(kata_agent::init::mount_guest_filesystems());
        kata_agent::init::console_stdio();
        if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline") {
            cmdline_error = config.apply_kernel_cmdline(&cmdline).err();
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // The console and, once the host connects, the log port (`logport`).
        .with_writer(kata_agent::logport::writer)
        .with_ansi(false)
        .init();
    if let Some(report) = report {
        report.log();
        if let Err(e) = kata_agent::init::loopback_up() {
            tracing::warn!(error = %e, "cannot bring up lo");
        }
    }
    if let Some(e) = cmdline_error {
        // As Kata's agent, which does not start with a bad option either.
        tracing::error!("kernel command line: {e}: kata-agent does not start");
        if kata_agent::init::is_pid1() {
            kata_agent::init::power_off();
        }
        return ExitCode::FAILURE;
    }
    config.tunables.log_unserved();
    kata_agent::config::set_tunables(config.tunables.clone());
    if let Err(e) = kata_agent::init::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper: orphans will not be reaped");
    }
    // One worker: a request is read, handled and answered on one thread (no cross-thread
    // wake-ups: Check round trips ~100 µs -> ~55 µs here), and a micro-VM has 1 vCPU by default.
    // Blocking work goes to the blocking pool, which is separate.
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(kata_agent::agent::serve(&config, as_init))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = &result {
        tracing::error!(error = %e, "kata-agent failed");
    }
    if kata_agent::init::is_pid1() {
        kata_agent::init::power_off();
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
