//! Image input (kata-resource): a layer applied to a rootfs, an image tarball opened and
//! unpacked. Both run in a fresh temporary directory; after either, nothing may exist beside
//! the rootfs (an entry that escaped it would show up there).

use std::path::Path;

use kata_resource::rootfs::image::{fuzzing, OciImage};

/// One layer blob applied to an empty rootfs.
pub fn layer(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("the rootfs directory");
    let _ = fuzzing::apply_layer_bytes(&root, data);
    assert_only(dir.path(), &["rootfs"]);
}

/// An image tarball (gzipped or not) opened and, if it opens, unpacked.
pub fn layout(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tarball = dir.path().join("image.tar");
    std::fs::write(&tarball, data).expect("writing the image");
    if let Ok(image) = OciImage::open_with_limits(&tarball, None, fuzzing::limits()) {
        let _ = image.unpack(&dir.path().join("rootfs"));
    }
    // A failed unpack leaves no rootfs (nor a staging directory) behind.
    let left: Vec<_> = names(dir.path());
    assert!(
        left == ["image.tar"] || left == ["image.tar", "rootfs"],
        "left behind: {left:?}"
    );
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn assert_only(dir: &Path, expected: &[&str]) {
    let left = names(dir);
    assert_eq!(left, expected, "something was written outside the rootfs");
}
