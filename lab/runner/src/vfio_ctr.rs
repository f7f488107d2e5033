//! A real device through containerd (issue 12), with either VMM: `builtin-vfio-ctr-cold` and
//! `builtin-vfio-ctr-cdi-vfio-mode` ([`run`]), `qemu-vfio-ctr-hot` and `qemu-vfio-ctr-cold`
//! ([`run_qemu`]).
//!
//! The crash row's containerd (`crash::lab_containerd`: the host's `containerd` and `ctr` in
//! L1, the lab's `containerd-shim-katalab-v2` as runtime `io.containerd.katalab.v2`) on a
//! shipped configuration file with the VFIO lines a setup needs changed (a shipped line that
//! is gone fails the cells naming it):
//!
//! - the **built-in VMM** (kata-vmm in the shim's process, KVM in L1), which cold-plugs VFIO
//!   only: `configuration-dragonball.toml` with `cold_plug_vfio = "root-port"`, containerd's
//!   default configuration;
//! - the **QEMU backend** (KVM in L1): `configuration-qemu-runtime-rs.toml`, named by each
//!   sandbox's `ctr run --runtime-config-path`, with a 256 MiB guest, a 150 s agent dial (QEMU
//!   pins the guest's memory for the device's DMA before the guest boots: slow in L1) and,
//!   for the hot-plug setup, `pcie_root_port = 1` (the file's `cold_plug_vfio = "no-port"`,
//!   `hot_plug_vfio = "no-port"`: hot-plug onto a free root port); for the cold-plug setup,
//!   `cold_plug_vfio = "root-port"`.
//!
//! Each cell is what a user does, in a sandbox of its own:
//!
//! 1. `ctr run -d` giving a container the edu's group in L1. Cold-plug (`vfio-ctr-cold`, both
//!    VMMs): `--device /dev/vfio/<group>` in the file's `vfio_mode = "guest-kernel"`; the shim
//!    resolves the device before the VM exists and the sandbox boots with it.
//!    `builtin-vfio-ctr-cdi-vfio-mode`: the CDI annotation
//!    `cdi.k8s.io/kata-lab=kata-lab.io/edu=edu` (a spec file in `/var/run/cdi`),
//!    `io.katacontainers.config.runtime.vfio_mode=vfio`, `--cap-add CAP_SYS_RAWIO` and the
//!    proof program (`vfio_proof.c`, built static) bind-mounted at `/proof`. Hot-plug
//!    (`qemu-vfio-ctr-hot`): a pod as CRI makes one, its sandbox container first (no device,
//!    `io.kubernetes.cri.container-type=sandbox`), then a container joining it
//!    (`container-type=container`, `io.kubernetes.cri.sandbox-id`) with `--device`: the shim
//!    hot-plugs the edu (QMP `device_add` onto the root port) when the container is created;
//! 2. `ctr task exec`: a listing of `/sys/bus/pci/devices` sees 1234:11e8 in L2 at its guest
//!    PCI path (`<port>/00` behind kata-vmm's or QEMU's root port); in the
//!    CDI cell the proof program reads the edu's identification through L2's VFIO and
//!    computes 5! in its registers;
//! 3. `ctr task kill`, `ctr task rm`, `ctr container rm`. Hot-plug: after the joined
//!    container's removal the pod's sandbox container lists no edu (`device_del`, the guest
//!    released it), and a second joined container gets it again at the same path (the only
//!    root port was freed); then the pod goes too. And nothing is left
//!    (`kata_testkit::leaks::sandbox_leftovers` for every container of the cell: no process,
//!    mount, sandbox directory, cgroup, task or container; no new shim socket or KVM
//!    descriptor), and no process holds the edu's `/dev/vfio` nodes: the device is free for
//!    the next VM.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_lab::protocol::{check_line, Vmm, BUILTIN_VFIO_CTR_CHECKS};
use kata_testkit::containerd::Containerd;
use kata_testkit::leaks::{cmdlines, sandbox_leftovers};

use crate::crash::{self, RUNTIME, SHIM, SHIM_SOCKETS, STATE_ROOT};

/// `ctr`'s namespace for this case (and the cgroup parent of its container).
const NS: &str = "kata-lab-vfio";
/// The shipped file's cold-plug line, and what the cold-plug setups make of it.
const SHIPPED_COLD_PLUG: &str = "\ncold_plug_vfio = \"no-port\"\n";
const ROOT_PORT_COLD_PLUG: &str = "\ncold_plug_vfio = \"root-port\"\n";

/// The QEMU backend's cells (`qemu-<name>`, in `kata_lab::protocol::VFIO_CHECKS`).
pub const QEMU_CELLS: [&str; 2] = ["vfio-ctr-hot", "vfio-ctr-cold"];

/// The QEMU configuration kata-rs ships, as built into the runner (L1's `/tmp` is a tmpfs: a
/// checkout there is not L1's to read).
const QEMU_TOML: &str = include_str!("../../../config/configuration-qemu-runtime-rs.toml");

/// `text` with each shipped line `from` replaced by `to`: a line the file no longer has once
/// fails the case naming it and `file`.
fn edit(text: &str, file: &str, lines: &[(&str, &str)]) -> Result<String> {
    let mut text = text.to_string();
    for (from, to) in lines {
        ensure!(
            text.matches(from).count() == 1,
            "{file} no longer says {from:?} once: update the lab's containerd VFIO case \
             (src/vfio_ctr.rs)"
        );
        text = text.replacen(from, to, 1);
    }
    Ok(text)
}

/// The shipped dragonball configuration's text with cold-plug on a root port (on the built-in
/// VMM, an emulated PCIe root port per function: the edu at `01/00`).
fn cold_plug_config(text: String) -> Result<String> {
    edit(
        &text,
        "configuration-dragonball.toml",
        &[(SHIPPED_COLD_PLUG, ROOT_PORT_COLD_PLUG)],
    )
}

/// The shipped QEMU configuration for the hot-plug setup (`hot`: one spare root port) or the
/// cold-plug one (root port), with the lab's guest size and agent dial (module docs).
fn qemu_config(hot: bool) -> Result<String> {
    let plug = match hot {
        true => ("\npcie_root_port = 0\n", "\npcie_root_port = 1\n"),
        false => (SHIPPED_COLD_PLUG, ROOT_PORT_COLD_PLUG),
    };
    edit(
        QEMU_TOML,
        "configuration-qemu-runtime-rs.toml",
        &[
            ("\ndefault_memory = 2048\n", "\ndefault_memory = 256\n"),
            (
                "\nreconnect_timeout_ms = 45000\n",
                "\nreconnect_timeout_ms = 150000\n",
            ),
            plug,
        ],
    )
}

/// A ctr that ran and failed: what ran with its status and stdout, and its stderr as it came
/// (a sandbox's start error, judged by [`ctr_run_sandbox`]).
#[derive(Debug)]
struct CtrFailed {
    what: String,
    stderr: String,
}

impl std::fmt::Display for CtrFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, stderr {:?}", self.what, self.stderr)
    }
}

impl std::error::Error for CtrFailed {}

/// Runs `ctr args` against `c`, killed after [`crash::CTR_TIMEOUT`]: its stdout if it
/// succeeded, else an error with its status and output.
fn ctr_out(c: &Containerd, args: &[&str]) -> Result<String> {
    let mut child = c
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ctr")?;
    let t0 = Instant::now();
    while child.try_wait()?.is_none() {
        if t0.elapsed() > crash::CTR_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`ctr {}` hung for {:?}", args.join(" "), crash::CTR_TIMEOUT);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(CtrFailed {
            what: format!(
                "`ctr {}`: {}, stdout {stdout:?}",
                args.join(" "),
                out.status
            ),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(stdout)
}

/// The processes holding `nodes` open, as `<pid> <node>`.
fn holders(nodes: &[&Path]) -> Vec<String> {
    cmdlines()
        .into_iter()
        .flat_map(|(pid, _)| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| nodes.contains(&l.as_path()))
                .map(move |l| format!("process {pid} holds {}", l.display()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What is left of the containers `ids` (see the [module docs](self)).
fn left(
    c: &Containerd,
    ids: &[String],
    group: &Path,
    sockets_before: &BTreeSet<String>,
    kvm_before: &BTreeSet<String>,
) -> Vec<String> {
    let mut left: Vec<String> = ids
        .iter()
        .flat_map(|id| sandbox_leftovers(c, Path::new(STATE_ROOT), SHIM, NS, id))
        .collect();
    left.extend(
        crash::shim_sockets()
            .difference(sockets_before)
            .map(|s| format!("shim socket {SHIM_SOCKETS}/{s}")),
    );
    left.extend(
        crash::all_kvm_fds()
            .difference(kvm_before)
            .map(|f| format!("KVM descriptor of process {f}")),
    );
    left.extend(holders(&[group, Path::new("/dev/vfio/vfio")]));
    left
}

/// How a cell's container gets the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plug {
    /// With its sandbox: a single `ctr run` (cold-plugged at boot).
    Cold,
    /// Hot-plugged into a running pod: the pod's sandbox container first, then two
    /// containers joining it in turn, each given the device.
    Hot,
}

/// One cell: what the user gives `ctr run`, what the container then runs, what its output
/// must say.
struct Cell<'a> {
    /// The check (without the VMM's prefix), also the (sandbox) container's id.
    name: &'static str,
    /// How the device reaches the VM.
    plug: Plug,
    /// `ctr run`'s options that choose the sandbox's configuration (the first `ctr run`).
    config_args: Vec<String>,
    /// `ctr run`'s options that give the container the device.
    run_args: Vec<String>,
    /// What `ctr task exec` runs in it.
    exec: Vec<&'a str>,
    /// Judges the exec's output: what it proved, or why not.
    judge: &'a dyn Fn(&str) -> Result<String>,
    /// The setup, for the result line (`on the built-in VMM (cold_plug_vfio = "root-port")`).
    setup: &'static str,
}

/// `ctr run -d` of container `id` with `args` before the image.
fn ctr_run(c: &Containerd, id: &str, args: &[&str]) -> Result<()> {
    let mut run: Vec<&str> = vec!["run", "-d", "--runtime", RUNTIME];
    run.extend(args);
    run.extend([kata_testkit::image::IMAGE_NAME, id, "sleep", "1000"]);
    ctr_out(c, &run).map(drop)
}

/// [`ctr_run`] of a container whose sandbox boots an L2: once more (at most
/// `l2_boot::TRIES` runs) after an L2 lost in its firmware or its kernel's first second
/// (nested SVM under TCG, lab/README.md), the failed container removed first.
fn ctr_run_sandbox(c: &Containerd, id: &str, args: &[&str]) -> Result<()> {
    let lost = |e: &anyhow::Error| {
        e.downcast_ref::<CtrFailed>()
            .is_some_and(|f| kata_lab::protocol::l2_lost_in_ctr(&f.stderr))
    };
    crate::l2_boot::past_firmware_blocking(lost, || {
        ctr_run(c, id, args).inspect_err(|_| c.force_remove(id))
    })
}

/// `ctr task kill`, `ctr task rm`, `ctr container rm` of container `id`.
fn ctr_remove(c: &Containerd, id: &str) -> Result<()> {
    ctr_out(c, &["task", "kill", "-s", "KILL", id])?;
    c.wait_status(id, "STOPPED", Duration::from_secs(30))?;
    ctr_out(c, &["task", "rm", id])?;
    ctr_out(c, &["container", "rm", id])?;
    Ok(())
}

/// The cell's look at the device from container `id`, judged.
fn look(c: &Containerd, id: &str, cell: &Cell<'_>) -> Result<String> {
    let mut exec = vec!["task", "exec", "--exec-id", "look", id];
    exec.extend(&cell.exec);
    let said = ctr_out(c, &exec).context("the container's look at the device")?;
    (cell.judge)(&said)
}

/// The CRI annotations that make `id` a pod's sandbox container (`joins: None`) or a
/// container joining pod `joins`.
fn pod_args(joins: Option<&str>, pod: &str) -> Vec<String> {
    let kind = if joins.is_some() {
        "container"
    } else {
        "sandbox"
    };
    vec![
        "--annotation".into(),
        format!("io.kubernetes.cri.container-type={kind}"),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={pod}"),
    ]
}

/// The hot-plug cell's pod (see the [module docs](self)): what each joined container
/// proved, the device gone after each removal, the second plug where the first was. `ids`
/// collects the containers made.
fn hot_pod(c: &Containerd, cell: &Cell<'_>, ids: &mut Vec<String>) -> Result<String> {
    let pod = cell.name;
    let mut args: Vec<String> = cell.config_args.clone();
    args.extend(pod_args(None, pod));
    ctr_run_sandbox(c, pod, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .context("`ctr run` (the pod's sandbox container, no device)")?;
    let mut seen = Vec::new();
    for n in 1..=2 {
        let app = format!("{pod}-{n}");
        ids.push(app.clone());
        let t = Instant::now();
        let mut args = pod_args(Some(pod), pod);
        args.extend(cell.run_args.iter().cloned());
        ctr_run(
            c,
            &app,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .with_context(|| format!("`ctr run` of {app} (the edu hot-plugged)"))?;
        let created = t.elapsed();
        let proved = look(c, &app, cell).with_context(|| format!("in {app}"))?;
        ctr_remove(c, &app)?;
        let exec_id = format!("gone{n}");
        let after = ctr_out(
            c,
            &[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                pod,
                "sh",
                "-c",
                crate::vfio::LIST_EDU,
            ],
        )
        .context("the pod's look after the removal")?;
        ensure!(
            !after.contains("edu "),
            "after `ctr task rm {app}` L2 still has {after:?}: not unplugged"
        );
        seen.push((app, created, proved));
    }
    ensure!(
        seen[0].2 == seen[1].2,
        "the second container {}, the first {}: the port was not freed",
        seen[1].2,
        seen[0].2
    );
    ctr_remove(c, pod)?;
    let (app, created, proved) = &seen[0];
    Ok(format!(
        "pod {pod}, container {app} `ctr run {}` {}: created in {created:.1?}, {proved}; \
         gone from L2 after its `ctr task rm`; {} got it again on the freed port ({:.1?})",
        cell.run_args.join(" "),
        cell.setup,
        seen[1].0,
        seen[1].1
    ))
}

/// A cell: run, look, remove, check (see the [module docs](self)).
fn cell(c: &Containerd, group: &Path, cell: &Cell<'_>) -> Result<String> {
    let id = cell.name;
    let sockets_before = crash::shim_sockets();
    let kvm_before = crash::all_kvm_fds();
    let mut ids = vec![id.to_string()];
    let said = match cell.plug {
        Plug::Hot => {
            let r = hot_pod(c, cell, &mut ids);
            if r.is_err() {
                ids.iter().rev().for_each(|i| c.force_remove(i));
            }
            r?
        }
        Plug::Cold => {
            let t = Instant::now();
            let mut args = cell.config_args.clone();
            args.extend(cell.run_args.iter().cloned());
            ctr_run_sandbox(c, id, &args.iter().map(String::as_str).collect::<Vec<_>>())
                .context("`ctr run` (the sandbox with the edu cold-plugged)")?;
            let started = t.elapsed();
            let proved = look(c, id, cell)?;
            ctr_remove(c, id)?;
            format!(
                "`ctr run {}` {}: started in {started:.1?}; {proved}",
                cell.run_args.join(" "),
                cell.setup
            )
        }
    };
    // containerd's cleanup of the shim may take a moment.
    let t0 = Instant::now();
    let left = loop {
        let left = left(c, &ids, group, &sockets_before, &kvm_before);
        if left.is_empty() || t0.elapsed() > Duration::from_secs(20) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        left.is_empty(),
        "left after `ctr task rm` and `ctr container rm`: {left:?}"
    );
    Ok(format!(
        "{said}; after `ctr task rm` and `ctr container rm` clean in {:.1?}: no process, \
         mount, sandbox directory, shim socket, cgroup, task, container, KVM or VFIO \
         descriptor left",
        t0.elapsed()
    ))
}

/// The CDI spec file naming the edu's group as `kata-lab.io/edu=edu` ([`CDI_NAME`]).
fn cdi_spec(group: &Path) -> String {
    // A group's path is ASCII without quotes or backslashes: Rust's quoting is JSON's here.
    format!(
        r#"{{"cdiVersion": "0.6.0", "kind": "kata-lab.io/edu", "devices": [{{"name": "edu", "containerEdits": {{"deviceNodes": [{{"path": {:?}}}]}}}}]}}"#,
        group.display().to_string()
    )
}

/// The CDI device the second cell names.
const CDI_NAME: &str = "kata-lab.io/edu=edu";
/// Where the shim reads it (`/var/run/cdi`, L1's tmpfs).
const CDI_FILE: &str = "/var/run/cdi/kata-lab-edu.json";

/// The cells' lines, each printed as its cell ends (a later cell that hangs L1 cannot hide
/// it), counted.
struct Lines {
    vmm: Vmm,
    ran: usize,
    passed: usize,
}

impl Lines {
    /// Prints `<vmm>-<name>`'s line.
    fn line(&mut self, name: &str, result: Result<String>) {
        self.ran += 1;
        self.passed += usize::from(result.is_ok());
        let result = result.map_err(|e| format!("{e:#}"));
        println!("{}", check_line(&format!("{}-{name}", self.vmm), &result));
    }
}

/// The built-in VMM's cells, each its own sandbox under one containerd.
fn builtin_cells(c: &Containerd, group: &Path, proof_dir: &Path, lines: &mut Lines) {
    let device = group.display().to_string();
    let list = |out: &str| {
        crate::vfio::seen_at_depth(out, 2).map(|p| {
            format!("vfio_mode guest-kernel: the container sees 1234:11e8 at guest PCI path {p}")
        })
    };
    let proof =
        |out: &str| crate::vfio::proof_ok(out).map(|p| format!("vfio_mode vfio (annotation): {p}"));
    let proof_path = format!("/proof/{}", crate::vfio::PROOF);
    const SETUP: &str = "on the built-in VMM (cold_plug_vfio = \"root-port\")";
    let by_device = Cell {
        name: BUILTIN_VFIO_CTR_CHECKS[0],
        plug: Plug::Cold,
        config_args: Vec::new(),
        run_args: vec!["--device".into(), device],
        exec: vec!["sh", "-c", crate::vfio::LIST_EDU],
        judge: &list,
        setup: SETUP,
    };
    let by_cdi = Cell {
        name: BUILTIN_VFIO_CTR_CHECKS[1],
        plug: Plug::Cold,
        config_args: Vec::new(),
        run_args: vec![
            "--annotation".into(),
            format!("cdi.k8s.io/kata-lab={CDI_NAME}"),
            "--annotation".into(),
            "io.katacontainers.config.runtime.vfio_mode=vfio".into(),
            "--cap-add".into(),
            "CAP_SYS_RAWIO".into(),
            "--mount".into(),
            format!(
                "type=bind,src={},dst=/proof,options=rbind:ro",
                proof_dir.display()
            ),
        ],
        exec: vec![&proof_path],
        judge: &proof,
        setup: SETUP,
    };
    run_cells(c, group, [by_device, by_cdi], lines);
}

/// The QEMU backend's cells ([`QEMU_CELLS`] that `wanted` names), their configuration files
/// written into `dir`.
fn qemu_cells(
    c: &Containerd,
    group: &Path,
    dir: &Path,
    wanted: &dyn Fn(&str) -> bool,
    lines: &mut Lines,
) {
    let device = group.display().to_string();
    // Behind a root port: the port's slot, then the device at slot 0 of its bus.
    let list = |out: &str| {
        crate::vfio::seen_at_depth(out, 2).and_then(|p| {
            ensure!(
                p.ends_with("/00"),
                "the edu is at {p}, not behind a root port"
            );
            Ok(format!(
                "vfio_mode guest-kernel: the container sees 1234:11e8 at guest PCI path {p}"
            ))
        })
    };
    let mut cells = Vec::new();
    for (name, hot) in [(QEMU_CELLS[0], true), (QEMU_CELLS[1], false)] {
        if !wanted(name) {
            continue;
        }
        // Each file in a directory of its own: no `config.d` drop-ins beside it.
        let file = (|| {
            let sub = dir.join(name);
            std::fs::create_dir_all(&sub)?;
            let file = sub.join("configuration-qemu-runtime-rs.toml");
            std::fs::write(&file, qemu_config(hot)?)
                .with_context(|| format!("writing {}", file.display()))?;
            Ok::<_, anyhow::Error>(file)
        })();
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                lines.line(name, Err(e));
                continue;
            }
        };
        cells.push(Cell {
            name,
            plug: if hot { Plug::Hot } else { Plug::Cold },
            config_args: vec!["--runtime-config-path".into(), file.display().to_string()],
            run_args: vec!["--device".into(), device.clone()],
            exec: vec!["sh", "-c", crate::vfio::LIST_EDU],
            judge: &list,
            setup: if hot {
                "on QEMU (configuration-qemu-runtime-rs.toml: cold_plug_vfio = \"no-port\", \
                 pcie_root_port = 1: hot-plugged onto the root port)"
            } else {
                "on QEMU (configuration-qemu-runtime-rs.toml: cold_plug_vfio = \"root-port\")"
            },
        });
    }
    run_cells(c, group, cells, lines);
}

/// Runs `cells` one after the other; a failed one is force-removed.
fn run_cells<'a>(
    c: &Containerd,
    group: &Path,
    cells: impl IntoIterator<Item = Cell<'a>>,
    lines: &mut Lines,
) {
    for cell_ in cells {
        let result = cell(c, group, &cell_);
        if result.is_err() {
            c.force_remove(cell_.name);
        }
        lines.line(cell_.name, result);
    }
}

/// Runs the built-in VMM's cells (one `builtin-vfio-ctr-*` line each); returns (ran, passed).
pub fn run() -> (usize, usize) {
    run_for(Vmm::Builtin, &|_| true)
}

/// Runs the QEMU backend's cells that `wanted` names (one `qemu-vfio-ctr-*` line each);
/// returns (ran, passed).
pub fn run_qemu(wanted: &dyn Fn(&str) -> bool) -> (usize, usize) {
    run_for(Vmm::Qemu, wanted)
}

/// The cells of `vmm` that `wanted` names, under one containerd.
fn run_for(vmm: Vmm, wanted: &dyn Fn(&str) -> bool) -> (usize, usize) {
    let names: Vec<&'static str> = match vmm {
        Vmm::Builtin => BUILTIN_VFIO_CTR_CHECKS.to_vec(),
        Vmm::Qemu => QEMU_CELLS.to_vec(),
    }
    .into_iter()
    .filter(|n| wanted(n))
    .collect();
    if names.is_empty() {
        return (0, 0);
    }
    let setup = (|| {
        let group = crate::vfio::edu_group()?;
        let dir = tempfile::Builder::new().prefix("kata-lab-vfio").tempdir()?;
        let proof_dir = dir.path().join("proof");
        if vmm == Vmm::Builtin {
            std::fs::create_dir(&proof_dir)?;
            crate::vfio::build_proof(&proof_dir)?;
            std::fs::create_dir_all(Path::new(CDI_FILE).parent().context("a CDI directory")?)?;
            std::fs::write(CDI_FILE, cdi_spec(&group)).context(CDI_FILE)?;
        }
        let t = Instant::now();
        // QEMU's cells name their files in `ctr run`: containerd's default stays as shipped.
        let default_edit: &dyn Fn(String) -> Result<String> = match vmm {
            Vmm::Builtin => &cold_plug_config,
            Vmm::Qemu => &Ok,
        };
        let ctr = crash::lab_containerd(dir.path(), NS, default_edit, &[])?;
        println!(
            "kata-lab: containerd VFIO cells ({vmm}): containerd up, image imported in {:.1?}",
            t.elapsed()
        );
        Ok::<_, anyhow::Error>((group, dir, proof_dir, ctr))
    })();
    let mut lines = Lines {
        vmm,
        ran: 0,
        passed: 0,
    };
    match setup {
        Ok((group, dir, proof_dir, ctr)) => match vmm {
            Vmm::Builtin => builtin_cells(&ctr, &group, &proof_dir, &mut lines),
            Vmm::Qemu => qemu_cells(&ctr, &group, dir.path(), wanted, &mut lines),
        },
        Err(e) => {
            for n in names {
                lines.line(n, Err(anyhow::anyhow!("not run: {e:#}")));
            }
        }
    }
    if vmm == Vmm::Builtin {
        let _ = std::fs::remove_file(CDI_FILE);
    }
    (lines.ran, lines.passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_shipped_configuration_gets_root_port_cold_plug() {
        let shipped = crate::default_vmm::dragonball_toml().unwrap();
        let text = std::fs::read_to_string(shipped).unwrap();
        let edited = cold_plug_config(text).unwrap();
        assert!(edited.contains(ROOT_PORT_COLD_PLUG));
        assert!(!edited.contains(SHIPPED_COLD_PLUG));
        let e = cold_plug_config(edited).unwrap_err().to_string();
        assert!(e.contains("no-port") && e.contains("vfio_ctr.rs"), "{e}");
    }

    #[test]
    fn the_shipped_qemu_configuration_gets_each_setup() {
        let hot = qemu_config(true).unwrap();
        let cold = qemu_config(false).unwrap();
        for text in [&hot, &cold] {
            assert!(text.contains("\ndefault_memory = 256\n"), "{text}");
            assert!(text.contains("\nreconnect_timeout_ms = 150000\n"));
        }
        assert!(hot.contains("\npcie_root_port = 1\n") && hot.contains(SHIPPED_COLD_PLUG));
        assert!(cold.contains(ROOT_PORT_COLD_PLUG) && cold.contains("\npcie_root_port = 0\n"));
        // Both load, each as its setup says.
        for (text, hot_) in [(hot, true), (cold, false)] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("configuration-qemu-runtime-rs.toml");
            std::fs::write(&file, text).unwrap();
            let loaded = kata_sandbox::config::ConfigLoader::new()
                .path(&file)
                .load()
                .unwrap();
            let qemu = &loaded.config.hypervisor["qemu"];
            assert_eq!(qemu.default_memory, 256);
            match hot_ {
                true => assert_eq!(
                    (qemu.cold_plug_vfio, qemu.pcie_root_port),
                    (kata_hypervisor::PciePort::NoPort, 1)
                ),
                false => assert_eq!(qemu.cold_plug_vfio, kata_hypervisor::PciePort::RootPort),
            }
        }
        // A line the file no longer has fails, naming it and the file.
        let e = edit("x = 1\n", "f.toml", &[("\npcie_root_port = 0\n", "")]).unwrap_err();
        assert!(e.to_string().contains("pcie_root_port") && e.to_string().contains("f.toml"));
    }

    #[test]
    fn the_qemu_cells_are_lab_checks() {
        for name in QEMU_CELLS {
            assert!(kata_lab::protocol::VFIO_CHECKS.contains(&name), "{name}");
        }
        assert_eq!(
            pod_args(Some("p"), "p"),
            [
                "--annotation",
                "io.kubernetes.cri.container-type=container",
                "--annotation",
                "io.kubernetes.cri.sandbox-id=p"
            ]
        );
    }

    #[test]
    fn the_cdi_spec_names_the_group() {
        let spec = cdi_spec(Path::new("/dev/vfio/2"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("edu.json"), &spec).unwrap();
        let registry = kata_resource::cdi::CdiRegistry::new(vec![dir.path().to_path_buf()]);
        let (key, value) = ("cdi.k8s.io/kata-lab".to_string(), CDI_NAME.to_string());
        let devices = registry
            .resolve(&[(key, value)].into_iter().collect())
            .unwrap();
        assert_eq!(devices.len(), 1, "{spec}");
        assert_eq!(devices[0].vfio_nodes, [PathBuf::from("/dev/vfio/2")]);
    }

    #[test]
    fn a_held_node_is_found() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let held = holders(&[f.path()]);
        assert!(
            held.iter()
                .any(|h| h.starts_with(&format!("process {} ", std::process::id()))),
            "{held:?}"
        );
        assert!(holders(&[Path::new("/nonexistent/vfio/9")]).is_empty());
    }
}
