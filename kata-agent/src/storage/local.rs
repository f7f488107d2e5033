//! `local` storages: a directory the agent makes in the guest for a disk-backed emptyDir
//! (Kata puts it under the sandbox's directory in the guest), with Kata's options: `mode=`
//! (octal) and `fsgid=` (the group that owns it, set-group-ID so new files inherit the group).
//! Any other option is refused naming the storage and the option.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::ephemeral::parse_mode;
use crate::error::{AgentError, Result};

/// The set-group-ID bit.
pub(super) const S_ISGID: u32 = 0o2000;

/// A checked local storage's options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LocalDir {
    /// `mode=`: the directory's permissions.
    pub mode: Option<u32>,
    /// `fsgid=`: its group.
    pub fsgid: Option<u32>,
}

/// Checks a local storage's options; `field` names the storage, `mount_point` says where.
pub(super) fn check(options: &[String], field: &str, mount_point: &str) -> Result<LocalDir> {
    let mut out = LocalDir::default();
    for (j, opt) in options.iter().enumerate() {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let bad = |why: String| {
            AgentError::invalid(
                format!("{field}.options[{j}]"),
                format!("{opt:?} of the local storage at {mount_point}: {why}"),
            )
        };
        match opt.split_once('=') {
            Some(("mode", v)) => out.mode = Some(parse_mode(v).map_err(bad)?),
            Some(("fsgid", v)) => {
                out.fsgid = Some(
                    v.parse::<u32>()
                        .map_err(|_| bad("fsgid is not a numeric group id".into()))?,
                )
            }
            _ => {
                return Err(bad(
                    "is not an option of a local storage (a directory): it takes mode= and \
                     fsgid= only"
                        .into(),
                ))
            }
        }
    }
    Ok(out)
}

/// Gives the root of a volume its group (`gid`, set-group-ID) and mode, as Kubernetes's
/// fsGroup does; `what` names the storage in errors.
pub(super) fn apply_owner_and_mode(
    dir: &Path,
    gid: Option<u32>,
    mode: Option<u32>,
    what: &str,
) -> Result<()> {
    if let Some(gid) = gid {
        nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            AgentError::sys(format!("{what}: give {} to group {gid}", dir.display()), e)
        })?;
    }
    if gid.is_none() && mode.is_none() {
        return Ok(());
    }
    let current = std::fs::metadata(dir)
        .map_err(|e| AgentError::io(format!("{what}: stat {}", dir.display()), e))?
        .permissions()
        .mode()
        & 0o7777;
    let mut new = mode.unwrap_or(current);
    if gid.is_some() {
        new |= S_ISGID;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(new))
        .map_err(|e| AgentError::io(format!("{what}: chmod {:o} {}", new, dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_local_options() {
        let o = check(
            &["mode=0777".to_string(), "fsgid=3000".to_string()],
            "storages[0]",
            "/run/kata-containers/sandbox/local/cache",
        )
        .unwrap();
        assert_eq!(
            o,
            LocalDir {
                mode: Some(0o777),
                fsgid: Some(3000)
            }
        );
    }

    #[test]
    fn other_options_are_refused_naming_them() {
        for bad in ["size=1g", "ro", "mode=abc", "fsgid=-1"] {
            let msg = check(&[bad.to_string()], "storages[3]", "/v")
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with(&format!(
                    "storages[3].options[0] {bad:?} of the local storage at /v: "
                )),
                "{msg}"
            );
        }
    }

    #[test]
    fn owner_and_mode_with_setgid() {
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getegid().as_raw();
        apply_owner_and_mode(dir.path(), Some(gid), Some(0o770), "local storage").unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o2770);
        apply_owner_and_mode(dir.path(), None, Some(0o755), "local storage").unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }
}
