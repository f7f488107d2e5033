//! Memory per pod and starts per second (issue 15 items 3 and 4), measured in one run.
//!
//! * **Memory**: `KATA_RS_DENSITY_PODS` (default `1,20`) busybox sandboxes of 256 MiB started
//!   one after another and left idle `KATA_RS_DENSITY_SETTLE_S` seconds (default 3); then the
//!   host PSS (`/proc/<pid>/smaps_rollup`) of every process whose command line names a
//!   sandbox's directory (QEMU, vhost-device-vsock, virtiofsd) plus this process (the runtime,
//!   which holds every sandbox here) divided by the pod count; and the VMM's own overhead:
//!   QEMU's RSS minus the resident part of its guest RAM mapping (what the guest touched).
//! * **Starts per second**: for each N of `KATA_RS_STARTS_N` (default `1,2,4,8,16`, capped at
//!   `KATA_RS_STARTS_MAX`, default 8: TCG guests on a shared 2-core host), N `build()`s at
//!   once; starts/s = N / time until the last is ready, p50/p99 of the N latencies, and the
//!   ratio to `min(N, cores)` × the single-start rate (the target is 0.8); the CPU
//!   seconds per start, in all and by process (QEMU, vhost-device-vsock, virtiofsd, the
//!   runtime). N = 1 runs `KATA_RS_STARTS_SINGLE` times (default 5): the kata-rs start
//!   latency distribution.
//! * **runc reference**: `KATA_RS_RUNC_RUNS` (default 20) `runc run` of `true` in the same
//!   rootfs, timed the same way.
//!
//! **Memory levers** (issue 15 item 3), compared in the same run: `KATA_RS_DENSITY_CONFIGS`
//! (default `default,legacy`; `default` in a quick run) lists configurations separated by
//! commas, each measured at every pod count, interleaved (`KATA_RS_DENSITY_ROUNDS` times,
//! default 1), with the median `build()` time of its pods beside its memory. A configuration is `+`-joined tokens applied in order:
//! `default` (the builder as it comes), `legacy` (the defaults before the levers:
//! `tcg_tb_size = 0`, QEMU's own translation buffer, and `reclaim_guest_freed_memory = false`),
//! `tb=<MiB>` (`tcg_tb_size`, with `default_maxvcpus = default_vcpus`, without which it is not applied), `reclaim` / `noreclaim` (`reclaim_guest_freed_memory`), `image`
//! (Kata's rootfs image on an NVDIMM with DAX instead of the initramfs) and `nothp` (the VM
//! processes started without transparent huge pages: `PR_SET_THP_DISABLE`, which they inherit
//! from this process), `arenas=<n>` (the VM processes started with `MALLOC_ARENA_MAX=<n>`:
//! glibc's malloc arenas) and `order=<n>` (the guest kernel's
//! `page_reporting.page_reporting_order`: the smallest free block reported, 2^n pages; the
//! kernel's default is 9, 2 MiB), `pvh` (QEMU boots the ELF `vmlinux` beside the bzImage through its
//! PVH entry) and `env=<NAME>=<value>` (the VM processes started with that variable, e.g.
//! `env=GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072`) and `initrd=<path>` (the guests boot
//! that initramfs instead of the manifest's: another agent build, say). Each configuration also prints
//! QEMU's anonymous memory: in all, heap and unnamed mappings, in its files, in huge pages. E.g. `KATA_RS_DENSITY_CONFIGS=legacy,legacy+tb=32,legacy+reclaim,default`.
//! `density.json`'s `memory` holds the first configuration's figures, `memory_configs` all.
//!
//! `KATA_RS_BENCH_FIRMWARE` and `KATA_RS_BENCH_AGENT_TIMEOUT_S` set the sandboxes' firmware and
//! agent timeout (`bench_out::with_bench_settings`). The runtime's boot admission (kata-sandbox:
//! at most `KATA_RS_BOOT_SLOTS` guests booting at once, the CPU count under TCG) applies as in
//! production; `KATA_RS_BOOT_SLOTS=0` is the reference without it (every start boots at once).
//! QEMU's CPU is split into its vCPU threads and the rest (main loop, RCU, I/O).
//!
//! `cargo bench -p kata-benches --bench density`; prints the figures and writes
//! `density.json` for `make bench-report`. `cargo test --benches` runs one pod and N = 1.

#[path = "bench_out.rs"]
mod bench_out;

use std::time::{Duration, Instant};

use bench_out::{
    env_count, env_usize, exec_anon_rss_kib, guest_ram_rss_kib, host_load, ms, percentile,
    pss_rss_kib, sandbox_processes, with_bench_settings, write_json,
};
use kata_benches::{busybox_rootfs, runc_bundle, runc_run};
use kata_sandbox::{Sandbox, SandboxBuilder};

const GUEST_MIB: u32 = 256;

/// One configuration of `KATA_RS_DENSITY_CONFIGS`: the memory levers it sets on top of the
/// builder's defaults (`None`: left as they are).
#[derive(Debug, Clone)]
struct Levers {
    name: String,
    tcg_tb_size: Option<u32>,
    reclaim: Option<bool>,
    image: bool,
    no_thp: bool,
    malloc_arenas: Option<u32>,
    reporting_order: Option<u32>,
    pvh: bool,
    initrd: Option<String>,
    env: Vec<(String, String)>,
}

impl Levers {
    /// Parses one configuration (`legacy+tb=32`); an unknown token stops the bench naming it.
    fn parse(spec: &str) -> Levers {
        let mut l = Levers {
            name: spec.to_string(),
            tcg_tb_size: None,
            reclaim: None,
            image: false,
            no_thp: false,
            malloc_arenas: None,
            reporting_order: None,
            pvh: false,
            initrd: None,
            env: Vec::new(),
        };
        for token in spec.split('+').map(str::trim) {
            match token {
                "default" => {}
                "legacy" => {
                    l.tcg_tb_size = Some(0);
                    l.reclaim = Some(false);
                }
                "reclaim" => l.reclaim = Some(true),
                "noreclaim" => l.reclaim = Some(false),
                "image" => l.image = true,
                "nothp" => l.no_thp = true,
                "pvh" => l.pvh = true,
                t if t.starts_with("initrd=") => {
                    let path = &t["initrd=".len()..];
                    assert!(
                        std::path::Path::new(path).is_file(),
                        "KATA_RS_DENSITY_CONFIGS: `{t}` in `{spec}`: no such file"
                    );
                    l.initrd = Some(path.to_string());
                }
                t if t.starts_with("env=") => match t["env=".len()..].split_once('=') {
                    Some((k, v)) if !k.is_empty() => l.env.push((k.to_string(), v.to_string())),
                    _ => panic!("KATA_RS_DENSITY_CONFIGS: `{t}` in `{spec}`: env=<NAME>=<value>"),
                },
                t => match (
                    t.strip_prefix("tb=").map(str::parse),
                    t.strip_prefix("arenas=").map(str::parse),
                    t.strip_prefix("order=").map(str::parse),
                ) {
                    (Some(Ok(mib)), _, _) => l.tcg_tb_size = Some(mib),
                    (_, Some(Ok(n)), _) => l.malloc_arenas = Some(n),
                    (_, _, Some(Ok(n))) => l.reporting_order = Some(n),
                    _ => panic!(
                        "KATA_RS_DENSITY_CONFIGS: unknown token `{t}` in `{spec}` (known: default, \
                         legacy, tb=<MiB>, reclaim, noreclaim, image, nothp, pvh, arenas=<n>, order=<n>, \
                         env=<NAME>=<value>, initrd=<path>)"
                    ),
                },
            }
        }
        l
    }

    /// `builder` with these levers set.
    fn apply(&self, builder: SandboxBuilder) -> SandboxBuilder {
        let mut hv = builder.config().clone();
        if let Some(mib) = self.tcg_tb_size {
            hv.tcg_tb_size = mib;
            // A bounded buffer is applied only where vCPUs cannot be hot-plugged
            // (`qemu::cmdline::tcg_accel`): these pods never are.
            if mib > 0 {
                hv.default_maxvcpus = hv.default_vcpus;
            }
        }
        if let Some(on) = self.reclaim {
            hv.reclaim_guest_freed_memory = on;
        }
        if let Some(order) = self.reporting_order {
            hv.kernel_params = format!(
                "{} page_reporting.page_reporting_order={order}",
                hv.kernel_params
            );
        }
        if self.image {
            let image = kata_hypervisor::GuestManifest::load_default()
                .expect("the guest manifest (make guest)")
                .image
                .expect("the guest manifest has no `image`: run `make guest` (guest/image.sh)");
            hv.image = image.display().to_string();
            hv.initrd.clear();
        }
        if let Some(initrd) = &self.initrd {
            hv.initrd = initrd.clone();
        }
        if self.pvh {
            // The ELF beside the bzImage (guest/build.sh links both into the guest directory).
            let kernel = kata_hypervisor::GuestManifest::load_default()
                .expect("the guest manifest (make guest)")
                .kernel
                .with_file_name("vmlinux");
            assert!(kernel.exists(), "{}: run `make guest`", kernel.display());
            hv.kernel = kernel.display().to_string();
        }
        builder.hypervisor_config(hv)
    }
}

fn list(key: &str, default: &str) -> Vec<usize> {
    std::env::var(key)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs();
    let load_before = host_load();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let pods = list("KATA_RS_DENSITY_PODS", if quick { "1" } else { "1,20" });
    let settle = Duration::from_secs(env_usize("KATA_RS_DENSITY_SETTLE_S", 3) as u64);
    let configs: Vec<Levers> = std::env::var("KATA_RS_DENSITY_CONFIGS")
        .unwrap_or_else(|_| if quick { "default" } else { "default,legacy" }.to_string())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Levers::parse(s.trim()))
        .collect();
    let rounds = env_count("KATA_RS_DENSITY_ROUNDS", 1);
    let mut memory = Vec::new();
    let mut memory_configs = Vec::new();
    for &n in &pods {
        for _ in 0..rounds {
            for (i, levers) in configs.iter().enumerate() {
                let m = rt.block_on(memory_at(n, root.path(), settle, levers));
                println!(
                    "density: {n} pod(s) [{}]: per-pod PSS {:.1} MiB (VMM {:.1}, vsock helper {:.1}, virtiofsd {:.1}, runtime {:.1}); QEMU overhead (RSS - guest RAM touched) {:.1} MiB (TCG's translated code {:.1} of it), guest RAM touched {:.1} MiB; QEMU anonymous {:.1} MiB (heap and unnamed {:.1}, in its files {:.1}; in huge pages {:.1}); build() median {:.0} ms",
                    levers.name,
                    m["per_pod_pss_mib"].as_f64().unwrap(),
                    m["per_pod_by_process_mib"]["qemu"].as_f64().unwrap_or(0.0),
                    m["per_pod_by_process_mib"]["vsock"].as_f64().unwrap_or(0.0),
                    m["per_pod_by_process_mib"]["virtiofsd"].as_f64().unwrap_or(0.0),
                    m["per_pod_by_process_mib"]["runtime"].as_f64().unwrap_or(0.0),
                    m["vmm_overhead_mib"].as_f64().unwrap(),
                    m["tcg_code_mib"].as_f64().unwrap(),
                    m["guest_touched_mib"].as_f64().unwrap(),
                    m["qemu_anon_mib"]["total"].as_f64().unwrap(),
                    m["qemu_anon_mib"]["unnamed"].as_f64().unwrap(),
                    m["qemu_anon_mib"]["in_files"].as_f64().unwrap(),
                    m["qemu_anon_mib"]["huge_pages"].as_f64().unwrap(),
                    m["build_p50_ms"].as_f64().unwrap(),
                );
                if i == 0 {
                    memory.push(m.clone());
                }
                memory_configs.push(m);
            }
        }
    }
    // Each configuration against the first, per pod count: medians over the rounds.
    if configs.len() > 1 {
        let median_of = |n: usize, name: &str, key: &str| {
            let mut v: Vec<f64> = memory_configs
                .iter()
                .filter(|m| m["pods"] == n && m["config"] == name)
                .filter_map(|m| m[key].as_f64())
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        for &n in &pods {
            let base = &configs[0].name;
            let (pss0, boot0) = (
                median_of(n, base, "per_pod_pss_mib"),
                median_of(n, base, "build_p50_ms"),
            );
            for levers in &configs[1..] {
                let (pss, boot) = (
                    median_of(n, &levers.name, "per_pod_pss_mib"),
                    median_of(n, &levers.name, "build_p50_ms"),
                );
                println!(
                    "density: {n} pod(s): [{}] vs [{base}]: per-pod PSS {pss:.1} vs {pss0:.1} MiB ({:.2}x), build() median {boot:.0} vs {boot0:.0} ms ({:.2}x)",
                    levers.name,
                    pss / pss0.max(1e-9),
                    boot / boot0.max(1e-9),
                );
            }
        }
    }

    let max = env_count("KATA_RS_STARTS_MAX", 8);
    let wanted = list("KATA_RS_STARTS_N", if quick { "1" } else { "1,2,4,8,16" });
    let ns: Vec<usize> = wanted.iter().copied().filter(|n| *n <= max).collect();
    let skipped: Vec<usize> = wanted.iter().copied().filter(|n| *n > max).collect();
    if !skipped.is_empty() {
        println!("density: N = {skipped:?} not run (KATA_RS_STARTS_MAX = {max})");
    }
    let singles = env_count("KATA_RS_STARTS_SINGLE", if quick { 1 } else { 5 });
    let mut starts = Vec::new();
    let mut single_rate = 0.0;
    let mut kata_single = Vec::new();
    for &n in &ns {
        let rounds = if n == 1 { singles } else { 1 };
        let mut lat = Vec::new();
        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..rounds {
            let (l, wall, cpu) = rt.block_on(concurrent_starts(n, root.path()));
            lat.extend(l);
            walls.push(wall);
            cpus.push(cpu);
        }
        // The round with the median CPU, and its split by process.
        cpus.sort_by(|a, b| a.total.total_cmp(&b.total));
        let by_process = cpus[cpus.len() / 2].by_process.clone();
        let cpu = cpus[cpus.len() / 2].total;
        walls.sort();
        let wall = walls[walls.len() / 2];
        let rate = n as f64 / wall.as_secs_f64();
        if n == 1 {
            single_rate = 1.0 / percentile(&mut lat, 50.0).as_secs_f64();
            kata_single = lat.iter().map(|d| ms(*d)).collect();
        }
        let ideal = n.min(cores) as f64 * single_rate;
        let (p50, p99) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0));
        println!(
            "density: {n} concurrent start(s): {rate:.2} starts/s ({:.2}/s per core), p50 {:.0} ms, p99 {:.0} ms; {:.2} x min(N, cores) x the single-start rate (target >= 0.8); {cpu:.2} CPU-s per start (at most {:.2} starts/s on {cores} idle cores)",
            rate / cores as f64,
            ms(p50),
            ms(p99),
            rate / ideal.max(1e-9),
            cores as f64 / cpu.max(1e-9)
        );
        println!(
            "density: {n} concurrent start(s): CPU-s per start by process: {}",
            by_process
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        starts.push(serde_json::json!({
            "n": n,
            "starts_per_s": rate,
            "p50_ms": ms(p50),
            "p99_ms": ms(p99),
            "latencies_ms": lat.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "vs_ideal": rate / ideal.max(1e-9),
            "cpu_s_per_start": cpu,
            "cpu_s_per_start_by_process": by_process,
        }));
    }

    let runs = env_count("KATA_RS_RUNC_RUNS", if quick { 3 } else { 20 });
    let bundle = root.path().join("runc-bundle");
    runc_bundle(&bundle, &rootfs, &["true"]).expect("a runc bundle");
    let runc: Vec<f64> = (0..runs)
        .map(|i| {
            let t = Instant::now();
            runc_run(
                &bundle,
                &format!("kata-rs-density-{}-{i}", std::process::id()),
            );
            ms(t.elapsed())
        })
        .collect();
    let mut r = runc.clone();
    r.sort_by(f64::total_cmp);
    println!(
        "density: runc run true: median {:.1} ms over {runs}",
        r[r.len() / 2]
    );

    // `cargo test --benches` (one quick round) leaves a real run's figures alone.
    if quick {
        println!("density: a quick run (no --bench): figures not written");
        return;
    }
    write_json(
        "density",
        &serde_json::json!({
            "guest_mib": GUEST_MIB,
            "memory": memory,
            "memory_configs": memory_configs,
            "starts": starts,
            "starts_not_run": skipped,
            "kata_start_ms": kata_single,
            "runc_true_ms": runc,
            "cores": cores,
            "host_before": load_before,
            "host_after": host_load(),
        }),
    );
}

/// Starts `n` sandboxes with `levers` one after another (each `build()` timed), lets them
/// idle, measures their host memory, shuts them down.
async fn memory_at(
    n: usize,
    root: &std::path::Path,
    settle: Duration,
    levers: &Levers,
) -> serde_json::Value {
    if levers.no_thp {
        // Inherited by every process this one starts from now on (fork and execve keep it).
        nix::sys::prctl::set_thp_disable(true).expect("PR_SET_THP_DISABLE");
    }
    if let Some(n) = levers.malloc_arenas {
        // The VM processes inherit this process's environment: glibc's malloc arenas in QEMU.
        std::env::set_var("MALLOC_ARENA_MAX", n.to_string());
    }
    for (k, v) in &levers.env {
        std::env::set_var(k, v);
    }
    let mut sandboxes = Vec::new();
    let mut builds = Vec::new();
    for _ in 0..n {
        let builder = with_bench_settings(Sandbox::builder().memory_mib(GUEST_MIB).root_dir(root));
        let t = Instant::now();
        let sb = levers.apply(builder).build().await.expect("a sandbox");
        builds.push(t.elapsed());
        sandboxes.push(sb);
    }
    if levers.no_thp {
        nix::sys::prctl::set_thp_disable(false).expect("PR_SET_THP_DISABLE");
    }
    if levers.malloc_arenas.is_some() {
        std::env::remove_var("MALLOC_ARENA_MAX");
    }
    for (k, _) in &levers.env {
        std::env::remove_var(k);
    }
    tokio::time::sleep(settle).await;
    let (mut qemu, mut vsock, mut fsd, mut other) = (0u64, 0u64, 0u64, 0u64);
    let (mut overhead, mut touched, mut vmms, mut tcg) = (0u64, 0u64, 0u64, 0u64);
    // QEMU's anonymous memory: in all, heap and unnamed mappings, in its files, huge pages.
    let mut anon = [0u64; 4];
    for sb in &sandboxes {
        for (pid, comm) in sandbox_processes(sb.dir()) {
            let Some((pss, rss)) = pss_rss_kib(pid) else {
                continue;
            };
            if comm.starts_with("qemu") {
                qemu += pss;
                let ram = guest_ram_rss_kib(pid, GUEST_MIB as u64 * 1024).unwrap_or(0);
                overhead += rss.saturating_sub(ram);
                touched += ram;
                tcg += exec_anon_rss_kib(pid);
                let split = qemu_anon_split_kib(pid);
                for (sum, v) in anon.iter_mut().zip(split) {
                    *sum += v;
                }
                vmms += 1;
            } else if comm.starts_with("vhost-device") {
                vsock += pss;
            } else if comm.contains("virtiofsd") {
                fsd += pss;
            } else {
                other += pss;
            }
        }
    }
    let runtime = pss_rss_kib(std::process::id()).map_or(0, |p| p.0);
    for sb in sandboxes {
        sb.shutdown().await.unwrap();
    }
    let mib = |kib: u64| kib as f64 / 1024.0 / n as f64;
    let total = qemu + vsock + fsd + other + runtime;
    serde_json::json!({
        "pods": n,
        "config": levers.name,
        "build_ms": builds.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "build_p50_ms": ms(percentile(&mut builds, 50.0)),
        "per_pod_pss_mib": mib(total),
        "per_pod_by_process_mib": {
            "qemu": mib(qemu), "vsock": mib(vsock), "virtiofsd": mib(fsd),
            "other": mib(other), "runtime": mib(runtime),
        },
        "vmm_overhead_mib": overhead as f64 / 1024.0 / vmms.max(1) as f64,
        "guest_touched_mib": touched as f64 / 1024.0 / vmms.max(1) as f64,
        "tcg_code_mib": tcg as f64 / 1024.0 / vmms.max(1) as f64,
        "qemu_anon_mib": {
            "total": anon[0] as f64 / 1024.0 / vmms.max(1) as f64,
            "unnamed": anon[1] as f64 / 1024.0 / vmms.max(1) as f64,
            "in_files": anon[2] as f64 / 1024.0 / vmms.max(1) as f64,
            "huge_pages": anon[3] as f64 / 1024.0 / vmms.max(1) as f64,
        },
    })
}

/// `pid`'s anonymous memory in KiB (`smaps`' `Anonymous`, which leaves out the guest RAM: a
/// memfd): in all; in its heap and unnamed mappings (malloc's heap and arenas, large
/// allocations, thread stacks, TCG's translation buffer, the RAM blocks of ROMs and ACPI
/// tables); in its files (data the loader relocated, `MAP_PRIVATE` pages written); in
/// transparent huge pages (`AnonHugePages`).
fn qemu_anon_split_kib(pid: u32) -> [u64; 4] {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return [0; 4];
    };
    let (mut split, mut named) = ([0u64; 4], false);
    let kib = |v: &str| {
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // address perms offset dev inode [path]: a file's path starts with `/`.
            named = words.nth(4).is_some_and(|p| p.starts_with('/'));
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            split[0] += kib(v);
            split[if named { 2 } else { 1 }] += kib(v);
        } else if let Some(v) = line.strip_prefix("AnonHugePages:") {
            split[3] += kib(v);
        }
    }
    split
}

/// `n` builds at once: each one's latency and the time until the last was ready. Every
/// sandbox is shut down afterwards (outside the measurement).
async fn concurrent_starts(
    n: usize,
    root: &std::path::Path,
) -> (Vec<Duration>, Duration, StartCpu) {
    let runtime_cpu = cpu_seconds(std::process::id());
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let root = root.to_path_buf();
        set.spawn(async move {
            let s = Instant::now();
            let sb = with_bench_settings(Sandbox::builder().memory_mib(GUEST_MIB).root_dir(&root))
                .build()
                .await;
            (s.elapsed(), sb)
        });
    }
    let mut lat = Vec::new();
    let mut sandboxes = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.expect("a start task") {
            (d, Ok(sb)) => {
                lat.push(d);
                sandboxes.push(sb);
            }
            // A start that fails (an overloaded host: the agent's timeout) is reported and
            // left out of the latencies; what it started it has cleaned up.
            (d, Err(e)) => println!("density: a start failed after {d:.1?}: {e}"),
        }
    }
    assert!(!lat.is_empty(), "every one of {n} starts failed");
    let wall = t.elapsed();
    // CPU spent on the starts: every sandbox's host processes so far, and this runtime's.
    // (A VM booted once more counts only its last QEMU: the first one's CPU is gone with it.)
    let mut by_process = std::collections::BTreeMap::new();
    by_process.insert(
        "runtime".to_string(),
        cpu_seconds(std::process::id()) - runtime_cpu,
    );
    for sb in &sandboxes {
        for (pid, name) in sandbox_processes(sb.dir()) {
            if name.starts_with("qemu") {
                // QEMU by thread: the TCG/KVM vCPU threads (`CPU <n>/TCG`) and the rest
                // (main loop, I/O, RCU, the vhost-user and QMP handling).
                let (vcpu, other) = qemu_thread_split(pid);
                *by_process.entry(format!("{name} vCPU")).or_insert(0.0) += vcpu;
                *by_process.entry(format!("{name} other")).or_insert(0.0) += other;
            } else {
                *by_process.entry(name).or_insert(0.0) += cpu_seconds(pid);
            }
        }
    }
    for sb in sandboxes {
        sb.shutdown().await.unwrap();
    }
    for v in by_process.values_mut() {
        *v /= n as f64;
    }
    let total = by_process.values().sum();
    (lat, wall, StartCpu { total, by_process })
}

/// CPU seconds per start: in all, and by process name (`comm`; `runtime` is this process).
struct StartCpu {
    total: f64,
    by_process: std::collections::BTreeMap<String, f64>,
}

/// The CPU seconds of `pid`'s vCPU threads (named `CPU <n>/...` by QEMU) and of its other
/// threads, from `/proc/<pid>/task/*/stat`.
fn qemu_thread_split(pid: u32) -> (f64, f64) {
    let (mut vcpu, mut other) = (0.0, 0.0);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for task in tasks.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let cpu = stat_cpu_seconds(&task.path().join("stat"));
        if comm.starts_with("CPU ") {
            vcpu += cpu;
        } else {
            other += cpu;
        }
    }
    (vcpu, other)
}

/// User + system CPU seconds `pid` has used (`/proc/<pid>/stat`), 0 once it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// User + system CPU seconds from a `/proc` `stat` file (a process's or a thread's).
fn stat_cpu_seconds(path: &std::path::Path) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // After the command name's closing parenthesis: state is field 3; utime, stime 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}
