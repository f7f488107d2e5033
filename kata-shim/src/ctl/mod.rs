//! `shim-ctl`'s command line: options, subcommands, logging, exit codes.
//!
//! Arguments are parsed by clap ([`args`], derive API) with shim-ctl's own error texts.
//! `check` and `env` look at the configuration; `create`, `start`, `exec`, `kill`, `delete`
//! and `state` drive a sandbox per container from an OCI bundle ([`lifecycle`]).

mod args;
mod check;
mod console;
mod env;
mod lifecycle;
mod metrics;

use std::ffi::OsString;

pub use args::{parse, Command, Options, ParseError};

/// Exit status: success.
pub const EXIT_OK: i32 = 0;
/// Exit status: the command ran and found a problem (a failed check, an invalid configuration).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: the command line was wrong.
pub const EXIT_USAGE: i32 = 2;

/// Runs `shim-ctl` with `args` (without the program name); returns the exit status.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString>>) -> i32 {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (options, command) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(ParseError::Help(help)) => {
            print!("{help}");
            return EXIT_OK;
        }
        Err(ParseError::Version) => {
            println!("shim-ctl {}", env!("CARGO_PKG_VERSION"));
            return EXIT_OK;
        }
        Err(e) => {
            eprintln!("shim-ctl: {e}\n\n{}", args::usage());
            return EXIT_USAGE;
        }
    };
    init_logging();
    let code = run(&options, command);
    // enable_tracing: the spans of this command are sent before it exits.
    kata_shim::telemetry::shutdown();
    code
}

/// Runs one parsed command.
pub fn run(options: &Options, command: Command) -> i32 {
    match command {
        Command::Check => check::run(options),
        Command::Env => env::run(options),
        Command::Create { id, bundle } => lifecycle::create(options, &id, &bundle),
        Command::Start { id, detach } => lifecycle::start(options, &id, detach),
        Command::Exec { id, args } => lifecycle::exec(options, &id, &args),
        Command::Kill { id, signal } => lifecycle::kill(options, &id, signal),
        Command::Delete { id, force } => lifecycle::delete(options, &id, force),
        Command::State { id } => lifecycle::state(options, &id),
        Command::Metrics { sandbox } => metrics::run(options, &sandbox),
        Command::Console { sandbox } => console::run(options, &sandbox),
    }
}

/// Warnings (unknown keys, ignored annotations) and errors go to stderr; `KATA_RS_LOG`
/// (`RUST_LOG` syntax, the one filter of every kata-rs host program) overrides.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KATA_RS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .with_filter(filter);
    // The trace export (`enable_tracing`, feature `otel`) beside the log, with its own filter.
    let _ = tracing_subscriber::registry()
        .with(kata_shim::telemetry::layer())
        .with(log)
        .try_init();
}

/// The loader for the options: `--config` (else `$KATA_CONF_FILE`, else Kata's search paths)
/// and `--annotation`s.
fn loader(options: &Options) -> kata_sandbox::config::ConfigLoader {
    let mut loader = kata_sandbox::config::ConfigLoader::new()
        .search_paths(kata_shim::names::NameSet::current().config_search_paths());
    if let Some(path) = &options.config {
        loader = loader.path(path);
    }
    loader.annotations(options.annotations.iter().cloned())
}
