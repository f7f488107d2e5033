//! `virt_container`: containers in a micro-VM, driven through the guest agent.
//!
//! [`VirtContainer`] puts the three lower layers together and names none of their insides:
//! the VM comes from kata-hypervisor's [`backend`] (whatever `HypervisorType` the
//! configuration names) and is asked what it can do through its `Capabilities`; everything on
//! the host (shared directory, container rootfs mounts, later volumes, network, cgroups,
//! devices) is owned by kata-resource's [`SandboxResources`]; the guest is reached through
//! kata-agent-client's typed [`Agent`].
//!
//! Start: host resources (the shared directory, and the pod's network joined to taps when the
//! sandbox has a network namespace), then the VM with the devices they yield, wait until the
//! guest's agent port answers (the backend's business), connect the agent, give the guest the
//! pod's network ([`network`]: interfaces, neighbours, routes), `CreateSandbox` with the
//! storages the resources yield. Every step that fails undoes the ones before it.
//!
//! Liveness ([`health`]): [`RuntimeHandler::wait_dead`] resolves when the VM exits or the agent
//! fails its health checks; from then on the process streams end with an error and shutdown
//! only stops the VM and releases the host side.

mod agent_log;
mod block;
mod boot_slots;
mod handover;
mod health;
mod network;
pub(crate) mod resize;
mod streams;
mod template;
mod vfio;
mod volumes;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kata_agent_client::{
    Agent, AgentAddress, ConnectOptions, ContainerStats, ExitStatus, SandboxSetup, Signal, Storage,
    WriteGate,
};
use kata_hypervisor::{backend, Capabilities, Hypervisor, HypervisorState, VsockAddress};
use kata_resource::{GuestStorage, ResourcesState, SandboxResources};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::builder::SandboxConfig;
use crate::error::{Error, Result};
use crate::handler::blocking;
use crate::handler::{
    HandlerState, OomEvents, ProcessStreams, RootfsInput, RuntimeHandler, RuntimeHandlerKind,
    SpecBuilder, StdioConfig,
};
use crate::sandbox::BootTimings;
use health::HealthCheck;

/// How long a restore waits for the agent of a VM that is already up.
const RESTORE_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `DestroySandbox` may take at shutdown before the VM is stopped anyway.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the agent may take to kill a container's processes on `RemoveContainer`.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

/// Console lines quoted in boot errors.
const CONSOLE_LINES: usize = 20;

/// The VM directory's name inside the sandbox directory.
const VM_DIR: &str = "vm";

/// How long a virtiofsd's exit waits for its VM's, to report the VM's end as the cause.
const DAEMON_CAUSE_GRACE: Duration = Duration::from_millis(500);

/// What `state.json` keeps of a `virt_container` sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct VirtState {
    /// The VM (its backend's own state inside, opaque here).
    vm: HypervisorState,
    /// The host resources (`None` once released or handed over).
    resources: Option<ResourcesState>,
    /// The VM's size and the containers' demands ([`resize`]).
    #[serde(default)]
    sizing: resize::SizingState,
}

/// A sandbox whose containers run in a micro-VM.
pub(crate) struct VirtContainer {
    id: String,
    vm: Arc<dyn Hypervisor>,
    caps: Capabilities,
    agent: Agent,
    /// `None` once released or handed over.
    resources: Arc<Mutex<Option<SandboxResources>>>,
    /// Why the sandbox died, once [`RuntimeHandler::wait_dead`] found it dead.
    dead: watch::Sender<Option<String>>,
    /// How the agent's health is checked.
    health: HealthCheck,
    /// The vCPUs are paused ([`RuntimeHandler::pause_sandbox`]): the agent cannot answer.
    paused: AtomicBool,
    /// Held while the VM is paused: the agent connections' writes wait in this process (a
    /// vhost-user vsock backend must see no host traffic while QEMU has its rings stopped).
    gate: WriteGate,
    /// How containers' volumes are made ([`volumes`]).
    volumes: volumes::VolumeSettings,
    /// The VM's size following the containers' limits.
    sizing: resize::Sizing,
    /// VFIO devices: cold-plugged at boot, or hot-plugged per container ([`vfio`]).
    vfio: vfio::VfioDevices,
    /// The agent's log, re-emitted as `kata_agent` events ([`agent_log`]).
    agent_log: agent_log::AgentLog,
}

impl std::fmt::Debug for VirtContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtContainer")
            .field("id", &self.id)
            .field("hypervisor", &self.vm.kind())
            .field("agent", &self.agent.address())
            .finish_non_exhaustive()
    }
}

/// The agent client's form of the address the hypervisor reports (kata-hypervisor and
/// kata-agent-client do not depend on each other).
fn agent_address(a: VsockAddress) -> Result<AgentAddress> {
    Ok(match a {
        VsockAddress::Vsock { cid, port } => AgentAddress::Vsock { cid, port },
        VsockAddress::HybridVsock { uds, port } => AgentAddress::HybridVsock { uds, port },
        VsockAddress::Unix { path } => AgentAddress::Unix(path),
        // `VsockAddress` is non-exhaustive: a newer kata-hypervisor may report a new kind.
        other => Err(kata_hypervisor::Error::Unsupported {
            backend: "kata-sandbox",
            what: format!(
                "the agent address {other:?} (upgrade kata-sandbox with kata-hypervisor)"
            ),
        })?,
    })
}

/// The agent's form of a storage kata-resource describes.
fn agent_storage(s: GuestStorage) -> Storage {
    Storage::new(s.driver, s.source, s.mount_point)
        .fstype(s.fstype)
        .options(s.options)
        .driver_options(s.driver_options)
}

impl VirtContainer {
    /// Starts the sandbox of `config` in `dir` (which exists): host resources, VM, agent.
    pub(crate) async fn start(
        config: &SandboxConfig,
        dir: &Path,
        t0: Instant,
    ) -> Result<(VirtContainer, BootTimings)> {
        let hv = &config.hypervisor;
        let caps = backend::capabilities(config.hypervisor_type, hv)?;
        // boot_slots: at most a few guests boot at once on this host; the wait for a slot is
        // not the boot's (its timings and agent timeout start once admitted).
        let admission_bound = config.agent.connect_options().dial_timeout;
        let (_boot_slot, admission) = boot_slots::admit(&config.id, &caps, admission_bound).await;
        let t0 = t0 + admission;
        let mut share_fs = kata_resource::ShareFsConfig::from_hypervisor(hv)?;
        share_fs.msize_9p = share_fs.msize_9p.max(8192);
        let sandbox_dir = dir.to_path_buf();
        let network = config.network_config()?;
        let use_blocks = block::in_use(&caps, hv);
        let cgroups = config.cgroups_config();
        let bind_mounts = config.runtime.sandbox_bind_mounts.clone();
        let mut resources = blocking("setting up the sandbox's host resources", move || {
            let mut resources = SandboxResources::with_share_fs(&sandbox_dir, &share_fs)?;
            // Before the VM is prepared: its NICs are among the devices the resources yield.
            // On error `resources` is dropped, which releases the shared directory.
            resources.set_up_network(&network)?;
            resources.use_block_devices(use_blocks);
            // The sandbox's host cgroup, before the VM is made (bad input leaves nothing).
            resources.set_up_cgroups(&cgroups)?;
            resources.set_up_sandbox_bind_mounts(&bind_mounts)?;
            Ok(resources)
        })
        .instrument(tracing::info_span!("sandbox.host_resources", sandbox_id = %config.id))
        .await?;
        let host_resources = t0.elapsed();
        // From here on, dropping `resources` (an error) releases them.
        let vm_dir = kata_resource::safe_child(dir, VM_DIR)?;
        let vm = backend::create(
            config.hypervisor_type,
            &config.id,
            agent_log::with_agent_params(hv, &config.agent),
            &vm_dir,
        )?;
        // A second boot (QEMU's stuck vsock backend) needs a fresh virtiofsd on the same socket:
        // the first exits with the QEMU it served.
        if let Some(restarter) = resources.share_fs().and_then(|s| s.daemon_restarter()) {
            vm.set_reboot_hook(std::sync::Arc::new(move || {
                restarter.restart().map_err(|e| e.to_string())
            }));
        }
        let opts = config.agent.connect_options();
        let vfio = vfio::VfioDevices::for_sandbox(config)?;
        let gate = WriteGate::new();
        let booted = async {
            let mut devices = resources.devices();
            devices.extend(vfio.boot_devices());
            vm.prepare(devices)
                .instrument(tracing::info_span!("vm.prepare", sandbox_id = %config.id))
                .await?;
            // What lies outside the sandbox directory (cgroups, taps), for a cleanup after a
            // crash before state.json exists.
            resources.record_early()?;
            vm.start()
                .instrument(tracing::info_span!("vm.start", sandbox_id = %config.id))
                .await?;
            // The VMM and its helpers into the sandbox's host cgroup as soon as they run.
            let first_pids = vm.pids();
            resources.add_vmm_pids(&first_pids)?;
            // The built-in VMM runs as threads of this process: those go in one by one.
            let (vcpus, devices) = vm.in_process_threads();
            if !vcpus.is_empty() {
                resources.add_vmm_threads(&vcpus, &devices)?;
            }
            let vm_started = t0.elapsed();
            vm.wait_ready(opts.dial_timeout.saturating_sub(t0.elapsed()))
                .instrument(tracing::info_span!("vm.wait_ready", sandbox_id = %config.id))
                .await
                .map_err(|e| boot_error(e, opts.dial_timeout))?;
            let guest_answering = t0.elapsed();
            // A second boot (the reboot hook above) runs a new VMM: into the cgroup as well.
            let pids = vm.pids();
            if pids != first_pids {
                resources.add_vmm_pids(&pids)?;
            }
            let remaining = opts
                .dial_timeout
                .saturating_sub(t0.elapsed())
                .max(Duration::from_secs(1));
            let agent = connect(
                &vm,
                ConnectOptions {
                    dial_timeout: remaining,
                    ..opts
                },
                &gate,
            )
            .instrument(tracing::info_span!("agent.connect", sandbox_id = %config.id))
            .await?;
            let agent_connected = t0.elapsed();
            if template::is_clone(hv) {
                template::freshen(&agent).await?;
            }
            // The pod's network, before the sandbox is created (as Kata's runtime does).
            network::configure_guest(&agent, resources.guest_network())
                .instrument(tracing::info_span!("guest.network", sandbox_id = %config.id))
                .await?;
            let storages = resources
                .sandbox_storages(&caps)
                .into_iter()
                .map(agent_storage);
            let setup = SandboxSetup::new(&config.id)
                .hostname(
                    config
                        .hostname
                        .clone()
                        .unwrap_or_else(|| config.id.chars().take(12).collect()),
                )
                .storages(storages);
            agent.create_sandbox(&setup).await?;
            Ok::<_, Error>((agent, vm_started, guest_answering, agent_connected))
        }
        .await;
        let (agent, vm_started, guest_answering, agent_connected) = match booted {
            Ok(b) => b,
            Err(e) => {
                if let Err(se) = vm.stop().await {
                    tracing::warn!(sandbox_id = %config.id, error = %se, "stopping the VM of a failed start");
                }
                return Err(e);
            }
        };
        let sizing = resize::Sizing::new(
            hv,
            &caps,
            config.runtime.static_sandbox_resource_mgmt,
            Default::default(),
        );
        let agent_log = agent_log::AgentLog::start(
            &config.id,
            agent.address().clone(),
            config.agent.log_port,
            gate.clone(),
        );
        let marks = vm.start_marks();
        let timings = BootTimings {
            validation: crate::boot_timings::validation(),
            host_resources,
            helpers_started: marks
                .helpers_ready
                .map_or(host_resources, |at| at.saturating_duration_since(t0)),
            vmm_running: marks
                .vmm_running
                .map_or(vm_started, |at| at.saturating_duration_since(t0)),
            vm_started,
            guest_answering,
            agent_connected,
            ready: t0.elapsed(),
        };
        Ok((
            VirtContainer {
                id: config.id.clone(),
                vm,
                caps,
                agent,
                resources: Arc::new(Mutex::new(Some(resources))),
                dead: watch::channel(None).0,
                health: HealthCheck::from_config(&config.agent),
                paused: AtomicBool::new(false),
                gate,
                volumes: volumes::VolumeSettings::from_config(config),
                sizing,
                vfio,
                agent_log,
            },
            timings,
        ))
    }

    /// Takes over a running sandbox from its saved state: the VM (backend restore), the host
    /// resources (adopted), the agent (reconnected). On error everything is handed back
    /// untouched, for a later restore or a cleanup.
    pub(crate) async fn restore(
        config: &SandboxConfig,
        dir: &Path,
        saved: &HandlerState,
    ) -> Result<VirtContainer> {
        let state = parse_state(dir, saved)?;
        let vm = backend::restore(&config.id, config.hypervisor.clone(), &state.vm).await?;
        let Some(saved_resources) = state.resources.clone() else {
            return Err(Error::CorruptState {
                path: crate::persist::SandboxState::path(dir),
                reason: "no host resources recorded: the sandbox was shut down".into(),
            });
        };
        let adopted = {
            let (d, s) = (dir.to_path_buf(), saved_resources);
            let use_blocks = block::in_use(&vm.capabilities(), &config.hypervisor);
            blocking("adopting the sandbox's host resources", move || {
                let mut r = SandboxResources::adopt(&d, &s)?;
                r.use_block_devices(use_blocks);
                Ok(r)
            })
            .await
        };
        let resources = match adopted {
            Ok(r) => r,
            Err(e) => {
                give_back_vm(&vm).await;
                return Err(e);
            }
        };
        let opts = ConnectOptions {
            dial_timeout: config
                .agent
                .connect_options()
                .dial_timeout
                .min(RESTORE_DIAL_TIMEOUT),
            ..config.agent.connect_options()
        };
        // A sandbox detached while paused is taken over paused: nothing is sent until resumed.
        let paused = matches!(vm.state(), kata_hypervisor::VmState::Paused);
        let gate = WriteGate::new();
        if paused {
            gate.hold();
        }
        let agent = async {
            let agent = connect(&vm, opts, &gate).await?;
            // The connection answers only once the agent does.
            agent.check().await?;
            Ok::<_, Error>(agent)
        }
        .await;
        let sizing = resize::Sizing::new(
            &config.hypervisor,
            &vm.capabilities(),
            config.runtime.static_sandbox_resource_mgmt,
            state.sizing.clone(),
        );
        match agent {
            Ok(agent) => Ok(VirtContainer {
                agent_log: agent_log::AgentLog::start(
                    &config.id,
                    agent.address().clone(),
                    config.agent.log_port,
                    gate.clone(),
                ),
                volumes: volumes::VolumeSettings::from_config(config),
                sizing,
                vfio: vfio::VfioDevices::restored(config),
                id: config.id.clone(),
                caps: vm.capabilities(),
                paused: AtomicBool::new(paused),
                gate,
                vm,
                agent,
                resources: Arc::new(Mutex::new(Some(resources))),
                dead: watch::channel(None).0,
                health: HealthCheck::from_config(&config.agent),
            }),
            Err(e) => {
                resources.detach();
                give_back_vm(&vm).await;
                Err(e)
            }
        }
    }

    /// Cleans up after a `virt_container` sandbox whose owner died: the VM's processes (the
    /// backend decides how) and the host resources, from the saved state when there is one.
    /// Returns the processes killed.
    pub(crate) fn cleanup(dir: &Path, saved: Option<&HandlerState>) -> Result<Vec<u32>> {
        let state = saved.and_then(|s| match parse_state(dir, s) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cleaning up without the VM state");
                None
            }
        });
        let default_vm_dir = kata_resource::safe_child(dir, VM_DIR)?;
        // A state names its VM directory; one outside the sandbox directory is not ours to
        // delete (a corrupt or edited file): the default place is used instead.
        let vm_dir = state
            .as_ref()
            .map(|s| s.vm.vm_dir.clone())
            .filter(|d| kata_resource::path_within(dir, d).is_ok_and(|p| &p == d))
            .unwrap_or(default_vm_dir);
        let vm_state = state.as_ref().map(|s| {
            let mut vm = s.vm.clone();
            vm.vm_dir = vm_dir.clone();
            vm
        });
        let report = backend::cleanup(vm_state.as_ref(), &vm_dir)?;
        SandboxResources::cleanup(dir, state.as_ref().and_then(|s| s.resources.as_ref()))?;
        Ok(report.killed)
    }

    /// Releases a container's host resources (off the async worker).
    async fn release(&self, container_id: &str) -> Result<()> {
        let (resources, id) = (self.resources.clone(), container_id.to_string());
        blocking("releasing a container's host resources", move || {
            remove_container(&resources, &id)
        })
        .await
    }
}

/// Releases what container `id` holds on the host (nothing once everything is released).
fn remove_container(resources: &Mutex<Option<SandboxResources>>, id: &str) -> Result<()> {
    if let Some(r) = resources.lock().unwrap().as_mut() {
        r.remove_container(id)?;
    }
    Ok(())
}

/// Records a container's `linux.resources` for the sandbox's host cgroup (its cpuset).
fn update_host_cgroups(
    resources: &Mutex<Option<SandboxResources>>,
    id: &str,
    oci: &oci_spec::runtime::Spec,
) -> Result<()> {
    let limits = oci.linux().as_ref().and_then(|l| l.resources().as_ref());
    match resources.lock().unwrap().as_mut() {
        Some(r) => Ok(r.update_container_cgroups(id, limits)?),
        None => Err(Error::ShutDown),
    }
}

/// Releases every host resource (a stopped VM no longer uses them); later calls do nothing.
fn release_all(resources: &Mutex<Option<SandboxResources>>) -> Result<()> {
    match resources.lock().unwrap().take() {
        Some(r) => Ok(r.release()?),
        None => Ok(()),
    }
}

/// Connects to the agent while watching the VM: a VM that exits (guest panic) ends the wait
/// with the console's last lines.
async fn connect(
    vm: &Arc<dyn Hypervisor>,
    opts: ConnectOptions,
    gate: &WriteGate,
) -> Result<Agent> {
    let address = agent_address(vm.agent_address()?)?;
    tokio::select! {
        r = Agent::connect_with_gate(&address, opts, gate) => r.map_err(|e| Error::AgentTimeout {
            after: opts.dial_timeout,
            detail: e.to_string(),
            console: vm.console_tail(CONSOLE_LINES),
        }),
        how = vm.wait_exit() => Err(Error::VmExited { how, console: vm.console_tail(CONSOLE_LINES) }),
    }
}

/// The sandbox error for a VM whose agent port never answered, or that ended while booting.
fn boot_error(e: kata_hypervisor::Error, total: Duration) -> Error {
    match e {
        kata_hypervisor::Error::VmExited { how, console } => Error::VmExited { how, console },
        kata_hypervisor::Error::AgentNotReady {
            detail, console, ..
        } => Error::AgentTimeout {
            after: total,
            detail,
            console,
        },
        other => other.into(),
    }
}

/// Lets a VM taken over by a failed restore run on, as it was found.
async fn give_back_vm(vm: &Arc<dyn Hypervisor>) {
    if let Err(e) = vm.detach().await {
        tracing::warn!(error = %e, "handing the VM back after a failed restore");
    }
}

fn parse_state(dir: &Path, saved: &HandlerState) -> Result<VirtState> {
    serde_json::from_value(saved.state.clone()).map_err(|e| Error::CorruptState {
        path: crate::persist::SandboxState::path(dir),
        reason: format!("the virt_container state: {e}"),
    })
}

#[async_trait]
impl RuntimeHandler for VirtContainer {
    fn kind(&self) -> RuntimeHandlerKind {
        RuntimeHandlerKind::VirtContainer
    }

    async fn create_container(
        &self,
        container_id: &str,
        rootfs: RootfsInput,
        spec: &SpecBuilder<'_>,
    ) -> Result<()> {
        let (source, mode) = rootfs.into_source();
        let guest = {
            let (resources, id) = (self.resources.clone(), container_id.to_string());
            blocking("setting up a container's rootfs", move || {
                let mut guard = resources.lock().unwrap();
                let r = guard.as_mut().ok_or(Error::ShutDown)?;
                Ok(r.add_container(&id, source, mode)?)
            })
            .await?
        };
        // Disks (a block rootfs) hot-plugged for the container, unplugged if it fails.
        let mut disks = Vec::new();
        let created = async {
            let disk_storages =
                block::attach(&self.vm, container_id, guest.block_devices, &mut disks).await?;
            let mut oci = spec(&guest.rootfs_path)?;
            let vfio_devices = self
                .vfio
                .attach(&self.vm, &self.resources, container_id, &mut oci)
                .await?;
            let (oci, volume_storages) = volumes::set_up(
                &self.resources,
                &self.volumes,
                &self.vm,
                container_id,
                oci,
                &mut disks,
            )
            .await?;
            // The VM grows for the container's limits before the container exists.
            let limits = oci.linux().as_ref().and_then(|l| l.resources().as_ref());
            self.sizing
                .grow(container_id, limits, &*self.vm, &self.agent)
                .await?;
            let storages: Vec<Storage> = guest
                .storages
                .into_iter()
                .map(agent_storage)
                .chain(disk_storages)
                .chain(volume_storages)
                .collect();
            // The host cgroup first: a cpuset the host refuses leaves nothing in the guest.
            update_host_cgroups(&self.resources, container_id, &oci)?;
            let mut oci = oci;
            let sandbox_pidns = crate::spec::take_pod_pid_namespace(&mut oci);
            self.agent
                .create_container_with(
                    &kata_agent_client::ContainerSetup::new(container_id, &oci)
                        .storages(&storages)
                        .devices(&vfio_devices)
                        .sandbox_pidns(sandbox_pidns),
                )
                .await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = created {
            block::detach(&self.vm, container_id, &disks).await;
            self.vfio
                .detach_container(&self.vm, &self.resources, container_id)
                .await;
            if let Err(se) = self
                .sizing
                .shrink(container_id, &*self.vm, &self.agent)
                .await
            {
                tracing::warn!(sandbox_id = %self.id, container_id, error = %se, "unplugging the vCPUs of a container that failed to create");
            }
            if let Err(re) = self.release(container_id).await {
                tracing::warn!(sandbox_id = %self.id, container_id, error = %re, "releasing the rootfs of a container that failed to create");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        Ok(self.agent.start_container(container_id).await?)
    }

    async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &OciProcess,
    ) -> Result<()> {
        Ok(self
            .agent
            .exec_process(container_id, exec_id, process)
            .await?)
    }

    async fn attach_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        stdio: StdioConfig,
    ) -> Result<ProcessStreams> {
        let dead = self.dead.subscribe();
        let stdin = if stdio.stdin {
            Some(streams::input(
                self.agent.clone(),
                dead.clone(),
                container_id,
                exec_id,
            ))
        } else {
            self.agent.close_stdin(container_id, exec_id).await?;
            None
        };
        Ok(ProcessStreams {
            stdin,
            ..streams::output(&self.agent, &dead, container_id, exec_id, stdio.terminal)
        })
    }

    fn reattach_output(&self, container_id: &str, exec_id: &str, terminal: bool) -> ProcessStreams {
        streams::output(
            &self.agent,
            &self.dead.subscribe(),
            container_id,
            exec_id,
            terminal,
        )
    }

    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: Signal,
    ) -> Result<()> {
        Ok(self
            .agent
            .signal_process(container_id, exec_id, signal)
            .await?)
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus> {
        Ok(self.agent.wait_process(container_id, exec_id, None).await?)
    }

    async fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()> {
        Ok(self
            .agent
            .tty_win_resize(container_id, exec_id, rows, columns)
            .await?)
    }

    async fn container_pids(&self, container_id: &str) -> Result<Vec<u32>> {
        Ok(self.agent.container_pids(container_id).await?)
    }

    async fn container_stats(&self, container_id: &str) -> Result<ContainerStats> {
        Ok(self.agent.stats(container_id).await?)
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        Ok(self.agent.pause_container(container_id).await?)
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        Ok(self.agent.resume_container(container_id).await?)
    }

    async fn update_container(&self, container_id: &str, resources: &LinuxResources) -> Result<()> {
        // The VM grows for the new limits before the guest applies them (a cpuset may name a
        // vCPU plugged now) and sheds the vCPUs a lowered quota frees after.
        let before = self.sizing.demand_of(container_id);
        let demand = resize::Demand::updated(before.as_ref(), resources)?;
        self.sizing
            .grow_for(container_id, demand, &*self.vm, &self.agent)
            .await?;
        let updated = async {
            if let Some(r) = self.resources.lock().unwrap().as_mut() {
                r.update_container_cgroups(container_id, Some(resources))?;
            }
            Ok::<_, Error>(self.agent.update_container(container_id, resources).await?)
        }
        .await;
        if updated.is_err() {
            self.sizing.restore(container_id, before);
        }
        if let Err(e) = self.sizing.trim(container_id, &*self.vm, &self.agent).await {
            tracing::warn!(sandbox_id = %self.id, container_id, error = %e, "unplugging the vCPUs an update freed; they stay");
        }
        updated
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        let removed = self
            .agent
            .remove_container(container_id, Some(REMOVE_WAIT))
            .await;
        block::detach_container(&self.vm, &self.resources, container_id).await;
        self.vfio
            .detach_container(&self.vm, &self.resources, container_id)
            .await;
        let released = self.release(container_id).await;
        if removed.is_ok() {
            if let Err(e) = self
                .sizing
                .shrink(container_id, &*self.vm, &self.agent)
                .await
            {
                tracing::warn!(sandbox_id = %self.id, container_id, error = %e, "unplugging the vCPUs of a removed container; they stay");
            }
        }
        removed?;
        released
    }

    fn release_container(&self, container_id: &str) -> Result<()> {
        remove_container(&self.resources, container_id)
    }

    async fn pause_sandbox(&self) -> Result<()> {
        // Set first: the health check must not count the agent's silence while paused. The
        // gate is held before the VM stops and released once it runs again.
        self.paused.store(true, Ordering::SeqCst);
        self.gate.hold();
        let paused = self.vm.pause().await;
        if paused.is_err() {
            self.gate.release();
            self.paused.store(false, Ordering::SeqCst);
        }
        Ok(paused?)
    }

    async fn resume_sandbox(&self) -> Result<()> {
        self.vm.resume().await?;
        self.gate.release();
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn oom_events(&self) -> OomEvents {
        Box::pin(self.agent.oom_events())
    }

    async fn shutdown(&self) -> Result<()> {
        let dead = self.dead.borrow().clone();
        if let Some(why) = dead {
            tracing::info!(sandbox_id = %self.id, reason = %why, "the sandbox died: stopping the VM without asking its agent");
        } else {
            match tokio::time::timeout(DESTROY_TIMEOUT, self.agent.destroy_sandbox()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(sandbox_id = %self.id, error = %e, "DestroySandbox failed; stopping the VM anyway")
                }
                Err(_) => {
                    tracing::warn!(sandbox_id = %self.id, after = ?DESTROY_TIMEOUT, "DestroySandbox did not answer; stopping the VM anyway")
                }
            }
        }
        self.agent_log.stop();
        let stopped = self.vm.stop().await;
        let released = {
            let resources = self.resources.clone();
            blocking("releasing the sandbox's host resources", move || {
                release_all(&resources)
            })
            .await
        };
        stopped?;
        released
    }

    fn stop_now(&self, why: &str) {
        tracing::warn!(sandbox_id = %self.id, "stopping the VM now: {why}");
        self.agent_log.stop();
        self.vm.stop_now();
        if let Err(e) = release_all(&self.resources) {
            tracing::warn!(sandbox_id = %self.id, error = %e, "releasing the sandbox's host resources");
        }
    }

    async fn rekey(&self, rekey: &crate::sandbox::handover::Rekey) -> Result<()> {
        handover::rekey(self, rekey).await
    }

    async fn detach(&self) -> Result<()> {
        // The next owner reads the agent's log.
        self.agent_log.stop();
        self.vm.detach().await?;
        if let Some(r) = self.resources.lock().unwrap().take() {
            r.detach();
        }
        Ok(())
    }

    async fn rescan_network(&self) -> Result<crate::NetworkChanges> {
        network::rescan(&self.vm, &self.agent, &self.resources).await
    }

    fn console_tail(&self, n: usize) -> Vec<String> {
        self.vm.console_tail(n)
    }

    async fn debug_console(&self) -> Result<kata_agent_client::connect::GuestStream> {
        agent_log::dial_debug_console(&self.id, self.agent.address(), &self.gate).await
    }

    fn state(&self) -> HandlerState {
        let resources = self.resources.lock().unwrap().as_ref().map(|r| r.state());
        let state = VirtState {
            vm: self.vm.save_state(),
            resources,
            sizing: self.sizing.state(),
        };
        HandlerState {
            kind: RuntimeHandlerKind::VirtContainer,
            state: serde_json::to_value(state).unwrap_or_default(),
        }
    }

    fn host_pids(&self) -> Vec<u32> {
        self.vm.pids()
    }

    async fn guest_metrics(&self, timeout: Duration) -> Result<kata_agent_client::GuestMetrics> {
        crate::metrics::guest_metrics(&self.agent, &self.paused, timeout).await
    }

    async fn wait_dead(&self) -> String {
        // The share's virtiofsd (virtio-fs) dying ends the sandbox as the VM's exit does.
        let daemon = self
            .resources
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|r| r.share_fs()?.daemon().map(|d| d.exit()));
        let daemon_died = async move {
            match daemon {
                Some(exit) => exit.wait().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            how = self.vm.wait_exit() => format!("the VM exited ({how})"),
            why = daemon_died => {
                // virtiofsd also ends when its VM is killed ("client disconnected"), and may
                // be seen first: the VM's end, if it follows at once, is the cause to report.
                match tokio::time::timeout(DAEMON_CAUSE_GRACE, self.vm.wait_exit()).await {
                    Ok(how) => format!("the VM exited ({how})"),
                    Err(_) => why,
                }
            }
            why = self.health.watch(&self.agent, &self.paused, &self.id) => why,
        };
        tracing::error!(sandbox_id = %self.id, reason = %why, bound = ?self.health.bound(), "the sandbox died");
        self.dead.send_replace(Some(why.clone()));
        why
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let mut facts = vec![("hypervisor", self.vm.kind().to_string())];
        if let Some(a) = self.vm.accelerator() {
            facts.push(("accelerator", format!("{a:?}").to_lowercase()));
        }
        facts.push(("agent", self.agent.address().to_string()));
        if self.caps.guest_on_host {
            facts.push((
                "vm",
                "none: the agent runs on this host (test backend)".into(),
            ));
        }
        facts
    }
}
