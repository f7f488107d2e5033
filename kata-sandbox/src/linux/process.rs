//! One process of a `linux_container` sandbox as the handler holds it: the helper program
//! that created it with libcontainer ([`helper`](super::helper)), the control socket to that
//! helper, the process's exit as the helper reports it, and the pumps between the process's
//! OS pipes and the caller's streams ([`crate::io`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use kata_agent_client::{ExitStatus, Signal};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use super::helper::CONTROL_FD;
use super::protocol::{Answer, Message, Request};
use crate::error::{Error, Result};
use crate::handler::ProcessStreams;
use crate::io::{input_pipe, output_pipe};

/// How long libcontainer may take to create a process before the helper is given up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the reply to the request in flight goes.
type PendingReply =
    std::sync::Arc<Mutex<Option<oneshot::Sender<std::result::Result<Answer, String>>>>>;

/// A process run by a helper.
#[derive(Debug)]
pub(super) struct HelperProcess {
    /// What it is, for errors (`container c1`, `exec e1 in container c1`).
    what: String,
    /// The process's host pid.
    pub(super) pid: u32,
    /// One request at a time.
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Where the reply to the request in flight goes.
    pending: PendingReply,
    /// The exit, once reported (or the helper's loss).
    exit: watch::Receiver<Option<ExitStatus>>,
    /// The helper is gone (its socket closed).
    gone: watch::Receiver<bool>,
    /// The caller's streams, until attached.
    streams: Mutex<Option<ProcessStreams>>,
}

/// A pipe whose two ends are closed on exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds` on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned here only.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl HelperProcess {
    /// Spawns `helper` with `args` and waits until libcontainer has created the process.
    /// On error the helper has ended and nothing of the process is left.
    pub(super) async fn spawn(
        what: String,
        helper: &Path,
        args: &[&std::ffi::OsStr],
    ) -> Result<Self> {
        let io = |e| Error::io(format!("starting the linux_container helper for {what}"), e);
        let (stdin_r, stdin_w) = pipe().map_err(io)?;
        let (stdout_r, stdout_w) = pipe().map_err(io)?;
        let (stderr_r, stderr_w) = pipe().map_err(io)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io)?;
        let mut child = {
            let mut cmd = tokio::process::Command::new(helper);
            cmd.args(args)
                .stdin(Stdio::from(stdin_r))
                .stdout(Stdio::from(stdout_w))
                .stderr(Stdio::from(stderr_w));
            let fd = theirs.as_raw_fd();
            // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if fd == CONTROL_FD {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, CONTROL_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|e| {
                Error::io(
                    format!(
                        "starting the linux_container helper {} for {what}",
                        helper.display()
                    ),
                    e,
                )
            })?;
            // The command (and its copies of the process's ends) is dropped here.
            child
        };
        drop(theirs);
        ours.set_nonblocking(true).map_err(io)?;
        let sock = UnixStream::from_std(ours).map_err(io)?;
        let (read, writer) = sock.into_split();
        let mut lines = BufReader::new(read);
        let mut first = String::new();
        let created = tokio::time::timeout(CREATE_TIMEOUT, lines.read_line(&mut first)).await;
        let pid = match (created, serde_json::from_str::<Message>(first.trim_end())) {
            (Ok(Ok(n)), Ok(Message::Created { pid })) if n > 0 => pid,
            (Ok(Ok(_)), Ok(Message::Failed { error })) => {
                let _ = child.wait().await;
                return Err(Error::io(
                    format!("creating {what} with libcontainer"),
                    std::io::Error::other(error),
                ));
            }
            (timed, _) => {
                let _ = child.start_kill();
                let status = child.wait().await;
                let why = match timed {
                    Err(_) => format!("no answer within {CREATE_TIMEOUT:?}"),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => format!("it said {:?} and exited ({status:?})", first.trim_end()),
                };
                return Err(Error::io(
                    format!("creating {what} with the linux_container helper"),
                    std::io::Error::other(why),
                ));
            }
        };
        // Pinned now, while the helper has not reaped it: if the helper dies, the process is
        // killed through it (never by a pid that may have been reused).
        let pidfd = pidfd_open(pid).ok();
        let (exit_tx, exit) = watch::channel(None);
        let (gone_tx, gone) = watch::channel(false);
        let pending: PendingReply = Default::default();
        tokio::spawn(read_messages(
            pidfd,
            lines,
            child,
            exit_tx,
            gone_tx,
            pending.clone(),
        ));
        let streams = pumps(stdin_w, stdout_r, stderr_r).map_err(io)?;
        Ok(HelperProcess {
            what,
            pid,
            writer: tokio::sync::Mutex::new(writer),
            pending,
            exit,
            gone,
            streams: Mutex::new(Some(streams)),
        })
    }

    /// Sends `request` and waits for its reply.
    pub(super) async fn request(&self, request: &Request) -> Result<Answer> {
        let what = || format!("{request:?} for {}", self.what);
        let mut writer = self.writer.lock().await;
        if *self.gone.borrow() {
            return Err(self.lost(what()));
        }
        let (tx, rx) = oneshot::channel();
        *self.pending.lock().unwrap() = Some(tx);
        let mut line = serde_json::to_string(request)
            .map_err(|e| Error::io(what(), std::io::Error::other(e)))?;
        line.push('\n');
        if writer.write_all(line.as_bytes()).await.is_err() {
            return Err(self.lost(what()));
        }
        match rx.await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(Error::io(what(), std::io::Error::other(e))),
            Err(_) => Err(self.lost(what())),
        }
    }

    fn lost(&self, what: String) -> Error {
        Error::io(
            what,
            std::io::Error::other("the linux_container helper is gone (it was killed?)"),
        )
    }

    /// Sends a signal (nothing once the process has exited).
    pub(super) async fn signal(&self, signal: Signal) -> Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        self.request(&Request::Signal {
            signal: i32::from(signal),
        })
        .await
        .map(|_| ())
    }

    /// Waits for the exit.
    pub(super) async fn wait(&self) -> ExitStatus {
        let mut exit = self.exit.clone();
        let status = match exit.wait_for(|e| e.is_some()).await {
            Ok(e) => e.unwrap_or(ExitStatus::from_signal(Signal::KILL)),
            Err(_) => ExitStatus::from_signal(Signal::KILL),
        };
        status
    }

    /// Whether it has exited.
    pub(super) fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// The caller's streams (the first call only).
    pub(super) fn take_streams(&self) -> ProcessStreams {
        self.streams.lock().unwrap().take().unwrap_or_default()
    }

    /// Kills the process and ends the helper (for an init process: the container's cgroup
    /// and libcontainer's state removed), then waits for the helper to be gone.
    pub(super) async fn delete(&self) -> Result<()> {
        let r = if *self.gone.borrow() {
            Ok(())
        } else {
            self.request(&Request::Delete).await.map(|_| ())
        };
        let mut gone = self.gone.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), gone.wait_for(|g| *g)).await;
        r
    }
}

/// Reads the helper's messages until its socket closes, then reaps it.
async fn read_messages(
    pidfd: Option<OwnedFd>,
    mut lines: BufReader<OwnedReadHalf>,
    mut child: tokio::process::Child,
    exit: watch::Sender<Option<ExitStatus>>,
    gone: watch::Sender<bool>,
    pending: PendingReply,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        match serde_json::from_str::<Message>(line.trim_end()) {
            Ok(Message::Exited { code, signal }) => {
                let status = match (code, signal.and_then(|s| Signal::try_from(s).ok())) {
                    (Some(c), _) => ExitStatus::from_code(c),
                    (None, Some(s)) => ExitStatus::from_signal(s),
                    (None, None) => ExitStatus::from_signal(Signal::KILL),
                };
                exit.send_replace(Some(status));
            }
            Ok(Message::Reply { ok, error }) => {
                let r = match (ok, error) {
                    (Some(a), None) => Ok(a),
                    (_, Some(e)) => Err(e),
                    (None, None) => Err("an empty reply".to_string()),
                };
                if let Some(tx) = pending.lock().unwrap().take() {
                    let _ = tx.send(r);
                }
            }
            Ok(other) => {
                tracing::warn!(message = ?other, "linux_container helper: unexpected message")
            }
            Err(e) => {
                tracing::warn!(line = %line.trim_end(), error = %e, "linux_container helper: unreadable message")
            }
        }
    }
    // The helper is gone. A process it did not report exiting (the helper was killed) is
    // killed here: nothing of a container outlives its helper. A PID namespace's first process
    // takes the rest of the namespace with it.
    if exit.borrow().is_none() {
        if let Some(fd) = &pidfd {
            // SAFETY: pidfd_send_signal on a pidfd this process owns, no siginfo, no flags.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
    exit.send_if_modified(|e| {
        if e.is_none() {
            *e = Some(ExitStatus::from_signal(Signal::KILL));
            true
        } else {
            false
        }
    });
    pending.lock().unwrap().take();
    let _ = child.wait().await;
    gone.send_replace(true);
}

/// The caller's streams, each pumped from or to the process's OS pipe.
fn pumps(
    stdin_w: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
) -> std::io::Result<ProcessStreams> {
    for fd in [&stdin_w, &stdout_r, &stderr_r] {
        set_nonblocking(fd)?;
    }
    let (stdin, mut stdin_reader) = input_pipe();
    let mut to_process = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w)?;
    tokio::spawn(async move {
        // Ends when the caller shuts its writer down or drops it: the process reads EOF.
        let _ = tokio::io::copy(&mut stdin_reader, &mut to_process).await;
    });
    let output = |fd: OwnedFd| -> std::io::Result<crate::io::OutputReader> {
        let (reader, mut writer, broken) = output_pipe();
        let mut from_process = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
        tokio::spawn(async move {
            if let Err(e) = tokio::io::copy(&mut from_process, &mut writer).await {
                broken.set(format!("reading the process's output: {e}"));
            }
            let _ = writer.shutdown().await;
        });
        Ok(reader)
    };
    Ok(ProcessStreams {
        stdin: Some(stdin),
        stdout: Some(output(stdout_r)?),
        stderr: Some(output(stderr_r)?),
    })
}
