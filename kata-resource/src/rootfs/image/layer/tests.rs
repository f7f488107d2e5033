//! Layer application: metadata, whiteouts, opaque directories, hostile archives and limits.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::apply_layer;
use crate::rootfs::image::limits::{Budget, UnpackLimits, MAX_ENTRY_HEADER_BYTES};
use crate::Error;
use kata_testkit::image::layout::{gzip, TarBuilder, FIXED_MTIME};

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
        let limits = UnpackLimits::default();
        self.apply_within(layer, &mut Budget::new(&limits))
    }

    fn apply_within(&self, layer: Vec<u8>, budget: &mut Budget<'_>) -> crate::Result<()> {
        let size = layer.len() as u64;
        apply_layer(&self.path(), "sha256:test", layer.as_slice(), size, budget)
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
            .file("home/user/script", 0o1755, 1000, 1000, b"#!/bin/sh\n")
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
    assert_eq!(meta.mode() & 0o7777, 0o1755, "sticky bit kept after chown");
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

/// A tar entry of `kind` with device numbers, built by hand (TarBuilder has no devices).
fn special(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: EntryType, mode: u32) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header.set_device_major(8).unwrap();
    header.set_device_minor(0).unwrap();
    builder
        .append_data(&mut header, name, std::io::empty())
        .unwrap();
}

#[test]
fn device_nodes_are_skipped_fifos_kept() {
    let root = Root::new();
    root.apply(tar(|t| {
        t.file("dev/sda", 0o644, 0, 0, b"lower layer file");
    }))
    .unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    special(&mut builder, "dev/sda", EntryType::Block, 0o666);
    special(&mut builder, "dev/mem", EntryType::Char, 0o666);
    special(&mut builder, "dev/fifo", EntryType::Fifo, 0o620);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Link);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    builder
        .append_link(&mut header, "disk-alias", "dev/sda")
        .unwrap();
    root.apply(builder.into_inner().unwrap()).unwrap();

    assert!(
        !root.exists("dev/sda"),
        "a block device, and what it replaced"
    );
    assert!(!root.exists("dev/mem"), "a character device");
    assert!(!root.exists("disk-alias"), "a hardlink to a skipped device");
    let meta = fs::metadata(root.path().join("dev/fifo")).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.mode() & 0o777, 0o620);
    // Nothing anywhere in the rootfs is a device.
    let mut dirs = vec![root.path()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            assert!(
                !kind.is_block_device() && !kind.is_char_device(),
                "{}",
                entry.path().display()
            );
            if kind.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
}

#[test]
fn setuid_and_setgid_bits_are_cleared_except_on_directories() {
    let root = Root::new();
    root.apply(tar(|t| {
        t.file("usr/bin/su", 0o4755, 0, 0, b"su")
            .file("usr/bin/wall", 0o2755, 0, 5, b"wall")
            .file("usr/bin/both", 0o6777, 0, 0, b"both")
            .dir("var/mail", 0o2775, 0, 8)
            .dir("tmp", 0o1777, 0, 0)
            .hardlink("usr/bin/su-again", "usr/bin/su");
    }))
    .unwrap();
    let mode = |rel: &str| fs::metadata(root.path().join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode("usr/bin/su"), 0o755);
    assert_eq!(mode("usr/bin/su-again"), 0o755);
    assert_eq!(mode("usr/bin/wall"), 0o755);
    assert_eq!(mode("usr/bin/both"), 0o777);
    assert_eq!(
        mode("var/mail"),
        0o2775,
        "setgid on a directory is group inheritance"
    );
    assert_eq!(mode("tmp"), 0o1777);
}

/// A PAX extended header of `records` for the entry that follows.
fn pax(builder: &mut tar::Builder<Vec<u8>>, records: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (key, value) in records {
        // "<len> <key>=<value>\n", where <len> counts itself.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + rest.to_string().len();
        if len.to_string().len() != rest.to_string().len() {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(EntryType::XHeader);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_path("PaxHeaders/x").unwrap();
    header.set_cksum();
    builder.append(&header, data.as_slice()).unwrap();
}

/// The value of xattr `name` of `path`, if set.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and outlive the call; `buf` is writable for
    // `buf.len()` bytes.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn only_user_xattrs_and_acls_are_applied() {
    let root = Root::new();
    // A file capability (cap_setuid+ep, VFS_CAP_REVISION_2), an overlayfs marker and a label.
    let capability: &[u8] = &[
        0, 0, 0, 2, 0x80, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut builder = tar::Builder::new(Vec::new());
    pax(
        &mut builder,
        &[
            ("SCHILY.xattr.security.capability", capability),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:shadow_t:s0",
            ),
            ("SCHILY.xattr.user.note", b"kept"),
        ],
    );
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(2);
    builder
        .append_data(&mut header, "usr/bin/ping", &b"ok"[..])
        .unwrap();
    root.apply(builder.into_inner().unwrap()).unwrap();

    let ping = root.path().join("usr/bin/ping");
    assert_eq!(root.read("usr/bin/ping"), "ok");
    assert_eq!(xattr(&ping, "user.note").as_deref(), Some(&b"kept"[..]));
    assert_eq!(xattr(&ping, "security.capability"), None);
    assert_eq!(xattr(&ping, "trusted.overlay.opaque"), None);
    assert_ne!(
        xattr(&ping, "security.selinux").as_deref(),
        Some(&b"system_u:object_r:shadow_t:s0"[..])
    );
}

/// Small limits, so tests stay fast.
fn small_limits() -> UnpackLimits {
    UnpackLimits {
        max_total_bytes: 3 << 20,
        max_layer_bytes: 2 << 20,
        max_entries: 50,
        max_ratio: 10,
        ratio_floor_bytes: 1 << 20,
    }
}

fn limit_error(result: crate::Result<()>, limit: &str) -> String {
    let err = result.unwrap_err();
    match &err {
        Error::UnpackLimit {
            limit: got,
            subject,
            ..
        } => {
            assert_eq!(*got, limit, "{err}");
            assert_eq!(subject, "layer sha256:test", "{err}");
        }
        other => panic!("expected the {limit} limit, got: {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("UnpackLimits::{limit}")),
        "{message}"
    );
    assert!(message.contains("open_with_limits"), "{message}");
    message
}

/// Bytes that do not compress.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn a_layer_over_max_layer_bytes_stops_at_the_limit() {
    let root = Root::new();
    let limits = small_limits();
    let mut budget = Budget::new(&limits);
    let message = limit_error(
        root.apply_within(
            tar(|t| {
                t.file("big", 0o644, 0, 0, &noise(3 << 20, 1));
            }),
            &mut budget,
        ),
        "max_layer_bytes",
    );
    assert!(message.contains("2 MiB"), "{message}");
    let written = fs::metadata(root.path().join("big")).map_or(0, |m| m.len());
    assert!(written <= 2 << 20, "{written} bytes written past the limit");
}

#[test]
fn layers_together_over_max_total_bytes_are_refused() {
    let root = Root::new();
    let limits = small_limits();
    let mut budget = Budget::new(&limits);
    for i in 0..2 {
        root.apply_within(
            tar(|t| {
                t.file(&format!("f{i}"), 0o644, 0, 0, &noise(1 << 20, i));
            }),
            &mut budget,
        )
        .unwrap();
    }
    let message = limit_error(
        root.apply_within(
            tar(|t| {
                t.file("f2", 0o644, 0, 0, &noise(1 << 20, 2));
            }),
            &mut budget,
        ),
        "max_total_bytes",
    );
    assert!(message.contains("3 MiB"), "{message}");
}

#[test]
fn a_compression_bomb_is_stopped_by_the_ratio() {
    let root = Root::new();
    let limits = small_limits();
    let bomb = gzip(&tar(|t| {
        t.file("zeros", 0o644, 0, 0, &vec![0u8; 2 << 20]);
    }));
    assert!(bomb.len() < 20 << 10, "{}", bomb.len());
    let message = limit_error(
        root.apply_within(bomb, &mut Budget::new(&limits)),
        "max_ratio",
    );
    assert!(
        message.contains("10:1") && message.contains("1 MiB"),
        "{message}"
    );
    // Under the floor, the ratio does not matter.
    let small = gzip(&tar(|t| {
        t.file("zeros", 0o644, 0, 0, &vec![0u8; 512 << 10]);
    }));
    Root::new()
        .apply_within(small, &mut Budget::new(&limits))
        .unwrap();
}

#[test]
fn entries_over_max_entries_are_refused() {
    let root = Root::new();
    let limits = small_limits();
    let mut budget = Budget::new(&limits);
    root.apply_within(
        tar(|t| {
            for i in 0..30 {
                t.file(&format!("a{i}"), 0o644, 0, 0, b"");
            }
        }),
        &mut budget,
    )
    .unwrap();
    let message = limit_error(
        root.apply_within(
            tar(|t| {
                for i in 0..30 {
                    t.file(&format!("b{i}"), 0o644, 0, 0, b"");
                }
            }),
            &mut budget,
        ),
        "max_entries",
    );
    assert!(message.contains("more than 50 entries"), "{message}");
}

#[test]
fn oversized_entry_headers_are_refused_before_they_are_held() {
    let root = Root::new();
    let mut builder = tar::Builder::new(Vec::new());
    let long = vec![b'a'; MAX_ENTRY_HEADER_BYTES as usize + 1];
    pax(&mut builder, &[("comment", &long)]);
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    builder
        .append_data(&mut header, "f", std::io::empty())
        .unwrap();
    let err = root.apply(builder.into_inner().unwrap()).unwrap_err();
    assert!(matches!(err, Error::LayerRead { .. }), "{err}");
    assert!(err.to_string().contains("headers"), "{err}");
    assert!(!root.exists("f"));
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
