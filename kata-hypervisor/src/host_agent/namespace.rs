//! The agent's namespaces: what a guest would give it, made on this host without touching
//! anything outside the VM directory.
//!
//! In the child, before it executes anything: new mount, UTS and IPC namespaces; every mount a
//! slave of the host's (host mount events still arrive, nothing leaks back); a fresh tmpfs on
//! `/run` (a guest's `/run`), in it `/run/kata-containers/shared/containers` bound to the
//! sandbox's shared directory, and the VM directory bound back at its own path when it lies
//! under `/run` (the agent's socket is there). Both binds take their source from a directory
//! opened before `/run` was covered. Then `unshare --pid --fork --kill-child --mount-proc`
//! runs the agent as PID 1 of a new PID namespace with its own `/proc`: when `unshare` dies,
//! the agent is killed, and with it every process of the namespace (containers included).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the agent finds the shared directory (Kata's guest path).
pub const GUEST_SHARED_DIR: &str = "/run/kata-containers/shared/containers";

/// Everything the child needs, prepared before the fork (nothing is allocated after it).
#[derive(Debug)]
pub(crate) struct Plan {
    /// `/run`.
    run: CString,
    /// Directories to create in the new `/run`, parents first.
    dirs: Vec<CString>,
    /// The shared directory (source of the bind) and the guest path (its target).
    share: Option<(CString, CString)>,
    /// The VM directory, when it lies under `/run` (bound back at its own path).
    vm_dir: Option<CString>,
    /// `/`.
    root: CString,
}

fn c(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::InvalidConfig {
        key: "path",
        value: p.display().to_string(),
        reason: "a path with a NUL byte".into(),
    })
}

impl Plan {
    /// The plan for a VM directory and an optional shared directory (both absolute).
    pub(crate) fn new(vm_dir: &Path, shared: Option<&Path>) -> Result<Self> {
        let run = Path::new("/run");
        let mut dirs = Vec::new();
        for d in [
            "/run/kata-containers",
            "/run/kata-containers/shared",
            GUEST_SHARED_DIR,
        ] {
            dirs.push(c(Path::new(d))?);
        }
        let vm_dir = if vm_dir.starts_with(run) {
            let mut ancestors: Vec<PathBuf> = vm_dir
                .ancestors()
                .take_while(|a| *a != run)
                .map(Path::to_path_buf)
                .collect();
            ancestors.reverse();
            for a in &ancestors {
                dirs.push(c(a)?);
            }
            Some(c(vm_dir)?)
        } else {
            None
        };
        Ok(Plan {
            run: c(run)?,
            dirs,
            share: shared
                .map(|s| Ok::<_, Error>((c(s)?, c(Path::new(GUEST_SHARED_DIR))?)))
                .transpose()?,
            vm_dir,
            root: c(Path::new("/"))?,
        })
    }

    /// Runs in the child between fork and exec: only system calls, on data prepared before.
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        fn check(r: libc::c_int) -> std::io::Result<()> {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every call below is a plain system call on NUL-terminated strings that live
        // in `self` for the whole call, or on descriptors opened here; none allocates, so all
        // are safe between fork and exec.
        unsafe {
            check(libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
            ))?;
            check(libc::mount(
                null,
                self.root.as_ptr(),
                null,
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            // Opened in the new namespace (a bind's source must be in the caller's), before
            // the tmpfs covers them.
            let open = |p: &CString| {
                libc::open(
                    p.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            let share_fd = match &self.share {
                Some((src, _)) => {
                    let fd = open(src);
                    check(fd)?;
                    fd
                }
                None => -1,
            };
            let vm_fd = match &self.vm_dir {
                Some(d) => {
                    let fd = open(d);
                    check(fd)?;
                    fd
                }
                None => -1,
            };
            let tmpfs = c"tmpfs";
            check(libc::mount(
                tmpfs.as_ptr(),
                self.run.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755".as_ptr().cast(),
            ))?;
            for d in &self.dirs {
                if libc::mkdir(d.as_ptr(), 0o755) < 0
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let dot = c".";
            if let Some((_, target)) = &self.share {
                check(libc::fchdir(share_fd))?;
                check(libc::mount(
                    dot.as_ptr(),
                    target.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            if let Some(d) = &self.vm_dir {
                check(libc::fchdir(vm_fd))?;
                check(libc::mount(
                    dot.as_ptr(),
                    d.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            check(libc::chdir(self.root.as_ptr()))?;
            for fd in [share_fd, vm_fd] {
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        }
        Ok(())
    }
}

/// The `unshare` arguments that run `agent` as PID 1 of a new PID namespace, listening on
/// `socket`.
pub(crate) fn unshare_args(agent: &Path, socket: &Path, log_level: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "unchanged",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(agent.as_os_str().to_owned());
    for a in ["--no-init", "--log", log_level, "--listen"] {
        args.push(a.into());
    }
    let mut listen = OsString::from("unix://");
    listen.push(socket.as_os_str());
    args.push(listen);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_dir_under_run_is_bound_back_with_its_parents_created() {
        let p = Plan::new(
            Path::new("/run/kata/sb/vm"),
            Some(Path::new("/run/kata/sb/shared")),
        )
        .unwrap();
        let dirs: Vec<_> = p.dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            dirs,
            [
                "/run/kata-containers",
                "/run/kata-containers/shared",
                "/run/kata-containers/shared/containers",
                "/run/kata",
                "/run/kata/sb",
                "/run/kata/sb/vm"
            ]
        );
        assert_eq!(p.vm_dir.unwrap().to_str().unwrap(), "/run/kata/sb/vm");
        let p = Plan::new(Path::new("/tmp/sb/vm"), None).unwrap();
        assert!(p.vm_dir.is_none() && p.share.is_none());
        assert_eq!(p.dirs.len(), 3);
    }

    #[test]
    fn the_agent_runs_as_pid_1_and_dies_with_unshare() {
        let args = unshare_args(
            Path::new("/bin/kata-agent"),
            Path::new("/tmp/vm/agent.sock"),
            "debug",
        );
        let text: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            text.join(" "),
            "--pid --fork --kill-child --mount-proc --propagation unchanged /bin/kata-agent --no-init --log debug --listen unix:///tmp/vm/agent.sock"
        );
    }
}
