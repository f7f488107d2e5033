//! Tier 2: a pod's containers share what Kubernetes says they share, on the test backend (the
//! real `kata-agent` on this host in private namespaces, no VM): the pod's hostname, one IPC
//! namespace (Kata's agent's shared namespaces), and the PID namespace of the pod's first
//! container when a container's spec names one (`sandbox_pidns`). A container with a hostname
//! of its own keeps it; a lone container sees the sandbox's (its id's first 12 characters, as
//! `ctr run` without `--hostname` has always seen).
//!
//! Needs root and the kata-agent binary of this build (`kata_testkit::agent_binary`).

use std::path::PathBuf;
use std::time::Duration;

use kata_sandbox::{ContainerSpec, HypervisorConfig, HypervisorType, Sandbox, SandboxBuilder};
use kata_testkit::leaks::{mounts_under, processes_mentioning};
use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

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

    fn root(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    fn builder(&self, id: &str) -> SandboxBuilder {
        let config = HypervisorConfig {
            path: self.agent.display().to_string(),
            ..HypervisorConfig::default()
        };
        Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(config)
            .id(id)
            .root_dir(self.root())
            .agent_timeout(Duration::from_secs(20))
    }

    /// A container as containerd's CRI makes an app container of a pod: no hostname of its
    /// own, the pause container's IPC and UTS namespaces named by host paths, and its PID
    /// namespace too when `share_pid` (`shareProcessNamespace`).
    fn pod_container(&self, id: &str, args: &[&str], share_pid: bool) -> ContainerSpec {
        let ns = |t, path: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(t);
            if let Some(p) = path {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        let mut spec = Spec::default();
        spec.set_hostname(None);
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(vec![
                    ns(
                        LinuxNamespaceType::Pid,
                        share_pid.then_some("/proc/1/ns/pid"),
                    ),
                    ns(LinuxNamespaceType::Ipc, Some("/proc/1/ns/ipc")),
                    ns(LinuxNamespaceType::Uts, Some("/proc/1/ns/uts")),
                    ns(LinuxNamespaceType::Mount, None),
                    ns(LinuxNamespaceType::Network, Some("/proc/1/ns/net")),
                ])
                .build()
                .unwrap(),
        ));
        ContainerSpec::from_oci(spec, &self.rootfs)
            .id(id)
            .args(args.iter().copied())
    }

    fn assert_nothing_left(&self, id: &str) {
        let dir = self.root().join(id);
        assert!(!dir.exists(), "{} is left", dir.display());
        let mounts = mounts_under(&self.root());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let procs = processes_mentioning(&dir.display().to_string(), "host_pod");
        assert!(procs.is_empty(), "processes left: {procs:?}");
    }
}

/// What `sh -c <script>` prints in a new container of `sb`, which must exit 0.
async fn output(sb: &Sandbox, spec: ContainerSpec) -> String {
    let out = sb.run(spec).await.unwrap();
    assert!(out.status.success(), "{}: {}", out.status, out.stderr_str());
    out.stdout_str().trim().to_owned()
}

#[tokio::test]
async fn a_pods_containers_share_its_hostname_ipc_and_on_request_its_pid_namespace() {
    let f = Fixture::new();
    let sb = f
        .builder("pod-shared-ns")
        .hostname("kt-pod")
        .build()
        .await
        .expect("sandbox starts");
    // The pod's first container (the pause container's place) sets an IPC sysctl: it lands
    // in the pod's IPC namespace, as a Kubernetes pod's sysctls do.
    let mut first_spec = Spec::default();
    first_spec.set_hostname(Some("kt-pod".into()));
    first_spec.set_linux(Some(
        LinuxBuilder::default()
            .sysctl(std::collections::HashMap::from([(
                "kernel.msgmax".to_string(),
                "12345".to_string(),
            )]))
            .build()
            .unwrap(),
    ));
    let first = sb
        .create_container(
            ContainerSpec::from_oci(first_spec, &f.rootfs)
                .id("pause")
                .args(["sleep", "600"]),
        )
        .await
        .unwrap();
    first.start().await.unwrap();

    let script =
        "hostname; cat /proc/sys/kernel/msgmax; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts";
    let first_out = {
        let mut p = first
            .exec(kata_sandbox::ProcessSpec::new(["sh", "-c", script]))
            .await
            .unwrap();
        let out = p.output().await.unwrap();
        assert!(out.status.success(), "{}", out.stderr_str());
        out.stdout_str().trim().to_owned()
    };
    let app = output(&sb, f.pod_container("app", &["sh", "-c", script], false)).await;
    assert_eq!(
        app, first_out,
        "the app container sees another hostname or IPC namespace"
    );
    let lines: Vec<&str> = app.lines().collect();
    assert_eq!(&lines[..2], ["kt-pod", "12345"], "{app}");
    let own = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    assert_ne!(
        lines[2],
        own("ipc").to_string_lossy(),
        "the host's IPC namespace"
    );

    // Its own PID namespace unless it names the pod's: then the pod's first container is in
    // it (its init is that container's `sleep`).
    let alone = output(
        &sb,
        f.pod_container(
            "solo",
            &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"],
            false,
        ),
    )
    .await;
    assert!(
        alone.starts_with("sh"),
        "own PID namespace: pid 1 is {alone:?}"
    );
    let shared = output(
        &sb,
        f.pod_container(
            "peer",
            &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"],
            true,
        ),
    )
    .await;
    assert_eq!(
        shared, "sleep 600",
        "the pod's PID namespace: pid 1 is {shared:?}"
    );

    // A container that asks for a hostname of its own keeps it, and still the pod's IPC.
    let named = output(
        &sb,
        f.pod_container(
            "named",
            &["sh", "-c", "hostname; cat /proc/sys/kernel/msgmax"],
            false,
        )
        .hostname("elsewhere"),
    )
    .await;
    assert_eq!(named, "elsewhere\n12345");

    first.kill(kata_sandbox::Signal::KILL).await.unwrap();
    first.wait().await.unwrap();
    first.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("pod-shared-ns");
}

#[tokio::test]
async fn a_lone_container_without_a_hostname_sees_the_sandbox_ids_prefix() {
    let f = Fixture::new();
    let id = "0123456789abcdef-lone";
    let sb = f.builder(id).build().await.expect("sandbox starts");
    let out = output(
        &sb,
        ContainerSpec::from_rootfs_dir(&f.rootfs).args(["hostname"]),
    )
    .await;
    assert_eq!(out, "0123456789ab");
    sb.shutdown().await.unwrap();
    f.assert_nothing_left(id);
}

#[tokio::test]
async fn a_hostname_the_guest_cannot_take_is_refused_by_name() {
    let f = Fixture::new();
    let e = f
        .builder("bad-hostname")
        .hostname("h".repeat(65))
        .finish()
        .unwrap_err();
    assert!(e.to_string().contains("hostname"), "{e}");
    assert!(!f.root().join("bad-hostname").exists());
}
