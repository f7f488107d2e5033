//! What the VMM's own threads may do: an allow-list per thread kind, `EPERM` for the rest.
//!
//! The built-in VMM runs inside the runtime's process, as the runtime's user, so a guest that
//! took over a device's code (a parser bug in virtio-fs, vsock, net or block) would act with
//! the runtime's rights. Each thread therefore installs a seccomp filter on itself when it
//! starts (`no_new_privs` first, as seccomp requires; both are attributes of the thread, so the
//! runtime's other threads are not confined). The filter lists what the thread does and
//! answers `EPERM` to every other system call, as Firecracker and Cloud Hypervisor filter
//! theirs (their lists were read for which calls a vCPU and a device loop make; these are our
//! own, for our threads):
//!
//! * **both kinds** ([`ThreadKind`]): memory (`brk`, `munmap`, `mremap`, `madvise`; `mmap` and
//!   `mprotect` never executable), locks and time (`futex`, `sched_yield`, sleeps, clocks),
//!   signal returns and masks (the vCPU kick), `read`/`write`/`readv`/`writev`/`close` on
//!   descriptors already open (eventfds, the log), `fcntl`, `getrandom`, the ids of this
//!   process, `tgkill` of this process only, `exit`; `clone` of a thread only (`clone3`,
//!   whose flags a filter cannot read, answers `ENOSYS`, so the C library falls back to
//!   `clone`);
//! * **a vCPU thread** (`kata-vcpu-N`) besides: `ioctl(KVM_RUN)`, `pread64`/`pwrite64` on
//!   descriptors already open (a passed-through VFIO function's config space and BARs,
//!   answered on the vCPU's own MMIO and port exits) and, when the guest programs a VFIO
//!   function's MSI capability or its MSI-X capability and table, `ioctl(KVM_SET_GSI_ROUTING)`
//!   and `ioctl(VFIO_DEVICE_SET_IRQS)`, and, only in a VM that may be snapshotted
//!   ([`ThreadConfinement::for_vm`]), the reads of its own vCPU's state a snapshot makes
//!   (`KVM_GET_REGS`, `_SREGS`, `_MSRS`, `_LAPIC`, `_MP_STATE`, `_VCPU_EVENTS`, `_DEBUGREGS`,
//!   `_XSAVE`, `_XCRS`) (no other ioctl; an MSI-X vector's held interrupt is
//!   read from and delivered to eventfds with the common `read`/`write`). It opens nothing,
//!   makes no socket and touches no path;
//! * **the device thread** (`kata-vmm-events`) besides: the event loop (`epoll_*`), the hybrid
//!   vsock's unix sockets (`accept4`, send and receive, `shutdown`; `socket` of `AF_UNIX`
//!   only), `ioctl(FIONBIO)`, and the file system calls inline virtio-fs (fuse-backend-rs'
//!   passthrough) and virtio-blk make: the `*at` family, stat, read and write at offsets,
//!   `getdents64`, `fsync`, `fallocate`, `ftruncate`, `setresuid`/`setresgid` (the passthrough
//!   switches this thread's credentials while it creates a file). Even there: `mknod`/`mknodat`
//!   make regular files, fifos and sockets only (no device node), and `open`/`openat` creating
//!   a file, `fchmod`/`fchmodat` and `mknodat` never set a set-user-ID or set-group-ID bit — the
//!   rules the QEMU backend's filter enforces on QEMU's 9p share.
//!
//! What those calls can reach is the namespace sandbox's part (`vm/namespace.rs`), which
//! [`ThreadConfinement::confine_this_thread`] enters before the filter: the thread's own
//! mount namespace with an empty root, the device thread's own network namespace, and only
//! the capabilities the thread needs.
//!
//! Not on either list, so refused: running a program (`execve`), a process (`fork`, `clone`
//! without `CLONE_THREAD`), `ptrace` and cross-process memory, mounts, namespaces, modules,
//! `kexec`, `reboot`, the clock, `bpf`, `perf_event_open`, `userfaultfd`, `io_uring`, keyrings,
//! `open_by_handle_at`/`name_to_handle_at`, `openat2` (whose mode a filter cannot see), network
//! sockets, extended attributes (the share runs without them), and any ioctl but the listed.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::namespace::{Sandboxed, ThreadSandbox};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// The kind of VMM thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread (`kata-vcpu-N`): `KVM_RUN` and the exit handling.
    Vcpu,
    /// The device thread (`kata-vmm-events`): the event loop and every device behind it.
    Device,
}

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// The ioctls a vCPU thread makes: running, and the guest's MSI programming of a VFIO
/// function (its routes, the device's MSI on or off).
const VCPU_IOCTLS: &[u64] = &[
    KVM_RUN,
    crate::devices::vfio::irq::KVM_SET_GSI_ROUTING,
    crate::devices::vfio::uapi::VFIO_DEVICE_SET_IRQS,
];

/// Allowed to every VMM thread, unconditionally.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Decided by the second filter (ENOSYS), see `no_clone3`.
    libc::SYS_clone3,
];

/// Allowed to the device thread, unconditionally.
const DEVICE: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    // Files: inline virtio-fs (fuse-backend-rs' passthrough) and virtio-blk.
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_lseek,
    libc::SYS_getdents64,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_fchownat,
    libc::SYS_fchown,
    libc::SYS_utimensat,
    libc::SYS_copy_file_range,
    libc::SYS_flock,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
];

/// Allowed to the device thread on x86_64 only: the path calls Rust's std makes there
/// (`std::fs`), each one an `*at` call above with the current directory.
#[cfg(target_arch = "x86_64")]
const DEVICE_X86_64: &[i64] = &[
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_readlink,
];
#[cfg(not(target_arch = "x86_64"))]
const DEVICE_X86_64: &[i64] = &[];

/// The ioctls the device thread makes: `FIONBIO` (a new vsock connection made non-blocking),
/// `FIOCLEX`/`FIONCLEX`.
const DEVICE_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX];

/// `fchmodat2` (Linux 6.6), the same number on every architecture kata-rs builds for.
const SYS_FCHMODAT2: i64 = 452;

const SET_ID_BITS: u64 = (libc::S_ISUID | libc::S_ISGID) as u64;

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

/// `arg & mask == value`.
fn masked(arg: u8, len: SeccompCmpArgLen, mask: u64, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, len, SeccompCmpOp::MaskedEq(mask), value).map_err(filter_error)
}

/// `arg == value`.
fn equals(arg: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, len, SeccompCmpOp::Eq, value).map_err(filter_error)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule> {
    SeccompRule::new(conditions).map_err(filter_error)
}

/// Rules allowing a mode argument (`arg`) without a set-ID bit.
fn no_set_id(arg: u8) -> Result<Vec<SeccompRule>> {
    Ok(vec![rule(vec![masked(
        arg,
        SeccompCmpArgLen::Dword,
        SET_ID_BITS,
        0,
    )?])?])
}

/// Rules allowing an open whose flags (`flags`) create nothing, or whose mode (`mode`) has no
/// set-ID bit.
fn open_rules(flags: u8, mode: u8) -> Result<Vec<SeccompRule>> {
    let creating = (libc::O_CREAT | libc::O_TMPFILE) as u64 & !(libc::O_DIRECTORY as u64);
    Ok(vec![
        rule(vec![masked(flags, SeccompCmpArgLen::Dword, creating, 0)?])?,
        rule(vec![masked(mode, SeccompCmpArgLen::Dword, SET_ID_BITS, 0)?])?,
    ])
}

/// Rules allowing `mknod`'s mode (`arg`) to make a regular file, a fifo or a socket without a
/// set-ID bit: never a device node.
fn mknod_rules(arg: u8) -> Result<Vec<SeccompRule>> {
    let kind = libc::S_IFMT as u64;
    [libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK]
        .iter()
        .map(|&t| {
            rule(vec![
                masked(arg, SeccompCmpArgLen::Dword, kind, t as u64)?,
                masked(arg, SeccompCmpArgLen::Dword, SET_ID_BITS, 0)?,
            ])
        })
        .collect()
}

/// The allow-list of one thread kind (see the module documentation); a vCPU thread's has
/// the snapshot's reads of its state only with `snapshot_reads`.
fn allow_list(kind: ThreadKind, snapshot_reads: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON {
        rules.insert(nr, Vec::new());
    }
    let not_exec = || -> Result<Vec<SeccompRule>> {
        Ok(vec![rule(vec![masked(
            2,
            SeccompCmpArgLen::Dword,
            libc::PROT_EXEC as u64,
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, not_exec()?);
    rules.insert(libc::SYS_mprotect, not_exec()?);
    // A thread, never a process: clone with CLONE_THREAD (the flags are argument 0).
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![masked(
            0,
            SeccompCmpArgLen::Qword,
            thread,
            thread,
        )?])?],
    );
    // Signals to this process's own threads only (abort, a panic while panicking).
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![equals(
            0,
            SeccompCmpArgLen::Dword,
            u64::from(std::process::id()),
        )?])?],
    );
    match kind {
        ThreadKind::Vcpu => {
            // VFIO: the config region and trapped BAR accesses, at offsets of the device fd.
            rules.insert(libc::SYS_pread64, Vec::new());
            rules.insert(libc::SYS_pwrite64, Vec::new());
            // And, in a VM that may be snapshotted, the reads of its own state a snapshot
            // makes as the thread ends.
            let reads = crate::snapshot::vcpu::save_ioctls();
            let snapshot: &[u64] = if snapshot_reads { &reads } else { &[] };
            rules.insert(
                libc::SYS_ioctl,
                VCPU_IOCTLS
                    .iter()
                    .chain(snapshot)
                    .map(|&r| rule(vec![equals(1, SeccompCmpArgLen::Dword, r)?]))
                    .collect::<Result<_>>()?,
            );
        }
        ThreadKind::Device => {
            for &nr in DEVICE.iter().chain(DEVICE_X86_64) {
                rules.insert(nr, Vec::new());
            }
            rules.insert(
                libc::SYS_ioctl,
                DEVICE_IOCTLS
                    .iter()
                    .map(|&r| rule(vec![equals(1, SeccompCmpArgLen::Dword, r)?]))
                    .collect::<Result<_>>()?,
            );
            rules.insert(
                libc::SYS_socket,
                vec![rule(vec![equals(
                    0,
                    SeccompCmpArgLen::Dword,
                    libc::AF_UNIX as u64,
                )?])?],
            );
            rules.insert(libc::SYS_openat, open_rules(2, 3)?);
            rules.insert(libc::SYS_mknodat, mknod_rules(2)?);
            rules.insert(libc::SYS_fchmod, no_set_id(1)?);
            rules.insert(libc::SYS_fchmodat, no_set_id(2)?);
            rules.insert(SYS_FCHMODAT2, no_set_id(2)?);
            #[cfg(target_arch = "x86_64")]
            {
                rules.insert(libc::SYS_open, open_rules(1, 2)?);
                rules.insert(libc::SYS_mknod, mknod_rules(1)?);
                rules.insert(libc::SYS_chmod, no_set_id(1)?);
                rules.insert(libc::SYS_creat, no_set_id(1)?);
            }
        }
    }
    Ok(rules)
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram> {
    SeccompFilter::new(rules, mismatch, matched, arch()?)
        .map_err(filter_error)?
        .try_into()
        .map_err(filter_error)
}

/// Whether the "no namespace sandbox" warning was given (once per process).
static SANDBOX_SKIP_WARNED: AtomicBool = AtomicBool::new(false);

/// The seccomp filters of the VMM's threads (see the module documentation) and their namespace
/// sandboxes (`vm/namespace.rs`), built once per VM and applied by each thread to itself.
#[derive(Debug, Clone)]
pub struct ThreadConfinement {
    /// A vCPU thread's namespaces and capabilities.
    vcpu_sandbox: ThreadSandbox,
    /// The device thread's.
    device_sandbox: ThreadSandbox,
    /// `clone3` answers ENOSYS (installed first: for the same action the newest filter's
    /// answer wins, and the allow-lists let `clone3` through to it).
    no_clone3: BpfProgram,
    /// A vCPU thread's allow-list; the rest answers EPERM.
    vcpu: BpfProgram,
    /// The device thread's allow-list; the rest answers EPERM.
    device: BpfProgram,
}

impl ThreadConfinement {
    /// Builds the filters for this architecture, for a VM that is not snapshotted (see
    /// [`Self::for_vm`]).
    pub fn new() -> Result<Self> {
        Self::for_vm(false)
    }

    /// Builds the filters of a VM; `snapshot_reads` (the VM may be saved in a snapshot)
    /// lets its vCPU threads read their own vCPU's state (`KVM_GET_*`), which a VM that can
    /// never be snapshotted does not need.
    pub fn for_vm(snapshot_reads: bool) -> Result<Self> {
        let deny = SeccompAction::Errno(libc::EPERM as u32);
        Ok(ThreadConfinement {
            vcpu_sandbox: ThreadSandbox::vcpu(),
            device_sandbox: ThreadSandbox::device(),
            no_clone3: compile(
                BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
            )?,
            vcpu: compile(
                allow_list(ThreadKind::Vcpu, snapshot_reads)?,
                deny.clone(),
                SeccompAction::Allow,
            )?,
            device: compile(
                allow_list(ThreadKind::Device, false)?,
                deny,
                SeccompAction::Allow,
            )?,
        })
    }

    /// Confines the calling thread as a `kind` thread, fully: its namespace sandbox and
    /// capabilities (`vm/namespace.rs`) first, then [`Self::apply_to_this_thread`]. Without
    /// `CAP_SYS_ADMIN` the namespace steps are skipped with one warning per process and the
    /// rest applies; an error means the thread must not run on.
    pub fn confine_this_thread(&self, kind: ThreadKind) -> Result<Sandboxed> {
        let sandbox = match kind {
            ThreadKind::Vcpu => &self.vcpu_sandbox,
            ThreadKind::Device => &self.device_sandbox,
        };
        let outcome = sandbox.enter()?;
        if let Sandboxed::Skipped(why) = &outcome {
            if !SANDBOX_SKIP_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(reason = %why, "built-in VMM: threads run without their namespace sandbox");
            } else {
                tracing::debug!(reason = %why, ?kind, "built-in VMM: thread without its namespace sandbox");
            }
        }
        self.apply_to_this_thread(kind)?;
        Ok(outcome)
    }

    /// Confines the calling thread (and any thread it would start) as a `kind` thread:
    /// `no_new_privs` and the filters. The process's other threads are untouched.
    pub fn apply_to_this_thread(&self, kind: ThreadKind) -> Result<()> {
        seccompiler::apply_filter(&self.no_clone3).map_err(filter_error)?;
        let list = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Device => &self.device,
        };
        seccompiler::apply_filter(list).map_err(filter_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::process::Command;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// A system call's result with its errno (`(-1, errno)` on failure).
    fn call(r: libc::c_long) -> (libc::c_long, i32) {
        if r < 0 {
            (r, errno())
        } else {
            (r, 0)
        }
    }

    /// Runs `f` on a new thread confined as a `kind` thread.
    fn confined<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        confined_with(ThreadConfinement::new().unwrap(), kind, f)
    }

    /// Runs `f` on a new thread confined by `c` as a `kind` thread.
    fn confined_with<T: Send + 'static>(
        c: ThreadConfinement,
        kind: ThreadKind,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            c.apply_to_this_thread(kind).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn uname() -> (libc::c_long, i32) {
        let mut u = std::mem::MaybeUninit::<libc::utsname>::uninit();
        // SAFETY: uname(2) writes one `utsname` into the buffer it is given.
        call(unsafe { libc::uname(u.as_mut_ptr()) }.into())
    }

    fn socket(domain: libc::c_int) -> (libc::c_long, i32) {
        // SAFETY: socket(2) with integer arguments; a returned descriptor is closed at once.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
        let r = call(fd.into());
        if fd >= 0 {
            // SAFETY: `fd` came from socket(2) above and is closed once.
            unsafe { libc::close(fd) };
        }
        r
    }

    fn mknod(path: &std::path::Path, mode: libc::mode_t, dev: libc::dev_t) -> (libc::c_long, i32) {
        let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mknodat(2) with a NUL-terminated path that outlives the call.
        call(unsafe { libc::mknodat(libc::AT_FDCWD, p.as_ptr(), mode, dev) }.into())
    }

    #[test]
    fn no_thread_kind_can_start_a_program_and_the_rest_of_the_process_can() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Device] {
            let err = confined(kind, || Command::new("/bin/true").status().unwrap_err());
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{kind:?}: {err}");
        }
        assert!(Command::new("/bin/true").status().unwrap().success());
    }

    #[test]
    fn a_call_on_no_list_is_refused_where_the_deny_list_let_it_through() {
        // uname is harmless and was never on the deny-list: only an allow-list refuses it.
        assert_eq!(uname().1, 0);
        for kind in [ThreadKind::Vcpu, ThreadKind::Device] {
            assert_eq!(confined(kind, uname), (-1, libc::EPERM), "{kind:?}");
        }
    }

    #[test]
    fn a_vcpu_thread_opens_nothing_makes_no_socket_and_no_ioctl_but_kvm_run() {
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fd = evt.as_raw_fd();
        let (open, unix, ioctl, kvm_run, signalled, thread) =
            confined(ThreadKind::Vcpu, move || {
                let open = std::fs::File::open("/proc/self/status").map_err(|e| e.raw_os_error());
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int into `n`.
                let ioctl = call(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }.into());
                // KVM_RUN passes the filter and reaches the kernel, which refuses it on an eventfd.
                // SAFETY: KVM_RUN takes no argument; on a non-KVM descriptor the kernel fails it.
                let kvm_run = call(unsafe { libc::ioctl(fd, KVM_RUN as _, 0) }.into());
                // SAFETY: write(2) of 8 bytes from a live u64 to an eventfd.
                let w = unsafe { libc::write(fd, (&1u64 as *const u64).cast(), 8) };
                // An MSI-X vector's held interrupt: read back (pending bit), written again.
                let mut held = 0u64;
                // SAFETY: read(2) of 8 bytes into a live u64 from an eventfd.
                let r = unsafe { libc::read(fd, (&mut held as *mut u64).cast(), 8) };
                // SAFETY: as above.
                let w2 = unsafe { libc::write(fd, (&held as *const u64).cast(), 8) };
                let thread = std::thread::spawn(|| 7).join().unwrap();
                let signalled = w == 8 && r == 8 && held == 1 && w2 == 8;
                (
                    open,
                    socket(libc::AF_UNIX),
                    ioctl,
                    kvm_run,
                    signalled,
                    thread,
                )
            });
        assert_eq!(open.unwrap_err(), Some(libc::EPERM));
        assert_eq!(unix, (-1, libc::EPERM));
        assert_eq!(ioctl, (-1, libc::EPERM));
        assert_eq!(kvm_run.0, -1);
        assert_ne!(kvm_run.1, libc::EPERM, "KVM_RUN must pass the filter");
        assert!(
            signalled,
            "a vCPU thread must still read and write its eventfds"
        );
        assert_eq!(
            thread, 7,
            "threads must still start (clone with CLONE_THREAD)"
        );
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn a_vcpu_thread_may_route_msi_and_set_vfio_irqs_and_no_other_ioctl() {
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fd = evt.as_raw_fd();
        let results = confined(ThreadKind::Vcpu, move || {
            [
                crate::devices::vfio::irq::KVM_SET_GSI_ROUTING,
                crate::devices::vfio::uapi::VFIO_DEVICE_SET_IRQS,
                // VFIO_DEVICE_GET_IRQ_INFO and KVM_IRQFD: made before the threads start.
                0x3b6d,
                0x4020_ae76,
            ]
            .map(|r| {
                // SAFETY: on an eventfd the kernel refuses every one of these requests
                // (ENOTTY) before reading the null argument; the filter answers EPERM first.
                call(unsafe { libc::ioctl(fd, r as _, 0usize) }.into())
            })
        });
        assert_eq!(results[0].0, -1);
        assert_ne!(results[0].1, libc::EPERM, "KVM_SET_GSI_ROUTING must pass");
        assert_ne!(results[1].1, libc::EPERM, "VFIO_DEVICE_SET_IRQS must pass");
        assert_eq!(
            results[2],
            (-1, libc::EPERM),
            "VFIO_DEVICE_GET_IRQ_INFO passed"
        );
        assert_eq!(results[3], (-1, libc::EPERM), "KVM_IRQFD passed");
    }

    #[test]
    fn a_vcpu_thread_may_read_its_state_for_a_snapshot_and_not_write_it() {
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fd = evt.as_raw_fd();
        let reads = crate::snapshot::vcpu::save_ioctls();
        // A VM that can never be snapshotted: its vCPU threads may not read their state.
        let without = confined(ThreadKind::Vcpu, move || {
            // SAFETY: as below.
            reads.map(|r| call(unsafe { libc::ioctl(fd, r as _, 0usize) }.into()))
        });
        for (i, r) in without.iter().enumerate() {
            assert_eq!(
                *r,
                (-1, libc::EPERM),
                "snapshot read {i} passed without snapshots"
            );
        }
        let c = ThreadConfinement::for_vm(true).unwrap();
        let (read, set_regs) = confined_with(c, ThreadKind::Vcpu, move || {
            // SAFETY: on an eventfd the kernel refuses every one of these requests (ENOTTY)
            // before reading the null argument; the filter answers EPERM first.
            let read = reads.map(|r| call(unsafe { libc::ioctl(fd, r as _, 0usize) }.into()));
            // KVM_SET_REGS: _IOW(KVMIO, 0x82, struct kvm_regs), 144 bytes.
            // SAFETY: as above.
            let set = call(unsafe { libc::ioctl(fd, 0x4090_ae82u64 as _, 0usize) }.into());
            (read, set)
        });
        for (i, r) in read.iter().enumerate() {
            assert_ne!(r.1, libc::EPERM, "snapshot read {i} must pass the filter");
        }
        assert_eq!(set_regs, (-1, libc::EPERM), "KVM_SET_REGS passed");
    }

    #[test]
    fn a_vcpu_thread_reads_and_writes_an_open_vfio_region_at_offsets_only() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&0x0100_00edu32.to_le_bytes(), 0x1000)
            .unwrap();
        let (read, wrote, open) = confined(ThreadKind::Vcpu, move || {
            let mut id = [0u8; 4];
            let read = f
                .read_exact_at(&mut id, 0x1000)
                .map(|_| u32::from_le_bytes(id));
            let wrote = f.write_all_at(&5u32.to_le_bytes(), 0x1008);
            let open = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| e.raw_os_error());
            (
                read.map_err(|e| e.raw_os_error()),
                wrote.map_err(|e| e.raw_os_error()),
                open,
            )
        });
        assert_eq!(read, Ok(0x0100_00ed), "pread64 on an open region");
        assert_eq!(wrote, Ok(()), "pwrite64 on an open region");
        assert_eq!(open.unwrap_err(), Some(libc::EPERM), "still opens nothing");
    }

    #[test]
    fn the_device_thread_keeps_unix_sockets_and_files_but_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let (unix, inet, netlink, files, fifo) = confined(ThreadKind::Device, move || {
            // SAFETY: as in `socket`.
            let netlink = call(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) }.into());
            let files = (|| -> std::io::Result<String> {
                std::fs::create_dir(d.join("sub"))?;
                std::fs::write(d.join("sub/f"), b"data")?;
                std::fs::rename(d.join("sub/f"), d.join("g"))?;
                let names: Vec<_> = std::fs::read_dir(&d)?.collect::<std::io::Result<_>>()?;
                std::fs::remove_dir(d.join("sub"))?;
                let s = std::fs::read_to_string(d.join("g"))?;
                std::fs::remove_file(d.join("g"))?;
                Ok(format!("{s} {}", names.len()))
            })();
            let fifo = mknod(&d.join("fifo"), libc::S_IFIFO | 0o600, 0);
            (
                socket(libc::AF_UNIX),
                socket(libc::AF_INET),
                netlink,
                files,
                fifo,
            )
        });
        assert_eq!(unix.1, 0, "a unix socket was refused");
        assert_eq!(inet, (-1, libc::EPERM));
        assert_eq!(netlink, (-1, libc::EPERM));
        assert_eq!(files.unwrap(), "data 2");
        assert_eq!(fifo, (0, 0));
    }

    #[test]
    fn the_device_thread_makes_no_device_node_and_no_set_id_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(d.join("plain"), b"").unwrap();
        let (chr, suid_create, suid_chmod, gid_mknod, plain_chmod) =
            confined(ThreadKind::Device, move || {
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                let chr = mknod(&d.join("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3));
                let suid_create = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o4755)
                    .open(d.join("suid"))
                    .map(|_| ())
                    .map_err(|e| e.raw_os_error());
                let chmod = |mode| {
                    std::fs::set_permissions(d.join("plain"), std::fs::Permissions::from_mode(mode))
                        .map_err(|e| e.raw_os_error())
                };
                let gid_mknod = mknod(&d.join("sgid"), libc::S_IFREG | libc::S_ISGID | 0o755, 0);
                (chr, suid_create, chmod(0o4755), gid_mknod, chmod(0o755))
            });
        assert_eq!(chr, (-1, libc::EPERM), "a character device was made");
        assert_eq!(suid_create, Err(Some(libc::EPERM)));
        assert_eq!(suid_chmod, Err(Some(libc::EPERM)));
        assert_eq!(gid_mknod, (-1, libc::EPERM));
        assert_eq!(plain_chmod, Ok(()));
        assert!(!dir.path().join("null").exists() && !dir.path().join("suid").exists());
    }

    #[test]
    fn no_thread_kind_can_unshare_load_bpf_or_open_by_handle() {
        let bpf = |cmd: libc::c_long| {
            // SAFETY: bpf(2) with an unknown command and no attribute pointer: the kernel
            // answers EINVAL (or EPERM when filtered) without reading memory.
            call(unsafe { libc::syscall(libc::SYS_bpf, cmd, 0usize, 0usize) })
        };
        // Unconfined, the same call reaches the kernel (not EPERM).
        assert_ne!(bpf(-1), (-1, libc::EPERM));
        for kind in [ThreadKind::Vcpu, ThreadKind::Device] {
            let (unshare, filtered, by_handle) = confined(kind, move || {
                // SAFETY: unshare(2) with a flag; refused by the filter before it acts (it
                // would only move this short-lived thread into a new UTS namespace otherwise).
                let u = call(unsafe { libc::unshare(libc::CLONE_NEWUTS) }.into());
                // SAFETY: open_by_handle_at(2) with a null handle: refused by the filter before
                // the kernel reads it (EFAULT otherwise).
                let h = call(unsafe {
                    libc::syscall(libc::SYS_open_by_handle_at, libc::AT_FDCWD, 0usize, 0)
                });
                (u, bpf(-1), h)
            });
            assert_eq!(unshare, (-1, libc::EPERM), "{kind:?}");
            assert_eq!(filtered, (-1, libc::EPERM), "{kind:?}");
            assert_eq!(by_handle, (-1, libc::EPERM), "{kind:?}");
        }
    }

    #[test]
    fn the_device_thread_gives_unplugged_memory_back_and_a_vcpu_thread_cannot() {
        // virtio-mem's unplug: fallocate(PUNCH_HOLE) on the guest's memfd (no new syscall).
        let punch = |file: &std::fs::File| {
            // SAFETY: fallocate(2) on an open descriptor with integer arguments.
            call(
                unsafe {
                    libc::fallocate(
                        file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        0,
                        2 << 20,
                    )
                }
                .into(),
            )
        };
        let memfd = crate::memory::GuestRam::new("confine-hotplug", 64)
            .unwrap()
            .memfd()
            .try_clone()
            .unwrap();
        let f = memfd.try_clone().unwrap();
        assert_eq!(confined(ThreadKind::Device, move || punch(&f)), (0, 0));
        assert_eq!(
            confined(ThreadKind::Vcpu, move || punch(&memfd)),
            (-1, libc::EPERM)
        );
    }
}
