//! The [`Hypervisor`] trait every backend implements, what a backend can do
//! ([`Capabilities`]) and what it saves of a running VM ([`HypervisorState`]).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{HypervisorType, SharedFs};
use crate::device::{DeviceConfig, GuestAddress, VsockAddress};
use crate::error::{Error, Result};
use crate::kvm::Accelerator;

/// What a backend can do, so callers decide on what it says instead of on its name. Known
/// before a VM exists: [`crate::backend::capabilities`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// The backend these are of.
    pub backend: Option<HypervisorType>,
    /// Block devices can be hot-plugged.
    pub block_hotplug: bool,
    /// vCPUs can be added and removed at run time.
    pub cpu_hotplug: bool,
    /// Taking vCPUs back needs the guest to take the CPUs offline first, through the agent
    /// (kata-rs's `OfflineCPUs` extension), before [`Hypervisor::resize_vcpus`] to fewer: the
    /// built-in VMM, which has no ACPI eject to ask the guest with. Where the agent does not
    /// serve the extension (Kata's agent), the sandbox leaves the vCPUs granted. False where
    /// the backend asks the guest itself (QEMU: ACPI eject).
    #[serde(default)]
    pub cpu_offline_by_agent: bool,
    /// Memory can be added at run time.
    pub memory_hotplug: bool,
    /// Memory added at run time can be taken back ([`Hypervisor::resize_memory`] to a smaller
    /// size asks the guest to give it back and answers with the size reached): true with a
    /// virtio-mem device, false with DIMMs (which the guest cannot be made to give back). The
    /// sandbox shrinks the VM when a container leaves only where this is true.
    #[serde(default)]
    pub memory_shrink: bool,
    /// VFIO devices can be passed through.
    pub vfio: bool,
    /// The agent is reached over hybrid vsock (a unix socket) rather than AF_VSOCK.
    pub hybrid_vsock: bool,
    /// The shared filesystems the backend serves (`shared_fs` values).
    pub shared_fs: Vec<SharedFs>,
    /// Why the other shared filesystems are refused, and what to use instead (for the
    /// `shared_fs` error).
    pub shared_fs_note: String,
    /// A running VM can be handed over to another process: [`Hypervisor::detach`] here,
    /// [`crate::backend::restore`] there.
    pub hand_over: bool,
    /// There is no VM: the agent runs on this host (the test backend), and the shared
    /// directory is visible to it at the guest path without a mount, so no shared-fs storage
    /// is sent to it.
    pub guest_on_host: bool,
}

impl Capabilities {
    /// Whether the backend serves this shared filesystem.
    pub fn supports_shared_fs(&self, fs: SharedFs) -> bool {
        self.shared_fs.contains(&fs)
    }

    /// `Ok` if the backend serves `fs`, else the `shared_fs` configuration error that says why
    /// not and what it serves.
    pub fn check_shared_fs(&self, fs: SharedFs) -> Result<()> {
        if self.supports_shared_fs(fs) {
            return Ok(());
        }
        let served = self
            .shared_fs
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let backend = self
            .backend
            .map(|b| format!("the {b} backend"))
            .unwrap_or_else(|| "this backend".into());
        let mut reason = format!("{backend} serves {served}");
        if !self.shared_fs_note.is_empty() {
            reason.push_str("; ");
            reason.push_str(&self.shared_fs_note);
        }
        Err(Error::InvalidConfig {
            key: "shared_fs",
            value: format!("\"{fs}\""),
            reason,
        })
    }
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

/// What `persist` saves of a running VM so a restarted runtime can find it again
/// ([`crate::backend::restore`]) or clean up after it ([`crate::backend::cleanup`]).
///
/// Everything a backend needs beyond the VM directory and the agent's address is its own
/// business, kept opaque in `backend_state` (QEMU: its pids, QMP socket, accelerator, PCIe
/// ports). A state without it (an older format) can still be cleaned up, not restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HypervisorState {
    /// The backend that runs the VM.
    pub backend: HypervisorType,
    /// The directory holding the VM's sockets and console log.
    pub vm_dir: PathBuf,
    /// Where the agent is.
    pub agent_address: Option<VsockAddress>,
    /// The backend's own state (`null` when absent).
    #[serde(default)]
    pub backend_state: serde_json::Value,
}

/// What a backend runs before it boots the VM once more (see [`Hypervisor::set_reboot_hook`]):
/// it restarts the vhost-user daemons the caller owns, which exit with the VMM they served (a
/// sandbox's virtiofsd). An error (a sentence naming the daemon) fails the start.
pub type RebootHook = std::sync::Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// When a VMM's start reached its host-side milestones ([`Hypervisor::start_marks`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartMarks {
    /// Its helper processes (a vhost-user vsock backend) were ready; `None` when it started
    /// none.
    pub helpers_ready: Option<std::time::Instant>,
    /// The VMM process ran and answered on its control socket: the guest runs from here on.
    pub vmm_running: Option<std::time::Instant>,
}

impl StartMarks {
    /// Marks at the given instants.
    pub fn new(
        helpers_ready: Option<std::time::Instant>,
        vmm_running: Option<std::time::Instant>,
    ) -> Self {
        StartMarks {
            helpers_ready,
            vmm_running,
        }
    }
}

/// A virtual machine monitor driving one VM.
///
/// Methods take `&self` so a backend can be shared (`Arc<dyn Hypervisor>`) between the task that
/// waits for the VM to exit and the ones that drive it. A VM is made by
/// [`crate::backend::create`] (or taken over by [`crate::backend::restore`]), then:
/// [`prepare`](Self::prepare), [`start`](Self::start), [`wait_ready`](Self::wait_ready), and the
/// agent is connected to [`agent_address`](Self::agent_address).
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The backend's type.
    fn kind(&self) -> HypervisorType;

    /// The backend's name (its section name: `qemu`, ...).
    fn name(&self) -> &'static str {
        self.kind().section_name()
    }

    /// Checks the configuration and files and records the devices to cold-plug at start.
    async fn prepare(&self, devices: Vec<DeviceConfig>) -> Result<()>;

    /// Starts the VM. Returns once the VMM runs the guest (not when the guest has booted).
    /// On error nothing is left running.
    async fn start(&self) -> Result<()>;

    /// Waits until the guest's agent port answers, `timeout` in all: whatever the backend needs
    /// to deliver a guest whose agent can be dialled (QEMU with hybrid vsock boots the VM once
    /// more if the agent stays silent for a third of the time while the VM runs). A VM that
    /// exits ends the wait with [`Error::VmExited`]; one whose agent stays silent with
    /// [`Error::AgentNotReady`] (the caller stops it).
    async fn wait_ready(&self, timeout: Duration) -> Result<()>;

    /// Sets what runs before [`wait_ready`](Self::wait_ready) boots the VM once more, between
    /// the old VMM's exit and the new one's start: the caller restarts the vhost-user daemons
    /// it owns there (virtiofsd exits when its VMM disconnects, and a second VMM could not
    /// connect to it). Blocking work is fine: the backend runs it off its async workers.
    /// Backends that never boot a VM twice ignore it.
    fn set_reboot_hook(&self, hook: RebootHook) {
        let _ = hook;
    }

    /// Stops the VM, gracefully and then by force, and removes every process, socket and
    /// directory it created. Safe to call more than once.
    async fn stop(&self) -> Result<()>;

    /// Stops the VM at once, from any context (a `Drop`, no runtime needed): what the backend
    /// runs for the VM is killed and waited for (bounded), and its directory is removed. An
    /// external VMM is killed through the pidfds it is supervised by, never by a bare pid; an
    /// in-process VMM stops its vCPUs. Idempotent; [`stop`](Self::stop) after it does nothing
    /// more. A detached VM is left alone.
    fn stop_now(&self);

    /// Pauses the vCPUs.
    async fn pause(&self) -> Result<()>;

    /// Resumes the vCPUs.
    async fn resume(&self) -> Result<()>;

    /// Hot-plugs a device into the running VM; returns where the guest finds it (a block
    /// device's PCI path or SCSI address, for the agent's storage).
    async fn add_device(&self, device: DeviceConfig) -> Result<GuestAddress>;

    /// Hot-unplugs a device.
    async fn remove_device(&self, device: &DeviceConfig) -> Result<()>;

    /// Where the guest finds device `id` of the running VM (a cold-plugged VFIO function's PCI
    /// path, for the agent). Backends without addressable devices answer `Unsupported`.
    async fn device_address(&self, id: &str) -> Result<GuestAddress> {
        Err(crate::error::Error::Unsupported {
            backend: self.name(),
            what: format!("telling where the guest finds device {id}"),
        })
    }

    /// Sets the number of online vCPUs; returns the new count.
    async fn resize_vcpus(&self, vcpus: u32) -> Result<u32>;

    /// Sets the guest memory size in MiB; returns the size the VM has now. A smaller size asks
    /// the guest to give memory back where [`Capabilities::memory_shrink`] says so (the answer
    /// may stay above `mib`: what the guest could not offline); other backends keep their size.
    async fn resize_memory(&self, mib: u32) -> Result<u32>;

    /// Where the guest agent listens.
    fn agent_address(&self) -> Result<VsockAddress>;

    /// Pids of the processes that run the VM, for host cgroups and display only: nobody above
    /// this crate kills them ([`stop_now`](Self::stop_now) does). Empty for an in-process VMM.
    fn pids(&self) -> Vec<u32>;

    /// An in-process VMM's thread ids, `(vCPU threads, device threads)`, for the host's
    /// cgroups (its [`pids`](Self::pids) is empty). Empty for a VMM that runs as a process.
    fn in_process_threads(&self) -> (Vec<u32>, Vec<u32>) {
        (Vec::new(), Vec::new())
    }

    /// The accelerator the VM runs with, once started (`None` where it does not apply).
    fn accelerator(&self) -> Option<Accelerator> {
        None
    }

    /// When the last start reached its host-side milestones, for boot timings (`None` for a
    /// milestone the backend does not observe).
    fn start_marks(&self) -> StartMarks {
        StartMarks::default()
    }

    /// What the backend supports.
    fn capabilities(&self) -> Capabilities;

    /// The current state.
    fn state(&self) -> VmState;

    /// The state `persist` writes.
    fn save_state(&self) -> HypervisorState;

    /// The last `n` lines of the guest console.
    fn console_tail(&self, n: usize) -> Vec<String>;

    /// Resolves when the VM has ended, with how it ended.
    async fn wait_exit(&self) -> String;

    /// Lets the VM run on without this handle: its processes are no longer supervised or
    /// killed, its sockets and directory stay, and later calls to [`stop`](Self::stop) and
    /// [`stop_now`](Self::stop_now) do nothing. Another process (or a later handle) takes it
    /// over from [`save_state`](Self::save_state) with [`crate::backend::restore`]. Backends
    /// that cannot hand a VM over (an in-process VMM; [`Capabilities::hand_over`] is false)
    /// answer [`Error::Unsupported`].
    async fn detach(&self) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.name(),
            what: "handing a running VM over to another process".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_shared_fs_names_the_key_what_is_served_and_why() {
        let caps = Capabilities {
            backend: Some(HypervisorType::Qemu),
            shared_fs: vec![SharedFs::Virtio9p, SharedFs::None],
            shared_fs_note: "no virtiofsd yet".into(),
            ..Default::default()
        };
        assert!(caps.supports_shared_fs(SharedFs::Virtio9p));
        caps.check_shared_fs(SharedFs::None).unwrap();
        let e = caps
            .check_shared_fs(SharedFs::VirtioFs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shared_fs = \"virtio-fs\"")
                && e.contains("qemu backend serves virtio-9p, none")
                && e.contains("no virtiofsd yet"),
            "{e}"
        );
    }

    #[test]
    fn a_state_of_the_older_format_still_reads() {
        let old = serde_json::json!({
            "backend": "qemu", "vm_dir": "/run/kata/sb/vm", "pids": [12, 13],
            "api_socket": "/run/kata/sb/vm/qmp.sock", "agent_address": null,
            "accelerator": "Tcg",
        });
        let s: HypervisorState = serde_json::from_value(old).unwrap();
        assert_eq!(s.backend, HypervisorType::Qemu);
        assert_eq!(s.backend_state, serde_json::Value::Null);
    }
}
