//! What a snapshot does without KVM: the memory file, the config check, the state file.

use std::os::unix::fs::FileExt as _;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::memory::GuestRam;

fn config() -> SnapshotConfig {
    SnapshotConfig {
        vcpus: 1,
        max_vcpus: 2,
        memory_mib: 64,
        kernel: "/k".into(),
        initramfs: Some("/i".into()),
        cmdline: "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5".into(),
        devices: vec![26, 19],
    }
}

/// A snapshot of no vCPU and no device (enough for the files).
fn empty_snapshot() -> Snapshot {
    Snapshot {
        format: FORMAT,
        config: SnapshotConfig {
            max_vcpus: 0,
            devices: Vec::new(),
            ..config()
        },
        vm: VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        },
        vcpus: Vec::new(),
        serial: SerialSnapshot::from(vm_superio::serial::SerialState::default()),
        devices: Vec::new(),
    }
}

#[test]
fn the_files_replace_a_stale_snapshot_and_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // An earlier snapshot's state and a crash's partial files.
    std::fs::write(dir.path().join(STATE_FILE), b"stale").unwrap();
    std::fs::write(dir.path().join("memory.partial"), b"crash").unwrap();
    std::fs::write(dir.path().join("state.partial"), b"crash").unwrap();
    let ram = GuestRam::new("t", 64).unwrap();
    let snap = empty_snapshot();
    snap.write(dir.path(), ram.memfd(), ram.size()).unwrap();
    assert_eq!(Snapshot::read(dir.path()).unwrap().config, snap.config);
    for name in [STATE_FILE, MEMORY_FILE] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    assert!(!dir.path().join("memory.partial").exists());
    assert!(!dir.path().join("state.partial").exists());
}

#[test]
fn a_failed_write_leaves_no_partial_file_and_no_state() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), b"stale").unwrap();
    let ram = GuestRam::new("t", 64).unwrap();
    // Asked for more memory than the memfd holds: reading guest memory fails.
    let e = empty_snapshot()
        .write(dir.path(), ram.memfd(), ram.size() * 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("reading guest memory"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_restore_with_another_configuration_is_refused_naming_the_setting() {
    let saved = config();
    assert_eq!(saved.difference(&saved), None);
    type Change = fn(&mut SnapshotConfig);
    let cases: [(&str, Change); 7] = [
        ("default_memory", |c| c.memory_mib = 128),
        ("default_vcpus", |c| c.vcpus = 2),
        ("default_maxvcpus", |c| c.max_vcpus = 4),
        ("kernel", |c| c.kernel = "/other".into()),
        ("initrd", |c| c.initramfs = None),
        ("device set", |c| c.devices = vec![19]),
        ("kernel_params", |c| c.cmdline.push_str(" quiet")),
    ];
    for (key, change) in cases {
        let mut ours = config();
        change(&mut ours);
        let why = ours.difference(&saved).expect(key);
        assert!(why.contains(key), "{key}: {why}");
    }
}

#[test]
fn memory_is_saved_sparse_and_a_restored_vm_maps_it_private() {
    let dir = tempfile::tempdir().unwrap();
    let ram = GuestRam::new("t", 64).unwrap();
    ram.memory()
        .write_slice(b"template", GuestAddress(0x2000))
        .unwrap();
    ram.memory()
        .write_slice(b"end", GuestAddress((64 << 20) - 3))
        .unwrap();
    let written = empty_snapshot()
        .write(dir.path(), ram.memfd(), ram.size())
        .unwrap();
    assert_eq!(written, 2 * 4096, "only the two touched pages are written");
    let file = std::fs::File::open(dir.path().join(MEMORY_FILE)).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), 64 << 20);
    use std::os::unix::fs::MetadataExt as _;
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "holes: {} blocks",
        meta.blocks()
    );

    let a =
        GuestRam::private_from_snapshot(open_memory(dir.path(), 64 << 20).unwrap(), 64).unwrap();
    let b =
        GuestRam::private_from_snapshot(open_memory(dir.path(), 64 << 20).unwrap(), 64).unwrap();
    let mut buf = [0u8; 8];
    a.memory()
        .read_slice(&mut buf, GuestAddress(0x2000))
        .unwrap();
    assert_eq!(&buf, b"template");
    // A write is the writer's own: not in the file, not in the other VM.
    a.memory()
        .write_slice(b"clone-a!", GuestAddress(0x2000))
        .unwrap();
    b.memory()
        .read_slice(&mut buf, GuestAddress(0x2000))
        .unwrap();
    assert_eq!(&buf, b"template");
    file.read_exact_at(&mut buf, 0x2000).unwrap();
    assert_eq!(&buf, b"template");
    a.memory()
        .read_slice(&mut buf, GuestAddress(0x2000))
        .unwrap();
    assert_eq!(&buf, b"clone-a!");

    // A VM of another size is refused, naming the damage.
    let e = open_memory(dir.path(), 128 << 20).unwrap_err().to_string();
    assert!(e.contains("67108864") && e.contains("134217728"), "{e}");
    assert!(!dir.path().join(format!("{MEMORY_FILE}.partial")).exists());
}

#[test]
fn a_state_file_that_is_damaged_or_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), b"{\"format\": 1").unwrap();
    let e = Snapshot::read(dir.path()).unwrap_err().to_string();
    assert!(e.contains("is not a snapshot state"), "{e}");
    let e = Snapshot::read(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("reading the state file"), "{e}");
}

#[test]
fn the_state_of_chips_and_serial_survives_the_file() {
    // The kvm-bindings types go through serde as their bytes.
    let mut vm = VmState {
        pic_master: Default::default(),
        pic_slave: Default::default(),
        ioapic: Default::default(),
        pit: Default::default(),
        clock: Default::default(),
    };
    vm.clock.clock = 123_456_789;
    vm.ioapic.chip_id = 2;
    let serial = SerialSnapshot::from(vm_superio::serial::SerialState::default());
    let json = serde_json::to_string(&(vm, &serial)).unwrap();
    let (back, serial_back): (VmState, SerialSnapshot) = serde_json::from_str(&json).unwrap();
    assert_eq!(back.clock.clock, 123_456_789);
    assert_eq!(back.ioapic.chip_id, 2);
    assert_eq!(serial_back, serial);
}

#[test]
fn a_restored_vm_may_not_be_saved_again() {
    assert_eq!(super::restored_refusal(false), None);
    let why = super::restored_refusal(true).unwrap();
    assert!(why.contains("restored from a snapshot"), "{why}");
}
