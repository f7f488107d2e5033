//! Where a sandbox start's time goes (issue 15 item 1): `Sandbox::builder().build()` split into
//! phases, medians over `KATA_RS_PHASE_ROUNDS` boots (default 5; one when run by
//! `cargo test --benches`).
//!
//! The host-side phases are [`kata_sandbox::BootTimings`] (config and validation, host
//! resources with virtiofsd, the vsock helper, VMM spawn, agent connect, CreateSandbox). The
//! guest boot (VMM running to the agent's port answering) is split with the guest's own clock:
//!
//! * **firmware**: VMM running (QMP answers) to the kernel's clock start. The kernel's start
//!   in host time is the host time of a `GetMetrics` answer minus the guest's uptime in it:
//!   CPU 0's time in every mode of `/proc/stat` (10 ms ticks), corrected by the offset between
//!   `/proc/uptime` and that sum read together in a container afterwards (CPU time is
//!   accounted from later in the boot than the clock runs). Error: the call's half round
//!   trip, a tick, and the gap between the kernel log's clock and uptime (tens of ms).
//! * **kernel to /init**: the kernel log's timestamp of `Run /init as init process` (read
//!   with `dmesg` in a container; the guest kernel does not restrict dmesg).
//! * **/init to agent**: from there to the host's first successful dial of the agent port.
//!
//! `KATA_RS_PHASE_DMESG=1` prints each boot's kernel log too.
//!
//! `cargo bench -p kata-benches --bench boot_phases`; prints the split and writes
//! `boot_phases.json` for `make bench-report`.

#[path = "bench_out.rs"]
mod bench_out;

use std::time::{Duration, Instant};

use bench_out::{env_usize, host_load, ms, write_json};
use kata_benches::busybox_rootfs;
use kata_sandbox::{ContainerSpec, Sandbox};

/// The phases of one boot, in milliseconds, in order.
const PHASES: [&str; 9] = [
    "config and validation",
    "host resources",
    "helpers",
    "VMM spawn",
    "firmware",
    "kernel to /init",
    "/init to agent",
    "agent connect",
    "CreateSandbox",
];

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = env_usize("KATA_RS_PHASE_ROUNDS", if quick { 1 } else { 5 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rootfs = busybox_rootfs();
    let root = tempfile::tempdir().unwrap();
    let load_before = host_load();
    let mut all: Vec<Vec<f64>> = Vec::new();
    let mut totals = Vec::new();
    rt.block_on(async {
        for round in 0..rounds {
            let t = Instant::now();
            let sb = Sandbox::builder()
                .memory_mib(256)
                .root_dir(root.path())
                .build()
                .await
                .expect("a sandbox");
            let total = t.elapsed();
            let bt = sb.boot_timings();
            let h0 = t.elapsed();
            let metrics = sb.metrics().await;
            let h1 = t.elapsed();
            let cpu0 = cpu0_seconds(&metrics).expect("the guest's CPU time in GetMetrics");
            let out = sb
                .run(ContainerSpec::from_rootfs_dir(&rootfs).args([
                    "sh",
                    "-c",
                    "cat /proc/uptime /proc/stat; dmesg",
                ]))
                .await
                .expect("uptime, stat and dmesg in the sandbox");
            // CPU 0's accounted time starts later than the kernel's clock: the offset, read
            // in one `cat` (both files within microseconds), corrects the GetMetrics figure.
            let offset = uptime_offset(&out.stdout_str()).unwrap_or(0.0);
            let uptime = cpu0 + offset;
            let kernel_start = (h0 + h1) / 2 - Duration::from_secs_f64(uptime);
            let init_at = run_init_timestamp(&out.stdout_str());
            if std::env::var_os("KATA_RS_PHASE_DMESG").is_some() {
                println!("{}", out.stdout_str());
            }
            sb.shutdown().await.unwrap();

            let host = bt.phases();
            let v = |d: Duration| ms(d);
            let vmm_running = bt.validation + bt.vmm_running;
            let answering = bt.validation + bt.guest_answering;
            let firmware = ms(kernel_start) - ms(vmm_running);
            let (to_init, init_to_agent) = match init_at {
                Some(s) => (s * 1e3, ms(answering) - ms(kernel_start) - s * 1e3),
                None => (f64::NAN, ms(answering) - ms(kernel_start)),
            };
            let row = vec![
                v(host[0].1),
                v(host[1].1),
                v(host[2].1),
                v(host[3].1),
                firmware,
                to_init,
                init_to_agent,
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
        }),
    );
}

/// The guest's uptime in seconds: CPU 0's time in every mode (`guest` modes are inside
/// `user` already) from the `kata_guest_cpu_seconds_total` lines of the metrics text.
fn cpu0_seconds(metrics: &str) -> Option<f64> {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut sum = 0.0;
    let mut seen = false;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("kata_guest_cpu_seconds_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        if !labels.contains("cpu=\"cpu0\"") {
            continue;
        }
        if MODES
            .iter()
            .any(|m| labels.contains(&format!("mode=\"{m}\"")))
        {
            sum += value.trim().parse::<f64>().ok()?;
            seen = true;
        }
    }
    seen.then_some(sum)
}

/// `/proc/uptime` minus CPU 0's time in `/proc/stat` (USER_HZ = 100), from one `cat` of both.
fn uptime_offset(text: &str) -> Option<f64> {
    let uptime: f64 = text
        .lines()
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let cpu0 = text.lines().find(|l| l.starts_with("cpu0 "))?;
    let ticks: f64 = cpu0
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    Some(uptime - ticks / 100.0)
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
