//! The last steps before `execve`: limits, identity, capabilities, cwd, and the executable
//! looked up through the process's own `PATH`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, execve, setgroups, setresgid, setresuid, Gid, Uid};

use super::{ChildError, ChildResult};
use crate::runtime::caps;
use crate::runtime::config::ProcessConfig;
use crate::runtime::seccomp::{self, SeccompProgram};

/// The `PATH` used to find `args[0]` when the process's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An `execve` ready to go: everything allocated, every check done.
pub(super) struct PreparedExec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    display: String,
    /// The seccomp filters still to install (with `no_new_privs`: as late as possible).
    seccomp: Option<SeccompProgram>,
}

impl PreparedExec {
    /// Installs the seccomp filters if they are still due, then replaces this process. Returns
    /// only on failure.
    pub(super) fn exec(self) -> ChildError {
        if let Some(prog) = &self.seccomp {
            if let Err(e) = seccomp::install(prog) {
                return seccomp_error(e);
            }
        }
        match execve(&self.path, &self.argv, &self.envp) {
            Ok(never) => match never {},
            Err(e) => ChildError::field(
                "process.args[0]",
                format!("{}: exec failed: {e}", self.display),
            ),
        }
    }
}

fn seccomp_error(e: std::io::Error) -> ChildError {
    ChildError::field(seccomp::FIELD, format!("cannot be installed: {e}"))
}

fn cstring(s: &str, field: &str) -> ChildResult<CString> {
    CString::new(s).map_err(|_| ChildError::field(field, "contains a NUL byte"))
}

/// Finds `name` the way `execvp` would: as given when it contains a `/`, else in `path`.
pub(crate) fn find_executable(name: &str, path: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| Path::new(dir).join(name))
        .find(|p| is_exec(p))
}

/// Applies limits, identity and capabilities to this process and prepares the exec.
pub(super) fn prepare(p: &ProcessConfig) -> ChildResult<PreparedExec> {
    for (i, (resource, soft, hard)) in p.rlimits.iter().enumerate() {
        let lim = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: setrlimit reads one rlimit struct from a valid reference.
        let r = unsafe { libc::setrlimit(*resource as _, &lim) };
        if r != 0 {
            return Err(ChildError::field(
                format!("process.rlimits[{i}]"),
                format!("cannot be set: {}", std::io::Error::last_os_error()),
            ));
        }
    }
    if let Some(adj) = p.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| ChildError::field("process.oomScoreAdj", format!("cannot be set: {e}")))?;
    }

    // cwd as root first (it may be unreachable for the user, which is the user's problem, but
    // it must exist).
    chdir(&p.cwd)
        .map_err(|e| ChildError::field("process.cwd", format!("{}: {e}", p.cwd.display())))?;

    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it now, before the
    // capabilities go (runc's order); the rest of the setup then runs under the filter.
    if let (Some(prog), false) = (&p.seccomp, p.no_new_privileges) {
        seccomp::install(prog).map_err(seccomp_error)?;
    }
    let last = caps::last_cap();
    if let Some(sets) = &p.caps {
        if let Some(b) = sets.bounding {
            caps::apply_bounding(b, last)
                .map_err(|e| ChildError::sys("drop bounding capabilities", e))?;
        }
    }
    let u = &p.user;
    let switching = u.uid != 0;
    if switching && p.caps.is_some() {
        caps::set_keep_caps(true).map_err(|e| ChildError::sys("PR_SET_KEEPCAPS", e))?;
    }
    let groups: Vec<Gid> = u
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups)
        .map_err(|e| ChildError::sys(format!("setgroups {:?}", u.additional_gids), e))?;
    let gid = Gid::from_raw(u.gid);
    setresgid(gid, gid, gid).map_err(|e| ChildError::sys(format!("setgid {}", u.gid), e))?;
    let uid = Uid::from_raw(u.uid);
    setresuid(uid, uid, uid).map_err(|e| ChildError::sys(format!("setuid {}", u.uid), e))?;
    if switching && p.caps.is_some() {
        caps::set_keep_caps(false).map_err(|e| ChildError::sys("PR_SET_KEEPCAPS", e))?;
    }
    if let Some(sets) = &p.caps {
        caps::apply_sets(sets, last).map_err(|e| ChildError::sys("set capabilities", e))?;
    }
    if p.no_new_privileges {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if r != 0 {
            return Err(ChildError::sys(
                "PR_SET_NO_NEW_PRIVS",
                std::io::Error::last_os_error(),
            ));
        }
    }
    umask(Mode::from_bits_truncate(u.umask.unwrap_or(0o022)));
    // Now as the user, where that works.
    let _ = chdir(&p.cwd);

    let path_env = p
        .env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let name = p
        .args
        .first()
        .ok_or_else(|| ChildError::field("process.args", "is empty"))?;
    let exe = find_executable(name, path_env).ok_or_else(|| {
        ChildError::field(
            "process.args[0]",
            format!("{name:?}: executable file not found in $PATH ({path_env})"),
        )
    })?;
    let argv = p
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| cstring(a, &format!("process.args[{i}]")))
        .collect::<ChildResult<Vec<_>>>()?;
    let envp = p
        .env
        .iter()
        .enumerate()
        .map(|(i, e)| cstring(e, &format!("process.env[{i}]")))
        .collect::<ChildResult<Vec<_>>>()?;
    let path = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| ChildError::field("process.args[0]", "contains a NUL byte"))?;
    Ok(PreparedExec {
        path,
        argv,
        envp,
        display: exe.display().to_string(),
        seccomp: p.seccomp.clone().filter(|_| p.no_new_privileges),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables_through_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = bin.join("data");
        std::fs::write(&data, "").unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(find_executable("tool", &path), Some(tool.clone()));
        assert_eq!(find_executable("data", &path), None, "not executable");
        assert_eq!(find_executable(tool.to_str().unwrap(), ""), Some(tool));
        assert_eq!(find_executable("missing", &path), None);
    }
}
