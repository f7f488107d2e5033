//! A real device cold-plugged through containerd (issue 12): `builtin-vfio-ctr-cold`.
//!
//! The crash row's containerd (`crash::lab_containerd`: the host's `containerd` and `ctr` in
//! L1, the lab's `containerd-shim-katalab-v2` as runtime `io.containerd.katalab.v2`) on the
//! shipped `configuration-dragonball.toml` with one change, `cold_plug_vfio = "root-port"`:
//! the **built-in VMM** (kata-vmm in the shim's process, KVM in L1), which cold-plugs VFIO
//! only, in the file's `vfio_mode = "guest-kernel"`. A user's sequence:
//!
//! 1. `ctr run -d --device /dev/vfio/<group>` (the edu's group in L1): the shim resolves the
//!    spec's VFIO entry before the VM exists and the sandbox boots with the edu on kata-vmm's
//!    PCI root bus;
//! 2. `ctr task exec` of a listing of `/sys/bus/pci/devices`: the container sees 1234:11e8 on
//!    L2's root bus (guest PCI path `01`, where the agent waited for it);
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
/// The container's id.
const ID: &str = "lv-cold";
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

/// What is left of the case's sandbox (see the [module docs](self)).
fn left(
    c: &Containerd,
    group: &Path,
    sockets_before: &BTreeSet<String>,
    kvm_before: &BTreeSet<String>,
) -> Vec<String> {
    let mut left = sandbox_leftovers(c, Path::new(STATE_ROOT), SHIM, NS, ID);
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

/// The case: run, look, remove, check (see the [module docs](self)).
fn case(c: &Containerd, group: &Path) -> Result<String> {
    let sockets_before = crash::shim_sockets();
    let kvm_before = crash::all_kvm_fds();
    let device = group.display().to_string();
    let t = Instant::now();
    ctr_out(
        c,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--device",
            &device,
            kata_testkit::image::IMAGE_NAME,
            ID,
            "sleep",
            "1000",
        ],
    )
    .context("`ctr run --device` (the sandbox with the edu cold-plugged)")?;
    let started = t.elapsed();
    let listing = ctr_out(
        c,
        &[
            "task",
            "exec",
            "--exec-id",
            "list",
            ID,
            "sh",
            "-c",
            crate::vfio::LIST_EDU,
        ],
    )
    .context("listing the container's PCI functions")?;
    let path = crate::vfio::seen_at_depth(&listing, 1)
        .context("the edu on the built-in VMM's root bus")?;
    ctr_out(c, &["task", "kill", "-s", "KILL", ID])?;
    c.wait_status(ID, "STOPPED", Duration::from_secs(30))?;
    ctr_out(c, &["task", "rm", ID])?;
    ctr_out(c, &["container", "rm", ID])?;
    // containerd's cleanup of the shim may take a moment.
    let t0 = Instant::now();
    let left = loop {
        let left = left(c, group, &sockets_before, &kvm_before);
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
        "`ctr run --device {device}` on the built-in VMM (cold_plug_vfio = \"root-port\", \
         vfio_mode guest-kernel): started in {started:.1?}; the container sees 1234:11e8 at \
         guest PCI path {path}; after `ctr task rm` and `ctr container rm` clean in {:.1?}: no \
         process, mount, sandbox directory, shim socket, cgroup, task, container, KVM or VFIO \
         descriptor left",
        t0.elapsed()
    ))
}

/// Runs the case (one `builtin-vfio-ctr-cold` line); returns (ran, passed).
pub fn run() -> (usize, usize) {
    let name = format!("builtin-{}", BUILTIN_VFIO_CTR_CHECKS[0]);
    let result = (|| {
        let group = crate::vfio::edu_group()?;
        let dir = tempfile::Builder::new().prefix("kata-lab-vfio").tempdir()?;
        let t = Instant::now();
        let ctr = crash::lab_containerd(dir.path(), NS, &cold_plug_config, &[])?;
        println!(
            "kata-lab: containerd VFIO case: containerd up, image imported in {:.1?}",
            t.elapsed()
        );
        let result = case(&ctr, &group);
        if result.is_err() {
            ctr.force_remove(ID);
        }
        result
    })();
    let ok = result.is_ok();
    println!(
        "{}",
        check_line(&name, &result.map_err(|e| format!("{e:#}")))
    );
    (1, usize::from(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

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
