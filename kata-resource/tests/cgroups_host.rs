//! Host tier: the sandbox's cgroups on this machine's real cgroup v1 hierarchy (root): made,
//! a real process moved in and out, removed, nothing left. Skips with a message when not root
//! or without a v1 `memory` hierarchy at /sys/fs/cgroup.

use std::path::Path;
use std::process::{Child, Command};

use kata_hypervisor::SharedFs;
use kata_resource::cgroups::CgroupsConfig;
use kata_resource::{Error, SandboxResources};
use kata_testkit::leaks::{cgroup_dirs, cgroup_of};
use oci_spec::runtime::{LinuxCpuBuilder, LinuxResources, LinuxResourcesBuilder};

fn skip() -> bool {
    let reason = kata_testkit::missing_root_or_tools(&[]).or_else(|| {
        (!Path::new("/sys/fs/cgroup/memory/cgroup.procs").is_file())
            .then(|| "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory".to_string())
    });
    if let Some(reason) = reason {
        assert!(
            std::env::var_os("KATA_RS_VM_TEST_LOG").is_none(),
            "host cgroup tests cannot run under make test: {reason}"
        );
        eprintln!("SKIPPED (not under make test): {reason}");
        return true;
    }
    false
}

/// A process that stands in for the VMM, killed on drop.
struct Sleeper(Child);

impl Sleeper {
    fn new() -> Sleeper {
        Sleeper(Command::new("sleep").arg("300").spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn resources() -> (tempfile::TempDir, SandboxResources) {
    let dir = tempfile::tempdir().unwrap();
    let r = SandboxResources::new(dir.path(), SharedFs::None, 8192).unwrap();
    (dir, r)
}

fn cpus(list: &str) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus(list).build().unwrap())
        .build()
        .unwrap()
}

fn unique(name: &str) -> String {
    format!("kata-rs-test-{name}-{}", std::process::id())
}

#[test]
fn a_real_process_joins_the_sandbox_cgroup_and_nothing_is_left() {
    if skip() {
        return;
    }
    let parent = unique("pod");
    let path = format!("/{parent}/sb1");
    let (_dir, mut r) = resources();
    r.set_up_cgroups(
        &CgroupsConfig::new("sb1")
            .cgroups_path(&path)
            .sandbox_cgroup_only(true),
    )
    .unwrap();
    assert!(cgroup_dirs(&path).len() >= 3, "{:?}", cgroup_dirs(&path));
    let vmm = Sleeper::new();
    r.add_vmm_pids(&[vmm.pid()]).unwrap();
    for c in ["memory", "cpu", "cpuset"] {
        assert_eq!(
            cgroup_of(vmm.pid(), c).as_deref(),
            Some(path.as_str()),
            "{c}"
        );
    }
    // A cpuset the host has, then one it refuses: the error names the field, the cgroup keeps
    // the one before.
    r.update_container_cgroups("c1", Some(&cpus("0"))).unwrap();
    let file = format!("/sys/fs/cgroup/cpuset{path}/cpuset.cpus");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "0");
    let err = r
        .update_container_cgroups("c1", Some(&cpus("4000")))
        .unwrap_err();
    assert!(matches!(err, Error::CgroupLimit { .. }), "{err}");
    assert!(
        err.to_string().contains("linux.resources.cpu.cpus"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "0");

    // Released while the process still runs: it is moved out first, then everything goes,
    // the parent this owner made included.
    r.release().unwrap();
    assert_eq!(cgroup_of(vmm.pid(), "memory").as_deref(), Some("/"));
    assert_eq!(cgroup_dirs(&path), Vec::<std::path::PathBuf>::new());
    assert_eq!(cgroup_dirs(&parent), Vec::<std::path::PathBuf>::new());
}

#[test]
fn the_overhead_cgroup_takes_the_helpers_and_is_removed_after_the_process_exits() {
    if skip() {
        return;
    }
    let id = unique("sb");
    let (_dir, mut r) = resources();
    r.set_up_cgroups(&CgroupsConfig::new(&id)).unwrap();
    let sandbox = format!("/kata_sandboxed_pod/{id}");
    let overhead = format!("/kata_overhead/{id}");
    let (vmm, helper) = (Sleeper::new(), Sleeper::new());
    r.add_vmm_pids(&[vmm.pid(), helper.pid()]).unwrap();
    assert_eq!(
        cgroup_of(vmm.pid(), "memory").as_deref(),
        Some(sandbox.as_str())
    );
    assert_eq!(
        cgroup_of(helper.pid(), "memory").as_deref(),
        Some(overhead.as_str())
    );
    let state = r.state();
    drop((vmm, helper));
    // Detached and cleaned up from the state, as after a crash.
    r.detach();
    assert!(!cgroup_dirs(&sandbox).is_empty());
    SandboxResources::cleanup(_dir.path(), Some(&state)).unwrap();
    assert_eq!(cgroup_dirs(&sandbox), Vec::<std::path::PathBuf>::new());
    assert_eq!(cgroup_dirs(&overhead), Vec::<std::path::PathBuf>::new());
}

/// An owner that dies after the host side is set up and before it wrote any state of its own
/// (the crash matrix's `boot` cell: the shim killed before `state.json`): the early record
/// lets cleanup find the cgroups, which lie outside the sandbox directory.
#[test]
fn cleanup_without_a_state_finds_the_cgroups_in_the_early_record() {
    if skip() {
        return;
    }
    // Its own id: the tests of this binary run at once, and another one's "sb" cgroups are
    // not this one's to remove (they collided in a CI run).
    let id = unique("early");
    let (dir, mut r) = resources();
    r.set_up_cgroups(&CgroupsConfig::new(&id)).unwrap();
    r.record_early().unwrap();
    let sandbox = format!("/kata_sandboxed_pod/{id}");
    let overhead = format!("/kata_overhead/{id}");
    assert!(!cgroup_dirs(&sandbox).is_empty());
    // A crash: nothing released, no state.
    std::mem::forget(r);
    SandboxResources::cleanup(dir.path(), None).unwrap();
    assert_eq!(cgroup_dirs(&sandbox), Vec::<std::path::PathBuf>::new());
    assert_eq!(cgroup_dirs(&overhead), Vec::<std::path::PathBuf>::new());
    assert!(
        !dir.path().join("resources.json").exists(),
        "the early record outlived its cleanup"
    );
}

#[test]
fn bad_input_names_the_field_and_leaves_no_cgroup() {
    if skip() {
        return;
    }
    let (_dir, mut r) = resources();
    let err = r
        .set_up_cgroups(&CgroupsConfig::new("sb1").cgroups_path("/../../etc/x"))
        .unwrap_err();
    assert!(err.to_string().contains("linux.cgroupsPath"), "{err}");

    // The unified mount of this hybrid host has no controller: refused naming one.
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").is_file() {
        let parent = unique("nocontroller");
        let err = r
            .set_up_cgroups(
                &CgroupsConfig::new("sb1")
                    .cgroups_path(format!("/{parent}/sb1"))
                    .root("/sys/fs/cgroup/unified"),
            )
            .unwrap_err();
        assert!(matches!(err, Error::CgroupController { .. }), "{err}");
        assert!(err.to_string().contains("controller cpu "), "{err}");
        assert!(!Path::new("/sys/fs/cgroup/unified").join(&parent).exists());
    }
    // Nothing was made: release has nothing to do.
    assert!(r.state().cgroups.root.is_none());
    r.release().unwrap();
}
