//! A sandbox whose VM is a clone of a VM template (`enable_template`: QEMU's, see
//! kata-hypervisor's `qemu::template`, or the built-in VMM's snapshot restore, see its
//! `builtin::template`): its guest did not boot, it woke where the template was saved — with
//! the template's random pool and the template's clock. Before `CreateSandbox` the guest gets
//! fresh host entropy (`ReseedRandomDev`) and the host's time
//! (`SetGuestDateTime`), as Kata's runtime does for a VM from its factory; every clone is then
//! as different from its siblings as a fresh boot.

use kata_agent_client::Agent;
use kata_hypervisor::config::HypervisorConfig;

use crate::error::Result;
use crate::sandbox::handover::host_entropy;

/// Whether a sandbox with `hv` starts from a template (QEMU's clones and the built-in VMM's).
pub(super) fn is_clone(hv: &HypervisorConfig) -> bool {
    hv.factory.enable_template
}

/// Gives the clone's guest fresh entropy and the host's time (see the [module](self) docs).
pub(super) async fn freshen(agent: &Agent) -> Result<()> {
    let entropy = host_entropy()?;
    agent.reseed_random_dev(&entropy).await?;
    agent
        .set_guest_date_time(std::time::SystemTime::now())
        .await?;
    tracing::info!(
        bytes = entropy.len(),
        "VM from the template: the guest's random pool reseeded and its clock set"
    );
    Ok(())
}
