//! A container's statistics as plain Rust types ([`ContainerStats`]).
//!
//! The agent reads them from the container's cgroup (cgroup v1 names: CPU usage and
//! throttling, memory with its cache and swap, pids, block I/O, hugetlb) and from the guest's
//! network interfaces (`StatsContainer`). Units are the cgroup's: nanoseconds for CPU time,
//! bytes for memory. A controller the agent did not report is `None`.

use std::collections::BTreeMap;

use crate::protocol::agent as pb;

/// What `StatsContainer` reports about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerStats {
    /// The container's cgroup.
    pub cgroup: CgroupStats,
    /// The guest's network interfaces (the sandbox's, shared by its containers).
    pub network: Vec<NetworkStats>,
}

/// The cgroup controllers of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgroupStats {
    /// `cpu`/`cpuacct`: time used and throttling.
    pub cpu: Option<CpuStats>,
    /// `memory`: usage, limit, cache, swap.
    pub memory: Option<MemoryStats>,
    /// `pids`: how many tasks, and the limit.
    pub pids: Option<PidsStats>,
    /// `blkio`: block I/O per device.
    pub blkio: Option<BlkioStats>,
    /// `hugetlb`, keyed by page size (`"2MB"`).
    pub hugetlb: BTreeMap<String, HugetlbStats>,
}

/// CPU time and throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuStats {
    /// Time used.
    pub usage: CpuUsage,
    /// CFS throttling.
    pub throttling: CpuThrottling,
}

/// CPU time used, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuUsage {
    /// Total.
    pub total_ns: u64,
    /// Per CPU (index = CPU number).
    pub per_cpu_ns: Vec<u64>,
    /// In kernel mode.
    pub kernel_ns: u64,
    /// In user mode.
    pub user_ns: u64,
}

/// CFS bandwidth throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuThrottling {
    /// Enforcement periods that elapsed.
    pub periods: u64,
    /// Periods in which the group was throttled.
    pub throttled_periods: u64,
    /// Total time throttled, in nanoseconds.
    pub throttled_time_ns: u64,
}

/// Memory use, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Page cache.
    pub cache: u64,
    /// Memory (`memory.usage_in_bytes`, `.max_usage_in_bytes`, `.failcnt`, `.limit_in_bytes`).
    pub usage: MemoryData,
    /// Memory + swap (`memory.memsw.*`).
    pub swap: MemoryData,
    /// Kernel memory (`memory.kmem.*`).
    pub kernel: MemoryData,
    /// Whether the hierarchy accounts children (`memory.use_hierarchy`).
    pub use_hierarchy: bool,
    /// The raw `memory.stat` counters (`rss`, `mapped_file`, ...).
    pub stats: BTreeMap<String, u64>,
}

/// One memory counter group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryData {
    /// Current use.
    pub usage: u64,
    /// Highest use seen.
    pub max_usage: u64,
    /// How often the limit was hit.
    pub failcnt: u64,
    /// The limit.
    pub limit: u64,
}

/// Task count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PidsStats {
    /// Tasks in the cgroup now.
    pub current: u64,
    /// The limit (0: none).
    pub limit: u64,
}

/// Block I/O counters, per device and operation (`blkio.*_recursive`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlkioStats {
    /// Bytes transferred.
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// I/O operations.
    pub io_serviced_recursive: Vec<BlkioEntry>,
    /// Operations queued.
    pub io_queued_recursive: Vec<BlkioEntry>,
    /// Time between dispatch and completion.
    pub io_service_time_recursive: Vec<BlkioEntry>,
    /// Time spent waiting in the scheduler queues.
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    /// Operations merged.
    pub io_merged_recursive: Vec<BlkioEntry>,
    /// Disk time.
    pub io_time_recursive: Vec<BlkioEntry>,
    /// Sectors transferred.
    pub sectors_recursive: Vec<BlkioEntry>,
}

/// One block I/O counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlkioEntry {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Operation (`Read`, `Write`, `Sync`, `Async`, `Total`, or empty).
    pub op: String,
    /// The counter.
    pub value: u64,
}

/// Huge page use of one page size, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HugetlbStats {
    /// Current use.
    pub usage: u64,
    /// Highest use seen.
    pub max_usage: u64,
    /// How often the limit was hit.
    pub failcnt: u64,
}

/// Counters of one guest network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkStats {
    /// Interface name (`eth0`).
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

impl From<&pb::StatsContainerResponse> for ContainerStats {
    fn from(resp: &pb::StatsContainerResponse) -> Self {
        let cgroup = resp
            .cgroup_stats
            .as_ref()
            .map(CgroupStats::from)
            .unwrap_or_default();
        ContainerStats {
            cgroup,
            network: resp.network_stats.iter().map(NetworkStats::from).collect(),
        }
    }
}

impl From<&pb::CgroupStats> for CgroupStats {
    fn from(cg: &pb::CgroupStats) -> Self {
        CgroupStats {
            cpu: cg.cpu_stats.as_ref().map(|c| CpuStats {
                usage: c
                    .cpu_usage
                    .as_ref()
                    .map(|u| CpuUsage {
                        total_ns: u.total_usage,
                        per_cpu_ns: u.percpu_usage.clone(),
                        kernel_ns: u.usage_in_kernelmode,
                        user_ns: u.usage_in_usermode,
                    })
                    .unwrap_or_default(),
                throttling: c
                    .throttling_data
                    .as_ref()
                    .map(|t| CpuThrottling {
                        periods: t.periods,
                        throttled_periods: t.throttled_periods,
                        throttled_time_ns: t.throttled_time,
                    })
                    .unwrap_or_default(),
            }),
            memory: cg.memory_stats.as_ref().map(|m| MemoryStats {
                cache: m.cache,
                usage: memory_data(&m.usage),
                swap: memory_data(&m.swap_usage),
                kernel: memory_data(&m.kernel_usage),
                use_hierarchy: m.use_hierarchy,
                stats: m.stats.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            }),
            pids: cg.pids_stats.as_ref().map(|p| PidsStats {
                current: p.current,
                limit: p.limit,
            }),
            blkio: cg.blkio_stats.as_ref().map(|b| BlkioStats {
                io_service_bytes_recursive: blkio_entries(&b.io_service_bytes_recursive),
                io_serviced_recursive: blkio_entries(&b.io_serviced_recursive),
                io_queued_recursive: blkio_entries(&b.io_queued_recursive),
                io_service_time_recursive: blkio_entries(&b.io_service_time_recursive),
                io_wait_time_recursive: blkio_entries(&b.io_wait_time_recursive),
                io_merged_recursive: blkio_entries(&b.io_merged_recursive),
                io_time_recursive: blkio_entries(&b.io_time_recursive),
                sectors_recursive: blkio_entries(&b.sectors_recursive),
            }),
            hugetlb: cg
                .hugetlb_stats
                .iter()
                .map(|(size, h)| {
                    (
                        size.clone(),
                        HugetlbStats {
                            usage: h.usage,
                            max_usage: h.max_usage,
                            failcnt: h.failcnt,
                        },
                    )
                })
                .collect(),
        }
    }
}

impl From<&pb::NetworkStats> for NetworkStats {
    fn from(n: &pb::NetworkStats) -> Self {
        NetworkStats {
            name: n.name.clone(),
            rx_bytes: n.rx_bytes,
            rx_packets: n.rx_packets,
            rx_errors: n.rx_errors,
            rx_dropped: n.rx_dropped,
            tx_bytes: n.tx_bytes,
            tx_packets: n.tx_packets,
            tx_errors: n.tx_errors,
            tx_dropped: n.tx_dropped,
        }
    }
}

fn memory_data(d: &protobuf::MessageField<pb::MemoryData>) -> MemoryData {
    d.as_ref()
        .map(|d| MemoryData {
            usage: d.usage,
            max_usage: d.max_usage,
            failcnt: d.failcnt,
            limit: d.limit,
        })
        .unwrap_or_default()
}

fn blkio_entries(entries: &[pb::BlkioStatsEntry]) -> Vec<BlkioEntry> {
    entries
        .iter()
        .map(|e| BlkioEntry {
            major: e.major,
            minor: e.minor,
            op: e.op.clone(),
            value: e.value,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use protobuf::MessageField;

    fn entry(major: u64, op: &str, value: u64) -> pb::BlkioStatsEntry {
        pb::BlkioStatsEntry {
            major,
            minor: 16,
            op: op.into(),
            value,
            ..Default::default()
        }
    }

    fn data(base: u64) -> MessageField<pb::MemoryData> {
        MessageField::some(pb::MemoryData {
            usage: base,
            max_usage: base + 1,
            failcnt: base + 2,
            limit: base + 3,
            ..Default::default()
        })
    }

    /// A response with every field set to a distinct value.
    pub(crate) fn filled_response() -> pb::StatsContainerResponse {
        let blkio = pb::BlkioStats {
            io_service_bytes_recursive: vec![entry(8, "Read", 1), entry(8, "Write", 2)],
            io_serviced_recursive: vec![entry(8, "Total", 3)],
            io_queued_recursive: vec![entry(9, "Sync", 4)],
            io_service_time_recursive: vec![entry(10, "Async", 5)],
            io_wait_time_recursive: vec![entry(11, "Read", 6)],
            io_merged_recursive: vec![entry(12, "Write", 7)],
            io_time_recursive: vec![entry(13, "", 8)],
            sectors_recursive: vec![entry(14, "", 9)],
            ..Default::default()
        };
        let cgroup = pb::CgroupStats {
            cpu_stats: MessageField::some(pb::CpuStats {
                cpu_usage: MessageField::some(pb::CpuUsage {
                    total_usage: 1000,
                    percpu_usage: vec![600, 400],
                    usage_in_kernelmode: 300,
                    usage_in_usermode: 700,
                    ..Default::default()
                }),
                throttling_data: MessageField::some(pb::ThrottlingData {
                    periods: 20,
                    throttled_periods: 5,
                    throttled_time: 12345,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: MessageField::some(pb::MemoryStats {
                cache: 4096,
                usage: data(100),
                swap_usage: data(200),
                kernel_usage: data(300),
                use_hierarchy: true,
                stats: [("rss".to_string(), 77u64), ("mapped_file".to_string(), 88)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            pids_stats: MessageField::some(pb::PidsStats {
                current: 3,
                limit: 10,
                ..Default::default()
            }),
            blkio_stats: MessageField::some(blkio),
            hugetlb_stats: [(
                "2MB".to_string(),
                pb::HugetlbStats {
                    usage: 2 << 20,
                    max_usage: 4 << 20,
                    failcnt: 1,
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        pb::StatsContainerResponse {
            cgroup_stats: MessageField::some(cgroup),
            network_stats: vec![pb::NetworkStats {
                name: "eth0".into(),
                rx_bytes: 1,
                rx_packets: 2,
                rx_errors: 3,
                rx_dropped: 4,
                tx_bytes: 5,
                tx_packets: 6,
                tx_errors: 7,
                tx_dropped: 8,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn every_field_of_a_filled_response_is_carried() {
        let stats = ContainerStats::from(&filled_response());
        let cpu = stats.cgroup.cpu.as_ref().unwrap();
        assert_eq!(
            (
                cpu.usage.total_ns,
                &cpu.usage.per_cpu_ns[..],
                cpu.usage.kernel_ns,
                cpu.usage.user_ns
            ),
            (1000, &[600, 400][..], 300, 700)
        );
        assert_eq!(
            (
                cpu.throttling.periods,
                cpu.throttling.throttled_periods,
                cpu.throttling.throttled_time_ns
            ),
            (20, 5, 12345)
        );
        let mem = stats.cgroup.memory.as_ref().unwrap();
        assert_eq!(mem.cache, 4096);
        for (d, base) in [(&mem.usage, 100), (&mem.swap, 200), (&mem.kernel, 300)] {
            assert_eq!(
                (d.usage, d.max_usage, d.failcnt, d.limit),
                (base, base + 1, base + 2, base + 3)
            );
        }
        assert!(mem.use_hierarchy);
        assert_eq!(mem.stats["rss"], 77);
        assert_eq!(mem.stats["mapped_file"], 88);
        let pids = stats.cgroup.pids.as_ref().unwrap();
        assert_eq!((pids.current, pids.limit), (3, 10));
        let blkio = stats.cgroup.blkio.as_ref().unwrap();
        let lists = [
            &blkio.io_service_bytes_recursive[1..],
            &blkio.io_serviced_recursive[..],
            &blkio.io_queued_recursive[..],
            &blkio.io_service_time_recursive[..],
            &blkio.io_wait_time_recursive[..],
            &blkio.io_merged_recursive[..],
            &blkio.io_time_recursive[..],
            &blkio.sectors_recursive[..],
        ];
        for (i, list) in lists.iter().enumerate() {
            assert_eq!(list.len(), 1, "list {i}");
            assert_eq!(list[0].value, i as u64 + 2, "list {i}");
            assert_eq!(list[0].minor, 16);
        }
        assert_eq!(
            blkio.io_service_bytes_recursive[0],
            BlkioEntry {
                major: 8,
                minor: 16,
                op: "Read".into(),
                value: 1
            }
        );
        assert_eq!(blkio.io_queued_recursive[0].op, "Sync");
        let huge = &stats.cgroup.hugetlb["2MB"];
        assert_eq!(
            (huge.usage, huge.max_usage, huge.failcnt),
            (2 << 20, 4 << 20, 1)
        );
        assert_eq!(stats.network.len(), 1);
        let net = &stats.network[0];
        assert_eq!(net.name, "eth0");
        assert_eq!(
            [
                net.rx_bytes,
                net.rx_packets,
                net.rx_errors,
                net.rx_dropped,
                net.tx_bytes,
                net.tx_packets,
                net.tx_errors,
                net.tx_dropped
            ],
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn controllers_the_agent_left_out_are_none() {
        let stats = ContainerStats::from(&pb::StatsContainerResponse::new());
        assert_eq!(stats, ContainerStats::default());
        assert!(stats.cgroup.cpu.is_none() && stats.cgroup.memory.is_none());

        let mut only_pids = pb::StatsContainerResponse::new();
        only_pids.cgroup_stats = MessageField::some(pb::CgroupStats {
            pids_stats: MessageField::some(pb::PidsStats {
                current: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let stats = ContainerStats::from(&only_pids);
        assert!(stats.cgroup.cpu.is_none() && stats.cgroup.blkio.is_none());
        assert_eq!(stats.cgroup.pids.unwrap().current, 1);
    }
}
