//! `shim-ctl console <sandbox>`: a root shell in the sandbox's guest, on this terminal.
//!
//! A sandbox a running containerd shim owns (its management socket exists) is reached through
//! that shim ([`kata_shim::monitor_console`]: the shim holds the VM and relays the console).
//! Any other sandbox is [restored](kata_sandbox::Sandbox::restore) like for every shim-ctl
//! command, its debug console opened ([`kata_sandbox::Sandbox::debug_console`]) and the sandbox
//! detached again afterwards. Either way a sandbox started without `[agent.kata]
//! debug_console_enabled = true` is refused naming the key, and the terminal is in raw mode
//! until the shell exits, its window size following this terminal's.

use std::io::{IsTerminal, Read};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt};

use super::lifecycle::{block_on, detach, restore, root};
use super::{Options, EXIT_OK};

/// How often the terminal's size is looked at.
const WINDOW_POLL: Duration = Duration::from_millis(200);

/// Runs `console`.
pub fn run(options: &Options, id: &str) -> i32 {
    let root = root(options);
    if let Err(e) = kata_sandbox::validate_id(id) {
        eprintln!("shim-ctl console: {e}");
        return super::EXIT_FAILED;
    }
    let socket = kata_shim::monitor::socket_path(&root.join(id));
    if socket.exists() {
        return block_on("console", async {
            let console = kata_shim::monitor_console::open(&socket)
                .await
                .map_err(|e| e.to_string())?;
            session(Box::new(console.output), Input::Shim(console.input)).await
        });
    }
    block_on("console", async {
        let sandbox = restore(&root, id).await?;
        let result = match sandbox.debug_console().await {
            Ok(console) => {
                let (output, input) = console.split();
                session(Box::new(output), Input::Direct(input)).await
            }
            Err(e) => Err(e.to_string()),
        };
        detach(sandbox).await?;
        result
    })
}

/// Where typing goes: the sandbox's console (a sandbox shim-ctl restored) or the shim's relay.
enum Input {
    Direct(kata_sandbox::DebugConsoleInput),
    Shim(kata_shim::monitor_console::ConsoleInput),
}

impl Input {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            Input::Direct(i) => i.write(bytes).await.map_err(|e| e.to_string()),
            Input::Shim(i) => i
                .write(bytes)
                .await
                .map_err(|e| format!("writing to the shim: {e}")),
        }
    }

    async fn resize(&mut self, rows: u16, columns: u16) -> Result<(), String> {
        match self {
            Input::Direct(i) => i.resize(rows, columns).await.map_err(|e| e.to_string()),
            Input::Shim(i) => i
                .resize(rows, columns)
                .await
                .map_err(|e| format!("writing to the shim: {e}")),
        }
    }
}

/// Copies this terminal to the shell and back until the shell exits.
async fn session(
    mut output: Box<dyn AsyncRead + Unpin + Send>,
    mut input: Input,
) -> Result<i32, String> {
    let _raw = RawMode::enter();
    let size = window_size();
    if let Some((rows, cols)) = size {
        input.resize(rows, cols).await?;
    }
    // Stdin on a thread of its own: a blocking read must not hold the runtime's shutdown.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let typing = type_into(input, rx, size);
    let shown = async {
        let mut stdout = tokio::io::stdout();
        let copied = tokio::io::copy(&mut output, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    };
    // The shell's output ending (it exited) ends the session.
    tokio::select! {
        r = shown => r.map(|_| EXIT_OK).map_err(|e| format!("reading the debug console: {e}")),
        Err(e) = typing => Err(e),
    }
}

/// Sends what is typed (`rx`) and this terminal's window size (polled; `size` the last sent)
/// to the shell; returns only on an error. This side's input ending (a script piped in) does
/// not hang the shell up: it runs what it was sent, and the session ends when it exits (as
/// Kata's console does).
async fn type_into(
    mut input: Input,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut size: Option<(u16, u16)>,
) -> Result<std::convert::Infallible, String> {
    let mut tick = tokio::time::interval(WINDOW_POLL);
    let mut typing = true;
    loop {
        tokio::select! {
            bytes = rx.recv(), if typing => match bytes {
                Some(b) => input.write(&b).await?,
                None => typing = false,
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
