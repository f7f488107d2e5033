//! Saving a running VM into a snapshot ([`Vm::snapshot`], see [`crate::snapshot`]).
//!
//! The order makes the saved parts agree with each other: the VM is ended (the device thread
//! returns and is joined, so no device moves and no interrupt is raised any more), then every
//! vCPU thread, out of `KVM_RUN` or never granted, completes its last exit's I/O and saves its
//! own vCPU (only the owning thread holds the vCPU's fd), then the chips, the devices, the
//! serial port and guest memory are saved, and only then are the vCPU threads let go.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::Killable;

use super::{kick_signal, Shared, Vm, VmExit};
use crate::error::{Error, Result};
use crate::snapshot::{self, Snapshot, VcpuState};

/// How long a snapshot waits for the vCPU threads (each to leave `KVM_RUN`, to save).
const VCPU_WAIT: Duration = Duration::from_secs(10);

/// A snapshot under way, shared by the VM's threads.
#[derive(Debug, Default)]
pub(super) struct Stage {
    /// Set before the VM is ended for a snapshot: the vCPU threads save as they end.
    requested: AtomicBool,
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    /// KVM's MSR index list (what each vCPU saves).
    msr_indexes: Arc<Vec<u32>>,
    /// The vCPUs out of `KVM_RUN` for good, waiting for `save`.
    ending: Vec<usize>,
    /// Set once the device thread has returned: the vCPUs save now.
    save: bool,
    /// Each vCPU's saved state, or why it could not be saved.
    states: BTreeMap<usize, std::result::Result<VcpuState, String>>,
    /// Set once the states are taken: the vCPU threads return.
    done: bool,
}

impl Stage {
    /// Vcpu `id` ended without being saved (`why`): counted as out of `KVM_RUN` and its
    /// state recorded as that error, so the snapshot fails naming it instead of waiting.
    fn record_unsaved(&self, id: usize, why: String) {
        let mut inner = self.inner();
        inner.ending.push(id);
        inner.states.insert(id, Err(why));
        drop(inner);
        self.changed.notify_all();
    }

    /// Waits until the vCPUs may save (true), or the snapshot gave up before that (`done`:
    /// a vCPU that did not leave `KVM_RUN`) or `deadline` passed (false).
    fn wait_for_save(&self, deadline: Instant) -> bool {
        self.wait_until(deadline, |i| i.save || i.done) && self.inner().save
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on `changed` until `ready` or `deadline`; returns whether `ready` held.
    fn wait_until(&self, deadline: Instant, ready: impl Fn(&Inner) -> bool) -> bool {
        let mut inner = self.inner();
        loop {
            if ready(&inner) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Why a vCPU thread whose loop ended with `result` must not be saved: `None` only for the
/// stop a snapshot makes ([`VmExit::Stopped`]); a guest shutdown, a failed `KVM_RUN` or exit,
/// or a panic leaves a vCPU state that no restored VM should run on.
pub(super) fn unsaved_reason(result: &std::thread::Result<VmExit>) -> Option<String> {
    match result {
        Ok(VmExit::Stopped) => None,
        Ok(exit) => Some(format!(
            "the vCPU ended by itself ({exit}), not by the snapshot's stop"
        )),
        Err(p) => Some(format!(
            "the vCPU thread panicked: {}",
            super::panic_message(p.as_ref())
        )),
    }
}

/// Why a VM whose grant is `granted` vCPUs, booted with `booted`, cannot be saved: the grant
/// is not in the snapshot (a restored VM runs its booted vCPUs only), so a VM whose grant was
/// raised or lowered is refused rather than restored with vCPUs the guest has not online.
fn grant_refusal(granted: usize, booted: u8) -> Option<String> {
    (granted != usize::from(booted)).then(|| {
        format!(
            "{granted} vCPUs are granted but {booted} were booted (default_vcpus): a snapshot \
             does not save the grant, and a restored VM would run {booted}; save the VM before \
             resizing its vCPUs, or set enable_template = false"
        )
    })
}

/// Called by vCPU thread `id` as it ends: when a snapshot was asked for, it completes the
/// vCPU's pending I/O, waits for the device thread's end, saves its vCPU and waits until the
/// snapshot has taken the state (the vCPU's fd must live until then). Nothing otherwise.
/// `unsaved` is why the thread ended otherwise than by the snapshot's stop (see
/// [`unsaved_reason`]): its vCPU is then not saved and the snapshot fails naming why.
pub(super) fn vcpu_ending(id: usize, fd: &mut VcpuFd, shared: &Shared, unsaved: Option<String>) {
    let stage = &shared.snapshot;
    if !stage.requested.load(Ordering::SeqCst) {
        return;
    }
    if let Some(why) = unsaved {
        stage.record_unsaved(id, why);
        return;
    }
    snapshot::vcpu::complete_pending_io(fd);
    stage.inner().ending.push(id);
    stage.changed.notify_all();
    let deadline = Instant::now() + VCPU_WAIT;
    if !stage.wait_for_save(deadline) {
        return;
    }
    let msrs = stage.inner().msr_indexes.clone();
    let state = u8::try_from(id)
        .map_err(|_| Error::Device {
            device: format!("vCPU {id}"),
            reason: "more vCPUs than APIC ids".into(),
        })
        .and_then(|id8| snapshot::vcpu::save(fd, id8, &msrs))
        .map_err(|e| e.to_string());
    stage.inner().states.insert(id, state);
    stage.changed.notify_all();
    stage.wait_until(deadline, |i| i.done);
}

impl Vm {
    /// Saves the VM into the directory `dir` (created if missing; see [`crate::snapshot`]):
    /// [`snapshot::STATE_FILE`] and [`snapshot::MEMORY_FILE`]; returns the bytes of guest
    /// memory written (the pages the guest touched). **The VM ends** with the snapshot
    /// ([`VmExit::Stopped`]): a template is saved once and not resumed.
    ///
    /// Refused while the VM can still run on, naming the setting: VFIO, PCI ports, NICs,
    /// disks, virtio-mem, the balloon, a device whose state is not saved, a share the guest
    /// has used, a VM restored from a snapshot, a vCPU grant other than the booted vCPUs.
    /// A vCPU that ended otherwise than by the snapshot's stop fails it. A failure after the VM was ended leaves no partial file and no state file
    /// (a stale one is removed before the new files are written; a restore reads it first).
    pub fn snapshot(&mut self, dir: &Path) -> Result<u64> {
        let refused = |reason: String| Error::Device {
            device: format!("VM {} (snapshot into {})", self.name, dir.display()),
            reason,
        };
        if let Some(why) = &self.snapshot_refusal {
            return Err(refused(why.clone()));
        }
        let granted = self.shared.grants().granted;
        if let Some(why) = grant_refusal(granted, self.snapshot_config.vcpus) {
            return Err(refused(why));
        }
        if let Some(exit) = self.shared.wait(Some(Duration::ZERO)) {
            return Err(refused(format!("the VM has ended ({exit})")));
        }
        let Some(res) = self.resources.as_ref() else {
            return Err(refused("the VM has been stopped".into()));
        };
        // Every device must be savable before the VM is ended for it.
        for t in res.mmio.transports() {
            t.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .snapshot_state()?;
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::DeviceIo {
            device: format!("VM {}", self.name),
            what: format!("creating the snapshot directory {}", dir.display()),
            source,
        })?;
        let msr_indexes = snapshot::vcpu::msr_index_list(res.kvm.kvm())?;

        // End the VM: the device thread first, then every vCPU out of KVM_RUN.
        let stage = &self.shared.snapshot;
        stage.inner().msr_indexes = Arc::new(msr_indexes);
        stage.requested.store(true, Ordering::SeqCst);
        self.shared.finish(VmExit::Stopped);
        if let Some(h) = self.event_thread.take() {
            let _ = h.join();
        }
        let count = self.vcpu_threads.len();
        let deadline = Instant::now() + VCPU_WAIT;
        let ended = loop {
            let ending = stage.inner().ending.len();
            if ending == count {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            // A vCPU in KVM_RUN returns on the signal; one between its check and KVM_RUN
            // misses it, so every one still running is kicked again.
            for h in &self.vcpu_threads {
                if !h.is_finished() {
                    let _ = h.kill(kick_signal());
                }
            }
            stage.wait_until(Instant::now() + Duration::from_millis(2), |i| {
                i.ending.len() == count
            });
        };
        let saved = if ended {
            stage.inner().save = true;
            stage.changed.notify_all();
            stage.wait_until(deadline, |i| i.states.len() == count)
        } else {
            false
        };
        let result = if saved {
            let states = std::mem::take(&mut stage.inner().states);
            self.write_snapshot(dir, states)
        } else {
            let i = stage.inner();
            Err(refused(format!(
                "{} of {count} vCPUs left KVM_RUN and {} saved within {VCPU_WAIT:?}",
                i.ending.len(),
                i.states.len()
            )))
        };
        stage.inner().done = true;
        stage.changed.notify_all();
        self.stop();
        result
    }

    /// Writes the snapshot of an ended VM whose vCPU threads saved `states` and wait.
    fn write_snapshot(
        &self,
        dir: &Path,
        states: BTreeMap<usize, std::result::Result<VcpuState, String>>,
    ) -> Result<u64> {
        let Some(res) = self.resources.as_ref() else {
            return Err(Error::Device {
                device: format!("VM {}", self.name),
                reason: "stopped before its snapshot was written".into(),
            });
        };
        let mut vcpus = Vec::with_capacity(states.len());
        for (id, state) in states {
            vcpus.push(state.map_err(|reason| Error::Device {
                device: format!("VM {} vCPU {id} (snapshot)", self.name),
                reason,
            })?);
        }
        let devices = res
            .mmio
            .transports()
            .map(|t| {
                t.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .snapshot_state()
            })
            .collect::<Result<Vec<_>>>()?;
        let serial = res
            .legacy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .serial
            .snapshot_state();
        let state = Snapshot {
            format: snapshot::FORMAT,
            config: self.snapshot_config.clone(),
            vm: res.kvm.save_state()?,
            vcpus,
            serial,
            devices,
        };
        let written = state.write(dir, res.ram.memfd(), res.ram.size())?;
        tracing::info!(name = %self.name, dir = %dir.display(), memory_bytes = written, "built-in VMM: VM saved into a snapshot and ended");
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_snapshots_stop_leaves_a_vcpu_to_save() {
        assert_eq!(unsaved_reason(&Ok(VmExit::Stopped)), None);
        let shutdown = unsaved_reason(&Ok(VmExit::Shutdown)).unwrap();
        assert!(
            shutdown.contains("not by the snapshot's stop"),
            "{shutdown}"
        );
        let failed = unsaved_reason(&Ok(VmExit::Failed("vCPU 1: KVM_RUN: EFAULT".into())));
        assert!(failed.unwrap().contains("KVM_RUN: EFAULT"));
        let panicked = std::panic::catch_unwind(|| -> VmExit { panic!("bad exit") });
        let why = unsaved_reason(&panicked).unwrap();
        assert!(
            why.contains("panicked") && why.contains("bad exit"),
            "{why}"
        );
    }

    #[test]
    fn an_unsaved_vcpu_counts_as_ended_with_its_error() {
        let stage = Stage::default();
        stage.record_unsaved(1, "the vCPU ended by itself (shutdown)".into());
        let inner = stage.inner();
        assert_eq!(inner.ending, vec![1]);
        assert!(matches!(inner.states.get(&1), Some(Err(w)) if w.contains("shutdown")));
    }

    #[test]
    fn a_vcpu_waiting_to_save_goes_once_the_snapshot_gives_up() {
        let stage = Arc::new(Stage::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let stage = stage.clone();
            std::thread::spawn(move || {
                let saves = stage.wait_for_save(Instant::now() + VCPU_WAIT);
                let _ = tx.send(saves);
            })
        };
        stage.inner().done = true;
        stage.changed.notify_all();
        // Well before VCPU_WAIT: the waiter watches `done`, not only `save`.
        assert_eq!(rx.recv_timeout(VCPU_WAIT / 2), Ok(false));
        waiter.join().unwrap();
        stage.inner().save = true;
        assert!(stage.wait_for_save(Instant::now()));
    }

    #[test]
    fn a_grant_other_than_the_booted_vcpus_is_refused() {
        assert_eq!(grant_refusal(2, 2), None);
        let raised = grant_refusal(3, 2).unwrap();
        assert!(raised.contains("3 vCPUs are granted but 2"), "{raised}");
        assert!(raised.contains("default_vcpus"));
        assert!(grant_refusal(1, 2).is_some());
    }
}
