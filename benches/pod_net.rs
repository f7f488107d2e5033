//! TCP throughput into a pod: over the tap + tc path into the VM, against a veth-only baseline.
//! A figure, not a test; one run, no criterion.
//!
//! The bench makes two network namespaces (`ip netns`): the pod's, with `eth0` of a veth pair
//! as CNI's bridge plugin leaves it (address, default route), and a peer standing for the
//! bridge, with the other end. Nothing is made in the host's namespace. From the peer it sends
//! [`BYTES`] over one TCP connection:
//!
//! * **baseline**: to busybox `nc -l -e wc -c` run in the pod's namespace on the host (no VM,
//!   no tap, no tc), before a sandbox joins it;
//! * **tap + tc**: to the same busybox command in a container of a sandbox joined to the pod's
//!   namespace (a tap per interface, tc redirects both ways, virtio-net into the guest).
//!
//! The receiver reads the stream into a buffer and discards it (`wc -c`), then answers the
//! count, which the sender checks; the time runs from the first byte written until the answer
//! has arrived. Guests here run under QEMU TCG when KVM cannot run them: every packet is handled
//! by an emulated guest kernel, which bounds the VM's figure far below what KVM would give.
//!
//! Run (as root, with the guest image built): `benches/pod-net.sh`, or
//! `cargo bench -p kata-benches --bench pod_net`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_sandbox::{ContainerSpec, Sandbox};

/// Bytes sent in each transfer.
const BYTES: usize = 256 << 20;
const POD_IP: &str = "10.214.0.2";
const GATEWAY_IP: &str = "10.214.0.1";
const PORT: u16 = 5001;

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Result<Netns> {
        let name = format!("kata-bench-{role}-{}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        Ok(Netns { name })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pod's namespace and the peer's, joined by a veth pair.
fn make_network() -> Result<(Netns, Netns)> {
    let pod = Netns::new("pod")?;
    let peer = Netns::new("peer")?;
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", &peer.name,
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

/// Connects from the namespace at `ns` to `addr`, retrying until the server listens (within
/// `within`); the socket lives in that namespace.
fn connect_from(ns: &Path, addr: SocketAddr, within: Duration) -> Result<TcpStream> {
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<TcpStream> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns into the peer's namespace")?;
                loop {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(s) => return Ok(s),
                        Err(e) if t0.elapsed() > within => {
                            return Err(e).with_context(|| format!("connect {addr}"))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the sender's thread panicked"))?
    })
}

/// Sends [`BYTES`] from the peer's namespace (at `peer`) to `POD_IP:PORT`, checks the receiver's count;
/// MB/s (10^6 bytes per second).
fn send(peer: &Path) -> Result<f64> {
    let addr: SocketAddr = format!("{POD_IP}:{PORT}").parse()?;
    let mut s = connect_from(peer, addr, Duration::from_secs(120))?;
    let chunk = vec![0x5au8; 1 << 16];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < BYTES {
        s.write_all(&chunk)?;
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let secs = t0.elapsed().as_secs_f64();
    ensure!(
        answer.trim() == BYTES.to_string(),
        "the receiver counted {answer:?} bytes, {BYTES} were sent"
    );
    Ok(sent as f64 / 1e6 / secs)
}

/// The receiver's command line, in the guest and on the host alike.
fn receiver_args(busybox: &str) -> Vec<String> {
    let port = PORT.to_string();
    [busybox, "nc", "-l", "-p", &port, "-e", busybox, "wc", "-c"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The baseline: busybox in the pod's namespace on the host.
fn baseline(rootfs: &Path, pod: &Netns, peer: &Netns) -> Result<f64> {
    let busybox = rootfs.join("bin/busybox").display().to_string();
    let mut child: Child = Command::new("nsenter")
        .arg(format!("--net={}", pod.path().display()))
        .args(receiver_args(&busybox))
        .stdout(Stdio::null())
        .spawn()
        .context("nsenter busybox nc -l")?;
    let sent = send(&peer.path());
    if sent.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let mbps = sent?;
    ensure!(status.success(), "the baseline's nc -l: {status}");
    Ok(mbps)
}

/// The VM: the same receiver in a container of a sandbox joined to the pod's namespace.
async fn through_vm(rootfs: &Path, root: &Path, pod: &Netns, peer: &Netns) -> Result<f64> {
    let sb = Sandbox::builder()
        .memory_mib(512)
        .root_dir(root)
        .agent_timeout(Duration::from_secs(120))
        .network_namespace(pod.path())
        .build()
        .await
        .context("the sandbox")?;
    let measured = async {
        let c = sb
            .create_container(
                ContainerSpec::from_rootfs_dir(rootfs).args(receiver_args("/bin/busybox")),
            )
            .await?;
        c.start().await?;
        let peer = peer.path();
        let sent = tokio::task::spawn_blocking(move || send(&peer)).await?;
        let status = c.wait().await?;
        c.delete().await?;
        let mbps = sent?;
        ensure!(status.success(), "the container's nc -l: {status}");
        anyhow::Ok(mbps)
    }
    .await;
    let shut = sb.shutdown().await;
    let mbps = measured?;
    shut?;
    Ok(mbps)
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`. `cargo test --all-targets` (make test) runs bench
    // targets too, without it: this one boots a measured guest and moves 256 MiB, so there it
    // only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pod_net: a benchmark, not a test: run benches/pod-net.sh (cargo bench --bench pod_net)");
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("pod_net makes network namespaces: run it as root");
    }
    let work = tempfile::tempdir()?;
    let rootfs = work.path().join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).context("the busybox rootfs")?;
    let root = work.path().join("sandboxes");
    let (pod, peer) = make_network()?;
    let base = baseline(&rootfs, &pod, &peer)?;
    let rt = tokio::runtime::Runtime::new()?;
    let vm = rt.block_on(through_vm(&rootfs, &root, &pod, &peer))?;
    let taps = pod.ip(&["-o", "link", "show", "type", "tun"])?;
    ensure!(
        taps.trim().is_empty(),
        "taps left in the pod's namespace: {taps}"
    );
    let kvm = kata_hypervisor::probe_kvm();
    println!(
        "pod-net: TCP peer -> pod, {} MiB over one connection, receiver busybox `nc -l -e wc -c`",
        BYTES >> 20
    );
    println!(
        "  guests run under {} ({})",
        if kvm.usable { "KVM" } else { "QEMU TCG" },
        kvm.reason
    );
    println!("  veth only (process in the pod's namespace): {base:>9.1} MB/s");
    println!("  tap + tc into the VM (container):            {vm:>9.1} MB/s");
    println!(
        "  ratio veth / VM: {:.1}x (the VM at {:.1}% of the baseline)",
        base / vm,
        100.0 * vm / base
    );
    Ok(())
}
