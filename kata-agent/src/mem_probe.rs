//! MemHotplugByProbe: tells the guest kernel about hot-added memory through its probe file,
//! as Kata's agent does (each address written, `0x` and upper-case hex, to
//! `/sys/devices/system/memory/probe`; a failed write is `INTERNAL`).
//!
//! runtime-rs calls it only when GetGuestDetails said the probe file exists (a kernel with
//! `CONFIG_ARCH_MEMORY_PROBE`, which the kata-rs guest kernel does not have: there the first
//! write fails naming the file). An agent that is not the guest's init leaves the host's
//! memory alone.

use std::path::Path;

use crate::error::{AgentError, Result};

/// The guest kernel's memory probe file.
pub const PROBE: &str = "/sys/devices/system/memory/probe";

/// The text written to the probe file for `addr`.
pub fn probe_text(addr: u64) -> String {
    format!("{addr:#X}")
}

/// Writes each address to `probe`, in order.
pub fn probe(probe: &Path, addrs: &[u64]) -> Result<()> {
    for addr in addrs {
        std::fs::write(probe, probe_text(*addr)).map_err(|e| {
            AgentError::io(
                format!(
                    "MemHotplugByProbe: write {} to {}",
                    probe_text(*addr),
                    probe.display()
                ),
                e,
            )
        })?;
        tracing::info!(address = %probe_text(*addr), "memory probed");
    }
    Ok(())
}

/// MemHotplugByProbe.
pub fn hotplug_by_probe(addrs: &[u64], owns_guest: bool) -> Result<()> {
    if !owns_guest {
        tracing::debug!(?addrs, "not the guest's init: memory left alone");
        return Ok(());
    }
    probe(Path::new(PROBE), addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_kata_writes_them() {
        assert_eq!(probe_text(0x1_4000_0000), "0x140000000");
        assert_eq!(probe_text(0xabc0_0000), "0xABC00000");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("probe");
        probe(&f, &[0x8000_0000, 0xc000_0000]).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "0xC0000000");
        let err = probe(&dir.path().join("no/probe"), &[1]).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(err.to_string().contains("no/probe"), "{err}");
    }
}
