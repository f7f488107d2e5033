//! GetIPTables / SetIPTables: the guest's packet filter rules, as Kata's agent handles them.
//!
//! Kata's agent runs `iptables-save` (`ip6tables-save` for IPv6) and answers its standard
//! output, and feeds the request's data to `iptables-restore --wait 5` (`ip6tables-restore`),
//! answering its output; a restore that exits non-zero is `INTERNAL` with its standard error.
//! Each tool is looked for in `/usr/sbin`, then `/sbin`. The kata-rs guest image has no
//! iptables: there, as in a Kata guest without it, the call is `INTERNAL` naming the tool that
//! could not be run. The rules are those of the agent's network namespace (the guest's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command;
use crate::error::{AgentError, Result};
use crate::reaper::Reaper;

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

/// How long iptables-save may run.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// GetIPTables: `iptables-save`'s (`ip6tables-save`'s) standard output.
pub async fn save(reaper: &Reaper, ipv6: bool) -> Result<Vec<u8>> {
    save_with(reaper, &tool(&format!("{}-save", family(ipv6)))).await
}

async fn save_with(reaper: &Reaper, cmd: &Path) -> Result<Vec<u8>> {
    let out = command::run(reaper, cmd, None, &[], b"", SAVE_TIMEOUT)
        .await
        .map_err(|reason| AgentError::Failed {
            method: "GetIPTables",
            reason,
        })?;
    // Kata's agent answers the output whatever the exit status.
    Ok(out.stdout)
}

/// SetIPTables: `data` fed to `iptables-restore --wait 5` (`ip6tables-restore`); its standard
/// output. A non-zero exit is an error with its standard error.
pub async fn restore(reaper: &Reaper, ipv6: bool, data: &[u8]) -> Result<Vec<u8>> {
    restore_with(reaper, &tool(&format!("{}-restore", family(ipv6))), data).await
}

async fn restore_with(reaper: &Reaper, cmd: &Path, data: &[u8]) -> Result<Vec<u8>> {
    let args = ["--wait".to_string(), RESTORE_WAIT_SECS.to_string()];
    // The lock wait, then as long again to apply the rules.
    let limit = Duration::from_secs(2 * RESTORE_WAIT_SECS);
    let out = command::run(reaper, cmd, None, &args, data, limit)
        .await
        .map_err(|reason| AgentError::Failed {
            method: "SetIPTables",
            reason,
        })?;
    if out.status != 0 {
        return Err(AgentError::Failed {
            method: "SetIPTables",
            reason: format!(
                "{} failed (status {}): {}",
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

    #[tokio::test]
    async fn a_missing_tool_is_internal_naming_it() {
        // Spawning fails before the reaper is needed.
        let reaper = Reaper::new();
        let err = save_with(&reaper, Path::new("/nonexistent/iptables-save"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(
            err.to_string().contains("/nonexistent/iptables-save"),
            "{err}"
        );
        let err = restore_with(&reaper, Path::new("/nonexistent/iptables-restore"), b"x")
            .await
            .unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(err.to_string().contains("iptables-restore"), "{err}");
    }

    #[test]
    fn the_tool_is_looked_for_in_usr_sbin_then_sbin() {
        let t = tool("kata-rs-no-such-tool");
        assert_eq!(t, Path::new("/sbin/kata-rs-no-such-tool"));
    }
}
