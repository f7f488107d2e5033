//! How a process ended ([`ExitStatus`]) and what can end it ([`Signal`]).
//!
//! The agent protocol reports a shell-style status (`WaitProcessResponse.status`: the exit
//! code, or 128 + the signal number). A shell status cannot tell `exit 137` from a SIGKILL, so
//! the kata-rs agent also sends the terminating signal in a kata-rs extension field
//! (`WaitProcessResponse.signal`, field 1000). [`ExitStatus`] is built from that field when it
//! is present, and falls back to decoding 128 + n only when it is absent (Kata's own agent).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A signal number the guest kernel accepts: 1 to 64, real-time signals included.
///
/// A checked newtype rather than `nix::sys::signal::Signal`, which has no real-time signals
/// (`SIGRTMIN+3` is systemd's stop signal). The constants are the Linux numbers of the
/// target architecture (the guest runs the same architecture as the host).
///
/// ```
/// use kata_agent_client::Signal;
///
/// assert_eq!(Signal::try_from(15)?, Signal::TERM);
/// assert_eq!("SIGKILL".parse::<Signal>()?, Signal::KILL);
/// assert_eq!("hup".parse::<Signal>()?.number(), libc::SIGHUP);
/// assert!(Signal::try_from(37).is_ok()); // a real-time signal
/// assert!(Signal::try_from(0).is_err() && Signal::try_from(65).is_err());
/// # Ok::<(), kata_agent_client::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signal(u8);

/// Names of the standard Linux signals, as `kill -l` spells them without `SIG`.
const NAMES: &[(i32, &str)] = &[
    (libc::SIGHUP, "HUP"),
    (libc::SIGINT, "INT"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGILL, "ILL"),
    (libc::SIGTRAP, "TRAP"),
    (libc::SIGABRT, "ABRT"),
    (libc::SIGBUS, "BUS"),
    (libc::SIGFPE, "FPE"),
    (libc::SIGKILL, "KILL"),
    (libc::SIGUSR1, "USR1"),
    (libc::SIGSEGV, "SEGV"),
    (libc::SIGUSR2, "USR2"),
    (libc::SIGPIPE, "PIPE"),
    (libc::SIGALRM, "ALRM"),
    (libc::SIGTERM, "TERM"),
    (libc::SIGSTKFLT, "STKFLT"),
    (libc::SIGCHLD, "CHLD"),
    (libc::SIGCONT, "CONT"),
    (libc::SIGSTOP, "STOP"),
    (libc::SIGTSTP, "TSTP"),
    (libc::SIGTTIN, "TTIN"),
    (libc::SIGTTOU, "TTOU"),
    (libc::SIGURG, "URG"),
    (libc::SIGXCPU, "XCPU"),
    (libc::SIGXFSZ, "XFSZ"),
    (libc::SIGVTALRM, "VTALRM"),
    (libc::SIGPROF, "PROF"),
    (libc::SIGWINCH, "WINCH"),
    (libc::SIGIO, "IO"),
    (libc::SIGPWR, "PWR"),
    (libc::SIGSYS, "SYS"),
];

impl Signal {
    /// The smallest signal number.
    pub const MIN: i32 = 1;
    /// The largest signal number (the kernel's `SIGRTMAX`, `_NSIG - 1`).
    pub const MAX: i32 = 64;

    /// `SIGHUP`: hang-up; many daemons reload their configuration.
    pub const HUP: Signal = Signal(libc::SIGHUP as u8);
    /// `SIGINT`: interrupt (Ctrl-C).
    pub const INT: Signal = Signal(libc::SIGINT as u8);
    /// `SIGQUIT`: quit with a core dump (Ctrl-\).
    pub const QUIT: Signal = Signal(libc::SIGQUIT as u8);
    /// `SIGABRT`: abort.
    pub const ABRT: Signal = Signal(libc::SIGABRT as u8);
    /// `SIGKILL`: kill; cannot be caught.
    pub const KILL: Signal = Signal(libc::SIGKILL as u8);
    /// `SIGUSR1`: user-defined signal 1.
    pub const USR1: Signal = Signal(libc::SIGUSR1 as u8);
    /// `SIGSEGV`: invalid memory access.
    pub const SEGV: Signal = Signal(libc::SIGSEGV as u8);
    /// `SIGUSR2`: user-defined signal 2.
    pub const USR2: Signal = Signal(libc::SIGUSR2 as u8);
    /// `SIGPIPE`: write to a pipe nobody reads.
    pub const PIPE: Signal = Signal(libc::SIGPIPE as u8);
    /// `SIGALRM`: timer expired.
    pub const ALRM: Signal = Signal(libc::SIGALRM as u8);
    /// `SIGTERM`: polite termination request (what `kill` sends by default).
    pub const TERM: Signal = Signal(libc::SIGTERM as u8);
    /// `SIGCHLD`: a child stopped or exited.
    pub const CHLD: Signal = Signal(libc::SIGCHLD as u8);
    /// `SIGCONT`: continue a stopped process.
    pub const CONT: Signal = Signal(libc::SIGCONT as u8);
    /// `SIGSTOP`: stop; cannot be caught.
    pub const STOP: Signal = Signal(libc::SIGSTOP as u8);
    /// `SIGTSTP`: terminal stop (Ctrl-Z).
    pub const TSTP: Signal = Signal(libc::SIGTSTP as u8);
    /// `SIGWINCH`: the terminal was resized.
    pub const WINCH: Signal = Signal(libc::SIGWINCH as u8);

    /// The signal number.
    pub const fn number(self) -> i32 {
        self.0 as i32
    }

    /// The conventional name without `SIG` (`"TERM"`), for the standard signals 1 to 31.
    pub fn name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(n, _)| *n == self.number())
            .map(|(_, name)| *name)
    }
}

impl TryFrom<i32> for Signal {
    type Error = Error;

    fn try_from(value: i32) -> Result<Self> {
        if (Self::MIN..=Self::MAX).contains(&value) {
            Ok(Signal(value as u8))
        } else {
            Err(Error::InvalidSignal {
                value: value.to_string(),
            })
        }
    }
}

impl TryFrom<u32> for Signal {
    type Error = Error;

    fn try_from(value: u32) -> Result<Self> {
        i32::try_from(value)
            .map_err(|_| Error::InvalidSignal {
                value: value.to_string(),
            })
            .and_then(Signal::try_from)
    }
}

impl From<Signal> for i32 {
    fn from(signal: Signal) -> i32 {
        signal.number()
    }
}

impl FromStr for Signal {
    type Err = Error;

    /// Parses a number (`"9"`) or a name with or without `SIG`, in any case (`"SIGTERM"`,
    /// `"term"`).
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidSignal {
            value: s.to_string(),
        };
        if let Ok(n) = s.parse::<i32>() {
            return Signal::try_from(n).map_err(|_| invalid());
        }
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        NAMES
            .iter()
            .find(|(_, known)| *known == name)
            .map(|(n, _)| Signal(*n as u8))
            .ok_or_else(invalid)
    }
}

impl fmt::Display for Signal {
    /// `SIGTERM` for a standard signal, `signal 37` for a real-time one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// How a process ended: it exited with a code, or a signal killed it.
///
/// Shaped like `std::process::ExitStatus` on Unix: [`ExitStatus::code`] for an exit,
/// [`ExitStatus::signal`] for a kill. [`ExitStatus::to_shell_status`] is the single number
/// containerd and shells use (the code, or 128 + the signal number).
///
/// ```
/// use kata_agent_client::{ExitStatus, Signal};
///
/// let killed = ExitStatus::from_signal(Signal::KILL);
/// let exited = ExitStatus::from_code(137);
/// assert_ne!(killed, exited);
/// assert_eq!((killed.code(), killed.signal()), (None, Some(9)));
/// assert_eq!((exited.code(), exited.signal()), (Some(137), None));
/// assert_eq!(killed.to_shell_status(), exited.to_shell_status());
/// assert_eq!(killed.to_string(), "signal: 9 (SIGKILL)");
/// assert!(ExitStatus::from_code(0).success());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExitStatus(How);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum How {
    Exited(i32),
    Killed(Signal),
}

impl ExitStatus {
    /// A process that exited with `code`.
    pub const fn from_code(code: i32) -> Self {
        ExitStatus(How::Exited(code))
    }

    /// A process that `signal` killed.
    pub const fn from_signal(signal: Signal) -> Self {
        ExitStatus(How::Killed(signal))
    }

    /// Decodes a shell-style status: 129 to 192 (128 + a signal number) is a kill by that
    /// signal, anything else an exit code.
    ///
    /// Ambiguous by nature: a process that ran `exit 137` reads as killed by SIGKILL. Use it
    /// only where nothing better is known (a status from Kata's agent, or saved by an older
    /// kata-rs).
    pub fn from_shell_status(status: i32) -> Self {
        match status.checked_sub(128).map(Signal::try_from) {
            Some(Ok(signal)) => ExitStatus::from_signal(signal),
            _ => ExitStatus::from_code(status),
        }
    }

    /// The exit code, if the process exited (`None` if a signal killed it).
    pub fn code(&self) -> Option<i32> {
        match self.0 {
            How::Exited(code) => Some(code),
            How::Killed(_) => None,
        }
    }

    /// The number of the signal that killed the process (`None` if it exited).
    pub fn signal(&self) -> Option<i32> {
        self.terminating_signal().map(Signal::number)
    }

    /// The signal that killed the process, typed (`None` if it exited).
    pub fn terminating_signal(&self) -> Option<Signal> {
        match self.0 {
            How::Exited(_) => None,
            How::Killed(signal) => Some(signal),
        }
    }

    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// The status as a shell (and containerd's `exit_status`) reports it: the exit code, or
    /// 128 + the signal number.
    pub fn to_shell_status(&self) -> i32 {
        match self.0 {
            How::Exited(code) => code,
            How::Killed(signal) => 128 + signal.number(),
        }
    }

    /// Builds the status from a `WaitProcessResponse`: from the kata-rs `signal` field when
    /// the agent sent it, else (Kata's agent) by decoding `status` as a shell status.
    pub(crate) fn from_wait_response(status: i32, signal: Option<i32>) -> Result<Self> {
        match signal {
            None => Ok(ExitStatus::from_shell_status(status)),
            Some(0) => Ok(ExitStatus::from_code(status)),
            Some(n) => Signal::try_from(n)
                .map(ExitStatus::from_signal)
                .map_err(|_| Error::BadAnswer {
                    method: "WaitProcess",
                    reason: format!("signal {n} (status {status}) is not a signal number 1..=64"),
                }),
        }
    }
}

impl fmt::Display for ExitStatus {
    /// `exit status: 3`, or `signal: 9 (SIGKILL)`, as std's `ExitStatus` says it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            How::Exited(code) => write!(f, "exit status: {code}"),
            How::Killed(signal) => match signal.name() {
                Some(_) => write!(f, "signal: {} ({signal})", signal.number()),
                None => write!(f, "signal: {}", signal.number()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_bounds_are_1_to_64() {
        for n in [i32::MIN, -1, 0, 65, 128, i32::MAX] {
            let err = Signal::try_from(n).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidSignal { value } if *value == n.to_string()),
                "{err:?}"
            );
            assert!(err.to_string().contains("1..=64"), "{err}");
        }
        for n in [1, 9, 15, 31, 32, 34, 37, 64] {
            assert_eq!(Signal::try_from(n).unwrap().number(), n);
            assert_eq!(i32::from(Signal::try_from(n).unwrap()), n);
        }
        assert!(Signal::try_from(u32::MAX).is_err());
        assert_eq!(Signal::try_from(9u32).unwrap(), Signal::KILL);
    }

    #[test]
    fn constants_are_the_linux_numbers() {
        let pairs = [
            (Signal::HUP, libc::SIGHUP),
            (Signal::INT, libc::SIGINT),
            (Signal::QUIT, libc::SIGQUIT),
            (Signal::ABRT, libc::SIGABRT),
            (Signal::KILL, libc::SIGKILL),
            (Signal::USR1, libc::SIGUSR1),
            (Signal::SEGV, libc::SIGSEGV),
            (Signal::USR2, libc::SIGUSR2),
            (Signal::PIPE, libc::SIGPIPE),
            (Signal::ALRM, libc::SIGALRM),
            (Signal::TERM, libc::SIGTERM),
            (Signal::CHLD, libc::SIGCHLD),
            (Signal::CONT, libc::SIGCONT),
            (Signal::STOP, libc::SIGSTOP),
            (Signal::TSTP, libc::SIGTSTP),
            (Signal::WINCH, libc::SIGWINCH),
        ];
        for (signal, n) in pairs {
            assert_eq!(signal.number(), n, "{signal}");
        }
        assert_eq!((Signal::KILL.number(), Signal::TERM.number()), (9, 15));
    }

    #[test]
    fn signals_parse_and_display_by_name_and_number() {
        assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::TERM);
        assert_eq!("term".parse::<Signal>().unwrap(), Signal::TERM);
        assert_eq!("SigUsr1".parse::<Signal>().unwrap(), Signal::USR1);
        assert_eq!("37".parse::<Signal>().unwrap().number(), 37);
        for bad in ["", "SIG", "SIGFOO", "0", "65", "-9", "9x"] {
            let err = bad.parse::<Signal>().unwrap_err();
            assert!(
                matches!(&err, Error::InvalidSignal { value } if value == bad),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
        assert_eq!(Signal::try_from(37).unwrap().to_string(), "signal 37");
        assert_eq!(Signal::try_from(37).unwrap().name(), None);
        // Every named signal parses back from its display form.
        for n in Signal::MIN..=Signal::MAX {
            let s = Signal::try_from(n).unwrap();
            if s.name().is_some() {
                assert_eq!(s.to_string().parse::<Signal>().unwrap(), s);
            }
        }
    }

    #[test]
    fn exit_status_from_the_kata_rs_signal_field() {
        // The agent sends the signal: `exit 137` and SIGKILL differ.
        let exited = ExitStatus::from_wait_response(137, Some(0)).unwrap();
        assert_eq!((exited.code(), exited.signal()), (Some(137), None));
        assert!(!exited.success());
        let killed = ExitStatus::from_wait_response(137, Some(9)).unwrap();
        assert_eq!((killed.code(), killed.signal()), (None, Some(9)));
        assert_eq!(killed.terminating_signal(), Some(Signal::KILL));
        assert_eq!(killed.to_shell_status(), 137);
        // A real-time signal.
        let rt = ExitStatus::from_wait_response(128 + 37, Some(37)).unwrap();
        assert_eq!(rt.signal(), Some(37));
        assert_eq!(rt.to_string(), "signal: 37");
        // An exit code the shell form would misread.
        let ok = ExitStatus::from_wait_response(0, Some(0)).unwrap();
        assert!(ok.success());
        // Nonsense from the agent is an error naming the call.
        let err = ExitStatus::from_wait_response(227, Some(99)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadAnswer {
                    method: "WaitProcess",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("99"), "{err}");
    }

    #[test]
    fn exit_status_falls_back_to_the_shell_form_without_the_field() {
        // Kata's agent: 128 + n is read as a kill (ambiguous, documented).
        let killed = ExitStatus::from_wait_response(137, None).unwrap();
        assert_eq!(killed.terminating_signal(), Some(Signal::KILL));
        let term = ExitStatus::from_wait_response(143, None).unwrap();
        assert_eq!(term.terminating_signal(), Some(Signal::TERM));
        for code in [0, 1, 3, 127, 128, 193, 255, -1] {
            let s = ExitStatus::from_wait_response(code, None).unwrap();
            assert_eq!((s.code(), s.signal()), (Some(code), None), "{code}");
        }
        assert_eq!(
            ExitStatus::from_shell_status(129).terminating_signal(),
            Some(Signal::HUP)
        );
        assert_eq!(ExitStatus::from_shell_status(192).signal(), Some(64));
    }

    #[test]
    fn shell_status_round_trips_and_display_matches_std() {
        for status in 0..=255 {
            assert_eq!(
                ExitStatus::from_shell_status(status).to_shell_status(),
                status
            );
        }
        assert_eq!(ExitStatus::from_code(3).to_string(), "exit status: 3");
        assert_eq!(
            ExitStatus::from_signal(Signal::TERM).to_string(),
            "signal: 15 (SIGTERM)"
        );
        // std's own wording, for the same statuses (raw wait statuses: code << 8, or the signal).
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            std::process::ExitStatus::from_raw(3 << 8).to_string(),
            "exit status: 3"
        );
        assert_eq!(
            std::process::ExitStatus::from_raw(15).to_string(),
            "signal: 15 (SIGTERM)"
        );
    }
}
