//! A sandbox on the built-in VMM (issue 11), end to end — boot, agent Check, containers on a
//! directory rootfs shared by inline virtio-fs (`uname -a`, a host file read, an exit code): runs only where
//! `kata_hypervisor::kvm::probe_builtin_vmm` passes (the nested lab's L1, a host with hardware
//! KVM) and says loudly that it was skipped anywhere else. Needs the guest image (`make guest`).
//!
//! ```text
//! cargo test -p kata-sandbox --features builtin --test builtin_sandbox -- --test-threads=1
//! ```
#![cfg(feature = "builtin")]

use std::time::{Duration, Instant};

use kata_hypervisor::config::{HypervisorConfig, HypervisorType, SharedFs};
use kata_sandbox::{ContainerSpec, Sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_boots_on_the_built_in_vmm_and_its_agent_answers() {
    let probe = kata_hypervisor::kvm::probe_builtin_vmm();
    if !probe.usable {
        eprintln!(
            "\n*** SKIPPED builtin_sandbox: the built-in VMM cannot run on this host: {} ***\n",
            probe.reason
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let hv = HypervisorConfig {
        // Kata's default for this section: the VMM serves the share itself.
        shared_fs: SharedFs::InlineVirtioFs,
        default_memory: 256,
        default_vcpus: 1,
        ..HypervisorConfig::defaults_for(HypervisorType::Dragonball)
    };
    let t = Instant::now();
    let sandbox = Sandbox::builder()
        .id("builtin-sandbox")
        .hypervisor(HypervisorType::Dragonball)
        .hypervisor_config(hv)
        .root_dir(root.path())
        .build()
        .await
        .expect("the sandbox boots on the built-in VMM");
    let facts = sandbox.describe();
    println!("booted in {:.1?}: {facts:?}", t.elapsed());
    let fact = |k: &str| {
        facts
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(fact("hypervisor"), "dragonball", "{facts:?}");
    let agent = fact("agent");
    assert!(agent.starts_with("hvsock://"), "{facts:?}");
    let addr: kata_agent_client::AgentAddress = agent.parse().unwrap();
    let a = kata_agent_client::Agent::connect(&addr, Default::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), a.check())
        .await
        .expect("Check answered in time")
        .expect("Health.Check SERVING");
    println!("agent Check SERVING over {agent}");

    // Containers on a directory rootfs, shared by inline virtio-fs.
    let rootfs = root.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).unwrap();
    std::fs::write(rootfs.join("token"), "from-the-host").unwrap();
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(&rootfs).args(["uname", "-a"]))
        .await
        .expect("uname -a runs in a container");
    let uname = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("uname -a: {uname}");
    assert!(uname.starts_with("Linux "), "{out:?}");
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(&rootfs).args(["cat", "/token"]))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-the-host",
        "{out:?}"
    );
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(&rootfs).args(["sh", "-c", "exit 3"]))
        .await
        .unwrap();
    println!("exit 3: {:?}", out.status);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    a.check().await.expect("the agent still answers");

    sandbox.shutdown().await.unwrap();
    let left: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .filter(|n| n.starts_with("kata-v"))
        .collect();
    assert!(left.is_empty(), "VMM threads left: {left:?}");
}
