//! VFIO-AP devices of a container (s390x crypto adapters; `CreateContainer`'s `devices` of
//! Kata's types `vfio-ap`, hot-plugged, and `vfio-ap-cold`, cold-plugged): the options are the
//! APQNs the mediated device passes through, each `"<card>.<domain>"` in hex (`"0a.0001"`).
//!
//! The agent waits (bounded, [`DEVICE_WAIT`](crate::vfio::DEVICE_WAIT)) until every queue is
//! on the guest's AP bus, `/sys/bus/ap/devices/<card>.<domain>`; the guest's `zcrypt`
//! drivers then serve it through `/dev/z90crypt`, which the container names itself. Nothing
//! of the spec changes. This cannot run on this project's x86_64 hosts: it is unit-tested
//! against fixture trees.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_agent_client::protocol::agent;

use crate::error::{AgentError, Result};

/// Kata's device type of a hot-plugged VFIO-AP device.
pub const TYPE_VFIO_AP: &str = "vfio-ap";
/// Kata's device type of a cold-plugged VFIO-AP device.
pub const TYPE_VFIO_AP_COLD: &str = "vfio-ap-cold";

/// How often the agent looks.
const POLL: Duration = Duration::from_millis(50);

/// An AP queue: adapter (card) and usage domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Apqn {
    /// The adapter number (0-255).
    pub card: u8,
    /// The domain number (0-65535; 0-255 on today's machines).
    pub domain: u16,
}

impl Apqn {
    /// Parses `"<card>.<domain>"`: two hex digits, a dot, four hex digits (as the host's
    /// matrix device lists them).
    pub fn parse(s: &str) -> Option<Apqn> {
        let (card, domain) = s.split_once('.')?;
        let hex = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(card, 2) || !hex(domain, 4) {
            return None;
        }
        Some(Apqn {
            card: u8::from_str_radix(card, 16).ok()?,
            domain: u16::from_str_radix(domain, 16).ok()?,
        })
    }
}

impl std::fmt::Display for Apqn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}.{:04x}", self.card, self.domain)
    }
}

/// A VFIO-AP device of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApRequest {
    /// Cold-plugged (`vfio-ap-cold`) or hot-plugged (`vfio-ap`).
    pub cold: bool,
    /// The node the container named on the host (for messages).
    pub container_path: String,
    /// Its queues.
    pub apqns: Vec<Apqn>,
}

/// The VFIO-AP devices among `devices` (others are left to their own handlers), checked: an
/// AP device without APQNs, or an option that is not one, is refused naming the option.
pub fn requests(devices: &[agent::Device]) -> Result<Vec<ApRequest>> {
    let mut out = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let cold = match d.type_.as_str() {
            TYPE_VFIO_AP => false,
            TYPE_VFIO_AP_COLD => true,
            _ => continue,
        };
        if d.options.is_empty() {
            return Err(AgentError::invalid(
                format!("devices[{i}].options"),
                format!(
                    "a {} device names its AP queues as \"<card>.<domain>\" (hex, \"0a.0001\"); \
                     none given",
                    d.type_
                ),
            ));
        }
        let apqns = d
            .options
            .iter()
            .enumerate()
            .map(|(j, o)| {
                Apqn::parse(o).ok_or_else(|| {
                    AgentError::invalid(
                        format!("devices[{i}].options[{j}]"),
                        format!(
                            "{o:?} is not an AP queue \"<card>.<domain>\" (two and four hex \
                             digits, \"0a.0001\")"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(ApRequest {
            cold,
            container_path: d.container_path.clone(),
            apqns,
        });
    }
    Ok(out)
}

/// Where the guest has queue `q`: `<sysfs>/bus/ap/devices/<card>.<domain>`.
pub fn queue_dir(sysfs: &Path, q: Apqn) -> PathBuf {
    sysfs.join("bus/ap/devices").join(q.to_string())
}

/// Waits (at most `wait`) until every queue of the VFIO-AP devices among `devices` is on the
/// guest's AP bus under `sysfs` (`/sys` in the guest, a fixture in tests). A queue that never
/// appears is [`AgentError::Timeout`], naming the device, the queue and the path.
pub async fn prepare_in(devices: &[agent::Device], sysfs: &Path, wait: Duration) -> Result<()> {
    let requests = requests(devices)?;
    let deadline = tokio::time::Instant::now() + wait;
    for r in &requests {
        for q in &r.apqns {
            let dir = queue_dir(sysfs, *q);
            loop {
                if dir.exists() {
                    tracing::info!(device = %r.container_path, apqn = %q, cold = r.cold, "AP queue present in the guest");
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let how = if r.cold {
                        "cold-plugged"
                    } else {
                        "hot-plugged"
                    };
                    return Err(AgentError::Timeout {
                        what: format!(
                            "VFIO-AP device {}: AP queue {q} never appeared at {} (the host \
                             {how} the matrix device; does the guest kernel have the AP bus and \
                             zcrypt, CONFIG_ZCRYPT?)",
                            r.container_path,
                            dir.display()
                        ),
                        seconds: wait.as_secs(),
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(typ: &str, options: &[&str]) -> agent::Device {
        agent::Device {
            id: "ap".into(),
            type_: typ.into(),
            container_path: "/dev/vfio/0".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn apqns_are_card_dot_domain_in_hex() {
        assert_eq!(
            Apqn::parse("0a.0001"),
            Some(Apqn {
                card: 10,
                domain: 1
            })
        );
        assert_eq!(Apqn::parse("ff.00fe").unwrap().to_string(), "ff.00fe");
        for bad in ["a.0001", "0a.1", "0a0001", "0g.0001", "0a.0001.", ""] {
            assert_eq!(Apqn::parse(bad), None, "{bad}");
        }
        let r = requests(&[
            device("vfio-pci", &["0000:00:02.0=02/00"]),
            device("vfio-ap-cold", &["0a.0001", "0a.0002"]),
            device("vfio-ap", &["03.0004"]),
        ])
        .unwrap();
        assert_eq!(r.len(), 2, "the PCI device is not AP's");
        assert!(r[0].cold && !r[1].cold);
        assert_eq!(r[0].apqns.len(), 2);
        let e = requests(&[device("vfio-ap", &[])]).unwrap_err().to_string();
        assert!(
            e.contains("devices[0].options") && e.contains("none given"),
            "{e}"
        );
        let e = requests(&[device("vfio-ap", &["0a.0001", "card1"])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("devices[0].options[1]") && e.contains("\"card1\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_agent_waits_for_each_queue_on_the_ap_bus() {
        let tmp = tempfile::tempdir().unwrap();
        let sysfs = tmp.path().to_path_buf();
        let devices = [device("vfio-ap", &["0a.0001", "0a.0002"])];
        // One queue there, the other arrives while the agent waits.
        std::fs::create_dir_all(queue_dir(&sysfs, Apqn::parse("0a.0001").unwrap())).unwrap();
        let later = queue_dir(&sysfs, Apqn::parse("0a.0002").unwrap());
        let arrive = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            std::fs::create_dir_all(later).unwrap();
        });
        prepare_in(&devices, &sysfs, Duration::from_secs(5))
            .await
            .unwrap();
        arrive.await.unwrap();
    }

    #[tokio::test]
    async fn a_queue_that_never_appears_is_a_bounded_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = std::time::Instant::now();
        let e = prepare_in(
            &[device("vfio-ap-cold", &["0b.0005"])],
            tmp.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(
            e.contains("/dev/vfio/0")
                && e.contains("0b.0005")
                && e.contains("bus/ap/devices/0b.0005")
                && e.contains("cold-plugged"),
            "{e}"
        );
    }
}
