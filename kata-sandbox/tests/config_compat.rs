//! Files in Kata's published format (keys as Kata documents them, values as Kata's packages
//! render them) load, and their values land in kata-rs' types.

use std::path::PathBuf;

use kata_hypervisor::PciePort;
use kata_sandbox::config::{ConfigLoader, HypervisorType, LoadedConfig};

fn load(text: &str) -> LoadedConfig {
    let d = tempfile::tempdir().unwrap();
    let path: PathBuf = d.path().join("configuration.toml");
    std::fs::write(&path, text).unwrap();
    ConfigLoader::new()
        .env_file(None)
        .path(&path)
        .load()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Kata runtime-rs' QEMU file as `make install` renders it under /opt/kata.
const KATA_QEMU_RUNTIME_RS: &str = r#"
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinux.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
machine_type = "q35"
rootfs_type="ext4"
vm_rootfs_driver = "virtio-blk-pci"
enable_annotations = ["enable_iommu", "virtio_fs_extra_args", "kernel_params"]
valid_hypervisor_paths = ["/opt/kata/bin/qemu-system-x86_64"]
kernel_params = ""
firmware = ""
firmware_volume = ""
machine_accelerators=""
cpu_features="pmu=off"
default_vcpus = 1
default_maxvcpus = 0
default_bridges = 1
default_memory = 2048
default_maxmemory = 0
disable_block_device_use = false
shared_fs = "virtio-fs"
virtio_fs_daemon = "/opt/kata/libexec/virtiofsd"
valid_virtio_fs_daemon_paths = ["/opt/kata/libexec/virtiofsd"]
virtio_fs_cache_size = 0
virtio_fs_queue_size = 1024
virtio_fs_extra_args = ["--thread-pool-size=1", "--announce-submounts"]
virtio_fs_cache = "auto"
block_device_driver = "virtio-scsi"
block_device_aio = "io_uring"
enable_iothreads = false
enable_vhost_user_store = false
vhost_user_store_path = "/var/run/kata-containers/vhost-user"
valid_vhost_user_store_paths = ["/var/run/kata-containers/vhost-user"]
vhost_user_reconnect_timeout_sec = 0
valid_file_mem_backends = [""]
pflashes = []
valid_entropy_sources = ["/dev/urandom","/dev/random",""]
disable_selinux=false
disable_guest_selinux=true
cold_plug_vfio = "root-port"
pcie_root_port = 2
#hot_plug_vfio = "root-port"

[factory]
#enable_template = true

[agent.kata]
kernel_modules=[]
#dial_timeout_ms = 10
#reconnect_timeout_ms = 3000
create_container_timeout = 30

[agent.kata.mem_agent]
#mem_agent_enable = true
memcg_swappiness_max = 50
compact_order = 9

[runtime]
internetworking_model="tcfilter"
name="virt_container"
hypervisor_name="qemu"
agent_name="kata"
disable_guest_seccomp=true
sandbox_cgroup_only=false
static_sandbox_resource_mgmt=false
sandbox_bind_mounts=[]
vfio_mode="guest-kernel"
disable_guest_empty_dir=false
experimental=[]
"#;

#[test]
fn katas_runtime_rs_qemu_file() {
    let loaded = load(KATA_QEMU_RUNTIME_RS);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let (name, kind, hv) = loaded.config.active_hypervisor().unwrap();
    assert_eq!((name, kind), ("qemu", HypervisorType::Qemu));
    assert_eq!(hv.path, "/opt/kata/bin/qemu-system-x86_64");
    assert_eq!(
        hv.kernel,
        "/opt/kata/share/kata-containers/vmlinux.container"
    );
    assert_eq!(
        hv.image,
        "/opt/kata/share/kata-containers/kata-containers.img"
    );
    assert_eq!(hv.cold_plug_vfio, PciePort::RootPort);
    assert_eq!(hv.hot_plug_vfio, PciePort::NoPort);
    assert_eq!(hv.pcie_root_port, 2);
    assert_eq!(hv.cpu_features, "pmu=off");
    assert_eq!(hv.shared_fs.as_str(), "virtio-fs");
    assert_eq!(hv.virtio_fs_cache.as_str(), "auto");
    assert_eq!(
        hv.virtio_fs_extra_args,
        ["--thread-pool-size=1", "--announce-submounts"]
    );
    assert_eq!(hv.block_device_aio.as_str(), "io_uring");
    assert_eq!(hv.valid_entropy_sources.len(), 3);
    let agent = loaded.config.active_agent();
    assert_eq!(agent.create_container_timeout, 30);
    assert_eq!(agent.mem_agent.memcg_swappiness_max, Some(50));
    assert_eq!(agent.mem_agent.compact_order, Some(9));
    assert_eq!(agent.reconnect_timeout_ms, 3000, "Kata's default");
    assert_eq!(loaded.config.runtime.vfio_mode, "guest-kernel");
    assert!(loaded.config.runtime.disable_guest_seccomp);
    // Host paths are Kata's: checked only when a sandbox is built here.
    assert!(!loaded.check_host_paths().is_empty());
}

#[test]
fn hot_plug_vfio_and_the_go_runtimes_spellings() {
    let loaded = load(
        r#"
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
machine_type = "q35"
hot_plug_vfio = "root-port"
pcie_root_port = 4
seccompsandbox = "on,obsolete=deny"
dbg_monitor_socket = "hmp"
enable_debug = true
hypervisor_loglevel = 1
shared_fs = "virtio-9p"

[agent.kata]
dial_timeout = 45

[runtime]
enable_debug = true
internetworking_model = "macvtap"
enable_pprof = true
create_container_timeout = 60
"#,
    );
    let hv = &loaded.config.hypervisor["qemu"];
    assert_eq!(hv.hot_plug_vfio, PciePort::RootPort);
    assert_eq!(hv.cold_plug_vfio, PciePort::NoPort);
    assert_eq!(hv.pcie_root_port, 4);
    assert_eq!(hv.seccomp_sandbox, "on,obsolete=deny");
    assert_eq!(hv.extra_monitor_socket, "hmp");
    let agent = loaded.config.active_agent();
    assert_eq!(agent.dial_timeout, Some(45));
    assert_eq!(agent.connect_options().dial_timeout.as_secs(), 45);
    assert_eq!(loaded.config.runtime.internetworking_model, "macvtap");
    assert!(loaded.config.runtime.enable_pprof);
    // Keys only the Go runtime has are reported, not refused.
    let w = loaded.warnings.join(" ");
    assert!(w.contains("hypervisor.qemu.hypervisor_loglevel"), "{w}");
    assert!(w.contains("runtime.create_container_timeout"), "{w}");
    assert!(
        !w.contains("seccompsandbox") && !w.contains("dbg_monitor_socket"),
        "{w}"
    );
}

#[test]
fn switch_and_bridge_ports() {
    for (text, cold, hot) in [
        (
            "cold_plug_vfio = \"switch-port\"\npcie_switch_port = 2",
            PciePort::SwitchPort,
            PciePort::NoPort,
        ),
        (
            "hot_plug_vfio = \"bridge-port\"",
            PciePort::NoPort,
            PciePort::BridgePort,
        ),
        (
            "cold_plug_vfio = \"no-port\"\nhot_plug_vfio = \"no-port\"",
            PciePort::NoPort,
            PciePort::NoPort,
        ),
    ] {
        let loaded = load(&format!(
            "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\n{text}\n"
        ));
        let hv = &loaded.config.hypervisor["qemu"];
        assert_eq!((hv.cold_plug_vfio, hv.hot_plug_vfio), (cold, hot), "{text}");
    }
}

#[test]
fn katas_dragonball_firecracker_clh_and_remote_files() {
    let db = load(
        r#"
[hypervisor.dragonball]
path = "/opt/kata/bin/dragonball"
ctlpath = ""
kernel = "/opt/kata/share/kata-containers/vmlinux.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
rootfs_type="ext4"
enable_annotations = ["enable_iommu", "virtio_fs_extra_args", "kernel_params"]
valid_hypervisor_paths = ["/opt/kata/bin/dragonball"]
kernel_params = ""
firmware = ""
default_vcpus = 1
default_maxvcpus = 0
default_bridges = 1
default_memory = 2048
block_device_driver = "virtio-blk-mmio"
shared_fs = "inline-virtio-fs"
virtio_fs_cache_size = 0
virtio_fs_extra_args = ["--thread-pool-size=1", "--announce-submounts"]
virtio_fs_cache = "auto"

[agent.kata]
container_pipe_size=1
dial_timeout = 60

[runtime]
internetworking_model="tcfilter"
name="virt_container"
hypervisor_name="dragonball"
agent_name="kata"
disable_guest_seccomp=true
sandbox_cgroup_only=false
experimental=[]
static_sandbox_resource_mgmt=false
"#,
    );
    let (_, kind, hv) = db.config.active_hypervisor().unwrap();
    assert_eq!(kind, HypervisorType::Dragonball);
    assert_eq!(hv.shared_fs.as_str(), "inline-virtio-fs");
    assert_eq!(db.config.active_agent().container_pipe_size, 1);

    let fc = load(
        r#"
[hypervisor.firecracker]
path = "/opt/kata/bin/firecracker"
kernel = "/opt/kata/share/kata-containers/vmlinux.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
rootfs_type = "ext4"
jailer_path = "/opt/kata/bin/jailer"
valid_jailer_paths = ["/opt/kata/bin/jailer"]
default_vcpus = 1
default_memory = 2048
memory_slots = 10
block_device_driver = "virtio-blk-mmio"
disk_rate_limiter_bw_max_rate = 0
rx_rate_limiter_max_rate = 1000000
queue_size = 128
num_queues = 1
network_queues = 1
disable_selinux = false

[agent.kata]
dial_timeout_ms = 45000
cdh_api_timeout_ms = 50000

[runtime]
hypervisor_name = "firecracker"
internetworking_model = "tcfilter"
"#,
    );
    let (_, kind, hv) = fc.config.active_hypervisor().unwrap();
    assert_eq!(kind, HypervisorType::Firecracker);
    assert_eq!(hv.jailer_path, "/opt/kata/bin/jailer");
    assert_eq!(hv.shared_fs.as_str(), "none", "Firecracker's default");
    assert_eq!(hv.rx_rate_limiter_max_rate, 1_000_000);
    assert!(fc.warnings.is_empty(), "{:?}", fc.warnings);

    for section in ["clh", "cloud-hypervisor"] {
        let clh = load(&format!(
            "[hypervisor.{section}]\npath = \"/opt/kata/bin/cloud-hypervisor\"\nshared_fs = \"virtio-fs\"\nvirtio_fs_daemon = \"/opt/kata/libexec/virtiofsd\"\nvalid_ctlpaths = []\ndisable_seccomp = false\n[runtime]\nhypervisor_name = \"{section}\"\n"
        ));
        let (_, kind, hv) = clh.config.active_hypervisor().unwrap();
        assert_eq!(kind, HypervisorType::CloudHypervisor);
        assert_eq!(hv.block_device_driver.as_str(), "virtio-blk-pci");
    }

    let remote = load(
        r#"
[hypervisor.remote]
remote_hypervisor_socket = "/run/peerpod/hypervisor.sock"
remote_hypervisor_timeout = 600
enable_annotations = ["machine_type", "default_memory", "default_vcpus", "default_gpus", "default_gpu_model", "cc_init_data"]
kernel_params = ""
default_vcpus = 1
default_memory = 2048
disable_guest_selinux = true

[agent.kata]
dial_timeout_ms = 30000

[runtime]
internetworking_model = "none"
name = "virt_container"
hypervisor_name = "remote"
agent_name = "kata"
disable_guest_seccomp = true
disable_new_netns = false
static_sandbox_resource_mgmt = true
vfio_mode = "guest-kernel"
emptydir_mode = "shared-fs"
enable_pprof = false
dan_conf = "/run/kata-containers/dans"
"#,
    );
    let (_, kind, hv) = remote.config.active_hypervisor().unwrap();
    assert_eq!(kind, HypervisorType::Remote);
    assert_eq!(hv.remote_hypervisor_timeout, 600);
    assert_eq!(hv.enable_annotations.len(), 6);
    assert!(remote.warnings.is_empty(), "{:?}", remote.warnings);
}

#[test]
fn katas_confidential_files() {
    let tdx = load(
        r#"
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinuz-confidential.container"
image = "/opt/kata/share/kata-containers/kata-containers-confidential.img"
machine_type = "q35"
tdx_quote_generation_service_socket_port = 0
vm_rootfs_driver = "virtio-blk-pci"
confidential_guest = true
firmware = "/opt/kata/share/ovmf/OVMF.inteltdx.fd"
kernel_verity_params = "root_hash=abc,salt=def,data_blocks=1024,data_block_size=4096,hash_block_size=4096"
shared_fs = "none"
disable_image_nvdimm = true
seccomp_sandbox = ""
indep_iothreads = 0

[runtime]
static_sandbox_resource_mgmt = true
experimental = ["force_guest_pull"]
"#,
    );
    let hv = &tdx.config.hypervisor["qemu"];
    assert!(hv.confidential_guest);
    assert_eq!(hv.tdx_quote_generation_service_socket_port, 0);
    assert!(hv.kernel_verity_params.contains("root_hash=abc"));
    assert_eq!(tdx.config.runtime.experimental, ["force_guest_pull"]);

    let snp = load(
        r#"
[hypervisor.qemu]
machine_type = "q35"
confidential_guest = true
sev_snp_guest = true
snp_guest_policy = 0x30000
firmware = "/opt/kata/share/ovmf/AMDSEV.fd"
shared_fs = "none"

[runtime]
static_sandbox_resource_mgmt = true
"#,
    );
    let hv = &snp.config.hypervisor["qemu"];
    assert!(hv.sev_snp_guest);
    assert_eq!(hv.snp_guest_policy, 0x30000);

    let se = load(
        r#"
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-s390x"
kernel = "/opt/kata/share/kata-containers/kata-containers-se.img"
machine_type = "s390-ccw-virtio"
vm_rootfs_driver = "virtio-blk-ccw"
block_device_driver = "virtio-blk-ccw"
confidential_guest = true
disable_vhost_net = true
shared_fs = "none"

[runtime]
static_sandbox_resource_mgmt = true
"#,
    );
    let hv = &se.config.hypervisor["qemu"];
    assert_eq!(hv.machine_type, "s390-ccw-virtio");
    assert!(hv.disable_vhost_net);
}

#[test]
fn katas_number_forms_for_vcpus() {
    let host = std::thread::available_parallelism().unwrap().get() as u32;
    for (value, expected) in [("-1", host), ("0", 1), ("0.5", 1), ("1", 1)] {
        let loaded = load(&format!(
            "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\ndefault_vcpus = {value}\n"
        ));
        assert_eq!(
            loaded.config.hypervisor["qemu"].default_vcpus, expected,
            "default_vcpus = {value}"
        );
    }
}

#[test]
fn a_kata_file_with_kata_paths_is_refused_by_the_builder_with_the_path() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("configuration.toml");
    std::fs::write(&path, KATA_QEMU_RUNTIME_RS).unwrap();
    let e = kata_sandbox::SandboxBuilder::from_config_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("/opt/kata/"),
        "{e}"
    );
}
