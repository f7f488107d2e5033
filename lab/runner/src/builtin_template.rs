//! `builtin-template` (issue 15): VM templating with the built-in VMM (`enable_template` with
//! `[hypervisor.dragonball]`: kata-vmm's snapshot and restore), in L1 where KVM works.
//!
//! A fresh sandbox (no template) boots first as the reference and runs a container. Then two
//! sandboxes with `enable_template = true` and a template directory of their own
//! ([`TEMPLATE_DIR`], emptied first): the first finds no template, so it makes one (a VM booted
//! to its agent, saved by kata-vmm's snapshot, ended) and starts restored from it; the second
//! is restored from it. Each sandbox runs its container from a rootfs copy of its own holding
//! a marker file named after it (`/lab-mark-<id>`), through its own inline virtio-fs share.
//!
//! The check holds when both clones run while the runner maps the template's memory file
//! (their guest RAM: the file mapped private, not a memfd of their own), each clone's
//! container sees its own marker and not the other's (each share is the clone's own backend
//! over its own directory, restored with the template's queue state), the clones' random
//! streams differ (`boot_id`, `/dev/urandom`: the agent's reseed of a clone), each clone's
//! clock is the host's, and after the shutdowns no sandbox directory is left while the template
//! stays (lock, memory, state, manifest; the template VM's own directory removed).
//!
//! Figures (not asserted): `build()` of a clone against the fresh boot, and the PSS of a clone's
//! guest memory (the template file's mappings, shared between the two clones) against the
//! fresh VM's (its memfd).
//!
//! `KATA_LAB_TEMPLATE=builtin` on the host runs this check alone (`lab.template=builtin` on
//! L1's command line; the runner then runs no VMM set and the other checks never report).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_hypervisor::config::{HypervisorConfig, HypervisorType};
use kata_sandbox::Sandbox;

/// The check's name without the VMM's prefix.
pub const CHECK: &str = "template";
/// The template directory (L1's `/run` is a tmpfs).
pub const TEMPLATE_DIR: &str = "/run/kata-lab-builtin-template";

/// Whether L1's command line asks for this check alone (`lab.template=builtin`).
pub fn only() -> bool {
    only_in(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// [`only`] from a kernel command line.
fn only_in(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w == "lab.template=builtin")
}

/// A 256 MiB, 1 vCPU built-in sandbox, templated or not.
fn builder(id: &str, root_dir: &str, template: bool) -> kata_sandbox::SandboxBuilder {
    let kind = HypervisorType::Dragonball;
    let mut hv = HypervisorConfig::defaults_for(kind);
    hv.factory.enable_template = template;
    hv.factory.template_path = TEMPLATE_DIR.into();
    Sandbox::builder()
        .id(id)
        .hypervisor(kind)
        .hypervisor_config(hv)
        .memory_mib(256)
        .vcpus(1)
        .root_dir(root_dir)
}

/// The proportional set size of this process's mappings whose path contains `needle`, KiB.
fn mapping_pss_kib(needle: &str) -> Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut inside = false;
    let mut pss = 0;
    let mut found = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.contains(needle);
            found |= inside;
        } else if inside {
            if let Some(v) = line.strip_prefix("Pss:") {
                pss += v
                    .split_whitespace()
                    .next()
                    .and_then(|k| k.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ensure!(found, "no mapping of {needle} in this process");
    Ok(pss)
}

/// A copy of `rootfs` for `id` with the marker `/lab-mark-<id>` in it.
fn rootfs_copy(rootfs: &Path, id: &str) -> Result<PathBuf> {
    let to = crate::template::rootfs_copy(rootfs, id)?;
    std::fs::write(to.join(format!("lab-mark-{id}")), id)?;
    Ok(to)
}

/// What one sandbox showed.
struct Seen {
    build: Duration,
    boot_id: String,
    random: String,
    clock_skew_s: i64,
    /// The `lab-mark-*` files its container saw at its root.
    marks: String,
}

/// Builds `id` and runs a container on its own rootfs copy that prints the guest's boot id,
/// clock, random bytes and the markers it sees.
async fn start(id: &str, rootfs: &Path, root_dir: &str, template: bool) -> Result<(Sandbox, Seen)> {
    let own = rootfs_copy(rootfs, id)?;
    let t = Instant::now();
    let sandbox = tokio::time::timeout(
        Duration::from_secs(400),
        builder(id, root_dir, template).build(),
    )
    .await
    .with_context(|| format!("no sandbox {id} after 400 s"))?
    .with_context(|| format!("the sandbox {id} did not start"))?;
    let build = t.elapsed();
    let seen = async {
        let p =
            crate::template::probe(&sandbox, &own, "ls / | grep lab-mark | tr '\\n' ' '").await?;
        Ok::<_, anyhow::Error>(Seen {
            build,
            boot_id: p.boot_id,
            random: p.random,
            clock_skew_s: p.clock_skew_s,
            marks: p.rest.into_iter().next().unwrap_or_default(),
        })
    }
    .await;
    match seen {
        Ok(s) => Ok((sandbox, s)),
        Err(e) => {
            let _ = sandbox.shutdown().await;
            Err(e)
        }
    }
}

/// `builtin-template`.
pub async fn builtin_template(rootfs: &Path, root_dir: &str) -> Result<String> {
    let _ = std::fs::remove_dir_all(TEMPLATE_DIR);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mib = |k: u64| k as f64 / 1024.0;
    // The fresh boot and the template's boot go past a firmware reset (l2_boot); a clone
    // starts from the template's state, never from its firmware.
    let fresh_id = "lab-btpl-fresh";
    let (fresh, f) =
        crate::l2_boot::past_firmware(|| start(fresh_id, rootfs, root_dir, false)).await?;
    let fresh_pss = mapping_pss_kib(&format!("/memfd:kata-vmm:kata-{fresh_id}"));
    fresh.shutdown().await?;
    let fresh_pss = fresh_pss?;

    let ids = ["lab-btpl-1", "lab-btpl-2"];
    let mut clones = Vec::new();
    let mut seen = Vec::new();
    let mut failed = None;
    for (i, id) in ids.iter().enumerate() {
        let started = match i {
            0 => crate::l2_boot::past_firmware(|| start(id, rootfs, root_dir, true)).await,
            _ => start(id, rootfs, root_dir, true).await,
        };
        match started {
            Ok((s, v)) => {
                clones.push(s);
                seen.push(v);
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // With both clones running: their guest RAM is the template's file, mapped private.
    let memory = format!("{TEMPLATE_DIR}/memory");
    let clones_pss = mapping_pss_kib(&memory);
    let own_memfds: Vec<bool> = ids
        .iter()
        .map(|id| mapping_pss_kib(&format!("/memfd:kata-vmm:kata-{id}")).is_ok())
        .collect();
    let dirs: Vec<_> = clones.iter().map(|s| s.dir().to_path_buf()).collect();
    for s in clones {
        s.shutdown().await?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let clones_pss = clones_pss.context("the clones' guest memory (the template file)")?;
    ensure!(
        own_memfds.iter().all(|own| !own),
        "a clone has a guest memfd of its own ({own_memfds:?}): it was booted, not restored"
    );
    let clone_pss = clones_pss / 2;
    let clone_build = ms(seen[1].build);
    println!(
        "{}",
        kata_lab::protocol::figure_line(
            "builtin-template-clone-vs-fresh-start",
            clone_build / ms(f.build),
            "ratio",
            &format!(
                "build() of the second clone {clone_build:.0} ms / fresh boot {:.0} ms; the \
                 first templated sandbox (template booted, saved, then restored) {:.0} ms",
                ms(f.build),
                ms(seen[0].build)
            ),
        )
    );
    println!(
        "{}",
        kata_lab::protocol::figure_line(
            "builtin-template-clone-vs-fresh-pss",
            clone_pss as f64 / fresh_pss as f64,
            "ratio",
            &format!(
                "guest memory PSS per clone {:.1} MiB (the template file's private mappings of \
                 2 running clones: {clones_pss} kB in all) / fresh VM {:.1} MiB (its memfd); \
                 after one container each, 256 MiB guests",
                mib(clone_pss),
                mib(fresh_pss)
            ),
        )
    );
    for (id, s) in ids.iter().zip(&seen) {
        ensure!(
            s.marks == format!("lab-mark-{id}"),
            "clone {id}'s container saw the markers {:?} through its share: want its own only",
            s.marks
        );
    }
    let boot_ids: Vec<&str> = seen.iter().map(|s| s.boot_id.as_str()).collect();
    let randoms: Vec<&str> = seen.iter().map(|s| s.random.as_str()).collect();
    let skews: Vec<i64> = seen.iter().map(|s| s.clock_skew_s).collect();
    crate::template::check_clones(&boot_ids, &randoms, &skews, &dirs, root_dir)?;
    let kept = crate::template::template_kept(TEMPLATE_DIR)?;
    let state_kib = std::fs::metadata(Path::new(TEMPLATE_DIR).join("state"))?.len() / 1024;
    let memory_kib = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&memory)?.blocks() * 512 / 1024
    };
    std::fs::remove_dir_all(TEMPLATE_DIR).context("removing the template (rm -r)")?;
    for id in ids.iter().chain([&fresh_id]) {
        let _ = std::fs::remove_dir_all(Path::new("/run").join(format!("{id}-rootfs")));
    }
    Ok(format!(
        "2 clones restored from the template (guest RAM = {memory} mapped private, no memfd of \
         their own), each container saw its own marker only ({:?}), own random streams (boot \
         ids {boot_ids:?}), clocks {skews:?} s off the host's; build() clone {clone_build:.0} \
         ms vs fresh {:.0} ms; guest PSS per clone {:.1} MiB vs fresh {:.1} MiB; template \
         state {state_kib} KiB, memory {memory_kib} KiB allocated; nothing left after shutdown, \
         the template kept {kept:?} until removed",
        seen.iter().map(|s| s.marks.as_str()).collect::<Vec<_>>(),
        ms(f.build),
        mib(clone_pss),
        mib(fresh_pss)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_builtin_word_selects_it() {
        assert!(only_in("console=ttyS0 lab.template=builtin lab.runner=/x"));
        assert!(!only_in("console=ttyS0 lab.template"));
        assert!(!only_in("console=ttyS0 lab.template=builtinx"));
    }
}
