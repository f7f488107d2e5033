//! Taking over a sandbox booted ahead of need under another id (the shim's VM cache):
//! [`Sandbox::take_over_as`].
//!
//! A VM cache boots sandboxes with ids of its own, detaches one on request and hands its
//! directory over. The taker re-keys it: `state.json` names the new id and hostname, the
//! sandbox is [restored](Sandbox::restore), and the guest is told its new identity — the
//! agent's sandbox is destroyed and created again with the new id, hostname and the shared
//! storages (so the pod's UTS namespace carries its own hostname), and its random pool is
//! reseeded with host entropy. The host directory keeps the name the cache gave it: the
//! VMM's command line and sockets name it.
//!
//! A cached VM boots without network, in host cgroups named after the cache's id. The pod's
//! own go with the re-keying: the VMM and its helpers move into the cgroups the pod's spec
//! names (or Kata's default path for the pod's id), and with a network namespace
//! ([`Rekey::network_namespace`]) each of its interfaces gets a tap, hot-plugged as a NIC,
//! and the guest is told its addresses, routes and neighbours before the agent's sandbox is
//! created again — what a fresh boot of the pod would have.

use std::path::{Path, PathBuf};

use super::Sandbox;
use crate::error::{Error, Result};
use crate::handler::RuntimeHandlerKind;
use crate::persist::SandboxState;

/// How many bytes of host entropy a handed-over guest gets (Kata's agent takes what it is
/// given; 512 bytes is the size of the kernel's input pool).
pub const RESEED_BYTES: usize = 512;

/// Who the sandbox becomes when it is taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rekey {
    /// The new sandbox id (the pod's).
    pub id: String,
    /// The guest's hostname; `None`: the first 12 characters of the id, as a fresh boot.
    pub hostname: Option<String>,
    /// Host entropy for the guest's random pool.
    pub entropy: Vec<u8>,
    /// The pod's network namespace (the spec's): the VM joins it.
    pub network_namespace: Option<PathBuf>,
    /// The pod's `linux.cgroupsPath` (the spec's); `None`: Kata's default path for the id.
    pub cgroups_path: Option<String>,
    /// What the sandbox joins, from its configuration ([`Sandbox::take_over_as`] fills it).
    pub(crate) join: Option<Join>,
}

/// The pod's host resources a handed-over VM joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Join {
    /// The pod's network (a namespace, or none).
    pub(crate) network: kata_resource::network::NetworkConfig,
    /// The pod's host cgroups.
    pub(crate) cgroups: kata_resource::cgroups::CgroupsConfig,
}

/// [`RESEED_BYTES`] of the host's `/dev/urandom`, for a guest that must not keep the random
/// state it woke with (a VM handed over from the cache, a clone of a template).
pub(crate) fn host_entropy() -> Result<Vec<u8>> {
    let mut entropy = vec![0u8; RESEED_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
        .map_err(|e| Error::io("reading /dev/urandom for the guest's reseed", e))?;
    Ok(entropy)
}

impl Rekey {
    /// A re-keying to `id`, with fresh entropy from the host's `/dev/urandom`.
    pub fn new(id: impl Into<String>) -> Result<Rekey> {
        Ok(Rekey {
            id: id.into(),
            hostname: None,
            entropy: host_entropy()?,
            network_namespace: None,
            cgroups_path: None,
            join: None,
        })
    }

    /// The pod's network namespace: the VM joins it (a NIC per interface, hot-plugged).
    pub fn network_namespace(mut self, path: impl Into<PathBuf>) -> Rekey {
        self.network_namespace = Some(path.into());
        self
    }

    /// The pod's `linux.cgroupsPath`: the VMM and its helpers move into those cgroups.
    pub fn cgroups_path(mut self, path: impl Into<String>) -> Rekey {
        self.cgroups_path = Some(path.into());
        self
    }

    /// The guest's hostname (the pod's, from the spec that starts the sandbox).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Rekey {
        self.hostname = Some(hostname.into());
        self
    }

    /// The hostname the guest gets.
    pub(crate) fn guest_hostname(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| self.id.chars().take(12).collect())
    }
}

impl Sandbox {
    /// Takes over the detached sandbox in `dir` as `rekey.id` (see the [module](self) docs).
    /// The sandbox must have no container and run in a VM.
    ///
    /// Errors: the id is not a valid sandbox id, the state is missing or unusable, the
    /// sandbox has containers or is not a VM ([`Error::InvalidArgument`]), the restore or the
    /// agent's re-keying fails. A sandbox restored whose re-keying failed is shut down (its
    /// directory removed): a half-renamed guest is never handed on.
    pub async fn take_over_as(dir: impl AsRef<Path>, rekey: Rekey) -> Result<Sandbox> {
        let dir = dir.as_ref();
        kata_resource::validate_container_id(&rekey.id)
            .map_err(|e| Error::invalid("sandbox id", e.to_string()))?;
        let mut state = SandboxState::load(dir)?;
        if !state.containers.is_empty() {
            return Err(Error::invalid(
                "sandbox",
                format!(
                    "{} has containers ({}): only an unused sandbox is handed over",
                    state.id,
                    state.containers.len()
                ),
            ));
        }
        if state.handler.kind != RuntimeHandlerKind::VirtContainer {
            return Err(Error::invalid(
                "sandbox",
                format!(
                    "{} is a {} sandbox: only a VM is handed over",
                    state.id, state.handler.kind
                ),
            ));
        }
        tracing::info!(from = %state.id, to = %rekey.id, dir = %dir.display(), "taking over a sandbox under a new id");
        state.id = rekey.id.clone();
        state.config.id = rekey.id.clone();
        state.config.hostname = Some(rekey.guest_hostname());
        if state.config.network_namespace.is_some() {
            return Err(Error::invalid(
                "sandbox",
                format!(
                    "{} joined a network namespace already: only a VM booted without one is \
                     handed over",
                    state.id
                ),
            ));
        }
        state.config.network_namespace = rekey.network_namespace.clone();
        state.config.cgroups_path = rekey.cgroups_path.clone();
        let mut rekey = rekey;
        rekey.join = Some(Join {
            network: state.config.network_config()?,
            cgroups: state.config.cgroups_config(),
        });
        state.store()?;
        let sandbox = Sandbox::restore(dir).await?;
        let rekeyed = sandbox.core.handler.rekey(&rekey).await;
        // The pod's network and cgroups, if joined, are the sandbox's to release now.
        sandbox.core.persist_or_warn();
        if let Err(e) = rekeyed {
            tracing::warn!(sandbox_id = %rekey.id, error = %e, "re-keying a handed-over sandbox failed: shutting it down");
            if let Err(se) = sandbox.shutdown().await {
                tracing::warn!(sandbox_id = %rekey.id, error = %se, "shutting down a sandbox whose re-keying failed");
            }
            return Err(e);
        }
        Ok(sandbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_id_or_a_directory_without_state_is_refused_touching_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vmcache-x");
        std::fs::create_dir(&dir).unwrap();
        let e = Sandbox::take_over_as(&dir, Rekey::new("../pod").unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("sandbox id"), "{e}");
        let e = Sandbox::take_over_as(&dir, Rekey::new("pod").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn the_guest_hostname_is_the_pods_or_the_ids_first_12_characters() {
        let r = Rekey::new("0123456789abcdef").unwrap();
        assert_eq!(r.entropy.len(), RESEED_BYTES);
        assert_eq!(r.guest_hostname(), "0123456789ab");
        assert_eq!(r.clone().hostname("web").guest_hostname(), "web");
        // Fresh entropy each time.
        assert_ne!(r.entropy, Rekey::new("x").unwrap().entropy);
    }
}
