//! The crate's error type.

use std::path::PathBuf;

/// Errors from preparing, starting, driving or stopping a VM.
#[derive(Debug, thiserror::Error)]
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
