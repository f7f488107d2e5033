//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`: valid
//! inputs of each format (built with the same writers the tests use) and a few near misses, so
//! a fuzzer starts from the formats' shapes. Run it after changing a format:
//! `cargo run -p kata-fuzz --example seeds`.

use std::path::Path;

use kata_agent_client::protobuf::Message;
use kata_agent_client::protocol::{agent as pb, health, oci as grpc_oci};
use kata_testkit::image::layout::{gzip, ImageSpec, IndexEntry, LayoutWriter, TarBuilder};
use tar::EntryType;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, data: &[u8]| -> anyhow::Result<()> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), data)?;
        Ok(())
    };

    // --- image_layer ---
    let mut tar = TarBuilder::new();
    tar.dir("etc", 0o755, 0, 0)
        .file("etc/passwd", 0o644, 0, 0, b"root:x:0:0::/root:/bin/sh\n")
        .file("bin/tool", 0o4755, 0, 0, b"#!/bin/sh\n")
        .symlink("bin/sh", "/bin/busybox")
        .hardlink("bin/hard", "bin/tool")
        .raw(EntryType::Fifo, b"run/fifo", b"", b"")
        .raw(EntryType::Char, b"dev/null", b"", b"");
    let base = tar.finish();
    write("image_layer", "base", &base)?;
    write("image_layer", "base-gzip", &gzip(&base))?;
    let mut tar = TarBuilder::new();
    tar.dir("var/lib", 0o755, 0, 0)
        .file("etc/.wh.passwd", 0o644, 0, 0, b"")
        .file("var/.wh..wh..opq", 0o644, 0, 0, b"")
        .symlink("abs", "/etc")
        .file("abs/inside", 0o644, 0, 0, b"x");
    write("image_layer", "whiteouts", &tar.finish())?;
    let escapes: [(&str, EntryType, &[u8], &[u8]); 4] = [
        ("dotdot", EntryType::Regular, b"../outside", b""),
        ("absolute", EntryType::Regular, b"/outside", b""),
        (
            "hardlink-out",
            EntryType::Link,
            b"hard-out",
            b"../../etc/shadow",
        ),
        ("whiteout-out", EntryType::Regular, b"../.wh.outside", b""),
    ];
    for (name, kind, path, link) in escapes {
        let mut tar = TarBuilder::new();
        tar.raw(kind, path, link, b"x");
        write("image_layer", name, &tar.finish())?;
    }
    let mut tar = TarBuilder::new();
    tar.symlink("up", "../../..")
        .file("up/escape", 0o644, 0, 0, b"x");
    write("image_layer", "symlink-out", &tar.finish())?;

    // --- image_layout ---
    let mut layer = TarBuilder::new();
    layer.file("hello", 0o644, 0, 0, b"hello\n");
    let spec = ImageSpec {
        layers: vec![layer.finish()],
        cmd: vec!["/hello".into()],
        ..Default::default()
    };
    for (name, gz) in [("plain", false), ("gzip", true)] {
        let mut writer = LayoutWriter::new();
        let added = writer.add_image(&ImageSpec {
            gzip: gz,
            ..spec.clone()
        });
        writer.add_index_entry(IndexEntry::new(&added.manifest, &[]));
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("image.tar");
        writer.write_tar(&file, gz)?;
        write("image_layout", name, &std::fs::read(&file)?)?;
    }

    // --- spec_json, spec_grpc ---
    let spec = oci_spec::runtime::Spec::default();
    write("spec_json", "default", &serde_json::to_vec_pretty(&spec)?)?;
    let wire = kata_agent_client::spec::to_grpc(&spec)?;
    write("spec_grpc", "default", &wire.write_to_bytes()?)?;
    let mut odd = grpc_oci::Spec::new();
    odd.Hostname = "web".into();
    let mut process = grpc_oci::Process::new();
    process.Args = vec!["sh".into()];
    process.Rlimits.push(grpc_oci::POSIXRlimit {
        Type: "RLIMIT_NOFILE".into(),
        Hard: 1024,
        Soft: 1024,
        ..Default::default()
    });
    odd.Process = Some(process).into();
    write("spec_grpc", "rlimits", &odd.write_to_bytes()?)?;

    // --- annotations ---
    write(
        "annotations",
        "hypervisor",
        b"hypervisor.default_vcpus=2\nhypervisor.default_memory=1024M\nhypervisor.path=/usr/bin/qemu-system-x86_64\nhypervisor.enable_iommu=true\nhypervisor.kernel_params=quiet debug\nruntime.experimental=a,b\nagent.kernel_modules=e1000e a=b;nvme\nhypervisor.default_memory=99999999999999999999\nhypervisor.path=/usr/bin/qemu-system-x/../../../tmp/q\n",
    )?;

    // --- config_toml ---
    let qemu = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/configuration-qemu-runtime-rs.toml"),
    )?;
    write("config_toml", "qemu", qemu.as_bytes())?;
    write(
        "config_toml",
        "drop-ins",
        format!(
            "[hypervisor.qemu]\nshared_fs = \"virtio-9p\"\n{}[hypervisor.qemu]\ndefault_vcpus = 4\n{}[runtime]\nenable_debug = true\n{}[hypervisor.qemu]\ndefault_memory = \"x\"\n",
            kata_fuzz::config::DROP_IN_SEPARATOR,
            kata_fuzz::config::DROP_IN_SEPARATOR,
            kata_fuzz::config::DROP_IN_SEPARATOR
        )
        .as_bytes(),
    )?;

    // --- path_globs ---
    write(
        "path_globs",
        "lists",
        b"/usr/bin/qemu-system-*,/opt/kata/bin/[a-z]?,/usr/lib/qemu/virtiofsd\n/usr/bin/qemu-system-x86_64\n/usr/bin//./qemu-system-x\n/usr/bin/qemu-system-x/../../../tmp/q\n/opt/kata/bin/ab\nusr/bin/qemu-system-x\n/usr/lib/qemu/virtiofsd/\n",
    )?;

    // --- state_json ---
    write(
        "state_json",
        "qemu-section",
        br#"{"backend":"qemu","vm_dir":"/run/kata/vm","agent_address":null,"backend_state":{"qemu_pid":10,"vsock_backend_pid":11,"qmp_socket":"/run/kata/vm/qmp.sock","accelerator":"tcg","ports":[]}}"#,
    )?;
    let config = kata_sandbox::SandboxBuilder::new().id("sb").finish()?;
    let qemu_state = serde_json::json!({
        "backend": "qemu", "vm_dir": "/run/kata/sb/vm", "agent_address": null,
        "backend_state": {"qemu_pid": 10, "vsock_backend_pid": 11}
    });
    let state = serde_json::json!({
        "version": kata_sandbox::persist::STATE_VERSION,
        "id": "sb",
        "dir": "/run/kata/sb",
        "config": config,
        "handler": {"kind": "virt_container", "state": {"vm": qemu_state, "resources": null}},
        "containers": {"c1": {"processes": {"c1": {"terminal": false, "stdin": true}}, "metadata": {"bundle": "/b"}, "started": true}}
    });
    write("state_json", "sandbox", &serde_json::to_vec_pretty(&state)?)?;

    // --- qmp_reply ---
    write(
        "qmp_reply",
        "session",
        br#"{"QMP":{"version":{"qemu":{"micro":0,"minor":2,"major":8},"package":""},"capabilities":[]}}
{"return":{}}
{"return":{"status":"running","running":true}}
{"return":[{"bus":0,"devices":[{"bus":0,"slot":1,"function":0,"qdev_id":"rp0","id":{"vendor":6966,"device":12},"pci_bridge":{"bus":{"secondary":1},"devices":[{"bus":1,"slot":0,"function":0,"qdev_id":"vsock0","id":{"vendor":6900,"device":4179}}]}}]}]}
{"event":"DEVICE_DELETED","data":{"device":"dev0"}}
{"return":[{"type":"host-x86_64-cpu","props":{"socket-id":1,"core-id":0,"thread-id":0},"qom-path":"/machine/peripheral/cpu-1"}]}
{"return":[{"type":"dimm","data":{"id":"dimm0","size":134217728,"hotpluggable":true}}]}
{"return":[{"node-name":"drive0","file":"/img"}]}
{"return":{"started":true,"status":{"statuses":["VIRTIO_CONFIG_S_DRIVER_OK"]}}}
{"error":{"class":"GenericError","desc":"no device"}}
"#,
    )?;

    // --- hybrid_handshake ---
    for (name, answer) in [
        ("ok", &b"OK 1073741824\n"[..]),
        ("ok-crlf-and-rest", b"OK 5\r\n\x00\x00\x00\x10ttrpc"),
        ("refused", b"ERR no listener\n"),
        ("partial", b"OK 12"),
        ("long", &[b'O'; 100][..]),
    ] {
        write("hybrid_handshake", name, answer)?;
    }

    // --- agent_reply ---
    let kinds = kata_agent_client::api::fuzzing::REPLY_KINDS;
    fn reply_of<M: Message>(kinds: &[&str], kind: &str, msg: &M) -> anyhow::Result<Vec<u8>> {
        let i = kinds.iter().position(|k| *k == kind).expect("a reply kind");
        let mut out = vec![i as u8];
        out.extend(msg.write_to_bytes()?);
        Ok(out)
    }
    macro_rules! reply {
        ($kind:expr, $msg:expr) => {
            reply_of(kinds, $kind, $msg)
        };
    }
    let wait = pb::WaitProcessResponse {
        status: 137,
        signal: Some(9),
        ..Default::default()
    };
    write("agent_reply", "wait", &reply!("WaitProcess", &wait)?)?;
    let bad_signal = pb::WaitProcessResponse {
        status: 0,
        signal: Some(99),
        ..Default::default()
    };
    write(
        "agent_reply",
        "wait-bad-signal",
        &reply!("WaitProcess", &bad_signal)?,
    )?;
    let mut details = pb::GuestDetailsResponse::new();
    details.mem_block_size_bytes = 128 << 20;
    write(
        "agent_reply",
        "details",
        &reply!("GetGuestDetails", &details)?,
    )?;
    let mut version = health::VersionCheckResponse::new();
    version.agent_version = "3.0".into();
    write(
        "agent_reply",
        "version",
        &reply!("Health.Version", &version)?,
    )?;
    let mut pids = pb::ListProcessesResponse::new();
    pids.process_list = b"[1, 2, 3]".to_vec();
    write("agent_reply", "pids", &reply!("ListProcesses", &pids)?)?;
    let mut out = pb::ReadStreamResponse::new();
    out.data = b"hello\n".to_vec();
    write("agent_reply", "stdout", &reply!("ReadStdout", &out)?)?;
    let mut metrics = pb::Metrics::new();
    metrics.metrics = "# TYPE kata_guest_load gauge\nkata_guest_load{item=\"load1\"} 0.5\n".into();
    write("agent_reply", "metrics", &reply!("GetMetrics", &metrics)?)?;
    let mut routes = pb::Routes::new();
    let mut route = kata_agent_client::protocol::types::Route::new();
    route.dest = "10.0.0.0/24".into();
    route.device = "eth0".into();
    route.gateway = "10.0.0.1".into();
    routes.Routes.push(route);
    write("agent_reply", "routes", &reply!("ListRoutes", &routes)?)?;

    // --- vmm_queue ---
    write("vmm_queue", "tx-and-block", &vmm_seed())?;
    println!("seeds written under {}", root.display());
    Ok(())
}

/// A queue of 16 at 0 (avail ring at 0x100) holding two chains: a vsock TX packet (header
/// and payload in two readable descriptors) and a block read (header, one writable sector,
/// a status byte).
fn vmm_seed() -> Vec<u8> {
    let mut mem = vec![0u8; 0x4000];
    let mut desc = |i: usize, addr: u64, len: u32, flags: u16, next: u16| {
        let at = i * 16;
        mem[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        mem[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        mem[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
        mem[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
    };
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    desc(0, 0x1000, 44, NEXT, 1);
    desc(1, 0x1100, 5, 0, 0);
    desc(2, 0x2000, 16, NEXT, 3);
    desc(3, 0x2100, 512, WRITE | NEXT, 4);
    desc(4, 0x2400, 1, WRITE, 0);
    // The vsock header: len 5 (offset 24), type stream (offset 28), op RW (offset 30).
    mem[0x1000 + 24..0x1000 + 28].copy_from_slice(&5u32.to_le_bytes());
    mem[0x1000 + 28..0x1000 + 30].copy_from_slice(&1u16.to_le_bytes());
    mem[0x1000 + 30..0x1000 + 32].copy_from_slice(&5u16.to_le_bytes());
    mem[0x1100..0x1105].copy_from_slice(b"hello");
    // Block header: type IN (0), sector 0.
    // The available ring: flags 0, idx 2, ring [0, 2].
    mem[0x102..0x104].copy_from_slice(&2u16.to_le_bytes());
    mem[0x104..0x106].copy_from_slice(&0u16.to_le_bytes());
    mem[0x106..0x108].copy_from_slice(&2u16.to_le_bytes());
    mem
}
