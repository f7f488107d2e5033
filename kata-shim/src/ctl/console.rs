//! `shim-ctl console <sandbox>`: a root shell in the sandbox's guest, on this terminal.
//!
//! The sandbox is [restored](kata_sandbox::Sandbox::restore) like for every shim-ctl command,
//! its debug console opened ([`kata_sandbox::Sandbox::debug_console`]: refused naming
//! `debug_console_enabled` when the sandbox was started without it), and the terminal put in
//! raw mode until the shell exits; its window size follows this terminal's. Then the sandbox
//! is detached again. A sandbox a running containerd shim owns is refused (its shim holds
//! the VM; the console does not go through the shim's management socket yet).

use std::io::{IsTerminal, Read};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::lifecycle::{block_on, detach, restore, root};
use super::{Options, EXIT_OK};

/// How often the terminal's size is looked at.
const WINDOW_POLL: Duration = Duration::from_millis(200);

/// Runs `console`.
pub fn run(options: &Options, id: &str) -> i32 {
    let root = root(options);
    if kata_shim::monitor::socket_path(&root.join(id)).exists() {
        eprintln!(
            "shim-ctl console: sandbox `{id}` is run by a containerd shim: shim-ctl opens the console only of sandboxes it created (shim-ctl create)"
        );
        return super::EXIT_FAILED;
    }
    block_on("console", async {
        let sandbox = restore(&root, id).await?;
        let result = session(&sandbox).await;
        detach(sandbox).await?;
        result
    })
}

/// Copies this terminal to the shell and back until the shell exits.
async fn session(sandbox: &kata_sandbox::Sandbox) -> Result<i32, String> {
    let console = sandbox.debug_console().await.map_err(|e| e.to_string())?;
    let (mut output, mut input) = console.split();
    let _raw = RawMode::enter();
    let mut size = window_size();
    if let Some((rows, cols)) = size {
        input.resize(rows, cols).await.map_err(|e| e.to_string())?;
    }
    // Stdin on a thread of its own: a blocking read must not hold the runtime's shutdown.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let typing = async move {
        let mut tick = tokio::time::interval(WINDOW_POLL);
        loop {
            tokio::select! {
                bytes = rx.recv() => match bytes {
                    Some(b) => input.write(&b).await?,
                    // This side's input ended: the shell is hung up.
                    None => return input.close().await,
                },
                _ = tick.tick() => {
                    let now = window_size();
                    if now != size {
                        size = now;
                        if let Some((rows, cols)) = now {
                            input.resize(rows, cols).await?;
                        }
                    }
                }
            }
        }
    };
    let shown = async {
        let mut stdout = tokio::io::stdout();
        let copied = tokio::io::copy(&mut output, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    };
    // The shell's output ending (it exited) ends the session.
    tokio::select! {
        r = shown => r.map(|_| EXIT_OK).map_err(|e| format!("reading the debug console: {e}")),
        r = typing => r.map(|_| EXIT_OK).map_err(|e| e.to_string()),
    }
}

/// This terminal's rows and columns, when stdin is one.
fn window_size() -> Option<(u16, u16)> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    // SAFETY: winsize is plain old data; all-zero is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which lives for the call.
    let r = unsafe { libc::ioctl(stdin.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The terminal in raw mode until dropped (nothing when stdin is not a terminal).
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}
