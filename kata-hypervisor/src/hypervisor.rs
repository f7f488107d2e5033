//! The [`Hypervisor`] trait every backend implements.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::device::{DeviceConfig, VsockAddress};
use crate::error::Result;
use crate::kvm::Accelerator;

/// What a backend can do, so callers can decide before trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Block devices can be hot-plugged.
    pub block_hotplug: bool,
    /// vCPUs can be added and removed at run time.
    pub cpu_hotplug: bool,
    /// Memory can be added at run time.
    pub memory_hotplug: bool,
    /// virtio-fs is supported.
    pub virtio_fs: bool,
    /// virtio-9p is supported.
    pub virtio_9p: bool,
    /// VFIO devices can be passed through.
    pub vfio: bool,
    /// The agent is reached over hybrid vsock (a unix socket) rather than AF_VSOCK.
    pub hybrid_vsock: bool,
}

/// The lifecycle state of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Created, not yet prepared.
    New,
    /// Devices accepted, not started.
    Prepared,
    /// The VMM runs the guest.
    Running,
    /// vCPUs paused.
    Paused,
    /// The VMM process has exited; the text says how.
    Stopped(String),
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::New => f.write_str("new"),
            VmState::Prepared => f.write_str("prepared"),
            VmState::Running => f.write_str("running"),
            VmState::Paused => f.write_str("paused"),
            VmState::Stopped(how) => write!(f, "stopped ({how})"),
        }
    }
}

/// What `persist` saves of a running VM so a restarted runtime can find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorState {
    /// Backend name (`qemu`, ...).
    pub backend: String,
    /// The directory holding the VM's sockets and console log.
    pub vm_dir: PathBuf,
    /// Pids of the VMM and its helper processes.
    pub pids: Vec<u32>,
    /// The QMP (or API) socket, if any.
    pub api_socket: Option<PathBuf>,
    /// Where the agent is.
    pub agent_address: Option<VsockAddress>,
    /// The accelerator the VM runs with.
    pub accelerator: Option<Accelerator>,
}

/// A virtual machine monitor driving one VM.
///
/// Methods take `&self` so a backend can be shared (`Arc<dyn Hypervisor>`) between the task that
/// waits for the VM to exit and the ones that drive it.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The backend's name (`qemu`, `builtin`, ...).
    fn name(&self) -> &'static str;

    /// Checks the configuration and files and records the devices to cold-plug at start.
    async fn prepare(&self, devices: Vec<DeviceConfig>) -> Result<()>;

    /// Starts the VM. Returns once the VMM runs the guest (not when the guest has booted).
    /// On error nothing is left running.
    async fn start(&self) -> Result<()>;

    /// Stops the VM, gracefully and then by force, and removes every process, socket and
    /// directory it created. Safe to call more than once.
    async fn stop(&self) -> Result<()>;

    /// Pauses the vCPUs.
    async fn pause(&self) -> Result<()>;

    /// Resumes the vCPUs.
    async fn resume(&self) -> Result<()>;

    /// Hot-plugs a device into the running VM.
    async fn add_device(&self, device: DeviceConfig) -> Result<()>;

    /// Hot-unplugs a device.
    async fn remove_device(&self, device: &DeviceConfig) -> Result<()>;

    /// Sets the number of online vCPUs; returns the new count.
    async fn resize_vcpus(&self, vcpus: u32) -> Result<u32>;

    /// Sets the guest memory size in MiB; returns the new size.
    async fn resize_memory(&self, mib: u32) -> Result<u32>;

    /// Where the guest agent listens.
    fn agent_address(&self) -> Result<VsockAddress>;

    /// Pids of the VMM's processes (for host cgroups).
    fn pids(&self) -> Vec<u32>;

    /// What the backend supports.
    fn capabilities(&self) -> Capabilities;

    /// The current state.
    fn state(&self) -> VmState;

    /// The state `persist` writes.
    fn save_state(&self) -> HypervisorState;

    /// The last `n` lines of the guest console.
    fn console_tail(&self, n: usize) -> Vec<String>;

    /// Resolves when the VMM process has exited, with how it exited.
    async fn wait_exit(&self) -> String;

    /// Lets the VM run on without this handle: its processes are no longer supervised or
    /// killed, its sockets and directory stay, and later calls to [`stop`](Self::stop) do
    /// nothing. Another process (or a later handle) takes it over from
    /// [`save_state`](Self::save_state) (QEMU: `Qemu::restore`). Backends that cannot hand a
    /// VM over (an in-process VMM) answer [`Error::Unsupported`](crate::Error::Unsupported).
    async fn detach(&self) -> Result<()> {
        Err(crate::Error::Unsupported {
            backend: self.name(),
            what: "handing a running VM over to another process".into(),
        })
    }
}
