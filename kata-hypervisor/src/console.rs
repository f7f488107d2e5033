//! The guest's serial console, kept bounded.
//!
//! The guest controls what it writes to its console, so the host never stores it in something
//! that grows: a VMM's serial port goes to a unix socket that a [`ConsoleReader`] (a thread of
//! the backend) reads into a [`ConsoleRing`], a byte ring of fixed size kept in memory. A guest
//! that floods its console (`cat /dev/zero > /dev/ttyS0`) costs the host one ring and the CPU
//! to copy what it writes; older output is overwritten. The ring outlives the VM, so the
//! console of a VM that died is still there for the error that reports it.
//!
//! [`tail_lines`] reads the end of a log file by seeking (for backends whose output is a
//! file), never the whole file.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::unix::net::UnixStream;

use tokio::sync::watch;

/// Bytes a VM's console ring keeps (256 KiB: some thousands of lines).
pub const CONSOLE_RING_BYTES: usize = 256 * 1024;

/// Longest line a tail returns, in characters; a longer one is cut (a flood without newlines
/// is one line).
pub const MAX_LINE_CHARS: usize = 1024;

/// How much of the end of a file [`tail_lines`] reads at most.
const FILE_TAIL_BYTES: u64 = 64 * 1024;

/// A console line longer than this is logged in pieces (with `enable_debug`).
const LOG_LINE_BYTES: usize = 4096;

/// The reader's buffer: what one read takes at most.
const READ_BYTES: usize = 16 * 1024;

/// After a read that found little, the reader sleeps this long before the next one, so a
/// console written a byte at a time (QEMU's serial port writes each byte on its own) wakes it
/// at most 200 times a second instead of once a byte. What arrives meanwhile waits in the
/// socket (room for some 270 one-byte writes); a guest writing faster than that is held by
/// its serial port, whose drivers wait for it (the kernel's console polls up to 10 ms a
/// character). Measured by `tests/vm_qemu.rs` under TCG: a flood runs at about 50 KiB/s and
/// costs the reader about 5% of a core; the agent's median health check is 3 ms during it
/// (1-2 ms quiet; 5 ms when the console was a file); bursts of kernel and user-space lines
/// arrive whole. Reading each byte as it came cost a third of a core and made the agent's
/// median 10 ms; 10 ms is as long as the kernel's console waits.
const READ_PAUSE: Duration = Duration::from_millis(5);

/// The last bytes a guest wrote to its console: a ring of fixed capacity, shared between the
/// reader task that fills it and whoever asks for its tail.
#[derive(Debug)]
pub struct ConsoleRing {
    capacity: usize,
    inner: Mutex<RingInner>,
}

#[derive(Debug)]
struct RingInner {
    bytes: VecDeque<u8>,
    total: u64,
}

impl ConsoleRing {
    /// An empty ring keeping the last `capacity` bytes (at least 1). Its memory is allocated
    /// once, here.
    pub fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(ConsoleRing {
            capacity,
            inner: Mutex::new(RingInner {
                bytes: VecDeque::with_capacity(capacity),
                total: 0,
            }),
        })
    }

    /// Appends what the guest wrote, dropping the oldest bytes beyond the capacity.
    pub fn push(&self, data: &[u8]) {
        let mut r = self.inner.lock().unwrap();
        r.total += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (r.bytes.len() + data.len()).saturating_sub(self.capacity);
        r.bytes.drain(..overflow);
        r.bytes.extend(data);
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes held now (at most the capacity).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().bytes.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every byte ever pushed, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.inner.lock().unwrap().total
    }

    /// The last `n` non-blank lines, made safe to print (see [`printable_lines`]).
    pub fn tail_lines(&self, n: usize) -> Vec<String> {
        let bytes: Vec<u8> = {
            let r = self.inner.lock().unwrap();
            let (a, b) = r.bytes.as_slices();
            [a, b].concat()
        };
        printable_lines(&bytes, n)
    }
}

/// The last `n` non-blank lines of `bytes`: terminal escape sequences (`ESC [ ... m`,
/// `ESC c`) and control characters other than tab dropped, each line cut at
/// [`MAX_LINE_CHARS`] characters.
pub fn printable_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text
        .lines()
        .rev()
        .map(|l| printable(l).take(MAX_LINE_CHARS).collect::<String>())
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect();
    lines.reverse();
    lines
}

/// The characters of `line` a terminal would print, without its escape sequences.
fn printable(line: &str) -> impl Iterator<Item = char> + '_ {
    #[derive(Clone, Copy)]
    enum State {
        Text,
        Escape,
        Csi,
    }
    let mut state = State::Text;
    line.chars().filter(move |&c| {
        let (keep, next) = match (state, c) {
            (State::Text, '\u{1b}') => (false, State::Escape),
            (State::Text, c) => (!c.is_control() || c == '\t', State::Text),
            (State::Escape, '[') => (false, State::Csi),
            (State::Escape, _) => (false, State::Text),
            // Parameters and intermediates until a final byte `@`..`~`.
            (State::Csi, '@'..='~') => (false, State::Text),
            (State::Csi, _) => (false, State::Csi),
        };
        state = next;
        keep
    })
}

/// The last `n` lines of a log file (empty if it cannot be read), read from at most its last
/// 64 KiB by seeking: a file a guest or agent filled is never read whole. Lines are made safe
/// to print as [`printable_lines`] does.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let Ok(len) = file.seek(SeekFrom::End(0)) else {
        return Vec::new();
    };
    let start = len.saturating_sub(FILE_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.take(FILE_TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    if start > 0 {
        // The first line read is a piece of a longer one.
        let cut = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..cut);
    }
    printable_lines(&bytes, n)
}

/// The console lines as an error-message suffix: empty when there are none, else a header
/// line and the lines, each on its own line.
pub fn format_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\n--- last {} guest console lines ---\n{}",
            lines.len(),
            lines.join("\n")
        )
    }
}

/// A thread reading a VMM's console socket into a [`ConsoleRing`] until the VMM closes it.
///
/// A thread of its own rather than a task: it blocks in `read`, wakes only when there is
/// something to read, and needs no runtime. Dropping the reader shuts the connection down,
/// which ends the thread (the VMM's console then discards output until someone connects
/// again: a VM handed over to another process).
#[derive(Debug)]
pub struct ConsoleReader {
    stream: Arc<UnixStream>,
    done: watch::Receiver<bool>,
}

impl ConsoleReader {
    /// Connects to the console socket a VMM serves and starts reading it into `ring`. With
    /// `log_as` (a sandbox id), every complete line is also logged at debug level
    /// (`enable_debug`).
    pub fn connect(
        socket: &Path,
        ring: Arc<ConsoleRing>,
        log_as: Option<String>,
    ) -> std::io::Result<Self> {
        Self::start(UnixStream::connect(socket)?, ring, log_as)
    }

    /// Starts reading a connected stream (a socket pair in tests).
    pub fn start(
        stream: UnixStream,
        ring: Arc<ConsoleRing>,
        log_as: Option<String>,
    ) -> std::io::Result<Self> {
        let stream = Arc::new(stream);
        let (done_tx, done) = watch::channel(false);
        let reader = stream.clone();
        std::thread::Builder::new()
            .name("vm-console".into())
            .spawn(move || {
                read_console(&reader, &ring, log_as.as_deref());
                let _ = done_tx.send(true);
            })?;
        Ok(ConsoleReader { stream, done })
    }

    /// Whether the VMM closed the console (it exited) and everything it wrote is in the ring.
    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// A receiver that turns `true` once the console is closed and read to its end.
    pub fn done_watch(&self) -> watch::Receiver<bool> {
        self.done.clone()
    }
}

impl Drop for ConsoleReader {
    fn drop(&mut self) {
        // The thread's `read` returns 0 and it ends.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The reader thread: reads until the end of the stream (or its shutdown).
fn read_console(mut stream: &UnixStream, ring: &ConsoleRing, log_as: Option<&str>) {
    let mut buf = vec![0u8; READ_BYTES];
    let mut line = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                ring.push(&buf[..n]);
                if let Some(id) = log_as {
                    log_lines(id, &mut line, &buf[..n]);
                }
                if n < READ_BYTES / 2 {
                    std::thread::sleep(READ_PAUSE);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Waits up to `timeout` until `done` turns `true` (the reader has read the console of an
/// exited VMM to its end).
pub async fn wait_drained(mut done: watch::Receiver<bool>, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, done.wait_for(|d| *d)).await;
}

/// Logs the complete lines of `data` (with what `line` held from before); a line longer than
/// [`LOG_LINE_BYTES`] is logged in pieces.
fn log_lines(sandbox_id: &str, line: &mut Vec<u8>, data: &[u8]) {
    for &b in data {
        if b == b'\n' || line.len() >= LOG_LINE_BYTES {
            if let Some(text) = printable_lines(line, 1).pop() {
                tracing::debug!(target: "kata_hypervisor::console", sandbox_id, "{text}");
            }
            line.clear();
        }
        if b != b'\n' {
            line.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let text: String = (0..30).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&p, text).unwrap();
        let t = tail_lines(&p, 20);
        assert_eq!(t.len(), 20);
        assert_eq!(t[0], "line 10");
        assert_eq!(t[19], "line 29");
        assert!(tail_lines(&d.path().join("none"), 5).is_empty());
    }

    /// A 64 GiB log (sparse) is tailed from its end: reading it whole would need 64 GiB.
    #[test]
    fn a_huge_file_is_tailed_by_seeking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.log");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 30).unwrap();
        drop(f);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"\nlast but one\nthe last line\n").unwrap();
        assert_eq!(tail_lines(&p, 2), ["last but one", "the last line"]);
    }

    #[test]
    fn the_ring_keeps_the_newest_bytes_within_its_capacity() {
        let ring = ConsoleRing::new(16);
        ring.push(b"0123456789");
        ring.push(b"abcdefghij");
        assert_eq!(ring.len(), 16);
        assert_eq!(ring.total_bytes(), 20);
        assert_eq!(ring.tail_lines(1), ["456789abcdefghij"]);
        ring.push(&[b'x'; 100]);
        assert_eq!(ring.len(), 16);
        assert_eq!(ring.total_bytes(), 120);
        ring.push(b"\nend\n");
        assert_eq!(ring.tail_lines(5), ["x".repeat(11), "end".to_string()]);
    }

    #[test]
    fn lines_are_printable_and_cut() {
        let mut bytes = b"\x1b[0mcolour\x07\n\0\0\0\n\x1bc\x1b[?7l\x1b[2JSeaBIOS\tok\n".to_vec();
        bytes.extend(vec![b'y'; 3 * MAX_LINE_CHARS]);
        let lines = printable_lines(&bytes, 10);
        assert_eq!(lines.len(), 3, "the line of NULs is blank: {lines:?}");
        assert_eq!(lines[0], "colour");
        assert_eq!(lines[1], "SeaBIOS\tok");
        assert_eq!(lines[2].len(), MAX_LINE_CHARS);
    }

    /// A peer that floods the console socket (64 MiB without a newline, then a line) costs
    /// the reader its ring, allocated once, not what was written; the ring has the end of it.
    #[tokio::test]
    async fn a_flooding_peer_costs_one_ring() {
        use std::io::Write;
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let ring = ConsoleRing::new(CONSOLE_RING_BYTES);
        let reader = ConsoleReader::start(ours, ring.clone(), Some("flood".into())).unwrap();
        let allocated = || ring.inner.lock().unwrap().bytes.capacity();
        let before = allocated();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            peer.write_all(&chunk).unwrap();
        }
        peer.write_all(b"\nthe guest's last words\n").unwrap();
        drop(peer);
        wait_drained(reader.done_watch(), Duration::from_secs(30)).await;
        assert!(reader.is_done());
        assert_eq!(ring.total_bytes(), (64 << 20) + 24);
        assert!(ring.len() <= CONSOLE_RING_BYTES);
        assert_eq!(allocated(), before, "the ring's memory was allocated once");
        assert_eq!(ring.tail_lines(1), ["the guest's last words"]);
    }
}
