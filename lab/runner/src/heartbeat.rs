//! The runner's heartbeat and stall report (see [`kata_lab::protocol::ALIVE_PREFIX`]).
//!
//! A thread of its own prints `lab-alive <seconds>` every
//! [`HEARTBEAT_EVERY`](kata_lab::protocol::HEARTBEAT_EVERY) whatever the checks do, so the host
//! can tell a frozen L1 (silence) from a hang of our own code (heartbeats, no check line). When
//! no check line came for [`STALL_AFTER`], it prints once per such period what L1's processes
//! are doing (`lab-stall ...`: pid, state, kernel wait channel, name), the evidence a hang of
//! the runner or of what it drives (containerd, a shim, QEMU) leaves for the CI log.

use std::time::{Duration, Instant};

use kata_lab::protocol::{since_last_check, ALIVE_PREFIX, HEARTBEAT_EVERY, STALL_AFTER};

/// Starts the heartbeat thread; it beats until the process exits.
pub fn start() {
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("lab-heartbeat".into())
        .spawn(move || {
            let mut last_stall: Option<Instant> = None;
            loop {
                std::thread::sleep(HEARTBEAT_EVERY);
                println!("{ALIVE_PREFIX}{}", started.elapsed().as_secs());
                let quiet = since_last_check();
                let due = last_stall.is_none_or(|t| t.elapsed() >= STALL_AFTER);
                if quiet >= STALL_AFTER && due {
                    println!("{}", stall_line(quiet, &processes()));
                    last_stall = Some(Instant::now());
                }
            }
        });
    if let Err(e) = spawned {
        // Without it the host cannot tell a hang from a freeze; the checks still run.
        eprintln!("kata-lab: no heartbeat thread: {e}");
    }
}

/// One process as the stall report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    /// `R`, `S`, `D`, ... from `/proc/<pid>/stat`.
    state: String,
    /// The kernel function it sleeps in (`/proc/<pid>/wchan`), `0` when running.
    wchan: String,
    /// The first 60 characters of its command line.
    cmd: String,
}

/// The user-space processes of L1 (a command line of their own; kernel threads have none).
fn processes() -> Vec<Proc> {
    let mut out: Vec<Proc> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            if cmd.is_empty() {
                return None;
            }
            let cmd: String = String::from_utf8_lossy(&cmd)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .chars()
                .take(60)
                .collect();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat_state(&stat)?.to_string();
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            Some(Proc {
                pid,
                state,
                wchan,
                cmd,
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The state field of a `/proc/<pid>/stat` line (after the parenthesised name, which may hold
/// spaces and parentheses itself).
fn stat_state(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().next()
}

/// `lab-stall no check line for <s> s; processes: <pid> <state> <wchan> <cmd>; ...` (one line).
fn stall_line(quiet: Duration, procs: &[Proc]) -> String {
    let list: Vec<String> = procs
        .iter()
        .take(40)
        .map(|p| format!("{} {} {} {}", p.pid, p.state, p.wchan.trim(), p.cmd))
        .collect();
    format!(
        "lab-stall no check line for {} s; processes: {}",
        quiet.as_secs(),
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_read_past_a_name_with_parentheses() {
        assert_eq!(stat_state("42 (a (b) c) S 1 42 42"), Some("S"));
        assert_eq!(stat_state("7 (kata-lab) D 1"), Some("D"));
        assert_eq!(stat_state("no name"), None);
    }

    #[test]
    fn this_process_is_listed_with_its_state() {
        let me = std::process::id();
        let procs = processes();
        let p = procs.iter().find(|p| p.pid == me).expect("this process");
        assert!(["R", "S"].contains(&p.state.as_str()), "{p:?}");
        assert!(!p.cmd.is_empty(), "{p:?}");
        let line = stall_line(Duration::from_secs(301), &procs);
        assert!(line.starts_with("lab-stall no check line for 301 s; processes: "));
        assert!(line.contains(&format!("{me} ")), "{line}");
        assert!(!line.contains('\n'));
    }
}
