//! The pod "pause" image for the CRI tests: what containerd's CRI plugin runs as every pod's
//! sandbox container (its `sandbox_image`), built locally since there is no registry here.
//!
//! The image holds the static busybox, `/bin/sh` and `/bin/sleep` on it, and `/pause`: a
//! shell script, its `Cmd`, that waits until SIGTERM or SIGINT and then exits 0 (as
//! Kubernetes' own pause binary does; it also reaps nothing: the pods here do not share a PID
//! namespace). Reproducible like the busybox image: fixed mtimes and owners, sorted entries.
//!
//! ```no_run
//! # fn main() -> Result<(), kata_testkit::image::Error> {
//! let image = kata_testkit::image::pause::pause_image_tar("/tmp/pause.tar".as_ref())?;
//! // ctr -n k8s.io image import /tmp/pause.tar; sandbox_image = image.name
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::path::Path;

use oci_spec::image::ANNOTATION_REF_NAME;

use super::layout::{ImageSpec, IndexEntry, LayoutWriter, TarBuilder};
use super::{
    read_static_busybox, staging_next_to, IoContext, Result, TestImage,
    ANNOTATION_CONTAINERD_IMAGE_NAME, IMAGE_PATH_ENV,
};

/// The pause image's full name (CRI's `sandbox_image`).
pub const PAUSE_IMAGE_NAME: &str = "localhost/kata-rs/pause:latest";
/// Its `org.opencontainers.image.ref.name` annotation.
pub const PAUSE_REF_NAME: &str = "latest";

/// The entrypoint: sleeps in the background and waits for it, so a trapped SIGTERM or SIGINT
/// runs at once (a shell runs traps only between commands); then ends the sleep and exits 0.
const PAUSE_SCRIPT: &str = "#!/bin/sh\n\
# kata-rs test pause: wait for SIGTERM or SIGINT, then exit 0.\n\
trap 'kill $! 2>/dev/null; exit 0' TERM INT\n\
while :; do\n\
\tsleep 3600 &\n\
\twait $!\n\
done\n";

/// Writes the pause image as an OCI image layout tarball (uncompressed) at `dest`, replacing
/// any file there; `ctr image import` takes it under [`PAUSE_IMAGE_NAME`].
pub fn pause_image_tar(dest: &Path) -> Result<TestImage> {
    let busybox = read_static_busybox()?;
    let mut layer = TarBuilder::new();
    for dir in ["bin", "dev", "etc", "proc", "sys"] {
        layer.dir(dir, 0o755, 0, 0);
    }
    layer
        .file("bin/busybox", 0o755, 0, 0, &busybox)
        .symlink("bin/sh", "busybox")
        .symlink("bin/sleep", "busybox")
        .file("pause", 0o755, 0, 0, PAUSE_SCRIPT.as_bytes())
        .dir("tmp", 0o1777, 0, 0);
    let mut writer = LayoutWriter::new();
    let added = writer.add_image(&ImageSpec {
        layers: vec![layer.finish()],
        gzip: true,
        cmd: vec!["/pause".to_owned()],
        env: vec![IMAGE_PATH_ENV.to_owned()],
        ..ImageSpec::default()
    });
    writer.add_index_entry(IndexEntry::new(
        &added.manifest,
        &[
            (ANNOTATION_CONTAINERD_IMAGE_NAME, PAUSE_IMAGE_NAME),
            (ANNOTATION_REF_NAME, PAUSE_REF_NAME),
        ],
    ));
    let staging = staging_next_to(dest)?;
    let tmp = staging.path().join("pause.tar");
    writer.write_tar(&tmp, false).at("write", &tmp)?;
    fs::rename(&tmp, dest).at("write", dest)?;
    Ok(TestImage {
        path: dest.to_owned(),
        name: PAUSE_IMAGE_NAME.to_owned(),
        ref_name: PAUSE_REF_NAME.to_owned(),
        manifest_digest: added.manifest.digest().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// The image is reproducible and its index names it for `ctr image import`.
    #[test]
    fn pause_image_is_reproducible_and_named() {
        if !Path::new(super::super::BUSYBOX_PATH).is_file() {
            eprintln!("skipped: no {}", super::super::BUSYBOX_PATH);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let a = pause_image_tar(&dir.path().join("a.tar")).unwrap();
        let b = pause_image_tar(&dir.path().join("b.tar")).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.name, PAUSE_IMAGE_NAME);
        let mut archive = tar::Archive::new(fs::File::open(&a.path).unwrap());
        let mut index = String::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("index.json") {
                std::io::Read::read_to_string(&mut entry, &mut index).unwrap();
            }
        }
        assert!(index.contains(PAUSE_IMAGE_NAME), "{index}");
    }

    /// The script waits until SIGTERM and then exits 0 at once (run on the host's busybox).
    #[test]
    fn pause_script_exits_0_on_sigterm() {
        let busybox = super::super::BUSYBOX_PATH;
        if !Path::new(busybox).is_file() {
            eprintln!("skipped: no {busybox}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("pause");
        fs::write(&script, PAUSE_SCRIPT).unwrap();
        let mut child = Command::new(busybox)
            .arg("sh")
            .arg(&script)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "pause ended by itself");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "SIGTERM ignored");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}
