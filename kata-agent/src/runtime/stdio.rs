//! A container process's standard streams, agent side: three pipes, or a pty.
//!
//! The agent keeps its ends non-blocking under tokio; the other ends become the process's fds
//! 0-2. Nothing is buffered in the agent: unread output waits in the pipe (or pty) and the
//! process blocks when it is full, so output produced before the host attaches is never lost,
//! and neither is a dead process's last output.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
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

/// Three pipes, of the size `agent.container_pipe_size` gives.
pub fn pipes() -> io::Result<(ChildStdio, ParentStdio)> {
    pipes_sized(crate::config::tunables().container_pipe_size)
}

/// Three pipes of `size` bytes each (0: the kernel's default).
pub fn pipes_sized(size: u32) -> io::Result<(ChildStdio, ParentStdio)> {
    let flags = OFlag::O_CLOEXEC;
    let (in_r, in_w) = nix::unistd::pipe2(flags)?;
    let (out_r, out_w) = nix::unistd::pipe2(flags)?;
    let (err_r, err_w) = nix::unistd::pipe2(flags)?;
    if size > 0 {
        // `agent.container_pipe_size`, as Kata's agent applies it to each stdio pipe.
        for fd in [&in_w, &out_w, &err_w] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size as i32))?;
        }
    }
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

/// A pty master and slave, both opened close-on-exec in the same call (`openpty(3)` sets the
/// flag afterwards, so a process spawned concurrently by another request could inherit another
/// container's terminal).
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::fcntl::open("/dev/ptmx", flags, nix::sys::stat::Mode::empty())?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a valid reference; `master` is a ptmx fd we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags as its integer argument and returns a new fd.
    let peer = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags.bits()) };
    if peer >= 0 {
        // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
        return Ok((master, unsafe { OwnedFd::from_raw_fd(peer) }));
    }
    // Kernels before 4.13: open the slave by its number.
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into `n`.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let slave = nix::fcntl::open(
        format!("/dev/pts/{n}").as_str(),
        flags,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok((master, slave))
}

/// A pty of `rows` × `cols` (0 keeps the kernel's default): the slave on fds 0-2.
pub fn pty(rows: u16, cols: u16) -> io::Result<(ChildStdio, ParentStdio)> {
    let (master, slave) = open_pty()?;
    if rows > 0 && cols > 0 {
        resize(&master, rows, cols)?;
    }
    // try_clone dups with F_DUPFD_CLOEXEC.
    let reader = master.try_clone()?;
    let writer = master.try_clone()?;
    Ok((
        ChildStdio {
            stdin: slave.try_clone()?,
            stdout: slave.try_clone()?,
            stderr: slave,
        },
        ParentStdio {
            stdin: Some(InputStream::new(writer)?),
            stdout: Some(OutputStream::new(reader)?),
            stderr: None,
            tty: Some(master),
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
    async fn pipe_size_is_applied_to_each_pipe() {
        use std::os::fd::AsFd;
        let (child, parent) = pipes_sized(1 << 20).unwrap();
        for fd in [
            child.stdin.as_fd(),
            child.stdout.as_fd(),
            child.stderr.as_fd(),
        ] {
            let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
            assert_eq!(n, 1 << 20);
        }
        drop(parent);
    }

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

    fn is_cloexec(fd: &OwnedFd) -> bool {
        let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
        nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
    }

    /// Every descriptor the agent keeps or hands to a helper is close-on-exec from its creation:
    /// a process spawned at the same moment for another container inherits none of them (the
    /// helper gets its stdio through `dup2` onto 0-2, which clears the flag on the copies only).
    #[tokio::test]
    async fn stdio_descriptors_are_close_on_exec() {
        let (master, slave) = open_pty().unwrap();
        assert!(is_cloexec(&master) && is_cloexec(&slave));
        let (child, parent) = pty(24, 80).unwrap();
        for fd in [&child.stdin, &child.stdout, &child.stderr] {
            assert!(is_cloexec(fd));
        }
        assert!(is_cloexec(parent.tty.as_ref().unwrap()));
        let (child, _parent) = pipes().unwrap();
        for fd in [&child.stdin, &child.stdout, &child.stderr] {
            assert!(is_cloexec(fd));
        }
    }

    /// A process spawned while ptys are being opened never holds one.
    #[test]
    fn concurrent_spawns_inherit_no_pty() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opener = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    held.push(open_pty().unwrap());
                    if held.len() > 8 {
                        held.clear();
                    }
                }
            })
        };
        for _ in 0..30 {
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", "ls -l /proc/$$/fd"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                !text.contains("ptmx") && !text.contains("/dev/pts/"),
                "{text}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        opener.join().unwrap();
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
