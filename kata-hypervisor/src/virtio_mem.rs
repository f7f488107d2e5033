//! What a virtio-mem resize reached, judged the same way for every backend that has the
//! device (QEMU's `virtio-mem-pci`, the built-in VMM's virtio-mem).

use std::time::Duration;

use crate::error::{Error, Result};

const MIB: u64 = 1 << 20;

/// One resize: the guest was asked for `requested` bytes of the region, had `before` plugged
/// and reached `reached` within `wait`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// The VM's boot memory (`default_memory`) in MiB, below the region.
    pub boot_mib: u32,
    pub requested: u64,
    pub before: u64,
    pub reached: u64,
    pub wait: Duration,
}

impl Outcome {
    /// The VM's memory in MiB once the guest holds `plugged` bytes of the region.
    fn mib(&self, plugged: u64) -> u32 {
        u32::try_from(u64::from(self.boot_mib) + plugged / MIB).unwrap_or(u32::MAX)
    }

    /// The VM's memory in MiB now. A growth the guest did not finish is an error naming what
    /// it plugged; a shrink it did not finish is its answer (logged: the guest keeps what it
    /// could not unplug). `vmm` names the backend in the log.
    pub(crate) fn judge(&self, vmm: &str) -> Result<u32> {
        let grow = self.requested > self.before;
        if grow && self.reached < self.requested {
            return Err(Error::Timeout {
                what: format!(
                    "the guest to plug {} MiB of virtio-mem memory (it plugged {} MiB; is its \
                     virtio_mem driver loaded? CONFIG_VIRTIO_MEM)",
                    self.requested / MIB,
                    self.reached / MIB
                ),
                after: self.wait,
            });
        }
        if !grow && self.reached > self.requested {
            tracing::warn!(
                requested_mib = self.requested / MIB,
                plugged_mib = self.reached / MIB,
                "the guest kept virtio-mem memory it could not unplug"
            );
        }
        tracing::info!(
            from_mib = self.mib(self.before),
            to_mib = self.mib(self.reached),
            "{vmm}: memory resized through virtio-mem"
        );
        Ok(self.mib(self.reached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(requested: u64, before: u64, reached: u64) -> Outcome {
        Outcome {
            boot_mib: 256,
            requested: requested * MIB,
            before: before * MIB,
            reached: reached * MIB,
            wait: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_short_growth_is_an_error_and_a_short_shrink_the_answer() {
        assert_eq!(outcome(256, 0, 256).judge("t").unwrap(), 512);
        let e = outcome(256, 0, 128).judge("t").unwrap_err().to_string();
        assert!(
            e.contains("plug 256 MiB") && e.contains("plugged 128 MiB"),
            "{e}"
        );
        assert_eq!(outcome(0, 256, 2).judge("t").unwrap(), 258);
        assert_eq!(outcome(0, 256, 0).judge("t").unwrap(), 256);
    }
}
