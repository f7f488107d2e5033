//! The built-in VMM as the default, and Kata's `configuration-dragonball.toml` for real (issue
//! 11 item 3), in L1 where KVM passes the built-in VMM's probe:
//!
//! * `builtin-default-vmm`: [`kata_hypervisor::kvm::default_hypervisor`] picks the built-in
//!   VMM, and a builder with nothing configured ([`Sandbox::builder`]) starts from
//!   `[hypervisor.dragonball]` with that section's own defaults (inline virtio-fs);
//! * `builtin-dragonball-config`: a sandbox built from `config/configuration-dragonball.toml`
//!   as shipped (its memory, vCPUs, share and agent timeouts; only the sandbox's id and root
//!   directory are the lab's) boots on the built-in VMM, a container runs in it and sees the
//!   file's `default_memory`, and the shutdown leaves nothing.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use kata_hypervisor::config::{HypervisorType, SharedFs};
use kata_sandbox::{ContainerSpec, Sandbox};

/// The shipped configuration file, as built into the runner: L1 sees the host's root, but with
/// a tmpfs on `/tmp`, so a checkout under `/tmp` (a CI clone) is not there to read.
const DRAGONBALL_TOML: &str = include_str!("../../../config/configuration-dragonball.toml");

/// Writes the shipped configuration file into a fresh directory under `$TMPDIR` (L1's tmpfs)
/// and returns its path.
pub fn dragonball_toml() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kata-lab-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("configuration-dragonball.toml");
    std::fs::write(&file, DRAGONBALL_TOML)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

/// `builtin-default-vmm`.
pub fn builtin_is_the_default() -> Result<String> {
    let chosen = kata_hypervisor::kvm::default_hypervisor();
    ensure!(
        chosen.kind == HypervisorType::Dragonball,
        "the default hypervisor is {}: {}",
        chosen.kind,
        chosen.reason
    );
    let config = Sandbox::builder()
        .finish()
        .context("a builder with nothing configured")?;
    ensure!(
        config.hypervisor_type == HypervisorType::Dragonball
            && config.hypervisor.shared_fs == SharedFs::InlineVirtioFs,
        "a builder with nothing configured starts from {} with shared_fs {}",
        config.hypervisor_type,
        config.hypervisor.shared_fs
    );
    Ok(format!(
        "{} ({}); a builder with nothing configured starts from [hypervisor.dragonball] with \
         shared_fs = inline-virtio-fs",
        chosen.kind, chosen.reason
    ))
}

/// `builtin-dragonball-config`.
pub async fn dragonball_config_runs(rootfs: &Path, root_dir: &str) -> Result<String> {
    let file = dragonball_toml()?;
    let builder = kata_sandbox::SandboxBuilder::from_config_file(&file)
        .with_context(|| format!("loading {}", file.display()))?;
    let config = builder
        .clone()
        .finish()
        .context("the loaded configuration")?;
    let memory = config.hypervisor.default_memory;
    let (kind, share) = (config.hypervisor_type, config.hypervisor.shared_fs);
    ensure!(
        kind == HypervisorType::Dragonball && share == SharedFs::InlineVirtioFs,
        "{} selects {kind} with shared_fs {share}",
        file.display()
    );
    let builder = builder.id("lab-dragonball-toml").root_dir(root_dir);
    let sandbox = crate::l2_boot::build_sandbox(&builder)
        .await
        .with_context(|| format!("the sandbox of {} did not start", file.display()))?;
    let checked = async {
        let backend = sandbox
            .describe()
            .into_iter()
            .find(|(k, _)| *k == "hypervisor")
            .map(|(_, v)| v)
            .unwrap_or_default();
        ensure!(backend == "dragonball", "the sandbox runs on {backend:?}");
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args(["grep", "MemTotal", "/proc/meminfo"]))
            .await?;
        let text = out.stdout_str();
        let kib: u64 = text
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no MemTotal in {text:?} ({})", out.stderr_str()))?;
        // The kernel keeps some memory for itself: MemTotal is a little under the VM's size.
        ensure!(
            kib > u64::from(memory) * 1024 * 8 / 10 && kib <= u64::from(memory) * 1024,
            "the guest has {kib} KiB, the file's default_memory is {memory} MiB"
        );
        Ok(format!(
            "{}: [hypervisor.dragonball] on {backend}, a container saw MemTotal {kib} kB of the \
             file's default_memory = {memory} MiB",
            file.display()
        ))
    }
    .await;
    crate::shut_down_clean(&sandbox, checked).await
}
