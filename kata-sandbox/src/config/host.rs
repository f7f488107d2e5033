//! Does this host have what a configuration needs? (What `shim-ctl check` prints.)
//!
//! Each check says whether something is there, whether the active configuration needs it,
//! and how to get it: KVM that can run an ordinary guest (a paravirtual KVM cannot), the
//! TEE a confidential guest asks for, vhost-vsock or the vhost-user backend that replaces it,
//! QEMU, virtiofsd, the guest image, and the paths the configuration names.

use std::fmt;
use std::path::{Path, PathBuf};

use kata_hypervisor::config::{qemu_binary_name, HypervisorType, SharedFs};
use kata_hypervisor::kvm::{find_program, probe_kvm_at, KvmProbe};
use kata_hypervisor::GuestManifest;

use super::LoadedConfig;

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
            cache: kata_hypervisor::config::cache_dir(),
            vhost_user_vsock: std::env::var_os("KATA_RS_VHOST_USER_VSOCK")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            guest_manifest: GuestManifest::default_path(),
        }
    }
}

/// Where Debian and Kata put virtiofsd.
const VIRTIOFSD_PLACES: &[&str] = &[
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/opt/kata/libexec/virtiofsd",
];

fn check(name: &str, status: CheckStatus, detail: impl Into<String>) -> HostCheck {
    HostCheck {
        name: name.to_string(),
        status,
        detail: detail.into(),
    }
}

fn read_flag(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|s| matches!(s.trim(), "1" | "Y" | "y"))
        .unwrap_or(false)
}

/// The TEEs the host offers: `tdx`, `sev`, `sev-snp`, `se`.
fn host_tees(sys: &Path) -> Vec<&'static str> {
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

/// Runs every check for the active configuration of `loaded` against the host `probe`
/// describes. A check with [`CheckStatus::Fail`] means a sandbox cannot start.
pub fn check_host(loaded: &LoadedConfig, probe: &HostProbe) -> Vec<HostCheck> {
    let mut out = Vec::new();
    let (name, kind, hv) = match loaded.config.active_hypervisor() {
        Ok(active) => active,
        Err(issue) => {
            out.push(check(
                "configuration",
                CheckStatus::Fail,
                loaded.error(issue).to_string(),
            ));
            return out;
        }
    };
    out.push(check(
        "configuration",
        CheckStatus::Ok,
        format!("{}: valid; active [hypervisor.{name}]", loaded.source),
    ));
    if kind == HypervisorType::Qemu {
        out.push(check(
            "hypervisor",
            CheckStatus::Ok,
            "QEMU: kata-rs can run it",
        ));
    } else {
        out.push(check(
            "hypervisor",
            CheckStatus::Fail,
            format!(
                "[hypervisor.{name}] is parsed and validated, but kata-rs cannot start a {kind} VM yet; use [hypervisor.qemu] (config/configuration-qemu-runtime-rs.toml)"
            ),
        ));
    }

    // KVM: QEMU falls back to TCG; the built-in VMM and confidential guests cannot.
    let kvm: KvmProbe = probe_kvm_at(&probe.dev_kvm, &probe.sys.join("module"));
    let needs_kvm = kind != HypervisorType::Qemu || hv.confidential_guest;
    out.push(match (kvm.usable, needs_kvm) {
        (true, _) => check("KVM", CheckStatus::Ok, kvm.reason),
        (false, true) if kind != HypervisorType::Remote => check(
            "KVM",
            CheckStatus::Fail,
            format!("not usable for an ordinary guest: {}", kvm.reason),
        ),
        (false, _) if kind == HypervisorType::Remote => check(
            "KVM",
            CheckStatus::NotNeeded,
            format!("the remote hypervisor runs VMs elsewhere ({})", kvm.reason),
        ),
        (false, _) => check(
            "KVM",
            CheckStatus::Warning,
            format!(
                "not usable for an ordinary guest: {}; QEMU falls back to TCG (software emulation, much slower)",
                kvm.reason
            ),
        ),
    });

    if hv.confidential_guest {
        let tees = host_tees(&probe.sys);
        let wanted = if hv.sev_snp_guest {
            vec!["sev-snp"]
        } else if hv.machine_type.starts_with("s390") {
            vec!["se"]
        } else {
            vec!["tdx", "sev", "sev-snp"]
        };
        let have: Vec<_> = tees.iter().filter(|t| wanted.contains(t)).collect();
        out.push(if have.is_empty() {
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
                format!(
                    "host offers {:?} (untested by kata-rs on real hardware)",
                    have
                ),
            )
        });
    }

    // vsock: the kernel's vhost-vsock, or a vhost-user backend in its place.
    let vhost_vsock = probe.dev_vhost_vsock.exists();
    out.push(if vhost_vsock {
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
                "{} does not exist: the agent is reached over hybrid vsock through vhost-device-vsock",
                probe.dev_vhost_vsock.display()
            ),
        )
    });
    if kind == HypervisorType::Qemu {
        let explicit = probe
            .vhost_user_vsock
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let found = find_program("vhost-device-vsock", &explicit, &[probe.cache.join("bin")]);
        out.push(match (found, vhost_vsock) {
            (Some(p), false) => check("vhost-device-vsock", CheckStatus::Ok, p.display().to_string()),
            (Some(p), true) => check(
                "vhost-device-vsock",
                CheckStatus::NotNeeded,
                format!("{} (not needed: /dev/vhost-vsock exists)", p.display()),
            ),
            (None, true) => check(
                "vhost-device-vsock",
                CheckStatus::NotNeeded,
                "not found; not needed while /dev/vhost-vsock exists",
            ),
            (None, false) => check(
                "vhost-device-vsock",
                CheckStatus::Fail,
                format!(
                    "not found on PATH, in {} or $KATA_RS_VHOST_USER_VSOCK, and this host has no /dev/vhost-vsock; run `make setup` (cargo install vhost-device-vsock)",
                    probe.cache.join("bin").display()
                ),
            ),
        });

        let qemu = find_program(qemu_binary_name(), &hv.path, &[]);
        out.push(match qemu {
            Some(p) => check("QEMU", CheckStatus::Ok, p.display().to_string()),
            None if hv.path.is_empty() => check(
                "QEMU",
                CheckStatus::Fail,
                format!(
                    "{} not found on PATH; apt-get install qemu-system-x86, or set `path` in [hypervisor.{name}]",
                    qemu_binary_name()
                ),
            ),
            None => check(
                "QEMU",
                CheckStatus::Fail,
                format!(
                    "`path` = \"{}\" in [hypervisor.{name}] ({}) is not a file",
                    hv.path,
                    loaded
                        .origin(&format!("hypervisor.{name}.path"))
                        .unwrap_or("default")
                ),
            ),
        });
    }

    let fs = hv.shared_fs_kind().unwrap_or(SharedFs::None);
    let needs_virtiofsd = matches!(fs, SharedFs::VirtioFs | SharedFs::VirtioFsNydus)
        && kind != HypervisorType::Remote;
    let virtiofsd = if hv.virtio_fs_daemon.is_empty() {
        find_program("virtiofsd", "", &[probe.cache.join("bin")]).or_else(|| {
            VIRTIOFSD_PLACES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
    } else {
        Some(PathBuf::from(&hv.virtio_fs_daemon)).filter(|p| p.is_file())
    };
    out.push(match (virtiofsd, needs_virtiofsd) {
        (Some(p), true) => check("virtiofsd", CheckStatus::Ok, p.display().to_string()),
        (Some(p), false) => check(
            "virtiofsd",
            CheckStatus::NotNeeded,
            format!("{} (not needed: shared_fs = \"{}\")", p.display(), hv.shared_fs),
        ),
        (None, false) => check(
            "virtiofsd",
            CheckStatus::NotNeeded,
            format!("not found; not needed: shared_fs = \"{}\"", hv.shared_fs),
        ),
        (None, true) => check(
            "virtiofsd",
            CheckStatus::Fail,
            format!(
                "shared_fs = \"{}\" needs virtiofsd{}; Debian's qemu-system-common ships /usr/lib/qemu/virtiofsd, crates.io has `virtiofsd`",
                hv.shared_fs,
                if hv.virtio_fs_daemon.is_empty() {
                    String::new()
                } else {
                    format!(" (virtio_fs_daemon = \"{}\" is not a file)", hv.virtio_fs_daemon)
                }
            ),
        ),
    });

    // The guest image: the manifest `make guest` writes, unless the files are configured. An
    // IBM SE secure image (`kernel`) holds the initramfs too.
    let secure_image = hv.confidential_guest && hv.machine_type.starts_with("s390");
    let needs_manifest = kind != HypervisorType::Remote
        && (hv.kernel.is_empty() || (hv.initrd.is_empty() && hv.image.is_empty() && !secure_image));
    if needs_manifest {
        out.push(match GuestManifest::load(&probe.guest_manifest) {
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
                            "{} names files that do not exist: {}; run `make guest`",
                            probe.guest_manifest.display(),
                            missing.join(", ")
                        ),
                    )
                }
            }
            Err(e) => check("guest image", CheckStatus::Fail, e.to_string()),
        });
    } else {
        out.push(check(
            "guest image",
            CheckStatus::NotNeeded,
            "kernel and initrd/image are configured (checked below)",
        ));
    }

    // The QEMU check above already covers `path`.
    let problems: Vec<_> = loaded
        .config
        .check_host_paths()
        .into_iter()
        .filter(|(issue, _)| !(kind == HypervisorType::Qemu && issue.key == "path"))
        .map(|(issue, _)| loaded.error(issue))
        .collect();
    if problems.is_empty() {
        out.push(check(
            "configured paths",
            CheckStatus::Ok,
            "every path the configuration names exists",
        ));
    }
    for p in problems {
        out.push(check("configured paths", CheckStatus::Fail, p.to_string()));
    }
    out
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
}
