//! The container's users: `/etc/passwd` and `/etc/group` read from its rootfs.
//!
//! The OCI process names its user by uid/gid, and Kata's protocol may also carry a user *name*;
//! a name is resolved here against the container's own files (never the guest's), so a missing
//! name is an `INVALID_ARGUMENT` before anything is forked. Supplementary groups come from the
//! spec plus, as runc does, the user's memberships in `/etc/group`; `HOME` comes from the
//! passwd entry when the spec's env does not set it.

use std::path::Path;

use oci_spec::runtime::User;
use serde::{Deserialize, Serialize};

use super::path::{read_file_in_root, ReadError};
use crate::error::{AgentError, Result};

/// One `/etc/passwd` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One `/etc/group` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parses `/etc/passwd` text, skipping malformed lines.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text, skipping malformed lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The identity a container process runs with, fully resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    /// User id for `setresuid`.
    pub uid: u32,
    /// Group id for `setresgid`.
    pub gid: u32,
    /// Supplementary groups for `setgroups`.
    pub additional_gids: Vec<u32>,
    /// Home directory from the passwd entry (used for `HOME` when the env lacks it).
    pub home: Option<String>,
    /// File mode creation mask; `None` keeps the default 0022.
    pub umask: Option<u32>,
}

/// The largest `/etc/passwd` or `/etc/group` the agent reads from an image.
pub const MAX_USER_DB: u64 = 4 << 20;

/// Reads `/etc/passwd` or `/etc/group` of the rootfs: `None` when absent; an error naming the
/// file when it is not a regular file (a FIFO planted to hang the agent) or too large.
fn read_user_db(rootfs: &Path, name: &str, field: &str) -> Result<Option<String>> {
    match read_file_in_root(rootfs, Path::new(name), MAX_USER_DB) {
        Ok(data) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
        Err(ReadError::Missing) => Ok(None),
        Err(e) => Err(AgentError::invalid(
            field,
            format!("cannot be resolved: {name} in the container's rootfs {e}"),
        )),
    }
}

/// Resolves the spec's user against the rootfs's `/etc/passwd` and `/etc/group`.
///
/// `field` names the user in error messages (`process.user`).
pub fn resolve_user(rootfs: &Path, user: &User, field: &str) -> Result<ResolvedUser> {
    let passwd = read_user_db(rootfs, "/etc/passwd", field)?.map(|t| parse_passwd(&t));
    let groups = read_user_db(rootfs, "/etc/group", field)?
        .map(|t| parse_group(&t))
        .unwrap_or_default();

    let mut out = ResolvedUser {
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: Vec::new(),
        home: None,
        umask: user.umask(),
    };

    let entry = match user.username().as_deref().filter(|n| !n.is_empty()) {
        Some(name) => {
            let Some(entries) = &passwd else {
                return Err(AgentError::invalid(
                    format!("{field}.username"),
                    format!("{name:?} cannot be resolved: the rootfs has no /etc/passwd"),
                ));
            };
            let Some(e) = entries.iter().find(|e| e.name == name) else {
                return Err(AgentError::invalid(
                    format!("{field}.username"),
                    format!("{name:?} does not exist in the container's /etc/passwd"),
                ));
            };
            out.uid = e.uid;
            out.gid = e.gid;
            Some(e.clone())
        }
        None => passwd
            .as_ref()
            .and_then(|p| p.iter().find(|e| e.uid == out.uid).cloned()),
    };

    if let Some(e) = &entry {
        if !e.home.is_empty() {
            out.home = Some(e.home.clone());
        }
        for g in &groups {
            if g.members.iter().any(|m| m == &e.name) && g.gid != out.gid {
                out.additional_gids.push(g.gid);
            }
        }
    }
    for gid in user.additional_gids().iter().flatten() {
        if !out.additional_gids.contains(gid) {
            out.additional_gids.push(*gid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::UserBuilder;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # comment\n\
                          broken line\n\
                          nobody:x:1000:1000:nobody:/home/nobody:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,nobody\nnobody:x:1000:\naudio:x:29:nobody\n";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    #[test]
    fn parses_passwd_and_group() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].name, "nobody");
        assert_eq!(p[1].uid, 1000);
        assert_eq!(p[1].home, "/home/nobody");
        let g = parse_group(GROUP);
        assert_eq!(g[1].members, vec!["root", "nobody"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn resolves_a_user_name() {
        let dir = rootfs();
        let user = UserBuilder::default()
            .username("nobody")
            .additional_gids(vec![5u32])
            .build()
            .unwrap();
        let r = resolve_user(dir.path(), &user, "process.user").unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
        assert_eq!(r.additional_gids, vec![10, 29, 5]);
        assert_eq!(r.home.as_deref(), Some("/home/nobody"));
    }

    #[test]
    fn unknown_user_name_is_invalid_argument() {
        let dir = rootfs();
        let user = UserBuilder::default().username("ghost").build().unwrap();
        let err = resolve_user(dir.path(), &user, "process.user").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            err.to_string()
                .starts_with("process.user.username \"ghost\""),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_at_etc_passwd_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let user = UserBuilder::default().uid(0u32).build().unwrap();
        let err = resolve_user(dir.path(), &user, "process.user").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(
            err.to_string(),
            "process.user cannot be resolved: /etc/passwd in the container's rootfs is a FIFO, \
             not a regular file"
        );
    }

    #[test]
    fn numeric_uid_needs_no_passwd_entry() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserBuilder::default()
            .uid(4242u32)
            .gid(7u32)
            .build()
            .unwrap();
        let r = resolve_user(dir.path(), &user, "process.user").unwrap();
        assert_eq!((r.uid, r.gid), (4242, 7));
        assert_eq!(r.home, None);
    }
}
