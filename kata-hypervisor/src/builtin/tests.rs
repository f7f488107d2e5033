//! What runs without a usable KVM: configuration, refusals, the probe's refusal at start.

use super::*;
use crate::device::{BlockDevice, NetDevice, PciePort, ShareFsDevice};

fn config() -> HypervisorConfig {
    HypervisorConfig {
        shared_fs: SharedFs::None,
        ..HypervisorConfig::defaults_for(HypervisorType::Dragonball)
    }
}

#[test]
fn inline_virtio_fs_and_none_are_served_virtio_fs_with_a_daemon_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = HypervisorConfig::defaults_for(HypervisorType::Dragonball);
    assert_eq!(
        c.shared_fs,
        SharedFs::InlineVirtioFs,
        "Kata's dragonball default"
    );
    Builtin::new("x", c, &dir.path().join("vm")).unwrap();
    let vfs = HypervisorConfig {
        shared_fs: SharedFs::VirtioFs,
        ..config()
    };
    let e = Builtin::new("x", vfs, &dir.path().join("vm"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shared_fs") && e.contains("inline virtio-fs"),
        "{e}"
    );
    Builtin::new("x", config(), &dir.path().join("vm")).unwrap();
}

#[tokio::test]
async fn disks_and_inline_shares_are_prepared_other_devices_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = Builtin::new("x", config(), &dir.path().join("vm")).unwrap();
    let share = DeviceConfig::ShareFs(ShareFsDevice {
        mount_tag: "kataShared".into(),
        host_path: dir.path().into(),
        kind: SharedFs::VirtioFs,
        vhost_user_socket: None,
    });
    let e = b.prepare(vec![share]).await.unwrap_err().to_string();
    assert!(
        e.contains("inline-virtio-fs") && e.contains("kataShared"),
        "{e}"
    );
    let inline = DeviceConfig::ShareFs(ShareFsDevice {
        mount_tag: "kataShared".into(),
        host_path: dir.path().into(),
        kind: SharedFs::InlineVirtioFs,
        vhost_user_socket: None,
    });
    b.prepare(vec![inline]).await.unwrap();
    assert_eq!(lock(&b.shares).len(), 1);
    let disk = BlockDevice {
        id: "disk0".into(),
        path: "/tmp/disk.img".into(),
        read_only: true,
    };
    b.prepare(vec![DeviceConfig::Block(disk)]).await.unwrap();
    assert_eq!(lock(&b.disks).len(), 1);
    assert_eq!(b.state(), VmState::Prepared);
}

#[tokio::test]
async fn start_refuses_with_the_probes_reason_where_kvm_cannot_run_it() {
    let probe = crate::kvm::probe_builtin_vmm();
    if probe.usable {
        eprintln!(
            "SKIPPED: this host's KVM passes the built-in VMM's probe ({})",
            probe.reason
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm_dir = dir.path().join("vm");
    let b = Builtin::new("x", config(), &vm_dir).unwrap();
    b.prepare(Vec::new()).await.unwrap();
    let e = b.start().await.unwrap_err().to_string();
    assert!(e.contains(&probe.reason), "{e}");
    assert!(!vm_dir.exists(), "nothing left behind");
}

#[test]
fn the_agent_is_on_the_vms_hybrid_vsock_and_params_follow_ours() {
    let dir = tempfile::tempdir().unwrap();
    let c = HypervisorConfig {
        kernel_params: " agent.log=debug ".into(),
        ..config()
    };
    let b = Builtin::new("x", c.clone(), &dir.path().join("vm")).unwrap();
    assert_eq!(
        b.agent_address().unwrap().to_string(),
        format!(
            "hvsock://{}:1024",
            dir.path().join("vm/kata.hvsock").display()
        )
    );
    let line = Builtin::kernel_cmdline(&c);
    assert!(
        line.starts_with("console=ttyS0 console=hvc0") && line.ends_with("quiet agent.log=debug"),
        "{line}"
    );
    assert!(b.pids().is_empty(), "in-process: no pid to move or kill");
    let s = b.save_state();
    assert_eq!(s.backend, HypervisorType::Dragonball);
    assert!(matches!(restore_refused(&s), Error::BadState { .. }));
}

fn nic(fds: usize, mac: &str) -> NetDevice {
    NetDevice {
        id: "net0".into(),
        tap_name: "tap0_kata".into(),
        mac: mac.into(),
        netns: Some("/run/netns/pod".into()),
        queues: fds.max(1) as u32,
        tap_fds: (0..fds)
            .map(|_| {
                std::sync::Arc::new(std::os::fd::OwnedFd::from(
                    std::fs::File::open("/dev/null").unwrap(),
                ))
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_pod_nic_is_taken_on_its_open_tap_queue_and_refused_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = Builtin::new("x", config(), &dir.path().join("vm")).unwrap();
    let good = nic(1, "02:42:ac:11:00:02");
    b.prepare(vec![DeviceConfig::Net(good.clone())])
        .await
        .unwrap();
    let nics = lock(&b.nics).clone();
    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].mac, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    assert!(std::sync::Arc::ptr_eq(&nics[0].tap, &good.tap_fds[0]));
    for (bad, says) in [
        (nic(0, "02:42:ac:11:00:02"), "no open tap queue"),
        (nic(2, "02:42:ac:11:00:02"), "network_queues = 1"),
        (nic(1, "02:42:ac:11:00"), "is not aa:bb:cc:dd:ee:ff"),
    ] {
        let e = b
            .prepare(vec![DeviceConfig::Net(bad)])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(says) && e.contains("tap0_kata"), "{e}");
    }
    let mq = HypervisorConfig {
        network_queues: 2,
        ..config()
    };
    let e = mq
        .check_refused(HypervisorType::Dragonball)
        .unwrap_err()
        .to_string();
    assert!(e.contains("network_queues"), "{e}");
}

#[test]
fn the_console_tail_is_the_virtio_consoles_once_the_guest_wrote_on_it() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let b = Builtin::new(
        "x",
        HypervisorConfig::defaults_for(HypervisorType::Dragonball),
        dir.path(),
    )
    .unwrap();
    assert!(b.console_tail(5).is_empty(), "no VM: no console");
    let (mut serial, mut hvc) = (ConsoleSink::new(4096), ConsoleSink::new(4096));
    *lock(&b.console) = Some(serial.clone());
    *lock(&b.hvc) = Some(hvc.clone());
    serial.write_all(b"early boot line\n").unwrap();
    assert_eq!(
        b.console_tail(5),
        vec!["early boot line"],
        "hvc0 not up yet"
    );
    hvc.write_all(b"early boot line\nkata-agent serving\n")
        .unwrap();
    assert_eq!(
        b.console_tail(1),
        vec!["kata-agent serving"],
        "the agent's line is on hvc0 only"
    );
}

fn function(id: &str, bdf: &str) -> DeviceConfig {
    DeviceConfig::Vfio(crate::device::VfioDevice {
        id: id.into(),
        bdf: bdf.into(),
    })
}

/// A kernel and an initrd of one byte each in `dir`, and what puts them into a configuration.
fn boot_files(dir: &std::path::Path) -> impl Fn(HypervisorConfig) -> HypervisorConfig {
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd"));
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&initrd, b"i").unwrap();
    move |c| HypervisorConfig {
        kernel: kernel.display().to_string(),
        initrd: initrd.display().to_string(),
        ..c
    }
}

#[tokio::test]
async fn vfio_functions_are_cold_plugged_behind_root_ports_in_order() {
    assert!(capabilities(&config()).vfio, "cold-plug");
    let dir = tempfile::tempdir().unwrap();
    let c = boot_files(dir.path())(HypervisorConfig {
        cold_plug_vfio: PciePort::RootPort,
        ..config()
    });
    let b = Builtin::new("x", c, &dir.path().join("vm")).unwrap();
    b.prepare(vec![
        function("vfio-a", "0000:00:03.0"),
        function("vfio-b", "0000:00:04.0"),
    ])
    .await
    .unwrap();
    assert_eq!(
        b.device_address("vfio-a").await.unwrap().to_string(),
        GuestAddress::Pci {
            path: "01/00".parse().unwrap()
        }
        .to_string()
    );
    assert!(matches!(
        b.device_address("vfio-b").await.unwrap(),
        GuestAddress::Pci { path } if path.to_string() == "02/00"
    ));
    let e = b.device_address("other").await.unwrap_err().to_string();
    assert!(e.contains("other") && e.contains("not cold-plugged"), "{e}");
    // They reach the VM's configuration.
    let vm = b.builder().unwrap();
    let bdfs: Vec<_> = vm.config().vfio.iter().map(|v| v.bdf.clone()).collect();
    assert_eq!(bdfs, ["0000:00:03.0", "0000:00:04.0"]);
    assert!(
        vm.config().vfio.iter().all(|v| v.behind_root_port),
        "root-port: behind ports"
    );
}

#[tokio::test]
async fn vfio_hot_plug_is_refused_naming_the_device_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let b = Builtin::new("x", config(), &dir.path().join("vm")).unwrap();
    let e = b
        .add_device(function("vfio-hot", "0000:00:05.0"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vfio-hot")
            && e.contains("0000:00:05.0")
            && e.contains("cold_plug_vfio")
            && e.contains("[hypervisor.qemu]"),
        "{e}"
    );
}

#[test]
fn switch_bridge_and_hot_plug_ports_are_refused_by_key() {
    use crate::device::PciePort::{BridgePort, NoPort, RootPort, SwitchPort};
    let dir = tempfile::tempdir().unwrap();
    for (cold, hot, root_ports, switch_ports, key) in [
        (SwitchPort, NoPort, 1, 0, "pcie_root_port"),
        (SwitchPort, NoPort, 0, 16, "pcie_switch_port"),
        (NoPort, SwitchPort, 0, 16, "pcie_switch_port"),
        (NoPort, RootPort, 0, 0, "pcie_root_port"),
        (NoPort, RootPort, 16, 0, "pcie_root_port"),
        (RootPort, RootPort, 1, 0, "hot_plug_vfio"),
        (NoPort, SwitchPort, 1, 0, "hot_plug_vfio"),
        (NoPort, BridgePort, 1, 0, "pcie_root_port"),
        (NoPort, NoPort, 0, 1, "pcie_switch_port"),
    ] {
        let c = HypervisorConfig {
            cold_plug_vfio: cold,
            hot_plug_vfio: hot,
            pcie_root_port: root_ports,
            pcie_switch_port: switch_ports,
            ..config()
        };
        let e = Builtin::new("x", c, &dir.path().join("vm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{cold}/{hot}/{root_ports}: {e}");
    }
    // Root-port hot-plug with spare ports is taken, and acted on.
    let c = HypervisorConfig {
        hot_plug_vfio: PciePort::RootPort,
        pcie_root_port: 2,
        ..config()
    };
    assert!(
        c.inert_settings(HypervisorType::Dragonball).is_empty(),
        "{:?}",
        c.inert_settings(HypervisorType::Dragonball)
    );
    Builtin::new("x", c, &dir.path().join("vm")).unwrap();
    // Switch-port cold-plug, with or without spare downstream ports, and switch-port hot-plug
    // with spare downstream ports are taken too.
    for (cold, hot, n) in [
        (SwitchPort, NoPort, 0),
        (SwitchPort, NoPort, 2),
        (NoPort, SwitchPort, 2),
        (BridgePort, NoPort, 0),
        (NoPort, BridgePort, 0),
    ] {
        let c = HypervisorConfig {
            cold_plug_vfio: cold,
            hot_plug_vfio: hot,
            pcie_switch_port: n,
            ..config()
        };
        Builtin::new("x", c, &dir.path().join("vm")).unwrap();
    }
}

fn growable(max: u32) -> HypervisorConfig {
    HypervisorConfig {
        enable_virtio_mem: true,
        default_memory: 512,
        default_maxmemory: max,
        ..config()
    }
}

/// A virtio-mem device's handle with no guest behind it (nothing ever plugs).
fn idle_device(region_mib: u64) -> kata_vmm::devices::virtio::mem::MemHandle {
    kata_vmm::devices::virtio::mem::Mem::new(kata_vmm::devices::virtio::mem::MemConfig {
        addr: 4 << 30,
        size: region_mib << 20,
        backing: None,
    })
    .unwrap()
    .handle()
}

#[test]
fn memory_hotplug_is_a_capability_only_with_virtio_mem_and_room_to_grow() {
    assert!(!capabilities(&config()).memory_hotplug, "off by default");
    assert!(capabilities(&growable(2048)).memory_hotplug);
    assert!(!capabilities(&growable(512)).memory_hotplug, "no room");
    assert!(!capabilities(&parked(1, 1)).cpu_hotplug);
    assert_eq!(resize::hotplug_mib(&growable(2048), 8192), 1536);
    assert_eq!(
        resize::hotplug_mib(&growable(0), 8192),
        8192 - 512,
        "0: the host's"
    );
    assert_eq!(resize::hotplug_mib(&config(), 8192), 0);
    let kind = HypervisorType::Dragonball;
    assert!(
        growable(2048).inert_settings(kind).is_empty(),
        "{:?}",
        growable(2048).inert_settings(kind)
    );
    let without = HypervisorConfig {
        default_maxmemory: 2048,
        ..config()
    };
    let inert = without.inert_settings(kind);
    assert!(
        inert
            .iter()
            .any(|l| l.contains("default_maxmemory") && l.contains("enable_virtio_mem")),
        "{inert:?}"
    );
}

#[test]
fn the_plug_target_rounds_to_blocks_and_stops_at_default_maxmemory() {
    let c = growable(1024);
    let region = 512 << 20;
    assert_eq!(
        resize::plug_target(&c, region, 256).unwrap(),
        0,
        "below boot"
    );
    assert_eq!(resize::plug_target(&c, region, 512).unwrap(), 0);
    assert_eq!(resize::plug_target(&c, region, 513).unwrap(), 2 << 20);
    assert_eq!(resize::plug_target(&c, region, 1024).unwrap(), 512 << 20);
    let e = resize::plug_target(&c, region, 1025)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("default_maxmemory") && e.contains("1025 MiB") && e.contains("1024 MiB"),
        "{e}"
    );
    // The region is whole 128 MiB blocks: 600 MiB of room is a 640 MiB region, 600 usable.
    let c = growable(1112);
    assert!(resize::plug_target(&c, 640 << 20, 1112).is_ok());
    assert!(resize::plug_target(&c, 640 << 20, 1113).is_err());
}

#[tokio::test]
async fn growing_waits_for_the_guest_and_times_out_naming_the_device() {
    let c = growable(1024);
    let handle = idle_device(512);
    let t = std::time::Instant::now();
    let e = resize::resize_memory(Some(handle.clone()), &c, 768, Duration::from_millis(100))
        .await
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(
        e.contains("virtio-mem") && e.contains("256 MiB") && e.contains("plugged 0 MiB"),
        "{e}"
    );
    assert_eq!(handle.requested_size(), 256 << 20, "the guest was asked");
    // Shrinking back: nothing to give back, the boot size at once.
    let mib = resize::resize_memory(Some(handle.clone()), &c, 512, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(mib, 512);
    assert_eq!(handle.requested_size(), 0);
    // Beyond the maximum: refused before the guest is asked anything.
    let e = resize::resize_memory(Some(handle.clone()), &c, 4096, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_maxmemory"), "{e}");
    assert_eq!(handle.requested_size(), 0);
}

#[tokio::test]
async fn without_virtio_mem_growing_is_refused_with_the_fix_and_vcpus_need_a_running_vm() {
    let dir = tempfile::tempdir().unwrap();
    let e = resize::resize_memory(None, &config(), 8192, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("enable_virtio_mem"), "{e}");
    assert_eq!(
        resize::resize_memory(None, &config(), 128, Duration::from_secs(1))
            .await
            .unwrap(),
        config().default_memory
    );
    let b = Builtin::new("x", growable(2048), &dir.path().join("vm")).unwrap();
    assert!(matches!(
        b.resize_memory(1024).await.unwrap_err(),
        Error::NotRunning(_)
    ));
    // No VM yet: nothing to grant beyond the boot vCPUs.
    assert!(matches!(
        b.resize_vcpus(8).await.unwrap_err(),
        Error::NotRunning(_)
    ));
    assert_eq!(b.resize_vcpus(1).await.unwrap(), 1);
}

fn parked(boot: u32, max: u32) -> HypervisorConfig {
    HypervisorConfig {
        default_vcpus: boot,
        default_maxvcpus: max,
        ..config()
    }
}

#[test]
fn vcpu_growth_is_a_capability_with_parked_vcpus_and_the_vm_is_built_with_them() {
    let host = crate::config::host_cpus();
    assert!(capabilities(&parked(1, 2)).cpu_hotplug || host < 2);
    assert!(!capabilities(&parked(1, 1)).cpu_hotplug, "none parked");
    assert!(!capabilities(&parked(2, 2)).cpu_hotplug);
    let kind = HypervisorType::Dragonball;
    assert!(
        parked(1, 2).inert_settings(kind).is_empty(),
        "default_maxvcpus is acted on: {:?}",
        parked(1, 2).inert_settings(kind)
    );
    // The builder asks the VMM for the parked vCPUs (kata-vmm adds maxcpus= and the MP
    // table's processors, vm::tests).
    let dir = tempfile::tempdir().unwrap();
    let files = boot_files(dir.path());
    let b = Builtin::new("x", files(parked(1, 2)), &dir.path().join("vm")).unwrap();
    let built = b.builder().unwrap();
    assert_eq!(built.config().vcpus, 1);
    assert_eq!(
        built.config().max_vcpus,
        resize::max_vcpus(&parked(1, 2), host) as u8
    );
    // Nonsense is refused naming the key.
    let e = Builtin::new("x", parked(2, 1), &dir.path().join("vm"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_maxvcpus"), "{e}");
}

#[test]
fn the_vm_gets_virtio_mem_and_a_reporting_balloon_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let files = boot_files(dir.path());
    let plain = Builtin::new("x", files(config()), &dir.path().join("vm")).unwrap();
    let b = plain.builder().unwrap();
    assert_eq!(b.config().hotplug_memory_mib, 0);
    assert_eq!(b.config().balloon, None);
    let c = HypervisorConfig {
        reclaim_guest_freed_memory: true,
        ..files(growable(1536))
    };
    let kind = HypervisorType::Dragonball;
    assert!(
        c.inert_settings(kind).is_empty(),
        "{:?}",
        c.inert_settings(kind)
    );
    let grows = Builtin::new("x", c, &dir.path().join("vm")).unwrap();
    let b = grows.builder().unwrap();
    assert_eq!(b.config().hotplug_memory_mib, 1024);
    assert_eq!(
        b.config().balloon,
        Some(BalloonConfig {
            free_page_reporting: true
        })
    );
}

fn blk_pci(ports: u32) -> HypervisorConfig {
    HypervisorConfig {
        block_device_driver: crate::config::BlockDeviceDriver::VirtioBlkPci,
        pcie_root_port: ports,
        ..config()
    }
}

#[tokio::test]
async fn disk_hot_plug_is_a_capability_with_virtio_blk_pci_and_spare_root_ports() {
    // blk_hotplug: the default (virtio-blk-mmio) hot-plugs no disk; the refusal names the keys.
    assert!(!capabilities(&config()).block_hotplug);
    assert!(!capabilities(&blk_pci(0)).block_hotplug);
    assert!(capabilities(&blk_pci(1)).block_hotplug);
    let dir = tempfile::tempdir().unwrap();
    let disk = DeviceConfig::Block(BlockDevice {
        id: "disk-hot".into(),
        path: dir.path().join("disk.img"),
        read_only: false,
    });
    let b = Builtin::new("x", config(), &dir.path().join("vm")).unwrap();
    let e = b.add_device(disk.clone()).await.unwrap_err().to_string();
    assert!(
        e.contains("disk-hot") && e.contains("block_device_driver") && e.contains("pcie_root_port"),
        "{e}"
    );
    // Enabled but no VM yet: not running, nothing remembered.
    let b = Builtin::new("x", blk_pci(1), &dir.path().join("vm")).unwrap();
    let e = b.add_device(disk.clone()).await.unwrap_err();
    assert!(matches!(e, Error::NotRunning(_)), "{e}");
    assert!(b.device_address("disk-hot").await.is_err());
    assert!(b.remove_device(&disk).await.is_err());
    // The VM is built with the spare ports (one pool with VFIO's).
    assert_eq!(blk_hotplug::spare_ports(&blk_pci(2)), 2);
    assert!(blk_pci(1)
        .inert_settings(HypervisorType::Dragonball)
        .iter()
        .all(|l| !l.contains("pcie_root_port") && !l.contains("block_device_driver")));
}
