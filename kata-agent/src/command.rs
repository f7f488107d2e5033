//! Running a helper program from the agent (a guest hook, iptables) with the agent's reaper.
//!
//! The agent reaps every child with `waitpid(-1)` ([`crate::reaper`]), so `std::process`'s own
//! wait could find its child already reaped. A helper is forked under the reaper's lock and
//! waited for through it, its input written and its output read from threads, within a time
//! limit after which it is killed.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::reaper::Reaper;

/// The most of a helper's output that is kept, per stream.
pub const MAX_OUTPUT: u64 = 1 << 20;

/// How a helper ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Its shell-style status (128 + signal when killed).
    pub status: i32,
    /// Its standard output (at most [`MAX_OUTPUT`] bytes).
    pub stdout: Vec<u8>,
    /// Its standard error (at most [`MAX_OUTPUT`] bytes).
    pub stderr: Vec<u8>,
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(r) = r {
            let _ = r.take(MAX_OUTPUT).read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `path` with `argv[0]` `arg0` (the path when `None`) and `args`, `stdin` as its input,
/// waiting at most `timeout` (then killing it). `Err` says why it could not be run or did not
/// finish, naming it.
pub async fn run(
    reaper: &Reaper,
    path: &Path,
    arg0: Option<&str>,
    args: &[String],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Output, String> {
    let mut pipes = None;
    let (pid, exit) = reaper
        .spawn(|| {
            let mut cmd = Command::new(path);
            if let Some(a) = arg0 {
                cmd.arg0(a);
            }
            let mut child = cmd
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let pid = child.id() as i32;
            pipes = Some((child.stdin.take(), child.stdout.take(), child.stderr.take()));
            // The reaper waits for it: the handle is dropped unwaited.
            drop(child);
            Ok(pid)
        })
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let (input, out, err) = pipes.unwrap_or_default();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut input) = input {
            // A helper that does not read its input is not an error.
            let _ = input.write_all(&data);
        }
    });
    let (out, err) = (drain(out), drain(err));
    let code = match tokio::time::timeout(timeout, exit.wait()).await {
        Ok(code) => code,
        Err(_) => {
            // SAFETY: kill(2) of a pid the reaper tracks and has not reaped (so not reused).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = exit.wait().await;
            return Err(format!(
                "{} did not finish within {}s: killed",
                path.display(),
                timeout.as_secs_f32()
            ));
        }
    };
    let _ = writer.join();
    Ok(Output {
        status: code.status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
