//! The device model: what a VM can be given, before boot (cold-plug) or after (hot-plug).
//!
//! Devices are described here independently of any backend; each backend turns a
//! [`DeviceConfig`] into its own form (QEMU arguments or QMP `device_add`, a built-in VMM call).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a PCIe device is attached: Kata's `cold_plug_vfio` / `hot_plug_vfio` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PciePort {
    /// No port: not cold-plugged (for `cold_plug_vfio`), or plugged on the root bus.
    #[default]
    NoPort,
    /// A PCIe root port per device.
    RootPort,
    /// A PCI-to-PCI bridge.
    BridgePort,
    /// A downstream port of a PCIe switch.
    SwitchPort,
}

impl fmt::Display for PciePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PciePort::NoPort => "no-port",
            PciePort::RootPort => "root-port",
            PciePort::BridgePort => "bridge-port",
            PciePort::SwitchPort => "switch-port",
        })
    }
}

impl FromStr for PciePort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "no-port" => Ok(PciePort::NoPort),
            "root-port" => Ok(PciePort::RootPort),
            "bridge-port" => Ok(PciePort::BridgePort),
            "switch-port" => Ok(PciePort::SwitchPort),
            other => Err(format!(
                "unknown PCIe port `{other}`: allowed no-port, root-port, bridge-port, switch-port"
            )),
        }
    }
}

/// The kind of shared filesystem device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareFsKind {
    /// virtio-9p, served by the VMM itself.
    Virtio9p,
    /// virtio-fs, served by a vhost-user daemon.
    VirtioFs,
}

/// A directory of the host shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFsDevice {
    /// The mount tag the guest mounts it by (Kata: `kataShared`).
    pub mount_tag: String,
    /// The host directory.
    pub host_path: PathBuf,
    /// 9p or virtio-fs.
    pub kind: ShareFsKind,
}

/// A block device backed by a host file or block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// A unique id for this VM (used as the QEMU drive/device id).
    pub id: String,
    /// Host path of the image file or block device.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// A network interface backed by a host tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    /// A unique id for this VM.
    pub id: String,
    /// The host tap device name.
    pub tap_name: String,
    /// The guest MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
}

/// A host PCI function passed through with VFIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioDevice {
    /// A unique id for this VM.
    pub id: String,
    /// The PCI address, `0000:01:00.0`.
    pub bdf: String,
}

/// A device given to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceConfig {
    /// A block device.
    Block(BlockDevice),
    /// A network interface.
    Net(NetDevice),
    /// A shared directory.
    ShareFs(ShareFsDevice),
    /// A VFIO PCI device.
    Vfio(VfioDevice),
}

impl DeviceConfig {
    /// The device's id within its VM.
    pub fn id(&self) -> &str {
        match self {
            DeviceConfig::Block(b) => &b.id,
            DeviceConfig::Net(n) => &n.id,
            DeviceConfig::ShareFs(s) => &s.mount_tag,
            DeviceConfig::Vfio(v) => &v.id,
        }
    }
}

/// Where the guest agent can be reached over vsock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VsockAddress {
    /// Kernel AF_VSOCK (vhost-vsock): the guest's context id and port.
    Vsock {
        /// Guest context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// Hybrid vsock: a unix socket that accepts `CONNECT <port>\n`.
    HybridVsock {
        /// The unix socket.
        uds: PathBuf,
        /// Port.
        port: u32,
    },
}

impl fmt::Display for VsockAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VsockAddress::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            VsockAddress::HybridVsock { uds, port } => {
                write!(f, "hvsock://{}:{port}", uds.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcie_port_round_trips_kata_values() {
        for s in ["no-port", "root-port", "bridge-port", "switch-port"] {
            let p: PciePort = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert!("root"
            .parse::<PciePort>()
            .unwrap_err()
            .contains("root-port"));
    }

    #[test]
    fn vsock_address_display_matches_client_syntax() {
        let a = VsockAddress::HybridVsock {
            uds: "/run/x/vsock.uds".into(),
            port: 1024,
        };
        assert_eq!(a.to_string(), "hvsock:///run/x/vsock.uds:1024");
        assert_eq!(
            VsockAddress::Vsock { cid: 3, port: 1024 }.to_string(),
            "vsock://3:1024"
        );
    }
}
