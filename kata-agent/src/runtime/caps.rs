//! Linux capabilities: the five OCI sets applied with `prctl` and `capset`.
//!
//! Names come from the spec (`CAP_SYS_ADMIN`), numbers from `<linux/capability.h>`. Capabilities
//! the running kernel does not know (above `/proc/sys/kernel/cap_last_cap`) are skipped, as runc
//! does, so a spec written for a newer kernel still runs.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};
use serde::{Deserialize, Serialize};

/// Capability names in kernel numbering order (index = capability number).
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The kernel number of a capability.
pub fn cap_number(cap: &Capability) -> Option<u32> {
    let name = serde_json::to_value(cap).ok()?;
    let name = name.as_str()?;
    CAP_NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// A set of capabilities as a bit mask (bit n = capability n).
pub fn to_mask(set: &Capabilities) -> u64 {
    set.iter()
        .filter_map(cap_number)
        .fold(0u64, |m, n| m | (1u64 << n))
}

/// The five capability sets of a process, as masks. `None` means "leave as inherited".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: Option<u64>,
    /// Effective set.
    pub effective: Option<u64>,
    /// Permitted set.
    pub permitted: Option<u64>,
    /// Inheritable set.
    pub inheritable: Option<u64>,
    /// Ambient set.
    pub ambient: Option<u64>,
}

impl CapSets {
    /// No capability in any set: what a process without `process.capabilities` gets.
    pub fn none() -> Self {
        CapSets {
            bounding: Some(0),
            effective: Some(0),
            permitted: Some(0),
            inheritable: Some(0),
            ambient: Some(0),
        }
    }

    /// Translates the spec's capabilities. A set the spec leaves out is empty, as runc reads it
    /// (not "kept as inherited").
    pub fn from_spec(caps: &LinuxCapabilities) -> Self {
        let mask = |set: &Option<Capabilities>| Some(set.as_ref().map_or(0, to_mask));
        CapSets {
            bounding: mask(caps.bounding()),
            effective: mask(caps.effective()),
            permitted: mask(caps.permitted()),
            inheritable: mask(caps.inheritable()),
            ambient: mask(caps.ambient()),
        }
    }
}

/// The highest capability number the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> std::io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header reads two CapData structs into `data`, which is exactly
    // that size and lives for the call.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| (lo as u64) | ((hi as u64) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset with a v3 header reads two CapData structs from `data`, which is exactly
    // that size and lives for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the prctl options used here (capability bounding/ambient/keepcaps) take integer
    // arguments only and touch no memory of ours.
    let r = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability not in `bounding` from the bounding set. Needs CAP_SETPCAP, so it
/// runs before the user switch.
pub fn apply_bounding(bounding: u64, last: u32) -> std::io::Result<()> {
    for cap in 0..=last.min(63) {
        if bounding & (1 << cap) == 0 {
            match prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0) {
                Ok(()) => {}
                // Unknown to this kernel: nothing to drop.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Keeps the permitted set across the `setuid` away from root.
pub fn set_keep_caps(keep: bool) -> std::io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong, 0)
}

/// Sets the effective, permitted and inheritable sets (missing ones keep their current value),
/// then the ambient set. Runs after the user switch.
pub fn apply_sets(sets: &CapSets, last: u32) -> std::io::Result<()> {
    let known = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    let (cur_e, cur_p, cur_i) = capget()?;
    let e = sets.effective.map_or(cur_e, |m| m & known);
    let p = sets.permitted.map_or(cur_p, |m| m & known);
    let i = sets.inheritable.map_or(cur_i, |m| m & known);
    capset(e, p, i)?;
    if let Some(ambient) = sets.ambient {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
        )?;
        for cap in 0..=last.min(63) {
            if ambient & known & (1 << cap) != 0 {
                // The kernel refuses to raise an ambient capability that is not both permitted
                // and inheritable; runc ignores that case too.
                let _ = prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_header() {
        assert_eq!(cap_number(&Capability::Chown), Some(0));
        assert_eq!(cap_number(&Capability::Kill), Some(5));
        assert_eq!(cap_number(&Capability::NetBindService), Some(10));
        assert_eq!(cap_number(&Capability::SysAdmin), Some(21));
        assert_eq!(cap_number(&Capability::AuditWrite), Some(29));
        assert_eq!(cap_number(&Capability::CheckpointRestore), Some(40));
    }

    #[test]
    fn masks_from_sets() {
        let set: Capabilities = [Capability::Chown, Capability::Kill].into_iter().collect();
        assert_eq!(to_mask(&set), 0b10_0001);
    }

    #[test]
    fn default_spec_caps_translate() {
        let sets = CapSets::from_spec(&LinuxCapabilities::default());
        let m = (1 << 29) | (1 << 5) | (1 << 10);
        assert_eq!(sets.bounding, Some(m));
        assert_eq!(sets.ambient, Some(m));
    }

    #[test]
    fn missing_sets_are_empty_like_runc() {
        let mut caps = LinuxCapabilities::default();
        caps.set_inheritable(None);
        caps.set_ambient(None);
        let sets = CapSets::from_spec(&caps);
        assert_eq!(sets.inheritable, Some(0));
        assert_eq!(sets.ambient, Some(0));
        assert_eq!(CapSets::none().bounding, Some(0));
    }

    #[test]
    fn capget_reads_our_own_sets() {
        let (e, p, _) = capget().unwrap();
        assert_eq!(e & !p, 0, "effective is a subset of permitted");
    }
}
