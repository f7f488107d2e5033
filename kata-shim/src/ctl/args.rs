//! Parsing `shim-ctl [OPTIONS] <COMMAND> [OPTIONS]`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// The help text.
pub const USAGE: &str = "\
Usage: shim-ctl [OPTIONS] <COMMAND> [ARGS]

Commands:
  check   Check that this host can run sandboxes with the configuration: KVM (usable for an
          ordinary guest?), vhost-vsock or vhost-device-vsock, QEMU, virtiofsd, the guest
          image, and the paths the configuration names. Exits 1 when something needed is missing.
  env     Print the effective configuration (after config.d drop-ins and annotations) as TOML,
          with where it was loaded from.

  A sandbox per container, from an OCI bundle, without containerd (for development):
  create [--bundle <DIR>] <ID>   Boot a sandbox named ID and create the bundle's container in
                                 it (not started). The sandbox runs on after shim-ctl exits.
  start [--detach] <ID>          Start the container; print its output and exit with its
                                 status (with --detach: return once it runs).
  exec <ID> <CMD> [ARGS]...      Run a command in the running container; print its output and
                                 exit with its status.
  kill [--signal <SIG>] <ID>     Send a signal (number or name; default SIGTERM).
  delete [--force] <ID>          Remove the container and stop its sandbox (--force: even if
                                 it still runs).
  state <ID>                     Print the container's state as JSON.

Options:
  -c, --config <PATH>              The configuration file (default: $KATA_CONF_FILE, else the
                                   first existing of Kata's default paths)
  -a, --annotation <KEY=VALUE>     A pod annotation to apply (io.katacontainers.config.*);
                                   may be repeated
  -r, --root <DIR>                 Where sandboxes live (default: $KATA_RS_ROOT_DIR, else
                                   /run/kata)
  -h, --help                       Print this help
  -V, --version                    Print the version
";

/// Options shared by every command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// `--annotation KEY=VALUE`, in order.
    pub annotations: Vec<(String, String)>,
    /// `--root DIR`.
    pub root: Option<PathBuf>,
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
}

/// The command words.
const COMMANDS: &str = "check, env, create, start, exec, kill, delete or state";

/// Why the command line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `--help` was asked for.
    Help,
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
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Help => f.write_str("help requested"),
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
        }
    }
}

/// Parses the arguments (without the program name). Options may come before or after the
/// command; `--opt=value` and `--opt value` are both accepted. For `exec`, everything after
/// the id is the command (`--` may separate it).
pub fn parse(args: &[OsString]) -> Result<(Options, Command), ParseError> {
    let mut options = Options::default();
    let mut command: Option<&'static str> = None;
    let mut positionals: Vec<String> = Vec::new();
    let mut bundle = None;
    let (mut detach, mut force) = (false, false);
    let mut signal = libc::SIGTERM;
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        // exec: after the id, the rest is the command line.
        if command == Some("exec") && !positionals.is_empty() {
            if positionals.len() == 1 && arg == "--" {
                continue;
            }
            positionals.push(arg);
            positionals.extend(it.by_ref());
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |opt: &'static str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(ParseError::MissingValue(opt))
        };
        let command_option = |allowed: &str| command == Some(allowed);
        match name.as_str() {
            "-h" | "--help" | "help" if positionals.is_empty() => return Err(ParseError::Help),
            "-V" | "--version" => return Err(ParseError::Version),
            "-c" | "--config" => options.config = Some(PathBuf::from(value("--config")?)),
            "-r" | "--root" => options.root = Some(PathBuf::from(value("--root")?)),
            "-a" | "--annotation" => {
                let kv = value("--annotation")?;
                let (k, v) = kv
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| ParseError::BadValue("--annotation", kv.clone()))?;
                options.annotations.push((k.to_string(), v.to_string()));
            }
            "-b" | "--bundle" if command_option("create") => {
                bundle = Some(PathBuf::from(value("--bundle")?))
            }
            "-d" | "--detach" if command_option("start") => detach = true,
            "-f" | "--force" if command_option("delete") => force = true,
            "-s" | "--signal" if command_option("kill") => {
                let v = value("--signal")?;
                signal = parse_signal(&v).ok_or(ParseError::BadValue("--signal", v))?;
            }
            opt if opt.starts_with('-') && opt.len() > 1 => {
                return Err(ParseError::UnknownOption(opt.to_string()))
            }
            word => match command {
                None => {
                    command = Some(match word {
                        "check" => "check",
                        "env" => "env",
                        "create" => "create",
                        "start" => "start",
                        "exec" => "exec",
                        "kill" => "kill",
                        "delete" => "delete",
                        "state" => "state",
                        other => return Err(ParseError::UnknownCommand(other.to_string())),
                    })
                }
                Some("check" | "env") => return Err(ParseError::Unexpected(word.to_string())),
                Some(_) if !positionals.is_empty() => {
                    return Err(ParseError::Unexpected(word.to_string()))
                }
                Some(_) => positionals.push(word.to_string()),
            },
        }
    }
    let command = command.ok_or(ParseError::MissingCommand)?;
    let mut positionals = positionals.into_iter();
    let mut id = |c: &'static str| {
        positionals
            .next()
            .ok_or(ParseError::MissingArgument(c, "a container id"))
    };
    let command = match command {
        "check" => Command::Check,
        "env" => Command::Env,
        "create" => Command::Create {
            id: id("create")?,
            bundle: bundle.unwrap_or_else(|| PathBuf::from(".")),
        },
        "start" => Command::Start {
            id: id("start")?,
            detach,
        },
        "exec" => {
            let id = id("exec")?;
            let args: Vec<String> = positionals.collect();
            if args.is_empty() {
                return Err(ParseError::MissingArgument("exec", "a command to run"));
            }
            Command::Exec { id, args }
        }
        "kill" => Command::Kill {
            id: id("kill")?,
            signal,
        },
        "delete" => Command::Delete {
            id: id("delete")?,
            force,
        },
        _ => Command::State { id: id("state")? },
    };
    Ok((options, command))
}

/// A signal by number (`9`) or name (`KILL`, `SIGKILL`, case-insensitive).
fn parse_signal(v: &str) -> Option<i32> {
    if let Ok(n) = v.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = v.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<(Options, Command), ParseError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args)
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
            p(&["env", "--bogus"]),
            Err(ParseError::UnknownOption("--bogus".into()))
        );
        assert_eq!(
            p(&["env", "check"]),
            Err(ParseError::Unexpected("check".into()))
        );
        assert_eq!(p(&["--help"]), Err(ParseError::Help));
    }
}
