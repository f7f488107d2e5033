//! GetIPTables / SetIPTables: the guest's packet filter rules, as Kata's agent handles them.
//!
//! Kata's agent runs `iptables-save` (`ip6tables-save` for IPv6) and answers its standard
//! output, and feeds the request's data to `iptables-restore --wait 5` (`ip6tables-restore`),
//! answering its output; a restore that exits non-zero is `INTERNAL` with its standard error.
//! Each tool is looked for in `/usr/sbin`, then `/sbin`. The kata-rs guest image has no
//! iptables: there, as in a Kata guest without it, the call is `INTERNAL` naming the tool that
//! could not be run. The rules are those of the agent's network namespace (the guest's).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{AgentError, Result};

/// `iptables-restore --wait`: seconds to wait for the xtables lock (Kata's value).
pub const RESTORE_WAIT_SECS: u64 = 5;

/// Where the tools are looked for, in order.
const DIRS: &[&str] = &["/usr/sbin", "/sbin"];

/// The tool `name` (`iptables-save`, ...): the first of [`DIRS`] that has it, else the last
/// (running it then fails naming it, as Kata's agent's does).
fn tool(name: &str) -> PathBuf {
    DIRS.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new(DIRS[DIRS.len() - 1]).join(name))
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// GetIPTables: `iptables-save`'s (`ip6tables-save`'s) standard output.
pub fn save(ipv6: bool) -> Result<Vec<u8>> {
    save_with(&tool(&format!("{}-save", family(ipv6))))
}

fn save_with(cmd: &Path) -> Result<Vec<u8>> {
    let out = Command::new(cmd)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| AgentError::io(format!("GetIPTables: run {}", cmd.display()), e))?;
    // Kata's agent answers the output whatever the exit status.
    Ok(out.stdout)
}

/// SetIPTables: `data` fed to `iptables-restore --wait 5` (`ip6tables-restore`); its standard
/// output. A non-zero exit is an error with its standard error.
pub fn restore(ipv6: bool, data: &[u8]) -> Result<Vec<u8>> {
    restore_with(&tool(&format!("{}-restore", family(ipv6))), data)
}

fn restore_with(cmd: &Path, data: &[u8]) -> Result<Vec<u8>> {
    let what = || format!("SetIPTables: {}", cmd.display());
    let mut child = Command::new(cmd)
        .arg("--wait")
        .arg(RESTORE_WAIT_SECS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::io(format!("{}: run", what()), e))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let data = data.to_vec();
    // Written from a thread while the output is read: a large rule set must not deadlock on
    // full pipes.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .map_err(|e| AgentError::io(format!("{}: wait", what()), e))?;
    if let Ok(Err(e)) = writer.join() {
        tracing::warn!(error = %e, "SetIPTables: writing the rules to the tool's stdin");
    }
    if !out.status.success() {
        return Err(AgentError::Failed {
            method: "SetIPTables",
            reason: format!(
                "{} failed ({}): {}",
                cmd.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_internal_naming_it() {
        let err = save_with(Path::new("/nonexistent/iptables-save")).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(
            err.to_string().contains("/nonexistent/iptables-save"),
            "{err}"
        );
        let err = restore_with(Path::new("/nonexistent/iptables-restore"), b"x").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(err.to_string().contains("iptables-restore"), "{err}");
    }

    #[test]
    fn the_tool_is_looked_for_in_usr_sbin_then_sbin() {
        let t = tool("kata-rs-no-such-tool");
        assert_eq!(t, Path::new("/sbin/kata-rs-no-such-tool"));
    }

    #[test]
    fn a_restore_that_fails_is_internal_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("iptables-restore");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncat >/dev/null\necho \"bad rule $1 $2\" >&2\nexit 2\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = restore_with(&fake, b"*filter\nCOMMIT\n").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(err.to_string().contains("bad rule --wait 5"), "{err}");
    }
}
