//! Tier 2: our QMP client and the QEMU backend's hand-over against a real QEMU (no guest
//! needed: the VM is created paused).
#![cfg(feature = "qemu")]

use std::os::unix::process::ExitStatusExt;
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
    wait_listening(&sock);
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

/// Killed on drop, so a failed assertion leaves no QEMU behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A paused QEMU whose command line names `vm_dir` (as the backend's VMs do), with no
/// inherited stdout, so a QEMU that outlived the test could not hold the test runner's pipe.
fn paused_qemu_in(vm_dir: &std::path::Path) -> KillOnDrop {
    std::fs::create_dir(vm_dir).unwrap();
    let sock = vm_dir.join("qmp.sock");
    let child = KillOnDrop(
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
    wait_listening(&sock);
    child
}

/// Waits until QEMU listens on `socket` (it exists a moment before it accepts). Generous: CI
/// runs this on 2 busy cores.
fn wait_listening(socket: &std::path::Path) {
    for _ in 0..3000 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The state the QEMU backend would have saved for `pid` running in `vm_dir`.
fn saved_state(vm_dir: &std::path::Path, pid: u32) -> kata_hypervisor::HypervisorState {
    kata_hypervisor::qemu::QemuState {
        qemu_pid: pid,
        vsock_backend_pid: None,
        qmp_socket: vm_dir.join("qmp.sock"),
        accelerator: None,
        cold_plugged: Vec::new(),
        ports: Vec::new(),
    }
    .into_saved(
        vm_dir,
        Some(kata_hypervisor::VsockAddress::HybridVsock {
            uds: vm_dir.join("vsock.uds"),
            port: 1024,
        }),
    )
}

/// A paused QEMU is adopted from a saved state through the backend boundary, handed over
/// again with `detach`, re-adopted, and stopped.
#[tokio::test]
async fn restore_adopts_a_running_qemu_and_stop_kills_it() {
    use kata_hypervisor::{backend, HypervisorConfig, HypervisorState, HypervisorType, VmState};

    let tmp = tempfile::tempdir().unwrap();
    let vm_dir = tmp.path().join("vm");
    let mut child = paused_qemu_in(&vm_dir);
    let config = HypervisorConfig::default();
    let saved = saved_state(&vm_dir, child.0.id());

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
    let recycled = saved_state(&vm_dir, other.id());
    let e = backend::restore("r", config.clone(), &recycled)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not name"), "{e}");
    assert!(other.try_wait().unwrap().is_none());
    other.kill().unwrap();
    other.wait().unwrap();
    // Another backend's state, and a state without the QEMU section, are refused by name.
    let wrong = HypervisorState {
        backend: HypervisorType::Firecracker,
        ..saved.clone()
    };
    let e = backend::restore("r", config.clone(), &wrong)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("firecracker"), "{e}");
    let older = HypervisorState {
        backend_state: serde_json::Value::Null,
        ..saved.clone()
    };
    let e = backend::restore("r", config.clone(), &older)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("older format"), "{e}");

    let vm = backend::restore("r", config.clone(), &saved).await.unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert_eq!(vm.pids(), vec![child.0.id()]);
    assert!(vm.agent_address().is_ok());
    assert_eq!(vm.save_state(), saved, "the state round-trips");

    // Handed over again: QEMU runs on, QMP is free for the next owner; stop and stop_now
    // leave it alone.
    vm.detach().await.unwrap();
    vm.stop().await.unwrap();
    vm.stop_now();
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "detach leaves QEMU running"
    );
    drop(vm);
    let vm = backend::restore("r", config, &saved).await.unwrap();
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

/// `stop_now` kills an adopted QEMU synchronously, from a thread without a runtime, and
/// removes the VM directory.
#[tokio::test]
async fn stop_now_kills_an_adopted_qemu_without_a_runtime() {
    use kata_hypervisor::{backend, HypervisorConfig, VmState};

    let tmp = tempfile::tempdir().unwrap();
    let vm_dir = tmp.path().join("vm");
    let mut child = paused_qemu_in(&vm_dir);
    let saved = saved_state(&vm_dir, child.0.id());
    let vm = backend::restore("r", HypervisorConfig::default(), &saved)
        .await
        .unwrap();
    let vm2 = vm.clone();
    std::thread::spawn(move || vm2.stop_now()).join().unwrap();
    assert!(
        child.0.try_wait().unwrap().is_some(),
        "QEMU is gone when stop_now returns"
    );
    assert!(!vm_dir.exists());
    assert!(matches!(vm.state(), VmState::Stopped(_)));
    assert!(vm.pids().is_empty());
    vm.stop().await.unwrap();
}

/// `backend::cleanup` kills a QEMU left by a dead owner, from its state.
#[test]
fn cleanup_kills_a_qemu_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let vm_dir = tmp.path().join("vm");
    let mut child = paused_qemu_in(&vm_dir);
    let saved = saved_state(&vm_dir, child.0.id());
    let report = kata_hypervisor::backend::cleanup(Some(&saved), &vm_dir).unwrap();
    assert_eq!(report.killed, vec![child.0.id()]);
    assert!(report.vm_dir_removed && !vm_dir.exists());
    assert!(child.0.wait().unwrap().signal().is_some());
}

/// A paused QEMU like the backend's VMs: QMP, and the serial port on a console socket that
/// does not wait for its reader (the test connects through the backend later).
fn paused_qemu_with_console_in(vm_dir: &std::path::Path) -> KillOnDrop {
    std::fs::create_dir(vm_dir).unwrap();
    let qmp = vm_dir.join("qmp.sock");
    let console = vm_dir.join("console.sock");
    let child = KillOnDrop(
        std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-nodefaults"])
            .args(["-display", "none", "-S", "-m", "64M"])
            .arg("-sandbox")
            .arg(kata_hypervisor::config::DEFAULT_SECCOMP_SANDBOX)
            .arg("-chardev")
            .arg(format!(
                "socket,id=console0,path={},server=on,wait=off",
                console.display()
            ))
            .args(["-serial", "chardev:console0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&qmp);
    wait_listening(&console);
    child
}

/// Writes `text` to the VM's serial port (the 16550 at 0x3f8) through the monitor, as a guest
/// would: no guest is needed.
async fn write_serial(qmp: &QmpClient, text: &str) {
    for b in text.bytes() {
        qmp.execute(
            "human-monitor-command",
            Some(serde_json::json!({ "command-line": format!("o /b 0x3f8 {b}") })),
        )
        .await
        .unwrap();
    }
}

/// Polls the VM's console tail until a line is `want` (bounded).
async fn console_shows(vm: &kata_hypervisor::qemu::Qemu, want: &str) -> Vec<String> {
    use kata_hypervisor::Hypervisor;
    let mut tail = Vec::new();
    for _ in 0..200 {
        tail = vm.console_tail(10);
        if tail.iter().any(|l| l == want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tail
}

/// The console plumbing with a real QEMU and its seccomp sandbox: an adopted VM's serial port
/// is read into the backend's ring; a detached VM's console is let go (QEMU drops what is
/// written meanwhile, without blocking) and the next owner reads it again; the ring outlives
/// the VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serial_console_is_read_into_a_ring_that_outlives_the_vm() {
    use kata_hypervisor::qemu::Qemu;
    use kata_hypervisor::{Hypervisor, HypervisorConfig};

    let tmp = tempfile::tempdir().unwrap();
    let vm_dir = tmp.path().join("vm");
    let mut child = paused_qemu_with_console_in(&vm_dir);
    let saved = saved_state(&vm_dir, child.0.id());

    let vm = Qemu::restore("c", HypervisorConfig::default(), &saved)
        .await
        .unwrap();
    assert!(vm.console().is_empty());
    write_serial(&vm.qmp().unwrap(), "hello from the serial port\n").await;
    let tail = console_shows(&vm, "hello from the serial port").await;
    assert_eq!(tail, ["hello from the serial port"]);
    assert!(
        !vm_dir.join("console.log").exists(),
        "the console is never a file"
    );

    // Handed over: the console connection is closed; QEMU drops what the guest writes
    // meanwhile, without stalling (every write returns).
    vm.detach().await.unwrap();
    drop(vm);
    let qmp = QmpClient::connect(&vm_dir.join("qmp.sock"), Duration::from_secs(10))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    write_serial(&qmp, "written while nobody read\n").await;
    assert!(t0.elapsed() < Duration::from_secs(20));
    drop(qmp);
    let vm = Qemu::restore("c", HypervisorConfig::default(), &saved)
        .await
        .unwrap();
    write_serial(&vm.qmp().unwrap(), "read by the next owner\n").await;
    let tail = console_shows(&vm, "read by the next owner").await;
    assert_eq!(tail, ["read by the next owner"]);

    // After the VM is gone, its console is still there for the error that reports it.
    vm.stop().await.unwrap();
    assert!(child.0.wait().is_ok());
    assert!(!vm_dir.exists());
    assert!(
        vm.console_tail(5)
            .contains(&"read by the next owner".to_string()),
        "{:?}",
        vm.console_tail(5)
    );
    assert!(vm.console().total_bytes() > 0);
}
