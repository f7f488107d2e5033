//! Loader tests against the real guest kernel (built by `make guest`) and bad files.

use super::*;
use crate::memory::GuestRam;

/// A file of the guest image the workspace builds (`make guest`): the tests fail, not skip,
/// when it is missing.
fn guest_file(name: &str) -> PathBuf {
    let cache = std::env::var_os("KATA_RS_CACHE").unwrap_or_else(|| "/var/cache/kata-rs".into());
    let p = Path::new(&cache).join("guest/current").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make guest` first",
        p.display()
    );
    p
}

fn read_zero_page(mem: &crate::memory::GuestMemory) -> boot_params {
    mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
}

#[test]
fn bzimage_loads_with_initrd_and_zero_page() {
    let ram = GuestRam::new("t", 256).unwrap();
    let mem = ram.memory();
    let kernel_path = guest_file("bzImage");
    assert_eq!(detect_format(&kernel_path).unwrap(), KernelFormat::BzImage);
    let k = load_kernel(mem, &kernel_path).unwrap();
    assert_eq!(k.format, KernelFormat::BzImage);
    assert_eq!(k.entry, GuestAddress(HIMEM_START + 0x200));
    assert!(k.kernel_end > HIMEM_START);
    let initrd = load_initrd(mem, &k, &guest_file("initrd.img")).unwrap();
    assert_eq!(initrd.address.raw_value() % 4096, 0);
    assert!(initrd.address.raw_value() >= k.kernel_end);
    assert!(initrd.address.raw_value() + initrd.size <= 256 << 20);
    // The initramfs bytes are where the zero page says they are.
    let want = std::fs::read(guest_file("initrd.img")).unwrap();
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, initrd.address).unwrap();
    assert_eq!(&got[..], &want[..512]);

    let mut c = cmdline("console=ttyS0 reboot=k panic=1").unwrap();
    c.add_virtio_mmio_device(0x1000, GuestAddress(0xd000_0000), 5, None)
        .unwrap();
    write_boot_params(mem, &k, &c, Some(&initrd)).unwrap();
    let zp = read_zero_page(mem);
    assert_eq!({ zp.hdr.header }, HDRS_MAGIC);
    assert_eq!({ zp.hdr.type_of_loader }, 0xff);
    assert_eq!({ zp.hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ zp.hdr.ramdisk_image } as u64, initrd.address.raw_value());
    assert_eq!({ zp.hdr.ramdisk_size } as u64, initrd.size);
    assert_eq!(zp.e820_entries, 2);
    let e1 = zp.e820_table[1];
    assert_eq!(
        ({ e1.addr }, { e1.size }),
        (HIMEM_START, (256 << 20) - HIMEM_START)
    );
    let mut line = vec![0u8; 80];
    mem.read_slice(&mut line, GuestAddress(CMDLINE_START))
        .unwrap();
    let line = String::from_utf8_lossy(&line);
    assert!(
        line.starts_with("console=ttyS0 reboot=k panic=1 virtio_mmio.device=4K@0xd0000000:5\0"),
        "{line}"
    );
}

#[test]
fn elf_vmlinux_loads_at_its_entry() {
    let ram = GuestRam::new("t", 256).unwrap();
    let path = guest_file("vmlinux");
    assert_eq!(detect_format(&path).unwrap(), KernelFormat::Elf);
    let k = load_kernel(ram.memory(), &path).unwrap();
    assert_eq!(k.format, KernelFormat::Elf);
    assert!(k.entry.raw_value() >= HIMEM_START);
    assert!(k.kernel_end > k.entry.raw_value());
    write_boot_params(ram.memory(), &k, &cmdline("console=ttyS0").unwrap(), None).unwrap();
    let zp = read_zero_page(ram.memory());
    assert_eq!({ zp.hdr.boot_flag }, 0xaa55);
    assert_eq!({ zp.hdr.ramdisk_size }, 0);
}

#[test]
fn garbage_is_not_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbage");
    std::fs::write(&p, vec![0x5a; 8192]).unwrap();
    let e = detect_format(&p).unwrap_err();
    assert!(matches!(e, Error::NotAKernel { .. }), "{e}");
    assert!(
        e.to_string().contains("neither a bzImage nor an ELF"),
        "{e}"
    );
    // The same error from load_kernel, with nothing written into guest memory.
    let ram = GuestRam::new("t", 64).unwrap();
    assert!(matches!(
        load_kernel(ram.memory(), &p).unwrap_err(),
        Error::NotAKernel { .. }
    ));
    let mut b = [0u8; 16];
    ram.memory()
        .read_slice(&mut b, GuestAddress(HIMEM_START))
        .unwrap();
    assert_eq!(b, [0u8; 16]);
    // An empty file and a missing one.
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(
        detect_format(&p).unwrap_err(),
        Error::NotAKernel { .. }
    ));
    let missing = dir.path().join("missing");
    assert!(matches!(
        detect_format(&missing).unwrap_err(),
        Error::File { .. }
    ));
}

#[test]
fn truncated_elf_is_a_load_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vmlinux");
    let mut head = std::fs::read(guest_file("vmlinux")).unwrap();
    head.truncate(100);
    std::fs::write(&p, head).unwrap();
    let ram = GuestRam::new("t", 64).unwrap();
    let e = load_kernel(ram.memory(), &p).unwrap_err();
    assert!(matches!(e, Error::KernelLoad { .. }), "{e}");
}

#[test]
fn memory_too_small_for_the_kernel_is_refused() {
    // 8 MiB: the bzImage loads, but cannot decompress into its init_size; the vmlinux's
    // segments do not fit at all. GuestRam refuses such a size; the loader checks anyway.
    let mem = crate::memory::GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    for name in ["bzImage", "vmlinux"] {
        let e = load_kernel(&mem, &guest_file(name)).unwrap_err();
        assert!(matches!(e, Error::KernelLoad { .. }), "{name}: {e}");
    }
}

#[test]
fn initrd_too_large_for_memory_is_refused() {
    let ram = GuestRam::new("t", 64).unwrap();
    let k = load_kernel(ram.memory(), &guest_file("bzImage")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.img");
    let f = File::create(&big).unwrap();
    f.set_len(60 << 20).unwrap();
    let e = load_initrd(ram.memory(), &k, &big).unwrap_err();
    assert!(matches!(e, Error::InitrdTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("raise the guest memory size"), "{e}");
}

#[test]
fn e820_covers_both_regions_of_a_large_guest() {
    let mem = crate::memory::GuestMemory::from_ranges(&[
        (GuestAddress(0), MMIO_GAP_START as usize),
        (GuestAddress(MMIO_GAP_END), 1 << 20),
    ])
    .unwrap();
    let map = e820_map(&mem);
    assert_eq!(map.len(), 3);
    assert_eq!({ map[2].addr }, MMIO_GAP_END);
    assert_eq!(low_ram_end(&mem), MMIO_GAP_START);
}

#[test]
fn overlong_cmdline_is_an_error() {
    let mut c = cmdline("console=ttyS0").unwrap();
    let long = "x".repeat(CMDLINE_MAX_SIZE);
    assert!(c.insert_str(&long).is_err());
    assert!(cmdline(&long).is_err());
}

#[test]
fn a_cmdline_longer_than_the_kernel_takes_is_refused() {
    let ram = GuestRam::new("t", 256).unwrap();
    let k = load_kernel(ram.memory(), &guest_file("bzImage")).unwrap();
    // 3000 bytes fit our buffer (4096) but not the x86 kernel's 2048.
    let c = cmdline(&format!("console=ttyS0 x={}", "y".repeat(3000))).unwrap();
    let e = write_boot_params(ram.memory(), &k, &c, None).unwrap_err();
    assert!(e.to_string().contains("the kernel takes at most"), "{e}");
}
