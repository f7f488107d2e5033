//! VM templating with the built-in VMM (`[factory] enable_template` with
//! `[hypervisor.dragonball]`): sandboxes start as restores of one saved VM instead of booting.
//!
//! **The template.** The first sandbox of a configuration with `enable_template = true` finds
//! no template in `template_path` and makes one under the directory's exclusive lock
//! (`crate::template`: concurrent sandboxes make one between them): a VM with the sandbox's
//! device set — the vsock on a socket of its own (`<template_path>/vm/kata.hvsock`), each
//! inline virtio-fs share over an empty directory of its own — booted until its agent
//! answers, then saved by kata-vmm's snapshot (`kata_vmm::snapshot`: the vCPUs, chips and
//! devices into [`STATE_FILE`](crate::template::STATE_FILE), guest RAM sparse into
//! [`MEMORY_FILE`](crate::template::MEMORY_FILE)), which ends it. [`BuiltinManifest`] is
//! written last, into `template.json`.
//!
//! **A clone.** The sandbox's own VM is restored from it (`VmBuilder::restore`): the memory
//! file mapped private, so every clone shares the template's unwritten pages through the page
//! cache and a page a clone writes becomes its own (no vhost-user process needs the pages
//! shared: the share is served in this process). Its vsock is on the sandbox's socket and
//! starts with no connection (the guest is sent a transport reset and drops the template's);
//! its share is served by a fresh passthrough backend over the sandbox's own directory, with
//! the template's queue state (the template's guest never mounted it: the agent mounts nothing
//! before `CreateSandbox`, and kata-vmm refuses to save a share the guest used). kata-sandbox
//! then gives the guest fresh entropy and the host's time before `CreateSandbox`, as for
//! QEMU's clones.
//!
//! **Refused** (naming the key, when the VM is made or started): a relative `template_path`,
//! `reclaim_guest_freed_memory` (the balloon's page reporting would punch holes into the
//! memory file every clone maps), virtio-mem (`enable_virtio_mem`), PCIe ports
//! (`pcie_root_port`, `hot_plug_vfio`, `cold_plug_vfio`: the snapshot holds no PCI bus),
//! disks, NICs and VFIO functions at boot, and a template made for another memory size, vCPU
//! count, kernel, initrd, kernel command line, device set or VMM build.
//!
//! **Removal**: `rm -r <template_path>` with no sandbox starting from it (a running clone
//! keeps its mapping of the memory file and is not disturbed).

use std::path::Path;
use std::time::{Duration, Instant};

use kata_vmm::vm::Vm;
use serde::{Deserialize, Serialize};

use super::{lock, Builtin, AGENT_VSOCK_PORT, NAME, VSOCK_SOCKET};
use crate::config::HypervisorConfig;
use crate::device::{DeviceConfig, PciePort, VsockAddress};
use crate::error::{Error, Result};
use crate::template::{GuestBoot, Manifest, TemplateDir, TemplateLock, MAKER_DIR};

/// How long the template VM may take to boot to its agent.
const TEMPLATE_BOOT_WAIT: Duration = Duration::from_secs(120);

/// What a built-in template was made from; a clone's must be equal (kata-vmm checks the
/// snapshot's own record again at the restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltinManifest {
    /// The VMM that saved it (`kata-vmm <version> (snapshot format <n>)`, kata-vmm's own
    /// constants): another build's state is not read.
    pub vmm: String,
    /// The guest's size, kernel, initrd and command line.
    #[serde(flatten)]
    pub boot: GuestBoot,
    /// The boot devices, as `kind:tag` in order (the shares' tags; their directories are each
    /// clone's own).
    pub devices: Vec<String>,
}

impl BuiltinManifest {
    /// The manifest of `vm` with its configuration and prepared devices.
    pub(super) fn of(vm: &Builtin) -> Result<BuiltinManifest> {
        let (kernel, initrd) = vm.guest_files()?;
        Ok(BuiltinManifest {
            vmm: vmm_build(),
            boot: GuestBoot {
                kernel_file: crate::template::file_stamp(&kernel),
                initrd_file: initrd.as_deref().map(crate::template::file_stamp),
                memory_mib: vm.config.default_memory,
                vcpus: vm.config.default_vcpus,
                max_vcpus: super::resize::max_vcpus(&vm.config, crate::config::host_cpus()),
                kernel,
                initrd,
                kernel_cmdline: Builtin::kernel_cmdline(&vm.config),
            },
            devices: lock(&vm.shares)
                .iter()
                .map(|(tag, _)| format!("inline-virtio-fs:{tag}"))
                .collect(),
        })
    }
}

/// kata-vmm's build as a template records it: its version and its snapshot format (not
/// kata-hypervisor's version: the VMM writes and reads the state).
fn vmm_build() -> String {
    format!(
        "kata-vmm {} (snapshot format {})",
        kata_vmm::snapshot::VMM_VERSION,
        kata_vmm::snapshot::FORMAT
    )
}

impl Manifest for BuiltinManifest {
    fn difference(&self, saved: &Self) -> Option<String> {
        let vmm = [("the VMM build", saved.vmm.clone(), self.vmm.clone())];
        let devices = [(
            "the boot devices",
            saved.devices.join(","),
            self.devices.join(","),
        )];
        crate::template::first_difference(
            vmm.into_iter()
                .chain(self.boot.pairs(&saved.boot))
                .chain(devices),
        )
    }
}

fn refused(what: String) -> Error {
    Error::Unsupported {
        backend: NAME,
        what,
    }
}

/// Refuses a configuration the built-in VMM cannot template (when the VM is made), naming the
/// key and the fix. `Ok` when templating is off.
pub(super) fn check_config(c: &HypervisorConfig) -> Result<()> {
    if !c.factory.enable_template {
        return Ok(());
    }
    crate::template::check_template_path(c)?;
    let off = "or set factory.enable_template = false";
    if c.reclaim_guest_freed_memory {
        return Err(refused(format!(
            "VM templating with reclaim_guest_freed_memory = true: the balloon's page reporting \
             would punch the freed pages out of the template's memory file, which every clone \
             maps; set reclaim_guest_freed_memory = false, {off}"
        )));
    }
    if super::resize::hotplug_mib(c, super::resize::host_memory_mib()) > 0 {
        return Err(refused(format!(
            "VM templating with memory hot-plug (enable_virtio_mem = true, default_maxmemory \
             above default_memory): a snapshot holds no virtio-mem device; set \
             enable_virtio_mem = false, {off}"
        )));
    }
    if c.pcie_root_port > 0
        || c.cold_plug_vfio != PciePort::NoPort
        || c.hot_plug_vfio != PciePort::NoPort
    {
        return Err(refused(format!(
            "VM templating with PCIe ports (pcie_root_port = {}, cold_plug_vfio = {}, \
             hot_plug_vfio = {}): a snapshot of the built-in VMM holds no PCI bus; set \
             pcie_root_port = 0 and both to \"no-port\", {off}",
            c.pcie_root_port, c.cold_plug_vfio, c.hot_plug_vfio
        )));
    }
    Ok(())
}

/// Refuses boot devices a template cannot hold: disks, NICs and VFIO functions (the shares are
/// each clone's own).
pub(super) fn check_devices(devices: &[DeviceConfig]) -> Result<()> {
    for d in devices {
        let why = match d {
            DeviceConfig::ShareFs(_) => continue,
            DeviceConfig::Block(_) => {
                "a disk at boot (its state is not saved): set disable_block_device_use = true \
                 (the rootfs is then shared, not a disk)"
            }
            DeviceConfig::Net(_) => {
                "a NIC at boot (every clone would have the template's MAC and tap, and \
                 templating refuses the PCIe ports, pcie_root_port, a NIC hot-plug needs): run \
                 the templated sandbox without a pod network (internetworking_model = \"none\" \
                 and no network namespace)"
            }
            DeviceConfig::Vfio(_) => {
                "a VFIO function at boot (a host device is not saved, and cold_plug_vfio / \
                 hot_plug_vfio are refused with templating): give the pod no VFIO device"
            }
            _ => "this device at boot",
        };
        return Err(refused(format!(
            "VM templating with device {}: {why}; or set factory.enable_template = false",
            d.id()
        )));
    }
    Ok(())
}

/// Returns the template in `template_path` (a shared lock on it held by the caller until
/// its clone has been restored) whose manifest equals `ours`, or makes it when there is none:
/// a VM of `vm`'s configuration booted to its agent, saved, ended.
pub(super) async fn ensure(
    vm: &Builtin,
    ours: &BuiltinManifest,
) -> Result<(TemplateDir, TemplateLock)> {
    let dir = TemplateDir::new(&vm.config.factory.template_path);
    let lock = dir
        .ensure(ours, || async {
            let t0 = Instant::now();
            let maker_dir = dir.path().join(MAKER_DIR);
            let made = make(vm, dir.path(), &maker_dir).await;
            let _ = std::fs::remove_dir_all(&maker_dir);
            let memory_bytes = made?;
            tracing::info!(sandbox_id = %vm.id, dir = %dir.path().display(), took = ?t0.elapsed(), memory_bytes, "VM template made (built-in VMM)");
            Ok(())
        })
        .await?;
    Ok((dir, lock))
}

/// Boots the template VM in `maker_dir` (its socket, its empty shares), waits for its agent
/// and saves it into `dir`; returns the bytes of guest memory saved.
async fn make(vm: &Builtin, dir: &Path, maker_dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(maker_dir)
        .map_err(|e| Error::io(format!("creating {}", maker_dir.display()), e))?;
    let uds = maker_dir.join(VSOCK_SOCKET);
    let mut shares = Vec::new();
    for (i, (tag, _)) in lock(&vm.shares).iter().enumerate() {
        let empty = maker_dir.join(format!("share-{i}"));
        std::fs::create_dir_all(&empty)
            .map_err(|e| Error::io(format!("creating {}", empty.display()), e))?;
        shares.push((tag.clone(), empty));
    }
    let builder = vm
        .builder_with(uds.clone(), shares)?
        .name(format!("kata-{}-template", vm.id));
    let start_failed = |reason: String| Error::StartFailed {
        vmm: "the built-in VMM (the template VM)".into(),
        reason,
        console: Vec::new(),
    };
    let template: Vm = tokio::task::spawn_blocking(move || builder.start())
        .await
        .map_err(|e| start_failed(format!("the start task failed: {e}")))?
        .map_err(|e| start_failed(e.to_string()))?;
    let watcher = template.exit_watcher();
    let address = VsockAddress::HybridVsock {
        uds,
        port: AGENT_VSOCK_PORT,
    };
    let answered = tokio::select! {
        r = crate::ready::wait_answering(&address, TEMPLATE_BOOT_WAIT) => r.map_err(|e| e.detail),
        how = tokio::task::spawn_blocking(move || watcher.wait(None)) => {
            Err(format!("the template VM ended before its agent answered: {:?}", how.ok().flatten()))
        }
    };
    let console = printable_tail(&template);
    let mut template = template;
    if let Err(detail) = answered {
        let _ = tokio::task::spawn_blocking(move || template.stop()).await;
        return Err(Error::AgentNotReady {
            after: TEMPLATE_BOOT_WAIT,
            detail,
            console,
        });
    }
    let to = dir.to_path_buf();
    tokio::task::spawn_blocking(move || template.snapshot(&to))
        .await
        .map_err(|e| Error::io("saving the template VM", std::io::Error::other(e)))?
        .map_err(|e| refused(format!("saving the template VM: {e}")))
}

/// Whether `e`, kata-vmm's answer to a restore, refuses the template itself rather than
/// failing to start a VM: its files unreadable or damaged (`snapshot <dir>`), another memory
/// size or configuration than the snapshot's (`restoring snapshot`), an MSR KVM does not
/// take (`vCPU <n>`). A `KVM_SET_*` failure stays a start failure.
pub(super) fn refuses_template(e: &kata_vmm::Error) -> bool {
    match e {
        kata_vmm::Error::Device { device, .. } => {
            device.starts_with("snapshot ")
                || device.contains("(restoring snapshot ")
                || device.starts_with("vCPU ")
        }
        kata_vmm::Error::DeviceIo { device, .. } => device.starts_with("snapshot "),
        _ => false,
    }
}

/// The error for a template in `dir` kata-vmm refused (`e`), naming `factory.template_path`
/// and the fix, as [`TemplateDir::check_matches`] does.
pub(super) fn refused_template(dir: &Path, e: &kata_vmm::Error) -> Error {
    Error::InvalidConfig {
        key: "factory.template_path",
        value: dir.display().to_string(),
        reason: format!(
            "the template there cannot be restored ({e}); remove it (rm -r {}) so the next \
             sandbox makes a new one, or give this configuration its own template_path",
            dir.display()
        ),
    }
}

/// The reason of a start that failed restoring the template in `dir` for a cause that is not
/// the template's own (a `KVM_SET_*` call KVM refused: this host's KVM or CPU may differ from
/// the one that saved it): it names the template and how to make a new one, should the
/// failure repeat.
pub(super) fn restore_failed(dir: &Path, e: &kata_vmm::Error) -> String {
    format!(
        "restoring the template VM at {} (factory.template_path): {e}; if this repeats, the \
         template may come from another host or kernel: remove it (rm -r {}) so the next \
         sandbox makes a new one",
        dir.display(),
        dir.display()
    )
}

/// The template VM's last console lines, for an error.
fn printable_tail(vm: &Vm) -> Vec<String> {
    let bytes = vm
        .virtio_console()
        .map(|s| s.contents())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| vm.console());
    crate::console::printable_lines(&bytes, super::LOG_LINES_IN_ERRORS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HypervisorConfig {
        let mut c = HypervisorConfig::defaults_for(crate::config::HypervisorType::Dragonball);
        c.factory.enable_template = true;
        c.factory.template_path = "/run/vc/vm/template".into();
        c
    }

    #[test]
    fn what_a_snapshot_cannot_hold_is_refused_naming_the_key() {
        check_config(&config()).unwrap();
        let mut off = config();
        off.factory.enable_template = false;
        off.reclaim_guest_freed_memory = true;
        check_config(&off).unwrap();
        type Change = fn(&mut HypervisorConfig);
        let cases: [(&str, Change); 4] = [
            ("factory.template_path", |c| {
                c.factory.template_path = "rel".into()
            }),
            ("reclaim_guest_freed_memory", |c| {
                c.reclaim_guest_freed_memory = true
            }),
            ("pcie_root_port", |c| c.pcie_root_port = 2),
            ("hot_plug_vfio", |c| c.hot_plug_vfio = PciePort::RootPort),
        ];
        for (key, change) in cases {
            let mut c = config();
            change(&mut c);
            let e = check_config(&c).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let nic = DeviceConfig::Net(crate::device::NetDevice {
            id: "eth0".into(),
            tap_name: "tap0".into(),
            mac: "aa:bb:cc:dd:ee:ff".into(),
            netns: None,
            queues: 1,
            tap_fds: Vec::new(),
        });
        let e = check_devices(&[nic]).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("NIC"), "{e}");
        assert!(
            e.contains("without a pod network")
                && e.contains("internetworking_model")
                && e.contains("enable_template = false")
                && !e.contains("hot-plug the interfaces"),
            "{e}"
        );
        check_devices(&[]).unwrap();
    }

    #[test]
    fn the_vmm_build_is_kata_vmms_version_and_snapshot_format() {
        let build = vmm_build();
        assert_eq!(
            build,
            format!(
                "kata-vmm {} (snapshot format {})",
                kata_vmm::snapshot::VMM_VERSION,
                kata_vmm::snapshot::FORMAT
            )
        );
        // A template of an older record (version only) is another build.
        let old = "kata-vmm 0.1.0".to_string();
        assert_ne!(build, old);
    }

    #[test]
    fn a_template_kata_vmm_refuses_names_template_path_and_rm() {
        let dir = Path::new("/run/vc/vm/template");
        let damaged = kata_vmm::Error::Device {
            device: format!("snapshot {}", dir.display()),
            reason: "vCPU states [0] for 2 vCPUs: the state file is damaged".into(),
        };
        let other = kata_vmm::Error::Device {
            device: format!("VM kata-x (restoring snapshot {})", dir.display()),
            reason: "default_memory: 256 MiB, 512 MiB".into(),
        };
        let unreadable = kata_vmm::Error::DeviceIo {
            device: format!("snapshot {}", dir.display()),
            what: "opening the memory file".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let msr = kata_vmm::Error::Device {
            device: "vCPU 1".into(),
            reason: "KVM refused MSR 0x10 of the snapshot".into(),
        };
        for e in [damaged, other, unreadable, msr] {
            assert!(refuses_template(&e), "{e}");
            let msg = refused_template(dir, &e).to_string();
            assert!(
                msg.contains("factory.template_path") && msg.contains("rm -r /run/vc/vm/template"),
                "{msg}"
            );
        }
        // Not the template's fault: a start failure stays one.
        let no_memory = kata_vmm::Error::Memory {
            what: "creating the memfd",
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        };
        assert!(!refuses_template(&no_memory));
        // ... but it still says which template it was restoring and how to drop it.
        let msg = restore_failed(dir, &no_memory);
        assert!(
            msg.contains("restoring the template VM at /run/vc/vm/template")
                && msg.contains("factory.template_path")
                && msg.contains("rm -r /run/vc/vm/template")
                && msg.contains("creating the memfd"),
            "{msg}"
        );
    }

    #[test]
    fn a_template_of_another_configuration_is_refused_naming_the_difference() {
        let ours = BuiltinManifest {
            vmm: "kata-vmm 0.1.0".into(),
            boot: GuestBoot {
                memory_mib: 256,
                vcpus: 1,
                max_vcpus: 2,
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                kernel_cmdline: "console=hvc0".into(),
                kernel_file: "10 bytes, modified 1.000000000".into(),
                initrd_file: Some("20 bytes, modified 1.000000000".into()),
            },
            devices: vec!["inline-virtio-fs:kataShared".into()],
        };
        assert_eq!(ours.difference(&ours), None);
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path());
        dir.write_manifest(&ours).unwrap();
        dir.check_matches(&ours).unwrap();
        let mut bigger = ours.clone();
        bigger.boot.memory_mib = 512;
        let e = dir.check_matches(&bigger).unwrap_err().to_string();
        assert!(e.contains("default_memory") && e.contains("rm -r"), "{e}");
        let mut no_share = ours.clone();
        no_share.devices.clear();
        let e = dir.check_matches(&no_share).unwrap_err().to_string();
        assert!(e.contains("the boot devices"), "{e}");
    }
}
