//! The debug console: a root shell in the guest (not in a container), one per connection to
//! the debug console port, only when the kernel command line has `agent.debug_console`
//! (the runtime passes it for `[agent.kata] debug_console_enabled = true`).
//!
//! Each connection gets `/bin/sh` on a fresh pty, in the agent's own namespaces and root, as
//! a session leader with the pty as its controlling terminal. The pty's output goes to the
//! connection raw; what the host sends is framed (data, window size:
//! [`kata_agent_client::debug_console`]). The host closing the connection hangs the shell up
//! (SIGHUP, then SIGKILL to its process group); the shell exiting closes the connection. The
//! agent's reaper reaps it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::Arc;

use kata_agent_client::debug_console::{ConsoleFrame, FrameDecoder};

use crate::runtime::stdio::{open_pty, resize};
use crate::side_port::PortListener;

/// The shell the console runs.
pub const SHELL: &str = "/bin/sh";

/// Serves the debug console on `port` of the agent's transport until the listener is dropped.
pub fn serve(listen: &str, port: u32) -> io::Result<Arc<PortListener>> {
    let listener = Arc::new(PortListener::bind(listen, port)?);
    let l = Arc::clone(&listener);
    std::thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || {
            while let Ok(conn) = l.accept() {
                let spawned = std::thread::Builder::new()
                    .name("debug-console-session".into())
                    .spawn(move || {
                        if let Err(e) = session(conn) {
                            tracing::warn!(error = %e, "debug console session ended");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a debug console session");
                }
            }
        })?;
    tracing::warn!(
        port = listener.name(),
        shell = SHELL,
        "debug console listening: a root shell for the host"
    );
    Ok(listener)
}

/// One connection: a shell on a pty until either side ends.
fn session(conn: File) -> io::Result<()> {
    let (master, slave) = open_pty()?;
    resize(&master, 24, 80)?;
    let shell = match spawn_shell(slave) {
        Ok(s) => s,
        Err(e) => {
            // Said to the host before the connection closes: an image without a shell.
            let mut conn = conn;
            let _ = writeln!(
                conn,
                "kata-agent: debug console: cannot start {SHELL}: {e} (the guest image has no shell: use one with busybox, e.g. the debug initrd)\r"
            );
            return Err(e);
        }
    };
    let pid = shell.id() as i32;
    tracing::info!(pid, "debug console: shell started");
    // The shell's output to the host, on its own thread.
    let mut from_pty = File::from(master.try_clone()?);
    let mut to_host = conn.try_clone()?;
    let output = std::thread::Builder::new()
        .name("debug-console-output".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the shell (the last holder of the slave) is gone.
            while let Ok(n) = from_pty.read(&mut buf) {
                if n == 0 || to_host.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // SAFETY: shutdown(2) on a descriptor this thread owns; no pointers.
            unsafe { libc::shutdown(to_host.as_raw_fd(), libc::SHUT_RDWR) };
        })?;
    let input = copy_frames(conn, &master);
    // The host went away (or sent garbage): hang the shell up.
    // SAFETY: kill(2) with integer arguments; the shell leads its own process group.
    unsafe {
        libc::kill(-pid, libc::SIGHUP);
        libc::kill(-pid, libc::SIGKILL);
    }
    drop(shell);
    let _ = output.join();
    tracing::info!(pid, "debug console: shell ended");
    input
}

/// Applies the host's frames to the pty until the host closes or sends a bad frame.
fn copy_frames(mut conn: File, master: &OwnedFd) -> io::Result<()> {
    let mut to_pty = File::from(master.try_clone()?);
    let mut decoder = FrameDecoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The output side shut the connection down: the shell is gone.
            Err(_) => return Ok(()),
        };
        let frames = decoder
            .push(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        for frame in frames {
            match frame {
                ConsoleFrame::Data(bytes) => to_pty.write_all(&bytes)?,
                ConsoleFrame::Resize { rows, columns } => resize(master, rows, columns)?,
            }
        }
    }
}

/// `/bin/sh` with the pty's slave as its terminal, in `/`.
fn spawn_shell(slave: OwnedFd) -> io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(SHELL);
    cmd.arg("-i")
        .current_dir("/")
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/")
        .env("TERM", "xterm")
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    // SAFETY: setsid(2) and ioctl(TIOCSCTTY) are async-signal-safe and use no memory of the
    // parent's; fd 0 is the pty slave set up by Command.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}
