//! containerd tier: the busybox test image is accepted by `ctr image import` and runs with runc.
//!
//! Starts a private containerd (its own root, state and socket in a temp dir) and stops it by
//! pid. Skips with a message when not root or when containerd, ctr or runc is missing.

use kata_testkit::containerd::Containerd;
use kata_testkit::image as testimage;

#[test]
fn containerd_imports_and_runs_the_busybox_image() {
    if let Some(reason) = kata_testkit::missing_root_or_tools(&["containerd", "ctr", "runc"]) {
        // `make test` installs every tool, and sets KATA_RS_VM_TEST_LOG: there, a missing tool
        // is a failure. A developer's plain `cargo test` without them only gets a loud skip.
        assert!(
            std::env::var_os("KATA_RS_VM_TEST_LOG").is_none(),
            "containerd import test cannot run under make test: {reason}"
        );
        eprintln!("SKIPPED (not under make test): {reason}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = testimage::busybox_image_tar(&tmp.path().join("busybox.tar")).unwrap();
    let containerd = Containerd::start(tmp.path(), None, None).expect("start containerd");

    containerd
        .ok(&["image", "import", image.path.to_str().unwrap()])
        .unwrap();
    let images = containerd.ok(&["image", "ls"]).unwrap();
    assert!(images.contains(testimage::IMAGE_NAME), "{images}");
    assert!(images.contains(&image.manifest_digest), "{images}");

    let output = containerd
        .ok(&[
            "run",
            "--rm",
            testimage::IMAGE_NAME,
            "kata-resource-import-test",
            "sh",
            "-c",
            "echo hello from $(id -un)",
        ])
        .unwrap();
    assert_eq!(output, "hello from root\n");
}
