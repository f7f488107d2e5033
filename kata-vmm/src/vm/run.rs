//! A running VM: the KVM VM, its vCPU threads and its event loop thread, and how it ends.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::{PreparedVm, ThreadConfinement, ThreadKind};
use crate::devices::legacy::{ConsoleSink, LegacyBus};
use crate::devices::pci::{self, PciBus};
use crate::devices::vfio::VfioSet;
use crate::devices::virtio::mmio::MmioBus;
use crate::error::{Error, Result};
use crate::event_loop::{EventHandler, EventLoop};
use crate::layout::COM1_IRQ;
use crate::memory::GuestRam;
use crate::vstate::exit::{handle_exit, ExitAction, StopReason};
use crate::vstate::{vcpu, vm};

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset (i8042, `reboot=k`), powered off or triple-faulted.
    Shutdown,
    /// [`Vm::stop`] ended it.
    Stopped,
    /// KVM could not run it on, or a vCPU or device thread failed or panicked.
    Failed(String),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Shutdown => f.write_str("the guest shut down"),
            VmExit::Stopped => f.write_str("the VM was stopped"),
            VmExit::Failed(why) => write!(f, "the VM failed: {why}"),
        }
    }
}

/// What the threads of one VM share: how it ended (the first reason wins) and the flag that
/// tells every thread to return.
#[derive(Debug)]
pub(crate) struct Shared {
    /// A snapshot under way ([`Vm::snapshot`]): the vCPU threads save their vCPUs as they end.
    snapshot: snapshot::Stage,
    exit: Mutex<Option<VmExit>>,
    ended: Condvar,
    stop: AtomicBool,
    /// Wakes the event loop thread.
    stop_evt: EventFd,
    /// The vCPUs that may run, and the ones parked: a parked vCPU (its index at or above the
    /// grant) waits outside `KVM_RUN` until [`Vm::grant_vcpus`] raises the grant, so the guest
    /// cannot bring it online on its own (see [`Shared::wait_for_grant`]);
    /// [`Vm::revoke_vcpus`] lowers it and parks the vCPUs above it again.
    grants: Mutex<Grants>,
    /// The grant, read by each vCPU before each `KVM_RUN` (written under `grants`).
    run_limit: AtomicUsize,
    /// Wakes the vCPUs waiting for a grant (a grant, or the VM's end).
    grant_changed: Condvar,
    /// Wakes a revoke waiting for its vCPUs to park.
    parked_changed: Condvar,
}

/// The grant and the vCPUs parked under it.
#[derive(Debug)]
struct Grants {
    /// vCPUs below this may run (`usize::MAX` until the VM starts them).
    granted: usize,
    /// The vCPUs waiting in [`Shared::wait_for_grant`] (outside `KVM_RUN`, no host CPU).
    parked: BTreeSet<usize>,
}

impl Shared {
    pub(crate) fn new() -> std::io::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            snapshot: snapshot::Stage::default(),
            exit: Mutex::new(None),
            ended: Condvar::new(),
            stop: AtomicBool::new(false),
            stop_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            grants: Mutex::new(Grants {
                granted: usize::MAX,
                parked: BTreeSet::new(),
            }),
            run_limit: AtomicUsize::new(usize::MAX),
            grant_changed: Condvar::new(),
            parked_changed: Condvar::new(),
        }))
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether vCPU `id` may enter `KVM_RUN` now (checked before each entry; a revoke kicks
    /// a vCPU out of `KVM_RUN` until it sees this false and parks).
    pub(crate) fn may_run(&self, id: usize) -> bool {
        id < self.run_limit.load(Ordering::SeqCst)
    }

    /// Blocks vCPU `id` until it is granted (true) or the VM ends (false); while it waits it
    /// counts as parked.
    pub(crate) fn wait_for_grant(&self, id: usize) -> bool {
        let mut grants = self.grants();
        let runs = loop {
            // Read under the lock `finish` takes before it wakes the waiters, so an end
            // between this check and the wait is not missed.
            if self.stopping() {
                break false;
            }
            if id < grants.granted {
                break true;
            }
            if grants.parked.insert(id) {
                self.parked_changed.notify_all();
            }
            grants = self
                .grant_changed
                .wait(grants)
                .unwrap_or_else(PoisonError::into_inner);
        };
        if grants.parked.remove(&id) {
            self.parked_changed.notify_all();
        }
        runs
    }

    /// Raises the vCPUs that may run to `vcpus` (a lower number changes nothing: see
    /// [`Shared::revoke`]) and wakes the ones it lets run; returns the grant.
    pub(crate) fn grant(&self, vcpus: usize) -> usize {
        let mut grants = self.grants();
        if grants.granted == usize::MAX || vcpus > grants.granted {
            grants.granted = vcpus;
            self.run_limit.store(vcpus, Ordering::SeqCst);
            self.grant_changed.notify_all();
        }
        grants.granted
    }

    /// Lowers the vCPUs that may run to `vcpus` (at least 1: vCPU 0 is the boot CPU; a
    /// higher number changes nothing); returns the grant. The vCPUs above it park once they
    /// next leave `KVM_RUN`: [`Shared::wait_parked`] waits for that while the caller kicks them.
    pub(crate) fn revoke(&self, vcpus: usize) -> usize {
        let vcpus = vcpus.max(1);
        let mut grants = self.grants();
        if vcpus < grants.granted {
            grants.granted = vcpus;
            self.run_limit.store(vcpus, Ordering::SeqCst);
        }
        grants.granted
    }

    /// The vCPUs parked now (waiting outside `KVM_RUN` for a grant).
    pub(crate) fn parked(&self) -> Vec<usize> {
        self.grants().parked.iter().copied().collect()
    }

    /// Waits up to `wait` until every vCPU of `ids` is parked or the VM ends; returns the
    /// ones not parked (empty: all are, or the VM ended).
    pub(crate) fn wait_parked(&self, ids: std::ops::Range<usize>, wait: Duration) -> Vec<usize> {
        let deadline = Instant::now() + wait;
        let mut grants = self.grants();
        loop {
            let missing: Vec<usize> = ids
                .clone()
                .filter(|id| !grants.parked.contains(id) && *id >= grants.granted)
                .collect();
            if missing.is_empty() || self.stopping() {
                return Vec::new();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return missing;
            };
            grants = self
                .parked_changed
                .wait_timeout(grants, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Ends the VM for `why` (ignored if it has already ended).
    pub(crate) fn finish(&self, why: VmExit) {
        let mut exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if exit.is_none() {
            tracing::info!(exit = %why, "built-in VMM: VM ends");
            *exit = Some(why);
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stop_evt.write(1);
        self.ended.notify_all();
        drop(exit);
        // The parked vCPUs return too (taking the lock orders this after a waiter's check).
        drop(self.grants());
        self.grant_changed.notify_all();
        self.parked_changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn wait(&self, timeout: Option<Duration>) -> Option<VmExit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(e) = exit.as_ref() {
                return Some(e.clone());
            }
            exit = match deadline {
                None => self
                    .ended
                    .wait(exit)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.ended
                        .wait_timeout(exit, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// Waits for a VM's end from another thread (it does not keep the VM alive).
#[derive(Debug, Clone)]
pub struct ExitWatcher(pub(crate) Arc<Shared>);

impl ExitWatcher {
    /// Blocks until the VM ends (or `timeout` passes: `None`).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<VmExit> {
        self.0.wait(timeout)
    }

    /// How it ended, if it has.
    pub fn exit(&self) -> Option<VmExit> {
        self.0.wait(Some(Duration::ZERO))
    }
}

/// The kernel thread ids of a VM's threads, for the host's cgroups: an in-process VMM has no
/// pid of its own, so its threads are placed one by one (as QEMU's vCPU threads are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmThreadIds {
    /// `kata-vcpu-N`, in vCPU order.
    pub vcpus: Vec<u32>,
    /// The device threads (`kata-vmm-events`).
    pub devices: Vec<u32>,
}

/// How long [`Vm::revoke_vcpus`] waits for the revoked vCPUs to park.
pub const REVOKE_WAIT: Duration = Duration::from_secs(2);

/// How long [`start`] waits for each new thread to report its id.
const THREAD_ID_WAIT: Duration = Duration::from_secs(5);

/// The calling thread's kernel id.
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid takes no argument, cannot fail and touches no memory.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    u32::try_from(tid).unwrap_or(0)
}

/// A running VM. Dropping it stops it.
pub struct Vm {
    name: String,
    thread_ids: VmThreadIds,
    shared: Arc<Shared>,
    console: ConsoleSink,
    hvc: Option<ConsoleSink>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
    /// Closed (with the devices, the memory and the vsock socket) once the threads are joined.
    resources: Option<Resources>,
    /// The virtio-mem device's handle (memory hotplug), when the VM can grow.
    hotplug: Option<crate::devices::virtio::mem::MemHandle>,
    /// The balloon's handle, when the VM has one.
    balloon: Option<crate::devices::virtio::balloon::BalloonHandle>,
    /// VFIO hot-plug onto the spare root ports, when the VM has some.
    vfio_hotplug: Option<crate::devices::vfio::hotplug::VfioHotplug>,
    /// Disk and NIC hot-plug (virtio-blk, virtio-net on virtio-pci) onto the same ports
    /// (virtio_hotplug).
    virtio_hotplug: Option<crate::devices::virtio::pci::hotplug::VirtioHotplug>,
    /// What a snapshot of this VM records.
    snapshot_config: crate::snapshot::SnapshotConfig,
    /// Why this VM cannot be saved in a snapshot, if it cannot.
    snapshot_refusal: Option<String>,
}

/// The VFIO state, shared with the hot-plug handle.
type SharedVfioSet = Arc<Mutex<VfioSet>>;

/// What the VM holds besides its threads.
#[allow(dead_code)] // held for its descriptors and mappings
struct Resources {
    /// The VFIO functions' bus, container and groups: closed first (the container unmaps the
    /// DMA of guest RAM), before the memory.
    pci: Option<(Arc<Mutex<PciBus>>, SharedVfioSet)>,
    kvm: vm::Vm,
    ram: GuestRam,
    legacy: Arc<Mutex<LegacyBus>>,
    mmio: Arc<MmioBus>,
    serial_irq: EventFd,
    /// The irqfds and ioeventfds given to KVM.
    device_fds: Vec<EventFd>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.name)
            .field("vcpus", &self.vcpu_threads.len())
            .field("exit", &self.shared.wait(Some(Duration::ZERO)))
            .finish_non_exhaustive()
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Saving a VM into a snapshot (`crate::snapshot`), and the restore's steps at its start.
mod snapshot;

extern "C" fn noop_signal_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), noop_signal_handler).map_err(|source| {
            Error::Kvm {
                what: "installing the vCPU kick signal handler",
                source,
            }
        });
    });
    result
}

pub(super) fn start(p: PreparedVm) -> Result<Vm> {
    install_kick_handler()?;
    // Built before any thread starts: a kernel without seccomp fails the start, not a thread.
    // A VM that may be snapshotted lets its vCPU threads read their own state.
    let confinement = ThreadConfinement::for_vm(p.snapshot_refusal.is_none())?;
    let mut kvm = vm::Vm::new()?;
    // A VM restored from a snapshot: its chips and clock before any irqfd can raise a line.
    if let Some((chips, _)) = &p.restore {
        kvm.restore_state(chips)?;
    }
    // RAM and the hotplug region (the guest only uses what virtio-mem plugs of the latter).
    kvm.register_memory(p.ram.all_memory())?;
    kvm.register_irqfd(&p.serial_irq_fd, COM1_IRQ)?;
    let mut mmio = MmioBus::default();
    let mut device_irqs = Vec::new();
    let mut handlers = Vec::new();
    for d in p.devices {
        kvm.register_irqfd(&d.irq_fd, d.slot.irq)?;
        kvm.register_queue_notify(&d.notify, d.slot.base.0)?;
        mmio.insert(d.slot, d.transport.clone());
        handlers.push(d.transport);
        device_irqs.push(d.irq_fd);
        device_irqs.push(d.notify);
    }
    let mmio = Arc::new(mmio);
    let legacy = Arc::new(Mutex::new(p.legacy));
    let shared = Shared::new().map_err(|source| Error::DeviceIo {
        device: "VM".into(),
        what: "creating the stop eventfd".into(),
        source,
    })?;
    // The booted vCPUs run; the parked ones wait for a grant (a resize).
    shared.grant(usize::from(p.vcpus));

    // VFIO MSI and INTx: a GSI and an irqfd per vector, routed when the guest enables MSI;
    // the INTx pins' irqfds with resample.
    // The root ports' hot-plug MSI the same way; spare ports make a VFIO hot-plug handle.
    let mut vfio_hotplug = None;
    // Disk and NIC hot-plug into the same ports, served by a run-time loop (virtio_hotplug).
    let mut virtio_hotplug = None;
    let pci = match p.pci {
        Some((bus, set)) => {
            let router = Arc::new(crate::devices::vfio::irq::GsiRouter::new(kvm.shared_fd()));
            set.wire_irqs(kvm.fd(), &router)?;
            // One lock for every plug into the spare ports, disks' and VFIO functions'.
            let port_lock = Arc::new(Mutex::new(()));
            // Disks and NICs hot-plug into the spare root ports (virtio_hotplug).
            if p.spare_root_ports != 0 {
                let serve = crate::devices::virtio::pci::serve::RunTimeDevices::new()
                    .map(|d| Arc::new(Mutex::new(d)))
                    .map_err(|source| Error::DeviceIo {
                        device: "VM".into(),
                        what: "creating the run-time devices' epoll (virtio_hotplug)".into(),
                        source,
                    })?;
                virtio_hotplug = Some((
                    crate::devices::virtio::pci::hotplug::VirtioHotplug::new(
                        bus.clone(),
                        // RAM and the virtio-mem region: a buffer may be in plugged memory.
                        p.ram.all_memory().clone(),
                        kvm.shared_fd(),
                        router.clone(),
                        serve.clone(),
                    )
                    .with_port_lock(port_lock.clone()),
                    serve,
                ));
            }
            let ports: Vec<_> = bus
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                // Root ports and switch downstream ports: every hot-plug slot.
                .hotplug_ports();
            for port in &ports {
                let mut port = port
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                crate::devices::vfio::hotplug::wire_port_msi(&mut port, kvm.fd(), &router)?;
            }
            let set = Arc::new(Mutex::new(set));
            // The PCI bridges' SHPC MSI too.
            crate::devices::vfio::hotplug::wire_bridges_msi(&bus, kvm.fd(), &router)?;
            if p.spare_root_ports > 0 || p.spare_switch_ports > 0 || p.spare_bridge_slots > 0 {
                vfio_hotplug = Some(
                    crate::devices::vfio::hotplug::VfioHotplug::new(
                        bus.clone(),
                        set.clone(),
                        p.ram.memory().clone(),
                        kvm.shared_fd(),
                        router,
                    )
                    .with_memory_hotplug(p.ram.hotplug().is_some())
                    .with_port_lock(port_lock),
                );
            }
            Some((bus, set))
        }
        None => None,
    };

    // Every vCPU is created and configured before any runs: the `vcpus` the kernel boots and
    // the parked ones above them (`maxcpus=`), whose threads wait for a grant before their
    // first KVM_RUN ([`Shared::wait_for_grant`]).
    let kvm_max = kvm.kvm().get_max_vcpus();
    if usize::from(p.max_vcpus) > kvm_max {
        return Err(Error::Device {
            device: format!("VM {}", p.name),
            reason: format!(
                "{} vCPUs: this host's KVM runs at most {kvm_max} per VM (KVM_CAP_MAX_VCPUS); \
                 lower default_maxvcpus",
                p.max_vcpus
            ),
        });
    }
    let mut vcpus = Vec::new();
    for id in 0..p.max_vcpus {
        let fd = kvm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| Error::Kvm {
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        vcpu::configure(kvm.kvm(), &fd, id, p.max_vcpus, p.entry)?;
        // A restored VM's vCPU takes the snapshot's state over the boot state (CPUID stays).
        if let Some((_, saved)) = &p.restore {
            crate::snapshot::vcpu::restore(&fd, &saved[usize::from(id)])?;
        }
        vcpus.push(fd);
    }

    let mut event_loop = EventLoop::new().map_err(|source| Error::DeviceIo {
        device: "VM".into(),
        what: "creating the event loop".into(),
        source,
    })?;
    let control = Arc::new(Mutex::new(Control {
        exit_evt: p.exit_evt,
        shared: shared.clone(),
    }));
    let add_err = |source| Error::DeviceIo {
        device: "VM".into(),
        what: "watching a device's descriptors".into(),
        source,
    };
    event_loop.add(control).map_err(add_err)?;
    for h in handlers {
        // A restored VM's devices raise what was pending and tell the guest what changed
        // (vsock: a transport reset), now that the vCPUs hold the snapshot's state.
        if p.restore.is_some() {
            h.lock().unwrap_or_else(PoisonError::into_inner).resumed();
        }
        event_loop.add(h).map_err(add_err)?;
    }
    if let Some((_, serve)) = &virtio_hotplug {
        event_loop.add(serve.clone()).map_err(add_err)?;
    }

    let mut vm = Vm {
        name: p.name.clone(),
        thread_ids: VmThreadIds::default(),
        shared: shared.clone(),
        console: p.console,
        hvc: p.hvc,
        vcpu_threads: Vec::new(),
        event_thread: None,
        hotplug: p.hotplug.clone(),
        balloon: p.balloon.clone(),
        vfio_hotplug,
        virtio_hotplug: virtio_hotplug.map(|(handle, _)| handle),
        snapshot_config: p.snapshot_config.clone(),
        snapshot_refusal: p.snapshot_refusal.clone(),
        resources: Some(Resources {
            pci,
            kvm,
            ram: p.ram,
            legacy: legacy.clone(),
            mmio: mmio.clone(),
            serial_irq: p.serial_irq_fd,
            device_fds: device_irqs,
        }),
    };
    let spawn_err = |source| Error::DeviceIo {
        device: "VM".into(),
        what: "spawning a thread".into(),
        source,
    };
    // Each thread reports its kernel id first thing (`None`: the event loop thread).
    let (tid_tx, tid_rx) = std::sync::mpsc::channel::<(Option<usize>, u32)>();
    let (s, c, tx) = (shared.clone(), confinement.clone(), tid_tx.clone());
    vm.event_thread = Some(
        std::thread::Builder::new()
            .name("kata-vmm-events".into())
            .spawn(move || {
                let _ = tx.send((None, gettid()));
                drop(tx);
                confined("kata-vmm-events", ThreadKind::Device, &c, &s, || {
                    event_thread(event_loop, s.clone())
                })
            })
            .map_err(spawn_err)?,
    );
    let pci = vm
        .resources
        .as_ref()
        .and_then(|r| r.pci.as_ref())
        .map(|(bus, _)| bus.clone());
    for (id, fd) in vcpus.into_iter().enumerate() {
        let (s, legacy, mmio) = (shared.clone(), legacy.clone(), mmio.clone());
        let pci = pci.clone();
        let (c, tx) = (confinement.clone(), tid_tx.clone());
        let name = format!("kata-vcpu-{id}");
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _ = tx.send((Some(id), gettid()));
                drop(tx);
                confined(&name, ThreadKind::Vcpu, &c, &s, || {
                    vcpu_thread(id, fd, legacy, mmio, pci, s.clone())
                })
            })
            .map_err(spawn_err);
        match handle {
            Ok(h) => vm.vcpu_threads.push(h),
            Err(e) => {
                // `vm` is dropped: the threads already started are stopped and joined.
                return Err(e);
            }
        }
    }
    drop(tid_tx);
    vm.thread_ids = collect_thread_ids(&tid_rx, usize::from(p.max_vcpus), THREAD_ID_WAIT)?;
    tracing::info!(name = %p.name, vcpus = p.vcpus, max_vcpus = p.max_vcpus, cmdline = %p.cmdline, threads = ?vm.thread_ids, "built-in VMM: VM started");
    Ok(vm)
}

/// The ids the `vcpus` vCPU threads and the event loop thread report, vCPUs in order. A thread
/// that does not report within `wait` fails the start (the caller drops the VM:
/// the others are stopped and joined).
pub(crate) fn collect_thread_ids(
    rx: &std::sync::mpsc::Receiver<(Option<usize>, u32)>,
    vcpus: usize,
    wait: Duration,
) -> Result<VmThreadIds> {
    let mut ids = VmThreadIds {
        vcpus: vec![0; vcpus],
        devices: Vec::new(),
    };
    for _ in 0..=vcpus {
        let (which, tid) = rx.recv_timeout(wait).map_err(|e| Error::DeviceIo {
            device: "VM".into(),
            what: format!(
                "waiting {wait:?} for a new thread's id ({e}); {} of {} reported",
                ids.vcpus.iter().filter(|t| **t != 0).count() + ids.devices.len(),
                vcpus + 1
            ),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        })?;
        match which {
            Some(i) if i < vcpus => ids.vcpus[i] = tid,
            _ => ids.devices.push(tid),
        }
    }
    Ok(ids)
}

impl Vm {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The serial console's last bytes.
    pub fn console(&self) -> Vec<u8> {
        self.console.contents()
    }

    /// The console sink (shared: it keeps filling while the VM runs).
    pub fn console_sink(&self) -> ConsoleSink {
        self.console.clone()
    }

    /// The virtio console's sink (the guest's `hvc0`), when the VM has one
    /// ([`super::VmBuilder::virtio_console`]).
    pub fn virtio_console(&self) -> Option<ConsoleSink> {
        self.hvc.clone()
    }

    /// The virtio-mem device's handle (memory hotplug), when the VM was built with
    /// [`super::VmBuilder::hotplug_memory_mib`].
    pub fn memory_hotplug(&self) -> Option<crate::devices::virtio::mem::MemHandle> {
        self.hotplug.clone()
    }

    /// The balloon's handle, when the VM was built with [`super::VmBuilder::balloon`].
    pub fn balloon(&self) -> Option<crate::devices::virtio::balloon::BalloonHandle> {
        self.balloon.clone()
    }

    /// VFIO hot-plug onto the VM's spare root ports, when it was built with
    /// [`super::VmBuilder::spare_root_ports`] (see [`crate::devices::vfio::hotplug`]).
    pub fn vfio_hotplug(&self) -> Option<crate::devices::vfio::hotplug::VfioHotplug> {
        self.vfio_hotplug.clone()
    }

    /// Disk and NIC hot-plug (virtio-blk, virtio-net on virtio-pci) onto the VM's spare root
    /// ports, the pool VFIO hot-plug takes from too, when it was built with
    /// [`super::VmBuilder::spare_root_ports`] (see [`crate::devices::virtio::pci::hotplug`]).
    pub fn virtio_hotplug(&self) -> Option<crate::devices::virtio::pci::hotplug::VirtioHotplug> {
        self.virtio_hotplug.clone()
    }

    /// Lets the vCPUs below `vcpus` run: the parked ones (above [`super::VmConfig::vcpus`],
    /// up to [`super::VmConfig::max_vcpus`], or revoked by [`Vm::revoke_vcpus`]) wait outside
    /// `KVM_RUN` until a grant covers them, so the guest can bring online only what the
    /// runtime granted. A grant never takes a vCPU back (a lower `vcpus` changes nothing);
    /// returns the vCPUs granted now.
    pub fn grant_vcpus(&self, vcpus: u8) -> u8 {
        let granted = self.shared.grant(usize::from(vcpus));
        u8::try_from(granted).unwrap_or(u8::MAX)
    }

    /// Takes the vCPUs from `vcpus` up back (at least vCPU 0 stays): each is kicked out of
    /// `KVM_RUN` and parked again, its thread blocked outside KVM (no host CPU) until a later
    /// [`Vm::grant_vcpus`] covers it. The host enforces this whatever the guest does: a guest
    /// that brings such a CPU online again (INIT/SIPI) gets no CPU until the next grant, whose
    /// `KVM_RUN` delivers the pending INIT/SIPI. Meant for CPUs the guest has taken offline
    /// first (a guest still using one stalls on it). Waits up to [`REVOKE_WAIT`] for the
    /// vCPUs to park; returns the vCPUs granted now, or an error naming the vCPUs that did not
    /// park in time (they park when they next leave `KVM_RUN`: the grant is lowered anyway).
    pub fn revoke_vcpus(&self, vcpus: u8) -> Result<u8> {
        let granted = self.shared.revoke(usize::from(vcpus));
        let revoked = granted..self.vcpu_threads.len();
        let deadline = Instant::now() + REVOKE_WAIT;
        loop {
            // A vCPU kicked between its check of the grant and KVM_RUN misses the signal and
            // enters KVM_RUN: it is kicked again until it has parked.
            for id in revoked.clone() {
                if let Some(h) = self.vcpu_threads.get(id) {
                    if !h.is_finished() && !self.shared.parked().contains(&id) {
                        let _ = h.kill(kick_signal());
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let missing = self
                .shared
                .wait_parked(revoked.clone(), left.min(Duration::from_millis(5)));
            if missing.is_empty() {
                tracing::info!(name = %self.name, vcpus = granted, "built-in VMM: vCPUs revoked and parked");
                return Ok(u8::try_from(granted).unwrap_or(u8::MAX));
            }
            if left.is_zero() {
                return Err(Error::Device {
                    device: format!("VM {}", self.name),
                    reason: format!(
                        "vCPUs {missing:?} did not leave KVM_RUN within {REVOKE_WAIT:?} of the \
                         revoke to {granted} vCPUs; they park when they next exit"
                    ),
                });
            }
        }
    }

    /// The vCPUs parked now: waiting outside `KVM_RUN` for a grant (never granted, or
    /// revoked), their threads using no host CPU.
    pub fn parked_vcpus(&self) -> Vec<u8> {
        self.shared
            .parked()
            .into_iter()
            .filter_map(|id| u8::try_from(id).ok())
            .collect()
    }

    /// A handle that waits for the VM's end from another thread.
    pub fn exit_watcher(&self) -> ExitWatcher {
        ExitWatcher(self.shared.clone())
    }

    /// Blocks until the VM ends (or `timeout` passes: `None`). Does not release it: call
    /// [`Vm::stop`] (or drop it) to join its threads and close its descriptors.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<VmExit> {
        self.shared.wait(timeout)
    }

    /// The kernel ids of the VM's vCPU and device threads (for the host's cgroups).
    pub fn thread_ids(&self) -> VmThreadIds {
        self.thread_ids.clone()
    }

    /// The names of the VM's threads that are still running.
    pub fn running_threads(&self) -> Vec<String> {
        self.vcpu_threads
            .iter()
            .chain(self.event_thread.iter())
            .filter(|h| !h.is_finished())
            .filter_map(|h| h.thread().name().map(str::to_string))
            .collect()
    }

    /// Ends the VM (if it has not ended), joins every thread and closes every descriptor.
    /// Returns how it ended: [`VmExit::Stopped`] unless it had ended before.
    pub fn stop(&mut self) -> VmExit {
        self.shared.finish(VmExit::Stopped);
        for h in &self.vcpu_threads {
            // A vCPU in KVM_RUN returns on the signal; one between its check of the flag and
            // KVM_RUN misses it, so it is kicked again until it has returned.
            while !h.is_finished() {
                let _ = h.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for h in self.vcpu_threads.drain(..) {
            let _ = h.join();
        }
        if let Some(h) = self.event_thread.take() {
            let _ = h.join();
        }
        self.vfio_hotplug = None;
        self.virtio_hotplug = None;
        self.resources = None;
        self.shared
            .wait(Some(Duration::ZERO))
            .unwrap_or(VmExit::Stopped)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The event loop's own handler: the i8042 reset and the stop request.
struct Control {
    exit_evt: crate::devices::legacy::ExitEvent,
    shared: Arc<Shared>,
}

impl EventHandler for Control {
    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![
            (self.exit_evt.eventfd().as_raw_fd(), 0),
            (self.shared.stop_evt.as_raw_fd(), 1),
        ]
    }

    fn handle(&mut self, token: u32) {
        match token {
            0 if self.exit_evt.is_signalled() => self.shared.finish(VmExit::Shutdown),
            _ => {
                let _ = self.shared.stop_evt.read();
            }
        }
    }
}

/// Confines the calling thread as a `kind` thread (`vm/namespace.rs`, `vm/confine.rs`), then runs `body`; a thread that cannot be
/// confined ends the VM with the reason instead of running unconfined.
fn confined(
    name: &str,
    kind: ThreadKind,
    c: &ThreadConfinement,
    shared: &Shared,
    body: impl FnOnce(),
) {
    match c.confine_this_thread(kind) {
        Ok(_) => body(),
        Err(e) => shared.finish(VmExit::Failed(format!("thread {name}: {e}"))),
    }
}

/// A panic's message.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

pub(crate) fn event_thread(mut event_loop: EventLoop, shared: Arc<Shared>) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        while !shared.stopping() {
            event_loop.run_once(-1)?;
        }
        Ok::<(), std::io::Error>(())
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.finish(VmExit::Failed(format!("the device event loop failed: {e}"))),
        Err(p) => shared.finish(VmExit::Failed(format!(
            "a device panicked (thread kata-vmm-events): {}",
            panic_message(p.as_ref())
        ))),
    }
}

fn vcpu_thread(
    id: usize,
    mut fd: VcpuFd,
    legacy: Arc<Mutex<LegacyBus>>,
    mmio: Arc<MmioBus>,
    pci: Option<Arc<Mutex<PciBus>>>,
    shared: Arc<Shared>,
) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        while !shared.stopping() {
            // A parked vCPU stays out of KVM_RUN until the runtime grants it (at boot, and
            // again once revoked: the revoke kicks it out of KVM_RUN to here): a guest's
            // INIT/SIPI to it stays pending in KVM, and the guest reports that CPU as failed
            // to boot.
            if !shared.may_run(id) {
                if !shared.wait_for_grant(id) {
                    return VmExit::Stopped;
                }
                continue;
            }
            match fd.run() {
                Ok(exit) => {
                    // The PCI bus's ports and BARs first (VFIO), the rest as before.
                    let exit = match &pci {
                        Some(bus) => match pci::handle_exit(bus, exit) {
                            Some(other) => other,
                            None => continue,
                        },
                        None => exit,
                    };
                    let mut legacy = legacy.lock().unwrap_or_else(PoisonError::into_inner);
                    match handle_exit(exit, &mut legacy, &mmio) {
                        ExitAction::Continue => {}
                        ExitAction::Stop(StopReason::Shutdown) => return VmExit::Shutdown,
                        ExitAction::Stop(StopReason::Failed(why)) => {
                            return VmExit::Failed(format!("vCPU {id}: {why}"))
                        }
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return VmExit::Failed(format!("vCPU {id}: KVM_RUN: {e}")),
            }
        }
        VmExit::Stopped
    }));
    // A snapshot's vCPU state is saved here, by the thread that owns the vCPU (only when
    // the snapshot's stop ended it).
    snapshot::vcpu_ending(id, &mut fd, &shared, snapshot::unsaved_reason(&result));
    match result {
        Ok(exit) => shared.finish(exit),
        Err(p) => shared.finish(VmExit::Failed(format!(
            "vCPU {id} panicked (thread kata-vcpu-{id}): {}",
            panic_message(p.as_ref())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vCPU thread's loop without KVM: runs (sleeps a little, standing for `KVM_RUN`) while
    /// granted, parks otherwise, as [`vcpu_thread`] does; counts its runs.
    fn fake_vcpu(
        shared: Arc<Shared>,
        id: usize,
        runs: Arc<AtomicUsize>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            while !shared.stopping() {
                if !shared.may_run(id) {
                    if !shared.wait_for_grant(id) {
                        return;
                    }
                    continue;
                }
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    #[test]
    fn a_revoked_vcpu_parks_until_a_new_grant_and_vcpu_0_is_never_revoked() {
        let shared = Shared::new().unwrap();
        assert_eq!(shared.grant(1), 1, "booted: one vCPU");
        let runs: Vec<_> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let threads: Vec<_> = (0..3)
            .map(|id| fake_vcpu(shared.clone(), id, runs[id].clone()))
            .collect();
        assert!(shared.wait_parked(1..3, Duration::from_secs(5)).is_empty());
        assert_eq!(
            shared.parked(),
            [1, 2],
            "never granted: parked from the start"
        );
        assert_eq!(shared.grant(3), 3);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !shared.parked().is_empty() || runs[2].load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "granted vCPUs did not run");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Revoked: vCPUs 1 and 2 park and stop running; vCPU 0 runs on.
        assert_eq!(shared.revoke(1), 1);
        assert!(
            shared.wait_parked(1..3, Duration::from_secs(5)).is_empty(),
            "revoked vCPUs did not park: {:?}",
            shared.parked()
        );
        assert_eq!(shared.parked(), [1, 2]);
        let (r0, r1) = (
            runs[0].load(Ordering::SeqCst),
            runs[1].load(Ordering::SeqCst),
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs[1].load(Ordering::SeqCst), r1, "a parked vCPU ran");
        assert!(runs[0].load(Ordering::SeqCst) > r0, "vCPU 0 stopped");
        assert_eq!(shared.revoke(0), 1, "vCPU 0 is never revoked");
        assert_eq!(shared.revoke(2), 1, "a revoke never raises the grant");
        assert_eq!(shared.grant(1), 1);
        // A new grant runs vCPU 1 again, not vCPU 2.
        assert_eq!(shared.grant(2), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while runs[1].load(Ordering::SeqCst) == r1 {
            assert!(Instant::now() < deadline, "vCPU 1 did not run again");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(shared.parked(), [2]);
        shared.finish(VmExit::Stopped);
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            shared.parked().is_empty(),
            "the end releases the parked vCPUs"
        );
    }

    #[test]
    fn waiting_for_a_vcpu_that_does_not_park_is_bounded_and_names_it() {
        let shared = Shared::new().unwrap();
        shared.grant(2);
        shared.revoke(1);
        // No thread for vCPU 1: it never parks.
        let t0 = Instant::now();
        assert_eq!(shared.wait_parked(1..2, Duration::from_millis(50)), [1]);
        assert!(t0.elapsed() >= Duration::from_millis(50));
        shared.finish(VmExit::Stopped);
        assert!(
            shared.wait_parked(1..2, Duration::from_secs(5)).is_empty(),
            "ended"
        );
    }
}
