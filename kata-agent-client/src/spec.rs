//! Conversion between `oci_spec::runtime::Spec` and the protocol's `grpc.Spec`.
//!
//! The host builds containers with `oci_spec` types; the agent receives them as
//! [`protocol::oci::Spec`](crate::protocol::oci::Spec). [`to_grpc`] and
//! [`from_grpc`] convert between the two.
//!
//! # What is carried
//! version, hostname, annotations; process (terminal, console size, user with
//! uid/gid/additional gids/username/umask, args, env, cwd, capabilities,
//! rlimits, no_new_privileges, apparmor profile, oom_score_adj, SELinux label);
//! root (path, readonly); mounts; hooks (prestart, poststart, poststop); linux
//! (uid/gid mappings, sysctl, resources — device rules, memory, cpu, pids,
//! block I/O, hugepage limits, network —, cgroups path, namespaces, devices,
//! seccomp, rootfs propagation, masked and readonly paths, mount label).
//!
//! Seccomp goes one way: [`to_grpc`] carries it, and the guest agent converts it
//! back itself (with the refusals of what it cannot enforce); [`from_grpc`]
//! leaves it out. Seccomp fields the protocol cannot carry (`defaultErrnoRet`,
//! `listenerPath`, `listenerMetadata`) are refused naming the field, never
//! dropped: a profile reaches the guest whole or not at all.
//!
//! Not carried (the protocol has no field for them, or kata-rs does not use
//! them yet): domainname, the OCI 1.1 hooks (createRuntime, createContainer,
//! startContainer), Intel RDT, rdma, unified, memory policy,
//! personality, time offsets, the process scheduler, I/O priority and CPU
//! affinity, mount id mappings.
//!
//! # Normal form
//! protobuf has no "unset" for scalars and lists, so the conversion uses one
//! normal form: an empty list or string and a zero limit on the wire are
//! `None` in `oci_spec` (and `None` is sent as empty or zero). A spec in that
//! form (no `Some(vec![])`, no `Some(0)` limits) survives a round trip
//! unchanged. Wildcard device-rule major/minor numbers (`None`) travel as
//! `-1`, as in cgroup v1 rules. A memory swappiness of 0 cannot be told from
//! unset and becomes `None`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::runtime as oci;
use protobuf::MessageField;

use crate::error::{Error, Result};
use crate::protocol::oci as grpc;

/// Converts an OCI spec to the protocol's `grpc.Spec`.
///
/// Fails only for values the wire type cannot hold (an out-of-range number)
/// or paths that are not UTF-8; the error names the field.
///
/// ```
/// use kata_agent_client::spec;
///
/// let oci = oci_spec::runtime::Spec::default();
/// let wire = spec::to_grpc(&oci)?;
/// assert_eq!(wire.Process.Args, vec!["sh".to_string()]);
/// # Ok::<(), kata_agent_client::Error>(())
/// ```
pub fn to_grpc(spec: &oci::Spec) -> Result<grpc::Spec> {
    let mut out = grpc::Spec::new();
    out.Version = spec.version().clone();
    if let Some(process) = spec.process() {
        out.Process = MessageField::some(process_to_grpc(process)?);
    }
    if let Some(root) = spec.root() {
        let mut r = grpc::Root::new();
        r.Path = path_str("root.path", root.path())?;
        r.Readonly = root.readonly().unwrap_or(false);
        out.Root = MessageField::some(r);
    }
    out.Hostname = spec.hostname().clone().unwrap_or_default();
    for (i, m) in opt_slice(spec.mounts()).iter().enumerate() {
        out.Mounts.push(mount_to_grpc(i, m)?);
    }
    if let Some(hooks) = spec.hooks() {
        out.Hooks = MessageField::some(hooks_to_grpc(hooks)?);
    }
    out.Annotations = spec.annotations().clone().unwrap_or_default();
    if let Some(linux) = spec.linux() {
        out.Linux = MessageField::some(linux_to_grpc(linux)?);
    }
    Ok(out)
}

/// Converts the protocol's `grpc.Spec` back to an OCI spec.
///
/// Fails when a value has no OCI meaning (an unknown capability, rlimit,
/// namespace or device type, an out-of-range number); the error names the
/// field, e.g. `process.rlimits[1].type`.
///
/// ```
/// use kata_agent_client::spec;
///
/// let mut wire = kata_agent_client::protocol::oci::Spec::new();
/// wire.Hostname = "web".into();
/// let oci = spec::from_grpc(&wire)?;
/// assert_eq!(oci.hostname().as_deref(), Some("web"));
/// # Ok::<(), kata_agent_client::Error>(())
/// ```
pub fn from_grpc(spec: &grpc::Spec) -> Result<oci::Spec> {
    let mut out = oci::Spec::default();
    out.set_version(spec.Version.clone());
    out.set_process(spec.Process.as_ref().map(process_from_grpc).transpose()?);
    out.set_root(spec.Root.as_ref().map(|r| {
        let mut root = oci::Root::default();
        root.set_path(PathBuf::from(&r.Path));
        root.set_readonly(Some(r.Readonly));
        root
    }));
    out.set_hostname(non_empty(&spec.Hostname));
    out.set_domainname(None);
    out.set_mounts(opt_vec(
        spec.Mounts.iter().map(mount_from_grpc).collect::<Vec<_>>(),
    ));
    out.set_hooks(spec.Hooks.as_ref().map(hooks_from_grpc));
    out.set_annotations(if spec.Annotations.is_empty() {
        None
    } else {
        Some(spec.Annotations.clone())
    });
    out.set_linux(spec.Linux.as_ref().map(linux_from_grpc).transpose()?);
    out.set_solaris(None);
    out.set_windows(None);
    out.set_vm(None);
    out.set_zos(None);
    out.set_uid_mappings(None);
    out.set_gid_mappings(None);
    Ok(out)
}

// --- helpers ---

fn opt_slice<T>(v: &Option<Vec<T>>) -> &[T] {
    v.as_deref().unwrap_or(&[])
}

fn opt_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

fn non_empty(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

fn non_zero<T: Default + PartialEq>(v: T) -> Option<T> {
    if v == T::default() {
        None
    } else {
        Some(v)
    }
}

/// Maps an `oci_spec` builder result.
fn built<T>(
    field: impl Into<String>,
    r: std::result::Result<T, oci_spec::OciSpecError>,
) -> Result<T> {
    r.map_err(|e| Error::spec(field, e.to_string()))
}

fn path_str(field: &str, path: &std::path::Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::spec(field, format!("path {path:?} is not UTF-8")))
}

fn strings(v: &Option<Vec<String>>) -> Vec<String> {
    v.clone().unwrap_or_default()
}

fn opt_strings(v: &[String]) -> Option<Vec<String>> {
    opt_vec(v.to_vec())
}

// --- process ---

pub(crate) fn process_to_grpc(p: &oci::Process) -> Result<grpc::Process> {
    let mut out = grpc::Process::new();
    out.Terminal = p.terminal().unwrap_or(false);
    if let Some(size) = p.console_size() {
        let mut b = grpc::Box::new();
        b.Height = u32::try_from(size.height())
            .map_err(|_| Error::spec("process.consoleSize.height", "does not fit in 32 bits"))?;
        b.Width = u32::try_from(size.width())
            .map_err(|_| Error::spec("process.consoleSize.width", "does not fit in 32 bits"))?;
        out.ConsoleSize = MessageField::some(b);
    }
    let user = p.user();
    let mut u = grpc::User::new();
    u.UID = user.uid();
    u.GID = user.gid();
    u.AdditionalGids = user.additional_gids().clone().unwrap_or_default();
    u.Username = user.username().clone().unwrap_or_default();
    u.Umask = user.umask();
    out.User = MessageField::some(u);
    out.Args = strings(p.args());
    out.Env = strings(p.env());
    out.Cwd = path_str("process.cwd", p.cwd())?;
    if let Some(caps) = p.capabilities() {
        let mut c = grpc::LinuxCapabilities::new();
        c.Bounding = caps_to_grpc(caps.bounding());
        c.Effective = caps_to_grpc(caps.effective());
        c.Inheritable = caps_to_grpc(caps.inheritable());
        c.Permitted = caps_to_grpc(caps.permitted());
        c.Ambient = caps_to_grpc(caps.ambient());
        out.Capabilities = MessageField::some(c);
    }
    for rl in opt_slice(p.rlimits()) {
        let mut r = grpc::POSIXRlimit::new();
        r.Type = rl.typ().to_string();
        r.Hard = rl.hard();
        r.Soft = rl.soft();
        out.Rlimits.push(r);
    }
    out.NoNewPrivileges = p.no_new_privileges().unwrap_or(false);
    out.ApparmorProfile = p.apparmor_profile().clone().unwrap_or_default();
    out.OOMScoreAdj = p.oom_score_adj().map(i64::from).unwrap_or(0);
    out.SelinuxLabel = p.selinux_label().clone().unwrap_or_default();
    Ok(out)
}

pub(crate) fn process_from_grpc(p: &grpc::Process) -> Result<oci::Process> {
    let mut out = oci::Process::default();
    out.set_terminal(Some(p.Terminal));
    out.set_console_size(
        p.ConsoleSize
            .as_ref()
            .map(|b| {
                built(
                    "process.consoleSize",
                    oci::BoxBuilder::default()
                        .height(u64::from(b.Height))
                        .width(u64::from(b.Width))
                        .build(),
                )
            })
            .transpose()?,
    );
    let mut user = oci::User::default();
    if let Some(u) = p.User.as_ref() {
        user.set_uid(u.UID);
        user.set_gid(u.GID);
        user.set_additional_gids(opt_vec(u.AdditionalGids.clone()));
        user.set_username(non_empty(&u.Username));
        user.set_umask(u.Umask);
    }
    out.set_user(user);
    out.set_args(opt_strings(&p.Args));
    out.set_command_line(None);
    out.set_env(opt_strings(&p.Env));
    out.set_cwd(PathBuf::from(&p.Cwd));
    out.set_capabilities(
        p.Capabilities
            .as_ref()
            .map(|c| -> Result<oci::LinuxCapabilities> {
                let mut caps = oci::LinuxCapabilities::default();
                caps.set_bounding(caps_from_grpc(
                    "process.capabilities.bounding",
                    &c.Bounding,
                )?);
                caps.set_effective(caps_from_grpc(
                    "process.capabilities.effective",
                    &c.Effective,
                )?);
                caps.set_inheritable(caps_from_grpc(
                    "process.capabilities.inheritable",
                    &c.Inheritable,
                )?);
                caps.set_permitted(caps_from_grpc(
                    "process.capabilities.permitted",
                    &c.Permitted,
                )?);
                caps.set_ambient(caps_from_grpc("process.capabilities.ambient", &c.Ambient)?);
                Ok(caps)
            })
            .transpose()?,
    );
    let mut rlimits = Vec::with_capacity(p.Rlimits.len());
    for (i, r) in p.Rlimits.iter().enumerate() {
        let typ = oci::PosixRlimitType::from_str(&r.Type).map_err(|_| {
            Error::spec(
                format!("process.rlimits[{i}].type"),
                format!("unknown rlimit {:?}", r.Type),
            )
        })?;
        rlimits.push(built(
            format!("process.rlimits[{i}]"),
            oci::PosixRlimitBuilder::default()
                .typ(typ)
                .hard(r.Hard)
                .soft(r.Soft)
                .build(),
        )?);
    }
    out.set_rlimits(opt_vec(rlimits));
    out.set_no_new_privileges(Some(p.NoNewPrivileges));
    out.set_apparmor_profile(non_empty(&p.ApparmorProfile));
    let oom = i32::try_from(p.OOMScoreAdj).map_err(|_| {
        Error::spec(
            "process.oomScoreAdj",
            format!("{} does not fit in 32 bits", p.OOMScoreAdj),
        )
    })?;
    out.set_oom_score_adj(non_zero(oom));
    out.set_selinux_label(non_empty(&p.SelinuxLabel));
    out.set_io_priority(None);
    out.set_scheduler(None);
    out.set_exec_cpu_affinity(None);
    Ok(out)
}

/// `CAP_*` names, sorted so the encoding is deterministic.
fn caps_to_grpc(caps: &Option<oci::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = caps.iter().flatten().map(|c| format!("CAP_{c}")).collect();
    names.sort();
    names
}

fn caps_from_grpc(field: &str, names: &[String]) -> Result<Option<oci::Capabilities>> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut set = HashSet::with_capacity(names.len());
    for name in names {
        let bare = name.strip_prefix("CAP_").unwrap_or(name);
        let cap = oci::Capability::from_str(bare)
            .map_err(|_| Error::spec(field, format!("unknown capability {name:?}")))?;
        set.insert(cap);
    }
    Ok(Some(set))
}

// --- mounts and hooks ---

fn mount_to_grpc(i: usize, m: &oci::Mount) -> Result<grpc::Mount> {
    let mut out = grpc::Mount::new();
    out.destination = path_str(&format!("mounts[{i}].destination"), m.destination())?;
    out.source = match m.source() {
        Some(s) => path_str(&format!("mounts[{i}].source"), s)?,
        None => String::new(),
    };
    out.type_ = m.typ().clone().unwrap_or_default();
    out.options = strings(m.options());
    Ok(out)
}

fn mount_from_grpc(m: &grpc::Mount) -> oci::Mount {
    let mut out = oci::Mount::default();
    out.set_destination(PathBuf::from(&m.destination));
    out.set_source(non_empty(&m.source).map(PathBuf::from));
    out.set_typ(non_empty(&m.type_));
    out.set_options(opt_strings(&m.options));
    out.set_uid_mappings(None);
    out.set_gid_mappings(None);
    out
}

fn hooks_to_grpc(h: &oci::Hooks) -> Result<grpc::Hooks> {
    let convert = |field: &str, hooks: &Option<Vec<oci::Hook>>| -> Result<Vec<grpc::Hook>> {
        opt_slice(hooks)
            .iter()
            .enumerate()
            .map(|(i, hook)| {
                let mut out = grpc::Hook::new();
                out.Path = path_str(&format!("hooks.{field}[{i}].path"), hook.path())?;
                out.Args = strings(hook.args());
                out.Env = strings(hook.env());
                out.Timeout = hook.timeout().unwrap_or(0);
                Ok(out)
            })
            .collect()
    };
    let mut out = grpc::Hooks::new();
    out.Prestart = convert("prestart", h.prestart())?;
    out.Poststart = convert("poststart", h.poststart())?;
    out.Poststop = convert("poststop", h.poststop())?;
    Ok(out)
}

fn hooks_from_grpc(h: &grpc::Hooks) -> oci::Hooks {
    let convert = |hooks: &[grpc::Hook]| -> Option<Vec<oci::Hook>> {
        opt_vec(
            hooks
                .iter()
                .map(|hook| {
                    let mut out = oci::Hook::default();
                    out.set_path(PathBuf::from(&hook.Path));
                    out.set_args(opt_strings(&hook.Args));
                    out.set_env(opt_strings(&hook.Env));
                    out.set_timeout(non_zero(hook.Timeout));
                    out
                })
                .collect(),
        )
    };
    let mut out = oci::Hooks::default();
    out.set_prestart(convert(&h.Prestart));
    out.set_create_runtime(None);
    out.set_create_container(None);
    out.set_start_container(None);
    out.set_poststart(convert(&h.Poststart));
    out.set_poststop(convert(&h.Poststop));
    out
}

// --- linux ---

fn id_mappings_to_grpc(v: &Option<Vec<oci::LinuxIdMapping>>) -> Vec<grpc::LinuxIDMapping> {
    opt_slice(v)
        .iter()
        .map(|m| {
            let mut out = grpc::LinuxIDMapping::new();
            out.HostID = m.host_id();
            out.ContainerID = m.container_id();
            out.Size = m.size();
            out
        })
        .collect()
}

fn id_mappings_from_grpc(
    field: &str,
    v: &[grpc::LinuxIDMapping],
) -> Result<Option<Vec<oci::LinuxIdMapping>>> {
    let mappings = v
        .iter()
        .enumerate()
        .map(|(i, m)| {
            built(
                format!("{field}[{i}]"),
                oci::LinuxIdMappingBuilder::default()
                    .host_id(m.HostID)
                    .container_id(m.ContainerID)
                    .size(m.Size)
                    .build(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(opt_vec(mappings))
}

/// The OCI `config.json` name of a namespace type (what Kata sends too).
fn namespace_name(t: oci::LinuxNamespaceType) -> &'static str {
    match t {
        oci::LinuxNamespaceType::Mount => "mount",
        oci::LinuxNamespaceType::Cgroup => "cgroup",
        oci::LinuxNamespaceType::Uts => "uts",
        oci::LinuxNamespaceType::Ipc => "ipc",
        oci::LinuxNamespaceType::User => "user",
        oci::LinuxNamespaceType::Pid => "pid",
        oci::LinuxNamespaceType::Network => "network",
        oci::LinuxNamespaceType::Time => "time",
    }
}

fn device_type_from_str(field: &str, s: &str) -> Result<oci::LinuxDeviceType> {
    oci::LinuxDeviceType::from_str(s).map_err(|_| {
        Error::spec(
            field,
            format!("unknown device type {s:?} (expected a, b, c, u or p)"),
        )
    })
}

fn linux_to_grpc(l: &oci::Linux) -> Result<grpc::Linux> {
    let mut out = grpc::Linux::new();
    out.UIDMappings = id_mappings_to_grpc(l.uid_mappings());
    out.GIDMappings = id_mappings_to_grpc(l.gid_mappings());
    out.Sysctl = l.sysctl().clone().unwrap_or_default();
    if let Some(r) = l.resources() {
        out.Resources = MessageField::some(resources_to_grpc(r)?);
    }
    out.CgroupsPath = match l.cgroups_path() {
        Some(p) => path_str("linux.cgroupsPath", p)?,
        None => String::new(),
    };
    for (i, ns) in opt_slice(l.namespaces()).iter().enumerate() {
        let mut n = grpc::LinuxNamespace::new();
        n.Type = namespace_name(ns.typ()).to_string();
        n.Path = match ns.path() {
            Some(p) => path_str(&format!("linux.namespaces[{i}].path"), p)?,
            None => String::new(),
        };
        out.Namespaces.push(n);
    }
    for (i, d) in opt_slice(l.devices()).iter().enumerate() {
        let mut dev = grpc::LinuxDevice::new();
        dev.Path = path_str(&format!("linux.devices[{i}].path"), d.path())?;
        dev.Type = d.typ().as_str().to_string();
        dev.Major = d.major();
        dev.Minor = d.minor();
        dev.FileMode = d.file_mode().unwrap_or(0);
        dev.UID = d.uid().unwrap_or(0);
        dev.GID = d.gid().unwrap_or(0);
        out.Devices.push(dev);
    }
    out.RootfsPropagation = l.rootfs_propagation().clone().unwrap_or_default();
    out.MaskedPaths = strings(l.masked_paths());
    out.ReadonlyPaths = strings(l.readonly_paths());
    out.MountLabel = l.mount_label().clone().unwrap_or_default();
    if let Some(sc) = l.seccomp() {
        out.Seccomp = MessageField::some(seccomp_to_grpc(sc)?);
    }
    Ok(out)
}

/// An OCI enum value's spec string (`SCMP_ACT_ERRNO`, `SCMP_ARCH_X86_64`, ...).
fn oci_name<T: serde::Serialize>(field: &str, value: &T) -> Result<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        _ => Err(Error::spec(field, "has no name the protocol can carry")),
    }
}

fn seccomp_to_grpc(s: &oci::LinuxSeccomp) -> Result<grpc::LinuxSeccomp> {
    const F: &str = "linux.seccomp";
    if s.default_errno_ret().is_some() {
        return Err(Error::spec(
            format!("{F}.defaultErrnoRet"),
            "the agent protocol cannot carry it: give the errno on each rule (errnoRet)",
        ));
    }
    if s.listener_path().is_some() || s.listener_metadata().is_some() {
        return Err(Error::spec(
            format!("{F}.listenerPath"),
            "seccomp notify (SCMP_ACT_NOTIFY) is not supported in a VM sandbox",
        ));
    }
    let mut out = grpc::LinuxSeccomp::new();
    out.DefaultAction = oci_name(&format!("{F}.defaultAction"), &s.default_action())?;
    for (i, a) in opt_slice(s.architectures()).iter().enumerate() {
        out.Architectures
            .push(oci_name(&format!("{F}.architectures[{i}]"), a)?);
    }
    for (i, f) in opt_slice(s.flags()).iter().enumerate() {
        out.Flags.push(oci_name(&format!("{F}.flags[{i}]"), f)?);
    }
    for (i, sc) in opt_slice(s.syscalls()).iter().enumerate() {
        let field = format!("{F}.syscalls[{i}]");
        let mut rule = grpc::LinuxSyscall::new();
        rule.Names = sc.names().clone();
        rule.Action = oci_name(&format!("{field}.action"), &sc.action())?;
        if let Some(errno) = sc.errno_ret() {
            rule.set_errnoret(errno);
        }
        for (j, a) in opt_slice(sc.args()).iter().enumerate() {
            let mut arg = grpc::LinuxSeccompArg::new();
            arg.Index = a.index() as u64;
            arg.Value = a.value();
            arg.ValueTwo = a.value_two().unwrap_or(0);
            arg.Op = oci_name(&format!("{field}.args[{j}].op"), &a.op())?;
            rule.Args.push(arg);
        }
        out.Syscalls.push(rule);
    }
    Ok(out)
}

fn linux_from_grpc(l: &grpc::Linux) -> Result<oci::Linux> {
    let mut out = oci::Linux::default();
    out.set_net_devices(None);
    out.set_uid_mappings(id_mappings_from_grpc("linux.uidMappings", &l.UIDMappings)?);
    out.set_gid_mappings(id_mappings_from_grpc("linux.gidMappings", &l.GIDMappings)?);
    out.set_sysctl(if l.Sysctl.is_empty() {
        None
    } else {
        Some(l.Sysctl.clone())
    });
    out.set_resources(l.Resources.as_ref().map(resources_from_grpc).transpose()?);
    out.set_cgroups_path(non_empty(&l.CgroupsPath).map(PathBuf::from));
    let mut namespaces = Vec::with_capacity(l.Namespaces.len());
    for (i, n) in l.Namespaces.iter().enumerate() {
        let typ = oci::LinuxNamespaceType::try_from(n.Type.as_str()).map_err(|_| {
            Error::spec(
                format!("linux.namespaces[{i}].type"),
                format!("unknown namespace type {:?}", n.Type),
            )
        })?;
        let mut ns = oci::LinuxNamespace::default();
        ns.set_typ(typ);
        ns.set_path(non_empty(&n.Path).map(PathBuf::from));
        namespaces.push(ns);
    }
    out.set_namespaces(opt_vec(namespaces));
    let mut devices = Vec::with_capacity(l.Devices.len());
    for (i, d) in l.Devices.iter().enumerate() {
        let mut dev = oci::LinuxDevice::default();
        dev.set_path(PathBuf::from(&d.Path));
        dev.set_typ(device_type_from_str(
            &format!("linux.devices[{i}].type"),
            &d.Type,
        )?);
        dev.set_major(d.Major);
        dev.set_minor(d.Minor);
        dev.set_file_mode(non_zero(d.FileMode));
        dev.set_uid(Some(d.UID));
        dev.set_gid(Some(d.GID));
        devices.push(dev);
    }
    out.set_devices(opt_vec(devices));
    // Not converted back here: the guest agent converts `Linux.Seccomp` itself, with the
    // refusals of what it cannot enforce (kata-agent's service/convert.rs).
    out.set_seccomp(None);
    out.set_rootfs_propagation(non_empty(&l.RootfsPropagation));
    out.set_masked_paths(opt_strings(&l.MaskedPaths));
    out.set_readonly_paths(opt_strings(&l.ReadonlyPaths));
    out.set_mount_label(non_empty(&l.MountLabel));
    out.set_intel_rdt(None);
    out.set_memory_policy(None);
    out.set_personality(None);
    out.set_time_offsets(None);
    Ok(out)
}

/// Converts OCI `linux.resources` (also the payload of `UpdateContainer`).
pub fn resources_to_grpc(r: &oci::LinuxResources) -> Result<grpc::LinuxResources> {
    let mut out = grpc::LinuxResources::new();
    for rule in opt_slice(r.devices()) {
        let mut d = grpc::LinuxDeviceCgroup::new();
        d.Allow = rule.allow();
        d.Type = rule
            .typ()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        d.Major = rule.major().unwrap_or(-1);
        d.Minor = rule.minor().unwrap_or(-1);
        d.Access = rule.access().clone().unwrap_or_default();
        out.Devices.push(d);
    }
    if let Some(m) = r.memory() {
        let mut mem = grpc::LinuxMemory::new();
        mem.Limit = m.limit().unwrap_or(0);
        mem.Reservation = m.reservation().unwrap_or(0);
        mem.Swap = m.swap().unwrap_or(0);
        mem.Kernel = m.kernel().unwrap_or(0);
        mem.KernelTCP = m.kernel_tcp().unwrap_or(0);
        mem.Swappiness = m.swappiness().unwrap_or(0);
        mem.DisableOOMKiller = m.disable_oom_killer().unwrap_or(false);
        out.Memory = MessageField::some(mem);
    }
    if let Some(c) = r.cpu() {
        let mut cpu = grpc::LinuxCPU::new();
        cpu.Shares = c.shares().unwrap_or(0);
        cpu.Quota = c.quota().unwrap_or(0);
        cpu.Period = c.period().unwrap_or(0);
        cpu.RealtimeRuntime = c.realtime_runtime().unwrap_or(0);
        cpu.RealtimePeriod = c.realtime_period().unwrap_or(0);
        cpu.Cpus = c.cpus().clone().unwrap_or_default();
        cpu.Mems = c.mems().clone().unwrap_or_default();
        out.CPU = MessageField::some(cpu);
    }
    if let Some(p) = r.pids() {
        let mut pids = grpc::LinuxPids::new();
        pids.Limit = p.limit();
        out.Pids = MessageField::some(pids);
    }
    if let Some(b) = r.block_io() {
        let mut bio = grpc::LinuxBlockIO::new();
        bio.Weight = b.weight().map(u32::from).unwrap_or(0);
        bio.LeafWeight = b.leaf_weight().map(u32::from).unwrap_or(0);
        for w in opt_slice(b.weight_device()) {
            let mut d = grpc::LinuxWeightDevice::new();
            d.Major = w.major();
            d.Minor = w.minor();
            d.Weight = w.weight().map(u32::from).unwrap_or(0);
            d.LeafWeight = w.leaf_weight().map(u32::from).unwrap_or(0);
            bio.WeightDevice.push(d);
        }
        bio.ThrottleReadBpsDevice = throttle_to_grpc(b.throttle_read_bps_device());
        bio.ThrottleWriteBpsDevice = throttle_to_grpc(b.throttle_write_bps_device());
        bio.ThrottleReadIOPSDevice = throttle_to_grpc(b.throttle_read_iops_device());
        bio.ThrottleWriteIOPSDevice = throttle_to_grpc(b.throttle_write_iops_device());
        out.BlockIO = MessageField::some(bio);
    }
    for (i, h) in opt_slice(r.hugepage_limits()).iter().enumerate() {
        let mut limit = grpc::LinuxHugepageLimit::new();
        limit.Pagesize = h.page_size().clone();
        limit.Limit = u64::try_from(h.limit()).map_err(|_| {
            Error::spec(
                format!("linux.resources.hugepageLimits[{i}].limit"),
                format!("{} is negative", h.limit()),
            )
        })?;
        out.HugepageLimits.push(limit);
    }
    if let Some(n) = r.network() {
        let mut net = grpc::LinuxNetwork::new();
        net.ClassID = n.class_id().unwrap_or(0);
        for p in opt_slice(n.priorities()) {
            let mut prio = grpc::LinuxInterfacePriority::new();
            prio.Name = p.name().clone();
            prio.Priority = p.priority();
            net.Priorities.push(prio);
        }
        out.Network = MessageField::some(net);
    }
    Ok(out)
}

/// Converts the protocol's `LinuxResources` back to OCI `linux.resources`.
pub fn resources_from_grpc(r: &grpc::LinuxResources) -> Result<oci::LinuxResources> {
    let mut out = oci::LinuxResources::default();
    let mut rules = Vec::with_capacity(r.Devices.len());
    for (i, d) in r.Devices.iter().enumerate() {
        let mut rule = oci::LinuxDeviceCgroup::default();
        rule.set_allow(d.Allow);
        rule.set_typ(if d.Type.is_empty() {
            None
        } else {
            Some(device_type_from_str(
                &format!("linux.resources.devices[{i}].type"),
                &d.Type,
            )?)
        });
        rule.set_major(if d.Major < 0 { None } else { Some(d.Major) });
        rule.set_minor(if d.Minor < 0 { None } else { Some(d.Minor) });
        rule.set_access(non_empty(&d.Access));
        rules.push(rule);
    }
    out.set_devices(opt_vec(rules));
    out.set_memory(r.Memory.as_ref().map(|m| {
        let mut mem = oci::LinuxMemory::default();
        mem.set_limit(non_zero(m.Limit));
        mem.set_reservation(non_zero(m.Reservation));
        mem.set_swap(non_zero(m.Swap));
        mem.set_kernel(non_zero(m.Kernel));
        mem.set_kernel_tcp(non_zero(m.KernelTCP));
        mem.set_swappiness(non_zero(m.Swappiness));
        mem.set_disable_oom_killer(non_zero(m.DisableOOMKiller));
        mem.set_use_hierarchy(None);
        mem.set_check_before_update(None);
        mem
    }));
    out.set_cpu(r.CPU.as_ref().map(|c| {
        let mut cpu = oci::LinuxCpu::default();
        cpu.set_shares(non_zero(c.Shares));
        cpu.set_quota(non_zero(c.Quota));
        cpu.set_idle(None);
        cpu.set_burst(None);
        cpu.set_period(non_zero(c.Period));
        cpu.set_realtime_runtime(non_zero(c.RealtimeRuntime));
        cpu.set_realtime_period(non_zero(c.RealtimePeriod));
        cpu.set_cpus(non_empty(&c.Cpus));
        cpu.set_mems(non_empty(&c.Mems));
        cpu
    }));
    out.set_pids(r.Pids.as_ref().map(|p| {
        let mut pids = oci::LinuxPids::default();
        pids.set_limit(p.Limit);
        pids
    }));
    out.set_block_io(r.BlockIO.as_ref().map(blockio_from_grpc).transpose()?);
    let mut hugepages = Vec::with_capacity(r.HugepageLimits.len());
    for (i, h) in r.HugepageLimits.iter().enumerate() {
        let mut limit = oci::LinuxHugepageLimit::default();
        limit.set_page_size(h.Pagesize.clone());
        limit.set_limit(i64::try_from(h.Limit).map_err(|_| {
            Error::spec(
                format!("linux.resources.hugepageLimits[{i}].limit"),
                format!("{} does not fit in 63 bits", h.Limit),
            )
        })?);
        hugepages.push(limit);
    }
    out.set_hugepage_limits(opt_vec(hugepages));
    out.set_network(r.Network.as_ref().map(|n| {
        let mut net = oci::LinuxNetwork::default();
        net.set_class_id(non_zero(n.ClassID));
        net.set_priorities(opt_vec(
            n.Priorities
                .iter()
                .map(|p| {
                    let mut prio = oci::LinuxInterfacePriority::default();
                    prio.set_name(p.Name.clone());
                    prio.set_priority(p.Priority);
                    prio
                })
                .collect(),
        ));
        net
    }));
    out.set_rdma(None);
    out.set_unified(None);
    Ok(out)
}

fn throttle_to_grpc(v: &Option<Vec<oci::LinuxThrottleDevice>>) -> Vec<grpc::LinuxThrottleDevice> {
    opt_slice(v)
        .iter()
        .map(|t| {
            let mut out = grpc::LinuxThrottleDevice::new();
            out.Major = t.major();
            out.Minor = t.minor();
            out.Rate = t.rate();
            out
        })
        .collect()
}

fn throttle_from_grpc(
    field: &str,
    v: &[grpc::LinuxThrottleDevice],
) -> Result<Option<Vec<oci::LinuxThrottleDevice>>> {
    let devices = v
        .iter()
        .enumerate()
        .map(|(i, t)| {
            built(
                format!("linux.resources.blockIO.{field}[{i}]"),
                oci::LinuxThrottleDeviceBuilder::default()
                    .major(t.Major)
                    .minor(t.Minor)
                    .rate(t.Rate)
                    .build(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(opt_vec(devices))
}

fn weight_u16(field: String, v: u32) -> Result<Option<u16>> {
    if v == 0 {
        return Ok(None);
    }
    u16::try_from(v)
        .map(Some)
        .map_err(|_| Error::spec(field, format!("{v} does not fit in 16 bits")))
}

fn blockio_from_grpc(b: &grpc::LinuxBlockIO) -> Result<oci::LinuxBlockIo> {
    let mut out = oci::LinuxBlockIo::default();
    out.set_weight(weight_u16(
        "linux.resources.blockIO.weight".into(),
        b.Weight,
    )?);
    out.set_leaf_weight(weight_u16(
        "linux.resources.blockIO.leafWeight".into(),
        b.LeafWeight,
    )?);
    let mut devices = Vec::with_capacity(b.WeightDevice.len());
    for (i, w) in b.WeightDevice.iter().enumerate() {
        let mut d = oci::LinuxWeightDeviceBuilder::default()
            .major(w.Major)
            .minor(w.Minor);
        if let Some(weight) = weight_u16(
            format!("linux.resources.blockIO.weightDevice[{i}].weight"),
            w.Weight,
        )? {
            d = d.weight(weight);
        }
        if let Some(leaf) = weight_u16(
            format!("linux.resources.blockIO.weightDevice[{i}].leafWeight"),
            w.LeafWeight,
        )? {
            d = d.leaf_weight(leaf);
        }
        devices.push(built(
            format!("linux.resources.blockIO.weightDevice[{i}]"),
            d.build(),
        )?);
    }
    out.set_weight_device(opt_vec(devices));
    out.set_throttle_read_bps_device(throttle_from_grpc(
        "throttleReadBpsDevice",
        &b.ThrottleReadBpsDevice,
    )?);
    out.set_throttle_write_bps_device(throttle_from_grpc(
        "throttleWriteBpsDevice",
        &b.ThrottleWriteBpsDevice,
    )?);
    out.set_throttle_read_iops_device(throttle_from_grpc(
        "throttleReadIOPSDevice",
        &b.ThrottleReadIOPSDevice,
    )?);
    out.set_throttle_write_iops_device(throttle_from_grpc(
        "throttleWriteIOPSDevice",
        &b.ThrottleWriteIOPSDevice,
    )?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    /// A spec as containerd would hand it to a runtime, in normal form.
    const CONFIG_JSON: &str = r#"{
        "ociVersion": "1.1.0",
        "process": {
            "terminal": false,
            "consoleSize": { "height": 24, "width": 80 },
            "user": {
                "uid": 1000, "gid": 1000, "umask": 18,
                "additionalGids": [10, 20], "username": "app"
            },
            "args": ["/bin/sh", "-c", "echo hello"],
            "env": ["PATH=/usr/bin:/bin", "HOME=/home/app"],
            "cwd": "/work",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL", "CAP_CHOWN"]
            },
            "rlimits": [
                { "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024 },
                { "type": "RLIMIT_NPROC", "hard": 512, "soft": 256 }
            ],
            "noNewPrivileges": true,
            "oomScoreAdj": 100
        },
        "root": { "path": "/run/kata-containers/shared/containers/c1/rootfs", "readonly": true },
        "hostname": "web-1",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/data", "type": "bind", "source": "/run/kata-containers/shared/vol",
              "options": ["rbind", "ro"] }
        ],
        "hooks": {
            "prestart": [ { "path": "/usr/bin/hook", "args": ["hook", "pre"], "timeout": 5 } ]
        },
        "annotations": { "io.kubernetes.cri.container-type": "container" },
        "linux": {
            "uidMappings": [ { "hostID": 100000, "containerID": 0, "size": 65536 } ],
            "gidMappings": [ { "hostID": 100000, "containerID": 0, "size": 65536 } ],
            "sysctl": { "net.ipv4.ip_forward": "1" },
            "resources": {
                "devices": [
                    { "allow": false, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm" }
                ],
                "memory": { "limit": 268435456, "reservation": 134217728, "swap": 536870912 },
                "cpu": { "shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0" },
                "pids": { "limit": 128 },
                "blockIO": {
                    "weight": 500,
                    "weightDevice": [ { "major": 8, "minor": 0, "weight": 300 } ],
                    "throttleReadBpsDevice": [ { "major": 8, "minor": 0, "rate": 1048576 } ]
                },
                "hugepageLimits": [ { "pageSize": "2MB", "limit": 209715200 } ],
                "network": { "classID": 7, "priorities": [ { "name": "eth0", "priority": 3 } ] }
            },
            "cgroupsPath": "/kata/c1",
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                { "type": "network", "path": "/var/run/netns/cni-1" }
            ],
            "devices": [
                { "path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                  "fileMode": 438, "uid": 0, "gid": 0 }
            ],
            "rootfsPropagation": "rslave",
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys", "/proc/bus"],
            "mountLabel": "system_u:object_r:container_file_t:s0",
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "architectures": ["SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [
                    { "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" },
                    { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 },
                    { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [ { "index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ" } ] }
                ]
            }
        }
    }"#;

    fn realistic_spec() -> oci::Spec {
        serde_json::from_str(CONFIG_JSON).expect("test config.json parses")
    }

    #[test]
    fn realistic_spec_survives_a_round_trip_through_the_wire() {
        let original = realistic_spec();
        let wire = to_grpc(&original).unwrap();
        let bytes = wire.write_to_bytes().unwrap();
        let decoded = grpc::Spec::parse_from_bytes(&bytes).unwrap();
        assert_eq!(decoded, wire);
        let back = from_grpc(&decoded).unwrap();
        // Seccomp goes one way: the agent converts it from the wire itself.
        let mut expected = original.clone();
        let mut linux = expected.linux().clone().unwrap();
        linux.set_seccomp(None);
        expected.set_linux(Some(linux));
        assert_eq!(back, expected);
    }

    #[test]
    fn seccomp_reaches_the_wire_and_what_it_cannot_carry_is_refused() {
        let wire = to_grpc(&realistic_spec()).unwrap();
        let sc = &wire.Linux.Seccomp;
        assert_eq!(sc.DefaultAction, "SCMP_ACT_ERRNO");
        assert_eq!(sc.Architectures, ["SCMP_ARCH_X86_64"]);
        assert_eq!(sc.Syscalls[1].Names, ["mkdir"]);
        assert_eq!(sc.Syscalls[1].errnoret(), 1);
        assert_eq!(sc.Syscalls[2].Args[0].Op, "SCMP_CMP_EQ");
        let mut spec = realistic_spec();
        let mut linux = spec.linux().clone().unwrap();
        let mut seccomp = linux.seccomp().clone().unwrap();
        seccomp.set_default_errno_ret(Some(38));
        linux.set_seccomp(Some(seccomp));
        spec.set_linux(Some(linux));
        let e = to_grpc(&spec).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp.defaultErrnoRet"), "{e}");
    }

    #[test]
    fn carries_the_fields_the_agent_needs() {
        let wire = to_grpc(&realistic_spec()).unwrap();
        let p = &wire.Process;
        assert_eq!(p.Args, ["/bin/sh", "-c", "echo hello"]);
        assert_eq!(p.Cwd, "/work");
        assert_eq!(p.User.UID, 1000);
        assert_eq!(p.User.AdditionalGids, [10, 20]);
        assert_eq!(p.User.Umask, Some(0o22));
        assert_eq!(p.Capabilities.Effective, ["CAP_KILL"]);
        assert_eq!(p.Capabilities.Permitted, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(p.Rlimits[0].Type, "RLIMIT_NOFILE");
        assert_eq!((p.Rlimits[0].Hard, p.Rlimits[0].Soft), (4096, 1024));
        assert!(p.NoNewPrivileges);
        assert_eq!(p.OOMScoreAdj, 100);
        assert!(wire.Root.Readonly);
        assert_eq!(wire.Hostname, "web-1");
        assert_eq!(wire.Mounts[1].type_, "tmpfs");
        let linux = &wire.Linux;
        let ns: Vec<&str> = linux.Namespaces.iter().map(|n| n.Type.as_str()).collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(linux.Namespaces[4].Path, "/var/run/netns/cni-1");
        let r = &linux.Resources;
        assert_eq!(r.Memory.Limit, 268_435_456);
        assert_eq!(
            (r.CPU.Shares, r.CPU.Quota, r.CPU.Period),
            (512, 50_000, 100_000)
        );
        assert_eq!(r.CPU.Cpus, "0-1");
        assert_eq!(r.Pids.Limit, 128);
        // Wildcard rule: no type, major/minor -1.
        assert_eq!((r.Devices[0].Type.as_str(), r.Devices[0].Major), ("", -1));
        assert_eq!(linux.Devices[0].Type, "c");
        assert_eq!(linux.Devices[0].FileMode, 0o666);
        assert_eq!(linux.Sysctl["net.ipv4.ip_forward"], "1");
        assert_eq!(linux.MaskedPaths, ["/proc/kcore", "/proc/keys"]);
    }

    #[test]
    fn default_oci_spec_converts() {
        let wire = to_grpc(&oci::Spec::default()).unwrap();
        let back = from_grpc(&wire).unwrap();
        assert_eq!(
            back.process().as_ref().unwrap().args().as_deref(),
            Some(&["sh".to_string()][..])
        );
        assert_eq!(
            back.mounts().as_ref().unwrap().len(),
            oci::get_default_mounts().len()
        );
    }

    #[test]
    fn bad_wire_values_name_the_field() {
        let mut wire = to_grpc(&realistic_spec()).unwrap();
        wire.Process.as_mut().unwrap().Rlimits[1].Type = "RLIMIT_BOGUS".into();
        let err = from_grpc(&wire).unwrap_err().to_string();
        assert!(
            err.contains("process.rlimits[1].type") && err.contains("RLIMIT_BOGUS"),
            "{err}"
        );

        let mut wire = to_grpc(&realistic_spec()).unwrap();
        wire.Linux.as_mut().unwrap().Namespaces[0].Type = "bogus".into();
        let err = from_grpc(&wire).unwrap_err().to_string();
        assert!(err.contains("linux.namespaces[0].type"), "{err}");

        let mut wire = to_grpc(&realistic_spec()).unwrap();
        wire.Process
            .as_mut()
            .unwrap()
            .Capabilities
            .as_mut()
            .unwrap()
            .Ambient = vec!["CAP_FLY".into()];
        let err = from_grpc(&wire).unwrap_err().to_string();
        assert!(
            err.contains("process.capabilities.ambient") && err.contains("CAP_FLY"),
            "{err}"
        );

        let mut wire = to_grpc(&realistic_spec()).unwrap();
        wire.Process.as_mut().unwrap().OOMScoreAdj = i64::MAX;
        let err = from_grpc(&wire).unwrap_err().to_string();
        assert!(err.contains("process.oomScoreAdj"), "{err}");
    }

    /// Field numbers are the wire contract with Kata's agent: check the bytes.
    #[test]
    fn wire_bytes_use_katas_field_numbers() {
        use crate::protocol::agent;

        // grpc.Root { Path = 1 (string), Readonly = 2 (bool) }
        let mut root = grpc::Root::new();
        root.Path = "/r".into();
        root.Readonly = true;
        assert_eq!(
            root.write_to_bytes().unwrap(),
            [0x0a, 2, b'/', b'r', 0x10, 1]
        );

        // grpc.Spec { Hostname = 4 } inside CreateContainerRequest { container_id = 1, OCI = 6 }
        let mut spec = grpc::Spec::new();
        spec.Hostname = "h".into();
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c".into();
        req.OCI = MessageField::some(spec);
        assert_eq!(
            req.write_to_bytes().unwrap(),
            [0x0a, 1, b'c', 0x32, 3, 0x22, 1, b'h']
        );

        // ReadStreamRequest { container_id = 1, exec_id = 2, len = 3 (uint32) }
        let mut read = agent::ReadStreamRequest::new();
        read.container_id = "c".into();
        read.exec_id = "e".into();
        read.len = 300;
        assert_eq!(
            read.write_to_bytes().unwrap(),
            [0x0a, 1, b'c', 0x12, 1, b'e', 0x18, 0xac, 0x02]
        );

        // WaitProcessResponse { status = 1 (int32) }; negative int32 is 10 bytes.
        let mut wait = agent::WaitProcessResponse::new();
        wait.status = 137;
        assert_eq!(wait.write_to_bytes().unwrap(), [0x08, 0x89, 0x01]);

        // grpc.LinuxMemory { Limit = 1 (int64) } in LinuxResources { Memory = 2 }
        let mut res = grpc::LinuxResources::new();
        res.Memory = MessageField::some(grpc::LinuxMemory {
            Limit: 1,
            ..Default::default()
        });
        assert_eq!(res.write_to_bytes().unwrap(), [0x12, 2, 0x08, 1]);

        // kata-rs extension: User.Umask = 1000 (varint key 8000 = 0xc0 0x3e).
        let mut user = grpc::User::new();
        user.Umask = Some(0o22);
        assert_eq!(user.write_to_bytes().unwrap(), [0xc0, 0x3e, 0x12]);
    }
}
