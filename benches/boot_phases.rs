//! Where a sandbox start's time goes (issue 15 item 1): `Sandbox::builder().build()` split into
//! phases, medians over `KATA_RS_PHASE_ROUNDS` boots (default 5; one when run by
//! `cargo test --benches`).
//!
//! The host-side phases are [`kata_sandbox::BootTimings`] (config and validation, host
//! resources with virtiofsd, the vsock helper, VMM spawn, agent connect, CreateSandbox). The
//! guest boot (VMM running to the agent's port answering) is split with the guest's own clock:
//!
//! * **kernel to /init**: the kernel log's timestamp of `Run /init as init process` (read
//!   with `dmesg` in a container; the guest kernel does not restrict dmesg). Exact, on the
//!   guest's clock.
//! * **firmware + agent start**: the rest of the guest boot (VMM running to the host's first
//!   successful dial of the agent port, which polls every 50 ms): SeaBIOS, the kernel's
//!   decompression, and `/init` (the agent) until it serves. The host cannot place the
//!   kernel's start on its clock precisely enough to split these two (the guest's uptime read
//!   back through a container or `GetMetrics` was off by hundreds of ms under load).
//!
//! `KATA_RS_PHASE_DMESG=1` prints each boot's kernel log too; `KATA_RS_PHASE_KERNEL_PARAMS`
//! appends guest kernel parameters (to compare command lines, or `initcall_debug`).
//!
//! `KATA_RS_BENCH_FIRMWARE=/usr/share/seabios/bios-256k.bin` boots SeaBIOS (the reference for
//! kata-rs' qboot choice, `kata_hypervisor::qemu::firmware`).
//!
//! `cargo bench -p kata-benches --bench boot_phases`; prints the split and writes
//! `boot_phases.json` for `make bench-report`.

#[path = "bench_out.rs"]
mod bench_out;

use std::time::{Duration, Instant};

use bench_out::{env_count, host_load, ms, with_bench_settings, write_json};
use kata_benches::busybox_rootfs;
use kata_sandbox::{ContainerSpec, Sandbox};

/// The phases of one boot, in milliseconds, in order.
const PHASES: [&str; 8] = [
    "config and validation",
    "host resources",
    "helpers",
    "VMM spawn",
    "firmware + agent start",
    "kernel to /init",
    "agent connect",
    "CreateSandbox",
];

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = env_count("KATA_RS_PHASE_ROUNDS", if quick { 1 } else { 5 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rootfs = busybox_rootfs();
    let root = tempfile::tempdir().unwrap();
    // Extra guest kernel parameters, to compare command lines (`initcall_debug` puts every
    // initcall's duration in the kernel log `KATA_RS_PHASE_DMESG` prints).
    let kernel_params = std::env::var("KATA_RS_PHASE_KERNEL_PARAMS").unwrap_or_default();
    let load_before = host_load();
    let mut all: Vec<Vec<f64>> = Vec::new();
    let mut totals = Vec::new();
    rt.block_on(async {
        for round in 0..rounds {
            let t = Instant::now();
            let sb = with_bench_settings(
                Sandbox::builder()
                    .memory_mib(256)
                    .root_dir(root.path())
                    .kernel_params(&kernel_params),
            )
            .build()
            .await
            .expect("a sandbox");
            let total = t.elapsed();
            let bt = sb.boot_timings();
            let out = sb
                .run(ContainerSpec::from_rootfs_dir(&rootfs).args(["dmesg"]))
                .await
                .expect("dmesg in the sandbox");
            let init_at = run_init_timestamp(&out.stdout_str());
            if std::env::var_os("KATA_RS_PHASE_DMESG").is_some() {
                println!("{}", out.stdout_str());
            }
            sb.shutdown().await.unwrap();

            let host = bt.phases();
            let v = |d: Duration| ms(d);
            let vmm_running = bt.validation + bt.vmm_running;
            let answering = bt.validation + bt.guest_answering;
            // VMM running to the agent's port answering (host clock) less kernel to /init
            // (the guest's clock): firmware, kernel decompression and the agent's start.
            let guest = ms(answering) - ms(vmm_running);
            let to_init = init_at.map_or(f64::NAN, |s| s * 1e3);
            let rest = guest - to_init.max(0.0);
            let row = vec![
                v(host[0].1),
                v(host[1].1),
                v(host[2].1),
                v(host[3].1),
                rest,
                to_init,
                v(host[5].1),
                v(host[6].1),
            ];
            println!(
                "boot_phases: round {}: total {:.0} ms: {}",
                round + 1,
                ms(total),
                PHASES
                    .iter()
                    .zip(&row)
                    .map(|(n, v)| format!("{n} {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            all.push(row);
            totals.push(ms(total));
        }
    });
    let median_of = |i: usize| {
        let mut v: Vec<f64> = all.iter().map(|r| r[i]).filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let medians: Vec<f64> = (0..PHASES.len()).map(median_of).collect();
    let mut t = totals.clone();
    t.sort_by(f64::total_cmp);
    println!(
        "boot_phases: median of {rounds} (ms): {}; build() total {:.0}",
        PHASES
            .iter()
            .zip(&medians)
            .map(|(n, v)| format!("{n} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        t[t.len() / 2]
    );
    // `cargo test --benches` (one quick round) leaves a real run's figures alone.
    if quick {
        println!("boot_phases: a quick run (no --bench): figures not written");
        return;
    }
    write_json(
        "boot_phases",
        &serde_json::json!({
            "phases": PHASES,
            "median_ms": medians,
            "rounds_ms": all,
            "total_ms": totals,
            "host_before": load_before,
            "host_after": host_load(),
            "memory_mib": 256,
            "extra_kernel_params": kernel_params,
        }),
    );
}

/// The kernel log's timestamp (seconds since the kernel's clock start) of starting `/init`.
fn run_init_timestamp(dmesg: &str) -> Option<f64> {
    dmesg.lines().find_map(|l| {
        if !l.contains("Run /init as init process") {
            return None;
        }
        let inner = l.trim_start().strip_prefix('[')?.split(']').next()?;
        inner.trim().parse().ok()
    })
}
