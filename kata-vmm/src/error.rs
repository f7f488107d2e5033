//! The crate's error type: each variant names the failing thing, the cause and the fix.

use std::path::PathBuf;

/// A `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that stops a VM from being built or a device from being set up.
///
/// Errors a guest causes at run time (a malformed descriptor chain) are not here: a device
/// answers those to the guest with an error status, they never end the VMM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest memory size cannot hold a kernel.
    #[error(
        "guest memory of {size_mib} MiB is too small: the built-in VMM needs at least {min_mib} MiB \
         (raise default_memory in [hypervisor.dragonball])"
    )]
    MemoryTooSmall {
        /// The size asked for, in MiB.
        size_mib: u64,
        /// The least size accepted, in MiB.
        min_mib: u64,
    },
    /// The guest memory size is not a whole number of pages, or does not fit the address space.
    #[error("guest memory size of {size} bytes is invalid: {reason}")]
    MemorySize {
        /// The size asked for, in bytes.
        size: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Creating or mapping the memfd that backs guest memory failed.
    #[error("cannot set up guest memory ({what}): {source}")]
    Memory {
        /// The step that failed.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// vm-memory refused the regions.
    #[error("cannot map guest memory: {0}")]
    MemoryMap(String),
    /// A kernel, initramfs or disk file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// What the file is (kernel, initramfs, disk image).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is neither a bzImage nor an ELF vmlinux.
    #[error(
        "kernel {path} is neither a bzImage nor an ELF vmlinux (first bytes {magic}): \
         set [hypervisor.dragonball] kernel to a Linux x86_64 kernel image"
    )]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// Its first bytes, in hex, for the log.
        magic: String,
    },
    /// linux-loader refused the kernel (it looked like a kernel, but did not load).
    #[error("cannot load kernel {path}: {reason} (is guest memory large enough for it?)")]
    KernelLoad {
        /// The file.
        path: PathBuf,
        /// linux-loader's reason.
        reason: String,
    },
    /// The initramfs does not fit between the kernel and the top of low memory.
    #[error(
        "initramfs {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the \
         kernel ending at {kernel_end:#x}: raise the guest memory size or shrink the initramfs"
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The kernel's last byte.
        kernel_end: u64,
        /// The highest address the initramfs may reach.
        limit: u64,
    },
    /// The kernel command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot data (zero page, command line, page tables) into guest memory failed.
    #[error("cannot write {what} into guest memory: {reason}")]
    BootSetup {
        /// What was written.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A device could not be set up from its configuration.
    #[error("{device}: {reason}")]
    Device {
        /// The device (e.g. `virtio-blk /path/disk.img`).
        device: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// A host socket or file of a device failed.
    #[error("{device}: {what}: {source}")]
    DeviceIo {
        /// The device.
        device: String,
        /// The step that failed.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A KVM ioctl failed while a vCPU or the VM was being set up.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// The ioctl or step that failed.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// The seccomp filter of the VMM's threads could not be built or installed.
    #[error(
        "cannot confine the VMM's threads with seccomp: {0} (the kernel needs CONFIG_SECCOMP_FILTER)"
    )]
    Confinement(String),
    /// A VMM thread's namespace sandbox failed half-way (`vm/namespace.rs`): its root changed,
    /// a later step did not, and it must not run on.
    #[error("cannot put a VMM thread in its own namespaces: {0}")]
    Sandbox(String),
}
