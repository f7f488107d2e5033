//! The VMM memory overhead figure (issue 11): a VMM's resident memory less the guest pages it
//! holds. For the in-process built-in VMM it is the runner's RSS after the boot less before,
//! less the guest pages touched; for QEMU, its process's RSS less the guest pages touched. The
//! guest pages touched are the resident size of the guest memory's memfd mapping, read from
//! `/proc/<pid>/smaps` (the pages KVM faulted in for the guest and the ones the VMM wrote:
//! kernel, initramfs, boot tables).

use std::path::Path;

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resident {
    /// The whole process (`VmRSS`).
    pub rss_kib: u64,
    /// Its anonymous part (`RssAnon`: heap, stacks).
    pub anon_kib: u64,
    /// Its file-backed part (`RssFile`: the program's and libraries' pages in use).
    pub file_kib: u64,
    /// The guest memory's mappings (`Rss:` of the mappings named by the memfd).
    pub guest_kib: u64,
}

/// Reading a process's memory figures failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A /proc file could not be read.
    #[error("reading {path}: {source} (is the process gone?)")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `/proc/<pid>/status` has no `VmRSS` line.
    #[error("{path} has no VmRSS line: a kernel thread or a zombie, not a VMM")]
    NoRss {
        /// The file.
        path: String,
    },
    /// No mapping of the process names the guest memory.
    #[error("no mapping in {path} names {memfd:?}: the guest memory is not a memfd of that name")]
    NoGuestMapping {
        /// The smaps file.
        path: String,
        /// The memfd name looked for.
        memfd: String,
    },
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `VmRSS` from a `/proc/<pid>/status` text, in KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS")
}

/// A `<field>: <n> kB` line of a `/proc/<pid>/status` text, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The summed `Rss:` (KiB) of the mappings in a `/proc/<pid>/smaps` text whose path contains
/// `memfd` (`memfd:memory-backend-memfd` for QEMU's `memory-backend-memfd`, `memfd:kata-vmm:` for the
/// built-in VMM's guest RAM); `None` when no mapping names it.
pub fn mapping_rss_kib(smaps: &str, memfd: &str) -> Option<u64> {
    let mut total = None;
    let mut in_match = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if is_range(first) {
            // A mapping's header: range perms offset dev inode [path].
            let path = fields.skip(4).collect::<Vec<_>>().join(" ");
            in_match = path.contains(memfd);
            if in_match {
                total.get_or_insert(0);
            }
        } else if in_match && first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total = Some(total.unwrap_or(0) + kib);
        }
    }
    total
}

fn is_range(s: &str) -> bool {
    s.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.chars().all(|c| c.is_ascii_hexdigit())
            && b.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// Process `pid`'s RSS and the resident size of its guest memory (the mappings naming
/// `memfd`). `pid` is `"self"` for this process.
pub fn resident(pid: &str, memfd: &str) -> Result<Resident, Error> {
    let status = Path::new("/proc").join(pid).join("status");
    let status_text = read(&status)?;
    let rss_kib = vm_rss_kib(&status_text).ok_or_else(|| Error::NoRss {
        path: status.display().to_string(),
    })?;
    let anon_kib = status_kib(&status_text, "RssAnon").unwrap_or(0);
    let file_kib = status_kib(&status_text, "RssFile").unwrap_or(0);
    let smaps = Path::new("/proc").join(pid).join("smaps");
    let guest_kib =
        mapping_rss_kib(&read(&smaps)?, memfd).ok_or_else(|| Error::NoGuestMapping {
            path: smaps.display().to_string(),
            memfd: memfd.to_string(),
        })?;
    Ok(Resident {
        rss_kib,
        anon_kib,
        file_kib,
        guest_kib,
    })
}

/// This process's RSS and its anonymous and file-backed parts (no guest memory yet: its
/// `guest_kib` is 0).
pub fn self_rss() -> Result<Resident, Error> {
    let status = Path::new("/proc/self/status");
    let text = read(status)?;
    Ok(Resident {
        rss_kib: vm_rss_kib(&text).ok_or_else(|| Error::NoRss {
            path: status.display().to_string(),
        })?,
        anon_kib: status_kib(&text, "RssAnon").unwrap_or(0),
        file_kib: status_kib(&text, "RssFile").unwrap_or(0),
        guest_kib: 0,
    })
}

/// An in-process VMM's overhead (KiB): the growth of the process's RSS over the boot less the
/// guest pages touched (never below zero).
pub fn in_process_overhead_kib(before_rss_kib: u64, after: Resident) -> u64 {
    after
        .rss_kib
        .saturating_sub(before_rss_kib)
        .saturating_sub(after.guest_kib)
}

/// How `after` grew over `before` in anonymous and file-backed pages (KiB, signed), for the
/// figure's detail: heap and stacks versus the program's code paged in.
pub fn growth_kib(before: Resident, after: Resident) -> (i64, i64) {
    let d = |a: u64, b: u64| a as i64 - b as i64;
    (
        d(after.anon_kib, before.anon_kib),
        d(after.file_kib, before.file_kib),
    )
}

/// A VMM process's overhead (KiB): its RSS less the guest pages touched.
pub fn process_overhead_kib(vmm: Resident) -> u64 {
    vmm.rss_kib.saturating_sub(vmm.guest_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0c00000 r-xp 00000000 00:1f 123                        /usr/bin/qemu-system-x86_64
Size:               2048 kB
Rss:                1500 kB
Pss:                1500 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 4567                       /memfd:mem0 (deleted)
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               40960 kB
Pss:               40960 kB
VmFlags: rd wr sh mr mw me ms sd
7f0010000000-7f0010021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                  12 kB
7f0020000000-7f0021000000 rw-s 00000000 00:01 4568                       /memfd:mem0 (deleted)
Size:              16384 kB
Rss:                1024 kB
";

    #[test]
    fn the_guest_mappings_rss_is_summed_and_others_left_out() {
        assert_eq!(mapping_rss_kib(SMAPS, "memfd:mem0"), Some(40960 + 1024));
        assert_eq!(mapping_rss_kib(SMAPS, "qemu-system"), Some(1500));
        assert_eq!(mapping_rss_kib(SMAPS, "memfd:kata-vmm:"), None);
        assert_eq!(mapping_rss_kib("", "memfd:mem0"), None);
    }

    #[test]
    fn vm_rss_is_read_from_status() {
        let status = "Name:\tqemu\nVmPeak:\t  999 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 100 kB\n";
        assert_eq!(vm_rss_kib(status), Some(51234));
        assert_eq!(status_kib(status, "RssAnon"), Some(100));
        assert_eq!(status_kib(status, "RssFile"), None);
        // A field is matched whole: VmRSS is not Vm.
        assert_eq!(status_kib(status, "Vm"), None);
        assert_eq!(vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn overheads_take_the_guest_pages_out() {
        let after = Resident {
            rss_kib: 100_000,
            guest_kib: 30_000,
            ..Resident::default()
        };
        assert_eq!(in_process_overhead_kib(60_000, after), 10_000);
        // Memory the process gave back during the boot never makes it negative.
        assert_eq!(in_process_overhead_kib(90_000, after), 0);
        assert_eq!(process_overhead_kib(after), 70_000);
    }

    #[test]
    fn this_process_is_read_and_a_missing_memfd_named() {
        let me = self_rss().unwrap();
        assert!(
            me.rss_kib > 0 && me.rss_kib >= me.anon_kib + me.file_kib,
            "{me:?}"
        );
        let e = resident("self", "memfd:no-such-guest").unwrap_err();
        assert!(e.to_string().contains("memfd:no-such-guest"), "{e}");
        // A real memfd mapping of this process is found and its touched pages counted.
        let fd = {
            let name = std::ffi::CString::new("lab-overhead-test").unwrap();
            // SAFETY: a valid NUL-terminated name; the returned fd is owned below.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: fd was just created and is owned by nothing else.
            unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        };
        fd.set_len(1 << 20).unwrap();
        // SAFETY: a fresh shared mapping of the 1 MiB memfd, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: p maps 1 MiB; the first 256 KiB are written.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 1, 256 << 10) };
        let r = resident("self", "memfd:lab-overhead-test").unwrap();
        // SAFETY: p and the length are the mapping made above.
        unsafe { libc::munmap(p, 1 << 20) };
        assert_eq!(r.guest_kib, 256, "{r:?}");
        assert!(r.rss_kib > r.guest_kib);
    }
}
