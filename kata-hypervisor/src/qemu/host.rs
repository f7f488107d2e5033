//! What the QEMU backend needs of the host: KVM or TCG, vhost-vsock or vhost-device-vsock in
//! its place, the QEMU binary, virtiofsd when the share needs it, the guest image.

use crate::backend::host::{self, check, CheckStatus, HostCheck, HostProbe, KvmNeed};
use crate::config::{qemu_binary_name, HypervisorConfig, HypervisorType};
use crate::kvm::find_program;

/// The QEMU backend's host checks, in the order they are shown.
pub(crate) fn host_checks(config: &HypervisorConfig, probe: &HostProbe) -> Vec<HostCheck> {
    let mut out = vec![check(
        "hypervisor",
        CheckStatus::Ok,
        "QEMU: kata-rs can run it",
    )];
    // Settings the backend refuses: a sandbox cannot start with them.
    for refused in config.refused_settings(HypervisorType::Qemu) {
        out.push(check("setting", CheckStatus::Fail, refused.to_string()));
    }
    out.push(match config.qemu_sandbox() {
        Ok(Some(args)) => check(
            "QEMU sandbox",
            CheckStatus::Ok,
            format!("QEMU runs with -sandbox {args} (seccomp_sandbox)"),
        ),
        Ok(None) => check(
            "QEMU sandbox",
            CheckStatus::Warning,
            "seccomp_sandbox = \"off\": QEMU runs as root without a syscall filter",
        ),
        Err(e) => check("QEMU sandbox", CheckStatus::Fail, e.to_string()),
    });
    if config.rootless {
        out.push(
            match super::rootless::UidRange::parse(&config.rootless_uid_range) {
                Ok(r) => check(
                    "rootless",
                    CheckStatus::Ok,
                    format!(
                        "QEMU runs as one of {} uids of rootless_uid_range ({}-{}), without \
                     capabilities, in its own mount namespace",
                        r.len(),
                        r.first,
                        r.last
                    ),
                ),
                Err(e) => check("rootless", CheckStatus::Fail, e.to_string()),
            },
        );
    }
    // A confidential guest needs KVM; an ordinary one falls back to TCG.
    out.push(host::kvm(
        probe,
        if config.confidential_guest {
            KvmNeed::Required
        } else {
            KvmNeed::Fallback("QEMU falls back to TCG (software emulation, much slower)")
        },
    ));
    out.extend(host::tee(config, probe));
    out.push(host::vhost_vsock(probe, "vhost-device-vsock"));

    let vhost_vsock = probe.dev_vhost_vsock.exists();
    let explicit = probe
        .vhost_user_vsock
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let found = find_program("vhost-device-vsock", &explicit, &[probe.cache.join("bin")]);
    out.push(match (found, vhost_vsock) {
        (Some(p), false) => check(
            "vhost-device-vsock",
            CheckStatus::Ok,
            p.display().to_string(),
        ),
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

    let qemu = find_program(qemu_binary_name(), &config.path, &[]);
    let mut binary = match qemu {
        Some(p) => check("QEMU", CheckStatus::Ok, p.display().to_string()),
        None if config.path.is_empty() => check(
            "QEMU",
            CheckStatus::Fail,
            format!(
                "{} not found on PATH; apt-get install qemu-system-x86, or set `path` in [hypervisor.qemu]",
                qemu_binary_name()
            ),
        ),
        None => check(
            "QEMU",
            CheckStatus::Fail,
            format!(
                "`path` = \"{}\" in [hypervisor.qemu] is not a file",
                config.path
            ),
        ),
    };
    binary.key = Some("path");
    out.push(binary);
    out.push(
        match super::capabilities().check_shared_fs(config.shared_fs) {
            Ok(()) => check(
                "shared filesystem",
                CheckStatus::Ok,
                format!("shared_fs = \"{}\"", config.shared_fs),
            ),
            Err(e) => check("shared filesystem", CheckStatus::Fail, e.to_string()),
        },
    );
    out.push(host::virtiofsd(config, probe, true));
    out.push(host::guest_image(config, probe));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_qemu_binary_fails_and_covers_the_path_key() {
        let config = HypervisorConfig {
            path: "/nonexistent/qemu-system-x86_64".into(),
            ..Default::default()
        };
        let checks = host_checks(&config, &HostProbe::default());
        let qemu = checks.iter().find(|c| c.name == "QEMU").unwrap();
        assert_eq!(qemu.status, CheckStatus::Fail);
        assert_eq!(qemu.key, Some("path"));
        assert!(qemu.detail.contains("/nonexistent/qemu-system-x86_64"));
        assert_eq!(checks[0].name, "hypervisor");
        let fs = checks
            .iter()
            .find(|c| c.name == "shared filesystem")
            .unwrap();
        assert_eq!(fs.status, CheckStatus::Ok, "virtio-9p by default");
    }

    #[test]
    fn refused_settings_fail_and_the_sandbox_is_reported() {
        let config = HypervisorConfig {
            rootless: true,
            shared_fs: crate::SharedFs::Virtio9p,
            guest_hook_path: "/hooks".into(),
            ..Default::default()
        };
        let checks = host_checks(&config, &HostProbe::default());
        let refused: Vec<&HostCheck> = checks.iter().filter(|c| c.name == "setting").collect();
        assert_eq!(refused.len(), 2, "{checks:?}");
        assert!(refused.iter().all(|c| c.status == CheckStatus::Fail));
        assert!(refused[0].detail.contains("guest_hook_path"), "{refused:?}");
        assert!(refused[1].detail.contains("rootless"), "{refused:?}");
        let sandbox = checks.iter().find(|c| c.name == "QEMU sandbox").unwrap();
        assert_eq!(sandbox.status, CheckStatus::Ok);
        assert!(sandbox.detail.contains("spawn=deny"), "{sandbox:?}");

        let off = HypervisorConfig {
            seccomp_sandbox: "off".into(),
            ..Default::default()
        };
        let checks = host_checks(&off, &HostProbe::default());
        let sandbox = checks.iter().find(|c| c.name == "QEMU sandbox").unwrap();
        assert_eq!(sandbox.status, CheckStatus::Warning);
        assert!(!checks.iter().any(|c| c.name == "setting"));
    }

    #[test]
    fn a_rootless_range_is_reported_and_a_bad_one_fails_naming_the_key() {
        let good = HypervisorConfig {
            rootless: true,
            ..Default::default()
        };
        let checks = host_checks(&good, &HostProbe::default());
        let r = checks.iter().find(|c| c.name == "rootless").unwrap();
        assert_eq!(r.status, CheckStatus::Ok, "{r:?}");
        assert!(r.detail.contains("65536 uids"), "{r:?}");
        let bad = HypervisorConfig {
            rootless: true,
            rootless_uid_range: "10-5".into(),
            ..Default::default()
        };
        let checks = host_checks(&bad, &HostProbe::default());
        let r = checks.iter().find(|c| c.name == "rootless").unwrap();
        assert_eq!(r.status, CheckStatus::Fail);
        assert!(r.detail.contains("rootless_uid_range"), "{r:?}");
        assert!(
            !host_checks(&HypervisorConfig::default(), &HostProbe::default())
                .iter()
                .any(|c| c.name == "rootless")
        );
    }

    #[test]
    fn virtio_fs_is_served_and_nydus_is_not() {
        let config = HypervisorConfig {
            shared_fs: crate::SharedFs::VirtioFs,
            ..Default::default()
        };
        let checks = host_checks(&config, &HostProbe::default());
        let fs = checks
            .iter()
            .find(|c| c.name == "shared filesystem")
            .unwrap();
        assert_eq!(fs.status, CheckStatus::Ok, "{}", fs.detail);
        let nydus = HypervisorConfig {
            shared_fs: crate::SharedFs::VirtioFsNydus,
            ..Default::default()
        };
        let checks = host_checks(&nydus, &HostProbe::default());
        let fs = checks
            .iter()
            .find(|c| c.name == "shared filesystem")
            .unwrap();
        assert_eq!(fs.status, CheckStatus::Fail);
        assert!(fs.detail.contains("virtio-fs"), "{}", fs.detail);
    }
}
