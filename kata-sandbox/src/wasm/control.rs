//! What the host controls of a running module, through wasmtime's epoch interruption: kill,
//! pause, the CPU quota and the memory limit.
//!
//! A [`Ticker`] thread increments the engine's epoch every [`TICK`] while a module of the
//! sandbox runs. Every store has a deadline of one tick; when it passes, the store's callback
//! ([`Control::on_epoch`]) runs on the module's own thread, between two WebAssembly
//! instructions, and decides: stop (killed: the call ends in a [`Killed`] error), wait (paused,
//! or the CPU quota of the period is spent), or run one more tick.
//!
//! **CPU quota → epoch deadline.** `linux.resources.cpu.quota` and `.period` (CFS bandwidth:
//! `quota` µs of CPU per `period` µs, 100 ms when unset) become a budget of the module thread's
//! own CPU time (`CLOCK_THREAD_CPUTIME_ID`) per period of wall time. At each deadline (one
//! tick) the time used since the period began is compared with the quota; once it is spent,
//! the thread sleeps until the period ends, and a new period begins. The check runs once a
//! tick, so a module may overrun its quota by up to one tick per period; time spent blocked in
//! a host call (reading stdin) is not CPU time and is not charged. `quota <= 0` is no limit.
//!
//! **Memory.** [`MemoryLimiter`], the store's `ResourceLimiter`, keeps the sum of the module's
//! linear memories within `linux.resources.memory.limit` (bytes; `<= 0` is no limit): a
//! `memory.grow` past it returns -1 to the module, a module whose memories start larger fails
//! to instantiate. Its usage is what [`stats`](super::WasmContainer) reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kata_agent_client::Signal;
use tokio::sync::watch;

/// How often the engine's epoch advances while a module runs: the latency of kill and pause,
/// and the granularity of the CPU quota.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// CFS's default period, when `linux.resources.cpu.period` is unset.
const DEFAULT_PERIOD: Duration = Duration::from_millis(100);

/// The error a module's call ends with when it was killed (the signal is its exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Killed(pub Signal);

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "killed by signal {}", self.0.number())
    }
}

impl std::error::Error for Killed {}

/// Kill, pause and CPU state of one module, shared by the handler and the module's thread.
#[derive(Debug)]
pub(super) struct Control {
    state: Mutex<RunState>,
    changed: Condvar,
    /// `true` once killed: the stdio streams end on it (a module blocked reading stdin).
    killed_tx: watch::Sender<bool>,
    cpu: Mutex<CpuBudget>,
    /// The module thread's CPU time, as of its last deadline.
    cpu_used_ns: AtomicU64,
}

#[derive(Debug, Default)]
struct RunState {
    killed: Option<Signal>,
    /// The container is paused.
    paused: bool,
    /// The whole sandbox is paused.
    sandbox_paused: bool,
}

impl Control {
    /// A control for a module that may run (not killed, not paused), with `cpu` as its quota.
    pub(super) fn new(cpu: CpuBudget, sandbox_paused: bool) -> Arc<Control> {
        Arc::new(Control {
            state: Mutex::new(RunState {
                sandbox_paused,
                ..RunState::default()
            }),
            changed: Condvar::new(),
            killed_tx: watch::channel(false).0,
            cpu: Mutex::new(cpu),
            cpu_used_ns: AtomicU64::new(0),
        })
    }

    /// Kills the module: its call ends at the next deadline, its stdio streams now. The first
    /// signal is kept.
    pub(super) fn kill(&self, signal: Signal) {
        let mut s = self.state.lock().unwrap();
        s.killed.get_or_insert(signal);
        self.changed.notify_all();
        drop(s);
        self.killed_tx.send_replace(true);
    }

    /// The signal it was killed with, if it was.
    pub(super) fn killed(&self) -> Option<Signal> {
        self.state.lock().unwrap().killed
    }

    /// Resolves once the module is killed (for the stdio streams).
    pub(super) fn on_kill(&self) -> watch::Receiver<bool> {
        self.killed_tx.subscribe()
    }

    /// Pauses (`true`) or resumes the container.
    pub(super) fn set_paused(&self, paused: bool) {
        self.state.lock().unwrap().paused = paused;
        self.changed.notify_all();
    }

    /// Pauses (`true`) or resumes it with the whole sandbox.
    pub(super) fn set_sandbox_paused(&self, paused: bool) {
        self.state.lock().unwrap().sandbox_paused = paused;
        self.changed.notify_all();
    }

    /// Sets the CPU quota (`linux.resources.cpu`) from now on.
    pub(super) fn set_cpu(&self, budget: CpuBudget) {
        *self.cpu.lock().unwrap() = budget;
        self.changed.notify_all();
    }

    /// The module thread's CPU time so far, in nanoseconds.
    pub(super) fn cpu_used_ns(&self) -> u64 {
        self.cpu_used_ns.load(Ordering::Relaxed)
    }

    /// Runs on the module's thread at each epoch deadline: records its CPU time, waits while
    /// it is paused or its quota is spent, and fails with [`Killed`] once it is killed.
    pub(super) fn on_epoch(&self) -> Result<(), Killed> {
        let cpu = thread_cpu_time();
        self.cpu_used_ns
            .store(cpu.as_nanos() as u64, Ordering::Relaxed);
        let throttle = self.cpu.lock().unwrap().charge(cpu, Instant::now());
        let mut s = self.state.lock().unwrap();
        if let Some(until) = throttle {
            while s.killed.is_none() {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                s = self.changed.wait_timeout(s, until - now).unwrap().0;
            }
        }
        while s.killed.is_none() && (s.paused || s.sandbox_paused) {
            s = self.changed.wait(s).unwrap();
        }
        match s.killed {
            Some(signal) => Err(Killed(signal)),
            None => Ok(()),
        }
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A CPU quota per period of wall time, and what was used of it (see the module doc).
#[derive(Debug, Clone, Default)]
pub(super) struct CpuBudget {
    /// `(quota, period)`; `None`: no limit.
    limit: Option<(Duration, Duration)>,
    /// When the current period began, and the thread's CPU time then.
    period_start: Option<(Instant, Duration)>,
}

impl CpuBudget {
    /// The budget `linux.resources.cpu` asks for: `quota` µs per `period` µs (100 ms when
    /// unset); no quota, or one `<= 0`, is no limit.
    pub(super) fn from_spec(quota: Option<i64>, period: Option<u64>) -> CpuBudget {
        let limit = quota.filter(|q| *q > 0).map(|q| {
            let period = period
                .filter(|p| *p > 0)
                .map_or(DEFAULT_PERIOD, Duration::from_micros);
            (Duration::from_micros(q as u64), period)
        });
        CpuBudget {
            limit,
            period_start: None,
        }
    }

    /// The quota and period, if limited.
    #[cfg(test)]
    pub(super) fn limit(&self) -> Option<(Duration, Duration)> {
        self.limit
    }

    /// Charges the thread's CPU time `cpu` at wall time `now`: `Some(t)` when the period's
    /// quota is spent and the thread must wait until `t` (the next period then starts at `t`).
    pub(super) fn charge(&mut self, cpu: Duration, now: Instant) -> Option<Instant> {
        let (quota, period) = self.limit?;
        let (start, cpu_at_start) = *self.period_start.get_or_insert((now, cpu));
        if now.duration_since(start) >= period {
            self.period_start = Some((now, cpu));
            return None;
        }
        if cpu.saturating_sub(cpu_at_start) >= quota {
            let next = start + period;
            self.period_start = Some((next, cpu));
            return Some(next);
        }
        None
    }
}

/// Memory of a module's linear memories, for `ResourceLimiter` and stats.
#[derive(Debug, Default)]
pub(super) struct MemoryUse {
    /// Bytes now.
    pub(super) current: AtomicU64,
    /// Most bytes seen.
    pub(super) max: AtomicU64,
    /// Growths refused by the limit.
    pub(super) failcnt: AtomicU64,
    /// The limit in bytes (0: none); [`update`](super::WasmContainer) changes it.
    pub(super) limit: AtomicU64,
}

impl MemoryUse {
    /// A tracker with `limit` bytes (`<= 0`, or none: no limit).
    pub(super) fn new(limit: Option<i64>) -> Arc<MemoryUse> {
        let m = MemoryUse::default();
        m.set_limit(limit);
        Arc::new(m)
    }

    /// Sets the limit (`<= 0`, or none: no limit).
    pub(super) fn set_limit(&self, limit: Option<i64>) {
        let bytes = limit.filter(|l| *l > 0).unwrap_or(0) as u64;
        self.limit.store(bytes, Ordering::Relaxed);
    }
}

/// The store's `ResourceLimiter`: the sum of the linear memories within the limit.
#[derive(Debug)]
pub(super) struct MemoryLimiter(pub(super) Arc<MemoryUse>);

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let m = &self.0;
        let now = m.current.load(Ordering::Relaxed);
        let after = now.saturating_sub(current as u64) + desired as u64;
        let limit = m.limit.load(Ordering::Relaxed);
        if limit > 0 && after > limit {
            m.failcnt.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        m.current.store(after, Ordering::Relaxed);
        m.max.fetch_max(after, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// The thread that advances an engine's epoch every [`TICK`] while a module runs (idle, it
/// waits). Stopped and joined on drop.
#[derive(Debug)]
pub(super) struct Ticker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TickerShared {
    /// Modules running, and whether the ticker is to stop.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

/// Keeps the ticker running while held (one per running module).
#[derive(Debug)]
pub(super) struct Ticking(Arc<TickerShared>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().0 -= 1;
    }
}

impl Ticker {
    /// Starts the ticker of `engine`.
    pub(super) fn start(engine: wasmtime::Engine, name: &str) -> std::io::Result<Ticker> {
        let shared = Arc::new(TickerShared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("wasm-epoch-{name}"))
            .spawn(move || loop {
                {
                    let mut st = s.state.lock().unwrap();
                    while st.0 == 0 && !st.1 {
                        st = s.changed.wait(st).unwrap();
                    }
                    if st.1 {
                        return;
                    }
                }
                std::thread::sleep(TICK);
                engine.increment_epoch();
            })?;
        Ok(Ticker {
            shared,
            thread: Some(thread),
        })
    }

    /// Ticks until the returned guard is dropped.
    pub(super) fn ticking(&self) -> Ticking {
        self.shared.state.lock().unwrap().0 += 1;
        self.shared.changed.notify_all();
        Ticking(self.shared.clone())
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().1 = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_spent_quota_waits_for_the_next_period_and_no_quota_never_waits() {
        // 20 ms per 100 ms.
        let mut b = CpuBudget::from_spec(Some(20_000), Some(100_000));
        let t0 = Instant::now();
        assert_eq!(b.charge(Duration::ZERO, t0), None);
        assert_eq!(b.charge(10 * MS, t0 + 10 * MS), None);
        assert_eq!(b.charge(20 * MS, t0 + 20 * MS), Some(t0 + 100 * MS));
        // The next period starts where the wait ends, charged from the CPU time at the wait.
        assert_eq!(b.charge(21 * MS, t0 + 100 * MS), None);
        assert_eq!(b.charge(39 * MS, t0 + 119 * MS), None);
        assert_eq!(b.charge(41 * MS, t0 + 120 * MS), Some(t0 + 200 * MS));
        // A period that passed without spending the quota starts afresh.
        assert_eq!(b.charge(42 * MS, t0 + 350 * MS), None);

        let mut none = CpuBudget::from_spec(None, Some(100_000));
        assert_eq!(none.charge(Duration::from_secs(9), t0), None);
        let mut zero = CpuBudget::from_spec(Some(-1), None);
        assert_eq!(zero.limit(), None);
        assert_eq!(zero.charge(Duration::from_secs(9), t0), None);
        // The default period.
        assert_eq!(
            CpuBudget::from_spec(Some(5000), None).limit(),
            Some((5 * MS, 100 * MS))
        );
    }

    #[test]
    fn memory_growth_past_the_limit_is_refused_and_counted() {
        use wasmtime::ResourceLimiter;
        let use_ = MemoryUse::new(Some(3 * 65536));
        let mut l = MemoryLimiter(use_.clone());
        assert!(l.memory_growing(0, 65536, None).unwrap());
        assert!(l.memory_growing(65536, 3 * 65536, None).unwrap());
        assert!(!l.memory_growing(3 * 65536, 4 * 65536, None).unwrap());
        assert_eq!(use_.current.load(Ordering::Relaxed), 3 * 65536);
        assert_eq!(use_.failcnt.load(Ordering::Relaxed), 1);
        use_.set_limit(None);
        assert!(l.memory_growing(3 * 65536, 40 * 65536, None).unwrap());
        assert_eq!(use_.max.load(Ordering::Relaxed), 40 * 65536);
    }

    #[test]
    fn a_kill_ends_a_pause_and_is_reported_at_the_next_deadline() {
        let c = Control::new(CpuBudget::default(), false);
        c.set_paused(true);
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || c2.on_epoch());
        std::thread::sleep(20 * MS);
        assert!(!waiter.is_finished(), "a paused module waits");
        c.kill(Signal::TERM);
        assert_eq!(waiter.join().unwrap(), Err(Killed(Signal::TERM)));
        assert!(*c.on_kill().borrow());
        assert_eq!(c.killed(), Some(Signal::TERM));
    }
}
