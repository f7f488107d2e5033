//! Is the guest working, or idle? The signal `wait_ready` uses before it boots a VM once more.
//!
//! A VM whose agent does not answer is either still booting (its vCPU thread runs, or waits
//! for a CPU on a loaded host) or booted with a stuck vsock backend (its vCPU halts: the guest
//! idles in the agent's `accept`). Only the second gains from a fresh boot; rebooting the first
//! throws its work away (16 TCG boots on 2 cores each took longer than a third of the agent
//! timeout, so every one was rebooted and every start failed). The kernel's per-thread
//! schedstat tells them apart: time on a CPU plus time waiting on a run queue. An idle guest
//! has little of either.

use std::path::Path;
use std::time::Duration;

/// A VM is idle when its QEMU's threads ran or waited to run for less than this share of a
/// window (one CPU's worth). A halted TCG guest with an idle agent stays well under 5%.
pub(crate) const IDLE_SHARE: f64 = 0.15;

/// How long `wait_ready` watches a silent VM before deciding.
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

/// The sum over the process's threads of (time on a CPU + time waiting on a run queue), in
/// nanoseconds, from `<proc>/<pid>/task/*/schedstat`; `None` when the process is gone or the
/// kernel has no schedstat.
pub(crate) fn demand_ns(proc_root: &Path, pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")).ok()?;
    let mut total = 0u64;
    let mut seen = false;
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(run)), Some(Ok(wait))) = (fields.next(), fields.next()) {
            total = total.saturating_add(run).saturating_add(wait);
            seen = true;
        }
    }
    seen.then_some(total)
}

/// Whether a process whose demand went from `before` to `after` over `window` was idle.
pub(crate) fn idle(before: u64, after: u64, window: Duration) -> bool {
    let used = after.saturating_sub(before) as f64;
    used < IDLE_SHARE * window.as_nanos() as f64
}

/// Watches `pid` for [`WINDOW`]: `Some(true)` if it was idle, `Some(false)` if it ran or wanted
/// to, `None` if it cannot be told (no schedstat, or the process went away).
pub(crate) async fn watch(pid: u32) -> Option<bool> {
    let proc_root = Path::new("/proc");
    let before = demand_ns(proc_root, pid)?;
    tokio::time::sleep(WINDOW).await;
    let after = demand_ns(proc_root, pid)?;
    Some(idle(before, after, WINDOW))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(threads: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (i, s) in threads.iter().enumerate() {
            let dir = root.path().join("42/task").join((100 + i).to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("schedstat"), s).unwrap();
        }
        root
    }

    #[test]
    fn demand_sums_run_and_wait_of_every_thread() {
        let root = fixture(&["1000 500 7\n", "20 30 1\n", "garbage\n"]);
        assert_eq!(demand_ns(root.path(), 42), Some(1550));
        assert_eq!(demand_ns(root.path(), 43), None, "no such process");
        let root = fixture(&["x y\n"]);
        assert_eq!(demand_ns(root.path(), 42), None, "nothing parsable");
    }

    #[test]
    fn a_starved_or_busy_guest_is_not_idle() {
        let w = Duration::from_secs(2);
        // Halted: a few ms of timer work in 2 s.
        assert!(idle(0, 10_000_000, w));
        // Booting on a CPU of its own: most of the window on a CPU.
        assert!(!idle(0, 1_800_000_000, w));
        // Starved: little CPU, but runnable and waiting most of the window.
        assert!(!idle(0, 50_000_000 + 1_500_000_000, w));
        // A counter that went backwards (a new process) counts as idle, never a panic.
        assert!(idle(5, 0, w));
    }

    #[tokio::test]
    async fn this_test_process_while_it_spins_is_not_idle() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let spinner = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let busy = watch(std::process::id()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        assert_eq!(
            busy,
            Some(false),
            "a spinning thread's process counted as idle"
        );
    }
}
