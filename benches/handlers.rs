//! Start-to-exit of a trivial workload with each runtime handler, side by side in one run,
//! with runc on the same host as the reference.
//!
//! * `handlers/wasm_container_warm`: create → start → exit → delete of a WASI module whose
//!   `_start` returns, in a running `wasm_container` sandbox (wasmtime in this process; the
//!   module is compiled at each create).
//! * `handlers/wasm_container_cold`: the same with the sandbox started and shut down around it.
//! * `handlers/virt_container_host_agent_warm`: `true` (busybox) through the guest agent of a
//!   running `virt_container` sandbox on the test backend (the agent on this host, no VM: the
//!   handler's own cost; a VM's is `startup`'s `container/true_in_warm_sandbox`).
//! * `handlers/linux_container_warm`: `true` (busybox) on the host by libcontainer in a running
//!   `linux_container` sandbox (a helper process per container; no VM).
//! * `handlers/linux_container_cold`: the same with the sandbox started and shut down around it.
//! * `handlers/runc_true`: `true` with runc directly on the host.
//!
//! At the end of `cargo bench -p kata-benches --bench handlers` it prints the medians of 15
//! runs of each, measured in this one run (under `cargo test` each case runs once). Needs root;
//! the `virt_container` row needs the kata-agent binary of this build, the `linux_container`
//! rows kata-sandbox's `kata-linux-container` helper beside the bench's target directory
//! (`cargo build --release -p kata-sandbox --features linux --bin kata-linux-container` before
//! `cargo bench`; a workspace build makes it for `cargo test`).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_benches::{busybox_rootfs, median, runc_bundle, runc_run};
use kata_sandbox::{
    ContainerSpec, HypervisorConfig, HypervisorType, RuntimeHandlerKind, Sandbox, SandboxBuilder,
};

/// A WASI command that does nothing: `_start` returns (exit code 0).
const TRUE_WAT: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// Runs a container to its end and checks it succeeded.
async fn run_ok(sb: &Sandbox, spec: ContainerSpec) {
    let out = sb.run(spec).await.unwrap();
    assert!(out.status.success(), "{}", out.status);
}

fn handlers(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = tempfile::tempdir().unwrap();
    let wasm_rootfs = root.path().join("wasm-rootfs");
    std::fs::create_dir_all(&wasm_rootfs).unwrap();
    std::fs::write(
        wasm_rootfs.join("true.wasm"),
        wat::parse_str(TRUE_WAT).unwrap(),
    )
    .unwrap();
    let wasm_builder = || {
        Sandbox::builder()
            .runtime_handler(RuntimeHandlerKind::WasmContainer)
            .root_dir(root.path())
    };
    let wasm = rt.block_on(wasm_builder().build()).unwrap();
    let wasm_true = || async {
        let out = wasm
            .run(ContainerSpec::from_rootfs_dir(&wasm_rootfs).args(["/true.wasm"]))
            .await
            .unwrap();
        assert!(out.status.success(), "{}", out.status);
    };
    let wasm_cold = || async {
        let sb = wasm_builder().build().await.unwrap();
        let out = sb
            .run(ContainerSpec::from_rootfs_dir(&wasm_rootfs).args(["/true.wasm"]))
            .await
            .unwrap();
        assert!(out.status.success(), "{}", out.status);
        sb.shutdown().await.unwrap();
    };

    let rootfs = busybox_rootfs();
    let virt = kata_testkit::agent_binary().ok().map(|agent| {
        let b: SandboxBuilder = Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(HypervisorConfig {
                path: agent.display().to_string(),
                ..HypervisorConfig::default()
            })
            .agent_timeout(Duration::from_secs(20))
            .root_dir(root.path());
        rt.block_on(b.build()).unwrap()
    });
    let virt_spec = || ContainerSpec::from_rootfs_dir(&rootfs).args(["true"]);
    let linux_builder = || {
        Sandbox::builder()
            .runtime_handler(RuntimeHandlerKind::LinuxContainer)
            .root_dir(root.path())
    };
    let linux = match rt.block_on(linux_builder().build()) {
        Ok(sb) => Some(sb),
        Err(e) => {
            eprintln!("handlers: no linux_container row: {e}");
            None
        }
    };
    let linux_cold = || async {
        let sb = linux_builder().build().await.unwrap();
        run_ok(&sb, virt_spec()).await;
        sb.shutdown().await.unwrap();
    };
    let bundle = root.path().join("runc-bundle");
    let runc = runc_bundle(&bundle, &rootfs, &["true"]).is_ok();
    let mut n = 0u64;
    let mut runc_once = || {
        n += 1;
        runc_run(
            &bundle,
            &format!("kata-rs-bench-handlers-{}-{n}", std::process::id()),
        );
    };

    let mut g = c.benchmark_group("handlers");
    g.sample_size(20);
    g.bench_function("wasm_container_warm", |b| b.to_async(&rt).iter(wasm_true));
    g.bench_function("wasm_container_cold", |b| b.to_async(&rt).iter(wasm_cold));
    if let Some(sb) = &virt {
        g.bench_function("virt_container_host_agent_warm", |b| {
            b.to_async(&rt).iter(|| run_ok(sb, virt_spec()))
        });
    }
    if let Some(sb) = &linux {
        g.bench_function("linux_container_warm", |b| {
            b.to_async(&rt).iter(|| run_ok(sb, virt_spec()))
        });
        g.bench_function("linux_container_cold", |b| b.to_async(&rt).iter(linux_cold));
    }
    if runc {
        g.bench_function("runc_true", |b| b.iter(&mut runc_once));
    }
    g.finish();

    // `cargo bench` passes `--bench`; under `cargo test --all-targets` (make test) criterion
    // ran each case once above, a smoke test: the medians are for a benchmark run only.
    if !std::env::args().any(|a| a == "--bench") {
        rt.block_on(wasm.shutdown()).unwrap();
        if let Some(sb) = virt {
            rt.block_on(sb.shutdown()).unwrap();
        }
        if let Some(sb) = linux {
            rt.block_on(sb.shutdown()).unwrap();
        }
        return;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut line = format!(
        "\nstart-to-exit, medians of 15 in one run: wasm_container warm {:.2} ms, cold {:.2} ms",
        ms(median(15, || rt.block_on(wasm_true()))),
        ms(median(15, || rt.block_on(wasm_cold()))),
    );
    if let Some(sb) = &virt {
        let t = median(15, || rt.block_on(run_ok(sb, virt_spec())));
        line.push_str(&format!(
            ", virt_container (host-agent, no VM) {:.2} ms",
            ms(t)
        ));
    }
    if let Some(sb) = &linux {
        line.push_str(&format!(
            ", linux_container warm {:.2} ms, cold {:.2} ms",
            ms(median(15, || rt.block_on(run_ok(sb, virt_spec())))),
            ms(median(15, || rt.block_on(linux_cold()))),
        ));
    }
    if runc {
        line.push_str(&format!(", runc {:.2} ms", ms(median(15, &mut runc_once))));
    }
    println!("{line}");
    rt.block_on(wasm.shutdown()).unwrap();
    if let Some(sb) = virt {
        rt.block_on(sb.shutdown()).unwrap();
    }
    if let Some(sb) = linux {
        rt.block_on(sb.shutdown()).unwrap();
    }
}

criterion_group!(benches, handlers);
criterion_main!(benches);
