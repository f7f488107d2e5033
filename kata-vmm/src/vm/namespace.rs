//! The namespace and privilege sandbox each VMM thread enters before its seccomp filter.
//!
//! The seccomp allow-list (`confine.rs`) decides which system calls a thread makes; this
//! module decides what those calls can reach. A vCPU thread or the device thread, as its first
//! act, takes a file system view, a mount namespace and (the device thread) a network
//! namespace of its own — all attributes of the thread once unshared, so the runtime's other
//! threads keep the host's — and gives up the capabilities it does not use:
//!
//! * `unshare(CLONE_FS)` first, which needs no privilege: root, working directory and umask
//!   are the thread's own (fuse-backend-rs sets umask 0 at the guest's `FUSE_INIT`).
//! * `unshare(CLONE_NEWNS)`, every mount made private (nothing the thread does propagates to
//!   the host), then a new root: a small read-only tmpfs holding only bind mounts of the paths
//!   the thread opens by name after it starts ([`ThreadSandbox::bind`]). A vCPU thread opens
//!   none. The device thread opens one: inline virtio-fs' passthrough opens its share's root
//!   again by path when the guest sends `FUSE_INIT`, and that path is `/proc/<pid>/fd/<n>/.`
//!   (a descriptor of the share the device holds), so the device thread's root holds this
//!   process's `/proc/<pid>/fd` and nothing else; every other device opens its files, taps and
//!   sockets before the threads start, and the hybrid vsock makes no host connection for the
//!   guest. The thread `pivot_root`s into the tmpfs and detaches the host's tree, so its
//!   namespace holds nothing else; where the root cannot be pivoted (a system running from its
//!   initramfs) it moves the tmpfs onto `/` and `chroot`s into it. `/etc`, the rest of
//!   `/proc`, `/dev`, `/sys` and the host's sockets by path are gone for the thread.
//! * `unshare(CLONE_NEWNET)` (the device thread): the host's abstract unix sockets, its
//!   interfaces and routes are out of reach. Unix sockets by path still connect (their
//!   namespace is the file system's), and descriptors opened before (the tap, the vsock
//!   listener) keep working.
//! * Capabilities, effective, permitted, inheritable, ambient and the bounding set: a vCPU
//!   thread keeps none; the device thread keeps those inline virtio-fs' passthrough uses to
//!   act for the guest's users (`CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `FSETID`, `SETUID`,
//!   `SETGID`: [`DEVICE_CAPABILITIES`]) and loses the rest, `SYS_ADMIN`, `NET_ADMIN`,
//!   `SYS_PTRACE`, `SYS_MODULE`, `SYS_RAWIO`, `MKNOD`, `SYS_CHROOT`, `BPF` and `PERFMON`
//!   among them.
//!
//! Descriptors opened before the sandbox are not bound by the new root: the passthrough's
//! directory handle of the share (and the share reached through `/proc/<pid>/fd`) lies
//! outside it, so lookups under the share keep following the host's mounts (a container
//! rootfs mounted into the share after the VM started reaches the guest) and `..` from that
//! handle would climb out of the share. The guest cannot ask for
//! that: fuse-backend-rs refuses names containing `/`, answers `..` at the share's root with
//! the root itself and opens every name with `O_NOFOLLOW`. A thread already taken over could
//! still use any descriptor of the process; the sandbox takes away the host's paths, sockets
//! and privileges, not the descriptor table the threads share.
//!
//! Without `CAP_SYS_ADMIN` (an embedder running the VMM unprivileged) the namespace steps are
//! skipped and reported ([`Sandboxed::Skipped`]), the capabilities the thread has are still
//! reduced and seccomp still applies: the VM is never refused for it. Nothing is left behind:
//! the mount and network namespaces and the tmpfs belong to the thread and go with it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `CAP_CHOWN`.
const CAP_CHOWN: u32 = 0;
/// `CAP_DAC_OVERRIDE`.
const CAP_DAC_OVERRIDE: u32 = 1;
/// `CAP_FOWNER`.
const CAP_FOWNER: u32 = 3;
/// `CAP_FSETID`.
const CAP_FSETID: u32 = 4;
/// `CAP_SETGID`.
const CAP_SETGID: u32 = 6;
/// `CAP_SETUID`.
const CAP_SETUID: u32 = 7;
/// `CAP_SYS_ADMIN`.
pub(crate) const CAP_SYS_ADMIN: u32 = 21;

/// The capabilities the device thread keeps: what fuse-backend-rs' passthrough needs to create
/// files as the guest's user (`SETUID`, `SETGID`: it switches the thread's effective ids),
/// give them their owner (`CHOWN`), reach files whatever their mode (`DAC_OVERRIDE`) and set
/// times and modes of files it does not own (`FOWNER`, `FSETID`), as virtiofsd keeps them.
pub const DEVICE_CAPABILITIES: &[u32] = &[
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_FOWNER,
    CAP_FSETID,
    CAP_SETGID,
    CAP_SETUID,
];

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `open_tree(2)`'s flags: a detached copy of the tree (`OPEN_TREE_CLONE`), with its submounts
/// (`AT_RECURSIVE`).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
/// `move_mount(2)`: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Where the new root's tmpfs is staged in the thread's private copy of the host's tree: the
/// first of these that is a directory (covering it there changes nothing for the host).
const STAGING: &[&str] = &["/tmp", "/run", "/mnt", "/dev", "/proc"];

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// How a thread's sandbox turned out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandboxed {
    /// Its own root, mount namespace (and network namespace where asked), capabilities reduced.
    Yes,
    /// The namespace steps were not taken, for the reason given; capabilities were reduced.
    Skipped(String),
}

/// What one thread kind's sandbox holds: the paths bound into its root, whether it gets a
/// network namespace of its own, the capabilities it keeps.
#[derive(Debug, Clone, Default)]
pub struct ThreadSandbox {
    binds: Vec<PathBuf>,
    network: bool,
    keep: Vec<u32>,
}

impl ThreadSandbox {
    /// A vCPU thread's: an empty root, the host's network namespace (it makes no socket), no
    /// capability.
    pub fn vcpu() -> Self {
        ThreadSandbox::default()
    }

    /// The device thread's: a root holding only this process's `/proc/<pid>/fd` (inline
    /// virtio-fs opens its share's root again through it at the guest's `FUSE_INIT`: a
    /// descriptor the thread holds anyway), a network namespace of its own,
    /// [`DEVICE_CAPABILITIES`].
    pub fn device() -> Self {
        ThreadSandbox {
            binds: vec![PathBuf::from(format!("/proc/{}/fd", std::process::id()))],
            network: true,
            keep: DEVICE_CAPABILITIES.to_vec(),
        }
    }

    /// Binds `path` (absolute: a directory or a file that exists when the thread starts) into
    /// the root at the same path, so the thread can still open it by name.
    pub fn bind(mut self, path: impl Into<PathBuf>) -> Self {
        self.binds.push(path.into());
        self
    }

    /// Puts the calling thread in its sandbox (see the module documentation). An error means
    /// the thread is half-way (its root changed, a later step failed) and must not run on.
    pub fn enter(&self) -> Result<Sandboxed> {
        // A file system view of its own first, which needs no privilege: the thread's root,
        // working directory and umask (fuse-backend-rs sets umask 0 at the guest's INIT) are
        // its own from here on, sandboxed or not.
        // SAFETY: unshare(2) with a flag only; it changes this thread's attributes.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(sandbox_error(format!(
                "unshare(CLONE_FS): {}",
                std::io::Error::last_os_error()
            )));
        }
        let outcome = if !has_capability(CAP_SYS_ADMIN)? {
            Sandboxed::Skipped(
                "the runtime has no CAP_SYS_ADMIN (not root): no mount or network namespace \
                 for the VMM's threads; their capabilities are reduced and seccomp applies"
                    .into(),
            )
        } else {
            match self.enter_namespaces()? {
                Ok(()) => Sandboxed::Yes,
                Err(why) => Sandboxed::Skipped(why),
            }
        };
        drop_capabilities(&self.keep)?;
        Ok(outcome)
    }

    /// The namespace steps. `Ok(Err(why))`: a step before the root changed failed and the
    /// thread is left with the host's view (a private copy of it); `Err`: a later step failed.
    fn enter_namespaces(&self) -> Result<std::result::Result<(), String>> {
        for b in &self.binds {
            if !b.is_absolute() {
                return Err(sandbox_error(format!(
                    "bind {}: the path must be absolute",
                    b.display()
                )));
            }
        }
        // SAFETY: unshare(2) with a flag only; it changes this thread's attributes.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Ok(Err(format!(
                "unshare(CLONE_NEWNS): {}",
                std::io::Error::last_os_error()
            )));
        }
        if let Err(e) = mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None) {
            return Ok(Err(format!("making the mounts private: {e}")));
        }
        let Some(staging) = STAGING.iter().find(|p| Path::new(p).is_dir()) else {
            return Ok(Err(format!("none of {STAGING:?} is a directory")));
        };
        // The sources, cloned before the tmpfs may cover them.
        let mut trees = Vec::new();
        for b in &self.binds {
            match open_tree(b) {
                Ok(fd) => trees.push((b, fd, b.is_dir())),
                Err(e) => return Ok(Err(format!("cloning {}: {e}", b.display()))),
            }
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if let Err(e) = mount(
            Some("tmpfs"),
            staging,
            Some("tmpfs"),
            flags,
            Some("mode=0755,size=64k"),
        ) {
            return Ok(Err(format!("mounting a tmpfs on {staging}: {e}")));
        }
        let staged = (|| -> std::io::Result<()> {
            for (b, fd, is_dir) in &trees {
                let target = Path::new(staging).join(b.strip_prefix("/").unwrap_or(b));
                if *is_dir {
                    std::fs::create_dir_all(&target)?;
                } else {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::File::create(&target)?;
                }
                move_mount(fd, &target)?;
            }
            std::env::set_current_dir(staging)
        })();
        if let Err(e) = staged {
            let _ = umount(staging, libc::MNT_DETACH);
            return Ok(Err(format!("preparing the new root on {staging}: {e}")));
        }
        drop(trees);
        // From here on the thread's root changes: a failure is an error.
        match pivot_root_here() {
            Ok(()) => {}
            // The root is the initramfs (rootfs), which cannot be pivoted.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                mount(Some("."), "/", None, libc::MS_MOVE, None)
                    .map_err(|e| sandbox_error(format!("moving the new root onto /: {e}")))?;
                chroot_here()
                    .map_err(|e| sandbox_error(format!("chroot into the new root: {e}")))?;
            }
            Err(e) => return Err(sandbox_error(format!("pivot_root: {e}"))),
        }
        std::env::set_current_dir("/")
            .map_err(|e| sandbox_error(format!("entering the new root: {e}")))?;
        mount(
            None,
            "/",
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | flags,
            None,
        )
        .map_err(|e| sandbox_error(format!("making the new root read-only: {e}")))?;
        if self.network {
            // SAFETY: unshare(2) with a flag only; it changes this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(sandbox_error(format!(
                    "unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        Ok(Ok(()))
    }
}

fn sandbox_error(why: String) -> Error {
    Error::Sandbox(why)
}

fn cstring(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn path_cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: mount(2) with NUL-terminated strings (or null) that outlive the call.
    check(
        unsafe {
            libc::mount(
                ptr(&source),
                target.as_ptr(),
                ptr(&fstype),
                flags,
                ptr(&data).cast(),
            )
        }
        .into(),
    )
    .map(drop)
}

fn umount(target: &str, flags: libc::c_int) -> std::io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: umount2(2) with a NUL-terminated path that outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }.into()).map(drop)
}

/// A detached copy of the mount tree at `path` (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`).
fn open_tree(path: &Path) -> std::io::Result<OwnedFd> {
    let p = path_cstring(path)?;
    let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: open_tree(2) with a NUL-terminated path that outlives the call; it returns a new
    // descriptor or -1.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) })?;
    // SAFETY: `fd` is a new descriptor this function alone owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Attaches the detached tree `tree` at `target`.
fn move_mount(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let t = path_cstring(target)?;
    let empty = c"";
    // SAFETY: move_mount(2) with a live descriptor and NUL-terminated paths that outlive the
    // call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `pivot_root(".", ".")` then the old root, now stacked on the new one, detached.
fn pivot_root_here() -> std::io::Result<()> {
    let dot = c".";
    // SAFETY: pivot_root(2) with NUL-terminated paths that outlive the call.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) })?;
    umount(".", libc::MNT_DETACH)
}

fn chroot_here() -> std::io::Result<()> {
    let dot = c".";
    // SAFETY: chroot(2) with a NUL-terminated path that outlives the call.
    check(unsafe { libc::chroot(dot.as_ptr()) }.into()).map(drop)
}

fn capget() -> Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a version-3 header and room for the two words it writes.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })
        .map_err(|e| sandbox_error(format!("capget: {e}")))?;
    Ok(data)
}

/// Whether the calling thread has `cap` in its effective set.
pub(crate) fn has_capability(cap: u32) -> Result<bool> {
    let data = capget()?;
    Ok(data[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
}

/// Leaves the calling thread with at most `keep` (effective and permitted; nothing inheritable,
/// ambient or in the bounding set beyond it).
fn drop_capabilities(keep: &[u32]) -> Result<()> {
    let mut mask = [0u32; 2];
    for &c in keep {
        mask[(c / 32) as usize] |= 1 << (c % 32);
    }
    // The bounding set first (dropping needs CAP_SETPCAP, which goes next); a thread without it
    // keeps its bounding set: execve, the only use of it, is refused by seccomp anyway.
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl(2) with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                // Past the last capability this kernel knows.
                Some(libc::EINVAL) => break,
                Some(libc::EPERM) => break,
                _ => {
                    return Err(sandbox_error(format!(
                        "dropping capability {cap} from the bounding set: {}",
                        std::io::Error::last_os_error()
                    )))
                }
            }
        }
    }
    // SAFETY: prctl(2) with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let have = capget()?;
    let mut data = [CapData::default(); 2];
    for i in 0..2 {
        data[i].permitted = have[i].permitted & mask[i];
        data[i].effective = have[i].effective & mask[i];
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset(2) with a version-3 header and the two words it reads.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })
        .map_err(|e| sandbox_error(format!("capset: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{ThreadConfinement, ThreadKind};
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// The tests that mount or compare mount tables run one at a time.
    static MOUNTS: Mutex<()> = Mutex::new(());

    fn root_or_skip(test: &str) -> bool {
        let ok = has_capability(CAP_SYS_ADMIN).unwrap();
        if !ok {
            eprintln!("{test}: skipped, it needs CAP_SYS_ADMIN (run the tests as root)");
        }
        ok
    }

    fn gettid() -> i32 {
        // SAFETY: gettid(2) has no arguments.
        unsafe { libc::syscall(libc::SYS_gettid) as i32 }
    }

    fn mountinfo(of: &str) -> Vec<String> {
        let mut lines: Vec<String> = std::fs::read_to_string(format!("/proc/{of}/mountinfo"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// A capability set of `/proc/<tid>/status` (`CapEff`, `CapPrm`, `CapBnd`, ...).
    fn cap_set(tid: i32, set: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{set}:\t")))
            .unwrap()
            .to_string();
        u64::from_str_radix(line.trim(), 16).unwrap()
    }

    fn ns(of: &str, kind: &str) -> PathBuf {
        std::fs::read_link(format!("/proc/{of}/ns/{kind}")).unwrap()
    }

    fn openat(
        dir: &std::fs::File,
        name: &str,
        flags: libc::c_int,
    ) -> std::io::Result<std::fs::File> {
        let n = CString::new(name).unwrap();
        // SAFETY: openat(2) with a live directory descriptor and a NUL-terminated name; the
        // new descriptor is owned by the returned File.
        let fd =
            unsafe { libc::openat(dir.as_raw_fd(), n.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is new and owned by nobody else.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[derive(Debug)]
    struct Seen {
        sandboxed: Sandboxed,
        passwd: Option<i32>,
        proc1: Option<i32>,
        abstract_connect: Option<i32>,
        path_connect: std::io::Result<UnixStream>,
        share_read: std::io::Result<String>,
        share_write: std::io::Result<()>,
        share_by_name: Option<i32>,
    }

    #[test]
    fn a_device_thread_reaches_only_its_binds_and_descriptors_with_no_host_socket_or_sys_admin() {
        let _serial = MOUNTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !root_or_skip("device sandbox") {
            return;
        }
        // The allowed dir with a listening socket, a share reached by a descriptor only, and a
        // host abstract socket.
        let allowed = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(allowed.path().join("sock")).unwrap();
        let share = tempfile::tempdir().unwrap();
        std::fs::write(share.path().join("hello"), "from the host").unwrap();
        let share_fd = std::fs::File::open(share.path()).unwrap();
        let share_path = share.path().join("hello");
        let name = format!("kata-vmm-sandbox-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abs_listener = UnixListener::bind_addr(&abs).unwrap();
        // Control: the host reaches its own abstract socket.
        UnixStream::connect_addr(&abs).unwrap();
        abs_listener.accept().unwrap();

        let before = mountinfo("self");
        let sandbox = ThreadSandbox::device().bind(allowed.path());
        let sock = allowed.path().join("sock");
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let sandboxed = sandbox.enter().unwrap();
            ThreadConfinement::new()
                .unwrap()
                .apply_to_this_thread(ThreadKind::Device)
                .unwrap();
            let seen = Seen {
                sandboxed,
                passwd: errno(std::fs::File::open("/etc/passwd")),
                proc1: errno(std::fs::File::open("/proc/1/status")),
                abstract_connect: errno(UnixStream::connect_addr(&abs)),
                path_connect: UnixStream::connect(&sock).and_then(|mut s| {
                    s.write_all(b"ping")?;
                    Ok(s)
                }),
                share_read: openat(&share_fd, "hello", libc::O_RDONLY).and_then(|mut f| {
                    let mut s = String::new();
                    f.read_to_string(&mut s)?;
                    Ok(s)
                }),
                share_write: openat(&share_fd, "written", libc::O_CREAT | libc::O_WRONLY)
                    .and_then(|mut f| f.write_all(b"from the thread")),
                share_by_name: errno(std::fs::File::open(&share_path)),
            };
            tx.send((gettid(), seen)).unwrap();
            // Alive while the host looks at it.
            let _ = go_rx.recv();
        });
        let (tid, seen) = rx.recv().unwrap();
        let tid_s = tid.to_string();
        // What the host sees of the thread while it runs.
        let thread_mounts = mountinfo(&tid_s);
        let (eff, prm, bnd) = (
            cap_set(tid, "CapEff"),
            cap_set(tid, "CapPrm"),
            cap_set(tid, "CapBnd"),
        );
        let (net, mnt) = (ns(&tid_s, "net"), ns(&tid_s, "mnt"));
        let during = mountinfo("self");
        go_tx.send(()).unwrap();
        thread.join().unwrap();

        assert_eq!(seen.sandboxed, Sandboxed::Yes);
        assert_eq!(seen.passwd, Some(libc::ENOENT), "the host's /etc is gone");
        assert_eq!(seen.proc1, Some(libc::ENOENT), "the host's /proc is gone");
        assert_eq!(
            seen.share_by_name,
            Some(libc::ENOENT),
            "the share by path is gone"
        );
        assert_eq!(
            seen.abstract_connect,
            Some(libc::ECONNREFUSED),
            "the host's abstract socket must be out of reach"
        );
        let mut accepted = listener.accept().unwrap().0;
        let mut ping = [0u8; 4];
        accepted.read_exact(&mut ping).unwrap();
        assert_eq!(&ping, b"ping");
        assert!(seen.path_connect.is_ok());
        assert_eq!(seen.share_read.unwrap(), "from the host");
        seen.share_write.unwrap();
        assert_eq!(
            std::fs::read_to_string(share.path().join("written")).unwrap(),
            "from the thread"
        );
        // Its namespace: the read-only tmpfs root, this process's `/proc/<pid>/fd` and the
        // one bind, nothing else of the host.
        assert_eq!(thread_mounts.len(), 3, "{thread_mounts:#?}");
        let fd_dir = format!("/proc/{}/fd", std::process::id());
        assert!(
            thread_mounts
                .iter()
                .any(|l| l.split(' ').nth(4) == Some(fd_dir.as_str())),
            "{thread_mounts:#?}"
        );
        assert!(
            thread_mounts
                .iter()
                .any(|l| l.contains(" / / ro,") && l.contains(" - tmpfs ")),
            "{thread_mounts:#?}"
        );
        assert!(
            thread_mounts
                .iter()
                .any(|l| l.split(' ').nth(4) == Some(&allowed.path().display().to_string())),
            "{thread_mounts:#?}"
        );
        assert_ne!(net, ns("self", "net"));
        assert_ne!(mnt, ns("self", "mnt"));
        let want: u64 = DEVICE_CAPABILITIES.iter().map(|c| 1u64 << c).sum();
        assert_eq!(
            (eff, prm, bnd),
            (want, want, want),
            "CapEff, CapPrm, CapBnd"
        );
        assert_eq!(eff & (1 << CAP_SYS_ADMIN), 0);
        // Nothing reached the host's mount table, then or after.
        assert_eq!(during, before);
        assert_eq!(mountinfo("self"), before);
    }

    #[test]
    fn a_mount_made_in_the_share_after_the_sandbox_reaches_a_handle_opened_before() {
        let _serial = MOUNTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !root_or_skip("later mounts") {
            return;
        }
        // fuse-backend-rs' passthrough holds the share's directory like this: a container rootfs
        // mounted into the share after the VM started must still reach the guest.
        let share = tempfile::tempdir().unwrap();
        std::fs::create_dir(share.path().join("rootfs")).unwrap();
        let share_fd = std::fs::File::open(share.path()).unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let sandboxed = ThreadSandbox::device().enter().unwrap();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let read = openat(&share_fd, "rootfs/late", libc::O_RDONLY).and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s)?;
                Ok(s)
            });
            (sandboxed, read.map_err(|e| e.to_string()))
        });
        ready_rx.recv().unwrap();
        let target = share.path().join("rootfs").display().to_string();
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
        .unwrap();
        std::fs::write(share.path().join("rootfs/late"), "mounted later").unwrap();
        go_tx.send(()).unwrap();
        let (sandboxed, read) = thread.join().unwrap();
        umount(&target, libc::MNT_DETACH).unwrap();
        assert_eq!(sandboxed, Sandboxed::Yes);
        assert_eq!(read.unwrap(), "mounted later");
    }

    #[test]
    fn a_vcpu_thread_has_an_empty_root_no_capability_and_the_host_network() {
        let _serial = MOUNTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !root_or_skip("vcpu sandbox") {
            return;
        }
        let before = mountinfo("self");
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let c = ThreadConfinement::new().unwrap();
            let sandboxed = c.confine_this_thread(ThreadKind::Vcpu).unwrap();
            tx.send((gettid(), sandboxed)).unwrap();
            let _ = go_rx.recv();
        });
        let (tid, sandboxed) = rx.recv().unwrap();
        let tid_s = tid.to_string();
        let thread_mounts = mountinfo(&tid_s);
        let caps = [
            cap_set(tid, "CapEff"),
            cap_set(tid, "CapPrm"),
            cap_set(tid, "CapBnd"),
        ];
        let net = ns(&tid_s, "net");
        go_tx.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(sandboxed, Sandboxed::Yes);
        assert_eq!(thread_mounts.len(), 1, "{thread_mounts:#?}");
        assert_eq!(caps, [0, 0, 0], "CapEff, CapPrm, CapBnd");
        assert_eq!(
            net,
            ns("self", "net"),
            "a vCPU thread needs no network namespace"
        );
        assert_eq!(mountinfo("self"), before);
    }

    #[test]
    fn without_cap_sys_admin_the_namespace_steps_are_skipped_and_seccomp_still_applies() {
        let _serial = MOUNTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let host_mnt = ns("self", "mnt");
        let (outcome, passwd, uname, mnt) = std::thread::spawn(|| {
            // An embedder running unprivileged: this thread gives CAP_SYS_ADMIN up first.
            let mut data = capget().unwrap();
            for d in &mut data {
                d.effective &= !(1 << CAP_SYS_ADMIN);
                d.permitted &= !(1 << CAP_SYS_ADMIN);
            }
            let mut header = CapHeader {
                version: CAPABILITY_VERSION_3,
                pid: 0,
            };
            // SAFETY: capset(2) with a version-3 header and the two words it reads.
            let set = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
            assert_eq!(set, 0);
            let c = ThreadConfinement::new().unwrap();
            let outcome = c.confine_this_thread(ThreadKind::Device).unwrap();
            let passwd = std::fs::read_to_string("/etc/passwd").is_ok();
            let mut u = std::mem::MaybeUninit::<libc::utsname>::uninit();
            // SAFETY: uname(2) writes one `utsname` into the buffer it is given.
            let uname = unsafe { libc::uname(u.as_mut_ptr()) };
            let mnt = std::fs::read_link("/proc/thread-self/ns/mnt").unwrap();
            (outcome, passwd, uname, mnt)
        })
        .join()
        .unwrap();
        match outcome {
            Sandboxed::Skipped(why) => assert!(why.contains("CAP_SYS_ADMIN"), "{why}"),
            Sandboxed::Yes => panic!("sandboxed without CAP_SYS_ADMIN"),
        }
        assert!(passwd, "skipped: the host's files are still there");
        assert_eq!(mnt, host_mnt, "skipped: no mount namespace of its own");
        assert_eq!(uname, -1, "seccomp must still apply");
    }
}
