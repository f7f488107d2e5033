//! Tier 2: [`Sandbox::metrics`] on the test backend (`[hypervisor.host-agent]`: the real
//! kata-agent on this host, no VM). The "VM"'s host process is the agent, and the guest's
//! `/proc` is the host's, so this checks the text and where each part comes from; the figures
//! of a real guest are checked in `vm_sandbox.rs`.
//!
//! Needs root and the kata-agent binary of this build (see `kata_testkit::agent_binary`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kata_sandbox::metrics::{parse, Line};
use kata_sandbox::{ContainerSpec, HypervisorConfig, HypervisorType, Sandbox};

struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    agent: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root (namespaces, mounts)"
        );
        let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
        Fixture { tmp, rootfs, agent }
    }

    async fn sandbox(&self, id: &str) -> Sandbox {
        let config = HypervisorConfig {
            path: self.agent.display().to_string(),
            ..HypervisorConfig::default()
        };
        Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(config)
            .id(id)
            .root_dir(self.tmp.path().join("run"))
            .agent_timeout(Duration::from_secs(20))
            .build()
            .await
            .expect("sandbox starts")
    }
}

/// The value of the first sample named `name` whose labels include `labels`.
fn value(lines: &[Line], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    lines.iter().find_map(|l| match l {
        Line::Sample {
            name: n,
            labels: have,
            value,
        } if n == name
            && labels
                .iter()
                .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v)) =>
        {
            Some(*value)
        }
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_runtime_the_vm_processes_the_guest_and_boot_timings() {
    let f = Fixture::new();
    let sb = f.sandbox("metrics").await;
    let c = sb
        .create_container(ContainerSpec::from_rootfs_dir(&f.rootfs).args(["sleep", "600"]))
        .await
        .unwrap();
    c.start().await.unwrap();

    let text = sb.metrics().await;
    let lines = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&lines, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    // The runtime's process (this test).
    assert!(get("kata_shim_threads", &[]) >= 2.0);
    assert!(get("kata_shim_resident_memory_bytes", &[]) > 0.0);
    // The "VM"'s host process: the agent, by pid.
    let agent_pid = sb.host_pids().last().copied().unwrap().to_string();
    assert!(get("kata_hypervisor_threads", &[("pid", &agent_pid)]) >= 1.0);
    assert!(get("kata_hypervisor_open_fds", &[("pid", &agent_pid)]) >= 3.0);
    get("kata_hypervisor_cpu_seconds_total", &[("pid", &agent_pid)]);
    // The guest's, through GetMetrics.
    assert_eq!(get("kata_guest_up", &[]), 1.0, "{text}");
    assert_eq!(get("kata_guest_metrics_dropped_lines", &[]), 0.0);
    assert!(get("kata_guest_memory_used_bytes", &[]) > 0.0);
    assert!(get("kata_guest_meminfo_bytes", &[("item", "MemTotal")]) > 0.0);
    get(
        "kata_guest_cpu_seconds_total",
        &[("cpu", "cpu"), ("mode", "user")],
    );
    get("kata_guest_load", &[("period", "1m")]);
    get("kata_guest_network_total", &[("interface", "lo")]);
    assert!(get("kata_agent_threads", &[]) >= 1.0);
    // Boot timings and the container count.
    assert!(get("kata_sandbox_boot_seconds", &[("step", "ready")]) > 0.0);
    // Every phase boundary, in order (the host-agent backend starts no vsock helper).
    let steps = [
        "host_resources",
        "helpers_started",
        "vmm_running",
        "vm_started",
        "guest_answering",
        "agent_connected",
        "ready",
    ]
    .map(|step| get("kata_sandbox_boot_seconds", &[("step", step)]));
    assert!(steps[0] > 0.0, "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    assert_eq!(steps[1], steps[0], "no helper: {steps:?}");
    // build() validated the configuration before the start's clock ran.
    assert!(get("kata_sandbox_boot_seconds", &[("step", "validation")]) > 0.0);
    let phases = sb.boot_timings().phases();
    let sum: std::time::Duration = phases.iter().map(|p| p.1).sum();
    assert_eq!(sum, sb.boot_timings().total(), "{phases:?}");
    assert_eq!(get("kata_sandbox_containers", &[]), 1.0);
    // Every sample's family is typed before it.
    let mut typed = std::collections::HashSet::new();
    for l in &lines {
        match l {
            Line::Type { name, .. } => assert!(typed.insert(name.clone()), "{name} twice"),
            Line::Sample { name, .. } => assert!(typed.contains(name), "{name} untyped"),
            Line::Help { .. } => {}
        }
    }

    c.kill(kata_sandbox::Signal::KILL).await.unwrap();
    c.wait().await.unwrap();
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
}

/// A hung guest (the agent stopped) answers within the timeout with what the host knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_guest_answers_within_the_timeout_with_what_the_host_knows() {
    let f = Fixture::new();
    let sb = f.sandbox("metrics-hung").await;
    let pid = *sb.host_pids().last().unwrap();
    let agent = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let text = sb.metrics_within(Duration::from_secs(1)).await;
    let took = t0.elapsed();
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let lines = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value(&lines, "kata_guest_up", &[]), Some(0.0), "{text}");
    assert!(value(&lines, "kata_guest_memory_used_bytes", &[]).is_none());
    assert!(
        value(
            &lines,
            "kata_hypervisor_threads",
            &[("pid", &pid.to_string())]
        )
        .is_some(),
        "{text}"
    );
    assert!(value(&lines, "kata_shim_threads", &[]).is_some());
    // It answers again once the guest does.
    let text = sb.metrics().await;
    assert_eq!(
        value(&parse(&text).unwrap(), "kata_guest_up", &[]),
        Some(1.0)
    );
    sb.shutdown().await.unwrap();
}
