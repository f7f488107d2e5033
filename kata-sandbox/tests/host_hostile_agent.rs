//! Tier 2, a hostile agent at the sandbox level (issue 14 item 3): the whole runtime — a
//! [`Sandbox`] on the test backend (`[hypervisor.host-agent]`) — facing an agent that answers
//! with garbage, oversized frames, silence, floods and cut connections
//! (`kata_testkit::fake_agent`). `kata-agent-client/tests/hostile_agent.rs` drives the client
//! alone; here build, create, start, wait, kill and shutdown must stay responsive (every call
//! within a bound), keep this process's memory bounded, report errors, and leave nothing.
//!
//! The test backend runs the program its `path` names as the guest's agent. This binary is
//! that program too: started with the agent's arguments (`--no-init ... --listen unix://...`)
//! it serves `kata_testkit::fake_agent` on that socket, with the faults the sandbox's
//! `kernel_params` name (`fake_agent.fault=<Method>:<kind>[:<bytes>]`, which the backend passes
//! as the agent's `--kernel-params`). No hook in the backend: the fake is an agent program like
//! any other, in the same private namespaces.
//!
//! Needs root (the backend's namespaces and mounts). One case:
//! `cargo test -p kata-sandbox --test host_hostile_agent -- <filter>`.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_sandbox::{
    ContainerSpec, Error, HypervisorConfig, HypervisorType, ProcessSpec, Sandbox, SandboxBuilder,
    Signal,
};
use kata_testkit::fake_agent::{FakeAgent, Fault};
use kata_testkit::harness::Suite;
use kata_testkit::leaks::{mounts_under, processes_mentioning};

/// The kernel-parameter word that gives the fake one fault.
const FAULT_WORD: &str = "fake_agent.fault=";
/// The longest any one sandbox call may take against a hostile agent.
const CALL_BOUND: Duration = Duration::from_secs(30);
/// How much this process's resident memory may grow in a case.
const RSS_BOUND_MIB: u64 = 192;
/// The agent's request deadline in these sandboxes (Kata's default is 30 s).
const REQUEST_TIMEOUT_MS: u32 = 4_000;

/// A fault as a `kernel_params` word names it: `<kind>[:<bytes>]`.
fn parse_fault(kind: &str) -> Option<Fault> {
    let (kind, n) = match kind.split_once(':') {
        Some((k, n)) => (k, n.parse::<usize>().ok()?),
        None => (kind, 0),
    };
    Some(match kind {
        "raw" => Fault::RawBytes(vec![0xff; 64]),
        "garbage-frame" => Fault::GarbageFrame(vec![0xff; 32]),
        "garbage-reply" => Fault::GarbageReply(vec![0xff; 32]),
        "oversized" => Fault::Oversized(n),
        "never" => Fault::NeverAnswer,
        "close-mid-reply" => Fault::CloseMidReply,
        "flood" => Fault::Flood(n),
        "unsolicited" => Fault::UnsolicitedFlood,
        _ => return None,
    })
}

/// Run as the test backend's agent program: serve the fake on `--listen unix://<socket>` with
/// the faults of `--kernel-params`, until killed.
fn fake_agent_main(args: &[String]) -> ExitCode {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(socket) = value("--listen").and_then(|l| l.strip_prefix("unix://").map(PathBuf::from))
    else {
        eprintln!("fake agent: no --listen unix://<socket> in {args:?}");
        return ExitCode::FAILURE;
    };
    let params = value("--kernel-params").unwrap_or_default();
    let mut faults = Vec::new();
    for word in params.split_whitespace() {
        if let Some(spec) = word.strip_prefix(FAULT_WORD) {
            let Some((method, kind)) = spec.split_once(':') else {
                eprintln!("fake agent: {word}: expected <Method>:<kind>");
                return ExitCode::FAILURE;
            };
            let Some(fault) = parse_fault(kind) else {
                eprintln!("fake agent: {word}: unknown fault");
                return ExitCode::FAILURE;
            };
            faults.push((method.to_string(), fault));
        }
    }
    eprintln!("fake agent on {}: {faults:?}", socket.display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the fake agent");
    runtime.block_on(async {
        let _fake =
            FakeAgent::start_at(&socket, faults.iter().map(|(m, f)| (m.as_str(), f.clone())))
                .expect("the fake agent binds its socket");
        std::future::pending::<()>().await;
    });
    ExitCode::SUCCESS
}

/// The cases' environment: a sandbox root and a busybox rootfs.
struct Env {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
}

impl Env {
    fn root(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// A sandbox on the test backend whose agent is this binary with `faults`
    /// (`Method:kind` each).
    fn builder(&self, id: &str, faults: &[&str]) -> Result<SandboxBuilder> {
        let exe = std::env::current_exe()?;
        let params: Vec<String> = faults.iter().map(|f| format!("{FAULT_WORD}{f}")).collect();
        Ok(Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(HypervisorConfig {
                path: exe.display().to_string(),
                ..HypervisorConfig::default()
            })
            .kernel_params(&params.join(" "))
            .id(id)
            .root_dir(self.root())
            .agent_timeout(Duration::from_secs(5)))
    }

    /// Starts the sandbox, with the agent's request deadline short enough for a test.
    async fn start(&self, id: &str, faults: &[&str]) -> Result<Sandbox, Error> {
        let mut config = self
            .builder(id, faults)
            .map_err(|e| Error::Io {
                context: "the test's own executable".into(),
                source: std::io::Error::other(e.to_string()),
            })?
            .finish()?;
        config.agent.request_timeout_ms = REQUEST_TIMEOUT_MS;
        Sandbox::start(config).await
    }

    fn spec(&self, args: &[&str]) -> ContainerSpec {
        ContainerSpec::from_rootfs_dir(&self.rootfs).args(args.iter().copied())
    }

    /// Nothing of sandbox `id` is left: no directory, mount under the root, or process naming
    /// its directory (the fake agent included).
    fn nothing_left(&self, id: &str) -> Result<()> {
        let dir = self.root().join(id);
        let t0 = Instant::now();
        loop {
            let procs = processes_mentioning(&format!("{}/", dir.display()), "--exact");
            let mounts = mounts_under(&self.root());
            if !dir.exists() && procs.is_empty() && mounts.is_empty() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "left of {id}: directory {}, mounts {mounts:?}, processes {procs:?}",
                    dir.exists()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// This process's resident memory in MiB.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// `fut` within [`CALL_BOUND`]; a call that takes longer is the failure "not responsive".
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<(T, Duration)> {
    let t0 = Instant::now();
    match tokio::time::timeout(CALL_BOUND, fut).await {
        Ok(v) => Ok((v, t0.elapsed())),
        Err(_) => bail!("{what} did not return within {CALL_BOUND:?}: not responsive"),
    }
}

/// The first line of an error, for the case's output line.
fn line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    let s = s.lines().next().unwrap_or("").to_string();
    if s.len() > 160 {
        format!("{}...", &s[..s.floor_char_boundary(160)])
    } else {
        s
    }
}

/// Building against an agent that breaks the reply to `CreateSandbox` (and, for
/// `Check`, to the health check) fails within the bound, says so, and leaves nothing.
async fn case_build_fails_cleanly(env: Arc<Env>) -> Result<()> {
    for (i, fault) in [
        "CreateSandbox:raw",
        "CreateSandbox:garbage-frame",
        "CreateSandbox:garbage-reply",
        "CreateSandbox:oversized:67108864",
        "CreateSandbox:close-mid-reply",
        "CreateSandbox:never",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("hostile-build-{i}");
        let (built, took) =
            bounded(&format!("build with {fault}"), env.start(&id, &[fault])).await?;
        match built {
            Ok(sb) => {
                let _ = sb.shutdown().await;
                bail!("{fault}: the sandbox was built");
            }
            Err(e) => println!("    build x {fault:<36} error in {took:.1?}: {}", line(&e)),
        }
        env.nothing_left(&id)
            .with_context(|| format!("after a build with {fault}"))?;
    }
    Ok(())
}

/// `WaitProcess` never answers: waiting is the guest's to end, but kill, delete and
/// shutdown are not held up by it, and the pending wait ends with an error at shutdown.
async fn case_a_wait_that_never_answers(env: Arc<Env>) -> Result<()> {
    let id = "hostile-wait";
    let sb = env.start(id, &["WaitProcess:never"]).await?;
    let c = sb.create_container(env.spec(&["sleep", "600"])).await?;
    bounded("start", c.start()).await?.0?;
    // The wait itself: pending, and cancellable.
    let r = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
    ensure!(
        r.is_err(),
        "a wait answered by a silent agent returned: {r:?}"
    );
    let (killed, took_kill) = bounded("kill", c.kill(Signal::KILL)).await?;
    killed?;
    let (deleted, took_delete) = bounded("delete", c.delete()).await?;
    // The fake never says the process exited; delete may refuse or go on, but it returns.
    let (shut, took_shutdown) = bounded("shutdown", sb.shutdown()).await?;
    shut?;
    println!(
        "    wait x WaitProcess:never: kill {took_kill:.1?}, delete {took_delete:.1?} ({}), shutdown {took_shutdown:.1?}",
        match deleted {
            Ok(()) => "ok".to_string(),
            Err(e) => line(&e),
        }
    );
    env.nothing_left(id)
}

/// An agent that stops answering health checks (every `Check` unanswered) is declared dead
/// within the health check's bound: a wait the agent never answers ends with that error, and
/// the sandbox still shuts down.
async fn case_a_silent_agent_is_declared_dead(env: Arc<Env>) -> Result<()> {
    let id = "hostile-silent";
    let mut config = env
        .builder(id, &["Check:never", "WaitProcess:never"])?
        .finish()?;
    config.agent.request_timeout_ms = REQUEST_TIMEOUT_MS;
    config.agent.health_check_request_timeout_ms = 2_000;
    let sb = Sandbox::start(config).await?;
    let c = sb.create_container(env.spec(&["sleep", "600"])).await?;
    c.start().await?;
    let (waited, took) = bounded("a wait on a silent agent", c.wait()).await?;
    ensure!(waited.is_err(), "the wait says {waited:?}");
    let (shut, took_shutdown) = bounded("shutdown", sb.shutdown()).await?;
    println!(
        "    silent agent: declared dead after {took:.1?} ({}), shutdown {took_shutdown:.1?} ({})",
        line(&waited.unwrap_err()),
        match shut {
            Ok(()) => "ok".to_string(),
            Err(e) => line(&e),
        }
    );
    env.nothing_left(id)
}

/// A wait pending in another task when the sandbox shuts down ends with an error.
async fn case_a_pending_wait_ends_at_shutdown(env: Arc<Env>) -> Result<()> {
    let id = "hostile-wait-shutdown";
    let sb = Arc::new(env.start(id, &["WaitProcess:never"]).await?);
    let c = sb
        .create_container(env.spec(&["sleep", "600"]).id("w"))
        .await?;
    c.start().await?;
    let waiter = tokio::spawn({
        let sb = sb.clone();
        async move { sb.wait_process("w", "w").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !waiter.is_finished(),
        "the wait returned before anything happened"
    );
    drop(c);
    let (shut, took) = bounded("shutdown", sb.shutdown()).await?;
    shut?;
    let (waited, _) = bounded("the pending wait after shutdown", waiter).await?;
    let waited = waited?;
    ensure!(waited.is_err(), "the pending wait says {waited:?}");
    println!(
        "    pending wait x shutdown: shutdown {took:.1?}, the wait: {}",
        line(&waited.unwrap_err())
    );
    env.nothing_left(id)
}

/// Output and events floods: every `ReadStdout` answers 1 MiB, every `GetOOMEvent` an event
/// with a 1 MiB container id, for ever. A run stops at its output limit; memory stays bounded.
async fn case_floods_stay_bounded(env: Arc<Env>) -> Result<()> {
    let id = "hostile-flood";
    let before = rss_mib();
    let sb = env
        .start(
            id,
            &["ReadStdout:flood:1048576", "GetOOMEvent:flood:1048576"],
        )
        .await?;
    let spec = env.spec(&["true"]).output_limit(8 << 20);
    let (ran, took) = bounded("run under an output flood", sb.run(spec)).await?;
    ensure!(
        matches!(ran, Err(Error::OutputTooLarge { .. })),
        "the flood was not stopped at the output limit: {ran:?}"
    );
    // Let the event flood run on for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_mib().saturating_sub(before);
    let (shut, took_shutdown) = bounded("shutdown", sb.shutdown()).await?;
    shut?;
    println!(
        "    flood x ReadStdout, GetOOMEvent (1 MiB each): run {took:.1?} ({}), RSS +{grown} MiB, shutdown {took_shutdown:.1?}",
        line(&ran.unwrap_err())
    );
    ensure!(
        grown < RSS_BOUND_MIB,
        "RSS grew by {grown} MiB under the flood"
    );
    env.nothing_left(id)
}

/// Responses for requests nobody made, as fast as the agent can write: the sandbox's calls
/// still get their own answers, memory stays bounded.
async fn case_unsolicited_responses(env: Arc<Env>) -> Result<()> {
    let id = "hostile-unsolicited";
    let before = rss_mib();
    let sb = env.start(id, &["CreateSandbox:unsolicited"]).await?;
    let t0 = Instant::now();
    let mut answered = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let (c, _) = bounded(
            "create under a flood",
            sb.create_container(env.spec(&["true"])),
        )
        .await?;
        let c = c?;
        bounded("delete under a flood", c.delete()).await?.0?;
        answered += 1;
    }
    let grown = rss_mib().saturating_sub(before);
    let (shut, took) = bounded("shutdown", sb.shutdown()).await?;
    shut?;
    println!(
        "    unsolicited flood: {answered} create+delete answered in 3 s, RSS +{grown} MiB, shutdown {took:.1?}"
    );
    ensure!(answered > 0, "no call was answered");
    ensure!(grown < RSS_BOUND_MIB, "RSS grew by {grown} MiB");
    env.nothing_left(id)
}

/// A reply cut mid-way (`StartContainer`), an oversized one (`ReadStdout`, 64 MiB) and garbage
/// (`SignalProcess`): each call fails within the bound, and the sandbox still shuts down.
async fn case_broken_replies_fail_the_call(env: Arc<Env>) -> Result<()> {
    let id = "hostile-replies";
    let before = rss_mib();
    let sb = env
        .start(
            id,
            &[
                "StartContainer:close-mid-reply",
                "SignalProcess:garbage-reply",
                "ExecProcess:oversized:67108864",
            ],
        )
        .await?;
    let c = sb.create_container(env.spec(&["sleep", "600"])).await?;
    let (started, took) = bounded("start", c.start()).await?;
    ensure!(started.is_err(), "start succeeded on a cut reply");
    println!(
        "    start x close-mid-reply: error in {took:.1?}: {}",
        line(&started.unwrap_err())
    );
    let (killed, took) = bounded("kill", c.kill(Signal::KILL)).await?;
    ensure!(killed.is_err(), "kill succeeded on a garbage reply");
    println!(
        "    kill x garbage-reply: error in {took:.1?}: {}",
        line(&killed.unwrap_err())
    );
    let (exec, took) = bounded("exec", c.exec(ProcessSpec::new(["true"]))).await?;
    ensure!(exec.is_err(), "exec succeeded on an oversized reply");
    println!(
        "    exec x oversized 64 MiB: error in {took:.1?}: {}",
        line(&exec.unwrap_err())
    );
    let _ = bounded("delete", c.delete()).await?;
    let (shut, took) = bounded("shutdown", sb.shutdown()).await?;
    let grown = rss_mib().saturating_sub(before);
    println!("    shutdown after broken replies: {took:.1?} ({shut:?}), RSS +{grown} MiB");
    ensure!(grown < RSS_BOUND_MIB, "RSS grew by {grown} MiB");
    env.nothing_left(id)
}

fn setup() -> Result<Env> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the test backend needs root (namespaces, mounts)"
    );
    let tmp = tempfile::tempdir()?;
    let rootfs = tmp.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs)?;
    Ok(Env { tmp, rootfs })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--no-init") {
        return fake_agent_main(&args);
    }
    Suite::new("host_hostile_agent")
        .label("hostile agent (sandbox)")
        .timeout(Duration::from_secs(180))
        .case("build_fails_cleanly", case_build_fails_cleanly)
        .case("a_wait_that_never_answers", case_a_wait_that_never_answers)
        .case(
            "a_pending_wait_ends_at_shutdown",
            case_a_pending_wait_ends_at_shutdown,
        )
        .case(
            "a_silent_agent_is_declared_dead",
            case_a_silent_agent_is_declared_dead,
        )
        .case("floods_stay_bounded", case_floods_stay_bounded)
        .case("unsolicited_responses", case_unsolicited_responses)
        .case(
            "broken_replies_fail_the_call",
            case_broken_replies_fail_the_call,
        )
        .run_with(async { setup() })
}
