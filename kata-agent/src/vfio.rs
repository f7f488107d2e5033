//! VFIO devices of a container (`CreateContainer`'s `devices` of Kata's types `vfio-pci` and
//! `vfio-pci-gk`): each option `"<host_bdf>=<guest_pci_path>"` names one function the VM was
//! given and where the guest finds it (`"0000:00:02.0=02/00"`).
//!
//! The agent waits (bounded, [`DEVICE_WAIT`]) until every function is under
//! `/sys/devices/pci0000:00/...` at its path. With `vfio-pci-gk` (`vfio_mode =
//! "guest-kernel"`) that is all: the guest kernel's driver, or a privileged container, uses it.
//! With `vfio-pci` (`vfio_mode = "vfio"`) each function is bound to the guest's `vfio-pci`
//! (`driver_override`, then `drivers_probe`) and the container gets `/dev/vfio/vfio` and the
//! guest's `/dev/vfio/<group>`. A guest without a (v)IOMMU (kata-rs's guest: QEMU gives it
//! none) drives the function through VFIO's no-IOMMU mode, which the agent turns on: the node
//! is `/dev/vfio/noiommu-<N>`, and the container needs `CAP_SYS_RAWIO` to open it. A guest
//! kernel without `vfio-pci`, or without an IOMMU group for the device and without
//! `CONFIG_VFIO_NOIOMMU`, is refused naming what it lacks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_agent_client::protocol::agent;
use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, Spec};

use crate::error::{AgentError, Result};

/// How long the agent waits for a device the host says it plugged, unless
/// `agent.hotplug_timeout` says otherwise ([`crate::config::Tunables`]).
pub const DEVICE_WAIT: Duration = crate::config::DEFAULT_HOTPLUG_TIMEOUT;
/// How often it looks.
const POLL: Duration = Duration::from_millis(50);

/// Kata's device type of a VFIO PCI function in `vfio` mode.
pub const TYPE_VFIO: &str = "vfio-pci";
/// Kata's device type of a VFIO PCI function in `guest-kernel` mode.
pub const TYPE_VFIO_GK: &str = "vfio-pci-gk";

/// One function of a VFIO device: its host address and its path in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioFunction {
    /// The host's BDF (for messages).
    pub host_bdf: String,
    /// The guest PCI path's slots, root bus first.
    pub slots: Vec<u8>,
}

/// A VFIO device of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioRequest {
    /// Whether the container gets `/dev/vfio` nodes (`vfio-pci`) or not (`vfio-pci-gk`).
    pub vfio_mode: bool,
    /// Where the container sees it (for messages).
    pub container_path: String,
    /// Its functions.
    pub functions: Vec<VfioFunction>,
}

fn parse_slots(s: &str) -> Option<Vec<u8>> {
    let slots = s
        .split('/')
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
                .filter(|v| *v < 32)
        })
        .collect::<Option<Vec<_>>>()?;
    (!slots.is_empty()).then_some(slots)
}

/// The VFIO devices among `devices` (others are left to their own handlers), checked.
pub fn requests(devices: &[agent::Device]) -> Result<Vec<VfioRequest>> {
    let mut out = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let vfio_mode = match d.type_.as_str() {
            TYPE_VFIO => true,
            TYPE_VFIO_GK => false,
            _ => continue,
        };
        if d.options.is_empty() {
            return Err(AgentError::invalid(
                format!("devices[{i}].options"),
                format!("a {} device names its functions as \"<host_bdf>=<guest_pci_path>\"; none given", d.type_),
            ));
        }
        let functions = d
            .options
            .iter()
            .enumerate()
            .map(|(j, o)| {
                let field = format!("devices[{i}].options[{j}]");
                let (bdf, path) = o.split_once('=').ok_or_else(|| {
                    AgentError::invalid(
                        &field,
                        format!("{o:?} is not \"<host_bdf>=<guest_pci_path>\""),
                    )
                })?;
                let slots = parse_slots(path).ok_or_else(|| {
                    AgentError::invalid(&field, format!("{path:?} is not a PCI path (\"02/00\")"))
                })?;
                Ok(VfioFunction {
                    host_bdf: bdf.to_string(),
                    slots,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(VfioRequest {
            vfio_mode,
            container_path: d.container_path.clone(),
            functions,
        });
    }
    Ok(out)
}

/// The sysfs directory of the PCI function at `slots` under `sysfs`, if it is there now (each
/// bridge's secondary bus from its `pci_bus/` entry).
pub fn pci_device_dir(sysfs: &Path, slots: &[u8]) -> Option<PathBuf> {
    let mut dir = sysfs.join("devices/pci0000:00");
    let mut bus = "0000:00".to_string();
    for (i, slot) in slots.iter().enumerate() {
        dir = dir.join(format!("{bus}:{slot:02x}.0"));
        if !dir.is_dir() {
            return None;
        }
        if i + 1 < slots.len() {
            bus = std::fs::read_dir(dir.join("pci_bus"))
                .ok()?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .min()?;
        }
    }
    Some(dir)
}

fn path_string(slots: &[u8]) -> String {
    slots
        .iter()
        .map(|s| format!("{s:02x}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// Waits (at most `wait`) for function `f` of the device at `container_path`; returns its
/// sysfs directory.
pub async fn wait_for(
    sysfs: &Path,
    f: &VfioFunction,
    container_path: &str,
    wait: Duration,
) -> Result<PathBuf> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(dir) = pci_device_dir(sysfs, &f.slots) {
            return Ok(dir);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: format!(
                    "VFIO device {container_path}: host function {} never appeared at guest PCI \
                     path {} (was it plugged on the port the host said?)",
                    f.host_bdf,
                    path_string(&f.slots)
                ),
                seconds: wait.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The guest kernel's switch for VFIO without an IOMMU (`CONFIG_VFIO_NOIOMMU`).
const NOIOMMU_PARAM: &str = "module/vfio/parameters/enable_unsafe_noiommu_mode";

/// The IOMMU group of the function at `dir`, if it has one.
fn iommu_group(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("iommu_group"))
        .ok()
        .map(|t| name_of(&t))
}

/// The name the kernel gives a no-IOMMU group (its sysfs `name`).
const NOIOMMU_GROUP_NAME: &str = "vfio-noiommu";

/// Whether the function at `dir` is in a no-IOMMU group (VFIO made it when the function was
/// bound without an IOMMU: a second container naming a cold-plugged device finds it bound
/// already, so whether it had a group before the bind cannot tell).
fn is_noiommu_group(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("iommu_group/name"))
        .is_ok_and(|n| n.trim() == NOIOMMU_GROUP_NAME)
}

/// Binds the function at `dir` to the guest's `vfio-pci`; returns the name of its group's
/// node under `/dev/vfio`: the group's number, or `noiommu-<N>` when the guest has no
/// (v)IOMMU and the function is driven through VFIO's no-IOMMU mode, which the agent turns on
/// (`vfio.enable_unsafe_noiommu_mode`; the guest kernel is tainted, the host is not: the
/// host's IOMMU still confines the device's DMA to the VM's memory). Binding a function
/// without a group creates its no-IOMMU group; the agent waits for it up to `wait`.
async fn bind_vfio(
    sysfs: &Path,
    dir: &Path,
    f: &VfioFunction,
    container_path: &str,
    wait: Duration,
) -> Result<String> {
    let fail = |reason: String| AgentError::invalid(format!("device {container_path}"), reason);
    let bdf = name_of(dir);
    let driver_dir = sysfs.join("bus/pci/drivers/vfio-pci");
    if !driver_dir.is_dir() {
        return Err(fail(format!(
            "host function {} (guest {bdf}): the guest kernel has no vfio-pci driver \
             (CONFIG_VFIO_PCI); use vfio_mode = \"guest-kernel\" or a guest kernel with VFIO",
            f.host_bdf
        )));
    }
    let write = |p: PathBuf, v: &str| {
        std::fs::write(&p, v).map_err(|e| fail(format!("writing {v:?} to {}: {e}", p.display())))
    };
    let noiommu = iommu_group(dir).is_none();
    if noiommu {
        let param = sysfs.join(NOIOMMU_PARAM);
        if !param.is_file() {
            return Err(fail(format!(
                "host function {} (guest {bdf}) has no IOMMU group in the guest: VFIO in the \
                 guest needs a vIOMMU or CONFIG_VFIO_NOIOMMU; use vfio_mode = \"guest-kernel\"",
                f.host_bdf
            )));
        }
        let on = std::fs::read_to_string(&param).unwrap_or_default();
        if on.trim() != "Y" {
            write(param, "Y")?;
            tracing::warn!(device = %container_path, guest = %bdf,
                "no IOMMU in the guest: VFIO's no-IOMMU mode turned on (the guest kernel is tainted)");
        }
    }
    let current = std::fs::read_link(dir.join("driver"))
        .ok()
        .map(|t| name_of(&t));
    if current.as_deref() != Some("vfio-pci") {
        write(dir.join("driver_override"), "vfio-pci")?;
        if current.is_some() {
            write(dir.join("driver/unbind"), &bdf)?;
        }
        write(sysfs.join("bus/pci/drivers_probe"), &bdf)?;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(g) = iommu_group(dir) {
            return Ok(if noiommu || is_noiommu_group(dir) {
                format!("noiommu-{g}")
            } else {
                g
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(format!(
                "host function {} (guest {bdf}): bound to vfio-pci, but no no-IOMMU group \
                 appeared within {} s (is CONFIG_VFIO_NOIOMMU on?)",
                f.host_bdf,
                wait.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Makes the container's VFIO devices ready (see the [module docs](self)) and, in `vfio`
/// mode, adds their guest nodes to `spec`'s `linux.devices`.
pub async fn prepare(devices: &[agent::Device], spec: &mut Spec) -> Result<()> {
    prepare_in(
        devices,
        spec,
        Path::new("/sys"),
        Path::new("/dev"),
        crate::config::tunables().hotplug_timeout,
    )
    .await
}

/// [`prepare`] with sysfs and /dev elsewhere (tests).
pub async fn prepare_in(
    devices: &[agent::Device],
    spec: &mut Spec,
    sysfs: &Path,
    dev: &Path,
    wait: Duration,
) -> Result<()> {
    // s390x crypto queues (vfio-ap, vfio-ap-cold): waited for on the AP bus.
    crate::vfio_ap::prepare_in(devices, sysfs, wait).await?;
    let requests = requests(devices)?;
    let mut nodes: Vec<PathBuf> = Vec::new();
    for r in &requests {
        for f in &r.functions {
            let dir = wait_for(sysfs, f, &r.container_path, wait).await?;
            tracing::info!(device = %r.container_path, host = %f.host_bdf, guest = %name_of(&dir), "VFIO function present in the guest");
            if r.vfio_mode {
                let group = bind_vfio(sysfs, &dir, f, &r.container_path, wait).await?;
                let node = dev.join("vfio").join(&group);
                let deadline = tokio::time::Instant::now() + wait;
                while !node.exists() {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AgentError::Timeout {
                            what: format!(
                                "VFIO device {}: the guest's {}",
                                r.container_path,
                                node.display()
                            ),
                            seconds: wait.as_secs(),
                        });
                    }
                    tokio::time::sleep(POLL).await;
                }
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
            }
        }
    }
    if nodes.is_empty() {
        return Ok(());
    }
    nodes.insert(0, dev.join("vfio/vfio"));
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut list = linux.devices().clone().unwrap_or_default();
    for node in nodes {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&node)
            .map_err(|e| AgentError::invalid("devices", format!("{}: {e}", node.display())))?;
        let rdev = meta.rdev();
        let in_container = Path::new("/dev").join(node.strip_prefix(dev).unwrap_or(&node));
        list.retain(|d| d.path() != &in_container);
        list.push(
            LinuxDeviceBuilder::default()
                .path(in_container)
                .typ(LinuxDeviceType::C)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(0o666u32)
                .build()
                .map_err(|e| AgentError::invalid("devices", e.to_string()))?,
        );
    }
    // A spec that restricts devices (`linux.resources.devices`) must allow the nodes it gets.
    if let Some(mut res) = linux.resources().clone() {
        if let Some(mut rules) = res.devices().clone() {
            for d in &list {
                if d.path().starts_with("/dev/vfio") {
                    rules.push(
                        LinuxDeviceCgroupBuilder::default()
                            .allow(true)
                            .typ(LinuxDeviceType::C)
                            .major(d.major())
                            .minor(d.minor())
                            .access("rwm")
                            .build()
                            .map_err(|e| AgentError::invalid("devices", e.to_string()))?,
                    );
                }
            }
            res.set_devices(Some(rules));
            linux.set_resources(Some(res));
        }
    }
    linux.set_devices(Some(list));
    spec.set_linux(Some(linux));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(typ: &str, options: &[&str]) -> agent::Device {
        agent::Device {
            id: "2".into(),
            type_: typ.into(),
            container_path: "/dev/vfio/2".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// A guest sysfs with a root port in slot 2 and, behind it on bus 01, the function.
    fn sysfs_with_function(root: &Path) -> PathBuf {
        let port = root.join("devices/pci0000:00/0000:00:02.0");
        std::fs::create_dir_all(port.join("pci_bus/0000:01")).unwrap();
        let f = port.join("0000:01:00.0");
        std::fs::create_dir_all(&f).unwrap();
        f
    }

    #[test]
    fn options_name_host_functions_and_guest_paths() {
        let r = requests(&[
            device("vfio-pci-gk", &["0000:00:02.0=02/00"]),
            device("blk", &[]),
        ])
        .unwrap();
        assert_eq!(r.len(), 1);
        assert!(!r[0].vfio_mode);
        assert_eq!(r[0].functions[0].host_bdf, "0000:00:02.0");
        assert_eq!(r[0].functions[0].slots, vec![2, 0]);
        for bad in [&[][..], &["0000:00:02.0"], &["0000:00:02.0=2/0"], &["x=40"]] {
            let e = requests(&[device("vfio-pci", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("devices[0].options"), "{bad:?}: {e}");
        }
    }

    #[tokio::test]
    async fn guest_kernel_mode_waits_for_the_function_and_changes_no_spec() {
        let tmp = tempfile::tempdir().unwrap();
        sysfs_with_function(tmp.path());
        let mut spec = Spec::default();
        let before = spec.clone();
        prepare_in(
            &[device("vfio-pci-gk", &["0000:00:02.0=02/00"])],
            &mut spec,
            tmp.path(),
            tmp.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert_eq!(spec, before);
        let e = prepare_in(
            &[device("vfio-pci-gk", &["0000:00:02.0=03/00"])],
            &mut spec,
            tmp.path(),
            tmp.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("0000:00:02.0") && e.contains("03/00") && e.contains("/dev/vfio/2"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn vfio_mode_without_vfio_in_the_guest_is_refused_naming_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let f = sysfs_with_function(tmp.path());
        let mut spec = Spec::default();
        let run = |spec: &mut Spec| {
            let mut s = spec.clone();
            let root = tmp.path().to_path_buf();
            async move {
                prepare_in(
                    &[device("vfio-pci", &["0000:00:02.0=02/00"])],
                    &mut s,
                    &root,
                    &root,
                    Duration::from_millis(200),
                )
                .await
                .unwrap_err()
                .to_string()
            }
        };
        let e = run(&mut spec).await;
        assert!(
            e.contains("CONFIG_VFIO_PCI") && e.contains("guest-kernel"),
            "{e}"
        );
        std::fs::create_dir_all(tmp.path().join("bus/pci/drivers/vfio-pci")).unwrap();
        let e = run(&mut spec).await;
        assert!(e.contains("IOMMU group") && e.contains("vIOMMU"), "{e}");
        // With a group, the function is bound through driver_override and drivers_probe.
        let g = tmp.path().join("kernel/iommu_groups/0");
        std::fs::create_dir_all(&g).unwrap();
        std::os::unix::fs::symlink(&g, f.join("iommu_group")).unwrap();
        let e = run(&mut spec).await;
        assert!(e.contains("vfio/0"), "waits for the guest's node: {e}");
        assert_eq!(
            std::fs::read_to_string(f.join("driver_override")).unwrap(),
            "vfio-pci"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("bus/pci/drivers_probe")).unwrap(),
            "0000:01:00.0"
        );
        // Once the guest's nodes are there (here: /dev/null standing in for them), the
        // container gets them, and a spec restricting devices allows them.
        let vfio_dir = tmp.path().join("vfio");
        std::fs::create_dir_all(&vfio_dir).unwrap();
        std::os::unix::fs::symlink("/dev/null", vfio_dir.join("0")).unwrap();
        std::os::unix::fs::symlink("/dev/null", vfio_dir.join("vfio")).unwrap();
        let mut spec = Spec::default();
        prepare_in(
            &[device("vfio-pci", &["0000:00:02.0=02/00"])],
            &mut spec,
            tmp.path(),
            tmp.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let paths: Vec<_> = linux
            .devices()
            .iter()
            .flatten()
            .map(|d| (d.path().display().to_string(), d.major(), d.minor()))
            .collect();
        assert_eq!(
            paths,
            [
                ("/dev/vfio/vfio".to_string(), 1, 3),
                ("/dev/vfio/0".to_string(), 1, 3)
            ]
        );
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3)),
            "{rules:?}"
        );
    }

    /// Makes `path` (relative to `root`) a directory with `bus` as its `pci_bus/` entry.
    fn bridge(root: &Path, path: &str, bus: &str) -> PathBuf {
        let dir = root.join(path);
        std::fs::create_dir_all(dir.join("pci_bus").join(bus)).unwrap();
        dir
    }

    #[tokio::test]
    async fn multi_hop_paths_behind_a_switch_and_a_bridge_are_followed() {
        // Issue 12's switch and bridge ports, as the lab's L2 has them: a root port in slot 3,
        // the switch's upstream port on bus 01, two downstream ports on bus 02 (the function
        // behind the first, on bus 03; the second, on bus 04, a decoy); and a PCIe-to-PCI
        // bridge in slot 5 (bus 05) with the function in slot 1 and another device in slot 0.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let d = "devices/pci0000:00/0000:00:03.0";
        bridge(root, d, "0000:01");
        let up = format!("{d}/0000:01:00.0");
        bridge(root, &up, "0000:02");
        let down = format!("{up}/0000:02:00.0");
        bridge(root, &down, "0000:03");
        bridge(root, &format!("{up}/0000:02:01.0"), "0000:04");
        let behind_switch = root.join(format!("{down}/0000:03:00.0"));
        std::fs::create_dir_all(&behind_switch).unwrap();
        std::fs::create_dir_all(root.join(format!("{up}/0000:02:01.0/0000:04:00.0"))).unwrap();
        let b = "devices/pci0000:00/0000:00:05.0";
        bridge(root, b, "0000:05");
        let on_bridge = root.join(format!("{b}/0000:05:01.0"));
        std::fs::create_dir_all(&on_bridge).unwrap();
        std::fs::create_dir_all(root.join(format!("{b}/0000:05:00.0"))).unwrap();

        assert_eq!(
            pci_device_dir(root, &[3, 0, 0, 0]),
            Some(behind_switch.clone())
        );
        assert_eq!(pci_device_dir(root, &[5, 1]), Some(on_bridge.clone()));
        // A slot the topology does not have is not found (the agent's wait then names it).
        assert_eq!(pci_device_dir(root, &[3, 0, 2, 0]), None);
        assert_eq!(pci_device_dir(root, &[5, 2]), None);

        // `vfio` mode binds the function at the end of the path, not a bridge on the way.
        std::fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).unwrap();
        for (f, path, bdf, group) in [
            (&behind_switch, "03/00/00/00", "0000:03:00.0", "7"),
            (&on_bridge, "05/01", "0000:05:01.0", "9"),
        ] {
            let g = root.join(format!("kernel/iommu_groups/{group}"));
            std::fs::create_dir_all(&g).unwrap();
            std::os::unix::fs::symlink(&g, f.join("iommu_group")).unwrap();
            let vfio = root.join("vfio");
            std::fs::create_dir_all(&vfio).unwrap();
            let _ = std::os::unix::fs::symlink("/dev/null", vfio.join("vfio"));
            std::os::unix::fs::symlink("/dev/null", vfio.join(group)).unwrap();
            let mut spec = Spec::default();
            prepare_in(
                &[device("vfio-pci", &[&format!("0000:00:02.0={path}")])],
                &mut spec,
                root,
                root,
                Duration::from_millis(500),
            )
            .await
            .unwrap();
            assert_eq!(
                std::fs::read_to_string(f.join("driver_override")).unwrap(),
                "vfio-pci",
                "{path}"
            );
            assert_eq!(
                std::fs::read_to_string(root.join("bus/pci/drivers_probe")).unwrap(),
                bdf
            );
            let nodes: Vec<_> = spec
                .linux()
                .as_ref()
                .unwrap()
                .devices()
                .iter()
                .flatten()
                .map(|d| d.path().display().to_string())
                .collect();
            assert_eq!(
                nodes,
                ["/dev/vfio/vfio".to_string(), format!("/dev/vfio/{group}")]
            );
        }
        for bridge_dir in [root.join(d), root.join(&up), root.join(&down), root.join(b)] {
            assert!(
                !bridge_dir.join("driver_override").exists(),
                "{}",
                bridge_dir.display()
            );
        }
    }

    #[tokio::test]
    async fn a_function_already_bound_in_a_noiommu_group_keeps_its_noiommu_node() {
        // A second container naming a cold-plugged device in `vfio` mode: the first one's
        // prepare bound it to vfio-pci, and VFIO made its no-IOMMU group (sysfs name
        // "vfio-noiommu", node /dev/vfio/noiommu-0; there is no /dev/vfio/0). The lab saw the
        // agent wait for /dev/vfio/0 until CreateContainer timed out.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let f = sysfs_with_function(root);
        let drv = root.join("bus/pci/drivers/vfio-pci");
        std::fs::create_dir_all(&drv).unwrap();
        std::os::unix::fs::symlink(&drv, f.join("driver")).unwrap();
        let g = root.join("kernel/iommu_groups/0");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("name"), "vfio-noiommu\n").unwrap();
        std::os::unix::fs::symlink(&g, f.join("iommu_group")).unwrap();
        let param = root.join(NOIOMMU_PARAM);
        std::fs::create_dir_all(param.parent().unwrap()).unwrap();
        std::fs::write(&param, "Y\n").unwrap();
        let vfio = root.join("vfio");
        std::fs::create_dir_all(&vfio).unwrap();
        std::os::unix::fs::symlink("/dev/null", vfio.join("noiommu-0")).unwrap();
        std::os::unix::fs::symlink("/dev/null", vfio.join("vfio")).unwrap();
        let mut spec = Spec::default();
        prepare_in(
            &[device("vfio-pci", &["0000:00:02.0=02/00"])],
            &mut spec,
            root,
            root,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let nodes: Vec<_> = spec
            .linux()
            .as_ref()
            .unwrap()
            .devices()
            .iter()
            .flatten()
            .map(|d| d.path().display().to_string())
            .collect();
        assert_eq!(nodes, ["/dev/vfio/vfio", "/dev/vfio/noiommu-0"]);
        // Bound already: not probed again.
        assert!(!root.join("bus/pci/drivers_probe").exists());
        // A real IOMMU group of a bound function is still its number.
        std::fs::write(g.join("name"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", vfio.join("0")).unwrap();
        let mut spec = Spec::default();
        prepare_in(
            &[device("vfio-pci", &["0000:00:02.0=02/00"])],
            &mut spec,
            root,
            root,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let last = spec.linux().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(last[1].path(), Path::new("/dev/vfio/0"));
    }

    #[tokio::test]
    async fn vfio_mode_without_an_iommu_binds_through_noiommu_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let f = sysfs_with_function(&root);
        std::fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).unwrap();
        let param = root.join(NOIOMMU_PARAM);
        std::fs::create_dir_all(param.parent().unwrap()).unwrap();
        std::fs::write(&param, "N\n").unwrap();
        // The "kernel": once drivers_probe names the function, it gets a no-IOMMU group 0 and
        // the guest has /dev/vfio/noiommu-0 (here: /dev/null standing in for the nodes).
        let kernel = {
            let root = root.clone();
            let f = f.clone();
            tokio::spawn(async move {
                let probe = root.join("bus/pci/drivers_probe");
                while std::fs::read_to_string(&probe).unwrap_or_default() != "0000:01:00.0" {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let g = root.join("kernel/iommu_groups/0");
                std::fs::create_dir_all(&g).unwrap();
                std::os::unix::fs::symlink(&g, f.join("iommu_group")).unwrap();
                let vfio = root.join("vfio");
                std::fs::create_dir_all(&vfio).unwrap();
                std::os::unix::fs::symlink("/dev/null", vfio.join("noiommu-0")).unwrap();
                std::os::unix::fs::symlink("/dev/null", vfio.join("vfio")).unwrap();
            })
        };
        let mut spec = Spec::default();
        prepare_in(
            &[device("vfio-pci", &["0000:00:02.0=02/00"])],
            &mut spec,
            &root,
            &root,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        kernel.await.unwrap();
        assert_eq!(std::fs::read_to_string(&param).unwrap(), "Y");
        assert_eq!(
            std::fs::read_to_string(f.join("driver_override")).unwrap(),
            "vfio-pci"
        );
        let paths: Vec<_> = spec
            .linux()
            .as_ref()
            .unwrap()
            .devices()
            .iter()
            .flatten()
            .map(|d| d.path().display().to_string())
            .collect();
        assert_eq!(paths, ["/dev/vfio/vfio", "/dev/vfio/noiommu-0"]);
    }
}
