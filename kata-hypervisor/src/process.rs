//! Supervision of the external processes a backend starts (the VMM, vhost-user backends).
//!
//! A supervised process is owned by one task that waits for it. Dropping the [`Supervised`]
//! handle kills the process, so a forgotten VM cannot outlive its owner by accident;
//! [`Supervised::detach`] lets it run on (a sandbox handed over to another process), and
//! [`Supervised::adopt`] takes over a process this one did not start (a restarted runtime
//! reconnecting to its VM), waited on through a pidfd since it is not our child.
//!
//! A [`Killer`] kills a supervised process from any context, without a runtime (a `Drop`,
//! [`Hypervisor::stop_now`](crate::Hypervisor::stop_now)), through a pidfd, so only the process
//! meant is ever hit. [`kill_processes_naming`] is the cleanup after a crashed owner: it finds
//! a VM's processes by the VM directory on their command lines.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};

/// What the handle asks of the supervising task.
#[derive(Debug)]
enum Control {
    Kill,
    Detach,
}

/// A process waited on by a background task: a child this process spawned, or a process it
/// adopted.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    pid: u32,
    control: Option<oneshot::Sender<Control>>,
    exit: watch::Receiver<Option<String>>,
    /// Shared with the task's [`KillGuard`]: cleared by `detach` at once, so a runtime that
    /// shuts down before the task sees the message does not kill a detached process.
    armed: Arc<AtomicBool>,
    /// Pins the process, for [`Killer`]s (`None` only if the kernel has no pidfds).
    pidfd: Option<Arc<OwnedFd>>,
}

/// Kills one supervised process from any context: synchronous, no runtime needed. Signals go
/// through a pidfd, so a pid reused after the process is gone is never hit.
#[derive(Debug, Clone)]
pub struct Killer {
    name: String,
    pid: u32,
    pidfd: Option<Arc<OwnedFd>>,
}

impl Killer {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGKILL (nothing if the process is gone).
    pub fn kill(&self) {
        match &self.pidfd {
            Some(fd) => {
                let _ = pidfd_send_signal(fd, libc::SIGKILL);
            }
            None if self.pid != 0 && !is_gone(self.pid) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            None => {}
        }
    }

    /// Waits up to `timeout` until the process has exited; returns whether it has.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let gone = match &self.pidfd {
            Some(fd) => pidfd_wait(fd, timeout),
            None => wait_gone(self.pid, timeout),
        };
        if !gone {
            tracing::warn!(process = %self.name, pid = self.pid, ?timeout, "process still there after SIGKILL");
        }
        gone
    }

    /// Kills every one of `killers` at once, then waits (up to `timeout` each) until each is
    /// gone: what a backend's `stop_now` does with the processes it runs for a VM.
    pub fn kill_all(killers: &[Killer], timeout: Duration) {
        for k in killers {
            k.kill();
        }
        for k in killers {
            k.wait_gone(timeout);
        }
    }
}

/// Kills a pid when dropped while armed: the supervising task's future holds one, so a task
/// dropped with its runtime still kills the child (what `kill_on_drop` would do, but disarmable).
struct KillGuard {
    pid: u32,
    armed: Arc<AtomicBool>,
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if self.armed.load(Ordering::SeqCst) && self.pid != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Supervised {
    /// Takes ownership of a spawned child. Spawn it without `kill_on_drop`: the supervisor
    /// kills it when the handle (or the supervising task) is dropped, unless it was
    /// [detached](Self::detach).
    pub fn new(name: impl Into<String>, mut child: Child) -> Self {
        let name = name.into();
        let pid = child.id().unwrap_or_default();
        // Our child is not reaped before its task waits for it, so the pid is still its own.
        let pidfd = (pid != 0)
            .then(|| pidfd_open(pid).ok())
            .flatten()
            .map(Arc::new);
        let (control_tx, control_rx) = oneshot::channel::<Control>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let task_name = name.clone();
        let armed = Arc::new(AtomicBool::new(true));
        let guard = KillGuard {
            pid,
            armed: armed.clone(),
        };
        tokio::spawn(async move {
            let guard = guard;
            let status = tokio::select! {
                s = child.wait() => s,
                c = control_rx => match c {
                    Ok(Control::Detach) => {
                        tracing::debug!(process = %task_name, pid, "process detached");
                        // Dropping the child neither kills nor waits for it; tokio reaps it if it
                        // exits while this process lives.
                        return;
                    }
                    // Kill asked for, or the handle dropped.
                    Ok(Control::Kill) | Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                },
            };
            guard.armed.store(false, Ordering::SeqCst);
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
            control: Some(control_tx),
            exit: exit_rx,
            armed,
            pidfd,
        }
    }

    /// Adopts a running process this one did not start, after checking it is the one meant:
    /// its command line must contain `must_name` (a VM directory, say), so a pid recycled by
    /// an unrelated process is refused. The pid is pinned with a pidfd before the check, so
    /// waiting and killing reach exactly the process checked, never a later holder of the pid.
    /// Its exit status is not ours to collect: [`exited`](Self::exited) says `exited` only.
    pub fn adopt(name: impl Into<String>, pid: u32, must_name: &Path) -> Result<Self> {
        let name = name.into();
        let refuse = |reason: String| Error::Adopt {
            what: name.clone(),
            pid,
            reason,
        };
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(refuse("not a process id".into()));
        }
        let pidfd = pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => refuse("no such process".into()),
            _ => refuse(format!("pidfd_open: {e}")),
        })?;
        let needle = must_name.display().to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        if is_gone(pid) {
            return Err(refuse("it has exited".into()));
        }
        if !cmdline.contains(&needle) {
            return Err(refuse(format!(
                "its command line does not name {needle} (the pid was reused): {}",
                cmdline.chars().take(200).collect::<String>()
            )));
        }
        let killer_fd = pidfd
            .try_clone()
            .map_err(|e| refuse(format!("duplicating the pidfd: {e}")))?;
        // SAFETY: the OwnedFd is a valid, open pidfd that the AsyncFd owns from here on; an
        // OwnedFd always returns the same descriptor and closes it only when dropped.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| refuse(format!("watching the pidfd: {e}")))?;
        let (control_tx, control_rx) = oneshot::channel::<Control>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let task_name = name.clone();
        tokio::spawn(async move {
            // A pidfd turns readable when its process exits.
            let exited = async {
                let _ = fd.readable().await;
            };
            let how = tokio::select! {
                _ = exited => "exited".to_string(),
                c = control_rx => match c {
                    Ok(Control::Detach) => {
                        tracing::debug!(process = %task_name, pid, "adopted process detached");
                        return;
                    }
                    Ok(Control::Kill) | Err(_) => {
                        let _ = pidfd_send_signal(fd.get_ref(), libc::SIGKILL);
                        let _ = fd.readable().await;
                        "killed by signal SIGKILL".to_string()
                    }
                },
            };
            tracing::debug!(process = %task_name, pid, %how, "adopted process ended");
            let _ = exit_tx.send(Some(how));
        });
        tracing::debug!(process = %name, pid, "process adopted");
        Ok(Supervised {
            name,
            pid,
            control: Some(control_tx),
            exit: exit_rx,
            armed: Arc::new(AtomicBool::new(false)),
            pidfd: Some(Arc::new(killer_fd)),
        })
    }

    /// A handle that kills this process from any context (see [`Killer`]).
    pub fn killer(&self) -> Killer {
        Killer {
            name: self.name.clone(),
            pid: self.pid,
            pidfd: self.pidfd.clone(),
        }
    }

    /// Lets the process run on without supervision: it is neither killed nor waited for any
    /// more. For handing a running VM over to another process (which [adopts](Self::adopt) it).
    pub fn detach(mut self) {
        self.armed.store(false, Ordering::SeqCst);
        if let Some(c) = self.control.take() {
            let _ = c.send(Control::Detach);
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
        if let Some(c) = self.control.take() {
            let _ = c.send(Control::Kill);
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

/// A pidfd: pins one process, so signals and waits reach it and never a later holder of its
/// pid. For owners that supervise a process without a tokio runtime (kata-resource's virtiofsd).
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Pins the running process `pid` (`ESRCH` if there is none).
    pub fn open(pid: u32) -> std::io::Result<Self> {
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        pidfd_open(pid).map(Pidfd)
    }

    /// Sends `signal` to exactly the pinned process.
    pub fn send_signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        pidfd_send_signal(&self.0, signal as i32)
    }

    /// Waits up to `timeout` until the pinned process has exited; returns whether it has.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        pidfd_wait(&self.0, timeout)
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// `pidfd_open(2)`: a descriptor that pins the process `pid` (not a later holder of the pid).
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`: signals exactly the process the pidfd pins.
fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: the descriptor is valid for the call (borrowed); a null siginfo is allowed and
    // means "as kill(2) would send it".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until the pidfd's process has exited (the pidfd turns readable), up to `timeout`.
fn pidfd_wait(pidfd: &OwnedFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(nix::errno::Errno::EINTR) if !left.is_zero() => continue,
            Err(_) => return false,
        }
    }
}

/// The command line of `pid`, its arguments joined by spaces (`None` if it cannot be read).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Pids of the processes whose command line names a path inside `dir` (`<dir>/...`), this
/// process excepted: how a VM's processes are found without any saved state.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| cmdline(*pid).is_some_and(|c| c.contains(&needle)))
        .collect()
}

/// Kills what a crashed owner left of a VM: the `candidates` (pids from a saved state) and
/// every process found by [`processes_naming`] `dir`. A pid is pinned with a pidfd and then
/// killed only if its command line names `dir` (a recycled pid is never hit). Waits (up to
/// `timeout` each) until they are gone. Returns the pids killed.
pub fn kill_processes_naming(dir: &Path, candidates: &[u32], timeout: Duration) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut pids: Vec<u32> = candidates.iter().copied().filter(|p| *p != 0).collect();
    pids.extend(processes_naming(dir));
    pids.sort_unstable();
    pids.dedup();
    let me = std::process::id();
    let mut killed = Vec::new();
    let mut pinned = Vec::new();
    for pid in pids {
        if pid == me || pid > i32::MAX as u32 {
            continue;
        }
        let Ok(fd) = pidfd_open(pid) else { continue };
        if is_gone(pid) || !cmdline(pid).is_some_and(|c| c.contains(&needle)) {
            continue;
        }
        // SIGKILL: the owner is gone, nobody drives a graceful stop.
        if pidfd_send_signal(&fd, libc::SIGKILL).is_ok() {
            killed.push(pid);
            pinned.push(fd);
        }
    }
    for fd in &pinned {
        pidfd_wait(fd, timeout);
    }
    killed
}

/// Whether `pid` has exited: no such process, or a zombie nobody reaped yet.
pub fn is_gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the command name's closing parenthesis.
    stat.rsplit_once(") ")
        .is_none_or(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
}

/// Waits (polling, up to `timeout`) until [`is_gone`]; returns whether it is.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !is_gone(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
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
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    #[tokio::test]
    async fn stop_kills_after_grace_and_reports_signal() {
        let child = tokio::process::Command::new("sleep")
            .arg("100")
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
            .spawn()
            .unwrap();
        let s = Supervised::new("sh", child);
        assert_eq!(s.wait().await, "exit code 3");
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_child() {
        let child = tokio::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let s = Supervised::new("sleep", child);
        let pid = s.pid();
        drop(s);
        for _ in 0..100 {
            if is_gone(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("child {pid} still runs after its handle was dropped");
    }

    #[tokio::test]
    async fn a_detached_child_runs_on_and_can_be_adopted_and_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("vm");
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 100; : {}/qmp.sock", marker.display()))
            .spawn()
            .unwrap();
        let s = Supervised::new("sh", child);
        let pid = s.pid();
        s.detach();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!is_gone(pid), "a detached child must keep running");

        // A process that does not name the directory is refused (a recycled pid).
        let e = Supervised::adopt("sh", pid, Path::new("/elsewhere/vm")).unwrap_err();
        assert!(e.to_string().contains("does not name /elsewhere/vm"), "{e}");
        assert!(Supervised::adopt("sh", 0, &marker).is_err());

        let mut adopted = Supervised::adopt("sh", pid, &marker).unwrap();
        assert_eq!(adopted.pid(), pid);
        assert_eq!(adopted.exited(), None);
        let how = adopted.stop(Duration::from_millis(50)).await;
        assert_eq!(how, "killed by signal SIGKILL");
        for _ in 0..100 {
            if is_gone(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("adopted process {pid} survived stop");
    }

    #[test]
    fn a_runtime_ending_right_after_detach_does_not_kill() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (detached, killed) = rt.block_on(async {
            let spawn = || {
                tokio::process::Command::new("sleep")
                    .arg("100")
                    .spawn()
                    .unwrap()
            };
            let d = Supervised::new("sleep", spawn());
            let k = Supervised::new("sleep", spawn());
            let pids = (d.pid(), k.pid());
            d.detach();
            // `k` stays owned until the runtime ends: its supervisor kills it then.
            std::mem::forget(k);
            pids
        });
        drop(rt);
        std::thread::sleep(Duration::from_millis(100));
        let alive = !is_gone(detached);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(detached as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert!(alive, "a detached child must survive the runtime");
        for _ in 0..100 {
            if is_gone(killed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("an owned child survived the end of its runtime");
    }

    #[tokio::test]
    async fn a_killer_kills_without_a_runtime_and_waits() {
        let child = tokio::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let s = Supervised::new("sleep", child);
        let killer = s.killer();
        let pid = killer.pid();
        std::thread::spawn(move || {
            killer.kill();
            assert!(killer.wait_gone(Duration::from_secs(5)));
            // Killing again is harmless.
            killer.kill();
        })
        .join()
        .unwrap();
        assert!(is_gone(pid));
        assert_eq!(s.wait().await, "killed by signal SIGKILL");
    }

    #[test]
    fn processes_naming_a_directory_are_killed_and_others_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let vm_dir = tmp.path().join("vm");
        // One process whose command line names the directory (its argv[0]), and no child: a
        // shell's child, between its fork and exec, names the directory too (a CI run under
        // load killed two processes here).
        let mut named = std::process::Command::new("sleep")
            .arg0(format!("{}/qmp.sock", vm_dir.display()))
            .arg("100")
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if processes_naming(&vm_dir).contains(&named.id()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // `other` is offered as a candidate (a recycled pid from a saved state): refused.
        let killed = kill_processes_naming(&vm_dir, &[other.id()], Duration::from_secs(5));
        assert_eq!(killed, vec![named.id()]);
        assert!(named.wait().unwrap().signal().is_some());
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated process survives"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[tokio::test]
    async fn an_adopted_process_that_exits_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("vm");
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 0.3; : {}", marker.display()))
            .spawn()
            .unwrap();
        let s = Supervised::new("sh", child);
        let pid = s.pid();
        s.detach();
        // Until the child has exec'ed, its command line is not yet the one checked.
        for _ in 0..100 {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&c).contains(&*marker.to_string_lossy()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let adopted = Supervised::adopt("sh", pid, &marker).unwrap();
        let how = tokio::time::timeout(Duration::from_secs(5), adopted.wait())
            .await
            .expect("the exit of an adopted process is noticed");
        assert_eq!(how, "exited");
    }
}
