//! Validating an OCI spec and translating it into the helper's [`InitConfig`].
//!
//! Everything a request can get wrong is caught here, in the agent, before any process, mount or
//! cgroup exists: a missing `process`, empty `process.args`, a relative `root.path`, a mount of a
//! filesystem type this guest does not know, a user name absent from the container's
//! `/etc/passwd`. Each error is an `INVALID_ARGUMENT` that names the field.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, PosixRlimitType, Process, Spec};

use super::caps::CapSets;
use super::config::{
    ContainerSetup, DeviceNode, InitConfig, Mode, MountKind, MountStep, ProcessConfig,
};
use super::seccomp;
use super::sysctl::{self, PrivateNamespaces};
use super::user::resolve_user;
use crate::error::{AgentError, Result};
use crate::mount::{parse_propagation, MountOptions};

/// The filesystem types the guest kernel can mount (from `/proc/filesystems`).
#[derive(Clone, Debug)]
pub struct Filesystems(HashSet<String>);

impl Filesystems {
    /// The types listed in `/proc/filesystems`, plus the ones every container spec uses.
    pub fn detect() -> Self {
        let text = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        let mut set = Self::parse(&text);
        for fs in [
            "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
        ] {
            set.0.insert(fs.to_string());
        }
        set
    }

    /// Parses the text of `/proc/filesystems` (`nodev\tproc` or `\text4`).
    pub fn parse(text: &str) -> Self {
        Filesystems(
            text.lines()
                .filter_map(|l| l.split_whitespace().last())
                .map(String::from)
                .collect(),
        )
    }

    /// Whether `fstype` can be mounted.
    pub fn contains(&self, fstype: &str) -> bool {
        self.0.contains(fstype)
    }
}

impl<S: Into<String>> FromIterator<S> for Filesystems {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Filesystems(iter.into_iter().map(Into::into).collect())
    }
}

/// A container, validated and translated.
#[derive(Clone, Debug)]
pub struct ContainerPlan {
    /// The helper's configuration.
    pub init: InitConfig,
    /// The rootfs in the agent's mount namespace.
    pub rootfs: PathBuf,
    /// `linux.cgroupsPath`.
    pub cgroups_path: Option<PathBuf>,
    /// `linux.resources`.
    pub resources: Option<LinuxResources>,
}

/// The device nodes every container gets when its `/dev` is a fresh mount.
pub fn default_devices() -> Vec<DeviceNode> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(name, major, minor)| DeviceNode {
        path: PathBuf::from("/dev").join(name),
        kind: libc::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

// glibc types RLIMIT_* as u32, musl as i32: the cast is needed on one of them.
#[allow(clippy::unnecessary_cast)]
fn rlimit_resource(t: PosixRlimitType) -> u32 {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as u32
}

/// Validates `process` (at spec path `field`, `process` or `exec process`) and translates it.
/// The user is resolved against `rootfs`.
pub fn plan_process(process: &Process, rootfs: &Path, field: &str) -> Result<ProcessConfig> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(AgentError::invalid(format!("{field}.args"), "is empty"));
    }
    if args[0].is_empty() {
        return Err(AgentError::invalid(format!("{field}.args[0]"), "is empty"));
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(AgentError::invalid(
            format!("{field}.cwd"),
            format!(
                "must be an absolute path, got {:?}",
                cwd.display().to_string()
            ),
        ));
    }
    let mut env = process.env().clone().unwrap_or_default();
    for (i, e) in env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(AgentError::invalid(
                format!("{field}.env[{i}]"),
                format!("{e:?} is not NAME=value"),
            ));
        }
        if e.contains('\0') {
            return Err(AgentError::invalid(
                format!("{field}.env[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    for (i, a) in args.iter().enumerate() {
        if a.contains('\0') {
            return Err(AgentError::invalid(
                format!("{field}.args[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    let user = resolve_user(rootfs, process.user(), &format!("{field}.user"))?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    let mut rlimits = Vec::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if r.soft() > r.hard() {
            return Err(AgentError::invalid(
                format!("{field}.rlimits[{i}]"),
                format!("soft limit {} is above hard limit {}", r.soft(), r.hard()),
            ));
        }
        rlimits.push((rlimit_resource(r.typ()), r.soft(), r.hard()));
    }
    Ok(ProcessConfig {
        args,
        env,
        cwd: cwd.clone(),
        user,
        // No capabilities in the spec means none, as runc reads it (not "keep the agent's").
        caps: Some(
            process
                .capabilities()
                .as_ref()
                .map(CapSets::from_spec)
                .unwrap_or_else(CapSets::none),
        ),
        rlimits,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        terminal: process.terminal().unwrap_or(false),
        oom_score_adj: process.oom_score_adj(),
        seccomp: None,
    })
}

/// The clone flag of a namespace type; user and time namespaces are refused, naming the entry.
fn clone_flag(t: LinuxNamespaceType, i: usize) -> Result<CloneFlags> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // Mapping ids needs a uid/gid-map handshake between the helper and the agent, id-mapped
        // (or chowned) rootfs shares from the host, and device nodes bound instead of created;
        // until that exists a user namespace is refused, never silently dropped: the container
        // would run as real root of the guest while its spec says otherwise.
        LinuxNamespaceType::User => {
            return Err(AgentError::invalid(
                format!("linux.namespaces[{i}]"),
                "user namespaces (linux.namespaces[user]) are not supported by kata-agent: \
                 remove it (the VM is the isolation boundary) or run the pod with host users",
            ))
        }
        LinuxNamespaceType::Time => {
            return Err(AgentError::invalid(
                format!("linux.namespaces[{i}]"),
                "time namespaces (linux.namespaces[time]) are not supported by kata-agent",
            ))
        }
    })
}

/// Whether `path` names a namespace other than the agent's own of that kind (`kind` as in
/// `/proc/self/ns/<kind>`).
fn is_foreign_namespace(path: &Path, kind: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata(format!("/proc/self/ns/{kind}"));
    match (std::fs::metadata(path), own) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
        _ => false,
    }
}

/// The deepest of `trees` that `source` lies in (compared component by component).
fn tree_of(source: &Path, trees: &[PathBuf]) -> Option<PathBuf> {
    trees
        .iter()
        .filter(|t| source.starts_with(t))
        .max_by_key(|t| t.components().count())
        .cloned()
}

/// Validates a container's spec and translates it into the helper's configuration.
///
/// `pod_netns`: the agent's own network namespace is the pod's (the agent is the guest's init),
/// so `net.*` sysctls are allowed for a container that shares it. `pod_trees`: the directories
/// the pod's containers can write (the storages' mount points, the other containers' rootfs;
/// this container's rootfs is added here): a bind source inside one is opened beneath it.
pub fn plan_container(
    id: &str,
    spec: &Spec,
    filesystems: &Filesystems,
    pod_netns: bool,
    pod_trees: &[PathBuf],
) -> Result<ContainerPlan> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| AgentError::invalid("process", "is missing"))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| AgentError::invalid("root", "is missing"))?;
    let rootfs = root.path().clone();
    if !rootfs.is_absolute() {
        return Err(AgentError::invalid(
            "root.path",
            format!(
                "must be an absolute path in the guest, got {:?}",
                rootfs.display().to_string()
            ),
        ));
    }
    if !rootfs.is_dir() {
        return Err(AgentError::invalid(
            "root.path",
            format!("{} is not a directory in the guest", rootfs.display()),
        ));
    }
    let mut process_cfg = plan_process(process, &rootfs, "process")?;

    let linux = spec.linux().clone().unwrap_or_default();

    // Namespaces: the mount namespace is always new (pivot_root needs it); the network one is
    // the sandbox's unless the spec names one that exists in the guest; a host path that does
    // not exist in the guest is never joined.
    let mut unshare = CloneFlags::CLONE_NEWNS;
    let mut join = Vec::new();
    let mut private = PrivateNamespaces::default();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let flag = clone_flag(ns.typ(), i)?;
        if flag == CloneFlags::CLONE_NEWNS {
            continue;
        }
        let existing = ns.path().as_ref().filter(|p| p.exists());
        let kind = match flag {
            CloneFlags::CLONE_NEWIPC => "ipc",
            CloneFlags::CLONE_NEWUTS => "uts",
            CloneFlags::CLONE_NEWNET => "net",
            _ => "",
        };
        let foreign = existing.is_none_or(|p| is_foreign_namespace(p, kind));
        match flag {
            CloneFlags::CLONE_NEWIPC => private.ipc = foreign,
            CloneFlags::CLONE_NEWUTS => private.uts = foreign,
            // No existing path: the container shares the agent's, which is the pod's only when
            // the agent is the guest's init.
            CloneFlags::CLONE_NEWNET => {
                private.net = existing.is_some_and(|p| is_foreign_namespace(p, kind)) || pod_netns
            }
            _ => {}
        }
        match (flag, existing) {
            (_, Some(path)) => join.push((flag.bits(), path.clone())),
            (CloneFlags::CLONE_NEWNET, None) => {
                tracing::debug!(
                    container_id = id,
                    index = i,
                    "sharing the sandbox's network namespace"
                );
            }
            (_, None) => {
                if let Some(p) = ns.path() {
                    tracing::debug!(container_id = id, path = %p.display(),
                        "namespace path does not exist in the guest, creating a new one");
                }
                unshare |= flag;
            }
        }
    }
    let new_uts = unshare.contains(CloneFlags::CLONE_NEWUTS);

    // Mounts.
    let trees: Vec<PathBuf> = pod_trees.iter().cloned().chain([rootfs.clone()]).collect();
    let mut mounts = Vec::new();
    let mut dev_mounted = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(AgentError::invalid(
                format!("mounts[{i}].destination"),
                format!("must be absolute, got {:?}", dest.display().to_string()),
            ));
        }
        let options = m.options().clone().unwrap_or_default();
        let parsed = MountOptions::parse(&options);
        let typ = m.typ().as_deref().unwrap_or("");
        let kind = if typ == "bind" || parsed.is_bind() {
            let source = m.source().clone().unwrap_or_default();
            if !source.is_absolute() {
                return Err(AgentError::invalid(
                    format!("mounts[{i}].source"),
                    format!(
                        "a bind mount needs an absolute source, got {:?}",
                        source.display().to_string()
                    ),
                ));
            }
            if !source.exists() {
                return Err(AgentError::invalid(
                    format!("mounts[{i}].source"),
                    format!("{} does not exist in the guest", source.display()),
                ));
            }
            let within = tree_of(&source, &trees);
            MountKind::Bind { source, within }
        } else if typ.is_empty() {
            return Err(AgentError::invalid(
                format!("mounts[{i}].type"),
                format!("is missing for {}", dest.display()),
            ));
        } else if typ == "cgroup" || typ == "cgroup2" {
            tracing::debug!(container_id = id, destination = %dest.display(),
                "cgroup mount skipped");
            continue;
        } else if filesystems.contains(typ) {
            MountKind::Filesystem {
                fstype: typ.to_string(),
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| typ.to_string()),
            }
        } else {
            return Err(AgentError::invalid(
                format!("mounts[{i}].type"),
                format!("{typ:?} is not a filesystem this guest can mount"),
            ));
        };
        let mut options = options;
        if typ == "bind" && !parsed.is_bind() {
            options.push("rbind".to_string());
        }
        if dest == Path::new("/dev") {
            dev_mounted = true;
        }
        mounts.push(MountStep {
            index: i,
            destination: dest.clone(),
            kind,
            options,
        });
    }

    let mut devices = Vec::new();
    if dev_mounted {
        devices = default_devices();
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        if !d.path().starts_with("/dev") {
            return Err(AgentError::invalid(
                format!("{field}.path"),
                format!("{} is not under /dev", d.path().display()),
            ));
        }
        use oci_spec::runtime::LinuxDeviceType as T;
        let kind = match d.typ() {
            T::C | T::U => libc::S_IFCHR,
            T::B => libc::S_IFBLK,
            T::P => libc::S_IFIFO,
            T::A => {
                return Err(AgentError::invalid(
                    format!("{field}.type"),
                    "\"a\" is not a device node type",
                ))
            }
        };
        if !dev_mounted {
            tracing::warn!(container_id = id, device = %d.path().display(),
                "no /dev mount in the spec: device not created in the shared rootfs");
            continue;
        }
        devices.retain(|x| x.path != *d.path());
        devices.push(DeviceNode {
            path: d.path().clone(),
            kind,
            major: d.major().max(0) as u64,
            minor: d.minor().max(0) as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }

    let (root_propagation, share_root) = match linux.rootfs_propagation().as_deref() {
        None | Some("") => (MsFlags::MS_SLAVE | MsFlags::MS_REC, false),
        Some(p) => match parse_propagation(p) {
            Some(f) if f.contains(MsFlags::MS_SHARED) => {
                (MsFlags::MS_SLAVE | MsFlags::MS_REC, true)
            }
            Some(f) => (f | MsFlags::MS_REC, false),
            None => {
                return Err(AgentError::invalid(
                    "linux.rootfsPropagation",
                    format!("{p:?} is not a propagation type"),
                ))
            }
        },
    };

    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if hostname.is_some() && !new_uts {
        tracing::warn!(
            container_id = id,
            "hostname ignored: the spec asks for no UTS namespace"
        );
    }
    let domainname = spec.domainname().clone().filter(|h| !h.is_empty());

    let mut sysctl = BTreeMap::new();
    for (key, value) in linux.sysctl().iter().flatten() {
        let path = sysctl::check(key, private)?;
        sysctl.insert(key.clone(), (path, value.clone()));
    }
    process_cfg.seccomp = match linux.seccomp() {
        Some(s) => seccomp::compile(s)?,
        None => None,
    };

    let setup = ContainerSetup {
        rootfs: rootfs.clone(),
        readonly_rootfs: root.readonly().unwrap_or(false),
        root_propagation: root_propagation.bits(),
        share_root,
        no_pivot: false,
        unshare_flags: unshare.bits(),
        join,
        mounts,
        devices,
        dev_symlinks: dev_mounted,
        hostname: hostname.filter(|_| new_uts),
        domainname: domainname.filter(|_| new_uts),
        sysctl,
        masked_paths: linux
            .masked_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect(),
        readonly_paths: linux
            .readonly_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect(),
    };
    Ok(ContainerPlan {
        init: InitConfig {
            id: id.to_string(),
            process: process_cfg,
            mode: Mode::Container(Box::new(setup)),
        },
        rootfs,
        cgroups_path: linux.cgroups_path().clone(),
        resources: linux.resources().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, ProcessBuilder, RootBuilder, UserBuilder,
    };

    fn fs() -> Filesystems {
        ["proc", "sysfs", "tmpfs", "devpts", "mqueue", "ext4"]
            .into_iter()
            .collect()
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:1000:1000::/home/nobody:/bin/sh\n",
        )
        .unwrap();
        dir
    }

    fn spec_with(root: &Path) -> Spec {
        let mut spec = Spec::default();
        spec.set_root(Some(RootBuilder::default().path(root).build().unwrap()));
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(vec!["echo".to_string(), "hi".to_string()])
                .cwd("/")
                .build()
                .unwrap(),
        ));
        spec
    }

    fn invalid_field(err: AgentError) -> String {
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{err}");
        match err {
            AgentError::InvalidArgument { field, .. } => field,
            _ => unreachable!(),
        }
    }

    #[test]
    fn default_spec_translates() {
        let dir = rootfs();
        let plan = plan_container("c1", &spec_with(dir.path()), &fs(), false, &[]).unwrap();
        let Mode::Container(setup) = &plan.init.mode else {
            panic!()
        };
        let flags = CloneFlags::from_bits_truncate(setup.unshare_flags);
        assert!(flags.contains(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
        ));
        assert!(
            !flags.contains(CloneFlags::CLONE_NEWNET),
            "network is shared"
        );
        // proc, /dev tmpfs, devpts, shm, mqueue, sysfs — the cgroup mount is skipped.
        let dests: Vec<_> = setup.mounts.iter().map(|m| m.destination.clone()).collect();
        assert!(dests.contains(&PathBuf::from("/proc")));
        assert!(!dests.contains(&PathBuf::from("/sys/fs/cgroup")));
        assert!(setup.dev_symlinks);
        assert_eq!(setup.devices.len(), 6);
        assert_eq!(
            MsFlags::from_bits_truncate(setup.root_propagation),
            MsFlags::MS_SLAVE | MsFlags::MS_REC
        );
        assert!(plan.init.process.env.iter().any(|e| e == "HOME=/root"));
        assert!(!setup.masked_paths.is_empty());
    }

    #[test]
    fn mount_steps_keep_their_index_in_the_spec() {
        // Errors name `mounts[<index>]`: the cgroup mount is skipped, the index is the spec's.
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        let mut mounts = spec.mounts().clone().unwrap();
        let cgroup = mounts
            .iter()
            .position(|m| m.destination() == Path::new("/sys/fs/cgroup"))
            .unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/data")
                .typ("tmpfs")
                .source("tmpfs")
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts.clone()));
        let plan = plan_container("c", &spec, &fs(), false, &[]).unwrap();
        let Mode::Container(setup) = plan.init.mode else {
            panic!()
        };
        for m in &setup.mounts {
            assert_eq!(mounts[m.index].destination(), &m.destination);
        }
        let last = setup.mounts.last().unwrap();
        assert_eq!((last.index, cgroup < last.index), (mounts.len() - 1, true));
    }

    #[test]
    fn bind_sources_in_a_pod_tree_are_opened_beneath_the_deepest() {
        let dir = rootfs();
        let vols = tempfile::tempdir().unwrap();
        let shared = vols.path().join("shared");
        let vol = shared.join("vol");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let bind = |dest: &str, source: &Path| {
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(source)
                .build()
                .unwrap()
        };
        let mut spec = spec_with(dir.path());
        spec.set_mounts(Some(vec![
            bind("/a", &vol.join("sub")),
            bind("/b", &shared),
            bind("/c", &dir.path().join("data")),
            bind("/d", vols.path()),
        ]));
        let trees = [shared.clone(), vol.clone()];
        let plan = plan_container("c", &spec, &fs(), false, &trees).unwrap();
        let Mode::Container(setup) = plan.init.mode else {
            panic!()
        };
        let within: Vec<_> = setup
            .mounts
            .iter()
            .map(|m| match &m.kind {
                MountKind::Bind { within, .. } => within.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        // The volume inside the shared tree wins; the container's own rootfs is a tree too.
        assert_eq!(
            within,
            [
                Some(vol),
                Some(shared),
                Some(dir.path().to_path_buf()),
                None
            ]
        );
    }

    #[test]
    fn missing_process_and_empty_args() {
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        spec.set_process(None);
        assert_eq!(
            invalid_field(plan_container("c", &spec, &fs(), false, &[]).unwrap_err()),
            "process"
        );

        let mut spec = spec_with(dir.path());
        spec.process_mut().as_mut().unwrap().set_args(Some(vec![]));
        let err = plan_container("c", &spec, &fs(), false, &[]).unwrap_err();
        assert_eq!(err.to_string(), "process.args is empty");
    }

    #[test]
    fn relative_rootfs_is_rejected_naming_root_path() {
        let mut spec = Spec::default(); // root.path is "rootfs"
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(vec!["true".to_string()])
                .build()
                .unwrap(),
        ));
        let err = plan_container("c", &spec, &fs(), false, &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("root.path must be an absolute path"),
            "{err}"
        );
        assert_eq!(invalid_field(err), "root.path");
    }

    #[test]
    fn unknown_mount_type_names_the_mount() {
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/data")
                .typ("nosuchfs")
                .source("none")
                .build()
                .unwrap(),
        );
        let idx = mounts.len() - 1;
        spec.set_mounts(Some(mounts));
        let field = invalid_field(plan_container("c", &spec, &fs(), false, &[]).unwrap_err());
        assert_eq!(field, format!("mounts[{idx}].type"));
    }

    #[test]
    fn bind_mounts_need_an_existing_absolute_source() {
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        spec.set_mounts(Some(vec![MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source("/does/not/exist")
            .options(vec!["ro".to_string()])
            .build()
            .unwrap()]));
        assert_eq!(
            invalid_field(plan_container("c", &spec, &fs(), false, &[]).unwrap_err()),
            "mounts[0].source"
        );
        spec.set_mounts(Some(vec![MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(dir.path())
            .options(vec!["ro".to_string()])
            .build()
            .unwrap()]));
        let plan = plan_container("c", &spec, &fs(), false, &[]).unwrap();
        let Mode::Container(setup) = plan.init.mode else {
            panic!()
        };
        assert_eq!(setup.mounts[0].options, vec!["ro", "rbind"]);
        assert!(!setup.dev_symlinks);
        assert!(setup.devices.is_empty());
    }

    #[test]
    fn unknown_user_name_is_rejected() {
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_user(UserBuilder::default().username("ghost").build().unwrap());
        assert_eq!(
            invalid_field(plan_container("c", &spec, &fs(), false, &[]).unwrap_err()),
            "process.user.username"
        );
    }

    #[test]
    fn relative_cwd_and_bad_env() {
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        spec.process_mut().as_mut().unwrap().set_cwd("tmp".into());
        assert_eq!(
            invalid_field(plan_container("c", &spec, &fs(), false, &[]).unwrap_err()),
            "process.cwd"
        );
        let mut spec = spec_with(dir.path());
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_env(Some(vec!["PATH=/bin".into(), "BROKEN".into()]));
        assert_eq!(
            invalid_field(plan_container("c", &spec, &fs(), false, &[]).unwrap_err()),
            "process.env[1]"
        );
    }

    #[test]
    fn host_namespace_paths_are_not_joined() {
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        let ns = |t, p: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(t);
            if let Some(p) = p {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(vec![
                    ns(LinuxNamespaceType::Network, Some("/var/run/netns/cni-1234")),
                    ns(LinuxNamespaceType::Ipc, Some("/no/such/ns")),
                    ns(LinuxNamespaceType::Uts, Some("/proc/self/ns/uts")),
                    ns(LinuxNamespaceType::Pid, None),
                ])
                .build()
                .unwrap(),
        ));
        let plan = plan_container("c", &spec, &fs(), false, &[]).unwrap();
        let Mode::Container(setup) = plan.init.mode else {
            panic!()
        };
        let flags = CloneFlags::from_bits_truncate(setup.unshare_flags);
        assert!(!flags.contains(CloneFlags::CLONE_NEWNET));
        assert!(
            flags.contains(CloneFlags::CLONE_NEWIPC),
            "missing path → new ns"
        );
        assert!(flags.contains(CloneFlags::CLONE_NEWPID));
        assert!(!flags.contains(CloneFlags::CLONE_NEWUTS));
        assert_eq!(
            setup.join,
            vec![(
                CloneFlags::CLONE_NEWUTS.bits(),
                PathBuf::from("/proc/self/ns/uts")
            )]
        );
        assert_eq!(setup.hostname, None, "no new uts namespace, no hostname");
    }

    #[test]
    fn bad_propagation_is_rejected() {
        let dir = rootfs();
        let mut spec = spec_with(dir.path());
        spec.set_linux(Some(
            LinuxBuilder::default()
                .rootfs_propagation("sideways")
                .build()
                .unwrap(),
        ));
        assert_eq!(
            invalid_field(plan_container("c", &spec, &fs(), false, &[]).unwrap_err()),
            "linux.rootfsPropagation"
        );
    }

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn rlimits_and_caps_translate() {
        let dir = rootfs();
        let spec = spec_with(dir.path());
        let p = plan_process(spec.process().as_ref().unwrap(), dir.path(), "process").unwrap();
        assert_eq!(p.rlimits, vec![(libc::RLIMIT_NOFILE as u32, 1024, 1024)]);
        assert!(p.caps.is_some());
        assert_eq!(p.args, vec!["echo", "hi"]);
    }
}
