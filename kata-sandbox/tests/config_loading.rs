//! Loading as Kata does: search order, drop-ins, validation errors that name the file, the key,
//! the value and what is allowed, and each kind of bad input.

use std::path::{Path, PathBuf};

use kata_sandbox::config::{ConfigLoader, SourceKind, DEFAULT_SEARCH_PATHS};
use kata_sandbox::{Error, SandboxBuilder};

/// A minimal valid file.
const BASE: &str = r#"
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
shared_fs = "virtio-9p"
default_memory = 512
kernel_params = "base"
virtio_fs_extra_args = ["--a", "--b"]

[agent.kata]
reconnect_timeout_ms = 45000

[runtime]
internetworking_model = "tcfilter"
"#;

fn write(path: &Path, text: impl AsRef<[u8]>) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn loader() -> ConfigLoader {
    ConfigLoader::new()
        .env_file(None)
        .search_paths(vec![PathBuf::from("/nonexistent/kata-rs-test.toml")])
}

fn load_err(path: &Path) -> String {
    let e = loader().path(path).load().unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    e.to_string()
}

// --- which file -------------------------------------------------------------------------------

#[test]
fn search_order_is_explicit_then_env_then_default_paths() {
    let root = tempfile::tempdir().unwrap();
    // Two of the four default paths exist; the earlier one in Kata's order wins.
    let second = write(
        &root
            .path()
            .join(DEFAULT_SEARCH_PATHS[1].trim_start_matches('/')),
        BASE,
    );
    let fourth = write(
        &root
            .path()
            .join(DEFAULT_SEARCH_PATHS[3].trim_start_matches('/')),
        BASE,
    );
    let l = ConfigLoader::new().env_file(None).search_root(root.path());
    let s = l.resolve().unwrap();
    assert_eq!(
        (s.path.as_path(), s.kind),
        (second.as_path(), SourceKind::SearchPath)
    );
    std::fs::remove_file(&second).unwrap();
    assert_eq!(l.resolve().unwrap().path, fourth);

    let env = write(&root.path().join("env.toml"), BASE);
    let l = l.env_file(Some(env.clone()));
    let s = l.resolve().unwrap();
    assert_eq!(
        (s.path.as_path(), s.kind),
        (env.as_path(), SourceKind::Environment)
    );

    let explicit = write(&root.path().join("explicit.toml"), BASE);
    let l = l.path(&explicit);
    let s = l.resolve().unwrap();
    assert_eq!(
        (s.path.as_path(), s.kind),
        (explicit.as_path(), SourceKind::Explicit)
    );
    // containerd passes an empty config_path when none is set: that is "no explicit path".
    assert_eq!(l.path("").resolve().unwrap().path, env);
}

#[test]
fn missing_files_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let e = ConfigLoader::new()
        .env_file(None)
        .search_root(root.path())
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("KATA_CONF_FILE") && e.contains("runtime-rs/configuration.toml"),
        "{e}"
    );
    let e = ConfigLoader::new()
        .env_file(Some(root.path().join("gone.toml")))
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gone.toml") && e.contains("KATA_CONF_FILE"),
        "{e}"
    );
    let e = load_err(&root.path().join("explicit-gone.toml"));
    assert!(
        e.contains("explicit-gone.toml") && e.contains("cannot read"),
        "{e}"
    );
}

// --- drop-ins ---------------------------------------------------------------------------------

#[test]
fn drop_ins_merge_in_lexical_order() {
    let d = tempfile::tempdir().unwrap();
    let base = write(&d.path().join("configuration.toml"), BASE);
    let dir = d.path().join("config.d");
    let b = write(
        &dir.join("20-b.toml"),
        "[hypervisor.qemu]\ndefault_memory = 2048\nvirtio_fs_extra_args = [\"--c\"]\n",
    );
    let a = write(
        &dir.join("10-a.toml"),
        "[hypervisor.qemu]\ndefault_memory = 1024\nkernel_params = \"from-a\"\n[runtime]\nsandbox_cgroup_only = true\n",
    );
    write(
        &dir.join("30-not-toml.conf"),
        "[hypervisor.qemu]\ndefault_memory = 1\n",
    );
    write(
        &dir.join(".40-hidden.toml"),
        "[hypervisor.qemu]\ndefault_memory = 1\n",
    );

    let loaded = loader().path(&base).load().unwrap();
    let hv = &loaded.config.hypervisor["qemu"];
    assert_eq!(loaded.drop_ins, [a.clone(), b.clone()]);
    assert_eq!(hv.default_memory, 2048, "20-b wins over 10-a");
    assert_eq!(hv.kernel_params, "from-a", "tables merge key by key");
    assert_eq!(hv.virtio_fs_extra_args, ["--c"], "arrays are replaced");
    assert_eq!(hv.path, "/usr/bin/qemu-system-x86_64", "base keys stay");
    assert!(loaded.config.runtime.sandbox_cgroup_only);
    assert_eq!(
        loaded.origin("hypervisor.qemu.default_memory"),
        Some(b.display().to_string().as_str())
    );
    assert_eq!(
        loaded.origin("hypervisor.qemu.kernel_params"),
        Some(a.display().to_string().as_str())
    );
    assert_eq!(
        loaded.origin("hypervisor.qemu.path"),
        Some(base.display().to_string().as_str())
    );
    assert_eq!(loaded.origin("hypervisor.qemu.msize_9p"), None, "a default");
}

#[test]
fn drop_ins_are_found_next_to_the_symlink_target_as_in_kata() {
    let d = tempfile::tempdir().unwrap();
    let real = write(&d.path().join("share/configuration-qemu.toml"), BASE);
    write(
        &d.path().join("share/config.d/10.toml"),
        "[hypervisor.qemu]\ndefault_memory = 768\n",
    );
    std::fs::create_dir_all(d.path().join("etc")).unwrap();
    let link = d.path().join("etc/configuration.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let loaded = loader().path(&link).load().unwrap();
    assert_eq!(loaded.config.hypervisor["qemu"].default_memory, 768);
    assert_eq!(loaded.source.path, link);
}

#[test]
fn a_drop_in_that_breaks_the_merged_result_is_named() {
    let d = tempfile::tempdir().unwrap();
    let base = write(&d.path().join("configuration.toml"), BASE);
    let dir = d.path().join("config.d");
    write(
        &dir.join("10-fine.toml"),
        "[hypervisor.qemu]\ndefault_memory = 4096\n",
    );
    write(
        &dir.join("20-bad.toml"),
        "[hypervisor.qemu]\ndefault_maxmemory = 1024\n",
    );
    let e = load_err(&base);
    assert!(e.contains("20-bad.toml"), "{e}");
    assert!(
        e.contains("default_memory") && e.contains("4096") && e.contains("1024"),
        "{e}"
    );
    assert!(
        e.contains("10-fine.toml"),
        "names where the other key is set: {e}"
    );

    // A drop-in can also fix a base that is invalid alone.
    std::fs::remove_file(dir.join("20-bad.toml")).unwrap();
    let base = write(
        &d.path().join("configuration.toml"),
        BASE.replace("default_memory = 512", "default_memory = 32"),
    );
    assert_eq!(
        loader().path(&base).load().unwrap().config.hypervisor["qemu"].default_memory,
        4096
    );
}

#[test]
fn bad_drop_ins_are_named() {
    let cases: &[(&str, &[u8], &[&str])] = &[
        (
            "syntax.toml",
            b"[hypervisor.qemu\n",
            &["syntax.toml", "line 1"],
        ),
        (
            "type.toml",
            b"[hypervisor.qemu]\n\ndefault_memory = \"lots\"\n",
            &["type.toml", "line 3", "default_memory", "lots"],
        ),
        (
            "section.toml",
            b"[hypervisor.vmware]\n",
            &["section.toml", "vmware", "qemu"],
        ),
        (
            "binary.toml",
            b"[runtime]\nname = \"\xff\"\n",
            &["binary.toml", "UTF-8"],
        ),
        (
            "shape.toml",
            b"hypervisor = 3\n",
            &["shape.toml", "hypervisor"],
        ),
    ];
    for (name, text, needles) in cases {
        let d = tempfile::tempdir().unwrap();
        let base = write(&d.path().join("configuration.toml"), BASE);
        write(&d.path().join("config.d").join(name), text);
        let e = load_err(&base);
        for n in *needles {
            assert!(e.contains(n), "{name}: `{n}` missing from: {e}");
        }
    }
    let d = tempfile::tempdir().unwrap();
    let base = write(&d.path().join("configuration.toml"), BASE);
    std::fs::create_dir_all(d.path().join("config.d/dir.toml")).unwrap();
    let e = load_err(&base);
    assert!(e.contains("dir.toml") && e.contains("regular file"), "{e}");
}

// --- bad base files ---------------------------------------------------------------------------

#[test]
fn each_kind_of_bad_input_gives_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let case = |name: &str, text: &[u8]| load_err(&write(&d.path().join(name), text));

    let e = case("syntax.toml", b"[hypervisor.qemu]\ndefault_vcpus = = 2\n");
    assert!(
        e.contains("syntax.toml") && e.contains("line 2, column"),
        "{e}"
    );
    let e = case("type.toml", b"[hypervisor.qemu]\ndefault_vcpus = \"two\"\n");
    assert!(e.contains("line 2") && e.contains("default_vcpus"), "{e}");
    let e = case("latin1.toml", b"# caf\xe9\n[hypervisor.qemu]\n");
    assert!(
        e.contains("latin1.toml") && e.contains("not UTF-8") && e.contains("line 1"),
        "{e}"
    );
    let e = case("empty.toml", b"");
    assert!(e.contains("empty.toml") && e.contains("empty"), "{e}");
    let e = case("comments.toml", b"# nothing here\n\n");
    assert!(e.contains("empty"), "{e}");
    let e = case("unknown.toml", b"[hypervisor.bhyve]\npath = \"/x\"\n");
    assert!(
        e.contains("hypervisor.bhyve") && e.contains("dragonball, qemu, clh"),
        "{e}"
    );
    let e = case("agent.toml", b"[hypervisor.qemu]\n[agent.other]\n");
    assert!(e.contains("agent.other") && e.contains("kata"), "{e}");
    let e = case("nohv.toml", b"[runtime]\nenable_debug = true\n");
    assert!(e.contains("no [hypervisor.<name>] table"), "{e}");
    let e = case(
        "two.toml",
        b"[hypervisor.qemu]\n[hypervisor.dragonball]\n[runtime]\nhypervisor_name = \"\"\n",
    );
    assert!(
        e.contains("several") && e.contains("hypervisor_name"),
        "{e}"
    );
    let e = case(
        "name.toml",
        b"[hypervisor.qemu]\n[runtime]\nhypervisor_name = \"clh\"\n",
    );
    assert!(
        e.contains("hypervisor_name") && e.contains("no [hypervisor.clh] table"),
        "{e}"
    );
}

#[test]
fn validation_names_file_key_value_and_what_is_allowed() {
    let d = tempfile::tempdir().unwrap();
    let case = |name: &str, extra: &str| {
        let text = BASE.replace("[agent.kata]", &format!("{extra}\n[agent.kata]"));
        load_err(&write(&d.path().join(name), text))
    };
    let e = case("enum.toml", "block_device_driver = \"virtio-foo\"");
    assert!(
        e.contains("enum.toml")
            && e.contains("[hypervisor.qemu]")
            && e.contains("block_device_driver")
            && e.contains("virtio-foo")
            && e.contains("allowed: virtio-scsi"),
        "{e}"
    );
    let e = load_err(&write(
        &d.path().join("range.toml"),
        BASE.replace("default_memory = 512", "default_memory = 32"),
    ));
    assert!(
        e.contains("default_memory = 32") && e.contains("at least 64 MiB"),
        "{e}"
    );
    let e = case("sector.toml", "block_device_logical_sector_size = 1000");
    assert!(e.contains("= 1000") && e.contains("power of 2"), "{e}");
    let e = case(
        "mem.toml",
        "memory_slots = 10\ndefault_bridges = 1\nmsize_9p = 100",
    );
    assert!(e.contains("msize_9p = 100") && e.contains("4096"), "{e}");
    let e = case(
        "ports.toml",
        "cold_plug_vfio = \"root-port\"\nhot_plug_vfio = \"switch-port\"",
    );
    assert!(
        e.contains("cold_plug_vfio") && e.contains("hot_plug_vfio"),
        "{e}"
    );
    let e = case("port.toml", "cold_plug_vfio = \"rooot-port\"");
    assert!(e.contains("rooot-port") && e.contains("root-port"), "{e}");
    let e = load_err(&write(
        &d.path().join("inline.toml"),
        BASE.replace(
            "shared_fs = \"virtio-9p\"",
            "shared_fs = \"inline-virtio-fs\"",
        ),
    ));
    assert!(
        e.contains("inline-virtio-fs") && e.contains("built-in VMM"),
        "{e}"
    );
    let e = case("snp.toml", "sev_snp_guest = true");
    assert!(
        e.contains("sev_snp_guest") && e.contains("confidential_guest"),
        "{e}"
    );
    let e = case("cc.toml", "confidential_guest = true");
    assert!(e.contains("static_sandbox_resource_mgmt"), "{e}");
    let e = case("ann.toml", "enable_annotations = [\"(\"]");
    assert!(
        e.contains("enable_annotations") && e.contains("regular expression"),
        "{e}"
    );

    let e = load_err(&write(
        &d.path().join("netns.toml"),
        BASE.replace("[runtime]", "[runtime]\ndisable_new_netns = true"),
    ));
    assert!(
        e.contains("[runtime]") && e.contains("disable_new_netns") && e.contains("\"none\""),
        "{e}"
    );
    let e = load_err(&write(
        &d.path().join("agent.toml"),
        BASE.replace("[agent.kata]", "[agent.kata]\nlog_port = 1024"),
    ));
    assert!(
        e.contains("[agent.kata]") && e.contains("log_port") && e.contains("server_port"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_warnings_that_name_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let base = write(
        &d.path().join("configuration.toml"),
        BASE.replace("[agent.kata]", "future_hv_key = 1\n[agent.kata]")
            .replace("[runtime]", "[runtime]\nfuture_rt_key = \"x\"")
            + "\n[image]\nservice_offload = true\n",
    );
    write(
        &d.path().join("config.d/10.toml"),
        "[agent.kata]\nfuture_agent_key = true\n",
    );
    let loaded = loader().path(&base).load().unwrap();
    let w = loaded.warnings.join("\n");
    assert!(
        w.contains("configuration.toml") && w.contains("hypervisor.qemu.future_hv_key"),
        "{w}"
    );
    assert!(
        w.contains("runtime.future_rt_key") && w.contains("image"),
        "{w}"
    );
    assert!(
        w.contains("10.toml") && w.contains("agent.kata.future_agent_key"),
        "{w}"
    );
}

#[test]
fn kata_load_time_rules_apply() {
    let d = tempfile::tempdir().unwrap();
    let base = write(
        &d.path().join("configuration.toml"),
        BASE.replace(
            "default_memory = 512",
            "default_memory = 512\ndefault_vcpus = -1\ndefault_bridges = 9\nvirtio_fs_cache = \"\"",
        ),
    );
    let loaded = loader().path(&base).load().unwrap();
    let hv = &loaded.config.hypervisor["qemu"];
    let host = std::thread::available_parallelism().unwrap().get() as u32;
    assert_eq!(hv.default_vcpus, host);
    assert_eq!(hv.default_maxvcpus, host);
    assert_eq!(hv.default_bridges, 5);
    assert_eq!(hv.virtio_fs_cache.as_str(), "never");
    assert_eq!(loaded.config.runtime.hypervisor_name, "qemu");
    assert!(
        loaded.notes.iter().any(|n| n.contains("default_bridges")),
        "{:?}",
        loaded.notes
    );
}

// --- host paths: only when the feature is used ------------------------------------------------

#[test]
fn host_paths_are_checked_when_their_feature_is_used() {
    let d = tempfile::tempdir().unwrap();
    let base = write(
        &d.path().join("configuration.toml"),
        BASE.replace(
            "shared_fs = \"virtio-9p\"",
            "shared_fs = \"virtio-9p\"\nvirtio_fs_daemon = \"/nonexistent/virtiofsd\"",
        ),
    );
    let loaded = loader().path(&base).load().unwrap();
    assert!(
        loaded.check_host_paths().is_empty(),
        "virtio-9p needs no virtiofsd"
    );

    let dropin = write(
        &d.path().join("config.d/10-virtiofs.toml"),
        "[hypervisor.qemu]\nshared_fs = \"virtio-fs\"\n",
    );
    let loaded = loader().path(&base).load().unwrap();
    let problems: Vec<String> = loaded
        .check_host_paths()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("configuration.toml")
            && problems[0].contains("virtio_fs_daemon")
            && problems[0].contains("/nonexistent/virtiofsd"),
        "{problems:?}"
    );
    std::fs::remove_file(dropin).unwrap();

    let base = write(
        &d.path().join("configuration.toml"),
        BASE.replace(
            "kernel_params = \"base\"",
            "kernel = \"/nonexistent/vmlinux\"",
        ),
    );
    let e = SandboxBuilder::from_config_file(&base)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("configuration.toml")
            && e.contains("kernel")
            && e.contains("/nonexistent/vmlinux"),
        "{e}"
    );
}

#[test]
fn the_effective_configuration_renders_with_its_origin() {
    let d = tempfile::tempdir().unwrap();
    let base = write(&d.path().join("configuration.toml"), BASE);
    write(
        &d.path().join("config.d/10.toml"),
        "[hypervisor.qemu]\ndefault_memory = 640\n",
    );
    let loaded = loader().path(&base).load().unwrap();
    let text = loaded.effective_toml();
    assert!(
        text.contains("# file: ") && text.contains("configuration.toml"),
        "{text}"
    );
    assert!(
        text.contains("# drop-in: ") && text.contains("10.toml"),
        "{text}"
    );
    let value: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        value["hypervisor"]["qemu"]["default_memory"].as_integer(),
        Some(640)
    );
    assert_eq!(value["runtime"]["hypervisor_name"].as_str(), Some("qemu"));
}

#[test]
fn the_builder_keeps_its_agent_timeout_without_an_agent_table() {
    let d = tempfile::tempdir().unwrap();
    let kernel = write(&d.path().join("vmlinux"), "");
    let without = write(
        &d.path().join("a.toml"),
        format!(
            "[hypervisor.qemu]\npath = \"/bin/sh\"\nshared_fs = \"virtio-9p\"\nkernel = \"{}\"\n",
            kernel.display()
        ),
    );
    let dial = |b: SandboxBuilder| b.finish().unwrap().agent.connect_options().dial_timeout;
    let b = SandboxBuilder::from_config_file(&without).unwrap();
    assert_eq!(dial(b), std::time::Duration::from_secs(45));
    let with = write(
        &d.path().join("b.toml"),
        std::fs::read_to_string(&without).unwrap() + "[agent.kata]\nreconnect_timeout_ms = 7000\n",
    );
    let b = SandboxBuilder::from_config_file(&with).unwrap();
    assert_eq!(dial(b), std::time::Duration::from_secs(7));
}
