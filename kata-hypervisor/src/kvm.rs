//! Accelerator selection: use KVM where it can run an ordinary guest, else TCG.
//!
//! `/dev/kvm` existing is not enough. A paravirtual KVM (PVM, module `kvm_pvm`) only runs guests
//! built for it; an ordinary kernel crawls in emulation and then fails. Hardware KVM is provided
//! by `kvm_intel` or `kvm_amd`. The probe reads sysfs only, so it costs microseconds.

use std::path::{Path, PathBuf};

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

    #[test]
    fn absent_kvm_is_not_usable() {
        let d = fixture(&[]);
        let p = probe_kvm_at(&d.path().join("nokvm"), &d.path().join("module"));
        assert!(!p.usable);
        assert!(p.reason.contains("does not exist"));
    }
}
