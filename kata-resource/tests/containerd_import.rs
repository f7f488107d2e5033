//! containerd tier: the busybox test image is accepted by `ctr image import` and runs with runc.
//!
//! Starts a private containerd (its own root, state and socket in a temp dir) and stops it by
//! pid. Skips with a message when not root or when containerd, ctr or runc is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kata_resource::testimage;

/// A containerd of our own, killed on drop.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let socket = dir.join("containerd.sock");
        // An empty config: defaults, without the host's /etc/containerd/config.toml.
        let config = dir.join("config.toml");
        std::fs::write(&config, "version = 2\n").unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let containerd = Containerd { child, socket };
        let started = Instant::now();
        while containerd.ctr(&["version"]).status.code() != Some(0) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "containerd did not come up: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing_tools() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    for tool in ["containerd", "ctr", "runc"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn containerd_imports_and_runs_the_busybox_image() {
    if let Some(reason) = missing_tools() {
        // `make test` installs every tool, and sets KATA_RS_VM_TEST_LOG: there, a missing tool
        // is a failure. A developer's plain `cargo test` without them only gets a loud skip.
        assert!(
            std::env::var_os("KATA_RS_VM_TEST_LOG").is_none(),
            "containerd import test cannot run under make test: {reason}"
        );
        eprintln!("SKIPPED (not under make test): {reason}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = testimage::busybox_image_tar(&tmp.path().join("busybox.tar")).unwrap();
    let containerd = Containerd::start(tmp.path());

    ok(containerd.ctr(&["image", "import", image.path.to_str().unwrap()]));
    let images = ok(containerd.ctr(&["image", "ls"]));
    assert!(images.contains(testimage::IMAGE_NAME), "{images}");
    assert!(images.contains(&image.manifest_digest), "{images}");

    let output = ok(containerd.ctr(&[
        "run",
        "--rm",
        testimage::IMAGE_NAME,
        "kata-resource-import-test",
        "sh",
        "-c",
        "echo hello from $(id -un)",
    ]));
    assert_eq!(output, "hello from root\n");
}
