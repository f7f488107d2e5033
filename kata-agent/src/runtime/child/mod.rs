//! The container init helper: the agent binary re-executed as `kata-agent __container-init`.
//!
//! The agent is multi-threaded (tokio), and `setns` into a mount namespace, `unshare`, and most of
//! what happens between fork and exec are only safe in a single-threaded process. So the agent
//! spawns a fresh copy of itself with the container's stdio on fds 0-2 and a socket on fd 3,
//! sends it an [`InitConfig`], and this module does the rest single-threaded:
//!
//! 1. join or create the namespaces (or, for an exec, join those of the container's init);
//! 2. fork, so the child is inside the new pid namespace; report the child's pid and wait for
//!    the agent's acknowledgement (it now tracks the pid), then exit — the child is reparented
//!    to the agent (PID 1, or a child subreaper on the host);
//! 3. the child builds the container's root (`rootfs`), switches identity (`process`),
//!    reports `Ready`, waits for `Start` (containers only), and execs.

mod process;
mod rootfs;

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{fork, ForkResult};

use super::channel::{recv, send, FromHelper, HelperError, ToHelper};
use super::config::{InitConfig, Mode};

/// The fd the agent passes the helper's socket on.
pub const SOCKET_FD: i32 = 3;

/// A failure inside the helper, sent to the agent.
#[derive(Debug)]
pub(crate) struct ChildError(HelperError);

impl ChildError {
    pub(crate) fn msg(message: impl Into<String>) -> Self {
        ChildError(HelperError {
            field: None,
            message: message.into(),
        })
    }

    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ChildError(HelperError {
            field: Some(field.into()),
            message: message.into(),
        })
    }

    pub(crate) fn sys(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Self::msg(format!("{context}: {e}"))
    }
}

type ChildResult<T> = Result<T, ChildError>;

/// Entry point of `kata-agent __container-init`. Never returns.
pub fn main() -> ! {
    // SAFETY: the agent spawns this helper with its end of a socketpair on fd 3 and nothing
    // else owns that fd in this fresh process.
    let mut sock = unsafe { UnixStream::from_raw_fd(SOCKET_FD) };
    // The workload must not inherit it, and its closing on exec tells the agent the exec worked.
    let _ = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let code = match run(&mut sock) {
        Ok(never) => match never {},
        Err(e) => {
            let _ = send(&mut sock, &FromHelper::Error(e.0));
            1
        }
    };
    std::process::exit(code)
}

fn run(sock: &mut UnixStream) -> ChildResult<Infallible> {
    let cfg: InitConfig = match recv::<_, ToHelper>(sock) {
        Ok(Some(ToHelper::Config(cfg))) => *cfg,
        Ok(other) => return Err(ChildError::msg(format!("expected a config, got {other:?}"))),
        Err(e) => return Err(ChildError::sys("read config", e)),
    };
    match &cfg.mode {
        Mode::Container(setup) => enter_namespaces(
            setup
                .join
                .iter()
                .map(|(f, p)| (CloneFlags::from_bits_truncate(*f), p.clone())),
            CloneFlags::from_bits_truncate(setup.unshare_flags),
        )?,
        Mode::Exec { init_pid } => {
            // Join everything the container's init has; the user namespace is never ours to
            // change and setns into the one we are in fails.
            let joins = [
                ("cgroup", CloneFlags::CLONE_NEWCGROUP),
                ("ipc", CloneFlags::CLONE_NEWIPC),
                ("uts", CloneFlags::CLONE_NEWUTS),
                ("net", CloneFlags::CLONE_NEWNET),
                ("pid", CloneFlags::CLONE_NEWPID),
                ("mnt", CloneFlags::CLONE_NEWNS),
            ]
            .into_iter()
            .map(|(name, flag)| (flag, format!("/proc/{init_pid}/ns/{name}").into()));
            // The container's root, opened before the mount namespace changes under us. setns
            // puts us at the namespace's root mount, which is not the container's root when
            // the container was entered with MS_MOVE + chroot (an initramfs guest): chroot to
            // what its init sees.
            let root = File::open(format!("/proc/{init_pid}/root"))
                .map_err(|e| ChildError::sys(format!("open /proc/{init_pid}/root"), e))?;
            enter_namespaces(joins, CloneFlags::empty())?;
            nix::unistd::fchdir(&root)
                .map_err(|e| ChildError::sys("chdir to the container root", e))?;
            nix::unistd::chroot(".")
                .map_err(|e| ChildError::sys("chroot to the container root", e))?;
            nix::unistd::chdir("/").map_err(|e| ChildError::sys("chdir /", e))?;
        }
    }

    let (go_rx, go_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ChildError::sys("pipe", e))?;
    // SAFETY: this process is single-threaded (a fresh exec of the agent that started no
    // threads), so the child may allocate and run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| ChildError::sys("fork", e))? {
        ForkResult::Parent { child } => {
            drop(go_rx);
            release_child(sock, child.as_raw(), go_tx)
        }
        ForkResult::Child => {
            drop(go_tx);
            let mut go = [0u8; 1];
            let mut rx = File::from(go_rx);
            if !matches!(rx.read(&mut go), Ok(1)) {
                // The helper died before the agent tracked us: nobody waits for this process.
                std::process::exit(1);
            }
            drop(rx);
            match cfg.mode {
                Mode::Container(setup) => {
                    rootfs::prepare_session(cfg.process.terminal)?;
                    rootfs::setup(&setup, cfg.process.terminal)?;
                    let exec = process::prepare(&cfg.process)?;
                    send(sock, &FromHelper::Ready)
                        .map_err(|e| ChildError::sys("report ready", e))?;
                    match recv::<_, ToHelper>(sock) {
                        Ok(Some(ToHelper::Start)) => {}
                        // The container was removed before it started.
                        _ => std::process::exit(1),
                    }
                    Err(exec.exec())
                }
                Mode::Exec { .. } => {
                    rootfs::prepare_session(cfg.process.terminal)?;
                    let exec = process::prepare(&cfg.process)?;
                    Err(exec.exec())
                }
            }
        }
    }
}

/// The helper's side after fork: report the pid, wait for the agent to track it, let the child
/// go, exit.
fn release_child(sock: &mut UnixStream, pid: i32, go_tx: OwnedFd) -> ChildResult<Infallible> {
    send(sock, &FromHelper::Pid(pid)).map_err(|e| ChildError::sys("report pid", e))?;
    match recv::<_, ToHelper>(sock) {
        Ok(Some(ToHelper::Ack)) => {}
        other => {
            // Without the agent's ack nobody will wait for the child: take it down with us.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(ChildError::msg(format!("expected an ack, got {other:?}")));
        }
    }
    let mut tx = File::from(go_tx);
    let _ = tx.write_all(&[1]);
    std::process::exit(0)
}

/// Joins the namespaces in `join` (all opened first, the mount namespace entered last), then
/// creates those in `create`.
fn enter_namespaces(
    join: impl Iterator<Item = (CloneFlags, std::path::PathBuf)>,
    create: CloneFlags,
) -> ChildResult<()> {
    let mut opened = Vec::new();
    for (flag, path) in join {
        let f = File::open(&path)
            .map_err(|e| ChildError::sys(format!("open namespace {}", path.display()), e))?;
        opened.push((flag, path, f));
    }
    opened.sort_by_key(|(flag, _, _)| *flag == CloneFlags::CLONE_NEWNS);
    for (flag, path, f) in &opened {
        setns(f.as_fd(), *flag)
            .map_err(|e| ChildError::sys(format!("setns {}", path.display()), e))?;
    }
    if !create.is_empty() {
        unshare(create).map_err(|e| ChildError::sys(format!("unshare {create:?}"), e))?;
    }
    Ok(())
}
