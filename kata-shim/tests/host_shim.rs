//! Tier 2: the shim's Task service in-process, through containerd's `Task` trait, without
//! containerd and without a VM. A configuration file selects the test backend
//! (`[hypervisor.host-agent]`: the real `kata-agent` of this build runs on this host in private
//! namespaces), named by the runtime options of the Create request as containerd names it.
//! Covers the task lifecycle (Create with a bundle rootfs and with containerd's overlay rootfs
//! mounts, Start, State, Pids, Stats, Exec, Kill, Wait, Pause/Resume, Update, Delete,
//! Shutdown), a pod of two containers in one sandbox, and the bad input of issue 9 rows 3 and 4;
//! after each test nothing is left (process, mount, directory). Runs in seconds.
//!
//! Needs root (namespaces, mounts, cgroups) and the kata-agent binary
//! (`cargo build -p kata-agent`; see `kata_testkit::agent_binary`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api;
use containerd_shim::protos::cgroups::metrics::Metrics;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::shim::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, PidsRequest,
    ShutdownRequest, StartRequest, StateRequest, StatsRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_shim::protos::ttrpc::{Code, Error as TtrpcError};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::protos::types::task::Status;
use containerd_shim::{ExitSignal, Task, TtrpcContext};
use kata_shim::TaskService;
use kata_testkit::leaks::{mounts_under, processes_mentioning};

/// CRI annotations.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What ttRPC hands the service with each request.
fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

/// The code and message of a failed call.
fn rpc_error<T: std::fmt::Debug>(r: Result<T, TtrpcError>) -> (Code, String) {
    match r {
        Err(TtrpcError::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Where a bundle's rootfs comes from.
enum Rootfs {
    /// A busybox rootfs at `<bundle>/rootfs`, `root.path = "rootfs"`.
    Inside,
    /// An empty `<bundle>/rootfs`: containerd's rootfs mounts in the request fill it.
    Mounted,
    /// `root.path` names this absolute path.
    Absolute(PathBuf),
}

/// A Task service on a private root (`<tmp>/run/kata`), with a configuration file for the
/// test backend.
struct Fixture {
    tmp: tempfile::TempDir,
    svc: TaskService,
    exit: Arc<ExitSignal>,
    options: Any,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root (namespaces, mounts, cgroups)"
        );
        let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("configuration.toml");
        std::fs::write(
            &config,
            format!(
                "[hypervisor.host-agent]\npath = \"{}\"\n\n[agent.kata]\ndial_timeout = 20\n",
                agent.display()
            ),
        )
        .unwrap();
        let exit = Arc::new(ExitSignal::default());
        let root = tmp.path().join("run").join("kata");
        let svc = TaskService::new("host-shim", None, exit.clone(), &root);
        Fixture {
            svc,
            exit,
            options: runtime_options(&config),
            tmp,
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("run").join("kata")
    }

    /// A bundle for `args` with these annotations; `root.path` as `rootfs` says.
    fn bundle(
        &self,
        name: &str,
        args: &[&str],
        annotations: &[(&str, &str)],
        rootfs: Rootfs,
    ) -> PathBuf {
        let dir = self.tmp.path().join("bundles").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let root_path = match rootfs {
            Rootfs::Inside => {
                kata_testkit::image::busybox_rootfs(&dir.join("rootfs")).expect("busybox rootfs");
                "rootfs".to_string()
            }
            Rootfs::Mounted => {
                std::fs::create_dir(dir.join("rootfs")).unwrap();
                "rootfs".to_string()
            }
            Rootfs::Absolute(path) => path.display().to_string(),
        };
        let mut spec = oci_spec::runtime::Spec::default();
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        spec.set_root(Some(
            oci_spec::runtime::RootBuilder::default()
                .path(root_path)
                .readonly(false)
                .build()
                .unwrap(),
        ));
        spec.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        dir
    }

    /// Create's request for task `id` from `bundle`, its output to files (`file://`, as
    /// `ctr run --log-uri` gives), with the runtime options naming the configuration.
    fn create_request(&self, id: &str, bundle: &Path) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            stdout: self.log_uri(id, "out"),
            stderr: self.log_uri(id, "err"),
            options: MessageField::some(self.options.clone()),
            ..Default::default()
        }
    }

    fn log_uri(&self, id: &str, stream: &str) -> String {
        format!("file://{}", self.log(id, stream).display())
    }

    fn log(&self, id: &str, stream: &str) -> PathBuf {
        self.tmp.path().join(format!("{id}.{stream}"))
    }

    fn output(&self, id: &str, stream: &str) -> String {
        std::fs::read_to_string(self.log(id, stream)).unwrap_or_default()
    }

    async fn start(&self, id: &str, exec_id: &str) {
        self.svc
            .start(
                &ctx(),
                StartRequest {
                    id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Start {id} {exec_id}: {e:?}"));
    }

    async fn state(&self, id: &str, exec_id: &str) -> api::StateResponse {
        self.svc
            .state(
                &ctx(),
                StateRequest {
                    id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("State {id} {exec_id}: {e:?}"))
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32) {
        self.svc
            .kill(
                &ctx(),
                KillRequest {
                    id: id.into(),
                    exec_id: exec_id.into(),
                    signal,
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Kill {id} {exec_id}: {e:?}"));
    }

    /// Wait's exit status (bounded: a hang is a failure, not a stuck test).
    async fn wait(&self, id: &str, exec_id: &str) -> u32 {
        let ctx = ctx();
        let call = self.svc.wait(
            &ctx,
            WaitRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        );
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .unwrap_or_else(|_| panic!("Wait {id} {exec_id} did not return"))
            .unwrap_or_else(|e| panic!("Wait {id} {exec_id}: {e:?}"))
            .exit_status
    }

    async fn delete(&self, id: &str, exec_id: &str) -> api::DeleteResponse {
        self.svc
            .delete(
                &ctx(),
                DeleteRequest {
                    id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Delete {id} {exec_id}: {e:?}"))
    }

    /// Shutdown with no task left: the service signals the shim to exit.
    async fn shutdown(&self) {
        self.svc
            .shutdown(&ctx(), ShutdownRequest::default())
            .await
            .expect("Shutdown");
        tokio::time::timeout(Duration::from_secs(5), self.exit.wait())
            .await
            .expect("Shutdown with no task left lets the shim exit");
    }

    /// Nothing of any sandbox is left: no directory under the root, no mount under the test
    /// directory, no process naming it.
    fn assert_nothing_left(&self) {
        let dirs: Vec<_> = std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(dirs.is_empty(), "sandbox directories left: {dirs:?}");
        let mounts = mounts_under(self.tmp.path());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let procs = processes_mentioning(&self.tmp.path().display().to_string(), "host_shim");
        assert!(procs.is_empty(), "processes left: {procs:?}");
    }
}

/// containerd's runtime options (`runtimeoptions.v1.Options`) with `config_path` (field 2).
fn runtime_options(config: &Path) -> Any {
    let path = config.display().to_string();
    let mut value = vec![0x12];
    let mut len = path.len();
    while len >= 0x80 {
        value.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    value.push(len as u8);
    value.extend_from_slice(path.as_bytes());
    Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    }
}

/// An exec's process, as containerd sends it.
fn exec_spec(args: &[&str]) -> MessageField<Any> {
    MessageField::some(Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&serde_json::json!({
            "args": args, "cwd": "/", "env": ["PATH=/bin:/usr/bin"],
            "user": {"uid": 0, "gid": 0},
        }))
        .unwrap(),
        ..Default::default()
    })
}

/// The mount options of the mount at `path` (its last one), from `/proc/self/mountinfo`.
fn mount_options(path: &str) -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some(path))
        .and_then(|l| l.split_whitespace().nth(5).map(str::to_string))
}

/// Whether something is mounted exactly at `path`.
fn mounted_at(path: &Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

#[tokio::test]
async fn one_task_through_the_whole_task_api() {
    let f = Fixture::new();
    let bundle = f.bundle(
        "life",
        &["sh", "-c", "echo started; echo to-err >&2; exec sleep 1000"],
        &[],
        Rootfs::Inside,
    );
    let created = f
        .svc
        .create(&ctx(), f.create_request("life", &bundle))
        .await
        .expect("Create");
    assert!(created.pid > 0, "the sandbox's host pid: {created:?}");
    let s = f.state("life", "").await;
    assert_eq!(s.status.enum_value(), Ok(Status::CREATED));
    assert_eq!(s.bundle, bundle.display().to_string());
    assert_eq!(s.pid, created.pid);
    let again = f
        .svc
        .create(&ctx(), f.create_request("life", &bundle))
        .await;
    assert_eq!(rpc_error(again).0, Code::ALREADY_EXISTS);

    f.start("life", "").await;
    assert_eq!(
        f.state("life", "").await.status.enum_value(),
        Ok(Status::RUNNING)
    );
    let pids = f
        .svc
        .pids(
            &ctx(),
            PidsRequest {
                id: "life".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Pids");
    assert!(!pids.processes.is_empty(), "no process in the container");

    // An exec: its own output, its exit code, its state, its delete.
    f.svc
        .exec(
            &ctx(),
            ExecProcessRequest {
                id: "life".into(),
                exec_id: "e1".into(),
                spec: exec_spec(&["sh", "-c", "echo exec-out; exit 7"]),
                stdout: f.log_uri("e1", "out"),
                ..Default::default()
            },
        )
        .await
        .expect("Exec");
    assert_eq!(
        f.state("life", "e1").await.status.enum_value(),
        Ok(Status::CREATED)
    );
    f.start("life", "e1").await;
    assert_eq!(f.wait("life", "e1").await, 7);
    assert_eq!(f.output("e1", "out"), "exec-out\n");
    let s = f.state("life", "e1").await;
    assert_eq!(
        (s.status.enum_value(), s.exit_status),
        (Ok(Status::STOPPED), 7)
    );
    assert_eq!(f.delete("life", "e1").await.exit_status, 7);
    let gone = f
        .svc
        .state(
            &ctx(),
            StateRequest {
                id: "life".into(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(rpc_error(gone).0, Code::NOT_FOUND);

    // Update, then Stats sees the new limit.
    let resources = Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
        value: serde_json::to_vec(&serde_json::json!({ "pids": { "limit": 77 } })).unwrap(),
        ..Default::default()
    };
    f.svc
        .update(
            &ctx(),
            UpdateTaskRequest {
                id: "life".into(),
                resources: MessageField::some(resources),
                ..Default::default()
            },
        )
        .await
        .expect("Update");
    let stats = f
        .svc
        .stats(
            &ctx(),
            StatsRequest {
                id: "life".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Stats");
    let any = stats.stats.into_option().expect("Stats carries metrics");
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let metrics = Metrics::parse_from_bytes(&any.value).expect("cgroup v1 Metrics");
    let pids = metrics.pids.into_option().expect("pids metrics");
    assert_eq!(pids.limit, 77, "Update's pids limit: {pids:?}");
    assert!(pids.current >= 1, "{pids:?}");

    f.svc
        .pause(
            &ctx(),
            api::PauseRequest {
                id: "life".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Pause");
    assert_eq!(
        f.state("life", "").await.status.enum_value(),
        Ok(Status::PAUSED)
    );
    f.svc
        .resume(
            &ctx(),
            api::ResumeRequest {
                id: "life".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Resume");
    assert_eq!(
        f.state("life", "").await.status.enum_value(),
        Ok(Status::RUNNING)
    );

    // A running task is not deleted; a killed one exits 137 (128 + SIGKILL).
    let busy = f
        .svc
        .delete(
            &ctx(),
            DeleteRequest {
                id: "life".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(rpc_error(busy).0, Code::FAILED_PRECONDITION);
    f.kill("life", "", 9).await;
    assert_eq!(f.wait("life", "").await, 137);
    let s = f.state("life", "").await;
    assert_eq!(
        (s.status.enum_value(), s.exit_status),
        (Ok(Status::STOPPED), 137)
    );
    assert_eq!(f.output("life", "out"), "started\n");
    assert_eq!(f.output("life", "err"), "to-err\n");
    let deleted = f.delete("life", "").await;
    assert_eq!(deleted.exit_status, 137);
    // The last task is gone: so is its sandbox.
    f.assert_nothing_left();
    f.shutdown().await;
    f.assert_nothing_left();
}

#[tokio::test]
async fn a_pod_of_two_containers_shares_one_sandbox_and_overlay_rootfs_mounts_are_used() {
    let f = Fixture::new();
    let pod = f.bundle(
        "pod",
        &["sleep", "1000"],
        &[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "pod")],
        Rootfs::Inside,
    );
    let sandbox = f
        .svc
        .create(&ctx(), f.create_request("pod", &pod))
        .await
        .expect("Create of the pod's sandbox container");
    f.start("pod", "").await;

    // The app container: its rootfs is containerd's overlay of snapshots, mounted by the
    // sandbox at <bundle>/rootfs.
    let snapshots = f.tmp.path().join("snapshots");
    let lower = snapshots.join("1/fs");
    std::fs::create_dir_all(lower.parent().unwrap()).unwrap();
    kata_testkit::image::busybox_rootfs(&lower).unwrap();
    let (upper, work) = (snapshots.join("2/fs"), snapshots.join("2/work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let app = f.bundle(
        "app",
        &["sh", "-c", "echo from-app > /written; echo app-out; exit 3"],
        &[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod")],
        Rootfs::Mounted,
    );
    let mut req = f.create_request("app", &app);
    req.rootfs = vec![Mount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            "index=off".into(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}", lower.display()),
        ],
        ..Default::default()
    }];
    let joined = f.svc.create(&ctx(), req).await.expect("Create of the app");
    assert_eq!(joined.pid, sandbox.pid, "one sandbox for the pod");
    let sandboxes: Vec<_> = std::fs::read_dir(f.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(sandboxes, ["pod"], "one sandbox directory");
    assert!(mounted_at(&app.join("rootfs")), "the overlay is mounted");
    f.start("app", "").await;
    assert_eq!(f.wait("app", "").await, 3, "exit 3");
    assert_eq!(f.output("app", "out"), "app-out\n");
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "from-app\n",
        "the container wrote through containerd's overlay"
    );
    f.delete("app", "").await;
    assert!(
        !mounted_at(&app.join("rootfs")),
        "the app's rootfs is unmounted with it"
    );
    // The pod's sandbox lives on with its first container.
    assert_eq!(
        f.state("pod", "").await.status.enum_value(),
        Ok(Status::RUNNING)
    );
    // A container naming a sandbox this shim does not run is refused.
    let stray = f.bundle(
        "stray",
        &["true"],
        &[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "other-pod")],
        Rootfs::Inside,
    );
    let r = f
        .svc
        .create(&ctx(), f.create_request("stray", &stray))
        .await;
    assert_eq!(rpc_error(r).0, Code::NOT_FOUND);

    f.kill("pod", "", 9).await;
    assert_eq!(f.wait("pod", "").await, 137);
    f.delete("pod", "").await;
    f.shutdown().await;
    f.assert_nothing_left();
}

/// Issue 9 row 3: a `../` sandbox-id annotation is refused naming the annotation, and nothing
/// outside the root is touched (nor inside it: no sandbox starts).
#[tokio::test]
async fn a_dotdot_sandbox_id_annotation_is_refused_and_nothing_outside_the_root_is_touched() {
    let f = Fixture::new();
    // <root>/../../srv/app is <tmp>/srv/app: what the annotation would reach.
    let victim = f.tmp.path().join("srv/app");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "mine").unwrap();
    for (ctype, sb) in [("container", "../../srv/app"), ("container", "a/b")] {
        let bundle = f.bundle(
            "escape",
            &["true"],
            &[(CONTAINER_TYPE, ctype), (SANDBOX_ID, sb)],
            Rootfs::Inside,
        );
        let r = f
            .svc
            .create(&ctx(), f.create_request("escape", &bundle))
            .await;
        let (code, message) = rpc_error(r);
        assert_eq!(code, Code::INVALID_ARGUMENT, "{sb}: {message}");
        assert!(
            message.contains("io.kubernetes.cri.sandbox-id"),
            "{sb}: {message}"
        );
        std::fs::remove_dir_all(&bundle).unwrap();
    }
    // A task id that is a path is refused the same way.
    let bundle = f.bundle("dotdot-id", &["true"], &[], Rootfs::Inside);
    let r = f
        .svc
        .create(&ctx(), f.create_request("../../srv/app", &bundle))
        .await;
    let (code, message) = rpc_error(r);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    for call in ["Delete", "Kill"] {
        let r = match call {
            "Delete" => f
                .svc
                .delete(
                    &ctx(),
                    DeleteRequest {
                        id: "../../srv/app".into(),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
            _ => f
                .svc
                .kill(
                    &ctx(),
                    KillRequest {
                        id: "../../srv/app".into(),
                        signal: 9,
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
        };
        assert_eq!(rpc_error(r).0, Code::NOT_FOUND, "{call}");
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
    f.shutdown().await;
    f.assert_nothing_left();
}

/// Issue 9 row 4: an absolute `root.path` outside the bundle (the host's `/`, or any
/// directory) is refused naming `root.path`; nothing is mounted or shared, no sandbox is left.
#[tokio::test]
async fn an_absolute_root_path_outside_the_bundle_is_refused() {
    let f = Fixture::new();
    let elsewhere = f.tmp.path().join("elsewhere");
    kata_testkit::image::busybox_rootfs(&elsewhere).unwrap();
    let host_root_before = mount_options("/");
    for (name, root) in [
        ("host-root", PathBuf::from("/")),
        ("outside", elsewhere.clone()),
    ] {
        let bundle = f.bundle(name, &["true"], &[], Rootfs::Absolute(root));
        let r = f.svc.create(&ctx(), f.create_request(name, &bundle)).await;
        let (_, message) = rpc_error(r);
        assert!(message.contains("root.path"), "{name}: {message}");
        f.assert_nothing_left();
    }
    assert!(!mounted_at(&elsewhere), "the outside rootfs was mounted");
    assert_eq!(
        mount_options("/"),
        host_root_before,
        "the host's / was remounted"
    );
    f.shutdown().await;
    f.assert_nothing_left();
}

/// Issue 9 rows 3 and 4 at `containerd-shim-kata-v2 delete` (containerd runs it, in the
/// bundle, after a shim died): a `../` sandbox-id annotation does not make it clean up a
/// directory outside the root, and it unmounts nothing the spec names (here an absolute
/// `root.path` with a mount on it).
#[test]
fn shim_delete_touches_nothing_the_annotations_or_the_spec_name() {
    assert!(nix::unistd::geteuid().is_root(), "mounts need root");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("run/kata");
    std::fs::create_dir_all(&root).unwrap();
    let victim = tmp.path().join("srv/app");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "mine").unwrap();
    let host_dir = tmp.path().join("host-dir");
    std::fs::create_dir_all(&host_dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &host_dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["true"], "cwd": "/" },
        "root": { "path": host_dir.display().to_string() },
        "annotations": { CONTAINER_TYPE: "container", SANDBOX_ID: "../../srv/app" },
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"))
        .args(["-namespace", "host-shim", "-id", "dead-task", "-address"])
        .arg(tmp.path().join("containerd.sock"))
        .arg("delete")
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", tmp.path().join("containerd.sock.ttrpc"))
        .env("KATA_RS_ROOT_DIR", &root)
        .output()
        .unwrap();
    let still_mounted = mounted_at(&host_dir);
    let _ = nix::mount::umount(&host_dir);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "mine",
        "delete cleaned up outside the root"
    );
    assert!(still_mounted, "delete unmounted the spec's root.path");
}
