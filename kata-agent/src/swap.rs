//! AddSwap / AddSwapPath: swap on a hot-plugged disk or on a file, as Kata's agent adds it
//! (`swapon(2)` with no flags; a failure is `INTERNAL` with the errno).
//!
//! AddSwap names the disk by its PCI path (one slot per element, from the root bus), found as
//! a `blk` storage's disk is, waiting for it to appear (`agent.hotplug_timeout`). runtime-rs
//! calls these only with `enable_guest_swap`. An agent that is not the guest's init (the host
//! tier) checks the request, and that the file exists, but leaves the host's swap alone.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};
use crate::storage::StorageSpec;

/// The PCI path (`02/00`) of AddSwap's `PCIPath`: at least one slot, each below 32 (as Kata's
/// agent's `pci::SlotFn` checks them).
pub fn pci_path(slots: &[u32]) -> Result<String> {
    if slots.is_empty() {
        return Err(AgentError::Failed {
            method: "AddSwap",
            reason: "PCIPath is empty: name the swap disk's PCI slots from the root bus".into(),
        });
    }
    if let Some(bad) = slots.iter().find(|s| **s > 31) {
        return Err(AgentError::Failed {
            method: "AddSwap",
            reason: format!("PCIPath {slots:?}: slot {bad} is not a PCI slot (0-31)"),
        });
    }
    Ok(slots
        .iter()
        .map(|s| format!("{s:02x}"))
        .collect::<Vec<_>>()
        .join("/"))
}

/// AddSwap: swap on the virtio-blk disk at PCI path `slots`.
pub async fn add_swap(slots: &[u32], owns_guest: bool) -> Result<()> {
    let path = pci_path(slots)?;
    if !owns_guest {
        tracing::debug!(pci_path = %path, "not the guest's init: swap left alone");
        return Ok(());
    }
    let spec = StorageSpec {
        driver: "blk".into(),
        source: path.clone(),
        mount_point: "/swap".into(),
        ..Default::default()
    };
    let dev = crate::storage::resolve_devices(&[spec])
        .await?
        .remove(0)
        .source;
    swapon(Path::new(&dev))
}

/// AddSwapPath: swap on the file or device `path`.
pub fn add_swap_path(path: &str, owns_guest: bool) -> Result<()> {
    let p = PathBuf::from(path);
    if !owns_guest {
        std::fs::metadata(&p)
            .map_err(|e| AgentError::io(format!("AddSwapPath: swapon {path:?}"), e))?;
        tracing::debug!(path, "not the guest's init: swap left alone");
        return Ok(());
    }
    swapon(&p)
}

fn swapon(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| AgentError::Failed {
        method: "AddSwapPath",
        reason: format!("swapon {:?}: the path has a NUL byte", path.display()),
    })?;
    // SAFETY: swapon(2) reads the NUL-terminated path, which outlives the call.
    let ret = unsafe { libc::swapon(c.as_ptr(), 0) };
    if ret != 0 {
        return Err(AgentError::io(
            format!("swapon {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    tracing::info!(path = %path.display(), "swap added");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_paths_are_checked_as_kata_checks_them() {
        assert_eq!(pci_path(&[2]).unwrap(), "02");
        assert_eq!(pci_path(&[3, 0]).unwrap(), "03/00");
        for bad in [&[][..], &[32][..], &[1, 40][..]] {
            let err = pci_path(bad).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INTERNAL, "{bad:?}");
            assert!(err.to_string().contains("PCIPath"), "{err}");
        }
    }

    #[test]
    fn a_missing_swap_file_is_internal_naming_it_and_the_host_is_left_alone() {
        let err = add_swap_path("/nonexistent/swapfile", false).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(err.to_string().contains("/nonexistent/swapfile"), "{err}");
        let f = tempfile::NamedTempFile::new().unwrap();
        add_swap_path(f.path().to_str().unwrap(), false).expect("checked, not swapped on");
    }
}
