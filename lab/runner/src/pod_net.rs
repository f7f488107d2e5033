//! `builtin-pod-network`: a container in a built-in VM reaches a peer over the pod network.
//!
//! The network is laid out as CNI's bridge plugin leaves a pod (and as kata-sandbox's
//! `pod_network_end_to_end` VM case builds it): a namespace for the pod whose `eth0` (one end
//! of a veth pair, an address, an MTU, a default route) kata-resource joins to a tap by tc
//! filters, and a second namespace holding the peer end (the gateway). The sandbox's NIC is
//! kata-vmm's virtio-net on that tap's open queue; the container sends a line to a server the
//! runner listens with in the peer's namespace, and the server checks it came from the pod's
//! address.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_hypervisor::config::{HypervisorConfig, HypervisorType};
use kata_sandbox::{ContainerSpec, Sandbox};

const POD_IP: &str = "10.214.0.2";
const GATEWAY_IP: &str = "10.214.0.1";
const POD_MTU: &str = "1400";
const LINE: &str = "hello-from-a-built-in-vm";

/// A network namespace (`ip netns add`), deleted on drop (shared with src/net_hot.rs).
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    fn new(role: &str) -> Result<Netns> {
        let name = format!("kata-lab-{role}");
        // A namespace a killed run left behind goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name])?;
        Ok(Netns { name })
    }

    pub(crate) fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// The tun/tap devices in it.
    pub(crate) fn taps(&self) -> Result<Vec<String>> {
        let text = self.ip(&["-details", "link", "show"])?;
        let mut taps = Vec::new();
        let mut name = None;
        for line in text.lines() {
            if !line.starts_with(' ') {
                name = line.split(':').nth(1).map(|n| n.trim().to_string());
            } else if line.trim_start().starts_with("tun ") {
                taps.extend(name.take());
            }
        }
        Ok(taps)
    }

    /// A TCP listener in this namespace (bound from a thread that entered it).
    pub(crate) fn listen(&self, addr: &str) -> Result<TcpListener> {
        let file = std::fs::File::open(self.path())?;
        let addr = addr.to_string();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<TcpListener> {
                // SAFETY: setns on a descriptor `file` owns, for this (scoped, short-lived)
                // thread only; no memory is passed.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
                Ok(TcpListener::bind(&addr)?)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pod's namespace (`eth0`) and the peer's (`peer0`, the gateway).
pub(crate) fn pod_network() -> Result<(Netns, Netns)> {
    let pod = Netns::new("pod")?;
    let peer = Netns::new("peer")?;
    pod.ip(&[
        "link", "add", "eth0", "mtu", POD_MTU, "type", "veth", "peer", "name", "peer0", "mtu",
        POD_MTU, "netns", &peer.name,
    ])?;
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["link", "set", "lo", "up"])?;
    pod.ip(&["route", "add", "default", "via", GATEWAY_IP])?;
    peer.ip(&["addr", "add", &format!("{GATEWAY_IP}/24"), "dev", "peer0"])?;
    peer.ip(&["link", "set", "peer0", "up"])?;
    peer.ip(&["link", "set", "lo", "up"])?;
    Ok((pod, peer))
}

/// Accepts one connection within `within` and reads it to the end.
pub(crate) fn serve_once(listener: TcpListener, within: Duration) -> Result<(String, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let t0 = Instant::now();
    loop {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut got = String::new();
                s.read_to_string(&mut got)?;
                return Ok((got, from));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if t0.elapsed() > within {
                    bail!("no connection from the container within {within:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The check: boot a built-in VM on the pod network, send a line from a container to the
/// peer, shut down, nothing left in the pod's namespace.
pub async fn builtin_pod_network(rootfs: &Path, root_dir: &str) -> Result<String> {
    let (pod, peer) = pod_network()?;
    let kind = HypervisorType::Dragonball;
    let builder = Sandbox::builder()
        .id("lab-builtin-net")
        .hypervisor(kind)
        .hypervisor_config(HypervisorConfig::defaults_for(kind))
        .memory_mib(256)
        .vcpus(1)
        .root_dir(root_dir)
        .network_namespace(pod.path());
    let sandbox = crate::l2_boot::build_sandbox(&builder)
        .await
        .context("the sandbox on the pod network did not start")?;
    let checked = async {
        let taps = pod.taps()?;
        ensure!(
            taps == ["tap0_kata"],
            "taps in the pod's namespace: {taps:?}"
        );
        let listener = peer.listen(&format!("{GATEWAY_IP}:0"))?;
        let port = listener.local_addr()?.port();
        let server =
            tokio::task::spawn_blocking(move || serve_once(listener, Duration::from_secs(90)));
        let script = format!(
            "ip addr show eth0; for i in 1 2 3 4 5; do echo {LINE} | nc {GATEWAY_IP} {port} && \
             exit 0; sleep 1; done; exit 1"
        );
        let out = sandbox
            .run(ContainerSpec::from_rootfs_dir(rootfs).args(["sh", "-c", &script]))
            .await?;
        let text = out.stdout_str();
        ensure!(
            out.status.success(),
            "nc to the peer: {} {text} {}",
            out.status,
            out.stderr_str()
        );
        ensure!(
            text.contains(&format!("inet {POD_IP}/24")),
            "eth0 without the pod's address:\n{text}"
        );
        let (got, from) = server.await??;
        ensure!(got.trim() == LINE, "the peer read {got:?}");
        ensure!(
            from.ip().to_string() == POD_IP,
            "the connection came from {from}, not the pod's {POD_IP}"
        );
        Ok(format!(
            "the container's line reached {GATEWAY_IP}:{port} from {from} over virtio-net on \
             tap0_kata"
        ))
    }
    .await;
    let shut = sandbox.shutdown().await;
    let detail = checked?;
    shut?;
    let taps = pod.taps()?;
    ensure!(taps.is_empty(), "taps left after shutdown: {taps:?}");
    Ok(detail)
}
