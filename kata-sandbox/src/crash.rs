//! Crash points: a test kills a process of a sandbox at a named step, as `kill -9` would,
//! in a runtime that runs for real (a shim under containerd included).
//!
//! Built only with the cargo feature `crash-points`; without it [`crash_point`] does nothing
//! and compiles to nothing. With it, the environment variable [`CRASH_ENV`] says where and
//! whom: `<step>:<victim>`, or `@<file>` to read that from a file at each point (what a
//! long-lived containerd's tests use: containerd passes its own environment to every shim).
//! A crash from a file happens once: the file is removed as it fires.
//!
//! | step | where |
//! |---|---|
//! | `boot` | the sandbox is up (VM booted, agent ready) and `state.json` is not written yet |
//! | `create` | a container was created, before the shim answers Create |
//! | `start`, `exec`, `delete`, `shutdown` | the shim received that call, before it acts |
//!
//! | victim | killed |
//! |---|---|
//! | `runtime` | this process (the shim) |
//! | `qemu`, `vsock`, `virtiofsd` | the sandbox's QEMU, vhost-device-vsock or virtiofsd: every process whose command line names the sandbox's directory and whose name is that program's |
//! | `enospc` | nobody: the fault is a full disk. The filesystem of the state root (the sandbox directory's parent) is filled by a file [`ENOSPC_FILL`] in that root, written until `ENOSPC`, so every later write there fails as on a full disk; the test frees the space by removing the file |

use std::path::Path;

/// The environment variable that arms a crash point (feature `crash-points`).
pub const CRASH_ENV: &str = "KATA_RS_CRASH_AT";

/// The file an `enospc` crash point fills the state root's filesystem with, in that root.
pub const ENOSPC_FILL: &str = ".kata-rs-enospc-fill";

/// A step a crash point marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashStep {
    /// The sandbox is up; its `state.json` is not written yet.
    Boot,
    /// A container was created; the shim has not answered yet.
    Create,
    /// Start received.
    Start,
    /// Exec received.
    Exec,
    /// Delete received.
    Delete,
    /// Shutdown received.
    Shutdown,
}

impl CrashStep {
    /// The step's name in [`CRASH_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            CrashStep::Boot => "boot",
            CrashStep::Create => "create",
            CrashStep::Start => "start",
            CrashStep::Exec => "exec",
            CrashStep::Delete => "delete",
            CrashStep::Shutdown => "shutdown",
        }
    }

    /// Every step.
    pub const ALL: [CrashStep; 6] = [
        CrashStep::Boot,
        CrashStep::Create,
        CrashStep::Start,
        CrashStep::Exec,
        CrashStep::Delete,
        CrashStep::Shutdown,
    ];
}

/// Who a crash point kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    /// This process.
    Runtime,
    /// The sandbox's QEMU.
    Qemu,
    /// The sandbox's vhost-device-vsock (hybrid vsock backend).
    Vsock,
    /// The sandbox's virtiofsd.
    Virtiofsd,
    /// Nobody is killed: the state root's filesystem is filled (see [`ENOSPC_FILL`]).
    Enospc,
}

impl Victim {
    /// The victim's name in [`CRASH_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Victim::Runtime => "runtime",
            Victim::Qemu => "qemu",
            Victim::Vsock => "vsock",
            Victim::Virtiofsd => "virtiofsd",
            Victim::Enospc => "enospc",
        }
    }

    /// The faults that kill no process: a full state directory.
    pub const FAULTS: [Victim; 1] = [Victim::Enospc];

    /// Every victim that is killed.
    pub const ALL: [Victim; 4] = [
        Victim::Runtime,
        Victim::Qemu,
        Victim::Vsock,
        Victim::Virtiofsd,
    ];

    /// The start of the program's name in `/proc/<pid>/comm` (15 bytes at most there).
    #[cfg_attr(not(feature = "crash-points"), allow(dead_code))]
    fn comm_prefix(self) -> &'static str {
        match self {
            Victim::Runtime | Victim::Enospc => "",
            Victim::Qemu => "qemu-system",
            Victim::Vsock => "vhost-device-vs",
            Victim::Virtiofsd => "virtiofsd",
        }
    }
}

/// Parses `<step>:<victim>`.
pub fn parse(spec: &str) -> Option<(CrashStep, Victim)> {
    let (step, victim) = spec.trim().split_once(':')?;
    let step = CrashStep::ALL.into_iter().find(|s| s.name() == step)?;
    let victim = Victim::ALL
        .into_iter()
        .chain(Victim::FAULTS)
        .find(|v| v.name() == victim)?;
    Some((step, victim))
}

/// Kills the victim [`CRASH_ENV`] names if it names `step` (feature `crash-points`; a no-op
/// without it). `sandbox_dir` finds the sandbox's helper processes.
#[cfg_attr(not(feature = "crash-points"), inline(always))]
pub fn crash_point(step: CrashStep, sandbox_dir: Option<&Path>) {
    #[cfg(feature = "crash-points")]
    armed::fire(step, sandbox_dir);
    #[cfg(not(feature = "crash-points"))]
    let _ = (step, sandbox_dir);
}

#[cfg(feature = "crash-points")]
mod armed {
    use super::*;
    use std::time::{Duration, Instant};

    /// What the environment asks for, if it is this step.
    fn wanted(step: CrashStep) -> Option<Victim> {
        let value = std::env::var(CRASH_ENV).ok()?;
        let (text, file) = match value.strip_prefix('@') {
            Some(file) => (std::fs::read_to_string(file).ok()?, Some(file.to_string())),
            None => (value, None),
        };
        let Some((at, victim)) = parse(&text) else {
            tracing::warn!(value = %text, "{CRASH_ENV}: expected <step>:<victim>; ignored");
            return None;
        };
        if at != step {
            return None;
        }
        if let Some(file) = file {
            // Once: the next point (a restarted shim's) finds nothing.
            let _ = std::fs::remove_file(file);
        }
        Some(victim)
    }

    pub(super) fn fire(step: CrashStep, sandbox_dir: Option<&Path>) {
        let Some(victim) = wanted(step) else {
            return;
        };
        tracing::warn!(
            step = step.name(),
            victim = victim.name(),
            "crash point: killing"
        );
        if victim == Victim::Runtime {
            // SAFETY: kill(2) on this process's own pid with SIGKILL; no memory is involved.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            return;
        }
        let Some(dir) = sandbox_dir else {
            tracing::warn!(
                step = step.name(),
                "crash point: no sandbox yet, nothing killed"
            );
            return;
        };
        if victim == Victim::Enospc {
            let root = dir.parent().unwrap_or(dir);
            let filled = fill(&root.join(ENOSPC_FILL));
            tracing::warn!(step = step.name(), root = %root.display(), filled, "crash point: state root filled");
            return;
        }
        let needle = format!("{}/", dir.display());
        let victims: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                comm.starts_with(victim.comm_prefix())
                    && String::from_utf8_lossy(&cmdline).contains(&needle)
            })
            .collect();
        for pid in &victims {
            // SAFETY: kill(2) with SIGKILL on a pid read from /proc; no memory is involved.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        // Dead before the step goes on, as if it had died just then.
        let t0 = Instant::now();
        while victims
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}/cmdline")).exists() && !zombie(*pid))
            && t0.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(step = step.name(), victim = victim.name(), killed = ?victims, "crash point: killed");
    }

    /// Writes `file` until its filesystem is full; the bytes written.
    pub(super) fn fill(file: &Path) -> u64 {
        use std::io::Write;
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        else {
            return 0;
        };
        let mut written = 0u64;
        // Big chunks first, then single pages and bytes: nothing is left for anyone.
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0xa5u8; chunk];
            while let Ok(n) = f.write(&buf) {
                if n == 0 {
                    break;
                }
                written += n as u64;
            }
        }
        let _ = f.sync_all();
        written
    }

    fn zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_typos_do_not() {
        assert_eq!(
            parse("boot:runtime"),
            Some((CrashStep::Boot, Victim::Runtime))
        );
        assert_eq!(parse("exec:qemu\n"), Some((CrashStep::Exec, Victim::Qemu)));
        assert_eq!(
            parse("delete:virtiofsd"),
            Some((CrashStep::Delete, Victim::Virtiofsd))
        );
        for bad in [
            "",
            "boot",
            "boot:",
            ":qemu",
            "bot:qemu",
            "boot:qemux",
            "boot:qemu:x",
            "boot:enospc:x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        for s in CrashStep::ALL {
            for v in Victim::ALL.into_iter().chain(Victim::FAULTS) {
                assert_eq!(parse(&format!("{}:{}", s.name(), v.name())), Some((s, v)));
            }
        }
    }

    #[cfg(feature = "crash-points")]
    #[test]
    fn a_file_spec_fires_once_and_only_at_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crash");
        // A helper victim with no sandbox dir: nothing to kill, but the file is consumed.
        std::fs::write(&file, "exec:qemu").unwrap();
        // SAFETY (edition note): tests in this module are the only readers of CRASH_ENV.
        std::env::set_var(CRASH_ENV, format!("@{}", file.display()));
        armed::fire(CrashStep::Start, None);
        assert!(file.exists(), "fired at the wrong step");
        armed::fire(CrashStep::Exec, None);
        assert!(!file.exists(), "the file was not consumed");
        std::env::remove_var(CRASH_ENV);
    }

    #[cfg(feature = "crash-points")]
    #[test]
    fn enospc_fills_the_state_root_until_writes_fail() {
        use std::io::Write;
        let root = tempfile::tempdir().unwrap();
        if nix::mount::mount(
            Some("tmpfs"),
            root.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=256k"),
        )
        .is_err()
        {
            assert!(!nix::unistd::geteuid().is_root(), "root could not mount");
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let sandbox = root.path().join("sb");
        std::fs::create_dir(&sandbox).unwrap();
        let filled = armed::fill(&root.path().join(ENOSPC_FILL));
        let e = std::fs::File::create(sandbox.join("state.json"))
            .and_then(|mut f| f.write_all(&[b'x'; 8192]).and_then(|()| f.sync_all()));
        let _ = nix::mount::umount2(root.path(), nix::mount::MntFlags::MNT_DETACH);
        assert!(filled > 128 << 10, "only {filled} bytes filled");
        assert_eq!(
            e.expect_err("a write after the fill succeeded")
                .raw_os_error(),
            Some(libc::ENOSPC)
        );
    }
}
