//! The test images: contents, reproducibility, staging. That kata-resource opens and unpacks
//! them (and that the unpacked image runs) is tested in kata-resource's `tests/test_image.rs`.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;

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
fn busybox_image_is_reproducible() {
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
    assert_eq!(a.ref_name, IMAGE_REF_NAME);

    let layout = busybox_image_layout(&tmp.path().join("layout")).unwrap();
    assert_eq!(layout.manifest_digest, a.manifest_digest);
    assert!(tmp.path().join("layout/oci-layout").is_file());
    assert!(tmp.path().join("layout/manifest.json").is_file());
    let err = busybox_image_layout(&tmp.path().join("layout")).unwrap_err();
    assert!(matches!(err, Error::DestinationExists { .. }), "{err}");
    let mut names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.tar", "b.tar", "layout"], "no staging left");
}

#[test]
fn elf_interpreter_detection() {
    let busybox = fs::read(BUSYBOX_PATH).unwrap();
    assert_eq!(elf_has_interpreter(&busybox), Some(false));
    let dynamic = fs::read("/bin/ls").unwrap();
    assert_eq!(elf_has_interpreter(&dynamic), Some(true));
    assert_eq!(elf_has_interpreter(b"#!/bin/sh\n"), None);
}

#[test]
fn layout_digests_are_sha256_of_the_bytes() {
    assert_eq!(
        layout::sha256_digest(b"hello"),
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(
        layout::blob_path("sha256:abc"),
        "blobs/sha256/abc",
        "layout path of a digest"
    );
}
