//! The built-in VMM on a real KVM (issue 11): runs only where
//! `kata_hypervisor::kvm::probe_builtin_vmm` passes — the nested lab's L1, or a host with
//! hardware KVM — and says loudly that it was skipped anywhere else (this development host's
//! KVM is paravirtual). Needs the guest image (`make guest`).
//!
//! ```text
//! cargo test -p kata-hypervisor --features builtin --test builtin_vm -- --test-threads=1
//! ```
#![cfg(feature = "builtin")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kata_hypervisor::backend;
use kata_hypervisor::config::{GuestManifest, HypervisorConfig, HypervisorType, SharedFs};
use kata_hypervisor::kvm::probe_builtin_vmm;
use kata_vmm::vm::{VmBuilder, VmExit};

/// The guest image, or `None` (and a loud SKIPPED line) when this host cannot run the test.
fn runnable(test: &str) -> Option<GuestManifest> {
    let probe = probe_builtin_vmm();
    if !probe.usable {
        eprintln!(
            "\n*** SKIPPED {test}: the built-in VMM cannot run on this host: {} ***\n",
            probe.reason
        );
        return None;
    }
    match GuestManifest::load_default() {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("\n*** SKIPPED {test}: no guest image ({e}); run `make guest` ***\n");
            None
        }
    }
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The busybox initramfs: reaches /init, prints KATA_RS_INIT_DONE and reboots, which the
/// i8042 turns into the VM's end.
#[test]
fn a_guest_boots_to_init_and_its_reset_ends_the_vm_cleanly() {
    let Some(m) = runnable("a_guest_boots_to_init_and_its_reset_ends_the_vm_cleanly") else {
        return;
    };
    let busybox = m.initrd.with_file_name("initrd-busybox.img");
    let initrd = if busybox.exists() {
        busybox
    } else {
        PathBuf::from("/var/cache/kata-rs/guest/current/initrd-busybox.img")
    };
    let fds = open_fds();
    let t = Instant::now();
    let mut vm = VmBuilder::new(&m.kernel)
        .initramfs(&initrd)
        .vcpus(2)
        .memory_mib(256)
        .cmdline("console=ttyS0")
        .start()
        .expect("the VM starts");
    let names = thread_names();
    assert!(
        names.iter().any(|n| n == "kata-vcpu-0") && names.iter().any(|n| n == "kata-vcpu-1"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "kata-vmm-events"), "{names:?}");
    let exit = vm.wait_exit(Some(Duration::from_secs(120)));
    let console = String::from_utf8_lossy(&vm.console()).into_owned();
    assert_eq!(exit, Some(VmExit::Shutdown), "console:\n{console}");
    assert!(console.contains("KATA_RS_INIT_DONE"), "console:\n{console}");
    println!("booted to /init and reset in {:.1?}", t.elapsed());
    assert_eq!(vm.stop(), VmExit::Shutdown);
    drop(vm);
    let left: Vec<_> = thread_names()
        .into_iter()
        .filter(|n| n.starts_with("kata-v"))
        .collect();
    assert!(left.is_empty(), "threads left: {left:?}");
    assert_eq!(open_fds(), fds, "every descriptor closed");
}

/// The backend: the agent's port answers over the hybrid vsock, stop_now joins everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_boots_to_the_agent_port_and_stop_now_leaves_nothing() {
    if runnable("the_backend_boots_to_the_agent_port_and_stop_now_leaves_nothing").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm_dir = dir.path().join("vm");
    let config = HypervisorConfig {
        shared_fs: SharedFs::None,
        default_memory: 256,
        ..HypervisorConfig::defaults_for(HypervisorType::Dragonball)
    };
    let hv = backend::create(HypervisorType::Dragonball, "builtin-vm", config, &vm_dir).unwrap();
    hv.prepare(Vec::new()).await.unwrap();
    let t = Instant::now();
    hv.start().await.unwrap();
    hv.wait_ready(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", hv.console_tail(40).join("\n")));
    println!("agent port answered {:.1?} after start", t.elapsed());
    assert!(vm_dir.join("kata.hvsock").exists());
    hv.stop_now();
    assert!(!vm_dir.exists(), "the VM directory is removed");
    let left: Vec<_> = thread_names()
        .into_iter()
        .filter(|n| n.starts_with("kata-v"))
        .collect();
    assert!(left.is_empty(), "threads left: {left:?}");
    assert!(matches!(
        hv.state(),
        kata_hypervisor::hypervisor::VmState::Stopped(_)
    ));
}
