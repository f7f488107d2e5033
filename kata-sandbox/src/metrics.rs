//! A sandbox's figures as Prometheus text: [`Sandbox::metrics`].
//!
//! What a shim's `/metrics` serves (Kata's `shim-monitor.sock`), in four parts:
//! - `kata_shim_*`: the runtime's own process (this one: CPU time, resident memory, threads,
//!   open file descriptors), from `/proc/self`;
//! - `kata_hypervisor_*`: each host process of the VM ([`Sandbox::host_pids`]: the VMM and its
//!   helpers), labelled by pid and name, from `/proc/<pid>`;
//! - `kata_guest_*`, `kata_agent_*`: the guest's, from the agent's `GetMetrics`, checked at the
//!   edge (kata-agent-client's [`GuestMetrics`]) and asked for within a timeout; a guest that
//!   does not answer in time (hung, paused) leaves them out and `kata_guest_up` is 0;
//! - `kata_sandbox_*`: boot timings and the number of containers.
//!
//! No sample carries the sandbox id: a management socket belongs to one sandbox, and an
//! aggregator adds the label ([`with_label`]), as Kata's `kata-monitor` does.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kata_agent_client::Agent;

use crate::error::{Error, Result};
use crate::Sandbox;

pub use kata_agent_client::api::metrics::{
    parse, valid_name, with_label, GuestMetrics, Line, MetricKind, MetricsText, ParseError,
    CONTENT_TYPE,
};

/// How long [`Sandbox::metrics`] waits for the guest's figures.
pub const DEFAULT_GUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/proc/<pid>` says of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessFigures {
    /// Its name (`comm`).
    pub name: String,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: f64,
    /// Threads.
    pub threads: f64,
    /// Open file descriptors (`None` when they cannot be listed).
    pub open_fds: Option<f64>,
}

impl ProcessFigures {
    /// Reads a process's directory under a proc filesystem (`/proc/<pid>`, `/proc/self`);
    /// `None` when it is gone or unreadable.
    pub fn read(dir: &Path) -> Option<Self> {
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; the last ')' ends it.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let name = stat.get(open + 1..close)?.to_string();
        let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
        // After comm: state is field 3 (index 0 here); utime 14, stime 15, num_threads 20.
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let ticks = clock_ticks();
        let cpu_seconds = (field(14)? + field(15)?) / ticks;
        let threads = field(20)?;
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let resident_kib = status
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
        let open_fds = std::fs::read_dir(dir.join("fd"))
            .ok()
            .map(|d| d.count() as f64);
        Some(ProcessFigures {
            name,
            cpu_seconds,
            resident_bytes: resident_kib * 1024.0,
            threads,
            open_fds,
        })
    }
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

/// Writes the four families of process figures under `prefix` for `procs` (labelled by pid
/// and name when `labelled`).
fn write_processes(
    out: &mut MetricsText,
    prefix: &str,
    whose: &str,
    procs: &[(u32, ProcessFigures)],
    labelled: bool,
) {
    if procs.is_empty() {
        return;
    }
    let pids: Vec<String> = procs.iter().map(|(pid, _)| pid.to_string()).collect();
    let labels = |i: usize| -> Vec<(&str, &str)> {
        if labelled {
            vec![
                ("pid", pids[i].as_str()),
                ("name", procs[i].1.name.as_str()),
            ]
        } else {
            Vec::new()
        }
    };
    type Get = fn(&ProcessFigures) -> Option<f64>;
    let families: [(&str, MetricKind, &str, Get); 4] = [
        (
            "cpu_seconds_total",
            MetricKind::Counter,
            "user and system CPU time",
            |p| Some(p.cpu_seconds),
        ),
        (
            "resident_memory_bytes",
            MetricKind::Gauge,
            "resident memory",
            |p| Some(p.resident_bytes),
        ),
        ("threads", MetricKind::Gauge, "threads", |p| Some(p.threads)),
        (
            "open_fds",
            MetricKind::Gauge,
            "open file descriptors",
            |p| p.open_fds,
        ),
    ];
    for (suffix, kind, what, get) in families {
        out.family(
            &format!("{prefix}_{suffix}"),
            kind,
            &format!("{whose}: {what}."),
        );
        for (i, (_, p)) in procs.iter().enumerate() {
            if let Some(v) = get(p) {
                out.sample(&labels(i), v);
            }
        }
    }
}

/// `GetMetrics` within `timeout`; a paused guest is not asked (it cannot answer).
pub(crate) async fn guest_metrics(
    agent: &Agent,
    paused: &AtomicBool,
    timeout: Duration,
) -> Result<GuestMetrics> {
    if paused.load(Ordering::SeqCst) {
        return Err(Error::invalid(
            "guest metrics",
            "the sandbox is paused: its guest cannot answer until it is resumed",
        ));
    }
    let agent = agent.with_request_timeout(timeout);
    match tokio::time::timeout(timeout, agent.get_metrics()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(kata_agent_client::Error::Timeout {
            method: "GetMetrics",
            timeout,
        }
        .into()),
    }
}

impl Sandbox {
    /// The sandbox's figures as Prometheus text (see the [module](self)): the runtime's
    /// process, the VM's host processes, the guest's (asked for within
    /// [`DEFAULT_GUEST_TIMEOUT`]) and the boot timings. Never fails: what cannot be read is
    /// left out, and `kata_guest_up` says whether the guest answered.
    pub async fn metrics(&self) -> String {
        self.metrics_within(DEFAULT_GUEST_TIMEOUT).await
    }

    /// [`metrics`](Self::metrics) waiting at most `guest_timeout` for the guest.
    pub async fn metrics_within(&self, guest_timeout: Duration) -> String {
        let guest = match self.core.alive() {
            Ok(()) => self.core.handler.guest_metrics(guest_timeout).await,
            Err(e) => Err(e),
        };
        let mut out = MetricsText::new();
        if let Some(me) = ProcessFigures::read(Path::new("/proc/self")) {
            let pid = std::process::id();
            write_processes(
                &mut out,
                "kata_shim",
                "The runtime's process",
                &[(pid, me)],
                false,
            );
        }
        let vmm: Vec<(u32, ProcessFigures)> = self
            .host_pids()
            .into_iter()
            .filter_map(|pid| {
                Some((
                    pid,
                    ProcessFigures::read(&Path::new("/proc").join(pid.to_string()))?,
                ))
            })
            .collect();
        write_processes(
            &mut out,
            "kata_hypervisor",
            "Each host process of the VM (the VMM and its helpers)",
            &vmm,
            true,
        );
        let timings = self.boot_timings();
        out.family(
            "kata_sandbox_boot_seconds",
            MetricKind::Gauge,
            "Time from the start of the sandbox to each boot step (0 for a restored sandbox; validation: before the start).",
        );
        for (step, d) in [
            ("validation", timings.validation),
            ("host_resources", timings.host_resources),
            ("helpers_started", timings.helpers_started),
            ("vmm_running", timings.vmm_running),
            ("vm_started", timings.vm_started),
            ("guest_answering", timings.guest_answering),
            ("agent_connected", timings.agent_connected),
            ("ready", timings.ready),
        ] {
            out.sample(&[("step", step)], d.as_secs_f64());
        }
        out.family(
            "kata_sandbox_containers",
            MetricKind::Gauge,
            "Containers in the sandbox.",
        )
        .sample(&[], self.container_ids().len() as f64);
        out.family(
            "kata_guest_up",
            MetricKind::Gauge,
            "1 when the guest's agent answered GetMetrics in time, else 0.",
        );
        match guest {
            Ok(guest) => {
                out.sample(&[], 1.0);
                if guest.dropped() > 0 {
                    tracing::warn!(sandbox_id = %self.id(), dropped = guest.dropped(), "the guest's metrics had lines that are not its own or not Prometheus text: dropped");
                }
                out.family(
                    "kata_guest_metrics_dropped_lines",
                    MetricKind::Gauge,
                    "Lines of the guest's last GetMetrics answer that were dropped at the edge.",
                )
                .sample(&[], guest.dropped() as f64);
                out.append(&guest.to_text());
            }
            Err(e) => {
                tracing::debug!(sandbox_id = %self.id(), error = %e, "no guest metrics");
                out.sample(&[], 0.0);
            }
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_from_a_fixture() {
        let d = tempfile::tempdir().unwrap();
        // comm with a space and a parenthesis; utime 300, stime 100, 7 threads.
        std::fs::write(
            d.path().join("stat"),
            "42 (qemu (x) 1) S 1 42 42 0 -1 4194560 100 0 0 0 300 100 0 0 20 0 7 0 1000 1 1\n",
        )
        .unwrap();
        std::fs::write(d.path().join("status"), "Name:\tq\nVmRSS:\t  2048 kB\n").unwrap();
        std::fs::create_dir_all(d.path().join("fd/3")).unwrap();
        let p = ProcessFigures::read(d.path()).unwrap();
        assert_eq!(p.name, "qemu (x) 1");
        assert_eq!(p.cpu_seconds, 400.0 / clock_ticks());
        assert_eq!(p.threads, 7.0);
        assert_eq!(p.resident_bytes, 2048.0 * 1024.0);
        assert_eq!(p.open_fds, Some(1.0));
        assert!(ProcessFigures::read(&d.path().join("gone")).is_none());
    }

    #[test]
    fn process_families_parse_back_with_their_labels() {
        let me = ProcessFigures::read(Path::new("/proc/self")).unwrap();
        assert!(me.threads >= 1.0 && me.resident_bytes > 0.0 && me.open_fds.unwrap() >= 3.0);
        let mut out = MetricsText::new();
        write_processes(
            &mut out,
            "kata_hypervisor",
            "VM",
            &[(7, me.clone()), (8, me)],
            true,
        );
        let text = out.finish();
        let lines = parse(&text).unwrap();
        let samples: Vec<_> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Sample { name, labels, .. } => Some((name.as_str(), labels[0].1.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(samples.len(), 8, "{text}");
        assert!(samples.contains(&("kata_hypervisor_threads", "8")));
        assert!(text.contains("# TYPE kata_hypervisor_cpu_seconds_total counter\n"));
    }
}
