//! `make install` / `make uninstall` into a `DESTDIR` (issue 16 item 5), under both name sets:
//! the layout, the configuration pointing at the installed guest image, the installed
//! binaries choosing their names, and an uninstall that leaves nothing. The binaries are this
//! build's (`BIN_DIR`: no release build); the guest image is `make guest`'s.

use std::path::{Path, PathBuf};
use std::process::Command;

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

fn make(target: &str, destdir: &Path, names: &str) -> std::process::Output {
    let out = Command::new("make")
        .current_dir(repo())
        .args(["-s", target])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BIN_DIR={}", bin_dir().display()))
        .arg(format!("KATA_RS_NAMES={names}"))
        .output()
        .expect("make runs");
    assert!(
        out.status.success(),
        "make {target} ({names}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
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

fn check(names: &str, shim: &str, config: &str, search_path: &str) {
    assert!(
        kata_hypervisor::GuestManifest::load_default().is_ok(),
        "no guest image: run `make guest` first"
    );
    let d = tempfile::tempdir().unwrap();
    let dest = d.path();
    make("install", dest, names);
    let files = tree(dest);
    let data = format!("usr/local/share/kata-rs/{names}");
    for want in [
        format!("usr/local/bin/{shim}"),
        "usr/local/bin/shim-ctl".into(),
        format!("{data}/vmlinuz"),
        format!("{data}/initrd.img"),
        format!("{data}/install-manifest"),
        config.trim_start_matches('/').to_string(),
    ] {
        assert!(files.contains(&want), "{want} not installed: {files:#?}");
    }
    if names == "own" {
        let katas: Vec<_> = files
            .iter()
            .filter(|f| f.contains("kata-containers") || f.ends_with("containerd-shim-kata-v2"))
            .collect();
        assert!(
            katas.is_empty(),
            "own names touched Kata's paths: {katas:?}"
        );
    }
    // The configuration points at the installed image (paths as they are once installed).
    let text = std::fs::read_to_string(dest.join(config.trim_start_matches('/'))).unwrap();
    assert!(
        text.contains(&format!("\nkernel = \"/{data}/vmlinuz\"")),
        "{text}"
    );
    assert!(text.contains(&format!("\ninitrd = \"/{data}/initrd.img\"")));
    // It loads (keys and values valid).
    let out = Command::new(dest.join("usr/local/bin/shim-ctl"))
        .args(["env", "--config"])
        .arg(dest.join(config.trim_start_matches('/')))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shim-ctl env: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The installed shim-ctl uses the name set's search path.
    let out = Command::new(dest.join("usr/local/bin/shim-ctl"))
        .arg("env")
        .env_remove("KATA_CONF_FILE")
        .env_remove("KATA_RS_NAMES")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(search_path), "{said}");
    // A second install over the first is refused (its manifest would be lost).
    let again = Command::new("make")
        .current_dir(repo())
        .args(["-s", "install"])
        .arg(format!("DESTDIR={}", dest.display()))
        .arg(format!("BIN_DIR={}", bin_dir().display()))
        .arg(format!("KATA_RS_NAMES={names}"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("make uninstall"));

    make("uninstall", dest, names);
    assert_eq!(tree(dest), Vec::<String>::new(), "uninstall left files");
}

#[test]
fn install_under_katas_names_and_uninstall_leaves_nothing() {
    check(
        "kata",
        "containerd-shim-kata-v2",
        "/usr/share/defaults/kata-containers/runtime-rs/configuration.toml",
        "/etc/kata-containers/runtime-rs/configuration.toml",
    );
}

#[test]
fn install_under_own_names_touches_none_of_katas_paths() {
    check(
        "own",
        "containerd-shim-kata-rs-v2",
        "/usr/share/defaults/kata-rs/configuration.toml",
        "/etc/kata-rs/configuration.toml",
    );
}

#[test]
fn uninstall_without_an_install_is_refused_naming_the_manifest() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .current_dir(repo())
        .args(["-s", "uninstall"])
        .arg(format!("DESTDIR={}", d.path().display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("install-manifest does not exist"), "{err}");
}
