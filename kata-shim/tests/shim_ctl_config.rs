//! `shim-ctl env` and `shim-ctl check` as a process, with temporary configurations.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "shim-ctl-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shim_ctl(dir: &TempDir, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shim-ctl"));
    cmd.args(args)
        .env_remove("KATA_CONF_FILE")
        .env_remove("RUST_LOG")
        .env("KATA_RS_GUEST_MANIFEST", dir.0.join("no-manifest.json"))
        .env("KATA_RS_CACHE", dir.0.join("cache"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const BASE: &str = r#"
[hypervisor.qemu]
path = "@QEMU@"
shared_fs = "virtio-9p"
default_memory = 512
enable_annotations = ["default_memory"]

[runtime]
hypervisor_name = "qemu"
"#;

/// A configuration whose QEMU is a stand-in file, and a guest manifest whose files exist.
fn host_fixture(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let qemu = dir.write("bin/qemu-system-x86_64", "#!/bin/sh\n");
    let vsock = dir.write("bin/vhost-device-vsock", "#!/bin/sh\n");
    let kernel = dir.write("guest/bzImage", "");
    let initrd = dir.write("guest/initrd.img", "");
    let manifest = dir.write(
        "guest/manifest.json",
        &format!(
            r#"{{"kernel": "{}", "initrd": "{}", "kernel_version": "6.1"}}"#,
            kernel.display(),
            initrd.display()
        ),
    );
    let config = dir.write(
        "etc/configuration.toml",
        &BASE.replace("@QEMU@", &qemu.display().to_string()),
    );
    (config, manifest, vsock)
}

#[test]
fn env_prints_the_effective_configuration_and_its_origin() {
    let dir = TempDir::new();
    let (config, _, _) = host_fixture(&dir);
    let dropin = dir.write(
        "etc/config.d/10-params.toml",
        "[hypervisor.qemu]\nkernel_params = \"from-dropin\"\nfuture_key = 1\n",
    );
    let out = shim_ctl(
        &dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "env",
            "-a",
            "io.katacontainers.config.hypervisor.default_memory=768",
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("# file: {}", config.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("# drop-in: {}", dropin.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("# annotation: io.katacontainers.config.hypervisor.default_memory"),
        "{stdout}"
    );
    assert!(stdout.contains("[hypervisor.qemu]"), "{stdout}");
    assert!(stdout.contains("default_memory = 768"), "{stdout}");
    assert!(
        stdout.contains("kernel_params = \"from-dropin\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("[agent.kata]") && stdout.contains("[runtime]"),
        "{stdout}"
    );
    assert!(
        stderr.contains("10-params.toml") && stderr.contains("hypervisor.qemu.future_key"),
        "the unknown key is a warning on stderr: {stderr}"
    );
}

#[test]
fn env_finds_the_file_through_kata_conf_file() {
    let dir = TempDir::new();
    let (config, _, _) = host_fixture(&dir);
    let out = shim_ctl(&dir, &["env"], &[("KATA_CONF_FILE", &config)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("from $KATA_CONF_FILE"), "{stdout}");
}

#[test]
fn env_fails_on_a_bad_file_with_line_and_column() {
    let dir = TempDir::new();
    let config = dir.write("bad.toml", "[hypervisor.qemu]\ndefault_memory = = 1\n");
    let out = shim_ctl(&dir, &["env", "--config", config.to_str().unwrap()], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("line 2, column"),
        "{stderr}"
    );
}

#[test]
fn check_passes_when_everything_needed_is_there() {
    let dir = TempDir::new();
    let (config, manifest, vsock) = host_fixture(&dir);
    let out = shim_ctl(
        &dir,
        &["check", "--config", config.to_str().unwrap()],
        &[
            ("KATA_RS_GUEST_MANIFEST", &manifest),
            ("KATA_RS_VHOST_USER_VSOCK", &vsock),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "KVM",
        "vhost-vsock",
        "QEMU",
        "virtiofsd",
        "guest image",
        "ready",
        "default hypervisor",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    assert!(stdout.contains("bin/qemu-system-x86_64"), "{stdout}");
    assert!(stdout.contains("(6.1)"), "the manifest's kernel: {stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// The shipped shim has the built-in VMM (kata-sandbox's default feature `builtin`): with the
/// shipped `configuration-dragonball.toml`, `check` reports kata-vmm's own probe — it passes,
/// or it names why this host's KVM cannot run it — never a build without the VMM.
#[test]
fn check_reaches_the_built_in_vmm_of_the_shipped_shim() {
    let dir = TempDir::new();
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/configuration-dragonball.toml");
    let out = shim_ctl(&dir, &["check", "--config", config.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("dragonball: the built-in VMM (kata-vmm, in this process)"),
        "{stdout}\n{stderr}"
    );
    let vmm = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("built-in"))
        .unwrap_or_else(|| panic!("no built-in VMM line:\n{stdout}"));
    assert!(!vmm.contains("no built-in VMM"), "{vmm}");
    assert!(
        vmm.starts_with("ok") || vmm.contains("cannot run here: "),
        "neither the probe's pass nor its reason: {vmm}"
    );
    let default = stdout
        .lines()
        .find(|l| l.contains("default hypervisor"))
        .unwrap_or_else(|| panic!("no default hypervisor line:\n{stdout}"));
    assert!(!default.contains("feature `builtin`"), "{default}");
}

#[test]
fn check_fails_and_names_what_is_missing() {
    let dir = TempDir::new();
    let (config, manifest, vsock) = host_fixture(&dir);
    let broken = dir.write(
        "etc/broken.toml",
        &std::fs::read_to_string(&config).unwrap().replace(
            "default_memory = 512",
            "default_memory = 512\nkernel = \"/nonexistent/vmlinux\"",
        ),
    );
    let out = shim_ctl(
        &dir,
        &["check", "--config", broken.to_str().unwrap()],
        &[
            ("KATA_RS_GUEST_MANIFEST", &manifest),
            ("KATA_RS_VHOST_USER_VSOCK", &vsock),
        ],
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL")
            && stdout.contains("broken.toml")
            && stdout.contains("kernel")
            && stdout.contains("/nonexistent/vmlinux")
            && stdout.contains("NOT READY"),
        "{stdout}"
    );

    // No guest image manifest: the guest image check fails with how to build it.
    let out = shim_ctl(
        &dir,
        &["check", "--config", config.to_str().unwrap()],
        &[("KATA_RS_VHOST_USER_VSOCK", &vsock)],
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("guest image") && stdout.contains("make guest"),
        "{stdout}"
    );

    // Without /dev/vhost-vsock, the vhost-user backend is required.
    if !Path::new("/dev/vhost-vsock").exists() {
        let out = shim_ctl(
            &dir,
            &["check", "--config", config.to_str().unwrap()],
            &[
                ("KATA_RS_GUEST_MANIFEST", &manifest),
                ("KATA_RS_VHOST_USER_VSOCK", &dir.0.join("nothing-here")),
            ],
        );
        let (stdout, _) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("vhost-device-vsock") && stdout.contains("make setup"),
            "{stdout}"
        );
    }

    // A configuration that does not load.
    let out = shim_ctl(
        &dir,
        &["check"],
        &[("KATA_CONF_FILE", &dir.0.join("missing.toml"))],
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("missing.toml") && stdout.contains("KATA_CONF_FILE"),
        "{stdout}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new();
    let out = shim_ctl(&dir, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("Usage: shim-ctl"));
    let out = shim_ctl(&dir, &["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = shim_ctl(&dir, &["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).0.contains("check") && text(&out).0.contains("env"));
}
