//! Gives guest pages back to the host: the range's pages are punched out of the file behind
//! its region (the guest's memfd: `fallocate(PUNCH_HOLE)`), or dropped from an anonymous
//! mapping (`madvise(MADV_DONTNEED)`). The guest reads zeros there afterwards.

use std::os::fd::AsRawFd;

use vm_memory::{GuestAddress, GuestMemory as _, GuestMemoryRegion, MemoryRegionAddress};

use crate::memory::GuestMemory;

/// The page size the balloon speaks in (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const PAGE_SIZE: u64 = 4096;

/// Why a range was not given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    /// Not page-aligned, or empty.
    #[error("{len} bytes at {addr:#x} are not whole pages")]
    Unaligned {
        /// The address.
        addr: u64,
        /// The length.
        len: u64,
    },
    /// Not inside one region of guest memory.
    #[error("{len} bytes at {addr:#x} are not inside one region of guest memory")]
    Outside {
        /// The address.
        addr: u64,
        /// The length.
        len: u64,
    },
    /// The host refused (the errno).
    #[error("the host refused to drop {len} bytes at {addr:#x}: errno {errno}")]
    Host {
        /// The address.
        addr: u64,
        /// The length.
        len: u64,
        /// The errno.
        errno: i32,
    },
}

/// Gives `len` bytes at `addr` back to the host; the range must be whole pages inside one
/// region of `mem`.
pub fn discard(mem: &GuestMemory, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
    let (a, l) = (addr.0, len);
    if len == 0 || !addr.0.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(DiscardError::Unaligned { addr: a, len: l });
    }
    let outside = DiscardError::Outside { addr: a, len: l };
    let region = mem.find_region(addr).ok_or(outside)?;
    let offset = addr.0 - region.start_addr().0;
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(outside);
    }
    let r = match region.file_offset() {
        Some(fo) => {
            let (Ok(at), Ok(n)) = (
                libc::off_t::try_from(fo.start() + offset),
                libc::off_t::try_from(len),
            ) else {
                return Err(outside);
            };
            // SAFETY: fallocate on the region's own descriptor with integer arguments; the
            // punched range of the mapping reads zeros afterwards, no memory of this process
            // is invalidated.
            unsafe {
                libc::fallocate(
                    fo.file().as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    n,
                )
            }
        }
        None => {
            let host = region
                .get_host_address(MemoryRegionAddress(offset))
                .map_err(|_| outside)?;
            let Ok(n) = usize::try_from(len) else {
                return Err(outside);
            };
            // SAFETY: `host..host + n` lies inside the region's live private anonymous mapping
            // (checked against its length above); MADV_DONTNEED makes it read zeros, which is
            // what the guest was told, and no Rust reference into guest memory is held.
            unsafe { libc::madvise(host.cast(), n, libc::MADV_DONTNEED) }
        }
    };
    if r != 0 {
        return Err(DiscardError::Host {
            addr: a,
            len: l,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    Ok(())
}
