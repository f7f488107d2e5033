//! The typed `Agent` against a hostile agent: `kata_testkit::fake_agent`, a fake that answers
//! with garbage, oversized frames, silence, a connection cut mid-reply, or floods of output,
//! events and unsolicited replies (none of which the real kata-agent does; a compromised guest
//! can). Whatever it does, each call ends within its timeout with an error that says what
//! happened, the connection keeps answering other calls where it can, memory stays bounded and
//! nothing panics.

use std::time::{Duration, Instant};

use kata_agent_client::{Agent, AgentAddress, ConnectOptions, OutputStream};
use kata_testkit::fake_agent::{FakeAgent, Fault};

/// Every call's deadline here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// What "promptly" means for a call that should fail or be answered at once.
const PROMPT: Duration = Duration::from_millis(2500);
/// How much the process may grow while a flood runs (the floods move hundreds of MiB).
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// The memory measurements are of the whole test process: one flood at a time.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(fake: &FakeAgent) -> Agent {
    let opts = ConnectOptions {
        dial_timeout: Duration::from_secs(5),
        request_timeout: REQUEST_TIMEOUT,
        retry_interval: Duration::from_millis(10),
    };
    Agent::connect(&AgentAddress::Unix(fake.socket().to_path_buf()), opts)
        .await
        .expect("the fake agent accepts connections")
}

/// The resident set of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Runs `call`, which must end within `within`; returns its result.
async fn ends_within<T>(within: Duration, call: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = tokio::time::timeout(within, call)
        .await
        .unwrap_or_else(|_| panic!("the call did not end within {within:?}"));
    assert!(start.elapsed() <= within);
    out
}

/// `check` is answered promptly: the connection is still usable.
async fn still_answers(agent: &Agent) {
    ends_within(PROMPT, agent.check())
        .await
        .expect("the fake still answers Health.Check");
}

#[tokio::test]
async fn a_reply_that_is_not_the_message_fails_that_call_and_no_other() {
    let fake = FakeAgent::start([
        // A length-delimited field whose length runs past the end: not any message.
        (
            "StatsContainer",
            Fault::GarbageReply(vec![0x0a, 0xff, 0xff, 0x03, 0x01]),
        ),
        ("ListProcesses", Fault::GarbageReply(vec![0xff; 32])),
    ])
    .unwrap();
    let agent = connect(&fake).await;
    let err = ends_within(PROMPT, agent.stats("c1")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("StatsContainer"), "{text}");
    still_answers(&agent).await;
    let err = ends_within(PROMPT, agent.container_pids("c1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ListProcesses"), "{err}");
    still_answers(&agent).await;
}

#[tokio::test]
async fn a_frame_that_is_not_a_ttrpc_response_fails_the_call_promptly() {
    let fake =
        FakeAgent::start([("GetGuestDetails", Fault::GarbageFrame(vec![0xff; 100]))]).unwrap();
    let agent = connect(&fake).await;
    let err = ends_within(PROMPT, agent.guest_details())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("GetGuestDetails"), "{err}");
    // Whatever the client made of the connection, the next call ends promptly too.
    let _ = ends_within(PROMPT, agent.check()).await;
}

#[tokio::test]
async fn bytes_that_break_the_framing_fail_every_call_promptly_and_nothing_hangs() {
    // A header announcing a response to stream 1 of 3 bytes, then 200 bytes of noise.
    let mut raw = vec![0, 0, 0, 3, 0, 0, 0, 1, 2, 0, 1, 2, 3];
    raw.extend((0..200u32).map(|i| (i * 37) as u8));
    let fake = FakeAgent::start([("WaitProcess", Fault::RawBytes(raw))]).unwrap();
    let agent = connect(&fake).await;
    let err = ends_within(PROMPT, agent.wait_process("c1", "", Some(REQUEST_TIMEOUT)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("WaitProcess"), "{err}");
    // ttRPC does not resynchronise: later calls read the noise as frames and end at their
    // deadline (the sandbox's health monitor then declares the agent dead). None hangs.
    for _ in 0..3 {
        let _ = ends_within(PROMPT, agent.check()).await;
    }
}

#[tokio::test]
async fn an_oversized_reply_is_refused_within_bounded_memory() {
    let _one = MEMORY.lock().await;
    // Twice ttRPC's 4 MiB bound, sent in full.
    let fake = FakeAgent::start([("ListProcesses", Fault::Oversized(8 << 20))]).unwrap();
    let agent = connect(&fake).await;
    let before = rss_kib();
    for _ in 0..8 {
        let err = ends_within(PROMPT, agent.container_pids("c1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ListProcesses"), "{err}");
        let _ = ends_within(PROMPT, agent.check()).await;
    }
    let grew = rss_kib().saturating_sub(before);
    println!("8 oversized replies refused, RSS grew {grew} KiB");
    assert!(
        grew < RSS_BOUND_KIB,
        "grew {grew} KiB over 8 oversized replies"
    );
}

#[tokio::test]
async fn a_wait_never_answered_times_out_while_other_calls_are_answered() {
    let fake = FakeAgent::start([("WaitProcess", Fault::NeverAnswer)]).unwrap();
    let agent = connect(&fake).await;
    // One wait without a deadline (a container may run for days) stays pending...
    let forever = tokio::spawn({
        let agent = agent.clone();
        async move { agent.wait_process("c1", "", None).await }
    });
    // ...one with a deadline ends at it, saying so...
    let start = Instant::now();
    let err = agent
        .wait_process("c1", "e1", Some(Duration::from_millis(500)))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < PROMPT,
        "took {took:?}"
    );
    assert!(err.to_string().contains("WaitProcess"), "{err}");
    // ...and the connection answers everything else meanwhile.
    for _ in 0..20 {
        still_answers(&agent).await;
    }
    assert!(!forever.is_finished());
    forever.abort();
}

#[tokio::test]
async fn a_connection_closed_mid_reply_fails_the_call_and_later_ones_promptly() {
    let fake = FakeAgent::start([("GetGuestDetails", Fault::CloseMidReply)]).unwrap();
    let agent = connect(&fake).await;
    let pending_wait = tokio::spawn({
        let agent = agent.clone();
        async move { agent.wait_process("c1", "", None).await }
    });
    let err = ends_within(PROMPT, agent.guest_details())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("GetGuestDetails"), "{err}");
    // The connection is gone: the call waiting for ever ends with it, and new calls fail
    // at once with an error that says the connection was lost.
    let wait = ends_within(PROMPT, pending_wait).await.unwrap();
    // (The fake answered the wait at once, or the wait saw the connection close.)
    let _ = wait;
    let err = ends_within(PROMPT, agent.check()).await.unwrap_err();
    assert!(err.is_connection_closed(), "{err}");
}

#[tokio::test]
async fn endless_output_is_read_in_bounded_memory_and_the_agent_stays_responsive() {
    let _one = MEMORY.lock().await;
    // 1 MiB per ReadStdout, every time, for ever.
    let fake = FakeAgent::start([("ReadStdout", Fault::Flood(1 << 20))]).unwrap();
    let agent = connect(&fake).await;
    let before = rss_kib();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut read = 0u64;
    while Instant::now() < deadline {
        let chunk = ends_within(
            PROMPT,
            agent.read_output("c1", "", OutputStream::Stdout, 32 * 1024, None),
        )
        .await
        .expect("a flood chunk")
        .expect("never the end");
        read += chunk.len() as u64;
        if read % (64 << 20) < (1 << 20) {
            still_answers(&agent).await;
        }
    }
    still_answers(&agent).await;
    let grew = rss_kib().saturating_sub(before);
    println!(
        "read {} MiB of output in 3 s, RSS grew {grew} KiB",
        read >> 20
    );
    assert!(read > 64 << 20, "only {read} bytes read in 3 s");
    assert!(
        grew < RSS_BOUND_KIB,
        "grew {grew} KiB while reading {} MiB",
        read >> 20
    );
}

#[tokio::test]
async fn endless_oom_events_are_taken_in_bounded_memory() {
    let _one = MEMORY.lock().await;
    let fake = FakeAgent::start([("GetOOMEvent", Fault::Flood(64))]).unwrap();
    let agent = connect(&fake).await;
    let mut events = agent.oom_events();
    let before = rss_kib();
    for _ in 0..5_000 {
        let id = ends_within(PROMPT, events.next()).await.expect("an event");
        assert_eq!(id.len(), 64);
    }
    still_answers(&agent).await;
    let grew = rss_kib().saturating_sub(before);
    println!("5000 OOM events, RSS grew {grew} KiB");
    assert!(grew < RSS_BOUND_KIB, "grew {grew} KiB over 5000 events");
}

#[tokio::test]
async fn a_flood_of_unsolicited_replies_is_dropped_in_bounded_memory() {
    let _one = MEMORY.lock().await;
    let fake = FakeAgent::start([("Check", Fault::UnsolicitedFlood)]).unwrap();
    let agent = connect(&fake).await;
    let before = rss_kib();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    while Instant::now() < deadline {
        still_answers(&agent).await;
        answered += 1;
    }
    let grew = rss_kib().saturating_sub(before);
    println!(
        "{} MiB unsolicited, {answered} checks answered in 3 s, RSS grew {grew} KiB",
        fake.bytes_sent() >> 20
    );
    assert!(
        fake.bytes_sent() > 4 << 20,
        "the flood sent only {} bytes",
        fake.bytes_sent()
    );
    assert!(answered > 10, "only {answered} checks answered in 3 s");
    assert!(grew < RSS_BOUND_KIB, "grew {grew} KiB under the flood");
}

#[tokio::test]
async fn an_agent_claiming_more_stdin_than_it_was_sent_is_refused() {
    // WriteStreamResponse { len: u32::MAX } for a 3-byte write.
    let fake = FakeAgent::start([(
        "WriteStdin",
        Fault::GarbageReply(vec![0x08, 0xff, 0xff, 0xff, 0xff, 0x0f]),
    )])
    .unwrap();
    let agent = connect(&fake).await;
    let err = ends_within(PROMPT, agent.write_stdin("c1", "", b"abc"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("WriteStdin") && text.contains("4294967295") && text.contains("3"),
        "{text}"
    );
    still_answers(&agent).await;
}
