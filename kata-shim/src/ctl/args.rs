//! Parsing `shim-ctl [OPTIONS] <COMMAND> [OPTIONS]` with clap's derive API.
//!
//! clap parses; [`ParseError`] keeps shim-ctl's own wording for every mistake (the messages a
//! user and the tests see), and the help is generated from the doc comments below.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// The whole command line, as clap sees it. Every command takes the shared [`Options`] too
/// (flattened into each, not clap's `global`: a global option given on both sides of the
/// command would keep only the command's values, and `-a` must add up).
#[derive(Debug, Parser)]
#[command(
    name = "shim-ctl",
    version,
    about = "Look at and drive kata-rs without containerd.",
    propagate_version = true,
    // Like the hand-written parser before it: a repeated flag or option, the last one wins.
    args_override_self = true,
    after_help = "create, start, exec, kill, delete and state drive a sandbox per container, \
                  from an OCI bundle, without containerd (for development)."
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: CliCommand,
}

/// Options shared by every command (before or after it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Options {
    /// The configuration file (default: $KATA_CONF_FILE, else the first existing of Kata's
    /// default paths).
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// A pod annotation to apply (io.katacontainers.config.*); may be repeated.
    #[arg(
        short = 'a',
        long = "annotation",
        value_name = "KEY=VALUE",
        value_parser = parse_annotation,
        action = clap::ArgAction::Append
    )]
    pub annotations: Vec<(String, String)>,
    /// Where sandboxes live (default: $KATA_RS_ROOT_DIR, else /run/kata).
    #[arg(short, long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl Options {
    /// `later` given after the command: its values win, its annotations come after.
    fn then(mut self, later: Options) -> Options {
        self.config = later.config.or(self.config);
        self.root = later.root.or(self.root);
        self.annotations.extend(later.annotations);
        self
    }
}

/// A subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `check`: host checks.
    Check,
    /// `env`: the effective configuration.
    Env,
    /// `create [--bundle DIR] ID`.
    Create {
        /// The container (and sandbox) id.
        id: String,
        /// The bundle directory (default: the current directory).
        bundle: PathBuf,
    },
    /// `start [--detach] ID`.
    Start {
        /// The container id.
        id: String,
        /// Return once it runs instead of printing its output until it exits.
        detach: bool,
    },
    /// `exec ID CMD [ARGS]...`.
    Exec {
        /// The container id.
        id: String,
        /// The command and its arguments.
        args: Vec<String>,
    },
    /// `kill [--signal SIG] ID`.
    Kill {
        /// The container id.
        id: String,
        /// The signal number.
        signal: i32,
    },
    /// `delete [--force] ID`.
    Delete {
        /// The container id.
        id: String,
        /// Delete even if it still runs.
        force: bool,
    },
    /// `state ID`.
    State {
        /// The container id.
        id: String,
    },
    /// `metrics SANDBOX`.
    Metrics {
        /// The sandbox id.
        sandbox: String,
    },
    /// `console SANDBOX`.
    Console {
        /// The sandbox id.
        sandbox: String,
    },
}

/// The subcommands as clap parses them; the doc comments are the help text.
#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Check that this host can run sandboxes with the configuration.
    ///
    /// KVM (usable for an ordinary guest?), vhost-vsock or vhost-device-vsock, QEMU,
    /// virtiofsd, the guest image, and the paths the configuration names. Exits 1 when
    /// something needed is missing.
    Check {
        #[command(flatten)]
        options: Options,
    },
    /// Print the effective configuration as TOML.
    ///
    /// After config.d drop-ins and annotations, with where it was loaded from.
    Env {
        #[command(flatten)]
        options: Options,
    },
    /// Boot a sandbox named ID and create the bundle's container in it (not started).
    ///
    /// The sandbox runs on after shim-ctl exits; its state is kept in the root directory
    /// (--root), in ID/state.json.
    Create {
        /// The container (and sandbox) id.
        #[arg(value_name = "ID")]
        id: String,
        /// The OCI bundle directory.
        #[arg(short, long, value_name = "DIR", default_value = ".")]
        bundle: PathBuf,
        #[command(flatten)]
        options: Options,
    },
    /// Start the container; print its output and exit with its status.
    ///
    /// With --detach: return once it runs.
    Start {
        /// The container id.
        #[arg(value_name = "ID")]
        id: String,
        /// Return once it runs instead of printing its output until it exits.
        #[arg(short, long)]
        detach: bool,
        #[command(flatten)]
        options: Options,
    },
    /// Run a command in the running container; print its output and exit with its status.
    ///
    /// Everything after ID is the command, options included (`--` may separate them).
    #[command(override_usage = "shim-ctl exec [OPTIONS] <ID> <CMD> [ARGS]...")]
    Exec {
        /// The container id, then the command and its arguments.
        // One argument list: clap stops looking for options once the id is given.
        #[arg(
            value_names = ["ID", "CMD"],
            required = true,
            num_args = 1..,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        words: Vec<String>,
        #[command(flatten)]
        options: Options,
    },
    /// Send a signal to the container (default SIGTERM).
    Kill {
        /// The container id.
        #[arg(value_name = "ID")]
        id: String,
        /// The signal: a number 1-64 or a name (KILL, SIGKILL; case-insensitive).
        #[arg(
            short,
            long,
            value_name = "SIG",
            value_parser = parse_signal,
            default_value_t = libc::SIGTERM,
            hide_default_value = true
        )]
        signal: i32,
        #[command(flatten)]
        options: Options,
    },
    /// Remove the container and stop its sandbox.
    ///
    /// With --force: even if it still runs, or its VM died.
    Delete {
        /// The container id.
        #[arg(value_name = "ID")]
        id: String,
        /// Even if it still runs, or its VM died.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        options: Options,
    },
    /// Print the container's state as JSON.
    State {
        /// The container id.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        options: Options,
    },
    /// Print a sandbox's metrics (Prometheus text) from its shim's management socket.
    ///
    /// `<root>/<SANDBOX>/shim-monitor.sock`: the runtime's, the VMM's and the guest's figures.
    Metrics {
        /// The sandbox id.
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
        #[command(flatten)]
        options: Options,
    },
    /// Open a root shell in a sandbox's guest (its debug console), with this terminal.
    ///
    /// Only for a sandbox started with `[agent.kata] debug_console_enabled = true`; the
    /// terminal is put in raw mode until the shell exits.
    Console {
        /// The sandbox id.
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
        #[command(flatten)]
        options: Options,
    },
}

impl CliCommand {
    /// The command and the options given after it.
    fn split(self) -> Result<(Command, Options), ParseError> {
        Ok(match self {
            CliCommand::Check { options } => (Command::Check, options),
            CliCommand::Env { options } => (Command::Env, options),
            CliCommand::Create {
                id,
                bundle,
                options,
            } => (Command::Create { id, bundle }, options),
            CliCommand::Start {
                id,
                detach,
                options,
            } => (Command::Start { id, detach }, options),
            CliCommand::Exec { words, options } => {
                let mut words = words.into_iter();
                let id = words
                    .next()
                    .ok_or(ParseError::MissingArgument("exec", "a container id"))?;
                let mut args: Vec<String> = words.collect();
                // A `--` right after the id separates the command (one later is the command's).
                if args.first().is_some_and(|a| a == "--") {
                    args.remove(0);
                }
                if args.is_empty() {
                    return Err(ParseError::MissingArgument("exec", "a command to run"));
                }
                (Command::Exec { id, args }, options)
            }
            CliCommand::Kill {
                id,
                signal,
                options,
            } => (Command::Kill { id, signal }, options),
            CliCommand::Delete { id, force, options } => (Command::Delete { id, force }, options),
            CliCommand::State { id, options } => (Command::State { id }, options),
            CliCommand::Metrics { sandbox, options } => (Command::Metrics { sandbox }, options),
            CliCommand::Console { sandbox, options } => (Command::Console { sandbox }, options),
        })
    }
}

/// The command words.
const COMMANDS: &str = "check, env, create, start, exec, kill, delete, state, metrics or console";

/// The options that take a value, as [`ParseError`] names them.
const VALUE_OPTIONS: &[&str] = &["--config", "--annotation", "--root", "--bundle", "--signal"];

/// Why the command line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `--help` (or `help`) was asked for: the help text to print.
    Help(String),
    /// `--version` was asked for.
    Version,
    /// No subcommand.
    MissingCommand,
    /// An unknown subcommand.
    UnknownCommand(String),
    /// An unknown option.
    UnknownOption(String),
    /// An option without its value.
    MissingValue(&'static str),
    /// A malformed value.
    BadValue(&'static str, String),
    /// A command without a positional argument it needs (command, what).
    MissingArgument(&'static str, &'static str),
    /// A second subcommand or a stray argument.
    Unexpected(String),
    /// Any other mistake clap finds (e.g. an argument that is not UTF-8), in clap's words.
    Other(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Help(_) => f.write_str("help requested"),
            ParseError::Version => f.write_str("version requested"),
            ParseError::MissingCommand => write!(f, "a command is needed ({COMMANDS})"),
            ParseError::UnknownCommand(c) => write!(f, "unknown command `{c}` ({COMMANDS})"),
            ParseError::MissingArgument(c, what) => write!(f, "{c} needs {what}"),
            ParseError::UnknownOption(o) => write!(f, "unknown option `{o}`"),
            ParseError::MissingValue(o) => write!(f, "{o} needs a value"),
            ParseError::BadValue(o, v) if *o == "--signal" => {
                write!(
                    f,
                    "{o}: `{v}` is not a signal (a number 1-64 or a name like TERM)"
                )
            }
            ParseError::BadValue(o, v) => write!(f, "{o}: `{v}` is not KEY=VALUE"),
            ParseError::Unexpected(a) => write!(f, "unexpected argument `{a}`"),
            ParseError::Other(message) => f.write_str(message),
        }
    }
}

/// The help text (what `shim-ctl --help` prints).
pub fn usage() -> String {
    Cli::command().render_help().to_string()
}

/// Parses the arguments (without the program name). Options may come before or after the
/// command; `--opt=value` and `--opt value` are both accepted. For `exec`, everything after
/// the id is the command (`--` may separate it).
pub fn parse(args: &[OsString]) -> Result<(Options, Command), ParseError> {
    let argv = std::iter::once(OsString::from("shim-ctl")).chain(args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| from_clap(&e, args))?;
    let (command, later) = cli.command.split()?;
    Ok((cli.options.then(later), command))
}

/// shim-ctl's error for what clap found.
fn from_clap(e: &clap::Error, args: &[OsString]) -> ParseError {
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.first().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    // clap names an argument as `--signal <SIG>` or `<ID>`.
    let option = || {
        let arg = context(ContextKind::InvalidArg);
        let flag = arg.split(' ').next().unwrap_or_default();
        VALUE_OPTIONS.iter().copied().find(|o| *o == flag)
    };
    match e.kind() {
        ErrorKind::DisplayHelp => ParseError::Help(e.render().to_string()),
        ErrorKind::DisplayVersion => ParseError::Version,
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            ParseError::MissingCommand
        }
        ErrorKind::InvalidSubcommand => {
            ParseError::UnknownCommand(context(ContextKind::InvalidSubcommand))
        }
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg);
            if arg.starts_with('-') && arg.len() > 1 {
                ParseError::UnknownOption(arg)
            } else {
                ParseError::Unexpected(arg)
            }
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let value = context(ContextKind::InvalidValue);
            match option() {
                Some(o) if value.is_empty() && e.kind() == ErrorKind::InvalidValue => {
                    ParseError::MissingValue(o)
                }
                Some(o) => ParseError::BadValue(o, value),
                None => ParseError::Other(clap_message(e)),
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let what = "a container id";
            match subcommand(args) {
                Some(c) => ParseError::MissingArgument(c, what),
                None => ParseError::Other(clap_message(e)),
            }
        }
        _ => ParseError::Other(clap_message(e)),
    }
}

/// The subcommand the arguments name, found by a parse that ignores the missing argument.
fn subcommand(args: &[OsString]) -> Option<&'static str> {
    let argv = std::iter::once(OsString::from("shim-ctl")).chain(args.iter().cloned());
    let matches = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(argv)
        .ok()?;
    let name = matches.subcommand_name()?;
    [
        "check", "env", "create", "start", "exec", "kill", "delete", "state",
    ]
    .into_iter()
    .find(|c| *c == name)
}

/// clap's own message, without its `error: ` prefix and its usage lines (shim-ctl prints the
/// help after every mistake).
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// `KEY=VALUE` with a non-empty key (the value may hold `=`).
fn parse_annotation(kv: &str) -> Result<(String, String), String> {
    kv.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{kv}` is not KEY=VALUE"))
}

/// A signal by number (`9`) or name (`KILL`, `SIGKILL`, case-insensitive).
fn parse_signal(v: &str) -> Result<i32, String> {
    let bad = || format!("`{v}` is not a signal (a number 1-64 or a name like TERM)");
    if let Ok(n) = v.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n).ok_or_else(bad);
    }
    let upper = v.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<(Options, Command), ParseError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args)
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_before_and_after_the_command() {
        let (o, c) = p(&["--config", "/x.toml", "env", "-a", "k=v=w"]).unwrap();
        assert_eq!(c, Command::Env);
        assert_eq!(o.config, Some(PathBuf::from("/x.toml")));
        assert_eq!(o.annotations, [("k".to_string(), "v=w".to_string())]);
        let (o, c) = p(&["check", "--config=/y.toml"]).unwrap();
        assert_eq!(c, Command::Check);
        assert_eq!(o.config, Some(PathBuf::from("/y.toml")));
    }

    #[test]
    fn repeated_annotations_keep_their_order_and_a_repeated_option_the_last_value() {
        let (o, _) = p(&["-a", "a=1", "env", "--annotation=b=2", "-a", "a=3"]).unwrap();
        assert_eq!(
            o.annotations,
            [
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "3".to_string())
            ]
        );
        let (o, c) = p(&["-c", "/1", "start", "-d", "-c", "/2", "--detach", "c1"]).unwrap();
        assert_eq!(o.config, Some(PathBuf::from("/2")));
        assert_eq!(
            c,
            Command::Start {
                id: "c1".into(),
                detach: true
            }
        );
    }

    #[test]
    fn console_names_a_sandbox() {
        let (o, c) = p(&["console", "sb1", "--root", "/r"]).unwrap();
        assert_eq!(o.root, Some(PathBuf::from("/r")));
        assert_eq!(
            c,
            Command::Console {
                sandbox: "sb1".into()
            }
        );
        assert!(p(&["console"]).is_err());
    }

    #[test]
    fn lifecycle_commands() {
        let (o, c) = p(&["--root", "/r", "create", "--bundle", "/b", "c1"]).unwrap();
        assert_eq!(o.root, Some(PathBuf::from("/r")));
        assert_eq!(
            c,
            Command::Create {
                id: "c1".into(),
                bundle: "/b".into()
            }
        );
        assert_eq!(
            p(&["create", "c1"]).unwrap().1,
            Command::Create {
                id: "c1".into(),
                bundle: ".".into()
            }
        );
        assert_eq!(
            p(&["start", "-d", "c1"]).unwrap().1,
            Command::Start {
                id: "c1".into(),
                detach: true
            }
        );
        assert_eq!(
            p(&["exec", "c1", "sh", "-c", "echo --x"]).unwrap().1,
            Command::Exec {
                id: "c1".into(),
                args: vec!["sh".into(), "-c".into(), "echo --x".into()]
            }
        );
        assert_eq!(
            p(&["exec", "c1", "--", "ls", "-l"]).unwrap().1,
            Command::Exec {
                id: "c1".into(),
                args: vec!["ls".into(), "-l".into()]
            }
        );
        for (sig, n) in [("9", 9), ("KILL", 9), ("sigterm", 15), ("SIGUSR1", 10)] {
            assert_eq!(
                p(&["kill", "--signal", sig, "c1"]).unwrap().1,
                Command::Kill {
                    id: "c1".into(),
                    signal: n
                }
            );
        }
        assert_eq!(
            p(&["kill", "c1"]).unwrap().1,
            Command::Kill {
                id: "c1".into(),
                signal: 15
            }
        );
        assert_eq!(
            p(&["delete", "--force", "c1"]).unwrap().1,
            Command::Delete {
                id: "c1".into(),
                force: true
            }
        );
        assert_eq!(
            p(&["state", "c1"]).unwrap().1,
            Command::State { id: "c1".into() }
        );
    }

    #[test]
    fn exec_takes_everything_after_the_id_as_the_command() {
        // Words that are shim-ctl's own options (global ones too) belong to the command once
        // the id is given; before it they are options. A later `--` is the command's.
        let (o, c) = p(&[
            "exec", "-c", "/x.toml", "c1", "-c", "-V", "--help", "--", "-a",
        ])
        .unwrap();
        assert_eq!(o.config, Some(PathBuf::from("/x.toml")));
        assert_eq!(
            c,
            Command::Exec {
                id: "c1".into(),
                args: ["-c", "-V", "--help", "--", "-a"]
                    .map(String::from)
                    .to_vec()
            }
        );
    }

    #[test]
    fn lifecycle_mistakes() {
        assert_eq!(
            p(&["start"]),
            Err(ParseError::MissingArgument("start", "a container id"))
        );
        assert_eq!(
            p(&["exec", "c1"]),
            Err(ParseError::MissingArgument("exec", "a command to run"))
        );
        assert_eq!(
            p(&["exec", "c1", "--"]),
            Err(ParseError::MissingArgument("exec", "a command to run"))
        );
        assert_eq!(
            p(&["kill", "--signal", "NOPE", "c1"]),
            Err(ParseError::BadValue("--signal", "NOPE".into()))
        );
        assert_eq!(
            p(&["kill", "--signal", "99", "c1"]),
            Err(ParseError::BadValue("--signal", "99".into()))
        );
        assert_eq!(
            p(&["state", "a", "b"]),
            Err(ParseError::Unexpected("b".into()))
        );
        // Command options belong to their command.
        assert_eq!(
            p(&["state", "--force", "a"]),
            Err(ParseError::UnknownOption("--force".into()))
        );
    }

    #[test]
    fn mistakes() {
        assert_eq!(p(&[]), Err(ParseError::MissingCommand));
        assert_eq!(p(&["-c", "/x.toml"]), Err(ParseError::MissingCommand));
        assert_eq!(
            p(&["frobnicate"]),
            Err(ParseError::UnknownCommand("frobnicate".into()))
        );
        assert_eq!(
            p(&["env", "--config"]),
            Err(ParseError::MissingValue("--config"))
        );
        assert_eq!(
            p(&["env", "-a", "novalue"]).unwrap_err(),
            ParseError::BadValue("--annotation", "novalue".into())
        );
        assert_eq!(
            p(&["env", "-a", "=v"]).unwrap_err(),
            ParseError::BadValue("--annotation", "=v".into())
        );
        assert_eq!(
            p(&["env", "--bogus"]),
            Err(ParseError::UnknownOption("--bogus".into()))
        );
        assert_eq!(
            p(&["env", "check"]),
            Err(ParseError::Unexpected("check".into()))
        );
        assert_eq!(p(&["--version"]), Err(ParseError::Version));
        assert_eq!(p(&["state", "-V"]), Err(ParseError::Version));
        // clap renders the help (the hand-written parser had it as a constant): the text to
        // print travels in the error.
        let Err(ParseError::Help(help)) = p(&["--help"]) else {
            panic!("--help is not a help request");
        };
        assert!(help.contains("Usage: shim-ctl"), "{help}");
        for command in [
            "check", "env", "create", "start", "exec", "kill", "delete", "state",
        ] {
            assert!(help.contains(command), "`{command}` missing from:\n{help}");
        }
        assert_eq!(p(&["help"]), Err(ParseError::Help(help)));
        let Err(ParseError::Help(kill)) = p(&["kill", "--help"]) else {
            panic!("kill --help is not a help request");
        };
        assert!(kill.contains("--signal <SIG>"), "{kill}");
    }

    #[test]
    fn error_texts() {
        let texts = [
            (vec![], "a command is needed (check, env, create, start, exec, kill, delete, state, metrics or console)"),
            (vec!["frobnicate"], "unknown command `frobnicate` (check, env, create, start, exec, kill, delete, state, metrics or console)"),
            (vec!["start"], "start needs a container id"),
            (vec!["exec", "c1"], "exec needs a command to run"),
            (vec!["env", "--bogus"], "unknown option `--bogus`"),
            (vec!["env", "--root"], "--root needs a value"),
            (vec!["kill", "-s", "x", "c1"], "--signal: `x` is not a signal (a number 1-64 or a name like TERM)"),
            (vec!["env", "-a", "x"], "--annotation: `x` is not KEY=VALUE"),
            (vec!["state", "a", "b"], "unexpected argument `b`"),
        ];
        for (args, text) in texts {
            assert_eq!(p(&args).unwrap_err().to_string(), text, "{args:?}");
        }
    }
}
