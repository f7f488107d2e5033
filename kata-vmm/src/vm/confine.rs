//! What the VMM's own threads may not do, whatever the guest makes their devices do.
//!
//! The built-in VMM runs inside the runtime's process, as the runtime's user, so a guest that
//! took over a device's code (a parser bug in virtio-fs, vsock or block) would act with the
//! runtime's rights. Each vCPU thread (`kata-vcpu-N`) and the device thread (`kata-vmm-events`)
//! therefore installs a seccomp filter on itself when it starts (`no_new_privs` first, as
//! seccomp requires; both are attributes of the thread, so the runtime's other threads are not
//! confined) that answers `EPERM` to what none of these threads ever does:
//!
//! * running a program or making a process: `execve`, `execveat`, `fork`, `vfork`, `clone`
//!   without `CLONE_THREAD`; `clone3`, whose flags a filter cannot read, answers `ENOSYS`,
//!   so that the C library falls back to `clone` (threads still start, processes do not);
//! * reaching into other processes: `ptrace`, `process_vm_readv`, `process_vm_writev`,
//!   `pidfd_getfd`, `kcmp`;
//! * changing the host: mounts (`mount`, `umount2`, `pivot_root`, `chroot`, `move_mount`,
//!   `open_tree`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `mount_setattr`), namespaces
//!   (`setns`, `unshare`), kernel modules, `kexec_*`, `reboot`, `swapon`/`swapoff`, the
//!   clock (`settimeofday`, `clock_settime`, `adjtimex`, `clock_adjtime`), `sethostname`,
//!   `setdomainname`, `acct`, `quotactl`, `syslog`, `iopl`/`ioperm`;
//! * kernel surfaces no device needs: `bpf`, `perf_event_open`, `userfaultfd`,
//!   `io_uring_setup`, the keyring (`add_key`, `request_key`, `keyctl`), and sockets of any
//!   family but `AF_UNIX` (the hybrid vsock's socket is bound before the VM starts).
//!
//! Everything else is allowed: the device thread serves inline virtio-fs with the host's
//! file system calls (fuse-backend-rs' passthrough, which also switches the thread's
//! credentials while it creates a file), so an allow-list is future work; this list closes the
//! ways out of the process (a new program, another process, the host's mounts and kernel).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// Denied outright, on every architecture.
const DENIED: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_clock_adjtime,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
];

/// Denied outright on x86_64 only (other architectures have no such calls).
#[cfg(target_arch = "x86_64")]
const DENIED_X86_64: &[i64] = &[
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_X86_64: &[i64] = &[];

fn filter_error(e: impl std::fmt::Display) -> Error {
    Error::Confinement(e.to_string())
}

fn arch() -> Result<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(Error::Confinement(format!(
            "no seccomp filter for the VMM's threads on {}",
            std::env::consts::ARCH
        )))
    }
}

/// The seccomp filter of the VMM's threads (see the module documentation), built once per VM
/// and applied by each thread to itself.
#[derive(Debug, Clone)]
pub struct ThreadConfinement {
    /// `clone3` answers ENOSYS.
    no_clone3: BpfProgram,
    /// The rest answers EPERM.
    filter: BpfProgram,
}

impl ThreadConfinement {
    /// Builds the filter for this architecture.
    pub fn new() -> Result<Self> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for &nr in DENIED.iter().chain(DENIED_X86_64) {
            rules.insert(nr, Vec::new());
        }
        // A process, not a thread: clone without CLONE_THREAD (the flags are argument 0).
        let thread = libc::CLONE_THREAD as u64;
        rules.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(thread),
                0,
            )
            .map_err(filter_error)?])
            .map_err(filter_error)?],
        );
        // Any socket but a unix one (the domain is argument 0).
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::AF_UNIX as u64,
            )
            .map_err(filter_error)?])
            .map_err(filter_error)?],
        );
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch()?,
        )
        .map_err(filter_error)?;
        let no_clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch()?,
        )
        .map_err(filter_error)?;
        Ok(ThreadConfinement {
            no_clone3: no_clone3.try_into().map_err(filter_error)?,
            filter: filter.try_into().map_err(filter_error)?,
        })
    }

    /// Confines the calling thread (and any thread it would start): `no_new_privs` and the
    /// filter. The process's other threads are untouched.
    pub fn apply_to_this_thread(&self) -> Result<()> {
        seccompiler::apply_filter(&self.no_clone3).map_err(filter_error)?;
        seccompiler::apply_filter(&self.filter).map_err(filter_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Runs `f` on a new thread confined by the filter.
    fn confined<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let c = ThreadConfinement::new().unwrap();
        std::thread::spawn(move || {
            c.apply_to_this_thread().unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_confined_thread_cannot_start_a_program() {
        let err = confined(|| Command::new("/bin/true").status().unwrap_err());
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        // The rest of the process is not confined.
        assert!(Command::new("/bin/true").status().unwrap().success());
    }

    #[test]
    fn a_confined_thread_keeps_threads_unix_sockets_and_files_but_no_network() {
        let (unix, inet, netlink, thread, file) = confined(|| {
            // SAFETY: socket(2) with integer arguments; a returned descriptor is closed below.
            let socket = |domain| unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
            let unix = socket(libc::AF_UNIX);
            let inet = (socket(libc::AF_INET), errno());
            // SAFETY: as above.
            let netlink = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
            // SAFETY: `unix` came from socket(2) above and is closed once.
            unsafe { libc::close(unix) };
            let thread = std::thread::spawn(|| 7).join().unwrap();
            let file = std::fs::read_to_string("/proc/self/status").is_ok();
            (unix, inet, netlink, thread, file)
        });
        assert!(unix >= 0, "a unix socket was refused");
        assert_eq!(inet, (-1, libc::EPERM));
        assert_eq!(netlink, -1);
        assert_eq!(
            thread, 7,
            "threads must still start (clone with CLONE_THREAD)"
        );
        assert!(file);
    }

    #[test]
    fn a_confined_thread_cannot_unshare_or_load_bpf() {
        let bpf = |cmd: libc::c_long| {
            // SAFETY: bpf(2) with an unknown command and no attribute pointer: the kernel
            // answers EINVAL (or EPERM when filtered) without reading memory.
            let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, 0usize, 0usize) };
            (r, errno())
        };
        // Unconfined, the same call reaches the kernel (not EPERM).
        assert_ne!(bpf(-1), (-1, libc::EPERM));
        let (unshare, filtered) = confined(move || {
            // SAFETY: unshare(2) with a flag; refused by the filter before it acts (it would
            // only move this short-lived thread into a new UTS namespace otherwise).
            let u = unsafe { libc::unshare(libc::CLONE_NEWUTS) };
            ((u, errno()), bpf(-1))
        });
        assert_eq!(unshare, (-1, libc::EPERM));
        assert_eq!(filtered, (-1, libc::EPERM));
    }
}
