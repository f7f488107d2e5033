//! The container runtime: OCI containers on plain Linux primitives (`nix`).
//!
//! - [`spec`] validates an OCI spec and translates it into an [`config::InitConfig`];
//! - [`Runtime::create`] creates the cgroup, spawns the init helper ([`child`], the agent binary
//!   re-executed single-threaded), which builds the container and blocks before exec;
//! - [`container::Container::start`] lets it exec; [`Runtime::exec`] runs more processes in it;
//! - [`process::Process`] holds a process's exit status and streams.
//!
//! Why not youki's `libcontainer`: it is heavy to build on the 2-core builders, keeps its own
//! state directories and assumes a host runtime's view of the world (systemd, hooks, its own
//! init protocol); the guest needs a small, explicit subset that fits in one crate.

pub mod caps;
pub mod cgroup;
pub mod channel;
pub mod child;
pub mod config;
pub mod container;
pub mod devices;
pub mod path;
pub mod process;
pub mod seccomp;
pub mod spec;
pub mod stdio;
pub mod sysctl;
pub mod user;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use tokio::net::UnixStream;

use self::cgroup::{container_cgroup_path, Cgroup, Hierarchy};
use self::channel::{recv_async, send_async, FromHelper, HelperError, ToHelper};
use self::config::{InitConfig, Mode};
use self::container::Container;
use self::process::Process;
use self::spec::{plan_container, plan_process, Filesystems};
use self::stdio::{ChildStdio, ParentStdio};
use crate::error::{AgentError, Result};
use crate::reaper::{ExitWatch, Reaper};

/// The first argument that turns the agent binary into the container init helper.
pub const CONTAINER_INIT_ARG: &str = "__container-init";

/// How long one setup step of the helper may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates containers and exec'd processes.
#[derive(Debug)]
pub struct Runtime {
    reaper: Arc<Reaper>,
    hierarchy: Option<Hierarchy>,
    filesystems: Filesystems,
    helper: PathBuf,
    no_pivot: bool,
    pod_netns: bool,
}

/// A process that passed setup.
struct Launched {
    pid: i32,
    exit: ExitWatch,
    stdio: ParentStdio,
    channel: UnixStream,
}

impl Runtime {
    /// A runtime on this system's cgroup hierarchy and filesystems, spawning
    /// `/proc/self/exe __container-init` as the helper.
    pub fn new(reaper: Arc<Reaper>) -> Self {
        let hierarchy = Hierarchy::detect();
        if hierarchy.is_none() {
            tracing::warn!("no cgroup filesystem mounted: containers run without cgroups");
        }
        Runtime {
            reaper,
            hierarchy,
            filesystems: Filesystems::detect(),
            helper: PathBuf::from("/proc/self/exe"),
            no_pivot: false,
            pod_netns: false,
        }
    }

    /// Whether the agent's own network namespace is the pod's (the agent is the guest's init):
    /// then a container sharing it may set `net.*` sysctls. On a host it is the host's, and
    /// they are refused.
    pub fn with_pod_netns(mut self, pod_netns: bool) -> Self {
        self.pod_netns = pod_netns;
        self
    }

    /// Enters every container's root with `MS_MOVE` + `chroot` instead of `pivot_root` (runc's
    /// `--no-pivot`). The agent does this by itself where `pivot_root` is refused (an initramfs
    /// root); this makes the host exercise the same path.
    pub fn with_no_pivot(mut self, no_pivot: bool) -> Self {
        self.no_pivot = no_pivot;
        self
    }

    /// The reaper the runtime registers its processes with.
    pub fn reaper(&self) -> &Arc<Reaper> {
        &self.reaper
    }

    /// Creates container `id` from `spec`: its init process is set up and waits for
    /// [`Container::start`]. `exec_id` is the id its init process answers to. `pod_trees`: the
    /// directories the pod's containers can write (storages' mount points, other containers'
    /// rootfs), beneath which bind sources are opened (see [`spec::plan_container`]).
    ///
    /// On failure nothing is left behind: no process, no cgroup (mounts live in the container's
    /// own mount namespace and go with its init).
    pub async fn create(
        &self,
        id: &str,
        exec_id: &str,
        spec: &Spec,
        pod_trees: &[PathBuf],
    ) -> Result<Container> {
        // Planning reads the image (`/etc/passwd`, stats on the shared rootfs): off the async
        // worker, so a slow or hostile rootfs cannot stall other requests.
        let (cid, owned, filesystems, pod_netns, trees) = (
            id.to_string(),
            spec.clone(),
            self.filesystems.clone(),
            self.pod_netns,
            pod_trees.to_vec(),
        );
        let mut plan =
            blocking(move || plan_container(&cid, &owned, &filesystems, pod_netns, &trees)).await?;
        if let Mode::Container(setup) = &mut plan.init.mode {
            setup.no_pivot = self.no_pivot;
        }
        let cg_path = container_cgroup_path(plan.cgroups_path.as_deref(), id)?;
        let cgroup = match &self.hierarchy {
            Some(h) => Some(Cgroup::create(h, &cg_path, plan.resources.as_ref())?),
            None => None,
        };
        let size = spec
            .process()
            .as_ref()
            .and_then(|p| p.console_size().as_ref().map(console_size))
            .unwrap_or((0, 0));
        let seccomp = plan.init.process.seccomp.clone();
        match self.launch(plan.init, cgroup.as_ref(), size).await {
            Ok(l) => {
                let init = Process::new(id, exec_id, l.pid, l.exit, l.stdio);
                Ok(Container::new(id, plan.rootfs, init, cgroup, l.channel).with_seccomp(seccomp))
            }
            Err(e) => {
                if let Some(cg) = cgroup {
                    let _ = tokio::task::spawn_blocking(move || cg.destroy()).await;
                }
                Err(e)
            }
        }
    }

    /// Runs `process` in the running container `container` as `exec_id`.
    pub async fn exec(
        &self,
        container: &Container,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<Process> {
        if container.status() != container::Status::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is {:?}: exec needs it running",
                container.id,
                container.status()
            )));
        }
        let (owned, rootfs) = (process.clone(), container.rootfs.clone());
        let mut process_cfg = blocking(move || plan_process(&owned, &rootfs, "process")).await?;
        // An exec'd process runs under the container's profile, as with runc.
        process_cfg.seccomp = container.seccomp().cloned();
        let cfg = InitConfig {
            id: format!("{}/{exec_id}", container.id),
            process: process_cfg,
            mode: Mode::Exec {
                init_pid: container.init().pid,
            },
        };
        let size = process
            .console_size()
            .as_ref()
            .map(console_size)
            .unwrap_or((0, 0));
        let l = self.launch(cfg, container.cgroup(), size).await?;
        Ok(Process::new(&container.id, exec_id, l.pid, l.exit, l.stdio))
    }

    fn spawn_helper(&self, stdio: ChildStdio, sock: OwnedFd) -> Result<(i32, ExitWatch)> {
        let mut cmd = std::process::Command::new(&self.helper);
        cmd.arg(CONTAINER_INIT_ARG)
            .env_clear()
            .stdin(Stdio::from(stdio.stdin))
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr));
        let raw = sock.as_raw_fd();
        let target = child::SOCKET_FD;
        // SAFETY: the closure runs in the forked child before exec and only calls dup2/fcntl,
        // which are async-signal-safe; `raw` stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let r = if raw == target {
                    libc::fcntl(raw, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, target)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = self
            .reaper
            .spawn(|| cmd.spawn().map(|child| child.id() as i32))
            .map_err(|e| AgentError::io(format!("spawn {}", self.helper.display()), e));
        drop(sock);
        spawned
    }

    /// Spawns the helper for `cfg` and drives it until the process is set up.
    async fn launch(
        &self,
        cfg: InitConfig,
        cgroup: Option<&Cgroup>,
        (rows, cols): (u16, u16),
    ) -> Result<Launched> {
        let id = cfg.id.clone();
        let is_container = matches!(cfg.mode, Mode::Container(_));
        let (child_stdio, parent_stdio) = if cfg.process.terminal {
            stdio::pty(rows, cols)
        } else {
            stdio::pipes()
        }
        .map_err(|e| AgentError::io(format!("stdio for {id}"), e))?;
        let (agent_end, helper_end) =
            std::os::unix::net::UnixStream::pair().map_err(|e| AgentError::io("socketpair", e))?;
        let helper = self.spawn_helper(child_stdio, helper_end.into())?;
        let mut workload: Option<(i32, ExitWatch)> = None;
        let result = async {
            agent_end
                .set_nonblocking(true)
                .map_err(|e| AgentError::io("socket", e))?;
            let mut sock =
                UnixStream::from_std(agent_end).map_err(|e| AgentError::io("socket", e))?;
            if let Some(cg) = cgroup {
                cg.add_pid(helper.0)?;
            }
            send_async(&mut sock, &ToHelper::Config(Box::new(cfg)))
                .await
                .map_err(|e| AgentError::io(format!("send config to the init of {id}"), e))?;
            let pid = match self.recv(&mut sock, &id).await? {
                Some(FromHelper::Pid(pid)) => pid,
                other => return Err(unexpected(&id, other, "its pid")),
            };
            workload = Some((pid, self.reaper.track(pid)));
            send_async(&mut sock, &ToHelper::Ack)
                .await
                .map_err(|e| AgentError::io(format!("acknowledge the init of {id}"), e))?;
            let code = tokio::time::timeout(SETUP_TIMEOUT, helper.1.wait())
                .await
                .map_err(|_| timeout(&id, "the init helper to exit"))?;
            if code != 0 {
                return Err(AgentError::ContainerSetup {
                    container_id: id.clone(),
                    message: format!("init helper exited with {code}"),
                });
            }
            match (is_container, self.recv(&mut sock, &id).await?) {
                (true, Some(FromHelper::Ready)) => {}
                // The exec'd process runs: its end of the socket closed on exec.
                (false, None) => {}
                (_, other) => return Err(unexpected(&id, other, "readiness")),
            }
            Ok(sock)
        }
        .await;
        match result {
            Ok(channel) => {
                let (pid, exit) = workload.ok_or_else(|| AgentError::ContainerSetup {
                    container_id: id.clone(),
                    message: "no pid reported".into(),
                })?;
                Ok(Launched {
                    pid,
                    exit,
                    stdio: parent_stdio,
                    channel,
                })
            }
            Err(e) => {
                tracing::debug!(id = %id, error = %e, "setup failed, killing what was started");
                for (pid, exit) in std::iter::once(&helper).chain(workload.as_ref()) {
                    if exit.try_get().is_none() {
                        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(10), exit.wait()).await;
                }
                Err(e)
            }
        }
    }

    /// Reads the helper's next message (`None`: it closed the socket, by exiting or exec'ing).
    async fn recv(&self, sock: &mut UnixStream, id: &str) -> Result<Option<FromHelper>> {
        tokio::time::timeout(SETUP_TIMEOUT, recv_async::<_, FromHelper>(sock))
            .await
            .map_err(|_| timeout(id, "the init helper"))?
            .map_err(|e| AgentError::io(format!("read from the init of {id}"), e))
    }
}

/// Runs `f` on tokio's blocking pool, in the caller's span (its logs keep the request's ids).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| AgentError::Internal(format!("spec planning failed: {e}")))?
}

/// `process.consoleSize` as (rows, columns), clamped to what a terminal holds.
fn console_size(b: &oci_spec::runtime::Box) -> (u16, u16) {
    let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
    (clamp(b.height()), clamp(b.width()))
}

fn timeout(id: &str, what: &str) -> AgentError {
    AgentError::Timeout {
        what: format!("{what} of {id}"),
        seconds: SETUP_TIMEOUT.as_secs(),
    }
}

/// Maps what the helper said (or did not say) into an error.
fn unexpected(id: &str, got: Option<FromHelper>, wanted: &str) -> AgentError {
    match got {
        Some(FromHelper::Error(HelperError {
            field: Some(field),
            message,
        })) => AgentError::InvalidArgument {
            field,
            reason: message,
        },
        Some(FromHelper::Error(HelperError {
            field: None,
            message,
        })) => AgentError::ContainerSetup {
            container_id: id.to_string(),
            message,
        },
        Some(other) => AgentError::ContainerSetup {
            container_id: id.to_string(),
            message: format!("expected {wanted}, got {other:?}"),
        },
        None => AgentError::ContainerSetup {
            container_id: id.to_string(),
            message: format!("the init exited before reporting {wanted}"),
        },
    }
}
