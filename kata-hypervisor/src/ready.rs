//! Is the agent's port answering? A probe that dials a [`VsockAddress`] and hangs up, for the
//! backends' [`Hypervisor::wait_ready`](crate::Hypervisor::wait_ready).
//!
//! Hybrid vsock: connect to the backend's unix socket, send `CONNECT <port>\n`, expect a line
//! starting with `OK` (the backend answers only once a guest listener accepted), close. Kernel
//! vsock: an AF_VSOCK connect that succeeds. A plain unix socket: a connect that succeeds.
//! Nothing is spoken on the connection: the agent sees a client that came and went.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::device::VsockAddress;

/// The longest one attempt may take: a `CONNECT` sent before the guest's vsock driver is up
/// can stay unanswered, so it is abandoned and sent again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause between two attempts.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Why the port did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotAnswering {
    /// The last error, for messages.
    pub detail: String,
    /// Waiting cannot fix it (no AF_VSOCK in this kernel, permission denied, a backend that
    /// answers something other than `OK`).
    pub permanent: bool,
}

/// Dials `address` until it answers or `budget` has passed.
pub(crate) async fn wait_answering(
    address: &VsockAddress,
    budget: Duration,
) -> Result<(), NotAnswering> {
    let deadline = Instant::now() + budget;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(
            left.min(ATTEMPT_TIMEOUT).max(Duration::from_millis(1)),
            probe_once(address),
        )
        .await;
        let err = match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => NotAnswering {
                detail: format!("dialing {address}: no answer within {ATTEMPT_TIMEOUT:?}"),
                permanent: false,
            },
        };
        if err.permanent || Instant::now() + RETRY_INTERVAL >= deadline {
            return Err(err);
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

/// One attempt.
async fn probe_once(address: &VsockAddress) -> Result<(), NotAnswering> {
    match address {
        VsockAddress::Unix { path } => connect_unix(path).await.map(drop),
        VsockAddress::HybridVsock { uds, port } => {
            let mut stream = connect_unix(uds).await?;
            let io = |what: &str, e: std::io::Error| NotAnswering {
                detail: format!("{what} CONNECT {port} on {}: {e}", uds.display()),
                permanent: false,
            };
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await
                .map_err(|e| io("sending", e))?;
            let mut line = Vec::new();
            loop {
                let mut byte = [0u8; 1];
                let n = stream
                    .read(&mut byte)
                    .await
                    .map_err(|e| io("reading the answer to", e))?;
                if n == 0 {
                    return Err(NotAnswering {
                        detail: format!(
                            "hybrid vsock backend {} closed the connection after CONNECT {port} (nothing listens on the guest port yet)",
                            uds.display()
                        ),
                        permanent: false,
                    });
                }
                if byte[0] == b'\n' || line.len() > 64 {
                    break;
                }
                line.push(byte[0]);
            }
            if line.starts_with(b"OK") {
                Ok(())
            } else {
                Err(NotAnswering {
                    detail: format!(
                        "hybrid vsock backend {} answered {:?} to CONNECT {port}",
                        uds.display(),
                        String::from_utf8_lossy(&line)
                    ),
                    permanent: true,
                })
            }
        }
        VsockAddress::Vsock { cid, port } => connect_vsock(*cid, *port).await,
    }
}

async fn connect_unix(path: &Path) -> Result<UnixStream, NotAnswering> {
    UnixStream::connect(path).await.map_err(|e| NotAnswering {
        detail: format!("connecting to unix socket {}: {e}", path.display()),
        permanent: matches!(e.kind(), ErrorKind::PermissionDenied),
    })
}

/// A non-blocking AF_VSOCK connect, completed when the socket turns writable.
async fn connect_vsock(cid: u32, port: u32) -> Result<(), NotAnswering> {
    use nix::sys::socket::{
        connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, VsockAddr,
    };
    let fail = |what: &str, errno: nix::errno::Errno| NotAnswering {
        detail: format!("{what} vsock cid {cid} port {port}: {errno}"),
        permanent: matches!(
            errno,
            nix::errno::Errno::EAFNOSUPPORT
                | nix::errno::Errno::EPROTONOSUPPORT
                | nix::errno::Errno::EACCES
                | nix::errno::Errno::EPERM
        ),
    };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail("creating a socket for", e))?;
    match connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)) {
        Ok(()) => return Ok(()),
        Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(fail("connecting to", e)),
    }
    // SAFETY: the OwnedFd is a valid, open socket that the AsyncFd owns from here on; an
    // OwnedFd always returns the same descriptor and closes it only when dropped.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::WRITABLE)
    }
    .map_err(|e| NotAnswering {
        detail: format!("watching the vsock socket: {e}"),
        permanent: true,
    })?;
    let mut guard = afd.writable().await.map_err(|e| NotAnswering {
        detail: format!("waiting for vsock cid {cid} port {port}: {e}"),
        permanent: false,
    })?;
    guard.clear_ready();
    match getsockopt(afd.get_ref(), sockopt::SocketError) {
        Ok(0) => Ok(()),
        Ok(code) => Err(fail("connecting to", nix::errno::Errno::from_raw(code))),
        Err(e) => Err(fail("reading the connect result of", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn a_unix_listener_answers_and_a_missing_one_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let address = VsockAddress::Unix { path: path.clone() };
        let e = wait_answering(&address, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(!e.permanent && e.detail.contains("agent.sock"), "{e:?}");
        let _listener = UnixListener::bind(&path).unwrap();
        wait_answering(&address, Duration::from_secs(2))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn hybrid_vsock_needs_ok_after_connect() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.uds");
        let listener = UnixListener::bind(&uds).unwrap();
        // A backend that first hangs up (no guest listener yet), then says OK.
        let server = tokio::spawn(async move {
            for answer in [None, Some("OK 1073741824\n")] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 13];
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"CONNECT 1024\n");
                if let Some(a) = answer {
                    s.write_all(a.as_bytes()).await.unwrap();
                }
            }
        });
        let address = VsockAddress::HybridVsock { uds, port: 1024 };
        wait_answering(&address, Duration::from_secs(5))
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_answer_is_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.uds");
        let listener = UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"NO\n").await.unwrap();
        });
        let e = wait_answering(
            &VsockAddress::HybridVsock { uds, port: 1024 },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(e.permanent && e.detail.contains("\"NO\""), "{e:?}");
    }
}
