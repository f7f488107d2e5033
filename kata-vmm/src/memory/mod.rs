//! Guest memory: one memfd, mapped as the guest's RAM regions around the 32-bit MMIO gap.
//!
//! The memory is a memfd rather than anonymous memory so that devices in other threads or
//! processes, and a future snapshot, can map the same pages. Regions are
//! [`vm_memory::GuestMemoryMmap`]s, so every device is testable on them without a VM.
//!
//! A VM that can grow has a hot-plug region after its RAM in the same memfd
//! ([`GuestRam::with_hotplug`]): mapped and given to KVM and the devices from the start, but
//! left out of [`GuestRam::memory`] (what the loader's e820 map and VFIO see), so the guest
//! only uses what virtio-mem plugs, and its untouched pages cost nothing.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::mem::REGION_ALIGN;
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
    /// RAM and the hot-plug region (the same as `memory` without one).
    all: GuestMemory,
    /// The hot-plug region: guest address, size, offset in the memfd.
    hotplug: Option<HotplugRegion>,
}

/// Where the hot-plug region lies (guest physical) and where in the memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugRegion {
    /// Its guest physical address.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its offset in the memfd (after the RAM).
    pub file_offset: u64,
}

impl GuestRam {
    /// Creates `size_mib` MiB of guest RAM in a new memfd named `name` (shown in
    /// `/proc/<pid>/maps`), split around the MMIO gap.
    ///
    /// Refuses a size below [`MIN_MEMORY_MIB`] or above [`MAX_MEMORY_MIB`] before anything is
    /// allocated.
    pub fn new(name: &str, size_mib: u64) -> Result<GuestRam> {
        Self::with_hotplug(name, size_mib, 0)
    }

    /// [`GuestRam::new`] with a hot-plug region of `hotplug_mib` MiB (rounded up to whole
    /// [`REGION_ALIGN`]s; 0: none) at [`hotplug_base`], backed by the same memfd.
    pub fn with_hotplug(name: &str, size_mib: u64, hotplug_mib: u64) -> Result<GuestRam> {
        check_size(size_mib)?;
        check_size_hotplug(size_mib, hotplug_mib)?;
        let size = size_mib << 20;
        let hotplug_size = (hotplug_mib << 20).div_ceil(REGION_ALIGN) * REGION_ALIGN;
        let memfd = create_memfd(name)?;
        memfd
            .set_len(size + hotplug_size)
            .map_err(|source| Error::Memory {
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
        let (all, hotplug) = if hotplug_size == 0 {
            (memory.clone(), None)
        } else {
            let region = HotplugRegion {
                addr: hotplug_base(size),
                size: hotplug_size,
                file_offset: size,
            };
            let file = memfd.try_clone().map_err(|source| Error::Memory {
                what: "duplicating the memfd",
                source,
            })?;
            let len = usize::try_from(hotplug_size).map_err(|_| Error::MemorySize {
                size: hotplug_size,
                reason: "the hot-plug region does not fit this host's address space",
            })?;
            let mapped = vm_memory::GuestRegionMmap::from_range(
                GuestAddress(region.addr),
                len,
                Some(FileOffset::new(file, region.file_offset)),
            )
            .map_err(|e| Error::MemoryMap(e.to_string()))?;
            let all = memory
                .insert_region(std::sync::Arc::new(mapped))
                .map_err(|e| Error::MemoryMap(e.to_string()))?;
            (all, Some(region))
        };
        Ok(GuestRam {
            memory,
            memfd,
            size,
            all,
            hotplug,
        })
    }

    /// `size_mib` MiB of guest RAM over `file` (a snapshot's memory file,
    /// [`crate::snapshot::MEMORY_FILE`]) mapped private: the VM reads the snapshot's pages,
    /// shared through the page cache with every other VM restored from it, and a page it
    /// writes becomes its own copy (the file is never written). No hot-plug region (a snapshot
    /// refuses virtio-mem).
    pub fn private_from_snapshot(file: File, size_mib: u64) -> Result<GuestRam> {
        check_size(size_mib)?;
        let size = size_mib << 20;
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for (start, len) in ram_regions(size) {
            let len_usize = usize::try_from(len).map_err(|_| Error::MemorySize {
                size,
                reason: "a region does not fit this host's address space",
            })?;
            let dup = file.try_clone().map_err(|source| Error::Memory {
                what: "duplicating the snapshot's memory file",
                source,
            })?;
            let mapping = vm_memory::MmapRegion::build(
                Some(FileOffset::new(dup, offset)),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            )
            .map_err(|e| Error::MemoryMap(format!("the snapshot's memory file: {e}")))?;
            let region = vm_memory::GuestRegionMmap::new(mapping, start).ok_or_else(|| {
                Error::MemoryMap(format!("a snapshot region at {:#x} overflows", start.0))
            })?;
            regions.push(region);
            offset += len;
        }
        let memory =
            GuestMemoryMmap::from_regions(regions).map_err(|e| Error::MemoryMap(e.to_string()))?;
        Ok(GuestRam {
            all: memory.clone(),
            memory,
            memfd: file,
            size,
            hotplug: None,
        })
    }

    /// RAM and the hot-plug region: what KVM and the devices are given (a device may be handed
    /// a buffer in plugged memory).
    pub fn all_memory(&self) -> &GuestMemory {
        &self.all
    }

    /// The hot-plug region, if the VM has one.
    pub fn hotplug(&self) -> Option<HotplugRegion> {
        self.hotplug
    }

    /// The mapped regions.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The file the guest's RAM is mapped from (RAM below the gap first, then above it): a
    /// booted VM's memfd, holding every page of the guest. For a VM restored by
    /// [`GuestRam::private_from_snapshot`] it is the snapshot's memory file mapped private,
    /// which holds the snapshot's pages, **not** the ones this VM wrote (those are private
    /// copies): read the guest's memory through [`GuestRam::memory`] then.
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

/// Refuses a hot-plug region that would take the guest past [`MAX_MEMORY_MIB`].
fn check_size_hotplug(size_mib: u64, hotplug_mib: u64) -> Result<()> {
    if size_mib.saturating_add(hotplug_mib) > MAX_MEMORY_MIB {
        return Err(Error::MemorySize {
            size: size_mib.saturating_add(hotplug_mib).saturating_mul(1 << 20),
            reason: "RAM and the hot-plug region (default_maxmemory) above 1 TiB are not supported",
        });
    }
    Ok(())
}

/// Where the hot-plug region starts for `ram` bytes of RAM: above 4 GiB (never in the MMIO
/// gap), after the RAM there, aligned to [`REGION_ALIGN`] (the guest's memory block).
pub fn hotplug_base(ram: u64) -> u64 {
    let end = ram_regions(ram)
        .last()
        .map_or(0, |(start, len)| start.0 + len);
    end.max(MMIO_GAP_END).div_ceil(REGION_ALIGN) * REGION_ALIGN
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
    fn the_hotplug_region_follows_ram_above_4g_and_is_left_out_of_ram() {
        assert_eq!(hotplug_base(128 << 20), MMIO_GAP_END);
        assert_eq!(hotplug_base(MMIO_GAP_START), MMIO_GAP_END);
        // 4 GiB + 100 MiB of RAM ends at 4 GiB + 868 MiB: the next 128 MiB boundary.
        let ram = (4 << 30) + (100 << 20);
        let end = MMIO_GAP_END + ram - MMIO_GAP_START;
        assert_eq!(hotplug_base(ram), end.div_ceil(REGION_ALIGN) * REGION_ALIGN);
        assert!(hotplug_base(ram) >= end);

        let ram = GuestRam::with_hotplug("t", 64, 200).unwrap();
        let region = ram.hotplug().unwrap();
        assert_eq!(region.addr, MMIO_GAP_END);
        assert_eq!(region.size, 256 << 20, "rounded up to whole memory blocks");
        assert_eq!(region.file_offset, 64 << 20);
        assert_eq!(ram.memory().num_regions(), 1, "e820 and VFIO see RAM only");
        assert_eq!(ram.all_memory().num_regions(), 2);
        assert!(!ram.memory().address_in_range(GuestAddress(MMIO_GAP_END)));
        // A write to the region lands in the memfd after the RAM; untouched pages cost nothing.
        ram.all_memory()
            .write_slice(b"plug", GuestAddress(region.addr + 0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd()
            .read_exact_at(&mut buf, region.file_offset + 0x1000)
            .unwrap();
        assert_eq!(&buf, b"plug");
        assert_eq!(ram.memfd().metadata().unwrap().len(), (64 + 256) << 20);
        assert!(GuestRam::new("t", 64).unwrap().hotplug().is_none());
        assert!(GuestRam::with_hotplug("t", 64, MAX_MEMORY_MIB).is_err());
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
