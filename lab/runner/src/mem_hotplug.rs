//! `builtin-memory-hotplug` and `builtin-balloon-reporting` (issue 11): the built-in VMM
//! grows a sandbox's memory through kata-vmm's virtio-mem device, and takes back what the
//! guest frees through its virtio-balloon, in L1 where KVM works.
//!
//! A sandbox on the built-in VMM with `enable_virtio_mem = true` boots with [`BOOT_MIB`] and
//! room up to [`MAX_MIB`]; a container with a [`LIMIT_MIB`] memory limit makes kata-sandbox grow
//! the VM (`Hypervisor::resize_memory`: the guest's `virtio_mem` driver plugs the blocks), and
//! the container's `/proc/meminfo` shows `MemTotal` grown by what was plugged. Once the
//! container is removed kata-sandbox shrinks the VM back to `default_memory` plus what the
//! containers left ask (none: [`BOOT_MIB`]), the backend can take memory back
//! (`Capabilities::memory_shrink`), and the guest's driver unplugs; a last container reads
//! `MemTotal` again. The check fails if the guest gave nothing back and reports what it kept
//! (memory it could not offline).
//!
//! `builtin-balloon-reporting`: a sandbox with `reclaim_guest_freed_memory = true` (a balloon
//! with free page reporting); a container fills [`WRITE_MIB`] MiB of its memory (`dd`'s
//! buffer) and exits; the pages the guest then reports free are punched out of the VM's memfd, so
//! the memfd's allocated size comes back near where it was before the container.
//!
//! `KATA_LAB_MEM=1` on the host runs these checks alone (`lab.mem` on L1's command line; the
//! runner then runs no VMM set and the other checks never report).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// The balloon check's name without the VMM's prefix.
pub const BALLOON_CHECK: &str = "balloon-reporting";
/// MiB the balloon check's container writes into the guest's memory and frees.
pub const WRITE_MIB: u64 = 128;
/// How far above its size before the container the memfd may stay once the guest reported.
pub const RECLAIM_SLACK_MIB: u64 = 32;

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
    let sandbox = crate::l2_boot::build_sandbox(&builder)
        .await
        .context("the sandbox with virtio-mem did not start")?;
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
        ensure!(
            after < during,
            "MemTotal went from {before} kB to {during} kB (+{grown} kB) for a container \
             limited to {LIMIT_MIB} MiB and stayed {after} kB once it was gone: kata-sandbox \
             did not shrink the VM (or the guest gave nothing back)"
        );
        Ok(format!(
            "MemTotal {before} kB at boot ({BOOT_MIB} MiB), {during} kB (+{grown} kB) with a \
             {LIMIT_MIB} MiB container: plugged through virtio-mem; {after} kB once it is gone: \
             kata-sandbox shrank the VM, the guest unplugged {} kB{}",
            during - after,
            match after.saturating_sub(before) {
                0 => String::new(),
                kept => format!(" and kept {kept} kB it could not offline"),
            }
        ))
    }
    .await;
    crate::shut_down_clean(&sandbox, checked).await
}

/// The bytes allocated to the guest memfd of sandbox `id` (`memfd:kata-vmm:kata-<id>`, held
/// open by this process: the built-in VMM runs in it).
fn memfd_bytes(id: &str) -> Result<u64> {
    let name = format!("memfd:kata-vmm:kata-{id} ");
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let path = entry?.path();
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if link.to_string_lossy().contains(&name) {
            return Ok(std::fs::metadata(&path)?.blocks() * 512);
        }
    }
    anyhow::bail!("no descriptor of this process is the memfd {name:?}")
}

/// `builtin-balloon-reporting`.
pub async fn builtin_balloon_reclaims(rootfs: &Path, root_dir: &str) -> Result<String> {
    let kind = HypervisorType::Dragonball;
    let id = "lab-balloon";
    let hv = HypervisorConfig {
        reclaim_guest_freed_memory: true,
        ..HypervisorConfig::defaults_for(kind)
    };
    let builder = Sandbox::builder()
        .id(id)
        .hypervisor(kind)
        .hypervisor_config(hv)
        .memory_mib(512)
        .vcpus(1)
        .root_dir(root_dir);
    let sandbox = crate::l2_boot::build_sandbox(&builder)
        .await
        .context("the sandbox with a balloon did not start")?;
    let checked = async {
        const MIB: u64 = 1 << 20;
        let before = memfd_bytes(id)?;
        // dd's buffer: WRITE_MIB MiB of anonymous memory filled from /dev/zero, freed at exit.
        let bs = format!("bs={}", WRITE_MIB * MIB);
        let args = ["dd", "if=/dev/zero", "of=/dev/null", &bs, "count=1"];
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args(args))
            .await?;
        ensure!(
            out.stderr_str().contains("1+0 records out"),
            "the container did not write {WRITE_MIB} MiB: {} {}",
            out.stdout_str(),
            out.stderr_str()
        );
        let written = memfd_bytes(id)?;
        let t = Instant::now();
        let mut now = written;
        while now > before + RECLAIM_SLACK_MIB * MIB && t.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            now = memfd_bytes(id)?;
        }
        ensure!(
            now <= before + RECLAIM_SLACK_MIB * MIB,
            "the VM's memfd held {} MiB before the container filled and freed {WRITE_MIB} MiB, \
             {} MiB right after, still {} MiB after {:.0?}: the freed pages were not given back",
            before / MIB,
            written / MIB,
            now / MIB,
            t.elapsed()
        );
        Ok(format!(
            "the VM's memfd: {} MiB before a container filled and freed {WRITE_MIB} MiB, {} MiB \
             right after, {} MiB {:.1?} later (free page reporting)",
            before / MIB,
            written / MIB,
            now / MIB,
            t.elapsed()
        ))
    }
    .await;
    crate::shut_down_clean(&sandbox, checked).await
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
    }

    // The limit fits default_maxmemory (checked when the constants change, at compile time).
    const _: () = assert!(BOOT_MIB + LIMIT_MIB <= MAX_MIB);
}
