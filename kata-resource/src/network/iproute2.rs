//! iproute2's `ip` and `tc`, run in the calling thread's network namespace (see
//! [`NetNs::run`](super::netns::NetNs::run)): a child inherits the namespace of the thread that
//! spawns it.
//!
//! Found in the system directories only (`/usr/sbin`, `/sbin`, `/usr/bin`, `/bin`), never
//! through `$PATH`: they run as root on the pod's namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// One of iproute2's programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Program {
    /// `ip`.
    Ip,
    /// `tc`.
    Tc,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Ip => "ip",
            Program::Tc => "tc",
        }
    }

    /// Where it is installed: [`Error::MissingHostProgram`] naming Debian's `iproute2` if not.
    pub(crate) fn path(self) -> Result<PathBuf> {
        let name = self.name();
        SYSTEM_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::MissingHostProgram {
                path: Path::new("/usr/sbin").join(name),
                package: "iproute2",
            })
    }
}

/// The failure of one iproute2 run: its command line and why.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The command line, for messages.
    pub command: String,
    /// Its stderr (trimmed) or the spawn error.
    pub stderr: String,
}

impl Failure {
    /// As [`Error::Network`] in `netns`, doing `action`.
    pub(crate) fn into_error(self, netns: &Path, action: impl Into<String>) -> Error {
        Error::Network {
            netns: netns.to_owned(),
            action: format!("{} (`{}`)", action.into(), self.command),
            reason: self.stderr,
        }
    }
}

/// Runs `program args...` and returns its stdout. The outer error is a missing program, the
/// inner one the run's failure (for the caller to word, or to accept: a delete of what is
/// already gone).
pub(crate) fn run(program: Program, args: &[&str]) -> Result<Result<String, Failure>> {
    let path = program.path()?;
    let command = format!("{} {}", program.name(), args.join(" "));
    let output = match Command::new(&path).args(args).output() {
        Ok(o) => o,
        Err(e) => {
            return Ok(Err(Failure {
                command,
                stderr: format!("cannot run {}: {e}", path.display()),
            }))
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Ok(Err(Failure {
            command,
            stderr: format!("{}: {stderr}", output.status),
        }));
    }
    Ok(Ok(String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Runs `program args...` and fails with [`Error::Network`] naming `action` in `netns`.
pub(crate) fn run_checked(
    netns: &Path,
    action: &str,
    program: Program,
    args: &[&str],
) -> Result<String> {
    run(program, args)?.map_err(|f| f.into_error(netns, action))
}

/// Runs `ip -json args...` and parses its output as `T`.
pub(crate) fn ip_json<T: DeserializeOwned>(netns: &Path, action: &str, args: &[&str]) -> Result<T> {
    let mut all = vec!["-json"];
    all.extend_from_slice(args);
    let out = run_checked(netns, action, Program::Ip, &all)?;
    // `ip -json` prints nothing at all for an empty list on some versions.
    let out = if out.trim().is_empty() { "[]" } else { &out };
    serde_json::from_str(out).map_err(|e| Error::Network {
        netns: netns.to_owned(),
        action: format!("{action} (`ip {}`)", all.join(" ")),
        reason: format!("its JSON output does not parse: {e}"),
    })
}
