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

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// A shell-style exit status: the exit code, or 128 + the signal number when killed.
pub type ExitCode = i32;

/// Converts a `waitpid` status into a shell-style exit code. `None` for stops and continues.
pub fn exit_code(status: WaitStatus) -> Option<(i32, ExitCode)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
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
                return *rx.borrow().as_ref().unwrap_or(&(128 + libc::SIGKILL));
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
    /// A reaper with no tracked processes. Call [`Reaper::run`] to start reaping.
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
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
                Ok(status) => {
                    let Some((pid, code)) = exit_code(status) else {
                        continue;
                    };
                    reaped += 1;
                    match waiters.remove(&pid) {
                        Some(tx) => {
                            tracing::debug!(pid, code, "tracked process exited");
                            tx.send_replace(Some(code));
                        }
                        None => tracing::trace!(pid, code, "reaped untracked child"),
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
    use nix::sys::signal::Signal;

    #[test]
    fn exit_codes_are_shell_style() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some((42, 3)));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some((42, 137))
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, true)),
            Some((42, 143))
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
