//! Parsing `shim-ctl [OPTIONS] <COMMAND> [OPTIONS]`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// The help text.
pub const USAGE: &str = "\
Usage: shim-ctl [OPTIONS] <COMMAND>

Commands:
  check   Check that this host can run sandboxes with the configuration: KVM (usable for an
          ordinary guest?), vhost-vsock or vhost-device-vsock, QEMU, virtiofsd, the guest
          image, and the paths the configuration names. Exits 1 when something needed is missing.
  env     Print the effective configuration (after config.d drop-ins and annotations) as TOML,
          with where it was loaded from.

Options:
  -c, --config <PATH>              The configuration file (default: $KATA_CONF_FILE, else the
                                   first existing of Kata's default paths)
  -a, --annotation <KEY=VALUE>     A pod annotation to apply (io.katacontainers.config.*);
                                   may be repeated
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
}

/// A subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `check`: host checks.
    Check,
    /// `env`: the effective configuration.
    Env,
}

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
    /// A second subcommand or a stray argument.
    Unexpected(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Help => f.write_str("help requested"),
            ParseError::Version => f.write_str("version requested"),
            ParseError::MissingCommand => f.write_str("a command is needed (check or env)"),
            ParseError::UnknownCommand(c) => write!(f, "unknown command `{c}` (check or env)"),
            ParseError::UnknownOption(o) => write!(f, "unknown option `{o}`"),
            ParseError::MissingValue(o) => write!(f, "{o} needs a value"),
            ParseError::BadValue(o, v) => write!(f, "{o}: `{v}` is not KEY=VALUE"),
            ParseError::Unexpected(a) => write!(f, "unexpected argument `{a}`"),
        }
    }
}

/// Parses the arguments (without the program name). Options may come before or after the
/// command; `--opt=value` and `--opt value` are both accepted.
pub fn parse(args: &[OsString]) -> Result<(Options, Command), ParseError> {
    let mut options = Options::default();
    let mut command = None;
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
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
        match name.as_str() {
            "-h" | "--help" | "help" => return Err(ParseError::Help),
            "-V" | "--version" => return Err(ParseError::Version),
            "-c" | "--config" => options.config = Some(PathBuf::from(value("--config")?)),
            "-a" | "--annotation" => {
                let kv = value("--annotation")?;
                let (k, v) = kv
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| ParseError::BadValue("--annotation", kv.clone()))?;
                options.annotations.push((k.to_string(), v.to_string()));
            }
            opt if opt.starts_with('-') && opt.len() > 1 => {
                return Err(ParseError::UnknownOption(opt.to_string()))
            }
            word => {
                if command.is_some() {
                    return Err(ParseError::Unexpected(word.to_string()));
                }
                command = Some(match word {
                    "check" => Command::Check,
                    "env" => Command::Env,
                    other => return Err(ParseError::UnknownCommand(other.to_string())),
                });
            }
        }
    }
    command
        .map(|c| (options, c))
        .ok_or(ParseError::MissingCommand)
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
