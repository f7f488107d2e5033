//! Block and VFIO devices hot-plugged into a running QEMU over QMP.
//!
//! Attach: `blockdev-add` opens the host file or block device as a `raw` node (read-only
//! honoured, `block_device_aio` and the `block_device_cache_*` keys applied to its `file`
//! node), then `device_add` gives it to the guest: as `virtio-blk-pci` on the lowest free
//! PCIe root port of the VM's [`PortAllocator`] (`pcie_root_port` ports), or as a `scsi-hd`
//! on the `virtio-scsi` controller every VM with `block_device_driver = "virtio-scsi"` gets at
//! boot. Where the guest finds it ([`GuestAddress`]: Kata's PCI path, or the SCSI target and
//! LUN) is read back from QEMU and returned. A step that fails undoes the ones before it.
//!
//! Detach: `device_del`, the wait for the guest to release it (`DEVICE_DELETED`), then
//! `blockdev-del`, which closes the file. What is attached ([`AttachedBlock`]) is kept in the
//! VM's saved state, so a VM taken over by another process can detach it too.
//!
//! VFIO (`attach_vfio`, `detach_vfio`): `device_add vfio-pci,host=<bdf>` on the lowest
//! free port of `hot_plug_vfio`'s kind (a root port for `no-port`: never q35's `pcie.0`),
//! its PCI path read back; `device_del` and `DEVICE_DELETED` on removal, the port freed.
//!
//! NICs (`attach_net`, `detach_net`): each of the tap's open queues is handed to QEMU over
//! the QMP socket (`getfd`, the file as `SCM_RIGHTS`), `netdev_add tap,fds=<names>` takes
//! them, `device_add virtio-net-pci` on the lowest free PCIe root port; removal is
//! `device_del`, `DEVICE_DELETED`, `netdev_del` (which closes QEMU's copies of the queues).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::qmp::QmpClient;
use crate::config::{BlockDeviceAio, BlockDeviceDriver, HypervisorConfig};
use crate::device::{
    BlockDevice, GuestAddress, NetDevice, PciPath, PciePort, PortAllocator, VfioDevice,
};
use crate::error::{Error, Result};

/// The id of the virtio-scsi controller block devices go on (`block_device_driver =
/// "virtio-scsi"`); its bus is `scsi0.0`.
pub const SCSI_CONTROLLER: &str = "scsi0";

/// LUNs per SCSI target in the addresses handed out (Kata's scheme: the n-th disk is target
/// `n / 256`, LUN `n % 256`).
const LUNS_PER_TARGET: u32 = 256;
/// SCSI disks a VM can be given (virtio-scsi's targets 0..=255).
const MAX_SCSI_DISKS: u32 = 256 * LUNS_PER_TARGET;

/// How long a detach waits for the guest to release a device. A PCIe native unplug takes the
/// guest 5 s (its attention-button delay); TCG is slow.
pub const UNPLUG_WAIT: Duration = Duration::from_secs(20);

/// How long an attach waits for QEMU to list a hot-plugged PCI device in `query-pci`.
const PCI_LIST_WAIT: Duration = Duration::from_secs(5);

/// Where an attached block device sits in the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "bus", rename_all = "kebab-case")]
pub enum BlockBus {
    /// virtio-blk-pci on a PCIe port (the port allocator records which).
    Pci {
        /// Where the guest finds it.
        path: PciPath,
    },
    /// scsi-hd on the virtio-scsi controller.
    Scsi {
        /// The SCSI target (`scsi-id`).
        target: u32,
        /// The LUN.
        lun: u32,
    },
}

/// One block device hot-plugged into the VM: what a detach needs, kept in the saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedBlock {
    /// The device as it was asked for (its id is the QEMU device id).
    pub device: BlockDevice,
    /// The block node `blockdev-add` made (`drive-<id>`).
    pub node: String,
    /// Where it sits.
    pub bus: BlockBus,
}

impl AttachedBlock {
    /// Where the guest finds it.
    pub fn guest_address(&self) -> GuestAddress {
        match &self.bus {
            BlockBus::Pci { path } => GuestAddress::Pci { path: path.clone() },
            BlockBus::Scsi { target, lun } => GuestAddress::Scsi {
                target: *target,
                lun: *lun,
            },
        }
    }
}

/// The block node name of device `id`.
pub fn node_name(id: &str) -> String {
    format!("drive-{id}")
}

/// Whether block devices go on virtio-scsi (else virtio-blk-pci).
pub fn uses_scsi(c: &HypervisorConfig) -> bool {
    c.block_device_driver == BlockDeviceDriver::VirtioScsi
}

/// Whether the VM gets the virtio-scsi controller at boot, so SCSI disks can be hot-plugged:
/// block devices are in use (`disable_block_device_use = false`) on `virtio-scsi`.
pub fn wants_scsi_controller(c: &HypervisorConfig) -> bool {
    uses_scsi(c) && !c.disable_block_device_use
}

/// The `blockdev-add` arguments for `dev`: a `raw` node named [`node_name`] over a protocol
/// node: `host_device` for a host block device, `file` for an image file (QEMU's `file` driver
/// refuses a block device, `host_device` a regular file). `read-only` on both nodes when the device is; the file node's
/// `aio` from `block_device_aio` and its cache from `block_device_cache_*` (QEMU's `cache=none`,
/// O_DIRECT with flushes honoured, unless `block_device_cache_set`). `native` AIO needs
/// O_DIRECT: without it the node uses `threads`.
pub fn blockdev_options(c: &HypervisorConfig, dev: &BlockDevice) -> Value {
    let (direct, no_flush) = if c.block_device_cache_set {
        (c.block_device_cache_direct, c.block_device_cache_noflush)
    } else {
        (true, false)
    };
    let aio = match c.block_device_aio {
        BlockDeviceAio::Native if !direct => BlockDeviceAio::Threads,
        aio => aio,
    };
    let is_block_device = std::fs::metadata(&dev.path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    json!({
        "driver": "raw",
        "node-name": node_name(&dev.id),
        "read-only": dev.read_only,
        "file": {
            "driver": if is_block_device { "host_device" } else { "file" },
            "node-name": format!("{}-file", node_name(&dev.id)),
            "filename": dev.path,
            "read-only": dev.read_only,
            "aio": aio.to_string(),
            "cache": { "direct": direct, "no-flush": no_flush },
        },
    })
}

/// The `device_add` properties of a virtio-blk-pci device for `dev` on PCI bus `bus`.
pub fn virtio_blk_props(dev: &BlockDevice, bus: &str, addr: Option<u32>) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("drive".into(), json!(node_name(&dev.id)));
    p.insert("bus".into(), json!(bus));
    if let Some(addr) = addr {
        p.insert("addr".into(), json!(format!("{addr:#x}")));
    }
    p
}

/// The `device_add` properties of a scsi-hd for `dev` at `target`:`lun`.
pub fn scsi_hd_props(dev: &BlockDevice, target: u32, lun: u32) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("drive".into(), json!(node_name(&dev.id)));
    p.insert("bus".into(), json!(format!("{SCSI_CONTROLLER}.0")));
    p.insert("channel".into(), json!(0));
    p.insert("scsi-id".into(), json!(target));
    p.insert("lun".into(), json!(lun));
    p
}

/// The lowest SCSI address no attached disk holds, as (target, LUN).
pub fn free_scsi_address(attached: &[AttachedBlock]) -> Option<(u32, u32)> {
    (0..MAX_SCSI_DISKS)
        .map(|n| (n / LUNS_PER_TARGET, n % LUNS_PER_TARGET))
        .find(|(t, l)| {
            !attached.iter().any(
                |a| matches!(a.bus, BlockBus::Scsi { target, lun } if target == *t && lun == *l),
            )
        })
}

/// The PCI path of the device `qdev_id` in a `query-pci` answer: the slots of the bridges
/// (root ports) on the way from bus 0, then its own.
pub fn pci_path_of(query_pci: &Value, qdev_id: &str) -> Option<PciPath> {
    fn walk(bus: &Value, qdev_id: &str, path: &mut Vec<u8>) -> bool {
        for dev in bus["devices"].as_array().into_iter().flatten() {
            let Some(slot) = dev["slot"].as_u64().and_then(|s| u8::try_from(s).ok()) else {
                continue;
            };
            path.push(slot);
            if dev["qdev_id"].as_str() == Some(qdev_id) {
                return true;
            }
            if let Some(bridge) = dev.get("pci_bridge") {
                if walk(bridge, qdev_id, path) {
                    return true;
                }
            }
            path.pop();
        }
        false
    }
    let root = query_pci
        .as_array()?
        .iter()
        .find(|b| b["bus"] == json!(0))?;
    let mut path = Vec::new();
    walk(root, qdev_id, &mut path)
        .then(|| PciPath::new(path).ok())
        .flatten()
}

/// Refuses block devices when the configuration says not to use them.
fn check_enabled(c: &HypervisorConfig, dev: &BlockDevice) -> Result<()> {
    if c.disable_block_device_use {
        return Err(Error::InvalidConfig {
            key: "disable_block_device_use",
            value: "true".into(),
            reason: format!(
                "block device `{}` ({}) cannot be attached: block devices are disabled; set \
                 disable_block_device_use = false",
                dev.id,
                dev.path.display()
            ),
        });
    }
    if !uses_scsi(c)
        && !matches!(
            c.block_device_driver,
            BlockDeviceDriver::VirtioBlk | BlockDeviceDriver::VirtioBlkPci
        )
    {
        return Err(Error::InvalidConfig {
            key: "block_device_driver",
            value: format!("\"{}\"", c.block_device_driver),
            reason: "the QEMU backend hot-plugs block devices as virtio-scsi or virtio-blk-pci \
                     only"
                .into(),
        });
    }
    Ok(())
}

/// Attaches `dev` (see the [module docs](self)): records it in `attached` and its port in
/// `ports`; returns where the guest finds it. On error nothing of it is left in QEMU, `ports`
/// or `attached`.
pub(super) async fn attach(
    qmp: &QmpClient,
    c: &HypervisorConfig,
    ports: &mut PortAllocator,
    attached: &mut Vec<AttachedBlock>,
    dev: BlockDevice,
) -> Result<GuestAddress> {
    check_enabled(c, &dev)?;
    if attached.iter().any(|a| a.device.id == dev.id) {
        return Err(Error::InvalidDevice {
            kind: "block",
            id: dev.id.clone(),
            reason: "a block device with this id is attached already".into(),
        });
    }
    let meta = std::fs::metadata(&dev.path).map_err(|e| Error::InvalidDevice {
        kind: "block",
        id: dev.id.clone(),
        reason: format!("cannot use {}: {e}", dev.path.display()),
    })?;
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if !t.is_file() && !t.is_block_device() {
            return Err(Error::InvalidDevice {
                kind: "block",
                id: dev.id.clone(),
                reason: format!(
                    "{} is neither a block device nor a regular file (an image)",
                    dev.path.display()
                ),
            });
        }
    }
    let node = node_name(&dev.id);
    qmp.blockdev_add(blockdev_options(c, &dev)).await?;
    let placed = if uses_scsi(c) {
        place_scsi(qmp, attached, &dev).await
    } else {
        place_pci(qmp, ports, &dev).await
    };
    let bus = match placed {
        Ok(bus) => bus,
        Err(e) => {
            if let Err(undo) = qmp.blockdev_del(&node).await {
                tracing::warn!(device = %dev.id, error = %undo, "removing the block node of a device that failed to attach");
            }
            return Err(e);
        }
    };
    let a = AttachedBlock {
        device: dev,
        node,
        bus,
    };
    let address = a.guest_address();
    tracing::info!(device = %a.device.id, path = %a.device.path.display(), read_only = a.device.read_only, %address, "block device attached");
    attached.push(a);
    Ok(address)
}

async fn place_scsi(
    qmp: &QmpClient,
    attached: &[AttachedBlock],
    dev: &BlockDevice,
) -> Result<BlockBus> {
    let (target, lun) = free_scsi_address(attached).ok_or_else(|| Error::InvalidDevice {
        kind: "block",
        id: dev.id.clone(),
        reason: format!("every SCSI address of {SCSI_CONTROLLER} is in use"),
    })?;
    qmp.device_add("scsi-hd", &dev.id, scsi_hd_props(dev, target, lun))
        .await?;
    Ok(BlockBus::Scsi { target, lun })
}

async fn place_pci(
    qmp: &QmpClient,
    ports: &mut PortAllocator,
    dev: &BlockDevice,
) -> Result<BlockBus> {
    let slot = ports
        .allocate(PciePort::RootPort, &dev.id)?
        .ok_or_else(|| Error::InvalidDevice {
            kind: "block",
            id: dev.id.clone(),
            reason: "no PCIe root port to plug it on".into(),
        })?;
    let result = async {
        qmp.device_add(
            "virtio-blk-pci",
            &dev.id,
            virtio_blk_props(dev, &slot.bus, slot.addr),
        )
        .await?;
        match find_pci_path(qmp, &dev.id, &slot.bus).await {
            Ok(path) => Ok(path),
            Err(e) => {
                let _ = qmp.device_del(&dev.id, UNPLUG_WAIT).await;
                Err(e)
            }
        }
    }
    .await;
    match result {
        Ok(path) => Ok(BlockBus::Pci { path }),
        Err(e) => {
            ports.free(&dev.id);
            Err(e)
        }
    }
}

/// The device's PCI path, from `query-pci`: its own entry once QEMU lists it behind the port
/// (the port's bus is numbered by the guest), else the port's slot and slot 0 on it.
async fn find_pci_path(qmp: &QmpClient, id: &str, port: &str) -> Result<PciPath> {
    let deadline = tokio::time::Instant::now() + PCI_LIST_WAIT;
    loop {
        let pci = qmp.execute("query-pci", None).await?;
        if let Some(path) = pci_path_of(&pci, id) {
            return Ok(path);
        }
        if tokio::time::Instant::now() > deadline {
            if let Some(port_path) = pci_path_of(&pci, port) {
                let mut slots = port_path.slots().to_vec();
                slots.push(0);
                return PciPath::new(slots).map_err(|reason| Error::Qmp {
                    command: "query-pci".into(),
                    reason,
                });
            }
            return Err(Error::Qmp {
                command: "query-pci".into(),
                reason: format!("neither device {id} nor its port {port} is listed"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Detaches block device `id`: `device_del`, the wait for the guest's release, `blockdev-del`;
/// frees its port and drops it from `attached`. An id that is not attached is an error naming
/// it. A device whose `device_del` fails stays recorded (for another try).
pub(super) async fn detach(
    qmp: &QmpClient,
    ports: &mut PortAllocator,
    attached: &mut Vec<AttachedBlock>,
    id: &str,
) -> Result<()> {
    let Some(i) = attached.iter().position(|a| a.device.id == id) else {
        return Err(Error::InvalidDevice {
            kind: "block",
            id: id.to_string(),
            reason: "no block device with this id is attached".into(),
        });
    };
    qmp.device_del(id, UNPLUG_WAIT).await?;
    let a = attached.remove(i);
    ports.free(id);
    qmp.blockdev_del(&a.node).await?;
    tracing::info!(device = %id, path = %a.device.path.display(), "block device detached");
    Ok(())
}

/// How long a VFIO `device_add` may take: QEMU maps (pins) all guest memory for the device's
/// DMA before it answers (in the nested lab, over 10 s for 256 MiB).
pub const VFIO_ADD_WAIT: Duration = Duration::from_secs(60);

/// The kind of port a VFIO device hot-plugged into a running VM goes on: `hot_plug_vfio`, or a
/// root port when it says `no-port` (q35's root bus `pcie.0` cannot take a hot-plugged device,
/// so "no port" never means the root bus here).
pub fn vfio_hotplug_port(c: &HypervisorConfig) -> PciePort {
    match c.hot_plug_vfio {
        PciePort::NoPort => PciePort::RootPort,
        other => other,
    }
}

/// The `device_add` properties of a `vfio-pci` device for host function `dev` on `bus`.
pub fn vfio_props(dev: &VfioDevice, bus: &str, addr: Option<u32>) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("host".into(), json!(dev.bdf));
    p.insert("bus".into(), json!(bus));
    if let Some(addr) = addr {
        p.insert("addr".into(), json!(format!("{addr:#x}")));
    }
    p
}

/// Hot-plugs VFIO function `dev`: the lowest free port of [`vfio_hotplug_port`]'s kind,
/// `device_add vfio-pci,host=<bdf>,bus=<port>`, and its guest PCI path read back from
/// `query-pci`. On error nothing of it is left in QEMU or `ports` (an exhausted kind is
/// [`Error::NoFreePort`], naming the key that adds ports).
pub(super) async fn attach_vfio(
    qmp: &QmpClient,
    c: &HypervisorConfig,
    ports: &mut PortAllocator,
    dev: &VfioDevice,
) -> Result<GuestAddress> {
    let kind = vfio_hotplug_port(c);
    let slot = ports
        .allocate(kind, &dev.id)?
        .ok_or_else(|| Error::InvalidDevice {
            kind: "VFIO",
            id: format!("{} ({})", dev.id, dev.bdf),
            reason: format!("no {kind} to plug it on"),
        })?;
    let result = async {
        let mut args = vfio_props(dev, &slot.bus, slot.addr);
        args.insert("driver".into(), json!("vfio-pci"));
        args.insert("id".into(), json!(dev.id));
        qmp.execute_within("device_add", Some(Value::Object(args)), VFIO_ADD_WAIT)
            .await?;
        match find_pci_path(qmp, &dev.id, &slot.bus).await {
            Ok(path) => Ok(path),
            Err(e) => {
                let _ = qmp.device_del(&dev.id, UNPLUG_WAIT).await;
                Err(e)
            }
        }
    }
    .await;
    match result {
        Ok(path) => {
            tracing::info!(device = %dev.id, host = %dev.bdf, port = %slot.bus, %path, "VFIO device attached");
            Ok(GuestAddress::Pci { path })
        }
        Err(e) => {
            ports.free(&dev.id);
            Err(e)
        }
    }
}

/// Hot-unplugs VFIO device `id`: `device_del`, then the wait for the guest to release it
/// (`DEVICE_DELETED`, at most [`UNPLUG_WAIT`]); its port is freed once it is gone. A device
/// the guest does not release keeps its port (it is still there).
pub(super) async fn detach_vfio(
    qmp: &QmpClient,
    ports: &mut PortAllocator,
    id: &str,
) -> Result<()> {
    qmp.device_del(id, UNPLUG_WAIT).await?;
    let freed = ports.free(id);
    tracing::info!(device = %id, port = ?freed.map(|s| s.bus), "VFIO device detached");
    Ok(())
}

/// The QMP names of NIC `dev`'s tap queues while they are passed (`getfd`).
fn net_fd_names(dev: &NetDevice) -> Vec<String> {
    (0..dev.tap_fds.len())
        .map(|i| format!("fd-{}-{i}", dev.id))
        .collect()
}

/// `netdev_add`'s arguments for NIC `dev` whose queues QEMU holds as `fd_names`, as the
/// command line's `-netdev tap,id=netdev-<id>,fds=...,vhost=...`.
pub fn netdev_args(dev: &NetDevice, fd_names: &[String], vhost: bool) -> Value {
    json!({
        "type": "tap",
        "id": format!("netdev-{}", dev.id),
        "fds": fd_names.join(":"),
        "vhost": vhost,
    })
}

/// `device_add`'s properties for NIC `dev` on `bus` (the command line's `virtio-net-pci`).
pub fn virtio_net_props(dev: &NetDevice, bus: &str, addr: Option<u32>) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("netdev".into(), json!(format!("netdev-{}", dev.id)));
    p.insert("mac".into(), json!(dev.mac));
    p.insert("romfile".into(), json!(""));
    p.insert("bus".into(), json!(bus));
    if let Some(addr) = addr {
        p.insert("addr".into(), json!(format!("{addr:#x}")));
    }
    if dev.tap_fds.len() > 1 {
        p.insert("mq".into(), json!(true));
        p.insert("vectors".into(), json!(2 * dev.tap_fds.len() + 2));
    }
    p
}

/// Hot-plugs NIC `dev`: its tap's queues passed to QEMU (`getfd`), `netdev_add`, then
/// `device_add virtio-net-pci` on the lowest free PCIe root port, and its guest PCI path read
/// back. On error nothing of it is left in QEMU or `ports`. A NIC without open queues (an
/// adopted one) cannot be plugged: [`Error::InvalidDevice`].
pub(super) async fn attach_net(
    qmp: &QmpClient,
    c: &HypervisorConfig,
    ports: &mut PortAllocator,
    dev: &NetDevice,
) -> Result<GuestAddress> {
    let refuse = |reason: String| Error::InvalidDevice {
        kind: "network",
        id: format!("{} (tap {})", dev.id, dev.tap_name),
        reason,
    };
    if dev.tap_fds.is_empty() || dev.tap_fds.len() != dev.queues.max(1) as usize {
        return Err(refuse(format!(
            "it has {} queue pairs but {} open tap queues: hot-plug needs one open queue each \
             (kata-resource's network rescan makes them)",
            dev.queues.max(1),
            dev.tap_fds.len()
        )));
    }
    let slot = ports
        .allocate(PciePort::RootPort, &dev.id)?
        .ok_or_else(|| refuse("no free PCIe root port to plug it on (pcie_root_port)".into()))?;
    let names = net_fd_names(dev);
    let netdev = format!("netdev-{}", dev.id);
    let result = async {
        let mut passed = Vec::new();
        let mut r = Ok(());
        for (name, fd) in names.iter().zip(&dev.tap_fds) {
            use std::os::fd::AsFd;
            r = qmp.getfd(name, fd.as_fd()).await;
            if r.is_err() {
                break;
            }
            passed.push(name.clone());
        }
        if r.is_ok() {
            r = qmp
                .execute(
                    "netdev_add",
                    Some(netdev_args(
                        dev,
                        &names,
                        super::cmdline::vhost_net_usable(c),
                    )),
                )
                .await
                .map(drop);
        }
        if let Err(e) = r {
            for name in passed {
                let _ = qmp.closefd(&name).await;
            }
            return Err(e);
        }
        // netdev_add took the queues out of the monitor's list: from here, netdev_del.
        let added = qmp
            .device_add(
                "virtio-net-pci",
                &dev.id,
                virtio_net_props(dev, &slot.bus, slot.addr),
            )
            .await;
        let path = match added {
            Ok(()) => match find_pci_path(qmp, &dev.id, &slot.bus).await {
                Ok(path) => Ok(path),
                Err(e) => {
                    let _ = qmp.device_del(&dev.id, UNPLUG_WAIT).await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        if path.is_err() {
            let _ = qmp
                .execute("netdev_del", Some(json!({ "id": netdev })))
                .await;
        }
        path
    }
    .await;
    match result {
        Ok(path) => {
            tracing::info!(device = %dev.id, tap = %dev.tap_name, port = %slot.bus, %path, "NIC attached");
            Ok(GuestAddress::Pci { path })
        }
        Err(e) => {
            ports.free(&dev.id);
            Err(e)
        }
    }
}

/// Hot-unplugs NIC `id`: `device_del`, the wait for the guest to release it
/// (`DEVICE_DELETED`, at most [`UNPLUG_WAIT`]), then `netdev_del`, which closes QEMU's copies
/// of the tap's queues; its port is freed. A NIC the guest does not release keeps its port.
pub(super) async fn detach_net(qmp: &QmpClient, ports: &mut PortAllocator, id: &str) -> Result<()> {
    qmp.device_del(id, UNPLUG_WAIT).await?;
    let freed = ports.free(id);
    qmp.execute("netdev_del", Some(json!({ "id": format!("netdev-{id}") })))
        .await?;
    tracing::info!(device = %id, port = ?freed.map(|s| s.bus), "NIC detached");
    Ok(())
}

/// Where the guest finds the device `id` (cold-plugged or hot-plugged on a PCI port), from
/// `query-pci`.
pub(super) async fn pci_address(qmp: &QmpClient, id: &str) -> Result<GuestAddress> {
    let pci = qmp.execute("query-pci", None).await?;
    pci_path_of(&pci, id)
        .map(|path| GuestAddress::Pci { path })
        .ok_or_else(|| Error::InvalidDevice {
            kind: "PCI",
            id: id.to_string(),
            reason: "QEMU lists no PCI device with this id (query-pci)".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(read_only: bool) -> BlockDevice {
        BlockDevice {
            id: "blk-c1".into(),
            path: "/var/lib/images/rootfs.ext4".into(),
            read_only,
        }
    }

    #[test]
    fn blockdev_options_honour_read_only_aio_and_cache() {
        let c = HypervisorConfig::default();
        let o = blockdev_options(&c, &dev(true));
        assert_eq!(o["driver"], "raw");
        assert_eq!(o["node-name"], "drive-blk-c1");
        assert_eq!(o["read-only"], true);
        assert_eq!(o["file"]["read-only"], true);
        assert_eq!(o["file"]["driver"], "file");
        assert_eq!(o["file"]["node-name"], "drive-blk-c1-file");
        assert_eq!(o["file"]["filename"], "/var/lib/images/rootfs.ext4");
        assert_eq!(o["file"]["aio"], "io_uring");
        assert_eq!(
            o["file"]["cache"],
            json!({"direct": true, "no-flush": false})
        );
        assert_eq!(blockdev_options(&c, &dev(false))["read-only"], false);

        let c = HypervisorConfig {
            block_device_cache_set: true,
            block_device_cache_direct: false,
            block_device_cache_noflush: true,
            block_device_aio: BlockDeviceAio::Native,
            ..Default::default()
        };
        let o = blockdev_options(&c, &dev(false));
        assert_eq!(
            o["file"]["cache"],
            json!({"direct": false, "no-flush": true})
        );
        assert_eq!(o["file"]["aio"], "threads", "native needs O_DIRECT");
        let c = HypervisorConfig {
            block_device_aio: BlockDeviceAio::Native,
            ..Default::default()
        };
        assert_eq!(blockdev_options(&c, &dev(false))["file"]["aio"], "native");
    }

    #[test]
    fn a_host_block_device_is_opened_with_host_device() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mknod");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk");
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::S_IRUSR,
            nix::sys::stat::makedev(7, 200),
        )
        .unwrap();
        let d = BlockDevice {
            id: "blk-c1".into(),
            path,
            read_only: false,
        };
        let o = blockdev_options(&HypervisorConfig::default(), &d);
        assert_eq!(o["file"]["driver"], "host_device");
    }

    #[test]
    fn device_properties_name_the_node_and_the_place() {
        let p = virtio_blk_props(&dev(false), "rp1", None);
        assert_eq!(
            Value::Object(p),
            json!({"drive": "drive-blk-c1", "bus": "rp1"})
        );
        let p = virtio_blk_props(&dev(false), "pci-bridge0", Some(3));
        assert_eq!(p["addr"], "0x3");
        let p = scsi_hd_props(&dev(false), 0, 2);
        assert_eq!(
            Value::Object(p),
            json!({"drive": "drive-blk-c1", "bus": "scsi0.0", "channel": 0, "scsi-id": 0, "lun": 2})
        );
    }

    #[test]
    fn a_hot_plugged_nic_is_the_command_lines_nic() {
        use std::os::fd::OwnedFd;
        use std::sync::Arc;
        let fds: Vec<Arc<OwnedFd>> = (0..2)
            .map(|_| Arc::new(OwnedFd::from(tempfile::tempfile().unwrap())))
            .collect();
        let mut nic = NetDevice {
            id: "net1".into(),
            tap_name: "tap1_kata".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: None,
            queues: 2,
            tap_fds: fds,
        };
        let names = net_fd_names(&nic);
        assert_eq!(names, ["fd-net1-0", "fd-net1-1"]);
        assert_eq!(
            netdev_args(&nic, &names, true),
            json!({"type": "tap", "id": "netdev-net1", "fds": "fd-net1-0:fd-net1-1", "vhost": true})
        );
        let p = virtio_net_props(&nic, "rp1", None);
        assert_eq!(p["netdev"], "netdev-net1");
        assert_eq!(p["mac"], "02:00:00:00:00:01");
        assert_eq!(p["bus"], "rp1");
        assert_eq!(
            (p["mq"].clone(), p["vectors"].clone()),
            (json!(true), json!(6))
        );
        nic.tap_fds.truncate(1);
        assert!(!virtio_net_props(&nic, "rp1", None).contains_key("mq"));
    }

    #[test]
    fn scsi_addresses_are_handed_out_lowest_first() {
        let at = |target, lun| AttachedBlock {
            device: dev(false),
            node: "n".into(),
            bus: BlockBus::Scsi { target, lun },
        };
        assert_eq!(free_scsi_address(&[]), Some((0, 0)));
        assert_eq!(free_scsi_address(&[at(0, 0), at(0, 2)]), Some((0, 1)));
        let full: Vec<_> = (0..256).map(|l| at(0, l)).collect();
        assert_eq!(free_scsi_address(&full), Some((1, 0)));
    }

    #[test]
    fn pci_path_walks_root_ports() {
        // Bus 0 with a root port in slot 3 whose secondary bus holds the disk in slot 0.
        let q = json!([{
            "bus": 0,
            "devices": [
                {"bus": 0, "slot": 1, "function": 0, "qdev_id": "rng0"},
                {"bus": 0, "slot": 3, "function": 0, "qdev_id": "rp1",
                 "pci_bridge": {"bus": {"number": 2, "secondary": 2, "subordinate": 2},
                   "devices": [{"bus": 2, "slot": 0, "function": 0, "qdev_id": "blk-c1"}]}},
            ]
        }]);
        assert_eq!(pci_path_of(&q, "blk-c1").unwrap().to_string(), "03/00");
        assert_eq!(pci_path_of(&q, "rp1").unwrap().to_string(), "03");
        assert_eq!(pci_path_of(&q, "rng0").unwrap().to_string(), "01");
        assert_eq!(pci_path_of(&q, "missing"), None);
        assert_eq!(pci_path_of(&json!({}), "blk-c1"), None);
    }

    #[test]
    fn vfio_hot_plug_never_targets_the_root_bus() {
        let c = HypervisorConfig::default();
        assert_eq!(c.hot_plug_vfio, PciePort::NoPort);
        assert_eq!(vfio_hotplug_port(&c), PciePort::RootPort);
        let c = HypervisorConfig {
            hot_plug_vfio: PciePort::SwitchPort,
            ..Default::default()
        };
        assert_eq!(vfio_hotplug_port(&c), PciePort::SwitchPort);
        let d = VfioDevice {
            id: "vfio-2-0".into(),
            bdf: "0000:00:02.0".into(),
        };
        assert_eq!(
            Value::Object(vfio_props(&d, "rp1", None)),
            json!({"host": "0000:00:02.0", "bus": "rp1"})
        );
        assert_eq!(vfio_props(&d, "pci-bridge0", Some(2))["addr"], "0x2");
    }

    #[test]
    fn disabled_block_devices_are_refused_naming_the_key() {
        let c = HypervisorConfig {
            disable_block_device_use: true,
            ..Default::default()
        };
        let e = check_enabled(&c, &dev(false)).unwrap_err().to_string();
        assert!(
            e.contains("disable_block_device_use = true") && e.contains("blk-c1"),
            "{e}"
        );
        assert!(!wants_scsi_controller(&c));
        assert!(wants_scsi_controller(&HypervisorConfig::default()));
        let c = HypervisorConfig {
            block_device_driver: BlockDeviceDriver::Nvdimm,
            ..Default::default()
        };
        let e = check_enabled(&c, &dev(false)).unwrap_err().to_string();
        assert!(e.contains("block_device_driver"), "{e}");
    }
}
