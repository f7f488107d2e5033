//! `Check` round trip to the kata-rs agent running on the host, over a unix socket.
//!
//! The agent binary is `$KATA_AGENT_BIN`, else the release build, else the debug build in the
//! shared target dir (`make bench` builds the release one first).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_agent_client::{Agent, AgentAddress, ConnectOptions};

fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KATA_AGENT_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| kata_benches::cache_dir().join("target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("kata-agent");
        if p.exists() {
            return p;
        }
    }
    panic!("no kata-agent binary: run `cargo build --release -p kata-agent` or set KATA_AGENT_BIN");
}

fn agent_rpc(c: &mut Criterion) {
    // A current-thread runtime: the round trip then measures the protocol, not cross-thread
    // wake-ups of an idle 2-core host (a multi-thread client measured ~100 µs here idle).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(agent_binary())
        .args(["--no-init", "--listen"])
        .arg(format!("unix://{}", sock.display()))
        .spawn()
        .expect("start the agent");
    let client = rt
        .block_on(Agent::connect(
            &AgentAddress::Unix(sock.clone()),
            ConnectOptions {
                dial_timeout: Duration::from_secs(10),
                ..Default::default()
            },
        ))
        .expect("agent answers");
    c.bench_function("agent_rpc/check_unix", |b| {
        b.to_async(&rt)
            .iter(|| async { client.check().await.unwrap() })
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

criterion_group!(benches, agent_rpc);
criterion_main!(benches);
