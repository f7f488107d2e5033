//! Which signal SignalProcess delivers: Kata's rule for a container's init process.
//!
//! The init process of a container is PID 1 of its PID namespace, and the kernel drops a
//! signal sent to such a process unless the process handles it. A SIGTERM to an init that
//! neither catches, ignores nor blocks SIGTERM would do nothing, so Kata's agent sends
//! SIGKILL instead (a `ctr task kill` or a `docker stop` of `sleep` then ends at once rather
//! than after the runtime's grace period). kata-rs's agent follows it.

/// The signal to deliver for `signal` sent to a process whose `/proc/<pid>/status` reads
/// `status` (`None`: unreadable): SIGKILL for a SIGTERM to a container's init process that
/// does not handle SIGTERM, else `signal` as asked.
pub fn effective_signal(signal: i32, is_init: bool, status: Option<&str>) -> i32 {
    if !is_init || signal != libc::SIGTERM {
        return signal;
    }
    match status {
        Some(text) if !handles(text, signal) => libc::SIGKILL,
        _ => signal,
    }
}

/// Whether the process whose status is `status` catches, ignores or blocks `signal`
/// (its `SigCgt`, `SigIgn` or `SigBlk` mask has the signal's bit).
fn handles(status: &str, signal: i32) -> bool {
    let Some(bit) = u32::try_from(signal)
        .ok()
        .filter(|s| (1..=64).contains(s))
        .map(|s| 1u64 << (s - 1))
    else {
        return true;
    };
    status
        .lines()
        .filter_map(|line| {
            ["SigCgt:", "SigIgn:", "SigBlk:"]
                .iter()
                .find_map(|key| line.strip_prefix(key))
        })
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & bit != 0)
}

/// `/proc/<pid>/status` of a process, if it can be read.
pub fn proc_status(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_HANDLERS: &str = "Name:\tsleep\nSigBlk:\t0000000000000000\n\
                               SigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n";

    #[test]
    fn sigterm_to_an_init_without_a_handler_becomes_sigkill() {
        assert_eq!(
            effective_signal(libc::SIGTERM, true, Some(NO_HANDLERS)),
            libc::SIGKILL
        );
    }

    #[test]
    fn a_handled_sigterm_other_signals_and_execs_are_left_alone() {
        // SIGTERM is signal 15: bit 14, 0x4000.
        for key in ["SigCgt", "SigIgn", "SigBlk"] {
            let status = NO_HANDLERS.replace(
                &format!("{key}:\t0000000000000000"),
                &format!("{key}:\t0000000000004000"),
            );
            assert_eq!(
                effective_signal(libc::SIGTERM, true, Some(&status)),
                libc::SIGTERM,
                "{key}"
            );
        }
        assert_eq!(
            effective_signal(libc::SIGTERM, false, Some(NO_HANDLERS)),
            libc::SIGTERM
        );
        assert_eq!(
            effective_signal(libc::SIGINT, true, Some(NO_HANDLERS)),
            libc::SIGINT
        );
        // A process already gone: nothing to decide.
        assert_eq!(effective_signal(libc::SIGTERM, true, None), libc::SIGTERM);
    }
}
