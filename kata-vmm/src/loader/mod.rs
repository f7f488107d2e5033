//! The kernel loader: a bzImage or an ELF vmlinux, its command line, the initramfs and the
//! zero page (`boot_params` with the e820 map), on linux-loader.
//!
//! The kernel file's format is decided from its first bytes before anything is written to
//! guest memory, so a file that is neither a bzImage nor an ELF fails with
//! [`Error::NotAKernel`] before any VM exists. Every placement is checked against the guest's
//! RAM: a kernel or an initramfs that does not fit is an error naming the sizes, not a guest
//! that dies early.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};

use crate::error::{Error, Result};
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
    ZERO_PAGE_START,
};

/// The two kernel image formats the loader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A compressed kernel with the x86 boot protocol header (`HdrS`).
    BzImage,
    /// An uncompressed ELF64 `vmlinux`.
    Elf,
}

/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// The `HdrS` magic of the x86 boot protocol at offset 0x202.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// The `type_of_loader` value for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Page size for the initramfs alignment.
const PAGE_SIZE: u64 = 4096;

/// Reads the first bytes of `path` and tells its kernel format.
pub fn detect_format(path: &Path) -> Result<KernelFormat> {
    let mut file = open(path, "kernel")?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(|source| Error::File {
        what: "kernel",
        path: path.to_owned(),
        source,
    })?;
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        return Ok(KernelFormat::Elf);
    }
    if head.len() >= 0x206
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == HDRS_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(Error::NotAKernel {
        path: path.to_owned(),
        magic: head.iter().take(8).map(|b| format!("{b:02x}")).collect(),
    })
}

/// What the loader put into guest memory: where the boot vCPU starts and where the kernel
/// ends.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The format that was loaded.
    pub format: KernelFormat,
    /// The 64-bit entry point (`rip` of the boot vCPU; `rsi` points at the zero page).
    pub entry: GuestAddress,
    /// The first byte past what the kernel occupies, including, for a bzImage, the room it
    /// decompresses into (`init_size`).
    pub kernel_end: u64,
    /// The bzImage's setup header, to be copied into the zero page.
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Where the initramfs was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Its first byte.
    pub address: GuestAddress,
    /// Its size in bytes.
    pub size: u64,
}

/// Loads the kernel at `path` into `mem` (its format detected first).
pub fn load_kernel<M: GuestMemory>(mem: &M, path: &Path) -> Result<LoadedKernel> {
    let format = detect_format(path)?;
    let mut file = open(path, "kernel")?;
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded = match format {
        KernelFormat::BzImage => loader::BzImage::load(mem, None, &mut file, himem),
        KernelFormat::Elf => loader::Elf::load(mem, None, &mut file, himem),
    }
    .map_err(|e| Error::KernelLoad {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let (entry, kernel_end) = match format {
        KernelFormat::BzImage => {
            let hdr = loaded.setup_header.unwrap_or_default();
            // The compressed kernel decompresses in place: it needs `init_size` bytes from
            // where it is loaded.
            let end = loaded
                .kernel_load
                .raw_value()
                .saturating_add(u64::from(hdr.init_size))
                .max(loaded.kernel_end);
            (
                loaded.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                end,
            )
        }
        KernelFormat::Elf => (loaded.kernel_load, loaded.kernel_end),
    };
    let ram_end = low_ram_end(mem);
    if kernel_end > ram_end {
        return Err(Error::KernelLoad {
            path: path.to_owned(),
            reason: format!(
                "the kernel needs guest memory up to {kernel_end:#x}, low RAM ends at {ram_end:#x}"
            ),
        });
    }
    Ok(LoadedKernel {
        format,
        entry,
        kernel_end,
        setup_header: loaded.setup_header,
    })
}

/// Loads the initramfs at `path` at the top of low RAM, page aligned, above the kernel and
/// below the kernel's `initrd_addr_max`.
pub fn load_initrd<M: GuestMemory>(
    mem: &M,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<LoadedInitrd> {
    let mut file = open(path, "initramfs")?;
    let io_err = |source| Error::File {
        what: "initramfs",
        path: path.to_owned(),
        source,
    };
    let size = file.seek(SeekFrom::End(0)).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    let mut limit = low_ram_end(mem);
    if let Some(hdr) = kernel.setup_header {
        if hdr.initrd_addr_max != 0 {
            limit = limit.min(u64::from(hdr.initrd_addr_max) + 1);
        }
    }
    let too_large = || Error::InitrdTooLarge {
        path: path.to_owned(),
        size,
        kernel_end: kernel.kernel_end,
        limit,
    };
    let address = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel.kernel_end)
        .ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, len)
        .map_err(|e| Error::BootSetup {
            what: "the initramfs",
            reason: e.to_string(),
        })?;
    Ok(LoadedInitrd {
        address: GuestAddress(address),
        size,
    })
}

/// A command line with room for [`CMDLINE_MAX_SIZE`] bytes, starting with `base`.
pub fn cmdline(base: &str) -> Result<Cmdline> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))?;
    if !base.is_empty() {
        c.insert_str(base)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
    }
    Ok(c)
}

/// Writes the command line at [`CMDLINE_START`] and the zero page at [`ZERO_PAGE_START`]:
/// the bzImage's header (or the protocol defaults for an ELF), the command line and the
/// initramfs, and the e820 map of `mem`.
pub fn write_boot_params<M: GuestMemory>(
    mem: &M,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<&LoadedInitrd>,
) -> Result<()> {
    let cstr = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(|e| {
        Error::BootSetup {
            what: "the kernel command line",
            reason: e.to_string(),
        }
    })?;
    if let Some(hdr) = kernel.setup_header {
        // Boot protocol 2.06 and later say how long a command line the kernel takes.
        let max = hdr.cmdline_size as usize;
        if hdr.version >= 0x0206 && max != 0 && cstr.as_bytes().len() > max {
            return Err(Error::Cmdline(format!(
                "{} bytes, the kernel takes at most {max}",
                cstr.as_bytes().len()
            )));
        }
    }
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cstr.as_bytes().len() as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let entries = e820_map(mem);
    if entries.len() > params.e820_table.len() {
        return Err(Error::BootSetup {
            what: "the e820 map",
            reason: format!("{} entries, the zero page holds 128", entries.len()),
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&entries) {
        *slot = *entry;
    }
    params.e820_entries = entries.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| Error::BootSetup {
            what: "the zero page",
            reason: e.to_string(),
        })
}

/// The e820 map of `mem`: RAM below the EBDA, then every byte of RAM from 1 MiB on.
pub fn e820_map<M: GuestMemory>(mem: &M) -> Vec<boot_e820_entry> {
    let mut map = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        type_: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                type_: E820_RAM,
            });
        }
    }
    map
}

/// The end of the RAM region that starts at 0 (never past the MMIO gap).
fn low_ram_end<M: GuestMemory>(mem: &M) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len().min(MMIO_GAP_START))
        .unwrap_or(0)
        .min(MMIO_GAP_END)
}

fn open(path: &Path, what: &'static str) -> Result<File> {
    File::open(path).map_err(|source| Error::File {
        what,
        path: PathBuf::from(path),
        source,
    })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
