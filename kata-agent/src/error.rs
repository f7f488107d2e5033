//! The agent's error type and its mapping onto ttRPC status codes.
//!
//! Every failure a request can hit is one [`AgentError`] variant; [`AgentError::code`] decides
//! which ttRPC code the host sees (`NOT_FOUND`, `ALREADY_EXISTS`, `INVALID_ARGUMENT`, ...), and
//! the message always names the thing that failed (the container or exec id, the spec field,
//! the path).

use std::io;

/// Result alias used throughout the agent.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No container with this id exists in the sandbox. `INVALID_ARGUMENT` ("invalid
    /// container id"), as Kata's agent answers most calls; `INTERNAL` for the calls where
    /// Kata's does (see [`crate::service::codes`]).
    #[error("invalid container id {0}: no container with this id in the sandbox")]
    ContainerNotFound(String),

    /// The container exists but has no process with this exec id.
    #[error("exec {exec_id} not found in container {container_id}")]
    ExecNotFound {
        /// The container that was searched.
        container_id: String,
        /// The exec id that was asked for.
        exec_id: String,
    },

    /// A container with this id already exists.
    #[error("container {0} already exists")]
    ContainerExists(String),

    /// An exec with this id already exists in the container.
    #[error("exec {exec_id} already exists in container {container_id}")]
    ExecExists {
        /// The container the exec was asked for.
        container_id: String,
        /// The duplicate exec id.
        exec_id: String,
    },

    /// A request field (usually a field of the OCI spec) is missing or wrong.
    /// Displays as `<field> <reason>`, e.g. `process.args is empty`.
    #[error("{field} {reason}")]
    InvalidArgument {
        /// Dotted path of the offending field, e.g. `root.path` or `mounts[2].type`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The request is valid but the object is in the wrong state for it
    /// (starting a running container, exec into a stopped one, ...).
    #[error("{0}")]
    FailedPrecondition(String),

    /// CreateSandbox was already called.
    #[error("sandbox {0} already exists")]
    SandboxExists(String),

    /// An output stream reached its end. The message contains "eof", which is how Kata's agent
    /// ends ReadStdout/ReadStderr and what the hosts (Kata's and kata-rs's) look for.
    #[error("read meet eof: {stream} of exec {exec_id} in container {container_id} has ended")]
    Eof {
        /// The container.
        container_id: String,
        /// The process.
        exec_id: String,
        /// `stdout` or `stderr`.
        stream: &'static str,
    },

    /// No network interface of the guest matches what a request names (UpdateInterface's
    /// MAC address or name).
    #[error("no network interface of the guest has {wanted} (it has: {present}): is the device attached and its driver in the guest kernel?")]
    LinkNotFound {
        /// What was looked for: `MAC address 02:..`, `the name "eth1"`.
        wanted: String,
        /// The interfaces the guest has, with their MAC addresses.
        present: String,
    },

    /// The method is part of Kata's protocol but this agent does not implement it.
    #[error("{0} is not implemented by kata-agent")]
    Unimplemented(String),

    /// A step of preparing or starting a container's process failed.
    #[error("container {container_id}: {message}")]
    ContainerSetup {
        /// The container (or `container/exec`) whose setup failed.
        container_id: String,
        /// What failed, as reported by the container's init helper.
        message: String,
    },

    /// Waiting for something took longer than allowed.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it waited.
        seconds: u64,
    },

    /// TtyWinResize of a process that has no terminal. `UNAVAILABLE`, as Kata's agent answers
    /// it ("no tty").
    #[error("exec {exec_id} in container {container_id} has no terminal (no tty): only a process created with terminal: true can be resized")]
    NoTerminal {
        /// The container.
        container_id: String,
        /// The process.
        exec_id: String,
    },

    /// A CopyFile request the agent will not carry out (a destination outside the shared
    /// directory, a bad offset). `INTERNAL`, as Kata's agent answers it.
    #[error("CopyFile {path:?} refused: {reason}")]
    CopyFileRefused {
        /// The destination the host asked for.
        path: String,
        /// Why, and what is allowed.
        reason: String,
    },

    /// A storage names a driver this agent has no handler for. `INTERNAL` with Kata's
    /// message ("Failed to find the storage handler X"), as Kata's agent answers it.
    #[error("Failed to find the storage handler {driver} ({field}.driver): kata-agent handles {known}{hint}")]
    UnknownStorageDriver {
        /// The storage's field, e.g. `storages[0]`.
        field: String,
        /// The driver asked for.
        driver: String,
        /// The drivers this agent handles.
        known: String,
        /// Kata's name for a former alias, or empty.
        hint: String,
    },

    /// A kernel module of CreateSandbox could not be loaded (`modprobe` failed).
    /// `INTERNAL`, as Kata's agent answers it.
    #[error("kernel module {module:?}: {reason}")]
    KernelModule {
        /// The module's name.
        module: String,
        /// What modprobe said, or why it did not run.
        reason: String,
    },

    /// A call Kata's agent answers `INTERNAL` when it fails could not be carried out (a tool
    /// it runs failed, a swap disk is not a PCI path, a feature is not there).
    #[error("{method}: {reason}")]
    Failed {
        /// The method, e.g. `SetIPTables`.
        method: &'static str,
        /// What failed and why, naming the object.
        reason: String,
    },

    /// A bug: something that cannot happen did (a request handler panicked).
    #[error("internal error: {0}")]
    Internal(String),

    /// An I/O operation on a named object failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path or object.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl AgentError {
    /// An [`AgentError::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AgentError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An [`AgentError::Io`] from an `io::Error` with a context naming the failing object.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`AgentError::Io`] from an errno (as returned by `nix`).
    pub fn sys(context: impl Into<String>, errno: nix::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }

    /// The ttRPC status code this error is reported with.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            AgentError::ContainerNotFound(_) => Code::INVALID_ARGUMENT,
            AgentError::ExecNotFound { .. } | AgentError::LinkNotFound { .. } => Code::NOT_FOUND,
            AgentError::ContainerExists(_)
            | AgentError::ExecExists { .. }
            | AgentError::SandboxExists(_) => Code::ALREADY_EXISTS,
            AgentError::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Unimplemented(_) => Code::UNIMPLEMENTED,
            AgentError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
            AgentError::NoTerminal { .. } => Code::UNAVAILABLE,
            AgentError::ContainerSetup { .. }
            | AgentError::CopyFileRefused { .. }
            | AgentError::KernelModule { .. }
            | AgentError::UnknownStorageDriver { .. }
            | AgentError::Failed { .. }
            | AgentError::Io { .. }
            | AgentError::Eof { .. }
            | AgentError::Internal(_) => Code::INTERNAL,
        }
    }

    /// The ttRPC status the host receives for this error.
    pub fn to_status(&self) -> ttrpc::Status {
        ttrpc::get_status(self.code(), self.to_string())
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(e.to_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    #[test]
    fn codes_match_kata_semantics() {
        let cases = [
            (
                AgentError::ContainerNotFound("c1".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                AgentError::ExecNotFound {
                    container_id: "c1".into(),
                    exec_id: "e1".into(),
                },
                Code::NOT_FOUND,
            ),
            (
                AgentError::ContainerExists("c1".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                AgentError::invalid("process.args", "is empty"),
                Code::INVALID_ARGUMENT,
            ),
            (
                AgentError::Unimplemented("grpc.AgentService/PauseContainer".into()),
                Code::UNIMPLEMENTED,
            ),
            (
                AgentError::io("mount /x", io::Error::other("boom")),
                Code::INTERNAL,
            ),
            (
                AgentError::NoTerminal {
                    container_id: "c1".into(),
                    exec_id: "e1".into(),
                },
                Code::UNAVAILABLE,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn messages_name_the_failing_thing() {
        assert_eq!(
            AgentError::invalid("process.args", "is empty").to_string(),
            "process.args is empty"
        );
        assert_eq!(
            AgentError::ExecNotFound {
                container_id: "c1".into(),
                exec_id: "e9".into()
            }
            .to_string(),
            "exec e9 not found in container c1"
        );
        let status = AgentError::ContainerNotFound("abc".into()).to_status();
        assert_eq!(status.code(), Code::INVALID_ARGUMENT);
        assert!(status.message().contains("abc"));
        assert!(status.message().starts_with("invalid container id"));
    }

    #[test]
    fn converts_into_ttrpc_rpc_status() {
        let e: ttrpc::Error = AgentError::ContainerExists("dup".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::ALREADY_EXISTS);
                assert_eq!(s.message(), "container dup already exists");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
