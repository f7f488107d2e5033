//! A real device cold-plugged through containerd (issue 12): `builtin-vfio-ctr-cold` and
//! `builtin-vfio-ctr-cdi-vfio-mode`.
//!
//! The crash row's containerd (`crash::lab_containerd`: the host's `containerd` and `ctr` in
//! L1, the lab's `containerd-shim-katalab-v2` as runtime `io.containerd.katalab.v2`) on the
//! shipped `configuration-dragonball.toml` with one change, `cold_plug_vfio = "root-port"`:
//! the **built-in VMM** (kata-vmm in the shim's process, KVM in L1), which cold-plugs VFIO
//! only. Each cell is what a user does, in a sandbox of its own:
//!
//! 1. `ctr run -d` giving the container the edu's group in L1 — `vfio-ctr-cold`: `--device
//!    /dev/vfio/<group>` in the file's `vfio_mode = "guest-kernel"`; `vfio-ctr-cdi-vfio-mode`:
//!    the CDI annotation `cdi.k8s.io/kata-lab=kata-lab.io/edu=edu` (a spec file in
//!    `/var/run/cdi`), `io.katacontainers.config.runtime.vfio_mode=vfio`, `--cap-add
//!    CAP_SYS_RAWIO` and the proof program (`vfio_proof.c`, built static) bind-mounted at
//!    `/proof`. The shim resolves the device before the VM exists and the sandbox boots with
//!    the edu on kata-vmm's PCI root bus;
//! 2. `ctr task exec`: a listing of `/sys/bus/pci/devices` sees 1234:11e8 on L2's root bus
//!    (guest PCI path `01`, where the agent waited for it); the proof program reads the edu's
//!    identification through L2's VFIO and computes 5! in its registers;
//! 3. `ctr task kill`, `ctr task rm`, `ctr container rm`: and nothing is left
//!    (`kata_testkit::leaks::sandbox_leftovers`: no process, mount, sandbox directory, cgroup,
//!    task or container; no new shim socket or KVM descriptor), and no process holds the
//!    edu's `/dev/vfio` nodes: the device is free for the next VM.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_lab::protocol::{check_line, BUILTIN_VFIO_CTR_CHECKS};
use kata_testkit::containerd::Containerd;
use kata_testkit::leaks::{cmdlines, sandbox_leftovers};

use crate::crash::{self, RUNTIME, SHIM, SHIM_SOCKETS, STATE_ROOT};

/// `ctr`'s namespace for this case (and the cgroup parent of its container).
const NS: &str = "kata-lab-vfio";
/// The shipped file's cold-plug line, and what this case makes of it.
const SHIPPED_COLD_PLUG: &str = "\ncold_plug_vfio = \"no-port\"\n";
const ROOT_PORT_COLD_PLUG: &str = "\ncold_plug_vfio = \"root-port\"\n";

/// The shipped configuration's text with cold-plug on a root port (the built-in VMM's root
/// bus); a file that no longer says `no-port` fails the case naming the line.
fn cold_plug_config(text: String) -> Result<String> {
    ensure!(
        text.matches(SHIPPED_COLD_PLUG).count() == 1,
        "configuration-dragonball.toml no longer says {SHIPPED_COLD_PLUG:?} once: update the \
         lab's containerd VFIO case (src/vfio_ctr.rs)"
    );
    Ok(text.replacen(SHIPPED_COLD_PLUG, ROOT_PORT_COLD_PLUG, 1))
}

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
    ensure!(
        out.status.success(),
        "`ctr {}`: {}, stdout {stdout:?}, stderr {:?}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
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

/// What is left of sandbox `id` (see the [module docs](self)).
fn left(
    c: &Containerd,
    id: &str,
    group: &Path,
    sockets_before: &BTreeSet<String>,
    kvm_before: &BTreeSet<String>,
) -> Vec<String> {
    let mut left = sandbox_leftovers(c, Path::new(STATE_ROOT), SHIM, NS, id);
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

/// One cell: what the user gives `ctr run`, what the container then runs, what its output
/// must say.
struct Cell<'a> {
    /// The check (without `builtin-`), also the container's id.
    name: &'static str,
    /// `ctr run`'s options that give the container the device.
    run_args: Vec<String>,
    /// What `ctr task exec` runs in it.
    exec: Vec<&'a str>,
    /// Judges the exec's output: what it proved, or why not.
    judge: &'a dyn Fn(&str) -> Result<String>,
}

/// A cell: run, look, remove, check (see the [module docs](self)).
fn cell(c: &Containerd, group: &Path, cell: &Cell<'_>) -> Result<String> {
    let id = cell.name;
    let sockets_before = crash::shim_sockets();
    let kvm_before = crash::all_kvm_fds();
    let t = Instant::now();
    let mut run: Vec<&str> = vec!["run", "-d", "--runtime", RUNTIME];
    run.extend(cell.run_args.iter().map(String::as_str));
    run.extend([kata_testkit::image::IMAGE_NAME, id, "sleep", "1000"]);
    ctr_out(c, &run).context("`ctr run` (the sandbox with the edu cold-plugged)")?;
    let started = t.elapsed();
    let mut exec = vec!["task", "exec", "--exec-id", "look", id];
    exec.extend(&cell.exec);
    let said = ctr_out(c, &exec).context("the container's look at the device")?;
    let proved = (cell.judge)(&said)?;
    ctr_out(c, &["task", "kill", "-s", "KILL", id])?;
    c.wait_status(id, "STOPPED", Duration::from_secs(30))?;
    ctr_out(c, &["task", "rm", id])?;
    ctr_out(c, &["container", "rm", id])?;
    // containerd's cleanup of the shim may take a moment.
    let t0 = Instant::now();
    let left = loop {
        let left = left(c, id, group, &sockets_before, &kvm_before);
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
        "`ctr run {}` on the built-in VMM (cold_plug_vfio = \"root-port\"): started in \
         {started:.1?}; {proved}; after `ctr task rm` and `ctr container rm` clean in {:.1?}: \
         no process, mount, sandbox directory, shim socket, cgroup, task, container, KVM or \
         VFIO descriptor left",
        cell.run_args.join(" "),
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

/// The cells, each its own sandbox under one containerd.
fn cells(c: &Containerd, group: &Path, proof_dir: &Path) -> Vec<(&'static str, Result<String>)> {
    let device = group.display().to_string();
    let list = |out: &str| {
        crate::vfio::seen_at_depth(out, 1).map(|p| {
            format!("vfio_mode guest-kernel: the container sees 1234:11e8 at guest PCI path {p}")
        })
    };
    let proof =
        |out: &str| crate::vfio::proof_ok(out).map(|p| format!("vfio_mode vfio (annotation): {p}"));
    let proof_path = format!("/proof/{}", crate::vfio::PROOF);
    let by_device = Cell {
        name: BUILTIN_VFIO_CTR_CHECKS[0],
        run_args: vec!["--device".into(), device],
        exec: vec!["sh", "-c", crate::vfio::LIST_EDU],
        judge: &list,
    };
    let by_cdi = Cell {
        name: BUILTIN_VFIO_CTR_CHECKS[1],
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
    };
    let mut out = Vec::new();
    for cell_ in [by_device, by_cdi] {
        let result = cell(c, group, &cell_);
        if result.is_err() {
            c.force_remove(cell_.name);
        }
        out.push((cell_.name, result));
    }
    out
}

/// Runs the cells (one `builtin-vfio-ctr-*` line each); returns (ran, passed).
pub fn run() -> (usize, usize) {
    let setup = (|| {
        let group = crate::vfio::edu_group()?;
        let dir = tempfile::Builder::new().prefix("kata-lab-vfio").tempdir()?;
        let proof_dir = dir.path().join("proof");
        std::fs::create_dir(&proof_dir)?;
        crate::vfio::build_proof(&proof_dir)?;
        std::fs::create_dir_all(Path::new(CDI_FILE).parent().context("a CDI directory")?)?;
        std::fs::write(CDI_FILE, cdi_spec(&group)).context(CDI_FILE)?;
        let t = Instant::now();
        let ctr = crash::lab_containerd(dir.path(), NS, &cold_plug_config, &[])?;
        println!(
            "kata-lab: containerd VFIO cells: containerd up, image imported in {:.1?}",
            t.elapsed()
        );
        Ok::<_, anyhow::Error>((group, dir, proof_dir, ctr))
    })();
    let results = match setup {
        Ok((group, _dir, proof_dir, ctr)) => cells(&ctr, &group, &proof_dir),
        Err(e) => BUILTIN_VFIO_CTR_CHECKS
            .iter()
            .map(|n| (*n, Err(anyhow::anyhow!("not run: {e:#}"))))
            .collect(),
    };
    let _ = std::fs::remove_file(CDI_FILE);
    let mut passed = 0;
    let ran = results.len();
    for (name, result) in results {
        passed += usize::from(result.is_ok());
        let result = result.map_err(|e| format!("{e:#}"));
        println!("{}", check_line(&format!("builtin-{name}"), &result));
    }
    (ran, passed)
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
