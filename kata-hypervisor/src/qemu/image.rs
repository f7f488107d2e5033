//! The guest rootfs image (`image`, Kata's `kata-containers.img`) and how QEMU attaches it.
//!
//! As Kata does: on a machine with ACPI memory devices (q35, pc) the image is an NVDIMM whose
//! memory is the image file mapped read-only, and the guest mounts its first partition with DAX
//! (`root=/dev/pmem0p1 rootflags=dax,...`): the guest reads the host's page cache directly, so
//! every VM booted from one image shares its pages. With `disable_image_nvdimm = true`, or on
//! another machine (microvm has no NFIT), it is a read-only virtio-blk disk (`/dev/vda1`).
//!
//! The image has Kata's layout (`guest/image.sh` builds one): an MBR at byte 0 whose partition
//! is the filesystem (what a disk shows), a DAX info block at 4 KiB ([`DAX_INFO_SIGNATURE`]:
//! the NVDIMM becomes an fsdax device whose data starts at 2 MiB) and a second MBR there
//! pointing at the same filesystem (what `/dev/pmem0` shows).
//!
//! [`GuestImage::probe`] reads the image's MBR and its first partition's superblock before QEMU
//! starts, so a file that is not a partitioned image of the configured `rootfs_type` is refused
//! naming the file, what is wrong and how to get a good one, instead of a guest kernel panic.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::config::{HypervisorConfig, RootfsType, VmRootfsDriver};
use crate::error::{Error, Result};

/// QEMU's id of the image's NVDIMM device (its memory backend is `image0-mem`).
pub const NVDIMM_ID: &str = "image0";

/// Where the DAX info block (the kernel's `struct nd_pfn_sb`) of an NVDIMM image is.
pub const DAX_INFO_OFFSET: u64 = 4096;

/// The DAX info block's signature: with it the guest's pmem driver makes the NVDIMM an fsdax
/// device whose data starts at the block's `dataoff`; without it the namespace is raw and ext4
/// refuses `dax` ("DAX unsupported by block device").
pub const DAX_INFO_SIGNATURE: &[u8; 16] = b"NVDIMM_PFN_INFO\0";

/// The alignment of an image attached as an NVDIMM: the guest maps the device's memory in
/// 2 MiB sub-sections (`guest/image.sh` pads its images to it).
pub const NVDIMM_ALIGN: u64 = 2 * 1024 * 1024;

const FIX: &str = "build one with `make guest` (manifest key `image`, \
$KATA_RS_CACHE/guest/current/kata-containers.img) or Kata's image builder, or set `initrd` \
instead";

/// How the image reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageAttachment {
    /// An NVDIMM backed by the image file, read-only (`unarmed`): root on `/dev/pmem0p1`, DAX.
    Nvdimm,
    /// A virtio-pmem-pci device backed by the image file, read-only (`vm_rootfs_driver =
    /// "virtio-pmem"`): root on `/dev/pmem0p1`, DAX, as with the NVDIMM.
    VirtioPmem,
    /// A read-only virtio-blk-pci disk: root on `/dev/vda1`.
    VirtioBlk,
}

impl ImageAttachment {
    /// Whether the image is guest memory (an NVDIMM or virtio-pmem: DAX, a memory slot).
    pub fn is_pmem(self) -> bool {
        self != ImageAttachment::VirtioBlk
    }
}

/// How `config` attaches its image. On q35 and pc (the machines with memory devices and ACPI
/// NVDIMM support): virtio-pmem when `vm_rootfs_driver = "virtio-pmem"`, else an NVDIMM unless
/// `disable_image_nvdimm` is set. Otherwise, and with `disable_image_nvdimm`, virtio-blk.
pub fn attachment(config: &HypervisorConfig) -> ImageAttachment {
    let memory_devices = matches!(config.machine_type.as_str(), "q35" | "pc");
    if memory_devices && config.vm_rootfs_driver == VmRootfsDriver::VirtioPmem {
        ImageAttachment::VirtioPmem
    } else if memory_devices && !config.disable_image_nvdimm {
        ImageAttachment::Nvdimm
    } else {
        ImageAttachment::VirtioBlk
    }
}

/// A guest image that was checked to be bootable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The image file.
    pub path: PathBuf,
    /// Its size in bytes (the NVDIMM's size).
    pub size: u64,
}

impl GuestImage {
    /// Checks `path` is a partitioned image whose first partition holds a `rootfs_type`
    /// filesystem (ext4 with 4 KiB blocks when it is mounted with DAX) and, for an NVDIMM, that
    /// its size is a multiple of [`NVDIMM_ALIGN`].
    pub fn probe(path: &Path, config: &HypervisorConfig) -> Result<GuestImage> {
        let bad = |reason: String| Error::BadGuestImage {
            path: path.to_path_buf(),
            reason,
            fix: FIX.to_string(),
        };
        let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                what: "guest image",
                path: path.to_path_buf(),
                hint: format!("`image` names it; {FIX}"),
            },
            _ => bad(format!("cannot open it: {e}")),
        })?;
        let meta = f
            .metadata()
            .map_err(|e| bad(format!("cannot stat it: {e}")))?;
        if !meta.is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        let size = meta.len();
        let nvdimm = attachment(config).is_pmem();
        // As an NVDIMM the guest's pmem device starts after the DAX info block's `dataoff`.
        let base = if nvdimm {
            let mut info = [0u8; 64];
            f.seek(SeekFrom::Start(DAX_INFO_OFFSET))
                .and_then(|_| f.read_exact(&mut info))
                .map_err(|_| {
                    bad(format!(
                        "it is {size} bytes, too short for a DAX info block"
                    ))
                })?;
            if &info[..16] != DAX_INFO_SIGNATURE {
                return Err(bad(
                    "it has no DAX info block (NVDIMM_PFN_INFO at 4 KiB): as an NVDIMM the \
                     guest cannot mount it with DAX; Kata's images and guest/image.sh's have \
                     one, or set disable_image_nvdimm = true"
                        .into(),
                ));
            }
            let dataoff = u64::from_le_bytes(info[56..64].try_into().unwrap_or_default());
            if dataoff == 0 || dataoff % 4096 != 0 || dataoff >= size {
                return Err(bad(format!(
                    "its DAX info block puts the data at byte {dataoff}, not a page inside \
                     the file"
                )));
            }
            dataoff
        } else {
            0
        };
        let mut mbr = [0u8; 512];
        f.seek(SeekFrom::Start(base))
            .and_then(|_| f.read_exact(&mut mbr))
            .map_err(|_| {
                bad(format!(
                    "it is {size} bytes, shorter than an MBR at byte {base}"
                ))
            })?;
        if mbr[510..512] != [0x55, 0xaa] {
            return Err(bad(format!(
                "it has no MBR partition table at byte {base} (no 0x55AA signature)"
            )));
        }
        let entry = &mbr[446..462];
        let le32 = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let (kind, start, sectors) = (entry[4], le32(&entry[8..12]), le32(&entry[12..16]));
        if kind == 0 || sectors == 0 {
            return Err(bad("its MBR has no first partition".into()));
        }
        if kind == 0xee {
            return Err(bad(
                "it has a GPT partition table; Kata's images (and the guest's root=) use MBR"
                    .into(),
            ));
        }
        let (offset, length) = (base + start * 512, sectors * 512);
        if offset + length > size {
            return Err(bad(format!(
                "its first partition (sectors {start}..{}) ends past the file's {size} bytes",
                start + sectors
            )));
        }
        let mut sb = [0u8; 2048];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut sb))
            .map_err(|e| bad(format!("cannot read its first partition: {e}")))?;
        let fs = config.rootfs_type;
        let found = match fs {
            // ext4: s_magic at 1024 + 0x38; block size 1024 << s_log_block_size (1024 + 24).
            RootfsType::Ext4 => sb[1024 + 0x38..1024 + 0x3a] == [0x53, 0xef],
            RootfsType::Xfs => &sb[0..4] == b"XFSB",
            RootfsType::Erofs => sb[1024..1028] == [0xe2, 0xe1, 0xf5, 0xe0],
        };
        if !found {
            return Err(bad(format!(
                "its first partition holds no {fs} filesystem (rootfs_type = \"{fs}\")"
            )));
        }
        if fs == RootfsType::Ext4 && nvdimm {
            let log = u32::from_le_bytes([sb[1048], sb[1049], sb[1050], sb[1051]]);
            let block = 1024u64.checked_shl(log).unwrap_or(0);
            if block != 4096 {
                return Err(bad(format!(
                    "its ext4 has {block}-byte blocks: mounting it with DAX from the NVDIMM \
                     needs 4096 (mkfs.ext4 -b 4096), or set disable_image_nvdimm = true"
                )));
            }
        }
        if nvdimm && size % NVDIMM_ALIGN != 0 {
            return Err(bad(format!(
                "it is {size} bytes: as an NVDIMM it must be a multiple of 2 MiB (pad it with \
                 truncate -s, or set disable_image_nvdimm = true)"
            )));
        }
        Ok(GuestImage {
            path: path.to_path_buf(),
            size,
        })
    }

    /// The size as whole MiB, rounded up (what the NVDIMM takes of `maxmem`).
    pub fn size_mib(&self) -> u64 {
        self.size.div_ceil(1024 * 1024)
    }
}

/// A path in a QEMU option value: commas doubled.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The arguments that attach `image` as [`attachment`] says.
pub fn args(config: &HypervisorConfig, image: &GuestImage) -> Vec<String> {
    let path = qemu_path(&image.path);
    match attachment(config) {
        ImageAttachment::Nvdimm => vec![
            "-object".into(),
            format!(
                "memory-backend-file,id={NVDIMM_ID}-mem,mem-path={path},size={},readonly=on,share=on",
                image.size
            ),
            "-device".into(),
            format!("nvdimm,id={NVDIMM_ID},memdev={NVDIMM_ID}-mem,unarmed=on"),
        ],
        ImageAttachment::VirtioPmem => vec![
            "-object".into(),
            format!(
                "memory-backend-file,id={NVDIMM_ID}-mem,mem-path={path},size={},readonly=on,share=on",
                image.size
            ),
            "-device".into(),
            format!("virtio-pmem-pci,id={NVDIMM_ID},memdev={NVDIMM_ID}-mem"),
        ],
        ImageAttachment::VirtioBlk => vec![
            "-drive".into(),
            format!("file={path},if=none,id=image0,format=raw,readonly=on"),
            "-device".into(),
            "virtio-blk-pci,drive=image0,id=image0-dev".into(),
        ],
    }
}

/// The kernel parameters that mount the image as the root (Kata's, per `rootfs_type`).
pub fn root_params(config: &HypervisorConfig) -> &'static str {
    let pmem = attachment(config).is_pmem();
    match (pmem, config.rootfs_type) {
        (true, RootfsType::Ext4) => {
            "root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4"
        }
        (true, RootfsType::Xfs) => "root=/dev/pmem0p1 rootflags=dax ro rootfstype=xfs",
        (true, RootfsType::Erofs) => "root=/dev/pmem0p1 rootflags=dax ro rootfstype=erofs",
        (false, RootfsType::Ext4) => {
            "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
        }
        (false, RootfsType::Xfs) => "root=/dev/vda1 rootflags=ro ro rootfstype=xfs",
        (false, RootfsType::Erofs) => "root=/dev/vda1 rootflags=ro ro rootfstype=erofs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kata's layout: an outer MBR whose partition starts at 3 MiB, the DAX info block (when
    /// `dax`) with its data at 2 MiB, an inner MBR there whose partition starts 1 MiB later;
    /// `sb` is the partition's first 2 KiB.
    fn image(dir: &Path, kind: u8, sb: &[u8], total: u64, dax: bool) -> PathBuf {
        let mut b = vec![0u8; total as usize];
        let sectors = ((total - (3 << 20)) / 512) as u32;
        for (at, start) in [(0usize, 6144u32), (2 << 20, 2048)] {
            b[at + 446 + 4] = kind;
            b[at + 446 + 8..at + 446 + 12].copy_from_slice(&start.to_le_bytes());
            b[at + 446 + 12..at + 446 + 16].copy_from_slice(&sectors.to_le_bytes());
            b[at + 510] = 0x55;
            b[at + 511] = 0xaa;
        }
        if dax {
            b[4096..4112].copy_from_slice(DAX_INFO_SIGNATURE);
            b[4096 + 56..4096 + 64].copy_from_slice(&(2u64 << 20).to_le_bytes());
        }
        b[(3 << 20)..(3 << 20) + sb.len()].copy_from_slice(sb);
        let p = dir.join("img");
        std::fs::write(&p, b).unwrap();
        p
    }

    fn ext4_sb(log_block: u32) -> Vec<u8> {
        let mut sb = vec![0u8; 2048];
        sb[1024 + 0x38] = 0x53;
        sb[1024 + 0x39] = 0xef;
        sb[1048..1052].copy_from_slice(&log_block.to_le_bytes());
        sb
    }

    #[test]
    fn q35_attaches_an_nvdimm_unless_disabled_or_on_microvm() {
        let mut c = HypervisorConfig::default();
        assert_eq!(attachment(&c), ImageAttachment::Nvdimm);
        c.disable_image_nvdimm = true;
        assert_eq!(attachment(&c), ImageAttachment::VirtioBlk);
        c.disable_image_nvdimm = false;
        c.machine_type = "microvm".into();
        assert_eq!(attachment(&c), ImageAttachment::VirtioBlk);
        c.vm_rootfs_driver = VmRootfsDriver::VirtioPmem;
        assert_eq!(attachment(&c), ImageAttachment::VirtioBlk);
        c.machine_type = "q35".into();
        assert_eq!(attachment(&c), ImageAttachment::VirtioPmem);
        c.disable_image_nvdimm = true;
        assert_eq!(attachment(&c), ImageAttachment::VirtioPmem);
    }

    #[test]
    fn a_partitioned_ext4_image_passes_and_bad_ones_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let c = HypervisorConfig::default();
        let good = image(tmp.path(), 0x83, &ext4_sb(2), 6 << 20, true);
        let img = GuestImage::probe(&good, &c).unwrap();
        assert_eq!((img.size, img.size_mib()), (6 << 20, 6));
        let blk = HypervisorConfig {
            disable_image_nvdimm: true,
            ..Default::default()
        };
        GuestImage::probe(&good, &blk).unwrap();

        let err = |p: &Path, c: &HypervisorConfig| GuestImage::probe(p, c).unwrap_err().to_string();
        // An initramfs given as `image`: no DAX info block, no MBR.
        let cpio = tmp.path().join("initrd.img");
        std::fs::write(&cpio, b"070701".repeat(2000)).unwrap();
        let e = err(&cpio, &c);
        assert!(
            e.contains("no DAX info block") && e.contains("make guest"),
            "{e}"
        );
        let e = err(&cpio, &blk);
        assert!(e.contains("no MBR partition table at byte 0"), "{e}");
        // Too short.
        std::fs::write(&cpio, b"x").unwrap();
        assert!(err(&cpio, &blk).contains("shorter than an MBR"));
        assert!(err(&cpio, &c).contains("too short for a DAX info block"));
        // A plain partitioned image (no DAX info block) boots as a disk only.
        let plain = image(tmp.path(), 0x83, &ext4_sb(2), 6 << 20, false);
        assert!(err(&plain, &c).contains("no DAX info block"));
        GuestImage::probe(&plain, &blk).unwrap();
        // No partition, not ext4, 1 KiB blocks under DAX, an unaligned size.
        let e = err(&image(tmp.path(), 0, &ext4_sb(2), 6 << 20, true), &c);
        assert!(e.contains("no first partition"), "{e}");
        let e = err(&image(tmp.path(), 0x83, &[0u8; 2048], 6 << 20, true), &c);
        assert!(e.contains("no ext4 filesystem"), "{e}");
        let e = err(&image(tmp.path(), 0x83, &ext4_sb(0), 6 << 20, true), &c);
        assert!(e.contains("1024-byte blocks"), "{e}");
        let odd = image(tmp.path(), 0x83, &ext4_sb(2), 7 << 20, true);
        assert!(err(&odd, &c).contains("multiple of 2 MiB"));
        // As a virtio-blk disk neither the block size nor the size matters.
        GuestImage::probe(&odd, &blk).unwrap();
        // A missing file is a MissingFile naming `image`.
        let e = err(&tmp.path().join("none.img"), &c);
        assert!(
            e.contains("guest image not found") && e.contains("`image`"),
            "{e}"
        );
    }

    #[test]
    fn the_nvdimm_maps_the_image_read_only_and_the_disk_is_read_only() {
        let img = GuestImage {
            path: "/i/a,b.img".into(),
            size: 18 << 20,
        };
        let c = HypervisorConfig::default();
        assert_eq!(
            args(&c, &img).join(" "),
            "-object memory-backend-file,id=image0-mem,mem-path=/i/a,,b.img,size=18874368,\
             readonly=on,share=on -device nvdimm,id=image0,memdev=image0-mem,unarmed=on"
        );
        assert!(root_params(&c).starts_with("root=/dev/pmem0p1 rootflags=dax,"));
        let c = HypervisorConfig {
            disable_image_nvdimm: true,
            ..Default::default()
        };
        assert_eq!(
            args(&c, &img).join(" "),
            "-drive file=/i/a,,b.img,if=none,id=image0,format=raw,readonly=on \
             -device virtio-blk-pci,drive=image0,id=image0-dev"
        );
        assert!(root_params(&c).starts_with("root=/dev/vda1 "));
        let c = HypervisorConfig {
            vm_rootfs_driver: VmRootfsDriver::VirtioPmem,
            ..Default::default()
        };
        assert_eq!(
            args(&c, &img).join(" "),
            "-object memory-backend-file,id=image0-mem,mem-path=/i/a,,b.img,size=18874368,\
             readonly=on,share=on -device virtio-pmem-pci,id=image0,memdev=image0-mem"
        );
        assert!(root_params(&c).starts_with("root=/dev/pmem0p1 rootflags=dax,"));
    }
}
