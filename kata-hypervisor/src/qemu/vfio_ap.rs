//! s390x VFIO-AP devices on QEMU: a mediated crypto matrix device
//! (`/sys/devices/vfio_ap/matrix/<uuid>`) has no PCI port, so `cold_plug_vfio` only says when
//! it is plugged:
//!
//! - any port kind (upstream's Secure Execution file says `root-port`): cold-plugged, on the
//!   command line as `-device vfio-ap,id=<id>,sysfsdev=<path>` ([`args`]);
//! - `no-port`: hot-plugged after boot with QMP `device_add` (`attach`) and removed with
//!   `device_del` and the wait for `DEVICE_DELETED` (`detach`).
//!
//! Only `s390-ccw-virtio` machines have an AP bus: elsewhere the device is refused naming
//! `machine_type`. No host here has one; command lines and QMP sequences are unit-tested.

use serde_json::{json, Map, Value};

use super::hotplug::UNPLUG_WAIT;
use super::qmp::QmpClient;
use crate::config::{is_s390_machine, HypervisorConfig};
use crate::device::{DeviceConfig, GuestAddress, PciePort, VfioApDevice};
use crate::error::{Error, Result};

/// QEMU's device driver for a VFIO-AP matrix device.
pub const DRIVER: &str = "vfio-ap";

/// Refuses `dev` on a machine without an AP bus, naming `machine_type`.
pub fn check_machine(c: &HypervisorConfig, dev: &VfioApDevice) -> Result<()> {
    if is_s390_machine(&c.machine_type) {
        return Ok(());
    }
    Err(Error::InvalidDevice {
        kind: "VFIO-AP",
        id: format!("{} ({})", dev.id, dev.sysfsdev.display()),
        reason: format!(
            "machine_type \"{}\" has no AP bus: VFIO-AP devices need s390-ccw-virtio",
            c.machine_type
        ),
    })
}

/// Whether VFIO-AP devices go on the command line (`cold_plug_vfio` names a port kind) rather
/// than being hot-plugged after boot (`no-port`).
pub fn cold_plugged(c: &HypervisorConfig) -> bool {
    c.cold_plug_vfio != PciePort::NoPort
}

/// The `device_add` properties (and, joined, the `-device` value) of `dev`.
pub fn props(dev: &VfioApDevice) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("driver".into(), json!(DRIVER));
    p.insert("id".into(), json!(dev.id));
    p.insert("sysfsdev".into(), json!(dev.sysfsdev.to_string_lossy()));
    p
}

/// `-device vfio-ap,...` arguments for the VFIO-AP devices among `devices` when they are
/// cold-plugged ([`cold_plugged`]); none with `no-port` (hot-plugged after boot). A device on
/// a machine without an AP bus is refused.
pub fn args(c: &HypervisorConfig, devices: &[DeviceConfig]) -> Result<Vec<String>> {
    let mut a = Vec::new();
    for d in devices {
        let DeviceConfig::VfioAp(dev) = d else {
            continue;
        };
        check_machine(c, dev)?;
        if cold_plugged(c) {
            a.push("-device".into());
            a.push(format!(
                "{DRIVER},id={},sysfsdev={}",
                dev.id,
                dev.sysfsdev.display()
            ));
        }
    }
    Ok(a)
}

/// Hot-plugs `dev`: `device_add` with driver `vfio-ap`. The guest finds its queues on its AP
/// bus: there is no address to report ([`GuestAddress::Unaddressed`]).
pub(super) async fn attach(
    qmp: &QmpClient,
    c: &HypervisorConfig,
    dev: &VfioApDevice,
) -> Result<GuestAddress> {
    check_machine(c, dev)?;
    qmp.execute_within(
        "device_add",
        Some(Value::Object(props(dev))),
        super::hotplug::VFIO_ADD_WAIT,
    )
    .await?;
    tracing::info!(device = %dev.id, sysfsdev = %dev.sysfsdev.display(), "VFIO-AP device attached");
    Ok(GuestAddress::Unaddressed)
}

/// Hot-unplugs VFIO-AP device `id`: `device_del`, then the wait for `DEVICE_DELETED` (at most
/// [`UNPLUG_WAIT`]).
pub(super) async fn detach(qmp: &QmpClient, id: &str) -> Result<()> {
    qmp.device_del(id, UNPLUG_WAIT).await?;
    tracing::info!(device = %id, "VFIO-AP device detached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::time::Duration;

    fn s390(cold: PciePort) -> HypervisorConfig {
        HypervisorConfig {
            machine_type: "s390-ccw-virtio".into(),
            cold_plug_vfio: cold,
            ..Default::default()
        }
    }

    fn ap() -> VfioApDevice {
        VfioApDevice {
            id: "vfio-ap-0".into(),
            sysfsdev: "/sys/devices/vfio_ap/matrix/4b0a6a4c-1b8e-4d5d-b4a4-52d8b3c5e9a1".into(),
        }
    }

    #[test]
    fn cold_plug_puts_vfio_ap_on_the_command_line_and_no_port_leaves_it_for_qmp() {
        let devices = [DeviceConfig::VfioAp(ap())];
        assert_eq!(
            args(&s390(PciePort::RootPort), &devices).unwrap(),
            [
                "-device",
                "vfio-ap,id=vfio-ap-0,sysfsdev=/sys/devices/vfio_ap/matrix/4b0a6a4c-1b8e-4d5d-b4a4-52d8b3c5e9a1"
            ]
        );
        assert!(args(&s390(PciePort::NoPort), &devices).unwrap().is_empty());
        let q35 = HypervisorConfig {
            machine_type: "q35".into(),
            cold_plug_vfio: PciePort::RootPort,
            ..Default::default()
        };
        let e = args(&q35, &devices).unwrap_err().to_string();
        assert!(
            e.contains("vfio-ap-0") && e.contains("machine_type \"q35\"") && e.contains("AP bus"),
            "{e}"
        );
    }

    /// QEMU's whole command line carries the cold-plugged device (the launch's hook).
    #[test]
    fn the_launch_command_line_carries_a_cold_plugged_ap_device() {
        use super::super::cmdline::{build_args, QemuLaunch, VsockDevice};
        use crate::device::PortAllocator;
        use crate::kvm::Accelerator;
        use std::path::Path;
        let c = s390(PciePort::RootPort);
        let devices = [DeviceConfig::VfioAp(ap())];
        let ports = PortAllocator::for_vm(&c, &devices).unwrap();
        let l = QemuLaunch {
            config: &c,
            name: "sb1",
            accelerator: Accelerator::Tcg,
            kernel: Path::new("/k/vmlinuz"),
            initrd: Some(Path::new("/k/initrd.img")),
            image: None,
            qmp_socket: Path::new("/run/vm/qmp.sock"),
            console_socket: Path::new("/run/vm/console.sock"),
            vsock: VsockDevice::VhostUser {
                socket: "/run/vm/vhost-vsock.sock".into(),
            },
            devices: &devices,
            ports: &ports,
            host_memory_mib: 4096,
            vhost_net: false,
            handed: None,
        };
        let a = build_args(&l).unwrap().join(" ");
        assert!(
            a.contains("-device vfio-ap,id=vfio-ap-0,sysfsdev=/sys/devices/vfio_ap/matrix/"),
            "{a}"
        );
        assert!(!a.contains("pcie-root-port"), "no PCI port for AP: {a}");
    }

    /// A fake QEMU monitor: greets, answers every command, and after `device_del` sends
    /// `DEVICE_DELETED` for its id. Returns the commands it got.
    fn fake_qmp(sock: &std::path::Path) -> std::thread::JoinHandle<Vec<Value>> {
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 8, \"minor\": 2, \"micro\": 0}}, \"capabilities\": []}}\n")
                .unwrap();
            let mut got = Vec::new();
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                let cmd: Value = serde_json::from_str(&line).unwrap();
                let mut reply = json!({"return": {}});
                if let Some(id) = cmd.get("id") {
                    reply["id"] = id.clone();
                }
                w.write_all(format!("{reply}\n").as_bytes()).unwrap();
                if cmd["execute"] == "device_del" {
                    let ev = json!({"event": "DEVICE_DELETED", "data": {"device": cmd["arguments"]["id"]},
                        "timestamp": {"seconds": 0, "microseconds": 0}});
                    w.write_all(format!("{ev}\n").as_bytes()).unwrap();
                }
                let last = cmd["execute"] == "device_del";
                got.push(cmd);
                if last {
                    break;
                }
            }
            got
        })
    }

    #[tokio::test]
    async fn no_port_hot_plugs_with_device_add_and_removes_with_device_del() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_qmp(&sock);
        let qmp = QmpClient::connect(&sock, Duration::from_secs(5))
            .await
            .unwrap();
        let c = s390(PciePort::NoPort);
        assert_eq!(
            attach(&qmp, &c, &ap()).await.unwrap(),
            GuestAddress::Unaddressed
        );
        detach(&qmp, "vfio-ap-0").await.unwrap();
        let got: Vec<Value> = server
            .join()
            .unwrap()
            .into_iter()
            .filter(|c| c["execute"] != "qmp_capabilities")
            .map(|mut c| {
                c.as_object_mut().unwrap().remove("id");
                c
            })
            .collect();
        assert_eq!(
            got,
            [
                json!({"execute": "device_add", "arguments": {"driver": "vfio-ap", "id": "vfio-ap-0",
                    "sysfsdev": "/sys/devices/vfio_ap/matrix/4b0a6a4c-1b8e-4d5d-b4a4-52d8b3c5e9a1"}}),
                json!({"execute": "device_del", "arguments": {"id": "vfio-ap-0"}}),
            ]
        );
        // Not s390x: refused before QMP hears of it.
        let q35 = HypervisorConfig::default();
        let e = attach(&qmp, &q35, &ap()).await.unwrap_err().to_string();
        assert!(e.contains("AP bus"), "{e}");
    }
}
