//! Tier 2: `[runtime] enable_tracing` on the test backend (no VM, the real agent on this host):
//! the spans of a sandbox's boot and of a container's start reach an OTLP/HTTP receiver the
//! test runs, carrying the sandbox id, with `jaeger_user`/`jaeger_password` as basic
//! authentication. `vm_tracing.rs` does the same against a real guest.
//!
//! One test per binary: the exporter (and the subscriber this test leaves kata-sandbox to
//! install) is per process. Needs root and the kata-agent binary, as `host_sandbox.rs`.

use std::time::Duration;

use kata_sandbox::ContainerSpec;

#[path = "support/otlp.rs"]
mod otlp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_sandbox_exports_its_boot_and_container_spans_over_otlp() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the test backend needs root (namespaces, mounts)"
    );
    let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let receiver = otlp::Receiver::start();

    // jaeger_user/jaeger_password from the environment-free TOML path: the builder takes
    // the endpoint; the credentials come with a Kata configuration.
    let config: kata_sandbox::config::KataConfig = toml::from_str(&format!(
        "[hypervisor.host-agent]\npath = \"{}\"\n[runtime]\nenable_tracing = true\n\
         jaeger_endpoint = \"{}\"\njaeger_user = \"kata\"\njaeger_password = \"secret\"\n",
        agent.display(),
        receiver.url
    ))
    .expect("a configuration");
    let id = "traced-host";
    let sandbox = kata_sandbox::SandboxBuilder::from_kata_config(config)
        .expect("a builder")
        .id(id)
        .root_dir(tmp.path().join("run"))
        .agent_timeout(Duration::from_secs(20))
        .build()
        .await
        .expect("a traced sandbox starts");
    let out = sandbox
        .run(ContainerSpec::from_rootfs_dir(&rootfs).args(["echo", "traced"]))
        .await
        .expect("the container runs");
    assert_eq!(out.stdout_str().trim(), "traced");
    sandbox.shutdown().await.expect("shutdown");

    // Sandbox::shutdown flushed: everything is there now (a little slack for the receiver).
    receiver
        .wait_for("sandbox.shutdown", Duration::from_secs(5))
        .expect("the shutdown span was flushed by shutdown()");
    let spans = receiver.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {names:?}"))
    };
    // The boot phases, children of sandbox.start, each naming the sandbox.
    let start = find("sandbox.start");
    assert_eq!(
        start.attributes.get("sandbox_id").map(String::as_str),
        Some(id)
    );
    assert_eq!(start.service, "kata-rs");
    for phase in [
        "sandbox.host_resources",
        "vm.prepare",
        "vm.start",
        "vm.wait_ready",
        "agent.connect",
        "agent.CreateSandbox",
    ] {
        let s = find(phase);
        assert_eq!(s.trace_id, start.trace_id, "{phase}: another trace");
        assert!(
            otlp::ancestors(&spans, s)
                .iter()
                .any(|a| a.span_id == start.span_id),
            "{phase} is not under sandbox.start: {spans:#?}"
        );
        if !phase.starts_with("agent.Create") {
            assert_eq!(
                s.attributes.get("sandbox_id").map(String::as_str),
                Some(id),
                "{phase}"
            );
        }
    }
    // The container's start: CreateContainer and StartContainer agent calls under the
    // sandbox's container spans, which name the sandbox.
    for (step, call) in [
        ("sandbox.create_container", "agent.CreateContainer"),
        ("sandbox.start_container", "agent.StartContainer"),
    ] {
        let call_span = find(call);
        assert_eq!(
            call_span.attributes.get("rpc.method").map(String::as_str),
            call.strip_prefix("agent.")
        );
        let parents = otlp::ancestors(&spans, call_span);
        let parent = parents
            .iter()
            .find(|a| a.name == step)
            .unwrap_or_else(|| panic!("{call} is not under {step}: {parents:?}"));
        assert_eq!(
            parent.attributes.get("sandbox_id").map(String::as_str),
            Some(id)
        );
    }
    // jaeger_user/jaeger_password as basic authentication, on /v1/traces.
    let requests = receiver.requests();
    assert!(!requests.is_empty());
    for (path, auth) in &requests {
        assert_eq!(path, "/v1/traces");
        assert_eq!(auth.as_deref(), Some("Basic a2F0YTpzZWNyZXQ="));
    }
    kata_sandbox::telemetry::shutdown();
}
