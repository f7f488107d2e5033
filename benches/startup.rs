//! Sandbox start-up and container run time.
//!
//! * `sandbox/build_to_agent_ready`: `Sandbox::builder().build()` until the agent answered
//!   (and shutdown, outside the measurement as far as criterion allows: it is in the routine).
//! * `container/true_in_warm_sandbox`: create → start → exit → delete of `true` in a running
//!   sandbox.
//! * `container/runc_true`: the same `true` with runc directly on the host.
//!
//! At the end it prints the ratio of the two container medians, measured in this one run.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kata_benches::{busybox_rootfs, median, runc_bundle, runc_run};
use kata_sandbox::{ContainerSpec, Sandbox};

fn startup(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rootfs = busybox_rootfs();
    let root = tempfile::tempdir().unwrap();

    let mut g = c.benchmark_group("sandbox");
    g.sample_size(10).measurement_time(Duration::from_secs(60));
    g.bench_function("build_to_agent_ready", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let root = root.path().to_path_buf();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let sb = Sandbox::builder()
                        .memory_mib(256)
                        .root_dir(&root)
                        .build()
                        .await
                        .unwrap();
                    total += t.elapsed();
                    sb.shutdown().await.unwrap();
                }
                total
            }
        })
    });
    g.finish();

    let sandbox = rt
        .block_on(
            Sandbox::builder()
                .memory_mib(256)
                .root_dir(root.path())
                .build(),
        )
        .unwrap();
    let run_true = || async {
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(&rootfs).args(["true"]))
            .await
            .unwrap();
        assert_eq!(out.status, 0);
    };
    let bundle = root.path().join("runc-bundle");
    runc_bundle(&bundle, &rootfs, &["true"]).unwrap();
    let mut n = 0u64;
    let mut runc_once = || {
        n += 1;
        runc_run(
            &bundle,
            &format!("kata-rs-bench-{}-{n}", std::process::id()),
        );
    };

    let mut g = c.benchmark_group("container");
    g.sample_size(20);
    g.bench_function("true_in_warm_sandbox", |b| b.to_async(&rt).iter(run_true));
    g.bench_function("runc_true", |b| b.iter(&mut runc_once));
    g.finish();

    let kata = median(15, || rt.block_on(run_true()));
    let runc = median(15, &mut runc_once);
    let accel = sandbox.hypervisor().accelerator();
    println!(
        "\ncontainer true: kata-rs {:.1} ms, runc {:.1} ms, ratio {:.2}x (accelerator {:?}, medians of 15 in one run)",
        kata.as_secs_f64() * 1e3,
        runc.as_secs_f64() * 1e3,
        kata.as_secs_f64() / runc.as_secs_f64(),
        accel
    );
    rt.block_on(sandbox.shutdown()).unwrap();
}

criterion_group!(benches, startup);
criterion_main!(benches);
