//! What the QEMU process may not do to the host's filesystem and network, whatever the guest
//! asks of it.
//!
//! QEMU runs as root and serves the 9p share itself: every file the guest creates, every mode
//! it sets, is made on the host by QEMU. With `security_model=none` (the only 9p model under
//! which the symlinks of an image unpacked on the host still resolve in the guest: QEMU's
//! `mapped-xattr` and `mapped-file` read a symlink as a file, so `/bin/sh -> busybox` breaks),
//! that would let the guest leave setuid binaries, file capabilities and device nodes on the
//! host. So before QEMU is executed, its process:
//!
//! * loses, from its capability bounding set, `CAP_MKNOD` (no device nodes), `CAP_SETFCAP` (no
//!   `security.capability` xattrs: file capabilities), `CAP_FSETID` (writing to or chowning
//!   a set-user-ID file clears its set-ID bits, as for an unprivileged writer) and
//!   `CAP_SYS_ADMIN` (no `trusted.*` or other `security.*` xattrs, such as
//!   `trusted.overlay.*` in an overlay's upper directory; no mounts), and `CAP_NET_ADMIN` and
//!   `CAP_NET_RAW`: QEMU runs in the host's network namespace, where they would let it change
//!   interfaces, routes and filters or read and forge any traffic, and it needs neither — its
//!   NICs are tap queues it inherits open ([`inherit_across_exec`]), made in the pod's
//!   namespace by kata-resource, and the `tun` and `vhost-net` ioctls on an open queue need
//!   no capability. After `execve` root's capabilities are the bounding set, so QEMU never has
//!   them;
//! * gets a seccomp filter (kept across `execve`, on top of QEMU's own `-sandbox`) that answers
//!   `EPERM` to `chmod`, `fchmod`, `fchmodat`, `fchmodat2` with a set-user-ID or set-group-ID
//!   bit, to `open`/`openat`/`creat` creating a file with one, to `mknod`/`mknodat` of a
//!   character or block device, and to `openat2` (whose mode it cannot see).
//!
//! What it costs the guest: a `chmod u+s`/`g+s` or a `mknod` of a device on the share fails
//! with `EPERM`, and writing to a setuid file of the image clears its set-ID bits; `user.*`
//! xattrs still work. Everything else QEMU needs keeps working (`CAP_DAC_OVERRIDE` and
//! `CAP_CHOWN` for the share, `CAP_IPC_LOCK`).

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// The capabilities QEMU runs without (see the module documentation).
pub const DROPPED_CAPABILITIES: &[(&str, u32)] = &[
    ("CAP_FSETID", 4),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_MKNOD", 27),
    ("CAP_SETFCAP", 31),
];

/// `fchmodat2` (Linux 6.6), the same number on every architecture kata-rs builds for.
const SYS_FCHMODAT2: i64 = 452;

const SET_ID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// The confinement a QEMU process gets before it is executed: built in the parent, applied in
/// the child between `fork` and `execve` ([`VmmConfinement::apply`]).
#[derive(Debug, Clone)]
pub struct VmmConfinement {
    filter: BpfProgram,
}

fn arch() -> Result<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Ok(TargetArch::riscv64)
    } else {
        Err(Error::Unsupported {
            backend: "qemu",
            what: format!(
                "confining QEMU on {} (no seccomp filter for it)",
                std::env::consts::ARCH
            ),
        })
    }
}

fn filter_error(e: impl std::fmt::Display) -> Error {
    Error::io(
        "building the seccomp filter that confines QEMU",
        std::io::Error::other(e.to_string()),
    )
}

/// `arg & mask == value`.
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .map_err(filter_error)
}

/// One rule per set-ID bit: `mode` (argument `arg`) has it, and `extra` holds.
fn set_id_rules(arg: u8, extra: &[(u8, u64, u64)]) -> Result<Vec<SeccompRule>> {
    SET_ID_BITS
        .iter()
        .map(|&bit| {
            let mut conditions = vec![masked(arg, bit, bit)?];
            for &(a, mask, value) in extra {
                conditions.push(masked(a, mask, value)?);
            }
            SeccompRule::new(conditions).map_err(filter_error)
        })
        .collect()
}

/// Rules matching a device node's type in `mode` (argument `arg`).
fn device_rules(arg: u8) -> Result<Vec<SeccompRule>> {
    [libc::S_IFCHR, libc::S_IFBLK]
        .iter()
        .map(|&kind| {
            SeccompRule::new(vec![masked(arg, libc::S_IFMT as u64, kind as u64)?])
                .map_err(filter_error)
        })
        .collect()
}

impl VmmConfinement {
    /// Builds the filter for this architecture.
    pub fn new() -> Result<Self> {
        let creat = libc::O_CREAT as u64;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        rules.insert(libc::SYS_fchmod, set_id_rules(1, &[])?);
        rules.insert(libc::SYS_fchmodat, set_id_rules(2, &[])?);
        rules.insert(SYS_FCHMODAT2, set_id_rules(2, &[])?);
        rules.insert(libc::SYS_openat, set_id_rules(3, &[(2, creat, creat)])?);
        rules.insert(libc::SYS_mknodat, device_rules(2)?);
        rules.insert(libc::SYS_openat2, Vec::new());
        #[cfg(target_arch = "x86_64")]
        {
            rules.insert(libc::SYS_chmod, set_id_rules(1, &[])?);
            rules.insert(libc::SYS_open, set_id_rules(2, &[(1, creat, creat)])?);
            rules.insert(libc::SYS_creat, set_id_rules(1, &[])?);
            rules.insert(libc::SYS_mknod, device_rules(1)?);
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch()?,
        )
        .map_err(filter_error)?;
        Ok(VmmConfinement {
            filter: filter.try_into().map_err(filter_error)?,
        })
    }

    /// Applies the confinement to the calling process: drops [`DROPPED_CAPABILITIES`] from
    /// its bounding set, sets `no_new_privs` and installs the filter. Meant for the child
    /// between `fork` and `execve` (`Command::pre_exec`): it allocates nothing.
    pub fn apply(&self) -> std::io::Result<()> {
        for &(_, cap) in DROPPED_CAPABILITIES {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: a capability this kernel does not know, so nobody can have it.
            if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(std::io::Error::last_os_error());
            }
        }
        seccompiler::apply_filter(&self.filter).map_err(|e| match e {
            seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    }
}

/// Clears close-on-exec on `fds` in the calling process, so that the program it executes
/// inherits them under the same numbers: how QEMU gets the tap queues its command line names
/// (`-netdev tap,fds=N:M`), which kata-resource opened in the pod's namespace. Meant for the
/// child between `fork` and `execve`, before [`VmmConfinement::apply`]: it only calls
/// `fcntl` and allocates nothing. The flag belongs to the child's descriptor table: the
/// parent's descriptors stay close-on-exec, so no other child inherits them.
pub fn inherit_across_exec(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl with an integer descriptor and integer arguments, no pointers.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    /// Runs `script` in `sh` confined as QEMU is; returns its output.
    fn confined_sh(dir: &std::path::Path, script: &str) -> String {
        let confinement = VmmConfinement::new().unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(script).current_dir(dir);
        // SAFETY: `apply` only makes syscalls (prctl, seccomp) on data built before the fork.
        unsafe {
            cmd.pre_exec(move || confinement.apply());
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// As root (the tests run as root, like QEMU): what a guest could ask QEMU to do, done by
    /// a confined shell, leaves no set-ID file, device node or file capability.
    #[test]
    fn a_confined_root_process_cannot_make_host_meaningful_files() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::copy("/bin/true", dir.join("suid-before")).unwrap();
        std::fs::set_permissions(
            dir.join("suid-before"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let out = confined_sh(
            dir,
            "cp /bin/true plain; chmod 0755 plain && echo chmod-ok; \
             chmod 4755 plain || echo chmod-suid-refused; \
             chmod 2755 plain || echo chmod-sgid-refused; \
             mknod cdev c 1 3 || echo mknod-c-refused; \
             mknod bdev b 8 0 || echo mknod-b-refused; \
             mknod fifo p && echo mkfifo-ok; \
             setcap cap_net_raw+ep plain || echo setcap-refused; \
             echo x >> suid-before && echo append-ok; \
             install -m 4755 /bin/true installed || echo install-refused",
        );
        for want in [
            "chmod-ok",
            "chmod-suid-refused",
            "chmod-sgid-refused",
            "mknod-c-refused",
            "mknod-b-refused",
            "mkfifo-ok",
            "setcap-refused",
            "append-ok",
            "install-refused",
        ] {
            assert!(out.contains(want), "`{want}` not in:\n{out}");
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let ft = meta.file_type();
            assert!(
                !ft.is_char_device() && !ft.is_block_device(),
                "{:?}: a device node",
                entry.path()
            );
            assert_eq!(
                meta.permissions().mode() & 0o6000,
                0,
                "{:?}: set-ID bits ({:o}):\n{out}",
                entry.path(),
                meta.permissions().mode()
            );
            let caps = std::process::Command::new("getcap")
                .arg(entry.path())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            assert!(caps.trim().is_empty(), "file capabilities: {caps}");
        }
    }

    /// A descriptor opened close-on-exec (as Rust opens every file, and kata-resource the tap
    /// queues) reaches the executed program only through `inherit_across_exec`, under its own
    /// number, and stays close-on-exec in the parent.
    #[test]
    fn inherited_descriptors_keep_their_numbers_across_exec_and_only_there() {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let probe = format!("test -e /proc/self/fd/{fd} && echo inherited || echo closed");
        let run = |inherit: bool| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c").arg(&probe);
            if inherit {
                let fds = vec![fd];
                let confinement = VmmConfinement::new().unwrap();
                // SAFETY: fcntl, prctl and seccomp calls on data built before the fork.
                unsafe {
                    cmd.pre_exec(move || {
                        inherit_across_exec(&fds)?;
                        confinement.apply()
                    });
                }
            }
            String::from_utf8(cmd.output().unwrap().stdout).unwrap()
        };
        assert_eq!(run(false), "closed\n");
        assert_eq!(run(true), "inherited\n", "under the confinement too");
        // SAFETY: fcntl with an integer descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(
            flags & libc::FD_CLOEXEC,
            libc::FD_CLOEXEC,
            "the parent's flag"
        );
        let e = inherit_across_exec(&[-1]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn the_filter_builds_for_this_architecture() {
        let c = VmmConfinement::new().unwrap();
        assert!(c.filter.len() > 20, "{} instructions", c.filter.len());
    }
}
