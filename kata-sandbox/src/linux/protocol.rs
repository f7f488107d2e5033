//! What the handler and its helper process say to each other over the control socket: one
//! JSON object a line, requests from the handler, replies and events from the helper.
//!
//! The helper reports `Created` (or `Failed`) once, after libcontainer has created the process;
//! `Exited` once, when the process it is the parent of exits; and answers each request with one
//! `Reply`, in order (the handler sends one request at a time).

use std::collections::BTreeMap;

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

/// A request from the handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Starts the container's first process (an init helper only).
    Start,
    /// Sends `signal` to the process.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// Freezes the container's cgroup.
    Pause,
    /// Thaws it.
    Resume,
    /// The container cgroup's figures.
    Stats,
    /// Applies new limits to the container's cgroup.
    Update {
        /// The new limits.
        resources: Box<LinuxResources>,
    },
    /// The pids in the container's cgroup.
    Pids,
    /// Kills the process (and, for an init helper, the container: its cgroup and state go)
    /// and ends the helper once done.
    Delete,
}

/// A message from the helper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Message {
    /// libcontainer created the process: its host pid.
    Created {
        /// The host pid.
        pid: u32,
    },
    /// libcontainer could not create it (nothing of it is left).
    Failed {
        /// libcontainer's error, with its causes.
        error: String,
    },
    /// The process exited.
    Exited {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
    },
    /// The answer to the last request.
    Reply {
        /// What was asked for, when it succeeded.
        #[serde(default)]
        ok: Option<Answer>,
        /// Why it failed.
        #[serde(default)]
        error: Option<String>,
    },
}

/// What a successful request answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Done,
    /// The cgroup's figures.
    Stats(Box<CgroupFigures>),
    /// The pids in the cgroup.
    Pids(Vec<u32>),
}

/// A container cgroup's figures, as libcgroups reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupFigures {
    /// CPU time used, in nanoseconds: total, user, kernel, per CPU.
    pub cpu_total_ns: u64,
    /// In user mode.
    pub cpu_user_ns: u64,
    /// In kernel mode.
    pub cpu_kernel_ns: u64,
    /// Per CPU.
    pub cpu_per_cpu_ns: Vec<u64>,
    /// CFS periods elapsed, throttled, time throttled (ns).
    pub cpu_throttling: [u64; 3],
    /// Memory: usage, max usage, fail count, limit.
    pub memory: [u64; 4],
    /// Memory and swap: the same four.
    pub memory_swap: [u64; 4],
    /// Kernel memory: the same four.
    pub memory_kernel: [u64; 4],
    /// Page cache.
    pub memory_cache: u64,
    /// Whether the hierarchy accounts children.
    pub memory_hierarchy: bool,
    /// The raw `memory.stat` counters.
    pub memory_stat: BTreeMap<String, u64>,
    /// Tasks now, and the limit (0: none).
    pub pids: [u64; 2],
    /// Hugetlb usage, max usage and fail count per page size.
    pub hugetlb: BTreeMap<String, [u64; 3]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_object_a_line_and_read_back() {
        let m = Message::Exited {
            code: None,
            signal: Some(9),
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Message>(&line).unwrap(), m);
        let r = serde_json::to_string(&Request::Signal { signal: 15 }).unwrap();
        assert_eq!(r, r#"{"op":"signal","signal":15}"#);
        let reply = Message::Reply {
            ok: Some(Answer::Pids(vec![1, 2])),
            error: None,
        };
        let back: Message = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        assert_eq!(back, reply);
    }
}
