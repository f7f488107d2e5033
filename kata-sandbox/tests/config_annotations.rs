//! Pod annotations `io.katacontainers.config.*`: the allow-list, path checks, value parsing,
//! and errors that name the annotation.

use std::path::{Path, PathBuf};

use kata_sandbox::config::{ConfigLoader, LoadedConfig};

const HV: &str = "io.katacontainers.config.hypervisor.";

fn config(dir: &Path, hypervisor_extra: &str) -> PathBuf {
    let path = dir.join("configuration.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
shared_fs = "virtio-9p"
default_memory = 512
kernel_params = "quiet"
virtio_fs_extra_args = ["--one"]
valid_hypervisor_paths = ["/usr/bin/qemu-system-*", "/opt/kata/bin/qemu-*"]
valid_virtio_fs_daemon_paths = ["/usr/lib/qemu/virtiofsd"]
{hypervisor_extra}

[hypervisor.dragonball]
enable_annotations = ["default_vcpus"]

[agent.kata]
kernel_modules = ["e1000e"]

[runtime]
hypervisor_name = "qemu"
experimental = ["a"]
"#
        ),
    )
    .unwrap();
    path
}

fn load(path: &Path, annotations: &[(&str, &str)]) -> Result<LoadedConfig, String> {
    ConfigLoader::new()
        .env_file(None)
        .path(path)
        .annotations(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .load()
        .map_err(|e| e.to_string())
}

fn key(suffix: &str) -> String {
    format!("{HV}{suffix}")
}

#[test]
fn only_keys_in_enable_annotations_are_applied() {
    let d = tempfile::tempdir().unwrap();
    let path = config(
        d.path(),
        r#"enable_annotations = ["default_memory", "kernel_params"]"#,
    );
    let loaded = load(
        &path,
        &[
            (&key("default_memory"), "1Gi"),
            (&key("kernel_params"), "debug"),
            (&key("default_max_vcpus"), "1"),
            ("io.kubernetes.cri.sandbox-id", "not ours"),
        ],
    )
    .unwrap();
    let hv = &loaded.config.hypervisor["qemu"];
    assert_eq!(hv.default_memory, 1024);
    assert_eq!(hv.kernel_params, "debug");
    assert_ne!(hv.default_maxvcpus, 1, "default_max_vcpus is not allowed");
    assert_eq!(
        loaded.annotations_applied,
        [key("default_memory"), key("kernel_params")]
    );
    assert_eq!(loaded.annotations_ignored.len(), 1);
    assert_eq!(loaded.annotations_ignored[0].key, key("default_max_vcpus"));
    assert!(loaded.annotations_ignored[0]
        .reason
        .contains("enable_annotations"));
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.contains("default_max_vcpus")));
    assert_eq!(
        loaded.origin("hypervisor.qemu.default_memory"),
        Some(
            key("default_memory")
                .replace(HV, &format!("annotation {HV}"))
                .as_str()
        )
    );
    // Without annotations the file's values stand.
    let plain = load(&path, &[]).unwrap();
    assert_eq!(plain.config.hypervisor["qemu"].default_memory, 512);
}

#[test]
fn allow_list_entries_are_whole_key_regular_expressions() {
    let d = tempfile::tempdir().unwrap();
    let path = config(d.path(), r#"enable_annotations = ["default_.*", "path"]"#);
    let loaded = load(
        &path,
        &[
            (&key("default_memory"), "768"),
            (&key("default_vcpus"), "1"),
            (&key("jailer_path"), "/usr/bin/jailer"),
        ],
    )
    .unwrap();
    assert_eq!(loaded.config.hypervisor["qemu"].default_memory, 768);
    assert!(loaded
        .annotations_ignored
        .iter()
        .any(|i| i.key == key("jailer_path")));
}

#[test]
fn path_annotations_must_match_their_valid_paths() {
    let d = tempfile::tempdir().unwrap();
    let path = config(
        d.path(),
        r#"enable_annotations = ["path", "virtio_fs_daemon", "entropy_source"]"#,
    );
    let loaded = load(&path, &[(&key("path"), "/opt/kata/bin/qemu-system-x86_64")]).unwrap();
    assert_eq!(
        loaded.config.hypervisor["qemu"].path,
        "/opt/kata/bin/qemu-system-x86_64"
    );

    let e = load(&path, &[(&key("path"), "/tmp/evil-qemu")]).unwrap_err();
    assert!(
        e.contains("configuration.toml")
            && e.contains(&key("path"))
            && e.contains("/tmp/evil-qemu")
            && e.contains("valid_hypervisor_paths"),
        "{e}"
    );
    let e = load(&path, &[(&key("virtio_fs_daemon"), "/tmp/virtiofsd")]).unwrap_err();
    assert!(e.contains("valid_virtio_fs_daemon_paths"), "{e}");
    let e = load(&path, &[(&key("entropy_source"), "/dev/random")]).unwrap_err();
    assert!(
        e.contains("valid_entropy_sources is empty") && e.contains("entropy_source"),
        "{e}"
    );
}

/// `*` does not cross `/` and `..` never matches: Kata's matcher admitted both (issue 9 row 11).
#[test]
fn path_annotations_cannot_climb_out_of_their_valid_paths() {
    let d = tempfile::tempdir().unwrap();
    let path = config(d.path(), r#"enable_annotations = ["path"]"#);
    for evil in [
        "/usr/bin/qemu-system-x/../../../tmp/q",
        "/usr/bin/qemu-system-x/evil",
        "/opt/kata/bin/qemu-a/b",
    ] {
        let e = load(&path, &[(&key("path"), evil)]).unwrap_err();
        assert!(
            e.contains(evil) && e.contains("valid_hypervisor_paths"),
            "{e}"
        );
    }
    let loaded = load(&path, &[(&key("path"), "/usr/bin//qemu-system-aarch64")]).unwrap();
    assert_eq!(
        loaded.config.hypervisor["qemu"].path,
        "/usr/bin//qemu-system-aarch64"
    );
}

#[test]
fn boot_file_annotations_must_exist() {
    let d = tempfile::tempdir().unwrap();
    let path = config(d.path(), r#"enable_annotations = ["kernel", "initrd"]"#);
    let kernel = d.path().join("vmlinux");
    std::fs::write(&kernel, b"").unwrap();
    let loaded = load(&path, &[(&key("kernel"), kernel.to_str().unwrap())]).unwrap();
    assert_eq!(
        loaded.config.hypervisor["qemu"].kernel,
        kernel.display().to_string()
    );
    let e = load(&path, &[(&key("initrd"), "/nonexistent/initrd.img")]).unwrap_err();
    assert!(
        e.contains(&key("initrd")) && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn bad_values_and_values_that_break_validation_name_the_annotation() {
    let d = tempfile::tempdir().unwrap();
    let path = config(
        d.path(),
        r#"enable_annotations = ["enable_iommu", "default_memory", "cold_plug_vfio", "msize_9p"]"#,
    );
    let e = load(&path, &[(&key("enable_iommu"), "yes")]).unwrap_err();
    assert!(
        e.contains(&key("enable_iommu")) && e.contains("\"yes\"") && e.contains("true or false"),
        "{e}"
    );
    let e = load(&path, &[(&key("cold_plug_vfio"), "rootport")]).unwrap_err();
    assert!(e.contains("rootport") && e.contains("root-port"), "{e}");
    let e = load(&path, &[(&key("default_memory"), "32")]).unwrap_err();
    assert!(
        e.contains(&format!("annotation {}", key("default_memory")))
            && e.contains("default_memory = 32")
            && e.contains("at least 64"),
        "{e}"
    );
    let e = load(&path, &[(&key("msize_9p"), "100")]).unwrap_err();
    assert!(e.contains(&key("msize_9p")) && e.contains("4096"), "{e}");
}

#[test]
fn agent_and_runtime_annotations_follow_katas_fixed_list() {
    let d = tempfile::tempdir().unwrap();
    let path = config(d.path(), "");
    let loaded = load(
        &path,
        &[
            (
                "io.katacontainers.config.agent.kernel_modules",
                "i915 enable_ppgtt=0; virtio_net",
            ),
            (
                "io.katacontainers.config.agent.container_pipe_size",
                "65536",
            ),
            ("io.katacontainers.config.runtime.experimental", "b,c"),
            (
                "io.katacontainers.config.runtime.disable_guest_seccomp",
                "true",
            ),
            ("io.katacontainers.config.runtime.name", "linux-container"),
            ("io.katacontainers.config.runtime.shim_debug", "true"),
            ("io.katacontainers.config.image.service_offload", "true"),
        ],
    )
    .unwrap();
    let agent = &loaded.config.agent["kata"];
    assert_eq!(
        agent.kernel_modules,
        ["e1000e", "i915 enable_ppgtt=0", "virtio_net"]
    );
    assert_eq!(agent.container_pipe_size, 65536);
    let rt = &loaded.config.runtime;
    assert_eq!(rt.experimental, ["a", "b", "c"]);
    assert!(rt.disable_guest_seccomp, "kata-rs's default is false");
    assert_eq!(rt.name, "linux_container");
    let ignored: Vec<&str> = loaded
        .annotations_ignored
        .iter()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(
        ignored,
        [
            "io.katacontainers.config.image.service_offload",
            "io.katacontainers.config.runtime.shim_debug"
        ]
    );

    let e = load(
        &path,
        &[(
            "io.katacontainers.config.runtime.internetworking_model",
            "bridged",
        )],
    )
    .unwrap_err();
    assert!(
        e.contains("internetworking_model") && e.contains("bridged") && e.contains("tcfilter"),
        "{e}"
    );
}

#[test]
fn hypervisor_name_annotation_switches_table_and_allow_list() {
    let d = tempfile::tempdir().unwrap();
    let path = config(d.path(), r#"enable_annotations = ["default_memory"]"#);
    let loaded = load(
        &path,
        &[
            (
                "io.katacontainers.config.runtime.hypervisor_name",
                "dragonball",
            ),
            (&key("default_memory"), "1024"),
            (&key("default_vcpus"), "1"),
        ],
    )
    .unwrap();
    let (name, _, hv) = loaded.config.active_hypervisor().unwrap();
    assert_eq!(name, "dragonball");
    assert_eq!(hv.default_vcpus, 1);
    assert_eq!(
        hv.default_memory, 2048,
        "dragonball does not allow default_memory"
    );
    let loaded = load(
        &path,
        &[("io.katacontainers.config.runtime.hypervisor_name", "clh")],
    )
    .unwrap();
    assert_eq!(loaded.config.runtime.hypervisor_name, "qemu");
    assert!(loaded.annotations_ignored[0]
        .reason
        .contains("no [hypervisor.clh]"));
}
