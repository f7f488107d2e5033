//! The crate's error type: what went wrong talking to the guest agent.
//!
//! Every variant names the failing thing (the address, the method, the spec
//! field) and keeps what the other side said, so a log line is enough to act.

use std::path::PathBuf;
use std::time::Duration;

/// The ttRPC status code an agent answers with (`ttrpc::Code`).
pub use ttrpc::Code;

/// A specialized `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the agent client, its address parser and the spec conversion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An agent address string could not be parsed.
    #[error("invalid agent address {address:?}: {reason}")]
    InvalidAddress {
        /// The string as given.
        address: String,
        /// Which part is wrong and why.
        reason: String,
    },

    /// One connection attempt failed at the socket level.
    #[error("{action}: {source}")]
    Io {
        /// What was being done ("connecting to unix socket /run/vsock.uds").
        action: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A hybrid-vsock backend did not accept `CONNECT <port>`.
    #[error(
        "hybrid vsock handshake on {uds} for port {port} failed: expected \"OK <n>\", the backend answered {answer:?}"
    )]
    Handshake {
        /// The backend's unix socket.
        uds: PathBuf,
        /// The guest port asked for.
        port: u32,
        /// What the backend sent back (lossy UTF-8, at most one line);
        /// empty when it closed the connection without answering.
        answer: String,
    },

    /// The agent could not be reached before the dial timeout ran out.
    #[error("could not connect to the agent at {address} after waiting {waited:?}: {last_error}")]
    Connect {
        /// The address dialed (as `AgentAddress` displays it).
        address: String,
        /// How long the client kept trying.
        waited: Duration,
        /// The error of the last attempt.
        #[source]
        last_error: Box<Error>,
    },

    /// An agent call got no answer in time.
    #[error("agent call {method} timed out after {timeout:?}")]
    Timeout {
        /// The protocol method name ("CreateContainer").
        method: &'static str,
        /// The timeout that ran out.
        timeout: Duration,
    },

    /// The agent answered a call with an error status.
    #[error("agent call {method} failed with {code:?}: {message}")]
    Rpc {
        /// The protocol method name.
        method: &'static str,
        /// The ttRPC status code.
        code: Code,
        /// The agent's message.
        message: String,
    },

    /// A call failed below the protocol: the connection closed, a frame could
    /// not be encoded or decoded.
    #[error("agent call {method} failed: {source}")]
    Transport {
        /// The protocol method name.
        method: &'static str,
        /// ttRPC's error.
        #[source]
        source: ttrpc::Error,
    },

    /// A spec could not be converted between `oci_spec` and the protocol.
    #[error("invalid OCI spec: {field}: {reason}")]
    InvalidSpec {
        /// The spec field, as a path (`process.rlimits[2].type`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A value is not a signal the guest knows.
    #[error(
        "{value:?} is not a signal: give a number 1..=64 (real-time signals included) or a name such as SIGTERM"
    )]
    InvalidSignal {
        /// The value as given.
        value: String,
    },

    /// A network value (an IP address or prefix, a MAC address, a route, an interface, an
    /// ARP neighbour) is malformed or inconsistent.
    #[error("{field} {reason}")]
    InvalidNetwork {
        /// What it is, as a path (`interface.IPAddresses[1].mask`, `routes[0].gateway`).
        field: String,
        /// What is wrong with it and what is expected.
        reason: String,
    },

    /// The agent answered with something the client cannot make sense of.
    #[error("agent call {method} answered something unusable: {reason}")]
    BadAnswer {
        /// The protocol method name.
        method: &'static str,
        /// What is wrong with the answer.
        reason: String,
    },

    /// The agent answered the health check, but does not serve requests.
    #[error("the agent answered the health check with {status}: it does not serve requests")]
    NotServing {
        /// The status it answered (`NOT_SERVING`, `UNKNOWN`, ...).
        status: String,
    },
}

impl Error {
    /// The ttRPC status code, when the agent answered with an error status.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The agent's error message, when it answered with an error status.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Rpc { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The agent answered `NOT_FOUND` (an unknown container or exec id, or a
    /// method the agent does not implement).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NOT_FOUND)
    }

    /// The agent does not know the container the call named: `NOT_FOUND` (kata-rs's agents
    /// before they answered as Kata's), or Kata's answers — `INVALID_ARGUMENT` or `INTERNAL`
    /// with "invalid container id" (any case, `InvalidContainerId` included) in the message.
    pub fn is_unknown_container(&self) -> bool {
        match self {
            Error::Rpc { code, message, .. } => {
                let squashed: String = message
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                *code == Code::NOT_FOUND
                    || (matches!(code, Code::INVALID_ARGUMENT | Code::INTERNAL)
                        && squashed.contains("invalidcontainerid"))
            }
            _ => false,
        }
    }

    /// The agent does not serve the method called: a service it does not have (ttrpc-rust's
    /// async server answers `INVALID_ARGUMENT` `"<service> service does not exist"`, its sync
    /// server `INVALID_ARGUMENT` `"/<service>/<method> does not exist"`, Go's ttrpc
    /// `UNIMPLEMENTED`), a method it does not know (`UNIMPLEMENTED`), or a method its service
    /// leaves to the generated default (`NOT_FOUND` "... is not supported"). How Kata's agent
    /// answers kata-rs's extension (`kata_rs.GuestService`).
    pub fn is_unserved(&self) -> bool {
        match self {
            Error::Rpc {
                method,
                code,
                message,
            } => match *code {
                Code::UNIMPLEMENTED => true,
                Code::NOT_FOUND => message.contains("is not supported"),
                Code::INVALID_ARGUMENT => {
                    message.contains("service does not exist")
                        || names_missing_path(method, message)
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// The agent answered `ALREADY_EXISTS` (a duplicate container or exec id).
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::ALREADY_EXISTS)
    }

    /// The call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// The error is how an agent ends an output stream.
    ///
    /// `ReadStdout`/`ReadStderr` have no end-of-stream message: Kata's agent
    /// (and kata-rs's, which does the same) answers the read after the last
    /// byte with an error status whose message contains "eof" (Kata sends
    /// `INTERNAL: read meet eof`, or `eof` when the terminal closed). This is
    /// true for exactly those errors.
    pub fn is_eof(&self) -> bool {
        match self {
            Error::Rpc { message, .. } => message.to_ascii_lowercase().contains("eof"),
            Error::Transport {
                source: ttrpc::Error::Eof,
                ..
            } => true,
            _ => false,
        }
    }

    /// The connection to the agent is gone (closed by either side, or broken): no call on
    /// it can succeed any more. Errors the agent answered are never this.
    pub fn is_connection_closed(&self) -> bool {
        matches!(
            self,
            Error::Transport {
                source: ttrpc::Error::LocalClosed
                    | ttrpc::Error::RemoteClosed
                    | ttrpc::Error::Eof
                    | ttrpc::Error::Socket(_),
                ..
            }
        )
    }

    /// Maps a ttRPC error of `method` called with `timeout`.
    pub(crate) fn from_ttrpc(
        method: &'static str,
        timeout: Option<Duration>,
        err: ttrpc::Error,
    ) -> Self {
        match (err, timeout) {
            (ttrpc::Error::RpcStatus(status), Some(timeout))
                if status.code() == Code::DEADLINE_EXCEEDED =>
            {
                Error::Timeout { method, timeout }
            }
            (ttrpc::Error::RpcStatus(status), _) => Error::Rpc {
                method,
                code: status.code(),
                message: status.message,
            },
            // ttRPC reports its own client-side deadline as a free-form error.
            (ttrpc::Error::Others(msg), Some(timeout)) if msg.contains("timeout") => {
                Error::Timeout { method, timeout }
            }
            (source, _) => Error::Transport { method, source },
        }
    }

    /// An I/O error with what was being done.
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            action: action.into(),
            source,
        }
    }

    /// A spec conversion error.
    pub(crate) fn spec(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Whether `message` is ttrpc-rust's sync server's answer for a path it has no handler for,
/// `"/<service>/<method> does not exist"`, with `method` the method called (so a served
/// call's "container x does not exist" is not taken for it).
fn names_missing_path(method: &str, message: &str) -> bool {
    message
        .strip_suffix(" does not exist")
        .and_then(|path| path.strip_prefix('/'))
        .and_then(|path| path.rsplit_once('/'))
        .is_some_and(|(service, m)| !service.is_empty() && m == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: Code, message: &str) -> Error {
        Error::Rpc {
            method: "WaitProcess",
            code,
            message: message.into(),
        }
    }

    #[test]
    fn an_unknown_container_is_recognised_as_either_agent_answers_it() {
        // kata-rs's agent before, then Kata's three answers (rpc.rs: Debug of SandboxError,
        // anyhow's "Invalid container id", the quoted str of UpdateContainer and the like).
        for (code, message) in [
            (Code::NOT_FOUND, "container ghost not found"),
            (Code::INVALID_ARGUMENT, "InvalidContainerId"),
            (Code::INTERNAL, "Invalid container id"),
            (Code::INVALID_ARGUMENT, "\"invalid container id\""),
            (
                Code::INVALID_ARGUMENT,
                "invalid container id ghost: no container with this id in the sandbox",
            ),
        ] {
            assert!(
                rpc(code, message).is_unknown_container(),
                "{code:?} {message}"
            );
        }
        assert!(!rpc(Code::INTERNAL, "mount failed").is_unknown_container());
        assert!(!rpc(Code::UNAVAILABLE, "invalid container id").is_unknown_container());
    }

    #[test]
    fn the_sync_ttrpc_servers_answer_for_a_missing_path_is_unserved() {
        let call = |message: &str| Error::Rpc {
            method: "OfflineCPUs",
            code: Code::INVALID_ARGUMENT,
            message: message.into(),
        };
        // ttrpc-rust 0.9 sync/server.rs: format!("{path} does not exist").
        assert!(call("/kata_rs.GuestService/OfflineCPUs does not exist").is_unserved());
        // A served call's own "does not exist", another method's path, or not a path: no.
        assert!(!call("container ghost does not exist").is_unserved());
        assert!(!call("/kata_rs.GuestService/OnlineCPUMem does not exist").is_unserved());
        assert!(!call("OfflineCPUs does not exist").is_unserved());
        assert!(!call("//OfflineCPUs does not exist").is_unserved());
        assert!(!Error::Rpc {
            method: "OfflineCPUs",
            code: Code::INTERNAL,
            message: "/kata_rs.GuestService/OfflineCPUs does not exist".into(),
        }
        .is_unserved());
    }
}
