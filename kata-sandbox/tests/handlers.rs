//! One behavioural suite run against every runtime handler of this build: output and exit
//! codes, stdin, env and args, kill, exec (or its clear `Unimplemented`), cleanup.
//!
//! A case is written once against [`Handler`]: `wasm_container` runs WebAssembly modules built
//! here from WAT (the `wasm32-wasip1` target cannot be installed here); `virt_container` runs
//! the same behaviour with busybox through the test backend (`[hypervisor.host-agent]`: the
//! real agent on this host, no VM). The wasm-only cases (memory limit, trap, CPU quota, pause,
//! bad module files) follow.
//!
//! Needs root (rootfs bind mounts; the agent's namespaces) and, for `virt_container`, the
//! kata-agent binary of this build (`kata_testkit::agent_binary`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_sandbox::oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec,
};
use kata_sandbox::{
    ContainerSpec, Error, ExitStatus, HypervisorConfig, HypervisorType, ProcessSpec,
    RuntimeHandlerKind, Sandbox, Signal,
};
use kata_testkit::leaks::mounts_under;
use tokio::io::AsyncWriteExt;

/// The handler a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Wasm,
    Virt,
    Linux,
}

/// What a case asks a container to do; each handler has its own way of doing it.
#[derive(Debug, Clone, Copy)]
enum Program {
    /// Writes `out` to stdout and `err` to stderr, exits with `code`.
    Print {
        out: &'static str,
        err: &'static str,
        code: i32,
    },
    /// Copies stdin to stdout.
    Cat,
    /// Prints its arguments (after the program) and its environment.
    ArgsAndEnv,
    /// Runs until killed.
    Loop,
}

/// A sandbox root and a rootfs for one test.
struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    handler: Handler,
}

impl Fixture {
    fn new(handler: Handler) -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the handlers' tests need root (rootfs mounts)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        match handler {
            Handler::Wasm => std::fs::create_dir(&rootfs).unwrap(),
            Handler::Virt | Handler::Linux => {
                kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs")
            }
        }
        Fixture {
            tmp,
            rootfs,
            handler,
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    async fn sandbox(&self, id: &str) -> Sandbox {
        let b = Sandbox::builder().id(id).root_dir(self.root());
        let b = match self.handler {
            Handler::Wasm => b.runtime_handler(RuntimeHandlerKind::WasmContainer),
            Handler::Linux => b.runtime_handler(RuntimeHandlerKind::LinuxContainer),
            Handler::Virt => {
                let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
                b.hypervisor(HypervisorType::HostAgent)
                    .hypervisor_config(HypervisorConfig {
                        path: agent.display().to_string(),
                        ..HypervisorConfig::default()
                    })
                    .agent_timeout(Duration::from_secs(20))
            }
        };
        b.build().await.expect("sandbox starts")
    }

    /// A module from `wat` at `/<name>` in the rootfs.
    fn module(&self, name: &str, wat: &str) -> String {
        let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(self.rootfs.join(name), bytes).unwrap();
        format!("/{name}")
    }

    /// The spec that runs `program` with `args` after it.
    fn spec(&self, program: Program, args: &[&str]) -> ContainerSpec {
        let mut argv: Vec<String> = match (self.handler, program) {
            (Handler::Wasm, Program::Print { out, err, code }) => {
                vec![self.module("print.wasm", &print_wat(out, err, code))]
            }
            (Handler::Wasm, Program::Cat) => vec![self.module("cat.wasm", CAT_WAT)],
            (Handler::Wasm, Program::ArgsAndEnv) => {
                vec![self.module("args.wasm", ARGS_AND_ENV_WAT)]
            }
            (Handler::Wasm, Program::Loop) => vec![self.module("loop.wasm", LOOP_WAT)],
            (_, Program::Print { out, err, code }) => {
                sh(&format!("printf '{out}'; printf '{err}' >&2; exit {code}"))
            }
            (_, Program::Cat) => vec!["cat".into()],
            (_, Program::ArgsAndEnv) => sh("echo \"$@\"; env"),
            (_, Program::Loop) => sh("while :; do :; done"),
        };
        argv.extend(args.iter().map(|a| a.to_string()));
        ContainerSpec::from_rootfs_dir(&self.rootfs).args(argv)
    }

    /// Nothing of sandbox `id` is left: no directory, no mount under the root, no process
    /// naming its directory, no cgroup of the linux handler's.
    fn assert_nothing_left(&self, id: &str) {
        let dir = self.root().join(id);
        assert!(!dir.exists(), "{} is left", dir.display());
        let mounts = mounts_under(&self.root());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let procs = kata_testkit::leaks::processes_mentioning(&dir.display().to_string(), "\0");
        assert!(procs.is_empty(), "processes left: {procs:?}");
        if self.handler == Handler::Linux {
            let cgroups = kata_testkit::leaks::cgroup_dirs(&format!("kata_linux/{id}"));
            assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        }
    }
}

/// `sh -c script` (with `sh` as `$0`, so extra args are `$1`...).
fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into(), "sh".into()]
}

/// A WAT string literal of `s`.
fn wat_bytes(s: &str) -> String {
    s.bytes().map(|b| format!("\\{b:02x}")).collect()
}

/// A module that writes `out` and `err` and exits with `code` (`_start` returns for 0).
fn print_wat(out: &str, err: &str, code: i32) -> String {
    let exit = if code == 0 {
        String::new()
    } else {
        format!("(call $proc_exit (i32.const {code}))")
    };
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{out_bytes}")
  (data (i32.const 4096) "{err_bytes}")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 1) (i32.const 1024) (i32.const {out_len}))
    (call $write (i32.const 2) (i32.const 4096) (i32.const {err_len}))
    {exit}))"#,
        out_bytes = wat_bytes(out),
        err_bytes = wat_bytes(err),
        out_len = out.len(),
        err_len = err.len(),
    )
}

/// `cat`: stdin to stdout until end of file.
const CAT_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $copy
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 4096))
      (if (i32.ne (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)) (i32.const 0))
        (then (return)))
      (if (i32.eqz (i32.load (i32.const 8))) (then (return)))
      (i32.store (i32.const 16) (i32.const 1024))
      (i32.store (i32.const 20) (i32.load (i32.const 8)))
      (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
      (br $copy))))"#;

/// Writes its argument strings, a newline, and its environment strings (NUL-separated).
const ARGS_AND_ENV_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 60) "\0a")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 32) (local.get $ptr))
    (i32.store (i32.const 36) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40))))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 8192)))
    (call $write (i32.const 8192) (i32.load (i32.const 4)))
    (call $write (i32.const 60) (i32.const 1))
    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $environ_get (i32.const 1024) (i32.const 65536)))
    (call $write (i32.const 65536) (i32.load (i32.const 4)))))"#;

/// Runs until killed.
const LOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))"#;

/// Grows its memory by 100 pages (6.25 MiB): exits 12 if refused, 0 if granted.
const GROW_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1))
      (then (call $proc_exit (i32.const 12))))))"#;

/// Starts with 64 pages (4 MiB) of memory.
const BIG_WAT: &str = r#"(module
  (memory (export "memory") 64)
  (func (export "_start")))"#;

/// Sleeps 60 s in `poll_oneoff` (a host call a kill cannot interrupt).
const SLEEP_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 60000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))))"#;

/// Traps at once.
const TRAP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") unreachable))"#;

// ---- the suite, once per handler ----

async fn output_and_exit_codes(h: Handler) {
    let f = Fixture::new(h);
    let sb = f.sandbox("codes").await;
    let p = Program::Print {
        out: "to-out\n",
        err: "to-err\n",
        code: 3,
    };
    let out = sb.run(f.spec(p, &[])).await.unwrap();
    assert_eq!(out.stdout_str(), "to-out\n");
    assert_eq!(out.stderr_str(), "to-err\n");
    assert_eq!(out.status, ExitStatus::from_code(3));
    let p = Program::Print {
        out: "ok\n",
        err: "",
        code: 0,
    };
    let out = sb.run(f.spec(p, &[])).await.unwrap();
    assert_eq!(
        (out.stdout_str().as_str(), out.status),
        ("ok\n", ExitStatus::from_code(0))
    );
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("codes");
}

async fn stdin_reaches_the_process(h: Handler) {
    let f = Fixture::new(h);
    let sb = f.sandbox("stdin").await;
    let mut cat = sb
        .create_container(f.spec(Program::Cat, &[]).stdin(true))
        .await
        .unwrap();
    cat.start().await.unwrap();
    let mut stdin = cat.stdin().expect("stdin open");
    stdin.write_all(b"through stdin\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let out = cat.process().output().await.unwrap();
    assert_eq!(out.stdout_str(), "through stdin\n");
    assert_eq!(out.status, ExitStatus::from_code(0));
    cat.delete().await.unwrap();
    // Without stdin the process reads end of file at once.
    let out = sb.run(f.spec(Program::Cat, &[])).await.unwrap();
    assert_eq!(
        (out.stdout.len(), out.status),
        (0, ExitStatus::from_code(0))
    );
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("stdin");
}

async fn args_and_env_reach_the_process(h: Handler) {
    let f = Fixture::new(h);
    let sb = f.sandbox("argsenv").await;
    let out = sb
        .run(
            f.spec(Program::ArgsAndEnv, &["first", "second"])
                .env("GREETING", "hi"),
        )
        .await
        .unwrap();
    let text = out.stdout_str().replace('\0', " ");
    assert!(text.contains("first second"), "{text:?}");
    assert!(text.contains("GREETING=hi"), "{text:?}");
    assert_eq!(out.status, ExitStatus::from_code(0));
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("argsenv");
}

async fn kill_ends_an_endless_loop(h: Handler) {
    let f = Fixture::new(h);
    let sb = f.sandbox("kill").await;
    let c = sb
        .create_container(f.spec(Program::Loop, &[]))
        .await
        .unwrap();
    c.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    c.kill(Signal::KILL).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), c.wait())
        .await
        .expect("the kill ends it")
        .unwrap();
    assert_eq!(
        (status.code(), status.signal()),
        (None, Some(9)),
        "{status}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("kill");
}

async fn exec_runs_or_is_unimplemented(h: Handler) {
    let f = Fixture::new(h);
    let sb = f.sandbox("exec").await;
    let cat = sb
        .create_container(f.spec(Program::Cat, &[]).stdin(true))
        .await
        .unwrap();
    cat.start().await.unwrap();
    let exec = cat.exec(ProcessSpec::new(["echo", "exec"])).await;
    match h {
        Handler::Virt | Handler::Linux => {
            let out = exec.unwrap().output().await.unwrap();
            assert_eq!(out.stdout_str(), "exec\n");
        }
        Handler::Wasm => {
            let e = exec.unwrap_err();
            assert!(
                matches!(
                    &e,
                    Error::Unimplemented {
                        handler: RuntimeHandlerKind::WasmContainer,
                        operation: "exec",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("does not implement exec"), "{e}");
        }
    }
    cat.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("exec");
}

/// Each case of the suite, as a test per handler.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod wasm_container {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Handler::Wasm).await
            })*
        }
        mod virt_container {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Handler::Virt).await
            })*
        }
        mod linux_container {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Handler::Linux).await
            })*
        }
    };
}

suite!(
    output_and_exit_codes,
    stdin_reaches_the_process,
    args_and_env_reach_the_process,
    kill_ends_an_endless_loop,
    exec_runs_or_is_unimplemented,
);

// ---- wasm_container only ----

/// A spec with `linux.resources` (memory limit, CPU quota/period).
fn spec_with_limits(memory: Option<i64>, cpu: Option<(i64, u64)>) -> Spec {
    let mut r = LinuxResourcesBuilder::default();
    if let Some(limit) = memory {
        r = r.memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap());
    }
    if let Some((quota, period)) = cpu {
        r = r.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()
                .unwrap(),
        );
    }
    let mut spec = Spec::default();
    spec.set_linux(Some(
        LinuxBuilder::default()
            .resources(r.build().unwrap())
            .build()
            .unwrap(),
    ));
    spec
}

#[tokio::test]
async fn wasm_memory_limit_refuses_growth_and_too_large_a_start() {
    let f = Fixture::new(Handler::Wasm);
    let sb = f.sandbox("memory").await;
    let grow = f.module("grow.wasm", GROW_WAT);
    let limited = |spec| ContainerSpec::from_oci(spec, &f.rootfs).args([grow.clone()]);
    let out = sb
        .run(limited(spec_with_limits(Some(2 << 20), None)))
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::from_code(12),
        "memory.grow past 2 MiB is refused"
    );
    let out = sb.run(limited(spec_with_limits(None, None))).await.unwrap();
    assert_eq!(
        out.status,
        ExitStatus::from_code(0),
        "without a limit it grows"
    );
    // A module whose memory starts above the limit is refused at create, naming the limit.
    let big = f.module("big.wasm", BIG_WAT);
    let e = sb
        .create_container(
            ContainerSpec::from_oci(spec_with_limits(Some(2 << 20), None), &f.rootfs).args([big]),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linux.resources.memory.limit") && e.contains("2097152"),
        "{e}"
    );
    assert!(sb.container_ids().is_empty());
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("memory");
}

#[tokio::test]
async fn wasm_a_trap_is_an_abort_with_the_trap_on_stderr() {
    let f = Fixture::new(Handler::Wasm);
    let sb = f.sandbox("trap").await;
    let trap = f.module("trap.wasm", TRAP_WAT);
    let out = sb
        .run(ContainerSpec::from_rootfs_dir(&f.rootfs).args([trap]))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::from_signal(Signal::ABRT));
    assert_eq!(out.status.to_shell_status(), 134);
    assert!(
        out.stderr_str().contains("trapped") && out.stderr_str().contains("unreachable"),
        "{:?}",
        out.stderr_str()
    );
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("trap");
}

#[tokio::test]
async fn wasm_bad_module_paths_and_files_are_clear_errors_that_leave_nothing() {
    let f = Fixture::new(Handler::Wasm);
    let sb = f.sandbox("badmod").await;
    let create = |args: Vec<String>| async {
        let e = sb
            .create_container(ContainerSpec::from_rootfs_dir(&f.rootfs).args(args))
            .await
            .map(|_| ())
            .unwrap_err();
        println!("refused: {e}");
        Err::<(), _>(e)
    };
    // Not a wasm module.
    std::fs::write(f.rootfs.join("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let e = create(vec!["/script.sh".into()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("process.args[0]") && e.contains("is not a WebAssembly module"),
        "{e}"
    );
    // Missing.
    let e = create(vec!["/missing.wasm".into()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("process.args[0]") && e.contains("missing.wasm") && e.contains("No such file"),
        "{e}"
    );
    // A symlink out of the rootfs to a real module on the host is not followed out.
    let outside = f.tmp.path().join("outside.wasm");
    std::fs::write(&outside, wat::parse_str(LOOP_WAT).unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, f.rootfs.join("escape.wasm")).unwrap();
    let e = create(vec!["/escape.wasm".into()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("process.args[0]") && e.contains("No such file"),
        "{e}"
    );
    let e = create(vec!["../outside.wasm".into()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("process.args[0]") && e.contains("No such file"),
        "{e}"
    );
    // A directory.
    let e = create(vec!["/".into()]).await.unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(sb.container_ids().is_empty());
    // Nothing of the refused containers is mounted.
    let mounts = mounts_under(sb.dir());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("badmod");
}

#[tokio::test]
async fn wasm_cpu_quota_throttles_and_pause_stops_the_module() {
    let f = Fixture::new(Handler::Wasm);
    let sb = f.sandbox("cpu").await;
    let looping = f.module("loop.wasm", LOOP_WAT);
    // 5 ms of CPU per 100 ms, beside the same loop without a quota (under the same load).
    let throttled = sb
        .create_container(
            ContainerSpec::from_oci(spec_with_limits(None, Some((5_000, 100_000))), &f.rootfs)
                .args([looping.clone()]),
        )
        .await
        .unwrap();
    let free = sb
        .create_container(ContainerSpec::from_rootfs_dir(&f.rootfs).args([looping.clone()]))
        .await
        .unwrap();
    throttled.start().await.unwrap();
    free.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cpu = |s: kata_sandbox::ContainerStats| s.cgroup.cpu.unwrap().usage.total_ns;
    let used = Duration::from_nanos(cpu(throttled.stats().await.unwrap()));
    let free_used = Duration::from_nanos(cpu(free.stats().await.unwrap()));
    println!("CPU in 1 s: {used:?} with 5 ms per 100 ms, {free_used:?} without a quota");
    // Ten periods of 5 ms, each overrun by at most a tick (10 ms).
    assert!(used < Duration::from_millis(200), "{used:?} of CPU in 1 s");
    assert!(
        used * 2 < free_used,
        "{used:?} throttled, {free_used:?} free"
    );
    for c in [throttled, free] {
        c.kill(Signal::KILL).await.unwrap();
        c.wait().await.unwrap();
        c.delete().await.unwrap();
    }

    // Pause: the CPU time stands still until resumed.
    let c = sb
        .create_container(ContainerSpec::from_rootfs_dir(&f.rootfs).args([looping]))
        .await
        .unwrap();
    c.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.pause().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let paused_at = cpu(c.stats().await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        cpu(c.stats().await.unwrap()),
        paused_at,
        "no CPU while paused"
    );
    c.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cpu(c.stats().await.unwrap()) > paused_at, "it runs again");
    // Killed while paused: the kill ends the pause.
    c.pause().await.unwrap();
    c.kill(Signal::TERM).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), c.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(15));
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("cpu");
}

#[tokio::test]
async fn wasm_a_kill_ends_a_module_asleep_in_a_host_call() {
    let f = Fixture::new(Handler::Wasm);
    let sb = f.sandbox("asleep").await;
    let sleeping = f.module("sleep.wasm", SLEEP_WAT);
    let c = sb
        .create_container(ContainerSpec::from_rootfs_dir(&f.rootfs).args([sleeping]))
        .await
        .unwrap();
    c.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    c.kill(Signal::TERM).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), c.wait())
        .await
        .expect("the kill is reported though the module sleeps on")
        .unwrap();
    assert_eq!(status.signal(), Some(15), "{status}");
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    f.assert_nothing_left("asleep");
}

/// A pod's sandbox container under CRI (its image is the pause image, a native program) runs
/// the handler's own waiting module until it is killed.
#[tokio::test]
async fn wasm_a_pod_sandbox_container_waits_until_killed() {
    let f = Fixture::new(Handler::Wasm);
    let sb = f.sandbox("pod-pause").await;
    let mut oci = oci_spec::runtime::Spec::default();
    oci.set_annotations(Some(
        [(
            "io.kubernetes.cri.container-type".to_string(),
            "sandbox".to_string(),
        )]
        .into_iter()
        .collect(),
    ));
    let c = sb
        .create_container(ContainerSpec::from_oci(oci, &f.rootfs).args(["/pause"]))
        .await
        .expect("the pause container of a pod is not a module file of its rootfs");
    c.start().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.wait())
            .await
            .is_err(),
        "the pause module waits"
    );
    let t0 = Instant::now();
    c.kill(Signal::TERM).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), c.wait())
        .await
        .expect("killed within a tick of its wait")
        .unwrap();
    assert_eq!(status.signal(), Some(15), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("pod-pause");
}

#[tokio::test]
async fn wasm_sandbox_cannot_be_detached_and_dropping_it_stops_its_modules() {
    let f = Fixture::new(Handler::Wasm);
    let sb = f.sandbox("drop").await;
    let looping = f.module("loop.wasm", LOOP_WAT);
    let c = sb
        .create_container(ContainerSpec::from_rootfs_dir(&f.rootfs).args([looping]))
        .await
        .unwrap();
    c.start().await.unwrap();
    assert_eq!(
        sb.describe().first().map(|(_, v)| v.as_str()),
        Some("wasm_container")
    );
    let dir = sb.dir().to_path_buf();
    let e = sb.detach().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unimplemented {
                operation: "detach",
                ..
            }
        ),
        "{e:?}"
    );
    // The failed detach dropped the sandbox: the module is stopped, the rootfs released.
    drop(c);
    assert!(!dir.exists());
    f.assert_nothing_left("drop");
    assert!(
        Path::new(&f.rootfs).join("loop.wasm").exists(),
        "the rootfs itself is kept"
    );
}

// ---- linux_container only ----

/// The cgroup directory of container `cid` of sandbox `sb` in the v1 `controller` hierarchy (or
/// the unified one).
fn linux_cgroup(controller: &str, sb: &str, cid: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    let base = if v1.is_dir() {
        v1
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    base.join("kata_linux").join(sb).join(cid)
}

#[tokio::test]
async fn linux_the_container_has_its_own_namespaces_rootfs_and_cgroup() {
    let f = Fixture::new(Handler::Linux);
    let sb = f.sandbox("isolated").await;
    let out = sb
        .run(
            f.spec(
                Program::Print {
                    out: "",
                    err: "",
                    code: 0,
                },
                &[],
            )
            .args(sh(
                "echo pid=$$; ls /sys/class/net | tr '\\n' ' '; echo; cat /proc/self/cgroup; ls /",
            ))
            .id("c1"),
        )
        .await
        .unwrap();
    let text = out.stdout_str();
    assert_eq!(
        out.status,
        ExitStatus::from_code(0),
        "{text} {}",
        out.stderr_str()
    );
    // Its own PID namespace: the shell is PID 1.
    assert!(text.contains("pid=1\n"), "{text}");
    // Its own network namespace: only a loopback (the host's eth0 is not there).
    assert!(text.contains("\nlo \n"), "{text}");
    // Its own cgroup namespace: its cgroup (`kata_linux/isolated/c1`, see the pause case) is
    // its root.
    assert!(text.contains("pids:/\n"), "{text}");
    // The rootfs is the busybox one, not the host's.
    assert!(text.contains("bin\n") && !text.contains("work\n"), "{text}");
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("isolated");
}

#[tokio::test]
async fn linux_a_controller_the_host_lacks_is_a_clear_error_that_leaves_nothing() {
    let f = Fixture::new(Handler::Linux);
    let sb = f.sandbox("nohuge").await;
    let mut spec = Spec::default();
    spec.set_linux(Some(
        LinuxBuilder::default()
            .resources(
                LinuxResourcesBuilder::default()
                    .hugepage_limits(vec![
                        kata_sandbox::oci_spec::runtime::LinuxHugepageLimitBuilder::default()
                            .page_size("2MB")
                            .limit(1 << 21)
                            .build()
                            .unwrap(),
                    ])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    ));
    let hugetlb = Path::new("/sys/fs/cgroup/hugetlb").is_dir();
    let r = sb
        .create_container(ContainerSpec::from_oci(spec, &f.rootfs).args(["true"]))
        .await;
    if hugetlb {
        // A host with the controller: nothing to refuse.
        r.unwrap().delete().await.unwrap();
    } else {
        let e = r.map(|_| ()).unwrap_err().to_string();
        println!("refused: {e}");
        assert!(
            e.contains("linux.resources.hugepageLimits") && e.contains("`hugetlb`"),
            "{e}"
        );
    }
    assert!(sb.container_ids().is_empty());
    let mounts = mounts_under(sb.dir());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cgroups = kata_testkit::leaks::cgroup_dirs("kata_linux/nohuge");
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("nohuge");
}

#[tokio::test]
async fn linux_pause_resume_stats_update_and_pids() {
    let f = Fixture::new(Handler::Linux);
    let sb = f.sandbox("operate").await;
    let c = sb
        .create_container(f.spec(Program::Loop, &[]).id("spin"))
        .await
        .unwrap();
    c.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = |s: kata_sandbox::ContainerStats| s.cgroup.cpu.unwrap().usage.total_ns;
    assert!(cpu(c.stats().await.unwrap()) > 0, "it used CPU");
    assert!(!c.pids().await.unwrap().is_empty());
    c.pause().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let paused_at = cpu(c.stats().await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cpu(c.stats().await.unwrap()),
        paused_at,
        "no CPU while paused"
    );
    c.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cpu(c.stats().await.unwrap()) > paused_at, "it runs again");
    // A new memory limit reaches the container's cgroup.
    let limit = 64 << 20;
    c.update(
        &LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap())
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let v1 = linux_cgroup("memory", "operate", "spin").join("memory.limit_in_bytes");
    let v2 = linux_cgroup("memory", "operate", "spin").join("memory.max");
    let set = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap();
    assert_eq!(set.trim(), limit.to_string());
    let mem = c.stats().await.unwrap().cgroup.memory.unwrap();
    assert_eq!(mem.usage.limit, limit as u64);
    // Killed while paused: the kill ends it all the same once deleted.
    c.pause().await.unwrap();
    c.kill(Signal::KILL).await.unwrap();
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("operate");
}

#[tokio::test]
async fn linux_a_kill_ends_the_containers_other_processes_and_execs_too() {
    let f = Fixture::new(Handler::Linux);
    let sb = f.sandbox("family").await;
    let c = sb
        .create_container(
            f.spec(
                Program::Print {
                    out: "",
                    err: "",
                    code: 0,
                },
                &[],
            )
            .args(sh("sleep 1000 & sleep 1000 & wait"))
            .id("parent"),
        )
        .await
        .unwrap();
    c.start().await.unwrap();
    let exec = c.exec(ProcessSpec::new(["sleep", "999"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sleeping = |arg: &str| {
        let cmdline = format!("sleep {arg}");
        kata_testkit::leaks::cmdlines()
            .into_iter()
            .filter(|(_, c)| c.trim_end() == cmdline)
            .count()
    };
    assert_eq!((sleeping("1000"), sleeping("999")), (2, 1));
    c.kill(Signal::KILL).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), c.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(9));
    // The PID namespace's init is gone: every process in it is killed, the exec too.
    let status = tokio::time::timeout(Duration::from_secs(10), exec.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(9));
    assert_eq!((sleeping("1000"), sleeping("999")), (0, 0));
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("family");
}

#[tokio::test]
async fn linux_dropping_the_sandbox_ends_its_containers_and_terminals_are_refused() {
    let f = Fixture::new(Handler::Linux);
    let sb = f.sandbox("dropped").await;
    let e = sb
        .create_container(f.spec(Program::Cat, &[]).terminal(true))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Unimplemented {
                handler: RuntimeHandlerKind::LinuxContainer,
                operation: "terminal",
                ..
            }
        ),
        "{e:?}"
    );
    let c = sb
        .create_container(f.spec(Program::Loop, &[]).id("looping"))
        .await
        .unwrap();
    c.start().await.unwrap();
    let pids = c.pids().await.unwrap();
    assert!(!pids.is_empty());
    let e = sb.detach().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unimplemented {
                operation: "detach",
                ..
            }
        ),
        "{e:?}"
    );
    // The failed detach dropped the sandbox: its container is killed, everything released.
    drop(c);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the dropped sandbox is alive"
        );
    }
    f.assert_nothing_left("dropped");
}

#[tokio::test]
async fn linux_a_killed_helper_takes_its_container_with_it() {
    let f = Fixture::new(Handler::Linux);
    let sb = f.sandbox("orphan").await;
    let c = sb
        .create_container(f.spec(Program::Loop, &[]).id("spin"))
        .await
        .unwrap();
    c.start().await.unwrap();
    let pids = c.pids().await.unwrap();
    assert!(!pids.is_empty());
    // The helper of the container's first process: the parent of its pid 1.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap();
    let ppid: i32 = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let helper = std::fs::read_to_string(format!("/proc/{ppid}/cmdline")).unwrap();
    assert!(helper.contains("kata-linux-container"), "{helper:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ppid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), c.wait())
        .await
        .expect("the helper's loss is an exit")
        .unwrap();
    assert_eq!(status.signal(), Some(9));
    // Gone, or a zombie the host's init has not reaped yet.
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<&u32> = pids.iter().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "processes outlived their helper: {left:?}");
    c.delete().await.unwrap();
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("orphan");
}

#[tokio::test]
async fn linux_the_specs_seccomp_profile_is_applied() {
    use kata_sandbox::oci_spec::runtime::{
        LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
    };
    let f = Fixture::new(Handler::Linux);
    let sb = f.sandbox("seccomp").await;
    let mut spec = Spec::default();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(1u32)
                .build()
                .unwrap()])
            .build()
            .unwrap(),
    ));
    spec.set_linux(Some(linux));
    let out = sb
        .run(ContainerSpec::from_oci(spec, &f.rootfs).args(sh("mkdir /tmp/x && echo made")))
        .await
        .unwrap();
    assert_ne!(out.status, ExitStatus::from_code(0), "{}", out.stdout_str());
    assert!(
        out.stderr_str().contains("Operation not permitted"),
        "{:?}",
        out.stderr_str()
    );
    // Without the profile the same command succeeds.
    let out = sb
        .run(
            f.spec(Program::Cat, &[])
                .args(sh("mkdir /tmp/x && echo made")),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "made\n");
    sb.shutdown().await.unwrap();
    f.assert_nothing_left("seccomp");
}
