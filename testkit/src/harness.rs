//! The harness of the VM-tier test binaries (`harness = false` in Cargo.toml): a list of
//! named cases, the filter from the command line, a timeout per case, the tally, the
//! `booted ...` / `no-guest ...` lines of `$KATA_RS_VM_TEST_LOG` that `make vm-summary`
//! counts, and leak checks after each case and after the run.
//!
//! A binary is its cases and one [`Suite`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use anyhow::{ensure, Context, Result};
//! use kata_testkit::harness::{booted, NoGuest, Suite};
//!
//! struct Env {
//!     answer: u32, // a booted sandbox, its paths...
//! }
//!
//! async fn boot() -> Result<Env> {
//!     let env = Env { answer: 42 }; // e.g. `Sandbox::builder().build().await.context(NoGuest)?`
//!     booted(); // appends `booted vm_example` to $KATA_RS_VM_TEST_LOG
//!     Ok(env)
//! }
//!
//! async fn answer(env: Arc<Env>) -> Result<()> {
//!     ensure!(env.answer == 42, "answer {}", env.answer);
//!     Ok(())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Suite::new("vm_example")
//!         .case("answer", answer)
//!         .blocking_case("answer_again", |env: &Env| {
//!             ensure!(env.answer == 42);
//!             Ok(())
//!         })
//!         .check_each(|_env: &Env| Ok(())) // e.g. nothing mounted, no process left
//!         .teardown("shutdown_leaves_nothing", |_env: Env| async { Ok(()) })
//!         .run_with(boot())
//! }
//! ```
//!
//! What a run does, in order: `--list` prints the cases and stops; a failed
//! [`requires`](Suite::requires) check prints `<suite> COULD NOT RUN: <reason>`, records
//! `no-guest <suite>: <reason>` and succeeds (the summary of `make test` fails on it, loudly);
//! the setup future builds the environment the cases share (a failure fails every selected
//! case, and records `no-guest` when the error carries [`NoGuest`]); each selected case runs
//! in its own task under its timeout, then [`check_each`](Suite::check_each) if it passed, then
//! [`on_failure`](Suite::on_failure) if either failed; [`leak_check`](Suite::leak_check) and
//! [`teardown`](Suite::teardown) run last, reported as cases. Every case prints
//! `test <name> ... ok (<time>)` or `test <name> ... FAILED (<time>)` and its error; the last
//! line is `<label>: N passed, M failed; K booted a guest` and the exit status fails when a
//! case failed.
//!
//! Command line (as libtest's, for `cargo test --test <binary> -- <args>`): words are filters
//! (a case runs when its name contains one of them), `--exact` makes them whole names,
//! `--skip <word>` leaves cases out, `--list` lists, `--ignored` selects nothing (there are no
//! ignored cases); libtest's other options are accepted and ignored.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

/// The default timeout of a case.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Marks an error as "this test could not boot (or reach) a guest": a failed setup or case
/// whose error carries it records `no-guest <suite>[::<case>]: <error>` in
/// `$KATA_RS_VM_TEST_LOG`, which fails `make test`'s summary by name. Attach it with
/// `anyhow::Context`: `Sandbox::builder().build().await.context(NoGuest)?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoGuest;

impl std::fmt::Display for NoGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("THIS VM TEST COULD NOT BOOT A GUEST")
    }
}

impl std::error::Error for NoGuest {}

/// Whether `e` carries [`NoGuest`] (as context or as the error itself).
pub fn is_no_guest(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NoGuest>().is_some() || e.chain().any(|c| c.is::<NoGuest>())
}

/// Says that the running case (or the setup, outside a case) booted a real guest: appends
/// `booted <suite>::<case>` (`booted <suite>` from the setup) to `$KATA_RS_VM_TEST_LOG` once
/// per case, and counts it for the summary. Call it once the guest answered; further calls
/// in the same case only count the boots the case's result line shows.
pub fn booted() {
    let line = {
        let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
        let key = run.place();
        run.boots_in_case += 1;
        if !run.booted.insert(key.clone()) {
            return;
        }
        (run.log.clone(), format!("booted {key}"))
    };
    if let (Some(log), line) = line {
        append_line(&log, &line);
    }
}

/// Where the harness is: which suite, which case, what booted. One run at a time per process.
struct Run {
    suite: String,
    case: Option<String>,
    boots_in_case: usize,
    booted: BTreeSet<String>,
    log: Option<PathBuf>,
}

static RUN: Mutex<Run> = Mutex::new(Run {
    suite: String::new(),
    case: None,
    boots_in_case: 0,
    booted: BTreeSet::new(),
    log: None,
});

impl Run {
    /// `<suite>::<case>`, or `<suite>` outside a case.
    fn place(&self) -> String {
        match &self.case {
            Some(case) => format!("{}::{case}", self.suite),
            None => self.suite.clone(),
        }
    }
}

/// Enters `case` (`None`: the setup); returns the boots counted so far in the previous one.
fn enter(case: Option<&str>) -> usize {
    let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    run.case = case.map(str::to_string);
    std::mem::take(&mut run.boots_in_case)
}

/// How long a `failed ...` line of the VM test log may grow: the error's start, on one line.
const FAILED_LINE_CHARS: usize = 600;

/// The VM test log's line for a failed case: `failed <place>: <error>`, the error on one line
/// (`⏎` for its line breaks) and cut after [`FAILED_LINE_CHARS`] characters.
fn failed_line(place: &str, error: &str) -> String {
    let one_line = error.trim().replace('\n', " ⏎ ");
    let mut cut: String = one_line.chars().take(FAILED_LINE_CHARS).collect();
    if cut.len() < one_line.len() {
        cut.push_str(" [...]");
    }
    format!("failed {place}: {cut}")
}

/// Appends `line` to `log`; errors are ignored (the log is a summary aid, not the result).
fn append_line(log: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
type AsyncBody<E> = Arc<dyn Fn(Arc<E>) -> BoxFuture + Send + Sync>;
type BlockingHook<E> = Arc<dyn Fn(&E) -> Result<()> + Send + Sync>;
type Teardown<E> = Box<dyn FnOnce(E) -> BoxFuture>;
type Cleanup<E> = Arc<dyn Fn(&E) + Send + Sync>;
type Requirement = Box<dyn Fn() -> Option<String>>;
type Diagnostics<E> = Box<dyn FnOnce(&E) -> String>;

enum Body<E> {
    Async(AsyncBody<E>),
    Blocking(BlockingHook<E>),
}

struct Case<E> {
    name: String,
    timeout: Option<Duration>,
    body: Body<E>,
}

/// A VM test binary: its cases over a shared environment `E` (a booted sandbox, a private
/// containerd, paths), run by [`run`](Self::run) or [`run_with`](Self::run_with). See the
/// [module](self) for what a run does.
pub struct Suite<E> {
    name: String,
    label: Option<String>,
    timeout: Duration,
    log: Option<PathBuf>,
    cases: Vec<Case<E>>,
    requires: Vec<Requirement>,
    check_each: Option<BlockingHook<E>>,
    on_failure: Option<Cleanup<E>>,
    leak_check: Option<BlockingHook<E>>,
    diagnostics: Option<Diagnostics<E>>,
    teardown: Option<(String, Teardown<E>)>,
}

/// How many cases passed and failed, and how many booted a guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cases (teardown and leak check included) that passed.
    pub passed: usize,
    /// Cases that failed, timed out or panicked; after a failed setup, every selected case.
    pub failed: usize,
    /// Cases (and the setup) that called [`booted`].
    pub booted: usize,
}

impl Tally {
    /// The process exit status: failure when a case failed.
    pub fn exit_code(&self) -> ExitCode {
        if self.failed > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

impl<E: Send + Sync + 'static> Suite<E> {
    /// A suite named as its test binary (`vm_sandbox`): the name starts the `booted` and
    /// `no-guest` lines and the summary.
    pub fn new(name: &str) -> Self {
        Suite {
            name: name.to_string(),
            label: None,
            timeout: DEFAULT_TIMEOUT,
            log: None,
            cases: Vec::new(),
            requires: Vec::new(),
            check_each: None,
            on_failure: None,
            leak_check: None,
            diagnostics: None,
            teardown: None,
        }
    }

    /// The start of the summary line instead of the suite's name (`containerd tests`).
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// The timeout of every case without its own ([`DEFAULT_TIMEOUT`] if not set). A case
    /// that times out fails and its task is aborted (a blocking case's thread cannot be: it
    /// runs on, and the teardown reports that the environment is still held).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The file the `booted`/`no-guest` lines go to, instead of `$KATA_RS_VM_TEST_LOG`.
    pub fn log_to(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    /// A precondition checked before anything else: `Some(reason)` (e.g. from
    /// [`crate::missing_root_or_tools`]) skips the run loudly and records `no-guest`.
    pub fn requires(mut self, check: impl Fn() -> Option<String> + 'static) -> Self {
        self.requires.push(Box::new(check));
        self
    }

    /// An async case: `async fn my_case(env: Arc<Env>) -> anyhow::Result<()>`, run in its own
    /// tokio task.
    pub fn case<F, Fut>(self, name: &str, case: F) -> Self
    where
        F: Fn(Arc<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let body = Body::Async(Arc::new(move |env| Box::pin(case(env)) as BoxFuture));
        self.push(name, None, body)
    }

    /// [`case`](Self::case) with its own timeout.
    pub fn case_with_timeout<F, Fut>(self, name: &str, timeout: Duration, case: F) -> Self
    where
        F: Fn(Arc<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let body = Body::Async(Arc::new(move |env| Box::pin(case(env)) as BoxFuture));
        self.push(name, Some(timeout), body)
    }

    /// A synchronous case, `fn my_case(env: &Env) -> anyhow::Result<()>`, run on tokio's
    /// blocking pool (it may run processes and sleep).
    pub fn blocking_case(
        self,
        name: &str,
        case: impl Fn(&E) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.push(name, None, Body::Blocking(Arc::new(case)))
    }

    fn push(mut self, name: &str, timeout: Option<Duration>, body: Body<E>) -> Self {
        assert!(
            !self.cases.iter().any(|c| c.name == name),
            "case {name} is listed twice"
        );
        self.cases.push(Case {
            name: name.to_string(),
            timeout,
            body,
        });
        self
    }

    /// A leak check after every case that passed (nothing shared, mounted or running that
    /// the case created): its error fails the case.
    pub fn check_each(mut self, check: impl Fn(&E) -> Result<()> + Send + Sync + 'static) -> Self {
        self.check_each = Some(Arc::new(check));
        self
    }

    /// Cleanup after a case that failed (or whose [`check_each`](Self::check_each) failed),
    /// so that it leaves nothing for the next ones: e.g. `kata_sandbox::persist::cleanup`.
    pub fn on_failure(mut self, cleanup: impl Fn(&E) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(Arc::new(cleanup));
        self
    }

    /// A leak check after the last case (before the teardown), reported as case `leak_check`:
    /// e.g. what a containerd run may leave, against a baseline the setup took.
    pub fn leak_check(mut self, check: impl Fn(&E) -> Result<()> + Send + Sync + 'static) -> Self {
        self.leak_check = Some(Arc::new(check));
        self
    }

    /// What to print when something failed (before the teardown): e.g. containerd's log.
    pub fn diagnostics(mut self, report: impl FnOnce(&E) -> String + 'static) -> Self {
        self.diagnostics = Some(Box::new(report));
        self
    }

    /// Takes the environment down after the last case and checks that nothing is left,
    /// reported as case `name`; it runs whenever the setup succeeded and a case was selected.
    pub fn teardown<F, Fut>(mut self, name: &str, teardown: F) -> Self
    where
        F: FnOnce(E) -> Fut + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.teardown = Some((
            name.to_string(),
            Box::new(move |env| Box::pin(teardown(env)) as BoxFuture),
        ));
        self
    }

    /// Runs the cases over `env`, with the command line's arguments; the exit status for
    /// `main`.
    pub fn run(self, env: E) -> ExitCode {
        self.run_with(async move { Ok(env) })
    }

    /// Runs the cases over the environment `setup` builds (on the harness's tokio runtime),
    /// with the command line's arguments; the exit status for `main`.
    pub fn run_with(self, setup: impl Future<Output = Result<E>>) -> ExitCode {
        let args = Args::parse(std::env::args().skip(1));
        match self.run_args(&args, setup) {
            Some(tally) => tally.exit_code(),
            None => ExitCode::SUCCESS,
        }
    }

    /// [`run_with`](Self::run_with) with given arguments; `None` when nothing ran (`--list`,
    /// a failed [`requires`](Self::requires)).
    pub fn run_args(self, args: &Args, setup: impl Future<Output = Result<E>>) -> Option<Tally> {
        if args.list {
            for case in self.cases.iter().filter(|c| args.selects(&c.name)) {
                println!("{}: test", case.name);
            }
            return None;
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let log = self
            .log
            .clone()
            .or_else(|| std::env::var_os(crate::VM_TEST_LOG).map(PathBuf::from));
        {
            let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
            run.suite = self.name.clone();
            run.case = None;
            run.boots_in_case = 0;
            run.booted.clear();
            run.log = log.clone();
        }
        for check in &self.requires {
            if let Some(reason) = check() {
                println!("{} COULD NOT RUN: {reason}", self.name);
                if let Some(log) = &log {
                    append_line(log, &format!("no-guest {}: {reason}", self.name));
                }
                return None;
            }
        }
        let started = Instant::now();
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime for the cases");
        let (label, name) = (
            self.label.clone().unwrap_or_else(|| self.name.clone()),
            self.name.clone(),
        );
        let tally = runtime.block_on(self.run_cases(args, setup));
        // Whatever a timed-out case left running is not waited for.
        runtime.shutdown_timeout(Duration::from_secs(1));
        // The suite's wall time, for the per-tier table `make test` prints.
        let secs = started.elapsed().as_secs_f64();
        println!("{label} took {secs:.0} s");
        if let Some(log) = &log {
            append_line(log, &format!("time {name} {secs:.0}"));
        }
        Some(tally)
    }

    async fn run_cases(mut self, args: &Args, setup: impl Future<Output = Result<E>>) -> Tally {
        let mut out = Reporter {
            suite: self.name.clone(),
            tally: Tally::default(),
        };
        let cases: Vec<Case<E>> = std::mem::take(&mut self.cases)
            .into_iter()
            .filter(|c| args.selects(&c.name))
            .collect();
        let plural = if cases.len() == 1 { "" } else { "s" };
        println!("\nrunning {} test{plural} ({})", cases.len(), self.name);
        if cases.is_empty() {
            return out.summary(&self);
        }

        enter(None);
        let t = Instant::now();
        let env = match setup.await {
            Ok(env) => Arc::new(env),
            Err(e) => {
                out.report("setup", Err(e), t, 0);
                for case in &cases {
                    out.report(&case.name, Err(anyhow!("not run: the setup failed")), t, 0);
                }
                return out.summary(&self);
            }
        };
        out.setup_booted();

        for case in &cases {
            enter(Some(&case.name));
            let t = Instant::now();
            let timeout = case.timeout.unwrap_or(self.timeout);
            let mut r = run_case(&case.body, env.clone(), timeout).await;
            if r.is_ok() {
                if let Some(check) = &self.check_each {
                    r = blocking(check.clone(), env.clone()).await;
                }
            }
            if r.is_err() {
                if let Some(cleanup) = &self.on_failure {
                    let cleanup = cleanup.clone();
                    let _ = blocking(
                        Arc::new(move |e: &E| {
                            cleanup(e);
                            Ok(())
                        }),
                        env.clone(),
                    )
                    .await;
                }
            }
            let boots = enter(None);
            out.report(&case.name, r, t, boots);
        }

        if let Some(check) = self.leak_check.take() {
            let t = Instant::now();
            let r = blocking(check, env.clone()).await;
            out.report("leak_check", r, t, 0);
        }
        if out.tally.failed > 0 {
            if let Some(diagnostics) = self.diagnostics.take() {
                println!("{}", diagnostics(&env));
            }
        }
        if let Some((name, teardown)) = self.teardown.take() {
            enter(Some(&name));
            let t = Instant::now();
            let r = match wait_for_sole_owner(env).await {
                Ok(env) => teardown(env).await,
                Err(held) => {
                    drop(held);
                    Err(anyhow!(
                        "a case still holds the environment (timed out?): not torn down"
                    ))
                }
            };
            let boots = enter(None);
            out.report(&name, r, t, boots);
        } else {
            drop(env);
        }
        out.summary(&self)
    }
}

/// Waits (up to 10 s) until `env` has no other owner (a finished case's task may still be
/// dropping its clone).
async fn wait_for_sole_owner<E>(mut env: Arc<E>) -> std::result::Result<E, Arc<E>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(env) {
            Ok(env) => return Ok(env),
            Err(shared) if Instant::now() < deadline => {
                env = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(shared) => return Err(shared),
        }
    }
}

/// Runs one case in its own task under `timeout`; a panic or a timeout is its error.
async fn run_case<E: Send + Sync + 'static>(
    body: &Body<E>,
    env: Arc<E>,
    timeout: Duration,
) -> Result<()> {
    let handle = match body {
        Body::Async(f) => tokio::spawn(f(env)),
        Body::Blocking(f) => {
            let f = f.clone();
            tokio::task::spawn_blocking(move || f(&env))
        }
    };
    let abort = handle.abort_handle();
    match tokio::time::timeout(timeout, handle).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(anyhow!("panicked: {}", panic_message(join))),
        Err(_) => {
            abort.abort();
            Err(anyhow!("timed out after {timeout:?}"))
        }
    }
}

/// Runs a hook on the blocking pool; a panic is its error.
async fn blocking<E: Send + Sync + 'static>(hook: BlockingHook<E>, env: Arc<E>) -> Result<()> {
    match tokio::task::spawn_blocking(move || hook(&env)).await {
        Ok(r) => r,
        Err(join) => Err(anyhow!("panicked: {}", panic_message(join))),
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into()),
        Err(join) => join.to_string(),
    }
}

/// Prints results as libtest does and counts them.
struct Reporter {
    suite: String,
    tally: Tally,
}

impl Reporter {
    fn setup_booted(&mut self) {
        if enter(None) > 0 {
            self.tally.booted += 1;
        }
    }

    fn report(&mut self, name: &str, r: Result<()>, t: Instant, boots: usize) {
        if boots > 0 {
            self.tally.booted += 1;
        }
        let boots = match boots {
            0 => String::new(),
            1 => ", 1 VM boot".into(),
            n => format!(", {n} VM boots"),
        };
        match r {
            Ok(()) => {
                self.tally.passed += 1;
                println!("test {name} ... ok ({:.1?}{boots})", t.elapsed());
            }
            Err(e) => {
                self.tally.failed += 1;
                println!("test {name} ... FAILED ({:.1?}{boots})\n{e:?}", t.elapsed());
                let place = if name == "setup" {
                    self.suite.clone()
                } else {
                    format!("{}::{name}", self.suite)
                };
                let log = RUN.lock().unwrap_or_else(|p| p.into_inner()).log.clone();
                if let Some(log) = log {
                    if is_no_guest(&e) {
                        append_line(&log, &format!("no-guest {place}: {e:#}"));
                    }
                    // `make test` lists these at its end, where a CI log that keeps only its
                    // tail still shows why each case failed.
                    append_line(&log, &failed_line(&place, &format!("{e:#}")));
                }
            }
        }
    }

    fn summary<E>(self, suite: &Suite<E>) -> Tally {
        let t = self.tally;
        println!(
            "\n{}: {} passed, {} failed; {} booted a guest",
            suite.label.as_deref().unwrap_or(&suite.name),
            t.passed,
            t.failed,
            t.booted
        );
        t
    }
}

/// The command line of a test binary, as libtest reads it (see the [module](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// Name filters: a case runs when its name contains one (all run when there is none).
    pub filters: Vec<String>,
    /// Filters are whole names.
    pub exact: bool,
    /// Cases whose name contains one of these do not run.
    pub skip: Vec<String>,
    /// Print the cases (`<name>: test`) instead of running them.
    pub list: bool,
    /// Only ignored cases: none.
    pub ignored: bool,
}

impl Args {
    /// Parses libtest-style arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Args {
        /// libtest options that take a value as the next argument.
        const WITH_VALUE: &[&str] = &[
            "--test-threads",
            "--color",
            "--format",
            "--logfile",
            "-Z",
            "--shuffle-seed",
        ];
        let mut out = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--list" => out.list = true,
                "--exact" => out.exact = true,
                "--ignored" => out.ignored = true,
                "--skip" => out.skip.extend(args.next()),
                a if WITH_VALUE.contains(&a) => {
                    args.next();
                }
                a if a.starts_with('-') => {}
                _ => out.filters.push(arg),
            }
        }
        out
    }

    /// Whether the case `name` is selected.
    pub fn selects(&self, name: &str) -> bool {
        if self.ignored || self.skip.iter().any(|s| name.contains(s.as_str())) {
            return false;
        }
        self.filters.is_empty()
            || self.filters.iter().any(|f| {
                if self.exact {
                    name == f
                } else {
                    name.contains(f.as_str())
                }
            })
    }
}

#[cfg(test)]
mod tests;
