//! Does this host have what a backend needs? One [`HostCheck`] per thing looked at (what
//! `shim-ctl check` prints), against a [`HostProbe`] so tests can point it at a fixture tree.
//!
//! The checks every VM backend shares live here (KVM, the TEE a confidential guest asks for,
//! vhost-vsock, virtiofsd, the guest image); each backend adds its own (QEMU: its binary and
//! the vhost-user vsock backend).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{GuestManifest, HypervisorConfig};
use crate::kvm::{probe_kvm_at, KvmProbe};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Present and usable.
    Ok,
    /// Works, but degraded (e.g. software emulation instead of KVM).
    Warning,
    /// Not needed by this configuration (what was found is still reported).
    NotNeeded,
    /// Needed and missing or unusable: a sandbox cannot start.
    Fail,
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warning => "warn",
            CheckStatus::NotNeeded => "skip",
            CheckStatus::Fail => "FAIL",
        })
    }
}

/// One host check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck {
    /// What was checked (`KVM`, `QEMU`, `guest image`, ...).
    pub name: String,
    /// The outcome.
    pub status: CheckStatus,
    /// What was found, or why not and how to fix it.
    pub detail: String,
    /// The configuration key whose path this check covers (`path` for the VMM binary), so a
    /// caller that also checks configured paths does not report it twice.
    pub key: Option<&'static str>,
}

/// Where the checks look; [`HostProbe::default`] is the real host, tests use a fixture tree.
#[derive(Debug, Clone)]
pub struct HostProbe {
    /// `/dev/kvm`.
    pub dev_kvm: PathBuf,
    /// `/dev/vhost-vsock`.
    pub dev_vhost_vsock: PathBuf,
    /// `/sys` (for KVM modules and TEE support).
    pub sys: PathBuf,
    /// kata-rs' cache (`$KATA_RS_CACHE`, default `/var/cache/kata-rs`): `bin/` holds
    /// `vhost-device-vsock` when `make setup` built it.
    pub cache: PathBuf,
    /// `$KATA_RS_VHOST_USER_VSOCK`: an explicit vhost-device-vsock binary.
    pub vhost_user_vsock: Option<PathBuf>,
    /// The guest image manifest (see [`GuestManifest::default_path`]).
    pub guest_manifest: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        HostProbe {
            dev_kvm: "/dev/kvm".into(),
            dev_vhost_vsock: "/dev/vhost-vsock".into(),
            sys: "/sys".into(),
            cache: crate::config::cache_dir(),
            vhost_user_vsock: std::env::var_os("KATA_RS_VHOST_USER_VSOCK")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            guest_manifest: GuestManifest::default_path(),
        }
    }
}

/// A check that covers no configuration key.
pub(crate) fn check(name: &str, status: CheckStatus, detail: impl Into<String>) -> HostCheck {
    HostCheck {
        name: name.to_string(),
        status,
        detail: detail.into(),
        key: None,
    }
}

fn read_flag(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|s| matches!(s.trim(), "1" | "Y" | "y"))
        .unwrap_or(false)
}

/// The TEEs the host offers: `tdx`, `sev`, `sev-snp`, `se`.
pub(crate) fn host_tees(sys: &Path) -> Vec<&'static str> {
    let mut tees = Vec::new();
    if read_flag(&sys.join("module/kvm_intel/parameters/tdx")) || sys.join("firmware/tdx").exists()
    {
        tees.push("tdx");
    }
    if read_flag(&sys.join("module/kvm_amd/parameters/sev")) {
        tees.push("sev");
    }
    if read_flag(&sys.join("module/kvm_amd/parameters/sev_snp")) {
        tees.push("sev-snp");
    }
    if read_flag(&sys.join("firmware/uv/prot_virt_host")) {
        tees.push("se");
    }
    tees
}

/// What a backend needs of KVM.
pub(crate) enum KvmNeed {
    /// A VM cannot run without it.
    Required,
    /// The backend falls back to something slower; the text says to what.
    #[cfg_attr(not(feature = "qemu"), allow(dead_code))]
    Fallback(&'static str),
    /// The backend does not use this host's KVM; the text says why.
    NotNeeded(&'static str),
}

/// The KVM check.
pub(crate) fn kvm(probe: &HostProbe, need: KvmNeed) -> HostCheck {
    let kvm: KvmProbe = probe_kvm_at(&probe.dev_kvm, &probe.sys.join("module"));
    match (kvm.usable, need) {
        (true, _) => check("KVM", CheckStatus::Ok, kvm.reason),
        (false, KvmNeed::Required) => check(
            "KVM",
            CheckStatus::Fail,
            format!("not usable for an ordinary guest: {}", kvm.reason),
        ),
        (false, KvmNeed::Fallback(to)) => check(
            "KVM",
            CheckStatus::Warning,
            format!("not usable for an ordinary guest: {}; {to}", kvm.reason),
        ),
        (false, KvmNeed::NotNeeded(why)) => check(
            "KVM",
            CheckStatus::NotNeeded,
            format!("{why} ({})", kvm.reason),
        ),
    }
}

/// The TEE check of a confidential guest (nothing for an ordinary one).
pub(crate) fn tee(config: &HypervisorConfig, probe: &HostProbe) -> Option<HostCheck> {
    if !config.confidential_guest {
        return None;
    }
    let tees = host_tees(&probe.sys);
    let wanted = if config.sev_snp_guest {
        vec!["sev-snp"]
    } else if config.machine_type.starts_with("s390") {
        vec!["se"]
    } else {
        vec!["tdx", "sev", "sev-snp"]
    };
    let have: Vec<_> = tees.iter().filter(|t| wanted.contains(t)).collect();
    Some(if have.is_empty() {
        check(
            "TEE",
            CheckStatus::Fail,
            format!(
                "confidential_guest = true needs {} on the host; found {}",
                wanted.join(" or "),
                if tees.is_empty() {
                    "none".to_string()
                } else {
                    tees.join(", ")
                }
            ),
        )
    } else {
        check(
            "TEE",
            CheckStatus::Ok,
            format!("host offers {have:?} (untested by kata-rs on real hardware)"),
        )
    })
}

/// The kernel's vhost-vsock; `backend` says what replaces it when it is missing.
pub(crate) fn vhost_vsock(probe: &HostProbe, backend: &str) -> HostCheck {
    if probe.dev_vhost_vsock.exists() {
        check(
            "vhost-vsock",
            CheckStatus::Ok,
            format!("{} exists", probe.dev_vhost_vsock.display()),
        )
    } else {
        check(
            "vhost-vsock",
            CheckStatus::NotNeeded,
            format!(
                "{} does not exist: the agent is reached over hybrid vsock through {backend}",
                probe.dev_vhost_vsock.display()
            ),
        )
    }
}

/// virtiofsd: needed when the shared filesystem is served by a daemon and `needed` holds.
pub(crate) fn virtiofsd(config: &HypervisorConfig, probe: &HostProbe, needed: bool) -> HostCheck {
    let fs = config.shared_fs;
    let needs = fs.needs_daemon() && needed;
    // An empty `virtio_fs_daemon` is the Rust virtiofsd in the cache, which kata-resource runs
    // (Debian's C virtiofsd takes other options).
    let found = if config.virtio_fs_daemon.is_empty() {
        Some(probe.cache.join("bin").join("virtiofsd")).filter(|p| p.is_file())
    } else {
        Some(PathBuf::from(&config.virtio_fs_daemon)).filter(|p| p.is_file())
    };
    match (found, needs) {
        (Some(p), true) => check("virtiofsd", CheckStatus::Ok, p.display().to_string()),
        (Some(p), false) => check(
            "virtiofsd",
            CheckStatus::NotNeeded,
            format!("{} (not needed: shared_fs = \"{fs}\")", p.display()),
        ),
        (None, false) => check(
            "virtiofsd",
            CheckStatus::NotNeeded,
            format!("not found; not needed: shared_fs = \"{fs}\""),
        ),
        (None, true) => check(
            "virtiofsd",
            CheckStatus::Fail,
            format!(
                "shared_fs = \"{fs}\" needs virtiofsd{}; scripts/setup.sh installs the Rust virtiofsd (crates.io `virtiofsd`) into {}",
                if config.virtio_fs_daemon.is_empty() {
                    String::new()
                } else {
                    format!(" (virtio_fs_daemon = \"{}\" is not a file)", config.virtio_fs_daemon)
                },
                probe.cache.join("bin").display()
            ),
        ),
    }
}

/// The guest image: the manifest `make guest` writes, unless the files are configured. An IBM
/// SE secure image (`kernel`) holds the initramfs too.
pub(crate) fn guest_image(config: &HypervisorConfig, probe: &HostProbe) -> HostCheck {
    let secure_image = config.confidential_guest && config.machine_type.starts_with("s390");
    let needs_manifest = config.kernel.is_empty()
        || (config.initrd.is_empty() && config.image.is_empty() && !secure_image);
    if !needs_manifest {
        return check(
            "guest image",
            CheckStatus::NotNeeded,
            "kernel and initrd/image are configured (checked with the configured paths)",
        );
    }
    match GuestManifest::load(&probe.guest_manifest) {
        Ok(m) => {
            let missing: Vec<_> = [&m.kernel, &m.initrd]
                .into_iter()
                .filter(|p| !p.is_file())
                .map(|p| p.display().to_string())
                .collect();
            if missing.is_empty() {
                check(
                    "guest image",
                    CheckStatus::Ok,
                    format!(
                        "{}: kernel {}{}, initrd {}",
                        probe.guest_manifest.display(),
                        m.kernel.display(),
                        if m.kernel_version.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", m.kernel_version)
                        },
                        m.initrd.display()
                    ),
                )
            } else {
                check(
                    "guest image",
                    CheckStatus::Fail,
                    format!(
                        "{} names files that do not exist: {}; {}",
                        probe.guest_manifest.display(),
                        missing.join(", "),
                        crate::config::guest_image_hint()
                    ),
                )
            }
        }
        Err(e) => check("guest image", CheckStatus::Fail, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tees_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let put = |rel: &str, v: &str| {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        assert!(host_tees(d.path()).is_empty());
        put("module/kvm_amd/parameters/sev", "Y\n");
        put("module/kvm_amd/parameters/sev_snp", "N\n");
        put("firmware/uv/prot_virt_host", "1\n");
        assert_eq!(host_tees(d.path()), ["sev", "se"]);
    }

    #[test]
    fn a_missing_manifest_says_make_guest_and_configured_files_skip_it() {
        let d = tempfile::tempdir().unwrap();
        let probe = HostProbe {
            guest_manifest: d.path().join("manifest.json"),
            ..HostProbe::default()
        };
        let c = guest_image(&HypervisorConfig::default(), &probe);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.detail.contains("make guest"), "{}", c.detail);
        let configured = HypervisorConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            ..Default::default()
        };
        assert_eq!(
            guest_image(&configured, &probe).status,
            CheckStatus::NotNeeded
        );
    }

    #[test]
    fn kvm_needs_decide_the_status() {
        let d = tempfile::tempdir().unwrap();
        let probe = HostProbe {
            dev_kvm: d.path().join("no-kvm"),
            sys: d.path().to_path_buf(),
            ..HostProbe::default()
        };
        assert_eq!(kvm(&probe, KvmNeed::Required).status, CheckStatus::Fail);
        let c = kvm(&probe, KvmNeed::Fallback("slow emulation"));
        assert_eq!(c.status, CheckStatus::Warning);
        assert!(c.detail.contains("slow emulation"));
        assert_eq!(
            kvm(&probe, KvmNeed::NotNeeded("elsewhere")).status,
            CheckStatus::NotNeeded
        );
    }
}
