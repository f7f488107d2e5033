//! The agent's log stream: every log line goes to the console (stderr) and to the host that
//! connected to the log port (`agent.log_vport`, Kata's 1025).
//!
//! The agent never waits for the host. Lines logged before the host connects are kept (the
//! last [`EARLY_LINES`]: boot logs are not lost); afterwards each line is queued for the
//! connection's writer thread, at most [`QUEUE_LINES`] at a time. A line that finds the
//! queue full (a host reading too slowly) or pushes the oldest early line out is dropped and
//! counted, and the host is told how many before the next line it gets. A new connection
//! (the host's runtime restarted) takes over from the old one.
//!
//! Lines are the console's text (`<time> <LEVEL> <target>: <message> <fields>`), one per
//! `\n`, at most [`MAX_LINE`] bytes each.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use crate::side_port::PortListener;

/// Lines kept until the host connects.
pub const EARLY_LINES: usize = 1024;
/// Lines queued for a connected host.
pub const QUEUE_LINES: usize = 1024;
/// The longest line sent; longer ones are cut (and end with `\n`).
pub const MAX_LINE: usize = 8192;

/// Where log lines go besides the console. One per agent process ([`sink`]).
#[derive(Debug, Default)]
pub struct LogSink {
    state: Mutex<SinkState>,
}

#[derive(Debug, Default)]
struct SinkState {
    early: VecDeque<Vec<u8>>,
    host: Option<SyncSender<Vec<u8>>>,
    dropped: u64,
}

impl LogSink {
    /// Takes one line (never blocks): queued for the host, kept for it, or dropped and counted.
    pub fn push(&self, line: &[u8]) {
        let mut line = line[..line.len().min(MAX_LINE)].to_vec();
        if line.last() != Some(&b'\n') {
            if line.len() == MAX_LINE {
                line.pop();
            }
            line.push(b'\n');
        }
        let mut state = self.lock();
        if let Some(tx) = &state.host {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => state.dropped += 1,
                // The writer is gone (the host closed): keep lines for the next one.
                Err(TrySendError::Disconnected(line)) => {
                    state.host = None;
                    keep_early(&mut state, line);
                }
            }
        } else {
            keep_early(&mut state, line);
        }
    }

    /// A host connected: its queue, primed with the lines kept so far.
    fn attach(&self) -> Receiver<Vec<u8>> {
        let (tx, rx) = sync_channel(QUEUE_LINES + EARLY_LINES);
        let mut state = self.lock();
        for line in state.early.drain(..) {
            // Cannot fail: the queue has room for every early line.
            let _ = tx.try_send(line);
        }
        state.host = Some(tx);
        rx
    }

    /// Lines dropped since the last call.
    fn take_dropped(&self) -> u64 {
        std::mem::take(&mut self.lock().dropped)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // A panic while the lock is held leaves a usable queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn keep_early(state: &mut SinkState, line: Vec<u8>) {
    if state.early.len() == EARLY_LINES {
        state.early.pop_front();
        state.dropped += 1;
    }
    state.early.push_back(line);
}

/// The agent's sink.
pub fn sink() -> &'static Arc<LogSink> {
    static SINK: OnceLock<Arc<LogSink>> = OnceLock::new();
    SINK.get_or_init(Default::default)
}

/// A writer for `tracing_subscriber::fmt().with_writer(kata_agent::logport::writer)`: each
/// formatted event goes to stderr (the console) and to [`sink`].
pub fn writer() -> LogWriter {
    LogWriter {
        sink: Arc::clone(sink()),
    }
}

/// What [`writer`] returns.
#[derive(Debug)]
pub struct LogWriter {
    sink: Arc<LogSink>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        for line in buf.split_inclusive(|b| *b == b'\n') {
            self.sink.push(line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Serves the log stream on `port` of the agent's transport until the listener is dropped.
pub fn serve(listen: &str, port: u32) -> io::Result<Arc<PortListener>> {
    let listener = Arc::new(PortListener::bind(listen, port)?);
    let l = Arc::clone(&listener);
    std::thread::Builder::new()
        .name("log-port".into())
        .spawn(move || {
            while let Ok(conn) = l.accept() {
                let rx = sink().attach();
                // One writer per connection; a later connection's attach ends this one.
                let spawned = std::thread::Builder::new()
                    .name("log-port-writer".into())
                    .spawn(move || write_lines(sink(), rx, conn));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the log stream's writer");
                }
            }
        })?;
    tracing::info!(port = listener.name(), "log stream listening");
    Ok(listener)
}

/// Copies queued lines to `out` until the queue is replaced or `out` fails.
fn write_lines(sink: &LogSink, rx: Receiver<Vec<u8>>, mut out: impl Write) {
    while let Ok(line) = rx.recv() {
        let dropped = sink.take_dropped();
        if dropped > 0 {
            let note = format!(
                "- WARN kata_agent::logport: {dropped} log lines dropped: the host read too slowly\n"
            );
            if out.write_all(note.as_bytes()).is_err() {
                return;
            }
        }
        if out.write_all(&line).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_lines_are_kept_up_to_a_bound_then_sent_first() {
        let sink = LogSink::default();
        for i in 0..EARLY_LINES + 5 {
            sink.push(format!("line {i}\n").as_bytes());
        }
        let rx = sink.attach();
        sink.push(b"after");
        drop(sink.lock().host.take());
        let got: Vec<Vec<u8>> = rx.iter().collect();
        assert_eq!(got.len(), EARLY_LINES + 1);
        assert_eq!(got[0], b"line 5\n");
        assert_eq!(got.last().unwrap(), b"after\n");
        assert_eq!(sink.take_dropped(), 5);
    }

    #[test]
    fn a_slow_host_loses_lines_counted_and_is_told() {
        let sink = LogSink::default();
        let rx = sink.attach();
        // Nobody reads: the agent goes on, lines beyond the queue are counted.
        for _ in 0..QUEUE_LINES + EARLY_LINES + 100 {
            sink.push(b"x\n");
        }
        assert_eq!(sink.lock().dropped, 100);
        drop(sink.lock().host.take());
        let mut out = Vec::new();
        write_lines(&sink, rx, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("- WARN kata_agent::logport: 100 log lines dropped"),
            "{}",
            &text[..80]
        );
    }

    #[test]
    fn long_lines_are_cut_and_end_with_a_newline() {
        let sink = LogSink::default();
        sink.push(&vec![b'a'; MAX_LINE * 2]);
        let line = sink.lock().early.pop_front().unwrap();
        assert_eq!(line.len(), MAX_LINE);
        assert_eq!(line.last(), Some(&b'\n'));
    }

    #[test]
    fn a_gone_host_leaves_lines_for_the_next() {
        let sink = LogSink::default();
        drop(sink.attach());
        sink.push(b"kept\n");
        let rx = sink.attach();
        assert_eq!(rx.try_recv().unwrap(), b"kept\n");
    }
}
