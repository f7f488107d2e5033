//! Tier 1: the sandbox's cgroups on fixtures (temp dirs laid out like cgroupfs v1 and v2, the
//! kernel's part emulated by `hierarchy::fixture`). The real v1 hierarchy is in
//! `tests/cgroups_host.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxCpuBuilder, LinuxResources, LinuxResourcesBuilder};

use super::hierarchy::fixture;
use super::*;

const V1: [&str; 5] = ["cpu", "cpuacct", "cpuset", "memory", "pids"];
const V2: [&str; 5] = ["cpuset", "cpu", "io", "memory", "pids"];

fn v1_root() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fixture::lay_out(tmp.path(), false, &V1);
    tmp
}

fn v2_root() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fixture::lay_out(tmp.path(), true, &V2);
    tmp
}

fn config(root: &Path, path: Option<&str>, only: bool) -> CgroupsConfig {
    let c = CgroupsConfig::new("sb1")
        .root(root)
        .sandbox_cgroup_only(only);
    match path {
        Some(p) => c.cgroups_path(p),
        None => c,
    }
}

fn set_up(config: &CgroupsConfig) -> Result<CgroupsSlot> {
    let mut slot = CgroupsSlot::default();
    slot.set_up_on(config, Fs::Fixture)?;
    Ok(slot)
}

/// Every directory and file under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_owned());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn read(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p).unwrap().trim().to_owned()
}

fn procs(dir: impl AsRef<Path>) -> String {
    read(dir.as_ref().join("cgroup.procs"))
}

fn cpus(cpus: &str) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus(cpus).build().unwrap())
        .build()
        .unwrap()
}

#[test]
fn v1_sandbox_cgroup_only_holds_the_vmm_and_its_helpers() {
    let tmp = v1_root();
    let root = tmp.path();
    let before = tree(root);
    let mut slot = set_up(&config(root, Some("/default/sb1"), true)).unwrap();
    for c in V1 {
        assert!(root.join(c).join("default/sb1").is_dir(), "{c}");
    }
    assert!(
        !root.join("memory/kata_overhead").exists(),
        "no overhead cgroup"
    );
    // A new cpuset gets its parent's CPUs and nodes, or nothing could join it.
    assert_eq!(read(root.join("cpuset/default/sb1/cpuset.cpus")), "0-3");
    assert_eq!(read(root.join("cpuset/default/sb1/cpuset.mems")), "0");

    slot.add_vmm_pids(&[4242, 4343]).unwrap();
    for c in V1 {
        assert_eq!(procs(root.join(c).join("default/sb1")), "4242\n4343", "{c}");
    }
    let state = slot.state();
    assert_eq!(state.sandbox, Path::new("default/sb1"));
    assert_eq!(state.version, Some(CgroupVersion::V1));
    assert_eq!(state.vmm_pid, Some(4242));
    assert_eq!(
        state.made.len(),
        2 * V1.len(),
        "default and default/sb1 in each hierarchy"
    );

    // Release: the VMM still there is moved to the root cgroup first.
    slot.release_in_place().unwrap();
    assert_eq!(procs(root.join("memory")), "4242\n4343");
    fs::write(root.join("memory/cgroup.procs"), "").unwrap();
    let mut after = tree(root);
    after.retain(|p| !before.contains(p));
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[test]
fn cgroups_made_below_the_sandbox_by_what_runs_in_it_are_removed_too() {
    // What runs inside (an agent on the host, a VMM with its own sub-cgroups) may make
    // cgroups below ours; the kernel refuses to remove a cgroup with children (before: the
    // release failed with EBUSY and left kata_overhead/<id>/kata-agent behind).
    let tmp = v1_root();
    let root = tmp.path();
    let before = tree(root);
    let mut slot = set_up(&config(root, None, false)).unwrap();
    slot.add_vmm_pids(&[4242, 4343]).unwrap();
    for c in V1 {
        let nested = root.join(c).join("kata_overhead/sb1/kata-agent/c1");
        fs::create_dir_all(&nested).unwrap();
        fs::write(nested.join("cgroup.procs"), "77\n").unwrap();
        fs::write(nested.parent().unwrap().join("cgroup.procs"), "").unwrap();
    }
    slot.release_in_place().unwrap();
    for c in V1 {
        let root_procs = procs(root.join(c));
        assert!(root_procs.lines().any(|p| p == "77"), "{c}: {root_procs}");
        fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
    }
    let mut after = tree(root);
    after.retain(|p| !before.contains(p));
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[test]
fn v1_overhead_cgroup_holds_the_helpers_and_the_sandbox_cgroup_the_vmm() {
    let tmp = v1_root();
    let root = tmp.path();
    let before = tree(root);
    let mut slot = set_up(&config(root, None, false)).unwrap();
    let sandbox = Path::new("kata_sandboxed_pod/sb1");
    let overhead = Path::new("kata_overhead/sb1");
    assert!(root.join("cpu").join(sandbox).is_dir());
    assert!(root.join("cpu").join(overhead).is_dir());
    // 4242 has no thread named `CPU n/...` (not a QEMU here): the whole VMM is constrained.
    slot.add_vmm_pids(&[4242, 4343]).unwrap();
    assert_eq!(procs(root.join("memory").join(sandbox)), "4242");
    assert_eq!(procs(root.join("memory").join(overhead)), "4343");
    // Idempotent on updates (vCPUs plugged since are moved again).
    slot.update_container("c1", None).unwrap();
    assert_eq!(procs(root.join("memory").join(sandbox)), "4242");
    assert_eq!(slot.state().overhead.as_deref(), Some(overhead));

    for c in V1 {
        fs::write(root.join(c).join(sandbox).join("cgroup.procs"), "").unwrap();
        fs::write(root.join(c).join(overhead).join("cgroup.procs"), "").unwrap();
    }
    drop(slot);
    let mut after = tree(root);
    after.retain(|p| !before.contains(p));
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[test]
fn v1_a_handed_over_vmm_moves_to_the_pods_cgroups_and_the_old_ones_go() {
    let tmp = v1_root();
    let root = tmp.path();
    let before = tree(root);
    // The VM cache's sandbox, in Kata's default cgroups for its id.
    let mut slot = set_up(&config(root, None, false)).unwrap();
    slot.add_vmm_pids(&[4242, 4343]).unwrap();
    // A bad path for the pod: refused, the VMM stays where it was, nothing new is made.
    let bad = CgroupsConfig::new("pod")
        .root(root)
        .cgroups_path("/k8s/../../pod");
    let e = slot
        .move_to_on(&bad, &[4242, 4343], Fs::Fixture)
        .unwrap_err();
    assert!(e.to_string().contains(".."), "{e}");
    assert_eq!(procs(root.join("memory/kata_sandboxed_pod/sb1")), "4242");
    assert_eq!(procs(root.join("memory/kata_overhead/sb1")), "4343");
    assert!(!root.join("memory/k8s").exists());
    // The pod's: made, the VMM and its helper moved in, the cache's removed.
    let pod = CgroupsConfig::new("pod")
        .root(root)
        .cgroups_path("/k8s/pod");
    slot.move_to_on(&pod, &[4242, 4343], Fs::Fixture).unwrap();
    for c in V1 {
        assert!(!root.join(c).join("kata_sandboxed_pod/sb1").exists(), "{c}");
        assert!(!root.join(c).join("kata_overhead/sb1").exists(), "{c}");
    }
    assert_eq!(procs(root.join("memory/k8s/pod")), "4242");
    assert_eq!(procs(root.join("memory/kata_overhead/pod")), "4343");
    assert_eq!(slot.state().sandbox, Path::new("k8s/pod"));
    for c in V1 {
        fs::write(root.join(c).join("k8s/pod/cgroup.procs"), "").unwrap();
        fs::write(root.join(c).join("kata_overhead/pod/cgroup.procs"), "").unwrap();
    }
    drop(slot);
    let mut after = tree(root);
    after.retain(|p| !before.contains(p));
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[test]
fn v2_systemd_path_is_expanded_and_controllers_are_delegated() {
    let tmp = v2_root();
    let root = tmp.path();
    let before = tree(root);
    let mut slot = set_up(&config(
        root,
        Some("kubepods-burstable-pod1_2.slice:cri-containerd:abc"),
        false,
    ))
    .unwrap();
    let base = root.join(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/\
         cri-containerd-abc.scope",
    );
    assert!(base.join("sandbox").is_dir());
    assert!(base.join("overhead").is_dir());
    for dir in [
        root.to_owned(),
        base.clone(),
        base.parent().unwrap().to_owned(),
    ] {
        let enabled = read(dir.join("cgroup.subtree_control"));
        assert_eq!(enabled, "cpu cpuset memory pids", "{}", dir.display());
    }
    assert_eq!(
        read(base.join("sandbox/cgroup.controllers")),
        "cpu cpuset memory pids"
    );

    slot.add_vmm_pids(&[7, 8]).unwrap();
    assert_eq!(procs(base.join("sandbox")), "7", "v2: the whole VMM");
    assert_eq!(procs(base.join("overhead")), "8");
    // An empty cpuset inherits the parent's on v2.
    slot.update_container("c1", Some(&cpus("1,0"))).unwrap();
    assert_eq!(read(base.join("sandbox/cpuset.cpus")), "0-1");
    slot.remove_container("c1").unwrap();
    assert_eq!(read(base.join("sandbox/cpuset.cpus")), "");

    fs::write(base.join("sandbox/cgroup.procs"), "").unwrap();
    fs::write(base.join("overhead/cgroup.procs"), "").unwrap();
    slot.release_in_place().unwrap();
    let mut after = tree(root);
    after.retain(|p| !before.contains(p));
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[test]
fn cpusets_of_the_containers_constrain_the_sandbox_cgroup() {
    let tmp = v1_root();
    let root = tmp.path();
    let mut slot = set_up(&config(root, Some("/pod/sb1"), true)).unwrap();
    let file = root.join("cpuset/pod/sb1/cpuset.cpus");
    slot.update_container("c1", Some(&cpus("1"))).unwrap();
    assert_eq!(read(&file), "1");
    slot.update_container("c2", Some(&cpus("2-3"))).unwrap();
    assert_eq!(read(&file), "1-3");
    // An update replaces the container's own.
    slot.update_container("c1", Some(&cpus("3"))).unwrap();
    assert_eq!(read(&file), "2-3");
    assert_eq!(slot.state().containers["c1"].cpus, "3");

    // A malformed list is refused naming the field; nothing changes.
    let err = slot.update_container("c1", Some(&cpus("x-1"))).unwrap_err();
    assert!(
        err.to_string().contains("linux.resources.cpu.cpus"),
        "{err}"
    );
    assert_eq!(read(&file), "2-3");
    assert_eq!(slot.state().containers["c1"].cpus, "3");

    // A value the host refuses (here: a control file that cannot be written) names the
    // field, and the record and the file stay as they were.
    let mems = root.join("cpuset/pod/sb1/cpuset.mems");
    fs::remove_file(&mems).unwrap();
    fs::create_dir(&mems).unwrap();
    let err = slot.update_container("c3", Some(&cpus("0"))).unwrap_err();
    assert!(matches!(err, Error::CgroupLimit { .. }), "{err}");
    assert!(
        err.to_string().contains("linux.resources.cpu.mems"),
        "{err}"
    );
    assert!(!slot.state().containers.contains_key("c3"));
    assert_eq!(read(&file), "2-3");
    fs::remove_dir(&mems).unwrap();
    fs::write(&mems, "0").unwrap();

    // Removing the containers gives the parent's CPUs back.
    slot.remove_container("c1").unwrap();
    slot.remove_container("c2").unwrap();
    assert_eq!(read(&file), "0-3");
}

#[test]
fn bad_input_is_refused_naming_the_field_and_leaves_nothing() {
    let tmp = v1_root();
    let root = tmp.path();
    let before = tree(root);
    for bad in ["/default/../../../etc", "a--b.slice:p:n", "/"] {
        let err = set_up(&config(root, Some(bad), false)).unwrap_err();
        assert!(
            err.to_string().contains("linux.cgroupsPath"),
            "{bad}: {err}"
        );
        assert_eq!(tree(root), before, "{bad}");
    }

    // A controller missing: v1 without memory, v2 without cpuset.
    let tmp = tempfile::tempdir().unwrap();
    fixture::lay_out(tmp.path(), false, &["cpu", "cpuset", "pids"]);
    let before = tree(tmp.path());
    let err = set_up(&config(tmp.path(), Some("/default/sb1"), true)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::CgroupController { .. }), "{text}");
    assert!(
        text.contains("controller memory") && text.contains("linux.cgroupsPath"),
        "{text}"
    );
    assert_eq!(tree(tmp.path()), before);

    let tmp = tempfile::tempdir().unwrap();
    fixture::lay_out(tmp.path(), true, &["cpu", "memory"]);
    let before = tree(tmp.path());
    let err = set_up(&config(tmp.path(), None, true)).unwrap_err();
    assert!(err.to_string().contains("controller cpuset"), "{err}");
    assert_eq!(tree(tmp.path()), before);

    // A failure half-way (the pids hierarchy refuses the new cgroup) undoes what was made.
    let tmp = v1_root();
    let root = tmp.path();
    fs::write(root.join("pids/default"), "a file where the cgroup goes").unwrap();
    let before = tree(root);
    let err = set_up(&config(root, Some("/default/sb1"), true)).unwrap_err();
    assert!(matches!(err, Error::Cgroup { .. }), "{err}");
    assert_eq!(tree(root), before);
}

#[test]
fn detach_adopt_and_cleanup_from_the_state() {
    let tmp = v1_root();
    let root = tmp.path();
    let before = tree(root);
    let mut slot = set_up(&config(root, Some("/default/sb1"), false)).unwrap();
    slot.add_vmm_pids(&[99]).unwrap();
    slot.update_container("c1", Some(&cpus("2"))).unwrap();
    let state = slot.state();
    slot.detach();
    assert!(root.join("memory/default/sb1").is_dir(), "detach leaves it");

    // The state survives JSON (state.json).
    let json = serde_json::to_string(&state).unwrap();
    let state: CgroupsState = serde_json::from_str(&json).unwrap();
    let adopted = CgroupsSlot::adopt_on(&state, Fs::Fixture).unwrap();
    assert_eq!(adopted.state(), state);
    adopted.detach();

    // Cleanup refuses to move processes: a cgroup the VMM is still in fails naming it.
    let err = CgroupsSlot::cleanup_on(&state, Fs::Fixture).unwrap_err();
    assert!(err.to_string().contains("default/sb1"), "{err}");
    for c in V1 {
        fs::write(root.join(c).join("default/sb1/cgroup.procs"), "").unwrap();
    }
    CgroupsSlot::cleanup_on(&state, Fs::Fixture).unwrap();
    assert_eq!(tree(root), before);
    // Gone: nothing to adopt; cleanup again is fine.
    let err = CgroupsSlot::adopt_on(&state, Fs::Fixture).unwrap_err();
    assert!(matches!(err, Error::NotAdoptable { .. }), "{err}");
    CgroupsSlot::cleanup_on(&state, Fs::Fixture).unwrap();

    // A state written before the slot existed has nothing.
    let empty: CgroupsState = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, CgroupsState::default());
    CgroupsSlot::cleanup_on(&empty, Fs::Fixture).unwrap();
}

#[test]
fn a_recorded_state_cannot_name_directories_outside_the_root() {
    let tmp = v1_root();
    let root = tmp.path();
    let outside = tempfile::tempdir().unwrap();
    let mut slot = set_up(&config(root, Some("/default/sb1"), true)).unwrap();
    let mut state = slot.state();
    slot.release_in_place().unwrap();

    state.made.push(outside.path().to_owned());
    let err = CgroupsSlot::cleanup_on(&state, Fs::Fixture).unwrap_err();
    assert!(matches!(err, Error::PathNotWithin { .. }), "{err}");
    assert!(outside.path().is_dir());

    state.made.pop();
    state.sandbox = PathBuf::from("../../x");
    let err = CgroupsSlot::cleanup_on(&state, Fs::Fixture).unwrap_err();
    assert!(err.to_string().contains("linux.cgroupsPath"), "{err}");
}

fn tasks(dir: impl AsRef<Path>) -> String {
    read(dir.as_ref().join("tasks"))
}

#[test]
fn v1_an_in_process_vmm_s_vcpu_threads_go_in_alone_and_back_home() {
    let tmp = v1_root();
    let root = tmp.path();
    // The runtime's process sits in /runtime in each hierarchy.
    for c in V1 {
        let dir = root.join(c).join("runtime");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        fs::write(dir.join("tasks"), "900\n901\n902\n903\n").unwrap();
    }
    let proc_cgroup = "5:pids:/runtime\n4:memory:/runtime\n3:cpuset:/runtime\n\
                       2:cpu,cpuacct:/runtime\n1:name=systemd:/runtime\n";
    let mut slot = set_up(&config(root, None, false)).unwrap();
    slot.add_vmm_threads_of(900, proc_cgroup, &[901, 902], &[903])
        .unwrap();
    let sandbox = Path::new("kata_sandboxed_pod/sb1");
    for c in V1 {
        assert_eq!(
            tasks(root.join(c).join(sandbox)),
            "901\n902",
            "{c}: the vCPUs"
        );
        assert_eq!(
            tasks(root.join(c).join("kata_overhead/sb1")),
            "903",
            "{c}: the device thread"
        );
        assert_eq!(
            tasks(root.join(c).join("runtime")),
            "900",
            "{c}: the rest stays"
        );
    }
    slot.release_in_place().unwrap();
    for c in V1 {
        assert_eq!(
            tasks(root.join(c).join("runtime")),
            "900\n901\n902\n903",
            "{c}: back home, not in the root cgroup"
        );
        assert_eq!(tasks(root.join(c)), "", "{c}");
        assert!(!root.join(c).join(sandbox).exists());
    }
}

#[test]
fn v1_sandbox_cgroup_only_takes_the_device_threads_too() {
    let tmp = v1_root();
    let root = tmp.path();
    let mut slot = set_up(&config(root, Some("/default/sb1"), true)).unwrap();
    slot.add_vmm_threads_of(900, "1:cpu,cpuacct,cpuset,memory,pids:/\n", &[901], &[903])
        .unwrap();
    for c in V1 {
        assert_eq!(tasks(root.join(c).join("default/sb1")), "901\n903", "{c}");
    }
    slot.release_in_place().unwrap();
    assert_eq!(tasks(root.join("memory")), "901\n903");
}

#[test]
fn v2_an_in_process_vmm_s_process_joins_the_sandbox_cgroup_and_goes_back() {
    let tmp = v2_root();
    let root = tmp.path();
    fs::create_dir_all(root.join("runtime")).unwrap();
    fs::write(root.join("runtime/cgroup.procs"), "910\n").unwrap();
    let mut slot = set_up(&config(root, None, false)).unwrap();
    slot.add_vmm_threads_of(910, "0::/runtime\n", &[911], &[912])
        .unwrap();
    assert_eq!(procs(root.join("kata_sandboxed_pod/sb1/sandbox")), "910");
    assert_eq!(procs(root.join("runtime")), "");
    // A second in-process sandbox of the same process leaves it where the first put it.
    let mut other = set_up(&CgroupsConfig::new("sb2").root(root)).unwrap();
    other
        .add_vmm_threads_of(910, "0::/kata_sandboxed_pod/sb1/sandbox\n", &[913], &[914])
        .unwrap();
    assert_eq!(procs(root.join("kata_sandboxed_pod/sb2/sandbox")), "");
    other.release_in_place().unwrap();
    assert_eq!(procs(root.join("kata_sandboxed_pod/sb1/sandbox")), "910");
    slot.release_in_place().unwrap();
    assert_eq!(procs(root.join("runtime")), "910", "back home");
    assert_eq!(procs(root), "", "not to the root cgroup");
    assert!(!root.join("kata_sandboxed_pod").exists());
}

#[test]
fn a_process_cgroup_file_without_the_hierarchy_fails_naming_it_and_moves_nothing() {
    let tmp = v1_root();
    let root = tmp.path();
    let mut slot = set_up(&config(root, None, true)).unwrap();
    let err = slot
        .add_vmm_threads_of(900, "0::/\n", &[901], &[])
        .unwrap_err();
    assert!(err.to_string().contains("/proc/self/cgroup"), "{err}");
    assert_eq!(tasks(root.join("cpu/kata_sandboxed_pod/sb1")), "");
    slot.release_in_place().unwrap();
}

#[test]
fn v1_a_thread_move_that_fails_halfway_puts_the_moved_threads_back() {
    let tmp = v1_root();
    let root = tmp.path();
    for c in V1 {
        let dir = root.join(c).join("runtime");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        fs::write(dir.join("tasks"), "901\n903\n").unwrap();
    }
    let proc_cgroup = "1:cpu,cpuacct,cpuset,memory,pids:/runtime\n";
    let mut slot = set_up(&config(root, None, false)).unwrap();
    // The overhead cgroup's memory `tasks` refuses the device thread.
    fs::remove_file(root.join("memory/kata_overhead/sb1/tasks")).unwrap();
    let err = slot
        .add_vmm_threads_of(900, proc_cgroup, &[901], &[903])
        .unwrap_err();
    assert!(err.to_string().contains("move thread 903"), "{err}");
    for c in V1 {
        assert_eq!(
            tasks(root.join(c).join("kata_sandboxed_pod/sb1")),
            "",
            "{c}: the vCPU went back"
        );
        assert_eq!(tasks(root.join(c).join("runtime")), "901\n903", "{c}");
    }
    fs::write(root.join("memory/kata_overhead/sb1/tasks"), "").unwrap();
    slot.release_in_place().unwrap();
}
