//! Layer application: metadata, whiteouts, opaque directories and hostile archives.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::apply_layer;
use crate::layout_writer::{gzip, TarBuilder, FIXED_MTIME};
use crate::Error;

/// A rootfs dir inside a temp dir, so escapes would land in the temp dir where tests see them.
struct Root {
    tmp: tempfile::TempDir,
}

impl Root {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("rootfs")).unwrap();
        Root { tmp }
    }

    fn path(&self) -> PathBuf {
        self.tmp.path().join("rootfs")
    }

    fn apply(&self, layer: Vec<u8>) -> crate::Result<()> {
        apply_layer(&self.path(), "sha256:test", layer.as_slice())
    }

    fn exists(&self, rel: &str) -> bool {
        self.path().join(rel).symlink_metadata().is_ok()
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path().join(rel)).unwrap()
    }

    /// Everything in the temp dir outside the rootfs.
    fn outside(&self) -> Vec<PathBuf> {
        fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p != &self.path())
            .collect()
    }
}

fn tar(build: impl FnOnce(&mut TarBuilder)) -> Vec<u8> {
    let mut builder = TarBuilder::new();
    build(&mut builder);
    builder.finish()
}

fn refused(result: crate::Result<()>, entry: &str) -> String {
    let err = result.unwrap_err();
    match &err {
        Error::UnsafeLayerEntry {
            entry: got, layer, ..
        } => {
            assert_eq!(got, entry, "{err}");
            assert_eq!(layer, "sha256:test");
        }
        other => panic!("expected a refused entry {entry:?}, got: {other}"),
    }
    err.to_string()
}

#[test]
fn files_dirs_links_keep_mode_owner_and_mtime() {
    let root = Root::new();
    root.apply(gzip(&tar(|t| {
        t.dir("home/user", 0o750, 1000, 1000)
            .file("home/user/script", 0o4755, 1000, 1000, b"#!/bin/sh\n")
            .file("etc/passwd", 0o644, 0, 0, b"root\n")
            .symlink("etc/motd", "/etc/passwd")
            .hardlink("etc/passwd-", "etc/passwd")
            .dir("tmp", 0o1777, 0, 0);
    })))
    .unwrap();

    let meta = fs::metadata(root.path().join("home/user")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o750, 1000, 1000)
    );
    assert_eq!(meta.mtime() as u64, FIXED_MTIME);
    let meta = fs::metadata(root.path().join("home/user/script")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o4755, "setuid kept after chown");
    assert_eq!(meta.uid(), 1000);
    assert_eq!(meta.mtime() as u64, FIXED_MTIME);
    assert_eq!(
        fs::metadata(root.path().join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::read_link(root.path().join("etc/motd")).unwrap(),
        Path::new("/etc/passwd")
    );
    let a = fs::metadata(root.path().join("etc/passwd")).unwrap();
    let b = fs::metadata(root.path().join("etc/passwd-")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink shares the inode");
    // `home` was not in the layer: created as a plain 0755 directory.
    assert_eq!(
        fs::metadata(root.path().join("home"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

#[test]
fn device_nodes_and_fifos() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mknod needs root");
        return;
    }
    let root = Root::new();
    let layer = tar(|t| {
        t.dir("dev", 0o755, 0, 0);
    });
    root.apply(layer).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind) in [("dev/null", EntryType::Char), ("dev/fifo", EntryType::Fifo)] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o666);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        header.set_device_major(1).unwrap();
        header.set_device_minor(3).unwrap();
        builder
            .append_data(&mut header, name, std::io::empty())
            .unwrap();
    }
    root.apply(builder.into_inner().unwrap()).unwrap();
    let meta = fs::metadata(root.path().join("dev/null")).unwrap();
    assert_eq!(meta.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(meta.mode() & 0o777, 0o666);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata(root.path().join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn upper_layers_replace_and_merge() {
    let root = Root::new();
    root.apply(tar(|t| {
        t.file("a/old", 0o644, 0, 0, b"1")
            .file("a/keep", 0o644, 0, 0, b"1")
            .dir("b", 0o755, 0, 0)
            .file("b/inner", 0o644, 0, 0, b"1")
            .symlink("c", "a");
    }))
    .unwrap();
    root.apply(tar(|t| {
        t.file("a/old", 0o600, 0, 0, b"2") // replaces
            .file("b", 0o644, 0, 0, b"file now") // a file over a directory
            .dir("c", 0o755, 0, 0) // a directory over a symlink
            .file("c/x", 0o644, 0, 0, b"x");
    }))
    .unwrap();
    assert_eq!(root.read("a/old"), "2");
    assert_eq!(root.read("a/keep"), "1");
    assert_eq!(root.read("b"), "file now");
    assert!(fs::symlink_metadata(root.path().join("c"))
        .unwrap()
        .is_dir());
    assert!(!root.exists("a/x"), "not written through the old symlink");
}

#[test]
fn whiteouts_delete_lower_files_and_directories() {
    let root = Root::new();
    root.apply(tar(|t| {
        t.file("etc/a", 0o644, 0, 0, b"a")
            .file("etc/b", 0o644, 0, 0, b"b")
            .dir("var/cache", 0o755, 0, 0)
            .file("var/cache/x", 0o644, 0, 0, b"x");
    }))
    .unwrap();
    root.apply(tar(|t| {
        t.file("etc/.wh.a", 0o644, 0, 0, b"")
            .file("var/.wh.cache", 0o644, 0, 0, b"")
            .file(".wh.never-existed", 0o644, 0, 0, b"")
            .file("nowhere/.wh.x", 0o644, 0, 0, b"");
    }))
    .unwrap();
    assert!(!root.exists("etc/a"));
    assert!(root.exists("etc/b"));
    assert!(!root.exists("var/cache"));
    assert!(!root.exists("etc/.wh.a"), "whiteouts are not materialized");
    assert!(!root.exists("nowhere"), "a whiteout creates nothing");
}

#[test]
fn whiteouts_do_not_hide_the_same_layer() {
    let root = Root::new();
    root.apply(tar(|t| {
        t.file("etc/a", 0o644, 0, 0, b"lower");
    }))
    .unwrap();
    root.apply(tar(|t| {
        t.file("etc/a", 0o644, 0, 0, b"upper")
            .file("etc/.wh.a", 0o644, 0, 0, b"");
    }))
    .unwrap();
    assert_eq!(root.read("etc/a"), "upper");
}

#[test]
fn opaque_directories_hide_lower_content_only() {
    let root = Root::new();
    root.apply(tar(|t| {
        t.file("data/lower1", 0o644, 0, 0, b"1")
            .file("data/sub/lower2", 0o644, 0, 0, b"2")
            .file("other/kept", 0o644, 0, 0, b"k");
    }))
    .unwrap();
    // The marker after some of the layer's own entries, as the spec allows.
    root.apply(tar(|t| {
        t.dir("data", 0o700, 0, 0)
            .file("data/sub/upper", 0o644, 0, 0, b"u")
            .file("data/.wh..wh..opq", 0o644, 0, 0, b"")
            .file("data/upper2", 0o644, 0, 0, b"u2");
    }))
    .unwrap();
    assert!(!root.exists("data/lower1"));
    assert!(
        !root.exists("data/sub/lower2"),
        "lower content of a re-declared subdir"
    );
    assert_eq!(root.read("data/sub/upper"), "u");
    assert_eq!(root.read("data/upper2"), "u2");
    assert!(!root.exists("data/.wh..wh..opq"));
    assert_eq!(root.read("other/kept"), "k");
    assert_eq!(
        fs::metadata(root.path().join("data")).unwrap().mode() & 0o777,
        0o700
    );
}

#[test]
fn refuses_parent_dir_components() {
    let root = Root::new();
    let message = refused(
        root.apply(tar(|t| {
            t.raw(EntryType::Regular, b"../escaped", b"", b"x");
        })),
        "../escaped",
    );
    assert!(message.contains(".."), "{message}");
    refused(
        root.apply(tar(|t| {
            t.raw(EntryType::Regular, b"a/../../escaped", b"", b"x");
        })),
        "a/../../escaped",
    );
    assert!(root.outside().is_empty(), "{:?}", root.outside());
}

#[test]
fn refuses_absolute_paths() {
    let root = Root::new();
    let target = root.tmp.path().join("abs");
    let name = target.to_str().unwrap().as_bytes().to_vec();
    let message = refused(
        root.apply(tar(|t| {
            t.raw(EntryType::Regular, &name, b"", b"x");
        })),
        target.to_str().unwrap(),
    );
    assert!(message.contains("absolute"), "{message}");
    assert!(root.outside().is_empty());
}

#[test]
fn refuses_writing_through_a_symlink_that_leaves_the_rootfs() {
    let root = Root::new();
    // Same layer: the symlink, then a file through it.
    let message = refused(
        root.apply(tar(|t| {
            t.symlink("evil", "../..")
                .file("evil/escaped", 0o644, 0, 0, b"x");
        })),
        "evil/escaped",
    );
    assert!(message.contains("symlink evil"), "{message}");
    // A later layer, and a chain of symlinks.
    root.apply(tar(|t| {
        t.dir("d", 0o755, 0, 0)
            .symlink("d/up", "..")
            .symlink("hop", "d/up/d/up/..");
    }))
    .unwrap();
    refused(
        root.apply(tar(|t| {
            t.file("hop/escaped", 0o644, 0, 0, b"x");
        })),
        "hop/escaped",
    );
    assert!(root.outside().is_empty(), "{:?}", root.outside());
}

#[test]
fn absolute_symlinks_resolve_inside_the_rootfs() {
    let root = Root::new();
    let outside = root.tmp.path().join("outside");
    let outside_str = outside.to_str().unwrap().to_owned();
    root.apply(tar(|t| {
        t.dir("run", 0o755, 0, 0)
            .symlink("var/run", "/run")
            .symlink("abs", &outside_str);
    }))
    .unwrap();
    root.apply(tar(|t| {
        t.file("var/run/pid", 0o644, 0, 0, b"1")
            .file("abs/file", 0o644, 0, 0, b"x");
    }))
    .unwrap();
    assert_eq!(root.read("run/pid"), "1");
    assert!(root.exists(&format!("{}/file", &outside_str[1..])));
    assert!(root.outside().is_empty(), "{:?}", root.outside());
}

#[test]
fn symlink_at_the_entry_path_is_replaced_not_followed() {
    let root = Root::new();
    fs::write(root.tmp.path().join("victim"), "original").unwrap();
    let victim = root.tmp.path().join("victim");
    root.apply(tar(|t| {
        t.symlink("file", victim.to_str().unwrap());
    }))
    .unwrap();
    root.apply(tar(|t| {
        t.file("file", 0o644, 0, 0, b"overwritten");
    }))
    .unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "original");
    assert_eq!(root.read("file"), "overwritten");
}

#[test]
fn refuses_hardlinks_out_of_the_rootfs() {
    let root = Root::new();
    fs::write(root.tmp.path().join("secret"), "s").unwrap();
    let message = refused(
        root.apply(tar(|t| {
            t.raw(EntryType::Link, b"link", b"../secret", b"");
        })),
        "link",
    );
    assert!(message.contains("hardlink target"), "{message}");
    refused(
        root.apply(tar(|t| {
            t.raw(EntryType::Link, b"link", b"/etc/passwd", b"");
        })),
        "link",
    );
    // Through a symlinked directory pointing out.
    refused(
        root.apply(tar(|t| {
            t.symlink("up", "..").hardlink("link", "up/secret");
        })),
        "link",
    );
    refused(
        root.apply(tar(|t| {
            t.hardlink("link", "does/not/exist");
        })),
        "link",
    );
    assert!(!root.exists("link"));
}

#[test]
fn refuses_whiteouts_of_dot_dot() {
    let root = Root::new();
    fs::create_dir(root.path().join("dir")).unwrap();
    refused(
        root.apply(tar(|t| {
            t.raw(EntryType::Regular, b"dir/.wh...", b"", b"");
        })),
        "dir/.wh...",
    );
    assert!(root.path().join("dir").exists());
    // A whiteout reached through a symlink leaving the rootfs.
    root.apply(tar(|t| {
        t.symlink("up", "..");
    }))
    .unwrap();
    refused(
        root.apply(tar(|t| {
            t.file("up/.wh.rootfs", 0o644, 0, 0, b"");
        })),
        "up/.wh.rootfs",
    );
    assert!(root.path().exists());
}

#[test]
fn reports_corrupt_and_zstd_layers() {
    let root = Root::new();
    let mut data = gzip(&tar(|t| {
        t.file("a", 0o644, 0, 0, &[7u8; 100_000]);
    }));
    data.truncate(data.len() / 2);
    let err = root.apply(data).unwrap_err();
    assert!(matches!(err, Error::LayerRead { .. }), "{err}");
    let err = root.apply(vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap_err();
    assert!(err.to_string().contains("zstd"), "{err}");
}
