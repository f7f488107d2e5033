//! `GetMetrics`: the guest's figures as Prometheus text, read from the guest's `/proc`.
//!
//! Families (all prefixed `kata_guest_` or `kata_agent_`, the only ones the host keeps):
//! memory (`/proc/meminfo`, bytes), CPU time per CPU and mode (`/proc/stat`, seconds), load
//! (`/proc/loadavg`), network counters per interface (`/proc/net/dev`) and block counters per
//! disk (`/proc/diskstats`), plus the agent's own process (`/proc/self`). A file that cannot
//! be read leaves its families out; it never fails the call. Everything is read from a root
//! it is given ([`collect_at`]), so the parsing is tested on a fixture.

use std::path::Path;

use kata_agent_client::api::metrics::{MetricKind, MetricsText};

/// The guest's figures from `/proc`.
pub fn collect() -> String {
    collect_at(Path::new("/proc"))
}

/// The guest's figures from the proc filesystem at `proc`.
pub fn collect_at(proc: &Path) -> String {
    let mut out = MetricsText::new();
    let read = |name: &str| std::fs::read_to_string(proc.join(name)).ok();
    if let Some(text) = read("meminfo") {
        meminfo(&mut out, &text);
    }
    if let Some(text) = read("stat") {
        cpu(&mut out, &text, clock_ticks());
    }
    if let Some(text) = read("loadavg") {
        load(&mut out, &text);
    }
    if let Some(text) = read("net/dev") {
        netdev(&mut out, &text);
    }
    if let Some(text) = read("diskstats") {
        diskstats(&mut out, &text);
    }
    agent_process(&mut out, proc);
    out.finish()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

/// `/proc/meminfo`: every field, in bytes, and the memory in use (`MemTotal - MemAvailable`).
fn meminfo(out: &mut MetricsText, text: &str) {
    let mut fields = Vec::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(Ok(n)) = words.next().map(str::parse::<f64>) else {
            continue;
        };
        let bytes = if words.next() == Some("kB") {
            n * 1024.0
        } else {
            n
        };
        fields.push((key.trim().to_string(), bytes));
    }
    if fields.is_empty() {
        return;
    }
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    out.family(
        "kata_guest_meminfo_bytes",
        MetricKind::Gauge,
        "The guest's /proc/meminfo, each item in bytes (page counts as they are).",
    );
    for (key, value) in &fields {
        out.sample(&[("item", key)], *value);
    }
    if let (Some(total), Some(available)) = (get("MemTotal"), get("MemAvailable")) {
        out.family(
            "kata_guest_memory_used_bytes",
            MetricKind::Gauge,
            "Guest memory in use: MemTotal - MemAvailable.",
        )
        .sample(&[], total - available);
    }
}

/// The modes of a `/proc/stat` cpu line, in order.
const CPU_MODES: &[&str] = &[
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

/// `/proc/stat`: CPU time per CPU (`cpu` is the total) and mode; context switches, forks,
/// running and blocked processes.
fn cpu(out: &mut MetricsText, text: &str, ticks: f64) {
    let mut rows = Vec::new();
    let mut scalars = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        if key.starts_with("cpu") {
            let values: Vec<f64> = words.filter_map(|w| w.parse().ok()).collect();
            rows.push((key.to_string(), values));
        } else if matches!(
            key,
            "ctxt" | "processes" | "procs_running" | "procs_blocked"
        ) {
            if let Some(Ok(v)) = words.next().map(str::parse::<f64>) {
                scalars.push((key, v));
            }
        }
    }
    if !rows.is_empty() {
        out.family(
            "kata_guest_cpu_seconds_total",
            MetricKind::Counter,
            "Guest CPU time per CPU (\"cpu\": all) and mode, from /proc/stat.",
        );
        for (cpu, values) in &rows {
            for (mode, v) in CPU_MODES.iter().zip(values) {
                out.sample(&[("cpu", cpu), ("mode", mode)], v / ticks);
            }
        }
    }
    for (key, v) in scalars {
        let (name, kind, help) = match key {
            "ctxt" => (
                "kata_guest_context_switches_total",
                MetricKind::Counter,
                "Guest context switches.",
            ),
            "processes" => (
                "kata_guest_forks_total",
                MetricKind::Counter,
                "Processes and threads created in the guest.",
            ),
            "procs_running" => (
                "kata_guest_procs_running",
                MetricKind::Gauge,
                "Guest processes runnable.",
            ),
            _ => (
                "kata_guest_procs_blocked",
                MetricKind::Gauge,
                "Guest processes blocked on I/O.",
            ),
        };
        out.family(name, kind, help).sample(&[], v);
    }
}

/// `/proc/loadavg`: the three load averages.
fn load(out: &mut MetricsText, text: &str) {
    let values: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|w| w.parse().ok())
        .collect();
    if values.len() != 3 {
        return;
    }
    out.family(
        "kata_guest_load",
        MetricKind::Gauge,
        "Guest load average over 1, 5 and 15 minutes.",
    );
    for (period, v) in ["1m", "5m", "15m"].iter().zip(values) {
        out.sample(&[("period", period)], v);
    }
}

/// The columns of `/proc/net/dev` (receive, then transmit) the guest reports.
const NETDEV_COLUMNS: &[(usize, &str, &str)] = &[
    (0, "receive", "bytes"),
    (1, "receive", "packets"),
    (2, "receive", "errors"),
    (3, "receive", "drops"),
    (8, "transmit", "bytes"),
    (9, "transmit", "packets"),
    (10, "transmit", "errors"),
    (11, "transmit", "drops"),
];

/// `/proc/net/dev`: bytes, packets, errors and drops per interface and direction.
fn netdev(out: &mut MetricsText, text: &str) {
    let rows: Vec<(String, Vec<f64>)> = text
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let values: Vec<f64> = rest
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (values.len() >= 16).then(|| (name.trim().to_string(), values))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    out.family(
        "kata_guest_network_total",
        MetricKind::Counter,
        "Guest network counters per interface, direction and item, from /proc/net/dev.",
    );
    for (interface, values) in &rows {
        for (i, direction, item) in NETDEV_COLUMNS {
            out.sample(
                &[
                    ("interface", interface),
                    ("direction", direction),
                    ("item", item),
                ],
                values[*i],
            );
        }
    }
}

/// The columns of `/proc/diskstats` after the device name the guest reports, and how each is
/// scaled (sectors are 512 bytes, times are milliseconds).
const DISK_COLUMNS: &[(usize, &str, f64)] = &[
    (0, "reads_completed", 1.0),
    (2, "read_bytes", 512.0),
    (3, "read_seconds", 0.001),
    (4, "writes_completed", 1.0),
    (6, "written_bytes", 512.0),
    (7, "write_seconds", 0.001),
    (9, "io_seconds", 0.001),
];

/// `/proc/diskstats`: reads, writes, bytes and time per block device (RAM disks and loop
/// devices without I/O left out).
fn diskstats(out: &mut MetricsText, text: &str) {
    let rows: Vec<(String, Vec<f64>)> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(2);
            let name = words.next()?.to_string();
            let values: Vec<f64> = words.filter_map(|w| w.parse().ok()).collect();
            let idle = values.iter().take(8).all(|v| *v == 0.0);
            let pseudo = name.starts_with("ram") || name.starts_with("loop");
            (values.len() >= 10 && !(pseudo && idle)).then_some((name, values))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    out.family(
        "kata_guest_disk_total",
        MetricKind::Counter,
        "Guest block device counters per disk and item (bytes, seconds), from /proc/diskstats.",
    );
    for (disk, values) in &rows {
        for (i, item, scale) in DISK_COLUMNS {
            out.sample(&[("disk", disk), ("item", item)], values[*i] * scale);
        }
    }
}

/// The agent's own process: resident memory, threads and open file descriptors.
fn agent_process(out: &mut MetricsText, proc: &Path) {
    let me = proc.join("self");
    let status = std::fs::read_to_string(me.join("status")).unwrap_or_default();
    let field = |key: &str| {
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    if let Some(kb) = field("VmRSS") {
        out.family(
            "kata_agent_resident_memory_bytes",
            MetricKind::Gauge,
            "The agent's resident memory.",
        )
        .sample(&[], kb * 1024.0);
    }
    if let Some(n) = field("Threads") {
        out.family(
            "kata_agent_threads",
            MetricKind::Gauge,
            "The agent's threads.",
        )
        .sample(&[], n);
    }
    if let Ok(fds) = std::fs::read_dir(me.join("fd")) {
        out.family(
            "kata_agent_open_fds",
            MetricKind::Gauge,
            "The agent's open file descriptors.",
        )
        .sample(&[], fds.count() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_agent_client::api::metrics::{parse, Line};

    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(
            "meminfo",
            "MemTotal:        2000000 kB\nMemFree:         1500000 kB\nMemAvailable:    1600000 kB\nHugePages_Total:       0\n",
        );
        w(
            "stat",
            "cpu  100 0 50 1000 2 0 1 0 0 0\ncpu0 100 0 50 1000 2 0 1 0 0 0\nintr 5 1 2\nctxt 4242\nbtime 1\nprocesses 77\nprocs_running 2\nprocs_blocked 0\n",
        );
        w("loadavg", "0.50 0.25 0.10 1/80 123\n");
        w(
            "net/dev",
            "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  eth0:    5000      40    1    2    0     0          0         0     3000      30    0    0    0     0       0          0\n",
        );
        w(
            "diskstats",
            "   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n 254       0 vda 10 0 80 5 4 0 16 7 0 12 12 0 0 0 0 0 0\n",
        );
        w(
            "self/status",
            "Name:\tkata-agent\nVmRSS:\t    1234 kB\nThreads:\t5\n",
        );
        std::fs::create_dir_all(d.path().join("self/fd/0")).unwrap();
        d
    }

    fn sample(lines: &[Line], name: &str, want: &[(&str, &str)]) -> Option<f64> {
        lines.iter().find_map(|l| match l {
            Line::Sample {
                name: n,
                labels,
                value,
            } if n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)) =>
            {
                Some(*value)
            }
            _ => None,
        })
    }

    #[test]
    fn figures_from_a_proc_fixture() {
        let d = fixture();
        let text = collect_at(d.path());
        let lines = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |name, labels: &[(&str, &str)]| {
            sample(&lines, name, labels).unwrap_or_else(|| panic!("{name} {labels:?}\n{text}"))
        };
        assert_eq!(
            get("kata_guest_meminfo_bytes", &[("item", "MemTotal")]),
            2_048_000_000.0
        );
        assert_eq!(
            get("kata_guest_meminfo_bytes", &[("item", "HugePages_Total")]),
            0.0
        );
        assert_eq!(get("kata_guest_memory_used_bytes", &[]), 409_600_000.0);
        let user = get(
            "kata_guest_cpu_seconds_total",
            &[("cpu", "cpu0"), ("mode", "user")],
        );
        assert_eq!(user, 100.0 / clock_ticks());
        assert_eq!(get("kata_guest_context_switches_total", &[]), 4242.0);
        assert_eq!(get("kata_guest_procs_running", &[]), 2.0);
        assert_eq!(get("kata_guest_load", &[("period", "5m")]), 0.25);
        let rx = [
            ("interface", "eth0"),
            ("direction", "receive"),
            ("item", "bytes"),
        ];
        assert_eq!(get("kata_guest_network_total", &rx), 5000.0);
        let tx = [
            ("interface", "eth0"),
            ("direction", "transmit"),
            ("item", "drops"),
        ];
        assert_eq!(get("kata_guest_network_total", &tx), 0.0);
        assert_eq!(
            get(
                "kata_guest_disk_total",
                &[("disk", "vda"), ("item", "read_bytes")]
            ),
            80.0 * 512.0
        );
        assert_eq!(
            get(
                "kata_guest_disk_total",
                &[("disk", "vda"), ("item", "io_seconds")]
            ),
            0.012
        );
        assert!(
            sample(&lines, "kata_guest_disk_total", &[("disk", "ram0")]).is_none(),
            "idle RAM disks are left out"
        );
        assert_eq!(
            get("kata_agent_resident_memory_bytes", &[]),
            1234.0 * 1024.0
        );
        assert_eq!(get("kata_agent_threads", &[]), 5.0);
        assert_eq!(get("kata_agent_open_fds", &[]), 1.0);
        // Every family has its HELP and TYPE before its samples.
        let mut typed = std::collections::HashSet::new();
        for l in &lines {
            match l {
                Line::Type { name, .. } => {
                    typed.insert(name.clone());
                }
                Line::Sample { name, .. } => assert!(typed.contains(name), "{name} untyped"),
                Line::Help { .. } => {}
            }
        }
    }

    #[test]
    fn missing_or_odd_files_leave_families_out() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("loadavg"), "garbage\n").unwrap();
        std::fs::write(d.path().join("meminfo"), "nothing useful\n").unwrap();
        assert_eq!(collect_at(d.path()), "");
    }

    #[test]
    fn the_real_proc_parses() {
        let text = collect();
        let lines = parse(&text).unwrap();
        assert!(
            sample(&lines, "kata_guest_memory_used_bytes", &[]).is_some(),
            "{text}"
        );
        assert!(sample(&lines, "kata_guest_cpu_seconds_total", &[("cpu", "cpu")]).is_some());
    }
}
