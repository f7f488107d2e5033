//! The cache process's side ([`serve`](VmCache::serve)): a [`SandboxPool`] of `vm_cache_number` sandboxes
//! and the endpoint that hands them over, one per `take`.
//!
//! The endpoint is created 0600 (the shim and the cache run as the same user, root); a
//! socket file left by a cache that died is replaced, one that answers is refused
//! ([`VmCacheError::InUse`]). Requests are served one at a time: a `take` is a detach
//! (milliseconds), and one at a time no two takers race for the same VM. A VM whose answer
//! cannot be delivered (the taker went away) is cleaned up here. On stop the endpoint is
//! removed first (no new taker), then every VM still cached is shut down.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kata_sandbox::{SandboxBuilder, SandboxPool};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Answer, Request, Result, VmCacheError, ID_PREFIX, MAX_LINE};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The cache: its pool, endpoint and root.
#[derive(Debug)]
pub struct VmCache {
    pool: SandboxPool,
    root: PathBuf,
    endpoint: PathBuf,
    handed_over: AtomicU64,
}

impl VmCache {
    /// Starts filling a cache of `number` sandboxes built from `template` in `root` (the
    /// shim's root directory), to be served on `endpoint`. Call inside a tokio runtime.
    pub fn new(
        template: SandboxBuilder,
        number: u32,
        root: &Path,
        endpoint: &Path,
    ) -> Result<Self> {
        if number == 0 {
            return Err(VmCacheError::Config(
                "[factory] vm_cache_number = 0: the cache is off; set it to the number of VMs to keep booted".into(),
            ));
        }
        if !endpoint.is_absolute() {
            return Err(VmCacheError::Config(format!(
                "[factory] vm_cache_endpoint = {:?}: an absolute socket path is needed",
                endpoint.display()
            )));
        }
        std::fs::create_dir_all(root).map_err(|e| VmCacheError::Io {
            what: format!("creating the sandbox root {}", root.display()),
            source: e,
        })?;
        let reaped = reap_orphans(root);
        if !reaped.is_empty() {
            tracing::warn!(
                ?reaped,
                "cleaned up the cached VMs a previous kata-vm-cache left"
            );
        }
        let template = reserve_nic_ports(template);
        let pool =
            SandboxPool::with_id_prefix(template.root_dir(root), number as usize, ID_PREFIX)?;
        Ok(VmCache {
            pool,
            root: root.to_path_buf(),
            endpoint: endpoint.to_path_buf(),
            handed_over: AtomicU64::new(0),
        })
    }

    /// Waits until every VM of the cache is booted (fails with a boot's error).
    pub async fn wait_filled(&self) -> Result<()> {
        Ok(self.pool.wait_filled().await?)
    }

    /// Serves the endpoint until `stop` completes, then removes it and shuts every cached VM
    /// down. The endpoint is bound before this returns its first await.
    pub async fn serve(&self, stop: impl Future<Output = ()>) -> Result<()> {
        let listener = bind(&self.endpoint)?;
        tracing::info!(endpoint = %self.endpoint.display(), size = self.pool.size(), root = %self.root.display(), "VM cache serving");
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Err(e) = self.answer(stream).await {
                            tracing::warn!(error = %e, "VM cache request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "VM cache accept failed"),
                },
            }
        }
        drop(listener);
        let _ = std::fs::remove_file(&self.endpoint);
        tracing::info!(
            ready = self.pool.ready(),
            "VM cache stopping: shutting the cached VMs down"
        );
        self.pool.shutdown().await?;
        tracing::info!(
            handed_over = self.handed_over.load(Ordering::SeqCst),
            "VM cache stopped"
        );
        Ok(())
    }

    /// Reads one request from `stream` and answers it.
    async fn answer(&self, stream: UnixStream) -> Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read).take(MAX_LINE as u64);
        let mut line = String::new();
        let io = |what: &str, e: std::io::Error| VmCacheError::Io {
            what: format!("VM cache request: {what}"),
            source: e,
        };
        tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
            .await
            .map_err(|_| io("read", std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| io("read", e))?;
        let answer = match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => Answer::Error {
                reason: format!("request {:?}: {e}", line.trim_end()),
            },
            Ok(Request::Status) => Answer::Status {
                ready: self.pool.ready(),
                size: self.pool.size(),
                handed_over: self.handed_over.load(Ordering::SeqCst),
            },
            Ok(Request::Take { root }) if root != self.root => Answer::Error {
                reason: format!(
                    "this cache keeps its VMs under {}, the taker's root is {}: run both with the same KATA_RS_ROOT_DIR",
                    self.root.display(),
                    root.display()
                ),
            },
            Ok(Request::Take { .. }) => self.hand_over().await,
        };
        let mut text = serde_json::to_vec(&answer).map_err(|e| io("encode", e.into()))?;
        text.push(b'\n');
        if let Err(e) = write.write_all(&text).await {
            if let Answer::Vm { dir_name } = &answer {
                // Nobody owns the detached VM: clean it up here.
                tracing::warn!(dir_name, error = %e, "the taker went away before the hand-over: cleaning the VM up");
                if let Ok(dir) = kata_resource::safe_child(&self.root, dir_name) {
                    let _ = kata_sandbox::persist::cleanup(&dir);
                }
            }
            return Err(io("write", e));
        }
        Ok(())
    }

    /// Detaches one cached VM, or says the cache is empty.
    async fn hand_over(&self) -> Answer {
        let sandbox = match self.pool.try_take().await {
            Ok(Some(sb)) => sb,
            Ok(None) => {
                tracing::info!("VM cache empty: the taker boots its own");
                return Answer::Empty;
            }
            Err(e) => {
                return Answer::Error {
                    reason: e.to_string(),
                }
            }
        };
        let dir_name = sandbox.id().to_string();
        match sandbox.detach().await {
            Ok(()) => {
                let n = self.handed_over.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::info!(sandbox_id = %dir_name, handed_over = n, "VM handed over");
                Answer::Vm { dir_name }
            }
            Err(e) => Answer::Error {
                reason: format!("detaching {dir_name}: {e}"),
            },
        }
    }
}

/// Cleans up what a cache that died (SIGKILL, a crash) left under `root`: each `vmcache-*`
/// directory whose `state.json` still names a `vmcache-` id (never handed over) or is
/// unreadable (a boot cut short), with its VMM and helpers ([`kata_sandbox::persist::cleanup`]
/// kills only processes whose command line names the directory). A sandbox taken over by a
/// shim names the pod's id and is left alone. One cache serves a root. Returns the names
/// cleaned up.
pub fn reap_orphans(root: &Path) -> Vec<String> {
    let mut reaped = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ID_PREFIX) {
            continue;
        }
        let Ok(dir) = kata_resource::safe_child(root, name) else {
            continue;
        };
        let orphan = match kata_sandbox::persist::SandboxState::load(&dir) {
            Ok(state) => state.id.starts_with(ID_PREFIX),
            Err(_) => true,
        };
        if !orphan {
            continue;
        }
        match kata_sandbox::persist::cleanup(&dir) {
            Ok(_) => reaped.push(name.to_string()),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cleaning up a cached VM left by a previous cache")
            }
        }
    }
    reaped
}

/// Binds the endpoint 0600: a stale socket (nobody answers) is replaced, a live one refused.
fn bind(endpoint: &Path) -> Result<UnixListener> {
    if endpoint.exists() {
        if std::os::unix::net::UnixStream::connect(endpoint).is_ok() {
            return Err(VmCacheError::InUse {
                endpoint: endpoint.to_path_buf(),
            });
        }
        std::fs::remove_file(endpoint).map_err(|e| VmCacheError::Io {
            what: format!("removing the stale endpoint {}", endpoint.display()),
            source: e,
        })?;
    }
    if let Some(parent) = endpoint.parent() {
        std::fs::create_dir_all(parent).map_err(|e| VmCacheError::Io {
            what: format!("creating {}", parent.display()),
            source: e,
        })?;
    }
    let listener = UnixListener::bind(endpoint).map_err(|e| VmCacheError::Io {
        what: format!("binding {}", endpoint.display()),
        source: e,
    })?;
    std::fs::set_permissions(endpoint, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        VmCacheError::Io {
            what: format!("chmod 0600 {}", endpoint.display()),
            source: e,
        }
    })?;
    Ok(listener)
}

/// How many PCIe root ports a cached QEMU VM keeps free for the NICs of the pod that takes
/// it, when the configuration reserves none.
pub const NIC_PORTS: u32 = 2;

/// A cached VM boots without network and is given the pod's NICs by hot-plug: on QEMU's q35
/// each needs a free root port. Where the configuration reserves none (`pcie_root_port` and
/// `pcie_switch_port` are 0, Kata's defaults), the cache's VMs get [`NIC_PORTS`], logged; a
/// configuration that reserves ports keeps its own number (a pod with more interfaces than
/// free ports boots a VM of its own, the shim says why).
fn reserve_nic_ports(template: SandboxBuilder) -> SandboxBuilder {
    let hv = template.config();
    let q35 = template.hypervisor_type() == kata_sandbox::config::HypervisorType::Qemu
        && hv.machine_type == "q35";
    if !q35 || hv.pcie_root_port > 0 || hv.pcie_switch_port > 0 {
        return template;
    }
    let mut hv = hv.clone();
    hv.pcie_root_port = NIC_PORTS;
    tracing::info!(
        pcie_root_port = NIC_PORTS,
        "cached VMs keep root ports free for the NICs of the pods that take them (the \
         configuration reserves none)"
    );
    template.hypervisor_config(hv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q35_cached_vms_keep_ports_for_nics_unless_the_configuration_has_its_own() {
        use kata_sandbox::config::HypervisorType;
        let qemu = kata_sandbox::Sandbox::builder().hypervisor(HypervisorType::Qemu);
        assert_eq!(qemu.config().pcie_root_port, 0);
        assert_eq!(
            reserve_nic_ports(qemu.clone()).config().pcie_root_port,
            NIC_PORTS
        );
        let mut own = qemu.config().clone();
        own.pcie_root_port = 5;
        let b = reserve_nic_ports(qemu.clone().hypervisor_config(own));
        assert_eq!(b.config().pcie_root_port, 5);
        let mut switch = qemu.config().clone();
        switch.pcie_switch_port = 3;
        let b = reserve_nic_ports(qemu.clone().hypervisor_config(switch));
        assert_eq!(
            (b.config().pcie_root_port, b.config().pcie_switch_port),
            (0, 3)
        );
        let mut microvm = qemu.config().clone();
        microvm.machine_type = "microvm".into();
        let b = reserve_nic_ports(qemu.hypervisor_config(microvm));
        assert_eq!(b.config().pcie_root_port, 0);
    }

    #[tokio::test]
    async fn a_cache_of_zero_or_a_relative_endpoint_is_refused_naming_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let e = VmCache::new(
            kata_sandbox::Sandbox::builder(),
            0,
            tmp.path(),
            &tmp.path().join("c.sock"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("vm_cache_number"), "{e}");
        let e = VmCache::new(
            kata_sandbox::Sandbox::builder(),
            1,
            tmp.path(),
            Path::new("c.sock"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("vm_cache_endpoint"), "{e}");
    }

    #[test]
    fn a_live_endpoint_is_refused_and_a_stale_one_replaced_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cache.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let live = bind(&path).unwrap();
            assert!(matches!(bind(&path), Err(VmCacheError::InUse { .. })));
            drop(live);
            // The file stays (a dead cache's): replaced.
            let _l = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        });
    }
}
