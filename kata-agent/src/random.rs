//! ReseedRandomDev: host entropy into the guest's random pool.
//!
//! The data is written to `/dev/random` (mixed into the input pool). In the guest (the agent is
//! its init) it is then credited (`RNDADDTOENTCNT`, its size in bits) and the kernel's CRNG is
//! reseeded at once (`RNDRESEEDCRNG`): a VM started from a template or handed over from a VM
//! cache woke with a CRNG state its siblings share, and a write alone leaves that state in use
//! until the kernel's next scheduled reseed (up to a minute). Kata's agent does the same. On a
//! host (the test backend) only the write is done: the host's pool is not the agent's to credit.

use std::os::fd::AsRawFd;

use crate::error::{AgentError, Result};

/// `_IOW('R', 0x01, int)`: add to the entropy count (bits).
const RNDADDTOENTCNT: libc::c_ulong = 0x4004_5201;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `data` into the random pool; with `credit_and_reseed` (the agent is the guest's
/// init) credits it and reseeds the CRNG.
pub fn reseed(data: &[u8], credit_and_reseed: bool) -> Result<()> {
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| AgentError::io("open /dev/random", e))?;
    std::io::Write::write_all(&mut &random, data)
        .map_err(|e| AgentError::io("write /dev/random", e))?;
    if !credit_and_reseed || data.is_empty() {
        return Ok(());
    }
    let bits = libc::c_int::try_from(data.len().saturating_mul(8)).unwrap_or(libc::c_int::MAX);
    // SAFETY: RNDADDTOENTCNT reads one int from a valid reference.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDTOENTCNT as _, &bits) } != 0 {
        return Err(AgentError::io(
            "ioctl RNDADDTOENTCNT on /dev/random",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(AgentError::io(
            "ioctl RNDRESEEDCRNG on /dev/random",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ioctl numbers are the kernel's: as root each is accepted (a wrong number is
    /// `ENOTTY`). Crediting 64 bits of the host's own randomness and reseeding is harmless.
    #[test]
    fn the_pool_is_credited_and_the_crng_reseeded_with_the_kernels_ioctls() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: RNDADDTOENTCNT needs CAP_SYS_ADMIN; skipped");
            return;
        }
        let mut data = [0u8; 8];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut data)
            .unwrap();
        reseed(&data, true).unwrap();
        reseed(&data, false).unwrap();
    }
}
