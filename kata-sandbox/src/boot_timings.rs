//! [`BootTimings`]: where the time of a sandbox start goes, phase by phase.
//!
//! Every mark is the time since the start began (after the configuration was validated), taken
//! on the host where the runtime observes a boundary:
//!
//! | phase | ends when |
//! |---|---|
//! | config and validation | `SandboxBuilder::finish` returned (measured before the clock starts) |
//! | host resources | the shared-directory daemon (virtiofsd) answers, the pod network and host cgroup are set up |
//! | helpers | the VMM's helper processes are ready (vhost-device-vsock created its socket; zero with the kernel's vhost-vsock) |
//! | VMM spawn | the VMM runs and answers on its control socket (QEMU: QMP after the console reader attached; the guest runs from here) |
//! | guest boot | the guest agent's port first accepts a connection (firmware, kernel, `/init`, agent start) |
//! | agent connect | the ttRPC connection is made and answers |
//! | CreateSandbox | the pod network is in the guest and `CreateSandbox` returned |
//!
//! `vm_started` (the hypervisor's start returned) lies inside the guest boot: QEMU's start
//! also waits for the guest driver to start the vsock device.
//!
//! The guest boot phase cannot be split from the host alone; `benches/boot_phases.rs` takes
//! kernel to `/init` out of it with the guest's own clock (the kernel log's timestamp of
//! starting `/init`), leaving firmware and the agent's start.

use std::time::Duration;

tokio::task_local! {
    /// The time `SandboxBuilder::build` spent validating the configuration, for the start
    /// it runs.
    static VALIDATION: Duration;
}

/// Runs `start` with `validation` recorded as the time the configuration took to validate.
pub(crate) async fn with_validation<F: std::future::Future>(
    validation: Duration,
    start: F,
) -> F::Output {
    VALIDATION.scope(validation, start).await
}

/// The validation time of the start running in this task (zero outside `build`).
pub(crate) fn validation() -> Duration {
    VALIDATION.try_with(|d| *d).unwrap_or_default()
}

/// Time taken by each step of starting a sandbox, for callers that report start-up.
///
/// The marks are cumulative (since the start began); [`phases`](Self::phases) gives the
/// duration of each phase. A handler without a VM (wasm, linux) has every VM mark at `ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootTimings {
    /// Validating the configuration (`SandboxBuilder::finish`), before the other marks' clock
    /// started; zero when the sandbox was started from a finished configuration.
    pub validation: Duration,
    /// Until the host resources were set up (shared-directory daemon, network, host cgroup).
    pub host_resources: Duration,
    /// Until the VMM's helper processes were ready (the vhost-user vsock backend); equal to
    /// `host_resources` when the VMM needs none started.
    pub helpers_started: Duration,
    /// Until the VMM ran and answered on its control socket (QEMU: QMP); equal to
    /// `vm_started` for a backend that does not report it.
    pub vmm_running: Duration,
    /// Until the VM was running (the hypervisor's start returned; QEMU's waits for the guest
    /// to start its vsock device, so this is inside the guest boot).
    pub vm_started: Duration,
    /// Until the guest agent's port first accepted a connection (the guest has booted).
    pub guest_answering: Duration,
    /// Until the agent answered over ttRPC.
    pub agent_connected: Duration,
    /// Until the sandbox was ready for containers.
    pub ready: Duration,
}

/// The phase names [`BootTimings::phases`] returns, in order.
pub const BOOT_PHASES: [&str; 7] = [
    "config and validation",
    "host resources",
    "helpers",
    "VMM spawn",
    "guest boot",
    "agent connect",
    "CreateSandbox",
];

impl BootTimings {
    /// Marks for a handler that starts no VM: every mark at `ready`.
    #[cfg_attr(not(any(feature = "wasm", feature = "linux")), allow(dead_code))]
    pub(crate) fn without_vm(ready: Duration) -> Self {
        BootTimings {
            validation: validation(),
            host_resources: ready,
            helpers_started: ready,
            vmm_running: ready,
            vm_started: ready,
            guest_answering: ready,
            agent_connected: ready,
            ready,
        }
    }

    /// The duration of each phase, named as in [`BOOT_PHASES`]; they add up to
    /// `validation + ready`. A mark earlier than the one before it (never set) counts zero.
    pub fn phases(&self) -> Vec<(&'static str, Duration)> {
        let marks = [
            self.host_resources,
            self.helpers_started,
            self.vmm_running,
            self.guest_answering,
            self.agent_connected,
            self.ready,
        ];
        let mut out = vec![(BOOT_PHASES[0], self.validation)];
        let mut prev = Duration::ZERO;
        for (name, mark) in BOOT_PHASES[1..].iter().zip(marks) {
            let mark = mark.max(prev);
            out.push((*name, mark - prev));
            prev = mark;
        }
        out
    }

    /// The whole start, validation included.
    pub fn total(&self) -> Duration {
        self.validation + self.ready.max(self.agent_connected)
    }
}

impl std::fmt::Display for BootTimings {
    /// `phase=<ms> ...` on one line, in milliseconds with one decimal.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, d) in self.phases() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{name} {:.1} ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn phases_are_the_differences_of_the_marks_and_add_up_to_the_total() {
        let t = BootTimings {
            validation: ms(2),
            host_resources: ms(30),
            helpers_started: ms(50),
            vmm_running: ms(120),
            vm_started: ms(700),
            guest_answering: ms(1100),
            agent_connected: ms(1110),
            ready: ms(1200),
        };
        let phases = t.phases();
        let names: Vec<_> = phases.iter().map(|p| p.0).collect();
        assert_eq!(names, BOOT_PHASES);
        let durations: Vec<_> = phases.iter().map(|p| p.1).collect();
        assert_eq!(
            durations,
            [ms(2), ms(30), ms(20), ms(70), ms(980), ms(10), ms(90)]
        );
        assert_eq!(durations.iter().sum::<Duration>(), t.total());
        assert!(t
            .to_string()
            .starts_with("config and validation 2.0 ms, host resources 30.0 ms"));
    }

    #[test]
    fn an_unset_mark_counts_zero_and_the_next_phase_takes_the_time() {
        // No vsock helper (vhost-vsock): helpers_started was never set past host_resources.
        let t = BootTimings {
            host_resources: ms(30),
            helpers_started: Duration::ZERO,
            vmm_running: ms(100),
            vm_started: ms(600),
            guest_answering: ms(900),
            agent_connected: ms(900),
            ready: ms(950),
            ..Default::default()
        };
        let p = t.phases();
        assert_eq!(p[2], ("helpers", Duration::ZERO));
        assert_eq!(p[3], ("VMM spawn", ms(70)));
        assert_eq!(p.iter().map(|p| p.1).sum::<Duration>(), t.total());
    }

    #[test]
    fn a_handler_without_a_vm_has_all_its_time_in_host_resources() {
        let t = BootTimings::without_vm(ms(40));
        let p = t.phases();
        assert_eq!(p[1], ("host resources", ms(40)));
        assert!(p[2..].iter().all(|p| p.1.is_zero()), "{p:?}");
    }

    #[tokio::test]
    async fn the_validation_time_reaches_the_start_it_wraps_only() {
        assert_eq!(validation(), Duration::ZERO);
        let inside = with_validation(ms(3), async { validation() }).await;
        assert_eq!(inside, ms(3));
        assert_eq!(validation(), Duration::ZERO);
    }
}
