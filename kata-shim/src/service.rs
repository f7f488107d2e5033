//! The `containerd.task.v2.Task` service: each call is one kata-sandbox call, plus the
//! bookkeeping containerd expects (process states, exit statuses, events).
//!
//! Events are published in the order the shim contract requires: create, start, exec added,
//! exec started, exit, delete, paused, resumed, OOM. A process's exit event is published after
//! its output has been copied to the end and before `Wait` returns.
//!
//! No lock is held across a boot: the sandbox slot is read at once by every call; only a
//! Create that needs the sandbox (boots it, or joins the one being booted) waits for the boot.
//! When the sandbox dies (kata-sandbox's liveness monitor), every started process's wait fails
//! and its exit (255) is published; processes never started get theirs from the death watch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::shim::shim::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ResizePtyRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcContext, TtrpcResult};
use kata_sandbox::crash::CrashStep;
use kata_sandbox::{ContainerSpec, ExitStatus, ProcessSpec, RootfsMount, Sandbox, Signal};

use crate::bundle::{self, Placement};
use crate::error::{Error, Result};
use crate::io::{self, Stdio};
use crate::process::{Exit, Handle, Proc};

/// Metadata keys the shim keeps with each container in the sandbox's `state.json`.
pub mod metadata {
    /// The bundle directory.
    pub const BUNDLE: &str = "io.containerd.bundle";
    /// The stdout fifo or log URI (to reconnect the output after a shim restart).
    pub const STDOUT: &str = "io.containerd.stdout";
    /// The stderr fifo or log URI.
    pub const STDERR: &str = "io.containerd.stderr";
    /// `true` when the task has a terminal.
    pub const TERMINAL: &str = "io.containerd.terminal";
}

/// The exit status of a process whose sandbox died under it (its real one is lost with the
/// VM), as the shim reports any process it could not wait for.
const EXIT_SANDBOX_DIED: u32 = 255;

/// How long a process's exit waits for its output to be copied to the end.
const OUTPUT_COPY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One task (container) of the sandbox.
struct TaskEntry {
    bundle: PathBuf,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

struct Shared {
    namespace: String,
    publisher: Option<RemotePublisher>,
    exit: Arc<ExitSignal>,
    root_dir: PathBuf,
    /// The sandbox, once booted (read at once: never held across an await).
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    /// Held by a Create that boots the sandbox, until its first container exists; a Create
    /// that joins waits for it. Nothing else takes it.
    boot: tokio::sync::Mutex<()>,
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
    /// Ids of tasks being created: reserved before anything is mounted, so a second Create
    /// with the same id answers AlreadyExists instead of sharing (and unmounting) the rootfs.
    creating: Mutex<std::collections::HashSet<String>>,
    /// The events published, by topic, with their text (tests have no containerd).
    #[cfg(test)]
    published: Mutex<Vec<(String, String)>>,
}

/// A task id reserved while its Create runs; released when dropped.
struct Reservation {
    shared: Arc<Shared>,
    id: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.creating.lock().unwrap().remove(&self.id);
    }
}

/// containerd's id of a process: its exec id, or the container id for the first process.
fn process_id<'a>(container_id: &'a str, exec_id: &'a str) -> &'a str {
    if exec_id.is_empty() {
        container_id
    } else {
        exec_id
    }
}

/// The pids of a container for `Pids` (`ctr task ps`): the guest's, from the agent's
/// `ListProcesses`. Kata's agent no longer serves that method (`UNIMPLEMENTED`); under it the
/// answer is what Kata's runtime-rs gives for every container, the shim's own pid.
fn pids_or_the_shims(pids: kata_sandbox::Result<Vec<u32>>) -> Result<Vec<u32>> {
    match pids {
        Err(kata_sandbox::Error::Agent(e))
            if e.code() == Some(kata_agent_client::Code::UNIMPLEMENTED) =>
        {
            tracing::info!(error = %e, "the agent lists no processes (Kata's agent): Pids answers the shim's pid, as Kata's runtime does");
            Ok(vec![std::process::id()])
        }
        other => Ok(other?),
    }
}

/// The Task service of one shim (one sandbox).
#[derive(Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
}

/// What of the spec starting a sandbox shapes the sandbox: the pod's network namespace, the
/// workload, the host cgroup and the pod's hostname.
struct FromSpec {
    network_namespace: Option<PathBuf>,
    workload: kata_sandbox::WorkloadSize,
    cgroups_path: Option<String>,
    hostname: Option<String>,
    /// The VFIO devices (`/dev/vfio/...`) the spec names: the sandbox is built with them
    /// (cold-plugged when `cold_plug_vfio` says so).
    vfio_devices: Vec<PathBuf>,
}

impl TaskService {
    /// A service publishing events to containerd through `publisher` (`None`: events are only
    /// logged, for tests without containerd). `exit` is signalled when containerd shuts the
    /// shim down. Sandboxes are created under `root_dir` (`/run/kata` by default).
    pub fn new(
        namespace: &str,
        publisher: Option<RemotePublisher>,
        exit: Arc<ExitSignal>,
        root_dir: impl Into<PathBuf>,
    ) -> Self {
        TaskService {
            shared: Arc::new(Shared {
                namespace: namespace.to_string(),
                publisher,
                exit,
                root_dir: root_dir.into(),
                sandbox: Mutex::new(None),
                boot: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(HashMap::new()),
                creating: Mutex::new(Default::default()),
                #[cfg(test)]
                published: Mutex::new(Vec::new()),
            }),
        }
    }

    fn task(&self, id: &str) -> Result<Arc<TaskEntry>> {
        self.shared
            .tasks
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "task",
                id: id.to_string(),
            })
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<TaskEntry>, Arc<Proc>)> {
        let task = self.task(id)?;
        if exec_id.is_empty() {
            let init = task.init.clone();
            return Ok((task, init));
        }
        let p = task
            .execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "exec",
                id: format!("{exec_id} in task {id}"),
            })?;
        Ok((task, p))
    }

    /// A crash point (kata-sandbox's feature `crash-points`, for the crash matrix's tests;
    /// nothing otherwise) with this shim's sandbox, if it has one.
    fn crash_point(&self, step: CrashStep) {
        let sandbox = self.sandbox().ok();
        kata_sandbox::crash::crash_point(step, sandbox.as_ref().map(|s| s.dir()));
    }

    fn sandbox(&self) -> Result<Arc<Sandbox>> {
        self.shared
            .sandbox
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::NotFound {
                kind: "sandbox",
                id: "(none running in this shim)".into(),
            })
    }

    /// The sandbox's host pid (the VMM's): what containerd shows as the task's pid, as Kata
    /// does.
    fn vmm_pid(&self) -> u32 {
        match self.shared.sandbox.lock().unwrap().as_ref() {
            Some(s) => s.pid(),
            None => 0,
        }
    }

    async fn publish(&self, event: impl Event + Send + 'static) {
        let topic = event.topic();
        tracing::debug!(%topic, "event");
        #[cfg(test)]
        self.shared
            .published
            .lock()
            .unwrap()
            .push((topic.clone(), format!("{event:?}")));
        if let Some(p) = &self.shared.publisher {
            let boxed: Box<dyn MessageDyn> = Box::new(event);
            if let Err(e) = p
                .publish(Context::default(), &topic, &self.shared.namespace, boxed)
                .await
            {
                tracing::warn!(%topic, error = %e, "publishing an event to containerd failed");
            }
        }
    }

    /// Boots the sandbox for the first container, from the configuration
    /// [`crate::runtime_options::sandbox_builder`] finds, with the container's annotations
    /// and network namespace ([`bundle::network_namespace`]).
    async fn boot(
        &self,
        sandbox_id: &str,
        options: Option<&Any>,
        annotations: std::collections::HashMap<String, String>,
        from_spec: FromSpec,
    ) -> Result<Arc<Sandbox>> {
        // `[factory] vm_cache_number`: a VM from kata-vm-cache when it has one that fits.
        let pod = crate::vm_cache::PodNeeds {
            sandbox_id: sandbox_id.to_string(),
            hostname: from_spec.hostname.clone(),
            network_namespace: from_spec.network_namespace.clone(),
            vfio_devices: !from_spec.vfio_devices.is_empty(),
            cgroups_path: from_spec.cgroups_path.clone(),
            config_annotations: crate::vm_cache::config_annotations(&annotations),
        };
        if let Some(sb) = crate::vm_cache::take_for_pod(&self.shared.root_dir, options, &pod).await
        {
            let sandbox = Arc::new(sb);
            self.watch_oom(&sandbox);
            self.watch_death(&sandbox);
            crate::monitor::serve(&sandbox);
            return Ok(sandbox);
        }
        let FromSpec {
            network_namespace,
            workload,
            cgroups_path,
            hostname,
            vfio_devices,
        } = from_spec;
        let mut builder =
            crate::runtime_options::sandbox_builder(options, annotations)?.workload(workload);
        // The pod's hostname: the spec starting the sandbox names it (CRI's pause container).
        if let Some(h) = hostname {
            builder = builder.hostname(h);
        }
        for d in vfio_devices {
            builder = builder.vfio_device(d);
        }
        match network_namespace {
            Some(ns) => {
                tracing::info!(sandbox_id, netns = %ns.display(), "the sandbox joins the pod's network namespace");
                builder = builder.network_namespace(ns);
            }
            None => tracing::info!(
                sandbox_id,
                "no network namespace path in the spec: the VM gets no network"
            ),
        }
        // The sandbox's host cgroup: the one the spec starting it names (`/default/<id>` from
        // `ctr`, the pod's from the kubelet).
        if let Some(path) = cgroups_path {
            tracing::info!(sandbox_id, cgroups_path = %path, "the VM runs in the spec's host cgroup");
            builder = builder.cgroups_path(path);
        }
        let sandbox = builder
            .id(sandbox_id)
            .root_dir(&self.shared.root_dir)
            .build()
            .await?;
        let sandbox = Arc::new(sandbox);
        self.watch_oom(&sandbox);
        self.watch_death(&sandbox);
        crate::monitor::serve(&sandbox);
        Ok(sandbox)
    }

    /// When the sandbox dies, ends the processes no waiter watches (created, never started):
    /// their exit (255) is published and `Wait` answers. Started ones end through their
    /// waiters, whose wait fails with the sandbox's death.
    fn watch_death(&self, sandbox: &Arc<Sandbox>) {
        let died = sandbox.on_death();
        let this = self.clone();
        tokio::spawn(async move {
            let Some(why) = died.await else {
                return;
            };
            tracing::error!(reason = %why, "the sandbox died: ending its tasks");
            let tasks: Vec<Arc<TaskEntry>> = this
                .shared
                .tasks
                .lock()
                .unwrap()
                .values()
                .cloned()
                .collect();
            for task in tasks {
                let execs: Vec<Arc<Proc>> = task.execs.lock().unwrap().values().cloned().collect();
                for p in std::iter::once(task.init.clone()).chain(execs) {
                    let never_started = matches!(*p.handle.lock().unwrap(), Handle::ExecPending(_))
                        || (p.exec_id.is_empty() && p.status() == Status::CREATED);
                    if never_started {
                        this.publish_exit(&p, Exit::now(EXIT_SANDBOX_DIED)).await;
                    }
                }
            }
        });
    }

    /// Publishes a process's exit and records it (once).
    async fn publish_exit(&self, p: &Proc, exit: Exit) {
        if !p.claim_exit() {
            return;
        }
        self.publish(TaskExit {
            container_id: p.container_id.clone(),
            id: process_id(&p.container_id, &p.exec_id).to_string(),
            pid: self.vmm_pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
        .await;
        p.set_exited(exit);
    }

    /// Publishes `TaskOOM` for every OOM kill the sandbox reports.
    fn watch_oom(&self, sandbox: &Arc<Sandbox>) {
        use futures_util::StreamExt;
        let mut events = sandbox.oom_events();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(container_id) = events.next().await {
                this.publish(TaskOOM {
                    container_id,
                    ..Default::default()
                })
                .await;
            }
        });
    }

    /// Reserves `id` for a Create (AlreadyExists if a task has it or is being created).
    fn reserve(&self, id: &str) -> Result<Reservation> {
        let tasks = self.shared.tasks.lock().unwrap();
        let mut creating = self.shared.creating.lock().unwrap();
        if tasks.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(Error::AlreadyExists {
                kind: "task",
                id: id.to_string(),
            });
        }
        Ok(Reservation {
            shared: self.shared.clone(),
            id: id.to_string(),
        })
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        // Held until the task is inserted (or the create failed).
        let _reservation = self.reserve(&id)?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = bundle::load_spec(&bundle)?;
        let placement = Placement::of(&spec, &id)?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let network_namespace = bundle::network_namespace(&spec);
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned());
        // What `static_sandbox_resource_mgmt` sizes a new sandbox's VM for.
        let workload = kata_sandbox::WorkloadSize::of_spec(&spec);
        let hostname = spec.hostname().clone();
        // VFIO devices (linux.devices, CDI annotations) of a container creating the sandbox,
        // resolved before any VM boots (crate::vfio).
        let vfio_devices = crate::vfio::sandbox_devices(&placement, &spec, &Default::default())?;
        let mounts: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount::new(&m.type_, &m.source, m.options.clone()))
            .collect();
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        // The sandbox mounts containerd's rootfs mounts itself (and unmounts them when the
        // container is deleted); root.path must lie inside the bundle.
        let cspec = ContainerSpec::from_bundle(&bundle, spec, mounts)?
            .id(&id)
            .terminal(stdio.terminal)
            .stdin(!stdio.stdin.is_empty())
            .metadata(metadata::BUNDLE, bundle.display().to_string())
            .metadata(metadata::STDOUT, &stdio.stdout)
            .metadata(metadata::STDERR, &stdio.stderr)
            .metadata(metadata::TERMINAL, stdio.terminal.to_string());

        // Only a Create waits for a boot in progress (it needs that sandbox); every other call
        // reads the slot at once.
        let boot = self.shared.boot.lock().await;
        let current = self.shared.sandbox.lock().unwrap().clone();
        let (sandbox, boot) = match (&placement, current) {
            (_, Some(s)) => {
                if let Placement::Join(sb) = &placement {
                    if sb != s.id() {
                        return Err(Error::NotFound {
                            kind: "sandbox",
                            id: sb.clone(),
                        });
                    }
                }
                drop(boot);
                (s, None)
            }
            (Placement::Join(sb), None) => {
                return Err(Error::NotFound {
                    kind: "sandbox",
                    id: sb.clone(),
                });
            }
            // The boot lock is kept until the first container exists: a Create joining this
            // sandbox waits for it.
            (Placement::NewSandbox, None) => (
                self.boot(
                    &id,
                    req.options.as_ref(),
                    annotations,
                    FromSpec {
                        network_namespace,
                        workload,
                        cgroups_path,
                        hostname,
                        vfio_devices,
                    },
                )
                .await?,
                Some(boot),
            ),
        };

        let created = self.create_container(&sandbox, &id, cspec, &stdio).await;
        let (container, copies) = match created {
            Ok(c) => c,
            Err(e) => {
                if boot.is_some() {
                    stop_sandbox(sandbox).await;
                }
                return Err(e);
            }
        };
        if boot.is_some() {
            *self.shared.sandbox.lock().unwrap() = Some(sandbox.clone());
        }
        drop(boot);

        let init = Proc::new(&id, "", stdio.clone(), Handle::Init(Arc::new(container)));
        *init.copies.lock().await = Some(copies);
        self.shared.tasks.lock().unwrap().insert(
            id.clone(),
            Arc::new(TaskEntry {
                bundle: bundle.clone(),
                init,
                execs: Mutex::new(HashMap::new()),
            }),
        );
        let pid = self.vmm_pid();
        self.publish(TaskCreate {
            container_id: id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        })
        .await;
        tracing::info!(container_id = %id, sandbox_id = %sandbox.id(), "task created");
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Creates the container in the sandbox and connects its stdio to containerd's.
    async fn create_container(
        &self,
        sandbox: &Sandbox,
        id: &str,
        cspec: ContainerSpec,
        stdio: &Stdio,
    ) -> Result<(kata_sandbox::Container, io::StdioCopies)> {
        let mut container = sandbox.create_container(cspec).await?;
        let (i, o, e) = (container.stdin(), container.stdout(), container.stderr());
        match io::connect(stdio, id, &self.shared.namespace, i, o, e).await {
            Ok(copies) => Ok((container, copies)),
            Err(e) => {
                if let Err(de) = container.delete().await {
                    tracing::warn!(container_id = %id, error = %de, "deleting a container whose stdio failed");
                }
                Err(e)
            }
        }
    }

    /// Takes over the sandbox `sandbox_id` when its `state.json` exists under the root and its
    /// VM still runs (a shim restarted while its sandbox lives): the VM, shares and agent are
    /// reconnected ([`Sandbox::restore`]) and each container becomes a task again, its output
    /// re-copied to the stdout/stderr it had, a started one waited for (its exit published as
    /// usual). Execs that ran under the previous shim are not taken over, nor is stdin.
    /// Returns how many tasks were taken over (0: no state). A sandbox that cannot be
    /// restored is an error and is left for `delete` to clean up.
    pub async fn reconnect(&self, sandbox_id: &str) -> Result<usize> {
        let dir = crate::vm_cache::sandbox_dir(&self.shared.root_dir, sandbox_id);
        if !kata_sandbox::persist::SandboxState::path(&dir).is_file() {
            return Ok(0);
        }
        let sandbox = Arc::new(Sandbox::restore(&dir).await?);
        crate::monitor::serve(&sandbox);
        let state = sandbox.state();
        let _boot = self.shared.boot.lock().await;
        for (id, c) in &state.containers {
            let meta = |k: &str| c.metadata.get(k).cloned().unwrap_or_default();
            let stdio = Stdio {
                stdin: String::new(),
                stdout: meta(metadata::STDOUT),
                stderr: meta(metadata::STDERR),
                terminal: meta(metadata::TERMINAL) == "true",
            };
            let mut container = sandbox.container(id)?;
            let (out, err) = (container.stdout(), container.stderr());
            let copies = match io::connect(&stdio, id, &self.shared.namespace, None, out, err).await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(container_id = %id, error = %e, "output not reconnected");
                    None
                }
            };
            let init = Proc::new(id, "", stdio, Handle::Init(Arc::new(container)));
            *init.copies.lock().await = copies;
            let started = c.started;
            self.shared.tasks.lock().unwrap().insert(
                id.clone(),
                Arc::new(TaskEntry {
                    bundle: PathBuf::from(meta(metadata::BUNDLE)),
                    init: init.clone(),
                    execs: Mutex::new(HashMap::new()),
                }),
            );
            if started {
                init.set_status(Status::RUNNING);
                self.spawn_waiter(init);
            }
        }
        self.watch_oom(&sandbox);
        self.watch_death(&sandbox);
        *self.shared.sandbox.lock().unwrap() = Some(sandbox);
        tracing::info!(%sandbox_id, tasks = state.containers.len(), "reconnected to a running sandbox");
        Ok(state.containers.len())
    }

    /// Waits for a started process, then publishes its exit and records it.
    fn spawn_waiter(&self, proc_: Arc<Proc>) {
        let this = self.clone();
        tokio::spawn(async move {
            let status = proc_.wait_sandbox_process().await;
            // The exit is published once the output is copied to the end (as containerd's
            // runc shim does). The copies are taken out of the mutex first: CloseIO and
            // Delete are not blocked meanwhile.
            let outputs = match proc_.copies.lock().await.as_mut() {
                Some(c) => c.take_outputs(),
                None => Vec::new(),
            };
            if !outputs.is_empty() {
                let all = async {
                    for h in outputs {
                        let _ = h.await;
                    }
                };
                // The agent ends the streams when the process exits; bound the wait anyway.
                if tokio::time::timeout(OUTPUT_COPY_TIMEOUT, all)
                    .await
                    .is_err()
                {
                    tracing::warn!(container_id = %proc_.container_id, exec_id = %proc_.exec_id, timeout = ?OUTPUT_COPY_TIMEOUT, "the output was not copied to the end in time: publishing the exit anyway");
                }
            }
            this.publish_exit(&proc_, Exit::now(status)).await;
            tracing::info!(container_id = %proc_.container_id, exec_id = %proc_.exec_id, status, "process exited");
        });
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let (task, p) = self.process(&req.id, &req.exec_id)?;
        if p.status() != Status::CREATED {
            return Err(Error::FailedPrecondition(format!(
                "process {} of task {} is {:?}, not created",
                req.exec_id,
                req.id,
                p.status()
            )));
        }
        let pid = self.vmm_pid();
        if req.exec_id.is_empty() {
            let c = p.container().expect("first process has its container");
            c.start().await?;
            p.set_status(Status::RUNNING);
            self.publish(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            })
            .await;
        } else {
            let spec = {
                let mut handle = p.handle.lock().unwrap();
                match std::mem::replace(&mut *handle, Handle::ExecStarting) {
                    Handle::ExecPending(s) => *s,
                    other => {
                        *handle = other;
                        return Err(Error::FailedPrecondition(format!(
                            "exec {} already started",
                            req.exec_id
                        )));
                    }
                }
            };
            let c = task
                .init
                .container()
                .expect("first process has its container");
            let mut process = match c.exec(spec.clone()).await {
                Ok(process) => process,
                Err(e) => {
                    // Not started: a retried Start runs the same spec.
                    *p.handle.lock().unwrap() = Handle::ExecPending(Box::new(spec));
                    return Err(e.into());
                }
            };
            let (i, o, e) = (process.stdin(), process.stdout(), process.stderr());
            let copies = io::connect(&p.stdio, &req.id, &self.shared.namespace, i, o, e).await;
            *p.handle.lock().unwrap() = Handle::Exec(Arc::new(process));
            let copies = match copies {
                Ok(c) => c,
                Err(e) => {
                    // It runs without its stdio: killed, and waited so its exit is recorded
                    // and published.
                    if let Err(ke) = p.signal(Signal::KILL).await {
                        tracing::warn!(container_id = %req.id, exec_id = %req.exec_id, error = %ke, "killing an exec whose stdio failed");
                    }
                    self.spawn_waiter(p);
                    return Err(e);
                }
            };
            *p.copies.lock().await = Some(copies);
            p.set_status(Status::RUNNING);
            self.publish(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            })
            .await;
        }
        self.spawn_waiter(p);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<api::DeleteResponse> {
        let (task, p) = self.process(&req.id, &req.exec_id)?;
        let pid = self.vmm_pid();
        match p.status() {
            Status::RUNNING | Status::PAUSED | Status::PAUSING => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot delete {} of task {} while it runs: kill it first",
                    if req.exec_id.is_empty() {
                        "the first process"
                    } else {
                        "the exec"
                    },
                    req.id
                )))
            }
            _ => {}
        }
        let exit = p.exit().unwrap_or_else(|| Exit::now(0));
        // Its stdio copies end with it (a stdin copy whose containerd writer never closed
        // included).
        drop(p.copies.lock().await.take());
        if !req.exec_id.is_empty() {
            task.execs.lock().unwrap().remove(&req.exec_id);
        } else {
            let execs: Vec<_> = task.execs.lock().unwrap().drain().map(|(_, e)| e).collect();
            for e in execs {
                drop(e.copies.lock().await.take());
            }
            // Execs still listed are ended with the container; its rootfs mounts go with it.
            let deleted = self.sandbox()?.delete_container(&req.id).await;
            self.shared.tasks.lock().unwrap().remove(&req.id);
            match deleted {
                Ok(())
                | Err(kata_sandbox::Error::NotFound { .. })
                | Err(kata_sandbox::Error::SandboxDead { .. }) => {}
                Err(e) => {
                    tracing::warn!(container_id = %req.id, error = %e, "removing the container from the sandbox")
                }
            }
            // The last container is gone (and none is being created): so is the sandbox.
            if let Some(s) = self.take_sandbox_if_unused() {
                stop_sandbox(s).await;
            }
        }
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            id: process_id(&req.id, &req.exec_id).to_string(),
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
        .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let task = self.task(&req.id)?;
        if task.init.status() != Status::RUNNING {
            return Err(Error::FailedPrecondition(format!(
                "task {} is not running",
                req.id
            )));
        }
        let any = req.spec.as_ref().ok_or(Error::InvalidArgument {
            field: "exec spec",
            reason: "missing".into(),
        })?;
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&any.value).map_err(|e| Error::InvalidArgument {
                field: "exec spec",
                reason: e.to_string(),
            })?;
        let spec = ProcessSpec::from_oci(process)
            .terminal(req.terminal)
            .stdin(!req.stdin.is_empty());
        {
            let mut execs = task.execs.lock().unwrap();
            if execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists {
                    kind: "exec",
                    id: req.exec_id.clone(),
                });
            }
            let stdio = Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            execs.insert(
                req.exec_id.clone(),
                Proc::new(
                    &req.id,
                    &req.exec_id,
                    stdio,
                    Handle::ExecPending(Box::new(spec)),
                ),
            );
        }
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    async fn do_kill(&self, req: KillRequest) -> Result<()> {
        let (task, p) = self.process(&req.id, &req.exec_id)?;
        let signal = Signal::try_from(req.signal).map_err(|e| Error::InvalidArgument {
            field: "signal",
            reason: e.to_string(),
        })?;
        match p.status() {
            Status::STOPPED => {
                return Err(Error::NotFound {
                    kind: "process",
                    id: format!("{} (already finished)", p.container_id),
                })
            }
            Status::CREATED => {
                // Never started: nothing runs in the guest; it simply ends.
                let status = ExitStatus::from_signal(signal).to_shell_status() as u32;
                self.publish_exit(&p, Exit::now(status)).await;
                return Ok(());
            }
            _ => {}
        }
        if req.all && req.exec_id.is_empty() {
            let execs: Vec<_> = task.execs.lock().unwrap().values().cloned().collect();
            for e in execs {
                if e.status() == Status::RUNNING {
                    let _ = e.signal(signal).await;
                }
            }
        }
        p.signal(signal).await?;
        Ok(())
    }

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
        let (task, p) = self.process(&req.id, &req.exec_id)?;
        let exit = p.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: task.bundle.display().to_string(),
            pid: self.vmm_pid(),
            status: p.status().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: MessageField::from_option(exit.map(|e| e.timestamp())),
            ..Default::default()
        })
    }

    async fn do_pause_resume(&self, id: &str, pause: bool) -> Result<()> {
        let task = self.task(id)?;
        let sandbox = self.sandbox()?;
        if pause {
            sandbox.pause_container(id).await?;
            task.init.set_status(Status::PAUSED);
            self.publish(TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            })
            .await;
        } else {
            sandbox.resume_container(id).await?;
            task.init.set_status(Status::RUNNING);
            self.publish(TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            })
            .await;
        }
        Ok(())
    }

    async fn do_stats(&self, id: &str) -> Result<StatsResponse> {
        self.task(id)?;
        let stats = self.sandbox()?.container_stats(id).await?;
        let metrics = crate::stats::to_cgroup_v1_metrics(&stats);
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| Error::InvalidArgument {
                    field: "stats",
                    reason: e.to_string(),
                })?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        self.task(&req.id)?;
        let any = req.resources.as_ref().ok_or(Error::InvalidArgument {
            field: "resources",
            reason: "missing".into(),
        })?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument {
                field: "resources",
                reason: e.to_string(),
            })?;
        self.sandbox()?
            .update_container(&req.id, &resources)
            .await?;
        Ok(())
    }

    /// Takes the sandbox out of its slot when no task is left and none is being created
    /// (checked under [`reserve`](Self::reserve)'s locks, so a Create cannot slip in).
    fn take_sandbox_if_unused(&self) -> Option<Arc<Sandbox>> {
        let tasks = self.shared.tasks.lock().unwrap();
        let creating = self.shared.creating.lock().unwrap();
        if !tasks.is_empty() || !creating.is_empty() {
            return None;
        }
        self.shared.sandbox.lock().unwrap().take()
    }

    /// Stops the sandbox if no task is left, and lets the shim exit.
    async fn do_shutdown(&self) -> Result<()> {
        if !self.shared.tasks.lock().unwrap().is_empty()
            || !self.shared.creating.lock().unwrap().is_empty()
        {
            return Ok(());
        }
        if let Some(s) = self.take_sandbox_if_unused() {
            stop_sandbox(s).await;
        }
        self.shared.exit.signal();
        Ok(())
    }
}

/// Shuts a sandbox down (VM stopped, everything it created removed).
async fn stop_sandbox(sandbox: Arc<Sandbox>) {
    let id = sandbox.id().to_string();
    // Waiter tasks may still hold a clone for a moment.
    let mut sandbox = sandbox;
    for _ in 0..100 {
        match Arc::try_unwrap(sandbox) {
            Ok(s) => {
                if let Err(e) = s.shutdown().await {
                    tracing::warn!(sandbox_id = %id, error = %e, "sandbox shutdown");
                }
                return;
            }
            Err(shared) => {
                sandbox = shared;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    tracing::warn!(sandbox_id = %id, "sandbox still referenced at shutdown: dropping it (its VM is killed)");
}

fn log_result<T>(call: &str, id: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        tracing::warn!(call, id, error = %e, "request failed");
        e.into()
    })
}

#[async_trait]
impl containerd_shim::Task for TaskService {
    #[tracing::instrument(name = "task.Create", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        let created = self.do_create(req).await;
        if created.is_ok() {
            self.crash_point(CrashStep::Create);
        }
        log_result("Create", &id, created)
    }

    #[tracing::instrument(name = "task.Start", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        self.crash_point(CrashStep::Start);
        let id = req.id.clone();
        log_result("Start", &id, self.do_start(req).await)
    }

    #[tracing::instrument(name = "task.Delete", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.crash_point(CrashStep::Delete);
        let id = req.id.clone();
        log_result("Delete", &id, self.do_delete(req).await)
    }

    #[tracing::instrument(name = "task.Exec", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.crash_point(CrashStep::Exec);
        let id = req.id.clone();
        log_result("Exec", &id, self.do_exec(req).await).map(|_| api::Empty::new())
    }

    #[tracing::instrument(name = "task.ResizePty", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let r = async {
            let (_, p) = self.process(&req.id, &req.exec_id)?;
            p.resize(req.height, req.width).await?;
            Ok(())
        }
        .await;
        log_result("ResizePty", &req.id, r).map(|_| api::Empty::new())
    }

    #[tracing::instrument(name = "task.State", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let id = req.id.clone();
        self.do_state(req).await.map_err(|e| {
            tracing::debug!(id, error = %e, "State");
            e.into()
        })
    }

    #[tracing::instrument(name = "task.Pids", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let r = async {
            self.task(&req.id)?;
            let pids = pids_or_the_shims(self.sandbox()?.container_pids(&req.id).await)?;
            Ok(PidsResponse {
                processes: pids
                    .into_iter()
                    .map(|pid| ProcessInfo {
                        pid,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        .await;
        log_result("Pids", &req.id, r)
    }

    #[tracing::instrument(name = "task.Kill", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        log_result("Kill", &id, self.do_kill(req).await).map(|_| api::Empty::new())
    }

    #[tracing::instrument(name = "task.Wait", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (_, p) = log_result("Wait", &req.id, self.process(&req.id, &req.exec_id))?;
        let exit = p.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    #[tracing::instrument(name = "task.Stats", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        log_result("Stats", &req.id, self.do_stats(&req.id).await)
    }

    #[tracing::instrument(name = "task.Connect", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        if !req.id.is_empty() {
            log_result("Connect", &req.id, self.task(&req.id))?;
        }
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.vmm_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    #[tracing::instrument(name = "task.Shutdown", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id()))]
    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.crash_point(CrashStep::Shutdown);
        log_result("Shutdown", &req.id, self.do_shutdown().await).map(|_| api::Empty::new())
    }

    #[tracing::instrument(name = "task.CloseIO", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let (_, p) = log_result("CloseIO", &req.id, self.process(&req.id, &req.exec_id))?;
        if req.stdin {
            if let Some(c) = p.copies.lock().await.as_ref() {
                c.close_stdin();
            }
        }
        Ok(api::Empty::new())
    }

    #[tracing::instrument(name = "task.Update", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        log_result("Update", &id, self.do_update(req).await).map(|_| api::Empty::new())
    }

    #[tracing::instrument(name = "task.Pause", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        log_result("Pause", &req.id, self.do_pause_resume(&req.id, true).await)
            .map(|_| api::Empty::new())
    }

    #[tracing::instrument(name = "task.Resume", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id(), container_id = %req.id))]
    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        log_result(
            "Resume",
            &req.id,
            self.do_pause_resume(&req.id, false).await,
        )
        .map(|_| api::Empty::new())
    }

    #[tracing::instrument(name = "task.Checkpoint", skip_all, fields(sandbox_id = crate::telemetry::sandbox_id()))]
    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(containerd_shim::protos::ttrpc::Error::RpcStatus(
            containerd_shim::protos::ttrpc::get_status(
                containerd_shim::protos::ttrpc::Code::UNIMPLEMENTED,
                "checkpoint is not supported by kata-rs: a VM sandbox cannot be checkpointed by CRIU",
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    //! Tier 2 on the test backend (`[hypervisor.host-agent]`: the real agent on this host, no
    //! VM). Needs root and the kata-agent binary (`cargo build -p kata-agent`).

    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use containerd_shim::Task;

    use super::*;

    fn ctx() -> TtrpcContext {
        TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
        }
    }

    #[test]
    fn pids_under_an_agent_without_list_processes_are_the_shims() {
        let rpc = |code| {
            Err(kata_sandbox::Error::Agent(kata_agent_client::Error::Rpc {
                method: "ListProcesses",
                code,
                message: "/grpc.AgentService/ListProcesses is not supported".into(),
            }))
        };
        assert_eq!(
            pids_or_the_shims(rpc(kata_agent_client::Code::UNIMPLEMENTED)).unwrap(),
            vec![std::process::id()]
        );
        // Any other failure stays one.
        let e = pids_or_the_shims(rpc(kata_agent_client::Code::NOT_FOUND)).unwrap_err();
        assert!(e.to_string().contains("ListProcesses"), "{e}");
        assert_eq!(pids_or_the_shims(Ok(vec![1, 7])).unwrap(), vec![1, 7]);
    }

    /// A shim service on a private root, with a configuration file for the test backend whose
    /// agent starts after `agent_delay` (a slow boot).
    struct Fixture {
        tmp: tempfile::TempDir,
        svc: TaskService,
        options: Any,
    }

    impl Fixture {
        fn new(agent_delay: &str) -> Fixture {
            assert!(
                nix::unistd::geteuid().is_root(),
                "the test backend needs root (namespaces, mounts)"
            );
            let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
            let tmp = tempfile::tempdir().unwrap();
            let script = tmp.path().join("slow-agent");
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nsleep {agent_delay}\nexec {} \"$@\"\n",
                    agent.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            let config = tmp.path().join("configuration.toml");
            std::fs::write(
                &config,
                format!(
                    "[hypervisor.host-agent]\npath = \"{}\"\n\n[agent.kata]\ndial_timeout = 30\nhealth_check_request_timeout_ms = 1000\n",
                    script.display()
                ),
            )
            .unwrap();
            let rootfs = tmp.path().join("rootfs");
            kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
            // runtimeoptions.v1.Options: config_path (field 2).
            let path = config.display().to_string();
            let mut value = vec![0x12, path.len() as u8];
            value.extend_from_slice(path.as_bytes());
            let options = Any {
                type_url: "runtimeoptions.v1.Options".into(),
                value,
                ..Default::default()
            };
            let svc = TaskService::new(
                "test",
                None,
                Arc::new(ExitSignal::default()),
                tmp.path().join("run"),
            );
            Fixture { tmp, svc, options }
        }

        /// A bundle for task `id` running `args`; joining sandbox `join` if given; `hooks` is
        /// the spec's `hooks` object.
        fn bundle(
            &self,
            id: &str,
            args: &[&str],
            join: Option<&str>,
            hooks: serde_json::Value,
        ) -> PathBuf {
            let bundle = self.tmp.path().join(format!("bundle-{id}"));
            std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
            let mut annotations = serde_json::Map::new();
            if let Some(sb) = join {
                annotations.insert(
                    "io.kubernetes.cri.container-type".into(),
                    "container".into(),
                );
                annotations.insert("io.kubernetes.cri.sandbox-id".into(), sb.into());
            }
            let spec = serde_json::json!({
                "ociVersion": "1.0.2",
                "process": { "args": args, "cwd": "/", "env": ["PATH=/bin:/usr/bin"], "user": { "uid": 0, "gid": 0 } },
                "root": { "path": "rootfs" },
                "annotations": annotations,
                "hooks": hooks,
                "linux": { "namespaces": [ { "type": "pid" }, { "type": "mount" } ] }
            });
            std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
            bundle
        }

        fn create_request(&self, id: &str, bundle: &Path) -> CreateTaskRequest {
            let rootfs = self.tmp.path().join("rootfs").display().to_string();
            CreateTaskRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                rootfs: vec![containerd_shim::protos::types::mount::Mount {
                    type_: "bind".into(),
                    source: rootfs,
                    options: vec!["rbind".into(), "ro".into()],
                    ..Default::default()
                }],
                options: MessageField::some(self.options.clone()),
                ..Default::default()
            }
        }

        fn exits(&self) -> Vec<String> {
            self.svc
                .shared
                .published
                .lock()
                .unwrap()
                .iter()
                .filter(|(topic, _)| topic == "/tasks/exit")
                .map(|(_, text)| text.clone())
                .collect()
        }
    }

    /// How long `call` takes, which must not fail with anything but `NotFound`.
    async fn timed<T: std::fmt::Debug>(
        call: impl std::future::Future<Output = TtrpcResult<T>>,
    ) -> Duration {
        let t0 = Instant::now();
        let r = call.await;
        if let Err(e) = &r {
            assert!(format!("{e:?}").contains("NOT_FOUND"), "{e:?}");
        }
        t0.elapsed()
    }

    /// Issue 9 row 12: the shim held one mutex through a whole boot, so Connect, State and
    /// Kill of every task waited for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_do_not_need_the_booting_sandbox_answer_at_once() {
        let f = Fixture::new("3");
        let a = f.bundle("a", &["sleep", "60"], None, serde_json::Value::Null);
        let svc = f.svc.clone();
        let req = f.create_request("a", &a);
        let booting = tokio::spawn(async move { svc.create(&ctx(), req).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!booting.is_finished(), "the agent starts after 3 s");
        let took = timed(f.svc.connect(&ctx(), ConnectRequest::default())).await;
        assert!(
            took < Duration::from_secs(1),
            "Connect took {took:?} during a boot"
        );
        let took = timed(f.svc.state(
            &ctx(),
            StateRequest {
                id: "other".into(),
                ..Default::default()
            },
        ))
        .await;
        assert!(
            took < Duration::from_secs(1),
            "State took {took:?} during a boot"
        );
        let took = timed(f.svc.kill(
            &ctx(),
            KillRequest {
                id: "other".into(),
                signal: 9,
                ..Default::default()
            },
        ))
        .await;
        assert!(
            took < Duration::from_secs(1),
            "Kill took {took:?} during a boot"
        );
        assert!(
            !booting.is_finished(),
            "still booting: the calls above did not wait for it"
        );
        booting
            .await
            .unwrap()
            .expect("the task is created once the agent answers");

        // A second container of the pod whose create is slow (a createRuntime hook that takes
        // 2 s): the first task's State and Pids answer meanwhile.
        let hooks = serde_json::json!({ "createRuntime": [ { "path": "/bin/sleep", "args": ["sleep", "2"] } ] });
        let b = f.bundle("b", &["sleep", "60"], Some("a"), hooks);
        let svc = f.svc.clone();
        let req = f.create_request("b", &b);
        let joining = tokio::spawn(async move { svc.create(&ctx(), req).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = timed(f.svc.state(
            &ctx(),
            StateRequest {
                id: "a".into(),
                ..Default::default()
            },
        ))
        .await;
        assert!(
            took < Duration::from_secs(1),
            "State(a) took {took:?} during Create(b)"
        );
        assert!(!joining.is_finished(), "Create(b) runs its 2 s hook");
        joining.await.unwrap().expect("b joins the sandbox");

        for id in ["b", "a"] {
            f.svc
                .delete(
                    &ctx(),
                    DeleteRequest {
                        id: id.into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        let root = f.tmp.path().join("run");
        assert!(!root.join("a").exists(), "the sandbox directory is removed");
        assert!(kata_testkit::leaks::mounts_under(&root).is_empty());
    }

    /// Issue 9 row 10 at the shim: the "VM" (the test backend's agent) is killed while a task
    /// runs with an exec running and another created: every one of them gets its exit
    /// published and Wait answers, within seconds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_the_sandbox_dies_every_process_gets_its_exit() {
        // Its own sandbox id: the sandboxes of concurrent tests share the host's cgroup tree
        // (kata_sandboxed_pod/<id>), so two tests with one id removed each other's cgroup.
        let f = Fixture::new("0");
        let a = f.bundle("dies", &["sleep", "600"], None, serde_json::Value::Null);
        f.svc
            .create(&ctx(), f.create_request("dies", &a))
            .await
            .unwrap();
        f.svc
            .start(
                &ctx(),
                StartRequest {
                    id: "dies".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let exec_spec = |args: &[&str]| {
            let p = serde_json::json!({ "args": args, "cwd": "/", "env": ["PATH=/bin"], "user": { "uid": 0, "gid": 0 } });
            MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: p.to_string().into_bytes(),
                ..Default::default()
            })
        };
        for (exec_id, start) in [("running", true), ("created", false)] {
            f.svc
                .exec(
                    &ctx(),
                    ExecProcessRequest {
                        id: "dies".into(),
                        exec_id: exec_id.into(),
                        spec: exec_spec(&["sleep", "600"]),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            if start {
                f.svc
                    .start(
                        &ctx(),
                        StartRequest {
                            id: "dies".into(),
                            exec_id: exec_id.into(),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
            }
        }
        let sandbox = f.svc.sandbox().unwrap();
        let agent = *sandbox.host_pids().last().expect("the agent's pid");
        drop(sandbox);
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        for exec_id in ["", "running", "created"] {
            let w = tokio::time::timeout(
                Duration::from_secs(10),
                f.svc.wait(
                    &ctx(),
                    WaitRequest {
                        id: "dies".into(),
                        exec_id: exec_id.into(),
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("Wait({exec_id:?}) did not answer within 10 s of the death"))
            .unwrap();
            assert_eq!(w.exit_status, EXIT_SANDBOX_DIED, "{exec_id:?}");
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let exits = f.exits();
        for id in [", id: \"dies\"", ", id: \"running\"", ", id: \"created\""] {
            assert_eq!(
                exits.iter().filter(|e| e.contains(id)).count(),
                1,
                "{id} in {exits:?}"
            );
        }
        for exec_id in ["running", "created", ""] {
            f.svc
                .delete(
                    &ctx(),
                    DeleteRequest {
                        id: "dies".into(),
                        exec_id: exec_id.into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        let root = f.tmp.path().join("run");
        assert!(
            !root.join("dies").exists(),
            "the sandbox directory is removed"
        );
        assert!(kata_testkit::leaks::mounts_under(&root).is_empty());
        let procs =
            kata_testkit::leaks::processes_mentioning(&root.display().to_string(), "kata_shim-");
        assert!(procs.is_empty(), "{procs:?}");
    }
}
