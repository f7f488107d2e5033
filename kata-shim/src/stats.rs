//! A container's statistics as containerd's cgroup v1 `Metrics` (what `ctr task metrics`
//! decodes for a Linux task).

use containerd_shim::protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryStat, Metrics,
    NetworkStat, PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::MessageField;
use kata_sandbox::ContainerStats;

/// Converts what the sandbox reports (CPU, memory, pids, block I/O, hugetlb, network) into
/// containerd's metrics.
pub fn to_cgroup_v1_metrics(stats: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    let cg = &stats.cgroup;
    if let Some(cpu) = &cg.cpu {
        m.cpu = MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: cpu.usage.total_ns,
                kernel: cpu.usage.kernel_ns,
                user: cpu.usage.user_ns,
                per_cpu: cpu.usage.per_cpu_ns.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(Throttle {
                periods: cpu.throttling.periods,
                throttled_periods: cpu.throttling.throttled_periods,
                throttled_time: cpu.throttling.throttled_time_ns,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(mem) = &cg.memory {
        let entry = |d: &kata_sandbox::stats::MemoryData| {
            MessageField::some(MemoryEntry {
                usage: d.usage,
                max: d.max_usage,
                failcnt: d.failcnt,
                limit: d.limit,
                ..Default::default()
            })
        };
        let stat = |key: &str| mem.stats.get(key).copied().unwrap_or_default();
        m.memory = MessageField::some(MemoryStat {
            cache: mem.cache,
            rss: stat("rss"),
            rss_huge: stat("rss_huge"),
            mapped_file: stat("mapped_file"),
            dirty: stat("dirty"),
            writeback: stat("writeback"),
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            usage: entry(&mem.usage),
            swap: entry(&mem.swap),
            kernel: entry(&mem.kernel),
            ..Default::default()
        });
    }
    if let Some(p) = &cg.pids {
        m.pids = MessageField::some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if let Some(b) = &cg.blkio {
        let entries = |v: &[kata_sandbox::stats::BlkioEntry]| {
            v.iter()
                .map(|e| BlkIOEntry {
                    op: e.op.clone(),
                    major: e.major,
                    minor: e.minor,
                    value: e.value,
                    ..Default::default()
                })
                .collect()
        };
        m.blkio = MessageField::some(BlkIOStat {
            io_service_bytes_recursive: entries(&b.io_service_bytes_recursive),
            io_serviced_recursive: entries(&b.io_serviced_recursive),
            io_queued_recursive: entries(&b.io_queued_recursive),
            io_service_time_recursive: entries(&b.io_service_time_recursive),
            io_wait_time_recursive: entries(&b.io_wait_time_recursive),
            io_merged_recursive: entries(&b.io_merged_recursive),
            io_time_recursive: entries(&b.io_time_recursive),
            sectors_recursive: entries(&b.sectors_recursive),
            ..Default::default()
        });
    }
    m.hugetlb = cg
        .hugetlb
        .iter()
        .map(|(size, h)| HugetlbStat {
            usage: h.usage,
            max: h.max_usage,
            failcnt: h.failcnt,
            pagesize: size.clone(),
            ..Default::default()
        })
        .collect();
    m.network = stats
        .network
        .iter()
        .map(|n| NetworkStat {
            name: n.name.clone(),
            rx_bytes: n.rx_bytes,
            rx_packets: n.rx_packets,
            rx_errors: n.rx_errors,
            rx_dropped: n.rx_dropped,
            tx_bytes: n.tx_bytes,
            tx_packets: n.tx_packets,
            tx_errors: n.tx_errors,
            tx_dropped: n.tx_dropped,
            ..Default::default()
        })
        .collect();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_sandbox::stats::{MemoryStats, PidsStats};

    #[test]
    fn what_the_sandbox_reports_is_carried_over() {
        let mut stats = ContainerStats::default();
        let mut mem = MemoryStats::default();
        mem.usage.usage = 4096;
        mem.usage.limit = 8192;
        mem.stats.insert("rss".into(), 1024);
        stats.cgroup.memory = Some(mem);
        let mut pids = PidsStats::default();
        pids.current = 3;
        pids.limit = 10;
        stats.cgroup.pids = Some(pids);
        let m = to_cgroup_v1_metrics(&stats);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 8192);
        assert_eq!(m.memory.rss, 1024);
        assert_eq!(m.pids.current, 3);
        assert!(m.cpu.is_none() && m.blkio.is_none());
        assert!(m.hugetlb.is_empty() && m.network.is_empty());
    }
}
