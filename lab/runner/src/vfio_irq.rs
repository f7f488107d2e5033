//! `builtin-vfio-msi` (issue 12): a passed-through function's MSI through the built-in VMM.
//!
//! A sandbox on the built-in VMM with the edu cold-plugged and `vfio_mode = "vfio"`; in a
//! container the proof program (`vfio_proof irq`) turns the edu's MSI on through L2's
//! no-IOMMU VFIO with an eventfd, starts 5! with the edu's raise-interrupt bit, waits for the
//! eventfd (5 s), acknowledges, raises one more by hand and prints the count. Each interrupt
//! crosses every layer: the edu in L1's QEMU, L1's vfio-pci, the eventfd the runner's kata-vmm
//! gave it, KVM's irqfd and the MSI route L2's kernel programmed through the emulated
//! capability, L2's vfio-pci, the container's eventfd.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_sandbox::ContainerSpec;

use super::{build_builtin, vfio_mode_spec, Report, PROOF};

/// The check's name (in [`kata_lab::protocol::BUILTIN_VFIO_CHECKS`]).
const NAME: &str = "vfio-msi";

/// The proof program's `irq` line, checked: identification, factorial, two interrupts.
fn irq_ok(out: &str) -> Result<String> {
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
        lower.contains("irq=msi") && count.is_some_and(|c| c >= 2),
        "no MSI counted: {out:?}"
    );
    Ok(out.trim().to_string())
}

/// Runs `builtin-vfio-msi` (the proof program must be in `rootfs`: `run_builtin` built it).
pub(super) async fn run(r: &mut Report, vfio: &Path, rootfs: &Path, root_dir: &str) {
    if !rootfs.join(PROOF).exists() {
        r.line(NAME, Err(anyhow::anyhow!("not run: no proof program")));
        return;
    }
    let sb = match build_builtin(true, true, vfio, root_dir).await {
        Ok(sb) => sb,
        Err(e) => {
            r.line(NAME, Err(e.context("the sandbox did not start")));
            return;
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(180), async {
        let t = Instant::now();
        let spec = ContainerSpec::from_oci(vfio_mode_spec(vfio)?, rootfs)
            .args([format!("/{PROOF}"), "irq".to_string()]);
        let out = sb.run(spec).await?;
        let said = format!("{}{}", out.stdout_str(), out.stderr_str());
        ensure!(out.status.success(), "status {}: {said:?}", out.status);
        let proof = irq_ok(&said)?;
        Ok::<_, anyhow::Error>(format!(
            "MSI through the built-in VMM (emulated capability, KVM MSI route, irqfd): {proof} \
             (container ran in {:.1?})",
            t.elapsed()
        ))
    })
    .await;
    r.line(NAME, result.context("timed out").and_then(|s| s));
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {NAME} sandbox down: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_irq_proof_needs_the_factorial_and_two_interrupts() {
        let good = "group=/dev/vfio/noiommu-0 device=0000:00:01.0 id=0x010000ed fact5=0x78 \
                    irq=msi vectors=1 status=0x1 raised=0x100 count=2";
        assert!(irq_ok(good).is_ok());
        assert!(irq_ok(&good.replace("count=2", "count=1")).is_err());
        assert!(irq_ok(&good.replace("irq=msi ", "")).is_err());
        assert!(irq_ok(&good.replace("fact5=0x78", "fact5=0x0")).is_err());
        assert!(
            irq_ok("FAIL no MSI within 5 s of the factorial (irq status 0x1 fact5=0x78)").is_err()
        );
    }
}
