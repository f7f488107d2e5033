//! The crate's error type.

use std::time::Duration;

/// Errors from building a sandbox or running containers in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder value or container spec field is invalid. Nothing was started.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field (builder method or spec path, e.g. `vcpus`, `process.args`).
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A container or process id is already in use in this sandbox.
    #[error("{kind} `{id}` already exists in this sandbox")]
    AlreadyExists {
        /// `container`, `exec` or `sandbox`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// No container or process with this id.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// `container` or `exec`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// The VM exited while the sandbox was starting or running.
    #[error("the VM exited ({how}){}", kata_hypervisor::console::format_tail(.console))]
    VmExited {
        /// How the VMM exited.
        how: String,
        /// The last guest console lines.
        console: Vec<String>,
    },
    /// The agent did not answer within the timeout; the VM was stopped.
    #[error("the guest agent did not answer within {after:?} ({detail}); the VM was stopped{}", kata_hypervisor::console::format_tail(.console))]
    AgentTimeout {
        /// How long it waited.
        after: Duration,
        /// The last connection error.
        detail: String,
        /// The last guest console lines.
        console: Vec<String>,
    },
    /// An error from the hypervisor layer.
    #[error(transparent)]
    Hypervisor(#[from] kata_hypervisor::Error),
    /// An error from the agent (its ttRPC status is kept).
    #[error(transparent)]
    Agent(#[from] kata_agent_client::Error),
    /// An error from host resources (rootfs, shared filesystem, images).
    #[error(transparent)]
    Resource(#[from] kata_resource::Error),
    /// A configuration file problem.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong (with line and column for syntax errors).
        reason: String,
    },
    /// A persisted `state.json` is truncated, corrupt or of another format version.
    #[error("sandbox state {path} is unreadable: {reason}")]
    CorruptState {
        /// The file.
        path: std::path::PathBuf,
        /// The parse error.
        reason: String,
    },
    /// The sandbox has been shut down.
    #[error("the sandbox is shut down")]
    ShutDown,
    /// An I/O error, with what was being done.
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
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
