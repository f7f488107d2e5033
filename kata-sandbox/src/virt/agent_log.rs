//! The guest agent's log on the host: once the agent answers, the sandbox dials its log port
//! (`[agent.kata] log_port`, Kata's 1025) through the sandbox's write gate and re-emits each
//! line as a tracing event of target `kata_agent`, with the sandbox id and the level the agent
//! wrote (`KATA_RS_LOG=kata_agent=debug` selects them like any other target).
//!
//! The guest is not trusted: a line is at most [`MAX_LINE`] bytes (the rest is cut and the
//! event says `truncated`), invalid UTF-8 and control characters are replaced, and at most
//! [`LINES_PER_SECOND`] lines a second are re-emitted (the others are counted and the count
//! is logged once a second). Memory stays bounded whatever the guest sends. A stream that
//! ends (the agent restarted, the connection was lost) is dialled again; a restored sandbox
//! dials anew.
//!
//! Also here: the agent's kernel parameters `[agent.kata]` asks for
//! ([`with_agent_params`]) and the dial of the debug console's port
//! ([`dial_debug_console`]), the other side stream of the agent.

use std::time::{Duration, Instant};

use kata_agent_client::{connect, AgentAddress, ConnectOptions, WriteGate};
use tokio::io::AsyncReadExt;
use tracing::Level;

/// The longest line re-emitted; the rest of a longer line is dropped.
pub(crate) const MAX_LINE: usize = 8192;
/// Lines re-emitted per second at most; the rest are counted.
pub(crate) const LINES_PER_SECOND: u32 = 2000;
/// How long one dial of the log port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before the log port is dialled again.
const REDIAL_PAUSE: Duration = Duration::from_secs(1);

/// How long the debug console's port may take to answer.
const CONSOLE_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The VM's configuration with the guest kernel parameters `[agent.kata]` asks for appended
/// after `kernel_params` (`agent.log=debug`, `agent.log_vport`, `agent.debug_console`: see
/// `AgentConfig::guest_kernel_params`).
pub(crate) fn with_agent_params(
    hv: &kata_hypervisor::HypervisorConfig,
    agent: &kata_agent_client::config::AgentConfig,
) -> kata_hypervisor::HypervisorConfig {
    let mut hv = hv.clone();
    let ours = agent.guest_kernel_params();
    hv.kernel_params = format!("{} {ours}", hv.kernel_params.trim())
        .trim()
        .to_string();
    hv
}

/// Dials the debug console's port of the agent at `agent` through `gate`; a port that does
/// not answer is [`crate::Error::DebugConsoleDisabled`].
pub(crate) async fn dial_debug_console(
    sandbox_id: &str,
    agent: &AgentAddress,
    gate: &WriteGate,
) -> crate::Result<kata_agent_client::connect::GuestStream> {
    let opts = ConnectOptions {
        dial_timeout: CONSOLE_DIAL_TIMEOUT,
        ..Default::default()
    };
    let port = kata_agent_client::debug_console::DEFAULT_DEBUG_CONSOLE_PORT;
    connect::dial_port(agent, port, &opts, gate)
        .await
        .map_err(|e| crate::Error::DebugConsoleDisabled {
            sandbox_id: sandbox_id.to_string(),
            detail: format!("the guest does not answer on port {port}: {e}"),
        })
}

/// The task that reads the agent's log; it stops when dropped.
#[derive(Debug)]
pub(crate) struct AgentLog {
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl AgentLog {
    /// Starts reading the log of the agent at `agent` (its ttRPC address), port `port`.
    pub(crate) fn start(sandbox_id: &str, agent: AgentAddress, port: u32, gate: WriteGate) -> Self {
        let id = sandbox_id.to_string();
        let task = tokio::spawn(async move {
            let opts = ConnectOptions {
                dial_timeout: DIAL_TIMEOUT,
                ..Default::default()
            };
            loop {
                match connect::dial_port(&agent, port, &opts, &gate).await {
                    Ok(mut stream) => {
                        tracing::debug!(sandbox_id = %id, port, "reading the agent's log");
                        let mut emitter = LineEmitter::new(&id);
                        let mut buf = [0u8; 8192];
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => emitter.push(&buf[..n], Instant::now()),
                            }
                        }
                        emitter.finish(Instant::now());
                    }
                    Err(e) => {
                        tracing::debug!(sandbox_id = %id, port, error = %e, "the agent's log port does not answer")
                    }
                }
                tokio::time::sleep(REDIAL_PAUSE).await;
            }
        });
        AgentLog {
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Stops reading (shutdown, detach: the next owner reads it).
    pub(crate) fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

impl Drop for AgentLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One agent line as it is re-emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentLine {
    /// The level the agent logged it at (INFO when the line names none).
    pub level: Level,
    /// The line without the agent's timestamp and level, made printable.
    pub message: String,
    /// The agent's line was longer than [`MAX_LINE`] and was cut.
    pub truncated: bool,
}

/// Parses one of the agent's lines (`<time> <LEVEL> <target>: <message>`).
pub(crate) fn parse_line(raw: &[u8], truncated: bool) -> AgentLine {
    let text = String::from_utf8_lossy(raw);
    let text: String = text
        .trim_end_matches(['\n', '\r'])
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    let mut words = text.split_whitespace();
    let level = words.next().and(words.next()).and_then(|w| match w {
        "TRACE" => Some(Level::TRACE),
        "DEBUG" => Some(Level::DEBUG),
        "INFO" => Some(Level::INFO),
        "WARN" => Some(Level::WARN),
        "ERROR" => Some(Level::ERROR),
        _ => None,
    });
    let message = match level {
        Some(l) => {
            // Everything after the level word.
            let after = text.trim_start();
            let after =
                after[after.find(char::is_whitespace).unwrap_or(after.len())..].trim_start();
            after[l.as_str().len()..].trim_start().to_string()
        }
        None => text.trim().to_string(),
    };
    AgentLine {
        level: level.unwrap_or(Level::INFO),
        message,
        truncated,
    }
}

/// Where an emitter hands each line (`tracing` outside tests).
pub(crate) type LineSink<'a> = Box<dyn FnMut(&str, &AgentLine) + Send + 'a>;

/// Cuts the agent's byte stream into lines and re-emits them, bounded in memory and in rate.
pub(crate) struct LineEmitter<'a> {
    sandbox_id: &'a str,
    pending: Vec<u8>,
    /// The current line passed [`MAX_LINE`]: its rest is skipped up to the next newline.
    skipping: bool,
    window: Option<Instant>,
    in_window: u32,
    dropped: u64,
    emit: LineSink<'a>,
}

impl<'a> LineEmitter<'a> {
    /// An emitter that logs with `tracing`.
    pub(crate) fn new(sandbox_id: &'a str) -> Self {
        Self::with_sink(sandbox_id, Box::new(emit_event))
    }

    /// An emitter that hands each line to `emit` (tests).
    pub(crate) fn with_sink(sandbox_id: &'a str, emit: LineSink<'a>) -> Self {
        LineEmitter {
            sandbox_id,
            pending: Vec::new(),
            skipping: false,
            window: None,
            in_window: 0,
            dropped: 0,
            emit,
        }
    }

    /// Takes bytes read at `now`.
    pub(crate) fn push(&mut self, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (part, rest, ends) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.skipping {
                self.skipping = !ends;
                continue;
            }
            let room = MAX_LINE - self.pending.len();
            if part.len() > room {
                self.pending.extend_from_slice(&part[..room]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, true, now);
                self.skipping = !ends;
                continue;
            }
            self.pending.extend_from_slice(part);
            if ends {
                let line = std::mem::take(&mut self.pending);
                self.line(&line, false, now);
            }
        }
    }

    /// The stream ended: a last line without newline is emitted, the drop count too.
    pub(crate) fn finish(&mut self, now: Instant) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line(&line, false, now);
        }
        self.report_dropped();
    }

    fn line(&mut self, raw: &[u8], truncated: bool, now: Instant) {
        match self.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.report_dropped();
                self.window = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window >= LINES_PER_SECOND {
            self.dropped += 1;
            return;
        }
        self.in_window += 1;
        let line = parse_line(raw, truncated);
        (self.emit)(self.sandbox_id, &line);
    }

    fn report_dropped(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(sandbox_id = %self.sandbox_id, dropped = self.dropped, "agent log lines dropped: more than {LINES_PER_SECOND} a second");
            self.dropped = 0;
        }
    }
}

/// Re-emits one agent line as a `kata_agent` event (`truncated` only on a cut line).
fn emit_event(sandbox_id: &str, line: &AgentLine) {
    let (m, t) = (&line.message, line.truncated.then_some(true));
    match line.level {
        Level::ERROR => {
            tracing::error!(target: "kata_agent", sandbox_id = %sandbox_id, truncated = t, "{m}")
        }
        Level::WARN => {
            tracing::warn!(target: "kata_agent", sandbox_id = %sandbox_id, truncated = t, "{m}")
        }
        Level::INFO => {
            tracing::info!(target: "kata_agent", sandbox_id = %sandbox_id, truncated = t, "{m}")
        }
        Level::DEBUG => {
            tracing::debug!(target: "kata_agent", sandbox_id = %sandbox_id, truncated = t, "{m}")
        }
        Level::TRACE => {
            tracing::trace!(target: "kata_agent", sandbox_id = %sandbox_id, truncated = t, "{m}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn collect() -> (Arc<Mutex<Vec<AgentLine>>>, LineSink<'static>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        (
            got,
            Box::new(move |id: &str, l: &AgentLine| {
                assert_eq!(id, "sb");
                g.lock().unwrap().push(l.clone());
            }),
        )
    }

    #[test]
    fn the_agents_level_and_message_are_kept() {
        let l = parse_line(
            b"2026-11-30T04:00:00.1Z  WARN kata_agent::agent: cannot bring up lo error=x\n",
            false,
        );
        assert_eq!(l.level, Level::WARN);
        assert_eq!(l.message, "kata_agent::agent: cannot bring up lo error=x");
        let l = parse_line(b"no level here", false);
        assert_eq!(
            (l.level, l.message.as_str()),
            (Level::INFO, "no level here")
        );
        let l = parse_line(b"- DEBUG x", false);
        assert_eq!((l.level, l.message.as_str()), (Level::DEBUG, "x"));
    }

    #[test]
    fn invalid_utf8_and_control_characters_are_replaced() {
        let l = parse_line(b"t ERROR bad \xff\xfe bytes \x1b[31mred\r\n", false);
        assert_eq!(l.level, Level::ERROR);
        assert_eq!(l.message, "bad \u{fffd}\u{fffd} bytes \u{fffd}[31mred");
    }

    #[test]
    fn long_lines_are_cut_and_their_rest_skipped_without_growing() {
        let (got, sink) = collect();
        let mut e = LineEmitter::with_sink("sb", sink);
        let now = Instant::now();
        // 10 MiB without a newline, in pieces, then a short line.
        for _ in 0..160 {
            e.push(&[b'a'; 65536], now);
            assert!(e.pending.len() <= MAX_LINE);
        }
        e.push(b"aaa\nt INFO next\n", now);
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].truncated);
        assert_eq!(got[0].message.len(), MAX_LINE);
        assert_eq!((got[1].message.as_str(), got[1].truncated), ("next", false));
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let (got, sink) = collect();
        let mut e = LineEmitter::with_sink("sb", sink);
        let now = Instant::now();
        for chunk in b"t INFO hel".chunks(3).chain([&b"lo\nt WARN tail"[..]]) {
            e.push(chunk, now);
        }
        e.finish(now);
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].message, "hello");
        assert_eq!(
            (got[1].level, got[1].message.as_str()),
            (Level::WARN, "tail")
        );
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_counted() {
        let (got, sink) = collect();
        let mut e = LineEmitter::with_sink("sb", sink);
        let t0 = Instant::now();
        let flood = b"t INFO x\n".repeat(LINES_PER_SECOND as usize * 3);
        e.push(&flood, t0);
        assert_eq!(got.lock().unwrap().len(), LINES_PER_SECOND as usize);
        assert_eq!(e.dropped, u64::from(LINES_PER_SECOND) * 2);
        // A second later the window opens again (and the count is reported and reset).
        e.push(b"t INFO later\n", t0 + Duration::from_millis(1001));
        assert_eq!(e.dropped, 0);
        assert_eq!(got.lock().unwrap().last().unwrap().message, "later");
    }
}
