//! Rootless QEMU (`rootless = true`): QEMU runs as an unprivileged user of its own, in a mount
//! namespace of its own, and reaches the host only through what the runtime hands it.
//!
//! * **Its user** is a uid of `rootless_uid_range` (the gid is the same number) with no
//!   `/etc/passwd` entry: QEMU needs no name, so nothing is added to the host's user database.
//!   A uid is claimed by a root-only file `<uid>` in [`CLAIMS_DIR`] (created exclusively, naming
//!   the VM directory), skipping ids that `/etc/passwd` or `/etc/group` name and ids any process
//!   runs as. The claim is in the QEMU state; it is released at stop, and by cleanup from the
//!   state or, without one, by the claims that name the VM directory — only once no process
//!   runs as that uid any more.
//! * **No privileges.** Between `fork` and `execve`, after [`super::confine`]'s confinement:
//!   the capability bounding set is emptied, supplementary groups cleared, the real, effective
//!   and saved gid and uid set, `no_new_privs` set. The kernel clears the permitted and effective
//!   capabilities on that `setresuid`, so QEMU runs with `CapEff: 0` and `NoNewPrivs: 1`; its
//!   own `-sandbox` filter (`seccomp_sandbox`) installs under `no_new_privs`.
//! * **Its own mount namespace**, a slave of the host's (the host's later mounts reach it, its
//!   own never reach the host). The device nodes QEMU opens itself — `/dev/kvm` when KVM was
//!   detected, `/dev/vhost-net`, `/dev/vhost-vsock` — are replaced there by private nodes of the
//!   same numbers, owned by its user, mode 0600, made on a tmpfs only that namespace sees (as
//!   Firecracker's jailer makes `/dev/kvm` in its chroot). The host's nodes are untouched and no
//!   supplementary group (`kvm`) is needed.
//! * **Sockets as descriptors** ([`HandedFds`]): the QMP and console sockets are bound by the
//!   runtime in its root-only VM directory and handed to QEMU listening; the vhost-user sockets
//!   of vhost-device-vsock and virtiofsd are connected by the runtime and handed over connected;
//!   the taps were already handed as open queues, `qemu.log` is QEMU's stdout and stderr. QEMU
//!   opens no path under the VM directory and creates nothing on the host.
//!
//! Not served rootless (refused naming `rootless`): the virtio-9p share (QEMU would serve the
//! containers' root-owned files as its user), block devices and VFIO (QEMU would open host
//! files and devices by path as its user).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::HypervisorConfig;
use crate::error::{Error, Result};

/// The configuration key of the uid range.
pub const UID_RANGE_KEY: &str = "rootless_uid_range";

/// The default `rootless_uid_range`.
pub const DEFAULT_UID_RANGE: &str = crate::config::DEFAULT_ROOTLESS_UID_RANGE;

/// Where the uid claims live (root-only; on `/run`, so a reboot frees every uid).
pub const CLAIMS_DIR: &str = "/run/kata-rs-rootless";

/// The lowest uid a range may start at: ids below are the system's, login users' and
/// `nobody`'s.
const MIN_UID: u32 = 65536;
/// The highest: ids from 2^31 on are negative to some programs (and `-1` is no id).
const MAX_UID: u32 = i32::MAX as u32;

/// A range of uids, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first uid.
    pub first: u32,
    /// The last uid.
    pub last: u32,
}

impl UidRange {
    /// Parses `FIRST-LAST`; errors name [`UID_RANGE_KEY`], the value and what is allowed.
    pub fn parse(value: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidConfig {
            key: UID_RANGE_KEY,
            value: format!("\"{value}\""),
            reason,
        };
        let (a, b) = value.trim().split_once('-').ok_or_else(|| {
            bad(format!(
                "expected FIRST-LAST, two uids (e.g. \"{DEFAULT_UID_RANGE}\", the default)"
            ))
        })?;
        let uid = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|e| bad(format!("{:?} is not a uid ({e})", s.trim())))
        };
        let (first, last) = (uid(a)?, uid(b)?);
        if first > last {
            return Err(bad("the first uid is above the last".into()));
        }
        if first < MIN_UID {
            return Err(bad(format!(
                "the range starts below {MIN_UID}: those ids belong to the system, login users \
                 and nobody, never to QEMU"
            )));
        }
        if last > MAX_UID {
            return Err(bad(format!("the range ends above {MAX_UID}")));
        }
        Ok(UidRange { first, last })
    }

    /// How many uids the range holds.
    pub fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Never true: a range holds at least one uid.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Checks the rootless settings of `config` (nothing when `rootless` is off).
pub fn check_config(config: &HypervisorConfig) -> Result<()> {
    if config.rootless {
        UidRange::parse(&config.rootless_uid_range)?;
    }
    Ok(())
}

/// The user a rootless QEMU runs as, as its state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootlessState {
    /// QEMU's uid.
    pub uid: u32,
    /// QEMU's gid.
    pub gid: u32,
    /// The claim file holding the uid ([`CLAIMS_DIR`]`/<uid>`).
    pub claim: PathBuf,
}

/// Claims a uid of `config`'s range for the VM in `vm_dir` (see the module documentation).
pub fn claim(config: &HypervisorConfig, vm_dir: &Path, sandbox_id: &str) -> Result<RootlessState> {
    let range = UidRange::parse(&config.rootless_uid_range)?;
    let in_use = host_ids_in_use();
    claim_in(Path::new(CLAIMS_DIR), range, vm_dir, sandbox_id, &|id| {
        in_use.contains(&id)
    })
}

/// [`claim`] with the claims in `claims_dir` and `taken` saying which ids the host uses.
pub fn claim_in(
    claims_dir: &Path,
    range: UidRange,
    vm_dir: &Path,
    sandbox_id: &str,
    taken: &dyn Fn(u32) -> bool,
) -> Result<RootlessState> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(claims_dir)
        .map_err(|e| Error::io(format!("creating {}", claims_dir.display()), e))?;
    // Root-only even when someone else made it first.
    std::fs::set_permissions(claims_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("making {} root-only", claims_dir.display()), e))?;
    let claimed: BTreeSet<u32> = std::fs::read_dir(claims_dir)
        .map_err(|e| Error::io(format!("reading {}", claims_dir.display()), e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // Start where the sandbox id points, so concurrent starts rarely try the same uid.
    let start = fnv1a(sandbox_id.as_bytes()) % range.len();
    let (mut host, mut others) = (0u64, 0u64);
    for i in 0..range.len() {
        let uid = range.first + ((start + i) % range.len()) as u32;
        if claimed.contains(&uid) {
            others += 1;
            continue;
        }
        if taken(uid) {
            host += 1;
            continue;
        }
        let path = claims_dir.join(uid.to_string());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match file {
            Ok(mut f) => {
                let written = writeln!(f, "{}", vm_dir.display());
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&path);
                    return Err(Error::io(format!("writing {}", path.display()), e));
                }
                return Ok(RootlessState {
                    uid,
                    gid: uid,
                    claim: path,
                });
            }
            // Claimed meanwhile by another runtime.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => others += 1,
            Err(e) => return Err(Error::io(format!("claiming {}", path.display()), e)),
        }
    }
    Err(Error::InvalidConfig {
        key: UID_RANGE_KEY,
        value: format!("\"{}-{}\"", range.first, range.last),
        reason: format!(
            "every uid of the range is in use ({others} claimed by other sandboxes in {}, {host} \
             used by the host's users, groups or processes): widen the range, or stop sandboxes \
             (`shim-ctl cleanup` releases the uids of crashed ones)",
            claims_dir.display()
        ),
    })
}

/// Releases `state`'s claim if it names `vm_dir` and no process runs as its uid any more
/// (else the uid stays claimed, so no other sandbox gets it: an error saying which pids).
pub fn release(state: &RootlessState, vm_dir: &Path) -> Result<()> {
    let pids = pids_of_uid(state.uid);
    if !pids.is_empty() {
        return Err(Error::io(
            format!(
                "releasing QEMU's uid {} (claim {})",
                state.uid,
                state.claim.display()
            ),
            std::io::Error::other(format!(
                "processes {pids:?} still run as it; it stays claimed"
            )),
        ));
    }
    match std::fs::read_to_string(&state.claim) {
        Ok(owner) if owner.trim_end() == vm_dir.display().to_string() => {
            std::fs::remove_file(&state.claim)
                .map_err(|e| Error::io(format!("removing {}", state.claim.display()), e))
        }
        Ok(owner) => {
            tracing::warn!(claim = %state.claim.display(), owner = owner.trim_end(), vm_dir = %vm_dir.display(), "the uid claim belongs to another VM now; left alone");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", state.claim.display()), e)),
    }
}

/// Releases every claim in `claims_dir` that names `vm_dir` (cleanup without a state); returns
/// the uids released. A uid some process still runs as stays claimed.
pub fn release_naming(claims_dir: &Path, vm_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(claims_dir) else {
        return Vec::new();
    };
    let want = vm_dir.display().to_string();
    let mut released = Vec::new();
    for entry in entries.flatten() {
        let Some(uid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let names_it = std::fs::read_to_string(entry.path())
            .map(|owner| owner.trim_end() == want)
            .unwrap_or(false);
        if !names_it {
            continue;
        }
        let state = RootlessState {
            uid,
            gid: uid,
            claim: entry.path(),
        };
        match release(&state, vm_dir) {
            Ok(()) => released.push(uid),
            Err(e) => tracing::warn!(error = %e, "a crashed VM's uid stays claimed"),
        }
    }
    released
}

/// The pids of the live processes (zombies do not count) whose real, effective, saved or
/// filesystem uid is `uid`.
pub fn pids_of_uid(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !crate::process::is_gone(*pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| status_ids(&s, "Uid:"))
                .is_some_and(|ids| ids.contains(&uid))
        })
        .collect()
}

/// The ids of a `/proc/<pid>/status` line (`Uid:` or `Gid:`).
pub fn status_ids(status: &str, field: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    Some(
        line.split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect(),
    )
}

/// The ids the host uses: the uids of `/etc/passwd`, the gids of `/etc/group` (QEMU's gid is
/// its uid) and the uids and gids of running processes.
fn host_ids_in_use() -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for file in ["/etc/passwd", "/etc/group"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        ids.extend(
            text.lines()
                .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok()),
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            for field in ["Uid:", "Gid:"] {
                ids.extend(status_ids(&status, field).unwrap_or_default());
            }
        }
    }
    ids
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Checks that QEMU's unprivileged user can read a guest file it opens by path (`what` at
/// `path`): readable by others, every directory above it searchable by others.
pub fn check_readable_by_others(what: &str, path: &Path) -> Result<()> {
    let refuse = |reason: String| Error::InvalidConfig {
        key: "rootless",
        value: "true".into(),
        reason: format!(
            "the {what} {} is not readable by QEMU's unprivileged user: {reason}; make it \
             readable by others or set rootless = false",
            path.display()
        ),
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    if meta.mode() & 0o004 == 0 {
        return Err(refuse(format!("its mode is {:o}", meta.mode() & 0o7777)));
    }
    for dir in path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        let mode = std::fs::metadata(dir)
            .map_err(|e| refuse(e.to_string()))?
            .mode();
        if mode & 0o001 == 0 {
            return Err(refuse(format!(
                "{} (mode {:o}) cannot be searched by others",
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// The descriptors a rootless QEMU gets instead of paths: the QMP and console sockets bound
/// and listening, the vhost-user sockets connected, and a `/dev/null` descriptor whose
/// `-add-fd` description names the VM directory (so adoption and cleanup, which find a VM's
/// processes by their command line naming it, still find QEMU).
#[derive(Debug)]
pub struct HandedFds {
    sockets: Vec<(PathBuf, OwnedFd)>,
    marker: OwnedFd,
    vm_dir: PathBuf,
}

impl HandedFds {
    /// Binds `listen` (removing a stale socket file first), connects to `connect`.
    pub fn open(vm_dir: &Path, listen: &[&Path], connect: &[&Path]) -> Result<Self> {
        let mut sockets = Vec::new();
        for path in listen {
            let _ = std::fs::remove_file(path);
            let l = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| Error::io(format!("binding {} for QEMU", path.display()), e))?;
            sockets.push((path.to_path_buf(), OwnedFd::from(l)));
        }
        for path in connect {
            let s = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| Error::io(format!("connecting to {} for QEMU", path.display()), e))?;
            sockets.push((path.to_path_buf(), OwnedFd::from(s)));
        }
        let marker = std::fs::File::open("/dev/null")
            .map_err(|e| Error::io("opening /dev/null", e))?
            .into();
        Ok(HandedFds {
            sockets,
            marker,
            vm_dir: vm_dir.to_path_buf(),
        })
    }

    /// The descriptor handed for the socket at `path`, if any.
    pub fn fd_for(&self, path: &Path) -> Option<RawFd> {
        self.sockets
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, fd)| fd.as_raw_fd())
    }

    /// Every descriptor QEMU inherits.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.sockets
            .iter()
            .map(|(_, fd)| fd.as_raw_fd())
            .chain(std::iter::once(self.marker.as_raw_fd()))
            .collect()
    }

    /// The `-add-fd` arguments naming the VM directory (as `<vm_dir>/`, the form
    /// [`crate::process::processes_naming`] looks for).
    pub fn marker_args(&self) -> Vec<String> {
        vec![
            "-add-fd".into(),
            format!(
                "fd={},set=1,opaque=kata-rs-vm-dir:{}/",
                self.marker.as_raw_fd(),
                self.vm_dir.display().to_string().replace(',', ",,")
            ),
        ]
    }
}

/// One host device node replaced by a private one in QEMU's namespace.
#[derive(Debug, Clone)]
struct PrivateNode {
    private: CString,
    host: CString,
    rdev: libc::dev_t,
}

/// What the QEMU child does between `fork` and `execve` to become rootless: built in the
/// parent (every string and number ready), applied in the child without allocating.
#[derive(Debug, Clone)]
pub struct RootlessLaunch {
    uid: libc::uid_t,
    gid: libc::gid_t,
    dev_dir: CString,
    tmpfs: CString,
    tmpfs_options: CString,
    root: CString,
    nodes: Vec<PrivateNode>,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::InvalidConfig {
        key: "rootless",
        value: "true".into(),
        reason: format!("the path {} holds a NUL byte", p.display()),
    })
}

impl RootlessLaunch {
    /// Prepares the launch as `state`'s user with private nodes for `devices` (host character
    /// devices QEMU opens itself), made in QEMU's namespace on a tmpfs at `<vm_dir>/dev`.
    pub fn new(state: &RootlessState, vm_dir: &Path, devices: &[&Path]) -> Result<Self> {
        let dev_dir = vm_dir.join("dev");
        let mut nodes = Vec::new();
        for host in devices {
            let meta = std::fs::metadata(host)
                .map_err(|e| Error::io(format!("reading the device {}", host.display()), e))?;
            if !meta.file_type().is_char_device() {
                return Err(Error::InvalidConfig {
                    key: "rootless",
                    value: "true".into(),
                    reason: format!("{} is not a character device", host.display()),
                });
            }
            let name = host.file_name().unwrap_or_default();
            nodes.push(PrivateNode {
                private: cstring(&dev_dir.join(name))?,
                host: cstring(host)?,
                rdev: meta.rdev() as libc::dev_t,
            });
        }
        if !nodes.is_empty() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dev_dir)
                .map_err(|e| Error::io(format!("creating {}", dev_dir.display()), e))?;
        }
        Ok(RootlessLaunch {
            uid: state.uid,
            gid: state.gid,
            dev_dir: cstring(&dev_dir)?,
            tmpfs: CString::new("tmpfs").unwrap_or_default(),
            tmpfs_options: CString::new("mode=0700,size=16k").unwrap_or_default(),
            root: CString::new("/").unwrap_or_default(),
            nodes,
        })
    }

    /// In the child, as root, before the confinement: a mount namespace of its own (a slave of
    /// the host's) where the devices are private nodes owned by QEMU's user.
    pub fn enter_namespace(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: unshare with a flag argument only.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        // SAFETY: mount with NUL-terminated strings built before the fork, or null.
        check(unsafe {
            libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        })?;
        if self.nodes.is_empty() {
            return Ok(());
        }
        // SAFETY: as above.
        check(unsafe {
            libc::mount(
                self.tmpfs.as_ptr(),
                self.dev_dir.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                self.tmpfs_options.as_ptr().cast(),
            )
        })?;
        for n in &self.nodes {
            // SAFETY: mknod, chown and mount with strings built before the fork.
            check(unsafe { libc::mknod(n.private.as_ptr(), libc::S_IFCHR | 0o600, n.rdev) })?;
            // SAFETY: as above.
            check(unsafe { libc::chown(n.private.as_ptr(), self.uid, self.gid) })?;
            // SAFETY: as above.
            check(unsafe {
                libc::mount(
                    n.private.as_ptr(),
                    n.host.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            })?;
        }
        // The binds keep their nodes; the tmpfs itself leaves QEMU's view.
        // SAFETY: umount2 with a string built before the fork.
        check(unsafe { libc::umount2(self.dev_dir.as_ptr(), libc::MNT_DETACH) })
    }

    /// In the child, last before `execve` (after the confinement): no capability can come
    /// back, no supplementary group, the user's gid and uid everywhere, `no_new_privs`.
    pub fn drop_privileges(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        for cap in 0..64 {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: past the kernel's last capability.
            if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: as above; EINVAL on a kernel without ambient capabilities, which has none.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        // SAFETY: setgroups with an empty list, then integer ids.
        check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setresgid(self.gid, self.gid, self.gid) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setresuid(self.uid, self.uid, self.uid) })?;
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        // SAFETY: getters without arguments.
        if unsafe { libc::geteuid() } != self.uid || unsafe { libc::getegid() } != self.gid {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_name_the_key() {
        assert_eq!(
            UidRange::parse(DEFAULT_UID_RANGE).unwrap(),
            UidRange {
                first: 1879048192,
                last: 1879113727
            }
        );
        assert_eq!(UidRange::parse(DEFAULT_UID_RANGE).unwrap().len(), 65536);
        assert_eq!(UidRange::parse(" 70000 - 70000 ").unwrap().len(), 1);
        for (bad, why) in [
            ("", "FIRST-LAST"),
            ("70000", "FIRST-LAST"),
            ("x-70001", "not a uid"),
            ("70001-70000", "above the last"),
            ("0-100000", "below 65536"),
            ("1000-2000", "below 65536"),
            ("70000-4294967295", "above 2147483647"),
        ] {
            let e = UidRange::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("rootless_uid_range") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let c = HypervisorConfig {
            rootless: true,
            rootless_uid_range: "5-1".into(),
            ..Default::default()
        };
        assert!(check_config(&c).is_err());
        let off = HypervisorConfig {
            rootless_uid_range: "5-1".into(),
            ..Default::default()
        };
        check_config(&off).unwrap();
    }

    #[test]
    fn a_uid_is_claimed_once_skipping_host_ids_and_released_by_its_vm_only() {
        let tmp = tempfile::tempdir().unwrap();
        let claims = tmp.path().join("claims");
        // Made by someone else, world-readable: claiming makes it root-only.
        std::fs::create_dir(&claims).unwrap();
        std::fs::set_permissions(&claims, std::fs::Permissions::from_mode(0o755)).unwrap();
        let range = UidRange::parse("100000-100003").unwrap();
        let taken = |id: u32| id == 100001;
        let mut got = Vec::new();
        for i in 0..3 {
            let vm = tmp.path().join(format!("vm{i}"));
            let s = claim_in(&claims, range, &vm, "same-id", &taken).unwrap();
            assert_eq!(s.uid, s.gid);
            assert_eq!(
                std::fs::read_to_string(&s.claim).unwrap(),
                format!("{}\n", vm.display())
            );
            got.push(s);
        }
        let mut uids: Vec<u32> = got.iter().map(|s| s.uid).collect();
        uids.sort_unstable();
        assert_eq!(
            uids,
            [100000, 100002, 100003],
            "host ids skipped, none twice"
        );
        let mode = std::fs::metadata(&claims).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // Exhausted: an error naming the key and counting why; nothing is created.
        let before = std::fs::read_dir(&claims).unwrap().count();
        let e = claim_in(&claims, range, &tmp.path().join("vm9"), "x", &taken)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rootless_uid_range") && e.contains("3 claimed") && e.contains("1 used"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&claims).unwrap().count(), before);

        // A claim is released only by the VM it names.
        release(&got[0], &tmp.path().join("other-vm")).unwrap();
        assert!(got[0].claim.exists());
        release(&got[0], &tmp.path().join("vm0")).unwrap();
        assert!(!got[0].claim.exists());
        release(&got[0], &tmp.path().join("vm0")).unwrap();
        // Without a state: by the VM directory.
        assert_eq!(
            release_naming(&claims, &tmp.path().join("vm2")),
            [got[2].uid]
        );
        assert!(!got[2].claim.exists() && got[1].claim.exists());
        // A freed uid is claimed again.
        let again = claim_in(&claims, range, &tmp.path().join("vm5"), "y", &taken).unwrap();
        assert!([got[0].uid, got[2].uid].contains(&again.uid));
    }

    #[test]
    fn a_uid_a_process_runs_as_stays_claimed() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = tmp.path().join("vm");
        // This test's own uid (root in CI, someone else elsewhere) has a process: this one.
        // SAFETY: getuid has no arguments.
        let me = unsafe { libc::getuid() };
        let claim = tmp.path().join(me.to_string());
        std::fs::write(&claim, format!("{}\n", vm.display())).unwrap();
        let state = RootlessState {
            uid: me,
            gid: me,
            claim: claim.clone(),
        };
        let e = release(&state, &vm).unwrap_err().to_string();
        assert!(e.contains("still run as it"), "{e}");
        assert!(claim.exists());
        assert!(release_naming(tmp.path(), &vm).is_empty());
        assert!(claim.exists());
    }

    #[test]
    fn status_lines_give_their_ids() {
        let s =
            "Name:\tqemu\nUid:\t1879048200\t1879048200\t1879048200\t1879048200\nGid:\t5\t5\t5\t5\n";
        assert_eq!(status_ids(s, "Uid:").unwrap(), [1879048200; 4]);
        assert_eq!(status_ids(s, "Gid:").unwrap(), [5; 4]);
        assert!(status_ids(s, "CapEff:").is_none());
    }

    #[test]
    fn guest_files_must_be_readable_by_others() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = tmp.path().join("vmlinuz");
        std::fs::write(&f, "k").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_readable_by_others("guest kernel", &f).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = check_readable_by_others("guest kernel", &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rootless") && e.contains("mode is 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_readable_by_others("guest kernel", &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be searched"), "{e}");
    }

    /// As root: a child made rootless as QEMU is has no capability, `no_new_privs`, no
    /// supplementary group, the claimed ids, and its private `/dev/null` copy is its own while
    /// the host's node is unchanged.
    #[test]
    fn a_rootless_child_has_no_privileges_and_private_nodes() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        use std::os::unix::process::CommandExt;
        let tmp = tempfile::tempdir().unwrap();
        let vm = tmp.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let state = RootlessState {
            uid: 1879113000,
            gid: 1879113000,
            claim: tmp.path().join("claim"),
        };
        let launch = RootlessLaunch::new(&state, &vm, &[Path::new("/dev/null")]).unwrap();
        let confinement = super::super::confine::VmmConfinement::new().unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(
            "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status; \
             stat -c 'null %u %a' /dev/null",
        );
        let l = launch.clone();
        // SAFETY: the closure makes syscalls on data built before the fork and allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                l.enter_namespace()?;
                confinement.apply()?;
                l.drop_privileges()
            });
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        for want in [
            "Uid:\t1879113000\t1879113000\t1879113000\t1879113000",
            "Gid:\t1879113000\t1879113000\t1879113000\t1879113000",
            "CapEff:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
            "null 1879113000 600",
        ] {
            assert!(text.contains(want), "`{want}` not in:\n{text}");
        }
        let groups = text.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert_eq!(groups.trim_end(), "Groups:", "{text}");
        let host = std::fs::metadata("/dev/null").unwrap();
        assert_eq!((host.uid(), host.mode() & 0o777), (0, 0o666));
        // The tmpfs was only in the child's namespace: the host sees an empty directory.
        assert_eq!(std::fs::read_dir(vm.join("dev")).unwrap().count(), 0);
    }
}
