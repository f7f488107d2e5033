//! The busybox test rootfs as a raw ext4 filesystem image, for block rootfs and block volume
//! tests: made with `mkfs.ext4 -d` (Debian's `e2fsprogs`) from the tree
//! [`busybox_rootfs`] writes, so no loop device and no mount are
//! needed. The image also holds [`MARKER_PATH`] with [`MARKER`], so a test can tell it reads
//! the disk. Built per test like the other fixtures (a 32 MiB image takes well under a second).
//!
//! ```no_run
//! # fn main() -> Result<(), kata_testkit::image::Error> {
//! kata_testkit::image::ext4::busybox_ext4("/tmp/rootfs.ext4".as_ref())?;
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::path::Path;
use std::process::Command;

use super::{busybox_rootfs, staging_next_to, Error, IoContext, Result};

/// Where the marker file is in the image.
pub const MARKER_PATH: &str = "/etc/kata-rs-disk";
/// What the marker file holds.
pub const MARKER: &str = "read from a virtio disk\n";
/// The image's size.
pub const IMAGE_MIB: u32 = 32;
/// The Debian package with `mkfs.ext4`.
pub const E2FSPROGS_PACKAGE: &str = "e2fsprogs";

/// Writes the busybox rootfs (with the marker) as an ext4 image at `dest`, which must not
/// exist.
pub fn busybox_ext4(dest: &Path) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        return Err(Error::DestinationExists {
            path: dest.to_owned(),
        });
    }
    let staging = staging_next_to(dest)?;
    let tree = staging.path().join("rootfs");
    busybox_rootfs(&tree)?;
    let marker = tree.join(MARKER_PATH.trim_start_matches('/'));
    fs::write(&marker, MARKER).at("write", &marker)?;
    let image = staging.path().join("rootfs.ext4");
    mkfs_ext4(&tree, &image, IMAGE_MIB)?;
    fs::rename(&image, dest).at("move the image to", dest)?;
    Ok(())
}

/// Runs `mkfs.ext4 -d <tree> <image> <mib>M` (root-owned files stay root's).
fn mkfs_ext4(tree: &Path, image: &Path, mib: u32) -> Result<()> {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args([
        "-q",
        "-F",
        "-L",
        "kata-rs-test",
        "-E",
        "root_owner=0:0",
        "-d",
    ])
    .arg(tree)
    .arg(image)
    .arg(format!("{mib}M"));
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: command.clone(),
        reason: format!("{e}; install Debian's {E2FSPROGS_PACKAGE}"),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_an_ext4_filesystem_of_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("rootfs.ext4");
        if let Err(e) = busybox_ext4(&img) {
            // No busybox-static or e2fsprogs here: say so rather than pass silently.
            panic!("cannot build the ext4 fixture: {e}");
        }
        assert_eq!(
            fs::metadata(&img).unwrap().len(),
            u64::from(IMAGE_MIB) << 20
        );
        // debugfs (e2fsprogs) reads the marker and busybox out of the image.
        let cat = Command::new("debugfs")
            .args(["-R", &format!("cat {MARKER_PATH}")])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), MARKER);
        let ls = Command::new("debugfs")
            .args(["-R", "stat /bin/busybox"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&ls.stdout).contains("User:     0"),
            "{}",
            String::from_utf8_lossy(&ls.stdout)
        );
        assert!(busybox_ext4(&img).is_err(), "an existing destination");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no staging left"
        );
    }
}
