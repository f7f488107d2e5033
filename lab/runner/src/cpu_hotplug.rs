//! `builtin-cpu-hotplug` (issue 11): a container's CPU limit grows a built-in VM by a vCPU,
//! without ACPI, in L1 where KVM works, and the VM gives it back when the container leaves.
//!
//! The sandbox boots [`BOOT_VCPUS`] of [`MAX_VCPUS`] vCPUs (`default_vcpus`,
//! `default_maxvcpus`): kata-vmm lists all of them in the MP table and parks the others (their
//! threads blocked outside `KVM_RUN`), the kernel boots only the first (`maxcpus=`). A first
//! container sees CPU 0 online and CPU 1 present, and the runner sees vCPU 1's thread
//! (`kata-vcpu-1`, in this process: the VMM is in-process) parked: blocked in `futex`
//! (`/proc/self/task/<tid>/syscall`), not in `KVM_RUN`'s `ioctl`. A container with a CPU limit
//! of one CPU (quota = period) makes kata-sandbox grow the VM to two vCPUs
//! (`Hypervisor::resize_vcpus`, then the agent's `OnlineCPUMem` writes 1 to
//! `/sys/devices/system/cpu/cpu1/online`); that container sees two CPUs online
//! (`/sys/devices/system/cpu/online`, `nproc`, `/proc/cpuinfo`) and runs a busy loop pinned to
//! CPU 1 (`taskset -c 1`) whose time shows in CPU 1's `/proc/stat` counters.
//!
//! When it leaves, kata-sandbox shrinks the VM: the agent takes CPU 1 offline (kata-rs's
//! `kata_rs.GuestService/OfflineCPUs`), then `resize_vcpus(1)` revokes vCPU 1's grant and
//! kata-vmm parks it again. The next container reads online `0` and busy-loops while the
//! runner sees vCPU 1's thread parked again with its CPU time (`utime`, `stime` of
//! `/proc/self/task/<tid>/stat`) standing still. A second limited container grows the VM
//! again (online `0-1`, `nproc` 2, CPU 1 works), and once it is gone CPU 1 is given back again.
//! Last a hostile guest: a container with `/sys` read-write and `CAP_SYS_ADMIN` onlines CPU 1
//! itself, without a grant: the write must reach the kernel and fail (the INIT/SIPI stays
//! pending in KVM; Linux gives up after 10 s, `EIO`), online stays `0` and vCPU 1's thread
//! stays parked with its CPU time unchanged.
//!
//! Without the shrink (before this check's change the built-in VMM kept the vCPUs it granted)
//! the container after the limited one reads online `0-1` and the check fails there.
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

/// What a container without a limit prints once the limited one is gone: the online CPUs and
/// `nproc`, then it busy-loops [`SPIN_S`] seconds (on the CPUs the guest has).
const AFTER_SCRIPT: &str =
    "cat /sys/devices/system/cpu/online; nproc; timeout SPIN sh -c 'while :; do :; done'; true";

/// x86-64's `futex` system call number: what a parked vCPU thread (a condition variable's
/// wait) is blocked in. In `KVM_RUN` it is in `ioctl` (16).
const SYS_FUTEX: &str = "202";

/// The kernel id of this process's thread named `name` (exactly one).
fn thread_named(name: &str) -> Result<u32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").context("/proc/self/task")? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            found.push(task.file_name().to_string_lossy().parse::<u32>()?);
        }
    }
    ensure!(
        found.len() == 1,
        "expected one thread named {name} in this process, found {found:?}"
    );
    Ok(found[0])
}

/// A thread's `utime + stime` (clock ticks) from its `/proc/.../stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The fields after the command name (which may hold spaces), from `state` (field 3) on.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// What thread `tid` does now: its CPU ticks, and the system call it is blocked in (the first
/// field of `/proc/self/task/<tid>/syscall`: a number, or `running`).
fn thread_now(tid: u32) -> Result<(u64, String)> {
    let dir = format!("/proc/self/task/{tid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).context("the thread's stat")?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("no CPU times in {stat:?}"))?;
    let syscall =
        std::fs::read_to_string(format!("{dir}/syscall")).context("the thread's syscall")?;
    let call = syscall.split_whitespace().next().unwrap_or("").to_string();
    Ok((ticks, call))
}

/// vCPU 1's thread is parked: blocked in `futex` (read a few times: a thread kicked out of
/// `KVM_RUN` is in `ioctl` for a moment before it parks). Returns its CPU ticks.
async fn vcpu1_parked(tid: u32, when: &str) -> Result<u64> {
    let mut last = String::new();
    for _ in 0..50 {
        let (ticks, call) = thread_now(tid)?;
        if call == SYS_FUTEX {
            return Ok(ticks);
        }
        last = call;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "{when}: vCPU 1's thread (kata-vcpu-1, tid {tid}) is in system call {last:?} for 5 s, \
         not parked (futex, {SYS_FUTEX}; `ioctl` 16 is KVM_RUN)"
    )
}

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

/// What the hostile container runs: it writes 1 to CPU 1's `online` itself (no grant), and
/// prints the write's exit code, how long it took, its error, then the online CPUs.
const HOSTILE_SCRIPT: &str = "t0=$(date +%s); \
err=$(sh -c 'echo 1 > /sys/devices/system/cpu/cpu1/online' 2>&1); rc=$?; t1=$(date +%s); \
echo \"rc=$rc $((t1 - t0))s $err\"; cat /sys/devices/system/cpu/online";

/// A spec that may write to sysfs as the guest's root: `/sys` read-write, `CAP_SYS_ADMIN`, no
/// masked or read-only paths (a guest user that takes over the guest, or a container given
/// that much).
fn privileged() -> Result<Spec> {
    let mut spec = Spec::default();
    crate::vfio::privileged(&mut spec, &[])?;
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
    let sandbox = crate::l2_boot::build_sandbox(&builder)
        .await
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
        let tid = thread_named("kata-vcpu-1")?;
        vcpu1_parked(tid, "at boot").await?;
        let script = SCRIPT.replace("SPIN", &SPIN_S.to_string());
        let after_script = AFTER_SCRIPT.replace("SPIN", &SPIN_S.to_string());
        let mut legs = Vec::new();
        for round in 1..=2 {
            let out = sandbox
                .run(ContainerSpec::from_oci(limited(1)?, rootfs).args(["sh", "-c", &script]))
                .await
                .with_context(|| format!("the container with a CPU limit of 1 (round {round})"))?;
            let seen = parse(&out.stdout_str()).with_context(|| {
                format!(
                    "the limited container, round {round} ({})",
                    out.stderr_str().trim()
                )
            })?;
            ensure!(
                seen.online == "0-1" && seen.nproc == "2" && seen.processors == "2",
                "round {round}: with a container limited to one CPU the guest has {seen:?}: \
                 kata-sandbox did not grow the VM to 2 vCPUs, or the guest did not online CPU 1 \
                 ({})",
                out.stderr_str().trim()
            );
            let worked = seen.ticks.1.saturating_sub(seen.ticks.0);
            ensure!(
                worked >= MIN_TICKS,
                "round {round}: CPU 1 worked {worked} ticks during a {SPIN_S} s loop pinned to \
                 it (at least {MIN_TICKS}): {seen:?} ({})",
                out.stderr_str().trim()
            );
            // Gone: CPU 1 is given back (offline in the guest, vCPU 1 parked on the host).
            let before = vcpu1_parked(
                tid,
                &format!("round {round}, once the limited container left"),
            )
            .await?;
            let out = sandbox
                .run(ContainerSpec::from_rootfs_dir(rootfs).args(["sh", "-c", &after_script]))
                .await?;
            let after: Vec<String> = out
                .stdout_str()
                .lines()
                .map(|l| l.trim().to_string())
                .collect();
            ensure!(
                after.first().map(String::as_str) == Some("0")
                    && after.get(1).map(String::as_str) == Some("1"),
                "round {round}: once the limited container left the guest reads online/nproc \
                 {after:?}, not [\"0\", \"1\"]: CPU 1 was not given back ({})",
                out.stderr_str().trim()
            );
            let (ticks, call) = thread_now(tid)?;
            ensure!(
                ticks == before && call == SYS_FUTEX,
                "round {round}: vCPU 1's thread ran while parked: {before} -> {ticks} ticks, in \
                 system call {call:?}, during a {SPIN_S} s busy loop in the guest"
            );
            legs.push(format!(
                "round {round}: online {:?}, nproc {}, {} processors, CPU 1 worked {worked} of \
                 {} ticks pinned; after it online {:?}, nproc {}, kata-vcpu-1 parked (futex, \
                 {before} -> {ticks} ticks over a {SPIN_S} s busy loop)",
                seen.online,
                seen.nproc,
                seen.processors,
                SPIN_S * 100,
                after[0],
                after[1],
            ));
        }
        // A hostile guest: root in the guest onlines CPU 1 itself, without a grant. The
        // INIT/SIPI stays pending in KVM: the guest's kernel gives up on the CPU, and vCPU 1's
        // thread stays parked, using no host CPU.
        let before = vcpu1_parked(tid, "before the hostile online").await?;
        let out = sandbox
            .run(ContainerSpec::from_oci(privileged()?, rootfs).args(["sh", "-c", HOSTILE_SCRIPT]))
            .await
            .context("the container that onlines CPU 1 itself")?;
        let lines: Vec<String> = out
            .stdout_str()
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        let attempt = lines.first().cloned().unwrap_or_default();
        ensure!(
            !attempt.starts_with("rc=0")
                && !attempt.contains("Read-only")
                && !attempt.contains("Permission denied")
                && attempt.starts_with("rc="),
            "the guest's own write of 1 to cpu1/online answered {attempt:?}: it must reach the \
             kernel and fail (the CPU cannot boot without a grant) ({})",
            out.stderr_str().trim()
        );
        let (ticks, call) = thread_now(tid)?;
        ensure!(
            lines.get(1).map(String::as_str) == Some("0") && ticks == before && call == SYS_FUTEX,
            "a guest that onlined CPU 1 by itself got it: online {:?}, kata-vcpu-1 {before} -> \
             {ticks} ticks, in system call {call:?}",
            lines.get(1)
        );
        Ok(format!(
            "online/present {boot:?} at boot ({BOOT_VCPUS} of {MAX_VCPUS} vCPUs, kata-vcpu-1 \
             parked in futex); {}; the guest's own `echo 1 > cpu1/online` ({attempt}) left online \
             \"0\" and kata-vcpu-1 parked ({before} -> {ticks} ticks)",
            legs.join("; ")
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
    fn a_threads_cpu_time_is_read_past_a_command_with_spaces() {
        let stat = "4242 (kata vcpu) S 1 1 1 0 -1 4194368 0 0 0 0 120 35 0 0 20 0 1 0 99";
        assert_eq!(cpu_ticks(stat), Some(155));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_threads_are_found_by_name() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("lab-probe-1".into())
            .spawn(move || {
                // Named by now (the new thread names itself before this runs).
                ready_tx.send(()).unwrap();
                rx.recv()
            })
            .unwrap();
        ready.recv().unwrap();
        let tid = thread_named("lab-probe-1").unwrap();
        // Blocked in the channel's wait (once it got there): a futex, as a parked vCPU.
        let mut call = String::new();
        for _ in 0..200 {
            call = thread_now(tid).unwrap().1;
            if call == SYS_FUTEX {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(call, SYS_FUTEX);
        tx.send(()).unwrap();
        t.join().unwrap().unwrap();
        assert!(thread_named("lab-probe-1").is_err(), "gone");
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
