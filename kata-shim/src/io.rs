//! A process's stdio between containerd and the sandbox: containerd names fifos (or, with
//! `--log-uri`, `file://` and `binary://` URIs); each is copied to or from the process's
//! kata-sandbox stream by a task. Output copies end when the process's stream ends; stdin ends
//! at EOF on its fifo or at `CloseIO`, and then the process sees EOF.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kata_sandbox::{InputWriter, OutputReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
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

/// Starts containerd's logging-binary protocol: the binary gets the process's stdout on fd 3,
/// stderr on fd 4 and signals readiness by closing fd 5.
async fn binary_logger(
    path: &Path,
    args: &[String],
    container_id: &str,
    namespace: &str,
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
    tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 1];
        let _ = std::io::Read::read(&mut ready, &mut b);
    })
    .await
    .map_err(|e| err(std::io::Error::other(e)))?;
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
    close_stdin: Arc<Notify>,
}

impl StdioCopies {
    /// Ends stdin (containerd's `CloseIO`): what the fifo still holds is forwarded, then the
    /// process sees EOF.
    pub fn close_stdin(&self) {
        self.close_stdin.notify_one();
    }

    /// Waits until stdout and stderr have been copied to the end.
    pub async fn wait_outputs(&mut self) {
        for h in self.outputs.drain(..) {
            let _ = h.await;
        }
    }
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
    let close_stdin = Arc::new(Notify::new());
    if let Some(writer) = stdin {
        if stdio.stdin.is_empty() {
            drop(writer);
        } else {
            let p = PathBuf::from(&stdio.stdin);
            let rx = pipe::OpenOptions::new()
                .open_receiver(&p)
                .map_err(|e| io_err(&p, e))?;
            tokio::spawn(copy_stdin(rx, writer, close_stdin.clone()));
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
        close_stdin,
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

async fn copy_stdin(mut rx: pipe::Receiver, mut writer: InputWriter, close: Arc<Notify>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            r = rx.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if writer.write_all(&buf[..n]).await.is_err() { break },
            },
            _ = close.notified() => {
                // Forward what is already in the fifo, then end.
                while let Ok(n) = rx.try_read(&mut buf) {
                    if n == 0 || writer.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                break;
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
}
