//! The one place that knows the backends: it makes, takes over and cleans up a VM for any
//! [`HypervisorType`], says what a backend can do before a VM exists, and checks the host for
//! it. Everything above this crate goes through here and the [`Hypervisor`] trait, and never
//! names a backend.
//!
//! | type | backend | cargo feature |
//! |---|---|---|
//! | `qemu` | [`crate::qemu`]: an external QEMU driven over QMP | `qemu` (default) |
//! | `host-agent` | `crate::host_agent`: a test fake, no VM | `test-backend` |
//! | `dragonball` | `crate::builtin`: the built-in VMM (kata-vmm) in this process | `builtin` |
//! | `clh`, `firecracker`, `remote` | none yet | — |
//!
//! A new backend (Firecracker, say) is one folder next to `qemu/` and one arm in each function
//! below; nothing outside this crate changes.

pub mod host;

use std::path::Path;
use std::sync::Arc;

use crate::config::{HypervisorConfig, HypervisorType};
use crate::error::{Error, Result};
use crate::hypervisor::{Capabilities, Hypervisor, HypervisorState};

pub use host::{CheckStatus, HostCheck, HostProbe};

/// What [`cleanup`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// The processes that were killed.
    pub killed: Vec<u32>,
    /// Whether the VM directory is gone.
    pub vm_dir_removed: bool,
}

/// The error for a type this build has no backend for.
fn no_backend(kind: HypervisorType) -> Error {
    match kind {
        HypervisorType::Qemu => Error::BackendNotBuilt {
            kind,
            feature: "qemu",
        },
        // A build without the default feature `builtin` (the backend exists).
        HypervisorType::Dragonball => Error::BackendNotBuilt {
            kind,
            feature: "builtin",
        },
        _ => Error::BackendNotImplemented { kind },
    }
}

/// Makes a VM named `id` of type `kind` whose sockets and logs live in `vm_dir` (created at
/// start, removed at stop). Checks the configuration for the backend; files are checked at
/// start.
pub fn create(
    kind: HypervisorType,
    id: &str,
    config: HypervisorConfig,
    vm_dir: &Path,
) -> Result<Arc<dyn Hypervisor>> {
    match kind {
        #[cfg(feature = "qemu")]
        HypervisorType::Qemu => Ok(Arc::new(crate::qemu::Qemu::new(id, config, vm_dir)?)),
        #[cfg(feature = "test-backend")]
        HypervisorType::HostAgent => Ok(Arc::new(crate::host_agent::HostAgent::new(
            id, config, vm_dir,
        )?)),
        #[cfg(feature = "builtin")]
        HypervisorType::Dragonball => {
            Ok(Arc::new(crate::builtin::Builtin::new(id, config, vm_dir)?))
        }
        other => {
            let _ = (id, config, vm_dir);
            Err(no_backend(other))
        }
    }
}

/// Takes over the VM `saved` describes (detached by its previous owner, or left by one that
/// died), in this process or another. On error nothing is killed or removed: [`cleanup`]
/// still can.
pub async fn restore(
    id: &str,
    config: HypervisorConfig,
    saved: &HypervisorState,
) -> Result<Arc<dyn Hypervisor>> {
    match saved.backend {
        #[cfg(feature = "qemu")]
        HypervisorType::Qemu => Ok(Arc::new(
            crate::qemu::Qemu::restore(id, config, saved).await?,
        )),
        #[cfg(feature = "test-backend")]
        HypervisorType::HostAgent => Ok(Arc::new(
            crate::host_agent::HostAgent::restore(id, config, saved).await?,
        )),
        #[cfg(feature = "builtin")]
        HypervisorType::Dragonball => {
            let _ = (id, config);
            Err(crate::builtin::restore_refused(saved))
        }
        other => {
            let _ = (id, config);
            Err(no_backend(other))
        }
    }
}

/// Cleans up after a VM whose owner died: kills what its backend left running and removes
/// `vm_dir`. Works from the saved state when there is one and, without it (an unreadable or
/// older state file), from what names `vm_dir`: every external process a backend starts names
/// its VM directory on its command line, and a pid from a state is killed only when its
/// command line does (a recycled pid is never hit). An in-process VMM has nothing to kill.
/// Idempotent.
pub fn cleanup(saved: Option<&HypervisorState>, vm_dir: &Path) -> Result<CleanupReport> {
    let killed = match saved.map(|s| s.backend) {
        #[cfg(feature = "qemu")]
        Some(HypervisorType::Qemu) => {
            let state = saved.and_then(|s| crate::qemu::QemuState::from_saved(s).ok());
            crate::qemu::cleanup(state.as_ref(), vm_dir)
        }
        #[cfg(feature = "test-backend")]
        Some(HypervisorType::HostAgent) => crate::host_agent::cleanup(saved, vm_dir),
        // In-process: its threads ended with the runtime; nothing to kill.
        #[cfg(feature = "builtin")]
        Some(HypervisorType::Dragonball) => Vec::new(),
        // No state, or a backend this build does not have: what names the VM directory.
        _ => {
            let killed = crate::process::kill_processes_naming(vm_dir, &[], KILL_WAIT);
            // A rootless QEMU's uid: the claims naming the VM directory.
            #[cfg(feature = "qemu")]
            crate::qemu::release_uids_left(None, vm_dir);
            killed
        }
    };
    let mut report = CleanupReport {
        killed,
        vm_dir_removed: false,
    };
    match std::fs::remove_dir_all(vm_dir) {
        Ok(()) => report.vm_dir_removed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.vm_dir_removed = true,
        Err(e) => return Err(Error::io(format!("removing {}", vm_dir.display()), e)),
    }
    Ok(report)
}

/// How long [`cleanup`] waits for a killed process to be gone.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the backend of `kind` can do with `config`, before a VM exists; an error for a type
/// without a backend in this build, or for a setting of `config` the backend refuses
/// ([`HypervisorConfig::check_refused`]: `rootless`, `confidential_guest`, ...).
pub fn capabilities(kind: HypervisorType, config: &HypervisorConfig) -> Result<Capabilities> {
    let caps = match kind {
        #[cfg(feature = "qemu")]
        HypervisorType::Qemu => Ok(crate::qemu::capabilities_for(config)),
        #[cfg(feature = "test-backend")]
        HypervisorType::HostAgent => Ok(crate::host_agent::capabilities()),
        #[cfg(feature = "builtin")]
        HypervisorType::Dragonball => Ok(crate::builtin::capabilities(config)),
        other => Err(no_backend(other)),
    }?;
    config.check_refused(kind)?;
    Ok(caps)
}

/// How the backend of `kind` treats one key of its section with `config`'s values (see
/// [`crate::config::SettingUse`]); `None` for a key it does not know, or a type without a
/// backend in this build.
pub fn setting_use(
    kind: HypervisorType,
    key: &str,
    config: &HypervisorConfig,
) -> Option<crate::config::SettingUse> {
    match kind {
        #[cfg(feature = "qemu")]
        HypervisorType::Qemu => crate::qemu::setting_use(key, config),
        #[cfg(feature = "test-backend")]
        HypervisorType::HostAgent => crate::host_agent::setting_use(key, config),
        #[cfg(feature = "builtin")]
        HypervisorType::Dragonball => crate::builtin::setting_use(key, config),
        _ => {
            let _ = (key, config);
            None
        }
    }
}

/// Checks that the backend of `kind` can run `config` on this host (what `shim-ctl check`
/// prints): the backend itself (built in?), then what it needs (KVM, vsock, binaries, the
/// guest image, ...). A [`CheckStatus::Fail`] means a VM cannot start.
pub fn host_checks(
    kind: HypervisorType,
    config: &HypervisorConfig,
    probe: &HostProbe,
) -> Vec<HostCheck> {
    use host::{check, KvmNeed};
    match kind {
        #[cfg(feature = "qemu")]
        HypervisorType::Qemu => crate::qemu::host_checks(config, probe),
        #[cfg(feature = "test-backend")]
        HypervisorType::HostAgent => crate::host_agent::host_checks(config),
        #[cfg(feature = "builtin")]
        HypervisorType::Dragonball => crate::builtin::host_checks(config, probe),
        other => {
            // Parsed and validated, but not runnable: say so, and what the VM would need.
            let mut out = vec![check(
                "hypervisor",
                CheckStatus::Fail,
                no_backend(other).to_string(),
            )];
            if other == HypervisorType::Remote {
                out.push(host::kvm(
                    probe,
                    KvmNeed::NotNeeded("the remote hypervisor runs VMs elsewhere"),
                ));
                out.extend(host::tee(config, probe));
                out.push(host::virtiofsd(config, probe, false));
            } else {
                out.push(host::kvm(probe, KvmNeed::Required));
                out.extend(host::tee(config, probe));
                out.push(host::vhost_vsock(probe, "the VMM's hybrid vsock"));
                out.push(host::virtiofsd(config, probe, true));
                out.push(host::guest_image(config, probe));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_without_a_backend_say_so() {
        let e = create(
            HypervisorType::Firecracker,
            "x",
            HypervisorConfig::default(),
            Path::new("/nonexistent/vm"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("cannot start a firecracker VM"), "{e}");
        assert!(capabilities(HypervisorType::Firecracker, &HypervisorConfig::default()).is_err());
        let checks = host_checks(
            HypervisorType::CloudHypervisor,
            &HypervisorConfig::default(),
            &HostProbe::default(),
        );
        assert_eq!(checks[0].status, CheckStatus::Fail);
        assert!(checks[0].detail.contains("clh"), "{:?}", checks[0]);
    }

    /// A build without a backend names the feature that adds it (the built-in VMM's is on by
    /// default, but a `default-features = false` user can leave it out).
    #[test]
    fn a_backend_left_out_of_the_build_names_its_feature() {
        let e = no_backend(HypervisorType::Dragonball).to_string();
        assert!(e.contains("`builtin` cargo feature"), "{e}");
        let e = no_backend(HypervisorType::Qemu).to_string();
        assert!(e.contains("`qemu` cargo feature"), "{e}");
    }

    #[cfg(feature = "qemu")]
    #[test]
    fn qemu_serves_virtio_fs_and_9p_not_nydus() {
        let caps = capabilities(HypervisorType::Qemu, &HypervisorConfig::default()).unwrap();
        assert!(caps.supports_shared_fs(crate::SharedFs::VirtioFs));
        assert!(caps.supports_shared_fs(crate::SharedFs::Virtio9p));
        assert!(caps.supports_shared_fs(crate::SharedFs::None));
        assert!(caps.hand_over && !caps.guest_on_host);
        let e = caps
            .check_shared_fs(crate::SharedFs::VirtioFsNydus)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shared_fs") && e.contains("virtio-fs") && e.contains("virtio-9p"),
            "{e}"
        );
    }

    #[cfg(feature = "qemu")]
    #[test]
    fn capabilities_refuse_what_the_backend_does_not_implement() {
        // Rootless QEMU is implemented with virtio-fs, not with the 9p share.
        let rootless = HypervisorConfig {
            rootless: true,
            ..Default::default()
        };
        capabilities(HypervisorType::Qemu, &rootless).unwrap();
        let config = HypervisorConfig {
            rootless: true,
            shared_fs: crate::SharedFs::Virtio9p,
            ..Default::default()
        };
        let e = capabilities(HypervisorType::Qemu, &config)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rootless = true") && e.contains("not implemented"),
            "{e}"
        );
        let e = create(
            HypervisorType::Qemu,
            "x",
            config,
            Path::new("/nonexistent/vm"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("rootless"), "{e}");
    }

    #[test]
    fn cleanup_without_a_state_kills_what_names_the_vm_dir_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let vm_dir = tmp.path().join("vm");
        std::fs::create_dir(&vm_dir).unwrap();
        std::fs::write(vm_dir.join("console.log"), "x").unwrap();
        // One process whose command line names the directory (its argv[0]) and no child, as in
        // process.rs's test: `sh -c "sleep ..."` forked a copy of itself (the same command
        // line) before exec'ing sleep, and a CI rehearsal of 2026-12-02 saw cleanup kill both.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg0(format!("{}/qmp.sock", vm_dir.display()))
            .arg("100")
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if crate::process::processes_naming(&vm_dir).contains(&child.id()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let report = cleanup(None, &vm_dir).unwrap();
        assert_eq!(report.killed, vec![child.id()]);
        assert!(report.vm_dir_removed && !vm_dir.exists());
        let _ = child.wait();
        // Idempotent.
        assert!(cleanup(None, &vm_dir).unwrap().vm_dir_removed);
    }

    #[cfg(feature = "qemu")]
    #[test]
    fn cleanup_with_an_older_qemu_state_scans_the_vm_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let vm_dir = tmp.path().join("vm");
        std::fs::create_dir(&vm_dir).unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        // Today's format named pids at the top level; they are not read any more, and a pid
        // that does not name the VM directory is never killed anyway.
        let old: HypervisorState = serde_json::from_value(serde_json::json!({
            "backend": "qemu", "vm_dir": vm_dir, "pids": [other.id()],
            "api_socket": null, "agent_address": null, "accelerator": null,
        }))
        .unwrap();
        let report = cleanup(Some(&old), &vm_dir).unwrap();
        assert!(report.killed.is_empty(), "{report:?}");
        assert!(other.try_wait().unwrap().is_none());
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
