//! What the shim tracks of each containerd process (a task's first process or an exec): its
//! status, its exit, its stdio copies, and the kata-sandbox handle that drives it.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;
use kata_sandbox::{Container, Process, ProcessSpec, Signal};
use tokio::sync::watch;

use crate::io::{Stdio, StdioCopies};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status (code, or 128 + signal).
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

impl Exit {
    /// Now, with `status`.
    pub fn now(status: u32) -> Self {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    /// `at` as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// The kata-sandbox side of a process.
pub enum Handle {
    /// A task's first process: driven through its container.
    Init(Arc<Container>),
    /// An exec, before `Start`: its spec.
    ExecPending(Box<ProcessSpec>),
    /// An exec whose `Start` is in progress.
    ExecStarting,
    /// A started exec.
    Exec(Arc<Process>),
}

/// One containerd process.
pub struct Proc {
    /// The container (task) id.
    pub container_id: String,
    /// containerd's exec id (empty for the first process).
    pub exec_id: String,
    /// The stdio containerd gave.
    pub stdio: Stdio,
    /// The kata-sandbox handle.
    pub handle: Mutex<Handle>,
    /// Created, running, paused or stopped.
    pub status: Mutex<Status>,
    /// Its stdio copies, once connected.
    pub copies: tokio::sync::Mutex<Option<StdioCopies>>,
    exit_tx: watch::Sender<Option<Exit>>,
    exit_claimed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("container_id", &self.container_id)
            .field("exec_id", &self.exec_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Proc {
    /// A process in the `Created` state.
    pub fn new(container_id: &str, exec_id: &str, stdio: Stdio, handle: Handle) -> Arc<Self> {
        Arc::new(Proc {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            handle: Mutex::new(handle),
            status: Mutex::new(Status::CREATED),
            copies: tokio::sync::Mutex::new(None),
            exit_tx: watch::channel(None).0,
            exit_claimed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The current status.
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap()
    }

    /// Sets the status (not after it stopped).
    pub fn set_status(&self, s: Status) {
        let mut cur = self.status.lock().unwrap();
        if *cur != Status::STOPPED {
            *cur = s;
        }
    }

    /// The exit, if it has exited.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// Claims the right to publish the exit: `true` for the first caller only (the exit event
    /// is published, then [`set_exited`](Self::set_exited), so `Wait` answers after it).
    pub fn claim_exit(&self) -> bool {
        !self
            .exit_claimed
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Records the exit (once); returns whether this call recorded it.
    ///
    /// The status is STOPPED before a waiter wakes: a `Delete` right after `Wait` answered
    /// never finds the process still running.
    pub fn set_exited(&self, exit: Exit) -> bool {
        let mut status = self.status.lock().unwrap();
        let mut first = false;
        self.exit_tx.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit);
                first = true;
            }
            first
        });
        if first {
            *status = Status::STOPPED;
        }
        first
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: unreachable while `self` is borrowed.
                return Exit::now(255);
            }
        }
    }

    /// The container, for a first process.
    pub fn container(&self) -> Option<Arc<Container>> {
        match &*self.handle.lock().unwrap() {
            Handle::Init(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// The started exec.
    pub fn exec_process(&self) -> Option<Arc<Process>> {
        match &*self.handle.lock().unwrap() {
            Handle::Exec(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// Waits for the kata-sandbox process to end and returns its status (255 if the wait
    /// itself failed, e.g. the VM died).
    pub async fn wait_sandbox_process(&self) -> u32 {
        let r = if let Some(c) = self.container() {
            c.wait().await
        } else if let Some(p) = self.exec_process() {
            p.wait().await
        } else {
            return 255;
        };
        match r {
            Ok(s) => s.to_shell_status() as u32,
            Err(e) => {
                tracing::warn!(container_id = %self.container_id, exec_id = %self.exec_id, error = %e, "waiting for the process failed");
                255
            }
        }
    }

    /// Sends a signal.
    pub async fn signal(&self, signal: Signal) -> kata_sandbox::Result<()> {
        if let Some(c) = self.container() {
            c.kill(signal).await
        } else if let Some(p) = self.exec_process() {
            p.kill(signal).await
        } else {
            Ok(())
        }
    }

    /// Resizes its terminal.
    pub async fn resize(&self, rows: u32, columns: u32) -> kata_sandbox::Result<()> {
        if let Some(c) = self.container() {
            c.resize_tty(rows, columns).await
        } else if let Some(p) = self.exec_process() {
            p.resize_tty(rows, columns).await
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter that wakes on the exit sees the process stopped: containerd deletes right
    /// after Wait answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_woken_waiter_sees_the_process_stopped() {
        for _ in 0..500 {
            let p = Proc::new("c", "e", Stdio::default(), Handle::ExecStarting);
            p.set_status(Status::RUNNING);
            let waiter = {
                let p = p.clone();
                tokio::spawn(async move {
                    p.wait().await;
                    p.status()
                })
            };
            tokio::task::yield_now().await;
            assert!(p.set_exited(Exit::now(0)));
            assert_eq!(waiter.await.unwrap(), Status::STOPPED);
            assert!(!p.set_exited(Exit::now(1)), "recorded once");
        }
    }
}
