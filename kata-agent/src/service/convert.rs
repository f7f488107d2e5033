//! Protocol messages ⇄ the agent's own types: storages, specs, processes, statistics, and the
//! network's interfaces, routes and neighbours (`kata_agent_client`'s plain types).

use kata_agent_client::api::network::wire;
use kata_agent_client::api::{ArpNeighbor, Interface, Route};
use kata_agent_client::protocol::{agent, oci as grpc, types};
use kata_agent_client::spec::from_grpc;
use protobuf::MessageField;

use crate::error::{AgentError, Result};
use crate::runtime::cgroup::CgroupStats;
use crate::storage::StorageSpec;

/// The protocol's `Storage` as a [`StorageSpec`].
pub fn storage(s: &agent::Storage) -> StorageSpec {
    StorageSpec {
        driver: s.driver.clone(),
        source: s.source.clone(),
        fstype: s.fstype.clone(),
        options: s.options.clone(),
        driver_options: s.driver_options.clone(),
        mount_point: s.mount_point.clone(),
        // The change policy does not matter for the volumes it applies to (their root only).
        fs_group: s.fs_group.as_ref().map(|g| g.group_id),
        shared: s.shared,
    }
}

/// A CopyFile request, as the agent's own type.
pub fn copy_request(req: agent::CopyFileRequest) -> crate::copy_file::CopyRequest {
    crate::copy_file::CopyRequest {
        path: req.path,
        file_size: req.file_size,
        file_mode: req.file_mode,
        dir_mode: req.dir_mode,
        uid: req.uid,
        gid: req.gid,
        offset: req.offset,
        data: req.data,
    }
}

/// GetVolumeStats's answer, as Kata's agent gives it: bytes, then inodes; the condition "OK".
pub fn volume_stats(st: &crate::volume_stats::VolumeStats) -> agent::VolumeStatsResponse {
    use agent::volume_usage::Unit;
    let usage = |total: u64, available: u64, used: u64, unit: Unit| agent::VolumeUsage {
        total,
        available,
        used,
        unit: unit.into(),
        ..Default::default()
    };
    let mut condition = agent::VolumeCondition::new();
    condition.abnormal = false;
    condition.message = "OK".to_string();
    agent::VolumeStatsResponse {
        usage: vec![
            usage(
                st.bytes_total,
                st.bytes_available,
                st.bytes_used(),
                Unit::BYTES,
            ),
            usage(
                st.inodes_total,
                st.inodes_available,
                st.inodes_used(),
                Unit::INODES,
            ),
        ],
        volume_condition: Some(condition).into(),
        ..Default::default()
    }
}

/// CreateSandbox's kernel modules, as the agent's own type.
pub fn kernel_modules(
    req: &agent::CreateSandboxRequest,
) -> Vec<crate::kernel_modules::KernelModule> {
    req.kernel_modules
        .iter()
        .map(|m| crate::kernel_modules::KernelModule {
            name: m.name.clone(),
            parameters: m.parameters.clone(),
        })
        .collect()
}

/// A network value the client crate refused, as the agent's `INVALID_ARGUMENT`.
fn network_error(e: kata_agent_client::Error) -> AgentError {
    match e {
        kata_agent_client::Error::InvalidNetwork { field, reason } => {
            AgentError::invalid(field, reason)
        }
        other => AgentError::invalid("network", other.to_string()),
    }
}

/// The interface of an UpdateInterface request.
pub fn interface(req: &agent::UpdateInterfaceRequest) -> Result<Interface> {
    let wire_interface = req
        .interface
        .as_ref()
        .ok_or_else(|| AgentError::invalid("interface", "is missing"))?;
    wire::interface_from_grpc(wire_interface, "interface").map_err(network_error)
}

/// An interface for an answer.
pub fn interface_to_grpc(i: &Interface) -> types::Interface {
    wire::interface_to_grpc(i)
}

/// The routes of an UpdateRoutes request (a request without its `routes` message is
/// refused: an empty list is how the host asks for no routes).
pub fn routes(req: &agent::UpdateRoutesRequest) -> Result<Vec<Route>> {
    let list = req
        .routes
        .as_ref()
        .ok_or_else(|| AgentError::invalid("routes", "is missing"))?;
    list.Routes
        .iter()
        .enumerate()
        .map(|(i, r)| wire::route_from_grpc(r, &format!("routes[{i}]")))
        .collect::<std::result::Result<_, _>>()
        .map_err(network_error)
}

/// Routes for an answer.
pub fn routes_to_grpc(routes: &[Route]) -> agent::Routes {
    agent::Routes {
        Routes: routes.iter().map(wire::route_to_grpc).collect(),
        ..Default::default()
    }
}

/// The neighbours of an AddARPNeighbors request.
pub fn neighbors(req: &agent::AddARPNeighborsRequest) -> Result<Vec<ArpNeighbor>> {
    let list = req
        .neighbors
        .as_ref()
        .ok_or_else(|| AgentError::invalid("neighbors", "is missing"))?;
    list.ARPNeighbors
        .iter()
        .enumerate()
        .map(|(i, n)| wire::neighbor_from_grpc(n, &format!("neighbors[{i}]")))
        .collect::<std::result::Result<_, _>>()
        .map_err(network_error)
}

/// Applies a `StringUser` (a user named by strings) to a process: a numeric uid/gid is used as
/// is, a name becomes `user.username`, resolved later against the container's `/etc/passwd`.
fn apply_string_user(
    process: &mut oci_spec::runtime::Process,
    su: &agent::StringUser,
) -> Result<()> {
    if su.uid.is_empty() {
        return Ok(());
    }
    let mut user = process.user().clone();
    match su.uid.parse::<u32>() {
        Ok(uid) => user.set_uid(uid),
        Err(_) => user.set_username(Some(su.uid.clone())),
    };
    if !su.gid.is_empty() {
        let gid = su.gid.parse::<u32>().map_err(|_| {
            AgentError::invalid("string_user.gid", format!("{:?} is not a number", su.gid))
        })?;
        user.set_gid(gid);
    }
    if !su.additionalGids.is_empty() {
        let gids = su
            .additionalGids
            .iter()
            .enumerate()
            .map(|(i, g)| {
                g.parse::<u32>().map_err(|_| {
                    AgentError::invalid(
                        format!("string_user.additionalGids[{i}]"),
                        format!("{g:?} is not a number"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        user.set_additional_gids(Some(gids));
    }
    process.set_user(user);
    Ok(())
}

/// The OCI spec of a CreateContainer request.
pub fn container_spec(req: &agent::CreateContainerRequest) -> Result<oci_spec::runtime::Spec> {
    let wire = req
        .OCI
        .as_ref()
        .ok_or_else(|| AgentError::invalid("OCI", "is missing"))?;
    let mut spec = from_grpc(wire).map_err(|e| AgentError::invalid("OCI", e.to_string()))?;
    if let (Some(su), Some(p)) = (req.string_user.as_ref(), spec.process_mut().as_mut()) {
        apply_string_user(p, su)?;
    }
    if let (Some(l), Some(linux)) = (wire.Linux.as_ref(), spec.linux_mut().as_mut()) {
        linux.set_seccomp(l.Seccomp.as_ref().map(seccomp).transpose()?.flatten());
    }
    Ok(spec)
}

/// Parses an OCI enum from its wire string, naming the field when it is not one.
fn parse_enum<T: std::str::FromStr>(field: &str, value: &str, what: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| AgentError::invalid(field, format!("{value:?} is not a seccomp {what}")))
}

/// The protocol's `LinuxSeccomp` as OCI's (`None`: no default action and no rules, which runc
/// reads as "no seccomp"). Unknown action, operator, architecture or flag names are refused,
/// naming the field.
pub fn seccomp(s: &grpc::LinuxSeccomp) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    use oci_spec::runtime::{
        LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
        LinuxSyscall,
    };
    const F: &str = "linux.seccomp";
    if s.DefaultAction.is_empty() && s.Syscalls.is_empty() {
        return Ok(None);
    }
    if s.DefaultAction.is_empty() {
        return Err(AgentError::invalid(
            format!("{F}.defaultAction"),
            "is missing (the profile has syscall rules)",
        ));
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(parse_enum(
        &format!("{F}.defaultAction"),
        &s.DefaultAction,
        "action",
    )?);
    let archs = s
        .Architectures
        .iter()
        .enumerate()
        .map(|(i, a)| parse_enum(&format!("{F}.architectures[{i}]"), a, "architecture"))
        .collect::<Result<Vec<_>>>()?;
    out.set_architectures((!archs.is_empty()).then_some(archs));
    let flags = s
        .Flags
        .iter()
        .enumerate()
        .map(|(i, f)| parse_enum(&format!("{F}.flags[{i}]"), f, "filter flag"))
        .collect::<Result<Vec<_>>>()?;
    out.set_flags((!flags.is_empty()).then_some(flags));
    let mut syscalls = Vec::with_capacity(s.Syscalls.len());
    for (i, sc) in s.Syscalls.iter().enumerate() {
        let field = format!("{F}.syscalls[{i}]");
        let mut rule = LinuxSyscall::default();
        rule.set_names(sc.Names.clone());
        let action: LinuxSeccompAction =
            parse_enum(&format!("{field}.action"), &sc.Action, "action")?;
        rule.set_action(action);
        rule.set_errno_ret(match sc.ErrnoRet.as_ref() {
            Some(grpc::linux_syscall::ErrnoRet::Errnoret(n)) => Some(*n),
            _ => None,
        });
        let mut args = Vec::with_capacity(sc.Args.len());
        for (j, a) in sc.Args.iter().enumerate() {
            let op: LinuxSeccompOperator =
                parse_enum(&format!("{field}.args[{j}].op"), &a.Op, "operator")?;
            let mut arg = LinuxSeccompArgBuilder::default()
                .index(usize::try_from(a.Index).unwrap_or(usize::MAX))
                .value(a.Value)
                .op(op);
            if a.ValueTwo != 0 {
                arg = arg.value_two(a.ValueTwo);
            }
            args.push(
                arg.build().map_err(|e| {
                    AgentError::invalid(format!("{field}.args[{j}]"), e.to_string())
                })?,
            );
        }
        rule.set_args((!args.is_empty()).then_some(args));
        syscalls.push(rule);
    }
    out.set_syscalls((!syscalls.is_empty()).then_some(syscalls));
    Ok(Some(out))
}

/// The OCI process of an ExecProcess request.
pub fn exec_process(req: &agent::ExecProcessRequest) -> Result<oci_spec::runtime::Process> {
    let wire = req
        .process
        .as_ref()
        .ok_or_else(|| AgentError::invalid("process", "is missing"))?;
    // The conversion is defined on whole specs: carry the process in one.
    let mut holder = grpc::Spec::new();
    holder.Process = MessageField::some(wire.clone());
    let spec = from_grpc(&holder).map_err(|e| AgentError::invalid("process", e.to_string()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| AgentError::invalid("process", "is missing"))?;
    if let Some(su) = req.string_user.as_ref() {
        apply_string_user(&mut process, su)?;
    }
    Ok(process)
}

/// Cgroup statistics as the protocol's `StatsContainerResponse`.
pub fn stats(s: &CgroupStats) -> agent::StatsContainerResponse {
    let mut cpu_usage = agent::CpuUsage::new();
    cpu_usage.total_usage = s.cpu_total_ns;
    cpu_usage.percpu_usage = s.cpu_percpu_ns.clone();
    cpu_usage.usage_in_usermode = s.cpu_user_ns;
    cpu_usage.usage_in_kernelmode = s.cpu_system_ns;
    let mut throttling = agent::ThrottlingData::new();
    throttling.throttled_periods = s.cpu_throttling.0;
    throttling.periods = s.cpu_throttling.1;
    throttling.throttled_time = s.cpu_throttling.2;
    let mut cpu = agent::CpuStats::new();
    cpu.cpu_usage = MessageField::some(cpu_usage);
    cpu.throttling_data = MessageField::some(throttling);

    let mut usage = agent::MemoryData::new();
    usage.usage = s.memory_usage;
    usage.max_usage = s.memory_max_usage;
    usage.limit = s.memory_limit;
    usage.failcnt = s.memory_failcnt;
    let mut memory = agent::MemoryStats::new();
    memory.cache = s
        .memory_stat
        .get("cache")
        .or_else(|| s.memory_stat.get("file"))
        .copied()
        .unwrap_or(0);
    memory.usage = MessageField::some(usage);
    memory.use_hierarchy = true;
    memory.stats = s.memory_stat.clone().into_iter().collect();

    let mut pids = agent::PidsStats::new();
    pids.current = s.pids_current;
    pids.limit = s.pids_limit;

    let mut cg = agent::CgroupStats::new();
    cg.cpu_stats = MessageField::some(cpu);
    cg.memory_stats = MessageField::some(memory);
    cg.pids_stats = MessageField::some(pids);
    let mut resp = agent::StatsContainerResponse::new();
    resp.cgroup_stats = MessageField::some(cg);
    resp
}

/// ListProcesses output: `json` is a JSON array of pids (as Kata's agent answers); `table` is a
/// `ps`-like table of pid and command line read from `/proc`.
pub fn process_list(pids: &[i32], format: &str) -> Result<Vec<u8>> {
    match format {
        "json" => serde_json::to_vec(pids)
            .map_err(|e| AgentError::io("encode pids", std::io::Error::other(e))),
        "" | "table" => {
            let mut out = String::from("  PID CMD\n");
            for pid in pids {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| {
                        b.split(|c| *c == 0)
                            .filter(|s| !s.is_empty())
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                out.push_str(&format!("{pid:>5} {cmd}\n"));
            }
            Ok(out.into_bytes())
        }
        other => Err(AgentError::invalid(
            "format",
            format!("{other:?} is neither \"table\" nor \"json\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_oci_is_invalid() {
        let req = agent::CreateContainerRequest::new();
        let err = container_spec(&req).unwrap_err();
        assert_eq!(err.to_string(), "OCI is missing");
    }

    #[test]
    fn string_user_names_and_numbers() {
        let mut req = agent::CreateContainerRequest::new();
        let mut spec = grpc::Spec::new();
        let mut p = grpc::Process::new();
        p.Args = vec!["true".into()];
        spec.Process = MessageField::some(p);
        req.OCI = MessageField::some(spec);
        let mut su = agent::StringUser::new();
        su.uid = "nobody".into();
        su.gid = "7".into();
        req.string_user = MessageField::some(su.clone());
        let s = container_spec(&req).unwrap();
        let u = s.process().as_ref().unwrap().user();
        assert_eq!(u.username().as_deref(), Some("nobody"));
        assert_eq!(u.gid(), 7);

        su.uid = "1000".into();
        su.gid = "staff".into();
        req.string_user = MessageField::some(su);
        let err = container_spec(&req).unwrap_err();
        assert!(err.to_string().starts_with("string_user.gid"), "{err}");
    }

    #[test]
    fn seccomp_from_the_wire() {
        let field = |e: AgentError| match e {
            AgentError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        };
        let mut s = grpc::LinuxSeccomp::new();
        assert_eq!(seccomp(&s).unwrap(), None, "empty profile: no seccomp");
        let mut rule = grpc::LinuxSyscall::new();
        rule.Names = vec!["mkdir".into()];
        rule.Action = "SCMP_ACT_ERRNO".into();
        rule.ErrnoRet = Some(grpc::linux_syscall::ErrnoRet::Errnoret(38));
        let mut arg = grpc::LinuxSeccompArg::new();
        arg.Index = 1;
        arg.Value = 0o700;
        arg.ValueTwo = 0o700;
        arg.Op = "SCMP_CMP_MASKED_EQ".into();
        rule.Args = vec![arg];
        s.Syscalls = vec![rule];
        assert_eq!(
            field(seccomp(&s).unwrap_err()),
            "linux.seccomp.defaultAction"
        );
        s.DefaultAction = "SCMP_ACT_ALLOW".into();
        s.Architectures = vec!["SCMP_ARCH_X86_64".into()];
        s.Flags = vec!["SECCOMP_FILTER_FLAG_LOG".into()];
        let p = seccomp(&s).unwrap().unwrap();
        let r = &p.syscalls().as_ref().unwrap()[0];
        assert_eq!(r.errno_ret(), Some(38));
        assert_eq!(r.args().as_ref().unwrap()[0].value_two(), Some(0o700));

        s.Flags = vec!["SECCOMP_FILTER_FLAG_BOGUS".into()];
        assert_eq!(field(seccomp(&s).unwrap_err()), "linux.seccomp.flags[0]");
        s.Flags.clear();
        s.Architectures = vec!["SCMP_ARCH_PDP11".into()];
        assert_eq!(
            field(seccomp(&s).unwrap_err()),
            "linux.seccomp.architectures[0]"
        );
        s.Architectures.clear();
        s.Syscalls[0].Args[0].Op = "SCMP_CMP_ROUGHLY".into();
        assert_eq!(
            field(seccomp(&s).unwrap_err()),
            "linux.seccomp.syscalls[0].args[0].op"
        );
    }

    #[test]
    fn exec_process_converts() {
        let mut req = agent::ExecProcessRequest::new();
        assert_eq!(
            exec_process(&req).unwrap_err().to_string(),
            "process is missing"
        );
        let mut p = grpc::Process::new();
        p.Args = vec!["sh".into(), "-c".into(), "true".into()];
        p.Cwd = "/".into();
        req.process = MessageField::some(p);
        let p = exec_process(&req).unwrap();
        assert_eq!(p.args().as_ref().unwrap().len(), 3);
    }

    #[test]
    fn stats_are_mapped() {
        let s = CgroupStats {
            memory_usage: 10,
            cpu_total_ns: 20,
            pids_current: 3,
            ..Default::default()
        };
        let r = stats(&s);
        assert_eq!(r.cgroup_stats.memory_stats.usage.usage, 10);
        assert_eq!(r.cgroup_stats.cpu_stats.cpu_usage.total_usage, 20);
        assert_eq!(r.cgroup_stats.pids_stats.current, 3);
    }

    #[test]
    fn process_list_formats() {
        assert_eq!(process_list(&[1, 22], "json").unwrap(), b"[1,22]");
        let table = String::from_utf8(process_list(&[std::process::id() as i32], "table").unwrap())
            .unwrap();
        assert!(table.starts_with("  PID CMD\n"));
        assert_eq!(table.lines().count(), 2);
        assert_eq!(
            process_list(&[], "yaml").unwrap_err().code(),
            ttrpc::Code::INVALID_ARGUMENT
        );
    }
}
