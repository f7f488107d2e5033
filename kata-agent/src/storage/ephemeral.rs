//! `ephemeral` storages: a tmpfs the agent mounts in the guest — the pod's `/dev/shm` sized
//! from the pod (`size=`), and emptyDir volumes of medium Memory.
//!
//! Options are checked one by one before anything is mounted: mount flags (`ro`, `nosuid`,
//! `noexec`, ...), tmpfs's own options with their values checked (`size=`, `nr_inodes=`,
//! `nr_blocks=`, `mode=`, `uid=`, `gid=`, `huge=`, `mpol=`, `inode64`, `noswap`) and Kata's
//! `fsgid=` (the group that owns the volume's root, set-group-ID so new files inherit it). Any
//! other option is refused naming the storage and the option. `nosuid` and `nodev` are the
//! default (an explicit `suid` or `dev` overrides them).

use crate::error::{AgentError, Result};
use crate::mount::MountOptions;

/// A checked ephemeral storage: what mount(2) gets, and the group to give its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tmpfs {
    /// The options for the mount (the defaults, then the request's, without `fsgid=`).
    pub options: Vec<String>,
    /// `fsgid=`: the group to own the root.
    pub fsgid: Option<u32>,
}

/// tmpfs's `huge=` values.
const HUGE: &[&str] = &["never", "always", "within_size", "advise", "deny", "force"];

/// Checks an ephemeral storage's options; `field` names the storage (`storages[1]`),
/// `mount_point` says where it goes.
pub(super) fn check(options: &[String], field: &str, mount_point: &str) -> Result<Tmpfs> {
    let mut out = Tmpfs {
        options: vec!["nosuid".into(), "nodev".into()],
        fsgid: None,
    };
    for (j, opt) in options.iter().enumerate() {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let bad = |why: String| {
            AgentError::invalid(
                format!("{field}.options[{j}]"),
                format!("{opt:?} of the ephemeral storage at {mount_point}: {why}"),
            )
        };
        // A mount flag or a propagation type leaves no filesystem data.
        if MountOptions::parse(&[opt]).data.is_empty() {
            out.options.push(opt.to_string());
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("size", Some(v)) => {
                if !is_size(v, true) {
                    return Err(bad(
                        "is not a size: give bytes with an optional k, m or g suffix \
                         (size=64m), or a percentage of the guest's memory (size=50%)"
                            .into(),
                    ));
                }
            }
            ("nr_blocks" | "nr_inodes", Some(v)) => {
                if !is_size(v, false) {
                    return Err(bad(format!(
                        "{key} is not a count (a number with an optional k, m or g suffix)"
                    )));
                }
            }
            ("mode", Some(v)) => {
                parse_mode(v).map_err(bad)?;
            }
            ("uid" | "gid", Some(v)) => {
                v.parse::<u32>()
                    .map_err(|_| bad(format!("{key} is not a numeric id")))?;
            }
            ("fsgid", Some(v)) => {
                let gid = v
                    .parse::<u32>()
                    .map_err(|_| bad("fsgid is not a numeric group id".into()))?;
                out.fsgid = Some(gid);
                continue;
            }
            ("huge", Some(v)) => {
                if !HUGE.contains(&v) {
                    return Err(bad(format!("huge must be one of {HUGE:?}")));
                }
            }
            ("mpol", Some(v)) if !v.is_empty() => {}
            ("inode32" | "inode64" | "noswap", None) => {}
            _ => {
                return Err(bad(
                    "is not an option of an ephemeral (tmpfs) storage: use mount flags (ro, \
                     nosuid, nodev, noexec) or size=, nr_inodes=, nr_blocks=, mode=, uid=, \
                     gid=, huge=, mpol=, inode64, noswap, fsgid="
                        .into(),
                ))
            }
        }
        out.options.push(opt.to_string());
    }
    Ok(out)
}

/// A tmpfs size or count: digits with an optional k/m/g/t/p/e suffix (either case), or (when
/// `percent` is allowed) digits and `%`.
fn is_size(v: &str, percent: bool) -> bool {
    let (digits, suffix) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => v.split_at(i),
        None => (v, ""),
    };
    if digits.is_empty() || digits.parse::<u64>().is_err() {
        return false;
    }
    match suffix {
        "" => true,
        "%" => percent,
        s => s.len() == 1 && "kKmMgGtTpPeE".contains(s),
    }
}

/// A permission mode: octal, at most `07777`.
pub(super) fn parse_mode(v: &str) -> std::result::Result<u32, String> {
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| "mode is not an octal permission mode (0 to 7777, e.g. 1777)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kata_shm_options_pass_with_nosuid_nodev_first() {
        let t = check(
            &opts(&["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"]),
            "storages[0]",
            "/run/kata-containers/sandbox/shm",
        )
        .unwrap();
        assert_eq!(
            t.options,
            opts(&[
                "nosuid",
                "nodev",
                "noexec",
                "nosuid",
                "nodev",
                "mode=1777",
                "size=67108864"
            ])
        );
        assert_eq!(t.fsgid, None);
    }

    #[test]
    fn fsgid_is_taken_out_of_the_mount_options() {
        let t = check(&opts(&["fsgid=2000", "size=10%"]), "s", "/m").unwrap();
        assert_eq!(t.fsgid, Some(2000));
        assert_eq!(t.options, opts(&["nosuid", "nodev", "size=10%"]));
    }

    #[test]
    fn sizes_counts_and_modes() {
        for ok in ["0", "64m", "1G", "4096", "50%", "2k"] {
            assert!(is_size(ok, true), "{ok}");
        }
        for bad in [
            "",
            "m",
            "64mb",
            "-1",
            "1.5g",
            "12XB",
            "%",
            "99999999999999999999",
        ] {
            assert!(!is_size(bad, true), "{bad}");
        }
        assert!(!is_size("50%", false));
        assert_eq!(parse_mode("1777"), Ok(0o1777));
        assert!(parse_mode("8").is_err() && parse_mode("17777").is_err());
        for ok in [
            "ro",
            "suid",
            "relatime",
            "rprivate",
            "nr_inodes=1k",
            "uid=0",
            "gid=5",
            "huge=within_size",
            "mpol=local",
            "inode64",
            "noswap",
        ] {
            check(&opts(&[ok]), "s", "/m").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn a_bad_option_names_the_storage_and_the_option() {
        let err = check(&opts(&["nodev", "size=12XB"]), "storages[2]", "/dev/shm").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "storages[2].options[1] \"size=12XB\" of the ephemeral storage at /dev/shm: is not a size"
            ),
            "{msg}"
        );
        for bad in [
            "mode=999",
            "uid=root",
            "fsgid=x",
            "huge=sometimes",
            "bogus",
            "size",
            "trans=virtio",
        ] {
            let msg = check(&opts(&[bad]), "storages[0]", "/m")
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("storages[0].options[0] "), "{bad}: {msg}");
            assert!(msg.contains(bad), "{bad}: {msg}");
        }
    }
}
