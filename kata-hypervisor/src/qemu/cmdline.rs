//! The QEMU command line, built as a pure function of the configuration so it is unit-tested
//! without starting anything.
//!
//! What it confines: QEMU runs under its seccomp sandbox (`-sandbox`, see
//! [`HypervisorConfig::qemu_sandbox`]); the serial console is a socket the backend reads into
//! a bounded ring, never a file. The 9p share keeps `security_model=none`: QEMU's mapped
//! models (`mapped-xattr`, `mapped-file`) read a symlink as a file holding its target, so the
//! symlinks of an image unpacked on the host (`/bin/sh -> busybox`) would not resolve in the
//! guest; what keeps the guest from leaving setuid files and device nodes on the host is
//! [`super::confine`], applied to the QEMU process.

use std::path::{Path, PathBuf};

use crate::config::{BlockDeviceDriver, HypervisorConfig, SharedFs};
use crate::device::{DeviceConfig, NetDevice, PortAllocator, PortPlan};
use crate::error::{Error, Result};
use crate::kvm::Accelerator;

/// The kernel parameters kata-rs always passes (before the configured `kernel_params`).
///
/// `panic=-1` reboots at once on a panic and `-no-reboot` turns that reboot into QEMU exiting,
/// so a crashed guest ends the VM instead of hanging it. `scsi_mod.scan=manual` skips the
/// boot-time scan of every target of the virtio-scsi controller (the kernel waits for it before
/// `/init`: 0.6 s of a TCG boot, `benches/boot_phases.rs` with `initcall_debug`); disks are
/// still found, as the agent asks for each one's `target:lun` through sysfs (a manual scan)
/// and virtio-scsi reports hot-plugged disks itself. Kata passes `scsi_mod.scan=none`.
pub const BASE_KERNEL_PARAMS: &str = "console=ttyS0 panic=-1 reboot=t tsc=reliable \
no_timer_check rcupdate.rcu_expedited=1 i8042.noaux=1 i8042.nopnp=1 cryptomgr.notests \
net.ifnames=0 scsi_mod.scan=manual";

/// How the guest's vsock device is provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// The kernel's vhost-vsock (`/dev/vhost-vsock`) with this guest CID.
    VhostVsock {
        /// Guest context id.
        cid: u32,
    },
    /// A vhost-user backend listening on this socket.
    VhostUser {
        /// The backend's vhost-user socket.
        socket: PathBuf,
    },
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct QemuLaunch<'a> {
    /// The hypervisor section.
    pub config: &'a HypervisorConfig,
    /// The VM's name (shows in `ps`).
    pub name: &'a str,
    /// KVM or TCG.
    pub accelerator: Accelerator,
    /// Resolved kernel path.
    pub kernel: &'a Path,
    /// Resolved initrd path, if booting from an initramfs.
    pub initrd: Option<&'a Path>,
    /// The checked root image, if booting from a disk image ([`super::image`]: an NVDIMM or
    /// a virtio-blk disk).
    pub image: Option<&'a super::image::GuestImage>,
    /// The QMP socket.
    pub qmp_socket: &'a Path,
    /// The serial console's socket (QEMU listens, the backend's console reader connects).
    pub console_socket: &'a Path,
    /// The agent's vsock device.
    pub vsock: VsockDevice,
    /// Devices to cold-plug.
    pub devices: &'a [DeviceConfig],
    /// The VM's PCIe ports, the cold-plugged VFIO devices already placed
    /// ([`PortAllocator::for_vm`]).
    pub ports: &'a PortAllocator,
    /// Host memory in MiB (for `maxmem`).
    pub host_memory_mib: u64,
    /// Whether NICs use the kernel's vhost-net (`vhost=on`): `disable_vhost_net` is false and
    /// the host has `/dev/vhost-net` ([`vhost_net_usable`]).
    pub vhost_net: bool,
    /// For a rootless QEMU: the sockets it gets as descriptors instead of paths
    /// ([`super::rootless::HandedFds`]).
    pub handed: Option<&'a super::rootless::HandedFds>,
}

/// The kernel's vhost-net device, which QEMU opens itself for `vhost=on`.
pub const VHOST_NET_DEVICE: &str = "/dev/vhost-net";

/// Whether NICs get the kernel's vhost-net: `disable_vhost_net` is not set and the host has
/// [`VHOST_NET_DEVICE`] (without it, `vhost=on` would fail QEMU's start).
pub fn vhost_net_usable(config: &HypervisorConfig) -> bool {
    vhost_net_usable_at(config, Path::new(VHOST_NET_DEVICE))
}

/// [`vhost_net_usable`] with the device at `device` (testable on a fixture).
pub fn vhost_net_usable_at(config: &HypervisorConfig, device: &Path) -> bool {
    !config.disable_vhost_net && device.exists()
}

/// The full kernel command line: kata-rs' base, then the configured params.
pub fn kernel_cmdline(config: &HypervisorConfig, has_image: bool) -> String {
    kernel_cmdline_for(config, has_image, false)
}

/// [`kernel_cmdline`] for a guest under `tcg` software emulation: its clock is read from the
/// HPET (QEMU's clock, the host's) instead of the TSC, whose frequency the guest calibrates
/// at boot. With eight emulated guests booting at once on two cores, a guest's clock ran
/// ahead of the host's (an agent timeout of 60 s fired after about 10 s): a calibration taken
/// while the vCPU thread was starved. A configured `clocksource=` in `kernel_params` wins.
pub fn kernel_cmdline_for(config: &HypervisorConfig, has_image: bool, tcg: bool) -> String {
    let mut s = String::from(BASE_KERNEL_PARAMS);
    if tcg {
        s.push_str(" clocksource=hpet");
    }
    if !config.enable_debug {
        s.push_str(" quiet");
    }
    if has_image {
        s.push(' ');
        s.push_str(super::image::root_params(config));
    }
    if !config.kernel_params.trim().is_empty() {
        s.push(' ');
        s.push_str(config.kernel_params.trim());
    }
    s
}

/// The machine options that leave out a built-in device no kata-rs sandbox uses, for the
/// `-machine` value `machine` of `machine_type` (empty when there is none to add).
///
/// q35's SATA (AHCI) controller: kata-rs attaches every disk through virtio (`virtio-blk`,
/// `virtio-scsi`, an NVDIMM) and its guest kernel has no ATA driver, so `sata=off` drops a
/// device only QEMU's memory sees: 1.6 MiB of QEMU's anonymous memory per VM (QEMU 7.2,
/// `smaps_rollup` of a q35 VM started with `-S`: `Pss_Anon` 20188 kB, 18524 kB with
/// `sata=off`; `smbus`, `vmport` and `i8042` each under 0.1 MiB, so they stay). A
/// `machine_accelerators` that names `sata` itself is left as it is.
pub fn unused_machine_devices_off(machine_type: &str, machine: &str) -> &'static str {
    let q35 = machine_type == "q35" || machine_type.starts_with("pc-q35-");
    if q35
        && !machine
            .split(',')
            .any(|o| o == "sata" || o.starts_with("sata="))
    {
        ",sata=off"
    } else {
        ""
    }
}

/// The `-accel` value of a guest under TCG: `tcg` with the translation buffer of
/// `tcg_tb_size` MiB (`tb-size`), or QEMU's own size when it is 0.
///
/// QEMU writes the host code it translates from the guest's into that buffer and keeps what
/// it wrote resident; left to QEMU 7.2 the buffer is up to 1 GiB, and an idle busybox guest has
/// 40 MiB of it resident after boot. A bounded buffer is flushed when full and the code the
/// guest still runs translated again. KVM runs the guest's code natively: the key is not used.
///
/// Not with vCPU hot-plug (`default_maxvcpus` above `default_vcpus`): QEMU 7.2 splits the buffer
/// into regions and gives each new vCPU thread a free one, asserting there is one; a bounded
/// buffer the booted guest has filled has none left, and QEMU aborts at the hot-plug. Such a VM
/// keeps QEMU's own size, and the log says why.
pub fn tcg_accel(c: &HypervisorConfig) -> String {
    match c.tcg_tb_size {
        0 => "tcg".to_string(),
        mib if c.max_vcpus() > c.default_vcpus => {
            tracing::info!(
                tcg_tb_size = mib,
                default_vcpus = c.default_vcpus,
                maxcpus = c.max_vcpus(),
                "tcg_tb_size not applied: vCPUs may be hot-plugged and QEMU 7.2 aborts when a new \
                 vCPU finds the bounded translation buffer full; set default_maxvcpus = \
                 default_vcpus to bound it"
            );
            "tcg".to_string()
        }
        mib => format!("tcg,tb-size={mib}"),
    }
}

/// Builds the arguments (without the program name).
pub fn build_args(l: &QemuLaunch<'_>) -> Result<Vec<String>> {
    let c = l.config;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    let mut machine = if c.machine_accelerators.is_empty() {
        c.machine_type.clone()
    } else {
        format!("{},{}", c.machine_type, c.machine_accelerators)
    };
    // The image as an NVDIMM: the machine's NVDIMM support, a memory slot of its own and its
    // size on top of `maxmem` (hot-plug keeps `memory_slots` and its bound).
    let attachment = super::image::attachment(c);
    let nvdimm = l.image.filter(|_| attachment.is_pmem());
    if nvdimm.is_some()
        && attachment == super::image::ImageAttachment::Nvdimm
        && !machine.split(',').any(|o| o.starts_with("nvdimm"))
    {
        machine.push_str(",nvdimm=on");
    }
    machine.push_str(unused_machine_devices_off(&c.machine_type, &machine));
    // Named threads (`CPU 0/KVM`): the host cgroups find the vCPUs by them.
    push(&["-name", &format!("sandbox-{},debug-threads=on", l.name)]);
    push(&["-machine", &machine]);
    let cpu = match l.accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    let cpu = if c.cpu_features.is_empty() {
        cpu.to_string()
    } else {
        format!("{cpu},{}", c.cpu_features)
    };
    match l.accelerator {
        Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", &cpu]),
        Accelerator::Tcg => push(&["-accel", &tcg_accel(c), "-cpu", &cpu]),
    }
    if let Some(sandbox) = c.qemu_sandbox()? {
        push(&["-sandbox", &sandbox]);
    }
    let maxcpus = c.max_vcpus();
    push(&[
        "-smp",
        &format!(
            "{},sockets={maxcpus},cores=1,threads=1,maxcpus={maxcpus}",
            c.default_vcpus
        ),
    ]);
    let mem = c.default_memory;
    // `default_maxmemory` (0: the host's memory) plus the NVDIMM headroom; memory hot-plug
    // bounds itself by the same figure.
    let maxmem = super::resize::max_memory_mib(c, l.host_memory_mib);
    // virtio-mem: its region takes the room above `default_memory` (`virtio_mem.rs`).
    let virtio_mem_mib = super::virtio_mem::region_mib(c, maxmem);
    if c.enable_virtio_mem && virtio_mem_mib == 0 {
        return Err(Error::InvalidConfig {
            key: "default_maxmemory",
            value: c.default_maxmemory.to_string(),
            reason: format!(
                "enable_virtio_mem needs room for at least one 128 MiB memory block above \
                 default_memory = {} (maxmem would be {maxmem} MiB)",
                c.default_memory
            ),
        });
    }
    if let Some(image) = nvdimm {
        push(&[
            "-m",
            &format!(
                "{mem}M,slots={},maxmem={}M",
                c.memory_slots + 1,
                maxmem + image.size_mib()
            ),
        ]);
    } else if c.memory_slots > 0 || c.enable_virtio_mem {
        push(&[
            "-m",
            &format!("{mem}M,slots={},maxmem={maxmem}M", c.memory_slots),
        ]);
    } else {
        push(&["-m", &format!("{mem}M")]);
    }
    // Shared memory is required by every vhost-user device (vsock, virtio-fs).
    let prealloc = if c.enable_mem_prealloc {
        ",prealloc=on"
    } else {
        ""
    };
    let backend = if c.enable_hugepages {
        format!("memory-backend-memfd,id=mem0,size={mem}M,share=on,hugetlb=on{prealloc}")
    } else {
        format!("memory-backend-memfd,id=mem0,size={mem}M,share=on{prealloc}")
    };
    push(&["-object", &backend, "-numa", "node,memdev=mem0"]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-vga",
        "none",
    ]);
    // QEMU waits (`wait=on`) until the backend's console reader is connected, so nothing the
    // guest writes is lost; the reader keeps the last bytes in a bounded ring.
    push(&[
        "-chardev",
        &format!(
            "socket,id=console0,{},server=on,wait=on",
            socket_address(l.handed, l.console_socket)
        ),
        "-serial",
        "chardev:console0",
    ]);
    match l.handed {
        // Rootless: the monitor listens on the socket the runtime bound.
        Some(h) => push(&[
            "-chardev",
            &format!(
                "socket,id=qmp0,{},server=on,wait=off",
                socket_address(Some(h), l.qmp_socket)
            ),
            "-mon",
            "chardev=qmp0,mode=control",
        ]),
        None => push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", l.qmp_socket.display()),
        ]),
    }
    if let Some(h) = l.handed {
        a.extend(h.marker_args());
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // The configured firmware, else qboot where the VM needs nothing only SeaBIOS does.
    if let Some(bios) = super::firmware::choose(c, l.ports.plan(), l.devices).bios() {
        push(&["-bios", &bios.display().to_string()]);
    }
    push(&["-kernel", &l.kernel.display().to_string()]);
    if let Some(initrd) = l.initrd {
        push(&["-initrd", &initrd.display().to_string()]);
    }
    if let Some(image) = l.image {
        a.extend(super::image::args(c, image));
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let tcg = l.accelerator == Accelerator::Tcg;
    push(&["-append", &kernel_cmdline_for(c, l.image.is_some(), tcg)]);
    push(&[
        "-object",
        &format!("rng-random,id=rng0,filename={}", c.entropy_source),
        "-device",
        "virtio-rng-pci,rng=rng0",
    ]);
    // reclaim_guest_freed_memory: a balloon that is never inflated, for its free page
    // reporting: pages the guest frees are reported and QEMU discards them (for the memfd that
    // backs guest memory, a hole punched in it), so an idle guest gives memory back.
    if c.reclaim_guest_freed_memory {
        push(&[
            "-device",
            "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
        ]);
    }
    a.extend(super::virtio_mem::args(c, virtio_mem_mib));
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    match &l.vsock {
        VsockDevice::VhostVsock { cid } => push(&[
            "-device",
            &format!("vhost-vsock-pci,id=vsock0,guest-cid={cid}"),
        ]),
        VsockDevice::VhostUser { socket } => push(&[
            "-chardev",
            &format!("socket,id=char-vsock0,{}", socket_address(l.handed, socket)),
            "-device",
            "vhost-user-vsock-pci,chardev=char-vsock0,id=vsock0",
        ]),
    }
    a.extend(topology_args(l.ports.plan()));
    // SCSI disks are hot-plugged onto a controller that exists from boot.
    let mut scsi_controller = super::hotplug::wants_scsi_controller(c);
    if scsi_controller {
        a.extend([
            "-device".to_string(),
            format!("virtio-scsi-pci,id={}", super::hotplug::SCSI_CONTROLLER),
        ]);
    }
    for d in l.devices {
        a.extend(device_args(
            c,
            d,
            l.vhost_net,
            &mut scsi_controller,
            l.handed,
        )?);
    }
    a.extend(vfio_args(l.devices, l.ports));
    a.extend(super::vfio_ap::args(c, l.devices)?);
    Ok(a)
}

/// A socket chardev's address: `fd=N` when the socket is handed to a rootless QEMU as a
/// descriptor, else `path=`.
fn socket_address(handed: Option<&super::rootless::HandedFds>, path: &Path) -> String {
    match handed.and_then(|h| h.fd_for(path)) {
        Some(fd) => format!("fd={fd}"),
        None => format!("path={}", path.display()),
    }
}

/// The `-device` arguments that create the ports of a [`PortPlan`].
pub fn topology_args(plan: &PortPlan) -> Vec<String> {
    let mut a = Vec::new();
    let mut dev = |s: String| {
        a.push("-device".to_string());
        a.push(s);
    };
    for i in 0..plan.root_ports {
        dev(format!(
            "pcie-root-port,id=rp{i},bus=pcie.0,chassis={},slot={},multifunction=off",
            i + 1,
            i + 1
        ));
    }
    if plan.switch_ports > 0 {
        dev("pcie-root-port,id=rp-sw0,bus=pcie.0,chassis=100,slot=100".into());
        dev("x3130-upstream,id=swup0,bus=rp-sw0".into());
        for i in 0..plan.switch_ports {
            dev(format!(
                "xio3130-downstream,id=swdp{i},bus=swup0,chassis={},slot={}",
                101 + i,
                i
            ));
        }
    }
    if plan.bridge {
        dev("pcie-pci-bridge,id=pci-bridge0,bus=pcie.0".into());
    }
    a
}

/// virtio-fs: a `vhost-user-fs-pci` device on the daemon's socket (guest memory is a shared
/// memfd, which vhost-user needs). QEMU 7.2 has no DAX window (`cache-size`), so a non-zero
/// `virtio_fs_cache_size` is refused rather than ignored.
fn virtio_fs_args(
    c: &HypervisorConfig,
    fs: &crate::device::ShareFsDevice,
    handed: Option<&super::rootless::HandedFds>,
) -> Result<Vec<String>> {
    if c.virtio_fs_cache_size != 0 || c.virtio_fs_is_dax {
        return Err(Error::InvalidConfig {
            key: "virtio_fs_cache_size",
            value: c.virtio_fs_cache_size.to_string(),
            reason: "QEMU 7.2's vhost-user-fs-pci has no DAX window (cache-size); set 0".into(),
        });
    }
    let Some(socket) = &fs.vhost_user_socket else {
        return Err(Error::InvalidConfig {
            key: "shared_fs",
            value: "\"virtio-fs\"".into(),
            reason: format!(
                "the share {} names no virtiofsd socket (kata-resource starts the daemon and \
                 yields it with the device)",
                fs.host_path.display()
            ),
        });
    };
    let tag = &fs.mount_tag;
    Ok(vec![
        "-chardev".into(),
        format!("socket,id=char-{tag},{}", socket_address(handed, socket)),
        "-device".into(),
        format!(
            "vhost-user-fs-pci,chardev=char-{tag},tag={tag},queue-size={},id=fs-{tag}",
            c.virtio_fs_queue_size
        ),
    ])
}

fn device_args(
    c: &HypervisorConfig,
    d: &DeviceConfig,
    vhost_net: bool,
    scsi_controller: &mut bool,
    handed: Option<&super::rootless::HandedFds>,
) -> Result<Vec<String>> {
    let s = |v: &[String]| v.to_vec();
    Ok(match d {
        DeviceConfig::ShareFs(fs) => match fs.kind {
            SharedFs::Virtio9p => s(&[
                "-fsdev".into(),
                format!(
                    "local,id=fsdev-{tag},path={},security_model=none,multidevs=remap",
                    fs.host_path.display(),
                    tag = fs.mount_tag
                ),
                "-device".into(),
                format!(
                    "virtio-9p-pci,fsdev=fsdev-{tag},mount_tag={tag},id=fs-{tag}",
                    tag = fs.mount_tag
                ),
            ]),
            SharedFs::VirtioFs => virtio_fs_args(c, fs, handed)?,
            SharedFs::None => Vec::new(),
            other => {
                super::capabilities().check_shared_fs(other)?;
                return Err(Error::Unsupported {
                    backend: "qemu",
                    what: format!("shared_fs = \"{other}\" devices"),
                });
            }
        },
        DeviceConfig::Block(b) => {
            let ro = if b.read_only { ",readonly=on" } else { "" };
            let drive = format!(
                "file={},if=none,id=drive-{id},format=raw,cache=none,aio={aio}{ro}",
                b.path.display(),
                id = b.id,
                aio = c.block_device_aio
            );
            let scsi = c.block_device_driver == BlockDeviceDriver::VirtioScsi;
            let dev = if scsi {
                format!("scsi-hd,drive=drive-{id},id={id},bus=scsi0.0", id = b.id)
            } else {
                format!("virtio-blk-pci,drive=drive-{id},id={id}", id = b.id)
            };
            let mut v = vec!["-drive".to_string(), drive];
            if scsi && !*scsi_controller {
                *scsi_controller = true;
                v.extend([
                    "-device".to_string(),
                    "virtio-scsi-pci,id=scsi0".to_string(),
                ]);
            }
            v.extend(["-device".to_string(), dev]);
            v
        }
        DeviceConfig::Net(n) => net_args(n, vhost_net)?,
        DeviceConfig::Vfio(_) => Vec::new(), // placed by `vfio_args`, which knows the index
        DeviceConfig::VfioAp(_) => Vec::new(), // placed by `vfio_ap::args` (no port)
    })
}

/// A NIC: `-netdev tap` on the tap's open queues, which QEMU inherits by number
/// ([`NetDevice::tap_fds`]; the backend keeps them open across `execve`), and a
/// `virtio-net-pci` with the pod interface's MAC, multi-queue when the tap has several queues.
///
/// Never `ifname=`: QEMU runs in the host's network namespace, where it would open or create
/// a tap of that name; the tap lives in the pod's namespace. `romfile=` (none): the guest boots
/// from `-kernel`, and the PXE ROM (`efi-virtio.rom`) is not installed everywhere.
fn net_args(n: &NetDevice, vhost_net: bool) -> Result<Vec<String>> {
    let refuse = |reason: String| Error::InvalidDevice {
        kind: "network",
        id: format!("{} (tap {})", n.id, n.tap_name),
        reason,
    };
    let fds = n.raw_tap_fds();
    if fds.is_empty() {
        return Err(refuse(
            "it carries no open tap queue: the QEMU backend passes a tap to QEMU only as an \
             open file (kata-resource's set_up_network makes them), never by name"
                .into(),
        ));
    }
    if fds.len() != n.queues.max(1) as usize {
        return Err(refuse(format!(
            "it has {} queue pairs but {} open tap queues: each queue pair needs one",
            n.queues,
            fds.len()
        )));
    }
    if let Some(fd) = fds.iter().find(|&&fd| fd <= 2) {
        return Err(refuse(format!(
            "tap queue fd {fd} would be QEMU's stdin, stdout or stderr: open the tap while \
             fds 0-2 are open"
        )));
    }
    let numbers: Vec<String> = fds.iter().map(|fd| fd.to_string()).collect();
    let vhost = if vhost_net { "on" } else { "off" };
    let mut device = format!(
        "virtio-net-pci,netdev=netdev-{id},id={id},mac={mac},romfile=",
        id = n.id,
        mac = n.mac
    );
    if fds.len() > 1 {
        // A vector per queue (rx and tx of each pair), one for config changes and one for
        // the control queue, as Kata gives it.
        device.push_str(&format!(",mq=on,vectors={}", 2 * fds.len() + 2));
    }
    Ok(vec![
        "-netdev".into(),
        format!(
            "tap,id=netdev-{id},fds={fds},vhost={vhost}",
            id = n.id,
            fds = numbers.join(":")
        ),
        "-device".into(),
        device,
    ])
}

/// `-device vfio-pci` arguments for the cold-plugged VFIO devices, on the ports `ports` gave
/// them. Devices without a port (`cold_plug_vfio = "no-port"`) are not cold-plugged: the VM
/// hot-plugs them after boot.
pub fn vfio_args(devices: &[DeviceConfig], ports: &PortAllocator) -> Vec<String> {
    let mut a = Vec::new();
    for d in devices {
        let DeviceConfig::Vfio(v) = d else { continue };
        if let Some(slot) = ports.slot_of(&v.id) {
            let addr = slot
                .addr
                .map(|n| format!(",addr={n:#x}"))
                .unwrap_or_default();
            a.push("-device".into());
            a.push(format!(
                "vfio-pci,host={},id={},bus={}{addr}",
                v.bdf, v.id, slot.bus
            ));
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RootfsType;
    use crate::device::{BlockDevice, NetDevice, PciePort, ShareFsDevice, VfioDevice};

    fn launch<'a>(
        c: &'a HypervisorConfig,
        devices: &'a [DeviceConfig],
        ports: &'a PortAllocator,
    ) -> QemuLaunch<'a> {
        QemuLaunch {
            config: c,
            name: "sb1",
            accelerator: Accelerator::Tcg,
            kernel: Path::new("/k/bzImage"),
            initrd: Some(Path::new("/k/initrd.img")),
            image: None,
            qmp_socket: Path::new("/run/vm/qmp.sock"),
            console_socket: Path::new("/run/vm/console.sock"),
            vsock: VsockDevice::VhostUser {
                socket: "/run/vm/vhost-vsock.sock".into(),
            },
            devices,
            ports,
            host_memory_mib: 4096,
            vhost_net: false,
            handed: None,
        }
    }

    /// Rootless: every socket QEMU would open or bind by path is a handed descriptor, the
    /// monitor is a `-mon` on the bound socket, and the command line still names the VM
    /// directory (adoption and cleanup find QEMU by it).
    #[test]
    fn a_rootless_qemu_gets_its_sockets_as_descriptors() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = tmp.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let (qmp, console) = (vm.join("qmp.sock"), vm.join("console.sock"));
        let (vsock, vfs) = (vm.join("vhost-vsock.sock"), vm.join("virtiofsd.sock"));
        let _daemons = [
            std::os::unix::net::UnixListener::bind(&vsock).unwrap(),
            std::os::unix::net::UnixListener::bind(&vfs).unwrap(),
        ];
        let handed =
            crate::qemu::rootless::HandedFds::open(&vm, &[&qmp, &console], &[&vsock, &vfs])
                .unwrap();
        let c = HypervisorConfig {
            rootless: true,
            ..Default::default()
        };
        let devices = [DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: "kataShared".into(),
            host_path: "/run/sb/shared".into(),
            kind: SharedFs::VirtioFs,
            vhost_user_socket: Some(vfs.clone()),
        })];
        let ports = PortAllocator::for_vm(&c, &devices).unwrap();
        let l = QemuLaunch {
            qmp_socket: &qmp,
            console_socket: &console,
            vsock: VsockDevice::VhostUser {
                socket: vsock.clone(),
            },
            handed: Some(&handed),
            ..launch(&c, &devices, &ports)
        };
        let a = build_args(&l).unwrap().join(" ");
        let fd = |p: &Path| handed.fd_for(p).unwrap();
        for want in [
            format!("socket,id=console0,fd={},server=on,wait=on", fd(&console)),
            format!(
                "-chardev socket,id=qmp0,fd={},server=on,wait=off -mon chardev=qmp0,mode=control",
                fd(&qmp)
            ),
            format!("socket,id=char-vsock0,fd={}", fd(&vsock)),
            format!("socket,id=char-kataShared,fd={}", fd(&vfs)),
            format!("opaque=kata-rs-vm-dir:{}/", vm.display()),
        ] {
            assert!(a.contains(&want), "`{want}` not in {a}");
        }
        assert!(!a.contains("path=") && !a.contains("-qmp"), "{a}");
        assert_eq!(handed.raw_fds().len(), 5);
    }

    fn args(c: &HypervisorConfig, devices: &[DeviceConfig]) -> Result<String> {
        let ports = PortAllocator::for_vm(c, devices)?;
        Ok(build_args(&launch(c, devices, &ports))?.join(" "))
    }

    fn share(kind: SharedFs) -> DeviceConfig {
        DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: "kataShared".into(),
            host_path: "/run/sb/shared".into(),
            kind,
            vhost_user_socket: (kind == SharedFs::VirtioFs)
                .then(|| "/run/sb/virtiofsd.sock".into()),
        })
    }

    /// q35's SATA controller is left out unless the configuration names it; other machines
    /// have none to leave out.
    #[test]
    fn q35_starts_without_its_sata_controller() {
        let machine = |machine_type: &str, accelerators: &str| {
            let c = HypervisorConfig {
                machine_type: machine_type.into(),
                machine_accelerators: accelerators.into(),
                ..Default::default()
            };
            let a = args(&c, &[]).unwrap();
            let m = a.split(" -machine ").nth(1).unwrap();
            m.split(' ').next().unwrap().to_string()
        };
        assert_eq!(machine("q35", ""), "q35,sata=off");
        assert_eq!(machine("pc-q35-7.2", ""), "pc-q35-7.2,sata=off");
        assert_eq!(machine("q35", "smm=off"), "q35,smm=off,sata=off");
        assert_eq!(machine("q35", "sata=on"), "q35,sata=on");
        assert_eq!(machine("pc", ""), "pc");
        assert_eq!(unused_machine_devices_off("q35", "q35,sata"), "");
        assert_eq!(
            unused_machine_devices_off("q35", "q35,satax=1"),
            ",sata=off"
        );
    }

    #[test]
    fn tcg_launch_has_what_a_hybrid_vsock_guest_needs() {
        let c = HypervisorConfig {
            default_memory: 256,
            default_maxvcpus: 2,
            ..Default::default()
        };
        let a = args(&c, &[share(SharedFs::Virtio9p)]).unwrap();
        assert!(
            // vCPUs may be hot-plugged (maxcpus 2): QEMU's own translation buffer.
            a.contains("-machine q35,sata=off -accel tcg -cpu max"),
            "{a}"
        );
        assert!(
            a.contains("-smp 1,sockets=2,cores=1,threads=1,maxcpus=2"),
            "{a}"
        );
        assert!(a.contains("-m 256M,slots=10,maxmem=4096M"), "{a}");
        assert!(
            a.contains("memory-backend-memfd,id=mem0,size=256M,share=on"),
            "{a}"
        );
        assert!(
            a.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"),
            "{a}"
        );
        assert!(
            a.contains(
                "-chardev socket,id=console0,path=/run/vm/console.sock,server=on,wait=on \
                 -serial chardev:console0"
            ),
            "the console is a socket, never a file: {a}"
        );
        assert!(!a.contains("file:"), "{a}");
        // The console's chardev comes first: QEMU waits for its reader before it opens QMP.
        assert!(a.find("console0") < a.find("-qmp"), "{a}");
        assert!(
            a.contains("vhost-user-vsock-pci,chardev=char-vsock0"),
            "{a}"
        );
        assert!(
            a.contains("virtio-9p-pci,fsdev=fsdev-kataShared,mount_tag=kataShared"),
            "{a}"
        );
        assert!(a.contains("-no-reboot"), "{a}");
        assert!(a.contains("panic=-1"), "{a}");
    }

    #[test]
    fn the_9p_share_keeps_host_symlinks_working() {
        let a = args(&HypervisorConfig::default(), &[share(SharedFs::Virtio9p)]).unwrap();
        assert!(
            a.contains(
                "-fsdev local,id=fsdev-kataShared,path=/run/sb/shared,security_model=none,\
                 multidevs=remap"
            ),
            "a mapped model would break the image's symlinks: {a}"
        );
    }

    #[test]
    fn qemu_runs_in_its_seccomp_sandbox_unless_told_otherwise() {
        let a = args(&HypervisorConfig::default(), &[]).unwrap();
        assert!(
            a.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "on by default: {a}"
        );
        let c = HypervisorConfig {
            seccomp_sandbox: "on,spawn=deny".into(),
            ..Default::default()
        };
        assert!(args(&c, &[]).unwrap().contains("-sandbox on,spawn=deny "));
        let c = HypervisorConfig {
            seccomp_sandbox: "off".into(),
            ..Default::default()
        };
        assert!(!args(&c, &[]).unwrap().contains("-sandbox"));
        let c = HypervisorConfig {
            seccomp_sandbox: "spawn=deny".into(),
            ..Default::default()
        };
        let e = args(&c, &[]).unwrap_err().to_string();
        assert!(e.contains("seccomp_sandbox"), "{e}");
    }

    #[test]
    fn cpu_features_memory_ceiling_rootfs_type_and_aio_are_applied() {
        let c = HypervisorConfig {
            cpu_features: "pmu=off".into(),
            default_memory: 512,
            default_maxmemory: 1024,
            memory_offset: 64,
            block_device_aio: crate::config::BlockDeviceAio::Native,
            ..Default::default()
        };
        let disk = DeviceConfig::Block(BlockDevice {
            id: "d0".into(),
            path: "/img/d0".into(),
            read_only: true,
        });
        let a = args(&c, &[disk]).unwrap();
        assert!(a.contains("-accel tcg -cpu max,pmu=off"), "{a}");
        assert!(a.contains("-m 512M,slots=10,maxmem=1088M"), "{a}");
        assert!(a.contains("cache=none,aio=native,readonly=on"), "{a}");
        // Above the host's memory is the host's memory (4096 MiB here).
        let c = HypervisorConfig {
            default_maxmemory: 1 << 20,
            ..Default::default()
        };
        assert!(args(&c, &[]).unwrap().contains("maxmem=4096M"));
        for (fs, flags) in [
            (
                RootfsType::Ext4,
                "rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4",
            ),
            (RootfsType::Xfs, "rootflags=ro ro rootfstype=xfs"),
            (RootfsType::Erofs, "rootflags=ro ro rootfstype=erofs"),
        ] {
            let c = HypervisorConfig {
                rootfs_type: fs,
                disable_image_nvdimm: true,
                ..Default::default()
            };
            assert!(kernel_cmdline(&c, true).contains(flags), "{fs}");
            assert!(!kernel_cmdline(&c, false).contains("rootfstype"));
        }
    }

    /// Kata's default with QEMU: the image is an NVDIMM (q35 with `nvdimm=on`, a slot and
    /// its size on top of the hot-plug ones) mounted with DAX from `/dev/pmem0p1`; with
    /// `disable_image_nvdimm` a read-only virtio-blk disk and `/dev/vda1`. No initrd either way.
    #[test]
    fn an_image_boots_from_an_nvdimm_with_dax_unless_disabled() {
        let image = super::super::image::GuestImage {
            path: "/g/kata-containers.img".into(),
            size: 18 << 20,
        };
        let c = HypervisorConfig::default();
        let ports = PortAllocator::for_vm(&c, &[]).unwrap();
        let l = QemuLaunch {
            initrd: None,
            image: Some(&image),
            ..launch(&c, &[], &ports)
        };
        let a = build_args(&l).unwrap().join(" ");
        for want in [
            "-machine q35,nvdimm=on,sata=off ",
            "-m 2048M,slots=11,maxmem=4114M ",
            "-object memory-backend-file,id=image0-mem,mem-path=/g/kata-containers.img,\
             size=18874368,readonly=on,share=on -device nvdimm,id=image0,memdev=image0-mem,unarmed=on",
            " root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
        assert!(!a.contains("-initrd") && !a.contains("virtio-blk"), "{a}");

        let c = HypervisorConfig {
            disable_image_nvdimm: true,
            ..Default::default()
        };
        let l = QemuLaunch {
            initrd: None,
            image: Some(&image),
            ..launch(&c, &[], &ports)
        };
        let a = build_args(&l).unwrap().join(" ");
        for want in [
            "-machine q35,sata=off ",
            "-m 2048M,slots=10,maxmem=4096M ",
            "-drive file=/g/kata-containers.img,if=none,id=image0,format=raw,readonly=on \
             -device virtio-blk-pci,drive=image0,id=image0-dev",
            " root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
        assert!(!a.contains("nvdimm") && !a.contains("pmem"), "{a}");
    }

    #[test]
    fn the_tcg_translation_buffer_is_bounded_by_tcg_tb_size_and_kvm_has_none() {
        let accel = |tb: u32, accelerator: Accelerator| {
            // No vCPU hot-plug (the buffer's condition below).
            let c = HypervisorConfig {
                tcg_tb_size: tb,
                default_vcpus: 2,
                default_maxvcpus: 2,
                ..Default::default()
            };
            let ports = PortAllocator::for_vm(&c, &[]).unwrap();
            let mut l = launch(&c, &[], &ports);
            l.accelerator = accelerator;
            let a = build_args(&l).unwrap();
            let i = a.iter().position(|x| x == "-accel").unwrap();
            assert!(
                a.iter().filter(|x| x.contains("tb-size")).count() <= 1,
                "{a:?}"
            );
            a[i + 1].clone()
        };
        // kata-rs' default, a configured size, and 0 for QEMU's own (up to 1 GiB).
        assert_eq!(
            accel(crate::config::DEFAULT_TCG_TB_SIZE_MIB, Accelerator::Tcg),
            "tcg,tb-size=16"
        );
        assert_eq!(accel(64, Accelerator::Tcg), "tcg,tb-size=64");
        assert_eq!(accel(0, Accelerator::Tcg), "tcg");
        // KVM translates nothing: the key leaves its command line alone.
        assert_eq!(accel(64, Accelerator::Kvm), "kvm");
        assert_eq!(accel(0, Accelerator::Kvm), "kvm");
        // vCPUs that may be hot-plugged: QEMU's own buffer (a bounded one aborts the plug).
        let hot = HypervisorConfig {
            tcg_tb_size: 16,
            default_vcpus: 1,
            default_maxvcpus: 2,
            ..Default::default()
        };
        assert_eq!(tcg_accel(&hot), "tcg");
    }

    #[test]
    fn kvm_uses_host_cpu_and_vhost_vsock() {
        let c = HypervisorConfig::default();
        let ports = PortAllocator::for_vm(&c, &[]).unwrap();
        let mut l = launch(&c, &[], &ports);
        l.accelerator = Accelerator::Kvm;
        l.vsock = VsockDevice::VhostVsock { cid: 42 };
        let a = build_args(&l).unwrap().join(" ");
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(a.contains("vhost-vsock-pci,id=vsock0,guest-cid=42"), "{a}");
    }

    #[test]
    fn the_guest_skips_the_boot_time_scsi_scan_but_a_configured_value_wins() {
        let k = kernel_cmdline(&HypervisorConfig::default(), false);
        assert!(k.contains(" scsi_mod.scan=manual"), "{k}");
        let c = HypervisorConfig {
            kernel_params: "scsi_mod.scan=async".into(),
            ..HypervisorConfig::default()
        };
        let k = kernel_cmdline(&c, false);
        // The kernel takes the last value: the configured one.
        assert!(
            k.find("scsi_mod.scan=async") > k.find("scsi_mod.scan=manual"),
            "{k}"
        );
    }

    #[test]
    fn an_emulated_guest_reads_its_clock_from_the_hpet_unless_configured() {
        let c = HypervisorConfig::default();
        let ports = PortAllocator::for_vm(&c, &[]).unwrap();
        let append = |l: &QemuLaunch<'_>| {
            let a = build_args(l).unwrap();
            let i = a.iter().position(|x| x == "-append").unwrap();
            a[i + 1].clone()
        };
        let mut l = launch(&c, &[], &ports);
        l.accelerator = Accelerator::Tcg;
        assert!(append(&l).contains(" clocksource=hpet"), "{}", append(&l));
        l.accelerator = Accelerator::Kvm;
        assert!(!append(&l).contains("clocksource"), "{}", append(&l));
        // A configured clocksource comes after ours: the kernel takes the last one.
        let mine = HypervisorConfig {
            kernel_params: "clocksource=tsc".into(),
            ..Default::default()
        };
        let k = kernel_cmdline_for(&mine, false, true);
        assert!(
            k.find("clocksource=hpet").unwrap() < k.find("clocksource=tsc").unwrap(),
            "{k}"
        );
    }

    #[test]
    fn reclaim_guest_freed_memory_adds_a_reporting_balloon() {
        let mut c = HypervisorConfig::default();
        let balloon = |c: &HypervisorConfig| {
            let ports = PortAllocator::for_vm(c, &[]).unwrap();
            build_args(&launch(c, &[], &ports))
                .unwrap()
                .iter()
                .filter(|a| a.starts_with("virtio-balloon-pci"))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert!(balloon(&c).is_empty());
        c.reclaim_guest_freed_memory = true;
        assert_eq!(
            balloon(&c),
            ["virtio-balloon-pci,id=balloon0,free-page-reporting=on"]
        );
    }

    #[test]
    fn firmware_is_qboot_only_for_a_vm_without_ports() {
        use crate::qemu::firmware::QBOOT_ROM;
        let host_has_qboot = Path::new(QBOOT_ROM).is_file();
        let c = HypervisorConfig {
            default_memory: 256,
            ..Default::default()
        };
        let a = args(&c, &[]).unwrap();
        let qboot = format!("-bios {QBOOT_ROM} -kernel ");
        assert_eq!(a.contains(&qboot), host_has_qboot, "{a}");
        let ported = HypervisorConfig {
            pcie_root_port: 1,
            ..c.clone()
        };
        let a = args(&ported, &[]).unwrap();
        assert!(!a.contains("-bios"), "root ports need SeaBIOS: {a}");
        let seabios = HypervisorConfig {
            firmware: "/usr/share/seabios/bios-256k.bin".into(),
            ..c
        };
        let a = args(&seabios, &[]).unwrap();
        assert!(
            a.contains("-bios /usr/share/seabios/bios-256k.bin -kernel "),
            "{a}"
        );
    }

    #[test]
    fn kernel_params_are_appended_after_ours() {
        let c = HypervisorConfig {
            kernel_params: " agent.log=debug ".into(),
            ..Default::default()
        };
        let k = kernel_cmdline(&c, false);
        assert!(k.starts_with("console=ttyS0"));
        assert!(k.ends_with("quiet agent.log=debug"), "{k}");
    }

    #[test]
    fn block_devices_share_one_scsi_controller() {
        let c = HypervisorConfig::default();
        let disk = |id: &str| {
            DeviceConfig::Block(BlockDevice {
                id: id.into(),
                path: format!("/img/{id}").into(),
                read_only: false,
            })
        };
        let a = args(&c, &[disk("d0"), disk("d1")]).unwrap();
        assert_eq!(a.matches("virtio-scsi-pci").count(), 1, "{a}");
        assert!(
            a.contains("scsi-hd,drive=drive-d1,id=d1,bus=scsi0.0"),
            "{a}"
        );
    }

    fn vfio(n: usize) -> Vec<DeviceConfig> {
        (0..n)
            .map(|i| {
                DeviceConfig::Vfio(VfioDevice {
                    id: format!("vfio{i}"),
                    bdf: format!("0000:0{i}:00.0"),
                })
            })
            .collect()
    }

    #[test]
    fn cold_plug_on_root_ports() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::RootPort,
            pcie_root_port: 1,
            ..Default::default()
        };
        let a = args(&c, &vfio(2)).unwrap();
        assert_eq!(
            a.matches("pcie-root-port").count(),
            3,
            "2 cold + 1 for hot-plug: {a}"
        );
        assert!(
            a.contains("vfio-pci,host=0000:00:00.0,id=vfio0,bus=rp0"),
            "{a}"
        );
        assert!(
            a.contains("vfio-pci,host=0000:01:00.0,id=vfio1,bus=rp1"),
            "{a}"
        );
    }

    #[test]
    fn cold_plug_on_switch_ports() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::SwitchPort,
            ..Default::default()
        };
        let a = args(&c, &vfio(1)).unwrap();
        assert!(a.contains("x3130-upstream,id=swup0,bus=rp-sw0"), "{a}");
        assert!(a.contains("xio3130-downstream,id=swdp0,bus=swup0"), "{a}");
        assert!(a.contains("id=vfio0,bus=swdp0"), "{a}");
    }

    #[test]
    fn cold_plug_on_bridge() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::BridgePort,
            ..Default::default()
        };
        let a = args(&c, &vfio(1)).unwrap();
        assert!(a.contains("pcie-pci-bridge,id=pci-bridge0"), "{a}");
        assert!(a.contains("bus=pci-bridge0,addr=0x1"), "{a}");
    }

    #[test]
    fn hot_plug_on_switch_or_bridge_creates_them_without_cold_plug() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::SwitchPort,
            pcie_switch_port: 2,
            ..Default::default()
        };
        let a = args(&c, &[]).unwrap();
        assert_eq!(a.matches("xio3130-downstream").count(), 2, "{a}");
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::BridgePort,
            ..Default::default()
        };
        assert!(args(&c, &[]).unwrap().contains("pcie-pci-bridge"));
    }

    #[test]
    fn no_port_cold_plugs_nothing_but_keeps_hotplug_ports() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::RootPort,
            pcie_root_port: 3,
            ..Default::default()
        };
        let a = args(&c, &vfio(1)).unwrap();
        assert_eq!(a.matches("pcie-root-port").count(), 3, "{a}");
        assert!(!a.contains("vfio-pci"), "hot-plugged after boot: {a}");
    }

    /// A NIC whose tap queues are `fds` (open files of this process).
    fn nic(fds: &[std::sync::Arc<std::os::fd::OwnedFd>]) -> DeviceConfig {
        DeviceConfig::Net(NetDevice {
            id: "net0".into(),
            tap_name: "tap0_kata".into(),
            mac: "02:42:ac:11:00:02".into(),
            netns: Some("/run/netns/pod".into()),
            queues: fds.len().max(1) as u32,
            tap_fds: fds.to_vec(),
        })
    }

    fn open_fds(n: usize) -> Vec<std::sync::Arc<std::os::fd::OwnedFd>> {
        (0..n)
            .map(|_| std::sync::Arc::new(std::fs::File::open("/dev/null").unwrap().into()))
            .collect()
    }

    fn raw(fds: &[std::sync::Arc<std::os::fd::OwnedFd>]) -> Vec<String> {
        use std::os::fd::AsRawFd;
        fds.iter().map(|f| f.as_raw_fd().to_string()).collect()
    }

    #[test]
    fn a_nic_is_given_its_open_tap_queue_by_number_never_a_tap_name() {
        let fds = open_fds(1);
        let a = args(&HypervisorConfig::default(), &[nic(&fds)]).unwrap();
        assert!(
            a.contains(&format!(
                "-netdev tap,id=netdev-net0,fds={},vhost=off ",
                raw(&fds)[0]
            )),
            "{a}"
        );
        // `ifname=` would make QEMU open (or create) a tap in its own, the host's, namespace.
        assert!(!a.contains("ifname="), "{a}");
        assert!(
            !a.contains("script="),
            "QEMU refuses script= with fds=: {a}"
        );
        assert!(
            a.contains(
                "-device virtio-net-pci,netdev=netdev-net0,id=net0,mac=02:42:ac:11:00:02,romfile="
            ),
            "{a}"
        );
        assert!(!a.contains("mq=on"), "one queue pair: {a}");
    }

    #[test]
    fn several_queues_make_a_multi_queue_nic_and_vhost_follows_the_host() {
        let fds = open_fds(2);
        let c = HypervisorConfig::default();
        let ports = PortAllocator::for_vm(&c, &[]).unwrap();
        let devices = [nic(&fds)];
        let mut l = launch(&c, &devices, &ports);
        l.vhost_net = true;
        let a = build_args(&l).unwrap().join(" ");
        assert!(
            a.contains(&format!(
                "-netdev tap,id=netdev-net0,fds={},vhost=on ",
                raw(&fds).join(":")
            )),
            "{a}"
        );
        // 2 queue pairs: 4 queue vectors, one for config changes, one for the control queue.
        assert!(
            a.contains("mac=02:42:ac:11:00:02,romfile=,mq=on,vectors=6"),
            "{a}"
        );
    }

    #[test]
    fn vhost_net_needs_the_device_and_no_disable_vhost_net() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("vhost-net");
        let mut c = HypervisorConfig::default();
        assert!(!vhost_net_usable_at(&c, &device), "no device");
        std::fs::write(&device, "").unwrap();
        assert!(vhost_net_usable_at(&c, &device));
        c.disable_vhost_net = true;
        assert!(!vhost_net_usable_at(&c, &device), "disable_vhost_net");
    }

    #[test]
    fn a_nic_without_its_open_queues_is_refused_naming_it() {
        let e = args(&HypervisorConfig::default(), &[nic(&[])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("net0") && e.contains("tap0_kata"), "{e}");
        let fds = open_fds(2);
        let DeviceConfig::Net(mut n) = nic(&fds) else {
            unreachable!()
        };
        n.queues = 4;
        let e = args(&HypervisorConfig::default(), &[DeviceConfig::Net(n)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("net0") && e.contains('4') && e.contains('2'),
            "{e}"
        );
    }

    #[test]
    fn virtio_fs_is_a_vhost_user_fs_device_on_the_daemon_socket_with_shared_memory() {
        let c = HypervisorConfig {
            virtio_fs_queue_size: 512,
            ..HypervisorConfig::default()
        };
        let a = args(&c, &[share(SharedFs::VirtioFs)]).unwrap();
        assert!(
            a.contains("-chardev socket,id=char-kataShared,path=/run/sb/virtiofsd.sock"),
            "{a}"
        );
        assert!(
            a.contains(
                "vhost-user-fs-pci,chardev=char-kataShared,tag=kataShared,queue-size=512,id=fs-kataShared"
            ),
            "{a}"
        );
        assert!(
            a.contains("memory-backend-memfd,id=mem0") && a.contains(",share=on"),
            "{a}"
        );
        assert!(!a.contains("virtio-9p"), "{a}");
    }

    #[test]
    fn virtio_fs_without_a_daemon_socket_or_with_a_dax_window_is_refused_naming_the_key() {
        let DeviceConfig::ShareFs(mut no_socket) = share(SharedFs::VirtioFs) else {
            unreachable!()
        };
        no_socket.vhost_user_socket = None;
        let e = args(
            &HypervisorConfig::default(),
            &[DeviceConfig::ShareFs(no_socket)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("shared_fs") && e.contains("virtiofsd socket"),
            "{e}"
        );
        let dax = HypervisorConfig {
            virtio_fs_cache_size: 1024,
            ..HypervisorConfig::default()
        };
        let e = args(&dax, &[share(SharedFs::VirtioFs)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("virtio_fs_cache_size") && e.contains("DAX"),
            "{e}"
        );
    }

    #[test]
    fn virtio_mem_adds_its_region_and_device_and_needs_room() {
        let c = HypervisorConfig {
            default_memory: 256,
            default_maxmemory: 1024,
            memory_slots: 0,
            enable_virtio_mem: true,
            ..Default::default()
        };
        let a = args(&c, &[]).unwrap();
        assert!(
            a.contains("-m 256M,slots=0,maxmem=1024M "),
            "maxmem without slots: {a}"
        );
        assert!(
            a.contains(
                "-object memory-backend-memfd,id=vmem0-mem,size=768M,share=on,reserve=off \
                 -device virtio-mem-pci,id=vmem0,memdev=vmem0-mem,requested-size=0"
            ),
            "{a}"
        );
        let off = HypervisorConfig {
            enable_virtio_mem: false,
            ..c.clone()
        };
        assert!(!args(&off, &[]).unwrap().contains("virtio-mem"));
        let no_room = HypervisorConfig {
            default_maxmemory: 300,
            ..c
        };
        let e = args(&no_room, &[]).unwrap_err().to_string();
        assert!(
            e.contains("default_maxmemory") && e.contains("enable_virtio_mem"),
            "{e}"
        );
    }
}
