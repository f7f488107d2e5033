//! A tokio program that embeds kata-sandbox as a service would: one sandbox, 8 commands run
//! concurrently in it, their outputs and exit codes collected.

use kata_examples::{busybox_rootfs, Steps};
use kata_sandbox::{ContainerSpec, Sandbox};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut steps = Steps::new();
    let rootfs = busybox_rootfs()?;
    let sandbox = Arc::new(Sandbox::builder().memory_mib(256).build().await?);
    steps.done("sandbox ready");

    let commands = [
        "echo hello",
        "uname -r",
        "cat /proc/cpuinfo | grep -c processor",
        "ls / | wc -l",
        "sh -c 'exit 7'",
        "id -u",
        "date +%Y",
        "printf 'x%.0s' 1 2 3",
    ];
    let mut tasks = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let sandbox = sandbox.clone();
        let rootfs = rootfs.clone();
        let cmd = cmd.to_string();
        tasks.push(tokio::spawn(async move {
            let spec = ContainerSpec::from_rootfs_dir(&rootfs)
                .id(format!("job-{i}"))
                .args(["sh", "-c", &cmd]);
            (cmd, sandbox.run(spec).await)
        }));
    }
    for t in tasks {
        let (cmd, out) = t.await?;
        let out = out?;
        println!(
            "{cmd:<40} exit {:>3}  {}",
            out.status,
            out.stdout_str().trim_end()
        );
    }
    steps.done("8 commands");
    Arc::try_unwrap(sandbox)
        .map_err(|_| anyhow::anyhow!("sandbox still shared"))?
        .shutdown()
        .await?;
    steps.done("shut down");
    Ok(())
}
