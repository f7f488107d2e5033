//! Helpers the density, start-rate and boot-phase benches share: where their figures are
//! written for `make bench-report`, host memory of a sandbox's processes, percentiles.
//! Included by those benches with `#[path]` (each bench is its own binary).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the benches write their JSON figures: `$KATA_RS_BENCH_OUT`, else `bench-report` in
/// `$CARGO_TARGET_DIR` (next to criterion's data), else in the workspace's `target`.
pub fn out_dir() -> PathBuf {
    let dir = std::env::var_os("KATA_RS_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("bench-report")
        });
    std::fs::create_dir_all(&dir).expect("the bench output directory");
    dir
}

/// Writes `value` as `<out_dir>/<name>.json` and says where.
pub fn write_json(name: &str, value: &serde_json::Value) {
    let path = out_dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).expect("bench output");
    println!("{name}: figures written to {}", path.display());
}

/// Milliseconds with a fraction.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`-th percentile (0..=100, nearest rank) of `v` (sorted here).
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A `kB` field of a `/proc/<pid>/smaps_rollup` or `status`-style text.
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Proportional and resident set size of `pid` in KiB (`smaps_rollup`); `None` once it is gone.
pub fn pss_rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((kib_field(&text, "Pss")?, kib_field(&text, "Rss")?))
}

/// The resident KiB of `pid`'s largest mapping of at least `guest_kib`: the guest RAM block
/// of a VMM (QEMU's `memory-backend-memfd`, shared with the vhost-user helpers), i.e. what the
/// guest has touched of its memory.
pub fn guest_ram_rss_kib(pid: u32, guest_kib: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut best: Option<(u64, u64)> = None;
    let mut size = 0u64;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: address perms offset dev inode [path].
            size = 0;
        } else if let Some(v) = line.strip_prefix("Size:") {
            size = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss: u64 = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if size >= guest_kib && best.is_none_or(|(s, _)| size > s) {
                best = Some((size, rss));
            }
        }
    }
    best.map(|(_, rss)| rss)
}

/// The resident KiB of `pid`'s private writable and executable anonymous mappings: under TCG,
/// QEMU's translated-code buffers (none under KVM).
pub fn exec_anon_rss_kib(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let (mut rwx_anon, mut total) = (false, 0u64);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let perms = words.next().unwrap_or("");
            rwx_anon = perms == "rwxp" && line.split_whitespace().count() == 5;
        } else if let Some(v) = line.strip_prefix("Rss:") {
            if rwx_anon {
                total += v
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// The host processes of a sandbox: every process whose command line names its directory
/// (the VMM, its vsock backend, virtiofsd), found in `/proc`.
pub fn sandbox_processes(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string();
            out.push((pid, name));
        }
    }
    out
}

/// The host's load averages and CPU count, for the figures' context.
pub fn host_load() -> serde_json::Value {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    serde_json::json!({ "loadavg": load.trim(), "cpus": cpus })
}

/// An integer from the environment (0 included), `default` when it is unset or empty. A value
/// that is not a number stops the bench, naming the key: a typo never runs the default quietly.
pub fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            panic!("{key}={v:?} is not a whole number: set it to one (or unset it: {default})")
        }),
        _ => default,
    }
}

/// [`env_usize`] for a count of rounds or sandboxes: 0 stops the bench, naming the key.
pub fn env_count(key: &str, default: usize) -> usize {
    let n = env_usize(key, default);
    assert!(
        n > 0,
        "{key}=0: a count must be at least 1 (or unset it: {default})"
    );
    n
}

/// `builder` with the benches' start settings from the environment, for a before/after in one
/// run: `KATA_RS_BENCH_FIRMWARE` sets `firmware` (`/usr/share/seabios/bios-256k.bin`: the
/// SeaBIOS reference; unset: kata-rs' own choice, `kata_hypervisor::qemu::firmware`) and
/// `KATA_RS_BENCH_AGENT_TIMEOUT_S` the agent timeout (unset: the builder's default; many TCG
/// guests booting at once on a few cores need longer than it).
pub fn with_bench_settings(builder: kata_sandbox::SandboxBuilder) -> kata_sandbox::SandboxBuilder {
    let mut builder = builder;
    if let Some(firmware) = std::env::var_os("KATA_RS_BENCH_FIRMWARE") {
        let mut hv = builder.config().clone();
        hv.firmware = firmware.to_string_lossy().into_owned();
        builder = builder.hypervisor_config(hv);
    }
    // 0 or unset: the builder's default.
    let timeout = env_usize("KATA_RS_BENCH_AGENT_TIMEOUT_S", 0);
    if timeout > 0 {
        builder = builder.agent_timeout(Duration::from_secs(timeout as u64));
    }
    builder
}
