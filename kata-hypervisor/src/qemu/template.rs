//! VM templating (Kata's `[factory] enable_template`): sandboxes start as clones of one saved VM.
//!
//! **The template.** The first sandbox of a configuration with `enable_template = true` finds
//! no template in `template_path` and makes one (under a lock, so concurrent sandboxes make
//! one between them): a VM with the sandbox's boot devices whose guest memory is the file
//! `<template_path>/memory` mapped shared (`memory-backend-file,share=on`), booted until its
//! agent answers, then paused, and its device state (without the memory: QEMU's
//! `x-ignore-shared` capability leaves shared memory out of the stream) saved to
//! `<template_path>/state` over a socket QEMU connects to; QEMU then quits. The memory file
//! keeps the guest's memory. `template.json` beside them records what the template was made
//! from ([`TemplateManifest`]).
//!
//! **A clone.** The same device set, the memory file mapped private (`share=off`: the pages
//! are shared with the page cache, and so with every other clone, until a clone writes one,
//! which then is its own copy), `-incoming defer -S`, the capability, the state streamed in
//! (`migrate-incoming`), `cont`. The guest does not boot: its agent is running already. Each
//! clone has its own kernel vhost-vsock guest CID: QEMU's vhost-vsock sends the guest a
//! transport reset after the state is loaded, and the guest's driver reads its CID again from
//! the device (the agent keeps listening; a connection of the template's is reset). The
//! runtime then gives the guest fresh entropy and the host's time before `CreateSandbox`
//! (kata-sandbox), as Kata's runtime does for a VM from its factory.
//!
//! **virtio-fs** (`shared_fs = "virtio-fs"`) is a vhost-user device, which QEMU 7.2 cannot
//! migrate: the template is saved without it (the template VM boots with no share: the agent
//! mounts nothing before `CreateSandbox`) and with a spare PCIe root port [`SHARE_PORT`]; a
//! clone's share is hot-plugged there after the restore ([`attach_share`]: `chardev-add` on
//! the clone's own virtiofsd socket, `device_add vhost-user-fs-pci`, then the wait until the
//! guest's driver has started it), before `CreateSandbox`. virtiofsd maps the guest memory
//! itself, so it must be shared memory: a private copy-on-write mapping would show virtiofsd
//! the template's pages (and let it write into them). Such a clone's memory is therefore its
//! own: a memfd holding a sparse copy of the template's memory, mapped shared
//! ([`CloneMemory`]): the start is still a restore, not a boot, but the clones do not share
//! the template's pages. The spare port does not change the firmware choice (qboot where
//! nothing else needs SeaBIOS): the guest kernel numbers the port's bus and places the
//! device's windows itself when the share is plugged (the lab's clones run so). The manifest records the hot-plugged share
//! ([`TemplateManifest::hotplugged`]), so a template saved with virtio-9p or no share is told
//! apart from one saved for virtio-fs.
//!
//! **What cannot be templated** is refused when the VM is made or started, naming the key
//! ([`check_config`], [`check_start`]): hybrid vsock (vhost-user-vsock, so a host without
//! `/dev/vhost-vsock`: QEMU 7.2 cannot migrate it and the agent's connection runs on it from
//! boot), virtio-fs on a machine without PCIe root ports (not q35), VFIO devices cold-plugged
//! at boot, NICs at boot (the guest would keep the template's MAC), a rootless QEMU,
//! hugepages, and a template made for another memory size, vCPU count, kernel, initrd, kernel
//! command line, machine, accelerator, QEMU, device set or hot-plugged share.
//!
//! **Removal.** The template files stay until removed: `rm -r <template_path>` (with no clone
//! running: a clone maps the memory file; removing it while clones run is safe for them — the
//! mapping holds the pages — but the next sandbox makes a new template). A template whose
//! manifest does not match the configuration is refused with that fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::cmdline::VsockDevice;
use super::qmp::QmpClient;
use crate::config::{HypervisorConfig, SharedFs};
use crate::device::{DeviceConfig, ShareFsDevice};
use crate::error::{Error, Result};
use crate::kvm::Accelerator;

// The template directory's files and its lock: shared with the built-in VMM's templates.
pub use crate::template::{TemplateDir, TemplateLock, MANIFEST_FILE, MEMORY_FILE, STATE_FILE};
/// How long saving or loading the device state may take.
const MIGRATE_WAIT: Duration = Duration::from_secs(120);
/// The PCIe root port a templated VM with virtio-fs keeps free for its share, hot-plugged
/// into a clone after the restore.
pub const SHARE_PORT: &str = "rp-share";
/// How long the guest of a clone may take to start its hot-plugged virtio-fs device.
const SHARE_WAIT: Duration = Duration::from_secs(60);

/// Whether a templated VM with `c` hot-plugs its share after the restore: virtio-fs, a
/// vhost-user device QEMU cannot migrate.
pub fn share_hotplugged(c: &HypervisorConfig) -> bool {
    c.factory.enable_template && c.shared_fs == SharedFs::VirtioFs
}

/// Splits a templated VM's devices into the boot devices (the template's) and the virtio-fs
/// shares, which a clone gets hot-plugged after its restore ([`attach_share`]).
pub fn split_shares(devices: Vec<DeviceConfig>) -> (Vec<DeviceConfig>, Vec<ShareFsDevice>) {
    let mut boot = Vec::new();
    let mut shares = Vec::new();
    for d in devices {
        match d {
            DeviceConfig::ShareFs(s) if s.kind == SharedFs::VirtioFs => shares.push(s),
            other => boot.push(other),
        }
    }
    (boot, shares)
}

/// What a VM is in templating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Templating is off: an ordinary VM.
    #[default]
    None,
    /// The VM that is booted to become the template.
    Template,
    /// A VM started from the template.
    Clone,
}

impl Role {
    /// The role of a VM made with `config`: a clone when templating is on.
    pub fn for_config(config: &HypervisorConfig) -> Role {
        if config.factory.enable_template {
            Role::Clone
        } else {
            Role::None
        }
    }
}

/// What a template was made from; a clone's must be equal, or its guest would not match the
/// saved devices and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateManifest {
    /// The guest's size, kernel, initrd and command line.
    #[serde(flatten)]
    pub boot: crate::template::GuestBoot,
    /// `machine_type` with `machine_accelerators`.
    pub machine: String,
    /// KVM or TCG.
    pub accelerator: Accelerator,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The boot devices, as `kind:id` in order (without the hot-plugged share).
    pub devices: Vec<String>,
    /// What a clone gets hot-plugged after its restore: `vhost-user-fs-pci on rp-share` with
    /// virtio-fs; empty in a template saved with virtio-9p or no share (and in every manifest
    /// written before shares were hot-plugged, which then reads as such a template).
    #[serde(default)]
    pub hotplugged: Vec<String>,
}

impl TemplateManifest {
    /// The manifest of a VM booted with these values.
    pub fn new(
        config: &HypervisorConfig,
        kernel: &Path,
        initrd: Option<&Path>,
        accelerator: Accelerator,
        qemu: &Path,
        devices: &[DeviceConfig],
    ) -> TemplateManifest {
        TemplateManifest {
            boot: crate::template::GuestBoot {
                memory_mib: config.default_memory,
                vcpus: config.default_vcpus,
                max_vcpus: config.max_vcpus(),
                kernel: kernel.to_path_buf(),
                initrd: initrd.map(Path::to_path_buf),
                kernel_cmdline: super::cmdline::kernel_cmdline_for(
                    config,
                    false,
                    accelerator == Accelerator::Tcg,
                ),
                kernel_file: crate::template::file_stamp(kernel),
                initrd_file: initrd.map(crate::template::file_stamp),
            },
            // As the command line has it, `sata=off` included: a template saved by a build
            // that kept q35's SATA controller holds that device's state, which a VM without
            // it cannot load, so it is refused like any other machine change.
            machine: {
                let machine = if config.machine_accelerators.is_empty() {
                    config.machine_type.clone()
                } else {
                    format!("{},{}", config.machine_type, config.machine_accelerators)
                };
                let off =
                    super::cmdline::unused_machine_devices_off(&config.machine_type, &machine);
                machine + off
            },
            accelerator,
            qemu: qemu.to_path_buf(),
            devices: devices
                .iter()
                .filter(|d| !matches!(d, DeviceConfig::ShareFs(s) if s.kind == SharedFs::VirtioFs))
                .map(|d| format!("{}:{}", d.kind_name(), d.id()))
                .collect(),
            hotplugged: if share_hotplugged(config) {
                vec![format!("vhost-user-fs-pci on {SHARE_PORT}")]
            } else {
                Vec::new()
            },
        }
    }

    /// The first difference from `saved` (the template's), as `what: template's vs ours`.
    pub fn difference(&self, saved: &TemplateManifest) -> Option<String> {
        let rest: [(&str, String, String); 5] = [
            ("machine_type", saved.machine.clone(), self.machine.clone()),
            (
                "the accelerator",
                format!("{:?}", saved.accelerator),
                format!("{:?}", self.accelerator),
            ),
            (
                "path",
                saved.qemu.display().to_string(),
                self.qemu.display().to_string(),
            ),
            (
                "shared_fs (the share hot-plugged after the restore)",
                format!("{:?}", saved.hotplugged),
                format!("{:?}", self.hotplugged),
            ),
            (
                "the boot devices",
                saved.devices.join(","),
                self.devices.join(","),
            ),
        ];
        crate::template::first_difference(self.boot.pairs(&saved.boot).into_iter().chain(rest))
    }
}

impl crate::template::Manifest for TemplateManifest {
    fn difference(&self, saved: &Self) -> Option<String> {
        TemplateManifest::difference(self, saved)
    }
}

fn refused(what: String) -> Error {
    Error::Unsupported {
        backend: "qemu",
        what,
    }
}

/// Refuses a configuration that cannot be templated (checked when the VM is made), naming the
/// key and the fix. `Ok` when templating is off.
pub fn check_config(c: &HypervisorConfig) -> Result<()> {
    if !c.factory.enable_template {
        return Ok(());
    }
    crate::template::check_template_path(c)?;
    let off = "or set factory.enable_template = false";
    if c.shared_fs == SharedFs::VirtioFs && !c.machine_type.starts_with("q35") {
        return Err(refused(format!(
            "VM templating with shared_fs = \"virtio-fs\" on machine_type = \"{}\": a clone's \
             share is hot-plugged after the restore onto a PCIe root port, which only q35 has; \
             set machine_type = \"q35\", or shared_fs = \"virtio-9p\", {off}",
            c.machine_type
        )));
    }
    if c.rootless {
        return Err(refused(format!(
            "VM templating with rootless = true: a rootless QEMU cannot map the template's \
             memory file; set rootless = false, {off}"
        )));
    }
    if c.enable_hugepages {
        return Err(refused(format!(
            "VM templating with enable_hugepages = true: the template's memory is a file of \
             ordinary pages; set enable_hugepages = false, {off}"
        )));
    }
    if !c.image.is_empty() {
        return Err(refused(format!(
            "VM templating with image = \"{}\": a template boots from initrd; set image = \"\" \
             and initrd, {off}",
            c.image
        )));
    }
    Ok(())
}

/// Refuses what the start of a templated VM finds that cannot be templated: the vsock device
/// (hybrid vsock when the host has no `/dev/vhost-vsock`) and the boot devices.
pub fn check_start(vsock: &VsockDevice, devices: &[DeviceConfig]) -> Result<()> {
    let off = "or set factory.enable_template = false";
    if let VsockDevice::VhostUser { .. } = vsock {
        return Err(refused(format!(
            "VM templating with hybrid vsock (vhost-user-vsock, used because this host has no \
             /dev/vhost-vsock): QEMU cannot migrate a vhost-user device, and it cannot work on \
             a clone's private memory; load the kernel's vhost-vsock (modprobe vhost_vsock), \
             {off}"
        )));
    }
    for d in devices {
        match d {
            DeviceConfig::Vfio(_) | DeviceConfig::VfioAp(_) => {
                return Err(refused(format!(
                    "VM templating with the VFIO device {} cold-plugged at boot: a VFIO device \
                     cannot be migrated; set cold_plug_vfio = \"no-port\" (hot-plugged after \
                     start) or remove it, {off}",
                    d.id()
                )))
            }
            DeviceConfig::Net(_) => {
                return Err(refused(format!(
                    "VM templating with the network device {} at boot: every clone would keep \
                     the template's MAC address; start the sandbox without a network \
                     namespace (internetworking_model = \"none\"), {off}",
                    d.id()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Rewrites the command line of a VM in `role` (from [`super::cmdline::build_args`]): guest
/// memory from the template's file (shared for the template, private for a clone), and a
/// clone waits for its state (`-incoming defer`) paused (`-S`). With `share_port` (virtio-fs,
/// [`share_hotplugged`]) both get the spare root port [`SHARE_PORT`], and a clone's memory is
/// its own copy at `clone_memory` ([`CloneMemory::path`]) mapped shared, which virtiofsd can
/// map too.
pub fn adjust_args(
    role: Role,
    template_dir: &Path,
    clone_memory: Option<&Path>,
    share_port: bool,
    args: &mut Vec<String>,
) -> Result<()> {
    let (path, share) = match (role, share_port) {
        (Role::None, _) => return Ok(()),
        (Role::Template, _) => (template_dir.join(MEMORY_FILE), "on"),
        (Role::Clone, false) => (template_dir.join(MEMORY_FILE), "off"),
        (Role::Clone, true) => (
            clone_memory
                .ok_or_else(|| {
                    refused("VM templating: a virtio-fs clone without its memory".into())
                })?
                .to_path_buf(),
            "on",
        ),
    };
    let backend = args
        .iter_mut()
        .find(|a| a.starts_with("memory-backend-memfd,id=mem0,"))
        .ok_or_else(|| {
            refused("VM templating: no memory backend mem0 on the command line".into())
        })?;
    let size = backend
        .split(',')
        .find(|o| o.starts_with("size="))
        .unwrap_or("size=0M")
        .to_string();
    let prealloc = if backend.contains("prealloc=on") {
        ",prealloc=on"
    } else {
        ""
    };
    *backend = format!(
        "memory-backend-file,id=mem0,{size},mem-path={},share={share}{prealloc}",
        path.display()
    );
    if share_port {
        args.extend([
            "-device".into(),
            format!("pcie-root-port,id={SHARE_PORT},bus=pcie.0,chassis=90,slot=90"),
        ]);
    }
    if role == Role::Clone {
        args.extend(["-incoming".into(), "defer".into(), "-S".into()]);
    }
    Ok(())
}

/// A clone's own guest memory with virtio-fs ([`adjust_args`]): a memfd holding a sparse copy
/// of the template's memory, which QEMU inherits open and maps by `/proc/self/fd/<n>` (so no
/// file in a directory: no filesystem's size limit, never written back to a disk, gone with
/// the last process that holds it).
#[derive(Debug)]
pub struct CloneMemory {
    fd: std::os::fd::OwnedFd,
}

impl CloneMemory {
    /// Copies the template's memory into a new memfd, keeping its holes: only the pages the
    /// template's guest touched are copied (`SEEK_DATA`/`SEEK_HOLE`, each extent with the
    /// kernel's copy). Returns it and the bytes copied.
    pub fn copy_from(dir: &TemplateDir) -> Result<(CloneMemory, u64)> {
        let memfd = nix::sys::memfd::memfd_create(
            c"kata-clone-memory",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| Error::io("creating the clone's memory (memfd_create)", e.into()))?;
        let mut dst = std::fs::File::from(memfd);
        let copied = copy_sparse(&dir.path().join(MEMORY_FILE), &mut dst)?;
        Ok((CloneMemory { fd: dst.into() }, copied))
    }

    /// The descriptor QEMU must inherit.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.fd.as_raw_fd()
    }

    /// The `mem-path` QEMU maps it by (its own descriptor of the same number).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.raw_fd()))
    }
}

/// Copies the file `from` into `dst` (sized to it), its data extents only.
fn copy_sparse(from: &Path, dst: &mut std::fs::File) -> Result<u64> {
    use std::io::{Seek as _, SeekFrom};
    use std::os::fd::AsFd as _;
    let err = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", from.display()), e);
    let mut src = std::fs::File::open(from).map_err(|e| err("opening", e))?;
    let len = src.metadata().map_err(|e| err("reading", e))?.len();
    dst.set_len(len)
        .map_err(|e| Error::io("sizing the clone's memory", e))?;
    let seek = |f: &std::fs::File, at: u64, whence| {
        nix::unistd::lseek(f.as_fd(), at as i64, whence).map(|o| o as u64)
    };
    let mut copied = 0;
    let mut at = 0;
    while at < len {
        let start = match seek(&src, at, nix::unistd::Whence::SeekData) {
            Ok(o) => o,
            // No data after `at`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(err("seeking in", e.into())),
        };
        let end = seek(&src, start, nix::unistd::Whence::SeekHole)
            .map_err(|e| err("seeking in", e.into()))?
            .min(len);
        src.seek(SeekFrom::Start(start))
            .and_then(|_| dst.seek(SeekFrom::Start(start)))
            .map_err(|e| err("seeking in", e))?;
        std::io::copy(&mut std::io::Read::take(&mut src, end - start), dst)
            .map_err(|e| err("copying the clone's memory from", e))?;
        copied += end - start;
        at = end;
    }
    Ok(copied)
}

/// The `chardev-add` arguments of a clone's share: a client of its virtiofsd's socket.
fn share_chardev(fs: &ShareFsDevice, socket: &Path) -> serde_json::Value {
    serde_json::json!({
        "id": format!("char-{}", fs.mount_tag),
        "backend": { "type": "socket", "data": {
            "addr": { "type": "unix", "data": { "path": socket.display().to_string() } },
            "server": false
        }}
    })
}

/// The `device_add` properties of a clone's share: the command line's `vhost-user-fs-pci`
/// (same chardev, tag, queue size, id) on [`SHARE_PORT`].
fn share_device(
    c: &HypervisorConfig,
    fs: &ShareFsDevice,
) -> serde_json::Map<String, serde_json::Value> {
    let mut p = serde_json::Map::new();
    p.insert("chardev".into(), format!("char-{}", fs.mount_tag).into());
    p.insert("tag".into(), fs.mount_tag.clone().into());
    p.insert("queue-size".into(), c.virtio_fs_queue_size.into());
    p.insert("bus".into(), SHARE_PORT.into());
    p
}

/// Hot-plugs a clone's virtio-fs share after its restore: `chardev-add` on the share's
/// virtiofsd socket, `device_add vhost-user-fs-pci` on [`SHARE_PORT`], then waits (at most
/// `SHARE_WAIT`) until the guest's driver has started the device, so the agent finds the
/// tag when `CreateSandbox` mounts it. A `device_add` that fails removes the chardev.
pub async fn attach_share(qmp: &QmpClient, c: &HypervisorConfig, fs: &ShareFsDevice) -> Result<()> {
    let socket = fs
        .vhost_user_socket
        .as_ref()
        .ok_or_else(|| Error::InvalidConfig {
            key: "shared_fs",
            value: "\"virtio-fs\"".into(),
            reason: format!(
                "the share {} names no virtiofsd socket (kata-resource starts the daemon and \
             yields it with the device)",
                fs.host_path.display()
            ),
        })?;
    let chardev = format!("char-{}", fs.mount_tag);
    let id = format!("fs-{}", fs.mount_tag);
    qmp.execute("chardev-add", Some(share_chardev(fs, socket)))
        .await?;
    if let Err(e) = qmp
        .device_add("vhost-user-fs-pci", &id, share_device(c, fs))
        .await
    {
        let _ = qmp
            .execute("chardev-remove", Some(serde_json::json!({ "id": chardev })))
            .await;
        return Err(e);
    }
    let backend = format!("/machine/peripheral/{id}/virtio-backend");
    let deadline = tokio::time::Instant::now() + SHARE_WAIT;
    while !qmp.virtio_started(&backend).await? {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!(
                    "the clone's guest to start the hot-plugged virtio-fs device {id} (tag {}) \
                     on {SHARE_PORT}",
                    fs.mount_tag
                ),
                after: SHARE_WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(tag = %fs.mount_tag, port = SHARE_PORT, "virtio-fs share hot-plugged into the clone");
    Ok(())
}

/// Turns on QEMU's `x-ignore-shared` migration capability (shared memory is left out of the
/// stream), on the template before the save and on a clone before the load.
async fn ignore_shared(qmp: &QmpClient) -> Result<()> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(serde_json::json!({
            "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
        })),
    )
    .await
    .map(drop)
}

/// Waits until `query-migrate` reports the migration completed.
async fn wait_migrated(qmp: &QmpClient, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + MIGRATE_WAIT;
    loop {
        let r = qmp.execute("query-migrate", None).await?;
        match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(Error::Qmp {
                    command: "migrate".into(),
                    reason: format!(
                        "{what} failed: {}",
                        r.get("error-desc").and_then(|s| s.as_str()).unwrap_or("")
                    ),
                })
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.into(),
                after: MIGRATE_WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Saves a booted template VM: pause, the capability, its device state streamed over
/// `socket` (QEMU connects, we write what comes to the state file), then QEMU quits.
pub async fn save(qmp: &QmpClient, dir: &TemplateDir, socket: &Path) -> Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| Error::io(format!("binding {}", socket.display()), e))?;
    let state = dir.state();
    qmp.stop().await?;
    ignore_shared(qmp).await?;
    qmp.execute(
        "migrate",
        Some(serde_json::json!({ "uri": format!("unix:{}", socket.display()) })),
    )
    .await?;
    let (mut conn, _) = tokio::time::timeout(MIGRATE_WAIT, listener.accept())
        .await
        .map_err(|_| Error::Timeout {
            what: "QEMU to connect to save the template".into(),
            after: MIGRATE_WAIT,
        })?
        .map_err(|e| Error::io("accepting QEMU's migration stream", e))?;
    // The stream holds the device state only (memory is left out): small enough to hold.
    let mut stream = Vec::new();
    tokio::time::timeout(MIGRATE_WAIT, conn.read_to_end(&mut stream))
        .await
        .map_err(|_| Error::Timeout {
            what: "QEMU's migration stream of the template to end".into(),
            after: MIGRATE_WAIT,
        })?
        .map_err(|e| Error::io("reading QEMU's migration stream", e))?;
    std::fs::write(&state, &stream)
        .map_err(|e| Error::io(format!("writing {}", state.display()), e))?;
    wait_migrated(qmp, "saving the template").await?;
    let _ = std::fs::remove_file(socket);
    qmp.quit().await
}

/// Loads the template's device state into a clone started with `-incoming defer -S`: the
/// capability, `migrate-incoming` on `socket` (QEMU listens, we stream the state file), then
/// `cont`.
pub async fn load(qmp: &QmpClient, dir: &TemplateDir, socket: &Path) -> Result<()> {
    ignore_shared(qmp).await?;
    let _ = std::fs::remove_file(socket);
    qmp.execute(
        "migrate-incoming",
        Some(serde_json::json!({ "uri": format!("unix:{}", socket.display()) })),
    )
    .await?;
    let state = dir.state();
    let stream =
        std::fs::read(&state).map_err(|e| Error::io(format!("reading {}", state.display()), e))?;
    let mut conn = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Error::io(format!("connecting to {}", socket.display()), e))?;
    tokio::time::timeout(MIGRATE_WAIT, conn.write_all(&stream))
        .await
        .map_err(|_| Error::Timeout {
            what: "QEMU to take the template's state".into(),
            after: MIGRATE_WAIT,
        })?
        .map_err(|e| Error::io("streaming the template's state to QEMU", e))?;
    conn.shutdown()
        .await
        .map_err(|e| Error::io("streaming the template's state to QEMU", e))?;
    wait_migrated(qmp, "loading the template").await?;
    let _ = std::fs::remove_file(socket);
    qmp.cont().await
}

/// How long the template VM may take to boot until its agent answers.
const TEMPLATE_BOOT_WAIT: Duration = Duration::from_secs(180);

/// For a clone of `vm` about to start: takes the template lock, checks the template against
/// this VM's manifest, or makes the template when there is none (a VM booted with `vm`'s
/// configuration and `devices`, saved, quit). A shared lock is held until the clone has
/// loaded the state (a template is never made anew under a clone that is loading it; clones
/// load side by side); making takes it exclusive.
pub(super) async fn ensure(
    vm: &super::Qemu,
    ours: &TemplateManifest,
    devices: &[DeviceConfig],
) -> Result<(TemplateDir, TemplateLock)> {
    use crate::hypervisor::Hypervisor as _;
    let dir = TemplateDir::new(&vm.config.factory.template_path);
    let t0 = std::time::Instant::now();
    let lock = dir
        .ensure(ours, || async {
            let mut maker = super::Qemu::new(
                &format!("{}-template", vm.id),
                vm.config.clone(),
                dir.path().join(crate::template::MAKER_DIR),
            )?;
            maker.role = Role::Template;
            let made = async {
                // The template is saved without the virtio-fs share (QEMU cannot migrate it;
                // the sandbox's virtiofsd serves its clone, which gets it hot-plugged).
                maker.prepare(split_shares(devices.to_vec()).0).await?;
                maker.start().await?;
                maker.wait_ready(TEMPLATE_BOOT_WAIT).await?;
                let qmp = maker
                    .qmp()
                    .ok_or_else(|| Error::NotRunning(maker.state().to_string()))?;
                save(&qmp, &dir, &dir.path().join("save.sock")).await
            }
            .await;
            if let Err(e) = maker.stop().await {
                tracing::debug!(error = %e, "stopping the template VM");
            }
            made?;
            tracing::info!(sandbox_id = %vm.id, dir = %dir.path().display(), took = ?t0.elapsed(), "VM template made");
            Ok(())
        })
        .await?;
    Ok((dir, lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HypervisorConfig {
        let mut c = HypervisorConfig::default();
        c.factory.enable_template = true;
        c.factory.template_path = "/run/vc/vm/template".into();
        c.shared_fs = SharedFs::Virtio9p;
        c
    }

    fn args() -> Vec<String> {
        [
            "-m",
            "256M",
            "-object",
            "memory-backend-memfd,id=mem0,size=256M,share=on",
            "-numa",
            "node,memdev=mem0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn the_template_maps_its_memory_file_shared_and_a_clone_private_waiting_for_its_state() {
        let dir = Path::new("/run/vc/vm/template");
        let mut t = args();
        adjust_args(Role::Template, dir, None, false, &mut t).unwrap();
        assert_eq!(
            t[3],
            "memory-backend-file,id=mem0,size=256M,mem-path=/run/vc/vm/template/memory,share=on"
        );
        assert!(!t.contains(&"-incoming".to_string()), "{t:?}");
        let mut c = args();
        adjust_args(Role::Clone, dir, None, false, &mut c).unwrap();
        assert_eq!(
            c[3],
            "memory-backend-file,id=mem0,size=256M,mem-path=/run/vc/vm/template/memory,share=off"
        );
        assert_eq!(&c[6..], ["-incoming", "defer", "-S"]);
        let mut n = args();
        adjust_args(Role::None, dir, None, true, &mut n).unwrap();
        assert_eq!(n, args());
    }

    #[test]
    fn with_virtio_fs_both_keep_the_share_port_and_a_clone_maps_its_own_copy_shared() {
        let dir = Path::new("/run/vc/vm/template");
        let port = "pcie-root-port,id=rp-share,bus=pcie.0,chassis=90,slot=90";
        let mut t = args();
        adjust_args(Role::Template, dir, None, true, &mut t).unwrap();
        assert_eq!(
            t[3],
            "memory-backend-file,id=mem0,size=256M,mem-path=/run/vc/vm/template/memory,share=on"
        );
        assert_eq!(&t[6..], ["-device", port]);
        let mut c = args();
        let memory = Path::new("/proc/self/fd/9");
        adjust_args(Role::Clone, dir, Some(memory), true, &mut c).unwrap();
        assert_eq!(
            c[3],
            "memory-backend-file,id=mem0,size=256M,mem-path=/proc/self/fd/9,share=on"
        );
        assert_eq!(&c[6..], ["-device", port, "-incoming", "defer", "-S"]);
        // A virtio-fs clone never maps the template's file itself.
        let e = adjust_args(Role::Clone, dir, None, true, &mut args())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without its memory"), "{e}");
    }

    fn share(kind: SharedFs) -> DeviceConfig {
        DeviceConfig::ShareFs(ShareFsDevice {
            mount_tag: "kataShared".into(),
            host_path: "/run/kata/shared/c1".into(),
            kind,
            vhost_user_socket: (kind == SharedFs::VirtioFs).then(|| "/vm/c1/vfsd.sock".into()),
        })
    }

    #[test]
    fn the_virtio_fs_share_is_split_off_the_boot_devices_and_9p_stays() {
        let (boot, shares) = split_shares(vec![share(SharedFs::VirtioFs)]);
        assert!(boot.is_empty());
        assert_eq!(shares[0].mount_tag, "kataShared");
        let (boot, shares) = split_shares(vec![share(SharedFs::Virtio9p)]);
        assert_eq!(boot.len(), 1);
        assert!(shares.is_empty());
    }

    #[test]
    fn a_template_with_a_sparse_memory_is_copied_with_its_holes() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path());
        let mut f = std::fs::File::create(tmp.path().join(MEMORY_FILE)).unwrap();
        f.set_len(64 << 20).unwrap();
        for at in [0u64, 40 << 20] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[0xa5; 8192]).unwrap();
        }
        drop(f);
        let (memory, copied) = CloneMemory::copy_from(&dir).unwrap();
        // Read back by its path, as QEMU opens it.
        let (a, b) = (
            std::fs::read(tmp.path().join(MEMORY_FILE)).unwrap(),
            std::fs::read(memory.path()).unwrap(),
        );
        assert!(a == b, "the copy differs from the template's memory");
        // Only the written extents (a filesystem may round them to its blocks).
        assert!(
            (16384..(4 << 20)).contains(&copied),
            "copied {copied} bytes"
        );
        let blocks = std::fs::metadata(memory.path()).unwrap().blocks();
        assert!(blocks * 512 < 8 << 20, "{blocks} blocks allocated");
        // Each clone its own.
        let (other, _) = CloneMemory::copy_from(&dir).unwrap();
        assert_ne!(
            std::fs::metadata(other.path()).unwrap().ino(),
            std::fs::metadata(memory.path()).unwrap().ino()
        );
    }

    /// A fake QEMU monitor answering each command from `answer` (by name; `{}` otherwise).
    /// Returns the commands it got, without `qmp_capabilities`.
    fn fake_qmp(
        sock: &Path,
        answer: fn(&str) -> serde_json::Value,
    ) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 0}}, \"capabilities\": []}}\n")
                .unwrap();
            let mut got = Vec::new();
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                let mut cmd: serde_json::Value = serde_json::from_str(&line).unwrap();
                let name = cmd["execute"].as_str().unwrap_or_default().to_string();
                let mut reply = answer(&name);
                if let Some(id) = cmd.get("id") {
                    reply["id"] = id.clone();
                }
                w.write_all(format!("{reply}\n").as_bytes()).unwrap();
                cmd.as_object_mut().unwrap().remove("id");
                if name != "qmp_capabilities" {
                    got.push(cmd);
                }
            }
            got
        })
    }

    #[tokio::test]
    async fn a_clones_share_is_hot_plugged_on_the_spare_port_and_waited_for() {
        use serde_json::json;
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("qmp.sock");
        let server = fake_qmp(&sock, |cmd| match cmd {
            "x-query-virtio-status" => {
                json!({"return": {"started": true, "status": {"statuses": []}}})
            }
            _ => json!({"return": {}}),
        });
        let qmp = QmpClient::connect(&sock, Duration::from_secs(5))
            .await
            .unwrap();
        let DeviceConfig::ShareFs(fs) = share(SharedFs::VirtioFs) else {
            unreachable!()
        };
        attach_share(&qmp, &config(), &fs).await.unwrap();
        drop(qmp);
        assert_eq!(
            server.join().unwrap(),
            [
                json!({"execute": "chardev-add", "arguments": {"id": "char-kataShared",
                    "backend": {"type": "socket", "data": {
                        "addr": {"type": "unix", "data": {"path": "/vm/c1/vfsd.sock"}},
                        "server": false}}}}),
                json!({"execute": "device_add", "arguments": {"driver": "vhost-user-fs-pci",
                    "id": "fs-kataShared", "chardev": "char-kataShared", "tag": "kataShared",
                    "queue-size": 1024, "bus": "rp-share"}}),
                json!({"execute": "x-query-virtio-status",
                    "arguments": {"path": "/machine/peripheral/fs-kataShared/virtio-backend"}}),
            ]
        );
    }

    #[tokio::test]
    async fn a_share_qemu_refuses_leaves_no_chardev() {
        use serde_json::json;
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("qmp.sock");
        let server = fake_qmp(&sock, |cmd| match cmd {
            "device_add" => {
                json!({"error": {"class": "GenericError", "desc": "Bus 'rp-share' not found"}})
            }
            _ => json!({"return": {}}),
        });
        let qmp = QmpClient::connect(&sock, Duration::from_secs(5))
            .await
            .unwrap();
        let DeviceConfig::ShareFs(fs) = share(SharedFs::VirtioFs) else {
            unreachable!()
        };
        let e = attach_share(&qmp, &config(), &fs)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("rp-share"), "{e}");
        drop(qmp);
        let got: Vec<_> = server
            .join()
            .unwrap()
            .into_iter()
            .map(|c| c["execute"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, ["chardev-add", "device_add", "chardev-remove"]);
    }

    #[test]
    fn hybrid_vsock_virtio_fs_rootless_vfio_and_nics_are_refused_naming_them() {
        let e = check_start(
            &VsockDevice::VhostUser {
                socket: "/x/vhost-vsock.sock".into(),
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("vhost-user-vsock") && e.contains("modprobe vhost_vsock"),
            "{e}"
        );
        assert!(check_start(&VsockDevice::VhostVsock { cid: 7 }, &[]).is_ok());
        // virtio-fs is hot-plugged after the restore: on q35 (its root ports) only.
        let mut c = config();
        c.shared_fs = SharedFs::VirtioFs;
        c.machine_type = "q35".into();
        assert!(check_config(&c).is_ok());
        assert!(check_start(
            &VsockDevice::VhostVsock { cid: 7 },
            &[share(SharedFs::VirtioFs)]
        )
        .is_ok());
        c.machine_type = "microvm".into();
        let e = check_config(&c).unwrap_err().to_string();
        assert!(
            e.contains("shared_fs = \"virtio-fs\"") && e.contains("machine_type = \"q35\""),
            "{e}"
        );
        let mut c = config();
        c.rootless = true;
        let e = check_config(&c).unwrap_err().to_string();
        assert!(e.contains("rootless = true"), "{e}");
        let mut c = config();
        c.factory.template_path = "template".into();
        let e = check_config(&c).unwrap_err().to_string();
        assert!(e.contains("factory.template_path"), "{e}");
        assert!(check_config(&config()).is_ok());
        let mut off = config();
        off.factory.enable_template = false;
        off.shared_fs = SharedFs::VirtioFs;
        assert!(check_config(&off).is_ok());
    }

    #[tokio::test]
    async fn a_template_directory_others_can_write_is_refused_naming_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path().join("t"));
        let shared = dir.lock(false).await.unwrap();
        let other = dir.lock(false).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), dir.lock(true)).await;
        assert!(
            waited.is_err(),
            "the exclusive lock was taken beside shared ones"
        );
        drop((shared, other));
        drop(dir.lock(true).await.unwrap());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = dir.lock(false).await.unwrap_err().to_string();
        assert!(
            e.contains("factory.template_path") && e.contains("777"),
            "{e}"
        );
    }

    /// The manifest of a KVM template of `c` booting `kernel` with the same initrd and QEMU.
    fn manifest(c: &HypervisorConfig, kernel: &str) -> TemplateManifest {
        TemplateManifest::new(
            c,
            Path::new(kernel),
            Some(Path::new("/g/initrd")),
            Accelerator::Kvm,
            Path::new("/usr/bin/qemu-system-x86_64"),
            &[],
        )
    }

    #[test]
    fn a_template_made_for_another_vm_is_refused_naming_the_difference_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path());
        let c = config();
        let ours = manifest(&c, "/g/vmlinux");
        assert!(!dir.exists());
        dir.write_manifest(&ours).unwrap();
        dir.check_matches(&ours).unwrap();
        let mut bigger = c.clone();
        bigger.default_memory += 256;
        let theirs = manifest(&bigger, "/g/vmlinux");
        let e = dir.check_matches(&theirs).unwrap_err().to_string();
        assert!(
            e.contains("default_memory") && e.contains("rm -r") && e.contains("template_path"),
            "{e}"
        );
        let other_kernel = manifest(&c, "/g/other");
        let e = dir.check_matches(&other_kernel).unwrap_err().to_string();
        assert!(e.contains("kernel: "), "{e}");
    }

    #[test]
    fn a_template_saved_with_9p_or_before_hot_plugged_shares_is_refused_for_virtio_fs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path());
        let manifest = |kind: SharedFs| {
            let mut c = config();
            c.shared_fs = kind;
            TemplateManifest::new(
                &c,
                Path::new("/g/vmlinux"),
                Some(Path::new("/g/initrd")),
                Accelerator::Kvm,
                Path::new("/usr/bin/qemu-system-x86_64"),
                &[share(kind)],
            )
        };
        let fs = manifest(SharedFs::VirtioFs);
        assert_eq!(fs.hotplugged, ["vhost-user-fs-pci on rp-share"]);
        assert!(fs.devices.is_empty(), "{:?}", fs.devices);
        let p9 = manifest(SharedFs::Virtio9p);
        assert!(p9.hotplugged.is_empty());
        dir.write_manifest(&p9).unwrap();
        let e = dir.check_matches(&fs).unwrap_err().to_string();
        assert!(
            e.contains("shared_fs (the share hot-plugged") && e.contains("rm -r"),
            "{e}"
        );
        // A manifest written before the field existed reads as a template without it.
        let mut old: serde_json::Value = serde_json::to_value(&p9).unwrap();
        old.as_object_mut().unwrap().remove("hotplugged");
        std::fs::write(tmp.path().join(MANIFEST_FILE), old.to_string()).unwrap();
        dir.check_matches(&p9).unwrap();
        assert!(dir.check_matches(&fs).is_err());
        dir.write_manifest(&fs).unwrap();
        dir.check_matches(&fs).unwrap();
    }

    #[test]
    fn a_template_saved_with_q35s_sata_controller_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TemplateDir::new(tmp.path());
        let mut c = config();
        c.machine_type = "q35".into();
        let now = manifest(&c, "/g/vmlinux");
        assert_eq!(now.machine, "q35,sata=off");
        // What a build before `sata=off` wrote for the same configuration.
        let before = TemplateManifest {
            machine: "q35".into(),
            ..now.clone()
        };
        dir.write_manifest(&before).unwrap();
        let e = dir.check_matches(&now).unwrap_err().to_string();
        assert!(e.contains("machine_type") && e.contains("rm -r"), "{e}");
    }
}
