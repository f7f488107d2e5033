//! `kata-lab`: the test program the nested lab runs inside L1 (`lab/init.sh` starts it in the
//! host's root, read-only, with tmpfs on /run and /tmp).
//!
//! First [`kata_lab::protocol::RUNNER_CHECKS`] (KVM's capabilities, as the built-in VMM's probe
//! asks them); then, for each VMM (`--vmm qemu`, repeatable; all by default), it boots one L2
//! sandbox through kata-sandbox and runs [`kata_lab::protocol::VMM_CHECKS`], printing one line
//! per check on stdout (L1's serial console) and the boot figure; then a summary. It exits non-zero when a
//! check failed. Every check runs under its own deadline, so a hung one fails by name and the
//! rest still report.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kata_lab::protocol::{check_line, figure_line, RUNNER_CHECKS, VMM_CHECKS};
use kata_lab::Vmm;
use kata_sandbox::{ContainerSpec, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod vfio;

/// Where the sandboxes' directories go (a tmpfs in L1).
const ROOT_DIR: &str = "/run/kata-lab";
/// The file the shared-fs check writes into the rootfs on L1 and reads in the container.
const TOKEN_FILE: &str = "lab-token";
/// Processes a sandbox may leave behind if its shutdown is broken.
const VM_PROGRAMS: &[&str] = &["qemu-system-x86_64", "virtiofsd", "vhost-device-vsock"];

/// Counts and prints the checks of one VMM.
struct Checks {
    vmm: Vmm,
    ran: usize,
    passed: usize,
}

impl Checks {
    fn report(&mut self, name: &str, result: Result<String>) -> bool {
        assert!(
            VMM_CHECKS.contains(&name),
            "check {name} is not in VMM_CHECKS"
        );
        let ok = result.is_ok();
        let result = result.map_err(|e| format!("{e:#}"));
        println!("{}", check_line(&format!("{}-{name}", self.vmm), &result));
        self.ran += 1;
        self.passed += usize::from(ok);
        ok
    }

    async fn run<F: Future<Output = Result<String>>>(
        &mut self,
        name: &str,
        timeout: Duration,
        check: F,
    ) -> bool {
        let t = Instant::now();
        let result = match tokio::time::timeout(timeout, check).await {
            Ok(r) => r.map(|d| format!("{d} ({:.1?})", t.elapsed())),
            Err(_) => Err(anyhow::anyhow!("timed out after {timeout:?}")),
        };
        self.report(name, result)
    }

    /// Reports every check from `from` on as not run.
    fn not_run(&mut self, from: &str, why: &str) {
        let start = VMM_CHECKS.iter().position(|c| *c == from).unwrap_or(0);
        for name in &VMM_CHECKS[start..] {
            self.report(name, Err(anyhow::anyhow!("not run: {why}")));
        }
    }
}

fn spec(rootfs: &Path, args: &[&str]) -> ContainerSpec {
    ContainerSpec::from_rootfs_dir(rootfs).args(args.iter().copied())
}

async fn run_vmm(vmm: Vmm, rootfs: &Path, token: &str) -> Checks {
    let mut checks = Checks {
        vmm,
        ran: 0,
        passed: 0,
    };
    let probe = kata_hypervisor::kvm::probe_kvm();
    checks.report(
        "kvm-probe",
        if probe.usable {
            Ok(probe.reason)
        } else {
            Err(anyhow::anyhow!("{}", probe.reason))
        },
    );

    let id = format!("lab-{vmm}");
    let mut builder = Sandbox::builder()
        .id(&id)
        .memory_mib(256)
        .vcpus(1)
        .root_dir(ROOT_DIR);
    if l2_console_logged() {
        let mut hv = builder.config().clone();
        hv.enable_debug = true;
        builder = builder.hypervisor_config(hv);
    }
    let t = Instant::now();
    let built = tokio::time::timeout(Duration::from_secs(300), builder.build()).await;
    let sandbox = match built {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            checks.report(
                "boot",
                Err(anyhow::Error::new(e).context("the sandbox did not start")),
            );
            checks.not_run("vhost-vsock", "the sandbox did not boot");
            return checks;
        }
        Err(_) => {
            checks.report("boot", Err(anyhow::anyhow!("no sandbox after 300 s")));
            checks.not_run("vhost-vsock", "the sandbox did not boot");
            return checks;
        }
    };
    let wall = t.elapsed();
    let timings = sandbox.boot_timings();
    let facts = sandbox.describe();
    let fact = |k: &str| {
        facts
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let accel = fact("accelerator");
    println!(
        "{}",
        figure_line(
            &format!("{vmm}-{accel}-boot-to-agent-ready"),
            timings.agent_connected.as_secs_f64() * 1000.0,
            "ms",
            &format!(
                "VM started {:.0} ms, agent connected {:.0} ms, sandbox ready {:.0} ms, build() {:.0} ms; \
                 L2 {} MiB 1 vCPU, the guest manifest's kernel and initramfs",
                timings.vm_started.as_secs_f64() * 1000.0,
                timings.agent_connected.as_secs_f64() * 1000.0,
                timings.ready.as_secs_f64() * 1000.0,
                wall.as_secs_f64() * 1000.0,
                256
            ),
        )
    );
    checks.report(
        "boot",
        if accel == "kvm" {
            Ok(format!("{facts:?} in {wall:.1?}"))
        } else {
            Err(anyhow::anyhow!(
                "the sandbox booted with accelerator {accel:?}, not KVM: {facts:?}"
            ))
        },
    );

    let agent = fact("agent");
    checks.report(
        "vhost-vsock",
        if agent.starts_with("vsock://") {
            Ok(format!("agent at {agent}"))
        } else {
            Err(anyhow::anyhow!(
                "agent at {agent:?}: not the kernel's vhost-vsock"
            ))
        },
    );

    let limit = Duration::from_secs(120);
    checks
        .run("agent-check", limit, async {
            let addr: kata_agent_client::AgentAddress = agent.parse()?;
            let a = kata_agent_client::Agent::connect(&addr, Default::default()).await?;
            a.check().await?;
            Ok("Health.Check SERVING".to_string())
        })
        .await;
    checks
        .run("uname", limit, async {
            let out = sandbox.run(spec(rootfs, &["uname", "-a"])).await?;
            let text = out.stdout_str();
            ensure!(
                out.status.success() && text.starts_with("Linux "),
                "status {}, stdout {text:?}, stderr {:?}",
                out.status,
                out.stderr_str()
            );
            Ok(text.trim().to_string())
        })
        .await;
    for (name, code) in [("exit-0", 0), ("exit-3", 3)] {
        checks
            .run(name, limit, async {
                let out = sandbox
                    .run(spec(rootfs, &["sh", "-c", &format!("exit {code}")]))
                    .await?;
                ensure!(
                    out.status.code() == Some(code),
                    "`exit {code}` gave {}",
                    out.status
                );
                Ok(format!("exit status {}", out.status))
            })
            .await;
    }
    checks
        .run("stdin-cat", limit, async {
            let mut c = sandbox
                .create_container(spec(rootfs, &["cat"]).stdin(true))
                .await?;
            let mut stdin = c.stdin().context("no stdin")?;
            let mut stdout = c.stdout().context("no stdout")?;
            c.start().await?;
            stdin.write_all(b"through L2\n").await?;
            stdin.shutdown().await?;
            drop(stdin);
            let mut got = String::new();
            stdout.read_to_string(&mut got).await?;
            let status = c.wait().await?;
            c.delete().await?;
            ensure!(got == "through L2\n", "cat echoed {got:?}");
            ensure!(status.success(), "cat exited {status}");
            Ok("cat echoed its stdin".to_string())
        })
        .await;
    let shared_fs = sandbox.config().hypervisor.shared_fs;
    checks
        .run("shared-fs-read", limit, async {
            let out = sandbox
                .run(spec(rootfs, &["cat", &format!("/{TOKEN_FILE}")]))
                .await?;
            ensure!(
                out.status.success() && out.stdout_str() == token,
                "read {:?} (status {}), wrote {token:?}",
                out.stdout_str(),
                out.status
            );
            Ok(format!("read L1's token through {shared_fs}"))
        })
        .await;
    let dir = sandbox.dir().to_path_buf();
    checks
        .run("shutdown-clean", limit, async {
            sandbox.shutdown().await?;
            drop(sandbox);
            ensure!(!dir.exists(), "{} left", dir.display());
            let mounts = kata_testkit::leaks::mounts_under(Path::new(ROOT_DIR));
            ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
            let left: Vec<_> = kata_testkit::leaks::cmdlines()
                .into_iter()
                .filter(|(_, cmd)| {
                    let program = cmd.split(' ').next().unwrap_or_default();
                    VM_PROGRAMS
                        .iter()
                        .any(|p| Path::new(program).file_name() == Some(p.as_ref()))
                })
                .collect();
            ensure!(left.is_empty(), "processes left: {left:?}");
            Ok("no process, mount or sandbox directory left".to_string())
        })
        .await;
    checks
}

/// Whether L2's console is logged (the hypervisor's `enable_debug`: its lines at debug level
/// under `kata_hypervisor`, and a kernel without `quiet`): when `KATA_LAB_LOG` asks for more
/// than the default `warn`. Off by default, as it slows L2's boot.
fn l2_console_logged() -> bool {
    std::env::var("KATA_LAB_LOG").is_ok_and(|f| f != "warn")
}

/// The VMMs named by `--vmm` (all when none is).
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Vec<Vmm>> {
    let mut vmms = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--vmm" => {
                let v = args.next().context("--vmm needs a value")?;
                vmms.push(v.parse()?);
            }
            other => bail!("unknown argument {other:?}; usage: kata-lab [--vmm qemu]..."),
        }
    }
    if vmms.is_empty() {
        vmms = Vmm::ALL.to_vec();
    }
    Ok(vmms)
}

/// The busybox rootfs the containers run in, with the shared-fs token in it.
fn rootfs(dir: &Path, token: &str) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    kata_testkit::image::busybox_rootfs(&rootfs).context("the busybox rootfs")?;
    std::fs::write(rootfs.join(TOKEN_FILE), token).context("the token file")?;
    Ok(rootfs)
}

fn main() -> ExitCode {
    // Not RUST_LOG: the sandbox's helpers (virtiofsd) would inherit it.
    let filter = std::env::var("KATA_LAB_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init();
    let vmms = match parse_args(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kata-lab: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let work = tempfile::tempdir().expect("a directory in /tmp");
    let token = format!("lab token {}\n", std::process::id());
    let rootfs = rootfs(work.path(), &token);
    let (mut ran, mut passed) = (1, 0);
    let caps = kata_hypervisor::kvm::probe_builtin_vmm();
    let caps_line = if caps.usable {
        passed += 1;
        check_line(RUNNER_CHECKS[0], &Ok(caps.reason))
    } else {
        check_line(RUNNER_CHECKS[0], &Err(caps.reason))
    };
    println!("{caps_line}");
    for vmm in vmms {
        let c = match &rootfs {
            Ok(rootfs) => runtime.block_on(run_vmm(vmm, rootfs, &token)),
            Err(e) => {
                let mut c = Checks {
                    vmm,
                    ran: 0,
                    passed: 0,
                };
                c.not_run("kvm-probe", &format!("{e:#}"));
                c
            }
        };
        println!(
            "lab-summary {vmm}: {} of {} checks passed ({})",
            c.passed,
            c.ran,
            vmm.describe()
        );
        ran += c.ran;
        passed += c.passed;
        // Issue 12: the edu device through the QEMU backend (its own sandboxes).
        if let (Vmm::Qemu, Ok(rootfs)) = (vmm, &rootfs) {
            let (r, p) = runtime.block_on(vfio::run(rootfs, ROOT_DIR));
            println!("lab-summary qemu-vfio: {p} of {r} checks passed");
            ran += r;
            passed += p;
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    println!("lab-summary runner: {passed} of {ran} checks passed");
    if passed == ran {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmms_from_the_command_line() {
        let args = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        assert_eq!(args(&[]).unwrap(), Vmm::ALL.to_vec());
        assert_eq!(args(&["--vmm", "qemu"]).unwrap(), vec![Vmm::Qemu]);
        assert!(args(&["--vmm"]).is_err());
        assert!(args(&["--vmm", "xen"]).is_err());
        assert!(args(&["qemu"]).is_err());
    }
}
