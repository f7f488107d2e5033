//! The busybox test image of `kata_testkit::image` as this crate reads it: the tarball opens
//! by full name and by ref name with its config, and the image unpacked through the cache is
//! the same tree as the rootfs written directly — and runs (chroot, as root).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kata_resource::rootfs::image::{ImageCache, OciImage};
use kata_testkit::image::{
    busybox_image_tar, busybox_rootfs, BUSYBOX_PATH, IMAGE_NAME, IMAGE_PATH_ENV, IMAGE_REF_NAME,
};

#[test]
fn the_busybox_image_opens_by_name_and_ref_name() {
    let tmp = tempfile::tempdir().unwrap();
    let written = busybox_image_tar(&tmp.path().join("busybox.tar")).unwrap();
    for image in [
        OciImage::open(&written.path).unwrap(),
        OciImage::open_ref(&written.path, IMAGE_NAME).unwrap(),
        OciImage::open_ref(&written.path, IMAGE_REF_NAME).unwrap(),
    ] {
        assert_eq!(image.manifest_digest().to_string(), written.manifest_digest);
        let config = image.config().config().clone().unwrap();
        assert_eq!(config.cmd().as_deref(), Some(&["sh".to_owned()][..]));
        assert_eq!(
            config.env().as_deref(),
            Some(&[IMAGE_PATH_ENV.to_owned()][..])
        );
    }
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
