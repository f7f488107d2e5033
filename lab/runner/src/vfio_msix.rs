//! `builtin-vfio-msix` (issue 12): a passed-through function whose driver needs MSI-X, through
//! the built-in VMM.
//!
//! L1's QEMU has a modern-only virtio-rng behind its emulated IOMMU (`iommu_platform=on`, so
//! its DMA is translated as the edu's is), which L1's init takes onto `vfio-pci`. The runner
//! checks its IOMMU group holds it alone and cold-plugs the group into a built-in VMM sandbox
//! in `vfio_mode = "guest-kernel"`: L2's own virtio-pci drives it. Modern virtio-pci finds its
//! transport in vendor-specific capabilities and takes interrupts by MSI-X only (INTx is its
//! fallback; it never uses MSI). In a container, with `/dev/hwrng`, the check reads:
//! the driver bound (`virtio-pci`), the modes of the function's vectors
//! (`/sys/bus/pci/devices/<bdf>/msi_irqs/*`: `msix`), the virtio device's lines in
//! `/proc/interrupts` (`virtioN-config`, `virtioN-input`: one per MSI-X vector; a fallback to
//! INTx shows one `virtioN` line on the IOAPIC) before and after reading 1 KiB from
//! `/dev/hwrng` (each request completes on the input vector's interrupt), and the current
//! hwrng (`virtio_rng.N`). Every interrupt crosses L1's QEMU, L1's vfio-pci, the eventfd the
//! runner's kata-vmm gave VFIO for the vector, KVM's irqfd and the MSI route L2's kernel wrote
//! into the emulated MSI-X table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kata_hypervisor::PciePort;
use kata_sandbox::oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType};
use kata_sandbox::{ContainerSpec, Sandbox};

use super::{vfio_spec, Report};

/// The check's name (in [`kata_lab::protocol::BUILTIN_VFIO_CHECKS`]).
const MSIX: &str = "vfio-msix";
/// virtio-rng, modern (`0x1040 + 4`).
const RNG: (&str, &str) = ("0x1af4", "0x1044");

/// Reads the function, its vectors' modes and interrupt counts around 1 KiB from /dev/hwrng;
/// prints one line of `key=value` words (`FAIL ...` on the way out).
const SCRIPT: &str = r#"
d=
for p in /sys/bus/pci/devices/*; do
  [ "$(cat $p/vendor)" = 0x1af4 ] && [ "$(cat $p/device)" = 0x1044 ] && d=$p
done
[ -n "$d" ] || { echo "FAIL no virtio-rng (1af4:1044) on L2's bus"; exit 1; }
drv=$(basename "$(readlink $d/driver)")
modes=$(cat $d/msi_irqs/* 2>/dev/null | sort | uniq -c | awk '{printf "%s:%s,", $2, $1}')
v=$(cd $d && ls -d virtio* 2>/dev/null | head -n 1)
[ -n "$v" ] || { echo "FAIL no virtio device under ${d##*/} (driver=$drv modes=$modes)"; exit 1; }
counts() {
  awk -v v="$v" '$NF ~ "^"v"(-|$)" {s=0; for(i=2;i<=NF && $i ~ /^[0-9]+$/;i++) s+=$i; printf "%s:%s:%s,", $NF, $(i), s}' /proc/interrupts
}
before=$(counts)
n=$(head -c 1024 /dev/hwrng | wc -c)
after=$(counts)
rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
echo "bdf=${d##*/} driver=$drv modes=$modes dev=$v rng=$rng read=$n before=$before after=$after"
"#;

/// The virtio-rng's IOMMU group in L1 (`/dev/vfio/<group>`) and its address, checked: bound
/// to vfio-pci and alone in its group.
fn rng_group() -> Result<(PathBuf, String)> {
    for e in std::fs::read_dir("/sys/bus/pci/devices")? {
        let d = e?.path();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        if read("vendor").trim() != RNG.0 || read("device").trim() != RNG.1 {
            continue;
        }
        let bdf = d
            .file_name()
            .context("a device name")?
            .to_string_lossy()
            .into_owned();
        let driver = std::fs::read_link(d.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        ensure!(
            driver.as_deref() == Some("vfio-pci"),
            "virtio-rng {bdf} is on {driver:?}, not vfio-pci (L1's init binds it: lab/init.sh \
             vfio_rng)"
        );
        let g = std::fs::read_link(d.join("iommu_group")).context("its iommu_group")?;
        let members = std::fs::read_dir(g.join("devices"))
            .or_else(|_| std::fs::read_dir(d.join("iommu_group/devices")))
            .context("its group's members")?
            .count();
        ensure!(
            members == 1,
            "virtio-rng {bdf}'s IOMMU group has {members} members: it must be alone"
        );
        let g = g.file_name().context("a group name")?.to_owned();
        return Ok((Path::new("/dev/vfio").join(g), bdf));
    }
    bail!("no virtio-rng (1af4:1044) in L1: lab/runner/src/l1.rs qemu_args adds it")
}

/// The script's line, checked: virtio-pci bound, MSI-X vectors only, 1 KiB read, and an
/// MSI-X vector's count rising across the read.
fn msix_ok(out: &str) -> Result<String> {
    let word = |k: &str| {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
    };
    ensure!(!out.contains("FAIL"), "the script says {out:?}");
    ensure!(
        word("driver") == "virtio-pci",
        "L2's virtio-pci does not drive it: {out:?}"
    );
    let modes = word("modes");
    ensure!(
        modes.contains("msix:") && !modes.contains("msi:"),
        "its vectors are not MSI-X (modes {modes:?}: the driver fell back): {out:?}"
    );
    ensure!(word("read") == "1024", "/dev/hwrng gave no 1 KiB: {out:?}");
    // name:chip:count, per vector line.
    let lines = |k: &str| -> Vec<(String, u64)> {
        word(k)
            .split(',')
            .filter_map(|l| {
                // The chip (`PCI-MSIX-0000:00:01.0`) has colons of its own.
                let (name, rest) = l.split_once(':')?;
                let count = rest.rsplit(':').next()?.parse().ok()?;
                Some((name.to_string(), count))
            })
            .collect()
    };
    let (before, after) = (lines("before"), lines("after"));
    ensure!(
        after.len() >= 2,
        "fewer than two virtio vectors in /proc/interrupts (config and input: INTx shows one): \
         {out:?}"
    );
    let rose: Vec<String> = after
        .iter()
        .filter_map(|(name, n)| {
            let was = before.iter().find(|(b, _)| b == name).map_or(0, |b| b.1);
            (*n > was).then(|| format!("{name} {was}->{n}"))
        })
        .collect();
    ensure!(
        !rose.is_empty(),
        "no MSI-X vector counted an interrupt across the read: {out:?}"
    );
    Ok(format!("{} (rising: {})", out.trim(), rose.join(", ")))
}

/// A built-in VMM sandbox in `guest-kernel` mode with `group` cold-plugged (built again after
/// an L2 lost before our code: `l2_boot`).
async fn build(group: &Path, root_dir: &str) -> Result<Sandbox> {
    crate::l2_boot::past_firmware(|| build_once(group, root_dir)).await
}

async fn build_once(group: &Path, root_dir: &str) -> Result<Sandbox> {
    use kata_sandbox::HypervisorType;
    let mut hv = kata_hypervisor::HypervisorConfig::defaults_for(HypervisorType::Dragonball);
    hv.cold_plug_vfio = PciePort::RootPort;
    let b = Sandbox::builder()
        .hypervisor(HypervisorType::Dragonball)
        .hypervisor_config(hv)
        .id("lab-builtin-vfio-msix")
        .memory_mib(256)
        .vcpus(1)
        .root_dir(root_dir)
        // The device's DMA mapping pins L2's memory in L1 (emulated IOMMU) before boot.
        .agent_timeout(Duration::from_secs(150))
        .vfio_device(group);
    tokio::time::timeout(Duration::from_secs(300), b.build())
        .await
        .context("no sandbox after 300 s")?
        .map_err(Into::into)
}

/// Runs the script in a container of `sb` given `group` and `/dev/hwrng`.
async fn read_rng(sb: &Sandbox, group: &Path, rootfs: &Path) -> Result<String> {
    let mut spec = vfio_spec(group, true)?;
    let linux = spec.linux_mut().as_mut().context("a linux section")?;
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.push(
        LinuxDeviceBuilder::default()
            .path("/dev/hwrng")
            .typ(LinuxDeviceType::C)
            .major(10i64)
            .minor(183i64)
            .file_mode(0o600u32)
            .build()?,
    );
    linux.set_devices(Some(devices));
    let spec = ContainerSpec::from_oci(spec, rootfs).args(["sh", "-c", SCRIPT]);
    let out = sb.run(spec).await?;
    let said = format!("{}{}", out.stdout_str(), out.stderr_str());
    ensure!(out.status.success(), "status {}: {said:?}", out.status);
    Ok(said)
}

/// Runs `builtin-vfio-msix`.
pub(super) async fn run(r: &mut Report, rootfs: &Path, root_dir: &str) {
    let (group, bdf) = match rng_group() {
        Ok(g) => g,
        Err(e) => return r.line(MSIX, Err(e.context("not run"))),
    };
    let sb = match build(&group, root_dir).await {
        Ok(sb) => sb,
        Err(e) => return r.line(MSIX, Err(e.context("the sandbox did not start"))),
    };
    let result = tokio::time::timeout(Duration::from_secs(120), read_rng(&sb, &group, rootfs))
        .await
        .context("timed out")
        .and_then(|s| s)
        .and_then(|out| msix_ok(&out))
        .map(|proof| {
            format!(
                "L1's virtio-rng {bdf} ({}, alone in its group) driven by L2's virtio-pci \
                 through the built-in VMM's emulated MSI-X: {proof}",
                group.display()
            )
        });
    r.line(MSIX, result);
    if let Err(e) = sb.shutdown().await {
        eprintln!("kata-lab: shutting the builtin {MSIX} sandbox down: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "bdf=0000:00:01.0 driver=virtio-pci modes=msix:2, dev=virtio0 \
                        rng=virtio_rng.0 read=1024 \
                        before=virtio0-config:PCI-MSIX-0000:00:01.0:0,virtio0-input:PCI-MSIX-0000:00:01.0:12, \
                        after=virtio0-config:PCI-MSIX-0000:00:01.0:0,virtio0-input:PCI-MSIX-0000:00:01.0:29,";

    #[test]
    fn the_proof_needs_msix_vectors_counting_and_the_read() {
        let ok = msix_ok(GOOD).unwrap();
        assert!(ok.contains("virtio0-input 12->29"), "{ok}");
        // The driver fell back to INTx: one line on the IOAPIC, no MSI-X mode.
        let intx = "bdf=0000:00:01.0 driver=virtio-pci modes= dev=virtio0 rng=virtio_rng.0 \
                    read=1024 before=virtio0:IO-APIC:3, after=virtio0:IO-APIC:20,";
        assert!(msix_ok(intx).unwrap_err().to_string().contains("fell back"));
        assert!(msix_ok(&GOOD.replace("modes=msix:2,", "modes=msi:1,")).is_err());
        assert!(msix_ok(&GOOD.replace(
            "input:PCI-MSIX-0000:00:01.0:29",
            "input:PCI-MSIX-0000:00:01.0:12"
        ))
        .unwrap_err()
        .to_string()
        .contains("no MSI-X vector counted"));
        assert!(msix_ok(&GOOD.replace("read=1024", "read=0")).is_err());
        assert!(msix_ok(&GOOD.replace("driver=virtio-pci", "driver=")).is_err());
        assert!(msix_ok("FAIL no virtio-rng (1af4:1044) on L2's bus").is_err());
    }
}
