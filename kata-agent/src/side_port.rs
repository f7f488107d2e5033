//! Listening on the agent's side ports: the log stream ([`crate::logport`]) and the debug
//! console ([`crate::debug_console`]), beside the ttRPC server and on the same transport.
//!
//! An agent listening on `vsock://<cid>:1024` serves port `p` on `vsock://<cid>:<p>`; one on
//! `unix://<path>` (the test backend's agent on the host) on `unix://<path>.<p>`, which is
//! where kata-agent-client's `AgentAddress::on_port` dials. Accepting blocks, so each port
//! has its own thread; dropping the [`PortListener`] shuts it down (a blocked `accept`
//! returns) and removes a unix socket file.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// A bound, listening side port.
#[derive(Debug)]
pub struct PortListener {
    fd: OwnedFd,
    unix_path: Option<PathBuf>,
    name: String,
}

impl PortListener {
    /// Listens on `port` of the transport of `agent_listen` (the ttRPC listen address).
    pub fn bind(agent_listen: &str, port: u32) -> io::Result<PortListener> {
        if let Some(rest) = agent_listen.strip_prefix("vsock://") {
            let cid_text = rest.split(':').next().unwrap_or("-1");
            let cid = match cid_text.parse::<i64>() {
                Ok(-1) => libc::VMADDR_CID_ANY,
                Ok(c) => u32::try_from(c).map_err(|_| invalid(agent_listen))?,
                Err(_) => return Err(invalid(agent_listen)),
            };
            return Ok(PortListener {
                fd: bind_vsock(cid, port)?,
                unix_path: None,
                name: format!("vsock://{cid_text}:{port}"),
            });
        }
        if let Some(path) = agent_listen.strip_prefix("unix://") {
            let path = kata_agent_client::address::unix_port_path(path.as_ref(), port);
            // A socket left by an earlier run would make bind fail.
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            return Ok(PortListener {
                fd: listener.into(),
                name: format!("unix://{}", path.display()),
                unix_path: Some(path),
            });
        }
        Err(invalid(agent_listen))
    }

    /// Waits for the next connection. Fails once the listener was shut down.
    pub fn accept(&self) -> io::Result<File> {
        loop {
            // SAFETY: accept4 with null address pointers writes nothing; the fd is ours.
            let fd = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: accept4 returned a fresh descriptor nothing else owns.
                return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Where it listens, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes a blocked [`accept`](Self::accept) return an error.
    pub fn shut_down(&self) {
        // SAFETY: shutdown(2) on a descriptor we own; no pointers.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

impl Drop for PortListener {
    fn drop(&mut self) {
        self.shut_down();
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn invalid(listen: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cannot derive a side port from the listen address {listen:?}"),
    )
}

fn bind_vsock(cid: u32, port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory-safety preconditions; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh socket nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: bind reads `size_of::<sockaddr_vm>()` bytes of `addr`, which lives for the call.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a socket we own; no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), 8) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_unix_agent_serves_a_port_beside_its_socket_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listen = format!("unix://{}", sock.display());
        let l = PortListener::bind(&listen, 1025).unwrap();
        let path = dir.path().join("agent.sock.1025");
        assert_eq!(l.name(), format!("unix://{}", path.display()));
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut conn = l.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(l);
        assert!(!path.exists());
        assert!(PortListener::bind("tcp://1.2.3.4:5", 1).is_err());
    }
}
