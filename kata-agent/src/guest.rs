//! Guest-wide operations the host asks for: setting the clock (onlining hot-plugged CPUs and
//! memory is [`crate::online`]). Only done when the agent is the guest's init
//! ([`crate::sandbox::Sandbox::owns_guest`]); on a host they would change the host.

use crate::error::{AgentError, Result};

/// SetGuestDateTime.
pub fn set_time(sec: i64, usec: i64) -> Result<()> {
    if !(0..1_000_000).contains(&usec) {
        return Err(AgentError::invalid(
            "Usec",
            format!("{usec} is not below 1000000"),
        ));
    }
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: (usec * 1000) as libc::c_long,
    };
    // SAFETY: clock_settime reads one timespec from a valid reference.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(AgentError::io(
            "clock_settime",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
