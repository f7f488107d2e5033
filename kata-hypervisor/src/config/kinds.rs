//! The keys of a `[hypervisor.<name>]` table whose values Kata fixes to a set of words, as
//! typed enums.
//!
//! Each enum reads and writes Kata's exact spelling (`virtio-9p`, `io_uring`, ...). A value
//! outside the set is refused while the file is read, with an error that names the key, the
//! value and every allowed value. An empty string means the key's default (Kata's load-time
//! rule "empty enum keys take their default"); [`BlockDeviceDriver`] is the one key whose
//! empty value differs from its default, as in Kata's runtime-rs (`virtio-blk-pci`, while a
//! key left out is `virtio-scsi`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Defines a config enum: variants with Kata's spellings, `Display`/`FromStr`/serde through
/// those spellings, `Default`, the value an empty string stands for, and the list of allowed
/// values for error messages.
macro_rules! kata_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            key: $key:literal,
            default: $default:ident,
            empty: $empty:ident,
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in the order Kata's documentation lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The configuration key that holds this value.
            pub const KEY: &'static str = $key;

            /// Kata's spelling of the value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The allowed spellings, comma separated (for error messages).
            pub fn allowed() -> String {
                Self::ALL
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            /// Kata's spelling; an empty string is the key's empty-value default.
            fn from_str(s: &str) -> Result<Self, Error> {
                match s.trim() {
                    "" => Ok($name::$empty),
                    $( $text => Ok($name::$variant), )+
                    other => Err(Error::InvalidConfig {
                        key: $key,
                        value: format!("\"{other}\""),
                        reason: format!("allowed: {}", Self::allowed()),
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(|e: Error| match e {
                    Error::InvalidConfig { key, value, reason } => {
                        serde::de::Error::custom(format!("{key} = {value}: {reason}"))
                    }
                    other => serde::de::Error::custom(other),
                })
            }
        }
    };
}

kata_enum! {
    /// The shared filesystem a VM exports to its guest (`shared_fs`): THE share-fs kind of
    /// kata-rs, used by the configuration, the device model ([`crate::ShareFsDevice`]) and the
    /// resources above.
    ///
    /// Default: `virtio-fs`, as in Kata (kata-resource runs one virtiofsd per sandbox).
    /// `virtio-9p` stays an option; `none` is for block-only setups.
    pub enum SharedFs {
        key: "shared_fs",
        default: VirtioFs,
        empty: VirtioFs,
        /// virtio-fs through an external daemon (virtiofsd).
        VirtioFs => "virtio-fs",
        /// virtio-fs served inside the VMM (the built-in VMM only).
        InlineVirtioFs => "inline-virtio-fs",
        /// virtio-fs through nydusd (image lazy loading).
        VirtioFsNydus => "virtio-fs-nydus",
        /// virtio-9p, served by the VMM itself (QEMU).
        Virtio9p => "virtio-9p",
        /// No shared filesystem (block devices only).
        None => "none",
    }
}

impl SharedFs {
    /// Whether this is one of the virtio-fs kinds (a daemon or the VMM serves FUSE).
    pub fn is_virtio_fs(self) -> bool {
        matches!(
            self,
            SharedFs::VirtioFs | SharedFs::InlineVirtioFs | SharedFs::VirtioFsNydus
        )
    }

    /// Whether an external virtio-fs daemon (virtiofsd, nydusd) must run on the host.
    pub fn needs_daemon(self) -> bool {
        matches!(self, SharedFs::VirtioFs | SharedFs::VirtioFsNydus)
    }
}

kata_enum! {
    /// How block devices are attached (`block_device_driver`). Default `virtio-scsi`; an empty
    /// value means `virtio-blk-pci` (Kata runtime-rs' load-time rule).
    pub enum BlockDeviceDriver {
        key: "block_device_driver",
        default: VirtioScsi,
        empty: VirtioBlkPci,
        /// virtio-scsi (one controller, a `scsi-hd` per device).
        VirtioScsi => "virtio-scsi",
        /// virtio-blk (Kata's Go runtime's name for virtio-blk on PCI).
        VirtioBlk => "virtio-blk",
        /// virtio-blk on PCI.
        VirtioBlkPci => "virtio-blk-pci",
        /// virtio-blk on CCW (s390x).
        VirtioBlkCcw => "virtio-blk-ccw",
        /// virtio-blk on virtio-mmio (Firecracker, the built-in VMM).
        VirtioBlkMmio => "virtio-blk-mmio",
        /// virtio-mmio (Kata's Go runtime's name for virtio-blk on MMIO).
        VirtioMmio => "virtio-mmio",
        /// virtio-pmem.
        VirtioPmem => "virtio-pmem",
        /// An emulated NVDIMM.
        Nvdimm => "nvdimm",
    }
}

impl BlockDeviceDriver {
    /// Whether devices are attached over virtio-mmio (no PCI bus).
    pub fn is_mmio(self) -> bool {
        matches!(
            self,
            BlockDeviceDriver::VirtioBlkMmio | BlockDeviceDriver::VirtioMmio
        )
    }

    /// Whether devices are attached over CCW (s390x).
    pub fn is_ccw(self) -> bool {
        self == BlockDeviceDriver::VirtioBlkCcw
    }
}

kata_enum! {
    /// How the guest image is attached (`vm_rootfs_driver`). Default `virtio-blk-pci`.
    pub enum VmRootfsDriver {
        key: "vm_rootfs_driver",
        default: VirtioBlkPci,
        empty: VirtioBlkPci,
        /// virtio-blk on PCI.
        VirtioBlkPci => "virtio-blk-pci",
        /// virtio-blk on CCW (s390x).
        VirtioBlkCcw => "virtio-blk-ccw",
        /// virtio-blk on virtio-mmio.
        VirtioBlkMmio => "virtio-blk-mmio",
        /// virtio-pmem.
        VirtioPmem => "virtio-pmem",
        /// virtio-scsi.
        VirtioScsi => "virtio-scsi",
    }
}

impl VmRootfsDriver {
    /// Whether the image is attached over CCW (s390x) or SCSI, which s390x machines accept.
    pub fn fits_s390(self) -> bool {
        matches!(
            self,
            VmRootfsDriver::VirtioBlkCcw | VmRootfsDriver::VirtioScsi
        )
    }
}

kata_enum! {
    /// QEMU's I/O engine for block devices (`block_device_aio`). Default `io_uring`.
    pub enum BlockDeviceAio {
        key: "block_device_aio",
        default: IoUring,
        empty: IoUring,
        /// Linux io_uring.
        IoUring => "io_uring",
        /// Linux native AIO (needs O_DIRECT).
        Native => "native",
        /// A pool of threads.
        Threads => "threads",
    }
}

kata_enum! {
    /// The virtio-fs cache mode (`virtio_fs_cache`). Default `never`.
    pub enum VirtioFsCache {
        key: "virtio_fs_cache",
        default: Never,
        empty: Never,
        /// No caching of data or metadata in the guest.
        Never => "never",
        /// Metadata only.
        Metadata => "metadata",
        /// Cache until the file changes on the host.
        Auto => "auto",
        /// Cache everything.
        Always => "always",
        /// Deprecated since Kata 2.5; [`HypervisorConfig::adjust`](crate::HypervisorConfig::adjust)
        /// turns it into `never` and says so.
        None => "none",
    }
}

kata_enum! {
    /// The kind of huge pages backing guest memory (`hugepage_type`). Default `hugetlbfs`.
    pub enum HugepageType {
        key: "hugepage_type",
        default: Hugetlbfs,
        empty: Hugetlbfs,
        /// Pre-allocated huge pages from hugetlbfs.
        Hugetlbfs => "hugetlbfs",
        /// Transparent huge pages.
        Thp => "thp",
    }
}

kata_enum! {
    /// The filesystem of the guest image (`rootfs_type`). Default `ext4`.
    pub enum RootfsType {
        key: "rootfs_type",
        default: Ext4,
        empty: Ext4,
        /// ext4.
        Ext4 => "ext4",
        /// XFS.
        Xfs => "xfs",
        /// EROFS (read-only).
        Erofs => "erofs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_spellings_round_trip() {
        for fs in SharedFs::ALL {
            let json = serde_json::to_string(fs).unwrap();
            assert_eq!(json, format!("\"{fs}\""));
            assert_eq!(serde_json::from_str::<SharedFs>(&json).unwrap(), *fs);
            assert_eq!(fs.as_str().parse::<SharedFs>().unwrap(), *fs);
        }
        for d in BlockDeviceDriver::ALL {
            assert_eq!(d.to_string().parse::<BlockDeviceDriver>().unwrap(), *d);
        }
        assert_eq!(
            "io_uring".parse::<BlockDeviceAio>().unwrap(),
            BlockDeviceAio::IoUring
        );
    }

    #[test]
    fn defaults_and_empty_values() {
        assert_eq!(SharedFs::default(), SharedFs::VirtioFs);
        assert_eq!(BlockDeviceDriver::default(), BlockDeviceDriver::VirtioScsi);
        assert_eq!(
            "".parse::<BlockDeviceDriver>().unwrap(),
            BlockDeviceDriver::VirtioBlkPci
        );
        assert_eq!(
            serde_json::from_str::<VirtioFsCache>("\"\"").unwrap(),
            VirtioFsCache::Never
        );
        assert_eq!(RootfsType::default(), RootfsType::Ext4);
        assert_eq!(HugepageType::default(), HugepageType::Hugetlbfs);
    }

    #[test]
    fn unknown_values_name_key_value_and_what_is_allowed() {
        let e = "nfs".parse::<SharedFs>().unwrap_err().to_string();
        assert!(
            e.contains("shared_fs")
                && e.contains("\"nfs\"")
                && e.contains("virtio-fs, inline-virtio-fs, virtio-fs-nydus, virtio-9p, none"),
            "{e}"
        );
        let e = serde_json::from_str::<BlockDeviceDriver>("\"virtio-foo\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("block_device_driver = \"virtio-foo\": allowed: virtio-scsi"),
            "{e}"
        );
    }
}
