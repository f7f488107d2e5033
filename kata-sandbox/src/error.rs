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
    /// The sandbox died on its own (its VM exited, or its agent stopped answering health
    /// checks); it has been torn down. Its containers and processes are gone: start a new
    /// sandbox.
    #[error("the sandbox died: {reason}; it was torn down (start a new one)")]
    SandboxDead {
        /// What happened (how the VM exited, or the failed health checks).
        reason: String,
    },
    /// A process wrote more to one stream than [`Process::output`](crate::Process::output)
    /// collects; it was killed.
    #[error("{stream} of process {exec_id} passed the output limit of {limit} bytes: the process was killed (read its streams yourself, or raise the limit with `output_limit`)")]
    OutputTooLarge {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The process (exec id; the container id for a container's first process).
        exec_id: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// An OCI hook of a container's spec failed, or a kind of hook this build cannot run was
    /// given (`hooks.createContainer`, `hooks.startContainer`).
    #[error("{kind}: {reason}")]
    Hook {
        /// The hook, as a spec path (`hooks.prestart[0]`, `hooks.createContainer`).
        kind: String,
        /// What went wrong (exit status, timeout, its stderr) or why it is refused.
        reason: String,
    },
    /// The sandbox's runtime handler cannot do this: exec into a WebAssembly module, detach
    /// a sandbox whose workloads run in this process, ...
    #[error("the {handler} runtime handler does not implement {operation}: {reason}")]
    Unimplemented {
        /// The handler (`wasm_container`, ...).
        handler: crate::RuntimeHandlerKind,
        /// What was asked (`exec`, `detach`, ...).
        operation: &'static str,
        /// Why it cannot, and what to do instead.
        reason: String,
    },
    /// The sandbox offers no debug console.
    #[error("sandbox `{sandbox_id}` offers no debug console ({detail}): start it with `[agent.kata] debug_console_enabled = true` (a root shell in the guest; off by default)")]
    DebugConsoleDisabled {
        /// The sandbox.
        sandbox_id: String,
        /// Why: started without it, or the guest did not answer on the console's port.
        detail: String,
    },
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
