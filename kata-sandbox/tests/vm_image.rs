//! Tier 3: a sandbox booted from Kata's rootfs image layout (`image`, `guest/image.sh`)
//! instead of the initramfs, against a real guest (QEMU, KVM where usable, else TCG). Each
//! case boots (or tries to boot) its own sandbox under `kata_testkit::harness` (filter:
//! `cargo test -p kata-sandbox --test vm_image -- <case>`).
//!
//! As Kata attaches it: an NVDIMM mapping the image file read-only, the root mounted from
//! `/dev/pmem0p1` with DAX; with `disable_image_nvdimm = true` a read-only virtio-blk disk,
//! root on `/dev/vda1`. The guest's mounts are read from a container that shares the guest's
//! PID namespace (its spec has no `pid` namespace): its `/proc/1/mounts` is the agent's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kata_hypervisor::GuestManifest;
use kata_sandbox::oci_spec::runtime::{LinuxNamespaceType, Spec};
use kata_sandbox::{ContainerSpec, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::{mounts_under, processes_mentioning};

#[path = "support/busybox_root.rs"]
mod busybox_root;
use busybox_root::Env;

/// The image `make guest` built (the manifest's `image`).
fn manifest_image() -> Result<PathBuf> {
    let m = GuestManifest::load_default().context(NoGuest)?;
    m.image
        .context("the guest manifest has no `image`: run `make guest` (guest/image.sh builds it)")
}

/// How a case asks for the image to be attached.
#[derive(Clone, Copy, PartialEq)]
enum Attach {
    /// The default: an NVDIMM.
    Nvdimm,
    /// `vm_rootfs_driver = "virtio-pmem"`.
    VirtioPmem,
    /// `disable_image_nvdimm = true`: virtio-blk.
    VirtioBlk,
}

/// A builder for sandbox `id` booting `image` (no initrd), attached as `attach` says.
fn from_image(env: &Env, id: &str, image: &Path, attach: Attach) -> kata_sandbox::SandboxBuilder {
    let builder = Sandbox::builder()
        .id(id)
        .memory_mib(256)
        .root_dir(&env.root);
    let mut hv = builder.config().clone();
    hv.image = image.display().to_string();
    hv.initrd.clear();
    hv.disable_image_nvdimm = attach == Attach::VirtioBlk;
    if attach == Attach::VirtioPmem {
        hv.vm_rootfs_driver = kata_hypervisor::config::VmRootfsDriver::VirtioPmem;
    }
    builder.hypervisor_config(hv)
}

/// The sandbox's QEMU command line (its host pids also hold the vsock backend and virtiofsd).
fn qemu_cmdline(sandbox: &Sandbox) -> Result<String> {
    sandbox
        .host_pids()
        .into_iter()
        .find_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.starts_with("qemu-system").then(|| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                    .unwrap_or_default()
            })
        })
        .context("no qemu-system process among the sandbox's host pids")
}

/// The guest's root: its `/proc/mounts` line (the kernel names the device `/dev/root`) and
/// the block device's name (`DEVNAME` of `/sys/dev/block/<major:minor>` from `mountinfo`),
/// read by a container in the guest's PID namespace.
async fn guest_root_mount(env: &Env, sandbox: &Sandbox) -> Result<(String, String)> {
    let mut spec = Spec::default();
    if let Some(ns) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        ns.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    }
    let script = "grep ' / ' /proc/1/mounts; \
        dev=$(awk '$5 == \"/\" { print $3 }' /proc/1/mountinfo); \
        grep DEVNAME= /sys/dev/block/$dev/uevent";
    let out = sandbox
        .run(ContainerSpec::from_oci(spec, &env.rootfs).args(["sh", "-c", script]))
        .await?;
    let text = out.stdout_str();
    ensure!(out.status.success(), "reading the guest's root: {out:?}");
    let root = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .with_context(|| format!("no root in the guest's mounts:\n{text}"))?;
    let dev = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .with_context(|| format!("no DEVNAME for the guest's root:\n{text}"))?;
    Ok((root.to_string(), dev.to_string()))
}

/// The mount options of a `/proc/mounts` line.
fn options(root: &str) -> Vec<String> {
    root.split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Boots from the image (`nvdimm` or not), runs a container (exit code and output), reads the
/// guest's root mount and QEMU's command line, shuts down and checks nothing is left.
async fn boot_and_check(env: &Env, id: &str, attach: Attach) -> Result<((String, String), String)> {
    let image = manifest_image()?;
    let sandbox = from_image(env, id, &image, attach)
        .build()
        .await
        .context(NoGuest)?;
    booted();
    let dir = sandbox.dir().to_path_buf();
    let checked = async {
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args([
                "sh",
                "-c",
                "echo hello-from-the-image; exit 3",
            ]))
            .await?;
        ensure!(
            out.status.code() == Some(3),
            "status {}: {out:?}",
            out.status
        );
        ensure!(
            out.stdout_str() == "hello-from-the-image\n",
            "stdout {:?}",
            out.stdout_str()
        );
        let root = guest_root_mount(env, &sandbox).await?;
        let cmdline = qemu_cmdline(&sandbox)?;
        ensure!(
            cmdline.contains(&image.display().to_string()) && !cmdline.contains("-initrd"),
            "QEMU does not boot the image: {cmdline}"
        );
        Ok((root, cmdline))
    }
    .await;
    sandbox.shutdown().await?;
    let found = checked?;
    let left = processes_mentioning(id, "vm_image");
    ensure!(left.is_empty(), "processes left: {left:?}");
    ensure!(
        mounts_under(&dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    ensure!(!dir.exists(), "sandbox dir {} left", dir.display());
    Ok(found)
}

/// Kata's default with QEMU: the image is a read-only, unarmed NVDIMM and the guest's root is
/// `/dev/pmem0p1`, ext4, read-only, mounted with `dax`.
async fn case_image_on_nvdimm_runs_a_container_from_a_dax_root(env: Arc<Env>) -> Result<()> {
    let ((root, dev), cmdline) = boot_and_check(&env, "image-nvdimm", Attach::Nvdimm).await?;
    println!("guest root: {dev}: {root}");
    ensure!(
        dev == "pmem0p1" && root.split_whitespace().nth(2) == Some("ext4"),
        "the root is not ext4 on pmem0p1: {dev}: {root}"
    );
    let opts = options(&root);
    ensure!(
        opts.iter().any(|o| o == "ro") && opts.iter().any(|o| o == "dax" || o == "dax=always"),
        "the root is not mounted ro with dax: {root}"
    );
    for want in [
        "nvdimm=on",
        "readonly=on",
        "nvdimm,id=image0,memdev=image0-mem,unarmed=on",
    ] {
        ensure!(cmdline.contains(want), "`{want}` not in QEMU's {cmdline}");
    }
    Ok(())
}

/// `disable_image_nvdimm = true`: a read-only virtio-blk disk, root `/dev/vda1` without DAX.
async fn case_image_on_virtio_blk_when_nvdimm_is_disabled(env: Arc<Env>) -> Result<()> {
    let ((root, dev), cmdline) = boot_and_check(&env, "image-blk", Attach::VirtioBlk).await?;
    println!("guest root: {dev}: {root}");
    ensure!(
        dev == "vda1" && root.split_whitespace().nth(2) == Some("ext4"),
        "the root is not ext4 on vda1: {dev}: {root}"
    );
    let opts = options(&root);
    ensure!(
        opts.iter().any(|o| o == "ro") && !opts.iter().any(|o| o.starts_with("dax")),
        "the root is not ro without dax: {root}"
    );
    ensure!(
        cmdline.contains("virtio-blk-pci,drive=image0") && !cmdline.contains("nvdimm"),
        "not a virtio-blk image: {cmdline}"
    );
    Ok(())
}

/// `vm_rootfs_driver = "virtio-pmem"` (runtime-rs's key): a read-only virtio-pmem device, the
/// same `/dev/pmem0p1` root with DAX, no NVDIMM on the machine.
async fn case_image_on_virtio_pmem_when_the_driver_asks(env: Arc<Env>) -> Result<()> {
    let ((root, dev), cmdline) = boot_and_check(&env, "image-vpmem", Attach::VirtioPmem).await?;
    println!("guest root: {dev}: {root}");
    ensure!(
        dev == "pmem0p1" && root.split_whitespace().nth(2) == Some("ext4"),
        "the root is not ext4 on pmem0p1: {dev}: {root}"
    );
    let opts = options(&root);
    ensure!(
        opts.iter().any(|o| o == "ro") && opts.iter().any(|o| o == "dax" || o == "dax=always"),
        "the root is not mounted ro with dax: {root}"
    );
    ensure!(
        cmdline.contains("virtio-pmem-pci,id=image0,memdev=image0-mem")
            && cmdline.contains("readonly=on")
            && !cmdline.contains("nvdimm"),
        "not a read-only virtio-pmem image: {cmdline}"
    );
    Ok(())
}

/// `r` is an error containing each of `want`, and nothing of sandbox `id` exists.
async fn expect_refused(
    env: &Env,
    id: &str,
    r: kata_sandbox::Result<Sandbox>,
    want: &[&str],
) -> Result<()> {
    let e = match r {
        Ok(sb) => {
            sb.shutdown().await?;
            bail!("{id}: the sandbox started");
        }
        Err(e) => format!("{e:#}"),
    };
    for w in want {
        ensure!(e.contains(w), "{id}: `{w}` not in: {e}");
    }
    let dir = env.root.join(id);
    ensure!(!dir.exists(), "{id}: {} left", dir.display());
    let left = processes_mentioning(id, "vm_image");
    ensure!(left.is_empty(), "{id}: processes left: {left:?}");
    Ok(())
}

/// Bad input is refused before QEMU starts, naming the file and the fix, and leaves nothing:
/// an initramfs given as `image` (no DAX info block, no partition table), a missing file, a partitioned image
/// whose partition is not ext4, and `image` with `initrd`.
async fn case_bad_images_are_refused_before_the_vm_starts(env: Arc<Env>) -> Result<()> {
    let manifest = GuestManifest::load_default().context(NoGuest)?;
    let cpio = manifest.initrd.display().to_string();
    let r = from_image(&env, "image-cpio", &manifest.initrd, Attach::Nvdimm)
        .build()
        .await;
    expect_refused(
        &env,
        "image-cpio",
        r,
        &[&cpio, "no DAX info block", "make guest"],
    )
    .await?;

    let none = env.root.join("no-such.img");
    let r = from_image(&env, "image-none", &none, Attach::Nvdimm)
        .build()
        .await;
    let none_s = none.display().to_string();
    expect_refused(&env, "image-none", r, &["guest image not found", &none_s]).await?;

    // A good image with its partition's superblock zeroed (Kata's layout: the filesystem
    // starts at 3 MiB): partitioned, but no ext4.
    let broken = env.root.join("broken.img");
    let mut bytes = std::fs::read(manifest_image()?)?;
    bytes[(3 << 20) + 1024..(3 << 20) + 2048].fill(0);
    std::fs::write(&broken, bytes)?;
    let r = from_image(&env, "image-noext4", &broken, Attach::Nvdimm)
        .build()
        .await;
    let checked = expect_refused(&env, "image-noext4", r, &["holds no ext4 filesystem"]).await;
    std::fs::remove_file(&broken)?;
    checked?;

    let builder = from_image(&env, "image-both", &manifest_image()?, Attach::Nvdimm);
    let mut hv = builder.config().clone();
    hv.initrd = cpio.clone();
    let r = builder.hypervisor_config(hv).build().await;
    expect_refused(&env, "image-both", r, &["initrd", "image", "exclusive"]).await
}

fn main() -> std::process::ExitCode {
    Suite::new("vm_image")
        .timeout(Duration::from_secs(300))
        .case(
            "image_on_nvdimm_runs_a_container_from_a_dax_root",
            case_image_on_nvdimm_runs_a_container_from_a_dax_root,
        )
        .case(
            "image_on_virtio_blk_when_nvdimm_is_disabled",
            case_image_on_virtio_blk_when_nvdimm_is_disabled,
        )
        .case(
            "image_on_virtio_pmem_when_the_driver_asks",
            case_image_on_virtio_pmem_when_the_driver_asks,
        )
        .case(
            "bad_images_are_refused_before_the_vm_starts",
            case_bad_images_are_refused_before_the_vm_starts,
        )
        .on_failure(Env::cleanup_all)
        .run_with(Env::setup())
}
