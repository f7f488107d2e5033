//! What to run: [`ContainerSpec`] (a rootfs and its first process) and [`ProcessSpec`].
//!
//! Both are small builders that end in an OCI runtime spec (`oci_spec::runtime::Spec`), the
//! form the agent receives. A caller who already has a full OCI spec (the containerd shim reads
//! one from the bundle) uses [`ContainerSpec::from_oci`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kata_resource::RootfsMount;
use oci_spec::runtime::{LinuxNamespaceType, Process, Root, Spec, User};

use crate::config::RuntimeConfig;
use crate::error::{Error, Result};

/// The default `PATH` when the caller gives none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootfsSource {
    /// A directory on the host (shared into the guest as it is).
    Dir(PathBuf),
    /// An OCI bundle's rootfs (its spec's `root.path`, which must lie inside the bundle), with
    /// the mounts containerd hands a shim (its snapshotter's overlay or bind mounts) to make
    /// there first; the sandbox mounts them, and unmounts them when the container is deleted.
    Bundle {
        /// The bundle directory.
        bundle: PathBuf,
        /// containerd's rootfs mounts, bottom first (none: the rootfs directory is ready).
        mounts: Vec<RootfsMount>,
    },
    /// An OCI image layout directory or tarball; unpacked (and cached) by kata-sandbox.
    Image {
        /// The layout directory or `.tar`/`.tar.gz` file.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick, if the layout holds several.
        reference: Option<String>,
    },
}

/// A process to run: the container's first process or an exec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessSpec {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<String>,
    pub(crate) cwd: Option<String>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) additional_gids: Vec<u32>,
    pub(crate) terminal: bool,
    pub(crate) stdin: bool,
    pub(crate) base: Option<Process>,
    pub(crate) output_limit: Option<usize>,
}

impl ProcessSpec {
    /// A process described by a full OCI process (what containerd's `Exec` carries); the
    /// builder methods still apply on top of it. Its `terminal` flag is kept.
    pub fn from_oci(process: Process) -> Self {
        ProcessSpec {
            terminal: process.terminal().unwrap_or(false),
            base: Some(process),
            ..Default::default()
        }
    }

    /// A process running `args` (`args[0]` is looked up on the container's `PATH`).
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ProcessSpec {
            args: args.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Sets the working directory (absolute, inside the container).
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Runs as this uid and gid.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }

    /// Supplementary groups.
    pub fn additional_gids(mut self, gids: impl IntoIterator<Item = u32>) -> Self {
        self.additional_gids = gids.into_iter().collect();
        self
    }

    /// Allocates a pseudo-terminal (stdout and stderr are then one stream, on stdout).
    pub fn terminal(mut self, terminal: bool) -> Self {
        self.terminal = terminal;
        self
    }

    /// Keeps stdin open for the caller to write (default: stdin is closed at start, so a
    /// process reading it sees EOF at once).
    pub fn stdin(mut self, open: bool) -> Self {
        self.stdin = open;
        self
    }

    /// The most [`Process::output`](crate::Process::output) collects of each of stdout and
    /// stderr (default [`DEFAULT_OUTPUT_LIMIT`](crate::DEFAULT_OUTPUT_LIMIT), 16 MiB). A process
    /// that writes more is killed and `output` fails with
    /// [`Error::OutputTooLarge`](crate::Error::OutputTooLarge); read the streams yourself to
    /// take any amount.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = Some(bytes);
        self
    }

    /// Whether stdin stays open for the caller.
    pub fn has_stdin(&self) -> bool {
        self.stdin
    }

    /// Whether a terminal is requested.
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Validates and turns the process into its OCI form, starting from `base` (the image's
    /// defaults, or the OCI default process).
    pub(crate) fn to_oci(&self, base: Process) -> Result<Process> {
        let mut base = self.base.clone().unwrap_or(base);
        if !self.args.is_empty() {
            base.set_args(Some(self.args.clone()));
        }
        let args = base.args().clone().unwrap_or_default();
        if args.is_empty() || args[0].is_empty() {
            return Err(Error::invalid(
                "process.args",
                "empty: give the command to run, e.g. [\"echo\", \"hi\"]",
            ));
        }
        let mut env = base.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        for e in &self.env {
            let Some((key, _)) = e.split_once('=') else {
                return Err(Error::invalid(
                    "process.env",
                    format!("`{e}` is not KEY=VALUE"),
                ));
            };
            if key.is_empty() {
                return Err(Error::invalid(
                    "process.env",
                    format!("`{e}` has an empty key"),
                ));
            }
            env.retain(|old| old.split_once('=').map(|(k, _)| k) != Some(key));
            env.push(e.clone());
        }
        base.set_env(Some(env));
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') {
                return Err(Error::invalid(
                    "process.cwd",
                    format!("`{cwd}` is relative; give an absolute path inside the container"),
                ));
            }
            base.set_cwd(PathBuf::from(cwd));
        }
        let mut user: User = base.user().clone();
        if let Some(uid) = self.uid {
            user.set_uid(uid);
        }
        if let Some(gid) = self.gid {
            user.set_gid(gid);
        }
        if !self.additional_gids.is_empty() {
            user.set_additional_gids(Some(self.additional_gids.clone()));
        }
        base.set_user(user);
        base.set_terminal(Some(self.terminal));
        Ok(base)
    }
}

/// A container: where its rootfs comes from and what it runs.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub(crate) id: Option<String>,
    pub(crate) rootfs: RootfsSource,
    pub(crate) process: ProcessSpec,
    pub(crate) hostname: Option<String>,
    pub(crate) readonly_rootfs: bool,
    pub(crate) oci: Option<Spec>,
    pub(crate) metadata: BTreeMap<String, String>,
}

impl ContainerSpec {
    /// A container whose rootfs is a host directory.
    pub fn from_rootfs_dir(dir: impl AsRef<Path>) -> Self {
        Self::with_source(RootfsSource::Dir(dir.as_ref().to_path_buf()))
    }

    /// A container from an OCI image layout directory or tarball. The image's entrypoint,
    /// command, environment, working directory and user are the defaults of its process.
    pub fn from_image(path: impl AsRef<Path>) -> Self {
        Self::with_source(RootfsSource::Image {
            path: path.as_ref().to_path_buf(),
            reference: None,
        })
    }

    /// A container described by a full OCI runtime spec; `rootfs` replaces `root.path`.
    pub fn from_oci(spec: Spec, rootfs: impl AsRef<Path>) -> Self {
        let mut s = Self::with_source(RootfsSource::Dir(rootfs.as_ref().to_path_buf()));
        s.oci = Some(spec);
        s
    }

    /// A container from an OCI bundle as containerd hands it over: `spec` is the bundle's
    /// `config.json`, `mounts` the rootfs mounts of the create request (empty when the rootfs
    /// directory is ready, as with `ctr run --rootfs`). `root.path` (relative to the bundle,
    /// or absolute) must lie inside the bundle: a spec naming `/` or `../x` is refused,
    /// naming `root.path`.
    pub fn from_bundle(
        bundle: impl AsRef<Path>,
        spec: Spec,
        mounts: Vec<RootfsMount>,
    ) -> Result<Self> {
        let bundle = bundle.as_ref();
        // Checked here, before a sandbox is started for it; the owner of the mounts checks
        // again (symlinks resolved) before it mounts anything.
        let root = spec.root().as_ref().map(|r| r.path().as_path());
        kata_resource::rootfs::bundle_rootfs_path(bundle, root)
            .map_err(|e| Error::invalid("root.path", e.to_string()))?;
        let mut s = Self::with_source(RootfsSource::Bundle {
            bundle: bundle.to_path_buf(),
            mounts,
        });
        s.oci = Some(spec);
        Ok(s)
    }

    fn with_source(rootfs: RootfsSource) -> Self {
        ContainerSpec {
            id: None,
            rootfs,
            process: ProcessSpec::default(),
            hostname: None,
            readonly_rootfs: false,
            oci: None,
            metadata: BTreeMap::new(),
        }
    }

    /// Attaches a key and value to the container, kept with it in `state.json` (a containerd
    /// shim keeps its bundle path and stdio there) and read back with
    /// [`Container::metadata`](crate::Container::metadata).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Picks an image by its reference name (for layouts holding several).
    pub fn image_reference(mut self, reference: impl Into<String>) -> Self {
        if let RootfsSource::Image { reference: r, .. } = &mut self.rootfs {
            *r = Some(reference.into());
        }
        self
    }

    /// Sets the container id (default: a random one).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The command to run.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.process.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the whole first process.
    pub fn process(mut self, process: ProcessSpec) -> Self {
        self.process = process;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.process = self.process.env(key, value);
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.process = self.process.cwd(cwd);
        self
    }

    /// Runs as this uid and gid.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.process = self.process.user(uid, gid);
        self
    }

    /// Allocates a pseudo-terminal.
    pub fn terminal(mut self, terminal: bool) -> Self {
        self.process = self.process.terminal(terminal);
        self
    }

    /// Keeps the first process's stdin open for the caller.
    pub fn stdin(mut self, open: bool) -> Self {
        self.process = self.process.stdin(open);
        self
    }

    /// The most [`Container::output`](crate::Container::output) (and
    /// [`Sandbox::run`](crate::Sandbox::run)) collects of each of stdout and stderr; see
    /// [`ProcessSpec::output_limit`].
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.process = self.process.output_limit(bytes);
        self
    }

    /// Sets the container's hostname.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Mounts the rootfs read-only.
    pub fn readonly_rootfs(mut self, readonly: bool) -> Self {
        self.readonly_rootfs = readonly;
        self
    }

    /// The rootfs source.
    pub fn rootfs(&self) -> &RootfsSource {
        &self.rootfs
    }

    /// Builds the OCI spec the runtime receives. `guest_root` is where the rootfs is as the
    /// runtime sees it; `image_process` carries the image's defaults, if any; `runtime` is the
    /// sandbox's `[runtime]` section (`disable_guest_seccomp` drops `linux.seccomp`).
    pub(crate) fn to_oci(
        &self,
        container_id: &str,
        guest_root: &str,
        image_process: Option<Process>,
        runtime: &RuntimeConfig,
    ) -> Result<Spec> {
        let mut spec = self.oci.clone().unwrap_or_default();
        let base = image_process
            .or_else(|| spec.process().clone())
            .unwrap_or_default();
        let only_limits = ProcessSpec {
            output_limit: None,
            ..self.process.clone()
        } == ProcessSpec::default();
        let process = if self.oci.is_some() && only_limits {
            let p = spec
                .process()
                .clone()
                .ok_or_else(|| Error::invalid("process", "the OCI spec has no process; add one"))?;
            ProcessSpec::default().to_oci(p)?
        } else {
            self.process.to_oci(base)?
        };
        spec.set_process(Some(process));
        let mut root = Root::default();
        root.set_path(PathBuf::from(guest_root));
        // Only a caller's own OCI spec can ask for a read-only root; oci-spec's default Root
        // is read-only, which must not leak into specs built here.
        let oci_readonly = self
            .oci
            .as_ref()
            .and_then(|s| s.root().as_ref())
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        root.set_readonly(Some(self.readonly_rootfs || oci_readonly));
        spec.set_root(Some(root));
        // None: the container sees the pod's hostname (the sandbox's, which the guest agent's
        // shared UTS namespace holds): what a CRI app container, whose spec has no hostname of
        // its own, must see.
        let hostname = self
            .hostname
            .clone()
            .or_else(|| spec.hostname().clone().filter(|h| h != "youki"))
            .filter(|h| !h.is_empty());
        spec.set_hostname(hostname);
        // Host hooks are run by the sandbox on the host (`sandbox/hooks.rs`); their paths mean
        // nothing in the guest, and the guest agent runs none.
        spec.set_hooks(None);
        // A host container (`linux_container`) keeps its namespaces and seccomp profile as
        // the spec says: they are what isolates it.
        let guest = runtime.name != "linux_container";
        if let Some(linux) = spec.linux_mut().as_mut().filter(|_| guest) {
            // Containers share the sandbox's network namespace (the VM's), as in Kata. A host
            // path means nothing in the guest (runtime-rs's `amend_spec`): the guest agent puts
            // the container in the pod's IPC and UTS namespaces; the PID namespace's path is
            // kept for [`take_pod_pid_namespace`], which turns it into `sandbox_pidns`.
            if let Some(ns) = linux.namespaces_mut() {
                ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
                for n in ns.iter_mut().filter(|n| n.typ() != LinuxNamespaceType::Pid) {
                    n.set_path(None);
                }
            }
            if runtime.disable_guest_seccomp && linux.seccomp().is_some() {
                tracing::debug!(container_id, "[runtime] disable_guest_seccomp = true: the spec's seccomp profile is not applied in the guest");
                linux.set_seccomp(None);
            }
        }
        Ok(spec)
    }
}

/// Whether the guest spec's container shares the pod's PID namespace: its
/// `linux.namespaces[pid]` names one (containerd's CRI names the pause container's for a pod
/// with `shareProcessNamespace`). The path, a host's, is cleared; the answer is
/// CreateContainer's `sandbox_pidns` (the guest agent joins the PID namespace of the pod's
/// first container), as Kata's runtimes do.
pub(crate) fn take_pod_pid_namespace(spec: &mut Spec) -> bool {
    let mut shared = false;
    if let Some(ns) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        for n in ns.iter_mut().filter(|n| n.typ() == LinuxNamespaceType::Pid) {
            shared |= n.path().as_ref().is_some_and(|p| !p.as_os_str().is_empty());
            n.set_path(None);
        }
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_values_reach_the_oci_spec() {
        let s = ContainerSpec::from_rootfs_dir("/tmp/rootfs")
            .args(["sh", "-c", "echo hi"])
            .env("A", "1")
            .cwd("/tmp")
            .user(1000, 1000)
            .hostname("box")
            .readonly_rootfs(true);
        let oci = s
            .to_oci(
                "c1",
                "/run/kata-containers/shared/containers/c1/rootfs",
                None,
                &RuntimeConfig::default(),
            )
            .unwrap();
        let p = oci.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["sh", "-c", "echo hi"]);
        let env = p.env().as_ref().unwrap();
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert!(env.contains(&"A=1".to_string()));
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(oci.hostname().as_deref(), Some("box"));
        let root = oci.root().as_ref().unwrap();
        assert_eq!(
            root.path(),
            Path::new("/run/kata-containers/shared/containers/c1/rootfs")
        );
        assert_eq!(root.readonly(), Some(true));
        let rw = ContainerSpec::from_rootfs_dir("/r").args(["true"]);
        let rw = rw
            .to_oci("c", "/g", None, &RuntimeConfig::default())
            .unwrap();
        assert_eq!(
            rw.root().as_ref().unwrap().readonly(),
            Some(false),
            "writable by default"
        );
        let ns = oci.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
    }

    #[test]
    fn hooks_never_reach_the_guest_spec() {
        let mut oci = Spec::default();
        let mut hooks = oci_spec::runtime::Hooks::default();
        let mut h = oci_spec::runtime::Hook::default();
        h.set_path(PathBuf::from("/usr/bin/hook"));
        hooks.set_poststop(Some(vec![h]));
        oci.set_hooks(Some(hooks));
        let s = ContainerSpec::from_oci(oci, "/r").output_limit(10);
        let guest = s
            .to_oci("c", "/g", None, &RuntimeConfig::default())
            .unwrap();
        assert!(guest.hooks().is_none());
        assert!(
            guest.process().as_ref().unwrap().args().is_some(),
            "an output limit alone keeps the spec's own process"
        );
    }

    #[test]
    fn env_overrides_replace_earlier_values() {
        let s = ContainerSpec::from_rootfs_dir("/r")
            .args(["true"])
            .env("PATH", "/bin");
        let oci = s
            .to_oci("c", "/g", None, &RuntimeConfig::default())
            .unwrap();
        let env = oci.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"PATH=/bin".to_string()));
    }

    #[test]
    fn bad_process_values_name_the_field() {
        let e = ProcessSpec::new(Vec::<String>::new())
            .to_oci(Process::default())
            .map(|_| ());
        // The OCI default process runs `sh`, so no args falls back to it.
        assert!(e.is_ok());
        let mut p = Process::default();
        p.set_args(Some(vec![]));
        let e = ProcessSpec::default().to_oci(p).unwrap_err().to_string();
        assert!(e.contains("process.args"), "{e}");
        let e = ProcessSpec::new(["true"])
            .cwd("tmp")
            .to_oci(Process::default())
            .unwrap_err();
        assert!(e.to_string().contains("process.cwd"), "{e}");
        let e = ProcessSpec::new(["true"])
            .env("=x", "")
            .to_oci(Process::default());
        assert!(e.is_err());
    }

    /// containerd's CRI app container: no hostname of its own, the pause container's IPC, UTS
    /// and PID namespaces named by host paths.
    fn cri_app_spec(pid_path: Option<&str>) -> Spec {
        let ns = |t, p: Option<&str>| {
            let mut b = oci_spec::runtime::LinuxNamespaceBuilder::default().typ(t);
            if let Some(p) = p {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        let mut spec = Spec::default();
        spec.set_hostname(None);
        spec.set_linux(Some(
            oci_spec::runtime::LinuxBuilder::default()
                .namespaces(vec![
                    ns(LinuxNamespaceType::Pid, pid_path),
                    ns(LinuxNamespaceType::Ipc, Some("/proc/4242/ns/ipc")),
                    ns(LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts")),
                    ns(LinuxNamespaceType::Mount, None),
                    ns(LinuxNamespaceType::Network, Some("/var/run/netns/cni-1")),
                ])
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn a_pod_container_keeps_the_pods_hostname_and_no_host_namespace_path() {
        let oci = ContainerSpec::from_oci(cri_app_spec(None), "/r")
            .to_oci("0123456789abcdef", "/g", None, &RuntimeConfig::default())
            .unwrap();
        assert_eq!(
            oci.hostname(),
            &None,
            "no hostname invented: the pod's is seen"
        );
        let ns = oci.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let types: Vec<_> = ns.iter().map(|n| n.typ()).collect();
        assert_eq!(
            types,
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount
            ]
        );
        assert!(ns.iter().all(|n| n.path().is_none()), "{ns:?}");
        // A spec's own hostname is kept.
        let mut named = cri_app_spec(None);
        named.set_hostname(Some("kt-pod".into()));
        let oci = ContainerSpec::from_oci(named, "/r")
            .to_oci("c", "/g", None, &RuntimeConfig::default())
            .unwrap();
        assert_eq!(oci.hostname().as_deref(), Some("kt-pod"));
    }

    #[test]
    fn a_named_pid_namespace_becomes_sandbox_pidns() {
        let mut shared = ContainerSpec::from_oci(cri_app_spec(Some("/proc/4242/ns/pid")), "/r")
            .to_oci("c", "/g", None, &RuntimeConfig::default())
            .unwrap();
        assert!(take_pod_pid_namespace(&mut shared));
        let ns = shared
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        assert!(ns.iter().all(|n| n.path().is_none()), "{ns:?}");
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        let mut own = ContainerSpec::from_oci(cri_app_spec(None), "/r")
            .to_oci("c", "/g", None, &RuntimeConfig::default())
            .unwrap();
        assert!(!take_pod_pid_namespace(&mut own));
        assert!(!take_pod_pid_namespace(&mut Spec::default()));
    }
}
