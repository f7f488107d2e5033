//! Child reaping: one SIGCHLD handler for the whole agent.
//!
//! The agent is PID 1 in the guest (or a child subreaper on the host), so every orphan in the VM
//! ends up as its child. A single task waits for SIGCHLD and loops `waitpid(-1, WNOHANG)`; each
//! exit status goes to the waiter registered for that pid (a container's init or exec process),
//! and children nobody tracks are simply reaped.
//!
//! Registration never races the reaper: a direct child is forked while the reaper's lock is held
//! ([`Reaper::spawn`]), and a grandchild is registered while its parent (the init helper) is still
//! alive and waiting for our acknowledgement, so it cannot have been reparented and reaped yet.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How a tracked process ended: its shell-style status, and the signal that killed it.
///
/// `status` is what `WaitProcessResponse.status` carries (the exit code, or 128 + the signal
/// number when killed); `signal` is what the kata-rs extension `WaitProcessResponse.signal`
/// carries, so a host can tell `exit 137` from a SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCode {
    /// The exit code, or 128 + the signal number.
    pub status: i32,
    /// The signal that killed the process; `None` if it exited.
    pub signal: Option<i32>,
}

impl ExitCode {
    /// A process that exited with `code`.
    pub fn exited(code: i32) -> Self {
        ExitCode {
            status: code,
            signal: None,
        }
    }

    /// A process that signal `signal` killed.
    pub fn killed(signal: i32) -> Self {
        ExitCode {
            status: 128 + signal,
            signal: Some(signal),
        }
    }
}

/// Compares as the shell-style status: `exit == 0` is a success.
impl PartialEq<i32> for ExitCode {
    fn eq(&self, status: &i32) -> bool {
        self.status == *status
    }
}

/// The shell-style status, and the signal when killed: `3`, `137 (signal 9)`.
impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.signal {
            None => write!(f, "{}", self.status),
            Some(signal) => write!(f, "{} (signal {signal})", self.status),
        }
    }
}

/// Decodes a raw `waitpid` status into how the process ended. `None` for stops and continues.
///
/// Raw rather than nix's `WaitStatus`, which has no real-time signals: nix fails with `EINVAL`
/// on a child a real-time signal killed, after the kernel has already reaped it, so its
/// status was lost and its waiter hung.
pub fn exit_code(status: libc::c_int) -> Option<ExitCode> {
    if libc::WIFEXITED(status) {
        Some(ExitCode::exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitCode::killed(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// The receiving end of a tracked process's exit status.
#[derive(Clone, Debug)]
pub struct ExitWatch(watch::Receiver<Option<ExitCode>>);

impl ExitWatch {
    /// The exit code if the process has already exited.
    pub fn try_get(&self) -> Option<ExitCode> {
        *self.0.borrow()
    }

    /// Waits until the process exits and returns its exit code.
    pub async fn wait(&self) -> ExitCode {
        let mut rx = self.0.clone();
        loop {
            if let Some(code) = *rx.borrow_and_update() {
                return code;
            }
            if rx.changed().await.is_err() {
                // The reaper dropped the sender without a status: it only does that when the
                // agent shuts down. Report the process as killed.
                return rx.borrow().unwrap_or(ExitCode::killed(libc::SIGKILL));
            }
        }
    }
}

/// Dispatches the exit statuses of the agent's children to their waiters.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, watch::Sender<Option<ExitCode>>>>,
}

impl Reaper {
    /// A reaper with no tracked processes. Call [`Reaper::start`] to start reaping.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, watch::Sender<Option<ExitCode>>>> {
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is always consistent, so keep serving.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forks a direct child with `fork_fn` (which returns its pid) while the reaper is held off,
    /// and tracks it.
    pub fn spawn<F>(&self, fork_fn: F) -> io::Result<(i32, ExitWatch)>
    where
        F: FnOnce() -> io::Result<i32>,
    {
        let mut waiters = self.lock();
        let pid = fork_fn()?;
        let (tx, rx) = watch::channel(None);
        waiters.insert(pid, tx);
        Ok((pid, ExitWatch(rx)))
    }

    /// Tracks a process that is not yet our child (a grandchild whose parent is still alive).
    pub fn track(&self, pid: i32) -> ExitWatch {
        let (tx, rx) = watch::channel(None);
        self.lock().insert(pid, tx);
        ExitWatch(rx)
    }

    /// Reaps every child that has exited, dispatching tracked ones. Returns how many it reaped.
    pub fn reap(&self) -> usize {
        let mut waiters = self.lock();
        let mut reaped = 0;
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid(2) writes only the status integer, which lives on this stack.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            match pid {
                // Children remain, none has exited.
                0 => break,
                -1 => match nix::Error::last() {
                    nix::Error::ECHILD => break,
                    nix::Error::EINTR => continue,
                    e => {
                        tracing::warn!(error = %e, "waitpid failed");
                        break;
                    }
                },
                pid => {
                    let Some(code) = exit_code(status) else {
                        continue;
                    };
                    reaped += 1;
                    match waiters.remove(&pid) {
                        Some(tx) => {
                            tracing::debug!(pid, status = code.status, signal = ?code.signal, "tracked process exited");
                            tx.send_replace(Some(code));
                        }
                        None => {
                            tracing::trace!(pid, status = code.status, "reaped untracked child")
                        }
                    }
                }
            }
        }
        reaped
    }

    /// Registers the SIGCHLD stream now (so no exit is missed) and reaps in a background task.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let reaper = Arc::clone(self);
        // Installing the handler here, before any child is spawned, guarantees no SIGCHLD is lost.
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                reaper.reap();
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_shell_style() {
        let exited = |status| ExitCode {
            status,
            signal: None,
        };
        let killed = |status, signal| ExitCode {
            status,
            signal: Some(signal),
        };
        // Raw wait statuses as Linux encodes them: exit code << 8; the signal, | 0x80 with a
        // core dump; stopped: 0x7f | signal << 8; continued: 0xffff.
        assert_eq!(exit_code(3 << 8), Some(exited(3)));
        // `exit 137` and a SIGKILL have the same shell status but differ in `signal`.
        assert_eq!(exit_code(137 << 8), Some(exited(137)));
        assert_eq!(exit_code(libc::SIGKILL), Some(killed(137, 9)));
        assert_eq!(exit_code(libc::SIGSEGV | 0x80), Some(killed(139, 11)));
        // Real-time signals, which nix's WaitStatus cannot represent.
        assert_eq!(exit_code(40), Some(killed(168, 40)));
        assert_eq!(exit_code(64), Some(killed(192, 64)));
        assert_eq!(exit_code(0x7f | (libc::SIGSTOP << 8)), None);
        assert_eq!(exit_code(0xffff), None);
        assert!(exited(0) == 0 && exited(3) != 0 && killed(137, 9) == 137);
        assert_eq!(
            (exited(3).to_string(), killed(137, 9).to_string()),
            ("3".to_string(), "137 (signal 9)".to_string())
        );
    }
}
