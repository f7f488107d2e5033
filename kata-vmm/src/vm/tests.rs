//! What runs without KVM: the layout, bad input refused before a VM exists, the end of a VM.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::run::{collect_thread_ids, event_thread, gettid, Shared};
use super::*;
use crate::event_loop::{EventHandler, EventLoop};

/// The guest kernel and initramfs `make guest` builds, if they are there.
fn guest_image() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(
        std::env::var("KATA_RS_GUEST_DIR")
            .unwrap_or_else(|_| "/var/cache/kata-rs/guest/current".into()),
    );
    let k = dir.join("vmlinuz");
    let i = dir.join("initrd.img");
    if k.exists() && i.exists() {
        Some((k, i))
    } else {
        eprintln!("SKIPPED: no guest image in {} (make guest)", dir.display());
        None
    }
}

#[test]
fn a_guest_is_laid_out_with_its_devices_on_the_command_line() {
    let Some((kernel, initrd)) = guest_image() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let sock = dir.path().join("vsock.uds");
    let p = VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .vcpus(2)
        .memory_mib(128)
        .cmdline("console=ttyS0 quiet")
        .block(BlockConfig {
            path: disk,
            read_only: true,
            id: None,
        })
        .fs("kataShared", dir.path())
        .vsock(&sock)
        .prepare()
        .unwrap();
    assert!(p.cmdline().starts_with(BASE_CMDLINE), "{}", p.cmdline());
    assert!(
        p.cmdline().ends_with(
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7"
        ),
        "{}",
        p.cmdline()
    );
    assert!(
        sock.exists(),
        "the vsock socket is bound before the VM runs"
    );
    let mut sig = [0u8; 4];
    p.ram
        .memory()
        .read_slice(
            &mut sig,
            GuestAddress(crate::vstate::mptable::MPTABLE_START),
        )
        .unwrap();
    assert_eq!(&sig, b"_MP_");
    assert_eq!(p.devices.len(), 3);
    drop(p);
    assert!(!sock.exists(), "dropped before it ran: the socket is gone");
}

#[test]
fn a_virtio_console_comes_last_with_a_sink_of_its_own() {
    let Some((kernel, initrd)) = guest_image() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .cmdline("console=hvc0")
        .vsock(dir.path().join("vsock.uds"))
        .virtio_console(true)
        .prepare()
        .unwrap();
    assert!(
        p.cmdline().ends_with(
            "console=hvc0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        ),
        "{}",
        p.cmdline()
    );
    let mut id = [0u8; 4];
    // The DeviceID register of the last window.
    p.devices
        .last()
        .unwrap()
        .transport
        .lock()
        .unwrap()
        .read(0x8, &mut id);
    assert_eq!(
        u32::from_le_bytes(id),
        crate::devices::virtio::console::VIRTIO_ID_CONSOLE
    );
    assert!(p.hvc.is_some());
    let p = VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .prepare()
        .unwrap();
    assert!(p.hvc.is_none() && p.devices.is_empty());
}

#[test]
fn a_vm_that_can_grow_has_virtio_mem_last_over_a_region_the_e820_map_leaves_out() {
    let Some((kernel, initrd)) = guest_image() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .cmdline("console=hvc0")
        .vsock(dir.path().join("vsock.uds"))
        .virtio_console(true)
        .hotplug_memory_mib(256)
        .prepare()
        .unwrap();
    assert!(
        p.cmdline().ends_with(
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
             virtio_mmio.device=4K@0xd0002000:7"
        ),
        "the other windows do not move: {}",
        p.cmdline()
    );
    let mut t = p.devices.last().unwrap().transport.lock().unwrap();
    let mut word = [0u8; 4];
    t.read(0x8, &mut word);
    assert_eq!(
        u32::from_le_bytes(word),
        crate::devices::virtio::mem::VIRTIO_ID_MEM
    );
    // The config's addr (offset 16) and region size (24), through the window.
    t.read(0x100 + 16 + 4, &mut word);
    assert_eq!(u32::from_le_bytes(word), 1, "the region starts at 4 GiB");
    t.read(0x100 + 24, &mut word);
    assert_eq!(u32::from_le_bytes(word), 256 << 20);
    drop(t);
    let region = p.ram.hotplug().unwrap();
    let e820 = crate::loader::e820_map(p.ram.memory());
    assert!(
        e820.iter()
            .all(|e| e.addr + e.size <= region.addr || e.addr >= region.addr + region.size),
        "the hotplug region is not RAM to the guest at boot"
    );
    assert_eq!(p.memory_hotplug().unwrap().region_size(), 256 << 20);
    assert!(VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .prepare()
        .unwrap()
        .memory_hotplug()
        .is_none());
}

#[test]
fn a_balloon_comes_after_every_other_device() {
    let Some((kernel, initrd)) = guest_image() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .vsock(dir.path().join("vsock.uds"))
        .hotplug_memory_mib(128)
        .balloon(BalloonConfig {
            free_page_reporting: true,
        })
        .prepare()
        .unwrap();
    let ids: Vec<u32> = p
        .devices
        .iter()
        .map(|d| {
            let mut id = [0u8; 4];
            d.transport.lock().unwrap().read(0x8, &mut id);
            u32::from_le_bytes(id)
        })
        .collect();
    assert_eq!(
        ids,
        [
            19,
            crate::devices::virtio::mem::VIRTIO_ID_MEM,
            crate::devices::virtio::balloon::VIRTIO_ID_BALLOON
        ]
    );
    assert!(p.balloon().is_some());
}

#[test]
fn memory_hotplug_with_vfio_is_refused_before_anything_is_opened() {
    let e = VmBuilder::new("/nonexistent/vmlinuz")
        .hotplug_memory_mib(128)
        .vfio(VfioConfig::new("0000:01:00.0"))
        .prepare()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("virtio-mem") && e.contains("VFIO") && e.contains("enable_virtio_mem"),
        "{e}"
    );
}

#[test]
fn bad_input_fails_before_a_vm_exists_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vsock.uds");
    let no_kernel = VmBuilder::new("/proc/version").vsock(&sock).prepare();
    assert!(no_kernel
        .unwrap_err()
        .to_string()
        .contains("neither a bzImage nor an ELF"),);
    let e = VmBuilder::new("/proc/version")
        .vcpus(0)
        .prepare()
        .unwrap_err();
    assert!(e.to_string().contains("1 to 32"), "{e}");
    let e = VmBuilder::new("/proc/version")
        .memory_mib(16)
        .prepare()
        .unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    if let Some((kernel, _)) = guest_image() {
        let e = VmBuilder::new(&kernel)
            .block(BlockConfig {
                path: dir.path().join("missing.img"),
                read_only: false,
                id: None,
            })
            .vsock(&sock)
            .prepare()
            .unwrap_err();
        assert!(e.to_string().contains("missing.img"), "{e}");
        let e = VmBuilder::new(&kernel)
            .initramfs(dir.path().join("nope.img"))
            .prepare()
            .unwrap_err();
        assert!(e.to_string().contains("nope.img"), "{e}");
        let e = VmBuilder::new(&kernel)
            .fs("kataShared", dir.path().join("no-share"))
            .vsock(&sock)
            .prepare()
            .unwrap_err();
        assert!(e.to_string().contains("no-share"), "{e}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left"
    );
}

#[test]
fn the_first_reason_wins_and_waiters_wake() {
    let shared = Shared::new().unwrap();
    let w = ExitWatcher(shared.clone());
    assert_eq!(w.wait(Some(Duration::from_millis(10))), None);
    let s = shared.clone();
    let t = std::thread::spawn(move || w.wait(None));
    std::thread::sleep(Duration::from_millis(20));
    shared.finish(VmExit::Shutdown);
    shared.finish(VmExit::Failed("later".into()));
    assert_eq!(t.join().unwrap(), Some(VmExit::Shutdown));
    assert_eq!(ExitWatcher(s).exit(), Some(VmExit::Shutdown));
}

#[test]
fn a_parked_vcpu_waits_for_its_grant_and_is_released_by_the_end() {
    let shared = Shared::new().unwrap();
    assert_eq!(shared.grant(1), 1, "booted: one vCPU");
    assert!(shared.wait_for_grant(0), "the booted vCPU runs at once");
    let (s1, s2) = (shared.clone(), shared.clone());
    let granted = std::thread::spawn(move || s1.wait_for_grant(1));
    let ended = std::thread::spawn(move || s2.wait_for_grant(2));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!granted.is_finished(), "vCPU 1 ran without a grant");
    assert_eq!(shared.grant(0), 1, "a grant never goes down");
    assert_eq!(shared.grant(2), 2);
    assert!(granted.join().unwrap(), "vCPU 1 granted");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!ended.is_finished(), "vCPU 2 ran beyond the grant");
    shared.finish(VmExit::Stopped);
    assert!(
        !ended.join().unwrap(),
        "the end releases a parked vCPU, not to run"
    );
    assert!(!shared.wait_for_grant(0), "nothing runs once the VM ended");
}

struct Panicker(vmm_sys_util::eventfd::EventFd);

impl EventHandler for Panicker {
    fn watched(&self) -> Vec<(std::os::fd::RawFd, u32)> {
        use std::os::fd::AsRawFd;
        vec![(self.0.as_raw_fd(), 0)]
    }
    fn handle(&mut self, _: u32) {
        panic!("device exploded");
    }
}

#[test]
fn a_panicking_device_ends_its_vm_not_the_process() {
    let shared = Shared::new().unwrap();
    let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    evt.write(1).unwrap();
    let mut lp = EventLoop::new().unwrap();
    lp.add(Arc::new(Mutex::new(Panicker(evt)))).unwrap();
    let s = shared.clone();
    std::thread::Builder::new()
        .name("kata-vmm-events".into())
        .spawn(move || event_thread(lp, s))
        .unwrap()
        .join()
        .expect("the panic is caught at the thread's edge");
    let exit = ExitWatcher(shared).exit().unwrap();
    assert!(
        matches!(&exit, VmExit::Failed(m) if m.contains("device exploded") && m.contains("kata-vmm-events")),
        "{exit:?}"
    );
}

#[test]
fn each_thread_reports_its_kernel_id_in_vcpu_order() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    // Reported out of order: vCPU 1, the event loop, vCPU 0.
    for which in [Some(1), None, Some(0)] {
        let tx = tx.clone();
        let h = std::thread::spawn(move || {
            let tid = gettid();
            tx.send((which, tid)).unwrap();
            tid
        });
        handles.push((which, h.join().unwrap()));
    }
    let ids = collect_thread_ids(&rx, 2, Duration::from_secs(5)).unwrap();
    let tid_of = |w| handles.iter().find(|(x, _)| *x == w).unwrap().1;
    assert_eq!(ids.vcpus, vec![tid_of(Some(0)), tid_of(Some(1))]);
    assert_eq!(ids.devices, vec![tid_of(None)]);
    assert!(
        ids.vcpus.iter().all(|t| *t != gettid()),
        "another thread's id"
    );
}

#[test]
fn a_thread_that_never_reports_fails_the_start_naming_the_count() {
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send((Some(0), 41)).unwrap();
    let err = collect_thread_ids(&rx, 2, Duration::from_millis(50)).unwrap_err();
    assert!(err.to_string().contains("1 of 3 reported"), "{err}");
    drop(tx);
}

#[test]
fn parked_vcpus_are_listed_and_created_but_only_the_booted_ones_start() {
    // Refused before anything is loaded, naming the key: fewer in all than booted, or more than
    // the MP table lists.
    for (boot, max) in [(2, 1), (1, MAX_VCPUS + 1)] {
        let e = VmBuilder::new("/proc/version")
            .vcpus(boot)
            .max_vcpus(max)
            .prepare()
            .unwrap_err();
        assert!(e.to_string().contains("default_maxvcpus"), "{e}");
    }
    let Some((kernel, initrd)) = guest_image() else {
        return;
    };
    // The processors the MP table in guest memory lists: (APIC id, flags).
    let processors = |p: &PreparedVm| {
        let mut b = vec![0u8; 1024];
        p.ram
            .memory()
            .read_slice(&mut b, GuestAddress(crate::vstate::mptable::MPTABLE_START))
            .unwrap();
        let t = &b[16..];
        let mut at = 44;
        let mut out = Vec::new();
        while t[at] == 0 {
            out.push((t[at + 1], t[at + 3]));
            at += 20;
        }
        out
    };
    let p = VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .vcpus(1)
        .max_vcpus(3)
        .cmdline("console=ttyS0")
        .prepare()
        .unwrap();
    assert!(
        p.cmdline().contains(" maxcpus=1 console=ttyS0"),
        "{}",
        p.cmdline()
    );
    assert_eq!((p.vcpus, p.max_vcpus), (1, 3));
    // Every one enabled (so present), the first the boot processor.
    assert_eq!(processors(&p), [(0, 3), (1, 1), (2, 1)]);
    // Without parked vCPUs: no maxcpus, the table of the booted ones.
    let p = VmBuilder::new(&kernel)
        .initramfs(&initrd)
        .vcpus(2)
        .prepare()
        .unwrap();
    assert!(!p.cmdline().contains("maxcpus"), "{}", p.cmdline());
    assert_eq!(p.max_vcpus, 2);
    assert_eq!(processors(&p), [(0, 3), (1, 1)]);
}
