//! Seccomp: the OCI `linux.seccomp` profile compiled to classic BPF in the agent, installed by
//! the container's init just before `execve` (after `no_new_privs`), as runc does.
//!
//! **Library: `seccompiler`** (rust-vmm, pure Rust, the compiler Firecracker and Cloud
//! Hypervisor use), not libseccomp. The guest initramfs holds one static agent binary and
//! busybox; libseccomp would add a C library to the image and `libseccomp-dev` to every
//! builder, for a profile that is compiled once per container. Compiling in the agent (not in
//! the helper) also means a bad profile is CreateContainer's `INVALID_ARGUMENT` before anything
//! is forked, and the helper only installs ready BPF.
//!
//! **How a profile becomes BPF.** `seccompiler` builds filters with one match action each,
//! while an OCI profile gives each syscall entry its own action. The kernel runs *every*
//! installed filter and keeps the most severe result (KILL_PROCESS > KILL_THREAD > TRAP > ERRNO
//! > TRACE > LOG > ALLOW), so the profile becomes:
//! - one filter per distinct non-ALLOW rule action (e.g. `ERRNO(38)`): the rules with that
//!   action → it, anything else → ALLOW;
//! - one "default" filter, unless the default is ALLOW: every syscall some rule names (with the
//!   rule's argument conditions) → ALLOW, anything else → the default action;
//! - on x86_64, a guard that kills x32-ABI syscall numbers (`nr & 0x40000000`), which share the
//!   x86_64 audit arch and would otherwise slip past rules written for x86_64 numbers.
//!
//! Each filter checks the audit arch first: a syscall of another ABI (a 32-bit `int 0x80`)
//! kills the process. That is stricter than runc, which filters `SCMP_ARCH_X86` syscalls by
//! their own numbers: listing x86 or x32 in `architectures` is accepted and means "killed".
//!
//! **Supported**: actions `SCMP_ACT_ALLOW`, `ERRNO` (with `errnoRet`, default `EPERM`),
//! `KILL`/`KILL_THREAD`, `KILL_PROCESS`, `TRAP`, `TRACE` (`errnoRet` is the tracer's data),
//! `LOG`; argument operators `SCMP_CMP_EQ/NE/LT/LE/GT/GE/MASKED_EQ` on 64-bit values (as
//! libseccomp compares on x86_64), ANDed within a rule; flags `SECCOMP_FILTER_FLAG_LOG`,
//! `SPEC_ALLOW`, `TSYNC` (a profile without flags gets none: runc adds `SPEC_ALLOW` then, which
//! turns the Speculative Store Bypass mitigation off; kata-rs keeps it on unless asked). Rules whose action equals the default are skipped (runc does the
//! same); syscall names the table does not know are skipped with a debug log (runc skips names
//! libseccomp does not know). **Refused**, naming the field: `SCMP_ACT_NOTIFY` and a
//! `listenerPath` (no seccomp agent in the guest), `errnoRet` on other actions, an argument index
//! above 5, an `errnoRet` above 4095, a guest that is not x86_64 or an `architectures` list
//! without it, the `WAIT_KILLABLE_RECV` flag (only meaningful with NOTIFY), a profile too large
//! for one BPF program (4096 instructions per filter).

pub mod syscalls;

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

/// The spec path of the profile, for error messages.
pub const FIELD: &str = "linux.seccomp";

/// The largest errno a filter can return (the kernel's `MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

/// One classic-BPF instruction (`struct sock_filter`: code, jt, jf, k).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insn(pub u16, pub u8, pub u8, pub u32);

/// A compiled profile: the filters to install, in order, with the `seccomp(2)` flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    /// BPF programs, each installed with one `seccomp(SECCOMP_SET_MODE_FILTER)` call.
    pub filters: Vec<Vec<Insn>>,
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub flags: u32,
}

/// Whether this guest can apply seccomp profiles: a kernel with `CONFIG_SECCOMP_FILTER` and an
/// architecture the agent has a syscall table for.
pub fn supported() -> bool {
    cfg!(target_arch = "x86_64") && std::path::Path::new("/proc/sys/kernel/seccomp").exists()
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> AgentError {
    AgentError::invalid(field, reason)
}

/// The action of a rule (or the default), with its `errnoRet`.
fn action(
    a: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
    errno_field: &str,
) -> Result<SeccompAction> {
    use LinuxSeccompAction as A;
    if let Some(e) = errno_ret {
        if !matches!(a, A::ScmpActErrno | A::ScmpActTrace) {
            return Err(invalid(
                errno_field,
                format!("is only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {a}"),
            ));
        }
        if e > MAX_ERRNO {
            return Err(invalid(
                errno_field,
                format!("{e} is above the largest errno ({MAX_ERRNO})"),
            ));
        }
    }
    let data = errno_ret.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        A::ScmpActAllow => SeccompAction::Allow,
        A::ScmpActErrno => SeccompAction::Errno(data),
        A::ScmpActKill | A::ScmpActKillThread => SeccompAction::KillThread,
        A::ScmpActKillProcess => SeccompAction::KillProcess,
        A::ScmpActTrap => SeccompAction::Trap,
        A::ScmpActTrace => SeccompAction::Trace(data),
        A::ScmpActLog => SeccompAction::Log,
        A::ScmpActNotify => {
            return Err(invalid(
                field,
                "SCMP_ACT_NOTIFY is not supported: the guest has no seccomp agent to notify",
            ))
        }
    })
}

/// A key for grouping rules by action (`SeccompAction` is neither `Ord` nor `Hash`).
fn action_key(a: &SeccompAction) -> (u8, u32) {
    match a {
        SeccompAction::Allow => (0, 0),
        SeccompAction::Errno(e) => (1, *e),
        SeccompAction::KillThread => (2, 0),
        SeccompAction::KillProcess => (3, 0),
        SeccompAction::Log => (4, 0),
        SeccompAction::Trace(d) => (5, *d),
        SeccompAction::Trap => (6, 0),
    }
}

/// Rules per syscall number; an empty rule list means "unconditionally".
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rule(rules: &mut Rules, nr: i64, rule: Option<SeccompRule>) {
    let slot = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (slot.as_mut(), rule) {
        // Unconditional wins over any condition.
        (_, None) => *slot = None,
        (Some(list), Some(r)) => list.push(r),
        (None, Some(_)) => {}
    }
}

fn to_filter_map(rules: &Rules) -> BTreeMap<i64, Vec<SeccompRule>> {
    rules
        .iter()
        .map(|(nr, r)| (*nr, r.clone().unwrap_or_default()))
        .collect()
}

fn operator(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (SeccompCmpOp, u64) {
    use LinuxSeccompOperator as O;
    match op {
        O::ScmpCmpNe => (SeccompCmpOp::Ne, value),
        O::ScmpCmpLt => (SeccompCmpOp::Lt, value),
        O::ScmpCmpLe => (SeccompCmpOp::Le, value),
        O::ScmpCmpEq => (SeccompCmpOp::Eq, value),
        O::ScmpCmpGe => (SeccompCmpOp::Ge, value),
        O::ScmpCmpGt => (SeccompCmpOp::Gt, value),
        // OCI: (arg & value) == valueTwo.
        O::ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(value), value_two.unwrap_or(0)),
    }
}

fn flags(list: &[LinuxSeccompFilterFlag]) -> Result<u32> {
    let mut bits = 0;
    for (i, f) in list.iter().enumerate() {
        bits |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => return Err(invalid(
                format!("{FIELD}.flags[{i}]"),
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV only applies to SCMP_ACT_NOTIFY, which \
                     is not supported",
            )),
        } as u32;
    }
    Ok(bits)
}

/// The guest's architecture for the filters, checked against the profile's list.
fn target_arch(archs: Option<&Vec<Arch>>) -> Result<TargetArch> {
    if !cfg!(target_arch = "x86_64") {
        return Err(invalid(
            FIELD,
            format!(
                "is only supported on x86_64 guests, this agent runs on {}",
                std::env::consts::ARCH
            ),
        ));
    }
    if let Some(list) = archs.filter(|l| !l.is_empty()) {
        if !list
            .iter()
            .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative))
        {
            return Err(invalid(
                format!("{FIELD}.architectures"),
                format!("{list:?} does not include the guest's architecture SCMP_ARCH_X86_64"),
            ));
        }
    }
    Ok(TargetArch::x86_64)
}

fn to_insns(p: BpfProgram) -> Vec<Insn> {
    p.into_iter()
        .map(|i| Insn(i.code, i.jt, i.jf, i.k))
        .collect()
}

fn build(
    rules: &Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<Vec<Insn>> {
    let filter = SeccompFilter::new(to_filter_map(rules), mismatch, matched, arch)
        .map_err(|e| invalid(FIELD, format!("cannot be compiled: {e}")))?;
    let prog: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| {
        invalid(FIELD, format!("cannot be compiled: {e}"))
    })?;
    Ok(to_insns(prog))
}

/// Kills x32-ABI syscall numbers on x86_64 (they carry `AUDIT_ARCH_X86_64` too).
fn x32_guard() -> Vec<Insn> {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JSET | BPF_K, BPF_RET.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    vec![
        Insn(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        Insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        Insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        Insn(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        Insn(JSET_K, 0, 1, X32_SYSCALL_BIT),
        Insn(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        Insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Compiles `linux.seccomp`. `None`: nothing to install (no default action and no rules, as
/// runc reads it, or a profile that allows everything).
pub fn compile(s: &LinuxSeccomp) -> Result<Option<SeccompProgram>> {
    if s.listener_path().is_some() {
        return Err(invalid(
            format!("{FIELD}.listenerPath"),
            "is not supported: the guest has no seccomp agent (SCMP_ACT_NOTIFY)",
        ));
    }
    let arch = target_arch(s.architectures().as_ref())?;
    let flags = flags(s.flags().as_deref().unwrap_or_default())?;
    let default = action(
        s.default_action(),
        s.default_errno_ret(),
        &format!("{FIELD}.defaultAction"),
        &format!("{FIELD}.defaultErrnoRet"),
    )?;

    // Every rule whose action is not the default, grouped by action; `named` is the union.
    let mut by_action: BTreeMap<(u8, u32), (SeccompAction, Rules)> = BTreeMap::new();
    let mut named = Rules::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("{FIELD}.syscalls[{i}]");
        let a = action(
            sc.action(),
            sc.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let mut conditions = Vec::new();
        for (j, arg) in sc.args().iter().flatten().enumerate() {
            let index = u8::try_from(arg.index())
                .ok()
                .filter(|i| *i <= 5)
                .ok_or_else(|| {
                    invalid(
                        format!("{field}.args[{j}].index"),
                        format!("{} is not a syscall argument (0-5)", arg.index()),
                    )
                })?;
            let (op, value) = operator(arg.op(), arg.value(), arg.value_two());
            conditions.push(
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|e| invalid(format!("{field}.args[{j}]"), e.to_string()))?,
            );
        }
        if action_key(&a) == action_key(&default) {
            continue;
        }
        let rule = if conditions.is_empty() {
            None
        } else {
            Some(
                SeccompRule::new(conditions)
                    .map_err(|e| invalid(format!("{field}.args"), e.to_string()))?,
            )
        };
        for name in sc.names() {
            let Some(nr) = syscalls::x86_64(name) else {
                tracing::debug!(syscall = %name, %field, "unknown syscall name skipped");
                continue;
            };
            add_rule(&mut named, nr, rule.clone());
            if a != SeccompAction::Allow {
                let (_, rules) = by_action
                    .entry(action_key(&a))
                    .or_insert_with(|| (a.clone(), Rules::new()));
                add_rule(rules, nr, rule.clone());
            }
        }
    }

    let mut filters = Vec::new();
    for (a, rules) in by_action.into_values() {
        filters.push(build(&rules, SeccompAction::Allow, a, arch)?);
    }
    if default != SeccompAction::Allow {
        filters.push(build(&named, default, SeccompAction::Allow, arch)?);
    }
    if filters.is_empty() {
        return Ok(None);
    }
    filters.insert(0, x32_guard());
    Ok(Some(SeccompProgram { filters, flags }))
}

/// Installs the filters on the calling thread. Without `no_new_privs` this needs
/// `CAP_SYS_ADMIN`, so the init helper installs before dropping capabilities then.
pub fn install(p: &SeccompProgram) -> std::io::Result<()> {
    for f in &p.filters {
        let insns: Vec<libc::sock_filter> = f
            .iter()
            .map(|i| libc::sock_filter {
                code: i.0,
                jt: i.1,
                jf: i.2,
                k: i.3,
            })
            .collect();
        let len = u16::try_from(insns.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
        let prog = libc::sock_fprog {
            len,
            filter: insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: seccomp(SET_MODE_FILTER) reads `prog` and the `len` instructions it points to,
        // both alive for the call; the kernel copies them and keeps no pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                p.flags as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};

    fn rule(names: &[&str], a: LinuxSeccompAction) -> LinuxSyscallBuilder {
        LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(a)
    }

    fn field(e: AgentError) -> String {
        match e {
            AgentError::InvalidArgument { field, .. } => field,
            other => panic!("expected INVALID_ARGUMENT, got {other}"),
        }
    }

    /// Runs `f` in a forked child with `prog` installed; returns the child's exit status.
    fn in_child(prog: &SeccompProgram, f: fn() -> i32) -> nix::sys::wait::WaitStatus {
        // SAFETY: the child only calls prctl, seccomp, the test closure (plain syscalls) and
        // _exit; it never returns into the test harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: integer arguments only.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = match install(prog) {
                    Ok(()) => f(),
                    Err(_) => 99,
                };
                // SAFETY: _exit ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    fn errno_of(r: libc::c_long) -> i32 {
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn allow_everything_installs_nothing() {
        let s = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .unwrap();
        assert_eq!(compile(&s).unwrap(), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn denied_syscalls_fail_with_their_errno() {
        let s = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                rule(&["mkdir", "mkdirat"], LinuxSeccompAction::ScmpActErrno)
                    .build()
                    .unwrap(),
                rule(
                    &["getcwd", "no_such_syscall"],
                    LinuxSeccompAction::ScmpActErrno,
                )
                .errno_ret(libc::ENOTSUP as u32)
                .build()
                .unwrap(),
            ])
            .build()
            .unwrap();
        let prog = compile(&s).unwrap().unwrap();
        let status = in_child(&prog, || {
            // SAFETY: mkdir/getcwd with valid pointers (a static path, a stack buffer).
            let mkdir = errno_of(unsafe {
                libc::syscall(libc::SYS_mkdir, c"/tmp/kata-seccomp-x".as_ptr(), 0o700)
            });
            let mut buf = [0u8; 256];
            // SAFETY: see above.
            let getcwd =
                errno_of(unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) });
            if mkdir == libc::EPERM && getcwd == libc::ENOTSUP {
                0
            } else {
                1
            }
        });
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(status.pid().unwrap(), 0)
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn default_errno_with_allowed_exceptions_and_argument_filters() {
        let allowed = [
            "exit",
            "exit_group",
            "write",
            "getpid",
            "rt_sigreturn",
            "brk",
            "munmap",
        ];
        let s = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .default_errno_ret(libc::ENOSYS as u32)
            .syscalls(vec![
                rule(&allowed, LinuxSeccompAction::ScmpActAllow)
                    .build()
                    .unwrap(),
                // personality(0xffffffff) allowed (a query), anything else refused by default.
                rule(&["personality"], LinuxSeccompAction::ScmpActAllow)
                    .args(vec![LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(0xffff_ffffu64)
                        .op(LinuxSeccompOperator::ScmpCmpEq)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
                // getppid with a masked flag → EACCES.
                rule(&["getppid"], LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(libc::EACCES as u32)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let prog = compile(&s).unwrap().unwrap();
        let status = in_child(&prog, || {
            // SAFETY: argument-free or integer-argument syscalls.
            let (pid, pers_q, pers_set, ppid, uname) = unsafe {
                (
                    libc::syscall(libc::SYS_getpid),
                    libc::syscall(libc::SYS_personality, 0xffff_ffffu64),
                    errno_of(libc::syscall(libc::SYS_personality, 0u64)),
                    errno_of(libc::syscall(libc::SYS_getppid)),
                    errno_of(libc::syscall(libc::SYS_getuid)),
                )
            };
            let ok = pid > 0
                && pers_q >= 0
                && pers_set == libc::ENOSYS
                && ppid == libc::EACCES
                && uname == libc::ENOSYS;
            if ok {
                0
            } else {
                1
            }
        });
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(status.pid().unwrap(), 0)
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kill_process_kills_with_sigsys() {
        let s = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![rule(
                &["getppid"],
                LinuxSeccompAction::ScmpActKillProcess,
            )
            .build()
            .unwrap()])
            .build()
            .unwrap();
        let prog = compile(&s).unwrap().unwrap();
        let status = in_child(&prog, || {
            // SAFETY: no arguments.
            unsafe { libc::syscall(libc::SYS_getppid) };
            0
        });
        assert!(
            matches!(
                status,
                nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{status:?}"
        );
    }

    #[test]
    fn malformed_profiles_name_the_field() {
        let notify = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                rule(&["read"], LinuxSeccompAction::ScmpActErrno)
                    .build()
                    .unwrap(),
                rule(&["write"], LinuxSeccompAction::ScmpActNotify)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        assert_eq!(
            field(compile(&notify).unwrap_err()),
            "linux.seccomp.syscalls[1].action"
        );

        let bad_errno = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![rule(&["read"], LinuxSeccompAction::ScmpActKill)
                .errno_ret(1u32)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        assert_eq!(
            field(compile(&bad_errno).unwrap_err()),
            "linux.seccomp.syscalls[0].errnoRet"
        );

        let bad_index = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![rule(&["read"], LinuxSeccompAction::ScmpActErrno)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(6usize)
                    .value(1u64)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()
                    .unwrap()])
                .build()
                .unwrap()])
            .build()
            .unwrap();
        assert_eq!(
            field(compile(&bad_index).unwrap_err()),
            "linux.seccomp.syscalls[0].args[0].index"
        );

        let arm_only = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .architectures(vec![Arch::ScmpArchAarch64])
            .build()
            .unwrap();
        assert!(field(compile(&arm_only).unwrap_err()).starts_with("linux.seccomp"));

        let listener = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .listener_path("/run/seccomp-agent.sock")
            .build()
            .unwrap();
        assert_eq!(
            field(compile(&listener).unwrap_err()),
            "linux.seccomp.listenerPath"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rules_are_grouped_by_action_and_flags_translate() {
        let s = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .architectures(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ])
            .flags(vec![LinuxSeccompFilterFlag::SeccompFilterFlagLog])
            .syscalls(vec![
                rule(&["read", "write"], LinuxSeccompAction::ScmpActAllow)
                    .build()
                    .unwrap(),
                // Same as the default: skipped.
                rule(&["ptrace"], LinuxSeccompAction::ScmpActErrno)
                    .build()
                    .unwrap(),
                rule(&["clone3"], LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(libc::ENOSYS as u32)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let p = compile(&s).unwrap().unwrap();
        // x32 guard, ERRNO(ENOSYS) for clone3, the default filter.
        assert_eq!(p.filters.len(), 3);
        assert_eq!(p.flags, libc::SECCOMP_FILTER_FLAG_LOG as u32);
    }
}
