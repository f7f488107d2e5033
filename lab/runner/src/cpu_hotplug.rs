//! `builtin-cpu-hotplug` (issue 11): a container's CPU limit grows a built-in VM by a vCPU,
//! without ACPI, in L1 where KVM works.
//!
//! The sandbox boots [`BOOT_VCPUS`] of [`MAX_VCPUS`] vCPUs (`default_vcpus`,
//! `default_maxvcpus`): kata-vmm lists all of them in the MP table and parks the others in KVM's
//! wait-for-SIPI, the kernel boots only the first (`maxcpus=`). A first container sees CPU 0
//! online and CPU 1 present. A container with a CPU limit of one CPU (quota = period) makes
//! kata-sandbox grow the VM to two vCPUs (`Hypervisor::resize_vcpus`, then the agent's
//! `OnlineCPUMem` writes 1 to `/sys/devices/system/cpu/cpu1/online`); that container sees two
//! CPUs online (`/sys/devices/system/cpu/online`, `nproc`, `/proc/cpuinfo`) and runs a busy
//! loop pinned to CPU 1 (`taskset -c 1`) whose time shows in CPU 1's `/proc/stat` counters.
//! The built-in VMM does not take vCPUs back (the agent has no offline call): a last container
//! reports what stays online once the limited one is gone.
//!
//! Without parked vCPUs (before this check's change `default_maxvcpus` was inert) the VM has
//! one CPU, present and online, and the check fails at the first container.
//!
//! Runs in the built-in VMM's set and with `KATA_LAB_MEM=1` (the memory checks' filter).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kata_hypervisor::config::{HypervisorConfig, HypervisorType};
use kata_sandbox::oci_spec::runtime::{LinuxCpuBuilder, LinuxResourcesBuilder, Spec};
use kata_sandbox::{ContainerSpec, Sandbox};

/// The check's name without the VMM's prefix.
pub const CHECK: &str = "cpu-hotplug";
/// `default_vcpus`.
pub const BOOT_VCPUS: u32 = 1;
/// `default_maxvcpus` (L1 has two CPUs: the built-in VMM parks no more than the host has).
pub const MAX_VCPUS: u32 = 2;
/// The CFS period of the limited container, in µs; its quota is the same: one CPU.
const PERIOD_US: u64 = 100_000;
/// How long the pinned busy loop runs, in seconds.
const SPIN_S: u32 = 2;
/// The least CPU 1 must have worked during the loop, in USER_HZ ticks (1/100 s): a quarter of
/// the loop, for a slow nested L2.
const MIN_TICKS: u64 = 50;

/// What the limited container prints: the online CPUs, `nproc`, `/proc/cpuinfo`'s processors,
/// CPU 1's line of `/proc/stat` before and after a busy loop pinned to CPU 1.
const SCRIPT: &str =
    "cat /sys/devices/system/cpu/online; nproc; grep -c ^processor /proc/cpuinfo; \
grep '^cpu1 ' /proc/stat; taskset -c 1 timeout SPIN sh -c 'while :; do :; done'; \
grep '^cpu1 ' /proc/stat; true";

/// An OCI spec limited to `cpus` CPUs (`linux.resources.cpu`: quota = cpus x period).
fn limited(cpus: u32) -> Result<Spec> {
    let mut spec = Spec::default();
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("a default linux section")?;
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(i64::from(cpus) * PERIOD_US as i64)
                    .period(PERIOD_US)
                    .build()?,
            )
            .build()?,
    ));
    Ok(spec)
}

/// The busy ticks (user, nice, system) of a `/proc/stat` CPU line (`cpu1 u n s idle ...`).
fn busy_ticks(line: &str) -> Option<u64> {
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 3).then(|| fields.iter().sum())
}

/// What the limited container saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    online: String,
    nproc: String,
    processors: String,
    /// CPU 1's busy ticks before and after the loop.
    ticks: (u64, u64),
}

/// Parses [`SCRIPT`]'s output.
fn parse(out: &str) -> Result<Seen> {
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure!(lines.len() >= 5, "expected 5 lines, got {out:?}");
    let ticks = |l: &str| busy_ticks(l).with_context(|| format!("no cpu1 counters in {l:?}"));
    Ok(Seen {
        online: lines[0].into(),
        nproc: lines[1].into(),
        processors: lines[2].into(),
        ticks: (ticks(lines[3])?, ticks(lines[4])?),
    })
}

/// `builtin-cpu-hotplug`.
pub async fn builtin_cpus_grow(rootfs: &Path, root_dir: &str) -> Result<String> {
    let kind = HypervisorType::Dragonball;
    let hv = HypervisorConfig {
        default_maxvcpus: MAX_VCPUS,
        ..HypervisorConfig::defaults_for(kind)
    };
    let builder = Sandbox::builder()
        .id("lab-cpu-hotplug")
        .hypervisor(kind)
        .hypervisor_config(hv)
        .memory_mib(256)
        .vcpus(BOOT_VCPUS)
        .static_resources(false)
        .root_dir(root_dir);
    let sandbox = tokio::time::timeout(Duration::from_secs(300), builder.build())
        .await
        .context("no sandbox after 300 s")?
        .context("the sandbox with a parked vCPU did not start")?;
    let sys = "cat /sys/devices/system/cpu/online /sys/devices/system/cpu/present";
    let checked = async {
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args(["sh", "-c", sys]))
            .await?;
        let boot = out
            .stdout_str()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        ensure!(
            boot == "0 0-1",
            "at boot the guest's online and present CPUs are {boot:?} ({}), not \"0 0-1\": \
             CPU 1 is not parked (default_vcpus = {BOOT_VCPUS}, default_maxvcpus = {MAX_VCPUS})",
            out.stderr_str().trim()
        );
        let script = SCRIPT.replace("SPIN", &SPIN_S.to_string());
        let out = sandbox
            .run(ContainerSpec::from_oci(limited(1)?, rootfs).args(["sh", "-c", &script]))
            .await
            .context("the container with a CPU limit of 1")?;
        let seen = parse(&out.stdout_str())
            .with_context(|| format!("the limited container ({})", out.stderr_str().trim()))?;
        ensure!(
            seen.online == "0-1" && seen.nproc == "2" && seen.processors == "2",
            "with a container limited to one CPU the guest has {seen:?}: kata-sandbox did not \
             grow the VM to 2 vCPUs, or the guest did not online CPU 1 ({})",
            out.stderr_str().trim()
        );
        let worked = seen.ticks.1.saturating_sub(seen.ticks.0);
        ensure!(
            worked >= MIN_TICKS,
            "CPU 1 worked {worked} ticks during a {SPIN_S} s loop pinned to it (at least \
             {MIN_TICKS}): {seen:?} ({})",
            out.stderr_str().trim()
        );
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args(["sh", "-c", sys]))
            .await?;
        let after = out
            .stdout_str()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(format!(
            "online/present {boot:?} at boot ({BOOT_VCPUS} of {MAX_VCPUS} vCPUs, one parked); \
             a container limited to 1 CPU saw online {:?}, nproc {}, {} processors, and CPU 1 \
             worked {worked} of {} ticks of a loop pinned to it; {after:?} once it is gone \
             (not taken back)",
            seen.online,
            seen.nproc,
            seen.processors,
            SPIN_S * 100
        ))
    }
    .await;
    // A failure carries the guest's last console lines (a CPU that failed to boot, a lockup or
    // a stall while CPU 1 came up), read before the shutdown drops them.
    let checked = checked.map_err(|e| {
        let tail = sandbox.console_tail(40);
        e.context(format!(
            "the guest console's last lines: {:?}",
            tail.join(" | ")
        ))
    });
    crate::shut_down_clean(&sandbox, checked).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_output_is_parsed_and_cpu1_ticks_counted() {
        let out = "0-1\n2\n2\ncpu1 10 1 5 900 0 0 0 0 0 0\ncpu1 190 1 25 950 0 0 0 0 0 0\n";
        let seen = parse(out).unwrap();
        assert_eq!(seen.online, "0-1");
        assert_eq!(seen.ticks, (16, 216));
        assert!(parse("0\n1\n1\n").is_err(), "one CPU: no cpu1 lines");
        assert!(parse("0\n1\n1\ncpu1 x\ncpu1 1 2 3\n").is_err());
        assert_eq!(busy_ticks("cpu1 1 2"), None);
    }

    #[test]
    fn the_limited_spec_asks_for_one_cpu() {
        let spec = limited(1).unwrap();
        let cpu = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.cpu().clone())
            .unwrap();
        assert_eq!(
            (cpu.quota(), cpu.period()),
            (Some(100_000), Some(PERIOD_US))
        );
    }

    const _: () = assert!(MAX_VCPUS > BOOT_VCPUS);
}
