//! A process's stdio between containerd and the sandbox: containerd names fifos (or, with
//! `--log-uri`, `file://` and `binary://` URIs); each is copied to or from the process's
//! kata-sandbox stream by a task. Output copies end when the process's stream ends; stdin ends
//! at EOF on its fifo after `CloseIO` (until then the shim holds a write end of its own, so
//! no EOF is seen before containerd's writer connects), and then the process sees EOF.

use std::path::{Path, PathBuf};

use kata_sandbox::{InputWriter, OutputReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The stdio containerd gave for one process (empty strings: not connected).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    /// stdin fifo.
    pub stdin: String,
    /// stdout fifo or log URI.
    pub stdout: String,
    /// stderr fifo or log URI.
    pub stderr: String,
    /// A terminal: stderr is merged into stdout.
    pub terminal: bool,
}

/// Where an output stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sink {
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn parse_sink(uri: &str) -> Result<Sink> {
    let bad = |reason: &str| Error::InvalidArgument {
        field: "stdio",
        reason: format!("`{uri}`: {reason}"),
    };
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("file:// needs an absolute path"));
        }
        return Ok(Sink::File(PathBuf::from(rest)));
    }
    if let Some(rest) = uri.strip_prefix("binary://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(bad("binary:// needs an absolute path"));
        }
        let args = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => format!("{k}={v}"),
                None => kv.to_string(),
            })
            .collect();
        return Ok(Sink::Binary {
            path: PathBuf::from(path),
            args,
        });
    }
    if let Some(rest) = uri.strip_prefix("fifo://") {
        return Ok(Sink::Fifo(PathBuf::from(rest)));
    }
    if uri.contains("://") {
        return Err(bad(
            "unsupported scheme (use a fifo path, file:// or binary://)",
        ));
    }
    Ok(Sink::Fifo(PathBuf::from(uri)))
}

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

fn io_err(uri: &Path, e: std::io::Error) -> Error {
    Error::Io {
        uri: uri.display().to_string(),
        source: e,
    }
}

/// Opens the writers for stdout and stderr (`None` where containerd gave nothing).
async fn open_outputs(
    stdio: &Stdio,
    container_id: &str,
    namespace: &str,
) -> Result<(Option<BoxWrite>, Option<BoxWrite>)> {
    let out = if stdio.stdout.is_empty() {
        None
    } else {
        Some(parse_sink(&stdio.stdout)?)
    };
    let err = if stdio.stderr.is_empty() || stdio.terminal {
        None
    } else {
        Some(parse_sink(&stdio.stderr)?)
    };
    // A logging binary gets both streams (fd 3 and 4) in one process.
    if let Some(Sink::Binary { path, args }) = &out {
        let (o, e) = binary_logger(path, args, container_id, namespace).await?;
        return Ok((Some(o), err.is_some().then_some(e)));
    }
    Ok((open_sink(out).await?, open_sink(err).await?))
}

async fn open_sink(sink: Option<Sink>) -> Result<Option<BoxWrite>> {
    Ok(match sink {
        None => None,
        Some(Sink::Fifo(p)) => {
            // Read-write: opening never blocks or fails for want of a reader; the reader sees
            // EOF once this end is closed.
            let tx = pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&p)
                .map_err(|e| io_err(&p, e))?;
            Some(Box::new(tx))
        }
        Some(Sink::File(p)) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io_err(&p, e))?;
            }
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .await
                .map_err(|e| io_err(&p, e))?;
            Some(Box::new(f))
        }
        Some(Sink::Binary { .. }) => unreachable!("handled by open_outputs"),
    })
}

/// How long a logging binary has to signal readiness (close fd 5).
const LOGGER_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts containerd's logging-binary protocol: the binary gets the process's stdout on fd 3,
/// stderr on fd 4 and signals readiness by closing fd 5 (within [`LOGGER_READY_TIMEOUT`], or
/// it is killed and the error names it).
async fn binary_logger(
    path: &Path,
    args: &[String],
    container_id: &str,
    namespace: &str,
) -> Result<(BoxWrite, BoxWrite)> {
    binary_logger_within(path, args, container_id, namespace, LOGGER_READY_TIMEOUT).await
}

async fn binary_logger_within(
    path: &Path,
    args: &[String],
    container_id: &str,
    namespace: &str,
    ready_timeout: std::time::Duration,
) -> Result<(BoxWrite, BoxWrite)> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let err = |e: std::io::Error| io_err(path, e);
    let pipe = || -> Result<(OwnedFd, OwnedFd)> {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err(e.into()))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = std::process::Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec; the fds are open in
    // the parent for the whole spawn. dup2 clears FD_CLOEXEC on the new descriptors.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(err)?;
    drop((out_r, err_r, ready_w));
    // Readiness: fd 5 closed by the logger (read returns EOF).
    let mut ready = std::fs::File::from(ready_r);
    let waiting = tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 1];
        let _ = std::io::Read::read(&mut ready, &mut b);
    });
    match tokio::time::timeout(ready_timeout, waiting).await {
        Ok(joined) => joined.map_err(|e| err(std::io::Error::other(e)))?,
        Err(_) => {
            // Killing it closes its fd 5, which also ends the blocked read.
            let _ = child.kill();
            let status = child.wait();
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the logging binary did not signal readiness (close fd 5) within {ready_timeout:?}; killed it ({})",
                    match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    }
                ),
            )));
        }
    }
    // Reap it in the background (it exits when both streams are closed).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let to_async = |fd: OwnedFd| -> Result<BoxWrite> {
        let tx = pipe::Sender::from_owned_fd(fd).map_err(err)?;
        Ok(Box::new(tx))
    };
    Ok((to_async(out_w)?, to_async(err_w)?))
}

/// The running copies of one process's stdio.
#[derive(Debug)]
pub struct StdioCopies {
    outputs: Vec<JoinHandle<()>>,
    /// The stdin copy: aborted when the copies are dropped (the process deleted), so a
    /// containerd writer that never closes does not keep it and its fifo for the shim's life.
    stdin: Option<JoinHandle<()>>,
    /// Our own write end of the stdin fifo, held until `CloseIO` (as containerd's runc shim
    /// does): without it, a read before containerd's writer has opened the fifo sees EOF.
    stdin_keepalive: std::sync::Mutex<Option<std::fs::File>>,
}

impl StdioCopies {
    /// Ends stdin (containerd's `CloseIO`): our own writer is closed, so the copy forwards
    /// what the fifo holds and ends at EOF once containerd's writer is closed too; then the
    /// process sees EOF.
    pub fn close_stdin(&self) {
        self.stdin_keepalive.lock().unwrap().take();
    }

    /// The output copies, to wait for without holding whatever holds these copies (stdin and
    /// `CloseIO` stay usable).
    pub fn take_outputs(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.outputs)
    }
}

impl Drop for StdioCopies {
    fn drop(&mut self) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
    }
}

/// Opens the stdin fifo for reading, and a write end of our own that keeps it from reading
/// EOF before containerd's writer has connected.
fn open_stdin(p: &Path) -> Result<(pipe::Receiver, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open for reading succeeds with or without a writer.
    let rx = pipe::OpenOptions::new()
        .open_receiver(p)
        .map_err(|e| io_err(p, e))?;
    // A reader exists (ours): the non-blocking open for writing succeeds.
    let keepalive = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| io_err(p, e))?;
    Ok((rx, keepalive))
}

/// Connects a process's streams to containerd's stdio and starts copying.
pub async fn connect(
    stdio: &Stdio,
    container_id: &str,
    namespace: &str,
    stdin: Option<InputWriter>,
    stdout: Option<OutputReader>,
    stderr: Option<OutputReader>,
) -> Result<StdioCopies> {
    let (out_w, err_w) = open_outputs(stdio, container_id, namespace).await?;
    let mut stdin_copy = None;
    let mut keepalive = None;
    if let Some(writer) = stdin {
        if stdio.stdin.is_empty() {
            drop(writer);
        } else {
            let (rx, k) = open_stdin(Path::new(&stdio.stdin))?;
            keepalive = Some(k);
            stdin_copy = Some(tokio::spawn(copy_stdin(rx, writer)));
        }
    }
    let mut outputs = Vec::new();
    for (reader, writer) in [(stdout, out_w), (stderr, err_w)] {
        if let Some(r) = reader {
            outputs.push(tokio::spawn(copy_output(r, writer)));
        }
    }
    Ok(StdioCopies {
        outputs,
        stdin: stdin_copy,
        stdin_keepalive: std::sync::Mutex::new(keepalive),
    })
}

async fn copy_output(mut reader: impl AsyncRead + Unpin, writer: Option<BoxWrite>) {
    match writer {
        Some(mut w) => {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).await.is_err() {
                            // Nobody reads any more: drain so the process does not stall.
                            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
                            break;
                        }
                    }
                }
            }
            let _ = w.flush().await;
        }
        None => {
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
        }
    }
}

/// Copies the stdin fifo to the process until EOF: every writer gone, ours included (closed
/// at `CloseIO`).
async fn copy_stdin(mut rx: pipe::Receiver, mut writer: InputWriter) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_uris() {
        assert_eq!(
            parse_sink("/run/containerd/fifo/1/x-stdout").unwrap(),
            Sink::Fifo("/run/containerd/fifo/1/x-stdout".into())
        );
        assert_eq!(
            parse_sink("file:///var/log/c.log").unwrap(),
            Sink::File("/var/log/c.log".into())
        );
        assert_eq!(
            parse_sink("binary:///usr/bin/logger?a=1&b").unwrap(),
            Sink::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["a=1".into(), "b".into()]
            }
        );
        assert!(parse_sink("http://x").is_err());
        assert!(parse_sink("file://relative").is_err());
    }

    #[tokio::test]
    async fn fifo_output_and_file_log_receive_the_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = tokio::spawn({
            let fifo = fifo.clone();
            async move {
                let mut rx = pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
                let mut s = String::new();
                rx.read_to_string(&mut s).await.unwrap();
                s
            }
        });
        let w = open_sink(Some(Sink::Fifo(fifo))).await.unwrap();
        copy_output(&b"hello\n"[..], w).await;
        assert_eq!(reader.await.unwrap(), "hello\n");

        let log = tmp.path().join("logs/c.log");
        let w = open_sink(Some(Sink::File(log.clone()))).await.unwrap();
        copy_output(&b"line\n"[..], w).await;
        assert_eq!(std::fs::read_to_string(log).unwrap(), "line\n");
    }

    #[tokio::test]
    async fn stdin_fifo_sees_no_eof_before_a_writer_connects_only_after_close() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("in");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (mut rx, keepalive) = open_stdin(&fifo).unwrap();
        let mut buf = [0u8; 16];
        // No writer yet: the read waits (without our own writer it returned 0 = EOF at once).
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), rx.read(&mut buf));
        assert!(
            early.await.is_err(),
            "read returned before any writer connected"
        );
        // containerd's writer connects, writes, closes: still no EOF while ours is open.
        let mut w = pipe::OpenOptions::new().open_sender(&fifo).unwrap();
        w.write_all(b"hi\n").await.unwrap();
        drop(w);
        let n = rx.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi\n");
        let later = tokio::time::timeout(std::time::Duration::from_millis(300), rx.read(&mut buf));
        assert!(later.await.is_err(), "EOF before CloseIO");
        // CloseIO closes ours: EOF.
        drop(keepalive);
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), rx.read(&mut buf))
            .await
            .expect("EOF after the last writer closed")
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn a_logging_binary_that_never_signals_readiness_is_killed_and_named() {
        let sleep = Path::new("/bin/sleep");
        let t0 = std::time::Instant::now();
        let r = binary_logger_within(
            sleep,
            &["1000".to_string()],
            "c",
            "ns",
            std::time::Duration::from_millis(300),
        )
        .await;
        let e = match r {
            Ok(_) => panic!("a logger that keeps fd 5 open was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{e}");
        assert!(e.contains("/bin/sleep"), "{e}");
        assert!(e.contains("readiness") && e.contains("killed"), "{e}");
        // A logger that closes fd 5 is accepted.
        let sh = Path::new("/bin/sh");
        let ok = binary_logger_within(
            sh,
            &[
                "-c".to_string(),
                "exec 5>&-; cat <&3 >/dev/null".to_string(),
            ],
            "c",
            "ns",
            std::time::Duration::from_secs(10),
        )
        .await;
        assert!(ok.is_ok());
    }
}
