//! The crate's error type.

use std::path::PathBuf;

/// Errors from preparing, starting, driving or stopping a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid hypervisor configuration: {key} = {value}: {reason}")]
    InvalidConfig {
        /// The Kata configuration key (e.g. `default_vcpus`).
        key: &'static str,
        /// The offending value, as text.
        value: String,
        /// What is allowed, or how to fix it.
        reason: String,
    },
    /// A file the VM needs (kernel, initrd, image) does not exist.
    #[error("{what} not found at {path}: {hint}")]
    MissingFile {
        /// What the file is ("guest kernel", "guest initrd", ...).
        what: &'static str,
        /// The path that was looked up.
        path: PathBuf,
        /// How to get it (e.g. "run `make guest`").
        hint: String,
    },
    /// The guest image (`image`) is not an image the guest can boot from.
    #[error("guest image {path} cannot be booted: {reason}; {fix}")]
    BadGuestImage {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// How to get a good one.
        fix: String,
    },
    /// An external program (QEMU, a vhost-user backend) is not installed.
    #[error("{program} not found (looked in {searched}); install it with: {install}")]
    MissingProgram {
        /// The program's name.
        program: String,
        /// Where it was looked for.
        searched: String,
        /// The command or package that provides it.
        install: String,
    },
    /// The VMM process could not be started or exited during start-up.
    #[error("{vmm} failed to start: {reason}{}", crate::console::format_tail(.console))]
    StartFailed {
        /// Which VMM ("qemu", "vhost-device-vsock", ...).
        vmm: String,
        /// What went wrong.
        reason: String,
        /// The last lines of the guest console, if any.
        console: Vec<String>,
    },
    /// The operation needs a VM that is running.
    #[error("VM is not running (state: {0})")]
    NotRunning(String),
    /// The backend does not support this operation or device.
    #[error("{backend} does not support {what}")]
    Unsupported {
        /// The backend name.
        backend: &'static str,
        /// The unsupported operation or device.
        what: String,
    },
    /// A QMP command failed or the QMP connection broke.
    #[error("QMP {command}: {reason}")]
    Qmp {
        /// The QMP command (e.g. `device_add`).
        command: String,
        /// QEMU's error description or the I/O failure.
        reason: String,
    },
    /// A running process could not be adopted (a restarted runtime reconnecting to its VM).
    #[error("cannot adopt {what} (pid {pid}): {reason}")]
    Adopt {
        /// What the process was meant to be (`qemu`, `vhost-device-vsock`).
        what: String,
        /// The pid from the saved state.
        pid: u32,
        /// Why not: gone, or another program now holds the pid.
        reason: String,
    },
    /// A device cannot be given to the VM as it is described.
    #[error("{kind} device `{id}`: {reason}")]
    InvalidDevice {
        /// The kind of device, in words (`network`, `block`, ...).
        kind: &'static str,
        /// The device's id and what names it on the host (`net0 (tap tap0_kata)`).
        id: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Every PCIe port of the kind a device needs is held by another device.
    #[error("no free {port} for device `{device}`: all {capacity} are in use; {hint}")]
    NoFreePort {
        /// The device that needed a port.
        device: String,
        /// The kind of port (`root-port`, ...).
        port: crate::device::PciePort,
        /// How many ports of the kind the VM has.
        capacity: u32,
        /// How to get more (`raise pcie_root_port`).
        hint: String,
    },
    /// No backend for this hypervisor type is built into this binary.
    #[error("[hypervisor.{kind}]: the {kind} backend is not built in; enable the `{feature}` cargo feature of kata-hypervisor (or of the crate that uses it)")]
    BackendNotBuilt {
        /// The configured type.
        kind: crate::config::HypervisorType,
        /// The cargo feature that adds its backend.
        feature: &'static str,
    },
    /// kata-rs has no backend for this hypervisor type yet.
    #[error("[hypervisor.{kind}]: kata-rs cannot start a {kind} VM yet; use [hypervisor.qemu] (config/configuration-qemu-runtime-rs.toml)")]
    BackendNotImplemented {
        /// The configured type.
        kind: crate::config::HypervisorType,
    },
    /// The saved state belongs to another backend, or to an older format without the
    /// backend's own state.
    #[error("cannot restore the {backend} VM in {vm_dir}: {reason}")]
    BadState {
        /// The backend the state names.
        backend: crate::config::HypervisorType,
        /// The VM directory the state names.
        vm_dir: PathBuf,
        /// What is wrong, and what to do (usually: clean it up).
        reason: String,
    },
    /// The VM exited before its agent answered.
    #[error("the VM exited ({how}){}", crate::console::format_tail(.console))]
    VmExited {
        /// How the VMM exited.
        how: String,
        /// The last lines of the guest console.
        console: Vec<String>,
    },
    /// The VM runs, but its agent's port did not answer in time.
    #[error("the guest agent did not answer within {after:?} ({detail}){}", crate::console::format_tail(.console))]
    AgentNotReady {
        /// How long it was waited for.
        after: std::time::Duration,
        /// The last dial error, and what was tried (`the VM was booted 3 times`).
        detail: String,
        /// The last lines of the guest console.
        console: Vec<String>,
    },
    /// A setting the backend does not implement and will not ignore (`rootless`,
    /// `confidential_guest`, `guest_hook_path`, ...).
    #[error("[hypervisor.{backend}] {key} = {value}: {reason}")]
    NotImplemented {
        /// The backend that refuses it.
        backend: crate::config::HypervisorType,
        /// The key (`factory.<key>` for the factory table).
        key: String,
        /// The value, as TOML writes it.
        value: String,
        /// Why it is refused, and what to set instead.
        reason: String,
    },
    /// A resize asked for more vCPUs or memory than the VM was started to take.
    #[error("cannot grow the VM's {what} to {requested}: {key} bounds it at {limit}; {fix}")]
    ResizeBeyond {
        /// What was resized (`vCPUs`, `memory`).
        what: &'static str,
        /// What was asked for, with its unit.
        requested: String,
        /// The configuration key that bounds it (`default_maxvcpus`, `memory_slots`, ...).
        key: &'static str,
        /// The bound, with its unit.
        limit: String,
        /// How to get more.
        fix: String,
    },
    /// A timeout expired.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// An I/O error, with the thing it concerned.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
