//! The devices cgroup: which device nodes a container may open or create
//! (`linux.resources.devices`).
//!
//! The spec's rules are read the way cgroup v1 reads `devices.allow`/`devices.deny` writes, in
//! order: a type-`a` rule resets the whole list (deny-all or allow-all, any access string), any
//! other rule adds an exception to the current default or takes access away from an exception of
//! exactly the same type and numbers. When the spec has rules, runc's default allow list is
//! appended (mknod of anything; `/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`,
//! `/dev/ptmx` and the ptys, read/write), as runc does; a spec without rules leaves the devices
//! cgroup alone (everything allowed), also as runc does.
//!
//! The result ([`DeviceRules`]) is enforced
//! - on cgroup v1 by writing it to the cgroup: the reset (`a` to `devices.deny` or
//!   `devices.allow`), then each exception;
//! - on cgroup v2 (what the guest mounts) by an eBPF `BPF_PROG_TYPE_CGROUP_DEVICE` program built
//!   here from the same rules and attached to the container's cgroup (attached without
//!   `BPF_F_ALLOW_MULTI`, so an UpdateContainer replaces it).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{AgentError, Result};

/// `m`: create the node.
pub const MKNOD: u8 = 1;
/// `r`: open for reading.
pub const READ: u8 = 2;
/// `w`: open for writing.
pub const WRITE: u8 = 4;
const ALL: u8 = MKNOD | READ | WRITE;

/// Block or character device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `b`.
    Block,
    /// `c` (and OCI's `u`).
    Char,
}

/// One exception to the default: a device class and the accesses it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Block or char.
    pub kind: Kind,
    /// Major number; `None` for any.
    pub major: Option<u32>,
    /// Minor number; `None` for any.
    pub minor: Option<u32>,
    /// `MKNOD | READ | WRITE` bits.
    pub access: u8,
}

/// The effective device rules: a default and its exceptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRules {
    /// Everything is allowed except the exceptions (`true`), or denied except them (`false`).
    pub default_allow: bool,
    /// Devices that do the opposite of the default.
    pub exceptions: Vec<Exception>,
}

/// A rule as v1 takes it: allow, class, major, minor, access.
type Rule = (bool, Kind, Option<u32>, Option<u32>, u8);

/// runc's default allow list (`libcontainer/specconv.AllowedDevices`).
fn runc_defaults() -> Vec<Rule> {
    use Kind::*;
    vec![
        (true, Char, None, None, MKNOD),
        (true, Block, None, None, MKNOD),
        (true, Char, Some(1), Some(3), ALL),
        (true, Char, Some(1), Some(8), ALL),
        (true, Char, Some(1), Some(7), ALL),
        (true, Char, Some(5), Some(0), ALL),
        (true, Char, Some(1), Some(5), ALL),
        (true, Char, Some(1), Some(9), ALL),
        (true, Char, Some(136), None, ALL),
        (true, Char, Some(5), Some(2), ALL),
    ]
}

fn access_bits(s: Option<&str>, field: &str) -> Result<u8> {
    let s = s.filter(|s| !s.is_empty()).unwrap_or("rwm");
    let mut bits = 0;
    for c in s.chars() {
        bits |= match c {
            'r' => READ,
            'w' => WRITE,
            'm' => MKNOD,
            other => {
                return Err(AgentError::invalid(
                    format!("{field}.access"),
                    format!("{s:?} holds {other:?}: only r, w and m are device accesses"),
                ))
            }
        };
    }
    Ok(bits)
}

fn number(n: Option<i64>, field: &str) -> Result<Option<u32>> {
    match n {
        None => Ok(None),
        Some(n) if n < 0 => Ok(None), // -1 is the wire's wildcard
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| AgentError::invalid(field, format!("{n} is not a device number"))),
    }
}

impl DeviceRules {
    /// The rules of `linux.resources.devices` (`field` names the list in errors), with runc's
    /// default allow list appended. `None` when the spec has no rules.
    pub fn from_spec(rules: &[LinuxDeviceCgroup], field: &str) -> Result<Option<Self>> {
        if rules.is_empty() {
            return Ok(None);
        }
        let mut out = DeviceRules {
            default_allow: true,
            exceptions: Vec::new(),
        };
        for (i, r) in rules.iter().enumerate() {
            let f = format!("{field}[{i}]");
            let kind =
                match r.typ() {
                    None | Some(LinuxDeviceType::A) => {
                        access_bits(r.access().as_deref(), &f)?;
                        out.reset(r.allow());
                        continue;
                    }
                    Some(LinuxDeviceType::B) => Kind::Block,
                    Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Kind::Char,
                    Some(LinuxDeviceType::P) => return Err(AgentError::invalid(
                        format!("{f}.type"),
                        "\"p\" (a FIFO) is not a device class of the devices cgroup: use a, b or c",
                    )),
                };
            let access = access_bits(r.access().as_deref(), &f)?;
            let major = number(r.major(), &format!("{f}.major"))?;
            let minor = number(r.minor(), &format!("{f}.minor"))?;
            out.add(r.allow(), kind, major, minor, access);
        }
        for (allow, kind, major, minor, access) in runc_defaults() {
            out.add(allow, kind, major, minor, access);
        }
        Ok(Some(out))
    }

    fn reset(&mut self, allow: bool) {
        self.default_allow = allow;
        self.exceptions.clear();
    }

    /// One v1 write: an exception against the default, or access taken back from one.
    fn add(&mut self, allow: bool, kind: Kind, major: Option<u32>, minor: Option<u32>, access: u8) {
        let same = |e: &Exception| e.kind == kind && e.major == major && e.minor == minor;
        if allow != self.default_allow {
            match self.exceptions.iter_mut().find(|e| same(e)) {
                Some(e) => e.access |= access,
                None => self.exceptions.push(Exception {
                    kind,
                    major,
                    minor,
                    access,
                }),
            }
        } else {
            for e in self.exceptions.iter_mut().filter(|e| same(e)) {
                e.access &= !access;
            }
            self.exceptions.retain(|e| e.access != 0);
        }
    }

    /// Whether `access` to the device `kind major:minor` is allowed (the kernel's v1 check).
    pub fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        let matches = |e: &&Exception| {
            e.kind == kind
                && e.major.is_none_or(|m| m == major)
                && e.minor.is_none_or(|m| m == minor)
        };
        if self.default_allow {
            !self
                .exceptions
                .iter()
                .filter(matches)
                .any(|e| e.access & access != 0)
        } else {
            self.exceptions
                .iter()
                .filter(matches)
                .any(|e| access & !e.access == 0)
        }
    }

    /// The v1 writes, in order: `(file, line)`.
    pub fn v1_writes(&self) -> Vec<(&'static str, String)> {
        let (reset, exception) = if self.default_allow {
            ("devices.allow", "devices.deny")
        } else {
            ("devices.deny", "devices.allow")
        };
        let mut out = vec![(reset, "a".to_string())];
        for e in &self.exceptions {
            out.push((exception, e.to_string()));
        }
        out
    }

    /// The eBPF program enforcing these rules (`BPF_PROG_TYPE_CGROUP_DEVICE`).
    pub fn ebpf(&self) -> Vec<BpfInsn> {
        ebpf::program(self)
    }
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = match self.kind {
            Kind::Block => 'b',
            Kind::Char => 'c',
        };
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        let mut access = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        write!(f, "{t} {}:{} {access}", n(self.major), n(self.minor))
    }
}

/// Writes the rules into a v1 `devices` cgroup directory.
pub fn apply_v1(dir: &Path, rules: &DeviceRules) -> Result<()> {
    for (file, line) in rules.v1_writes() {
        let path = dir.join(file);
        std::fs::write(&path, &line)
            .map_err(|e| AgentError::io(format!("write {line:?} to {}", path.display()), e))?;
    }
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u8,
    /// `dst_reg` (low nibble) and `src_reg` (high nibble).
    pub regs: u8,
    /// Jump offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

mod ebpf {
    //! The device program, as runc's `devicefilter` shapes it: load type, access, major, minor
    //! from `struct bpf_cgroup_dev_ctx`, one block per exception, then the default.
    use super::{BpfInsn, DeviceRules, Kind};

    const LDX_MEM_W: u8 = 0x61;
    const ALU32_AND_K: u8 = 0x54;
    const ALU32_RSH_K: u8 = 0x74;
    const ALU32_MOV_X: u8 = 0xbc;
    const ALU64_MOV_K: u8 = 0xb7;
    const JMP_JNE_K: u8 = 0x55;
    const JMP_JEQ_K: u8 = 0x15;
    const JMP_JSET_K: u8 = 0x45;
    const EXIT: u8 = 0x95;
    /// `BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`.
    const DEV_BLOCK: i32 = 1;
    const DEV_CHAR: i32 = 2;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
        BpfInsn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        }
    }

    pub(super) fn program(rules: &DeviceRules) -> Vec<BpfInsn> {
        // r2 = type, r3 = access, r4 = major, r5 = minor.
        let mut p = vec![
            insn(LDX_MEM_W, 2, 1, 0, 0),
            insn(ALU32_AND_K, 2, 0, 0, 0xffff),
            insn(LDX_MEM_W, 3, 1, 0, 0),
            insn(ALU32_RSH_K, 3, 0, 0, 16),
            insn(LDX_MEM_W, 4, 1, 4, 0),
            insn(LDX_MEM_W, 5, 1, 8, 0),
        ];
        let verdict = if rules.default_allow { 0 } else { 1 };
        for e in &rules.exceptions {
            // Each check jumps past the block's end when the exception does not apply; the
            // offsets are patched once the block's length is known.
            let mut block: Vec<BpfInsn> = Vec::new();
            let kind = match e.kind {
                Kind::Block => DEV_BLOCK,
                Kind::Char => DEV_CHAR,
            };
            block.push(insn(JMP_JNE_K, 2, 0, 0, kind));
            let access = i32::from(e.access);
            if rules.default_allow {
                // A deny exception applies when the request shares an access with it.
                block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
                block.push(insn(ALU32_AND_K, 1, 0, 0, access));
                block.push(insn(JMP_JEQ_K, 1, 0, 0, 0));
            } else {
                // An allow exception applies when it covers every requested access.
                block.push(insn(JMP_JSET_K, 3, 0, 0, !access & 0x7));
            }
            if let Some(m) = e.major {
                block.push(insn(JMP_JNE_K, 4, 0, 0, m as i32));
            }
            if let Some(m) = e.minor {
                block.push(insn(JMP_JNE_K, 5, 0, 0, m as i32));
            }
            block.push(insn(ALU64_MOV_K, 0, 0, 0, verdict));
            block.push(insn(EXIT, 0, 0, 0, 0));
            let len = block.len();
            for (i, ins) in block.iter_mut().enumerate() {
                if matches!(ins.code, JMP_JNE_K | JMP_JEQ_K | JMP_JSET_K) {
                    ins.off = (len - i - 1) as i16;
                }
            }
            p.extend(block);
        }
        p.push(insn(ALU64_MOV_K, 0, 0, 0, 1 - verdict));
        p.push(insn(EXIT, 0, 0, 0, 0));
        p
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a #[repr(C)] bpf_attr prefix of exactly `size_of::<T>()` bytes, alive
    // for the call; the kernel reads (and for some commands writes) only that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn load(insns: &[BpfInsn]) -> std::io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 0];
    for log_level in [0u32, 1] {
        if log_level == 1 {
            log = vec![0u8; 64 * 1024];
        }
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size: log.len() as u32,
            // The kernel refuses a buffer without a log level.
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            ..Default::default()
        };
        attr.prog_name[..10].copy_from_slice(b"kata_devcg");
        match bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that we own.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            // Load again with the verifier's log, for the error message.
            Err(_) if log_level == 0 => continue,
            Err(e) => {
                let text = String::from_utf8_lossy(&log);
                let text = text.trim_end_matches('\0').trim();
                if text.is_empty() {
                    return Err(e);
                }
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{e}: verifier: {text}"),
                ));
            }
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::EACCES))
}

/// Loads the rules' eBPF program and attaches it to the v2 cgroup `dir`, replacing the one
/// attached before.
pub fn apply_v2(dir: &Path, rules: &DeviceRules) -> Result<()> {
    let prog = load(&rules.ebpf()).map_err(|e| {
        AgentError::io(
            format!("load the device eBPF program for {}", dir.display()),
            e,
        )
    })?;
    let cgroup = std::fs::File::open(dir)
        .map_err(|e| AgentError::io(format!("open cgroup {}", dir.display()), e))?;
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| {
        AgentError::io(
            format!("attach the device eBPF program to {}", dir.display()),
            e,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        t: Option<LinuxDeviceType>,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .access(access);
        if let Some(t) = t {
            b = b.typ(t);
        }
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// containerd's default: deny everything, then runc's defaults are appended.
    fn deny_all_plus(extra: Vec<LinuxDeviceCgroup>) -> DeviceRules {
        let mut rules = vec![rule(false, None, None, None, "rwm")];
        rules.extend(extra);
        DeviceRules::from_spec(&rules, "linux.resources.devices")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn no_rules_leave_the_cgroup_alone() {
        assert_eq!(DeviceRules::from_spec(&[], "x").unwrap(), None);
    }

    #[test]
    fn deny_all_keeps_runc_defaults() {
        let r = deny_all_plus(vec![]);
        assert!(!r.default_allow);
        assert!(r.allows(Kind::Char, 1, 3, READ | WRITE), "/dev/null");
        assert!(r.allows(Kind::Char, 136, 4, READ | WRITE), "a pty");
        assert!(r.allows(Kind::Block, 8, 0, MKNOD), "mknod of anything");
        assert!(!r.allows(Kind::Block, 8, 0, READ), "/dev/sda");
        assert!(!r.allows(Kind::Char, 1, 1, READ), "/dev/mem");
        assert_eq!(r.v1_writes()[0], ("devices.deny", "a".to_string()));
        assert!(r
            .v1_writes()
            .contains(&("devices.allow", "c 136:* rwm".to_string())));
    }

    #[test]
    fn later_rules_adjust_earlier_ones() {
        let r = deny_all_plus(vec![
            rule(true, Some(LinuxDeviceType::B), Some(8), Some(0), "rw"),
            rule(false, Some(LinuxDeviceType::B), Some(8), Some(0), "w"),
        ]);
        assert!(r.allows(Kind::Block, 8, 0, READ));
        assert!(!r.allows(Kind::Block, 8, 0, WRITE));
        // An allow-all reset in the middle: only later denies count.
        let rules = vec![
            rule(false, None, None, None, "rwm"),
            rule(true, Some(LinuxDeviceType::A), None, None, "rwm"),
            rule(false, Some(LinuxDeviceType::C), Some(1), Some(1), "rwm"),
        ];
        let r = DeviceRules::from_spec(&rules, "d").unwrap().unwrap();
        assert!(r.default_allow);
        assert!(!r.allows(Kind::Char, 1, 1, READ));
        assert!(r.allows(Kind::Block, 8, 0, READ));
    }

    #[test]
    fn bad_rules_name_the_field() {
        let err = DeviceRules::from_spec(
            &[rule(true, Some(LinuxDeviceType::C), None, None, "rwx")],
            "linux.resources.devices",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("linux.resources.devices[0].access"),
            "{err}"
        );
        let err = DeviceRules::from_spec(
            &[rule(true, Some(LinuxDeviceType::P), None, None, "rwm")],
            "linux.resources.devices",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("linux.resources.devices[0].type"),
            "{err}"
        );
    }

    /// Interprets the generated program for a device request, as the kernel would run it.
    fn run(p: &[BpfInsn], typ: u32, access: u32, major: u32, minor: u32) -> i64 {
        let mut r = [0u64; 11];
        let ctx = [(access << 16) | typ, major, minor];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                0x61 => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                0x54 => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                0x74 => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                0xbc => r[dst] = r[src] as u32 as u64,
                0xb7 => r[dst] = i.imm as i64 as u64,
                0x55 if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                0x15 if r[dst] == i.imm as i64 as u64 => pc += i.off as usize,
                0x45 if r[dst] & (i.imm as i64 as u64) != 0 => pc += i.off as usize,
                0x55 | 0x15 | 0x45 => {}
                0x95 => return r[0] as i64,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    /// The program loaded and attached to a real cgroup v2 directory (the host's hybrid
    /// `cgroup2` mount, or any cgroup2 mount): a denied node fails to open with EPERM.
    #[test]
    fn ebpf_program_is_enforced_by_the_kernel() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(root) = mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            post.starts_with("cgroup2 ")
                .then(|| std::path::PathBuf::from(mount_point))
        }) else {
            eprintln!("skipped: no cgroup2 mount on this host");
            return;
        };
        assert!(nix::unistd::geteuid().is_root(), "needs root (bpf, mknod)");
        let dir = root.join(format!("kata-agent-devices-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let rules = deny_all_plus(vec![]);
        let applied = apply_v2(&dir, &rules);
        let nodes = tempfile::tempdir().unwrap();
        let null = nodes.path().join("null");
        let kmsg = nodes.path().join("kmsg");
        for (path, minor) in [(&null, 3), (&kmsg, 11)] {
            nix::sys::stat::mknod(
                path.as_path(),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(1, minor),
            )
            .unwrap();
        }
        let procs = dir.join("cgroup.procs");
        let status = if applied.is_ok() {
            // SAFETY: the child only writes a cgroup file, opens two files and _exits.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    let code = (|| {
                        std::fs::write(&procs, "0").ok()?;
                        std::fs::File::open(&null).ok()?;
                        let denied = std::fs::File::open(&kmsg).err()?;
                        (denied.raw_os_error() == Some(libc::EPERM)).then_some(0)
                    })()
                    .unwrap_or(1);
                    // SAFETY: ends the forked child without running the harness's destructors.
                    unsafe { libc::_exit(code) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    Some(nix::sys::wait::waitpid(child, None).unwrap())
                }
            }
        } else {
            None
        };
        std::fs::remove_dir(&dir).unwrap();
        applied.unwrap();
        assert!(
            matches!(status, Some(nix::sys::wait::WaitStatus::Exited(_, 0))),
            "/dev/null must open and a denied node must fail with EPERM: {status:?}"
        );
    }

    #[test]
    fn ebpf_program_agrees_with_the_rules() {
        let specs = [
            deny_all_plus(vec![rule(
                true,
                Some(LinuxDeviceType::B),
                Some(8),
                None,
                "r",
            )]),
            DeviceRules::from_spec(
                &[rule(
                    false,
                    Some(LinuxDeviceType::C),
                    Some(1),
                    Some(1),
                    "rw",
                )],
                "d",
            )
            .unwrap()
            .unwrap(),
        ];
        for rules in &specs {
            let p = rules.ebpf();
            for (kind, typ) in [(Kind::Block, 1), (Kind::Char, 2)] {
                for (major, minor) in [(1, 1), (1, 3), (8, 0), (8, 16), (136, 2), (5, 2)] {
                    for access in 1..=7u8 {
                        let want = rules.allows(kind, major, minor, access);
                        let got = run(&p, typ, u32::from(access), major, minor) == 1;
                        assert_eq!(got, want, "{kind:?} {major}:{minor} access {access}");
                    }
                }
            }
        }
    }
}
