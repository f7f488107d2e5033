//! The pod's shared namespaces in the guest, as Kata's agent makes them
//! (`Sandbox::setup_shared_namespaces`): CreateSandbox makes one IPC and one UTS namespace
//! (with the pod's hostname) that every container of the pod joins, so they see one hostname
//! and share SysV IPC and POSIX message queues, as the containers of a Kubernetes pod do.
//!
//! The namespaces are made by a short-lived thread of the agent (`unshare` of IPC and UTS acts
//! on the calling thread only) and kept alive by descriptors the agent holds, not by bind
//! mounts: nothing is left in the guest's filesystem, and dropping [`PodNamespaces`] lets them
//! go once no container is in them. A container joins them through the descriptors' `/proc`
//! paths ([`PodNamespaces::ipc_path`], [`PodNamespaces::uts_path`]), which the init helper, a
//! child of the agent in its PID and mount namespaces, opens before it enters anything.
//!
//! The shared PID namespace is not made here: a container asks for it with CreateContainer's
//! `sandbox_pidns`, and joins the PID namespace of the pod's first container (the infra
//! container), as Kata's agent does ([`crate::sandbox`]).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::{unshare, CloneFlags};

use crate::error::{AgentError, Result};

/// The pod's IPC and UTS namespaces, kept alive by the descriptors held here.
#[derive(Debug)]
pub struct PodNamespaces {
    ipc: OwnedFd,
    uts: OwnedFd,
    hostname: String,
}

impl PodNamespaces {
    /// New IPC and UTS namespaces; the UTS one gets `hostname` (empty: the agent's own,
    /// which a new UTS namespace starts with).
    pub fn new(hostname: &str) -> Result<Self> {
        let wanted = hostname.to_owned();
        let made = std::thread::Builder::new()
            .name("pod-namespaces".into())
            .spawn(move || -> Result<PodNamespaces> {
                unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
                    .map_err(|e| AgentError::sys("unshare the pod's IPC and UTS namespaces", e))?;
                if !wanted.is_empty() {
                    nix::unistd::sethostname(&wanted).map_err(|e| {
                        AgentError::sys(format!("sethostname {wanted:?} in the pod's namespace"), e)
                    })?;
                }
                let open = |kind: &str| -> Result<OwnedFd> {
                    let path = format!("/proc/thread-self/ns/{kind}");
                    File::open(&path)
                        .map(OwnedFd::from)
                        .map_err(|e| AgentError::io(format!("open {path}"), e))
                };
                let hostname = nix::unistd::gethostname()
                    .map_err(|e| AgentError::sys("gethostname in the pod's namespace", e))?
                    .to_string_lossy()
                    .into_owned();
                Ok(PodNamespaces {
                    ipc: open("ipc")?,
                    uts: open("uts")?,
                    hostname,
                })
            })
            .map_err(|e| AgentError::io("spawn the thread making the pod's namespaces", e))?;
        made.join().map_err(|_| {
            AgentError::Internal("the thread making the pod's namespaces panicked".into())
        })?
    }

    /// The pod's hostname (what its UTS namespace holds).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// A path that opens the pod's IPC namespace (for `linux.namespaces[ipc].path`).
    pub fn ipc_path(&self) -> PathBuf {
        fd_path(&self.ipc)
    }

    /// A path that opens the pod's UTS namespace (for `linux.namespaces[uts].path`).
    pub fn uts_path(&self) -> PathBuf {
        fd_path(&self.uts)
    }
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn ns_id(path: impl AsRef<std::path::Path>) -> (u64, u64) {
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn the_pods_namespaces_are_new_hold_the_hostname_and_leave_the_agent_alone() {
        if !is_root() {
            eprintln!("skipped: needs root to unshare");
            return;
        }
        let own_host = nix::unistd::gethostname().unwrap();
        let ns = PodNamespaces::new("kt-pod").unwrap();
        assert_eq!(ns.hostname(), "kt-pod");
        assert_eq!(
            nix::unistd::gethostname().unwrap(),
            own_host,
            "the agent's own changed"
        );
        for (path, kind) in [(ns.ipc_path(), "ipc"), (ns.uts_path(), "uts")] {
            assert_ne!(
                ns_id(&path),
                ns_id(format!("/proc/self/ns/{kind}")),
                "{kind}"
            );
        }
        // The same namespaces every time they are asked for.
        assert_eq!(ns_id(ns.uts_path()), ns_id(ns.uts_path()));
        let inherited = PodNamespaces::new("").unwrap();
        assert_eq!(
            inherited.hostname(),
            own_host.to_string_lossy(),
            "no hostname: the agent's"
        );
        assert_ne!(ns_id(inherited.ipc_path()), ns_id(ns.ipc_path()));
    }
}
