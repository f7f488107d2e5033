//! Kubernetes without a cluster: a private containerd with its CRI plugin, in a network
//! namespace of its own, with CNI bridge networking on a test range, the pause and busybox
//! test images in its `k8s.io` namespace, and runtime handlers as a RuntimeClass names them.
//!
//! Nothing of it touches the machine's own network: containerd runs under
//! `nsenter --net=/run/netns/<name>` (a namespace [`NetNs`] makes), so the CNI bridge, the
//! pods' veths and their addresses live there; the pods' own namespaces (`/run/netns/cni-*`)
//! are CRI's. Everything else is under the environment's directory: containerd's root, state,
//! socket, config and log, the CNI config and host-local's allocations.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::Client;
use crate::containerd::{Containerd, StartOptions};
use crate::image::{self, pause, TestImage};

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CNI plugins the environment uses (containerd's CRI needs `loopback` for every pod).
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];
/// The containerd namespace CRI keeps its images and containers in.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The CNI network's name (and host-local's directory of allocations).
pub const CNI_NETWORK: &str = "kata-rs-cri";
/// The bridge CNI makes in the environment's namespace.
pub const CNI_BRIDGE: &str = "ktcri0";

/// One runtime handler of the CRI config (`containerd.runtimes.<name>`), as a RuntimeClass's
/// `handler` names it.
#[derive(Debug, Clone)]
pub struct Handler {
    /// The handler's name (`kata`, `runc`).
    pub name: String,
    /// containerd's `runtime_type` (`io.containerd.kata.v2`, `io.containerd.runc.v2`).
    pub runtime_type: String,
    /// `options.ConfigPath`, for runtimes that take runtime options of type
    /// `runtimeoptions.v1.Options` (kata does: its configuration file).
    pub config_path: Option<PathBuf>,
}

/// What [`CriEnv::start`] sets up.
#[derive(Debug, Clone)]
pub struct CriOptions {
    /// The runtime handlers; the first is containerd's default.
    pub handlers: Vec<Handler>,
    /// The pods' IPv4 subnet (host-local's range; the bridge is its first address).
    pub subnet: String,
    /// Put in front of containerd's `PATH`, where it finds `containerd-shim-<name>-v2` (the
    /// directory of the shim binary cargo built).
    pub path_first: Option<PathBuf>,
}

/// A network namespace made with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Makes `/run/netns/<name>` with its loopback up. Fails if it exists (a stale one from
    /// an earlier run is deleted first only when `replace`).
    pub fn add(name: &str, replace: bool) -> Result<NetNs> {
        let path = Path::new("/run/netns").join(name);
        if path.exists() {
            ensure!(
                replace,
                "network namespace {name} exists already: delete it (ip netns delete {name})"
            );
            run(Command::new("ip").args(["netns", "delete", name]))?;
        }
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs {
            name: name.to_string(),
            path,
        };
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// Its name (`ip -n <name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, `/run/netns/<name>` (`nsenter --net=<path>`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of its links (`ip -o link`).
    pub fn links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show"])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect()
    }

    /// Runs `program -n <name> args...` (`ip`, `tc`) and returns its stdout, failing with its
    /// stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(program)
            .args(["-n", self.name.as_str()])
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        ensure!(
            out.status.success(),
            "{program} -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread of its own that joined this namespace (only that thread moves).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = self.path.clone();
        std::thread::spawn(move || -> Result<T> {
            let ns =
                std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns to {}", path.display()))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {} panicked", self.name))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// The CRI environment: containerd (dropped first) and its network namespace.
pub struct CriEnv {
    /// The private containerd (`ctr -n k8s.io` against it).
    pub containerd: Containerd,
    /// Its network namespace: the CNI bridge and the pods' veths are there.
    pub netns: NetNs,
    /// The environment's directory.
    pub dir: PathBuf,
    /// The pause image (`sandbox_image`).
    pub pause: TestImage,
    /// The busybox test image.
    pub busybox: TestImage,
}

impl CriEnv {
    /// What the environment needs on this machine, as `Some(reason)` when something is
    /// missing: root, containerd, ctr, ip, nsenter and the CNI plugins.
    pub fn missing() -> Option<String> {
        if let Some(reason) = crate::missing_root_or_tools(&["containerd", "ctr", "ip", "nsenter"])
        {
            return Some(reason);
        }
        CNI_PLUGINS
            .iter()
            .map(|p| Path::new(CNI_BIN_DIR).join(p))
            .find(|p| !p.is_file())
            .map(|p| {
                format!(
                    "{} is not installed (Debian's containernetworking-plugins)",
                    p.display()
                )
            })
    }

    /// Sets everything up in `dir` (which must exist): the network namespace `netns_name`
    /// (replacing a stale one of that name), the CNI config, the images (built and
    /// imported), containerd with the CRI config; returns once CRI answers `Version`.
    pub async fn start(dir: &Path, netns_name: &str, options: &CriOptions) -> Result<CriEnv> {
        let netns = NetNs::add(netns_name, true)?;
        let cni_conf = dir.join("cni/net.d");
        std::fs::create_dir_all(&cni_conf)?;
        std::fs::create_dir_all(dir.join("cni/ipam"))?;
        std::fs::write(
            cni_conf.join("10-kata-rs-cri.conflist"),
            cni_conflist(&options.subnet, &dir.join("cni/ipam")),
        )?;
        let pause = pause::pause_image_tar(&dir.join("pause.tar"))?;
        let busybox = image::busybox_image_tar(&dir.join("busybox.tar"))?;
        let config = containerd_config(&pause.name, &cni_conf, &options.handlers);
        let containerd = Containerd::start_with(
            dir,
            &StartOptions {
                namespace: Some(K8S_NAMESPACE),
                path_first: options.path_first.as_deref(),
                config: Some(&config),
                netns: Some(netns.path()),
                env: &[],
            },
        )?;
        for image in [&pause, &busybox] {
            containerd.ok(&["image", "import", &image.path.display().to_string()])?;
        }
        let env = CriEnv {
            containerd,
            netns,
            dir: dir.to_path_buf(),
            pause,
            busybox,
        };
        let t0 = Instant::now();
        loop {
            let answer = match Client::connect(env.containerd.socket()).await {
                Ok(c) => c.version().await.map(|_| ()).map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            match answer {
                Ok(()) => break,
                Err(e) if t0.elapsed() > Duration::from_secs(20) => {
                    bail!(
                        "CRI did not answer Version within 20 s: {e:#}\n{}",
                        env.containerd.log()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok(env)
    }

    /// A CRI client on containerd's socket.
    pub async fn client(&self) -> super::Result<Client> {
        Client::connect(self.containerd.socket()).await
    }

    /// The addresses host-local holds for pods now (its allocation files).
    pub fn ipam_allocations(&self) -> Vec<String> {
        let dir = self.dir.join("cni/ipam").join(CNI_NETWORK);
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Sends `request` to `addr` over TCP from the environment's network namespace (where the
    /// pods' bridge is) and reads the reply to its end.
    pub fn tcp_request(
        &self,
        addr: SocketAddr,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let request = request.to_vec();
        self.netns.run_in(move || -> Result<Vec<u8>> {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect_timeout(&addr, timeout)
                .with_context(|| format!("connect to {addr}"))?;
            s.set_read_timeout(Some(timeout))?;
            s.write_all(&request)?;
            s.shutdown(Shutdown::Write)?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)
                .with_context(|| format!("read the reply of {addr}"))?;
            Ok(out)
        })?
    }
}

/// The pods' network namespaces CRI made (`/run/netns/cni-*`) that exist now.
pub fn cri_pod_netns() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The CNI network: a bridge (the gateway, no masquerade: nothing leaves the namespace) with
/// host-local addresses from `subnet`, its allocations kept in `ipam_dir`.
pub fn cni_conflist(subnet: &str, ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": CNI_BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir,
            },
        }],
    }))
    .expect("serializable")
}

/// containerd's config: the CRI plugin with `sandbox_image`, `restrict_oom_score_adj` (a
/// process may not lower its OOM score on these machines), CNI from [`CNI_BIN_DIR`] and
/// `cni_conf_dir`, and the runtime handlers (the first is the default).
pub fn containerd_config(sandbox_image: &str, cni_conf_dir: &Path, handlers: &[Handler]) -> String {
    const CRI: &str = "plugins.\"io.containerd.grpc.v1.cri\"";
    let q = |s: &str| toml_string(s);
    let mut out = format!(
        "version = 2\n\n[{CRI}]\n  sandbox_image = {}\n  restrict_oom_score_adj = true\n\n[{CRI}.cni]\n  bin_dir = {}\n  conf_dir = {}\n  max_conf_num = 1\n\n[{CRI}.containerd]\n",
        q(sandbox_image),
        q(CNI_BIN_DIR),
        q(&cni_conf_dir.display().to_string()),
    );
    if let Some(first) = handlers.first() {
        out.push_str(&format!("  default_runtime_name = {}\n", q(&first.name)));
    }
    for h in handlers {
        out.push_str(&format!(
            "\n[{CRI}.containerd.runtimes.{}]\n  runtime_type = {}\n",
            q(&h.name),
            q(&h.runtime_type)
        ));
        if let Some(path) = &h.config_path {
            out.push_str(&format!(
                "[{CRI}.containerd.runtimes.{}.options]\n  ConfigPath = {}\n",
                q(&h.name),
                q(&path.display().to_string())
            ));
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_config_names_handlers_cni_and_sandbox_image() {
        let c = containerd_config(
            "localhost/p:1",
            Path::new("/x/net.d"),
            &[
                Handler {
                    name: "runc".into(),
                    runtime_type: "io.containerd.runc.v2".into(),
                    config_path: None,
                },
                Handler {
                    name: "kata".into(),
                    runtime_type: "io.containerd.kata.v2".into(),
                    config_path: Some("/x/kata \"q\".toml".into()),
                },
            ],
        );
        for want in [
            "sandbox_image = \"localhost/p:1\"",
            "restrict_oom_score_adj = true",
            "bin_dir = \"/usr/lib/cni\"",
            "conf_dir = \"/x/net.d\"",
            "default_runtime_name = \"runc\"",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.\"kata\"]\n  runtime_type = \"io.containerd.kata.v2\"",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.\"kata\".options]\n  ConfigPath = \"/x/kata \\\"q\\\".toml\"",
        ] {
            assert!(c.contains(want), "{want} not in\n{c}");
        }
        assert!(!c.contains("runtimes.\"runc\".options"), "{c}");
    }

    #[test]
    fn conflist_is_a_bridge_with_host_local_in_the_given_dir() {
        let c: serde_json::Value =
            serde_json::from_str(&cni_conflist("10.1.2.0/24", Path::new("/d/ipam"))).unwrap();
        assert_eq!(c["name"], CNI_NETWORK);
        let bridge = &c["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["dataDir"], "/d/ipam");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.1.2.0/24");
    }
}
