//! The QEMU command line, built as a pure function of the configuration so it is unit-tested
//! without starting anything.

use std::path::{Path, PathBuf};

use crate::config::HypervisorConfig;
use crate::device::{DeviceConfig, PciePort, ShareFsKind};
use crate::error::{Error, Result};
use crate::kvm::Accelerator;

/// The kernel parameters kata-rs always passes (before the configured `kernel_params`).
///
/// `panic=-1` reboots at once on a panic and `-no-reboot` turns that reboot into QEMU exiting,
/// so a crashed guest ends the VM instead of hanging it.
pub const BASE_KERNEL_PARAMS: &str = "console=ttyS0 panic=-1 reboot=t tsc=reliable \
no_timer_check rcupdate.rcu_expedited=1 i8042.noaux=1 i8042.nopnp=1 cryptomgr.notests \
net.ifnames=0";

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
    /// Resolved root image, if booting from a disk image.
    pub image: Option<&'a Path>,
    /// The QMP socket.
    pub qmp_socket: &'a Path,
    /// The serial console log file.
    pub console_log: &'a Path,
    /// The agent's vsock device.
    pub vsock: VsockDevice,
    /// Devices to cold-plug.
    pub devices: &'a [DeviceConfig],
    /// Host memory in MiB (for `maxmem`).
    pub host_memory_mib: u64,
}

/// The full kernel command line: kata-rs' base, then the configured params.
pub fn kernel_cmdline(config: &HypervisorConfig, has_image: bool) -> String {
    let mut s = String::from(BASE_KERNEL_PARAMS);
    if !config.enable_debug {
        s.push_str(" quiet");
    }
    if has_image {
        s.push_str(" root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4");
    }
    if !config.kernel_params.trim().is_empty() {
        s.push(' ');
        s.push_str(config.kernel_params.trim());
    }
    s
}

/// Builds the arguments (without the program name).
pub fn build_args(l: &QemuLaunch<'_>) -> Result<Vec<String>> {
    let c = l.config;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    let machine = if c.machine_accelerators.is_empty() {
        c.machine_type.clone()
    } else {
        format!("{},{}", c.machine_type, c.machine_accelerators)
    };
    push(&["-name", &format!("sandbox-{}", l.name)]);
    push(&["-machine", &machine]);
    match l.accelerator {
        Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accelerator::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
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
    let maxmem = (l.host_memory_mib + c.memory_offset).max(u64::from(mem) + 1);
    if c.memory_slots > 0 {
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
    push(&["-serial", &format!("file:{}", l.console_log.display())]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", l.qmp_socket.display()),
    ]);
    if !c.firmware.is_empty() {
        push(&["-bios", &c.firmware]);
    }
    push(&["-kernel", &l.kernel.display().to_string()]);
    if let Some(initrd) = l.initrd {
        push(&["-initrd", &initrd.display().to_string()]);
    }
    if let Some(image) = l.image {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=image0,format=raw,readonly=on",
                image.display()
            ),
            "-device",
            "virtio-blk-pci,drive=image0,id=image0-dev",
        ]);
    }
    push(&["-append", &kernel_cmdline(c, l.image.is_some())]);
    push(&[
        "-object",
        &format!("rng-random,id=rng0,filename={}", c.entropy_source),
        "-device",
        "virtio-rng-pci,rng=rng0",
    ]);
    match &l.vsock {
        VsockDevice::VhostVsock { cid } => push(&[
            "-device",
            &format!("vhost-vsock-pci,id=vsock0,guest-cid={cid}"),
        ]),
        VsockDevice::VhostUser { socket } => push(&[
            "-chardev",
            &format!("socket,id=char-vsock0,path={}", socket.display()),
            "-device",
            "vhost-user-vsock-pci,chardev=char-vsock0,id=vsock0",
        ]),
    }
    a.extend(topology_args(c, l.devices)?);
    for d in l.devices {
        a.extend(device_args(c, d)?);
    }
    a.extend(vfio_args(c, l.devices));
    Ok(a)
}

/// The PCIe ports of a VM: the cold-plugged VFIO devices take the first ports of their kind,
/// the ports configured for hot-plug (`pcie_root_port`, `pcie_switch_port`) come after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPlan {
    /// Root ports `rp0..`.
    pub root_ports: u32,
    /// Switch downstream ports `swdp0..` (behind one upstream port on root port `rp-sw0`).
    pub switch_ports: u32,
    /// Whether a PCIe-to-PCI bridge `pci-bridge0` exists.
    pub bridge: bool,
    /// How many VFIO devices are cold-plugged (on ports of `cold_plug_vfio`'s kind).
    pub cold_vfio: u32,
}

/// Slots a PCI bridge offers (slot 0 is not used for devices).
const BRIDGE_SLOTS: u32 = 31;

impl PortPlan {
    /// The plan for this configuration and these cold-plugged devices.
    pub fn new(c: &HypervisorConfig, devices: &[DeviceConfig]) -> Self {
        let vfio = devices
            .iter()
            .filter(|d| matches!(d, DeviceConfig::Vfio(_)))
            .count() as u32;
        let cold_vfio = if c.cold_plug_vfio == PciePort::NoPort {
            0
        } else {
            vfio
        };
        let cold_on = |p: PciePort| if c.cold_plug_vfio == p { cold_vfio } else { 0 };
        let uses = |p: PciePort| c.cold_plug_vfio == p || c.hot_plug_vfio == p;
        PortPlan {
            root_ports: cold_on(PciePort::RootPort) + c.pcie_root_port,
            switch_ports: if uses(PciePort::SwitchPort) {
                cold_on(PciePort::SwitchPort) + c.pcie_switch_port
            } else {
                0
            },
            bridge: uses(PciePort::BridgePort),
            cold_vfio,
        }
    }

    /// Bus (and address, on a bridge) of the `i`-th VFIO device plugged on `port`, counting
    /// cold-plugged devices first: `i` = `cold_vfio + n` for the `n`-th hot-plug.
    pub fn bus(&self, port: PciePort, i: u32) -> Result<Option<(String, Option<String>)>> {
        let full = |key: &'static str, have: u32| Error::InvalidConfig {
            key,
            value: have.to_string(),
            reason: format!("no free port for VFIO device number {}; raise {key}", i + 1),
        };
        Ok(match port {
            PciePort::NoPort => None,
            PciePort::RootPort if i < self.root_ports => Some((format!("rp{i}"), None)),
            PciePort::RootPort => return Err(full("pcie_root_port", self.root_ports)),
            PciePort::SwitchPort if i < self.switch_ports => Some((format!("swdp{i}"), None)),
            PciePort::SwitchPort => return Err(full("pcie_switch_port", self.switch_ports)),
            PciePort::BridgePort if i < BRIDGE_SLOTS => {
                Some(("pci-bridge0".into(), Some(format!("{:#x}", i + 1))))
            }
            PciePort::BridgePort => return Err(full("cold_plug_vfio", BRIDGE_SLOTS)),
        })
    }
}

/// The `-device` arguments that create the ports of [`PortPlan`].
pub fn topology_args(c: &HypervisorConfig, devices: &[DeviceConfig]) -> Result<Vec<String>> {
    let plan = PortPlan::new(c, devices);
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
    Ok(a)
}

fn device_args(c: &HypervisorConfig, d: &DeviceConfig) -> Result<Vec<String>> {
    let s = |v: &[String]| v.to_vec();
    Ok(match d {
        DeviceConfig::ShareFs(fs) => match fs.kind {
            ShareFsKind::Virtio9p => s(&[
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
            ShareFsKind::VirtioFs => {
                return Err(Error::Unsupported {
                    backend: "qemu",
                    what: "virtio-fs yet (set shared_fs = \"virtio-9p\")".into(),
                })
            }
        },
        DeviceConfig::Block(b) => {
            let ro = if b.read_only { ",readonly=on" } else { "" };
            let drive = format!(
                "file={},if=none,id=drive-{id},format=raw,cache=none,aio=threads{ro}",
                b.path.display(),
                id = b.id
            );
            let dev = match c.block_device_driver.as_str() {
                "virtio-scsi" => format!("scsi-hd,drive=drive-{id},id={id},bus=scsi0.0", id = b.id),
                _ => format!("virtio-blk-pci,drive=drive-{id},id={id}", id = b.id),
            };
            let mut v = vec!["-drive".to_string(), drive];
            if c.block_device_driver == "virtio-scsi" {
                v.extend([
                    "-device".to_string(),
                    "virtio-scsi-pci,id=scsi0".to_string(),
                ]);
            }
            v.extend(["-device".to_string(), dev]);
            v
        }
        DeviceConfig::Net(n) => {
            let vhost = if c.disable_vhost_net { "off" } else { "on" };
            s(&[
                "-netdev".into(),
                format!(
                    "tap,id=netdev-{id},ifname={},script=no,downscript=no,vhost={vhost}",
                    n.tap_name,
                    id = n.id
                ),
                "-device".into(),
                format!(
                    "virtio-net-pci,netdev=netdev-{id},id={id},mac={}",
                    n.mac,
                    id = n.id
                ),
            ])
        }
        DeviceConfig::Vfio(_) => Vec::new(), // placed by `vfio_args`, which knows the index
    })
}

/// `-device vfio-pci` arguments for the cold-plugged VFIO devices, on their ports.
pub fn vfio_args(c: &HypervisorConfig, devices: &[DeviceConfig]) -> Vec<String> {
    let mut a = Vec::new();
    let vfio = devices.iter().filter_map(|d| match d {
        DeviceConfig::Vfio(v) => Some(v),
        _ => None,
    });
    let plan = PortPlan::new(c, devices);
    for (i, v) in vfio.enumerate() {
        // Cold-plugged devices fit by construction of the plan.
        if let Ok(Some((bus, addr))) = plan.bus(c.cold_plug_vfio, i as u32) {
            let addr = addr.map(|a| format!(",addr={a}")).unwrap_or_default();
            a.push("-device".into());
            a.push(format!(
                "vfio-pci,host={},id={},bus={bus}{addr}",
                v.bdf, v.id
            ));
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{ShareFsDevice, VfioDevice};

    fn launch<'a>(c: &'a HypervisorConfig, devices: &'a [DeviceConfig]) -> QemuLaunch<'a> {
        QemuLaunch {
            config: c,
            name: "sb1",
            accelerator: Accelerator::Tcg,
            kernel: Path::new("/k/bzImage"),
            initrd: Some(Path::new("/k/initrd.img")),
            image: None,
            qmp_socket: Path::new("/run/vm/qmp.sock"),
            console_log: Path::new("/run/vm/console.log"),
            vsock: VsockDevice::VhostUser {
                socket: "/run/vm/vhost-vsock.sock".into(),
            },
            devices,
            host_memory_mib: 4096,
        }
    }

    fn joined(a: &[String]) -> String {
        a.join(" ")
    }

    #[test]
    fn tcg_launch_has_what_a_hybrid_vsock_guest_needs() {
        let c = HypervisorConfig {
            default_memory: 256,
            default_maxvcpus: 2,
            ..Default::default()
        };
        let devices = [DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: "kataShared".into(),
            host_path: "/run/sb/shared".into(),
            kind: ShareFsKind::Virtio9p,
        })];
        let a = joined(&build_args(&launch(&c, &devices)).unwrap());
        assert!(a.contains("-machine q35 -accel tcg -cpu max"), "{a}");
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
        assert!(a.contains("-serial file:/run/vm/console.log"), "{a}");
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
    fn kvm_uses_host_cpu_and_vhost_vsock() {
        let c = HypervisorConfig::default();
        let mut l = launch(&c, &[]);
        l.accelerator = Accelerator::Kvm;
        l.vsock = VsockDevice::VhostVsock { cid: 42 };
        let a = joined(&build_args(&l).unwrap());
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(a.contains("vhost-vsock-pci,id=vsock0,guest-cid=42"), "{a}");
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
        let d = vfio(2);
        let topo = joined(&topology_args(&c, &d).unwrap());
        assert_eq!(
            topo.matches("pcie-root-port").count(),
            3,
            "2 cold + 1 for hot-plug: {topo}"
        );
        let v = joined(&vfio_args(&c, &d));
        assert!(
            v.contains("vfio-pci,host=0000:00:00.0,id=vfio0,bus=rp0"),
            "{v}"
        );
        assert!(
            v.contains("vfio-pci,host=0000:01:00.0,id=vfio1,bus=rp1"),
            "{v}"
        );
    }

    #[test]
    fn cold_plug_on_switch_ports() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::SwitchPort,
            ..Default::default()
        };
        let d = vfio(1);
        let topo = joined(&topology_args(&c, &d).unwrap());
        assert!(
            topo.contains("x3130-upstream,id=swup0,bus=rp-sw0"),
            "{topo}"
        );
        assert!(
            topo.contains("xio3130-downstream,id=swdp0,bus=swup0"),
            "{topo}"
        );
        assert!(joined(&vfio_args(&c, &d)).contains("bus=swdp0"));
    }

    #[test]
    fn cold_plug_on_bridge() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::BridgePort,
            ..Default::default()
        };
        let d = vfio(1);
        assert!(joined(&topology_args(&c, &d).unwrap()).contains("pcie-pci-bridge,id=pci-bridge0"));
        assert!(joined(&vfio_args(&c, &d)).contains("bus=pci-bridge0,addr=0x1"));
    }

    #[test]
    fn hotplug_ports_come_after_cold_plugged_ones() {
        let c = HypervisorConfig {
            cold_plug_vfio: PciePort::RootPort,
            pcie_root_port: 2,
            ..Default::default()
        };
        let d = vfio(2);
        let plan = PortPlan::new(&c, &d);
        assert_eq!(plan.root_ports, 4, "2 cold + 2 for hot-plug");
        // The first hot-plug (index cold_vfio + 0) lands on rp2, not on a cold device's port.
        let (bus, _) = plan
            .bus(PciePort::RootPort, plan.cold_vfio)
            .unwrap()
            .unwrap();
        assert_eq!(bus, "rp2");
        let e = plan.bus(PciePort::RootPort, 4).unwrap_err().to_string();
        assert!(e.contains("pcie_root_port"), "{e}");
    }

    #[test]
    fn hot_plug_on_switch_or_bridge_creates_them_without_cold_plug() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::SwitchPort,
            pcie_switch_port: 2,
            ..Default::default()
        };
        let topo = joined(&topology_args(&c, &[]).unwrap());
        assert_eq!(topo.matches("xio3130-downstream").count(), 2, "{topo}");
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::BridgePort,
            ..Default::default()
        };
        assert!(joined(&topology_args(&c, &[]).unwrap()).contains("pcie-pci-bridge"));
    }

    #[test]
    fn no_port_cold_plugs_nothing_but_keeps_hotplug_ports() {
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::RootPort,
            pcie_root_port: 3,
            ..Default::default()
        };
        let d = vfio(1);
        assert_eq!(
            joined(&topology_args(&c, &d).unwrap())
                .matches("pcie-root-port")
                .count(),
            3
        );
        assert!(vfio_args(&c, &d).is_empty());
    }

    #[test]
    fn virtio_fs_is_refused_clearly_for_now() {
        let c = HypervisorConfig::default();
        let d = [DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: "kataShared".into(),
            host_path: "/x".into(),
            kind: ShareFsKind::VirtioFs,
        })];
        let e = build_args(&launch(&c, &d)).unwrap_err().to_string();
        assert!(e.contains("virtio-9p"), "{e}");
    }
}
