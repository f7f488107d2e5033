//! Tier 2: the VFIO hot-plug's `device_add` against a real QEMU (this host has no device to
//! pass through: QEMU accepts the properties and fails only on the missing host function).
//! The whole path with a real device runs in the nested lab (`lab/runner/src/vfio.rs`).
#![cfg(feature = "qemu")]

use std::time::Duration;

use kata_hypervisor::qemu::hotplug;
use kata_hypervisor::qemu::qmp::QmpClient;
use kata_hypervisor::{HypervisorConfig, PciePort, VfioDevice};

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn vfio_pci_props_name_the_host_function_and_a_root_port() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("qmp.sock");
    let _qemu = KillOnDrop(
        std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-nodefaults"])
            .args(["-display", "none", "-S", "-m", "64M"])
            .args(["-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let qmp = QmpClient::connect(&sock, Duration::from_secs(30)).await;
    let qmp = match qmp {
        Ok(q) => q,
        Err(_) => {
            // QEMU may still be creating its socket.
            tokio::time::sleep(Duration::from_secs(2)).await;
            QmpClient::connect(&sock, Duration::from_secs(30))
                .await
                .unwrap()
        }
    };
    // With `hot_plug_vfio = "no-port"` (Kata's default) the device goes on a root port.
    assert_eq!(
        hotplug::vfio_hotplug_port(&HypervisorConfig::default()),
        PciePort::RootPort
    );
    let dev = VfioDevice {
        id: "vfio-9-0".into(),
        bdf: "0000:7f:1f.7".into(),
    };
    let e = qmp
        .device_add("vfio-pci", &dev.id, hotplug::vfio_props(&dev, "rp0", None))
        .await
        .unwrap_err()
        .to_string();
    // QEMU took `host` and `bus` and looked the function up: the error is about the host
    // device ("vfio /sys/bus/pci/devices/0000:7f:1f.7: no such host device"), not a property
    // it does not know.
    assert!(
        e.contains("/sys/bus/pci/devices/0000:7f:1f.7") && e.contains("no such host device"),
        "{e}"
    );
    let pci = qmp.execute("query-pci", None).await.unwrap();
    assert_eq!(hotplug::pci_path_of(&pci, "vfio-9-0"), None, "nothing left");
}
