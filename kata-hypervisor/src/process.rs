//! Supervision of the external processes a backend starts (the VMM, vhost-user backends).
//!
//! A supervised child is owned by one task that waits for it. Dropping the [`Supervised`]
//! handle kills the child, so a forgotten VM cannot outlive its owner by accident.

use std::time::Duration;

use tokio::process::Child;
use tokio::sync::{oneshot, watch};

/// A child process waited on by a background task.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    pid: u32,
    kill: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<String>>,
}

impl Supervised {
    /// Takes ownership of a spawned child (which should have `kill_on_drop(true)`).
    pub fn new(name: impl Into<String>, mut child: Child) -> Self {
        let name = name.into();
        let pid = child.id().unwrap_or_default();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let task_name = name.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let how = match status {
                Ok(s) => describe(s),
                Err(e) => format!("wait failed: {e}"),
            };
            tracing::debug!(process = %task_name, pid, %how, "process exited");
            let _ = exit_tx.send(Some(how));
        });
        Supervised {
            name,
            pid,
            kill: Some(kill_tx),
            exit: exit_rx,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the process exited, if it has.
    pub fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// A watch that turns `Some(how)` when the process exits (for waiters that do not hold
    /// the handle).
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    /// Waits until the process exits; returns how.
    pub async fn wait(&self) -> String {
        let mut rx = self.exit.clone();
        loop {
            if let Some(how) = rx.borrow().clone() {
                return how;
            }
            if rx.changed().await.is_err() {
                return "supervisor task ended".into();
            }
        }
    }

    /// Waits up to `grace` for the process to exit by itself, then kills it (SIGKILL) and waits.
    pub async fn stop(&mut self, grace: Duration) -> String {
        if let Ok(how) = tokio::time::timeout(grace, self.wait()).await {
            return how;
        }
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        self.wait().await
    }

    /// Sends a signal to the process (if it still runs).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if self.exited().is_none() && self.pid != 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
        }
    }
}

/// Describes an exit status as a shell would: `exit code N` or `killed by signal SIG`.
pub fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
            Ok(sig) => format!("killed by signal {sig}"),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => "unknown exit".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_kills_after_grace_and_reports_signal() {
        let child = tokio::process::Command::new("sleep")
            .arg("100")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut s = Supervised::new("sleep", child);
        let pid = s.pid();
        let how = s.stop(Duration::from_millis(50)).await;
        assert_eq!(how, "killed by signal SIGKILL");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn exit_code_is_reported() {
        let child = tokio::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let s = Supervised::new("sh", child);
        assert_eq!(s.wait().await, "exit code 3");
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_child() {
        let child = tokio::process::Command::new("sleep")
            .arg("100")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let s = Supervised::new("sleep", child);
        let pid = s.pid();
        drop(s);
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("child {pid} still runs after its handle was dropped");
    }
}
