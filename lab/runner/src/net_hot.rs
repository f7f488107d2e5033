//! `builtin-net-hot` (issue 11): the built-in VMM hot-plugs a NIC — virtio-net on virtio-pci
//! on a tap — onto a spare PCIe root port when an interface is added to the pod's network
//! namespace after boot, in L1 where KVM works.
//!
//! The pod network is `builtin-pod-network`'s (src/pod_net.rs: the pod's namespace with
//! `eth0`, a veth to the peer's namespace), and the sandbox on the built-in VMM has
//! `pcie_root_port = 1` (one spare root port). After boot a second veth, `eth1`, is added to
//! the pod's namespace (as a second CNI network would) and `Sandbox::rescan_network` joins
//! it: kata-resource makes `tap1_kata` and its tc filters, the backend hot-plugs the NIC on
//! the tap's open queue behind root port `00:01.0` (`add_device`: the slot reports presence,
//! L2's pciehp brings it up) and the agent, told the interface with its PCI path `01/00`,
//! finds the link by its MAC and gives it the address. A container sees `eth1` with the
//! address, behind the port in sysfs, and sends a line over it to a server the runner
//! listens with in the peer's namespace (which checks it came from `eth1`'s address). Then
//! `eth1` is deleted and a rescan unplugs the NIC (attention button, L2 powers the slot off):
//! the guest's links no longer have it and its tap is gone. A third interface, `eth2`, then
//! takes the same port (with one port, only if the unplug freed it). After shutdown no tap is
//! left.
//!
//! `KATA_LAB_NET=only` on the host runs this check alone (`lab.net` on L1's command line; the
//! runner then runs no VMM set and the other checks never report).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kata_hypervisor::config::{HypervisorConfig, HypervisorType};
use kata_sandbox::{ContainerSpec, Sandbox};

use crate::pod_net::{pod_network, serve_once, Netns};

/// The check's name without the VMM's prefix.
pub const CHECK: &str = "net-hot";

/// The hot-plugged interface's address and its peer's.
const HOT_IP: &str = "10.215.0.2";
const HOT_PEER_IP: &str = "10.215.0.1";
/// The interface that takes the port again after the unplug, and its peer.
const AGAIN_IP: &str = "10.216.0.2";
const AGAIN_PEER_IP: &str = "10.216.0.1";
const LINE: &str = "hello-over-a-hot-plugged-nic";
/// Where L2's sysfs puts a device behind the one spare root port.
const BEHIND_PORT: &str = "/0000:00:01.0/0000:01:00.0/";

/// Whether L1's command line asks for this check alone (`lab.net`, the host's `KATA_LAB_NET`).
pub fn only() -> bool {
    only_in(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// [`only`] from a kernel command line: the word `lab.net`, not a prefix of another.
fn only_in(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "lab.net")
}

/// A veth `name` in the pod's namespace with `ip`/24, up, its other end `peer_name` in the
/// peer's with `peer_ip`/24.
fn add_veth(
    pod: &Netns,
    peer: &Netns,
    name: &str,
    ip: &str,
    peer_name: &str,
    peer_ip: &str,
) -> Result<()> {
    pod.ip(&[
        "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", &peer.name,
    ])?;
    pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", name])?;
    pod.ip(&["link", "set", name, "up"])?;
    peer.ip(&["addr", "add", &format!("{peer_ip}/24"), "dev", peer_name])?;
    peer.ip(&["link", "set", peer_name, "up"])?;
    Ok(())
}

/// The sorted taps in the pod's namespace.
fn taps(pod: &Netns) -> Result<Vec<String>> {
    let mut taps = pod.taps()?;
    taps.sort();
    Ok(taps)
}

/// `builtin-net-hot`.
pub async fn builtin_net_hot(rootfs: &Path, root_dir: &str) -> Result<String> {
    let (pod, peer) = pod_network()?;
    let kind = HypervisorType::Dragonball;
    let hv = HypervisorConfig {
        pcie_root_port: 1,
        ..HypervisorConfig::defaults_for(kind)
    };
    let builder = Sandbox::builder()
        .id("lab-net-hot")
        .hypervisor(kind)
        .hypervisor_config(hv)
        .memory_mib(256)
        .vcpus(1)
        .root_dir(root_dir)
        .network_namespace(pod.path());
    let sandbox = crate::l2_boot::build_sandbox(&builder)
        .await
        .context("the sandbox on the pod network with a spare root port did not start")?;
    let checked = async {
        // An interface added after boot: hot-plugged on the spare port.
        add_veth(&pod, &peer, "eth1", HOT_IP, "peer1", HOT_PEER_IP)?;
        let changes = sandbox
            .rescan_network()
            .await
            .context("the rescan adding eth1")?;
        ensure!(
            changes.added == ["eth1"] && changes.removed.is_empty(),
            "the rescan after eth1 was added: {changes:?}"
        );
        let t = taps(&pod)?;
        ensure!(
            t == ["tap0_kata", "tap1_kata"],
            "taps after the hot-plug: {t:?}"
        );
        let listener = peer.listen(&format!("{HOT_PEER_IP}:0"))?;
        let port = listener.local_addr()?.port();
        let server =
            tokio::task::spawn_blocking(move || serve_once(listener, Duration::from_secs(90)));
        let script = format!(
            "ip addr show eth1; echo \"sysfs $(readlink -f /sys/class/net/eth1)\"; for i in 1 2 3 \
             4 5; do echo {LINE} | nc {HOT_PEER_IP} {port} && exit 0; sleep 1; done; exit 1"
        );
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args(["sh", "-c", &script]))
            .await?;
        let text = out.stdout_str();
        ensure!(
            out.status.success(),
            "nc to the peer over eth1: {} {text} {}",
            out.status,
            out.stderr_str()
        );
        ensure!(
            text.contains(&format!("inet {HOT_IP}/24")),
            "eth1 without its address in the container:\n{text}"
        );
        let sysfs = text
            .lines()
            .find_map(|l| l.strip_prefix("sysfs "))
            .unwrap_or_default()
            .to_string();
        ensure!(
            sysfs.contains(BEHIND_PORT),
            "eth1 is not behind root port 00:01.0 in the guest: {sysfs:?}"
        );
        let (got, from) = server.await??;
        ensure!(got.trim() == LINE, "the peer read {got:?}");
        ensure!(
            from.ip().to_string() == HOT_IP,
            "the connection came from {from}, not eth1's {HOT_IP}"
        );

        // The interface goes: its NIC is unplugged, its tap removed.
        pod.ip(&["link", "del", "eth1"])?;
        let changes = sandbox
            .rescan_network()
            .await
            .context("the rescan removing eth1")?;
        ensure!(
            changes.removed == ["eth1"] && changes.added.is_empty(),
            "the rescan after eth1 went: {changes:?}"
        );
        let t = taps(&pod)?;
        ensure!(t == ["tap0_kata"], "taps after the unplug: {t:?}");
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args(["ls", "/sys/class/net"]))
            .await?;
        let links = out.stdout_str();
        ensure!(
            out.status.success() && !links.contains("eth1") && links.contains("eth0"),
            "the guest's links after the unplug: {links:?} {}",
            out.stderr_str()
        );

        // The port is free again: the next interface takes it.
        add_veth(&pod, &peer, "eth2", AGAIN_IP, "peer2", AGAIN_PEER_IP)?;
        let changes = sandbox
            .rescan_network()
            .await
            .context("the rescan adding eth2")?;
        ensure!(
            changes.added == ["eth2"] && changes.removed.is_empty(),
            "the rescan after eth2 was added (the port not freed?): {changes:?}"
        );
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args([
                "sh",
                "-c",
                "ip addr show eth2; echo \"sysfs $(readlink -f /sys/class/net/eth2)\"",
            ]))
            .await?;
        let again = out.stdout_str();
        ensure!(
            again.contains(&format!("inet {AGAIN_IP}/24")) && again.contains(BEHIND_PORT),
            "eth2 on the freed port: {again:?} {}",
            out.stderr_str()
        );
        Ok(format!(
            "eth1, added to the pod's namespace after boot, hot-plugged by rescan_network as \
             virtio-net-pci on tap1_kata behind root port 00:01.0 ({sysfs}): the container saw \
             {HOT_IP}/24 and its line reached {HOT_PEER_IP}:{port} from {from}; after eth1 was \
             deleted a rescan unplugged it (gone from L2's links, tap1_kata removed) and eth2 \
             took the same port with {AGAIN_IP}/24"
        ))
    }
    .await;
    let detail = crate::shut_down_clean(&sandbox, checked).await?;
    let t = taps(&pod)?;
    ensure!(t.is_empty(), "taps left after shutdown: {t:?}");
    Ok(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_the_whole_word() {
        assert!(only_in("console=ttyS0 lab.net lab.runner=/x"));
        assert!(!only_in("console=ttyS0 lab.network"));
        assert!(!only_in(""));
    }
}
