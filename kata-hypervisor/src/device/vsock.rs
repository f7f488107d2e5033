//! The agent's channel: where a guest's agent is reached from the host.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the guest agent can be reached.
///
/// The text forms (`vsock://3:1024`, `hvsock:///run/vm/vsock.uds:1024`, `unix:///run/a.sock`)
/// are those of kata-agent-client's `AgentAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum VsockAddress {
    /// Kernel AF_VSOCK (vhost-vsock): the guest's context id and port.
    Vsock {
        /// Guest context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// Hybrid vsock: a unix socket that accepts `CONNECT <port>\n`.
    HybridVsock {
        /// The unix socket.
        uds: PathBuf,
        /// Port.
        port: u32,
    },
    /// A plain unix socket with the agent's ttRPC server behind it (an agent on this host: the
    /// test backend).
    Unix {
        /// The socket.
        path: PathBuf,
    },
}

impl fmt::Display for VsockAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VsockAddress::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            VsockAddress::HybridVsock { uds, port } => {
                write!(f, "hvsock://{}:{port}", uds.display())
            }
            VsockAddress::Unix { path } => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_client_syntax() {
        let a = VsockAddress::HybridVsock {
            uds: "/run/x/vsock.uds".into(),
            port: 1024,
        };
        assert_eq!(a.to_string(), "hvsock:///run/x/vsock.uds:1024");
        assert_eq!(
            VsockAddress::Vsock { cid: 3, port: 1024 }.to_string(),
            "vsock://3:1024"
        );
        assert_eq!(
            VsockAddress::Unix {
                path: "/run/vm/agent.sock".into()
            }
            .to_string(),
            "unix:///run/vm/agent.sock"
        );
    }
}
