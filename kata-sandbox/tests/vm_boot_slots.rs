//! Tier 3 (QEMU, TCG here): boot admission (issue 15, `virt/boot_slots.rs`) with real guests.
//!
//! With `KATA_RS_BOOT_SLOTS=1` two sandboxes built at once must boot one after the other: the
//! second is admitted only once the first's start is over. A start's [`BootTimings`] clock
//! starts when it is admitted, so `build()`'s end less its `ready` mark is (at or after) the
//! moment it was admitted; the later-admitted start's must not come before the earlier's
//! `build()` returned (0.5 s of slack for the return itself). Without admission both would be
//! admitted at once, seconds before either ends. The wait is printed.
//!
//! [`BootTimings`]: kata_sandbox::BootTimings

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kata_sandbox::{ContainerSpec, HypervisorType, Sandbox};
use kata_testkit::harness::{booted, NoGuest, Suite};
use kata_testkit::leaks::mounts_under;

#[path = "support/busybox_root.rs"]
mod busybox_root;
use busybox_root::Env;

/// What one start showed, in seconds from the common start.
struct Seen {
    sandbox: Sandbox,
    /// When its boot's clock started (it was admitted at or before this).
    admitted: f64,
    /// When `build()` returned.
    ended: f64,
}

async fn start(env: &Env, id: &str, t0: Instant) -> Result<Seen> {
    let sandbox = Sandbox::builder()
        .id(id)
        .hypervisor(HypervisorType::Qemu)
        .memory_mib(256)
        .vcpus(1)
        .root_dir(&env.root)
        .build()
        .await
        .context(NoGuest)?;
    let ended = t0.elapsed().as_secs_f64();
    let admitted = ended - sandbox.boot_timings().ready.as_secs_f64();
    Ok(Seen {
        sandbox,
        admitted,
        ended,
    })
}

async fn case_two_starts_with_one_slot_boot_in_turn(env: Arc<Env>) -> Result<()> {
    let t0 = Instant::now();
    let (a, b) = tokio::join!(start(&env, "vm-slots-a", t0), start(&env, "vm-slots-b", t0));
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            // The first error is the case's (NoGuest context kept); a start that worked stops.
            let mut errors = Vec::new();
            for r in [a, b] {
                match r {
                    Ok(s) => {
                        let _ = s.sandbox.shutdown().await;
                    }
                    Err(e) => errors.push(e),
                }
            }
            return Err(errors.remove(0));
        }
    };
    booted();
    let (first, second) = match a.admitted <= b.admitted {
        true => (&a, &b),
        false => (&b, &a),
    };
    let checked = async {
        // Both run: the second start is a whole sandbox too.
        for s in [first, second] {
            let out = s
                .sandbox
                .run(ContainerSpec::from_rootfs_dir(&env.rootfs).args(["true"]))
                .await?;
            ensure!(out.status.success(), "{}", out.status);
        }
        ensure!(
            second.admitted + 0.5 >= first.ended,
            "with KATA_RS_BOOT_SLOTS=1 the second start was admitted at {:.1} s, before the \
             first's build() returned at {:.1} s: both booted at once",
            second.admitted,
            first.ended
        );
        println!(
            "vm_boot_slots: one slot: the first start admitted at {:.1} s, ready at {:.1} s; the \
             second admitted at {:.1} s (waited {:.1} s), ready at {:.1} s",
            first.admitted, first.ended, second.admitted, second.admitted, second.ended
        );
        Ok(())
    }
    .await;
    let dirs = [a.sandbox.dir().to_path_buf(), b.sandbox.dir().to_path_buf()];
    a.sandbox.shutdown().await?;
    b.sandbox.shutdown().await?;
    checked?;
    for d in dirs {
        ensure!(!d.exists(), "{} left", d.display());
    }
    let mounts = mounts_under(&env.root);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    // This process's starts share one slot (other processes keep their own setting).
    std::env::set_var("KATA_RS_BOOT_SLOTS", "1");
    Suite::new("vm_boot_slots")
        .timeout(Duration::from_secs(400))
        .case(
            "two_starts_with_one_slot_boot_in_turn",
            case_two_starts_with_one_slot_boot_in_turn,
        )
        .on_failure(Env::cleanup_all)
        .run_with(Env::setup())
}
