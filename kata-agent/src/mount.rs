//! Mount options, and mounting onto a destination opened inside a root.
//!
//! Both the sandbox storages (`Storage.options`) and the OCI spec's mounts (`mounts[].options`)
//! use the same vocabulary (`ro`, `nosuid`, `rbind`, `rslave`, `mode=755`, ...). [`MountOptions`]
//! splits a list into the flags for the mount itself, the propagation change to apply after it,
//! and the filesystem-specific data string.
//!
//! [`mount_on`] mounts onto a file a [`Root`] resolution opened ([`InRoot`]), never onto a path
//! string: `mount(2)` gets `/proc/thread-self/fd/<n>`, which the kernel resolves to that inode
//! however the tree was changed since. It then checks that the new mount sits on that inode,
//! inside the root, and applies a bind mount's flags and the propagation through a descriptor
//! of the new mount.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::error::{AgentError, Result};
use crate::runtime::path::{fd_path, fd_target, mount_id, InRoot, Root};

/// A parsed mount option list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call itself (`MS_RDONLY`, `MS_NOSUID`, `MS_BIND`, ...).
    pub flags: MsFlags,
    /// Propagation to apply with a second call (`MS_PRIVATE`, `MS_SLAVE`, ... with `MS_REC`).
    pub propagation: MsFlags,
    /// Filesystem-specific options, comma separated (`mode=755,size=65536k`).
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
        }
    }
}

impl MountOptions {
    /// Parses a list of options. Unknown options are filesystem data.
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Self {
        let mut out = MountOptions::default();
        let mut data: Vec<&str> = Vec::new();
        for opt in options {
            let opt = opt.as_ref().trim();
            if opt.is_empty() {
                continue;
            }
            // (flag, clear?) for flags, or a propagation type.
            let flag = match opt {
                "defaults" | "rw" => Some((MsFlags::MS_RDONLY, true)),
                "ro" => Some((MsFlags::MS_RDONLY, false)),
                "suid" => Some((MsFlags::MS_NOSUID, true)),
                "nosuid" => Some((MsFlags::MS_NOSUID, false)),
                "dev" => Some((MsFlags::MS_NODEV, true)),
                "nodev" => Some((MsFlags::MS_NODEV, false)),
                "exec" => Some((MsFlags::MS_NOEXEC, true)),
                "noexec" => Some((MsFlags::MS_NOEXEC, false)),
                "sync" => Some((MsFlags::MS_SYNCHRONOUS, false)),
                "async" => Some((MsFlags::MS_SYNCHRONOUS, true)),
                "dirsync" => Some((MsFlags::MS_DIRSYNC, false)),
                "remount" => Some((MsFlags::MS_REMOUNT, false)),
                "mand" => Some((MsFlags::MS_MANDLOCK, false)),
                "nomand" => Some((MsFlags::MS_MANDLOCK, true)),
                "atime" => Some((MsFlags::MS_NOATIME, true)),
                "noatime" => Some((MsFlags::MS_NOATIME, false)),
                "diratime" => Some((MsFlags::MS_NODIRATIME, true)),
                "nodiratime" => Some((MsFlags::MS_NODIRATIME, false)),
                "relatime" => Some((MsFlags::MS_RELATIME, false)),
                "norelatime" => Some((MsFlags::MS_RELATIME, true)),
                "strictatime" => Some((MsFlags::MS_STRICTATIME, false)),
                "nostrictatime" => Some((MsFlags::MS_STRICTATIME, true)),
                "bind" => Some((MsFlags::MS_BIND, false)),
                "rbind" => Some((MsFlags::MS_BIND | MsFlags::MS_REC, false)),
                "silent" => Some((MsFlags::MS_SILENT, false)),
                "loud" => Some((MsFlags::MS_SILENT, true)),
                _ => None,
            };
            if let Some((f, clear)) = flag {
                if clear {
                    out.flags.remove(f);
                } else {
                    out.flags.insert(f);
                }
                continue;
            }
            let propagation = match opt {
                "private" => Some(MsFlags::MS_PRIVATE),
                "rprivate" => Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
                "shared" => Some(MsFlags::MS_SHARED),
                "rshared" => Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
                "slave" => Some(MsFlags::MS_SLAVE),
                "rslave" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
                "unbindable" => Some(MsFlags::MS_UNBINDABLE),
                "runbindable" => Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
                _ => None,
            };
            if let Some(p) = propagation {
                out.propagation = p;
                continue;
            }
            if !data.contains(&opt) {
                data.push(opt);
            }
        }
        out.data = data.join(",");
        out
    }

    /// Whether the options ask for a bind mount.
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Whether the options ask for a read-only mount.
    pub fn is_readonly(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }

    /// The data string, or `None` when empty.
    pub fn data(&self) -> Option<&str> {
        (!self.data.is_empty()).then_some(self.data.as_str())
    }
}

/// Parses one propagation name as used by `linux.rootfsPropagation`.
pub fn parse_propagation(name: &str) -> Option<MsFlags> {
    let opts = MountOptions::parse(&[name]);
    (!opts.propagation.is_empty()).then_some(opts.propagation)
}

/// Mounts `source` on `target` as described by `fstype` and `opts`: the mount, then the read-only
/// remount a bind mount needs, then the propagation change.
pub fn mount_with(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    opts: &MountOptions,
) -> Result<()> {
    let flags = opts.flags;
    let data = opts.data();
    let ctx = || {
        format!(
            "mount {} on {} (type {}, options {:?})",
            source.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display(),
            fstype.unwrap_or("none"),
            opts.data
        )
    };
    if opts.is_bind() {
        mount(source, target, fstype, flags & !MsFlags::MS_RDONLY, data)
            .map_err(|e| AgentError::sys(ctx(), e))?;
        // A bind mount ignores most flags on the first call: apply them with a remount.
        let extra = bind_remount_flags(flags);
        if !extra.is_empty() {
            remount_bind(target, extra).map_err(|e| AgentError::sys(ctx(), e))?;
        }
    } else {
        mount(source, target, fstype, flags, data).map_err(|e| AgentError::sys(ctx(), e))?;
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(|e| AgentError::sys(format!("set propagation of {}", target.display()), e))?;
    }
    Ok(())
}

/// The flags a bind mount ignores on its first call and gets with a remount.
fn bind_remount_flags(flags: MsFlags) -> MsFlags {
    flags
        & (MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME
            | MsFlags::MS_NODIRATIME
            | MsFlags::MS_RELATIME
            | MsFlags::MS_STRICTATIME)
}

/// Mounts `source` on `dest`, a file or directory opened inside a root, through its descriptor:
/// `mount(2)` resolves `/proc/thread-self/fd/<n>` to exactly that inode, so a directory swapped
/// for a symlink since the resolution changes nothing. Only the first call: a bind mount's flags
/// and the propagation come with [`settle`]. On error nothing was mounted.
pub fn attach(
    dest: &InRoot,
    source: Option<&Path>,
    fstype: Option<&str>,
    opts: &MountOptions,
) -> nix::Result<()> {
    #[cfg(test)]
    hook::before_attach();
    let flags = if opts.is_bind() {
        opts.flags & !MsFlags::MS_RDONLY
    } else {
        opts.flags
    };
    mount(source, &fd_path(dest.fd()), fstype, flags, opts.data())
}

/// After [`attach`]: opens what is now mounted on `dest` (its name in its directory, without
/// following a symlink), checks that it is a new mount sitting on `dest`'s inode inside `root`,
/// then remounts a bind mount with its flags and sets the propagation, both through that
/// descriptor. A mount that is not where it was meant to go is an error naming both places.
pub fn settle(root: &Root, dest: &InRoot, opts: &MountOptions) -> Result<()> {
    #[cfg(test)]
    hook::before_settle();
    let ctx = || {
        format!(
            "mount on {} in {}",
            dest.rel().display(),
            root.path().display()
        )
    };
    let mounted = match dest.reopen() {
        Some(r) => r.map_err(|e| AgentError::io(ctx(), e))?,
        None => {
            return Err(AgentError::io(
                ctx(),
                io::Error::other("the destination is the root itself"),
            ))
        }
    };
    check_landed(root, dest, mounted.as_fd()).map_err(|e| AgentError::io(ctx(), e))?;
    let target = fd_path(mounted.as_fd());
    let extra = bind_remount_flags(opts.flags);
    if opts.is_bind() && !extra.is_empty() {
        remount_bind(&target, extra).map_err(|e| AgentError::sys(ctx(), e))?;
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(|e| AgentError::sys(format!("set propagation of the {}", ctx()), e))?;
    }
    Ok(())
}

/// [`attach`] then [`settle`], with errors naming the source, the destination and the root.
pub fn mount_on(
    root: &Root,
    dest: &InRoot,
    source: Option<&Path>,
    fstype: Option<&str>,
    opts: &MountOptions,
) -> Result<()> {
    attach(dest, source, fstype, opts).map_err(|e| {
        AgentError::sys(
            format!(
                "mount {} on {} in {} (type {}, options {:?})",
                source.map(|s| s.display().to_string()).unwrap_or_default(),
                dest.rel().display(),
                root.path().display(),
                fstype.unwrap_or("none"),
                opts.data
            ),
            e,
        )
    })?;
    settle(root, dest, opts)
}

/// Whether `mounted` is the root of a new mount whose parent is the mount `dest` is on, whose
/// mount point is where `dest` is now, and that is inside `root`.
fn check_landed(root: &Root, dest: &InRoot, mounted: BorrowedFd<'_>) -> io::Result<()> {
    let below = mount_id(dest.fd())?;
    let new = mount_id(mounted)?;
    let expected = fd_target(dest.fd())?;
    let root_at = fd_target(root.fd())?;
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
    let entry = mountinfo_entry(&info, new);
    let landed = new != below
        && entry.as_ref().is_some_and(|(parent, mount_point)| {
            *parent == below && Path::new(mount_point) == expected
        })
        && expected.starts_with(&root_at);
    if landed {
        return Ok(());
    }
    let found = match (new == below, entry) {
        (true, _) => "nothing is mounted there now".to_string(),
        (false, Some((_, mount_point))) => format!("what is there now is mounted on {mount_point}"),
        (false, None) => "what is there now is not in this mount namespace".to_string(),
    };
    Err(io::Error::other(format!(
        "the mount did not land on {} inside {}: {found} (something renamed it in the tree \
         meanwhile)",
        expected.display(),
        root_at.display()
    )))
}

/// The parent id and mount point (octal escapes decoded) of mount `id` in a mountinfo text.
fn mountinfo_entry(mountinfo: &str, id: u64) -> Option<(u64, String)> {
    mountinfo.lines().find_map(|l| {
        let mut f = l.split(' ');
        let this: u64 = f.next()?.parse().ok()?;
        let parent: u64 = f.next()?.parse().ok()?;
        let mount_point = f.nth(2)?;
        (this == id).then(|| (parent, unescape_octal(mount_point)))
    })
}

/// Test fail points: something to run between a destination's resolution and its mount
/// ([`set_before_attach`](hook::set_before_attach)), or between the mount and the check of where
/// it landed ([`set_before_settle`](hook::set_before_settle)). Per thread.
#[cfg(test)]
pub(crate) mod hook {
    use std::cell::RefCell;

    type Hook = RefCell<Option<Box<dyn FnOnce()>>>;

    thread_local! {
        static BEFORE_ATTACH: Hook = RefCell::new(None);
        static BEFORE_SETTLE: Hook = RefCell::new(None);
    }

    /// Runs `f` right before the next [`super::attach`] of this thread calls `mount(2)`.
    pub(crate) fn set_before_attach(f: impl FnOnce() + 'static) {
        BEFORE_ATTACH.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    /// Runs `f` at the start of the next [`super::settle`] of this thread.
    pub(crate) fn set_before_settle(f: impl FnOnce() + 'static) {
        BEFORE_SETTLE.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    fn run(hook: &'static std::thread::LocalKey<Hook>) {
        if let Some(f) = hook.with(|h| h.borrow_mut().take()) {
            f();
        }
    }

    pub(super) fn before_attach() {
        run(&BEFORE_ATTACH);
    }

    pub(super) fn before_settle() {
        run(&BEFORE_SETTLE);
    }
}

/// Remounts a bind mount with `flags`, keeping the flags the kernel has locked on it
/// (nosuid, nodev, noexec, atime settings), which a remount may not clear.
pub fn remount_bind(target: &Path, flags: MsFlags) -> nix::Result<()> {
    let locked = locked_flags(target);
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        None::<&str>,
    )
}

/// The per-mount flags currently set on the mount containing `path`.
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Whether `path` is a mount point in the calling process's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mount_points(&info).iter().any(|p| Path::new(p) == path)
}

/// The mount points listed in a `/proc/<pid>/mountinfo` text, in order, with octal escapes
/// (`\040` for a space) decoded.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_propagation_and_data() {
        let o = MountOptions::parse(&["nosuid", "noexec", "mode=755", "size=65536k", "rslave"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.is_bind());
    }

    #[test]
    fn bind_and_readonly() {
        let o = MountOptions::parse(&["rbind", "ro"]);
        assert!(o.is_bind());
        assert!(o.is_readonly());
        assert!(o.flags.contains(MsFlags::MS_REC));
        let o = MountOptions::parse(&["ro", "rw"]);
        assert!(!o.is_readonly(), "later rw clears earlier ro");
        assert_eq!(o.data(), None);
    }

    #[test]
    fn devpts_newinstance_is_data() {
        let o = MountOptions::parse(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
    }

    #[test]
    fn nine_p_options_are_deduplicated() {
        let o = MountOptions::parse(&["trans=virtio", "version=9p2000.L", "trans=virtio", ""]);
        assert_eq!(o.data, "trans=virtio,version=9p2000.L");
    }

    #[test]
    fn propagation_names() {
        assert_eq!(parse_propagation("private"), Some(MsFlags::MS_PRIVATE));
        assert_eq!(
            parse_propagation("rshared"),
            Some(MsFlags::MS_SHARED | MsFlags::MS_REC)
        );
        assert_eq!(parse_propagation("bogus"), None);
    }

    #[test]
    fn finds_a_mount_s_parent_and_mount_point() {
        let info = "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n\
                    31 22 0:6 / /run/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mountinfo_entry(info, 31),
            Some((22, "/run/with space".to_string()))
        );
        assert_eq!(mountinfo_entry(info, 22), Some((1, "/".to_string())));
        assert_eq!(mountinfo_entry(info, 3), None);
    }

    #[test]
    fn parses_mountinfo_mount_points() {
        let info = "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n\
                    30 22 0:5 / /dev rw - devtmpfs devtmpfs rw\n\
                    31 22 0:6 / /run/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_points(info), vec!["/", "/dev", "/run/with space"]);
    }
}
