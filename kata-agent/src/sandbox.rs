//! The sandbox: the guest-wide state the agent serves requests on — its storages (reference
//! counted by mount point, see [`StorageTable`]), its network and its containers, keyed by id.
//!
//! A container id is reserved for the whole of CreateContainer, so a concurrent duplicate gets
//! `ALREADY_EXISTS` and never half-creates anything.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{AgentError, Result};
use crate::hooks::{GuestHooks, HookState, Stage};
use crate::network::Network;
use crate::pod_namespaces::PodNamespaces;
use crate::runtime::container::Container;
use crate::runtime::process::Process;
use crate::runtime::Runtime;
use crate::storage::{StorageSpec, StorageTable};

/// How a sandbox is created (CreateSandbox).
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    /// The sandbox id.
    pub id: String,
    /// The guest's hostname.
    pub hostname: String,
    /// `resolv.conf` lines.
    pub dns: Vec<String>,
    /// Storages to mount.
    pub storages: Vec<StorageSpec>,
}

#[derive(Debug)]
enum Slot {
    /// CreateContainer is in progress.
    Creating,
    Ready(Arc<Container>),
}

#[derive(Debug)]
struct ContainerEntry {
    slot: Slot,
    /// The container's uses of storages (mount points in the table).
    storages: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct State {
    id: Option<String>,
    /// The sandbox's uses of storages.
    storages: Vec<PathBuf>,
    containers: HashMap<String, ContainerEntry>,
    /// OOM kills already reported, per container.
    oom_reported: HashMap<String, u64>,
    /// The pod's IPC and UTS namespaces, from CreateSandbox to DestroySandbox.
    pod_namespaces: Option<Arc<PodNamespaces>>,
    /// The init pid of the pod's first container (the infra container): its PID namespace is
    /// the one a container asking for `sandbox_pidns` joins.
    first_init: Option<i32>,
}

/// The agent's sandbox.
#[derive(Debug)]
pub struct Sandbox {
    runtime: Runtime,
    /// Whether the agent owns the machine (PID 1 in a guest): only then does it change
    /// guest-wide settings (hostname, `/etc/resolv.conf`).
    owns_guest: bool,
    storages: StorageTable,
    network: Network,
    state: Mutex<State>,
    /// The guest hooks CreateSandbox's `guest_hook_path` named ([`crate::hooks`]).
    guest_hooks: Mutex<Arc<GuestHooks>>,
}

/// Container ids name cgroups and appear in paths: keep them to a safe alphabet.
pub fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(AgentError::invalid("container_id", "is empty"));
    }
    if id == "."
        || id == ".."
        || id.len() > 255
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(AgentError::invalid(
            "container_id",
            format!("{id:?} may only hold letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

impl Sandbox {
    /// A sandbox on `runtime`. `owns_guest`: the agent is the guest's init; `owns_network`:
    /// its network namespace is the pod's, which the network calls may change (true for the
    /// guest's init, and for an agent started with `--own-network`).
    pub fn new(runtime: Runtime, owns_guest: bool, owns_network: bool) -> Self {
        Sandbox {
            runtime: runtime.with_pod_netns(owns_network),
            owns_guest,
            storages: StorageTable::new(),
            network: Network::new(owns_network),
            state: Mutex::new(State::default()),
            guest_hooks: Mutex::new(Arc::new(GuestHooks::default())),
        }
    }

    /// Sets the guest hooks every container gets (CreateSandbox's `guest_hook_path`).
    pub fn set_guest_hooks(&self, hooks: GuestHooks) {
        *self.guest_hooks.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(hooks);
    }

    /// The guest hooks every container gets.
    pub fn guest_hooks(&self) -> Arc<GuestHooks> {
        Arc::clone(&self.guest_hooks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs the guest hooks of `stage` for a container whose state is `state`.
    pub async fn run_guest_hooks(&self, stage: Stage, state: &HookState) {
        let hooks = self.guest_hooks();
        crate::hooks::run(self.runtime.reaper(), hooks.stage(stage), stage, state).await;
    }

    /// The guest's network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The guest's storages.
    pub fn storages(&self) -> &StorageTable {
        &self.storages
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Whether the agent runs as the guest's init.
    pub fn owns_guest(&self) -> bool {
        self.owns_guest
    }

    /// CreateSandbox: hostname, DNS, storages.
    pub fn create(&self, cfg: &SandboxConfig) -> Result<()> {
        if let Some(id) = &self.state().id {
            return Err(AgentError::SandboxExists(id.clone()));
        }
        if !cfg.hostname.is_empty() {
            if self.owns_guest {
                nix::unistd::sethostname(&cfg.hostname)
                    .map_err(|e| AgentError::sys(format!("sethostname {:?}", cfg.hostname), e))?;
            } else {
                tracing::debug!(hostname = %cfg.hostname, "not the guest's init: hostname left alone");
            }
        }
        if !cfg.dns.is_empty() {
            if self.owns_guest {
                let mut text = cfg.dns.join("\n");
                text.push('\n');
                std::fs::write("/etc/resolv.conf", text)
                    .map_err(|e| AgentError::io("write /etc/resolv.conf", e))?;
            } else {
                tracing::debug!("not the guest's init: /etc/resolv.conf left alone");
            }
        }
        // The pod's IPC and UTS namespaces (Kata's `setup_shared_namespaces`), with its hostname.
        let namespaces = PodNamespaces::new(&cfg.hostname)?;
        let mounted = self.storages.acquire(&cfg.storages)?;
        let mut st = self.state();
        if let Some(id) = st.id.clone() {
            drop(st);
            self.storages.release(&mounted);
            return Err(AgentError::SandboxExists(id));
        }
        st.pod_namespaces = Some(Arc::new(namespaces));
        st.id = Some(if cfg.id.is_empty() {
            "sandbox".to_string()
        } else {
            cfg.id.clone()
        });
        st.storages = mounted;
        Ok(())
    }

    /// DestroySandbox: removes every container and releases the sandbox's storages.
    pub async fn destroy(&self) -> Result<()> {
        let ids: Vec<String> = self.state().containers.keys().cloned().collect();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self
                .remove_container(&id, Some(Duration::from_secs(10)))
                .await
            {
                if !matches!(e, AgentError::ContainerNotFound(_)) {
                    tracing::warn!(container_id = %id, error = %e, "container not removed");
                    first_err.get_or_insert(e);
                }
            }
        }
        let storages = {
            let mut st = self.state();
            st.id = None;
            st.pod_namespaces = None;
            st.first_init = None;
            std::mem::take(&mut st.storages)
        };
        self.storages.release(&storages);
        // Kata's `shared` storages: kept past their containers, released with the sandbox.
        self.storages.release_shared();
        first_err.map_or(Ok(()), Err)
    }

    /// The spec with the container placed in the pod's namespaces, as Kata's agent does
    /// (`update_container_namespaces`): its IPC and UTS namespaces are the pod's (a container
    /// whose spec asks for a hostname other than the pod's gets a UTS namespace of its own with
    /// it); its PID namespace is the pod's first container's when `sandbox_pidns`, else a new
    /// one. A path the spec gave (a host's `/proc/<pid>/ns/...`) is never joined. Without a
    /// sandbox (no CreateSandbox) the spec is used as it is.
    fn in_pod_namespaces(&self, spec: &Spec, sandbox_pidns: bool) -> Result<Spec> {
        let (namespaces, first_init) = {
            let st = self.state();
            (st.pod_namespaces.clone(), st.first_init)
        };
        let mut spec = spec.clone();
        let Some(pod) = namespaces else {
            if sandbox_pidns {
                return Err(AgentError::FailedPrecondition(
                    "sandbox_pidns: there is no sandbox (CreateSandbox first) whose PID namespace \
                     the container could join"
                        .into(),
                ));
            }
            return Ok(spec);
        };
        let own_hostname = spec
            .hostname()
            .as_deref()
            .is_some_and(|h| !h.is_empty() && h != pod.hostname());
        let pid_path = match (sandbox_pidns, first_init) {
            (false, _) => None,
            (true, Some(pid)) => Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
            (true, None) => {
                return Err(AgentError::FailedPrecondition(
                    "sandbox_pidns: the sandbox has no container yet whose PID namespace the \
                     container could join (create the pod's infra container first)"
                        .into(),
                ))
            }
        };
        if let Some(nss) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.namespaces_mut().as_mut())
        {
            for ns in nss.iter_mut() {
                let path = match ns.typ() {
                    LinuxNamespaceType::Ipc => Some(pod.ipc_path()),
                    LinuxNamespaceType::Uts if !own_hostname => Some(pod.uts_path()),
                    LinuxNamespaceType::Uts => None,
                    LinuxNamespaceType::Pid => pid_path.clone(),
                    _ => continue,
                };
                ns.set_path(path);
            }
        }
        Ok(spec)
    }

    /// CreateContainer: mounts the container's storages and creates it, blocked before exec.
    /// `sandbox_pidns`: the container joins the PID namespace of the pod's first container.
    pub async fn create_container(
        &self,
        id: &str,
        exec_id: &str,
        storages: &[StorageSpec],
        spec: &Spec,
        sandbox_pidns: bool,
    ) -> Result<()> {
        validate_container_id(id)?;
        let spec = &self.in_pod_namespaces(spec, sandbox_pidns)?;
        {
            let mut st = self.state();
            if st.containers.contains_key(id) {
                return Err(AgentError::ContainerExists(id.to_string()));
            }
            st.containers.insert(
                id.to_string(),
                ContainerEntry {
                    slot: Slot::Creating,
                    storages: Vec::new(),
                },
            );
        }
        let result = async {
            // Hot-plugged disks named by PCI path or SCSI address: their /dev nodes.
            let storages = &crate::storage::resolve_devices(storages).await?;
            let mounted = self.storages.acquire(storages)?;
            // Trees the pod's containers write: bind sources inside them are opened beneath.
            let mut trees = self.storages.mount_points();
            trees.extend(self.container_rootfs());
            match self.runtime.create(id, exec_id, spec, &trees).await {
                Ok(c) => Ok((
                    c.with_termination_log(crate::diagnostic::termination_log_source(spec))
                        .with_hook_state(crate::hooks::HookState {
                            oci_version: spec.version().clone(),
                            annotations: spec.annotations().clone().unwrap_or_default(),
                            ..Default::default()
                        }),
                    mounted,
                )),
                Err(e) => {
                    self.storages.release(&mounted);
                    Err(e)
                }
            }
        }
        .await;
        let mut st = self.state();
        match result {
            Ok((c, mounted)) => {
                if st.pod_namespaces.is_some() && st.first_init.is_none() {
                    st.first_init = Some(c.init().pid);
                }
                st.containers.insert(
                    id.to_string(),
                    ContainerEntry {
                        slot: Slot::Ready(Arc::new(c)),
                        storages: mounted,
                    },
                );
                Ok(())
            }
            Err(e) => {
                st.containers.remove(id);
                Err(e)
            }
        }
    }

    /// The rootfs of the containers created so far.
    fn container_rootfs(&self) -> Vec<PathBuf> {
        self.state()
            .containers
            .values()
            .filter_map(|e| match &e.slot {
                Slot::Ready(c) => Some(c.rootfs.clone()),
                Slot::Creating => None,
            })
            .collect()
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        match self.state().containers.get(id) {
            Some(ContainerEntry {
                slot: Slot::Ready(c),
                ..
            }) => Ok(Arc::clone(c)),
            _ => Err(AgentError::ContainerNotFound(id.to_string())),
        }
    }

    /// The process `exec_id` of container `id`.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(id)?.process(exec_id)
    }

    /// Ids of the containers.
    pub fn container_ids(&self) -> Vec<String> {
        self.state().containers.keys().cloned().collect()
    }

    /// GetOOMEvent: waits until a container's OOM kill count grows and returns its id.
    pub async fn next_oom_event(&self) -> String {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let containers: Vec<Arc<Container>> = self
                .state()
                .containers
                .values()
                .filter_map(|e| match &e.slot {
                    Slot::Ready(c) => Some(Arc::clone(c)),
                    Slot::Creating => None,
                })
                .collect();
            for c in containers {
                let kills = c.oom_kills();
                let mut st = self.state();
                let seen = st.oom_reported.entry(c.id.clone()).or_insert(0);
                if kills > *seen {
                    *seen = kills;
                    return c.id.clone();
                }
            }
        }
    }

    /// ExecProcess.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<()> {
        if exec_id.is_empty() {
            return Err(AgentError::invalid("exec_id", "is empty"));
        }
        let c = self.container(id)?;
        c.reserve_exec(exec_id)?;
        match self.runtime.exec(&c, exec_id, process).await {
            Ok(p) => {
                c.complete_exec(exec_id, Some(Arc::new(p)));
                Ok(())
            }
            Err(e) => {
                c.complete_exec(exec_id, None);
                Err(e)
            }
        }
    }

    /// RemoveContainer: kills its processes, removes its cgroup, releases its storages.
    pub async fn remove_container(&self, id: &str, timeout: Option<Duration>) -> Result<()> {
        let c = self.container(id)?;
        c.destroy(timeout).await?;
        let entry = {
            let mut st = self.state();
            st.oom_reported.remove(id);
            st.containers.remove(id)
        };
        if let Some(entry) = entry {
            self.storages.release(&entry.storages);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(validate_container_id("c1-abc_9.x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "../../etc"] {
            let err = validate_container_id(bad).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{bad:?}");
            assert!(err.to_string().starts_with("container_id"));
        }
    }

    fn spec_with(hostname: Option<&str>, pid_path: Option<&str>) -> Spec {
        use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};
        let ns = |t, p: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(t);
            if let Some(p) = p {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        let mut spec = Spec::default();
        spec.set_hostname(hostname.map(str::to_owned));
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(vec![
                    ns(LinuxNamespaceType::Pid, pid_path),
                    ns(LinuxNamespaceType::Ipc, Some("/proc/1/ns/ipc")),
                    ns(LinuxNamespaceType::Uts, None),
                    ns(LinuxNamespaceType::Mount, None),
                ])
                .build()
                .unwrap(),
        ));
        spec
    }

    fn paths(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        let linux = spec.linux().as_ref().unwrap();
        linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[tokio::test]
    async fn containers_are_placed_in_the_pods_namespaces() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to unshare");
            return;
        }
        let sb = Sandbox::new(Runtime::new(crate::reaper::Reaper::new()), false, false);
        // No sandbox: the spec as it is, and no pod PID namespace to join.
        let alone = spec_with(None, None);
        assert_eq!(sb.in_pod_namespaces(&alone, false).unwrap(), alone);
        assert!(sb.in_pod_namespaces(&alone, true).is_err());
        sb.create(&SandboxConfig {
            id: "sb".into(),
            hostname: "kt-pod".into(),
            ..Default::default()
        })
        .unwrap();
        let pod = sb.state().pod_namespaces.clone().unwrap();
        let (ipc, uts) = (Some(pod.ipc_path()), Some(pod.uts_path()));
        // No hostname, or the pod's: the pod's IPC and UTS namespaces, a new PID one (the host
        // path in the spec is never joined).
        for hostname in [None, Some(""), Some("kt-pod")] {
            let placed = sb
                .in_pod_namespaces(&spec_with(hostname, Some("/proc/1/ns/pid")), false)
                .unwrap();
            assert_eq!(
                paths(&placed),
                [
                    (LinuxNamespaceType::Pid, None),
                    (LinuxNamespaceType::Ipc, ipc.clone()),
                    (LinuxNamespaceType::Uts, uts.clone()),
                    (LinuxNamespaceType::Mount, None),
                ],
                "{hostname:?}"
            );
        }
        // A hostname of its own: a UTS namespace of its own, the pod's IPC.
        let own = sb
            .in_pod_namespaces(&spec_with(Some("other"), None), false)
            .unwrap();
        assert_eq!(
            paths(&own)[1..3],
            [
                (LinuxNamespaceType::Ipc, ipc.clone()),
                (LinuxNamespaceType::Uts, None)
            ]
        );
        // sandbox_pidns before the pod has a first container: refused, naming the field.
        let e = sb.in_pod_namespaces(&alone, true).unwrap_err();
        assert!(e.to_string().contains("sandbox_pidns"), "{e}");
        sb.state().first_init = Some(4242);
        let shared = sb.in_pod_namespaces(&alone, true).unwrap();
        assert_eq!(
            paths(&shared)[0],
            (LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid".into()))
        );
        sb.destroy().await.unwrap();
        assert!(sb.state().pod_namespaces.is_none());
        assert_eq!(sb.in_pod_namespaces(&alone, false).unwrap(), alone);
    }
}
