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

/// A paused QEMU whose command line names `<tmp>/vm` (as the backend's VMs do) is adopted from
/// a saved state, handed over again with `detach`, re-adopted, and stopped by pid.
#[cfg(feature = "qemu")]
#[tokio::test]
async fn restore_adopts_a_running_qemu_and_stop_kills_it() {
    use kata_hypervisor::qemu::Qemu;
    use kata_hypervisor::{Hypervisor, HypervisorConfig, HypervisorState, VmState, VsockAddress};

    let tmp = tempfile::tempdir().unwrap();
    let vm_dir = tmp.path().join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    let sock = vm_dir.join("qmp.sock");
    // Killed on drop, so a failed assertion leaves no QEMU behind; no inherited stdout, so
    // a QEMU that outlived the test could not hold the test runner's pipe either.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-nodefaults"])
            .args(["-display", "none", "-S", "-m", "64M"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Generous: CI runs this on 2 busy cores.
    for _ in 0..3000 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let config = HypervisorConfig {
        shared_fs: "virtio-9p".into(),
        ..Default::default()
    };
    let saved = HypervisorState {
        backend: "qemu".into(),
        vm_dir: vm_dir.clone(),
        pids: vec![child.0.id()],
        api_socket: Some(sock.clone()),
        agent_address: Some(VsockAddress::HybridVsock {
            uds: vm_dir.join("vsock.uds"),
            port: 1024,
        }),
        accelerator: None,
    };

    // A pid now held by another program is refused, and that program is left alone.
    let mut other = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    // Wait until the child has exec'd `sleep` (its command line is the parent's, or empty,
    // until then).
    for _ in 0..500 {
        let c = std::fs::read(format!("/proc/{}/cmdline", other.id())).unwrap_or_default();
        if c.starts_with(b"sleep") {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let recycled = HypervisorState {
        pids: vec![other.id()],
        ..saved.clone()
    };
    let e = Qemu::restore("r", config.clone(), &recycled)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not name"), "{e}");
    assert!(other.try_wait().unwrap().is_none());
    other.kill().unwrap();
    other.wait().unwrap();
    let wrong = HypervisorState {
        backend: "firecracker".into(),
        ..saved.clone()
    };
    assert!(Qemu::restore("r", config.clone(), &wrong).await.is_err());

    let vm = Qemu::restore("r", config.clone(), &saved).await.unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert_eq!(vm.pids(), vec![child.0.id()]);
    assert!(vm.agent_address().is_ok());
    assert_eq!(vm.save_state().pids, saved.pids);

    // Handed over again: QEMU runs on, QMP is free for the next owner.
    vm.detach().await.unwrap();
    vm.stop().await.unwrap();
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "detach leaves QEMU running"
    );
    drop(vm);
    let vm = Qemu::restore("r", config, &saved).await.unwrap();
    vm.pause().await.unwrap();
    assert_eq!(vm.state(), VmState::Paused);

    vm.stop().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), vm.wait_exit())
        .await
        .expect("the end of an adopted QEMU is seen");
    assert!(!status.is_empty());
    assert!(child.0.wait().is_ok());
    assert!(!vm_dir.exists(), "stop removes the VM directory");
}
