//! Inline virtio-fs (Kata's `inline-virtio-fs`): a host directory served to the guest by a FUSE
//! server in this process — fuse-backend-rs' passthrough filesystem — with no virtiofsd.
//!
//! Two queues: the high-priority queue (FUSE `INTERRUPT`/`FORGET`) and one request queue. Each
//! chain is handed to fuse-backend-rs' virtio-fs transport, whose reader and writer check every
//! descriptor against guest memory and whose chain iterator stops on loops; a chain it refuses
//! is returned to the guest with nothing written. The server runs on the event loop thread.
//!
//! The passthrough filesystem runs on the device thread, in that thread's namespace sandbox
//! (`vm/namespace.rs`: its own root, six capabilities), but through a handle of the shared
//! directory opened before, in the runtime's mount namespace (so mounts made later
//! under the shared directory reach the guest, as a container rootfs must):
//! it opens every inode relative to the shared directory, by handle, never by a path the guest
//! controls; symlinks are returned to the guest, not followed on the host.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::error::{Error, Result};
use crate::memory::GuestMemory;

/// The virtio device id of a filesystem device.
pub const VIRTIO_ID_FS: u32 = 26;
/// The most bytes of a mount tag (the configuration space's `tag` field).
pub const TAG_LEN: usize = 36;
const QUEUE_SIZE: u16 = 1024;

/// How a directory is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts it by (`mount -t virtiofs <tag> <dir>`; Kata: `kataShared`).
    pub tag: String,
    /// The host directory.
    pub shared_dir: PathBuf,
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

/// A virtio-fs device serving one directory.
pub struct Fs {
    name: String,
    config: Vec<u8>,
    server: Arc<Server<PassthroughFs>>,
    active: Option<Active>,
    notify: EventFd,
    /// The shared directory, held open for the passthrough's root path (see [`root_path`]).
    _root: std::fs::File,
    /// Requests served since the device was made (a snapshot refuses a share in use).
    served: u64,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Opens the shared directory; a missing directory or a tag that does not fit is an error
    /// now, before the VM starts.
    pub fn new(config: &FsConfig) -> Result<Fs> {
        let name = format!("virtio-fs {} ({})", config.tag, config.shared_dir.display());
        if config.tag.is_empty() || config.tag.len() > TAG_LEN {
            return Err(Error::Device {
                device: name,
                reason: format!("the mount tag must be 1 to {TAG_LEN} bytes"),
            });
        }
        if !config.shared_dir.is_dir() {
            return Err(Error::Device {
                device: name,
                reason: "the shared directory does not exist or is not a directory".into(),
            });
        }
        let root = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(&config.shared_dir)
                .map_err(|source| Error::DeviceIo {
                    device: name.clone(),
                    what: "opening the shared directory".into(),
                    source,
                })?
        };
        let fs = PassthroughFs::new(passthrough_config(&root_path(&root, &config.shared_dir)))
            .map_err(|source| Error::DeviceIo {
                device: name.clone(),
                what: "setting up the passthrough filesystem".into(),
                source,
            })?;
        // import() sets the umask to 0 (the passthrough applies the guest's own): here, on the
        // caller's thread, that would be the whole process's umask, so it is put back. The
        // device thread, whose umask is its own (`vm/namespace.rs`), keeps 0 after INIT.
        // SAFETY: umask(2) only swaps the calling thread's file creation mask.
        let umask = unsafe { libc::umask(0o022) };
        let imported = fs.import();
        // SAFETY: as above.
        unsafe { libc::umask(umask) };
        imported.map_err(|source| Error::DeviceIo {
            device: name.clone(),
            what: "opening the shared directory".into(),
            source,
        })?;
        // struct virtio_fs_config: tag[36], num_request_queues (le32).
        let mut cfg = vec![0u8; TAG_LEN + 4];
        cfg[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::DeviceIo {
            device: name.clone(),
            what: "creating the notify eventfd".into(),
            source,
        })?;
        Ok(Fs {
            name,
            config: cfg,
            server: Arc::new(Server::new(fs)),
            active: None,
            notify,
            _root: root,
            served: 0,
        })
    }

    /// The eventfd a queue notification signals (to register as the window's ioeventfd).
    pub fn notify_evt(&self) -> &EventFd {
        &self.notify
    }

    /// Serves every request on both queues; returns how many were taken off them.
    pub fn process(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let mem = active.mem.clone();
        let mut done = 0;
        for queue in active.queues.iter_mut() {
            let mut used_any = false;
            while let Some(chain) = queue.pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                let len = serve(&self.server, &mem, chain, &self.name);
                self.served += 1;
                if let Err(e) = queue.add_used(&mem, head, len) {
                    tracing::warn!(device = %self.name, error = %e, "cannot return a request to the guest");
                }
                used_any = true;
                done += 1;
            }
            if used_any && queue.needs_notification(&mem).unwrap_or(true) {
                active.interrupt.signal_used_queue();
            }
        }
        done
    }
}

/// One FUSE request: the bytes written into the guest's buffers, 0 for a refused chain.
fn serve(
    server: &Server<PassthroughFs>,
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
    name: &str,
) -> u32 {
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(device = %name, error = %e, "dropping a malformed request");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(device = %name, error = %e, "dropping a malformed request");
            return 0;
        }
    };
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
        Err(e) => {
            tracing::debug!(device = %name, error = %e, "FUSE request failed");
            0
        }
    }
}

/// The path the passthrough opens its root by, here and again at the guest's `FUSE_INIT` (on
/// the device thread, whose root holds none of the host's paths: `vm/namespace.rs`):
/// `/proc/<pid>/fd/<root>/.`, the directory held open by `root` reached through its `/proc`
/// link (bound into the device thread's root), so it is the directory of the runtime's mount
/// namespace, where later mounts under it (container rootfs) are. `dir` itself where `/proc`
/// does not show it.
fn root_path(root: &std::fs::File, dir: &Path) -> PathBuf {
    let by_fd = PathBuf::from(format!(
        "/proc/{}/fd/{}/.",
        std::process::id(),
        root.as_raw_fd()
    ));
    if by_fd.is_dir() {
        by_fd
    } else {
        dir.to_owned()
    }
}

/// The passthrough filesystem over `dir`: no host page cache kept for the guest (`never`, as
/// Kata's `virtio_fs_cache` default), no extended attributes, inode handles opened on demand.
fn passthrough_config(dir: &Path) -> Config {
    Config {
        root_dir: dir.display().to_string(),
        do_import: true,
        cache_policy: CachePolicy::Never,
        attr_timeout: Duration::ZERO,
        entry_timeout: Duration::ZERO,
        xattr: false,
        writeback: false,
        ..Default::default()
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn name(&self) -> &'static str {
        "virtio-fs"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        _acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> std::result::Result<(), ActivateError> {
        if queues.len() != 2 {
            return Err(ActivateError {
                device: "virtio-fs",
                reason: format!("2 queues are needed, {} were given", queues.len()),
            });
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process();
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        Some(
            self.active
                .as_ref()
                .map(|a| super::snapshot_positions(&a.queues))
                .unwrap_or_default(),
        )
    }

    fn snapshot_refusal(&self) -> Option<String> {
        // A restored VM gets a fresh passthrough backend over its own directory: only sound
        // while the guest holds no FUSE state (no FUSE_INIT, no inode or handle).
        (self.served > 0).then(|| {
            format!(
                "the guest made {} FUSE requests on share {} before the snapshot (it mounted \
                 it): a restored VM's fresh backend would not know its inodes; save the VM \
                 before the share is mounted",
                self.served, self.name
            )
        })
    }

    fn watched(&self) -> Vec<(RawFd, u32)> {
        vec![(self.notify.as_raw_fd(), 0)]
    }

    fn handle_event(&mut self, _token: u32) {
        let _ = self.notify.read();
        self.process();
    }
}

#[cfg(test)]
mod tests;
