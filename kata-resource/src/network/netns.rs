//! The pod's network namespace: opened from its path, checked to be one, and entered by a
//! short-lived thread so that nothing else of the process changes namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use crate::{Error, Result};

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`, linux/nsfs.h): which kind of namespace an nsfs file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace. The file pins it only while this value lives; owners keep the
/// path and inode ([`NetnsId`]) and open it again, so a namespace that CNI deletes is not kept
/// alive by kata-rs.
#[derive(Debug)]
pub(crate) struct NetNs {
    id: NetnsId,
    file: File,
}

/// Which namespace a path named when it was opened: the path, and the nsfs inode that tells
/// whether the path still names the same namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NetnsId {
    /// The path, as the OCI spec gave it.
    pub path: PathBuf,
    /// The namespace's inode number (as `ls -i` or `lsns` show it).
    pub inode: u64,
}

impl NetNs {
    /// Opens the network namespace at `path` (the OCI spec's
    /// `linux.namespaces[network].path`). A missing path is [`Error::NetnsNotFound`], anything
    /// but a network namespace [`Error::NotANetns`].
    pub(crate) fn open(path: &Path) -> Result<NetNs> {
        let not_a_netns = |reason: String| Error::NotANetns {
            path: path.to_owned(),
            reason,
        };
        if !path.is_absolute() {
            return Err(not_a_netns("the path is not absolute".into()));
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NetnsNotFound {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(not_a_netns(format!("cannot open it: {e}"))),
        };
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| not_a_netns(format!("cannot statfs it: {e}")))?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(not_a_netns(
                "it is not a namespace file (nsfs): expected a bind mount of /proc/<pid>/ns/net \
                 such as /run/netns/<name>"
                    .into(),
            ));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open nsfs file's type.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            return Err(not_a_netns(format!(
                "NS_GET_NSTYPE: {}",
                io::Error::last_os_error()
            )));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(not_a_netns(format!(
                "it is a namespace of another kind (CLONE_NEW* flag {kind:#x})"
            )));
        }
        let inode = file
            .metadata()
            .map_err(|e| not_a_netns(format!("cannot stat it: {e}")))?
            .ino();
        Ok(NetNs {
            id: NetnsId {
                path: path.to_owned(),
                inode,
            },
            file,
        })
    }

    /// Opens the namespace `id` recorded, if its path still names it. `None`: the path is gone
    /// or names another namespace now, so whatever was made in the recorded one went with it
    /// (devices die with their namespace) or is unreachable.
    pub(crate) fn reopen(id: &NetnsId) -> Result<Option<NetNs>> {
        match NetNs::open(&id.path) {
            Ok(ns) if ns.id.inode == id.inode => Ok(Some(ns)),
            Ok(ns) => {
                tracing::info!(
                    netns = %id.path.display(),
                    recorded = id.inode,
                    now = ns.id.inode,
                    "the network namespace path names another namespace now: leaving it alone"
                );
                Ok(None)
            }
            Err(Error::NetnsNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Which namespace this is.
    pub(crate) fn id(&self) -> &NetnsId {
        &self.id
    }

    /// The path it was opened from.
    pub(crate) fn path(&self) -> &Path {
        &self.id.path
    }

    /// Runs `work` on a new thread that has entered this namespace, and waits for it. Whatever
    /// `work` opens or spawns (sockets, `/dev/net/tun` queues, `ip` and `tc` children) belongs
    /// to this namespace; the calling thread and the rest of the process do not change
    /// namespace. The thread ends with `work`.
    pub(crate) fn run<T: Send>(&self, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("kata-netns".into())
                .spawn_scoped(scope, || {
                    nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                        Error::Network {
                            netns: self.id.path.clone(),
                            action: "enter the namespace (setns)".into(),
                            reason: errno.to_string(),
                        }
                    })?;
                    work()
                })
                .map_err(|e| Error::Network {
                    netns: self.id.path.clone(),
                    action: "start a thread to enter the namespace".into(),
                    reason: e.to_string(),
                })?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_names_the_spec_field() {
        let e = NetNs::open(Path::new("/nonexistent/kata-rs/netns")).unwrap_err();
        assert!(matches!(e, Error::NetnsNotFound { .. }), "{e}");
        assert!(
            e.to_string().contains("linux.namespaces[network].path"),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let e = NetNs::open(Path::new("/proc/self/status")).unwrap_err();
        assert!(matches!(e, Error::NotANetns { .. }), "{e}");
        let e = NetNs::open(Path::new("relative/netns")).unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
    }

    #[test]
    fn a_namespace_of_another_kind_is_refused() {
        // Any process may open its own namespace files.
        let e = NetNs::open(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert!(e.to_string().contains("another kind"), "{e}");
    }

    #[test]
    fn this_process_network_namespace_opens_and_is_entered_on_a_thread() {
        let ns = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        let inode = ns.id().inode;
        // Entering one's own namespace needs CAP_SYS_ADMIN: only check it as root.
        if nix::unistd::geteuid().is_root() {
            let seen = ns
                .run(|| Ok(std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()))
                .unwrap();
            assert_eq!(seen, inode);
        }
        assert_eq!(NetNs::reopen(ns.id()).unwrap().unwrap().id(), ns.id());
        let moved = NetnsId {
            path: "/nonexistent/kata-rs/netns".into(),
            inode,
        };
        assert!(NetNs::reopen(&moved).unwrap().is_none());
    }
}
