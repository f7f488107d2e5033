//! Every file in `config/` loads, validates, documents each key, and says what it is for.

use std::path::{Path, PathBuf};

use kata_sandbox::config::{ConfigLoader, HypervisorType, KataConfig, LoadedConfig};
use kata_sandbox::SandboxBuilder;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn config_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> LoadedConfig {
    ConfigLoader::new()
        .env_file(None)
        .path(path)
        .load()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn file(variant: &str) -> PathBuf {
    config_dir().join(format!("configuration-{variant}.toml"))
}

#[test]
fn every_variant_is_there() {
    let names: Vec<String> = config_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for variant in [
        "dragonball",
        "qemu-runtime-rs",
        "clh-runtime-rs",
        "rs-fc",
        "remote",
        "qemu-tdx-runtime-rs",
        "qemu-snp-runtime-rs",
        "qemu-se-runtime-rs",
        "qemu-coco-dev-runtime-rs",
    ] {
        let name = format!("configuration-{variant}.toml");
        assert!(names.contains(&name), "config/{name} is missing");
    }
}

#[test]
fn every_file_loads_and_validates_without_warnings() {
    let files = config_files();
    assert!(files.len() >= 9);
    for path in files {
        let loaded = load(&path);
        loaded
            .config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            loaded.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            loaded.warnings
        );
        assert!(loaded.drop_ins.is_empty());
        // The rendered effective configuration is itself a valid file.
        let again = KataConfig::parse(&loaded.config.to_toml())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut again = again;
        again.adjust();
        assert_eq!(again, loaded.config, "{}", path.display());
    }
}

#[test]
fn every_key_has_a_comment_with_its_default() {
    for path in config_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut keys = 0;
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with('[') {
                continue;
            }
            keys += 1;
            let key = l.split('=').next().unwrap().trim();
            let mut comment = Vec::new();
            let mut j = i;
            while j > 0 && lines[j - 1].trim_start().starts_with('#') {
                comment.push(lines[j - 1]);
                j -= 1;
            }
            assert!(
                !comment.is_empty(),
                "{}:{}: `{key}` has no comment",
                path.display(),
                i + 1
            );
            comment.reverse();
            let joined = comment.join(" ");
            assert!(
                joined.contains('[') && joined.trim_end().ends_with(']'),
                "{}:{}: the comment of `{key}` does not end with its default in brackets",
                path.display(),
                i + 1
            );
        }
        assert!(keys > 10, "{}: only {keys} keys", path.display());
    }
}

#[test]
fn each_file_selects_its_vmm_and_features() {
    let active = |variant: &str| {
        let loaded = load(&file(variant));
        let (name, kind, hv) = loaded.config.active_hypervisor().unwrap();
        (name.to_string(), kind, hv.clone(), loaded.config.clone())
    };

    let (name, kind, hv, c) = active("qemu-runtime-rs");
    assert_eq!((name.as_str(), kind), ("qemu", HypervisorType::Qemu));
    assert_eq!(hv.path, "/usr/bin/qemu-system-x86_64");
    assert_eq!(hv.shared_fs.as_str(), "virtio-fs");
    assert!(
        hv.kernel.is_empty() && hv.initrd.is_empty(),
        "guest manifest"
    );
    assert!(!c.runtime.static_sandbox_resource_mgmt);

    let (_, kind, hv, _) = active("dragonball");
    assert_eq!(kind, HypervisorType::Dragonball);
    assert_eq!(hv.shared_fs.as_str(), "inline-virtio-fs");
    assert_eq!(hv.block_device_driver.as_str(), "virtio-blk-mmio");

    let (name, kind, hv, _) = active("clh-runtime-rs");
    assert_eq!(
        (name.as_str(), kind),
        ("clh", HypervisorType::CloudHypervisor)
    );
    assert_eq!(hv.shared_fs.as_str(), "virtio-fs");

    let (_, kind, hv, _) = active("rs-fc");
    assert_eq!(kind, HypervisorType::Firecracker);
    assert_eq!(hv.shared_fs.as_str(), "none");
    assert_eq!(hv.jailer_path, "/usr/bin/jailer");

    let (_, kind, hv, c) = active("remote");
    assert_eq!(kind, HypervisorType::Remote);
    assert_eq!(hv.remote_hypervisor_socket, "/run/peerpod/hypervisor.sock");
    assert_eq!(hv.remote_hypervisor_timeout, 600);
    assert_eq!(c.runtime.internetworking_model, "none");

    let (_, _, hv, c) = active("qemu-tdx-runtime-rs");
    assert!(hv.confidential_guest && !hv.sev_snp_guest);
    assert_eq!(hv.tdx_quote_generation_service_socket_port, 4050);
    assert_eq!(hv.shared_fs.as_str(), "none");
    assert!(c.runtime.static_sandbox_resource_mgmt);

    let (_, _, hv, c) = active("qemu-snp-runtime-rs");
    assert!(hv.confidential_guest && hv.sev_snp_guest);
    assert_eq!(hv.snp_guest_policy, 0x30000);
    // The TEE files share nothing with the host, as upstream's (a guest pulls its images).
    assert_eq!(hv.shared_fs.as_str(), "none");
    assert!(c.runtime.static_sandbox_resource_mgmt);

    let (_, _, hv, c) = active("qemu-se-runtime-rs");
    assert!(hv.confidential_guest);
    assert_eq!(hv.machine_type, "s390-ccw-virtio");
    assert_eq!(hv.vm_rootfs_driver.as_str(), "virtio-blk-ccw");
    assert_eq!(hv.path, "/usr/bin/qemu-system-s390x");
    assert_eq!(hv.shared_fs.as_str(), "none");
    // As upstream's: cold-plug (an AP device on the command line), VFIO in the guest.
    assert_eq!(hv.cold_plug_vfio.to_string(), "root-port");
    assert_eq!(c.runtime.vfio_mode, "vfio");

    let (_, _, hv, c) = active("qemu-coco-dev-runtime-rs");
    assert!(!hv.confidential_guest);
    assert_eq!(hv.shared_fs.as_str(), "none");
    assert!(c.runtime.static_sandbox_resource_mgmt);
}

#[test]
fn the_readme_says_the_tee_files_are_untested_on_hardware() {
    let readme = std::fs::read_to_string(config_dir().join("README.md")).unwrap();
    assert!(readme.to_lowercase().contains("untested on real hardware"));
    for variant in [
        "qemu-tdx-runtime-rs",
        "qemu-snp-runtime-rs",
        "qemu-se-runtime-rs",
    ] {
        let text = std::fs::read_to_string(file(variant)).unwrap();
        assert!(text.contains("UNTESTED ON REAL HARDWARE"), "{variant}");
        assert!(readme.contains(&format!("configuration-{variant}.toml")));
    }
}

#[test]
fn a_builder_comes_from_the_qemu_file_and_not_from_the_others() {
    let qemu = file("qemu-runtime-rs");
    if Path::new("/usr/bin/qemu-system-x86_64").exists() {
        let b = SandboxBuilder::from_config_file(&qemu).unwrap();
        assert_eq!(b.config().shared_fs.as_str(), "virtio-fs");
        assert_eq!(b.config().default_memory, 2048);
    }
    let dragonball = SandboxBuilder::from_config_file(file("dragonball"));
    // With kata-hypervisor's `builtin` feature (unified in from any crate) the file loads.
    let builtin = kata_hypervisor::backend::capabilities(
        kata_hypervisor::HypervisorType::Dragonball,
        &kata_hypervisor::HypervisorConfig::default(),
    )
    .is_ok();
    if builtin {
        let b = dragonball.unwrap();
        assert_eq!(b.config().shared_fs.as_str(), "inline-virtio-fs");
        return;
    }
    let e = dragonball.unwrap_err().to_string();
    assert!(
        e.contains("configuration-dragonball.toml") && e.contains("cannot start a dragonball VM"),
        "{e}"
    );
}
