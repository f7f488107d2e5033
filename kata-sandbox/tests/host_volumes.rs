//! Tier 2: a container's volumes on the test backend (`[hypervisor.host-agent]`: the real
//! kata-agent on this host, no VM): host files and directories shared through the shared
//! directory (read-only honoured, writes reach the host), tmpfs and `/dev/shm` made by the
//! agent, bad sources refused by name, and nothing left once the container is deleted.
//!
//! Needs root (mounts, namespaces) and the kata-agent binary of this build.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_sandbox::{ContainerSpec, HypervisorConfig, HypervisorType, Sandbox};
use kata_testkit::leaks::mounts_under;
use oci_spec::runtime::{Mount, MountBuilder, Spec};

struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    agent: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the test backend needs root (namespaces, mounts)"
        );
        let agent = kata_testkit::agent_binary().unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        kata_testkit::image::busybox_rootfs(&rootfs).expect("busybox rootfs");
        Fixture { tmp, rootfs, agent }
    }

    fn host(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    async fn sandbox(&self, id: &str) -> Sandbox {
        let config = HypervisorConfig {
            path: self.agent.display().to_string(),
            ..HypervisorConfig::default()
        };
        Sandbox::builder()
            .hypervisor(HypervisorType::HostAgent)
            .hypervisor_config(config)
            .id(id)
            .root_dir(self.tmp.path().join("run"))
            .agent_timeout(Duration::from_secs(20))
            .build()
            .await
            .expect("sandbox starts")
    }

    /// A container running `script` with the default mounts and `extra` after them.
    fn spec(&self, extra: Vec<Mount>, script: &str) -> ContainerSpec {
        let mut oci = Spec::default();
        let mut mounts = oci.mounts().clone().unwrap_or_default();
        mounts.extend(extra);
        oci.set_mounts(Some(mounts));
        ContainerSpec::from_oci(oci, &self.rootfs).args(["sh", "-c", script])
    }
}

fn mount(typ: &str, source: &Path, destination: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .typ(typ)
        .source(source)
        .destination(destination)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// Nothing of the sandbox's containers is left: the shared directory is empty, nothing is
/// mounted in the sandbox directory (but the shared directory itself, which the test backend
/// makes a shared mount while the agent runs), no staging directory.
fn no_volume_left(sb: &Sandbox) {
    let shared = sb.dir().join("shared");
    let left: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", shared.display());
    let mut mounts = mounts_under(sb.dir());
    mounts.retain(|m| Path::new(m) != shared);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(!sb.dir().join("volume-staging").exists());
}

#[tokio::test]
async fn host_binds_tmpfs_and_shm_reach_the_container_and_leave_nothing() {
    let f = Fixture::new();
    let (ro, rw, single) = (f.host("ro"), f.host("rw"), f.host("single"));
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("hello"), "from the host\n").unwrap();
    std::fs::write(&single, "one file\n").unwrap();
    let sb = f.sandbox("volumes").await;
    let script = "cat /ro/hello; \
                  (echo x > /ro/new) 2>/dev/null && echo WROTE-RO; \
                  echo written > /rw/out; \
                  cat /etc/single; \
                  (echo x > /etc/single) 2>/dev/null && echo WROTE-FILE; \
                  echo t > /scratch/t && cat /scratch/t; \
                  grep -E ' /(scratch|dev/shm) ' /proc/mounts";
    let out = sb
        .run(f.spec(
            vec![
                mount("bind", &ro, "/ro", &["rbind", "ro"]),
                mount("bind", &rw, "/rw", &["rbind", "rw"]),
                mount("bind", &single, "/etc/single", &["bind", "ro"]),
                mount("tmpfs", Path::new("tmpfs"), "/scratch", &["size=1m"]),
            ],
            script,
        ))
        .await
        .unwrap();
    let text = out.stdout_str();
    assert!(
        out.status.success(),
        "{}: {text} {}",
        out.status,
        out.stderr_str()
    );
    assert!(text.contains("from the host\n"), "{text}");
    assert!(
        !text.contains("WROTE-RO"),
        "a read-only bind was written: {text}"
    );
    assert!(text.contains("one file\n"), "{text}");
    assert!(!text.contains("WROTE-FILE"), "{text}");
    assert!(text.contains("t\n"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" /scratch tmpfs ") && l.contains("size=1024k")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" /dev/shm tmpfs ") && l.contains("size=65536k")),
        "/dev/shm is the pod's 64 MiB tmpfs: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "written\n"
    );
    assert!(!ro.join("new").exists());
    no_volume_left(&sb);

    // While a container runs, its host binds are in the shared directory under Kata's names
    // (the guest sees nothing else of the host); deleting it takes them away.
    let c = sb
        .create_container(
            f.spec(
                vec![
                    mount("bind", &ro, "/ro", &["rbind", "ro"]),
                    mount("bind", &single, "/etc/single", &["bind", "ro"]),
                ],
                "sleep 60",
            )
            .id("sleeper"),
        )
        .await
        .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(sb.dir().join("shared"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "sleeper")
        .collect();
    names.sort_by_key(|n| n.ends_with("-ro"));
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with("sleeper-") && names[0].ends_with("-single"),
        "{names:?}"
    );
    assert!(names[1].starts_with("sleeper-") && names[1].ends_with("-ro"));
    let shared_ro = sb.dir().join("shared").join(&names[1]);
    assert_eq!(
        std::fs::read_to_string(shared_ro.join("hello")).unwrap(),
        "from the host\n"
    );
    assert!(
        std::fs::write(shared_ro.join("x"), "x").is_err(),
        "read-only on the host too"
    );
    c.start().await.unwrap();
    c.kill(kata_sandbox::Signal::KILL).await.unwrap();
    c.wait().await.unwrap();
    c.delete().await.unwrap();
    no_volume_left(&sb);
    sb.shutdown().await.unwrap();
    assert!(
        ro.join("hello").exists() && single.exists(),
        "sources untouched"
    );
}

#[tokio::test]
async fn bad_sources_are_refused_by_name_and_leave_nothing() {
    let f = Fixture::new();
    let good = f.host("good");
    std::fs::create_dir(&good).unwrap();
    let socket = f.host("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let outside = f.host("secret");
    std::fs::write(&outside, "s").unwrap();
    let links = f.host("links");
    std::fs::create_dir(&links).unwrap();
    std::os::unix::fs::symlink(&outside, links.join("escape")).unwrap();
    let sb = f.sandbox("bad-volumes").await;
    let defaults = Spec::default().mounts().clone().unwrap_or_default().len();
    for (bad, why) in [
        (f.host("missing"), "does not exist"),
        (socket.clone(), "a socket"),
        (links.join("escape"), "symlink leading out"),
        (PathBuf::from("/dev/null"), "a device node"),
    ] {
        let err = sb
            .create_container(f.spec(
                vec![
                    mount("bind", &good, "/good", &["rbind"]),
                    mount("bind", &bad, "/bad", &["rbind", "ro"]),
                ],
                "true",
            ))
            .await
            .unwrap_err();
        let text = err.to_string();
        let field = format!("mounts[{}].source {}", defaults + 1, bad.display());
        assert!(text.contains(&field), "{field}: {text}");
        assert!(text.contains(why), "{why}: {text}");
        assert!(sb.container_ids().is_empty());
        no_volume_left(&sb);
    }
    // The sandbox is still usable.
    let out = sb
        .run(f.spec(
            vec![mount("bind", &good, "/good", &["rbind"])],
            "ls /good && echo ok",
        ))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "ok\n");
    no_volume_left(&sb);
    sb.shutdown().await.unwrap();
}
