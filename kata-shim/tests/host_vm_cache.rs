//! Tier 2: the VM cache (`[factory] vm_cache_number`) with the test backend
//! (`[hypervisor.host-agent]`: the real kata-agent on this host, no VM). The cache
//! (`kata_shim::vm_cache::server::VmCache`) runs in this process, the shim's Task service
//! takes a sandbox from it over its endpoint: the pod's sandbox is the cache's, re-keyed (the
//! pod's id in `state.json`, the pod's hostname in the pod's UTS namespace, the random pool
//! reseeded), and after Delete, Shutdown and the cache's stop nothing is left. A cache that
//! is down or empty, or a pod it does not fit, means a fresh boot. Runs in seconds.
//!
//! Needs root and the kata-agent binary (see `kata_testkit::agent_binary`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim::shim::{
    CreateTaskRequest, DeleteRequest, ShutdownRequest, StartRequest, WaitRequest,
};
use containerd_shim::{ExitSignal, Task, TtrpcContext};
use kata_shim::vm_cache::server::VmCache;
use kata_shim::vm_cache::{ask, sandbox_dir, Answer, Request, ID_PREFIX};
use kata_shim::TaskService;
use kata_testkit::leaks::{mounts_under, processes_mentioning};

/// Everything logged in this test program (the shim's and the cache's lines).
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&log().lock().unwrap()).into_owned()
}

/// CRI annotations.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    config: PathBuf,
    endpoint: PathBuf,
    options: Any,
}

impl Fixture {
    fn new(vm_cache_number: u32) -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root"
        );
        log();
        let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("configuration.toml");
        let endpoint = tmp.path().join("cache.sock");
        std::fs::write(
            &config,
            format!(
                "[hypervisor.host-agent]\npath = \"{}\"\n\n[agent.kata]\ndial_timeout = 20\n\n\
                 [factory]\nvm_cache_number = {vm_cache_number}\nvm_cache_endpoint = \"{}\"\n",
                agent.display(),
                endpoint.display()
            ),
        )
        .unwrap();
        let options = runtime_options(&config);
        Fixture {
            tmp,
            config,
            endpoint,
            options,
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("run").join("kata")
    }

    fn cache(&self, number: u32) -> VmCache {
        let template =
            kata_shim::runtime_options::sandbox_builder_from(Some(&self.config), []).unwrap();
        VmCache::new(template, number, &self.root(), &self.endpoint).unwrap()
    }

    /// A bundle running `script` in busybox, the spec naming `hostname` (if any) and
    /// carrying `annotations`.
    fn bundle(
        &self,
        name: &str,
        script: &str,
        hostname: Option<&str>,
        annotations: &[(&str, &str)],
    ) -> PathBuf {
        let dir = self.tmp.path().join("bundles").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        kata_testkit::image::busybox_rootfs(&dir.join("rootfs")).expect("busybox rootfs");
        let mut spec = oci_spec::runtime::Spec::default();
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        spec.set_hostname(hostname.map(str::to_string));
        spec.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        spec.set_root(Some(
            oci_spec::runtime::RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .unwrap(),
        ));
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        dir
    }

    fn out(&self, id: &str) -> PathBuf {
        self.tmp.path().join(format!("{id}.out"))
    }

    /// A pod as the kubelet makes it: its sandbox container (`true`, the spec naming
    /// `hostname`), then an app container joining it (no hostname of its own: it sees the
    /// pod's) running `script`; each Created, Started, Waited for (exit 0) and Deleted, then
    /// Shutdown. Returns the app's output and the sandbox directory the pod ran in.
    async fn run_pod(&self, id: &str, script: &str, hostname: &str) -> (String, PathBuf) {
        let exit = Arc::new(ExitSignal::default());
        let svc = TaskService::new("vm-cache", None, exit.clone(), self.root());
        let app = format!("{id}-app");
        let pod = self.bundle(id, "true", Some(hostname), &[(CONTAINER_TYPE, "sandbox")]);
        let joining = self.bundle(
            &app,
            script,
            None,
            &[(CONTAINER_TYPE, "container"), (SANDBOX_ID, id)],
        );
        for (cid, bundle) in [(id, &pod), (app.as_str(), &joining)] {
            svc.create(
                &ctx(),
                CreateTaskRequest {
                    id: cid.into(),
                    bundle: bundle.display().to_string(),
                    stdout: format!("file://{}", self.out(cid).display()),
                    options: MessageField::some(self.options.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Create {cid}: {e:?}\n{}", logged()));
            svc.start(
                &ctx(),
                StartRequest {
                    id: cid.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Start {cid}: {e:?}"));
            let waited = tokio::time::timeout(
                Duration::from_secs(30),
                svc.wait(
                    &ctx(),
                    WaitRequest {
                        id: cid.into(),
                        ..Default::default()
                    },
                ),
            )
            .await
            .expect("Wait returns")
            .expect("Wait");
            assert_eq!(waited.exit_status, 0, "{cid}: {}", logged());
        }
        let dir = sandbox_dir(&self.root(), id);
        for cid in [app.as_str(), id] {
            svc.delete(
                &ctx(),
                DeleteRequest {
                    id: cid.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Delete {cid}: {e:?}"));
        }
        svc.shutdown(&ctx(), ShutdownRequest::default())
            .await
            .expect("Shutdown");
        tokio::time::timeout(Duration::from_secs(5), exit.wait())
            .await
            .expect("the shim exits after Shutdown");
        let out = std::fs::read_to_string(self.out(&app)).unwrap_or_default();
        (out, dir)
    }

    async fn status(&self) -> (usize, usize, u64) {
        match ask(&self.endpoint, &Request::Status, Duration::from_secs(5))
            .await
            .expect("status")
        {
            Answer::Status {
                ready,
                size,
                handed_over,
            } => (ready, size, handed_over),
            other => panic!("status answered {other:?}"),
        }
    }

    fn assert_nothing_left(&self) {
        let dirs: Vec<_> = std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(dirs.is_empty(), "sandbox directories left: {dirs:?}");
        assert!(!self.endpoint.exists(), "the endpoint is left");
        let mounts = mounts_under(self.tmp.path());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let procs = processes_mentioning(&self.tmp.path().display().to_string(), "host_vm_cache");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_takes_a_cached_sandbox_re_keyed_and_reseeded_and_stop_leaves_nothing() {
    let f = Fixture::new(2);
    let cache = Arc::new(f.cache(2));
    cache.wait_filled().await.expect("the cache fills");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .serve(async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    for _ in 0..100 {
        if f.endpoint.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.status().await, (2, 2, 0));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&f.endpoint).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the endpoint is root's only");

    let (out, dir) = f
        .run_pod("pod-one", "hostname; echo done", "cached-pod")
        .await;
    // The pod ran in a cached sandbox: a `vmcache-` directory, handed over once.
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(ID_PREFIX),
        "the pod ran in {dir:?}, not a cached sandbox"
    );
    assert_eq!(f.status().await.2, 1, "one hand-over");
    // Re-keyed: the pod's hostname in the pod's UTS namespace, which the app container
    // joins (the cached sandbox's guest had its own id's).
    assert_eq!(out, "cached-pod\ndone\n", "{}", logged());
    // Reseeded: the agent took the host's entropy for the pod's id.
    let log = logged();
    assert!(
        log.lines()
            .any(|l| l.contains("random pool reseeded") && l.contains("pod-one")),
        "no reseed logged for pod-one:\n{log}"
    );
    assert!(
        !dir.exists(),
        "the pod's sandbox directory is removed with the pod"
    );

    // The cache refills; a stop shuts down every cached sandbox.
    for _ in 0..200 {
        if f.status().await.0 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.status().await.0, 2, "the cache refilled");
    stop_tx.send(()).unwrap();
    serving.await.unwrap().expect("the cache stops");
    f.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_is_down_or_a_pod_it_does_not_fit_means_a_fresh_boot() {
    let f = Fixture::new(2);
    // No cache process: the endpoint does not answer.
    let (out, dir) = f.run_pod("pod-down", "hostname", "fresh-pod").await;
    assert_eq!(dir, f.root().join("pod-down"), "a fresh sandbox of its own");
    assert_eq!(out, "fresh-pod\n");
    let log = logged();
    assert!(
        log.lines()
            .any(|l| l.contains("VM cache down") && l.contains("pod-down")),
        "the fallback is logged:\n{log}"
    );
    f.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cache_cleans_up_the_cached_sandboxes_a_dead_one_left_not_taken_ones() {
    let f = Fixture::new(1);
    // What a cache SIGKILLed leaves: a detached cached sandbox (its agent runs on), and one
    // a shim took over (it names the pod's id).
    let builder = || {
        kata_shim::runtime_options::sandbox_builder_from(Some(&f.config), [])
            .unwrap()
            .root_dir(f.root())
    };
    let orphan = builder().id("vmcache-orphan").build().await.unwrap();
    let orphan_pids = orphan.host_pids();
    orphan.detach().await.unwrap();
    let taken = builder().id("vmcache-taken").build().await.unwrap();
    taken.detach().await.unwrap();
    let taken = kata_sandbox::Sandbox::take_over_as(
        f.root().join("vmcache-taken"),
        kata_sandbox::handover::Rekey::new("some-pod").unwrap(),
    )
    .await
    .unwrap();
    assert!(!orphan_pids.is_empty());

    let cache = f.cache(1);
    assert!(
        !f.root().join("vmcache-orphan").exists(),
        "the orphan's directory is left"
    );
    for pid in &orphan_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "the orphan's process {pid} runs on"
        );
    }
    assert!(taken.death().is_none(), "the taken sandbox was touched");
    assert_eq!(
        sandbox_dir(&f.root(), "some-pod"),
        f.root().join("vmcache-taken")
    );
    taken.shutdown().await.unwrap();
    cache.wait_filled().await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tx.send(()).unwrap();
    cache
        .serve(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    f.assert_nothing_left();
}
