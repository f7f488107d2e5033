//! The harness on small suites: selection, tally, timeouts, panics, hooks, log lines.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};

use super::*;

/// Runs are process-wide (the `booted` bookkeeping): one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn args(words: &[&str]) -> Args {
    Args::parse(words.iter().map(|w| w.to_string()))
}

#[derive(Default)]
struct Env {
    checks: AtomicUsize,
    cleanups: AtomicUsize,
}

async fn passes(_env: Arc<Env>) -> Result<()> {
    Ok(())
}

async fn fails(_env: Arc<Env>) -> Result<()> {
    bail!("broken on purpose")
}

async fn boots_twice(_env: Arc<Env>) -> Result<()> {
    booted();
    booted();
    Ok(())
}

/// The log's lines that `keep` keeps.
fn lines_where(log: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| keep(l))
        .map(str::to_string)
        .collect()
}

/// The log's `booted`/`no-guest` lines (the suite's `time` line, which varies, and the
/// `failed` lines, see [`failed_lines`], left out).
fn log_lines(log: &Path) -> Vec<String> {
    lines_where(log, |l| {
        !l.starts_with("time ") && !l.starts_with("failed ")
    })
}

/// The log's `failed <place>: <error>` lines, which `make test` prints at its end.
fn failed_lines(log: &Path) -> Vec<String> {
    lines_where(log, |l| l.starts_with("failed "))
}

#[test]
fn arguments_are_read_as_libtest_reads_them() {
    let a = args(&[
        "--nocapture",
        "--test-threads",
        "1",
        "echo",
        "--skip",
        "bad",
    ]);
    assert_eq!(a.filters, ["echo"]);
    assert_eq!(a.skip, ["bad"]);
    assert!(a.selects("echo_stdout") && !a.selects("echo_bad") && !a.selects("exit"));

    assert!(args(&[]).selects("anything"));
    let exact = args(&["--exact", "echo"]);
    assert!(exact.selects("echo") && !exact.selects("echo_stdout"));
    let two = args(&["tty", "pod"]);
    assert!(two.selects("tty") && two.selects("pod_of_two") && !two.selects("echo"));
    assert!(args(&["--list", "--format", "terse"]).list);
    assert!(
        !args(&["--ignored"]).selects("echo"),
        "there are no ignored cases"
    );
}

#[test]
fn a_run_counts_passes_failures_panics_and_timeouts_and_logs_boots() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("vm-tests.log");
    let torn_down = Arc::new(AtomicUsize::new(0));
    let seen = torn_down.clone();
    let tally = Suite::new("suite_a")
        .log_to(&log)
        .timeout(Duration::from_millis(300))
        .case("passes", passes)
        .case("fails", fails)
        .case("boots_twice", boots_twice)
        .case("panics", |_env: Arc<Env>| async { panic!("oops") })
        .case("hangs", |_env: Arc<Env>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .case_with_timeout("slow_but_allowed", Duration::from_secs(5), |_env| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        })
        .blocking_case("blocking", |_env: &Env| {
            // A blocking case may run a runtime of its own (e.g. for a ttRPC client).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(tokio::time::sleep(Duration::from_millis(10)));
            Ok(())
        })
        .case("skipped_by_filter", passes)
        .check_each(|env: &Env| {
            env.checks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .on_failure(|env: &Env| {
            env.cleanups.fetch_add(1, Ordering::SeqCst);
        })
        .teardown("teardown", move |env: Env| async move {
            // Checked after each passing case, cleaned after each failing one.
            seen.store(
                env.checks.load(Ordering::SeqCst) * 100 + env.cleanups.load(Ordering::SeqCst),
                Ordering::SeqCst,
            );
            Ok(())
        })
        .run_args(&args(&["--skip", "skipped"]), async {
            booted();
            Ok(Env::default())
        })
        .expect("it ran");
    assert_eq!(
        tally,
        Tally {
            passed: 5, // passes, boots_twice, slow_but_allowed, blocking, teardown
            failed: 3, // fails, panics, hangs
            booted: 2, // the setup and boots_twice
        }
    );
    assert_eq!(torn_down.load(Ordering::SeqCst), 4 * 100 + 3);
    assert_eq!(
        log_lines(&log),
        ["booted suite_a", "booted suite_a::boots_twice"]
    );
    // Each failure once, by name, its error on one line.
    let failed = failed_lines(&log);
    let places: Vec<&str> = failed
        .iter()
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        places,
        [
            "failed suite_a::fails",
            "failed suite_a::panics",
            "failed suite_a::hangs"
        ],
        "{failed:?}"
    );
    assert!(failed[1].contains("oops"), "{failed:?}");
    assert!(failed[2].contains("timed out after"), "{failed:?}");
    // The suite's wall time, for the table `make test` prints.
    let text = std::fs::read_to_string(&log).unwrap();
    let time = text.lines().find(|l| l.starts_with("time suite_a "));
    let secs: u64 = time
        .expect("a time line")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs < 60, "{secs}");
}

#[test]
fn a_check_after_a_case_fails_it_and_cleanup_follows() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cleaned = Arc::new(AtomicUsize::new(0));
    let c = cleaned.clone();
    let tmp = tempfile::tempdir().unwrap();
    let tally = Suite::new("suite_b")
        .log_to(tmp.path().join("vm-tests.log"))
        .case("leaks", passes)
        .check_each(|_: &Env| bail!("a mount is left"))
        .on_failure(move |_: &Env| {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .leak_check(|_: &Env| Ok(()))
        .run_args(&args(&[]), async { Ok(Env::default()) })
        .unwrap();
    assert_eq!((tally.passed, tally.failed), (1, 1), "leak_check passes");
    assert_eq!(cleaned.load(Ordering::SeqCst), 1);
}

#[test]
fn a_setup_that_could_not_boot_fails_every_case_and_says_no_guest() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("vm-tests.log");
    let tally = Suite::new("suite_c")
        .log_to(&log)
        .case("one", passes)
        .case("two", passes)
        .teardown("teardown", |_: Env| async { bail!("never runs") })
        .run_args(&args(&[]), async {
            Err::<Env, _>(anyhow!("qemu: no kernel")).context(NoGuest)
        })
        .unwrap();
    assert_eq!((tally.passed, tally.failed, tally.booted), (0, 3, 0));
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("no-guest suite_c: ") && lines[0].contains("qemu: no kernel"),
        "{lines:?}"
    );
}

#[test]
fn a_case_that_could_not_boot_is_logged_by_name() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("vm-tests.log");
    let tally = Suite::new("suite_d")
        .log_to(&log)
        .case("boot", |_: Arc<()>| async {
            Err::<(), _>(anyhow!("agent did not answer")).context(NoGuest)
        })
        .case("plain_failure", |_: Arc<()>| async {
            bail!("not a boot problem")
        })
        .run_args(&args(&[]), async { Ok(()) })
        .unwrap();
    assert_eq!(tally.failed, 2);
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("no-guest suite_d::boot: "),
        "{lines:?}"
    );
    assert_eq!(
        failed_lines(&log),
        [
            "failed suite_d::boot: THIS VM TEST COULD NOT BOOT A GUEST: agent did not answer",
            "failed suite_d::plain_failure: not a boot problem"
        ]
    );
}

#[test]
fn a_missing_requirement_skips_loudly_and_nothing_selected_skips_the_setup() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("vm-tests.log");
    let r = Suite::new("suite_e")
        .log_to(&log)
        .requires(|| Some("needs root".into()))
        .case("one", passes)
        .run_args(&args(&[]), async { Ok(Env::default()) });
    assert_eq!(r, None);
    assert_eq!(log_lines(&log), ["no-guest suite_e: needs root"]);

    let set_up = AtomicUsize::new(0);
    let tally = Suite::new("suite_f")
        .log_to(&log)
        .case("one", passes)
        .run_args(&args(&["no-such-case"]), async {
            set_up.fetch_add(1, Ordering::SeqCst);
            Ok(Env::default())
        })
        .unwrap();
    assert_eq!(tally, Tally::default());
    assert_eq!(
        set_up.load(Ordering::SeqCst),
        0,
        "no case selected: no setup"
    );
    assert_eq!(
        Suite::new("suite_g")
            .case("one", passes)
            .run_args(&args(&["--list"]), async { Ok(Env::default()) }),
        None
    );
}

#[test]
fn a_failed_line_is_one_line_and_bounded() {
    let long = format!("first\nsecond {}", "x".repeat(2 * super::FAILED_LINE_CHARS));
    let line = super::failed_line("suite::case", &long);
    assert!(
        line.starts_with("failed suite::case: first ⏎ second xx"),
        "{line}"
    );
    assert!(!line.contains('\n'));
    assert!(line.ends_with(" [...]"), "{line}");
    assert!(line.chars().count() < super::FAILED_LINE_CHARS + 40);
    assert_eq!(
        super::failed_line("s", "short\n"),
        "failed s: short",
        "a short error stays whole"
    );
}
