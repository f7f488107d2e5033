//! The test images: contents, reproducibility, and that the unpacked image actually runs.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use super::*;
use crate::rootfs::image::{ImageCache, OciImage};

#[test]
fn busybox_rootfs_has_applets_users_and_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs).unwrap();

    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/ls")).unwrap(),
        Path::new("busybox")
    );
    let applets = busybox_applets().unwrap();
    assert!(applets.len() > 100, "{}", applets.len());
    for applet in &applets {
        assert!(
            rootfs.join("bin").join(applet).symlink_metadata().is_ok(),
            "{applet}"
        );
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("root:x:0:0:"), "{passwd}");
    assert!(passwd.contains("user:x:1000:1000:"), "{passwd}");
    assert!(fs::read_to_string(rootfs.join("etc/group"))
        .unwrap()
        .contains("user:x:1000:"));
    for dir in ["tmp", "proc", "sys", "dev", "root", "home/user"] {
        assert!(rootfs.join(dir).is_dir(), "{dir}");
    }
    assert_eq!(
        fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(rootfs.join("home/user")).unwrap().uid(),
        USER_ID
    );
    assert_eq!(fs::metadata(&rootfs).unwrap().mtime() as u64, FIXED_MTIME);

    let err = busybox_rootfs(&rootfs).unwrap_err();
    assert!(matches!(err, Error::DestinationExists { .. }), "{err}");
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no staging left"
    );
}

#[test]
fn busybox_image_is_reproducible_and_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let a = busybox_image_tar(&tmp.path().join("a.tar")).unwrap();
    let b = busybox_image_tar(&tmp.path().join("b.tar")).unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(
        fs::read(tmp.path().join("a.tar")).unwrap(),
        fs::read(tmp.path().join("b.tar")).unwrap(),
        "byte-for-byte identical"
    );
    assert_eq!(a.name, IMAGE_NAME);

    for image in [
        OciImage::open(&a.path).unwrap(),
        OciImage::open_ref(&a.path, IMAGE_NAME).unwrap(),
        OciImage::open_ref(&a.path, IMAGE_REF_NAME).unwrap(),
    ] {
        assert_eq!(image.manifest_digest().to_string(), a.manifest_digest);
        let config = image.config().config().clone().unwrap();
        assert_eq!(config.cmd().as_deref(), Some(&["sh".to_owned()][..]));
        assert_eq!(
            config.env().as_deref(),
            Some(&[IMAGE_PATH_ENV.to_owned()][..])
        );
    }

    let layout = busybox_image_layout(&tmp.path().join("layout")).unwrap();
    assert_eq!(layout.manifest_digest, a.manifest_digest);
    assert!(tmp.path().join("layout/oci-layout").is_file());
    assert!(tmp.path().join("layout/manifest.json").is_file());
}

#[test]
fn the_unpacked_image_matches_the_rootfs_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let image = busybox_image_tar(&tmp.path().join("busybox.tar")).unwrap();
    let image = OciImage::open(&image.path).unwrap();
    let unpacked = ImageCache::new(tmp.path().join("cache"))
        .unwrap()
        .rootfs(&image)
        .unwrap();
    let direct = tmp.path().join("direct");
    busybox_rootfs(&direct).unwrap();

    assert_eq!(tree(&unpacked), tree(&direct));
    assert_eq!(
        fs::read(unpacked.join("bin/busybox")).unwrap(),
        fs::read(BUSYBOX_PATH).unwrap()
    );

    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped the chroot run: needs root");
        return;
    }
    let output = Command::new("/usr/sbin/chroot")
        .arg(&unpacked)
        .args(["/bin/sh", "-c", "id -u user; echo hello from busybox"])
        .env_clear()
        .env("PATH", "/bin")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "1000\nhello from busybox\n"
    );
}

/// Path, mode, uid, gid, mtime and symlink target of a file.
type TreeEntry = (String, u32, u32, u32, i64, Option<PathBuf>);

/// Every file under `root`, sorted.
fn tree(root: &Path) -> Vec<TreeEntry> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<TreeEntry>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let link = meta
                .file_type()
                .is_symlink()
                .then(|| fs::read_link(&path).unwrap());
            out.push((rel, meta.mode(), meta.uid(), meta.gid(), meta.mtime(), link));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn elf_interpreter_detection() {
    let busybox = fs::read(BUSYBOX_PATH).unwrap();
    assert_eq!(elf_has_interpreter(&busybox), Some(false));
    let dynamic = fs::read("/bin/ls").unwrap();
    assert_eq!(elf_has_interpreter(&dynamic), Some(true));
    assert_eq!(elf_has_interpreter(b"#!/bin/sh\n"), None);
}
