//! A private containerd: its own root, state, socket and (empty) config in a directory of the
//! test's, so that the host's containerd and its configuration play no part; `ctr` against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

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
