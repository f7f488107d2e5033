//! `builtin-blk-hot` (issue 11): the built-in VMM hot-plugs a container's block volume as
//! virtio-blk on virtio-pci onto a spare PCIe root port, in L1 where KVM works.
//!
//! A sandbox on the built-in VMM with `block_device_driver = "virtio-blk-pci"` and
//! `pcie_root_port = 1` (one spare root port, so the second container can only have its disk if
//! the first's port was freed); an ext4 image in L1 (kata-testkit's busybox image with its
//! marker file) is a container's block volume: kata-sandbox hot-plugs it
//! (`Hypervisor::add_device`: kata-vmm's virtio-pci transport in the port's slot, the guest's
//! pciehp brings it up, the agent's `virtio-blk-pci` storage driver waits for the PCI path
//! `01/00` and mounts it) and the container reads the marker through it and writes a file,
//! its disk's sysfs path under the root port. Once the container is deleted the disk is gone
//! from the guest (`/sys/block` as before it: the attention button, the guest powered the slot
//! off), and a second container gets the same volume read-only through the same port (the
//! marker and the first container's file read back, a write refused, and
//! `/sys/block/<disk>/ro` reads 1: `VIRTIO_BLK_F_RO`, not only the mount's `ro`).
//!
//! `KATA_LAB_BLK=only` on the host runs this check alone (`lab.blk` on L1's command line; the
//! runner then runs no VMM set and the other checks never report).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use kata_hypervisor::config::{BlockDeviceDriver, HypervisorConfig, HypervisorType};
use kata_sandbox::{ContainerSpec, Sandbox};
use kata_testkit::image::ext4;

/// The check's name without the VMM's prefix.
pub const CHECK: &str = "blk-hot";

/// Whether L1's command line asks for this check alone (`lab.blk`, the host's `KATA_LAB_BLK`).
pub fn only() -> bool {
    only_in(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// [`only`] from a kernel command line: the word `lab.blk`, not a prefix of another.
fn only_in(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "lab.blk")
}

/// The guest's block devices (`/sys/block`), as a container of `sandbox` lists them.
async fn guest_disks(sandbox: &Sandbox, rootfs: &Path) -> Result<Vec<String>> {
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(rootfs).args(["ls", "/sys/block"]))
        .await?;
    ensure!(out.status.success(), "ls /sys/block: {out:?}");
    Ok(out
        .stdout_str()
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// A container with `image` as its ext4 block volume at `/disk` (read-only with `ro`), running
/// `script`.
fn with_volume(rootfs: &Path, image: &Path, ro: bool, script: &str) -> ContainerSpec {
    let mut oci = kata_sandbox::oci_spec::runtime::Spec::default();
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    let mut m = kata_sandbox::oci_spec::runtime::Mount::default();
    m.set_typ(Some("ext4".into()));
    m.set_source(Some(image.to_path_buf()));
    m.set_destination("/disk".into());
    m.set_options(Some(if ro { vec!["ro".into()] } else { Vec::new() }));
    mounts.push(m);
    oci.set_mounts(Some(mounts));
    ContainerSpec::from_oci(oci, rootfs).args(["sh", "-c", script])
}

/// One container reading the marker from the volume and trying a write (refused with `ro`);
/// returns the disk it added and that disk's sysfs path.
async fn read_through_disk(
    sandbox: &Sandbox,
    rootfs: &Path,
    image: &Path,
    ro: bool,
    before: &[String],
    which: &str,
) -> Result<(String, String)> {
    let marker = format!("/disk{}", ext4::MARKER_PATH);
    let out = sandbox
        .run(with_volume(
            rootfs,
            image,
            ro,
            &format!(
                "cat {marker}; for d in /sys/block/*; do echo \"disk ${{d##*/}} $(readlink -f \
                 $d) $(cat $d/ro)\"; done; if (echo {which} > /disk/{which}) 2>/dev/null; then \
                 echo write ok; else echo write refused; fi; echo \"first: $(cat /disk/first \
                 2>/dev/null)\""
            ),
        ))
        .await
        .with_context(|| format!("the {which} container with the block volume"))?;
    let text = out.stdout_str();
    ensure!(
        out.status.success() && text.starts_with(ext4::MARKER),
        "the {which} container did not read the marker through its disk: {out:?}"
    );
    let added: Vec<(&str, &str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("disk "))
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            Some((w.next()?, w.next()?, w.next()?))
        })
        .filter(|(name, _, _)| !before.iter().any(|b| b == name))
        .collect();
    let want = if ro { "write refused" } else { "write ok" };
    ensure!(
        text.lines().any(|l| l == want),
        "the {which} container's {} volume: {want} expected: {text:?}",
        if ro { "read-only" } else { "read-write" }
    );
    let [(name, path, ro_flag)] = added[..] else {
        anyhow::bail!("the {which} container's guest has not exactly one new disk: {text:?}");
    };
    // The guest's own view of VIRTIO_BLK_F_RO, not only the mount's `ro`.
    let want_flag = if ro { "1" } else { "0" };
    ensure!(
        ro_flag == want_flag,
        "the {which} container's disk {name}: /sys/block/{name}/ro reads {ro_flag}, \
         {want_flag} expected"
    );
    // The file the first container wrote reached the disk: the second reads it back.
    if ro {
        ensure!(
            text.lines().any(|l| l == "first: first"),
            "the {which} container did not read back the file the first one wrote: {text:?}"
        );
    }
    ensure!(
        path.contains("/0000:00:01.0/0000:01:00.0/"),
        "the {which} container's disk {name} is not behind root port 00:01.0 ({path})"
    );
    Ok((name.to_string(), path.to_string()))
}

/// `builtin-blk-hot`.
pub async fn builtin_blk_hot(rootfs: &Path, root_dir: &str) -> Result<String> {
    let kind = HypervisorType::Dragonball;
    let hv = HypervisorConfig {
        block_device_driver: BlockDeviceDriver::VirtioBlkPci,
        pcie_root_port: 1,
        ..HypervisorConfig::defaults_for(kind)
    };
    let work = tempfile::tempdir()?;
    let image = work.path().join("volume.ext4");
    ext4::busybox_ext4(&image).context("the ext4 image")?;
    let builder = Sandbox::builder()
        .id("lab-blk-hot")
        .hypervisor(kind)
        .hypervisor_config(hv)
        .vcpus(1)
        .root_dir(root_dir);
    let sandbox = crate::l2_boot::build_sandbox(&builder)
        .await
        .context("the sandbox with a spare root port did not start")?;
    let checked = async {
        let before = guest_disks(&sandbox, rootfs).await?;
        let (first, path) =
            read_through_disk(&sandbox, rootfs, &image, false, &before, "first").await?;
        let after = guest_disks(&sandbox, rootfs).await?;
        ensure!(
            after == before,
            "disk {first} stayed in the guest after its container was deleted: {after:?} \
             (before: {before:?})"
        );
        let (second, _) = read_through_disk(&sandbox, rootfs, &image, true, &before, "second")
            .await
            .context("the port was not free again for the second container")?;
        ensure!(
            guest_disks(&sandbox, rootfs).await? == before,
            "the second container's disk stayed after its delete"
        );
        Ok(format!(
            "an ext4 volume hot-plugged as virtio-blk-pci behind root port 00:01.0 ({first}: \
             {path}), its marker read and a file written; gone from the guest after the \
             delete; the same port took the second container's disk, read-only ({second}: the \
             marker and the first container's file read back, a write refused, \
             /sys/block/{second}/ro = 1)"
        ))
    }
    .await;
    crate::shut_down_clean(&sandbox, checked).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_the_whole_word() {
        assert!(only_in("console=ttyS0 lab.blk lab.runner=/x"));
        assert!(!only_in("console=ttyS0 lab.blkx"));
        assert!(!only_in(""));
    }
}
