//! What runs without a usable KVM: configuration, refusals, the probe's refusal at start.

use super::*;
use crate::device::{BlockDevice, ShareFsDevice};

fn config() -> HypervisorConfig {
    HypervisorConfig {
        shared_fs: SharedFs::None,
        ..HypervisorConfig::defaults_for(HypervisorType::Dragonball)
    }
}

#[test]
fn a_virtio_fs_share_is_refused_naming_the_missing_inline_virtio_fs() {
    let dir = tempfile::tempdir().unwrap();
    let c = HypervisorConfig::defaults_for(HypervisorType::Dragonball);
    assert_eq!(
        c.shared_fs,
        SharedFs::InlineVirtioFs,
        "Kata's dragonball default"
    );
    let e = Builtin::new("x", c, &dir.path().join("vm"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shared_fs") && e.contains("inline virtio-fs"),
        "{e}"
    );
    let vfs = HypervisorConfig {
        shared_fs: SharedFs::VirtioFs,
        ..config()
    };
    assert!(Builtin::new("x", vfs, &dir.path().join("vm")).is_err());
    Builtin::new("x", config(), &dir.path().join("vm")).unwrap();
}

#[tokio::test]
async fn only_block_devices_are_prepared() {
    let dir = tempfile::tempdir().unwrap();
    let b = Builtin::new("x", config(), &dir.path().join("vm")).unwrap();
    let share = DeviceConfig::ShareFs(ShareFsDevice {
        mount_tag: "kataShared".into(),
        host_path: dir.path().into(),
        kind: SharedFs::VirtioFs,
        vhost_user_socket: None,
    });
    let e = b.prepare(vec![share]).await.unwrap_err().to_string();
    assert!(e.contains("inline") && e.contains("kataShared"), "{e}");
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
        line.starts_with("console=ttyS0") && line.ends_with("quiet agent.log=debug"),
        "{line}"
    );
    assert!(b.pids().is_empty(), "in-process: no pid to move or kill");
    let s = b.save_state();
    assert_eq!(s.backend, HypervisorType::Dragonball);
    assert!(matches!(restore_refused(&s), Error::BadState { .. }));
}
