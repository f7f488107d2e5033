//! Memory per VM with the guest booted from Kata's rootfs image on an NVDIMM (DAX) against the
//! initramfs (issue 15 item 3, issue 17 item 2), measured in one run.
//!
//! For each guest kind, `KATA_RS_IMAGE_PSS_N` (default 4) sandboxes of 256 MiB are built at
//! once and left idle `KATA_RS_DENSITY_SETTLE_S` seconds (default 3); then, per VM, QEMU's host
//! PSS and RSS (`/proc/<pid>/smaps_rollup`), the resident part of its guest RAM mapping, and
//! for the image the PSS and RSS of its mapping of the image file (the NVDIMM): with DAX the
//! guest reads the host's page cache of the image in place, so those pages are counted once
//! across the VMs (PSS ≈ RSS / N), where the initramfs is copied into each guest's RAM and
//! unpacked there again. The per-pod PSS adds the vsock helper and virtiofsd, as `density`
//! does. The kinds alternate `KATA_RS_IMAGE_PSS_ROUNDS` times (default 1; the medians are
//! reported).
//!
//! `cargo bench -p kata-benches --bench image_pss`; prints the figures and writes
//! `image_pss.json`. `cargo test --benches` runs one VM of each kind.

#[path = "bench_out.rs"]
mod bench_out;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bench_out::{
    env_count, env_usize, guest_ram_rss_kib, host_load, pss_rss_kib, sandbox_processes, write_json,
};
use kata_hypervisor::GuestManifest;
use kata_sandbox::Sandbox;

const GUEST_MIB: u32 = 256;

/// How a VM gets its root filesystem.
#[derive(Clone, Copy, PartialEq)]
enum Guest {
    Initramfs,
    Image,
}

impl Guest {
    fn name(self) -> &'static str {
        match self {
            Guest::Initramfs => "initramfs",
            Guest::Image => "image (nvdimm, dax)",
        }
    }
}

/// PSS and RSS (KiB) of `pid`'s mappings of `file`.
fn file_mapping_kib(pid: u32, file: &Path) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return (0, 0);
    };
    let want = file.display().to_string();
    let (mut inside, mut pss, mut rss) = (false, 0u64, 0u64);
    let kib = |v: &str| -> u64 {
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.split_whitespace().nth(5) == Some(want.as_str());
        } else if inside {
            if let Some(v) = line.strip_prefix("Pss:") {
                pss += kib(v);
            } else if let Some(v) = line.strip_prefix("Rss:") {
                rss += kib(v);
            }
        }
    }
    (pss, rss)
}

/// One group of `n` VMs of kind `guest`: per-VM averages in MiB.
async fn measure(
    guest: Guest,
    n: usize,
    image: &Path,
    root: &Path,
    settle: Duration,
) -> serde_json::Value {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let root = root.to_path_buf();
        let image = image.to_path_buf();
        set.spawn(async move {
            let builder = Sandbox::builder().memory_mib(GUEST_MIB).root_dir(&root);
            let mut hv = builder.config().clone();
            if guest == Guest::Image {
                hv.image = image.display().to_string();
                hv.initrd.clear();
            }
            builder.hypervisor_config(hv).build().await
        });
    }
    let mut sandboxes = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.expect("a start task") {
            Ok(sb) => sandboxes.push(sb),
            Err(e) => println!("image_pss: a {} start failed: {e}", guest.name()),
        }
    }
    assert!(!sandboxes.is_empty(), "every {} start failed", guest.name());
    tokio::time::sleep(settle).await;
    let (mut qemu_pss, mut qemu_rss, mut touched, mut helpers) = (0u64, 0u64, 0u64, 0u64);
    let (mut image_pss, mut image_rss, mut vmms) = (0u64, 0u64, 0u64);
    for sb in &sandboxes {
        for (pid, comm) in sandbox_processes(sb.dir()) {
            let Some((pss, rss)) = pss_rss_kib(pid) else {
                continue;
            };
            if comm.starts_with("qemu") {
                qemu_pss += pss;
                qemu_rss += rss;
                touched += guest_ram_rss_kib(pid, GUEST_MIB as u64 * 1024).unwrap_or(0);
                let (p, r) = file_mapping_kib(pid, image);
                image_pss += p;
                image_rss += r;
                vmms += 1;
            } else {
                helpers += pss;
            }
        }
    }
    for sb in sandboxes {
        sb.shutdown().await.unwrap();
    }
    let per = |kib: u64| kib as f64 / 1024.0 / vmms.max(1) as f64;
    serde_json::json!({
        "guest": guest.name(),
        "vms": vmms,
        "qemu_pss_mib": per(qemu_pss),
        "qemu_rss_mib": per(qemu_rss),
        "guest_ram_touched_mib": per(touched),
        "image_mapping_pss_mib": per(image_pss),
        "image_mapping_rss_mib": per(image_rss),
        "per_pod_pss_mib": per(qemu_pss + helpers),
    })
}

fn median(v: &[serde_json::Value], guest: Guest, key: &str) -> f64 {
    let mut x: Vec<f64> = v
        .iter()
        .filter(|m| m["guest"] == guest.name())
        .filter_map(|m| m[key].as_f64())
        .collect();
    x.sort_by(f64::total_cmp);
    x.get(x.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let image: PathBuf = GuestManifest::load_default()
        .expect("the guest manifest (make guest)")
        .image
        .expect("the guest manifest has no `image`: run `make guest` (guest/image.sh)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let n = env_count("KATA_RS_IMAGE_PSS_N", if quick { 1 } else { 4 });
    let rounds = env_count("KATA_RS_IMAGE_PSS_ROUNDS", 1);
    let settle = Duration::from_secs(env_usize("KATA_RS_DENSITY_SETTLE_S", 3) as u64);
    let load_before = host_load();
    let mut all = Vec::new();
    for _ in 0..rounds {
        for guest in [Guest::Initramfs, Guest::Image] {
            let m = rt.block_on(measure(guest, n, &image, root.path(), settle));
            println!(
                "image_pss: {n} x {}: QEMU PSS {:.1} MiB/VM (RSS {:.1}), guest RAM touched {:.1} MiB, image mapping PSS {:.1} MiB (RSS {:.1}), per-pod PSS {:.1} MiB",
                guest.name(),
                m["qemu_pss_mib"].as_f64().unwrap(),
                m["qemu_rss_mib"].as_f64().unwrap(),
                m["guest_ram_touched_mib"].as_f64().unwrap(),
                m["image_mapping_pss_mib"].as_f64().unwrap(),
                m["image_mapping_rss_mib"].as_f64().unwrap(),
                m["per_pod_pss_mib"].as_f64().unwrap(),
            );
            all.push(m);
        }
    }
    let (initrd, dax) = (
        median(&all, Guest::Initramfs, "qemu_pss_mib"),
        median(&all, Guest::Image, "qemu_pss_mib"),
    );
    println!(
        "image_pss: QEMU PSS per VM at N = {n}: image on DAX {dax:.1} MiB vs initramfs {initrd:.1} MiB ({:.2}x, {:.1} MiB less)",
        dax / initrd.max(1e-9),
        initrd - dax
    );
    if quick {
        println!("image_pss: a quick run (no --bench): figures not written");
        return;
    }
    write_json(
        "image_pss",
        &serde_json::json!({
            "n": n,
            "guest_mib": GUEST_MIB,
            "image": image,
            "runs": all,
            "qemu_pss_mib_initramfs": initrd,
            "qemu_pss_mib_image_dax": dax,
            "host_before": load_before,
            "host_after": host_load(),
        }),
    );
}
