//! Lays a guest out in memory the way the built-in VMM will boot it, without KVM: guest RAM,
//! the kernel and initramfs, a command line announcing a virtio-blk and a virtio-vsock
//! window, the zero page. Prints the layout.
//!
//! ```text
//! cargo run -p kata-vmm --example boot_setup -- <kernel> [<initramfs>] [<memory MiB>]
//! ```

use std::path::PathBuf;

use kata_vmm::devices::virtio::mmio::MmioSlot;
use kata_vmm::loader;
use kata_vmm::memory::GuestRam;

fn main() {
    if let Err(e) = run() {
        eprintln!("boot_setup: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = PathBuf::from(
        args.next()
            .ok_or("usage: boot_setup <kernel> [<initramfs>] [<MiB>]")?,
    );
    let initrd = args.next().map(PathBuf::from);
    let mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);

    let ram = GuestRam::new("boot_setup", mib)?;
    let loaded = loader::load_kernel(ram.memory(), &kernel)?;
    let initrd = initrd
        .map(|p| loader::load_initrd(ram.memory(), &loaded, &p))
        .transpose()?;
    let mut cmdline = loader::cmdline("console=ttyS0 reboot=k panic=1")?;
    for index in 0..2 {
        MmioSlot::nth(index)?.add_to_cmdline(&mut cmdline)?;
    }
    loader::write_boot_params(ram.memory(), &loaded, &cmdline, initrd.as_ref())?;

    println!("memory      {mib} MiB in a memfd");
    println!(
        "kernel      {:?}, entry {:#x}, ends at {:#x}",
        loaded.format, loaded.entry.0, loaded.kernel_end
    );
    if let Some(i) = initrd {
        println!("initramfs   {} bytes at {:#x}", i.size, i.address.0);
    }
    println!("cmdline     {}", cmdline.as_cstring()?.to_string_lossy());
    println!(
        "e820        {} entries",
        loader::e820_map(ram.memory()).len()
    );
    Ok(())
}
