//! A private containerd: its own root, state, socket and (empty) config in a directory of the
//! test's, so that the host's containerd and its configuration play no part; `ctr` against it.
//!
//! The shim's containerd suites (kata-shim's `containerd_*.rs`, `crash_matrix.rs`) start theirs
//! with [`ShimContainerd`] (a temporary directory of its own, `PATH` starting with the shim
//! cargo built, images imported) and check what they need with [`missing`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Why a containerd suite cannot run here, if it cannot: not root, a program of `tools`
/// (beyond `containerd` and `ctr`, which are always needed) not on `PATH`, or, with
/// `guest_manifest`, no guest image there (`make guest` builds it).
pub fn missing(tools: &[&str], guest_manifest: Option<&Path>) -> Option<String> {
    let mut all = vec!["containerd", "ctr"];
    all.extend_from_slice(tools);
    if let Some(reason) = crate::missing_root_or_tools(&all) {
        return Some(reason);
    }
    match guest_manifest {
        Some(m) if !m.is_file() => Some(format!(
            "no guest image ({} is missing: run `make guest`)",
            m.display()
        )),
        _ => None,
    }
}

/// A [`Containerd`] in a temporary directory of its own (removed on drop, after containerd has
/// stopped), whose `PATH` starts with the directory of the shim under test: the setup of every
/// containerd suite of the shim. Derefs to the [`Containerd`].
pub struct ShimContainerd {
    ctr: Containerd,
    /// The shim's file name and `ctr`'s namespace (what [`ShimLeftovers`] looks for).
    shim_name: String,
    namespace: String,
    work: tempfile::TempDir,
}

impl ShimContainerd {
    /// Starts containerd in a fresh temporary directory named `<prefix>...` with `options`,
    /// its `PATH` starting with `shim`'s directory (`options.path_first` is ignored).
    pub fn start(prefix: &str, shim: &Path, options: &StartOptions<'_>) -> Result<Self> {
        let work = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let shim_dir = shim
            .parent()
            .with_context(|| format!("the shim {} has no directory", shim.display()))?;
        let ctr = Containerd::start_with(
            work.path(),
            &StartOptions {
                path_first: Some(shim_dir),
                ..*options
            },
        )?;
        Ok(ShimContainerd {
            ctr,
            shim_name: shim
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            namespace: options.namespace.unwrap_or("default").to_string(),
            work,
        })
    }

    /// [`start`](Self::start) with only a namespace for `ctr`, and the busybox test image
    /// imported ([`import_busybox`](Self::import_busybox)): what most suites need.
    pub fn start_with_busybox(prefix: &str, shim: &Path, namespace: &str) -> Result<Self> {
        let ctr = Self::start(
            prefix,
            shim,
            &StartOptions {
                namespace: Some(namespace),
                ..StartOptions::default()
            },
        )?;
        ctr.import_busybox()?;
        Ok(ctr)
    }

    /// The temporary directory: containerd's root, state, socket and log, and the test's files.
    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    /// What is left now of this suite's shims (its shim binary in its namespace) and of the
    /// sandboxes under `/run/kata` whose ids start with `prefix` ([`ShimLeftovers::now`]).
    pub fn leftovers(&self, prefix: &str) -> ShimLeftovers {
        ShimLeftovers::now(
            &self.shim_name,
            &self.namespace,
            self.dir(),
            Path::new("/run/kata"),
            prefix,
        )
    }

    /// The containerd.
    pub fn containerd(&self) -> &Containerd {
        &self.ctr
    }

    /// `ctr image import` of an image tarball.
    pub fn import(&self, tar: &Path) -> Result<()> {
        let tar = tar
            .to_str()
            .with_context(|| format!("image path {} is not UTF-8", tar.display()))?;
        self.ctr.ok(&["image", "import", tar])?;
        Ok(())
    }

    /// Builds the busybox test image ([`crate::image::busybox_image_tar`],
    /// [`crate::image::IMAGE_NAME`]) in [`dir`](Self::dir) and imports it.
    pub fn import_busybox(&self) -> Result<()> {
        let image = crate::image::busybox_image_tar(&self.dir().join("busybox.tar"))?;
        self.import(&image.path)
    }
}

impl std::ops::Deref for ShimContainerd {
    type Target = Containerd;

    fn deref(&self) -> &Containerd {
        &self.ctr
    }
}

/// What a containerd suite of the shim may leave behind, counted: the shim processes of its
/// namespace, the mounts of its sandboxes (named by their id prefix) and of containerd's
/// state, and its sandbox directories. Compare one taken before the cases with one after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimLeftovers {
    /// Shim processes whose command line names the namespace.
    pub shims: usize,
    /// Mounts under `<root>/<prefix>...` or containerd's state directory.
    pub mounts: usize,
    /// The directories `<root>/<prefix>...`, sorted.
    pub sandbox_dirs: Vec<String>,
}

impl ShimLeftovers {
    /// What is there now of the shims in `namespace` (their binary named `shim`) and of the
    /// sandboxes whose ids start with `prefix` under the state root `root` (`/run/kata`), for
    /// the containerd in `containerd_dir`.
    pub fn now(
        shim: &str,
        namespace: &str,
        containerd_dir: &Path,
        root: &Path,
        prefix: &str,
    ) -> ShimLeftovers {
        let shims = crate::leaks::cmdlines()
            .iter()
            .filter(|(_, c)| c.contains(shim) && c.contains(namespace))
            .count();
        let state = containerd_dir.join("state").display().to_string();
        let ours = format!("{}/{prefix}", root.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&ours) || l.contains(&state))
            .count();
        let mut sandbox_dirs: Vec<String> = std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default();
        sandbox_dirs.sort();
        ShimLeftovers {
            shims,
            mounts,
            sandbox_dirs,
        }
    }

    /// Nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == ShimLeftovers::default()
    }
}

/// How [`Containerd::start_with`] starts containerd.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions<'a> {
    /// Passed to every `ctr` (none: ctr's default).
    pub namespace: Option<&'a str>,
    /// Put in front of containerd's `PATH` (where it finds shims).
    pub path_first: Option<&'a Path>,
    /// The text of containerd's config.toml (none: `version = 2`, the defaults).
    pub config: Option<&'a str>,
    /// A network namespace to run containerd in (`/run/netns/<name>`).
    pub netns: Option<&'a Path>,
    /// More environment for containerd, which its shims inherit.
    pub env: &'a [(&'a str, &'a str)],
}

/// A containerd of our own, stopped on drop (SIGTERM, then SIGKILL after 10 s).
pub struct Containerd {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
    namespace: Option<String>,
}

impl Containerd {
    /// Starts containerd with root, state, socket, config and log in `dir`, and waits (20 s at
    /// most) until `ctr version` answers. `namespace` is passed to every `ctr` (none: ctr's
    /// default); `path_first` is put in front of containerd's `PATH` (where it finds shims).
    pub fn start(dir: &Path, namespace: Option<&str>, path_first: Option<&Path>) -> Result<Self> {
        Self::start_with(
            dir,
            &StartOptions {
                namespace,
                path_first,
                ..StartOptions::default()
            },
        )
    }

    /// [`start`](Self::start) with a config of the caller's (`options.config`, else an empty
    /// one) and, with `options.netns`, inside that network namespace (`nsenter --net=<path>`,
    /// which, unlike `ip netns exec`, leaves `/sys` and the cgroup mounts as they are).
    pub fn start_with(dir: &Path, options: &StartOptions<'_>) -> Result<Self> {
        let (namespace, path_first) = (options.namespace, options.path_first);
        let socket = dir.join("containerd.sock");
        // An empty config by default: without the host's /etc/containerd/config.toml.
        let config = dir.join("config.toml");
        std::fs::write(&config, options.config.unwrap_or("version = 2\n"))?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let mut cmd = match options.netns {
            Some(netns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg("containerd");
                cmd
            }
            None => Command::new("containerd"),
        };
        cmd.arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(first) = path_first {
            let path = format!(
                "{}:{}",
                first.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            cmd.env("PATH", path);
        }
        cmd.envs(options.env.iter().copied());
        let child = cmd.spawn().context("spawn containerd")?;
        let c = Containerd {
            child,
            socket,
            dir: dir.to_path_buf(),
            namespace: namespace.map(str::to_string),
        };
        let started = Instant::now();
        while c.ctr(&["version"]).status.code() != Some(0) {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("containerd did not come up: {}", c.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// The socket containerd serves (its `--address`; CRI clients connect here too).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of containerd's log under a heading, for a suite's diagnostics.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let mut out = String::from("--- containerd log (last lines) ---");
        for l in &lines[lines.len().saturating_sub(n)..] {
            out.push('\n');
            out.push_str(l);
        }
        out
    }

    /// Runs `ctr args`, killed after `timeout`: whether it succeeded, and its stderr (trimmed).
    /// A `ctr` still running after `timeout` is an error naming the call.
    pub fn ctr_within(&self, args: &[&str], timeout: Duration) -> Result<(bool, String)> {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run ctr")?;
        let t0 = Instant::now();
        while child.try_wait()?.is_none() {
            if t0.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`ctr {}` hung for {timeout:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    /// Whether `ctr <what> ls` (`task`, `container`) lists `id`.
    pub fn lists(&self, what: &str, id: &str) -> bool {
        let listed = self.ctr(&[what, "ls"]);
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id))
    }

    /// A `ctr` command against this containerd (address and namespace set, stdin null).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket);
        if let Some(ns) = &self.namespace {
            cmd.arg("--namespace").arg(ns);
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr args` to the end; panics only if ctr cannot be run at all.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run ctr")
    }

    /// Runs ctr, fails with its status, stdout and stderr if it does not succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args);
        ensure!(
            out.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The status column of `ctr task ls` for `id`.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
    }

    /// The pid column of `ctr task ls` for `id`.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    }

    /// Waits until [`task_status`](Self::task_status) of `id` is `status`; fails after `timeout`.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let s = self.task_status(id);
            if s.as_deref() == Some(status) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("task {id} is {s:?}, not {status}, after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes a task and container whatever their state (cleanup after a failed case).
    pub fn force_remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
        let _ = self.ctr(&["task", "delete", "-f", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
