//! containerd's rootfs mounts (its `mount.Mount`: a type, a source and options, as a
//! snapshotter hands them to a shim in `CreateTaskRequest.rootfs`) turned into mount(2) calls.
//!
//! Options follow containerd's `mount_linux.go`: the names of its flag table (`ro`, `rw`,
//! `bind`, `rbind`, `noatime`, `nosuid`, `sync`, ...) set or clear mount flags; OCI's
//! propagation names (`private`, `rshared`, `slave`, ...) change the propagation after the
//! mount; everything else (`lowerdir=`, `upperdir=`, `workdir=`, `index=off`, `userxattr`, ...)
//! is data for the filesystem. Overlay options longer than a page are shortened as containerd
//! does: the lowerdirs become relative to their common directory, where the mount is made from.
//!
//! Deliberate limits (each refused with an error naming the option): only `overlay` and `bind`
//! mounts (mounting a block device's filesystem on the host would have the host kernel parse an
//! image's bytes); no `loop`, `remount`, idmapped (`uidmap=`, `gidmap=`) or `X-containerd.*`
//! options; no `suid` or `dev`, since every host mount kata-rs makes is `nosuid,nodev`.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use crate::mount::MountCall;
use crate::{Error, Result};

/// One rootfs mount as containerd describes it (`containerd.types.Mount`).
///
/// ```
/// use kata_resource::rootfs::RootfsMount;
///
/// let overlay = RootfsMount::new(
///     "overlay",
///     "overlay",
///     ["index=off", "lowerdir=/snapshots/2/fs:/snapshots/1/fs", "upperdir=/snapshots/3/fs",
///      "workdir=/snapshots/3/work"],
/// );
/// assert_eq!(overlay.fs_type, "overlay");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsMount {
    /// The filesystem type: `overlay` or `bind`.
    pub fs_type: String,
    /// The source: `overlay`, or the directory a bind mount shows.
    pub source: String,
    /// containerd's options, one per element (`ro`, `rbind`, `lowerdir=...`).
    pub options: Vec<String>,
}

impl RootfsMount {
    /// A mount of `fs_type` from `source` with `options`.
    pub fn new(
        fs_type: impl Into<String>,
        source: impl Into<String>,
        options: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        RootfsMount {
            fs_type: fs_type.into(),
            source: source.into(),
            options: options.into_iter().map(Into::into).collect(),
        }
    }

    /// The mount(2) calls for mounting this on `target` (a description only: nothing is
    /// mounted). Refused options and types are errors naming them.
    pub(crate) fn to_call(&self, target: &Path) -> Result<MountCall> {
        let refuse = |reason: String| Error::RootfsMountRefused {
            fs_type: self.fs_type.clone(),
            mount_source: self.source.clone(),
            target: target.to_owned(),
            reason,
        };
        let mut flags = MsFlags::empty();
        let mut propagation = MsFlags::empty();
        let mut data: Vec<&str> = Vec::new();
        for option in &self.options {
            let option = option.as_str();
            if let Some((set, clear)) = flag(option) {
                flags = (flags | set) - clear;
            } else if let Some(p) = propagation_flag(option) {
                propagation = p;
            } else if let Some(why) = refused_option(option) {
                return Err(refuse(format!("option `{option}` is not supported: {why}")));
            } else {
                data.push(option);
            }
        }
        let what = match self.fs_type.as_str() {
            "overlay" => "overlay",
            "bind" => {
                if !Path::new(&self.source).is_absolute() {
                    return Err(refuse(
                        "a bind mount's source must be an absolute path".into(),
                    ));
                }
                // containerd's `bind` type always comes with `bind` or `rbind`; a bare one
                // means a plain bind too.
                flags |= MsFlags::MS_BIND;
                "bind"
            }
            other => {
                return Err(refuse(format!(
                    "mount type `{other}` is not supported (overlay and bind are: kata-rs does \
                     not mount an image's filesystem on the host)"
                )))
            }
        };
        let mut call = MountCall {
            what: format!("{what} of {}", self.source),
            source: self.source.clone(),
            fs_type: self.fs_type.clone(),
            flags,
            propagation,
            data: (!data.is_empty()).then(|| data.join(",")),
            cwd: None,
        };
        let limit = page_size();
        let len = call.data.as_ref().map_or(0, String::len);
        // containerd compacts from a page less 512 bytes on.
        if self.fs_type == "overlay" && len >= limit.saturating_sub(512) {
            if let Some((dir, shorter)) = compact_lowerdirs(&data) {
                call.data = Some(shorter);
                call.cwd = Some(dir);
            }
        }
        let len = call.data.as_ref().map_or(0, String::len);
        if len >= limit {
            return Err(refuse(format!(
                "its options are {len} bytes, more than the kernel takes ({limit}), even with \
                 the lowerdirs relative to their common directory"
            )));
        }
        Ok(call)
    }
}

/// containerd's flag table: the flags an option sets and clears.
fn flag(option: &str) -> Option<(MsFlags, MsFlags)> {
    use MsFlags as F;
    let none = F::empty();
    Some(match option {
        "async" => (none, F::MS_SYNCHRONOUS),
        "atime" => (none, F::MS_NOATIME),
        "bind" => (F::MS_BIND, none),
        "defaults" => (none, none),
        "diratime" => (none, F::MS_NODIRATIME),
        "dirsync" => (F::MS_DIRSYNC, none),
        "exec" => (none, F::MS_NOEXEC),
        "mand" => (F::MS_MANDLOCK, none),
        "noatime" => (F::MS_NOATIME, none),
        "nodev" => (F::MS_NODEV, none),
        "nodiratime" => (F::MS_NODIRATIME, none),
        "noexec" => (F::MS_NOEXEC, none),
        "nomand" => (none, F::MS_MANDLOCK),
        "norelatime" => (none, F::MS_RELATIME),
        "nostrictatime" => (none, F::MS_STRICTATIME),
        "nosuid" => (F::MS_NOSUID, none),
        "rbind" => (F::MS_BIND | F::MS_REC, none),
        "relatime" => (F::MS_RELATIME, none),
        "ro" => (F::MS_RDONLY, none),
        "rw" => (none, F::MS_RDONLY),
        "strictatime" => (F::MS_STRICTATIME, none),
        "sync" => (F::MS_SYNCHRONOUS, none),
        _ => return None,
    })
}

/// OCI's propagation names: the flags of the propagation change after the mount.
fn propagation_flag(option: &str) -> Option<MsFlags> {
    use MsFlags as F;
    Some(match option {
        "private" => F::MS_PRIVATE,
        "rprivate" => F::MS_PRIVATE | F::MS_REC,
        "shared" => F::MS_SHARED,
        "rshared" => F::MS_SHARED | F::MS_REC,
        "slave" => F::MS_SLAVE,
        "rslave" => F::MS_SLAVE | F::MS_REC,
        "unbindable" => F::MS_UNBINDABLE,
        "runbindable" => F::MS_UNBINDABLE | F::MS_REC,
        _ => return None,
    })
}

/// Why `option` is refused, if it is.
fn refused_option(option: &str) -> Option<&'static str> {
    let name = option.split_once('=').map_or(option, |(name, _)| name);
    Some(match name {
        "suid" | "dev" => "kata-rs mounts every host rootfs nosuid,nodev",
        "loop" => "loop devices are not set up by kata-rs",
        "remount" => "a rootfs mount creates a mount, it does not change one",
        "uidmap" | "gidmap" => "idmapped rootfs mounts are not supported",
        _ if name.starts_with("X-containerd.") => "containerd's own options are not supported",
        _ => return None,
    })
}

/// The data options with every `lowerdir=` made relative to the lowerdirs' common directory,
/// and that directory; `None` when they have none but `/` (containerd's rule).
fn compact_lowerdirs(data: &[&str]) -> Option<(PathBuf, String)> {
    const KEY: &str = "lowerdir=";
    let lowerdirs: Vec<&str> = data
        .iter()
        .filter_map(|o| o.strip_prefix(KEY))
        .flat_map(|l| l.split(':'))
        .collect();
    if lowerdirs.len() < 2 {
        return None;
    }
    let first = lowerdirs[0];
    let mut common = first.len();
    for dir in &lowerdirs[1..] {
        common = common.min(
            first
                .bytes()
                .zip(dir.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    // Up to and including the last `/` of the common prefix: a whole directory.
    let prefix = &first[..first[..common].rfind('/')? + 1];
    if prefix == "/" || !prefix.starts_with('/') {
        return None;
    }
    let relative: Vec<&str> = lowerdirs
        .iter()
        .map(|dir| dir.strip_prefix(prefix).unwrap_or(dir))
        .collect();
    let joined = format!("{KEY}{}", relative.join(":"));
    let mut replaced = false;
    let options: Vec<&str> = data
        .iter()
        .filter_map(|o| {
            if !o.starts_with(KEY) {
                Some(*o)
            } else if !replaced {
                replaced = true;
                Some(joined.as_str())
            } else {
                None
            }
        })
        .collect();
    Some((PathBuf::from(prefix), options.join(",")))
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(m: &RootfsMount) -> MountCall {
        m.to_call(Path::new("/bundle/rootfs")).unwrap()
    }

    #[test]
    fn overlay_options_become_data_and_flags() {
        let m = RootfsMount::new(
            "overlay",
            "overlay",
            [
                "index=off",
                "ro",
                "rw",
                "noatime",
                "lowerdir=/s/2/fs:/s/1/fs",
                "upperdir=/s/3/fs",
                "workdir=/s/3/work",
            ],
        );
        let c = call(&m);
        assert_eq!(c.fs_type, "overlay");
        assert_eq!(c.source, "overlay");
        // `rw` after `ro` clears it, as in containerd.
        assert_eq!(c.flags, MsFlags::MS_NOATIME);
        assert!(c.propagation.is_empty());
        assert_eq!(
            c.data.as_deref(),
            Some("index=off,lowerdir=/s/2/fs:/s/1/fs,upperdir=/s/3/fs,workdir=/s/3/work")
        );
        assert_eq!(c.cwd, None);
        assert_eq!(c.what, "overlay of overlay");
    }

    #[test]
    fn bind_options_and_propagation() {
        let c = call(&RootfsMount::new(
            "bind",
            "/snapshots/7/fs",
            ["rbind", "ro", "rslave"],
        ));
        assert_eq!(
            c.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(c.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(c.data, None);
        // A bare `bind` type is still a bind.
        let c = call(&RootfsMount::new("bind", "/x", ["rw", "private"]));
        assert_eq!(c.flags, MsFlags::MS_BIND);
        assert_eq!(c.propagation, MsFlags::MS_PRIVATE);
        let all = [
            "async",
            "atime",
            "defaults",
            "diratime",
            "dirsync",
            "exec",
            "mand",
            "nomand",
            "nodev",
            "nodiratime",
            "noexec",
            "norelatime",
            "nostrictatime",
            "nosuid",
            "relatime",
            "strictatime",
            "sync",
        ];
        let c = call(&RootfsMount::new("bind", "/x", all));
        assert_eq!(
            c.flags,
            MsFlags::MS_BIND
                | MsFlags::MS_DIRSYNC
                | MsFlags::MS_NODEV
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOSUID
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME
                | MsFlags::MS_SYNCHRONOUS
        );
    }

    #[test]
    fn refused_types_and_options_are_named() {
        let target = Path::new("/bundle/rootfs");
        for (m, needle) in [
            (RootfsMount::new("ext4", "/dev/vdb", ["rw"]), "`ext4`"),
            (RootfsMount::new("bind", "relative", ["rbind"]), "absolute"),
            (RootfsMount::new("overlay", "overlay", ["loop"]), "`loop`"),
            (RootfsMount::new("bind", "/x", ["rbind", "suid"]), "`suid`"),
            (RootfsMount::new("bind", "/x", ["dev"]), "nosuid,nodev"),
            (RootfsMount::new("bind", "/x", ["remount"]), "`remount`"),
            (
                RootfsMount::new("overlay", "overlay", ["uidmap=0:1000:1"]),
                "idmapped",
            ),
            (
                RootfsMount::new("overlay", "overlay", ["X-containerd.mkdir.path=/a"]),
                "X-containerd.mkdir.path",
            ),
        ] {
            let err = m.to_call(target).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::RootfsMountRefused { .. }), "{text}");
            assert!(text.contains(needle), "{needle}: {text}");
            assert!(text.contains("/bundle/rootfs"), "{text}");
        }
    }

    #[test]
    fn long_lowerdir_lists_are_made_relative_like_containerd() {
        let root = format!("/var/lib/containerd/{}/snapshots", "x".repeat(60));
        let lowers: Vec<String> = (1..=60).map(|i| format!("{root}/{i}/fs")).collect();
        let lowerdir = format!("lowerdir={}", lowers.join(":"));
        let upper = format!("upperdir={root}/99/fs");
        let work = format!("workdir={root}/99/work");
        let m = RootfsMount::new(
            "overlay",
            "overlay",
            [upper.as_str(), lowerdir.as_str(), work.as_str()],
        );
        let c = call(&m);
        assert_eq!(c.cwd, Some(PathBuf::from(format!("{root}/"))));
        let relative: Vec<String> = (1..=60).map(|i| format!("{i}/fs")).collect();
        assert_eq!(
            c.data.unwrap(),
            format!("{upper},lowerdir={},{work}", relative.join(":"))
        );

        // Short lists are left alone; too long even when compacted is refused.
        assert_eq!(compact_lowerdirs(&["lowerdir=/a/1:/b/2"]), None);
        let lowers: Vec<String> = (1..=500).map(|i| format!("/l{i:04}/fs")).collect();
        let lowerdir = format!("lowerdir={}", lowers.join(":"));
        let err = RootfsMount::new("overlay", "overlay", [lowerdir])
            .to_call(Path::new("/t"))
            .unwrap_err();
        assert!(
            err.to_string().contains("more than the kernel takes"),
            "{err}"
        );
    }
}
