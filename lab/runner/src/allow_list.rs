//! `builtin-threads-allow-list`: the built-in VMM's seccomp filters, on L1's kernel, refuse what
//! their allow-lists leave out (kata-vmm's `vm/confine.rs`).
//!
//! A thread of the runner confines itself as each thread kind ([`ThreadKind::Vcpu`],
//! [`ThreadKind::Device`]) with the filters the VM's threads install, then tries what a guest
//! that took over a device would: run a program, open a network socket, make a device node;
//! and `uname`, which no list names (a deny-list would let it through). Every one must answer
//! `EPERM`, while the same VM's threads (the other `builtin-*` checks) keep working.

use std::ffi::CString;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use kata_vmm::vm::{ThreadConfinement, ThreadKind};

/// The errno of a call that returned a negative value (0 when it succeeded).
fn errno_of(r: libc::c_long) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// What a thread confined as `kind` got for each attempt, by name.
fn attempts(kind: ThreadKind, dir: &std::path::Path) -> Vec<(&'static str, i32)> {
    let exec = match Command::new("/bin/true").status() {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    // SAFETY: socket(2) with integer arguments; a descriptor it returns is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    let inet = errno_of(fd.into());
    if fd >= 0 {
        // SAFETY: `fd` came from socket(2) above and is closed once.
        unsafe { libc::close(fd) };
    }
    let mut u = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname(2) writes one `utsname` into the buffer it is given.
    let uname = errno_of(unsafe { libc::uname(u.as_mut_ptr()) }.into());
    let node = CString::new(
        dir.join(format!("{kind:?}-null"))
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap_or_default();
    // SAFETY: mknodat(2) with a NUL-terminated path that outlives the call.
    let mknod = errno_of(
        unsafe {
            libc::mknodat(
                libc::AT_FDCWD,
                node.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 3),
            )
        }
        .into(),
    );
    vec![
        ("execve", exec),
        ("socket(AF_INET)", inet),
        ("uname", uname),
        ("mknod(char device)", mknod),
    ]
}

/// The check: each kind refuses every attempt with EPERM; the runner's own thread, unconfined,
/// is not refused `uname` (the refusal is the filter's).
pub fn vmm_threads_refuse() -> Result<String> {
    let confinement = ThreadConfinement::new().context("building the VMM's seccomp filters")?;
    let dir = tempfile::tempdir().context("a scratch directory")?;
    let mut seen = Vec::new();
    for kind in [ThreadKind::Vcpu, ThreadKind::Device] {
        let (c, d) = (confinement.clone(), dir.path().to_path_buf());
        let got = std::thread::spawn(move || {
            c.apply_to_this_thread(kind)
                .map(|()| attempts(kind, &d))
                .map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the {kind:?} thread panicked"))?
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("confining a thread as {kind:?}"))?;
        for (what, errno) in got {
            ensure!(
                errno == libc::EPERM,
                "a thread confined as {kind:?}: {what} answered errno {errno}, not EPERM"
            );
        }
        seen.push(format!("{kind:?}"));
    }
    let mut u = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: as above.
    let unconfined = errno_of(unsafe { libc::uname(u.as_mut_ptr()) }.into());
    ensure!(
        unconfined == 0,
        "uname failed unconfined too: errno {unconfined}"
    );
    Ok(format!(
        "threads confined as {}: execve, socket(AF_INET), uname (on no list) and a character \
         device's mknod refused with EPERM; uname works on the runner's own thread",
        seen.join(" and ")
    ))
}
