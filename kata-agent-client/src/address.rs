//! Where the guest agent listens, as the host reaches it.
//!
//! Three kinds of address, written as URLs:
//!
//! | kind | text | transport |
//! |---|---|---|
//! | [`AgentAddress::Vsock`] | `vsock://3:1024` | AF_VSOCK to guest CID 3, port 1024 (vhost-vsock) |
//! | [`AgentAddress::HybridVsock`] | `hvsock:///run/kata/sb/vsock.uds:1024` | a unix socket of a hybrid-vsock backend (Firecracker, the built-in VMM, vhost-device-vsock), then `CONNECT 1024\n` |
//! | [`AgentAddress::Unix`] | `unix:///run/agent.sock` | a plain unix socket (an agent on the host, tests) |

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// Kata's default agent port on vsock.
pub const DEFAULT_AGENT_VSOCK_PORT: u32 = 1024;

/// The address of a guest agent.
///
/// ```
/// use kata_agent_client::AgentAddress;
///
/// let addr: AgentAddress = "hvsock:///run/vm/vsock.uds:1024".parse()?;
/// assert_eq!(
///     addr,
///     AgentAddress::HybridVsock { uds: "/run/vm/vsock.uds".into(), port: 1024 }
/// );
/// assert_eq!(addr.to_string(), "hvsock:///run/vm/vsock.uds:1024");
/// # Ok::<(), kata_agent_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AgentAddress {
    /// AF_VSOCK: the guest's context id and the agent's port.
    Vsock {
        /// Guest context id (3 or above).
        cid: u32,
        /// Port the agent listens on (Kata: 1024).
        port: u32,
    },
    /// Hybrid vsock: a unix socket served by the VMM's vsock backend. The
    /// client writes `CONNECT <port>\n`, expects `OK <n>\n`, then speaks ttRPC
    /// on the same stream.
    HybridVsock {
        /// The backend's unix socket.
        uds: PathBuf,
        /// Guest port of the agent.
        port: u32,
    },
    /// A plain unix socket with the agent's ttRPC server behind it.
    Unix(PathBuf),
}

impl AgentAddress {
    /// The same guest reached on another port: the agent's log stream (1025) or debug console
    /// (1026) beside its ttRPC server. A vsock or hybrid-vsock address changes its port; a
    /// unix socket `P` (an agent on the host) is `P.<port>`, where the agent listens for
    /// that port.
    ///
    /// ```
    /// use kata_agent_client::AgentAddress;
    ///
    /// let agent: AgentAddress = "hvsock:///run/vm/vsock.uds:1024".parse()?;
    /// assert_eq!(agent.on_port(1025).to_string(), "hvsock:///run/vm/vsock.uds:1025");
    /// let host: AgentAddress = "unix:///run/vm/agent.sock".parse()?;
    /// assert_eq!(host.on_port(1026).to_string(), "unix:///run/vm/agent.sock.1026");
    /// # Ok::<(), kata_agent_client::Error>(())
    /// ```
    pub fn on_port(&self, port: u32) -> AgentAddress {
        match self {
            AgentAddress::Vsock { cid, .. } => AgentAddress::Vsock { cid: *cid, port },
            AgentAddress::HybridVsock { uds, .. } => AgentAddress::HybridVsock {
                uds: uds.clone(),
                port,
            },
            AgentAddress::Unix(path) => AgentAddress::Unix(unix_port_path(path, port)),
        }
    }

    fn invalid(address: &str, reason: impl Into<String>) -> Error {
        Error::InvalidAddress {
            address: address.to_string(),
            reason: reason.into(),
        }
    }
}

/// Where an agent listening on unix socket `path` serves `port`: `<path>.<port>`.
pub fn unix_port_path(path: &std::path::Path, port: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{port}"));
    PathBuf::from(p)
}

fn parse_u32(address: &str, what: &str, text: &str) -> Result<u32, Error> {
    text.parse::<u32>().map_err(|_| {
        AgentAddress::invalid(
            address,
            format!("{what} {text:?} is not a number between 0 and {}", u32::MAX),
        )
    })
}

impl FromStr for AgentAddress {
    type Err = Error;

    fn from_str(address: &str) -> Result<Self, Error> {
        let Some((scheme, rest)) = address.split_once("://") else {
            return Err(Self::invalid(
                address,
                "missing scheme: expected vsock://<cid>:<port>, hvsock://<path>:<port> or unix://<path>",
            ));
        };
        match scheme {
            "vsock" => {
                let Some((cid, port)) = rest.split_once(':') else {
                    return Err(Self::invalid(
                        address,
                        "missing port: expected vsock://<cid>:<port>",
                    ));
                };
                Ok(AgentAddress::Vsock {
                    cid: parse_u32(address, "cid", cid)?,
                    port: parse_u32(address, "port", port)?,
                })
            }
            "hvsock" => {
                let Some((uds, port)) = rest.rsplit_once(':') else {
                    return Err(Self::invalid(
                        address,
                        "missing port: expected hvsock://<path>:<port>",
                    ));
                };
                if uds.is_empty() {
                    return Err(Self::invalid(
                        address,
                        "empty socket path: expected hvsock://<path>:<port>",
                    ));
                }
                Ok(AgentAddress::HybridVsock {
                    uds: PathBuf::from(uds),
                    port: parse_u32(address, "port", port)?,
                })
            }
            "unix" => {
                if rest.is_empty() {
                    return Err(Self::invalid(
                        address,
                        "empty socket path: expected unix://<path>",
                    ));
                }
                Ok(AgentAddress::Unix(PathBuf::from(rest)))
            }
            other => Err(Self::invalid(
                address,
                format!("unknown scheme {other:?}: expected vsock, hvsock or unix"),
            )),
        }
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddress::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            AgentAddress::HybridVsock { uds, port } => {
                write!(f, "hvsock://{}:{port}", uds.display())
            }
            AgentAddress::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_every_kind() {
        for (text, addr) in [
            ("vsock://3:1024", AgentAddress::Vsock { cid: 3, port: 1024 }),
            (
                "hvsock:///run/kata/sb/kata.hvsock:1024",
                AgentAddress::HybridVsock {
                    uds: "/run/kata/sb/kata.hvsock".into(),
                    port: 1024,
                },
            ),
            (
                "unix:///tmp/agent.sock",
                AgentAddress::Unix("/tmp/agent.sock".into()),
            ),
        ] {
            let parsed: AgentAddress = text.parse().unwrap();
            assert_eq!(parsed, addr);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn hybrid_path_may_contain_colons() {
        let addr: AgentAddress = "hvsock:///a:b/vsock.uds:2000".parse().unwrap();
        assert_eq!(
            addr,
            AgentAddress::HybridVsock {
                uds: "/a:b/vsock.uds".into(),
                port: 2000
            }
        );
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("vsock://x:1024", "cid \"x\""),
            ("vsock://3:abc", "port \"abc\""),
            ("vsock://3", "missing port"),
            ("hvsock:///run/vsock.uds", "missing port"),
            (
                "hvsock:///run/vsock.uds:99999999999",
                "port \"99999999999\"",
            ),
            ("hvsock://:1024", "empty socket path"),
            ("unix://", "empty socket path"),
            ("tcp://1.2.3.4:5", "unknown scheme \"tcp\""),
            ("/run/agent.sock", "missing scheme"),
        ];
        for (text, expected) in cases {
            let err = text.parse::<AgentAddress>().unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.contains(text),
                "{text}: {err:?} should mention {expected:?}"
            );
        }
    }
}
