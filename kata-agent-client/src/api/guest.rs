//! What the agent says about itself and its guest ([`AgentVersion`], [`GuestDetails`]), and
//! what it is asked to bring online ([`OnlineCpuMem`]) or take offline
//! ([`Agent::offline_cpus`](crate::Agent::offline_cpus), kata-rs's extension).

use std::collections::BTreeSet;

use crate::protocol::{agent as pb, health, kata_rs};

/// The agent's version (`Health.Version`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentVersion {
    /// The agent binary's version.
    pub agent_version: String,
    /// The version of the protocol it speaks (the protocol's `grpc_version`).
    pub protocol_version: String,
}

impl From<&health::VersionCheckResponse> for AgentVersion {
    fn from(v: &health::VersionCheckResponse) -> Self {
        AgentVersion {
            agent_version: v.agent_version.clone(),
            protocol_version: v.grpc_version.clone(),
        }
    }
}

/// The guest as the agent reports it (`GetGuestDetails`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuestDetails {
    /// The size of a memory block (the alignment of memory hot-plug), in bytes; 0 if unknown.
    pub mem_block_size_bytes: u64,
    /// Whether the guest has `/sys/devices/system/memory/probe` (memory is probed by hand
    /// after a hot-plug).
    pub supports_mem_hotplug_probe: bool,
    /// The agent itself.
    pub agent: AgentDetails,
}

/// What the agent is and can do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentDetails {
    /// Its version.
    pub version: String,
    /// Whether it runs as the guest's init (PID 1).
    pub init_daemon: bool,
    /// The device drivers it handles.
    pub device_handlers: Vec<String>,
    /// The storage drivers it handles ([`Storage::driver`](crate::Storage::driver) values).
    pub storage_handlers: Vec<String>,
    /// Whether it applies seccomp profiles.
    pub supports_seccomp: bool,
}

impl From<&pb::GuestDetailsResponse> for GuestDetails {
    fn from(r: &pb::GuestDetailsResponse) -> Self {
        GuestDetails {
            mem_block_size_bytes: r.mem_block_size_bytes,
            supports_mem_hotplug_probe: r.support_mem_hotplug_probe,
            agent: r
                .agent_details
                .as_ref()
                .map(|a| AgentDetails {
                    version: a.version.clone(),
                    init_daemon: a.init_daemon,
                    device_handlers: a.device_handlers.clone(),
                    storage_handlers: a.storage_handlers.clone(),
                    supports_seccomp: a.supports_seccomp,
                })
                .unwrap_or_default(),
        }
    }
}

/// What `OnlineCPUMem` brings online after a hot-plug.
///
/// ```
/// use kata_agent_client::OnlineCpuMem;
///
/// let after_cpu_hotplug = OnlineCpuMem::cpus(4);
/// let after_memory_hotplug = OnlineCpuMem::cpus_and_memory(4).wait(true);
/// # let _ = (after_cpu_hotplug, after_memory_hotplug);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnlineCpuMem {
    nb_cpus: u32,
    cpu_only: bool,
    wait: bool,
}

impl OnlineCpuMem {
    /// Online hot-plugged vCPUs until `nb_cpus` are online (0: skip the count check).
    pub fn cpus(nb_cpus: u32) -> Self {
        OnlineCpuMem {
            nb_cpus,
            cpu_only: true,
            wait: false,
        }
    }

    /// Online hot-plugged vCPUs (as [`OnlineCpuMem::cpus`]) and memory blocks.
    pub fn cpus_and_memory(nb_cpus: u32) -> Self {
        OnlineCpuMem {
            cpu_only: false,
            ..OnlineCpuMem::cpus(nb_cpus)
        }
    }

    /// Answer only once everything is online (default: answer at once).
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    pub(crate) fn to_grpc(self) -> pb::OnlineCPUMemRequest {
        pb::OnlineCPUMemRequest {
            wait: self.wait,
            nb_cpus: self.nb_cpus,
            cpu_only: self.cpu_only,
            ..Default::default()
        }
    }
}

/// The online CPUs an `OfflineCPUs` answer lists, as a set (the guest's list may repeat or
/// be out of order: it is the guest's word).
pub(crate) fn online_of(resp: &kata_rs::OfflineCPUsResponse) -> BTreeSet<u32> {
    resp.online.iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Code, Error};

    #[test]
    fn an_offline_answer_is_a_set_of_cpus() {
        let resp = kata_rs::OfflineCPUsResponse {
            online: vec![1, 0, 1],
            ..Default::default()
        };
        assert_eq!(online_of(&resp), BTreeSet::from([0, 1]));
        assert!(online_of(&kata_rs::OfflineCPUsResponse::new()).is_empty());
    }

    #[test]
    fn an_agent_without_the_extension_is_told_from_a_failure() {
        let rpc = |code, message: &str| Error::Rpc {
            method: "OfflineCPUs",
            code,
            message: message.into(),
        };
        // ttrpc-rust's answer for a service it does not have (Kata's agent).
        assert!(rpc(
            Code::INVALID_ARGUMENT,
            "kata_rs.GuestService service does not exist"
        )
        .is_unserved());
        // Go ttrpc's, and a method left to the generated default.
        assert!(rpc(Code::UNIMPLEMENTED, "service kata_rs.GuestService").is_unserved());
        assert!(rpc(
            Code::NOT_FOUND,
            "/kata_rs.GuestService/OfflineCPUs is not supported"
        )
        .is_unserved());
        // Failures of a served call are not.
        assert!(!rpc(Code::INVALID_ARGUMENT, "nb_cpus must be at least 1").is_unserved());
        assert!(!rpc(Code::NOT_FOUND, "container ghost not found").is_unserved());
        assert!(!rpc(Code::INTERNAL, "cannot write cpu1/online").is_unserved());
    }

    #[test]
    fn guest_details_carry_every_field() {
        let mut resp = pb::GuestDetailsResponse::new();
        resp.mem_block_size_bytes = 128 << 20;
        resp.support_mem_hotplug_probe = true;
        let mut agent = pb::AgentDetails::new();
        agent.version = "0.1.0".into();
        agent.init_daemon = true;
        agent.device_handlers = vec!["blk".into()];
        agent.storage_handlers = vec!["9p".into(), "virtio-fs".into()];
        agent.supports_seccomp = true;
        resp.agent_details = Some(agent).into();
        let details = GuestDetails::from(&resp);
        assert_eq!(details.mem_block_size_bytes, 128 << 20);
        assert!(details.supports_mem_hotplug_probe);
        assert_eq!(details.agent.version, "0.1.0");
        assert!(details.agent.init_daemon && details.agent.supports_seccomp);
        assert_eq!(details.agent.device_handlers, ["blk"]);
        assert_eq!(details.agent.storage_handlers, ["9p", "virtio-fs"]);

        let empty = GuestDetails::from(&pb::GuestDetailsResponse::new());
        assert_eq!(empty, GuestDetails::default());
    }

    #[test]
    fn version_names_the_protocol_version() {
        let mut v = health::VersionCheckResponse::new();
        v.agent_version = "a".into();
        v.grpc_version = "g".into();
        let v = AgentVersion::from(&v);
        assert_eq!((&v.agent_version[..], &v.protocol_version[..]), ("a", "g"));
    }

    #[test]
    fn online_request_says_what_to_online() {
        let cpus = OnlineCpuMem::cpus(4).to_grpc();
        assert_eq!((cpus.nb_cpus, cpus.cpu_only, cpus.wait), (4, true, false));
        let all = OnlineCpuMem::cpus_and_memory(2).wait(true).to_grpc();
        assert_eq!((all.nb_cpus, all.cpu_only, all.wait), (2, false, true));
    }
}
