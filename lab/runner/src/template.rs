//! `qemu-template` (issue 15): VM templating with QEMU (`enable_template`), in L1 where KVM
//! and the kernel's vhost-vsock work.
//!
//! A fresh sandbox (no template, virtio-9p) boots first as the reference. Then three sandboxes
//! with `enable_template = true` and a template directory of their own ([`TEMPLATE_DIR`],
//! emptied first): the first finds no template, so it makes one (a VM booted to its agent,
//! saved, quit) and starts as its first clone; the other two start as clones. Each clone runs a
//! container. The check holds when every clone's QEMU was started from the template (its
//! command line maps the template's memory private and waits for the state: `-incoming
//! defer`), every clone's agent answers at a guest CID of its own (the guest took the clone's
//! CID: the agent is dialled at it), the clones' random streams differ (16 bytes of
//! `/dev/urandom` and the kernel's `boot_id`, made from the CRNG on its first read: without the
//! agent's CRNG reseed two clones read the same `boot_id` — seen in the first lab run), each
//! clone's clock is the host's (`SetGuestDateTime`: without it a clone's clock is the
//! template's when it was saved), and after the shutdowns no QEMU, mount or sandbox directory
//! is left while the template stays (memory, state, manifest; no VM directory or socket of the
//! template VM). It then removes the template (`rm -r`, the documented removal).
//!
//! Figures (not asserted): `build()` wall time of a clone against the fresh boot, and QEMU's
//! PSS per clone (two clones sharing the template's pages) against the fresh VM's.
//!
//! Then the same with `shared_fs = "virtio-fs"` (the template is saved without the share; a
//! clone's is hot-plugged after the restore) in a template directory of its own
//! ([`TEMPLATE_DIR_FS`]): a fresh virtio-fs sandbox, then two templated ones (the first makes
//! the template). Each runs its container from a rootfs copy of its own; the container's root
//! must be a virtiofs mount, its clone's QEMU must map its own copy of the template's memory
//! (a memfd it inherited: `mem-path=/proc/self/fd/<n>,share=on`, `-incoming defer`), and a
//! file each container writes to its root must be seen by it alone and land in its own rootfs
//! copy on the host (two clones' shares are distinct). Figures: a virtio-fs clone's `build()`
//! and QEMU PSS against the fresh virtio-fs VM's.
//!
//! `KATA_LAB_TEMPLATE=only` on the host runs this check alone (`lab.template` on L1's command
//! line; the runner then runs no VMM set and the other checks never report).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_hypervisor::config::SharedFs;
use kata_sandbox::{ContainerSpec, Sandbox};

/// The check's name without the VMM's prefix.
pub const CHECK: &str = "template";
/// The template directory (L1's `/run` is a tmpfs).
pub const TEMPLATE_DIR: &str = "/run/kata-lab-template";
/// The template directory of the virtio-fs clones.
pub const TEMPLATE_DIR_FS: &str = "/run/kata-lab-template-fs";
/// How far a clone's clock may be from the host's.
const CLOCK_SLACK_S: i64 = 5;

/// Whether L1's command line asks for this check alone (`lab.template`).
pub fn only() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == "lab.template")
}

/// A 256 MiB, 1 vCPU QEMU sandbox on `fs`, templated or not.
fn builder(id: &str, root_dir: &str, template: bool, fs: SharedFs) -> kata_sandbox::SandboxBuilder {
    let b = Sandbox::builder()
        .id(id)
        .hypervisor(kata_hypervisor::config::HypervisorType::Qemu)
        .memory_mib(256)
        .vcpus(1)
        .root_dir(root_dir);
    let mut hv = b.config().clone();
    hv.shared_fs = fs;
    hv.factory.enable_template = template;
    hv.factory.template_path = match fs {
        SharedFs::VirtioFs => TEMPLATE_DIR_FS,
        _ => TEMPLATE_DIR,
    }
    .into();
    b.hypervisor_config(hv)
}

/// What one sandbox showed.
struct Seen {
    build: Duration,
    /// The boot phases (`BootTimings`), for the figure.
    phases: String,
    agent: String,
    boot_id: String,
    random: String,
    qemu_cmdline: String,
    clock_skew_s: i64,
    pss_kib: u64,
    /// The filesystem type of the container's root.
    root_fs: String,
    /// The markers (`lab-mark-*`) the container saw at its root after writing its own.
    marks: String,
}

/// The sandbox's QEMU process.
fn qemu_pid(sandbox: &Sandbox) -> Result<u32> {
    sandbox
        .host_pids()
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"))
        })
        .context("no qemu-system process among the sandbox's host pids")
}

/// QEMU's proportional set size (`Pss` of `smaps_rollup`), KiB.
fn qemu_pss_kib(sandbox: &Sandbox) -> Result<u64> {
    let pid = qemu_pid(sandbox)?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no Pss in smaps_rollup")
}

/// The memory of a virtio-fs clone: QEMU's PSS with its copy of the template's memory (the
/// memfd `kata-clone-memory` it inherited) counted whole, KiB. The runtime fills that memfd,
/// so pages QEMU has not faulted in since the restore are resident but not in QEMU's PSS:
/// the mapping's PSS is replaced by the memfd's allocated size (its own pages, one holder).
fn clone_memory_pss_kib(sandbox: &Sandbox) -> Result<u64> {
    const NAME: &str = "/memfd:kata-clone-memory";
    let pid = qemu_pid(sandbox)?;
    let pss = qemu_pss_kib(sandbox)?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut in_memfd = false;
    let mut mapped = 0u64;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_memfd = line.contains(NAME);
        } else if in_memfd {
            if let Some(v) = line.strip_prefix("Pss:") {
                mapped += v
                    .split_whitespace()
                    .next()
                    .and_then(|k| k.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let mut allocated = None;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with(NAME)) {
            use std::os::unix::fs::MetadataExt as _;
            allocated = Some(std::fs::metadata(fd.path())?.blocks() * 512 / 1024);
            break;
        }
    }
    let allocated = allocated.context("QEMU holds no kata-clone-memory memfd")?;
    Ok(pss.saturating_sub(mapped) + allocated)
}

/// Builds `id`, runs a container that prints the guest's boot id and clock, measures QEMU.
async fn start(
    id: &str,
    rootfs: &Path,
    root_dir: &str,
    template: bool,
    fs: SharedFs,
) -> Result<(Sandbox, Seen)> {
    let t = Instant::now();
    let sandbox = tokio::time::timeout(
        Duration::from_secs(400),
        builder(id, root_dir, template, fs).build(),
    )
    .await
    .with_context(|| format!("no sandbox {id} after 400 s"))?
    .with_context(|| format!("the sandbox {id} did not start"))?;
    let build = t.elapsed();
    let b = sandbox.boot_timings();
    // Only a virtio-fs sandbox writes (to its rootfs copy), not the lab's rootfs.
    let mark = match fs {
        SharedFs::VirtioFs => format!("echo {id} > /lab-mark-{id};"),
        _ => String::new(),
    };
    let phases = format!(
        "VMM running {:.0} ms, VM started {:.0} ms, agent connected {:.0} ms, ready {:.0} ms",
        b.vmm_running.as_secs_f64() * 1000.0,
        b.vm_started.as_secs_f64() * 1000.0,
        b.agent_connected.as_secs_f64() * 1000.0,
        b.ready.as_secs_f64() * 1000.0
    );
    let seen = async {
        let p = probe(
            &sandbox,
            rootfs,
            &format!(
                "awk '$2 == \"/\" {{ t = $3 }} END {{ print t }}' /proc/mounts; \
                 {mark} ls / | grep lab-mark | tr '\\n' ' '"
            ),
        )
        .await?;
        let mut rest = p.rest.into_iter();
        let root_fs = rest.next().unwrap_or_default();
        let marks = rest.next().unwrap_or_default();
        let qemu_cmdline = std::fs::read(format!("/proc/{}/cmdline", qemu_pid(&sandbox)?))?
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let agent = sandbox
            .describe()
            .into_iter()
            .find(|(k, _)| *k == "agent")
            .map(|(_, v)| v)
            .unwrap_or_default();
        Ok::<_, anyhow::Error>(Seen {
            build,
            phases: phases.clone(),
            agent,
            boot_id: p.boot_id,
            random: p.random,
            qemu_cmdline,
            clock_skew_s: p.clock_skew_s,
            pss_kib: qemu_pss_kib(&sandbox)?,
            root_fs,
            marks,
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

/// What the probe container of a templating check printed.
pub(crate) struct Probe {
    /// The guest kernel's `boot_id` (made from the CRNG on its first read).
    pub boot_id: String,
    /// 16 bytes of the guest's `/dev/urandom`, in hex.
    pub random: String,
    /// The guest's clock less the host's, seconds.
    pub clock_skew_s: i64,
    /// The lines `extra` printed, trimmed.
    pub rest: Vec<String>,
}

/// Runs a container on `rootfs` in `sandbox` printing the guest's boot id, clock and random
/// bytes, then whatever the shell commands `extra` print.
pub(crate) async fn probe(sandbox: &Sandbox, rootfs: &Path, extra: &str) -> Result<Probe> {
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(rootfs).args([
            "sh",
            "-c",
            &format!(
                "cat /proc/sys/kernel/random/boot_id; date +%s; \
                 od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'; echo; {extra}"
            ),
        ]))
        .await?;
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let text = out.stdout_str();
    let mut lines = text.lines().map(|l| l.trim().to_string());
    let boot_id = lines.next().unwrap_or_default();
    let guest_now: i64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .with_context(|| format!("no clock in {text:?} ({})", out.stderr_str()))?;
    let random = lines.next().unwrap_or_default();
    Ok(Probe {
        boot_id,
        random,
        clock_skew_s: guest_now - host_now,
        rest: lines.collect(),
    })
}

/// Whether `v` has no empty and no repeated value.
pub(crate) fn all_distinct(v: &[&str]) -> bool {
    let mut d = v.to_vec();
    d.sort();
    d.dedup();
    d.len() == v.len() && v.iter().all(|x| !x.is_empty())
}

/// What every templating check asks of its clones, after their shutdown: each its own random
/// stream (`boot_ids`, `randoms`: the agent's CRNG reseed), its clock the host's (`skews`,
/// seconds: `SetGuestDateTime`), no sandbox directory (`dirs`) and no mount under `root_dir`
/// left.
pub(crate) fn check_clones(
    boot_ids: &[&str],
    randoms: &[&str],
    skews: &[i64],
    dirs: &[std::path::PathBuf],
    root_dir: &str,
) -> Result<()> {
    ensure!(
        all_distinct(boot_ids) && all_distinct(randoms),
        "the clones' random streams are not their own: boot ids {boot_ids:?}, /dev/urandom \
         {randoms:?} (the CRNG state of the template, not reseeded?)"
    );
    ensure!(
        skews.iter().all(|s| s.abs() <= CLOCK_SLACK_S),
        "the clones' clocks are off the host's by {skews:?} s (SetGuestDateTime not applied?)"
    );
    for d in dirs {
        ensure!(!d.exists(), "{} left", d.display());
    }
    let mounts = kata_testkit::leaks::mounts_under(Path::new(root_dir));
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}

/// The files of the template directory `dir` after every clone's shutdown: the lock, memory,
/// state and manifest, nothing else (no VM directory or socket of the template VM).
pub(crate) fn template_kept(dir: &str) -> Result<Vec<String>> {
    let mut kept: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    ensure!(
        kept == ["lock", "memory", "state", "template.json"],
        "the template directory holds {kept:?}: want the lock, memory, state and manifest only"
    );
    Ok(kept)
}

/// `qemu-template`.
pub async fn qemu_template(rootfs: &Path, root_dir: &str) -> Result<String> {
    let _ = std::fs::remove_dir_all(TEMPLATE_DIR);
    let p9 = SharedFs::Virtio9p;
    // The fresh boot and the first templated start (which boots the template VM through its
    // firmware: a rehearsal of 2026-11-30 lost it to an exit 0 with an empty console) go past
    // a firmware reset; a clone starts from the template's state, never from its firmware.
    let (fresh, f) =
        crate::l2_boot::past_firmware(|| start("lab-tpl-fresh", rootfs, root_dir, false, p9))
            .await?;
    fresh.shutdown().await?;
    let mut clones = Vec::new();
    let mut seen = Vec::new();
    let mut failed = None;
    for i in 1..=3 {
        let id = format!("lab-tpl-{i}");
        let started = match i {
            1 => crate::l2_boot::past_firmware(|| start(&id, rootfs, root_dir, true, p9)).await,
            _ => start(&id, rootfs, root_dir, true, p9).await,
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
    // PSS once every clone runs (the template's pages shared between them).
    let pss: Vec<u64> = clones.iter().filter_map(|s| qemu_pss_kib(s).ok()).collect();
    let dirs: Vec<_> = clones.iter().map(|s| s.dir().to_path_buf()).collect();
    for s in clones {
        s.shutdown().await?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mib = |k: u64| k as f64 / 1024.0;
    let clone_build = seen[1..].iter().map(|s| ms(s.build)).sum::<f64>() / 2.0;
    // Every clone measured (a PSS that could not be read fails the check below).
    ensure!(
        pss.len() == 3,
        "QEMU's PSS read for {} of 3 clones",
        pss.len()
    );
    let clone_pss = pss[1..].iter().sum::<u64>() / 2;
    println!(
        "{}",
        kata_lab::protocol::figure_line(
            "qemu-template-clone-vs-fresh-start",
            clone_build / ms(f.build),
            "ratio",
            &format!(
                "build() of a clone {clone_build:.0} ms (mean of 2; the last: {}) / fresh boot \
                 {:.0} ms ({}); the first templated sandbox (template made, then cloned) {:.0} ms",
                seen[2].phases,
                ms(f.build),
                f.phases,
                ms(seen[0].build)
            ),
        )
    );
    println!(
        "{}",
        kata_lab::protocol::figure_line(
            "qemu-template-clone-vs-fresh-pss",
            clone_pss as f64 / f.pss_kib as f64,
            "ratio",
            &format!(
                "QEMU PSS per clone {:.1} MiB (mean of the last 2 of 3 running clones: {:?} kB) / \
                 fresh VM {:.1} MiB (after one container each, 256 MiB guests)",
                mib(clone_pss),
                pss,
                mib(f.pss_kib)
            ),
        )
    );
    let agents: Vec<&str> = seen.iter().map(|s| s.agent.as_str()).collect();
    let mut distinct = agents.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(
        distinct.len() == 3 && agents.iter().all(|a| a.starts_with("vsock://")),
        "the clones' agents are not at three distinct vhost-vsock CIDs: {agents:?}"
    );
    let memory = format!("mem-path={TEMPLATE_DIR}/memory,share=off");
    for s in &seen {
        ensure!(
            s.qemu_cmdline.contains(&memory) && s.qemu_cmdline.contains("-incoming defer"),
            "a clone's QEMU was not started from the template ({memory}, -incoming defer): {}",
            s.qemu_cmdline
        );
    }
    let boot_ids: Vec<&str> = seen.iter().map(|s| s.boot_id.as_str()).collect();
    let randoms: Vec<&str> = seen.iter().map(|s| s.random.as_str()).collect();
    let skews: Vec<i64> = seen.iter().map(|s| s.clock_skew_s).collect();
    // Nothing left but the template.
    check_clones(&boot_ids, &randoms, &skews, &dirs, root_dir)?;
    let left: Vec<_> = kata_testkit::leaks::cmdlines()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system") && cmd.contains("lab-tpl"))
        .collect();
    ensure!(left.is_empty(), "processes left: {left:?}");
    let kept = template_kept(TEMPLATE_DIR)?;
    let state_kib = std::fs::metadata(Path::new(TEMPLATE_DIR).join("state"))?.len() / 1024;
    std::fs::remove_dir_all(TEMPLATE_DIR).context("removing the template (rm -r)")?;
    let fs = virtio_fs(rootfs, root_dir).await?;
    Ok(format!(
        "3 clones at {agents:?} from the template ({memory}, -incoming defer), each with its own \
         random stream (boot ids {boot_ids:?}), clocks {skews:?} s off the host's; build() \
         clone {clone_build:.0} ms vs fresh {:.0} ms; state {state_kib} KiB; nothing left after \
         shutdown, the template kept {kept:?} until removed; virtio-fs: {fs}",
        ms(f.build)
    ))
}

/// A copy of `rootfs` for `id` (each virtio-fs sandbox writes to its own).
pub(crate) fn rootfs_copy(rootfs: &Path, id: &str) -> Result<std::path::PathBuf> {
    let to = Path::new("/run").join(format!("{id}-rootfs"));
    let _ = std::fs::remove_dir_all(&to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs)
        .arg(&to)
        .status()?
        .success();
    ensure!(ok, "cp -a {} {} failed", rootfs.display(), to.display());
    Ok(to)
}

/// The virtio-fs half (see the [module](self) docs): a fresh virtio-fs sandbox, then two
/// templated ones, the share hot-plugged into each clone.
async fn virtio_fs(rootfs: &Path, root_dir: &str) -> Result<String> {
    let vfs = SharedFs::VirtioFs;
    let _ = std::fs::remove_dir_all(TEMPLATE_DIR_FS);
    let ids = ["lab-tplfs-fresh", "lab-tplfs-1", "lab-tplfs-2"];
    let copies = ids
        .iter()
        .map(|id| rootfs_copy(rootfs, id))
        .collect::<Result<Vec<_>>>()?;
    let (fresh, f) =
        crate::l2_boot::past_firmware(|| start(ids[0], &copies[0], root_dir, false, vfs)).await?;
    fresh.shutdown().await?;
    let mut clones = Vec::new();
    let mut seen = Vec::new();
    let mut failed = None;
    for i in 1..=2 {
        let started = match i {
            1 => {
                crate::l2_boot::past_firmware(|| start(ids[i], &copies[i], root_dir, true, vfs))
                    .await
            }
            _ => start(ids[i], &copies[i], root_dir, true, vfs).await,
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
    // PSS with both clones running: each maps its own copy of the template's memory.
    let pss: Vec<u64> = clones
        .iter()
        .filter_map(|s| match clone_memory_pss_kib(s) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("lab: virtio-fs clone memory not measured: {e:#}");
                None
            }
        })
        .collect();
    let dirs: Vec<_> = clones.iter().map(|s| s.dir().to_path_buf()).collect();
    for s in clones {
        s.shutdown().await?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{}",
        kata_lab::protocol::figure_line(
            "qemu-template-virtio-fs-clone-vs-fresh-start",
            ms(seen[1].build) / ms(f.build),
            "ratio",
            &format!(
                "build() of a virtio-fs clone {:.0} ms ({}; share hot-plugged, memory copied) / \
                 fresh virtio-fs boot {:.0} ms ({}); the first templated sandbox (template made, \
                 then cloned) {:.0} ms",
                ms(seen[1].build),
                seen[1].phases,
                ms(f.build),
                f.phases,
                ms(seen[0].build)
            ),
        )
    );
    if pss.len() == 2 {
        let clone_pss = pss.iter().sum::<u64>() / 2;
        println!(
            "{}",
            kata_lab::protocol::figure_line(
                "qemu-template-virtio-fs-clone-vs-fresh-pss",
                clone_pss as f64 / f.pss_kib as f64,
                "ratio",
                &format!(
                    "QEMU PSS per virtio-fs clone {:.1} MiB (mean of 2 running clones: {pss:?} \
                     kB; each its own memory copy, the memfd counted whole as allocated, not \
                     only what QEMU faulted in) / fresh virtio-fs VM {:.1} MiB",
                    clone_pss as f64 / 1024.0,
                    f.pss_kib as f64 / 1024.0
                ),
            )
        );
    }
    let firmware = seen[1]
        .qemu_cmdline
        .split(" -bios ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("QEMU's default (SeaBIOS)")
        .to_string();
    for (i, s) in seen.iter().enumerate() {
        let id = ids[i + 1];
        let backend = s
            .qemu_cmdline
            .split(' ')
            .find(|a| a.starts_with("memory-backend-file,id=mem0,"))
            .unwrap_or_default();
        ensure!(
            s.qemu_cmdline.contains("-incoming defer")
                && backend.contains("mem-path=/proc/self/fd/")
                && backend.ends_with(",share=on")
                && !s.qemu_cmdline.contains("vhost-user-fs")
                && s.qemu_cmdline.contains("id=rp-share"),
            "{id}'s QEMU was not started as a virtio-fs clone (its own memory copy, a memfd, shared, \
             -incoming defer, no vhost-user-fs on the command line, rp-share): {}",
            s.qemu_cmdline
        );
        ensure!(
            s.root_fs == "virtiofs",
            "{id}'s container root is {:?}, not a virtiofs mount",
            s.root_fs
        );
        ensure!(
            s.marks == format!("lab-mark-{id}"),
            "{id}'s container saw the markers {:?} at its root: want its own only",
            s.marks
        );
        let written = std::fs::read_to_string(copies[i + 1].join(format!("lab-mark-{id}")))
            .unwrap_or_default();
        ensure!(
            written.trim() == id,
            "{id}'s marker did not reach its rootfs copy {} on the host (read {written:?})",
            copies[i + 1].display()
        );
    }
    for d in &dirs {
        ensure!(!d.exists(), "{} left", d.display());
    }
    let left: Vec<_> = kata_testkit::leaks::cmdlines()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("lab-tplfs"))
        .collect();
    ensure!(left.is_empty(), "processes left: {left:?}");
    let mounts = kata_testkit::leaks::mounts_under(Path::new(root_dir));
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let manifest = std::fs::read_to_string(Path::new(TEMPLATE_DIR_FS).join("template.json"))?;
    ensure!(
        manifest.contains("vhost-user-fs-pci on rp-share"),
        "the virtio-fs template's manifest does not record the hot-plugged share: {manifest}"
    );
    std::fs::remove_dir_all(TEMPLATE_DIR_FS).context("removing the virtio-fs template (rm -r)")?;
    for c in &copies {
        let _ = std::fs::remove_dir_all(c);
    }
    Ok(format!(
        "2 clones with their share hot-plugged (roots {:?}, markers {:?}, firmware {firmware}), \
         build() clone {:.0} ms vs fresh {:.0} ms",
        seen.iter().map(|s| s.root_fs.as_str()).collect::<Vec<_>>(),
        seen.iter().map(|s| s.marks.as_str()).collect::<Vec<_>>(),
        ms(seen[1].build),
        ms(f.build)
    ))
}
