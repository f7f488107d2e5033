//! The ttRPC code a failed request is answered with, per method, as Kata's agent answers it.
//!
//! Most errors carry one code ([`AgentError::code`]). Kata's agent answers a lookup that
//! fails differently depending on the call (`src/agent/src/rpc.rs`): an unknown container is
//! `INVALID_ARGUMENT` for the process calls (WaitProcess, ReadStdout/ReadStderr, CloseStdin,
//! TtyWinResize, SignalProcess of one process) and for UpdateContainer, StatsContainer,
//! PauseContainer and ResumeContainer, but `INTERNAL` ("Invalid container id") for
//! StartContainer, RemoveContainer, ExecProcess, WriteStdin and a SignalProcess of the whole
//! container (exec id `""` with SIGKILL); WriteStdin answers an unknown exec id `INTERNAL` too.
//! kata-rs's runtime takes either (`kata_agent_client::Error::is_unknown_container`).

use kata_agent_client::ttrpc;

use crate::error::AgentError;

/// The method name a SignalProcess of every process of a container (exec id `""` and
/// SIGKILL) is handled under: Kata's agent answers its lookups `INTERNAL`.
pub const SIGNAL_ALL: &str = "SignalProcess(all)";

/// Methods whose failed container lookup Kata's agent answers `INTERNAL`.
const UNKNOWN_CONTAINER_INTERNAL: &[&str] = &[
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "WriteStdin",
    SIGNAL_ALL,
];

/// The code `method` answers `err` with.
pub fn code(method: &str, err: &AgentError) -> ttrpc::Code {
    match err {
        AgentError::ContainerNotFound(_) if UNKNOWN_CONTAINER_INTERNAL.contains(&method) => {
            ttrpc::Code::INTERNAL
        }
        AgentError::ExecNotFound { .. } if method == "WriteStdin" => ttrpc::Code::INTERNAL,
        other => other.code(),
    }
}

/// The ttRPC error `method` answers `err` with: its code for this method, its message.
pub fn status(method: &str, err: &AgentError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code(method, err), err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    #[test]
    fn an_unknown_container_is_answered_with_kata_s_code_per_method() {
        let gone = AgentError::ContainerNotFound("ghost".into());
        for method in [
            "WaitProcess",
            "ReadStdout",
            "ReadStderr",
            "CloseStdin",
            "TtyWinResize",
            "SignalProcess",
            "UpdateContainer",
            "StatsContainer",
            "PauseContainer",
            "ResumeContainer",
        ] {
            assert_eq!(code(method, &gone), Code::INVALID_ARGUMENT, "{method}");
        }
        for method in UNKNOWN_CONTAINER_INTERNAL {
            assert_eq!(code(method, &gone), Code::INTERNAL, "{method}");
        }
        match status("StartContainer", &gone) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert!(s.message().contains("ghost"), "{s:?}");
                assert!(s.message().contains("invalid container id"), "{s:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_exec_is_not_found_except_for_write_stdin() {
        let gone = AgentError::ExecNotFound {
            container_id: "c".into(),
            exec_id: "e".into(),
        };
        assert_eq!(code("ReadStdout", &gone), Code::NOT_FOUND);
        assert_eq!(code("WaitProcess", &gone), Code::NOT_FOUND);
        assert_eq!(code("WriteStdin", &gone), Code::INTERNAL);
        let other = AgentError::invalid("signal", "0 is not a signal number");
        assert_eq!(code("WriteStdin", &other), Code::INVALID_ARGUMENT);
    }
}
