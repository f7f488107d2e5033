//! [`CgroupsState`]: what persist records of the sandbox's host cgroups, enough to adopt them
//! and to remove them after a crash.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::hierarchy::CgroupVersion;

/// The sandbox's host cgroups, as persist records them. The default (no root) is a sandbox
/// without host cgroups, and what `state.json` files written before the slot was filled read
/// as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CgroupsState {
    /// Where the cgroup filesystems are mounted (`/sys/fs/cgroup`); `None`: no host cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// The version found there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<CgroupVersion>,
    /// The sandbox cgroup, relative to each hierarchy (`default/<id>`, or `<base>/sandbox` on
    /// v2).
    #[serde(default)]
    pub sandbox: PathBuf,
    /// The overhead cgroup (`sandbox_cgroup_only = false`), relative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<PathBuf>,
    /// `[runtime] sandbox_cgroup_only` when it was set up.
    #[serde(default)]
    pub sandbox_cgroup_only: bool,
    /// The directories this owner made (absolute, parents first): the ancestors among them are
    /// removed when empty.
    #[serde(default)]
    pub made: Vec<PathBuf>,
    /// The VMM's pid once it was moved in (its vCPU threads are moved again on updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_pid: Option<u32>,
    /// Each container's cpuset, by container id: their union constrains the sandbox cgroup.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerCpuset>,
}

/// A container's `linux.resources.cpu.cpus` and `.mems`, in the kernel's form (`0-3,6`;
/// empty: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCpuset {
    /// The CPUs.
    #[serde(default)]
    pub cpus: String,
    /// The memory nodes.
    #[serde(default)]
    pub mems: String,
}
