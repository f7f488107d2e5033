//! The liveness watch of a `virt_container` sandbox: the VM must run and its agent must answer.
//!
//! [`VirtContainer::wait_dead`](super::VirtContainer) resolves on the first of: the VM's
//! process exits ([`Hypervisor::wait_exit`](kata_hypervisor::Hypervisor::wait_exit): QEMU
//! killed, a guest panic that powers off), or the agent fails [`HealthCheck::failures`]
//! `Health.Check` calls in a row, one every [`HealthCheck::interval`], each bounded by
//! `[agent.kata] health_check_request_timeout_ms` (a wedged agent, a guest kernel that hangs).
//! No check is made while the sandbox is paused (its vCPUs do not run, so its agent cannot
//! answer).
//!
//! Kata's runtime-rs checks every 30 s and stops the VM on the first failure; kata-rs checks
//! more often and asks for three failures in a row, so one slow answer under load does not
//! kill a sandbox, and a dead one is still found within `3 × (interval + timeout)`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kata_agent_client::config::AgentConfig;
use kata_agent_client::Agent;

/// How often the agent is checked.
pub(super) const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// How many failed checks in a row declare the agent dead.
pub(super) const HEALTH_CHECK_FAILURES: u32 = 3;

/// How the agent's health is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HealthCheck {
    /// The pause before each check.
    pub interval: Duration,
    /// The deadline of one check (`health_check_request_timeout_ms`).
    pub timeout: Duration,
    /// Failed checks in a row that declare the agent dead.
    pub failures: u32,
}

impl HealthCheck {
    /// The checks `[agent.kata]` asks for.
    pub(super) fn from_config(agent: &AgentConfig) -> Self {
        HealthCheck {
            interval: HEALTH_CHECK_INTERVAL,
            timeout: agent.health_check_timeout(),
            failures: HEALTH_CHECK_FAILURES,
        }
    }

    /// The longest a wedged agent goes unnoticed.
    pub(super) fn bound(&self) -> Duration {
        (self.interval + self.timeout) * self.failures
    }

    /// Checks `agent` until it fails `failures` checks in a row (skipping checks while
    /// `paused`); returns why it is declared dead.
    pub(super) async fn watch(
        &self,
        agent: &Agent,
        paused: &AtomicBool,
        sandbox_id: &str,
    ) -> String {
        let agent = agent.with_request_timeout(self.timeout);
        let mut failed = 0u32;
        loop {
            tokio::time::sleep(self.interval).await;
            if paused.load(Ordering::SeqCst) {
                failed = 0;
                continue;
            }
            // The client's own deadline bounds the call; this one bounds a client that hangs.
            let backstop = self.timeout + Duration::from_secs(1);
            let error = match tokio::time::timeout(backstop, agent.check()).await {
                Ok(Ok(())) => {
                    failed = 0;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {backstop:?}"),
            };
            if paused.load(Ordering::SeqCst) {
                // Paused while the check ran: it proves nothing.
                continue;
            }
            failed += 1;
            tracing::warn!(sandbox_id, failed, of = self.failures, %error, "the agent failed a health check");
            if failed >= self.failures {
                return format!(
                    "the agent failed {failed} health checks in a row (one every {:?}, each bounded by health_check_request_timeout_ms = {} ms): {error}",
                    self.interval,
                    self.timeout.as_millis()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_follows_the_agent_section_and_is_bounded() {
        let agent = AgentConfig {
            health_check_request_timeout_ms: 1_000,
            ..AgentConfig::default()
        };
        let h = HealthCheck::from_config(&agent);
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!(
            h.bound(),
            (HEALTH_CHECK_INTERVAL + Duration::from_secs(1)) * 3
        );
        // Kata's default deadline (90 s) still gives a finite bound.
        let h = HealthCheck::from_config(&AgentConfig::default());
        assert_eq!(h.timeout, Duration::from_secs(90));
        assert!(h.bound() < Duration::from_secs(300));
    }
}
