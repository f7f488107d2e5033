//! A `kata-monitor`-style aggregator: scrapes every shim's management socket under the state
//! root (`<root>/<sandbox>/shim-monitor.sock`) and prints one Prometheus text with a
//! `sandbox_id` label on every sample, each family's `# HELP` and `# TYPE` once.
//!
//! ```text
//! cargo run -p kata-shim --example kata_monitor -- [ROOT]     # ROOT: default /run/kata
//! ```
//!
//! An example, not a daemon of kata-rs: run it from node_exporter's textfile collector
//! (`kata_monitor > /var/lib/node_exporter/kata.prom.$$ && mv ...`), or put it behind any HTTP
//! server. A sandbox whose shim does not answer is reported as `kata_monitor_scrape_up 0`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kata_sandbox::metrics::{parse, with_label, Line, MetricKind, MetricsText};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(kata_shim::shim::root_dir);
    // family -> (its HELP and TYPE lines, its samples from every sandbox)
    let mut families: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut up = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&root)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let socket = kata_shim::monitor::socket_path(&entry.path());
        if !socket.exists() {
            continue;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        let lines = match kata_shim::monitor::fetch_metrics(&socket).await {
            Ok(text) => parse(&text).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let lines = match lines {
            Ok(lines) => lines,
            Err(e) => {
                eprintln!("kata_monitor: sandbox {id}: {e}");
                up.push((id, 0.0));
                continue;
            }
        };
        up.push((id.clone(), 1.0));
        for line in &lines {
            let (meta, samples) = families.entry(line.name().to_string()).or_default();
            match line {
                Line::Sample { .. } => {
                    samples.push(with_label(std::slice::from_ref(line), "sandbox_id", &id))
                }
                _ if meta.len() < 2 => meta.push(format!("{}\n", line.render())),
                _ => {}
            }
        }
    }
    let mut out = MetricsText::new();
    out.family(
        "kata_monitor_scrape_up",
        MetricKind::Gauge,
        "1 when the sandbox's shim answered.",
    );
    for (id, v) in &up {
        out.sample(&[("sandbox_id", id)], *v);
    }
    for (meta, samples) in families.values() {
        meta.iter().chain(samples).for_each(|l| {
            out.append(l);
        });
    }
    print!("{}", out.finish());
    Ok(())
}
