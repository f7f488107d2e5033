//! How errors reach containerd: each one becomes a ttRPC status whose code containerd maps to
//! its `errdefs` (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, ...), with a
//! message naming the failing thing, which `ctr` prints.

use containerd_shim::protos::ttrpc::{self, Code};

/// Errors of the shim's own steps (bundle, IO, configuration), before or around a
/// kata-sandbox call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bundle's `config.json` is missing or invalid.
    #[error("invalid bundle {bundle}: {reason}")]
    InvalidBundle {
        /// The bundle directory.
        bundle: String,
        /// What is wrong.
        reason: String,
    },
    /// A request field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No task or process with this id.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `task`, `exec` or `sandbox`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// A task or exec with this id exists already.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// `task` or `exec`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// The call is not valid in the current state (e.g. deleting a running task).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Containerd's stdio (fifos, log URIs) could not be opened.
    #[error("stdio {uri}: {source}")]
    Io {
        /// The fifo path or URI.
        uri: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or unmounting the container rootfs failed.
    #[error("rootfs {target}: {reason}")]
    Rootfs {
        /// The mount point.
        target: String,
        /// What failed.
        reason: String,
    },
    /// An error from the sandbox library.
    #[error(transparent)]
    Sandbox(#[from] kata_sandbox::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The ttRPC code containerd turns into its error kinds.
    pub fn code(&self) -> Code {
        use kata_sandbox::Error as S;
        match self {
            Error::InvalidBundle { .. } | Error::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            Error::NotFound { .. } => Code::NOT_FOUND,
            Error::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Io { .. } | Error::Rootfs { .. } => Code::INTERNAL,
            Error::Sandbox(e) => match e {
                S::InvalidArgument { .. } | S::Config { .. } => Code::INVALID_ARGUMENT,
                S::NotFound { .. } => Code::NOT_FOUND,
                S::AlreadyExists { .. } => Code::ALREADY_EXISTS,
                S::ShutDown => Code::FAILED_PRECONDITION,
                S::Unimplemented { .. } => Code::UNIMPLEMENTED,
                // Kata's agent answers INVALID_ARGUMENT or INTERNAL; containerd wants NOT_FOUND.
                S::Agent(a) if a.is_unknown_container() => Code::NOT_FOUND,
                S::Agent(a) => match a.code() {
                    Some(c) => c,
                    None => Code::UNAVAILABLE,
                },
                _ => Code::UNKNOWN,
            },
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_containerd_errdefs() {
        let e = Error::from(kata_sandbox::Error::NotFound {
            kind: "container",
            id: "x".into(),
        });
        assert_eq!(e.code(), Code::NOT_FOUND);
        let e = Error::AlreadyExists {
            kind: "task",
            id: "x".into(),
        };
        assert_eq!(e.code(), Code::ALREADY_EXISTS);
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::ALREADY_EXISTS);
                assert_eq!(s.message(), "task x already exists");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_container_the_agent_does_not_know_is_not_found_whichever_agent_says_so() {
        for (code, message) in [
            (Code::NOT_FOUND, "container c not found"),
            (Code::INVALID_ARGUMENT, "InvalidContainerId"),
            (Code::INTERNAL, "Invalid container id"),
        ] {
            let e = Error::from(kata_sandbox::Error::Agent(kata_agent_client::Error::Rpc {
                method: "SignalProcess",
                code,
                message: message.into(),
            }));
            assert_eq!(e.code(), Code::NOT_FOUND, "{message}");
        }
        let e = Error::from(kata_sandbox::Error::Agent(kata_agent_client::Error::Rpc {
            method: "StartContainer",
            code: Code::INTERNAL,
            message: "mount failed".into(),
        }));
        assert_eq!(e.code(), Code::INTERNAL);
    }

    #[test]
    fn what_a_runtime_handler_cannot_do_is_unimplemented() {
        let e = Error::from(kata_sandbox::Error::Unimplemented {
            handler: kata_sandbox::RuntimeHandlerKind::WasmContainer,
            operation: "exec",
            reason: "a module is one process".into(),
        });
        assert_eq!(e.code(), Code::UNIMPLEMENTED);
    }
}
