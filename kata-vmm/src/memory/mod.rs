//! Guest memory: one memfd, mapped as the guest's RAM regions around the 32-bit MMIO gap.
//!
//! The memory is a memfd rather than anonymous memory so that devices in other threads or
//! processes, and a future snapshot, can map the same pages. Regions are
//! [`vm_memory::GuestMemoryMmap`]s, so every device is testable on them without a VM.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// The guest memory type every device of this crate is used with.
pub type GuestMemory = GuestMemoryMmap<()>;

/// The least guest memory accepted: a kernel, its decompression room and an initramfs.
pub const MIN_MEMORY_MIB: u64 = 64;

/// The most guest memory accepted (1 TiB): beyond it the identity map and e820 are untested.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The guest's RAM: the mapped regions and the memfd behind them.
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemory,
    memfd: File,
    size: u64,
}

impl GuestRam {
    /// Creates `size_mib` MiB of guest RAM in a new memfd named `name` (shown in
    /// `/proc/<pid>/maps`), split around the MMIO gap.
    ///
    /// Refuses a size below [`MIN_MEMORY_MIB`] or above [`MAX_MEMORY_MIB`] before anything is
    /// allocated.
    pub fn new(name: &str, size_mib: u64) -> Result<GuestRam> {
        check_size(size_mib)?;
        let size = size_mib << 20;
        let memfd = create_memfd(name)?;
        memfd.set_len(size).map_err(|source| Error::Memory {
            what: "sizing the memfd",
            source,
        })?;
        let mut ranges = Vec::new();
        let mut offset = 0u64;
        for (start, len) in ram_regions(size) {
            let file = memfd.try_clone().map_err(|source| Error::Memory {
                what: "duplicating the memfd",
                source,
            })?;
            ranges.push((
                start,
                usize::try_from(len).map_err(|_| Error::MemorySize {
                    size,
                    reason: "a region does not fit this host's address space",
                })?,
                Some(FileOffset::new(file, offset)),
            ));
            offset += len;
        }
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| Error::MemoryMap(e.to_string()))?;
        Ok(GuestRam {
            memory,
            memfd,
            size,
        })
    }

    /// The mapped regions.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The memfd holding every page of the guest (RAM below the gap first, then above it).
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// The RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Checks a requested size in MiB.
pub fn check_size(size_mib: u64) -> Result<()> {
    if size_mib < MIN_MEMORY_MIB {
        return Err(Error::MemoryTooSmall {
            size_mib,
            min_mib: MIN_MEMORY_MIB,
        });
    }
    if size_mib > MAX_MEMORY_MIB {
        return Err(Error::MemorySize {
            size: size_mib.saturating_mul(1 << 20),
            reason: "more than 1 TiB of guest memory is not supported",
        });
    }
    Ok(())
}

/// The guest physical RAM regions for `size` bytes: all below the MMIO gap if it fits, else
/// up to the gap and the rest from 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

fn create_memfd(name: &str) -> Result<File> {
    let cname = std::ffi::CString::new(format!("kata-vmm:{name}")).map_err(|_| Error::Memory {
        what: "naming the memfd",
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; the flags are
    // constants; the returned descriptor is checked before use.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memory {
            what: "memfd_create",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    debug_assert!(file.as_raw_fd() >= 0);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemory as _};

    #[test]
    fn too_small_is_refused_before_allocation() {
        let e = GuestRam::new("t", 16).unwrap_err();
        assert!(
            matches!(e, Error::MemoryTooSmall { size_mib: 16, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("default_memory"), "{e}");
        assert!(check_size(MAX_MEMORY_MIB + 1).is_err());
    }

    #[test]
    fn small_guest_is_one_region_below_the_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn guest_writes_land_in_the_memfd() {
        let ram = GuestRam::new("t", 64).unwrap();
        assert_eq!(ram.size(), 64 << 20);
        assert_eq!(ram.memory().num_regions(), 1);
        ram.memory()
            .write_slice(b"kata", GuestAddress(0x1234))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd().read_exact_at(&mut buf, 0x1234).unwrap();
        assert_eq!(&buf, b"kata");
    }
}
