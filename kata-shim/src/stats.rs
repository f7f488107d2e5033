//! The agent's container statistics as containerd's cgroup v1 `Metrics` (what `ctr task
//! metrics` decodes for a Linux task).

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::MessageField;
use kata_sandbox::agent_client::protocol::agent::StatsContainerResponse;

/// Converts what the agent reports (CPU, memory, pids) into containerd's metrics.
pub fn to_cgroup_v1_metrics(stats: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    let Some(cg) = stats.cgroup_stats.as_ref() else {
        return m;
    };
    if let Some(cpu) = cg.cpu_stats.as_ref() {
        if let Some(u) = cpu.cpu_usage.as_ref() {
            m.cpu = MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: u.total_usage,
                    kernel: u.usage_in_kernelmode,
                    user: u.usage_in_usermode,
                    per_cpu: u.percpu_usage.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    if let Some(mem) = cg.memory_stats.as_ref() {
        let entry = |d: &MessageField<kata_sandbox::agent_client::protocol::agent::MemoryData>| {
            MessageField::from_option(d.as_ref().map(|d| MemoryEntry {
                usage: d.usage,
                max: d.max_usage,
                failcnt: d.failcnt,
                limit: d.limit,
                ..Default::default()
            }))
        };
        m.memory = MessageField::some(MemoryStat {
            cache: mem.cache,
            usage: entry(&mem.usage),
            swap: entry(&mem.swap_usage),
            kernel: entry(&mem.kernel_usage),
            ..Default::default()
        });
    }
    if let Some(p) = cg.pids_stats.as_ref() {
        m.pids = MessageField::some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_sandbox::agent_client::protocol::agent::{
        CgroupStats, MemoryData, MemoryStats, PidsStats,
    };

    #[test]
    fn memory_and_pids_are_carried_over() {
        let stats = StatsContainerResponse {
            cgroup_stats: MessageField::some(CgroupStats {
                memory_stats: MessageField::some(MemoryStats {
                    usage: MessageField::some(MemoryData {
                        usage: 4096,
                        limit: 8192,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                pids_stats: MessageField::some(PidsStats {
                    current: 3,
                    limit: 10,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = to_cgroup_v1_metrics(&stats);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 8192);
        assert_eq!(m.pids.current, 3);
        assert!(m.cpu.is_none());
    }
}
