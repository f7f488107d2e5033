//! One container of a `wasm_container` sandbox: its module compiled and instantiated at
//! create ([`prepare`]), run on its own thread at start ([`WasmTask::start`]), its exit status
//! published for every waiter.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_agent_client::{ExitStatus, Signal};
use oci_spec::runtime::Spec;
use tokio::sync::watch;
use wasmtime::{Engine, Instance, Linker, Module, Store, UpdateDeadline};
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::control::{Control, CpuBudget, Killed, MemoryLimiter, MemoryUse, Ticker};
use super::stdio;
use crate::error::{Error, Result};
use crate::handler::ProcessStreams;

/// How long a killed module may take to end before its exit is published without it (it is
/// blocked in a host call that the kill cannot interrupt).
pub(super) const KILL_GRACE: Duration = Duration::from_secs(1);

/// The largest module file read (a bound on what a rootfs can make this process read).
const MAX_MODULE_BYTES: u64 = 512 << 20;

/// The exit status of a module that trapped (or failed in a way WASI has no code for): killed
/// by `SIGABRT`, as a native process that aborts (shell status 134, what the wasmtime CLI
/// exits with); the trap is written to its stderr.
pub(super) const TRAPPED: ExitStatus = ExitStatus::from_signal(Signal::ABRT);

/// A store's data: WASI preview 1 and the memory limit.
struct Host {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
}

/// A module instantiated and ready to run.
struct Ready {
    store: Store<Host>,
    instance: Instance,
    stderr: Arc<AsyncStdoutStream>,
}

/// One container: its module and what controls it.
pub(super) struct WasmTask {
    pub(super) control: Arc<Control>,
    pub(super) memory: Arc<MemoryUse>,
    /// Until started.
    ready: Mutex<Option<Ready>>,
    /// The caller's ends of the streams, until attached.
    streams: Mutex<Option<ProcessStreams>>,
    /// `Some` once the module ended.
    exit: watch::Sender<Option<ExitStatus>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for WasmTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmTask")
            .field("exit", &*self.exit.borrow())
            .finish_non_exhaustive()
    }
}

/// Where the module is: `process.args[0]` of `spec`, in `rootfs`.
/// What a pod's sandbox container runs under CRI (`io.kubernetes.cri.container-type =
/// sandbox`: its image is the pause image, a native program): a module that waits, 100 ms at
/// a time in `poll_oneoff` (no CPU; killable within a tick after each wait), until it is
/// killed. Assembled from this WAT (the `wat` crate is not a dependency of the handler; the
/// tests check the bytes against it):
///
/// ```text
/// (module
///   (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
///   (memory (export "memory") 1)
///   (func (export "_start")
///     (i32.store (i32.const 16) (i32.const 1))             ;; clock id: monotonic
///     (i64.store (i32.const 24) (i64.const 100000000))     ;; timeout: 100 ms
///     (loop (drop (call 0 (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
///           (br 0))))
/// ```
pub(super) const POD_PAUSE_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x02, 0x60, 0x04, 0x7f, 0x7f, 0x7f,
    0x7f, 0x01, 0x7f, 0x60, 0x00, 0x00, 0x02, 0x26, 0x01, 0x16, 0x77, 0x61, 0x73, 0x69, 0x5f, 0x73,
    0x6e, 0x61, 0x70, 0x73, 0x68, 0x6f, 0x74, 0x5f, 0x70, 0x72, 0x65, 0x76, 0x69, 0x65, 0x77, 0x31,
    0x0b, 0x70, 0x6f, 0x6c, 0x6c, 0x5f, 0x6f, 0x6e, 0x65, 0x6f, 0x66, 0x66, 0x00, 0x00, 0x03, 0x02,
    0x01, 0x01, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x13, 0x02, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72,
    0x79, 0x02, 0x00, 0x06, 0x5f, 0x73, 0x74, 0x61, 0x72, 0x74, 0x00, 0x01, 0x0a, 0x27, 0x01, 0x25,
    0x00, 0x41, 0x10, 0x41, 0x01, 0x36, 0x02, 0x00, 0x41, 0x18, 0x42, 0x80, 0xc2, 0xd7, 0x2f, 0x37,
    0x03, 0x00, 0x03, 0x40, 0x41, 0x00, 0x41, 0xc0, 0x00, 0x41, 0x01, 0x41, 0x80, 0x01, 0x10, 0x00,
    0x1a, 0x0c, 0x00, 0x0b, 0x0b,
];

/// Whether `spec` is a pod's sandbox (pause) container, as containerd's CRI plugin marks it.
fn pod_sandbox(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get("io.kubernetes.cri.container-type"))
        .is_some_and(|t| t == "sandbox")
}

fn read_module(rootfs: &Path, spec: &Spec) -> Result<(Vec<String>, Vec<u8>)> {
    let args = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    let Some(arg0) = args.first().filter(|a| !a.is_empty()) else {
        return Err(Error::invalid(
            "process.args",
            "empty: the wasm_container handler runs the WebAssembly module process.args[0] \
             names (a file in the container's rootfs)",
        ));
    };
    let not_found = |why: String| {
        Error::invalid(
            "process.args[0]",
            format!("{arg0:?} is not a module file in the container's rootfs: {why}"),
        )
    };
    let file = kata_resource::open_in_root(rootfs, Path::new(arg0))
        .map_err(|e| not_found(e.to_string()))?;
    let mut bytes = Vec::new();
    use std::io::Read;
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| not_found(e.to_string()))?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(not_found(format!(
            "it is larger than {MAX_MODULE_BYTES} bytes"
        )));
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(Error::invalid(
            "process.args[0]",
            format!(
                "{arg0:?} is not a WebAssembly module (a binary module starts with \"\\0asm\"); \
                 the wasm_container handler runs WASI preview 1 modules"
            ),
        ));
    }
    Ok((args, bytes))
}

/// Compiles and instantiates the module `spec` names in `rootfs`, with its args, env, the
/// rootfs as the preopened `/`, its stdio and its limits; returns the task and the caller's
/// ends of its streams. Blocking (compiling takes a while): run off the async workers, with
/// the engine's ticker running (a start function runs at instantiation and must stay
/// killable).
pub(super) fn prepare(
    engine: &Engine,
    rootfs: &Path,
    spec: &Spec,
    sandbox_paused: bool,
) -> Result<(WasmTask, ProcessStreams)> {
    let (args, bytes) = if pod_sandbox(spec) {
        (vec!["pause".to_string()], POD_PAUSE_MODULE.to_vec())
    } else {
        read_module(rootfs, spec)?
    };
    let module = Module::from_binary(engine, &bytes).map_err(|e| {
        Error::invalid(
            "process.args[0]",
            format!("{:?} is not a module wasmtime can run: {e:#}", args[0]),
        )
    })?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory_limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let budget = CpuBudget::from_spec(cpu.and_then(|c| c.quota()), cpu.and_then(|c| c.period()));
    let control = Control::new(budget, sandbox_paused);
    let memory = MemoryUse::new(memory_limit);
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let (caller, module_stdio) = stdio::pipes(terminal, &control.on_kill());

    let process = spec.process().as_ref();
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&args)
        .stdin(module_stdio.stdin)
        .stdout(module_stdio.stdout)
        .stderr(module_stdio.stderr.clone())
        .allow_blocking_current_thread(true);
    for e in process.and_then(|p| p.env().as_ref()).into_iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            wasi.env(k, v);
        }
    }
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let perms = if readonly {
        FsPerms::ReadOnly
    } else {
        FsPerms::ReadWrite
    };
    wasi.preopened_dir(rootfs, "/", perms).map_err(|e| {
        Error::io(
            format!("opening the rootfs {} for the module", rootfs.display()),
            std::io::Error::other(format!("{e:#}")),
        )
    })?;

    let mut linker: Linker<Host> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi)
        .map_err(|e| Error::io("linking WASI", std::io::Error::other(format!("{e:#}"))))?;
    let mut store = Store::new(
        engine,
        Host {
            wasi: wasi.build_p1(),
            limiter: MemoryLimiter(memory.clone()),
        },
    );
    store.limiter(|h| &mut h.limiter);
    let c = control.clone();
    store.epoch_deadline_callback(move |_| {
        c.on_epoch()?;
        Ok(UpdateDeadline::Continue(1))
    });
    store.set_epoch_deadline(1);
    let instance = linker.instantiate(&mut store, &module).map_err(|e| {
        let refused = memory.failcnt.load(std::sync::atomic::Ordering::Relaxed) > 0;
        match memory_limit.filter(|_| refused) {
            Some(limit) => Error::invalid(
                "linux.resources.memory.limit",
                format!(
                    "{limit} bytes is less than the memory module {:?} starts with ({e:#})",
                    args[0]
                ),
            ),
            None => Error::invalid(
                "process.args[0]",
                format!(
                    "module {:?} cannot be instantiated: {e:#} (it may import more than WASI \
                     preview 1, which is all the wasm_container handler provides)",
                    args[0]
                ),
            ),
        }
    })?;
    if instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .is_err()
    {
        return Err(Error::invalid(
            "process.args[0]",
            format!(
                "module {:?} exports no `_start` function: the wasm_container handler runs \
                 WASI command modules",
                args[0]
            ),
        ));
    }
    let task = WasmTask {
        control,
        memory,
        ready: Mutex::new(Some(Ready {
            store,
            instance,
            stderr: module_stdio.stderr,
        })),
        streams: Mutex::new(None),
        exit: watch::channel(None).0,
        thread: Mutex::new(None),
    };
    Ok((task, caller))
}

impl WasmTask {
    /// Keeps the caller's ends of the streams for [`take_streams`](Self::take_streams).
    pub(super) fn set_streams(&self, streams: ProcessStreams) {
        *self.streams.lock().unwrap() = Some(streams);
    }

    /// The caller's ends of the streams, once (later calls: none).
    pub(super) fn take_streams(&self) -> ProcessStreams {
        self.streams.lock().unwrap().take().unwrap_or_default()
    }

    /// Runs the module's `_start` on a thread of its own; the exit status is published when
    /// it returns (after its streams are closed).
    pub(super) fn start(self: &Arc<Self>, name: &str, ticker: &Ticker) -> Result<()> {
        let Some(ready) = self.ready.lock().unwrap().take() else {
            return Err(Error::invalid(
                "container",
                match *self.exit.borrow() {
                    Some(status) => format!("{name} has already exited ({status})"),
                    None => format!("{name} is already started"),
                },
            ));
        };
        let ticking = ticker.ticking();
        let this = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!(
                "wasm-{}",
                name.chars().take(10).collect::<String>()
            ))
            .spawn(move || {
                let status = run(ready, &this.control);
                drop(ticking);
                this.exit.send_replace(Some(status));
            })
            .map_err(|e| Error::io(format!("starting the thread of {name}"), e))?;
        *self.thread.lock().unwrap() = Some(thread);
        Ok(())
    }

    /// Sends `signal`: a terminating one kills the module (before its start, it never runs),
    /// `STOP`/`CONT` pause and resume it; `0` and those ignored by default do nothing.
    ///
    /// A kill ends the module at its next epoch deadline, or through its streams when it is
    /// blocked reading or writing them. One blocked in another host call (a `poll_oneoff`
    /// sleep) cannot be interrupted: after [`KILL_GRACE`] its exit is published anyway (its
    /// waiters and the container's delete go on) and its thread ends on its own once the call
    /// returns.
    pub(super) fn signal(self: &Arc<Self>, signal: Signal) {
        let n = signal.number();
        if n == libc::SIGSTOP || n == libc::SIGTSTP || n == libc::SIGTTIN || n == libc::SIGTTOU {
            self.control.set_paused(true);
        } else if n == libc::SIGCONT {
            self.control.set_paused(false);
        } else if !(n == 0 || n == libc::SIGCHLD || n == libc::SIGURG || n == libc::SIGWINCH) {
            self.control.kill(signal);
            // Not started: it ends here, with its streams.
            if self.ready.lock().unwrap().take().is_some() {
                self.exit
                    .send_replace(Some(ExitStatus::from_signal(signal)));
            } else if self.exit.borrow().is_none() {
                let this = Arc::downgrade(self);
                let _ = std::thread::Builder::new()
                    .name("wasm-kill".into())
                    .spawn(move || {
                        std::thread::sleep(KILL_GRACE);
                        let Some(task) = this.upgrade() else { return };
                        task.exit.send_if_modified(|exit| {
                            if exit.is_some() {
                                return false;
                            }
                            tracing::warn!(
                                "a killed wasm module is blocked in a host call: its exit is \
                                 published now, its thread ends when the call returns"
                            );
                            *exit = Some(ExitStatus::from_signal(signal));
                            true
                        });
                    });
            }
        }
    }

    /// Waits for the module to end.
    pub(super) async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.subscribe();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(s) => *s,
            Err(_) => None,
        };
        status.unwrap_or(ExitStatus::from_signal(Signal::KILL))
    }

    /// Whether it runs now (started and not ended).
    pub(super) fn running(&self) -> bool {
        self.thread.lock().unwrap().is_some() && self.exit.borrow().is_none()
    }

    /// Kills it (if it runs) and joins its thread. Blocking, bounded by [`KILL_GRACE`]: a
    /// thread still blocked in a host call then is left to end on its own.
    pub(super) fn stop(self: &Arc<Self>) {
        if self.exit.borrow().is_none() {
            self.signal(Signal::KILL);
        }
        let deadline = std::time::Instant::now() + KILL_GRACE + Duration::from_millis(200);
        while self.exit.borrow().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let thread = self.thread.lock().unwrap().take();
        if let Some(t) = thread {
            // A status the thread published is a moment from its end.
            for _ in 0..100 {
                if t.is_finished() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Runs `_start` to its end: the exit status from `proc_exit`, a kill or a trap.
fn run(ready: Ready, control: &Control) -> ExitStatus {
    let Ready {
        mut store,
        instance,
        stderr,
    } = ready;
    let called = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
        Ok(start) => start.call(&mut store, ()),
        Err(e) => Err(e),
    };
    let status = match called {
        Ok(()) => ExitStatus::from_code(0),
        Err(e) => {
            if let Some(I32Exit(code)) = e.downcast_ref::<I32Exit>() {
                ExitStatus::from_code(*code)
            } else if let Some(Killed(signal)) = e.downcast_ref::<Killed>() {
                ExitStatus::from_signal(*signal)
            } else if control.killed().is_none() {
                let message = format!("wasm_container: the module trapped: {e:#}");
                tracing::info!("{message}");
                stdio::write_after_exit(&stderr, &message);
                TRAPPED
            } else {
                TRAPPED
            }
        }
    };
    // A module killed while in a host call (its stdin ended) reports the kill, as a process
    // killed by a signal does, whatever it did next.
    let status = control.killed().map_or(status, ExitStatus::from_signal);
    // Its streams end (the readers see end of file) before its status is published.
    drop(stderr);
    drop(store);
    status
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pod_pause_module_is_its_wat() {
        let wat = r#"(module
          (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (i32.store (i32.const 16) (i32.const 1))
            (i64.store (i32.const 24) (i64.const 100000000))
            (loop (drop (call 0 (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
                  (br 0))))"#;
        assert_eq!(wat::parse_str(wat).unwrap(), super::POD_PAUSE_MODULE);
    }
}
