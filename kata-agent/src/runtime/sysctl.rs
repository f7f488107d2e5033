//! `linux.sysctl`: only sysctls that live in a namespace the container has to itself, as runc
//! allows them.
//!
//! `/proc/sys` is mostly guest-wide: `kernel.core_pattern`, `vm.*` or `kernel.modprobe` written
//! by one container would change the guest for every container and for the agent. Allowed:
//! - IPC namespace (a private one): `kernel.msgmax`, `kernel.msgmnb`, `kernel.msgmni`,
//!   `kernel.sem`, `kernel.shmall`, `kernel.shmmax`, `kernel.shmmni`, `kernel.shm_rmid_forced`,
//!   `fs.mqueue.*`;
//! - network namespace: `net.*`, when the spec gives the container a network namespace that is
//!   not the agent's own — or is the agent's own because the agent is the guest's init, where
//!   that namespace is the pod's (the VM is the pod);
//! - UTS namespace (a private one): `kernel.domainname`; `kernel.hostname` is refused because
//!   the spec's `hostname` field sets it.
//!
//! Anything else is `INVALID_ARGUMENT` naming `linux.sysctl.<key>`. Keys may use `/` as the
//! separator (`net/ipv4/conf/eth0.100/rp_filter`), as sysctl(8) reads them.

use std::path::PathBuf;

use crate::error::{AgentError, Result};

/// IPC sysctls that are namespaced (besides `fs.mqueue.*`).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Which namespaces the container has to itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivateNamespaces {
    /// A new IPC namespace, or a joined one that is not the agent's.
    pub ipc: bool,
    /// A new UTS namespace, or a joined one that is not the agent's.
    pub uts: bool,
    /// A network namespace that belongs to the container or its pod.
    pub net: bool,
}

/// A sysctl key in dotted form (`net/ipv4/conf/eth0.100/rp_filter` →
/// `net.ipv4.conf.eth0/100.rp_filter`, as runc converts it).
pub fn dotted(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => key
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => key.to_string(),
    }
}

/// The `/proc/sys` file of a dotted key; `None` for a key that is not a plain path.
pub fn proc_path(dotted_key: &str) -> Option<PathBuf> {
    let mut path = PathBuf::from("/proc/sys");
    for part in dotted_key.split('.') {
        // A '/' in the dotted form is a '.' in the file name (an interface named eth0.100).
        let name = part.replace('/', ".");
        if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
            return None;
        }
        path.push(name);
    }
    Some(path)
}

/// Checks one `linux.sysctl` key; returns its `/proc/sys` path.
pub fn check(key: &str, ns: PrivateNamespaces) -> Result<PathBuf> {
    let field = format!("linux.sysctl.{key}");
    let k = dotted(key);
    let path = proc_path(&k).ok_or_else(|| AgentError::invalid(&field, "is not a sysctl name"))?;
    if IPC_SYSCTLS.contains(&k.as_str()) || k.starts_with("fs.mqueue.") {
        if ns.ipc {
            return Ok(path);
        }
        return Err(AgentError::invalid(
            field,
            "is only allowed with a private IPC namespace (linux.namespaces[ipc])",
        ));
    }
    if k.starts_with("net.") {
        if ns.net {
            return Ok(path);
        }
        return Err(AgentError::invalid(
            field,
            "is only allowed with the container's own network namespace (linux.namespaces[network])",
        ));
    }
    match k.as_str() {
        "kernel.domainname" if ns.uts => return Ok(path),
        "kernel.hostname" if ns.uts => {
            return Err(AgentError::invalid(
                field,
                "conflicts with the spec's hostname field: set that instead",
            ))
        }
        _ => {}
    }
    Err(AgentError::invalid(
        field,
        "is not in a namespace of the container: it would change the whole guest \
         (allowed: kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, net.*, kernel.domainname)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: PrivateNamespaces = PrivateNamespaces {
        ipc: true,
        uts: true,
        net: true,
    };

    fn field(e: AgentError) -> String {
        match e {
            AgentError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn namespaced_sysctls_are_allowed() {
        assert_eq!(
            check("kernel.shmmax", ALL).unwrap(),
            PathBuf::from("/proc/sys/kernel/shmmax")
        );
        assert!(check("fs.mqueue.msg_max", ALL).is_ok());
        assert!(check("kernel.domainname", ALL).is_ok());
        assert_eq!(
            check("net/ipv4/conf/eth0.100/rp_filter", ALL).unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert_eq!(
            check("net.ipv4.ip_forward", ALL).unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
    }

    #[test]
    fn guest_wide_sysctls_are_refused_naming_the_key() {
        for key in [
            "kernel.core_pattern",
            "kernel.modprobe",
            "vm.overcommit_memory",
            "kernel.hostname",
            "fs.file-max",
        ] {
            assert_eq!(
                field(check(key, ALL).unwrap_err()),
                format!("linux.sysctl.{key}")
            );
        }
    }

    #[test]
    fn namespaced_sysctls_need_their_namespace() {
        let none = PrivateNamespaces::default();
        assert!(check("kernel.shmmax", none).is_err());
        assert!(check("net.ipv4.ip_forward", none).is_err());
        assert!(check("kernel.domainname", none).is_err());
    }

    #[test]
    fn keys_cannot_walk_out_of_proc_sys() {
        assert!(check("net/../../etc/passwd", ALL).is_err());
        assert!(check("net..ipv4", ALL).is_err());
        assert!(check("net.", ALL).is_err());
    }
}
