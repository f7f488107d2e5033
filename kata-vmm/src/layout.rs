//! The guest physical address map of an x86_64 VM, as the loader and the devices agree on it.
//!
//! ```text
//! 0x0000_0500  GDT                     0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT                     0x0000_9000  PML4, then PDPTE (0xa000), PDE (0xb000)
//! 0x0002_0000  kernel command line     0x0009_fc00  EBDA (reserved to 1 MiB)
//! 0x0010_0000  kernel (high memory)    ...          initramfs, at the top of low RAM
//! 0xd000_0000  virtio-mmio windows, 4 KiB each, then the 32-bit gap to 4 GiB
//! 0x1_0000_0000  RAM above the gap, when the guest has more than 3.25 GiB
//! ```

/// Where the GDT is written.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) IDT is written.
pub const BOOT_IDT_START: u64 = 0x520;
/// Where the zero page (`boot_params`) is written.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The PML4 page of the identity map (then the PDPTE and the PDE pages).
pub const PML4_START: u64 = 0x9000;
/// The PDPTE page.
pub const PDPTE_START: u64 = 0xa000;
/// The PDE page.
pub const PDE_START: u64 = 0xb000;
/// Where the kernel command line is written.
pub const CMDLINE_START: u64 = 0x20000;
/// The longest command line written (the kernel's own limit is 2048 on older x86_64 kernels).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// The start of the Extended BIOS Data Area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Where high memory starts and the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// The start of the 32-bit MMIO gap: virtio-mmio windows live here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// The end of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The size of one virtio-mmio window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// The first legacy IRQ given to a virtio-mmio device (4 is the serial port).
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// The last legacy IRQ a virtio-mmio device may use with the in-kernel IOAPIC.
pub const LAST_VIRTIO_IRQ: u32 = 23;
/// The COM1 port base and its IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ.
pub const COM1_IRQ: u32 = 4;
/// The i8042 controller's data port (its command port is 0x64).
pub const I8042_PORT: u16 = 0x60;

/// The guest physical address of the `index`th virtio-mmio window.
pub fn mmio_window(index: u32) -> u64 {
    MMIO_GAP_START + u64::from(index) * MMIO_WINDOW_SIZE
}
