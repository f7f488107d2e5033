//! Host tier: the sandbox's network against real network namespaces (root).
//!
//! Each test makes its own namespaces with unique names (`ip netns add`) and deletes them at
//! the end: a "pod" namespace holding one end of a veth pair, set up as CNI's bridge plugin
//! leaves it (addresses, a default route, a static neighbour), and a "bridge" namespace holding
//! the other end, where the test reads and writes frames with a packet socket. Nothing is made
//! in the host's namespace. Skips with a message when not root or without iproute2.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kata_hypervisor::{DeviceConfig, NetDevice, SharedFs};
use kata_resource::network::{InternetworkingModel, IpFamily, NetworkConfig};
use kata_resource::{Error, SandboxResources};

fn skip() -> bool {
    if let Some(reason) = kata_testkit::missing_root_or_tools(&["ip", "tc"]) {
        assert!(
            std::env::var_os("KATA_RS_VM_TEST_LOG").is_none(),
            "pod network tests cannot run under make test: {reason}"
        );
        eprintln!("SKIPPED (not under make test): {reason}");
        return true;
    }
    false
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a command succeeds.
fn ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

/// A network namespace this test made (`/run/netns/<name>`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "kata-rs-test-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh("tc", &all)
    }

    /// Whether link `name` exists here.
    fn has_link(&self, name: &str) -> bool {
        ok("ip", &["-n", &self.name, "link", "show", "dev", name])
    }

    /// The qdiscs and filters on `dev`'s ingress, as `tc` prints them.
    fn ingress(&self, dev: &str) -> String {
        let qdiscs = self.tc(&["qdisc", "show", "dev", dev, "ingress"]);
        let filters = self.tc(&["filter", "show", "dev", dev, "ingress"]);
        format!("{qdiscs}{filters}")
    }

    fn mac(&self, dev: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ip(&["-json", "link", "show", "dev", dev])).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pod namespace with `eth0` (192.0.2.2/24, 2001:db8::2/64, default route via 192.0.2.1, a
/// static neighbour for it), and a bridge namespace with its peer `peer0`, up.
struct Pod {
    pod: Netns,
    bridge: Netns,
}

impl Pod {
    fn new() -> Pod {
        let pod = Netns::new("pod");
        let bridge = Netns::new("br");
        pod.ip(&[
            "link",
            "add",
            "name",
            "eth0",
            "mtu",
            "1450",
            "type",
            "veth",
            "peer",
            "name",
            "peer0",
            "netns",
            &bridge.name,
        ]);
        pod.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
        pod.ip(&["addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["link", "set", "lo", "up"]);
        pod.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        pod.ip(&[
            "neigh",
            "add",
            "192.0.2.1",
            "lladdr",
            "02:00:5e:00:02:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        bridge.ip(&["link", "set", "peer0", "up"]);
        Pod { pod, bridge }
    }

    fn config(&self, queues: u32) -> NetworkConfig {
        NetworkConfig {
            netns_path: Some(self.pod.path()),
            model: InternetworkingModel::TcFilter,
            queues,
            disable_new_netns: false,
        }
    }

    /// Nothing of kata-rs is left in the pod's namespace, and CNI's setup is untouched.
    fn assert_clean(&self) {
        for tap in ["tap0_kata", "tap1_kata"] {
            assert!(!self.pod.has_link(tap), "{tap} is left");
        }
        let ingress = self.pod.ingress("eth0");
        assert!(ingress.trim().is_empty(), "eth0 still has: {ingress}");
        let addrs = self.pod.ip(&["addr", "show", "dev", "eth0"]);
        assert!(addrs.contains("192.0.2.2/24"), "{addrs}");
        assert!(self
            .pod
            .ip(&["route", "show"])
            .contains("default via 192.0.2.1"));
    }
}

fn resources() -> (tempfile::TempDir, SandboxResources) {
    let dir = tempfile::tempdir().unwrap();
    let r = SandboxResources::new(dir.path().join("sb"), SharedFs::None, 8192).unwrap();
    (dir, r)
}

fn net_devices(r: &SandboxResources) -> Vec<NetDevice> {
    r.devices()
        .into_iter()
        .filter_map(|d| match d {
            DeviceConfig::Net(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn discovery_returns_the_pods_interface_routes_and_neighbours() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let net = kata_resource::network::discover(&pod.pod.path()).unwrap();
    assert_eq!(net.interfaces.len(), 1, "{net:?}");
    let eth0 = &net.interfaces[0];
    assert_eq!(eth0.name, "eth0");
    assert_eq!(eth0.mac, pod.pod.mac("eth0"));
    assert_eq!(eth0.mtu, 1450);
    assert_eq!(eth0.kind, "veth");
    let addrs: Vec<String> = eth0.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["192.0.2.2/24", "2001:db8::2/64"]);

    let default = net
        .routes
        .iter()
        .find(|r| r.destination.is_none() && r.family == IpFamily::V4)
        .unwrap_or_else(|| panic!("no default route in {:?}", net.routes));
    assert_eq!(default.gateway, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(default.device, "eth0");
    assert!(
        net.routes
            .iter()
            .all(|r| r.destination.map(|d| d.to_string()) != Some("192.0.2.0/24".into())),
        "the kernel's own route is not carried: {:?}",
        net.routes
    );
    assert!(
        net.neighbors
            .iter()
            .any(|n| n.ip == "192.0.2.1".parse::<std::net::IpAddr>().unwrap()
                && n.mac == "02:00:5e:00:02:01"
                && n.state == 0x80),
        "{:?}",
        net.neighbors
    );
    // Reading changed nothing.
    pod.assert_clean();
}

#[test]
fn a_tap_joined_by_filters_carries_frames_both_ways_and_release_removes_it() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let (_dir, mut r) = resources();
    r.set_up_network(&pod.config(1)).unwrap();

    let devices = net_devices(&r);
    assert_eq!(devices.len(), 1, "{devices:?}");
    let nic = &devices[0];
    let eth0_mac = pod.pod.mac("eth0");
    assert_eq!(
        (nic.tap_name.as_str(), nic.mac.as_str(), nic.queues),
        ("tap0_kata", eth0_mac.as_str(), 1)
    );
    assert_eq!(nic.tap_fds.len(), 1);
    assert_eq!(nic.netns.as_deref(), Some(pod.pod.path().as_path()));
    assert_eq!(r.guest_network().interfaces[0].mac, eth0_mac);

    // Kata's filters, both ways.
    let eth0 = pod.pod.ingress("eth0");
    assert!(
        eth0.contains("ingress ffff:") && eth0.contains("Egress Redirect to device tap0_kata"),
        "{eth0}"
    );
    let tap = pod.pod.ingress("tap0_kata");
    assert!(tap.contains("Egress Redirect to device eth0"), "{tap}");
    let details = pod.pod.ip(&["-d", "link", "show", "dev", "tap0_kata"]);
    assert!(
        details.contains("mtu 1450") && details.contains("vnet_hdr on"),
        "{details}"
    );

    // VM → pod network: a frame written to the tap leaves through eth0 to its peer.
    let peer = PacketSocket::open(&pod.bridge, "peer0");
    let nonce = format!("kata-rs to the pod network {}", std::process::id());
    let frame = ethernet_frame(BROADCAST, &mac_bytes(&eth0_mac), nonce.as_bytes());
    write_to_tap(&nic.tap_fds[0], &frame);
    assert!(
        peer.receive_containing(nonce.as_bytes()),
        "the frame written to the tap did not reach peer0"
    );

    // Pod network → VM: a frame sent to eth0's MAC from the peer comes out of the tap.
    let nonce = format!("kata-rs from the pod network {}", std::process::id());
    peer.send(&ethernet_frame(
        &mac_bytes(&eth0_mac),
        &[0x02, 0, 0x5e, 0, 2, 1],
        nonce.as_bytes(),
    ));
    assert!(
        read_tap_containing(&nic.tap_fds[0], nonce.as_bytes()),
        "the frame sent from peer0 did not come out of the tap"
    );

    r.release().unwrap();
    pod.assert_clean();
}

#[test]
fn several_queues_make_a_multi_queue_tap_and_drop_removes_it() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let (_dir, mut r) = resources();
    r.set_up_network(&pod.config(2)).unwrap();
    let devices = net_devices(&r);
    assert_eq!((devices[0].queues, devices[0].tap_fds.len()), (2, 2));
    let details = pod.pod.ip(&["-d", "link", "show", "dev", "tap0_kata"]);
    assert!(details.contains("multi_queue"), "{details}");
    drop(r);
    pod.assert_clean();
}

#[test]
fn detach_then_adopt_hands_the_network_over_and_release_removes_it() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let (dir, mut r) = resources();
    r.set_up_network(&pod.config(1)).unwrap();
    // The VMM's copies of the queues keep the tap alive after the owner lets go of its own.
    let vmm_fds = net_devices(&r)[0].tap_fds.clone();
    let sandbox_dir = r.sandbox_dir().to_owned();
    let state = r.detach();
    assert_eq!(state.network.endpoints.len(), 1);
    assert!(pod.pod.has_link("tap0_kata"), "detach removed the tap");
    assert!(pod.pod.ingress("eth0").contains("tap0_kata"));

    // Persisted and read back, as state.json does.
    let state: kata_resource::ResourcesState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    let adopted = SandboxResources::adopt(&sandbox_dir, &state).unwrap();
    let devices = net_devices(&adopted);
    assert_eq!(devices[0].tap_name, "tap0_kata");
    assert!(
        devices[0].tap_fds.is_empty(),
        "open files are not persisted"
    );
    assert_eq!(adopted.guest_network(), &state.network.guest);
    adopted.release().unwrap();
    pod.assert_clean();
    drop((vmm_fds, dir));
}

#[test]
fn cleanup_from_the_state_removes_what_a_crashed_owner_left() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let (_dir, mut r) = resources();
    r.set_up_network(&pod.config(1)).unwrap();
    let vmm_fds = net_devices(&r)[0].tap_fds.clone();
    let sandbox_dir = r.sandbox_dir().to_owned();
    let state = r.detach();
    SandboxResources::cleanup(&sandbox_dir, Some(&state)).unwrap();
    pod.assert_clean();
    // Once more: nothing to do.
    SandboxResources::cleanup(&sandbox_dir, Some(&state)).unwrap();
    drop(vmm_fds);
}

#[test]
fn when_the_owner_and_the_vmm_both_die_the_tap_goes_and_cleanup_removes_the_filter() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let (_dir, mut r) = resources();
    r.set_up_network(&pod.config(1)).unwrap();
    let sandbox_dir = r.sandbox_dir().to_owned();
    // No VMM holds a queue: the tap dies with the owner's.
    let state = r.detach();
    assert!(!pod.pod.has_link("tap0_kata"), "a tap without queues stays");
    assert!(
        pod.pod.ingress("eth0").contains("ingress ffff:"),
        "eth0's qdisc is the owner's to remove"
    );
    // Adoption refuses: the VM is gone.
    let e = SandboxResources::adopt(&sandbox_dir, &state).unwrap_err();
    assert!(e.to_string().contains("tap0_kata"), "{e}");
    SandboxResources::cleanup(&sandbox_dir, Some(&state)).unwrap();
    pod.assert_clean();
}

#[test]
fn a_namespace_path_that_does_not_exist_is_named_and_leaves_nothing() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let (_dir, mut r) = resources();
    let missing =
        Path::new("/run/netns").join(format!("kata-rs-test-missing-{}", std::process::id()));
    let e = r
        .set_up_network(&NetworkConfig {
            netns_path: Some(missing.clone()),
            ..pod.config(1)
        })
        .unwrap_err();
    assert!(matches!(e, Error::NetnsNotFound { .. }), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("linux.namespaces[network].path")
            && message.contains(&*missing.to_string_lossy()),
        "{message}"
    );
    assert!(net_devices(&r).is_empty());
    assert_eq!(r.state().network, Default::default());
    pod.assert_clean();
    // The slot is still free: the real namespace sets up after the error.
    r.set_up_network(&pod.config(1)).unwrap();
    r.release().unwrap();
    pod.assert_clean();
}

#[test]
fn a_failure_on_the_second_interface_removes_the_first_ones_tap_and_filters() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    pod.pod.ip(&[
        "link",
        "add",
        "name",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "peer1",
        "netns",
        &pod.bridge.name,
    ]);
    pod.pod
        .ip(&["addr", "add", "198.51.100.2/24", "dev", "eth1"]);
    pod.pod.ip(&["link", "set", "eth1", "up"]);
    // Another tool's ingress qdisc on eth1: the tcfilter model cannot have it.
    pod.pod
        .tc(&["qdisc", "add", "dev", "eth1", "handle", "ffff:", "ingress"]);

    let (_dir, mut r) = resources();
    let e = r.set_up_network(&pod.config(1)).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("eth1") && message.contains("has one already"),
        "{message}"
    );
    assert!(net_devices(&r).is_empty());
    pod.assert_clean();
    assert!(
        pod.pod.ingress("eth1").contains("ingress ffff:"),
        "the qdisc that was there before is not removed"
    );
}

#[test]
fn a_rescan_joins_an_interface_added_after_set_up_and_release_removes_it_too() {
    if skip() {
        return;
    }
    let pod = Pod::new();
    let (_dir, mut r) = resources();
    r.set_up_network(&pod.config(1)).unwrap();
    let none = r.rescan_network().unwrap();
    assert!(none.devices.is_empty() && none.interfaces.is_empty());

    pod.pod.ip(&[
        "link",
        "add",
        "name",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "peer1",
        "netns",
        &pod.bridge.name,
    ]);
    pod.pod
        .ip(&["addr", "add", "198.51.100.2/24", "dev", "eth1"]);
    pod.pod.ip(&["link", "set", "eth1", "up"]);
    let found = r.rescan_network().unwrap();
    let names: Vec<&str> = found.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth1"]);
    assert_eq!(found.interfaces[0].mac, pod.pod.mac("eth1"));
    let [DeviceConfig::Net(nic)] = &found.devices[..] else {
        panic!("one NIC to hot-plug: {:?}", found.devices);
    };
    assert_eq!(nic.id, "net1", "a device id the boot's NIC does not have");
    assert_eq!(nic.tap_name, "tap1_kata");
    assert_eq!(nic.tap_fds.len(), 1, "its open queue, for the VMM");
    // eth1's subnet route is the guest kernel's to make (with the address): not sent.
    assert!(found.network.routes.iter().all(|r| r.device == "eth0"));
    let ingress = pod.pod.ingress("eth1");
    assert!(
        ingress.contains("mirred") && ingress.contains("tap1_kata"),
        "{ingress}"
    );
    // Recorded: both NICs in the state, the guest's view with both interfaces.
    assert_eq!(r.state().network.endpoints.len(), 2);
    assert_eq!(r.guest_network().interfaces.len(), 2);
    assert!(
        r.rescan_network().unwrap().devices.is_empty(),
        "nothing new the second time"
    );

    // eth1 goes: the next rescan lists its NIC as removed; forgetting it removes its tap.
    pod.pod.ip(&["link", "del", "eth1"]);
    let gone = r.rescan_network().unwrap();
    assert!(gone.devices.is_empty());
    let [(name, DeviceConfig::Net(nic))] = &gone.removed[..] else {
        panic!("one NIC to unplug: {:?}", gone.removed);
    };
    assert_eq!((name.as_str(), nic.id.as_str()), ("eth1", "net1"));
    assert!(pod.pod.has_link("tap1_kata"), "kept until the VM let it go");
    r.forget_network_device("net1").unwrap();
    assert!(!pod.pod.has_link("tap1_kata"));
    assert_eq!(r.state().network.endpoints.len(), 1);
    let e = r.forget_network_device("net1").unwrap_err().to_string();
    assert!(e.contains("net1") && e.contains("no such NIC"), "{e}");

    drop(r);
    pod.assert_clean();
}

#[test]
fn a_rescan_without_a_pod_network_is_refused_naming_it() {
    let (_dir, mut r) = resources();
    let e = r.rescan_network().unwrap_err().to_string();
    assert!(e.contains("no pod network namespace"), "{e}");
}

// --- frames ------------------------------------------------------------------------------------

const BROADCAST: &[u8; 6] = &[0xff; 6];
/// IEEE 802 local experimental EtherType: no stack on the way acts on it.
const ETHERTYPE: u16 = 0x88b5;
/// A tap with `IFF_VNET_HDR` prefixes each frame with a `virtio_net_hdr` (10 bytes by
/// default); zero means no offloads.
const VNET_HDR_LEN: usize = 10;

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut b = [0u8; 6];
    for (i, part) in mac.split(':').enumerate() {
        b[i] = u8::from_str_radix(part, 16).unwrap();
    }
    b
}

fn ethernet_frame(dst: &[u8; 6], src: &[u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(dst);
    f.extend_from_slice(src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn write_to_tap(fd: &OwnedFd, frame: &[u8]) {
    let mut buf = vec![0u8; VNET_HDR_LEN];
    buf.extend_from_slice(frame);
    let n = nix::unistd::write(fd, &buf).unwrap();
    assert_eq!(n, buf.len());
}

/// Reads frames from the tap for up to 5 s until one contains `needle`.
fn read_tap_containing(fd: &OwnedFd, needle: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
        if ready <= 0 {
            continue;
        }
        let n = nix::unistd::read(fd.as_fd(), &mut buf).unwrap();
        if n > VNET_HDR_LEN && contains(&buf[VNET_HDR_LEN..n], needle) {
            return true;
        }
    }
    false
}

/// An `AF_PACKET` socket bound to one interface of a namespace, made from a thread that
/// entered it.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(ns: &Netns, dev: &str) -> PacketSocket {
        let file = File::open(ns.path()).unwrap();
        let dev = std::ffi::CString::new(dev).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                // SAFETY: a NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) } as i32;
                assert!(ifindex > 0, "no {dev:?} in {}", ns.name);
                let protocol = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket(2); the result is checked and owned at once.
                let raw = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        protocol as i32,
                    )
                };
                assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
                // SAFETY: `raw` is a new socket nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = protocol;
                addr.sll_ifindex = ifindex;
                // SAFETY: `addr` is a sockaddr_ll of the size given.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                PacketSocket { fd, ifindex }
            })
            .join()
            .unwrap()
        })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the sizes given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Receives frames for up to 5 s until one contains `needle`.
    fn receive_containing(&self, needle: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
                continue;
            }
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && contains(&buf[..n as usize], needle) {
                return true;
            }
        }
        false
    }
}
