//! Kata's `tcfilter` model: the pod's interface and the tap are joined by traffic control, not
//! a bridge. Each gets an ingress qdisc (`handle ffff:`), and on each a match-all `u32` filter
//! redirects every frame that arrives to the other one's egress (`action mirred egress
//! redirect`): what the pod's network sends to the interface goes out of the tap to the VM, and
//! what the VM writes to the tap goes out of the interface. The interface's own IP stack sees
//! nothing; the VM's NIC answers with the interface's MAC and addresses.
//!
//! Run in the calling thread's namespace (see [`NetNs::run`](super::netns::NetNs::run)).

use std::path::Path;

use super::iproute2::{self, Program};
use crate::{Error, Result};

/// The handle of the ingress qdisc (`ffff:`), as Kata uses.
const INGRESS: &str = "ffff:";

/// Adds an ingress qdisc to `dev`. One that is there already is not this crate's: an error
/// that says so.
fn add_ingress(netns: &Path, dev: &str) -> Result<()> {
    let Err(f) = iproute2::run(
        Program::Tc,
        &["qdisc", "add", "dev", dev, "handle", INGRESS, "ingress"],
    )?
    else {
        return Ok(());
    };
    let action = format!("add an ingress qdisc to {dev}");
    if !has_ingress(netns, dev)? {
        return Err(f.into_error(netns, action));
    }
    Err(Error::Network {
        netns: netns.to_owned(),
        action,
        reason: format!(
            "{dev} has one already (`tc qdisc show dev {dev} ingress`): another tool filters \
             its traffic, and the tcfilter model needs its ingress (remove it, or use \
             internetworking_model = \"none\" for this pod)"
        ),
    })
}

/// Redirects every frame `dev` receives to `to`'s egress (on `dev`'s ingress qdisc).
fn add_redirect(netns: &Path, dev: &str, to: &str) -> Result<()> {
    iproute2::run_checked(
        netns,
        &format!("redirect what {dev} receives to {to}"),
        Program::Tc,
        &[
            "filter", "add", "dev", dev, "parent", INGRESS, "protocol", "all", "u32", "match",
            "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ],
    )
    .map(drop)
}

/// Joins `interface` and `tap` both ways. On error, the interface's qdisc is removed again if
/// it was added here; the tap's goes with the tap, which the caller deletes.
pub(crate) fn join(netns: &Path, interface: &str, tap: &str) -> Result<()> {
    add_ingress(netns, tap)?;
    add_redirect(netns, tap, interface)?;
    add_ingress(netns, interface)?;
    if let Err(e) = add_redirect(netns, interface, tap) {
        if let Err(undo) = unjoin(netns, interface) {
            tracing::error!(netns = %netns.display(), %interface, "cannot undo a partial tc setup: {undo}");
        }
        return Err(e);
    }
    Ok(())
}

/// Removes the ingress qdisc (and with it the redirect filter) from `interface`. Returns
/// whether there was one; an interface that is gone has none.
pub(crate) fn unjoin(netns: &Path, interface: &str) -> Result<bool> {
    match iproute2::run(
        Program::Tc,
        &[
            "qdisc", "del", "dev", interface, "handle", INGRESS, "ingress",
        ],
    )? {
        Ok(_) => Ok(true),
        Err(_) if !has_ingress(netns, interface)? => Ok(false),
        Err(f) => Err(f.into_error(netns, format!("remove the ingress qdisc of {interface}"))),
    }
}

/// Whether `dev` has an ingress qdisc (a device that does not exist has none).
pub(crate) fn has_ingress(netns: &Path, dev: &str) -> Result<bool> {
    let out = iproute2::run_checked(
        netns,
        "list the qdiscs",
        Program::Tc,
        &["-json", "qdisc", "show"],
    )?;
    let qdiscs: Vec<serde_json::Value> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out).map_err(|e| Error::Network {
            netns: netns.to_owned(),
            action: "list the qdiscs (`tc -json qdisc show`)".into(),
            reason: format!("its JSON output does not parse: {e}"),
        })?
    };
    Ok(qdiscs
        .iter()
        .any(|q| q["dev"] == dev && q["kind"] == "ingress"))
}
