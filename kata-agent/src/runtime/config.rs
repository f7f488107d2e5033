//! What the agent hands to a container's init helper: the spec, already validated and
//! translated into the exact steps to take (which namespaces to join or create, which mounts,
//! which device nodes, the resolved user and capability masks).
//!
//! Translation happens in the agent ([`super::spec`]), so every decision is unit-testable and
//! every spec error is an `INVALID_ARGUMENT` before anything is forked; the helper only executes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::caps::CapSets;
use super::seccomp::SeccompProgram;
use super::user::ResolvedUser;

/// Everything the helper needs for one process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitConfig {
    /// `container` or `container/exec`, for error messages.
    pub id: String,
    /// The process to exec.
    pub process: ProcessConfig,
    /// A new container, or an exec into a running one.
    pub mode: Mode,
}

/// Container creation or exec.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Mode {
    /// Set up a new container and wait for StartContainer before exec.
    Container(Box<ContainerSetup>),
    /// Join the namespaces of the container's init (this pid) and exec right away.
    Exec {
        /// Pid of the container's init process, in the agent's pid namespace.
        init_pid: i32,
    },
}

/// The workload process: argv, env, identity, limits.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// `process.args` (non-empty).
    pub args: Vec<String>,
    /// `process.env`, plus `HOME` when missing.
    pub env: Vec<String>,
    /// `process.cwd` (absolute).
    pub cwd: PathBuf,
    /// The resolved user.
    pub user: ResolvedUser,
    /// Capability masks; `None` leaves the capabilities as they are.
    pub caps: Option<CapSets>,
    /// `(resource, soft, hard)` for `setrlimit`.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// `process.noNewPrivileges`.
    pub no_new_privileges: bool,
    /// Whether stdio is a terminal (make it the controlling tty).
    pub terminal: bool,
    /// `process.oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
    /// The container's `linux.seccomp`, compiled. Installed right before `execve` (after
    /// `no_new_privs`), or before the capabilities are dropped when `no_new_privileges` is off
    /// (installing without it needs `CAP_SYS_ADMIN`).
    pub seccomp: Option<SeccompProgram>,
}

/// How to build a new container.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ContainerSetup {
    /// The rootfs, an absolute path in the agent's mount namespace.
    pub rootfs: PathBuf,
    /// Remount the rootfs read-only after setup.
    pub readonly_rootfs: bool,
    /// Propagation flags (`MsFlags` bits) for `/` before anything is mounted.
    pub root_propagation: u64,
    /// Apply `MS_SHARED` (recursive) to the new root after pivot_root.
    pub share_root: bool,
    /// Enter the root with `MS_MOVE` + `chroot` instead of `pivot_root` (what an initramfs root
    /// forces; `--no-pivot` asks for it everywhere).
    pub no_pivot: bool,
    /// Namespaces to create (`CLONE_NEW*` bits).
    pub unshare_flags: i32,
    /// Namespaces to join: (`CLONE_NEW*` bit, path).
    pub join: Vec<(i32, PathBuf)>,
    /// Mounts, in spec order.
    pub mounts: Vec<MountStep>,
    /// Device nodes to create under the rootfs's `/dev`.
    pub devices: Vec<DeviceNode>,
    /// Whether `/dev` is a fresh mount that needs the standard symlinks (`/dev/fd`, `ptmx`...).
    pub dev_symlinks: bool,
    /// Hostname (only with a new UTS namespace).
    pub hostname: Option<String>,
    /// Domain name (only with a new UTS namespace).
    pub domainname: Option<String>,
    /// `linux.sysctl`, checked against the allow-list: key → (`/proc/sys` file, value).
    pub sysctl: BTreeMap<String, (PathBuf, String)>,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<PathBuf>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<PathBuf>,
}

/// One mount of the spec, classified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStep {
    /// Its index in the spec's `mounts` (errors name `mounts[<index>]`; skipped mounts such as
    /// `cgroup` make it differ from the position in [`ContainerSetup::mounts`]).
    pub index: usize,
    /// Destination inside the container (absolute).
    pub destination: PathBuf,
    /// What to mount.
    pub kind: MountKind,
    /// The spec's options, parsed by the helper with [`crate::mount::MountOptions`].
    pub options: Vec<String>,
}

/// What a mount is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A bind (or rbind) of a path in the agent's mount namespace.
    Bind {
        /// Absolute source path.
        source: PathBuf,
        /// The tree the pod's containers write that `source` lies in (a storage's mount point
        /// or a container's rootfs), if any: the source is then opened beneath it, so a symlink
        /// in it cannot lead outside.
        within: Option<PathBuf>,
    },
    /// A filesystem mount (`proc`, `sysfs`, `tmpfs`, `devpts`, `mqueue`, ...).
    Filesystem {
        /// Filesystem type.
        fstype: String,
        /// Source (device or a label such as `proc`).
        source: String,
    },
}

/// A device node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path inside the container (`/dev/null`).
    pub path: PathBuf,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
    pub kind: u32,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}
