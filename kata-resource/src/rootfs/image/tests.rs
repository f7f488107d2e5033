//! Opening, selecting, verifying, unpacking and caching images built with the layout writer.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType, ANNOTATION_REF_NAME};

use super::*;
use kata_testkit::image::layout::{AddedImage, ImageSpec, IndexEntry, LayoutWriter, TarBuilder};

fn base_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755, 0, 0)
        .file("bin/hello", 0o755, 0, 0, b"#!/bin/sh\necho hello\n")
        .file("etc/to-remove", 0o644, 0, 0, b"x");
    t.finish()
}

fn upper_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.file("etc/.wh.to-remove", 0o644, 0, 0, b"")
        .file("etc/added", 0o644, 0, 0, b"upper");
    t.finish()
}

fn spec(layers: Vec<Vec<u8>>) -> ImageSpec {
    ImageSpec {
        layers,
        gzip: true,
        cmd: vec!["/bin/hello".into()],
        env: vec!["PATH=/bin".into()],
        working_dir: Some("/tmp".into()),
        ..ImageSpec::default()
    }
}

/// One two-layer image named `name`.
fn single_image(name: &str) -> (LayoutWriter, AddedImage) {
    let mut writer = LayoutWriter::new();
    let added = writer.add_image(&spec(vec![base_layer(), upper_layer()]));
    writer.add_index_entry(IndexEntry::new(
        &added.manifest,
        &[(ANNOTATION_REF_NAME, name)],
    ));
    (writer, added)
}

fn check_rootfs(rootfs: &Path) {
    assert!(rootfs.join("bin/hello").is_file());
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/added")).unwrap(),
        "upper"
    );
    assert!(!rootfs.join("etc/to-remove").exists());
}

/// The names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn opens_a_layout_dir_a_tarball_and_a_gzipped_tarball() {
    let tmp = tempfile::tempdir().unwrap();
    let (writer, added) = single_image("v1");
    let dir = tmp.path().join("layout");
    writer.write_dir(&dir).unwrap();
    let tar = tmp.path().join("image.tar");
    writer.write_tar(&tar, false).unwrap();
    let tgz = tmp.path().join("image.tar.gz");
    writer.write_tar(&tgz, true).unwrap();

    for (i, path) in [dir, tar, tgz].iter().enumerate() {
        let image = OciImage::open(path).unwrap();
        assert_eq!(image.path(), path.as_path());
        assert_eq!(image.manifest_digest(), added.manifest.digest());
        assert_eq!(image.reference(), Some("v1"));
        assert_eq!(image.manifest().layers().len(), 2);
        let config = image.config().config().clone().unwrap();
        assert_eq!(
            config.cmd().as_deref(),
            Some(&["/bin/hello".to_owned()][..])
        );
        assert_eq!(config.env().as_deref(), Some(&["PATH=/bin".to_owned()][..]));
        assert_eq!(config.working_dir().as_deref(), Some("/tmp"));

        let dest = tmp.path().join(format!("rootfs{i}"));
        image.unpack(&dest).unwrap();
        check_rootfs(&dest);
    }
    assert!(
        !names(tmp.path()).iter().any(|n| n.starts_with(".partial")),
        "{:?}",
        names(tmp.path())
    );
}

#[test]
fn unpack_refuses_an_existing_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let (writer, _) = single_image("v1");
    writer.write_dir(&tmp.path().join("layout")).unwrap();
    let image = OciImage::open(tmp.path().join("layout")).unwrap();
    let err = image.unpack(tmp.path()).unwrap_err();
    assert!(matches!(err, Error::DestinationExists { .. }), "{err}");
}

#[test]
fn a_tampered_layer_is_refused_naming_its_digest_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut writer, added) = single_image("v1");
    let layer = &added.layers[1];
    // Same size, different content: a gzip of other bytes would change the size.
    let blob = writer.blob_mut(layer);
    let last = blob.len() - 1;
    blob[last] ^= 0xff;
    let dir = tmp.path().join("layout");
    writer.write_dir(&dir).unwrap();

    let image = OciImage::open(&dir).unwrap(); // layers are verified when read
    let dest = tmp.path().join("rootfs");
    let err = image.unpack(&dest).unwrap_err();
    assert!(
        err.to_string().contains(&layer.digest().to_string()),
        "{err}"
    );
    assert!(!dest.exists());
    assert_eq!(names(tmp.path()), ["layout"]);

    let cache = ImageCache::new(tmp.path().join("cache")).unwrap();
    cache.rootfs(&image).unwrap_err();
    assert!(names(cache.dir()).is_empty(), "{:?}", names(cache.dir()));
}

#[test]
fn a_tampered_config_or_manifest_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, target) in ["config", "manifest"].into_iter().enumerate() {
        let (mut writer, added) = single_image("v1");
        let desc = if target == "config" {
            &added.config
        } else {
            &added.manifest
        };
        writer.blob_mut(desc)[0] = b' ';
        let dir = tmp.path().join(format!("layout{i}"));
        writer.write_dir(&dir).unwrap();
        let err = OciImage::open(&dir).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains(&desc.digest().to_string()),
            "{err}"
        );
    }
}

#[test]
fn a_missing_blob_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut writer, added) = single_image("v1");
    writer.remove_blob(&added.layers[0]);
    let tar = tmp.path().join("image.tar");
    writer.write_tar(&tar, false).unwrap();
    let image = OciImage::open(&tar).unwrap();
    let err = image.unpack(&tmp.path().join("rootfs")).unwrap_err();
    assert!(matches!(err, Error::BlobMissing { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&added.layers[0].digest().to_string()),
        "{err}"
    );
}

#[test]
fn several_images_need_a_reference_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut writer = LayoutWriter::new();
    let a = writer.add_image(&spec(vec![base_layer()]));
    let b = writer.add_image(&ImageSpec {
        cmd: vec!["other".into()],
        ..spec(vec![base_layer()])
    });
    writer.add_index_entry(IndexEntry::new(&a.manifest, &[(ANNOTATION_REF_NAME, "a")]));
    writer.add_index_entry(IndexEntry::new(
        &b.manifest,
        &[
            (ANNOTATION_REF_NAME, "b"),
            (ANNOTATION_CONTAINERD_IMAGE_NAME, "example.com/b:b"),
        ],
    ));
    let dir = tmp.path().join("layout");
    writer.write_dir(&dir).unwrap();

    // Both manifests are for this host's platform: nothing to choose by.
    let err = OciImage::open(&dir).unwrap_err();
    assert!(matches!(err, Error::AmbiguousManifest { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("a@sha256:") && message.contains("b@sha256:"),
        "{message}"
    );

    let image = OciImage::open_ref(&dir, "b").unwrap();
    assert_eq!(image.manifest_digest(), b.manifest.digest());
    let image = OciImage::open_ref(&dir, "example.com/b:b").unwrap();
    assert_eq!(image.manifest_digest(), b.manifest.digest());
    assert_eq!(image.reference(), Some("example.com/b:b"));
    let image = OciImage::open_ref(&dir, "a").unwrap();
    assert_eq!(image.manifest_digest(), a.manifest.digest());

    let err = OciImage::open_ref(&dir, "c").unwrap_err();
    assert!(matches!(err, Error::ImageRefNotFound { .. }), "{err}");
    assert!(err.to_string().contains("\"c\""), "{err}");
    assert!(err.to_string().contains("a@sha256:"), "{err}");
}

fn platform_image(writer: &mut LayoutWriter, arch: &str) -> AddedImage {
    writer.add_image(&ImageSpec {
        cmd: vec![arch.into()],
        platform: Some(("linux".into(), arch.into())),
        ..spec(vec![base_layer()])
    })
}

#[test]
fn a_multi_platform_index_picks_the_host_platform() {
    let (_, host_arch) = host_platform();
    let host_arch = host_arch.to_string();
    let other_arch = if host_arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let tmp = tempfile::tempdir().unwrap();

    // Platforms listed in index.json itself.
    let mut writer = LayoutWriter::new();
    let other = platform_image(&mut writer, other_arch);
    let host = platform_image(&mut writer, &host_arch);
    writer.add_index_entry(IndexEntry::new(&other.manifest, &[]));
    writer.add_index_entry(IndexEntry::new(&host.manifest, &[]));
    writer.write_dir(&tmp.path().join("flat")).unwrap();
    let image = OciImage::open(tmp.path().join("flat")).unwrap();
    assert_eq!(image.manifest_digest(), host.manifest.digest());

    // A named multi-platform index inside index.json, as `docker save`/buildx write them.
    let mut writer = LayoutWriter::new();
    let other = platform_image(&mut writer, other_arch);
    let host = platform_image(&mut writer, &host_arch);
    let nested = writer.add_nested_index(&[
        IndexEntry::new(&other.manifest, &[]),
        IndexEntry::new(&host.manifest, &[]),
    ]);
    writer.add_index_entry(IndexEntry::new(&nested, &[(ANNOTATION_REF_NAME, "multi")]));
    writer
        .write_tar(&tmp.path().join("nested.tar"), true)
        .unwrap();
    let image = OciImage::open_ref(tmp.path().join("nested.tar"), "multi").unwrap();
    assert_eq!(image.manifest_digest(), host.manifest.digest());
    assert_eq!(image.reference(), Some("multi"));
    let image = OciImage::open(tmp.path().join("nested.tar")).unwrap();
    assert_eq!(image.manifest_digest(), host.manifest.digest());

    // No manifest for this host.
    let mut writer = LayoutWriter::new();
    let other = platform_image(&mut writer, other_arch);
    let other2 = platform_image(&mut writer, "s390x");
    writer.add_index_entry(IndexEntry::new(&other.manifest, &[]));
    writer.add_index_entry(IndexEntry::new(&other2.manifest, &[]));
    writer.write_dir(&tmp.path().join("foreign")).unwrap();
    let err = OciImage::open(tmp.path().join("foreign")).unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("linux/{host_arch}")),
        "{err}"
    );
}

#[test]
fn the_cache_unpacks_once_per_manifest_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let (writer, added) = single_image("v1");
    let tar = tmp.path().join("image.tar");
    writer.write_tar(&tar, true).unwrap();
    let image = OciImage::open(&tar).unwrap();
    let cache = ImageCache::new(tmp.path().join("cache")).unwrap();
    assert_eq!(cache.get(&image), None);

    let rootfs = cache.rootfs(&image).unwrap();
    let hex = added.manifest.digest().digest();
    assert_eq!(rootfs, cache.dir().join(format!("sha256-{hex}/rootfs")));
    check_rootfs(&rootfs);
    fs::write(rootfs.join("marker"), "still here").unwrap();

    // Another process (a new ImageCache and OciImage) reuses it.
    let again = ImageCache::new(cache.dir())
        .unwrap()
        .rootfs(&OciImage::open(&tar).unwrap())
        .unwrap();
    assert_eq!(again, rootfs);
    assert!(rootfs.join("marker").exists(), "not unpacked again");
    assert_eq!(names(cache.dir()), [format!("sha256-{hex}")]);

    cache.remove(&image).unwrap();
    assert!(names(cache.dir()).is_empty());
    cache.remove(&image).unwrap();
}

#[test]
fn large_blobs_in_a_tarball_are_staged_and_verified() {
    // An incompressible layer above the in-memory limit.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..(blobs::IN_MEMORY_LIMIT as usize + 4096))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut layer = TarBuilder::new();
    layer.file("big", 0o644, 0, 0, &noise);
    let mut writer = LayoutWriter::new();
    let added = writer.add_image(&ImageSpec {
        gzip: false,
        ..spec(vec![layer.finish()])
    });
    writer.add_index_entry(IndexEntry::new(&added.manifest, &[]));
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("image.tar");
    writer.write_tar(&tar, true).unwrap();

    let image = OciImage::open(&tar).unwrap();
    image.unpack(&tmp.path().join("rootfs")).unwrap();
    assert_eq!(fs::read(tmp.path().join("rootfs/big")).unwrap(), noise);

    let tampered = tmp.path().join("tampered.tar");
    writer.blob_mut(&added.layers[0])[1000] ^= 1;
    writer.write_tar(&tampered, false).unwrap();
    let err = OciImage::open(&tampered)
        .unwrap()
        .unpack(&tmp.path().join("rootfs2"))
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_eq!(names(tmp.path()), ["image.tar", "rootfs", "tampered.tar"]);
}

#[test]
fn things_that_are_not_layouts_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("random.bin");
    fs::write(&file, [1u8; 2000]).unwrap();
    let empty_dir = tmp.path().join("empty");
    fs::create_dir(&empty_dir).unwrap();
    for path in [&file, &empty_dir] {
        let err = OciImage::open(path).unwrap_err();
        assert!(matches!(err, Error::NotAnImageLayout { .. }), "{err}");
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
    let err = OciImage::open(tmp.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn zstd_and_unknown_layers_are_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let mut writer = LayoutWriter::new();
    let layer = writer.add_blob(MediaType::ImageLayerZstd, vec![0x28, 0xb5, 0x2f, 0xfd]);
    let config = writer.add_blob(
        MediaType::ImageConfig,
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    let manifest = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .config(config)
        .layers(vec![layer.clone()])
        .build()
        .unwrap();
    let manifest: Descriptor = writer.add_blob(
        MediaType::ImageManifest,
        serde_json::to_vec(&manifest).unwrap(),
    );
    writer.add_index_entry(IndexEntry::new(&manifest, &[]));
    let dir: PathBuf = tmp.path().join("layout");
    writer.write_dir(&dir).unwrap();
    let err = OciImage::open(&dir).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedMediaType { what: "layer", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&layer.digest().to_string()),
        "{err}"
    );
}

// Hostile images (issue 9 rows 2 and 8): what an image can do to the host.

/// An image of one uncompressed layer (so tests can tamper with its tar bytes).
fn one_layer_image(layer: Vec<u8>) -> (LayoutWriter, AddedImage) {
    let mut writer = LayoutWriter::new();
    let added = writer.add_image(&ImageSpec {
        gzip: false,
        ..spec(vec![layer])
    });
    writer.add_index_entry(IndexEntry::new(&added.manifest, &[]));
    (writer, added)
}

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_hostile_image_unpacks_without_host_exposure() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();

    // `dev/sda` b 8:0 0666 would give every host user the host's disk.
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Block);
    header.set_mode(0o666);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header.set_device_major(8).unwrap();
    header.set_device_minor(0).unwrap();
    layer
        .append_data(&mut header, "dev/sda", std::io::empty())
        .unwrap();
    let mut t = TarBuilder::new();
    t.file("usr/bin/rootshell", 0o4755, 0, 0, b"\x7fELF")
        .symlink("escape", outside.to_str().unwrap())
        .file(
            "escape/pwned",
            0o644,
            0,
            0,
            b"written through an absolute symlink",
        );
    let mut bytes = layer.into_inner().unwrap();
    bytes.truncate(bytes.len() - 1024); // drop the end-of-archive blocks
    bytes.extend(t.finish());
    let (writer, _) = one_layer_image(bytes);
    writer
        .write_tar(&tmp.path().join("image.tar"), true)
        .unwrap();

    let cache = ImageCache::new(tmp.path().join("cache")).unwrap();
    let image = OciImage::open(tmp.path().join("image.tar")).unwrap();
    let rootfs = cache.rootfs(&image).unwrap();

    assert!(fs::symlink_metadata(rootfs.join("dev/sda")).is_err());
    assert_eq!(mode(&rootfs.join("usr/bin/rootshell")), 0o755);
    assert_eq!(names(&outside), Vec::<String>::new(), "written outside");
    let inside = rootfs
        .join(outside.strip_prefix("/").unwrap())
        .join("pwned");
    assert!(inside.is_file(), "the write stayed in the rootfs");
    // The cache and its entry are private, so even what an image keeps is the unpacker's.
    assert_eq!(mode(cache.dir()), 0o700);
    assert_eq!(mode(rootfs.parent().unwrap()), 0o700);
    for entry in fs::read_dir(rootfs.join("dev")).unwrap() {
        let kind = entry.unwrap().file_type().unwrap();
        assert!(!kind.is_block_device() && !kind.is_char_device());
    }
}

#[test]
fn escaping_entries_fail_the_unpack_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = [
        (
            "dot-dot",
            b"../escaped".to_vec(),
            tar::EntryType::Regular,
            b"".to_vec(),
        ),
        (
            "shadow",
            b"etc/shadow-link".to_vec(),
            tar::EntryType::Link,
            b"/etc/shadow".to_vec(),
        ),
        (
            "climb",
            b"etc/up".to_vec(),
            tar::EntryType::Link,
            b"../../../../etc/shadow".to_vec(),
        ),
    ];
    for (label, name, kind, link) in layers {
        let mut t = TarBuilder::new();
        t.raw(kind, &name, &link, b"");
        let (writer, _) = one_layer_image(t.finish());
        let dir = tmp.path().join(label);
        fs::create_dir(&dir).unwrap();
        writer.write_dir(&dir.join("layout")).unwrap();
        let image = OciImage::open(dir.join("layout")).unwrap();
        let cache = ImageCache::new(dir.join("cache")).unwrap();
        let err = cache.rootfs(&image).unwrap_err();
        assert!(
            matches!(err, Error::UnsafeLayerEntry { .. }),
            "{label}: {err}"
        );
        assert!(
            names(cache.dir()).is_empty(),
            "{label}: {:?}",
            names(cache.dir())
        );
        assert_eq!(names(&dir), ["cache", "layout"], "{label}");
    }
}

#[test]
fn a_tampered_layer_is_refused_before_it_is_parsed() {
    let tmp = tempfile::tempdir().unwrap();
    // A layer the unpacker would refuse (`../escaped`), with one byte of its end-of-archive
    // padding changed: if the tar were parsed before the digest is checked, the entry would be
    // the error.
    let mut t = TarBuilder::new();
    t.raw(tar::EntryType::Regular, b"../escaped", b"", b"x");
    let (mut writer, added) = one_layer_image(t.finish());
    let blob = writer.blob_mut(&added.layers[0]);
    let last = blob.len() - 1;
    blob[last] = 1;
    writer.write_dir(&tmp.path().join("layout")).unwrap();
    writer
        .write_tar(&tmp.path().join("image.tar"), false)
        .unwrap();
    for path in ["layout", "image.tar"] {
        let image = OciImage::open(tmp.path().join(path)).unwrap();
        let err = image.unpack(&tmp.path().join("rootfs")).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{path}: {err}");
    }
    assert_eq!(names(tmp.path()), ["image.tar", "layout"]);
}

#[test]
fn a_blob_longer_than_its_descriptor_is_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let (writer, added) = single_image("v1");
    let dir = tmp.path().join("layout");
    writer.write_dir(&dir).unwrap();
    let hex = added.layers[0].digest().digest();
    let blob = dir.join(format!("blobs/sha256/{hex}"));
    let mut data = fs::read(&blob).unwrap();
    let size = data.len() as u64;
    data.extend(vec![0u8; 1 << 20]);
    fs::write(&blob, &data).unwrap();
    let image = OciImage::open(&dir).unwrap();
    let err = image.unpack(&tmp.path().join("rootfs")).unwrap_err();
    match &err {
        Error::SizeMismatch {
            expected, actual, ..
        } => assert_eq!((*expected, *actual), (size, size + (1 << 20))),
        other => panic!("{other}"),
    }
    assert!(err
        .to_string()
        .contains(&added.layers[0].digest().to_string()));
    // The same for a manifest, before it is parsed.
    let manifest = dir.join(format!("blobs/sha256/{}", added.manifest.digest().digest()));
    let mut data = fs::read(&manifest).unwrap();
    data.push(b' ');
    fs::write(&manifest, &data).unwrap();
    let err = OciImage::open(&dir).unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
}

#[test]
fn layout_files_must_be_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (writer, added) = single_image("v1");
    let dir = tmp.path().join("layout");
    writer.write_dir(&dir).unwrap();
    let blob = dir.join(format!(
        "blobs/sha256/{}",
        added.layers[0].digest().digest()
    ));
    // A symlink to the right bytes elsewhere: a layout never needs one, and following it
    // would let a layout make root read any host file.
    let elsewhere = tmp.path().join("elsewhere");
    fs::rename(&blob, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &blob).unwrap();
    let image = OciImage::open(&dir).unwrap();
    let err = image.unpack(&tmp.path().join("rootfs")).unwrap_err();
    assert!(matches!(err, Error::NotAnImageLayout { .. }), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    // A FIFO would block the open forever.
    fs::remove_file(&blob).unwrap();
    nix::unistd::mkfifo(&blob, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = image.unpack(&tmp.path().join("rootfs")).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn a_layer_blob_over_max_layer_bytes_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (writer, added) = single_image("v1");
    writer.write_dir(&tmp.path().join("layout")).unwrap();
    let limits = UnpackLimits {
        max_layer_bytes: 100,
        ..UnpackLimits::default()
    };
    let image = OciImage::open_with_limits(tmp.path().join("layout"), None, limits).unwrap();
    assert_eq!(image.unpack_limits().max_layer_bytes, 100);
    let err = image.unpack(&tmp.path().join("rootfs")).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            Error::UnpackLimit {
                limit: "max_layer_bytes",
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains(&added.layers[0].digest().to_string()),
        "{message}"
    );
    assert!(message.contains("its blob is"), "{message}");
}

#[test]
fn an_image_over_its_total_is_refused_naming_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let (writer, added) = single_image("v1");
    writer
        .write_tar(&tmp.path().join("image.tar"), false)
        .unwrap();
    let limits = UnpackLimits {
        // The first layer's stream fits, the second's does not.
        max_total_bytes: base_layer().len() as u64,
        ..UnpackLimits::default()
    };
    let image = OciImage::open_with_limits(tmp.path().join("image.tar"), None, limits).unwrap();
    let cache = ImageCache::new(tmp.path().join("cache")).unwrap();
    let err = cache.rootfs(&image).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            Error::UnpackLimit {
                limit: "max_total_bytes",
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains(&added.layers[1].digest().to_string()),
        "{message}"
    );
    assert!(names(cache.dir()).is_empty());
}

#[test]
fn a_gzipped_image_tarball_is_bounded_by_the_ratio_and_entry_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut writer, _) = single_image("v1");
    writer.add_blob(MediaType::ImageLayer, vec![0u8; 4 << 20]);
    let tgz = tmp.path().join("image.tar.gz");
    writer.write_tar(&tgz, true).unwrap();
    OciImage::open(&tgz).unwrap(); // within the defaults
    let limits = UnpackLimits {
        max_ratio: 10,
        ratio_floor_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let err = OciImage::open_with_limits(&tgz, None, limits).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            Error::UnpackLimit {
                limit: "max_ratio",
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains("image tarball") && message.contains("image.tar.gz"),
        "{message}"
    );

    let limits = UnpackLimits {
        max_entries: 3,
        ..UnpackLimits::default()
    };
    let err = OciImage::open_with_limits(&tgz, None, limits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnpackLimit {
                limit: "max_entries",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_tarball_scan_holds_at_most_its_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut writer, _) = single_image("v1");
    let fillers: Vec<Descriptor> = (0..18u8)
        .map(|i| {
            let mut data = vec![0u8; blobs::IN_MEMORY_LIMIT as usize];
            data[0] = i;
            writer.add_blob(MediaType::ImageLayer, data)
        })
        .collect();
    let tar = tmp.path().join("image.tar");
    writer.write_tar(&tar, false).unwrap();

    let image = OciImage::open(&tar).unwrap();
    let blobs::BlobStore::Tar { memory, sizes, .. } = &*image.store else {
        panic!("a tarball store");
    };
    let held: u64 = memory.values().map(|d| d.len() as u64).sum();
    assert!(held <= blobs::TARBALL_MEMORY_BUDGET, "{held}");
    assert_eq!(sizes.len(), 18 + 4, "every blob is known");
    // A small blob that was not kept is read again from the tarball, verified.
    let dropped = fillers
        .iter()
        .find(|d| !memory.contains_key(&blobs::blob_path(d.digest()).unwrap()))
        .expect("some filler was not kept");
    let data = image.store.read_verified(dropped, "config").unwrap();
    assert_eq!(data.len() as u64, blobs::IN_MEMORY_LIMIT);
    image.unpack(&tmp.path().join("rootfs")).unwrap();
    check_rootfs(&tmp.path().join("rootfs"));
}

#[test]
fn the_cache_directory_and_its_entries_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (writer, _) = single_image("v1");
    writer.write_dir(&tmp.path().join("layout")).unwrap();
    let image = OciImage::open(tmp.path().join("layout")).unwrap();

    let cache = ImageCache::new(tmp.path().join("a/b/cache")).unwrap();
    assert_eq!(mode(cache.dir()), 0o700);
    let rootfs = cache.rootfs(&image).unwrap();
    assert_eq!(mode(rootfs.parent().unwrap()), 0o700);

    // A cache made by an older kata-rs, world-readable: tightened, entries too.
    fs::set_permissions(cache.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(rootfs.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let cache = ImageCache::new(cache.dir()).unwrap();
    assert_eq!(mode(cache.dir()), 0o700);
    assert_eq!(mode(rootfs.parent().unwrap()), 0o700);

    // A cache another user owns could be changed under us: refused.
    if nix::unistd::geteuid().is_root() {
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
        let err = ImageCache::new(&theirs).unwrap_err();
        assert!(matches!(err, Error::UnsafeImageCache { .. }), "{err}");
        assert!(err.to_string().contains("uid 4242"), "{err}");
    }
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let err = ImageCache::new(&file).unwrap_err();
    assert!(matches!(err, Error::UnsafeImageCache { .. }), "{err}");
    assert!(err.to_string().contains("not a directory"), "{err}");
}
