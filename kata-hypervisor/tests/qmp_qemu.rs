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
        blocks: Vec::new(),
        ports: Vec::new(),
        resize: Default::default(),
        rootless: None,
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

/// A running QEMU (no guest: the firmware idles) with a free root port `rp1` and a
/// virtio-scsi controller, as the backend's VMs have them.
fn running_qemu_for_blocks(vm_dir: &std::path::Path) -> KillOnDrop {
    std::fs::create_dir(vm_dir).unwrap();
    let sock = vm_dir.join("qmp.sock");
    let child = KillOnDrop(
        std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-nodefaults"])
            .args(["-display", "none", "-m", "64M"])
            .args(["-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1"])
            .args(["-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=2"])
            .args(["-device", "virtio-scsi-pci,id=scsi0"])
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

/// A 4 MiB raw image.
fn raw_image(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(4 << 20).unwrap();
    p
}

/// `blockdev-add` with the backend's options, `device_add` of a virtio-blk-pci on a root port
/// (found at its PCI path in `query-pci`) and of a read-only scsi-hd, `device_del` of the SCSI
/// disk (released without the guest), and `blockdev-del`: QEMU holds none of our nodes at the
/// end. A node in use cannot be deleted; a missing file is refused by `blockdev-add`.
#[tokio::test]
async fn block_devices_are_added_placed_and_removed() {
    use kata_hypervisor::qemu::hotplug;
    use kata_hypervisor::{BlockDevice, HypervisorConfig};

    let tmp = tempfile::tempdir().unwrap();
    let vm_dir = tmp.path().join("vm");
    let _qemu = running_qemu_for_blocks(&vm_dir);
    let qmp = QmpClient::connect(&vm_dir.join("qmp.sock"), Duration::from_secs(10))
        .await
        .unwrap();
    let config = HypervisorConfig::default();
    let dev = |id: &str, path: std::path::PathBuf, read_only| BlockDevice {
        id: id.into(),
        path,
        read_only,
    };
    let ours = |nodes: Vec<(String, String)>| -> Vec<String> {
        nodes
            .into_iter()
            .filter(|(n, _)| n.starts_with("drive-"))
            .map(|(n, _)| n)
            .collect()
    };

    // virtio-blk-pci on rp1.
    let pci = dev("blk0", raw_image(tmp.path(), "a.img"), false);
    qmp.blockdev_add(hotplug::blockdev_options(&config, &pci))
        .await
        .unwrap();
    qmp.device_add(
        "virtio-blk-pci",
        "blk0",
        hotplug::virtio_blk_props(&pci, "rp1", None),
    )
    .await
    .unwrap();
    let mut path = None;
    for _ in 0..100 {
        let v = qmp.execute("query-pci", None).await.unwrap();
        path = hotplug::pci_path_of(&v, "blk0");
        if path.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = qmp.execute("query-pci", None).await.unwrap();
    let rp1 = hotplug::pci_path_of(&v, "rp1").expect("rp1 is on bus 0");
    let path = path.expect("the disk is listed behind rp1");
    assert_eq!(path.slots(), &[rp1.slots()[0], 0], "{path}");
    let busy = qmp
        .blockdev_del("drive-blk0")
        .await
        .unwrap_err()
        .to_string();
    assert!(busy.contains("blockdev-del"), "{busy}");

    // A read-only scsi-hd; the node's file is opened read-only.
    let scsi = dev("blk1", raw_image(tmp.path(), "b.img"), true);
    qmp.blockdev_add(hotplug::blockdev_options(&config, &scsi))
        .await
        .unwrap();
    qmp.device_add("scsi-hd", "blk1", hotplug::scsi_hd_props(&scsi, 0, 1))
        .await
        .unwrap();
    let blocks = qmp.execute("query-block", None).await.unwrap();
    let ro = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["inserted"]["node-name"] == "drive-blk1")
        .map(|b| b["inserted"]["ro"].clone());
    assert_eq!(ro, Some(serde_json::json!(true)), "{blocks}");
    assert_eq!(
        ours(qmp.query_block_nodes().await.unwrap()).len(),
        4,
        "raw and file nodes of both"
    );
    qmp.device_del("blk1", Duration::from_secs(10))
        .await
        .unwrap();
    qmp.blockdev_del("drive-blk1").await.unwrap();

    // A missing file: blockdev-add fails naming it, and nothing is added.
    let gone = dev("blk2", tmp.path().join("missing.img"), false);
    let e = qmp
        .blockdev_add(hotplug::blockdev_options(&config, &gone))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.img"), "{e}");

    let left = ours(qmp.query_block_nodes().await.unwrap());
    assert_eq!(left.len(), 2, "only blk0's nodes: {left:?}");
    assert!(left.iter().all(|n| n.starts_with("drive-blk0")), "{left:?}");
}

/// A paused guestless QEMU shaped as the backend starts VMs for hot-plug: one vCPU of four
/// sockets, 128 MiB of shared (memfd) boot memory on NUMA node 0, two DIMM slots, 512 MiB
/// maxmem.
fn paused_resizable_qemu(dir: &std::path::Path) -> KillOnDrop {
    let sock = dir.join("qmp.sock");
    let child = KillOnDrop(
        std::process::Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-nodefaults",
            ])
            .args(["-display", "none", "-S"])
            .args(["-smp", "1,sockets=4,cores=1,threads=1,maxcpus=4"])
            .args(["-m", "128M,slots=2,maxmem=512M"])
            .args(["-object", "memory-backend-memfd,id=mem0,size=128M,share=on"])
            .args(["-numa", "node,memdev=mem0"])
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

/// vCPU hot-plug: the free slots are filled with the slot's CPU type and topology ids, the
/// count is bounded by maxcpus (default_maxvcpus), and a second call to the same size does
/// nothing.
#[tokio::test]
async fn vcpus_are_hot_plugged_into_free_slots_up_to_maxcpus() {
    use kata_hypervisor::qemu::resize::{resize_vcpus, ResizeState, VcpuLimits};
    let dir = tempfile::tempdir().unwrap();
    let _qemu = paused_resizable_qemu(dir.path());
    let qmp = QmpClient::connect(&dir.path().join("qmp.sock"), Duration::from_secs(10))
        .await
        .unwrap();
    let limits = VcpuLimits {
        boot: 1,
        max: 4,
        tcg_unplug_bug: false,
    };
    let mut state = ResizeState::default();

    assert_eq!(resize_vcpus(&qmp, &mut state, limits, 3).await.unwrap(), 3);
    assert_eq!(state.cpus, ["kata-vcpu-1-0-0-0", "kata-vcpu-2-0-0-0"]);
    let slots = qmp.query_hotpluggable_cpus().await.unwrap();
    let plugged: Vec<_> = slots.iter().filter_map(|s| s.qom_path.clone()).collect();
    assert_eq!(plugged.len(), 3, "{slots:?}");
    assert!(plugged.contains(&"/machine/peripheral/kata-vcpu-2-0-0-0".to_string()));
    let cpus = qmp.execute("query-cpus-fast", None).await.unwrap();
    assert_eq!(cpus.as_array().unwrap().len(), 3, "{cpus}");

    // The same size again, or less than the boot vCPUs of a VM already there: nothing to do.
    assert_eq!(resize_vcpus(&qmp, &mut state, limits, 3).await.unwrap(), 3);
    assert_eq!(state.cpus.len(), 2);

    let e = resize_vcpus(&qmp, &mut state, limits, 5)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_maxvcpus bounds it at 4"), "{e}");
    assert_eq!(state.cpus.len(), 2, "a refused resize plugs nothing");

    // A TCG QEMU before 8.2 after an unplug: refused as unsupported, nothing plugged.
    let buggy = VcpuLimits {
        tcg_unplug_bug: true,
        ..limits
    };
    let mut unplugged_once = ResizeState {
        cpus_unplugged: 1,
        ..state.clone()
    };
    let e = resize_vcpus(&qmp, &mut unplugged_once, buggy, 4)
        .await
        .unwrap_err();
    assert!(
        matches!(e, kata_hypervisor::Error::Unsupported { .. }) && e.to_string().contains("8.2"),
        "{e}"
    );
    assert_eq!(unplugged_once.cpus.len(), 2, "nothing plugged");

    // A state that lost track (a restarted owner) is reconciled from QEMU.
    let mut fresh = ResizeState::default();
    assert_eq!(resize_vcpus(&qmp, &mut fresh, limits, 4).await.unwrap(), 4);
    assert_eq!(
        fresh.cpus,
        [
            "kata-vcpu-1-0-0-0",
            "kata-vcpu-2-0-0-0",
            "kata-vcpu-3-0-0-0"
        ]
    );
}

/// Memory hot-plug: a shared memfd backend and a pc-dimm per growth, rounded to 128 MiB;
/// never shrunk; bounded by maxmem (default_maxmemory) and the slots (memory_slots), and a
/// refused DIMM leaves no backend behind.
#[tokio::test]
async fn memory_is_hot_plugged_as_shared_dimms_within_maxmem_and_slots() {
    use kata_hypervisor::qemu::resize::{resize_memory, MemoryLimits, ResizeState};
    let dir = tempfile::tempdir().unwrap();
    let _qemu = paused_resizable_qemu(dir.path());
    let qmp = QmpClient::connect(&dir.path().join("qmp.sock"), Duration::from_secs(10))
        .await
        .unwrap();
    let limits = MemoryLimits {
        boot_mib: 128,
        max_mib: 512,
        slots: 2,
        hugepages: false,
        prealloc: false,
        tcg_unplug_bug: false,
    };
    let mut state = ResizeState::booted(512);
    let objects = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["name"].as_str())
            .filter(|n| n.starts_with("mem-"))
            .map(str::to_string)
            .collect()
    };

    assert_eq!(
        resize_memory(&qmp, &mut state, &limits, 200).await.unwrap(),
        256
    );
    let dimms = qmp.query_memory_devices().await.unwrap();
    assert_eq!(dimms.len(), 1, "{dimms:?}");
    assert_eq!(
        (dimms[0].id.as_str(), dimms[0].size),
        ("kata-dimm0", 128 << 20)
    );
    let share = qmp
        .execute(
            "qom-get",
            Some(serde_json::json!({"path": "/objects/mem-kata-dimm0", "property": "share"})),
        )
        .await
        .unwrap();
    assert_eq!(
        share,
        serde_json::json!(true),
        "vhost-user devices need shared memory"
    );

    // Never shrunk; the same size adds nothing.
    assert_eq!(
        resize_memory(&qmp, &mut state, &limits, 128).await.unwrap(),
        256
    );
    assert_eq!(
        resize_memory(&qmp, &mut state, &limits, 256).await.unwrap(),
        256
    );
    assert_eq!(qmp.query_memory_devices().await.unwrap().len(), 1);

    // Beyond maxmem: refused naming the key, nothing added.
    let e = resize_memory(&qmp, &mut state, &limits, 600)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_maxmemory bounds it at 512 MiB"), "{e}");
    let objs = objects(
        qmp.execute("qom-list", Some(serde_json::json!({"path": "/objects"})))
            .await
            .unwrap(),
    );
    assert_eq!(
        objs,
        ["mem-kata-dimm0"],
        "no backend left by a refused DIMM"
    );

    // The second slot, then no slot left.
    assert_eq!(
        resize_memory(&qmp, &mut state, &limits, 384).await.unwrap(),
        384
    );
    let e = resize_memory(&qmp, &mut state, &limits, 500)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("memory_slots bounds it at 2 DIMMs"), "{e}");
    assert_eq!(state.plugged_mib(), 256);
}

/// A DIMM QEMU refuses (its id is taken, here by a vCPU) takes its memory backend away again,
/// and the state does not count it.
#[tokio::test]
async fn a_refused_dimm_leaves_no_memory_backend() {
    use kata_hypervisor::qemu::resize::{resize_memory, MemoryLimits, ResizeState};
    let dir = tempfile::tempdir().unwrap();
    let _qemu = paused_resizable_qemu(dir.path());
    let qmp = QmpClient::connect(&dir.path().join("qmp.sock"), Duration::from_secs(10))
        .await
        .unwrap();
    let slot = qmp.query_hotpluggable_cpus().await.unwrap()[0].clone();
    qmp.device_add(&slot.driver, "kata-dimm0", slot.props)
        .await
        .unwrap();
    let limits = MemoryLimits {
        boot_mib: 128,
        max_mib: 512,
        slots: 2,
        hugepages: false,
        prealloc: false,
        tcg_unplug_bug: false,
    };
    let mut state = ResizeState::booted(512);
    let e = resize_memory(&qmp, &mut state, &limits, 256)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("device_add") && e.contains("kata-dimm0"), "{e}");
    assert!(state.dimms.is_empty());
    let objs = qmp
        .execute("qom-list", Some(serde_json::json!({"path": "/objects"})))
        .await
        .unwrap();
    assert!(
        !objs.to_string().contains("mem-kata-dimm0"),
        "the backend was removed: {objs}"
    );
}
