//! The VM cache: VMs booted ahead of need in a process of their own (`kata-vm-cache`),
//! handed over to the shim of a new pod (Kata's `[factory] vm_cache_number`,
//! `vm_cache_endpoint`).
//!
//! containerd starts one shim per pod, so kata-sandbox's in-process [`SandboxPool`] cannot
//! help a shim: the pool lives in the cache process ([`server`]), which keeps
//! `vm_cache_number` sandboxes booted (agent ready, no container) under the shim's root
//! directory, with ids `vmcache-<random>`. On a `take` request over `vm_cache_endpoint` (a
//! unix socket, 0600) it [detaches](kata_sandbox::Sandbox::detach) one and answers with its
//! directory; the pool boots a replacement in the background. Nothing but the directory
//! name crosses the socket: the sandbox's `state.json` names the VMM and helper pids (adopted
//! by pidfd, checked by command line), the QMP and vsock sockets the shim reconnects to.
//!
//! The shim ([`take_for_pod`]) checks the directory through the one path helper
//! (`kata_resource::safe_child` under its own root), and takes the sandbox over as the
//! pod's ([`Sandbox::take_over_as`]): the pod's sandbox id and hostname, the agent's sandbox
//! created again, the guest's random pool reseeded with host entropy. The host directory
//! keeps the cache's name (the VMM's command line names it); [`sandbox_dir`] finds a pod's
//! sandbox by the id in its `state.json`. The pod's network namespace and host cgroups are
//! joined at the take-over (the VMM moves into the pod's cgroups, a NIC is hot-plugged per
//! interface of the namespace). Whenever the cache cannot serve the pod (off, down, empty,
//! or a pod the cached VMs do not fit: VFIO devices, `io.katacontainers.config.*`
//! annotations; or the hand-over failed, e.g. no free port for a NIC) the shim boots a VM
//! itself and logs why.
//!
//! [`SandboxPool`]: kata_sandbox::SandboxPool

pub mod cli;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use kata_sandbox::config::{ConfigLoader, FactoryConfig, KATA_CONF_FILE};
use kata_sandbox::handover::Rekey;
use kata_sandbox::Sandbox;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// What each cached sandbox's id starts with.
pub const ID_PREFIX: &str = "vmcache-";

/// How long the shim waits for the cache's answer (a hand-over is a detach: milliseconds).
pub const TAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request or answer line.
const MAX_LINE: usize = 64 * 1024;

/// What went wrong between the shim, the cache and the cached sandboxes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmCacheError {
    /// The endpoint could not be reached, or the exchange failed.
    #[error("VM cache {endpoint}: {reason} (is kata-vm-cache running with this configuration?)")]
    Endpoint {
        /// The socket.
        endpoint: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The cache answered with an error.
    #[error("VM cache {endpoint} refused: {reason}")]
    Refused {
        /// The socket.
        endpoint: PathBuf,
        /// The cache's reason.
        reason: String,
    },
    /// The configuration does not run a cache (or cannot be read).
    #[error("VM cache configuration: {0}")]
    Config(String),
    /// Another cache serves the endpoint already.
    #[error("VM cache {endpoint}: another kata-vm-cache answers there; stop it first or set another vm_cache_endpoint")]
    InUse {
        /// The socket.
        endpoint: PathBuf,
    },
    /// The sandbox library failed (booting, detaching, taking over).
    #[error(transparent)]
    Sandbox(#[from] kata_sandbox::Error),
    /// A host call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, VmCacheError>;

/// A request to the cache: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Hand a VM over. `root` is the taker's sandbox root: the cache refuses a taker whose
    /// root is not its own (the directory could not be found through it).
    Take {
        /// The taker's root directory of sandbox directories.
        root: PathBuf,
    },
    /// How many VMs are ready, the cache's size and how many were handed over.
    Status,
}

/// The cache's answer: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A detached sandbox, its directory named by `dir_name` under the taker's root.
    Vm {
        /// The sandbox directory's name (the cache's sandbox id).
        dir_name: String,
    },
    /// No VM is ready now (all taken, refill in progress): boot one.
    Empty,
    /// The cache's figures.
    Status {
        /// VMs booted and waiting.
        ready: usize,
        /// `vm_cache_number`.
        size: usize,
        /// VMs handed over since the cache started.
        handed_over: u64,
    },
    /// The request failed.
    Error {
        /// Why.
        reason: String,
    },
}

/// Sends `request` to the cache at `endpoint` and reads its answer, within `timeout`.
pub async fn ask(endpoint: &Path, request: &Request, timeout: Duration) -> Result<Answer> {
    let fail = |reason: String| VmCacheError::Endpoint {
        endpoint: endpoint.to_path_buf(),
        reason,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(endpoint)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let mut line = serde_json::to_vec(request).map_err(|e| fail(e.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| fail(format!("send: {e}")))?;
        let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .await
            .map_err(|e| fail(format!("receive: {e}")))?;
        serde_json::from_str::<Answer>(answer.trim_end())
            .map_err(|e| fail(format!("answer {:?}: {e}", answer.trim_end())))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
}

/// The `[factory]` table of the configuration the shim's sandboxes are built from (the same
/// search as [`crate::runtime_options::sandbox_builder`]); Kata's defaults (cache off) when
/// no file is named and none is found.
pub fn factory_config(options: Option<&Any>) -> Result<FactoryConfig> {
    let path = crate::runtime_options::options_config_path(options)
        .map_err(|e| VmCacheError::Config(e.to_string()))?;
    factory_config_from(path.as_deref().map(Path::new))
}

/// [`factory_config`] with the configuration path given directly (`kata-vm-cache --config`).
pub fn factory_config_from(config_path: Option<&Path>) -> Result<FactoryConfig> {
    let mut loader =
        ConfigLoader::new().search_paths(crate::names::NameSet::current().config_search_paths());
    if let Some(p) = config_path {
        loader = loader.path(p);
    }
    let named = config_path.is_some_and(|p| !p.as_os_str().is_empty())
        || std::env::var_os(KATA_CONF_FILE).is_some_and(|v| !v.is_empty());
    if !named && loader.resolve().is_err() {
        return Ok(FactoryConfig::default());
    }
    let loaded = loader.load().map_err(VmCacheError::Sandbox)?;
    Ok(loaded.config.factory)
}

/// What of a new pod decides whether a cached VM fits it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNeeds {
    /// The pod's sandbox id.
    pub sandbox_id: String,
    /// The pod's hostname (the spec's).
    pub hostname: Option<String>,
    /// The spec's network namespace: a cached VM (booted without one) joins it, a NIC
    /// hot-plugged per interface.
    pub network_namespace: Option<PathBuf>,
    /// The spec passes VFIO devices through (cold-plugged at boot).
    pub vfio_devices: bool,
    /// The spec's `linux.cgroupsPath`: a cached VM's VMM and helpers move into it.
    pub cgroups_path: Option<String>,
    /// `io.katacontainers.config.*` annotations (the cached VM was built without them).
    pub config_annotations: Vec<String>,
}

impl PodNeeds {
    /// Why a cached VM does not fit this pod, if it does not.
    pub fn misfit(&self) -> Option<String> {
        if self.vfio_devices {
            return Some("the pod passes VFIO devices through (cold-plugged at boot)".into());
        }
        if !self.config_annotations.is_empty() {
            return Some(format!(
                "the pod sets configuration annotations ({})",
                self.config_annotations.join(", ")
            ));
        }
        None
    }
}

/// The `io.katacontainers.config.*` keys among `annotations`, sorted.
pub fn config_annotations(annotations: &std::collections::HashMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = annotations
        .keys()
        .filter(|k| k.starts_with("io.katacontainers.config."))
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// A sandbox from the cache for the pod, taken over as the pod's; `None` (logged, with the
/// reason) when the shim should boot one itself: the cache is off, does not answer, is
/// empty, or its VMs do not fit the pod; or the hand-over failed (what was handed over is
/// cleaned up).
pub async fn take_for_pod(root: &Path, options: Option<&Any>, pod: &PodNeeds) -> Option<Sandbox> {
    let t0 = std::time::Instant::now();
    let factory = match factory_config(options) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "VM cache: the configuration's [factory] table is unreadable; booting a VM");
            return None;
        }
    };
    if factory.vm_cache_number == 0 {
        return None;
    }
    let sandbox_id = pod.sandbox_id.as_str();
    if let Some(why) = pod.misfit() {
        tracing::info!(sandbox_id, reason = %why, "VM cache not used: booting a VM");
        return None;
    }
    let endpoint = PathBuf::from(&factory.vm_cache_endpoint);
    let request = Request::Take {
        root: root.to_path_buf(),
    };
    let dir_name = match ask(&endpoint, &request, TAKE_TIMEOUT).await {
        Ok(Answer::Vm { dir_name }) => dir_name,
        Ok(Answer::Empty) => {
            tracing::info!(sandbox_id, endpoint = %endpoint.display(), "VM cache empty: booting a VM");
            return None;
        }
        Ok(other) => {
            tracing::warn!(sandbox_id, endpoint = %endpoint.display(), answer = ?other, "VM cache gave no VM: booting a VM");
            return None;
        }
        Err(e) => {
            tracing::warn!(sandbox_id, error = %e, "VM cache down: booting a VM");
            return None;
        }
    };
    match take_over(root, &dir_name, pod).await {
        Ok(sb) => {
            tracing::info!(sandbox_id, from = %dir_name, dir = %sb.dir().display(), took = ?t0.elapsed(), "sandbox taken from the VM cache");
            Some(sb)
        }
        Err(e) => {
            tracing::warn!(sandbox_id, from = %dir_name, error = %e, "taking over a VM from the cache failed: booting a VM");
            None
        }
    }
}

/// Takes over the cached sandbox in `<root>/<dir_name>` as the pod's. On error, what was
/// handed over is cleaned up (never left running without an owner).
async fn take_over(root: &Path, dir_name: &str, pod: &PodNeeds) -> Result<Sandbox> {
    if !dir_name.starts_with(ID_PREFIX) {
        return Err(VmCacheError::Config(format!(
            "the cache handed over {dir_name:?}, not a `{ID_PREFIX}` directory: refused"
        )));
    }
    let dir = kata_resource::safe_child(root, dir_name)
        .map_err(|e| VmCacheError::Config(format!("the cache handed over {dir_name:?}: {e}")))?;
    let mut rekey = Rekey::new(&pod.sandbox_id)?;
    if let Some(h) = &pod.hostname {
        rekey = rekey.hostname(h);
    }
    if let Some(netns) = &pod.network_namespace {
        rekey = rekey.network_namespace(netns);
    }
    if let Some(cgroups) = &pod.cgroups_path {
        rekey = rekey.cgroups_path(cgroups);
    }
    match Sandbox::take_over_as(&dir, rekey).await {
        Ok(sb) => Ok(sb),
        Err(e) => {
            // A failed re-keying shut the sandbox down already; a failed restore left it.
            if dir.exists() {
                if let Err(ce) = kata_sandbox::persist::cleanup(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %ce, "cleaning up a handed-over VM");
                }
            }
            Err(e.into())
        }
    }
}

/// The directory of sandbox `id` under `root`: `<root>/<id>`, or, for a sandbox taken from
/// the VM cache (whose directory keeps the cache's name), the `vmcache-*` directory whose
/// `state.json` names `id`. When neither exists, `<root>/<id>` (which the caller finds
/// missing).
pub fn sandbox_dir(root: &Path, id: &str) -> PathBuf {
    let own = root.join(id);
    if own.exists() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return own;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ID_PREFIX) {
            continue;
        }
        let Ok(dir) = kata_resource::safe_child(root, name) else {
            continue;
        };
        if let Ok(state) = kata_sandbox::persist::SandboxState::load(&dir) {
            if state.id == id {
                return dir;
            }
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_are_one_json_line_each() {
        let r = Request::Take {
            root: "/run/kata".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"take":{"root":"/run/kata"}}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let a: Answer = serde_json::from_str(r#"{"vm":{"dir_name":"vmcache-1"}}"#).unwrap();
        assert_eq!(
            a,
            Answer::Vm {
                dir_name: "vmcache-1".into()
            }
        );
        assert_eq!(serde_json::to_string(&Answer::Empty).unwrap(), r#""empty""#);
    }

    #[test]
    fn a_pod_a_cached_vm_does_not_fit_is_named() {
        let mut pod = PodNeeds {
            sandbox_id: "p".into(),
            ..Default::default()
        };
        assert_eq!(pod.misfit(), None);
        // A network namespace and a host cgroup are joined at the hand-over.
        pod.network_namespace = Some("/var/run/netns/p".into());
        pod.cgroups_path = Some("/kubepods/p".into());
        assert_eq!(pod.misfit(), None);
        pod.vfio_devices = true;
        assert!(pod.misfit().unwrap().contains("VFIO"));
        pod.vfio_devices = false;
        pod.config_annotations = vec!["io.katacontainers.config.hypervisor.default_memory".into()];
        assert!(pod.misfit().unwrap().contains("default_memory"));
    }

    #[tokio::test]
    async fn a_handed_over_directory_outside_the_root_or_not_the_caches_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pod = PodNeeds {
            sandbox_id: "p".into(),
            ..Default::default()
        };
        let e = take_over(tmp.path(), "../etc", &pod).await.unwrap_err();
        assert!(e.to_string().contains("not a `vmcache-`"), "{e}");
        let e = take_over(tmp.path(), "vmcache-../../etc", &pod)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("vmcache-../../etc"), "{e}");
    }

    #[tokio::test]
    async fn a_cache_that_does_not_answer_is_an_error_naming_the_endpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let endpoint = tmp.path().join("cache.sock");
        let e = ask(&endpoint, &Request::Status, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cache.sock"), "{e}");
    }

    #[test]
    fn a_taken_over_sandbox_is_found_by_the_id_in_its_state() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("vmcache-abc")).unwrap();
        std::fs::write(root.join("vmcache-abc/state.json"), r#"{"not":"a state"}"#).unwrap();
        // An unreadable state is not a match.
        assert_eq!(sandbox_dir(root, "pod"), root.join("pod"));
        std::fs::create_dir(root.join("pod")).unwrap();
        assert_eq!(sandbox_dir(root, "pod"), root.join("pod"));
    }
}
