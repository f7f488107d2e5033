//! `builtin-console`: the guest's console through kata-vmm's virtio console (issue 11's console
//! device). The built-in backend boots L2 with `console=ttyS0 console=hvc0`, so `/dev/console`
//! — the agent's stdio — is `hvc0`; the agent's "kata-agent serving" line, printed there only,
//! must be in what the runtime reads back ([`Sandbox::console_tail`]), and a container must see
//! `console=hvc0` as the guest's last console on its kernel command line.

use std::path::Path;

use anyhow::{ensure, Result};
use kata_sandbox::{ContainerSpec, Sandbox};

/// The line the agent prints on its stdio when it serves.
const AGENT_LINE: &str = "kata-agent serving";

/// The check, on a running built-in sandbox.
pub async fn guest_line_on_the_virtio_console(sandbox: &Sandbox, rootfs: &Path) -> Result<String> {
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(rootfs).args(["cat", "/proc/cmdline"]))
        .await?;
    let cmdline = out.stdout_str();
    let last_console = cmdline
        .split_whitespace()
        .filter_map(|p| p.strip_prefix("console="))
        .next_back()
        .unwrap_or_default()
        .to_string();
    ensure!(
        last_console == "hvc0",
        "the guest's /dev/console is {last_console:?}, not hvc0: {cmdline:?}"
    );
    let tail = sandbox.console_tail(400);
    let line = tail.iter().find(|l| l.contains(AGENT_LINE)).cloned();
    ensure!(
        line.is_some(),
        "no {AGENT_LINE:?} in the console's last {} lines: {:?}",
        tail.len(),
        tail.iter().rev().take(5).collect::<Vec<_>>()
    );
    Ok(format!(
        "/dev/console is hvc0; read back from the virtio console: {:?}",
        line.unwrap_or_default()
    ))
}
