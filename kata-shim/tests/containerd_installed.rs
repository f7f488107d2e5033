//! Tier 5, issue 16 item 5 end to end: `make install DESTDIR=<tmp>` lays out the files, a
//! containerd configured as the README says runs a container with the *installed* shim, and
//! `make uninstall` leaves nothing — under Kata's names and under kata-rs' own.
//!
//! The installed files are seen at their real paths without touching the host: the test runs
//! in a mount namespace of its own (made first in `main`, before any thread), where `/usr` is
//! an overlay of `<DESTDIR>/usr` over the host's `/usr`. containerd runs with a service's
//! `PATH` (`/usr/local/bin` first, not this build's directory) and `KATA_RS_CACHE` pointing at
//! an empty directory, so the shim finds nothing of the build cache (guest image, helper
//! programs): only what the install put down. Its config is the README's containerd 1.x
//! block, read from README.md. The binaries installed are this build's (`BIN_DIR`, as
//! tests/install.rs does). Sandbox ids `ki-*`; cases that boot append `booted
//! containerd_installed::<case>` to `$KATA_RS_VM_TEST_LOG`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kata_testkit::containerd::{Containerd, StartOptions};
use kata_testkit::harness::{booted, Suite};
use kata_testkit::image as testimage;
use kata_testkit::leaks::cmdlines;
use kata_testkit::missing_root_or_tools;

const NS: &str = "kata-rs-installed";

/// The `PATH` containerd's systemd unit gives it (Debian's containerd.service has none of its
/// own: systemd's default).
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_shim-ctl"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn make(target: &str, destdir: &Path, names: &str) -> Result<String> {
    let out = Command::new("make")
        .current_dir(repo())
        .args(["-s", target])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BIN_DIR={}", bin_dir().display()))
        .arg(format!("KATA_RS_NAMES={names}"))
        .output()?;
    ensure!(
        out.status.success(),
        "make {target} ({names}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The README's containerd 1.x configuration block: the first TOML block of its `##
/// containerd` section.
fn readme_containerd_config() -> Result<String> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let section = readme
        .find("\n## containerd\n")
        .context("README.md has no containerd section")?;
    let start = readme[section..]
        .find("```toml\n")
        .context("README.md's containerd section has no TOML block")?;
    let body = &readme[section + start + "```toml\n".len()..];
    let end = body.find("```").context("an unterminated TOML block")?;
    let block = &body[..end];
    ensure!(
        block.starts_with("version = 2\n")
            && block.contains("runtime_type = \"io.containerd.kata.v2\""),
        "README.md's first containerd block is not the 1.x one for kata: {block}"
    );
    Ok(block.to_string())
}

/// containerd's CRI plugin loaded with that configuration (`ctr plugins ls`: status `ok`).
fn cri_plugin_loaded(ctr: &Containerd) -> Result<()> {
    let plugins = ctr.ok(&["plugins", "ls"])?;
    let line = plugins
        .lines()
        .find(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"io.containerd.grpc.v1") && w.get(1) == Some(&"cri")
        })
        .context("no CRI plugin in `ctr plugins ls`")?;
    ensure!(
        line.split_whitespace().last() == Some("ok"),
        "the README's configuration does not load the CRI plugin: {line}\n{}",
        ctr.log()
            .lines()
            .filter(|l| l.contains("io.containerd.grpc.v1.cri"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// `/usr` of this mount namespace shows `<dest>/usr` over the host's until dropped.
struct UsrOverlay;

impl UsrOverlay {
    fn mount(dest: &Path) -> Result<UsrOverlay> {
        let lower = format!("lowerdir={}:/usr", dest.join("usr").display());
        nix::mount::mount(
            Some("overlay"),
            "/usr",
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(lower.as_str()),
        )
        .with_context(|| format!("mount -t overlay -o {lower} /usr"))?;
        Ok(UsrOverlay)
    }
}

impl Drop for UsrOverlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2("/usr", nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Names of one install: (KATA_RS_NAMES, runtime, shim binary, state root).
struct Names {
    set: &'static str,
    runtime: &'static str,
    shim: &'static str,
    root: &'static str,
}

/// Install, run a container with the installed shim through containerd, uninstall.
fn install_run_uninstall(env: &Env, names: &Names, id: &str) -> Result<()> {
    let dest = env.work.path().join(format!("dest-{}", names.set));
    std::fs::create_dir_all(&dest)?;
    let said = make("install", &dest, names.set)?;
    println!("    {}", said.lines().next().unwrap_or_default());
    let files = tree(&dest);
    let shim = format!("usr/local/bin/{}", names.shim);
    for want in [
        shim.as_str(),
        "usr/local/bin/shim-ctl",
        "usr/local/libexec/kata-rs/vhost-device-vsock",
    ] {
        ensure!(
            files.iter().any(|f| f == want),
            "{want} not installed: {files:#?}"
        );
    }
    let result = run_installed(env, names, id, &dest);
    let uninstalled = make("uninstall", &dest, names.set);
    result?;
    uninstalled?;
    let left = tree(&dest);
    ensure!(left.is_empty(), "make uninstall left {left:?}");
    Ok(())
}

fn run_installed(env: &Env, names: &Names, id: &str, dest: &Path) -> Result<()> {
    let _overlay = UsrOverlay::mount(dest)?;
    let dir = env.work.path().join(format!("containerd-{}", names.set));
    std::fs::create_dir_all(&dir)?;
    let empty_cache = env.work.path().join("no-cache");
    std::fs::create_dir_all(&empty_cache)?;
    let config = readme_containerd_config()?;
    let cache = empty_cache.display().to_string();
    let ctr = Containerd::start_with(
        &dir,
        &StartOptions {
            namespace: Some(NS),
            config: Some(&config),
            env: &[("PATH", SERVICE_PATH), ("KATA_RS_CACHE", &cache)],
            ..StartOptions::default()
        },
    )?;
    ctr.ok(&["image", "import", env.image.to_str().unwrap()])?;
    let r = (|| {
        cri_plugin_loaded(&ctr)?;
        // As the README's `ctr run` line: the runtime name is all containerd needs.
        ctr.ok(&[
            "run",
            "-d",
            "--runtime",
            names.runtime,
            testimage::IMAGE_NAME,
            id,
            "sleep",
            "1000",
        ])?;
        booted();
        ctr.wait_status(id, "RUNNING", Duration::from_secs(10))?;
        let guest = ctr.ok(&["task", "exec", "--exec-id", "u", id, "uname", "-r"])?;
        let host = nix::sys::utsname::uname()?;
        ensure!(
            guest.trim() != host.release().to_string_lossy(),
            "the container saw the host's kernel: {guest}"
        );
        // The shim that serves it is the installed one, with the installed configuration's
        // kernel, and its sandbox is under the name set's state root.
        let procs = cmdlines();
        let (pid, _) = procs
            .iter()
            .find(|(_, c)| c.contains(names.shim) && c.contains(&format!("-id {id}")))
            .with_context(|| format!("no shim serving {id} in {procs:?}"))?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        ensure!(
            exe == Path::new("/usr/local/bin").join(names.shim),
            "the shim serving {id} is {}",
            exe.display()
        );
        let kernel = format!("/usr/local/share/kata-rs/{}/vmlinuz", names.set);
        let sandbox_dir = Path::new(names.root).join(id);
        ensure!(
            procs
                .iter()
                .any(|(_, c)| c.contains("qemu-system") && c.contains(&kernel)),
            "no QEMU booting {kernel}"
        );
        ensure!(sandbox_dir.is_dir(), "no {}", sandbox_dir.display());
        // The installed shim-ctl finds the sandbox (its root from the names it was installed
        // under) and reads its metrics through the shim.
        let out = Command::new("/usr/local/bin/shim-ctl")
            .args(["metrics", id])
            .env_remove("KATA_RS_NAMES")
            .env_remove("KATA_RS_ROOT_DIR")
            .output()?;
        ensure!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("kata_guest_up 1"),
            "installed shim-ctl metrics: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ctr.ok(&["task", "kill", "-s", "KILL", id])?;
        ctr.wait_status(id, "STOPPED", Duration::from_secs(10))?;
        ctr.ok(&["task", "delete", id])?;
        ctr.ok(&["container", "rm", id])?;
        Ok(())
    })();
    if r.is_err() {
        ctr.force_remove(id);
        println!("--- containerd log ---\n{}", ctr.log());
    }
    drop(ctr);
    wait_gone(id)?;
    r
}

/// Waits until no process of sandbox `id` is left and its directory is gone.
fn wait_gone(id: &str) -> Result<()> {
    let needles = [
        format!("/run/kata/{id}"),
        format!("/run/kata-rs/{id}"),
        format!("-id {id}"),
    ];
    for _ in 0..100 {
        let left: Vec<_> = cmdlines()
            .into_iter()
            .filter(|(_, c)| needles.iter().any(|n| c.contains(n.as_str())))
            .collect();
        let dirs = ["/run/kata", "/run/kata-rs"]
            .iter()
            .any(|r| Path::new(r).join(id).exists());
        if left.is_empty() && !dirs {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("sandbox {id} left processes or its directory behind")
}

fn case_installed_under_katas_names(env: &Env) -> Result<()> {
    install_run_uninstall(
        env,
        &Names {
            set: "kata",
            runtime: "io.containerd.kata.v2",
            shim: "containerd-shim-kata-v2",
            root: "/run/kata",
        },
        "ki-kata",
    )
}

fn case_installed_under_own_names(env: &Env) -> Result<()> {
    install_run_uninstall(
        env,
        &Names {
            set: "own",
            runtime: "io.containerd.kata-rs.v2",
            shim: "containerd-shim-kata-rs-v2",
            root: "/run/kata-rs",
        },
        "ki-own",
    )
}

struct Env {
    work: tempfile::TempDir,
    image: PathBuf,
}

fn missing() -> Option<String> {
    if let Some(reason) =
        missing_root_or_tools(&["containerd", "ctr", "qemu-system-x86_64", "make"])
    {
        return Some(reason);
    }
    if !kata_hypervisor::GuestManifest::default_path().is_file() {
        return Some("no guest image (run `make guest`)".into());
    }
    if !Path::new("/var/cache/kata-rs/bin/vhost-device-vsock").is_file()
        && !Path::new("/dev/vhost-vsock").exists()
    {
        return Some("no vhost-device-vsock to install (run `make setup`)".into());
    }
    None
}

/// A mount namespace of this process's own, its mounts private: the overlay on `/usr` is seen
/// by this test and its children only. Must run before any thread exists.
fn private_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private in the new mount namespace")?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    // First, single-threaded: the environment of the shim is containerd's alone, and the
    // mount namespace is this process's.
    for var in [
        "KATA_CONF_FILE",
        "KATA_RS_NAMES",
        "KATA_RS_ROOT_DIR",
        "KATA_RS_VHOST_USER_VSOCK",
    ] {
        std::env::remove_var(var);
    }
    let namespace = if nix::unistd::geteuid().is_root() {
        private_mount_namespace().map_err(|e| format!("{e:#}"))
    } else {
        Err("not root".to_string())
    };
    Suite::new("containerd_installed")
        .label("installed shim tests")
        .requires(move || missing().or_else(|| namespace.clone().err()))
        .timeout(Duration::from_secs(300))
        .blocking_case(
            "installed_under_katas_names",
            case_installed_under_katas_names,
        )
        .blocking_case("installed_under_own_names", case_installed_under_own_names)
        .run_with(async {
            let work = tempfile::Builder::new()
                .prefix("kata-shim-inst")
                .tempdir()?;
            let image = testimage::busybox_image_tar(&work.path().join("busybox.tar"))?.path;
            Ok(Env { work, image })
        })
}
