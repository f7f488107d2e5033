//! Tier 3 (QEMU, TCG here): a VM with `enable_virtio_mem = true` grows for a container's memory
//! limit and gives the memory back when the container leaves (issue 11).
//!
//! QEMU gets a `virtio-mem-pci` device over a shared memfd region (kata-hypervisor's
//! `qemu::virtio_mem`); a container limited to [`LIMIT_MIB`] makes kata-sandbox grow the VM
//! (`qom-set requested-size`, the guest's `virtio_mem` driver plugs), and its `MemTotal` shows
//! it; once it is removed kata-sandbox shrinks the VM back (`Capabilities::memory_shrink`) and
//! the next container's `MemTotal` is lower again. The figures are printed; the test asserts
//! the growth and that memory went down (what the guest could not offline may stay).
//!
//! Across a hand-over: a sandbox grown for a running container is detached and restored (a
//! restarted shim); the restored sandbox knows the VM's size and the container's demand from
//! `state.json`, so removing the container there shrinks the VM too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_sandbox::{ContainerSpec, HypervisorConfig, HypervisorType, ProcessSpec, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

#[path = "support/busybox_root.rs"]
mod busybox_root;
use busybox_root::Env;

/// The VM's memory at boot (`default_memory`).
const BOOT_MIB: u32 = 256;
/// `default_maxmemory`: a 512 MiB virtio-mem region above boot memory.
const MAX_MIB: u32 = 768;
/// The container's memory limit: the VM grows by this much.
const LIMIT_MIB: u32 = 256;

/// Prints the guest's `MemTotal` in KiB once it is above `above` KiB, waiting up to 20 s for
/// hot-added memory to come online (it prints the last value read if it never does).
fn mem_total_script(above: u64) -> String {
    format!(
        "i=0; while :; do m=$(awk '/MemTotal/ {{ print $2 }}' /proc/meminfo); \
         [ \"$m\" -gt {above} ] || [ $i -ge 40 ] && break; i=$((i+1)); sleep 0.5; done; echo $m"
    )
}

/// `MemTotal` in KiB as a container with `oci`'s limits (or none) reads it.
async fn mem_total(
    sb: &Sandbox,
    env: &Env,
    oci: Option<oci_spec::runtime::Spec>,
    above: u64,
) -> Result<u64> {
    let script = mem_total_script(above);
    let args = ["sh", "-c", script.as_str()];
    let spec = match oci {
        Some(oci) => ContainerSpec::from_oci(oci, &env.rootfs).args(args),
        None => ContainerSpec::from_rootfs_dir(&env.rootfs).args(args),
    };
    let out = sb.run(spec).await?;
    ensure!(out.status.success(), "{}: {}", out.status, out.stderr_str());
    let text = out.stdout_str();
    text.trim()
        .parse()
        .with_context(|| format!("no MemTotal in {text:?}"))
}

/// An OCI spec with a memory limit of `mib` MiB.
fn limited(mib: u32) -> oci_spec::runtime::Spec {
    let mut oci = oci_spec::runtime::Spec::default();
    let mut linux = oci.linux().clone().unwrap_or_default();
    let mut res = linux.resources().clone().unwrap_or_default();
    let mut mem = oci_spec::runtime::LinuxMemory::default();
    mem.set_limit(Some(i64::from(mib) << 20));
    res.set_memory(Some(mem));
    linux.set_resources(Some(res));
    oci.set_linux(Some(linux));
    oci
}

/// A QEMU sandbox `id` of [`BOOT_MIB`] with virtio-mem up to [`MAX_MIB`], dynamically sized.
async fn boot(env: &Env, id: &str) -> Result<Sandbox> {
    let kind = HypervisorType::Qemu;
    let hv = HypervisorConfig {
        enable_virtio_mem: true,
        default_maxmemory: MAX_MIB,
        ..Sandbox::builder().hypervisor(kind).config().clone()
    };
    let sb = Sandbox::builder()
        .id(id)
        .hypervisor(kind)
        .hypervisor_config(hv)
        .memory_mib(BOOT_MIB)
        .vcpus(1)
        .static_resources(false)
        .root_dir(&env.root)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    Ok(sb)
}

async fn case_a_leaving_container_gives_memory_back(env: Arc<Env>) -> Result<()> {
    let sb = boot(&env, "vm-mem-shrink").await?;
    let checked = async {
        let qemu: Vec<String> = processes_mentioning(&sb.dir().display().to_string(), "vm_mem")
            .into_iter()
            .map(|(_, cmd)| cmd)
            .filter(|cmd| cmd.contains("qemu"))
            .collect();
        ensure!(
            qemu.iter().any(|c| c.contains("virtio-mem-pci,id=vmem0")),
            "QEMU has no virtio-mem device: {qemu:?}"
        );
        // The firmware the VM booted (the device works under qboot and SeaBIOS alike).
        let firmware = if qemu.iter().any(|c| c.contains("qboot")) {
            "qboot"
        } else {
            "QEMU's default firmware"
        };
        let before = mem_total(&sb, &env, None, 0).await?;
        let want = u64::from(LIMIT_MIB) * 1024;
        let t = Instant::now();
        let during = mem_total(&sb, &env, Some(limited(LIMIT_MIB)), before + want - 4096).await?;
        let grown_and_removed = t.elapsed();
        let grown = during.saturating_sub(before);
        ensure!(
            grown + 4096 >= want && grown <= want + 4096,
            "MemTotal went from {before} kB to {during} kB (+{grown} kB) for a container limited \
             to {LIMIT_MIB} MiB: the VM did not grow by it"
        );
        let after = mem_total(&sb, &env, None, 0).await?;
        ensure!(
            after < during,
            "MemTotal {before} kB at boot, {during} kB with the {LIMIT_MIB} MiB container, still \
             {after} kB once it was removed: the VM did not shrink"
        );
        println!(
            "vm_mem_shrink: MemTotal {before} kB at boot ({BOOT_MIB} MiB), {during} kB (+{grown} \
             kB) with a {LIMIT_MIB} MiB container, {after} kB once it was removed (given back \
             {} kB, kept {} kB); the limited container's run (grow, create, read, remove, \
             shrink) took {:.1?}; booted with {firmware}",
            during - after,
            after.saturating_sub(before),
            grown_and_removed
        );
        Ok(())
    }
    .await;
    let dir = sb.dir().to_path_buf();
    sb.shutdown().await?;
    checked?;
    ensure!(!dir.exists(), "{} left", dir.display());
    let procs = processes_mentioning(&env.root.display().to_string(), "vm_mem");
    ensure!(procs.is_empty(), "processes left: {procs:?}");
    let mounts = mounts_under(&env.root);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}

/// The VM's memory in MiB as `state.json` in `dir` keeps it (the `sizing` section).
fn saved_memory_mib(dir: &std::path::Path) -> Result<u64> {
    fn find(v: &serde_json::Value) -> Option<u64> {
        match v {
            serde_json::Value::Object(m) => m
                .get("sizing")
                .and_then(|s| s.get("memory_mib"))
                .and_then(serde_json::Value::as_u64)
                .or_else(|| m.values().find_map(find)),
            serde_json::Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    let text = std::fs::read_to_string(dir.join("state.json"))?;
    find(&serde_json::from_str(&text)?).context("no sizing.memory_mib in state.json")
}

async fn case_a_restored_sandbox_gives_memory_back(env: Arc<Env>) -> Result<()> {
    let sb = boot(&env, "vm-mem-restore").await?;
    let dir = sb.dir().to_path_buf();
    let before = mem_total(&sb, &env, None, 0).await?;
    let want = u64::from(LIMIT_MIB) * 1024;
    let c = sb
        .create_container(
            ContainerSpec::from_oci(limited(LIMIT_MIB), &env.rootfs)
                .id("c1")
                .args(["sleep", "1000"]),
        )
        .await?;
    c.start().await?;
    let script = mem_total_script(before + want - 4096);
    let out = c
        .exec(ProcessSpec::new(["sh", "-c", script.as_str()]))
        .await?
        .output()
        .await?;
    let during: u64 = out.stdout_str().trim().parse().context("MemTotal in c1")?;
    drop(c);
    let saved_grown = saved_memory_mib(&dir)?;
    sb.detach().await?;
    let sb = Sandbox::restore(&dir).await?;
    let checked = async {
        let c = sb.container("c1")?;
        c.kill(kata_sandbox::Signal::KILL).await?;
        c.wait().await?;
        c.delete().await?;
        let saved_shrunk = saved_memory_mib(&dir)?;
        let after = mem_total(&sb, &env, None, 0).await?;
        ensure!(
            during >= before + want - 4096,
            "MemTotal {before} kB at boot, {during} kB with c1 limited to {LIMIT_MIB} MiB: the VM \
             did not grow"
        );
        ensure!(
            saved_grown == u64::from(BOOT_MIB + LIMIT_MIB),
            "state.json kept {saved_grown} MiB for the grown VM"
        );
        ensure!(
            after < during && saved_shrunk < saved_grown,
            "after the hand-over, removing c1 left MemTotal at {after} kB ({during} kB with it) and \
             state.json at {saved_shrunk} MiB: the restored sandbox did not shrink the VM"
        );
        println!(
            "vm_mem_shrink (restored): MemTotal {before} kB at boot, {during} kB with c1 ({LIMIT_MIB} \
             MiB), state.json {saved_grown} MiB; c1 removed by the restored sandbox: {after} kB, \
             state.json {saved_shrunk} MiB"
        );
        Ok(())
    }
    .await;
    sb.shutdown().await?;
    checked?;
    ensure!(!dir.exists(), "{} left", dir.display());
    let mounts = mounts_under(&env.root);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_mem_shrink")
        .timeout(Duration::from_secs(600))
        .case(
            "a_leaving_container_gives_memory_back",
            case_a_leaving_container_gives_memory_back,
        )
        .case(
            "a_restored_sandbox_gives_memory_back",
            case_a_restored_sandbox_gives_memory_back,
        )
        .on_failure(Env::cleanup_all)
        .run_with(Env::setup())
}
