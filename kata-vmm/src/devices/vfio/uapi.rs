//! The few VFIO ioctls the VMM makes (`linux/vfio.h`), raw through `libc`: the container
//! (`/dev/vfio/vfio`, type1 IOMMU), the group (`/dev/vfio/<N>`), the device fd, its regions and
//! the DMA mapping of guest RAM, and the device's MSI (`VFIO_DEVICE_GET_IRQ_INFO`,
//! `VFIO_DEVICE_SET_IRQS`).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use crate::error::{Error, Result};

const VFIO_TYPE: u64 = b';' as u64;
const fn io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | nr
}
const VFIO_GET_API_VERSION: u64 = io(100);
const VFIO_CHECK_EXTENSION: u64 = io(101);
const VFIO_SET_IOMMU: u64 = io(102);
const VFIO_GROUP_GET_STATUS: u64 = io(103);
const VFIO_GROUP_SET_CONTAINER: u64 = io(104);
const VFIO_GROUP_GET_DEVICE_FD: u64 = io(106);
const VFIO_DEVICE_GET_INFO: u64 = io(107);
const VFIO_DEVICE_GET_REGION_INFO: u64 = io(108);
const VFIO_DEVICE_GET_IRQ_INFO: u64 = io(109);
/// `VFIO_DEVICE_SET_IRQS`: the one VFIO ioctl a vCPU thread makes (the guest enabling or
/// disabling MSI), hence public for the seccomp allow-list.
pub const VFIO_DEVICE_SET_IRQS: u64 = io(110);
const VFIO_IOMMU_MAP_DMA: u64 = io(113);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: u64 = 1;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;
/// The region index of a PCI function's configuration space.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// The interrupt index of a PCI function's INTx.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// The interrupt index of a PCI function's MSI.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// The interrupt index of a PCI function's MSI-X.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
const VFIO_IRQ_SET_DATA_NONE: u32 = 1;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// The most vectors MSI has (multiple message capable is at most 32).
pub const MSI_MAX_VECTORS: usize = 32;
/// `VFIO_REGION_INFO_FLAG_READ | WRITE`.
const REGION_RW: u32 = 0b11;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct DeviceInfo {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfoRaw {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

/// The most eventfds one `VFIO_DEVICE_SET_IRQS` carries (MSI-X vectors shown to a guest are
/// capped at as many: [`super::msix::MSIX_MAX_VECTORS`]).
const SET_MAX_FDS: usize = 64;

/// `vfio_irq_set` with room for every MSI or shown MSI-X vector's eventfd.
#[repr(C)]
struct IrqSet {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fds: [i32; SET_MAX_FDS],
}

/// A region of a VFIO device: where it is in the device fd and how large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// Its offset in the device fd.
    pub offset: u64,
    /// Its size (0: the region does not exist, e.g. an unimplemented BAR).
    pub size: u64,
}

fn io_error(device: &str, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let (device, what) = (device.to_string(), what.into());
    move |source| Error::DeviceIo {
        device,
        what,
        source,
    }
}

/// An ioctl's result: `Err` with errno on -1.
fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The container: one IOMMU context for all the VM's devices.
#[derive(Debug)]
pub struct Container {
    file: File,
    iommu_set: bool,
}

impl Container {
    /// Opens `dev_vfio/vfio` and checks the API version and the type1 IOMMU.
    pub fn open(dev_vfio: &Path) -> Result<Container> {
        let path = dev_vfio.join("vfio");
        let who = format!("VFIO container {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&who, "opening it (is the vfio module loaded?)"))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument and touches no memory.
        let v = unsafe { libc::ioctl(file.as_raw_fd(), VFIO_GET_API_VERSION as _) };
        if v != VFIO_API_VERSION {
            return Err(Error::Device {
                device: who,
                reason: format!("VFIO API version {v}, the VMM speaks {VFIO_API_VERSION}"),
            });
        }
        Ok(Container {
            file,
            iommu_set: false,
        })
    }

    /// The type1 IOMMU model the kernel offers (v2 preferred).
    fn iommu_type(&self) -> Option<u64> {
        [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU]
            .into_iter()
            .find(|t| {
                // SAFETY: VFIO_CHECK_EXTENSION takes an integer and touches no memory.
                unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_CHECK_EXTENSION as _, *t) > 0 }
            })
    }

    /// Adds `group` (checked viable: all its devices bound to vfio-pci) to the container; the
    /// first one sets the IOMMU model.
    pub fn add_group(&mut self, group: &File, name: &str) -> Result<()> {
        let mut status = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: VFIO_GROUP_GET_STATUS writes one `vfio_group_status` into `status`.
        check(unsafe {
            libc::ioctl(
                group.as_raw_fd(),
                VFIO_GROUP_GET_STATUS as _,
                &mut status as *mut GroupStatus,
            )
        })
        .map_err(io_error(name, "VFIO_GROUP_GET_STATUS"))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Device {
                device: name.into(),
                reason: "the group is not viable: a device in it is bound to a host driver; \
                         bind every device of the group to vfio-pci"
                    .into(),
            });
        }
        let fd: libc::c_int = self.file.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int (the container fd) from `fd`.
        check(unsafe {
            libc::ioctl(
                group.as_raw_fd(),
                VFIO_GROUP_SET_CONTAINER as _,
                &fd as *const libc::c_int,
            )
        })
        .map_err(io_error(name, "VFIO_GROUP_SET_CONTAINER"))?;
        if !self.iommu_set {
            let t = self.iommu_type().ok_or_else(|| Error::Device {
                device: name.into(),
                reason: "the host's VFIO offers no type1 IOMMU (is the IOMMU on: intel_iommu=on \
                         or amd_iommu, and vfio_iommu_type1 loaded?)"
                    .into(),
            })?;
            // SAFETY: VFIO_SET_IOMMU takes an integer and touches no memory.
            check(unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_SET_IOMMU as _, t) })
                .map_err(io_error(name, "VFIO_SET_IOMMU"))?;
            self.iommu_set = true;
        }
        Ok(())
    }

    /// Maps `size` bytes of this process at `host` to the devices' DMA address `iova`.
    ///
    /// # Safety
    /// `host..host+size` must be a live mapping that outlives the container (the kernel pins
    /// its pages while the container holds the mapping).
    pub unsafe fn map_dma(&self, iova: u64, size: u64, host: u64) -> Result<()> {
        let map = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: host,
            iova,
            size,
        };
        // SAFETY: VFIO_IOMMU_MAP_DMA reads one `vfio_iommu_type1_dma_map`; the caller vouches
        // for the mapping it names.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VFIO_IOMMU_MAP_DMA as _,
                &map as *const DmaMap,
            )
        })
        .map_err(io_error(
            "VFIO container",
            format!(
                "VFIO_IOMMU_MAP_DMA of guest RAM {iova:#x}+{size:#x} (RLIMIT_MEMLOCK too low?)"
            ),
        ))?;
        Ok(())
    }
}

/// Opens group `dev_vfio/<group>`.
pub fn open_group(dev_vfio: &Path, group: u32) -> Result<File> {
    let path = dev_vfio.join(group.to_string());
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_error(
            &format!("VFIO group {}", path.display()),
            "opening it (in use by another VM, or not bound to vfio-pci?)",
        ))
}

/// The device fd of PCI function `bdf` in `group`, checked to be a PCI device.
pub fn device_fd(group: &File, bdf: &str) -> Result<File> {
    let who = format!("VFIO device {bdf}");
    let name = CString::new(bdf).map_err(|_| Error::Device {
        device: who.clone(),
        reason: "the address has a NUL byte".into(),
    })?;
    // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated name that outlives the call and
    // returns a new descriptor.
    let fd = check(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            VFIO_GROUP_GET_DEVICE_FD as _,
            name.as_ptr(),
        )
    })
    .map_err(io_error(&who, "VFIO_GROUP_GET_DEVICE_FD"))?;
    // SAFETY: `fd` is a new descriptor this process owns from here on.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut info = DeviceInfo {
        argsz: std::mem::size_of::<DeviceInfo>() as u32,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_INFO writes one `vfio_device_info` (its first 16 bytes, as
    // `argsz` says) into `info`.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            VFIO_DEVICE_GET_INFO as _,
            &mut info as *mut DeviceInfo,
        )
    })
    .map_err(io_error(&who, "VFIO_DEVICE_GET_INFO"))?;
    if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 || info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX {
        return Err(Error::Device {
            device: who,
            reason: "not a VFIO PCI device (vfio-pci): the built-in VMM passes PCI functions only"
                .into(),
        });
    }
    Ok(file)
}

/// Region `index` of `device`: its offset and size, 0 when absent or not read/write.
pub fn region_info(device: &File, bdf: &str, index: u32) -> Result<RegionInfo> {
    let mut raw = RegionInfoRaw {
        argsz: std::mem::size_of::<RegionInfoRaw>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_REGION_INFO writes one `vfio_region_info` into `raw`.
    check(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            VFIO_DEVICE_GET_REGION_INFO as _,
            &mut raw as *mut RegionInfoRaw,
        )
    })
    .map_err(io_error(
        &format!("VFIO device {bdf}"),
        format!("VFIO_DEVICE_GET_REGION_INFO {index}"),
    ))?;
    if raw.flags & REGION_RW != REGION_RW {
        return Ok(RegionInfo::default());
    }
    Ok(RegionInfo {
        offset: raw.offset,
        size: raw.size,
    })
}

/// How many interrupts of `index` `device` has (0: none, e.g. no MSI capability).
pub fn irq_count(device: &File, bdf: &str, index: u32) -> Result<u32> {
    let mut info = IrqInfo {
        argsz: std::mem::size_of::<IrqInfo>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_IRQ_INFO writes one `vfio_irq_info` into `info`.
    check(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            VFIO_DEVICE_GET_IRQ_INFO as _,
            &mut info as *mut IrqInfo,
        )
    })
    .map_err(io_error(
        &format!("VFIO device {bdf}"),
        format!("VFIO_DEVICE_GET_IRQ_INFO {index}"),
    ))?;
    Ok(info.count)
}

/// Turns `device`'s MSI on with one vector per eventfd in `fds` (vector `i` signals `fds[i]`),
/// or off when `fds` is empty (`VFIO_DEVICE_SET_IRQS`, index MSI, action trigger).
pub fn set_msi_trigger(device: &impl AsRawFd, fds: &[i32]) -> std::io::Result<()> {
    set_irqs(
        device,
        VFIO_PCI_MSI_IRQ_INDEX,
        VFIO_IRQ_SET_ACTION_TRIGGER,
        fds,
    )
}

/// Sets the MSI-X vectors of `device` from `start` to signal `fds` (VFIO turns MSI-X on with
/// that many vectors when it was off), or turns MSI-X off (`fds` empty).
pub fn set_msix_trigger(device: &impl AsRawFd, start: u32, fds: &[i32]) -> std::io::Result<()> {
    set_irqs_from(
        device,
        VFIO_PCI_MSIX_IRQ_INDEX,
        VFIO_IRQ_SET_ACTION_TRIGGER,
        start,
        fds,
    )
}

/// Turns `device`'s INTx on, signalling `trigger` (the device's INTx is masked by VFIO at each
/// interrupt) and unmasked when `unmask` is signalled (KVM's resample eventfd); or off
/// (`None`).
pub fn set_intx(device: &impl AsRawFd, fds: Option<(i32, i32)>) -> std::io::Result<()> {
    let Some((trigger, unmask)) = fds else {
        return set_irqs(
            device,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_ACTION_TRIGGER,
            &[],
        );
    };
    set_irqs(
        device,
        VFIO_PCI_INTX_IRQ_INDEX,
        VFIO_IRQ_SET_ACTION_TRIGGER,
        &[trigger],
    )?;
    set_irqs(
        device,
        VFIO_PCI_INTX_IRQ_INDEX,
        VFIO_IRQ_SET_ACTION_UNMASK,
        &[unmask],
    )
}

/// `VFIO_DEVICE_SET_IRQS` of interrupt `index`, `action`, with an eventfd per interrupt from 0
/// (`fds`), or with no data and count 0 when `fds` is empty (off).
fn set_irqs(device: &impl AsRawFd, index: u32, action: u32, fds: &[i32]) -> std::io::Result<()> {
    set_irqs_from(device, index, action, 0, fds)
}

/// [`set_irqs`] from interrupt `start` (a block of an enabled MSI-X: its vectors change
/// eventfds, the others keep theirs).
fn set_irqs_from(
    device: &impl AsRawFd,
    index: u32,
    action: u32,
    start: u32,
    fds: &[i32],
) -> std::io::Result<()> {
    if fds.len() > SET_MAX_FDS {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut set = IrqSet {
        argsz: (std::mem::size_of::<IrqSet>() - 4 * (SET_MAX_FDS - fds.len())) as u32,
        flags: if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE | action
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD | action
        },
        index,
        start: if fds.is_empty() { 0 } else { start },
        count: fds.len() as u32,
        fds: [-1; SET_MAX_FDS],
    };
    set.fds[..fds.len()].copy_from_slice(fds);
    // SAFETY: VFIO_DEVICE_SET_IRQS reads `argsz` bytes of `set`: its header and `count` fds,
    // all within the struct.
    check(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            VFIO_DEVICE_SET_IRQS as _,
            &set as *const IrqSet,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_linux_vfio_h() {
        // _IO(';', 100) and _IO(';', 113), as <linux/vfio.h> defines them.
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(std::mem::size_of::<IrqInfo>(), 16);
        // The header of `vfio_irq_set` is 20 bytes, the eventfds follow.
        assert_eq!(std::mem::size_of::<IrqSet>(), 20 + 4 * SET_MAX_FDS);
        assert_eq!(std::mem::size_of::<RegionInfoRaw>(), 32);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
    }

    #[test]
    fn a_missing_container_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = Container::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("VFIO container") && e.contains("vfio module"),
            "{e}"
        );
        let e = open_group(dir.path(), 7).unwrap_err().to_string();
        assert!(e.contains("/7"), "{e}");
    }
}
