//! The VFIO checks (issue 12) with the QEMU backend: L1's edu device (1234:11e8), bound to
//! `vfio-pci` by `lab/init.sh`, given to L2 containers through kata-sandbox.
//!
//! - `vfio-cold-root-port`: a sandbox built with the device and `cold_plug_vfio =
//!   "root-port"`; a container naming `/dev/vfio/<group>` sees the edu behind a root port;
//! - `vfio-bar0-guest-kernel`: in that container (`vfio_mode = "guest-kernel"`, `/dev/mem`,
//!   `CAP_SYS_RAWIO`), BAR0+0 reads the edu's identification `0x010000ed` and a value written
//!   at BAR0+4 reads back inverted;
//! - `vfio-hot-root-port`: a sandbox with `cold_plug_vfio = "no-port"` and one spare root port;
//!   a container naming the device gets it hot-plugged and sees it;
//! - `vfio-hot-unplug`: once that container is deleted the edu is gone from L2, and the port is
//!   free again: a second container gets the device on the same (only) port.
//! - `vfio-mode-cold-root-port`, `vfio-mode-hot-root-port` (`vfio_mode = "vfio"`): the agent
//!   binds the edu to L2's `vfio-pci` (no-IOMMU mode: L2 has no vIOMMU) and the container gets
//!   `/dev/vfio/vfio` and `/dev/vfio/noiommu-N`; the proof program (`vfio_proof.c`, built
//!   static by the runner with L1's `cc`, which is the host's) maps BAR0 through VFIO, reads
//!   the identification `0x010000ed` and computes 5! = `0x78` in the edu's registers. Cold: the
//!   device stays with the VM after the container's delete; hot: it is gone from L2.
//! - `vfio-hot-bridge-port`: a sandbox with `hot_plug_vfio = "bridge-port"` (the PCIe-to-PCI
//!   bridge `pci-bridge0` and its slots, no port to add); a container naming the device gets
//!   it at the bridge's first slot (`<bridge>/01`), after its delete the edu is gone from L2,
//!   and a second container gets it at the same slot (freed);
//! - `vfio-mode-cold-switch-port`, `vfio-mode-cold-bridge-port`, `vfio-mode-hot-switch-port`,
//!   `vfio-mode-hot-bridge-port`: the same proof with the edu behind a switch's downstream
//!   port (4 slots deep) and on the PCIe-to-PCI bridge, cold and hot-plugged. They share
//!   their sandbox with `vfio-cold-switch-port`, `vfio-cold-bridge-port`,
//!   `vfio-hot-switch-port` and `vfio-hot-bridge-port` (one L2 boot each), so the proof
//!   container is the last container naming the device (cold: bound already; hot: plugged
//!   again on the freed port);
//! - `vfio-ctr-hot`, `vfio-ctr-cold`: through L1's containerd on the shipped QEMU
//!   configuration (`src/vfio_ctr.rs`).
//!
//! With the built-in VMM ([`run_builtin`], reported as `builtin-<name>`, names in
//! [`kata_lab::protocol::BUILTIN_VFIO_CHECKS`]): kata-vmm's own PCI root bus, cold-plug only,
//! BARs trapped, no interrupts.
//!
//! - `vfio-cold`: a sandbox built with the device (`cold_plug_vfio = "root-port"`); a container
//!   naming the group sees the edu on L2's root bus at `00:01.0` (guest PCI path `01`);
//! - `vfio-bar0-guest-kernel`: in that container BAR0+0 reads `0x010000ed` and BAR0+4 reads a
//!   written value back inverted (`/dev/mem`, each access a KVM MMIO exit in the runner);
//! - `vfio-mode-cold` (`vfio_mode = "vfio"`): the proof program through L2's no-IOMMU VFIO;
//! - `vfio-hot-root-port`: a sandbox without cold-plug and one spare root port; a container
//!   naming the device gets it hot-plugged behind the port, its delete unplugs it (gone from
//!   L2), and a second container gets it again at the same guest path.
//! - `vfio-cold-switch-port`, `vfio-mode-cold-switch-port`: the edu cold-plugged behind the
//!   built-in VMM's PCIe switch (`cold_plug_vfio = "switch-port"`), seen at `01/00/00/00` with
//!   the downstream port's pciehp slot, and the proof program in `vfio` mode;
//! - `vfio-hot-switch-port`: the hot-plug case on the switch's one spare downstream port
//!   (`hot_plug_vfio = "switch-port"`, `pcie_switch_port = 1`), at `01/00/00/00`;
//! - `vfio-mode-hot-switch-port`, `vfio-mode-hot-bridge-port`: in the sandbox of
//!   `vfio-hot-<port>` (`vfio_mode = "vfio"`, one L2 boot for both), after its listing, unplug
//!   and replug, the proof program on the edu plugged once more (QEMU's proof code,
//!   [`proof_then_after`]); gone from L2 after its delete;
//! - `vfio-cold-bridge-port`, `vfio-mode-cold-bridge-port`: the edu cold-plugged in slot 1 of
//!   the built-in VMM's PCI-to-PCI bridge (`cold_plug_vfio = "bridge-port"`), at `01/01`, and
//!   the proof program in `vfio` mode;
//! - `vfio-hot-bridge-port`: the hot-plug case on the bridge's SHPC slots (`hot_plug_vfio =
//!   "bridge-port"`), at `01/01`: L2's shpchp enables the slot after the button, disables it
//!   on the unplug's button.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_hypervisor::PciePort;
use kata_lab::protocol::{check_line, figure_line};
use kata_sandbox::oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, Mount, Spec,
};
use kata_sandbox::{ContainerSpec, Sandbox};

/// The edu device's ids.
const EDU: (&str, &str) = ("0x1234", "0x11e8");
/// A container's listing of the edu functions it sees: `edu <sysfs path>` per function.
pub(crate) const LIST_EDU: &str = "for d in /sys/bus/pci/devices/*; do \
    if [ \"$(cat $d/vendor)\" = 0x1234 ] && [ \"$(cat $d/device)\" = 0x11e8 ]; then \
    echo \"edu $(readlink -f $d)\"; fi; done; true";
/// The hot-plug slots L2 registered (only a hot-plug driver, pciehp here, registers them):
/// `slot <name> <bus address>` each.
const HOTPLUG_SLOTS: &str = "for s in /sys/bus/pci/slots/*; do \
    [ -f $s/address ] && echo \"slot ${s##*/} $(cat $s/address)\"; done; true";

/// The built-in VMM's root port as L2 sees it: a hot-plug slot pciehp registered whose bus is
/// the edu's (`0000:01:00`: device 0 behind the first port).
fn pciehp_slot(listing: &str) -> Result<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("slot "))
        .find(|l| l.ends_with(" 0000:01:00"))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no hot-plug slot at 0000:01:00 in L2 (pciehp did not bind the root port): \
                 {listing:?}"
            )
        })
}

/// BAR0 through /dev/mem: identification, then liveness (BAR0+4 reads back inverted).
const BAR0: &str = "d=$(for d in /sys/bus/pci/devices/*; do \
    [ \"$(cat $d/vendor)\" = 0x1234 ] && [ \"$(cat $d/device)\" = 0x11e8 ] && echo $d; done); \
    [ -n \"$d\" ] || { echo no edu; exit 1; }; \
    echo 1 > $d/enable || echo enable failed; \
    bar=$(head -n1 $d/resource | cut -d' ' -f1); \
    a=$(printf '0x%x' $((bar + 4))); \
    id=$(busybox devmem $bar 32); busybox devmem $a 32 0x12345678; inv=$(busybox devmem $a 32); \
    echo \"bar0=$bar id=$id inv=$inv\"";

/// The proof program of `vfio` mode (see the module docs), C, built static.
const PROOF_C: &str = include_str!("vfio_proof.c");
/// Where the proof program is in the container's rootfs.
pub(crate) const PROOF: &str = "vfio-proof";

/// Builds the proof program into `rootfs` with L1's `cc` (the host's, read-only under L1's
/// chroot; it writes only in /tmp and the rootfs).
pub(crate) fn build_proof(rootfs: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("vfio_proof.c");
    std::fs::write(&src, PROOF_C)?;
    let out = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(rootfs.join(PROOF))
        .arg(&src)
        .output()
        .context("running cc for the VFIO proof program")?;
    ensure!(
        out.status.success(),
        "cc -static vfio_proof.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A spec for a `vfio` mode container given `vfio`: `CAP_SYS_RAWIO` (a no-IOMMU group needs
/// it to be opened), nothing else beyond the defaults.
fn vfio_mode_spec(vfio: &Path) -> Result<Spec> {
    let mut spec = vfio_spec(vfio, false)?;
    set_caps(
        &mut spec,
        [
            Capability::SysRawio,
            Capability::Kill,
            Capability::AuditWrite,
        ]
        .into(),
    )?;
    Ok(spec)
}

/// Gives `spec`'s process exactly `caps` as its bounding, effective and permitted sets, and
/// empty inheritable and ambient sets: given, not left out, since the agent keeps its own
/// inheritable set for a spec without one, which capset(2) then refuses under the smaller
/// bounding set.
fn set_caps(spec: &mut Spec, caps: std::collections::HashSet<Capability>) -> Result<()> {
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .inheritable(std::collections::HashSet::new())
            .ambient(std::collections::HashSet::new())
            .build()?,
    ));
    spec.set_process(Some(p));
    Ok(())
}

/// The proof program's line, checked: identification and factorial.
pub(crate) fn proof_ok(out: &str) -> Result<String> {
    let lower = out.to_lowercase();
    ensure!(
        lower.contains("id=0x010000ed") && lower.contains("fact5=0x78"),
        "the proof program says {out:?}"
    );
    ensure!(lower.contains("/dev/vfio/"), "no VFIO group named: {out:?}");
    Ok(out.trim().to_string())
}

/// One check's result line, counted.
struct Report {
    ran: usize,
    passed: usize,
    /// `qemu` or `builtin`.
    vmm: &'static str,
}

impl Report {
    fn line(&mut self, name: &str, result: Result<String>) {
        let result = result.map_err(|e| format!("{e:#}"));
        self.ran += 1;
        self.passed += usize::from(result.is_ok());
        println!("{}", check_line(&format!("{}-{name}", self.vmm), &result));
    }
}

/// The edu's IOMMU group in L1 (`/dev/vfio/<group>`).
pub(crate) fn edu_group() -> Result<PathBuf> {
    for e in std::fs::read_dir("/sys/bus/pci/devices")? {
        let d = e?.path();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        if read("vendor").trim() == EDU.0 && read("device").trim() == EDU.1 {
            let g = std::fs::read_link(d.join("iommu_group")).context("the edu's iommu_group")?;
            let g = g.file_name().context("a group name")?.to_owned();
            return Ok(Path::new("/dev/vfio").join(g));
        }
    }
    bail!("no edu device (1234:11e8) in L1")
}

/// A spec for a container given `vfio` (and, with `raw`, `/dev/mem`, CAP_SYS_RAWIO and a
/// writable /sys).
fn vfio_spec(vfio: &Path, raw: bool) -> Result<Spec> {
    let mut spec = Spec::default();
    let mut devices = vec![LinuxDeviceBuilder::default()
        .path(vfio)
        .typ(LinuxDeviceType::C)
        .major(0i64)
        .minor(0i64)
        .build()?];
    if raw {
        devices.push(
            LinuxDeviceBuilder::default()
                .path("/dev/mem")
                .typ(LinuxDeviceType::C)
                .major(1i64)
                .minor(1i64)
                .file_mode(0o600u32)
                .build()?,
        );
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("a default linux section")?;
    linux.set_devices(Some(devices));
    if raw {
        let mut res = linux.resources().clone().unwrap_or_default();
        res.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()?]));
        linux.set_resources(Some(res));
        privileged(&mut spec, &[Capability::SysRawio])?;
    }
    Ok(spec)
}

/// Makes `spec` a container that may write to sysfs as the guest's root: `/sys` read-write, no
/// masked or read-only paths, and `CAP_SYS_ADMIN`, `CAP_KILL`, `CAP_AUDIT_WRITE` and `extra`
/// as its bounding, effective and permitted sets (the VFIO proof's raw mode, and
/// `cpu_hotplug`'s hostile guest).
pub(crate) fn privileged(spec: &mut Spec, extra: &[Capability]) -> Result<()> {
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("a default linux section")?;
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);
    let mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|mut m| {
            if m.destination() == Path::new("/sys") {
                let opts = m
                    .options()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| o != "ro")
                    .collect();
                m.set_options(Some(opts));
            }
            m
        })
        .collect();
    spec.set_mounts(Some(mounts));
    let caps = [
        Capability::SysAdmin,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect();
    set_caps(spec, caps)
}

async fn run_in(
    sandbox: &Sandbox,
    rootfs: &Path,
    vfio: &Path,
    raw: bool,
    script: &str,
) -> Result<String> {
    let spec = ContainerSpec::from_oci(vfio_spec(vfio, raw)?, rootfs).args(["sh", "-c", script]);
    let out = sandbox.run(spec).await?;
    ensure!(
        out.status.success(),
        "status {}, stdout {:?}, stderr {:?}",
        out.status,
        out.stdout_str(),
        out.stderr_str()
    );
    Ok(out.stdout_str().trim().to_string())
}

/// The guest PCI path of a sysfs device path (`/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0`
/// → `02/00`).
fn guest_pci_path(sysfs: &str) -> String {
    sysfs
        .split('/')
        .filter(|c| c.len() == 12 && c.as_bytes()[4] == b':' && c.ends_with(".0"))
        .map(|c| c[8..10].to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The edu as a container lists it: one function, `depth` slots from the root bus (2 behind a
/// root port or on the bridge, 4 behind a switch's downstream port); its guest PCI path.
pub(crate) fn seen_at_depth(listing: &str, depth: usize) -> Result<String> {
    let lines: Vec<&str> = listing.lines().filter(|l| l.starts_with("edu ")).collect();
    ensure!(
        lines.len() == 1,
        "the container lists {lines:?} for 1234:11e8"
    );
    let path = guest_pci_path(&lines[0][4..]);
    ensure!(
        path.split('/').count() == depth,
        "the edu is at {path} ({}), not {depth} slots from the root bus",
        &lines[0][4..]
    );
    Ok(path)
}

/// How deep the edu sits behind a port of this kind.
fn depth(port: PciePort) -> usize {
    match port {
        PciePort::SwitchPort => 4,
        _ => 2,
    }
}

/// A sandbox for one setup: `cold` plugs the edu at boot on a `port`; otherwise one spare
/// port of kind `port` waits for the hot-plug.
async fn build(
    port: PciePort,
    cold: bool,
    vfio_mode: bool,
    vfio: &Path,
    root_dir: &str,
) -> Result<Sandbox> {
    crate::l2_boot::past_firmware(|| build_once(port, cold, vfio_mode, vfio, root_dir)).await
}

async fn build_once(
    port: PciePort,
    cold: bool,
    vfio_mode: bool,
    vfio: &Path,
    root_dir: &str,
) -> Result<Sandbox> {
    let id = format!(
        "lab-vfio-{}-{port}{}",
        if cold { "cold" } else { "hot" },
        if vfio_mode { "-vfio" } else { "" }
    );
    // QEMU whatever the default VMM is (the built-in VMM has no passthrough yet).
    let mut b = Sandbox::builder().hypervisor(kata_sandbox::HypervisorType::Qemu);
    if vfio_mode {
        // `[runtime] vfio_mode = "vfio"`, with the same QEMU section.
        let mut config = kata_sandbox::config::KataConfig::default();
        config.hypervisor.insert("qemu".into(), b.config().clone());
        config.runtime.vfio_mode = "vfio".into();
        b = kata_sandbox::SandboxBuilder::from_kata_config(config)?;
    }
    let mut b = b
        .id(&id)
        .memory_mib(256)
        .vcpus(1)
        .root_dir(root_dir)
        // QEMU pins L2's memory for the device's DMA before it boots it: slow under TCG.
        .agent_timeout(Duration::from_secs(150));
    let mut hv = b.config().clone();
    if cold {
        hv.cold_plug_vfio = port;
        b = b.vfio_device(vfio);
    } else {
        hv.cold_plug_vfio = PciePort::NoPort;
        hv.hot_plug_vfio = port;
        match port {
            PciePort::SwitchPort => hv.pcie_switch_port = 1,
            // The PCIe-to-PCI bridge's own slots (SHPC): no port to add.
            PciePort::BridgePort => {}
            _ => hv.pcie_root_port = 1,
        }
    }
    b = b.hypervisor_config(hv);
    Ok(tokio::time::timeout(Duration::from_secs(300), b.build())
        .await
        .context("no sandbox after 300 s")??)
}

/// Cold-plug on `port`: the edu is seen at its depth; on a root port, also BAR0 (`bar0`).
async fn cold_case(r: &mut Report, port: PciePort, vfio: &Path, rootfs: &Path, root_dir: &str) {
    let name = format!("vfio-cold-{port}");
    let limit = Duration::from_secs(180);
    let bar0 = port == PciePort::RootPort;
    let t = Instant::now();
    let sb = match build(port, true, false, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            r.line(
                &name,
                Err(e.context("the sandbox with the device did not start")),
            );
            if bar0 {
                r.line(
                    "vfio-bar0-guest-kernel",
                    Err(anyhow::anyhow!("not run: no sandbox")),
                );
            }
            return;
        }
    };
    let booted = t.elapsed();
    if bar0 {
        let agent = sb.boot_timings().agent_connected;
        println!(
            "{}",
            figure_line(
                "qemu-vfio-cold-boot-to-agent-ready",
                agent.as_secs_f64() * 1000.0,
                "ms",
                "one edu cold-plugged on a root port (QEMU pins L2's 256 MiB for its DMA first); \
                 compare qemu-kvm-boot-to-agent-ready, without a device"
            )
        );
    }
    let seen = tokio::time::timeout(limit, run_in(&sb, rootfs, vfio, false, LIST_EDU)).await;
    r.line(
        &name,
        seen.context("timed out")
            .and_then(|s| s)
            .and_then(|l| seen_at_depth(&l, depth(port)))
            .map(|p| {
                format!(
                    "{} cold-plugged ({port}): 1234:11e8 at guest PCI path {p}; sandbox with it booted in {booted:.1?}",
                    vfio.display()
                )
            }),
    );
    if bar0 {
        let bar = tokio::time::timeout(limit, run_in(&sb, rootfs, vfio, true, BAR0)).await;
        r.line(
            "vfio-bar0-guest-kernel",
            bar.context("timed out").and_then(|s| s).and_then(|out| {
                let lower = out.to_lowercase();
                ensure!(lower.contains("id=0x010000ed"), "identification: {out}");
                ensure!(
                    lower.contains("inv=0xedcba987"),
                    "liveness (0x12345678 inverted): {out}"
                );
                Ok(format!("vfio_mode guest-kernel: {out}"))
            }),
        );
    }
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the {name} sandbox down: {e:#}");
    }
}

/// Hot-plug onto the one spare port of kind `port` (on the bridge: its first free SHPC slot),
/// then the unplug check: gone after the container's delete, plugged again at the same place
/// (the port or slot was freed). A root port reports that as `vfio-hot-unplug`, the bridge in
/// its own line (`vfio-hot-bridge-port`); a switch port not at all (its `vfio` mode case
/// replugs it).
async fn hot_case(r: &mut Report, port: PciePort, vfio: &Path, rootfs: &Path, root_dir: &str) {
    let name = format!("vfio-hot-{port}");
    let unplug_name = (port == PciePort::RootPort).then_some("vfio-hot-unplug");
    let limit = Duration::from_secs(180);
    let sb = match build(port, false, false, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            r.line(&name, Err(e.context("the sandbox did not start")));
            if let Some(u) = unplug_name {
                r.line(u, Err(anyhow::anyhow!("not run: no sandbox")));
            }
            return;
        }
    };
    let mut first_path = None;
    let hot = tokio::time::timeout(limit, async {
        let t = Instant::now();
        let p = seen_at_depth(
            &run_in(&sb, rootfs, vfio, false, LIST_EDU).await?,
            depth(port),
        )?;
        on_its_port(port, &p)?;
        first_path = Some(p.clone());
        println!(
            "{}",
            figure_line(
                &format!("qemu-vfio-hotplug-{port}-container-run"),
                t.elapsed().as_secs_f64() * 1000.0,
                "ms",
                "a container run with the edu hot-plugged: device_add, the agent's wait for it \
                 in L2, the container, its delete with device_del"
            )
        );
        Ok::<_, anyhow::Error>(format!(
            "{} hot-plugged ({} → a free {port}): 1234:11e8 at guest PCI path {p}; container created, ran and deleted in {:.1?}",
            vfio.display(),
            if port == PciePort::RootPort { "no-port" } else { "hot_plug_vfio" },
            t.elapsed()
        ))
    })
    .await
    .context("timed out")
    .and_then(|s| s);
    let unplug = match (&first_path, port) {
        (Some(first), PciePort::RootPort | PciePort::BridgePort) => Some(
            tokio::time::timeout(limit, unplugged_then_again(&sb, rootfs, vfio, port, first))
                .await
                .context("timed out")
                .and_then(|s| s),
        ),
        _ => None,
    };
    let hot_ok = hot.is_ok();
    match (unplug_name, unplug) {
        (Some(u), unplug) => {
            r.line(&name, hot);
            let unplug =
                unplug.unwrap_or_else(|| Err(anyhow::anyhow!("not run: the hot-plug failed")));
            r.line(u, unplug);
        }
        (None, Some(unplug)) => r.line(&name, hot.and_then(|h| Ok(format!("{h}; {}", unplug?)))),
        (None, None) => r.line(&name, hot),
    }
    if hot_ok && port == PciePort::RootPort {
        match tokio::time::timeout(limit, hotplug_latency(&sb, rootfs, vfio)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("kata-lab: the hot-plug latency figure: {e:#}"),
            Err(_) => eprintln!("kata-lab: the hot-plug latency figure timed out"),
        }
    }
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the {name} sandbox down: {e:#}");
    }
}

/// Checks a hot-plugged edu's guest PCI path says it is where `port` puts it: on the bridge
/// at the first SHPC slot it hands out (`<bridge>/01`), behind a port at slot 0.
fn on_its_port(port: PciePort, path: &str) -> Result<()> {
    let last = path.rsplit('/').next().unwrap_or_default();
    let want = if port == PciePort::BridgePort {
        "01"
    } else {
        "00"
    };
    ensure!(
        last == want,
        "the edu is at {path}: not at slot {want} of a {port}"
    );
    Ok(())
}

/// After the hot-plugging container's delete: a plain container lists no edu in L2 (unplugged),
/// then a container naming the device again sees it at `first`, the place the first plug had
/// (the only root port, or the bridge's lowest slot: freed by the unplug).
async fn unplugged_then_again(
    sb: &Sandbox,
    rootfs: &Path,
    vfio: &Path,
    port: PciePort,
    first: &str,
) -> Result<String> {
    let plain = ContainerSpec::from_rootfs_dir(rootfs).args(["sh", "-c", LIST_EDU]);
    let out = sb.run(plain).await?;
    let gone = out.stdout_str();
    ensure!(
        !gone.contains("edu "),
        "after the container's delete L2 still has {gone:?}"
    );
    let again = seen_at_depth(
        &run_in(sb, rootfs, vfio, false, LIST_EDU).await?,
        depth(port),
    )?;
    ensure!(
        again == first,
        "plugged again at {again}, not at {first}: the first plug's place was not freed"
    );
    let freed = match port {
        PciePort::BridgePort => "the bridge's slot",
        PciePort::SwitchPort => "the only downstream port (pcie_switch_port = 1)",
        _ => "the only root port (pcie_root_port = 1)",
    };
    Ok(format!(
        "gone from L2 after the container's delete (device_del, DEVICE_DELETED); plugged again \
         at {again}: {freed} was freed"
    ))
}

/// `vfio_mode = "vfio"` on a `port`, cold- or hot-plugged: the proof program drives the edu
/// through /dev/vfio; then, after the container's delete, the edu stays with the VM (cold) or
/// is gone from L2 (hot). On a switch's downstream port or the bridge ([`SHARED_BOOT`]), the
/// same sandbox first answers `vfio-cold-<port>` / `vfio-hot-<port>`: a container naming the
/// group sees the edu at its depth (hot: plugged for it, unplugged at its delete, so the
/// proof's plug finds the port free again; on the bridge a second listing checks the unplug
/// and the replug at the same slot first). One L2 boot for both (each boot with the edu pins L2's memory for its DMA:
/// about 35 s here), which keeps the whole lab inside L1's deadline.
async fn vfio_mode_case(
    r: &mut Report,
    port: PciePort,
    cold: bool,
    vfio: &Path,
    rootfs: &Path,
    root_dir: &str,
) {
    let name = vfio_mode_name(port, cold);
    let limit = Duration::from_secs(180);
    let listed = SHARED_BOOT
        .contains(&(port, cold))
        .then(|| plain_name(port, cold));
    let t = Instant::now();
    let sb = match build(port, cold, true, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            if let Some(l) = &listed {
                r.line(l, Err(anyhow::anyhow!("{e:#}: the sandbox did not start")));
            }
            r.line(&name, Err(e.context("the sandbox did not start")));
            return;
        }
    };
    if let Some(l) = &listed {
        let booted = t.elapsed();
        let t = Instant::now();
        let seen = tokio::time::timeout(limit, run_in(&sb, rootfs, vfio, false, LIST_EDU)).await;
        let ran = t.elapsed();
        if !cold && matches!(seen, Ok(Ok(_))) {
            println!(
                "{}",
                figure_line(
                    &format!("qemu-vfio-hotplug-{port}-container-run"),
                    ran.as_secs_f64() * 1000.0,
                    "ms",
                    "a container run with the edu hot-plugged: device_add, the agent's wait for \
                     it in L2 and its bind to vfio-pci (vfio_mode vfio), the container, its \
                     delete with device_del"
                )
            );
        }
        let seen = seen
            .context("timed out")
            .and_then(|s| s)
            .and_then(|l| seen_at_depth(&l, depth(port)))
            .and_then(|p| match cold {
                true => Ok(p),
                false => on_its_port(port, &p).map(|()| p),
            });
        let line = match seen {
            Ok(p) if cold => Ok(format!(
                "{} cold-plugged ({port}, vfio_mode vfio): 1234:11e8 at guest PCI path {p}; \
                 sandbox with it booted in {booted:.1?}",
                vfio.display()
            )),
            Ok(p) => {
                let hot = format!(
                    "{} hot-plugged (hot_plug_vfio → a free {port}, vfio_mode vfio): 1234:11e8 \
                     at guest PCI path {p}; container created, ran and deleted in {ran:.1?}",
                    vfio.display()
                );
                // The bridge's check also unplugs and replugs (the switch's proof replugs).
                match port {
                    PciePort::BridgePort => tokio::time::timeout(
                        limit,
                        unplugged_then_again(&sb, rootfs, vfio, port, &p),
                    )
                    .await
                    .context("timed out")
                    .and_then(|s| s)
                    .map(|again| format!("{hot}; {again}")),
                    _ => Ok(hot),
                }
            }
            Err(e) => Err(e),
        };
        r.line(l, line);
    }
    let result = tokio::time::timeout(
        limit,
        proof_then_after(&sb, port, cold, vfio, rootfs, "device_del"),
    )
    .await;
    r.line(&name, result.context("timed out").and_then(|s| s));
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the {name} sandbox down: {e:#}");
    }
}

/// The `vfio` mode proof in a sandbox of either VMM built with `vfio_mode = "vfio"`: a
/// container naming the edu's group runs the proof program (the id and 5! through L2's
/// no-IOMMU VFIO), then a plain container lists the edu after that container's delete: still
/// at its depth when cold-plugged, gone from L2 when hot-plugged (`unplug` names how the VMM
/// took it away: QEMU's `device_del`, the built-in VMM's attention button).
async fn proof_then_after(
    sb: &Sandbox,
    port: PciePort,
    cold: bool,
    vfio: &Path,
    rootfs: &Path,
    unplug: &str,
) -> Result<String> {
    let t = Instant::now();
    let spec = ContainerSpec::from_oci(vfio_mode_spec(vfio)?, rootfs).args([format!("/{PROOF}")]);
    let out = sb.run(spec).await?;
    let said = format!("{}{}", out.stdout_str(), out.stderr_str());
    ensure!(out.status.success(), "status {}: {said:?}", out.status);
    let proof = proof_ok(&said)?;
    let ran = t.elapsed();
    let plain = ContainerSpec::from_rootfs_dir(rootfs).args(["sh", "-c", LIST_EDU]);
    let after = sb.run(plain).await?.stdout_str();
    let after_delete = if cold {
        seen_at_depth(&after, depth(port))
            .map(|p| format!("stays with the VM after the delete (cold-plugged, at {p})"))?
    } else {
        ensure!(
            !after.contains("edu "),
            "after the container's delete L2 still has {after:?}"
        );
        format!("gone from L2 after the delete ({unplug})")
    };
    Ok(format!(
        "vfio_mode vfio, {} on a {port}: {proof} (container ran in {ran:.1?}); {after_delete}",
        if cold { "cold-plugged" } else { "hot-plugged" }
    ))
}

/// The figure `qemu-vfio-hotplug-latency`: a container's create with the edu hot-plugged
/// (device_add, QEMU's pinning, the guest's hot-plug, the agent's wait for the function at its
/// path) less a plain container's create in the same sandbox, each deleted at once.
async fn hotplug_latency(sb: &Sandbox, rootfs: &Path, vfio: &Path) -> Result<()> {
    let t = Instant::now();
    let plain = sb
        .create_container(ContainerSpec::from_rootfs_dir(rootfs).args(["true"]))
        .await?;
    let plain_create = t.elapsed();
    plain.delete().await?;
    let t = Instant::now();
    let with = sb
        .create_container(ContainerSpec::from_oci(vfio_spec(vfio, false)?, rootfs).args(["true"]))
        .await?;
    let with_create = t.elapsed();
    with.delete().await?;
    let latency = with_create.saturating_sub(plain_create);
    println!(
        "{}",
        figure_line(
            "qemu-vfio-hotplug-latency",
            latency.as_secs_f64() * 1000.0,
            "ms",
            &format!(
                "device_add to the function at its path in L2 (the agent's wait): a create with \
                 the edu hot-plugged onto a root port ({with_create:.1?}) less a plain create \
                 ({plain_create:.1?})"
            )
        )
    );
    Ok(())
}

/// The `vfio` mode check of a port kind and plug (`vfio-mode-cold-switch-port`).
fn vfio_mode_name(port: PciePort, cold: bool) -> String {
    format!("vfio-mode-{}-{port}", if cold { "cold" } else { "hot" })
}

/// The port kinds and plugs whose listing check (`vfio-cold-<port>`, `vfio-hot-<port>`) runs
/// in the `vfio` mode case's sandbox ([`vfio_mode_case`]) when the proof program could be
/// built. The root port's keep sandboxes of their own: `guest-kernel` mode's BAR0 check, the
/// unplug check and the hot-plug latency figure run there.
const SHARED_BOOT: [(PciePort, bool); 4] = [
    (PciePort::SwitchPort, true),
    (PciePort::BridgePort, true),
    (PciePort::SwitchPort, false),
    (PciePort::BridgePort, false),
];

/// The listing check of a port kind and plug (`vfio-hot-switch-port`).
fn plain_name(port: PciePort, cold: bool) -> String {
    format!("vfio-{}-{port}", if cold { "cold" } else { "hot" })
}

/// The `vfio` mode cases, in the order they run: cold and hot on every port kind.
const VFIO_MODE_CASES: [(PciePort, bool); 6] = [
    (PciePort::RootPort, true),
    (PciePort::RootPort, false),
    (PciePort::SwitchPort, true),
    (PciePort::BridgePort, true),
    (PciePort::SwitchPort, false),
    (PciePort::BridgePort, false),
];

/// Runs the VFIO checks (those `only` names, else all); returns (ran, passed).
pub async fn run(rootfs: &Path, root_dir: &str, only: Option<&[String]>) -> (usize, usize) {
    let mut r = Report {
        ran: 0,
        passed: 0,
        vmm: "qemu",
    };
    let wanted = |n: &str| only.is_none_or(|o| o.iter().any(|w| w == n));
    let vfio = match edu_group() {
        Ok(v) => v,
        Err(e) => {
            for n in kata_lab::protocol::VFIO_CHECKS.iter().filter(|n| wanted(n)) {
                r.line(n, Err(anyhow::anyhow!("not run: {e:#}")));
            }
            return (r.ran, r.passed);
        }
    };
    // A listing of SHARED_BOOT shares the `vfio` mode case's sandbox.
    let shared = |port: PciePort, cold: bool| {
        SHARED_BOOT.contains(&(port, cold))
            && (wanted(&plain_name(port, cold)) || wanted(&vfio_mode_name(port, cold)))
    };
    let modes: Vec<(PciePort, bool)> = VFIO_MODE_CASES
        .into_iter()
        .filter(|(p, c)| wanted(&vfio_mode_name(*p, *c)) || shared(*p, *c))
        .collect();
    let proof = match modes.is_empty() {
        true => Ok(()),
        false => build_proof(rootfs),
    };
    for port in [
        PciePort::RootPort,
        PciePort::SwitchPort,
        PciePort::BridgePort,
    ] {
        // Without the proof program the listing runs on its own (guest-kernel mode).
        let alone = !shared(port, true) || proof.is_err();
        if alone && wanted(&plain_name(port, true)) {
            cold_case(&mut r, port, &vfio, rootfs, root_dir).await;
        }
    }
    for port in [
        PciePort::RootPort,
        PciePort::SwitchPort,
        PciePort::BridgePort,
    ] {
        let alone = !shared(port, false) || proof.is_err();
        if alone && wanted(&plain_name(port, false)) {
            hot_case(&mut r, port, &vfio, rootfs, root_dir).await;
        }
    }
    match proof {
        Ok(()) => {
            for (port, cold) in modes {
                vfio_mode_case(&mut r, port, cold, &vfio, rootfs, root_dir).await;
            }
        }
        Err(e) => {
            for (port, cold) in modes {
                r.line(
                    &vfio_mode_name(port, cold),
                    Err(anyhow::anyhow!("not run: {e:#}")),
                );
            }
        }
    }
    vfio_irq::run_qemu(&mut r, &vfio, rootfs, root_dir, &wanted).await;
    // Through containerd and the lab's shim (blocking `ctr` calls: a thread outside tokio's).
    let (ran, passed) =
        std::thread::scope(|s| s.spawn(|| crate::vfio_ctr::run_qemu(&wanted)).join())
            .unwrap_or((1, 0));
    r.ran += ran;
    r.passed += passed;
    (r.ran, r.passed)
}

/// A built-in VMM sandbox: `cold` with the edu cold-plugged (else no cold-plug at all), in
/// `vfio_mode = "vfio"` with `vfio_mode`.
async fn build_builtin(
    cold: bool,
    vfio_mode: bool,
    vfio: &Path,
    root_dir: &str,
) -> Result<Sandbox> {
    build_builtin_on(PciePort::RootPort, cold, vfio_mode, vfio, root_dir).await
}

/// [`build_builtin`] with the edu cold-plugged on a port of kind `port` (`root-port` or
/// `switch-port`).
async fn build_builtin_on(
    port: PciePort,
    cold: bool,
    vfio_mode: bool,
    vfio: &Path,
    root_dir: &str,
) -> Result<Sandbox> {
    crate::l2_boot::past_firmware(|| build_builtin_once(port, cold, vfio_mode, vfio, root_dir))
        .await
}

async fn build_builtin_once(
    port: PciePort,
    cold: bool,
    vfio_mode: bool,
    vfio: &Path,
    root_dir: &str,
) -> Result<Sandbox> {
    use kata_sandbox::HypervisorType;
    let id = format!(
        "lab-builtin-vfio-{}{}{}",
        if cold { "cold" } else { "none" },
        match port {
            PciePort::SwitchPort => "-switch",
            PciePort::BridgePort => "-bridge",
            _ => "",
        },
        if vfio_mode { "-vfio" } else { "" }
    );
    let mut hv = kata_hypervisor::HypervisorConfig::defaults_for(HypervisorType::Dragonball);
    hv.cold_plug_vfio = if cold { port } else { PciePort::NoPort };
    if !cold {
        // One spare port of kind `port` for the hot-plug case.
        hv.hot_plug_vfio = port;
        match port {
            PciePort::SwitchPort => hv.pcie_switch_port = 1,
            // The bridge's own SHPC slots: no port to add.
            PciePort::BridgePort => {}
            _ => hv.pcie_root_port = 1,
        }
    }
    let mut b = if vfio_mode {
        let mut config = kata_sandbox::config::KataConfig::default();
        config.hypervisor.insert("dragonball".into(), hv.clone());
        config.runtime.vfio_mode = "vfio".into();
        kata_sandbox::SandboxBuilder::from_kata_config(config)?
    } else {
        Sandbox::builder().hypervisor(HypervisorType::Dragonball)
    };
    b = b
        .hypervisor_config(hv)
        .id(&id)
        .memory_mib(256)
        .vcpus(1)
        .root_dir(root_dir)
        // The device's DMA mapping pins L2's memory in L1 (emulated IOMMU) before boot.
        .agent_timeout(Duration::from_secs(150));
    if cold {
        b = b.vfio_device(vfio);
    }
    Ok(tokio::time::timeout(Duration::from_secs(300), b.build())
        .await
        .context("no sandbox after 300 s")??)
}

/// `builtin-vfio-cold` and `builtin-vfio-bar0-guest-kernel`.
async fn builtin_cold_case(r: &mut Report, vfio: &Path, rootfs: &Path, root_dir: &str) {
    let limit = Duration::from_secs(180);
    let t = Instant::now();
    let sb = match build_builtin(true, false, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            r.line(
                "vfio-cold",
                Err(e.context("the sandbox with the device did not start")),
            );
            r.line(
                "vfio-bar0-guest-kernel",
                Err(anyhow::anyhow!("not run: no sandbox")),
            );
            return;
        }
    };
    let booted = t.elapsed();
    println!(
        "{}",
        figure_line(
            "builtin-vfio-cold-boot-to-agent-ready",
            sb.boot_timings().agent_connected.as_secs_f64() * 1000.0,
            "ms",
            "one edu cold-plugged behind a root port of the built-in VMM (its DMA mapping pins \
             L2's 256 MiB first); compare builtin-boot-to-agent-ready, without a device"
        )
    );
    let script = format!("{LIST_EDU}; {HOTPLUG_SLOTS}");
    let seen = tokio::time::timeout(limit, run_in(&sb, rootfs, vfio, false, &script)).await;
    r.line(
        "vfio-cold",
        seen.context("timed out")
            .and_then(|s| s)
            .and_then(|l| Ok((seen_at_depth(&l, 2)?, pciehp_slot(&l)?)))
            .map(|(p, slot)| {
                format!(
                    "{} cold-plugged behind the built-in VMM's root port: 1234:11e8 at guest PCI \
                     path {p}, the port's slot {slot} registered by L2's pciehp; sandbox with it \
                     booted in {booted:.1?}",
                    vfio.display()
                )
            }),
    );
    let bar = tokio::time::timeout(limit, run_in(&sb, rootfs, vfio, true, BAR0)).await;
    r.line(
        "vfio-bar0-guest-kernel",
        bar.context("timed out").and_then(|s| s).and_then(|out| {
            let lower = out.to_lowercase();
            ensure!(lower.contains("id=0x010000ed"), "identification: {out}");
            ensure!(
                lower.contains("inv=0xedcba987"),
                "liveness (0x12345678 inverted): {out}"
            );
            Ok(format!(
                "vfio_mode guest-kernel, BAR0 trapped by the built-in VMM: {out}"
            ))
        }),
    );
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin vfio-cold sandbox down: {e:#}");
    }
}

/// The built-in VMM's cases on a switch's downstream port or the bridge: cold-plug and its
/// `vfio` mode proof ([`builtin_cold_port_case`]), hot-plug and its `vfio` mode proof
/// ([`builtin_hot_case`]); `proof` is the proof program's build (its error, when it failed,
/// in the lines of the `vfio` mode checks).
async fn builtin_port_cases(
    r: &mut Report,
    port: PciePort,
    vfio: &Path,
    rootfs: &Path,
    root_dir: &str,
    proof: &Result<()>,
) {
    builtin_cold_port_case(r, port, vfio, rootfs, root_dir, proof.is_ok()).await;
    if let Err(e) = proof {
        r.line(
            &vfio_mode_name(port, true),
            Err(anyhow::anyhow!("not run: {e:#}")),
        );
    }
    let hot_proof = match proof {
        Ok(()) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    builtin_hot_case(r, port, vfio, rootfs, root_dir, hot_proof).await;
}

/// `builtin-vfio-cold-switch-port` (and `builtin-vfio-mode-cold-switch-port` when the proof
/// program builds): the edu cold-plugged behind the built-in VMM's PCIe switch
/// (`cold_plug_vfio = "switch-port"`): a container lists 1234:11e8 four slots deep, at guest
/// PCI path `01/00/00/00` (root port, upstream port, downstream port, function), and L2's
/// pciehp registered the downstream port's slot; in `vfio` mode the proof program reads the
/// id and computes 5! through L2's VFIO.
///
/// `builtin-vfio-cold-bridge-port` and `builtin-vfio-mode-cold-bridge-port` (`port` the
/// bridge): the same in slot 1 of the built-in VMM's PCI-to-PCI bridge, at `01/01` (no
/// pciehp slot: a conventional bridge's slots are not PCIe slots).
async fn builtin_cold_port_case(
    r: &mut Report,
    port: PciePort,
    vfio: &Path,
    rootfs: &Path,
    root_dir: &str,
    proof: bool,
) {
    let name = format!("vfio-cold-{port}");
    let name = name.as_str();
    let limit = Duration::from_secs(180);
    let t = Instant::now();
    let sb = match build_builtin_on(port, true, false, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            r.line(
                name,
                Err(e.context("the sandbox with the device did not start")),
            );
            return;
        }
    };
    let booted = t.elapsed();
    let script = format!("{LIST_EDU}; {HOTPLUG_SLOTS}");
    let seen = tokio::time::timeout(limit, run_in(&sb, rootfs, vfio, false, &script)).await;
    r.line(
        name,
        seen.context("timed out").and_then(|s| s).and_then(|l| {
            if port == PciePort::BridgePort {
                let p = seen_at_depth(&l, 2)?;
                ensure!(
                    p == "01/01",
                    "the edu is at {p}, not in the bridge's slot 1 (01/01)"
                );
                return Ok(format!(
                    "{} cold-plugged in slot 1 of the built-in VMM's PCI-to-PCI bridge: \
                         1234:11e8 at guest PCI path {p}; sandbox with it booted in {booted:.1?}",
                    vfio.display()
                ));
            }
            let (p, slot) = (
                switch_path(&seen_at_depth(&l, 4)?)?,
                pciehp_slot_at(&l, "0000:03:00")?,
            );
            Ok(format!(
                "{} cold-plugged behind the built-in VMM's PCIe switch: 1234:11e8 at guest \
                     PCI path {p}, the downstream port's slot {slot} registered by L2's pciehp; \
                     sandbox with it booted in {booted:.1?}",
                vfio.display()
            ))
        }),
    );
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {name} sandbox down: {e:#}");
    }
    // INTx behind the bridge's slot (`vfio_irq::bridge_intx`), in the `vfio` mode sandbox.
    let intx = (port == PciePort::BridgePort).then_some("vfio-intx-cold-bridge-port");
    if !proof {
        if let Some(i) = intx {
            r.line(i, Err(anyhow::anyhow!("not run: no proof program")));
        }
        return;
    }
    let name = format!("vfio-mode-cold-{port}");
    let name = name.as_str();
    let sb = match build_builtin_on(port, true, true, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            if let Some(i) = intx {
                r.line(i, Err(anyhow::anyhow!("not run: {e:#}: no sandbox")));
            }
            r.line(name, Err(e.context("the sandbox did not start")));
            return;
        }
    };
    let result = tokio::time::timeout(limit, async {
        let spec =
            ContainerSpec::from_oci(vfio_mode_spec(vfio)?, rootfs).args([format!("/{PROOF}")]);
        let out = sb.run(spec).await?;
        let said = format!("{}{}", out.stdout_str(), out.stderr_str());
        ensure!(out.status.success(), "status {}: {said:?}", out.status);
        Ok::<_, anyhow::Error>(format!(
            "vfio_mode vfio, on the built-in VMM's {port}: {}",
            proof_ok(&said)?
        ))
    })
    .await;
    r.line(name, result.context("timed out").and_then(|s| s));
    if let Some(i) = intx {
        let result = tokio::time::timeout(limit, vfio_irq::bridge_intx(&sb, vfio, rootfs, false));
        r.line(i, result.await.context("timed out").and_then(|s| s));
    }
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {name} sandbox down: {e:#}");
    }
}

/// The guest PCI path of the edu behind the built-in VMM's switch: the switch's root port
/// at slot 1 (the only device on the root bus), its upstream port, downstream port 0.
fn switch_path(path: &str) -> Result<String> {
    ensure!(
        path == "01/00/00/00",
        "the edu is at {path}, not behind the switch's first downstream port (01/00/00/00)"
    );
    Ok(path.to_string())
}

/// The hot-plug slot L2's pciehp registered for the port whose bus holds `address`.
fn pciehp_slot_at(listing: &str, address: &str) -> Result<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("slot "))
        .find(|l| l.ends_with(&format!(" {address}")))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no hot-plug slot at {address} in L2 (pciehp did not bind the port): {listing:?}"
            )
        })
}

/// `builtin-vfio-mode-cold`: the proof program through L2's own VFIO (no-IOMMU).
async fn builtin_vfio_mode_case(r: &mut Report, vfio: &Path, rootfs: &Path, root_dir: &str) {
    let name = "vfio-mode-cold";
    let sb = match build_builtin(true, true, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            r.line(name, Err(e.context("the sandbox did not start")));
            return;
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(180), async {
        let t = Instant::now();
        let spec =
            ContainerSpec::from_oci(vfio_mode_spec(vfio)?, rootfs).args([format!("/{PROOF}")]);
        let out = sb.run(spec).await?;
        let said = format!("{}{}", out.stdout_str(), out.stderr_str());
        ensure!(out.status.success(), "status {}: {said:?}", out.status);
        let proof = proof_ok(&said)?;
        Ok::<_, anyhow::Error>(format!(
            "vfio_mode vfio, cold-plugged on the built-in VMM: {proof} (container ran in {:.1?})",
            t.elapsed()
        ))
    })
    .await;
    r.line(name, result.context("timed out").and_then(|s| s));
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {name} sandbox down: {e:#}");
    }
}

/// `builtin-vfio-hot-root-port`: a sandbox with one spare root port and no cold-plug
/// (`hot_plug_vfio = "root-port"`, `pcie_root_port = 1`); a container naming the edu's group
/// gets it hot-plugged behind the port (L2 lists 1234:11e8 at guest path `0n/00`), its delete
/// unplugs it (attention button, L2's pciehp powers the slot off; a plain container then lists
/// no edu), and a second container gets it again at the same path (the port was freed).
async fn builtin_hot_root_port_case(r: &mut Report, vfio: &Path, rootfs: &Path, root_dir: &str) {
    builtin_hot_case(r, PciePort::RootPort, vfio, rootfs, root_dir, Ok(())).await
}

/// `builtin-vfio-hot-root-port` or `builtin-vfio-hot-switch-port` (one spare downstream port
/// of the built-in VMM's switch, `hot_plug_vfio = "switch-port"`, `pcie_switch_port = 1`: the
/// edu at `01/00/00/00`, the same plug, unplug and replug) or `builtin-vfio-hot-bridge-port`.
///
/// On the switch and the bridge also `builtin-vfio-mode-hot-<port>` in the same sandbox (one
/// L2 boot for both, `vfio_mode = "vfio"`, as QEMU's [`vfio_mode_case`]): after the listing,
/// unplug and replug, a third container naming the group gets the edu plugged again on the
/// freed port and runs the proof program ([`proof_then_after`]); after its delete the edu is
/// gone from L2. `proof` is the proof program's build: without it the listing runs alone in
/// `guest-kernel` mode and the proof's line says why it did not run.
async fn builtin_hot_case(
    r: &mut Report,
    port: PciePort,
    vfio: &Path,
    rootfs: &Path,
    root_dir: &str,
    proof: Result<()>,
) {
    let name = format!("vfio-hot-{port}");
    let name = name.as_str();
    // The root port's hot `vfio` mode case is `vfio-intx-hot-root-port` (`src/vfio_irq.rs`).
    let mode = (port != PciePort::RootPort).then(|| vfio_mode_name(port, false));
    let vfio_mode = mode.is_some() && proof.is_ok();
    // INTx behind the bridge's SHPC slot (`vfio_irq::bridge_intx`), after the `vfio` mode proof.
    let intx = (port == PciePort::BridgePort).then_some("vfio-intx-hot-bridge-port");
    let sb = match build_builtin_on(port, false, vfio_mode, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            if let Some(i) = intx {
                r.line(
                    i,
                    Err(anyhow::anyhow!("not run: {e:#}: the sandbox did not start")),
                );
            }
            if let Some(m) = &mode {
                r.line(
                    m,
                    Err(anyhow::anyhow!("not run: {e:#}: the sandbox did not start")),
                );
            }
            r.line(name, Err(e.context("the sandbox did not start")));
            return;
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(400), async {
        let t = Instant::now();
        let first = seen_at_depth(
            &run_in(&sb, rootfs, vfio, false, LIST_EDU).await?,
            depth(port),
        )?;
        on_its_port(port, &first)?;
        if port == PciePort::SwitchPort {
            switch_path(&first)?;
        }
        let first_run = t.elapsed();
        let figure = match port {
            PciePort::SwitchPort => "builtin-vfio-hotplug-switch-port-container-run",
            PciePort::BridgePort => "builtin-vfio-hotplug-bridge-port-container-run",
            _ => "builtin-vfio-hotplug-container-run",
        };
        println!(
            "{}",
            figure_line(
                figure,
                first_run.as_secs_f64() * 1000.0,
                "ms",
                &format!(
                    "a container run with the edu hot-plugged onto the built-in VMM's spare \
                     {port}: the plug (group opened, L2's RAM mapped for DMA), the agent's wait \
                     for it in L2, the container, its delete with the unplug ({}'s 5 s button \
                     wait)",
                    if port == PciePort::BridgePort {
                        "shpchp"
                    } else {
                        "pciehp"
                    }
                )
            )
        );
        let again = unplugged_then_again(&sb, rootfs, vfio, port, &first).await?;
        Ok::<_, anyhow::Error>(format!(
            "{} hot-plugged onto the built-in VMM's spare {port}: 1234:11e8 at guest PCI \
             path {first} (container created, ran and deleted in {first_run:.1?}); {}",
            vfio.display(),
            again.replace(
                "(device_del, DEVICE_DELETED)",
                "(attention button, slot powered off)"
            )
        ))
    })
    .await;
    r.line(name, result.context("timed out").and_then(|s| s));
    if let Some(m) = &mode {
        let result = match proof {
            Ok(()) => tokio::time::timeout(
                Duration::from_secs(180),
                proof_then_after(
                    &sb,
                    port,
                    false,
                    vfio,
                    rootfs,
                    "attention button, slot powered off",
                ),
            )
            .await
            .context("timed out")
            .and_then(|s| s)
            .map(|p| format!("on the built-in VMM: {p}")),
            Err(e) => Err(anyhow::anyhow!("not run: {e:#}")),
        };
        r.line(m, result);
    }
    if let Some(i) = intx {
        let result = match vfio_mode {
            true => tokio::time::timeout(
                Duration::from_secs(180),
                vfio_irq::bridge_intx(&sb, vfio, rootfs, true),
            )
            .await
            .context("timed out")
            .and_then(|s| s),
            false => Err(anyhow::anyhow!("not run: no proof program")),
        };
        r.line(i, result);
    }
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {name} sandbox down: {e:#}");
    }
}

/// The VFIO cases L1's kernel command line selects with `lab.vfio=<name>:<name>` (the host's
/// `KATA_LAB_VFIO`, comma-separated): `builtin` (the built-in VMM's VFIO checks; `builtin-hot`
/// its hot-plug case alone, `builtin-switch` and `builtin-bridge` its switch's and bridge's
/// cases alone), `ctr` (the
/// containerd case, `src/vfio_ctr.rs`) and QEMU's checks by name (`vfio-mode-cold-switch-port`).
/// With a selection the runner runs those alone, no VMM set; `None` without one.
pub fn only() -> Result<Option<Vec<String>>> {
    parse_only(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// [`only`] from a kernel command line: an unknown name is refused, naming the known ones.
fn parse_only(cmdline: &str) -> Result<Option<Vec<String>>> {
    let Some(list) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lab.vfio="))
    else {
        return Ok(None);
    };
    let known = |n: &str| {
        [
            "builtin",
            "builtin-hot",
            "builtin-switch",
            "builtin-bridge",
            "ctr",
        ]
        .contains(&n)
            || kata_lab::protocol::VFIO_CHECKS.contains(&n)
    };
    let names: Vec<String> = list
        .split([':', ','])
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = names.iter().find(|n| !known(n)) {
        bail!(
            "KATA_LAB_VFIO names {bad:?}: the lab knows builtin, builtin-hot, builtin-switch, \
             builtin-bridge, ctr and {}",
            kata_lab::protocol::VFIO_CHECKS.join(", ")
        );
    }
    Ok(Some(names))
}

/// `builtin-vfio-msi`, in its own file.
#[path = "vfio_irq.rs"]
mod vfio_irq;

/// `builtin-vfio-msix`, in its own file.
#[path = "vfio_msix.rs"]
mod vfio_msix;

/// Runs the built-in VMM's VFIO checks; returns (ran, passed).
pub async fn run_builtin(rootfs: &Path, root_dir: &str) -> (usize, usize) {
    let mut r = Report {
        ran: 0,
        passed: 0,
        vmm: "builtin",
    };
    let vfio = match edu_group() {
        Ok(v) => v,
        Err(e) => {
            for n in kata_lab::protocol::BUILTIN_VFIO_CHECKS {
                r.line(n, Err(anyhow::anyhow!("not run: {e:#}")));
            }
            return (r.ran, r.passed);
        }
    };
    // `KATA_LAB_VFIO=builtin-hot`: the hot-plug cases alone (root port; INTx when the proof
    // program builds).
    if only()
        .ok()
        .flatten()
        .is_some_and(|o| o.iter().any(|n| n == "builtin-hot"))
    {
        builtin_hot_root_port_case(&mut r, &vfio, rootfs, root_dir).await;
        match build_proof(rootfs) {
            Ok(()) => vfio_irq::run_hot_intx(&mut r, &vfio, rootfs, root_dir).await,
            Err(e) => r.line(
                "vfio-intx-hot-root-port",
                Err(anyhow::anyhow!("not run: {e:#}")),
            ),
        }
        return (r.ran, r.passed);
    }
    // `KATA_LAB_VFIO=builtin-switch`, `builtin-bridge` (either or both): those ports' cases
    // alone.
    let named = |n: &str| {
        only()
            .ok()
            .flatten()
            .is_some_and(|o| o.iter().any(|w| w == n))
    };
    let ports: Vec<PciePort> = [
        ("builtin-switch", PciePort::SwitchPort),
        ("builtin-bridge", PciePort::BridgePort),
    ]
    .into_iter()
    .filter(|(n, _)| named(n))
    .map(|(_, p)| p)
    .collect();
    if !ports.is_empty() {
        let proof = build_proof(rootfs);
        for port in ports {
            builtin_port_cases(&mut r, port, &vfio, rootfs, root_dir, &proof).await;
        }
        return (r.ran, r.passed);
    }
    builtin_cold_case(&mut r, &vfio, rootfs, root_dir).await;
    let proof = build_proof(rootfs);
    match &proof {
        Ok(()) => builtin_vfio_mode_case(&mut r, &vfio, rootfs, root_dir).await,
        Err(e) => r.line("vfio-mode-cold", Err(anyhow::anyhow!("not run: {e:#}"))),
    }
    vfio_irq::run(&mut r, &vfio, rootfs, root_dir).await;
    vfio_msix::run(&mut r, rootfs, root_dir).await;
    builtin_hot_root_port_case(&mut r, &vfio, rootfs, root_dir).await;
    vfio_irq::run_hot_intx(&mut r, &vfio, rootfs, root_dir).await;
    for port in [PciePort::SwitchPort, PciePort::BridgePort] {
        builtin_port_cases(&mut r, port, &vfio, rootfs, root_dir, &proof).await;
    }
    (r.ran, r.passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_cold_case_needs_the_edu_behind_a_port_with_a_pciehp_slot() {
        let l = "edu /sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0\nslot 1 0000:01:00\n";
        assert_eq!(seen_at_depth(l, 2).unwrap(), "01/00");
        assert_eq!(pciehp_slot(l).unwrap(), "1 0000:01:00");
        let root_bus = "edu /sys/devices/pci0000:00/0000:00:01.0\n";
        assert!(seen_at_depth(root_bus, 2).is_err());
        assert!(pciehp_slot(root_bus)
            .unwrap_err()
            .to_string()
            .contains("pciehp"));
    }

    #[test]
    fn the_proof_needs_the_identification_and_the_factorial() {
        let good = "group=/dev/vfio/noiommu-0 device=0000:01:00.0 bar0_size=0x100000 id=0x010000ed fact5=0x78";
        assert!(proof_ok(good).is_ok());
        assert!(proof_ok(&good.replace("fact5=0x78", "fact5=0x5")).is_err());
        assert!(proof_ok(&good.replace("0x010000ed", "0xffffffff")).is_err());
        assert!(proof_ok("FAIL open /dev/vfio/vfio: No such file or directory").is_err());
    }

    #[test]
    fn the_vfio_selection_names_known_cases_only() {
        assert_eq!(
            parse_only("console=ttyS0 lab.args=--vmm,qemu").unwrap(),
            None
        );
        assert_eq!(
            parse_only("x lab.vfio=builtin y").unwrap(),
            Some(vec!["builtin".to_string()])
        );
        assert_eq!(
            parse_only("lab.vfio=ctr:vfio-mode-cold-bridge-port").unwrap(),
            Some(vec!["ctr".into(), "vfio-mode-cold-bridge-port".into()])
        );
        let e = parse_only("lab.vfio=vfio-mode-cold-brige-port").unwrap_err();
        assert!(
            e.to_string().contains("brige") && e.to_string().contains("vfio-mode-cold-bridge-port"),
            "{e}"
        );
        // Every `vfio` mode case is a listed check, and so is every listing sharing its boot.
        for (port, cold) in VFIO_MODE_CASES {
            assert!(
                kata_lab::protocol::VFIO_CHECKS.contains(&vfio_mode_name(port, cold).as_str()),
                "{port} {cold}"
            );
        }
        for (port, cold) in SHARED_BOOT {
            assert!(VFIO_MODE_CASES.contains(&(port, cold)), "{port} {cold}");
            assert!(
                kata_lab::protocol::VFIO_CHECKS.contains(&plain_name(port, cold).as_str()),
                "{port} {cold}"
            );
        }
    }

    #[test]
    fn a_hot_plug_is_where_its_port_kind_puts_it() {
        on_its_port(PciePort::BridgePort, "03/01").unwrap();
        on_its_port(PciePort::RootPort, "03/00").unwrap();
        on_its_port(PciePort::SwitchPort, "04/00/00/00").unwrap();
        // A root port's device on the bridge's slot, or the reverse, is not where it belongs.
        let e = on_its_port(PciePort::BridgePort, "03/00").unwrap_err();
        assert!(e.to_string().contains("bridge-port"), "{e}");
        assert!(on_its_port(PciePort::RootPort, "03/01").is_err());
        assert!(kata_lab::protocol::VFIO_CHECKS.contains(&"vfio-hot-bridge-port"));
    }

    #[test]
    fn guest_paths_from_sysfs_paths() {
        assert_eq!(
            guest_pci_path("/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0"),
            "02/00"
        );
        assert_eq!(
            seen_at_depth("edu /sys/devices/pci0000:00/0000:00:03.0/0000:02:00.0\n", 2).unwrap(),
            "03/00"
        );
        let switch =
            "edu /sys/devices/pci0000:00/0000:00:04.0/0000:01:00.0/0000:02:00.0/0000:03:00.0";
        assert_eq!(seen_at_depth(switch, 4).unwrap(), "04/00/00/00");
        assert!(seen_at_depth(switch, 2).is_err());
        assert!(seen_at_depth("edu /sys/devices/pci0000:00/0000:00:04.0", 2).is_err());
        assert!(seen_at_depth("", 2).is_err());
        // The built-in VMM's root bus: one slot.
        assert_eq!(
            seen_at_depth("edu /sys/devices/pci0000:00/0000:00:01.0\n", 1).unwrap(),
            "01"
        );
    }
}
