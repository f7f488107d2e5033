//! VM templating (`enable_template`) refusals on this host, without a guest: the QEMU
//! backend templates only with the kernel's vhost-vsock (the nested lab proves the clones:
//! lab check `qemu-template`), the built-in VMM takes it (lab check `builtin-template`), and
//! every other hypervisor refuses the key.

use kata_hypervisor::config::{HypervisorType, SharedFs};
use kata_sandbox::Sandbox;

/// A templating builder (virtio-9p, which a template can carry) rooted in `root`.
fn templating(root: &std::path::Path, template: &std::path::Path) -> kata_sandbox::SandboxBuilder {
    let builder = Sandbox::builder().memory_mib(256).root_dir(root);
    let mut hv = builder.config().clone();
    hv.shared_fs = SharedFs::Virtio9p;
    hv.factory.enable_template = true;
    hv.factory.template_path = template.display().to_string();
    builder.hypervisor_config(hv)
}

#[test]
fn a_hypervisor_other_than_qemu_and_the_builtin_vmm_refuses_enable_template_naming_it() {
    // The built-in VMM templates (its snapshot restore; lab check `builtin-template`).
    let b = Sandbox::builder().hypervisor(HypervisorType::Dragonball);
    let mut hv = b.config().clone();
    hv.factory.enable_template = true;
    assert!(b.hypervisor_config(hv).finish().is_ok());
    let b = Sandbox::builder().hypervisor(HypervisorType::CloudHypervisor);
    let mut hv = b.config().clone();
    hv.factory.enable_template = true;
    let e = b.hypervisor_config(hv).finish().unwrap_err().to_string();
    assert!(
        e.contains("enable_template") && e.contains("built-in VMM only"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_without_kernel_vhost_vsock_refuses_the_template_naming_hybrid_vsock() {
    if std::path::Path::new("/dev/vhost-vsock").exists() {
        eprintln!("this host has /dev/vhost-vsock: the refusal is for hosts without it; skipped");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let template = work.path().join("template");
    let e = templating(&root, &template)
        .id("template-refused")
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vhost-user-vsock") && e.contains("modprobe vhost_vsock"),
        "{e}"
    );
    // Nothing left: no sandbox directory, no template made.
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!template.exists(), "a template directory was made");
}

/// virtio-fs (the default shared fs) is templated now (the share is hot-plugged after the
/// restore): on this host a templating sandbox with it is refused for the hybrid vsock only,
/// and on a machine without PCIe root ports for that, naming machine_type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtio_fs_is_templated_on_q35_and_refused_naming_machine_type_elsewhere() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let template = work.path().join("template");
    let virtio_fs = |machine: &str| {
        let b = templating(&root, &template);
        let mut hv = b.config().clone();
        hv.shared_fs = SharedFs::VirtioFs;
        hv.machine_type = machine.into();
        b.hypervisor_config(hv)
    };
    let e = virtio_fs("microvm")
        .id("template-fs-microvm")
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("machine_type") && e.contains("virtio-fs"), "{e}");
    if !std::path::Path::new("/dev/vhost-vsock").exists() {
        let e = virtio_fs("q35")
            .id("template-fs-q35")
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vhost-user-vsock") && !e.contains("virtio-fs"),
            "virtio-fs is refused still: {e}"
        );
    }
    assert!(!template.exists(), "a template directory was made");
}
