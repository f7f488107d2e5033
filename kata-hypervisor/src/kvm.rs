//! Accelerator selection: use KVM where it can run an ordinary guest, else TCG; and whether
//! the built-in VMM (kata-vmm) can run here at all.
//!
//! `/dev/kvm` existing is not enough. A paravirtual KVM (PVM, module `kvm_pvm`) only runs guests
//! built for it; an ordinary kernel crawls in emulation and then fails. Hardware KVM is provided
//! by `kvm_intel` or `kvm_amd`. [`probe_kvm`] reads sysfs only, so it costs microseconds.
//!
//! QEMU falls back to TCG; the built-in VMM cannot. [`probe_builtin_vmm`] adds what it needs of
//! the KVM API (`KVM_GET_API_VERSION`, then `KVM_CHECK_EXTENSION` for each of
//! [`BUILTIN_VMM_CAPS`]) and gives the reason the built-in backend refuses to start with.
//!
//! [`default_hypervisor`] decides the VMM used where no configuration names one: the built-in
//! VMM (`[hypervisor.dragonball]`) where this build has it and its probe passes, QEMU
//! otherwise; the choice and its reason are logged once per process.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::config::{HypervisorConfig, HypervisorType};

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Accelerator {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (slow, but runs anywhere).
    Tcg,
}

/// The result of probing the host's KVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// Whether an ordinary Linux guest can run on this host's KVM.
    pub usable: bool,
    /// Why (or why not), for logs and `shim-ctl check`.
    pub reason: String,
}

/// Probes the host: `/dev/kvm` and the `/sys/module` entries of the KVM modules.
pub fn probe_kvm() -> KvmProbe {
    probe_kvm_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

/// [`probe_kvm`] with explicit paths (for tests against a fixture tree).
pub fn probe_kvm_at(dev_kvm: &Path, sys_module: &Path) -> KvmProbe {
    let has = |m: &str| sys_module.join(m).exists();
    if !dev_kvm.exists() {
        return KvmProbe {
            usable: false,
            reason: format!("{} does not exist", dev_kvm.display()),
        };
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        return KvmProbe {
            usable: false,
            reason: format!("cannot open {}: {e}", dev_kvm.display()),
        };
    }
    if has("kvm_pvm") {
        return KvmProbe {
            usable: false,
            reason: "KVM is paravirtual (kvm_pvm): it cannot run an ordinary Linux guest".into(),
        };
    }
    for m in ["kvm_intel", "kvm_amd"] {
        if has(m) {
            return KvmProbe {
                usable: true,
                reason: format!("hardware KVM ({m})"),
            };
        }
    }
    KvmProbe {
        usable: false,
        reason: "no hardware KVM module (kvm_intel or kvm_amd) is loaded".into(),
    }
}

/// The KVM API version every KVM since Linux 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;
/// `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;
/// `_IO(KVMIO, 0x03)`.
const KVM_CHECK_EXTENSION: libc::c_ulong = 0xae03;

/// A KVM capability (`KVM_CAP_*`) the built-in VMM uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmCap {
    /// Its name, as `shim-ctl check` prints it.
    pub name: &'static str,
    /// Its `KVM_CAP_*` number.
    pub id: u32,
}

/// What the built-in VMM needs of KVM: the in-kernel interrupt controllers and PIT, guest memory
/// from user space, interrupts through irqfd and GSI routing, notifications through ioeventfd,
/// the x86 setup ioctls, and `immediate_exit` to stop vCPUs.
pub const BUILTIN_VMM_CAPS: &[KvmCap] = &[
    KvmCap {
        name: "irqchip",
        id: 0,
    },
    KvmCap {
        name: "user_memory",
        id: 3,
    },
    KvmCap {
        name: "set_tss_addr",
        id: 4,
    },
    KvmCap {
        name: "ext_cpuid",
        id: 7,
    },
    KvmCap {
        name: "irq_routing",
        id: 25,
    },
    KvmCap {
        name: "irqfd",
        id: 32,
    },
    KvmCap {
        name: "pit2",
        id: 33,
    },
    KvmCap {
        name: "ioeventfd",
        id: 36,
    },
    KvmCap {
        name: "set_identity_map_addr",
        id: 37,
    },
    KvmCap {
        name: "immediate_exit",
        id: 136,
    },
];

/// What `/dev/kvm` answered: its API version and which of [`BUILTIN_VMM_CAPS`] it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmApi {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// Each capability and whether `KVM_CHECK_EXTENSION` reported it.
    pub caps: Vec<(KvmCap, bool)>,
}

/// Whether the built-in VMM can run on this host, and why (or why not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinVmmProbe {
    /// Whether the built-in VMM can run an ordinary guest here.
    pub usable: bool,
    /// Why (or why not): for `shim-ctl check`, and the built-in backend's error when it
    /// refuses to start.
    pub reason: String,
    /// The capabilities KVM lacks (empty when it was not asked).
    pub missing: Vec<&'static str>,
}

/// Probes the host for the built-in VMM: [`probe_kvm`], then the KVM API itself.
pub fn probe_builtin_vmm() -> BuiltinVmmProbe {
    probe_builtin_vmm_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

/// [`probe_builtin_vmm`] with explicit paths (for tests against a fixture tree).
pub fn probe_builtin_vmm_at(dev_kvm: &Path, sys_module: &Path) -> BuiltinVmmProbe {
    let host = probe_kvm_at(dev_kvm, sys_module);
    let api = if dev_kvm.exists() {
        query_kvm(dev_kvm)
    } else {
        Err(format!("{} does not exist", dev_kvm.display()))
    };
    builtin_vmm_verdict(&host, api)
}

/// Asks `dev_kvm` for its API version and the built-in VMM's capabilities.
pub fn query_kvm(dev_kvm: &Path) -> Result<KvmApi, String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
        .map_err(|e| format!("cannot open {}: {e}", dev_kvm.display()))?;
    let fd = kvm.as_raw_fd();
    // SAFETY: KVM_GET_API_VERSION takes no argument and writes no memory; `fd` is open for the
    // whole call (owned by `kvm`). On a file that is not /dev/kvm it fails with ENOTTY.
    let api_version = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION as _, 0) };
    if api_version < 0 {
        return Err(format!(
            "KVM_GET_API_VERSION on {} failed: {}",
            dev_kvm.display(),
            std::io::Error::last_os_error()
        ));
    }
    let caps = BUILTIN_VMM_CAPS
        .iter()
        .map(|cap| {
            // SAFETY: KVM_CHECK_EXTENSION takes the capability number by value and writes no
            // memory; `fd` is open for the whole call.
            let r = unsafe { libc::ioctl(fd, KVM_CHECK_EXTENSION as _, cap.id as libc::c_ulong) };
            (*cap, r > 0)
        })
        .collect();
    Ok(KvmApi { api_version, caps })
}

/// The decision, from the module probe and what the KVM API answered (pure, for tests).
pub fn builtin_vmm_verdict(host: &KvmProbe, api: Result<KvmApi, String>) -> BuiltinVmmProbe {
    let refuse = |reason: String, missing: Vec<&'static str>| BuiltinVmmProbe {
        usable: false,
        reason: format!(
            "the built-in VMM cannot run here: {reason}; use [hypervisor.qemu], which falls back \
             to TCG"
        ),
        missing,
    };
    if !host.usable {
        return refuse(host.reason.clone(), Vec::new());
    }
    let api = match api {
        Ok(api) => api,
        Err(e) => return refuse(e, Vec::new()),
    };
    if api.api_version != KVM_API_VERSION {
        return refuse(
            format!(
                "KVM API version {} (only {KVM_API_VERSION} is supported)",
                api.api_version
            ),
            Vec::new(),
        );
    }
    let missing: Vec<&'static str> = api
        .caps
        .iter()
        .filter(|(_, has)| !has)
        .map(|(cap, _)| cap.name)
        .collect();
    if !missing.is_empty() {
        return refuse(format!("KVM lacks {}", missing.join(", ")), missing);
    }
    BuiltinVmmProbe {
        usable: true,
        reason: format!(
            "{}, KVM API {KVM_API_VERSION} with {}",
            host.reason,
            api.caps
                .iter()
                .map(|(c, _)| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        missing,
    }
}

/// Chooses the accelerator: `KATA_RS_ACCEL=tcg|kvm` forces one, else the probe decides.
/// Returns the choice and the probe's reason.
pub fn choose_accelerator() -> (Accelerator, String) {
    match std::env::var("KATA_RS_ACCEL").as_deref() {
        Ok("tcg") => return (Accelerator::Tcg, "KATA_RS_ACCEL=tcg".into()),
        Ok("kvm") => return (Accelerator::Kvm, "KATA_RS_ACCEL=kvm".into()),
        _ => {}
    }
    let p = probe_kvm();
    if p.usable {
        (Accelerator::Kvm, p.reason)
    } else {
        (Accelerator::Tcg, p.reason)
    }
}

/// Finds a program: an explicit path if given, else the first match on `PATH` and in `extra`.
pub fn find_program(name: &str, explicit: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    if !explicit.is_empty() {
        let p = PathBuf::from(explicit);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The hypervisor used where no configuration names one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultHypervisor {
    /// The backend: [`HypervisorType::Dragonball`] (the built-in VMM) or
    /// [`HypervisorType::Qemu`].
    pub kind: HypervisorType,
    /// Why: the probe's verdict, or that this build has no built-in VMM.
    pub reason: String,
}

/// The default hypervisor of this process: [`choose_default_hypervisor`] over this build and
/// this host's [`probe_builtin_vmm`], probed and logged once (the host's KVM does not change
/// under a running runtime).
pub fn default_hypervisor() -> DefaultHypervisor {
    static CHOSEN: std::sync::OnceLock<DefaultHypervisor> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let chosen =
                choose_default_hypervisor(cfg!(feature = "builtin"), &probe_builtin_vmm());
            tracing::info!(hypervisor = %chosen.kind, reason = %chosen.reason, "default hypervisor");
            chosen
        })
        .clone()
}

impl DefaultHypervisor {
    /// The section a builder starts `kind` from when nothing is configured: Kata's defaults
    /// ([`HypervisorConfig::default`]) for a VMM without defaults of its own (QEMU), else the
    /// section's ([`HypervisorConfig::defaults_for`]: the built-in VMM's inline virtio-fs and
    /// mmio block devices).
    pub fn section(kind: HypervisorType) -> HypervisorConfig {
        if kind.section_defaults().is_empty() {
            HypervisorConfig::default()
        } else {
            HypervisorConfig::defaults_for(kind)
        }
    }
}

/// The decision behind [`default_hypervisor`] (pure, for tests): the built-in VMM where
/// `builtin_built` (cargo feature `builtin`) and `probe` passed, QEMU otherwise.
pub fn choose_default_hypervisor(
    builtin_built: bool,
    probe: &BuiltinVmmProbe,
) -> DefaultHypervisor {
    match (builtin_built, probe.usable) {
        (true, true) => DefaultHypervisor {
            kind: HypervisorType::Dragonball,
            reason: format!("the built-in VMM can run here: {}", probe.reason),
        },
        (true, false) => DefaultHypervisor {
            kind: HypervisorType::Qemu,
            reason: probe.reason.clone(),
        },
        (false, _) => DefaultHypervisor {
            kind: HypervisorType::Qemu,
            reason: format!(
                "this build has no built-in VMM (cargo feature `builtin`); its probe: {}",
                probe.reason
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(modules: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("kvm"), b"").unwrap();
        for m in modules {
            std::fs::create_dir_all(d.path().join("module").join(m)).unwrap();
        }
        d
    }

    #[test]
    fn pvm_is_not_usable() {
        let d = fixture(&["kvm", "kvm_pvm"]);
        let p = probe_kvm_at(&d.path().join("kvm"), &d.path().join("module"));
        assert!(!p.usable);
        assert!(p.reason.contains("paravirtual"));
    }

    #[test]
    fn hardware_kvm_is_usable() {
        let d = fixture(&["kvm", "kvm_amd"]);
        let p = probe_kvm_at(&d.path().join("kvm"), &d.path().join("module"));
        assert!(p.usable, "{}", p.reason);
    }

    fn all_caps(missing: &[&str]) -> KvmApi {
        KvmApi {
            api_version: 12,
            caps: BUILTIN_VMM_CAPS
                .iter()
                .map(|c| (*c, !missing.contains(&c.name)))
                .collect(),
        }
    }

    fn hardware() -> KvmProbe {
        KvmProbe {
            usable: true,
            reason: "hardware KVM (kvm_amd)".into(),
        }
    }

    #[test]
    fn builtin_vmm_runs_on_hardware_kvm_with_every_capability() {
        let p = builtin_vmm_verdict(&hardware(), Ok(all_caps(&[])));
        assert!(p.usable, "{}", p.reason);
        assert!(
            p.reason.contains("kvm_amd") && p.reason.contains("irqfd"),
            "{}",
            p.reason
        );
        assert!(p.missing.is_empty());
    }

    #[test]
    fn builtin_vmm_refuses_paravirtual_kvm_whatever_the_api_says() {
        let pvm = KvmProbe {
            usable: false,
            reason: "KVM is paravirtual (kvm_pvm): it cannot run an ordinary Linux guest".into(),
        };
        let p = builtin_vmm_verdict(&pvm, Ok(all_caps(&[])));
        assert!(!p.usable);
        assert!(p.reason.contains("paravirtual"), "{}", p.reason);
        assert!(p.reason.contains("[hypervisor.qemu]"), "{}", p.reason);
    }

    #[test]
    fn builtin_vmm_names_missing_capabilities() {
        let p = builtin_vmm_verdict(&hardware(), Ok(all_caps(&["irqfd", "ioeventfd"])));
        assert!(!p.usable);
        assert_eq!(p.missing, vec!["irqfd", "ioeventfd"]);
        assert!(
            p.reason.contains("KVM lacks irqfd, ioeventfd"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn builtin_vmm_refuses_an_odd_api_version_or_a_failed_ioctl() {
        let mut api = all_caps(&[]);
        api.api_version = 11;
        let p = builtin_vmm_verdict(&hardware(), Ok(api));
        assert!(
            !p.usable && p.reason.contains("API version 11"),
            "{}",
            p.reason
        );
        let p = builtin_vmm_verdict(&hardware(), Err("KVM_GET_API_VERSION failed".into()));
        assert!(
            !p.usable && p.reason.contains("KVM_GET_API_VERSION"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn builtin_vmm_probe_on_a_file_that_is_not_kvm() {
        // The module fixture says hardware KVM, but "/dev/kvm" is a plain file: the ioctl
        // fails and the probe says so.
        let d = fixture(&["kvm", "kvm_intel"]);
        let p = probe_builtin_vmm_at(&d.path().join("kvm"), &d.path().join("module"));
        assert!(!p.usable);
        assert!(p.reason.contains("KVM_GET_API_VERSION"), "{}", p.reason);
        let p = probe_builtin_vmm_at(&d.path().join("nokvm"), &d.path().join("module"));
        assert!(
            !p.usable && p.reason.contains("does not exist"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn this_hosts_kvm_answers_the_api_queries() {
        // Where /dev/kvm opens (this host: PVM), the API answers version 12; PVM itself is
        // refused by the module check, whatever its capabilities.
        let dev = Path::new("/dev/kvm");
        if std::fs::File::options()
            .read(true)
            .write(true)
            .open(dev)
            .is_err()
        {
            assert!(query_kvm(dev).is_err());
            return;
        }
        let api = query_kvm(dev).unwrap();
        assert_eq!(api.api_version, 12);
        assert_eq!(api.caps.len(), BUILTIN_VMM_CAPS.len());
        let p = probe_builtin_vmm();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(
                !p.usable && p.reason.contains("paravirtual"),
                "{}",
                p.reason
            );
        }
    }

    #[test]
    fn absent_kvm_is_not_usable() {
        let d = fixture(&[]);
        let p = probe_kvm_at(&d.path().join("nokvm"), &d.path().join("module"));
        assert!(!p.usable);
        assert!(p.reason.contains("does not exist"));
    }

    /// A probe result made up for the test (named so: this host's KVM is paravirtual and
    /// fails the real probe).
    fn fake_probe(usable: bool) -> BuiltinVmmProbe {
        BuiltinVmmProbe {
            usable,
            reason: if usable {
                "FAKE probe: hardware KVM (kvm_amd), KVM API 12".into()
            } else {
                "FAKE probe: the built-in VMM cannot run here: paravirtual KVM".into()
            },
            missing: Vec::new(),
        }
    }

    #[test]
    fn the_builtin_vmm_is_the_default_only_where_it_is_built_and_its_probe_passes() {
        let chosen = choose_default_hypervisor(true, &fake_probe(true));
        assert_eq!(chosen.kind, HypervisorType::Dragonball);
        assert!(
            chosen.reason.contains("FAKE probe: hardware KVM"),
            "{}",
            chosen.reason
        );
        let chosen = choose_default_hypervisor(true, &fake_probe(false));
        assert_eq!(chosen.kind, HypervisorType::Qemu);
        assert!(chosen.reason.contains("paravirtual"), "{}", chosen.reason);
        for usable in [true, false] {
            let chosen = choose_default_hypervisor(false, &fake_probe(usable));
            assert_eq!(chosen.kind, HypervisorType::Qemu);
            assert!(
                chosen.reason.contains("feature `builtin`"),
                "{}",
                chosen.reason
            );
        }
    }

    #[test]
    fn this_hosts_default_follows_its_own_probe() {
        let chosen = default_hypervisor();
        let probe = probe_builtin_vmm();
        let expected = if cfg!(feature = "builtin") && probe.usable {
            HypervisorType::Dragonball
        } else {
            HypervisorType::Qemu
        };
        assert_eq!(chosen.kind, expected, "{}", chosen.reason);
    }
}
