//! A container process's standard streams, agent side: three pipes, or a pty.
//!
//! The agent keeps its ends non-blocking under tokio; the other ends become the process's fds
//! 0-2. Nothing is buffered in the agent: unread output waits in the pipe (or pty) and the
//! process blocks when it is full, so output produced before the host attaches is never lost,
//! and neither is a dead process's last output.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns it until it is dropped, so
    // the descriptor stays open and refers to the same file for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// The agent's reading end of stdout or stderr (a pipe, or the pty master).
#[derive(Debug)]
pub struct OutputStream(AsyncFd<OwnedFd>);

impl OutputStream {
    /// Wraps a file descriptor (made non-blocking).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Ok(OutputStream(register(fd, Interest::READABLE)?))
    }

    /// Reads what is available, up to `len` bytes, waiting until something is. An empty result
    /// is the end of the stream (every writer closed; for a pty, `EIO` once the slave closed).
    pub async fn read(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len.max(1)];
        loop {
            let mut guard = self.0.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The agent's writing end of stdin (a pipe, or a dup of the pty master).
#[derive(Debug)]
pub struct InputStream(AsyncFd<OwnedFd>);

impl InputStream {
    /// Wraps a file descriptor (made non-blocking).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Ok(InputStream(register(fd, Interest::WRITABLE)?))
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(total)
    }
}

/// The fds that become the process's stdin, stdout and stderr.
#[derive(Debug)]
pub struct ChildStdio {
    /// fd 0.
    pub stdin: OwnedFd,
    /// fd 1.
    pub stdout: OwnedFd,
    /// fd 2.
    pub stderr: OwnedFd,
}

/// The agent's side of a process's stdio.
#[derive(Debug)]
pub struct ParentStdio {
    /// Where WriteStdin writes.
    pub stdin: Option<InputStream>,
    /// Where ReadStdout reads.
    pub stdout: Option<OutputStream>,
    /// Where ReadStderr reads (`None` with a terminal: stderr goes to the pty too).
    pub stderr: Option<OutputStream>,
    /// The pty master, for TtyWinResize.
    pub tty: Option<OwnedFd>,
}

/// Three pipes.
pub fn pipes() -> io::Result<(ChildStdio, ParentStdio)> {
    let flags = OFlag::O_CLOEXEC;
    let (in_r, in_w) = nix::unistd::pipe2(flags)?;
    let (out_r, out_w) = nix::unistd::pipe2(flags)?;
    let (err_r, err_w) = nix::unistd::pipe2(flags)?;
    Ok((
        ChildStdio {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        ParentStdio {
            stdin: Some(InputStream::new(in_w)?),
            stdout: Some(OutputStream::new(out_r)?),
            stderr: Some(OutputStream::new(err_r)?),
            tty: None,
        },
    ))
}

/// A pty of `rows` × `cols` (0 keeps the kernel's default): the slave on fds 0-2.
pub fn pty(rows: u16, cols: u16) -> io::Result<(ChildStdio, ParentStdio)> {
    let size = (rows > 0 && cols > 0).then_some(nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(size.as_ref(), None)?;
    set_cloexec(&pty.master)?;
    set_cloexec(&pty.slave)?;
    let reader = pty.master.try_clone()?;
    let writer = pty.master.try_clone()?;
    Ok((
        ChildStdio {
            stdin: pty.slave.try_clone()?,
            stdout: pty.slave.try_clone()?,
            stderr: pty.slave,
        },
        ParentStdio {
            stdin: Some(InputStream::new(writer)?),
            stdout: Some(OutputStream::new(reader)?),
            stderr: None,
            tty: Some(pty.master),
        },
    ))
}

/// Sets the window size of a pty master.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid reference; the fd is a pty master
    // we own.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn pipe_output_then_eof() {
        let (child, parent) = pipes().unwrap();
        let mut w = std::fs::File::from(child.stdout);
        w.write_all(b"hello").unwrap();
        drop(w);
        let out = parent.stdout.unwrap();
        assert_eq!(out.read(3).await.unwrap(), b"hel");
        assert_eq!(out.read(100).await.unwrap(), b"lo");
        assert!(out.read(100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stdin_reaches_the_child_end() {
        let (child, parent) = pipes().unwrap();
        let n = parent
            .stdin
            .as_ref()
            .unwrap()
            .write_all(b"abc")
            .await
            .unwrap();
        assert_eq!(n, 3);
        drop(parent);
        let mut s = String::new();
        use std::io::Read;
        std::fs::File::from(child.stdin)
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "abc");
    }

    #[tokio::test]
    async fn pty_echoes_and_resizes() {
        let (child, parent) = pty(24, 80).unwrap();
        let master = parent.tty.as_ref().unwrap();
        resize(master, 30, 100).unwrap();
        // SAFETY: winsize is plain old data; all-zero is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize struct into `ws`.
        let r = unsafe { libc::ioctl(child.stdout.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (30, 100));
        let mut w = std::fs::File::from(child.stdout);
        w.write_all(b"x").unwrap();
        let out = parent.stdout.as_ref().unwrap();
        assert_eq!(out.read(10).await.unwrap(), b"x");
        drop(w);
        drop(child.stdin);
        drop(child.stderr);
        assert!(
            out.read(10).await.unwrap().is_empty(),
            "EIO after the slave closed is EOF"
        );
    }
}
