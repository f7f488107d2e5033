//! Tier 2: our QMP client against a real QEMU (no guest needed: the VM is created paused).

use std::time::Duration;

use kata_hypervisor::qemu::qmp::QmpClient;

struct Paused {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_paused_qemu() -> Paused {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args([
            "-m",
            "64M",
            "-device",
            "pcie-root-port,id=rp0,bus=pcie.0,chassis=1",
        ])
        .args(["-device", "virtio-rng-pci,id=rng-cold,bus=rp0"])
        .args(["-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=2"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 must be installed (apt-get install qemu-system-x86)");
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Paused { child, dir }
}

#[tokio::test]
async fn qmp_negotiates_queries_hotplugs_and_quits() {
    let mut vm = start_paused_qemu();
    let qmp = QmpClient::connect(&vm.dir.path().join("qmp.sock"), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(qmp.qemu_version().starts_with(char::is_numeric));
    assert_eq!(qmp.query_status().await.unwrap(), "prelaunch");

    qmp.cont().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), "running");

    // query-pci walks bridges: the device behind the root port is listed with its id once the
    // firmware has numbered the port's bus (polled, bounded).
    let mut found = None;
    for _ in 0..100 {
        let pci = qmp.query_pci().await.unwrap();
        found = pci.into_iter().find(|d| d.qdev_id == "rng-cold");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rng = found.expect("device behind the root port listed by query-pci");
    assert_eq!(rng.vendor_id, 0x1af4, "virtio vendor");
    assert!(rng.bus > 0, "behind the root port, not on bus 0: {rng:?}");

    // Hot-plug onto the free root port; a second device with the same id is refused.
    let mut props = serde_json::Map::new();
    props.insert("bus".into(), "rp1".into());
    qmp.device_add("virtio-rng-pci", "rng-hot", props.clone())
        .await
        .unwrap();
    let dup = qmp
        .device_add("virtio-rng-pci", "rng-hot", props)
        .await
        .unwrap_err();
    assert!(dup.to_string().contains("rng-hot"), "{dup}");

    // Errors carry QEMU's class and description.
    let err = qmp
        .device_add("no-such-driver", "x", serde_json::Map::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("device_add") && err.contains("no-such-driver"),
        "{err}"
    );

    // Concurrent commands are matched to their callers.
    let (a, b) = tokio::join!(qmp.query_status(), qmp.query_pci());
    assert_eq!(a.unwrap(), "running");
    assert!(!b.unwrap().is_empty());

    qmp.stop().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), "paused");

    qmp.quit().await.unwrap();
    let status = vm.child.wait().unwrap();
    assert!(status.success(), "QEMU exits cleanly on quit: {status}");
}
