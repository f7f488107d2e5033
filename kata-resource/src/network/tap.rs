//! Tap devices: made by opening `/dev/net/tun` and attaching the file to a named tap
//! (`TUNSETIFF`) from a thread inside the pod's namespace, so the tap is created there while
//! its open queues can be handed to a VMM that runs in the host's namespace.
//!
//! The taps are not persistent (`TUNSETPERSIST` is never set): a tap lives while a queue of it
//! is open, in its owner (until it releases or detaches it) or in the VMM. If the runtime and
//! the VMM both die, the kernel removes the tap itself; cleanup from a saved state removes it
//! otherwise.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::iproute2::{self, ip_json, Program};
use crate::{Error, Result};

/// The tun/tap clone device.
const TUN_DEVICE: &str = "/dev/net/tun";

/// Creates tap `name` with `queues` queues (`IFF_MULTI_QUEUE` when more than one) in the
/// calling thread's network namespace, `netns` naming it for messages; returns its open
/// queues. Every queue has `IFF_NO_PI` and `IFF_VNET_HDR` (as Kata's: QEMU's virtio-net and
/// vhost-net use the virtio-net header).
///
/// The name must not be taken: `TUNSETIFF` on an existing tap would attach to it, so the
/// caller picks a name that no link of the namespace has.
pub(crate) fn create(netns: &Path, name: &str, queues: u32) -> Result<Vec<OwnedFd>> {
    let queues = queues.max(1);
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if queues > 1 {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let fail = |action: String, e: io::Error| Error::Network {
        netns: netns.to_owned(),
        action,
        reason: e.to_string(),
    };
    let mut fds = Vec::with_capacity(queues as usize);
    for queue in 0..queues {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| {
                fail(
                    format!("open {TUN_DEVICE} for tap {name} (is the tun module loaded?)"),
                    e,
                )
            })?;
        let mut request = ifreq(name)?;
        request.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `request` is and which
        // outlives the call; the fd is the tun device just opened.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut request) };
        if rc < 0 {
            // The queues opened so far are closed on return: the tap goes with them.
            return Err(fail(
                format!("create tap {name} (queue {queue} of {queues}, TUNSETIFF)"),
                io::Error::last_os_error(),
            ));
        }
        fds.push(OwnedFd::from(file));
    }
    Ok(fds)
}

/// Sets tap `name`'s MTU and brings it up (`ip link set dev <tap> mtu <mtu> up`).
pub(crate) fn set_up(netns: &Path, name: &str, mtu: u32) -> Result<()> {
    let mtu = mtu.to_string();
    iproute2::run_checked(
        netns,
        &format!("set tap {name} up with MTU {mtu}"),
        Program::Ip,
        &["link", "set", "dev", name, "mtu", &mtu, "up"],
    )
    .map(drop)
}

/// Deletes tap `name` in the calling thread's namespace if it is there and is a tun/tap
/// device (a link of another kind by that name is not this crate's: left alone, logged).
/// Returns whether one was deleted.
pub(crate) fn delete(netns: &Path, name: &str) -> Result<bool> {
    if !is_tap(netns, name)? {
        return Ok(false);
    }
    match iproute2::run(Program::Ip, &["link", "delete", "dev", name])? {
        Ok(_) => Ok(true),
        // Gone meanwhile (its last queue closed): what was wanted.
        Err(_) if !is_tap(netns, name)? => Ok(false),
        Err(f) => Err(f.into_error(netns, format!("delete tap {name}"))),
    }
}

/// Whether a tun/tap device `name` exists in the calling thread's namespace.
pub(crate) fn is_tap(netns: &Path, name: &str) -> Result<bool> {
    let links: Vec<serde_json::Value> =
        ip_json(netns, "list the links", &["-details", "link", "show"])?;
    let Some(link) = links.iter().find(|l| l["ifname"] == name) else {
        return Ok(false);
    };
    if link["linkinfo"]["info_kind"] == "tun" {
        return Ok(true);
    }
    tracing::warn!(netns = %netns.display(), link = name, "a link by the name of a kata-rs tap is not a tap: leaving it alone");
    Ok(false)
}

/// An `ifreq` naming `name`, everything else zero.
fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers and
    // addresses); all-zero is a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() || bytes.contains(&0) {
        return Err(Error::NetworkSetting {
            key: "tap name",
            value: format!("{name:?}"),
            reason: format!(
                "an interface name is 1 to {} bytes without NUL",
                request.ifr_name.len() - 1
            ),
        });
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(request)
}
