//! `builtin-memory-hotplug` (issue 11): the built-in VMM grows a sandbox's memory through
//! kata-vmm's virtio-mem device, in L1 where KVM works.
//!
//! A sandbox on the built-in VMM with `enable_virtio_mem = true` boots with [`BOOT_MIB`] and
//! room up to [`MAX_MIB`]; a container with a [`LIMIT_MIB`] memory limit makes kata-sandbox grow
//! the VM (`Hypervisor::resize_memory`: the guest's `virtio_mem` driver plugs the blocks), and
//! the container's `/proc/meminfo` shows `MemTotal` grown by what was plugged. After the
//! container is gone, a last container reads `MemTotal` again: kata-sandbox keeps the memory
//! (its sizing never shrinks memory, on any backend), which the check reports.
//!
//! `KATA_LAB_MEM=1` on the host runs this check alone (`lab.mem` on L1's command line; the
//! runner then runs no VMM set and the other checks never report).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kata_hypervisor::config::{HypervisorConfig, HypervisorType};
use kata_sandbox::oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder, Spec};
use kata_sandbox::{ContainerSpec, Sandbox};

/// The check's name without the VMM's prefix.
pub const CHECK: &str = "memory-hotplug";
/// The VM's memory at boot (`default_memory`).
pub const BOOT_MIB: u32 = 256;
/// `default_maxmemory`.
pub const MAX_MIB: u32 = 768;
/// The container's memory limit: the VM grows by this much.
pub const LIMIT_MIB: u32 = 256;

/// Whether L1's command line asks for this check alone (`lab.mem`, the host's `KATA_LAB_MEM`).
pub fn only() -> bool {
    only_in(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// [`only`] from a kernel command line: the word `lab.mem`, not a prefix of another.
fn only_in(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "lab.mem")
}

/// `MemTotal` of the guest in KiB, as a container with `spec`'s limits reads it.
async fn mem_total_kib(sandbox: &Sandbox, spec: ContainerSpec) -> Result<u64> {
    let out = sandbox
        .run(spec.args(["grep", "MemTotal", "/proc/meminfo"]))
        .await?;
    let text = out.stdout_str();
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no MemTotal in {text:?} ({})", out.stderr_str()))
}

/// An OCI spec with a memory limit of `mib` MiB.
fn limited(mib: u32) -> Result<Spec> {
    let mut spec = Spec::default();
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("a default linux section")?;
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(i64::from(mib) << 20)
                    .build()?,
            )
            .build()?,
    ));
    Ok(spec)
}

/// `builtin-memory-hotplug`.
pub async fn builtin_memory_grows(rootfs: &Path, root_dir: &str) -> Result<String> {
    let kind = HypervisorType::Dragonball;
    let hv = HypervisorConfig {
        enable_virtio_mem: true,
        default_maxmemory: MAX_MIB,
        ..HypervisorConfig::defaults_for(kind)
    };
    let builder = Sandbox::builder()
        .id("lab-mem-hotplug")
        .hypervisor(kind)
        .hypervisor_config(hv)
        .memory_mib(BOOT_MIB)
        .vcpus(1)
        .static_resources(false)
        .root_dir(root_dir);
    let sandbox = tokio::time::timeout(Duration::from_secs(300), builder.build())
        .await
        .context("no sandbox after 300 s")?
        .context("the sandbox with virtio-mem did not start")?;
    let dir = sandbox.dir().to_path_buf();
    let checked = async {
        let before = mem_total_kib(&sandbox, ContainerSpec::from_rootfs_dir(rootfs)).await?;
        let during = mem_total_kib(
            &sandbox,
            ContainerSpec::from_oci(limited(LIMIT_MIB)?, rootfs),
        )
        .await
        .context("the container with a memory limit")?;
        let grown = during.saturating_sub(before);
        let want = u64::from(LIMIT_MIB) * 1024;
        ensure!(
            grown + 4096 >= want && grown <= want + 4096,
            "MemTotal went from {before} kB to {during} kB (+{grown} kB) for a container \
             limited to {LIMIT_MIB} MiB: the VM did not grow by it"
        );
        let after = mem_total_kib(&sandbox, ContainerSpec::from_rootfs_dir(rootfs)).await?;
        Ok(format!(
            "MemTotal {before} kB at boot ({BOOT_MIB} MiB), {during} kB (+{grown} kB) with a \
             {LIMIT_MIB} MiB container: plugged through virtio-mem; {after} kB once it is gone \
             (kata-sandbox keeps grown memory)"
        ))
    }
    .await;
    let shut = sandbox.shutdown().await;
    let detail = checked?;
    shut?;
    ensure!(!dir.exists(), "{} left", dir.display());
    Ok(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_runs_alone_only_when_l1_is_told_so() {
        assert!(only_in(
            "console=ttyS0 lab.runner=/x lab.args=--vmm,builtin lab.mem"
        ));
        assert!(!only_in(
            "console=ttyS0 lab.runner=/x lab.args=--vmm,builtin"
        ));
        assert!(!only_in("lab.memory=1 lab.mem.x"));
    }

    #[test]
    fn the_limited_spec_carries_the_memory_limit() {
        let spec = limited(LIMIT_MIB).unwrap();
        let limit = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit());
        assert_eq!(limit, Some(i64::from(LIMIT_MIB) << 20));
        assert!(
            BOOT_MIB + LIMIT_MIB <= MAX_MIB,
            "the limit fits default_maxmemory"
        );
    }
}
