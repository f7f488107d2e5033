//! The helper process (`kata-linux-container`): drives libcontainer for one process of a
//! `linux_container` sandbox, single-threaded, outside any async runtime.
//!
//! libcontainer forks (clone) from its caller, and the created process becomes the caller's
//! child: a forking library must not run inside a multi-threaded tokio runtime, so the handler
//! spawns this small program once per process (a container's first process, or an exec) and
//! talks to it over the control socket on fd 3 ([`protocol`](super::protocol)). The process's
//! stdio are this program's fd 0, 1 and 2 when it starts (the container inherits them); the
//! helper puts `/dev/null` in their place once the process exists, so the streams end when
//! the process's copies close.
//!
//! Because the process is the helper's child, the helper waits for it (a pidfd), signals it
//! by pid without a reuse race, and reports its exit. The control socket closing (the handler
//! or its process gone) kills the process and removes the container: a crashed owner leaves
//! no container running.
//!
//! Usage (the handler's, not a user's): `kata-linux-container init <state-root> <id>
//! <bundle> <cgroup>` or `kata-linux-container exec <state-root> <id> <process.json>
//! <cgroup>`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, FreezerState};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use super::protocol::{Answer, CgroupFigures, Message, Request};

/// The control socket's descriptor in the helper.
pub const CONTROL_FD: i32 = 3;

/// Which process the helper runs.
enum Mode {
    /// A container's first process, from its bundle (`config.json`).
    Init { bundle: PathBuf },
    /// A process in a running container, from an OCI process JSON file.
    Exec { process: PathBuf },
}

/// The helper's state once its process exists.
struct Helper {
    id: String,
    cgroup: PathBuf,
    /// The init container (`None` for an exec).
    container: Option<Container>,
    pid: libc::pid_t,
    /// A pidfd of the process; `None` once it has exited and been reaped.
    pidfd: Option<OwnedFd>,
    out: UnixStream,
}

/// The helper's entry point: runs until the process is deleted or the control socket closes;
/// the exit code is the program's.
pub fn main() -> i32 {
    // SAFETY: fd 3 is the control socket the handler passes to this program; nothing else in
    // this process owns it.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    // SAFETY: fcntl on a descriptor this process owns; keeps it from the container.
    unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let mut out = match control.try_clone() {
        Ok(o) => o,
        Err(_) => return 2,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, root, id, cgroup) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            send(&mut out, &Message::Failed { error: e });
            return 2;
        }
    };
    let mut helper = match create(mode, &root, &id, cgroup, out) {
        Ok(h) => h,
        Err((mut out, error)) => {
            send(&mut out, &Message::Failed { error });
            return 1;
        }
    };
    helper.serve(BufReader::new(control))
}

fn parse(args: &[String]) -> Result<(Mode, PathBuf, String, PathBuf), String> {
    match args {
        [mode, root, id, file, cgroup] => {
            let file = PathBuf::from(file);
            let mode = match mode.as_str() {
                "init" => Mode::Init { bundle: file },
                "exec" => Mode::Exec { process: file },
                other => return Err(format!("unknown mode {other:?}: init or exec")),
            };
            Ok((mode, root.into(), id.clone(), cgroup.into()))
        }
        _ => Err(
            "usage: kata-linux-container init|exec <state-root> <id> <bundle|process.json> \
             <cgroup>"
                .into(),
        ),
    }
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

fn send(out: &mut UnixStream, message: &Message) {
    if let Ok(mut line) = serde_json::to_string(message) {
        line.push('\n');
        // The handler gone: the socket's end of file is seen by the loop.
        let _ = out.write_all(line.as_bytes());
    }
}

fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Creates the process with libcontainer and reports it; on error the socket comes back with
/// the error (libcontainer removed what it had made).
fn create(
    mode: Mode,
    root: &std::path::Path,
    id: &str,
    cgroup: PathBuf,
    mut out: UnixStream,
) -> Result<Helper, (UnixStream, String)> {
    let built = (|| -> Result<(Option<Container>, libc::pid_t), String> {
        let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(root)
            .map_err(|e| chain(&e))?;
        match mode {
            Mode::Init { bundle } => {
                let c = builder
                    .as_init(bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    .build()
                    .map_err(|e| chain(&e))?;
                let pid = c.pid().ok_or("libcontainer reported no pid")?.as_raw();
                Ok((Some(c), pid))
            }
            Mode::Exec { process } => {
                let pid = builder
                    .as_tenant()
                    .with_process(Some(process))
                    .with_detach(true)
                    .build()
                    .map_err(|e| chain(&e))?;
                Ok((None, pid.as_raw()))
            }
        }
    })();
    let (container, pid) = match built {
        Ok(b) => b,
        Err(e) => return Err((out, e)),
    };
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: kill and waitpid on this process's own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            if let Some(mut c) = container {
                let _ = c.delete(true);
            }
            return Err((out, format!("pidfd_open of the container process: {e}")));
        }
    };
    // The process has its own copies of the streams: this program's go, so that the streams
    // end with the process.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto this process's standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    send(&mut out, &Message::Created { pid: pid as u32 });
    Ok(Helper {
        id: id.to_string(),
        cgroup,
        container,
        pid,
        pidfd: Some(pidfd),
        out,
    })
}

impl Helper {
    /// Serves requests and reports the exit until deleted or disowned.
    fn serve(&mut self, mut control: BufReader<UnixStream>) -> i32 {
        let mut line = String::new();
        loop {
            if !control.buffer().contains(&b'\n') {
                let mut fds = vec![libc::pollfd {
                    fd: control.get_ref().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                if let Some(p) = &self.pidfd {
                    fds.push(libc::pollfd {
                        fd: p.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
                // SAFETY: poll on descriptors this process owns, `fds.len()` entries.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if n < 0 {
                    continue; // EINTR
                }
                if fds.get(1).is_some_and(|p| p.revents != 0) {
                    self.reap();
                }
                if fds[0].revents == 0 {
                    continue;
                }
            }
            line.clear();
            match control.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    // The handler is gone: nothing of the process may outlive it.
                    let _ = self.delete();
                    return 0;
                }
                Ok(_) => {}
            }
            let request: Request = match serde_json::from_str(line.trim_end()) {
                Ok(r) => r,
                Err(e) => {
                    self.reply(Err(format!("bad request {:?}: {e}", line.trim_end())));
                    continue;
                }
            };
            if matches!(request, Request::Delete) {
                let r = self.delete();
                self.reply(r.map(|()| Answer::Done));
                return 0;
            }
            let r = self.handle(request);
            self.reply(r);
        }
    }

    fn reply(&mut self, r: Result<Answer, String>) {
        let message = match r {
            Ok(a) => Message::Reply {
                ok: Some(a),
                error: None,
            },
            Err(e) => Message::Reply {
                ok: None,
                error: Some(e),
            },
        };
        send(&mut self.out, &message);
    }

    /// Reaps the exited process and reports how it ended.
    fn reap(&mut self) {
        let mut status = 0;
        // SAFETY: waitpid on this process's own child, WNOHANG.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r != self.pid {
            return;
        }
        self.pidfd = None;
        let (code, signal) = if libc::WIFEXITED(status) {
            (Some(libc::WEXITSTATUS(status)), None)
        } else if libc::WIFSIGNALED(status) {
            (None, Some(libc::WTERMSIG(status)))
        } else {
            return;
        };
        send(&mut self.out, &Message::Exited { code, signal });
    }

    fn cgroup_manager(&self) -> Result<libcgroups::common::AnyCgroupManager, String> {
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: self.cgroup.clone(),
            systemd_cgroup: false,
            container_name: self.id.clone(),
        })
        .map_err(|e| chain(&e))
    }

    fn handle(&mut self, request: Request) -> Result<Answer, String> {
        match request {
            Request::Start => {
                let c = self
                    .container
                    .as_mut()
                    .ok_or("an exec is started when it is created")?;
                c.start().map_err(|e| chain(&e))?;
                Ok(Answer::Done)
            }
            Request::Signal { signal } => {
                if self.pidfd.is_some() {
                    // The process is this program's unreaped child: its pid is not reused.
                    // SAFETY: kill with a pid and a signal number.
                    if unsafe { libc::kill(self.pid, signal) } != 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::ESRCH) {
                            return Err(format!("kill {}: {e}", self.pid));
                        }
                    }
                }
                Ok(Answer::Done)
            }
            Request::Pause | Request::Resume => {
                let state = if matches!(request, Request::Pause) {
                    FreezerState::Frozen
                } else {
                    FreezerState::Thawed
                };
                let m = self.cgroup_manager()?;
                m.freeze(state).map_err(|e| chain(&e))?;
                Ok(Answer::Done)
            }
            Request::Stats => {
                let s = self.cgroup_manager()?.stats().map_err(|e| chain(&e))?;
                Ok(Answer::Stats(Box::new(figures(&s))))
            }
            Request::Update { resources } => {
                let opt = ControllerOpt {
                    resources: &resources,
                    disable_oom_killer: false,
                    oom_score_adj: None,
                    freezer_state: None,
                };
                self.cgroup_manager()?.apply(&opt).map_err(|e| chain(&e))?;
                Ok(Answer::Done)
            }
            Request::Pids => {
                let pids = self
                    .cgroup_manager()?
                    .get_all_pids()
                    .map_err(|e| chain(&e))?;
                Ok(Answer::Pids(
                    pids.into_iter().map(|p| p.as_raw() as u32).collect(),
                ))
            }
            Request::Delete => unreachable!("handled by the loop"),
        }
    }

    /// Kills the process and waits for it; for the init process, removes the container
    /// (every process left in its cgroup killed, the cgroup and libcontainer's state removed).
    fn delete(&mut self) -> Result<(), String> {
        if self.pidfd.is_some() {
            // SAFETY: kill on this process's own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        // Thawed before waiting: a frozen process does not die (the cgroup may be paused).
        if let Ok(m) = self.cgroup_manager() {
            let _ = m.freeze(FreezerState::Thawed);
        }
        if self.pidfd.take().is_some() {
            // SAFETY: waitpid on this process's own unreaped child, killed above.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        }
        match self.container.as_mut() {
            Some(c) => {
                c.refresh_status().map_err(|e| chain(&e))?;
                c.delete(true).map_err(|e| chain(&e))
            }
            None => Ok(()),
        }
    }
}

/// libcgroups' figures as the protocol carries them.
fn figures(s: &libcgroups::stats::Stats) -> CgroupFigures {
    let mem = |d: &libcgroups::stats::MemoryData| [d.usage, d.max_usage, d.fail_count, d.limit];
    CgroupFigures {
        cpu_total_ns: s.cpu.usage.usage_total,
        cpu_user_ns: s.cpu.usage.usage_user,
        cpu_kernel_ns: s.cpu.usage.usage_kernel,
        cpu_per_cpu_ns: s.cpu.usage.per_core_usage_total.clone(),
        cpu_throttling: [
            s.cpu.throttling.periods,
            s.cpu.throttling.throttled_periods,
            s.cpu.throttling.throttled_time,
        ],
        memory: mem(&s.memory.memory),
        memory_swap: mem(&s.memory.memswap),
        memory_kernel: mem(&s.memory.kernel),
        memory_cache: s.memory.cache,
        memory_hierarchy: s.memory.hierarchy,
        memory_stat: s
            .memory
            .stats
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        pids: [s.pids.current, s.pids.limit],
        hugetlb: s
            .hugetlb
            .iter()
            .map(|(k, h)| (k.clone(), [h.usage, h.max_usage, h.fail_count]))
            .collect(),
    }
}
