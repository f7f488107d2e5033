//! What L1 says on its serial console, and what the host expects it to say.
//!
//! Every check is one line, `lab-check <name> ok|fail <detail>`; a figure (a measurement, not
//! a test) is `lab-figure <name> <value> <unit> <detail>`. The names are fixed here, so the
//! host can tell a check that failed from one that never ran: the L1 checks of `lab/init.sh`
//! ([`L1_CHECKS`]), the runner's own ([`RUNNER_CHECKS`]) and, for every VMM the runner drives,
//! [`VMM_CHECKS`] prefixed with the VMM's name (`qemu-boot`, `builtin-boot`) less the ones that
//! VMM does not have ([`Vmm::checks`]).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The start of a check line.
pub const CHECK_PREFIX: &str = "lab-check ";
/// The start of a figure line.
pub const FIGURE_PREFIX: &str = "lab-figure ";

/// The checks `lab/init.sh` runs in L1 before the runner starts.
pub const L1_CHECKS: &[&str] = &[
    // The host's root, read-only over virtio-fs: the runner, QEMU, the L2 guest image.
    "l1-hostroot",
    // kvm-amd loaded on the emulated SVM: /dev/kvm.
    "l1-kvm",
    // vhost_vsock loaded: /dev/vhost-vsock (absent on this host).
    "l1-vhost-vsock",
    // QEMU's edu device behind the emulated IOMMU, bound to vfio-pci: /dev/vfio/<group>.
    "l1-vfio-edu",
];

/// The checks the runner runs once, before any VMM.
pub const RUNNER_CHECKS: &[&str] = &[
    // kata-hypervisor's probe for the built-in VMM: L1's KVM answers the API version and every
    // capability the built-in VMM needs (irqchip, irqfd, ioeventfd, ...).
    "l1-kvm-caps",
];

/// The checks the runner runs with each VMM (as `<vmm>-<check>`).
pub const VMM_CHECKS: &[&str] = &[
    // kata-hypervisor's KVM probe finds L1's KVM usable (detection, not assumption).
    "kvm-probe",
    // A sandbox boots L2 with KVM and its agent answers.
    "boot",
    // The agent is reached over the kernel's vhost-vsock (not the hybrid-vsock backend). QEMU
    // only: the built-in VMM's agent is on a hybrid vsock (`hvsock://`).
    "vhost-vsock",
    // The agent's Health.Check answers SERVING.
    "agent-check",
    // A container's `uname -a`.
    "uname",
    // Exit codes reach the caller.
    "exit-0",
    "exit-3",
    // stdin through `cat` and back.
    "stdin-cat",
    // A file written into the rootfs on L1, read in the container through the shared fs.
    "shared-fs-read",
    // Built-in only: the agent's line, printed on the guest's /dev/console (hvc0), is read
    // back through kata-vmm's virtio console.
    "console",
    // Built-in only: every vCPU and device thread of the in-process VMM runs under its seccomp
    // filter (`Seccomp: 2`, `NoNewPrivs: 1`), the runner's own main thread does not.
    "threads-confined",
    // Built-in only: a thread confined as a vCPU or the device thread (the same filters) gets
    // EPERM for execve, socket(AF_INET), a device node and uname, which no allow-list names.
    "threads-allow-list",
    // Built-in only: every vCPU thread of the in-process VMM is in the sandbox's host cgroup
    // (`/proc/self/task/<tid>/cgroup`), as QEMU's vCPU threads are.
    "threads-cgroup",
    // The sandbox shuts down and leaves no process, mount or directory in L1 (and, for the
    // in-process built-in VMM, no `kata-vcpu-*`/`kata-vmm-*` thread in the runner).
    "shutdown-clean",
    // Built-in only: a container in a VM on a pod network (a veth pair's `eth0` in a pod
    // namespace, joined to a tap by tc) reaches the peer end: kata-vmm's virtio-net.
    "pod-network",
    // Built-in only: where KVM passes the built-in VMM's probe it is the default hypervisor
    // (a builder with nothing configured starts from [hypervisor.dragonball]).
    "default-vmm",
    // Built-in only: a sandbox from config/configuration-dragonball.toml as shipped boots and
    // runs a container that sees the file's default_memory.
    "dragonball-config",
    // Built-in only: a container's memory limit grows the VM through kata-vmm's virtio-mem
    // (`enable_virtio_mem`): the guest's MemTotal grows by what was plugged (src/mem_hotplug.rs).
    "memory-hotplug",
    // Built-in only: with `reclaim_guest_freed_memory` the pages a container wrote and freed
    // go back to the host through the balloon's free page reporting (the VM's memfd shrinks).
    "balloon-reporting",
    // Built-in only: a container's CPU limit grows the VM by a parked vCPU (no ACPI: present in
    // the MP table, booted by the guest when onlined); the container sees 2 CPUs online and
    // works on CPU 1 (src/cpu_hotplug.rs).
    "cpu-hotplug",
    // Built-in only: a container's ext4 block volume is hot-plugged as virtio-blk on
    // virtio-pci onto a spare root port, read, unplugged with the container, and the port
    // reused by a second container (src/blk_hot.rs).
    "blk-hot",
    // Built-in only: an interface added to the pod's namespace after boot is hot-plugged by
    // rescan_network as virtio-net on virtio-pci onto a spare root port; a container sends
    // over it; removed, the NIC is unplugged and the port taken again (src/net_hot.rs).
    "net-hot",
    // VM templating (`enable_template`). QEMU: three sandboxes from one template, each
    // at its own vsock CID with the host's clock, against a fresh boot; then two virtio-fs
    // clones, each with its own share hot-plugged after the restore (src/template.rs). The
    // built-in VMM (builtin_template: kata-vmm's snapshot and restore): two clones restored
    // from one template, each container reading its own marker through its own inline
    // virtio-fs share (src/builtin_template.rs).
    "template",
];

/// The [`VMM_CHECKS`] only the QEMU backend runs.
pub const QEMU_ONLY_CHECKS: &[&str] = &["vhost-vsock"];

/// The [`VMM_CHECKS`] only the built-in VMM runs (QEMU's confinement is a filter on its whole
/// process, tested in kata-hypervisor).
pub const BUILTIN_ONLY_CHECKS: &[&str] = &[
    "memory-hotplug",
    "balloon-reporting",
    "cpu-hotplug",
    "console",
    "threads-confined",
    "threads-allow-list",
    "threads-cgroup",
    "pod-network",
    "default-vmm",
    "dragonball-config",
    "blk-hot",
    "net-hot",
];

/// The VFIO checks with the built-in VMM (issue 12, `src/vfio.rs`), reported as
/// `builtin-<name>`: cold-plug on kata-vmm's PCI root bus, BAR0 in `guest-kernel` mode, the
/// proof program in `vfio` mode, its MSI and INTx (`vfio-msi`, `vfio-intx`), hot-plug onto a
/// spare root port and its unplug. Run after every VMM's set, before the crash row.
pub const BUILTIN_VFIO_CHECKS: &[&str] = &[
    "vfio-cold",
    "vfio-bar0-guest-kernel",
    "vfio-mode-cold",
    "vfio-msi",
    "vfio-intx",
    // A virtio-rng (MSI-X only, modern) driven by L2's kernel through the emulated MSI-X
    // table: its vectors counting in /proc/interrupts while /dev/hwrng is read.
    "vfio-msix",
    "vfio-hot-root-port",
    // INTx of the edu hot-plugged onto a spare root port (its slot's INTA# declared at boot).
    "vfio-intx-hot-root-port",
    // The edu behind kata-vmm's PCIe switch (root port, upstream port, downstream port).
    "vfio-cold-switch-port",
    "vfio-mode-cold-switch-port",
    "vfio-hot-switch-port",
    // The proof program on the edu hot-plugged there (in `vfio-hot-switch-port`'s sandbox).
    "vfio-mode-hot-switch-port",
    // The edu in slot 1 of kata-vmm's PCI-to-PCI bridge.
    "vfio-cold-bridge-port",
    "vfio-mode-cold-bridge-port",
    "vfio-hot-bridge-port",
    "vfio-mode-hot-bridge-port",
    // INTx of the edu in the bridge's slot 1, cold and hot-plugged (in the `vfio-mode-*-bridge-port`
    // sandboxes): its INTA# reaches bus 0 as the bridge's INTB#, a pin the MP table lists.
    "vfio-intx-cold-bridge-port",
    "vfio-intx-hot-bridge-port",
];

/// The figure comparing the two VMMs' boot-to-agent-ready times (built-in / QEMU, issue 11's
/// target: at most [`BOOT_RATIO_TARGET`]).
pub const BOOT_RATIO_FIGURE: &str = "builtin-vs-qemu-boot-to-agent-ready";

/// Issue 11's target for [`BOOT_RATIO_FIGURE`].
pub const BOOT_RATIO_TARGET: f64 = 0.5;

/// The VFIO checks (issue 12), run with the QEMU backend after its [`VMM_CHECKS`] (each
/// reported as `qemu-<name>`): L1's edu device cold-plugged on a root port, a switch's
/// downstream port and a PCI bridge and seen in L2, its BAR0 read and written in
/// `guest-kernel` mode, hot-plugged onto a free root port, switch port and bridge slot, and
/// hot-unplugged (gone from L2, the port free again); and through containerd
/// (`vfio-ctr-hot`, `vfio-ctr-cold`: the lab's shim on the shipped QEMU configuration).
pub const VFIO_CHECKS: &[&str] = &[
    "vfio-cold-root-port",
    "vfio-bar0-guest-kernel",
    "vfio-cold-switch-port",
    "vfio-cold-bridge-port",
    "vfio-hot-root-port",
    "vfio-hot-unplug",
    "vfio-hot-switch-port",
    // Hot-plugged onto a free slot of the PCIe-to-PCI bridge, unplugged, the slot free again.
    "vfio-hot-bridge-port",
    "vfio-mode-cold-root-port",
    "vfio-mode-hot-root-port",
    // `vfio` mode behind a switch's downstream port and the PCIe-to-PCI bridge, cold and
    // hot-plugged: the proof program through L2's VFIO there too.
    "vfio-mode-cold-switch-port",
    "vfio-mode-cold-bridge-port",
    "vfio-mode-hot-switch-port",
    "vfio-mode-hot-bridge-port",
    // The same edu's MSI and INTx through QEMU's vfio-pci (`src/vfio_irq.rs`, `vfio_proof irq`
    // and `intx`), cold-plugged on a root port.
    "vfio-msi-cold-root-port",
    "vfio-intx-cold-root-port",
    // Through L1's containerd and the lab's shim on the shipped configuration-qemu-runtime-rs
    // (`src/vfio_ctr.rs`): hot-plugged into a pod's container and unplugged at its removal,
    // and cold-plugged with a single `ctr run`; nothing left after `ctr task rm`.
    "vfio-ctr-hot",
    "vfio-ctr-cold",
];

/// The positive VFIO cold-plug through containerd (issue 12, `src/vfio_ctr.rs`), reported as
/// `builtin-<name>`: L1's containerd runs the lab's shim on the built-in VMM with
/// `cold_plug_vfio = "root-port"`; `ctr run --device /dev/vfio/<group>` gives a container the
/// edu, which it sees (`guest-kernel` mode), and a CDI annotation with `vfio_mode = "vfio"` by
/// annotation gives another the edu through L2's VFIO (the proof program); after `ctr task
/// rm` and `ctr container rm` nothing is left. Run before the crash row when the built-in
/// VMM's set is.
pub const BUILTIN_VFIO_CTR_CHECKS: &[&str] = &["vfio-ctr-cold", "vfio-ctr-cdi-vfio-mode"];

/// The crash matrix's last row (issue 14, `src/crash.rs`), reported as `builtin-<name>`: the
/// shim, running a built-in VM in its own process under L1's containerd, `kill -9`ed at each
/// step; containerd hears of it and nothing is left (no process, mount, directory, shim
/// socket, cgroup or KVM descriptor). Run after the built-in VMM's containerd VFIO cells, before
/// QEMU's VFIO cells.
pub const BUILTIN_CRASH_CHECKS: &[&str] = &[
    "crash-boot",
    "crash-create",
    "crash-start",
    "crash-exec",
    "crash-delete",
    "crash-shutdown",
];

/// A VMM the runner drives in L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// kata-rs's QEMU backend, with KVM (L1's).
    Qemu,
    /// The built-in VMM (kata-vmm in the runner's process, `[hypervisor.dragonball]`), with
    /// KVM (L1's).
    Builtin,
}

impl Vmm {
    /// Every VMM the runner knows (`--vmm`), in the order it runs them.
    pub const KNOWN: &'static [Vmm] = &[Vmm::Qemu, Vmm::Builtin];

    /// The VMMs a lab run (the host test, and the runner without `--vmm`) runs and requires:
    /// both (the built-in VMM joined once an L1 run passed its checks). The built-in VMM goes
    /// first: its memory figure is the runner's RSS growth over its boot, which heap freed by
    /// an earlier sandbox would hide.
    pub const ALL: &'static [Vmm] = &[Vmm::Builtin, Vmm::Qemu];

    /// Its name: the prefix of its checks and the runner's `--vmm` value.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::Builtin => "builtin",
        }
    }

    /// What it is, for the summary line.
    pub fn describe(self) -> &'static str {
        match self {
            Vmm::Qemu => "kata-rs's QEMU backend with KVM in L1",
            Vmm::Builtin => "the built-in VMM (kata-vmm, in-process) with KVM in L1",
        }
    }

    /// The [`VMM_CHECKS`] this VMM runs, in order (without its name's prefix).
    pub fn checks(self) -> Vec<&'static str> {
        VMM_CHECKS
            .iter()
            .copied()
            .filter(|c| match self {
                Vmm::Qemu => !BUILTIN_ONLY_CHECKS.contains(c),
                Vmm::Builtin => !QEMU_ONLY_CHECKS.contains(c),
            })
            .collect()
    }
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A VMM name the lab does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VMM {0:?}: the lab runs {known}", known = Vmm::KNOWN.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownVmm(pub String);

impl FromStr for Vmm {
    type Err = UnknownVmm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Vmm::KNOWN
            .iter()
            .copied()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownVmm(s.to_string()))
    }
}

/// The density mode's one check (`src/density.rs`; the host's `KATA_LAB_DENSITY`, which adds
/// it to the expected list in place of the others): every pod ran its container, nothing left.
pub const DENSITY_CHECK: &str = "density";

/// Every check a lab run with `vmms` must report, in the order they run.
pub fn expected_checks(vmms: &[Vmm]) -> Vec<String> {
    let mut out: Vec<String> = L1_CHECKS
        .iter()
        .chain(RUNNER_CHECKS)
        .map(|c| c.to_string())
        .collect();
    // The built-in VMM's VFIO checks (they run after every VMM's set, before QEMU's VFIO).
    if vmms.contains(&Vmm::Builtin) {
        out.extend(BUILTIN_VFIO_CHECKS.iter().map(|c| format!("builtin-{c}")));
    }
    for vmm in vmms {
        out.extend(vmm.checks().iter().map(|c| format!("{vmm}-{c}")));
    }
    // The containerd VFIO case, then the crash row (their containerd and shims after every
    // sandbox of the runner's).
    if vmms.contains(&Vmm::Builtin) {
        out.extend(
            BUILTIN_VFIO_CTR_CHECKS
                .iter()
                .map(|c| format!("builtin-{c}")),
        );
        out.extend(BUILTIN_CRASH_CHECKS.iter().map(|c| format!("builtin-{c}")));
    }
    // QEMU's VFIO last of all: L1 panics in those cells now and then (lab/README.md), and
    // everything else has reported by then.
    if vmms.contains(&Vmm::Qemu) {
        out.extend(VFIO_CHECKS.iter().map(|c| format!("qemu-{c}")));
    }
    out
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name (`l1-kvm`, `qemu-boot`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What it saw, or why it failed.
    pub detail: String,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Its name (`qemu-kvm-boot-to-agent-ready`).
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit (`ms`).
    pub unit: String,
    /// How it was measured.
    pub detail: String,
}

/// A line of L1's console that means something to the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `lab-check ...`
    Check(Check),
    /// `lab-figure ...`
    Figure(Figure),
}

/// The runner's heartbeat (`lab-alive <seconds since the runner started>`), printed every
/// [`HEARTBEAT_EVERY`] by a thread of its own whatever the checks do: while it comes, L1 and its
/// kernel run. The host takes [`SILENCE_LIMIT`] without a line of the runner's (kernel lines do
/// not count: a locked-up L1 keeps printing soft-lockup reports) after the runner started
/// as L1 frozen (nested SVM under TCG: a CI run of 2026-11-30 printed nothing for 1000 s until
/// the deadline) and ends the run then, instead of at the deadline.
pub const ALIVE_PREFIX: &str = "lab-alive ";

/// How often the runner's heartbeat comes.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// How long L1 may go without a runner line, once the runner started, before the host calls L1
/// frozen: six heartbeats missed.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(180);

/// A runner that printed no check line for this long says what its processes wait in
/// (`lab-stall ...`): a hang of our own code, told from a frozen L1 by the heartbeat.
pub const STALL_AFTER: Duration = Duration::from_secs(300);

/// When something last happened, shared between threads.
struct Progress {
    /// The origin of `last_ms`.
    epoch: OnceLock<Instant>,
    /// Milliseconds from `epoch` to the last [`mark`](Self::mark).
    last_ms: AtomicU64,
}

impl Progress {
    const fn new() -> Progress {
        Progress {
            epoch: OnceLock::new(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    fn mark(&self) {
        let ms = self.epoch().elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Since the last mark (or the first call).
    fn since(&self) -> Duration {
        let epoch = self.epoch();
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        epoch.elapsed().saturating_sub(last)
    }
}

/// The runner's last check line.
static LAST_CHECK: Progress = Progress::new();

/// How long ago this process made its last check line (or first asked).
pub fn since_last_check() -> Duration {
    LAST_CHECK.since()
}

/// Makes one line: `detail` loses its line breaks, so the line stays one line. Also notes the
/// time ([`since_last_check`]): every check the runner prints is made here.
pub fn check_line(name: &str, result: &Result<String, String>) -> String {
    LAST_CHECK.mark();
    let (verdict, detail) = match result {
        Ok(d) => ("ok", d),
        Err(d) => ("fail", d),
    };
    format!("{CHECK_PREFIX}{name} {verdict} {}", one_line(detail))
}

/// Makes a figure line: one decimal, three below 10 (a ratio such as `0.412`).
pub fn figure_line(name: &str, value: f64, unit: &str, detail: &str) -> String {
    let precision = if value.abs() < 10.0 { 3 } else { 1 };
    format!(
        "{FIGURE_PREFIX}{name} {value:.precision$} {unit} {}",
        one_line(detail)
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads a console line. The prefix may come after other text: the kernel's own messages can
/// land on the same console line as a user-space write.
pub fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(at) = line.find(CHECK_PREFIX) {
        let mut words = line[at + CHECK_PREFIX.len()..].splitn(3, ' ');
        let name = words.next().filter(|n| !n.is_empty())?;
        let ok = match words.next()? {
            "ok" => true,
            "fail" => false,
            _ => return None,
        };
        return Some(Line::Check(Check {
            name: name.to_string(),
            ok,
            detail: words.next().unwrap_or("").trim().to_string(),
        }));
    }
    if let Some(at) = line.find(FIGURE_PREFIX) {
        let mut words = line[at + FIGURE_PREFIX.len()..].splitn(4, ' ');
        let name = words.next().filter(|n| !n.is_empty())?;
        let value = words.next()?.parse().ok()?;
        let unit = words.next()?;
        return Some(Line::Figure(Figure {
            name: name.to_string(),
            value,
            unit: unit.to_string(),
            detail: words.next().unwrap_or("").trim().to_string(),
        }));
    }
    None
}

/// The checks of a run against the ones expected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Expected checks that passed.
    pub passed: Vec<Check>,
    /// Expected checks that failed (a check reported twice fails if either report did).
    pub failed: Vec<Check>,
    /// Expected checks never reported.
    pub missing: Vec<String>,
    /// Reported checks nobody expected (a new check not listed here yet): they fail the run
    /// too, so the lists cannot drift apart.
    pub unexpected: Vec<Check>,
}

impl Verdict {
    /// Whether every expected check passed and nothing else was reported.
    pub fn success(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }

    /// How many expected checks reported.
    pub fn ran(&self) -> usize {
        self.passed.len() + self.failed.len()
    }

    /// Whether the lab passes after L1 runs that ended as `ends` (in order): every expected
    /// check passed, nothing unexpected was reported, and an L1 run finished (its `/init` said
    /// so) — the last one, or an earlier one: a rerun that reported everything it was run for
    /// and then reset or froze leaves no check unknown. A rehearsal of 2026-12-02 failed
    /// there: `builtin-cpu-hotplug`'s L2 died in a run that finished, the whole rerun passed
    /// it, and L1 reset at 213 s in QEMU's set, which the first run had passed whole.
    pub fn passes(&self, ends: &[L1End]) -> bool {
        self.success() && ends.contains(&L1End::Finished)
    }

    /// The checks a rerun must report again: those never reported and those that failed.
    pub fn redo(&self) -> Vec<String> {
        self.missing
            .iter()
            .cloned()
            .chain(self.failed.iter().map(|c| c.name.clone()))
            .collect()
    }

    /// Why L1 deserves one more run, or `None`. Nested SVM under TCG now and then resets,
    /// hangs or freezes L1 mid-run (lab/README.md): the run then ends early with checks never
    /// reported. That fault is the emulator's, so the lab runs L1 once more and says so:
    /// - none failed, and L1 reset, froze or hung until the deadline;
    /// - L1 reset or froze (not a hang of a runner still alive: its heartbeat came) and the
    ///   only failures are L2 VMs that died under it ("the sandbox died", "the VM exited") —
    ///   a CI run of 2026-11-30 had an L2 shut down and L1 reset 13 s later with no message,
    ///   another an L2 exit and L1 silent from then on: what failed died with the machine it
    ///   ran on; the rerun must pass it.
    ///
    /// - L1 finished, every check reported, and the only failures are L2 VMs that died (a
    ///   rehearsal of 2026-12-02: `builtin-blk-hot`'s L2 shut down under its first container,
    ///   in a run whose two predecessors L1 had frozen and reset): those checks run again (a
    ///   fault of ours that kills L2 each time still fails there).
    ///
    /// Any other failed check, an unknown check, or a run that finished without reporting
    /// every check is never retried.
    pub fn rerun_reason(&self, end: L1End) -> Option<String> {
        if !self.unexpected.is_empty() {
            return None;
        }
        let vm_deaths =
            |c: &Check| c.detail.contains("the sandbox died") || c.detail.contains("the VM exited");
        // A check a dead L2 took with it reports "not run: ..." (no sandbox, it did not boot).
        let not_run = |c: &Check| c.detail.starts_with("not run");
        let only_deaths = self.failed.iter().any(vm_deaths)
            && self.failed.iter().all(|c| vm_deaths(c) || not_run(c));
        match end {
            L1End::Finished if !only_deaths || !self.missing.is_empty() => return None,
            L1End::Finished => {}
            _ if self.missing.is_empty() => return None,
            _ if !self.failed.is_empty() && (end == L1End::Deadline || !only_deaths) => {
                return None
            }
            _ => {}
        }
        let failed = match self.failed.is_empty() {
            true => "none failed".to_string(),
            false => format!(
                "the only failures L2 VMs that died ({})",
                self.failed
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Some(format!(
            "L1 {end} with {} of {} checks never reported and {failed}",
            self.missing.len(),
            self.missing.len() + self.passed.len() + self.failed.len()
        ))
    }
}

/// What a rerun of L1 may be narrowed to: everything after the VMMs' own sets, which run
/// first — the built-in VMM's VFIO set, QEMU's VFIO set, the containerd VFIO cells and the
/// crash row, where an L1 that froze part-way leaves its checks unreported. Rerunning only the
/// missing ones (the runner's `lab.vfio=<names>` and `--crash-only <steps>`) takes minutes
/// instead of a whole L1 run, which the rerun budget often no longer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowed {
    /// `lab.vfio=` for the rerun, comma-separated: `builtin` (or `builtin-hot`,
    /// `builtin-switch`, `builtin-bridge`) for the built-in VMM's VFIO set, QEMU's VFIO case
    /// names, `ctr` for the built-in VMM's containerd VFIO cells.
    pub vfio: Option<String>,
    /// `--crash-only` for the rerun: the missing crash cells' steps, comma-separated.
    pub crash: Option<String>,
}

/// The QEMU VFIO case that reports `check` (a name of [`VFIO_CHECKS`]): the runner's
/// `lab.vfio=` selects cases, and two checks are reported inside another's case.
fn qemu_vfio_case(check: &str) -> &str {
    match check {
        "vfio-bar0-guest-kernel" => "vfio-cold-root-port",
        "vfio-hot-unplug" => "vfio-hot-root-port",
        other => other,
    }
}

/// The runner's `lab.vfio=` name for the built-in VMM's VFIO cases that report `check` (a
/// name of [`BUILTIN_VFIO_CHECKS`]): the switch's and the bridge's cases, the hot-plugs onto a
/// root port, or the whole set for the rest.
fn builtin_vfio_part(check: &str) -> &'static str {
    if check.ends_with("-switch-port") {
        "builtin-switch"
    } else if check.ends_with("-bridge-port") {
        "builtin-bridge"
    } else if check.ends_with("-hot-root-port") {
        "builtin-hot"
    } else {
        "builtin"
    }
}

/// The narrowed rerun for these missing checks, or `None` when one of them belongs to a VMM's
/// own set or to L1 (a whole run is needed then).
pub fn narrowed_rerun(missing: &[String]) -> Option<Narrowed> {
    if missing.is_empty() {
        return None;
    }
    let mut n = Narrowed::default();
    let mut steps = Vec::new();
    let mut builtin: Vec<&str> = Vec::new();
    let mut qemu: Vec<&str> = Vec::new();
    let mut ctr = false;
    for m in missing {
        if let Some(name) = m.strip_prefix("qemu-") {
            if !VFIO_CHECKS.contains(&name) {
                return None;
            }
            let case = qemu_vfio_case(name);
            if !qemu.contains(&case) {
                qemu.push(case);
            }
            continue;
        }
        let name = m.strip_prefix("builtin-")?;
        if BUILTIN_VFIO_CTR_CHECKS.contains(&name) {
            ctr = true;
        } else if BUILTIN_CRASH_CHECKS.contains(&name) {
            steps.push(name.strip_prefix("crash-")?);
        } else if BUILTIN_VFIO_CHECKS.contains(&name) {
            let part = builtin_vfio_part(name);
            if !builtin.contains(&part) {
                builtin.push(part);
            }
        } else {
            return None;
        }
    }
    // The runner takes `builtin-hot` alone, or `builtin-switch` and `builtin-bridge` together;
    // any other mix is the whole set.
    let mixed_hot = builtin.contains(&"builtin-hot") && builtin.len() > 1;
    if builtin.contains(&"builtin") || mixed_hot {
        builtin = vec!["builtin"];
    }
    let mut vfio: Vec<&str> = builtin;
    vfio.extend(qemu);
    if ctr {
        vfio.push("ctr");
    }
    if !vfio.is_empty() {
        n.vfio = Some(vfio.join(","));
    }
    if !steps.is_empty() {
        n.crash = Some(steps.join(","));
    }
    Some(n)
}

/// `earlier` checks with `later` ones over them: a check a later run reported counts as that
/// run said (every report of it there), one it did not report as the earlier run said. What
/// the lab's reruns add up to: a rerun follows only a run whose failures were VMs that died
/// with L1 (`Verdict::rerun_reason`), and repeats or narrows to what that run left.
pub fn merge_checks(earlier: &[Check], later: &[Check]) -> Vec<Check> {
    let mut out: Vec<Check> = earlier
        .iter()
        .filter(|c| !later.iter().any(|l| l.name == c.name))
        .cloned()
        .collect();
    out.extend(later.iter().cloned());
    out
}

/// How an L1 run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L1End {
    /// Its `/init` said it finished (`lab-l1 done`).
    Finished,
    /// QEMU exited before that (L1 reset: `-no-reboot` makes a reset an exit).
    Reset,
    /// Killed at the deadline while the runner still spoke (its heartbeat came: a
    /// hang in the runner, or in what it waits for).
    Deadline,
    /// Killed after [`SILENCE_LIMIT`] without a runner line once the runner had started: L1
    /// itself stopped (no heartbeat; its kernel may still report the lockup).
    Froze,
}

impl fmt::Display for L1End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L1End::Finished => "finished",
            L1End::Reset => "ended early (a reset)",
            L1End::Deadline => "hung until the deadline",
            L1End::Froze => "froze (the runner's heartbeat gone)",
        })
    }
}

/// Whether a sandbox's boot error is L2 lost inside its firmware: the guest console still ended
/// at SeaBIOS's "Booting from ROM", before the kernel printed anything, and either QEMU exited
/// with status 0 (a reset: `-no-reboot` turns it into an exit) or the agent never answered (a
/// hang there: seen in a lab run of 2026-11-30 with the host loaded). Nested SVM under TCG
/// does both now and then (lab/README.md); the runner builds such a sandbox once more, saying
/// so. A guest that reached its kernel (a panic reboots too; a kernel that hangs has printed)
/// is not matched, nor is any other failure.
///
/// One more: QEMU exited with status 0, or the agent never answered, and the console is empty. qboot (the firmware of a
/// sandbox without PCIe ports) prints nothing and the guest kernel runs `quiet`, but a panic
/// prints even then (its lines are KERN_EMERG): an L2 that reset with nothing on its console
/// reset before its kernel could say anything. Seen in a CI run of 2026-11-30
/// (`qemu-template`'s fresh sandbox: "the VM exited (exit code 0)").
pub fn l2_reset_in_firmware(error: &str) -> bool {
    let Some((head, console)) = error.rsplit_once("---") else {
        // Nothing on the console at all: a reset, or a hang where only a silent firmware
        // (qboot) or the kernel's quiet boot ran. Our agent logs to its vsock port under QEMU,
        // so an agent of ours that hangs looks the same, but then every build hangs and the
        // case still fails; a panic prints. Seen with QEMU's first L2 of a lab run of
        // 2026-12-02 (`qemu-boot`: "the guest agent did not answer within 45s ...; the VM was
        // stopped"), and with the VM a QEMU template is made from (CI, 2026-12-02:
        // `qemu-template`, kata-hypervisor's own "... within 180s (dialing ...: no answer
        // within 2s)", which kata-sandbox does not wrap). Not when anything follows.
        let e = error.trim_end();
        const SILENT: &str = "the guest agent did not answer within";
        return e.ends_with("the VM exited (exit code 0)")
            || e.rsplit_once(SILENT).is_some_and(|(_, rest)| {
                rest.ends_with("the VM was stopped")
                    || (rest.ends_with(')') && !rest.contains("; "))
            });
    };
    head.contains("guest console")
        && (head.contains("exited (exit code 0)") || head.contains("agent did not answer within"))
        && firmware_only(console)
}

/// Whether a sandbox's boot error is a built-in VMM's L2 that shut down (reset or triple
/// fault: kata-vmm's "the guest shut down") in the first second of its kernel, before any
/// line but the kernel's own quiet-boot messages: no `/init`, no panic or oops. Seen in a
/// rehearsal of 2026-11-30 (`builtin-vfio-msi`: shut down at 0.012 s, right after the kernel's
/// "no RSDP" line, which every kata-vmm guest prints) and in earlier lab runs (a density pod,
/// `builtin-vfio-hot-refused`), each passing when built again: nested SVM under TCG, as the
/// firmware resets of QEMU's L2. A kernel that panics prints it (its lines are KERN_EMERG even
/// under `quiet`) and is not matched, nor is a later shutdown or any other failure.
pub fn l2_shut_down_in_early_boot(error: &str) -> bool {
    let Some((head, console)) = error.rsplit_once("---") else {
        return false;
    };
    let early = |line: &str| {
        let Some(rest) = line.trim().strip_prefix('[') else {
            return false;
        };
        let Some((stamp, text)) = rest.split_once(']') else {
            return false;
        };
        let lower = text.to_ascii_lowercase();
        stamp.trim().parse::<f64>().is_ok_and(|s| s < 1.0)
            && !["panic", "oops", "bug:", "/init"]
                .iter()
                .any(|w| lower.contains(w))
    };
    !head.contains("the sandbox died")
        && head.contains("the VM exited (the guest shut down)")
        && head.contains("guest console")
        && !console.trim().is_empty()
        && console.lines().filter(|l| !l.trim().is_empty()).all(early)
}

/// Whether a sandbox's boot error is one of L2's faults that never reached our code and is
/// built again: [`l2_reset_in_firmware`] or [`l2_shut_down_in_early_boot`].
pub fn l2_lost_before_our_code(error: &str) -> bool {
    l2_reset_in_firmware(error) || l2_shut_down_in_early_boot(error)
}

/// [`l2_lost_before_our_code`] for the stderr of a `ctr run` whose sandbox did not start:
/// ctr prints the shim's error after `ctr: ` and containerd ends it with the gRPC code
/// (`: unknown`), which would otherwise read as the console's last line. Seen in a CI run of
/// 2026-12-01 (`qemu-vfio-ctr-cold`: "ctr: failed to create shim task: the VM exited (exit
/// code 0)" with only SeaBIOS's banner on the console).
pub fn l2_lost_in_ctr(stderr: &str) -> bool {
    let s = stderr.trim();
    let s = s.strip_prefix("ctr: ").unwrap_or(s);
    let s = s.strip_suffix(": unknown").unwrap_or(s);
    l2_lost_before_our_code(s)
}

/// Whether a console excerpt holds SeaBIOS's own output and nothing else: its banner, "Booting
/// from ROM" and its dots, any of them cut where L2 stopped (a hang in the middle of the banner,
/// "SeaBIOS (version 1.16.2-debi", was seen in a CI run of 2026-11-30).
fn firmware_only(console: &str) -> bool {
    const BANNER: &str = "SeaBIOS (version ";
    const BOOTING: &str = "Booting from ROM";
    let mut rest = console.trim();
    if rest.is_empty() {
        return false;
    }
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return true;
        }
        if let Some(r) = rest.strip_prefix(BANNER) {
            match r.find(')') {
                Some(i) if !r[..i].contains(char::is_whitespace) => rest = &r[i + 1..],
                Some(_) => return false,
                // Cut inside the version: nothing else can follow.
                None => return !r.contains(char::is_whitespace),
            }
        } else if let Some(r) = rest.strip_prefix(BOOTING) {
            rest = r.trim_start_matches('.');
        } else {
            // Cut inside one of the two.
            return BANNER.starts_with(rest) || BOOTING.starts_with(rest);
        }
    }
}

/// Compares the reported `checks` with the `expected` names.
pub fn verdict(checks: &[Check], expected: &[String]) -> Verdict {
    let mut v = Verdict::default();
    for name in expected {
        let reports: Vec<&Check> = checks.iter().filter(|c| &c.name == name).collect();
        match reports.iter().find(|c| !c.ok).or(reports.first()) {
            None => v.missing.push(name.clone()),
            Some(c) if c.ok => v.passed.push((*c).clone()),
            Some(c) => v.failed.push((*c).clone()),
        }
    }
    v.unexpected = checks
        .iter()
        .filter(|c| !expected.contains(&c.name))
        .cloned()
        .collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ctr_run_whose_l2_reset_in_seabios_is_lost_before_our_code() {
        // Verbatim from the CI run of 2026-12-01 (`qemu-vfio-ctr-cold`).
        let ci = "ctr: failed to create shim task: the VM exited (exit code 0)\n--- last 1 \
                  guest console lines ---\nSeaBIOS (version 1.16.2-debian-1.16.2-1: unknown";
        assert!(l2_lost_in_ctr(ci));
        // Without ctr's decoration it is the lab's rule as before.
        assert!(l2_lost_in_ctr(
            "the VM exited (exit code 0)\n--- last 1 guest console lines ---\nSeaBIOS \
             (version 1.16.2-debian-1.16.2-1)"
        ));
        for not in [
            // The kernel ran.
            "ctr: failed to create shim task: the VM exited (exit code 0)\n--- last 2 guest \
             console lines ---\nSeaBIOS (version 1.16.2-debian-1.16.2-1)\nLinux version 6.1: \
             unknown",
            // QEMU failed.
            "ctr: failed to create shim task: the VM exited (exit code 1)\n--- last 1 guest \
             console lines ---\nSeaBIOS (version 1.16.2-debian-1.16.2-1: unknown",
            // Refused by the runtime.
            "ctr: failed to create shim task: cold_plug_vfio: unknown",
            "",
        ] {
            assert!(!l2_lost_in_ctr(not), "{not}");
        }
    }

    #[test]
    fn only_a_reset_inside_the_firmware_is_built_again() {
        let reset = "the sandbox did not start: the VM exited (exit code 0) --- last 2 guest \
                     console lines --- SeaBIOS (version 1.16.2-debian-1.16.2-1) Booting from ROM...";
        assert!(l2_reset_in_firmware(reset));
        assert!(!l2_reset_in_firmware(
            "the VM exited (exit code 0) --- last 2 guest console lines --- Kernel panic - not syncing"
        ));
        assert!(!l2_reset_in_firmware(
            "the VM exited (exit code 1) --- Booting from ROM..."
        ));
        // Cut while printing its dots (verbatim from a CI run: qemu-vfio-mode-cold-root-port).
        assert!(l2_reset_in_firmware(
            "the sandbox did not start: the VM exited (exit code 0) --- last 2 guest console              lines --- SeaBIOS (version 1.16.2-debian-1.16.2-1) Booting from ROM.."
        ));
        // A hang at the same place (the error a lab run gave, verbatim).
        let hang = "the sandbox with the device did not start: the guest agent did not answer \
                    within 150s (dialing vsock://1400038377:1024: no answer within 2s); the VM \
                    was stopped --- last 2 guest console lines --- SeaBIOS (version \
                    1.16.2-debian-1.16.2-1) Booting from ROM...";
        assert!(l2_reset_in_firmware(hang));
        // A hang right after SeaBIOS's banner (verbatim from a lab run).
        assert!(l2_reset_in_firmware(
            "the sandbox did not start: the guest agent did not answer within 150s (dialing \
             vsock://3498936264:1024: no answer within 2s); the VM was stopped --- last 1 guest \
             console lines --- SeaBIOS (version 1.16.2-debian-1.16.2-1)"
        ));
        // As the error carries it: the console's lines after a line break.
        assert!(l2_reset_in_firmware(
            "the guest agent did not answer within 150s; the VM was stopped --- last 1 guest \
             console lines ---\nSeaBIOS (version 1.16.2-debian-1.16.2-1)\n"
        ));
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 150s --- last 2 guest console lines ---\n\
             SeaBIOS (version 1.16.2-debian-1.16.2-1)\nLinux version 6.1.192"
        ));
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 150s; the VM was stopped --- last 2 guest \
             console lines --- Run /init as init process"
        ));
        // A hang in the middle of the banner (verbatim from CI: qemu-vfio-hot-root-port).
        assert!(l2_reset_in_firmware(
            "the sandbox did not start: the guest agent did not answer within 150s (dialing \
             vsock://42681891:1024: no answer within 2s); the VM was stopped --- last 1 guest \
             console lines --- SeaBIOS (version 1.16.2-debi"
        ));
        assert!(l2_reset_in_firmware(
            "the guest agent did not answer within 150s --- last 2 guest console lines --- \
             SeaBIOS (version 1.16.2-debian-1.16.2-1) Boot"
        ));
        // No console at all (qboot prints nothing, the kernel runs quiet), verbatim from a lab
        // run's qemu-boot: built again; not when the error goes on after the stop.
        assert!(l2_reset_in_firmware(
            "the sandbox did not start: the guest agent did not answer within 45s (dialing \
             vsock://1217286420:1024: no answer within 2s); the VM was stopped"
        ));
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 45s; the VM was stopped: cleanup failed"
        ));
        // The VM a QEMU template is made from, silent (verbatim from CI: qemu-template); not
        // when anything follows its detail.
        assert!(l2_reset_in_firmware(
            "the sandbox lab-tplfs-1 did not start: the guest agent did not answer within 180s \
             (dialing vsock://2516035152:1024: no answer within 2s)"
        ));
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 180s (dialing vsock://3:1024: refused); \
             stopping the template VM: no such process (os error 3)"
        ));
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 180s (dialing vsock://3:1024: refused): \
             cleanup failed"
        ));
        assert!(!l2_reset_in_firmware(
            "the VM exited (exit code 0): cleanup failed"
        ));
        // An empty console section, or anything after the firmware, is not the firmware's.
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 150s --- last 0 guest console lines --- "
        ));
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 150s --- last 2 guest console lines --- \
             SeaBIOS (version 1.16.2-debian-1.16.2-1) Booting from ROM.. [    0.000000] Linux"
        ));
        assert!(!l2_reset_in_firmware(
            "the guest agent did not answer within 150s --- last 1 guest console lines --- \
             SeaBIOS (version 1.16.2 is broken"
        ));
        assert!(!l2_reset_in_firmware(
            "the VM exited (exit code 1) --- last 1 guest console lines --- SeaBIOS (version 1.16"
        ));
        // A reset with nothing on the console (verbatim from CI: qemu-template, qboot).
        assert!(l2_reset_in_firmware(
            "the sandbox lab-tpl-fresh did not start: the VM exited (exit code 0)"
        ));
        assert!(!l2_reset_in_firmware(
            "the sandbox did not start: the VM exited (exit code 1)"
        ));
        assert!(!l2_reset_in_firmware(
            "the sandbox died: the VM exited (exit code 0); it was torn down"
        ));
    }

    #[test]
    fn only_an_early_shutdown_of_the_kernel_is_built_again() {
        // Verbatim from the rehearsal of 2026-11-30 (builtin-vfio-msi).
        let early = "the sandbox did not start: the VM exited (the guest shut down) --- last 1 \
                     guest console lines ---\n[    0.012387] ACPI BIOS Error (bug): A valid RSDP \
                     was not found (20220331/tbxfroot-210)";
        assert!(l2_shut_down_in_early_boot(early));
        assert!(l2_lost_before_our_code(early));
        // As build() returns it, before a case adds its context.
        assert!(l2_shut_down_in_early_boot(
            "the VM exited (the guest shut down)\n--- last 1 guest console lines ---\n[    \
             0.012387] ACPI BIOS Error (bug): A valid RSDP was not found (20220331/tbxfroot-210)"
        ));
        assert!(!l2_reset_in_firmware(early));
        // A panic, a later line, /init reached, a died sandbox, an empty console: not matched.
        for not in [
            "the sandbox did not start: the VM exited (the guest shut down) --- last 2 guest \
             console lines ---\n[    0.012387] x\n[    0.300000] Kernel panic - not syncing: VFS",
            "the sandbox did not start: the VM exited (the guest shut down) --- last 1 guest \
             console lines ---\n[    1.402000] virtio_mem: oh no",
            "the sandbox did not start: the VM exited (the guest shut down) --- last 1 guest \
             console lines ---\n[    0.900000] Run /init as init process",
            "the sandbox died: the VM exited (the guest shut down) --- last 1 guest console \
             lines ---\n[    0.012387] ACPI BIOS Error (bug): A valid RSDP was not found",
            "the sandbox did not start: the VM exited (the guest shut down)",
            "the sandbox did not start: the VM failed: KVM_RUN --- last 1 guest console lines \
             ---\n[    0.012387] ACPI BIOS Error",
        ] {
            assert!(!l2_shut_down_in_early_boot(not), "{not}");
        }
    }

    #[test]
    fn only_an_early_end_without_failures_is_run_again() {
        let expected: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let ok = |n: &str| Check {
            name: n.into(),
            ok: true,
            detail: String::new(),
        };
        let bad = Check {
            ok: false,
            ..ok("b")
        };
        let early = verdict(&[ok("a")], &expected);
        assert!(early.rerun_reason(L1End::Reset).unwrap().contains("reset"));
        assert!(early
            .rerun_reason(L1End::Deadline)
            .unwrap()
            .contains("deadline"));
        assert!(early.rerun_reason(L1End::Froze).unwrap().contains("froze"));
        // L1 finished normally: a missing check is the runner's fault, not the emulator's.
        assert_eq!(early.rerun_reason(L1End::Finished), None);
        // A failed check is never retried away...
        for end in [L1End::Reset, L1End::Froze, L1End::Deadline] {
            assert_eq!(
                verdict(&[ok("a"), bad.clone()], &expected).rerun_reason(end),
                None
            );
        }
        // ...but an L2 that died in a run L1 did not survive either is (verbatim from CI).
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let died = Check {
            detail: "the sandbox died: the VM exited (the guest shut down); it was torn down \
                     (start a new one)"
                .into(),
            ..bad.clone()
        };
        let reason = verdict(&[ok("a"), died.clone()], &three)
            .rerun_reason(L1End::Reset)
            .unwrap();
        assert!(reason.contains("died") && reason.contains('b'), "{reason}");
        // L1 silent after an L2 exit (CI, 2026-11-30: qemu-template's VM exited, then nothing
        // for 1000 s): the same.
        let exited = Check {
            detail: "the sandbox lab-tpl-fresh did not start: the VM exited (exit code 0)".into(),
            ..bad.clone()
        };
        let reason = verdict(&[ok("a"), exited], &three)
            .rerun_reason(L1End::Froze)
            .unwrap();
        assert!(reason.contains("froze") && reason.contains('b'), "{reason}");
        // Not after a hang of a runner still alive, not when L1 finished, not with another
        // failure beside it.
        assert_eq!(
            verdict(&[ok("a"), died.clone()], &three).rerun_reason(L1End::Deadline),
            None
        );
        assert_eq!(
            verdict(&[ok("a"), died.clone()], &three).rerun_reason(L1End::Finished),
            None,
            "c never reported"
        );
        // L1 finished with every check reported and only an L2 death: that check again.
        let all_in = verdict(&[ok("a"), died.clone(), ok("c")], &three);
        let reason = all_in.rerun_reason(L1End::Finished).unwrap();
        assert!(
            reason.contains("finished") && reason.contains('b'),
            "{reason}"
        );
        assert_eq!(all_in.redo(), vec!["b".to_string()]);
        // With the checks the dead L2 took along ("not run: no sandbox", verbatim from a lab
        // run: builtin-vfio-cold's L2 shut down, builtin-vfio-bar0-guest-kernel not run).
        let took = Check {
            name: "c".into(),
            detail: "not run: no sandbox".into(),
            ..bad.clone()
        };
        let both = verdict(&[ok("a"), died.clone(), took.clone()], &three);
        assert!(both.rerun_reason(L1End::Finished).is_some());
        assert_eq!(both.redo(), vec!["b".to_string(), "c".to_string()]);
        // "not run" alone is no L2 death.
        assert_eq!(
            verdict(&[ok("a"), ok("b"), took], &three).rerun_reason(L1End::Finished),
            None
        );
        assert_eq!(
            verdict(&[ok("a"), bad.clone(), ok("c")], &three).rerun_reason(L1End::Finished),
            None,
            "another failure"
        );
        let other = Check {
            name: "a".into(),
            ..bad.clone()
        };
        assert_eq!(
            verdict(&[other, died], &three).rerun_reason(L1End::Froze),
            None
        );
        let unknown = verdict(&[ok("a"), ok("zz")], &expected);
        assert_eq!(unknown.rerun_reason(L1End::Froze), None);
        assert_eq!(
            verdict(&[ok("a"), ok("b")], &expected).rerun_reason(L1End::Reset),
            None
        );
    }

    #[test]
    fn progress_counts_from_the_last_mark() {
        let p = Progress::new();
        let _ = p.since();
        std::thread::sleep(Duration::from_millis(200));
        let before = p.since();
        assert!(before >= Duration::from_millis(200), "{before:?}");
        p.mark();
        assert!(p.since() < before);
    }

    #[test]
    fn a_check_line_reads_back() {
        let line = check_line("qemu-uname", &Ok("Linux (none)\n6.1.192 x86_64".into()));
        assert_eq!(line, "lab-check qemu-uname ok Linux (none) 6.1.192 x86_64");
        assert_eq!(
            parse_line(&line),
            Some(Line::Check(Check {
                name: "qemu-uname".into(),
                ok: true,
                detail: "Linux (none) 6.1.192 x86_64".into()
            }))
        );
        let line = check_line("l1-kvm", &Err("no /dev/kvm".into()));
        let Some(Line::Check(c)) = parse_line(&line) else {
            panic!("{line}")
        };
        assert!(!c.ok);
        assert_eq!(c.detail, "no /dev/kvm");
    }

    #[test]
    fn a_check_after_kernel_text_on_the_same_line_is_found() {
        let got = parse_line("[   12.3] kvm: Unhandled WRMSR lab-check l1-kvm ok /dev/kvm\r");
        assert!(matches!(got, Some(Line::Check(c)) if c.name == "l1-kvm" && c.ok));
    }

    #[test]
    fn malformed_lines_are_not_checks() {
        for l in [
            "lab-check",
            "lab-check ",
            "lab-check name maybe detail",
            "lab-checker x ok",
            "lab-figure x notanumber ms",
            "booting...",
        ] {
            assert_eq!(parse_line(l), None, "{l}");
        }
    }

    #[test]
    fn a_figure_line_reads_back() {
        let line = figure_line("qemu-kvm-boot-to-agent-ready", 4321.04, "ms", "vm 1 ms");
        let Some(Line::Figure(f)) = parse_line(&line) else {
            panic!("{line}")
        };
        assert_eq!(f.name, "qemu-kvm-boot-to-agent-ready");
        assert!((f.value - 4321.0).abs() < 0.01);
        assert_eq!((f.unit.as_str(), f.detail.as_str()), ("ms", "vm 1 ms"));
        let line = figure_line(BOOT_RATIO_FIGURE, 0.41234, "ratio", "target <= 0.5");
        assert!(line.contains(" 0.412 ratio "), "{line}");
        let Some(Line::Figure(f)) = parse_line(&line) else {
            panic!("{line}")
        };
        assert!((f.value - 0.412).abs() < 1e-9);
    }

    fn check(name: &str, ok: bool) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: String::new(),
        }
    }

    #[test]
    fn the_lab_passes_when_every_check_passed_and_some_l1_run_finished() {
        let expected: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let all = verdict(&[check("a", true), check("b", true)], &expected);
        assert!(all.passes(&[L1End::Finished]));
        // The rerun passed what it was run for, then L1 reset: the first run had finished.
        assert!(all.passes(&[L1End::Finished, L1End::Reset]));
        assert!(all.passes(&[L1End::Froze, L1End::Finished]));
        // No run finished: not a pass, whatever reported.
        assert!(!all.passes(&[L1End::Froze, L1End::Reset]));
        assert!(!all.passes(&[]));
        // A check missing or failed: never a pass.
        let missing = verdict(&[check("a", true)], &expected);
        assert!(!missing.passes(&[L1End::Finished]));
        let failed = verdict(&[check("a", true), check("b", false)], &expected);
        assert!(!failed.passes(&[L1End::Finished, L1End::Finished]));
    }

    #[test]
    fn a_rerun_narrows_to_the_labs_tail_only() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // CI rehearsal of 2026-12-02: L1 froze in the crash row's last cell.
        assert_eq!(
            narrowed_rerun(&names(&["builtin-crash-shutdown"])),
            Some(Narrowed {
                vfio: None,
                crash: Some("shutdown".into())
            })
        );
        // The submission's CI run: from the containerd VFIO cells on.
        let tail: Vec<String> = BUILTIN_VFIO_CTR_CHECKS
            .iter()
            .chain(BUILTIN_CRASH_CHECKS)
            .map(|c| format!("builtin-{c}"))
            .collect();
        assert_eq!(
            narrowed_rerun(&tail),
            Some(Narrowed {
                vfio: Some("ctr".into()),
                crash: Some("boot,create,start,exec,delete,shutdown".into())
            })
        );
        assert_eq!(
            narrowed_rerun(&names(&["builtin-vfio-ctr-cold"])),
            Some(Narrowed {
                vfio: Some("ctr".into()),
                crash: None
            })
        );
        // The VFIO sets after the VMMs' own: the cases that report the missing checks.
        assert_eq!(
            narrowed_rerun(&names(&[
                "builtin-vfio-hot-switch-port",
                "builtin-vfio-mode-cold-bridge-port",
                "qemu-vfio-bar0-guest-kernel",
                "qemu-vfio-cold-root-port",
                "qemu-vfio-hot-unplug",
                "qemu-vfio-ctr-cold",
                "builtin-vfio-ctr-cold",
                "builtin-crash-boot",
            ])),
            Some(Narrowed {
                vfio: Some(
                    "builtin-switch,builtin-bridge,vfio-cold-root-port,vfio-hot-root-port,\
                     vfio-ctr-cold,ctr"
                        .into()
                ),
                crash: Some("boot".into())
            })
        );
        assert_eq!(
            narrowed_rerun(&names(&["builtin-vfio-intx-hot-root-port"])),
            Some(Narrowed {
                vfio: Some("builtin-hot".into()),
                crash: None
            })
        );
        // The runner takes builtin-hot only alone: with another part, the whole set.
        for set in [
            &["builtin-vfio-hot-root-port", "builtin-vfio-hot-bridge-port"][..],
            &["builtin-vfio-msi", "builtin-vfio-cold-switch-port"][..],
        ] {
            assert_eq!(
                narrowed_rerun(&names(set)).and_then(|n| n.vfio),
                Some("builtin".into()),
                "{set:?}"
            );
        }
        // Every name a narrowed rerun passes is one the runner's lab.vfio= knows.
        let every: Vec<String> = BUILTIN_VFIO_CHECKS
            .iter()
            .map(|c| format!("builtin-{c}"))
            .chain(VFIO_CHECKS.iter().map(|c| format!("qemu-{c}")))
            .collect();
        let all = narrowed_rerun(&every).unwrap().vfio.unwrap();
        assert!(all.starts_with("builtin,vfio-cold-root-port,"), "{all}");
        for name in all.split(',').skip(1) {
            assert!(VFIO_CHECKS.contains(&name), "{name}");
        }
        // A VMM's own set, L1's checks or a name the lab does not know need a whole run.
        for other in [
            "builtin-boot",
            "qemu-boot",
            "l1-kvm",
            "qemu-crash-boot",
            "builtin-vfio-nonsense",
        ] {
            assert_eq!(
                narrowed_rerun(&names(&[other, "builtin-crash-boot"])),
                None,
                "{other}"
            );
        }
        assert_eq!(narrowed_rerun(&[]), None);
        // Every crash step the runner's --crash-only takes is a check of the row.
        for c in BUILTIN_CRASH_CHECKS {
            assert!(c.starts_with("crash-"), "{c}");
        }
    }

    #[test]
    fn a_later_run_overrides_what_it_reported_and_keeps_the_rest() {
        let first = vec![
            check("l1-kvm", true),
            check("qemu-boot", true),
            check("builtin-vfio-cold", false),
        ];
        let rerun = vec![check("l1-kvm", true), check("builtin-vfio-cold", true)];
        let merged = merge_checks(&first, &rerun);
        assert_eq!(merged.len(), 3);
        assert!(merged.iter().all(|c| c.ok), "{merged:?}");
        assert_eq!(
            merged.iter().filter(|c| c.name == "l1-kvm").count(),
            1,
            "one report per name"
        );
        // A failure in the later run stands, whatever the earlier said.
        let merged = merge_checks(&rerun, &[check("builtin-vfio-cold", false)]);
        assert!(
            !merged
                .iter()
                .find(|c| c.name == "builtin-vfio-cold")
                .unwrap()
                .ok
        );
        assert!(merged.iter().any(|c| c.name == "l1-kvm" && c.ok));
    }

    #[test]
    fn missing_failed_and_unexpected_checks_fail_the_verdict() {
        let expected = expected_checks(&[Vmm::Qemu]);
        assert_eq!(
            expected.len(),
            L1_CHECKS.len() + RUNNER_CHECKS.len() + VMM_CHECKS.len() + VFIO_CHECKS.len()
                - BUILTIN_ONLY_CHECKS.len()
        );
        assert!(expected.contains(&"qemu-boot".to_string()));
        assert!(expected.contains(&"qemu-vfio-hot-unplug".to_string()));
        let all: Vec<Check> = expected.iter().map(|n| check(n, true)).collect();
        let v = verdict(&all, &expected);
        assert!(v.success());
        assert_eq!(v.ran(), expected.len());

        let mut some = all.clone();
        some.retain(|c| c.name != "qemu-exit-3");
        some.push(check("qemu-uname", false));
        some.push(check("qemu-new", true));
        let v = verdict(&some, &expected);
        assert!(!v.success());
        assert_eq!(v.missing, vec!["qemu-exit-3".to_string()]);
        assert_eq!(v.failed.len(), 1, "{v:?}");
        assert_eq!(v.failed[0].name, "qemu-uname");
        assert_eq!(v.unexpected.len(), 1);
        assert_eq!(v.ran(), expected.len() - 1);
    }

    #[test]
    fn the_built_in_vmm_runs_every_vmm_check_but_vhost_vsock() {
        let expected = expected_checks(Vmm::KNOWN);
        assert_eq!(
            expected.len(),
            L1_CHECKS.len()
                + RUNNER_CHECKS.len()
                + 2 * VMM_CHECKS.len()
                + VFIO_CHECKS.len()
                + BUILTIN_CRASH_CHECKS.len()
                + BUILTIN_VFIO_CHECKS.len()
                + BUILTIN_VFIO_CTR_CHECKS.len()
                - QEMU_ONLY_CHECKS.len()
                - BUILTIN_ONLY_CHECKS.len()
        );
        assert!(expected.contains(&"builtin-crash-boot".to_string()));
        assert!(expected.contains(&"builtin-vfio-ctr-cold".to_string()));
        assert!(expected.contains(&"qemu-vfio-mode-cold-bridge-port".to_string()));
        assert!(!expected_checks(&[Vmm::Qemu])
            .iter()
            .any(|c| c.contains("crash")));
        for c in [
            "builtin-boot",
            "builtin-agent-check",
            "builtin-shared-fs-read",
        ] {
            assert!(expected.contains(&c.to_string()), "{c}");
        }
        assert!(expected.contains(&"builtin-shutdown-clean".to_string()));
        assert!(expected.contains(&"qemu-vhost-vsock".to_string()));
        assert!(!expected.contains(&"builtin-vhost-vsock".to_string()));
        // The built-in VMM's VFIO checks are its own list, not QEMU's: a switch and a bridge.
        assert!(expected.contains(&"builtin-vfio-cold".to_string()));
        assert!(expected.contains(&"builtin-vfio-hot-root-port".to_string()));
        assert!(expected.contains(&"builtin-vfio-hot-switch-port".to_string()));
        assert!(expected.contains(&"builtin-vfio-hot-bridge-port".to_string()));
        assert!(!expected_checks(&[Vmm::Qemu])
            .iter()
            .any(|c| c.starts_with("builtin-vfio")));
        assert!(expected.contains(&"builtin-threads-confined".to_string()));
        assert!(!expected.contains(&"qemu-threads-confined".to_string()));
        assert!(expected.contains(&"builtin-threads-cgroup".to_string()));
        assert_eq!(
            Vmm::Qemu.checks().len(),
            VMM_CHECKS.len() - BUILTIN_ONLY_CHECKS.len()
        );
        assert_eq!(
            Vmm::Builtin.checks().len(),
            VMM_CHECKS.len() - QEMU_ONLY_CHECKS.len()
        );
        // The check after boot is the first one that needs the sandbox (`not_run` from it).
        for v in Vmm::KNOWN {
            assert_eq!(v.checks()[1], "boot");
        }
    }

    #[test]
    fn vmm_names() {
        assert_eq!("qemu".parse::<Vmm>(), Ok(Vmm::Qemu));
        assert_eq!("builtin".parse::<Vmm>(), Ok(Vmm::Builtin));
        for v in Vmm::KNOWN {
            assert_eq!(v.name().parse::<Vmm>(), Ok(*v));
        }
        let e = "firecracker".parse::<Vmm>().unwrap_err();
        assert!(e.to_string().contains("qemu, builtin"), "{e}");
    }
}
