//! The guest's side of a VM cache hand-over ([`crate::sandbox::handover`]): the VMM moves
//! into the pod's host cgroups, the VM joins the pod's network, the agent's sandbox is
//! created again under the new id and hostname, and the random pool reseeded.

use kata_agent_client::SandboxSetup;
use tracing::Instrument as _;

use super::{agent_storage, network, VirtContainer};
use crate::error::Result;
use crate::sandbox::handover::Rekey;

/// Re-keys the guest of `vc` (which has no container): `DestroySandbox` (the agent forgets
/// the cache's id and releases the shared storages); the VMM and its helpers into the pod's
/// host cgroups; the pod's network joined (a NIC hot-plugged per interface, the guest told
/// of each, then the routes and neighbours: [`network::join`]); `CreateSandbox` with the new
/// id, its hostname and the same storages (a fresh pod UTS/IPC namespace), then
/// `ReseedRandomDev`.
pub(super) async fn rekey(vc: &VirtContainer, rekey: &Rekey) -> Result<()> {
    let span = tracing::info_span!("sandbox.rekey", sandbox_id = %rekey.id);
    async {
        vc.agent.destroy_sandbox().await?;
        if let Some(join) = &rekey.join {
            let pids = vc.vm.pids();
            let cgroups = join.cgroups.clone();
            network::blocking_resources(vc.resources.clone(), move |r| {
                Ok(r.move_cgroups(&cgroups, &pids)?)
            })
            .await?;
            network::join(&vc.vm, &vc.agent, &vc.resources, &join.network).await?;
        }
        let storages = vc
            .resources
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.sandbox_storages(&vc.caps))
            .unwrap_or_default();
        let setup = SandboxSetup::new(&rekey.id)
            .hostname(rekey.guest_hostname())
            .storages(storages.into_iter().map(agent_storage));
        vc.agent.create_sandbox(&setup).await?;
        vc.agent.reseed_random_dev(&rekey.entropy).await?;
        tracing::info!(
            bytes = rekey.entropy.len(),
            hostname = %rekey.guest_hostname(),
            "sandbox re-keyed: the guest's random pool reseeded"
        );
        Ok(())
    }
    .instrument(span)
    .await
}
