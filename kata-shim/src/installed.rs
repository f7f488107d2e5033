//! What an installed kata-rs finds beside its binaries: `make install` puts the helper
//! programs the runtime starts (vhost-device-vsock, virtiofsd) in `$PREFIX/libexec/kata-rs/`,
//! next to `$PREFIX/bin/`, where no `PATH` leads. The configuration names virtiofsd; the vsock
//! backend has no configuration key (Kata's configuration has none), so the shim and
//! `shim-ctl` point `$KATA_RS_VHOST_USER_VSOCK` at the installed one ([`use_installed_helpers`])
//! unless it is set. Without an install (a build tree) nothing changes: the build cache's
//! `bin/` is searched as before.

use std::path::{Path, PathBuf};

/// The environment variable naming the vhost-device-vsock binary (kata-hypervisor's).
pub const VHOST_USER_VSOCK_ENV: &str = "KATA_RS_VHOST_USER_VSOCK";

/// The installed vhost-device-vsock for a binary at `exe` (`<prefix>/bin/<name>`):
/// `<prefix>/libexec/kata-rs/vhost-device-vsock`, when that file exists.
pub fn installed_vhost_user_vsock(exe: &Path) -> Option<PathBuf> {
    let prefix = exe.parent()?.parent()?;
    let p = prefix.join("libexec/kata-rs/vhost-device-vsock");
    p.is_file().then_some(p)
}

/// Sets [`VHOST_USER_VSOCK_ENV`] to the installed vhost-device-vsock beside this binary when
/// the variable is unset and the file exists. Call it first in `main`, before any thread
/// exists (it changes the process environment). Returns the path it set.
pub fn use_installed_helpers() -> Option<PathBuf> {
    if std::env::var_os(VHOST_USER_VSOCK_ENV).is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let found = installed_vhost_user_vsock(&exe)?;
    std::env::set_var(VHOST_USER_VSOCK_ENV, &found);
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_backend_is_found_beside_the_binary_only() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("usr/local/bin/containerd-shim-kata-v2");
        assert_eq!(installed_vhost_user_vsock(&exe), None);
        let backend = d
            .path()
            .join("usr/local/libexec/kata-rs/vhost-device-vsock");
        std::fs::create_dir_all(backend.parent().unwrap()).unwrap();
        std::fs::write(&backend, b"").unwrap();
        assert_eq!(installed_vhost_user_vsock(&exe), Some(backend));
        assert_eq!(installed_vhost_user_vsock(Path::new("/")), None);
    }
}
