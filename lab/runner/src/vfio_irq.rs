//! `builtin-vfio-msi` and `builtin-vfio-intx` (issue 12): a passed-through function's
//! interrupts through the built-in VMM.
//!
//! A sandbox on the built-in VMM with the edu cold-plugged and `vfio_mode = "vfio"`; in a
//! container the proof program (`vfio_proof irq`) turns the edu's MSI on through L2's
//! no-IOMMU VFIO with an eventfd, starts 5! with the edu's raise-interrupt bit, waits for the
//! eventfd (5 s), acknowledges, raises one more by hand and prints the count. Each interrupt
//! crosses every layer: the edu in L1's QEMU, L1's vfio-pci, the eventfd the runner's kata-vmm
//! gave it, KVM's irqfd and the MSI route L2's kernel programmed through the emulated
//! capability, L2's vfio-pci, the container's eventfd. Then, in a second container of the same
//! sandbox (MSI off again, so INTx back on), `vfio_proof intx` does the same through INTx: the
//! IOAPIC pin the MP table names for slot 1, level-triggered, unmasked by KVM's resample.
//!
//! The QEMU backend runs the same two proofs ([`run_qemu`], `qemu-vfio-msi-cold-root-port`,
//! `qemu-vfio-intx-cold-root-port`): the edu cold-plugged on a root port, QEMU's own vfio-pci
//! and its KVM irqfds on the path instead of kata-vmm's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_sandbox::{ContainerSpec, Sandbox};

use super::{build, build_builtin, build_proof, vfio_mode_spec, Report, PROOF};
use kata_hypervisor::PciePort;

/// The checks' names (in [`kata_lab::protocol::BUILTIN_VFIO_CHECKS`]).
const MSI: &str = "vfio-msi";
const INTX: &str = "vfio-intx";
/// The INTx check of a hot-plugged function (built-in VMM).
const HOT_INTX: &str = "vfio-intx-hot-root-port";
/// The QEMU backend's (in [`kata_lab::protocol::VFIO_CHECKS`]).
const QEMU_MSI: &str = "vfio-msi-cold-root-port";
const QEMU_INTX: &str = "vfio-intx-cold-root-port";

/// The proof program's `irq`/`intx` line, checked: identification, factorial, two interrupts
/// of `kind` (`msi`, `intx`).
fn irq_ok(out: &str, kind: &str) -> Result<String> {
    let lower = out.to_lowercase();
    ensure!(
        lower.contains("id=0x010000ed") && lower.contains("fact5=0x78"),
        "the proof program says {out:?}"
    );
    let count = lower
        .split_whitespace()
        .find_map(|w| w.strip_prefix("count="))
        .and_then(|c| c.parse::<u64>().ok());
    ensure!(
        lower.contains(&format!("irq={kind} ")) && count.is_some_and(|c| c >= 2),
        "no {kind} interrupt counted: {out:?}"
    );
    Ok(out.trim().to_string())
}

/// Runs the proof program with `arg` in a container of `sb`.
async fn proof(sb: &Sandbox, vfio: &Path, rootfs: &Path, arg: &str, what: &str) -> Result<String> {
    let run = async {
        let t = Instant::now();
        let spec = ContainerSpec::from_oci(vfio_mode_spec(vfio)?, rootfs)
            .args([format!("/{PROOF}"), arg.to_string()]);
        let out = sb.run(spec).await?;
        let said = format!("{}{}", out.stdout_str(), out.stderr_str());
        ensure!(out.status.success(), "status {}: {said:?}", out.status);
        let kind = if arg == "irq" { "msi" } else { arg };
        let proof = irq_ok(&said, kind)?;
        Ok::<_, anyhow::Error>(format!(
            "{what}: {proof} (container ran in {:.1?})",
            t.elapsed()
        ))
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .context("timed out")
        .and_then(|s| s)
}

/// Runs `builtin-vfio-msi` and `builtin-vfio-intx` (the proof program must be in `rootfs`:
/// `run_builtin` built it).
pub(super) async fn run(r: &mut Report, vfio: &Path, rootfs: &Path, root_dir: &str) {
    if !rootfs.join(PROOF).exists() {
        for n in [MSI, INTX] {
            r.line(n, Err(anyhow::anyhow!("not run: no proof program")));
        }
        return;
    }
    let sb = match build_builtin(true, true, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            r.line(MSI, Err(e.context("the sandbox did not start")));
            r.line(INTX, Err(anyhow::anyhow!("not run: no sandbox")));
            return;
        }
    };
    let msi = proof(
        &sb,
        vfio,
        rootfs,
        "irq",
        "MSI through the built-in VMM (emulated capability, KVM MSI route, irqfd)",
    )
    .await;
    r.line(MSI, msi);
    let intx = proof(
        &sb,
        vfio,
        rootfs,
        "intx",
        "INTx through the built-in VMM (INTA# on the MP table's IOAPIC pin, irqfd with \
         resample), after MSI was turned off",
    )
    .await;
    r.line(INTX, intx);
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {MSI} sandbox down: {e:#}");
    }
}

/// `builtin-vfio-intx-hot-root-port`: the edu hot-plugged onto a spare root port in `vfio`
/// mode, `vfio_proof intx` counts two interrupts through INTx — the INTA# line the MP table
/// declared for the spare port's slot at boot, an irqfd with resample wired at the plug.
pub(super) async fn run_hot_intx(r: &mut Report, vfio: &Path, rootfs: &Path, root_dir: &str) {
    if !rootfs.join(PROOF).exists() {
        r.line(HOT_INTX, Err(anyhow::anyhow!("not run: no proof program")));
        return;
    }
    let sb = match super::build_builtin_on(
        kata_hypervisor::PciePort::RootPort,
        false,
        true,
        vfio,
        root_dir,
    )
    .await
    {
        Ok(sb) => sb,
        Err(e) => {
            r.line(HOT_INTX, Err(e.context("the sandbox did not start")));
            return;
        }
    };
    let intx = proof(
        &sb,
        vfio,
        rootfs,
        "intx",
        "INTx of a function hot-plugged onto the built-in VMM's spare root port (the INTA# \
         line the MP table declared for its slot at boot, irqfd with resample wired at the plug)",
    )
    .await;
    r.line(HOT_INTX, intx);
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {HOT_INTX} sandbox down: {e:#}");
    }
}

/// `builtin-vfio-intx-cold-bridge-port` / `builtin-vfio-intx-hot-bridge-port`: in the bridge
/// sandbox that already ran the `vfio` mode proof (`vfio.rs`: one L2 boot for both), one more
/// container runs `vfio_proof intx` on the edu in the bridge's slot 1 (`01/01`; hot: plugged
/// again into the freed SHPC slot 1 and unplugged at its delete). Its INTA# reaches the
/// bridge's bus-0 slot as INTB# (the swizzle), a pin the MP table listed only since kata-vmm
/// gave a bridge's slot all four pins: two interrupts counted through INTx prove the line
/// (the proof prints the guest's IRQ, `line=`, and its sysfs path, `sysfs=`: both checked,
/// [`bridge_intx_ok`], so the check cannot pass with the edu in another slot).
pub(super) async fn bridge_intx(
    sb: &Sandbox,
    vfio: &Path,
    rootfs: &Path,
    hot: bool,
) -> Result<String> {
    let what = if hot {
        "INTx of the edu hot-plugged into the built-in VMM's PCI bridge SHPC slot 1 (its INTA# \
         swizzled to the bridge's INTB# on bus 0, the line the MP table declared at boot, irqfd \
         with resample wired at the plug)"
    } else {
        "INTx of the edu cold-plugged in the built-in VMM's PCI bridge slot 1 (its INTA# \
         swizzled to the bridge's INTB# on bus 0, the MP table's line for it, irqfd with \
         resample)"
    };
    let said = proof(sb, vfio, rootfs, "intx", what).await?;
    bridge_intx_ok(&said)?;
    Ok(said)
}

/// The guest PCI path of the edu in the bridge's slot 1: the bridge at bus-0 slot 1, the edu
/// device 1 on its secondary bus.
const BRIDGE_SLOT1_PATH: &str = "01/01";
/// The guest IRQ of the edu in the bridge's slot 1: its INTA# swizzled to the bridge's INTB#
/// at bus-0 slot 1, which kata-vmm's `vfio::irq::plan_intx` puts on the pin below the slot's
/// INTA# (24 - 1 = 23): IOAPIC pin 22 (the lab's VM has no virtio-mmio line up there).
const BRIDGE_SLOT1_LINE: &str = "22";

/// The INTx proof's line of the edu in the bridge's slot 1 (see [`bridge_intx`]), checked:
/// its sysfs path is guest PCI path [`BRIDGE_SLOT1_PATH`] and its IRQ the planned pin
/// [`BRIDGE_SLOT1_LINE`].
fn bridge_intx_ok(said: &str) -> Result<()> {
    let field = |key: &str| {
        said.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or("")
    };
    let (line, sysfs) = (field("line="), field("sysfs="));
    let path = super::guest_pci_path(sysfs);
    ensure!(
        path == BRIDGE_SLOT1_PATH,
        "the proof ran on the edu at guest PCI path {path:?} (sysfs {sysfs:?}), not the \
         bridge's slot 1 ({BRIDGE_SLOT1_PATH}): {said:?}"
    );
    ensure!(
        line == BRIDGE_SLOT1_LINE,
        "the edu in the bridge's slot 1 has guest IRQ {line:?}, not the bridge's INTB# line \
         the MP table declares ({BRIDGE_SLOT1_LINE}): {said:?}"
    );
    Ok(())
}

/// Runs `qemu-vfio-msi-cold-root-port` and `qemu-vfio-intx-cold-root-port` where `wanted`
/// (the QEMU backend's VFIO set; builds the proof program if no case before did).
pub(super) async fn run_qemu(
    r: &mut Report,
    vfio: &Path,
    rootfs: &Path,
    root_dir: &str,
    wanted: &dyn Fn(&str) -> bool,
) {
    let names: Vec<&str> = [QEMU_MSI, QEMU_INTX]
        .into_iter()
        .filter(|n| wanted(n))
        .collect();
    if names.is_empty() {
        return;
    }
    let built = if rootfs.join(PROOF).exists() {
        Ok(())
    } else {
        build_proof(rootfs)
    };
    if let Err(e) = built {
        for n in names {
            r.line(n, Err(anyhow::anyhow!("not run: {e:#}")));
        }
        return;
    }
    let sb = match build(PciePort::RootPort, true, true, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            let e = format!("{:#}", e.context("the sandbox did not start"));
            for n in names {
                r.line(n, Err(anyhow::anyhow!("{e}")));
            }
            return;
        }
    };
    for (n, arg, what) in [
        (
            QEMU_MSI,
            "irq",
            "MSI through QEMU's vfio-pci (KVM irqfd), on a root port",
        ),
        (
            QEMU_INTX,
            "intx",
            "INTx through QEMU's vfio-pci (KVM irqfd with resample), on a root port",
        ),
    ] {
        if names.contains(&n) {
            let result = proof(&sb, vfio, rootfs, arg, what).await;
            r.line(n, result);
        }
    }
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the qemu {QEMU_MSI} sandbox down: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_irq_proof_needs_the_factorial_and_two_interrupts() {
        let good = "group=/dev/vfio/noiommu-0 device=0000:00:01.0 id=0x010000ed fact5=0x78 \
                    irq=msi vectors=1 status=0x1 raised=0x100 count=2";
        assert!(irq_ok(good, "msi").is_ok());
        assert!(irq_ok(good, "intx").is_err(), "the kind asked for");
        assert!(irq_ok(&good.replace("irq=msi vectors=1", "irq=intx"), "intx").is_ok());
        assert!(irq_ok(&good.replace("count=2", "count=1"), "msi").is_err());
        assert!(irq_ok(&good.replace("irq=msi ", ""), "msi").is_err());
        assert!(irq_ok(&good.replace("fact5=0x78", "fact5=0x0"), "msi").is_err());
        assert!(irq_ok(
            "FAIL no MSI within 5 s of the factorial (irq status 0x1 fact5=0x78)",
            "msi"
        )
        .is_err());
    }

    #[test]
    fn the_bridge_intx_proof_needs_the_edu_in_slot_1_on_the_planned_line() {
        let good = "INTx of the edu ...: group=/dev/vfio/noiommu-0 device=0000:02:01.0 \
                    id=0x010000ed fact5=0x78 irq=intx status=0x1 raised=0x100 count=2 line=22 \
                    sysfs=/sys/devices/pci0000:00/0000:00:01.0/0000:02:01.0 (container ran in 3.1s)";
        assert!(bridge_intx_ok(good).is_ok());
        let e = bridge_intx_ok(&good.replace("0000:02:01.0 (", "0000:02:02.0 ("))
            .unwrap_err()
            .to_string();
        assert!(e.contains("01/02"), "{e}");
        let e = bridge_intx_ok(&good.replace("line=22", "line=23"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"23\""), "{e}");
        assert!(bridge_intx_ok(&good.replace("line=22 ", "")).is_err());
        assert!(bridge_intx_ok(&good.replace(" sysfs=", " at=")).is_err());
        assert!(bridge_intx_ok(&good.replace("line=22", "line=?")).is_err());
    }
}
